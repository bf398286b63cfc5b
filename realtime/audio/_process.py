"""A device output in its own process, so the callback never waits for the session's GIL.

The PortAudio callback is Python and needs the GIL once per block (5.3 ms
at 256 frames and 48 kHz). In the session process the GIL is also wanted by
the receiver, preprocessing, the decoder and the policy; a thread holding it
hands it over only every ``sys.getswitchinterval()`` (5 ms), and if the OS
deschedules that thread while it holds the GIL, the callback waits for it.
Measured on JACK's dummy backend with a pure-Python busy thread beside the
stream: 40-60 underruns per second in-process, about 1 per second isolated
(the machine's own rate on this loaded 2-CPU VM; a C client saw 0.3-0.5).
Here the stream and its :class:`Mixer` live in a child process whose only
other thread sleeps in a blocking ``recv`` on a socket, so the callback
always finds the GIL free.

Hand-over:

- the child is a fresh interpreter (``python -m realtime.audio._child``);
  commands go down a socket pair as pickled messages
  (``multiprocessing.connection``), and the parent waits for each reply (so
  errors raise in the caller, as with :class:`DeviceOutput`);
- a clip's samples are copied once into a ``SharedMemory`` block that the
  child maps without copying; the parent unlinks the name as soon as the
  child has mapped it, and the child releases the mapping when the mixer
  retires the command (on its control thread, never in the callback);
- the callback's counters and clock anchors live in one small shared block,
  so ``frame``, ``underruns`` and ``time_to_frame`` need no round trip.

The clock on the parent side is ``time.monotonic()`` mapped to the stream
clock through the anchors (``now()``); the child's stream clock is not
directly readable from here.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection

import numpy as np

from ._device import (_ANCHORS, _FRAME, _LATE, _STEAL, ANCHOR_ROWS, STAT_FIELDS, AudioDeviceError,
                      _CallbackCounters, clock_offsets, resume_portaudio, suspend_portaudio)
from ._mixer import _STOP, _SWITCH, Timeline, _nonneg_int, check_beats, check_source

__all__ = ["IsolatedOutput", "Staged"]

_STAT_BYTES = 8 * 16
_SHARED_BYTES = _STAT_BYTES + 8 * ANCHOR_ROWS * _ANCHORS


def _views(buf) -> tuple[np.ndarray, np.ndarray]:
    stat = np.ndarray((len(STAT_FIELDS),), np.int64, buffer=buf, offset=0)
    anchors = np.ndarray((ANCHOR_ROWS, _ANCHORS), np.float64, buffer=buf, offset=_STAT_BYTES)
    return stat, anchors


def _attach(name: str) -> shared_memory.SharedMemory:
    """Map a block the parent owns. Python < 3.13 registers every attach with a resource tracker
    that would unlink the block when this process exits; the parent unlinks it, so unregister."""
    from multiprocessing import resource_tracker

    block = shared_memory.SharedMemory(name=name)
    try:
        resource_tracker.unregister(block._name, "shared_memory")
    except Exception:
        pass
    return block


def _child_main(conn, shm_name, device, samplerate, blocksize, channels, latency):  # pragma: no cover - child
    """The audio process: owns the stream and the mixer, serves the parent's requests."""
    from ._device import DeviceOutput

    shm = _attach(shm_name)
    stat, anchors = _views(shm.buf)
    try:
        out = DeviceOutput(device, samplerate, blocksize, channels, latency, _shared=(stat, anchors))
    except Exception as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        del stat, anchors
        shm.close()
        return
    # Do now, before the stream runs, what would otherwise hold this process's GIL for
    # milliseconds later: start the resource tracker that shared-memory attaches talk to
    # (a fork and exec), and move everything allocated so far out of the collector's way.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    gc.collect()
    gc.freeze()
    conn.send(("ok", {"device": out.device, "device_name": out.device_name, "samplerate": out.samplerate}))
    clips: dict[int, tuple] = {}
    staged: dict[int, list] = {}  # stage id -> [shared block, array, commands using it, unstaged]
    unclosed: list = []

    def drop_staged(sid):
        entry = staged[sid]
        if entry[2] == 0 and entry[3]:
            del staged[sid]
            unclosed.append(entry[0])

    def release(ids):
        for cid in ids:
            entry = clips.pop(cid, None)
            if entry is None:
                continue
            if entry[0] == "staged":
                staged[entry[1]][2] -= 1
                drop_staged(entry[1])
            else:
                unclosed.append(entry[0])
        for s in list(unclosed):
            try:
                s.close()
                unclosed.remove(s)
            except BufferError:      # a view is still alive somewhere; try again next time
                pass

    try:
        while True:
            try:
                msg = conn.recv()              # blocks with the GIL released
            except EOFError:                   # the parent is gone
                break
            op = msg[0]
            try:
                if op == "start":
                    out.start(timeout=msg[1])
                    reply = ("ok", None)
                elif op == "switch":
                    _, name, shape, at_frame, n, loop, offset, beats = msg
                    s = _attach(name)
                    try:
                        src = np.ndarray(shape, np.float32, buffer=s.buf)
                        cid = out.mixer.schedule_switch(at_frame, src, n, loop=loop, offset=offset,
                                                        beat_frames=beats)
                    except BaseException:
                        src = None
                        s.close()
                        raise
                    clips[cid] = (s, src)
                    src = None
                    reply = ("ok", cid)
                elif op == "stage":
                    _, sid, name, shape = msg
                    s = _attach(name)
                    staged[sid] = [s, np.ndarray(shape, np.float32, buffer=s.buf), 0, False]
                    reply = ("ok", sid)
                elif op == "switch_staged":
                    _, sid, at_frame, n, loop, offset, beats = msg
                    if sid not in staged or staged[sid][3]:
                        raise ValueError(f"staged source {sid} is not (or no longer) staged")
                    cid = out.mixer.schedule_switch(at_frame, staged[sid][1], n, loop=loop, offset=offset,
                                                    beat_frames=beats)
                    staged[sid][2] += 1
                    clips[cid] = ("staged", sid)
                    reply = ("ok", cid)
                elif op == "unstage":
                    if msg[1] in staged:
                        staged[msg[1]][3] = True
                        drop_staged(msg[1])
                    reply = ("ok", None)
                elif op == "stop":
                    reply = ("ok", out.mixer.schedule_stop(msg[1], msg[2]))
                elif op == "gain":
                    reply = ("ok", out.mixer.schedule_gain(msg[1], msg[2], msg[3]))
                elif op == "current_gain":
                    reply = ("ok", out.mixer.current_gain())
                elif op == "level":
                    reply = ("ok", out.mixer.level(msg[1]))
                elif op == "executed":
                    reply = ("ok", out.mixer.executed())
                elif op == "info":
                    reply = ("ok", {"latency_s": None if out._stream is None else float(out._stream.latency),
                                    "stream_time": None if out._stream is None else out.now(),
                                    "pending": out.mixer.pending, "clips": len(clips),
                                    "last_error": repr(out.last_error) if out.last_error else None})
                elif op == "close":
                    break
                else:
                    reply = ("error", "ValueError", f"unknown request {op!r}")
            except Exception as exc:
                reply = ("error", type(exc).__name__, str(exc))
            release(out.mixer.collect())
            conn.send(reply)
    finally:
        out.close()
        release(list(clips))
        for sid in list(staged):
            staged[sid][2], staged[sid][3] = 0, True
            drop_staged(sid)
        release([])
        del stat, anchors, out
        try:
            shm.close()
        except BufferError:
            pass
        try:
            conn.send(("ok", "closed"))
        except (OSError, EOFError):
            pass


class Staged:
    """A source copied into the audio process by :meth:`IsolatedOutput.stage`."""

    __slots__ = ("id", "shape", "owner")

    def __init__(self, sid: int, shape: tuple, owner):
        self.id, self.shape, self.owner = int(sid), tuple(shape), owner

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Staged(id={self.id}, frames={self.shape[0]}, channels={self.shape[1]})"


class IsolatedOutput(_CallbackCounters):
    """A :class:`DeviceOutput` run in a child process; the same scheduling API.

    Parameters are those of :class:`DeviceOutput`; ``timeout`` bounds the
    child's start-up (seconds). The device is resolved in the child when this
    object is made, so a missing device raises :class:`AudioDeviceError`
    here, with the list of devices.

    Sources handed to :meth:`schedule_switch` are copied (once, into shared
    memory), so the caller may reuse them.

    While it plays, this process's own PortAudio is shut down if no
    :class:`DeviceOutput` is open here (:func:`suspend_portaudio`): its idle
    JACK client would otherwise run in every JACK cycle too. sounddevice
    queries in this process fail until :meth:`close` restores it.
    """

    kind = "device-process"

    def __init__(self, device=None, samplerate: int | None = None, blocksize: int = 256, channels: int = 2,
                 latency=None, timeout: float = 60.0):
        self._shm = shared_memory.SharedMemory(create=True, size=_SHARED_BYTES)
        self._shm.buf[:_SHARED_BYTES] = bytes(_SHARED_BYTES)
        self._stat, self._anchors = _views(self._shm.buf)
        ours, theirs = socket.socketpair()
        args = json.dumps({"fd": theirs.fileno(), "shm": self._shm.name, "device": device,
                           "samplerate": samplerate, "blocksize": blocksize, "channels": channels,
                           "latency": latency})
        # A fresh interpreter (not multiprocessing's spawn, which re-imports the caller's __main__)
        # that imports this package from where this process found it.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self._proc = subprocess.Popen([sys.executable, "-m", "realtime.audio._child", args],
                                      pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._lock = threading.Lock()  # requests come from the session thread and the clip loader
        self._next_stage = 0
        self.channels = int(channels)
        self.blocksize = int(blocksize)
        self._timeline = Timeline()
        self._closed = False
        self._started = False
        self._dac0_start = None
        self._suspended = 0
        try:
            info = self._request(None, timeout)
        except BaseException:
            self._shutdown()
            raise
        self.device = info["device"]
        self.device_name = info["device_name"]
        self.samplerate = int(info["samplerate"])

    # ------------------------------------------------------------------ plumbing
    def _request(self, msg, timeout: float = 30.0):
        with self._lock:
            return self._request_locked(msg, timeout)

    def _request_locked(self, msg, timeout: float):
        if self._closed:
            raise RuntimeError("the output is closed")
        if msg is not None:
            self._conn.send(msg)
        if not self._conn.poll(timeout):       # a blocking wait, not a sleep loop
            raise AudioDeviceError(f"the audio process did not answer within {timeout} s "
                                   f"(exit code {self._proc.poll()})")
        try:
            reply = self._conn.recv()
        except EOFError as exc:
            try:
                code = self._proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            raise AudioDeviceError(f"the audio process died (exit code {code}); see its messages above") from exc
        if reply[0] == "ok":
            return reply[1]
        _, kind, text = reply
        exc_type = {"AudioDeviceError": AudioDeviceError, "ValueError": ValueError, "TypeError": TypeError,
                    "RuntimeError": RuntimeError}.get(kind, RuntimeError)
        raise exc_type(text)

    def _shutdown(self, stream_dead: bool = False) -> None:
        if not self._closed:
            self._closed = True
            if stream_dead and self._proc.poll() is None:
                # PortAudio asserts (and aborts the process, loudly) when it closes a stream whose server is
                # gone: the process is stopped instead, and the system reclaims what it held
                self._proc.kill()
            try:
                if not stream_dead:
                    self._conn.send(("close",))
                    if self._conn.poll(10):
                        self._conn.recv()
            except (OSError, EOFError):
                pass
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._conn.close()
        resume_portaudio(self._suspended)
        self._suspended = 0
        if self._shm is not None:
            self._stat, self._anchors = self._stat.copy(), self._anchors.copy()   # keep the final counts
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 5.0) -> "IsolatedOutput":
        """Start the stream; return once its first callbacks have run."""
        if not self._started:
            self._request(("start", timeout), timeout + 5)
            self._started = True
            self._mark_started()
            self._suspended = suspend_portaudio()     # our own idle JACK client would share each cycle
        return self

    def close(self) -> None:
        """Stop the stream and the audio process (idempotent)."""
        self._shutdown()

    def abandon(self) -> None:
        """Close an output whose stream stopped for good (its server or device gone): the process is killed."""
        self._shutdown(stream_dead=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._shutdown()
        except Exception:
            pass

    # ------------------------------------------------------------------ scheduling
    def stage(self, source: np.ndarray) -> "Staged":
        """Copy ``source`` into the audio process now (off the hot path); switch to it later by handle.

        A switch to a staged source sends only its id: no copy of several MB
        while a TR waits. Call :meth:`unstage` when it is no longer wanted;
        its memory goes once no scheduled command uses it. Thread-safe.
        """
        source = check_source(source, self.channels)
        block = shared_memory.SharedMemory(create=True, size=max(source.nbytes, 1))
        try:
            view = np.ndarray(source.shape, np.float32, buffer=block.buf)
            view[...] = source
            del view
            with self._lock:
                sid = self._next_stage
                self._next_stage += 1
                self._request_locked(("stage", sid, block.name, source.shape), 30.0)
        finally:
            block.close()
            block.unlink()
        return Staged(sid, source.shape, self)

    def unstage(self, staged: "Staged") -> None:
        """Let the audio process free a staged source (once no command plays it)."""
        if isinstance(staged, Staged) and staged.owner is self and not self._closed:
            self._request(("unstage", staged.id))

    def schedule_switch(self, at_frame: int, source, crossfade_frames: int = 0, *,
                        loop: bool = True, offset: int = 0, beat_frames=None) -> int:
        """See :meth:`Mixer.schedule_switch`; ``source`` is copied to the audio process (or staged)."""
        n = _nonneg_int(crossfade_frames, "crossfade_frames")
        offset = _nonneg_int(offset, "offset")
        beats = check_beats(beat_frames)
        self._timeline.check(int(at_frame))
        if isinstance(source, Staged):
            if source.owner is not self:
                raise ValueError("this source was staged on another output")
            cid = self._request(("switch_staged", source.id, int(at_frame), n, bool(loop), offset, beats))
            self._timeline.record(_SWITCH, at_frame, source.shape[0], offset, loop, beats)
            return cid
        source = check_source(source, self.channels)
        block = shared_memory.SharedMemory(create=True, size=source.nbytes)
        try:
            view = np.ndarray(source.shape, np.float32, buffer=block.buf)
            view[...] = source
            del view
            cid = self._request(("switch", block.name, source.shape, int(at_frame), n, bool(loop), offset, beats))
        finally:
            block.close()
            block.unlink()                    # the child keeps its mapping; the name is no longer needed
        self._timeline.record(_SWITCH, at_frame, source.shape[0], offset, loop, beats)
        return cid

    def schedule_stop(self, at_frame: int, fade_frames: int = 0) -> int:
        """See :meth:`Mixer.schedule_stop`."""
        n = _nonneg_int(fade_frames, "fade_frames")
        self._timeline.check(int(at_frame))
        cid = self._request(("stop", int(at_frame), n))
        self._timeline.record(_STOP, at_frame, 0, 0, False, None)
        return cid

    def schedule_gain(self, at_frame: int, gain: float, ramp_frames: int = 0) -> int:
        """See :meth:`Mixer.schedule_gain` (checked in the child, whose error comes back here)."""
        return self._request(("gain", int(at_frame), float(gain), _nonneg_int(ramp_frames, "ramp_frames")))

    def current_gain(self) -> float:
        """See :meth:`Mixer.current_gain`."""
        return float(self._request(("current_gain",)))

    def level(self, seconds: float = 1.0) -> dict | None:
        """See :meth:`Mixer.level` (measured in the child, which renders)."""
        return self._request(("level", float(seconds)))

    def next_beat_frame(self, after_frame: int, every: int = 1) -> int | None:
        """See :meth:`Mixer.next_beat_frame`."""
        return self._timeline.next_beat_frame(after_frame, every)

    def executed(self) -> list[dict]:
        """See :meth:`Mixer.executed`."""
        return self._request(("executed",))

    # ------------------------------------------------------------------ counters and clock
    @property
    def frame(self) -> int:
        return int(self._stat[_FRAME])

    @property
    def late_commands(self) -> int:
        return int(self._stat[_LATE])

    @property
    def voice_steals(self) -> int:
        return int(self._stat[_STEAL])

    @property
    def active(self) -> bool:
        return self._started and not self._closed and self._proc.poll() is None

    def now(self) -> float:
        """The stream clock now (seconds), estimated from ``time.monotonic()`` and the callbacks' anchors."""
        _, mono_minus_stream = clock_offsets(self._anchors, self.callbacks, self.samplerate)
        return time.monotonic() - mono_minus_stream

    def heard_frame(self) -> int:
        return self.monotonic_to_frame(time.monotonic())

    def _latency_s(self) -> float | None:
        return None if self._closed else self._request(("info",)).get("latency_s")


def _main(argv=None) -> None:  # pragma: no cover - runs in the child
    a = json.loads((sys.argv[1:] if argv is None else argv)[0])
    conn = Connection(a["fd"])
    _child_main(conn, a["shm"], a["device"], a["samplerate"], a["blocksize"], a["channels"], a["latency"])
