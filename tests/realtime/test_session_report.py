"""The session's HTML report (``realtime.session.report``): its wording and figures, on summaries and results built
by hand. A real session's report is checked end to end in ``test_session_cli``."""

from __future__ import annotations

import html

from protocols.wire import Result
from realtime.session.report import describe_tsnr, session_figures, write_session_report

FLAG = "(under half the Training runs': check the head coil and the sequence)"


def test_describe_tsnr_names_each_run_beside_the_training_runs():
    text = describe_tsnr({"runs": {"run-01": 52.4, "run-02": 48.6}, "training": 48.2})
    assert text == "run-01 52, run-02 49 (Training runs 48)"


def test_describe_tsnr_flags_a_run_under_half_the_training_runs():
    text = describe_tsnr({"runs": {"run-01": 52.0, "run-02": 23.9, "run-03": 24.0}, "training": 48.0})
    assert text == f"run-01 52, run-02 24 {FLAG}, run-03 24 (Training runs 48)"  # 24 is half: not under it


def test_describe_tsnr_without_the_training_runs_figure_flags_nothing():
    text = describe_tsnr({"runs": {"run-01": 12.0}, "training": None})
    assert text == "run-01 12 (no Training runs' figure in the model's bundle)" and "under half" not in text


def _results(tsnr_of):
    """Two runs of 30 volumes, nothing playing (the music figure needs no library), ``tsnr_of(i)`` each."""
    return [Result(run_id=run, index=i, action="keep", latency_ms={"total": 1.0}, dvars_pct=0.5, tsnr=tsnr_of(i))
            for run in ("run-01", "run-02") for i in range(30)]


def test_session_figures_draw_the_tsnr_where_the_results_have_it():
    without = session_figures(_results(lambda i: 40.0 if i >= 19 else None), None)
    assert [t for t, _ in without] == ["Music over time", "Latency per TR", "Image change (DVARS)", "Temporal SNR"]
    with_line = session_figures(_results(lambda i: 40.0 if i >= 19 else None), None, training_tsnr=90.0)
    assert with_line[-1][0] == "Temporal SNR" and with_line[-1][1] != without[-1][1]  # the Training runs' line
    assert with_line[:-1] == without[:-1]  # and nothing else changed
    # with the Training runs' running curve, it is drawn under each run instead of the end's line
    curve = [None] * 19 + [120.0 - k for k in range(11)]  # 30 volumes, higher early as a running figure reads
    with_curve = session_figures(_results(lambda i: 40.0 if i >= 19 else None), None, training_tsnr=90.0,
                                 training_curve=curve)
    assert with_curve[-1][1] not in (with_line[-1][1], without[-1][1]) and with_curve[:-1] == without[:-1]
    short = session_figures(_results(lambda i: 40.0 if i >= 19 else None), None, training_tsnr=90.0,
                            training_curve=curve[:25])  # runs longer than the Training runs: its last value
    assert short[-1][0] == "Temporal SNR" and short[-1][1] != with_curve[-1][1]
    old = session_figures(_results(lambda i: None), None)  # a record made before the figure was kept
    assert "Temporal SNR" not in [t for t, _ in old]


def test_the_report_has_a_tsnr_row_and_figure(tmp_path):
    summary = {"counts": {"volumes": 60, "decoded": 56, "switches": 0, "holds": 0, "errors": 0, "stand_ins": 0,
                          "late": 0},
               "latency_ms": {"total": {"p50": 1.0, "p99": 2.0}},
               "tsnr": {"runs": {"run-01": 40.0, "run-02": 20.0}, "training": 45.0}}
    results = _results(lambda i: 40.0 if i >= 19 else None)
    page = html.unescape(open(write_session_report(str(tmp_path / "report.html"), summary, results, None)).read())
    assert (f"<th>Temporal SNR of the decoder's voxels</th><td>run-01 40, run-02 20 {FLAG} (Training runs 45)</td>"
            in page)
    assert "<h2>Temporal SNR</h2>" in page
    summary["tsnr"] = None  # an older record: no row
    page = open(write_session_report(str(tmp_path / "old.html"), summary, [], None)).read()
    assert "Temporal SNR of the decoder" not in page
