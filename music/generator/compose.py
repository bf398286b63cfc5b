"""Parameters -> notes -> audio.

:class:`Composer` writes a piece bar by bar from a :class:`~.styles.Params`
record. Bars are written strictly in order from one seeded random stream, so
the first ``n`` bars of a piece never depend on how many bars are asked for
later: an offline clip and an incremental stream (:mod:`.stream`) of the
same ``(genre, track, seed)`` contain the same notes.

Timing: tempo and metre are constant for a piece, bar ``b`` starts at
``b * bar_s`` seconds, and positions inside a bar are in beats. Swing moves
off-beat eighths (or sixteenths for hip-hop) later; triplet-grid notes are
already swung. Humanisation adds a small Gaussian timing offset (clipped to
+-2 sigma) and velocity jitter, both from the same seeded stream.
"""

from __future__ import annotations

import re

import numpy as np

from ..audio import apply_fades, limit_peaks, rms_dbfs, rms_normalize
from ..render import render_midi
from .bass import BASS
from .chords import COMP, PAD
from .drums import write_drums
from .harmony import parse_chord
from .melody import LEAD
from .parts import BarContext
from .styles import GENRES, Params, genre_index, sample_params

__all__ = ["Composer", "compose", "generate_clip", "gtzan_standin", "parse_gtzan_name"]

_ROLE_ORDER = ("drums", "comp", "bass", "lead", "pad")   # drums first: bass may follow the kick


class Composer:
    """Writes a piece bar by bar.

    Parameters
    ----------
    params : Params
        The sampled parameters (see :func:`~.styles.sample_params`).

    Attributes
    ----------
    bar : int
        Index of the next bar to be written.
    """

    def __init__(self, params: Params):
        self.p = params
        self.rng = np.random.default_rng(np.random.SeedSequence(
            [genre_index(params.genre), params.track, params.seed, 0xC0DE]))
        self.state: dict = {}
        self.bar = 0
        self.progression = [[parse_chord(s) for s in bar.split()] for bar in params.progression]
        n = len(self.progression)
        self.phrase_len = 4 if n % 4 == 0 else n

    # ----------------------------------------------------------------- timing
    @property
    def bar_s(self) -> float:
        return self.p.bar_s

    def time_of(self, bar: int, pos: float, swung: bool = True) -> float:
        """Seconds from the start of the piece of position ``pos`` (beats) in ``bar``."""
        beat = 60.0 / self.p.tempo
        if swung and self.p.swing != 0.5:
            u = self.p.swing_unit * 2           # length of one swing pair, in beats
            k, f = divmod(pos, u)
            f /= u
            s = self.p.swing
            f = f / 0.5 * s if f < 0.5 else s + (f - 0.5) / 0.5 * (1 - s)
            pos = (k + f) * u
        return bar * self.bar_s + pos * beat

    def _chords(self, bar: int):
        chords = self.progression[bar % len(self.progression)]
        dur = self.p.beats_per_bar / len(chords)
        return [(c, k * dur, dur) for k, c in enumerate(chords)]

    # ----------------------------------------------------------------- bars
    def next_bar(self) -> list[tuple]:
        """Write the next bar.

        Returns
        -------
        notes : list of (part, start_s, end_s, pitch, velocity)
            ``part`` indexes ``params.parts``; times are seconds from the piece start.
            Pitch bends are returned as ``(part, time_s, None, "bend", semitones)``.
        """
        p, b = self.p, self.bar
        ctx = BarContext(
            index=b, beats=p.beats_per_bar, chords=self._chords(b),
            next_chord=self._chords(b + 1)[0][0], tonic=p.tonic, mode=p.mode,
            registers=p.registers, velocity=p.velocity * self._dynamics(b), density=p.density,
            tempo=p.tempo, variant=p.variant, phrase_len=self.phrase_len, rng=self.rng, state=self.state)
        sd = p.humanize_ms / 1000.0
        out = []
        roles = {part["role"]: k for k, part in enumerate(p.parts)}
        for role in _ROLE_ORDER:
            if role not in roles:
                continue
            k = roles[role]
            style = p.parts[k]["style"]
            if role == "drums":
                hits = write_drums(style, p.drum_variant, b, self.phrase_len, p.fill_prob, self.rng)
                ctx.kicks = [pos for pos, key, _, _ in hits if key in (35, 36)]
                notes = [(pos, 0.25, key, vel, swung) for pos, key, vel, swung in hits]
            else:
                writer = {"bass": BASS, "comp": COMP, "lead": LEAD, "pad": PAD}[role][style]
                notes = [(n.pos, n.dur, n.pitch, n.vel, n.swung) for n in writer(ctx)]
            jitters: dict = {}      # one timing offset per onset, so chord notes stay together
            for pos, dur, pitch, vel, swung in notes:
                if not 0 <= pitch <= 127:
                    continue
                onset = round(pos, 2)
                if onset not in jitters:
                    jitters[onset] = float(np.clip(self.rng.normal(0, sd), -2 * sd, 2 * sd)) if sd > 0 else 0.0
                jitter = jitters[onset]
                start = max(0.0, self.time_of(b, pos, swung) + jitter)
                end = max(start + 0.01, self.time_of(b, pos + dur, swung) + jitter)
                out.append((k, start, end, int(pitch), int(np.clip(vel, 1, 127))))
        if "lead" in roles:
            for pos, semis, swung in ctx.bends:
                out.append((roles["lead"], max(0.0, self.time_of(b, pos, swung)), None, "bend", float(semis)))
        self.bar += 1
        return out

    def _dynamics(self, bar: int) -> float:
        """Velocity scale of a bar: a slow swell over 8-bar spans, amplitude ``params.dynamics``."""
        return 1.0 + self.p.dynamics * float(np.sin(2 * np.pi * ((bar % 8) + 0.5) / 8 - np.pi / 2))


def new_pretty_midi(params: Params):
    """An empty PrettyMIDI with one instrument per part, volumes set at time 0."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=params.tempo)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(params.beats_per_bar, 4, 0.0))
    for part in params.parts:
        inst = pretty_midi.Instrument(program=part["program"], is_drum=part["is_drum"],
                                      name=f"{part['role']}:{part['style']}")
        inst.control_changes.append(pretty_midi.ControlChange(7, int(part["volume"]) if part["volume"] <= 127 else 127, 0.0))
        pm.instruments.append(inst)
    return pm


def add_notes(pm, notes) -> None:
    """Append :meth:`Composer.next_bar` output to ``pm``'s instruments."""
    import pretty_midi

    for k, start, end, pitch, x in notes:
        inst = pm.instruments[k]
        if pitch == "bend":
            inst.pitch_bends.append(pretty_midi.PitchBend(int(np.clip(round(x / 2 * 8192), -8192, 8191)), start))
        else:
            inst.notes.append(pretty_midi.Note(velocity=x, pitch=pitch, start=start, end=end))


def compose(params: Params, duration_s: float):
    """Write the piece's bars covering ``duration_s`` seconds into a PrettyMIDI.

    Returns
    -------
    pm : pretty_midi.PrettyMIDI
        One instrument per entry of ``params.parts``, in that order.
    """
    pm = new_pretty_midi(params)
    comp = Composer(params)
    while comp.bar * comp.bar_s < duration_s:
        add_notes(pm, comp.next_bar())
    return pm


def generate_clip(genre: str, track: int, seed: int = 0, duration_s: float = 15.0, sr: int = 22050,
                  shared_instruments: bool = False, fade_s: float = 2.0, target_dbfs: float = -20.0):
    """Generate one clip of ``genre``: compose, render, fade and RMS-normalise.

    As for ds003720's stimuli, the clip gets ``fade_s`` seconds of linear
    fade-in and fade-out and is then normalised to ``target_dbfs`` RMS; the
    rare clip whose peaks would then exceed -1 dBFS is peak-limited rather
    than turned down (:func:`normalize_with_limiter`), so every clip ends at
    the target RMS.

    Parameters
    ----------
    genre : str
        One of the 10 GTZAN genres.
    track, seed : int
        Non-negative integers; ``(genre, track, seed)`` determines the clip bit for bit.
    duration_s : float
        Clip length in seconds.
    sr : int
        Sample rate in Hz.
    shared_instruments : bool
        Draw every genre's instruments from one common pool.
    fade_s : float
        Fade-in and fade-out length in seconds (0 disables).
    target_dbfs : float or None
        RMS target in dBFS; ``None`` leaves the level as rendered.

    Returns
    -------
    audio : array of shape (round(duration_s * sr),), float32
    info : dict
        The sampled parameters (JSON-serialisable) plus ``duration_s``, ``sr``,
        ``rms_dbfs``, ``peak`` and ``peak_limited``.
    """
    params = sample_params(genre, track, seed, shared_instruments)
    pm = compose(params, duration_s)
    audio = render_midi(pm, sr=sr, duration_s=duration_s)
    if fade_s > 0:
        audio = apply_fades(audio, sr, fade_s, fade_s)
    limited = False
    if target_dbfs is not None:
        audio, limited = normalize_with_limiter(audio, sr, target_dbfs)
    info = params.to_dict()
    info.update(duration_s=float(duration_s), sr=int(sr), rms_dbfs=round(rms_dbfs(audio), 3),
                peak=round(float(np.max(np.abs(audio))) if audio.size else 0.0, 4), peak_limited=limited)
    return audio, info


def normalize_with_limiter(x: np.ndarray, sr: int, target_dbfs: float = -20.0, peak_dbfs: float = -1.0,
                           iterations: int = 4) -> tuple[np.ndarray, bool]:
    """RMS-normalise; if that would push peaks over the ceiling, limit them instead of lowering the level.

    Most clips only need the plain gain (then the result equals
    ``rms_normalize(x, target_dbfs)`` exactly). Clips whose crest factor
    exceeds ``target - peak`` dB get a few rounds of gain-then-limit
    (:func:`music.audio.limit_peaks`, 20 ms attack/release), so they too end
    at the target RMS (within about 0.01 dB) with peaks at most at the ceiling,
    as a mastering limiter would do. Returns the audio and whether it was limited.
    """
    y = rms_normalize(x, target_dbfs, peak_dbfs=None)
    ceiling = 10 ** (peak_dbfs / 20)
    if y.size == 0 or np.max(np.abs(y)) <= ceiling:
        return y, False
    for _ in range(iterations):
        y = rms_normalize(limit_peaks(y, sr, peak_dbfs), target_dbfs, peak_dbfs=None)
    return rms_normalize(y, target_dbfs, peak_dbfs), True


_GTZAN = re.compile(r"^'?([a-z]+)'?\.0*(\d+)(?:\.(?:wav|au|flac))?$")


def parse_gtzan_name(name: str) -> tuple[str, int]:
    """``"blues.00098"`` -> ``("blues", 98)``; also accepts a ``.wav``/``.au`` suffix."""
    m = _GTZAN.match(str(name).strip().lower())
    if not m or m.group(1) not in GENRES:
        raise ValueError(f"not a GTZAN clip name: {name!r}; expected '<genre>.<5-digit track>' "
                         f"such as 'blues.00098', with genre one of {', '.join(GENRES)}")
    return m.group(1), int(m.group(2))


def gtzan_standin(name: str, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """A procedural stand-in for the GTZAN track ``name`` (e.g. ``"blues.00098"``).

    GTZAN tracks are 30 s of 22050 Hz mono; the stand-in is 30 s of the
    genre's generator with the track number as ``track``, normalised to
    -20 dBFS RMS and without fades (ds003720 cut 15 s excerpts from the
    tracks and then applied its fades and RMS normalisation).

    Returns
    -------
    audio : array of shape (30 * sr,), float32
    """
    genre, track = parse_gtzan_name(name)
    audio, _ = generate_clip(genre, track, seed=seed, duration_s=30.0, sr=sr, fade_s=0.0)
    return audio
