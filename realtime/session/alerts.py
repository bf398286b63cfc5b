"""What the operator should see now: the alerts standing in a live session, for the dashboard and every result.

A session's own state says some things (the scanner side's clock is off);
the parts around it say the rest: the trigger input (it closed, or volumes
whose pulse came are overdue), the receiver (the disk refused a message
in the last :data:`DISK_ALERT_S` seconds), the signal (the run's temporal SNR
under :data:`TSNR_ALERT_RATIO` of the Training runs': :func:`low_tsnr`), the sound device (its stream
stopped, its process exited, or it sends out nothing while music should
play: :class:`AudioWatch`) and the operator (the sound is muted). :func:`standing_alerts` gathers
them as short sentences; the engine puts them in each
:class:`protocols.wire.Result` (``alerts``), so the control-room monitor
shows them too, and the dashboard draws them in red.
"""

from __future__ import annotations

import time

import numpy as np

from protocols.wire import MAX_ALERT_CHARS, MAX_ALERTS

from ..clocks import CLOCK_WARN_S, describe_offset
from ..triggers import match_run, overdue

__all__ = ["DISK_ALERT_S", "STALL_S", "SILENT_S", "SILENT_DBFS", "STALL_TRS", "STALL_MIN_S", "TSNR_ALERT_RATIO",
           "AudioWatch", "trigger_status", "stalled_run", "tsnr_status", "low_tsnr", "standing_alerts"]

#: A disk refusal is alerted this long after the last one (s).
DISK_ALERT_S = 30.0
#: A sound device whose callbacks have not run for this long has stopped (s).
STALL_S = 1.0
#: Music that should play but has measured below SILENT_DBFS peak for this long is alerted (s).
SILENT_S = 10.0
SILENT_DBFS = -90.0
#: A run not ended whose volumes stopped coming for this many TRs (at least STALL_MIN_S s) is alerted.
STALL_TRS, STALL_MIN_S = 4, 6.0
#: A run whose tSNR so far is under this share of the Training runs' is alerted: half the signal-to-noise
#: ratio is a failed coil element, another sequence or a head far from the coil, not a day's variation.
TSNR_ALERT_RATIO = 0.5


class AudioWatch:
    """Whether the participant can hear anything: the sound device's stream and what it sends out.

    A sound device can fail silently: a JACK server that dies, or a USB
    interface pulled out, stops the stream's callbacks while every schedule
    call still succeeds, and an isolated output's process can exit. Each
    :meth:`alert` looks at the output (the callbacks counted since the last
    look, the process, the level meter of :meth:`realtime.audio.Mixer.level`)
    and says what is wrong now, if anything. A WAV sink is rendered by the
    session itself: nothing to watch.

    Parameters
    ----------
    output : audio output or None
    stall_s, silent_s : float
        :data:`STALL_S` and :data:`SILENT_S`.
    """

    def __init__(self, output, stall_s: float = STALL_S, silent_s: float = SILENT_S):
        self.output = output
        self.stall_s, self.silent_s = float(stall_s), float(silent_s)
        self._callbacks = None
        self._moved_at = time.monotonic()
        self._should_since = None  # since when music should have been sounding (monotonic s)

    def rewatch(self, output) -> None:
        """Watch ``output`` from now on (a device reopened after it stopped)."""
        self.output = output
        self._callbacks, self._moved_at, self._should_since = None, time.monotonic(), None

    def down(self) -> tuple[str, float] | None:
        """Why the device plays nothing and since when (Unix s), or None while it runs (or for a WAV sink)."""
        out = self.output
        if out is None or hasattr(out, "advance_to"):
            return None
        now = time.monotonic()
        last = getattr(out, "last_callback", lambda: None)()  # the stream's own word, to the callback
        proc = getattr(out, "_proc", None)
        if proc is not None and proc.poll() is not None:
            since = last if last is not None else self._moved_at
            return f"the audio process exited (code {proc.returncode})", time.time() - (now - since)
        n = out.callbacks
        if n != self._callbacks:
            self._callbacks, self._moved_at = n, now
        elif now - self._moved_at > self.stall_s:
            since = last if last is not None and last <= self._moved_at else self._moved_at
            return (f"the output stream stopped ({getattr(out, 'device_name', 'the device')})",
                    time.time() - (now - since))
        return None

    def alert(self, engine=None, operator=None) -> str | None:
        """The output's alert now (None: it plays as it should). ``engine`` says whether music should sound,
        ``operator`` whether it is muted."""
        out = self.output
        down = self.down()
        if down is not None:
            why, since = down
            return (f"audio: {why} {time.time() - since:.0f} s ago: the participant hears nothing; check the audio "
                    "interface, its cable and, on JACK, that the server runs (the session reopens it when it "
                    "can)")
        if out is None or hasattr(out, "advance_to"):
            return None
        now = time.monotonic()
        should = engine is not None and engine._audio_started and not (operator is not None and operator.muted)
        if not should:
            self._should_since = None
            return None
        if self._should_since is None:
            self._should_since = now
        if now - self._should_since < self.silent_s + 1.0:  # music just (re)started: its first bar may be ahead
            return None
        try:
            long = out.level(self.silent_s)
        except Exception as e:  # the meter is a nicety: its failure is said, never fatal
            return f"audio: the output's level cannot be read ({type(e).__name__}: {e})"
        if long is not None and long["seconds"] >= self.silent_s and long["peak_dbfs"] < SILENT_DBFS:
            return (f"audio: nothing audible sent out for {long['seconds']:.0f} s though music should play "
                    f"(peak {long['peak_dbfs']:.0f} dBFS): check the library's clips and the session's log")
        return None


def trigger_status(triggers, engine, run_id: str | None) -> tuple[str, str | None]:
    """The trigger input in a line, and an alert if it needs the operator.

    Parameters
    ----------
    triggers : realtime.triggers.TriggerLog
    engine : SessionEngine
        For the run's latest results (received times) and TR.
    run_id : str or None
        The run being decoded.

    Returns
    -------
    (str, str or None)
        Pulses so far and the last one's age, and for the run its image
        delay; the alert: the input closed, no pulse yet while volumes come,
        pulses that are not the run's, or volumes acquired but overdue.
    """
    times = list(triggers.times)  # a copy: the trigger thread appends
    if triggers.trigger.closed:
        text = f"input closed after {len(times)} pulses"
        return text, f"trigger: {text}: check the trigger box's cable"
    if not times:
        return "no pulse yet", ("trigger: no pulse yet while volumes come: check the trigger box"
                                if run_id is not None else None)
    text = f"{len(times)} pulses, last {time.time() - times[-1]:.1f} s ago"
    run = engine.runs.get(run_id) if run_id is not None else None
    recent = [x for x in list(engine.results)[-60:] if x.run_id == run_id and x.timestamps.get("received")]
    if run is None or not recent:
        return text, None
    m = match_run(times, [x.index for x in recent], [x.timestamps["received"] for x in recent], run.tr_s)
    if m.start is None:
        return text, f"trigger: run {run_id}: {m.note}"
    text += f"; image delay {1e3 * float(np.median(m.delay_s)):.0f} ms after acquisition"
    late = overdue(times, m, max(x.index for x in recent), time.time(), run.tr_s)
    if late:  # acquired, and not here well after they should be: the export or the link is stuck
        return text, f"{late} volume(s) acquired but not received: check the scanner's export and the link"
    return text, None


def stalled_run(engine, now: float | None = None) -> str | None:
    """The run being decoded, if it has not ended and no volume has come for a while: the scanner's export or
    the link may be stuck (or the scan was stopped). Quiet for :data:`STALL_TRS` TRs (at least
    :data:`STALL_MIN_S` s) after the last volume; None otherwise, and between runs."""
    last = engine.last
    run = engine.runs.get(last.run_id) if last is not None else None
    if run is None or run.pre is None or not run.n_volumes or run.next_index >= run.n_volumes:
        return None
    received = (last.timestamps or {}).get("received")
    if received is None:
        return None
    gap = (time.time() if now is None else now) - received
    if gap < max(STALL_TRS * run.tr_s, STALL_MIN_S):
        return None
    return (f"run {run.run_id}: no volume for {gap:.0f} s after {run.next_index} of {run.n_volumes} (one is due "
            f"every {run.tr_s:g} s): check the scanner's export and the link, or was the scan stopped?")


def tsnr_status(engine) -> tuple[float | None, float | None]:
    """The latest result's temporal SNR (its run's so far) and the Training runs' after as many volumes, which
    the result carries (``tsnr_training``, from ``engine.tsnr_reference``); either None when unknown (the run's
    first volumes; a bundle without it)."""
    last = engine.last
    if last is None or getattr(last, "tsnr", None) is None:
        return None, None
    return last.tsnr, getattr(last, "tsnr_training", None)


def low_tsnr(engine) -> str | None:
    """The run being decoded, if its temporal SNR so far is under :data:`TSNR_ALERT_RATIO` of the Training
    runs' after as many volumes (:func:`tsnr_status`); None otherwise, before the run has enough volumes for
    the figure, or with a bundle that does not give the Training runs'."""
    tsnr, ref = tsnr_status(engine)
    if tsnr is None or not ref or tsnr >= TSNR_ALERT_RATIO * ref:
        return None
    last = engine.last
    return (f"run {last.run_id}: tSNR of the decoder's voxels {tsnr:.0f} after {last.index + 1} volumes, under "
            f"half the {ref:.0f} of its Training runs by then: the decoder reads noisier data than it learned "
            "from; check the head coil (every element on), the sequence, and the participant's head in the coil")


def standing_alerts(engine, receiver=None, triggers=None, operator=None, audio=None) -> list[str]:
    """Every alert standing now (at most :data:`protocols.wire.MAX_ALERTS`, each cut to fit the wire).

    ``operator`` (:class:`realtime.session.operator.OperatorControl`) adds the sound muted by the operator,
    ``audio`` (:class:`AudioWatch`) a sound device that stopped or sends out nothing. Without a trigger
    input, a run whose volumes stopped coming is said (:func:`stalled_run`; with one, the volumes overdue
    after their pulses are). The dashboard asks several times a second, so these show between volumes too.
    """
    out = []
    heard = audio.alert(engine, operator) if audio is not None else None
    if heard:
        out.append(heard)
    muted = operator.alert() if operator is not None else None
    if muted:
        out.append(muted)
    last = engine.last
    run_id = last.run_id if last is not None else None
    run = engine.runs.get(run_id) if run_id is not None else None
    if run is not None and run.clock.offset_s is not None and abs(run.clock.offset_s) >= CLOCK_WARN_S:
        out.append(f"scanner clock: {describe_offset(run.clock.offset_s, 'its clock')}; synchronise the clocks")
    if triggers is not None:
        _, alert = trigger_status(triggers, engine, run_id)
        if alert:
            out.append(alert)
    else:
        stalled = stalled_run(engine)
        if stalled:
            out.append(stalled)
    noisy = low_tsnr(engine)
    if noisy:
        out.append(noisy)
    st = receiver.stats if receiver is not None else None
    if st is not None and time.monotonic() - st.last_disk_error_at < DISK_ALERT_S:
        out.append(f"disk: {st.not_recorded} message(s) not recorded (last: {st.last_disk_error}); they are sent "
                   "again: " + ("make room on the session's disk" if st.disk_full else "check the session's disk "
                                "and its folder's permissions"))
    return [a if len(a) < MAX_ALERT_CHARS else a[:MAX_ALERT_CHARS - 4] + " ..." for a in out[:MAX_ALERTS]]
