"""``b2m monitor``: follow a session from another room in a web browser (its ``--results`` stream)."""

from __future__ import annotations

import errno
import ipaddress
import signal
import socket
import sys
import threading

from ._curve import add_client_args, client_keys

DEFAULT_RESULTS = "tcp://127.0.0.1:5556"


def add_parser(sub) -> None:
    p = sub.add_parser("monitor", help="a web page of a running session (from its --results stream)",
                       description="Subscribe to a session's results stream and serve a web page of it: run and "
                                   "volume, what plays, the run's clip timeline, head motion, latency per stage. "
                                   "Open the printed address in a browser; the page refreshes itself. With "
                                   "--control, the page also shows the sound and has the operator's buttons (mute, "
                                   "unmute, level -3/+3 dB, sound check).")
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help=f"the session's --results endpoint (default {DEFAULT_RESULTS})")
    p.add_argument("--control", default=None, metavar="ENDPOINT",
                   help="the session's --control endpoint (e.g. tcp://SESSION-HOST:5557): show the sound and the "
                        "mute and level buttons, forwarded as `b2m control` would (same CURVE keys as --results). "
                        "Default: none, the page is read-only")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where to serve the page (default 127.0.0.1:8080; port 0: any free port)")
    p.add_argument("--fd-threshold", type=float, default=0.5, help="FD line drawn on the motion trace, mm "
                   "(default 0.5, the session's default)")
    p.add_argument("--insecure", action="store_true",
                   help="serve the page on a non-loopback address (plain HTTP, no login: a private network only)")
    add_client_args(p, who="monitor", server="session")
    p.set_defaults(func=run)


def _host_port(text: str) -> tuple[str, int]:
    from realtime.transport import check_port

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--http {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", check_port(int(port), f"--http {text}")


def run(args) -> int:
    from realtime.monitor import ControlLink, MonitorServer, MonitorState, ResultsSubscriber
    from realtime.transport import EndpointError

    host, port = _host_port(args.http)
    if not (host == "localhost" or _is_loopback_ip(host) or args.insecure):
        raise ValueError(f"--http {args.http}: the page would be reachable from the network over plain HTTP "
                         "with no login; serve it on 127.0.0.1 (and use an SSH tunnel), or pass --insecure on a "
                         "private network")
    curve = client_keys(args)
    control = ControlLink(args.control, curve=curve) if args.control not in (None, "", "none") else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    state = MonitorState(args.results)
    try:
        sub = ResultsSubscriber(args.results, state, curve=curve).start()
    except EndpointError as e:
        raise ValueError(f"--results {e}") from None
    try:
        server = MonitorServer(state, host, port, fd_threshold_mm=args.fd_threshold, control=control)
    except OSError as e:
        sub.close()
        if e.errno == errno.EADDRINUSE:
            hint = "another program holds that port: choose another port"
        elif e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            hint = "that host is not an address of this computer: give one of its addresses, or 127.0.0.1"
        else:
            hint = "choose another address or port"
        raise OSError(f"--http {args.http}: cannot serve there ({e.strerror or e}); {hint}") from None
    print(f"monitor\t{server.url}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):  # a timed wait lets the signal handlers run
            pass
    finally:
        server.close()
        sub.close()
    c = state.counts
    print(f"monitor: {c['results']} results seen, {c['bad_messages']} messages that were not results"
          + ("" if control is None else f"; {control.sent} operator command(s) forwarded, {control.refused} "
                                        f"refused, {control.failed} exchange(s) unanswered"))
    return 0


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
