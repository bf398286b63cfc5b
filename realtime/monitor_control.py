"""The control-room monitor's hand on the session's sound: the link to its ``--control`` endpoint, the sound's
line and buttons on the page, and the checks on the buttons' POST (:mod:`realtime.monitor` serves them).

The buttons are plain HTML forms that POST ``op`` (and ``value`` in dB for a
level) to ``/control``; :func:`parse_form` turns the body into an operator
command (:mod:`protocols.operator`) or names the field at fault,
:func:`foreign_host` refuses a request for a name that is not this monitor's
(DNS rebinding), :func:`cross_site` refuses a post from another site's page,
and :class:`ControlLink` forwards the command (``source`` ``monitor``) and
keeps what the session said, asking for the sound's state in the background
so a page never waits for a session that is down.
"""

from __future__ import annotations

import html
import ipaddress
import logging
import math
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import zmq

from protocols.errors import MessageError
from protocols.operator import MAX_LEVEL_DB, MAX_NOTE_CHARS, MIN_LEVEL_DB, OperatorCommand

from .transport import TransportError

log = logging.getLogger("b2m.monitor")

__all__ = ["ControlLink", "render_sound", "cross_site", "foreign_host", "own_names", "parse_form", "LEVEL_STEP_DB",
           "MAX_FORM_BYTES"]

LEVEL_STEP_DB = 3.0  # the level buttons' step
MAX_FORM_BYTES = 1024  # longest POST body taken
ERROR_SHOWN_S = 30.0  # a command's error stays in red this long even if the session answered since
STALE_S = 5.0  # the sound's state older than this is shown with its age


class ControlLink:
    """The monitor's hand on the session's sound: its ``--control`` endpoint, asked and commanded.

    Parameters
    ----------
    endpoint : str
        The session's ``--control`` endpoint, e.g. ``tcp://10.0.0.5:5557``.
    curve : realtime.transport.CurveClient, optional
        The keys of the results link (the session's public key as server key).
    timeout_s : float
        How long a command or status waits for the session.
    poll_s : float
        The sound's state is asked for at most this often (:meth:`poll`; in
        the background after :meth:`start`).

    Every answer is kept (:attr:`sound`, the session's state after it); a
    refusal or a session that does not answer is kept as :attr:`last_error`
    with its time. Nothing here raises on a failed exchange: the page shows it.
    """

    SOURCE = "monitor"

    def __init__(self, endpoint: str, curve=None, timeout_s: float = 2.0, poll_s: float = 1.0):
        from .session.operator import send_command  # here: the session package is only needed with --control

        try:  # a malformed endpoint is an error now, not a message on the page at every request
            probe = zmq.Context.instance().socket(zmq.REQ)
            try:
                probe.setsockopt(zmq.LINGER, 0)
                probe.connect(endpoint)
            finally:
                probe.close(0)
        except zmq.ZMQError as e:
            raise ValueError(f"--control {endpoint!r}: not a ZeroMQ endpoint ({e}); give the session's --control "
                             "endpoint, e.g. tcp://127.0.0.1:5557") from None
        self._send_command = send_command
        self.endpoint, self.curve = endpoint, curve
        self.timeout_s, self.poll_s = float(timeout_s), float(poll_s)
        self._lock = threading.Lock()  # the fields below
        self._busy = threading.Lock()  # one exchange with the session at a time
        self._asked = -math.inf  # monotonic time of the last exchange's end
        self.sound: dict | None = None  # the session's state, as it last said it
        self.answered_unix: float | None = None  # when it last said it
        self.last_error: dict | None = None  # {"message", "time_unix", "kind": "refused" or "failed"}
        self.sent = self.refused = self.failed = 0
        self.asked_once = threading.Event()  # the first exchange has ended (answered or not)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> "ControlLink":
        """Ask for the sound's state every ``poll_s`` s on a thread of its own (a page then never waits for it)."""
        if self._poller is None:
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll_loop, name="b2m-monitor-control", daemon=True)
            self._poller.start()
        return self

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # never fatal: the next round tries again
                log.exception("operator control: the status poll failed")
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """End the background polling (:meth:`start`)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(min(self.timeout_s, 2.0) + 0.5)  # an exchange under way ends on its own (daemon)
            self._poller = None

    def command(self, cmd: OperatorCommand) -> bool:
        """Forward one command (waits for any exchange under way); True if the session carried it out."""
        with self._busy:
            return self._ask(cmd)

    def poll(self) -> None:
        """Ask for the sound's state unless it was asked less than ``poll_s`` ago or an exchange is under way."""
        if time.monotonic() - self._asked < self.poll_s or not self._busy.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._asked >= self.poll_s:
                self._ask(OperatorCommand("status", None, self.SOURCE))
        finally:
            self._busy.release()

    def _ask(self, cmd: OperatorCommand) -> bool:
        what = (f"level {cmd.value:g} dB" if cmd.op == "level" else
                f"soundcheck {'on' if cmd.value else 'off'}" if cmd.op == "soundcheck" else
                "the note" if cmd.op == "note" else cmd.op)
        try:
            reply = self._send_command(self.endpoint, cmd, curve=self.curve, timeout_s=self.timeout_s)
        except Exception as e:  # no session there, wrong keys, a reply not understood: shown, never fatal
            self._fail(str(e) if isinstance(e, TransportError) else
                       f"{what}: the exchange with {self.endpoint} failed ({type(e).__name__}: {e})", "failed")
            return False
        finally:
            self._asked = time.monotonic()
            self.asked_once.set()
        if not reply["ok"]:
            self._fail(f"the session refused {what}: {reply['error']}", "refused")
            return False
        with self._lock:
            self.sound, self.answered_unix = dict(reply["state"]), time.time()
            if cmd.op != "status":
                self.sent += 1
        return True

    def _fail(self, message: str, count: str) -> None:
        with self._lock:
            last = self.last_error
            again = last is not None and last["message"] == message and \
                (self.answered_unix is None or self.answered_unix < last["time_unix"])
            log.log(logging.DEBUG if again else logging.WARNING, "operator control: %s", message)  # once, not per poll
            self.last_error = {"message": message, "time_unix": time.time(), "kind": count}
            setattr(self, count, getattr(self, count) + 1)

    def snapshot(self) -> dict:
        """``sound`` (the session's last state, None before it answered) and ``control`` (the link's own:
        ``answered_unix`` and ``age_s``, how long ago the session last answered, None before)."""
        with self._lock:
            age = None if self.answered_unix is None else max(0.0, time.time() - self.answered_unix)
            return {"sound": None if self.sound is None else dict(self.sound),
                    "control": {"endpoint": self.endpoint, "answered_unix": self.answered_unix, "age_s": age,
                                "last_error": None if self.last_error is None else dict(self.last_error),
                                "commands_sent": self.sent, "refused": self.refused, "failed": self.failed}}


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _clock(t: float | None) -> str:
    return "?" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def _button(label: str, op: str, value: float | None = None, *, disabled: bool = False, title: str = "") -> str:
    field = "" if value is None else f'<input type="hidden" name="value" value="{value:.1f}">'
    attrs = (" disabled" if disabled else "") + (f' title="{html.escape(title)}"' if title else "")
    return (f'<form method="post" action="/control"><input type="hidden" name="op" value="{op}">{field}'
            f'<button type="submit"{attrs}>{label}</button></form>')


def render_sound(snap: dict) -> str:
    """The sound's line, the operator's buttons and the link's last error ("" without --control)."""
    ctl = snap.get("control")
    if not ctl:
        return ""
    e, sound, err = html.escape, snap.get("sound"), ctl.get("last_error")
    now = time.time()
    down = err is not None and err.get("kind") != "refused" and \
        (ctl.get("answered_unix") is None or err["time_unix"] >= ctl["answered_unix"])  # the last exchange failed
    level = _number(sound.get("level_db")) if sound is not None else None
    if sound is None:
        line = "unknown (the session has not answered yet)"
    else:
        if sound.get("muted"):
            line = '<span class="bad">MUTED</span>' + ("" if level is None else
                                                       f" (level {level + 0.0:.1f} dB when unmuted)")
        else:
            line = "level ?" if level is None else f"level {level + 0.0:.1f} dB"
            if _number(sound.get("level_dbfs")) is not None:
                line += f" ({sound['level_dbfs'] + 0.0:.1f} dBFS RMS)"
        line += f" since {_clock(_number(sound.get('since_unix')))}"
        line += f" by {e(str(sound['source']))}" if sound.get("source") else " (as the session started)"
        sent = _number(sound.get("output_dbfs"))
        if sound.get("soundcheck"):
            line += "; sound check playing"
        if sent is not None:
            line += "; sending out silence" if sent <= -120 else f"; sending out {sent:.1f} dBFS RMS"
        answered = _number(ctl.get("answered_unix"))
        age = None if answered is None else now - answered
        if down:
            ago = "" if age is None else f", {age:.0f} s ago"
            line = f'<span class="old">last known ({_clock(answered)}{ago}): {line}</span>'
        elif age is not None and age > STALE_S:
            line += f' <span class="old">(as the session said {age:.0f} s ago)</span>'
    out = [f'<div class="controls"><p>sound: {line}</p><div>']
    out.append(_button("Mute", "mute"))
    out.append(_button("Unmute", "unmute"))
    for label, step in (("Level &minus;3 dB", -LEVEL_STEP_DB), ("Level +3 dB", LEVEL_STEP_DB)):
        if level is None:
            out.append(_button(label, "level", disabled=True, title="the level is not known yet"))
        else:
            to = min(MAX_LEVEL_DB, max(MIN_LEVEL_DB, level + step))
            out.append(_button(label, "level", to, disabled=to == level, title=f"to {to:.1f} dB"))
    checking = bool(sound and sound.get("soundcheck"))
    out.append(_button("Stop sound check" if checking else "Sound check", "soundcheck", 0.0 if checking else 1.0,
                       title="before a run: the neutral clip plays, to set the level with the participant"))
    out.append(f'<form method="post" action="/control"><input type="hidden" name="op" value="note">'
               f'<input type="text" name="value" maxlength="{MAX_NOTE_CHARS}" size="40" '
               f'placeholder="a note for the record, e.g. participant coughed" required>'
               f'<button type="submit">Note</button></form>')
    out.append("</div>")
    if err is not None:
        current = down or now - err["time_unix"] < ERROR_SHOWN_S
        out.append(f'<p class="{"bad" if current else "old"}">{"" if current else "earlier: "}'
                   f'{_clock(err["time_unix"])}: {e(err["message"])}</p>')
    out.append("</div>")
    return "".join(out)


def _origin(url: str | None) -> tuple[str, str, int | None] | None:
    """(scheme, host, port or None) of an http(s) URL, None if it is not one (``null``, garbage)."""
    try:
        u = urlsplit(url or "")
        if u.scheme not in ("http", "https") or not u.hostname:
            return None
        return u.scheme, u.hostname.lower(), u.port
    except ValueError:  # a port that is not a number
        return None


def _host_port(value: str) -> tuple[str, int | None] | None:
    """(host, port or None) of a ``Host`` header's value, the host lower-case and without IPv6 brackets."""
    try:
        u = urlsplit(f"//{value}")
        return (u.hostname or "").lower(), u.port
    except ValueError:  # a port that is not a number, an unclosed bracket
        return None


def _ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def own_names(bound_host: str) -> set[str]:
    """The host names a request to a monitor bound to ``bound_host`` may give: that host, localhost, 127.0.0.1
    and ::1; for a wildcard bind (``0.0.0.0``, ``::``) also this computer's name (any IP address is taken
    then: DNS rebinding needs a name)."""
    names = {bound_host.strip("[]").lower(), "localhost", "127.0.0.1", "::1"}
    if bound_host in ("", "0.0.0.0", "::"):
        for name in (socket.gethostname(), socket.getfqdn()):
            names.add(name.lower())
    return names


def foreign_host(host: str | None, names: set[str], port: int, wildcard: bool = False) -> str | None:
    """Why a request's ``Host`` is not this monitor's (None: it is, or there is none, as from a script).

    A page on another site can point its own name at this computer (DNS
    rebinding); the browser then sends that name as ``Host`` (and as
    ``Origin``), so the name is what tells. ``names``: :func:`own_names`;
    ``port``: the port served; ``wildcard``: any IP address is taken too.
    """
    if host is None:
        return None
    hp = _host_port(host.strip())
    if hp is not None:
        name, their_port = hp
        if (their_port or 80) == port and (name in names or (wildcard and _ip(name))):
            return None
    ours = sorted(n if ":" not in n else f"[{n}]" for n in names)
    return (f"Host {host[:100]!r} is not this monitor's address: open it as http://{ours[0]}:{port}/ "
            f"(it answers to {', '.join(f'{n}:{port}' for n in ours)})")


def cross_site(headers) -> str | None:
    """Why a POST with these headers comes from another site (None: it does not, or cannot be told).

    The page's own forms post from the page, so a browser's ``Origin`` (or,
    lacking it, ``Referer``) names the same host:port as the ``Host`` it
    asked; another site's page cannot make it so. A request with neither
    (a script, curl) is taken.
    """
    name = "Origin" if headers.get("Origin") is not None else "Referer"
    source = headers.get(name)
    if source is None:
        return None
    theirs, ours = _origin(source), _origin(f"http://{headers.get('Host') or ''}")
    default = {"http": 80, "https": 443}
    if theirs is not None and ours is not None and theirs[1] == ours[1] and \
            (theirs[2] or default[theirs[0]]) == (ours[2] or default[theirs[0]]):
        return None
    return (f"refused: this command comes from another site ({name} {source!r}, the monitor is "
            f"{headers.get('Host')!r}); use the monitor's own page")


def parse_form(headers, body: bytes) -> OperatorCommand:
    """The operator command of a button's POST body (``op``, and ``value``: dB for ``level``, 1 or 0 for
    ``soundcheck``, the text of a ``note``).

    Raises :class:`~protocols.errors.MessageError` naming the field at fault.
    """
    kind = headers.get("Content-Type")
    if kind is not None and kind.split(";", 1)[0].strip().lower() != "application/x-www-form-urlencoded":
        raise MessageError("Content-Type", f"the buttons post application/x-www-form-urlencoded; got {kind!r}")
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=4)
    except (UnicodeDecodeError, ValueError) as e:
        raise MessageError("body", f"not a form (op=...&value=...): {e}") from None
    for name, values in fields.items():
        if name not in ("op", "value"):
            raise MessageError(name[:40], "unknown field (a button posts op and, for level, value)")
        if len(values) > 1:
            raise MessageError(name, f"given {len(values)} times")
    op = fields.get("op", [None])[0]
    if op is None:
        raise MessageError("op", "missing: mute, unmute, level, soundcheck or note")
    raw, value = fields.get("value", [None])[0], None
    if op == "note":  # the operator's log line: text, checked by OperatorCommand (one printable line)
        value = raw
    elif raw is not None:
        try:
            value = float(raw)
        except ValueError:
            raise MessageError("value", f"a number (dB for level, 1 or 0 for soundcheck); got {raw[:40]!r}") \
                from None
    elif op == "level":
        raise MessageError("value", f"level needs a value in dB ({MIN_LEVEL_DB:g} to {MAX_LEVEL_DB:g})")
    return OperatorCommand(op, value, ControlLink.SOURCE)  # checks op, the range, no value with mute
