"""``b2m train``: a BIDS dataset in, an evaluated model bundle out.

1. Embed every excerpt heard (:mod:`.targets`), cached.
2. Preprocess every run with the realtime code (:mod:`realtime.preprocessing`),
   all runs registered to one reference volume (the bundle's), inside a
   brain mask (:mod:`.stages`). Each run's image is read once, sequentially,
   and motion-corrected once (:func:`.stages.motion_stage`, cached under
   ``DS/derivatives/b2m/preproc/``); detrending and normalisation then run on
   the motion-corrected values through ``preprocess_run`` itself
   (:func:`.stages.preprocess_stage`), bit for bit what the live chain
   computes. The non-causal comparison (``compare_offline``, off by default)
   reuses the same motion stage.
3. Select voxels by cross-validated encoding performance inside the Training
   runs (never the Test runs): CV R^2 by default, or its within-genre part
   (:func:`choose_voxels`).
4. Fit the decoder (:func:`.decoding.fit_decoder`): ridge with one alpha per
   embedding dimension, chosen by leave-one-run-out CV over the Training runs
   (:mod:`.ridge`), on one row per presentation by default. The readout
   (:mod:`.readout`) whitens the decoded deviation from the mean embedding by
   the shrunk covariance of the held-out errors and rescales it; shrinkage
   and scale are those that identify held-out Training presentations best.
5. Evaluate on the Test runs (:func:`.decoding.clip_metrics`, :mod:`.evaluate`):
   clip predictions are the mean of the TRs that decode each presentation,
   averaged over the repeats (and single presentations too), against
   baselines; each voxel's noise ceiling comes from the repeats (:mod:`.ceiling`).
6. Export the bundle (:mod:`.export`) with its report.

Defaults (500 voxels, delays 2-4, rows per presentation) were chosen by 4-fold
CV over the Training runs of simulated subject 001, never on Test runs.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from protocols.provenance import provenance
from realtime.preprocessing import PreprocessConfig

from .bids import (
    Event,
    RunFiles,
    check_events_in_run,
    dataset_files,
    find_runs,
    load_bold,
    read_events,
    shared_tracks,
)
from .ceiling import EV_LAG_S, noise_ceiling, repeat_rows
from .decoding import DEVIATION_SCALES, decoded_events, evaluate_decoder, fit_decoder, presentation_ids
from .encoding import delay_features, fit_encoding, run_folds, select_regions, select_voxels, within_genre_scores
from .readout import READOUT_SHRINKAGES
from .ridge import DEFAULT_ALPHAS, edge_alphas
from .stages import MotionStage, RunData, _release_pages, motion_stage, preprocess_stage
from .targets import StimulusTargets, drop_opening_repeat, embed_stimuli, excerpt_id, tr_targets

__all__ = ["TrainConfig", "train", "prepare", "Prepared", "choose_voxels", "brain_mask", "peak_rss_mb",
           "blas_threads", "WITHIN_GENRE_POOL", "check_runs", "check_stimuli"]

Progress = Callable[[str, int, int], None]


@dataclass
class TrainConfig:
    """Options of ``b2m train`` (defaults in code; the effective config is saved)."""

    subject: str = "001"
    embedder: str = "musicnn-msd"
    delays: tuple = PreprocessConfig.delays
    n_voxels: int = 500
    select_by: str = "cv"
    target: str = "clip"
    fit_on: str = "clip"
    calibrate_scale: bool = True
    whiten_readout: bool = True
    threads: int | None = 1
    alphas: tuple = tuple(float(a) for a in DEFAULT_ALPHAS)
    # the preprocessing defaults are PreprocessConfig's: one place to change what the bundle deploys
    detrend: str = PreprocessConfig.detrend
    poly_order: int = PreprocessConfig.poly_order
    ema_tau_s: float = PreprocessConfig.ema_tau_s
    normalize: str = PreprocessConfig.normalize
    motion: bool = PreprocessConfig.motion
    compare_offline: bool = False
    preproc_cache: bool = True
    stimuli: str | None = None
    cache: str | None = None
    seed: int = 0
    roi_mask: str | None = None
    parcellation: str | None = None
    top_regions: int = 0
    allow_shared_tracks: bool = False
    # each run's opening repeat (ds003720's buffer excerpt) is neither trained on nor scored
    drop_opening_repeat: bool = True

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(motion=self.motion, detrend=self.detrend, poly_order=self.poly_order,
                                ema_tau_s=self.ema_tau_s, normalize=self.normalize, delays=tuple(self.delays))


def brain_mask(reference: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Voxels brighter than ``fraction`` of the 98th percentile of a smoothed reference."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    ref = gaussian_filter(np.asarray(reference, np.float32), 1.0)
    m = ref > fraction * np.percentile(ref, 98)
    return binary_fill_holes(m)


def _noop(stage: str, done: int, total: int) -> None:
    pass


#: With ``select_by="within-genre"``, the within-genre score re-ranks this many times ``n_voxels`` of the
#: voxels with the best CV R^2 (the score alone is noisier than R^2, which first discards the unresponsive).
WITHIN_GENRE_POOL = 3


def choose_voxels(train_runs: list[RunData], train_values: np.ndarray, cfg: TrainConfig,
                  labels: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None):
    """Select the decoder's voxels inside the Training runs, by ``cfg``'s rule.

    ``select_by="cv"``: the ``n_voxels`` best by CV R^2 of the encoding model
    (:func:`.encoding.select_voxels`). ``"within-genre"``: of the
    ``WITHIN_GENRE_POOL * n_voxels`` best by CV R^2, the ``n_voxels`` best by
    :func:`.encoding.within_genre_scores` (same folds and alphas, presentations
    as the decoder's rows map them). With ``labels`` and ``cfg.top_regions``,
    whole regions by mean CV R^2 (:func:`.encoding.select_regions`).

    Returns
    -------
    feats : list of ndarray
        Delayed features per Training run.
    sel : ndarray of int
        Selected voxels, best first.
    scores, alphas : ndarray of shape (n_voxels_total,)
        CV R^2 and alpha of every voxel.
    info : dict
        The rule, for the metrics.
    """
    if cfg.select_by not in ("cv", "within-genre"):
        raise ValueError(f"select_by must be 'cv' or 'within-genre', got {cfg.select_by!r}")
    by_regions = labels is not None and cfg.top_regions
    if by_regions and cfg.select_by != "cv":
        raise ValueError(f"select_by={cfg.select_by!r} ranks single voxels, top_regions={cfg.top_regions} keeps "
                         "whole regions: use one of --select-by and --top-regions")
    feats = [delay_features(r.y, cfg.delays) for r in train_runs]
    within = cfg.select_by == "within-genre"
    pool = cfg.n_voxels * (WITHIN_GENRE_POOL if within else 1)
    folds = 4
    sel, scores, alphas = select_voxels(feats, train_values, pool, folds=folds, return_alphas=True,
                                        progress=progress)
    if by_regions:
        # Brain2Music's rule: whole regions, ranked by their voxels' CV score in the Training runs
        sel, regions = select_regions(scores, labels, cfg.top_regions)
        return feats, sel, scores, alphas, {"rule": "top regions by mean CV R^2 (Training runs)",
                                            "regions": regions, "n_voxels": int(len(sel))}
    info = {"rule": "top voxels by CV R^2 (Training runs)", "n_voxels": int(len(sel))}
    if within:
        pres, genre = [], []
        for i, r in enumerate(train_runs):
            ev = decoded_events(r, cfg.delays)  # volumes grouped as the decoder's rows group them
            pres.append(presentation_ids(i, ev))
            genre += [r.events[j].genre if j >= 0 else "" for j in ev]
        ws = within_genre_scores(np.concatenate(feats), train_values[:, sel], run_folds(feats, folds), alphas[sel],
                                 np.concatenate(pres), np.asarray(genre))
        sel = sel[np.argsort(-ws, kind="stable")[:cfg.n_voxels]]
        info = {"rule": f"top voxels by within-genre CV correlation among the {pool} best by CV R^2 "
                        "(Training runs)", "n_voxels": int(len(sel))}
    return feats, sel, scores, alphas, info


def _load_runs(stages: list[MotionStage], runs: list[RunFiles], cfg: TrainConfig, pcfg: PreprocessConfig,
               targets: StimulusTargets, tr: float,
               progress: Callable[[int], None] | None = None) -> tuple[list[RunData], np.ndarray]:
    """Runs through detrend/normalise, written into one (n_volumes_total, n_voxels) float32 array.

    Each ``RunData.values`` is a view of its rows, so the voxel-wise fits can
    use the whole array without another copy (it is the largest object of a
    full-grid training).
    """
    n_rows = sum(len(st.values) for st in stages)
    n_vox = stages[0].values.shape[1] if stages else 0
    big = np.empty((n_rows, n_vox), np.float32)
    out = []
    start = 0
    runs_events = [read_events(rf.events) for rf in runs]
    if cfg.drop_opening_repeat:
        runs_events, _ = drop_opening_repeat(runs_events, tr)
    for st, rf, events in zip(stages, runs, runs_events):
        n = len(st.values)
        big[start:start + n] = preprocess_stage(st, pcfg, tr).values
        _release_pages(st.values)
        values = big[start:start + n]
        start += n
        y, idx, _ = tr_targets(events, n, tr, targets, cfg.target)
        out.append(RunData(rf, values, y, idx, events, st.fd))
        if progress is not None:
            progress(len(out))
    return out, big


@dataclass
class Prepared:
    """A subject ready to fit: targets embedded, every run motion-corrected and masked.

    Attributes
    ----------
    train_files, test_files : list of RunFiles
    stages : list of MotionStage
        Training runs first, then Test runs (the order of the files).
    targets : StimulusTargets
    embedder : music.embedding.Embedder
    tr_s : float
    n_volumes : int
        Volumes of the first Training run.
    reference : ndarray of shape (nx, ny, nz), float32
        The motion reference of every run (first volume of the first Training run).
    affine : ndarray of shape (4, 4)
    mask : ndarray of bool, shape (nx, ny, nz)
        Brain mask; the voxel order of every run's values is its C order.
    labels : ndarray of shape (n_voxels,), int64, or None
        With ``cfg.parcellation``: each masked voxel's region label, in that order.
    shared_tracks : list of (track, training run, test run)
        Tracks heard in both (:func:`~offline_training.bids.shared_tracks`); only with ``allow_shared_tracks``.
    """

    train_files: list
    test_files: list
    stages: list
    targets: StimulusTargets
    embedder: object
    tr_s: float
    n_volumes: int
    reference: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None
    shared_tracks: list = field(default_factory=list)

    def runs(self, cfg: TrainConfig, pcfg: PreprocessConfig, progress: Callable[[int, int], None] | None = None):
        """Training and Test runs through the rest of the chain (``pcfg``: detrend, normalise).

        Returns
        -------
        train_runs, test_runs : list of RunData
        train_values, test_values : ndarray of shape (n_volumes_total, n_voxels), float32
            All runs' values, concatenated; the runs' ``values`` are views of them.
        """
        n, total = len(self.train_files), len(self.stages)
        step = (lambda off: (lambda d: progress(off + d, total))) if progress is not None else (lambda off: None)
        trn, trv = _load_runs(self.stages[:n], self.train_files, cfg, pcfg, self.targets, self.tr_s, step(0))
        tst, tsv = _load_runs(self.stages[n:], self.test_files, cfg, pcfg, self.targets, self.tr_s, step(n))
        return trn, tst, trv, tsv


def prepare(ds: str, cfg: TrainConfig, progress: Progress = _noop, timings: dict | None = None) -> Prepared:
    """Find the runs, embed the stimuli and motion-correct every run (both cached).

    Parameters
    ----------
    ds : str
        BIDS root.
    cfg : TrainConfig
    progress : callable
        ``progress(stage, done, total)``.
    timings : dict, optional
        Filled with seconds per stage.
    """
    from music.embedding import get_embedder

    timings = {} if timings is None else timings
    if cfg.fit_on not in ("clip", "tr"):
        raise ValueError(f"fit_on must be 'clip' or 'tr', got {cfg.fit_on!r}")
    if cfg.target == "window" and cfg.fit_on == "clip":
        raise ValueError("per-TR window targets change within a clip: use fit_on='tr' (--fit-on tr) with them")
    pcfg = cfg.preprocess()
    if not pcfg.causal:
        raise ValueError("the deployed bundle must use causal preprocessing; the offline variant is compared "
                         "with compare_offline=True")
    runs = find_runs(ds, cfg.subject)
    train_files = [r for r in runs if r.task == "Training"]
    test_files = [r for r in runs if r.task == "Test"]
    if len(train_files) < 2:
        raise ValueError(f"{ds}: subject {cfg.subject} has {len(train_files)} Training runs; leave-one-run-out "
                         "CV needs at least 2")
    if not test_files:
        raise ValueError(f"{ds}: subject {cfg.subject} has no Test runs to evaluate on")
    shared = shared_tracks(train_files, test_files)
    if shared and not cfg.allow_shared_tracks:
        name, train_run, test_run = shared[0]
        raise ValueError(f"{ds}: {len(shared)} track(s) are heard in both Training and Test runs (first: {name}, in "
                         f"{train_run} and {test_run}); Test identification would reward recognising the recording. "
                         "Fix the events, or pass --allow-shared-tracks to train anyway (metrics.json lists them)")
    all_files = train_files + test_files
    # every run's sidecar, header and events before any long work: a bad last run fails now, not after minutes
    img0, tr, events_by_run = check_runs(all_files)
    stimuli = cfg.stimuli or os.path.join(ds, "stimuli")
    check_stimuli(stimuli, all_files, events_by_run, option="--stimuli" if cfg.stimuli else None)
    reference = np.asarray(img0.dataobj[..., 0], np.float32)
    affine = img0.affine
    bmask = brain_mask(reference)
    # the masks are read before the long embedding and motion correction, so a wrong file fails at once
    if cfg.roi_mask:
        bmask &= _image_on_grid(cfg.roi_mask, reference.shape, affine, "ROI mask", "--roi-mask") > 0
        if not bmask.any():
            raise ValueError(f"{cfg.roi_mask}: the ROI mask and the brain mask share no voxel; is it the "
                             "mask of this subject, in the space of its BOLD runs?")
    labels = None
    if cfg.parcellation:
        labels = _image_on_grid(cfg.parcellation, reference.shape, affine, "parcellation",
                                "--parcellation")[bmask].astype(np.int64)
    t0 = time.monotonic()
    cache = cfg.cache or os.path.join(ds, "derivatives", "b2m", "embeddings")
    embedder = get_embedder(cfg.embedder)
    all_events = [e for r in all_files for e in events_by_run[r.name]]
    targets = embed_stimuli(all_events, stimuli, embedder, tr, cache_dir=cache,
                            progress=lambda d, t: progress("embed stimuli", d, t))
    timings["embed_stimuli"] = time.monotonic() - t0
    # motion correction + masking, once per run (cached); everything after it is cheap
    t0 = time.monotonic()
    preproc_dir = None
    if cfg.preproc_cache:
        preproc_dir = os.path.join(ds, "derivatives", "b2m", "preproc", f"sub-{cfg.subject}")
    n_vol = img0.shape[3]
    stages = []
    for i, rf in enumerate(all_files):
        stages.append(motion_stage(rf, bmask, reference, affine, pcfg, cache_dir=preproc_dir, tr_s=tr,
                                   progress=lambda d, t, i=i: progress("motion correction", i * n_vol + min(d, n_vol),
                                                                       len(all_files) * n_vol)))
    timings["motion_correction"] = time.monotonic() - t0
    return Prepared(train_files, test_files, stages, targets, embedder, tr, n_vol, reference, affine, bmask, labels,
                    shared)


def check_runs(runs: list[RunFiles]) -> tuple[object, float, dict[str, list[Event]]]:
    """Check every run before any long work: sidecar, header, one TR for all, events inside each run.

    Each run's sidecar and NIfTI header are read (:func:`~offline_training.bids.load_bold`; no voxel data),
    every run's TR must equal the first run's, and its events must fit its image
    (:func:`~offline_training.bids.check_events_in_run`).

    Parameters
    ----------
    runs : list of RunFiles
        The first one gives the TR (and the reference image).

    Returns
    -------
    img0 : nibabel image
        The first run's image (lazy: its data are not read).
    tr_s : float
        The TR of every run, seconds.
    events : dict
        Each run's events, by :attr:`RunFiles.name`.

    Raises
    ------
    ValueError, FileNotFoundError
        Naming the file at fault (both files, for a TR that differs between runs).
    """
    img0, tr, events = None, None, {}
    for rf in runs:
        img, tr_run = load_bold(rf)
        if img0 is None:
            img0, tr = img, tr_run
        elif abs(tr_run - tr) > 1e-3:  # the sidecar/header tolerance of load_bold
            raise ValueError(f"TR differs between runs: {rf.sidecar} (and {rf.bold}) say {tr_run:g} s but "
                             f"{runs[0].sidecar} (and {runs[0].bold}) say {tr:g} s; one decoder reads every run at "
                             "one TR. Leave out the runs recorded at another TR, or fix the files that are wrong")
        ev = read_events(rf.events)
        check_events_in_run(rf.events, ev, img.shape[3], tr_run)
        events[rf.name] = ev
    return img0, tr, events


def check_stimuli(folder: str, runs: list[RunFiles], events: dict[str, list[Event]],
                  option: str | None = None) -> None:
    """Every track the events ask for is a file in ``folder`` (a stat per track, before any embedding).

    ``option`` names where the folder came from (``"--stimuli"``), or None for the default ``DS/stimuli``.
    Raises FileNotFoundError naming the folder, or the missing track with the events file and line asking for it.
    """
    given = f"given by {option}" if option else "the default, DS/stimuli; another is given by --stimuli"
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: stimulus folder not found ({given}); expected a folder holding the "
                                "GTZAN tracks as WAV files named <genre>.<track:05d>.wav (e.g. blues.00098.wav)")
    for rf in runs:
        for ev in events[rf.name]:
            path = os.path.join(folder, ev.stimulus_file)
            if not os.path.isfile(path):
                nested = os.path.join(folder, ev.genre, ev.stimulus_file)
                hint = (f" It is in a per-genre subfolder ({nested}); move all tracks into one folder."
                        if os.path.isfile(nested) else "")
                raise FileNotFoundError(f"{path}: stimulus not found, asked for by {rf.events}, line {ev.line}; "
                                        f"expected the GTZAN tracks as WAV files directly in {folder} ({given}), "
                                        f"named <genre>.<track:05d>.wav.{hint}")


def check_test_presentations(test_runs: list[RunData], delays) -> None:
    """At least two Test excerpts have volumes that decode them, or identification is undefined (NaN).

    Each excerpt is decoded from the volumes ``max(delays)`` TRs after it plays
    (:func:`.decoding.decoded_events`). Raises ValueError naming the Test runs' events files.
    """
    usable = set()
    for r in test_runs:
        ev = decoded_events(r, delays)
        usable |= {excerpt_id(r.events[j]) for j in np.unique(ev) if j >= 0}
    if len(usable) < 2:
        files = ", ".join(str(r.files.events) for r in test_runs)
        raise ValueError(f"the Test runs leave {len(usable)} excerpt(s) with volumes to decode them "
                         f"({max(delays)} TRs after they play); identification needs 2 or more, or its figures "
                         f"would be undefined (NaN). Check the events of the Test runs ({files}) against their "
                         "images, and --delays")


def _image_on_grid(path: str, shape, affine, what: str, option: str) -> np.ndarray:
    """A 3-D NIfTI (mask or parcellation, given by ``option``) that must lie on the BOLD grid, as an array."""
    import nibabel as nib

    from realtime.preprocessing import check_geometry

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {option} file not found; expected a 3-D NIfTI {what} on the BOLD grid")
    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"a {type(img).__name__}")
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel's ImageFileError for a .npy, gzip and EOF errors for a damaged file...
        raise ValueError(f"{path}: {option} expects a NIfTI image (.nii or .nii.gz), a 3-D {what} on the BOLD "
                         f"grid; this file cannot be read as one ({type(e).__name__}: {e})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path} ({what}, {option}): must be a 3-D image, got shape {data.shape}")
    try:
        check_geometry(data.shape, img.affine, shape, affine, what="subject's BOLD run")
    except ValueError as e:
        raise ValueError(f"{path} ({what}, {option}): {e}; resample it to the BOLD grid first") from None
    return data


def blas_threads(n: int | None):
    """Context limiting BLAS threads to ``n`` (None: leave them alone).

    On a 2-core machine shared with other work, OpenBLAS's second thread
    spins against the other processes: the decoder fit of the small-grid
    subject took 17 s with 2 threads and 0.5 s with 1, the whole training
    94 s and 59 s (see the issue-6 notes). Hence ``b2m train --threads 1``
    by default.
    """
    import contextlib

    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    import scipy.linalg  # noqa: F401  (scipy ships its own OpenBLAS: load it so the limit reaches it too)

    return threadpool_limits(limits=int(n), user_api="blas")


def train(ds: str, out: str, cfg: TrainConfig, progress: Progress = _noop) -> dict:
    """Train, evaluate and export. Returns the metrics (also in ``out/metrics.json``)."""
    with blas_threads(cfg.threads):
        return _train(ds, out, cfg, progress)


def _train(ds: str, out: str, cfg: TrainConfig, progress: Progress) -> dict:
    from .export import write_bundle

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    prep = prepare(ds, cfg, progress, timings)  # checks every input first: a bad one leaves no bundle folder
    os.makedirs(out, exist_ok=True)
    targets, embedder, tr = prep.targets, prep.embedder, prep.tr_s
    reference, affine, bmask = prep.reference, prep.affine, prep.mask
    pcfg = cfg.preprocess()
    # the dataset identifies the subject beside its label: b2m group pools sub-001 of two datasets as two people
    metrics: dict = {"config": asdict(cfg), "dataset": os.path.abspath(ds), "preprocess": pcfg.to_dict(),
                     "tr_s": tr, "n_brain_voxels": int(bmask.sum()), "timings_s": timings,
                     "shared_tracks": [list(t) for t in prep.shared_tracks],
                     # which code, software and files made this bundle (a reviewer's first question)
                     "provenance": provenance(),
                     "dataset_files": dataset_files(ds, [*prep.train_files, *prep.test_files])}

    def fit_eval(pc: PreprocessConfig, tag: str) -> tuple[dict, dict]:
        t0 = time.monotonic()
        trn, tst, trv, tsv = prep.runs(cfg, pc, lambda d, t: progress(f"detrend + normalise ({tag})", d, t))
        timings[f"detrend_normalize_{tag}"] = time.monotonic() - t0
        check_test_presentations(tst, cfg.delays)
        t0 = time.monotonic()
        feats, sel, sel_scores, sel_alphas, selection = choose_voxels(
            trn, trv, cfg, prep.labels, progress=lambda d, t: progress(f"select voxels ({tag})", d, t))
        timings[f"select_voxels_{tag}"] = time.monotonic() - t0
        t0 = time.monotonic()
        dec = fit_decoder(trn, sel, cfg.delays, cfg.alphas, fit_on=cfg.fit_on,
                          scales=DEVIATION_SCALES if cfg.calibrate_scale else (1.0,),
                          shrinkages=READOUT_SHRINKAGES if cfg.whiten_readout else (1.0,),
                          progress=lambda d, t: progress(f"decoder CV + fit ({tag})", d, t))
        coef, xm, ym, best, cv = dec.coef, dec.x_mean, dec.y_mean, dec.alphas, dec.cv_scores
        fit_s = time.monotonic() - t0
        timings[f"decoder_fit_{tag}"] = fit_s
        _, train_emb, train_genres = targets.clips(trn)
        centre = train_emb.mean(0)
        res = evaluate_decoder(tst, coef, xm, ym, sel, cfg.delays, targets, train_emb, train_genres, centre)
        if not np.isfinite(res["identification_accuracy"]):  # never a bundle with an undefined headline
            raise ValueError(f"{ds}: Test identification is undefined ({res['n_test_clips']} Test excerpt(s) "
                             "decoded; it needs 2 or more): check the Test runs' events against their images")
        res["fit_s"] = fit_s
        res["alphas"] = edge_alphas(best, cfg.alphas)
        res["n_train_samples"] = dec.n_samples
        res["deviation_scale"] = dec.scale
        res["deviation_scale_cv_identification"] = dec.scale_cv
        res["readout_shrinkage"] = dec.shrinkage
        res["readout_shrinkage_cv_identification"] = dec.shrinkage_cv
        res["voxel_selection"] = selection
        state = {"train": trn, "test": tst, "train_values": trv, "test_values": tsv, "sel": sel, "sel_scores": sel_scores, "sel_alphas": sel_alphas,
                 "coef": coef, "xm": xm,
                 "ym": ym, "best": best, "cv": cv, "feats": feats, "train_emb": train_emb,
                 "train_genres": train_genres}
        return res, state

    causal, st = fit_eval(pcfg, "causal")
    metrics["causal"] = {k: v for k, v in causal.items() if k != "_arrays"}
    for k in ("identification_accuracy", "identification_accuracy_centred", "within_genre_identification_accuracy",
              "identification_accuracy_ci95", "within_genre_identification_accuracy_ci95",
              "identification_accuracy_p", "within_genre_identification_accuracy_p",
              "identification_accuracy_single", "within_genre_identification_accuracy_single", "genre_prior", "nway",
              "identification_accuracy_centred_ci95", "beyond_genre_prior"):
        metrics[k] = causal[k]
    if cfg.compare_offline:
        offline, _ = fit_eval(pcfg.offline_variant(), "offline")
        metrics["offline"] = {k: v for k, v in offline.items() if k != "_arrays"}

    # encoding maps: per-voxel alpha, test correlation over all brain voxels
    t0 = time.monotonic()
    trn, tst = st["train"], st["test"]
    ftr = np.concatenate(st["feats"])
    fte = np.concatenate([delay_features(r.y, cfg.delays) for r in tst])
    # each voxel's alpha is the one its selection CV chose (inside the training runs)
    enc_corr, enc_alpha = fit_encoding(ftr, st["train_values"], None, fte, st["test_values"],
                                       best_alphas=st["sel_alphas"],
                                       progress=lambda d, t: progress("encoding maps", d, t))
    timings["encoding_maps"] = time.monotonic() - t0
    t0 = time.monotonic()
    metrics["encoding"] = {"median_test_corr_selected": float(np.median(enc_corr[st["sel"]])),
                           "max_test_corr": float(enc_corr.max())}
    t0 = time.monotonic()
    ev_map = _noise_ceiling(tst, tr, st["sel"], metrics)
    timings["noise_ceiling"] = time.monotonic() - t0
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
    progress("export + report", 0, 2)
    values_sel = np.concatenate([r.values[:, st["sel"][order]] for r in trn])
    n_train = len(prep.train_files)
    metrics["qc"] = {"tsnr": training_tsnr(prep.stages[:n_train], prep.train_files, st["sel"], pcfg, tr)}
    public = metrics
    write_bundle(out, coef=coef, x_mean=xm, y_mean=st["ym"], mask=sel_mask, affine=affine, reference=reference,
                 norm_mean=values_sel.mean(0), norm_std=values_sel.std(0), embedder=embedder.identity(),
                 embedder_spec=embedder.spec, tr_s=tr, delays=cfg.delays, preprocess=pcfg.to_dict(),
                 metrics={k: public[k] for k in ("identification_accuracy", "identification_accuracy_centred",
                                                 "within_genre_identification_accuracy")},
                 extra={"n_volumes": int(prep.n_volumes), "subject": cfg.subject, "target": cfg.target,
                        "qc": metrics["qc"], "provenance": metrics["provenance"]})
    progress("export + report", 1, 2)
    from .report import write_report

    metrics["wall_s"] = time.monotonic() - t_start  # provisional, for the report
    write_report(out, public, causal["_arrays"], st, enc_corr, bmask, affine, reference, targets, ev_map)
    progress("export + report", 2, 2)
    timings["export_report"] = time.monotonic() - t0
    metrics["wall_s"] = time.monotonic() - t_start
    metrics["peak_rss_mb"] = peak_rss_mb()
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(public, f, indent=2, default=_json_default)
    save_test_predictions(os.path.join(out, TEST_PREDICTIONS), causal["_arrays"])
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2, default=_json_default)
    return public


#: The decoder's Test-set outputs, beside metrics.json, so every figure can be recomputed without the data.
TEST_PREDICTIONS = "test_predictions.npz"


def save_test_predictions(path: str, arrays: dict) -> None:
    """Write what the Test metrics were computed from (causal preprocessing, as deployed).

    Arrays: ``pred`` and ``true`` (n_clips, dim), the 4-repeat average of the
    decoded embeddings (unit norm) and the targets; ``keys`` and ``genres``
    (n_clips,), excerpt ids and genres; ``centre`` (dim,), the mean Training
    embedding the centred metric subtracts; ``genre_prior`` (n_clips, dim), the
    genre-only baseline's predictions; ``single_pred`` (n_presentations, dim)
    and ``single_clip`` (n_presentations,), each presentation's decoded
    embedding and its clip's row; ``corr`` (n_clips, n_clips), correlation of
    each prediction with each target; with tags, ``pred_tags`` and ``true_tags``.
    """
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})


def training_tsnr(stages: list[MotionStage], files: list[RunFiles], sel: np.ndarray, pcfg: PreprocessConfig,
                  tr_s: float) -> dict:
    """The temporal SNR of the decoder's voxels in the Training runs, for the bundle's ``qc.tsnr``.

    The selected voxels of each Training run (motion-corrected, in the bundle's voxel order) go through the
    live chain again, which reports the running median a session would at every volume
    (:meth:`realtime.preprocessing.qc.RunningTsnr.median`, same code). ``runs`` holds each run's figure at its
    end, ``median`` their median, and ``curve`` the median over the runs at each volume count: the figure a live
    run is compared with at the same point, as the running figure reads high in a run's first minutes.

    Returns
    -------
    dict
        ``median`` (float or None), ``runs`` ({name: float or None}), ``curve`` (list of float or None, one per
        volume of the longest run), ``measure``.
    """
    order = np.sort(sel)  # the bundle's voxel order (C order of its mask), which the live median strides over
    per_run, curves = {}, []
    for st, rf in zip(stages, files):
        sub = MotionStage(np.ascontiguousarray(st.values[:, order]), None, None)
        _release_pages(st.values)
        curve = preprocess_stage(sub, pcfg, tr_s, tsnr_curve=True).tsnr_curve
        per_run[f"{rf.task}_run-{rf.run:02d}"] = float(curve[-1]) if curve.size and np.isfinite(curve[-1]) else None
        curves.append(curve)
    vals = [v for v in per_run.values() if v is not None]
    n = max((c.size for c in curves), default=0)
    table = np.full((len(curves), n), np.nan)
    for i, c in enumerate(curves):
        table[i, :c.size] = c
    with warnings.catch_warnings():  # a volume count no run reached its figure at: None
        warnings.simplefilter("ignore", RuntimeWarning)
        mid = np.nanmedian(table, axis=0) if len(curves) else np.empty(0)
    return {"median": float(np.median(vals)) if vals else None, "runs": per_run,
            "curve": [round(float(v), 3) if np.isfinite(v) else None for v in mid],  # JSON has no NaN
            "measure": "median over the decoder's voxels of mean / s.d. of the high-passed series so far"}


def _noise_ceiling(test_runs: list[RunData], tr_s: float, sel: np.ndarray, metrics: dict) -> np.ndarray | None:
    """Explainable variance of every brain voxel from the Test repeats (:mod:`.ceiling`), into ``metrics``.

    Returns the map, shape (n_brain_voxels,), or None when the Test runs
    repeat no excerpt (then ``metrics["noise_ceiling"]["error"]`` says why;
    the bundle is still written).
    """
    try:
        rows, info = repeat_rows([r.event_index for r in test_runs],
                                 [[excerpt_id(e) for e in r.events] for r in test_runs],
                                 lag=int(round(EV_LAG_S / tr_s)))
    except ValueError as e:
        metrics["noise_ceiling"] = {"error": str(e)}
        return None
    ev_map = noise_ceiling([r.values for r in test_runs], rows)
    sel_ev = ev_map[sel].astype(np.float64)
    metrics["noise_ceiling"] = {
        "measure": "explainable variance (bias-corrected) of the preprocessed Test runs, repeats aligned per excerpt",
        "lag_s": EV_LAG_S, "n_repeats": info["n_repeats"], "n_excerpts": info["n_excerpts"],
        "n_samples": info["n_samples"], "n_excerpts_left_out": len(info["excerpts_left_out"]),
        "median_ev_brain": float(np.median(ev_map)), "median_ev_selected": float(np.median(sel_ev)),
        # a single-presentation correlation cannot exceed sqrt(EV): the encoding model's share of that ceiling
        "median_sqrt_ev_selected": float(np.median(np.sqrt(np.clip(sel_ev, 0, None)))),
        "median_encoding_corr_selected": metrics["encoding"]["median_test_corr_selected"],
    }
    return ev_map


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux ``ru_maxrss`` is KiB)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
