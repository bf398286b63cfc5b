"""MIDI -> audio with TinySoundFont and pretty_midi's General MIDI soundfont.

For offline rendering, and for :class:`music.generator.GeneratorStream`, which
renders ahead of playback chunk by chunk with the same engine.

Why tinysoundfont: the renderer must be installable from PyPI alone, with no
system library, on every developer machine and in CI. ``tinysoundfont`` is a
self-contained wheel (TinySoundFont, single-header C, via pybind11) that
renders offline into a buffer we ask for, sample by sample; its pyaudio
dependency is only for live playback, so it installs with ``--no-deps`` where
PortAudio's headers are missing. The alternative, FluidSynth (pretty_midi's
``fluidsynth()``), needs Debian's libfluidsynth and the pyfluidsynth binding,
so it is not pip-only, and it adds reverb and chorus by default. The
soundfont is ``TimGM6mb.sf2`` (about 6 MB, all 128 GM programs and 8 drum
kits), which ships inside the pretty_midi wheel.

Determinism. TinySoundFont is plain C with no randomness, but its envelopes
and filters advance in 64-sample effect blocks that restart at every
``render`` call, so the output depends on how the timeline is cut into calls.
:class:`SynthEngine` therefore always cuts it the same way: at multiples of
``BLOCK`` samples on an absolute grid, and at the exact sample of every MIDI
event (``round(t * sr)``), never anywhere else. The same events then give
bit-identical samples, however the caller asks for them: all at once
(:func:`render_midi`) or chunk by chunk (:mod:`music.generator.stream`).

Drums. A pretty_midi instrument with ``is_drum`` plays on MIDI channel 10
(index 9) in drum mode, i.e. soundfont bank 128 with the instrument's
``program`` as the kit number (0 Standard, 8 Room, 16 Power, 24 Electronic,
25 TR-808, 32 Jazz, 40 Brush, 48 Orchestra in TimGM6mb; other numbers fall
back to the nearest lower kit). Every melodic instrument gets a channel of its
own; beyond 15 melodic instruments another synth instance is added, so any
number of instruments renders.

The output is mono, the mean of TinySoundFont's left and right channels,
float32 of shape ``(n_samples,)``. No normalisation or limiting is applied.
"""

from __future__ import annotations

import heapq
import os
from typing import Iterable, Sequence

import numpy as np

__all__ = ["soundfont_path", "SynthEngine", "midi_events", "render_midi", "BLOCK",
           "CONTROL", "BEND", "NOTE_OFF", "NOTE_ON"]

#: Rendering grid in samples (a multiple of TinySoundFont's 64-sample effect block).
BLOCK = 512

# Event kinds, in the order they are applied when they fall on the same sample.
CONTROL, BEND, NOTE_OFF, NOTE_ON = range(4)
_MELODIC_CHANNELS = [c for c in range(16) if c != 9]
_DRUM_CHANNEL = 9


def soundfont_path() -> str:
    """Path of ``TimGM6mb.sf2`` inside the installed pretty_midi package."""
    import pretty_midi

    path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretty_midi's bundled soundfont is missing at {path}; "
                                "reinstall pretty_midi (pip install --force-reinstall pretty_midi)")
    return path


class SynthEngine:
    """A TinySoundFont synthesiser with a sample-exact event queue.

    Parameters
    ----------
    parts : sequence of (program, is_drum)
        One entry per part (pretty_midi instrument). Events address parts by
        their index in this sequence.
    sr : int
        Output sample rate in Hz.
    max_voices : int
        Voices per synth instance; the oldest voice is stolen beyond this.

    Notes
    -----
    Events are tuples ``(sample, kind, part, a, b)`` with ``kind`` one of
    ``CONTROL`` (a=controller, b=value), ``BEND`` (a=value in 0..16383),
    ``NOTE_OFF`` (a=key) and ``NOTE_ON`` (a=key, b=velocity 1..127). Events on
    the same sample apply in that kind order, so a note-off precedes a
    re-struck note-on. Scheduling an event before the samples already rendered
    is an error.
    """

    def __init__(self, parts: Sequence[tuple[int, bool]], sr: int = 22050, max_voices: int = 256):
        import tinysoundfont

        if int(sr) != sr or sr <= 0:
            raise ValueError(f"sr must be a positive integer number of Hz, got {sr!r}")
        self.sr = int(sr)
        self.parts = [(int(p), bool(d)) for p, d in parts]
        sf2 = soundfont_path()
        self._synths = []
        self._route: list[tuple[int, int]] = []  # part -> (synth index, channel)
        free: list[list[int]] = []
        for program, is_drum in self.parts:
            if not 0 <= program <= 127:
                raise ValueError(f"GM program must be in 0..127, got {program}")
            for s, chans in enumerate(free):
                if is_drum and _DRUM_CHANNEL in chans:
                    break
                if not is_drum and any(c != _DRUM_CHANNEL for c in chans):
                    break
            else:
                synth = tinysoundfont.Synth(samplerate=self.sr)
                synth.sfload(sf2, max_voices=max_voices)
                self._synths.append(synth)
                free.append(list(_MELODIC_CHANNELS) + [_DRUM_CHANNEL])
                s = len(self._synths) - 1
            chan = _DRUM_CHANNEL if is_drum else next(c for c in free[s] if c != _DRUM_CHANNEL)
            free[s].remove(chan)
            self._route.append((s, chan))
            self._select(s, chan, program, is_drum)
        self._queue: list[tuple] = []
        self._seq = 0
        self._done = 0          # samples rendered into the synth so far (block-aligned or event-aligned)
        self._ahead = np.zeros(0, dtype=np.float32)  # rendered but not yet returned
        self.position = 0       # samples returned to the caller so far

    def _select(self, s: int, chan: int, program: int, is_drum: bool) -> None:
        synth = self._synths[s]
        if is_drum:
            for kit in sorted({program, *range(program, -1, -1)}, reverse=True):
                if synth.sfpreset_name(0, 128, kit) is not None:
                    break
            synth.program_select(chan, 0, 128, kit, is_drums=True)
        else:
            synth.program_select(chan, 0, 0, program)

    def schedule(self, events: Iterable[tuple]) -> None:
        """Queue events ``(sample, kind, part, a, b)`` (see the class notes)."""
        for ev in events:
            sample = int(ev[0])
            if sample < self._done:
                raise ValueError(f"event at sample {sample} is before the {self._done} samples already "
                                 "rendered; schedule events ahead of render()")
            # seq keeps equal events in insertion order, so sorting never compares further.
            heapq.heappush(self._queue, (sample, int(ev[1]), int(ev[2]), int(ev[3]),
                                         int(ev[4]) if len(ev) > 4 else 0, self._seq))
            self._seq += 1

    @property
    def frontier(self) -> int:
        """First sample at which a new event may still be scheduled."""
        return self._done

    def _apply(self, ev) -> None:
        _, kind, part, a, b, _ = ev
        s, chan = self._route[part]
        synth = self._synths[s]
        if kind == NOTE_ON:
            synth.noteon(chan, a, max(1, min(127, b)))
        elif kind == NOTE_OFF:
            synth.noteoff(chan, a)
        elif kind == CONTROL:
            synth.control_change(chan, a, max(0, min(127, b)))
        elif kind == BEND:
            synth.pitchbend(chan, max(0, min(16383, a)))
        else:
            raise ValueError(f"unknown event kind {kind}")

    def _render_to(self, stop: int) -> np.ndarray:
        """Render from ``self._done`` to ``stop``, cutting only at events and grid lines."""
        out = np.empty(stop - self._done, dtype=np.float32)
        base = self._done
        while self._done < stop:
            while self._queue and self._queue[0][0] <= self._done:
                self._apply(heapq.heappop(self._queue))
            nxt = (self._done // BLOCK + 1) * BLOCK
            if self._queue:
                nxt = min(nxt, self._queue[0][0])
            nxt = min(nxt, stop)
            n = nxt - self._done
            mix = None
            for synth in self._synths:
                y = np.frombuffer(synth.generate_simple(n), dtype=np.float32)
                m = 0.5 * (y[0::2] + y[1::2])
                mix = m if mix is None else mix + m
            out[self._done - base:nxt - base] = mix
            self._done = nxt
        return out

    def render(self, n: int) -> np.ndarray:
        """Render the next ``n`` samples.

        Returns
        -------
        y : array of shape (n,), float32
            Samples ``position .. position + n`` of the mono mix.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        need = n - self._ahead.shape[0]
        if need > 0:
            stop = -(-(self._done + need) // BLOCK) * BLOCK
            self._ahead = np.concatenate([self._ahead, self._render_to(stop)])
        y, self._ahead = self._ahead[:n].copy(), self._ahead[n:]
        self.position += n
        return y


def midi_events(pm, sr: int) -> tuple[list[tuple[int, bool]], list[tuple]]:
    """Convert a PrettyMIDI object into engine parts and sample-exact events.

    Returns
    -------
    parts : list of (program, is_drum)
        One per instrument, in ``pm.instruments`` order.
    events : list of (sample, kind, part, a, b)
        Note times are rounded to the nearest sample: ``round(t * sr)``. A
        note's off is at least one sample after its on.
    """
    parts, events = [], []
    for k, inst in enumerate(pm.instruments):
        parts.append((int(inst.program), bool(inst.is_drum)))
        for cc in inst.control_changes:
            events.append((int(round(cc.time * sr)), CONTROL, k, int(cc.number), int(cc.value)))
        for pb in inst.pitch_bends:
            events.append((int(round(pb.time * sr)), BEND, k, int(pb.pitch) + 8192, 0))
        for note in inst.notes:
            on = int(round(note.start * sr))
            off = max(on + 1, int(round(note.end * sr)))
            events.append((on, NOTE_ON, k, int(note.pitch), int(note.velocity)))
            events.append((off, NOTE_OFF, k, int(note.pitch), 0))
    events = [e for e in events if e[0] >= 0]
    events.sort()
    return parts, events


def render_midi(pm_or_path, sr: int = 22050, duration_s: float | None = None,
                tail_s: float = 1.5) -> np.ndarray:
    """Render a MIDI file or a ``pretty_midi.PrettyMIDI`` object to mono audio.

    Parameters
    ----------
    pm_or_path : pretty_midi.PrettyMIDI or str or path-like
        The music. Only notes, control changes and pitch bends are used; times
        are taken in seconds from pretty_midi (tempo maps already applied).
    sr : int
        Sample rate in Hz.
    duration_s : float or None
        Exact output length in seconds. ``None``: the end of the last event
        plus ``tail_s`` so that releases ring out.
    tail_s : float
        Seconds rendered after the last event when ``duration_s`` is None.

    Returns
    -------
    y : array of shape (n_samples,), float32
        The mono mix, not normalised. The same input always gives the same
        samples, bit for bit.
    """
    import pretty_midi

    if isinstance(pm_or_path, pretty_midi.PrettyMIDI):
        pm = pm_or_path
    else:
        path = os.fspath(pm_or_path)
        try:
            pm = pretty_midi.PrettyMIDI(path)
        except Exception as exc:
            raise ValueError(f"cannot read MIDI file {path!r}: {exc}") from exc
    parts, events = midi_events(pm, sr)
    if duration_s is None:
        last = max((e[0] for e in events), default=0)
        n = last + int(round(tail_s * sr))
    else:
        n = int(round(duration_s * sr))
    if not parts:
        return np.zeros(n, dtype=np.float32)
    engine = SynthEngine(parts, sr=sr)
    engine.schedule(e for e in events if e[0] < n)
    return engine.render(n)
