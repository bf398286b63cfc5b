"""``b2m session`` as a real process: replay -> session over loopback, results out, Pyneal clients, replay check."""

from __future__ import annotations

import html
import json
import signal
import socket
import time

import numpy as np
import pytest
import soundfile as sf
import zmq
from session_kit import kit_fixture

from protocols.wire import Result, decode


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


def pyneal_ask(host: str, port: int, index) -> dict:
    """As Pyneal's own Python client asks: the index as 4 digits, no newline; a header line with the reply's
    length, then that many bytes of JSON."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"{index:04d}".encode())
        header = b""
        while not header.endswith(b"\n"):
            header += s.recv(1)
        body = b""
        while len(body) < int(header):
            body += s.recv(int(header) - len(body))
    return json.loads(body)


def field(text: str, key: str) -> str:
    return next(line.split("\t", 1)[1].strip() for line in text.splitlines() if line.startswith(key + "\t"))


def test_session_end_to_end_results_pyneal_and_replay(kit, b2m_proc, endpoint, tmp_path):
    out = tmp_path / "session"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", "tcp://127.0.0.1:*", "--pyneal-port", "0",
                    "--no-dashboard", "--min-dwell", "5", "--margin", "0", "--smooth-trs", "1", name="session")
    sess.wait_for("ready", timeout=60)
    err = sess.stderr()
    results_ep, (host, port) = field(err, "results"), field(err, "pyneal").rsplit(":", 1)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:  # a failure must not leave the context to the garbage collector, whose term() would wait on it
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(results_ep)
        time.sleep(0.5)  # PUB/SUB: let the subscription reach the publisher before the first result
        assert pyneal_ask(host, int(port), 0) == {"foundResults": False}  # nothing processed yet
        tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "max", "--run-id",
                      "run-01", "--quiet", name="replay")
        assert tx.wait() == 0, tx.stderr()
        got: list[Result] = []
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        end = time.monotonic() + 60
        while len(got) < 40 and time.monotonic() < end:
            if poller.poll(1000):
                got.append(decode(sub.recv_multipart()))
    finally:
        sub.close(0)
        ctx.term()
    assert [r.index for r in got] == list(range(40)), sess.stderr()
    assert all(set(r.latency_ms) >= {"preprocessed", "decoded", "decided", "audio_scheduled", "total"}
               for r in got[2:])
    assert all(r.timestamps["received"] <= r.timestamps["preprocessed"] <= r.timestamps["decoded"]
               <= r.timestamps["decided"] <= r.timestamps["audio_scheduled"] for r in got[2:])
    assert got[-1].embedding is not None and got[-1].embedding.shape == (8,)
    past = pyneal_ask(host, int(port), 30)
    assert past["foundResults"] is True and past["clip"] == got[30].clip and past["action"] == got[30].action
    assert got[30].dvars_pct > 0 and past["dvars"] == pytest.approx(got[30].dvars_pct)  # QC reaches the results
    assert got[30].tsnr > 0 and past["tsnr"] == pytest.approx(got[30].tsnr)
    assert past["tsnrTraining"] is None  # the kit's bundle has no Training runs' figure
    np.testing.assert_allclose(past["embedding"], got[30].embedding, atol=1e-6)
    assert pyneal_ask(host, int(port), 400) == {"foundResults": False}  # a future volume
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["volumes"] == 40 and summary["counts"]["decoded"] == 38
    assert summary["provenance"]["command"][:2] == ["b2m", "session"]  # which code ran it
    assert summary["model_provenance"] is None  # the kit's bundle was not made by `b2m train`
    page = html.unescape((out / "report.html").read_text())
    # music, latency, DVARS and tSNR (no motion correction: no FD)
    assert page.count("data:image/png;base64,") == 4 and "Latency per TR" in page and "Image change (DVARS)" in page
    # the run's tSNR at its last volume; the kit's bundle gives no Training runs' figure
    assert summary["tsnr"] == {"runs": {"run-01": pytest.approx(got[-1].tsnr)}, "training": None,
                              "training_curve": None}
    said = f"run-01 {got[-1].tsnr:.0f} (no Training runs' figure in the model's bundle)"
    assert f"<th>Temporal SNR of the decoder's voxels</th><td>{said}</td>" in page and "<h2>Temporal SNR</h2>" in page
    assert f"<th>Software of this session</th><td>b2m {summary['provenance']['b2m']}" in page
    assert "<th>The model was trained by</th><td>not recorded" in page
    from realtime.clocks import describe_host_clock, host_clock_sync

    now = host_clock_sync()  # whether NTP keeps this clock: the same as at the session's end, a moment ago
    assert (summary["host_clock"] is None) == (now is None)
    if now is not None:
        assert summary["host_clock"]["synchronised"] == now["synchronised"]
    assert f"<th>This computer's clock</th><td>{describe_host_clock(summary['host_clock'])[0]}</td>" in page
    assert f"tsnr\t{said}\n" in sess.stderr()
    assert summary["counts"]["switches"] == sum(r.action == "switch" for r in got) >= 1
    info = sf.info(str(out / "feedback.wav"))
    assert info.samplerate == 48000 and info.frames >= 40 * 1.35 * 48000  # the whole run, on the scanner's clock
    # the model the session ran with, named again (a site's config file does): the same replay
    rep = b2m_proc("session", "replay", out, "--model", kit.bundle, name="session-replay")
    assert rep.wait() == 0, rep.stderr() + rep.stdout()
    assert "identical" in rep.stdout() and rep.stdout().startswith("{")  # its progress went to stderr
    report = json.loads(rep.stdout()[: rep.stdout().rindex("}") + 1])
    assert report["n_compared"] == 40 and report["embedding_max_abs_diff"] == 0.0
    # another policy without --out would not be what the session decided: said, not ignored
    other = b2m_proc("session", "replay", out, "--min-dwell", "99", name="session-replay-other")
    assert other.wait() == 2 and other.stdout() == ""
    assert "--min-dwell would change what the session decided" in other.stderr()
    assert f"b2m session replay {out} --out NEW --min-dwell" in other.stderr()


def test_session_missing_audio_device_is_a_clear_error(kit, b2m_proc, endpoint, tmp_path):
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", tmp_path / "s",
                    "--bind", endpoint, "--audio", "no-such-sound-card", "--no-dashboard", name="session")
    assert sess.wait(60) == 2
    err = sess.stderr()
    assert "no-such-sound-card" in err and "wav:PATH" in err


def test_session_needs_model_library_out(b2m_proc):
    p = b2m_proc("session", "--out", "x", name="session")
    assert p.wait(60) == 2
    assert "--model" in p.stderr() and "--library" in p.stderr()


@pytest.mark.parametrize("mode", ["retrieval", "generation"])
def test_session_sigkill_midrun_restart_continues_and_replays_identically(kit, b2m_proc, endpoint, tmp_path, mode):
    from session_kit import make_atlas

    from realtime.session import read_decisions
    from realtime.session.decisions import decisions_path

    out = tmp_path / "session"
    library = kit.library if mode == "retrieval" else make_atlas(str(tmp_path))
    args = ("session", "--model", kit.bundle, "--library", library, "--out", out, "--bind", endpoint,
            "--audio", f"wav:{tmp_path}/fb.wav", "--results", "none", "--no-dashboard", "--runs", "1",
            "--min-dwell", "5", "--margin", "0", "--smooth-trs", "1", "--mode", mode)
    s1 = b2m_proc(*args, name="session1")
    s1.wait_for("ready", timeout=60)
    tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "8", "--run-id", "run-01",
                  "--resend-timeout", "0.5", "--quiet", name="replay")
    log = decisions_path(out, "run-01")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if len(read_decisions(log)) >= 15:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    s1.kill(signal.SIGKILL)
    n_before = len(read_decisions(log))
    assert 15 <= n_before < 40
    s2 = b2m_proc(*args, name="session2")
    assert tx.wait(120) == 0, tx.stderr()
    assert s2.wait(60) == 0, s2.stderr()  # --runs 1: exits once the run has ended
    assert "continuing the session" in s2.stderr()
    decisions = read_decisions(log)
    assert sorted(d["index"] for d in decisions) == list(range(40))  # every volume decided exactly once
    rep = b2m_proc("session", "replay", out, name="session-replay")
    assert rep.wait() == 0, rep.stderr() + rep.stdout()
    report = json.loads(rep.stdout()[: rep.stdout().rindex("}") + 1])
    assert report["identical"] and report["n_compared"] == 40
    summary = json.loads((out / "summary.json").read_text())  # the restarted process's own
    assert summary["mode"] == mode
    if mode == "generation":  # the piece playing at the kill was begun again, and the music went on
        assert summary["pieces"]["errors"] == 0 and summary["pieces"]["segments"] >= 2


def test_session_check_passes_and_plays_the_neutral_clip_sample_exact(kit, b2m_proc, endpoint, tmp_path):
    from music.library import Library
    from realtime.audio import prepare_source, read_segment
    from realtime.clocks import host_clock_sync
    from realtime.feedback import FeedbackPolicy, PolicyConfig

    wav = tmp_path / "check.wav"
    chk = b2m_proc("session", "--check", "--model", kit.bundle, "--library", kit.library, "--bind", endpoint,
                   "--results", "tcp://127.0.0.1:*", "--control", "tcp://127.0.0.1:*", "--pyneal-port", "0",
                   "--audio", f"wav:{wav}", name="check")
    assert chk.wait(120) == 0, chk.stdout() + chk.stderr()
    lines = chk.stdout().splitlines()
    names = ["model bundle", "music library", "bundle and library", "decoder speed", "scanner endpoint",
             "results endpoint", "operator control", "Pyneal port", "host clock", "audio output"]
    assert [line.split("  ")[1].strip() for line in lines] == names
    # this machine's clock may or may not be kept by NTP: the line says what the kernel says, and a clock
    # that is not kept warns without failing the check
    clock = host_clock_sync()
    want = "PASS" if clock is None or clock["synchronised"] else "WARN"
    assert [line[:4] for line in lines] == ["PASS"] * 8 + [want, "PASS"]
    assert "10 of 10 checks passed: ready for a session" in chk.stderr()
    assert ("1 with a warning, worth putting right: host clock" in chk.stderr()) == (want == "WARN")
    # what played is the neutral clip itself at the session's level (-20 dBFS RMS): fade-in from 0.1 s for
    # 50 ms, then its samples exactly, for 2 s
    lib = Library(kit.library)
    clip = lib.clips[FeedbackPolicy(lib, PolicyConfig()).neutral_clip]
    x, sr = read_segment(lib.audio_path(clip), clip.start_s, clip.duration_s)
    x64 = x.astype(np.float64)
    gain = float(min(10 ** (-20 / 20) / np.sqrt(np.mean(x64 ** 2)), 10 ** (-1 / 20) / np.abs(x64).max()))
    src = prepare_source((x * gain).astype(np.float32), sr, 48000, 2)
    played, rate = sf.read(wav, dtype="float32", always_2d=True)
    at, fade, n = 4800, 2400, 2 * 48000
    assert rate == 48000 and np.all(played[:at] == 0)
    np.testing.assert_array_equal(played[at + fade:at + n], src[fade:n])


def test_session_check_fails_on_a_taken_port_and_a_missing_device(kit, b2m_proc, endpoint):
    ctx = zmq.Context()
    taken = ctx.socket(zmq.ROUTER)
    taken.bind(endpoint)                      # another receiver already holds the scanner port
    try:
        chk = b2m_proc("session", "--check", "--model", kit.bundle, "--library", kit.library, "--bind", endpoint,
                       "--results", "none", "--audio", "no such speaker", name="check")
        assert chk.wait(120) == 1
    finally:
        taken.close(0)
        ctx.term()
    out = chk.stdout()
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if line[:4] in ("PASS", "WARN", "FAIL")}
    assert rows["model bundle"].startswith("PASS") and rows["decoder speed"].startswith("PASS")
    assert rows["scanner endpoint"].startswith("FAIL") and f"cannot bind {endpoint}" in rows["scanner endpoint"]
    assert rows["audio output"].startswith("FAIL") and "no such speaker" in rows["audio output"]
    assert "Output devices:" in out and "results endpoint" not in rows
    assert "fix: scanner endpoint, audio output" in chk.stderr()
