"""Sound through PortAudio (sounddevice): device lookup and a callback stream driving the mixer."""

from __future__ import annotations

import os
import threading
import time
import weakref

import numpy as np

from ._api import _OutputAPI
from ._mixer import Mixer

__all__ = ["AudioDeviceError", "DeviceOutput", "list_output_devices", "resolve_output_device",
           "refresh_devices", "clock_offsets", "clock_slip_ms", "suspend_portaudio", "resume_portaudio"]

_OPEN = weakref.WeakSet()          # DeviceOutputs with an open stream
_ANCHORS = 64                      # callbacks remembered for the clock fit


class AudioDeviceError(RuntimeError):
    """An output device that is missing, ambiguous or cannot be opened as asked."""


def list_output_devices() -> list[dict]:
    """The output devices PortAudio sees now.

    Returns
    -------
    list of dict
        ``index``, ``name``, ``hostapi`` (its name), ``channels`` (max
        output channels) and ``samplerate`` (default rate, Hz).
    """
    import sounddevice as sd

    apis = sd.query_hostapis()
    rows = []
    for d in sd.query_devices():
        if d["max_output_channels"] > 0:
            rows.append({"index": int(d["index"]), "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                         "channels": int(d["max_output_channels"]),
                         "samplerate": float(d["default_samplerate"])})
    return rows


def _device_listing(rows: list[dict]) -> str:
    if not rows:
        return ("  (none: PortAudio sees no output device. On a machine without a sound card start "
                "`jackd -d dummy -r 48000 -p 256` before the session (see README.md, 'A session in one minute'), "
                "or write a file with --audio wav:PATH)")
    return "\n".join(f"  {r['index']}: {r['name']} ({r['hostapi']}), {r['channels']} ch, "
                     f"{r['samplerate']:g} Hz" for r in rows)


def refresh_devices() -> bool:
    """Re-scan devices (PortAudio lists them once, at initialisation): e.g. after jackd started.

    Only done while no :class:`DeviceOutput` stream is open, since it closes
    every stream; returns whether the re-scan happened.
    """
    import sounddevice as sd

    if len(_OPEN):
        return False
    if sd._initialized > 0:
        sd._terminate()
    sd._initialize()
    return True


def suspend_portaudio() -> int:
    """Shut this process's PortAudio down while no :class:`DeviceOutput` is open here.

    PortAudio's JACK host API keeps an active JACK client from initialisation
    on, even without a stream, and JACK runs every client of the graph in
    series each cycle: an idle client in the session process is one more
    thread that must be scheduled in time. :class:`IsolatedOutput` calls this
    while it plays. Returns the number of initialisations to restore with
    :func:`resume_portaudio` (0 if nothing was done).
    """
    import sys

    sd = sys.modules.get("sounddevice")
    if sd is None or len(_OPEN):
        return 0
    n = 0
    while sd._initialized > 0:
        sd._terminate()
        n += 1
    return n


def resume_portaudio(n: int) -> None:
    """Undo :func:`suspend_portaudio`."""
    if n:
        import sounddevice as sd

        for _ in range(n):
            sd._initialize()


def resolve_output_device(device=None) -> int:
    """Turn a device index, a name substring or None/"default" into a PortAudio device index.

    A name matches case-insensitively against ``"name (hostapi)"``; an exact
    name wins over substrings. If nothing matches, devices are re-scanned
    once (:func:`refresh_devices`) before giving up.

    Raises
    ------
    AudioDeviceError
        The device is missing or ambiguous; the message lists the output devices.
    """
    for attempt in range(2):
        rows = list_output_devices()
        try:
            return _match(device, rows)
        except AudioDeviceError:
            if attempt == 0 and refresh_devices():
                continue
            raise
    raise AssertionError("unreachable")


def _match(device, rows: list[dict]) -> int:
    import sounddevice as sd

    hint = ("\nChoose one with --audio INDEX or --audio NAME (a unique substring), or write a file with "
            "--audio wav:PATH.")
    if device is None or (isinstance(device, str) and device.strip().lower() == "default"):
        try:
            idx = int(sd.query_devices(kind="output")["index"])   # sounddevice's, else PortAudio's default
        except Exception:
            idx = rows[0]["index"] if rows else -1
        if any(r["index"] == int(idx) for r in rows):
            return int(idx)
        raise AudioDeviceError("no default audio output device. Output devices:\n" + _device_listing(rows) + hint)
    if isinstance(device, (int, np.integer)) or (isinstance(device, str) and device.strip().isdigit()):
        idx = int(device)
        if any(r["index"] == idx for r in rows):
            return idx
        raise AudioDeviceError(f"no audio output device with index {idx}. Output devices:\n"
                               + _device_listing(rows) + hint)
    if not isinstance(device, str):
        raise AudioDeviceError(f"an output device is an index, a name or 'default', got {device!r}")
    want = device.strip().lower()
    exact = [r for r in rows if r["name"].lower() == want]
    if len(exact) == 1:
        return exact[0]["index"]
    found = [r for r in rows if want in f"{r['name']} ({r['hostapi']})".lower()]
    if len(found) == 1:
        return found[0]["index"]
    if not found:
        raise AudioDeviceError(f"no audio output device matches {device!r}. Output devices:\n"
                               + _device_listing(rows) + hint)
    raise AudioDeviceError(f"{len(found)} audio output devices match {device!r}; be more specific:\n"
                           + _device_listing(found) + hint)


# Counters the callback keeps in one int64 array (shareable with another process). The last three are written
# by the first callback: its thread's scheduling policy plus 1 (0: no callback yet; -1: not readable here),
# real-time priority and id.
STAT_FIELDS = ("callbacks", "underruns", "xruns", "callback_errors", "frame", "late_commands", "voice_steals",
               "sched_policy_plus_1", "sched_priority", "thread_id")
_CB, _UNDER, _XRUN, _ERR, _FRAME, _LATE, _STEAL, _POLICY, _PRIO, _TID = range(len(STAT_FIELDS))
_POLICIES = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
             if hasattr(os, n)}
_REALTIME = {"SCHED_FIFO", "SCHED_RR"}


def _note_thread(st) -> None:
    """The first callback's thread: its scheduling, read once (two system calls), so a site can tell whether
    its audio runs real-time (:attr:`_CallbackCounters.scheduling`)."""
    try:
        st[_TID] = threading.get_native_id()
        st[_PRIO] = os.sched_getparam(0).sched_priority
        st[_POLICY] = os.sched_getscheduler(0) + 1
    except (AttributeError, OSError):  # not Linux: unknown, and not asked again on every callback
        st[_POLICY] = -1


# Per-callback clock anchors, float64 rows: first frame, its DAC time, the callback's
# stream time and time.monotonic() at the callback's start.
ANCHOR_ROWS = 4


def clock_offsets(anchors: np.ndarray, n_callbacks: int, samplerate: int) -> tuple[float, float]:
    """Median clock offsets over the recent callbacks.

    Returns
    -------
    dac0 : float
        Stream time (s) at which output frame 0 is heard: frame ``f`` is
        heard at ``dac0 + f / samplerate``.
    mono_minus_stream : float
        ``time.monotonic() - stream time`` (s).
    """
    if n_callbacks < 2:
        raise RuntimeError("the output has not run yet; call start() first")
    k = min(n_callbacks - 1, anchors.shape[1] - 1)    # skip the slot the callback may be writing
    idx = (n_callbacks - 1 - np.arange(k)) % anchors.shape[1]
    a = anchors[:, idx]
    # the median rejects scheduling jitter and a slot read half-written
    return (float(np.median(a[1] - a[0] / samplerate)), float(np.median(a[3] - a[2])))


def clock_slip_ms(out) -> float | None:
    """How far the stream clock has run ahead of the frames rendered since start, ms.

    Each xrun adds the time it lost (on JACK the server's frame clock moves on
    while no frame is rendered); ``underruns`` counts flagged callbacks, and a
    burst of lost cycles is flagged once, so this is the better measure of
    how much was lost. Zero without xruns, up to the clocks' drift.
    """
    if out._dac0_start is None or out.callbacks < 2:
        return None
    return 1e3 * (clock_offsets(out._anchors, out.callbacks, out.samplerate)[0] - out._dac0_start)


class _CallbackCounters:
    """Counters, clock fit and stats read from the callback's arrays ``_stat`` and ``_anchors``.

    Shared by :class:`DeviceOutput` (arrays its own callback writes) and
    ``IsolatedOutput`` (the same arrays in shared memory, written by the
    child's callback). A subclass sets ``kind``, ``device_name``,
    ``samplerate``, ``channels``, ``blocksize``, ``_stat``, ``_anchors`` and
    ``_dac0_start``, and gives ``frame``, ``late_commands``,
    ``voice_steals`` and ``_latency_s()``.
    """

    @property
    def callbacks(self) -> int:
        return int(self._stat[_CB])

    @property
    def scheduling(self) -> dict | None:
        """How the OS runs the callback's thread, from its first callback: ``{"policy": "SCHED_FIFO",
        "priority": 5, "realtime": True, "thread_id": ...}``; None before it (or where it cannot be read)."""
        code = int(self._stat[_POLICY]) - 1
        if code < 0:
            return None
        name = _POLICIES.get(code, f"policy {code}")
        return {"policy": name, "priority": int(self._stat[_PRIO]), "realtime": name in _REALTIME,
                "thread_id": int(self._stat[_TID])}

    @property
    def underruns(self) -> int:
        return int(self._stat[_UNDER])

    @property
    def xruns(self) -> int:
        return int(self._stat[_XRUN])

    @property
    def callback_errors(self) -> int:
        return int(self._stat[_ERR])

    def _mark_started(self) -> None:
        """Remember where frame 0 is heard at start (the reference of :func:`clock_slip_ms`)."""
        self._dac0_start = clock_offsets(self._anchors, self.callbacks, self.samplerate)[0]

    def time_to_frame(self, t: float) -> int:
        """The output frame heard at stream time ``t`` (seconds, the clock of :meth:`now`)."""
        dac0, _ = clock_offsets(self._anchors, self.callbacks, self.samplerate)
        return int(round((t - dac0) * self.samplerate))

    def last_callback(self) -> float | None:
        """``time.monotonic()`` at the start of the newest callback (None before the first): when a stream
        that stopped last ran."""
        n = self.callbacks
        return None if n < 1 else float(self._anchors[3, (n - 1) % self._anchors.shape[1]])

    def frame_to_time(self, frame: int) -> float:
        """The stream time (seconds) at which output frame ``frame`` is heard."""
        dac0, _ = clock_offsets(self._anchors, self.callbacks, self.samplerate)
        return dac0 + frame / self.samplerate

    def monotonic_to_frame(self, t: float) -> int:
        """The output frame heard at ``time.monotonic()`` time ``t`` (the session's clock)."""
        dac0, mono_minus_stream = clock_offsets(self._anchors, self.callbacks, self.samplerate)
        return int(round((t - mono_minus_stream - dac0) * self.samplerate))

    def stats(self) -> dict:
        """Counters for the session record and dashboard."""
        latency_s = self._latency_s()
        return {"kind": self.kind, "device": self.device_name, "samplerate": self.samplerate,
                "channels": self.channels, "blocksize": self.blocksize, "frames": self.frame,
                "callbacks": self.callbacks, "underruns": self.underruns, "xruns": self.xruns,
                "callback_errors": self.callback_errors, "late_commands": self.late_commands,
                "voice_steals": self.voice_steals, "clock_slip_ms": clock_slip_ms(self),
                "latency_s": latency_s, "callback_scheduling": self.scheduling}

    def __repr__(self):
        return (f"{type(self).__name__}({self.device_name!r}, {self.samplerate} Hz, {self.channels} ch, "
                f"block {self.blocksize}, frame {self.frame}, underruns {self.underruns})")


class DeviceOutput(_CallbackCounters, _OutputAPI):
    """A PortAudio callback stream that plays a :class:`Mixer`.

    The device is looked up and the settings checked when the object is
    made, so a wrong ``--audio`` fails before a session starts, never in the
    middle of one. Nothing raised inside the callback escapes it: an error
    there outputs silence and is counted (``callback_errors``).

    Parameters
    ----------
    device : int, str or None
        Index, name substring, or None / "default".
    samplerate : int or None
        Hz; None takes the device's default rate (on JACK: the server's).
    blocksize : int
        Frames per callback (256 matches ``jackd -p 256``).
    channels : int
        Output channels.
    latency : float, str or None
        Passed to ``sounddevice.OutputStream`` (None: its default).

    Attributes
    ----------
    mixer : Mixer
        What plays; schedule on it or through this object's ``schedule_*``.
    underruns : int
        Callbacks flagged ``output_underflow`` (the stream ran dry; on JACK
        PortAudio raises it for every server xrun).
    xruns : int
        Callbacks with any under- or overflow flag.
    callbacks : int
        Callbacks so far.
    callback_errors : int
        Exceptions caught in the callback (silence was output instead).

    Notes
    -----
    Clock: each callback records its first frame, that frame's DAC time
    (``outputBufferDacTime``), the stream time and ``time.monotonic()``;
    :meth:`time_to_frame` uses the median offset over the last 64 callbacks.
    After an xrun the stream clock and the frame count part by the time
    lost, and the fit follows within about 32 callbacks.
    """

    kind = "device"

    def __init__(self, device=None, samplerate: int | None = None, blocksize: int = 256, channels: int = 2,
                 latency=None, *, _shared: tuple[np.ndarray, np.ndarray] | None = None):
        import sounddevice as sd

        self.device = resolve_output_device(device)
        info = sd.query_devices(self.device)
        self.device_name = f"{info['name']} ({sd.query_hostapis(info['hostapi'])['name']})"
        if channels > info["max_output_channels"]:
            raise AudioDeviceError(f"{self.device_name} has {info['max_output_channels']} output channels; "
                                   f"{channels} were asked for")
        rate = int(round(info["default_samplerate"])) if samplerate is None else int(samplerate)
        try:
            sd.check_output_settings(device=self.device, channels=channels, dtype="float32", samplerate=rate)
        except Exception as exc:
            raise AudioDeviceError(f"{self.device_name} cannot play {channels} channels of float32 at {rate} Hz: "
                                   f"{exc}. Its default rate is {info['default_samplerate']:g} Hz; use that (or "
                                   "leave the rate unset), and match a JACK server's rate") from exc
        self.samplerate = rate
        self.channels = int(channels)
        self.blocksize = int(blocksize)
        self.latency = latency
        self.mixer = Mixer(rate, self.channels, max_block=max(8192, self.blocksize))
        if _shared is None:
            _shared = (np.zeros(len(STAT_FIELDS), np.int64), np.zeros((ANCHOR_ROWS, _ANCHORS), np.float64))
        self._stat, self._anchors = _shared
        self._mono = time.monotonic
        self.last_error: BaseException | None = None
        self._stream = None
        self._dac0_start = None

    # ------------------------------------------------------------------ audio thread
    def _callback(self, outdata, frames, time_info, status):
        st = self._stat
        if not st[_POLICY]:
            _note_thread(st)
        if status:
            if status.output_underflow:
                st[_UNDER] += 1
            if status.output_underflow or status.output_overflow or status.input_underflow \
                    or status.input_overflow:
                st[_XRUN] += 1
        try:
            mixer = self.mixer
            f0 = mixer.frame
            t0 = time_info.outputBufferDacTime
            a = self._anchors
            i = st[_CB] % _ANCHORS
            a[0, i] = f0
            a[1, i] = t0
            a[2, i] = time_info.currentTime
            a[3, i] = self._mono()
            mixer.render(outdata, f0, t0)
            st[_FRAME] = mixer.frame
            st[_LATE] = mixer.late_commands
            st[_STEAL] = mixer.voice_steals
        except BaseException as exc:  # never let the stream die mid-session
            outdata.fill(0.0)
            st[_ERR] += 1
            if self.last_error is None:
                self.last_error = exc
        st[_CB] += 1

    # ------------------------------------------------------------------ control thread
    def start(self, timeout: float = 5.0) -> "DeviceOutput":
        """Open and start the stream; return once the first callbacks have run (so the clock is known)."""
        import sounddevice as sd

        if self._stream is not None:
            return self
        try:
            self._stream = sd.OutputStream(device=self.device, samplerate=self.samplerate,
                                           blocksize=self.blocksize, channels=self.channels, dtype="float32",
                                           latency=self.latency, callback=self._callback)
            self._stream.start()
        except Exception as exc:
            self._stream = None
            raise AudioDeviceError(f"cannot start a stream on {self.device_name} at {self.samplerate} Hz: "
                                   f"{exc}") from exc
        _OPEN.add(self)
        end = time.monotonic() + timeout
        while self.callbacks < 2:     # start-up only: not on the hot path
            if time.monotonic() > end:
                self.close()
                raise AudioDeviceError(f"{self.device_name} started but its callback never ran within "
                                       f"{timeout} s; is the audio server (jackd) running and not stalled?")
            time.sleep(0.002)
        self._mark_started()
        return self

    def close(self) -> None:
        """Stop and close the stream (idempotent)."""
        s, self._stream = self._stream, None
        if s is not None:
            try:
                s.stop()
            finally:
                s.close()
        _OPEN.discard(self)
        self.mixer.collect()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def active(self) -> bool:
        """True while the stream runs (False after close or if the server went away)."""
        return self._stream is not None and bool(self._stream.active)

    @property
    def frame(self) -> int:
        """Frames rendered so far (the next frame the callback will render)."""
        return self.mixer.frame

    def now(self) -> float:
        """The stream clock now, seconds (PortAudio's stream time)."""
        if self._stream is None:
            raise RuntimeError("the output is not started")
        return float(self._stream.time)

    @property
    def late_commands(self) -> int:
        """Commands executed after their frame had already been rendered (see :class:`Mixer`)."""
        return self.mixer.late_commands

    @property
    def voice_steals(self) -> int:
        """Voices cut because a switch found all busy (see :class:`Mixer`)."""
        return self.mixer.voice_steals

    def heard_frame(self) -> int:
        """The frame reaching the listener now (earlier than :attr:`frame` by the output latency)."""
        return self.time_to_frame(self.now())

    def _latency_s(self) -> float | None:
        return None if self._stream is None else float(self._stream.latency)
