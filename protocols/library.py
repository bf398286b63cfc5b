"""Music library v1: the on-disk contract between library builders and users.

::

    LIB/
      manifest.json     format, version, embedder identity, clip count, sha256 of every file
      embeddings.npy    float32 (n_clips, dim), rows L2-normalised, memory-mappable
      tags.npy          float32 (n_clips, n_tags) clip-level tag probabilities (optional)
      beats.npz         each clip's tempo and beat times, from the clip as read from its file
                        (optional; without it the live session beat-tracks clips itself):
                          tempo_bpm float64 (n_clips,), nan where a clip has no clear beat;
                          offsets   int64 (n_clips + 1,), clip i's beats are times_s[offsets[i]:offsets[i+1]];
                          times_s   float64 (n_beats_total,), seconds from the clip's start, increasing
      clips.tsv         one row per clip: id, path, start_s, duration_s, genre, source, top_tags
      audio/            rendered or generated audio (paths in clips.tsv are relative to LIB)

``clips.tsv`` is UTF-8, tab-separated, LF line endings, with a header row.
``path`` is relative to the library folder unless absolute; ``start_s`` and
``duration_s`` are seconds within that file; ``genre`` is the genre label or
empty; ``source`` says where the clip came from (``generated``, ``music21``,
``midi``, ``audio``); ``top_tags`` is ``tag:prob`` pairs joined by ``;``.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from ._manifest import check_listed_files, sha256_file
from ._manifest import read_manifest as _read_manifest
from .errors import ProtocolError
from .provenance import check_provenance

__all__ = [
    "LIBRARY_FORMAT", "LIBRARY_VERSION", "CLIP_COLUMNS", "LibraryError", "EmbedderMismatch", "Clip",
    "sha256_file", "write_clips_tsv", "read_clips_tsv", "write_beats", "read_beats", "read_manifest",
    "validate_library",
    "check_same_embedder",
]

LIBRARY_FORMAT = "b2m-music-library"
LIBRARY_VERSION = 1
CLIP_COLUMNS = ("id", "path", "start_s", "duration_s", "genre", "source", "top_tags")
NORM_TOL = 1e-3


class LibraryError(ProtocolError):
    """A music library folder breaks the contract."""


class EmbedderMismatch(ProtocolError):
    """Two artefacts were made by different embedders and cannot be mixed."""


@dataclass(frozen=True)
class Clip:
    """One row of ``clips.tsv``. Times in seconds."""

    id: str
    path: str
    start_s: float
    duration_s: float
    genre: str = ""
    source: str = ""
    top_tags: str = ""

    def tag_list(self) -> list[tuple[str, float]]:
        out = []
        for item in filter(None, self.top_tags.split(";")):
            name, _, p = item.rpartition(":")
            out.append((name, float(p)))
        return out


def write_clips_tsv(path: str | os.PathLike, clips: list[Clip]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(CLIP_COLUMNS)
    for c in clips:
        w.writerow([c.id, c.path, repr(float(c.start_s)), repr(float(c.duration_s)), c.genre, c.source, c.top_tags])
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


def read_clips_tsv(path: str | os.PathLike) -> list[Clip]:
    """Read ``clips.tsv``; a malformed row is a LibraryError naming file and line."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as e:
        raise LibraryError(path, f"cannot be read ({e})") from None
    if not rows or tuple(rows[0]) != CLIP_COLUMNS:
        raise LibraryError(path, f"header must be {' '.join(CLIP_COLUMNS)} (tab-separated)")
    clips = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(CLIP_COLUMNS):
            raise LibraryError(f"{path}:{i}", f"expected {len(CLIP_COLUMNS)} columns, got {len(row)}")
        try:
            start, dur = float(row[2]), float(row[3])
        except ValueError:
            raise LibraryError(f"{path}:{i}", "start_s and duration_s must be numbers (seconds)") from None
        if not (start >= 0 and dur > 0):
            raise LibraryError(f"{path}:{i}", f"need start_s >= 0 and duration_s > 0, got {start}, {dur}")
        clips.append(Clip(row[0], row[1], start, dur, row[4], row[5], row[6]))
    return clips


def write_beats(path: str | os.PathLike, tempo_bpm, beat_times_s: list) -> None:
    """Write ``beats.npz``: one tempo and one array of beat times (seconds) per clip, in clip order."""
    times = [np.asarray(b, np.float64).reshape(-1) for b in beat_times_s]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in times])]).astype(np.int64)
    with open(path, "wb") as f:
        np.savez(f, tempo_bpm=np.asarray(tempo_bpm, np.float64).reshape(-1), offsets=offsets,
                 times_s=np.concatenate(times) if times else np.zeros(0))


def read_beats(path: str | os.PathLike, n_clips: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check ``beats.npz``: ``(tempo_bpm, offsets, times_s)``; a LibraryError names what is wrong."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            tempo, offsets, times = z["tempo_bpm"], z["offsets"], z["times_s"]
    except (OSError, ValueError, KeyError) as e:
        raise LibraryError(path, f"cannot be read as beats (tempo_bpm, offsets, times_s): {e}; rebuild the "
                                 "library") from None
    if tempo.shape != (n_clips,) or offsets.shape != (n_clips + 1,) or times.ndim != 1:
        raise LibraryError(path, f"expected tempo_bpm ({n_clips},), offsets ({n_clips + 1},) and 1-D times_s; got "
                                 f"{tempo.shape}, {offsets.shape}, {times.shape}")
    if offsets[0] != 0 or offsets[-1] != len(times) or np.any(np.diff(offsets) < 0):
        raise LibraryError(path, "offsets must rise from 0 to len(times_s)")
    return tempo, offsets.astype(np.int64), times


def read_manifest(lib: str | os.PathLike) -> dict:
    """Load and check ``LIB/manifest.json`` (format, version, required keys, and ``provenance`` where present:
    :mod:`protocols.provenance`); errors name file and key."""
    m = _read_manifest(lib, error=LibraryError, fmt=LIBRARY_FORMAT, version=LIBRARY_VERSION,
                       required=("embedder", "n_clips", "files"), what="library",
                       if_missing="is this a music library folder? Build one with "
                                  "`b2m library build ... --out LIB`")
    check_provenance(m.get("provenance"), os.path.join(os.fspath(lib), "manifest.json"), LibraryError)
    return m


def validate_library(lib: str | os.PathLike, *, check_hashes: bool = True) -> dict:
    """Check a library folder against the contract; return its manifest.

    Raises
    ------
    LibraryError
        Naming the file and what is wrong: a missing file, a sha256 that does
        not match (the folder was modified after it was built), a wrong shape
        or dtype, rows that are not unit-norm, or a clip count mismatch.
    """
    lib = os.fspath(lib)
    m = read_manifest(lib)
    check_listed_files(lib, m["files"], error=LibraryError, check_hashes=check_hashes,
                       if_modified="the library was modified after it was built; rebuild it")
    emb_path = os.path.join(lib, "embeddings.npy")
    try:
        emb = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise LibraryError(emb_path, f"cannot be read as .npy ({e})") from None
    n, dim = m["n_clips"], m["embedder"]["dim"]
    if emb.dtype != np.float32 or emb.shape != (n, dim):
        raise LibraryError(emb_path, f"expected float32 of shape ({n}, {dim}), got {emb.dtype} {emb.shape}")
    norms = np.linalg.norm(np.asarray(emb[: min(n, 4096)], dtype=np.float64), axis=1)
    if n and not np.all(np.abs(norms - 1) < NORM_TOL):
        raise LibraryError(emb_path, "rows must be L2-normalised")
    clips = read_clips_tsv(os.path.join(lib, "clips.tsv"))
    if len(clips) != n:
        raise LibraryError(os.path.join(lib, "clips.tsv"), f"has {len(clips)} rows; manifest says {n} clips")
    if "beats.npz" in m["files"]:
        read_beats(os.path.join(lib, "beats.npz"), n)
    return m


def check_same_embedder(a: dict, b: dict, what_a: str = "library", what_b: str = "model") -> None:
    """Refuse to mix artefacts from different embedders.

    ``a`` and ``b`` are embedder identities: ``{"id", "version", "dim"}``.
    """
    keys = ("id", "version", "dim")
    if any(a.get(k) != b.get(k) for k in keys):
        raise EmbedderMismatch(
            "embedder", f"the {what_a} was made with {a.get('id')} {a.get('version')} (dim {a.get('dim')}) "
            f"but the {what_b} with {b.get('id')} {b.get('version')} (dim {b.get('dim')}); "
            "rebuild one of them with the same embedder"
        )
