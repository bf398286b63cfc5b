"""Calibration: does the simulated participant look like published music-encoding data?

The check (issue 4): a plain voxelwise ridge encoding model fit on the
training runs predicts the test runs; over the top 1,000 auditory voxels the
single-presentation test correlation should have a median of 0.15-0.35 and a
maximum of at most 0.7, as music encoding models in auditory cortex show
(Nakai, Koide-Majima & Nishimoto 2021).

Everything is read back from the written dataset through
:mod:`offline_training.bids` (``find_runs``, ``load_bold``) - the path real
data takes. The steps:

Voxels
    Candidates: the auditory ROI (``derivatives/simulation/sub-XXX/
    sub-XXX_desc-auditory_mask.nii.gz``; anatomically, the grey matter within
    12 mm of Seitzman 2018's Auditory centres, which an analyst would take
    from an atlas). Voxels ranked by their leave-one-run-out cross-validated
    R^2 within the training runs; the test data never enter the selection.
    The checked figure is over the top ``1000 * (2 mm / voxel)**3`` voxels:
    1,000 voxels at ds003720's 2 mm, and the same volume of cortex (8 cm^3,
    about the top fifth of the auditory ROI) on a coarser grid (125 voxels at
    4 mm, 16 at 8 mm). The top ``min(1000, n_candidates)`` voxels are
    reported as well.
Preprocessing (per run, per voxel)
    DCT high-pass with a 128 s cut-off (SPM's default), then z-scoring. No
    motion correction: the uncorrected data are the conservative case.
Features (two models)
    ``generative``: the simulator's own feature space, i.e. the 34 acoustic
    features of :mod:`music.features` per TR (z-scored per run) plus the 10
    genre fractions, delayed by 2, 3 and 4 TRs (3-6 s): 132 regressors.
    The voxels' HRFs and per-voxel weights are unknown to the model.
    ``musicnn`` (optional): musicnn-MSD penultimate embeddings (200-d) of the
    played audio, one window per TR (hop 1.5 s, centre interpolated to the TR
    centre), z-scored per run, same delays: 600 regressors. This is the
    decoder's target space, not the generative one.
Ridge
    :class:`himalaya.ridge.RidgeCV`, one alpha per voxel from
    ``ALPHAS`` = 10**(-1 ... 5), leave-one-run-out over the training runs
    (5 contiguous folds with a single run).
Figures
    Single-presentation correlation: Pearson r between the prediction and the
    measured (preprocessed) test time series, all test runs concatenated
    (each TR is one presentation). Repeat-averaged r: against the mean of the
    4 repeats of each test run's 100-TR block (lag 3 TRs). Noise ceiling:
    explainable variance from the 4 repeats (Sahani & Linden 2003;
    :func:`offline_training.evaluate.explainable_variance`),
    ``EV = (n var(mean) - mean(var)) / ((n - 1) mean(var))``, and the
    single-presentation ceiling ``r_max = sqrt(EV)``. Oracle: r between the
    noise-free ground-truth response and the data (the best any model can do).
    tSNR: mean over time / s.d. of the high-passed series, brain voxels of the
    first run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from offline_training.bids import find_runs, load_bold, read_events
from offline_training.evaluate import explainable_variance
from realtime.preprocessing import dct_basis, detrend_run_offline

from .stimulus import STIMULUS_SR, played_audio, run_stimulus

__all__ = [
    "ALPHAS",
    "DELAYS",
    "TARGET_MEDIAN",
    "TARGET_MAX",
    "dct_highpass_basis",
    "preprocess_run",
    "delayed",
    "design_generative",
    "design_musicnn",
    "explainable_variance",
    "repeat_blocks",
    "calibrate_subject",
    "calibrate_dataset",
    "format_calibration",
]

#: Ridge penalties searched per voxel.
ALPHAS = np.logspace(-1, 5, 13)
#: Feature delays in TRs.
DELAYS = (2, 3, 4)
#: Acceptable range of the median single-presentation test r of the top voxels.
TARGET_MEDIAN = (0.15, 0.35)
#: Largest acceptable single-presentation test r.
TARGET_MAX = 0.7
_HIGHPASS_S = 128.0
_BLOCK_STARTS = (0, 100, 200, 300)  # test runs: 4 identical blocks of 10 x 15 s = 100 TRs
_BLOCK_LEN = 100
_BLOCK_LAG = 3


def dct_highpass_basis(n: int, tr_s: float, cutoff_s: float = _HIGHPASS_S) -> np.ndarray:
    """SPM's discrete cosine drift basis, constant included.

    Returns
    -------
    basis : ndarray of shape (n, k), float64
        Orthonormal columns: the constant and cosines of period > ``cutoff_s``
        (:func:`realtime.preprocessing.dct_basis`).
    """
    return np.hstack([np.full((n, 1), 1 / math.sqrt(n)), dct_basis(n, tr_s, cutoff_s)])


def _highpass(y: np.ndarray, tr_s: float) -> np.ndarray:
    """SPM's high-pass: regress the mean and the DCT drift set out of each column, float64."""
    return detrend_run_offline(y, 0, dct_basis(y.shape[0], tr_s, _HIGHPASS_S)).astype(np.float64)


def preprocess_run(y: np.ndarray, tr_s: float) -> np.ndarray:
    """High-pass and z-score one run.

    Parameters
    ----------
    y : ndarray of shape (n_volumes, n_voxels)
    tr_s : float

    Returns
    -------
    z : ndarray of shape (n_volumes, n_voxels), float64
        Zero mean and unit variance per voxel (constant voxels become 0).
    """
    r = _highpass(y, tr_s)
    sd = r.std(axis=0)
    return r / np.where(sd > 0, sd, 1.0)


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def delayed(x: np.ndarray, delays: Sequence[int] = DELAYS) -> np.ndarray:
    """Stack copies of ``x`` shifted later by each delay (zeros shifted in).

    Parameters
    ----------
    x : ndarray of shape (n_volumes, n_features)
    delays : sequence of int
        In TRs, >= 0.

    Returns
    -------
    xd : ndarray of shape (n_volumes, n_features * len(delays))
    """
    n = x.shape[0]
    out = []
    for d in delays:
        s = np.zeros_like(x)
        if d < n:
            s[d:] = x[:n - d]
        out.append(s)
    return np.hstack(out)


def design_generative(features_tr: np.ndarray, genres_tr: np.ndarray, delays: Sequence[int] = DELAYS) -> np.ndarray:
    """The ``generative`` model's design of one run, shape (n_volumes, 44 * len(delays))."""
    return delayed(np.hstack([_zscore(features_tr), np.asarray(genres_tr) - 0.1]), delays)


def design_musicnn(audio: np.ndarray, sr: int, n_volumes: int, tr_s: float, embedder,
                   delays: Sequence[int] = DELAYS) -> np.ndarray:
    """The ``musicnn`` model's design of one run.

    The embedder runs with a hop of one TR; each window's embedding is put at
    its centre and linearly interpolated to the TR centres.
    """
    emb = embedder.embed(audio, sr)
    centres = emb.times_s + embedder.window_s / 2
    t = (np.arange(n_volumes) + 0.5) * tr_s
    e = np.stack([np.interp(t, centres, emb.windows[:, j]) for j in range(emb.windows.shape[1])], axis=1)
    return delayed(_zscore(e), delays)


def repeat_blocks(y: np.ndarray, starts: Sequence[int] = _BLOCK_STARTS, length: int = _BLOCK_LEN,
                  lag: int = _BLOCK_LAG) -> np.ndarray | None:
    """The repeated blocks of a test run, shape (n_repeats, length, n_voxels), or None if the run is too short."""
    if starts[-1] + lag + length > y.shape[0]:
        return None
    return np.stack([y[s + lag:s + lag + length] for s in starts])


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    return (a * b).sum(axis=0) / np.where(den > 0, den, 1.0)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    return {"n": int(x.size), "median": float(np.median(x)), "mean": float(x.mean()),
            "p10": float(np.percentile(x, 10)), "p90": float(np.percentile(x, 90)), "max": float(x.max())}


def _read_voxels(run, mask: np.ndarray) -> tuple[np.ndarray, float]:
    img, tr = load_bold(run)
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    block = np.asarray(img.dataobj[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2], :])
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return block[sub].T.astype(np.float64), tr  # (n_volumes, n_voxels), voxels in C order of the mask


def _tsnr(run, brain: np.ndarray, chunk: int = 20000) -> np.ndarray:
    img, tr = load_bold(run)
    data = np.asarray(img.dataobj)
    y = data[brain]  # (n_vox, n_t) int16, C order of the mask
    del data
    out = np.empty(y.shape[0])
    for a in range(0, y.shape[0], chunk):
        v = y[a:a + chunk].astype(np.float64).T
        sd = _highpass(v, tr).std(axis=0)
        out[a:a + chunk] = np.where(sd > 0, v.mean(axis=0) / np.where(sd > 0, sd, 1.0), 0.0)
    return out


def _cv_splits(groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    ids = np.unique(groups)
    if ids.size >= 2:
        return [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in ids]
    n = groups.size
    edges = np.linspace(0, n, 6).astype(int)
    return [(np.r_[0:edges[i], edges[i + 1]:n], np.arange(edges[i], edges[i + 1])) for i in range(5)]


def _fit_predict(x_train, y_train, groups, x_test):
    from himalaya.ridge import RidgeCV

    model = RidgeCV(alphas=ALPHAS, cv=_cv_splits(groups), fit_intercept=False)
    model.fit(x_train, y_train)
    return np.asarray(model.predict(x_test)), np.asarray(model.cv_scores_).ravel(), np.asarray(model.best_alphas_)


def calibrate_subject(root: os.PathLike | str, subject: str, *, run_stimuli: dict | None = None,
                      models: Sequence[str] = ("generative",), top_k: int = 1000,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Fit and evaluate the encoding models of one simulated subject.

    Parameters
    ----------
    root : path-like
        The simulated dataset.
    subject : str
        Label without ``sub-``.
    run_stimuli : dict or None
        ``(task, run) -> RunStimulus`` from the simulation; recomputed from the
        stimuli folder when None.
    models : sequence of {"generative", "musicnn"}
    top_k : int
        Number of top voxels (capped at the number of candidates).
    progress : callable (done, total) or None

    Returns
    -------
    dict
        The figures (see the module docstring); ``"skipped"`` says why if
        there are no training or no test runs.
    """
    for m in models:
        if m not in ("generative", "musicnn"):
            raise ValueError(f"models must be among 'generative', 'musicnn'; got {m!r}")
    root = Path(root)
    truth = root / "derivatives" / "simulation" / f"sub-{subject}"
    runs = find_runs(root, subject)
    train = [r for r in runs if r.task == "Training"]
    test = [r for r in runs if r.task == "Test"]
    if not train or not test:
        return {"subject": subject, "skipped": "calibration needs at least one Training and one Test run"}
    aud_img = nib.load(truth / f"sub-{subject}_desc-auditory_mask.nii.gz")
    mask = np.asarray(aud_img.dataobj) > 0
    brain = np.asarray(nib.load(truth / f"sub-{subject}_desc-brain_mask.nii.gz").dataobj) > 0
    strength_map = np.asarray(nib.load(truth / f"sub-{subject}_desc-strength_map.nii.gz").dataobj)
    strength = strength_map[mask]
    # columns of the noise-free responses follow the tuning table's rows: C-order flat index
    order = np.argsort(np.ravel_multi_index(np.nonzero(mask), mask.shape))
    voxel_mm = float(aud_img.header.get_zooms()[0])
    n_steps = len(runs) + 1
    step = 0

    def tick():
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, n_steps)

    data, designs, groups, noiseless = {}, {m: {} for m in models}, {}, {}
    embedder = None
    if "musicnn" in models:
        from music.embedding import get_embedder

    tr_s = None
    for i, r in enumerate(runs):
        y, tr_s = _read_voxels(r, mask)
        n_vol = y.shape[0]
        data[(r.task, r.run)] = preprocess_run(y, tr_s)
        resp = np.load(truth / f"sub-{subject}_task-{r.task}_run-{r.run:02d}_desc-response.npy")
        noiseless[(r.task, r.run)] = preprocess_run(resp[:, order], tr_s) if resp.shape[0] == n_vol else None
        stim = (run_stimuli or {}).get((r.task, r.run))
        events = read_events(r.events)
        if stim is None:
            stim = run_stimulus(events, root / "stimuli", n_vol, tr_s)
        if "generative" in models:
            designs["generative"][(r.task, r.run)] = design_generative(stim.features_tr, stim.genres_tr)
        if "musicnn" in models:
            if embedder is None:
                embedder = get_embedder("musicnn-msd", hop_s=tr_s)
            audio = played_audio(events, root / "stimuli", n_vol * tr_s)
            designs["musicnn"][(r.task, r.run)] = design_musicnn(audio, STIMULUS_SR, n_vol, tr_s, embedder)
        groups[(r.task, r.run)] = np.full(n_vol, i)
        tick()

    tr_keys = [(r.task, r.run) for r in train]
    te_keys = [(r.task, r.run) for r in test]
    y_tr = np.vstack([data[k] for k in tr_keys])
    y_te = np.vstack([data[k] for k in te_keys])
    g_tr = np.concatenate([groups[k] for k in tr_keys])
    n_cand = int(mask.sum())
    k_top = max(1, min(n_cand, int(round(top_k * (2.0 / voxel_mm) ** 3))))  # same cortical volume
    k_all = min(top_k, n_cand)

    blocks = [repeat_blocks(data[k]) for k in te_keys]
    have_blocks = all(b is not None for b in blocks)
    ev = np.mean([explainable_variance(b) for b in blocks], axis=0) if have_blocks else None

    out: dict = {"subject": subject, "n_candidate_voxels": n_cand, "voxel_mm": voxel_mm,
                 "train_runs": [k[1] for k in tr_keys], "test_runs": [k[1] for k in te_keys],
                 "top_k": k_top, "top_k_definition": f"top {top_k} voxels at 2 mm = the same volume of cortex "
                                                      f"({top_k * 8 / 1000:g} cm^3) at {voxel_mm:g} mm",
                 "top_1000_or_all": k_all,
                 "candidates": "auditory ROI: grey matter within 12 mm of Seitzman 2018's Auditory centres",
                 "selection": "top voxels by leave-one-run-out CV R^2 within the training runs (test data unused)",
                 "preprocessing": "DCT high-pass 128 s and z-score per run; no motion correction",
                 "models": {}}
    for m in models:
        x_tr = np.vstack([designs[m][k] for k in tr_keys])
        x_te = [designs[m][k] for k in te_keys]
        pred, cv, alphas = _fit_predict(x_tr, y_tr, g_tr, np.vstack(x_te))
        r = _corr(pred, y_te)
        rank = np.argsort(-cv, kind="stable")
        top, top_all = rank[:k_top], rank[:k_all]
        by_truth = np.argsort(-strength, kind="stable")[:k_top]
        res = {"n_regressors": int(x_tr.shape[1]), "delays_tr": list(DELAYS),
               "test_r_top_k": _stats(r[top]), "test_r_top_1000_or_all": _stats(r[top_all]),
               "test_r_all_candidates": _stats(r), "test_r_top_k_by_true_strength": _stats(r[by_truth]),
               "cv_r2_top_k": _stats(cv[top]), "best_alpha_median": float(np.median(alphas[top]))}
        if have_blocks:
            off = 0
            r_avg = []
            for k, xb in zip(te_keys, x_te):
                n = xb.shape[0]
                p_blocks = repeat_blocks(pred[off:off + n])
                r_avg.append(_corr(p_blocks.mean(axis=0), repeat_blocks(data[k]).mean(axis=0)))
                off += n
            r_avg = np.mean(r_avg, axis=0)
            res["test_r_repeat_averaged_top_k"] = _stats(r_avg[top])
            ceil = np.sqrt(np.clip(ev, 0, None))
            ok = ceil[top] > 0.05
            res["test_r_over_ceiling_top_k"] = _stats(r[top][ok] / ceil[top][ok])
        res["pass"] = bool(TARGET_MEDIAN[0] <= res["test_r_top_k"]["median"] <= TARGET_MEDIAN[1]
                           and res["test_r_top_k"]["max"] <= TARGET_MAX)
        out["models"][m] = res
        if m == "generative":
            out["_top"] = top
    top = out.pop("_top", np.argsort(-strength)[:k_top])
    if have_blocks:
        out["noise_ceiling"] = {"explainable_variance_top_k": _stats(ev[top]),
                                "r_ceiling_top_k": _stats(np.sqrt(np.clip(ev[top], 0, None))),
                                "explainable_variance_all_candidates": _stats(ev)}
    if all(noiseless[k] is not None for k in te_keys):
        r_or = _corr(np.vstack([noiseless[k] for k in te_keys]), y_te)
        out["oracle_test_r"] = {"top_k": _stats(r_or[top]), "all_candidates": _stats(r_or)}
    ts = _tsnr(runs[0], brain)
    out["tsnr"] = {"run": runs[0].name, "median_brain": float(np.median(ts)),
                   "median_auditory": float(np.median(ts[mask[brain]]))}
    tick()
    return out


def calibrate_dataset(root: os.PathLike | str, subjects: Sequence[str] | None = None, *,
                      run_stimuli: dict | None = None, models: Sequence[str] = ("generative",),
                      top_k: int = 1000, progress: Callable[[int, int], None] | None = None) -> dict:
    """Calibrate every subject; writes ``derivatives/simulation/calibration.json``.

    Returns
    -------
    dict
        ``{"targets": ..., "subjects": [per-subject dicts], "pass": bool}``.
    """
    import json

    from offline_training.bids import find_subjects

    root = Path(root)
    subjects = list(subjects) if subjects is not None else find_subjects(root)
    per = []
    for i, s in enumerate(subjects):
        per.append(calibrate_subject(root, s, run_stimuli=run_stimuli, models=models, top_k=top_k))
        if progress is not None:
            progress(i + 1, len(subjects))
    checked = [p for p in per if "skipped" not in p]
    result = {"targets": {"test_r_median": list(TARGET_MEDIAN), "test_r_max": TARGET_MAX,
                          "reference": "Nakai, Koide-Majima & Nishimoto (2021), Brain and Behavior 11(1), e01936"},
              "method": ("Everything is read back" + __doc__.split("Everything is read back", 1)[1]).strip()
              if __doc__ else "",
              "subjects": per,
              "pass": bool(checked) and all(p["models"]["generative"]["pass"] for p in checked)}
    path = root / "derivatives" / "simulation" / "calibration.json"
    tmp = path.with_name(".calibration.json.tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return result


def format_calibration(result: dict) -> str:
    """A plain-text summary of :func:`calibrate_dataset`'s result, one block per subject and model."""
    lines = [f"calibration (targets: median single-presentation test r of the top voxels in "
             f"[{TARGET_MEDIAN[0]}, {TARGET_MEDIAN[1]}], max <= {TARGET_MAX})"]
    for p in result["subjects"]:
        if "skipped" in p:
            lines.append(f"sub-{p['subject']}: skipped ({p['skipped']})")
            continue
        lines.append(f"sub-{p['subject']}: {p['n_candidate_voxels']} auditory voxels, top {p['top_k']} "
                     f"({p['top_k'] * p['voxel_mm'] ** 3 / 1000:g} cm3) by training CV; tSNR median {p['tsnr']['median_brain']:.1f} (brain), "
                     f"{p['tsnr']['median_auditory']:.1f} (auditory)")
        for m, res in p["models"].items():
            t = res["test_r_top_k"]
            v = res["test_r_top_1000_or_all"]
            line = (f"  {m:<10} test r top {p['top_k']}: median {t['median']:.3f}  max {t['max']:.3f}  "
                    f"| top {p['top_1000_or_all']}: median {v['median']:.3f}  "
                    f"| all: median {res['test_r_all_candidates']['median']:.3f}")
            if "test_r_repeat_averaged_top_k" in res:
                line += f"  | 4-repeat avg: median {res['test_r_repeat_averaged_top_k']['median']:.3f}"
            lines.append(line + ("  PASS" if res["pass"] else "  out of range"))
        if "noise_ceiling" in p:
            nc = p["noise_ceiling"]
            lines.append(f"  noise ceiling top {p['top_k']}: EV median {nc['explainable_variance_top_k']['median']:.3f}, "
                         f"r ceiling median {nc['r_ceiling_top_k']['median']:.3f} "
                         f"max {nc['r_ceiling_top_k']['max']:.3f}")
        if "oracle_test_r" in p:
            o = p["oracle_test_r"]["top_k"]
            lines.append(f"  oracle (noise-free truth vs data) top {p['top_k']}: median {o['median']:.3f} "
                         f"max {o['max']:.3f}")
    lines.append("calibration: " + ("PASS" if result["pass"] else "NOT within the targets"))
    return "\n".join(lines)
