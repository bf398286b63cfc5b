"""Benchmark per-TR preprocessing: motion accuracy and speed against python-rtspm, chain time, drift.

Run from the repository root::

    .venv/bin/python bench/preprocess.py             # full: one 410-volume run, ~12 min idle
    .venv/bin/python bench/preprocess.py --quick     # 14 volumes (tSNR: 200), under ~60 s
    .venv/bin/python bench/preprocess.py --volumes 120

Data (``bench/_motion_data.py``): until ``b2m simulate`` exists, a stand-in at
the full ds003720 grid (96 x 96 x 68, 2 mm, int16): nilearn's MNI152 tissue
templates turned into an EPI-like image (about 1,000-3,000 in the brain),
moved per volume by a known, typical trajectory (slow drift, 0.5-1 mm spikes,
one step; up to 1.5 mm / 1.5 degrees) with cubic B-splines in the project's
convention (``current(M x) = reference(x)``, ``M = rigid_matrix(p)``). Two
conditions: noise-free (float32) and Rician noise for a temporal SNR of 40
(int16, as the scanner sends it). Ground truth is the trajectory.

Measured:

1. The SPM -> project parameter conversion on one known motion
   (``params_from_spm``), and what a C-ordered ``Vol`` does to rtspm.
2. Motion estimation, side by side on the same volumes, reference = volume 0:
   our ``MotionCorrector`` (estimation only, no reslice) and python-rtspm's
   ``spm_realign_rt`` with OpenNFT's flags (quality 0.9, fwhm 5, sep 4,
   interp 4 = 4th-degree B-spline, wrap 0, rtm 0, lkp 1:6; ``R(2).mat`` set
   to the header each volume, as OpenNFT does). RMS error against ground truth
   (mm, degrees; volume 0 excluded) and ``perf_counter`` time per call (p50,
   p99; the first call, which sets up the reference, is reported apart). The
   two tools alternate volume by volume so both see the same machine load.
   rtspm's input conversion (float64, Fortran order) is outside its timer;
   ours converts int16 inside. BLAS threads are left at their default here
   (rtspm is faster with 2); rtspm with 1 BLAS thread and rtspm's
   ``spm_reslice_rt`` (OpenNFT's next step) are timed on a subset.
3. The whole per-TR chain, ``OnlinePreprocessor`` with the default
   config (motion, reslice at a 60,000-voxel grey-matter mask, EMA high-pass
   detrend, running z-score, delays (2, 3, 4)), on the tSNR-40 run, with BLAS
   limited to 1 thread and without; plus a per-stage breakdown; and the
   same chain on another day's grid (another prescription and head
   position, as a session on a bundle from another day), alternating with
   the model's grid: per-TR ratio, the first volume's search, accuracy.
4. Drift: a known drift (linear + quadratic + 0.005 Hz sine, about 2 % of
   baseline) and a block-design task (1/30 Hz, 1 %) on 2,000 synthetic voxel
   time series (410 volumes, TR 1.5 s, AR(1) noise at tSNR 40), and (full
   mode) added to 2,000 motion-corrected voxels of the simulated run. Residual
   power below 0.01 Hz relative to the injected drift's, and correlation with
   the true task signal, for causal detrending (GLM orders 1-3, the EMA at
   45 and 60 s) against the offline variants (whole-run regression, 240 s
   median filter).
5. The run's temporal SNR, as the chain keeps it per volume: ``RunningTsnr.step``
   and ``.median()`` (``realtime.preprocessing.qc``) at 60,000 and 500 voxels,
   p50 and p99 over a run's volumes from the 20th on (the median is reported
   from there), against the naive per-TR recomputation over the volumes so far,
   ``np.median(y[:t+1].mean(0) / h[:t+1].std(0))`` over every voxel (what a tool
   without running sums does), alternating volume by volume; ratio of the two.
   Synthetic voxels (baseline 1,000-3,000, noise at tSNR 40, float32) and their
   EMA high-pass (60 s), made before the timing.

Prints a table and, as the last line, one JSON object; writes
``bench/results/preprocess.json`` (``preprocess-quick.json`` with ``--quick``).
python-rtspm is GPL-3.0 and is used here only, never by the packages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import _motion_data as md  # noqa: E402
from realtime.preprocessing import (DelayStack, MotionCorrector, OnlinePreprocessor, PreprocessConfig,  # noqa: E402
                                    RunningNormalizer, causal_detrender, detrend_run, detrend_run_offline,
                                    ema_detrend_run, median_filter_detrend, params_from_spm, params_to_spm)

TR_S = 1.5
RUN_LENGTH = 410  # volumes in one ds003720 run
TSNR = 40.0
MASK_VOXELS = 60_000
DAY2_MOVE = (6.0, -7.0, 3.0, np.radians(4), np.radians(-2), np.radians(3))  # mm, rad: the head on another day
GOAL_CHAIN_P99_MS = 25.0
DCT_CUTOFF_S = 128.0
# OpenNFT's realign flags (opennft/mainLoop.m and pyOpenNFT: quality .9, fwhm 5, sep 4, interp 4)
RTSPM_FLAGS = {"quality": 0.9, "fwhm": 5, "sep": 4, "interp": 4, "wrap": np.zeros((3, 1)), "rtm": 0, "PW": "",
               "lkp": np.arange(6)}
RTSPM_RESLICE_FLAGS = {"quality": 0.9, "fwhm": 5, "sep": 4, "interp": 4, "wrap": np.zeros((3, 1)), "mask": 1,
                       "mean": 0, "which": 2}
SOURCES = ["realtime/preprocessing/motion.py", "realtime/preprocessing/_sampling.py",
           "realtime/preprocessing/_rigid.py", "realtime/preprocessing/pipeline.py",
           "realtime/preprocessing/detrend.py", "realtime/preprocessing/normalize.py",
           "realtime/preprocessing/delays.py", "realtime/preprocessing/qc.py", "bench/_motion_data.py"]
TSNR_VOXELS = (MASK_VOXELS, 500)  # a whole grey-matter mask, a decoder's voxels
TSNR_QUICK_VOLUMES = 200


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- rtspm

class RtspmRealign:
    """python-rtspm's ``spm_realign_rt`` driven the way OpenNFT drives it.

    ``r = [reference, current]``; each current volume gets the header ``mat``
    (no warm start), and the parameters are ``spm_imatrix(R2.mat / R1.mat)``
    converted to the project's convention with ``params_from_spm``.
    """

    def __init__(self, reference, affine, flags=RTSPM_FLAGS):
        self.mat = md.spm_mat(affine)
        self.dim = np.array(reference.shape)
        self.flags = dict(flags)
        self.r = [self._vol(reference), None]
        self.state = ([], [], [], [], [], [])  # a0, x1, x2, x3, deg, b
        self.n_calls = 0

    def _vol(self, volume) -> dict:
        return {"Vol": np.asfortranarray(volume, dtype=np.float64), "mat": self.mat.copy(), "dim": self.dim}

    def update(self, volume):
        """Returns (params in our convention, SPM's q, n_iter, seconds in spm_realign_rt)."""
        from rtspm import spm_imatrix, spm_realign_rt

        self.r[1] = self._vol(volume)
        ind = self.n_calls + 1
        with np.errstate(divide="ignore", invalid="ignore"):  # its first call divides 0 by 0, harmlessly
            t0 = time.perf_counter()
            r, a0, x1, x2, x3, deg, b, n_iter = spm_realign_rt(self.r, self.flags, ind, 1, *self.state)
            dt = time.perf_counter() - t0
        self.r = r
        self.state = (a0, x1, x2, x3, deg, b)
        self.n_calls += 1
        q = spm_imatrix(r[1]["mat"] @ np.linalg.inv(r[0]["mat"]))[:6]
        return params_from_spm(q), q, int(n_iter), dt

    def reslice(self) -> float:
        """Time OpenNFT's next step, ``spm_reslice_rt`` of the whole volume (seconds)."""
        from rtspm import spm_reslice_rt

        t0 = time.perf_counter()
        spm_reslice_rt(self.r, RTSPM_RESLICE_FLAGS)
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- helpers

def _errors(est: np.ndarray, true: np.ndarray) -> dict:
    """RMS and max errors over volumes 1.. (volume 0 is the reference), mm and degrees."""
    e = est[1:] - true[1:]
    et, er = e[:, :3], np.rad2deg(e[:, 3:])
    return {"rms_error_mm": float(np.sqrt(np.mean(et ** 2))), "rms_error_deg": float(np.sqrt(np.mean(er ** 2))),
            "max_abs_error_mm": float(np.abs(et).max()), "max_abs_error_deg": float(np.abs(er).max()),
            "rms_error_per_param": [float(x) for x in np.sqrt(np.mean(np.hstack([et, er]) ** 2, axis=0))]}


def _ms(xs) -> list[float]:
    return [1e3 * x for x in xs]


def _hrf(tr_s: float, length_s: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every TR, unit sum."""
    from scipy.stats import gamma

    t = np.arange(0.0, length_s, tr_s)
    h = gamma.pdf(t, 6.0) - gamma.pdf(t, 16.0) / 6.0
    return h / h.sum()


def _lf_power(x: np.ndarray, tr_s: float, fmax: float = 0.01) -> float:
    """Total power below ``fmax`` Hz (DC excluded) of x of shape (n_volumes, n_series)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    spec = np.abs(np.fft.rfft(x, axis=0)) ** 2
    f = np.fft.rfftfreq(x.shape[0], tr_s)
    sel = (f > 0) & (f < fmax)
    return float(spec[sel].sum())


def _dct_basis(n: int, tr_s: float, cutoff_s: float) -> np.ndarray:
    """SPM's high-pass DCT set (spm_filter): the non-constant cosines below 1/cutoff_s, shape (n, K - 1)."""
    k_max = int(2 * n * tr_s / cutoff_s + 1)
    t = np.arange(n)
    return np.stack([np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n)) for k in range(1, k_max)], axis=1)


def _mean_corr(x: np.ndarray, s: np.ndarray) -> float:
    """Mean over columns of the Pearson correlation of x[:, j] with s."""
    xc = x - x.mean(axis=0)
    sc = s - s.mean()
    num = sc @ xc
    den = np.sqrt((xc ** 2).sum(axis=0) * (sc ** 2).sum())
    return float(np.mean(num / np.maximum(den, 1e-30)))


# ---------------------------------------------------------------------------------------------- stages

def make_run(n: int, *, seed: int):
    """Baseline, trajectory and both conditions of the stand-in run."""
    t0 = time.perf_counter()
    run = md.moving_run(n, seed=seed, tsnr=TSNR, clean=True, log=_log)
    base, affine, brain, gm = run["base"], run["affine"], run["brain"], run["gm"]
    true, sigma, clean, noisy = run["params"], run["sigma"], run["clean"], run["noisy"]
    # temporal SNR of the noise actually added, in the brain (median over voxels)
    k = min(n, 20)
    diff = noisy[:k].astype(np.float32) - clean[:k]
    tsnr = np.median(noisy[:k].mean(axis=0)[brain] / np.maximum(diff.std(axis=0)[brain], 1e-6))
    mask = md.grey_mask(brain, gm, MASK_VOXELS)  # the model's mask
    info = {"shape": list(base.shape), "voxel_mm": md.VOXEL_MM, "affine": affine.tolist(), "n_volumes": n,
            "brain_voxels": int(brain.sum()), "mask_voxels": int(mask.sum()),
            "baseline_brain_p5_p50_p95": [float(x) for x in np.percentile(base[brain], [5, 50, 95])],
            "noise_sigma": sigma, "tsnr_nominal": TSNR, "tsnr_measured_median": float(tsnr),
            "true_max_abs_mm": [float(x) for x in np.abs(true[:, :3]).max(axis=0)],
            "true_max_abs_deg": [float(x) for x in np.rad2deg(np.abs(true[:, 3:])).max(axis=0)],
            "true_fd_max_mm": float(np.max(np.abs(np.diff(true[:, :3], axis=0)).sum(1)
                                           + 50.0 * np.abs(np.diff(true[:, 3:], axis=0)).sum(1))) if n > 1 else 0.0,
            "build_s": time.perf_counter() - t0}
    return base, affine, mask, true, clean, noisy, info


def conversion_check(base, affine) -> dict:
    """One known motion through rtspm: is params_from_spm right, and what does C order do?"""
    true = np.array([1.0, -0.6, 0.8, np.deg2rad(1.0), np.deg2rad(-0.8), np.deg2rad(0.6)])
    vol = md.Mover(base, affine)(true)
    out = {"true_params_mm_deg": [*true[:3], *np.rad2deg(true[3:])], "expected_spm_q": params_to_spm(true).tolist()}
    rt = RtspmRealign(base, affine)
    rt.update(base)
    est, q, n_iter, _ = rt.update(vol)
    out["rtspm_q"] = q.tolist()
    out["converted_params_mm_deg"] = [*est[:3], *np.rad2deg(est[3:])]
    out["error_mm"] = (est[:3] - true[:3]).tolist()
    out["error_deg"] = np.rad2deg(est[3:] - true[3:]).tolist()
    out["q_minus_expected_q"] = (q - params_to_spm(true)).tolist()
    # the same with C-ordered arrays (what a naive caller passes)
    rc = RtspmRealign(base, affine)
    rc._vol = lambda v: {"Vol": np.ascontiguousarray(v, dtype=np.float64), "mat": rc.mat.copy(), "dim": rc.dim}
    rc.r = [rc._vol(base), None]
    rc.update(base)
    est_c, q_c, _, _ = rc.update(vol)
    out["c_order_error_mm"] = (est_c[:3] - true[:3]).tolist()
    out["c_order_error_deg"] = np.rad2deg(est_c[3:] - true[3:]).tolist()
    # the conversion itself against rtspm's own spm_matrix / spm_imatrix, on random motions (+-3 mm, +-3 deg)
    from rtspm import spm_imatrix, spm_matrix

    from realtime.preprocessing import rigid_matrix

    rng = np.random.default_rng(7)
    worst_m = worst_q = 0.0
    for _ in range(200):
        q = np.concatenate([rng.uniform(-3, 3, 3), np.deg2rad(rng.uniform(-3, 3, 3))])
        worst_m = max(worst_m, float(np.abs(rigid_matrix(params_from_spm(q)) - np.linalg.inv(spm_matrix(q))).max()))
        p = rng.uniform(-3, 3, 6) * np.array([1, 1, 1, np.pi / 180, np.pi / 180, np.pi / 180])
        worst_q = max(worst_q, float(np.abs(spm_imatrix(np.linalg.inv(rigid_matrix(p)))[:6] - params_to_spm(p)).max()))
    out["max_abs_rigid_matrix_vs_inv_spm_matrix"] = worst_m
    out["max_abs_spm_imatrix_vs_params_to_spm"] = worst_q
    return out


def side_by_side(vols, affine, true, *, label: str, reslice_every: int = 0) -> dict:
    """Ours and rtspm alternating on every volume of one condition."""
    from realtime.preprocessing import MotionConfig

    n = len(vols)
    t0 = time.perf_counter()
    ours = MotionCorrector(vols[0], affine, config=MotionConfig())
    ours_setup = time.perf_counter() - t0
    rt = RtspmRealign(vols[0], affine)
    p_ours, p_rt = np.empty((n, 6)), np.empty((n, 6))
    t_ours, t_rt, it_ours, it_rt, conv = [], [], [], [], []
    t_resl = []
    for t in range(n):
        v = vols[t]
        s = time.perf_counter()
        r = ours.update(v)
        t_ours.append(time.perf_counter() - s)
        p_ours[t], it_ours_t = r.params, r.n_iter
        it_ours.append(it_ours_t)
        conv.append(r.converged)
        p_rt[t], _, n_it, dt = rt.update(v)
        t_rt.append(dt)
        it_rt.append(n_it)
        if reslice_every and t > 0 and t % reslice_every == 0:
            t_resl.append(rt.reslice())
        if t % 50 == 49:
            _log(f"  {label}: {t + 1}/{n} volumes")
    res = {}
    for name, p, ts, its in (("ours", p_ours, t_ours, it_ours), ("rtspm", p_rt, t_rt, it_rt)):
        d = _errors(p, true)
        tm = summarize(_ms(ts[1:]))
        d.update(p50_ms=tm["p50"], p99_ms=tm["p99"], time_ms=tm, first_call_ms=1e3 * ts[0],
                 n_iter_mean=float(np.mean(its[1:])) if n > 1 else None, n_iter_max=int(np.max(its)))
        res[name] = d
    res["ours"]["setup_ms"] = 1e3 * ours_setup
    res["ours"]["n_points"] = int(ours.reference.n_points)
    res["ours"]["converged_fraction"] = float(np.mean(conv))
    res["rtspm"]["n_points"] = int(len(rt.state[1]))
    if t_resl:
        res["rtspm"]["reslice_ms"] = summarize(_ms(t_resl))
    res["ratio_rtspm_over_ours_p50"] = res["rtspm"]["p50_ms"] / res["ours"]["p50_ms"]
    res["ratio_rtspm_over_ours_p99"] = res["rtspm"]["p99_ms"] / res["ours"]["p99_ms"]
    res["params_ours"] = p_ours
    res["params_rtspm"] = p_rt
    return res


def rtspm_one_blas_thread(vols, affine, n: int) -> dict:
    from threadpoolctl import threadpool_limits

    rt = RtspmRealign(vols[0], affine)
    ts = []
    with threadpool_limits(1):
        for t in range(n):
            ts.append(rt.update(vols[t])[3])
    return summarize(_ms(ts[1:]))


def chain_timing(vols, affine, mask, *, blas_one: bool) -> dict:
    """OnlinePreprocessor.process per volume (the default config), one pass over the run."""
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    n = len(vols)
    cfg = PreprocessConfig()
    ctx = threadpool_limits(1) if blas_one else nullcontext()
    ts = []
    with ctx:
        t0 = time.perf_counter()
        pre = OnlinePreprocessor(mask, affine, cfg, n, reference=vols[0], tr_s=TR_S)
        setup = time.perf_counter() - t0
        for t in range(n):
            s = time.perf_counter()
            pre.process(vols[t])
            ts.append(time.perf_counter() - s)
    tm = summarize(_ms(ts[1:]))
    return {"p50_ms": tm["p50"], "p99_ms": tm["p99"], "time_ms": tm, "first_ms": 1e3 * ts[0], "setup_ms": 1e3 * setup,
            "blas_threads": 1 if blas_one else "default", "config": cfg.to_dict(), "n_voxels": pre.n_voxels,
            "samples_ms": _ms(ts[1:])}


def chain_timing_abba(vols, affine, mask) -> dict:
    """Default BLAS, 1 thread, 1 thread, default: two passes each in ABBA order, so a change of
    machine load over time does not favour either; samples of both passes are pooled."""
    passes = [chain_timing(vols, affine, mask, blas_one=b) for b in (False, True, True, False)]
    out = {}
    for key, idx in (("blas_default", (0, 3)), ("blas1", (1, 2))):
        a, b = passes[idx[0]], passes[idx[1]]
        samples = a.pop("samples_ms") + b.pop("samples_ms")
        tm = summarize(samples)
        out[key] = {**a, "p50_ms": tm["p50"], "p99_ms": tm["p99"], "time_ms": tm, "passes": 2,
                    "p50_per_pass_ms": [a["p50_ms"], b["p50_ms"]], "p99_per_pass_ms": [a["p99_ms"], b["p99_ms"]]}
        out[key]["first_ms"] = [a["first_ms"], b["first_ms"]]
        out[key]["setup_ms"] = [a["setup_ms"], b["setup_ms"]]
    return out


def another_grid(vols, affine, mask, true, n_max: int) -> dict:
    """The chain on another day's grid against the model's own, alternating volume by volume (1 BLAS thread).

    Day 2: the slices prescribed anew (2.4 mm isotropic, 84 x 84 x 58, tilted 12 deg about x, the origin
    8, -10 and 4 mm away) and the head 10 mm and 6 deg away from where the model's reference lay
    (``DAY2_MOVE``), on top of the run's own motion. The day-2 volumes are the run's resampled by scipy's
    cubic spline (not timed). Both passes start from the model's reference volume (the run's volume 0 on
    the model's grid), as a session does from a bundle: the day-2 pass finds its first volume by
    ``MotionCorrector.align`` (its time is reported apart) and reslices every volume from its own grid.
    Accuracy: the day-2 parameters against the truth, ``DAY2_MOVE`` composed with the run's motion.
    """
    from scipy.ndimage import map_coordinates
    from threadpoolctl import threadpool_limits

    from realtime.preprocessing import params_from_matrix, rigid_matrix

    n = min(len(vols), n_max)
    grid_affine = rigid_matrix([0, 0, 0, np.radians(12), 0, 0]) @ np.diag([-2.4, 2.4, 2.4, 1.0])
    grid_affine[:3, 3] = affine[:3, 3] + [8.0, -10.0, 4.0]
    shape2 = (84, 84, 58)
    move = rigid_matrix(DAY2_MOVE)
    vox = np.linalg.inv(affine) @ np.linalg.inv(move) @ grid_affine
    at = vox[:3, :3] @ np.indices(shape2).reshape(3, -1) + vox[:3, 3:]
    t0 = time.perf_counter()
    day2 = [np.round(map_coordinates(vols[t].astype(np.float64), at, order=3, mode="nearest")).astype(np.int16)
            .reshape(shape2) for t in range(n)]
    build_s = time.perf_counter() - t0
    truth = np.array([params_from_matrix(move @ rigid_matrix(p)) for p in true[:n]])
    cfg = PreprocessConfig()
    reference = vols[0]
    ts = {"model's grid": [], "another grid": []}
    est = np.empty((n, 6))
    with threadpool_limits(1):
        same = OnlinePreprocessor(mask, affine, cfg, n, reference=reference, tr_s=TR_S)
        other = OnlinePreprocessor(mask, affine, cfg, n, reference=reference, tr_s=TR_S)
        other.check(shape2, grid_affine)
        for t in range(n):
            order = (("model's grid", same, vols[t]), ("another grid", other, day2[t]))
            for name, pre, vol in (order if t % 2 == 0 else order[::-1]):
                s = time.perf_counter()
                r = pre.process(vol)
                ts[name].append(time.perf_counter() - s)
                if pre is other:
                    est[t] = r.motion.params
    err = _errors(est, truth)  # volumes 1..; the first one, found by the search, apart
    first = est[0] - truth[0]
    out = {"n_volumes": n, "grid": {"shape": list(shape2), "affine": grid_affine.tolist()}, "move": list(DAY2_MOVE),
           "build_s": build_s, "alignment": {"first_ms": 1e3 * ts["another grid"][0],
                                             "describe": other.alignment.describe(),
                                             "start": other.alignment.start, "starts": other.alignment.starts},
           "first_volume_error": {"mm": [float(x) for x in first[:3]],
                                  "deg": [float(x) for x in np.rad2deg(first[3:])]},
           "error": err}
    for name, xs in ts.items():
        out[name] = summarize(_ms(xs[1:]))
    out["ratio_another_over_model_p50"] = out["another grid"]["p50"] / out["model's grid"]["p50"]
    out["ratio_another_over_model_p99"] = out["another grid"]["p99"] / out["model's grid"]["p99"]
    return out


def chain_breakdown(vols, affine, mask) -> dict:
    """Per stage, BLAS at 1 thread: the steps of ``OnlinePreprocessor.process`` called one by one.

    Motion is ``MotionReference.prepare`` (int16 -> float32 copy and
    smoothing), ``MotionReference.estimate`` (Gauss-Newton) and the reslice
    at the mask (``MotionCorrector``'s private reslicer, as ``update`` calls
    it); then the configured detrender's ``step`` (:func:`causal_detrender`), ``RunningNormalizer.step`` and
    ``DelayStack.push``.
    """
    from threadpoolctl import threadpool_limits

    from realtime.preprocessing import rigid_matrix

    n = len(vols)
    cfg = PreprocessConfig()
    mc = MotionCorrector(vols[0], affine, config=cfg.motion_config, reslice_mask=mask)
    ref, reslicer = mc.reference, getattr(mc, "_reslicer", None)
    nv = mc.n_voxels
    det = causal_detrender(cfg, nv, n, TR_S)
    norm = RunningNormalizer(nv, cfg.normalize)
    stack = DelayStack(nv, cfg.delays)
    buf = np.empty(nv, np.float32)
    keys = ("smooth", "estimate", "reslice", "detrend", "normalize", "delay_stack")
    out = {k: [] for k in keys}
    prev = None
    with threadpool_limits(1):
        for t in range(n):
            v = vols[t]
            s = time.perf_counter()
            raw = ref.prepare(v)
            out["smooth"].append(time.perf_counter() - s)
            s = time.perf_counter()
            params, _, _ = ref.estimate(None, init=prev)
            out["estimate"].append(time.perf_counter() - s)
            prev = params
            s = time.perf_counter()
            if reslicer is not None:
                reslicer(raw.reshape(-1), rigid_matrix(params), buf)
            else:  # the private reslicer moved: fall back on the public (slower, allocating) path
                mc.update(v, out=buf)
            out["reslice"].append(time.perf_counter() - s)
            s = time.perf_counter()
            y = det.step(buf)
            out["detrend"].append(time.perf_counter() - s)
            s = time.perf_counter()
            y = norm.step(y)
            out["normalize"].append(time.perf_counter() - s)
            s = time.perf_counter()
            stack.push(y)
            out["delay_stack"].append(time.perf_counter() - s)
    res = {k: summarize(_ms(v[1:])) for k, v in out.items()}
    res["sum"] = summarize(_ms([sum(out[k][t] for k in keys) for t in range(1, n)]))
    res["n_points"] = int(ref.n_points)
    return res


def drift_table(noise: np.ndarray, baseline: np.ndarray, *, rng, tr_s: float = TR_S) -> dict:
    """Inject drift + task into ``noise`` (n_volumes, n_series) and compare detrenders.

    ``noise`` already holds the baseline (it is the signal without drift or
    task); ``baseline`` (n_series,) scales the drift (about 2 %) and the task (1 %).
    """
    n, v = noise.shape
    t = np.arange(n) * tr_s
    u = np.linspace(-1.0, 1.0, n)
    lin = 0.01 * rng.choice([-1.0, 1.0], v) * rng.uniform(0.5, 1.5, v) * u[:, None]  # 2 % end to end
    quad = 0.01 * rng.uniform(-1.0, 1.0, v) * (u[:, None] ** 2 - 1.0 / 3.0)
    sine = 0.01 * rng.uniform(0.5, 1.5, v) * np.sin(2 * np.pi * 0.005 * t[:, None] + rng.uniform(0, 2 * np.pi, v))
    poly = (lin + quad) * baseline
    sine = sine * baseline
    drift = poly + sine
    block = ((t // 15.0) % 2 == 1).astype(float)  # 15 s off, 15 s on: 1/30 Hz
    task = np.convolve(block, _hrf(tr_s))[:n]
    task /= np.abs(task).max()
    y0 = noise + 0.01 * task[:, None] * baseline  # everything but the drift
    y = y0 + drift
    task_part = 0.01 * task[:, None] * baseline
    p_drift = _lf_power(drift, tr_s)
    dct = _dct_basis(n, tr_s, DCT_CUTOFF_S)
    methods = {"none": lambda x: x.astype(np.float32)}
    for k in (1, 2, 3):
        methods[f"causal_poly{k}"] = (lambda x, k=k: detrend_run(x, k))
    for k in (1, 2, 3):
        methods[f"offline_poly{k}"] = (lambda x, k=k: detrend_run_offline(x, k))
    methods["median240"] = lambda x: median_filter_detrend(x, tr_s, 240.0)
    # the causal EMA high-pass (detrend="ema"), at two time constants
    for tau_s in (45.0, 60.0):
        methods[f"causal_ema{tau_s:g}"] = (lambda x, tau_s=tau_s: ema_detrend_run(x, tau_s / tr_s))
    # what-if rows: an SPM-style DCT high-pass set (128 s) as extra regressors of the same GLMs
    methods["causal_dct128"] = lambda x: detrend_run(x, 0, dct)
    methods["offline_dct128"] = lambda x: detrend_run_offline(x, 0, dct)
    first = min(40, n // 4)
    rows = {}
    for name, f in methods.items():
        out_y = f(y).astype(np.float64)
        out_0 = f(y0).astype(np.float64)
        leak = out_y - out_0
        leak_poly = out_y - f(y - poly).astype(np.float64)
        leak_sine = out_y - f(y - sine).astype(np.float64)
        rel = leak / baseline
        kept = out_y - f(y - task_part).astype(np.float64)  # what the method does to the task itself
        kc, tc = kept - kept.mean(axis=0), task - task.mean()
        gain = (tc @ kc) / ((tc @ tc) * 0.01 * baseline)
        rows[name] = {
            "lf_leak_ratio": _lf_power(leak, tr_s) / p_drift,
            "lf_leak_ratio_poly": _lf_power(leak_poly, tr_s) / _lf_power(poly, tr_s),
            "lf_leak_ratio_sine": _lf_power(leak_sine, tr_s) / _lf_power(sine, tr_s),
            "lf_residual_ratio": _lf_power(out_y, tr_s) / p_drift,
            "resid_drift_rms_pct_first": 100 * float(np.sqrt(np.mean(rel[:first] ** 2))),
            "resid_drift_rms_pct_rest": 100 * float(np.sqrt(np.mean(rel[first:] ** 2))),
            "task_corr": _mean_corr(out_y, task),
            "task_corr_after_first": _mean_corr(out_y[first:], task[first:]),
            "task_corr_no_drift": _mean_corr(out_0, task),
            "task_gain": float(np.mean(gain)),
            "task_shape_corr": _mean_corr(kept, task),
        }
    return {"n_volumes": n, "n_series": v, "tr_s": tr_s, "first_volumes": first,
            "drift_rms_pct": 100 * float(np.sqrt(np.mean((drift / baseline) ** 2))),
            "drift_ptp_pct_median": 100 * float(np.median(np.ptp(drift / baseline, axis=0))),
            "dct_cutoff_s": DCT_CUTOFF_S, "dct_regressors": int(dct.shape[1]),
            "lf_power_noise_and_task_over_drift": _lf_power(y0, tr_s) / p_drift,
            "task_corr_ceiling": _mean_corr(y0, task), "methods": rows}


def tsnr_timing(n: int, n_voxels: int, rng) -> dict:
    """Per-volume cost of the running tSNR against the naive recomputation (section 5 of the module doc).

    Both see the same float32 volumes (raw ``y`` and high-passed ``h``, shape (n, n_voxels)); their order
    alternates volume by volume so a change of machine load favours neither. Samples from volume
    ``TSNR_MIN_VOLUMES`` on (the running median is NaN before, at no cost).
    """
    from realtime.preprocessing.qc import TSNR_MIN_VOLUMES, RunningTsnr, median_tsnr

    t0 = time.perf_counter()
    base = rng.uniform(1000.0, 3000.0, n_voxels).astype(np.float32)
    y = base + (base / np.float32(TSNR)) * rng.standard_normal((n, n_voxels), dtype=np.float32)
    h = ema_detrend_run(y, 60.0 / TR_S)  # float32, as the chain's detrender gives it
    build_s = time.perf_counter() - t0
    tracker = RunningTsnr(n_voxels)
    ts = {"step": [], "median": [], "running": [], "naive": []}
    run_med = naive_med = float("nan")
    for t in range(n):
        def running():
            s = time.perf_counter()
            tracker.step(y[t], h[t])
            m = time.perf_counter()
            out = tracker.median()
            e = time.perf_counter()
            return out, m - s, e - m, e - s

        def naive():
            s = time.perf_counter()
            with np.errstate(divide="ignore", invalid="ignore"):  # one volume: s.d. 0
                out = float(np.median(y[:t + 1].mean(0) / h[:t + 1].std(0)))
            return out, time.perf_counter() - s

        if t % 2 == 0:
            run_med, dt_step, dt_med, dt_run = running()
            naive_med, dt_naive = naive()
        else:
            naive_med, dt_naive = naive()
            run_med, dt_step, dt_med, dt_run = running()
        if t + 1 >= TSNR_MIN_VOLUMES:
            for k, v in (("step", dt_step), ("median", dt_med), ("running", dt_run), ("naive", dt_naive)):
                ts[k].append(v)
    out = {"n_voxels": n_voxels, "n_volumes": n, "from_volume": TSNR_MIN_VOLUMES, "build_s": build_s,
           "median_stride": -(-n_voxels // 2000)}
    for k, xs in ts.items():
        out[k] = summarize(_ms(xs))
    out["ratio_naive_over_running_p50"] = out["naive"]["p50"] / out["running"]["p50"]
    out["ratio_naive_over_running_p99"] = out["naive"]["p99"] / out["running"]["p99"]
    # the figures themselves at the run's end: the running median (strided, float64 sums) and the naive one
    # (every voxel, float32), and the running figure against numpy's float64 over every voxel
    ref = y.astype(np.float64).mean(0) / h.astype(np.float64).std(0)
    out["final_median_running"] = run_med
    out["final_median_naive"] = naive_med
    out["final_median_float64_all_voxels"] = float(np.median(ref))
    out["final_median_float64_strided"] = median_tsnr(ref)
    out["max_rel_diff_running_voxels_vs_float64"] = float(np.max(np.abs(tracker.voxels() / ref - 1.0)))
    return out


def synthetic_noise(n: int, v: int, rng, *, phi: float = 0.3):
    """Baseline (1,000-3,000) plus AR(1) noise with marginal std baseline / TSNR."""
    base = rng.uniform(1000.0, 3000.0, v)
    e = rng.standard_normal((n, v))
    x = np.empty((n, v))
    x[0] = e[0]
    c = math.sqrt(1.0 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + c * e[t]
    return base + x * (base / TSNR), base


def run_voxels(vols, affine, mask, n_series: int, rng) -> np.ndarray:
    """Motion-corrected values of ``n_series`` random mask voxels over the run (not timed)."""
    ijk = np.argwhere(mask)
    sel = ijk[np.sort(rng.choice(len(ijk), n_series, replace=False))]
    mc = MotionCorrector(vols[0], affine, reslice_mask=sel)
    return np.stack([mc.update(vols[t]).values for t in range(len(vols))]).astype(np.float64)


# ---------------------------------------------------------------------------------------------- report

def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def print_report(res: dict) -> None:
    d = res["data"]
    print(f"\npreprocess bench: {d['n_volumes']} volumes of {tuple(d['shape'])} at {d['voxel_mm']} mm, "
          f"true motion up to {max(d['true_max_abs_mm']):.2f} mm / {max(d['true_max_abs_deg']):.2f} deg, "
          f"tSNR {d['tsnr_measured_median']:.1f} (nominal {TSNR:.0f}); nproc {res['machine']['nproc']}, "
          f"load average {res['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} at end")
    c = res["conversion_check"]
    print("\nparams_from_spm on a known motion (1, -0.6, 0.8 mm; 1, -0.8, 0.6 deg) through rtspm:")
    print("  rtspm q          " + " ".join(f"{x:+.4f}" for x in c["rtspm_q"]))
    print("  params_to_spm(t) " + " ".join(f"{x:+.4f}" for x in c["expected_spm_q"]))
    print("  error (F order)  " + " ".join(f"{x:+.4f}" for x in c["error_mm"]) + " mm  "
          + " ".join(f"{x:+.4f}" for x in c["error_deg"]) + " deg")
    print("  error (C order)  " + " ".join(f"{x:+.4f}" for x in c["c_order_error_mm"]) + " mm  "
          + " ".join(f"{x:+.4f}" for x in c["c_order_error_deg"]) + " deg")
    print(f"  exactness on 200 random motions: |rigid_matrix(params_from_spm(q)) - inv(spm_matrix(q))| <= "
          f"{c['max_abs_rigid_matrix_vs_inv_spm_matrix']:.1e}, |spm_imatrix(inv(rigid_matrix(p))) - "
          f"params_to_spm(p)| <= {c['max_abs_spm_imatrix_vs_params_to_spm']:.1e}")

    print("\nmotion estimation vs ground truth (volume 0 = reference; time per call, first call excluded)")
    hdr = f"  {'condition':<11}{'tool':<7}{'RMS mm':>9}{'RMS deg':>9}{'max mm':>9}{'max deg':>9}" \
          f"{'p50 ms':>9}{'p99 ms':>9}{'iter':>6}{'points':>8}"
    print(hdr)
    for cond in ("noise_free", "tsnr40"):
        for tool in ("ours", "rtspm"):
            r = res[cond][tool]
            print(f"  {cond:<11}{tool:<7}{r['rms_error_mm']:>9.4f}{r['rms_error_deg']:>9.4f}"
                  f"{r['max_abs_error_mm']:>9.4f}{r['max_abs_error_deg']:>9.4f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                  f"{r['n_iter_mean']:>6.1f}{r['n_points']:>8d}")
        c = res[cond]
        print(f"  {'':<11}ratio rtspm/ours time: p50 {c['ratio_rtspm_over_ours_p50']:.1f}x, "
              f"p99 {c['ratio_rtspm_over_ours_p99']:.1f}x")
    o, r = res["tsnr40"]["ours"], res["tsnr40"]["rtspm"]
    print(f"  setup: ours MotionCorrector {o['setup_ms']:.0f} ms + first update {o['first_call_ms']:.0f} ms; "
          f"rtspm first call {r['first_call_ms']:.0f} ms; ours converged on {100 * o['converged_fraction']:.0f} % "
          f"of volumes (max {o['n_iter_max']} iterations), rtspm max {r['n_iter_max']} iterations")
    if "reslice_ms" in r:
        print(f"  rtspm spm_reslice_rt (whole volume, OpenNFT's next step): p50 {r['reslice_ms']['p50']:.0f} ms "
              f"(n={r['reslice_ms']['n']})")
    if res.get("rtspm_blas1_ms"):
        print(f"  rtspm with 1 BLAS thread: p50 {res['rtspm_blas1_ms']['p50']:.0f} ms "
              f"(n={res['rtspm_blas1_ms']['n']})")

    ch = res["chain"]
    print(f"\nfull chain per volume (OnlinePreprocessor: motion + reslice {ch['blas1']['n_voxels']} voxels + "
          f"{PreprocessConfig().detrend} detrend + running z + delays (2,3,4)), tSNR-40 run; goal p99 <= {GOAL_CHAIN_P99_MS:.0f} ms;\n"
          f"  two passes per BLAS setting in ABBA order, pooled")
    for k in ("blas1", "blas_default"):
        t = ch[k]
        print(f"  BLAS {str(t['blas_threads']):<8} p50 {t['p50_ms']:6.2f} ms  p90 {t['time_ms']['p90']:6.2f}  "
              f"p99 {t['p99_ms']:6.2f}  max {t['time_ms']['max']:6.2f}  (per pass p50 "
              f"{t['p50_per_pass_ms'][0]:.1f}/{t['p50_per_pass_ms'][1]:.1f}, p99 {t['p99_per_pass_ms'][0]:.1f}/"
              f"{t['p99_per_pass_ms'][1]:.1f}; setup {t['setup_ms'][0]:.0f} ms)")
    b = ch["breakdown_blas1"]
    print("  stages one by one, BLAS 1 (p50 / p99 ms): " + ", ".join(
        f"{k} {b[k]['p50']:.2f}/{b[k]['p99']:.2f}" for k in
        ("smooth", "estimate", "reslice", "detrend", "normalize", "delay_stack", "sum")))
    ag = res["another_grid"]
    print(f"\nanother day's grid (84 x 84 x 58 at 2.4 mm, tilted 12 deg; the head 10 mm, 6 deg away), "
          f"{ag['n_volumes']} volumes alternating with the model's grid, BLAS 1:")
    for k in ("model's grid", "another grid"):
        print(f"  {k:<13} p50 {ag[k]['p50']:6.2f} ms  p99 {ag[k]['p99']:6.2f} ms")
    print(f"  ratio another / model's: p50 {ag['ratio_another_over_model_p50']:.2f}, "
          f"p99 {ag['ratio_another_over_model_p99']:.2f}; first volume (the search) "
          f"{ag['alignment']['first_ms']:.0f} ms: {ag['alignment']['describe']}")
    print(f"  against the truth (the day's move and the run's motion): RMS {ag['error']['rms_error_mm']:.3f} mm, "
          f"{ag['error']['rms_error_deg']:.3f} deg; first volume "
          + " ".join(f"{x:+.3f}" for x in ag["first_volume_error"]["mm"]) + " mm "
          + " ".join(f"{x:+.3f}" for x in ag["first_volume_error"]["deg"]) + " deg")

    tsnr = res.get("tsnr")
    if tsnr:
        print(f"\nrunning tSNR per volume (RunningTsnr.step + .median(), strided median) against the naive "
              f"recomputation\n  np.median(y[:t+1].mean(0) / h[:t+1].std(0)) over every voxel; volumes "
              f"{tsnr[0]['from_volume']}-{tsnr[0]['n_volumes']}, alternating (ms)")
        print(f"  {'voxels':>8}{'step p50':>10}{'p99':>8}{'median p50':>12}{'p99':>8}{'both p50':>10}{'p99':>8}"
              f"{'naive p50':>11}{'p99':>8}{'ratio p50':>11}{'p99':>7}")
        for r in tsnr:
            print(f"  {r['n_voxels']:>8d}{r['step']['p50']:>10.3f}{r['step']['p99']:>8.3f}{r['median']['p50']:>12.3f}"
                  f"{r['median']['p99']:>8.3f}{r['running']['p50']:>10.3f}{r['running']['p99']:>8.3f}"
                  f"{r['naive']['p50']:>11.3f}{r['naive']['p99']:>8.3f}{r['ratio_naive_over_running_p50']:>10.0f}x"
                  f"{r['ratio_naive_over_running_p99']:>6.0f}x")
        for r in tsnr:
            print(f"  {r['n_voxels']} voxels at the run's end: running median {r['final_median_running']:.3f} "
                  f"(stride {r['median_stride']}), naive {r['final_median_naive']:.3f}, float64 over every "
                  f"voxel {r['final_median_float64_all_voxels']:.3f}; per voxel, running vs float64: max rel. diff "
                  f"{r['max_rel_diff_running_voxels_vs_float64']:.1e}")

    for key, title in (("synthetic", "synthetic voxels"), ("run", "motion-corrected run voxels")):
        dt = res["drift"].get(key)
        if not dt:
            continue
        print(f"\ndrift, {title}: {dt['n_series']} series x {dt['n_volumes']} volumes, TR {dt['tr_s']} s, drift RMS "
              f"{dt['drift_rms_pct']:.2f} % of baseline; LF = power below 0.01 Hz relative to the injected drift's")
        print(f"  (drift peak-to-peak median {dt['drift_ptp_pct_median']:.2f} %; noise + task alone have LF "
              f"{dt['lf_power_noise_and_task_over_drift']:.3f}; task r ceiling {dt['task_corr_ceiling']:.3f}; "
              f"dct128 = {dt['dct_regressors']} cosines below 1/{dt['dct_cutoff_s']:.0f} Hz)")
        print("  LF leak = LF power of out(y) - out(y without drift), split by component; LF resid = LF power of "
              "out(y);\n  rms% = that leak in % of baseline, first volumes / rest; task r = corr(out(y), task); "
              "task gain / shape r = out(y) - out(y without task) regressed on / correlated with the task")
        first = f"rms% 0-{dt['first_volumes']}"
        print(f"  {'method':<14}{'LF leak':>9}{'poly':>8}{'sine':>8}{'LF resid':>10}{first:>10}{'rms% rest':>10}"
              f"{'task r':>8}{'r rest':>8}{'r nodrift':>10}{'task gain':>10}{'shape r':>9}")
        for name, m in dt["methods"].items():
            print(f"  {name:<14}{m['lf_leak_ratio']:>9.4f}{m['lf_leak_ratio_poly']:>8.4f}"
                  f"{m['lf_leak_ratio_sine']:>8.4f}{m['lf_residual_ratio']:>10.4f}"
                  f"{m['resid_drift_rms_pct_first']:>10.3f}{m['resid_drift_rms_pct_rest']:>10.3f}"
                  f"{m['task_corr']:>8.3f}{m['task_corr_after_first']:>8.3f}"
                  f"{m['task_corr_no_drift']:>10.3f}{m['task_gain']:>10.3f}{m['task_shape_corr']:>9.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"14 volumes ({TSNR_QUICK_VOLUMES} for the tSNR) and a smaller drift set; under ~60 s")
    p.add_argument("--volumes", type=int, default=None,
                   help=f"volumes in the simulated run (default {RUN_LENGTH}, 14 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = args.volumes or (14 if args.quick else RUN_LENGTH)
    if n < 3:
        p.error("--volumes must be at least 3")
    t_start = time.perf_counter()
    import rtspm

    res: dict = {"machine": machine_info(), "sources": source_digest(SOURCES), "quick": args.quick,
                 "loadavg_start": list(os.getloadavg()),
                 "rtspm_version": rtspm.__version__, "rtspm_flags": {k: (v.tolist() if hasattr(v, "tolist") else v)
                                                                    for k, v in RTSPM_FLAGS.items()}}
    _log(f"building the stand-in run ({n} volumes)...")
    base, affine, mask, true, clean, noisy, info = make_run(n, seed=args.seed)
    res["data"] = info
    res["true_params"] = true
    _log("conversion check...")
    res["conversion_check"] = conversion_check(base, affine)

    _log("side by side, noise-free...")
    res["noise_free"] = side_by_side(clean, affine, true, label="noise-free")
    _log("side by side, tSNR 40...")
    res["tsnr40"] = side_by_side(noisy, affine, true, label="tSNR 40",
                                 reslice_every=max(1, n // (3 if args.quick else 20)))
    res["rtspm_blas1_ms"] = rtspm_one_blas_thread(noisy, affine, min(n, 4 if args.quick else 40))

    _log("full chain...")
    res["chain"] = chain_timing_abba(noisy, affine, mask)
    res["chain"]["breakdown_blas1"] = chain_breakdown(noisy, affine, mask)
    res["chain"]["goal_p99_ms"] = GOAL_CHAIN_P99_MS
    res["chain"]["meets_goal_blas1"] = res["chain"]["blas1"]["p99_ms"] <= GOAL_CHAIN_P99_MS
    _log("another day's grid...")
    res["another_grid"] = another_grid(noisy, affine, mask, true, 14 if args.quick else 60)

    _log("running tSNR...")
    n_tsnr = TSNR_QUICK_VOLUMES if args.quick else RUN_LENGTH
    res["tsnr"] = [tsnr_timing(n_tsnr, v, np.random.default_rng(args.seed + 20)) for v in TSNR_VOXELS]

    _log("drift...")
    rng = np.random.default_rng(args.seed + 10)
    n_series = 500 if args.quick else 2000
    noise, bl = synthetic_noise(RUN_LENGTH, n_series, rng)
    res["drift"] = {"synthetic": drift_table(noise, bl, rng=rng)}
    if n >= 200:
        vals = run_voxels(noisy, affine, mask, n_series, rng)
        res["drift"]["run"] = drift_table(vals, vals.mean(axis=0), rng=rng)
    res["total_s"] = time.perf_counter() - t_start
    res["loadavg_end"] = list(os.getloadavg())

    print_report(res)
    path = write_json("preprocess-quick" if args.quick else "preprocess", res)
    _log(f"wrote {path}")

    def tool(r):
        return {k: r[k] for k in ("rms_error_mm", "rms_error_deg", "p50_ms", "p99_ms", "max_abs_error_mm",
                                  "max_abs_error_deg", "n_iter_mean")}

    nf = res["noise_free"]
    line = {
        "ours": tool(res["tsnr40"]["ours"]),
        "rtspm": tool(res["tsnr40"]["rtspm"]),
        "ratio_rtspm_over_ours_p50": res["tsnr40"]["ratio_rtspm_over_ours_p50"],
        "ratio_rtspm_over_ours_p99": res["tsnr40"]["ratio_rtspm_over_ours_p99"],
        "noise_free": {"ours": tool(nf["ours"]), "rtspm": tool(nf["rtspm"])},
        "chain_ms": {k: {"p50": res["chain"][k]["p50_ms"], "p99": res["chain"][k]["p99_ms"]}
                     for k in ("blas1", "blas_default")},
        "chain_goal_p99_ms": GOAL_CHAIN_P99_MS,
        "another_grid_ms": {k: {"p50": res["another_grid"][k]["p50"], "p99": res["another_grid"][k]["p99"]}
                            for k in ("model's grid", "another grid")},
        "another_grid_ratio_p50": res["another_grid"]["ratio_another_over_model_p50"],
        "another_grid_first_ms": res["another_grid"]["alignment"]["first_ms"],
        "another_grid_rms_error": [res["another_grid"]["error"]["rms_error_mm"],
                                   res["another_grid"]["error"]["rms_error_deg"]],
        "rtspm_reslice_p50_ms": res["tsnr40"]["rtspm"].get("reslice_ms", {}).get("p50"),
        "running_tsnr_ms": {str(r["n_voxels"]): {k: {"p50": r[k]["p50"], "p99": r[k]["p99"]}
                                                 for k in ("running", "naive")} for r in res["tsnr"]},
        "running_tsnr_ratio_naive_p50": {str(r["n_voxels"]): r["ratio_naive_over_running_p50"] for r in res["tsnr"]},
        "drift_lf_leak": {key: {m: round(v["lf_leak_ratio"], 5) for m, v in dt["methods"].items()}
                          for key, dt in res["drift"].items()},
        "drift_task_corr": {key: {m: round(v["task_corr"], 4) for m, v in dt["methods"].items()}
                            for key, dt in res["drift"].items()},
        "n_volumes": n, "tsnr": info["tsnr_measured_median"], "quick": args.quick, "nproc": res["machine"]["nproc"],
        "loadavg_1min_start_end": [res["loadavg_start"][0], res["loadavg_end"][0]],
    }
    print(json.dumps(line, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
