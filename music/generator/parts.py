"""What the part writers share: the note record, the bar context and pitch helpers.

The writers live in :mod:`.bass`, :mod:`.chords` (comp and pad) and
:mod:`.melody` (lead). Every writer has the signature
``writer(ctx) -> list[Note]``. A :class:`Note` holds its position and duration in beats from the start of the bar; the
composer maps beats to seconds (applying swing to notes with ``swung``) and
humanises them. Writers keep what must carry over bars (the last voicing, the
last melody pitch, a repeating motif or riff) in ``ctx.state``, and draw all
randomness from ``ctx.rng`` so that a piece is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .harmony import Chord, nearest_in, voice_lead

__all__ = ["Note", "BarContext"]


@dataclass
class Note:
    pos: float              # beats from the bar start
    dur: float              # beats
    pitch: int
    vel: int
    swung: bool = True      # False for triplet-grid notes (already swung)


@dataclass
class BarContext:
    index: int                              # bar number from the start of the piece
    beats: int                              # beats in this bar
    chords: list                            # [(Chord, start_beat, dur_beats)]
    next_chord: Chord                       # first chord of the next bar
    tonic: int
    mode: str
    registers: dict
    velocity: int
    density: float
    tempo: float
    variant: int
    phrase_len: int
    rng: np.random.Generator
    state: dict
    kicks: list = field(default_factory=list)   # kick positions of this bar, beats
    bends: list = field(default_factory=list)   # lead pitch bends: (pos_beats, semitones, swung)

    @property
    def phrase_pos(self) -> int:
        return self.index % self.phrase_len

    def chord_at(self, pos: float) -> Chord:
        for chord, start, dur in self.chords:
            if start <= pos < start + dur:
                return chord
        return self.chords[-1][0]

    def vel(self, base: float, jitter: float = 6.0) -> int:
        return int(np.clip(base * self.velocity / 100 + self.rng.normal(0, jitter), 1, 127))


def _pcs(chord: Chord, tonic: int) -> list[int]:
    return chord.pitch_classes(tonic)


def _near_pc(pc: int, target: float) -> int:
    """The pitch with pitch class ``pc`` nearest to ``target``."""
    base = int(np.floor(target))
    return nearest_in([p for p in range(base - 12, base + 13) if p % 12 == pc], target)


def _root(ctx, chord: Chord, center: float) -> int:
    p = _near_pc(chord.root_pc(ctx.tonic), center)
    return p + 12 if p < 28 else p   # nothing below E1


def _chord_tone_near(ctx, chord: Chord, target: float) -> int:
    pcs = _pcs(chord, ctx.tonic)
    base = int(np.floor(target))
    return nearest_in([p for p in range(base - 12, base + 13) if p % 12 in pcs], target)


def _voicing(ctx, chord: Chord, role: str, n: int = 4, key: str | None = None) -> list[int]:
    key = key or f"voicing_{role}"
    v = voice_lead(chord, ctx.tonic, ctx.state.get(key), ctx.registers[role], n)
    ctx.state[key] = v
    return v


def _power(ctx, chord: Chord, center: float, octave: bool = True) -> list[int]:
    r = _root(ctx, chord, center)
    return [r, r + 7, r + 12] if octave else [r, r + 7]


#: 16-step rhythm masks shared by metal's guitar chug and bass pedal.
RIFFS = ("x.xxx.xxx.xxx.xx", "xxxx.x.xxxxx.x.x", "x.x.xxx.x.x.xxx.", "xx.xx.xx.xx.x.x.",
         "xxxxxxxx..xx..xx", "x..x..x.xxxxxxxx")


def _riff(ctx) -> str:
    return RIFFS[ctx.variant % len(RIFFS)]
