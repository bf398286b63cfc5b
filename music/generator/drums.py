"""Drum patterns: one bar of General MIDI percussion per pattern, plus fills.

A pattern maps a GM drum key to a step string over one 4/4 bar: 16 steps
(sixteenths, swing applied by the composer) or 12 steps (triplet eighths,
already swung). Step characters give the velocity: ``X`` accent, ``x``
normal, ``o`` soft, ``g`` ghost, ``.`` rest. Each pattern has variants (the
track picks one) and the writer adds per-bar variation, phrase-start crashes
and phrase-end fills.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PATTERNS", "write_drums"]

KICK, RIM, SNARE, CLAP, HH, PEDAL, OPEN = 36, 37, 38, 39, 42, 44, 46
CRASH, RIDE, CHINA, BELL, TAMB, COWBELL, SHAKER = 49, 51, 52, 53, 54, 56, 70
TOMS = (50, 48, 47, 45, 43, 41)  # high to low
VEL = {"X": 118, "x": 96, "o": 72, "g": 42}

# name: (steps per bar, fill kind, crash every n bars (0: never), variants)
PATTERNS: dict[str, tuple] = {
    "shuffle": (12, "triplet_snare", 4, [
        {KICK: "x.....x.....", SNARE: "...x.....x..", HH: "x.ox.ox.ox.o"},
        {KICK: "x....ox.....", SNARE: "...x.....x..", HH: "x.ox.ox.ox.o", OPEN: "........x..."},
        {KICK: "x..o..x..o..", SNARE: "...x.....x.o", HH: "x.ox.ox.ox.o"},
    ]),
    "slow_shuffle": (12, "triplet_snare", 4, [
        {KICK: "x.....x..o..", SNARE: "...X.....X..", HH: "xooxooxooxoo"},
        {KICK: "x.....x.....", SNARE: "...X.....X..", HH: "xooxooxooxoo", OPEN: "..........x."},
    ]),
    "train": (16, "snare16", 8, [
        {KICK: "x.......x.......", SNARE: "ogggXgggogggXggg", PEDAL: "....x.......x..."},
        {KICK: "x.....o.x.......", SNARE: "gogoXogogogoXogo", HH: "..x...x...x...x."},
    ]),
    "boom_chick": (16, "toms", 8, [
        {KICK: "x.......x.......", RIM: "....x.......x...", HH: "x.o.x.o.x.o.x.o."},
        {KICK: "x.......x.o.....", SNARE: "....x.......x...", HH: "x.x.x.x.x.x.x.x."},
    ]),
    "four_floor": (16, "snare16", 4, [
        {KICK: "x...x...x...x...", CLAP: "....x.......x...", HH: "x...x...x...x...", OPEN: "..x...x...x...x."},
        {KICK: "x...x...x...x...", SNARE: "....x.......x...", HH: "xo..xo..xo..xo..", OPEN: "..x...x...x...x.",
         TAMB: "....x.......x..."},
    ]),
    "four_floor_16": (16, "snare16", 4, [
        {KICK: "x...x...x...x...", CLAP: "....x.......x...", HH: "xoo.xoo.xoo.xoo.", OPEN: "..x...x...x...x."},
        {KICK: "x...x...x...x...", SNARE: "....x.......x...", HH: "xo.oxo.oxo.oxo.o", OPEN: "..x...x...x...x.",
         COWBELL: "x.....x.....x..."},
    ]),
    "boom_bap": (16, "none", 0, [
        {KICK: "x......x..x.....", SNARE: "....X.......X...", HH: "xoxoxoxoxoxoxoxo"},
        {KICK: "x.x.......x..x..", SNARE: "....X.......X...", HH: "x.xox.xox.xox.xo"},
        {KICK: "x......xx.....x.", SNARE: "....X.......X..g", HH: "xgxoxgxoxgxoxgxo", OPEN: "..............x."},
        {KICK: "x.........x.x...", CLAP: "....X.......X...", HH: "x.x.x.x.x.x.x.xx"},
    ]),
    "ride_swing": (12, "triplet_snare", 16, [
        {RIDE: "x..x.xx..x.x", PEDAL: "...x.....x..", KICK: "g..g..g..g.."},
        {RIDE: "x..x.xx..x.x", PEDAL: "...x.....x..", KICK: "g.....g....."},
    ]),
    "double_kick": (16, "toms16", 4, [
        {KICK: "xxxxxxxxxxxxxxxx", SNARE: "....X.......X...", CRASH: "X...x...X...x..."},
        {KICK: "xxxxxxxxxxxxxxxx", SNARE: "....X.......X...", CHINA: "x.x.x.x.x.x.x.x."},
    ]),
    "gallop": (16, "toms16", 4, [
        {KICK: "x.xxx.xxx.xxx.xx", SNARE: "....X.......X...", RIDE: "x.x.x.x.x.x.x.x.", CRASH: "X..............."},
        {KICK: "xx.xxx.xxx.xxx.x", SNARE: "....X.......X...", CRASH: "x...x...x...x..."},
    ]),
    "blast": (16, "toms16", 4, [
        {KICK: "x.x.x.x.x.x.x.x.", SNARE: ".x.x.x.x.x.x.x.x", RIDE: "x.x.x.x.x.x.x.x.", CRASH: "X..............."},
        {KICK: "xxxxxxxxxxxxxxxx", SNARE: "x.x.x.x.x.x.x.x.", CRASH: "x...x...x...x..."},
    ]),
    "halftime": (16, "toms16", 4, [
        {KICK: "x.xx..x.xx.x..xx", SNARE: "........X.......", CHINA: "X...x...X...x..."},
        {KICK: "xxxx..xxxxxx..xx", SNARE: "........X.......", CRASH: "X...x...X...x..."},
    ]),
    "pop_beat": (16, "toms", 8, [
        {KICK: "x.....x.x.......", CLAP: "....x.......x...", HH: "x.o.x.o.x.o.x.o.", TAMB: "oxoxoxoxoxoxoxox"},
        {KICK: "x.......x.x.....", SNARE: "....x.......x...", HH: "x.o.x.o.x.o.x.o.", SHAKER: "oxoxoxoxoxoxoxox"},
    ]),
    "pop_claps": (16, "snare16", 8, [
        {KICK: "x......xx.x.....", CLAP: "....x.......x...", HH: "x.o.x.o.x.o.x.o.", SHAKER: "gogogogogogogogo"},
        {KICK: "x.....x...x.....", CLAP: "....x.......x...", SHAKER: "oxoxoxoxoxoxoxox", TAMB: "....x.......x..."},
    ]),
    "one_drop": (16, "reggae", 8, [
        {KICK: "........X.......", RIM: "........x.......", HH: "x.o.x.o.x.o.x.o."},
        {KICK: "........X.......", SNARE: "........x.......", HH: "x.oox.o.x.oox.o."},
    ]),
    "one_drop_rim": (16, "reggae", 8, [
        {KICK: "........X.......", RIM: "....o...x.......", HH: "x.x.x.x.x.x.x.x."},
        {KICK: "........X.......", RIM: "........x.....o.", HH: "x.o.x.o.x.o.x.o.", OPEN: "..............x."},
    ]),
    "rock_beat": (16, "toms", 4, [
        {KICK: "x.....x.x.......", SNARE: "....X.......X...", OPEN: "x.o.x.o.x.o.x.o."},
        {KICK: "x.....x.x.x.....", SNARE: "....X.......X...", OPEN: "x.x.x.x.x.x.x.x."},
    ]),
    "rock_ride": (16, "toms", 4, [
        {KICK: "x.x...x.x.......", SNARE: "....X.......X...", RIDE: "x.x.x.x.x.x.x.x."},
        {KICK: "x.....xxx.......", SNARE: "....X.......X...", CRASH: "x.x.x.x.x.x.x.x."},
    ]),
}


def _fill(kind: str, steps: int, rng) -> list[tuple[int, int, int]]:
    """Fill hits ``(step, key, velocity)`` over the last beat(s) of a bar."""
    q = steps // 4
    if kind == "none":
        return []
    if kind == "triplet_snare":
        return [(3 * q - 1 + i, SNARE, 70 + 15 * i) for i in range(4)]
    if kind == "snare16":
        return [(3 * q + i, SNARE, 70 + 12 * i) for i in range(q)]
    if kind == "reggae":
        return [(3 * q + 2, SNARE, 90), (3 * q + 3, TOMS[3], 100)]
    if kind == "toms16":
        return [(2 * q + i, (SNARE, SNARE, TOMS[0], TOMS[0], TOMS[2], TOMS[2], TOMS[4], TOMS[5])[i], 112)
                for i in range(2 * q)]
    # "toms": a tom run down over the last beat
    start = int(rng.integers(0, 2))
    return [(3 * q + i, (SNARE, TOMS[0], TOMS[2], TOMS[4])[(i + start) % 4], 100) for i in range(q)]


def write_drums(name: str, variant: int, bar: int, phrase: int, fill_prob: float, rng) -> list[tuple]:
    """One bar of drums.

    Parameters
    ----------
    name : str
        Pattern name (a key of :data:`PATTERNS`).
    variant : int
        The track's variant (modulo the number of variants).
    bar : int
        Bar index from the start of the piece.
    phrase : int
        Phrase length in bars (fills on the last bar, crashes on the first).
    fill_prob : float
        Probability of a fill at a phrase end.
    rng : numpy.random.Generator
        The composer's stream (consumed identically every time).

    Returns
    -------
    hits : list of (position_beats, key, velocity, swung)
        ``swung`` is False for triplet-grid patterns (already swung).
    """
    steps, fill_kind, crash_every, variants = PATTERNS[name]
    pat = variants[variant % len(variants)]
    # Occasionally the B variant for one bar, for variety within the track.
    if len(variants) > 1 and rng.random() < 0.15:
        pat = variants[(variant + 1) % len(variants)]
    hits = {}
    for key, s in pat.items():
        for i, c in enumerate(s):
            if c != ".":
                hits[(i, key)] = VEL[c]
    if bar % phrase == phrase - 1 and rng.random() < fill_prob:
        fill = _fill(fill_kind, steps, rng)
        first = min((f[0] for f in fill), default=steps)
        hits = {k: v for k, v in hits.items() if k[0] < first or k[1] in (KICK, PEDAL)}
        for i, key, v in fill:
            hits[(i, key)] = v
    if crash_every and bar % crash_every == 0:
        hits[(0, CRASH)] = VEL["X"]
        hits.pop((0, HH), None)
        hits.pop((0, RIDE), None)
    if name == "ride_swing":  # snare comping: a few ghost or accent notes on triplet upbeats
        for i in np.flatnonzero(rng.random(steps) < 0.12):
            hits[(int(i), SNARE)] = int(rng.choice([38, 55, 80]))
    out = []
    for (i, key), v in sorted(hits.items()):
        vel = int(np.clip(v + rng.normal(0, 5), 1, 127))
        out.append((4.0 * i / steps, key, vel, steps == 16))
    return out
