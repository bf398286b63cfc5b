"""Acoustic features of another kind than the decoder's embedding space.

These are the features the simulated participant's auditory cortex is tuned
to (:mod:`offline_training.simulate`), and the features a plain acoustic
encoding model is fit on. They are deliberately *not* musicnn embeddings:
hand-made, interpretable descriptors of the kind used in auditory-cortex
encoding studies (loudness, onsets, brightness, and spectro-temporal
modulation energies as in Chi, Ru & Shamma 2005, Santoro et al. 2014 and the
MTF model of Nakai et al. 2021).

Front end
---------
A short-time Fourier transform with a Hann window of ``n_fft = 2**ceil(log2(0.04 * sr))``
samples (46 ms at 22 050 Hz), hop ``round(hop_s * sr)`` samples (``hop_s`` =
10 ms by default); frame ``i`` is centred on sample ``i * hop`` (the signal is
zero-padded by ``n_fft // 2`` at both ends), so there are
``1 + n_samples // hop`` frames at times ``i * hop / sr`` seconds.

The power spectrum ``P[i, f] = |X[i, f]|**2`` is pooled by 25 triangular
filters on a log-frequency axis, 4 per octave, centred at
``125 * 2**(k / 4)`` Hz (125 Hz ... 8 kHz), each normalised to unit sum; the
band levels ``L[i, k] = 10 log10(band power / sum(window**2))`` in dB re the
per-bin power of full-scale (unit-variance) white noise, floored at -90 dB
(just above 16-bit quantisation noise), form the log-spectrogram the onset
and modulation features use.

Features per frame (columns of :func:`frame_features`, names in :data:`FEATURE_NAMES`)
--------------------------------------------------------------------------------------
``loudness_db``
    Hann-weighted RMS of the frame in dBFS (full-scale constant = 0 dB),
    floored at -100 dB.
``onset_rate_hz``
    Onsets per second: the frame rate at frames where an onset was detected,
    0 elsewhere, so its mean over any interval is the onset count divided by
    the interval's length. Onsets are peaks of the spectral flux
    ``sum_k max(0, L[i, k] - L[i-1, k]) / 25`` (dB per frame) that exceed the
    flux's running median over 0.5 s by ``ONSET_DELTA_DB`` and are the maximum
    within +-50 ms, in frames louder than -60 dBFS.
``centroid_hz``
    Spectral centroid ``sum_f f P / sum_f P`` in Hz (0 in silence).
``brightness``
    Fraction of the power above 1500 Hz (0..1; 0 in silence).
``stm_r{rate}_s{scale}``
    Spectro-temporal modulation energy in dB (re 1 dB**2) at temporal rate
    ``rate`` Hz (1, 2, 4, 8, 16) and spectral scale ``scale`` cycles/octave
    (0.25, 0.5, 1), averaged over bands and over upward and downward sweeps:
    the band levels minus their means are filtered along time by a one-sided
    (analytic) Gaussian filter on log2-rate (0.5 octave s.d.) and along
    frequency by a zero-mean complex Gabor kernel (s.d. ``4 / (pi * scale)``
    bands, i.e. one octave of scale bandwidth) and its conjugate; the energy
    is ``|.|**2``, a smooth envelope.
``tm_r{rate}_{region}``
    Temporal modulation energy in dB (re 1 dB**2) at rate ``rate`` Hz with no
    spectral filtering, averaged over the bands of a region: ``low``
    (125-500 Hz), ``mid`` (500-2000 Hz), ``high`` (2-8 kHz).

:func:`features_per_tr` averages the frame features into consecutive bins
(for example one per TR of 1.5 s, or 0.1 s bins for a fine time grid): the
features of bin ``k`` are the mean over the frames whose centre lies in
``[k * bin_s, (k + 1) * bin_s)``.

Everything is float32 out, float64 inside; pure numpy/scipy. Memory is bounded
by processing the STFT in blocks of frames: a 615 s run at 22 050 Hz needs
about 150 MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FRAME_HOP_S",
    "BAND_CENTRES_HZ",
    "MOD_RATES_HZ",
    "MOD_SCALES_CPO",
    "REGIONS",
    "FEATURE_NAMES",
    "FEATURE_UNITS",
    "MIN_SR",
    "FrameSpectrum",
    "frame_spectrum",
    "spectral_flux",
    "detect_onsets",
    "modulation_energies",
    "frame_features",
    "bin_frames",
    "features_per_tr",
]

#: Hop between frames in seconds (rounded to whole samples).
FRAME_HOP_S = 0.01
_FMIN_HZ = 125.0
_BANDS_PER_OCTAVE = 4
_N_BANDS = 25
#: Centres of the 25 log-frequency bands, Hz (4 per octave, 125 Hz ... 8 kHz).
BAND_CENTRES_HZ: tuple[float, ...] = tuple(_FMIN_HZ * 2.0 ** (k / _BANDS_PER_OCTAVE) for k in range(_N_BANDS))
#: The lowest sample rate the band filters fit under (the top band's upper edge is 8 kHz * 2**(1/4)).
MIN_SR = int(math.ceil(2 * BAND_CENTRES_HZ[-1] * 2.0 ** (1 / _BANDS_PER_OCTAVE)))
#: Temporal modulation rates, Hz.
MOD_RATES_HZ: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Spectral modulation scales, cycles per octave.
MOD_SCALES_CPO: tuple[float, ...] = (0.25, 0.5, 1.0)
#: Frequency regions of the temporal-modulation features: (name, low Hz, high Hz), half-open.
REGIONS: tuple[tuple[str, float, float], ...] = (("low", 125.0, 500.0), ("mid", 500.0, 2000.0),
                                                 ("high", 2000.0, 8001.0))
_RATE_SD_OCT = 0.5
_BRIGHTNESS_HZ = 1500.0
_FLOOR_DB = -100.0
_BAND_FLOOR_DB = -90.0
_MOD_FLOOR = 1e-4  # dB**2, i.e. -40 dB
ONSET_DELTA_DB = 1.0
_ONSET_MEDIAN_S = 0.5
_ONSET_PEAK_S = 0.05
_ONSET_MIN_DBFS = -60.0
_BLOCK_FRAMES = 2048


def _fmt(x: float) -> str:
    return f"{x:g}".replace(".", "p")


#: Names of the columns of :func:`frame_features` and :func:`features_per_tr`.
FEATURE_NAMES: tuple[str, ...] = (
    ("loudness_db", "onset_rate_hz", "centroid_hz", "brightness")
    + tuple(f"stm_r{_fmt(r)}_s{_fmt(s)}" for r in MOD_RATES_HZ for s in MOD_SCALES_CPO)
    + tuple(f"tm_r{_fmt(r)}_{name}" for r in MOD_RATES_HZ for name, _, _ in REGIONS)
)
#: Unit of every feature, by name.
FEATURE_UNITS: dict[str, str] = {
    n: ("dBFS" if n == "loudness_db" else "onsets/s" if n == "onset_rate_hz" else "Hz" if n == "centroid_hz"
        else "fraction" if n == "brightness" else "dB re 1 dB^2")
    for n in FEATURE_NAMES
}


def _check_audio(audio, sr) -> tuple[np.ndarray, int]:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono, shape (n_samples,); got shape {x.shape} "
                         "(mix down with x.mean(axis=1))")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"audio must hold numbers; got dtype {x.dtype}")
    if isinstance(sr, bool) or int(sr) != sr or sr <= 0:
        raise ValueError(f"sr must be a positive whole number of Hz; got {sr!r}")
    sr = int(sr)
    if sr < MIN_SR:
        raise ValueError(f"sr is {sr} Hz, but the band filters reach "
                         f"{BAND_CENTRES_HZ[-1] * 2 ** 0.25:.0f} Hz and need sr >= {MIN_SR} Hz; "
                         "resample first (music.audio.resample(x, sr, 22050))")
    return x, sr


def _n_fft(sr: int) -> int:
    return 2 ** int(math.ceil(math.log2(0.04 * sr)))


def _hop(sr: int, hop_s: float) -> int:
    hop = int(round(hop_s * sr))
    if hop < 1:
        raise ValueError(f"hop_s = {hop_s} s is less than one sample at {sr} Hz")
    return hop


def _band_matrix(freqs: np.ndarray) -> np.ndarray:
    """Triangular log-frequency filters, shape (n_bands, n_bins), rows sum to 1."""
    c = np.asarray(BAND_CENTRES_HZ)
    lo = c * 2.0 ** (-1 / _BANDS_PER_OCTAVE)
    hi = c * 2.0 ** (1 / _BANDS_PER_OCTAVE)
    w = np.zeros((_N_BANDS, freqs.size))
    for k in range(_N_BANDS):
        up = (freqs - lo[k]) / (c[k] - lo[k])
        down = (hi[k] - freqs) / (hi[k] - c[k])
        w[k] = np.clip(np.minimum(up, down), 0.0, None)
        if not w[k].any():  # narrower than a bin: take the nearest bin
            w[k, int(np.argmin(np.abs(freqs - c[k])))] = 1.0
        w[k] /= w[k].sum()
    return w


@dataclass(frozen=True)
class FrameSpectrum:
    """Frame-level front end of :func:`frame_spectrum`.

    Attributes
    ----------
    times_s : ndarray of shape (n_frames,), float64
        Centre of each frame, seconds from the start of the audio.
    frame_rate : float
        Frames per second (``sr / hop``).
    band_db : ndarray of shape (n_frames, 25), float64
        Log-frequency band levels in dB re the per-bin power of unit-variance
        white noise (floored at -90 dB).
    loudness_db : ndarray of shape (n_frames,), float64
        Hann-weighted RMS in dBFS (floored at -100 dB).
    centroid_hz : ndarray of shape (n_frames,), float64
    brightness : ndarray of shape (n_frames,), float64
    """

    times_s: np.ndarray
    frame_rate: float
    band_db: np.ndarray
    loudness_db: np.ndarray
    centroid_hz: np.ndarray
    brightness: np.ndarray


def frame_spectrum(audio, sr: int, *, hop_s: float = FRAME_HOP_S) -> FrameSpectrum:
    """STFT front end: band levels, loudness, centroid and brightness per frame.

    Parameters
    ----------
    audio : array of shape (n_samples,)
        Mono audio, float in [-1, 1] full scale.
    sr : int
        Sample rate in Hz, at least :data:`MIN_SR`.
    hop_s : float
        Hop between frames in seconds (rounded to whole samples).

    Returns
    -------
    FrameSpectrum
    """
    from scipy import fft as sfft

    x, sr = _check_audio(audio, sr)
    n_fft, hop = _n_fft(sr), _hop(sr, hop_s)
    n_frames = 1 + x.shape[0] // hop
    half = n_fft // 2
    padded = np.zeros(x.shape[0] + n_fft + hop, dtype=np.float32)
    padded[half:half + x.shape[0]] = x
    win = np.hanning(n_fft + 2)[1:-1].astype(np.float32)  # periodic-free, strictly positive Hann
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    bands = _band_matrix(freqs).T  # (n_bins, n_bands)
    bright = freqs >= _BRIGHTNESS_HZ
    w2 = float(np.sum(win.astype(np.float64) ** 2))
    tiny = 10.0 ** (_FLOOR_DB / 10) * n_fft * w2  # summed power of a -100 dBFS frame
    band_db = np.empty((n_frames, _N_BANDS))
    loud = np.empty(n_frames)
    cent = np.empty(n_frames)
    brt = np.empty(n_frames)
    frames_view = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    for a in range(0, n_frames, _BLOCK_FRAMES):
        b = min(a + _BLOCK_FRAMES, n_frames)
        fr = frames_view[a:b] * win
        ms = (fr.astype(np.float64) ** 2).sum(axis=1) / w2  # mean square, weights win**2
        loud[a:b] = 10.0 * np.log10(np.maximum(ms, 10.0 ** (_FLOOR_DB / 10)))
        p = np.abs(sfft.rfft(fr, axis=1)).astype(np.float64) ** 2
        tot = p.sum(axis=1)
        ok = tot > tiny
        cent[a:b] = np.where(ok, (p @ freqs) / np.where(ok, tot, 1.0), 0.0)
        brt[a:b] = np.where(ok, p[:, bright].sum(axis=1) / np.where(ok, tot, 1.0), 0.0)
        band_db[a:b] = 10.0 * np.log10(np.maximum((p @ bands) / w2, 10.0 ** (_BAND_FLOOR_DB / 10)))
    return FrameSpectrum(times_s=np.arange(n_frames) * hop / sr, frame_rate=sr / hop, band_db=band_db,
                         loudness_db=loud, centroid_hz=cent, brightness=brt)


def spectral_flux(band_db: np.ndarray) -> np.ndarray:
    """Half-wave rectified spectral flux of a log-spectrogram.

    Parameters
    ----------
    band_db : ndarray of shape (n_frames, n_bands)
        Band levels in dB.

    Returns
    -------
    flux : ndarray of shape (n_frames,), float64
        ``mean_k max(0, L[i, k] - L[i-1, k])`` in dB per frame; ``flux[0] = 0``.
    """
    L = np.asarray(band_db, dtype=np.float64)
    flux = np.zeros(L.shape[0])
    if L.shape[0] > 1:
        flux[1:] = np.maximum(np.diff(L, axis=0), 0.0).mean(axis=1)
    return flux


def detect_onsets(flux: np.ndarray, frame_rate: float, *, loudness_db: np.ndarray | None = None,
                  delta_db: float = ONSET_DELTA_DB) -> np.ndarray:
    """Onset frames: peaks of the spectral flux above an adaptive threshold.

    Parameters
    ----------
    flux : ndarray of shape (n_frames,)
        From :func:`spectral_flux`, dB per frame.
    frame_rate : float
        Frames per second.
    loudness_db : ndarray of shape (n_frames,) or None
        If given, frames quieter than -60 dBFS cannot be onsets.
    delta_db : float
        How far above the running median (over 0.5 s) a peak must rise, dB.

    Returns
    -------
    frames : ndarray of int64
        Indices of onset frames, increasing, at least 50 ms apart.
    """
    from scipy.ndimage import maximum_filter1d, median_filter

    flux = np.asarray(flux, dtype=np.float64)
    med = median_filter(flux, size=max(3, int(round(_ONSET_MEDIAN_S * frame_rate)) | 1), mode="nearest")
    half = max(1, int(round(_ONSET_PEAK_S * frame_rate)))
    peak = maximum_filter1d(flux, size=2 * half + 1, mode="nearest")
    ok = (flux >= peak) & (flux > med + delta_db)
    if loudness_db is not None:
        ok &= np.asarray(loudness_db) > _ONSET_MIN_DBFS
    idx = np.flatnonzero(ok)
    keep = []
    last = -(10**9)
    for i in idx:  # plateaus: keep the first frame of each
        if i - last > half:
            keep.append(i)
            last = i
    return np.asarray(keep, dtype=np.int64)


def _spectral_gabor(scale_cpo: float) -> np.ndarray:
    """Matrix (n_bands, n_bands), complex: row b filters band levels around band b.

    A complex Gabor along the band axis with s.d. ``bpo / (pi * scale)`` bands,
    truncated at the edges and made zero-mean per row (no response to a flat
    spectrum), rows normalised to unit envelope sum.
    """
    bpo = _BANDS_PER_OCTAVE
    sd = bpo / (math.pi * scale_cpo)
    k = np.arange(_N_BANDS)
    off = k[None, :] - k[:, None]
    env = np.exp(-0.5 * (off / sd) ** 2)
    env /= env.sum(axis=1, keepdims=True)
    car = np.exp(2j * math.pi * scale_cpo * off / bpo)
    g = env * car
    g -= env * (g.sum(axis=1, keepdims=True))  # remove the DC response row by row (env rows sum to 1)
    return g


def modulation_energies(band_db: np.ndarray, frame_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Spectro-temporal and temporal modulation energies per frame.

    Parameters
    ----------
    band_db : ndarray of shape (n_frames, 25)
        Band levels in dB from :func:`frame_spectrum`.
    frame_rate : float
        Frames per second.

    Returns
    -------
    stm_db : ndarray of shape (n_frames, n_rates, n_scales), float64
        Energy at each (rate, scale), averaged over bands and both sweep
        directions, in dB re 1 dB**2 (floored at -40 dB).
    tm_db : ndarray of shape (n_frames, n_rates, n_regions), float64
        Temporal modulation energy at each rate averaged over each region's
        bands, dB re 1 dB**2.
    """
    from scipy import fft as sfft

    L = np.asarray(band_db, dtype=np.float64)
    if L.ndim != 2 or L.shape[1] != _N_BANDS:
        raise ValueError(f"band_db must have shape (n_frames, {_N_BANDS}); got {L.shape}")
    n = L.shape[0]
    nyq = frame_rate / 2
    if max(MOD_RATES_HZ) * 2.0 ** _RATE_SD_OCT >= nyq:
        raise ValueError(f"frame rate {frame_rate:g} Hz is too low for a {max(MOD_RATES_HZ):g} Hz "
                         "modulation filter; use a hop of at most 20 ms")
    pad = int(math.ceil(2.0 * frame_rate))  # 2 s of zeros limit circular wrap-around
    nfft = sfft.next_fast_len(n + pad)
    X = sfft.fft(L - L.mean(axis=0), n=nfft, axis=0)
    f = sfft.fftfreq(nfft, d=1.0 / frame_rate)
    centres = np.asarray(BAND_CENTRES_HZ)
    regions = [(centres >= lo) & (centres < hi) for _, lo, hi in REGIONS]
    gabors = [_spectral_gabor(s) for s in MOD_SCALES_CPO]
    stm = np.empty((n, len(MOD_RATES_HZ), len(MOD_SCALES_CPO)))
    tm = np.empty((n, len(MOD_RATES_HZ), len(REGIONS)))
    pos = f > 0
    for i, r in enumerate(MOD_RATES_HZ):
        h = np.zeros(nfft)
        h[pos] = 2.0 * np.exp(-0.5 * (np.log2(f[pos] / r) / _RATE_SD_OCT) ** 2)
        Y = sfft.ifft(X * h[:, None], axis=0)[:n]  # analytic along time
        e = np.abs(Y) ** 2
        for j, m in enumerate(regions):
            tm[:, i, j] = e[:, m].mean(axis=1)
        for j, g in enumerate(gabors):
            up = np.abs(Y @ g.T) ** 2
            down = np.abs(Y @ g.conj().T) ** 2
            stm[:, i, j] = 0.5 * (up + down).mean(axis=1)
    return (10.0 * np.log10(np.maximum(stm, _MOD_FLOOR)), 10.0 * np.log10(np.maximum(tm, _MOD_FLOOR)))


def frame_features(audio, sr: int, *, hop_s: float = FRAME_HOP_S) -> tuple[np.ndarray, np.ndarray]:
    """All features per frame.

    Parameters
    ----------
    audio : array of shape (n_samples,)
        Mono audio, float in [-1, 1].
    sr : int
        Sample rate in Hz (at least :data:`MIN_SR`; stimuli are 22 050 Hz).
    hop_s : float
        Frame hop in seconds.

    Returns
    -------
    times_s : ndarray of shape (n_frames,), float64
        Frame centres, seconds.
    features : ndarray of shape (n_frames, len(FEATURE_NAMES)), float32
        Columns in the order of :data:`FEATURE_NAMES`, units in :data:`FEATURE_UNITS`.
    """
    fs = frame_spectrum(audio, sr, hop_s=hop_s)
    onset = np.zeros(fs.times_s.shape[0])
    onset[detect_onsets(spectral_flux(fs.band_db), fs.frame_rate, loudness_db=fs.loudness_db)] = fs.frame_rate
    stm, tm = modulation_energies(fs.band_db, fs.frame_rate)
    n = fs.times_s.shape[0]
    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    out[:, 0] = fs.loudness_db
    out[:, 1] = onset
    out[:, 2] = fs.centroid_hz
    out[:, 3] = fs.brightness
    n_stm = len(MOD_RATES_HZ) * len(MOD_SCALES_CPO)
    out[:, 4:4 + n_stm] = stm.reshape(n, -1)
    out[:, 4 + n_stm:] = tm.reshape(n, -1)
    return fs.times_s, out


def bin_frames(times_s: np.ndarray, values: np.ndarray, bin_s: float, n_bins: int) -> np.ndarray:
    """Average frame values into consecutive time bins.

    Parameters
    ----------
    times_s : ndarray of shape (n_frames,)
        Frame times in seconds.
    values : ndarray of shape (n_frames, n_features)
    bin_s : float
        Bin length in seconds; bin ``k`` is ``[k * bin_s, (k + 1) * bin_s)``.
    n_bins : int

    Returns
    -------
    binned : ndarray of shape (n_bins, n_features), float64
        Mean over the frames in each bin; frames outside ``[0, n_bins * bin_s)``
        are ignored. A bin with no frame raises (use a shorter hop).
    """
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] != t.shape[0]:
        raise ValueError(f"values must have shape (n_frames={t.shape[0]}, n_features); got {v.shape}")
    if not bin_s > 0 or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"bin_s must be > 0 s and n_bins a whole number >= 1; got {bin_s!r}, {n_bins!r}")
    k = np.floor(t / bin_s + 1e-9).astype(np.int64)
    ok = (k >= 0) & (k < n_bins)
    counts = np.bincount(k[ok], minlength=n_bins)
    if np.any(counts == 0):
        raise ValueError(f"bin {int(np.argmin(counts))} of {bin_s} s holds no frame; "
                         "bins must be longer than the frame hop and covered by the audio")
    sums = np.zeros((n_bins, v.shape[1]))
    np.add.at(sums, k[ok], v[ok])
    return sums / counts[:, None]


def features_per_tr(audio, sr: int, tr_s: float, n_trs: int, *, hop_s: float = FRAME_HOP_S) -> np.ndarray:
    """Frame features averaged into TR bins.

    The audio is taken to start at the start of the first TR. It is
    zero-padded (silence) or cut to exactly ``n_trs * tr_s`` seconds first, so
    every bin is covered and frames near the end see the same context however
    long the input was.

    Parameters
    ----------
    audio : array of shape (n_samples,)
        Mono audio, float in [-1, 1].
    sr : int
        Sample rate in Hz (at least :data:`MIN_SR`).
    tr_s : float
        Bin length in seconds (the TR, or any finer time step).
    n_trs : int
        Number of bins.
    hop_s : float
        Frame hop in seconds; must be shorter than ``tr_s``.

    Returns
    -------
    features : ndarray of shape (n_trs, len(FEATURE_NAMES)), float32
        Bin ``k`` is the mean of the frame features over ``[k * tr_s, (k + 1) * tr_s)``.
    """
    x, sr = _check_audio(audio, sr)
    if not (isinstance(tr_s, (int, float)) and tr_s > 0) or isinstance(tr_s, bool):
        raise ValueError(f"tr_s must be a positive number of seconds; got {tr_s!r}")
    if isinstance(n_trs, bool) or int(n_trs) != n_trs or n_trs < 1:
        raise ValueError(f"n_trs must be a whole number >= 1; got {n_trs!r}")
    if hop_s >= tr_s:
        raise ValueError(f"hop_s ({hop_s} s) must be shorter than tr_s ({tr_s} s)")
    n = int(round(n_trs * tr_s * sr))
    if x.shape[0] != n:
        y = np.zeros(n, dtype=np.float32)
        y[:min(n, x.shape[0])] = x[:n]
        x = y
    times, f = frame_features(x, sr, hop_s=hop_s)
    return bin_frames(times, f, tr_s, int(n_trs)).astype(np.float32)
