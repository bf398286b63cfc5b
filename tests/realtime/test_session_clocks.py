"""A scanner side whose clock is off, as at a site whose console is not synchronised: the session measures
the offset from the volumes' send and receive times and puts every acquisition time on its own clock.

The scanner side is a real ``b2m scanner replay`` process run under libfaketime (Debian's ``faketime``),
which shifts every clock reading of that process, and only of it; the session is a real ``b2m session``
process. The reference is the shift imposed."""

from __future__ import annotations

import json
import shutil
import signal

import nibabel as nib
import numpy as np
import pytest
from session_kit import kit_fixture

from protocols.session import SessionRecord
from realtime.session.decisions import decisions_path, read_decisions

SKEW_S = 3.0  # the scanner side's clock is this far ahead


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


@pytest.mark.timeout(180)
def test_a_scanner_clock_3s_ahead_is_measured_and_taken_out(kit, b2m_proc, endpoint, tmp_path):
    faketime = shutil.which("faketime")
    assert faketime, "Debian's faketime is missing: run ./setup.sh"
    out = tmp_path / "session"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", "none", "--no-dashboard", name="session")
    sess.wait_for("ready", timeout=60)
    n, tr = 12, 0.25
    img = nib.load(kit.nifti)  # the first 12 volumes of the real run, as a whole run (with its run end)
    short = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj.get_unscaled())[..., :n], img.affine, img.header), short)
    for run_id, prefix in (("skewed", (faketime, "-f", f"+{SKEW_S:g}s")), ("synced", ())):
        tx = b2m_proc("scanner", "replay", short, "--connect", endpoint, "--speed", "1", "--tr", tr,
                      "--run-id", run_id, "--quiet", name=f"replay-{run_id}", prefix=prefix)
        assert tx.wait(60) == 0, tx.stderr()  # every volume acked: recorded, and decoded before the session stops
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()

    rec = SessionRecord(str(out), sync=False)
    summary = json.loads((out / "summary.json").read_text())
    for run_id, skew in (("skewed", SKEW_S), ("synced", 0.0)):
        heads = [rec.runs[run_id].received[i].header for i in range(n)]
        raw_acq = np.array([h["t_acq"] for h in heads])
        ds = sorted(read_decisions(decisions_path(str(out), run_id)), key=lambda d: d["index"])
        assert len(ds) == n
        est = ds[-1]["clock_offset_s"]
        # the session's clock minus the sender's: -skew, plus the loopback's least latency (>= 0)
        assert -skew - 1e-3 <= est < -skew + 0.05, (run_id, est)
        assert summary["clock_offset_s"][run_id]["offset_s"] == pytest.approx(est)
        acquired = np.array([d["timestamps"]["acquired"] for d in ds])
        received = np.array([d["timestamps"]["received"] for d in ds])
        # on the session's clock: each volume was acquired just before it was received, never after
        np.testing.assert_allclose(acquired, raw_acq - skew, atol=0.05)
        assert np.all(received - acquired > -1e-3) and np.all(received - acquired < 0.5), received - acquired
    err = sess.stderr()
    assert "run skewed: the sender's clock is 3.0" in err and "ahead of this computer's" in err, err
    assert "run synced: the sender's clock" not in err
    rep = b2m_proc("session", "replay", out, name="session-replay")  # the record's own send times go with it
    assert rep.wait() == 0 and "identical" in rep.stdout(), rep.stderr() + rep.stdout()
    ex = b2m_proc("session", "export", out, "--bids", tmp_path / "bids", "--subject", "01", name="export")
    assert ex.wait() == 0, ex.stderr()
    func = tmp_path / "bids" / "sub-01" / "func"
    for number, skew in ((1, SKEW_S), (2, 0.0)):  # the correction the events were placed with, for the analyst
        side = json.loads((func / f"sub-01_task-neurofeedback_run-{number:02d}_bold.json").read_text())
        assert -skew - 1e-3 <= side["b2m_clock_offset_s"] < -skew + 0.05, side
    report = (out / "report.html").read_text()
    assert "skewed: the scanner side" in report and "s clock is 3.0" in report
