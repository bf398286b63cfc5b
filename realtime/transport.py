"""ZeroMQ sockets for the volume link, with the exposure rules of protocols/README.md, section 1.

The receiver binds a ROUTER socket; a sender connects a DEALER socket. DEALER
over TCP reconnects by itself after either side restarts, unlike Pyneal's
PAIR socket. Loopback is the default; binding any other address needs CURVE
keys or an explicit ``insecure=True``.

CURVE (ZeroMQ's elliptic-curve encryption and authentication): each side
has a key pair, written by :func:`generate_keys` as ``NAME.key`` (public,
give it to the other side) and ``NAME.key_secret`` (stays on its machine).
The receiver loads its secret key and, optionally, a folder of the public
keys of the scanners it accepts (:func:`load_curve_server`); only those
complete the handshake. A scanner loads its own secret key and the
receiver's public key (:func:`load_curve_client`).
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq

__all__ = ["TransportError", "EndpointError", "check_endpoint", "check_port", "is_loopback", "check_exposure",
           "bind_router", "connect_dealer", "CurveServer",
           "CurveClient", "generate_keys", "load_curve_server", "load_curve_client", "start_authenticator",
           "set_curve_server", "describe_curve"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


class TransportError(RuntimeError):
    """An endpoint cannot be used as asked; the message says what to do."""


class EndpointError(TransportError, ValueError):
    """A string that is not an endpoint at all (a mistyped option): a :class:`TransportError` and a
    :class:`ValueError` both, so callers that handle either report it."""


def check_port(port, what: str) -> int:
    """``port`` as an int if it is a TCP port number, 0-65535 (0: any free port), else an :class:`EndpointError`
    that names ``what`` (the option or the endpoint) and the value."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise EndpointError(f"{what}: port {port!r} is not a TCP port; use 0-65535 (0: any free port)")
    return port


def check_endpoint(endpoint, *, bind: bool = False) -> str:
    """``endpoint`` if it has a ZeroMQ endpoint's form, else an :class:`EndpointError` that names it and says the form.

    The one check of the endpoints the commands take (``--bind``, ``--connect``, ``--results``,
    ``--control``), made before a socket is made: ZeroMQ itself raises a bare ``ZMQError`` on
    ``nowhere``, and takes ``tcp://HOST:99999`` as port 34463 (99999 - 65536).

    Accepted: ``tcp://HOST:PORT``, PORT 1-65535 (binding: 0-65535 or ``*``, any free port), HOST a name,
    an address (IPv6 in brackets), an interface name or ``*`` (binding); ``ipc://PATH``; ``inproc://NAME``.
    Whether HOST exists is not checked here (:func:`check_exposure` does for a bind).
    """
    ports = "0-65535, or * for any free port" if bind else "1-65535"
    form = f"use tcp://HOST:PORT (port {ports}) or ipc://PATH"
    if not isinstance(endpoint, str):
        raise EndpointError(f"{endpoint!r} is not an endpoint: {form}")
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise EndpointError(f"{endpoint!r} is not an endpoint: {form}")
    if scheme in ("ipc", "inproc"):
        if not rest or "\0" in rest:
            raise EndpointError(f"{endpoint!r} is not an endpoint: {scheme}:// needs a "
                                f"{'path' if scheme == 'ipc' else 'name'}; {form}")
        return endpoint
    host, colon, port = rest.rpartition(":")
    if not colon or not host or any(c.isspace() or c == "/" for c in rest):
        raise EndpointError(f"{endpoint!r} is not an endpoint: {form}")
    if host.startswith("[") != host.endswith("]"):
        raise EndpointError(f"{endpoint!r} is not an endpoint: an IPv6 address goes in brackets, "
                            "e.g. tcp://[::1]:5555")
    if port == "*" and bind:
        return endpoint
    if not port.isdigit() or not (0 if bind else 1) <= int(port) <= 65535:
        raise EndpointError(f"{endpoint!r} is not an endpoint: port {port!r} is not a TCP port; {form}")
    return endpoint


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

    Every binder calls this first, so it also checks the endpoint's form (:func:`check_endpoint`) and, for
    TCP, that its host is this computer's to bind: an address or name that resolves, an interface, or ``*``.

    Raises
    ------
    EndpointError
        If ``endpoint`` is not an endpoint, or its host cannot be bound.
    TransportError
        If ``endpoint`` is not loopback, CURVE keys are not configured and
        ``insecure`` is False.
    """
    check_endpoint(endpoint, bind=True)
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://"):].rpartition(":")[0]
        if not _bindable_host(host):
            raise EndpointError(f"cannot bind {endpoint}: {host!r} is neither an address of this computer nor one of "
                                "its network interfaces; bind tcp://127.0.0.1:PORT, tcp://*:PORT or one of this "
                                "computer's addresses")
    if not (is_loopback(endpoint) or curve or insecure):
        raise TransportError(
            f"refusing to bind {endpoint}: it is reachable from the network and no CURVE keys "
            "were given. Give CURVE keys, bind tcp://127.0.0.1:PORT, or pass --insecure if "
            "this network is private to the scanner."
        )


def _bindable_host(host: str) -> bool:
    """Whether ZeroMQ can bind on ``host``: ``*``, an address or a name that resolves, or an interface name."""
    host = host.split(";")[-1].strip("[]")
    if host == "*":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        if host in {name for _, name in socket.if_nameindex()}:
            return True
    except OSError:  # pragma: no cover - no interface list on this platform: let the bind decide
        return True
    try:
        socket.getaddrinfo(host, None)
        return True
    except (OSError, UnicodeError):
        return False


@dataclass(frozen=True)
class CurveServer:
    """CURVE keys of the receiving side.

    Attributes
    ----------
    public, secret : bytes
        Its key pair, Z85-encoded (40 characters each).
    clients_dir : str or None
        Folder of the public keys (``*.key``) of the senders it accepts; a
        sender with any other key fails the handshake. None accepts every
        sender that knows the receiver's public key (encrypted, not
        authenticated).
    """

    public: bytes
    secret: bytes
    clients_dir: str | None = None


@dataclass(frozen=True)
class CurveClient:
    """CURVE keys of a sender: its own key pair and the receiver's public key (Z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes


def generate_keys(directory, name: str) -> tuple[str, str]:
    """Write a new CURVE key pair as ``DIRECTORY/NAME.key`` and ``DIRECTORY/NAME.key_secret``.

    Returns
    -------
    public_file, secret_file : str
    """
    import zmq.auth

    if not name or os.sep in name or name.startswith("."):
        raise TransportError(f"key name {name!r} must be a plain file name, e.g. 'receiver' or 'scanner'")
    os.makedirs(directory, exist_ok=True)
    secret = os.path.join(os.fspath(directory), f"{name}.key_secret")
    if os.path.exists(secret):
        raise TransportError(f"{secret} already exists; remove it first, or choose another NAME or --out folder "
                             "(a new key locks out every side that holds the old public key)")
    public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    os.chmod(secret, 0o600)
    return public, secret


def _load_key(path, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    path = os.fspath(path)
    if os.path.isdir(path):
        raise TransportError(f"{path}: a folder, not a key file; give the key file in it (b2m keys writes "
                             "NAME.key_secret and NAME.key)")
    if not os.path.isfile(path):
        raise TransportError(f"{path}: no such key file. Make one with 'b2m keys NAME --out DIR'")
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise TransportError(f"{path}: not a ZeroMQ key file ({e}). Make one with 'b2m keys NAME --out DIR'") \
            from None
    if not public or len(public) != 40 or (secret and (not sec or len(sec) != 40)):
        what = "secret key (NAME.key_secret)" if secret else "public key (NAME.key)"
        raise TransportError(f"{path}: has no {what}; give the {'.key_secret' if secret else '.key'} file")
    return public, sec


def load_curve_server(secret_file, clients_dir=None) -> CurveServer:
    """The receiver's keys from its ``NAME.key_secret`` file, and the folder of accepted sender keys."""
    public, secret = _load_key(secret_file, secret=True)
    if clients_dir is not None:
        clients_dir = os.fspath(clients_dir)
        keys = glob.glob(os.path.join(clients_dir, "*.key"))
        if not keys:
            raise TransportError(f"{clients_dir}: no sender public keys (*.key) in it; copy each scanner's "
                                 "NAME.key there, or leave the folder out to accept any sender that has the "
                                 "receiver's public key")
        for k in keys:
            _load_key(k, secret=False)
    return CurveServer(public, secret, clients_dir)


def load_curve_client(secret_file, server_key_file) -> CurveClient:
    """A sender's keys from its ``NAME.key_secret`` file and the receiver's ``NAME.key``."""
    public, secret = _load_key(secret_file, secret=True)
    server, _ = _load_key(server_key_file, secret=False)
    return CurveClient(public, secret, server)


def describe_curve(curve: CurveServer | None) -> str:
    """One line on how a bound socket is protected, for logs and the pre-flight check."""
    if curve is None:
        return "unencrypted"
    if curve.clients_dir is None:
        return "CURVE-encrypted; any sender holding the receiver's public key is accepted"
    n = len(glob.glob(os.path.join(curve.clients_dir, "*.key")))
    return f"CURVE-encrypted; only the {n} sender key(s) in {curve.clients_dir} are accepted"


def start_authenticator(ctx: zmq.Context, curve: CurveServer | None):
    """Start the ZAP handler that admits only ``curve.clients_dir``'s keys, or return None.

    The caller stops it (``.stop()``) before terminating ``ctx``.
    """
    if curve is None or curve.clients_dir is None:
        return None
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=logging.getLogger("b2m.transport.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=curve.clients_dir)
    return auth


def set_curve_server(sock: zmq.Socket, curve: CurveServer | None) -> None:
    """Make ``sock`` (before it binds) a CURVE server with ``curve``'s keys; no-op for None."""
    if curve is not None:
        sock.curve_secretkey = curve.secret
        sock.curve_publickey = curve.public
        sock.curve_server = True


def bind_router(ctx: zmq.Context, endpoint: str, *, insecure: bool = False,
                curve: CurveServer | None = None) -> zmq.Socket:
    """A ROUTER socket bound to ``endpoint`` for receiving volumes (a CURVE server with ``curve``)."""
    check_exposure(endpoint, curve=curve is not None, insecure=insecure)
    sock = ctx.socket(zmq.ROUTER)
    set_curve_server(sock, curve)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)  # never drop: the sender's window bounds memory
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a vanished peer is dropped, not raised
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        if e.errno == zmq.EADDRINUSE:
            raise TransportError(f"cannot bind {endpoint}: {e}. Is another receiver running on that port?") from None
        raise TransportError(f"cannot bind {endpoint}: {e}. Bind tcp://127.0.0.1:PORT, tcp://*:PORT or one of this "
                             "computer's addresses") from None
    return sock


def connect_dealer(ctx: zmq.Context, endpoint: str, monitor_events: int = 0, curve: CurveClient | None = None):
    """A DEALER socket connected to ``endpoint`` for sending volumes (a CURVE client with ``curve``).

    ``IMMEDIATE`` makes sends fail fast while no receiver is connected, so the
    sender keeps the message as unacked instead of queueing it on a dead pipe.

    Returns the socket, or ``(socket, monitor)`` when ``monitor_events`` is
    given: the monitor is attached *before* connecting so no event is missed.
    An ``endpoint`` that is not one raises :class:`EndpointError` (:func:`check_endpoint`).
    """
    check_endpoint(endpoint)
    sock = ctx.socket(zmq.DEALER)
    if curve is not None:
        sock.curve_secretkey = curve.secret
        sock.curve_publickey = curve.public
        sock.curve_serverkey = curve.server_public
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
        raise TransportError(f"cannot connect to {endpoint}: {e}. Use the form tcp://HOST:PORT or ipc://PATH.") \
            from None
    return (sock, monitor) if monitor_events else sock
