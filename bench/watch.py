"""Benchmark the export-folder watcher: from the scanner closing a volume's file to the volume being sent.

Run from the repository root::

    .venv/bin/python bench/watch.py            # 40 volumes per condition, one every 0.25 s
    .venv/bin/python bench/watch.py --quick    # 10 volumes per condition

A writer plays the scanner: it writes each volume's file into the watched
folder (open, write, close) on a fixed schedule and notes the time of the
close. :func:`realtime.scanner.watch.watch_folder` runs in a thread and sends
to a real :class:`realtime.receiver.Receiver` (fsync before ack) over
loopback; the time each volume is handed to the sender is taken from its
progress callback. Conditions:

``inotify`` (ours)
    the watcher wakes on the close (Linux inotify on a local folder);
``scan`` (the anchor)
    folder scans every ``--poll`` seconds and a file read once unchanged
    between two scans, as polling watchers do (Pyneal's scanner side polls;
    the project's design notes quote 100-200 ms for its polling). This is also what the
    watcher does on a network share.

Files: real Siemens mosaic DICOMs (Pyneal's test data, 64x64x18; the three
volumes cycled, ``AcquisitionNumber`` rewritten per volume with pydicom),
real Philips XTC PAR/REC pairs (80x80x15, magnitude and phase; the four
cycled, ``Acquisition nr`` rewritten per volume; the PAR is written first,
and the REC's close is the one timed) and full-grid NIfTI volumes
(96x96x68 int16, ds003720's size). Prints medians and
p99 of close -> sent and of send -> ack, and the ratio scan / inotify; writes
``bench/results/watch.json`` with the machine's details.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import threading
import time

import numpy as np
from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SIEMENS = sorted(glob.glob(os.path.join(REPO, "tests", "data", "pyneal", "siemens", "*.dcm")))
PHILIPS = sorted(glob.glob(os.path.join(REPO, "tests", "data", "pyneal", "philips", "*.par")))


def _siemens_files(n: int, out: str) -> list[tuple[str]]:
    """``n`` mosaic DICOMs: the real three cycled, each with its own AcquisitionNumber."""
    import pydicom

    paths = []
    for k in range(n):
        ds = pydicom.dcmread(SIEMENS[k % len(SIEMENS)])
        ds.AcquisitionNumber = k + 1
        ds.InstanceNumber = k + 1
        p = os.path.join(out, f"001_000013_{k + 1:06d}.dcm")
        ds.save_as(p)
        paths.append((p,))
    return paths


def _philips_files(n: int, out: str) -> list[tuple[str, str]]:
    """``n`` PAR/REC pairs: the real four cycled, each PAR with its own Acquisition nr."""
    import re

    pairs = []
    for k in range(n):
        src = PHILIPS[k % len(PHILIPS)]
        with open(src, encoding="latin-1") as f:
            par = re.sub(r"(Acquisition nr\s*:\s*)\d+", rf"\g<1>{k + 1}", f.read(), count=1)
        stem = os.path.join(out, f"Dump-{k:04d}")
        with open(stem + ".par", "w", encoding="latin-1") as f:
            f.write(par)
        with open(src[:-4] + ".rec", "rb") as f, open(stem + ".rec", "wb") as g:
            g.write(f.read())
        pairs.append((stem + ".par", stem + ".rec"))
    return pairs


def _nifti_files(n: int, out: str, rng) -> list[tuple[str]]:
    import nibabel as nib

    paths = []
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for k in range(n):
        img = nib.Nifti1Image(rng.integers(0, 1200, size=(96, 96, 68), dtype=np.int16), affine)
        img.header.set_xyzt_units("mm", "sec")
        p = os.path.join(out, f"vol_{k + 1:05d}.nii")
        nib.save(img, p)
        paths.append((p,))
    return paths


def _one(vendor: str, files: list[tuple[str, ...]], events: bool, interval: float, poll: float, tmp: str) -> dict:
    from realtime.receiver import Receiver
    from realtime.scanner.watch import watch_folder

    folder = tempfile.mkdtemp(prefix="export-", dir=tmp)
    out = tempfile.mkdtemp(prefix="session-", dir=tmp)
    sock = os.path.join(tmp, f"rx-{os.path.basename(folder)}")
    endpoint = f"ipc://{sock}"
    stop_rx = threading.Event()
    rx = Receiver(out, endpoint)
    rx_thread = threading.Thread(target=rx.serve, args=(stop_rx,), daemon=True)
    rx_thread.start()
    sent_at: dict[int, float] = {}
    ready = threading.Event()
    result = {}

    def progress(n, total, last, lag_s, unacked, bad):
        if last >= 0 and last not in sent_at:
            sent_at[last] = time.time()

    stop_watch = threading.Event()

    def run():
        result["res"] = watch_folder(folder, vendor, endpoint, n_volumes=len(files), tr_s=1.0, poll_s=poll,
                                     events=events, progress=progress, ready=ready.set, idle_timeout_s=30.0,
                                     stop=stop_watch.is_set)

    t = threading.Thread(target=run)
    t.start()
    ready.wait(10)
    closed_at = []
    t0 = time.monotonic()
    for k, srcs in enumerate(files):
        due = t0 + k * interval
        while time.monotonic() < due:
            time.sleep(min(0.005, due - time.monotonic()))
        for src in srcs:  # a volume's files in the scanner's order; the last close completes it
            with open(src, "rb") as f:
                blob = f.read()
            with open(os.path.join(folder, os.path.basename(src)), "wb") as f:
                f.write(blob)
        closed_at.append(time.time())
    t.join(60)
    if t.is_alive():  # stop it before its folder is removed, and say which condition hung
        stop_watch.set()
        t.join(10)
        raise RuntimeError(f"{vendor}, {'inotify' if events else 'scan'}: the watch had not ended 60 s after the "
                           f"last volume ({len(sent_at)} of {len(files)} sent)")
    stop_rx.set()
    rx_thread.join(10)
    rx.close()
    res = result["res"]
    lag = [1e3 * (sent_at[k] - closed_at[k]) for k in range(len(files)) if k in sent_at]
    return {"close_to_sent_ms": summarize(lag), "send_to_ack_ms": summarize(1e3 * res.latency_s),
            "sent": res.n_sent, "all_acked": res.all_acked, "bad_files": res.bad_files}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", type=int, default=None, help="volumes per condition (default 40, 10 with --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between the writer's volumes")
    ap.add_argument("--poll", type=float, default=0.05, help="the watcher's folder scan interval, seconds")
    ap.add_argument("--name", default=None, help="result file stem (default watch, watch-quick)")
    args = ap.parse_args()
    n = args.volumes or (10 if args.quick else 40)
    rng = np.random.default_rng(0)
    out = {}
    with tempfile.TemporaryDirectory(prefix="b2m-bench-watch-") as tmp:
        staged = {"siemens": _siemens_files(n, tempfile.mkdtemp(dir=tmp)),
                  "philips": _philips_files(n, tempfile.mkdtemp(dir=tmp)),
                  "nifti": _nifti_files(n, tempfile.mkdtemp(dir=tmp), rng)}
        for vendor, files in staged.items():
            for mode in ("inotify", "scan"):
                print(f"{vendor} / {mode}: {n} volumes ...", file=sys.stderr, flush=True)
                out[f"{vendor}/{mode}"] = _one(vendor, files, mode == "inotify", args.interval, args.poll, tmp)
    ratios = {}
    for vendor in staged:
        a, b = out[f"{vendor}/scan"]["close_to_sent_ms"], out[f"{vendor}/inotify"]["close_to_sent_ms"]
        ratios[vendor] = {q: a[q] / b[q] for q in ("p50", "p99")}
    payload = {"machine": machine_info(),
               "source": source_digest(["realtime/scanner/watch.py", "realtime/scanner/inotify.py",
                                        "realtime/scanner/vendors.py", "realtime/sender.py"]),
               "what": "file closed in the export folder -> volume handed to the sender (ms); send -> ack (ms)",
               "volumes": n, "interval_s": args.interval, "poll_s": args.poll, "conditions": out,
               "ratio_scan_over_inotify": ratios}
    path = write_json(args.name or ("watch-quick" if args.quick else "watch"), payload)
    for key, r in out.items():
        c, a = r["close_to_sent_ms"], r["send_to_ack_ms"]
        print(f"{key:16s} close -> sent: median {c['p50']:.1f} ms, p99 {c['p99']:.1f} ms; send -> ack: median "
              f"{a['p50']:.1f} ms, p99 {a['p99']:.1f} ms ({r['sent']} sent, all acked {r['all_acked']})")
    for vendor, q in ratios.items():
        print(f"{vendor}: scan / inotify {q['p50']:.1f}x at the median, {q['p99']:.1f}x at p99")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
