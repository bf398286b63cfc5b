"""The scanner side of the link: a sender that never loses a volume.

Every message that expects an ack (volumes, run start, run end) is kept until
the receiver acks or rejects it. Unacked messages are resent after a timeout
and at once after a reconnect, so either side can restart mid-run.
Waiting is event-driven: one ``zmq.Poller`` wakes on acks, on socket
events, or at the next deadline; there is no sleep-polling.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from protocols.errors import MessageError
from protocols.wire import Ack, Message, Reject, RunEnd, RunStart, VolumeMessage, decode, encode

from .transport import CurveClient, connect_dealer

__all__ = ["ReliableSender", "SenderStats"]

log = logging.getLogger("b2m.sender")

_EARLY_RETRY_S = 0.01
# A refused handshake: CURVE keys that do not match, or one side without CURVE.
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | \
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def _key(msg) -> tuple:
    if isinstance(msg, VolumeMessage):
        return ("volume", msg.run_id, msg.index)
    if isinstance(msg, (RunStart, RunEnd)):
        return (msg.type, msg.run_id, None)
    raise TypeError(f"{type(msg).__name__} is not acked")


@dataclass
class _Pending:
    frames: list
    first_sent: float = 0.0
    last_sent: float = float("-inf")
    sends: int = 0
    held: bool = False


@dataclass
class SenderStats:
    """Counters of one sender, all since it started.

    ``latencies_s`` maps a message key to its send -> ack time in seconds,
    measured from the last send of that message.
    """

    sent: int = 0
    resent: int = 0
    held: int = 0
    acked: int = 0
    duplicates: int = 0
    reconnects: int = 0
    auth_failures: int = 0
    rejected: list = field(default_factory=list)
    latencies_s: dict = field(default_factory=dict)

    def volume_latencies_s(self) -> np.ndarray:
        """Send -> ack time of each acked volume (not control messages), seconds, in ack order."""
        return np.array([v for k, v in self.latencies_s.items() if k[0] == "volume"], dtype=float)


class ReliableSender:
    """Send protocol messages and keep each one until it is acked.

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint the receiver binds, e.g. ``tcp://127.0.0.1:5555``.
    resend_timeout_s : float
        Resend a message that has not been acked after this many seconds.
    window : int
        At most this many unacked messages; :meth:`send` waits beyond it.
    ctx : zmq.Context, optional
    curve : CurveClient, optional
        Encrypt the link with CURVE (the receiver must be a CURVE server
        holding the matching key). A refused handshake is logged as an error
        and counted in ``stats.auth_failures``; the sender keeps retrying.
    """

    def __init__(self, endpoint: str, *, resend_timeout_s: float = 1.0, window: int = 64,
                 ctx: zmq.Context | None = None, curve: CurveClient | None = None):
        self.endpoint = endpoint
        self.resend_timeout_s = float(resend_timeout_s)
        self.window = int(window)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        # The handshake (not the TCP connect) is when IMMEDIATE lets messages through.
        self.sock, self._monitor = connect_dealer(
            self.ctx, endpoint, curve=curve,
            monitor_events=zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED)
        self._retry_at = math.inf  # an early retry after a send found no peer
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.pending: dict[tuple, _Pending] = {}
        self.stats = SenderStats()
        self.connected = False
        self._wake_fds: set[int] = set()
        self._wake_poller: zmq.Poller | None = None  # the link's sockets plus the wake descriptors

    # ---- public API ------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Send a message; keep it until acked. Waits while the window is full."""
        while len(self.pending) >= self.window:
            self.poll(self.resend_timeout_s, wake=False)
        key = _key(msg)
        p = _Pending(frames=encode(msg), first_sent=time.monotonic())
        self.pending[key] = p
        # Keep the scanner's order: messages held before the link was up go first. Without this,
        # a message sent after the handshake but before poll() saw it overtook every held one.
        if self._held_unsent():
            self._resend_due(force_unsent=True)
            if self._held_unsent():
                p.held = True
                self.stats.held += 1
                return
        self._transmit(key, p)

    def wake_on(self, fd: int) -> None:
        """Also wake :meth:`poll` and :meth:`wait_until` when file descriptor ``fd`` is readable
        (e.g. an inotify descriptor), so one wait serves the link and another event source."""
        if self._wake_poller is None:
            self._wake_poller = zmq.Poller()
            self._wake_poller.register(self.sock, zmq.POLLIN)
            self._wake_poller.register(self._monitor, zmq.POLLIN)
        self._wake_poller.register(fd, zmq.POLLIN)
        self._wake_fds.add(fd)

    def poll(self, timeout_s: float, wake: bool = True) -> bool:
        """Handle acks and socket events for up to ``timeout_s`` seconds.

        Returns early after the first batch of events; resends what is due.
        Returns True if a descriptor given to :meth:`wake_on` is readable
        (only watched with ``wake``: waits for acks alone leave them queued).
        """
        timeout_ms = max(0, math.ceil(timeout_s * 1000))  # ceil: wake at or after, never spin
        due = self._next_resend_in()
        if due is not None:
            timeout_ms = min(timeout_ms, max(0, math.ceil(due * 1000)))
        if self._retry_at < math.inf:
            timeout_ms = min(timeout_ms, max(0, math.ceil((self._retry_at - time.monotonic()) * 1000)))
        poller = self._wake_poller if wake and self._wake_poller is not None else self._poller
        events = dict(poller.poll(timeout_ms))
        if self._monitor in events:
            self._drain_monitor()
        if self.sock in events:
            self._drain_replies()
        if time.monotonic() >= self._retry_at:
            self._retry_at = math.inf
            self._resend_due(force_unsent=True)
        self._resend_due()
        return any(fd in events for fd in self._wake_fds)

    def wait_until(self, deadline: float) -> bool:
        """Service the link until ``time.monotonic()`` reaches ``deadline``.

        Returns True early if a descriptor given to :meth:`wake_on` became readable.
        """
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if self.poll(deadline - now):
                return True

    def drain(self, timeout_s: float) -> bool:
        """Wait until every message is acked or rejected, or the timeout passes.

        Returns
        -------
        bool
            True if nothing is left unacked.
        """
        end = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < end:
            self.poll(min(self.resend_timeout_s, end - time.monotonic()), wake=False)
        return not self.pending

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(0)
        self.sock.close(0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- internals -------------------------------------------------------

    def _transmit(self, key, p: _Pending) -> None:
        p.last_sent = time.monotonic()
        try:
            self.sock.send_multipart(p.frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if not p.sends and not p.held:
                p.held = True
                self.stats.held += 1
            if self.connected:  # handshake done but pipe not attached yet: retry soon
                self._retry_at = min(self._retry_at, time.monotonic() + _EARLY_RETRY_S)
            return  # no receiver connected: kept, and sent on (re)connect
        if p.sends:
            self.stats.resent += 1
        else:
            self.stats.sent += 1
        p.sends += 1

    def _held_unsent(self) -> bool:
        return any(q.held and not q.sends for q in self.pending.values())

    def _next_resend_in(self) -> float | None:
        if not self.pending:
            return None
        oldest = min(p.last_sent for p in self.pending.values())
        return max(0.0, oldest + self.resend_timeout_s - time.monotonic())

    def _resend_due(self, force: bool = False, force_unsent: bool = False) -> None:
        """(Re)send what is due, oldest first; stop at the first that cannot go (order is kept).

        A message never sent yet (held while no receiver was attached) must not overtake an earlier
        one that has not gone either: a volume that overtook the run's first one would set the run's
        geometry, and the first would be refused.
        """
        now = time.monotonic()
        for key, p in list(self.pending.items()):
            if force or (force_unsent and p.held and not p.sends) or now - p.last_sent >= self.resend_timeout_s:
                before = p.sends
                self._transmit(key, p)
                if p.sends == before:
                    return
            elif not p.sends:  # not due, and never sent: what follows waits for it
                return

    def _drain_monitor(self) -> None:
        reconnected = False
        while True:
            try:
                evt = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if evt["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.stats.sent or self.stats.resent:
                    self.stats.reconnects += 1
                self.connected = reconnected = True
            elif evt["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False
            elif evt["event"] & _HANDSHAKE_FAILED:
                self.stats.auth_failures += 1
                if self.stats.auth_failures == 1:
                    log.error("the receiver at %s refused the handshake: check that both sides use CURVE, that "
                              "the receiver's public key is the one given here, and that this sender's public "
                              "key is in the receiver's clients folder; retrying", self.endpoint)
        if reconnected:
            self._resend_due(force=True)

    def _drain_replies(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = decode(frames)
            except MessageError:
                continue  # not ours; the receiver never sends such a thing
            now = time.monotonic()
            if isinstance(reply, Ack):
                key = (reply.of, reply.run_id, reply.index)
                p = self.pending.pop(key, None)
                if p is not None:
                    self.stats.acked += 1
                    self.stats.latencies_s[key] = now - p.last_sent
                    if reply.status == "duplicate":
                        self.stats.duplicates += 1
            elif isinstance(reply, Reject):
                key = (reply.of, reply.run_id, reply.index)
                self.pending.pop(key, None)
                self.stats.rejected.append((key, reply.field, reply.reason))
