"""The scanner's trigger read by a live session, as at a site: a serial line (a real pseudo-terminal pair made by
``socat``, the null modem of serial-port testing), the scanner's export played by ``b2m scanner export
--trigger-out`` (a '5' as each volume's acquisition begins, its file a TR plus a reconstruction delay later),
``b2m scanner watch`` sending the files and ``b2m session --trigger`` reading the other end.

The reference is when the export process wrote each pulse (its stdout): the session must place the run there,
where the folder's file stamps place it a reconstruction delay late."""

from __future__ import annotations

import json
import os
import signal
import time

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_valid_bids
from session_kit import kit_fixture

from realtime.session.decisions import decisions_path, read_decisions

RECON_S = 0.4  # the reconstruction: from the end of a volume's acquisition to its file


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


def _short_run(kit, tmp_path, n: int) -> str:
    img = nib.load(kit.nifti)
    short = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj.get_unscaled())[..., :n], img.affine, img.header), short)
    return str(short)


@pytest.mark.timeout(180)
def test_a_session_places_the_run_from_the_scanners_trigger(kit, b2m_proc, endpoint, tmp_path, serial_line,
                                                            bids_validator):
    box, port = serial_line
    n, tr = 12, 0.5
    out, folder = tmp_path / "session", tmp_path / "export"
    folder.mkdir()
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", "none", "--no-dashboard", "--trigger", port,
                    "--response-keys", "12", name="session")
    sess.wait_for("ready", timeout=60)
    assert f"trigger\t{port}\tkey '5'" in sess.stderr()
    tx = b2m_proc("scanner", "watch", folder, "--vendor", "nifti", "--connect", endpoint, "--volumes", n,
                  "--run-id", "trig", "--quiet", name="watch")
    tx.wait_for("watching")
    ex = b2m_proc("scanner", "export", _short_run(kit, tmp_path, n), folder, "--tr", tr, "--trigger-out", box,
                  "--recon-delay", RECON_S, "--quiet", name="export")
    # the participant presses button 2 a few volumes in, on the same serial line
    fd = os.open(box, os.O_WRONLY | os.O_NOCTTY)
    try:
        time.sleep(2.2)
        pressed = time.time()
        os.write(fd, b"2")
    finally:
        os.close(fd)
    assert ex.wait(60) == 0, ex.stderr()
    written = np.array([float(t) for t in ex.stdout().splitlines()[-1].split("\t")[1:]])
    assert written.size == n
    assert tx.wait(60) == 0, tx.stderr()
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()

    trig = json.loads((out / "summary.json").read_text())["triggers"]
    read = np.loadtxt(out / "triggers.tsv")
    assert trig["pulses"] == n and read.size == n and trig["other_bytes"] == 0
    # each pulse read on the session's clock just after the export wrote it (through the pty pair)
    assert np.all(read - written >= -1e-3) and np.median(read - written) < 0.01, read - written
    m = trig["runs"]["trig"]
    assert m["matched"] == n and m["n_missing"] == 0 and m["note"] is None, m
    assert m["start_unix"] == pytest.approx(read[0]) and m["tr_s"] == pytest.approx(tr, abs=0.01)
    # the image came the reconstruction delay after its acquisition ended, plus the watch and the link
    assert RECON_S <= m["delay_ms"]["p50"] / 1e3 < RECON_S + 0.3, m["delay_ms"]
    # the folder's stamps (each file's writing) place the same run a reconstruction delay later
    ds = read_decisions(decisions_path(str(out), "trig"))
    from_stamps = min(d["timestamps"]["acquired"] - (d["index"] + 1) * tr for d in ds)
    assert RECON_S - 0.05 < from_stamps - written[0] < RECON_S + 0.2, from_stamps - written[0]
    assert f"trigger\ttrig\t12 pulses, every {m['tr_s']:.4f} s" in sess.stderr()  # the figure of record
    assert "Scanner trigger" in (out / "report.html").read_text()

    exp = b2m_proc("session", "export", out, "--bids", tmp_path / "bids", "--subject", "01", name="export-bids")
    assert exp.wait() == 0, exp.stderr()
    side = json.loads((tmp_path / "bids/sub-01/func/sub-01_task-neurofeedback_run-01_bold.json").read_text())
    assert side["b2m_run_start_from"] == "scanner trigger"
    assert side["b2m_run_start_unix"] == pytest.approx(written[0], abs=0.01)
    assert side["b2m_trigger"]["matched"] == n
    import csv

    with open(tmp_path / "bids/sub-01/func/sub-01_task-neurofeedback_run-01_events.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    (resp,) = [r for r in rows if r["trial_type"] == "response"]
    assert resp["response"] == "2" and float(resp["onset"]) == pytest.approx(pressed - written[0], abs=0.02)
    assert all(r["response"] == "n/a" for r in rows if r["trial_type"] != "response")
    assert "responses\t1 press (2: 1)" in sess.stderr()
    # the clips heard go with the dataset, where BIDS has stim_file point: byte for byte the library's
    heard = [r for r in rows if r["trial_type"] == "music"]
    assert heard and all(r["stim_file"].startswith(os.path.basename(kit.library) + "/") for r in heard)
    from music.library import Library

    lib = Library(kit.library)
    for r in heard:
        clip = lib.clips[lib.index_of(r["clip"])]
        with open(tmp_path / "bids" / "stimuli" / r["stim_file"], "rb") as a, open(lib.audio_path(clip), "rb") as b:
            assert a.read() == b.read()
    assert_valid_bids(bids_validator, tmp_path / "bids")  # the BIDS validator finds no error
    rep = b2m_proc("session", "replay", out, name="session-replay")  # the trigger changes no decision
    assert rep.wait() == 0 and "identical" in rep.stdout(), rep.stderr() + rep.stdout()


@pytest.mark.timeout(120)
def test_the_preflight_listens_to_the_trigger(kit, b2m_proc, tmp_path, serial_line):
    box, port = serial_line
    chk = b2m_proc("session", "--check", "--model", kit.bundle, "--library", kit.library, "--bind", "none",
                   "--results", "none", "--audio", f"wav:{tmp_path}/check.wav", "--trigger", port, name="check")
    fd = os.open(box, os.O_WRONLY | os.O_NOCTTY)
    try:  # the scanner running: a pulse every 0.2 s until the check has listened
        while chk.p.poll() is None:
            os.write(fd, b"5")
            time.sleep(0.2)
    finally:
        os.close(fd)
    assert chk.wait() == 0, chk.stderr() + chk.stdout()
    line = next(x for x in chk.stdout().splitlines() if "scanner trigger" in x)
    assert line.startswith("PASS") and f"{port} opened" in line and "every 0.2" in line, line


def test_a_missing_trigger_port_stops_the_session_before_it_starts(kit, b2m_proc, endpoint, tmp_path):
    out = tmp_path / "session"
    p = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                 "--audio", f"wav:{out}/feedback.wav", "--results", "none", "--no-dashboard",
                 "--trigger", "/dev/ttyUSB97", name="session")
    assert p.wait(60) == 2
    assert "--trigger /dev/ttyUSB97: no such device or file; is the trigger box plugged in?" in p.stderr()


@pytest.mark.timeout(180)
def test_a_replay_plays_the_trigger_too(kit, b2m_proc, endpoint, tmp_path, serial_line):
    """``b2m scanner replay --trigger-out``: the rehearsal of a session with its trigger. Each volume is sent a
    TR plus the reconstruction delay after its pulse, stamped as acquired at the end of its acquisition; the
    session finds the run's start at the first pulse written, and the same start from the stamps."""
    box, port = serial_line
    n, tr = 10, 0.5
    out = tmp_path / "session"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", "none", "--no-dashboard", "--trigger", port,
                    name="session")
    sess.wait_for("ready", timeout=60)
    tx = b2m_proc("scanner", "replay", _short_run(kit, tmp_path, n), "--connect", endpoint, "--tr", tr,
                  "--run-id", "rehearsal", "--trigger-out", box, "--recon-delay", RECON_S, "--quiet", name="replay")
    assert tx.wait(60) == 0, tx.stderr()
    written = np.array(json.loads(tx.stdout().strip().splitlines()[-1])["pulses_unix"])
    assert written.size == n
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()
    m = json.loads((out / "summary.json").read_text())["triggers"]["runs"]["rehearsal"]
    assert m["matched"] == n and m["start_unix"] - written[0] == pytest.approx(0.0, abs=0.01), m
    assert RECON_S <= m["delay_ms"]["p50"] / 1e3 < RECON_S + 0.2, m["delay_ms"]
    ds = read_decisions(decisions_path(str(out), "rehearsal"))
    from_stamps = min(d["timestamps"]["acquired"] - (d["index"] + 1) * tr for d in ds)
    assert from_stamps - written[0] == pytest.approx(0.0, abs=0.01)  # a replay stamps the acquisition's end
    bad = b2m_proc("scanner", "replay", _short_run(kit, tmp_path, n), "--connect", endpoint, "--speed", "2",
                   "--trigger-out", box, "--quiet", name="replay-fast")
    assert bad.wait(30) == 2 and "--trigger-out plays the scanner's pulses in real time" in bad.stderr()
