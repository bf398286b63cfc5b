"""``b2m receive``: a record-only receiver (the decoder comes behind it later)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from realtime.receiver import Receiver
from realtime.transport import DEFAULT_ENDPOINT, describe_curve

from ..console import record_log_handler
from ._curve import add_server_args, server_keys

log = logging.getLogger("b2m.receiver")


def add_parser(sub) -> None:
    p = sub.add_parser("receive", help="receive volumes, record them durably, ack, export runs to NIfTI",
                       description="Bind the scanner link, validate every message, record it "
                                   "(fsync'd before the ack) and write each complete run as NIfTI.")
    p.add_argument("--bind", default=DEFAULT_ENDPOINT, help=f"endpoint to bind (default {DEFAULT_ENDPOINT})")
    p.add_argument("--out", required=True, help="session record folder (an existing one is continued)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without CURVE keys (private scanner network only)")
    add_server_args(p)
    p.add_argument("--no-fsync", action="store_true", help="skip fdatasync before acks (tests only: unsafe)")
    p.set_defaults(func=run)


def run(args) -> int:
    curve = server_keys(args)
    os.makedirs(args.out, exist_ok=True)
    logging.getLogger("b2m").addHandler(record_log_handler(os.path.join(args.out, "receiver.log")))
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def on_complete(run_id, nifti):
        print(f"{run_id}\t{nifti}", file=sys.stdout, flush=True)

    def on_gaps(run_id, missing):
        print(f"{run_id}\tincomplete\tmissing={missing}", file=sys.stdout, flush=True)

    with Receiver(args.out, args.bind, insecure=args.insecure, curve=curve, sync=not args.no_fsync,
                  on_run_complete=on_complete, on_run_gaps=on_gaps) as rx:
        log.info("receiving on %s (%s), recording to %s", rx.endpoint, describe_curve(curve), args.out)
        print(f"ready\t{rx.endpoint}", file=sys.stderr, flush=True)
        rx.serve(stop)
        rx.wait_exports()
        s = rx.stats
        log.info("stopped: %d recorded, %d duplicates, %d rejected", s.recorded, s.duplicates, s.rejected)
    return 0
