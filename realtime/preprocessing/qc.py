"""Per-TR quality control beside framewise displacement: DVARS.

FD measures how far the head moved; DVARS measures how much the image
changed: the root mean square, over the model's voxels, of the change of
each voxel's signal from the previous volume (Power et al. 2012,
NeuroImage 59). A spike, a slice dropout or a coil artefact changes the
image without moving the head: FD stays low and DVARS jumps.

Here it is computed on the motion-corrected voxel values (before
detrending), in percent of the current volume's mean over the same voxels,
so it does not depend on the scanner's intensity scale::

    dvars_t = 100 * sqrt(mean_v (y_t[v] - y_{t-1}[v])**2) / mean_v y_t[v]

About 1.4 times the voxels' temporal noise in percent when nothing moves
(1/tSNR per voxel, for each of the two volumes); 0 for the first volume.

And per run, the temporal SNR of the model's voxels (OpenNFT's real-time
quality assessment has the same figure): each voxel's mean over the volumes
so far, divided by the standard deviation (ddof 0) of its high-passed series
over the same volumes::

    tsnr_t[v] = mean_{s<=t} y_s[v] / sd_{s<=t} h_s[v]

with ``y`` the motion-corrected values and ``h`` the causal detrender's
output (``y`` itself in a chain without one), so the drift the decoder never
sees does not count as noise. Over a whole run this is the usual tSNR of a
high-passed series (:func:`tsnr`); a live session compares its running
median with the one its model was trained on (``qc.tsnr`` in the bundle's
manifest). A head coil element that failed, another sequence, or a head far
from the coil halve it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dvars_pct", "Dvars", "TSNR_MIN_VOLUMES", "TSNR_MEDIAN_VOXELS", "tsnr", "median_tsnr", "RunningTsnr"]

#: A running tSNR is reported from this many volumes of the run on (fewer give a noisy s.d.).
TSNR_MIN_VOLUMES = 20
#: The median is taken over at most about this many voxels, evenly strided in mask order, so a whole-brain
#: mask costs a TR no more than a decoder's 500 voxels (the median of 2,000 is within about 1 % of all).
TSNR_MEDIAN_VOXELS = 2000


def dvars_pct(previous, current) -> float:
    """DVARS of ``current`` after ``previous`` (see the module doc), percent of ``current``'s mean.

    Parameters
    ----------
    previous, current : array-like of shape (n_voxels,)

    Returns
    -------
    float
        NaN if the current volume's mean is not positive.
    """
    a, b = np.asarray(previous, np.float64), np.asarray(current, np.float64)
    m = float(b.mean())
    if not m > 0:
        return float("nan")
    return float(100.0 * np.sqrt(np.mean((b - a) ** 2)) / m)


class Dvars:
    """DVARS volume by volume through a run, without allocating per volume.

    Parameters
    ----------
    n_voxels : int
    """

    def __init__(self, n_voxels: int):
        self._prev = np.empty(n_voxels, np.float32)
        self._diff = np.empty(n_voxels, np.float32)
        self._started = False

    def step(self, values: np.ndarray) -> float:
        """DVARS of ``values`` (shape (n_voxels,)) after the last volume given, percent; 0 for the first."""
        out = 0.0
        if self._started:
            np.subtract(values, self._prev, out=self._diff)
            m = float(values.mean(dtype=np.float64))
            ss = float(np.dot(self._diff, self._diff))  # float32 products, summed in BLAS: one pass
            out = 100.0 * np.sqrt(ss / values.size) / m if m > 0 else float("nan")
        np.copyto(self._prev, values)
        self._started = True
        return out


def tsnr(raw, highpassed) -> np.ndarray:
    """Each voxel's temporal SNR over a whole series (see the module doc).

    Parameters
    ----------
    raw : array-like of shape (n_volumes, n_voxels)
        The motion-corrected values.
    highpassed : array-like of shape (n_volumes, n_voxels)
        The same after the high-pass (the chain's detrender), or ``raw`` again.

    Returns
    -------
    ndarray of shape (n_voxels,), float64
        NaN where the high-passed series is constant.
    """
    y, h = np.asarray(raw), np.asarray(highpassed)
    if y.shape != h.shape or y.ndim != 2:
        raise ValueError(f"raw and highpassed must both be (n_volumes, n_voxels); got {y.shape} and {h.shape}")
    sd = h.std(axis=0, dtype=np.float64)  # float64 sums without a float64 copy of a whole run
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, y.mean(axis=0, dtype=np.float64) / sd, np.nan)


def _stride(n_voxels: int) -> int:
    return max(1, -(-int(n_voxels) // TSNR_MEDIAN_VOXELS))


def median_tsnr(per_voxel) -> float:
    """The summary of a tSNR map: the median over its finite voxels, every k-th in mask order when there are
    more than :data:`TSNR_MEDIAN_VOXELS` (the rule a live session's :meth:`RunningTsnr.median` follows).

    Parameters
    ----------
    per_voxel : array-like of shape (n_voxels,)

    Returns
    -------
    float
        NaN if no voxel's figure is finite.
    """
    v = np.asarray(per_voxel, np.float64)
    return _finite_median(v[::_stride(v.size)])


def _finite_median(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


class RunningTsnr:
    """:func:`tsnr` volume by volume through a run (:meth:`step` allocates nothing; :meth:`median` works on
    at most :data:`TSNR_MEDIAN_VOXELS` voxels).

    Sums are kept in float64, so the figure after volume ``t`` equals
    :func:`tsnr` of the first ``t + 1`` volumes to about 1e-12 (the variance is
    taken as ``E[h^2] - E[h]^2``).

    Parameters
    ----------
    n_voxels : int
    min_volumes : int
        :meth:`median` is NaN before this many volumes (:data:`TSNR_MIN_VOLUMES`).
    """

    def __init__(self, n_voxels: int, min_volumes: int = TSNR_MIN_VOLUMES):
        self.n = 0
        self.min_volumes = int(min_volumes)
        self._sy = np.zeros(n_voxels)
        self._sh = np.zeros(n_voxels)
        self._shh = np.zeros(n_voxels)
        self._sq = np.empty(n_voxels)

    def step(self, raw: np.ndarray, highpassed: np.ndarray) -> None:
        """Add one volume: ``raw`` and ``highpassed`` of shape (n_voxels,)."""
        np.add(self._sy, raw, out=self._sy)
        np.add(self._sh, highpassed, out=self._sh)
        np.square(highpassed, out=self._sq, dtype=np.float64)
        np.add(self._shh, self._sq, out=self._shh)
        self.n += 1

    def voxels(self, pick=slice(None)) -> np.ndarray:
        """Each voxel's tSNR over the volumes so far, shape (n_voxels,), float64 (NaN where undefined);
        ``pick`` (an index) for some voxels only."""
        if self.n == 0:
            return np.full(self._sy[pick].shape, np.nan)
        m = self._sh[pick] / self.n
        sd = np.sqrt(np.maximum(self._shh[pick] / self.n - m * m, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 0, self._sy[pick] / self.n / sd, np.nan)

    def median(self) -> float:
        """:func:`median_tsnr` of the voxels so far, or NaN before ``min_volumes`` volumes."""
        if self.n < self.min_volumes:
            return float("nan")
        return _finite_median(self.voxels(slice(None, None, _stride(self._sy.size))))
