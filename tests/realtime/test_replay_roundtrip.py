"""Issue 2 acceptance: replay -> receive over real loopback sockets, as real
processes, including a receiver killed with SIGKILL mid-run and restarted."""

from __future__ import annotations

import json
import os
import signal
import time

import nibabel as nib
import numpy as np
import pytest

from protocols.record import scan_records
from protocols.session import SessionRecord


def _assert_identical(src: str, out: str) -> None:
    a, b = nib.load(src), nib.load(out)
    assert b.get_data_dtype() == a.get_data_dtype()
    ra, rb = np.asanyarray(a.dataobj.get_unscaled()), np.asanyarray(b.dataobj.get_unscaled())
    assert ra.dtype == rb.dtype and ra.shape == rb.shape
    assert np.array_equal(ra, rb)
    assert np.array_equal(a.affine, b.affine)  # exact, not allclose
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))  # scaled values too


def _n_volumes(log) -> int:
    if not log.exists():
        return 0
    return sum(r.kind == "volume" for r in scan_records(log, payloads=False)[0])


@pytest.mark.parametrize("which", ["functional_nii", "fmri1_nii"])
def test_replay_max_speed_exports_identical_nifti(which, request, b2m_proc, endpoint, tmp_path):
    src = request.getfixturevalue(which)
    out = tmp_path / "session"
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive")
    rx.wait_for("ready")
    tx = b2m_proc("scanner", "replay", src, "--connect", endpoint, "--speed", "max", "--run-id", "run1",
                  "--quiet", name="replay")
    assert tx.wait() == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    n = nib.load(src).shape[3]
    assert summary["sent"] == n and summary["all_acked"] and not summary["rejected"]
    rx.wait_for("run1\t", stream="stdout")  # printed once the NIfTI is written
    _assert_identical(src, str(out / "nifti" / "run1.nii"))
    rx.kill(signal.SIGTERM)
    assert rx.p.returncode == 0, rx.stderr()


def test_receiver_sigkill_midrun_restart_loses_nothing(b2m_proc, fmri1_nii, endpoint, tmp_path):
    out = tmp_path / "session"
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive1")
    rx.wait_for("ready")
    # 40 volumes, TR 1.35 s at speed 20: 67.5 ms apart, 2.7 s in all
    tx = b2m_proc("scanner", "replay", fmri1_nii, "--connect", endpoint, "--speed", "20",
                  "--run-id", "run1", "--resend-timeout", "0.3", "--quiet", name="replay")
    log = out / "runs" / "run1" / "volumes.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _n_volumes(log) < 10:
        time.sleep(0.01)
    # The receiver hangs (volumes reach its socket, no acks), then dies: the
    # in-flight volumes are lost with it and must be resent.
    os.kill(rx.pid, signal.SIGSTOP)
    time.sleep(0.3)
    rx.kill(signal.SIGKILL)
    assert rx.p.returncode == -signal.SIGKILL
    n_before = len(SessionRecord(out).runs["run1"].received)
    assert 0 < n_before < 40
    time.sleep(0.5)  # the scanner keeps sending into the void meanwhile
    rx2 = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive2")
    assert tx.wait(timeout=120) == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["all_acked"] and summary["sent"] == 40
    assert summary["resent"] > 0  # sent before the kill, never acked: sent again
    assert summary["held"] > 0  # produced while no receiver was up: sent on reconnect
    rx2.wait_for("run1\t", stream="stdout")
    _assert_identical(fmri1_nii, str(out / "nifti" / "run1.nii"))
    rec = SessionRecord(out)
    assert sorted(rec.runs["run1"].received) == list(range(40))  # each exactly once
    rx2.kill(signal.SIGTERM)


@pytest.mark.parametrize("pixdim, unit, tr, reason", [
    (1.5, "sec", 1.5, ""),
    (1500.0, "msec", 1.5, ""),
    (1.5, None, None, r"time unit is 'unknown'.*set_xyzt_units"),      # never guessed
    (2000.0, "sec", None, r"2000.0 labelled 'sec'.*not a plausible TR"),  # ms labelled as seconds
    (0.0, "sec", None, r"pixdim\[4\] is 0.0"),
])
def test_tr_seconds_reads_the_time_unit_and_never_guesses(pixdim, unit, tr, reason):
    import re

    from realtime.nifti_io import tr_seconds

    img = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.int16), np.eye(4))
    img.header.set_zooms((2.0, 2.0, 2.0, pixdim))
    if unit is not None:
        img.header.set_xyzt_units("mm", unit)
    got, note = tr_seconds(img.header)
    if tr is None:
        assert got is None and re.search(reason, note), note
    else:
        assert got == pytest.approx(tr) and note == ""
