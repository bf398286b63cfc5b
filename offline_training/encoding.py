"""Encoding models (embedding -> voxels): voxel selection and correlation maps.

The encoding direction uses stimulus features delayed by the hemodynamic
delays: the response at TR ``t`` is modelled from the features at
``t - d`` for ``d`` in ``delays``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ridge import corr_columns, r2_score_columns, ridge_cv, ridge_fit, ridge_solver

__all__ = ["delay_features", "run_folds", "select_voxels", "within_genre_scores", "fit_encoding", "SELECTION_ALPHAS"]

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


def run_folds(features: list[np.ndarray], folds: int) -> np.ndarray:
    """CV fold of every volume when whole runs are grouped into ``folds`` folds (run ``r`` in fold ``r % folds``).

    Parameters
    ----------
    features : list of ndarray of shape (n_volumes_r, ...)
        One array per run, in run order (only their lengths are used).

    Returns
    -------
    ndarray of shape (sum of n_volumes_r,), int
    """
    return np.concatenate([np.full(len(f), r % folds) for r, f in enumerate(features)])


def select_voxels(features: list[np.ndarray], responses: list[np.ndarray] | np.ndarray, n_select: int, *,
                  folds: int = 4, alphas=SELECTION_ALPHAS, progress: Callable | None = None,
                  return_alphas: bool = False):
    """Rank voxels by cross-validated encoding performance within the training runs.

    Parameters
    ----------
    features : list of ndarray of shape (n_volumes_r, n_features)
        Delayed stimulus features per training run.
    responses : list of ndarray of shape (n_volumes_r, n_voxels), or ndarray of shape (n_volumes, n_voxels)
        Preprocessed voxel values per training run, or all runs already
        concatenated in the order of ``features`` (no copy is made then).
        float32 is kept as is; targets are converted to float64 in
        memory-bounded chunks.
    n_select : int
        How many voxels to keep.
    folds : int
        Runs are grouped into this many folds (run ``r`` in fold ``r % folds``),
        each held out once.
    progress : callable, optional
        ``progress(done, total)``.
    return_alphas : bool
        Also return each voxel's best alpha.

    Returns
    -------
    selected : ndarray of shape (n_select,), int
        Voxel indices, best first.
    scores : ndarray of shape (n_voxels,)
        CV R^2 of every voxel at its best alpha.
    best_alphas : ndarray of shape (n_voxels,)
        Only with ``return_alphas``.
    """
    x = np.concatenate(features)
    groups = run_folds(features, folds)
    y = responses if isinstance(responses, np.ndarray) else np.concatenate(responses)
    if len(y) != len(x):
        raise ValueError(f"responses have {len(y)} rows but the features {len(x)}: one row per volume of every run")
    best, cv = ridge_cv(x, y, groups, alphas, r2_score_columns, progress=progress)
    scores = cv.max(0)
    order = np.argsort(-scores, kind="stable")
    selected = order[: min(n_select, len(scores))]
    return (selected, scores, best) if return_alphas else (selected, scores)


def within_genre_scores(x: np.ndarray, y: np.ndarray, fold: np.ndarray, alphas: np.ndarray,
                        presentation: np.ndarray, genre: np.ndarray) -> np.ndarray:
    """How well each voxel's held-out encoding prediction tracks it *within* a genre.

    The CV R^2 of :func:`select_voxels` rewards voxels that follow the genre,
    which the genre prior already gives the decoder for free. This score
    keeps only what varies between presentations of the same genre: held-out
    predictions (each fold predicted by a ridge fit on the others, at each
    voxel's own alpha) and measured responses are averaged per presentation,
    each genre's mean over its presentations is removed from both, and the
    score is the Pearson correlation of what is left, over presentations.

    Parameters
    ----------
    x : ndarray of shape (n_volumes, n_features)
        Delayed stimulus features of every Training volume.
    y : ndarray of shape (n_volumes, n_voxels)
        Preprocessed responses of the candidate voxels.
    fold : ndarray of shape (n_volumes,), int
        CV fold of each volume (whole runs per fold).
    alphas : ndarray of shape (n_voxels,)
        Each voxel's ridge alpha (chosen inside the Training runs).
    presentation : ndarray of shape (n_volumes,), int
        Presentation each volume responds to, -1 for none.
    genre : ndarray of shape (n_volumes,)
        Genre label of each volume's presentation (ignored where ``presentation`` is -1).

    Returns
    -------
    ndarray of shape (n_voxels,)
        Correlation in [-1, 1]; 0 for a voxel with no within-genre variance.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    fold, presentation, genre = np.asarray(fold), np.asarray(presentation), np.asarray(genre)
    if not (len(x) == len(y) == len(fold) == len(presentation) == len(genre)):
        raise ValueError(f"x, y, fold, presentation and genre need one row per volume; got lengths {len(x)}, "
                         f"{len(y)}, {len(fold)}, {len(presentation)}, {len(genre)}")
    alphas = np.broadcast_to(np.asarray(alphas, np.float64), (y.shape[1],))
    pred = np.empty_like(y)
    for k in np.unique(fold):
        out = fold == k
        coef, xm, ym = ridge_fit(x[~out], y[~out], alphas)
        pred[out] = (x[out] - xm) @ coef + ym
    rows = presentation >= 0
    ids, first, inv = np.unique(presentation[rows], return_index=True, return_inverse=True)
    counts = np.bincount(inv)[:, None]
    meas = np.zeros((len(ids), y.shape[1]))
    fit = np.zeros_like(meas)
    np.add.at(meas, inv, y[rows])
    np.add.at(fit, inv, pred[rows])
    meas /= counts
    fit /= counts
    g = genre[rows][first]
    for label in np.unique(g):
        of = g == label
        meas[of] -= meas[of].mean(0)
        fit[of] -= fit[of].mean(0)
    return corr_columns(fit, meas)


def fit_encoding(train_features: np.ndarray, train_responses: np.ndarray, groups: np.ndarray | None,
                 test_features: np.ndarray, test_responses: np.ndarray, *, alphas=SELECTION_ALPHAS,
                 best_alphas: np.ndarray | None = None, chunk: int = 8192,
                 progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel-alpha encoding model; correlation of predicted and measured test responses.

    Parameters
    ----------
    train_features : ndarray of shape (n_train, n_features)
    train_responses : ndarray of shape (n_train, n_voxels)
    groups : ndarray of shape (n_train,) or None
        Runs for choosing each voxel's alpha by leave-one-run-out CV; unused
        when ``best_alphas`` is given.
    test_features : ndarray of shape (n_test, n_features)
    test_responses : ndarray of shape (n_test, n_voxels)
    best_alphas : ndarray of shape (n_voxels,), optional
        Alphas already chosen inside the training runs (e.g. by
        :func:`select_voxels`), which skips the CV.
    progress : callable, optional
        ``progress(done_voxels, n_voxels)``.

    Returns
    -------
    test_corr : ndarray of shape (n_voxels,)
    best_alphas : ndarray of shape (n_voxels,)
    """
    if best_alphas is None:
        if groups is None:
            raise ValueError("fit_encoding needs groups (runs) to choose alphas, or best_alphas")
        best_alphas, _ = ridge_cv(train_features, train_responses, groups, alphas, r2_score_columns)
    best_alphas = np.asarray(best_alphas, dtype=np.float64)
    xm, solve = ridge_solver(train_features)  # one decomposition for every chunk of voxels
    test_x = np.asarray(test_features, np.float64) - xm
    n_vox = train_responses.shape[1]
    corr = np.empty(n_vox)
    for start in range(0, n_vox, chunk):
        sl = slice(start, start + chunk)
        y = np.asarray(train_responses[:, sl], np.float64)
        ym = y.mean(0)
        corr[sl] = corr_columns(test_x @ solve(y - ym, best_alphas[sl]) + ym,
                                np.asarray(test_responses[:, sl], np.float64))
        if progress is not None:
            progress(min(start + chunk, n_vox), n_vox)
    return corr, best_alphas


def select_regions(scores: np.ndarray, labels: np.ndarray, n_regions: int) -> tuple[np.ndarray, list[dict]]:
    """Keep every voxel of the ``n_regions`` regions with the best mean CV score.

    Brain2Music kept the 6 Destrieux regions whose voxels predicted best in
    cross-validation; this is that rule for any parcellation.

    Parameters
    ----------
    scores : ndarray of shape (n_voxels,)
        CV score of every candidate voxel (:func:`select_voxels`' ``scores``,
        computed inside the Training runs only).
    labels : ndarray of shape (n_voxels,), int
        Region label of each voxel; 0 is outside every region.
    n_regions : int

    Returns
    -------
    selected : ndarray of int
        Voxel indices of the kept regions, best voxel first.
    regions : list of dict
        ``label``, ``n_voxels`` and ``mean_score`` of the kept regions, best first.
    """
    scores = np.asarray(scores, float)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be one per voxel")
    ids = np.unique(labels[labels != 0])
    if n_regions < 1 or len(ids) < n_regions:
        raise ValueError(f"asked for the best {n_regions} regions, but the parcellation has {len(ids)} labelled "
                         "regions among the candidate voxels; lower --top-regions or check the parcellation")
    means = np.array([scores[labels == k].mean() for k in ids])
    best = ids[np.argsort(-means, kind="stable")[:n_regions]]
    keep = np.flatnonzero(np.isin(labels, best))
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    regions = [{"label": int(k), "n_voxels": int((labels == k).sum()), "mean_score": float(scores[labels == k].mean())}
               for k in best]
    return keep, regions
