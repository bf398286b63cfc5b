"""The crossed (subjects x clips) bootstrap of the group mean: its coverage of a known true mean by simulation,
beside the nested bootstrap's undercoverage in the same simulation; its limits against scipy's bootstrap; the
clips aligned by key; and ``b2m group`` reporting it with the design it assumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from offline_training.group import (CI_DESIGN, align_clips, crossed_bootstrap_ci, format_group, group_summary,
                                    hierarchical_bootstrap_ci, read_subject, write_group_report)

from test_group import _subject_metrics, _with_dataset, _write_bundle

MU = 0.75  # the true group mean of every simulation below


def _crossed_group(rng, sites, sub_sd=0.03, clip_sd=0.15, res_sd=0.25):
    """One simulated study with known mean :data:`MU`: score = MU + subject + clip + residual.

    ``sites`` is a list of ``(name, n_subjects, n_clips)``; the subjects of a site share its clips (and their
    effects), each subject's scores come in its own random clip order with the keys to match.

    Returns
    -------
    per_subject : list of ndarray, each of shape (n_clips_site,)
    keys : list of list of str, the clip of each score
    strata : list of str, the site of each subject
    """
    per, keys, strata = [], [], []
    for site, n_sub, n_clips in sites:
        clip = clip_sd * rng.standard_normal(n_clips)
        names = [f"{site}.c{j:02d}" for j in range(n_clips)]
        for _ in range(n_sub):
            y = MU + sub_sd * rng.standard_normal() + clip + res_sd * rng.standard_normal(n_clips)
            order = rng.permutation(n_clips)
            per.append(y[order])
            keys.append([names[j] for j in order])
            strata.append(site)
    return per, keys, strata


def _coverage(sites, n_groups=200, n_boot=500, seed=5):
    """Fraction of ``n_groups`` simulated studies whose 95% CI holds :data:`MU`, crossed and nested."""
    rng = np.random.default_rng(seed)
    crossed, nested = [], []
    for k in range(n_groups):
        per, keys, strata = _crossed_group(rng, sites)
        lo, hi = crossed_bootstrap_ci(per, keys, strata, n_boot=n_boot, seed=k)
        crossed.append(lo <= MU <= hi)
        lo, hi = hierarchical_bootstrap_ci(per, n_boot=n_boot, seed=k)
        nested.append(lo <= MU <= hi)
    return float(np.mean(crossed)), float(np.mean(nested))


#: 3 binomial s.d. of a 0.95 coverage measured over 200 studies (0.046)
TOL = 3 * math.sqrt(0.95 * 0.05 / 200)


def test_crossed_ci_covers_the_true_mean_where_the_nested_ci_does_not():
    """ds003720's design: 13 subjects hear the same 60 Test clips, a clip effect of s.d. 0.15 shared by all.

    The crossed CI's coverage is within 3 binomial s.d. (0.046) of 0.95: 0.965 with this seed (0.94-0.975
    with others; a little conservative, as the pigeonhole bootstrap is). The nested CI, each subject's clips
    resampled anew, misses the shared clip effect: 0.79 here (0.75-0.855 with other seeds), below 0.90.
    """
    crossed, nested = _coverage([("ds", 13, 60)])
    assert abs(crossed - 0.95) <= TOL, crossed
    assert nested < 0.90, nested


def test_crossed_ci_covers_the_true_mean_over_two_datasets_with_their_own_clips():
    """Two sites, each with its own clip set (60 and 40 clips, different keys) shared by its subjects.

    With 6-7 subjects per site the subject-by-clip residual (s.d. 0.25) is counted in both margins more
    heavily than with 13, so the crossed CI is conservative here (0.985 with this seed, 0.975-0.995 with
    others): it must not undercover (no less than 3 binomial s.d. under 0.95). The nested CI, which misses
    the clip effects each site's subjects share, covers less (0.88).
    """
    crossed, nested = _coverage([("site-a", 7, 60), ("site-b", 6, 40)])
    assert 0.95 - TOL <= crossed <= 1.0, crossed
    assert nested < crossed - TOL, (nested, crossed)


def test_crossed_one_subject_is_the_clip_bootstrap(rng):
    v = rng.uniform(0, 1, 60)
    ours = crossed_bootstrap_ci([v], [[f"c{j}" for j in range(60)]], n_boot=20000, seed=1)
    ref = stats.bootstrap((v,), np.mean, n_resamples=20000, method="percentile", random_state=2).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.006)


def test_crossed_without_subject_differences_is_the_bootstrap_of_the_clip_means(rng):
    """Every subject scores each clip alike (clip effects only): resampling subjects changes nothing, and the
    CI is the plain bootstrap of the clips. The nested CI would shrink it by sqrt(n_subjects) instead."""
    clip = rng.uniform(0.4, 1.0, 60)
    keys = [f"c{j}" for j in range(60)]
    ours = crossed_bootstrap_ci([clip] * 8, [keys] * 8, n_boot=20000, seed=1)
    ref = stats.bootstrap((clip,), np.mean, n_resamples=20000, method="percentile",
                          random_state=2).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.006)
    lo, hi = hierarchical_bootstrap_ci([clip] * 8, n_boot=20000, seed=1)
    assert hi - lo < 0.5 * (ref.high - ref.low)


def test_crossed_without_clip_differences_is_the_subject_bootstrap(rng):
    means = rng.uniform(0.5, 0.7, 8)
    ours = crossed_bootstrap_ci([np.full(40, m) for m in means], [[f"c{j}" for j in range(40)]] * 8,
                                n_boot=20000, seed=1)
    ref = stats.bootstrap((means,), np.mean, n_resamples=20000, method="percentile",
                          random_state=2).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.004)


def test_crossed_aligns_clips_by_key_not_by_position(rng):
    """The same scores given in another clip order per subject (keys to match) give the same CI, bit for bit;
    the inputs are left untouched."""
    per, keys, strata = _crossed_group(rng, [("ds", 5, 30)])
    _, Y = align_clips(per, keys)
    assert Y.shape == (5, 30) and np.isfinite(Y).all()
    sorted_keys = [sorted(k) for k in keys]
    sorted_per = [p[np.argsort(k)] for p, k in zip(per, keys)]
    copies = [p.copy() for p in per]
    assert crossed_bootstrap_ci(per, keys, strata, n_boot=2000, seed=3) == \
        crossed_bootstrap_ci(sorted_per, sorted_keys, strata, n_boot=2000, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(per, copies))
    # positions that do not match keys are not what the CI is over: scrambling one subject's keys changes it
    scrambled = list(keys)
    scrambled[0] = list(rng.permutation(keys[0]))
    assert crossed_bootstrap_ci(per, scrambled, strata, n_boot=2000, seed=3) != \
        crossed_bootstrap_ci(per, keys, strata, n_boot=2000, seed=3)


def test_align_clips_puts_nan_where_a_subject_lacks_a_clip_and_refuses_repeats():
    keys, Y = align_clips([np.array([0.1, 0.2]), np.array([0.3, np.nan, 0.5])], [["b", "a"], ["a", "b", "c"]])
    assert keys == ["a", "b", "c"]
    np.testing.assert_array_equal(Y, [[0.2, 0.1, np.nan], [0.3, np.nan, 0.5]])
    with pytest.raises(ValueError, match="clip key.*a appear more than once"):
        align_clips([np.array([0.1, 0.2])], [["a", "a"]])
    with pytest.raises(ValueError, match="2 scores but 3 clip keys"):
        align_clips([np.array([0.1, 0.2])], [["a", "b", "c"]])


def test_crossed_with_missing_scores_and_no_scores():
    nan = float("nan")
    assert np.isnan(crossed_bootstrap_ci([np.array([nan, nan])], [["a", "b"]])).all()
    lo, hi = crossed_bootstrap_ci([np.array([0.6, nan, 0.8]), np.array([0.7, 0.9, nan]), np.array([nan] * 3)],
                                  [["a", "b", "c"]] * 3, n_boot=2000)
    assert 0.6 <= lo <= hi <= 0.9


def test_group_reports_the_crossed_ci_and_its_design(tmp_path, rng):
    """``b2m group`` reports the crossed CI (per dataset where subjects come from several), says which design
    it assumes and what the t-test's population is, in the table, the JSON and the page; the older JSON key
    ``ci95_hierarchical`` is kept and holds the same, reported interval."""
    subs = [read_subject(_write_bundle(tmp_path / f"b{i}", _with_dataset(
        _subject_metrics(rng, f"00{i}", noise=2.0), "/data/site-a" if i < 3 else "/data/site-b")))
        for i in range(1, 5)]
    g = group_summary(subs, n_boot=2000, seed=4)
    assert g["ci_design"] == CI_DESIGN and CI_DESIGN.startswith("crossed")
    assert g["clip_strata"] == [{"dataset": "/data/site-a", "subjects": ["001", "002"], "n_clips": 30},
                                {"dataset": "/data/site-b", "subjects": ["003", "004"], "n_clips": 30}]
    assert "subjects listening to these Test clips" in g["t_test_population"]
    for i, key in enumerate(g["metrics"]):
        r = g["metrics"][key]
        ref = crossed_bootstrap_ci([s.per_clip[key] for s in subs], [s.excerpts for s in subs],
                                   [s.dataset for s in subs], n_boot=2000, seed=4 + i)
        assert r["ci95_crossed"] == list(ref) == r["ci95_hierarchical"]
    text = format_group(g)
    assert "95% CI (crossed)" in text and "95% CI, crossed: subjects resampled" in text
    assert "site-a: 30 clips, 2 subject(s); site-b: 30 clips, 2 subject(s)" in text
    assert "population: subjects listening to these Test clips" in text
    page = open(write_group_report(tmp_path / "out", g)).read()
    assert "95% CI, crossed: subjects resampled" in page and "95% CI (crossed)" in page
    saved = json.loads((tmp_path / "out" / "group.json").read_text())
    assert saved["ci_design"] == CI_DESIGN and saved["metrics"]["identification"]["ci95_crossed"] == \
        pytest.approx(g["metrics"]["identification"]["ci95_crossed"])
