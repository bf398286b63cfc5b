"""The embedder interface: audio in, per-window embeddings and tags out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

__all__ = ["Embedding", "Embedder"]


@dataclass
class Embedding:
    """What an embedder returns for one piece of audio.

    Attributes
    ----------
    windows : ndarray of shape (n_windows, dim), float32
        One embedding per analysis window.
    times_s : ndarray of shape (n_windows,), float64
        Start of each window in seconds from the start of the audio.
    tags : ndarray of shape (n_windows, n_tags), float32, or None
        Tag probabilities per window, if the model has tags.
    tag_names : tuple of str
    """

    windows: np.ndarray
    times_s: np.ndarray
    tags: np.ndarray | None = None
    tag_names: tuple[str, ...] = ()

    @property
    def clip(self) -> np.ndarray:
        """Clip-level summary, shape (dim,): the mean over windows (not normalised)."""
        return self.windows.mean(axis=0)

    @property
    def clip_tags(self) -> np.ndarray | None:
        """Mean tag probabilities over windows, shape (n_tags,), or None."""
        return None if self.tags is None else self.tags.mean(axis=0)

    def top_tags(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable clip-level tags with their probabilities."""
        ct = self.clip_tags
        if ct is None:
            return []
        order = np.argsort(ct)[::-1][:k]
        return [(self.tag_names[i], float(ct[i])) for i in order]


class Embedder(ABC):
    """Maps audio to a music-embedding space.

    Subclasses set ``id`` (stable name of the space, e.g.
    ``"musicnn-msd-penultimate"``), ``version`` (changes whenever outputs
    may change), ``dim``, ``sr`` (the model's input rate in Hz),
    ``window_s`` and ``hop_s`` (analysis window and hop, seconds) and
    ``tag_names``. Two libraries or bundles can be mixed only if their
    ``identity()`` is equal.
    """

    id: str
    version: str
    dim: int
    sr: int
    window_s: float
    hop_s: float
    tag_names: tuple[str, ...] = ()
    spec: dict | None = None  # set by get_embedder: how to recreate it

    @abstractmethod
    def embed(self, audio: np.ndarray, sr: int) -> Embedding:
        """Embed mono audio.

        Parameters
        ----------
        audio : ndarray of shape (n_samples,)
            Mono float audio in [-1, 1].
        sr : int
            Its sample rate in Hz; resampled to :attr:`sr` if different.
        """

    def identity(self) -> dict:
        """What goes into every library and bundle manifest."""
        return {"id": self.id, "version": self.version, "dim": int(self.dim)}
