"""``b2m demo``, the README's first command, run as a process (minutes: slow profile)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two demos: retrieval (about 4 min), then generation in the same folder (about 2)
def test_b2m_demo_runs_end_to_end_and_prints_the_headline(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "b2m", "demo", "--out", str(out)], capture_output=True, text=True,
                       cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["live_vs_offline_max_abs_diff"] <= 1e-4  # train/deploy parity
    assert s["recorded_run_bit_exact"] is True
    assert 0.5 < s["live_identification_accuracy"] <= 1.0 and s["live_identification_p"] < 0.05
    assert s["latency_ms"]["p50"] > 0 and s["latency_ms"]["p99"] >= s["latency_ms"]["p50"]
    assert s["audio_underruns"] == 0  # written to feedback.wav on the scanner's clock: no device to miss
    for key in ("feedback_wav", "report"):
        assert os.path.getsize(s["paths"][key]) > 0
    assert "live identification accuracy" in r.stdout and "live vs offline decoding" in r.stdout
    # off a terminal, progress is one line per stage
    assert any(line.endswith("s") and ": done in " in line for line in r.stderr.splitlines())
    assert json.loads((out / "stamp.json").read_text())["grid"] == "small"
    # the demo's session record is a session's: it replays decision for decision, and exports as BIDS
    rep = subprocess.run([sys.executable, "-m", "b2m", "session", "replay", str(out / "session")],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rep.returncode == 0 and "410 of 410 recorded decisions compared; identical" in rep.stdout, rep.stderr
    ex = subprocess.run([sys.executable, "-m", "b2m", "session", "export", str(out / "session"), "--bids",
                         str(out / "bids"), "--subject", "001"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert ex.returncode == 0 and ex.stdout.strip() == "test-run\trun-01", ex.stderr
    rows = (out / "bids" / "sub-001" / "func" / "sub-001_task-neurofeedback_run-01_events.tsv").read_text()
    # a row for the neutral clip and one per switch (the last may sound after the run, and belong to none)
    assert len(rows.splitlines()) - 1 in (s["counts"]["switches"] + 1, s["counts"]["switches"])
    # the same folder in generation mode: dataset, bundle and library reused, the music composed live
    r = subprocess.run([sys.executable, "-m", "b2m", "demo", "--out", str(out), "--mode", "generation"],
                       capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    g = json.loads((out / "summary.json").read_text())
    assert g["mode"] == "generation" and g["paths"]["played_from"].endswith("atlas")
    assert g["step_wall_s"]["simulate"] < s["step_wall_s"]["simulate"]  # reused, not simulated again
    assert g["generator"]["errors"] == 0 and g["generator"]["segments"] >= 410 * 1.5 / 10
    assert g["live_vs_offline_max_abs_diff"] <= 1e-4 and g["recorded_run_bit_exact"] is True
    assert "music composed live" in r.stdout
