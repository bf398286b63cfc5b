"""Results out of the session: a ZeroMQ PUB of every TR's Result, and a
Pyneal-compatible results server so existing feedback scripts work unchanged.

Pyneal's protocol (``pyneal/src/resultsServer.py``), kept exactly: a client
opens a TCP connection, sends the volume index as ASCII digits, and receives
one JSON line: ``{"foundResults": true, ...}`` with the results of that
volume, or ``{"foundResults": false}`` if it has not been processed yet; then
the server closes the connection. The server runs in its own thread, off the
hot path: the session only stores a small dict per volume.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

import numpy as np
import zmq

from protocols.wire import Result, encode

from .transport import CurveServer, check_exposure, check_port, set_curve_server, start_authenticator

__all__ = ["ResultsPublisher", "PynealResultsServer", "pyneal_payload", "latency_summary"]

log = logging.getLogger("b2m.results")


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


class PynealResultsServer:
    """Threaded TCP server answering Pyneal-style requests for past volumes.

    Parameters
    ----------
    host, port : str, int
        Where to listen (loopback by default; port 0 picks a free one).

    Raises
    ------
    realtime.transport.EndpointError
        A port outside 0-65535 (``--pyneal-port``), or a host that is not this computer's.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5558, insecure: bool = False):
        check_port(port, f"--pyneal-port {port}")
        check_exposure(f"tcp://{host}:{port}", curve=False, insecure=insecure)
        self._results: dict[int, dict] = {}
        self._lock = threading.Lock()  # server thread only contends with a dict store per TR
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="b2m-pyneal-results", daemon=True)
        self._thread.start()

    def store(self, index: int, payload: dict) -> None:
        """Keep ``payload`` (:func:`pyneal_payload`) for requests about volume ``index``."""
        with self._lock:
            self._results[int(index)] = payload

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        data = b""
        try:
            while len(data) < 32:
                chunk = conn.recv(32)
                if not chunk:
                    break
                data += chunk
                if not chunk or len(chunk) < 32:
                    break
            text = data.decode("ascii", "replace").strip()
            try:
                idx = int(text)
            except ValueError:
                reply = {"foundResults": False, "error": f"send the volume index as ASCII digits, got {text!r}"}
            else:
                with self._lock:
                    found = self._results.get(idx)
                if found is None:
                    reply = {"foundResults": False}
                else:
                    reply = {"foundResults": True, **found}
                    if isinstance(reply.get("embedding"), np.ndarray):
                        reply["embedding"] = [round(float(v), 6) for v in reply["embedding"]]
            conn.sendall((json.dumps(reply) + "\n").encode())
        except OSError as e:
            log.debug("results client dropped: %s", e)
        finally:
            conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            self._answer(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
