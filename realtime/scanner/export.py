"""Play a scanner's real-time export from a recorded run: one 3-D NIfTI per volume, written into a folder at TR pace.

For a dry run of a site without the scanner: ``b2m scanner export RUN.nii DIR`` writes what a scanner's
NIfTI export would, and ``b2m scanner watch DIR --vendor nifti`` picks it up exactly as it would at the
console. Each file is written in place (open, write, close), as scanners do, so the watcher meets
files that are still being written.

With ``--trigger-out PATH`` it also plays the scanner's trigger: a ``5`` written to PATH (one end of a
serial line, such as a pseudo-terminal pair made by ``socat``) as each volume's acquisition begins, and
the volume's file written when the acquisition has ended and the reconstruction has taken
``--recon-delay`` seconds, as at the console. ``b2m session --trigger`` reads the other end.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from ..nifti_io import read_nifti_run
from ..triggers import open_trigger_out
from .pacing import PULSE, check_seconds, scanner_events

__all__ = ["ExportResult", "export_run"]


@dataclass
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes
    ----------
    files : list of str
        The files written, in order.
    pulses_unix : list of float
        When each trigger pulse was written (Unix s, just before the write; empty without a trigger output).
    """

    files: list
    pulses_unix: list = field(default_factory=list)


def export_run(path, folder, *, tr_s: float | None = None, speed: float = 1.0, prefix: str = "vol",
               trigger_out: str | None = None, key: str = "5", recon_delay_s: float = 0.0,
               progress=None) -> ExportResult:
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
    trigger_out : str, optional
        Write ``key`` here as each volume's acquisition begins (real time only, ``speed`` 1). Volume
        ``k``'s pulse is then at ``k * TR`` and its file at ``(k + 1) * TR + recon_delay_s`` from the start.
    recon_delay_s : float
        Seconds from the end of a volume's acquisition to its file (wall time, not scaled by ``speed``).
    progress : callable, optional
        ``progress(k, n)`` after each file.

    Raises
    ------
    ValueError
        A damaged run, a run without a TR, a TR of 0 or less, a prefix that is not a plain name, a trigger
        output that cannot be opened, or a trigger not in real time; the message names the file or option.
    """
    check_seconds(tr_s, "--tr")
    _check_prefix(prefix)
    run = read_nifti_run(path)
    tr = tr_s if tr_s is not None else run.tr_s
    if tr is None:
        raise ValueError(f"{run.path}: the TR cannot be read from the header ({run.tr_note}); give it with --tr")
    if recon_delay_s < 0 or not math.isfinite(recon_delay_s):
        raise ValueError(f"--recon-delay must be 0 or more seconds, got {recon_delay_s}")
    if trigger_out is not None and speed != 1.0:
        raise ValueError("--trigger-out plays the scanner's pulses in real time: use --speed 1 (a shorter --tr "
                         "makes a quicker run)")
    os.makedirs(folder, exist_ok=True)
    header = nib.Nifti1Header()
    header.set_data_dtype(run.data.dtype)
    header.set_xyzt_units("mm", "sec")
    n = run.n_volumes
    out = ExportResult(files=[])
    fd = open_trigger_out(trigger_out) if trigger_out is not None else None
    events = scanner_events(n, tr, speed, trigger=fd is not None, recon_delay_s=recon_delay_s)
    t0 = time.monotonic()
    try:
        for due, kind, k in events:
            wait = t0 + due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the scanner's clock: nothing else to service here
            if kind == PULSE:
                out.pulses_unix.append(time.time())  # as the pulse leaves: it cannot be read before this
                os.write(fd, key.encode())
                continue
            out.files.append(_write_volume(run, k, tr, header, folder, prefix))
            if progress is not None:
                progress(k + 1, n)
    finally:
        if fd is not None:
            os.close(fd)
    return out


def _check_prefix(prefix: str) -> None:
    """Refuse a ``--prefix`` that is not a plain name: the files must land in the folder, not beside it."""
    seps = {os.sep} | ({os.altsep} if os.altsep else set())
    if not prefix or any(c in prefix for c in seps) or ".." in prefix or prefix.startswith(".") or "\0" in prefix:
        raise ValueError(f"--prefix {prefix!r}: give a plain file name prefix (no path separator, no '..', not "
                         "starting with '.'), e.g. vol; the folder is the second argument")


def _write_volume(run, k: int, tr: float, header, folder, prefix: str) -> str:
    """Volume ``k`` of ``run`` as ``PREFIX_NNNNN.nii``, written in place."""
    # (x, y, z, 1): a 4th pixdim carries the TR, which a 3-D header cannot
    img = nib.Nifti1Image(np.ascontiguousarray(run.data[..., k:k + 1]), run.affine, header=header)
    img.header.set_zooms(img.header.get_zooms()[:3] + (tr,))
    dest = os.path.join(folder, f"{prefix}_{k + 1:05d}.nii")
    nib.save(img, dest)
    return dest
