"""Per-voxel normalisation that the live session can reproduce.

Causal variants (for realtime bundles):

- ``"bundle"``: fixed mean and standard deviation per voxel, estimated on the
  training data and stored in the model bundle.
- ``"running"``: Welford running mean and variance over the volumes so far.
- ``"baseline"``: statistics of the first ``n_baseline`` volumes, then frozen
  (during the baseline, running statistics are used).
- ``"psc"``: percent signal change of the detrender's baseline,
  ``100 r_t / m_t`` for the high-passed value ``r_t = y_t - m_t`` and the EMA
  baseline ``m_t`` (``detrend="ema"``). No statistic that changes over the
  run rescales a voxel, and it does not depend on the session's intensity
  scale.

The non-causal ``"zscore_run"`` (whole-run z-score) is offline only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["RunningNormalizer", "normalize_run", "zscore_run", "NORMALIZE_MODES"]

NORMALIZE_MODES = ("bundle", "running", "baseline", "none", "psc")
_EPS = 1e-6


class RunningNormalizer:
    """z-score each volume with causal per-voxel statistics.

    Parameters
    ----------
    n_voxels : int
    mode : {"bundle", "running", "baseline", "none", "psc"}
    mean, std : ndarray of shape (n_voxels,), optional
        Required for ``"bundle"``.
    n_baseline : int
        Volumes in the baseline window for ``"baseline"``.

    Notes
    -----
    The first volume of ``"running"``/``"baseline"`` has zero variance and is
    returned as zeros; statistics are float64, output float32.
    """

    def __init__(self, n_voxels: int, mode: Literal["bundle", "running", "baseline", "none", "psc"] = "running",
                 mean: np.ndarray | None = None, std: np.ndarray | None = None, n_baseline: int = 20):
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}")
        if mode == "bundle":
            if mean is None or std is None or np.shape(mean) != (n_voxels,) or np.shape(std) != (n_voxels,):
                raise ValueError(f"mode 'bundle' needs mean and std of shape ({n_voxels},) from the model bundle")
        self.mode, self.n_baseline = mode, int(n_baseline)
        self.n = 0
        self.mean = np.zeros(n_voxels) if mean is None else np.asarray(mean, dtype=np.float64).copy()
        self._m2 = np.zeros(n_voxels)
        self._scale = np.ones(n_voxels) if std is None else 1.0 / np.maximum(np.asarray(std, np.float64), _EPS)
        self._delta = np.empty(n_voxels)
        self._delta2 = np.empty(n_voxels)
        self._out = np.empty(n_voxels, dtype=np.float32)
        self._pos = np.empty(n_voxels, dtype=bool)
        self._neg = np.empty(n_voxels, dtype=bool)

    def step(self, y: np.ndarray, baseline: np.ndarray | None = None) -> np.ndarray:
        """Normalise one volume of shape (n_voxels,); returns a reused float32 buffer.

        ``baseline`` (shape (n_voxels,), the detrender's baseline in the
        input's units) is needed by ``"psc"`` and ignored otherwise; a voxel
        whose baseline is not positive gives 0.
        """
        if self.mode == "none":
            self._out[:] = y
            return self._out
        if self.mode == "psc":
            if baseline is None:
                raise ValueError("normalize='psc' divides by the detrender's baseline; run it after "
                                 "detrend='ema' (OnlinePreprocessor passes the baseline)")
            d, pos, neg = self._delta, self._pos, self._neg
            np.multiply(y, 100.0, out=d)
            np.greater(baseline, _EPS, out=pos)
            np.divide(d, baseline, out=d, where=pos)
            np.logical_not(pos, out=neg)
            np.copyto(d, 0.0, where=neg)
            np.copyto(self._out, d, casting="unsafe")
            return self._out
        if self.mode == "running" or (self.mode == "baseline" and self.n < self.n_baseline):
            # Welford's update, in place (no temporaries per TR)
            self.n += 1
            d, d2 = self._delta, self._delta2
            np.subtract(y, self.mean, out=d)
            np.multiply(d, 1.0 / self.n, out=d2)
            self.mean += d2
            np.subtract(y, self.mean, out=d2)
            np.multiply(d, d2, out=d2)
            self._m2 += d2
            if self.n > 1:
                np.multiply(self._m2, 1.0 / (self.n - 1), out=self._scale)
                np.sqrt(self._scale, out=self._scale)
                np.maximum(self._scale, _EPS, out=self._scale)
                np.divide(1.0, self._scale, out=self._scale)
            else:
                self._scale[:] = 0.0  # one sample: no spread yet
        np.subtract(y, self.mean, out=self._delta)
        np.multiply(self._delta, self._scale, out=self._out, casting="unsafe")
        return self._out


def normalize_run(data: np.ndarray, mode: str = "running", mean=None, std=None, n_baseline: int = 20) -> np.ndarray:
    """Apply :class:`RunningNormalizer` over a run of shape (n_volumes, n_voxels) (same code as online)."""
    norm = RunningNormalizer(data.shape[1], mode, mean, std, n_baseline)
    out = np.empty(data.shape, dtype=np.float32)
    for t in range(data.shape[0]):
        out[t] = norm.step(data[t])
    return out


def zscore_run(data: np.ndarray) -> np.ndarray:
    """Non-causal whole-run z-score (offline comparison only)."""
    d = data.astype(np.float64)
    return ((d - d.mean(0)) / np.maximum(d.std(0, ddof=1), _EPS)).astype(np.float32)
