"""Play a run's design at the scanner: each excerpt at its onset from the scanner's trigger.

A lab that trains its own decoder first records its participant listening to
music in ds003720's design (``b2m present``, with ``b2m receive`` recording
the volumes). The presenter waits for the trigger of the run's first volume
(the ``5`` a trigger box types, or at once), then schedules every excerpt on
the output's own clock at ``trigger + onset``, sample-exact, a few seconds
ahead (a sound device) or as it renders (a WAV sink), and reports when each
one actually began, in output frames from the trigger. Excerpts are staged
one at a time and released once heard, so memory holds those of the next
``ahead_s`` seconds whatever the run's length.

The trigger's own delay (from the scanner's pulse to the key press read
here) is not known to this code; with a sound device the first excerpt
begins ``lead_s`` after the trigger is read, and every onset reported is
measured from that read.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("b2m.present")

__all__ = ["Excerpt", "Played", "wait_for_trigger", "present"]


@dataclass
class Excerpt:
    """One event of the design, rendered.

    Attributes
    ----------
    onset_s : float
        Onset in the design, seconds from the run's first volume.
    audio : ndarray of shape (n_frames, channels), float32
        At the output's rate.
    """

    onset_s: float
    audio: np.ndarray


@dataclass
class Played:
    """What :func:`present` did.

    Attributes
    ----------
    onsets_s : list of float
        When each excerpt began, seconds from the trigger on the output's
        clock (NaN for one never played: the run was stopped first).
    trigger_wall : float
        Unix time at which the trigger was read.
    late : int
        Excerpts scheduled after their time had passed (they began late, as
        ``onsets_s`` shows).
    stopped : bool
        Stopped before the end (``stop()``).
    """

    onsets_s: list
    trigger_wall: float
    late: int
    stopped: bool


def wait_for_trigger(kind: str = "key", key: str = "5", stream=None, stop=None) -> float:
    """Block until the scanner's trigger; return the Unix time it was read.

    Parameters
    ----------
    kind : {"key", "now"} or str
        ``"key"``: wait for ``key`` on ``stream`` (default stdin; on a
        terminal, read without waiting for Enter). ``"now"``: return at once.
        Anything else is the trigger box's serial port (or a FIFO), read as
        :class:`realtime.triggers.TriggerInput` reads it.
    stop : callable, optional
        Polled while waiting; returning True gives up (``InterruptedError``).
    """
    if kind == "now":
        return time.time()
    from .triggers import TriggerInput

    source = (sys.stdin if stream is None else stream).fileno() if kind == "key" else kind
    with TriggerInput(source, key=key) as trigger:
        while True:
            if stop is not None and stop():
                raise InterruptedError("stopped while waiting for the trigger")
            pulses = trigger.read(0.1)
            if pulses:
                return pulses[0]
            if trigger.closed:
                raise EOFError(f"the trigger input closed before a {key!r} came")


def present(output, excerpts: list[Excerpt], trigger_wall: float, *, lead_s: float = 0.05, ahead_s: float = 5.0,
            stop=None, progress=None) -> Played:
    """Play ``excerpts`` at their onsets from a trigger read at ``trigger_wall``.

    Parameters
    ----------
    output
        A started output from :func:`realtime.audio.open_output`.
    excerpts : list of Excerpt
        Ordered by onset; each ends where it ends (a silence follows it unless
        the next begins).
    trigger_wall : float
        From :func:`wait_for_trigger`.
    lead_s : float
        A sound device: how far after the trigger the run's time 0 is put,
        so the first excerpt is not already late.
    ahead_s : float
        A sound device: each excerpt is staged and scheduled this long before
        its onset.
    stop, progress : callable, optional
        ``stop()`` returning True stops the music within a block; ``progress(k,
        n)`` after excerpt ``k`` of ``n`` is scheduled.

    Returns
    -------
    Played
    """
    rate = output.samplerate
    wav = hasattr(output, "advance_to")
    # the run's time 0 on the output's clock: a WAV sink starts with the trigger, a device a lead after it
    zero = output.frame if wav else output.time_to_frame(output.now() + lead_s)
    frames = [zero + int(round(e.onset_s * rate)) for e in excerpts]
    ends = [f + e.audio.shape[0] for f, e in zip(frames, excerpts)]
    staged, late, stopped = [], 0, False
    for k, (e, at) in enumerate(zip(excerpts, frames)):
        if not wav:
            while output.time_to_frame(output.now()) < at - int(ahead_s * rate):
                if stop is not None and stop():
                    break
                time.sleep(0.02)  # between excerpts: nothing to service but the stop flag
        if stop is not None and stop():
            stopped = True
            break
        source = output.stage(np.ascontiguousarray(e.audio, dtype=np.float32))
        if not wav and output.time_to_frame(output.now()) > at:
            late += 1
            log.warning("excerpt %d scheduled after its onset; it begins late", k)
        output.schedule_switch(at, source, 0, loop=False)
        staged.append((ends[k], source))
        if k + 1 == len(excerpts) or ends[k] < frames[k + 1]:
            output.schedule_stop(ends[k])  # silence until the next one (or the end)
        played_to = output.frame if wav else output.time_to_frame(output.now())
        while staged and staged[0][0] < played_to:  # released once heard to its end
            output.unstage(staged.pop(0)[1])
        if wav:
            output.advance_to(at)
        if progress is not None:
            progress(k + 1, len(excerpts))
    end = max(ends) if ends else zero
    if stopped:
        output.schedule_stop(output.frame if wav else output.time_to_frame(output.now() + lead_s))
    elif wav:
        output.advance_to(end)
    else:
        while output.time_to_frame(output.now()) < end and not (stop is not None and stop()):
            time.sleep(0.02)
        stopped = output.time_to_frame(output.now()) < end
    executed = {c["scheduled_frame"]: c["frame"] for c in output.executed() if c["kind"] == "switch"}
    trigger_frame = zero if wav else zero - int(round(lead_s * rate))
    onsets = [(executed[f] - trigger_frame) / rate if f in executed else float("nan") for f in frames]
    return Played(onsets_s=onsets, trigger_wall=trigger_wall, late=late, stopped=stopped)
