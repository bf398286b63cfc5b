"""Causal detrending: an incremental GLM of drift (and motion) regressors.

At volume ``t`` the drift model is fit to volumes ``0..t`` only (OpenNFT's
cumulative GLM), and the residual of volume ``t`` is returned. The running
sums ``X'X`` (p, p) and ``X'Y`` (p, n_voxels) make each step O(p * n_voxels).
Offline, :func:`detrend_run` runs the very same per-volume update over a
whole run, so training sees exactly what the live session computes.

:class:`EmaDetrender` is the other causal choice: subtract an exponential
moving average (EMA) of each voxel's past, a high-pass filter with a time
constant ``tau`` (Kopel et al. 2019, "No time for drifting", NeuroImage 191,
compared it with the incremental GLM for real-time fMRI). The GLM's drift
estimate at the newest volume is an extrapolation to the end of its window,
whose variance grows with the polynomial order; the EMA only averages.

Two non-causal variants exist for comparison only (they need the future):
:func:`zscore_run`-style whole-run regression (:func:`detrend_run_offline`)
and Brain2Music's running median filter (:func:`median_filter_detrend`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["drift_basis", "dct_basis", "CausalDetrender", "EmaDetrender", "step_run", "detrend_run",
           "ema_detrend_run", "detrend_run_offline", "median_filter_detrend"]


def drift_basis(n_volumes: int, order: int = 2) -> np.ndarray:
    """Legendre polynomials of time, constant included.

    Parameters
    ----------
    n_volumes : int
        Run length the basis spans (time is mapped to [-1, 1] over it).
    order : int
        Highest polynomial degree (0 = mean only, 1 = linear, 2 = quadratic).

    Returns
    -------
    ndarray of shape (n_volumes, order + 1), float64
    """
    if n_volumes < 1 or order < 0:
        raise ValueError(f"need n_volumes >= 1 and order >= 0, got {n_volumes}, {order}")
    t = np.linspace(-1.0, 1.0, n_volumes) if n_volumes > 1 else np.zeros(1)
    return np.polynomial.legendre.legvander(t, order)


def dct_basis(n_volumes: int, tr_s: float, cutoff_s: float = 128.0) -> np.ndarray:
    """SPM's high-pass drift set (``spm_filter``): the non-constant DCT-II cosines of period >= ``cutoff_s``.

    Pass it as ``extra`` regressors (with ``order=0`` for the constant) to
    :func:`detrend_run_offline` for SPM's high-pass filter, or to
    :func:`detrend_run` for its causal counterpart.

    Parameters
    ----------
    n_volumes : int
    tr_s : float
        TR in seconds.
    cutoff_s : float
        Shortest period kept in the drift model, seconds (SPM's default 128 s).

    Returns
    -------
    ndarray of shape (n_volumes, K), float64
        Orthonormal columns ``sqrt(2/n) cos(pi (2t + 1) j / 2n)``, ``j = 1 .. K``
        with ``K = floor(2 n TR / cutoff_s)`` (may be 0 columns for a short run).
    """
    k = int(np.floor(2 * n_volumes * tr_s / cutoff_s))
    t = np.arange(n_volumes)[:, None]
    return np.sqrt(2.0 / n_volumes) * np.cos(np.pi * (2 * t + 1) * np.arange(1, k + 1) / (2 * n_volumes))


class CausalDetrender:
    """Residuals of an incremental least-squares fit of nuisance regressors.

    Parameters
    ----------
    n_voxels : int
    n_volumes : int
        Expected run length (sets the time axis of the drift basis; a run that
        goes longer keeps extrapolating the polynomials).
    order : int
        Polynomial drift order.
    n_extra : int
        Number of extra regressors per volume (e.g. 6 motion parameters).
    ridge : float
        Tiny ridge on ``X'X`` relative to its trace, so early volumes (fewer
        samples than regressors) give the minimum-norm-like solution.

    Notes
    -----
    ``step(y, extra)`` returns ``y - x_t @ beta_t`` where ``beta_t`` solves the
    (ridged) normal equations over volumes ``0..t``. Float64 accumulators,
    float32 output. Nothing is allocated per call but the small p x p solve.
    """

    def __init__(self, n_voxels: int, n_volumes: int, order: int = 2, n_extra: int = 0, ridge: float = 1e-6):
        self.basis = drift_basis(max(n_volumes, 1), order)
        self.n_volumes = n_volumes
        self.order = order
        self.n_extra = n_extra
        self.p = order + 1 + n_extra
        self.ridge = ridge
        self.xtx = np.zeros((self.p, self.p))
        self.xty = np.zeros((self.p, n_voxels))
        self.t = 0
        self._x = np.zeros(self.p)
        self._out = np.empty(n_voxels, dtype=np.float32)
        self._fit = np.empty(n_voxels)
        self._tmp = np.empty(n_voxels)

    def _row(self, t: int, extra) -> np.ndarray:
        x = self._x
        if t < len(self.basis):
            x[: self.order + 1] = self.basis[t]
        else:  # past the expected end: extrapolate the polynomials
            tt = -1.0 + 2.0 * t / max(self.n_volumes - 1, 1)
            x[: self.order + 1] = np.polynomial.legendre.legvander(np.array([tt]), self.order)[0]
        if self.n_extra:
            x[self.order + 1:] = extra
        return x

    def step(self, y: np.ndarray, extra=None) -> np.ndarray:
        """Add volume ``t`` and return its residual.

        Parameters
        ----------
        y : ndarray of shape (n_voxels,)
        extra : array of shape (n_extra,), optional
            Extra regressors for this volume (e.g. motion parameters).

        Returns
        -------
        ndarray of shape (n_voxels,), float32
            A view of an internal buffer, overwritten by the next call: copy
            it if you keep it.
        """
        x = self._row(self.t, extra)
        self.xtx += np.outer(x, x)
        for i in range(self.p):  # X'Y += x y' row by row, into preallocated buffers
            np.multiply(y, x[i], out=self._tmp)
            self.xty[i] += self._tmp
        lam = self.ridge * max(np.trace(self.xtx), 1e-12) / self.p
        # fit = x' (X'X)^-1 X'Y = w' X'Y with w = (X'X)^-1 x: a p-vector solve, not p x n_voxels
        w = np.linalg.solve(self.xtx + lam * np.eye(self.p), x)
        # fit = w @ X'Y, row by row into preallocated buffers (a BLAS gemv here
        # would spin up threads on every TR; see bench/preprocess.py)
        np.multiply(self.xty[0], w[0], out=self._fit)
        for i in range(1, self.p):
            np.multiply(self.xty[i], w[i], out=self._tmp)
            self._fit += self._tmp
        np.subtract(y, self._fit, out=self._out, casting="unsafe")
        self.t += 1
        return self._out


def detrend_run(data: np.ndarray, order: int = 2, extra: np.ndarray | None = None,
                ridge: float = 1e-6) -> np.ndarray:
    """Causal detrending of a whole run with :class:`CausalDetrender` (same code as online).

    Parameters
    ----------
    data : ndarray of shape (n_volumes, n_voxels)
    extra : ndarray of shape (n_volumes, n_extra), optional

    Returns
    -------
    ndarray of shape (n_volumes, n_voxels), float32
    """
    n, v = data.shape
    return step_run(CausalDetrender(v, n, order, 0 if extra is None else extra.shape[1], ridge), data, extra)


def step_run(detrender, data: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """A causal detrender's ``step`` over a whole run, volume by volume (what the live session does).

    Parameters
    ----------
    detrender : CausalDetrender or EmaDetrender
        Fresh (no volume seen yet).
    data : ndarray of shape (n_volumes, n_voxels)
    extra : ndarray of shape (n_volumes, n_extra), optional

    Returns
    -------
    ndarray of shape (n_volumes, n_voxels), float32
    """
    out = np.empty(data.shape, dtype=np.float32)
    for t in range(len(data)):
        out[t] = detrender.step(data[t], None if extra is None else extra[t])
    return out


class EmaDetrender:
    """Causal high-pass: each volume minus an exponential moving average of the volumes so far.

    The baseline after volume ``t`` is ``m_t = m_{t-1} + a_t (y_t - m_{t-1})``
    with ``a_t = max(1 / (t + 1), 1 / tau)``: the plain mean of the volumes so
    far while ``t + 1 <= tau`` (no start-up bias towards zero), then an EMA
    whose weights fall by ``1 - 1/tau`` per volume. The residual ``y_t - m_t``
    is returned.

    Parameters
    ----------
    n_voxels : int
    tau : float
        Time constant in volumes (>= 1); ``tau_s / tr_s`` for a time constant
        in seconds.

    Notes
    -----
    One multiply-add per voxel per volume; float64 baseline, float32 output.
    """

    def __init__(self, n_voxels: int, tau: float):
        if not np.isfinite(tau) or tau < 1:
            raise ValueError(f"the EMA time constant must be at least one volume; got tau={tau!r} volumes "
                             "(ema_tau_s / tr_s)")
        self.tau = float(tau)
        self.t = 0
        self.baseline = np.zeros(n_voxels)
        self._out = np.empty(n_voxels, dtype=np.float32)
        self._tmp = np.empty(n_voxels)

    def step(self, y: np.ndarray, extra=None) -> np.ndarray:
        """Add volume ``t`` (shape (n_voxels,)) and return its residual.

        ``extra`` must be None: the EMA takes no regressors. The result is a
        view of an internal buffer, overwritten by the next call.
        """
        if extra is not None:
            raise ValueError("the EMA detrender takes no extra regressors (motion_regressors needs "
                             "detrend='causal')")
        a = max(1.0 / (self.t + 1), 1.0 / self.tau)
        np.subtract(y, self.baseline, out=self._tmp)
        self._tmp *= a
        self.baseline += self._tmp
        np.subtract(y, self.baseline, out=self._out, casting="unsafe")
        self.t += 1
        return self._out


def ema_detrend_run(data: np.ndarray, tau: float) -> np.ndarray:
    """:class:`EmaDetrender` over a whole run (the same code as online).

    Parameters
    ----------
    data : ndarray of shape (n_volumes, n_voxels)
    tau : float
        Time constant in volumes.

    Returns
    -------
    ndarray of shape (n_volumes, n_voxels), float32
    """
    return step_run(EmaDetrender(data.shape[1], tau), data)


def detrend_run_offline(data: np.ndarray, order: int = 2, extra: np.ndarray | None = None) -> np.ndarray:
    """Non-causal: regress the drift basis out of the whole run at once (needs the future)."""
    n = data.shape[0]
    x = drift_basis(n, order)
    if extra is not None:
        x = np.hstack([x, extra])
    beta, *_ = np.linalg.lstsq(x, data.astype(np.float64), rcond=None)
    return (data - x @ beta).astype(np.float32)


def median_filter_detrend(data: np.ndarray, tr_s: float, window_s: float = 240.0) -> np.ndarray:
    """Non-causal: subtract a centred running median (Brain2Music used 240 s).

    Parameters
    ----------
    data : ndarray of shape (n_volumes, n_voxels)
    tr_s : float
        TR in seconds.
    window_s : float
        Median window in seconds (odd number of volumes, at least 1).
    """
    from scipy.ndimage import median_filter

    w = max(1, int(round(window_s / tr_s)) | 1)
    trend = median_filter(data.astype(np.float32), size=(w, 1), mode="reflect")
    return (data - trend).astype(np.float32)
