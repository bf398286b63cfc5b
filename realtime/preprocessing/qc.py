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
"""

from __future__ import annotations

import numpy as np

__all__ = ["dvars_pct", "Dvars"]


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
