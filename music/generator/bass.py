"""Bass writers: one bar of bass line per call (see :mod:`.parts`)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .harmony import SCALES, nearest_in, scale_pitches
from .parts import Note, _chord_tone_near, _pcs, _riff, _root

__all__ = ["BASS"]


def bass_boogie(ctx):
    third = 3 if ctx.chords[0][0].minor else 4
    figs = ([0, 0, third, third, 7, 7, 9, 9], [0, third, 7, 9, 10, 9, 7, third], [0, 0, 7, 7, 9, 9, 10, 10])
    fig = figs[ctx.variant % 3]
    out = []
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["bass"])
        for k in range(int(dur * 2)):
            out.append(Note(start + 0.5 * k, 0.42, r + fig[k % 8], ctx.vel(100 if k % 2 == 0 else 82)))
    return out


def bass_boogie_walk(ctx):
    out = []
    up = ctx.index % 2 == 0
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["bass"])
        third = 3 if chord.minor else 4
        line = [0, third, 7, 9] if up else [10, 9, 7, third]
        for k in range(int(dur)):
            out.append(Note(start + k, 0.9, r + line[k % 4], ctx.vel(98)))
    return out


def bass_root_fifth(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["bass"])
        fifth = r - 5 if r - 5 >= 28 else r + 7
        for k, beat in enumerate(np.arange(0, dur, 2.0)):
            out.append(Note(start + beat, 0.9, r if k % 2 == 0 else fifth, ctx.vel(100)))
    if ctx.next_chord.root != ctx.chords[-1][0].root and ctx.beats == 4 and ctx.rng.random() < 0.6:
        target = _root(ctx, ctx.next_chord, ctx.registers["bass"])
        scale = scale_pitches(ctx.tonic, "major", target - 12, target - 1)
        out = [n for n in out if n.pos < 2]
        for k, p in enumerate(scale[-3:]):
            out.append(Note(2.0 + 0.5 * k + (0.5 if k else 0), 0.45, int(p), ctx.vel(92)))
    return out


def bass_octave(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["bass"])
        for k in range(int(dur * 2)):
            p = r + (12 if k % 2 else 0)
            if ctx.index % 2 == 1 and start + 0.5 * k >= 3.0 and k % 2 == 0:
                p = r + 7
            out.append(Note(start + 0.5 * k, 0.32, p, ctx.vel(104 if k % 2 == 0 else 92)))
    return out


def bass_sub(ctx):
    hits = sorted(set([0.0] + [k for k in ctx.kicks if k < ctx.beats]))
    out = []
    for i, pos in enumerate(hits):
        end = hits[i + 1] if i + 1 < len(hits) else ctx.beats
        chord = ctx.chord_at(pos)
        r = _root(ctx, chord, ctx.registers["bass"])
        p = r if pos < 2 or ctx.rng.random() < 0.7 else r + int(ctx.rng.choice([7, 10, 12]))
        out.append(Note(pos, max(0.25, min(end - pos - 0.05, 2.0)), p, ctx.vel(108)))
    return out


def bass_walking(ctx):
    out = []
    center = ctx.registers["bass"]
    last = ctx.state.get("walk_last")
    for idx, (chord, start, dur) in enumerate(ctx.chords):
        nxt = ctx.chords[idx + 1][0] if idx + 1 < len(ctx.chords) else ctx.next_chord
        r = _root(ctx, chord, center if last is None else 0.5 * (last + center))
        target = _root(ctx, nxt, r)
        n = int(dur)
        line = [r]
        scale = scale_pitches(ctx.tonic, "mixolydian" if not chord.minor else "dorian", center - 14, center + 14)
        p = r
        for k in range(1, n):
            if k == n - 1:
                p = target + int(ctx.rng.choice([-1, 1])) if ctx.rng.random() < 0.6 else \
                    int(nearest_in(scale, target + (2 if p > target else -2)))
            else:
                direction = 1 if target > p or p < center - 6 else -1
                if ctx.rng.random() < 0.5:
                    cands = [q for q in range(p + 1, p + 6) if q % 12 in _pcs(chord, ctx.tonic)] if direction > 0 \
                        else [q for q in range(p - 5, p) if q % 12 in _pcs(chord, ctx.tonic)]
                    p = cands[0] if direction > 0 and cands else (cands[-1] if cands else p + direction * 2)
                else:
                    i = int(np.searchsorted(scale, p))
                    p = int(scale[np.clip(i + direction, 0, len(scale) - 1)])
            line.append(p)
        for k, q in enumerate(line):
            out.append(Note(start + k, 0.92, int(q), ctx.vel(96 if k % 2 == 0 else 88)))
        last = line[-1]
    ctx.state["walk_last"] = last
    return out


def bass_pedal(ctx):
    out = []
    for i, c in enumerate(_riff(ctx)):
        if c == "x":
            chord = ctx.chord_at(i / 4)
            out.append(Note(i / 4, 0.22, _root(ctx, chord, ctx.registers["bass"]), ctx.vel(104)))
    return out


def bass_pop8(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["bass"])
        for k in range(int(dur * 2)):
            p = r
            if start + 0.5 * k == ctx.beats - 0.5 and ctx.rng.random() < 0.4:
                p = r + int(ctx.rng.choice([7, 12, -1]))
            out.append(Note(start + 0.5 * k, 0.45, p, ctx.vel(96 if k % 2 == 0 else 84)))
    return out


def bass_reggae(ctx):
    riff = ctx.state.get("reggae_riff")
    if riff is None:
        rng = np.random.default_rng(ctx.variant)
        pos = sorted(rng.choice([0.5, 1.0, 1.5, 2.5, 3.0, 3.5], size=int(rng.integers(4, 6)), replace=False))
        ints = [0] + [int(rng.choice([0, 7, 12, 10, 3, 5, 7])) for _ in pos[1:]]
        riff = ctx.state["reggae_riff"] = list(zip(pos, ints))
    out = []
    for i, (pos, iv) in enumerate(riff):
        end = riff[i + 1][0] if i + 1 < len(riff) else ctx.beats + 0.5
        chord = ctx.chord_at(pos)
        r = _root(ctx, chord, ctx.registers["bass"])
        if iv == 3 and not chord.minor:
            iv = 4
        out.append(Note(pos, max(0.3, end - pos - 0.1), r + iv, ctx.vel(108)))
    return out


def bass_drive8(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["bass"])
        for k in range(int(dur * 2)):
            out.append(Note(start + 0.5 * k, 0.46, r, ctx.vel(106 if k % 2 == 0 else 94)))
    return out


def bass_classical(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["bass"])
        choice = (ctx.variant + ctx.index) % 3
        if dur >= 3 and choice == 0:
            out.append(Note(start, dur - 0.05, r, ctx.vel(80)))
        elif dur >= 3 and choice == 1:
            half = 2.0 if dur == 4 else 1.0
            other = _chord_tone_near(ctx, chord, r + 7) if ctx.rng.random() < 0.5 else r - 12 if r - 12 >= 28 else r
            out.append(Note(start, half - 0.05, r, ctx.vel(82)))
            out.append(Note(start + half, dur - half - 0.05, other, ctx.vel(76)))
        else:
            scale = scale_pitches(ctx.tonic, ctx.mode if ctx.mode in SCALES else "major", r - 12, r + 12)
            i = int(np.searchsorted(scale, r))
            for k in range(int(dur)):
                out.append(Note(start + k, 0.95, int(scale[np.clip(i - k, 0, len(scale) - 1)]), ctx.vel(78)))
    return out


BASS: dict[str, Callable] = {
    "boogie": bass_boogie, "boogie_walk": bass_boogie_walk, "root_fifth": bass_root_fifth,
    "octave": bass_octave, "sub": bass_sub, "walking": bass_walking, "pedal": bass_pedal,
    "pop8": bass_pop8, "reggae": bass_reggae, "drive8": bass_drive8, "classical": bass_classical,
}


