"""Music theory for the generator: scales, Roman-numeral chords and voicings.

Pitches are MIDI note numbers (60 = middle C); pitch classes are 0..11 with
C = 0. A chord symbol is a Roman numeral relative to the tonic of a major
scale (``I`` = 0, ``II`` = 2, ... ``VII`` = 11 semitones), optionally
prefixed by ``b``/``#``, upper case for a major and lower case for a minor
triad, followed by a quality suffix: ``7`` (dominant on upper case, minor 7th
on lower case), ``maj7``, ``6``, ``9``, ``13``, ``5`` (power chord), ``dim``,
``m7b5``, ``sus4``. Examples: ``I7``, ``ii7``, ``V13``, ``bIII``, ``i5``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["SCALES", "PITCH_NAMES", "Chord", "parse_chord", "scale_pitches", "nearest_in",
           "voice_chord", "voice_lead"]

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "blues": (0, 3, 5, 6, 7, 10),          # minor pentatonic + b5
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
}

PITCH_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")

_ROMAN = {"i": 0, "ii": 2, "iii": 4, "iv": 5, "v": 7, "vi": 9, "vii": 11}
_QUALITY = {
    # suffix: (intervals on an upper-case numeral, intervals on a lower-case one)
    "": ((0, 4, 7), (0, 3, 7)),
    "7": ((0, 4, 7, 10), (0, 3, 7, 10)),
    "maj7": ((0, 4, 7, 11), (0, 3, 7, 11)),
    "6": ((0, 4, 7, 9), (0, 3, 7, 9)),
    "9": ((0, 4, 7, 10, 14), (0, 3, 7, 10, 14)),
    "13": ((0, 4, 10, 14, 21), (0, 3, 10, 14, 21)),
    "5": ((0, 7), (0, 7)),
    "dim": ((0, 3, 6), (0, 3, 6)),
    "m7b5": ((0, 3, 6, 10), (0, 3, 6, 10)),
    "sus4": ((0, 5, 7), (0, 5, 7)),
}
_SYMBOL = re.compile(r"^([b#]?)(vii|vi|v|iv|iii|ii|i|VII|VI|V|IV|III|II|I)(maj7|m7b5|dim|sus4|13|9|7|6|5|)$")


@dataclass(frozen=True)
class Chord:
    """A chord relative to the tonic.

    Attributes
    ----------
    symbol : str
        The Roman-numeral symbol it was parsed from.
    root : int
        Semitones above the tonic, 0..11.
    intervals : tuple of int
        Semitones above the root, starting with 0.
    minor : bool
        True if the third is minor (or the chord is a power chord on a lower-case numeral).
    """

    symbol: str
    root: int
    intervals: tuple[int, ...]
    minor: bool

    def pitch_classes(self, tonic: int) -> list[int]:
        """Pitch classes (0..11) of the chord in the key with this tonic."""
        return sorted({(tonic + self.root + i) % 12 for i in self.intervals})

    def root_pc(self, tonic: int) -> int:
        return (tonic + self.root) % 12


def parse_chord(symbol: str) -> Chord:
    """Parse a Roman-numeral chord symbol (see the module docstring)."""
    m = _SYMBOL.match(symbol)
    if not m:
        raise ValueError(f"cannot parse chord symbol {symbol!r}; expected e.g. 'I', 'ii7', 'bVII', 'V13'")
    acc, numeral, suffix = m.groups()
    root = (_ROMAN[numeral.lower()] + {"": 0, "b": -1, "#": 1}[acc]) % 12
    lower = numeral.islower()
    intervals = _QUALITY[suffix][1 if lower else 0]
    return Chord(symbol, root, tuple(intervals), lower or suffix in ("dim", "m7b5"))


def scale_pitches(tonic: int, scale: str, lo: int, hi: int) -> np.ndarray:
    """All MIDI pitches of a scale between ``lo`` and ``hi`` inclusive, ascending."""
    pcs = {(tonic + s) % 12 for s in SCALES[scale]}
    return np.array([p for p in range(lo, hi + 1) if p % 12 in pcs], dtype=int)


def nearest_in(pitches, target: float) -> int:
    """The element of ``pitches`` closest to ``target`` (lower one on ties)."""
    pitches = np.asarray(pitches)
    return int(pitches[np.argmin(np.abs(pitches - target) + 1e-3 * (pitches > target))])


def voice_chord(chord: Chord, tonic: int, center: int, n_voices: int = 4) -> list[int]:
    """Close-position voicing of ``chord`` with ``n_voices`` notes around ``center``.

    Chord tones are stacked upwards from the chord tone nearest below
    ``center - 6``; extensions above the octave (9ths, 13ths) are kept as
    such. Returns ascending MIDI pitches.
    """
    base = tonic + chord.root
    tones = sorted(chord.intervals)
    start = center - 6
    root = base + 12 * int(np.floor((start - base) / 12))
    notes, k = [], 0
    while len(notes) < n_voices:
        octave, idx = divmod(k, len(tones))
        p = root + tones[idx] + 12 * octave
        if p >= start:
            notes.append(p)
        k += 1
    return notes


def voice_lead(chord: Chord, tonic: int, previous: list[int] | None, center: int,
               n_voices: int = 4, spread: int = 14) -> list[int]:
    """Voicing of ``chord`` that moves as little as possible from ``previous``.

    Candidates are the inversions of the close voicing near ``center`` (and
    an octave around); the one with the smallest total movement from
    ``previous`` that stays within ``spread`` semitones of ``center`` wins.
    """
    base = voice_chord(chord, tonic, center, n_voices)
    cands = []
    for shift in (-12, 0, 12):
        for inv in range(n_voices):
            v = sorted(p + (12 if i < inv else 0) + shift for i, p in enumerate(base))
            if abs(np.mean(v) - center) <= spread:
                cands.append(v)
    if not cands:
        cands = [base]
    if previous is None:
        return min(cands, key=lambda v: abs(np.mean(v) - center))
    prev = sorted(previous)

    def cost(v):
        m = min(len(v), len(prev))
        return sum(abs(a - b) for a, b in zip(v[:m], prev[:m])) + 0.3 * abs(np.mean(v) - center)

    return min(cands, key=cost)
