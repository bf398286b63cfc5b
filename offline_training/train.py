"""``b2m train``: a BIDS dataset in, an evaluated model bundle out.

1. Embed every excerpt heard (:mod:`.targets`), cached.
2. Preprocess every run with the realtime code (:mod:`realtime.preprocessing`),
   all runs registered to one reference volume (the bundle's), inside a
   brain mask.
3. Select voxels by cross-validated encoding performance inside the Training
   runs (never the Test runs).
4. Fit the decoder: ridge with one alpha per embedding dimension, chosen by
   leave-one-run-out CV over the Training runs (:mod:`.ridge`).
5. Evaluate on the Test runs (:mod:`.evaluate`): clip predictions are the mean
   of the TRs that decode each presentation, averaged over the repeats (and
   single presentations too), against baselines.
6. Export the bundle (:mod:`.export`) with its report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from realtime.preprocessing import PreprocessConfig, preprocess_run, stack_delays

from . import evaluate as ev
from .bids import RunFiles, find_runs, load_bold, read_events
from .encoding import SELECTION_ALPHAS, delay_features, fit_encoding, select_voxels
from .ridge import DEFAULT_ALPHAS, corr_columns, edge_alphas, ridge_cv, ridge_fit
from .targets import StimulusTargets, embed_stimuli, excerpt_id, tr_targets

__all__ = ["TrainConfig", "train", "brain_mask", "RunData"]

Progress = Callable[[str, int, int], None]


@dataclass
class TrainConfig:
    """Options of ``b2m train`` (defaults in code; the effective config is saved)."""

    subject: str = "001"
    embedder: str = "musicnn-msd"
    delays: tuple = (2, 3, 4)
    n_voxels: int = 2000
    target: str = "clip"
    alphas: tuple = tuple(float(a) for a in DEFAULT_ALPHAS)
    detrend: str = "causal"
    normalize: str = "running"
    motion: bool = True
    compare_offline: bool = True
    stimuli: str | None = None
    cache: str | None = None
    seed: int = 0

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(motion=self.motion, detrend=self.detrend, normalize=self.normalize,
                                delays=tuple(self.delays))


@dataclass
class RunData:
    """One preprocessed run with its events and targets."""

    files: RunFiles
    values: np.ndarray  # (n_volumes, n_brain_voxels) float32
    y: np.ndarray  # (n_volumes, dim) targets by TR (NaN where silent)
    event_index: np.ndarray
    events: list
    fd: np.ndarray | None = None

    @property
    def task(self) -> str:
        return self.files.task


def brain_mask(reference: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Voxels brighter than ``fraction`` of the 98th percentile of a smoothed reference."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    ref = gaussian_filter(np.asarray(reference, np.float32), 1.0)
    m = ref > fraction * np.percentile(ref, 98)
    return binary_fill_holes(m)


def _noop(stage: str, done: int, total: int) -> None:
    pass


def _load_runs(ds: str, cfg: TrainConfig, pcfg: PreprocessConfig, targets: StimulusTargets, runs: list[RunFiles],
               reference, affine, mask, progress: Progress) -> list[RunData]:
    out = []
    for i, rf in enumerate(runs):
        img, tr = load_bold(rf)
        events = read_events(rf.events)
        res = preprocess_run(img.dataobj, img.affine, mask, pcfg, tr_s=tr, reference=reference, stack=False,
                             progress=lambda d, t, i=i: progress("preprocess", i * t + d, len(runs) * t))
        y, idx, _ = tr_targets(events, img.shape[3], tr, targets, cfg.target)
        out.append(RunData(rf, res.values, y, idx, events, res.fd))
    return out


def _xy(run: RunData, sel: np.ndarray, delays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoder rows of a run: inputs after volume t paired with the target of moment t - lag."""
    lag = max(delays)
    x = stack_delays(run.values[:, sel], delays)
    y = np.full_like(run.y, np.nan)
    y[lag:] = run.y[: len(run.y) - lag]
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    return x[ok], y[ok], np.flatnonzero(ok)


def _clip_predictions(run: RunData, pred_rows: np.ndarray, rows: np.ndarray, tr_s: float, lag: int) -> dict:
    """Mean prediction of each presentation: rows whose decoded moment lies in the event."""
    moment = (rows - lag)
    ev_of_moment = run.event_index[moment]
    out: dict[int, np.ndarray] = {}
    for j in np.unique(ev_of_moment):
        if j < 0:
            continue
        out[int(j)] = pred_rows[ev_of_moment == j].mean(0)
    return out


def _evaluate(test_runs: list[RunData], coef, xm, ym, sel, delays, targets: StimulusTargets,
              train_clip_emb: np.ndarray, train_genres: list, centre: np.ndarray) -> dict:
    lag = max(delays)
    presentations: dict[str, list[np.ndarray]] = {}
    for run in test_runs:
        x, _, rows = _xy(run, sel, delays)
        pred = (x - xm) @ coef + ym
        pred /= np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
        for j, p in _clip_predictions(run, pred, rows, 1.5, lag).items():
            presentations.setdefault(excerpt_id(run.events[j]), []).append(p)
    keys = sorted(presentations)
    true = np.stack([targets[k].clip for k in keys])
    genres = [targets[k].genre for k in keys]
    avg = np.stack([np.mean(presentations[k], 0) for k in keys])
    per_clip = ev.identification_per_clip(avg, true)
    within = ev.identification_per_clip(avg, true, genres=genres, foils="same_genre")
    res = {
        "n_test_clips": len(keys),
        "n_presentations": int(sum(len(v) for v in presentations.values())),
        "identification_accuracy": float(np.nanmean(per_clip)),
        "identification_accuracy_ci95": ev.bootstrap_ci(per_clip),
        "identification_accuracy_centred": ev.identification_accuracy(avg, true, centre=centre),
        "within_genre_identification_accuracy": float(np.nanmean(within)),
        "within_genre_identification_accuracy_ci95": ev.bootstrap_ci(within),
        "nway": ev.nway_topk(avg, true, ks=(1, 5)),
        "per_dim_correlation_mean": float(np.mean(ev.per_dim_correlation(avg, true))),
        "retrieval_genre_agreement": ev.retrieval_genre_agreement(avg, train_clip_emb, train_genres, genres),
    }
    # single presentations: each presentation alone against all test clips
    single_pred, single_true_idx = [], []
    for i, k in enumerate(keys):
        for p in presentations[k]:
            single_pred.append(p)
            single_true_idx.append(i)
    sp = np.stack(single_pred)
    c = ev.corr_matrix(sp, true)
    own = c[np.arange(len(sp)), single_true_idx]
    mask = np.ones_like(c, bool)
    mask[np.arange(len(sp)), single_true_idx] = False
    res["identification_accuracy_single"] = float(np.mean(((c < own[:, None]) & mask).sum(1) / mask.sum(1)))
    prior = ev.genre_prior_predictions(train_clip_emb, train_genres, genres)
    res["genre_prior"] = {
        "identification_accuracy": ev.identification_accuracy(prior, true),
        "identification_accuracy_centred": ev.identification_accuracy(prior, true, centre=centre),
        "within_genre_identification_accuracy": ev.identification_accuracy(prior, true, genres=genres,
                                                                            foils="same_genre"),
    }
    res["_arrays"] = {"pred": avg, "true": true, "keys": keys, "genres": genres, "corr": ev.corr_matrix(avg, true)}
    return res


def train(ds: str, out: str, cfg: TrainConfig, progress: Progress = _noop) -> dict:
    """Train, evaluate and export. Returns the metrics (also in ``out/metrics.json``)."""
    from music.embedding import get_embedder

    from .export import write_bundle

    t_start = time.monotonic()
    os.makedirs(out, exist_ok=True)
    runs = find_runs(ds, cfg.subject)
    train_files = [r for r in runs if r.task == "Training"]
    test_files = [r for r in runs if r.task == "Test"]
    if len(train_files) < 2:
        raise ValueError(f"{ds}: subject {cfg.subject} has {len(train_files)} Training runs; leave-one-run-out "
                         "CV needs at least 2")
    if not test_files:
        raise ValueError(f"{ds}: subject {cfg.subject} has no Test runs to evaluate on")
    stimuli = cfg.stimuli or os.path.join(ds, "stimuli")
    cache = cfg.cache or os.path.join(ds, "derivatives", "b2m", "embeddings")
    img0, tr = load_bold(train_files[0])
    embedder = get_embedder(cfg.embedder)
    all_events = [e for r in runs for e in read_events(r.events)]
    targets = embed_stimuli(all_events, stimuli, embedder, tr, cache_dir=cache,
                            progress=lambda d, t: progress("embed stimuli", d, t))
    reference = np.asarray(img0.dataobj[..., 0], np.float32)
    affine = img0.affine
    bmask = brain_mask(reference)
    pcfg = cfg.preprocess()
    if not pcfg.causal:
        raise ValueError("the deployed bundle must use causal preprocessing; the offline variant is compared "
                         "automatically with compare_offline")
    metrics: dict = {"config": asdict(cfg), "preprocess": pcfg.to_dict(), "tr_s": tr,
                     "n_brain_voxels": int(bmask.sum())}

    def fit_eval(pc: PreprocessConfig, tag: str) -> tuple[dict, dict]:
        trn = _load_runs(ds, cfg, pc, targets, train_files, reference, affine, bmask,
                         lambda s, d, t: progress(f"{s} ({tag}) train", d, t))
        tst = _load_runs(ds, cfg, pc, targets, test_files, reference, affine, bmask,
                         lambda s, d, t: progress(f"{s} ({tag}) test", d, t))
        feats = [delay_features(r.y, cfg.delays) for r in trn]
        sel, sel_scores = select_voxels(feats, [r.values for r in trn], cfg.n_voxels,
                                        progress=lambda d, t: progress(f"select voxels ({tag})", d, t))
        xs, ys, gs = [], [], []
        for i, r in enumerate(trn):
            x, y, _ = _xy(r, sel, cfg.delays)
            xs.append(x)
            ys.append(y)
            gs.append(np.full(len(x), i))
        x, y, groups = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
        t0 = time.monotonic()
        best, cv = ridge_cv(x, y, groups, np.asarray(cfg.alphas),
                            progress=lambda d, t: progress(f"decoder CV ({tag})", d, t))
        coef, xm, ym = ridge_fit(x, y, best)
        fit_s = time.monotonic() - t0
        train_keys = sorted({excerpt_id(e) for r in trn for e in r.events})
        train_emb = np.stack([targets[k].clip for k in train_keys])
        train_genres = [targets[k].genre for k in train_keys]
        centre = train_emb.mean(0)
        res = _evaluate(tst, coef, xm, ym, sel, cfg.delays, targets, train_emb, train_genres, centre)
        res["fit_s"] = fit_s
        res["alphas"] = edge_alphas(best, cfg.alphas)
        res["n_train_samples"] = int(len(x))
        state = {"train": trn, "test": tst, "sel": sel, "sel_scores": sel_scores, "coef": coef, "xm": xm,
                 "ym": ym, "best": best, "cv": cv, "feats": feats, "train_emb": train_emb,
                 "train_genres": train_genres}
        return res, state

    causal, st = fit_eval(pcfg, "causal")
    metrics["causal"] = {k: v for k, v in causal.items() if k != "_arrays"}
    for k in ("identification_accuracy", "identification_accuracy_centred", "within_genre_identification_accuracy",
              "identification_accuracy_ci95", "within_genre_identification_accuracy_ci95",
              "identification_accuracy_single", "genre_prior", "nway"):
        metrics[k] = causal[k]
    if cfg.compare_offline:
        offline, _ = fit_eval(pcfg.offline_variant(), "offline")
        metrics["offline"] = {k: v for k, v in offline.items() if k != "_arrays"}

    # encoding maps: per-voxel alpha, test correlation over all brain voxels
    progress("encoding maps", 0, 1)
    trn, tst = st["train"], st["test"]
    ftr = np.concatenate(st["feats"])
    gtr = np.concatenate([np.full(len(r.values), i) for i, r in enumerate(trn)])
    fte = np.concatenate([delay_features(r.y, cfg.delays) for r in tst])
    enc_corr, enc_alpha = fit_encoding(ftr, np.concatenate([r.values for r in trn]), gtr, fte,
                                       np.concatenate([r.values for r in tst]), alphas=SELECTION_ALPHAS)
    progress("encoding maps", 1, 1)
    metrics["encoding"] = {"median_test_corr_selected": float(np.median(enc_corr[st["sel"]])),
                           "max_test_corr": float(enc_corr.max())}
    # export
    sel_mask = np.zeros(bmask.shape, bool)
    flat = np.flatnonzero(bmask)  # C order: the voxel order of values
    sel_mask.flat[flat[st["sel"]]] = True
    # the bundle's voxel order is C order of its own mask: reorder the coefficients to match
    order = np.argsort(flat[st["sel"]])
    nd = len(cfg.delays)
    k = len(st["sel"])
    coef = st["coef"].reshape(nd, k, -1)[:, order].reshape(nd * k, -1)
    xm = st["xm"].reshape(nd, k)[:, order].reshape(-1)
    values_sel = np.concatenate([r.values[:, st["sel"][order]] for r in trn])
    metrics["wall_s"] = time.monotonic() - t_start
    public = {k: v for k, v in metrics.items()}
    write_bundle(out, coef=coef, x_mean=xm, y_mean=st["ym"], mask=sel_mask, affine=affine, reference=reference,
                 norm_mean=values_sel.mean(0), norm_std=values_sel.std(0), embedder=embedder.identity(),
                 embedder_spec=embedder.spec, tr_s=tr, delays=cfg.delays, preprocess=pcfg.to_dict(),
                 metrics={k: public[k] for k in ("identification_accuracy", "identification_accuracy_centred",
                                                 "within_genre_identification_accuracy")},
                 extra={"n_volumes": int(img0.shape[3]), "subject": cfg.subject, "target": cfg.target})
    from .report import write_report

    write_report(out, public, causal["_arrays"], st, enc_corr, bmask, affine, reference, targets)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(public, f, indent=2, default=_json_default)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2, default=_json_default)
    return public


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
