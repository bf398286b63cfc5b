"""Motion-correction accuracy against ground truth, and per-volume time.

Accuracy (issue 5, acceptance 1, motion part): the first volume of nibabel's
real EPI run ``example4d.nii.gz`` (128x96x24, 2x2x2.2 mm) is moved by random
rigid transforms (translations up to +-2 mm, rotations up to +-2 degrees) with
scipy's 5th-order spline, independent of the trilinear code under test; the
run is realigned with ``realign_run`` and the estimates are compared with the
truth, noise-free and with Rician noise at a temporal SNR of 40.

Timing (``--timing``): a 96x96x68 run at 2 mm (the ds003720 grid) made from
nilearn's MNI152 T1 template (a stand-in anatomy, not EPI contrast), with a
random-walk motion, tSNR 40, stored as int16; per-volume wall time of
``MotionCorrector.update`` (estimation plus reslicing of a whole-brain mask and
of a 20k-voxel mask). The machine may be shared: the load average is printed.

    .venv/bin/python tools/motion_accuracy.py [--n 20] [--seed 0] [--timing]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from realtime.preprocessing import (  # noqa: E402
    MotionConfig,
    MotionCorrector,
    params_from_matrix,
    realign_run,
    rigid_matrix,
)

DEG = np.pi / 180.0


def move(volume: np.ndarray, affine: np.ndarray, params, order: int = 5) -> np.ndarray:
    """``current(M x) = volume(x)`` with a spline of the given order (scipy)."""
    vox = np.linalg.inv(affine) @ np.linalg.inv(rigid_matrix(params)) @ affine
    ijk = np.indices(volume.shape).reshape(3, -1).astype(np.float64)
    coeffs = ndi.spline_filter(volume, order=order, mode="nearest")
    out = ndi.map_coordinates(coeffs, vox[:3, :3] @ ijk + vox[:3, 3:], order=order,
                              prefilter=False, mode="nearest")
    return out.reshape(volume.shape)


def rician(volume: np.ndarray, sd: float, rng) -> np.ndarray:
    return np.sqrt((volume + rng.normal(0, sd, volume.shape)) ** 2 + rng.normal(0, sd, volume.shape) ** 2)


def global_mean(v: np.ndarray) -> float:
    return float(v[v > v.mean() / 8].mean())


def errors(est: np.ndarray, truth: np.ndarray) -> dict:
    d = est - truth
    t, r = d[:, :3], d[:, 3:] / DEG
    return {"rms_mm": float(np.sqrt(np.mean(t ** 2))), "rms_deg": float(np.sqrt(np.mean(r ** 2))),
            "max_mm": float(np.abs(t).max()), "max_deg": float(np.abs(r).max())}


def accuracy(n: int, seed: int) -> None:
    import nibabel as nib
    from nibabel.testing import data_path

    img = nib.load(os.path.join(data_path, "example4d.nii.gz"))
    ref = np.asarray(img.dataobj[..., 0]).astype(np.float64)
    affine = img.affine
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, 6))
    truth[1:, :3] = rng.uniform(-2, 2, (n - 1, 3))
    truth[1:, 3:] = rng.uniform(-2, 2, (n - 1, 3)) * DEG
    clean = np.stack([move(ref, affine, p) for p in truth], axis=-1)
    sd = global_mean(ref) / 40.0
    print(f"example4d.nii.gz vol 0 (128x96x24, 2x2x2.2 mm), {n} volumes (vol 0 = reference), "
          f"truth |t| <= 2 mm, |r| <= 2 deg, seed {seed}")
    print(f"{'condition':<22}{'RMS mm':>9}{'RMS deg':>9}{'max mm':>9}{'max deg':>9}{'iters':>7}")
    for label, data in [("noise-free", clean), (f"tSNR 40 (sd {sd:.1f})", rician(clean, sd, rng))]:
        run = realign_run(data, affine)
        e = errors(run.params, truth)
        print(f"{label:<22}{e['rms_mm']:>9.4f}{e['rms_deg']:>9.4f}{e['max_mm']:>9.4f}{e['max_deg']:>9.4f}"
              f"{run.n_iter.mean():>7.2f}")
    print("targets: RMS <= 0.05 mm and 0.05 deg noise-free; <= 0.15 mm and 0.15 deg at tSNR 40")


def timing(n: int, seed: int) -> None:
    from nilearn import datasets

    tpl = datasets.load_mni152_template(resolution=2)
    brain_img = datasets.load_mni152_brain_mask(resolution=2)
    shape = (96, 96, 68)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) + np.array([0.0, -18.0, 8.0])  # brain roughly centred
    vox = np.linalg.inv(tpl.affine) @ affine
    ijk = np.indices(shape).reshape(3, -1)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:]
    ref = 1000.0 * ndi.map_coordinates(tpl.get_fdata(), coords, order=3).reshape(shape)
    brain = ndi.map_coordinates(brain_img.get_fdata(), coords, order=0).reshape(shape) > 0.5
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0, 0.05, (n, 6)), axis=0) * np.r_[1, 1, 1, DEG, DEG, DEG]
    walk -= walk[0]
    sd = global_mean(ref) / 40.0
    # one C-ordered int16 array per volume, as volumes arrive from the receiver
    vols = [np.clip(rician(move(ref, affine, p, order=3), sd, rng), 0, 32767).astype(np.int16) for p in walk]
    # a compact region of interest: the 20,000 brain voxels nearest a point in the left temporal lobe
    small = np.zeros(shape, bool)
    idx = np.argwhere(brain)
    centre = np.linalg.solve(affine[:3, :3], np.array([-50.0, -20.0, 5.0]) - affine[:3, 3])
    small[tuple(idx[np.argsort(((idx - centre) ** 2).sum(axis=1))[:20000]].T)] = True
    load = os.getloadavg()
    print(f"\n96x96x68 at 2 mm (MNI152 T1 stand-in), {n} int16 volumes, random-walk motion, tSNR 40; "
          f"load average {load[0]:.2f} on {os.cpu_count()} CPUs")
    print("wall-clock ms per volume (p50, p99, max) and CPU ms of the process (p50; all threads)")
    head = ["points", "p50 ms", "p99 ms", "max ms", "cpu p50", "iters", "RMS mm", "RMS deg"]
    print(f"{'reslice mask':<26}" + "".join(f"{h:>9}" for h in head))
    for label, mask in [("none (estimation only)", None), ("20,000-voxel ROI", small),
                        (f"whole brain, {brain.sum():,}", brain)]:
        mc = MotionCorrector(vols[0], affine, reslice_mask=mask, config=MotionConfig())
        out = None if mask is None else np.empty(mc.n_voxels, np.float32)
        times, cpu, params, iters = [], [], [], []
        for t in range(n):
            vol = vols[t]
            t0, c0 = time.perf_counter(), time.process_time()
            r = mc.update(vol, out=out)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            params.append(r.params)
            iters.append(r.n_iter)
        ms, cpu_ms = np.array(times) * 1e3, np.array(cpu) * 1e3
        e = errors(np.array(params), params_from_matrix(rigid_matrix(walk)))
        row = [f"{mc.reference.n_points}", f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}",
               f"{ms.max():.2f}", f"{np.percentile(cpu_ms, 50):.2f}", f"{np.mean(iters):.2f}",
               f"{e['rms_mm']:.4f}", f"{e['rms_deg']:.4f}"]
        print(f"{label:<26}" + "".join(f"{x:>9}" for x in row))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="volumes in the accuracy run (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing", action="store_true", help="also time 100 volumes at 96x96x68")
    ap.add_argument("--timing-volumes", type=int, default=100)
    args = ap.parse_args(argv)
    accuracy(args.n, args.seed)
    if args.timing:
        timing(args.timing_volumes, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
