"""``b2m session --check``: try every part a session needs before the scanner starts.

Run it at the console on the day, with the same ``--model``, ``--library``,
``--audio``, ``--bind``, ``--results``, ``--control`` and ``--pyneal-port``
the session will get. Each check uses the real part, exactly as the session opens it:

- the model bundle (its manifest and sha256s) and the music library load;
- they share one embedder;
- the ONNX decoder's time per TR (one thread, as in the session);
- the scanner endpoint, the results endpoint, the operator's control
  endpoint and the Pyneal port can be bound (nothing else holds them; CURVE
  rules as in the session);
- with ``--mode generation``, the library is a generator atlas, and the
  neutral piece's first segments are rendered and timed;
- with ``--yoked-from SOURCE`` (a sham session), the source session's played
  clips are read and every one is found in the library (with ``--allocation``,
  the same without saying whether the participant is a sham);
- with ``--protocol``, the block design is read;
- this computer's clock is synchronised (NTP, PTP), as the kernel reports it;
- the audio output opens and plays the neutral clip for a few seconds, with
  its callbacks and underruns counted, and says whether its callback thread
  runs real-time (``SCHED_FIFO`` or ``SCHED_RR``) and, if not, what to do.

Nothing is written except what ``--audio wav:PATH`` asks for. A failing
check says what failed and what to do; the others still run. A check that
passes with a warning (``WARN``: an unsynchronised clock, a callback that is
not real-time) lets the session run, but says what to put right.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Check", "preflight", "format_checks", "describe_scheduling"]


@dataclass(frozen=True)
class Check:
    """One pre-flight check: its name, whether it passed, what it found, and whether what it found, though no
    failure, needs putting right (``warn``)."""

    name: str
    ok: bool
    detail: str
    warn: bool = False

    @property
    def status(self) -> str:
        """``"PASS"``, ``"WARN"`` (passed, with a warning) or ``"FAIL"``."""
        return "FAIL" if not self.ok else ("WARN" if self.warn else "PASS")


def _attempt(name: str, fn) -> tuple[Check, object]:
    """Run one check: ``fn()`` returns ``(detail, value)``, or ``(detail, value, warn)``; an exception fails it."""
    try:
        detail, value, *warn = fn()
        return Check(name, True, detail, bool(warn and warn[0])), value
    except Exception as exc:  # every failure is reported, none stops the other checks
        return Check(name, False, f"{type(exc).__name__}: {exc}"), None


def _host_clock() -> tuple[str, None, bool]:
    from ..clocks import describe_host_clock, host_clock_sync

    text, warn = describe_host_clock(host_clock_sync())
    return text, None, warn


def _decoder_speed(decoder, n: int = 200) -> tuple[str, None]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, decoder.input_dim)).astype(np.float32)
    ms = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        decoder.decode(x[i])
        ms[i] = (time.perf_counter() - t0) * 1e3
    return (f"{decoder.input_dim} inputs -> {decoder.dim}-d embedding; {n} decodes on 1 thread: "
            f"p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms"), None


def _generator_speed(library, segment_bars: int, samplerate: int = 48000) -> tuple[str, None]:
    from realtime.feedback import FeedbackPolicy, PolicyConfig

    from .generation import LivePieces

    pieces = LivePieces(library, samplerate, 2, segment_bars)
    try:
        index = FeedbackPolicy(library, PolicyConfig()).neutral_clip
        t0 = time.perf_counter()
        pieces.prepare(index)
        first_ms = (time.perf_counter() - t0) * 1e3
        pieces.start(index)
        segs = [pieces.next_segment() for _ in range(2)]   # on the worker or here: each render is timed
        seg_ms = pieces.stats["render_ms_max"]
    finally:
        pieces.close()
    audio_s = segs[-1].n_frames / samplerate
    genres = sorted({p[0] for p in pieces.points})
    return (f"{len(pieces.points)} generator points ({len(genres)} genres); neutral piece "
            f"'{library.clips[index].id}': a new piece and its first {segment_bars} bars in {first_ms:.0f} ms; "
            f"the slowest {segment_bars}-bar segment ({audio_s:.1f} s of audio at {samplerate} Hz) in "
            f"{seg_ms:.0f} ms ({audio_s * 1e3 / max(seg_ms, 1e-6):.0f}x real time)"), None


def describe_scheduling(sched: dict | None) -> str:
    """The audio callback thread's scheduling for the check's line (empty for a WAV sink, which has none)."""
    if not sched:
        return ""
    if sched["realtime"]:
        return f"; its callback runs real-time ({sched['policy']}, priority {sched['priority']})"
    return (f"; its callback is NOT real-time ({sched['policy']}): other programs can delay it into underruns. "
            "On JACK, run jackd with -R (its default) by a user allowed real-time priority; otherwise give the "
            "session's user a real-time limit (e.g. the audio group's rtprio in /etc/security/limits.d)")


def _play(library, spec: str, isolate: bool, seconds: float, level_dbfs: float | None) -> tuple[str, None, bool]:
    from realtime.audio import open_output
    from realtime.feedback import FeedbackPolicy, PolicyConfig

    from .clips import ClipCache

    out = open_output(spec, isolate=isolate)
    clips = None
    try:
        out.start()
        clips = ClipCache(library, out.samplerate, out.channels, stage=out.stage, unstage=out.unstage,
                          level_dbfs=level_dbfs)
        index = FeedbackPolicy(library, PolicyConfig()).neutral_clip
        ready = clips.preload(index)
        sr = out.samplerate
        at = out.frame + int(0.1 * sr)
        fade = int(0.05 * sr)
        out.schedule_switch(at, ready.source, fade, beat_frames=ready.beat_frames)
        end = at + int(seconds * sr)
        out.schedule_stop(end, fade)
        if hasattr(out, "advance_to"):      # a WAV sink: its clock is the frames it is asked for
            out.advance_to(end + fade)
        else:
            time.sleep((end + fade - out.frame) / sr + 0.05)   # the device plays meanwhile
        st = out.stats()
    finally:
        if clips is not None:
            clips.close()
        out.close()
    bad = st.get("underruns", 0) + st.get("callback_errors", 0)
    text = (f"{out!r}: {seconds:g} s of '{library.clips[index].id}' at {sr} Hz, {st.get('callbacks', 0)} callbacks, "
            f"{st.get('underruns', 0)} underruns, {st.get('callback_errors', 0)} callback errors"
            + describe_scheduling(st.get("callback_scheduling")))
    if bad:
        raise RuntimeError(text + ": the output could not keep up; close other audio programs or pick another "
                                  "device with --audio")
    sched = st.get("callback_scheduling")
    return text, None, bool(sched) and not sched.get("realtime")


def preflight(model: str, library: str, *, audio: str = "default", isolate: bool = True,
              bind: str | None = None, results: str | None = None, pyneal_port: int | None = None,
              insecure: bool = False, curve=None, seconds: float = 2.0, mode: str = "retrieval",
              segment_bars: int = 4, yoked_from: str | None = None, blind: bool = False,
              protocol: str | None = None, level_dbfs: float | None = -20.0, trigger: str | None = None,
              trigger_key: str = "5", trigger_baud: int | None = None, out: str | None = None,
              control: str | None = None, control_fallback: bool = False) -> list[Check]:
    """Run every check (see the module doc) and return them in order.

    Parameters
    ----------
    model, library : str
        The bundle and library folders the session will use.
    audio : str
        ``--audio``: a device name or index, ``"default"`` or ``"wav:PATH"``.
    isolate : bool
        Open a device in its own process, as the session does by default.
    bind, results, control : str or None
        Scanner, results and operator-control endpoints (None or ``"none"``: not checked).
    control_fallback : bool
        The control endpoint is the default, which a session moves to a free
        port if it is taken: a taken one is then no failure.
    pyneal_port : int or None
    insecure : bool
        Allow non-loopback endpoints without CURVE keys, as ``--insecure``.
    curve : realtime.transport.CurveServer, optional
        The CURVE keys of the scanner link and the results stream (``--curve-secret``).
    seconds : float
        How long the neutral clip plays.
    mode : {"retrieval", "generation"}
        With generation, also check the library is a generator atlas and time
        the rendering of the neutral piece's first segment.
    segment_bars : int
        Generation: bars per segment, as the session's ``--segment-bars``.
    yoked_from : str, optional
        A sham session's source session folder (``--yoked-from``).
    protocol : str, optional
        The block design (``--protocol``): read and checked.
    level_dbfs : float or None
        The session's ``--level-dbfs``: the neutral clip plays at that level.
    trigger, trigger_key, trigger_baud : optional
        The scanner's trigger input (``--trigger``): opened, and listened to
        for ``seconds`` (pulses now mean the scanner is running).
    out : str, optional
        The session folder (``--out``): the free space on its disk, in hours
        of scanning on the model's grid (fails under :data:`DISK_HOURS`).
    blind : bool
        The condition came from ``--allocation``: the check is made under the
        name "allocation" for every participant, and its result does not say
        which condition it found.
    """
    from music.library import Library
    from protocols.library import check_same_embedder
    from realtime.decoder import Decoder

    def load_bundle():
        from protocols.bundle import training_tsnr

        d = Decoder(model, threads=1)
        ts = training_tsnr(d.manifest)
        return (f"{model}: embedder {d.embedder.get('id')}, delays {d.manifest['preprocess'].get('delays')}, "
                f"{d.input_dim} inputs" + ("" if ts is None else f", Training runs' tSNR {ts:.0f}")), d

    def load_library():
        lb = Library(library)
        return f"{library}: {len(lb.clips)} clips", lb

    def same_embedder():
        check_same_embedder(decoder.embedder, lib.embedder, "model bundle", "music library")
        return f"one embedder: {lib.embedder.get('id')}", None

    checks: list[Check] = []
    c, decoder = _attempt("model bundle", load_bundle)
    checks.append(c)
    c, lib = _attempt("music library", load_library)
    checks.append(c)
    if decoder is not None and lib is not None:
        checks.append(_attempt("bundle and library", same_embedder)[0])
    else:
        checks.append(Check("bundle and library", False, "not checked: the bundle or the library did not load"))
    if decoder is not None:
        checks.append(_attempt("decoder speed", lambda: _decoder_speed(decoder))[0])
    if out is not None and decoder is not None:
        checks.append(_attempt("disk space", lambda: _disk_space(out, decoder))[0])
    if bind and bind != "none":
        checks.append(_attempt("scanner endpoint", lambda: _bind_router(bind, insecure, curve))[0])
    if results and results != "none":
        checks.append(_attempt("results endpoint", lambda: _bind_publisher(results, insecure, curve))[0])
    if control and control != "none":
        checks.append(_attempt("operator control", lambda: _bind_control(control, insecure, curve,
                                                                             control_fallback))[0])
    if pyneal_port is not None:
        checks.append(_attempt("Pyneal port", lambda: _bind_pyneal(pyneal_port, insecure))[0])
    if mode == "generation":
        if lib is not None:
            checks.append(_attempt("generator", lambda: _generator_speed(lib, segment_bars))[0])
        else:
            checks.append(Check("generator", False, "not checked: the library did not load"))
    if protocol is not None:
        checks.append(_attempt("protocol", lambda: _protocol(protocol))[0])
    if trigger is not None:
        checks.append(_attempt("scanner trigger", lambda: _trigger(trigger, trigger_key, trigger_baud, seconds))[0])
    if yoked_from is not None or blind:
        name = "allocation" if blind else "yoked source"
        if lib is None:
            checks.append(Check(name, False, "not checked: the library did not load"))
        elif blind:
            def allocated():
                if yoked_from is not None:
                    _yoked_source(yoked_from, lib, mode, level_dbfs)
                return "the participant's condition was read and can be played (blinded)", None

            checks.append(_attempt(name, allocated)[0])
        else:
            checks.append(_attempt(name, lambda: _yoked_source(yoked_from, lib, mode, level_dbfs))[0])
    checks.append(_attempt("host clock", _host_clock)[0])
    if lib is not None:
        checks.append(_attempt("audio output", lambda: _play(lib, audio, isolate, seconds, level_dbfs))[0])
    else:
        checks.append(Check("audio output", False, "not checked: the library did not load"))
    return checks


def _protocol(path: str) -> tuple[str, None]:
    from .protocol import read_protocol

    protocol = read_protocol(path)
    return f"{path}: {len(protocol.blocks)} blocks: {protocol.describe(limit=6)}", None


#: Hours of scanning the session folder's disk must have room for.
DISK_HOURS = 1.0


def _disk_space(out: str, decoder) -> tuple[str, None]:
    """Free space where ``out`` is (or would be created), in volumes and hours of the model's grid."""
    import shutil

    where = os.path.abspath(out)
    if os.path.exists(where) and not os.path.isdir(where):
        raise ValueError(f"{out} is a file: --out is the session's folder (a new one, or an interrupted "
                         "session's to continue)")
    while not os.path.exists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where) or not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{out} cannot be written: {where} is " + ("a file" if not os.path.isdir(where) else
                         "not writable by this user") + "; give --out a folder this user may create")
    free = shutil.disk_usage(where).free
    mask = decoder.manifest["mask"]
    tr_s = float(decoder.manifest.get("tr_s") or 2.0)
    # an int16 volume of the grid, twice (the record, then the run's NIfTI export), and its record header
    per_volume = 2 * 2 * int(np.prod(mask["shape"])) + 1024
    volumes = free // per_volume
    hours = volumes * tr_s / 3600.0
    text = (f"{free / 2**30:.1f} GiB free on the disk of {out}: room for {volumes:,} volumes of the model's "
            f"{'x'.join(map(str, mask['shape']))} grid (int16, recorded and exported), {hours:.1f} h at TR "
            f"{tr_s:g} s")
    if hours < DISK_HOURS:
        raise ValueError(text + f"; a session needs {DISK_HOURS:g} h: make room, or give --out on another disk")
    return text, None


def _trigger(source: str, key: str, baud: int | None, seconds: float) -> tuple[str, None]:
    from ..triggers import TriggerInput

    with TriggerInput(source, key, baud) as trigger:
        t_end, times = time.monotonic() + seconds, []
        while time.monotonic() < t_end and not trigger.closed:
            times += trigger.read(min(0.05, max(0.0, t_end - time.monotonic())))
        other = trigger.other
    if trigger.closed and not times:
        raise ValueError(f"{source} closed at once: is it the trigger box's port?")
    text = f"{source} opened; {len(times)} pulses (key {key!r}) in {seconds:g} s"
    if len(times) > 1:
        text += f", every {(times[-1] - times[0]) / (len(times) - 1):.3f} s"
    if other:
        text += f"; {other} other bytes (not the key: check the box's mode or --trigger-key)"
    return text, None


def _yoked_source(source: str, library, mode: str, level_dbfs: float | None) -> tuple[str, None]:
    from .yoked import yoked_schedule

    sched = yoked_schedule(source, library, mode, level_dbfs)
    runs = sched["runs"]
    switches = sum(sum(a != b for a, b in zip(r["clips"], r["clips"][1:]) if a and b) for r in runs)
    return (f"{sched['source']}: {len(runs)} run(s) ({', '.join(str(len(r['clips'])) for r in runs)} volumes), "
            f"{switches} switches, every clip in the library"), None


def _bind_router(endpoint: str, insecure: bool, curve=None) -> tuple[str, None]:
    import zmq

    from realtime.transport import bind_router, describe_curve

    ctx = zmq.Context()
    try:
        sock = bind_router(ctx, endpoint, insecure=insecure, curve=curve)
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.close(0)
    finally:
        ctx.term()
    return f"{bound} can be bound (then released); {describe_curve(curve)}", None


def _bind_publisher(endpoint: str, insecure: bool, curve=None) -> tuple[str, None]:
    from realtime.results import ResultsPublisher
    from realtime.transport import describe_curve

    pub = ResultsPublisher(endpoint, insecure=insecure, curve=curve)
    try:
        return f"{pub.endpoint} can be bound (then released); {describe_curve(curve)}", None
    finally:
        pub.close()


def _bind_control(endpoint: str, insecure: bool, curve=None, fallback: bool = False) -> tuple[str, None]:
    import types

    from realtime.transport import describe_curve

    from .operator import ControlServer, OperatorControl

    # a control with nothing to control (no engine output, no record): the socket is what is checked
    control = OperatorControl(types.SimpleNamespace(output=None))
    try:
        srv = ControlServer(control, endpoint, insecure=insecure, curve=curve)
        said = f"{srv.endpoint} can be bound (then released)"
    except ValueError:
        if not fallback:
            raise
        srv = ControlServer(control, endpoint.rsplit(":", 1)[0] + ":*", insecure=insecure, curve=curve)
        said = (f"{endpoint} is taken (another session?): the session will take a free port and print it "
                f"(b2m control --connect ...), e.g. {srv.endpoint}")
    try:
        return f"{said}; {describe_curve(curve)}", None
    finally:
        srv.close()


def _bind_pyneal(port: int, insecure: bool) -> tuple[str, None]:
    from realtime.results import PynealResultsServer

    srv = PynealResultsServer(port=port, insecure=insecure)
    try:
        return f"{srv.host}:{srv.port} can be bound (then released)", None
    finally:
        srv.close()


def format_checks(checks: list[Check]) -> str:
    """One line per check: ``PASS``/``WARN``/``FAIL``, its name, what it found."""
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.status}  {c.name:<{width}}  {c.detail}" for c in checks)
