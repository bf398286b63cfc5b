"""The realtime preprocessing chain over recorded runs, as ``b2m train`` runs it.

A run goes through the live code in two stages: :func:`motion_stage` (motion
correction and masking, the expensive part, cached on disk per run) and
:func:`preprocess_stage` (detrend and normalise through ``preprocess_run``
itself, bit for bit what the live chain computes). :class:`RunData` is a
preprocessed run with its events and per-TR targets, the unit the decoder
(:mod:`.decoding`) and the evaluation work on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from realtime.nifti_io import iter_volumes
from realtime.preprocessing import PreprocessConfig, RunPreprocessed, preprocess_run

from .bids import RunFiles, load_bold

__all__ = ["RunData", "MotionStage", "motion_stage", "preprocess_stage", "motion_code_digest",
           "PREPROC_CACHE_VERSION"]


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


@dataclass
class MotionStage:
    """A run after motion correction and masking (the expensive part, cached).

    Attributes
    ----------
    values : ndarray of shape (n_volumes, n_voxels), float32
        Resliced at the mask voxels (C order of the mask); raw intensities.
    params : ndarray of shape (n_volumes, 6) or None
    fd : ndarray of shape (n_volumes,) or None
    """

    values: np.ndarray
    params: np.ndarray | None
    fd: np.ndarray | None


PREPROC_CACHE_VERSION = "1"


def motion_code_digest(files=None) -> str:
    """sha256 (16 hex digits) of the code that motion-corrects and masks a run: ``realtime/preprocessing``
    and ``realtime/nifti_io.py``. Part of the motion cache's key, so a cache made by other code (an
    upgrade, a fix) is not reused and training keeps computing what the live session computes."""
    import hashlib

    if files is None:
        import realtime.nifti_io
        import realtime.preprocessing

        pkg = os.path.dirname(realtime.preprocessing.__file__)
        files = sorted(os.path.join(pkg, f) for f in os.listdir(pkg) if f.endswith(".py"))
        files.append(realtime.nifti_io.__file__)
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            h.update(os.path.basename(f).encode() + b"\0" + fh.read())
    return h.hexdigest()[:16]


def _code_tag(code: str) -> str:
    """8 hex digits naming the preprocessing code (a :func:`motion_code_digest`) in a cache entry's file name."""
    import hashlib

    return hashlib.sha256(code.encode()).hexdigest()[:8]


def _evict_other_code(cache_dir: str, stem: str, keep: str) -> list[str]:
    """Delete the cache entries of run ``stem`` whose names do not start with ``keep`` (``stem``, then the
    current code's tag): entries written by other preprocessing code, or in the older layout.

    Such an entry can never be hit again, and each is a whole run of brain voxels (about 330 MB on the full
    grid): without this, every upgrade of ``realtime/preprocessing`` left a second copy of every run behind.
    Entries of the same code for another mask, reference or motion setting stay. A process still reading a
    deleted entry keeps its memory map (the file goes when the last map closes). Returns the names deleted.
    """
    import re

    entry = re.compile(re.escape(stem) + r"_(c[0-9a-f]{8}_)?[0-9a-f]{20}(\.npy|_motion\.npz)$")
    gone = []
    for name in os.listdir(cache_dir):
        if entry.match(name) and not name.startswith(keep):
            try:
                os.remove(os.path.join(cache_dir, name))
                gone.append(name)
            except OSError:  # another process got there first
                pass
    return gone


def _motion_stage_key(path: str, mask: np.ndarray, reference: np.ndarray, pcfg: PreprocessConfig, code: str) -> str:
    import hashlib

    st = os.stat(path)
    h = hashlib.sha256()
    h.update(json.dumps({"v": PREPROC_CACHE_VERSION, "code": code,
                         "file": os.path.realpath(path), "size": st.st_size,
                         "mtime_ns": st.st_mtime_ns, "motion": pcfg.motion,
                         "motion_config": pcfg.motion_config.to_dict() if pcfg.motion else None,
                         "mask_shape": list(mask.shape)}, sort_keys=True).encode())
    h.update(np.packbits(np.asarray(mask, bool)).tobytes())
    if pcfg.motion:
        h.update(np.ascontiguousarray(reference, np.float32).tobytes())
    return h.hexdigest()[:20]


def motion_stage(rf: RunFiles, mask: np.ndarray, reference: np.ndarray, affine: np.ndarray,
                 pcfg: PreprocessConfig, *, cache_dir: str | None = None, tr_s: float | None = None,
                 progress: Callable[[int, int], None] | None = None) -> MotionStage:
    """Motion-correct (if configured) and mask one run with the realtime code, cached.

    Every volume goes through :func:`realtime.preprocessing.realign_run` (the
    per-TR :class:`~realtime.preprocessing.MotionCorrector`) with the shared
    ``reference``, exactly as :class:`OnlinePreprocessor` does live (a run on
    another grid, recorded on another day, is aligned and resliced onto the
    reference's, and its first volume searched for, as live); the rest of the
    chain is :func:`preprocess_stage`. The result is
    cached under ``cache_dir`` keyed by the file (path, size, mtime), the mask,
    the reference, the motion config and the code (:func:`motion_code_digest`), so a second ``b2m train`` (other
    voxel counts, delays, alphas) skips it. Writing an entry deletes the
    run's entries made by other code (:func:`_evict_other_code`). With a cache the returned values
    are a read-only memory map of the entry (written whole, then renamed into
    place): replace an entry, never edit it in place while a training runs.

    Parameters
    ----------
    rf : RunFiles
    mask : ndarray of bool, shape (nx, ny, nz)
    reference : ndarray of shape (nx, ny, nz)
        Motion reference shared by all runs (the bundle's).
    affine : ndarray of shape (4, 4)
    pcfg : PreprocessConfig
    cache_dir : str, optional
    tr_s : float, optional
        The TR the caller reads every run at (seconds); a run whose own TR
        differs raises ValueError naming it, instead of being read at the
        wrong TR.
    progress : callable, optional
        ``progress(done_volumes, n_volumes)``.
    """
    from realtime.preprocessing import GeometryError, check_geometry, realign_run

    img, tr_run = load_bold(rf)
    if tr_s is not None and abs(tr_run - tr_s) > 1e-3:
        raise ValueError(f"{rf.sidecar} (and {rf.bold}): TR {tr_run:g} s, but the other runs are read at TR "
                         f"{tr_s:g} s; leave out the runs recorded at another TR, or fix the files that are wrong")
    grid = None  # a run recorded on another day's grid is aligned to the shared reference, as live
    try:
        check_geometry(mask.shape, affine, img.shape, img.affine)
    except GeometryError as e:
        if not pcfg.motion:
            raise GeometryError(f"{rf.bold}: {e} (with motion correction, a run on another grid is aligned to the "
                                "subject's reference)") from None
        grid = (tuple(img.shape[:3]), np.asarray(img.affine, np.float64))
    path = None
    if cache_dir:
        code = motion_code_digest()  # hashed once per run: it reads the package's files
        key = _motion_stage_key(os.fspath(rf.bold), mask, reference, pcfg, code)
        stem = os.path.basename(os.fspath(rf.bold)).split(".nii")[0]
        prefix = f"{stem}_c{_code_tag(code)}_"
        path = os.path.join(cache_dir, prefix + key)
        if os.path.exists(path + ".npy"):
            try:
                values = np.load(path + ".npy", mmap_mode="r")  # paged in on use, shared by processes
                params = fd = None
                if pcfg.motion:
                    with np.load(path + "_motion.npz") as z:
                        params, fd = z["params"], z["fd"]
                if values.shape != (img.shape[3], int(np.count_nonzero(mask))) or values.dtype != np.float32:
                    raise ValueError("cache entry of the wrong shape")
                if progress is not None:
                    progress(len(values), len(values))
                return MotionStage(values, params, fd)
            except (OSError, ValueError, KeyError):  # a damaged cache entry: recompute it
                pass
    if pcfg.motion:  # the live per-TR motion code, on the subject's shared reference
        rm = realign_run(img, affine, config=pcfg.motion_config, reslice_mask=mask, reference=reference,
                         grid=grid, align_first=True, progress=progress)
        values, params, fd = rm.values, rm.params, rm.fd
    else:
        n = img.shape[3]
        values = np.empty((n, int(np.count_nonzero(mask))), np.float32)
        params = fd = None
        for t, vol in enumerate(iter_volumes(img)):
            np.copyto(values[t], vol[mask], casting="unsafe")
            if progress is not None:
                progress(t + 1, n)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        if pcfg.motion:
            np.savez(tmp + ".npz", params=params, fd=fd)
            os.replace(tmp + ".npz", path + "_motion.npz")
        np.save(tmp + ".npy", values)
        os.replace(tmp + ".npy", path + ".npy")  # last: its presence marks a complete entry
        values = np.load(path + ".npy", mmap_mode="r")  # as a cached run: pages the kernel may drop
        _evict_other_code(cache_dir, stem, prefix)
    return MotionStage(values, params, fd)


def _release_pages(values: np.ndarray) -> None:
    """Unmap the resident pages of a memory-mapped (cached) stage from this process.

    The data stays in the file and in the page cache; a later read (the
    offline comparison) faults it back in. Without this, every run's
    motion-corrected values stay resident beside their preprocessed copies
    and a full-grid training peaks at twice the memory it needs.
    """
    import mmap

    mm = getattr(values, "_mmap", None)
    if isinstance(values, np.memmap) and mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def preprocess_stage(stage: MotionStage, pcfg: PreprocessConfig, tr_s: float, *,
                     tsnr_curve: bool = False) -> RunPreprocessed:
    """The rest of the chain (detrend, normalise) on motion-corrected values.

    The values go through :func:`realtime.preprocessing.preprocess_run` as a
    run of ``n_voxels x 1 x 1`` volumes with motion correction off: the same
    per-TR objects the live session runs after its motion step, so the result
    equals ``preprocess_run`` on the image itself bit for bit (checked in
    ``tests/offline_training/test_train.py``). Non-causal configurations take
    the whole-run comparison path the same way.

    Returns
    -------
    RunPreprocessed
        ``values`` of shape (n_volumes, n_voxels), float32, and each voxel's
        ``tsnr`` (the live session's running figure at the run's end) and,
        with ``tsnr_curve``, the running median at each volume; no motion
        fields and no delay stack.
    """
    if pcfg.motion_regressors:
        raise ValueError("motion_regressors needs the motion parameters inside the chain; train with "
                         "motion_regressors=False")
    n, v = stage.values.shape
    data = stage.values.T.reshape(v, 1, 1, n)  # a view: volume t is column t
    flat = replace(pcfg, motion=False)
    return preprocess_run(data, np.eye(4), np.ones((v, 1, 1), bool), flat, tr_s=tr_s, stack=False,
                          tsnr_curve=tsnr_curve)
