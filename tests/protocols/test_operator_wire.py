"""The operator's wire (``protocols.operator``): exact round trips (hypothesis) and a typed error naming the
field for every malformed command or reply."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import MessageError
from protocols.operator import (MAX_LEVEL_DB, MAX_OPERATOR_BYTES, MIN_LEVEL_DB, OPERATOR_VERSION, OPS,
                                OperatorCommand, decode_command, decode_reply, encode_command, encode_reply)

fuzz = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

levels = st.floats(MIN_LEVEL_DB, MAX_LEVEL_DB, allow_nan=False) | st.integers(-40, 0)
sources = st.text(min_size=1, max_size=40).filter(str.isprintable)


def frame(**fields) -> bytes:
    """A command map as msgpack, version 1 unless given; ``None`` values are left out."""
    m = {"v": OPERATOR_VERSION, **fields}
    return msgpack.packb({k: v for k, v in m.items() if v is not None})


def field_of(call, *args) -> str:
    with pytest.raises(MessageError) as err:
        call(*args)
    assert str(err.value).startswith(err.value.field + ": ")
    return err.value.field


# ---------------------------------------------------------------------------- round trips


@fuzz
@given(value=levels, source=sources)
def test_level_round_trips_exactly(value, source):
    cmd = OperatorCommand("level", value, source)
    back = decode_command(encode_command(cmd))
    assert back == cmd
    assert type(back.value) is float and back.value == float(value) and back.source == source
    assert math.copysign(1.0, back.value) == math.copysign(1.0, float(value))      # even -0.0


@fuzz
@given(op=st.sampled_from(["mute", "unmute", "status"]), source=sources)
def test_commands_without_a_value_round_trip(op, source):
    back = decode_command(encode_command(OperatorCommand(op, None, source)))
    assert (back.op, back.value, back.source) == (op, None, source)


@fuzz
@given(value=st.floats(allow_nan=False).filter(lambda v: not MIN_LEVEL_DB <= v <= MAX_LEVEL_DB))
def test_every_level_outside_the_range_is_refused(value):
    assert field_of(decode_command, frame(op="level", value=value, source="cli")) == "value"
    assert field_of(OperatorCommand, "level", value) == "value"


def test_the_range_ends_are_levels_and_a_missing_source_is_unknown():
    assert decode_command(frame(op="level", value=-40.0, source="x")).value == -40.0
    assert decode_command(frame(op="level", value=0, source="x")).value == 0.0
    assert decode_command(frame(op="mute")).source == "unknown"
    assert decode_command(msgpack.packb({"v": 1, "op": "mute", "value": None, "source": "s"})).value is None
    # the frame may come as any bytes-like object
    raw = encode_command(OperatorCommand("unmute", source="monitor"))
    assert decode_command(bytearray(raw)) == decode_command(memoryview(raw)) == OperatorCommand("unmute", None,
                                                                                                "monitor")
    assert set(OPS) == {"mute", "unmute", "level", "soundcheck", "note", "status"}


def test_replies_round_trip_both_ways():
    state = {"muted": True, "level_db": -6.5, "level_dbfs": None, "since_unix": 1_700_000_000.25,
             "source": "keyboard", "commands": 3}
    ok = decode_reply(encode_reply(state))
    assert ok == {"v": OPERATOR_VERSION, "ok": True, "state": state}
    assert decode_reply(encode_reply()) == {"v": OPERATOR_VERSION, "ok": True, "state": {}}
    err = decode_reply(encode_reply(error="value: level must be between -40 and 0 dB"))
    assert err == {"v": OPERATOR_VERSION, "ok": False, "error": "value: level must be between -40 and 0 dB"}
    assert decode_reply(encode_reply(state, error=ValueError("no"))) == {"v": 1, "ok": False, "error": "no"}


@fuzz
@given(muted=st.booleans(), level=levels, source=st.none() | sources, commands=st.integers(0, 2**31))
def test_any_state_round_trips(muted, level, source, commands):
    state = {"muted": muted, "level_db": float(level), "since_unix": 1.5, "source": source, "commands": commands}
    assert decode_reply(encode_reply(state))["state"] == state


# ---------------------------------------------------------------------------- malformed commands


@pytest.mark.parametrize("bad", ["mute", None, 7, [b"x"], {"op": "mute"}])
def test_a_command_that_is_not_bytes_is_refused(bad):
    assert field_of(decode_command, bad) == "frame"


def test_a_command_too_long_is_refused():
    long = frame(op="mute", source="x", pad="y" * MAX_OPERATOR_BYTES)
    assert len(long) > MAX_OPERATOR_BYTES
    with pytest.raises(MessageError, match=f"at most {MAX_OPERATOR_BYTES} bytes") as err:
        decode_command(long)
    assert err.value.field == "frame"
    assert field_of(decode_command, b"\x00" * (MAX_OPERATOR_BYTES + 1)) == "frame"


@pytest.mark.parametrize("bad", [b"", b"\xc1", b"\x81", msgpack.packb({"v": 1}) + b"\x00",
                                 msgpack.packb({1: "mute"}), b"\xdf\xff\xff\xff\xff"])
def test_bytes_that_are_not_msgpack_are_refused(bad):
    assert field_of(decode_command, bad) == "frame"


@pytest.mark.parametrize("bad", [[1, "mute"], "mute", 1, None, b"mute", 2.5])
def test_msgpack_that_is_not_a_map_is_refused(bad):
    assert field_of(decode_command, msgpack.packb(bad)) == "frame"


@pytest.mark.parametrize("v", [0, 2, "1", None, [1]])
def test_a_wrong_version_is_refused(v):
    m = {"op": "mute", "source": "cli"}
    if v is not None:
        m["v"] = v
    assert field_of(decode_command, msgpack.packb(m)) == "v"


@pytest.mark.parametrize("op", ["reboot", "MUTE", "", None, b"mute", 1, ["mute"]])
def test_an_unknown_op_is_refused(op):
    assert field_of(decode_command, frame(op=op, source="cli") if op is not None else frame(source="cli")) == "op"


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), float("-inf"), True, False, "-6", [-6],
                                   -40.000001, 0.000001, 1, -41])
def test_a_level_without_a_good_value_is_refused(value):
    m = {"v": 1, "op": "level", "value": value, "source": "cli"}
    assert field_of(decode_command, msgpack.packb(m)) == "value"
    if value is None:       # and with the key left out
        assert field_of(decode_command, frame(op="level", source="cli")) == "value"


@pytest.mark.parametrize("op,value", [("mute", 0), ("mute", -6.0), ("unmute", False), ("status", ""),
                                      ("unmute", "loud")])
def test_a_value_on_a_command_that_takes_none_is_refused(op, value):
    assert field_of(decode_command, msgpack.packb({"v": 1, "op": op, "value": value, "source": "cli"})) == "value"


@pytest.mark.parametrize("source", ["", "x" * 41, "a\nb", "tab\there", "\x00", "bell\x07", 5, None, b"cli", ["cli"]])
def test_a_bad_source_is_refused(source):
    assert field_of(decode_command, msgpack.packb({"v": 1, "op": "mute", "source": source})) == "source"


def test_the_longest_source_is_taken():
    assert decode_command(frame(op="mute", source="é" * 40)).source == "é" * 40


def test_an_unknown_key_is_refused_by_name():
    assert field_of(decode_command, frame(op="mute", source="cli", extra=1)) == "extra"
    assert field_of(decode_command, frame(op="mute", source="cli", zeta=1, alpha=2)) == "alpha"   # the first, sorted
    # checked before the fields: a good name is not needed to learn the key is unknown
    assert field_of(decode_command, frame(op="reboot", source="", level=3)) == "level"


def test_the_fields_are_checked_in_order_op_value_source():
    assert field_of(decode_command, frame(op="reboot", value=99, source="")) == "op"
    assert field_of(decode_command, frame(op="level", value=99, source="")) == "value"


# ---------------------------------------------------------------------------- malformed replies


@pytest.mark.parametrize("raw,field", [
    ("ok", "frame"),
    (b"\xc1", "frame"),
    (b"\x00" * (MAX_OPERATOR_BYTES + 1), "frame"),
    (msgpack.packb([True]), "frame"),
    (msgpack.packb({"ok": True, "state": {}}), "v"),
    (msgpack.packb({"v": 2, "ok": True, "state": {}}), "v"),
    (msgpack.packb({"v": 1, "state": {}}), "ok"),
    (msgpack.packb({"v": 1, "ok": 1, "state": {}}), "ok"),
    (msgpack.packb({"v": 1, "ok": "true", "state": {}}), "ok"),
    (msgpack.packb({"v": 1, "ok": True}), "state"),
    (msgpack.packb({"v": 1, "ok": True, "state": [1]}), "state"),
    (msgpack.packb({"v": 1, "ok": True, "error": "x"}), "state"),
    (msgpack.packb({"v": 1, "ok": False}), "error"),
    (msgpack.packb({"v": 1, "ok": False, "error": 3}), "error"),
    (msgpack.packb({"v": 1, "ok": False, "state": {}}), "error"),
])
def test_a_malformed_reply_is_refused_by_field(raw, field):
    assert field_of(decode_reply, raw) == field


@pytest.mark.parametrize("value", [None, 2, -1, 0.5, float("nan"), True, False, "on", [1]])
def test_a_soundcheck_takes_1_or_0_only(value):
    assert field_of(decode_command, msgpack.packb({"v": 1, "op": "soundcheck", "value": value,
                                                   "source": "cli"})) == "value"


@pytest.mark.parametrize("value", [1, 0, 1.0, 0.0])
def test_a_soundcheck_round_trips_as_a_float(value):
    cmd = decode_command(encode_command(OperatorCommand("soundcheck", value, "cli")))
    assert cmd == OperatorCommand("soundcheck", float(value), "cli") and isinstance(cmd.value, float)


@pytest.mark.parametrize("value", [None, "", "   ", "x" * 201, "two\nlines", "a\ttab", 5, b"bytes", ["x"]])
def test_a_note_is_one_printable_line_of_at_most_200_characters(value):
    assert field_of(decode_command, msgpack.packb({"v": 1, "op": "note", "value": value, "source": "cli"})) == "value"


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=200)
       .filter(lambda t: t.strip() and t.isprintable()))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_note_round_trips_exactly(text):
    assert decode_command(encode_command(OperatorCommand("note", text, "cli"))).value == text
