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
