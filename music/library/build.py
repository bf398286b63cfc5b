"""Building a music library: sources -> clips -> embeddings -> library folder.

Sources are *units* of work (an audio file, a MIDI file, a music21 corpus work,
one procedurally generated clip). Each unit yields one or more clips: long
audio is cut into consecutive windows of ``clip_s`` seconds (default 15 s, the
length of ds003720's excerpts); a last remainder shorter than half a window is
dropped. Every clip is embedded (clip vector = mean of the embedder's windows,
then L2-normalised), beat-tracked from its file as the live session reads it
(:func:`music.beats.clip_beats`, stored in ``beats.npz``) and appended to
``LIB/.build/progress.log`` (a durable record log), so a rerun skips units
already done, except a source file whose size or mtime changed since: it is
embedded again and its old clips are dropped. A unit that fails is
skipped with its reason in ``LIB/build.log`` and ``LIB/skipped.tsv``; one bad
file never aborts a build. The library files are written at the end, each
atomically, so a library folder is always either the previous one or the new one.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from protocols.library import (LIBRARY_FORMAT, LIBRARY_VERSION, Clip, LibraryError, check_same_embedder,
                               sha256_file, write_beats, write_clips_tsv)
from protocols.provenance import provenance
from protocols.record import RecordLog

from ..audio import read_audio, read_segment, write_audio
from ..beats import clip_beats
from ..embedding.base import Embedder
from .index import FAISS_THRESHOLD, FaissHNSWIndex, normalize_rows

__all__ = ["Unit", "BuildResult", "build_library", "check_library_out", "discover_sources", "generated_units",
           "generator_point", "AUDIO_EXTS", "MIDI_EXTS", "DEFAULT_CLIP_S", "LIBRARY_SR"]

log = logging.getLogger("b2m.library")

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
MIDI_EXTS = (".mid", ".midi")
#: Length of library clips cut from longer audio, seconds.
DEFAULT_CLIP_S = 15.0
#: Sample rate of audio the library writes (GTZAN's rate), Hz.
LIBRARY_SR = 22050
GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


@dataclass
class Unit:
    """One unit of work.

    ``produce()`` returns a list of ``(audio, sr, start_s, meta)`` where
    ``audio`` is mono float32 and ``meta`` may set ``path`` (an existing
    file to point at) or leave it out (the builder writes the audio), and
    may give ``clip_embedding`` (and ``clip_tags``) already computed with the
    build's embedder on this very audio, which is then not embedded again.
    """

    id: str
    source: str
    genre: str
    produce: Callable[[], list]
    label: str = ""
    #: For a unit read from a file: its current fingerprint (size and mtime). A unit done with another
    #: fingerprint is embedded again, so an edited file never keeps the old audio's embedding and beats.
    fingerprint: Callable[[], str] | None = None


@dataclass
class BuildResult:
    n_clips: int
    n_new: int
    skipped: list = field(default_factory=list)
    wall_s: float = 0.0
    audio_s: float = 0.0


def _cut(x: np.ndarray, sr: int, clip_s: float) -> list[tuple[np.ndarray, float]]:
    n = int(round(clip_s * sr))
    if len(x) <= n:
        return [(x, 0.0)]
    out = []
    for start in range(0, len(x), n):
        seg = x[start: start + n]
        if len(seg) < n / 2:
            break
        out.append((seg, start / sr))
    return out


def _audio_unit(path: str, clip_s: float) -> Unit:
    def produce():
        x, sr = read_audio(path, sr=None, mono=True)
        return [(seg, sr, start, {"path": os.path.abspath(path)}) for seg, start in _cut(x, sr, clip_s)]

    return Unit(id=f"audio:{os.path.abspath(path)}", source="audio", genre="", produce=produce,
                label=os.path.basename(path), fingerprint=lambda: file_fingerprint(path))


def file_fingerprint(path: str) -> str:
    """``"<size>:<mtime_ns>"`` of a file: what a rebuild compares to notice an edited source."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _midi_unit(path: str, clip_s: float, source: str = "midi", genre: str = "", load=None) -> Unit:
    def produce():
        from ..render import render_midi

        pm = load() if load is not None else path
        x = render_midi(pm, sr=LIBRARY_SR)
        return [(seg, LIBRARY_SR, start, {}) for seg, start in _cut(x, LIBRARY_SR, clip_s)]

    return Unit(id=f"{source}:{path}", source=source, genre=genre, produce=produce, label=os.path.basename(path),
                fingerprint=(lambda: file_fingerprint(path)) if load is None else None)  # a file, not the corpus


def _music21_units(spec: str, clip_s: float) -> list[Unit]:
    """``music21:bach`` (composer, all works), ``music21:bach:50`` (first 50), or
    ``music21:bach/bwv66.6`` (one corpus path)."""
    from music21 import corpus

    body = spec.split(":", 1)[1]
    name, _, limit = body.partition(":")
    if "/" in name:
        paths = [str(corpus.getWork(name))]
    else:
        paths = sorted(str(p) for p in corpus.getComposer(name))
        if not paths:
            raise ValueError(f"{spec}: music21's corpus has no works by {name!r}")
    if limit:
        paths = paths[: int(limit)]
    units = []
    for p in paths:
        rel = p.split("corpus" + os.sep, 1)[-1]

        def load(p=p):
            import io

            import pretty_midi
            from music21 import converter

            score = converter.parse(p)
            midi = score.write("midi")
            with open(midi, "rb") as f:
                data = f.read()
            os.remove(midi)
            return pretty_midi.PrettyMIDI(io.BytesIO(data))

        units.append(_midi_unit(rel, clip_s, source="music21", genre="", load=load))
    return units


def generated_units(n: int, *, shared_instruments: bool = False, seed: int = 0,
                    duration_s: float = DEFAULT_CLIP_S, first_track: int = 0) -> list[Unit]:
    """``n`` procedural clips spread evenly over the 10 GTZAN genres."""
    units = []
    for i in range(n):
        genre, track = GENRES[i % len(GENRES)], first_track + i // len(GENRES)

        def produce(genre=genre, track=track):
            from ..generator import generate_clip

            x, info = generate_clip(genre, track, seed=seed, duration_s=duration_s, sr=LIBRARY_SR,
                                    shared_instruments=shared_instruments)
            return [(x, LIBRARY_SR, 0.0, {})]

        tag = "gen-shared" if shared_instruments else "gen"
        units.append(Unit(id=f"{tag}:{genre}.{track:05d}:seed{seed}", source="generated", genre=genre,
                          produce=produce, label=f"{genre}.{track:05d}"))
    return units


# the clip id a generated unit gets (``_clip_id`` turns the unit id's ':' into '.')
_GENERATED_ID = re.compile(r"^gen(-shared)?\.([a-z]+)\.(\d+)\.seed(\d+)$")


def generator_point(clip) -> tuple[str, int, int, bool] | None:
    """The generator's ``(genre, track, seed, shared_instruments)`` behind a generated clip.

    ``clip`` is a library row (:class:`protocols.library.Clip`). Returns None
    for a clip that :func:`generated_units` did not make (audio, MIDI,
    music21 sources, or a generated row whose id was edited).
    """
    if clip.source != "generated":
        return None
    m = _GENERATED_ID.match(clip.id)
    if m is None or m.group(2) != clip.genre:
        return None
    return m.group(2), int(m.group(3)), int(m.group(4)), m.group(1) is not None


def discover_sources(sources: Iterable[str], clip_s: float = DEFAULT_CLIP_S) -> tuple[list[Unit], list]:
    """Units from folders (audio and MIDI files, recursively), single files, and
    ``music21:`` corpus selections. Returns ``(units, problems)``."""
    units, problems = [], []
    for src in sources:
        if src.startswith("music21:"):
            try:
                units.extend(_music21_units(src, clip_s))
            except Exception as e:
                problems.append((src, f"music21 selection failed: {e}"))
            continue
        if os.path.isdir(src):
            files = sorted(glob.glob(os.path.join(src, "**", "*"), recursive=True))
        elif os.path.exists(src):
            files = [src]
        else:
            problems.append((src, "no such file or folder"))
            continue
        for f in files:
            ext = os.path.splitext(f)[1].lower()
            if ext in AUDIO_EXTS:
                units.append(_audio_unit(f, clip_s))
            elif ext in MIDI_EXTS:
                units.append(_midi_unit(os.path.abspath(f), clip_s))
    return units, problems


def _clip_id(unit: Unit, k: int, n: int) -> str:
    base = unit.id.split(":", 1)[1] if unit.source in ("audio", "midi", "music21") else unit.id
    if unit.source in ("audio", "midi", "music21"):
        base = os.path.splitext(os.path.basename(base))[0]
        base = f"{unit.source}.{base}"
    else:
        base = base.replace(":", ".")
    return base if n == 1 else f"{base}#{k:03d}"


def check_library_out(out: str) -> None:
    """Check that a library can be built in ``out``: a new path, an empty folder, a library or a partial build.

    A build writes ``manifest.json``, ``embeddings.npy`` and more into ``out``:
    a model bundle's or a session's folder would lose its own files.

    Raises
    ------
    LibraryError
        ``out`` is a file, or a folder holding something other than a library.
    """
    out = os.fspath(out)
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise LibraryError(out, "--out is a file, not a library folder: give a folder that does not exist yet, "
                                "an empty one, or an existing library to continue")
    manifest = os.path.join(out, "manifest.json")
    if os.path.lexists(manifest):
        try:
            with open(manifest, "rb") as f:
                fmt = json.load(f).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt == LIBRARY_FORMAT:
            return  # a library: built again, or continued
        what = f"a {fmt} folder" if isinstance(fmt, str) and fmt else "not a library folder"
        raise LibraryError(out, f"--out is {what} (its manifest.json), not a music library; building there would "
                                "overwrite its files: give a new folder, or an existing library to continue")
    if os.path.isdir(os.path.join(out, ".build")):
        return  # a partial build, interrupted before its first manifest
    entries = sorted(os.listdir(out))
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise LibraryError(out, f"--out holds files ({shown}) and is not a music library; building there would "
                                "mix with them: give a new or empty folder, or an existing library to continue")


def build_library(out: str, units: list[Unit], embedder: Embedder, *, problems: list | None = None,
                  progress: Callable | None = None, index: str = "auto",
                  clip_s: float = DEFAULT_CLIP_S) -> BuildResult:
    """Embed every unit not yet done and (re)write the library folder.

    Parameters
    ----------
    out : str
        Library folder; an interrupted or earlier build there is continued. Any other
        non-empty folder is refused (:func:`check_library_out`).
    units : list of Unit
    embedder : Embedder
    problems : list of (source, reason), optional
        Sources that could not even be listed; reported with the skipped units.
    progress : callable, optional
        ``progress(done, total, label)`` after each unit.
    index : {"auto", "none", "faiss"}
        Also save a FAISS index when the library is large (auto) or always.
    """
    t0 = time.monotonic()
    check_library_out(out)
    os.makedirs(os.path.join(out, ".build"), exist_ok=True)
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    ident_path = os.path.join(out, ".build", "embedder.json")
    ident = embedder.identity()
    if os.path.exists(ident_path):
        with open(ident_path) as f:
            check_same_embedder(json.load(f), ident, "partial build in " + out, "requested embedder")
    else:
        with open(ident_path, "w") as f:
            json.dump(ident, f)
    file_handler = logging.FileHandler(os.path.join(out, "build.log"))
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    progress_log = RecordLog(os.path.join(out, ".build", "progress.log"))
    done = _done_units(progress_log.records)
    skipped = list(problems or [])
    n_new, audio_s = 0, 0.0
    n_tags = len(embedder.tag_names)
    try:
        for i, unit in enumerate(units):
            try:
                fp = unit.fingerprint() if unit.fingerprint is not None else None
            except OSError as e:
                fp = f"unreadable: {e}"  # produce() says what is wrong with the file
            if unit.id in done and done[unit.id] in (None, fp):
                if progress:
                    progress(i + 1, len(units), unit.label)
                continue
            if unit.id in done:
                log.warning("%s changed since it was embedded (%s, now %s): embedding it again",
                            unit.label or unit.id, done[unit.id], fp)
            try:
                pieces = unit.produce()
                for k, (x, sr, start, meta) in enumerate(pieces):
                    cid = _clip_id(unit, k, len(pieces))
                    if "clip_embedding" in meta:  # embedded already by this embedder (e.g. training targets)
                        vec = np.asarray(meta["clip_embedding"], np.float32)
                        tags = np.asarray(meta.get("clip_tags", np.zeros(0)), np.float32)
                        if vec.shape != (embedder.dim,) or tags.size not in (0, n_tags):
                            raise ValueError(f"precomputed embedding of shape {vec.shape} and {tags.size} tags do "
                                             f"not fit {ident['id']} ({embedder.dim}-d, {n_tags} tags)")
                        order = np.argsort(tags)[::-1][:5] if tags.size else []  # as Embedding.top_tags
                        top_tags = [(embedder.tag_names[j], float(tags[j])) for j in order]
                    else:
                        e = embedder.embed(x, sr)
                        vec = e.clip.astype(np.float32)
                        tags = (e.clip_tags.astype(np.float32) if e.clip_tags is not None
                                else np.zeros(0, np.float32))
                        top_tags = e.top_tags(5)
                    if "path" in meta:
                        path, start_s = meta["path"], start
                    else:
                        path, start_s = os.path.join("audio", f"{cid}.flac"), 0.0
                        write_audio(os.path.join(out, path), x, sr)
                    top = ";".join(f"{n}:{p:.3f}" for n, p in top_tags)
                    h = {"kind": "clip", "unit": unit.id, "id": cid, "path": path, "start_s": float(start_s),
                         "duration_s": len(x) / sr, "genre": unit.genre, "source": unit.source, "top_tags": top,
                         "dim": int(vec.size), "n_tags": int(tags.size), "fingerprint": fp}
                    h["tempo_bpm"], h["beats_s"] = _beats_of(out, h)
                    progress_log.append(h, vec.tobytes() + tags.tobytes())
                    n_new += 1
                    audio_s += len(x) / sr
                progress_log.append({"kind": "unit_done", "unit": unit.id, "fingerprint": fp})
            except Exception as e:  # one bad source never aborts the build
                reason = f"{type(e).__name__}: {e}"
                log.warning("skipped %s: %s", unit.label or unit.id, reason)
                skipped.append((unit.id, reason))
            if progress:
                progress(i + 1, len(units), unit.label)
    finally:
        progress_log.close()
        log.removeHandler(file_handler)
        file_handler.close()
    n_clips = _write_library(out, ident, embedder.tag_names, n_tags, skipped, index,
                             extra={"embedder_spec": embedder.spec, "clip_s": clip_s})
    return BuildResult(n_clips=n_clips, n_new=n_new, skipped=skipped, wall_s=time.monotonic() - t0,
                       audio_s=audio_s)


def _beats_of(out: str, h: dict, missing_ok: bool = False) -> tuple[float, list]:
    """A clip's tempo and beats from its samples as the live session reads them (the file, not ``x``).

    ``missing_ok``: a clip of an earlier build whose audio can no longer be
    read gets no beats (logged) instead of stopping the library's rewrite.
    """
    try:
        seg, sr = read_segment(os.path.join(out, h["path"]), h["start_s"], h["duration_s"])
    except (OSError, ValueError, RuntimeError) as e:
        if not missing_ok:
            raise
        log.warning("no beats for %s: its audio %s cannot be read (%s)", h["id"], h["path"], e)
        return float("nan"), []
    tempo, beats = clip_beats(seg, sr)
    return tempo, beats.tolist()


def _done_units(records) -> dict:
    """Unit id -> fingerprint of its source when it was last done (None: not recorded, e.g. generated music)."""
    return {r.header["unit"]: r.header.get("fingerprint") for r in records if r.kind == "unit_done"}


def _write_library(out: str, ident: dict, tag_names, n_tags: int, skipped: list, index: str,
                   extra: dict | None = None) -> int:
    from protocols.record import scan_records

    records, _ = scan_records(os.path.join(out, ".build", "progress.log"))
    last = _done_units(records)  # a unit embedded again (its file changed) keeps only its last build's clips
    by_id: dict[str, tuple] = {}
    for r in records:
        if r.kind != "clip":
            continue
        h = r.header
        if last.get(h["unit"]) is not None and h.get("fingerprint") != last[h["unit"]]:
            continue
        raw = np.frombuffer(r.payload, dtype=np.float32)
        by_id[h["id"]] = (h, raw[: h["dim"]], raw[h["dim"]:])
    ids = list(by_id)
    dim = ident["dim"]
    emb = normalize_rows(np.stack([by_id[i][1] for i in ids])) if ids else np.zeros((0, dim), np.float32)
    tags = np.stack([by_id[i][2] for i in ids]) if ids and n_tags else None
    clips = [Clip(id=i, path=by_id[i][0]["path"], start_s=by_id[i][0]["start_s"],
                  duration_s=by_id[i][0]["duration_s"], genre=by_id[i][0]["genre"],
                  source=by_id[i][0]["source"], top_tags=by_id[i][0]["top_tags"]) for i in ids]
    files = {}
    _atomic_npy(os.path.join(out, "embeddings.npy"), emb.astype(np.float32))
    files["embeddings.npy"] = sha256_file(os.path.join(out, "embeddings.npy"))
    if tags is not None:
        _atomic_npy(os.path.join(out, "tags.npy"), tags.astype(np.float32))
        files["tags.npy"] = sha256_file(os.path.join(out, "tags.npy"))
    # beats: from each record (a build before beats were stored gets them now, from the files)
    beats = [(by_id[i][0]["tempo_bpm"], by_id[i][0]["beats_s"]) if "beats_s" in by_id[i][0]
             else _beats_of(out, by_id[i][0], missing_ok=True) for i in ids]
    write_beats(os.path.join(out, "beats.npz.tmp"), [b[0] for b in beats], [b[1] for b in beats])
    os.replace(os.path.join(out, "beats.npz.tmp"), os.path.join(out, "beats.npz"))
    files["beats.npz"] = sha256_file(os.path.join(out, "beats.npz"))
    tmp = os.path.join(out, "clips.tsv.tmp")
    write_clips_tsv(tmp, clips)
    os.replace(tmp, os.path.join(out, "clips.tsv"))
    files["clips.tsv"] = sha256_file(os.path.join(out, "clips.tsv"))
    faiss_path = os.path.join(out, "index.faiss")
    if index == "faiss" or (index == "auto" and len(ids) > FAISS_THRESHOLD):
        FaissHNSWIndex(emb).save(faiss_path + ".tmp")
        os.replace(faiss_path + ".tmp", faiss_path)
        files["index.faiss"] = sha256_file(faiss_path)
    elif os.path.exists(faiss_path):
        os.remove(faiss_path)
    with open(os.path.join(out, "skipped.tsv"), "w") as f:
        f.write("source\treason\n")
        for src, reason in skipped:
            f.write(f"{src}\t{reason}\n".replace("\r", " "))
    manifest = {"format": LIBRARY_FORMAT, "version": LIBRARY_VERSION, "embedder": ident,
                "n_clips": len(ids), "tag_names": list(tag_names), "files": files,
                "audio_sr": LIBRARY_SR, "created_unix": time.time(), "provenance": provenance(), **(extra or {})}
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    return len(ids)


def _atomic_npy(path: str, arr: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)
