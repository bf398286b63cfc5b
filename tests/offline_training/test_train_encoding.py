"""Voxel selection and encoding maps used by ``b2m train``, against explicit ridge refits."""

from __future__ import annotations

import numpy as np
import pytest

from offline_training.encoding import fit_encoding, select_voxels
from offline_training.ridge import corr_columns, r2_score_columns, ridge_cv, ridge_fit


@pytest.mark.parametrize("shape", [(80, 12), (30, 50)])  # primal (one decomposition for all chunks) and kernel
def test_fit_encoding_with_given_alphas_equals_ridge_fit(rng, shape):
    n, p = shape
    x = rng.standard_normal((n, p))
    y = (x[:, :3] @ rng.standard_normal((3, 7)) + rng.standard_normal((n, 7))).astype(np.float32)
    xt = rng.standard_normal((20, p))
    yt = xt[:, :3] @ rng.standard_normal((3, 7)) + rng.standard_normal((20, 7))
    alphas = np.logspace(-1, 3, 7)
    corr, best = fit_encoding(x, y, None, xt, yt, best_alphas=alphas, chunk=3)
    coef, xm, ym = ridge_fit(x, y.astype(np.float64), alphas)
    np.testing.assert_allclose(corr, corr_columns((xt - xm) @ coef + ym, yt), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(best, alphas)


def test_fit_encoding_chooses_alphas_by_run_cv_without_given_ones(rng):
    x = rng.standard_normal((60, 5))
    y = x @ rng.standard_normal((5, 4)) + rng.standard_normal((60, 4)) * [0.1, 1, 5, 50]
    groups = np.repeat(np.arange(3), 20)
    _, best = fit_encoding(x, y, groups, x[:10], y[:10], alphas=[0.1, 10.0, 1e4])
    np.testing.assert_array_equal(best, ridge_cv(x, y, groups, [0.1, 10.0, 1e4], r2_score_columns)[0])
    with pytest.raises(ValueError, match="groups"):
        fit_encoding(x, y, None, x, y)


def test_select_voxels_ranks_responsive_voxels_first_and_takes_a_concatenated_array(rng):
    feats = [rng.standard_normal((40, 6)) for _ in range(4)]
    w = np.zeros((6, 30))
    w[:, :5] = rng.standard_normal((6, 5)) * 2  # voxels 0-4 respond, the rest is noise
    resp = [(f @ w + rng.standard_normal((40, 30))).astype(np.float32) for f in feats]
    sel, scores, alphas = select_voxels(feats, resp, 5, return_alphas=True, alphas=[0.1, 10.0, 1e3])
    assert set(sel) == set(range(5))
    assert scores.shape == alphas.shape == (30,)
    sel2, scores2 = select_voxels(feats, np.concatenate(resp), 5, alphas=[0.1, 10.0, 1e3])
    np.testing.assert_array_equal(sel2, sel)
    np.testing.assert_array_equal(scores2, scores)
    with pytest.raises(ValueError, match="rows"):
        select_voxels(feats, np.concatenate(resp)[:-1], 5)


def test_select_regions_keeps_whole_regions_ranked_by_mean_score(rng):
    from offline_training.encoding import select_regions

    labels = rng.integers(0, 5, 200)  # regions 1..4, 0 = unlabelled
    scores = rng.standard_normal(200) * 0.05
    scores[labels == 3] += 0.5  # region 3 predicts best, then region 1
    scores[labels == 1] += 0.2
    scores[labels == 0] += 5.0  # unlabelled voxels never count, however good
    sel, regions = select_regions(scores, labels, 2)
    # the reference: per-label means computed directly, the top 2, all their voxels
    means = {k: scores[labels == k].mean() for k in (1, 2, 3, 4)}
    top = sorted(means, key=means.get, reverse=True)[:2]
    assert [r["label"] for r in regions] == top == [3, 1]
    assert set(sel) == set(np.flatnonzero(np.isin(labels, top)))
    assert np.all(np.diff(scores[sel]) <= 0)  # best voxel first
    assert regions[0]["n_voxels"] == int((labels == 3).sum())
    np.testing.assert_allclose(regions[0]["mean_score"], means[3])
    with pytest.raises(ValueError, match="--top-regions"):
        select_regions(scores, labels, 5)


def test_within_genre_scores_match_sklearn_refits_and_ignore_the_genre(rng):
    from scipy.stats import pearsonr
    from sklearn.linear_model import Ridge

    from offline_training.encoding import within_genre_scores

    n_pres, per, n_feat = 24, 5, 4
    genre_of = np.repeat(np.arange(3), 8)  # 3 genres x 8 presentations
    feats = rng.standard_normal((n_pres, n_feat))
    x = np.repeat(feats, per, 0) + 0.3 * rng.standard_normal((n_pres * per, n_feat))
    pres = np.repeat(np.arange(n_pres), per)
    pres[::7] = -1  # some volumes respond to no presentation
    genre = genre_of[np.repeat(np.arange(n_pres), per)]
    fold = np.repeat(np.arange(4), n_pres * per // 4)
    y = x @ rng.standard_normal((n_feat, 3)) + rng.standard_normal((len(x), 3))
    y[:, 2] = 5.0 * genre + 0.1 * rng.standard_normal(len(x))  # follows the genre only
    alphas = np.array([0.5, 10.0, 1.0])
    got = within_genre_scores(x, y, fold, alphas, pres, genre)
    # the reference: sklearn refits per fold and voxel, then per-presentation means with a Python loop
    for v in range(3):
        held = np.empty(len(x))
        for k in range(4):
            m = Ridge(alpha=alphas[v]).fit(x[fold != k], y[fold != k, v])
            held[fold == k] = m.predict(x[fold == k])
        ids = [p for p in range(n_pres) if (pres == p).any()]
        meas = np.array([y[pres == p, v].mean() for p in ids])
        fit = np.array([held[pres == p].mean() for p in ids])
        g = genre_of[ids]
        for label in range(3):
            meas[g == label] -= meas[g == label].mean()
            fit[g == label] -= fit[g == label].mean()
        assert got[v] == pytest.approx(pearsonr(fit, meas)[0], abs=1e-10)
    assert got[0] > 0.5 and abs(got[2]) < 0.5  # a genre-only voxel scores no better than chance
    with pytest.raises(ValueError, match="one row per volume"):
        within_genre_scores(x, y[:-1], fold, alphas, pres, genre)


def _runs_with_genre_and_within_genre_voxels(rng, n_runs=4, n_pres=8, per=10):
    """Training runs where voxels 0-9 follow what varies within a genre and voxels 10-19 the genre only."""
    from types import SimpleNamespace

    from offline_training.stages import RunData

    runs = []
    weights = rng.standard_normal((3, 10))
    for r in range(n_runs):
        genres = np.arange(n_pres) % 2
        emb = np.c_[genres * 3.0, rng.standard_normal((n_pres, 3))]  # dim 0: the genre; dims 1-3 within it
        idx = np.repeat(np.arange(n_pres), per)
        y = emb[idx]
        lag = 4
        drive = np.zeros((len(idx), 4))
        drive[lag:] = y[:-lag]  # the response follows the moment `lag` volumes back, as the decoder reads it
        values = rng.standard_normal((len(idx), 40))
        values[:, :10] += drive[:, 1:] @ weights
        values[:, 10:20] += 3.0 * drive[:, :1]
        events = [SimpleNamespace(genre=("rock", "jazz")[g]) for g in genres]
        runs.append(RunData(None, values.astype(np.float32), y, idx, events))
    return runs


def test_choose_voxels_within_genre_keeps_the_voxels_that_vary_within_a_genre(rng):
    from offline_training.train import WITHIN_GENRE_POOL, TrainConfig, choose_voxels

    runs = _runs_with_genre_and_within_genre_voxels(rng)
    values = np.concatenate([r.values for r in runs])
    cfg = TrainConfig(n_voxels=10, delays=(2, 3, 4))
    _, by_cv, scores, _, info = choose_voxels(runs, values, cfg)
    assert info["rule"].startswith("top voxels by CV R^2")
    assert set(by_cv) == set(range(10, 20))  # the genre voxels explain the most variance
    cfg.select_by = "within-genre"
    _, within, scores2, _, info = choose_voxels(runs, values, cfg)
    np.testing.assert_array_equal(scores2, scores)
    assert set(within) == set(range(10))
    pool = np.argsort(-scores, kind="stable")[: WITHIN_GENRE_POOL * 10]
    assert np.isin(within, pool).all() and "within-genre" in info["rule"]
    cfg.select_by = "genre"
    with pytest.raises(ValueError, match="select_by"):
        choose_voxels(runs, values, cfg)


def test_choose_voxels_refuses_a_voxel_rule_with_whole_regions(rng):
    from offline_training.train import TrainConfig, choose_voxels

    runs = _runs_with_genre_and_within_genre_voxels(rng, n_runs=2)
    cfg = TrainConfig(n_voxels=5, select_by="within-genre", top_regions=1)
    with pytest.raises(ValueError, match="one of --select-by and --top-regions"):
        choose_voxels(runs, np.concatenate([r.values for r in runs]), cfg, labels=np.ones(40, int))
