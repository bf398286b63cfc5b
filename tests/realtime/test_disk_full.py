"""The session's disk fills up mid-run: nothing the scanner sent is lost.

A real filesystem of 48 KiB (a tmpfs, mounted by the test, which needs root as CI has) holds the record of a
real ``b2m receive`` (or ``b2m session``) process; a real ``b2m scanner replay`` sends nitime's 40-volume run
(about 150 KiB). When the disk is full a volume is neither acked nor refused, so the scanner side keeps it
and sends it again; once the disk is made larger (``mount -o remount``) every volume is recorded, bit-exact.
A refusal would have been final: the sender drops a refused volume."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import nibabel as nib
import numpy as np
import pytest
from session_kit import kit_fixture

from protocols.session import SessionRecord


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:  # the only way to a real full disk here is a filesystem of our own
        pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip()}): run the tests as root, as CI does")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _grow(disk) -> None:
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)


def _wait_full(proc, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if "not acked, so the scanner side keeps it" in proc.stderr():
            return
        time.sleep(0.1)
    raise AssertionError("the disk never filled: " + proc.stderr()[-2000:])


def _check_record(path, nifti, run_id: str) -> None:
    run = SessionRecord(str(path), sync=False).runs[run_id]
    want = np.asanyarray(nib.load(nifti).dataobj.get_unscaled())
    assert run.complete and sorted(run.received) == list(range(want.shape[-1]))
    got = np.stack([np.asarray(run.volume(i)) for i in range(want.shape[-1])], -1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.timeout(180)
def test_a_full_disk_holds_volumes_back_and_loses_none(b2m_proc, endpoint, small_disk, fmri1_nii):
    out = small_disk / "record"
    rx = b2m_proc("receive", "--out", out, "--bind", endpoint, name="receive")
    rx.wait_for("ready", timeout=60)
    tx = b2m_proc("scanner", "replay", fmri1_nii, "--connect", endpoint, "--speed", "max", "--run-id", "full",
                  "--drain-timeout", 120, "--quiet", name="replay")
    _wait_full(rx)
    assert tx.p.poll() is None  # the scanner side still holds what was not acked
    time.sleep(1.5)  # a resend or two meets the full disk too
    _grow(small_disk)
    assert tx.wait(120) == 0, tx.stderr()
    res = json.loads(tx.stdout().strip().splitlines()[-1])
    assert res["all_acked"] and res["rejected"] == [] and res["resent"] > 0, res
    rx.kill(signal.SIGTERM)
    err = rx.stderr()
    assert "not acked, so the scanner side keeps it and sends it again; make room on that disk" in err, err
    assert err.count("not acked, so the scanner side keeps it") == 1, err  # once in 10 s, not at every resend
    _check_record(out, fmri1_nii, "full")
    assert not (out / "rejected.log").exists() or (out / "rejected.log").stat().st_size == 0


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


@pytest.mark.timeout(180)
def test_a_session_whose_disk_fills_goes_on_and_says_so(kit, b2m_proc, endpoint, small_disk, fmri1_nii,
                                                        tmp_path):
    import re

    from conftest import free_port
    from test_monitor import get, wait_until

    out = small_disk / "session"
    results = f"tcp://127.0.0.1:{free_port()}"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{tmp_path}/feedback.wav", "--results", results, "--no-dashboard",
                    name="session")
    sess.wait_for("ready", timeout=60)
    # the control room: the monitor shows what the session says needs the operator
    mon = b2m_proc("monitor", "--results", results, "--http", "127.0.0.1:0", name="monitor")
    mon.wait_for("monitor\thttp://", timeout=30)
    url = re.search(r"monitor\t(\S+)", mon.stderr()).group(1)
    time.sleep(0.5)  # PUB/SUB: the subscription must reach the session before the first result
    tx = b2m_proc("scanner", "replay", fmri1_nii, "--connect", endpoint, "--speed", "max", "--run-id", "full",
                  "--drain-timeout", 120, "--quiet", name="replay")
    _wait_full(sess)
    time.sleep(1.5)
    _grow(small_disk)
    assert tx.wait(120) == 0, tx.stderr()
    assert json.loads(tx.stdout().strip().splitlines()[-1])["rejected"] == []
    # the results decided after the disk had room again say what happened, for 30 s
    state = wait_until(lambda: (s := json.loads(get(url + "state.json")[1]))["counts"]["results"] == 40 and s)
    alerts = state["last"]["alerts"]
    assert any(a.startswith("disk: ") and "not recorded" in a and "make room" in a for a in alerts), state["last"]
    assert "disk: " in get(url + "panel")[1]
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()
    _check_record(out, fmri1_nii, "full")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["not_recorded"] > 0 and summary["counts"]["volumes"] == 40
    err = sess.stderr()
    assert "could not be recorded when they came (sent again by the scanner side" in err
    # the decisions the full disk refused were held and written once it had room: the record replays whole
    assert "decisions are held in memory until the disk takes them again" in err
    assert err.count("could not write the decision") == 1 and "Traceback" not in err, err
    rep = b2m_proc("session", "replay", out, name="session-replay")
    assert rep.wait() == 0 and "identical" in rep.stdout(), rep.stderr() + rep.stdout()


@pytest.mark.timeout(120)
def test_the_preflight_counts_the_hours_the_disk_has_room_for(kit, b2m_proc, small_disk, tmp_path):
    """``--check --out``: the free space in volumes of the model's grid (int16, recorded and exported) and
    hours at its TR, against ``shutil.disk_usage`` and the bundle's own grid; under an hour is a FAIL."""
    import shutil

    from realtime.decoder import Decoder

    manifest = Decoder(kit.bundle).manifest
    per_volume = 4 * int(np.prod(manifest["mask"]["shape"])) + 1024
    for out, ok in ((small_disk / "session", False), (tmp_path / "session", True)):
        chk = b2m_proc("session", "--check", "--model", kit.bundle, "--library", kit.library, "--bind", "none",
                       "--results", "none", "--audio", f"wav:{tmp_path}/check.wav", "--out", out, name="check")
        assert chk.wait() == (0 if ok else 1), chk.stderr() + chk.stdout()
        line = next(x for x in chk.stdout().splitlines() if "disk space" in x)
        volumes = int(line.split("room for ")[1].split(" volumes")[0].replace(",", ""))
        free = shutil.disk_usage(out.parent).free
        # the disk is shared: what was written since moves the figure a little (64 KiB, or 0.1 % of a big disk)
        want = free // per_volume
        assert abs(volumes - want) <= max(64 * 1024 // per_volume + 1, 1e-3 * want), (line, free)
        assert line.startswith("PASS" if ok else "FAIL"), line
        if not ok:
            assert "a session needs 1 h: make room, or give --out on another disk" in line


def test_a_folder_that_fails_otherwise_holds_messages_back_and_says_what_to_check(tmp_path, endpoint, caplog):
    """Not a full disk: the record's ``runs`` folder became a file (as a mistaken clean-up might leave it), so
    creating the run's folder fails (ENOTDIR). The run start is neither acked nor refused, the advice is to
    check the disk and the folder, not to make room; once the folder is back, the resent message is recorded."""
    import shutil as sh

    from protocols.wire import Ack, RunStart, decode, encode
    from realtime.receiver import Receiver

    out = tmp_path / "record"
    with caplog.at_level("ERROR", logger="b2m"), Receiver(str(out), endpoint) as rx:
        sh.rmtree(out / "runs", ignore_errors=True)
        (out / "runs").write_text("not a folder")
        start = encode(RunStart(run_id="r1", tr_s=2.0, n_volumes=3, shape=(4, 4, 2), dtype="<i2",
                                affine=np.eye(4)))
        assert rx.handle(start) == []  # no ack, no reject: the sender keeps it
        assert rx.stats.not_recorded == 1 and not rx.stats.disk_full and rx.stats.rejected == 0
        (msg,) = [r.getMessage() for r in caplog.records if "could not record" in r.getMessage()]
        assert "run_start r1/-" in msg and "check that disk and the folder's permissions" in msg
        assert "make room" not in msg and "Not a directory" in msg
        (out / "runs").unlink()
        (out / "runs").mkdir()
        (reply,) = rx.handle(start)  # the sender's resend
        assert isinstance(decode(reply), Ack) and decode(reply).status == "recorded"
