"""Mel spectrograms in numpy, as musicnn was trained on (no librosa needed).

The recipe reproduces ``librosa.feature.melspectrogram(y, sr=16000,
n_fft=512, hop_length=256, n_mels=96)`` of librosa 0.10: periodic Hann
window, ``center=True`` zero padding of n_fft/2 on both sides, power
spectrum ``|rfft|**2``, Slaney mel scale with area-normalised ("slaney")
triangles from 0 Hz to sr/2. musicnn then compresses with
``log10(10000 * mel + 1)``, computed here in float32 (musicnn's own float16
cast overflows under numpy 2).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["hz_to_mel", "mel_to_hz", "mel_filterbank", "power_spectrogram", "log_melspectrogram"]


def hz_to_mel(f):
    """Slaney mel scale: linear below 1 kHz, logarithmic above. ``f`` in Hz."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = f / f_sp
    log_region = f >= min_log_hz
    return np.where(log_region, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mel)


def mel_to_hz(m):
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def mel_filterbank(sr: int = 16000, n_fft: int = 512, n_mels: int = 96,
                   fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-normalised triangular mel filters.

    Returns
    -------
    ndarray of shape (n_mels, n_fft // 2 + 1), float32
        Row ``m`` weights the rfft bins of band ``m``; each triangle has area
        normalised by ``2 / (f_hi - f_lo)``.
    """
    fmax = sr / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2: n_mels + 2] - mel_f[:n_mels]))[:, None]
    weights.flags.writeable = False
    return weights.astype(np.float32)


def power_spectrogram(x: np.ndarray, n_fft: int = 512, hop: int = 256) -> np.ndarray:
    """``|STFT|**2`` with a periodic Hann window and centred zero padding.

    Parameters
    ----------
    x : ndarray of shape (n_samples,)
        Mono audio.

    Returns
    -------
    ndarray of shape (1 + n_samples // hop, n_fft // 2 + 1), float32
    """
    x = np.asarray(x, dtype=np.float32)
    pad = n_fft // 2
    xp = np.pad(x, (pad, pad))
    n_frames = 1 + (len(xp) - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        xp, shape=(n_frames, n_fft), strides=(xp.strides[0] * hop, xp.strides[0]), writeable=False)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    spec = np.fft.rfft(frames * window, axis=1)
    return (spec.real ** 2 + spec.imag ** 2).astype(np.float32)


def log_melspectrogram(x: np.ndarray, sr: int = 16000, n_fft: int = 512, hop: int = 256,
                       n_mels: int = 96) -> np.ndarray:
    """musicnn's input: ``log10(10000 * mel + 1)``.

    Returns
    -------
    ndarray of shape (n_frames, n_mels), float32
    """
    mel = power_spectrogram(x, n_fft, hop) @ mel_filterbank(sr, n_fft, n_mels).T
    return np.log10(np.float32(10000.0) * mel + np.float32(1.0)).astype(np.float32)
