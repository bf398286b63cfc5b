"""Play a scanner's real-time export from a recorded run: one 3-D NIfTI per volume, written into a folder at TR pace.

For a dry run of a site without the scanner: ``b2m scanner export RUN.nii DIR`` writes what a scanner's
NIfTI export would, and ``b2m scanner watch DIR --vendor nifti`` picks it up exactly as it would at the
console. Each file is written in place (open, write, close), as scanners do, so the watcher meets
files that are still being written.
"""

from __future__ import annotations

import os
import time

import nibabel as nib
import numpy as np

from ..nifti_io import read_nifti_run
from .pacing import deadline

__all__ = ["export_run"]


def export_run(path, folder, *, tr_s: float | None = None, speed: float = 1.0, prefix: str = "vol",
               progress=None) -> list[str]:
    """Write each volume of a 4-D NIfTI as ``PREFIX_NNNNN.nii`` (1-based) into ``folder`` at TR pace.

    The stored values, dtype and affine are the run's own, so a watcher reading the files sends exactly
    the recorded run's stored values. Each file holds one volume as (x, y, z, 1), so its header carries
    the TR (pixdim[4], seconds). Scaling (scl_slope) is not written: a watcher sends stored values.

    Parameters
    ----------
    tr_s : float, optional
        Default: the run's header (an error if it has none).
    speed : float
        Pace factor; ``math.inf`` writes as fast as the disk allows.
    progress : callable, optional
        ``progress(k, n)`` after each file.

    Returns
    -------
    list of str
        The files written, in order.
    """
    run = read_nifti_run(path)
    tr = tr_s if tr_s is not None else run.tr_s
    if tr is None:
        raise ValueError(f"{run.path}: the TR cannot be read from the header ({run.tr_note}); give it with --tr")
    os.makedirs(folder, exist_ok=True)
    header = nib.Nifti1Header()
    header.set_data_dtype(run.data.dtype)
    header.set_xyzt_units("mm", "sec")
    n = run.n_volumes
    out = []
    t0 = time.monotonic()
    for k in range(n):
        wait = deadline(t0, k, tr, speed) - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the scanner's clock: nothing else to service here
        # (x, y, z, 1): a 4th pixdim carries the TR, which a 3-D header cannot
        img = nib.Nifti1Image(np.ascontiguousarray(run.data[..., k:k + 1]), run.affine, header=header)
        img.header.set_zooms(img.header.get_zooms()[:3] + (tr,))
        dest = os.path.join(folder, f"{prefix}_{k + 1:05d}.nii")
        nib.save(img, dest)
        out.append(dest)
        if progress is not None:
            progress(k + 1, n)
    return out
