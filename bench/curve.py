"""Benchmark what CURVE encryption costs the scanner link: send -> ack latency, encrypted vs plain.

Run from the repository root::

    .venv/bin/python bench/curve.py            # 300 full-grid volumes per link
    .venv/bin/python bench/curve.py --quick    # 60

Two real :class:`realtime.receiver.Receiver` instances serve in threads on
loopback, each with its own :class:`realtime.sender.ReliableSender`:

``curve``
    CURVE keys from :func:`realtime.transport.generate_keys` and a clients
    folder (only the listed scanner is admitted), as a site across a network;
``plain`` (the anchor)
    the same link without encryption, as on loopback.

Volumes are int16 96 x 96 x 68 (ds003720's grid, 1.25 MB), sent one at a
time and waited for, alternating between the links after a warm-up each.
Both receivers fdatasync before acking, as in a session. Prints medians and
p99 in ms and the ratio curve / plain; writes ``bench/results/curve.json``
with the machine's details.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPE = (96, 96, 68)


def _serve(rx, stop):
    t = threading.Thread(target=rx.serve, args=(stop,), kwargs={"poll_ms": 20}, daemon=True)
    t.start()
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", type=int, default=300, help="volumes per link (default 300)")
    ap.add_argument("--quick", action="store_true", help="60 volumes per link")
    ap.add_argument("--name", default=None, help="result file stem (default curve, or curve-quick)")
    args = ap.parse_args()
    n = 60 if args.quick else args.volumes

    import numpy as np

    from protocols.wire import RunStart, VolumeMessage
    from realtime.receiver import Receiver
    from realtime.sender import ReliableSender
    from realtime.transport import generate_keys, load_curve_client, load_curve_server

    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 2000, SHAPE, dtype=np.int16) for _ in range(4)]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    with tempfile.TemporaryDirectory(prefix="b2m-bench-curve-") as tmp:
        keys = os.path.join(tmp, "keys")
        generate_keys(keys, "receiver")
        scanner_pub, scanner_sec = generate_keys(keys, "scanner")
        clients = os.path.join(tmp, "clients")
        os.makedirs(clients)
        with open(scanner_pub, "rb") as f, open(os.path.join(clients, "scanner.key"), "wb") as g:
            g.write(f.read())
        server = load_curve_server(os.path.join(keys, "receiver.key_secret"), clients)
        client = load_curve_client(scanner_sec, os.path.join(keys, "receiver.key"))
        links = {}
        stop = threading.Event()
        for name, (srv, cli) in {"curve": (server, client), "plain": (None, None)}.items():
            rx = Receiver(os.path.join(tmp, name), "tcp://127.0.0.1:*", export=False, sync=True, curve=srv)
            _serve(rx, stop)
            tx = ReliableSender(rx.endpoint, resend_timeout_s=5.0, curve=cli)
            tx.send(RunStart("run1", 1.5, n_volumes=n + 2, shape=SHAPE, dtype="<i2", affine=affine))
            if not tx.drain(30.0):
                raise SystemExit(f"{name}: the receiver never acked the run start")
            links[name] = (rx, tx)
        times = {k: [] for k in links}
        try:
            for i in range(n + 2):  # the first two volumes of each link are warm-up
                for name, (rx, tx) in links.items():
                    msg = VolumeMessage("run1", i, pool[i % len(pool)], affine, 1.5, n_volumes=n + 2)
                    t0 = time.perf_counter()
                    tx.send(msg)
                    if not tx.drain(30.0):
                        raise SystemExit(f"{name}: volume {i} was never acked")
                    if i >= 2:
                        times[name].append((time.perf_counter() - t0) * 1e3)
        finally:
            stop.set()
            for rx, tx in links.values():
                tx.close()
            time.sleep(0.1)
            for rx, tx in links.values():
                rx.close()
    res = {k: summarize(v) for k, v in times.items()}
    ratio = {q: res["curve"][q] / res["plain"][q] for q in ("p50", "p99")}
    payload = {"machine": machine_info(), "source": source_digest(["realtime/transport.py", "realtime/sender.py",
                                                                    "realtime/receiver.py"]),
               "what": "send -> ack of one int16 96x96x68 volume over loopback, fdatasync before the ack, ms",
               "n_volumes": n, "send_ack_ms": res, "ratio_curve_over_plain": ratio}
    path = write_json(args.name or ("curve-quick" if args.quick else "curve"), payload)
    for k in ("curve", "plain"):
        s = res[k]
        print(f"{k:6s} send->ack: median {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms over {s['n']} volumes")
    print(f"curve / plain: {ratio['p50']:.2f}x at the median, {ratio['p99']:.2f}x at p99")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
