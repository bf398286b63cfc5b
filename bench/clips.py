"""Benchmark a live switch's clip read: beats stored in the library vs beat-tracked on the spot.

Run from the repository root::

    .venv/bin/python bench/clips.py demo/library       # a built library (b2m demo writes one)
    .venv/bin/python bench/clips.py                    # builds 12 procedural clips first (musicnn, ~30 s)

Every clip of the library (at most ``--clips``) is read by
:class:`realtime.session.clips.ClipCache` exactly as a switch reads a clip
that was not prefetched (``ClipCache.preload``: read the segment, get its
beats, resample to 48 kHz stereo), in two caches side by side:

``stored``
    the library as built, with ``beats.npz``;
``tracked`` (the anchor)
    a copy of it without ``beats.npz``, as libraries were before it existed,
    so every read beat-tracks the clip (:func:`music.beats.clip_beats`).

Reads alternate between the two, clip by clip, after one warm-up read each.
Prints medians and p99 in ms and the ratio tracked / stored; writes
``bench/results/clips.json`` with the machine's details.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _without_beats(lib: str, out: str) -> str:
    """A copy of ``lib`` as a library built before ``beats.npz``: the file and its manifest entry gone."""
    shutil.copytree(lib, out, ignore=shutil.ignore_patterns(".build", "beats.npz"))
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    m["files"].pop("beats.npz", None)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(m, f)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("library", nargs="?", help="a built library (default: build 12 procedural clips)")
    ap.add_argument("--clips", type=int, default=60, help="clips to read in each cache")
    ap.add_argument("--name", default="clips", help="result file stem (bench/results/NAME.json)")
    args = ap.parse_args()

    from music.library import Library
    from realtime.session.clips import ClipCache

    with tempfile.TemporaryDirectory(prefix="b2m-bench-clips-") as tmp:
        lib_dir = args.library
        if lib_dir is None:
            from music.embedding import get_embedder
            from music.library import build_library, generated_units

            lib_dir = os.path.join(tmp, "lib")
            print("building 12 procedural clips ...", file=sys.stderr)
            build_library(lib_dir, generated_units(12), get_embedder("musicnn-msd", threads=2))
        stored_lib = Library(lib_dir)
        if stored_lib.beats(0) is None:
            print(f"{lib_dir} has no beats.npz: rebuild it (b2m library build ... --out {lib_dir})", file=sys.stderr)
            return 2
        tracked_lib = Library(_without_beats(lib_dir, os.path.join(tmp, "tracked")))
        caches = {"stored": ClipCache(stored_lib, 48000, 2, capacity=1),
                  "tracked": ClipCache(tracked_lib, 48000, 2, capacity=1)}
        n = min(args.clips, len(stored_lib))
        times = {k: [] for k in caches}
        try:
            for c in caches.values():
                c.preload(0)  # imports and first-call set-up
            for i in range(n):
                for k, c in caches.items():
                    t0 = time.perf_counter()
                    c.preload(i)
                    times[k].append((time.perf_counter() - t0) * 1e3)
            estimated = {k: c.stats["beats_estimated"] for k, c in caches.items()}
        finally:
            for c in caches.values():
                c.close()
    res = {k: summarize(v) for k, v in times.items()}
    ratio = {q: res["tracked"][q] / res["stored"][q] for q in ("p50", "p99")}
    payload = {"machine": machine_info(), "source": source_digest(["realtime/session/clips.py", "music/beats.py",
                                                                    "music/library/build.py"]),
               "what": "ClipCache.preload of one library clip (read, beats, resample to 48 kHz stereo), ms",
               "library": os.path.abspath(lib_dir) if args.library else "12 generated clips (temporary)",
               "n_clips": n, "beats_estimated": estimated, "read_ms": res, "ratio_tracked_over_stored": ratio}
    path = write_json(args.name, payload)
    for k in ("stored", "tracked"):
        s = res[k]
        print(f"{k:8s} clip read: median {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms over {s['n']} clips "
              f"(beat-tracked on the spot: {estimated[k]})")
    print(f"tracked / stored: {ratio['p50']:.2f}x at the median, {ratio['p99']:.2f}x at p99")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
