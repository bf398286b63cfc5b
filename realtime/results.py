"""Results out of the session: a ZeroMQ PUB of every TR's Result, and a
Pyneal-compatible results server so existing feedback scripts work unchanged.

Pyneal's protocol (``pyneal/src/resultsServer.py``): a client opens a TCP
connection, sends the volume index as ASCII digits, and receives
``{"foundResults": true, ...}`` with the results of that volume, or
``{"foundResults": false}`` if it has not been processed yet; then the server
closes the connection. The reply is framed as the request asks: to a request
without a newline (Pyneal's own Python client sends ``0024``), as Pyneal's
server frames it, a header line with the JSON's length in bytes and then the
JSON (``'57\n{"foundResults": ...}'``, Pyneal's ``sendResults``), which that
client reads; to a request ending in a newline (Pyneal's MATLAB client's
``fprintf``), one JSON line, which its ``fgetl`` reads. A request it cannot answer (not digits, an index out
of ``[0, MAX_RUN_VOLUMES - 1]``, too long, or none within
:data:`PYNEAL_DEADLINE_S`) gets ``{"foundResults": false, "error": "..."}``
saying what to send: a client that only reads ``foundResults`` still parses
it, and one that reads ``error`` knows not to ask again.

A request ends at a newline (Pyneal's MATLAB client sends ``24\n``), at the
end of the stream (a client that half-closes), when it holds
:data:`PYNEAL_WIDTH` digits (Pyneal's Python client sends ``0024`` and waits,
with neither), or when a shorter one is followed by no byte for
:data:`PYNEAL_PAUSE_S`. Surrounding blanks are ignored; only plain digits
``0``-``9`` are an index.

The server runs in its own threads, off the hot path (the session only
stores a small dict per volume): each connection is served on its own, so a
client that connects and says nothing delays no other; at most
:data:`PYNEAL_MAX_CLIENTS` at a time (one more is told so and closed).
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time

import numpy as np
import zmq

from protocols.wire import MAX_RUN_VOLUMES, Result, encode

from .transport import CurveServer, check_exposure, check_port, set_curve_server, start_authenticator

__all__ = ["ResultsPublisher", "PynealResultsServer", "pyneal_payload", "latency_summary", "MAX_SUBSCRIPTION_BYTES",
           "PYNEAL_DEADLINE_S", "PYNEAL_MAX_CLIENTS", "PYNEAL_MAX_REQUEST_BYTES", "PYNEAL_PAUSE_S", "PYNEAL_WIDTH"]

log = logging.getLogger("b2m.results")

#: Largest message the results PUB reads from a subscriber (bytes). A subscription is a message to the
#: publisher; clients subscribe to everything (``b""``) or a short topic. A peer that sends a larger one is
#: dropped before it is read: libzmq keeps a subscription as one tree node per byte, and a 1 MB one made each
#: send, and the peer's leaving, stall the session's loop for seconds.
MAX_SUBSCRIPTION_BYTES = 1024
#: A Pyneal client has this long (s) from connecting to send its request.
PYNEAL_DEADLINE_S = 5.0
#: Connections served at once (a thread each, for at most PYNEAL_DEADLINE_S s); one more is answered "busy".
PYNEAL_MAX_CLIENTS = 128
#: Longest request read (bytes): an index of at most 5 digits, blanks and a newline fit many times over.
PYNEAL_MAX_REQUEST_BYTES = 64
#: A request with fewer than :data:`PYNEAL_WIDTH` digits and no newline ends after this pause (s).
PYNEAL_PAUSE_S = 0.25
#: Digits in Pyneal's own requests (``str(index).zfill(4)``, sent with no newline).
PYNEAL_WIDTH = 4
_DIGITS = re.compile(r"[0-9]+")


def latency_summary(samples_ms) -> dict:
    """``{"last", "p50", "p99", "n"}`` of one stage's latencies (ms), as the dashboard and the monitor show them.

    ``samples_ms``: a non-empty sequence, oldest first (a deque the session is appending to is copied first).
    """
    a = np.array(list(samples_ms), float)  # list() copies under the GIL: the loop may be appending
    return {"last": float(a[-1]), "p50": float(np.median(a)), "p99": float(np.percentile(a, 99)), "n": int(a.size)}


class ResultsPublisher:
    """PUB socket that sends one :class:`~protocols.wire.Result` per TR (never blocks).

    With ``curve`` (the receiver's keys) the stream is encrypted: a subscriber
    sets ``curve_serverkey`` to the receiver's public key and its own key pair
    (``b2m keys``), and with ``curve.clients_dir`` only listed keys get results.
    """

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None, insecure: bool = False,
                 curve: CurveServer | None = None):
        check_exposure(endpoint, curve=curve is not None, insecure=insecure)
        self.ctx = ctx or zmq.Context.instance()
        self._auth = start_authenticator(self.ctx, curve)
        self.sock = self.ctx.socket(zmq.PUB)
        set_curve_server(self.sock, curve)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1000)  # a slow subscriber loses old results, never stalls the loop
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)  # a huge subscription drops its peer
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(self, result: Result) -> None:
        try:
            self.sock.send_multipart(encode(result), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.sock.close(0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def pyneal_payload(result: Result) -> dict:
    """The dict a Pyneal client gets for a volume (``foundResults`` added by the server).

    The embedding stays a float32 array (~0.8 kB a TR; a list of Python floats
    would be ~6.5 kB) and becomes a JSON list, rounded to 6 decimals, when a
    client asks.
    """
    out = {"action": result.action, "clip": result.clip, "decodedIndex": result.decoded_index,
           "fd": result.fd_mm, "dvars": result.dvars_pct, "tsnr": result.tsnr,
           "tsnrTraining": result.tsnr_training, "flagged": result.flagged}
    if result.condition is not None:
        out["condition"] = result.condition
    if result.topk:
        out["topClip"], out["topScore"] = result.topk[0]
    if result.embedding is not None:
        out["embedding"] = np.array(result.embedding, np.float32)
    return out


def frame_reply(reply: dict, line: bool) -> bytes:
    """A Pyneal reply on the wire: one JSON line (``line``), or Pyneal's ``LENGTH\n`` header and the JSON."""
    body = json.dumps(reply, allow_nan=False).encode()
    return body + b"\n" if line else f"{len(body)}\n".encode() + body


class PynealResultsServer:
    """Threaded TCP server answering Pyneal-style requests for past volumes (see the module docstring).

    Parameters
    ----------
    host, port : str, int
        Where to listen (loopback by default; port 0 picks a free one).
    deadline_s : float
        How long a client has to send its request (s).
    max_clients : int
        Connections served at once.
    pause_s : float
        After fewer than :data:`PYNEAL_WIDTH` digits and no newline, the request ends when no byte comes for
        this long (s).

    Raises
    ------
    realtime.transport.EndpointError
        A port outside 0-65535 (``--pyneal-port``), or a host that is not this computer's.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5558, insecure: bool = False,
                 deadline_s: float = PYNEAL_DEADLINE_S, max_clients: int = PYNEAL_MAX_CLIENTS,
                 pause_s: float = PYNEAL_PAUSE_S):
        check_port(port, f"--pyneal-port {port}")
        check_exposure(f"tcp://{host}:{port}", curve=False, insecure=insecure)
        self._results: dict[int, dict] = {}
        self._lock = threading.Lock()  # server threads only contend with a dict store per TR
        self.deadline_s, self.max_clients, self.pause_s = float(deadline_s), int(max_clients), float(pause_s)
        self._slots = threading.BoundedSemaphore(self.max_clients)
        self.busy_refused = 0  # connections refused because max_clients were being served
        self._sock = socket.create_server((host, port), backlog=64)
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="b2m-pyneal-results", daemon=True)
        self._thread.start()

    def store(self, index: int, payload: dict) -> None:
        """Keep ``payload`` (:func:`pyneal_payload`) for requests about volume ``index``."""
        with self._lock:
            self._results[int(index)] = payload

    def _read_request(self, conn: socket.socket) -> bytes | str:
        """The request's bytes (up to and with its newline, if it ended in one), or why there is none (a str)."""
        end = time.monotonic() + self.deadline_s
        data = b""
        while True:
            text = data.strip()
            if b"\n" in data:
                return data.split(b"\n", 1)[0] + b"\n"
            if len(data) > PYNEAL_MAX_REQUEST_BYTES:
                return (f"a request is at most {PYNEAL_MAX_REQUEST_BYTES} bytes (the volume index as ASCII digits, "
                        f"then a newline); got more")
            if len(text) >= PYNEAL_WIDTH and text.isdigit():  # Pyneal's own "0024", no newline
                return data
            if text and not text.replace(b" ", b"").isdigit():  # no index, whatever follows: said at once
                return data
            left = end - time.monotonic()
            if left <= 0:
                return (f"no complete request within {self.deadline_s:g} s: send the volume index as ASCII "
                        f"digits and a newline")
            pause = text and text.isdigit()  # a short index alone: it ends when no more comes
            conn.settimeout(min(left, self.pause_s) if pause else left)
            try:
                chunk = conn.recv(PYNEAL_MAX_REQUEST_BYTES + 1)
            except (TimeoutError, socket.timeout):
                if pause:
                    return data
                continue
            if not chunk:
                return data
            data += chunk

    def _reply(self, raw: bytes) -> dict:
        text = raw.decode("ascii", "replace").strip()
        if not _DIGITS.fullmatch(text):
            return {"foundResults": False, "error": f"send the volume index as ASCII digits 0-9 (0 to "
                                                    f"{MAX_RUN_VOLUMES - 1}), then a newline; got {text[:40]!r}"}
        if len(text) > 6 or int(text) >= MAX_RUN_VOLUMES:
            return {"foundResults": False, "error": f"volume index {text[:40]} is out of range: a run's volumes "
                                                    f"are 0 to {MAX_RUN_VOLUMES - 1}"}
        with self._lock:
            found = self._results.get(int(text))
        if found is None:
            return {"foundResults": False}
        reply = {"foundResults": True, **found}
        if isinstance(reply.get("embedding"), np.ndarray):
            reply["embedding"] = [round(float(v), 6) for v in reply["embedding"]]
        return _finite(reply)

    def _answer(self, conn: socket.socket) -> None:
        try:
            raw = self._read_request(conn)
            reply = {"foundResults": False, "error": raw} if isinstance(raw, str) else self._reply(raw)
            conn.settimeout(self.deadline_s)
            # a line client (its request ended in a newline) gets a JSON line, any other Pyneal's framing
            conn.sendall(frame_reply(reply, line=isinstance(raw, bytes) and raw.endswith(b"\n")))
            _close_after_reply(conn)
        except (OSError, ValueError) as e:
            log.debug("results client dropped: %s", e)
        finally:
            conn.close()
            self._slots.release()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            if not self._slots.acquire(blocking=False):
                self.busy_refused += 1
                _refuse(conn, {"foundResults": False, "error": f"the results server is busy ({self.max_clients} "
                                                               "connections open); try again"})
                continue
            try:
                threading.Thread(target=self._answer, args=(conn,), name="b2m-pyneal-client", daemon=True).start()
            except RuntimeError:  # no thread to be had: refused, as when busy
                self._slots.release()
                _refuse(conn, {"foundResults": False, "error": "the results server is busy; try again"})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def _finite(v):
    """``v`` with every NaN or infinity (not JSON) as None, in dicts, lists and tuples too."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _refuse(conn: socket.socket, reply: dict) -> None:
    """Tell a client it cannot be served now, without waiting for it, and close."""
    try:
        conn.setblocking(False)
        conn.send((json.dumps(reply) + "\n").encode())
        conn.shutdown(socket.SHUT_WR)
        conn.recv(PYNEAL_MAX_REQUEST_BYTES)  # what has come already: closing with it unread would reset
    except OSError:
        pass
    finally:
        conn.close()


def _close_after_reply(conn: socket.socket, drain_s: float = 1.0, drain_bytes: int = 1 << 20) -> None:
    """End the reply and read (and drop) what the client still sends, for at most ``drain_s`` s or
    ``drain_bytes``: closing with unread bytes would reset the connection and could lose the reply."""
    conn.shutdown(socket.SHUT_WR)
    end, got = time.monotonic() + drain_s, 0
    while got < drain_bytes:
        left = end - time.monotonic()
        if left <= 0:
            return
        conn.settimeout(left)
        try:
            chunk = conn.recv(65536)
        except (TimeoutError, socket.timeout):
            return
        if not chunk:
            return
        got += len(chunk)
