"""Real musicnn embeddings for the search benchmark, in a resumable cache.

``bench/music.py`` measures recall@10 of FAISS HNSW against exact search on
*real* musicnn MSD penultimate (200-d) window embeddings, because HNSW recall
on random vectors is misleadingly low. Real audio here is what ships or is
generated offline:

- procedural clips from :mod:`music.generator` (30 s, all 10 genres, many
  tracks, a third of them with ``shared_instruments``), and
- music21 corpus works rendered with :func:`music.render.render_midi`
  (first 120 s of each).

Each piece is embedded with overlapping windows (``MusicnnEmbedder(hop_s=...)``),
so a second of audio gives about one embedding. Two disjoint sets:

``index``
    Units ``u = 0, 1, 2, ...``: every 4th is a music21 work, the rest are
    generated clips with seed 0.
``queries``
    Held out: generated clips with seed 7 and tracks >= 100000 (pieces never
    in the index set), and music21 works reserved for queries (never indexed);
    non-overlapping windows (hop = the 2.992 s window).

Cache layout (``bench/results/cache/musicnn/``, git-ignored): per set and
worker, ``<set>-w<k>.f32`` (raw float32 rows, 200 per row, appended) and
``<set>-w<k>.jsonl`` (one line per finished unit: its id and row count). Rows
are written and flushed before their unit's line, and a restart truncates the
``.f32`` file to the rows its ``.jsonl`` accounts for, so an interrupted run
keeps all finished units and redoes at most one.

Run in the background (two workers on a 2-core machine)::

    .venv/bin/python bench/_music_data.py --set index --n 100000 --worker 0 --workers 2 &
    .venv/bin/python bench/_music_data.py --set index --n 100000 --worker 1 --workers 2 &
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
if REPO_DIR not in sys.path:
    sys.path.insert(0, REPO_DIR)

CACHE_DIR = os.path.join(BENCH_DIR, "results", "cache", "musicnn")
DIM = 200
SR = 16000
GEN_DURATION_S = 30.0
M21_MAX_S = 120.0
INDEX_HOP_S = 1.0
N_QUERY_M21 = 60  # music21 works reserved for queries
GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def _m21_paths() -> list[str]:
    """music21 corpus works in a fixed pseudo-random order (deterministic across runs)."""
    from music21 import corpus

    exts = (".mxl", ".xml", ".musicxml", ".krn", ".abc", ".mid", ".midi", ".md", ".rntxt")
    paths = sorted(str(p) for p in corpus.getPaths() if str(p).lower().endswith(exts))
    rng = np.random.default_rng(20240601)
    return [paths[i] for i in rng.permutation(len(paths))]


def unit_spec(set_name: str, u: int, m21: list[str]) -> dict:
    """What unit ``u`` of a set is (pure function of ``u``)."""
    held = m21[:N_QUERY_M21]
    rest = m21[N_QUERY_M21:]
    if set_name == "index":
        if u % 4 == 3 and u // 4 < len(rest):
            p = rest[u // 4]
            return {"id": "m21:" + p.split("corpus" + os.sep, 1)[-1], "kind": "music21", "path": p}
        g = u - u // 4 if u // 4 < len(rest) else 10**6 + u
        genre, track = GENRES[g % 10], g // 10
        shared = track % 3 == 2
        return {"id": f"gen:{genre}.{track:05d}:s0:{'shared' if shared else 'own'}", "kind": "gen",
                "genre": genre, "track": track, "seed": 0, "shared": shared}
    if set_name == "queries":
        if u % 5 == 4 and u // 5 < len(held):
            p = held[u // 5]
            return {"id": "m21q:" + p.split("corpus" + os.sep, 1)[-1], "kind": "music21", "path": p}
        genre, track = GENRES[u % 10], 100000 + u // 10
        return {"id": f"genq:{genre}.{track}:s7", "kind": "gen", "genre": genre, "track": track, "seed": 7,
                "shared": (u // 10) % 3 == 2}
    raise ValueError(f"set must be 'index' or 'queries', got {set_name!r}")


def unit_audio(spec: dict) -> np.ndarray:
    """Mono float32 audio at 16 kHz for a unit."""
    if spec["kind"] == "gen":
        from music.generator import generate_clip

        x, _ = generate_clip(spec["genre"], spec["track"], seed=spec["seed"], duration_s=GEN_DURATION_S, sr=SR,
                             shared_instruments=spec["shared"])
        return x
    import io

    import pretty_midi
    from music21 import converter

    from music.render import render_midi

    score = converter.parse(spec["path"])
    midi = score.write("midi")
    try:
        with open(midi, "rb") as f:
            data = f.read()
    finally:
        os.remove(midi)
    pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    dur = min(pm.get_end_time() + 0.5, M21_MAX_S)
    x = render_midi(pm, sr=SR, duration_s=dur)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x / peak * 0.5 if peak > 0 else x


def _paths(set_name: str, worker: int) -> tuple[str, str]:
    stem = os.path.join(CACHE_DIR, f"{set_name}-w{worker}")
    return stem + ".f32", stem + ".jsonl"


def _read_jsonl(path: str) -> list[dict]:
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # torn last line
    return out


def load(set_name: str, limit: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Cached raw embeddings of a set, over all workers, in unit order.

    Returns
    -------
    X : ndarray of shape (n, 200), float32, rows L2-normalised
    units : list of dict
        The finished units (``id``, ``rows``, ``kind``, ``u``), in the order of ``X``.
    """
    parts = []
    for jl in sorted(glob.glob(os.path.join(CACHE_DIR, f"{set_name}-w*.jsonl"))):
        f32 = jl[: -len(".jsonl")] + ".f32"
        recs = _read_jsonl(jl)
        n = sum(r["rows"] for r in recs)
        if n == 0 or not os.path.exists(f32):
            continue
        arr = np.fromfile(f32, dtype=np.float32, count=n * DIM).reshape(-1, DIM)
        off = 0
        for r in recs:
            parts.append((r["u"], r, arr[off: off + r["rows"]]))
            off += r["rows"]
    parts.sort(key=lambda t: t[0])
    units, rows = [], []
    for _, r, a in parts:
        if a.shape[0]:
            units.append(r)
            rows.append(a)
    X = np.concatenate(rows) if rows else np.zeros((0, DIM), np.float32)
    if limit is not None:
        X = X[:limit]
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(n > 0, n, 1)).astype(np.float32), units


def count(set_name: str) -> int:
    return sum(r["rows"] for jl in glob.glob(os.path.join(CACHE_DIR, f"{set_name}-w*.jsonl"))
               for r in _read_jsonl(jl))


def accumulate(set_name: str, n_target: int, worker: int = 0, workers: int = 1, threads: int = 1,
               hop_s: float | None = None, deadline: float | None = None, log=print) -> int:
    """Embed units of ``set_name`` owned by this worker until the set has ``n_target`` rows.

    Stops at ``deadline`` (``time.monotonic()`` value) if given. Returns the set's row count.
    """
    from music.embedding.musicnn import MusicnnEmbedder

    import fcntl

    os.makedirs(CACHE_DIR, exist_ok=True)
    f32, jl = _paths(set_name, worker)
    lock = open(jl[: -len(".jsonl")] + ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process is filling this worker's shard: leave it to it
        lock.close()
        if log:
            log(f"[{set_name} w{worker}] busy in another process; using what is cached")
        return count(set_name)
    recs = _read_jsonl(jl)
    with open(jl, "w") as f:  # drop a torn last line, if any
        f.writelines(json.dumps(r) + "\n" for r in recs)
    n_rows = sum(r["rows"] for r in recs)
    with open(f32, "ab") as f:
        f.truncate(n_rows * DIM * 4)
    done = {r["u"] for r in recs}
    if hop_s is None:
        hop_s = INDEX_HOP_S if set_name == "index" else None
    emb = MusicnnEmbedder(model="msd", hop_s=hop_s, threads=threads)
    m21 = _m21_paths()
    fr, fj = open(f32, "ab"), open(jl, "a")
    u = worker
    t0 = time.monotonic()
    made = 0
    try:
        while count(set_name) < n_target:
            if deadline is not None and time.monotonic() > deadline:
                break
            if u in done:
                u += workers
                continue
            spec = unit_spec(set_name, u, m21)
            t = time.monotonic()
            try:
                x = unit_audio(spec)
                p, _ = emb.patches(x, SR)
                w = emb.run(p)["penultimate"].astype(np.float32)
                err = None
            except Exception as e:  # a work music21 cannot parse: record and move on
                w, err = np.zeros((0, DIM), np.float32), f"{type(e).__name__}: {e}"[:200]
            fr.write(np.ascontiguousarray(w).tobytes())
            fr.flush()
            os.fsync(fr.fileno())
            rec = {"u": u, "id": spec["id"], "kind": spec["kind"], "rows": int(len(w)),
                   "audio_s": round(len(x) / SR, 3) if err is None else 0.0,
                   "wall_s": round(time.monotonic() - t, 3), "hop_s": emb.hop_s}
            if err:
                rec["error"] = err
            fj.write(json.dumps(rec) + "\n")
            fj.flush()
            made += len(w)
            if log:
                el = time.monotonic() - t0
                log(f"[{set_name} w{worker}] u={u} {spec['id']} rows={len(w)} {rec['wall_s']:.1f}s "
                    f"({made / max(el, 1e-9):.1f} rows/s this run){' ERR ' + err if err else ''}")
            u += workers
    finally:
        fr.close()
        fj.close()
        lock.close()
    return count(set_name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=("index", "queries"), default="index")
    ap.add_argument("--n", type=int, default=100000, help="target rows for the whole set (all workers)")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    a = ap.parse_args(argv)
    deadline = None if a.seconds is None else time.monotonic() + a.seconds
    n = accumulate(a.set, a.n, a.worker, a.workers, a.threads, deadline=deadline,
                   log=lambda s: print(s, flush=True))
    print(f"{a.set}: {n} rows cached in {CACHE_DIR}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
