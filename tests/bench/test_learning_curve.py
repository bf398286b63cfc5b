"""``bench/learning_curve.py``'s pure parts: the run subsets and the ``c - d / n`` extrapolation."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")


@pytest.fixture(scope="module")
def lc():
    sys.path.insert(0, BENCH)  # the script imports its neighbours (_machine) as bench/ does when run
    try:
        spec = importlib.util.spec_from_file_location("bench_learning_curve", os.path.join(BENCH, "learning_curve.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(BENCH)


def test_subsets_are_distinct_and_sized(lc, rng):
    plan = lc.subsets(12, [3, 6, 12], 4, rng)
    sizes = [len(s) for s in plan]
    assert sizes == [3] * 4 + [6] * 4 + [12]  # all 12 runs exist once only
    assert len(set(plan)) == len(plan)
    assert all(set(s) <= set(range(12)) and list(s) == sorted(s) for s in plan)


def test_subsets_never_ask_for_more_than_exist(lc, rng):
    assert len(lc.subsets(3, [2], 10, rng)) == 3  # C(3, 2)


@pytest.mark.parametrize("bad", [1, 13])
def test_subsets_reject_impossible_counts(lc, rng, bad):
    with pytest.raises(ValueError, match=r"--runs"):
        lc.subsets(12, [bad], 1, rng)


def test_fit_inverse_matches_polyfit_in_one_over_n(lc, rng):
    n = np.array([3.0, 6.0, 9.0, 12.0])
    acc = 0.62 - 0.15 / n + rng.normal(0, 0.005, 4)
    c, d = lc.fit_inverse(n, acc)
    slope, intercept = np.polyfit(1.0 / n, acc, 1)  # independent reference: a line in 1/n
    assert c == pytest.approx(intercept, abs=1e-12)
    assert d == pytest.approx(-slope, abs=1e-12)


def test_runs_for_goal_closed_form(lc):
    assert lc.runs_for(0.65, 0.3, 0.6) == pytest.approx(6.0)  # 0.65 - 0.3 / 6 = 0.6
    assert lc.runs_for(0.58, 0.3, 0.6) is None  # the asymptote is below the goal
    assert lc.runs_for(0.65, -0.1, 0.6) is None  # does not grow with runs


def test_extrapolate_recovers_a_noiseless_curve(lc, rng):
    counts = np.repeat([3, 6, 12], [2, 2, 1])
    clip_offsets = rng.normal(0, 0.05, 60)  # the same clips under every fit, as on one Test set
    per_clip = (0.7 - 0.3 / counts)[:, None] + clip_offsets[None, :]
    ex = lc.extrapolate(counts, per_clip, n_boot=200)
    assert ex["c"] == pytest.approx(0.7 + clip_offsets.mean(), abs=1e-12)
    assert ex["d"] == pytest.approx(0.3, abs=1e-12)
    assert ex["c_ci95"][0] <= ex["c"] <= ex["c_ci95"][1]
    assert ex["levels"] == [3, 6, 12]


def test_goal_verdict_never_extrapolates_below_the_measured_runs(lc):
    assert "fewest runs measured (3)" in lc.goal_verdict(1.2, 0.2, 3)
    assert lc.goal_verdict(10.7, 0.2, 3) == "the fit reaches it at 10.7 runs"
    assert lc.goal_verdict(None, 0.04, 3) == "not reached by the fit"
    assert lc.goal_verdict(None, -0.1, 3) == "the fit does not grow with runs"
