"""music.features: acoustic features checked against signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from music.features import (
    FEATURE_NAMES,
    FEATURE_UNITS,
    MIN_SR,
    MOD_RATES_HZ,
    bin_frames,
    detect_onsets,
    features_per_tr,
    frame_features,
    frame_spectrum,
    spectral_flux,
)

SR = 22050
COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _tone(f_hz, dur_s=2.0, amp=1.0, sr=SR):
    t = np.arange(int(dur_s * sr)) / sr
    return (amp * np.sin(2 * np.pi * f_hz * t)).astype(np.float32)


def test_feature_names_units_are_complete_and_unique():
    assert len(FEATURE_NAMES) == 34 == len(set(FEATURE_NAMES))
    assert set(FEATURE_UNITS) == set(FEATURE_NAMES)
    assert FEATURE_NAMES[:4] == ("loudness_db", "onset_rate_hz", "centroid_hz", "brightness")


def test_frame_spectrum_loudness_of_sines_matches_closed_form():
    # a sine of amplitude A has RMS A / sqrt(2): 20 log10(A / sqrt(2)) dBFS
    for amp in (1.0, 0.1):
        fs = frame_spectrum(_tone(1000.0, amp=amp), SR)
        mid = fs.loudness_db[20:-20]
        np.testing.assert_allclose(mid, 20 * np.log10(amp / np.sqrt(2)), atol=0.05)
    silent = frame_spectrum(np.zeros(SR, np.float32), SR)
    assert np.all(silent.loudness_db == -100.0) and np.all(silent.centroid_hz == 0) and np.all(silent.brightness == 0)


def test_frame_spectrum_centroid_and_brightness_of_tones():
    low = frame_spectrum(_tone(800.0), SR)
    high = frame_spectrum(_tone(4000.0), SR)
    np.testing.assert_allclose(np.median(low.centroid_hz), 800.0, rtol=0.02)
    np.testing.assert_allclose(np.median(high.centroid_hz), 4000.0, rtol=0.02)
    assert np.median(low.brightness) < 0.01 and np.median(high.brightness) > 0.99
    # the band containing the tone is the loudest
    centres = np.array([125 * 2 ** (k / 4) for k in range(25)])
    assert np.argmax(np.median(high.band_db, axis=0)) == np.argmin(np.abs(centres - 4000.0))


def test_frame_spectrum_frame_times_and_count():
    x = np.zeros(SR + 7, np.float32)
    fs = frame_spectrum(x, SR, hop_s=0.01)
    hop = round(0.01 * SR)
    assert fs.times_s.shape == (1 + (SR + 7) // hop,)
    np.testing.assert_allclose(np.diff(fs.times_s), hop / SR)
    assert fs.frame_rate == pytest.approx(SR / hop)


def test_onset_rate_of_a_click_train_equals_its_rate(rng):
    dur, rate = 6.0, 4.0
    x = (0.001 * rng.standard_normal(int(dur * SR))).astype(np.float32)
    for k in range(int(dur * rate)):
        i = int((k + 0.5) / rate * SR)
        x[i:i + 200] += (0.5 * np.exp(-np.arange(200) / 40.0)).astype(np.float32)
    f = features_per_tr(x, SR, 1.5, 4)
    np.testing.assert_allclose(f[:, COL["onset_rate_hz"]], rate, atol=0.05)
    fs = frame_spectrum(x, SR)
    onsets = detect_onsets(spectral_flux(fs.band_db), fs.frame_rate, loudness_db=fs.loudness_db)
    # frames are centred; the 46 ms window sees a click up to half a window early
    np.testing.assert_allclose(fs.times_s[onsets], (np.arange(24) + 0.5) / rate, atol=0.023)


def _am_noise(rng, mod_hz, dur_s=8.0):
    t = np.arange(int(dur_s * SR)) / SR
    carrier = rng.standard_normal(t.shape[0])
    return (0.1 * carrier * (1 + 0.9 * np.sin(2 * np.pi * mod_hz * t))).astype(np.float32)


@pytest.mark.parametrize("mod_hz", [2.0, 4.0, 16.0])
def test_temporal_modulation_peaks_at_the_am_rate(rng, mod_hz):
    _, f = frame_features(_am_noise(rng, mod_hz), SR)
    mid = f[200:-200]
    for region in ("low", "mid", "high"):
        cols = [COL[f"tm_r{r:g}_{region}"] for r in MOD_RATES_HZ]
        assert MOD_RATES_HZ[int(np.argmax(mid[:, cols].mean(axis=0)))] == mod_hz


def test_spectro_temporal_modulation_peaks_at_the_ripple():
    # a moving ripple: log-spaced tones with amplitude 1 + 0.9 sin(2 pi (w t + W log2(f / f0)))
    w, big_w = 4.0, 0.5
    t = np.arange(int(6 * SR)) / SR
    freqs = 125 * 2 ** np.linspace(0, 6, 240)
    phases = np.random.default_rng(1).uniform(0, 2 * np.pi, freqs.size)
    x = np.zeros_like(t)
    for fr, ph in zip(freqs, phases):
        env = 1 + 0.9 * np.sin(2 * np.pi * (w * t + big_w * np.log2(fr / 125)))
        x += env * np.sin(2 * np.pi * fr * t + ph)
    x = (0.1 * x / np.sqrt(np.mean(x**2))).astype(np.float32)
    _, f = frame_features(x, SR)
    names = [n for n in FEATURE_NAMES if n.startswith("stm_")]
    energy = f[200:-200][:, [COL[n] for n in names]].mean(axis=0)
    assert names[int(np.argmax(energy))] == "stm_r4_s0p5"


def test_features_per_tr_equals_mean_of_frames_in_each_bin(rng):
    x = (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)
    x_copy = x.copy()
    times, frames = frame_features(x, SR)
    f = features_per_tr(x, SR, 1.5, 2)
    assert f.shape == (2, 34) and f.dtype == np.float32
    np.testing.assert_array_equal(x, x_copy)  # input untouched
    for k in range(2):
        sel = (times >= 1.5 * k) & (times < 1.5 * (k + 1))
        np.testing.assert_allclose(f[k], frames[sel].astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-5)


def test_features_per_tr_pads_short_audio_with_silence(rng):
    x = (0.1 * rng.standard_normal(SR)).astype(np.float32)  # 1 s of noise, 3 s asked for
    f = features_per_tr(x, SR, 1.0, 3)
    assert f[0, COL["loudness_db"]] > -30 and f[2, COL["loudness_db"]] == -100.0
    np.testing.assert_array_equal(features_per_tr(x, SR, 1.0, 3), f)  # deterministic


def test_bin_frames_closed_form_and_empty_bin_raises():
    t = np.arange(10) * 0.25
    v = np.arange(10, dtype=float)[:, None]
    np.testing.assert_allclose(bin_frames(t, v, 1.0, 2), [[1.5], [5.5]])
    with pytest.raises(ValueError, match="holds no frame"):
        bin_frames(t, v, 0.1, 30)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="mono"):
        frame_features(np.zeros((100, 2), np.float32), SR)
    with pytest.raises(ValueError, match=f"sr >= {MIN_SR}"):
        frame_features(np.zeros(16000, np.float32), 16000)
    with pytest.raises(ValueError, match="hop_s"):
        features_per_tr(np.zeros(SR, np.float32), SR, 0.005, 10)
