"""Decoding metrics, as Brain2Music defined them and beyond.

All functions are pure: arrays in, numbers or arrays out.

- :func:`identification_accuracy` is Brain2Music's metric: for each test clip,
  the fraction of the *other* test clips whose true embedding correlates with
  the prediction less than the clip's own does (chance 0.5). A clip is never
  counted against itself.
- :func:`identification_per_presentation` scores single presentations of
  repeated clips the same way.
- ``foils="same_genre"`` restricts the foils to clips of the same genre
  (within-genre identification): a decoder that only knows genre scores 0.5.
- ``centre=`` subtracts a reference embedding (the mean training embedding)
  from predictions and targets first, since raw correlations share an offset.
- :func:`identification_permutation_p` tests an identification accuracy
  against chance by permuting which target belongs to which prediction
  (within genre for the within-genre figure).
- :func:`nway_topk` is N-way identification (top-1, top-5) among all clips.
- :func:`explainable_variance` is the noise ceiling of each voxel from repeats.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["unit_rows", "corr_matrix", "finite_mean", "identification_accuracy", "identification_per_clip",
           "identification_per_presentation",
           "identification_permutation_p", "identification_bootstrap_ci", "paired_identification_difference",
           "nway_topk", "bootstrap_ci", "per_dim_correlation", "explainable_variance", "genre_prior_predictions",
           "retrieval_genre_agreement", "retrieval_genre_confusion", "by_genre", "tag_agreement"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with every row (last axis) scaled to unit L2 norm; zero rows stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def corr_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlations between every prediction and every target.

    Parameters
    ----------
    pred : ndarray of shape (n_clips, dim)
    true : ndarray of shape (n_clips, dim)

    Returns
    -------
    ndarray of shape (n_clips, n_clips)
        ``C[i, j] = corr(pred[i], true[j])`` across embedding dimensions.
    """
    p = pred - pred.mean(1, keepdims=True)
    t = true - true.mean(1, keepdims=True)
    return unit_rows(p) @ unit_rows(t).T


def _foil_groups(n: int, genres, foils: str) -> np.ndarray:
    """Group label per clip, shape (n,): a clip's foils are the other clips of its group."""
    if foils == "same_genre":
        if genres is None:
            raise ValueError("foils='same_genre' needs genres")
        return np.asarray(genres)
    if foils != "all":
        raise ValueError(f"foils must be 'all' or 'same_genre', got {foils!r}")
    return np.zeros(n, int)


def identification_per_clip(pred: np.ndarray, true: np.ndarray, *, genres=None,
                            foils: Literal["all", "same_genre"] = "all", centre: np.ndarray | None = None) -> np.ndarray:
    """Per-clip identification accuracy, shape (n_clips,); NaN where a clip has no foil."""
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must have the same shape")
    return identification_per_presentation(pred, true, np.arange(len(true)), genres=genres, foils=foils, centre=centre)


def identification_per_presentation(pred: np.ndarray, true: np.ndarray, clip: np.ndarray, *, genres=None,
                                    foils: Literal["all", "same_genre"] = "all",
                                    centre: np.ndarray | None = None) -> np.ndarray:
    """Identification accuracy of each decoded presentation, e.g. single presentations of repeated clips.

    Presentation ``i`` decodes clip ``clip[i]``; its accuracy is the fraction
    of the other clips (of its genre, with ``foils="same_genre"``) whose
    target correlates with ``pred[i]`` less than its own clip's does. Other
    presentations of the same clip are never foils.

    Parameters
    ----------
    pred : ndarray of shape (n_presentations, dim)
    true : ndarray of shape (n_clips, dim)
    clip : ndarray of int, shape (n_presentations,)
        Row of ``true`` each presentation decodes.
    genres : sequence of str, length n_clips, optional
        Needed for ``foils="same_genre"``.
    foils : {"all", "same_genre"}
    centre : ndarray of shape (dim,), optional
        Subtracted from predictions and targets first.

    Returns
    -------
    ndarray of shape (n_presentations,)
        NaN where a presentation's clip has no foil.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    clip = np.asarray(clip, dtype=np.int64)
    if pred.ndim != 2 or true.ndim != 2 or pred.shape[1] != true.shape[1] or clip.shape != (len(pred),):
        raise ValueError(f"pred (n_presentations, dim) {pred.shape}, true (n_clips, dim) {true.shape} and clip "
                         f"(n_presentations,) {clip.shape} do not agree")
    if len(clip) and (clip.min() < 0 or clip.max() >= len(true)):
        raise ValueError(f"clip indices must lie in [0, {len(true)}), got {clip.min()}..{clip.max()}")
    if centre is not None:
        pred = pred - centre
        true = true - centre
    c = corr_matrix(pred, true)
    rows = np.arange(len(c))
    own = c[rows, clip]
    labels = _foil_groups(len(true), genres, foils)
    valid = labels[clip][:, None] == labels[None, :]
    valid[rows, clip] = False  # never count a clip against itself
    wins = (c < own[:, None]) & valid
    n_foils = valid.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_foils > 0, wins.sum(1) / np.maximum(n_foils, 1), np.nan)


def identification_accuracy(pred, true, **kwargs) -> float:
    """Mean of :func:`identification_per_clip` over clips (chance 0.5)."""
    return finite_mean(identification_per_clip(pred, true, **kwargs))


def identification_permutation_p(pred: np.ndarray, true: np.ndarray, *, genres=None,
                                 foils: Literal["all", "same_genre"] = "all", n_perm: int = 10000,
                                 seed: int = 0) -> float:
    """One-sided permutation p-value of :func:`identification_accuracy` against chance.

    Null hypothesis: the predictions say nothing about which clip they belong
    to. Each permutation hands the targets to the predictions in a random
    order and scores the result with the same foil rule. For
    ``foils="same_genre"`` targets are permuted only among clips of the same
    genre, so genre information survives the null and only what the decoder
    knows *beyond* genre is tested (a genre-only decoder gets p = 1).

    Parameters
    ----------
    pred, true : ndarray of shape (n_clips, dim)
    genres : sequence of str, optional
        Needed for ``foils="same_genre"``.
    foils : {"all", "same_genre"}
    n_perm : int
        Random permutations.
    seed : int

    Returns
    -------
    p : float
        ``(1 + #{null accuracy >= observed}) / (1 + n_perm)``; the smallest
        possible value is ``1 / (1 + n_perm)``. NaN when no clip has a foil
        (as the accuracy then is).
    """
    c = corr_matrix(np.asarray(pred, np.float64), np.asarray(true, np.float64))
    n = len(c)
    labels = _foil_groups(n, genres, foils)
    groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    member = labels[:, None] == labels[None, :]  # member[i, k]: k is a candidate target of prediction i
    n_foils = member.sum(1) - 1
    rows = np.flatnonzero(n_foils > 0)  # a clip alone in its genre has no foil: left out, as in the metric
    if rows.size == 0:  # no clip has a foil (one clip per genre): the accuracy itself is undefined
        return float("nan")
    # score[i, j]: accuracy of prediction i if target j were its own (foils: j's candidates other than j)
    less = ((c[:, None, :] < c[:, :, None]) & member[:, None, :]).sum(2)
    score = less / np.maximum(n_foils, 1)[:, None]
    observed = score[rows, rows].mean()
    rng = np.random.default_rng(seed)
    perm = np.tile(np.arange(n), (int(n_perm), 1))
    for idx in groups:
        if len(idx) > 1:
            perm[:, idx] = idx[np.argsort(rng.random((int(n_perm), len(idx))), axis=1)]
    null = score[rows[None, :], perm[:, rows]].mean(1)
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + n_perm))


def nway_topk(pred: np.ndarray, true: np.ndarray, ks=(1, 5)) -> dict:
    """N-way identification: is the clip's own target among the k best-correlated?"""
    c = corr_matrix(np.asarray(pred, float), np.asarray(true, float))
    rank = (c > np.diag(c)[:, None]).sum(1)  # 0 = own target is the best
    return {f"top{k}": float(np.mean(rank < k)) for k in ks} | {"n_way": int(len(c))}


def finite_mean(values) -> float:
    """Mean of the finite values; NaN (silently) when there are none."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _comparisons(pred, true, genres, foils, centre) -> tuple[np.ndarray, np.ndarray]:
    """``wins[i, j]``: clip i's prediction correlates less with target j than with its own; ``valid[i, j]``:
    j is a foil of i (its rule; never i itself). Both of shape (n_clips, n_clips), float."""
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    if centre is not None:
        pred, true = pred - centre, true - centre
    c = corr_matrix(pred, true)
    labels = _foil_groups(len(c), genres, foils)
    valid = labels[:, None] == labels[None, :]
    np.fill_diagonal(valid, False)
    return ((c < np.diag(c)[:, None]) & valid).astype(np.float64), valid.astype(np.float64)


def _clip_draws(n: int, genres, n_boot: int, seed: int) -> np.ndarray:
    """How often each clip is drawn in each resample, shape (n_boot, n): with replacement, the same number
    from every genre (all clips one stratum without ``genres``; the clips alone in their genre, as in one
    run of ds003720's Test set, form one stratum together, else they could never vary)."""
    strata = np.asarray(genres, dtype=str) if genres is not None else np.zeros(n, dtype=str)
    values, sizes = np.unique(strata, return_counts=True)
    strata = np.where(np.isin(strata, values[sizes == 1]), "\0alone", strata)
    rng = np.random.default_rng(seed)
    counts = np.zeros((int(n_boot), n))
    for g in np.unique(strata):
        idx = np.flatnonzero(strata == g)
        draws = idx[rng.integers(0, len(idx), size=(int(n_boot), len(idx)))]
        np.add.at(counts, (np.repeat(np.arange(int(n_boot)), len(idx)), draws.ravel()), 1.0)
    return counts


def _resampled_accuracy(wins: np.ndarray, valid: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Share of the drawn comparisons won, per resample (NaN where none was made), shape (n_boot,)."""
    won = np.einsum("bi,ij,bj->b", counts, wins, counts)
    made = np.einsum("bi,ij,bj->b", counts, valid, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(made > 0, won / np.where(made > 0, made, 1.0), np.nan)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def identification_bootstrap_ci(pred: np.ndarray, true: np.ndarray, *, genres=None,
                                foils: Literal["all", "same_genre"] = "all", centre: np.ndarray | None = None,
                                n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of identification accuracy, the accuracy recomputed in every resample.

    A clip's score is a comparison with the other clips, so per-clip scores
    are not independent: resampling them as if they were (:func:`bootstrap_ci`)
    gives a genre-only decoder, whose within-genre accuracy is exactly 0.5 by
    construction, a CI of about ±0.09. Here each resample draws the clips
    (with replacement, the same number from every genre, so the design holds)
    and scores every drawn clip against the drawn foils its rule allows,
    never against a copy of itself: the accuracy is the share of such
    comparisons won. For the clips as drawn (each once, and the same number of
    foils for every clip) that is :func:`identification_accuracy`.

    Parameters
    ----------
    pred, true : ndarray of shape (n_clips, dim)
    genres : sequence of str, optional
        Needed for ``foils="same_genre"``; without it the resampling is not stratified.
    foils : {"all", "same_genre"}
    centre : ndarray of shape (dim,), optional
        Subtracted from both first (the centred variant).

    Returns
    -------
    (lo, hi) : tuple of float
        NaN, NaN where no clip has a foil.
    """
    wins, valid = _comparisons(pred, true, genres, foils, centre)
    if not valid.any():
        return float("nan"), float("nan")
    return _percentiles(_resampled_accuracy(wins, valid, _clip_draws(len(wins), genres, n_boot, seed)), level)


def paired_identification_difference(pred: np.ndarray, other: np.ndarray, true: np.ndarray, *, genres=None,
                                     centre: np.ndarray | None = None, n_boot: int = 2000, n_perm: int = 10000,
                                     level: float = 0.95, seed: int = 0) -> dict:
    """Identification accuracy of ``pred`` minus that of ``other`` (e.g. the genre prior), on the same clips.

    For the raw and the centred metric: the difference, its bootstrap CI (the
    clips drawn as in :func:`identification_bootstrap_ci`, one draw for both
    predictions) and a one-sided paired p-value that ``pred`` is better: a
    clip's score depends only on its own prediction row, so under the null
    the two rows of a clip are exchangeable, and each of ``n_perm`` draws
    swaps them for a random half of the clips (a sign flip of the per-clip
    differences).

    Parameters
    ----------
    pred, other, true : ndarray of shape (n_clips, dim)
    genres : sequence of str, optional
        Strata of the resampling.
    centre : ndarray of shape (dim,), optional
        The centred metric's centre (the mean Training embedding); without it only ``raw``.

    Returns
    -------
    dict
        ``raw`` (and ``centred``): ``difference``, ``ci95``, ``p``, ``clips_better``, ``clips_worse``.
    """
    out = {}
    counts = _clip_draws(len(true), genres, n_boot, seed)
    for name, c in (("raw", None), ("centred", centre)):
        if name == "centred" and centre is None:
            continue
        wa, va = _comparisons(pred, true, None, "all", c)
        wb, _ = _comparisons(other, true, None, "all", c)
        with np.errstate(invalid="ignore", divide="ignore"):  # per clip: identification_per_clip's scores
            d = (wa.sum(1) - wb.sum(1)) / va.sum(1)
        boot = _resampled_accuracy(wa, va, counts) - _resampled_accuracy(wb, va, counts)
        rng = np.random.default_rng(seed + 1)
        signs = rng.choice([-1.0, 1.0], size=(int(n_perm), len(d)))
        null = (signs * d).mean(1)
        out[name] = {"difference": float(d.mean()), "ci95": _percentiles(boot, level),
                     "p": float((1 + np.count_nonzero(null >= d.mean() - 1e-12)) / (1 + n_perm)),
                     "clips_better": int((d > 0).sum()), "clips_worse": int((d < 0).sum())}
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-clip values (clips resampled).

    For values that are independent across clips. Not for identification accuracy, whose per-clip scores
    share their foils: :func:`identification_bootstrap_ci`.
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:  # e.g. within-genre with no two test clips of one genre: undefined, not an error
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    return _percentiles(v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1), level)


def per_dim_correlation(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation across clips for each embedding dimension, shape (dim,)."""
    a = pred - pred.mean(0)
    b = true - true.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def explainable_variance(repeats: np.ndarray, bias_correction: bool = True) -> np.ndarray:
    """Noise ceiling of each voxel from repeated presentations.

    Parameters
    ----------
    repeats : ndarray of shape (n_repeats, n_samples, n_voxels)
        Responses to the same stimuli, repeated.

    Returns
    -------
    ndarray of shape (n_voxels,)
        The fraction of variance that is stimulus-locked: variance over time
        of the mean response, over the mean variance of single repeats, with
        the bias correction ``ev - (1 - ev) / (n_repeats - 1)``.
    """
    r = np.asarray(repeats, dtype=np.float64)
    n_rep = r.shape[0]
    if n_rep < 2:
        raise ValueError("explainable variance needs at least 2 repeats")
    mean_var = r.var(axis=1).mean(0)
    var_mean = r.mean(0).var(0)
    ev = var_mean / np.where(mean_var > 0, mean_var, 1.0)
    if bias_correction:
        ev = ev - (1 - ev) / (n_rep - 1)
    return ev


def genre_prior_predictions(train_emb: np.ndarray, train_genres, test_genres) -> np.ndarray:
    """The genre-only baseline: each test clip gets its genre's mean training embedding."""
    train_genres = np.asarray(train_genres)
    means = {g: train_emb[train_genres == g].mean(0) for g in np.unique(train_genres)}
    return np.stack([means[g] for g in test_genres])


def retrieval_genre_agreement(pred: np.ndarray, library_emb: np.ndarray, library_genres, true_genres,
                              ks=(1, 2)) -> dict:
    """Does the library clip retrieved from the prediction have the right genre?

    ``top{k}`` is the fraction of clips whose true genre is among the genres
    of the k nearest library clips (cosine).
    """
    p, lib = unit_rows(pred), unit_rows(library_emb)
    order = np.argsort(-(p @ lib.T), axis=1)
    lg = np.asarray(library_genres)
    tg = np.asarray(true_genres)
    return {f"top{k}": float(np.mean([tg[i] in set(lg[order[i, :k]]) for i in range(len(p))])) for k in ks}


def retrieval_genre_confusion(pred: np.ndarray, library_emb: np.ndarray, library_genres, true_genres) -> dict:
    """Which genres the retrieved clips have, for each true genre: the confusion behind ``top1`` of
    :func:`retrieval_genre_agreement` (its diagonal over the clips is that figure).

    Returns
    -------
    dict
        ``genres`` (sorted, every genre of the clips or the library) and ``counts``: a list of rows, row i the
        clips of true genre i, column j how many of them retrieved (cosine, top 1) a library clip of genre j.
    """
    p, lib = unit_rows(pred), unit_rows(library_emb)
    got = np.asarray(library_genres)[np.argmax(p @ lib.T, axis=1)]
    tg = np.asarray(true_genres)
    labels = sorted(set(tg.tolist()) | set(np.asarray(library_genres).tolist()))
    index = {g: i for i, g in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), int)
    np.add.at(counts, ([index[g] for g in tg], [index[g] for g in got]), 1)
    return {"genres": labels, "counts": counts.tolist()}


def by_genre(values, genres) -> dict:
    """The mean of per-clip ``values`` (NaN left out) within each genre, and how many clips count: ``{genre:
    {"mean": float or None, "n_clips": int}}``, genres sorted. For within-genre identification per genre."""
    v, g = np.asarray(values, np.float64), np.asarray(genres)
    out = {}
    for name in sorted(set(g.tolist())):
        x = v[(g == name) & np.isfinite(v)]
        out[name] = {"mean": float(x.mean()) if x.size else None, "n_clips": int(x.size)}
    return out


def tag_agreement(pred_tags: np.ndarray, true_tags: np.ndarray, k: int = 5) -> float:
    """Mean overlap (0-1) of the top-k tags of predicted and true tag vectors."""
    a = np.argsort(-pred_tags, axis=1)[:, :k]
    b = np.argsort(-true_tags, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
