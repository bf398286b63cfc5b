"""Inputs of ``bench/session.py``: full-grid volumes with motion, a 60k-voxel mask, a 200-d library and bundle.

Everything is cached under ``bench/results/cache/session/`` (git-ignored), so
only the first run pays for it:

- **Volumes** (:func:`volumes`): ``n_unique`` int16 volumes on the ds003720
  grid (96 x 96 x 68, 2 mm) from :mod:`_motion_data` (the MNI152 tissue
  templates as an EPI-like image, moved along a typical head-motion
  trajectory, Rician noise for a temporal SNR of 40). A run longer than
  ``n_unique`` plays them back and forth (0, 1, ..., n-1, n-2, ..., 1, 0,
  ...), so the motion stays continuous (no jump at the wrap).
- **Mask**: the 60,000 most grey voxels of the template brain mask (as
  ``bench/preprocess.py``).
- **Library** (:func:`library`): procedural clips (``music.library.generated_units``)
  embedded by the real musicnn-msd embedder, 200-d penultimate layer.
- **Bundle** (:func:`bundle`): written by the real ``write_bundle``: motion
  correction on, causal detrend, running z-score, delays (2, 3, 4), a linear
  decoder 3 x 60,000 -> 200 with *random* coefficients (timing only; nothing
  is decoded) whose bias is the library's mean embedding, so the decoded
  embeddings wander among the library's clips and the policy switches as in
  a session.

Bench-only helper; nothing in the packages imports it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
if REPO_DIR not in sys.path:
    sys.path.insert(0, REPO_DIR)

import _motion_data as md  # noqa: E402

CACHE_DIR = os.path.join(BENCH_DIR, "results", "cache", "session")
MASK_VOXELS = 60_000
DELAYS = (2, 3, 4)
TSNR = 40.0
TR_S = 1.5           # ds003720
RUN_LENGTH = 410     # volumes in one ds003720 run
EMBEDDER = "musicnn-msd"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pingpong(i: int, n: int) -> int:
    """Index into ``n`` unique volumes for volume ``i`` of a longer run, back and forth."""
    if n < 2:
        return 0
    period = 2 * (n - 1)
    k = i % period
    return k if k < n else period - k


class Volumes:
    """The cached volumes: ``data`` (n_unique, 96, 96, 68) int16, ``affine``, ``mask``, ``params``, ``info``."""

    def __init__(self, data, affine, mask, params, info):
        self.data, self.affine, self.mask, self.params, self.info = data, affine, mask, params, info

    def volume(self, i: int) -> np.ndarray:
        """Volume ``i`` of a run (any length), C-contiguous int16 (x, y, z)."""
        return self.data[pingpong(i, len(self.data))]


def volumes(n_unique: int, seed: int = 0) -> Volumes:
    folder = os.path.join(CACHE_DIR, f"volumes-{n_unique}-seed{seed}")
    done = os.path.join(folder, "info.json")
    if not os.path.exists(done):
        t0 = time.perf_counter()
        _log(f"building {n_unique} full-grid volumes with motion (cached in {folder})...")
        run = md.moving_run(n_unique, seed=seed, tsnr=TSNR, log=_log)
        base, affine, brain, params, sigma, data = (run[k] for k in ("base", "affine", "brain", "params", "sigma",
                                                                     "noisy"))
        mask = md.grey_mask(brain, run["gm"], MASK_VOXELS)
        os.makedirs(folder, exist_ok=True)
        np.save(os.path.join(folder, "data.npy"), data)
        np.save(os.path.join(folder, "mask.npy"), mask)
        np.save(os.path.join(folder, "params.npy"), params)
        np.save(os.path.join(folder, "affine.npy"), affine)
        info = {"shape": list(base.shape), "voxel_mm": md.VOXEL_MM, "n_unique": n_unique, "seed": seed,
                "dtype": "int16", "brain_voxels": int(brain.sum()), "mask_voxels": int(mask.sum()),
                "tsnr_nominal": TSNR, "noise_sigma": sigma,
                "motion_max_abs_mm": float(np.abs(params[:, :3]).max()),
                "motion_max_abs_deg": float(np.rad2deg(np.abs(params[:, 3:])).max()),
                "build_s": time.perf_counter() - t0}
        with open(done, "w") as f:
            json.dump(info, f, indent=1)
    with open(done) as f:
        info = json.load(f)
    data = np.load(os.path.join(folder, "data.npy"))
    return Volumes(data, np.load(os.path.join(folder, "affine.npy")), np.load(os.path.join(folder, "mask.npy")),
                   np.load(os.path.join(folder, "params.npy")), info)


def library(n_clips: int, seed: int = 0) -> str:
    """A library of ``n_clips`` procedural clips (15 s) embedded by musicnn-msd; returns its folder."""
    from music.embedding import get_embedder
    from music.library.build import build_library, generated_units

    out = os.path.join(CACHE_DIR, f"library-{EMBEDDER}-{n_clips}-seed{seed}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        t0 = time.perf_counter()
        _log(f"building a {n_clips}-clip library with {EMBEDDER} (cached in {out})...")
        res = build_library(out, generated_units(n_clips, seed=seed), get_embedder(EMBEDDER, threads=1))
        if res.skipped:
            raise RuntimeError(f"library build skipped {res.skipped}")
        _log(f"  {res.n_clips} clips in {time.perf_counter() - t0:.0f} s")
    return out


def bundle(vols: Volumes, library_dir: str, seed: int = 0) -> str:
    """The full-grid bundle (random linear decoder, 3 x 60k -> 200) for the library's embedder."""
    from music.embedding import get_embedder
    from music.library import Library
    from offline_training.export import write_bundle
    from realtime.preprocessing import PreprocessConfig

    out = os.path.join(CACHE_DIR, f"bundle-{vols.info['n_unique']}-seed{seed}-{os.path.basename(library_dir)}")
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    t0 = time.perf_counter()
    _log(f"writing the full-grid bundle (cached in {out})...")
    lib = Library(library_dir)
    emb = get_embedder(EMBEDDER, threads=1)
    if emb.identity() != lib.embedder:
        raise RuntimeError("library and embedder disagree")
    n_vox = int(vols.mask.sum())
    n_in = len(DELAYS) * n_vox
    centroid = np.asarray(lib.embeddings, np.float64).mean(0)
    dim = centroid.size
    # z-scored inputs (about unit variance): the random part of an output has std sqrt(n_in) * s per
    # dimension; make it about half the centroid's per-dimension size, so the decoded embedding moves
    # among the clips near the centroid
    s = 0.5 * np.linalg.norm(centroid) / np.sqrt(dim) / np.sqrt(n_in)
    rng = np.random.default_rng(seed + 100)
    coef = (rng.standard_normal((n_in, dim), dtype=np.float32) * np.float32(s))
    ref = vols.data[0].astype(np.float32)
    pcfg = PreprocessConfig(motion=True, delays=DELAYS)
    write_bundle(out, coef=coef, x_mean=np.zeros(n_in, np.float32), y_mean=centroid.astype(np.float32),
                 mask=vols.mask, affine=vols.affine, reference=ref, norm_mean=np.zeros(n_vox, np.float32),
                 norm_std=np.ones(n_vox, np.float32), embedder=lib.embedder, embedder_spec=emb.spec, tr_s=TR_S,
                 delays=DELAYS, preprocess=pcfg.to_dict(),
                 extra={"n_volumes": RUN_LENGTH, "bench_note": "random decoder coefficients (timing only)"})
    _log(f"  bundle written in {time.perf_counter() - t0:.0f} s")
    return out


def write_run_nifti(vols: Volumes, path: str, n: int, tr_s: float = TR_S) -> str:
    """A 4-D int16 NIfTI of ``n`` volumes (back and forth over the unique ones) for ``b2m scanner replay``."""
    import nibabel as nib

    if os.path.exists(path):
        img = nib.load(path)
        if img.shape[3] == n and abs(float(img.header.get_zooms()[3]) - tr_s) < 1e-6:
            return path
    data = np.empty(vols.data.shape[1:] + (n,), np.int16)
    for i in range(n):
        data[..., i] = vols.volume(i)
    img = nib.Nifti1Image(data, vols.affine)
    img.header.set_xyzt_units("mm", "sec")
    zooms = list(img.header.get_zooms()[:3]) + [tr_s]
    img.header.set_zooms(zooms)
    tmp = path + ".tmp.nii"
    nib.save(img, tmp)
    os.replace(tmp, path)
    return path


def array_bytes(obj, _seen=None, _depth=0) -> int:
    """Bytes of numpy arrays reachable from ``obj`` through attributes, dicts, lists (owners counted once)."""
    if _seen is None:
        _seen = set()
    if _depth > 6 or id(obj) in _seen:
        return 0
    _seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) in _seen and base is not obj:
            return 0
        _seen.add(id(base))
        return int(base.nbytes) if base.base is None else 0
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return 0
    total = 0
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = list(obj)
    else:
        items = []
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            items.extend(d.values())
        for s in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, s):
                items.append(getattr(obj, s))
    for v in items:
        total += array_bytes(v, _seen, _depth + 1)
    return total
