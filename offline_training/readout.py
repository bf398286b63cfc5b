"""The decoder's readout: which direction of the decoded embedding to output.

Ridge predicts the conditional mean of the embedding, ``m(x)``. Identification
and library retrieval rank *candidates* ``y_j`` by how well they match a
prediction. If the decoding error is Gaussian with covariance ``S``, the
candidate log-likelihood is ``-(y_j - m)' S^-1 (y_j - m) / 2``, whose part that
depends on the prediction is ``y_j' S^-1 m``: the best score reads the
prediction through ``S^-1``, not as is. Dimensions the decoder predicts badly
(large error variance) count less; those it predicts well count more.

``S`` is the covariance of the decoder's held-out errors (leave-one-run-out
predictions on the Training runs), shrunk towards ``mu I`` with
``mu = trace(S) / dim`` because it is estimated from a few hundred rows in
200 dimensions::

    S_lam = (1 - lam) S + lam mu I          (sklearn's ShrunkCovariance)
    W_lam = mu S_lam^-1                     lam = 1 gives W = I exactly

The output stays linear, ``normalize(y_mean + k (x - x_mean) @ B @ W_lam)``, so
the ONNX decoder does not change shape; ``lam`` and the deviation scale ``k``
are chosen together by identification of held-out Training presentations, with
``S`` re-estimated without the held-out run (nested, so the choice is not
flattered by fitting ``S`` to the rows it scores). No Test run is involved.

The criterion is the mean of the three identification accuracies the
evaluation reports (raw, centred on the mean Training embedding, and among
clips of the same genre), each computed as the Test evaluation computes it:
on unit-norm outputs. The raw one alone prefers strong whitening and a large
``k``, which lets the centred accuracy fall by more than the raw one gains;
the mean keeps all three in view.
"""

from __future__ import annotations

import numpy as np

from . import evaluate as ev

__all__ = ["READOUT_SHRINKAGES", "choose_readout", "residual_whitener"]

#: Shrinkages ``lam`` of the error covariance tried by :func:`choose_readout`; 1.0 is the plain readout.
READOUT_SHRINKAGES = (1.0, 0.7, 0.5, 0.35, 0.2, 0.1)


def residual_whitener(residuals: np.ndarray, shrinkage: float) -> np.ndarray:
    """``mu * inv((1 - lam) S + lam mu I)`` for the (ddof 0) covariance ``S`` of ``residuals``.

    Parameters
    ----------
    residuals : ndarray of shape (n_rows, dim)
        Held-out decoding errors (target minus prediction), embedding units.
    shrinkage : float in [0, 1]
        ``lam``; 1 returns the identity.

    Returns
    -------
    ndarray of shape (dim, dim), symmetric
        Dimensionless (``mu`` cancels the units of ``S``).
    """
    return _shrunk_whitener(_error_cov(residuals), shrinkage)


def _error_cov(residuals: np.ndarray) -> np.ndarray:
    """The (ddof 0) covariance of ``residuals`` (n_rows, dim), shape (dim, dim)."""
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim != 2 or len(r) < 2:
        raise ValueError(f"residuals must be (n_rows >= 2, dim); got shape {r.shape}")
    rc = r - r.mean(0)
    return rc.T @ rc / len(r)


def _shrunk_whitener(s: np.ndarray, shrinkage: float) -> np.ndarray:
    """:func:`residual_whitener` from the error covariance ``s`` itself."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must lie in [0, 1]; got {shrinkage}")
    d = s.shape[0]
    if shrinkage == 1.0:
        return np.eye(d)
    mu = np.trace(s) / d
    if mu <= 0:
        return np.eye(d)
    w = mu * np.linalg.inv((1.0 - shrinkage) * s + shrinkage * mu * np.eye(d))
    return (w + w.T) / 2


def choose_readout(held: np.ndarray, y: np.ndarray, y_mean: np.ndarray, groups: np.ndarray,
                   presentation: np.ndarray, genres, *, shrinkages=READOUT_SHRINKAGES,
                   scales=(1.0,)) -> tuple[float, float, np.ndarray, dict]:
    """Choose the shrinkage and deviation scale by held-out identification.

    Parameters
    ----------
    held : ndarray of shape (n_rows, dim)
        Leave-one-run-out predictions of the Training rows (each run predicted
        by a model fit on the other runs).
    y : ndarray of shape (n_rows, dim)
        Their targets.
    y_mean : ndarray of shape (dim,)
        The mean embedding the decoded deviation is added to.
    groups : ndarray of int, shape (n_rows,)
        Run of each row.
    presentation : ndarray of int, shape (n_rows,)
        Presentation each row belongs to (unique across runs); rows of one
        presentation are averaged (unit-norm first) before scoring.
    genres : sequence of str, length n_rows
        Genre of each row's clip, for the within-genre accuracy.
    shrinkages, scales : sequence of float

    Returns
    -------
    shrinkage : float
    scale : float
    whitener : ndarray of shape (dim, dim)
        :func:`residual_whitener` of all held-out errors at ``shrinkage``.
    cv : dict
        ``{shrinkage: {scale: {"raw", "centred", "within_genre", "mean"}}}``,
        held-out identification accuracies; ``"mean"`` is the criterion.

    Ties go to the larger shrinkage (the plainer readout), then the smaller scale.
    """
    held = np.asarray(held, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.asarray(groups)
    if not (len(held) == len(y) == len(groups) == len(presentation) == len(genres)):
        raise ValueError(f"held, y, groups, presentation and genres must have one entry per row; got lengths "
                         f"{len(held)}, {len(y)}, {len(groups)}, {len(presentation)}, {len(genres)}")
    resid = y - held
    ids, first, inv = np.unique(presentation, return_index=True, return_inverse=True)
    true = np.zeros((len(ids), y.shape[1]))
    true[inv] = y
    clip_genres = [genres[i] for i in first]
    centre = true.mean(0)
    # each run is read by the error covariance of the other runs: its own errors never shape its whitener
    others = {g: _error_cov(resid[groups != g]) for g in np.unique(groups)}
    cv: dict[float, dict[float, dict]] = {}
    for lam in shrinkages:
        dev = np.empty_like(held)
        for g, s in others.items():
            out = groups == g
            dev[out] = (held[out] - y_mean) @ _shrunk_whitener(s, lam)
        cv[float(lam)] = {}
        for k in scales:
            p = ev.unit_rows(y_mean + k * dev)
            clip = np.zeros_like(true)
            np.add.at(clip, inv, p)
            # the mean back on the unit sphere, as the evaluation scores it (the centred score is not scale-free)
            clip = ev.unit_rows(clip)
            acc = {"raw": ev.identification_accuracy(clip, true),
                   "centred": ev.identification_accuracy(clip, true, centre=centre),
                   "within_genre": ev.identification_accuracy(clip, true, genres=clip_genres, foils="same_genre")}
            acc["mean"] = float(np.mean(list(acc.values())))
            cv[float(lam)][float(k)] = acc
    lam, k = max(((la, kk) for la in cv for kk in cv[la]), key=lambda t: (cv[t[0]][t[1]]["mean"], t[0], -t[1]))
    return lam, k, residual_whitener(resid, lam), cv
