"""Generation mode: the decoded point picks a generator piece, composed and rendered live.

``b2m session --mode generation`` plays music the procedural generator
(:mod:`music.generator`) writes while the session runs, instead of stored
clips. The library is the generator's *atlas*: every row is a clip that
``b2m library build --generate N`` made and embedded with the bundle's
embedder, so it names a point ``(genre, track, seed)`` of the generator's
parameter space whose music sits at a known place in the embedding space.
The policy (:class:`realtime.feedback.FeedbackPolicy`) retrieves and
switches between those points exactly as in retrieval mode; what plays is
the chosen point's piece, continued bar after bar for as long as the policy
keeps it (never a loop of a 15 s clip), also between runs, when no TR comes
(:meth:`~.engine.SessionEngine.keep_playing`, the receiver's idle hook).

**Segments.** A piece is rendered in segments of whole bars at the output's
rate (:class:`music.generator.GeneratorStream`). The session schedules each
segment to start at the exact output frame where the previous one ends, so
what is heard equals the piece rendered in one go, bit for bit (the
stream's guarantee). A switch starts the new piece on the next bar line of
the one playing, with the session's crossfade; each segment carries its
beat frames and bar length for that. Segments are rendered on a worker
thread (niced, so the per-TR work comes first), the current piece's next
one ahead of need and the policy's next candidates' first ones before a
switch asks for them. A new piece costs a few hundred milliseconds (its
loudness is calibrated on a render of its first 8 s, then its first segment
is rendered), so a sound device never waits for one: if the chosen piece is
not prepared yet, the one playing goes on and the switch is heard on a bar
line after the TR at which it is ready (the decision itself is not delayed).
A WAV sink, whose output must not depend on thread timing, renders it on
the spot. Any segment rendered on the spot is counted (``stats["sync_renders"]``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from .wants import WantList

log = logging.getLogger("b2m.session")

__all__ = ["Segment", "LivePieces", "atlas_points", "AtlasError", "describe_pieces"]

WORKER_NICE = 5  # added to the worker thread's nice value
CHUNK = 16384    # samples the worker renders between looks at the session (0.34 s of audio at 48 kHz, ~6 ms)


class AtlasError(ValueError):
    """The library cannot serve as the generator's atlas."""


def atlas_points(library) -> list[tuple[str, int, int, bool]]:
    """The generator point ``(genre, track, seed, shared_instruments)`` of every library row.

    Raises
    ------
    AtlasError
        A row was not made by the generator (names the first such clip and
        how to build a library that works).
    """
    from music.library import generator_point

    points, bad = [], []
    for clip in library.clips:
        p = generator_point(clip)
        (bad.append(clip) if p is None else points.append(p))
    if bad:
        raise AtlasError(
            f"generation mode needs a library of generated clips, and {len(bad)} of {len(library.clips)} rows are "
            f"not (first: clip {bad[0].id!r}, source {bad[0].source!r}); build one with `b2m library build "
            f"--generate N --out LIB` and pass it as --library, or use --mode retrieval")
    return points


@dataclass(frozen=True)
class Segment:
    """Whole bars of a live piece, ready for the mixer.

    Attributes
    ----------
    index : int
        Library row (the generator point).
    number : int
        0 for the piece's first segment, then 1, 2, ...
    source : ndarray of shape (n_frames, channels), float32, or a staged handle
        At the output rate; what the output's ``stage`` returned for it.
    n_frames : int
    beat_frames : ndarray of shape (n_beats,), int64
        Beats in source frames; the first is 0 (a segment starts on a bar line).
    beats_per_bar : int
    tempo_bpm : float
    """

    index: int
    number: int
    source: object
    n_frames: int
    beat_frames: np.ndarray
    beats_per_bar: int
    tempo_bpm: float


class _Piece:
    """One generator stream and the segments rendered ahead of need (guarded by the owner's lock)."""

    def __init__(self, index: int, stream):
        self.index = index
        self.stream = stream
        self.bars = 0                 # bars rendered so far
        self.number = 0               # next segment number
        self.ahead: deque[Segment] = deque()
        self.busy = False             # a thread is rendering it
        self.failed = False           # the worker's render failed: no more rendering ahead


def describe_pieces(stats: dict, segment_bars: int | None = None) -> str:
    """:attr:`LivePieces.stats` in words, as the dashboard, the report and the demo print them."""
    bars = f" of {segment_bars} bars" if segment_bars else ""
    return (f"{stats['segments']} segments{bars}, {stats['pieces']} pieces begun, {stats['sync_renders']} rendered "
            f"on the spot, {stats['switch_waits']} TRs a switch waited, {stats['errors']} errors")


class LivePieces:
    """Generator pieces for one output format, rendered segment by segment on a worker thread.

    Parameters
    ----------
    library : music.library.Library
        A generated library (see :func:`atlas_points`).
    samplerate, channels : int
        The output's format; pieces are rendered at this rate (no resampling).
    segment_bars : int
        Bars per segment.
    capacity : int
        Candidate pieces kept prepared (each holds its first segment,
        about 3 MB for 8 s of stereo at 48 kHz).
    stage, unstage : callable, optional
        The output's ``stage``/``unstage`` (see :class:`~.clips.ClipCache`).
    level_dbfs : float or None
        Each piece's RMS level, dBFS (its stream's fixed gain, set from its
        first 8 s); None: the synthesiser's own level.
    """

    def __init__(self, library, samplerate: int, channels: int = 2, segment_bars: int = 4, capacity: int = 3,
                 stage=None, unstage=None, level_dbfs: float | None = -20.0):
        if int(segment_bars) < 1:
            raise ValueError(f"segment_bars must be >= 1, got {segment_bars}")
        self.points = atlas_points(library)
        self.library = library
        self.samplerate = int(samplerate)
        self.channels = int(channels)
        self.segment_bars = int(segment_bars)
        self.capacity = int(capacity)
        self.level_dbfs = level_dbfs
        self._stage, self._unstage = stage, unstage
        self._lock = threading.Condition()
        self._prepared: OrderedDict[int, _Piece] = OrderedDict()  # candidates: first segment rendered
        self._wanted = WantList(self.capacity)                     # candidates to prepare, most wanted first
        self._current: _Piece | None = None
        self._preparing: int | None = None                         # what the worker prepares now
        self._staged: deque = deque()                              # staged sources, oldest first
        self._closed = False
        self._idle = threading.Event()  # clear while the session works on a TR: the worker waits
        self._idle.set()
        # switch_waits: TRs at which a device kept the playing piece because the chosen one was not ready
        self.stats = {"pieces": 0, "segments": 0, "sync_renders": 0, "render_ms_max": 0.0, "errors": 0,
                      "switch_waits": 0}
        self._thread = threading.Thread(target=self._work, name="b2m-generator", daemon=True)
        self._thread.start()

    # ---- rendering (any thread, with the piece marked busy) -------------------

    def _new_piece(self, index: int) -> _Piece:
        from music.generator import GeneratorStream

        genre, track, seed, shared = self.points[index]
        self.stats["pieces"] += 1
        return _Piece(index, GeneratorStream(genre, track, seed, sr=self.samplerate, shared_instruments=shared,
                                             target_dbfs=self.level_dbfs))

    def _render(self, piece: _Piece, gated: bool = False) -> Segment:
        stream, p = piece.stream, piece.stream.params
        first_bar, last_bar = piece.bars, piece.bars + self.segment_bars
        start = stream.position
        end = int(round(last_bar * p.bar_s * self.samplerate))   # bar lines never drift
        busy_s = 0.0  # rendering time, without the waits
        if gated:  # the worker: in slices, each waiting while the session works on a TR (the stream is
            parts = []  # bit-identical whatever the slicing)
            for a in range(start, end, CHUNK):
                self._idle.wait()
                t0 = time.perf_counter()
                parts.append(stream.next(n_samples=min(CHUNK, end - a)))
                busy_s += time.perf_counter() - t0
            y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        else:
            t0 = time.perf_counter()
            y = stream.next(n_samples=end - start)
            busy_s = time.perf_counter() - t0
        beat_s = 60.0 / p.tempo
        k = np.arange(first_bar * p.beats_per_bar, last_bar * p.beats_per_bar)
        beats = np.round(k * beat_s * self.samplerate).astype(np.int64) - start
        src = np.ascontiguousarray(np.repeat(y[:, None], self.channels, axis=1), dtype=np.float32)
        if self._stage is not None:
            src = self._stage(src)
        seg = Segment(piece.index, piece.number, src, int(y.size), beats, int(p.beats_per_bar), float(p.tempo))
        piece.bars, piece.number = last_bar, piece.number + 1
        ms = busy_s * 1e3
        self.stats["segments"] += 1
        self.stats["render_ms_max"] = max(self.stats["render_ms_max"], ms)
        return seg

    def _claim(self, piece: _Piece) -> None:
        """Wait until no other thread renders ``piece``, then mark it busy (lock held)."""
        while piece.busy:
            self._wait_for_worker()
        piece.busy = True

    def _wait_for_worker(self) -> None:
        """Wait (lock held) for the worker to finish a render; a worker paused by this TR goes on meanwhile."""
        paused = not self._idle.is_set()
        self._idle.set()
        self._lock.wait(1.0)
        if paused:
            self._idle.clear()

    def _release(self, piece: _Piece) -> None:
        piece.busy = False
        self._lock.notify_all()

    # ---- worker ------------------------------------------------------------

    def _next_job(self):
        """What the worker should render next (lock held): the current piece's next segment first."""
        cur = self._current
        if cur is not None and not cur.ahead and not cur.busy and not cur.failed:
            return "ahead", cur
        while self._wanted:
            index = self._wanted.pop()
            if index not in self._prepared and (cur is None or cur.index != index):
                self._preparing = index
                return "prepare", index
        return None, None

    def _work(self) -> None:
        try:  # below the session's own threads for the CPU (Linux: a thread's nice value is its own)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except (AttributeError, OSError):
            pass
        while True:
            with self._lock:
                job, what = self._next_job()
                while job is None and not self._closed:
                    self._lock.wait()
                    job, what = self._next_job()
                if self._closed:
                    return
                if job == "ahead":
                    self._claim(what)
            try:
                if job == "ahead":
                    seg = self._render(what, gated=True)
                    with self._lock:
                        retired = what is not self._current
                        if not retired:
                            what.ahead.append(seg)
                        self._release(what)
                    if retired:       # the session switched away while it was being rendered
                        self._drop([seg])
                else:
                    self._idle.wait()
                    piece = self._new_piece(what)  # its loudness calibration: ~0.1 s, not sliced
                    piece.ahead.append(self._render(piece, gated=True))
                    self._put_prepared(piece)
            except Exception:
                self.stats["errors"] += 1
                log.exception("could not render generator piece %s", self.library.clips[
                    what.index if job == "ahead" else what].id)
                if job == "ahead":
                    with self._lock:
                        what.failed = True   # next_segment renders on the spot (and reports the error)
                        self._release(what)
            finally:
                if job == "prepare":
                    with self._lock:
                        self._preparing = None
                        self._lock.notify_all()

    def _put_prepared(self, piece: _Piece) -> None:
        dropped = []
        with self._lock:
            if piece.index in self._prepared:  # prepared twice (a switch rendered it meanwhile): keep one
                dropped.append(piece)
            else:
                self._prepared[piece.index] = piece
                while len(self._prepared) > self.capacity:
                    dropped.append(self._prepared.popitem(last=False)[1])
            self._lock.notify_all()
        for old in dropped:
            self._drop(old.ahead)

    def _drop(self, segments) -> None:
        if self._unstage is None:
            return
        for seg in segments:
            try:
                self._unstage(seg.source)
            except Exception:
                log.exception("could not release a generated segment in the audio output")

    def _keep_staged(self, seg: Segment) -> None:
        """Remember a scheduled segment's staged source; release those long played out."""
        self._staged.append(seg)
        while len(self._staged) > 4:  # the playing one, the next, and the crossfade partners
            self._drop([self._staged.popleft()])

    # ---- the session's side ------------------------------------------------

    def prefetch(self, indices) -> None:
        """Prepare these candidates' pieces (first segment), most wanted first."""
        with self._lock:
            self._wanted.want(indices, skip=lambda i: i in self._prepared
                              or (self._current is not None and self._current.index == i))
            self._lock.notify_all()

    def pause(self) -> None:
        """The session starts a TR: the worker stops at its next slice until :meth:`resume`."""
        self._idle.clear()

    def resume(self) -> None:
        self._idle.set()

    def ready(self, index: int) -> bool:
        """Whether ``index``'s piece is prepared, so :meth:`start` returns at once."""
        with self._lock:
            return int(index) in self._prepared

    def prepare(self, index: int) -> None:
        """Prepare a piece now (before the session starts: the first sound must not wait)."""
        piece = self._new_piece(int(index))
        piece.ahead.append(self._render(piece))
        self._put_prepared(piece)

    def start(self, index: int) -> Segment:
        """Make ``index``'s piece the one playing (from its beginning) and return its first segment."""
        index = int(index)
        with self._lock:
            while self._preparing == index:  # being prepared now: waiting is cheaper than rendering it twice
                self._wait_for_worker()
            self._wanted.discard(index)
            piece = self._prepared.pop(index, None)
        if piece is None:
            self.stats["sync_renders"] += 1
            piece = self._new_piece(index)
            piece.ahead.append(self._render(piece))
        rest = []
        with self._lock:
            old, self._current = self._current, piece
            seg = piece.ahead.popleft()
            if old is not None and not old.busy:  # else the worker drops what it renders for it when done
                rest, old.ahead = list(old.ahead), deque()
            self._lock.notify_all()   # the worker renders the new piece's next segment ahead
        self._drop(rest)
        self._keep_staged(seg)
        return seg

    def next_segment(self) -> Segment:
        """The playing piece's next segment (rendered ahead, or now)."""
        with self._lock:
            piece = self._current
            if piece is None:
                raise RuntimeError("no piece is playing: call start() first")
            self._claim(piece)
            seg = piece.ahead.popleft() if piece.ahead else None
        try:
            if seg is None:
                self.stats["sync_renders"] += 1
                seg = self._render(piece)
        finally:
            with self._lock:
                self._release(piece)
        self._keep_staged(seg)
        return seg

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._idle.set()
        self._thread.join(timeout=5)
