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
import types
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import wait_until
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
    assert [r["tsnr"] for r in rows] == pytest.approx([d["tsnr"] for d in recorded])  # None for the first 19
    assert rows[0]["tsnr"] is None and rows[-1]["tsnr"] > 0
    assert state["counts"]["switches"] == sum(d["action"] == "switch" for d in recorded) >= 1
    assert state["counts"]["bad_messages"] == 0
    last = recorded[-1]
    assert state["last"]["clip"] == last["clip"] and state["last"]["index"] == 39
    assert state["last"]["tsnr"] == pytest.approx(last["tsnr"])
    first_of_stretch = max(d["index"] for d in recorded if d["action"] == "switch")
    assert state["last"]["playing_since_index"] == first_of_stretch  # the last switch started what plays
    for stage in ("preprocessed", "decoded", "decided", "audio_scheduled", "total"):
        assert state["latency_ms"][stage]["n"] >= 38

    status, panel = get(url + "panel")
    assert status == 200 and last["clip"] in panel and "<svg" in panel and "results 40" in panel
    assert f"<th>temporal SNR, run so far</th><td>{last['tsnr']:.0f}</td>" in panel  # the kit's bundle: no
    assert all(r["tsnr_training"] is None for r in rows) and "Temporal SNR of the decoder" in panel  # Training's
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
                         dvars_pct=0.5 + (i == 9), tsnr=40.0 + i if i >= 10 else None,
                         tsnr_training=60.0 - i if i >= 10 else None))
        if i == 9:  # no figure yet
            assert "<th>temporal SNR, run so far</th><td>— (too few volumes yet)</td>" in render_panel(
                state.snapshot())
    snap = state.snapshot()
    assert [r["tsnr"] for r in snap["runs"]["r"]] == [None] * 10 + [50.0, 51.0] and snap["last"]["tsnr"] == 51.0
    panel = render_panel(snap)
    assert "<th>temporal SNR, run so far</th><td>51 (Training runs 49 after as many volumes)</td>" in panel
    # the run's tSNR over the Training runs' curve (dashed), both on one scale: 900 px over the 12 volumes, the
    # top of the 80 px plot at 1.15 x the largest of both (51 and 50)
    scale = lambda v: 78 - 76 * v / (1.15 * 51)  # noqa: E731
    run_line = f"{900 * 10 / 11:.1f},{scale(50):.1f} {900.0:.1f},{scale(51):.1f}"
    training_line = f"{900 * 10 / 11:.1f},{scale(50):.1f} {900.0:.1f},{scale(49):.1f}"
    assert f'<polyline points="{run_line}" fill="none" stroke="#d70"' in panel
    assert f'<polyline points="{training_line}" fill="none" stroke="#555" stroke-dasharray="4 3"/>' in panel
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


# ---- the operator's buttons (--control) -------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the 303 itself is what is checked
        return None


def post(url: str, fields: dict | bytes, headers: dict | None = None) -> tuple[int, dict, str]:
    data = urllib.parse.urlencode(fields).encode() if isinstance(fields, dict) else fields
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


@pytest.fixture
def operator_room(tmp_path):
    """A session's real operator control (no audio output: recorded in operator.tsv only) on a loopback
    ControlServer, and a real monitor with the buttons on a free port."""
    from realtime.monitor import ControlLink, MonitorServer
    from realtime.session.operator import ControlServer, OperatorControl

    control = OperatorControl(types.SimpleNamespace(output=None), record_dir=tmp_path, level_dbfs=-20.0)
    server = ControlServer(control, "tcp://127.0.0.1:*").start()
    mon = MonitorServer(MonitorState("tcp://127.0.0.1:1"), port=0, control=ControlLink(server.endpoint))
    try:
        yield types.SimpleNamespace(control=control, server=server, mon=mon, url=mon.url, dir=tmp_path,
                                    origin=f"http://127.0.0.1:{mon.port}")
    finally:
        mon.close()
        server.close()


def test_the_monitor_s_buttons_mute_unmute_and_set_the_level_of_the_session(operator_room):
    from realtime.session.operator import read_operator

    room = operator_room
    status, page = get(room.url)
    assert status == 200 and 'action="/control"' in page and ">Mute</button>" in page
    assert "sound: level 0.0 dB (-20.0 dBFS RMS)" in page and "as the session started" in page
    assert json.loads(get(room.url + "state.json")[1])["sound"]["muted"] is False

    status, headers, _ = post(room.url + "control", {"op": "mute"}, {"Origin": room.origin})
    assert status == 303 and headers["Location"] == "/"
    assert room.control.muted and room.control.source == "monitor"
    sound = json.loads(get(room.url + "state.json")[1])["sound"]
    assert sound["muted"] is True and sound["source"] == "monitor" and sound["commands"] == 1
    rows = read_operator(room.dir)
    assert [(r["command"], r["source"], r["muted"]) for r in rows] == [("mute", "monitor", True)]
    page = get(room.url)[1]
    assert '<span class="bad">MUTED</span>' in page and "by monitor" in page

    # the page's own "Level -3 dB" form, as a browser posts it (a Referer and no Origin)
    minus = re.search(r'name="value" value="([^"]+)"><button type="submit" title="to ([^"]+) dB">Level &minus;3', page)
    assert minus and minus.group(1) == "-3.0"
    status, _, _ = post(room.url + "control", {"op": "level", "value": minus.group(1)}, {"Referer": room.url})
    assert status == 303 and room.control.level_db == -3.0 and room.control.muted  # the level, still muted
    assert post(room.url + "control", {"op": "level", "value": "-6"})[0] == 303  # a script: no Origin, no Referer
    assert post(room.url + "control", {"op": "unmute"}, {"Origin": room.origin})[0] == 303
    page = get(room.url)[1]
    assert "sound: level -6.0 dB (-26.0 dBFS RMS)" in page and "MUTED" not in page
    assert 'value="-9.0"' in page and 'value="-3.0"' in page  # the -3 and +3 buttons from -6
    assert [(r["command"], r["value"], r["source"], r["muted"], r["level_db"]) for r in read_operator(room.dir)] == [
        ("mute", None, "monitor", True, 0.0), ("level", -3.0, "monitor", True, -3.0),
        ("level", -6.0, "monitor", True, -6.0), ("unmute", None, "monitor", False, -6.0)]
    snap = json.loads(get(room.url + "state.json")[1])
    assert snap["sound"]["level_dbfs"] == -26.0 and snap["control"]["commands_sent"] == 4
    assert snap["control"]["last_error"] is None


def test_the_monitor_s_note_field_keeps_a_line_for_the_record(operator_room):
    from realtime.session.operator import read_operator

    room = operator_room
    page = get(room.url)[1]
    assert 'name="op" value="note"' in page and 'maxlength="200"' in page
    status, _, _ = post(room.url + "control", {"op": "note", "value": "participant asked for a break"},
                        {"Origin": room.origin})
    assert status == 303 and not room.control.muted  # the sound is unchanged
    (row,) = read_operator(room.dir)
    assert (row["command"], row["value"], row["source"]) == ("note", "participant asked for a break", "monitor")
    for bad in ("", "x" * 201, "two\nlines"):  # the wire's own check: 400 naming the value, nothing sent
        assert post(room.url + "control", {"op": "note", "value": bad}, {"Origin": room.origin})[0] == 400
    assert len(read_operator(room.dir)) == 1


def test_the_level_buttons_stop_at_the_range():
    from realtime.monitor import render_sound

    snap = {"control": {"endpoint": "tcp://127.0.0.1:1", "answered_unix": 1.0, "last_error": None},
            "sound": {"muted": False, "level_db": -38.5, "level_dbfs": None, "since_unix": 1.0, "source": "cli",
                      "commands": 3}}
    html_ = render_sound(snap)
    assert "sound: level -38.5 dB since" in html_ and "by cli" in html_ and "dBFS" not in html_
    assert 'value="-40.0"><button type="submit" title="to -40.0 dB">Level &minus;3' in html_
    snap["sound"]["level_db"] = -40.0
    assert 'value="-40.0"><button type="submit" disabled title="to -40.0 dB">Level &minus;3' in render_sound(snap)
    snap["sound"]["level_db"] = 0.0
    assert 'value="0.0"><button type="submit" disabled title="to 0.0 dB">Level +3' in render_sound(snap)
    snap["sound"] = None  # not known yet: mute and unmute work, the level buttons wait
    html_ = render_sound(snap)
    assert "unknown" in html_ and html_.count(" disabled") == 2 and ">Mute</button>" in html_


def test_a_post_from_another_site_is_refused_and_changes_nothing(operator_room):
    room = operator_room
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{room.mon.port + 1}"},
                    {"Origin": "http://evil.example", "Referer": room.url},  # the Origin decides
                    {"Referer": "http://evil.example/page.html"}):
        status, _, body = post(room.url + "control", {"op": "mute"}, headers)
        assert status == 403 and "another site" in body, (headers, status, body)
    assert not room.control.muted and room.control.history == []
    assert not (room.dir / "operator.tsv").exists()
    assert post(room.url + "control", {"op": "mute"}, {"Origin": f"http://LOCALHOST:{room.mon.port}",
                                                       "Host": f"localhost:{room.mon.port}"})[0] == 303
    assert room.control.muted


def test_a_malformed_post_gets_400_naming_the_field(operator_room):
    room = operator_room
    for fields, field in (({}, "op"), ({"op": "reboot"}, "op"), ({"op": "level"}, "value"),
                          ({"op": "level", "value": "loud"}, "value"), ({"op": "level", "value": "-60"}, "value"),
                          ({"op": "level", "value": "nan"}, "value"), ({"op": "mute", "value": "-3"}, "value"),
                          ({"op": "mute", "volume": "1"}, "volume"), (b"op=mute&op=unmute", "op"),
                          (b"\xff\xfe", "body")):
        status, _, body = post(room.url + "control", fields)
        assert status == 400 and body.startswith(f"malformed command: {field}: "), (fields, status, body)
    status, _, body = post(room.url + "control", b'{"op": "mute"}', {"Content-Type": "application/json"})
    assert status == 400 and "Content-Type" in body
    assert post(room.url + "control", b"op=mute&" + b"x" * 2000)[0] == 413
    assert post(room.url + "elsewhere", {"op": "mute"})[0] == 404
    assert get(room.url + "control")[0] == 405
    assert not room.control.muted and room.control.history == []
    assert get(room.url)[0] == 200


def test_a_session_that_does_not_answer_shows_on_the_page(tmp_path):
    from conftest import free_port

    from realtime.monitor import ControlLink, MonitorServer

    nobody = f"tcp://127.0.0.1:{free_port()}"
    mon = MonitorServer(MonitorState("tcp://127.0.0.1:1"), port=0, control=ControlLink(nobody, timeout_s=0.3))
    try:
        t0 = time.monotonic()
        status, page = get(mon.url)
        assert status == 200 and "sound: unknown" in page
        assert f"no session answered on {nobody}" in page and 'class="bad"' in page
        snap = json.loads(get(mon.url + "state.json")[1])
        assert snap["sound"] is None and snap["control"]["answered_unix"] is None
        assert nobody in snap["control"]["last_error"]["message"]
        assert snap["control"]["last_error"]["time_unix"] == pytest.approx(time.time(), abs=5)
        status, headers, _ = post(mon.url + "control", {"op": "mute"})
        assert status == 303 and headers["Location"] == "/"  # told on the page, not as a failure of the page
        snap = json.loads(get(mon.url + "state.json")[1])
        assert snap["control"]["failed"] >= 2 and snap["control"]["commands_sent"] == 0
        assert get(mon.url + "panel")[0] == 200
        assert time.monotonic() - t0 < 5
    finally:
        mon.close()
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        ControlLink("localhost:5557")


def test_without_control_the_page_is_read_only():
    from realtime.monitor import MonitorServer

    mon = MonitorServer(MonitorState("tcp://127.0.0.1:1"), port=0)
    try:
        status, _, body = post(mon.url + "control", {"op": "mute"})
        assert status == 404 and "without --control" in body
        assert json.loads(get(mon.url + "state.json")[1])["sound"] is None
        page = get(mon.url)[1]
        assert "Mute" not in page and "sound:" not in page
    finally:
        mon.close()


def test_b2m_monitor_control_forwards_the_buttons(b2m_proc, tmp_path):
    from realtime.session.operator import ControlServer, OperatorControl, read_operator

    control = OperatorControl(types.SimpleNamespace(output=None), record_dir=tmp_path)
    server = ControlServer(control, "tcp://127.0.0.1:*").start()
    try:
        mon = b2m_proc("monitor", "--results", "tcp://127.0.0.1:1", "--control", server.endpoint,
                       "--http", "127.0.0.1:0", name="monitor")
        mon.wait_for("monitor\thttp://", timeout=30)
        url = re.search(r"monitor\t(\S+)", mon.stderr()).group(1)
        assert "sound: level 0.0 dB since" in get(url)[1]
        assert post(url + "control", {"op": "mute"}, {"Origin": url.rstrip("/")})[0] == 303
        assert control.muted and read_operator(tmp_path)[-1]["source"] == "monitor"
        mon.kill(signal.SIGTERM)
        assert mon.wait(timeout=30) == 0, mon.stderr()
        assert "1 operator command(s) forwarded, 0 refused" in mon.stdout()
    finally:
        server.close()
