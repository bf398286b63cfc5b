"""Encoding models (embedding -> voxels): voxel selection and correlation maps.

The encoding direction uses stimulus features delayed by the hemodynamic
delays: the response at TR ``t`` is modelled from the features at
``t - d`` for ``d`` in ``delays``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ridge import corr_columns, r2_score_columns, ridge_cv, ridge_fit

__all__ = ["delay_features", "select_voxels", "fit_encoding", "SELECTION_ALPHAS"]

#: A short grid for voxel selection (many voxels, cheap): wide enough to matter.
SELECTION_ALPHAS = np.logspace(0, 6, 7)


def delay_features(f: np.ndarray, delays=(2, 3, 4)) -> np.ndarray:
    """Stack delayed copies of features: row ``t`` holds ``f[t - d]`` for each delay.

    Parameters
    ----------
    f : ndarray of shape (n_volumes, n_features)
        NaN rows (no stimulus) count as zeros.

    Returns
    -------
    ndarray of shape (n_volumes, len(delays) * n_features), float64
        Rows before a delay reaches into the run are zero-padded.
    """
    f = np.nan_to_num(np.asarray(f, dtype=np.float64))
    n, k = f.shape
    out = np.zeros((n, len(delays) * k))
    for j, d in enumerate(delays):
        out[d:, j * k:(j + 1) * k] = f[: n - d] if d else f
    return out


def select_voxels(features: list[np.ndarray], responses: list[np.ndarray], n_select: int, *,
                  folds: int = 4, alphas=SELECTION_ALPHAS, chunk: int = 20000,
                  progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rank voxels by cross-validated encoding performance within the training runs.

    Parameters
    ----------
    features : list of ndarray of shape (n_volumes_r, n_features)
        Delayed stimulus features per training run.
    responses : list of ndarray of shape (n_volumes_r, n_voxels)
        Preprocessed voxel values per training run.
    n_select : int
        How many voxels to keep.
    folds : int
        Runs are grouped into this many folds, each held out once.

    Returns
    -------
    selected : ndarray of shape (n_select,), int
        Voxel indices, best first.
    scores : ndarray of shape (n_voxels,)
        CV R^2 of every voxel at its best alpha.
    """
    x = np.concatenate(features)
    groups = np.concatenate([np.full(len(f), r % folds) for r, f in enumerate(features)])
    n_vox = responses[0].shape[1]
    scores = np.empty(n_vox)
    done = 0
    for start in range(0, n_vox, chunk):
        y = np.concatenate([r[:, start:start + chunk] for r in responses]).astype(np.float64)
        _, cv = ridge_cv(x, y, groups, alphas, r2_score_columns)
        scores[start:start + chunk] = cv.max(0)
        done += y.shape[1]
        if progress is not None:
            progress(done, n_vox)
    order = np.argsort(-scores, kind="stable")
    return order[: min(n_select, n_vox)], scores


def fit_encoding(train_features: np.ndarray, train_responses: np.ndarray, groups: np.ndarray,
                 test_features: np.ndarray, test_responses: np.ndarray, *, alphas=SELECTION_ALPHAS,
                 chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel-alpha encoding model; correlation of predicted and measured test responses.

    Returns
    -------
    test_corr : ndarray of shape (n_voxels,)
    best_alphas : ndarray of shape (n_voxels,)
    """
    n_vox = train_responses.shape[1]
    corr = np.empty(n_vox)
    best = np.empty(n_vox)
    for start in range(0, n_vox, chunk):
        ytr = train_responses[:, start:start + chunk].astype(np.float64)
        a, _ = ridge_cv(train_features, ytr, groups, alphas, r2_score_columns)
        coef, xm, ym = ridge_fit(train_features, ytr, a)
        pred = (test_features - xm) @ coef + ym
        corr[start:start + chunk] = corr_columns(pred, test_responses[:, start:start + chunk].astype(np.float64))
        best[start:start + chunk] = a
    return corr, best
