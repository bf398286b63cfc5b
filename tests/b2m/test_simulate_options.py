"""``b2m simulate`` and ``b2m demo`` name their command-line options in their messages, and check them all
before writing anything."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


def _b2m(*args, env=None):
    return subprocess.run([sys.executable, "-m", "b2m", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={**os.environ, **(env or {})})


def test_simulate_out_of_range_runs_name_the_option(tmp_path):
    r = _b2m("simulate", "--out", str(tmp_path / "ds"), "--train-runs", "13")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: --train-runs must be a whole number 0..12; got 13" in r.stderr
    r = _b2m("simulate", "--out", str(tmp_path / "ds"), "--train-runs", "0", "--test-runs", "0")
    assert "--train-runs and --test-runs are both 0" in r.stderr
    assert not (tmp_path / "ds").exists()


def test_simulate_missing_stimuli_from_is_refused_before_writing(tmp_path):
    missing = tmp_path / "nonexistent"
    r = _b2m("simulate", "--out", str(tmp_path / "ds"), "--stimuli-from", str(missing), "--grid", "tiny")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{missing}: folder not found (--stimuli-from)" in r.stderr
    assert not (tmp_path / "ds").exists()  # not ignored: nothing simulated, nothing written


def test_simulate_missing_metadata_names_the_option_and_the_variable(tmp_path):
    r = _b2m("simulate", "--out", str(tmp_path / "ds"), env={"B2M_DS003720": str(tmp_path / "nope")})
    assert r.returncode == 2
    assert f"$B2M_DS003720 is set to {tmp_path / 'nope'}, which is not a folder" in r.stderr
    assert "Give --metadata DIR" in r.stderr and "metadata_dir" not in r.stderr
    r = _b2m("simulate", "--out", str(tmp_path / "ds"), "--metadata", str(tmp_path / "meta"))
    assert r.returncode == 2 and f"{tmp_path / 'meta'}: folder not found (--metadata)" in r.stderr
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("train_runs, expected", [(13, "--train-runs must be a whole number 2..12"),
                                                  (1, "--train-runs must be a whole number 2..12"),
                                                  (0, "--train-runs must be a whole number 2..12")])
def test_demo_checks_its_options_before_writing_anything(tmp_path, train_runs, expected):
    from b2m.demo import DemoConfig
    from b2m.demo.pipeline import run_demo

    out = tmp_path / "demo"
    with pytest.raises(ValueError) as info:
        run_demo(DemoConfig(out=str(out), train_runs=train_runs))
    assert expected in str(info.value) and f"got {train_runs}" in str(info.value)
    assert not out.exists()  # no stamp.json, no folder


def test_b2m_demo_bad_train_runs_exit_2_and_no_stamp(tmp_path):
    r = _b2m("demo", "--out", str(tmp_path / "X"), "--train-runs", "13")
    assert r.returncode == 2 and "--train-runs must be a whole number 2..12; got 13" in r.stderr
    assert not (tmp_path / "X").exists()
