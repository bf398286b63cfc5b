"""Tests for music.audio (I/O, resampling, fades, loudness) and music.render (MIDI -> audio)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from music.audio import (apply_fades, crossfade_gains, limit_peaks, read_audio, resample, rms_dbfs,
                         rms_normalize, write_audio)
from music.render import BLOCK, NOTE_ON, SynthEngine, midi_events, render_midi, soundfont_path

pretty_midi = pytest.importorskip("pretty_midi")
pytest.importorskip("tinysoundfont")

SR = 22050


# --------------------------------------------------------------------------- audio

def test_apply_fades_linear_closed_form(rng):
    sr, n_fade = 100, 200
    x = rng.standard_normal(1000).astype(np.float32)
    x_copy = x.copy()
    y = apply_fades(x, sr, 2.0, 2.0)
    ramp = np.arange(n_fade) / n_fade
    np.testing.assert_allclose(y[:n_fade], x[:n_fade] * ramp, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y[-n_fade:], x[-n_fade:] * ramp[::-1], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y[n_fade:-n_fade], x[n_fade:-n_fade])
    assert y[0] == 0 and y[-1] == 0
    assert y.dtype == np.float32
    np.testing.assert_array_equal(x, x_copy)  # input untouched


def test_apply_fades_overlapping_ramps_multiply():
    y = apply_fades(np.ones(10, np.float32), 10, fade_in_s=1.0, fade_out_s=1.0)
    i = np.arange(10)
    np.testing.assert_allclose(y, (i / 10) * (i[::-1] / 10), atol=1e-7)


def test_apply_fades_cosine_shape_is_the_raised_linear_ramp():
    y = apply_fades(np.ones(100, np.float32), 10, 2.0, 3.0, shape="cosine")
    i = np.arange(100)
    lin = np.minimum(1.0, np.minimum(i / 20, (99 - i) / 30))
    np.testing.assert_allclose(y, 0.5 - 0.5 * np.cos(np.pi * lin), atol=1e-7)


def test_apply_fades_rejects_bad_input():
    with pytest.raises(ValueError, match="mono"):
        apply_fades(np.ones((10, 2)), 10)
    with pytest.raises(ValueError, match=">= 0"):
        apply_fades(np.ones(10), 10, fade_in_s=-1)
    with pytest.raises(ValueError, match="shape"):
        apply_fades(np.ones(10), 10, shape="exp")


def test_rms_normalize_hits_target(rng):
    x = (0.01 * rng.standard_normal(SR)).astype(np.float32)
    y = rms_normalize(x, -20.0)
    assert abs(rms_dbfs(y) - (-20.0)) < 1e-4
    # a pure gain: y / x is one constant
    np.testing.assert_allclose(y / x, (y / x)[0], rtol=1e-5)


def test_rms_normalize_peak_protection_scales_down(rng):
    x = (0.01 * rng.standard_normal(SR)).astype(np.float32)
    x[100] = 1.0                                   # crest factor far above 19 dB
    y = rms_normalize(x, -20.0, peak_dbfs=-1.0)
    assert np.max(np.abs(y)) == pytest.approx(10 ** (-1 / 20), rel=1e-6)
    assert rms_dbfs(y) < -20.0
    y_free = rms_normalize(x, -20.0, peak_dbfs=None)
    assert rms_dbfs(y_free) == pytest.approx(-20.0, abs=1e-4)


def test_limit_peaks_holds_the_ceiling_and_leaves_the_rest(rng):
    sr = 1000
    x = (0.1 * rng.standard_normal(5 * sr)).astype(np.float32)
    x[2500] = 3.0
    x_copy = x.copy()
    y = limit_peaks(x, sr, peak_dbfs=-1.0, window_s=0.02)
    assert np.max(np.abs(y)) <= 10 ** (-1 / 20) + 1e-7
    far = np.abs(np.arange(x.size) - 2500) > int(1.5 * 0.02 * sr) + 1
    np.testing.assert_array_equal(y[far], x[far])
    np.testing.assert_array_equal(x, x_copy)
    quiet = (0.1 * rng.standard_normal(100)).astype(np.float32)
    np.testing.assert_array_equal(limit_peaks(quiet, sr), quiet)


def test_rms_normalize_silence_unchanged():
    np.testing.assert_array_equal(rms_normalize(np.zeros(10, np.float32)), np.zeros(10))


def test_rms_dbfs_of_full_scale_sine():
    t = np.arange(SR) / SR
    assert rms_dbfs(np.sin(2 * np.pi * 441 * t)) == pytest.approx(-3.0103, abs=1e-3)


def test_crossfade_gains_equal_power():
    out, fin = crossfade_gains(1000)
    np.testing.assert_allclose(out.astype(np.float64) ** 2 + fin.astype(np.float64) ** 2, 1.0, atol=1e-6)
    np.testing.assert_allclose(fin, out[::-1], atol=1e-7)
    assert np.all(np.diff(out) < 0) and np.all(np.diff(fin) > 0)
    t = (np.arange(1000) + 0.5) / 1000
    np.testing.assert_allclose(fin, np.sin(np.pi / 2 * t), atol=1e-7)
    assert crossfade_gains(0)[0].shape == (0,)


def test_resample_sine_matches_closed_form():
    f = 440.0
    x = np.sin(2 * np.pi * f * np.arange(2 * SR) / SR).astype(np.float32)
    y = resample(x, SR, 16000)
    assert y.shape == (32000,) and y.dtype == np.float32
    ref = np.sin(2 * np.pi * f * np.arange(32000) / 16000)
    np.testing.assert_allclose(y[1000:-1000], ref[1000:-1000], atol=2e-3)
    np.testing.assert_array_equal(resample(x, SR, SR), x)


def test_write_read_roundtrip_bit_exact_float_wav(tmp_path, rng):
    x = (0.5 * rng.standard_normal(1000)).astype(np.float32).clip(-1, 1)
    path = tmp_path / "a.wav"
    write_audio(path, x, SR, subtype="FLOAT")
    y, sr = read_audio(path)
    assert sr == SR
    np.testing.assert_array_equal(x, y)
    assert os.listdir(tmp_path) == ["a.wav"]       # no temp file left behind


def test_write_read_flac_pcm16(tmp_path, rng):
    x = (0.2 * rng.standard_normal(1000)).clip(-0.99, 0.99).astype(np.float32)
    write_audio(tmp_path / "a.flac", x, SR)
    y, _ = read_audio(tmp_path / "a.flac")
    np.testing.assert_allclose(x, y, atol=1 / 32768 + 1e-7)


def test_read_audio_resamples_and_mixes_down(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t)], axis=1).astype(np.float32)
    write_audio(tmp_path / "s.wav", stereo * 0.5, 44100, subtype="FLOAT")
    y, sr = read_audio(tmp_path / "s.wav", sr=22050)
    assert sr == 22050 and y.shape == (22050,)
    y2, _ = read_audio(tmp_path / "s.wav", mono=False)
    assert y2.shape == (44100, 2)


def test_read_audio_unreadable_names_the_file(tmp_path):
    bad = tmp_path / "junk.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="junk.wav"):
        read_audio(bad)
    with pytest.raises(ValueError, match="missing.flac"):
        read_audio(tmp_path / "missing.flac")


def test_write_audio_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        write_audio(tmp_path / "x.xyz", np.zeros(10), SR)


# --------------------------------------------------------------------------- render

def _tiny_midi():
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    for k, p in enumerate([60, 64, 67, 72]):
        piano.notes.append(pretty_midi.Note(velocity=90, pitch=p, start=0.25 * k, end=0.25 * k + 0.6))
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    for k in range(4):
        drums.notes.append(pretty_midi.Note(velocity=100, pitch=36 if k % 2 == 0 else 38, start=0.5 * k,
                                            end=0.5 * k + 0.1))
    pm.instruments += [piano, drums]
    return pm


def _centroid(x, sr=SR):
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / sr)
    return float((f * spec).sum() / spec.sum())


def test_soundfont_is_pretty_midis():
    assert soundfont_path().endswith("TimGM6mb.sf2") and os.path.isfile(soundfont_path())


def test_render_midi_deterministic():
    pm = _tiny_midi()
    a = render_midi(pm, sr=SR)
    b = render_midi(pm, sr=SR)
    assert a.dtype == np.float32 and a.ndim == 1
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a)) > 0.01
    # default length: last event plus the tail
    assert a.size == round(1.6 * SR) + round(1.5 * SR)


def test_render_midi_exact_duration():
    assert render_midi(_tiny_midi(), sr=SR, duration_s=1.0).shape == (SR,)


def test_render_drums_use_the_drum_kit():
    """A closed hi-hat (key 42) on the drum channel is bright noise; the same key on a piano is a low F#."""
    def one(is_drum):
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(program=0, is_drum=is_drum)
        inst.notes.append(pretty_midi.Note(velocity=110, pitch=42, start=0.0, end=0.3))
        pm.instruments.append(inst)
        return render_midi(pm, sr=SR, duration_s=0.5)

    hat, piano = one(True), one(False)
    assert _centroid(hat) > 3000
    assert _centroid(piano) < 1000


def test_render_midi_from_file(tmp_path):
    pm = _tiny_midi()
    path = tmp_path / "t.mid"
    pm.write(str(path))
    y = render_midi(path, sr=SR, duration_s=2.0)
    assert y.shape == (2 * SR,) and np.max(np.abs(y)) > 0.01


def test_render_midi_bad_file_names_it(tmp_path):
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"MThd garbage")
    with pytest.raises(ValueError, match="broken.mid"):
        render_midi(bad)


def test_render_empty_midi_is_silence():
    y = render_midi(pretty_midi.PrettyMIDI(), sr=SR, duration_s=0.5)
    np.testing.assert_array_equal(y, np.zeros(SR // 2, np.float32))


def test_synth_engine_chunking_is_bit_identical(rng):
    """Rendering in arbitrary chunks equals rendering in one call (the engine never cuts at chunk ends)."""
    pm = _tiny_midi()
    n = 2 * SR
    whole = render_midi(pm, sr=SR, duration_s=2.0)
    parts, events = midi_events(pm, SR)
    engine = SynthEngine(parts, sr=SR)
    engine.schedule(events)
    chunks, done = [], 0
    while done < n:
        k = int(min(n - done, rng.integers(1, 3 * BLOCK)))
        chunks.append(engine.render(k))
        done += k
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_synth_engine_rejects_events_in_the_past():
    engine = SynthEngine([(0, False)], sr=SR)
    engine.render(BLOCK + 10)
    with pytest.raises(ValueError, match="already"):
        engine.schedule([(5, NOTE_ON, 0, 60, 100)])


def test_render_more_than_fifteen_melodic_instruments():
    pm = pretty_midi.PrettyMIDI()
    for k in range(20):
        inst = pretty_midi.Instrument(program=k)
        inst.notes.append(pretty_midi.Note(velocity=80, pitch=48 + k, start=0.05 * k, end=0.05 * k + 0.3))
        pm.instruments.append(inst)
    y = render_midi(pm, sr=SR, duration_s=1.5)
    # the last instruments (on a second synth instance) sound too
    assert np.max(np.abs(y[int(0.95 * SR):int(1.3 * SR)])) > 1e-3
