"""The statistics of ``b2m study`` on tiny synthetic session rows: real against sham over participants (scipy's
Welch test on per-participant means), the yoked pairs (scipy's paired t-test), and the equivalence test of the
data-quality check (TOST against two one-sided scipy Welch tests, and its size by simulation)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import stats

from realtime.session.study import (FD_MARGIN_MM, TSNR_MARGIN, compare_groups, compare_yoked, describe_comparison,
                                    describe_equivalence, describe_yoked, equivalence, quality_check, welch_tost)


def row(session, participant, feedback, yoked_to=None, **values):
    """A session row as :func:`realtime.session.study.session_row` gives it (the columns these tests read)."""
    base = {"music_match": None, "mean_fd_mm": None, "median_tsnr": None}
    return {"session": session, "participant": participant, "feedback": feedback, "yoked_to": yoked_to,
            **base, **values}


def test_compare_groups_averages_each_participants_sessions_before_welch(rng):
    """P1 ran three real sessions, P2 two: one value each, the mean of their sessions, then Welch's test over
    participants (scipy on those means). Treating P1's three sessions as three people would be another test."""
    real = {"P1": [0.30, 0.34, 0.32], "P2": [0.25, 0.27], "P3": [0.40]}
    sham = {"Q1": [0.05, 0.09], "Q2": [0.12], "Q3": [0.02, 0.04]}
    rows = [row(f"/s/{p}-{k}", p, g, music_match=v) for g, by in (("real", real), ("sham", sham))
            for p, vs in by.items() for k, v in enumerate(vs)]
    rows.append(row("/s/P4-0", "P4", "real"))  # no music match: not counted
    cmp = compare_groups(rows)
    a = np.array([np.mean(v) for v in real.values()])
    b = np.array([np.mean(v) for v in sham.values()])
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert cmp["welch_t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert cmp["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert cmp["real"] == {"n": 3, "n_sessions": 6, "mean": pytest.approx(a.mean(), abs=1e-15),
                           "sd": pytest.approx(a.std(ddof=1), abs=1e-15)}
    assert cmp["sham"]["n"] == 3 and cmp["sham"]["n_sessions"] == 5
    by_session = stats.ttest_ind(sum(real.values(), []), sum(sham.values(), []), equal_var=False)
    assert cmp["p"] != pytest.approx(by_session.pvalue, rel=1e-3)
    assert cmp["participants_in_both"] == [] and cmp["unit"].startswith("participant")
    text = describe_comparison(cmp)
    assert text.startswith("real n=3 mean") and "(n = participants, each the mean of their sessions; 11 sessions)" \
        in text


def test_compare_groups_names_participants_in_both_conditions_and_needs_two_of_each():
    rows = [row("/s/a", "P1", "real", music_match=0.3), row("/s/b", "P1", "sham", music_match=0.1),
            row("/s/c", "P2", "real", music_match=0.2)]
    cmp = compare_groups(rows)
    assert cmp["participants_in_both"] == ["P1"] and cmp["p"] is None and cmp["sham"]["sd"] is None
    text = describe_comparison(cmp)
    assert "no test (it needs two participants of each, not all alike)" in text
    assert "1 participant(s) in both conditions (P1): the groups are not independent" in text


def test_compare_yoked_pairs_each_sham_with_its_source_against_scipy():
    """Three real sources; R1 fed two shams (their mean is its pair), R3's two sessions are one participant's
    (one pair), and a sham whose source is not among the sessions is named, not paired."""
    rows = [row("/s/R1", "A", "real", music_match=0.30), row("/s/R2", "B", "real", music_match=0.22),
            row("/s/R3a", "C", "real", music_match=0.40), row("/s/R3b", "C", "real", music_match=0.36),
            row("/s/S1", "D", "sham", "/s/R1", music_match=0.10), row("/s/S1b", "E", "sham", "/s/R1/",
                                                                       music_match=0.14),
            row("/s/S2", "F", "sham", "/s/R2", music_match=0.15),
            row("/s/S3a", "G", "sham", "/s/R3a", music_match=0.05), row("/s/S3b", "H", "sham", "/s/R3b",
                                                                         music_match=0.11),
            row("/s/S9", "I", "sham", "/elsewhere/R9", music_match=0.2)]
    y = compare_yoked(rows)
    real = np.array([0.30, 0.22, (0.40 + 0.36) / 2])
    sham = np.array([(0.10 + 0.14) / 2, 0.15, (0.05 + 0.11) / 2])
    ref = stats.ttest_rel(real, sham)
    assert y["n_pairs"] == 3 and y["n_sham_sessions"] == 5 and y["n_source_sessions"] == 4 and y["df"] == 2
    assert y["paired_t"] == pytest.approx(ref.statistic, rel=1e-12) and y["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert y["mean_difference"] == pytest.approx((real - sham).mean(), abs=1e-15)
    assert y["sd_difference"] == pytest.approx((real - sham).std(ddof=1), abs=1e-15)
    assert [p["participant"] for p in y["pairs"]] == ["A", "B", "C"]
    assert y["pairs"][0]["shams"] == ["/s/S1", "/s/S1b"] and y["pairs"][2]["sources"] == ["/s/R3a", "/s/R3b"]
    assert y["unpaired"] == ["/s/S9"]
    text = describe_yoked(y)
    assert text.startswith("n=3 pair(s) (5 sham session(s) against 4 source session(s)")
    assert f"paired t {ref.statistic:.3f}, df 2, p {ref.pvalue:.4f}" in text and "these: S9" in text


def test_compare_yoked_without_pairs_says_so():
    y = compare_yoked([row("/s/R1", "A", "real", music_match=0.3), row("/s/S", "B", "sham", "/x", music_match=0.1)])
    assert y["n_pairs"] == 0 and y["p"] is None and y["mean_difference"] is None
    assert describe_yoked(y).startswith("no yoked pairs among these sessions")


def test_welch_tost_is_two_one_sided_scipy_welch_tests(rng):
    a = 0.20 + 0.03 * rng.standard_normal(9)
    b = 0.21 + 0.05 * rng.standard_normal(12)
    m = 0.05
    res = welch_tost(a, b, m)
    lower = stats.ttest_ind(a + m, b, equal_var=False, alternative="greater")  # H0: mean(a) - mean(b) <= -m
    upper = stats.ttest_ind(a - m, b, equal_var=False, alternative="less")  # H0: mean(a) - mean(b) >= +m
    assert res["t_lower"] == pytest.approx(lower.statistic, rel=1e-12)
    assert res["p_lower"] == pytest.approx(lower.pvalue, rel=1e-10)
    assert res["t_upper"] == pytest.approx(upper.statistic, rel=1e-12)
    assert res["p_upper"] == pytest.approx(upper.pvalue, rel=1e-10)
    assert res["p"] == max(res["p_lower"], res["p_upper"])
    assert res["df"] == pytest.approx(lower.df, rel=1e-12)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
    assert res["ci"] == pytest.approx([ci.low, ci.high], rel=1e-10)
    # equivalent exactly when the 90% interval lies within the margin
    assert res["equivalent"] == (-m < ci.low and ci.high < m)


def test_welch_tost_size_at_the_margin_is_at_most_alpha():
    """Ground truth by simulation: with the true difference on the margin, equivalence is (wrongly) declared
    in at most alpha of studies (TOST is conservative; 3 binomial s.d. over 2000 studies allowed)."""
    rng = np.random.default_rng(3)
    hits = [welch_tost(0.05 + 0.1 * rng.standard_normal(15), 0.1 * rng.standard_normal(15), 0.05)["equivalent"]
            for _ in range(2000)]
    assert np.mean(hits) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)
    # and with no true difference and enough participants it shows equivalence most of the time
    hits = [welch_tost(0.1 * rng.standard_normal(40), 0.1 * rng.standard_normal(40), 0.1)["equivalent"]
            for _ in range(500)]
    assert np.mean(hits) > 0.9


def test_welch_tost_undefined_and_bad_margins():
    assert welch_tost([0.1], [0.1, 0.2], 0.05) is None
    assert welch_tost([0.1, 0.1], [0.2, 0.2], 0.05) is None
    with pytest.raises(ValueError, match="margin must be positive"):
        welch_tost([0.1, 0.2], [0.1, 0.2], 0)


def test_no_difference_is_not_equivalence():
    """Few, noisy participants: Welch finds no difference (p > 0.05), and the verdict is not 'equivalent'
    but 'not shown equivalent', the margin stated. Many participants alike: 'equivalent within'."""
    few = [row(f"/s/r{k}", f"r{k}", "real", mean_fd_mm=v) for k, v in enumerate((0.10, 0.30, 0.18))] + \
          [row(f"/s/s{k}", f"s{k}", "sham", mean_fd_mm=v) for k, v in enumerate((0.12, 0.35, 0.15))]
    assert compare_groups(few, "mean_fd_mm")["p"] > 0.05
    eq = equivalence(few, "mean_fd_mm", 0.05, unit=" mm")
    assert eq["verdict"] == "not shown equivalent within +-0.05 mm" and not eq["tost"]["equivalent"]
    rng = np.random.default_rng(1)
    many = [row(f"/s/r{k}", f"r{k}", "real", mean_fd_mm=0.15 + 0.02 * rng.standard_normal()) for k in range(30)] + \
           [row(f"/s/s{k}", f"s{k}", "sham", mean_fd_mm=0.15 + 0.02 * rng.standard_normal()) for k in range(30)]
    eq = equivalence(many, "mean_fd_mm", 0.05, unit=" mm")
    assert eq["verdict"] == "equivalent within +-0.05 mm" and eq["tost"]["p"] < 0.05
    assert describe_equivalence(eq).startswith("equivalent within +-0.05 mm (TOST p ")


def test_quality_check_margins_fd_in_mm_and_tsnr_relative_to_the_real_mean(rng):
    rows = [row(f"/s/r{k}", f"r{k}", "real", mean_fd_mm=0.1 + 0.01 * rng.standard_normal(),
                median_tsnr=60 + 3 * rng.standard_normal()) for k in range(8)] + \
           [row(f"/s/s{k}", f"s{k}", "sham", mean_fd_mm=0.1 + 0.01 * rng.standard_normal(),
                median_tsnr=61 + 3 * rng.standard_normal()) for k in range(8)]
    q = quality_check(rows)
    real_tsnr = np.mean([r["median_tsnr"] for r in rows if r["feedback"] == "real"])
    assert q["median_tsnr"]["equivalence"]["margin_applied"] == pytest.approx(TSNR_MARGIN * real_tsnr, rel=1e-12)
    assert q["median_tsnr"]["equivalence"]["margin_said"].startswith("+-10% of the real group's mean (+-")
    assert q["mean_fd_mm"]["equivalence"]["margin_applied"] == FD_MARGIN_MM
    a = np.array([r["median_tsnr"] for r in rows if r["feedback"] == "real"])
    b = np.array([r["median_tsnr"] for r in rows if r["feedback"] == "sham"])
    ref = welch_tost(a, b, TSNR_MARGIN * real_tsnr)
    assert q["median_tsnr"]["equivalence"]["tost"] == ref
    # the group comparison's fields stay as they were, the equivalence is added beside them
    assert {"real", "sham", "welch_t", "p", "equivalence"} <= set(q["mean_fd_mm"])
    narrow = quality_check(rows, fd_margin_mm=0.001, tsnr_margin=0.001)
    assert narrow["mean_fd_mm"]["equivalence"]["verdict"] == "not shown equivalent within +-0.001 mm"
    none = quality_check([row("/s/r", "r", "real")])
    assert none["median_tsnr"]["equivalence"]["verdict"].startswith("equivalence not tested")
    with pytest.raises(ValueError, match="margins must be positive"):
        quality_check(rows, fd_margin_mm=-1)


def test_the_cli_defaults_are_the_module_defaults_and_a_bad_margin_is_refused(capsys):
    """``b2m study`` says the margins without importing the session package; they must be the same numbers.
    A margin that is not positive is refused (exit 2) before any session is read."""
    from b2m.commands import study as cmd

    sub = argparse.ArgumentParser().add_subparsers()
    cmd.add_parser(sub)
    args = sub.choices["study"].parse_args(["S"])
    assert (args.fd_margin, args.tsnr_margin) == (FD_MARGIN_MM, TSNR_MARGIN)
    bad = sub.choices["study"].parse_args(["/no/such/session", "--tsnr-margin", "0"])
    assert cmd.run(bad) == 2
    assert "--tsnr-margin 0.0: give a positive equivalence margin (default 0.1)" in capsys.readouterr().err
