"""Where the music-responsive voxels are, and how strongly each responds.

Centres
    The 12 "Auditory" ROIs of Seitzman et al. (2018, NeuroImage 206:116290),
    6 per hemisphere on the superior temporal plane, Heschl's gyrus, the
    superior temporal gyrus and the parietal operculum, as packaged with
    nilearn (``fetch_coords_seitzman_2018``, no download). Each centre is
    jittered per subject by N(0, 2 mm) per axis in MNI space.
Region
    A voxel is in the auditory region if its grey-matter fraction is at least
    0.25 and its unmoved MNI position lies within ``radius_mm`` (12 mm) of a
    centre: about 3,000 voxels at 2 mm, 400 at 4 mm, 50 at 8 mm.
Graded strength
    ``strength_v = gm_v * sum_j g_j exp(-d_vj**2 / (2 * 6 mm**2)) * exp(0.3 z_v)``
    with ROI gains ``g_j ~ LogNormal(0, 0.35)`` and ``z_v`` a smooth random
    field (:func:`smooth_fields`, 8 mm length scale) plus 30 % independent
    voxel noise, normalised so the 99th percentile is 1 (values above are
    kept: a few hot spots) and compressed as ``strength ** 0.6`` (calibrated
    so the encoding accuracies spread as in published data). The amplitude of a voxel's music response in
    percent signal change is ``gain_pct * strength_v`` (see :mod:`.response`).

Smooth random fields are defined on MNI coordinates (random Fourier
features), not on the grid, so a subject's tuning maps are the same
anatomical maps on every grid preset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .geometry import Anatomy, voxel_mni

_COMPRESSION = 0.6  # strength = raw ** 0.6: a less skewed distribution, as calibrated

__all__ = ["auditory_centres", "smooth_fields", "AuditoryRegion", "auditory_region"]


@functools.lru_cache(maxsize=1)
def _seitzman_auditory() -> tuple[np.ndarray, tuple[str, ...]]:
    from nilearn import datasets

    atlas = datasets.fetch_coords_seitzman_2018()
    sel = np.asarray(atlas.networks) == "Auditory"
    rois = atlas.rois[sel]
    xyz = np.stack([np.asarray(rois["x"], float), np.asarray(rois["y"], float), np.asarray(rois["z"], float)],
                   axis=1)
    if xyz.shape != (12, 3):
        raise ValueError(f"expected 12 Auditory ROIs in nilearn's Seitzman 2018 coordinates, found {len(xyz)}")
    return xyz, tuple(str(r) for r in np.asarray(atlas.regions)[sel])


def auditory_centres() -> np.ndarray:
    """MNI coordinates (mm) of Seitzman 2018's 12 Auditory ROIs, shape (12, 3)."""
    return _seitzman_auditory()[0].copy()


def smooth_fields(mni_mm: np.ndarray, n_fields: int, rng: np.random.Generator, *,
                  length_mm: float = 8.0, n_features: int = 256) -> np.ndarray:
    """Smooth zero-mean, unit-variance random fields evaluated at MNI positions.

    Random Fourier features of a Gaussian-kernel process:
    ``f(x) = sqrt(2 / m) * sum_k a_k cos(w_k . x + phi_k)`` with
    ``w_k ~ N(0, I / length_mm**2)``, ``phi_k ~ U(0, 2 pi)``, ``a_k ~ N(0, 1)``.

    Parameters
    ----------
    mni_mm : ndarray of shape (n_points, 3)
    n_fields : int
    rng : numpy.random.Generator
    length_mm : float
        Correlation length in mm.
    n_features : int
        Number of random features ``m`` per field.

    Returns
    -------
    fields : ndarray of shape (n_points, n_fields), float64
    """
    x = np.asarray(mni_mm, dtype=np.float64)
    w = rng.standard_normal((n_fields, n_features, 3)) / length_mm
    phi = rng.uniform(0.0, 2 * np.pi, (n_fields, n_features))
    a = rng.standard_normal((n_fields, n_features))
    out = np.empty((x.shape[0], n_fields))
    chunk = 16384  # bounds the (chunk, n_features) temporary
    for i in range(n_fields):
        for c in range(0, x.shape[0], chunk):
            out[c:c + chunk, i] = np.cos(x[c:c + chunk] @ w[i].T + phi[i]) @ a[i] * np.sqrt(2.0 / n_features)
    return out


@dataclass(frozen=True)
class AuditoryRegion:
    """The music-responsive voxels of one participant.

    Attributes
    ----------
    index : ndarray of int64, shape (n_voxels,)
        Flat (C-order) indices into the grid, increasing.
    mni_mm : ndarray of shape (n_voxels, 3)
        MNI position of each voxel (unmoved head).
    strength : ndarray of shape (n_voxels,), float64
        Graded tuning strength (99th percentile = 1).
    nearest_roi : ndarray of int64, shape (n_voxels,)
        Index of the nearest Seitzman centre (0-11).
    hemisphere : ndarray of str, shape (n_voxels,)
        ``"L"`` or ``"R"`` (sign of MNI x).
    centres_mni : ndarray of shape (12, 3)
        The jittered centres of this subject.
    roi_gain : ndarray of shape (12,)
    """

    index: np.ndarray
    mni_mm: np.ndarray
    strength: np.ndarray
    nearest_roi: np.ndarray
    hemisphere: np.ndarray
    centres_mni: np.ndarray
    roi_gain: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.index.shape[0])

    def mask(self, shape) -> np.ndarray:
        """Boolean volume of the region."""
        m = np.zeros(int(np.prod(shape)), dtype=bool)
        m[self.index] = True
        return m.reshape(shape)


def auditory_region(anatomy: Anatomy, rng: np.random.Generator, *, radius_mm: float = 12.0,
                    min_gm: float = 0.25, spread_mm: float = 6.0) -> AuditoryRegion:
    """Select and grade the music-responsive voxels (see the module docstring).

    Parameters
    ----------
    anatomy : Anatomy
    rng : numpy.random.Generator
    radius_mm : float
        Largest MNI distance from a centre, mm.
    min_gm : float
        Smallest grey-matter fraction.
    spread_mm : float
        S.d. of the Gaussian fall-off of strength with distance, mm.

    Returns
    -------
    AuditoryRegion

    Raises
    ------
    ValueError
        If no voxel qualifies (the auditory cortex is outside the field of view).
    """
    grid = anatomy.grid
    centres = auditory_centres() + 2.0 * rng.standard_normal((12, 3))
    gains = np.exp(0.35 * rng.standard_normal(12))
    candidates = np.flatnonzero(anatomy.gm.ravel() >= min_gm)
    mni = voxel_mni(grid, anatomy.placement, candidates)
    d2 = ((mni[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    near = d2.min(axis=1) <= radius_mm**2
    if not near.any():
        raise ValueError("no grey-matter voxel lies within the auditory ROIs; the auditory cortex is "
                         "outside the field of view (check the head placement)")
    index, mni, d2 = candidates[near], mni[near], d2[near]
    field = smooth_fields(mni, 1, rng)[:, 0]
    z = np.sqrt(0.7) * field + np.sqrt(0.3) * rng.standard_normal(index.shape[0])
    gm = anatomy.gm.ravel()[index].astype(np.float64)
    s = gm * (np.exp(-0.5 * d2 / spread_mm**2) @ gains) * np.exp(0.3 * z)
    s = (s / np.percentile(s, 99)) ** _COMPRESSION
    return AuditoryRegion(index=index, mni_mm=mni, strength=s, nearest_roi=np.argmin(d2, axis=1),
                          hemisphere=np.where(mni[:, 0] < 0, "L", "R"), centres_mni=centres, roi_gain=gains)
