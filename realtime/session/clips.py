"""Library clips ready for the mixer: loaded, resampled and beat-tracked off the hot path.

A switch needs the new clip as a float32 array at the output rate and its
beat positions (to land the switch on a beat or bar and to start the clip on
its own first beat). The beats come from the library (``beats.npz``, stored
at build time); a library built without them is beat-tracked here. Reading
and resampling a 15 s clip still takes tens of milliseconds, so
:class:`ClipCache` does it on a loader thread for the policy's current
candidates (:meth:`prefetch`), keeps the most recent clips
(LRU), and loads synchronously only when a switch asks for a clip that is
not ready yet (counted in ``stats["sync_loads"]``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .wants import WantList

log = logging.getLogger("b2m.session")

__all__ = ["ReadyClip", "ClipCache"]


@dataclass(frozen=True)
class ReadyClip:
    """A library clip prepared for the mixer.

    Attributes
    ----------
    index : int
        Library row.
    source : ndarray of shape (n_frames, channels), float32, or a staged handle
        At the output rate; what the output's ``stage`` returned for it (an
        :class:`~realtime.audio.IsolatedOutput` keeps it in the audio
        process, so a switch sends only its id).
    beat_frames : ndarray of shape (n_beats,), int64
        Beat positions in source frames (empty if the clip has no clear beat).
    tempo_bpm : float
        ``nan`` without a beat.
    """

    index: int
    source: np.ndarray
    beat_frames: np.ndarray
    tempo_bpm: float


class ClipCache:
    """Loads library clips for one output format, on a background thread.

    Parameters
    ----------
    library : music.library.Library
    samplerate, channels : int
        The output's format.
    capacity : int
        Clips kept (a 15 s stereo clip at 48 kHz is 5.8 MB).
    max_pending : int
        Prefetch requests kept waiting.
    stage, unstage : callable, optional
        The output's ``stage``/``unstage``: a loaded clip is staged on the
        loader thread and unstaged when it leaves the cache.
    level_dbfs : float or None
        Each clip is scaled to this RMS level, dBFS (peaks under -1 dBFS;
        :func:`music.audio.level_gain`); None keeps the file's level.
    """

    def __init__(self, library, samplerate: int, channels: int = 2, capacity: int = 24, max_pending: int = 4,
                 stage=None, unstage=None, level_dbfs: float | None = None):
        self.library = library
        self.samplerate = int(samplerate)
        self.channels = int(channels)
        self.capacity = int(capacity)
        self.max_pending = int(max_pending)
        self._stage = stage
        self._unstage = unstage
        self.level_dbfs = level_dbfs
        self._clips: OrderedDict[int, ReadyClip] = OrderedDict()
        self._lock = threading.Condition()  # guards _clips and _todo; held only for dict operations
        self._todo = WantList(self.max_pending)
        self._loading: int | None = None  # what the loader is reading now
        self._closed = False
        self.stats = {"loads": 0, "sync_loads": 0, "load_ms_max": 0.0, "errors": 0, "beats_estimated": 0}
        self._thread = threading.Thread(target=self._work, name="b2m-clip-loader", daemon=True)
        self._thread.start()

    def _load(self, index: int) -> ReadyClip:
        from music.audio import level_gain, read_segment
        from music.beats import clip_beats
        from realtime.audio import prepare_source

        t0 = time.perf_counter()
        clip = self.library.clips[index]
        x, sr = read_segment(self.library.audio_path(clip), clip.start_s, clip.duration_s)
        if self.level_dbfs is not None:  # every clip equally loud: a switch never changes the level
            x = (x * level_gain(x, self.level_dbfs)).astype(np.float32)
        stored = self.library.beats(index)  # from the build (beats.npz); a library without them: here
        if stored is None:
            # at the file's own rate (GTZAN-like 22 kHz: a third of the work at 48 kHz, same beats)
            stored = clip_beats(x, sr)
            self.stats["beats_estimated"] += 1
        tempo, beats_s = stored
        src = prepare_source(x, sr, self.samplerate, self.channels)
        if self._stage is not None:
            src = self._stage(src)
        ready = ReadyClip(index, src, np.round(beats_s * self.samplerate).astype(np.int64), float(tempo))
        ms = (time.perf_counter() - t0) * 1e3
        self.stats["loads"] += 1
        self.stats["load_ms_max"] = max(self.stats["load_ms_max"], ms)
        return ready

    def _put(self, ready: ReadyClip) -> None:
        evicted = []
        with self._lock:
            self._clips[ready.index] = ready
            self._clips.move_to_end(ready.index)
            while len(self._clips) > self.capacity:
                evicted.append(self._clips.popitem(last=False)[1])
            self._lock.notify_all()
        if self._unstage is not None:
            for old in evicted:  # a clip still playing stays in the audio process until it is retired
                try:
                    self._unstage(old.source)
                except Exception:
                    log.exception("could not release clip %s in the audio output", old.index)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._todo and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                index = self._todo.pop()
                if index in self._clips:
                    continue
                self._loading = index
            try:
                self._put(self._load(index))
            except Exception:
                self.stats["errors"] += 1
                log.exception("could not load library clip %s", self.library.clips[index].id)
            finally:
                with self._lock:
                    self._loading = None
                    self._lock.notify_all()

    def prefetch(self, indices) -> None:
        """Ask for clips to be loaded, most wanted first; older requests wait behind them.

        At most ``max_pending`` requests are kept: the policy's candidates
        change every TR, and a stale request is not worth the CPU.
        """
        with self._lock:
            self._todo.want(indices, skip=lambda i: i in self._clips or i == self._loading)
            self._lock.notify_all()

    def preload(self, index: int) -> ReadyClip:
        """Load a clip now, before the session starts (not counted as a switch's on-the-spot read).

        The first load also pays for imports and first-call set-up (about a
        second here), so a session preloads its neutral clip before it serves.
        """
        ready = self._load(int(index))
        self._put(ready)
        return ready

    def get(self, index: int) -> ReadyClip:
        """The clip: from the cache, from the loader if it is loading it now, else loaded here."""
        index = int(index)
        with self._lock:
            while self._loading == index:  # being read now: waiting is cheaper than reading it twice
                self._lock.wait(1.0)
            self._todo.discard(index)  # not started: read it here, now
            ready = self._clips.get(index)
            if ready is not None:
                self._clips.move_to_end(index)
                return ready
        self.stats["sync_loads"] += 1
        return self.preload(index)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
