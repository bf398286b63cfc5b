"""Ground-truth tuning and the noise-free BOLD response of the responsive voxels.

Stimulus regressors (on a fine time grid of ``DT_S`` = 0.1 s)
    ``z_a(t)``: the 34 acoustic features of :mod:`music.features` of the audio
    actually played in the run (each event's excerpt from
    :func:`offline_training.bids.stimulus_segment`, 2 s linear fades, -20 dBFS
    RMS, placed at its onset), averaged into 0.1 s bins and z-scored within
    the run. ``z_g(t)``: the 10 genre indicators (fraction of the bin covered
    by an event of that genre), centred and scaled as ``(g - 0.1) / 0.3`` so a
    genre heard a tenth of the time has unit variance.
Tuning (per voxel ``v``)
    ``w_v`` (34 acoustic weights) and ``u_v`` (10 genre weights) are low-rank
    and spatially smooth: ``w_v = P a_v + 0.5 e_v`` with ``P`` a random
    34 x 4 matrix, ``a_v`` four smooth fields over MNI space (8 mm length) and
    ``e_v`` independent noise; likewise ``u_v`` with 3 fields. Both are
    normalised to unit length. The neural drive is
    ``d_v(t) = sqrt(1 - gamma) w_v . z_a(t) + sqrt(gamma) u_v . z_g(t)``
    with ``gamma`` (``genre_share``, default 0.3) the share of the genre
    category component.
Hemodynamics
    A double-gamma HRF per voxel (Glover 1999 form, unit area):
    ``h(t) = G(t; p1 / b + 1, b) - c G(t; p2 / b + 1, b)`` with ``G`` the gamma
    density (shape, scale), dispersion ``b`` = 0.9 s, peak ``p1`` in [4, 6] s
    (mean 5 s), undershoot peak ``p2 = p1 + 6 +- 1`` s and undershoot ratio
    ``c`` in [0.1, 0.5] (mean 0.3), smooth over space with 20 % voxel noise,
    truncated at 32 s.
BOLD response
    ``r_v(t) = gain_pct * strength_v * (h_v * d_v)(t)`` in percent signal
    change, computed on the 0.1 s grid and sampled (linear interpolation) at
    each voxel's acquisition time ``n * TR + SliceTiming[slice]``. It enters
    the tissue image as ``S0 * (1 + r / 100)``.

Nothing here is musicnn: a decoder trained to predict musicnn embeddings from
these voxels faces the model mismatch Brain2Music faced with MuLan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from music.features import FEATURE_NAMES
from offline_training.bids import GTZAN_GENRES as GENRES

from .auditory import AuditoryRegion, smooth_fields

__all__ = [
    "DT_S",
    "HRF_LENGTH_S",
    "GENRES",
    "double_gamma_hrf",
    "HrfParams",
    "sample_hrf_params",
    "Tuning",
    "sample_tuning",
    "genre_regressors",
    "stimulus_regressors",
    "voxel_responses",
]

#: Time step of the fine grid on which responses are computed, seconds.
DT_S = 0.1
#: Length of the HRF kernel, seconds.
HRF_LENGTH_S = 32.0
_DISPERSION_S = 0.9
_N_ACOUSTIC_FIELDS = 4
_N_GENRE_FIELDS = 3


def double_gamma_hrf(t_s: np.ndarray, peak_s, undershoot_s, ratio, *, dispersion_s: float = _DISPERSION_S,
                     normalise: bool = True) -> np.ndarray:
    """Double-gamma haemodynamic response functions.

    Parameters
    ----------
    t_s : ndarray of shape (n_t,)
        Times in seconds (>= 0) at which to evaluate.
    peak_s, undershoot_s, ratio : float or ndarray of shape (n,)
        Time of the peak and of the undershoot's trough in seconds, and the
        undershoot's size relative to the peak's gamma density.
    dispersion_s : float
        Scale of both gamma densities, seconds.
    normalise : bool
        Scale each HRF to unit sum times ``dt`` (unit area), so a sustained
        unit drive gives a unit response.

    Returns
    -------
    h : ndarray of shape (n_t,) or (n_t, n), float64
    """
    from scipy.stats import gamma

    t = np.asarray(t_s, dtype=np.float64)[:, None]
    p1 = np.atleast_1d(np.asarray(peak_s, dtype=np.float64))[None, :]
    p2 = np.atleast_1d(np.asarray(undershoot_s, dtype=np.float64))[None, :]
    c = np.atleast_1d(np.asarray(ratio, dtype=np.float64))[None, :]
    b = dispersion_s
    h = gamma.pdf(t, p1 / b + 1.0, scale=b) - c * gamma.pdf(t, p2 / b + 1.0, scale=b)
    if normalise:
        dt = float(t[1, 0] - t[0, 0]) if t.shape[0] > 1 else 1.0
        h = h / (h.sum(axis=0, keepdims=True) * dt)
    return h[:, 0] if np.ndim(peak_s) == 0 else h


@dataclass(frozen=True)
class HrfParams:
    """Per-voxel HRF parameters.

    Attributes
    ----------
    peak_s, undershoot_s, ratio : ndarray of shape (n_voxels,)
        See :func:`double_gamma_hrf`.
    """

    peak_s: np.ndarray
    undershoot_s: np.ndarray
    ratio: np.ndarray

    def kernels(self, dt_s: float = DT_S, length_s: float = HRF_LENGTH_S) -> np.ndarray:
        """HRF kernels sampled at ``0, dt, ...``, shape (n_t, n_voxels), unit area."""
        t = np.arange(int(round(length_s / dt_s))) * dt_s
        return double_gamma_hrf(t, self.peak_s, self.undershoot_s, self.ratio)


def sample_hrf_params(mni_mm: np.ndarray, rng: np.random.Generator) -> HrfParams:
    """Spatially smooth per-voxel HRF parameters (see the module docstring).

    Parameters
    ----------
    mni_mm : ndarray of shape (n_voxels, 3)
    rng : numpy.random.Generator

    Returns
    -------
    HrfParams
    """
    n = mni_mm.shape[0]
    f = np.sqrt(0.8) * smooth_fields(mni_mm, 3, rng, length_mm=10.0) + np.sqrt(0.2) * rng.standard_normal((n, 3))
    peak = np.clip(5.0 + 0.5 * f[:, 0], 4.0, 6.0)
    under = peak + np.clip(6.0 + 1.0 * f[:, 1], 4.0, 8.0)
    ratio = np.clip(0.3 + 0.08 * f[:, 2], 0.1, 0.5)
    return HrfParams(peak_s=peak, undershoot_s=under, ratio=ratio)


@dataclass(frozen=True)
class Tuning:
    """Ground-truth tuning of the responsive voxels.

    Attributes
    ----------
    acoustic : ndarray of shape (34, n_voxels)
        Unit-length weights on the z-scored features of :data:`music.features.FEATURE_NAMES`.
    genre : ndarray of shape (10, n_voxels)
        Unit-length weights on the scaled genre indicators (order of :data:`GENRES`).
    amplitude_pct : ndarray of shape (n_voxels,)
        ``gain_pct * strength``: percent signal change per unit of drive.
    genre_share : float
        ``gamma``, the share of the genre component in the drive.
    hrf : HrfParams
    """

    acoustic: np.ndarray
    genre: np.ndarray
    amplitude_pct: np.ndarray
    genre_share: float
    hrf: HrfParams

    @property
    def n_voxels(self) -> int:
        return int(self.amplitude_pct.shape[0])

    def weights(self) -> np.ndarray:
        """Combined weights on ``[z_a, z_g]``, shape (44, n_voxels), without the amplitude."""
        return np.vstack([np.sqrt(1.0 - self.genre_share) * self.acoustic, np.sqrt(self.genre_share) * self.genre])


def _low_rank_unit(mni, n_out, n_fields, rng) -> np.ndarray:
    p = rng.standard_normal((n_out, n_fields))
    a = smooth_fields(mni, n_fields, rng)
    w = p @ a.T + 0.5 * rng.standard_normal((n_out, mni.shape[0]))
    return w / np.linalg.norm(w, axis=0, keepdims=True)


def sample_tuning(region: AuditoryRegion, rng: np.random.Generator, *, gain_pct: float,
                  genre_share: float = 0.3) -> Tuning:
    """Draw the tuning of every responsive voxel.

    Parameters
    ----------
    region : AuditoryRegion
    rng : numpy.random.Generator
    gain_pct : float
        Percent signal change per unit of drive at strength 1.
    genre_share : float
        Share of the genre-category component (0..1).

    Returns
    -------
    Tuning
    """
    if not 0.0 <= genre_share <= 1.0:
        raise ValueError(f"genre_share must be in [0, 1]; got {genre_share}")
    acoustic = _low_rank_unit(region.mni_mm, len(FEATURE_NAMES), _N_ACOUSTIC_FIELDS, rng)
    genre = _low_rank_unit(region.mni_mm, len(GENRES), _N_GENRE_FIELDS, rng)
    hrf = sample_hrf_params(region.mni_mm, rng)
    return Tuning(acoustic=acoustic, genre=genre, amplitude_pct=gain_pct * region.strength,
                  genre_share=float(genre_share), hrf=hrf)


def genre_regressors(events, n_bins: int, dt_s: float) -> np.ndarray:
    """Fraction of each time bin covered by an event of each genre.

    Parameters
    ----------
    events : sequence of offline_training.bids.Event
    n_bins : int
    dt_s : float
        Bin length in seconds; bin ``k`` is ``[k dt, (k+1) dt)``.

    Returns
    -------
    g : ndarray of shape (n_bins, 10), float64
        Columns in the order of :data:`GENRES`; values in [0, 1].
    """
    g = np.zeros((n_bins, len(GENRES)))
    edges = np.arange(n_bins + 1) * dt_s
    for ev in events:
        a, b = ev.onset_s, ev.onset_s + (ev.end_s - ev.start_s)
        overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None) / dt_s
        g[:, GENRES.index(ev.genre)] += overlap
    return np.clip(g, 0.0, 1.0)


def stimulus_regressors(acoustic: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """The regressors ``[z_a, z_g]`` of the generative model.

    Parameters
    ----------
    acoustic : ndarray of shape (n_t, 34)
        Acoustic features per bin (:func:`music.features.features_per_tr`).
    genres : ndarray of shape (n_t, 10)
        From :func:`genre_regressors`.

    Returns
    -------
    x : ndarray of shape (n_t, 44), float64
        Acoustic features z-scored over the run (a constant feature becomes
        0), genre indicators as ``(g - 0.1) / 0.3``.
    """
    a = np.asarray(acoustic, dtype=np.float64)
    sd = a.std(axis=0)
    za = (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    zg = (np.asarray(genres, dtype=np.float64) - 0.1) / 0.3
    return np.hstack([za, zg])


def voxel_responses(x: np.ndarray, tuning: Tuning, sample_times_s: np.ndarray, *, dt_s: float = DT_S,
                    chunk: int = 512) -> np.ndarray:
    """Noise-free BOLD responses of the responsive voxels, percent signal change.

    Parameters
    ----------
    x : ndarray of shape (n_t, 44)
        Regressors on the fine grid (:func:`stimulus_regressors`); sample ``m``
        stands for the bin ``[m dt, (m+1) dt)`` and is placed at its centre.
    tuning : Tuning
    sample_times_s : ndarray of shape (n_volumes, n_voxels)
        Acquisition time of every voxel in every volume, seconds from the run start.
    dt_s : float
    chunk : int
        Voxels per block (bounds memory).

    Returns
    -------
    r : ndarray of shape (n_volumes, n_voxels), float32
    """
    from scipy import fft as sfft

    n_t = x.shape[0]
    kernels = tuning.hrf.kernels(dt_s)
    n_k = kernels.shape[0]
    nfft = sfft.next_fast_len(n_t + n_k)
    w = tuning.weights()
    n_vol = sample_times_s.shape[0]
    out = np.empty((n_vol, tuning.n_voxels), dtype=np.float32)
    for a in range(0, tuning.n_voxels, chunk):
        b = min(a + chunk, tuning.n_voxels)
        drive = x @ w[:, a:b]
        conv = sfft.irfft(sfft.rfft(drive, nfft, axis=0) * sfft.rfft(kernels[:, a:b], nfft, axis=0),
                          nfft, axis=0)[:n_t] * dt_s
        resp = conv * tuning.amplitude_pct[a:b]
        pos = (sample_times_s[:, a:b] - 0.5 * dt_s) / dt_s
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_t - 2)
        frac = np.clip(pos - i0, 0.0, 1.0)
        cols = np.arange(b - a)[None, :]
        out[:, a:b] = (resp[i0, cols] * (1 - frac) + resp[i0 + 1, cols] * frac).astype(np.float32)
    return out
