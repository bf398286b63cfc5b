"""Tempo and beat positions of a piece of music, for putting switches on beats and bars.

The method is the classic three-step one (Scheirer 1998; Ellis 2007; Müller,
*Fundamentals of Music Processing*, ch. 6), kept simple and deterministic:

1. **Onset strength.** A log-magnitude STFT (Hann window of 40 ms, hop of
   10 ms, frames centred on their time; magnitudes compressed as
   ``log(1 + 100 |X|)`` with ``|X|`` scaled so a full-scale sine peaks at
   0.5) and its spectral flux, the sum over bins of the positive
   frame-to-frame increase. A moving average over 0.5 s is subtracted and the
   result half-wave rectified, so the envelope is a train of onset peaks.
   Frames whose window runs past either end of the signal, and values below
   0.02 (the ripple a steady tone makes as the frames slide along its
   period; real onsets in music at -20 dBFS RMS reach 1-10), are set to 0.
2. **Tempo.** The autocorrelation of the envelope over the lags of 60-200
   BPM, weighted by a log-normal prior centred on 120 BPM with a width of one
   octave (Ellis 2007: it settles the choice between a tempo and its double
   or half when both fit, towards the tactus most listeners tap). The best
   lag is refined by parabolic interpolation.
3. **Beat phase and fine tempo.** A regular grid ``t_k = phi + k * P`` is
   fitted to the envelope by maximising the mean envelope (linearly
   interpolated) on the grid, over periods ``P`` within ±2 % of step 2 (in
   steps of 0.05 %) and all phases ``phi`` in ``[0, P)`` (in steps of a
   quarter frame). Ties go to the smallest period and phase, so the result is
   a pure function of the input.

The grid is strictly periodic: it suits music at a steady tempo (the
procedural generator, most of GTZAN), not rubato. Downbeats are not
detected; a "bar" is every ``beats_per_bar``-th beat counted from the first
beat found (:func:`next_beat_time`).

Timing convention: the returned times are the times of the envelope's onset
peaks, which land within about one hop (10 ms) of the physical onsets; the
tests measure this on click tracks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["onset_envelope", "estimate_beats", "clip_beats", "next_beat_time"]

_WIN_S = 0.040
_HOP_S = 0.010
_LOG_GAMMA = 100.0
_LOCAL_MEAN_S = 0.5
_BPM_RANGE = (60.0, 200.0)
_PRIOR_BPM = 120.0
_PRIOR_OCTAVES = 1.0
_REFINE_SPAN = 0.02
_REFINE_STEP = 0.0005
_PHASE_STEP = 0.25
_FLOOR = 0.02          # below this: the ripple of a steady tone, not an onset


def _check_mono(audio, sr):
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono, of shape (n_samples,), got shape {x.shape}; "
                         "mix down with audio.mean(axis=1) first")
    if int(sr) != sr or sr <= 0:
        raise ValueError(f"sr must be a positive integer number of Hz, got {sr!r}")
    return x.astype(np.float32, copy=False), int(sr)


def onset_envelope(audio, sr: int) -> tuple[np.ndarray, float]:
    """Onset strength: rectified spectral flux of a log-magnitude STFT (step 1 of the module doc).

    Parameters
    ----------
    audio : array of shape (n_samples,)
        Mono signal, float in [-1, 1].
    sr : int
        Sample rate in Hz.

    Returns
    -------
    envelope : array of shape (n_frames,), float64
        Non-negative onset strength; frame ``t`` is centred at ``t * hop / sr`` seconds.
    fps : float
        Frames per second of the envelope (``sr / hop``).
    """
    from scipy.ndimage import uniform_filter1d

    x, sr = _check_mono(audio, sr)
    n_fft = 2 * int(round(_WIN_S * sr / 2))
    hop = max(1, int(round(_HOP_S * sr)))
    fps = sr / hop
    n_frames = 1 + x.shape[0] // hop
    window = np.hanning(n_fft + 2)[1:-1].astype(np.float32)  # no zero end points
    scale = np.float32(1.0 / window.sum())                    # a full-scale sine peaks at |X| = 0.5
    padded = np.zeros(x.shape[0] + n_fft, np.float32)
    padded[n_fft // 2:n_fft // 2 + x.shape[0]] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    flux = np.zeros(n_frames, np.float64)
    prev = None
    chunk = 512
    for a in range(0, n_frames, chunk):
        spec = np.abs(np.fft.rfft(frames[a:a + chunk] * window, axis=1)) * scale
        logmag = np.log1p(_LOG_GAMMA * spec)
        if prev is not None:
            logmag_ext = np.concatenate([prev[None], logmag])
        else:
            logmag_ext = np.concatenate([logmag[:1], logmag])
        diff = np.diff(logmag_ext, axis=0)
        flux[a:a + logmag.shape[0]] = np.maximum(diff, 0).sum(axis=1)
        prev = logmag[-1]
    # Frames whose window runs off either end see the signal start or stop: not onsets of the music.
    edge = int(np.ceil((n_fft // 2) / hop))
    flux[:edge] = 0.0
    flux[max(edge, (x.shape[0] - n_fft // 2) // hop + 1):] = 0.0
    size = max(1, int(round(_LOCAL_MEAN_S * fps)))
    env = np.maximum(flux - uniform_filter1d(flux, size=size | 1, mode="nearest"), 0.0)
    env[env < _FLOOR] = 0.0
    return env, fps


def _tempo_lag(env: np.ndarray, fps: float) -> float | None:
    """Best beat period in frames (fractional) by prior-weighted autocorrelation, or None."""
    n = env.shape[0]
    lo = int(np.floor(60.0 * fps / _BPM_RANGE[1]))
    hi = int(np.ceil(60.0 * fps / _BPM_RANGE[0]))
    hi = min(hi, n - 2)
    if hi < lo + 2:
        return None
    e = env - env.mean()
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    spec = np.fft.rfft(e, nfft)
    ac = np.fft.irfft(spec * np.conj(spec), nfft)[:hi + 2]
    ac /= (n - np.arange(hi + 2))               # unbiased: every lag on the same footing
    if ac[0] <= 0:
        return None
    lags = np.arange(lo, hi + 1)
    bpm = 60.0 * fps / lags
    prior = np.exp(-0.5 * (np.log2(bpm / _PRIOR_BPM) / _PRIOR_OCTAVES) ** 2)
    score = ac[lo:hi + 1] * prior
    k = int(np.argmax(score))
    lag = float(lags[k])
    if 0 < k < len(score) - 1:
        y0, y1, y2 = score[k - 1], score[k], score[k + 1]
        denom = y0 - 2 * y1 + y2
        if denom < 0:
            lag += float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5))
    bpm_lo, bpm_hi = _BPM_RANGE
    return float(np.clip(lag, 60.0 * fps / bpm_hi, 60.0 * fps / bpm_lo))


def _fit_grid(env: np.ndarray, period: float) -> tuple[float, float]:
    """Period and phase (frames) maximising the mean envelope on the grid phi + k * P."""
    n = env.shape[0]
    t_axis = np.arange(n, dtype=np.float64)
    best = (-np.inf, period, 0.0)
    factors = 1.0 + np.arange(-_REFINE_SPAN, _REFINE_SPAN + _REFINE_STEP / 2, _REFINE_STEP)
    for f in factors:
        p = period * f
        phases = np.arange(0.0, p, _PHASE_STEP)
        k = np.arange(int(np.floor((n - 1) / p)) + 1, dtype=np.float64)
        grid = phases[:, None] + k[None, :] * p           # (n_phases, n_beats)
        valid = grid <= n - 1
        vals = np.interp(np.where(valid, grid, 0.0), t_axis, env)
        score = (vals * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
        i = int(np.argmax(score))
        if score[i] > best[0] + 1e-12:
            best = (float(score[i]), float(p), float(phases[i]))
    return best[1], best[2]


def estimate_beats(audio, sr: int) -> tuple[float, np.ndarray]:
    """Estimate the tempo and the beat times of mono music (see the module doc for the method).

    Parameters
    ----------
    audio : array of shape (n_samples,)
        Mono signal, float in [-1, 1]; not modified.
    sr : int
        Sample rate in Hz.

    Returns
    -------
    tempo_bpm : float
        Beats per minute, in [60, 200]; ``nan`` if the audio has no onsets
        (silence, a steady tone) or is shorter than about two beats.
    beat_times_s : array of shape (n_beats,), float64
        Increasing beat times in seconds from the start of ``audio``, covering
        all of it (``0 <= t < duration``); empty when ``tempo_bpm`` is nan.
    """
    x, sr = _check_mono(audio, sr)
    empty = (float("nan"), np.zeros(0, np.float64))
    if x.shape[0] < 2 * sr * 60.0 / _BPM_RANGE[1]:
        return empty
    env, fps = onset_envelope(x, sr)
    if not np.any(env > 0):
        return empty
    period = _tempo_lag(env, fps)
    if period is None:
        return empty
    period, phase = _fit_grid(env, period)
    duration = x.shape[0] / sr
    step = period / fps
    first = phase / fps
    n_beats = int(np.floor((duration - first) / step - 1e-9)) + 1
    beats = first + step * np.arange(max(n_beats, 0), dtype=np.float64)
    beats = beats[beats < duration]
    return float(60.0 / step), beats


def clip_beats(audio, sr: int) -> tuple[float, np.ndarray]:
    """:func:`estimate_beats` of a clip as read from its file, channels mixed to mono.

    The one place that turns a library clip's samples into its beats: the
    library builder stores the result (``beats.npz``) and the live session
    computes it only for a library built without them.

    Parameters
    ----------
    audio : array of shape (n_samples,) or (n_samples, n_channels)
        At the file's own rate (:func:`music.audio.read_segment`).
    sr : int

    Returns
    -------
    tempo_bpm, beat_times_s
        As :func:`estimate_beats`.
    """
    x = np.asarray(audio)
    return estimate_beats(np.asarray(x if x.ndim == 1 else x.mean(axis=1), np.float32), sr)


def next_beat_time(beat_times_s, t: float, every: int = 1) -> float | None:
    """The first beat at or after ``t`` whose index is a multiple of ``every``.

    With ``every = beats_per_bar`` this is the next "bar line" (counted from
    the first beat found; downbeats are not detected).

    Parameters
    ----------
    beat_times_s : array of shape (n_beats,)
        Increasing beat times in seconds (from :func:`estimate_beats`).
    t : float
        Time in seconds, on the same clock as ``beat_times_s``.
    every : int
        Keep only beats ``0, every, 2 * every, ...``.

    Returns
    -------
    float or None
        The beat time in seconds, or None if there is no such beat at or after ``t``.
    """
    if int(every) != every or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    b = np.asarray(beat_times_s, dtype=np.float64)[::int(every)]
    i = int(np.searchsorted(b, t, side="left"))
    return float(b[i]) if i < b.shape[0] else None
