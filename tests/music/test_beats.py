"""Tempo and beat estimation against click tracks and generated music of known tempo."""

from __future__ import annotations

import numpy as np
import pytest

from music.beats import estimate_beats, next_beat_time, onset_envelope

SR = 22050


def click_track(bpm: float, seconds: float = 20.0, first: float = 0.3, sr: int = SR, noise: float = 0.0,
                rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Decaying 2 kHz clicks at ``first + k * 60 / bpm`` seconds; returns (audio, click times)."""
    x = np.zeros(int(seconds * sr), np.float32)
    times = np.arange(first, seconds, 60.0 / bpm)
    n = np.arange(200)
    click = (np.exp(-n / 40) * np.sin(2 * np.pi * 2000 * n / sr)).astype(np.float32)
    for t in times:
        i = int(round(t * sr))
        m = min(len(click), len(x) - i)
        x[i:i + m] += click[:m]
    if noise:
        x += (noise * rng.standard_normal(x.shape)).astype(np.float32)
    return x, times


def grid_error(beats: np.ndarray, unit: float, phase: float = 0.0) -> np.ndarray:
    """Signed distance (s) of each beat to the nearest point of the grid ``phase + k * unit``."""
    return (beats - phase + unit / 2) % unit - unit / 2


@pytest.mark.parametrize("bpm", [62.0, 90.0, 100.0, 120.0, 137.0, 150.0])
def test_estimate_beats_click_track_tempo_and_phase(bpm):
    x, clicks = click_track(bpm)
    tempo, beats = estimate_beats(x, SR)
    assert tempo == pytest.approx(bpm, rel=0.002)
    assert len(beats) == len(clicks)
    # beats land within one envelope hop (10 ms) of the clicks
    np.testing.assert_allclose(beats, clicks, atol=0.010)
    assert np.all(np.diff(beats) > 0) and beats[0] >= 0 and beats[-1] < len(x) / SR


def test_estimate_beats_click_track_in_noise(rng):
    x, clicks = click_track(110.0, noise=0.05, rng=rng)
    tempo, beats = estimate_beats(x, SR)
    assert tempo == pytest.approx(110.0, rel=0.003)
    np.testing.assert_allclose(beats, clicks, atol=0.015)


def test_estimate_beats_fast_clicks_may_halve_but_stay_on_beats():
    # 180 BPM clicks: tempo and its half fit equally; the 120 BPM prior picks 90 (documented)
    x, clicks = click_track(180.0)
    tempo, beats = estimate_beats(x, SR)
    assert tempo == pytest.approx(90.0, rel=0.002) or tempo == pytest.approx(180.0, rel=0.002)
    assert np.max(np.abs(grid_error(beats, 60 / 180.0, 0.3))) < 0.010


@pytest.fixture(scope="module")
def generated():
    """A few generated clips with a steady beat (the generator's own tempo is the ground truth)."""
    from music.generator import generate_clip

    clips = []
    for genre, track in [("disco", 0), ("rock", 0), ("pop", 1), ("blues", 1), ("hiphop", 1), ("country", 0)]:
        audio, info = generate_clip(genre, track, 0, 15.0, SR)
        clips.append((genre, track, audio, float(info["tempo"])))
    return clips


def test_estimate_beats_generated_music_tempo_and_grid(generated):
    for genre, track, audio, true_bpm in generated:
        before = audio.copy()
        tempo, beats = estimate_beats(audio, SR)
        np.testing.assert_array_equal(audio, before)               # input untouched
        assert tempo == pytest.approx(true_bpm, rel=0.005), (genre, track, tempo, true_bpm)
        # the generator starts bar 0 at t = 0, so its beats are k * 60 / tempo (plus swing and
        # up to +-10 ms of humanisation)
        err = grid_error(beats, 60.0 / true_bpm)
        assert np.max(np.abs(err)) < 0.025, (genre, track, np.max(np.abs(err)))


def test_estimate_beats_is_deterministic(generated):
    _, _, audio, _ = generated[0]
    t1, b1 = estimate_beats(audio, SR)
    t2, b2 = estimate_beats(audio.copy(), SR)
    assert t1 == t2
    np.testing.assert_array_equal(b1, b2)


def test_estimate_beats_silence_and_short_input():
    for x in (np.zeros(10 * SR, np.float32), np.zeros(100, np.float32)):
        tempo, beats = estimate_beats(x, SR)
        assert np.isnan(tempo) and beats.shape == (0,)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(5 * SR) / SR)).astype(np.float32)
    tempo, beats = estimate_beats(tone, SR)         # a steady tone has no onsets, not even at its ends
    assert np.isnan(tempo) and beats.shape == (0,)


def test_estimate_beats_rejects_stereo():
    with pytest.raises(ValueError, match="mono"):
        estimate_beats(np.zeros((SR, 2), np.float32), SR)
    with pytest.raises(ValueError, match="sr"):
        estimate_beats(np.zeros(SR, np.float32), 0)


def test_onset_envelope_peaks_at_clicks():
    x, clicks = click_track(100.0, seconds=5.0)
    env, fps = onset_envelope(x, SR)
    assert env.min() >= 0 and fps == pytest.approx(SR / round(0.01 * SR))
    peaks = np.flatnonzero((env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > 0.5 * env.max())) + 1
    np.testing.assert_allclose(peaks / fps, clicks, atol=0.012)


def test_next_beat_time_every_and_end():
    beats = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert next_beat_time(beats, 0.0) == 0.5
    assert next_beat_time(beats, 1.0) == 1.0
    assert next_beat_time(beats, 1.01) == 1.5
    assert next_beat_time(beats, 0.6, every=4) == 2.5      # beats 0, 4: 0.5 and 2.5
    assert next_beat_time(beats, 3.01) is None
    with pytest.raises(ValueError):
        next_beat_time(beats, 0.0, every=0)
