"""Melody writers (the ``lead`` role), one bar per call (see :mod:`.parts`)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .harmony import SCALES, scale_pitches
from .parts import Note, _chord_tone_near

__all__ = ["LEAD"]


def _walk(ctx, slots, scale_name, center, span, chord_bias=0.7, leap=0.15, key="lead_last"):
    """A melodic random walk on ``scale_name`` over ``slots`` [(pos, dur)], chord tones on beats."""
    scale = scale_pitches(ctx.tonic, scale_name, center - span, center + span)
    last = ctx.state.get(key, center)
    out = []
    for pos, dur in slots:
        i = int(np.searchsorted(scale, last))
        pull = np.sign(center - last) if abs(center - last) > span / 2 else 0
        step = int(ctx.rng.choice([-1, 1])) if pull == 0 or ctx.rng.random() < 0.3 else int(pull)
        if ctx.rng.random() < leap:
            step *= int(ctx.rng.integers(2, 4))
        p = int(scale[np.clip(i + step, 0, len(scale) - 1)])
        if pos % 1 == 0 and ctx.rng.random() < chord_bias:
            p = _chord_tone_near(ctx, ctx.chord_at(pos), p)
        out.append((pos, dur, p))
        last = p
    ctx.state[key] = last
    return out


def _cells_rhythm(ctx, cells, beats):
    slots, b = [], 0.0
    while b < beats:
        cell = cells[int(ctx.rng.integers(len(cells)))]
        for pos, dur in cell:
            if b + pos < beats:
                slots.append((b + pos, min(dur, beats - b - pos)))
        b += 2.0
    return slots


POP_CELLS = (((0, 1), (1, 0.5), (1.5, 0.5)), ((0, 0.5), (0.5, 0.5), (1, 1)), ((0.5, 0.5), (1, 1)),
             ((0, 1.5), (1.5, 0.5)), ((0, 2),), ((0, 0.5), (0.5, 1), (1.5, 0.5)))


def lead_pop(ctx):
    """Motif-based song melody: a 2-bar motif repeated (A A' B A) over 8-bar periods."""
    period = ctx.index % 8
    if period == 0 or "pop_motif" not in ctx.state:      # A: a new motif every 8 bars
        slots = _cells_rhythm(ctx, POP_CELLS, 2 * ctx.beats)
        ctx.state["pop_motif"] = _walk(ctx, slots, ctx.mode, ctx.registers["lead"], 8, chord_bias=0.8, leap=0.1)
    if period == 4:                                      # B: a contrasting motif, a little higher
        ctx.state["pop_b"] = _walk(ctx, _cells_rhythm(ctx, POP_CELLS, 2 * ctx.beats), ctx.mode,
                                   ctx.registers["lead"] + 3, 8, chord_bias=0.8, leap=0.1)
    motif = ctx.state["pop_b"] if period in (4, 5) and "pop_b" in ctx.state else ctx.state["pop_motif"]
    half = 0 if period % 2 == 0 else ctx.beats
    out = []
    for pos, dur, p in motif:
        if half <= pos < half + ctx.beats:
            q = pos - half
            if period == 3 and q >= 2:  # end of the A' phrase: settle on a chord tone
                p = _chord_tone_near(ctx, ctx.chord_at(q), p)
            out.append(Note(q, dur * 0.95, p, ctx.vel(96)))
    return out


def lead_motif(ctx):
    """Hip-hop loop: a sparse one- or two-bar motif repeated exactly."""
    if "hh_motif" not in ctx.state:
        rng = np.random.default_rng(ctx.variant)
        n = int(rng.integers(3, 6))
        pos = sorted(rng.choice(np.arange(0, 2 * ctx.beats, 0.5), size=n, replace=False))
        scale = scale_pitches(ctx.tonic, "minor_pentatonic", ctx.registers["lead"] - 7, ctx.registers["lead"] + 7)
        pitches = rng.choice(scale, size=n)
        ctx.state["hh_motif"] = [(float(a), float(b)) for a, b in zip(pos, pitches)]
    out = []
    half = (ctx.index % 2) * ctx.beats
    for pos, p in ctx.state["hh_motif"]:
        if half <= pos < half + ctx.beats:
            out.append(Note(pos - half, 0.45, int(p), ctx.vel(80)))
    return out


def lead_disco(ctx):
    """A syncopated two-bar hook, doubled at the octave, repeated every two bars."""
    if "disco_hook" not in ctx.state:
        grid = np.arange(0, 2 * ctx.beats, 0.25)
        rng = np.random.default_rng(ctx.variant)
        on = sorted(rng.choice(grid, size=int(6 + 6 * ctx.density), replace=False))
        slots = [(float(p), 0.22) for p in on]
        ctx.state["disco_hook"] = _walk(ctx, slots, "minor_pentatonic" if ctx.mode != "major" else "major_pentatonic",
                                        ctx.registers["lead"], 7)
    half = (ctx.index % 2) * ctx.beats
    out = []
    for pos, dur, p in ctx.state["disco_hook"]:
        if half <= pos < half + ctx.beats:
            out += [Note(pos - half, dur, p, ctx.vel(92)), Note(pos - half, dur, p + 12, ctx.vel(72))]
    return out


def lead_classical(ctx):
    step = 0.5 if ctx.rng.random() < ctx.density else 1.0
    if ctx.phrase_pos == ctx.phrase_len - 1:  # cadence: a long note on the chord's root or third
        slots = [(k * step, step) for k in range(int((ctx.beats - 2 + (ctx.beats == 3)) / step))]
        notes = _walk(ctx, slots, ctx.mode if ctx.mode in SCALES else "major", ctx.registers["lead"], 10, 0.6, 0.1)
        last = _chord_tone_near(ctx, ctx.chords[-1][0], ctx.state.get("lead_last", ctx.registers["lead"]))
        start = slots[-1][0] + step if slots else 0
        notes.append((start, ctx.beats - start, last))
    else:
        slots = [(k * step, step) for k in range(int(ctx.beats / step))]
        notes = _walk(ctx, slots, ctx.mode if ctx.mode in SCALES else "major", ctx.registers["lead"], 10, 0.6, 0.1)
    return [Note(pos, dur * 0.98, p, ctx.vel(82 if pos % ctx.beats == 0 else 74)) for pos, dur, p in notes]


def lead_blues(ctx):
    """Call and response on a triplet grid: a lick in bars 1-2 of each 4-bar line, bends on some notes."""
    if ctx.index % 4 >= 2 and ctx.rng.random() < 0.5:
        return []
    grid = np.arange(0, ctx.beats, 1 / 3)
    n = max(2, int(round(len(grid) * ctx.density * 0.6)))
    on = sorted(ctx.rng.choice(grid, size=n, replace=False))
    slots = [(float(p), (on[i + 1] if i + 1 < len(on) else ctx.beats) - p) for i, p in enumerate(on)]
    notes = _walk(ctx, slots, "blues", ctx.registers["lead"], 9, chord_bias=0.3, leap=0.1)
    out = []
    for pos, dur, p in notes:
        out.append(Note(pos, min(dur, 1.5) * 0.95, p, ctx.vel(96), swung=False))
        if ctx.rng.random() < 0.3:  # bend up into the note from a semitone below
            ctx.bends += [(pos, -1.0, False), (pos + min(dur, 0.5) * 0.6, 0.0, False)]
    return out


def lead_bebop(ctx):
    if ctx.rng.random() < 0.25:
        ctx.state["lead_last"] = ctx.registers["lead"]
        return []
    start = float(ctx.rng.choice([0.0, 0.5, 1.0]))
    slots = [(p, 0.5) for p in np.arange(start, ctx.beats, 0.5) if ctx.rng.random() < 0.55 + 0.45 * ctx.density]
    notes = _walk(ctx, slots, "mixolydian" if ctx.mode == "major" else "dorian", ctx.registers["lead"], 10,
                  chord_bias=0.8, leap=0.15)
    out = []
    for pos, dur, p in notes:
        if pos % 1 == 0.5 and ctx.rng.random() < 0.3:  # chromatic approach into the next beat
            p = p + int(ctx.rng.choice([-1, 1]))
        out.append(Note(float(pos), 0.45, int(p), ctx.vel(88 if pos % 1 else 78)))
    return out


def lead_country(ctx):
    if ctx.index % 4 == 3 and ctx.rng.random() < 0.6:
        return []
    slots = [(p, 0.5) for p in np.arange(0, ctx.beats, 0.5) if ctx.rng.random() < ctx.density]
    notes = _walk(ctx, slots, "major_pentatonic", ctx.registers["lead"], 9, chord_bias=0.6, leap=0.1)
    out = []
    for pos, dur, p in notes:
        out.append(Note(float(pos), 0.45, p, ctx.vel(90)))
        if ctx.rng.random() < 0.2:  # slide up a whole step
            ctx.bends += [(float(pos), -2.0, True), (float(pos) + 0.2, 0.0, True)]
    return out


def lead_shred(ctx):
    if ctx.index % 4 in (2, 3) and ctx.rng.random() < 0.7:
        return []
    scale = ctx.mode if ctx.mode in ("phrygian", "harmonic_minor") else "minor"
    if ctx.rng.random() < 0.35:  # a held, bent note
        p = _chord_tone_near(ctx, ctx.chords[0][0], ctx.registers["lead"] + 5)
        ctx.bends += [(0.0, -2.0, True), (0.5, 0.0, True)]
        return [Note(0, ctx.beats - 0.1, p, ctx.vel(110))]
    slots = [(k / 4, 0.24) for k in range(ctx.beats * 4)]
    notes = _walk(ctx, slots, scale, ctx.registers["lead"], 12, chord_bias=0.2, leap=0.05)
    return [Note(pos, dur, p, ctx.vel(100 if pos % 1 == 0 else 88)) for pos, dur, p in notes]


def lead_reggae(ctx):
    if ctx.index % 2 == 1:
        return []
    slots = [(p, 0.4) for p in (0.5, 1.0, 1.5, 2.5, 3.0, 3.5) if p < ctx.beats and ctx.rng.random() < 0.5 + ctx.density]
    notes = _walk(ctx, slots, "major_pentatonic" if ctx.mode == "major" else "minor_pentatonic",
                  ctx.registers["lead"], 7)
    return [Note(pos, 0.35, p, ctx.vel(86)) for pos, dur, p in notes]


def lead_rock(ctx):
    """A one-bar pentatonic riff repeated with small variations, or bent lead notes."""
    if "rock_riff" not in ctx.state or ctx.index % 8 == 0:
        slots = [(p, 0.5) for p in np.arange(0, ctx.beats, 0.5) if ctx.rng.random() < ctx.density]
        ctx.state["rock_riff"] = _walk(ctx, slots, "minor_pentatonic", ctx.registers["lead"], 7, 0.3, 0.1)
    out = []
    for pos, dur, p in ctx.state["rock_riff"]:
        if ctx.rng.random() < 0.1:
            p = _chord_tone_near(ctx, ctx.chord_at(pos), p + 2)
        out.append(Note(float(pos), 0.45, int(p), ctx.vel(100)))
    if ctx.index % 4 == 3 and out:
        last = out[-1]
        ctx.bends += [(last.pos, -2.0, True), (last.pos + 0.3, 0.0, True)]
    return out


LEAD: dict[str, Callable] = {
    "pop": lead_pop, "motif": lead_motif, "disco": lead_disco, "classical": lead_classical,
    "blues": lead_blues, "bebop": lead_bebop, "country": lead_country, "shred": lead_shred,
    "reggae": lead_reggae, "rock": lead_rock,
}
