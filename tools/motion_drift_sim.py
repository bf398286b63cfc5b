"""Motion and drift against the ground truth of ``b2m simulate`` (issue 5, acceptance 1 and 4).

Motion (acceptance 1, simulator part)
    Every run of the given simulated datasets is realigned with
    :func:`realtime.preprocessing.realign_run`: the live per-TR
    ``MotionCorrector`` fed the volumes in order, causal, default
    ``MotionConfig``, reference = volume 0, no estimation mask (as
    ``OnlinePreprocessor`` does). The estimates are compared with the
    simulator's true motion (``derivatives/simulation/sub-XXX/*_motion.tsv``):
    RMS error of the translations (mm, over the 3 axes and all volumes but
    the reference) and of the rotations (degrees), per run and pooled, plus
    the error of the displacement itself (``|(M_est - M_true) x|`` averaged
    over brain voxels, which does not depend on the rotation centre).

    Convention. Both are ``realtime.preprocessing`` parameters: ``tx, ty, tz``
    mm, ``rx, ry, rz`` radians, ``M = rigid_matrix(p) = T @ Rx @ Ry @ Rz``
    about the world origin (the scanner isocentre, the grid centre), mapping
    the reference head to the current one (``current(M x) = reference(x)``).
    The simulator moves the head image by ``move_volume(.., motion[n])`` in
    exactly that sense and writes ``motion - motion[0]``, so its reference is
    volume 0. For an estimate made against reference volume ``r`` the truth
    is therefore ``M_true[n] @ inv(M_true[r])`` (``truth_relative``), which is
    the identity map of the file's rows when ``r = 0``; the rotations are
    then turned from radians to degrees. No sign flip or axis swap is needed
    (there would be for SPM's ``rp_*.txt``: see ``params_from_spm``).

Drift (acceptance 4)
    The simulator multiplies each volume by a scanner-fixed slow gain
    ``G_n(x) = 1 + trend (u - 1/2) + sum_k cos(pi k u) / k D_k(x)``,
    ``u = (n + 1/2) / N`` (``RunNoise.scanner_gain`` without the coil bias).
    Its maps are not written to disk; they are rebuilt here with the
    simulator's own functions and seeds (``build_noise_maps``), and the
    rebuild is checked against the noise figures the simulator saved in
    ``sub-XXX_simulation.json`` (it must agree exactly). For every
    motion-corrected voxel series ``y`` (reslice of the live
    ``MotionCorrector`` on brain voxels of a 4 mm lattice and on the
    auditory mask), the gain is sampled where that voxel really was
    (``G_n`` resliced with the true motion) and the drift-free series is
    ``y0 = y * mean_n(G) / G``; the injected drift is ``d = y - y0``.
    Four detrendings ``D`` are compared: none (run mean removed), causal
    (the realtime default: ``detrend_run``, the per-TR ``CausalDetrender``
    with ``PreprocessConfig().poly_order``), offline (the same regressors
    fitted on the whole run, ``detrend_run_offline``) and Brain2Music's
    240 s running median (``median_filter_detrend``). Per variant:

    - ``drift left %``: ``sum |D(y) - D(y0)|^2 / sum |d - mean d|^2`` (truth
      based; what the drift still contributes to the output; for the linear
      detrenders it is ``D(d)``, for the median filter it is exact too);
    - ``|r| drift``: median over voxels of ``|corr(D(y), d)|`` (truth based);
    - ``LF out %``: power of ``D(y)`` below 0.01 Hz (periodogram, DC
      excluded) relative to the injected drift's power there (spectral);
    - ``LF floor %``: the same for ``D(y0)``, the drift-free series: the
      low-frequency noise and response the output would have anyway;
    - ``resp kept %`` (auditory mask only): ``<D(y) - D(y - s), s> / |s|^2``
      with ``s`` the true music response in signal units
      (``*_desc-response.npy``): how much of the signal each variant keeps.

Usage::

    .venv/bin/python tools/motion_drift_sim.py DS [DS ...] [--max-runs N] [--no-drift]

Writes ``bench/results/motion_drift_sim.json`` (``--name`` to change) with
``machine_info()``; prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, HERE)

from _machine import machine_info, source_digest, write_json  # noqa: E402  (bench/)
from motion_accuracy import DEG, errors  # noqa: E402  (tools/: one place for the error figures)

from realtime.preprocessing import (  # noqa: E402
    PreprocessConfig,
    detrend_run,
    detrend_run_offline,
    median_filter_detrend,
    params_from_matrix,
    realign_run,
    reslice,
    rigid_matrix,
)

TARGET_MM = 0.15  # at the simulator's default tSNR (issue 5, acceptance 1)
TARGET_DEG = 0.15
TARGET_NOISE_FREE = 0.05  # mm and degrees, noise-free (applied to datasets simulated at tSNR >= 1000)
LF_HZ = 0.01
LATTICE_MM = 4.0
VARIANTS = ("none", "causal", "offline", "median240")
SOURCES = ["realtime/preprocessing/motion.py", "realtime/preprocessing/_rigid.py",
           "realtime/preprocessing/_sampling.py", "realtime/preprocessing/detrend.py",
           "offline_training/simulate/noise.py", "offline_training/simulate/dataset.py",
           "tools/motion_drift_sim.py"]


# --------------------------------------------------------------------------- ground truth


def read_true_motion(path) -> np.ndarray:
    """The simulator's ``*_motion.tsv``: (n_volumes, 6), mm and radians, reference = volume 0."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    head = rows[0]
    cols = [head.index(c) for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")]
    return np.array([[float(r[c]) for c in cols] for r in rows[1:]])


def truth_relative(truth: np.ndarray, reference_index: int = 0) -> np.ndarray:
    """The true motion relative to another reference volume, in our convention.

    ``truth`` maps volume 0's head to volume n's (``M_n``); relative to volume
    ``r`` the map is ``M_n @ inv(M_r)``: ``current_n(M_n x) = vol0(x) =
    current_r(M_r x)``, so ``current_n(M_n inv(M_r) y) = current_r(y)``.
    """
    m = rigid_matrix(truth)
    return params_from_matrix(m @ np.linalg.inv(m[reference_index]))


def displacement_error(est: np.ndarray, truth: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Per volume, the mean over points ``x`` (world mm, (n, 3)) of ``|M_est x - M_true x|``, mm."""
    d = rigid_matrix(est) - rigid_matrix(truth)  # (T, 4, 4)
    xh = np.c_[world, np.ones(len(world))]
    return np.linalg.norm(np.einsum("tij,nj->tni", d[:, :3], xh), axis=2).mean(axis=1)


def _subject_noise_maps(ds: Path, cfg: dict, label: str):
    """Rebuild a subject's noise maps (drift fields) with the simulator's functions and seeds."""
    from offline_training.simulate import NoiseConfig, build_anatomy, build_noise_maps, make_grid, sample_head_placement
    from offline_training.simulate.dataset import _COMP, _rng

    grid = make_grid(cfg["grid"])
    seed, s_idx = int(cfg["seed"]), int(label)
    placement = sample_head_placement(grid, _rng(seed, s_idx, 0, 0, _COMP["placement"]))
    anatomy = build_anatomy(grid, placement, _rng(seed, s_idx, 0, 0, _COMP["anatomy"]))
    maps = build_noise_maps(anatomy, NoiseConfig(**cfg["noise"]), _rng(seed, s_idx, 0, 0, _COMP["noise_maps"]))
    saved = json.loads((ds / "derivatives" / "simulation" / f"sub-{label}" / f"sub-{label}_simulation.json")
                       .read_text())["noise"]
    if saved != maps.to_dict():
        raise RuntimeError(f"sub-{label}: rebuilt noise maps {maps.to_dict()} differ from the saved {saved}; "
                           "the simulator changed since this dataset was written")
    return maps


def _gain(maps, n: int, n_vol: int) -> np.ndarray:
    """``G_n``: the slow drift gain of volume n (``RunNoise.scanner_gain`` without the coil bias), float64."""
    u = (n + 0.5) / n_vol
    g = np.full(maps.drift.shape[1:], 1.0 + maps.drift_trend * (u - 0.5))
    for k in range(3):
        g += np.cos(np.pi * (k + 1) * u) / (k + 1) * maps.drift[k]
    return g


# --------------------------------------------------------------------------- drift metrics


def _detrend(name: str, y: np.ndarray, tr_s: float, order: int) -> np.ndarray:
    if name == "none":
        return (y - y.mean(axis=0)).astype(np.float64)
    if name == "causal":
        return detrend_run(y, order).astype(np.float64)
    if name == "offline":
        return detrend_run_offline(y, order).astype(np.float64)
    if name == "median240":
        return median_filter_detrend(y, tr_s, 240.0).astype(np.float64)
    raise ValueError(name)


def _lf_power(x: np.ndarray, tr_s: float) -> float:
    """Summed periodogram power of the columns below LF_HZ, DC excluded."""
    f = np.fft.rfftfreq(x.shape[0], tr_s)
    band = (f > 0) & (f < LF_HZ)
    spec = np.fft.rfft(x - x.mean(axis=0), axis=0)[band]
    return float((np.abs(spec) ** 2).sum())


def _abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    return np.abs((a * b).sum(axis=0)) / np.where(den > 0, den, np.inf)


def drift_sums(y: np.ndarray, g: np.ndarray, tr_s: float, order: int, s: np.ndarray | None = None) -> dict:
    """Sums over voxels of one run for the drift table (pooled later over runs)."""
    y = y.astype(np.float64)
    y0 = y * g.mean(axis=0) / g
    d = y - y0
    dc = d - d.mean(axis=0)
    out = {"n_voxels": y.shape[1], "drift_power": float((dc ** 2).sum()), "drift_lf": _lf_power(d, tr_s),
           "drift_rms_pct": float(np.sqrt(np.mean((dc / y.mean(axis=0)) ** 2)) * 100)}
    if s is not None:
        sc = s - s.mean(axis=0)
        out["resp_power"] = float((sc ** 2).sum())
    for v in VARIANTS:
        dy = _detrend(v, y, tr_s, order)
        dy0 = _detrend(v, y0, tr_s, order)
        leak = dy - dy0
        r = {"leak": float((leak ** 2).sum()), "lf_out": _lf_power(dy, tr_s), "lf_floor": _lf_power(dy0, tr_s),
             "corr": _abs_corr(dy, d).tolist()}
        if s is not None:
            kept = dy - _detrend(v, y - s, tr_s, order)
            r["resp_kept"] = float((kept * sc).sum())
        out[v] = r
    return out


def pool_drift(per_run: list[dict]) -> dict:
    res = {"n_runs": len(per_run), "n_voxel_series": int(sum(r["n_voxels"] for r in per_run)),
           "drift_rms_pct": float(np.sqrt(np.mean([r["drift_rms_pct"] ** 2 for r in per_run])))}
    p = sum(r["drift_power"] for r in per_run)
    lf = sum(r["drift_lf"] for r in per_run)
    for v in VARIANTS:
        row = {"drift_left_pct": 100 * sum(r[v]["leak"] for r in per_run) / p,
               "median_abs_corr": float(np.median(np.concatenate([r[v]["corr"] for r in per_run]))),
               "lf_out_pct": 100 * sum(r[v]["lf_out"] for r in per_run) / lf,
               "lf_floor_pct": 100 * sum(r[v]["lf_floor"] for r in per_run) / lf}
        if "resp_power" in per_run[0]:
            row["resp_kept_pct"] = 100 * sum(r[v]["resp_kept"] for r in per_run) / sum(r["resp_power"]
                                                                                    for r in per_run)
        res[v] = row
    return res


# --------------------------------------------------------------------------- one run


def _load_mask(ds: Path, label: str, desc: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(ds / "derivatives" / "simulation" / f"sub-{label}" /
                               f"sub-{label}_desc-{desc}_mask.nii.gz").dataobj) > 0


def _response_signal(ds: Path, label: str, stem: str, union_ijk: np.ndarray, aud_cols: np.ndarray,
                     y0_aud: np.ndarray) -> np.ndarray | None:
    """The true music response at the auditory columns, in signal units: ``y0 * (r/100) / (1 + r/100)``."""
    d = ds / "derivatives" / "simulation" / f"sub-{label}"
    resp = np.load(d / f"{stem}_desc-response.npy")  # (n_vol, n_responsive) percent
    ijk = np.loadtxt(d / f"sub-{label}_tuning.tsv", delimiter="\t", skiprows=1, usecols=(0, 1, 2), dtype=int,
                     ndmin=2)
    where = {tuple(v): i for i, v in enumerate(ijk)}
    idx = np.array([where.get(tuple(v), -1) for v in union_ijk[aud_cols]])
    if np.any(idx < 0):
        return None
    r = resp[:, idx].astype(np.float64) / 100.0
    return y0_aud * r / (1.0 + r)


def run_one(ds: Path, cfg: dict, label: str, run, maps, *, drift: bool, order: int, quiet: bool) -> dict:
    from offline_training.bids import load_bold

    img, tr_s = load_bold(run)
    affine = img.affine
    stem = run.name
    truth_file = read_true_motion(ds / "derivatives" / "simulation" / f"sub-{label}" / f"{stem}_motion.tsv")
    t0 = time.perf_counter()
    data = np.asarray(img.dataobj)
    t_load = time.perf_counter() - t0
    n_vol = data.shape[3]
    if truth_file.shape[0] != n_vol:
        raise ValueError(f"{stem}: {truth_file.shape[0]} motion rows for {n_vol} volumes")

    brain = _load_mask(ds, label, "brain")
    aud = _load_mask(ds, label, "auditory")
    vox = float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())
    step = max(1, int(round(LATTICE_MM / vox)))
    lattice = np.zeros(brain.shape, bool)
    lattice[::step, ::step, ::step] = True
    brain_lat = brain & lattice
    union = brain_lat | aud
    union_ijk = np.argwhere(union)
    brain_cols = brain_lat[tuple(union_ijk.T)]
    aud_cols = aud[tuple(union_ijk.T)]

    ref = 0
    t0 = time.perf_counter()
    rm = realign_run(data, affine, reference_index=ref, reslice_mask=union_ijk if drift else None)
    t_mc = time.perf_counter() - t0
    truth = truth_relative(truth_file, ref)  # identity when ref = 0 (the simulator's reference)
    keep = np.arange(n_vol) != ref
    e = errors(rm.params[keep], truth[keep])
    world = (affine[:3, :3] @ np.argwhere(brain_lat).T + affine[:3, 3:]).T
    disp = displacement_error(rm.params[keep], truth[keep], world)
    true_fd = np.abs(np.diff(truth_file, axis=0))
    fd = true_fd[:, :3].sum(axis=1) + 50.0 * true_fd[:, 3:].sum(axis=1)
    res = {"subject": label, "task": run.task, "run": run.run, "n_volumes": n_vol,
           "true_fd_mean_mm": float(fd.mean()), "true_fd_max_mm": float(fd.max()),
           "true_rms_mm": float(np.sqrt(np.mean(truth[keep, :3] ** 2))),
           "true_rms_deg": float(np.sqrt(np.mean((truth[keep, 3:] / DEG) ** 2))),
           **e, "disp_mean_mm": float(disp.mean()), "disp_max_mm": float(disp.max()),
           "n_not_converged": int((~rm.converged).sum()), "iters_mean": float(rm.n_iter.mean()),
           "ms_per_volume": 1e3 * t_mc / n_vol, "load_s": t_load,
           "per_axis_rms": {"mm": np.sqrt(np.mean((rm.params[keep, :3] - truth[keep, :3]) ** 2, axis=0)).tolist(),
                            "deg": (np.sqrt(np.mean((rm.params[keep, 3:] - truth[keep, 3:]) ** 2, axis=0))
                                    / DEG).tolist()},
           "_err": (rm.params[keep] - truth[keep]), "_disp": disp}
    if drift:
        # the true slow gain where each resliced voxel really was: G_n sampled at M_true,n x
        g = np.empty((n_vol, len(union_ijk)))
        buf = np.empty(len(union_ijk), np.float32)
        for n in range(n_vol):
            g[n] = reslice(_gain(maps, n, n_vol).astype(np.float32), truth_file[n], affine, union_ijk, out=buf)
        y = rm.values.astype(np.float64)
        res["drift"] = {"brain": drift_sums(y[:, brain_cols], g[:, brain_cols], tr_s, order)}
        ya, ga = y[:, aud_cols], g[:, aud_cols]
        s = _response_signal(ds, label, stem, union_ijk, aud_cols, ya * ga.mean(axis=0) / ga)
        res["drift"]["auditory"] = drift_sums(ya, ga, tr_s, order, s)
    if not quiet:
        print(f"  sub-{label} {run.task} run-{run.run:02d}: RMS {e['rms_mm']:.4f} mm {e['rms_deg']:.4f} deg",
              flush=True)
    return res


# --------------------------------------------------------------------------- main


def evaluate(ds: Path, *, max_runs: int | None, drift: bool, quiet: bool) -> dict:
    from offline_training.bids import find_runs, find_subjects

    from offline_training.simulate import read_simulation_config

    conf = read_simulation_config(ds)
    if conf is None:
        raise SystemExit(f"{ds}: no derivatives/simulation/config.json; give a dataset written by b2m simulate "
                         "(an unfinished one has none)")
    cfg = conf["config"]
    order = PreprocessConfig().poly_order
    out = {"path": str(ds), "grid": cfg["grid"], "motion": cfg["motion"], "tsnr": cfg["noise"]["tsnr"],
           "drift_pct": cfg["noise"].get("drift_pct"),
           "seed": cfg["seed"], "simulator_version": conf.get("simulator_version"),
           "interp_order": cfg.get("interp_order"), "poly_order": order, "runs": []}
    if not quiet:
        print(f"{ds}: grid {cfg['grid']}, motion {cfg['motion']}, tSNR {cfg['noise']['tsnr']:g}", flush=True)
    if drift and not cfg["noise"].get("drift_pct", 1.0) > 0:
        drift = False  # a dataset simulated without drift (diagnostics): motion only
    for label in find_subjects(ds):
        runs = find_runs(ds, label)
        maps = _subject_noise_maps(ds, cfg, label) if drift else None
        for run in runs:
            if max_runs is not None and len(out["runs"]) >= max_runs:
                break
            out["runs"].append(run_one(ds, cfg, label, run, maps, drift=drift, order=order, quiet=quiet))
    err = np.concatenate([r.pop("_err") for r in out["runs"]])
    disp = np.concatenate([r.pop("_disp") for r in out["runs"]])
    out["overall"] = {"n_runs": len(out["runs"]), "n_volumes": int(len(err)),
                      "rms_mm": float(np.sqrt(np.mean(err[:, :3] ** 2))),
                      "rms_deg": float(np.sqrt(np.mean((err[:, 3:] / DEG) ** 2))),
                      "max_mm": float(np.abs(err[:, :3]).max()), "max_deg": float(np.abs(err[:, 3:] / DEG).max()),
                      "disp_mean_mm": float(disp.mean()), "disp_max_mm": float(disp.max()),
                      "true_fd_mean_mm": float(np.mean([r["true_fd_mean_mm"] for r in out["runs"]])),
                      "n_not_converged": int(sum(r["n_not_converged"] for r in out["runs"])),
                      "ms_per_volume": float(np.mean([r["ms_per_volume"] for r in out["runs"]]))}
    target = (TARGET_NOISE_FREE, TARGET_NOISE_FREE) if cfg["noise"]["tsnr"] >= 1000 else (TARGET_MM, TARGET_DEG)
    out["overall"]["target_mm_deg"] = list(target)
    out["overall"]["meets_target"] = bool(out["overall"]["rms_mm"] <= target[0]
                                          and out["overall"]["rms_deg"] <= target[1])
    if drift:
        out["drift"] = {roi: pool_drift([r["drift"][roi] for r in out["runs"]]) for roi in ("brain", "auditory")}
        for r in out["runs"]:  # keep the per-run figures, drop the per-voxel correlations
            for roi in r["drift"].values():
                for v in VARIANTS:
                    roi[v]["median_abs_corr"] = float(np.median(roi[v].pop("corr")))
    return out


def print_tables(results: list[dict]) -> None:
    print("\nMotion per run: realign_run (live MotionCorrector, reference = volume 0) vs the simulator's truth")
    head = ["grid", "motion", "tSNR", "sub", "run", "FD mm", "RMS mm", "RMS deg", "max mm", "max deg", "disp mm",
            "noconv", "ms/vol"]
    print("".join(f"{h:>9}" for h in head))
    for r in results:
        for x in r["runs"]:
            row = [r["grid"], r["motion"], f"{r['tsnr']:g}", x["subject"], f"{x['task'][:5]}-{x['run']:02d}",
                   f"{x['true_fd_mean_mm']:.3f}", f"{x['rms_mm']:.4f}", f"{x['rms_deg']:.4f}", f"{x['max_mm']:.3f}",
                   f"{x['max_deg']:.3f}", f"{x['disp_mean_mm']:.4f}", x["n_not_converged"],
                   f"{x['ms_per_volume']:.1f}"]
            print("".join(f"{c:>9}" for c in row))
    print("\nMotion overall (errors pooled over the runs' volumes)")
    head = ["grid", "motion", "tSNR", "drift%", "runs", "FD mm", "RMS mm", "RMS deg", "max mm", "max deg", "disp mm",
            "noconv", "ms/vol", "target"]
    print("".join(f"{h:>9}" for h in head))
    for r in results:
        o = r["overall"]
        row = [r["grid"], r["motion"], f"{r['tsnr']:g}", f"{r['drift_pct']:g}", o["n_runs"],
               f"{o['true_fd_mean_mm']:.3f}",
               f"{o['rms_mm']:.4f}", f"{o['rms_deg']:.4f}", f"{o['max_mm']:.3f}", f"{o['max_deg']:.3f}",
               f"{o['disp_mean_mm']:.4f}", o["n_not_converged"], f"{o['ms_per_volume']:.1f}",
               ("met " if o["meets_target"] else "MISSED ") + f"{o['target_mm_deg'][0]:g}"]
        print("".join(f"{x:>9}" for x in row))
    print(f"target: RMS <= {TARGET_MM} mm and {TARGET_DEG} deg at the default tSNR, <= {TARGET_NOISE_FREE} "
          "noise-free (tSNR >= 1000); 'disp mm' = mean over brain voxels of |M_est x - M_true x|; "
          "'FD mm' = the truth's mean framewise displacement; drift% = the simulator's drift_pct")
    for r in results:
        if "drift" not in r:
            continue
        print(f"\nDrift: {r['grid']} grid, motion {r['motion']}, tSNR {r['tsnr']:g}, {r['drift']['brain']['n_runs']} "
              f"run(s); injected drift RMS {r['drift']['brain']['drift_rms_pct']:.2f} % of the voxel mean (brain)")
        head = ["roi", "variant", "drift left %", "|r| drift", "LF out %", "LF floor %", "resp kept %"]
        widths = [10, 11, 14, 11, 11, 12, 13]
        print("".join(f"{h:>{w}}" for h, w in zip(head, widths)))
        for roi in ("brain", "auditory"):
            d = r["drift"][roi]
            for v in VARIANTS:
                x = d[v]
                row = [f"{roi}", v, f"{x['drift_left_pct']:.2f}", f"{x['median_abs_corr']:.3f}",
                       f"{x['lf_out_pct']:.1f}", f"{x['lf_floor_pct']:.1f}",
                       f"{x['resp_kept_pct']:.1f}" if "resp_kept_pct" in x else "-"]
                print("".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    print("drift left % = sum|D(y)-D(y0)|^2 / sum|d - mean d|^2 (truth: y0 the drift-free series, d = y - y0); "
          "|r| drift = median |corr(D(y), d)|; LF out/floor % = power < 0.01 Hz of D(y) / D(y0) relative to "
          "the drift's; resp kept % = share of the true response kept")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", type=Path, help="folders written by b2m simulate")
    ap.add_argument("--max-runs", type=int, default=None, help="at most this many runs per dataset")
    ap.add_argument("--no-drift", action="store_true", help="motion only")
    ap.add_argument("--name", default="motion_drift_sim", help="result file stem in bench/results/")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = [evaluate(ds, max_runs=args.max_runs, drift=not args.no_drift, quiet=args.quiet)
               for ds in args.datasets]
    print_tables(results)
    load = os.getloadavg()
    payload = {"machine": machine_info(), "sources": source_digest(SOURCES),
               "command": [os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])],
               "load_average": list(load), "wall_s": time.perf_counter() - t0,
               "targets": {"rms_mm": TARGET_MM, "rms_deg": TARGET_DEG, "at": "simulator default tSNR (40)",
                           "noise_free_mm_deg": TARGET_NOISE_FREE},
               "lf_hz": LF_HZ, "datasets": results}
    path = write_json(args.name, payload)
    print(f"\nwrote {path} (load average {load[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
