"""Benchmark generation mode: does the music composed live sit where the decoded point asked, and what does it cost?

Run from the repository root::

    .venv/bin/python bench/generation.py            # atlas of 100 points, 40 held-out targets
    .venv/bin/python bench/generation.py --quick    # atlas of 30, 10 targets

What the session does in each mode, given a decoded point ``t``: the policy
retrieves the library row nearest ``t`` (the same row in both modes), then

``retrieval`` (the anchor)
    plays that row's stored 15 s clip (looped if kept longer);
``generation`` (ours)
    plays the row's generator piece composed live, on and on
    (:class:`realtime.session.generation.LivePieces`, 4-bar segments at
    48 kHz, exactly what the session plays).

Here ``t`` is the musicnn-MSD embedding of a held-out generator piece (seed
1; the atlas is seed 0, built by the real ``build_library`` as ``b2m
library build --generate N`` does), so the ideal music is known. What is
heard is embedded by the same musicnn model, and scored against the targets
as Brain2Music scored its decoded embeddings
(:func:`offline_training.evaluate.identification_per_clip`): the
identification accuracy of each heard clip among the targets (the fraction
of the other targets it correlates with less than with its own; chance
0.5), the same with only the targets of its genre as foils, and its cosine
to its target. Rows: the stored clip; the live piece's 0-15 s, 15-30 s and 30-45 s
(the latter two are music no library holds); a random atlas point's live
piece (chance); the target's own piece continued at 15-30 s (how far a
piece drifts from its own first 15 s: the ceiling for any continuation).

Cost: per 4-bar segment, the render time at 48 kHz (median, p99, real-time
factor), against the anchor's per-switch work, reading a stored clip and
resampling it to 48 kHz (:class:`realtime.session.clips.ClipCache`'s load).
Writes ``bench/results/generation.json`` with the machine's details.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from offline_training.evaluate import unit_rows  # noqa: E402 (after the repository is on the path)
SR_OUT = 48000


def live_windows(point, seconds: list[tuple[float, float]], bars: int, timing: list) -> list[np.ndarray]:
    """The piece as the session plays it (4-bar segments at 48 kHz), cut into the given windows."""
    from music.generator import GeneratorStream

    genre, track, seed, shared = point
    s = GeneratorStream(genre, track, seed, sr=SR_OUT, shared_instruments=shared)
    p = s.params
    end = max(b for _, b in seconds)
    chunks, bar = [], 0
    while s.position < end * SR_OUT:
        t0 = time.perf_counter()
        n = int(round((bar + bars) * p.bar_s * SR_OUT)) - s.position
        chunks.append(s.next(n_samples=n))
        timing.append(((time.perf_counter() - t0) * 1e3, n / SR_OUT))
        bar += bars
    y = np.concatenate(chunks)
    return [y[int(a * SR_OUT):int(b * SR_OUT)] for a, b in seconds]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--atlas-per-genre", type=int, default=10)
    ap.add_argument("--targets-per-genre", type=int, default=4)
    ap.add_argument("--segment-bars", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="3 atlas points and 1 target per genre")
    ap.add_argument("--name", default="generation")
    args = ap.parse_args(argv)
    if args.quick:
        args.atlas_per_genre, args.targets_per_genre = 3, 1
    from rich.progress import Progress

    from music.embedding import get_embedder
    from music.generator import GENRES, generate_clip
    from music.library import Library, build_library, generated_units, generator_point
    from offline_training.evaluate import identification_per_clip
    from realtime.audio import prepare_source, read_segment

    emb = get_embedder("musicnn-msd")
    rng = np.random.default_rng(0)
    work = tempfile.mkdtemp(prefix="b2m-bench-gen-")
    n_atlas = args.atlas_per_genre * len(GENRES)
    print(f"atlas: {n_atlas} generator points (seed 0); targets: {args.targets_per_genre * len(GENRES)} "
          f"held-out pieces (seed 1)", file=sys.stderr)
    with Progress(transient=True) as bar:
        task = bar.add_task("atlas", total=n_atlas)
        build_library(os.path.join(work, "atlas"), generated_units(n_atlas, seed=0), emb,
                      progress=lambda d, t, label: bar.update(task, completed=d))
    lib = Library(os.path.join(work, "atlas"))
    atlas = np.asarray(lib.embeddings, np.float32)
    points = [generator_point(c) for c in lib.clips]

    # held-out targets: seed-1 pieces, embedded as the library embeds a clip (15 s with fades, mean of windows)
    targets, target_pts = [], []
    n_t = args.targets_per_genre * len(GENRES)
    windows = [(0.0, 15.0), (15.0, 30.0), (30.0, 45.0)]
    heard = {"stored clip (retrieval)": [], "live 0-15 s": [], "live 15-30 s": [], "live 30-45 s": [],
             "random point, live 15-30 s": [], "target's own piece, live 15-30 s": []}
    timing: list = []
    genre_ok = []
    with Progress(transient=True) as bar:
        task = bar.add_task("targets", total=n_t)
        for i in range(n_t):
            genre, track = GENRES[i % len(GENRES)], i // len(GENRES)
            x, _ = generate_clip(genre, track, seed=1, duration_s=15.0)
            t = unit_rows(emb.embed(x, 22050).clip)
            targets.append(t)
            target_pts.append((genre, track, 1, False))
            k = int(np.argmax(atlas @ t))            # what the policy retrieves, in either mode
            genre_ok.append(points[k][0] == genre)
            heard["stored clip (retrieval)"].append(atlas[k])
            for name, y in zip(("live 0-15 s", "live 15-30 s", "live 30-45 s"),
                               live_windows(points[k], windows, args.segment_bars, timing)):
                heard[name].append(unit_rows(emb.embed(y, SR_OUT).clip))
            r = int(rng.integers(len(points)))
            y = live_windows(points[r], [(15.0, 30.0)], args.segment_bars, [])[0]
            heard["random point, live 15-30 s"].append(unit_rows(emb.embed(y, SR_OUT).clip))
            y = live_windows(target_pts[-1], [(15.0, 30.0)], args.segment_bars, [])[0]
            heard["target's own piece, live 15-30 s"].append(unit_rows(emb.embed(y, SR_OUT).clip))
            bar.update(task, completed=i + 1)
    T = np.stack(targets)
    genres = [g for g, *_ in target_pts]
    rows = {}
    for name, hs in heard.items():
        H = np.stack(hs)
        ident = identification_per_clip(H, T)
        within = identification_per_clip(H, T, genres=genres, foils="same_genre")
        cos = np.sum(H * T, axis=1)
        rows[name] = {"identification": float(ident.mean()),
                      "identification_se": float(ident.std(ddof=1) / np.sqrt(len(ident))),
                      "within_genre_identification": float(within.mean()),
                      "within_genre_identification_se": float(within.std(ddof=1) / np.sqrt(len(within))),
                      "cosine_median": float(np.median(cos)), "cosine_mean": float(cos.mean())}

    # cost: a segment's render vs the anchor's switch-time clip load (read + resample to 48 kHz)
    seg_ms = np.array([ms for ms, _ in timing])
    seg_s = np.array([s for _, s in timing])
    load_ms = []
    for c in lib.clips:
        t0 = time.perf_counter()
        y, sr = read_segment(lib.audio_path(c), c.start_s, c.duration_s)
        prepare_source(y, sr, SR_OUT, 2)
        load_ms.append((time.perf_counter() - t0) * 1e3)
    load_ms = np.array(load_ms)
    out = {"machine": machine_info(),
           "source": source_digest(["realtime/session/generation.py", "music/generator/stream.py",
                                    "music/render.py", "bench/generation.py"]),
           "atlas_points": n_atlas, "targets": n_t, "segment_bars": args.segment_bars,
           "genre_agreement_top1": float(np.mean(genre_ok)), "heard": rows,
           "segment_render_ms": summarize(seg_ms.tolist()),
           "segment_audio_s_median": float(np.median(seg_s)),
           "realtime_factor_median": float(np.median(seg_s * 1e3 / seg_ms)),
           "anchor_clip_load_ms": summarize(load_ms.tolist()),
           "ratio_segment_render_to_clip_load_median": float(np.median(seg_ms) / np.median(load_ms))}
    path = write_json(args.name, out)
    print(f"retrieved point's genre = target's genre: {out['genre_agreement_top1']:.3f} "
          f"({n_t} targets, {n_atlas} atlas points)")
    print(f"{'what is heard':36s} {'identification':>16s} {'within genre':>16s} {'cosine (median)':>16s}")
    for name, r in rows.items():
        print(f"{name:36s} {r['identification']:.3f} ± {r['identification_se']:.3f}   "
              f"{r['within_genre_identification']:.3f} ± {r['within_genre_identification_se']:.3f}   "
              f"{r['cosine_median']:>10.3f}")
    s, a = out["segment_render_ms"], out["anchor_clip_load_ms"]
    print(f"render of one {args.segment_bars}-bar segment ({out['segment_audio_s_median']:.1f} s at 48 kHz): "
          f"median {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms ({out['realtime_factor_median']:.0f}x real time); "
          f"anchor, a stored clip read and resampled: median {a['p50']:.1f} ms, p99 {a['p99']:.1f} ms; "
          f"ratio {out['ratio_segment_render_to_clip_load_median']:.2f}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
