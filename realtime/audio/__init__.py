"""The audio engine: sample-accurate switches between clips, to a sound device or a WAV file.

One :class:`Mixer` renders the output for every kind of output, so the WAV
written headless is exactly what a device would have played:

- :class:`DeviceOutput` runs a sounddevice (PortAudio) callback stream (JACK,
  ALSA, CoreAudio, ...) whose callback calls :meth:`Mixer.render`;
  :class:`IsolatedOutput` does the same in a child process;
- :class:`WavSink` calls the same :meth:`Mixer.render` from a virtual clock
  that the session advances (:meth:`WavSink.advance_to`).

:func:`open_output` turns an ``--audio`` value into one of them. All share
one scheduling surface: ``schedule_switch``, ``schedule_stop``,
``next_beat_frame``, ``executed``, ``frame``, ``now``, ``time_to_frame``,
``underruns`` and ``stats()``.

**Frames, not seconds.** Every command carries an absolute output frame.
``schedule_switch(at_frame, source, crossfade_frames)`` starts an
equal-power crossfade (:func:`music.audio.crossfade_gains`) exactly at
``at_frame``: ``render`` splits its block at that sample, so the switch is
sample-accurate by construction whatever the block size. A session that
wants a switch at a musical time converts it with ``out.time_to_frame(t)``
(a device maps the stream clock, PortAudio's ``outputBufferDacTime``, to
frames by a median fit over the last 64 callbacks; a WAV sink's clock is
``frame / samplerate``), and :meth:`Mixer.next_beat_frame` finds the next
beat or bar of the clip playing then from beat positions given with it
(:func:`music.beats.estimate_beats`). Commands are given in time order; one
scheduled for a frame already rendered runs at the start of the next block
and is counted as late. Executed commands are logged (:meth:`Mixer.executed`)
with the frame they took effect at and its output-clock time, so the switch
error against the schedule can be measured.

**Sources** are preloaded float32 arrays of shape ``(n_frames, channels)``
at the output rate, prepared off the audio thread by :func:`load_clip` or
:func:`prepare_source` (resampled, channel-mapped, edges faded over 10 ms).
A source loops at its end by default (music must not stop because the
decoder kept a clip longer than it lasts); ``loop=False`` ends in silence.
``schedule_stop`` fades to silence; a switch from silence is a fade-in.

**The callback** allocates nothing, takes no lock and does no I/O: commands
come in and finished clips go back through preallocated single-producer /
single-consumer rings of slots whose counters each have one writer (atomic
under the GIL; see :mod:`realtime.audio._mixer`), gain tables are computed
when a command is scheduled, all arithmetic writes into preallocated buffers,
and the last reference to a clip is always dropped on the control thread.
It counts underruns (``output_underflow``) and any other xrun flag. On
JACK every server xrun reaches every stream as an underflow, and a burst of
lost cycles is flagged once, so ``stats()["clock_slip_ms"]`` (how far the
stream clock has run ahead of the frames rendered) tells how much time was
lost. Devices also map ``time.monotonic()`` to frames
(``monotonic_to_frame``), the clock the session stamps volumes with.

**Devices** are resolved when the output is made, never mid-session: a
missing or ambiguous name raises :class:`AudioDeviceError` listing the output
devices. Without a sound card, start ``jackd -d dummy -r 48000 -p 256`` (see
README.md, "A session in one minute"): sounddevice then lists a JACK device with a real clock.

**Threads and the GIL.** The callback is Python, so it needs the GIL once
per block (5.3 ms at 256 frames and 48 kHz). numpy, onnxruntime and file I/O
release the GIL while they work, but Python code on other threads holds it
for up to ``sys.getswitchinterval()`` (5 ms) at a time, and longer if the OS
deschedules the holder: a busy pure-Python thread beside an in-process
stream causes underruns. :class:`IsolatedOutput` (``open_output(...,
isolate=True)``) runs the same stream and mixer in a child process whose
only other thread sleeps on a pipe, so the session's work cannot delay the
callback; clips reach it through shared memory without a copy in the child.
"""

from __future__ import annotations

import os

from ._clips import load_clip, prepare_source, read_segment
from ._device import (AudioDeviceError, DeviceOutput, list_output_devices, refresh_devices, resolve_output_device,
                      resume_portaudio, suspend_portaudio)
from ._mixer import Mixer
from ._process import IsolatedOutput
from ._wav import WavSink

__all__ = [
    "Mixer",
    "DeviceOutput",
    "IsolatedOutput",
    "WavSink",
    "AudioDeviceError",
    "open_output",
    "list_output_devices",
    "resolve_output_device",
    "refresh_devices",
    "suspend_portaudio",
    "resume_portaudio",
    "load_clip",
    "prepare_source",
    "read_segment",
]


def open_output(spec: str | int | None = "default", samplerate: int | None = None, channels: int = 2,
                blocksize: int = 256, isolate: bool = False):
    """Make the output an ``--audio`` value names (not started yet).

    Parameters
    ----------
    spec : str, int or None
        ``"wav:PATH"`` for a :class:`WavSink`; ``"default"`` or None for the
        default device; a device index (int or digits); otherwise a device
        name substring.
    samplerate : int or None
        Hz. For a device None means its default rate; for a WAV sink 48000.
    channels, blocksize : int
        As in :class:`DeviceOutput`.
    isolate : bool
        Run a device's stream in its own process (:class:`IsolatedOutput`),
        out of reach of this process's GIL; recommended for live sessions.

    Returns
    -------
    DeviceOutput, IsolatedOutput or WavSink

    Raises
    ------
    AudioDeviceError
        No such device (the message lists the output devices), or it cannot
        play the requested format.
    ValueError
        A ``wav:`` path in a missing folder or with an unknown extension.
    """
    if isinstance(spec, str) and spec.startswith("wav:"):
        path = spec[4:]
        if not path:
            raise ValueError("--audio wav:PATH needs a path, e.g. wav:session/feedback.wav")
        return WavSink(os.path.expanduser(path), samplerate or 48000, channels, blocksize)
    if isolate:
        return IsolatedOutput(spec, samplerate=samplerate, blocksize=blocksize, channels=channels)
    return DeviceOutput(spec, samplerate=samplerate, blocksize=blocksize, channels=channels)
