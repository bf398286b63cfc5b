"""``b2m library build|search``: make and query a music library."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..console import stderr_console


def _whole(least: int, meaning: str):
    """An argparse type: a whole number of at least ``least`` (the option's name comes with argparse's error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give {meaning}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is too small: give {meaning} ({least} or more)")
        return value

    parse.__name__ = "whole number"  # what argparse names in its own "invalid ... value" message
    return parse


def _read_vector(path: str, dim: int) -> np.ndarray:
    """``--vector``: a .npy holding one embedding of shape (dim,) (or (1, dim))."""
    expected = f"give a .npy of one embedding vector, shape ({dim},) (np.save of the library embedder's output)"
    try:
        vec = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:  # pickled, not .npy, truncated
        raise ValueError(f"--vector {path}: not a .npy array; {expected}") from None
    if not isinstance(vec, np.ndarray):  # an .npz archive
        vec.close()
        raise ValueError(f"--vector {path}: an .npz archive, not a .npy array; {expected}")
    if vec.dtype.kind not in "fiu":
        raise ValueError(f"--vector {path}: holds {vec.dtype} values, not numbers; {expected}")
    if vec.shape not in ((dim,), (1, dim)):
        raise ValueError(f"--vector {path}: shape {vec.shape}; {expected}")
    vec = vec.reshape(dim).astype(np.float32)
    if not np.all(np.isfinite(vec)) or not np.any(vec):
        raise ValueError(f"--vector {path}: holds NaN, infinity or only zeros; {expected}")
    return vec


def add_parser(sub) -> None:
    p = sub.add_parser("library", help="build or search a music library")
    lsub = p.add_subparsers(dest="library_command", required=True, metavar="SUBCOMMAND")

    b = lsub.add_parser("build", help="embed audio, MIDI, music21 works or generated clips into a library",
                        description="Build (or continue building) a music library folder. SRC may be a folder "
                                    "or file of audio (wav, flac, ogg, mp3, aiff) or MIDI, or a music21 corpus "
                                    "selection: music21:COMPOSER[:N] or music21:PATH (e.g. music21:bach/bwv66.6).")
    b.add_argument("sources", nargs="*", metavar="SRC")
    b.add_argument("--out", required=True, help="library folder (a partial build there is continued)")
    b.add_argument("--generate", type=_whole(0, "how many clips to generate"), default=0, metavar="N",
                   help="add N procedural clips spread over the 10 GTZAN genres")
    b.add_argument("--shared-instruments", action="store_true",
                   help="generated clips draw instruments from one pool common to all genres")
    b.add_argument("--seed", type=int, default=0, help="seed of the generated clips")
    b.add_argument("--first-track", type=int, default=0, help="track number of the first generated clip per genre")
    b.add_argument("--clip-s", type=float, default=15.0, help="length of clips cut from long audio (s)")
    b.add_argument("--embedder", default="musicnn-msd", help="embedder name or module:factory")
    b.add_argument("--threads", type=_whole(1, "the embedder's threads"), default=2, help="embedder threads")
    b.set_defaults(func=run_build)

    s = lsub.add_parser("search", help="top-k clips by tag, by an audio example, or by an embedding")
    s.add_argument("library")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--tag", help="a tag of the library's embedder, e.g. jazz")
    g.add_argument("--like", metavar="AUDIO", help="an audio file: clips that sound like it")
    g.add_argument("--vector", metavar="NPY", help="a .npy embedding of shape (dim,)")
    s.add_argument("-k", type=_whole(1, "how many results"), default=10, help="how many results (default 10)")
    s.add_argument("--backend", default="auto", choices=["auto", "exact", "faiss"])
    s.add_argument("--json", action="store_true", help="print results as JSON lines")
    s.add_argument("--relevant", metavar="GENRE_OR_SOURCE",
                   help="also print precision@k, counting a hit relevant when its genre (or, without one, "
                        "its source) is this, e.g. jazz or music21")
    s.set_defaults(func=run_search)

    e = lsub.add_parser("eval", help="k-NN genre accuracy of a library's embeddings (5-fold, cosine)",
                        description="Stratified 5-fold cross-validated k-NN (cosine) genre classification of the "
                                    "library's clip embeddings, over clips that have a genre label.")
    e.add_argument("library")
    e.add_argument("-k", type=_whole(1, "the neighbours that vote on a clip's genre"), default=5,
                   help="neighbours that vote on each clip's genre (default 5)")
    e.add_argument("--folds", type=_whole(2, "the cross-validation folds"), default=5,
                   help="cross-validation folds (default 5)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=run_eval)


def run_build(args) -> int:
    from music.embedding import get_embedder
    from music.library import build_library, check_library_out, discover_sources, generated_units

    console = stderr_console()
    check_library_out(args.out)  # before any source is read: --out may be a bundle's or a session's folder
    units, problems = discover_sources(args.sources, clip_s=args.clip_s)
    if args.generate:
        units += generated_units(args.generate, shared_instruments=args.shared_instruments, seed=args.seed,
                                 first_track=args.first_track)
    if not units and not problems:
        console.print("[red]error:[/red] nothing to build: give SRC folders/files or --generate N")
        return 2
    embedder = get_embedder(args.embedder, threads=args.threads)
    with Progress(TextColumn("[bold]library[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("", total=len(units))

        def progress(done, total, label):
            bar.update(task, completed=done, description=label[:40])

        res = build_library(args.out, units, embedder, problems=problems, progress=progress, clip_s=args.clip_s)
    print(json.dumps({"library": args.out, "n_clips": res.n_clips, "new_clips": res.n_new,
                      "skipped": len(res.skipped), "wall_s": round(res.wall_s, 2),
                      "audio_s": round(res.audio_s, 1)}))
    for src, reason in res.skipped:
        console.print(f"[yellow]skipped[/yellow] {src}: {reason}", highlight=False)
    return 0 if res.n_clips else 1


def run_search(args) -> int:
    from music.library import Library

    lib = Library(args.library, backend=args.backend)
    if args.tag:
        hits = lib.search_tag(args.tag, args.k)
        query = f"tag {args.tag}"
    else:
        if args.like:
            from music.audio import read_audio
            from music.embedding import embedder_from_spec
            from protocols.library import check_same_embedder

            spec = lib.manifest.get("embedder_spec") or {"name": "musicnn-msd"}
            emb = embedder_from_spec(spec)
            check_same_embedder(lib.embedder, emb.identity(), "library", "query embedder")
            x, sr = read_audio(args.like)
            vec = emb.embed(x, sr).clip
            query = f"like {args.like}"
        else:
            vec = _read_vector(args.vector, int(lib.embeddings.shape[1]))
            query = f"vector {args.vector}"
        hits = lib.search(vec, args.k)
    if args.relevant:
        from music.library.evaluate import precision_at_k

        rel = [(c.genre or c.source) == args.relevant for c, _ in hits]
        print(f"precision@{args.k} ({args.relevant}): {precision_at_k(rel, args.k):.2f} "
              f"({sum(rel)} of the top {len(hits)})", file=sys.stderr)
    if args.json:
        for rank, (c, s) in enumerate(hits, 1):
            print(json.dumps({"rank": rank, "id": c.id, "score": round(s, 6), "genre": c.genre,
                              "source": c.source, "top_tags": c.top_tags}))
        return 0
    t = Table(title=f"{query} ({lib.index.kind} search over {len(lib)} clips)")
    for col in ("rank", "id", "score", "genre/source", "top tags"):
        t.add_column(col)
    for rank, (c, s) in enumerate(hits, 1):
        t.add_row(str(rank), c.id, f"{s:.4f}", c.genre or c.source, c.top_tags.replace(";", " "))
    Console(file=sys.stdout, width=160).print(t)
    return 0


def run_eval(args) -> int:
    from music.library import Library
    from music.library.evaluate import knn_genre_accuracy

    lib = Library(args.library, check_hashes=True)
    idx = [i for i, c in enumerate(lib.clips) if c.genre]
    if len(idx) < args.folds * 2:
        stderr_console().print("[red]error:[/red] too few clips with a genre label for k-NN evaluation")
        return 2
    res = knn_genre_accuracy(np.asarray(lib.embeddings)[idx], [lib.clips[i].genre for i in idx], k=args.k,
                             folds=args.folds, seed=args.seed)
    res["library"] = args.library
    res["embedder"] = lib.embedder["id"]
    print(json.dumps(res))
    return 0
