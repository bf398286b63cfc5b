"""Replay a recorded 4-D NIfTI as a scanner would: paced, lossless, resumable."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from protocols.wire import RunEnd, RunStart, VolumeMessage, valid_run_id

from ..nifti_io import read_nifti_run
from ..sender import ReliableSender
from ..transport import DEFAULT_ENDPOINT
from ..triggers import open_trigger_out
from .pacing import PULSE, check_seconds, scanner_events

__all__ = ["ReplayResult", "replay_nifti", "default_run_id"]


@dataclass
class ReplayResult:
    """What a replay did.

    Attributes
    ----------
    n_sent : int
        Volumes sent (first sends).
    all_acked : bool
        Every volume and control message was acked before the drain timeout.
    pacing_error_s : ndarray of shape (n_sent,)
        Actual first-send time minus its deadline, in seconds (>= 0 up to clock
        resolution; 0 at ``speed=max``).
    pulses_unix : list of float
        With a trigger output: when each pulse was written (Unix s, just before the write).
    latency_s : ndarray of shape (n_acked_volumes,)
        Send -> ack time of each volume, in seconds.
    """

    run_id: str
    n_sent: int
    all_acked: bool
    resent: int
    held: int
    reconnects: int
    rejected: list
    unacked: list
    pacing_error_s: np.ndarray = field(repr=False)
    latency_s: np.ndarray = field(repr=False)
    wall_s: float = 0.0
    pulses_unix: list = field(default_factory=list, repr=False)  # trigger pulses written (Unix s)


def default_run_id(path: str) -> str:
    """A run id from a file name: ``sub-01_task-x_bold.nii.gz`` -> ``sub-01_task-x_bold``."""
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-") or "run"
    return base[:128]


def replay_nifti(path, endpoint: str = DEFAULT_ENDPOINT, *, tr_s: float | None = None,
                 speed: float = 1.0, run_id: str | None = None, start: int = 0, stop: int | None = None,
                 resend_timeout_s: float = 1.0, window: int = 64, drain_timeout_s: float = 60.0,
                 progress=None, curve=None, trigger_out: str | None = None, key: str = "5",
                 recon_delay_s: float = 0.0) -> ReplayResult:
    """Stream volumes ``start..stop-1`` of a 4-D NIfTI to a receiver.

    Parameters
    ----------
    path : path-like
        4-D NIfTI; its native dtype and voxel order are sent unchanged.
    endpoint : str
        Receiver endpoint to connect to.
    tr_s : float, optional
        TR in seconds; default: from the header (pixdim[4] and its unit).
    speed : float
        Pace factor; ``math.inf`` sends as fast as acks allow.
    start, stop : int
        Volume range (``stop`` exclusive, default the end). Indices stay the
        scanner's, so ``start`` resumes an interrupted run into the same record.
    progress : callable, optional
        Called as ``progress(k, n, lag_s, n_unacked)`` after each send and at the end.
    curve : realtime.transport.CurveClient, optional
        CURVE keys, for a receiver that requires them.
    trigger_out : str, optional
        Play the scanner's trigger too: write ``key`` here as each volume's
        acquisition begins (real time only); volume ``k``'s pulse is then at
        ``k * TR`` and it is sent at ``(k + 1) * TR + recon_delay_s``
        (:func:`.pacing.scanner_events`), stamped as acquired at the end of
        its acquisition.
    recon_delay_s : float
        Seconds from the end of a volume's acquisition until it is sent.

    Raises
    ------
    ValueError
        If the file, TR, run id or volume range is unusable; the message names it. Checked before
        anything is sent: the receiver would refuse every message.
    """
    check_seconds(tr_s, "--tr")
    if run_id is not None and not valid_run_id(run_id):
        raise ValueError(f"--run-id {run_id!r}: use 1-128 characters of [A-Za-z0-9._-], starting with a letter "
                         "or digit (it names the run's folder in the session record)")
    run = read_nifti_run(path)
    if tr_s is None:
        if run.tr_s is None:
            raise ValueError(f"{run.path}: the TR cannot be read from the header ({run.tr_note}); "
                             "give it with --tr SECONDS")
        tr_s = run.tr_s
    n_total = run.n_volumes
    stop = n_total if stop is None else stop
    if not 0 <= start < stop <= n_total:
        raise ValueError(f"volume range [{start}, {stop}) is outside the run's 0..{n_total}")
    run_id = run_id or default_run_id(run.path)
    if recon_delay_s < 0 or not math.isfinite(recon_delay_s):
        raise ValueError(f"--recon-delay must be 0 or more seconds, got {recon_delay_s}")
    if trigger_out is not None and speed != 1.0:
        raise ValueError("--trigger-out plays the scanner's pulses in real time: use --speed 1 (a shorter --tr "
                         "makes a quicker run)")
    n = stop - start
    pacing = np.zeros(n)
    fd = open_trigger_out(trigger_out) if trigger_out is not None else None
    pulses: list[float] = []
    try:
        return _send_run(run, ReliableSender(endpoint, resend_timeout_s=resend_timeout_s, window=window,
                                             curve=curve), run_id, tr_s, speed, start, stop, pacing, progress,
                         drain_timeout_s, pulses, fd, key, recon_delay_s)
    finally:
        if fd is not None:
            os.close(fd)


def _send_run(run, link: ReliableSender, run_id: str, tr_s: float, speed: float, start: int, stop: int,
              pacing: np.ndarray, progress, drain_timeout_s: float, pulses: list, fd, key: str,
              recon_delay_s: float) -> ReplayResult:
    """The replay proper: ``link`` sends volumes ``start..stop-1`` (and ``fd`` gets the pulses) on schedule."""
    n_total, n = run.n_volumes, stop - start
    with link as sender:
        sender.send(RunStart(run_id=run_id, tr_s=tr_s, n_volumes=n_total, shape=run.data.shape[:3],
                             dtype=run.data.dtype.str, affine=run.affine,
                             meta={"source": "replay", "file": os.path.basename(run.path),
                                   "nifti_header": run.header_bytes,
                                   "scl_slope": run.scl_slope, "scl_inter": run.scl_inter}))
        t0 = time.monotonic()
        wall0 = time.time()
        for at, kind, k in scanner_events(n, tr_s, speed, trigger=fd is not None, recon_delay_s=recon_delay_s):
            due = t0 + at
            sender.wait_until(due)
            if kind == PULSE:
                pulses.append(time.time())  # as the pulse leaves: it cannot be read before this
                os.write(fd, key.encode())
                continue
            vol = run.data[..., start + k]
            now = time.monotonic()
            # acquired when its acquisition ended, before the reconstruction
            t_acq = wall0 + (at - recon_delay_s) if not math.isinf(speed) else time.time()
            sender.send(VolumeMessage(run_id=run_id, index=start + k, data=vol, affine=run.affine,
                                      tr_s=tr_s, n_volumes=n_total, t_acquired=t_acq))
            pacing[k] = now - due
            if progress is not None:
                progress(k + 1, n, now - due, len(sender.pending))
        if stop == n_total:  # the run's last volume was sent: say so
            sender.send(RunEnd(run_id=run_id, n_volumes=n_total))
        ok = sender.drain(drain_timeout_s)
        if progress is not None:
            progress(n, n, 0.0, len(sender.pending))
        st = sender.stats
        return ReplayResult(run_id=run_id, n_sent=n, all_acked=ok and not st.rejected, resent=st.resent, held=st.held,
                            reconnects=st.reconnects, rejected=list(st.rejected),
                            unacked=sorted(k for k in sender.pending), pacing_error_s=pacing,
                            latency_s=st.volume_latencies_s(), wall_s=time.monotonic() - t0, pulses_unix=pulses)
