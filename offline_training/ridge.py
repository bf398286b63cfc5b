"""Ridge regression with one alpha per target, chosen by leave-one-run-out CV.

Pure functions on arrays (float64 for fitting), as in himalaya:

- :func:`ridge_cv` scores every alpha for every target on held-out runs,
  exactly as refitting on the other runs (centred on them) would, with few
  decompositions: ONE eigendecomposition of the centred kernel for all folds
  when features outnumber samples (held-out residuals from the hat matrix,
  Woodbury), or one ``n_features x n_features`` eigendecomposition per fold
  with fold statistics from per-run sums otherwise. It picks each target's
  best alpha.
- :func:`ridge_fit` refits on all training data with those per-target alphas,
  again from one decomposition; :func:`ridge_cv_fit` does both and shares the
  decomposition.

Intercepts are handled by centring X and Y on the training samples, so
``predict(X) = (X - x_mean) @ coef + y_mean``. The thin estimator
:class:`RidgeCVPerTarget` wraps these in ``fit``/``predict``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DEFAULT_ALPHAS", "ridge_cv", "ridge_cv_fit", "ridge_fit", "ridge_solver", "r2_score_columns", "corr_columns",
           "RidgeCVPerTarget", "edge_alphas"]

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


def _eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a symmetric PSD matrix, eigenvalues clipped at 0.

    scipy's ``evr`` driver is 1.5-2x faster than numpy's ``eigh`` on large
    matrices here, and far faster than an SVD of the data.
    """
    import scipy.linalg

    lam, q = scipy.linalg.eigh(a, driver="evr", check_finite=False)
    return np.clip(lam, 0, None), q


def _spd_solve(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``m x = b`` for a symmetric positive definite ``m`` (Cholesky; LU if rounding broke it).

    Much faster here than ``numpy.linalg.solve`` on the few-hundred-square
    systems of the leave-one-run-out residuals.
    """
    import scipy.linalg

    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(m, check_finite=False), b, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.solve(m, b, check_finite=False)


def _chunks(n_targets: int, per_target_bytes: int, budget: int = 256 << 20) -> list[slice]:
    step = max(1, min(n_targets, budget // max(per_target_bytes, 1)))
    return [slice(i, min(i + step, n_targets)) for i in range(0, n_targets, step)]


def _check_xy(x, y, groups):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)  # converted to float64 chunk by chunk (a float32 voxel matrix stays float32)
    groups = np.asarray(groups)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(groups) != len(x):
        raise ValueError(f"x (n_samples, n_features), y (n_samples, n_targets) and groups (n_samples,) must "
                         f"agree; got {x.shape}, {y.shape}, {groups.shape}")
    labels, inverse = np.unique(groups, return_inverse=True)
    if len(labels) < 2:
        raise ValueError(f"leave-one-run-out CV needs at least 2 runs, got {len(labels)}")
    return x, y, labels, inverse


def _cv_kernel(x, y, inverse, n_groups, alphas, score, progress, fit: bool, predict: bool):
    """Leave-one-group-out CV from ONE eigendecomposition of the centred kernel (n_samples <= n_features).

    For ridge with an unpenalised intercept, the residuals of group g when it
    is left out are ``(I - H)_gg^-1 r_g``, with ``r = (I - H) y`` the residuals
    of the fit on all samples and ``H`` its hat matrix (Woodbury). With the
    centred kernel ``Xc Xc' = Q diag(lam) Q'``:
    ``I - H = Q diag(alpha / (lam + alpha)) Q' - 11'/n``, so every fold and
    every alpha costs matrix products only, and the exact held-out
    predictions equal refitting on the other groups (centred on them).
    """
    n = len(x)
    y = np.asarray(y, dtype=np.float64)
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    lam, q = _eigh(xc @ xc.T)
    if progress is not None:
        progress(1, 1 + len(alphas))
    rows = [np.flatnonzero(inverse == g) for g in range(n_groups)]
    yc = y - ym
    qty = q.T @ yc  # (n, n_targets)

    def per_alpha(a):
        d = a / (lam + a)
        # (I - H) y on all samples, and (I - H)_gg (positive definite for alpha > 0)
        return q @ (d[:, None] * qty), lambda idx: (q[idx] * d) @ q[idx].T - 1.0 / n

    best, scores, held = _leave_group_out(y, rows, alphas, per_alpha, score, progress, predict)
    if not fit:
        return best, scores, None, held
    dual = q @ (qty / (lam[:, None] + best[None, :]))
    return best, scores, (xc.T @ dual, xm, ym), held


def _leave_group_out(y, rows, alphas, per_alpha, score, progress, predict: bool):
    """Score every alpha by leaving each group out, from the full fit's residuals.

    ``per_alpha(a)`` returns ``(I - H) y`` on all samples and a function
    giving the block ``(I - H)_gg`` of a group's rows; the held-out
    residuals of group g are ``(I - H)_gg^-1 r_g``. Returns the best alpha
    per target (argmax: the first best wins), the mean scores per alpha and,
    with ``predict``, each target's held-out predictions at its best alpha.
    """
    scores = np.zeros((len(alphas), y.shape[1]))
    held = np.empty_like(y) if predict else None
    pred = np.empty_like(y) if predict else None
    for i, a in enumerate(alphas):
        resid, block = per_alpha(a)
        for idx in rows:
            e = _spd_solve(block(idx), resid[idx])  # held-out residuals of this group
            scores[i] += score(y[idx], y[idx] - e)
            if predict:
                pred[idx] = y[idx] - e
        if predict:
            better = scores[i] > scores[:i].max(0) if i else np.ones(y.shape[1], bool)
            held[:, better] = pred[:, better]
        if progress is not None:
            progress(2 + i, 1 + len(alphas))
    scores /= len(rows)
    return alphas[np.argmax(scores, axis=0)], scores, held


class _GroupStats:
    """Per-group sums of X, X'X (and, per target chunk, of Y, X'Y, Y^2)."""

    def __init__(self, x, inverse, n_groups):
        self.rows = [np.flatnonzero(inverse == g) for g in range(n_groups)]
        self.n = np.array([len(r) for r in self.rows], float)
        self.sx = np.stack([x[r].sum(0) for r in self.rows])
        self.xx = np.stack([x[r].T @ x[r] for r in self.rows])

    def targets(self, x, y):
        sy = np.stack([y[r].sum(0) for r in self.rows])
        xy = np.stack([x[r].T @ y[r] for r in self.rows])
        yy = np.stack([(y[r] ** 2).sum(0) for r in self.rows])
        return sy, xy, yy


def _cv_primal(x, y, inverse, n_groups, alphas, score, progress, fit: bool, r2: bool, predict: bool):
    """Leave-one-group-out CV with one p x p eigendecomposition per fold (n_samples > n_features).

    Fold statistics come from per-group sums, so X'Y is computed once over all
    samples, not once per fold. With the R^2 score, held-out sums of squares
    follow from the same statistics without forming predictions.
    """
    p = x.shape[1]
    gs = _GroupStats(x, inverse, n_groups)
    n_all, sx_all, xx_all = gs.n.sum(), gs.sx.sum(0), gs.xx.sum(0)
    folds = []
    for g in range(n_groups):
        n1 = n_all - gs.n[g]
        m = (sx_all - gs.sx[g]) / n1
        lam, v = _eigh(xx_all - gs.xx[g] - n1 * np.outer(m, m))
        # held-out design centred on the training mean: A = X_g - m; |A V w|^2 through
        # A V (n_g x p) or V'A'AV (p x p), whichever is smaller
        if gs.n[g] < p:
            folds.append((n1, m, lam, v, (x[gs.rows[g]] - m) @ v, True))
        else:
            ata = gs.xx[g] - np.outer(gs.sx[g], m) - np.outer(m, gs.sx[g]) + gs.n[g] * np.outer(m, m)
            folds.append((n1, m, lam, v, v.T @ ata @ v, False))
        if progress is not None:
            progress(g + 1, n_groups + 1)
    scores = np.zeros((len(alphas), y.shape[1]))
    per_target = 8 * (n_groups * p + len(x) + 4 * p)
    for sl in _chunks(y.shape[1], per_target):
        yk = np.asarray(y[:, sl], dtype=np.float64)
        sy, xy, yy = gs.targets(x, yk)
        sy_all, xy_all = sy.sum(0), xy.sum(0)
        for g, (n1, m, lam, v, h, h_is_av) in enumerate(folds):
            my = (sy_all - sy[g]) / n1
            z = v.T @ (xy_all - xy[g] - n1 * np.outer(m, my))  # V' Xc'Yc of the training fold
            if r2:
                ng = gs.n[g]
                b = v.T @ (xy[g] - np.outer(gs.sx[g], my) - np.outer(m, sy[g]) + ng * np.outer(m, my))
                ee = yy[g] - 2 * my * sy[g] + ng * my**2  # |Y_g - my|^2
                ss_tot = yy[g] - sy[g] ** 2 / ng
                den = np.where(ss_tot > 0, ss_tot, 1.0)
                for i, a in enumerate(alphas):
                    w = z / (lam + a)[:, None]
                    quad = ((h @ w) ** 2).sum(0) if h_is_av else (w * (h @ w)).sum(0)
                    ss_res = ee - 2 * (b * w).sum(0) + quad
                    scores[i, sl] += 1.0 - ss_res / den
            else:
                idx = gs.rows[g]
                at = h if h_is_av else (x[idx] - m) @ v
                for i, a in enumerate(alphas):
                    scores[i, sl] += score(yk[idx], at @ (z / (lam + a)[:, None]) + my)
        if progress is not None:
            progress(n_groups + (sl.stop / y.shape[1]), n_groups + 1)
    scores /= n_groups
    best = alphas[np.argmax(scores, axis=0)]
    held = None
    if predict:  # a second pass: held-out predictions at each target's best alpha
        held = np.empty(y.shape)
        for sl in _chunks(y.shape[1], per_target):
            sy, xy, _ = gs.targets(x, np.asarray(y[:, sl], dtype=np.float64))
            sy_all, xy_all = sy.sum(0), xy.sum(0)
            for g, (n1, m, lam, v, h, h_is_av) in enumerate(folds):
                my = (sy_all - sy[g]) / n1
                z = v.T @ (xy_all - xy[g] - n1 * np.outer(m, my))
                idx = gs.rows[g]
                at = h if h_is_av else (x[idx] - m) @ v
                held[idx, sl] = at @ (z / (lam[:, None] + best[None, sl])) + my
    if not fit:
        return best, scores, None, held
    return best, scores, ridge_fit(x, np.asarray(y, dtype=np.float64), best), held


def _cv_primal_logo(x, y, inverse, n_groups, alphas, score, progress, fit: bool, predict: bool):
    """Leave-one-group-out CV from ONE ``n_features x n_features`` eigendecomposition (n_samples > n_features).

    The primal twin of :func:`_cv_kernel`: with ``Xc'Xc = V diag(lam) V'`` and
    ``U = Xc V diag(lam)^-1/2``, the hat matrix is ``11'/n + U diag(f) U'``
    with ``f = lam / (lam + alpha)``, and group g's held-out residuals are
    ``(I - H)_gg^-1 r_g``. Cheaper than one decomposition per fold when
    folds are many and targets few (a decoder fit on every TR).
    """
    n = len(x)
    y = np.asarray(y, dtype=np.float64)
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    lam, v = _eigh(xc.T @ xc)
    keep = lam > lam.max() * 1e-12 if lam.size and lam.max() > 0 else np.zeros(lam.shape, bool)
    u = (xc @ v[:, keep]) / np.sqrt(lam[keep])  # (n, rank), orthonormal columns
    lk = lam[keep]
    if progress is not None:
        progress(1, 1 + len(alphas))
    rows = [np.flatnonzero(inverse == g) for g in range(n_groups)]
    yc = y - ym
    uty = u.T @ yc

    def per_alpha(a):
        f = lk / (lk + a)
        return yc - u @ (f[:, None] * uty), lambda idx: np.eye(len(idx)) - 1.0 / n - (u[idx] * f) @ u[idx].T

    best, scores, held = _leave_group_out(y, rows, alphas, per_alpha, score, progress, predict)
    if not fit:
        return best, scores, None, held
    coef = v @ ((v.T @ (xc.T @ yc)) / (lam[:, None] + best[None, :]))
    return best, scores, (coef, xm, ym), held


def _primal_method(n: int, p: int, n_targets: int, group_sizes, n_alphas: int) -> str:
    """``"folds"`` (one decomposition per fold) or ``"logo"`` (one in all), by a rough cost model.

    An eigendecomposition of p x p costs about p^3 / 1e9 s here, matrix
    products about flops / 2e10 s (both measured on the 2-core target).
    """
    sizes = np.asarray(group_sizes, float)
    eig = p**3 / 1e9
    folds = len(sizes) * eig + n_alphas * 2 * p * n_targets * np.minimum(sizes, p).sum() / 2e10
    logo = eig + n_alphas * (4 * n * p * n_targets + 2 * p * (sizes**2).sum()) / 2e10
    return "logo" if logo < folds else "folds"


def ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas=DEFAULT_ALPHAS,
             score: Callable = r2_score_columns, progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Choose one alpha per target by leave-one-group-out cross-validation.

    Every fold is centred on its own training samples (the intercept is not
    penalised) and scored on the held-out group, exactly as refitting per
    fold would, but with far fewer decompositions:

    - ``n_samples <= n_features`` (e.g. the decoder, voxels x delays wide):
      one eigendecomposition of the centred kernel for all folds and alphas;
    - otherwise either one ``n_features x n_features`` eigendecomposition
      per fold, with fold statistics from per-group sums and targets in
      memory-bounded chunks (many targets, e.g. encoding models of every
      voxel), or one in all, with held-out residuals from the hat matrix
      (many folds, few targets, e.g. a decoder fit on every TR), whichever
      a rough cost model says is cheaper.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples, n_targets)
        Any float dtype; converted to float64 in chunks of targets.
    groups : ndarray of shape (n_samples,)
        Run labels: each run is held out once (never the test runs).
    alphas : sequence of float, all > 0
    score : callable
        ``score(y_true, y_pred) -> (n_targets,)``, higher is better (R^2 default).
    progress : callable, optional
        ``progress(done, total)`` as the work proceeds.

    Returns
    -------
    best_alphas : ndarray of shape (n_targets,)
    cv_scores : ndarray of shape (n_alphas, n_targets)
        Scores averaged over folds.
    """
    best, scores, _, _ = _ridge_cv(x, y, groups, alphas, score, progress, fit=False)
    return best, scores


def ridge_cv_fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas=DEFAULT_ALPHAS,
                 score: Callable = r2_score_columns, progress: Callable | None = None, *,
                 return_predictions: bool = False):
    """:func:`ridge_cv`, then :func:`ridge_fit` on all samples with the chosen alphas.

    In the kernel case (``n_samples <= n_features``) the refit reuses the CV's
    eigendecomposition, so it costs one decomposition in all.

    Parameters
    ----------
    return_predictions : bool
        Also return every sample's held-out prediction (its group left out)
        at each target's chosen alpha, e.g. to calibrate something else on
        data the model has not seen.

    Returns
    -------
    best_alphas : ndarray of shape (n_targets,)
    cv_scores : ndarray of shape (n_alphas, n_targets)
    coef : ndarray of shape (n_features, n_targets)
    x_mean : ndarray of shape (n_features,)
    y_mean : ndarray of shape (n_targets,)
    cv_predictions : ndarray of shape (n_samples, n_targets)
        Only with ``return_predictions``.
    """
    best, scores, (coef, xm, ym), held = _ridge_cv(x, y, groups, alphas, score, progress, fit=True,
                                                   predict=return_predictions)
    if return_predictions:
        return best, scores, coef, xm, ym, held
    return best, scores, coef, xm, ym


def _ridge_cv(x, y, groups, alphas, score, progress, fit: bool, predict: bool = False):
    x, y, labels, inverse = _check_xy(x, y, groups)
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if not np.all(alphas > 0):
        raise ValueError(f"alphas must all be > 0, got {alphas.min():g}")
    n, p = x.shape
    if n <= p:
        return _cv_kernel(x, y, inverse, len(labels), alphas, score, progress, fit, predict)
    if _primal_method(n, p, y.shape[1], np.bincount(inverse), len(alphas)) == "logo":
        return _cv_primal_logo(x, y, inverse, len(labels), alphas, score, progress, fit, predict)
    return _cv_primal(x, y, inverse, len(labels), alphas, score, progress, fit, score is r2_score_columns, predict)


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
    y = np.asarray(y, dtype=np.float64)
    xm, solve = ridge_solver(x)
    ym = y.mean(0)
    return solve(y - ym, alphas), xm, ym


def ridge_solver(x: np.ndarray) -> tuple[np.ndarray, Callable]:
    """Centre ``x`` and factorise it once, for ridge fits of any number of target chunks.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)

    Returns
    -------
    x_mean : ndarray of shape (n_features,)
    solve : callable
        ``solve(y_centred, alphas) -> coef`` with ``y_centred`` of shape
        (n_samples, n_targets) (centred on its own mean), ``alphas`` a float
        or one per target, ``coef`` of shape (n_features, n_targets). The
        kernel form when samples do not outnumber features, else the primal.
    """
    x = np.asarray(x, dtype=np.float64)
    xm = x.mean(0)
    xc = x - xm
    n, p = xc.shape
    if n <= p:
        lam, q = _eigh(xc @ xc.T)

        def solve(yc, alphas):
            a = np.broadcast_to(np.asarray(alphas, dtype=np.float64), (yc.shape[1],))
            return xc.T @ (q @ ((q.T @ yc) / (lam[:, None] + a[None, :])))
    else:
        lam, v = _eigh(xc.T @ xc)

        def solve(yc, alphas):
            a = np.broadcast_to(np.asarray(alphas, dtype=np.float64), (yc.shape[1],))
            return v @ ((v.T @ (xc.T @ yc)) / (lam[:, None] + a[None, :]))
    return xm, solve


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
        (self.best_alphas_, self.cv_scores_, self.coef_, self.x_mean_,
         self.y_mean_) = ridge_cv_fit(x, y, groups, self.alphas, self.score, progress)
        return self

    def predict(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.x_mean_) @ self.coef_ + self.y_mean_
