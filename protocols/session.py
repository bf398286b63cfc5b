"""Session record v1: the on-disk layout of everything a session received.

::

    SESSION/
      session.json              format name, version, creation time
      runs/<run_id>/volumes.log record log (see protocols.record): run_start,
                                volume and run_end records, in arrival order
      runs/<run_id>/summary.json written when a run is complete (or ended with gaps)
      rejected.log              record log of every refused message, frames kept
      nifti/<run_id>.nii        export of each complete run (written by realtime)

A volume record's header holds the wire header fields as received plus
``t_recv`` (Unix s); its payload is the voxel bytes exactly as received. The
record is therefore bit-exact with what the scanner side sent, and the run
can be exported back to NIfTI or replayed deterministically.
"""

from __future__ import annotations

from collections.abc import Iterator

import fcntl
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ._crc import crc32
from .errors import RecordError
from .record import PREFIX_BYTES, RecordLog, scan_records
from .wire import RunEnd, RunStart, VolumeMessage

__all__ = ["SESSION_FORMAT", "SESSION_VERSION", "RunRecord", "SessionRecord", "SessionLock", "written_elsewhere",
           "load_run", "run_volumes", "list_runs", "write_json_atomic"]

SESSION_FORMAT = "b2m-session-record"
# Reservation ahead of appends (see SessionRecord.top_up): keep room for this
# many volumes, zero-filled by steps of at most this many, allowing this many
# bytes for each record's msgpack header.
_HEADER_ALLOWANCE = 1024
# the per-volume header fields kept in memory (see RunRecord._absorb); the log has them all
_PER_VOLUME_KEYS = ("kind", "run_id", "index", "n_volumes", "order", "t_acq", "t_send", "t_recv", "crc32")
_RESERVE_AHEAD = 16
_RESERVE_STEP = 4
SESSION_VERSION = 1


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a synced temporary file, so a reader sees the old or the new."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class RunRecord:
    """The state of one run in a session record.

    Attributes
    ----------
    run_id : str
    start : dict or None
        Header of the run_start record, if one was received.
    geometry : dict or None
        ``shape``, ``dtype``, ``order``, ``affine`` (16 floats) and ``tr_s`` of the
        run's first volume; later volumes must match it.
    n_volumes : int or None
        Expected volume count (from run_start, a volume header or run_end).
    received : dict of int -> Record
        Volume index -> where its record lies in the log. Its ``header`` holds
        only the per-volume fields (timestamps, CRC, index); the shape, dtype,
        affine and TR are in ``geometry`` (a volume's own affine or TR is kept
        only where it differs).
    ended : bool
        A run_end record was received.
    """

    run_id: str
    log: RecordLog
    start: dict | None = None
    geometry: dict | None = None
    n_volumes: int | None = None
    received: dict = field(default_factory=dict)
    ended: bool = False

    def missing(self) -> list[int]:
        """Indices not received, among 0..n_volumes-1 (or up to the highest seen)."""
        n = self.n_volumes if self.n_volumes is not None else (max(self.received) + 1 if self.received else 0)
        return [i for i in range(n) if i not in self.received]

    @property
    def complete(self) -> bool:
        return self.n_volumes is not None and len(self.received) >= self.n_volumes and not self.missing()

    def volume(self, index: int) -> np.ndarray:
        """The recorded volume ``index``, as sent (native dtype and order)."""
        rec = self.received[index]
        g = self.geometry
        buf = self.log.read_payload(rec)
        # each volume in its own memory order (a receiver before 2026-11-29 took runs that mixed them)
        return np.frombuffer(buf, dtype=np.dtype(g["dtype"])).reshape(g["shape"],
                                                                      order=rec.header.get("order", g["order"]))

    def _absorb(self, header: dict, rec) -> None:
        kind = header.get("kind")
        if kind == "run_start":
            self.start = header
            if header.get("n_volumes") is not None:
                self.n_volumes = header["n_volumes"]
        elif kind == "volume":
            if self.geometry is None:
                self.geometry = {k: header[k] for k in ("shape", "dtype", "order", "affine", "tr_s")}
            if header.get("n_volumes") is not None and self.n_volumes is None:
                self.n_volumes = header["n_volumes"]
            # Per volume, only what varies is kept in memory; the geometry is kept once, and a
            # volume's affine or TR only when it differs from the run's (prospective motion
            # correction): a long session's index stays small (~0.4 kB a volume, not ~1.3 kB).
            slim = {k: header[k] for k in _PER_VOLUME_KEYS if k in header}
            for k in ("affine", "tr_s"):
                if k in header and header[k] != self.geometry[k]:
                    slim[k] = header[k]
            self.received[header["index"]] = replace(rec, header=slim)
        elif kind == "run_end":
            self.ended = True
            if self.n_volumes is None:
                self.n_volumes = header["n_volumes"]


#: The file a writer holds locked in a session folder (its PID and command inside, for the error message).
LOCK_NAME = "session.lock"
_held: dict[str, list] = {}       # folder (real path) -> [fd, holds]: this process's locks
_held_guard = threading.Lock()


class SessionLock:
    """This process's claim to write a session folder: one writer at a time.

    Two receivers (or two sessions) appending to one folder would overwrite
    each other's records. The claim is an exclusive ``flock`` on
    ``FOLDER/session.lock``, which the kernel frees when the process ends,
    however it ends (a crash or ``kill -9`` leaves no stale lock). Claims
    within one process nest (a session and its receiver).

    Raises
    ------
    RecordError
        Another process holds the folder: names it and says what to do.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.realpath(os.fspath(path))
        with _held_guard:
            entry = _held.get(self.path)
            if entry is None:
                os.makedirs(self.path, exist_ok=True)
                lock_path = os.path.join(self.path, LOCK_NAME)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                    os.close(fd)
                    raise RecordError(os.fspath(path), f"is being written by {holder}; one process at a time "
                                      "writes a session folder: stop that one first, or give another --out") from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"PID {os.getpid()} ({' '.join(sys.argv)[:200]}), since "
                              f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
                entry = _held[self.path] = [fd, 0]
            entry[1] += 1
        self._released = False

    def release(self) -> None:
        """Give the claim back (idempotent); the lock goes with this process's last claim."""
        with _held_guard:
            if self._released:
                return
            self._released = True
            entry = _held[self.path]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self.path]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])

    def __enter__(self) -> "SessionLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def written_elsewhere(path: str | os.PathLike) -> bool:
    """Whether another process holds ``path``'s :class:`SessionLock` now (a live session or receiver)."""
    real = os.path.realpath(os.fspath(path))
    with _held_guard:
        if real in _held:
            return False
    try:
        fd = os.open(os.path.join(real, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return False  # never claimed
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing frees the shared lock, if taken


class SessionRecord:
    """Open (or create) a session record folder and append to it.

    Reopening an existing folder continues it: every run's log is scanned,
    torn tails are moved aside, and what was recorded is known again, so a
    restarted receiver drops duplicates and completes interrupted runs.

    Parameters
    ----------
    path : path-like
        The session folder.
    sync : bool
        fdatasync every record before returning (default True).
    read_only : bool or None
        Read the record and change nothing (no torn tail moved aside), so that
        another process may be appending to it. None (default): read-only when
        another process holds the folder's :class:`SessionLock` (a session
        running), else as a writer would open it.

    Attributes
    ----------
    read_only : bool
    """

    def __init__(self, path: str | os.PathLike, *, sync: bool = True, read_only: bool | None = None):
        self.path = os.fspath(path)
        self.sync = sync
        self.read_only = written_elsewhere(self.path) if read_only is None else bool(read_only)
        if not self.read_only:
            os.makedirs(os.path.join(self.path, "runs"), exist_ok=True)
        elif not os.path.isdir(os.path.join(self.path, "runs")):
            raise RecordError(self.path, "has no runs/ folder: is it a session record (b2m session --out, "
                                         "b2m receive --out)?")
        meta_path = os.path.join(self.path, "session.json")
        if os.path.exists(meta_path):
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise RecordError(meta_path, f"cannot be read as JSON ({e}); is this a session record? "
                                             "Choose another --out folder") from None
            if not isinstance(meta, dict):
                raise RecordError(meta_path, "is not a session record; choose another --out folder")
            if meta.get("format") != SESSION_FORMAT:
                raise RecordError(meta_path, f"is not a session record (format {meta.get('format')!r}); "
                                             "choose another --out folder")
            if meta.get("version") != SESSION_VERSION:
                raise RecordError(meta_path, f"session record version {meta.get('version')} is not supported "
                                             f"(this is version {SESSION_VERSION})")
        elif not self.read_only:
            write_json_atomic(meta_path, {"format": SESSION_FORMAT, "version": SESSION_VERSION,
                                     "created_unix": time.time()})
        self.runs: dict[str, RunRecord] = {}
        self.torn: list[str] = []
        for run_id in sorted(os.listdir(os.path.join(self.path, "runs"))):
            log_path = os.path.join(self.path, "runs", run_id, "volumes.log")
            if os.path.exists(log_path):
                self._open_run(run_id)
        self._rejected: RecordLog | None = None

    def _open_run(self, run_id: str) -> RunRecord:
        log = RecordLog(os.path.join(self.path, "runs", run_id, "volumes.log"), sync=self.sync,
                        read_only=self.read_only)
        if log.torn_path:
            self.torn.append(log.torn_path)
        run = RunRecord(run_id=run_id, log=log)
        for rec in log.records:
            run._absorb(rec.header, rec)
        self.runs[run_id] = run
        return run

    def run(self, run_id: str) -> RunRecord:
        """The run's record, created if new."""
        run = self.runs.get(run_id)
        if run is None:
            self._writable()
            run = self._open_run(run_id)
        return run

    def _writable(self) -> None:
        if self.read_only:
            raise RecordError(self.path, "was opened read-only: another process is writing this session")

    # ---- appending -------------------------------------------------------

    def top_up(self, run_id: str) -> None:
        """Zero-fill a little more room ahead of the run's next volumes.

        Meant to be called *after* an ack, off the latency path: it keeps
        :data:`_RESERVE_AHEAD` volumes of room by steps of at most
        :data:`_RESERVE_STEP` volumes, so the next appends overwrite allocated
        blocks and their ``fdatasync`` is cheaper.
        """
        run = self.runs.get(run_id)
        if run is None or not self.sync:
            return
        g = run.geometry or ({"shape": run.start.get("shape"), "dtype": run.start.get("dtype")}
                             if run.start else None)
        if not g or g.get("shape") is None or g.get("dtype") is None:
            return
        rec_bytes = PREFIX_BYTES + _HEADER_ALLOWANCE + int(np.prod(g["shape"])) * np.dtype(g["dtype"]).itemsize
        left = (run.n_volumes - len(run.received)) if run.n_volumes else _RESERVE_AHEAD
        want = min(max(left, 0), _RESERVE_AHEAD) * rec_bytes
        have = run.log.reserved
        if have < want:
            run.log.reserve(have + min(want - have, _RESERVE_STEP * rec_bytes))

    def append_run_start(self, msg: RunStart, t_recv: float) -> RunRecord:
        run = self.run(msg.run_id)
        h = {"kind": "run_start", "run_id": msg.run_id, "tr_s": msg.tr_s, "n_volumes": msg.n_volumes,
             "shape": None if msg.shape is None else list(msg.shape), "dtype": msg.dtype,
             "affine": None if msg.affine is None else [float(v) for v in np.ravel(msg.affine)],
             "meta": msg.meta, "t_send": msg.t_sent, "t_recv": t_recv}
        rec = run.log.append(h)
        run._absorb(h, rec)
        return run

    def append_volume(self, msg: VolumeMessage, payload, t_recv: float, order: str) -> RunRecord:
        """Durably record a validated volume; ``payload`` is the received frame."""
        run = self.run(msg.run_id)
        h = {"kind": "volume", "run_id": msg.run_id, "index": msg.index, "n_volumes": msg.n_volumes,
             "shape": list(msg.data.shape), "dtype": msg.data.dtype.str, "order": order,
             "affine": [float(v) for v in msg.affine.ravel()], "tr_s": msg.tr_s,
             "t_acq": msg.t_acquired, "t_send": msg.t_sent, "t_recv": t_recv, "crc32": msg.checksum}
        rec = run.log.append(h, payload, payload_crc=msg.checksum)
        run._absorb(h, rec)
        return run

    def append_run_end(self, msg: RunEnd, t_recv: float) -> RunRecord:
        run = self.run(msg.run_id)
        h = {"kind": "run_end", "run_id": msg.run_id, "n_volumes": msg.n_volumes,
             "t_send": msg.t_sent, "t_recv": t_recv}
        rec = run.log.append(h)
        run._absorb(h, rec)
        return run

    def append_rejected(self, frames, field_: str, reason: str, t_recv: float, peer: bytes = b"",
                        max_bytes: int = 64 << 20) -> None:
        """Keep a refused message (frames capped at ``max_bytes``) with its reason."""
        self._writable()
        if self._rejected is None:
            self._rejected = RecordLog(os.path.join(self.path, "rejected.log"), sync=self.sync)
        lens = [len(f) for f in frames]
        blob = b"".join(bytes(f) for f in frames)
        h = {"kind": "rejected", "field": field_, "reason": reason, "t_recv": t_recv,
             "peer": peer.hex(), "frame_lens": lens, "truncated": len(blob) > max_bytes}
        self._rejected.append(h, blob[:max_bytes])

    def write_summary(self, run: RunRecord, extra: dict | None = None) -> str:
        path = os.path.join(self.path, "runs", run.run_id, "summary.json")
        summary = {"run_id": run.run_id, "n_volumes": run.n_volumes, "n_received": len(run.received),
                   "missing": run.missing(), "complete": run.complete, "ended": run.ended}
        summary.update(extra or {})
        write_json_atomic(path, summary)
        return path

    def close(self) -> None:
        for run in self.runs.values():
            run.log.close()
        if self._rejected is not None:
            self._rejected.close()


def list_runs(path: str | os.PathLike) -> list[str]:
    """Run ids present in a session record folder."""
    runs = os.path.join(os.fspath(path), "runs")
    return sorted(r for r in os.listdir(runs) if os.path.exists(os.path.join(runs, r, "volumes.log")))


def run_volumes(path: str | os.PathLike, run_id: str) -> tuple[dict, list[dict], Iterator[np.ndarray]]:
    """A recorded run, one volume at a time (memory: one volume), for streaming exports.

    Returns
    -------
    geometry : dict
        ``shape``, ``dtype``, ``order``, ``affine`` (ndarray (4, 4)), ``tr_s``, ``n_volumes``.
    headers : list of dict
        The volume record headers, in index order.
    volumes : iterator of ndarray of shape (x, y, z)
        In index order, in the received dtype; each payload's CRC-32 is checked as it is read.

    Raises
    ------
    RecordError
        If a volume is missing (the run cannot be exported bit-exact), or, while iterating, if a
        payload no longer matches its checksum.
    """
    log_path = os.path.join(os.fspath(path), "runs", run_id, "volumes.log")
    if not os.path.exists(log_path):
        raise RecordError(log_path, f"no such run {run_id!r} in the session record")
    records, _ = scan_records(log_path, payloads=False)
    vols = {r.header["index"]: r for r in records if r.header.get("kind") == "volume"}
    n = max(vols) + 1 if vols else 0
    for r in records:
        if r.header.get("kind") in ("run_start", "run_end") and r.header.get("n_volumes") is not None:
            n = max(n, r.header["n_volumes"])
    missing = [i for i in range(n) if i not in vols]
    if missing or not vols:
        raise RecordError(log_path, f"run {run_id!r} is missing volumes {missing[:20]}"
                                    f"{'...' if len(missing) > 20 else ''}; it cannot be exported bit-exact")
    g = dict(vols[0].header)
    shape, dtype, order = tuple(g["shape"]), np.dtype(g["dtype"]), g["order"]
    geometry = {"shape": list(shape), "dtype": dtype.str, "order": order, "tr_s": g["tr_s"], "n_volumes": n,
                "affine": np.asarray(g["affine"], dtype=np.float64).reshape(4, 4)}

    def read():
        with open(log_path, "rb") as f:
            for i in range(n):
                rec = vols[i]
                f.seek(rec.payload_offset)
                buf = f.read(rec.payload_len)
                want = rec.header.get("crc32")
                if want is not None and crc32(buf) != int(want) & 0xFFFFFFFF:
                    raise RecordError(log_path, f"volume {i} of run {run_id!r} no longer matches its CRC-32: "
                                                "the file was changed after it was recorded")
                yield np.frombuffer(buf, dtype=dtype).reshape(shape, order=rec.header.get("order", order))

    return geometry, [vols[i].header for i in range(n)], read()


def load_run(path: str | os.PathLike, run_id: str) -> tuple[np.ndarray, dict, list[dict]]:
    """Read one recorded run back as a 4-D array (read-only, needs only numpy).

    Returns
    -------
    data : ndarray of shape (x, y, z, n_volumes)
        Voxel values in the received dtype, volumes in index order.
    geometry : dict
        ``shape``, ``dtype``, ``order``, ``affine`` (ndarray (4, 4)), ``tr_s``.
    headers : list of dict
        The volume record headers, in index order (timestamps included).

    Raises
    ------
    RecordError
        If a volume is missing: the run cannot be exported bit-exact.
    """
    geometry, headers, volumes = run_volumes(path, run_id)
    n = geometry.pop("n_volumes")
    data = np.empty(tuple(geometry["shape"]) + (n,), dtype=np.dtype(geometry["dtype"]), order="F")
    for i, vol in enumerate(volumes):
        data[..., i] = vol
    return data, geometry, headers
