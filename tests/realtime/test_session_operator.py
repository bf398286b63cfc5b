"""The operator's hand on the sound of a live session: ``b2m control mute|unmute|level`` against a real ``b2m
session`` over a real ZeroMQ socket, with a recorded run replayed into it at TR pace.

The reference for what the participant heard is the same run through a second session without any command: a
WAV sink renders on the session clock, so the two WAVs hold the same samples except where the operator's gain
applies, which must be exactly 0 while muted, the raised-cosine ramp where it changes, and 10^(dB/20) after."""

from __future__ import annotations

import csv
import json
import signal
import time

import jack_fixture
import nibabel as nib
import numpy as np
import pytest
import soundfile as sf
import zmq
from conftest import assert_valid_bids, free_port
from session_kit import kit_fixture

from protocols.operator import OperatorCommand, decode_reply
from realtime.audio._mixer import gain_ramp
from realtime.session.operator import RAMP_S, read_operator, send_command

TR = 0.5
jackd = jack_fixture.jackd  # the shared JACK dummy server (a fixture)


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


@pytest.fixture(scope="module")
def run24(kit, tmp_path_factory) -> str:
    """The kit's run cut to its first 24 volumes (12 s at TR 0.5 s)."""
    img = nib.load(kit.nifti)
    path = tmp_path_factory.mktemp("run24") / "run24.nii"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj.get_unscaled())[..., :24], img.affine, img.header), path)
    return str(path)


def _session(b2m_proc, kit, out, endpoint, control, name):
    p = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                 "--audio", f"wav:{out}/feedback.wav", "--results", "none", "--no-dashboard", "--control", control,
                 "--runs", 1, name=name)
    p.wait_for("ready", timeout=60)
    return p


def _replay(b2m_proc, run, endpoint, name, *, tr: float = TR, speed="1"):
    """The run sent as the scanner would (at TR pace), or at once (``speed="max"``: a WAV sink's session clock
    makes the same decisions and the same audio either way)."""
    return b2m_proc("scanner", "replay", run, "--connect", endpoint, "--tr", tr, "--speed", speed, "--run-id",
                    "run-01", "--quiet", name=name)


def _control(b2m_proc, control, *args):
    p = b2m_proc("control", *args, "--connect", control, name="control-" + "-".join(map(str, args)))
    assert p.wait(30) == 0, p.stderr()
    return p.stdout().strip()


@pytest.mark.timeout(240)
def test_the_operator_mutes_and_sets_the_level_and_the_record_says_when(kit, run24, b2m_proc, tmp_path,
                                                                        bids_validator):
    control = f"tcp://127.0.0.1:{free_port()}"
    out, ref = tmp_path / "session", tmp_path / "reference"
    ep = f"tcp://127.0.0.1:{free_port()}"
    sess = _session(b2m_proc, kit, out, ep, control, "session")
    assert f"control\t{control}" in sess.stderr()
    tx = _replay(b2m_proc, run24, ep, "replay")
    time.sleep(4.0)
    assert _control(b2m_proc, control, "mute").startswith("MUTED")
    _control(b2m_proc, control, "note", "participant coughed; asked to keep still")  # the operator's log line
    time.sleep(0.5)
    assert _control(b2m_proc, control, "level", "-6").startswith("MUTED")  # set while muted: heard at the unmute
    time.sleep(1.5)
    state = json.loads(_control(b2m_proc, control, "unmute", "--json"))
    assert state["muted"] is False and state["level_db"] == -6.0 and state["commands"] == 4  # the note too
    assert state["level_dbfs"] == pytest.approx(-26.0)  # the session's default -20 dBFS, 6 dB down
    assert tx.wait(120) == 0, tx.stderr()
    assert sess.wait(120) == 0, sess.stderr()
    muted_s = read_operator(out)[3]["time_unix"] - read_operator(out)[0]["time_unix"]
    assert f"operator\t3 change(s); muted for {muted_s:.1f} s; level -6.0 dB at the end; 1 note(s)" in sess.stderr()

    # the same run with no command: the reference the operator's gain applies to
    ep2 = f"tcp://127.0.0.1:{free_port()}"
    sess2 = _session(b2m_proc, kit, ref, ep2, f"tcp://127.0.0.1:{free_port()}", "reference")
    tx2 = _replay(b2m_proc, run24, ep2, "replay-ref", speed="max")
    assert tx2.wait(120) == 0 and sess2.wait(120) == 0, sess2.stderr()

    kept = read_operator(out)
    (note,) = [c for c in kept if c["command"] == "note"]
    changes = [c for c in kept if c["command"] != "note"]
    assert [c["command"] for c in changes] == ["mute", "level", "unmute"]
    assert [c["source"] for c in changes] == ["cli"] * 3 and all(c["clock"] == "session" for c in changes)
    assert note["command"] == "note" and note["value"] == "participant coughed; asked to keep still"
    assert (note["muted"], note["level_db"], note["clock"]) == (True, 0.0, "wall")  # the sound as it was then
    got, sr = sf.read(out / "feedback.wav", dtype="float32")
    want, sr2 = sf.read(ref / "feedback.wav", dtype="float32")
    assert sr == sr2 and got.shape == want.shape
    f_mute, f_level, f_unmute = (int(round(c["at_s"] * sr)) for c in changes)
    ramp = int(round(RAMP_S * sr))
    assert f_mute + ramp < f_level <= f_unmute  # the commands landed in order, on decisions' session times
    shape = gain_ramp(ramp)[:, None]
    np.testing.assert_array_equal(got[:f_mute], want[:f_mute])
    np.testing.assert_allclose(got[f_mute:f_mute + ramp], want[f_mute:f_mute + ramp] * (1 - shape), atol=1e-7)
    assert np.all(got[f_mute + ramp:f_unmute] == 0.0) and np.any(want[f_mute + ramp:f_unmute] != 0.0)
    g = 10 ** (-6 / 20)
    np.testing.assert_allclose(got[f_unmute:f_unmute + ramp], want[f_unmute:f_unmute + ramp] * (g * shape),
                               atol=1e-7)
    np.testing.assert_allclose(got[f_unmute + ramp:], want[f_unmute + ramp:] * g, atol=1e-7)
    assert np.abs(want[f_unmute + ramp:]).max() > 0.01  # music was playing there

    page = (out / "report.html").read_text()
    assert "hand on the sound (SESSION/operator.tsv)" in page and "participant coughed; asked to keep still" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["operator"]["muted"] is False and len(summary["operator"]["changes"]) == 4  # 3 and the note
    # music heard vs decoded leaves out the TRs decided while muted: their clip played to no one
    from music.library import Library
    from realtime.session.decisions import decisions_path, read_decisions

    lib = Library(kit.library)
    ds = [d for d in read_decisions(decisions_path(str(out), "run-01"))
          if d.get("embedding") is not None and d["clip"] is not None]
    muted = [changes[0]["time_unix"] <= d["timestamps"]["decided"] < changes[2]["time_unix"] for d in ds]
    heard = [float(np.asarray(d["embedding"], np.float32) @ np.asarray(lib.embeddings, np.float32)[lib.index_of(
        d["clip"])]) for d, m in zip(ds, muted) if not m]
    match = summary["music_match"]["all"]
    assert match["unheard"] == sum(muted) > 0 and match["n"] == len(heard)
    assert match["mean_cosine"] == pytest.approx(np.mean(heard), abs=1e-6)
    rep = b2m_proc("session", "replay", out, name="session-replay")  # the operator changes no decision
    assert rep.wait() == 0 and "identical" in rep.stdout(), rep.stderr() + rep.stdout()

    exp = b2m_proc("session", "export", out, "--bids", tmp_path / "bids", "--subject", "01", name="export-bids")
    assert exp.wait() == 0, exp.stderr()
    with open(tmp_path / "bids/sub-01/func/sub-01_task-neurofeedback_run-01_events.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    offset = 0.0  # the session's first run starts at session time 0
    (mute,) = [r for r in rows if r["trial_type"] == "operator_mute"]
    assert float(mute["onset"]) == pytest.approx(changes[0]["at_s"] - offset, abs=1e-4)
    assert float(mute["duration"]) == pytest.approx(changes[2]["at_s"] - changes[0]["at_s"], abs=1e-4)
    (level,) = [r for r in rows if r["trial_type"] == "operator_level"]
    assert level["level_db"] == "-6" and float(level["onset"]) == pytest.approx(changes[1]["at_s"], abs=1e-4)
    assert float(level["onset"]) + float(level["duration"]) == pytest.approx(24 * TR, abs=1e-3)  # to the run's end
    with open(tmp_path / "bids/sub-01/func/sub-01_task-neurofeedback_run-01_bold.json") as f:
        wall_start = json.load(f)["b2m_run_start_unix"]
    (noted,) = [r for r in rows if r["trial_type"] == "operator_note"]
    assert noted["note"] == note["value"] and float(noted["duration"]) == 0.0
    assert float(noted["onset"]) == pytest.approx(note["at_s"] - wall_start, abs=1e-3)
    assert all(r["note"] == "n/a" for r in rows if r["trial_type"] != "operator_note")
    assert all(r["level_db"] == "n/a" for r in rows if r["trial_type"] != "operator_level")
    # the derivative says, TR by TR, whether the clip played to anyone
    with open(tmp_path / "bids/derivatives/b2m/sub-01/func/"
              "sub-01_task-neurofeedback_run-01_desc-decoded_timeseries.tsv") as f:
        series = list(csv.DictReader(f, delimiter="\t"))
    every = read_decisions(decisions_path(str(out), "run-01"))
    want = ["n/a" if d["clip"] is None else str(not changes[0]["time_unix"] <= d["timestamps"]["decided"]
                                                 < changes[2]["time_unix"]) for d in every]
    assert [r["heard"] for r in series] == want and "False" in want
    assert_valid_bids(bids_validator, tmp_path / "bids")


@pytest.mark.timeout(180)
def test_a_session_continued_after_a_crash_stays_muted_and_bad_commands_are_refused(kit, run24, b2m_proc, tmp_path):
    control = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "session"
    ep = f"tcp://127.0.0.1:{free_port()}"
    sess = _session(b2m_proc, kit, out, ep, control, "session")
    # bad input on the control socket: an error naming the field, and the session serves on
    ctx = zmq.Context.instance()
    for frames, field in (([b"\xc1garbage"], "frame"), ([b"a", b"b"], "frames")):
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(control)
        s.send_multipart(frames)
        assert s.poll(5000)
        reply = decode_reply(s.recv())
        s.close(0)
        assert reply["ok"] is False and reply["error"].startswith(field + ":"), reply
    bad = b2m_proc("control", "level", "5", "--connect", control, name="control-bad-level")
    assert bad.wait(30) == 2 and "value: level must be between -40 and 0 dB" in bad.stderr()
    wav = b2m_proc("control", "soundcheck", "--connect", control, name="control-soundcheck-wav")
    assert wav.wait(30) == 1 and "a sound check needs a sound device" in wav.stderr()
    assert send_command(control, OperatorCommand("mute", source="test"))["state"]["muted"] is True
    sess.kill(signal.SIGKILL)
    sess.wait(10)

    sess = _session(b2m_proc, kit, out, ep, control, "session-again")
    assert "continuing with the operator's last setting: muted" in sess.stderr()
    state = send_command(control, OperatorCommand("status"))["state"]
    assert state["muted"] is True and state["source"] == "test" and state["commands"] == 1
    tx = _replay(b2m_proc, run24, ep, "replay", speed="max")
    assert tx.wait(120) == 0 and sess.wait(120) == 0, sess.stderr()
    heard, _ = sf.read(out / "feedback.wav", dtype="float32")
    assert heard.size and np.all(heard == 0.0)  # the participant heard nothing from the restarted session
    assert json.loads((out / "summary.json").read_text())["operator"]["muted"] is True

    nobody = b2m_proc("control", "status", "--connect", f"tcp://127.0.0.1:{free_port()}", "--timeout", 0.5,
                      name="control-nobody")
    assert nobody.wait(30) == 3 and "no session answered" in nobody.stderr()


def test_the_preflight_finds_the_default_control_port_taken_and_says_what_the_session_will_do():
    from realtime.session.preflight import _bind_control

    ctx = zmq.Context.instance()
    held = ctx.socket(zmq.REP)
    held.setsockopt(zmq.LINGER, 0)
    port = held.bind_to_random_port("tcp://127.0.0.1")
    try:
        taken = f"tcp://127.0.0.1:{port}"
        with pytest.raises(ValueError, match=f"--control {taken}: cannot bind there"):
            _bind_control(taken, False)  # an endpoint the site chose: taken is a failure
        said, _ = _bind_control(taken, False, fallback=True)  # the default: the session moves to a free port
        assert said.startswith(f"{taken} is taken (another session?)") and "tcp://127.0.0.1:" in said
    finally:
        held.close(0)


@pytest.mark.timeout(120)
def test_the_consoles_keys_mute_and_set_the_level_and_the_terminal_is_given_back(kit, b2m_proc, tmp_path):
    import os
    import termios

    master, slave = os.openpty()  # a real terminal for the session's standard input
    before = termios.tcgetattr(slave)
    control = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "session"
    try:
        sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind",
                        f"tcp://127.0.0.1:{free_port()}", "--audio", f"wav:{out}/feedback.wav", "--results", "none",
                        "--control", control, name="session", stdin=slave)
        sess.wait_for("ready", timeout=60)

        def pressed(keys: bytes, want) -> dict:
            os.write(master, keys)
            end = time.monotonic() + 10
            while time.monotonic() < end:
                state = send_command(control, OperatorCommand("status"))["state"]
                if want(state):
                    return state
                time.sleep(0.05)
            raise AssertionError(f"{keys!r} did not change the sound: {state}\n{sess.stderr()}")

        assert pressed(b"m", lambda s: s["muted"])["source"] == "keyboard"
        assert pressed(b"--", lambda s: s["level_db"] == -6.0)["muted"] is True
        assert pressed(b"x+", lambda s: s["level_db"] == -3.0)["commands"] == 4  # other keys do nothing
        assert pressed(b"m", lambda s: not s["muted"])["commands"] == 5
        assert termios.tcgetattr(slave)[3] & termios.ICANON == 0  # cbreak while the session runs
        sess.kill(signal.SIGTERM)
        assert sess.p.returncode == 0, sess.stderr()
        assert termios.tcgetattr(slave) == before  # the terminal as the session found it
        changes = read_operator(out)
        assert [(c["command"], c["value"]) for c in changes] == [("mute", None), ("level", -3.0), ("level", -6.0),
                                                                  ("level", -3.0), ("unmute", None)]
        assert {c["source"] for c in changes} == {"keyboard"}
    finally:
        os.close(master)
        os.close(slave)


def _start_jackd(name: str, log_path):
    import os
    import shutil
    import subprocess

    log = open(log_path, "a")
    p = subprocess.Popen([shutil.which("jackd"), "-n", name, "-d", "dummy", "-r", "48000", "-p", "256"],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, JACK_NO_AUDIO_RESERVATION="1"))
    log.close()
    up = subprocess.run(["jack_wait", "-s", name, "-w", "-t", "20"], capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr + open(log_path).read()
    return p


@pytest.mark.audio
@pytest.mark.timeout(240)
def test_a_sound_device_that_stops_is_an_alert_then_reopened_and_the_outage_is_an_event(kit, b2m_proc, tmp_path,
                                                                                       monkeypatch, bids_validator):
    """A JACK server of the test's own (the shared one serves other tests), killed with SIGKILL mid-run: the
    stream's callbacks stop while every schedule call still succeeds, so only the watch can tell. The server
    is then started again under its name, as a site would: the session opens its device again by itself."""
    import subprocess

    from protocols.wire import decode
    from realtime.session.decisions import decisions_path, read_decisions

    # One fixed name: JACK's shared registry holds 8 servers, and the entry of a server killed with SIGKILL is
    # only reclaimed by a server of the same name (the restart below, or this test's next run)
    name = "b2m-test-stopped"
    jackd = _start_jackd(name, tmp_path / "jackd.log")
    try:
        monkeypatch.setenv("JACK_DEFAULT_SERVER", name)  # the session (a child process) plays on this server
        results, ep, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", tmp_path / "session"
        sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", ep,
                        "--audio", "system", "--results", results, "--no-dashboard", "--control", "none",
                        "--runs", 1, name="session")
        sess.wait_for("ready", timeout=60)
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(results)
        time.sleep(0.3)  # the subscription reaches the publisher
        tx = _replay(b2m_proc, kit.nifti, ep, "replay", tr=0.25)  # 40 volumes at TR 0.25 s
        got, killed_at, back_at = [], None, None
        end = time.monotonic() + 90
        while time.monotonic() < end and (not got or got[-1][1].index < 39):
            if sub.poll(500):
                got.append((time.monotonic(), decode(sub.recv_multipart())))
                i = got[-1][1].index
                if killed_at is None and i == 4:
                    jackd.send_signal(signal.SIGKILL)  # the server dies under the session's stream
                    jackd.wait(10)
                    killed_at = time.time()
                elif back_at is None and i == 16:
                    back_at = time.time()
                    jackd = _start_jackd(name, tmp_path / "jackd.log")  # the site starts it again
        assert tx.wait(60) == 0, tx.stderr()
        assert [r.index for _, r in got] == list(range(40)) and back_at is not None
        stopped = [r for t, r in got if killed_at + 2.0 < time.time() - (time.monotonic() - t) < back_at]
        assert len(stopped) >= 3 and all(any(a.startswith("audio: the output stream stopped") for a in r.alerts)
                                         for r in stopped), [r.alerts for r in stopped]
        assert all(r.action != "error" and r.embedding is not None for r in stopped)  # decoding went on
        assert not any(a.startswith("audio:") for a in got[-1][1].alerts), got[-1][1].alerts  # heard again
        assert sess.wait(60) == 0, sess.stderr()
        assert "audio: reopened after" in sess.stderr()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["counts"]["decoded"] == 40 - 2 and summary["counts"]["errors"] == 0  # lag 2 TRs
        (outage,) = summary["audio_outages"]
        assert outage["why"].startswith("the output stream stopped")
        assert killed_at - 0.5 < outage["start_unix"] < killed_at + 0.1  # the last callback before the kill
        assert back_at < outage["end_unix"] < back_at + 15
        # the decision that took the reopened device started what should be heard on it, on its clock
        ds = read_decisions(decisions_path(str(out), "run-01"))
        after = [d for d in ds if d["timestamps"]["audio_scheduled"] >= outage["end_unix"]]
        assert after and after[0]["audio_frame"] is not None and after[0]["audio_lead_s"] is not None
        assert "audio\tthe output stream stopped" in sess.stderr()
        assert "Sound device down at" in (out / "report.html").read_text()

        exp = b2m_proc("session", "export", out, "--bids", tmp_path / "bids", "--subject", "01",
                       name="export-bids")
        assert exp.wait() == 0, exp.stderr()
        with open(tmp_path / "bids/sub-01/func/sub-01_task-neurofeedback_run-01_bold.json") as f:
            start = json.load(f)["b2m_run_start_unix"]
        with open(tmp_path / "bids/sub-01/func/sub-01_task-neurofeedback_run-01_events.tsv") as f:
            (row,) = [r for r in csv.DictReader(f, delimiter="\t") if r["trial_type"] == "audio_outage"]
        assert float(row["onset"]) == pytest.approx(outage["start_unix"] - start, abs=1e-3)
        assert float(row["duration"]) == pytest.approx(outage["end_unix"] - outage["start_unix"], abs=1e-3)
        assert_valid_bids(bids_validator, tmp_path / "bids")
    finally:
        if jackd.poll() is None:  # stopped as a site would, so it leaves the registry
            jackd.terminate()
            try:
                jackd.wait(10)
            except subprocess.TimeoutExpired:
                jackd.kill()


@pytest.mark.slow  # 22 s; its parts run fast in test_session_sound (a device, both modes) and the first-pulse test
@pytest.mark.audio
@pytest.mark.timeout(180)
def test_the_sound_check_plays_before_the_run_and_ends_when_it_begins(kit, run24, b2m_proc, tmp_path, jackd):
    """On the shared JACK dummy server: the operator plays the neutral clip before the scan to set the level with
    the participant; the level's effect and the exact gain are tested on WAVs above and on the mixer; here what
    counts is that the device sends out music, then silence, and that the run takes over."""
    control, ep, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", tmp_path / "session"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", ep,
                    "--audio", "system", "--results", "none", "--no-dashboard", "--control", control, "--runs", 1,
                    name="session")
    sess.wait_for("ready", timeout=60)

    def status() -> dict:  # over the same socket as b2m control, without a process per question
        return send_command(control, OperatorCommand("status"))["state"]

    assert status()["soundcheck"] is False and status()["output_dbfs"] == -120.0  # nothing plays yet: silence
    on = json.loads(_control(b2m_proc, control, "soundcheck", "--json"))
    assert on["soundcheck"] is True
    time.sleep(1.5)
    playing = status()
    assert playing["soundcheck"] is True and playing["output_dbfs"] > -40.0, playing  # music goes out
    assert send_command(control, OperatorCommand("level", -12.0, "test"))["state"]["level_db"] == -12.0
    off = json.loads(_control(b2m_proc, control, "soundcheck", "off", "--json"))
    assert off["soundcheck"] is False
    time.sleep(1.5)
    assert status()["output_dbfs"] == -120.0  # stopped
    assert send_command(control, OperatorCommand("soundcheck", 1, "test"))["state"]["soundcheck"]  # the run will end it
    tx = _replay(b2m_proc, run24, ep, "replay")
    time.sleep(4.0)
    during = b2m_proc("control", "soundcheck", "--connect", control, name="control-soundcheck-during")
    assert during.wait(30) == 1 and "music is playing already" in during.stderr()
    state = status()
    assert state["soundcheck"] is False and state["output_dbfs"] > -60.0 and state["level_db"] == -12.0
    assert tx.wait(60) == 0 and sess.wait(60) == 0, sess.stderr()
    assert sess.stderr().count("sound check: the neutral clip stops") == 2
    checks = [(c["command"], c["value"]) for c in read_operator(out) if c["command"] == "soundcheck"]
    assert checks == [("soundcheck", 1.0), ("soundcheck", 0.0), ("soundcheck", 1.0)]
    assert [c["source"] for c in read_operator(out)] == ["cli", "test", "cli", "test"]


@pytest.mark.audio
@pytest.mark.timeout(120)
def test_the_scanners_first_pulse_ends_the_sound_check(kit, b2m_proc, tmp_path, jackd, serial_line):
    """With the trigger box on a real serial line: the scanner starts (a '5'), and the sound check stops then,
    not a TR and a reconstruction later when the first volume comes (no volume is sent here at all)."""
    import os

    box, port = serial_line
    control, out = f"tcp://127.0.0.1:{free_port()}", tmp_path / "session"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind",
                    f"tcp://127.0.0.1:{free_port()}", "--audio", "system", "--results", "none", "--no-dashboard",
                    "--control", control, "--trigger", port, name="session")
    sess.wait_for("ready", timeout=60)
    assert send_command(control, OperatorCommand("soundcheck", 1))["state"]["soundcheck"] is True
    time.sleep(0.5)
    fd = os.open(box, os.O_WRONLY | os.O_NOCTTY)
    try:
        os.write(fd, b"5")
        pulsed = time.monotonic()
        while send_command(control, OperatorCommand("status"))["state"]["soundcheck"]:
            assert time.monotonic() - pulsed < 3.0, sess.stderr()
            time.sleep(0.02)
        took = time.monotonic() - pulsed
    finally:
        os.close(fd)
    assert took < 1.0, took  # the engine's thread wakes at least every 200 ms between volumes
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()
    assert "sound check: the neutral clip stops" in sess.stderr()
    assert json.loads((out / "summary.json").read_text())["counts"]["volumes"] == 0
