"""Chord writers: comping (``comp``) and pads, one bar per call (see :mod:`.parts`)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .harmony import SCALES, scale_pitches
from .parts import Note, _chord_tone_near, _near_pc, _power, _riff, _root, _voicing

__all__ = ["COMP", "PAD"]


def _strum(pos, dur, notes, vel, ctx, down=True, spread=0.02):
    order = notes if down else notes[::-1]
    return [Note(pos + spread * i, dur - spread * i, p, ctx.vel(vel - 3 * i)) for i, p in enumerate(order)]


def comp_boogie_dyads(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        r = _root(ctx, chord, ctx.registers["comp"] - 6)
        for k in range(int(dur * 2)):
            top = (7, 7, 9, 9, 10, 10, 9, 9)[k % 8] if ctx.variant % 2 else (7, 7, 9, 9)[k % 4]
            v = ctx.vel(88 if k % 2 == 0 else 74)
            out += [Note(start + 0.5 * k, 0.4, r, v), Note(start + 0.5 * k, 0.4, r + top, v)]
    return out


def comp_triplet_piano(ctx):
    out = []
    for i in range(ctx.beats * 3):
        pos = i / 3
        chord = ctx.chord_at(pos)
        v = ctx.vel(84 if i % 3 == 0 else 62)
        for p in _voicing(ctx, chord, "comp", 3):
            out.append(Note(pos, 0.3, p, v, swung=False))
    return out


def comp_alberti(ctx):
    step = 0.25 if ctx.tempo <= 100 else 0.5
    out = []
    for chord, start, dur in ctx.chords:
        v = _voicing(ctx, chord, "comp", 3)
        fig = [v[0], v[2], v[1], v[2]]
        for k in range(int(round(dur / step))):
            out.append(Note(start + k * step, step * 0.95, fig[k % 4], ctx.vel(70 if k % 4 else 80)))
    return out


def comp_arpeggio_wide(ctx):
    step = 0.5 if ctx.tempo > 90 else 0.25
    out = []
    for chord, start, dur in ctx.chords:
        v = _voicing(ctx, chord, "comp", 3)
        lo = v[0] - 12
        seq = [lo] + v + [v[0] + 12, v[1] + 12]
        seq = seq + seq[-2:0:-1]
        for k in range(int(round(dur / step))):
            out.append(Note(start + k * step, step * 1.6, seq[k % len(seq)], ctx.vel(72)))
    return out


def comp_block_strings(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        for p in _voicing(ctx, chord, "comp", 4):
            out.append(Note(start, dur - 0.05, p, ctx.vel(74)))
    return out


def comp_counterpoint(ctx):
    out = []
    scale = scale_pitches(ctx.tonic, ctx.mode if ctx.mode in SCALES else "major",
                          ctx.registers["comp"] - 14, ctx.registers["comp"] + 14)
    hi = ctx.state.get("cp_hi", ctx.registers["comp"] + 5)
    lo = ctx.state.get("cp_lo", ctx.registers["comp"] - 7)
    direction = ctx.state.get("cp_dir", 1)
    for k in range(ctx.beats):
        chord = ctx.chord_at(k)
        if k == 0:
            hi = _chord_tone_near(ctx, chord, hi)
        else:
            i = int(np.searchsorted(scale, hi))
            hi = int(scale[np.clip(i + direction, 0, len(scale) - 1)])
        if hi > ctx.registers["comp"] + 10:
            direction = -1
        elif hi < ctx.registers["comp"]:
            direction = 1
        out.append(Note(k, 0.95, hi, ctx.vel(74)))
        if k % 2 == 0:
            lo = _chord_tone_near(ctx, chord, lo - direction * 2)
            lo = min(lo, hi - 5)
            out.append(Note(k, 1.9 if k + 2 <= ctx.beats else 0.95, lo, ctx.vel(68)))
    ctx.state.update(cp_hi=hi, cp_lo=lo, cp_dir=direction)
    return out


def _guitar_voicing(ctx, chord, center):
    r = _root(ctx, chord, center - 7)
    return sorted({r, _chord_tone_near(ctx, chord, r + 7), r + 12, _chord_tone_near(ctx, chord, r + 16),
                   _chord_tone_near(ctx, chord, r + 19)})


def comp_boom_chick(ctx):
    out = []
    for pos in np.arange(1.0, ctx.beats, 2.0):
        chord = ctx.chord_at(pos)
        out += _strum(pos, 0.4, _guitar_voicing(ctx, chord, ctx.registers["comp"])[1:], 88, ctx)
        if ctx.rng.random() < 0.3:
            out += _strum(pos + 0.5, 0.3, _guitar_voicing(ctx, chord, ctx.registers["comp"])[2:], 70, ctx, False)
    return out


STRUMS = ((0, 1, 1.5, 2.5, 3, 3.5), (0, 1, 2, 2.5, 3.5), (0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5))


def comp_strum8(ctx, center_shift=0):
    pattern = STRUMS[ctx.variant % len(STRUMS)]
    out = []
    for i, pos in enumerate(pattern):
        end = pattern[i + 1] if i + 1 < len(pattern) else 4.0
        chord = ctx.chord_at(pos)
        down = pos % 1 == 0
        out += _strum(pos, end - pos, _guitar_voicing(ctx, chord, ctx.registers["comp"] + center_shift),
                      86 if down else 70, ctx, down)
    return out


def comp_offbeat_stabs(ctx):
    out = []
    for pos in np.arange(0.5, ctx.beats, 1.0):
        chord = ctx.chord_at(pos)
        for p in _voicing(ctx, chord, "comp", 4):
            out.append(Note(pos, 0.25, p, ctx.vel(96)))
    return out


def comp_scratch16(ctx):
    rng = np.random.default_rng(ctx.variant)
    accents = rng.random(16) < 0.35
    accents[[2, 6, 10, 14]] = True
    out = []
    for i in range(16):
        chord = ctx.chord_at(i / 4)
        r = _root(ctx, chord, ctx.registers["comp"])
        pair = [r, _chord_tone_near(ctx, chord, r + 10)]
        for p in pair:
            out.append(Note(i / 4, 0.1, p, ctx.vel(100 if accents[i] else 48)))
    return out


def comp_rhodes(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        v = _voicing(ctx, chord, "comp", 4)
        at = start + (0.75 if ctx.rng.random() < 0.3 else 0.0)
        out += [Note(at, max(0.5, start + dur - at - 0.1), p, ctx.vel(68)) for p in v]
        if dur >= 4 and ctx.rng.random() < 0.4:
            out += [Note(start + 2.5, 0.5, p, ctx.vel(58)) for p in v]
    return out


def comp_jazz(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        shell = [i for i in chord.intervals if i not in (0, 7)] or list(chord.intervals)
        center = ctx.registers["comp"]
        v = sorted(_near_pc((ctx.tonic + chord.root + i) % 12, center + 3 * (k - 1)) for k, i in enumerate(shell))
        slots = [0.0, 1.5, 2.0, 2.5, 3.5] if dur >= 4 else [0.0, 0.5, 1.0, 1.5]
        n = int(ctx.rng.integers(1, 3 if dur < 4 else 4))
        for pos in sorted(ctx.rng.choice(slots, size=min(n, len(slots)), replace=False)):
            d = float(ctx.rng.choice([0.4, 0.7, 1.2]))
            out += [Note(start + pos, min(d, dur - pos), p, ctx.vel(72)) for p in v]
    return out


def comp_chug(ctx):
    out = []
    for i, c in enumerate(_riff(ctx)):
        if c == "x":
            chord = ctx.chord_at(i / 4)
            for p in _power(ctx, chord, ctx.registers["comp"]):
                out.append(Note(i / 4, 0.2, p, ctx.vel(110 if i % 4 == 0 else 96)))
    return out


def comp_piano_pulse(ctx):
    step = 0.5 if ctx.variant % 2 == 0 else 1.0
    out = []
    for chord, start, dur in ctx.chords:
        v = _voicing(ctx, chord, "comp", 4)
        for k in range(int(round(dur / step))):
            out += [Note(start + k * step, step * 0.9, p, ctx.vel(84 if (k * step) % 1 == 0 else 68)) for p in v]
    return out


def comp_strum_pop(ctx):
    return comp_strum8(ctx, center_shift=4)


def comp_skank(ctx):
    double = ctx.variant % 2 == 1
    out = []
    for pos in np.arange(1.0, ctx.beats, 2.0):
        chord = ctx.chord_at(pos)
        v = _voicing(ctx, chord, "comp", 3)
        out += [Note(pos, 0.22, p, ctx.vel(96)) for p in v]
        if double:
            out += [Note(pos + 0.25, 0.15, p, ctx.vel(70)) for p in v]
    return out


def comp_rock8(ctx):
    """Driving eighths: power chords on ``5`` symbols, full open-guitar chords otherwise."""
    out = []
    for chord, start, dur in ctx.chords:
        if chord.symbol.endswith("5"):
            v = _power(ctx, chord, ctx.registers["comp"])
        else:
            v = _guitar_voicing(ctx, chord, ctx.registers["comp"] + 5)
        for k in range(int(dur * 2)):
            out += [Note(start + 0.5 * k, 0.45, p, ctx.vel(104 if k % 2 == 0 else 92)) for p in v]
    return out


def comp_power_sustain(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        v = _power(ctx, chord, ctx.registers["comp"])
        push = dur >= 4 and ctx.rng.random() < 0.4
        out += [Note(start, (dur - 0.55) if push else dur - 0.05, p, ctx.vel(108)) for p in v]
        if push:
            out += [Note(start + dur - 0.5, 0.45, p, ctx.vel(100)) for p in v]
    return out


COMP: dict[str, Callable] = {
    "boogie_dyads": comp_boogie_dyads, "triplet_piano": comp_triplet_piano,
    "alberti": comp_alberti, "arpeggio_wide": comp_arpeggio_wide, "block_strings": comp_block_strings,
    "counterpoint": comp_counterpoint, "boom_chick": comp_boom_chick, "strum8": comp_strum8,
    "offbeat_stabs": comp_offbeat_stabs, "scratch16": comp_scratch16, "rhodes": comp_rhodes,
    "jazz_comp": comp_jazz, "chug": comp_chug, "piano_pulse": comp_piano_pulse, "strum_pop": comp_strum_pop,
    "skank": comp_skank, "rock8": comp_rock8, "power_sustain": comp_power_sustain,
}


# --------------------------------------------------------------------------- pad

def pad_sustain(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        out += [Note(start, dur - 0.02, p, ctx.vel(64)) for p in _voicing(ctx, chord, "pad", 4)]
    return out


def pad_swell(ctx):
    out = []
    for chord, start, dur in ctx.chords:
        v = _voicing(ctx, chord, "pad", 3)
        out += [Note(start, dur - 0.02, p, ctx.vel(70)) for p in v + [v[-1] + 12]]
    if ctx.phrase_pos == ctx.phrase_len - 1 and ctx.rng.random() < 0.5:  # string run into the next phrase
        run = scale_pitches(ctx.tonic, ctx.mode, ctx.registers["pad"], ctx.registers["pad"] + 24)[:8]
        out = [n for n in out if n.pos < ctx.beats - 2] + \
              [Note(ctx.beats - 2 + 0.25 * k, 0.24, int(p), ctx.vel(80)) for k, p in enumerate(run)]
    return out


def pad_bubble(ctx):
    out = []
    for pos in np.arange(0.5, ctx.beats, 1.0):
        chord = ctx.chord_at(pos)
        out += [Note(pos, 0.2, p, ctx.vel(70)) for p in _voicing(ctx, chord, "pad", 3)]
    for pos in (0.75, 2.75):
        if ctx.rng.random() < 0.5:
            out.append(Note(pos, 0.15, _root(ctx, ctx.chord_at(pos), ctx.registers["pad"] - 12), ctx.vel(62)))
    return out


PAD: dict[str, Callable] = {"sustain": pad_sustain, "swell": pad_swell, "bubble": pad_bubble}


