"""The operator's control in process: OperatorControl's state, record and restore, ControlServer's replies to bad
frames, and operator_events (the export's rows) against rows computed by hand.

With ``types.SimpleNamespace(output=None)`` as the engine nothing sounds and the state is recorded only; with a
real SessionEngine on a real WavSink the gain is checked in the rendered samples against the documented
raised cosine, ``g0 + (g1 - g0) * (1 - cos(pi (i + 1) / n)) / 2``."""

from __future__ import annotations

import logging
import os
import shutil
import time
import types

import msgpack
import numpy as np
import pytest
import soundfile as sf
from session_kit import kit_fixture

from protocols.operator import OperatorCommand, decode_reply, encode_command
from realtime.session.bids import EVENT_COLUMNS, operator_events
from realtime.session.operator import (OPERATOR_COLUMNS, OPERATOR_FILE, RAMP_S, Busy, ControlServer,
                                       OperatorControl, db_to_gain, read_operator)

SR = 48000
NO_AUDIO = types.SimpleNamespace(output=None)


def mute(source="cli"):
    return OperatorCommand("mute", None, source)


def unmute(source="cli"):
    return OperatorCommand("unmute", None, source)


def level(db, source="cli"):
    return OperatorCommand("level", db, source)


def status():
    return OperatorCommand("status", None, "cli")


def lines(path) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


# ---------------------------------------------------------------------------- state, without audio


def test_apply_returns_the_state_and_records_each_change(tmp_path):
    oc = OperatorControl(NO_AUDIO, tmp_path, level_dbfs=-20.0)
    assert oc.state() == {"muted": False, "level_db": 0.0, "level_dbfs": -20.0, "since_unix": oc.since,
                          "source": None, "commands": 0, "soundcheck": False, "output_dbfs": None}
    assert oc.alert() is None and not os.path.exists(tmp_path / OPERATOR_FILE)
    t0 = time.time()
    s = oc.apply(mute("keyboard"))
    assert s == oc.state()
    assert s["muted"] is True and s["level_db"] == 0.0 and s["commands"] == 1 and s["source"] == "keyboard"
    assert t0 <= s["since_unix"] <= time.time()
    assert "keyboard" in oc.alert() and oc.describe() == "muted"
    s = oc.apply(level(-6.0, "monitor"))          # a level while muted: still muted, the level remembered
    assert (s["muted"], s["level_db"], s["level_dbfs"], s["commands"]) == (True, -6.0, -26.0, 2)
    s = oc.apply(unmute())
    assert (s["muted"], s["level_db"], s["commands"]) == (False, -6.0, 3)
    assert oc.alert() is None and oc.describe() == "level -6.0 dB (-26.0 dBFS RMS)"
    assert [r["command"] for r in oc.history] == ["mute", "level", "unmute"]
    assert oc.summary()["unwritten"] == 0 and len(oc.summary()["changes"]) == 3
    assert len(lines(tmp_path / OPERATOR_FILE)) == 1 + 3


def test_a_repeated_command_is_answered_not_recorded_and_status_changes_nothing(tmp_path):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    first = oc.apply(mute())
    since = oc.since
    again = oc.apply(mute("someone-else"))
    assert again == first and again["commands"] == 1 and oc.since == since and oc.source == "cli"
    assert oc.apply(status()) == first
    oc.apply(level(-3.0))
    assert oc.apply(level(-3.0))["commands"] == 2                  # the same level again: not a change
    assert oc.apply(status())["commands"] == 2
    assert [r["command"] for r in read_operator(tmp_path)] == ["mute", "level"]
    assert len(lines(tmp_path / OPERATOR_FILE)) == 1 + 2


def test_without_a_record_dir_nothing_is_written(tmp_path):
    oc = OperatorControl(NO_AUDIO, None)
    assert oc.apply(mute())["commands"] == 1
    assert oc.path is None and oc.summary()["unwritten"] == 0 and os.listdir(tmp_path) == []


def test_operator_rows_round_trip_through_read_operator_with_types(tmp_path):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    oc.apply(mute("cli"))
    oc.apply(level(-12.5, "monitor"))
    oc.apply(unmute("keyboard"))
    oc.apply(level(0, "script one"))
    assert lines(tmp_path / OPERATOR_FILE)[0].split("\t") == list(OPERATOR_COLUMNS)
    rows = read_operator(tmp_path)
    assert rows == oc.history                       # every value as it was, time_unix to the last bit
    assert [(r["command"], r["value"], r["source"], r["muted"], r["level_db"], r["clock"], r["at_s"])
            for r in rows] == [("mute", None, "cli", True, 0.0, "none", None),
                               ("level", -12.5, "monitor", True, -12.5, "none", None),
                               ("unmute", None, "keyboard", False, -12.5, "none", None),
                               ("level", 0.0, "script one", False, 0.0, "none", None)]
    for r in rows:
        assert type(r["time_unix"]) is float and type(r["muted"]) is bool and type(r["level_db"]) is float
        assert r["value"] is None or type(r["value"]) is float
    assert read_operator(tmp_path / "nowhere") == []


def test_db_to_gain_is_the_amplitude_ratio():
    assert db_to_gain(0.0) == 1.0
    assert db_to_gain(-6.0) == pytest.approx(10 ** (-6 / 20), rel=1e-15)
    assert db_to_gain(-40.0) == pytest.approx(0.01, rel=1e-12)
    assert db_to_gain(-6.0, muted=True) == 0.0 and db_to_gain(0.0, True) == 0.0


# ---------------------------------------------------------------------------- restore


def test_a_continued_session_comes_back_muted_with_the_same_commands(tmp_path, caplog):
    first = OperatorControl(NO_AUDIO, tmp_path, level_dbfs=-18.0)
    first.apply(level(-9.0, "monitor"))
    first.apply(mute("keyboard"))
    with caplog.at_level(logging.WARNING, logger="b2m.session"):
        again = OperatorControl(NO_AUDIO, tmp_path, level_dbfs=-18.0)
    assert again.state() == first.state()
    assert (again.muted, again.level_db, again.source, again.state()["commands"]) == (True, -9.0, "keyboard", 2)
    assert again.since == first.since
    assert "continuing with the operator's last setting: muted" in caplog.text
    assert again.apply(mute())["commands"] == 2                    # still muted: nothing to do
    assert again.apply(unmute())["commands"] == 3
    assert len(lines(tmp_path / OPERATOR_FILE)) == 1 + 3          # appended, one header


def test_a_truncated_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    oc.apply(mute())
    oc.apply(unmute())
    with open(tmp_path / OPERATOR_FILE, "a") as f:
        f.write("1700000000.5\tmute\tn/a\tcli\ttr")              # the crash came mid-row
    with caplog.at_level(logging.WARNING, logger="b2m.session"):
        rows = read_operator(tmp_path)
        again = OperatorControl(NO_AUDIO, tmp_path)
    assert [r["command"] for r in rows] == ["mute", "unmute"]
    assert "operator.tsv line 4 is not a complete row" in caplog.text
    assert again.muted is False and again.state()["commands"] == 2


def test_the_change_after_a_truncated_line_is_recorded(tmp_path):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    oc.apply(mute())
    oc.apply(unmute())
    with open(tmp_path / OPERATOR_FILE, "a") as f:
        f.write("1700000000.5\tmute\tn/a\tcli\ttr")
    again = OperatorControl(NO_AUDIO, tmp_path)
    again.apply(mute("after-crash"))
    assert [r["source"] for r in read_operator(tmp_path)][-1] == "after-crash"
    assert OperatorControl(NO_AUDIO, tmp_path).muted is True


# ---------------------------------------------------------------------------- a disk that refuses


def _refuse_directory(path):
    os.mkdir(path)


def _refuse_dev_full(path):
    os.symlink("/dev/full", path)


def _allow(path):
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


@pytest.mark.parametrize("refuse", [_refuse_directory, _refuse_dev_full], ids=["a-directory", "disk-full"])
def test_a_refused_write_is_held_in_memory_and_written_with_the_next_change(tmp_path, refuse, caplog):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    path = str(tmp_path / OPERATOR_FILE)
    refuse(path)
    with caplog.at_level(logging.ERROR, logger="b2m.session"):
        s = oc.apply(mute("keyboard"))
    assert s["muted"] is True and s["commands"] == 1                # the change is made all the same
    assert oc.summary()["unwritten"] == 1
    assert "could not record the operator's change" in caplog.text and "1 change(s) held" in caplog.text
    oc.apply(level(-6.0))                                           # still refused: both held
    assert oc.summary()["unwritten"] == 2
    _allow(path)
    oc.apply(unmute())
    assert oc.summary()["unwritten"] == 0
    assert lines(path)[0].split("\t") == list(OPERATOR_COLUMNS) and len(lines(path)) == 1 + 3
    assert read_operator(tmp_path) == oc.history
    assert [(r["command"], r["source"], r["muted"]) for r in oc.history] == \
        [("mute", "keyboard", True), ("level", "cli", True), ("unmute", "cli", False)]


# ---------------------------------------------------------------------------- with a real engine and WAV sink


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


@pytest.fixture
def engine(kit, tmp_path):
    """A real SessionEngine (the kit's bundle and library) playing into a real WavSink at 48 kHz."""
    from music.library import Library
    from realtime.audio import WavSink
    from realtime.decoder import Decoder
    from realtime.session import SessionEngine

    sink = WavSink(str(tmp_path / "feedback.wav"), SR, 2, blocksize=256).start()
    eng = SessionEngine(Decoder(kit.bundle), Library(kit.library), sink)
    yield eng
    sink.close()


def _noise(seed_rng, n=4801):
    return np.ascontiguousarray(seed_rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32))


def _looped(src, n):
    return src[np.arange(n) % src.shape[0]].astype(np.float64)


def _raised(n):
    return (1 - np.cos(np.pi * (np.arange(n) + 1) / n)) / 2


def test_commands_ramp_the_sink_at_the_frame_rendered_and_the_record_says_when(engine, tmp_path, rng):
    sink = engine.output
    src = _noise(rng)
    sink.schedule_switch(0, src, 0)
    rec = tmp_path / "session"
    rec.mkdir()
    oc = OperatorControl(engine, rec, level_dbfs=-20.0)
    n = int(round(RAMP_S * SR))                                     # 2400
    sink.advance_to(4800)
    oc.apply(mute("keyboard"))
    sink.advance_to(9600)
    oc.apply(level(-6.0))                                           # while muted: silent still
    sink.advance_to(14400)
    oc.apply(unmute())
    sink.advance_to(24000)
    assert sink.current_gain() == pytest.approx(10 ** (-6 / 20), rel=1e-12)
    sink.close()
    got, _ = sf.read(sink.path, dtype="float64", always_2d=True)
    g6 = 10 ** (-6 / 20)
    g = np.ones(24000)
    g[4800:4800 + n] = 1.0 + (0.0 - 1.0) * _raised(n)
    g[4800 + n:14400] = 0.0
    g[14400:14400 + n] = 0.0 + (g6 - 0.0) * _raised(n)
    g[14400 + n:] = g6
    np.testing.assert_allclose(got, _looped(src, 24000) * g[:, None], rtol=0, atol=2e-6)
    assert not np.any(got[4800 + n:14400])
    rows = read_operator(rec)
    assert [(r["command"], r["clock"], r["at_s"]) for r in rows] == \
        [("mute", "session", 0.1), ("level", "session", 0.2), ("unmute", "session", 0.3)]
    gains = [(r["frame"], r["gain"]) for r in sink.executed() if r["kind"] == "gain"]
    assert gains == [(4800, 0.0), (9600, 0.0), (14400, pytest.approx(g6, rel=1e-12))]
    # and the export's rows for a run that began at session time 0.05 s and lasted 1 s
    ev = operator_events(rows, {"session": 0.05, "wall": None}, 1.0)
    assert [(e["trial_type"], e["onset"], e["duration"], e["level_db"]) for e in ev] == \
        [("operator_mute", pytest.approx(0.05), pytest.approx(0.2), "n/a"),
         ("operator_level", pytest.approx(0.15), pytest.approx(0.85), "-6")]


def test_a_continued_session_is_silent_from_its_first_frame(engine, tmp_path, rng):
    rec = tmp_path / "session"
    rec.mkdir()
    OperatorControl(NO_AUDIO, rec).apply(mute())                   # the session before the crash
    sink = engine.output
    oc = OperatorControl(engine, rec)
    assert oc.muted and oc.state()["commands"] == 1
    sink.schedule_switch(0, _noise(rng), 0)
    sink.advance_to(9600)
    assert sorted((r["kind"], r["frame"], r.get("gain", -1.0)) for r in sink.executed()) == \
        [("gain", 0, 0.0), ("switch", 0, -1.0)]
    sink.close()
    got, _ = sf.read(sink.path, dtype="float32", always_2d=True)
    assert got.shape == (9600, 2) and not np.any(got)


def test_a_continued_session_at_a_lower_level_plays_at_it(engine, tmp_path, rng):
    rec = tmp_path / "session"
    rec.mkdir()
    OperatorControl(NO_AUDIO, rec).apply(level(-12.0))
    sink = engine.output
    oc = OperatorControl(engine, rec)
    assert (oc.muted, oc.level_db) == (False, -12.0)
    src = _noise(rng)
    sink.schedule_switch(0, src, 0)
    sink.advance_to(4800)
    sink.close()
    got, _ = sf.read(sink.path, dtype="float64", always_2d=True)
    np.testing.assert_allclose(got, _looped(src, 4800) * 10 ** (-12 / 20), rtol=0, atol=2e-6)


def test_a_gain_the_output_refuses_leaves_the_state_and_record_unchanged(engine, tmp_path):
    sink = engine.output
    oc = OperatorControl(engine, tmp_path)
    for _ in range(len(sink.mixer._gain_slots)):                   # nothing rendered: the gain queue fills
        sink.schedule_gain(0, 1.0, 0)
    with pytest.raises(Busy, match="too many sound changes pending; try again in a moment"):  # plainly refused
        oc.apply(mute())
    assert oc.state()["muted"] is False and oc.state()["commands"] == 0
    assert read_operator(tmp_path) == []


def test_a_flood_of_sound_changes_is_refused_plainly_over_the_socket_without_a_traceback(engine, tmp_path,
                                                                                         endpoint, caplog):
    import zmq

    sink = engine.output
    oc = OperatorControl(engine, tmp_path)
    server = ControlServer(oc, endpoint).start()
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(server.endpoint)
        replies = []
        for i in range(len(sink.mixer._gain_slots) + 20):  # nothing rendered: the gain queue fills, then more
            req.send(encode_command(mute() if i % 2 == 0 else unmute()))
            assert req.poll(20_000), "the session did not answer"
            replies.append(decode_reply(req.recv()))
        refused = [r["error"] for r in replies if not r["ok"]]
        assert refused and set(refused) == {"too many sound changes pending; try again in a moment"}
        # every change the queue took is recorded, none refused is (an unmute after a refused mute changes nothing)
        assert oc.state()["commands"] == len(sink.mixer._gain_slots) == len(read_operator(tmp_path))
        assert not [r for r in caplog.records if r.exc_info], "a refusal logged a traceback"
        logged = [r for r in caplog.records if "too many sound changes pending" in r.getMessage()]
        assert 1 <= len(logged) < len(refused)
    finally:
        req.close(0)
        server.close()
        ctx.term()


# ---------------------------------------------------------------------------- the server's replies


def test_control_server_answers_bad_frames_with_the_field_name(tmp_path, endpoint):
    oc = OperatorControl(NO_AUDIO, tmp_path)
    server = ControlServer(oc, endpoint)
    try:
        cases = [
            ([], "frames: "),
            ([encode_command(mute()), b""], "frames: "),
            ([b"\xc1"], "frame: "),
            ([b"x" * 5000], "frame: "),
            ([msgpack.packb([1, 2])], "frame: "),
            ([msgpack.packb({"v": 9, "op": "mute", "source": "x"})], "v: "),
            ([msgpack.packb({"v": 1, "op": "reboot", "source": "x"})], "op: "),
            ([msgpack.packb({"v": 1, "op": "level", "value": 3.0, "source": "x"})], "value: "),
            ([msgpack.packb({"v": 1, "op": "level", "value": float("nan"), "source": "x"})], "value: "),
            ([msgpack.packb({"v": 1, "op": "mute", "value": 0, "source": "x"})], "value: "),
            ([msgpack.packb({"v": 1, "op": "mute", "source": ""})], "source: "),
            ([msgpack.packb({"v": 1, "op": "mute", "source": "x", "force": True})], "force: "),
        ]
        for frames, prefix in cases:
            reply = decode_reply(server.handle(frames))
            assert reply["ok"] is False and reply["error"].startswith(prefix), (frames, reply)
        assert server.refused == len(cases) and server.served == 0
        assert oc.state()["commands"] == 0 and oc.muted is False      # nothing bad got through
        reply = decode_reply(server.handle([encode_command(level(-6.0, "test"))]))
        assert reply["ok"] is True and reply["state"]["level_db"] == -6.0 and reply["state"]["source"] == "test"
        assert server.served == 1
    finally:
        server.close()


# ---------------------------------------------------------------------------- operator_events


REST = {k: "n/a" for k in EVENT_COLUMNS if k not in ("onset", "duration", "trial_type", "level_db")}


def ev(onset, duration, kind, level_db="n/a"):
    return {"onset": onset, "duration": duration, "trial_type": kind, **REST, "level_db": level_db}


def change(at_s, muted=False, level_db=0.0, clock="session", command="mute"):
    return {"time_unix": 1.0, "command": command, "value": None, "source": "cli", "muted": muted,
            "level_db": level_db, "clock": clock, "at_s": at_s}


def test_events_mute_then_unmute_inside_a_run():
    changes = [change(110.0, True), change(115.5, False, command="unmute")]
    assert operator_events(changes, {"session": 100.0, "wall": None}, 60.0) == [ev(10.0, 5.5, "operator_mute")]
    assert set(ev(0, 0, "x")) == set(EVENT_COLUMNS)


def test_events_a_mute_from_before_the_run_starts_at_zero_and_one_past_its_end_is_clipped():
    standing = [change(90.0, True)]                                 # muted 10 s before, never unmuted
    assert operator_events(standing, {"session": 100.0}, 60.0) == [ev(0.0, 60.0, "operator_mute")]
    before = [change(90.0, True), change(104.0, False, command="unmute")]
    assert operator_events(before, {"session": 100.0}, 60.0) == [ev(0.0, 4.0, "operator_mute")]
    late = [change(150.0, True), change(170.0, False, command="unmute")]
    assert operator_events(late, {"session": 100.0}, 60.0) == [ev(50.0, 10.0, "operator_mute")]
    over = [change(80.0, True), change(90.0, False, command="unmute"), change(165.0, True)]
    assert operator_events(over, {"session": 100.0}, 60.0) == []    # one ended before, one began after


def test_events_level_changes_carry_level_db():
    changes = [change(105.0, level_db=-6.0, command="level"), change(120.0, level_db=-12.5, command="level"),
               change(130.0, level_db=0.0, command="level"), change(140.0, level_db=-3.0, command="level")]
    assert operator_events(changes, {"session": 100.0}, 60.0) == [
        ev(5.0, 15.0, "operator_level", "-6"), ev(20.0, 10.0, "operator_level", "-12.5"),
        ev(40.0, 20.0, "operator_level", "-3")]


def test_events_a_level_set_while_muted_and_both_kinds_sorted_by_onset():
    changes = [change(110.0, True), change(112.0, True, -6.0, command="level"),
               change(115.0, False, -6.0, command="unmute"), change(130.0, False, 0.0, command="level")]
    assert operator_events(changes, {"session": 100.0}, 60.0) == [
        ev(10.0, 5.0, "operator_mute"), ev(12.0, 18.0, "operator_level", "-6")]


def test_events_on_the_wall_clock_are_placed_by_its_start():
    t0 = 1_700_000_000.0
    changes = [change(t0 + 3.25, True, clock="wall"), change(t0 + 4.0, False, clock="wall", command="unmute")]
    assert operator_events(changes, {"session": 0.0, "wall": t0}, 10.0) == [ev(3.25, 0.75, "operator_mute")]


def test_events_on_a_clock_the_run_cannot_be_placed_on_are_left_out():
    wall = [change(1_700_000_003.0, True, clock="wall"), change(1_700_000_005.0, clock="wall", command="unmute")]
    assert operator_events(wall, {"session": 100.0, "wall": None}, 60.0) == []
    assert operator_events(wall, {"session": 100.0}, 60.0) == []
    no_output = [change(None, True, clock="none"), change(None, False, clock="none", command="unmute")]
    assert operator_events(no_output, {"session": 100.0, "wall": 1_700_000_000.0}, 60.0) == []
    mixed = wall + [change(101.0, True), change(102.0, False, command="unmute")]
    assert operator_events(mixed, {"session": 100.0, "wall": None}, 60.0) == [ev(1.0, 1.0, "operator_mute")]


def test_events_no_changes_no_rows():
    assert operator_events([], {"session": 0.0, "wall": 0.0}, 60.0) == []
    assert operator_events([], {}, 60.0) == []


def test_the_consoles_keys_map_to_commands_and_stop_at_the_levels_ends():
    from realtime.session.keys import STEP_DB, key_command

    assert key_command("m", False, 0.0) == OperatorCommand("mute", source="keyboard")
    assert key_command("M", True, -6.0) == OperatorCommand("unmute", source="keyboard")
    assert key_command("-", False, -6.0) == OperatorCommand("level", -6.0 - STEP_DB, source="keyboard")
    assert key_command("=", True, -6.0) == OperatorCommand("level", -6.0 + STEP_DB, source="keyboard")
    assert key_command("+", False, -1.5) == OperatorCommand("level", 0.0, source="keyboard")  # clamped to the top
    assert key_command("-", False, -38.0) == OperatorCommand("level", -40.0, source="keyboard")
    assert key_command("+", False, 0.0) is None and key_command("-", False, -40.0) is None  # at an end: nothing
    assert key_command("x", False, 0.0) is None and key_command("\n", True, 0.0) is None
    assert key_command("s", False, 0.0) == OperatorCommand("soundcheck", 1.0, source="keyboard")
    assert key_command("s", True, -3.0, soundcheck=True) == OperatorCommand("soundcheck", 0.0, source="keyboard")


def test_the_control_socket_takes_only_listed_keys_and_refuses_an_open_network_bind(tmp_path):
    """The operator's socket can silence a session: with CURVE keys (b2m keys) only a listed client gets in."""
    from realtime.session.operator import ControlServer, send_command
    from realtime.transport import TransportError, generate_keys, load_curve_client, load_curve_server

    keys = {name: generate_keys(tmp_path / "keys", name) for name in ("session", "console", "stranger")}
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "console.key").write_bytes(open(keys["console"][0], "rb").read())
    op = OperatorControl(NO_AUDIO, tmp_path)
    with pytest.raises(TransportError, match="--insecure"):
        ControlServer(op, "tcp://0.0.0.0:*")  # a network bind with no keys: refused before binding
    srv = ControlServer(op, "tcp://127.0.0.1:*", curve=load_curve_server(keys["session"][1], str(clients))).start()
    try:
        listed = load_curve_client(keys["console"][1], keys["session"][0])
        stranger = load_curve_client(keys["stranger"][1], keys["session"][0])
        for curve in (stranger, None):  # an unlisted key, and no CURVE at all: no answer, nothing changed
            with pytest.raises(TransportError, match="no session answered"):
                send_command(srv.endpoint, mute("intruder"), curve=curve, timeout_s=0.5)
        assert op.muted is False and op.history == []
        assert send_command(srv.endpoint, mute(), curve=listed)["state"]["muted"] is True
        assert [r["source"] for r in read_operator(tmp_path)] == ["cli"]
    finally:
        srv.close()


def test_the_operators_notes_are_zero_length_events_at_their_time_within_the_run():
    from realtime.session.bids import operator_events

    def note(t, text, muted=False):
        return {"time_unix": t, "command": "note", "value": text, "source": "cli", "muted": muted,
                "level_db": 0.0, "clock": "wall", "at_s": t}

    changes = [note(99.0, "before the run"), note(103.25, "coughed", muted=True), note(119.5, "after")]
    rows = operator_events(changes, {"session": 0.0, "wall": 100.0}, 18.0)
    assert [(r["trial_type"], r["onset"], r["duration"], r["note"]) for r in rows] == \
        [("operator_note", 3.25, 0.0, "coughed")]  # a note's muted flag is the state then, not a change
