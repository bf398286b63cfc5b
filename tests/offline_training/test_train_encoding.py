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
