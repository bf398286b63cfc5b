"""Pure audio helpers: reading, writing, resampling, fades and loudness.

Every signal here is a float32 mono array of shape ``(n_samples,)``; sample
rates are in Hz and times in seconds. The functions never modify their input.

The stimulus conventions follow ds003720's README: "For each clip, 2 s of
fade-in and fade-out effects were applied, and the overall signal intensity
was normalized in terms of the root mean square." The README does not give the
fade shape or the RMS level; we use linear ramps (:func:`apply_fades`) and
-20 dBFS RMS (:func:`rms_normalize`), applied in the README's order: fades
first, then RMS normalisation.
"""

from __future__ import annotations

import os
import tempfile
from math import gcd

import numpy as np

__all__ = [
    "read_audio",
    "read_segment",
    "write_audio",
    "resample",
    "apply_fades",
    "rms_normalize",
    "level_gain",
    "limit_peaks",
    "rms_dbfs",
    "crossfade_gains",
]


def _as_mono_f32(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a mono array of shape (n_samples,), got shape {x.shape}; "
                         "mix down with x.mean(axis=1) first")
    return x.astype(np.float32, copy=False)


def _check_sr(sr, name: str = "sr") -> int:
    if int(sr) != sr or sr <= 0:
        raise ValueError(f"{name} must be a positive integer number of Hz, got {sr!r}")
    return int(sr)


def read_audio(path: str | os.PathLike, sr: int | None = None, mono: bool = True):
    """Read a WAV/FLAC (anything libsndfile reads) file.

    Parameters
    ----------
    path : str or path-like
        The audio file.
    sr : int or None
        Target sample rate in Hz. ``None`` keeps the file's rate; otherwise the
        signal is resampled with :func:`resample` (polyphase, scipy).
    mono : bool
        If True, average the channels to one.

    Returns
    -------
    x : array of shape (n_samples,) or (n_samples, n_channels), float32
        Samples in [-1, 1] (for integer files) at ``sr`` Hz.
    sr : int
        The sample rate of ``x`` in Hz.

    Raises
    ------
    ValueError
        If the file is missing or unreadable; the message names the file.
    """
    import soundfile as sf

    path = os.fspath(path)
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, OSError
        raise ValueError(f"cannot read audio file {path!r}: {exc}. Expected a WAV or FLAC file "
                         "readable by libsndfile") from exc
    x = data.mean(axis=1, dtype=np.float32) if mono else data
    if sr is not None and _check_sr(sr) != file_sr:
        if mono:
            x = resample(x, file_sr, sr)
        else:
            x = np.stack([resample(c, file_sr, sr) for c in x.T], axis=1)
        file_sr = int(sr)
    return np.ascontiguousarray(x, dtype=np.float32), int(file_sr)


def read_segment(path: str | os.PathLike, start_s: float = 0.0,
                 duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """A segment of an audio file at its own rate: ``(audio of shape (n, channels), sr)``.

    ``start_s`` is the segment start in seconds (a library clip's ``start_s``);
    ``duration_s`` its length, None to the end; a segment running past the end
    of the file is cut there. This is how the live session reads a library clip
    (:mod:`realtime.session.clips`) and how the library builder reads it back
    to store its beats, so both see the same samples.
    """
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"need start_s >= 0 and duration_s > 0 (or None), got {start_s} and {duration_s}")
    x, sr = read_audio(path, sr=None, mono=False)
    a = int(round(start_s * sr))
    if a >= x.shape[0]:
        raise ValueError(f"{os.fspath(path)!r} lasts {x.shape[0] / sr:.3f} s; the segment starting at "
                         f"{start_s} s is past its end")
    b = x.shape[0] if duration_s is None else min(x.shape[0], a + int(round(duration_s * sr)))
    return x[a:b], sr


def write_audio(path: str | os.PathLike, x, sr: int, subtype: str | None = None) -> None:
    """Write audio atomically: to a temporary file beside ``path``, then rename.

    A reader never sees a half-written file, and a crash leaves either the old
    file or the new one. The format follows the extension (``.wav``, ``.flac``).

    Parameters
    ----------
    path : str or path-like
        Destination file.
    x : array of shape (n_samples,) or (n_samples, n_channels)
        Samples, float in [-1, 1].
    sr : int
        Sample rate in Hz.
    subtype : str or None
        libsndfile subtype (e.g. ``"PCM_16"``, ``"FLOAT"``); default: the
        format's default (PCM_16 for WAV and FLAC).
    """
    import soundfile as sf

    path = os.fspath(path)
    sr = _check_sr(sr)
    x = np.asarray(x, dtype=np.float32)
    fmt = os.path.splitext(path)[1].lstrip(".").upper() or None
    if fmt not in sf.available_formats():
        raise ValueError(f"cannot tell the audio format of {path!r} from its extension; "
                         "use .wav or .flac")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        sf.write(tmp, x, sr, format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resample(x, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample with a polyphase filter (``scipy.signal.resample_poly``).

    Parameters
    ----------
    x : array of shape (n_samples,)
    sr_in, sr_out : int
        Sample rates in Hz.

    Returns
    -------
    y : array of shape (ceil(n_samples * sr_out / sr_in),), float32
    """
    from scipy.signal import resample_poly

    x = _as_mono_f32(x)
    sr_in, sr_out = _check_sr(sr_in, "sr_in"), _check_sr(sr_out, "sr_out")
    if sr_in == sr_out:
        return x.copy()
    g = gcd(sr_in, sr_out)
    y = resample_poly(x.astype(np.float64), sr_out // g, sr_in // g)
    return y.astype(np.float32)


def apply_fades(x, sr: int, fade_in_s: float = 2.0, fade_out_s: float = 2.0, *,
                shape: str = "linear") -> np.ndarray:
    """Apply a fade-in and fade-out (ds003720 applied 2 s of each; linear by default).

    The linear fade-in gain at sample ``i`` is ``i / n_in`` for ``i < n_in``
    with ``n_in = round(fade_in_s * sr)``: it starts at exactly 0 and reaches
    1 at the end of the ramp. The fade-out mirrors it, so the last sample is
    0. The raised-cosine shape maps each linear gain ``g`` to
    ``0.5 - 0.5 * cos(pi * g)``. If the two ramps overlap (a clip shorter
    than both fades) their gains multiply.

    Parameters
    ----------
    x : array of shape (n_samples,)
    sr : int
        Sample rate in Hz.
    fade_in_s, fade_out_s : float
        Ramp lengths in seconds (0 disables a ramp).
    shape : {"linear", "cosine"}
        Ramp shape.

    Returns
    -------
    y : array of shape (n_samples,), float32
        A faded copy of ``x``.
    """
    x = _as_mono_f32(x)
    sr = _check_sr(sr)
    if fade_in_s < 0 or fade_out_s < 0:
        raise ValueError(f"fade lengths must be >= 0 s, got {fade_in_s} and {fade_out_s}")
    if shape not in ("linear", "cosine"):
        raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}")
    n = x.shape[0]
    gain = np.ones(n, dtype=np.float64)
    n_in = min(int(round(fade_in_s * sr)), n)
    n_out = min(int(round(fade_out_s * sr)), n)

    def ramp(m: int) -> np.ndarray:  # rising gains 0 .. (m - 1) / m
        g = np.arange(m) / m
        return g if shape == "linear" else 0.5 - 0.5 * np.cos(np.pi * g)

    if n_in > 0:
        gain[:n_in] *= ramp(n_in)
    if n_out > 0:
        gain[n - n_out:] *= ramp(n_out)[::-1]
    return (x * gain).astype(np.float32)


def rms_dbfs(x) -> float:
    """RMS level in dB relative to a full-scale (amplitude 1) constant signal.

    Returns ``-inf`` for silence. A full-scale sine is about -3.01 dBFS.
    """
    x = np.asarray(x, dtype=np.float64)
    r = np.sqrt(np.mean(x * x)) if x.size else 0.0
    return float(20 * np.log10(r)) if r > 0 else float("-inf")


def rms_normalize(x, target_dbfs: float = -20.0, peak_dbfs: float | None = -1.0) -> np.ndarray:
    """Scale to a target RMS level, never letting the peak exceed a ceiling.

    The gain is ``g = 10**(target_dbfs/20) / rms(x)``. Peak protection: if
    ``g * max|x|`` would exceed ``10**(peak_dbfs/20)``, the gain is lowered to
    exactly meet the ceiling instead, so nothing is clipped or distorted and
    the RMS then ends below the target (by the excess crest factor). At the
    default -20 dBFS RMS and -1 dBFS ceiling this only happens for crest
    factors above 19 dB. Silence is returned unchanged.

    Parameters
    ----------
    x : array of shape (n_samples,)
    target_dbfs : float
        Target RMS in dBFS (see :func:`rms_dbfs`).
    peak_dbfs : float or None
        Peak ceiling in dBFS; ``None`` disables peak protection.

    Returns
    -------
    y : array of shape (n_samples,), float32
    """
    x = _as_mono_f32(x)
    return (x.astype(np.float64) * level_gain(x, target_dbfs, peak_dbfs)).astype(np.float32)


def level_gain(x, target_dbfs: float = -20.0, peak_dbfs: float | None = -1.0) -> float:
    """The gain :func:`rms_normalize` applies to ``x``: RMS to ``target_dbfs``, peaks kept under ``peak_dbfs``.

    ``x`` may have any shape (a stereo clip of shape (n_samples, 2) gets one
    gain for both channels, from the RMS over all samples). 1.0 for silence.
    """
    x64 = np.asarray(x, dtype=np.float64)
    rms = np.sqrt(np.mean(x64 * x64)) if x64.size else 0.0
    if rms == 0:
        return 1.0
    g = 10 ** (target_dbfs / 20) / rms
    if peak_dbfs is not None:
        peak = np.max(np.abs(x64))
        ceiling = 10 ** (peak_dbfs / 20)
        if g * peak > ceiling:
            g = ceiling / peak
    return float(g)


def limit_peaks(x, sr: int, peak_dbfs: float = -1.0, window_s: float = 0.02) -> np.ndarray:
    """A look-ahead peak limiter: a smooth gain that keeps ``|y| <= 10**(peak_dbfs/20)``.

    The required gain ``min(1, ceiling / |x|)`` is min-filtered over
    ``2 * window_s`` (so the gain is already down when a peak arrives) and then
    averaged over ``window_s`` (so it moves smoothly, with attack and release
    of ``window_s``); the average of values that are each at most the required
    gain at a peak cannot exceed it, so the ceiling holds exactly. Samples
    farther than ``1.5 * window_s`` from any over-ceiling peak are unchanged.

    Parameters
    ----------
    x : array of shape (n_samples,)
    sr : int
        Sample rate in Hz.
    peak_dbfs : float
        The ceiling in dBFS.
    window_s : float
        Attack/release time in seconds.

    Returns
    -------
    y : array of shape (n_samples,), float32
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    x = _as_mono_f32(x)
    sr = _check_sr(sr)
    ceiling = 10 ** (peak_dbfs / 20)
    a = np.abs(x.astype(np.float64))
    if a.size == 0 or a.max() <= ceiling:
        return x.copy()
    w = max(1, int(round(window_s * sr)))
    need = np.minimum(1.0, ceiling / np.maximum(a, 1e-30))
    gain = minimum_filter1d(need, size=2 * w + 1, mode="nearest")
    gain = uniform_filter1d(gain, size=w | 1, mode="nearest")   # odd size: centred
    gain = np.minimum(gain, need)                                 # guard rounding
    return (x * gain).astype(np.float32)


def crossfade_gains(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power crossfade gains over ``n`` samples.

    ``fade_out[i] = cos(pi/2 * t_i)`` and ``fade_in[i] = sin(pi/2 * t_i)``
    with ``t_i = (i + 0.5) / n``, so ``fade_out**2 + fade_in**2 == 1`` at
    every sample (constant power for uncorrelated signals) and the two curves
    are mirror images: ``fade_in == fade_out[::-1]``.

    Returns
    -------
    fade_out, fade_in : arrays of shape (n,), float32
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer number of samples, got {n!r}")
    t = (np.arange(int(n)) + 0.5) / max(int(n), 1)
    return (np.cos(0.5 * np.pi * t).astype(np.float32),
            np.sin(0.5 * np.pi * t).astype(np.float32))
