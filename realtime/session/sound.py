"""The sound half of a session's engine: what it schedules on the audio output, and when.

:class:`EngineSound` is a part of :class:`~realtime.session.engine.SessionEngine`
(its state is set in the engine's ``__init__``), split off by role: the
engine's per-TR loop decides what should be heard; these methods turn each
decision into switches on the output's frames (on the next bar of what plays,
with an equal-power crossfade; in generation mode, the chosen piece composed
segment by segment), keep a generated piece going between TRs, render a WAV
sink up to the session's time, and take what other threads ask of the sound:

- the operator's gain (:meth:`EngineSound.operator_gain`, "now" on the
  output; a WAV sink's render holds a lock against it);
- the operator's sound check (:meth:`EngineSound.soundcheck`), run on the
  engine's own thread through :meth:`EngineSound.call_soon`;
- a sound device reopened after it stopped (:meth:`EngineSound.use_output`,
  taken at the next volume).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

from ..feedback import Decision
from .clips import ClipCache
from .generation import LivePieces

log = logging.getLogger("b2m.session")

__all__ = ["EngineSound", "SOUNDCHECK_FADE_S"]

SOUNDCHECK_FADE_S = 0.25  # the sound check starts and stops with this fade


def _close_quietly(output) -> None:
    try:
        getattr(output, "abandon", output.close)()  # a stopped device's stream cannot be closed cleanly
    except Exception:  # a dead device's stream may not close cleanly; it plays nothing either way
        log.warning("the stopped audio output did not close cleanly", exc_info=True)


class EngineSound:
    """The engine's sound: see the module docstring. Mixed into :class:`SessionEngine`, whose ``__init__`` sets
    ``output``, ``library``, ``options``, ``policy``, ``policy_config``, ``clips``, ``pieces`` and the
    underscored state these methods use."""

    def _bind_audio(self, output) -> None:
        """The clip cache (or the live pieces) that prepare sources for ``output``."""
        if output is not None and self.generating:
            self.pieces = LivePieces(self.library, output.samplerate, output.channels, self.options.segment_bars,
                                     stage=output.stage, unstage=output.unstage, level_dbfs=self.options.level_dbfs)
        elif output is not None:
            self.clips = ClipCache(self.library, output.samplerate, output.channels, stage=output.stage,
                                   unstage=output.unstage, level_dbfs=self.options.level_dbfs)

    def use_output(self, output) -> None:
        """Play on ``output`` (started) from the next TR on: a sound device reopened after it stopped.

        Safe from any thread: the engine takes it at its next volume (the
        sources are prepared again for it, and the clip the participant
        should hear starts on it, as after a restart).
        """
        self._new_output = output

    def call_soon(self, fn) -> "concurrent.futures.Future":
        """Run ``fn()`` on the engine's thread, at its next volume or idle moment (the receiver wakes it at
        least every 200 ms); from any thread. Returns a Future of its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.append((fn, fut))
        return fut

    def _run_calls(self) -> None:
        while self._calls:
            fn, fut = self._calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:
                    fut.set_exception(e)

    @property
    def soundchecking(self) -> bool:
        return self._soundcheck

    def soundcheck(self, on: bool) -> bool:
        """Start (or stop) the operator's sound check: the neutral clip, now, before a run (engine thread).

        With the participant in the scanner and the scanner's noise on, the
        operator plays the music the session starts with and sets the level
        together with them (``level``, the keys); the level holds for the
        session. It ends by itself when a run's first volume comes (with
        ``--trigger``, at the scanner's first pulse, a TR earlier). Returns
        whether it plays. Raises ValueError on a WAV sink (no one listens) or
        while music plays already.
        """
        out = self.output
        if out is None or self._session_clock:
            raise ValueError("a sound check needs a sound device: this session "
                             + ("has no audio output" if out is None else "writes a WAV file (--audio wav:PATH)"))
        if bool(on) == self._soundcheck:
            return self._soundcheck
        at = max(out.time_to_frame(out.now() + self.options.lead_s), out.frame, self._last_cmd_frame)
        fade = int(round(SOUNDCHECK_FADE_S * out.samplerate))  # the operator's word: prompt, not a musical fade
        if on:
            if self._audio_started:
                raise ValueError("music is playing already: a sound check is for before a run (or a silence "
                                 "block); set the level with `level` or the keys")
            if self.clips is None and self._check_clips is None:  # generation mode: the library's own clip
                self._check_clips = ClipCache(self.library, out.samplerate, out.channels, stage=out.stage,
                                              unstage=out.unstage, level_dbfs=self.options.level_dbfs)
            ready = (self.clips or self._check_clips).get(self.policy.neutral_clip)
            offset = int(ready.beat_frames[0]) if ready.beat_frames.size else 0
            out.schedule_switch(at, ready.source, fade, offset=offset, beat_frames=ready.beat_frames)
        else:
            out.schedule_stop(at, fade)
        self._last_cmd_frame = at
        self._soundcheck = bool(on)
        log.warning("sound check: the neutral clip %s", "plays" if on else "stops")
        return self._soundcheck

    def _take_output(self) -> None:
        out, self._new_output = self._new_output, None
        for part in (self.clips, self.pieces, self._check_clips):  # their sources were staged on the old device
            if part is not None:
                part.close()
        old, self.output = self.output, out
        self.clips = self.pieces = self._check_clips = None
        self._soundcheck = False
        self._bind_audio(out)
        self._audio_started = False  # what should be heard starts again on the new device, this TR
        self._last_cmd_frame = self._segment_end = 0
        self._playing = None
        if self.on_new_output is not None:
            self.on_new_output(out)
        if old is not None:  # on a thread: a dead device's process may take seconds to go, and the TR cannot wait
            threading.Thread(target=_close_quietly, args=(old,), name="b2m-audio-close", daemon=True).start()
        log.warning("audio: playing on the reopened output (%s) from this decision on",
                    getattr(out, "device_name", out))

    def _lead_s(self, audio_frame) -> float | None:
        """A sound device: seconds from now (``audio_scheduled``) until ``audio_frame`` is played.

        With it, the record places each switch on the wall clock (``b2m session export``). A WAV sink's
        frames are session time already, so it has none.
        """
        out = self.output
        if audio_frame is None or out is None or self._session_clock:
            return None
        return (int(audio_frame) - out.time_to_frame(out.now())) / out.samplerate

    # ---- audio ------------------------------------------------------------

    @property
    def _session_clock(self) -> bool:
        """The output is a WAV sink, whose frames are the session's clock (a device plays on its own)."""
        return hasattr(self.output, "advance_to")

    def _decision_frame(self, t_scan: float) -> int:
        out = self.output
        if self._session_clock:
            return out.time_to_frame(t_scan)
        return out.time_to_frame(out.now() + self.options.lead_s)

    def operator_gain(self, gain: float, ramp_s: float) -> tuple[str, float]:
        """Ramp the output's master gain to ``gain`` now (the operator's command, from any thread).

        Where "now" is on the output: for a WAV sink, the frame rendered so far,
        the session time of the latest decision (taken under the render lock,
        so a render under way cannot overtake it); for a device, the frame
        heard ``lead_s`` from now, or the next one rendered if that is later.

        Returns
        -------
        (clock, at_s)
            ``("session", s)`` for a WAV sink, ``("wall", Unix s)`` for a
            device: when the ramp begins to sound.
        """
        out = self.output
        ramp = int(round(ramp_s * out.samplerate))
        if self._session_clock:
            with self._render_lock:
                frame = out.frame
                out.schedule_gain(frame, gain, ramp)
            return "session", frame / out.samplerate
        frame = max(out.time_to_frame(out.now() + self.options.lead_s), out.frame)
        out.schedule_gain(frame, gain, ramp)
        return "wall", time.time() + (frame - out.heard_frame()) / out.samplerate

    def _on_grid(self, at: int) -> int:
        """Output frame ``at`` moved to the next bar (or beat) of what plays, as the policy's ``align`` asks."""
        if self.policy_config.align == "none":
            return at
        every = self._beats_per_bar if self.policy_config.align == "bar" else 1
        on_beat = self.output.next_beat_frame(at, every)
        return on_beat if on_beat is not None else at

    def _fade_frames(self) -> int:
        return int(round(self.policy_config.crossfade_s * self.output.samplerate))

    def _audio(self, d: Decision, t_scan: float) -> int | None:
        out = self.output
        if out is None or self._catching_up:
            return None
        if d.clip is None:
            return self._silence(t_scan)
        if self.generating:
            return self._generate(d, t_scan)
        frame = None
        if not self._audio_started or d.action == "switch":
            ready = self.clips.get(d.clip)
            at = self._decision_frame(t_scan)
            if self._audio_started:
                at = self._on_grid(at)  # retrieval: _beats_per_bar stays 4
            at = max(at, self._last_cmd_frame)  # after silence: never before the fade-out it follows
            offset = int(ready.beat_frames[0]) if ready.beat_frames.size else 0
            out.schedule_switch(at, ready.source, self._fade_frames(), offset=offset, beat_frames=ready.beat_frames)
            self._audio_started = True
            self._last_cmd_frame = frame = int(at)
        return frame

    def _silence(self, t_scan: float) -> int | None:
        """Fade what plays out on the next bar (never before a command already scheduled); then nothing plays."""
        if not self._audio_started:
            return None
        out = self.output
        at = max(self._on_grid(self._decision_frame(t_scan)), self._last_cmd_frame)
        out.schedule_stop(at, self._fade_frames())
        self._audio_started = False
        self._playing = None
        self._last_cmd_frame = int(at)
        return int(at)

    def _generate(self, d: Decision, t_scan: float) -> int | None:
        """Generation mode: start the chosen piece on a switch; keep the playing one going, segment by segment."""
        out = self.output
        frame = None
        at = self._decision_frame(t_scan)
        want = d.clip
        if want != self._playing and self._audio_started and not self._session_clock \
                and not self.pieces.ready(want):
            want = self._playing  # a device never waits for a new piece: this one goes on (prefetched in _fill)
            self.pieces.stats["switch_waits"] += 1
        if not self._audio_started or want != self._playing:
            seg = self.pieces.start(want)
            self._playing = want
            # a continuation (or, after silence, the fade-out) may already be scheduled: never before it
            at = max(self._on_grid(at) if self._audio_started else at, self._last_cmd_frame)
            out.schedule_switch(at, seg.source, self._fade_frames(), beat_frames=seg.beat_frames)
            self._audio_started = True
            self._beats_per_bar = seg.beats_per_bar
            self._last_cmd_frame = frame = int(at)
            self._segment_end = int(at) + seg.n_frames
        self._continue_piece(at)
        return frame

    def _continue_piece(self, at: int) -> None:
        """Schedule the playing piece's next segments that are due within two TRs of output frame ``at``.

        Each starts where the last one ends (a cut of 0 frames: the piece continues seamlessly). A segment
        that ran out before its successor was scheduled would loop, not stop.
        """
        out = self.output
        horizon = at + int(round(2 * self._tr_s * out.samplerate))
        while self._segment_end <= horizon:
            seg = self.pieces.next_segment()
            out.schedule_switch(self._segment_end, seg.source, 0, beat_frames=seg.beat_frames)
            self._last_cmd_frame = self._segment_end
            self._segment_end += seg.n_frames

    def keep_playing(self) -> None:
        """Between TRs: keep a sound device's generated piece going (call it often; the receiver's idle hook).

        Segments are otherwise scheduled at each TR, so in a pause between runs the last one would loop.
        Nothing to do in retrieval mode (a clip loops by design) or for a WAV sink (its clock is the
        session's, which stands still between runs). First, what other threads asked of the engine
        (:meth:`call_soon`: the operator's sound check) is done.
        """
        self._run_calls()
        out = self.output
        if (self.pieces is None or not self._audio_started or self._catching_up or self._session_clock
                or time.monotonic() - self._kept_at < 0.1):  # the receiver may wake far more often
            return
        self._kept_at = time.monotonic()
        self._continue_piece(out.time_to_frame(out.now() + self.options.lead_s))

    def _render(self, t_scan: float) -> None:
        """A WAV sink renders up to the decision's session time (after the result is out)."""
        if self._session_clock and not self._catching_up:
            with self._render_lock:
                self.output.advance_to(self.output.time_to_frame(t_scan))
