"""The receiving end of the scanner link: validate, record durably, ack.

One thread owns the ROUTER socket. For each message it validates the frames
(:func:`protocols.wire.decode`), appends the message to the session record
(``fdatasync`` before returning), and only then acks. A bad message gets a
reject with the reason and is kept in ``rejected.log``; the receiver keeps
serving. Duplicates, recognised by (run id, volume index), are acked again
without being recorded twice, so a sender that resends after a restart of
either side converges. Complete runs are exported to NIfTI off the hot path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgpack
import zmq

from protocols.errors import MessageError
from protocols.session import RunRecord, SessionLock, SessionRecord
from protocols.wire import Ack, Heartbeat, Reject, RunEnd, RunStart, VolumeMessage, decode, encode

from .nifti_io import export_run_nifti, run_export_args
from .transport import DEFAULT_ENDPOINT, CurveServer, bind_router, check_exposure, start_authenticator

__all__ = ["Receiver", "ReceiverStats"]

log = logging.getLogger("b2m.receiver")
# Oversized headers are still read (up to here) to echo their ids in the reject.
_PEEK_MAX = 16 << 20


class ReceiverStats:
    """Counters since the receiver started."""

    def __init__(self):
        self.recorded = 0
        self.duplicates = 0
        self.rejected = 0
        self.controls = 0
        self.affine_changes = 0
        self.last_reject: tuple[str, str] | None = None
        self.not_recorded = 0      # messages the disk refused (full, failing): not acked, so sent again
        self.last_disk_error: str | None = None
        self.last_disk_error_at = float("-inf")  # time.monotonic() of it
        self.disk_full = False  # it said the disk is full (or over quota), rather than failing otherwise
        self._disk_warned_at: dict[str, float] = {}  # per kind of warning: when it was last given


def _peek(frames) -> dict:
    """Best-effort type/run_id/index from a header that failed validation."""
    if len(frames[0]) > _PEEK_MAX:
        return {}
    try:
        h = msgpack.unpackb(bytes(frames[0]), raw=False, strict_map_key=False)
    except Exception:
        return {}
    if not isinstance(h, dict):
        return {}
    out = {}
    if isinstance(h.get("type"), str) and len(h["type"]) < 32:
        out["of"] = h["type"]
    if isinstance(h.get("run_id"), str) and len(h["run_id"]) <= 128:
        out["run_id"] = h["run_id"]
    if isinstance(h.get("index"), int) and not isinstance(h.get("index"), bool) and 0 <= h["index"] < 2**31:
        out["index"] = h["index"]
    return out


def _memory_order(data) -> str:
    """``"F"`` for a Fortran-ordered (NIfTI-ordered) array, else ``"C"``."""
    return "F" if (data.flags.f_contiguous and not data.flags.c_contiguous) else "C"


def _same_start(run: RunRecord, msg: RunStart) -> None:
    """A run_start sent again says what the recorded one said (else: a new run under an old id)."""
    was = run.start
    now = {"tr_s": msg.tr_s, "n_volumes": msg.n_volumes, "shape": None if msg.shape is None else list(msg.shape),
           "dtype": msg.dtype}
    for key, value in now.items():
        if was.get(key) != value:
            raise MessageError(f"header.{key}", f"run {msg.run_id} was started already with {key} "
                               f"{was.get(key)!r}, not {value!r}; a run_start sent again must be the same: give "
                               "a new run a new run id")


def _start_fits(run: RunRecord, msg: RunStart) -> None:
    """A run_start that comes after some of its volumes agrees with what they recorded."""
    g, last = run.geometry, max(run.received)
    if msg.shape is not None and list(msg.shape) != list(g["shape"]):
        raise MessageError("header.shape", f"{list(msg.shape)} differs from the shape {g['shape']} of run "
                           f"{msg.run_id}'s recorded volumes; give a new run a new run id")
    if msg.dtype is not None and msg.dtype != g["dtype"]:
        raise MessageError("header.dtype", f"{msg.dtype} differs from the dtype {g['dtype']} of run "
                           f"{msg.run_id}'s recorded volumes; give a new run a new run id")
    if msg.n_volumes is not None and (msg.n_volumes <= last or run.n_volumes not in (None, msg.n_volumes)):
        raise MessageError("header.n_volumes", f"{msg.n_volumes} does not fit run {msg.run_id}'s recorded volumes "
                           f"(up to index {last}" + (f", of {run.n_volumes}" if run.n_volumes else "")
                           + "); send the number of volumes the run has")


def _end_fits(run: RunRecord, msg: RunEnd) -> None:
    """A run_end agrees with the run's known length and with the volumes recorded."""
    if run.n_volumes is not None and msg.n_volumes != run.n_volumes:
        raise MessageError("header.n_volumes", f"{msg.n_volumes} differs from run {msg.run_id}'s "
                           f"{run.n_volumes} volumes (from its run_start, its volumes or an earlier run_end); "
                           "send the number of volumes the run has")
    if run.received and max(run.received) >= msg.n_volumes:
        raise MessageError("header.n_volumes", f"{msg.n_volumes} is too few: run {msg.run_id} has volume "
                           f"{max(run.received)} recorded (indices are 0-based); send the number of volumes "
                           "the run has")


class Receiver:
    """Record-only receiver; later stages hook in through ``on_volume``.

    Parameters
    ----------
    out_dir : path-like
        Session record folder; an existing one is continued.
    bind : str
        ZeroMQ endpoint to bind (loopback by default).
    insecure : bool
        Allow a non-loopback bind without CURVE keys.
    curve : CurveServer, optional
        Encrypt the link with CURVE and, with ``curve.clients_dir``, accept
        only the senders whose public keys are in it.
    on_volume : callable, optional
        Called as ``on_volume(msg, t_recv)`` for each new volume once it is
        recorded and its ack is on the wire (by :meth:`serve`; a caller of
        :meth:`handle` runs them with :meth:`run_callbacks`), so the scanner
        link never waits for the decoder. Exceptions it raises are logged,
        never propagated.
    on_run_complete : callable, optional
        Called as ``on_run_complete(run_id, nifti_path)`` from the export thread.
    on_run_gaps : callable, optional
        Called as ``on_run_gaps(run_id, missing_indices)`` when a run ends incomplete.
    export : bool
        Write ``nifti/<run_id>.nii`` when a run is complete.
    sync : bool
        fdatasync each record before acking (default True).
    """

    def __init__(self, out_dir, bind: str = DEFAULT_ENDPOINT, *, insecure: bool = False,
                 curve: CurveServer | None = None, on_volume: Callable | None = None,
                 on_run_complete: Callable | None = None, on_run_gaps: Callable | None = None,
                 export: bool = True, sync: bool = True, ctx: zmq.Context | None = None):
        self.out_dir = os.fspath(out_dir)
        check_exposure(bind, curve=curve is not None, insecure=insecure)  # refuse before touching the disk
        self._claim = SessionLock(self.out_dir)  # one writer per folder: a second receiver is refused here
        try:
            self.record = SessionRecord(self.out_dir, sync=sync, read_only=False)
        except BaseException:
            self._claim.release()
            raise
        for torn in self.record.torn:
            log.warning("a torn record from an earlier crash was moved to %s; its sender will resend it", torn)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._auth = start_authenticator(self.ctx, curve)
        try:
            self.sock = bind_router(self.ctx, bind, insecure=insecure, curve=curve)
        except BaseException:
            if self._auth is not None:
                self._auth.stop()
            if self._own_ctx:  # else the garbage collector's term() may wait on it
                self.ctx.destroy(linger=0)
            self.record.close()
            self._claim.release()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.on_volume = on_volume
        self.on_run_complete = on_run_complete
        self.on_run_gaps = on_run_gaps
        self.export = export
        self.stats = ReceiverStats()
        self._last_run: str | None = None
        self._new_volumes: list = []  # (msg, t_recv) recorded and acked, not yet given to on_volume
        self._exporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="b2m-export")
        self._exports: dict[str, object] = {}
        self._finalised: set[str] = set()
        for run in self.record.runs.values():
            if self._summary_complete(run):
                self._finalised.add(run.run_id)
            elif run.complete:
                self._finalise(run)

    # ---- serving ---------------------------------------------------------

    def serve(self, stop: threading.Event | None = None, *, poll_ms: int = 200, idle=None) -> None:
        """Serve until ``stop`` is set (checked on each wake-up) or forever.

        Volumes already recorded when ``stop`` is seen are still given to ``on_volume``. ``idle``, if
        given, is called on this thread at every wake-up (at least every ``poll_ms``), after the
        volumes' callbacks; an exception in it is logged and serving goes on.
        """
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while stop is None or not stop.is_set():
            # Never block while volumes wait for on_volume; otherwise sleep until a message comes.
            if poller.poll(0 if self._new_volumes else poll_ms):
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    peer, body = frames[0].bytes, [f.buffer for f in frames[1:]]
                    for reply in self.handle(body, peer):
                        self.sock.send_multipart([peer] + reply, copy=False)
                    self._after_ack()
            # One volume to the decoder, then back to the socket: everything that arrived meanwhile
            # is recorded and acked before the next TR of work, so a backlog (a replay at --speed
            # max, a reconnect) never keeps acks waiting long enough for the sender to resend.
            self.run_callbacks(limit=1)
            if idle is not None:
                try:
                    idle()
                except Exception:  # a hook's failure must not stop the receiver
                    log.exception("the receiver's idle hook failed; serving goes on")
        self.run_callbacks()  # stopping: what was acked is also handed on

    def handle(self, frames, peer: bytes = b"") -> list[list]:
        """Process one message's frames; return the reply messages' frames."""
        t_recv = time.time()
        try:
            msg = decode(frames)
            reply = self._dispatch(msg, frames, t_recv)
        except MessageError as e:
            return [self._reject(frames, e.field, e.reason, t_recv, peer)]
        except OSError as e:  # the disk refused it (full, failing): no ack and no reject, so the sender keeps it
            return self._not_recorded(frames, e)
        except Exception as e:  # a bug must not take the session down; keep the message
            log.exception("internal error while handling a message")
            return [self._reject(frames, "internal", f"{type(e).__name__}: {e}; the message was kept "
                                 "in rejected.log, please report this", t_recv, peer)]
        return [encode(reply)] if reply is not None else []

    def run_callbacks(self, limit: int | None = None) -> None:
        """Give volumes recorded since the last call to ``on_volume`` (at most ``limit``), in arrival order."""
        n = 0
        while self._new_volumes and (limit is None or n < limit):
            n += 1
            msg, t_recv = self._new_volumes.pop(0)
            try:
                self.on_volume(msg, t_recv)
            except Exception:
                log.exception("on_volume failed for %s/%d; the volume is recorded", msg.run_id, msg.index)

    def _after_ack(self) -> None:
        """Housekeeping once the ack is out: room on disk for the next volumes."""
        run_id = self._last_run
        if run_id is not None:
            try:
                self.record.top_up(run_id)
            except OSError as e:
                if self._disk_warning_due("reserve"):
                    log.error("could not reserve disk space for run %s in %s (%s); appends continue unreserved",
                              run_id, self.out_dir, e.strerror or e)

    def _disk_warning_due(self, kind: str) -> bool:
        """At most one disk warning of a kind in 10 s: every resend, every ack would say it again."""
        now = time.monotonic()
        if now - self.stats._disk_warned_at.get(kind, float("-inf")) < 10.0:
            return False
        self.stats._disk_warned_at[kind] = now
        return True

    def _not_recorded(self, frames, err: OSError) -> list:
        """A message the disk could not take: neither acked nor refused, so the sender sends it again."""
        st = self.stats
        st.not_recorded += 1
        ids = _peek(frames) if len(frames) else {}
        st.last_disk_error = (f"{ids.get('of', 'message')} {ids.get('run_id', '?')}/{ids.get('index', '-')}: "
                              f"{err.strerror or err}")
        st.last_disk_error_at = time.monotonic()
        st.disk_full = full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        if self._disk_warning_due("record"):
            log.error("could not record %s (%s, in %s): not acked, so the scanner side keeps it and sends it "
                      "again; %s (%d message(s) not recorded so far)", st.last_disk_error, type(err).__name__,
                      self.out_dir, "make room on that disk" if full else "check that disk and the folder's "
                      "permissions", st.not_recorded)
        return []

    def _reject(self, frames, field: str, reason: str, t_recv: float, peer: bytes) -> list:
        self.stats.rejected += 1
        self.stats.last_reject = (field, reason)
        ids = _peek(frames) if len(frames) else {}
        log.warning("rejected %s %s/%s: %s: %s", ids.get("of", "message"), ids.get("run_id", "?"),
                    ids.get("index", "?"), field, reason)
        try:
            self.record.append_rejected(frames, field, reason, t_recv, peer)
        except Exception:
            log.exception("could not keep a rejected message in rejected.log")
        return encode(Reject(field=field, reason=reason, **ids))

    def _dispatch(self, msg, frames, t_recv: float):
        if isinstance(msg, VolumeMessage):
            return self._on_volume(msg, frames[1], t_recv)
        if isinstance(msg, RunStart):
            self.stats.controls += 1
            run = self.record.runs.get(msg.run_id)
            if run is not None and run.start is not None:  # sent again (an ack lost): it must say the same
                _same_start(run, msg)
                return Ack(of="run_start", run_id=msg.run_id, status="duplicate")
            if run is not None and run.received:  # its volumes overtook it: it must agree with them
                _start_fits(run, msg)
            run = self.record.append_run_start(msg, t_recv)
            self._last_run = msg.run_id
            log.info("run %s started (%s volumes, TR %.3f s)", msg.run_id, msg.n_volumes, msg.tr_s)
            return Ack(of="run_start", run_id=msg.run_id, status="recorded")
        if isinstance(msg, RunEnd):
            self.stats.controls += 1
            run = self.record.runs.get(msg.run_id)
            if run is not None:
                _end_fits(run, msg)
                if run.ended:
                    return Ack(of="run_end", run_id=msg.run_id, status="duplicate")
            run = self.record.append_run_end(msg, t_recv)
            if run.received:
                self._maybe_finalise(run, ended=True)
            else:  # not a run that happened (yet): nothing to report as ended
                log.warning("run %s ended (%d volumes) before any of its volumes was recorded: recorded; a "
                            "misspelt run id? Its volumes, if they come, complete it", msg.run_id, msg.n_volumes)
            return Ack(of="run_end", run_id=msg.run_id, status="recorded")
        if isinstance(msg, Heartbeat):
            return Ack(of="heartbeat", status="ok")
        raise MessageError("header.type", f"a receiver does not accept {msg.type!r} messages: send volume, "
                                          "run_start, run_end or heartbeat (protocols/README.md)")

    def _on_volume(self, msg: VolumeMessage, payload, t_recv: float):
        run = self.record.runs.get(msg.run_id)
        if run is not None and msg.index in run.received:
            was = run.received[msg.index].header.get("crc32")
            if was is not None and was != msg.checksum:  # not a resend: other data under a recorded index
                raise MessageError("payload", f"volume {msg.index} of run {msg.run_id} was recorded already with "
                                   f"other data (CRC-32 {was:#010x}, this one {msg.checksum:#010x}); the first is "
                                   "kept and this one is in rejected.log. Check the sender's numbering: each "
                                   "volume of a run needs its own index")
            self.stats.duplicates += 1
            return Ack(of="volume", run_id=msg.run_id, index=msg.index, status="duplicate")
        order = _memory_order(msg.data)
        if run is not None:
            self._check_geometry(run, msg, order)
        run = self.record.append_volume(msg, payload, t_recv, order)
        self._last_run = msg.run_id
        self.stats.recorded += 1
        if self.on_volume is not None:
            self._new_volumes.append((msg, t_recv))
        self._maybe_finalise(run)
        return Ack(of="volume", run_id=msg.run_id, index=msg.index, status="recorded")

    def _check_geometry(self, run: RunRecord, msg: VolumeMessage, order: str) -> None:
        n = run.n_volumes
        if n is not None and msg.index >= n:
            raise MessageError("header.index", f"volume {msg.index} is past the run's {n} volumes")
        g = run.geometry
        if g is None:
            start = run.start or {}
            if start.get("shape") and tuple(start["shape"]) != msg.data.shape:
                raise MessageError("header.shape", f"{list(msg.data.shape)} differs from the run start's "
                                   f"{start['shape']}; start a new run for a new geometry")
            if start.get("dtype") and start["dtype"] != msg.data.dtype.str:
                raise MessageError("header.dtype", f"{msg.data.dtype.str} differs from the run start's "
                                   f"{start['dtype']}; send the scanner's native dtype the run start announced")
            return
        if tuple(g["shape"]) != msg.data.shape:
            raise MessageError("header.shape", f"{list(msg.data.shape)} differs from this run's "
                               f"{g['shape']}; start a new run id for a new geometry")
        if g["dtype"] != msg.data.dtype.str:
            raise MessageError("header.dtype", f"{msg.data.dtype.str} differs from this run's {g['dtype']}")
        if order != g["order"] and sum(n > 1 for n in msg.data.shape) > 1:
            raise MessageError("header.order", f"{order} differs from this run's {g['order']}: send every volume "
                               "of a run in one memory order")
        if [float(v) for v in msg.affine.ravel()] != g["affine"]:
            # Kept, not refused: some scanners update the affine (prospective motion correction).
            self.stats.affine_changes += 1
            log.warning("run %s volume %d: the affine changed within the run; recorded as sent",
                        msg.run_id, msg.index)

    # ---- run completion ----------------------------------------------------

    def _summary_complete(self, run: RunRecord) -> bool:
        p = os.path.join(self.out_dir, "runs", run.run_id, "summary.json")
        try:
            with open(p) as f:
                return bool(json.load(f).get("complete"))
        except (OSError, ValueError):
            return False

    def _maybe_finalise(self, run: RunRecord, ended: bool = False) -> None:
        if run.run_id in self._finalised:
            return
        if run.complete:
            self._finalise(run)
        elif ended:
            missing = run.missing()
            log.warning("run %s ended with %d of %s volumes; missing %s", run.run_id, len(run.received),
                        run.n_volumes, missing[:20])
            self.record.write_summary(run)
            if self.on_run_gaps is not None:
                self.on_run_gaps(run.run_id, missing)

    def _finalise(self, run: RunRecord) -> None:
        self._finalised.add(run.run_id)
        nifti = os.path.join(self.out_dir, "nifti", f"{run.run_id}.nii") if self.export else None
        header_bytes, scaling = run_export_args(run)

        def job():
            try:
                if nifti:
                    export_run_nifti(self.out_dir, run.run_id, nifti, header_bytes, scaling)
                self.record.write_summary(run, {"nifti": nifti})
                log.info("run %s complete: %d volumes%s", run.run_id, len(run.received),
                         f" -> {nifti}" if nifti else "")
                if self.on_run_complete is not None:
                    self.on_run_complete(run.run_id, nifti)
            except Exception:
                log.exception("export of run %s failed; its volumes are safe in the session record",
                              run.run_id)

        self._exports[run.run_id] = self._exporter.submit(job)

    def wait_exports(self, timeout_s: float | None = None) -> None:
        """Block until pending NIfTI exports are written."""
        for fut in list(self._exports.values()):
            fut.result(timeout=timeout_s)

    def close(self) -> None:
        self._exporter.shutdown(wait=True)
        self.sock.close(0)
        if self._auth is not None:
            self._auth.stop()
        self.record.close()
        self._claim.release()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
