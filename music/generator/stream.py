"""Incremental generation: continue the current piece for the next N seconds.

:class:`GeneratorStream` keeps one :class:`~.compose.Composer` and one
:class:`~music.render.SynthEngine` alive across calls. Each call writes just
enough further bars (at least one bar ahead of what it renders), schedules
their notes sample-exactly, and renders the requested samples; notes that
ring over a chunk boundary simply keep sounding in the synthesiser, so
nothing is cut and nothing is restarted. Tempo, key, the progression position
and the bar grid continue by construction, because it is one piece.

What is guaranteed: the concatenation of successive chunks is bit-identical
to rendering the whole piece in one go (``render_midi(stream.midi(),
duration_s=...)`` times the stream's fixed gain, then clipped to [-1, 1]),
whatever the chunk sizes. So the joins are exactly as smooth as the music
itself. (The synthesiser renders on a fixed grid of
:data:`music.render.BLOCK` samples and at note events only, never at chunk
boundaries; see :mod:`music.render`.)

Loudness: the stream cannot normalise chunk by chunk without audible gain
steps, so it applies one fixed gain, chosen at construction from a separate
render of the piece's first ``calibrate_s`` seconds so that they would sit at
``target_dbfs`` RMS (peak ceiling -1 dBFS). Later samples beyond full scale
are clipped (a stateless operation, so the guarantee above holds).
"""

from __future__ import annotations

import numpy as np

from ..render import SynthEngine, midi_events, render_midi
from .compose import Composer, add_notes, compose, new_pretty_midi
from .styles import sample_params

__all__ = ["GeneratorStream"]


class GeneratorStream:
    """A piece of ``genre`` that is rendered chunk by chunk.

    Parameters
    ----------
    genre : str
        One of the 10 GTZAN genres.
    track, seed : int
        As in :func:`~.compose.generate_clip`; the stream plays the same notes
        as the offline clip of the same triple (without its fades and
        normalisation).
    sr : int
        Sample rate in Hz.
    shared_instruments : bool
        Use the common instrument pool.
    target_dbfs : float or None
        Loudness target for the fixed gain; ``None``: gain 1.
    calibrate_s : float
        Seconds rendered (once, at construction) to choose the gain.

    Examples
    --------
    >>> s = GeneratorStream("jazz", track=3)
    >>> a = s.next(1.5); b = s.next(1.5)   # two TRs of audio, seamless
    """

    def __init__(self, genre: str, track: int = 0, seed: int = 0, sr: int = 22050,
                 shared_instruments: bool = False, target_dbfs: float | None = -20.0,
                 calibrate_s: float = 8.0):
        self.params = sample_params(genre, track, seed, shared_instruments)
        self.sr = int(sr)
        self._composer = Composer(self.params)
        self._pm = new_pretty_midi(self.params)
        parts, events = midi_events(self._pm, self.sr)      # the volume settings at t = 0
        self._engine = SynthEngine(parts, sr=self.sr)
        self._engine.schedule(events)
        self._t_requested = 0.0                             # seconds asked for so far
        self.gain = np.float32(1.0)
        if target_dbfs is not None:
            ref = render_midi(compose(self.params, calibrate_s), sr=self.sr, duration_s=calibrate_s)
            rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
            peak = float(np.max(np.abs(ref)))
            if rms > 0:
                g = 10 ** (target_dbfs / 20) / rms
                self.gain = np.float32(min(g, 10 ** (-1 / 20) / peak))

    @property
    def position(self) -> int:
        """Samples returned so far."""
        return self._engine.position

    @property
    def position_s(self) -> float:
        return self._engine.position / self.sr

    @property
    def bars_written(self) -> int:
        return self._composer.bar

    @property
    def info(self) -> dict:
        """The piece's parameters (JSON-serialisable) and the stream's gain."""
        return {**self.params.to_dict(), "sr": self.sr, "gain": float(self.gain)}

    def _write_until(self, sample: int) -> None:
        bar_n = self._composer.bar_s * self.sr
        while self._composer.bar * bar_n < sample + bar_n:   # keep one bar of look-ahead
            notes = self._composer.next_bar()
            add_notes(self._pm, notes)
            bar_pm = new_pretty_midi(self.params)
            for inst in bar_pm.instruments:
                inst.control_changes = []
            add_notes(bar_pm, notes)
            self._engine.schedule(midi_events(bar_pm, self.sr)[1])

    def next(self, seconds: float | None = None, n_samples: int | None = None) -> np.ndarray:
        """The next chunk of the piece.

        Give either ``seconds`` (rounded so that chunk ends never drift:
        the stream ends at ``round(total_seconds * sr)``) or ``n_samples``.

        Returns
        -------
        y : array of shape (n,), float32
            The chunk, in [-1, 1].
        """
        if (seconds is None) == (n_samples is None):
            raise ValueError("give exactly one of seconds or n_samples")
        if n_samples is None:
            if seconds < 0:
                raise ValueError(f"seconds must be >= 0, got {seconds}")
            self._t_requested += float(seconds)
            n = int(round(self._t_requested * self.sr)) - self.position
        else:
            n = int(n_samples)
            if n < 0:
                raise ValueError(f"n_samples must be >= 0, got {n_samples}")
            self._t_requested = (self.position + n) / self.sr
        self._write_until(self.position + n)
        y = self._engine.render(n) * self.gain
        return np.clip(y, -1.0, 1.0)

    def midi(self):
        """A PrettyMIDI of every bar written so far (a copy)."""
        import copy

        return copy.deepcopy(self._pm)
