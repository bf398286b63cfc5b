"""musicnn through onnxruntime against the TensorFlow reference, the numpy
mel front end against librosa's filterbank, and the embedder plug-in point."""

from __future__ import annotations

import os

import numpy as np
import pytest

from music.embedding import Embedder, Embedding, get_embedder, register_embedder
from music.embedding.melspec import hz_to_mel, log_melspectrogram, mel_filterbank, mel_to_hz
from music.embedding.musicnn import MODELS_DIR, PATCH_FRAMES

REF = np.load(os.path.join(MODELS_DIR, "musicnn_reference.npz"))


@pytest.fixture(scope="module")
def msd():
    return get_embedder("musicnn-msd", threads=1)


def test_mel_filterbank_matches_librosa_reference():
    # mel_basis was saved from librosa 0.10.2 at conversion time
    np.testing.assert_allclose(mel_filterbank(16000, 512, 96), REF["mel_basis"], rtol=0, atol=1e-7)


def test_hz_to_mel_round_trip_and_slaney_break_at_1khz():
    f = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)  # 1000 / (200/3): linear below the break


def test_log_melspectrogram_reproduces_reference_patches():
    mel = log_melspectrogram(REF["audio"])
    n = REF["melspec"].shape[0]
    assert mel.shape == (1 + len(REF["audio"]) // 256, 96)
    np.testing.assert_allclose(mel[: n * PATCH_FRAMES].reshape(REF["melspec"].shape), REF["melspec"],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["msd", "mtt"])
def test_musicnn_onnx_matches_tensorflow_reference(model):
    emb = get_embedder(f"musicnn-{model}", threads=1)
    out = emb.run(REF["melspec"])
    for name in ("tags", "penultimate", "mean_pool", "max_pool"):
        ref = REF[f"{model}_{name}"]
        # float32 rounding relative to each output's magnitude (max_pool reaches ~100)
        tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
        assert out[name].shape == ref.shape
        assert np.abs(out[name] - ref).max() <= tol, name


def test_embed_windows_differ_and_clip_is_their_mean(msd, rng):
    # 9 s of two different halves: the per-window features must differ
    # (musicnn's own extractor repeated window 0's penultimate features)
    sr = 16000
    t = np.arange(9 * sr) / sr
    x = np.where(t < 4.5, 0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * rng.standard_normal(t.size)).astype(np.float32)
    e = msd.embed(x, sr)
    assert e.windows.shape == (3, 200) and e.tags.shape == (3, 50)
    np.testing.assert_allclose(e.times_s, [0.0, 2.992, 5.984])
    assert not np.allclose(e.windows[0], e.windows[2])
    np.testing.assert_allclose(e.clip, e.windows.mean(0), rtol=1e-6)
    assert len(e.top_tags(5)) == 5 and all(0 <= p <= 1 for _, p in e.top_tags(5))


def test_embed_resamples_other_rates(msd, rng):
    sr = 22050
    x = (0.1 * rng.standard_normal(4 * sr)).astype(np.float32)
    e = msd.embed(x, sr)
    assert e.windows.shape == (1, 200) and np.all(np.isfinite(e.windows))


def test_embed_short_audio_is_padded_to_one_window(msd):
    e = msd.embed(np.zeros(8000, np.float32), 16000)
    assert e.windows.shape == (1, 200)


def test_embed_rejects_stereo(msd):
    with pytest.raises(ValueError, match="mono"):
        msd.embed(np.zeros((16000, 2), np.float32), 16000)


def test_identity_names_model_and_weights(msd):
    ident = msd.identity()
    assert ident["id"] == "musicnn-msd-penultimate" and ident["dim"] == 200
    assert "onnx." in ident["version"]
    assert get_embedder("musicnn-mtt", threads=1).identity() != ident


class TinyEmbedder(Embedder):
    """A plug-in built in the test: a fixed random projection of log-mel frames."""

    id, version, dim, sr, window_s, hop_s = "tiny-proj", "1", 8, 16000, 1.0, 1.0

    def __init__(self, seed: int = 0):
        self.w = np.random.default_rng(seed).standard_normal((96, self.dim)).astype(np.float32)

    def embed(self, audio, sr):
        mel = log_melspectrogram(audio)
        frames_per_win = int(self.window_s * self.sr / 256)
        n = max(1, len(mel) // frames_per_win)
        wins = mel[: n * frames_per_win].reshape(n, frames_per_win, 96).mean(1) @ self.w
        return Embedding(windows=wins, times_s=np.arange(n) * self.hop_s)


def make_tiny(**kwargs):
    return TinyEmbedder(**kwargs)


def test_plugin_by_registration_and_import_path(rng):
    register_embedder("tiny-proj", make_tiny)
    x = rng.standard_normal(3 * 16000).astype(np.float32)
    a = get_embedder("tiny-proj", seed=1).embed(x, 16000)
    b = get_embedder(f"{__name__}:make_tiny", seed=1).embed(x, 16000)
    assert a.windows.shape == (3, 8)
    np.testing.assert_array_equal(a.windows, b.windows)


def test_unknown_embedder_lists_available():
    with pytest.raises(ValueError, match="musicnn-msd"):
        get_embedder("no-such-model")
