"""Decoding metrics against brute-force definitions and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from offline_training.evaluate import (bootstrap_ci, corr_matrix, explainable_variance, genre_prior_predictions,
                                       identification_accuracy, identification_per_clip, nway_topk,
                                       per_dim_correlation, retrieval_genre_agreement, tag_agreement)


def _brute_identification(pred, true, same=None):
    n = len(pred)
    out = []
    for i in range(n):
        own = pearsonr(pred[i], true[i])[0]
        foils = [j for j in range(n) if j != i and (same is None or same[j] == same[i])]
        out.append(np.mean([pearsonr(pred[i], true[j])[0] < own for j in foils]) if foils else np.nan)
    return np.array(out)


def test_corr_matrix_matches_scipy(rng):
    p, t = rng.standard_normal((5, 12)), rng.standard_normal((5, 12))
    c = corr_matrix(p, t)
    for i in range(5):
        for j in range(5):
            assert c[i, j] == pytest.approx(pearsonr(p[i], t[j])[0], abs=1e-12)


def test_identification_matches_brute_force_and_never_counts_self(rng):
    true = rng.standard_normal((12, 20))
    pred = true + 1.5 * rng.standard_normal((12, 20))
    np.testing.assert_allclose(identification_per_clip(pred, true), _brute_identification(pred, true), atol=1e-12)
    # a perfect decoder scores exactly 1; counting the clip against itself would cap it below 1
    assert identification_accuracy(true, true) == 1.0


def test_within_genre_foils_and_genre_only_decoder_scores_half(rng):
    genres = np.repeat(["a", "b", "c"], 4)
    centres = {g: rng.standard_normal(16) * 3 for g in "abc"}
    true = np.stack([centres[g] for g in genres]) + rng.standard_normal((12, 16))
    pred = genre_prior_predictions(true, genres, genres)  # genre means only
    got = identification_per_clip(pred, true, genres=genres, foils="same_genre")
    np.testing.assert_allclose(got, _brute_identification(pred, true, genres), atol=1e-12)
    # raw accuracy rewards the genre prior; within-genre it carries no clip information
    assert identification_accuracy(pred, true) > 0.7
    within = identification_accuracy(pred, true, genres=genres, foils="same_genre")
    assert within == pytest.approx(0.5, abs=0.15)


def test_centring_removes_a_shared_offset(rng):
    offset = 10 * rng.standard_normal(30)
    true = offset + rng.standard_normal((10, 30))
    pred = offset + rng.standard_normal((10, 30))  # unrelated to the clips
    assert identification_accuracy(pred, true, centre=offset) == pytest.approx(0.5, abs=0.15)


def test_nway_topk(rng):
    true = rng.standard_normal((6, 10))
    res = nway_topk(true.copy(), true, ks=(1, 5))
    assert res == {"top1": 1.0, "top5": 1.0, "n_way": 6}
    shuffled = nway_topk(true[::-1].copy(), true, ks=(1,))
    assert shuffled["top1"] == 0.0


def test_bootstrap_ci_brackets_the_mean(rng):
    v = rng.uniform(0.6, 1.0, 60)
    lo, hi = bootstrap_ci(v)
    assert lo < v.mean() < hi and hi - lo < 0.1


def test_per_dim_correlation_matches_scipy(rng):
    a, b = rng.standard_normal((20, 3)), rng.standard_normal((20, 3))
    got = per_dim_correlation(a, b)
    for d in range(3):
        assert got[d] == pytest.approx(pearsonr(a[:, d], b[:, d])[0], abs=1e-12)


def test_explainable_variance_recovers_known_signal_fraction(rng):
    n_rep, n_t, n_v = 4, 4000, 3
    signal = rng.standard_normal((n_t, n_v)) * np.array([1.0, 0.5, 0.0])
    noise = rng.standard_normal((n_rep, n_t, n_v))
    ev = explainable_variance(signal[None] + noise)
    # true fraction = var(signal) / (var(signal) + var(noise)) = s^2 / (s^2 + 1)
    np.testing.assert_allclose(ev, [0.5, 0.2, 0.0], atol=0.03)


def test_retrieval_genre_agreement_and_tags():
    lib = np.eye(4)
    lib_genres = ["a", "b", "c", "d"]
    pred = np.array([[1, 0.1, 0, 0], [0, 0, 0.9, 1.0]])
    res = retrieval_genre_agreement(pred, lib, lib_genres, ["a", "c"], ks=(1, 2))
    assert res == {"top1": 0.5, "top2": 1.0}
    assert tag_agreement(np.array([[0.9, 0.1, 0.5]]), np.array([[0.8, 0.2, 0.6]]), k=2) == 1.0
