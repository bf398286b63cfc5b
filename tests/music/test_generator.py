"""Tests for the procedural genre generator (music.generator)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pretty_midi")
pytest.importorskip("tinysoundfont")

from music.audio import apply_fades, rms_dbfs, rms_normalize  # noqa: E402
from music.generator import (GENRES, SHARED_PROGRAMS, STYLES, GeneratorStream, compose,  # noqa: E402
                             generate_clip, gtzan_standin, parse_gtzan_name, sample_params)
from music.generator.harmony import parse_chord  # noqa: E402
from music.render import render_midi  # noqa: E402

SR = 22050
KICKS = (35, 36)


def _drum_notes(pm, keys):
    drums = [i for i in pm.instruments if i.is_drum]
    return sorted(n.start for i in drums for n in i.notes if n.pitch in keys)


def _part(pm, role):
    return next(i for i in pm.instruments if i.name.startswith(role + ":"))


# --------------------------------------------------------------------------- harmony

@pytest.mark.parametrize("symbol, pcs", [
    ("I", [0, 4, 7]), ("V7", [2, 5, 7, 11]), ("ii7", [0, 2, 5, 9]), ("bVII", [2, 5, 10]),
    ("i5", [0, 7]), ("V13", [4, 5, 7, 9, 11]), ("iim7b5", [0, 2, 5, 8]),
])
def test_parse_chord_pitch_classes_in_c(symbol, pcs):
    assert parse_chord(symbol).pitch_classes(0) == pcs


def test_parse_chord_rejects_garbage():
    with pytest.raises(ValueError, match="cannot parse"):
        parse_chord("H7")


# --------------------------------------------------------------------------- parameters

def test_sample_params_json_and_deterministic():
    for g in GENRES:
        a = sample_params(g, 7, 3).to_dict()
        assert a == sample_params(g, 7, 3).to_dict()
        json.dumps(a)
    assert sample_params("jazz", 1).to_dict() != sample_params("jazz", 2).to_dict()


def test_sample_params_stay_in_their_region():
    for g in GENRES:
        st = STYLES[g]
        for t in range(25):
            p = sample_params(g, t)
            assert st.tempo[0] <= p.tempo <= st.tempo[1]
            assert p.tonic in st.tonics
            progs = {part["role"]: part["program"] for part in p.parts}
            for role, prog in progs.items():
                pool = st.kits if role == "drums" else st.programs[role]
                assert prog in pool, (g, role, prog)
    assert all(sample_params("classical", t).drum_pattern is None for t in range(25))
    assert all(sample_params("metal", t).tempo >= 140 for t in range(25))
    assert all(70 <= sample_params("reggae", t).tempo <= 90 for t in range(25))
    assert all(80 <= sample_params("hiphop", t).tempo <= 100 for t in range(25))


def test_shared_instruments_use_one_pool_and_change_nothing_else():
    for g in GENRES:
        for t in range(10):
            shared, normal = sample_params(g, t, shared_instruments=True), sample_params(g, t)
            for part in shared.parts:
                pool = SHARED_PROGRAMS["kit" if part["is_drum"] else part["role"]]
                assert part["program"] in pool
            a, b = shared.to_dict(), normal.to_dict()
            for d in (a, b):
                d.pop("shared_instruments")
                d["parts"] = [{k: v for k, v in part.items() if k != "program"} for part in d["parts"]]
            assert a == b


def test_unknown_genre_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown genre 'polka'"):
        sample_params("polka")


# --------------------------------------------------------------------------- genre traits in the notes

def test_blues_is_a_12_bar_dominant_seventh_shuffle():
    p = next(p for p in (sample_params("blues", t) for t in range(50)) if len(p.progression) == 12)
    chords = [parse_chord(s) for s in p.progression]
    assert [c.root for c in chords[:4]] == [0, 5, 0, 0] or [c.root for c in chords[8:10]] == [7, 7]
    assert all(10 in c.intervals for c in chords)            # dominant (or minor) sevenths
    assert p.drum_pattern in ("shuffle", "slow_shuffle")     # triplet-grid hats


def test_disco_has_four_on_the_floor_and_offbeat_open_hats():
    p = sample_params("disco", 3)
    pm = compose(p, 8 * p.bar_s)
    beat = 60 / p.tempo
    kicks = np.array(_drum_notes(pm, KICKS))
    for b in range(8 * 4):
        assert np.min(np.abs(kicks - b * beat)) < 0.02
    opens = np.array(_drum_notes(pm, (46,)))
    assert len(opens) >= 20
    assert np.allclose((opens / beat) % 1, 0.5, atol=0.05)


def test_reggae_one_drop_kick_only_on_beat_three():
    for t in range(5):
        p = sample_params("reggae", t)
        pm = compose(p, 8 * p.bar_s)
        beat = 60 / p.tempo
        pos = (np.array(_drum_notes(pm, KICKS)) / beat) % 4
        assert np.allclose(pos, 2.0, atol=0.05)


def test_jazz_walking_bass_plays_quarter_notes():
    p = sample_params("jazz", 2)
    pm = compose(p, 8 * p.bar_s)
    bass = _part(pm, "bass")
    assert len(bass.notes) == 8 * p.beats_per_bar
    onsets = np.array([n.start for n in bass.notes]) / (60 / p.tempo)
    assert np.allclose(onsets, np.round(onsets), atol=0.05)


def test_metal_power_chords_in_a_low_register():
    p = sample_params("metal", 4)
    pm = compose(p, 4 * p.bar_s)
    comp = _part(pm, "comp")
    assert max(n.pitch for n in comp.notes) <= 64
    by_onset = {}
    for n in comp.notes:
        by_onset.setdefault(round(n.start, 4), []).append(n.pitch)
    for pitches in by_onset.values():
        assert sorted(np.diff(sorted(pitches))) == [5, 7]      # root, fifth, octave


def test_classical_has_no_drums_and_a_wide_register():
    for t in range(5):
        p = sample_params("classical", t)
        pm = compose(p, 8 * p.bar_s)
        assert not any(i.is_drum for i in pm.instruments)
        pitches = [n.pitch for i in pm.instruments for n in i.notes]
        assert max(pitches) - min(pitches) >= 24


# --------------------------------------------------------------------------- clips

def test_generate_clip_deterministic_and_seed_dependent():
    a, info_a = generate_clip("jazz", 5, seed=1, duration_s=3.0)
    b, info_b = generate_clip("jazz", 5, seed=1, duration_s=3.0)
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b
    c, _ = generate_clip("jazz", 5, seed=2, duration_s=3.0)
    d, _ = generate_clip("jazz", 6, seed=1, duration_s=3.0)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    json.dumps(info_a)


def test_shared_instruments_clip_differs_only_in_timbre():
    a, ia = generate_clip("rock", 1, duration_s=2.0)
    b, ib = generate_clip("rock", 1, duration_s=2.0, shared_instruments=True)
    assert ia["tempo"] == ib["tempo"] and ia["progression"] == ib["progression"]
    assert not np.array_equal(a, b)


def test_15s_clip_has_linear_2s_fades_and_target_rms():
    genre, track = "pop", 0
    audio, info = generate_clip(genre, track, duration_s=15.0)
    assert audio.shape == (15 * SR,) and audio.dtype == np.float32
    raw = render_midi(compose(sample_params(genre, track), 15.0), sr=SR, duration_s=15.0)
    np.testing.assert_array_equal(audio, rms_normalize(apply_fades(raw, SR, 2.0, 2.0), -20.0))
    # the fade against its closed form: audio = g * raw * ramp
    n = 2 * SR
    mid = slice(n, -n)
    g = np.dot(audio[mid], raw[mid]) / np.dot(raw[mid], raw[mid])
    ramp = np.arange(n) / n
    np.testing.assert_allclose(audio[:n], g * raw[:n] * ramp, atol=1e-5)
    np.testing.assert_allclose(audio[-n:], g * raw[-n:] * ramp[::-1], atol=1e-5)
    assert audio[0] == 0 and audio[-1] == 0
    assert rms_dbfs(audio) == pytest.approx(-20.0, abs=0.01)
    assert info["rms_dbfs"] == pytest.approx(-20.0, abs=0.01) and not info["peak_limited"]


def test_peaky_clip_is_limited_not_turned_down():
    audio, info = generate_clip("classical", 5, duration_s=15.0)   # crest factor above 19 dB
    assert info["peak_limited"]
    assert rms_dbfs(audio) == pytest.approx(-20.0, abs=0.02)
    assert np.max(np.abs(audio)) <= 10 ** (-1 / 20) + 1e-6


@pytest.mark.parametrize("genre", GENRES)
def test_every_genre_renders_15s_at_target_rms(genre):
    audio, info = generate_clip(genre, 0, duration_s=15.0)
    assert audio.shape == (15 * SR,)
    assert np.all(np.isfinite(audio))
    assert np.max(np.abs(audio)) <= 10 ** (-1 / 20) + 1e-6
    assert rms_dbfs(audio) == pytest.approx(-20.0, abs=0.02)
    assert info["genre"] == genre


def test_parse_gtzan_names():
    assert parse_gtzan_name("blues.00098") == ("blues", 98)
    assert parse_gtzan_name("'hiphop'.00053.wav") == ("hiphop", 53)
    with pytest.raises(ValueError, match="GTZAN"):
        parse_gtzan_name("polka.00001")


def test_gtzan_standin_is_30s_mono_and_deterministic():
    a = gtzan_standin("reggae.00012")
    assert a.shape == (30 * SR,) and a.dtype == np.float32
    assert rms_dbfs(a) == pytest.approx(-20.0, abs=0.05)
    assert abs(a[0]) > 0 or np.max(np.abs(a[:SR // 10])) > 0      # no fade-in
    np.testing.assert_array_equal(a, gtzan_standin("reggae.00012"))


# --------------------------------------------------------------------------- incremental mode

def test_stream_chunks_equal_one_continuous_render(rng):
    s = GeneratorStream("blues", track=4, seed=0)
    sizes = [0.37, 1.5, 0.01, 2.2, 1.5, 0.0] + list(rng.uniform(0.05, 1.0, 4))
    chunks = [s.next(x) for x in sizes] + [s.next(n_samples=777)]
    y = np.concatenate(chunks)
    assert y.size == s.position == int(round(sum(sizes) * SR)) + 777
    whole = render_midi(s.midi(), sr=SR, duration_s=y.size / SR)
    assert whole.size == y.size
    np.testing.assert_array_equal(y, np.clip(whole * s.gain, -1.0, 1.0))


def test_stream_joins_are_click_free():
    s = GeneratorStream("metal", track=2)
    chunks = [s.next(1.5) for _ in range(6)]
    y = np.concatenate(chunks)
    jumps = np.abs(np.diff(y))
    bound = np.percentile(jumps, 99.9)
    joins = np.cumsum([c.size for c in chunks])[:-1]
    assert np.all(jumps[joins - 1] <= bound)


def test_stream_continues_the_same_piece():
    """Tempo, key, progression and bar grid continue: the stream's notes are the offline piece's notes."""
    s = GeneratorStream("country", track=9, target_dbfs=None)
    for _ in range(7):
        s.next(1.5)
    streamed = s.midi()
    offline = compose(s.params, s.bars_written * s.params.bar_s - 1e-9)
    assert len(streamed.instruments) == len(offline.instruments)
    for a, b in zip(streamed.instruments, offline.instruments):
        assert [(n.start, n.end, n.pitch, n.velocity) for n in a.notes] == \
               [(n.start, n.end, n.pitch, n.velocity) for n in b.notes]
    kicks = np.array(_drum_notes(streamed, KICKS))
    beats = kicks / (60 / s.params.tempo)
    assert np.allclose(beats, np.round(beats * 2) / 2, atol=0.05)   # one grid across chunk joins
    assert s.info["tempo"] == s.params.tempo and s.info["key"] == s.params.key


def test_stream_audio_equals_offline_clip_before_fades():
    s = GeneratorStream("disco", track=1, target_dbfs=None)
    y = np.concatenate([s.next(0.9) for _ in range(4)])
    raw = render_midi(compose(sample_params("disco", 1), 3.6), sr=SR, duration_s=3.6)
    np.testing.assert_array_equal(y, np.clip(raw, -1, 1))


def test_stream_gain_is_near_the_target():
    s = GeneratorStream("hiphop", track=3)
    y = np.concatenate([s.next(2.0) for _ in range(5)])
    assert abs(rms_dbfs(y) - (-20.0)) < 3.0
    assert np.max(np.abs(y)) <= 1.0


def test_stream_argument_errors():
    s = GeneratorStream("pop", target_dbfs=None)
    with pytest.raises(ValueError, match="exactly one"):
        s.next()
    with pytest.raises(ValueError, match=">= 0"):
        s.next(-1.0)
