"""Decoder targets: embeddings of exactly what was heard, aligned to TRs.

For every excerpt named in the events, the audio actually played
(:func:`offline_training.bids.stimulus_segment`: the cut and the fades) is
embedded twice with the same model:

- a **clip** embedding, the mean of the embedder's own non-overlapping windows,
  L2-normalised: the same summary the music library stores, so a decoded
  point can be searched in the library (Brain2Music's per-clip target);
- **window** embeddings at a hop of one TR (each window is the model's 3 s
  window starting at that TR's offset in the clip), L2-normalised: the
  per-TR targets.

TR ``t`` covers acquisition time ``[t * TR, (t + 1) * TR)``; its target is that
of the event playing at ``t * TR``. Embeddings are cached per excerpt and
per digest of its audio under ``cache_dir/<embedder id>/<version>/`` so a
second training run is fast (:func:`embed_stimuli`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .bids import Event, stimulus_segment
from .evaluate import unit_rows

__all__ = ["ExcerptEmbeddings", "StimulusTargets", "audio_digest", "embed_stimuli", "tr_targets", "excerpt_id",
           "drop_opening_repeat"]


def excerpt_id(ev: Event) -> str:
    """Stable name of an excerpt: ``blues.00098@012.340``."""
    return f"{ev.genre}.{ev.track:05d}@{ev.start_s:07.3f}"


def drop_opening_repeat(runs_events: list[list[Event]], tr_s: float) -> tuple[list[list[Event]], list[Event]]:
    """Each run's events without its opening repeat, the buffer ds003720 opens every run with.

    ds003720's README: a Training run's first excerpt (0-15 s) is the previous
    run's last one, a Test run's is its own last one. It plays while the
    scanner's and the causal filters' warm-up lasts (the running z-score's
    first volumes), and it would give six Test clips a fifth presentation and
    the decoder twelve duplicate rows. The rule: a run's event starting within
    its first TR is dropped if its excerpt is the last one of the same run or
    of the run before it in ``runs_events`` (the first run: the last run);
    any other design keeps every event.

    Parameters
    ----------
    runs_events : list of list of Event
        The events of every run of a set (the Training runs, or the Test runs), in run order.
    tr_s : float

    Returns
    -------
    kept : list of list of Event
        Per run, its events without the opening repeat (the same list where there is none).
    dropped : list of Event
        The opening repeats dropped, one per run at most.
    """
    def first_last(events):
        if not events:
            return None, None
        order = sorted(range(len(events)), key=lambda j: events[j].onset_s)
        return order[0], excerpt_id(events[order[-1]])

    ends = [first_last(events) for events in runs_events]
    kept, dropped = [], []
    for k, events in enumerate(runs_events):
        first, own_last = ends[k]
        previous_last = ends[k - 1][1]  # k = 0: the last run's, as ds003720's first Training run
        if first is not None and len(events) > 1 and events[first].onset_s < tr_s \
                and excerpt_id(events[first]) in (own_last, previous_last):
            dropped.append(events[first])
            events = events[:first] + events[first + 1:]
        kept.append(events)
    return kept, dropped


@dataclass
class ExcerptEmbeddings:
    """Embeddings of one excerpt.

    Attributes
    ----------
    clip : ndarray of shape (dim,), unit norm
    windows : ndarray of shape (n_windows, dim), unit rows; window k starts at k * TR
    tags : ndarray of shape (n_tags,)
    genre : str
    """

    clip: np.ndarray
    windows: np.ndarray
    tags: np.ndarray
    genre: str


@dataclass
class StimulusTargets:
    """All excerpts' embeddings, by :func:`excerpt_id`."""

    by_id: dict = field(default_factory=dict)
    embedder: dict = field(default_factory=dict)
    tag_names: tuple = ()

    def __getitem__(self, key: str) -> ExcerptEmbeddings:
        return self.by_id[key]

    def clips(self, runs) -> tuple[list[str], np.ndarray, list[str]]:
        """The distinct excerpts the events of ``runs`` (objects with ``.events``) present, sorted by id.

        Returns
        -------
        keys : list of str
            :func:`excerpt_id` of each excerpt.
        emb : ndarray of shape (n_excerpts, dim)
            Their clip embeddings (unit rows).
        genres : list of str
        """
        keys = sorted({excerpt_id(e) for r in runs for e in r.events})
        return keys, np.stack([self[k].clip for k in keys]), [self[k].genre for k in keys]


def audio_digest(audio: np.ndarray, sr: int) -> str:
    """First 16 hex digits of the sha256 of ``audio``'s samples (as float32) and its rate: the cache key of
    what an embedder was given."""
    h = hashlib.sha256(f"{int(sr)}:".encode())
    h.update(np.ascontiguousarray(audio, np.float32).tobytes())
    return h.hexdigest()[:16]


def embed_stimuli(events: list[Event], stimuli_dir: str, embedder, tr_s: float, *, cache_dir: str | None = None,
                  sr: int = 22050, progress: Callable | None = None) -> StimulusTargets:
    """Embed every distinct excerpt among ``events`` (cached).

    Parameters
    ----------
    events : list of Event
        Events of all runs (duplicates are embedded once).
    stimuli_dir : str
        Folder of GTZAN-named tracks (``blues.00098.wav``).
    embedder : music.embedding.Embedder
        Its window hop is left as is for the clip embedding; a second pass
        with a hop of ``tr_s`` gives the per-TR windows.
    tr_s : float
        TR in seconds.
    cache_dir : str, optional
        Embeddings are kept under ``cache_dir/<embedder id>/<version>/tr<TR>/``,
        one file per excerpt named by its id and a digest of the audio
        samples embedded. A cache shared between datasets whose tracks have
        the same names but different audio (a re-simulated dataset, GTZAN
        beside the simulator's stand-ins) therefore never returns another
        dataset's embedding.
    progress : callable, optional
        ``progress(done, total)``.
    """
    from music.embedding import embedder_from_spec

    uniq: dict[str, Event] = {}
    for ev in events:
        uniq.setdefault(excerpt_id(ev), ev)
    ident = embedder.identity()
    tr_embedder = None
    cache = None
    if cache_dir:
        cache = os.path.join(cache_dir, ident["id"], ident["version"], f"tr{tr_s:g}")
        os.makedirs(cache, exist_ok=True)
    out = StimulusTargets(embedder=ident, tag_names=tuple(embedder.tag_names))
    for i, (key, ev) in enumerate(sorted(uniq.items())):
        audio = stimulus_segment(ev, stimuli_dir, sr)
        path = os.path.join(cache, f"{key}.{audio_digest(audio, sr)}.npz") if cache else None
        if path and os.path.exists(path):
            z = np.load(path)
            out.by_id[key] = ExcerptEmbeddings(z["clip"], z["windows"], z["tags"], ev.genre)
        else:
            e = embedder.embed(audio, sr)
            if tr_embedder is None:
                spec = getattr(embedder, "spec", None)
                if spec is None:
                    raise ValueError("per-TR targets need an embedder made by music.embedding.get_embedder")
                tr_embedder = embedder_from_spec(spec, hop_s=tr_s)
            w = tr_embedder.embed(audio, sr)
            tags = e.clip_tags if e.clip_tags is not None else np.zeros(0, np.float32)
            item = ExcerptEmbeddings(unit_rows(e.clip).astype(np.float32), unit_rows(w.windows).astype(np.float32),
                                     tags.astype(np.float32), ev.genre)
            if path:
                tmp = path + ".tmp.npz"
                np.savez(tmp, clip=item.clip, windows=item.windows, tags=item.tags)
                os.replace(tmp, path)
            out.by_id[key] = item
        if progress is not None:
            progress(i + 1, len(uniq))
    return out


def tr_targets(events: list[Event], n_volumes: int, tr_s: float, targets: StimulusTargets,
               kind: str = "clip") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets of every TR of a run.

    Parameters
    ----------
    events : list of Event
        The run's events.
    n_volumes : int
    kind : {"clip", "window"}
        Per-clip targets (every TR of an excerpt gets the clip embedding) or
        per-TR window targets.

    Returns
    -------
    y : ndarray of shape (n_volumes, dim), float32
        NaN rows where nothing was playing.
    event_index : ndarray of shape (n_volumes,), int
        Index into ``events`` of the event playing at each TR, -1 if none.
    tr_in_event : ndarray of shape (n_volumes,), int
        Which TR of its event each TR is (0 = the TR the excerpt starts in).

    Raises
    ------
    ValueError
        If an event ends after the run (``n_volumes * tr_s``), covers no
        volume, or overlaps another, which would leave it, or the volumes it
        shares, silently unlabelled or mislabelled
        (:func:`offline_training.bids.check_events_in_run` says the same for a
        file, with its name).
    """
    if kind not in ("clip", "window"):
        raise ValueError(f"kind must be 'clip' or 'window', got {kind!r}")
    run_s = n_volumes * tr_s
    dim = next(iter(targets.by_id.values())).clip.shape[0]
    y = np.full((n_volumes, dim), np.nan, np.float32)
    idx = np.full(n_volumes, -1, int)
    k_in = np.full(n_volumes, -1, int)
    t0 = np.arange(n_volumes) * tr_s
    for j, ev in enumerate(events):
        on = (t0 >= ev.onset_s - 1e-9) & (t0 < ev.onset_s + ev.duration_s - 1e-9)
        where = f"event {j} ({excerpt_id(ev)}{f', line {ev.line}' if ev.line else ''}, {ev.onset_s:g} s + " \
                f"{ev.duration_s:g} s)"
        if ev.onset_s + ev.duration_s > run_s + 1e-3:
            raise ValueError(f"{where} ends after the run: {n_volumes} volumes of TR {tr_s:g} s = {run_s:g} s; "
                             "onsets and durations are in seconds")
        if not on.any():
            raise ValueError(f"{where} covers no volume of the run (TR {tr_s:g} s)")
        if (idx[on] >= 0).any():
            raise ValueError(f"{where} overlaps event {int(idx[on][idx[on] >= 0][0])}; each volume belongs to one")
        idx[on] = j
        k = np.round((t0[on] - ev.onset_s) / tr_s).astype(int)
        k_in[on] = k
        emb = targets[excerpt_id(ev)]
        if kind == "clip":
            y[on] = emb.clip
        else:
            y[on] = emb.windows[np.minimum(k, len(emb.windows) - 1)]
    return y, idx, k_in
