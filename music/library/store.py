"""Opening a built music library and asking it questions."""

from __future__ import annotations

import json
import os

import numpy as np

from protocols.library import Clip, LibraryError, read_beats, read_clips_tsv, validate_library

from .index import FAISS_THRESHOLD, ExactIndex, FaissHNSWIndex, make_index

__all__ = ["Library", "FAISS_THRESHOLD", "ExactIndex"]  # the last two re-exported from .index


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (how many results) must be a whole number of 1 or more, got {k!r}")


class Library:
    """A validated music library, embeddings memory-mapped.

    Parameters
    ----------
    path : path-like
        The library folder (see :mod:`protocols.library`).
    backend : {"auto", "exact", "faiss"}
        Search backend; ``auto`` uses FAISS above the documented size and the
        saved ``index.faiss`` when there is one.
    check_hashes : bool
        Verify every file's sha256 against the manifest (default True).

    Attributes
    ----------
    embeddings : ndarray of shape (n_clips, dim), float32, unit rows
    tags : ndarray of shape (n_clips, n_tags) or None
    clips : list of Clip
        Their beats: :meth:`beats`.
    manifest : dict
    """

    def __init__(self, path, *, backend: str = "auto", check_hashes: bool = True):
        self.path = os.fspath(path)
        self.manifest = validate_library(self.path, check_hashes=check_hashes)
        self.embeddings = np.load(os.path.join(self.path, "embeddings.npy"), mmap_mode="r")
        tags_path = os.path.join(self.path, "tags.npy")
        self.tags = np.load(tags_path, mmap_mode="r") if os.path.exists(tags_path) else None
        self.tag_names = tuple(self.manifest.get("tag_names", ()))
        self.clips: list[Clip] = read_clips_tsv(os.path.join(self.path, "clips.tsv"))
        self._beats = (read_beats(os.path.join(self.path, "beats.npz"), len(self.clips))
                       if "beats.npz" in self.manifest["files"] else None)
        self._ids = {c.id: i for i, c in enumerate(self.clips)}
        faiss_path = os.path.join(self.path, "index.faiss")
        if backend in ("auto", "faiss") and os.path.exists(faiss_path):
            self.index = FaissHNSWIndex.load(faiss_path, self.embeddings)
        else:
            self.index = make_index(self.embeddings, backend)

    @property
    def embedder(self) -> dict:
        """The identity of the embedder that made this library."""
        return self.manifest["embedder"]

    def __len__(self) -> int:
        return len(self.clips)

    def index_of(self, clip_id: str) -> int:
        try:
            return self._ids[clip_id]
        except KeyError:
            raise LibraryError("clip id", f"{clip_id!r} is not in {self.path}") from None

    def beats(self, index: int) -> tuple[float, np.ndarray] | None:
        """Tempo (BPM, nan without a beat) and beat times (s from the clip's start) stored at build time.

        None when the library was built without them (before ``beats.npz`` existed).
        """
        if self._beats is None:
            return None
        tempo, offsets, times = self._beats
        return float(tempo[index]), times[offsets[index]:offsets[index + 1]]

    def audio_path(self, clip: Clip) -> str:
        return clip.path if os.path.isabs(clip.path) else os.path.join(self.path, clip.path)

    def search(self, vector: np.ndarray, k: int = 10) -> list[tuple[Clip, float]]:
        """Top-k clips by cosine similarity to one embedding of shape (dim,)."""
        _check_k(k)
        ids, scores = self.index.search(vector, k)
        return [(self.clips[i], float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def search_tag(self, tag: str, k: int = 10) -> list[tuple[Clip, float]]:
        """Top-k clips by the embedder's probability for ``tag`` (case-insensitive)."""
        _check_k(k)
        if self.tags is None:
            raise LibraryError(os.path.join(self.path, "tags.npy"), "this library has no tag probabilities")
        names = [t.lower() for t in self.tag_names]
        if tag.lower() not in names:
            raise LibraryError("--tag", f"{tag!r} is not one of the embedder's tags: {', '.join(self.tag_names)}")
        col = np.asarray(self.tags[:, names.index(tag.lower())])
        top = np.argsort(-col, kind="stable")[:k]
        return [(self.clips[i], float(col[i])) for i in top]

    def summary(self) -> dict:
        genres: dict[str, int] = {}
        for c in self.clips:
            genres[c.genre or c.source] = genres.get(c.genre or c.source, 0) + 1
        return {"path": self.path, "n_clips": len(self), "embedder": self.embedder,
                "index": self.index.kind, "by_genre_or_source": genres}

    def __repr__(self) -> str:
        return f"Library({json.dumps(self.summary())})"

