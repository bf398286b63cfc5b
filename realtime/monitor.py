"""``b2m monitor``: the session seen from the control room, in a web browser.

The session publishes every TR's :class:`protocols.wire.Result` on its
``--results`` ZeroMQ PUB (CURVE-encrypted with keys). A monitor, on any
machine that can reach it, subscribes to that stream and serves one web page:

- ``/``: the page; it refreshes its panel every second;
- ``/panel``: the panel as HTML with inline SVG (the session's alerts in
  red, run and volume, the lag behind the scanner, what plays and since
  when, the run's temporal SNR so far, the clip timeline of the run, head
  motion, DVARS, the run's tSNR over the Training runs' curve, latency per
  stage, counts), drawn here so no script or network
  resource is needed in the browser;
- ``/state.json``: the same state for scripts.

It only reads the stream, so it cannot slow the session, and it shows
nothing the results do not hold: a blinded operator sees no condition here
either.

With the session's ``--control`` endpoint (:mod:`realtime.monitor_control`), the page
also shows the sound (muted, or the level, and what is sent out) and the
operator's buttons: Mute, Unmute, Level -3 dB and +3 dB, Sound check, and
a note field, plain HTML forms that POST to ``/control``;
the monitor forwards each as an operator command (``source`` ``monitor``,
:mod:`protocols.operator`) and redirects back to the page. A refused command
or a session that does not answer is shown on the page; a POST from another
site (its ``Origin`` or ``Referer`` not this page's ``Host``) is refused with
403. The sound's state is asked for (``status``) once a second in the
background, so a page never waits for a session that is down: it shows the
last known state, and how old it is.

Any request whose ``Host`` is not this monitor's address (the address it
serves on, ``localhost``, ``127.0.0.1`` or ``[::1]``, with its port) is
refused with 421: a page elsewhere that points its own name at this computer
(DNS rebinding) can neither read the state nor press the buttons. A
connection has :data:`HTTP_TIMEOUT_S` for each read, and at most
:data:`MAX_CONNECTIONS` are served at once (one more gets 503).

A message that is not a result is counted and shown, never fatal.
Results published before the monitor connected are not seen (PUB/SUB);
the session's own record has them all.
"""

from __future__ import annotations

import html
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import zmq

from protocols.errors import MessageError
from protocols.wire import Result, decode

from .monitor_control import MAX_FORM_BYTES, ControlLink, cross_site, foreign_host, own_names, parse_form, render_sound
from .preprocessing.qc import TSNR_MIN_VOLUMES
from .results import latency_summary
from .transport import check_endpoint, check_port

log = logging.getLogger("b2m.monitor")

__all__ = ["MonitorState", "ResultsSubscriber", "ControlLink", "MonitorServer", "render_panel"]

KEPT = 2000  # results held per run (about 50 min at TR 1.5 s)
#: Seconds a connection may take for each read (its request line, headers, body) before it is dropped.
HTTP_TIMEOUT_S = 10.0
#: Connections served at once (a browser opens a few); one more is answered 503 and closed.
MAX_CONNECTIONS = 64
#: In its first seconds, a page waits this long at most for the session's first status answer.
FIRST_STATUS_S = 3.0
STAGES = ("preprocessed", "decoded", "decided", "audio_scheduled", "total")


class MonitorState:
    """What the monitor has seen; ``add`` from the subscriber thread, ``snapshot`` from the web threads."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._runs: dict[str, deque] = {}
        self._latency = {s: deque(maxlen=KEPT) for s in STAGES}
        self.counts = {"results": 0, "switches": 0, "holds": 0, "errors": 0, "bad_messages": 0}
        self.last_bad: str | None = None
        self.last: Result | None = None
        self.last_seen: float | None = None  # unix time of the newest result

    def add(self, r: Result) -> None:
        with self._lock:
            self._runs.setdefault(r.run_id, deque(maxlen=KEPT)).append(
                (r.index, r.action, r.clip, r.fd_mm, r.flagged, r.condition, r.dvars_pct, r.tsnr, r.tsnr_training))
            for s in STAGES:
                if s in r.latency_ms:
                    self._latency[s].append(float(r.latency_ms[s]))
            self.counts["results"] += 1
            key = {"switch": "switches", "hold": "holds", "error": "errors"}.get(r.action)
            if key:
                self.counts[key] += 1
            self.last, self.last_seen = r, time.time()

    def bad(self, why: str) -> None:
        with self._lock:
            self.counts["bad_messages"] += 1
            self.last_bad = why

    def snapshot(self) -> dict:
        """The state as plain JSON types (see the module doc)."""
        with self._lock:
            r = self.last
            runs = {run_id: [{"index": i, "action": a, "clip": c, "fd_mm": fd, "flagged": fl, "condition": cond,
                              "dvars_pct": dv, "tsnr": ts, "tsnr_training": tt}
                             for i, a, c, fd, fl, cond, dv, ts, tt in rows]
                    for run_id, rows in self._runs.items()}
            lat = {s: latency_summary(q) for s, q in self._latency.items() if q}
            last = None
            if r is not None:
                acquired = r.timestamps.get("acquired")
                rows = self._runs[r.run_id]
                since = None  # the first volume of the stretch the playing clip has been playing
                for i, _, c, *_ in reversed(rows):
                    if c != r.clip:
                        break
                    since = i
                last = {"alerts": list(r.alerts),
                        "run_id": r.run_id, "index": r.index, "decoded_index": r.decoded_index, "action": r.action,
                        "clip": r.clip, "condition": r.condition, "tags": [list(t) for t in r.tags],
                        "fd_mm": r.fd_mm, "dvars_pct": r.dvars_pct, "tsnr": r.tsnr,
                        "tsnr_training": r.tsnr_training, "flagged": r.flagged,
                        "topk": [list(t) for t in r.topk], "playing_since_index": since,
                        "lag_s": (r.timestamps.get("audio_scheduled", self.last_seen) - acquired) if acquired else None}
                # lag_s: from the volume's acquisition to its music being scheduled (scanner and session clocks)
            return {"endpoint": self.endpoint, "counts": dict(self.counts), "last_bad_message": self.last_bad,
                    "seconds_since_last": None if self.last_seen is None else time.time() - self.last_seen,
                    "last": last, "latency_ms": lat, "runs": runs}


class ResultsSubscriber:
    """A thread that subscribes to a session's results PUB and feeds a :class:`MonitorState`.

    Parameters
    ----------
    endpoint : str
        The session's ``--results`` endpoint, e.g. ``tcp://10.0.0.5:5556``.
    state : MonitorState
    curve : realtime.transport.CurveClient, optional
        Keys for an encrypted results stream (``b2m keys``; the session's public key as server key).

    Raises
    ------
    realtime.transport.EndpointError
        If ``endpoint`` is not an endpoint (:func:`realtime.transport.check_endpoint`).
    """

    def __init__(self, endpoint: str, state: MonitorState, curve=None, ctx: zmq.Context | None = None):
        check_endpoint(endpoint)
        self.state = state
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        if curve is not None:
            self.sock.curve_secretkey = curve.secret
            self.sock.curve_publickey = curve.public
            self.sock.curve_serverkey = curve.server_public
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 10000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="b2m-monitor-sub", daemon=True)

    def start(self) -> "ResultsSubscriber":
        self._thread.start()
        return self

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            frames = self.sock.recv_multipart()
            try:
                msg = decode(frames)
            except Exception as e:  # one bad message is counted and shown, never fatal
                self.state.bad(f"{type(e).__name__}: {e}")
                continue
            if isinstance(msg, Result):
                self.state.add(msg)
            else:
                self.state.bad(f"a {type(msg).__name__} message on the results stream (expected results only)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close(0)


# ---- the page ---------------------------------------------------------------

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>b2m monitor</title>
<style>body{{font-family:sans-serif;margin:1em 2em;color:#222}}th{{text-align:left;padding:2px 14px 2px 0;
font-weight:normal;color:#555}}td{{padding:2px 10px 2px 0}}.bad{{color:#b00;font-weight:bold}}
h2{{font-size:1.05em;margin:1em 0 .3em}}svg{{background:#fafafa;border:1px solid #ddd}}
.controls form{{display:inline;margin-right:.5em}}.controls button{{font-size:1.05em;padding:.3em .9em}}
.old{{color:#777}}</style></head>
<body><h1>b2m session monitor</h1><p>results from <code>{endpoint}</code>{control}; refreshed every second</p>
<div id="panel">{panel}</div>
<script>setInterval(async () => {{ if (document.querySelector("#panel .controls:hover")) return;
try {{ const r = await fetch("panel", {{cache: "no-store"}});
document.getElementById("panel").innerHTML = await r.text(); }} catch (e) {{
document.getElementById("panel").insertAdjacentHTML("afterbegin",
"<p class=bad>the monitor itself does not answer</p>"); }} }}, 1000);</script></body></html>"""
# (the panel is not replaced under the pointer on the buttons: a click is not lost to a refresh)


def _colour(clip: str | None) -> str:
    if not clip:
        return "#ccc"
    h = sum((k + 1) * ord(c) for k, c in enumerate(clip)) % 360  # stable per clip id, across processes
    return f"hsl({h},55%,55%)"


def _timeline_svg(rows: list[dict], width: int = 900, height: int = 34) -> str:
    """The run's clips as coloured spans over the volume axis, switches marked."""
    if not rows:
        return ""
    n = max(r["index"] for r in rows) + 1
    x = lambda i: width * i / max(n, 1)  # noqa: E731
    parts, start = [], rows[0]
    for prev, r in zip(rows, rows[1:] + [None]):
        if r is None or r["clip"] != start["clip"]:
            end = (prev["index"] + 1) if r is None else r["index"]
            parts.append(f'<rect x="{x(start["index"]):.1f}" y="4" width="{max(x(end) - x(start["index"]), 1):.1f}" '
                         f'height="{height - 8}" fill="{_colour(start["clip"])}">'
                         f'<title>{html.escape(str(start["clip"]))}: volumes {start["index"]}-{end - 1}</title></rect>')
            start = r
    for r in rows:
        if r["action"] == "switch":
            parts.append(f'<line x1="{x(r["index"]):.1f}" x2="{x(r["index"]):.1f}" y1="0" y2="{height}" '
                         'stroke="#b00" stroke-width="1.5"/>')
    return f'<svg width="{width}" height="{height}">{"".join(parts)}</svg>'


def _trace_svg(rows: list[dict], key: str, level: float | str, *, color: str, level_color: str, held: bool,
               missing: str, width: int = 900, height: int = 80) -> str:
    """``rows[...][key]`` over the run's volumes, held volumes in red, and dashed: a horizontal line at
    ``level``, or (``level`` a key) the rows' own ``rows[...][level]`` (nothing where it is None)."""
    pts = [(r["index"], r[key]) for r in rows if r.get(key) is not None]
    if not pts:
        return f"<p>{missing}</p>"
    n = max(r["index"] for r in rows) + 1
    ref = [(r["index"], r[level]) for r in rows if r.get(level) is not None] if isinstance(level, str) else []
    top = max(max(v for _, v in pts + ref), 0.0 if isinstance(level, str) else level) * 1.15 or 1.0
    x = lambda i: width * i / max(n - 1, 1)  # noqa: E731
    y = lambda v: height - 2 - (height - 4) * v / top  # noqa: E731
    line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts)
    dots = "".join(f'<circle cx="{x(r["index"]):.1f}" cy="{y(r[key]):.1f}" r="2.5" fill="#b00"/>'
                   for r in rows if held and r["flagged"] and r.get(key) is not None)
    dash = f'stroke="{level_color}" stroke-dasharray="4 3"'
    if not isinstance(level, str):
        under = f'<line x1="0" x2="{width}" y1="{y(level):.1f}" y2="{y(level):.1f}" {dash}/>'
    elif ref:
        under = ('<polyline points="' + " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in ref)
                 + f'" fill="none" {dash}/>')
    else:
        under = ""
    return (f'<svg width="{width}" height="{height}">{under}<polyline points="{line}" fill="none" '
            f'stroke="{color}" stroke-width="1.2"/>{dots}</svg>')


def render_panel(snap: dict, fd_threshold_mm: float = 0.5, stale_s: float = 10.0) -> str:
    """The panel of :func:`MonitorState.snapshot` as HTML (tables and inline SVG)."""
    e = html.escape
    c, last = snap["counts"], snap["last"]
    out = [render_sound(snap)] if snap.get("control") else []
    if last is None:
        out.append(f"<p>waiting for the first result from <code>{e(snap['endpoint'])}</code> ...</p>")
    else:
        ago = snap["seconds_since_last"]
        if ago is not None and ago > stale_s:
            out.append(f'<p class="bad">no result for {ago:.0f} s: between runs, or the session or the link '
                       "is down</p>")
        for alert in last.get("alerts") or ():  # what the session says needs the operator now
            out.append(f'<p class="bad">{e(alert)}</p>')
        since = last["playing_since_index"]
        rows = [("run / volume", f"{last['run_id']} / {last['index']} (decodes moment {last['decoded_index']})"),
                ("acquired -> music scheduled", f"{last['lag_s']:.2f} s" if last["lag_s"] is not None else "n/a"),
                ("action", last["action"] + ("  [motion hold]" if last["flagged"] else "")),
                *([("block", last["condition"])] if last["condition"] else []),
                ("playing", f"{last['clip'] or 'nothing (silence)'}"
                 + (f" (since volume {since})" if since is not None else "")),
                ("temporal SNR, run so far", "— (too few volumes yet)" if last.get("tsnr") is None
                 else f"{last['tsnr']:.0f}" + (f" (Training runs {last['tsnr_training']:.0f} after as many volumes)"
                                               if last.get("tsnr_training") else "")),
                ("tags", ", ".join(f"{t} {p:.2f}" for t, p in last["tags"]) or "-"),
                ("candidates", ", ".join(f"{k} {s:.3f}" for k, s in last["topk"][:5]) or "-")]
        out.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>")
        run = snap["runs"].get(last["run_id"], [])
        out.append(f"<h2>Music in run {e(last['run_id'])} (red: switches)</h2>" + _timeline_svg(run))
        out.append(f"<h2>Head motion, FD in mm (dashed: {fd_threshold_mm:g} mm)</h2>"
                   + _trace_svg(run, "fd_mm", fd_threshold_mm, color="#2a7", level_color="#b00", held=True,
                                missing="no head motion estimates (motion correction off, or no volume yet)"))
        dv = [r["dvars_pct"] for r in run if r.get("dvars_pct")]
        med = float(np.median(dv)) if dv else 0.0
        out.append(f"<h2>Image change, DVARS in % of the mean (dashed: the run's median, {med:.2f} %)</h2>"
                   + _trace_svg(run, "dvars_pct", med, color="#73b", level_color="#888", held=False,
                                missing="no DVARS yet"))
        out.append("<h2>Temporal SNR of the decoder's voxels, run so far (dashed: the Training runs' after as "
                   "many volumes)</h2>"
                   + _trace_svg(run, "tsnr", "tsnr_training", color="#d70", level_color="#555", held=False,
                                missing=f"no tSNR yet (from the run's {TSNR_MIN_VOLUMES}th volume)"))
    if snap["latency_ms"]:
        out.append("<h2>Latency per stage (ms)</h2><table><tr><th>stage</th><th>last</th><th>p50</th><th>p99</th>"
                   "<th>n</th></tr>" + "".join(
                       f"<tr><td>{e(s)}</td><td>{v['last']:.2f}</td><td>{v['p50']:.2f}</td><td>{v['p99']:.2f}</td>"
                       f"<td>{v['n']}</td></tr>" for s, v in snap["latency_ms"].items()) + "</table>")
    foot = (f"results {c['results']} &middot; switches {c['switches']} &middot; motion holds {c['holds']} &middot; "
            f"errors {c['errors']} &middot; runs seen {len(snap['runs'])}")
    if c["bad_messages"]:
        foot += (f' &middot; <span class="bad">messages that were not results: {c["bad_messages"]} '
                 f"(last: {e(snap['last_bad_message'] or '')})</span>")
    out.append(f"<p>{foot}</p>")
    return "\n".join(out)


class _CappedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once; one more is told 503 and closed."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    request_queue_size = 64

    def server_activate(self):
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.busy_refused = 0
        super().server_activate()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.busy_refused += 1
            body = f"the monitor is busy ({self.max_connections} connections open); try again in a moment\n"
            try:
                request.setblocking(False)
                request.send((f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                              f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                              + body).encode())
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread to be had: the slot is given back, the connection closed
            self._slots.release()
            self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MonitorServer:
    """The web page over HTTP, in its own threads (``port`` 0: any free port; see :attr:`url`).

    ``control``: a :class:`ControlLink` for the buttons (None: the page is read-only, POST /control 404); its
    status polling is started here (:meth:`ControlLink.start`) and stopped by :meth:`close`. ``timeout_s``:
    how long each read of a request may take (s); ``max_connections``: served at once.
    """

    def __init__(self, state: MonitorState, host: str = "127.0.0.1", port: int = 8080,
                 fd_threshold_mm: float = 0.5, control: ControlLink | None = None,
                 timeout_s: float = HTTP_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            timeout = float(timeout_s)  # each read; a client that stops sending is dropped, its thread freed

            def _foreign(self) -> bool:
                """Refuse (421) a request for a name that is not this monitor's (DNS rebinding)."""
                why = foreign_host(self.headers.get("Host"), monitor.names, monitor.port, monitor.wildcard)
                if why is None:
                    return False
                log.warning("refused %s %s from %s: %s", self.command, self.path[:100], self.address_string(), why)
                self._reply(421, why)
                return True

            def do_GET(self):  # noqa: N802 (http.server's name)
                if self._foreign():
                    return
                path = self.path.split("?", 1)[0]
                if path == "/control":
                    self._reply(405, "/control takes the buttons' POST; the page is /", Allow="POST")
                    return
                if monitor.control is not None and path in ("/", "/panel", "/state.json"):
                    # only in the monitor's first seconds: the first answer (or its failure) is a moment away
                    monitor.control.asked_once.wait(max(0.0, monitor.started + FIRST_STATUS_S - time.monotonic()))
                snap = monitor.snapshot()
                if path == "/":
                    ctl = "" if monitor.control is None else \
                        f"; operator control on <code>{html.escape(monitor.control.endpoint)}</code>"
                    body, kind = _PAGE.format(endpoint=html.escape(state.endpoint), control=ctl,
                                              panel=render_panel(snap, monitor.fd_threshold_mm)), "text/html"
                elif path == "/panel":
                    body, kind = render_panel(snap, monitor.fd_threshold_mm), "text/html"
                elif path == "/state.json":
                    body, kind = json.dumps(snap), "application/json"
                else:
                    self.send_error(404, "the monitor serves /, /panel and /state.json")
                    return
                self._reply(200, body, kind)

            def do_POST(self):  # noqa: N802
                try:
                    self._post()
                except (TimeoutError, socket.timeout):  # a body shorter than its Content-Length
                    log.warning("POST %s from %s: the body did not come within %g s", self.path[:100],
                                self.address_string(), self.timeout)
                    self.close_connection = True
                    try:
                        self._reply(408, f"the body did not come within {self.timeout:g} s: send as many bytes "
                                         "as Content-Length says")
                    except OSError:
                        pass
                except Exception as e:  # a bug here: logged; the browser gets a line, never a stack trace
                    log.exception("POST %s failed", self.path)
                    try:
                        self._reply(500, f"the monitor could not take this command ({type(e).__name__}: {e})")
                    except OSError:
                        pass

            def _post(self):
                lengths = self.headers.get_all("Content-Length") or []
                length = lengths[0] if lengths else None
                if length is None or not re.fullmatch(r"[0-9]{1,12}", length.strip()):
                    self._reply(400, f"Content-Length: a form's length in bytes (ASCII digits) is needed; "
                                     f"got {length!r}")
                    return
                if len({v.strip() for v in lengths}) > 1:
                    self._reply(400, f"Content-Length: given {len(lengths)} times with different values; send one")
                    return
                if int(length) > MAX_FORM_BYTES:
                    self._reply(413, f"Content-Length: a button's form is at most {MAX_FORM_BYTES} bytes; "
                                     f"got {int(length)}")
                    return
                body = self.rfile.read(int(length))  # read before any answer: an unread body can reset it
                if self._foreign():
                    return
                if self.path.split("?", 1)[0] != "/control":
                    self._reply(404, "the monitor takes POST on /control only")
                    return
                why = cross_site(self.headers)
                if why:
                    log.warning("%s from %s", why, self.address_string())
                    self._reply(403, why)
                    return
                if monitor.control is None:
                    self._reply(404, "the monitor was started without --control: its page is read-only (start "
                                     "it with --control ENDPOINT, the session's, for the mute and level buttons)")
                    return
                try:
                    cmd = parse_form(self.headers, body)
                except MessageError as e:
                    self._reply(400, f"malformed command: {e}")
                    return
                monitor.control.command(cmd)  # refused or unanswered: kept, and shown on the page
                self._reply(303, "see /", Location="/")

            def _reply(self, code: int, body: str, kind: str = "text/plain", **headers):
                data = body.encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt, *args):  # requests are not news; errors still go to the log
                log.debug("%s " + fmt, self.address_string(), *args)

        self.state, self.fd_threshold_mm, self.control = state, fd_threshold_mm, control
        self.started = time.monotonic()
        check_port(port, f"--http {host}:{port}")  # else an OverflowError from the socket
        server_class = type("CappedHTTPServer", (_CappedHTTPServer,), {"max_connections": int(max_connections)})
        self.httpd = server_class((host, port), Handler)
        self.host, self.port = self.httpd.server_address[:2]
        self.wildcard = host in ("", "0.0.0.0", "::")
        self.names = own_names(host) | own_names(str(self.host))  # the name as given and the address bound
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="b2m-monitor-http", daemon=True)
        self._thread.start()
        if control is not None:
            control.start()

    def snapshot(self) -> dict:
        """The state of ``/state.json``: the results' (:meth:`MonitorState.snapshot`), ``sound`` and ``control``
        (:meth:`ControlLink.snapshot`; both None without it)."""
        snap = self.state.snapshot()
        snap.update(self.control.snapshot() if self.control is not None else {"sound": None, "control": None})
        return snap

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.control is not None:
            self.control.stop()
