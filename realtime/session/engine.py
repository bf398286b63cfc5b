"""The per-TR loop of a session: volume in, decision and music out.

:class:`SessionEngine` takes each recorded volume (from the receiver, after
its ack, or from a session record in :mod:`.replay`) through

1. the shared per-TR preprocessing (:class:`realtime.preprocessing.OnlinePreprocessor`,
   configured by the bundle, one per run),
2. the ONNX decoder (:class:`realtime.decoder.Decoder`, one thread, bound buffers),
3. the feedback policy (:class:`realtime.feedback.FeedbackPolicy`: smoothing,
   top-k retrieval, hysteresis, dwell, motion hold, neutral start), then what
   is heard instead, if anything: in a sham session the source participant's
   music (:mod:`.yoked`), and the block design's silence or neutral clip
   (:mod:`.protocol`); the policy's own choice is recorded either way,
4. the audio engine (:mod:`.sound`, the engine's other half): a switch is
   scheduled on the next bar (or beat) of the clip playing, with an
   equal-power crossfade, the new clip entering on its own first beat (in
   generation mode, :mod:`.generation`, the chosen generator point's piece is
   composed live instead and continued segment by segment),

then publishes a :class:`protocols.wire.Result`, answers Pyneal clients, and
appends the decision to the session record (:mod:`.decisions`).

**Session time.** The policy's clock is the scanner's: volume ``i`` of a run
is acquired at ``offset_s + i * TR`` and decided at ``offset_s + (i + 1) * TR``,
where ``offset_s`` is where the run starts in the session (0 for the first
run, the end of the previous run for the next). Decisions therefore depend on
the volumes alone, never on the wall clock, and a replay reproduces them
exactly. A WAV sink follows the same clock (a switch decided at volume ``i``
is heard no earlier than ``(i + 1) * TR`` into the run, as it would be at TR
pace, whatever the replay speed); a sound device plays on its own clock, so
the switch lands on the first bar at least ``lead_s`` after the decision.

**Order and gaps.** Volumes are processed in index order. One arriving early
(a resend after a reconnect can overtake) waits; a missing volume that has
not arrived when ``max_wait`` later ones have is stood in for by the last
volume (flagged, so the policy holds), because the causal filters need one
input per TR. The real volume, arriving later, is recorded but not decoded.
A volume more than ``max_gap`` past the next one due (a sender's numbering
gone wrong; after so long a gap the run's filters would hold nothing of
it) is recorded but not decoded either, and the run goes on without it.

**Errors.** A volume that cannot be processed (wrong grid for the model, a
bug) gets an ``error`` result with the reason; the session continues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from nibabel.affines import voxel_sizes

from protocols.bundle import read_training_tsnr
from protocols.wire import Result

from ..clocks import CLOCK_WARN_S, SenderClock, describe_offset
from ..feedback import Decision, FeedbackPolicy, PolicyConfig
from ..preprocessing import OnlinePreprocessor, PreprocessConfig
from ..preprocessing.motion import ALIGN_MATCH
from ..results import latency_summary, pyneal_payload
from .decisions import DecisionLog, decisions_path
from .generation import atlas_points
from .sound import EngineSound
from .yoked import Yoke

log = logging.getLogger("b2m.session")

ALIGN_COVERAGE = 0.9  # a run whose field of view holds less of the model's voxels than this is warned about

__all__ = ["SessionEngine", "SessionOptions", "STAGES", "MODES"]

# Result stages, in order; latency of each is measured from the previous one.
STAGES = ("received", "preprocessed", "decoded", "decided", "audio_scheduled")
MODES = ("retrieval", "generation")


@dataclass(frozen=True)
class SessionOptions:
    """Session options beyond the policy's.

    Attributes
    ----------
    lead_s : float
        A device switch is scheduled at least this long after the decision
        (room for the command to reach the audio thread), seconds.
    max_wait : int
        Volumes that may arrive after a missing one before it is stood in for.
    max_gap : int
        A volume further than this past the next one due is not decoded (each
        volume stood in for costs a TR's work: a wrong index must not stall the session).
    n_tags : int
        Tags of the playing clip reported per result.
    mode : {"retrieval", "generation"}
        Play the chosen library clip, or the chosen generator point's piece
        composed live (:mod:`.generation`; the library must be generated).
    segment_bars : int
        Generation mode: bars rendered per segment.
    level_dbfs : float or None
        Every clip (and every generated piece) is played at this RMS level,
        dBFS, its peaks kept under -1 dBFS (:func:`music.audio.level_gain`),
        so no switch changes the loudness; ds003720's stimuli were
        RMS-normalised alike. None plays the files at their own level.
    """

    lead_s: float = 0.05
    max_wait: int = 4
    max_gap: int = 500
    n_tags: int = 3
    mode: str = "retrieval"
    segment_bars: int = 4
    level_dbfs: float | None = -20.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if int(self.segment_bars) < 1:
            raise ValueError(f"segment_bars must be >= 1, got {self.segment_bars}")
        if self.level_dbfs is not None and not (np.isfinite(self.level_dbfs) and -60 <= self.level_dbfs <= -3):
            raise ValueError(f"level_dbfs must be between -60 and -3 dBFS RMS (or None: the files' own level), "
                             f"got {self.level_dbfs!r}")


@dataclass
class _Run:
    run_id: str
    tr_s: float
    offset_s: float
    n_volumes: int | None
    pre: OnlinePreprocessor | None
    log: DecisionLog | None
    next_index: int = 0
    waiting: dict = field(default_factory=dict)  # index -> (msg, t_recv)
    last_volume: np.ndarray | None = None
    error: str | None = None
    n_decoded: int = 0
    clock: SenderClock = field(default_factory=SenderClock)  # the sender's clock against this one
    clock_warned: bool = False
    tsnr: float | None = None  # the run's temporal SNR at its latest volume (None for its first volumes)


RESULTS_KEPT = 600  # results held in memory: 15 min at TR 1.5 s


class SessionEngine(EngineSound):
    """Volumes in order -> preprocessing -> decoder -> policy -> audio, results and record.

    Parameters
    ----------
    decoder : realtime.decoder.Decoder
    library : music.library.Library
        Must come from the same embedder as the decoder's bundle.
    output : audio output or None
        :func:`realtime.audio.open_output` (started by the caller); None
        decides without sound (replays, benchmarks).
    policy : PolicyConfig
    options : SessionOptions
    record_dir : path-like or None
        Session record folder for ``runs/<id>/decisions.log``; None keeps no log.
    publisher, pyneal : optional
        :class:`realtime.results.ResultsPublisher` and :class:`~realtime.results.PynealResultsServer`.
    run_offsets : dict, optional
        ``run_id -> offset_s`` to reuse (a replay passes the recorded ones).
    yoked : dict, optional
        A sham session: the schedule of what another session's participant heard
        (:func:`realtime.session.yoked.yoked_schedule`), played instead of this
        participant's own decisions, which are still made and recorded (``own_clip``).
    protocol : realtime.session.protocol.Protocol, optional
        Blocks of feedback, silence and the neutral clip in every run (after the yoke).
    """

    def __init__(self, decoder, library, output=None, policy: PolicyConfig | None = None,
                 options: SessionOptions | None = None, record_dir=None, publisher=None, pyneal=None,
                 run_offsets: dict | None = None, yoked: dict | None = None, protocol=None):
        from protocols.library import check_same_embedder

        check_same_embedder(decoder.embedder, library.embedder, "model bundle", "library")
        self.decoder = decoder
        self.library = library
        self.output = output
        self.policy_config = policy or PolicyConfig()
        self.options = options or SessionOptions()
        self.policy = FeedbackPolicy(library, self.policy_config)
        self.yoke = Yoke(yoked, library) if yoked is not None else None
        self.protocol = protocol
        self._heard: int | None = None  # the library row the participant hears (None: silence)
        self._heard_before = False
        self.record_dir = record_dir
        self.publisher = publisher
        self.pyneal = pyneal
        m = decoder.manifest
        self.preprocess = PreprocessConfig.from_dict(m["preprocess"])
        self.lag = max(self.preprocess.delays)
        self._arrays = m["arrays"]
        self._affine = np.asarray(m["mask"]["affine"], float)
        self._default_n = int(m.get("n_volumes") or 410)
        # the Training runs' tSNR of the decoder's voxels, read once (None for a bundle without it)
        self._training_tsnr = read_training_tsnr(m)
        #: their figure at the runs' end (None for a bundle without it)
        self.training_tsnr = None if self._training_tsnr is None else self._training_tsnr.median
        self._run_offsets = dict(run_offsets or {})
        self.runs: dict[str, _Run] = {}
        self._session_end_s = 0.0  # session time at which the latest run's last decided volume ends
        self.generating = self.options.mode == "generation"
        if self.generating:
            atlas_points(library)  # a library that is not generated is refused before anything starts
        self.clips = self.pieces = None
        self._bind_audio(output)
        self._new_output = None    # a sound device reopened on another thread, taken at the next TR
        self._calls: deque = deque()  # (fn, future) to run on the engine's thread (call_soon)
        self._soundcheck = False   # the neutral clip plays for the operator's sound check
        self._check_clips = None   # generation mode: a clip cache for the sound check alone
        self.on_new_output = None  # called (engine thread) with it once taken: the operator's gain goes on it
        self._audio_started = False
        self._render_lock = threading.Lock()  # a WAV sink's render, against the operator's commands
        self._last_cmd_frame = 0
        self._segment_end = 0      # generation: output frame where the last scheduled segment ends
        self._beats_per_bar = 4    # of what plays (generation: the piece's meter)
        self._tr_s = 2.0           # of the run being decoded
        self._playing = None       # generation: the library row whose piece is playing
        self._kept_at = 0.0        # time.monotonic() of the last keep_playing that looked at the clock
        self._catching_up = False
        self._logged: set = set()
        # the newest results, for the dashboard and callers; the whole session is in the decisions
        # logs (``session_results``), so memory stays flat however long the session runs
        self.results: deque[Result] = deque(maxlen=RESULTS_KEPT)
        # what the operator should see now (realtime.session.alerts.standing_alerts, set by the session
        # command, which holds the receiver and the trigger input): put in every result
        self.alerts = None
        self.latency_ms = {s: deque(maxlen=2000) for s in STAGES[1:] + ("total",)}
        self.counts = {"volumes": 0, "decoded": 0, "switches": 0, "holds": 0, "errors": 0, "stand_ins": 0,
                       "late": 0, "too_far_ahead": 0}
        self.last: Result | None = None
        self.next_candidate: str | None = None
        self.alignments: dict[str, dict] = {}  # run -> how its first volume was found (:meth:`_aligned`)
        if self.clips is not None:  # the first sound must not wait for a disk read: load it now
            self.clips.preload(self.policy.neutral_clip)
        if self.pieces is not None:  # nor for the first segment's render
            self.pieces.prepare(self.policy.neutral_clip)

    # ---- runs -----------------------------------------------------------

    def _run(self, msg) -> _Run:
        run = self.runs.get(msg.run_id)
        if run is not None:
            return run
        offset = self._run_offsets.get(msg.run_id, self._session_end_s)
        pre, error = None, None
        n = int(msg.n_volumes or self._default_n)
        try:
            pre = OnlinePreprocessor(self._arrays["mask"], self._affine, self.preprocess, n,
                                     reference=self._arrays["reference"], norm_mean=self._arrays["norm_mean"],
                                     norm_std=self._arrays["norm_std"], tr_s=float(msg.tr_s))
            pre.check(msg.data.shape[:3], msg.affine)
        except ValueError as e:  # GeometryError included
            error = f"run {msg.run_id} cannot be decoded with this model: {e}"
            log.error("%s", error)
        dlog = DecisionLog(decisions_path(self.record_dir, msg.run_id)) if self.record_dir is not None else None
        run = _Run(msg.run_id, float(msg.tr_s), float(offset), msg.n_volumes, pre, dlog, error=error)
        for other in self.runs.values():  # runs are acquired one after the other: a new one ends the last
            self._release(other)
        self.runs[msg.run_id] = run
        log.info("run %s: decoding from session time %.1f s (TR %.3f s, lag %d TRs)", msg.run_id, offset,
                 msg.tr_s, self.lag)
        return run

    def _release(self, run: _Run) -> None:
        """Free a finished run's per-run state (~30 MB at 60k voxels); its later volumes count as late."""
        if run.pre is not None:
            run.pre = None
            run.last_volume = None
            run.waiting.clear()
            if run.log is not None and not self._catching_up:
                run.log.close()
                run.log = None

    # ---- entry point ----------------------------------------------------

    def on_volume(self, msg, t_recv: float) -> list[Result]:
        """Handle one recorded volume (any order); returns the results produced now."""
        run = self._run(msg)
        self._clock(run, msg, t_recv)
        out = []
        if msg.index < run.next_index or (run.pre is None and run.error is None):
            self.counts["late"] += 1
            log.warning("%s/%d arrived after it was stood in for; recorded, not decoded", msg.run_id, msg.index)
            return out
        if msg.index - run.next_index > self.options.max_gap:
            self.counts["too_far_ahead"] += 1
            log.warning("%s/%d is %d volumes past the next one due (%d), more than %d: recorded, not decoded. "
                        "A run's volumes are numbered from 0 in acquisition order: check the sender's numbering",
                        msg.run_id, msg.index, msg.index - run.next_index, run.next_index, self.options.max_gap)
            return out
        run.waiting[msg.index] = (msg, t_recv)
        while True:
            if run.next_index in run.waiting:
                m, t = run.waiting.pop(run.next_index)
                out.append(self._step(run, m, m.data, t, stand_in=False))
            # the volumes waiting all come after the missing one: stand in once max_wait of them are here
            elif len(run.waiting) >= self.options.max_wait and run.last_volume is not None:
                self.counts["stand_ins"] += 1
                log.warning("%s/%d missing after %d later volumes: the previous volume stands in (flagged)",
                            run.run_id, run.next_index, self.options.max_wait)
                first = run.waiting[min(run.waiting)][0]
                out.append(self._step(run, first, run.last_volume, time.time(), stand_in=True,
                                      index=run.next_index))
            else:
                break
        if run.n_volumes is not None and run.next_index >= run.n_volumes:
            self._release(run)
        return out

    def _aligned(self, run: _Run) -> None:
        """Say how the run's first volume was found against the model's reference (another session's)."""
        a, grid = run.pre.alignment, run.pre.grid
        where = (f"on another grid than the model's ({'x'.join(map(str, grid[0]))} voxels of "
                 + "x".join(f"{v:.2g}" for v in voxel_sizes(grid[1])) + " mm)"
                 if grid is not None else "far from the model's reference")
        self.alignments[run.run_id] = {"params": [float(v) for v in a.params], "similarity": a.similarity,
                                       "start": a.start, "other_grid": grid is not None, "coverage": a.coverage}
        poor = a.similarity < ALIGN_MATCH or (a.coverage is not None and a.coverage < ALIGN_COVERAGE)
        log.log(logging.WARNING if poor else logging.INFO, "run %s: volumes %s, aligned to it: %s%s", run.run_id,
                where, a.describe(), "; check that this is the model's participant and that the slices cover "
                "the model's voxels" if poor else "")

    def _clock(self, run: _Run, msg, t_recv: float) -> None:
        run.clock.update(float(msg.t_sent or 0.0), t_recv)
        off = run.clock.offset_s
        # a few messages first: one received while this process was busy overstates the offset
        if not run.clock_warned and run.clock.n >= 5 and off is not None and abs(off) >= CLOCK_WARN_S:
            run.clock_warned = True
            log.warning("run %s: %s (the least receive - send time over %d volumes); acquisition times are "
                        "moved onto this computer's clock for the lag and the exported events. Synchronise "
                        "both computers' clocks (NTP, chrony) to be sure", run.run_id,
                        describe_offset(off, "the sender's clock"), run.clock.n)

    # ---- one TR ---------------------------------------------------------

    def _step(self, run: _Run, msg, volume: np.ndarray, t_recv: float, *, stand_in: bool,
              index: int | None = None) -> Result:
        if self._new_output is not None and not self._catching_up:
            self._take_output()
        self._run_calls()
        if self._soundcheck and not self._catching_up:  # a run begins: the sound check ends, the run's music starts
            try:
                self.soundcheck(False)
            except Exception:  # the device, say: the TR goes on (its own errors are handled in it)
                self._soundcheck = False
                log.exception("could not end the sound check")
        if self.pieces is not None:  # the generator's worker waits while this TR is worked on
            self.pieces.pause()
        try:
            return self._step_now(run, msg, volume, t_recv, stand_in=stand_in, index=index)
        finally:
            if self.pieces is not None:
                self.pieces.resume()

    def _step_now(self, run: _Run, msg, volume: np.ndarray, t_recv: float, *, stand_in: bool,
                  index: int | None = None) -> Result:
        index = msg.index if index is None else index
        run.next_index = index + 1
        self.counts["volumes"] += 1
        p0 = time.perf_counter()
        # every stamp on this computer's clock: the scanner side's acquisition time moved by the clock offset
        stamps = {"acquired": run.clock.here(float(msg.t_acquired)), "received": float(t_recv)}
        lat: dict[str, float] = {}
        res = Result(run_id=run.run_id, index=index)
        t_scan = run.offset_s + (index + 1) * run.tr_s  # the decision's session time
        self._tr_s = run.tr_s
        self._session_end_s = max(self._session_end_s, t_scan)
        embedding, audio_frame, audio_lead, error, extra = None, None, None, None, {}
        try:
            if run.error is not None:
                raise ValueError(run.error)
            step = run.pre.process(volume, stand_in=stand_in)
            if step.t == 0 and run.pre.alignment is not None:
                self._aligned(run)
            run.last_volume = volume if not stand_in else run.last_volume
            p1 = time.perf_counter()
            stamps["preprocessed"] = time.time()
            lat["preprocessed"] = (p1 - p0) * 1e3
            flagged = stand_in
            res.dvars_pct = step.dvars_pct if np.isfinite(step.dvars_pct) else None
            tsnr = run.pre.tsnr.median()
            res.tsnr = run.tsnr = tsnr if np.isfinite(tsnr) else run.tsnr
            if res.tsnr is not None:  # what the alert compares it with, for every view of the results
                res.tsnr_training = self.tsnr_reference(index + 1)
            if step.motion is not None:
                res.motion = [float(v) for v in step.motion.params]
                res.fd_mm = float(step.motion.fd)
                flagged = flagged or bool(step.motion.flagged)
            res.flagged = flagged
            if step.x is not None:
                embedding = self.decoder.decode(step.x).copy()
                res.decoded_index = index - self.lag
                run.n_decoded += 1
                self.counts["decoded"] += 1
            p2 = time.perf_counter()
            stamps["decoded"] = time.time()
            lat["decoded"] = (p2 - p1) * 1e3
            decision, extra = self._decide(run, index, t_scan, embedding, flagged)
            p3 = time.perf_counter()
            stamps["decided"] = time.time()
            lat["decided"] = (p3 - p2) * 1e3
            audio_frame = self._audio(decision, t_scan)
            p4 = time.perf_counter()
            stamps["audio_scheduled"] = time.time()
            audio_lead = self._lead_s(audio_frame)
            lat["audio_scheduled"] = (p4 - p3) * 1e3
            self._fill(res, decision, embedding)
            res.condition = extra.get("condition")
        except Exception as e:  # never let one volume take the session down
            self.counts["errors"] += 1
            res.action = "error"
            error = f"{type(e).__name__}: {e}"
            if run.error is None:
                log.exception("%s/%d could not be processed; the session continues", run.run_id, index)
            res.clip = self.library.clips[self._heard].id if self._heard is not None else None
        lat["total"] = (time.perf_counter() - p0) * 1e3
        res.timestamps = stamps
        res.latency_ms = {k: round(v, 4) for k, v in lat.items()}
        for k, v in lat.items():
            self.latency_ms[k].append(v)
        if res.action == "switch":
            self.counts["switches"] += 1
        elif res.action == "hold":
            self.counts["holds"] += 1
        self._emit(run, res, embedding, t_scan, stand_in, (audio_frame, audio_lead), error, extra)
        self._render(t_scan)
        return res

    def _decide(self, run: _Run, index: int, t_scan: float, embedding, flagged: bool) -> tuple[Decision, dict]:
        """The policy's decision, then what is heard: a sham's source music, then the protocol's block.

        The action says what happens to the sound: ``switch`` when another clip (or, after silence, any
        clip) starts, ``silence`` when it stops or stays off; otherwise the policy's own action
        (``neutral``, ``keep``, ``hold``). Returns the decision and what the record adds to it.
        """
        own = self.policy.step(t_scan, embedding, flagged)
        want, extra = own.clip, {}
        if self.yoke is not None:  # a sham session: what the source participant heard plays instead
            want, yoked_to = self.yoke.clip_for(own, run.run_id, index)
            extra = {"own_clip": self.library.clips[own.clip].id, "yoked_to": yoked_to}
        if self.protocol is not None:
            extra["condition"] = condition = self.protocol.condition_at((index + 1) * run.tr_s)
            if condition == "silence":
                want = None
            elif condition == "neutral":
                want = self.policy.neutral_clip
        prev, self._heard = self._heard, want
        if want is None:
            return Decision("silence", None, prev, own.topk, own.current_score), extra
        starts = want != prev and (prev is not None or self._heard_before)
        self._heard_before = True
        if starts:
            return Decision("switch", want, prev, own.topk, own.current_score), extra
        return Decision("keep" if own.action == "switch" else own.action, want, None, own.topk,
                        own.current_score), extra

    def _fill(self, res: Result, d: Decision, embedding) -> None:
        res.action = d.action
        res.clip = self.library.clips[d.clip].id if d.clip is not None else None
        res.embedding = embedding
        res.topk = [(self.library.clips[i].id, round(s, 6)) for i, s in d.topk]
        res.tags = self.library.clips[d.clip].tag_list()[: self.options.n_tags] if d.clip is not None else []
        cand = [i for i, _ in d.topk if i != d.clip]  # the next switch is almost always to one of these
        ahead = [i for i, _ in d.topk[:3]]
        if self.yoke is not None:  # a sham session knows its next switch: the source's next clip
            nxt = self.yoke.upcoming(res.run_id, res.index)
            cand = ([nxt] if nxt is not None else []) + cand
            ahead = cand[:3]
        self.next_candidate = self.library.clips[cand[0]].id if cand else None
        if self.clips is not None and ahead:
            self.clips.prefetch(ahead)
        if self.pieces is not None:  # a switch still waiting for its piece first, then the next candidates
            waiting = [d.clip] if self._audio_started and d.clip not in (self._playing, None) else []
            self.pieces.prefetch(waiting + cand[:2])

    def resume(self, volumes, ended_runs=(), logged=()) -> dict:
        """Rebuild the state of an interrupted session from its record before serving again.

        ``volumes`` yields ``(VolumeMessage, t_recv)`` in arrival order
        (:func:`realtime.session.replay.recorded_volumes`). Every run is run
        through the engine silently (no sound, no results, no new decisions
        in the record), so the preprocessing state, the delay stack and the
        policy (current clip, dwell, smoothing) are exactly those the session
        had; the first new volume then continues the run as if nothing had
        happened, and the music restarts on the clip that was playing. Runs
        in ``ended_runs`` only advance the session clock (their state is not
        needed any more). ``logged`` holds the ``(run_id, index)`` whose
        decisions are already in the record; the others (volumes acked just
        before the crash) get theirs written now. Returns counts of what was
        caught up.
        """
        self._logged = set(logged)
        n = {"volumes": 0, "runs": set()}
        counts = dict(self.counts)  # what this process does from now on is what its summary counts
        self._catching_up = True
        try:
            for msg, t_recv in volumes:
                if msg.run_id in ended_runs and msg.run_id not in self.runs:
                    self._session_end_s = max(self._session_end_s,
                                              self._run_offsets.get(msg.run_id, 0.0) + (msg.index + 1) * msg.tr_s)
                    continue
                self.on_volume(msg, t_recv)
                n["volumes"] += 1
                n["runs"].add(msg.run_id)
        finally:
            self._catching_up = False
            self.counts = counts
            for v in self.latency_ms.values():
                v.clear()
        self._audio_started = False  # the sound stopped with the old process: start the current clip again
        return {"volumes": n["volumes"], "runs": sorted(n["runs"])}

    def finish(self, tail_s: float | None = None) -> None:
        """End of the session: fade out and, for a WAV sink, render to the end."""
        out = self.output
        if out is not None and self._audio_started:
            fade = self._fade_frames()
            at = self._decision_frame(self._session_end_s)
            at = max(at, out.frame, self._last_cmd_frame + fade)  # let the last crossfade finish
            out.schedule_stop(at, fade)
            if self._session_clock:
                with self._render_lock:
                    out.advance_to(at + fade + out.samplerate // 10)
        for cache in (self.clips, self.pieces, self._check_clips):
            if cache is not None:
                cache.close()
        for run in self.runs.values():
            if run.log is not None:
                run.log.close()

    # ---- outputs ------------------------------------------------------------

    def _emit(self, run: _Run, res: Result, embedding, t_scan: float, stand_in: bool, audio, error,
              extra: dict) -> None:
        self.last = res
        if self._catching_up:
            # a volume recorded (and acked) whose decision the old process never wrote: write it now, late
            if run.log is not None and (res.run_id, res.index) not in self._logged:
                self._log(run, res, embedding, t_scan, stand_in, audio, error, extra)
            return
        if self.alerts is not None:
            try:
                res.alerts = list(self.alerts())
            except Exception:  # an alert must never cost a TR
                log.exception("could not gather the alerts for %s/%d", res.run_id, res.index)
        self.results.append(res)
        if self.publisher is not None:
            self.publisher.publish(res)
        if self.pyneal is not None:
            self.pyneal.store(res.index, pyneal_payload(res))
        if run.log is not None:
            self._log(run, res, embedding, t_scan, stand_in, audio, error, extra)

    def _log(self, run: _Run, res: Result, embedding, t_scan: float, stand_in: bool, audio, error,
             extra: dict) -> None:
        audio_frame, audio_lead = audio
        h = {"kind": "decision", "run_id": res.run_id, "index": res.index, "decoded_index": res.decoded_index,
             "action": res.action, "clip": res.clip, "topk": [list(t) for t in res.topk],
             "tags": [list(t) for t in res.tags], "fd_mm": res.fd_mm, "motion": res.motion,
             "flagged": res.flagged, "stand_in": stand_in, "dvars_pct": res.dvars_pct, "tsnr": res.tsnr,
             "t_scan_s": t_scan,
             "offset_s": run.offset_s, "tr_s": run.tr_s, "timestamps": res.timestamps, "latency_ms": res.latency_ms,
             "audio_frame": audio_frame, "audio_lead_s": audio_lead,
             "audio_rate": self.output.samplerate if audio_frame is not None else None, "error": error,
             "clock_offset_s": run.clock.offset_s, **extra}
        try:
            run.log.append(h, embedding)
        except OSError as e:  # the disk: held, and written before the next decision once there is room
            log.error("could not write the decision for %s/%d to the record (%s): decisions are held in memory "
                      "until the disk takes them again; make room on it", res.run_id, res.index, e.strerror or e)
        except Exception:
            log.exception("could not append the decision for %s/%d to the record", res.run_id, res.index)

    def tsnr_reference(self, n_volumes: int) -> float | None:
        """The Training runs' tSNR a run's figure after ``n_volumes`` volumes is compared with: their own running
        figure after as many (:meth:`protocols.bundle.TrainingTsnr.at`); None for a bundle without it."""
        return None if self._training_tsnr is None else self._training_tsnr.at(n_volumes)

    def stats(self) -> dict:
        """Counts, latency medians/p99 per stage (ms) and the audio output's statistics."""
        lat = {k: latency_summary(v) for k, v in self.latency_ms.items() if v}
        out = {"counts": dict(self.counts), "latency_ms": lat}
        if self.output is not None:
            out["audio"] = self.output.stats()
        if self.clips is not None:
            out["clips"] = dict(self.clips.stats)
        if self.pieces is not None:
            out["pieces"] = dict(self.pieces.stats)
        if self.yoke is not None:
            out["yoked"] = self.yoke.summary()
        if self.alignments:  # runs whose first volume was searched for against the model's reference
            out["alignment"] = dict(self.alignments)
        clocks = {r.run_id: {"offset_s": r.clock.offset_s, "messages": r.clock.n}
                  for r in list(self.runs.values()) if r.clock.offset_s is not None}
        if clocks:  # this computer's clock minus the scanner side's, per run
            out["clock_offset_s"] = clocks
        tsnr = {r.run_id: r.tsnr for r in list(self.runs.values()) if r.tsnr is not None}
        if tsnr:  # each run's temporal SNR at its last volume, beside the Training runs'
            curve = None if self._training_tsnr is None else self._training_tsnr.curve
            out["tsnr"] = {"runs": tsnr, "training": self.training_tsnr,
                           "training_curve": list(curve) if curve else None}
        return out
