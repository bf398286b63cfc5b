"""The session's services under abuse: the results PUB, the Pyneal results server, the operator's record and
control socket, and the monitor's web server, each over real loopback sockets.

Every test holds the bad clients open while a correct request is made, and checks that the correct one is
answered (with generous timeouts: speed is measured in bench/, not here) and that the bad one got a reply
that names what to send, or was dropped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import pytest
from conftest import recv_until_closed, wait_until
import zmq
from zmq.utils.monitor import recv_monitor_message

from protocols.operator import MAX_OPERATOR_BYTES, OperatorCommand, decode_reply, encode_command
from protocols.wire import MAX_RUN_VOLUMES, Result
from realtime.results import MAX_SUBSCRIPTION_BYTES, PynealResultsServer, ResultsPublisher, pyneal_payload
from realtime.session.operator import (MAX_CONTROL_FRAME_BYTES, OPERATOR_FILE, ControlServer, OperatorControl,
                                       read_operator)
from realtime.session.tables import KeptTable, read_kept

NO_AUDIO = types.SimpleNamespace(output=None)




# ---------------------------------------------------------------------------- the results PUB


_BIG_SUBSCRIBER = """
import os, sys, time, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.SUBSCRIBE, b"x" * 1_000_000)  # a 1 MB prefix, larger than MAX_SUBSCRIPTION_BYTES
s.setsockopt(zmq.SUBSCRIBE, b"")  # everything, were it kept
s.connect(sys.argv[1])
got, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    if s.poll(100):
        s.recv_multipart()
        got += 1
print(got, flush=True)
os._exit(0)  # as a killed client: libzmq's own teardown of a 1 MB-deep subscription would crash this process
"""


def test_results_publisher_drops_a_subscriber_with_a_huge_subscription_and_serves_the_others():
    ctx = zmq.Context()
    pub = ResultsPublisher("tcp://127.0.0.1:*", ctx=ctx)
    events = pub.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    good = ctx.socket(zmq.SUB)
    big = subprocess.Popen([sys.executable, "-c", _BIG_SUBSCRIBER, pub.endpoint, "8"], stdout=subprocess.PIPE,
                           text=True)
    try:
        good.setsockopt(zmq.SUBSCRIBE, b"")
        good.connect(pub.endpoint)
        got, dropped, index = 0, 0, 0
        end = time.monotonic() + 30
        while (got < 20 or dropped < 2) and time.monotonic() < end:
            pub.publish(Result(run_id="run1", index=index, action="keep", clip="c1"))
            index += 1
            if good.poll(20):
                good.recv_multipart()
                got += 1
            while events.poll(0):
                dropped += recv_monitor_message(events)["event"] == zmq.EVENT_DISCONNECTED
        assert got >= 20, "the ordinary subscriber stopped getting results"
        assert dropped >= 2, "the subscriber with a 1 MB subscription was not dropped (again at each reconnect)"
        out, _ = big.communicate(timeout=60)
        assert out.strip() == "0", f"the subscriber with a huge subscription got {out.strip()} results"
        assert MAX_SUBSCRIPTION_BYTES < 1_000_000
    finally:
        if big.poll() is None:
            big.kill()
            big.wait()
        pub.sock.disable_monitor()
        events.close(0)
        good.close(0)
        pub.close()
        ctx.term()


# ---------------------------------------------------------------------------- the Pyneal results server


def _send(port: int, payload: bytes, *, half_close: bool = False, timeout: float = 20.0) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return _read_reply(s)


def _read_reply(s: socket.socket) -> dict:
    """The reply, in either framing: one JSON line (to a request that ended in a newline), or Pyneal's header
    line with the JSON's length and then exactly that JSON (to one that did not)."""
    data = recv_until_closed(s)
    first, rest = data.split(b"\n", 1)
    if first.strip().isdigit():
        assert int(first) == len(rest), data[:200]
        data = rest
    else:
        assert rest == b"", data[:200]
    return json.loads(data, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


def test_pyneal_replies_as_pyneal_frames_them_or_as_a_line_as_the_request_asks(pyneal):
    """Pyneal's Python client sends '0003' and reads a length header, then that many bytes (Pyneal's
    sendResults); its MATLAB client sends '0003' with a newline and reads one line (fgetl)."""
    for request, line in ((b"0003", False), (b"0003\n", True)):
        with socket.create_connection(("127.0.0.1", pyneal.port), timeout=20) as s:
            s.sendall(request)
            data = recv_until_closed(s)
        if line:
            assert data.count(b"\n") == 1 and data.endswith(b"\n")
            assert json.loads(data)["clip"] == "c3"
        else:
            header, body = data.split(b"\n", 1)
            assert header.isdigit() and int(header) == len(body) and not body.endswith(b"\n")
            assert json.loads(body)["clip"] == "c3"


@pytest.fixture
def pyneal(rng):
    srv = PynealResultsServer(port=0)
    for i in range(6):
        r = Result(run_id="run1", index=i, action="keep", clip=f"c{i}", embedding=rng.standard_normal(4),
                   topk=[(f"c{i}", 0.9)], fd_mm=float("nan") if i == 5 else 0.1)
        srv.store(i, pyneal_payload(r))
    yield srv
    srv.close()


def test_pyneal_requests_in_every_form_a_client_sends_are_answered(pyneal):
    port = pyneal.port
    assert _send(port, b"0003")["clip"] == "c3"  # Pyneal's own client: 4 digits, no newline, no half-close
    assert _send(port, b"3\n")["clip"] == "c3"  # Pyneal's MATLAB client: println
    assert _send(port, b"3")["clip"] == "c3"  # digits alone, then waits (ends after a short pause)
    assert _send(port, b"3", half_close=True)["clip"] == "c3"
    assert _send(port, b" 4 \r\n")["clip"] == "c4"
    assert _send(port, b"00004", half_close=True)["clip"] == "c4"
    assert _send(port, b"7\n") == {"foundResults": False}  # not processed yet: ask again later
    nan = _send(port, b"5\n")  # a NaN in the results is null: strict JSON
    assert nan["foundResults"] is True and nan["fd"] is None


@pytest.mark.parametrize("payload, says", [
    (b"-1\n", "ASCII digits 0-9"), (b"1e30\n", "ASCII digits 0-9"), (b"1_0\n", "ASCII digits 0-9"),
    (b"0x10\n", "ASCII digits 0-9"), (b"3.5\n", "ASCII digits 0-9"), (b"\xff\xfe\n", "ASCII digits 0-9"),
    (b"\xd9\xa3\n", "ASCII digits 0-9"),  # ARABIC-INDIC DIGIT THREE: int() takes it; a client means no index
    (b"99999999999999999999999999\n", "volume index 99999999999999999999999999 is out of range"),
    (str(MAX_RUN_VOLUMES).encode() + b"\n", f"out of range: a run's volumes are 0 to {MAX_RUN_VOLUMES - 1}"),
    (b"\n", "ASCII digits 0-9"),
])
def test_pyneal_a_request_that_is_no_index_gets_an_error_naming_it_not_found_false(pyneal, payload, says):
    reply = _send(pyneal.port, payload)
    assert reply["foundResults"] is False and says in reply["error"], reply
    assert _send(pyneal.port, b"2\n")["clip"] == "c2"


def test_pyneal_a_request_without_an_end_is_answered_without_waiting_when_it_is_no_index(pyneal):
    for payload in (b"-1", b"1_0", b"abc"):  # no newline, no half-close: nothing that follows could make it one
        reply = _send(pyneal.port, payload)
        assert reply["foundResults"] is False and "ASCII digits" in reply["error"]


def test_pyneal_a_trickled_request_is_read_to_its_newline():
    srv = PynealResultsServer(port=0, pause_s=10.0)  # longer than the gaps below, whatever the machine's load
    try:
        srv.store(12, {"clip": "c12"})
        srv.store(1, {"clip": "c1"})
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
            for byte in b"12\n":
                s.sendall(bytes([byte]))
                time.sleep(0.2)
            assert _read_reply(s) == {"foundResults": True, "clip": "c12"}
    finally:
        srv.close()


def test_pyneal_a_huge_request_gets_an_error_and_the_next_client_its_answer(pyneal):
    with socket.create_connection(("127.0.0.1", pyneal.port), timeout=20) as s:
        sent = 0
        try:
            for _ in range(50):
                s.sendall(b"1" * 10_000)
                sent += 10_000
        except OSError:
            pass  # the server stopped reading: told below
        reply = _read_reply(s)
    assert reply["foundResults"] is False and "at most 64 bytes" in reply["error"]
    assert _send(pyneal.port, b"1\n")["clip"] == "c1"


def test_pyneal_idle_connections_do_not_delay_a_correct_request(pyneal):
    idle = [socket.create_connection(("127.0.0.1", pyneal.port), timeout=20) for _ in range(40)]
    try:
        for s in idle[:20]:
            s.sendall(b"1")  # a digit, then nothing: each waits on its own
        assert _send(pyneal.port, b"0003")["clip"] == "c3"
        assert _send(pyneal.port, b"4\n")["clip"] == "c4"
    finally:
        for s in idle:
            s.close()


def test_pyneal_a_connection_that_says_nothing_is_told_and_closed_at_its_deadline():
    srv = PynealResultsServer(port=0, deadline_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
            reply = _read_reply(s)
        assert reply["foundResults"] is False and "no complete request within 0.5 s" in reply["error"]
    finally:
        srv.close()


def test_pyneal_connections_beyond_the_cap_are_told_busy_and_served_again_when_they_close():
    srv = PynealResultsServer(port=0, max_clients=2, deadline_s=60.0)
    try:
        srv.store(3, {"clip": "c3"})
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=20) for _ in range(2)]
        try:
            busy = wait_until(lambda: _send(srv.port, b"").get("error"))  # told at once, before it sends
            assert busy and "busy (2 connections open); try again" in busy and srv.busy_refused >= 1
        finally:
            for s in held:
                s.close()  # the server sees the end of their streams and frees their places
        assert wait_until(lambda: _send(srv.port, b"3\n").get("foundResults")) is True
    finally:
        srv.close()


# ---------------------------------------------------------------------------- the operator's record

ADVERSARIAL_NOTES = ['"5 inch screen', 'participant said "stop" twice', "n/a", 'closing quote "', '""', '"',
                     "'single' quotes", "a,b;c|d", "back\\slash \\t \\n", "  leading and trailing  ", "#not a comment",
                     "=1+1", "é ünïcödé ✓ 日本", "none", "NaN", "true", "-3.0"]


def test_operator_notes_round_trip_exactly_through_the_record(tmp_path):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    oc.notes_per_window = len(ADVERSARIAL_NOTES)  # this test writes faster than a person
    for i, note in enumerate(ADVERSARIAL_NOTES):
        oc.apply(OperatorCommand("note", note, source='"quoted" src'))
        oc.apply(OperatorCommand("level", -float(i % 7), "cli"))
    rows = read_operator(tmp_path)
    assert rows == oc.history  # everything, typed and exact, as the session kept it in memory
    assert [r["value"] for r in rows if r["command"] == "note"] == ADVERSARIAL_NOTES
    with open(tmp_path / OPERATOR_FILE, encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 1 + len(rows)  # one line per row: nothing joined


def test_a_continued_session_whose_record_holds_a_quoted_note_restores_the_last_mute_and_level(tmp_path):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    for cmd in (OperatorCommand("level", -3.0), OperatorCommand("note", '"5 inch screen'),
                OperatorCommand("level", -12.0), OperatorCommand("note", 'participant said "stop" twice'),
                OperatorCommand("mute"), OperatorCommand("note", "n/a")):
        oc.apply(cmd)
    again = OperatorControl(NO_AUDIO, tmp_path)  # the session continued after a crash
    assert (again.muted, again.level_db) == (True, -12.0)
    assert again.state()["commands"] == 6 and again.history == oc.history


def test_a_kept_table_writes_a_tab_or_newline_in_a_cell_as_a_space(tmp_path):
    path = str(tmp_path / "t.tsv")
    table = KeptTable(path, ("time_unix", "event", "detail"))
    assert table.append([1.0, "stopped", 'PortAudio error:\n"device\tgone"\r']) is None
    assert table.append([2.0, "reopened", '"']) is None
    rows = read_kept(path, dict)
    assert rows == [{"time_unix": "1.0", "event": "stopped", "detail": 'PortAudio error: "device gone" '},
                    {"time_unix": "2.0", "event": "reopened", "detail": '"'}]


# ---------------------------------------------------------------------------- the operator's control socket


@pytest.fixture
def control(tmp_path, endpoint):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    server = ControlServer(oc, endpoint).start()
    ctx = zmq.Context()
    yield types.SimpleNamespace(oc=oc, server=server, ctx=ctx, endpoint=server.endpoint, dir=tmp_path)
    server.close()
    ctx.destroy(0)


def _ask(ctl, cmd: OperatorCommand | bytes) -> dict:
    s = ctl.ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(ctl.endpoint)
        s.send(cmd if isinstance(cmd, bytes) else encode_command(cmd))
        assert s.poll(20_000), "the session did not answer"
        return decode_reply(s.recv())
    finally:
        s.close(0)


def test_control_a_huge_frame_drops_its_sender_and_the_session_answers_the_next(control):
    dealer = control.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(control.endpoint)
        dealer.send_multipart([b"", b"x" * (4 * MAX_CONTROL_FRAME_BYTES)])
        assert _ask(control, OperatorCommand("status"))["ok"] is True
        assert not dealer.poll(500), "a frame over MAX_CONTROL_FRAME_BYTES was read and answered"
    finally:
        dealer.close(0)
    mid = _ask(control, b"x" * (MAX_OPERATOR_BYTES * 2))  # over the protocol's limit, under the socket's: told
    assert mid["ok"] is False and f"at most {MAX_OPERATOR_BYTES} bytes" in mid["error"]
    assert control.server.served == 1 and control.oc.state()["commands"] == 0


def test_control_a_flood_of_notes_is_refused_beyond_the_rate_and_the_cap(control, caplog):
    oc = control.oc
    replies = [_ask(control, OperatorCommand("note", f"note {i}", "flood")) for i in range(oc.notes_per_window + 5)]
    taken = [r for r in replies if r["ok"]]
    refused = [r["error"] for r in replies if not r["ok"]]
    assert len(taken) == oc.notes_per_window and len(refused) == 5
    assert all(f"notes in the last {oc.note_window_s:g} s already" in e and "try again in" in e for e in refused)
    assert len(read_operator(control.dir)) == oc.notes_per_window  # the refused ones are not kept
    logged = [r for r in caplog.records if "operator command refused" in r.getMessage()]
    assert 1 <= len(logged) < len(refused) and all(r.exc_info is None for r in logged)  # one line, not five

    oc.notes_per_window, oc.max_notes = 10_000, oc.notes + 2
    assert [_ask(control, OperatorCommand("note", f"more {i}"))["ok"] for i in range(2)] == [True, True]
    capped = _ask(control, OperatorCommand("note", "one too many"))
    assert capped["ok"] is False and f"the most it keeps ({oc.max_notes})" in capped["error"]
    assert _ask(control, OperatorCommand("mute"))["ok"] is True  # the sound is never held back by notes
    assert read_operator(control.dir)[-1]["command"] == "mute"


# ---------------------------------------------------------------------------- the monitor's web server


def _raw(port: int, data: bytes, timeout: float = 20.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return recv_until_closed(s)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest.fixture
def room(tmp_path):
    from realtime.monitor import ControlLink, MonitorServer, MonitorState

    oc = OperatorControl(NO_AUDIO, tmp_path)
    server = ControlServer(oc, "tcp://127.0.0.1:*").start()
    mon = MonitorServer(MonitorState("tcp://127.0.0.1:1"), port=0, control=ControlLink(server.endpoint),
                        timeout_s=1.0, max_connections=8)
    yield types.SimpleNamespace(oc=oc, mon=mon, port=mon.port, dir=tmp_path)
    mon.close()
    server.close()


def _post(port: int, body: bytes, host: bytes | None, origin: bytes | None = None) -> bytes:
    head = b"POST /control HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    head += (b"Host: " + host + b"\r\n" if host is not None else b"")
    head += (b"Origin: " + origin + b"\r\n" if origin is not None else b"")
    return _raw(port, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_monitor_refuses_a_foreign_host_dns_rebinding_both_to_read_and_to_command(room):
    evil = b"evil.example:%d" % room.port
    got = _raw(room.port, b"GET /state.json HTTP/1.1\r\nHost: " + evil + b"\r\nConnection: close\r\n\r\n")
    assert _status(got) == 421 and b"is not this monitor's address" in got and b'"counts"' not in got
    got = _post(room.port, b"op=mute", evil, b"http://" + evil)
    assert _status(got) == 421 and b"http://127.0.0.1:%d/" % room.port in got
    assert _status(_post(room.port, b"op=mute", b"127.0.0.1")) == 421  # port 80 is another server
    assert not room.oc.muted and room.oc.history == []
    for host in (b"127.0.0.1:%d" % room.port, b"localhost:%d" % room.port, b"LOCALHOST:%d" % room.port,
                 b"[::1]:%d" % room.port):
        got = _raw(room.port, b"GET /state.json HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert _status(got) == 200, (host, got[:200])
    assert _status(_raw(room.port, b"GET /state.json HTTP/1.0\r\n\r\n")) == 200  # no Host: a script, not a page
    assert _status(_post(room.port, b"op=mute", b"localhost:%d" % room.port, b"http://localhost:%d" % room.port)) \
        == 303 and room.oc.muted


@pytest.mark.parametrize("length", [b"\xb2", b"\xd9\xa3", b"-5", b"1e3", b" "])
def test_monitor_a_content_length_that_is_no_ascii_number_gets_400_naming_it(room, length):
    got = _raw(room.port, b"POST /control HTTP/1.0\r\nContent-Length: " + length + b"\r\n\r\nop=mute")
    assert _status(got) == 400 and b"Content-Length: a form's length in bytes (ASCII digits)" in got
    assert not room.oc.muted


def test_monitor_two_different_content_lengths_get_400(room):
    got = _raw(room.port, b"POST /control HTTP/1.0\r\nContent-Length: 7\r\nContent-Length: 900\r\n\r\nop=mute")
    assert _status(got) == 400 and b"given 2 times" in got and not room.oc.muted


def test_monitor_a_body_shorter_than_its_length_gets_408_and_frees_its_thread(room):
    got = _raw(room.port, b"POST /control HTTP/1.0\r\nContent-Length: 1000\r\n\r\nop=mute&")  # 8 bytes come
    assert _status(got) == 408 and b"did not come within 1 s" in got and not room.oc.muted
    with socket.create_connection(("127.0.0.1", room.port), timeout=20) as s:
        s.sendall(b"G")  # one byte, then nothing: the server hangs up at its timeout
        assert s.recv(100) == b""


def test_monitor_idle_connections_beyond_the_cap_get_503_and_a_correct_request_is_served():
    from realtime.monitor import MonitorServer, MonitorState

    mon = MonitorServer(MonitorState("tcp://127.0.0.1:1"), port=0, timeout_s=60.0, max_connections=8)
    held = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", mon.port), timeout=20)
            s.sendall(b"G")  # one byte of a request, then nothing
            held.append(s)
        assert _status(_raw(mon.port, b"GET /state.json HTTP/1.0\r\n\r\n")) == 200  # 5 open, 8 allowed
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", mon.port), timeout=20))
        busy = wait_until(lambda: (r := _raw(mon.port, b"GET / HTTP/1.0\r\n\r\n")) and _status(r) == 503 and r)
        assert busy and b"the monitor is busy (8 connections open)" in busy
        for s in held:
            s.close()
        held.clear()
        assert wait_until(lambda: _status(_raw(mon.port, b"GET /state.json HTTP/1.0\r\n\r\n")) == 200)
    finally:
        for s in held:
            s.close()
        mon.close()


def test_monitor_pages_are_served_while_the_session_keeps_the_status_poll_waiting(tmp_path):
    from realtime.monitor import ControlLink, MonitorServer, MonitorState

    ctx = zmq.Context()
    stuck = ctx.socket(zmq.REP)  # a session that takes the status request and never answers
    stuck.setsockopt(zmq.LINGER, 0)
    port = stuck.bind_to_random_port("tcp://127.0.0.1")
    link = ControlLink(f"tcp://127.0.0.1:{port}", timeout_s=60.0)
    mon = MonitorServer(MonitorState("tcp://127.0.0.1:1"), port=0, control=link)
    try:
        assert stuck.poll(20_000), "the monitor did not ask for the sound's state on its own"
        stuck.recv()
        for path in ("", "panel", "state.json", ""):
            with urllib.request.urlopen(mon.url + path, timeout=20) as r:  # the poll is still waiting
                body = r.read().decode()
                assert r.status == 200
        snap = json.loads(urllib.request.urlopen(mon.url + "state.json", timeout=20).read())
        assert snap["sound"] is None and snap["control"]["age_s"] is None
        assert "sound: unknown" in body
    finally:
        mon.close()
        stuck.close(0)
        ctx.destroy(0)


def test_monitor_state_says_how_old_the_sound_s_state_is(room):
    snap = wait_until(lambda: (s := json.loads(_raw(room.port, b"GET /state.json HTTP/1.0\r\n\r\n")
                                               .partition(b"\r\n\r\n")[2]))["sound"] is not None and s)
    assert snap["sound"]["muted"] is False and 0 <= snap["control"]["age_s"] < 3600
    from realtime.monitor_control import render_sound

    snap["control"]["answered_unix"] = time.time() - 42  # as if the session last answered 42 s ago
    assert "(as the session said 42 s ago)" in render_sound(snap)
