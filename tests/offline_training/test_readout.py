"""The decoder readout: shrunk error-covariance whitener and its held-out choice."""

import numpy as np
import pytest
from sklearn.covariance import ShrunkCovariance

from offline_training import evaluate as ev
from offline_training.readout import choose_readout, residual_whitener


@pytest.mark.parametrize("lam", [0.05, 0.35, 0.9])
def test_whitener_is_mu_times_sklearn_shrunk_precision(rng, lam):
    r = rng.standard_normal((120, 8)) @ rng.standard_normal((8, 8))
    s = ShrunkCovariance(shrinkage=lam).fit(r)
    mu = np.trace(np.cov(r.T, ddof=0)) / 8
    np.testing.assert_allclose(residual_whitener(r, lam), mu * s.precision_, rtol=1e-10, atol=1e-12)


def test_whitener_at_full_shrinkage_is_the_identity_and_bad_input_is_named(rng):
    r = rng.standard_normal((30, 5)) * np.arange(1, 6)
    assert np.array_equal(residual_whitener(r, 1.0), np.eye(5))
    with pytest.raises(ValueError, match="shrinkage"):
        residual_whitener(r, 1.5)
    with pytest.raises(ValueError, match="residuals"):
        residual_whitener(r[:1], 0.5)


def _decoded(rng, n_clips, dim, noisy):
    """Targets and noisy 'predictions' whose error is huge in the ``noisy`` dimensions only."""
    y = rng.standard_normal((n_clips, dim))
    sd = np.full(dim, 0.8)
    sd[noisy] = 8.0
    return y, y + rng.standard_normal((n_clips, dim)) * sd


def test_choice_whitens_anisotropic_errors_and_that_wins_on_fresh_clips(rng):
    dim, noisy = 12, np.arange(6)
    y, held = _decoded(rng, 240, dim, noisy)
    groups = np.repeat(np.arange(6), 40)
    genres = np.tile(list("abcd"), 60)
    lam, k, w, cv = choose_readout(held, y, np.zeros(dim), groups, np.arange(240), genres, scales=(1.0,))
    assert lam < 1.0
    assert cv[lam][1.0]["mean"] > cv[1.0][1.0]["mean"]
    # the whitener down-weights the badly decoded dimensions
    assert np.diag(w)[noisy].max() < np.diag(w)[6:].min()
    # on clips it never saw, the whitened readout identifies better than the plain one
    y2, p2 = _decoded(rng, 200, dim, noisy)
    assert ev.identification_accuracy(p2 @ w, y2) > ev.identification_accuracy(p2, y2) + 0.02


def test_each_run_is_read_by_a_whitener_fit_without_it(rng):
    dim = 6
    y, held = _decoded(rng, 60, dim, np.arange(2))
    groups = np.repeat(np.arange(3), 20)
    genres = np.repeat(list("abc"), 20)
    _, _, _, cv = choose_readout(held, y, np.zeros(dim), groups, np.arange(60), genres, shrinkages=(0.2,),
                                 scales=(1.0,))
    # the same scores by hand: run g's rows through the whitener of the other runs' errors
    dev = np.empty_like(held)
    for g in range(3):
        o = groups == g
        dev[o] = held[o] @ residual_whitener((y - held)[~o], 0.2)
    p = dev / np.linalg.norm(dev, axis=1, keepdims=True)
    acc = cv[0.2][1.0]
    assert acc["raw"] == pytest.approx(ev.identification_accuracy(p, y))
    assert acc["centred"] == pytest.approx(ev.identification_accuracy(p, y, centre=y.mean(0)))
    assert acc["within_genre"] == pytest.approx(ev.identification_accuracy(p, y, genres=genres, foils="same_genre"))
    assert acc["mean"] == pytest.approx((acc["raw"] + acc["centred"] + acc["within_genre"]) / 3)


def test_rows_of_one_presentation_are_scored_together_and_lengths_are_checked(rng):
    dim = 5
    y, held = _decoded(rng, 30, dim, np.arange(1))
    rows_y, rows_held = np.repeat(y, 2, axis=0), np.repeat(held, 2, axis=0)  # two rows per presentation
    groups, pres, genres = np.repeat(np.arange(3), 20), np.repeat(np.arange(30), 2), np.repeat(list("ab"), 30)
    _, _, _, cv2 = choose_readout(rows_held, rows_y, np.zeros(dim), groups, pres, genres, shrinkages=(1.0,))
    _, _, _, cv1 = choose_readout(held, y, np.zeros(dim), np.repeat(np.arange(3), 10), np.arange(30),
                                  genres[::2], shrinkages=(1.0,))
    assert cv2[1.0][1.0] == pytest.approx(cv1[1.0][1.0])
    with pytest.raises(ValueError, match="genres"):
        choose_readout(held, y, np.zeros(dim), np.repeat(np.arange(3), 10), np.arange(30), genres)


def test_a_presentation_is_scored_by_the_direction_of_its_rows_mean(rng):
    """Rows of one presentation: unit-norm, averaged, back on the unit sphere (as the Test evaluation does)."""
    dim = 5
    y, held = _decoded(rng, 30, dim, np.arange(1))
    rows_y = np.repeat(y, 2, axis=0)
    rows_held = np.repeat(held, 2, axis=0) + 0.5 * rng.standard_normal((60, dim))  # two different rows each
    groups, pres, genres = np.repeat(np.arange(3), 20), np.repeat(np.arange(30), 2), np.repeat(list("ab"), 30)
    ym = np.full(dim, 2.0)  # a shared offset, so that the centred score depends on the scale
    _, _, _, cv = choose_readout(rows_held + ym, rows_y + ym, ym, groups, pres, genres, shrinkages=(1.0,),
                                 scales=(1.0,))
    p = rows_held + ym
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    clip = p.reshape(30, 2, dim).mean(1)
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    assert cv[1.0][1.0]["centred"] == pytest.approx(ev.identification_accuracy(clip, y + ym, centre=(y + ym).mean(0)))
