"""``b2m monitor``: a running session's results stream as a web page.

Real parts: a ``b2m session`` process publishing on loopback ZeroMQ, a
``b2m monitor`` process subscribing and serving HTTP, and ``b2m scanner
replay`` sending nitime's real run. The reference is the session's own
record of its decisions.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request

import pytest
from session_kit import kit_fixture

from protocols.wire import Result, RunEnd, encode
from realtime.monitor import MonitorState, ResultsSubscriber, render_panel
from realtime.results import ResultsPublisher
from realtime.session.decisions import run_decisions


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def wait_until(fn, timeout: float = 30.0, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    return fn()


def test_monitor_shows_what_the_session_decided(kit, b2m_proc, endpoint, tmp_path):
    from conftest import free_port

    out = tmp_path / "session"
    results = f"tcp://127.0.0.1:{free_port()}"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", results, "--no-dashboard", "--runs", "1",
                    "--min-dwell", "5", "--margin", "0", "--smooth-trs", "1", name="session")
    sess.wait_for("ready", timeout=60)
    mon = b2m_proc("monitor", "--results", results, "--http", "127.0.0.1:0", name="monitor")
    mon.wait_for("monitor\thttp://", timeout=30)
    url = re.search(r"monitor\t(\S+)", mon.stderr()).group(1)
    status, page = get(url)
    assert status == 200 and "waiting for the first result" in page and 'fetch("panel"' in page
    time.sleep(0.5)  # PUB/SUB: the subscription must reach the session before the first result
    tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "max", "--run-id", "run-01",
                  "--quiet", name="replay")
    assert tx.wait() == 0, tx.stderr()
    assert sess.wait(timeout=120) == 0, sess.stderr()
    state = wait_until(lambda: (s := json.loads(get(url + "state.json")[1]))["counts"]["results"] == 40 and s)
    assert state, get(url + "state.json")[1]

    recorded = dict(run_decisions(out))["run-01"]
    rows = state["runs"]["run-01"]
    assert [r["index"] for r in rows] == [d["index"] for d in recorded] == list(range(40))
    assert [(r["action"], r["clip"], r["flagged"]) for r in rows] == \
           [(d["action"], d["clip"], d["flagged"]) for d in recorded]
    assert [r["fd_mm"] for r in rows] == pytest.approx([d["fd_mm"] for d in recorded])
    assert [r["dvars_pct"] for r in rows] == pytest.approx([d["dvars_pct"] for d in recorded])
    assert state["counts"]["switches"] == sum(d["action"] == "switch" for d in recorded) >= 1
    assert state["counts"]["bad_messages"] == 0
    last = recorded[-1]
    assert state["last"]["clip"] == last["clip"] and state["last"]["index"] == 39
    first_of_stretch = max(d["index"] for d in recorded if d["action"] == "switch")
    assert state["last"]["playing_since_index"] == first_of_stretch  # the last switch started what plays
    for stage in ("preprocessed", "decoded", "decided", "audio_scheduled", "total"):
        assert state["latency_ms"][stage]["n"] >= 38

    status, panel = get(url + "panel")
    assert status == 200 and last["clip"] in panel and "<svg" in panel and "results 40" in panel
    assert get(url + "nope")[0] == 404
    mon.kill(signal.SIGTERM)
    assert mon.wait(timeout=30) == 0, mon.stderr()
    assert "40 results seen, 0 messages that were not results" in mon.stdout()


def test_a_message_that_is_not_a_result_is_counted_and_the_monitor_goes_on(tmp_path):
    from realtime.transport import generate_keys, load_curve_client, load_curve_server

    # an encrypted stream, as a session with --curve-secret publishes it
    pub_file, sec_file = generate_keys(tmp_path / "keys", "session")
    _, mon_sec = generate_keys(tmp_path / "keys", "monitor")
    pub = ResultsPublisher("tcp://127.0.0.1:*", curve=load_curve_server(sec_file))
    state = MonitorState(pub.endpoint)
    sub = ResultsSubscriber(pub.endpoint, state, curve=load_curve_client(mon_sec, pub_file)).start()
    try:
        time.sleep(0.5)
        pub.sock.send_multipart([b"not msgpack at all"])
        pub.sock.send_multipart(encode(RunEnd(run_id="r", n_volumes=3)))
        pub.publish(Result(run_id="r", index=0, action="neutral", clip="a", fd_mm=0.1,
                           timestamps={"acquired": 10.0, "audio_scheduled": 10.05}, latency_ms={"total": 3.0}))
        assert wait_until(lambda: state.counts["results"] == 1 and state.counts["bad_messages"] == 2, 10)
    finally:
        sub.close()
        pub.close()
    snap = state.snapshot()
    assert "RunEnd" in snap["last_bad_message"]
    assert snap["last"]["lag_s"] == pytest.approx(0.05)
    assert "messages that were not results: 2" in render_panel(snap)


def test_the_panel_draws_one_span_per_stretch_of_a_clip_and_warns_when_results_stop():
    state = MonitorState("tcp://127.0.0.1:1")
    clips = ["a"] * 5 + ["b"] * 3 + ["a"] * 4  # three stretches, two switches
    for i, c in enumerate(clips):
        action = "switch" if i and c != clips[i - 1] else "keep"
        state.add(Result(run_id="r", index=i, action=action, clip=c, fd_mm=0.1 * i, flagged=i == 6,
                         dvars_pct=0.5 + (i == 9)))
    snap = state.snapshot()
    panel = render_panel(snap)
    assert panel.count("<rect") == 3 and panel.count('stroke="#b00" stroke-width="1.5"') == 2
    assert "volumes 0-4" in panel and "volumes 5-7" in panel and "volumes 8-11" in panel
    assert panel.count("<circle") == 1  # the held volume
    assert "DVARS in % of the mean (dashed: the run's median, 0.50 %)" in panel
    assert snap["last"]["playing_since_index"] == 8
    assert "no result for" not in panel
    snap["seconds_since_last"] = 42.0
    assert "no result for 42 s" in render_panel(snap)


def test_monitor_refuses_a_network_address_without_insecure(b2m_proc):
    p = b2m_proc("monitor", "--http", "0.0.0.0:0", name="monitor")
    assert p.wait(timeout=30) == 2
    assert "plain HTTP" in p.stderr() and "--insecure" in p.stderr()


def test_the_panel_shows_the_block_and_silence():
    state = MonitorState("tcp://127.0.0.1:1")
    state.add(Result(run_id="r", index=0, action="keep", clip="a", condition="feedback"))
    state.add(Result(run_id="r", index=1, action="silence", clip=None, condition="silence"))
    snap = state.snapshot()
    assert [r["condition"] for r in snap["runs"]["r"]] == ["feedback", "silence"]
    panel = render_panel(snap)
    assert "<th>block</th><td>silence</td>" in panel and "nothing (silence)" in panel
    state.add(Result(run_id="r", index=2, action="keep", clip="a"))  # a session without blocks: no row
    assert "<th>block</th>" not in render_panel(state.snapshot())
