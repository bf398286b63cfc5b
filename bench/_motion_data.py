"""Stand-in EPI runs with known head motion, for ``bench/preprocess.py``.

Until ``b2m simulate`` exists, this builds a run at the full ds003720 grid
(96 x 96 x 68 voxels of 2 mm, int16) from the MNI152 tissue templates that
ship with nilearn (no download):

1. An EPI-like (T2*-weighted) baseline: CSF brighter than grey matter,
   brighter than white matter (about 1,000-3,000 in the brain), a faint
   scalp/muscle shell, a smooth receive-coil bias field, and a little blur
   for the point-spread function. Resampled onto a 96 x 96 x 68, 2 mm grid
   (axes L->R flipped, as scanners write LAS images) centred on the brain.
2. Per volume, the baseline moved by known rigid parameters with cubic
   B-splines (``scipy.ndimage.map_coordinates``, order 3), in the project's
   convention (:mod:`realtime.preprocessing._rigid`): ``M = rigid_matrix(p)``
   maps reference -> current world mm and ``current(M x) = reference(x)``,
   so the current volume at world point ``y`` is the reference at ``M^-1 y``.
3. Optionally Rician noise (magnitude of complex Gaussian noise) for a given
   temporal SNR.

Bench-only helper; nothing in the packages imports it.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["GRID_SHAPE", "VOXEL_MM", "grid_affine", "spm_mat", "build_baseline", "typical_trajectory",
           "Mover", "rician"]

GRID_SHAPE = (96, 96, 68)  # ds003720 BOLD grid
VOXEL_MM = 2.0


def grid_affine(centre_mm, shape=GRID_SHAPE, voxel_mm: float = VOXEL_MM) -> np.ndarray:
    """A LAS voxel -> mm affine (x axis flipped) whose grid centre is at ``centre_mm``."""
    a = np.diag([-voxel_mm, voxel_mm, voxel_mm, 1.0])
    mid = (np.asarray(shape, float) - 1.0) / 2.0
    a[:3, 3] = np.asarray(centre_mm, float) - a[:3, :3] @ mid
    return a


def spm_mat(affine) -> np.ndarray:
    """SPM's 1-based voxel -> mm matrix of a NIfTI (0-based) affine.

    SPM's voxel (1, 1, 1) is NIfTI's (0, 0, 0): ``mat @ [i+1, j+1, k+1, 1] ==
    affine @ [i, j, k, 1]``, so ``mat = affine @ T(-1, -1, -1)``.
    """
    a = np.asarray(affine, float)
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    return a @ shift


def build_baseline(shape=GRID_SHAPE, voxel_mm: float = VOXEL_MM, *, seed: int = 0):
    """The EPI-like reference volume on the ds003720 grid.

    Returns
    -------
    baseline : ndarray of shape ``shape``, float64
        Noise-free signal (about 1,000-3,000 in the brain, 0 in air).
    affine : ndarray of shape (4, 4)
        Voxel -> world mm of the grid (LAS, origin near the anterior commissure).
    brain : ndarray of bool, shape ``shape``
        Brain-mask voxels (template brain mask > 0.5).
    gm : ndarray of shape ``shape``, float64
        Grey-matter probability on the grid.
    """
    from nilearn import datasets
    from scipy import ndimage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imgs = [datasets.load_mni152_gm_template(resolution=2), datasets.load_mni152_wm_template(resolution=2),
                datasets.load_mni152_brain_mask(resolution=2)]
    t_aff = imgs[0].affine
    g, w, m = (np.clip(np.asarray(i.get_fdata(), np.float64), 0.0, 1.0) for i in imgs)
    csf = np.clip(m - g - w, 0.0, 1.0)
    # T2*-weighted EPI at 3 T: CSF > GM > WM
    epi = 2500.0 * csf + 1750.0 * g + 1250.0 * w
    # a faint scalp/muscle shell (fat-suppressed EPI shows little outside the brain)
    head = ndimage.binary_dilation(m > 0.5, iterations=4) & ~ndimage.binary_dilation(m > 0.5, iterations=1)
    epi += 350.0 * head
    # smooth receive-coil bias (+-10 %) attached to the head
    rng = np.random.default_rng(seed)
    ijk = np.indices(m.shape).reshape(3, -1).T
    xyz = ijk @ t_aff[:3, :3].T + t_aff[:3, 3]
    u = xyz / 100.0
    bias = 1.0 + 0.06 * u[:, 1] - 0.05 * u[:, 2] + 0.04 * (u[:, 0] ** 2) + 0.02 * rng.standard_normal() * u[:, 2] ** 2
    epi *= bias.reshape(m.shape)
    epi = ndimage.gaussian_filter(epi, 0.5)  # point-spread function, in template voxels

    # the ds003720 grid, centred on the brain's bounding box
    bidx = np.argwhere(m > 0.5)
    bxyz = bidx @ t_aff[:3, :3].T + t_aff[:3, 3]
    centre = np.round((bxyz.min(0) + bxyz.max(0)) / 2.0)
    affine = grid_affine(centre, shape, voxel_mm)
    grid = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ grid + affine[:3, 3:]
    tvox = np.linalg.inv(t_aff)[:3, :3] @ world + np.linalg.inv(t_aff)[:3, 3:]
    baseline = np.clip(ndimage.map_coordinates(epi, tvox, order=3, mode="constant", cval=0.0), 0.0, None)
    brain = ndimage.map_coordinates(m, tvox, order=1, mode="constant", cval=0.0) > 0.5
    gm = np.clip(ndimage.map_coordinates(g, tvox, order=1, mode="constant", cval=0.0), 0.0, 1.0)
    return baseline.reshape(shape), affine, brain.reshape(shape), gm.reshape(shape)


def typical_trajectory(n: int, *, seed: int = 1, max_mm: float = 1.5, max_deg: float = 1.5) -> np.ndarray:
    """Typical head motion: slow drift plus occasional spikes and one step.

    The drift is a smoothed random walk per parameter (peaks 30-80 % of the
    limit); spikes of 0.5-1 mm (and 0.5-1 degree) last 1-3 volumes and come
    back; one step of 0.3-0.6 mm stays. Everything is clipped to ``max_mm``
    and ``max_deg``. Volume 0 (the reference) is exactly zero.

    Returns
    -------
    params : ndarray of shape (n, 6), float64
        mm and radians, the project's convention (reference -> volume).
    """
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((n, 6)), axis=0)
    walk = gaussian_filter1d(walk, max(n / 25.0, 1.0), axis=0, mode="nearest")
    walk -= walk[0]
    peak = np.abs(walk).max(axis=0)
    peak[peak == 0] = 1.0
    limit = np.array([max_mm] * 3 + [max_deg] * 3)
    walk *= rng.uniform(0.3, 0.8, 6) * limit / peak
    p = walk
    n_spikes = max(1, n // 60)
    for _ in range(n_spikes):
        t0 = int(rng.integers(min(5, n - 1), n))
        length = int(rng.integers(1, 4))
        d = rng.standard_normal(6)
        d[:3] *= rng.uniform(0.5, 1.0) / np.linalg.norm(d[:3])
        d[3:] *= rng.uniform(0.5, 1.0) / np.linalg.norm(d[3:])
        p[t0:t0 + length] += d
    if n > 10:
        t0 = int(rng.integers(n // 3, 2 * n // 3))
        d = rng.standard_normal(6)
        d[:3] *= rng.uniform(0.3, 0.6) / np.linalg.norm(d[:3])
        d[3:] *= rng.uniform(0.2, 0.4) / np.linalg.norm(d[3:])
        p[t0:] += d
    p = np.clip(p, -limit, limit)
    p[0] = 0.0
    p[:, 3:] = np.deg2rad(p[:, 3:])
    return p


class Mover:
    """Moves the baseline by rigid parameters (cubic B-spline, prefiltered once).

    Parameters
    ----------
    baseline : ndarray of shape (nx, ny, nz)
    affine : ndarray of shape (4, 4)
    """

    def __init__(self, baseline, affine):
        from scipy import ndimage

        self.shape = baseline.shape
        self.affine = np.asarray(affine, float)
        self.inv_affine = np.linalg.inv(self.affine)
        self._coef = ndimage.spline_filter(np.asarray(baseline, np.float64), order=3, mode="constant")
        self._grid = np.indices(self.shape).reshape(3, -1).astype(np.float64)

    def __call__(self, params) -> np.ndarray:
        """The volume whose tissue moved by ``params``: ``current(M x) = baseline(x)``.

        Returns
        -------
        ndarray of shape ``shape``, float64
        """
        from scipy import ndimage

        from realtime.preprocessing import rigid_matrix

        # current voxel v sits at world A v, which holds reference world M^-1 A v
        v = self.inv_affine @ np.linalg.inv(rigid_matrix(params)) @ self.affine
        coords = v[:3, :3] @ self._grid + v[:3, 3:]
        out = ndimage.map_coordinates(self._coef, coords, order=3, mode="constant", cval=0.0, prefilter=False)
        return np.clip(out, 0.0, None).reshape(self.shape)


def rician(volume, sigma: float, rng) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std ``sigma`` per channel."""
    re = volume + rng.normal(0.0, sigma, volume.shape)
    im = rng.normal(0.0, sigma, volume.shape)
    return np.hypot(re, im)


def moving_run(n: int, *, seed: int, tsnr: float, clean: bool = False, log=None) -> dict:
    """A stand-in run with known motion: the baseline moved along a typical trajectory, Rician noise.

    Returns ``base, affine, brain, gm`` (:func:`build_baseline`), ``params``
    (n, 6) the true motion, ``sigma`` the noise per channel, ``noisy``
    (n, x, y, z) int16, and with ``clean`` also the noise-free float32 volumes.
    Seeds: baseline ``seed``, trajectory ``seed + 1``, noise ``seed + 2``.
    """
    base, affine, brain, gm = build_baseline(seed=seed)
    mover = Mover(base, affine)
    params = typical_trajectory(n, seed=seed + 1)
    sigma = float(np.median(base[brain])) / tsnr
    rng = np.random.default_rng(seed + 2)
    out = {"base": base, "affine": affine, "brain": brain, "gm": gm, "params": params, "sigma": sigma,
           "noisy": np.empty((n,) + base.shape, np.int16),
           "clean": np.empty((n,) + base.shape, np.float32) if clean else None}
    for t in range(n):
        v = mover(params[t])
        if clean:
            out["clean"][t] = v
        out["noisy"][t] = np.clip(np.rint(rician(v, sigma, rng)), 0, 32767)
        if log is not None and t % 50 == 49:
            log(f"  generated {t + 1}/{n} volumes")
    return out


def grey_mask(brain, gm, n_voxels: int) -> np.ndarray:
    """The ``n_voxels`` most grey voxels of the brain, as a mask (a model's realistic voxel set)."""
    score = np.where(brain, gm, -1.0).ravel()
    keep = np.argpartition(score, -n_voxels)[-n_voxels:]
    mask = np.zeros(score.size, bool)
    mask[keep] = True
    return mask.reshape(brain.shape)
