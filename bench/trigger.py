"""Benchmark reading the scanner's trigger: from a pulse written to the serial line to its stamp in the session.

Run from the repository root::

    .venv/bin/python bench/trigger.py            # 600 pulses per condition, one every 0.05 s
    .venv/bin/python bench/trigger.py --quick    # 100 pulses per condition

A writer plays the trigger box: it writes ``5`` to one end of a serial line
on a fixed schedule and notes the time just before each ``os.write``. The
line is either a pseudo-terminal pair joined by ``socat`` (as the tests use,
a null modem with a relay in between) or a direct pty pair (``os.openpty``,
the kernel's line discipline only). Conditions, each on both lines:

``ours``
    :class:`realtime.triggers.TriggerLog` in a thread of this process,
    stamping and appending each pulse to ``triggers.tsv``;
``bare`` (the anchor)
    a blocking ``os.read(fd, 1)`` loop in a thread, stamping each byte: the
    least a reader in Python can do.

In both, another thread runs a 2,000 x 2,000 float64 matrix product in a
loop (the decoder's and preprocessing's kind of work, holding the cores and,
between products, the GIL), as the session's own work does around the
trigger thread.

Prints medians and p99 of written -> stamped, and ours / bare; writes
``bench/results/trigger.json`` with the machine's details.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _socat_line(tmp: str):
    """(box path, port path, process) of a socat pty pair."""
    box, port = os.path.join(tmp, "box"), os.path.join(tmp, "port")
    p = subprocess.Popen([shutil.which("socat"), f"pty,raw,echo=0,link={box}", f"pty,raw,echo=0,link={port}"],
                         stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(box) and os.path.exists(port):
            return box, port, p
        time.sleep(0.02)
    p.kill()
    raise RuntimeError("socat made no pty pair (is Debian's socat installed? ./setup.sh)")


def _write_pulses(fd: int, n: int, interval: float) -> np.ndarray:
    t0, written = time.monotonic(), []
    for k in range(n):
        wait = t0 + k * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        written.append(time.time())  # just before the write: the byte cannot be read earlier
        os.write(fd, b"5")
    return np.array(written)


def _busy(stop: threading.Event) -> None:
    a = np.random.default_rng(0).standard_normal((2000, 2000))
    while not stop.is_set():
        a @ a


class _load:
    """A thread running :func:`_busy` for the duration of a ``with``."""

    def __enter__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=_busy, args=(self.stop,), daemon=True)
        self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _ours(box_fd: int, port: str, n: int, interval: float, tmp: str) -> np.ndarray:
    from realtime.triggers import TriggerInput, TriggerLog

    log = TriggerLog(TriggerInput(port), tmp).start()
    try:
        with _load():
            written = _write_pulses(box_fd, n, interval)
            end = time.monotonic() + 5.0
            while len(log.times) < n and time.monotonic() < end:
                time.sleep(0.01)
    finally:
        log.stop()
    read = np.array(log.times)
    return 1e3 * (read[:n] - written[:read.size])


def _bare(box_fd: int, port: str, n: int, interval: float) -> np.ndarray:
    import tty

    fd = os.open(port, os.O_RDONLY | os.O_NOCTTY)
    tty.setraw(fd)
    stamps = []

    def reader():
        while len(stamps) < n:
            if os.read(fd, 1):
                stamps.append(time.time())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    with _load():
        written = _write_pulses(box_fd, n, interval)
        t.join(timeout=5.0)
    os.close(fd)
    read = np.array(stamps)
    return 1e3 * (read[:n] - written[:read.size])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 pulses per condition")
    ap.add_argument("--pulses", type=int, default=None, help="pulses per condition (default 600; 100 with --quick)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between pulses (default 0.05)")
    ap.add_argument("--name", default=None, help="result file stem (default trigger, trigger-quick)")
    args = ap.parse_args()
    n = args.pulses or (100 if args.quick else 600)
    out = {}
    with tempfile.TemporaryDirectory(prefix="b2m-bench-trigger-") as tmp:
        for line in ("socat", "pty"):
            for cond in ("ours", "bare"):
                print(f"{line} / {cond}: {n} pulses ...", file=sys.stderr, flush=True)
                if line == "socat":
                    box, port, proc = _socat_line(tmp)
                    box_fd = os.open(box, os.O_WRONLY | os.O_NOCTTY)
                else:
                    import tty

                    box_fd, slave = os.openpty()
                    tty.setraw(slave)
                    port, proc = os.ttyname(slave), None
                try:
                    lat = (_ours(box_fd, port, n, args.interval, tmp) if cond == "ours"
                           else _bare(box_fd, port, n, args.interval))
                finally:
                    os.close(box_fd)
                    if proc is not None:
                        os.kill(proc.pid, signal.SIGTERM)
                        proc.wait(timeout=10)
                    else:
                        os.close(slave)
                    if os.path.exists(os.path.join(tmp, "triggers.tsv")):
                        os.remove(os.path.join(tmp, "triggers.tsv"))
                out[f"{line}/{cond}"] = {"written_to_stamped_ms": summarize(lat), "stamped": int(lat.size)}
    ratios = {line: {q: out[f"{line}/ours"]["written_to_stamped_ms"][q] / out[f"{line}/bare"]["written_to_stamped_ms"][q]
                     for q in ("p50", "p99")} for line in ("socat", "pty")}
    payload = {"machine": machine_info(), "source": source_digest(["realtime/triggers.py"]),
               "what": "a trigger pulse written to the serial line -> stamped by the reader (ms)",
               "pulses": n, "interval_s": args.interval, "conditions": out, "ratio_ours_over_bare": ratios}
    path = write_json(args.name or ("trigger-quick" if args.quick else "trigger"), payload)
    for key, r in out.items():
        s = r["written_to_stamped_ms"]
        print(f"{key:12s} written -> stamped: median {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms, max "
              f"{s['max']:.3f} ms ({r['stamped']} of {n} stamped)")
    for line, q in ratios.items():
        print(f"{line}: ours / bare {q['p50']:.2f}x at the median, {q['p99']:.2f}x at p99")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
