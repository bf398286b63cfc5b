"""The operator's hand on the sound: mute, unmute and the level of a running session, each change recorded.

A participant squeezes the alarm ball, says over the intercom that the music
is too loud, or the operator needs silence to talk between runs: the sound
must change now, whatever the decoder is doing, and the record must say when.

- :class:`OperatorControl` holds the state (muted, and the level in dB below
  the session's ``--level-dbfs``, which is the loudest it plays) and turns a
  command into a ramp of the audio output's master gain
  (:meth:`realtime.audio.Mixer.schedule_gain`, 50 ms raised cosine). The
  decoder, the policy, the switches and the record go on underneath
  unchanged, so ``b2m session replay`` reproduces every decision as before.
- Every change is appended to ``SESSION/operator.tsv`` (flushed and synced)
  with when it was asked for and when it sounds, on the clock the export uses
  (a WAV sink's session time, or the wall clock for a device), so ``b2m
  session export`` lists muted stretches and level changes as events. A
  change the disk refuses is kept in memory and written with the next one.
- A session continued after a crash comes back as the operator left it: a
  muted session stays muted.
- While muted, an alert stands in every result (:mod:`.alerts`): the
  dashboard and the control-room monitor show it in red.
- Before the first run, a sound check (``soundcheck``) plays the neutral
  clip so the operator and the participant set the level over the scanner's
  noise; the engine plays it (:meth:`SessionEngine.soundcheck`) and ends it
  when a run's first volume comes. The state says what is actually sent out
  (``output_dbfs``, the level meter over the last second).
- :class:`ControlServer` takes commands over ZeroMQ (``b2m session --control
  ENDPOINT``; the wire is :mod:`protocols.operator`) from ``b2m control``,
  the monitor's buttons or a script; a bad message gets an error reply that
  names the field, and the server goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import os
import re
import threading
import time

import zmq

from protocols.errors import MessageError
from protocols.operator import OperatorCommand, decode_command, decode_reply, encode_command, encode_reply

from ..audio import AudioDeviceError
from ..transport import TransportError, check_endpoint, check_exposure, set_curve_server, start_authenticator
from .tables import KeptTable, read_kept

log = logging.getLogger("b2m.session")

__all__ = ["OPERATOR_FILE", "OPERATOR_COLUMNS", "RAMP_S", "MAX_NOTES", "NOTES_PER_WINDOW", "NOTE_WINDOW_S",
           "MAX_CONTROL_FRAME_BYTES", "OperatorControl", "ControlServer", "Busy", "read_operator", "db_to_gain",
           "describe_changes", "send_command", "muted_spans", "unheard_spans", "read_unheard", "unheard_at"]

OPERATOR_FILE = "operator.tsv"
#: Columns of ``operator.tsv``: when the command came (Unix s), what and who, the state after it, and
#: when it sounds on ``clock`` (``session``: a WAV sink's session time, s; ``wall``: Unix s; ``none``: no output).
OPERATOR_COLUMNS = ("time_unix", "command", "value", "source", "muted", "level_db", "clock", "at_s")
#: Every change ramps over this long (s): no click, and still "now" to a listener.
RAMP_S = 0.05
#: The measured level reported for silence (dBFS): finite, so JSON carries it.
SILENCE_DBFS = -120.0
#: The most notes a session keeps (the restored ones of a continued session count): about one every 10 s
#: for almost 3 hours, and the report stays readable. More are refused, saying so.
MAX_NOTES = 1000
#: At most this many notes in any :data:`NOTE_WINDOW_S` seconds: a person typing, not a script in a loop.
NOTES_PER_WINDOW = 10
NOTE_WINDOW_S = 30.0
#: The largest frame the control socket reads (bytes): ZeroMQ drops a peer that sends a larger one, before
#: it is held in memory. Frames between :data:`protocols.operator.MAX_OPERATOR_BYTES` and this are read and
#: refused with a reply that says so.
MAX_CONTROL_FRAME_BYTES = 64 * 1024


class Busy(ValueError):
    """A command refused for now (too many notes, too many sound changes pending): try again later."""


def db_to_gain(level_db: float, muted: bool = False) -> float:
    """The master gain (amplitude) for a level in dB, 0 when muted."""
    return 0.0 if muted else 10.0 ** (float(level_db) / 20.0)


def read_operator(session_dir) -> list[dict]:
    """The operator's changes recorded in ``SESSION/operator.tsv`` (``[]`` if none), oldest first.

    Values are typed: ``time_unix``, ``level_db`` and ``at_s`` floats (``at_s`` None for ``none``), ``muted``
    a bool, ``value`` a float, a note's text exactly as taken (``n/a`` or ``"stop"`` too), or None. A row cut
    short by a crash (the last one) is skipped with a warning.
    """
    def parse(r):
        if r["command"] == "note" and r["value"] is None:
            raise ValueError("a note without its text")
        return {"time_unix": float(r["time_unix"]), "command": r["command"],
                "value": r["value"] if r["command"] == "note" else None if r["value"] in ("", "n/a")
                else float(r["value"]),
                "source": r["source"], "muted": r["muted"] == "true", "level_db": float(r["level_db"]),
                "clock": r["clock"], "at_s": None if r["at_s"] in ("", "n/a") else float(r["at_s"])}

    return read_kept(os.path.join(os.fspath(session_dir), OPERATOR_FILE), parse)


class OperatorControl:
    """The sound's state under the operator's hand, applied to the output and recorded.

    Parameters
    ----------
    engine : SessionEngine
        Its output takes the gain (:meth:`SessionEngine.operator_gain` places
        "now" on it); no output: the state is recorded only.
    record_dir : path-like or None
        Session folder for ``operator.tsv`` (None: nothing recorded). An
        existing file is a continued session: its last state is restored.
    level_dbfs : float or None
        The session's ``--level-dbfs``, for saying what the level is in dBFS.
    """

    #: How long a sound check waits for the engine's thread (s).
    wait_s = 5.0

    def __init__(self, engine, record_dir=None, level_dbfs: float | None = None):
        self.engine = engine
        self.level_dbfs = level_dbfs
        self.path = os.path.join(os.fspath(record_dir), OPERATOR_FILE) if record_dir is not None else None
        self._table = KeptTable(self.path, OPERATOR_COLUMNS) if self.path is not None else None
        self._lock = threading.Lock()
        self.history = read_operator(record_dir) if record_dir is not None else []
        self.notes = sum(1 for r in self.history if r["command"] == "note")
        self.max_notes, self.notes_per_window, self.note_window_s = MAX_NOTES, NOTES_PER_WINDOW, NOTE_WINDOW_S
        self._note_times: collections.deque = collections.deque()  # monotonic s of the latest notes
        last = self.history[-1] if self.history else None
        self.muted = bool(last["muted"]) if last else False
        self.level_db = float(last["level_db"]) if last else 0.0
        self.since = float(last["time_unix"]) if last else time.time()
        self.source = last["source"] if last else None
        if last is not None and (self.muted or self.level_db != 0.0):
            if getattr(engine, "output", None) is not None:
                self.reapply(engine.output)  # before any sound of this process: as the operator left it
            log.warning("continuing with the operator's last setting: %s", self.describe())

    # ---- state ---------------------------------------------------------------

    def state(self) -> dict:
        """``muted``, ``level_db``, ``level_dbfs`` (None if the session plays files at their own level),
        ``since_unix``, ``source``, ``commands`` (changes so far, the restored ones included), ``soundcheck``
        and ``output_dbfs`` (what the output sent out over the last second, RMS dBFS, floored at
        :data:`SILENCE_DBFS`; None if unknown)."""
        return {"muted": self.muted, "level_db": self.level_db,
                "level_dbfs": None if self.level_dbfs is None else self.level_dbfs + self.level_db,
                "since_unix": self.since, "source": self.source, "commands": len(self.history),
                "soundcheck": bool(getattr(self.engine, "soundchecking", False)), "output_dbfs": self._sent()}

    def _sent(self) -> float | None:
        out = getattr(self.engine, "output", None)
        try:
            lv = out.level(1.0) if out is not None else None
        except Exception:  # a device gone: the alerts say so
            return None
        return None if lv is None else max(lv["rms_dbfs"], SILENCE_DBFS)

    def describe(self) -> str:
        if self.muted:
            return "muted"
        if self.level_dbfs is not None:
            return f"level {self.level_db:+.1f} dB ({self.level_dbfs + self.level_db:.1f} dBFS RMS)"
        return f"level {self.level_db:+.1f} dB"

    def alert(self) -> str | None:
        """The standing alert while muted (for every result), else None."""
        if not self.muted:
            return None
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        return (f"sound muted by the operator ({self.source}) since {when}: the participant hears no music; "
                "unmute when ready")

    # ---- commands --------------------------------------------------------------

    def apply(self, cmd: OperatorCommand) -> dict:
        """Carry out one command (from any thread) and return the state after it.

        ``status`` changes nothing. A command that leaves the state as it is
        (``mute`` while muted) is answered and not recorded. Raises
        ValueError if the output refuses the gain (the state is then unchanged),
        and :class:`Busy` (a ValueError) for a note over :data:`MAX_NOTES` or
        :data:`NOTES_PER_WINDOW`, or a sound change while the output's queue
        of them is full.
        """
        if cmd.op == "soundcheck":  # on the engine's thread, which also plays the runs' music
            return self._soundcheck(cmd)
        with self._lock:
            if cmd.op == "status":
                return self.state()
            if cmd.op == "note":  # the operator's log line: kept with its time, the sound unchanged
                self._take_note()
                now = time.time()
                self._record(cmd, "wall", now, now)
                self.notes += 1
                log.info("operator (%s): note: %s", cmd.source, cmd.value)
                return self.state()
            muted, level = self.muted, self.level_db
            if cmd.op == "mute":
                muted = True
            elif cmd.op == "unmute":
                muted = False
            else:
                level = float(cmd.value)
            if (muted, level) == (self.muted, self.level_db):
                return self.state()
            before = self.muted, self.level_db
            self.muted, self.level_db = muted, level
            try:
                clock, at_s = self._schedule()
            except AudioDeviceError as e:  # the device is down: the change stands, and goes on it when reopened
                log.warning("the sound device is down (%s): the operator's change is kept and applies when it "
                            "is reopened", e)
                clock, at_s = "none", None
            except RuntimeError as e:
                self.muted, self.level_db = before
                if "already pending" in str(e):  # the output's queue of gain changes is full (a flood of them)
                    raise Busy("too many sound changes pending; try again in a moment") from None
                raise
            except Exception:
                self.muted, self.level_db = before
                raise
            now = time.time()
            self.since, self.source = now, cmd.source
            self._record(cmd, clock, at_s, now)
            log.warning("operator (%s): %s; sound now %s", cmd.source,
                        cmd.op if cmd.value is None else f"{cmd.op} {cmd.value:+.1f} dB", self.describe())
            return self.state()

    def _take_note(self) -> None:
        """Refuse a note over the session's cap or rate (lock held); else count its time."""
        if self.notes >= self.max_notes:
            raise Busy(f"this session has {self.notes} notes already, the most it keeps ({self.max_notes}); "
                       "write further notes on paper")
        now = time.monotonic()
        while self._note_times and now - self._note_times[0] >= self.note_window_s:
            self._note_times.popleft()
        if len(self._note_times) >= self.notes_per_window:
            wait = self.note_window_s - (now - self._note_times[0])
            raise Busy(f"{len(self._note_times)} notes in the last {self.note_window_s:g} s already (the most "
                       f"taken); try again in {max(1, math.ceil(wait))} s")
        self._note_times.append(now)

    def _soundcheck(self, cmd: OperatorCommand) -> dict:
        call = getattr(self.engine, "call_soon", None)
        if call is None or getattr(self.engine, "output", None) is None:
            raise ValueError("a sound check needs a sound device: this session has no audio output")
        was = bool(getattr(self.engine, "soundchecking", False))
        fut = call(lambda: self.engine.soundcheck(bool(cmd.value)))
        try:
            playing = fut.result(timeout=self.wait_s)
        except concurrent.futures.TimeoutError:
            if fut.cancel():  # never carried out later, behind the operator's back
                raise ValueError(f"the session did not get to the sound check within {self.wait_s:g} s (is it "
                                 "busy?); try again") from None
            playing = fut.result()  # it had just begun: its answer is a moment away
        if playing == was:
            return self.state()
        with self._lock:
            self._record(cmd, "none", None, time.time())
            log.warning("operator (%s): sound check %s; sound %s", cmd.source, "on" if playing else "off",
                        self.describe())
            return self.state()

    def reapply(self, output) -> None:
        """Put the state on a new output before it plays (a device reopened; the engine's ``on_new_output``)."""
        with self._lock:
            output.schedule_gain(0, db_to_gain(self.level_db, self.muted), 0)

    def _schedule(self) -> tuple[str, float | None]:
        """Ramp the output's gain to the state's; returns the clock and the time on it when the ramp starts."""
        if getattr(self.engine, "output", None) is None:
            return "none", None
        return self.engine.operator_gain(db_to_gain(self.level_db, self.muted), RAMP_S)

    def _record(self, cmd: OperatorCommand, clock: str, at_s: float | None, now: float) -> None:
        """Keep one row (lock held): the command, the sound after it, and when it sounds on ``clock``."""
        row = {"time_unix": now, "command": cmd.op, "value": cmd.value, "source": cmd.source, "muted": self.muted,
               "level_db": self.level_db, "clock": clock, "at_s": at_s}
        self.history.append(row)
        if self._table is None:
            return
        e = self._table.append(_cell(row[k]) for k in OPERATOR_COLUMNS)
        if e is not None:  # the change is made; the record gets it with the next one
            log.error("could not record the operator's change in %s (%s): %d change(s) held in memory", self.path,
                      e.strerror or e, len(self._table.held))

    def summary(self) -> dict:
        """The state at the end and every change (this process's and the restored ones)."""
        return {**self.state(), "changes": [dict(r) for r in self.history],
                "unwritten": len(self._table.held) if self._table is not None else 0}


def muted_spans(changes) -> list[tuple[float, float | None]]:
    """Each stretch the operator had the sound muted, ``(start, end)`` in Unix s of the commands (``end`` None:
    still muted at the last row), from :func:`read_operator`'s rows (or :meth:`OperatorControl.summary`'s)."""
    spans, start = [], None
    for c in changes:
        if c["muted"] and start is None:
            start = c["time_unix"]
        elif not c["muted"] and start is not None:
            spans.append((start, c["time_unix"]))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans


def unheard_spans(changes, outages) -> list[tuple[float, float]]:
    """When the participant heard no music though the session played some: ``(start, end)`` Unix s, sorted.

    The operator's mutes (:func:`muted_spans` of ``changes``) and the sound
    device's outages (``outages``: :func:`realtime.session.audio_keeper.outage_spans`);
    one that never ended ends at infinity.
    """
    both = list(muted_spans(changes)) + [(a, b) for a, b, _ in outages]
    return sorted((a, math.inf if b is None else b) for a, b in both)


def read_unheard(session_dir) -> list[tuple[float, float]]:
    """:func:`unheard_spans` of a session folder (its ``operator.tsv`` and ``audio_outages.tsv``)."""
    from .audio_keeper import outage_spans, read_outages

    return unheard_spans(read_operator(session_dir), outage_spans(read_outages(session_dir)))


def unheard_at(spans, t: float | None) -> bool:
    """Whether Unix time ``t`` (a decision's ``decided`` stamp; None: unknown, taken as heard) falls in ``spans``."""
    return t is not None and any(a <= t < b for a, b in spans)


def describe_changes(summary: dict) -> str:
    """:meth:`OperatorControl.summary` in a line: how many changes, how long muted, the state at the end."""
    changes = [r for r in summary["changes"] if r["command"] != "note"]
    notes = len(summary["changes"]) - len(changes)
    spans = muted_spans(changes)
    muted_s = sum(b - a for a, b in spans if b is not None)
    still = bool(spans) and spans[-1][1] is None
    end = "muted at the end" if summary["muted"] else f"level {summary['level_db']:+.1f} dB at the end"
    return (f"{len(changes)} change(s); muted for {muted_s:.1f} s{' (and still)' if still else ''}; "
            f"{end}" + (f"; {notes} note(s)" if notes else ""))


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "n/a"
    return str(v)


class ControlServer:
    """A ZeroMQ REP socket that takes operator commands for an :class:`OperatorControl`, on a thread.

    Parameters
    ----------
    control : OperatorControl
    endpoint : str
        Where to bind (``tcp://127.0.0.1:5557``; port ``*``: any free one).
        A non-loopback endpoint needs ``curve`` or ``insecure``, as the scanner link.
    curve : realtime.transport.CurveServer, optional
        The session's keys: only listed clients may mute it.
    """

    def __init__(self, control: OperatorControl, endpoint: str, *, insecure: bool = False, curve=None,
                 ctx: zmq.Context | None = None):
        check_exposure(endpoint, curve=curve is not None, insecure=insecure)
        self.control = control
        self.served = self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="b2m-operator", daemon=True)
        self.ctx = ctx or zmq.Context.instance()
        self._auth = start_authenticator(self.ctx, curve)
        self.sock = self.ctx.socket(zmq.REP)
        set_curve_server(self.sock, curve)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_FRAME_BYTES)  # a larger frame drops its peer, unread
        self._refusals: dict[str, tuple[float, int]] = {}  # a refusal's text: (monotonic s logged, repeats since)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise ValueError(f"--control {endpoint}: cannot bind there ({e}); choose another port") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def start(self) -> "ControlServer":
        self._thread.start()
        return self

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):  # wakes to see the stop flag
                continue
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            self.sock.send(self.handle(frames))

    def handle(self, frames: list[bytes]) -> bytes:
        """One request's reply (never raises: a bad request gets an error reply naming the field)."""
        try:
            if len(frames) != 1:
                raise MessageError("frames", f"an operator command is 1 frame; got {len(frames)}")
            state = self.control.apply(decode_command(frames[0]))
            self.served += 1
            return encode_reply(state)
        except (MessageError, ValueError) as e:
            self.refused += 1
            self._log_refusal(str(e))
            return encode_reply(error=str(e))
        except Exception as e:  # the session goes on; the operator is told
            self.refused += 1
            log.exception("operator command failed")
            return encode_reply(error=f"the session could not carry it out ({type(e).__name__}: {e}); see its log")

    #: The same refusal is logged at most once in this many seconds (a flood is one line, with its count).
    REFUSAL_LOG_S = 10.0

    def _log_refusal(self, why: str) -> None:
        now = time.monotonic()
        kind = re.sub(r"[0-9.]+", "#", why)  # "try again in 27 s" and "in 26 s" are one kind
        key = kind if len(self._refusals) < 100 or kind in self._refusals else ""
        last, repeats = self._refusals.get(key, (-math.inf, 0))
        if now - last < self.REFUSAL_LOG_S:
            self._refusals[key] = (last, repeats + 1)
            return
        more = f" (and {repeats} more like it in the last {now - last:.0f} s)" if repeats else ""
        log.warning("operator command refused: %s%s", why, more)
        self._refusals[key] = (now, 0)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self.sock.close(0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def send_command(endpoint: str, cmd: OperatorCommand, *, curve=None, timeout_s: float = 3.0,
                 ctx: zmq.Context | None = None) -> dict:
    """Send one command to a session's ``--control`` endpoint and return its reply (``ok``, ``state`` or ``error``).

    ``curve`` is a :class:`realtime.transport.CurveClient` for a session with
    keys. Raises :class:`realtime.transport.TransportError` if no reply comes
    within ``timeout_s`` (no session there, or the keys do not match). Before
    anything is sent: :class:`realtime.transport.EndpointError` (a
    ``ValueError`` too) for an ``endpoint`` that is not one, and ``ValueError``
    for a ``timeout_s`` that is not a positive number of seconds (it would wait
    for ever).
    """
    check_endpoint(endpoint)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ValueError(f"--timeout must be a positive number of seconds, got {timeout_s!r}")
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_secretkey = curve.secret
        sock.curve_publickey = curve.public
        sock.curve_serverkey = curve.server_public
    try:
        sock.connect(endpoint)
        sock.send(encode_command(cmd))
        if not sock.poll(int(timeout_s * 1000)):
            raise TransportError(f"no session answered on {endpoint} within {timeout_s:g} s: is `b2m session` "
                                 "running with this --control endpoint (and, with CURVE, are the keys right)?")
        return decode_reply(sock.recv())
    finally:
        sock.close(0)
