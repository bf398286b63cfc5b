"""Noise ceiling from Test repeats: row alignment by hand, EV against its closed form."""

from __future__ import annotations

import numpy as np
import pytest

from offline_training.ceiling import noise_ceiling, repeat_rows
from offline_training.evaluate import explainable_variance


def _runs():
    """Run 0 plays A then B; run 1 plays B, A, A (5 TRs each); 17 volumes per run."""
    idx0 = np.full(17, -1)
    idx0[0:5], idx0[5:10] = 0, 1
    idx1 = np.full(17, -1)
    idx1[0:5], idx1[5:10], idx1[10:15] = 0, 1, 2
    return [idx0, idx1], [["A", "B"], ["B", "A", "A"]]


def test_repeat_rows_aligns_each_excerpts_presentations_by_hand():
    idx, names = _runs()
    rows, info = repeat_rows(idx, names, lag=2, n_repeats=2)
    # excerpts sorted (A, B); A: run 0 moments 0-4 and run 1 moments 5-9; B: run 0 5-9 and run 1 0-4
    want_r0 = [(0, v) for v in range(2, 7)] + [(0, v) for v in range(7, 12)]
    want_r1 = [(1, v) for v in range(7, 12)] + [(1, v) for v in range(2, 7)]
    assert rows.shape == (2, 10, 2)
    assert [tuple(x) for x in rows[0]] == want_r0 and [tuple(x) for x in rows[1]] == want_r1
    assert info == {"n_repeats": 2, "n_excerpts": 2, "n_samples": 10, "excerpts_left_out": []}
    rows3, info3 = repeat_rows(idx, names, lag=2, n_repeats=3)  # only A is heard 3 times
    assert info3["n_excerpts"] == 1 and info3["excerpts_left_out"] == ["B"]
    assert [tuple(x) for x in rows3[2]] == [(1, v) for v in range(12, 17)]


def test_a_presentation_cut_by_the_run_end_shortens_all_its_repeats():
    idx, names = _runs()
    rows, _ = repeat_rows(idx, names, lag=4, n_repeats=3)  # A's 3rd presentation: volumes 14..18, run has 17
    assert rows.shape == (3, 3, 2)
    assert [tuple(x) for x in rows[2]] == [(1, 14), (1, 15), (1, 16)]


def test_ev_of_aligned_repeats_matches_the_closed_form(rng):
    """Signal of variance s2 repeated under unit noise: EV = s2 / (s2 + 1)."""
    n_rep, n, s2 = 4, 3000, np.array([0.0, 0.25, 1.0, 4.0])
    signal = rng.standard_normal((n, 4)) * np.sqrt(s2)
    # each repeat in its own run, at a shuffled set of volumes
    order = [rng.permutation(n) for _ in range(n_rep)]
    values = []
    for r in range(n_rep):
        v = np.empty((n, 4))
        v[order[r]] = signal + rng.standard_normal((n, 4))
        values.append(v)
    rows = np.stack([np.column_stack([np.full(n, r), order[r]]) for r in range(n_rep)])
    ev = noise_ceiling(values, rows, chunk=3)
    np.testing.assert_allclose(ev, s2 / (s2 + 1), atol=0.03)
    direct = np.stack([values[r][order[r]] for r in range(n_rep)])
    np.testing.assert_allclose(ev, explainable_variance(direct), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ev, noise_ceiling(values, rows))  # chunking changes nothing


def test_default_repeats_follow_most_excerpts():
    """ds003720's Test runs: most excerpts 4 times, a few 5 times -> 4 repeats, nobody left out."""
    idx, names = [], []
    for run in range(4):
        i = np.full(60, -1)
        ex = [f"e{k}" for k in range(10)] + (["e0"] if run == 0 else [])
        for j in range(len(ex)):
            i[j * 5:(j + 1) * 5] = j
        idx.append(i)
        names.append(ex)
    rows, info = repeat_rows(idx, names, lag=1)
    assert info["n_repeats"] == 4 and info["n_excerpts"] == 10 and info["excerpts_left_out"] == []


def test_no_repeats_and_bad_lag_are_named():
    idx, names = [np.array([0, 0, 1, 1, -1])], [["A", "B"]]
    with pytest.raises(ValueError, match="no excerpt in these runs is heard twice"):
        repeat_rows(idx, names, lag=0)
    with pytest.raises(ValueError, match="lag must be >= 0"):
        repeat_rows(idx, names, lag=-1)
    with pytest.raises(ValueError, match="no presentation found"):
        repeat_rows([np.full(4, -1)], [[]], lag=0)
