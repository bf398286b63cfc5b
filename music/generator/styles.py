"""The 10 GTZAN genres as regions of the generator's parameter space.

A :class:`Style` is a set of distributions: tempo and swing ranges, keys,
modes and chord progressions with weights, General MIDI programs per role,
drum patterns, bass, comping and melody styles, note density, registers and
dynamics. :func:`sample_params` draws one point of a style's region, seeded by
``(genre, track, seed)``, into a :class:`Params` record that the composer
turns into notes.

Roles: ``drums``, ``bass``, ``comp`` (chords), ``lead`` (melody), ``pad``
(sustained or secondary accompaniment). With ``shared_instruments=True`` every
genre draws its programs from the same pools with the same probabilities
(:data:`SHARED_PROGRAMS`, Standard drum kit), so genres differ only in what
is played: rhythm, harmony, tempo, register, density and dynamics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .harmony import PITCH_NAMES, parse_chord

__all__ = ["GENRES", "Style", "STYLES", "SHARED_PROGRAMS", "Params", "sample_params"]

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")

#: The common pools of ``shared_instruments`` mode, identical for every genre:
#: piano, clean electric guitar, drawbar organ, string ensemble, saw lead, fingered bass.
SHARED_PROGRAMS = {
    "comp": (0, 27, 16, 48),
    "lead": (0, 27, 16, 48, 81),
    "bass": (33,),
    "pad": (48, 16),
    "kit": (0,),
}

ALL_KEYS = tuple(range(12))


@dataclass(frozen=True)
class Style:
    """One genre's region of parameter space (all ranges inclusive).

    Progressions are lists of bars; a bar holding two symbols separated by a
    space splits the bar between them. ``harmony`` entries are
    ``(weight, mode, progression)``; ``mode`` names the scale of the melody.
    Pattern and style names are keys of :data:`.drums.PATTERNS` and of the
    writer tables ``BASS`` (:mod:`.bass`), ``COMP`` and ``PAD`` (:mod:`.chords`)
    and ``LEAD`` (:mod:`.melody`).
    """

    name: str
    tempo: tuple[float, float]
    harmony: tuple
    tonics: tuple[int, ...]
    programs: dict
    kits: tuple[int, ...]
    drums: tuple[str, ...]
    bass: tuple[str, ...]
    comp: tuple[str, ...]
    lead: tuple[str, ...]
    pad: tuple[str, ...] = ("sustain",)
    roles: dict = field(default_factory=lambda: {"lead": 0.8, "pad": 0.3})
    swing: tuple[float, float] = (0.5, 0.5)
    swing_unit: float = 0.5
    meters: tuple = ((4, 1.0),)
    density: tuple[float, float] = (0.4, 0.7)
    registers: dict = field(default_factory=dict)
    velocity: tuple[int, int] = (80, 100)
    dynamics: float = 0.05
    humanize_ms: float = 6.0
    levels: dict = field(default_factory=dict)
    fill_prob: float = 0.6


_REG = {"bass": (36, 43), "comp": (58, 64), "lead": (70, 76), "pad": (60, 66)}
_LVL = {"drums": 100, "bass": 100, "comp": 90, "lead": 100, "pad": 70}


def _style(**kw) -> Style:
    kw["registers"] = {**_REG, **kw.get("registers", {})}
    kw["levels"] = {**_LVL, **kw.get("levels", {})}
    return Style(**kw)


BLUES12 = ("I7", "IV7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "IV7", "I7", "V7")
BLUES12_SLOW = ("I7", "I7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "V7", "I7", "V7")
BLUES8 = ("I7", "V7", "IV7", "IV7", "I7", "V7", "I7", "V7")
BLUES_MINOR = ("i7", "i7", "i7", "i7", "iv7", "iv7", "i7", "i7", "bVI7", "V7", "i7", "V7")

STYLES: dict[str, Style] = {
    "blues": _style(
        name="blues", tempo=(84, 124), swing=(0.64, 0.68),
        harmony=((3, "mixolydian", BLUES12), (2, "mixolydian", BLUES12_SLOW),
                 (1, "mixolydian", BLUES8), (1, "dorian", BLUES_MINOR)),
        tonics=(4, 9, 7, 0, 10, 2, 5),
        programs={"comp": (27, 29, 27, 29, 0), "lead": (22, 29, 27),
                  "bass": (33, 32), "pad": (16,)},
        kits=(0, 8), drums=("shuffle", "slow_shuffle"), bass=("boogie", "boogie_walk"),
        comp=("boogie_dyads", "boogie_dyads", "triplet_piano"), lead=("blues",),
        roles={"lead": 0.95, "pad": 0.2}, density=(0.5, 0.8),
        registers={"bass": (36, 42), "comp": (58, 64), "lead": (62, 72)},
        velocity=(76, 96), levels={"drums": 100, "lead": 112}),
    "classical": _style(
        name="classical", tempo=(60, 138), meters=((4, 0.6), (3, 0.4)),
        harmony=((3, "major", ("I", "IV", "V7", "I")), (2, "major", ("I", "vi", "ii", "V7")),
                 (2, "major", ("I", "V", "vi", "iii", "IV", "I", "IV", "V7")),
                 (1, "major", ("I", "ii7", "V7", "I", "IV", "ii", "V7", "I")),
                 (2, "harmonic_minor", ("i", "iv", "V7", "i")),
                 (1, "harmonic_minor", ("i", "bVI", "iv", "V7")),
                 (1, "harmonic_minor", ("i", "iv", "bVII", "bIII", "bVI", "iim7b5", "V7", "i"))),
        tonics=ALL_KEYS,
        programs={"comp": (0, 48, 49, 6, 46), "lead": (40, 73, 68, 71, 60, 41, 0),
                  "bass": (42, 43, 70), "pad": (48, 49, 60, 19)},
        kits=(), drums=(), bass=("classical",),
        comp=("alberti", "arpeggio_wide", "block_strings", "counterpoint"), lead=("classical",),
        roles={"lead": 1.0, "pad": 0.4}, density=(0.5, 1.0),
        registers={"bass": (36, 48), "comp": (55, 67), "lead": (70, 82)},
        velocity=(56, 92), dynamics=0.3, humanize_ms=0.0,
        levels={"bass": 90, "comp": 95, "pad": 80}),
    "country": _style(
        name="country", tempo=(100, 160), swing=(0.5, 0.56),
        harmony=((3, "major", ("I", "I", "IV", "I", "V", "V", "I", "I")),
                 (3, "major", ("I", "IV", "V", "I")), (2, "major", ("I", "IV", "I", "V")),
                 (2, "major", ("I", "I", "IV", "IV", "V7", "V7", "I", "I")),
                 (1, "major", ("I", "V", "IV", "I"))),
        tonics=(7, 2, 9, 4, 0),
        programs={"comp": (25, 105, 25), "lead": (110, 105, 25),
                  "bass": (33,), "pad": (110,)},
        kits=(0, 8), drums=("train", "train", "boom_chick"), bass=("root_fifth",),
        comp=("boom_chick", "boom_chick", "strum8"), lead=("country",),
        roles={"lead": 0.85, "pad": 0.25}, density=(0.5, 0.8),
        registers={"bass": (36, 43), "comp": (55, 62), "lead": (67, 76)},
        velocity=(80, 100), levels={"drums": 85}),
    "disco": _style(
        name="disco", tempo=(114, 130),
        harmony=((2, "dorian", ("i7", "iv7", "i7", "iv7")), (2, "minor", ("i7", "bVII", "bVI", "bVII")),
                 (1, "dorian", ("i7", "i7", "IV7", "IV7")), (2, "major", ("ii7", "V7", "Imaj7", "vi7")),
                 (1, "major", ("Imaj7", "ii7", "iii7", "ii7"))),
        tonics=ALL_KEYS,
        programs={"comp": (28, 4), "lead": (48, 50, 61),
                  "bass": (36, 38), "pad": (48, 50)},
        kits=(24, 0), drums=("four_floor", "four_floor_16"), bass=("octave",),
        comp=("offbeat_stabs", "scratch16"), lead=("disco",), pad=("swell",),
        roles={"lead": 0.85, "pad": 1.0}, density=(0.6, 0.9),
        registers={"bass": (34, 41), "comp": (60, 66), "lead": (72, 80)},
        velocity=(90, 110), dynamics=0.02, humanize_ms=3.0,
        levels={"drums": 108, "bass": 110}),
    "hiphop": _style(
        name="hiphop", tempo=(82, 100), swing=(0.56, 0.64), swing_unit=0.25,
        harmony=((2, "minor", ("i7", "i7", "bVImaj7", "bVImaj7")), (2, "dorian", ("i9", "iv9")),
                 (2, "minor", ("i7", "bVII", "bVI", "V7")), (1, "minor", ("i7", "v7")),
                 (1, "dorian", ("i7", "i7", "i7", "iv7"))),
        tonics=ALL_KEYS,
        programs={"comp": (4, 5, 89), "lead": (10, 8, 80),
                  "bass": (38, 39), "pad": (89, 52, 94)},
        kits=(25, 24), drums=("boom_bap",), bass=("sub",),
        comp=("rhodes",), lead=("motif",),
        roles={"lead": 0.7, "pad": 0.4}, density=(0.25, 0.45),
        registers={"bass": (29, 36), "comp": (56, 63), "lead": (72, 84)},
        velocity=(70, 92), dynamics=0.02, humanize_ms=4.0,
        levels={"drums": 118, "bass": 115, "comp": 78, "lead": 78, "pad": 62}),
    "jazz": _style(
        name="jazz", tempo=(110, 200), swing=(0.62, 0.7),
        harmony=((3, "major", ("ii9", "V13", "Imaj7", "Imaj7")), (2, "major", ("Imaj7", "vi7", "ii9", "V13")),
                 (2, "major", ("iii7", "vi7", "ii7", "V7")),
                 (2, "major", ("Imaj7 vi7", "ii7 V7", "iii7 VI7", "ii7 V7")),
                 (2, "dorian", ("iim7b5", "V7", "i6", "i6")),
                 (1, "major", ("Imaj7", "IVmaj7", "iii7 VI7", "ii9 V13"))),
        tonics=(5, 10, 3, 0, 7, 8, 2),
        programs={"comp": (0, 26, 11), "lead": (66, 65, 56, 59, 57),
                  "bass": (32,), "pad": (61, 57)},
        kits=(32, 40), drums=("ride_swing",), bass=("walking",),
        comp=("jazz_comp",), lead=("bebop",),
        roles={"lead": 0.9, "pad": 0.1}, density=(0.55, 0.9),
        registers={"bass": (36, 43), "comp": (57, 64), "lead": (64, 74)},
        velocity=(66, 92), dynamics=0.1, humanize_ms=8.0,
        levels={"drums": 86, "bass": 110, "comp": 84}, fill_prob=0.3),
    "metal": _style(
        name="metal", tempo=(145, 200),
        harmony=((3, "minor", ("i5", "i5", "bVI5", "bVII5")), (3, "phrygian", ("i5", "bII5", "i5", "bVII5")),
                 (2, "minor", ("i5", "bVI5", "bIII5", "bVII5")), (2, "harmonic_minor", ("i5", "iv5", "bVI5", "V5")),
                 (1, "phrygian", ("i5", "i5", "bII5", "i5"))),
        tonics=(4, 2, 1, 11, 9, 0),
        programs={"comp": (30,), "lead": (30, 29), "bass": (34,), "pad": (52, 19)},
        kits=(16,), drums=("double_kick", "gallop", "blast", "halftime"), bass=("pedal",),
        comp=("chug",), lead=("shred",),
        roles={"lead": 0.55, "pad": 0.2}, density=(0.8, 1.0),
        registers={"bass": (28, 35), "comp": (40, 47), "lead": (64, 76)},
        velocity=(100, 120), dynamics=0.02, humanize_ms=3.0,
        levels={"drums": 112, "comp": 112, "bass": 105, "pad": 70}),
    "pop": _style(
        name="pop", tempo=(100, 125), swing=(0.5, 0.53),
        harmony=((3, "major", ("I", "V", "vi", "IV")), (2, "major", ("vi", "IV", "I", "V")),
                 (2, "major", ("I", "vi", "IV", "V")), (1, "major", ("IV", "I", "V", "vi")),
                 (1, "major", ("I", "IV", "vi", "V"))),
        tonics=ALL_KEYS,
        programs={"comp": (0, 4, 90), "lead": (80, 54, 85),
                  "bass": (33, 38), "pad": (89, 94)},
        kits=(0, 24), drums=("pop_beat", "pop_claps"), bass=("pop8",),
        comp=("piano_pulse", "strum_pop"), lead=("pop",),
        roles={"lead": 1.0, "pad": 0.9}, density=(0.45, 0.7),
        registers={"bass": (36, 43), "comp": (62, 70), "lead": (72, 79), "pad": (64, 72)},
        velocity=(80, 100), levels={"lead": 108}),
    "reggae": _style(
        name="reggae", tempo=(70, 88), swing=(0.5, 0.6),
        harmony=((2, "major", ("I", "IV", "I", "IV")), (2, "major", ("I", "IV", "V", "IV")),
                 (2, "minor", ("i", "iv", "i", "v")), (1, "dorian", ("i7", "IV7", "i7", "IV7")),
                 (1, "minor", ("i", "bVII", "bVI", "bVII")), (1, "major", ("I", "vi", "IV", "V"))),
        tonics=ALL_KEYS,
        programs={"comp": (27, 28), "lead": (61, 57, 66),
                  "bass": (33, 35), "pad": (16, 17, 18)},
        kits=(0, 8), drums=("one_drop", "one_drop_rim"), bass=("reggae",),
        comp=("skank",), lead=("reggae",), pad=("bubble",),
        roles={"lead": 0.5, "pad": 0.9}, density=(0.3, 0.5),
        registers={"bass": (31, 38), "comp": (64, 70), "lead": (65, 74), "pad": (55, 60)},
        velocity=(76, 96), levels={"bass": 122, "drums": 96, "comp": 82}, fill_prob=0.4),
    "rock": _style(
        name="rock", tempo=(100, 140),
        harmony=((3, "major", ("I5", "bIII5", "IV5", "IV5")), (2, "major", ("I", "IV", "V", "IV")),
                 (2, "mixolydian", ("I", "bVII", "IV", "I")), (2, "major", ("I5", "IV5", "V5", "IV5")),
                 (1, "minor", ("i", "bVI", "bVII", "i"))),
        tonics=(4, 9, 2, 7, 0, 11),
        programs={"comp": (29,), "lead": (29, 30), "bass": (34, 33), "pad": (18,)},
        kits=(8, 0), drums=("rock_beat", "rock_ride"), bass=("drive8",),
        comp=("rock8", "rock8", "power_sustain"), lead=("rock",),
        roles={"lead": 0.65, "pad": 0.3}, density=(0.5, 0.8),
        registers={"bass": (33, 40), "comp": (50, 57), "lead": (62, 72)},
        velocity=(92, 112), dynamics=0.03, humanize_ms=5.0,
        levels={"drums": 108, "comp": 105}),
}


@dataclass
class Params:
    """One sampled point of a genre's region: everything the composer needs.

    All fields are JSON-serialisable (see :meth:`to_dict`). Times are in
    beats unless named ``_s``; tempo in BPM; pitches are MIDI numbers.
    """

    genre: str
    track: int
    seed: int
    shared_instruments: bool
    tempo: float
    beats_per_bar: int
    swing: float
    swing_unit: float
    tonic: int
    key: str
    mode: str
    progression: list
    parts: list                 # dicts: role, program, is_drum, volume, style
    drum_pattern: str | None
    drum_variant: int
    registers: dict             # role -> center pitch
    velocity: int
    dynamics: float
    density: float
    humanize_ms: float
    fill_prob: float
    variant: int                # a small integer that selects sub-variants in the part writers

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def bar_s(self) -> float:
        """Length of one bar in seconds."""
        return self.beats_per_bar * 60.0 / self.tempo


def _choice(rng, items, weights=None):
    items = list(items)
    if weights is None:
        return items[int(rng.integers(len(items)))]
    w = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def _uniform(rng, lo_hi) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def genre_index(genre: str) -> int:
    if genre not in GENRES:
        raise ValueError(f"unknown genre {genre!r}; expected one of {', '.join(GENRES)}")
    return GENRES.index(genre)


def sample_params(genre: str, track: int = 0, seed: int = 0, shared_instruments: bool = False) -> Params:
    """Draw one point of ``genre``'s region, determined by ``(genre, track, seed)``.

    Parameters
    ----------
    genre : str
        One of :data:`GENRES`.
    track, seed : int
        Non-negative integers; together with the genre they seed everything.
    shared_instruments : bool
        Draw programs from :data:`SHARED_PROGRAMS` (the same for every genre).
    """
    g = genre_index(genre)
    if int(track) != track or track < 0 or int(seed) != seed or seed < 0:
        raise ValueError(f"track and seed must be non-negative integers, got {track!r}, {seed!r}")
    st = STYLES[genre]
    rng = np.random.default_rng(np.random.SeedSequence([g, int(track), int(seed), 0x5EED]))
    # Instrument draws use their own stream, so shared and normal mode share all other parameters.
    irng = np.random.default_rng(np.random.SeedSequence([g, int(track), int(seed), 0x1A57]))

    tempo = round(_uniform(rng, st.tempo), 1)
    beats = _choice(rng, [m for m, _ in st.meters], [w for _, w in st.meters])
    swing = round(_uniform(rng, st.swing), 3)
    tonic = int(_choice(rng, st.tonics))
    _, mode, prog = _choice(rng, st.harmony, [h[0] for h in st.harmony])
    for bar in prog:
        for sym in bar.split():
            parse_chord(sym)
    registers = {r: int(rng.integers(lo, hi + 1)) for r, (lo, hi) in st.registers.items()}
    velocity = int(rng.integers(st.velocity[0], st.velocity[1] + 1))
    density = round(_uniform(rng, st.density), 3)
    variant = int(rng.integers(0, 1 << 16))
    drum_pattern = _choice(rng, st.drums) if st.drums else None
    drum_variant = int(rng.integers(0, 4))
    styles = {"bass": _choice(rng, st.bass), "comp": _choice(rng, st.comp),
              "lead": _choice(rng, st.lead), "pad": _choice(rng, st.pad)}
    present = {"lead": bool(rng.random() < st.roles.get("lead", 0.8)),
               "pad": bool(rng.random() < st.roles.get("pad", 0.3))}

    pools = SHARED_PROGRAMS if shared_instruments else {**st.programs, "kit": st.kits}
    parts = []
    if drum_pattern is not None:
        parts.append({"role": "drums", "program": int(_choice(irng, pools["kit"])), "is_drum": True,
                      "volume": st.levels["drums"], "style": drum_pattern})
    for role in ("bass", "comp", "lead", "pad"):
        program = int(_choice(irng, pools[role]))
        if role in present and not present[role]:
            continue
        parts.append({"role": role, "program": program, "is_drum": False,
                      "volume": st.levels[role], "style": styles[role]})
    return Params(
        genre=genre, track=int(track), seed=int(seed), shared_instruments=bool(shared_instruments),
        tempo=tempo, beats_per_bar=int(beats), swing=swing, swing_unit=st.swing_unit,
        tonic=tonic, key=f"{PITCH_NAMES[tonic]} {mode}", mode=mode, progression=list(prog),
        parts=parts, drum_pattern=drum_pattern, drum_variant=drum_variant, registers=registers,
        velocity=velocity, dynamics=st.dynamics, density=density, humanize_ms=st.humanize_ms,
        fill_prob=st.fill_prob, variant=variant)
