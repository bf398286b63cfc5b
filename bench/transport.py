"""Benchmark the scanner link: send -> ack latency, throughput and pacing.

Run from the repository root::

    .venv/bin/python bench/transport.py            # full, a few minutes
    .venv/bin/python bench/transport.py --quick    # under ~30 s

Everything runs over real loopback TCP with ds003720-size volumes
(96 x 96 x 68 int16, 1.25 MiB, random data from a seeded rng) into a real
``b2m receive`` in a separate process that fsyncs every volume before its ack.
Runs are sent as a scanner sends them: a run start that announces the run's
length, at most 410 volumes (one ds003720 run), a run end; the next run starts
once the receiver has exported the previous one to NIfTI.

Measured:

1. Latency, one volume in flight: ``ReliableSender.send`` (encoding and CRC
   included) until its ack is back, then the next volume.
2. Throughput: one full 410-volume run streamed as fast as acks allow (window 64).
3. Pacing error at speed 1 with TR 0.1 s: ``replay_nifti`` on a 4-D NIfTI of
   96 x 96 x 68 x 100 int16; actual first send minus its deadline.
4. Anchors, for ratios and for where the time goes: the same bytes over a raw
   pyzmq DEALER/ROUTER round trip (echo ack, no validation, no recording, no
   fsync) in another process; ``os.write`` + ``os.fdatasync`` of one volume
   appended to a file next to the session record; ``Receiver.handle`` in this
   process with its system calls timed; a per-volume breakdown from timestamps
   on both sides of the socket; a run whose length is not announced; and the
   latency against a receiver run with ``--no-fsync``.
5. The floor: the same paced one-in-flight round trips against a raw ROUTER
   that does nothing but ``pwrite`` the payload over pre-zeroed blocks and
   ``fdatasync`` before its ack. No receiver that fsyncs before acking can
   beat it on this machine, so ours/floor is the figure that carries from one
   machine to another, and the floor's own p99 says whether the goal is
   reachable here at all.

Prints a table (medians and p99) and writes ``bench/results/transport.json``
(``transport-quick.json`` with ``--quick``). The goal is p99 send -> ack
under 5 ms, fsync included.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

SHAPE = (96, 96, 68)  # ds003720 BOLD geometry, 2 mm isotropic
DTYPE = np.dtype("<i2")
TR_DS003720_S = 1.5
RUN_LENGTH = 410  # volumes in one ds003720 run
PACING_TR_S = 0.1
PACING_N_VOLUMES = 100
GOAL_P99_MS = 5.0
# One volume per 0.1 s for the latency runs: a scanner sends one per TR (1.5 s in
# ds003720, rarely under 0.5 s), so 0.1 s is well on the fast side of any real
# site; back-to-back sending is measured as well, as a stress row.
LATENCY_INTERVAL_S = 0.1
WINDOW = 64
SEED = 20230720
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
MEASURED_SOURCES = [
    "protocols/wire.py", "protocols/record.py", "protocols/session.py",
    "realtime/transport.py", "realtime/sender.py", "realtime/receiver.py", "realtime/nifti_io.py",
    "realtime/scanner/replay.py", "realtime/scanner/pacing.py", "b2m/commands/receive.py",
]


# --------------------------------------------------------------------------
# Child processes (receiver, raw echo server)
# --------------------------------------------------------------------------


class Child:
    """A child process that prints ``ready\\t<endpoint>`` on stderr when bound.

    Its stderr and stdout are drained by threads (so it never blocks on a full
    pipe); stderr is kept for diagnostics, and each stdout line
    ``<run_id>\\t<nifti>`` (printed by ``b2m receive`` when a run is exported)
    is recorded. It is stopped with SIGTERM by PID.
    """

    def __init__(self, cmd: list[str], name: str, timeout_s: float = 60.0):
        self.name = name
        self.lines: list[str] = []
        self.exported: dict[str, float] = {}  # run id -> perf_counter when its line arrived
        self._cond = threading.Condition()
        self._ready: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._drain_err, daemon=True).start()
        threading.Thread(target=self._drain_out, daemon=True).start()
        try:
            self.endpoint = self._ready.get(timeout=timeout_s)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"{name} did not print 'ready' within {timeout_s} s:\n" + self.tail())
        if self.endpoint is None:
            raise RuntimeError(f"{name} exited with code {self.proc.wait()} before it was ready:\n" + self.tail())

    def _drain_err(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("ready\t"):
                self._ready.put(line.split("\t", 1)[1].strip())
        self._ready.put(None)

    def _drain_out(self) -> None:
        for line in self.proc.stdout:
            run_id = line.split("\t", 1)[0].strip()
            with self._cond:
                self.exported[run_id] = time.perf_counter()
                self._cond.notify_all()

    def wait_exported(self, run_id: str, timeout_s: float = 300.0) -> float:
        """Block until the receiver reports ``run_id`` exported; return that perf_counter time."""
        with self._cond:
            if not self._cond.wait_for(lambda: run_id in self.exported or self.proc.poll() is not None,
                                       timeout=timeout_s) or run_id not in self.exported:
                raise RuntimeError(f"{self.name} did not report run {run_id} exported within "
                                   f"{timeout_s} s:\n" + self.tail())
            return self.exported[run_id]

    def tail(self, n: int = 20) -> str:
        return "\n".join(f"  [{self.name}] {x}" for x in self.lines[-n:])

    def stop(self, timeout_s: float = 300.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        return self.proc.returncode


def echo_server(endpoint: str, record: str | None = None) -> int:
    """The raw anchors: a ROUTER that answers every message with a 3-byte ack.

    With ``record`` (a file path) it is the floor of a durable receiver: before
    each ack it writes the message's last frame into a file zero-filled and
    synced beforehand (slot by slot, wrapping round) and ``fdatasync``s it.
    No validation, no CRC, no msgpack: only the socket and the disk.
    """
    import zmq

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fd, slot, n_slots, slot_bytes = None, 0, 64, 0
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(endpoint)
    print(f"ready\t{sock.getsockopt_string(zmq.LAST_ENDPOINT)}", file=sys.stderr, flush=True)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if not poller.poll(200):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if record is not None:
                payload = frames[-1].buffer
                if fd is None:  # sized by the first message, before its ack
                    slot_bytes = len(payload)
                    fd = os.open(record, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                    zeros = bytes(slot_bytes)
                    for i in range(n_slots):
                        os.pwrite(fd, zeros, i * slot_bytes)
                    os.fsync(fd)
                os.pwrite(fd, payload, (slot % n_slots) * slot_bytes)
                os.fdatasync(fd)
                slot += 1
            sock.send_multipart([frames[0], b"ack"])
    if fd is not None:
        os.close(fd)
        os.unlink(record)
    sock.close(0)
    ctx.term()
    return 0


def floor_anchor(endpoint: str, frames, n: int, warmup: int, interval_s: float) -> dict:
    """Paced DEALER -> ROUTER round trips against ``echo_server(record=...)``:
    one volume per ``interval_s``, one in flight, as the latency runs do."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    rtt = []
    try:
        sock.send_multipart(frames, copy=False)  # sizes and fills the server's file
        sock.recv_multipart()
        t0 = time.perf_counter() + interval_s
        for i in range(warmup + n):
            time.sleep(max(0.0, t0 + i * interval_s - time.perf_counter()))
            t = time.perf_counter()
            sock.send_multipart(frames, copy=False)
            sock.recv_multipart()
            if i >= warmup:
                rtt.append((time.perf_counter() - t) * 1e3)
    finally:
        sock.close(0)
        ctx.term()
    return {"interval_s": interval_s, "round_trip_ms": summarize(rtt),
            "n_over_goal": sum(x >= GOAL_P99_MS for x in rtt)}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _ms(seconds) -> list[float]:
    return [float(s) * 1e3 for s in seconds]


def _timeit(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _run_lengths(total: int) -> list[int]:
    """Split ``total`` volumes into runs of at most RUN_LENGTH."""
    return [min(RUN_LENGTH, total - k) for k in range(0, total, RUN_LENGTH)]


def _volume(run_id, index, pool, affine, n_volumes):
    from protocols.wire import VolumeMessage

    return VolumeMessage(run_id=run_id, index=index, data=pool[index % len(pool)], affine=affine,
                         tr_s=TR_DS003720_S, n_volumes=n_volumes, t_acquired=time.time())


def _run_start(run_id, affine, n_volumes):
    from protocols.wire import RunStart

    return RunStart(run_id=run_id, tr_s=TR_DS003720_S, n_volumes=n_volumes, shape=SHAPE, dtype=DTYPE.str,
                    affine=affine)


def _acked(sender, msg, what: str, timeout_s: float = 120.0) -> float:
    """Send one message, wait for its ack; return the time in ms."""
    t = time.perf_counter()
    sender.send(msg)
    if not sender.drain(timeout_s):
        raise RuntimeError(f"{what}: no ack within {timeout_s} s")
    return (time.perf_counter() - t) * 1e3


def _check(sender, what: str) -> None:
    st = sender.stats
    if st.rejected or sender.pending:
        raise RuntimeError(f"{what}: {len(st.rejected)} rejected {st.rejected[:3]}, "
                           f"{len(sender.pending)} unacked; the measurement is not valid")


# --------------------------------------------------------------------------
# Measurements without the receiver process
# --------------------------------------------------------------------------


def components(pool, affine, root: str, n: int) -> dict:
    """In-process cost of each step on the path, without sockets or fsync."""
    import zlib

    from protocols._crc import crc32
    from protocols.session import SessionRecord
    from protocols.wire import Ack, VolumeMessage, decode, encode

    payload = pool[0].tobytes()
    msg = VolumeMessage(run_id="components", index=0, data=pool[0], affine=affine, tr_s=TR_DS003720_S)
    frames = encode(msg)
    decoded = decode(frames)
    out = {
        "crc32_one_volume": summarize(_timeit(lambda: crc32(payload), n)),
        "zlib_crc32_one_volume": summarize(_timeit(lambda: zlib.crc32(payload), n)),
        "sender_encode": summarize(_timeit(lambda: encode(msg), n)),
        "receiver_decode_validate": summarize(_timeit(lambda: decode(frames), n)),
        "ack_encode_decode": summarize(_timeit(lambda: decode(encode(
            Ack(of="volume", run_id="components", index=0, status="recorded"))), n)),
    }
    folder = os.path.join(root, "components-session")
    rec = SessionRecord(folder, sync=False)
    idx = iter(range(10**9))

    def append():
        decoded.index = next(idx)
        rec.append_volume(decoded, frames[1], time.time(), "C")

    out["record_append_no_fsync"] = summarize(_timeit(append, n))
    rec.close()
    shutil.rmtree(folder)
    os.sync()  # do not leave dirty pages to be flushed during later measurements
    return out


def receiver_handle(pool, affine, root: str, n: int, warmup: int) -> dict:
    """``Receiver.handle`` in this process (fsync ON), with its system calls timed.

    The same code the receiver process runs for each volume, minus the socket,
    on a run whose length is announced. ``os.pwritev`` and ``os.fdatasync``
    are wrapped for the duration, so each call splits into page-cache write,
    fsync and the rest (decode, validation, three CRC-32 passes, msgpack,
    bookkeeping, ack encoding).
    """
    from protocols.wire import encode
    from realtime.receiver import Receiver

    folder = os.path.join(root, "handle-session")
    samples = {"pwritev": [], "fdatasync": []}
    real = {name: getattr(os, name) for name in samples}

    def wrap(name):
        fn, out = real[name], samples[name]

        def timed(*a):
            t = time.perf_counter()
            try:
                return fn(*a)
            finally:
                out.append((time.perf_counter() - t) * 1e3)
        return timed

    total_n = warmup + n
    msgs = []
    for i in range(total_n):
        f = encode(_volume("handle", i, pool, affine, total_n))
        msgs.append([bytes(f[0]), memoryview(bytes(f[1]))])
    total, wr, fs = [], [], []
    rx = Receiver(folder, "tcp://127.0.0.1:*", export=False, sync=True)
    reply = None
    try:
        t = time.perf_counter()
        rx.handle(encode(_run_start("handle", affine, total_n)))
        run_start_ms = (time.perf_counter() - t) * 1e3
        for name in samples:
            setattr(os, name, wrap(name))
        try:
            for i, frames in enumerate(msgs):
                k = len(samples["pwritev"]), len(samples["fdatasync"])
                t = time.perf_counter()
                reply = rx.handle(frames)
                dt = (time.perf_counter() - t) * 1e3
                if i >= warmup:
                    total.append(dt)
                    wr.append(sum(samples["pwritev"][k[0]:]))
                    fs.append(sum(samples["fdatasync"][k[1]:]))
        finally:
            for name, fn in real.items():
                setattr(os, name, fn)
        if rx.stats.recorded != len(msgs) or rx.stats.rejected:
            raise RuntimeError(f"in-process receiver: {rx.stats.recorded} recorded, {rx.stats.rejected} "
                               f"rejected, last reply {reply}")
    finally:
        rx.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"n_warmup_dropped": warmup, "run_start_handle_ms": run_start_ms,
            "handle_ms": summarize(total), "pwritev_ms": summarize(wr), "fdatasync_ms": summarize(fs),
            "rest_ms": summarize([t - w - f for t, w, f in zip(total, wr, fs)])}


def fsync_alone(folder: str, volume_bytes: bytes, n: int) -> dict:
    """``os.write`` + ``os.fdatasync`` of one volume, appended (growing the
    file, as a plain append-only log does) and, for comparison, written over
    blocks that were zero-filled and synced beforehand."""
    path = os.path.join(folder, "fsync-probe.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    w, s, both = [], [], []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, volume_bytes)
            t1 = time.perf_counter()
            os.fdatasync(fd)
            t2 = time.perf_counter()
            w.append((t1 - t0) * 1e3)
            s.append((t2 - t1) * 1e3)
            both.append((t2 - t0) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    size = len(volume_bytes)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    over = []
    try:
        zeros = bytes(size)
        for i in range(n):
            os.pwrite(fd, zeros, i * size)
        os.fsync(fd)
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, volume_bytes, i * size)
            os.fdatasync(fd)
            over.append((time.perf_counter() - t0) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"append_write": summarize(w), "append_fdatasync": summarize(s),
            "append_write_plus_fdatasync": summarize(both),
            "overwrite_prefilled_write_plus_fdatasync": summarize(over)}


def raw_anchor(endpoint: str, frames, n: int, n_stream: int, warmup: int) -> dict:
    """Raw DEALER -> ROUTER echo: the floor for these bytes on this loopback."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    rtt = []
    try:
        for i in range(warmup + n):
            t = time.perf_counter()
            sock.send_multipart(frames, copy=False)
            sock.recv_multipart()
            if i >= warmup:
                rtt.append((time.perf_counter() - t) * 1e3)
        sent = acked = 0
        t0 = time.perf_counter()
        while acked < n_stream:
            while sent < n_stream and sent - acked < WINDOW:
                sock.send_multipart(frames, copy=False)
                sent += 1
            sock.recv_multipart()
            acked += 1
        wall = time.perf_counter() - t0
    finally:
        sock.close(0)
        ctx.term()
    return {"round_trip_ms": summarize(rtt),
            "stream": {"n_volumes": n_stream, "window": WINDOW, "wall_s": wall,
                       "volumes_per_s": n_stream / wall}}


# --------------------------------------------------------------------------
# Measurements against the receiver process
# --------------------------------------------------------------------------


def one_in_flight(sender, rx: Child, prefix: str, pool, affine, n: int, warmup: int, *,
                  announce_length: bool = True, interval_s: float = 0.0) -> dict:
    """Send a volume, wait for its ack, send the next.

    ``interval_s`` > 0 sends volume k at the deadline t0 + k * interval_s, as a
    scanner does one per TR (the receiver is idle in between, as in a session);
    0 sends each volume the moment the previous ack is back (back to back).

    With ``announce_length`` the volumes go out as runs of at most 410 with the
    length in the run start, each closed by a run end, and the next run starts
    once the receiver has exported the previous one. Without it, one run whose
    length is never announced (and which is never completed or exported).
    """
    e2e, tx, starts, exports = [], [], [], []
    lengths = _run_lengths(warmup + n) if announce_length else [warmup + n]
    k = 0
    for r, length in enumerate(lengths):
        run_id = f"{prefix}-{r}"
        nv = length if announce_length else None
        starts.append(_acked(sender, _run_start(run_id, affine, nv), f"{run_id} run_start"))
        t0 = time.perf_counter() + interval_s
        for i in range(length):
            msg = _volume(run_id, i, pool, affine, nv)
            if interval_s > 0:
                time.sleep(max(0.0, t0 + i * interval_s - time.perf_counter()))
            t = time.perf_counter()
            sender.send(msg)
            while sender.pending:
                sender.poll(1.0)
            t_ack = time.perf_counter()
            if k >= warmup:
                e2e.append((t_ack - t) * 1e3)
                tx.append(sender.stats.latencies_s[("volume", run_id, i)] * 1e3)
            k += 1
        if announce_length:
            from protocols.wire import RunEnd

            t = time.perf_counter()
            _acked(sender, RunEnd(run_id=run_id, n_volumes=length), f"{run_id} run_end")
            exports.append((rx.wait_exported(run_id) - t) * 1e3)
    _check(sender, prefix)
    return {"n_warmup_dropped": warmup, "run_lengths": lengths, "announce_length": announce_length,
            "interval_s": interval_s,
            "send_call_to_ack_ms": summarize(e2e), "transmit_to_ack_ms": summarize(tx),
            "n_over_50ms": sum(x > 50.0 for x in e2e),
            "run_start_ack_ms": starts, "run_end_to_exported_ms": exports}


def breakdown(rx: Child, session: str, run_id: str, pool, affine, n: int, warmup: int) -> dict:
    """Where one volume's send -> ack time goes, from timestamps on both sides.

    Speaks the wire protocol on a DEALER of its own (the same socket options
    and ``encode``/``decode`` as ``ReliableSender``) so that it sees the ack's
    ``t_ack``; the receiver's ``t_recv`` comes from the session record. Both are
    ``time.time()`` on this machine, so the differences are comparable.
    """
    import zmq

    from protocols.record import scan_records
    from protocols.wire import Ack, RunEnd, decode, encode
    from realtime.transport import connect_dealer

    ctx = zmq.Context()
    sock = connect_dealer(ctx, rx.endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)

    def call(msg) -> tuple[float, float, float, Ack]:
        t0 = time.time()
        frames = encode(msg)
        t1 = time.time()
        deadline = time.monotonic() + 30.0
        while True:  # IMMEDIATE: sends fail until the connection is up
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not send to {rx.endpoint} within 30 s") from None
                time.sleep(0.01)  # only before the first connection, never while timing
        if not poller.poll(120_000):
            raise RuntimeError(f"no reply from {rx.endpoint} within 120 s")
        reply = decode(sock.recv_multipart())
        t2 = time.time()
        if not isinstance(reply, Ack):
            raise RuntimeError(f"breakdown: expected an ack, got {reply}")
        return t0, t1, t2, reply

    total_n = warmup + n
    rows = []
    try:
        call(_run_start(run_id, affine, total_n))
        for i in range(total_n):
            t0, t1, t2, ack = call(_volume(run_id, i, pool, affine, total_n))
            if i >= warmup:
                rows.append((i, t0, t1, t2, ack.t_ack))
        t_end = time.perf_counter()
        call(RunEnd(run_id=run_id, n_volumes=total_n))
        rx.wait_exported(run_id)
        export_ms = (time.perf_counter() - t_end) * 1e3
    finally:
        sock.close(0)
        ctx.term()
    recs, _ = scan_records(os.path.join(session, "runs", run_id, "volumes.log"), payloads=False)
    t_recv = {r.header["index"]: r.header["t_recv"] for r in recs if r.kind == "volume"}
    parts = {  # per volume, in ms
        "total_ms": [(t2 - t0) * 1e3 for _, t0, _, t2, _ in rows],
        "sender_encode_ms": [(t1 - t0) * 1e3 for _, t0, t1, _, _ in rows],
        "out_send_to_receiver_handle_ms": [(t_recv[i] - t1) * 1e3 for i, _, t1, _, _ in rows],
        "receiver_handle_ms": [(ta - t_recv[i]) * 1e3 for i, _, _, _, ta in rows],
        "back_ack_to_sender_ms": [(t2 - ta) * 1e3 for _, _, _, t2, ta in rows],
    }
    out: dict = {"n_warmup_dropped": warmup, "run_length": total_n, "run_end_to_exported_ms": export_ms}
    out.update({k: summarize(v) for k, v in parts.items()})
    # Which part makes the tail: mean of each part over the slowest 1 % of volumes.
    k = max(1, len(rows) // 100)
    slow = sorted(range(len(rows)), key=lambda j: parts["total_ms"][j])[-k:]
    out["slowest_1pct_mean_ms"] = {name: float(np.mean([v[j] for j in slow])) for name, v in parts.items()}
    out["slowest_1pct_mean_ms"]["n"] = k
    out["note"] = ("receiver_handle = t_ack - t_recv: decode + validate + record (CRC, pwritev, fdatasync) "
                   "+ ack encode, inside the receiver process")
    return out


def streaming(sender, rx: Child, run_id: str, pool, affine, n: int) -> dict:
    """Stream one run of ``n`` volumes as fast as acks allow (window 64)."""
    from protocols.wire import RunEnd

    msgs = [_volume(run_id, i, pool, affine, n) for i in range(n)]
    start_ms = _acked(sender, _run_start(run_id, affine, n), f"{run_id} run_start")
    before = set(sender.stats.latencies_s)
    t0 = time.perf_counter()
    for m in msgs:
        m.t_acquired = time.time()
        sender.send(m)
    ok = sender.drain(120.0)
    wall = time.perf_counter() - t0
    if not ok:
        raise RuntimeError(f"throughput: {len(sender.pending)} volumes unacked after 120 s")
    _check(sender, "throughput")
    lat = [v for k, v in sender.stats.latencies_s.items() if k[0] == "volume" and k not in before]
    t = time.perf_counter()
    _acked(sender, RunEnd(run_id=run_id, n_volumes=n), f"{run_id} run_end")
    export_ms = (rx.wait_exported(run_id) - t) * 1e3
    mb = n * math.prod(SHAPE) * DTYPE.itemsize / 1e6
    return {"n_volumes": n, "window": WINDOW, "wall_s": wall, "volumes_per_s": n / wall,
            "MB_per_s": mb / wall, "run_start_ack_ms": start_ms, "run_end_to_exported_ms": export_ms,
            "transmit_to_ack_under_load_ms": summarize(_ms(lat))}


def write_pacing_nifti(path: str, rng, n: int, affine) -> None:
    import nibabel as nib

    data = rng.integers(-32768, 32768, size=SHAPE + (n,), dtype=np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_zooms((2.0, 2.0, 2.0, PACING_TR_S))
    img.header.set_xyzt_units("mm", "sec")
    img.to_filename(path)


def pacing(rx: Child, nifti: str) -> dict:
    from realtime.scanner.replay import replay_nifti

    r = replay_nifti(nifti, rx.endpoint, speed=1.0, run_id="bench-pacing", drain_timeout_s=120.0)
    if not r.all_acked:
        raise RuntimeError(f"pacing replay: not all acked (unacked {r.unacked[:5]}, rejected {r.rejected[:3]})")
    rx.wait_exported("bench-pacing")
    return {"n_volumes": r.n_sent, "tr_s": PACING_TR_S, "speed": 1.0, "wall_s": r.wall_s,
            "pacing_error_ms": summarize(_ms(r.pacing_error_s)),
            "transmit_to_ack_ms": summarize(_ms(r.latency_s)), "resent": r.resent}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _mount_of(path: str) -> dict:
    """Device, mount point and file system type holding ``path``."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, dev, fstype)
    except OSError:
        pass
    return {"path": path, "st_dev": os.stat(path).st_dev, "mount": best[0], "device": best[1], "fstype": best[2]}


def _cpu_ticks() -> dict | None:
    """Aggregate CPU time counters from /proc/stat (ticks), or None."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    return dict(zip(names, (int(x) for x in fields[1:1 + len(names)])))


def _cpu_share(before: dict | None, after: dict | None) -> dict | None:
    """Share of all CPUs' time spent in each state between two snapshots."""
    if not before or not after:
        return None
    d = {k: after[k] - before[k] for k in before}
    total = sum(d.values()) or 1
    return {k: v / total for k, v in d.items()}


def _row(name: str, s: dict | None, note: str = "") -> str:
    if not s or not s.get("n"):
        return f"  {name:<48} {'-':>8} {'-':>8} {'':>6}  {note}"
    return f"  {name:<48} {s['p50']:8.3f} {s['p99']:8.3f} {s['n']:6d}  {note}"


def _list(xs) -> str:
    return ", ".join(f"{x:.0f}" for x in xs)


def print_report(res: dict) -> None:
    lat, lat_nf, lat_un = res["latency"], res["latency_no_fsync"], res["latency_length_unannounced"]
    comp, fs, anc = res["components"], res["fsync_alone"], res["anchor_raw_zmq"]
    print()
    print(f"b2m transport benchmark{' (quick)' if res['quick'] else ''}: "
          f"{res['volume']['shape']} {res['volume']['dtype']} = {res['volume']['bytes']} B per volume, "
          f"{res['endpoint_kind']}, receiver in a separate process")
    st = res["storage"]
    print(f"  session record on {st['session']['device']} ({st['session']['fstype']}) at {st['session']['path']}; "
          f"same device as the repo: {st['same_device_as_repo']}")
    print(f"\n  {'milliseconds':<48} {'p50':>8} {'p99':>8} {'n':>6}")
    print(f"  send -> ack, one volume in flight every {lat['interval_s']} s, fsync ON (runs of <= {RUN_LENGTH}, "
          "length announced)")
    print(_row("send() call -> ack (encode + CRC included)", lat["send_call_to_ack_ms"], "<- goal"))
    print(_row("transmit -> ack (sender stats.latencies_s)", lat["transmit_to_ack_ms"]))
    print(_row("send() call -> ack, back to back (stress)", res["latency_back_to_back"]["send_call_to_ack_ms"],
               "(next volume as soon as the ack is in)"))
    print("  anchors")
    print(_row("raw pyzmq DEALER/ROUTER echo, same bytes", anc["round_trip_ms"]))
    fl = res["anchor_floor"]
    print(_row(f"floor: raw echo + pwrite + fdatasync, every {fl['interval_s']} s", fl["round_trip_ms"],
               f"({fl['n_over_goal']} at or over {GOAL_P99_MS:g} ms)"))
    print(_row("os.write + fdatasync, 1.25 MB appended", fs["append_write_plus_fdatasync"]))
    print(_row("  of which fdatasync", fs["append_fdatasync"]))
    print(_row("pwrite + fdatasync over zero-filled blocks", fs["overwrite_prefilled_write_plus_fdatasync"]))
    print(_row("send() call -> ack, receiver --no-fsync", lat_nf["send_call_to_ack_ms"],
               "(no space reservation either)"))
    print(_row("send() call -> ack, run length not announced", lat_un["send_call_to_ack_ms"],
               f"(max {lat_un['send_call_to_ack_ms']['max']:.0f}; {lat_un['n_over_50ms']} over 50 ms)"))
    b = res["breakdown"]
    print("  breakdown, one in flight, fsync ON (timestamps from both processes)")
    print(_row("total", b["total_ms"]))
    print(_row("  sender encode (msgpack + CRC-32)", b["sender_encode_ms"]))
    print(_row("  out: sent -> receiver starts handling", b["out_send_to_receiver_handle_ms"]))
    print(_row("  receiver: validate + record + fsync + ack", b["receiver_handle_ms"]))
    print(_row("  back: ack encoded -> sender has it", b["back_ack_to_sender_ms"]))
    t = b["slowest_1pct_mean_ms"]
    print(f"    slowest 1% ({t['n']} volumes), mean: total {t['total_ms']:.2f} = encode {t['sender_encode_ms']:.2f}"
          f" + out {t['out_send_to_receiver_handle_ms']:.2f} + receiver {t['receiver_handle_ms']:.2f}"
          f" + back {t['back_ack_to_sender_ms']:.2f}")
    h = res["receiver_handle_in_process"]
    print("  Receiver.handle in this process, fsync ON (no socket)")
    print(_row("handle() total", h["handle_ms"]))
    print(_row("  os.pwritev (page-cache write)", h["pwritev_ms"]))
    print(_row("  os.fdatasync", h["fdatasync_ms"]))
    print(_row("  the rest (decode, 3x CRC-32, msgpack, ack)", h["rest_ms"]))
    print("  in-process steps (no socket, no fsync)")
    print(_row("sender encode (msgpack + CRC-32)", comp["sender_encode"]))
    print(_row("receiver decode + validate (incl. CRC-32)", comp["receiver_decode_validate"]))
    print(_row("record append, no fsync (CRC-32 + pwritev)", comp["record_append_no_fsync"]))
    print(_row("CRC-32 of one volume (isal; zlib below)", comp["crc32_one_volume"]))
    print(_row("zlib.crc32 of one volume (the anchor)", comp["zlib_crc32_one_volume"]))
    print("  pacing")
    print(_row(f"pacing error, speed 1, TR {PACING_TR_S} s", res["pacing"]["pacing_error_ms"],
               f"(max {res['pacing']['pacing_error_ms']['max']:.2f})"))
    th, ath = res["throughput"], anc["stream"]
    print(f"\n  throughput, window {th['window']}: {th['volumes_per_s']:.1f} volumes/s "
          f"({th['MB_per_s']:.0f} MB/s, {th['n_volumes']} volumes in {th['wall_s']:.2f} s); "
          f"raw pyzmq: {ath['volumes_per_s']:.0f} volumes/s")
    print(f"  run start -> ack (ms; space reserved for the run): latency runs {_list(lat['run_start_ack_ms'])}; "
          f"throughput run {th['run_start_ack_ms']:.0f}")
    print(f"  run end -> NIfTI exported (ms): latency runs {_list(lat['run_end_to_exported_ms'])}; "
          f"throughput run {th['run_end_to_exported_ms']:.0f}")
    print(f"  first ack of a fresh ReliableSender (connection set-up): {res['first_ack_ms']:.0f} ms")
    r = res["ratios"]
    print(f"  ratio ours/raw anchor: p50 {r['latency_p50']:.1f}x, p99 {r['latency_p99']:.1f}x; "
          f"throughput raw/ours {r['throughput_raw_over_ours']:.1f}x")
    print(f"  ratio ours/floor (same pace, fsync in both): p50 {r['latency_p50_over_floor']:.2f}x, "
          f"p99 {r['latency_p99_over_floor']:.2f}x")
    c = res.get("cpu_during_run")
    if c:
        print(f"  CPU time during the run (all {res['machine']['nproc']} CPUs): user {c['user']:.0%}, "
              f"system {c['system']:.0%}, iowait {c['iowait']:.0%}, steal {c['steal']:.0%}, idle {c['idle']:.0%}; "
              f"load average at start {res['loadavg_at_start']}")
    g = res["goal"]
    verdict = "MET" if g["met"] else f"MISSED by {g['p99_ms'] - g['p99_limit_ms']:.2f} ms"
    print(f"  goal: {g['text']}: p99 = {g['p99_ms']:.2f} ms -> {verdict}; "
          f"the floor on this machine: p99 {g['floor_p99_ms']:.2f} ms "
          f"({'meets' if g['floor_meets_goal'] else 'misses'} the goal itself)")
    print(f"\n  JSON: {res['json_path']}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=None,
                   help="volumes timed one in flight, and raw round trips (default 1000, --quick 150)")
    p.add_argument("--quick", action="store_true", help="fewer samples; runs in under ~30 s")
    p.add_argument("--tmp-dir", default=None,
                   help="parent folder of the session records (default: the system temp folder if it is "
                        "on the repository's device, else bench/results/)")
    p.add_argument("--keep", action="store_true", help="keep the temporary session records")
    p.add_argument("--echo-server", metavar="ENDPOINT", help=argparse.SUPPRESS)
    p.add_argument("--echo-record", metavar="FILE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.echo_server:
        return echo_server(args.echo_server, args.echo_record)

    from protocols.wire import RunStart, VolumeMessage, encode
    from realtime.sender import ReliableSender

    quick = args.quick
    n_lat = args.volumes or (150 if quick else 1000)
    if n_lat < 10:
        p.error("--volumes must be at least 10")
    n_stream = 100 if quick else RUN_LENGTH  # a full ds003720 run
    n_small = min(n_lat, 60 if quick else 300)  # breakdown and --no-fsync
    n_unannounced = 100 if quick else 300  # > 64: crosses at least one reservation chunk
    n_comp = 50 if quick else 200
    n_fsync = 50 if quick else 300
    warmup = 5 if quick else 20

    t_start = time.perf_counter()
    cpu0 = _cpu_ticks()
    load0 = list(os.getloadavg())
    parent = args.tmp_dir or tempfile.gettempdir()
    if not args.tmp_dir and os.stat(parent).st_dev != os.stat(REPO).st_dev:
        parent = os.path.join(REPO, "bench", "results")
        os.makedirs(parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="b2m-bench-transport-", dir=parent)
    session = os.path.join(root, "session")
    session_nf = os.path.join(root, "session-no-fsync")
    os.makedirs(session)

    rng = np.random.default_rng(SEED)
    affine = np.array([[-2.0, 0, 0, 95.0], [0, 2.0, 0, -131.0], [0, 0, 2.0, -59.0], [0, 0, 0, 1]])
    pool = [rng.integers(-32768, 32768, size=SHAPE, dtype=np.int16) for _ in range(32)]
    vol_bytes = pool[0].tobytes()
    frames = encode(VolumeMessage(run_id="anchor", index=0, data=pool[0], affine=affine, tr_s=TR_DS003720_S))
    frames = [bytes(f) for f in frames]

    res: dict = {"benchmark": "transport", "quick": quick, "machine": machine_info(),
                 "sources_sha256_16": source_digest(MEASURED_SOURCES),
                 "endpoint_kind": "loopback TCP (tcp://127.0.0.1, kernel-assigned free port)",
                 "volume": {"shape": list(SHAPE), "dtype": DTYPE.str, "bytes": len(vol_bytes),
                            "wire_header_bytes": len(frames[0]), "seed": SEED},
                 "counts": {"latency": n_lat, "stream": n_stream, "small": n_small, "unannounced": n_unannounced, "components": n_comp,
                            "fsync": n_fsync, "warmup": warmup, "run_length": RUN_LENGTH}}
    stages: dict = {}
    res["stage_wall_s"] = stages
    t_stage = [time.perf_counter()]

    def stage(name: str) -> None:
        now = time.perf_counter()
        stages[name] = now - t_stage[0]
        t_stage[0] = now

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    children: list[Child] = []
    try:
        say(f"writing a {SHAPE + (PACING_N_VOLUMES,)} int16 NIfTI (TR {PACING_TR_S} s) ...")
        nifti = os.path.join(root, "pacing_bold.nii")
        write_pacing_nifti(nifti, rng, PACING_N_VOLUMES, affine)
        os.sync()
        res["storage"] = {"session": _mount_of(session), "repo": _mount_of(REPO)}
        res["storage"]["same_device_as_repo"] = res["storage"]["session"]["st_dev"] == res["storage"]["repo"]["st_dev"]
        stage("write_nifti")

        say("in-process steps, Receiver.handle, fsync alone ...")
        res["components"] = components(pool, affine, root, n_comp)
        res["receiver_handle_in_process"] = receiver_handle(pool, affine, root, n_comp, warmup)
        os.sync()
        res["fsync_alone"] = fsync_alone(session, vol_bytes, n_fsync)
        stage("in_process")

        say("raw pyzmq anchor ...")
        echo = Child([PY, os.path.abspath(__file__), "--echo-server", "tcp://127.0.0.1:*"], "echo")
        children.append(echo)
        res["anchor_raw_zmq"] = raw_anchor(echo.endpoint, frames, n_lat, n_stream, warmup)
        res["anchor_raw_zmq"]["endpoint"] = echo.endpoint
        echo.stop()
        stage("anchor")

        say(f"floor anchor: raw pyzmq + pwrite + fdatasync before the ack, one volume per "
            f"{LATENCY_INTERVAL_S} s: {n_lat} volumes ...")
        floor = Child([PY, os.path.abspath(__file__), "--echo-server", "tcp://127.0.0.1:*",
                       "--echo-record", os.path.join(session, "floor-probe.bin")], "floor")
        children.append(floor)
        res["anchor_floor"] = floor_anchor(floor.endpoint, frames, n_lat, warmup, LATENCY_INTERVAL_S)
        floor.stop()
        stage("floor")

        say("starting b2m receive (fsync ON) ...")
        rx = Child([PY, "-m", "b2m", "receive", "--bind", "tcp://127.0.0.1:*", "--out", session], "receiver")
        children.append(rx)
        res["receiver_endpoint"] = rx.endpoint
        stage("receiver_start")
        with ReliableSender(rx.endpoint, window=WINDOW) as sender:
            # A run start without geometry reserves nothing: this times connection set-up alone.
            res["first_ack_ms"] = _acked(sender, RunStart(run_id="bench-hello", tr_s=TR_DS003720_S), "hello")
            say(f"latency, one in flight, one volume per {LATENCY_INTERVAL_S} s: {n_lat} volumes ...")
            res["latency"] = one_in_flight(sender, rx, "bench-latency", pool, affine, n_lat, warmup,
                                           interval_s=LATENCY_INTERVAL_S)
            stage("latency")
            say(f"latency, one in flight, back to back: {n_small} volumes ...")
            res["latency_back_to_back"] = one_in_flight(sender, rx, "bench-b2b", pool, affine, n_small, warmup)
            stage("latency_back_to_back")
            say(f"breakdown: {n_small} volumes ...")
            res["breakdown"] = breakdown(rx, session, "bench-breakdown", pool, affine, n_small, warmup)
            stage("breakdown")
            say(f"throughput: {n_stream} volumes, window {WINDOW} ...")
            res["throughput"] = streaming(sender, rx, "bench-throughput", pool, affine, n_stream)
            stage("throughput")
            say(f"run length not announced: {n_unannounced} volumes ...")
            res["latency_length_unannounced"] = one_in_flight(sender, rx, "bench-unannounced", pool, affine,
                                                              n_unannounced, warmup, announce_length=False)
            stage("unannounced")
        say(f"replay at speed 1, TR {PACING_TR_S} s ({PACING_N_VOLUMES * PACING_TR_S:.0f} s) ...")
        res["pacing"] = pacing(rx, nifti)
        stage("pacing")
        res["receiver_exit_code"] = rx.stop()
        stage("receiver_stop")

        say(f"b2m receive --no-fsync (diagnostic): {n_small} volumes ...")
        rx_nf = Child([PY, "-m", "b2m", "receive", "--no-fsync", "--bind", "tcp://127.0.0.1:*",
                       "--out", session_nf], "receiver-no-fsync")
        children.append(rx_nf)
        with ReliableSender(rx_nf.endpoint, window=WINDOW) as sender:
            _acked(sender, RunStart(run_id="bench-hello", tr_s=TR_DS003720_S), "hello")
            res["latency_no_fsync"] = one_in_flight(sender, rx_nf, "bench-latency", pool, affine, n_small, warmup)
        res["receiver_no_fsync_exit_code"] = rx_nf.stop()
        stage("no_fsync")
    except BaseException:
        for c in children:
            print(c.tail(), file=sys.stderr)
        raise
    finally:
        for c in children:
            c.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    ours = res["latency"]["send_call_to_ack_ms"]
    raw = res["anchor_raw_zmq"]["round_trip_ms"]
    res["ratios"] = {
        "latency_p50": ours["p50"] / raw["p50"],
        "latency_p99": ours["p99"] / raw["p99"],
        "throughput_raw_over_ours": res["anchor_raw_zmq"]["stream"]["volumes_per_s"]
        / res["throughput"]["volumes_per_s"],
        "latency_p50_over_floor": ours["p50"] / res["anchor_floor"]["round_trip_ms"]["p50"],
        "latency_p99_over_floor": ours["p99"] / res["anchor_floor"]["round_trip_ms"]["p99"],
    }
    res["goal"] = {"text": f"p99 send->ack < {GOAL_P99_MS:g} ms", "p99_limit_ms": GOAL_P99_MS,
                   "measured_as": f"send() call -> ack, one volume in flight, one volume per {LATENCY_INTERVAL_S} s "
                                  "(scanner pace), fsync ON, run length announced",
                   "p99_ms": ours["p99"], "met": ours["p99"] < GOAL_P99_MS,
                   "met_transmit_to_ack": res["latency"]["transmit_to_ack_ms"]["p99"] < GOAL_P99_MS,
                   "floor_p99_ms": res["anchor_floor"]["round_trip_ms"]["p99"],
                   "floor_meets_goal": res["anchor_floor"]["round_trip_ms"]["p99"] < GOAL_P99_MS}
    res["wall_s"] = time.perf_counter() - t_start
    res["cpu_during_run"] = _cpu_share(cpu0, _cpu_ticks())
    res["loadavg_at_start"] = [round(x, 2) for x in load0]
    res["json_path"] = write_json("transport-quick" if quick else "transport", res)
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
