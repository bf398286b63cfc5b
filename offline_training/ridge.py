"""Ridge regression with one alpha per target, chosen by leave-one-run-out CV.

Pure functions on arrays (float64 for fitting), as in himalaya:

- :func:`ridge_cv` scores every alpha for every target on held-out runs with
  ONE decomposition per fold (the SVD of X when samples outnumber features,
  the eigendecomposition of the linear kernel X X' otherwise), then picks
  each target's best alpha.
- :func:`ridge_fit` refits on all training data with those per-target alphas,
  again from one decomposition.

Intercepts are handled by centring X and Y on the training samples, so
``predict(X) = (X - x_mean) @ coef + y_mean``. The thin estimator
:class:`RidgeCVPerTarget` wraps these in ``fit``/``predict``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DEFAULT_ALPHAS", "ridge_cv", "ridge_fit", "r2_score_columns", "corr_columns", "RidgeCVPerTarget",
           "edge_alphas"]

DEFAULT_ALPHAS = np.logspace(-2, 7, 19)


def r2_score_columns(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """R^2 per column, shape (n_targets,); a constant column scores 0 if predicted exactly."""
    ss_res = ((y_true - y_pred) ** 2).sum(0)
    ss_tot = ((y_true - y_true.mean(0)) ** 2).sum(0)
    return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)


def corr_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per column, shape (n_columns,); 0 where a column is constant."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


class _Decomposition:
    """One factorisation of centred training X giving predictions for any alpha.

    ``predict(alpha_per_target)`` on test rows costs O(n_test * r * n_targets).
    """

    def __init__(self, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray | None):
        n, p = xtr.shape
        self.kernel = n <= p
        if self.kernel:
            k = xtr @ xtr.T
            lam, q = np.linalg.eigh(k)
            self.s = np.clip(lam, 0, None)  # eigenvalues of X X' = singular values squared
            self.qty = q.T @ ytr
            self.q = q
            self.test = None if xte is None else (xte @ xtr.T) @ q  # (n_test, n)
        else:
            u, s, vt = np.linalg.svd(xtr, full_matrices=False)
            self.s = s**2
            self.uty = u.T @ ytr * s[:, None]  # S U'Y
            self.vt = vt
            self.test = None if xte is None else xte @ vt.T  # (n_test, r)

    def test_predictions(self, alpha: float | np.ndarray) -> np.ndarray:
        """Predictions on the test rows for one alpha (scalar) or per target (n_targets,)."""
        alpha = np.asarray(alpha, dtype=np.float64)
        w = 1.0 / (self.s[:, None] + alpha[None, ...]) if alpha.ndim else 1.0 / (self.s + alpha)[:, None]
        if self.kernel:
            return self.test @ (w * self.qty)
        return self.test @ (w * self.uty)


def ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas=DEFAULT_ALPHAS,
             score: Callable = r2_score_columns, progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Choose one alpha per target by leave-one-group-out cross-validation.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples, n_targets)
    groups : ndarray of shape (n_samples,)
        Run labels: each run is held out once (never the test runs).
    alphas : sequence of float
    score : callable
        ``score(y_true, y_pred) -> (n_targets,)``, higher is better (R^2 default).
    progress : callable, optional
        ``progress(done_folds, n_folds)``.

    Returns
    -------
    best_alphas : ndarray of shape (n_targets,)
    cv_scores : ndarray of shape (n_alphas, n_targets)
        Scores averaged over folds.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    alphas = np.asarray(alphas, dtype=np.float64)
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ValueError(f"leave-one-run-out CV needs at least 2 runs, got {len(labels)}")
    scores = np.zeros((len(alphas), y.shape[1]))
    for f, g in enumerate(labels):
        te = groups == g
        tr = ~te
        xm, ym = x[tr].mean(0), y[tr].mean(0)
        dec = _Decomposition(x[tr] - xm, y[tr] - ym, x[te] - xm)
        for i, a in enumerate(alphas):
            scores[i] += score(y[te], dec.test_predictions(a) + ym)
        if progress is not None:
            progress(f + 1, len(labels))
    scores /= len(labels)
    return alphas[np.argmax(scores, axis=0)], scores


def ridge_fit(x: np.ndarray, y: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge coefficients with one alpha per target.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples, n_targets)
    alphas : float or ndarray of shape (n_targets,)

    Returns
    -------
    coef : ndarray of shape (n_features, n_targets)
    x_mean : ndarray of shape (n_features,)
    y_mean : ndarray of shape (n_targets,)
        ``predict(X) = (X - x_mean) @ coef + y_mean``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    alphas = np.broadcast_to(np.asarray(alphas, dtype=np.float64), (y.shape[1],))
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    n, p = xc.shape
    if n <= p:
        lam, q = np.linalg.eigh(xc @ xc.T)
        lam = np.clip(lam, 0, None)
        dual = q @ ((q.T @ yc) / (lam[:, None] + alphas[None, :]))
        coef = xc.T @ dual
    else:
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        coef = vt.T @ ((s[:, None] / (s[:, None] ** 2 + alphas[None, :])) * (u.T @ yc))
    return coef, xm, ym


def edge_alphas(best: np.ndarray, alphas) -> dict:
    """How many targets chose the smallest or largest alpha of the grid (a grid too narrow)."""
    alphas = np.asarray(alphas)
    return {"n_targets": int(best.size), "at_min": int(np.sum(best == alphas.min())),
            "at_max": int(np.sum(best == alphas.max())), "alpha_min": float(alphas.min()),
            "alpha_max": float(alphas.max())}


class RidgeCVPerTarget:
    """scikit-learn-style estimator over :func:`ridge_cv` and :func:`ridge_fit`.

    Parameters
    ----------
    alphas : sequence of float
    score : callable
        CV score per target, higher is better.

    Attributes
    ----------
    best_alphas_ : ndarray of shape (n_targets,)
    cv_scores_ : ndarray of shape (n_alphas, n_targets)
    coef_ : ndarray of shape (n_features, n_targets)
    x_mean_, y_mean_ : ndarray
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, score: Callable = r2_score_columns):
        self.alphas = alphas
        self.score = score

    def fit(self, x, y, groups, progress: Callable | None = None) -> "RidgeCVPerTarget":
        self.best_alphas_, self.cv_scores_ = ridge_cv(x, y, groups, self.alphas, self.score, progress)
        self.coef_, self.x_mean_, self.y_mean_ = ridge_fit(x, y, self.best_alphas_)
        return self

    def predict(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.x_mean_) @ self.coef_ + self.y_mean_
