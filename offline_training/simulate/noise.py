"""Noise and head motion of the simulated participant.

Image formation, per volume ``n`` (float32, one volume at a time)::

    T_n  = S0 * (1 + r_n / 100)                       tissue image (moves with the head)
    M_n  = T_n resampled by the true motion P_n        (identity when P_n = 0)
    Y_n  = | M_n * (1 + F_n) * B * (1 + D_n) + N_th |  magnitude image, rounded to int16

``r_n`` is the music response (:mod:`.response`), ``B`` the coil bias and
``S0`` the tissue intensity (:mod:`.geometry`). The stochastic terms:

``F_n`` (fractional fluctuation, per voxel)
    - AR(1) noise ``e_n = phi e_{n-1} + sqrt(1 - phi**2) eta_n`` with
      ``phi`` = 0.35 at TR 1.5 s and ``eta`` white noise smoothed by a
      Gaussian of 0.6 voxel s.d. (the acquisition's point spread), rescaled to
      unit variance; s.d. ``c_ar``.
    - Aliased physiological noise: cardiac (``f_c`` ~ U(0.95, 1.25) Hz) and
      respiratory (``f_r`` ~ U(0.22, 0.32) Hz) oscillations whose rate wanders
      by 3 % and 5 % over the run, each with its second harmonic (0.4 x),
      sampled at every slice's acquisition time ``n TR + SliceTiming[k]`` so
      they alias as they do in real data (cardiac folds to 0.1-0.3 Hz at TR
      1.5 s). Cardiac amplitude follows CSF and a smooth field, with a smooth
      spatial phase; respiratory amplitude grows towards the neck. s.d. ``c_ph``
      at the median voxel.
    - A global fluctuation (AR(1), phi = 0.9) common to all voxels, s.d. ``c_gl``.
``D_n`` (slow drift, scanner space)
    ``sum_{k=1..3} D_k(x) cos(pi k (n + 0.5) / N) / k`` with ``D_k`` smooth
    fields of s.d. ``drift_pct`` (1 % by default) plus a global linear trend
    of s.d. ``drift_pct / 2`` end to end.
``N_th`` (thermal)
    Complex Gaussian noise of s.d. ``sigma_th`` per channel, constant over the
    image, so background voxels are Rayleigh-distributed as in real magnitude
    images.

Temporal SNR: the variance shares of thermal, AR, physiological and global
noise are 0.35 / 0.40 / 0.20 / 0.05 at a voxel of median brain intensity,
and one factor scales all of them so that the *median* over brain voxels of
``S / sqrt(var_noise)`` equals the requested tSNR (40 by default, typical of
2 mm multiband EPI at 3 T). Because thermal noise does not scale with the
intensity, darker voxels (deep grey matter, dropout regions) have a lower tSNR
and bright ones a higher one. Drift is excluded, as tSNR is measured after
detrending.

Head motion (``simulate_motion``), in the convention of
:mod:`realtime.preprocessing` (``tx, ty, tz`` mm, ``rx, ry, rz`` rad, world
space, ``M = rigid_matrix(params)`` maps the reference head to the current
one, ``current(M x) = reference(x)``):

- slow drift: a linear trend plus 4 cosines over the run per parameter;
- jitter: AR(1) (rho 0.5) per parameter;
- respiration-induced apparent motion in ``ty`` and ``tz`` at the respiratory
  rate, sampled per volume;
- spikes: at Poisson times the head jerks by a random 6-D displacement of
  framewise displacement U(lo, hi) mm and comes back by a random fraction
  (50-100 %) one volume later.

================  ===============  ===========  ==================  ===============
preset            drift (mm, rad)  jitter (mm)  spikes per volume   spike FD (mm)
================  ===============  ===========  ==================  ===============
``none``          0                0            0                   -
``typical``       0.25, 0.003      0.022        1/120               0.5-1.0
``bad``           0.8, 0.010       0.045        1/35                1.0-3.0
================  ===============  ===========  ==================  ===============

``typical`` gives a mean FD (Power 2012, 50 mm sphere) of about 0.13 mm
(0.12-0.14 over seeds) with about 3 spikes per 410-volume run (each usually
two volumes with FD > 0.5 mm, the jerk and the return); ``bad`` about 0.35 mm
with about 12 spikes of 1-3 mm. The volume is
resampled with :func:`scipy.ndimage.affine_transform` (the affine special
case of ``map_coordinates``), trilinear by default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .auditory import smooth_fields
from .geometry import Anatomy

__all__ = [
    "MOTION_PRESETS",
    "MotionPreset",
    "simulate_motion",
    "move_volume",
    "NoiseConfig",
    "NoiseMaps",
    "build_noise_maps",
    "RunNoise",
]


@dataclass(frozen=True)
class MotionPreset:
    """Parameters of :func:`simulate_motion`.

    Attributes
    ----------
    drift_mm, drift_rad : float
        S.d. of the slow drift of each translation (mm) and rotation (rad).
    jitter_mm : float
        S.d. of the AR(1) jitter of each translation, mm; rotations get
        ``jitter_mm / 50`` rad (the same displacement on a 50 mm sphere).
    spike_rate : float
        Expected spikes per volume.
    spike_fd_mm : tuple of float
        Range of a spike's framewise displacement, mm.
    resp_mm : float
        Amplitude of respiration-induced apparent motion in ty and tz, mm.
    """

    drift_mm: float
    drift_rad: float
    jitter_mm: float
    spike_rate: float
    spike_fd_mm: tuple[float, float]
    resp_mm: float


#: The ``--motion`` presets.
MOTION_PRESETS: dict[str, MotionPreset] = {
    "none": MotionPreset(0.0, 0.0, 0.0, 0.0, (0.0, 0.0), 0.0),
    "typical": MotionPreset(0.25, 0.003, 0.022, 1 / 120, (0.5, 1.0), 0.02),
    "bad": MotionPreset(0.8, 0.010, 0.045, 1 / 35, (1.0, 3.0), 0.05),
}


def simulate_motion(n_volumes: int, tr_s: float, preset: str | MotionPreset, rng: np.random.Generator, *,
                    resp_hz: float = 0.27, radius_mm: float = 50.0) -> np.ndarray:
    """True rigid head motion of one run.

    Parameters
    ----------
    n_volumes : int
    tr_s : float
        TR in seconds.
    preset : str or MotionPreset
        ``"none"``, ``"typical"`` or ``"bad"`` (see :data:`MOTION_PRESETS`).
    rng : numpy.random.Generator
    resp_hz : float
        Respiratory rate for the apparent motion, Hz.
    radius_mm : float
        Sphere radius of framewise displacement, mm.

    Returns
    -------
    params : ndarray of shape (n_volumes, 6), float64
        ``(tx, ty, tz)`` mm and ``(rx, ry, rz)`` rad per volume, relative to
        the reference head position (so ``params[0]`` is near 0).
    """
    if isinstance(preset, str):
        if preset not in MOTION_PRESETS:
            raise ValueError(f"motion must be one of {', '.join(map(repr, MOTION_PRESETS))}; got {preset!r}")
        preset = MOTION_PRESETS[preset]
    n = int(n_volumes)
    p = np.zeros((n, 6))
    if preset.drift_mm == 0 and preset.jitter_mm == 0 and preset.spike_rate == 0 and preset.resp_mm == 0:
        return p
    scale = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]) * preset.drift_mm
    scale[3:] = preset.drift_rad
    u = (np.arange(n) + 0.5) / max(n, 1)
    basis = np.stack([u - 0.5] + [np.cos(np.pi * k * u) / k for k in range(1, 5)], axis=1)  # (n, 5)
    coef = rng.standard_normal((5, 6)) * scale / np.sqrt(np.sum(1.0 / np.arange(1, 6) ** 2))
    p += basis @ coef
    jit = np.r_[np.full(3, preset.jitter_mm), np.full(3, preset.jitter_mm / radius_mm)]
    rho = 0.5
    e = rng.standard_normal((n, 6))
    j = np.empty((n, 6))
    j[0] = e[0]
    for i in range(1, n):
        j[i] = rho * j[i - 1] + math.sqrt(1 - rho**2) * e[i]
    p += j * jit
    phase = rng.uniform(0, 2 * np.pi)
    resp = preset.resp_mm * np.sin(2 * np.pi * resp_hz * np.arange(n) * tr_s + phase)
    p[:, 1] += resp
    p[:, 2] += 0.6 * resp
    n_spikes = rng.poisson(preset.spike_rate * n)
    for _ in range(n_spikes):
        at = int(rng.integers(1, max(n - 1, 2)))
        d = rng.standard_normal(6)
        d[3:] /= radius_mm
        fd = np.abs(d[:3]).sum() + radius_mm * np.abs(d[3:]).sum()
        d *= rng.uniform(*preset.spike_fd_mm) / fd
        back = rng.uniform(0.5, 1.0)
        p[at:] += d
        if at + 1 < n:
            p[at + 1:] -= back * d
    return p - p[0]


def move_volume(volume: np.ndarray, params: np.ndarray, affine: np.ndarray, *, order: int = 1,
                out: np.ndarray | None = None) -> np.ndarray:
    """The head image as seen after the head moved by ``params``.

    ``current(M @ x) = reference(x)`` with ``M = rigid_matrix(params)`` in
    world mm, so each output voxel at world ``y`` samples the reference at
    ``inv(M) @ y``. Tissue moved in from outside the grid is 0.

    Parameters
    ----------
    volume : ndarray of shape (X, Y, Z), float32
        The reference (tissue) image.
    params : ndarray of shape (6,)
        ``(tx, ty, tz)`` mm, ``(rx, ry, rz)`` rad.
    affine : ndarray of shape (4, 4)
        Voxel -> world mm.
    order : int
        Spline order of the interpolation (1 = trilinear).
    out : ndarray of shape (X, Y, Z), float32, optional

    Returns
    -------
    moved : ndarray of shape (X, Y, Z), float32
    """
    from scipy import ndimage as ndi

    from realtime.preprocessing import rigid_matrix

    v = np.linalg.inv(affine) @ np.linalg.inv(rigid_matrix(params)) @ affine
    if out is None:
        out = np.empty(volume.shape, dtype=np.float32)
    ndi.affine_transform(volume, v[:3, :3], v[:3, 3], output=out, order=order, mode="constant", cval=0.0,
                         prefilter=order > 1)
    return out


@dataclass(frozen=True)
class NoiseConfig:
    """Noise settings (see the module docstring).

    Attributes
    ----------
    tsnr : float
        Median temporal SNR over brain voxels.
    share_thermal, share_ar, share_physio, share_global : float
        Variance shares at a voxel of median intensity; normalised to sum to 1.
    ar_phi : float
        AR(1) coefficient of the tissue noise at the run's TR.
    smooth_vox : float
        S.d. of the spatial smoothing of the AR noise, voxels.
    drift_pct : float
        S.d. of the slow drift maps, percent.
    """

    tsnr: float = 40.0
    share_thermal: float = 0.35
    share_ar: float = 0.40
    share_physio: float = 0.20
    share_global: float = 0.05
    ar_phi: float = 0.35
    smooth_vox: float = 0.6
    drift_pct: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.tsnr, (int, float)) and math.isfinite(self.tsnr) and self.tsnr > 0):
            raise ValueError(f"tsnr must be a positive number; got {self.tsnr!r}")
        shares = (self.share_thermal, self.share_ar, self.share_physio, self.share_global)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"noise variance shares must be >= 0 and not all 0; got {shares}")
        if not 0 <= self.ar_phi < 1:
            raise ValueError(f"ar_phi must be in [0, 1); got {self.ar_phi}")
        if not (isinstance(self.drift_pct, (int, float)) and math.isfinite(self.drift_pct) and self.drift_pct >= 0):
            raise ValueError(f"drift_pct must be a finite number >= 0 (percent; 0 for no drift); got {self.drift_pct!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NoiseMaps:
    """Per-subject spatial maps of the noise (fixed across runs).

    Attributes
    ----------
    sigma_thermal : float
        S.d. of each channel of the complex thermal noise, image units.
    c_ar, c_physio, c_global : float
        Fractional s.d. of AR, physiological (at the median voxel) and global noise.
    cardiac_amp, resp_amp : ndarray of shape grid.shape, float32
        Relative amplitude maps (their combination has median 1 over the brain).
    cardiac_cos, cardiac_sin : ndarray of shape grid.shape, float32
        Cosine and sine of the cardiac spatial phase.
    drift : ndarray of shape (3, X, Y, Z), float32
        Drift maps ``D_k`` as fractions.
    drift_trend : float
        Global linear trend end to end, fraction.
    tsnr_scale : float
        The factor that brought the median tSNR to ``config.tsnr``.
    ar_norm : float
        1 / s.d. of smoothed unit white noise.
    """

    sigma_thermal: float
    c_ar: float
    c_physio: float
    c_global: float
    cardiac_amp: np.ndarray
    resp_amp: np.ndarray
    cardiac_cos: np.ndarray
    cardiac_sin: np.ndarray
    drift: np.ndarray
    drift_trend: float
    tsnr_scale: float
    ar_norm: float

    def to_dict(self) -> dict:
        return {"sigma_thermal": self.sigma_thermal, "c_ar": self.c_ar, "c_physio": self.c_physio,
                "c_global": self.c_global, "drift_trend": self.drift_trend, "tsnr_scale": self.tsnr_scale}


def _smooth_series(t_s: np.ndarray, n: int, rng: np.random.Generator, *, length_s: float,
                   n_features: int = 64) -> np.ndarray:
    """Smooth zero-mean unit-variance random series over time, shape (n_t, n) (random Fourier features)."""
    w = rng.standard_normal((n, n_features)) / length_s
    phi = rng.uniform(0.0, 2 * np.pi, (n, n_features))
    a = rng.standard_normal((n, n_features))
    return np.stack([np.cos(np.outer(t_s, w[i]) + phi[i]) @ a[i] for i in range(n)], axis=1) * np.sqrt(2.0 / n_features)


def _predicted_tsnr(signal, c_ar, c_ph_map, c_gl, sigma_th):
    var = (signal * c_ar) ** 2 + (signal * c_ph_map) ** 2 + (signal * c_gl) ** 2 + sigma_th**2
    return signal / np.sqrt(var)


def build_noise_maps(anatomy: Anatomy, config: NoiseConfig, rng: np.random.Generator) -> NoiseMaps:
    """Draw a subject's noise maps and scale them to the requested tSNR.

    Parameters
    ----------
    anatomy : Anatomy
    config : NoiseConfig
    rng : numpy.random.Generator

    Returns
    -------
    NoiseMaps
    """
    from scipy import ndimage as ndi

    grid = anatomy.grid
    world = grid.world_coords()
    brain = anatomy.brain
    f = smooth_fields(world, 5, rng, length_mm=30.0).reshape(grid.shape + (5,))
    cardiac = np.clip(0.5 + 1.5 * anatomy.csf + 0.3 * f[..., 0], 0.1, None)
    resp = np.clip(1.0 - 0.4 * world[:, 2].reshape(grid.shape) / 68.0 + 0.2 * f[..., 1], 0.1, None)
    comb = np.sqrt(0.6 * cardiac**2 + 0.4 * resp**2)
    norm = float(np.median(comb[brain]))
    cardiac, resp = cardiac / norm, resp / norm
    phase = 0.5 * np.pi * f[..., 2]
    drift_f = smooth_fields(world, 3, np.random.default_rng(rng.integers(2**63)), length_mm=50.0)
    drift = (config.drift_pct / 100.0) * drift_f.T.reshape((3,) + grid.shape)
    trend = (config.drift_pct / 200.0) * float(rng.standard_normal())

    total = config.share_thermal + config.share_ar + config.share_physio + config.share_global
    sh = np.array([config.share_thermal, config.share_ar, config.share_physio, config.share_global]) / total
    signal = (anatomy.s0 * anatomy.bias)[brain].astype(np.float64)
    s_med = float(np.median(signal))
    c_th, c_ar, c_ph, c_gl = np.sqrt(sh) / config.tsnr
    ph_map = c_ph * np.sqrt(0.6 * cardiac[brain] ** 2 + 0.4 * resp[brain] ** 2)
    tsnr_1 = _predicted_tsnr(signal, c_ar, ph_map, c_gl, c_th * s_med)
    k = float(np.median(tsnr_1)) / config.tsnr
    delta = np.zeros((9, 9, 9))
    delta[4, 4, 4] = 1.0
    ar_norm = 1.0 / float(np.sqrt(np.sum(ndi.gaussian_filter(delta, config.smooth_vox, truncate=3.0) ** 2)))
    return NoiseMaps(sigma_thermal=float(k * c_th * s_med), c_ar=float(k * c_ar), c_physio=float(k * c_ph),
                     c_global=float(k * c_gl), cardiac_amp=cardiac.astype(np.float32),
                     resp_amp=resp.astype(np.float32), cardiac_cos=np.cos(phase).astype(np.float32),
                     cardiac_sin=np.sin(phase).astype(np.float32), drift=drift.astype(np.float32),
                     drift_trend=trend, tsnr_scale=k, ar_norm=ar_norm)


class RunNoise:
    """Noise generator of one run: call :meth:`fluctuation` and :meth:`scanner_gain` for volumes 0, 1, 2, ...

    Parameters
    ----------
    maps : NoiseMaps
    config : NoiseConfig
    shape : tuple of int
        Grid shape.
    n_volumes : int
    tr_s : float
    slice_times_s : ndarray of shape (Z,)
        Acquisition time of each slice within the TR, seconds.
    bias : ndarray of shape grid.shape, float32
        Coil sensitivity.
    rng : numpy.random.Generator
        The run's own stream; volumes must be requested in order.
    """

    def __init__(self, maps: NoiseMaps, config: NoiseConfig, shape, n_volumes: int, tr_s: float,
                 slice_times_s: np.ndarray, bias: np.ndarray, rng: np.random.Generator):
        self.maps, self.config, self.shape = maps, config, tuple(shape)
        self.n_volumes, self.tr_s = int(n_volumes), float(tr_s)
        self.slice_times = np.asarray(slice_times_s, dtype=np.float64)
        self.bias = bias
        self.rng = rng
        self._next = 0
        self._ar = None
        self._global = 0.0
        # physiological phases on a fine clock covering the run
        dt = 0.05
        t = np.arange(0.0, self.n_volumes * self.tr_s + 2 * dt, dt)
        self._t = t
        self.cardiac_hz = float(rng.uniform(0.95, 1.25))
        self.resp_hz = float(rng.uniform(0.22, 0.32))
        wander = _smooth_series(t, 2, rng, length_s=30.0)
        self._theta_c = 2 * np.pi * np.cumsum(self.cardiac_hz * (1 + 0.03 * wander[:, 0])) * dt
        self._theta_r = 2 * np.pi * np.cumsum(self.resp_hz * (1 + 0.05 * wander[:, 1])) * dt
        self._theta_c += rng.uniform(0, 2 * np.pi)
        self._theta_r += rng.uniform(0, 2 * np.pi)
        # physio variance: a sinusoid of amplitude A has variance A**2 / 2; with the
        # 0.4 harmonic the total is (1 + 0.16) A**2 / 2
        self._amp = maps.c_physio * math.sqrt(2.0 / 1.16)
        self._buf = np.empty(self.shape, dtype=np.float32)

    def _phases(self, n: int):
        ts = n * self.tr_s + self.slice_times
        return np.interp(ts, self._t, self._theta_c), np.interp(ts, self._t, self._theta_r)

    def fluctuation(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """``F_n``: AR + physiological + global noise, a fraction of the signal.

        Returns
        -------
        F : ndarray of shape grid.shape, float32
        """
        from scipy import ndimage as ndi

        if n != self._next:
            raise ValueError(f"volumes must be generated in order: expected {self._next}, got {n}")
        self._next += 1
        m, cfg = self.maps, self.config
        eta = self.rng.standard_normal(self.shape, dtype=np.float32)
        eta = ndi.gaussian_filter(eta, cfg.smooth_vox, truncate=3.0, output=np.float32)
        eta *= np.float32(m.ar_norm)
        if self._ar is None:
            self._ar = eta
        else:
            self._ar *= np.float32(cfg.ar_phi)
            self._ar += np.float32(math.sqrt(1 - cfg.ar_phi**2)) * eta
        g_phi = 0.9
        e = float(self.rng.standard_normal())
        self._global = e if n == 0 else g_phi * self._global + math.sqrt(1 - g_phi**2) * e
        out = np.empty(self.shape, dtype=np.float32) if out is None else out
        np.multiply(self._ar, np.float32(m.c_ar), out=out)
        out += np.float32(m.c_global * self._global)
        th_c, th_r = self._phases(n)
        c1, s1 = np.cos(th_c).astype(np.float32), np.sin(th_c).astype(np.float32)
        c2, s2 = np.cos(2 * th_c).astype(np.float32), np.sin(2 * th_c).astype(np.float32)
        # cos(theta + phi) = cos(theta) cos(phi) - sin(theta) sin(phi), per slice (last axis)
        card = (m.cardiac_cos * c1 - m.cardiac_sin * s1) + 0.4 * (m.cardiac_cos * c2 - m.cardiac_sin * s2)
        resp = np.cos(th_r).astype(np.float32) + 0.4 * np.cos(2 * th_r).astype(np.float32)
        a = np.float32(self._amp)
        out += a * np.float32(math.sqrt(0.6)) * m.cardiac_amp * card
        out += a * np.float32(math.sqrt(0.4)) * m.resp_amp * resp
        return out

    def scanner_gain(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """``B * (1 + D_n)``: coil bias times slow drift, shape grid.shape, float32."""
        u = (n + 0.5) / self.n_volumes
        out = np.empty(self.shape, dtype=np.float32) if out is None else out
        out.fill(np.float32(1.0 + self.maps.drift_trend * (u - 0.5)))
        for k in range(3):
            out += np.float32(math.cos(math.pi * (k + 1) * u) / (k + 1)) * self.maps.drift[k]
        out *= self.bias
        return out

    def thermal(self, magnitude: np.ndarray) -> np.ndarray:
        """Add complex thermal noise and take the magnitude, in place; returns ``magnitude``."""
        s = np.float32(self.maps.sigma_thermal)
        re = self.rng.standard_normal(self.shape, dtype=np.float32)
        re *= s
        magnitude += re
        im = self.rng.standard_normal(self.shape, dtype=np.float32)
        im *= s
        np.hypot(magnitude, im, out=magnitude)
        return magnitude
