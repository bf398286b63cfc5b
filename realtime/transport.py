"""ZeroMQ sockets for the volume link, with the exposure rules of DESIGN.md.

The receiver binds a ROUTER socket; a sender connects a DEALER socket. DEALER
over TCP reconnects by itself after either side restarts, unlike Pyneal's
PAIR socket. Loopback is the default; binding any other address needs CURVE
keys or an explicit ``insecure=True``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import zmq

__all__ = ["TransportError", "is_loopback", "check_exposure", "bind_router", "connect_dealer"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


class TransportError(RuntimeError):
    """An endpoint cannot be used as asked; the message says what to do."""


def is_loopback(endpoint: str) -> bool:
    """True if a ZeroMQ endpoint only reaches this machine.

    ``ipc://`` and ``inproc://`` are local. ``tcp://HOST:PORT`` is local when
    HOST is a loopback address or ``localhost``; ``*`` and ``0.0.0.0`` are not.
    """
    scheme = endpoint.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(endpoint).hostname or ""
    host = host.split(";")[-1]  # tcp://iface;host:port source syntax
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback
                       for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_exposure(endpoint: str, *, curve: bool, insecure: bool) -> None:
    """Refuse to expose the scanner link on a network without encryption.

    Raises
    ------
    TransportError
        If ``endpoint`` is not loopback, CURVE keys are not configured and
        ``insecure`` is False.
    """
    if not (is_loopback(endpoint) or curve or insecure):
        raise TransportError(
            f"refusing to bind {endpoint}: it is reachable from the network and no CURVE keys "
            "were given. Give CURVE keys, bind tcp://127.0.0.1:PORT, or pass --insecure if "
            "this network is private to the scanner."
        )


def bind_router(ctx: zmq.Context, endpoint: str, *, insecure: bool = False) -> zmq.Socket:
    """A ROUTER socket bound to ``endpoint`` for receiving volumes."""
    check_exposure(endpoint, curve=False, insecure=insecure)
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)  # never drop: the sender's window bounds memory
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a vanished peer is dropped, not raised
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        raise TransportError(f"cannot bind {endpoint}: {e}. Is another receiver running on that port?") from None
    return sock


def connect_dealer(ctx: zmq.Context, endpoint: str, monitor_events: int = 0):
    """A DEALER socket connected to ``endpoint`` for sending volumes.

    ``IMMEDIATE`` makes sends fail fast while no receiver is connected, so the
    sender keeps the message as unacked instead of queueing it on a dead pipe.

    Returns the socket, or ``(socket, monitor)`` when ``monitor_events`` is
    given: the monitor is attached *before* connecting so no event is missed.
    """
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    monitor = sock.get_monitor_socket(monitor_events) if monitor_events else None
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(0)
        sock.close(0)
        raise TransportError(f"cannot connect to {endpoint}: {e}. Use the form tcp://HOST:PORT.") from None
    return (sock, monitor) if monitor_events else sock
