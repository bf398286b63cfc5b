"""The feedback policy: decoded embeddings in, a decision about the music out.

Per TR:

1. **Neutral state.** Until the first decodable volume (the delay stack needs
   ``max(delays) + 1`` volumes) the policy plays the library's *neutral clip*:
   the clip closest to the mean library embedding, i.e. the most typical
   music the library holds, so the participant hears music from the first TR
   without the decoder having said anything yet.
2. **Motion hold.** A volume flagged for motion (FD over threshold) changes
   nothing: it is not added to the smoothing window and the clip is kept.
3. **Smoothing.** The decision uses the mean of the last ``smooth_trs``
   decoded (unit) embeddings, renormalised.
4. **Retrieval.** The top-k library clips by cosine similarity.
5. **Hysteresis and dwell.** The music switches only if the best clip beats
   the current clip's similarity by ``margin`` and the current clip has played
   for at least ``min_dwell_s``; so music does not flap every TR.

The policy is deterministic given its inputs, so a replayed session makes the
same decisions. Where the switch lands in musical time (next beat or bar) and
the crossfade are the audio engine's business; the policy says what and when.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

__all__ = ["PolicyConfig", "POLICY_OPTIONS", "Decision", "FeedbackPolicy"]


#: Each policy field by the ``b2m session`` option that sets it (the option's argparse dest is its name with ``_``).
POLICY_OPTIONS = {"smooth_trs": "--smooth-trs", "k": "--top-k", "margin": "--margin", "min_dwell_s": "--min-dwell",
                  "crossfade_s": "--crossfade", "align": "--align"}


@dataclass(frozen=True)
class PolicyConfig:
    """Options of the feedback policy.

    Attributes
    ----------
    smooth_trs : int
        Decoded embeddings averaged (TRs).
    k : int
        Retrieved candidates.
    margin : float
        Cosine similarity by which the best clip must beat the current one.
    min_dwell_s : float
        Minimum time between switches, seconds.
    crossfade_s : float
        Equal-power crossfade length, seconds.
    align : {"bar", "beat", "none"}
        Where a switch lands in the current clip's musical time.
    """

    smooth_trs: int = 3
    k: int = 5
    margin: float = 0.02
    min_dwell_s: float = 9.0
    crossfade_s: float = 2.0
    align: Literal["bar", "beat", "none"] = "bar"

    def __post_init__(self):
        # each wrong field is named with the `b2m session` option that sets it, and what it may be
        for name, least in (("smooth_trs", 1), ("k", 1)):
            value, option = getattr(self, name), POLICY_OPTIONS[name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{option} ({name}) must be a whole number of {least} or more, got {value!r}")
        for name, low, high, unit in (("margin", 0.0, 2.0, " (cosine)"), ("min_dwell_s", 0.0, None, " seconds"),
                                      ("crossfade_s", 0.0, None, " seconds")):
            value, option = getattr(self, name), POLICY_OPTIONS[name]
            ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
                  and np.isfinite(value) and low <= value and (high is None or value <= high))
            if not ok:
                allowed = f"from {low:g} to {high:g}" if high is not None else f"{low:g} or more"
                raise ValueError(f"{option} ({name}) must be {allowed}{unit}, got {value!r}")
        if self.align not in ("bar", "beat", "none"):
            raise ValueError(f"{POLICY_OPTIONS['align']} (align) must be 'bar', 'beat' or 'none', got {self.align!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decision:
    """One TR's decision.

    Attributes
    ----------
    action : {"neutral", "keep", "switch", "hold"}
    clip : int
        Library index of the clip to be playing after this decision.
    previous : int or None
        The clip playing before (for a switch).
    topk : list of (int, float)
        Library indices and cosine scores of the candidates (empty if none).
    current_score : float or None
        Cosine similarity of the smoothed embedding to the current clip.
    """

    action: str
    clip: int
    previous: int | None = None
    topk: list = field(default_factory=list)
    current_score: float | None = None


class FeedbackPolicy:
    """Deterministic clip selection with smoothing, hysteresis and dwell time.

    Parameters
    ----------
    library : music.library.Library
        Provides ``embeddings`` (n_clips, dim) and ``index.search``.
    config : PolicyConfig
    """

    def __init__(self, library, config: PolicyConfig | None = None):
        self.library = library
        self.config = config or PolicyConfig()
        emb = np.asarray(library.embeddings, dtype=np.float32)
        centroid = emb.mean(0)
        self.neutral_clip = int(np.argmax(emb @ centroid))
        self.dim = emb.shape[1]
        self._ring = np.zeros((self.config.smooth_trs, self.dim), np.float32)
        self._n = 0
        self._smoothed = np.zeros(self.dim, np.float32)
        self.current: int | None = None
        self.since_s: float = 0.0

    def _smooth(self, e: np.ndarray) -> np.ndarray:
        self._ring[self._n % len(self._ring)] = e
        self._n += 1
        m = min(self._n, len(self._ring))
        np.mean(self._ring[:m], axis=0, out=self._smoothed)
        self._smoothed /= max(float(np.linalg.norm(self._smoothed)), 1e-12)
        return self._smoothed

    def step(self, t_s: float, embedding: np.ndarray | None, flagged: bool = False) -> Decision:
        """Decide at session time ``t_s`` (seconds) given this TR's decoded embedding (or None)."""
        if self.current is None:
            self.current, self.since_s = self.neutral_clip, t_s
            if embedding is None:
                return Decision("neutral", self.current)
        if embedding is None:
            return Decision("neutral" if self._n == 0 else "keep", self.current)
        if flagged:
            return Decision("hold", self.current)
        e = self._smooth(np.asarray(embedding, np.float32))
        ids, scores = self.library.index.search(e, self.config.k)
        topk = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        cur = float(np.asarray(self.library.embeddings[self.current], np.float32) @ e)
        best, best_score = topk[0]
        dwell_ok = t_s - self.since_s >= self.config.min_dwell_s
        if best != self.current and best_score - cur > self.config.margin and dwell_ok:
            prev = self.current
            self.current, self.since_s = best, t_s
            return Decision("switch", best, prev, topk, cur)
        return Decision("keep", self.current, None, topk, cur)
