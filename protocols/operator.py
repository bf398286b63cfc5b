"""The operator's link to a running session: mute, unmute, the output level, and the state of the sound.

A session started with ``--control ENDPOINT`` answers on a ZeroMQ REP
socket. A client (``b2m control``, the control-room monitor's buttons, a
PsychoPy script) sends one command and gets one reply; both are a single
msgpack map (spec: ``protocols/README.md``, section 7).

Command::

    {"v": 1, "op": "mute" | "unmute" | "level" | "soundcheck" | "note" | "status", "value": ..., "source": str}

``value`` is the level in dB for ``level`` (:data:`MIN_LEVEL_DB` to
:data:`MAX_LEVEL_DB`: relative to the level the session was started at,
which is the loudest it plays), 1 (start) or 0 (stop) for ``soundcheck``
(the neutral clip played before a run, to set the level with the
participant), the text for ``note`` (the operator's log line, kept with its
time: "participant coughed"; one line of at most :data:`MAX_NOTE_CHARS`
printable characters), absent or None otherwise. ``source`` says who
sent it (``cli``, ``monitor``, ``keyboard``, a script's name), for the record.

Reply::

    {"v": 1, "ok": true, "state": {...}}       or      {"v": 1, "ok": false, "error": "..."}

The state: ``muted`` (bool), ``level_db`` (float), ``since_unix`` (when the
sound last changed, Unix s), ``commands`` (how many the session has
taken), ``soundcheck`` (bool) and ``output_dbfs`` (the RMS level the output
sent out over the last second, dBFS; None if unknown).
"""

from __future__ import annotations

import math

import msgpack

from .errors import MessageError

__all__ = ["OPERATOR_VERSION", "OPS", "MIN_LEVEL_DB", "MAX_LEVEL_DB", "MAX_OPERATOR_BYTES", "MAX_NOTE_CHARS",
           "OperatorCommand",
           "encode_command", "decode_command", "encode_reply", "decode_reply"]

OPERATOR_VERSION = 1
#: The commands a session takes.
OPS = ("mute", "unmute", "level", "soundcheck", "note", "status")
#: The operator's level range, dB relative to the session's own (0: as started, the loudest).
MIN_LEVEL_DB, MAX_LEVEL_DB = -40.0, 0.0
#: Longest command or reply accepted, bytes.
MAX_OPERATOR_BYTES = 4096
MAX_SOURCE_CHARS = 40
#: Longest operator's note, characters.
MAX_NOTE_CHARS = 200


class OperatorCommand:
    """One operator command (see the module docstring).

    Parameters
    ----------
    op : {"mute", "unmute", "level", "soundcheck", "note", "status"}
    value : float, str or None
        ``level``: dB, in [MIN_LEVEL_DB, MAX_LEVEL_DB]; ``soundcheck``: 1 or 0; ``note``: its text; else None.
    source : str
        Who sent it (at most 40 characters).
    """

    __slots__ = ("op", "value", "source")

    def __init__(self, op: str, value: float | str | None = None, source: str = "cli"):
        if op not in OPS:
            raise MessageError("op", f"must be one of {', '.join(OPS)}; got {op!r}")
        if op == "level":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MessageError("value", f"level needs a finite number of dB, got {value!r}")
            if not MIN_LEVEL_DB <= value <= MAX_LEVEL_DB:
                raise MessageError("value", f"level must be between {MIN_LEVEL_DB:g} and {MAX_LEVEL_DB:g} dB "
                                            f"(0 is the level the session was started at, the loudest it plays); "
                                            f"got {value:g}")
            value = float(value)
        elif op == "soundcheck":
            if isinstance(value, bool) or value not in (0, 1):
                raise MessageError("value", f"soundcheck takes 1 (start) or 0 (stop); got {value!r}")
            value = float(value)
        elif op == "note":
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_NOTE_CHARS \
                    or not value.isprintable():
                raise MessageError("value", f"a note is one line of 1 to {MAX_NOTE_CHARS} printable characters "
                                            f"(no tab or newline); got {value!r}"[:400])
        elif value is not None:
            raise MessageError("value", f"{op} takes no value; got {value!r}")
        if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_CHARS \
                or not source.isprintable():
            raise MessageError("source", f"must be a printable name of 1 to {MAX_SOURCE_CHARS} characters; "
                                         f"got {source!r}")
        self.op, self.value, self.source = op, value, source

    def __eq__(self, other):
        return isinstance(other, OperatorCommand) and (self.op, self.value, self.source) == \
            (other.op, other.value, other.source)

    def __repr__(self):
        return f"OperatorCommand({self.op!r}, {self.value!r}, source={self.source!r})"


def encode_command(cmd: OperatorCommand) -> bytes:
    """The command as one msgpack frame."""
    return msgpack.packb({"v": OPERATOR_VERSION, "op": cmd.op, "value": cmd.value, "source": cmd.source})


def _map(frame, what: str) -> dict:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise MessageError("frame", f"an operator {what} is one msgpack frame of bytes; got {type(frame).__name__}")
    if len(frame) > MAX_OPERATOR_BYTES:
        raise MessageError("frame", f"an operator {what} is at most {MAX_OPERATOR_BYTES} bytes; got {len(frame)}")
    try:
        m = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=True)
    except Exception as e:
        raise MessageError("frame", f"not a msgpack map ({type(e).__name__}: {e}); send "
                                    "protocols.operator.encode_command's bytes") from None
    if not isinstance(m, dict):
        raise MessageError("frame", f"an operator {what} is a msgpack map; got a {type(m).__name__}")
    if type(m.get("v")) is not int or m["v"] != OPERATOR_VERSION:  # not True, not 1.0
        raise MessageError("v", f"operator protocol version {OPERATOR_VERSION} expected; got {m.get('v')!r}")
    return m


def decode_command(frame) -> OperatorCommand:
    """Parse and check a command frame; a bad one raises :class:`~protocols.errors.MessageError` naming the field."""
    m = _map(frame, "command")
    extra = set(m) - {"v", "op", "value", "source"}
    if extra:
        raise MessageError(sorted(extra)[0], "unknown key in an operator command (known: v, op, value, source)")
    return OperatorCommand(m.get("op"), m.get("value"), m.get("source", "unknown"))


def encode_reply(state: dict | None = None, error: str | None = None) -> bytes:
    """A reply frame: the session's ``state`` after the command, or the ``error`` that refused it."""
    if error is not None:
        return msgpack.packb({"v": OPERATOR_VERSION, "ok": False, "error": str(error)})
    return msgpack.packb({"v": OPERATOR_VERSION, "ok": True, "state": dict(state or {})})


def decode_reply(frame) -> dict:
    """A reply as a dict with ``ok`` and ``state`` or ``error``; a malformed one raises MessageError."""
    m = _map(frame, "reply")
    if not isinstance(m.get("ok"), bool):
        raise MessageError("ok", f"an operator reply says ok true or false; got {m.get('ok')!r}")
    if m["ok"] and not isinstance(m.get("state"), dict):
        raise MessageError("state", "an ok operator reply carries the state as a map")
    if not m["ok"] and not isinstance(m.get("error"), str):
        raise MessageError("error", "a refusing operator reply says why as a string")
    return m
