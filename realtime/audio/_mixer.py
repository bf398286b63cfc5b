"""The mixer: sample-accurate switches and fades, rendered block by block without allocation.

Threads. One *control* thread (the session) calls the ``schedule_*`` methods
and reads the logs; one *audio* thread (the PortAudio callback, or the WAV
sink's caller) calls :meth:`Mixer.render`. They share three single-producer /
single-consumer rings, each a preallocated Python list of slots plus two
counters, ``written`` (advanced only by the producer) and ``read`` (advanced
only by the consumer):

- ``commands`` (control -> audio): scheduled switches and stops;
- ``gains`` (control -> audio): the master gain's ramps (the operator's mute and
  level, :meth:`Mixer.schedule_gain`), a ring of its own because they come
  "now", while switches are scheduled ahead on the next bar;
- ``retired`` (audio -> control): commands the audio thread is done with, so
  the last reference to a clip array is dropped on the control thread (freeing
  megabytes inside the callback would be a system call);
- the execution log (audio -> control): preallocated int64/float64 arrays;
- the level meter (audio -> control): each rendered block's first frame,
  length, sum of squares and peak, for :meth:`Mixer.level`.

Why this is safe in CPython without a lock: storing a list slot and
storing an int attribute are single bytecodes, each atomic under the GIL,
and a thread switch happens only between bytecodes, so the other thread sees
either the old value or the new one, never a torn one. The producer fills
the slot *before* it publishes the new ``written`` count, and the consumer
reads the count before it reads the slot, so the consumer never reads a slot
that is not yet filled; the producer never reuses a slot until the consumer's
``read`` count has passed it. Each counter has exactly one writer. (This
relies on the GIL: a free-threaded build would need atomics.) ``render``
therefore takes no lock; the producer side takes a ``threading.Lock`` of its
own so several control threads may schedule, but the audio thread never
touches it.

No allocation in ``render``: the work buffer, the gain tables (made by
:func:`music.audio.crossfade_gains` when a command is scheduled), the voices
and the log arrays all exist beforehand, and every array operation writes
into them through ``out=``. What remains is CPython's own bookkeeping:
slice views and small ints/floats, each a few dozen bytes from the
interpreter's free lists, released before ``render`` returns or replacing
the previous value of a counter (the tests check with tracemalloc that
memory does not grow with the blocks rendered and that no block-sized
temporary is ever made).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from music.audio import crossfade_gains

__all__ = ["Mixer", "Timeline", "check_source", "check_beats", "gain_ramp", "MAX_GAIN_RAMP"]

_FREE, _CONST, _RAMP_IN, _RAMP_OUT = 0, 1, 2, 3
_SWITCH, _STOP, _GAIN = 1, 2, 3
KIND_NAMES = {_SWITCH: "switch", _STOP: "stop", _GAIN: "gain"}

#: Longest master-gain ramp, frames (10 s at 48 kHz).
MAX_GAIN_RAMP = 480000


def gain_ramp(n: int) -> np.ndarray:
    """The master gain's ramp shape: ``(1 - cos(pi (i + 1) / n)) / 2`` for ``i < n``, float32, ending at 1.

    A raised cosine: no corner at either end, so a mute neither clicks nor
    thumps. The gain at ramp sample ``i`` is ``g0 + (g1 - g0) * shape[i]``.
    """
    i = np.arange(1, int(n) + 1, dtype=np.float64)
    return ((1.0 - np.cos(np.pi * i / int(n))) / 2.0).astype(np.float32)


class _Command:
    __slots__ = ("id", "kind", "at_frame", "source", "n", "fade_out", "fade_in", "loop", "offset",
                 "beat_frames", "length", "gain")

    def __init__(self, id, kind, at_frame, source, n, fade_out, fade_in, loop, offset, beat_frames, gain=1.0):
        self.id = id
        self.kind = kind
        self.at_frame = at_frame
        self.source = source
        self.n = n
        self.fade_out = fade_out
        self.fade_in = fade_in
        self.loop = loop
        self.offset = offset
        self.beat_frames = beat_frames
        self.length = 0 if source is None else source.shape[0]
        self.gain = gain


class _Voice:
    __slots__ = ("state", "cmd", "src", "length", "pos", "loop", "table", "idx", "n", "scale")

    def __init__(self):
        self.state = _FREE
        self.cmd = None
        self.src = None
        self.length = 0
        self.pos = 0
        self.loop = True
        self.table = None
        self.idx = 0
        self.n = 0
        self.scale = 1.0

    def gain(self) -> float:
        if self.state == _CONST:
            return self.scale
        if self.state in (_RAMP_IN, _RAMP_OUT) and self.idx < self.n:
            return self.scale * float(self.table[self.idx, 0])
        return 0.0


class Mixer:
    """Plays one clip at a time and executes scheduled switches at exact output frames.

    Parameters
    ----------
    samplerate : int
        Output rate in Hz; every source must already be at this rate.
    channels : int
        Output channels (1 or more); every source has shape ``(n, channels)``.
    max_block : int
        Frames rendered per internal step; larger requests are split, so any
        block size works without allocation.
    voices : int
        Simultaneous voices (one playing plus those fading out); a switch
        while all are busy cuts the quietest one (counted in ``voice_steals``).
    queue_size : int
        Capacity of the command ring (pending commands).
    log_size : int
        Capacity of the execution log ring.
    meter_size : int
        Render calls the level meter remembers (:meth:`level`; 4096 blocks
        of 256 frames are 22 s at 48 kHz).

    Attributes
    ----------
    frame : int
        The next output frame to render (frames rendered so far).
    late_commands, voice_steals, retire_overflows : int
        Counters written by the audio thread.

    Notes
    -----
    A source plays from ``offset`` and, by default, **loops** at its end (a
    neurofeedback clip must never fall silent because the decoder kept it
    for longer than it lasts; :func:`load_clip` fades the edges so the loop
    point does not click); with ``loop=False`` it stops at its end and
    silence follows. A switch at ``at_frame`` with ``crossfade_frames = n``
    gives, for ``i`` in ``[0, n)``, ``out[at_frame + i] = old * fade_out[i] +
    new[offset + i] * fade_in[i]`` with the equal-power gains of
    :func:`music.audio.crossfade_gains`; ``n = 0`` is a hard cut. From
    silence the same switch is a fade-in. A voice still fading in when the
    next switch comes fades out from the gain it has reached.
    """

    def __init__(self, samplerate: int, channels: int = 2, *, max_block: int = 8192, voices: int = 4,
                 queue_size: int = 256, log_size: int = 4096, meter_size: int = 4096):
        if int(samplerate) != samplerate or samplerate <= 0:
            raise ValueError(f"samplerate must be a positive integer number of Hz, got {samplerate!r}")
        if int(channels) != channels or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        self.samplerate = int(samplerate)
        self.channels = int(channels)
        self._max_block = int(max_block)
        self._work = np.zeros((self._max_block, self.channels), np.float32)
        self._voices = [_Voice() for _ in range(int(voices))]
        # command ring: control -> audio
        self._cmd_slots: list = [None] * int(queue_size)
        self._cmd_written = 0
        self._cmd_read = 0
        # retire ring: audio -> control
        self._ret_slots: list = [None] * int(queue_size)
        self._ret_written = 0
        self._ret_read = 0
        # execution log: audio -> control
        self._log_size = int(log_size)
        self._log_id = np.zeros(self._log_size, np.int64)
        self._log_kind = np.zeros(self._log_size, np.int8)
        self._log_sched = np.zeros(self._log_size, np.int64)
        self._log_exec = np.zeros(self._log_size, np.int64)
        self._log_block = np.zeros(self._log_size, np.int64)
        self._log_time = np.full(self._log_size, np.nan, np.float64)
        self._log_gain = np.full(self._log_size, np.nan, np.float64)
        self._log_written = 0
        # master gain ring: control -> audio, and the gain's state (audio thread)
        self._gain_slots: list = [None] * int(queue_size)
        self._gain_written = 0
        self._gain_read = 0
        self._gain_cleared = 0
        self._gain_last_at = 0
        self.master_gain = 1.0             # the gain reached (amplitude); during a ramp, its start
        self._g_to = 1.0
        self._g_table = None
        self._g_idx = 0
        self._g_n = 0
        self._gbuf = np.zeros(self._max_block, np.float32)
        # level meter: audio -> control, one row per render call
        self._m_size = int(meter_size)
        self._m_frame = np.zeros(self._m_size, np.int64)
        self._m_n = np.zeros(self._m_size, np.int64)
        self._m_sumsq = np.zeros(self._m_size, np.float64)
        self._m_peak = np.zeros(self._m_size, np.float64)
        self._m_written = 0
        self.frame = 0
        self.late_commands = 0
        self.voice_steals = 0
        self.retire_overflows = 0
        # control side only
        self._lock = threading.Lock()
        self._next_id = 0
        self._cmd_cleared = 0
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ramps: dict[int, np.ndarray] = {}
        self._timeline = Timeline()

    # ------------------------------------------------------------------ control thread
    def _gains(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        g = self._tables.get(n)
        if g is None:
            # One column per channel: multiplying by a (k, 1) column would make
            # numpy allocate a broadcasting buffer in the callback.
            fo, fi = crossfade_gains(n)
            g = (np.ascontiguousarray(np.repeat(fo[:, None], self.channels, axis=1)),
                 np.ascontiguousarray(np.repeat(fi[:, None], self.channels, axis=1)))
            # Tables stay cached for the mixer's life (a session uses a few
            # lengths), so a voice never holds the last reference to one.
            self._tables[n] = g
        return g

    def _push(self, cmd: _Command) -> int:
        self.collect()
        self._timeline.check(cmd.at_frame)
        n_slots = len(self._cmd_slots)
        if self._cmd_written - self._cmd_read >= n_slots:
            raise RuntimeError(f"{n_slots} commands are already pending (the queue is full); is the output running?")
        self._cmd_slots[self._cmd_written % n_slots] = cmd      # fill the slot ...
        self._cmd_written += 1                                   # ... then publish it
        self._timeline.record(cmd.kind, cmd.at_frame, cmd.length, cmd.offset, cmd.loop, cmd.beat_frames)
        return cmd.id

    def schedule_switch(self, at_frame: int, source: np.ndarray, crossfade_frames: int = 0, *,
                        loop: bool = True, offset: int = 0, beat_frames=None) -> int:
        """Switch to ``source`` with an equal-power crossfade starting exactly at output frame ``at_frame``.

        From silence this is a fade-in over ``crossfade_frames``.

        Parameters
        ----------
        at_frame : int
            Absolute output frame of the first crossfade sample. Frames must
            not decrease from one scheduled command to the next. A frame
            already rendered executes at the start of the next block and
            counts in ``late_commands`` (the log shows by how much).
        source : array of shape (n_frames, channels), float32, C-contiguous
            At the mixer's rate; see :func:`load_clip`. Not copied: do not
            modify it afterwards.
        crossfade_frames : int
            Crossfade length in frames (0: a hard cut).
        loop : bool
            Loop the source at its end (default) or stop there.
        offset : int
            Frame of ``source`` heard at ``at_frame`` (e.g. its first beat).
        beat_frames : array of shape (n_beats,) or None
            Beat positions in source frames, used by :meth:`next_beat_frame`.

        Returns
        -------
        int
            The command id, as found in :meth:`executed`.
        """
        source = check_source(source, self.channels)
        n = _nonneg_int(crossfade_frames, "crossfade_frames")
        offset = _nonneg_int(offset, "offset")
        if offset >= source.shape[0]:
            raise ValueError(f"offset {offset} is past the end of the source ({source.shape[0]} frames)")
        beat_frames = check_beats(beat_frames)
        with self._lock:
            fo, fi = self._gains(n)
            cmd = _Command(self._next_id, _SWITCH, int(at_frame), source, n, fo, fi, bool(loop), offset,
                           beat_frames)
            self._next_id += 1
            return self._push(cmd)

    def schedule_stop(self, at_frame: int, fade_frames: int = 0) -> int:
        """Fade everything out (equal-power curve) from ``at_frame``, then silence; 0 frames cuts.

        Returns the command id.
        """
        n = _nonneg_int(fade_frames, "fade_frames")
        with self._lock:
            fo, fi = self._gains(n)
            cmd = _Command(self._next_id, _STOP, int(at_frame), None, n, fo, fi, False, 0, None)
            self._next_id += 1
            return self._push(cmd)

    def schedule_gain(self, at_frame: int, gain: float, ramp_frames: int = 0) -> int:
        """Ramp the master gain (applied to everything mixed) to ``gain`` from output frame ``at_frame``.

        The operator's hand on the sound: a mute is ``gain = 0``, a level
        change its amplitude ratio. Switches and stops go on underneath,
        unchanged, so what the session decides and records does not depend
        on it. The ramp is :func:`gain_ramp` from the gain reached when it
        starts (another ramp may be under way), so ``out[at_frame + i] =
        mixed * (g0 + (gain - g0) * shape[i])``, then ``gain`` holds.

        Parameters
        ----------
        at_frame : int
            Output frame of the ramp's first sample. Gain commands have their
            own queue, in time order: one for a frame before the last gain
            command's is moved to that frame; one for a frame already rendered
            starts with the next block (not counted in ``late_commands``: "as
            soon as possible" is what an operator asks for).
        gain : float
            Amplitude gain in [0, 1] (1: as mixed; never louder).
        ramp_frames : int
            Ramp length, frames (0: a step; at most :data:`MAX_GAIN_RAMP`).

        Returns
        -------
        int
            The command id, as found in :meth:`executed` (kind ``"gain"``).
        """
        try:
            g = float(gain)
        except (TypeError, ValueError):
            g = math.nan
        if not (0.0 <= g <= 1.0):
            raise ValueError(f"gain must be an amplitude ratio in [0, 1] (0 mutes, 1 plays as mixed), got {gain!r}")
        n = _nonneg_int(ramp_frames, "ramp_frames")
        if n > MAX_GAIN_RAMP:
            raise ValueError(f"ramp_frames must be at most {MAX_GAIN_RAMP}, got {n}")
        with self._lock:
            self.collect()
            at = max(int(at_frame), self._gain_last_at)
            n_slots = len(self._gain_slots)
            if self._gain_written - self._gain_read >= n_slots:
                raise RuntimeError(f"{n_slots} gain commands are already pending (the queue is full); "
                                   "is the output running?")
            table = self._ramps.get(n)
            if table is None and n:
                table = self._ramps[n] = gain_ramp(n)   # kept for the mixer's life, like the crossfades
            cmd = _Command(self._next_id, _GAIN, at, None, n, None, table, False, 0, None, g)
            self._next_id += 1
            self._gain_slots[self._gain_written % n_slots] = cmd      # fill the slot ...
            self._gain_written += 1                                    # ... then publish it
            self._gain_last_at = at
            return cmd.id

    def next_beat_frame(self, after_frame: int, every: int = 1) -> int | None:
        """The first output frame at or after ``after_frame`` on a beat of what will be playing then.

        Computed on the control thread from the schedule alone (positions are
        deterministic): the source of the last scheduled switch, its start
        frame, offset and loop flag, and the ``beat_frames`` given with it.
        With ``every = beats_per_bar`` it returns bar lines (every
        ``every``-th beat counted from the source's first beat).

        Returns None if nothing is scheduled, the last command was a stop, no
        beats were given, or a non-looping source has no beat left.
        """
        return self._timeline.next_beat_frame(after_frame, every)

    def collect(self) -> list[int]:
        """Drop, on this (the control) thread, the commands the audio thread has finished with.

        Returns the ids of the commands retired since the last call (a
        finished clip's array is then referenced by nothing in the mixer).
        """
        ids = []
        n_slots = len(self._ret_slots)
        w = self._ret_written
        while self._ret_read < w:
            i = self._ret_read % n_slots
            ids.append(self._ret_slots[i].id)
            self._ret_slots[i] = None
            self._ret_read += 1
        n_cmd = len(self._cmd_slots)
        r = self._cmd_read
        while self._cmd_cleared < r:       # slots the audio thread has consumed
            self._cmd_slots[self._cmd_cleared % n_cmd] = None
            self._cmd_cleared += 1
        n_gain = len(self._gain_slots)
        r = self._gain_read
        while self._gain_cleared < r:
            self._gain_slots[self._gain_cleared % n_gain] = None
            self._gain_cleared += 1
        return ids

    def level(self, seconds: float = 1.0) -> dict | None:
        """The output's level over (at least) the last ``seconds`` rendered, from the control thread.

        Returns
        -------
        dict or None
            ``rms_dbfs`` (RMS over every sample and channel, dB re full scale 1.0),
            ``peak_dbfs`` (largest absolute sample), ``seconds`` (the span
            measured, the whole blocks that cover ``seconds``, or less if less
            was rendered) and ``end_frame``. Silence gives ``-inf``. None
            before anything was rendered.
        """
        w = self._m_written
        rows = min(w, self._m_size - 1)  # the oldest slot may be being rewritten
        want = float(seconds) * self.samplerate
        frames = 0
        sq = pk = 0.0
        end = None
        for k in range(w - 1, w - 1 - rows, -1):
            i = k % self._m_size
            n = int(self._m_n[i])
            if end is None:
                end = int(self._m_frame[i]) + n
            frames += n
            sq += float(self._m_sumsq[i])
            pk = max(pk, float(self._m_peak[i]))
            if frames >= want:
                break
        if not frames:
            return None

        def db(x: float) -> float:
            return 20.0 * math.log10(x) if x > 0 else -math.inf

        return {"rms_dbfs": db(math.sqrt(sq / (frames * self.channels))), "peak_dbfs": db(pk),
                "seconds": frames / self.samplerate, "end_frame": end}

    def current_gain(self) -> float:
        """The master gain of the last sample rendered (amplitude; from the control thread, as of the last block)."""
        table, i = self._g_table, self._g_idx
        if table is not None and i < self._g_n:
            return self.master_gain + (self._g_to - self.master_gain) * float(table[i - 1]) if i else self.master_gain
        return self._g_to

    @property
    def pending(self) -> int:
        """Commands scheduled but not yet executed."""
        return self._cmd_written - self._cmd_read + self._gain_written - self._gain_read

    def executed(self) -> list[dict]:
        """The executed commands, oldest first (the last ``log_size - 1`` of them).

        Each is a dict with ``id``, ``kind`` ("switch", "stop" or "gain"),
        ``scheduled_frame``, ``frame`` (where it took effect; equal unless it
        came late), ``block_frame`` (the first frame of the block it fell in)
        and ``time`` (the output clock time of ``frame``: the stream's DAC
        time for a device, ``frame / samplerate`` for a WAV sink; nan if the
        renderer gave no clock); a gain command also has ``gain``.
        """
        w = self._log_written
        first = max(0, w - self._log_size + 1)    # the oldest slot may be being rewritten
        rows = []
        for k in range(first, w):
            i = k % self._log_size
            rows.append({"id": int(self._log_id[i]), "kind": KIND_NAMES[int(self._log_kind[i])],
                         "scheduled_frame": int(self._log_sched[i]), "frame": int(self._log_exec[i]),
                         "block_frame": int(self._log_block[i]), "time": float(self._log_time[i])})
            if self._log_kind[i] == _GAIN:
                rows[-1]["gain"] = float(self._log_gain[i])
        return rows

    # ------------------------------------------------------------------ audio thread
    def render(self, out: np.ndarray, frame0: int | None = None, t0: float = math.nan) -> None:
        """Fill ``out`` with output frames ``[frame0, frame0 + len(out))``; safe in a PortAudio callback.

        Commands due inside the block take effect at their exact frame (the
        block is split there). No allocation, no lock, no I/O.

        Parameters
        ----------
        out : array of shape (n_frames, channels), float32
            Overwritten.
        frame0 : int or None
            Absolute frame of ``out[0]``; must equal :attr:`frame` (blocks
            are contiguous); None means :attr:`frame`.
        t0 : float
            Output clock time of ``out[0]`` in seconds (a stream's
            ``outputBufferDacTime``), logged with executed commands.
        """
        if frame0 is None:
            frame0 = self.frame
        n = out.shape[0]
        out.fill(0.0)
        done = 0
        slots = self._cmd_slots
        n_slots = len(slots)
        gslots = self._gain_slots
        n_gslots = len(gslots)
        while done < n:
            f = frame0 + done
            end = n if n - done <= self._max_block else done + self._max_block
            while self._cmd_read < self._cmd_written:
                cmd = slots[self._cmd_read % n_slots]
                if cmd.at_frame > f:
                    if cmd.at_frame - frame0 < end:
                        end = cmd.at_frame - frame0
                    break
                self._execute(cmd, f, frame0, t0)
                cmd = None                 # the control thread drops commands, never this one
                self._cmd_read += 1
            while self._gain_read < self._gain_written:
                cmd = gslots[self._gain_read % n_gslots]
                if cmd.at_frame > f:
                    if cmd.at_frame - frame0 < end:
                        end = cmd.at_frame - frame0
                    break
                self._execute_gain(cmd, f, frame0, t0)
                cmd = None
                self._gain_read += 1
            if end > done:
                seg = out[done:end]
                for v in self._voices:
                    if v.state != _FREE:
                        self._mix_voice(v, seg, end - done)
                self._apply_gain(seg, end - done)
            done = end
        self._meter(out, frame0, n)
        self.frame = frame0 + n

    def _meter(self, out: np.ndarray, frame0: int, n: int) -> None:
        """One row of the level meter for this block (what is sent out, after the master gain)."""
        sq = pk = 0.0
        done = 0
        while done < n:
            k = n - done if n - done <= self._max_block else self._max_block
            seg = out[done:done + k]
            a = self._work[:k]
            np.abs(seg, out=a)
            p = float(a.max())
            if p > pk:
                pk = p
            if seg.flags.c_contiguous:  # one BLAS dot on the flat view (float32 sums, as below)
                flat = seg.reshape(-1)
                sq += float(np.dot(flat, flat))
            else:
                np.multiply(seg, seg, out=a)
                sq += float(a.sum())  # float32's pairwise sum: a float64 one would buffer a cast copy
            done += k
        i = self._m_written % self._m_size
        self._m_frame[i] = frame0
        self._m_n[i] = n
        self._m_sumsq[i] = sq
        self._m_peak[i] = pk
        self._m_written += 1                                  # filled, then published

    def _execute_gain(self, cmd: _Command, f: int, frame0: int, t0: float) -> None:
        self.master_gain = self.current_gain()   # a ramp under way starts the next from where it got
        self._g_to = cmd.gain
        self._g_table = cmd.fade_in
        self._g_idx = 0
        self._g_n = cmd.n
        if cmd.n == 0:
            self.master_gain = cmd.gain
            self._g_table = None
        self._log_gain[self._log_written % self._log_size] = cmd.gain   # filled before _log publishes the row
        self._log(cmd, f, frame0, t0)

    def _apply_gain(self, seg: np.ndarray, m: int) -> None:
        done = 0
        if self._g_table is not None:
            k = self._g_n - self._g_idx
            if k > m:
                k = m
            g = self._gbuf[:k]
            g0 = self.master_gain
            np.multiply(self._g_table[self._g_idx:self._g_idx + k], self._g_to - g0, out=g)
            np.add(g, g0, out=g)
            for c in range(self.channels):  # a column at a time: a (k, 1) operand would allocate
                col = seg[:k, c]
                np.multiply(col, g, out=col)
            self._g_idx += k
            done = k
            if self._g_idx >= self._g_n:
                self.master_gain = self._g_to
                self._g_table = None
        if done < m and self.master_gain != 1.0:
            rest = seg[done:m]
            np.multiply(rest, self.master_gain, out=rest)

    def _log(self, cmd: _Command, f: int, frame0: int, t0: float) -> None:
        i = self._log_written % self._log_size
        self._log_id[i] = cmd.id
        self._log_kind[i] = cmd.kind
        self._log_sched[i] = cmd.at_frame
        self._log_exec[i] = f
        self._log_block[i] = frame0
        self._log_time[i] = t0 + (f - frame0) / self.samplerate
        self._log_written += 1

    def _retire(self, cmd) -> None:
        if cmd is None:
            return
        n_slots = len(self._ret_slots)
        if self._ret_written - self._ret_read >= n_slots:
            self.retire_overflows += 1      # the control thread is not collecting; drop it here
            return
        self._ret_slots[self._ret_written % n_slots] = cmd
        self._ret_written += 1

    def _free(self, v: _Voice) -> None:
        cmd = v.cmd
        v.state = _FREE
        v.src = None
        v.table = None
        v.cmd = None
        self._retire(cmd)

    def _fade_out(self, v: _Voice, cmd: _Command) -> None:
        if cmd.n == 0:                     # a hard cut silences everything, fading or not
            self._free(v)
            return
        if v.state == _RAMP_OUT:
            return
        g = v.gain()
        v.state = _RAMP_OUT
        v.table = cmd.fade_out
        v.idx = 0
        v.n = cmd.n
        v.scale = g

    def _execute(self, cmd: _Command, f: int, frame0: int, t0: float) -> None:
        if f > cmd.at_frame:
            self.late_commands += 1
        for v in self._voices:
            if v.state != _FREE:
                self._fade_out(v, cmd)
        self._log(cmd, f, frame0, t0)
        if cmd.kind != _SWITCH:
            self._retire(cmd)
            return
        voice = None
        for v in self._voices:
            if v.state == _FREE:
                voice = v
                break
        if voice is None:                  # all busy: cut the quietest
            voice = self._voices[0]
            for v in self._voices:
                if v.gain() < voice.gain():
                    voice = v
            self._free(voice)
            self.voice_steals += 1
        voice.cmd = cmd
        voice.src = cmd.source
        voice.length = cmd.length
        voice.pos = cmd.offset
        voice.loop = cmd.loop
        voice.scale = 1.0
        voice.idx = 0
        voice.n = cmd.n
        if cmd.n == 0:
            voice.state = _CONST
            voice.table = None
        else:
            voice.state = _RAMP_IN
            voice.table = cmd.fade_in

    def _mix_voice(self, v: _Voice, seg: np.ndarray, m: int) -> None:
        w = self._work[:m]
        src = v.src
        length = v.length
        pos = v.pos
        filled = 0
        ended = False
        while filled < m:
            k = length - pos
            if k > m - filled:
                k = m - filled
            w[filled:filled + k] = src[pos:pos + k]
            pos += k
            filled += k
            if pos >= length:
                if v.loop:
                    pos = 0
                elif filled < m:
                    w[filled:m] = 0.0
                    ended = True
                    break
                else:
                    ended = True
        v.pos = pos
        done = 0
        while done < m:
            state = v.state
            if state == _CONST:
                if v.scale != 1.0:
                    np.multiply(w[done:m], v.scale, out=w[done:m])
                done = m
            else:
                k = v.n - v.idx
                if k > m - done:
                    k = m - done
                part = w[done:done + k]
                np.multiply(part, v.table[v.idx:v.idx + k], out=part)
                if v.scale != 1.0:
                    np.multiply(part, v.scale, out=part)
                v.idx += k
                done += k
                if v.idx >= v.n:
                    if state == _RAMP_IN:
                        v.state = _CONST
                        v.table = None
                    else:
                        if done < m:
                            w[done:m] = 0.0
                        ended = True
                        done = m
        np.add(seg, w, out=seg)
        if ended:
            self._free(v)


def _nonneg_int(x, name: str) -> int:
    try:
        ok = float(x).is_integer() and x >= 0   # NaN and infinities are not integers
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a non-negative integer number of frames, got {x!r}")
    return int(x)


def check_source(source, channels: int) -> np.ndarray:
    """Validate a source for a mixer with ``channels`` outputs (control thread); return it unchanged."""
    if not isinstance(source, np.ndarray):
        raise TypeError(f"source must be a numpy array of shape (n_frames, {channels}), float32, got "
                        f"{type(source).__name__}; prepare it with realtime.audio.load_clip or prepare_source")
    if source.dtype != np.float32 or source.ndim != 2 or source.shape[1] != channels \
            or not source.flags.c_contiguous or source.shape[0] == 0:
        raise ValueError(f"source must be a non-empty C-contiguous float32 array of shape (n_frames, {channels}), "
                         f"got dtype {source.dtype}, shape {source.shape}; prepare it with "
                         "realtime.audio.load_clip or prepare_source (off the audio thread)")
    return source


def check_beats(beat_frames) -> np.ndarray | None:
    """Validate beat positions (source frames): None or a 1-d strictly increasing int64 array."""
    if beat_frames is None:
        return None
    b = np.asarray(beat_frames)
    if b.ndim != 1 or (b.size and (np.any(b < 0) or np.any(np.diff(b) <= 0))):
        raise ValueError("beat_frames must be a 1-d increasing array of non-negative source frames, e.g. "
                         "np.round(beat_times_s * samplerate) from music.beats.estimate_beats")
    return np.ascontiguousarray(b, dtype=np.int64)


class Timeline:
    """The control side's record of the schedule: time order and what plays after the last command.

    Positions are deterministic, so :meth:`next_beat_frame` needs no word
    from the audio thread.
    """

    def __init__(self):
        self.last_at = -(1 << 62)
        self.kind = None
        self.at_frame = 0
        self.length = 0
        self.offset = 0
        self.loop = True
        self.beats = None

    def check(self, at_frame: int) -> None:
        if at_frame < self.last_at:
            raise ValueError(f"commands must be scheduled in time order: at_frame {at_frame} comes before the "
                             f"last scheduled frame {self.last_at}")

    def record(self, kind, at_frame, length, offset, loop, beats) -> None:
        self.last_at = int(at_frame)
        self.kind, self.at_frame, self.length, self.offset, self.loop, self.beats = \
            kind, int(at_frame), int(length), int(offset), bool(loop), beats

    def next_beat_frame(self, after_frame: int, every: int = 1) -> int | None:
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if self.kind != _SWITCH or self.beats is None or self.beats.size == 0:
            return None
        beats = self.beats[::int(every)]
        beats = beats[beats < self.length]
        if beats.size == 0:
            return None
        after = max(int(after_frame), self.at_frame)
        pos = self.offset + (after - self.at_frame)
        if self.loop:
            p = pos % self.length
            i = int(np.searchsorted(beats, p, side="left"))
            if i < beats.size:
                return after + int(beats[i]) - p
            return after + (self.length - p) + int(beats[0])
        i = int(np.searchsorted(beats, pos, side="left"))
        return after + int(beats[i]) - pos if i < beats.size else None
