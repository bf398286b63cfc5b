"""Benchmark the live session loop at the full ds003720 grid: per-TR latency, throughput, memory, switch timing.

Run from the repository root::

    .venv/bin/python bench/session.py            # full: 10 runs x 410 TRs in-process, 410-volume replay, 60 s on JACK
    .venv/bin/python bench/session.py --quick    # 2 runs, 120-volume replay, 30 s on JACK; under ~3 min once cached
    .venv/bin/python bench/session.py --no-jack --no-procs

Inputs (``bench/_session_data.py``, cached in ``bench/results/cache/session/``):
full-grid int16 volumes (96 x 96 x 68, 2 mm) with typical head motion and
Rician noise (tSNR 40), built from nilearn's MNI152 templates by
``bench/_motion_data.py``; a realistic mask (the 60,000 most grey voxels of
the brain); a library of procedural clips embedded by the real musicnn-msd
embedder (200-d); a bundle written by the real ``write_bundle`` with motion
correction on, causal detrend, running z-score, delays (2, 3, 4) and a linear
decoder 3 x 60,000 -> 200 with **random coefficients** (timing only; the
bias is the library's mean embedding so decisions move among clips).

Measured:

1. **Per-TR latency, in process.** ``SessionEngine.on_volume`` called for
   every volume **back to back** (no pacing: the next volume is handed over
   as soon as the previous call returns), successive runs of 410 volumes
   with new run ids through one engine, the default policy, a decision log
   on disk and a WAV sink whose mixer renders every TR's audio (samples
   discarded, not written). Stage times are the engine's own
   ``Result.latency_ms`` (each stage from the end of the previous one; the
   total from the start of the TR to the audio switch being scheduled; the
   volume is handed over the moment it is "received", so there is no queue).
   Anchors in the same run, interleaved every few TRs so they see the same
   machine load: the bare decoder call (``Decoder.decode``, onnxruntime,
   1 thread) and python-rtspm's ``spm_realign_rt`` (OpenNFT's realignment,
   OpenNFT's flags) on the same volumes; OpenNFT's published per-volume time
   is quoted as a reference figure, not measured.
2. **RSS** (``VmRSS`` from ``/proc/self/status``) after 400 and 4,000 TRs
   (every 100 TRs in the JSON), the memory the engine keeps per run (numpy
   arrays reachable from a run's preprocessor) and, after the run, how much
   RSS comes back when the engine's result list and the finished runs'
   preprocessors are dropped (``gc.collect`` + ``malloc_trim``).
3. **Throughput through real processes**: ``b2m session`` (WAV output,
   results published on ZeroMQ, session record with fsync) fed by
   ``b2m scanner replay --speed max``; TR/s from the results received by a
   subscriber. Also the session process's RSS (ready, every 25 results,
   after the run and 5 s later) and the replay's own summary (volumes
   resent, ack latency).
4. **Audio switch timing on a real clock**: ``jackd -d dummy -r 48000 -p 256``
   started here, the engine with ``open_output("system", isolate=True)``,
   volumes at scanner pace (TR 1.0 s), a policy that switches often
   (smooth 1 TR, margin 0, dwell 3 s). Every switch the engine schedules is
   compared with what the audio process executed: ``frame`` against
   ``scheduled_frame``, and the executed output-clock ``time`` against the
   stream time the session computed for that frame when it scheduled it.
   Underruns and jackd's xruns are counted (and, for context, those of the
   C client ``jack_metro`` alone just before); each switch is also reported
   without the ones that had an underrun between scheduling and execution or
   in the 64 callbacks before scheduling (the stream clock's median fit lags
   a slip by up to that window). The per-TR latency of this scanner-paced run
   (with the real device's scheduling) is reported too.

Goals (issue 7): p99 of the per-TR latency <= 50 ms with motion correction;
memory flat (here: RSS growth from 400 to 4,000 TRs <= 10 MB); the audio
switch within one audio buffer (256 frames = 5.33 ms at 48 kHz) of its
scheduled time. Each is printed MET or MISSED with its figure; nothing is
asserted.

Prints a table and writes ``bench/results/session.json``
(``session-quick.json`` with ``--quick``). python-rtspm is GPL-3.0 and is used
here only, never by the packages. One heavy process at a time: the parts run
one after the other.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import _session_data as sd  # noqa: E402

STAGES = ("preprocessed", "decoded", "decided", "audio_scheduled", "total")
GOAL_P99_MS = 50.0
GOAL_FLAT_MB = 10.0
JACK_RATE, JACK_PERIOD = 48000, 256
BUFFER_MS = 1e3 * JACK_PERIOD / JACK_RATE
FIT_CALLBACKS = 64   # realtime.audio._device._ANCHORS: callbacks in the stream clock's median fit
# OpenNFT (Koush et al. 2017, NeuroImage 156:489-503), as quoted in issue 7: about 477 ms per volume for its
# whole per-volume processing. A published figure on other hardware, not measured here.
OPENNFT_PUBLISHED_MS = 477.0
SOURCES = ["realtime/session/engine.py", "realtime/session/clips.py", "realtime/feedback.py", "realtime/decoder.py",
           "realtime/preprocessing/pipeline.py", "realtime/preprocessing/motion.py", "realtime/audio/_mixer.py",
           "realtime/audio/_process.py", "realtime/audio/_device.py", "realtime/audio/_wav.py",
           "realtime/receiver.py", "b2m/commands/session.py", "bench/_session_data.py", "realtime/audio/jack.py"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _clip_cache_mb(engine) -> float:
    """Samples held by the session's clip cache (bounded by its capacity), MB."""
    clips = getattr(engine.clips, "_clips", {}) if engine.clips is not None else {}
    return sum(getattr(c.source, "nbytes", 0) for c in list(clips.values())) / 1e6


def rss_mb(pid="self") -> dict:
    """VmRSS and VmHWM (peak) of a process (this one by default), MB (1e6 bytes)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "RssShmem:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024 / 1e6
    return {"rss_mb": out.get("VmRSS"), "peak_mb": out.get("VmHWM"), "anon_mb": out.get("RssAnon"),
            "file_mb": out.get("RssFile"), "shmem_mb": out.get("RssShmem")}


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


class _NullFile:
    def write(self, data) -> None:
        pass

    def close(self) -> None:
        pass


def discard_sink(folder: str, blocksize: int = 256):
    """A :class:`realtime.audio.WavSink` whose mixer renders every frame but whose samples are dropped.

    The real sink would write 1.5 s of audio per TR (1.2 GB of float WAV for
    4,000 TRs); the scheduling and rendering code is the same.
    """
    from realtime.audio import WavSink

    class DiscardSink(WavSink):
        kind = "wav-discarded"

        def start(self):
            if self._file is None:
                self._file = _NullFile()
            return self

        def close(self):
            self._file = None
            self.mixer.collect()

    return DiscardSink(os.path.join(folder, "discarded.wav"), JACK_RATE, 2, blocksize).start()


class RecordingOutput:
    """Forwards everything to a device output and records what the session scheduled, and when."""

    def __init__(self, inner):
        self._inner = inner
        self.records: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _record(self, kind, at_frame, cid, t_call_mono, call_s):
        inner = self._inner
        self.records.append({"id": int(cid), "kind": kind, "scheduled_frame": int(at_frame),
                             "computed_time": inner.frame_to_time(int(at_frame)),
                             "stream_now": inner.now(), "frame_now": int(inner.frame), "mono": t_call_mono,
                             "underruns": int(inner.underruns), "call_ms": 1e3 * call_s})

    def schedule_switch(self, at_frame, source, crossfade_frames=0, **kw):
        t = time.monotonic()
        cid = self._inner.schedule_switch(at_frame, source, crossfade_frames, **kw)
        self._record("switch", at_frame, cid, t, time.monotonic() - t)
        return cid

    def schedule_stop(self, at_frame, fade_frames=0):
        t = time.monotonic()
        cid = self._inner.schedule_stop(at_frame, fade_frames)
        self._record("stop", at_frame, cid, t, time.monotonic() - t)
        return cid


class RtspmRealign:
    """python-rtspm's ``spm_realign_rt`` as OpenNFT drives it (see ``bench/preprocess.py``)."""

    FLAGS = {"quality": 0.9, "fwhm": 5, "sep": 4, "interp": 4, "wrap": np.zeros((3, 1)), "rtm": 0, "PW": "",
             "lkp": np.arange(6)}

    def __init__(self, reference, affine):
        from _motion_data import spm_mat

        self.mat = spm_mat(affine)
        self.dim = np.array(reference.shape)
        self.r = [self._vol(reference), None]
        self.state = ([], [], [], [], [], [])
        self.n_calls = 0

    def _vol(self, volume) -> dict:
        return {"Vol": np.asfortranarray(volume, dtype=np.float64), "mat": self.mat.copy(), "dim": self.dim}

    def update(self, volume) -> float:
        """Seconds in spm_realign_rt (the float64 / Fortran-order conversion is outside)."""
        from rtspm import spm_realign_rt

        self.r[1] = self._vol(volume)
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = time.perf_counter()
            r, a0, x1, x2, x3, deg, b, _ = spm_realign_rt(self.r, self.FLAGS, self.n_calls + 1, 1, *self.state)
            dt = time.perf_counter() - t0
        self.r, self.state = r, (a0, x1, x2, x3, deg, b)
        self.n_calls += 1
        return dt


def _message(vols, run_id: str, i: int, n: int, tr_s: float):
    from protocols.wire import VolumeMessage

    return VolumeMessage(run_id=run_id, index=i, data=vols.volume(i), affine=vols.affine, tr_s=tr_s, n_volumes=n,
                         t_acquired=time.time())


class _Rows:
    """Per-result latency rows in preallocated arrays, so the bench's own bookkeeping does not
    grow the RSS it measures (a dict per TR would add ~1 kB a TR). ``dicts()`` at the end."""

    _ACTIONS = ("neutral", "keep", "switch", "hold", "error")

    def __init__(self, capacity: int):
        self.n = 0
        self.lat = np.full((capacity, len(STAGES)), np.nan)
        self.meta = np.zeros((capacity, 4), np.int64)  # run, index, action code, flagged

    def add(self, x, run: int) -> None:
        if self.n == len(self.lat):  # more results than volumes (a late burst): grow once
            self.lat = np.vstack([self.lat, np.full_like(self.lat, np.nan)])
            self.meta = np.vstack([self.meta, np.zeros_like(self.meta)])
        for j, k in enumerate(STAGES):
            if k in x.latency_ms:
                self.lat[self.n, j] = x.latency_ms[k]
        self.meta[self.n] = (run, x.index, self._ACTIONS.index(x.action), x.flagged)
        self.n += 1

    def recent_total_p50(self, k: int) -> float:
        return float(np.nanmedian(self.lat[max(0, self.n - k): self.n, STAGES.index("total")]))

    def dicts(self) -> list[dict]:
        out = []
        for i in range(self.n):
            d = {k: float(v) for k, v in zip(STAGES, self.lat[i]) if not np.isnan(v)}
            run, index, action, flagged = (int(v) for v in self.meta[i])
            d.update(run=run, index=index, action=self._ACTIONS[action], flagged=bool(flagged))
            out.append(d)
        return out


def _stage_stats(lat_rows: list[dict]) -> dict:
    return {k: summarize([r[k] for r in lat_rows if k in r]) for k in STAGES}


def _switch_stats(lat_rows: list[dict]) -> dict:
    """audio_scheduled and total on the TRs that scheduled a switch (the audio stage's real work)."""
    sw = [r for r in lat_rows if r.get("action") == "switch"]
    return {k: summarize([r[k] for r in sw if k in r]) for k in ("audio_scheduled", "total")}


# ---------------------------------------------------------------------------------------------- part 1 + 2

def inprocess(vols, bundle_dir: str, lib_dir: str, *, blas_threads: int | None = None, **kw) -> dict:
    """Parts 1 and 2; BLAS threads limited to ``blas_threads`` if given (threadpoolctl)."""
    if not blas_threads:
        return _inprocess(vols, bundle_dir, lib_dir, blas_threads="default", **kw)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(blas_threads):
        return _inprocess(vols, bundle_dir, lib_dir, blas_threads=blas_threads, **kw)


def _inprocess(vols, bundle_dir: str, lib_dir: str, *, n_runs: int, run_len: int, tmp: str,
               anchor_every: int, rtspm_every: int, blas_threads, mode: str = "retrieval") -> dict:
    from music.library import Library
    from realtime.decoder import Decoder
    from realtime.feedback import PolicyConfig
    from realtime.session import SessionEngine
    from realtime.session.engine import SessionOptions

    t0 = time.perf_counter()
    decoder = Decoder(bundle_dir, threads=1)
    library = Library(lib_dir)
    load_s = time.perf_counter() - t0
    out = discard_sink(tmp)
    record = os.path.join(tmp, "record")
    os.makedirs(record, exist_ok=True)
    policy, options = PolicyConfig(), SessionOptions(mode=mode)
    engine = SessionEngine(decoder, library, out, policy, options, record_dir=record)
    try:
        import rtspm  # noqa: F401

        rt = RtspmRealign(vols.volume(0), vols.affine) if rtspm_every else None
        if rt is not None:
            rt.update(vols.volume(0))       # the first call sets the reference up: not an anchor sample
    except ImportError:
        rt = None
    x_anchor = np.random.default_rng(5).standard_normal(decoder.input_dim).astype(np.float32)
    decoder.decode(x_anchor)
    rows = _Rows(n_runs * run_len + 64)
    call_ms: list[float] = []
    cpu_ms: list[float] = []
    first_call_ms: list[float] = []
    bare_ms: list[float] = []
    rtspm_ms: list[float] = []
    rss = [{"trs": 0, **rss_mb()}]
    n_total = n_runs * run_len
    checkpoints = set(range(100, n_total + 1, 100)) | {400, 4000, n_total} | {run_len * k for k in range(1, n_runs + 1)}
    n = 0
    loop_s = 0.0
    t_wall0 = time.perf_counter()
    for r in range(n_runs):
        run_id = f"run-{r + 1:02d}"
        for i in range(run_len):
            msg = _message(vols, run_id, i, run_len, sd.TR_S)
            u0 = time.thread_time()
            c0 = time.perf_counter()
            res = engine.on_volume(msg, time.time())
            c1 = time.perf_counter()
            u1 = time.thread_time()
            loop_s += c1 - c0
            (first_call_ms if i == 0 else call_ms).append(1e3 * (c1 - c0))
            if i:
                cpu_ms.append(1e3 * (u1 - u0))
            for x in res:
                rows.add(x, r)
            n += 1
            if n in checkpoints:
                rss.append({"trs": n, **rss_mb(), "results_kept": len(engine.results), "runs_kept": len(engine.runs),
                            "clip_cache_mb": _clip_cache_mb(engine)})
            if anchor_every and n % anchor_every == 0:
                for _ in range(3):
                    s = time.perf_counter()
                    decoder.decode(x_anchor)
                    bare_ms.append(1e3 * (time.perf_counter() - s))
            if rt is not None and n % rtspm_every == 0:
                rtspm_ms.append(1e3 * rt.update(vols.volume(i)))
            if n % 200 == 0:
                _log(f"  {n}/{n_total} TRs, total p50 {rows.recent_total_p50(200):.1f} ms, "
                     f"RSS {rss[-1]['rss_mb']:.0f} MB")
    wall_s = time.perf_counter() - t_wall0
    engine.finish()
    stats = engine.stats()
    # the engine keeps only its newest results; every error is counted, and kept in the decision logs
    errors = [x for x in engine.results if x.action == "error"]

    # memory the engine keeps: per finished run, and the result list; then give it back and see what returns
    per_run_bytes = [sd.array_bytes(run.pre) for run in list(engine.runs.values())[:2]]
    gc.collect()
    _malloc_trim()
    after = rss_mb()["rss_mb"]
    n_results = len(engine.results)
    engine.results.clear()
    gc.collect()
    _malloc_trim()
    without_results = rss_mb()["rss_mb"]
    last = list(engine.runs)[-1]
    for rid, run in engine.runs.items():
        if rid != last:
            run.pre = None
            run.last_volume = None
    gc.collect()
    _malloc_trim()
    without_runs = rss_mb()["rss_mb"]
    rows = rows.dicts()

    def at(trs):
        for p in rss:
            if p["trs"] == trs:
                return p["rss_mb"]
        return None

    steady = [p for p in rss if p["trs"] >= min(400, n_total)]
    slope = None
    if len(steady) >= 3:
        slope = float(np.polyfit([p["trs"] for p in steady], [p["rss_mb"] for p in steady], 1)[0] * 1000.0)
    end_trs = rss[-1]["trs"]
    res = {
        "feeding": "back to back (each volume handed over as soon as the previous on_volume call returned)",
        "output": "WavSink mixer rendering each TR's audio, samples discarded (not written)",
        "record_dir": "decision log on disk (tmp)",
        "policy": policy.to_dict(), "options": options.__dict__,
        "n_runs": n_runs, "run_length": run_len, "trs": n, "results": len(rows), "load_s": load_s,
        "wall_s": wall_s, "throughput_trs_per_s": n / loop_s, "throughput_incl_anchors_trs_per_s": n / wall_s,
        "latency_ms": _stage_stats(rows),
        "latency_ms_first_400": _stage_stats([x for x in rows if x["run"] == 0][:400]),
        "latency_ms_switch_trs": _switch_stats(rows),
        "latency_ms_decoded_trs": _stage_stats([x for x in rows if "decoded" in x and x["index"] >= engine.lag]),
        "on_volume_call_ms": summarize(call_ms),
        "on_volume_cpu_ms": summarize(cpu_ms),
        "cpu_note": "on_volume_cpu_ms: CPU time of the calling thread (time.thread_time) during the call, which "
                    "runs preprocessing, onnxruntime (1 intra-op thread, on the caller) and the policy; wall "
                    "minus CPU is time spent waiting (other processes on the machine, BLAS threads, the GIL)",
        "blas_threads": blas_threads,
        "first_volume_of_run_call_ms": summarize(first_call_ms),
        "counts": stats["counts"], "clips": stats.get("clips"), "pieces": stats.get("pieces"),
        "audio": stats.get("audio"),
        "errors": {"n": int(stats["counts"]["errors"]), "latest_clips": [x.clip for x in errors][:5]},
        "anchors": {
            "bare_decoder_ms": summarize(bare_ms),
            "rtspm_realign_ms": summarize(rtspm_ms),
            "opennft_published_ms_per_volume": OPENNFT_PUBLISHED_MS,
        },
        "rss": rss,
        "rss_mb_at_400": at(400), "rss_mb_at_4000": at(4000), "rss_mb_at_end": rss[-1]["rss_mb"], "end_trs": end_trs,
        "rss_growth_mb_400_to_4000": (at(4000) - at(400)) if at(4000) is not None and at(400) is not None else None,
        "rss_growth_mb_400_to_end": (rss[-1]["rss_mb"] - at(400)) if at(400) is not None else None,
        "rss_slope_mb_per_1000_trs": slope,
        "clip_cache_mb_at_400": next((p["clip_cache_mb"] for p in rss if p["trs"] == 400), None),
        "clip_cache_mb_at_end": rss[-1]["clip_cache_mb"],
        "clip_cache_capacity_clips": engine.clips.capacity if engine.clips is not None else None,
        "kept_per_run_preprocessor_array_mb": [b / 1e6 for b in per_run_bytes],
        "attribution": {"rss_mb_after_finish": after, "results_dropped": n_results,
                        "rss_mb_without_results": without_results,
                        "rss_mb_without_finished_runs": without_runs,
                        "freed_mb_results": after - without_results,
                        "freed_mb_finished_runs": without_results - without_runs},
        "n_voxels": int(vols.mask.sum()), "input_dim": decoder.input_dim, "embedding_dim": decoder.dim,
        "library_clips": len(library), "lag_trs": engine.lag,
    }
    a = res["anchors"]
    pre = res["latency_ms"]["preprocessed"]
    if a["bare_decoder_ms"]["n"]:
        a["ratio_decoded_stage_over_bare_p50"] = res["latency_ms_decoded_trs"]["decoded"]["p50"] / a["bare_decoder_ms"]["p50"]
    if a["rtspm_realign_ms"]["n"]:
        a["ratio_rtspm_over_preprocessed_p50"] = a["rtspm_realign_ms"]["p50"] / pre["p50"]
        a["ratio_rtspm_over_total_p50"] = a["rtspm_realign_ms"]["p50"] / res["latency_ms"]["total"]["p50"]
    a["ratio_opennft_published_over_total_p50"] = OPENNFT_PUBLISHED_MS / res["latency_ms"]["total"]["p50"]
    del engine, decoder, library, out, rt
    gc.collect()
    return res


# ---------------------------------------------------------------------------------------------- part 3

def _b2m() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "b2m")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "b2m"]


def _wait_line(path: str, key: str, proc, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith(key + "\t"):
                    return line.split("\t", 1)[1].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)   # start-up, not measured
    with open(path, errors="replace") as f:
        raise RuntimeError(f"no {key!r} line from the session (exit {proc.poll()}):\n{f.read()[-3000:]}")


def processes(vols, bundle_dir: str, lib_dir: str, *, n_volumes: int, tmp: str, mode: str = "retrieval") -> dict:
    import zmq

    from protocols.wire import decode

    nii = sd.write_run_nifti(vols, os.path.join(tmp, f"run-{n_volumes}.nii"), n_volumes)
    out = os.path.join(tmp, "proc-session")
    err_path = os.path.join(tmp, "session.stderr")
    with open(err_path, "w") as err:
        sess = subprocess.Popen(_b2m() + ["session", "--model", bundle_dir, "--library", lib_dir, "--out", out,
                                          "--bind", "tcp://127.0.0.1:*", "--audio", f"wav:{out}/feedback.wav",
                                          "--results", "tcp://127.0.0.1:*", "--no-dashboard", "--mode", mode],
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    got: list = []
    rss_trace: list = []
    try:
        t_launch = time.perf_counter()
        endpoint = _wait_line(err_path, "ready", sess, 180)
        startup_s = time.perf_counter() - t_launch
        results_ep = _wait_line(err_path, "results", sess, 5)
        rss_ready = rss_mb(sess.pid)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(results_ep)
        time.sleep(0.5)  # PUB/SUB: let the subscription reach the publisher before the first result
        t_start = time.time()
        tx = subprocess.Popen(_b2m() + ["scanner", "replay", nii, "--connect", endpoint, "--speed", "max",
                                        "--run-id", "run-01", "--quiet"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        end = time.monotonic() + 60 + n_volumes * 2.0
        while len(got) < n_volumes and time.monotonic() < end:
            if poller.poll(1000):
                r = decode(sub.recv_multipart())
                got.append((time.time(), r))
                if len(got) % 25 == 0:
                    rss_trace.append({"results": len(got), **rss_mb(sess.pid)})
        tx_rc = tx.wait(120)
        t_replay_end = time.time()
        rss_done = rss_mb(sess.pid) if sess.poll() is None else {}
        rss_trace.append({"results": len(got), "after_replay_exit": True, **rss_done})
        time.sleep(5.0)   # let the run's NIfTI export (a background thread) finish, then look again
        rss_settled = rss_mb(sess.pid) if sess.poll() is None else {}
        tx_err = tx.stderr.read().decode(errors="replace")[-2000:]
        tx_out = tx.stdout.read().decode(errors="replace")
        try:
            replay_summary = json.loads(tx_out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            replay_summary = {"stdout": tx_out[-2000:]}
    finally:
        sub.close(0)
        ctx.term()
        if sess.poll() is None:
            os.kill(sess.pid, signal.SIGTERM)
        try:
            sess.wait(120)
        except subprocess.TimeoutExpired:
            os.kill(sess.pid, signal.SIGKILL)
            sess.wait(10)
    summary = {}
    try:
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        pass
    times = [t for t, _ in got]
    res_list = [r for _, r in got]
    e2e = [1e3 * (r.timestamps["audio_scheduled"] - r.timestamps["received"]) for r in res_list
           if "audio_scheduled" in r.timestamps and "received" in r.timestamps]
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    res = {
        "session": "b2m session --audio wav:... (WAV written), --results tcp (ZeroMQ PUB), session record with fsync",
        "replay": "b2m scanner replay --speed max", "n_volumes": n_volumes, "results_received": len(got),
        "session_startup_s": startup_s, "replay_exit_code": tx_rc, "replay_stderr_tail": tx_err if tx_rc else "",
        "session_exit_code": sess.returncode,
        "replay_summary": replay_summary,
        "session_rss_mb_ready": rss_ready, "session_rss_mb_after_run": rss_done,
        "session_rss_mb_5s_after_run": rss_settled, "session_rss_trace": rss_trace,
        "throughput_trs_per_s": len(got) / (times[-1] - t_start) if got else None,
        "throughput_steady_trs_per_s": steady,
        "replay_wall_s": t_replay_end - t_start,
        "engine_latency_ms": summary.get("latency_ms"),
        "received_to_audio_scheduled_ms": summarize(e2e),
        "counts": summary.get("counts"),
        "indices_in_order": [r.index for r in res_list] == list(range(len(res_list))),
        "per_result": {"index": [r.index for r in res_list], "received_to_audio_scheduled_ms": [
            round(1e3 * (r.timestamps["audio_scheduled"] - r.timestamps["received"]), 3)
            if "audio_scheduled" in r.timestamps else None for r in res_list],
            "engine_total_ms": [r.latency_ms.get("total") for r in res_list],
            "received_unix": [r.timestamps.get("received") for r in res_list]},
    }
    if sess.returncode not in (0, None):
        with open(err_path, errors="replace") as f:
            res["session_stderr_tail"] = f.read()[-3000:]
    return res


# ---------------------------------------------------------------------------------------------- part 4

def jack_switches(vols, bundle_dir: str, lib_dir: str, *, seconds: float, tr_s: float, tmp: str,
                  ref_seconds: float, mode: str = "retrieval") -> dict:
    from realtime.audio.jack import reference_xruns, start_jackd

    from music.library import Library
    from realtime.audio import open_output
    from realtime.decoder import Decoder
    from realtime.feedback import PolicyConfig
    from realtime.session import SessionEngine
    from realtime.session.engine import SessionOptions

    server = start_jackd(tmp, JACK_RATE, JACK_PERIOD, prefix="b2m-bench")
    out = None
    try:
        ref = reference_xruns(server, ref_seconds) if ref_seconds > 0 else None
        decoder = Decoder(bundle_dir, threads=1)
        library = Library(lib_dir)
        out = open_output("system", isolate=True)
        out.start()
        proxy = RecordingOutput(out)
        policy = PolicyConfig(smooth_trs=1, margin=0.0, min_dwell_s=3.0)
        options = SessionOptions(mode=mode)
        engine = SessionEngine(decoder, library, proxy, policy, options, record_dir=None)
        n = int(round(seconds / tr_s))
        mark = server.log_mark()
        u0 = out.underruns
        rows: list[dict] = []
        lateness_ms: list[float] = []
        samples: list[tuple[int, int]] = []     # (frame, underruns), sampled while the loop waits

        def wait_until(t_mono: float) -> None:
            while True:
                samples.append((out.frame, out.underruns))
                left = t_mono - time.monotonic()
                if left <= 0:
                    return
                time.sleep(min(left, 0.02))     # scanner pacing; the samples place underruns in time

        t0 = time.monotonic() + 0.5
        for i in range(n):
            deadline = t0 + i * tr_s
            wait_until(deadline)
            lateness_ms.append(1e3 * (time.monotonic() - deadline))
            msg = _message(vols, "run-01", i, n, tr_s)
            for x in engine.on_volume(msg, time.time()):
                rows.append({**x.latency_ms, "index": x.index, "action": x.action})
        engine.finish()
        last_at = max((r["scheduled_frame"] for r in proxy.records), default=0)
        wait_until(time.monotonic() + max(0.0, (last_at - out.frame) / out.samplerate) + policy.crossfade_s + 0.5)
        samples.append((out.frame, out.underruns))
        executed = {e["id"]: e for e in out.executed()}
        stats = out.stats()
        xr = server.xruns_since(mark)
        underruns = out.underruns - u0
    finally:
        if out is not None:
            out.close()
        import sounddevice as sd

        while sd._initialized > 0:
            sd._terminate()       # drop this process's JACK client before the server goes
        server.stop()
    matched = []
    for rec in proxy.records:
        e = executed.get(rec["id"])
        if e is None:
            matched.append({**rec, "executed": False})
            continue
        # underruns between scheduling and the first sample at or after the executed frame, and in the
        # clock fit's window before scheduling (the median over the last 64 callbacks lags a slip)
        after = next((u for f, u in samples if f >= e["frame"]), samples[-1][1] if samples else None)
        w0 = rec["frame_now"] - FIT_CALLBACKS * JACK_PERIOD
        before = [u for f, u in samples if f <= w0]
        fit_window = rec["underruns"] - (before[-1] if before else 0)
        matched.append({**rec, "executed": True, "frame": e["frame"], "time": e["time"],
                        "frame_error": e["frame"] - rec["scheduled_frame"],
                        "time_error_ms": 1e3 * (e["time"] - rec["computed_time"]),
                        "lead_ms": 1e3 * (rec["computed_time"] - rec["stream_now"]),
                        "underruns_between": None if after is None else after - rec["underruns"],
                        "underruns_in_fit_window_before": fit_window,
                        "scheduled_vs_executed_frame_match": e["scheduled_frame"] == rec["scheduled_frame"]})
    ok = [m for m in matched if m["executed"]]
    sw = [m for m in ok if m["kind"] == "switch"]
    clean = [m for m in sw if m["underruns_between"] == 0]
    cleaner = [m for m in clean if m["underruns_in_fit_window_before"] == 0]

    def max_abs(rows, key):
        return max((abs(m[key]) for m in rows), default=None)

    return {
        "server": {"name": server.name, "rate": JACK_RATE, "period": JACK_PERIOD, "realtime": server.realtime},
        "output": stats, "feeding": f"scanner pace, TR {tr_s} s (absolute deadlines)", "seconds": n * tr_s,
        "volumes": n, "policy": policy.to_dict(), "lead_s": options.lead_s,
        "latency_ms": _stage_stats(rows), "latency_ms_switch_trs": _switch_stats(rows),
        "per_tr_latency_ms": rows,  # every TR's stages, to see which TRs make the tail
        "pacing_lateness_ms": summarize(lateness_ms),
        "counts": engine.counts, "pieces": engine.stats().get("pieces"),
        "commands_scheduled": len(matched), "commands_executed": len(ok), "switches_scheduled":
            sum(m["kind"] == "switch" for m in matched), "switches_executed": len(sw),
        "max_abs_frame_error": max_abs(sw, "frame_error"),
        "max_abs_time_error_ms": max_abs(sw, "time_error_ms"),
        "max_abs_time_error_ms_no_underrun_between": max_abs(clean, "time_error_ms"),
        "switches_with_underrun_between": len(sw) - len(clean),
        "max_abs_time_error_ms_no_underrun_in_fit_window_or_between": max_abs(cleaner, "time_error_ms"),
        "switches_with_underrun_in_fit_window_or_between": len(sw) - len(cleaner),
        "schedule_switch_call_ms": summarize([m["call_ms"] for m in matched if m["kind"] == "switch"]),
        "max_abs_frame_error_all_commands": max_abs(ok, "frame_error"),
        "max_abs_time_error_ms_all_commands": max_abs(ok, "time_error_ms"),
        "time_error_ms": summarize([m["time_error_ms"] for m in sw]),
        "lead_ms": summarize([m["lead_ms"] for m in sw]),
        "buffer_ms": BUFFER_MS,
        "max_abs_time_error_buffers": (max_abs(sw, "time_error_ms") / BUFFER_MS) if sw else None,
        "underruns": underruns, "late_commands": stats.get("late_commands"), "xruns": stats.get("xruns"),
        "clock_slip_ms": stats.get("clock_slip_ms"), "jackd_xruns": xr, "reference_jack_metro": ref,
        "note": "time error = executed output-clock time (DAC time of the block + offset) - the stream time "
                "the session computed for the scheduled frame when it scheduled it; an xrun in between "
                "moves the stream clock past the frames rendered by the time lost, so it shows here",
        "commands": matched,
    }


# ---------------------------------------------------------------------------------------------- report

def _fmt(x, nd=2, unit=""):
    return "-" if x is None else f"{x:.{nd}f}{unit}"


def goals(res: dict) -> list[dict]:
    out = []
    ip = res.get("inprocess")
    if ip:
        p99 = ip["latency_ms"]["total"]["p99"]
        out.append({"goal": f"per-TR latency p99 <= {GOAL_P99_MS:.0f} ms with motion correction (in-process, "
                            "full grid, back to back)", "figure_ms": p99, "met": p99 <= GOAL_P99_MS})
        g = ip["rss_growth_mb_400_to_4000"]
        label = "400 -> 4000 TRs"
        if g is None:
            g, label = ip["rss_growth_mb_400_to_end"], f"400 -> {ip['end_trs']} TRs (4000 not reached)"
        if g is not None:
            out.append({"goal": f"memory flat: RSS growth {label} <= {GOAL_FLAT_MB:.0f} MB", "figure_mb": g,
                        "met": g <= GOAL_FLAT_MB})
    jk = res.get("jack")
    if jk and "error" not in jk:
        p99 = jk["latency_ms"]["total"]["p99"]
        out.append({"goal": f"per-TR latency p99 <= {GOAL_P99_MS:.0f} ms with motion correction (TR-paced, real "
                            "JACK device, isolated audio process)", "figure_ms": p99,
                    "met": p99 is not None and p99 <= GOAL_P99_MS})
        m = jk["max_abs_time_error_ms"]
        out.append({"goal": f"audio switch within one buffer ({BUFFER_MS:.2f} ms) of its scheduled time "
                            "(every switch, real JACK clock)",
                    "figure_ms": m, "max_abs_frame_error": jk["max_abs_frame_error"],
                    "max_abs_time_error_ms_no_underrun_between": jk["max_abs_time_error_ms_no_underrun_between"],
                    "met": m is not None and m <= BUFFER_MS and jk["max_abs_frame_error"] == 0
                    and jk["switches_executed"] == jk["switches_scheduled"]})
    return out


def print_report(res: dict) -> None:
    d = res["data"]
    print(f"\nsession bench: grid {tuple(d['shape'])} at {d['voxel_mm']} mm, mask {res['inprocess']['n_voxels'] if res.get('inprocess') else d['mask_voxels']} voxels, "
          f"delays {list(sd.DELAYS)}, embedding {res.get('embedding_dim')}-d ({sd.EMBEDDER}, library of "
          f"{res.get('library_clips')} clips), decoder random (timing only); nproc {res['machine']['nproc']}, "
          f"load average {res['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} at end")
    ip = res.get("inprocess")
    if ip:
        print(f"\n1. per-TR latency in process, {ip['trs']} TRs ({ip['n_runs']} runs x {ip['run_length']}), "
              f"back to back, motion correction on (ms; each stage from the end of the previous one)")
        print(f"  {'stage':<18}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'  first 400 TRs p50/p99':>26}")
        for k in STAGES:
            s, f = ip["latency_ms"][k], ip["latency_ms_first_400"][k]
            print(f"  {k:<18}{_fmt(s['p50']):>9}{_fmt(s['p90']):>9}{_fmt(s['p99']):>9}{_fmt(s['max']):>9}"
                  f"{_fmt(f['p50']):>15} / {_fmt(f['p99'])}")
        c = ip["on_volume_call_ms"]
        u = ip["on_volume_cpu_ms"]
        print(f"  on_volume call (incl. result, log and audio render): p50 {_fmt(c['p50'])}, p99 {_fmt(c['p99'])}; "
              f"its thread's CPU time p50 {_fmt(u['p50'])}, p99 {_fmt(u['p99'])} (wall - CPU = waiting for the "
              f"machine); first volume of a run (preprocessor set-up) p50 {_fmt(ip['first_volume_of_run_call_ms']['p50'])}")
        w = ip["latency_ms_switch_trs"]
        print(f"  TRs that scheduled a switch (n={w['total']['n']}): audio_scheduled p50 {_fmt(w['audio_scheduled']['p50'])}"
              f" / max {_fmt(w['audio_scheduled']['max'])}, total p50 {_fmt(w['total']['p50'])} / max {_fmt(w['total']['max'])}")
        print(f"  throughput in process: {ip['throughput_trs_per_s']:.1f} TR/s; counts {ip['counts']}; clip cache "
              f"{ip['clips']} (a sync load = a switch waited for its clip to be read and beat-tracked)")
        a = ip["anchors"]
        b, rt = a["bare_decoder_ms"], a["rtspm_realign_ms"]
        print(f"  anchors, same run: bare decoder call p50 {_fmt(b['p50'])} / p99 {_fmt(b['p99'])} ms (n={b['n']}); "
              f"decoded stage / bare p50 = {_fmt(a.get('ratio_decoded_stage_over_bare_p50'))}x")
        if rt["n"]:
            print(f"           rtspm spm_realign_rt alone p50 {_fmt(rt['p50'], 0)} / p99 {_fmt(rt['p99'], 0)} ms "
                  f"(n={rt['n']}) = {a['ratio_rtspm_over_preprocessed_p50']:.0f}x our whole preprocessing stage, "
                  f"{a['ratio_rtspm_over_total_p50']:.0f}x our whole TR (p50)")
        print(f"           OpenNFT published ~{OPENNFT_PUBLISHED_MS:.0f} ms/volume (reference figure, other hardware, "
              f"not measured) = {a['ratio_opennft_published_over_total_p50']:.0f}x our TR p50")
        print(f"\n2. RSS: {_fmt(ip['rss_mb_at_400'], 0)} MB after 400 TRs, "
              + (f"{_fmt(ip['rss_mb_at_4000'], 0)} MB after 4000 TRs (growth {_fmt(ip['rss_growth_mb_400_to_4000'], 1)} MB)"
                 if ip["rss_mb_at_4000"] is not None else
                 f"{_fmt(ip['rss_mb_at_end'], 0)} MB after {ip['end_trs']} TRs (growth {_fmt(ip['rss_growth_mb_400_to_end'], 1)} MB; 4000 not reached)")
              + f"; slope {_fmt(ip['rss_slope_mb_per_1000_trs'], 1)} MB per 1000 TRs")
        at = ip["attribution"]
        print(f"  kept per finished run (arrays reachable from its preprocessor): "
              f"{', '.join(_fmt(x, 1) for x in ip['kept_per_run_preprocessor_array_mb'])} MB; dropping the "
              f"{at['results_dropped']} kept results frees {_fmt(at['freed_mb_results'], 1)} MB of RSS, dropping the "
              f"finished runs' preprocessors {_fmt(at['freed_mb_finished_runs'], 1)} MB")
        print(f"  clip cache (bounded: {ip['clip_cache_capacity_clips']} clips): {_fmt(ip['clip_cache_mb_at_400'], 1)} MB "
              f"at 400 TRs, {_fmt(ip['clip_cache_mb_at_end'], 1)} MB at the end")
    pr = res.get("processes")
    if pr:
        if "error" in pr:
            print(f"\n3. real processes: {pr['error']}")
        else:
            el = (pr.get("engine_latency_ms") or {}).get("total", {})
            print(f"\n3. real processes (b2m session + b2m scanner replay --speed max, {pr['n_volumes']} volumes): "
                  f"{_fmt(pr['throughput_trs_per_s'], 1)} TR/s end to end, {_fmt(pr['throughput_steady_trs_per_s'], 1)} "
                  f"TR/s first to last result; {pr['results_received']} results; session RSS "
                  f"{_fmt(pr['session_rss_mb_ready'].get('rss_mb'), 0)} MB ready, "
                  f"{_fmt(pr['session_rss_mb_after_run'].get('rss_mb'), 0)} MB after the run, "
                  f"{_fmt(pr['session_rss_mb_5s_after_run'].get('rss_mb'), 0)} MB 5 s later (peak "
                  f"{_fmt(pr['session_rss_mb_5s_after_run'].get('peak_mb'), 0)} MB)")
            rs = pr.get("replay_summary") or {}
            print(f"  replay: {rs.get('sent')} sent, {rs.get('resent')} resent (resend timeout 1 s, window 64), "
                  f"ack latency p50 {rs.get('latency_ms_p50')} / p99 {rs.get('latency_ms_p99')} ms")
            print(f"  engine total p50 {_fmt(el.get('p50'))} / p99 {_fmt(el.get('p99'))} ms (last {el.get('n')}); "
                  f"received -> audio scheduled (timestamps, includes queueing at max speed) p50 "
                  f"{_fmt(pr['received_to_audio_scheduled_ms']['p50'])} / p99 {_fmt(pr['received_to_audio_scheduled_ms']['p99'])} ms")
    jk = res.get("jack")
    if jk:
        if "error" in jk:
            print(f"\n4. JACK: {jk['error']}")
        else:
            print(f"\n4. switch timing on JACK dummy ({JACK_RATE} Hz, {JACK_PERIOD}-frame buffer = {BUFFER_MS:.2f} ms), "
                  f"{jk['volumes']} volumes at TR {jk['seconds'] / max(jk['volumes'], 1):.1f} s, isolated audio process:")
            print(f"  {jk['switches_executed']}/{jk['switches_scheduled']} switches executed; max |frame - "
                  f"scheduled_frame| {jk['max_abs_frame_error']}; max |executed time - computed time| "
                  f"{_fmt(jk['max_abs_time_error_ms'], 3)} ms ({_fmt(jk['max_abs_time_error_buffers'], 2)} buffers), "
                  f"median {_fmt(jk['time_error_ms']['p50'], 3)} ms; without an underrun in between "
                  f"{_fmt(jk['max_abs_time_error_ms_no_underrun_between'], 3)} ms "
                  f"({jk['switches_with_underrun_between']} switches had one); without one in between or in the "
                  f"clock fit's {FIT_CALLBACKS} callbacks before scheduling "
                  f"{_fmt(jk['max_abs_time_error_ms_no_underrun_in_fit_window_or_between'], 3)} ms "
                  f"({jk['switches_with_underrun_in_fit_window_or_between']} had one); all {jk['commands_executed']} "
                  f"commands incl. the final fade-out: {_fmt(jk['max_abs_time_error_ms_all_commands'], 3)} ms")
            ref = jk.get("reference_jack_metro") or {}
            x = jk["jackd_xruns"]
            print(f"  underruns {jk['underruns']}, late commands {jk['late_commands']}, clock slip "
                  f"{_fmt(jk['clock_slip_ms'], 1)} ms; jackd logged {x['driver_late']} late timer wake-ups, "
                  f"{x['not_scheduled']} unscheduled and {x['unfinished']} unfinished client cycles; jack_metro alone "
                  f"{ref.get('seconds', 0):.0f} s before: {ref.get('driver_late', 0) + ref.get('not_scheduled', 0) + ref.get('unfinished', 0)} xruns")
            print(f"  per-TR latency TR-paced with the device (ms): " + ", ".join(
                f"{k} {_fmt(jk['latency_ms'][k]['p50'])}/{_fmt(jk['latency_ms'][k]['p99'])}" for k in STAGES)
                  + " (p50/p99)")
            w = jk["latency_ms_switch_trs"]
            print(f"  TRs that scheduled a switch (n={w['total']['n']}): audio_scheduled p50 "
                  f"{_fmt(w['audio_scheduled']['p50'])} / max {_fmt(w['audio_scheduled']['max'])} ms (clips are "
                  f"staged in the audio process by the loader; a switch is one round trip; the call alone p50 "
                  f"{_fmt(jk['schedule_switch_call_ms']['p50'])} / max {_fmt(jk['schedule_switch_call_ms']['max'])}), "
                  f"total max {_fmt(w['total']['max'])} ms")
            if jk.get("pieces"):
                print(f"  generation: {jk['pieces']} (switch_waits: TRs a switch waited for its piece; "
                      f"sync_renders: segments the session rendered itself)")
    print("\ngoals:")
    for g in res["goals"]:
        fig = g.get("figure_ms", g.get("figure_mb"))
        unit = " ms" if "figure_ms" in g else " MB"
        print(f"  {'MET   ' if g['met'] else 'MISSED'} {g['goal']}: {_fmt(fig, 2)}{unit}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 runs, a 120-volume replay, 30 s on JACK")
    p.add_argument("--runs", type=int, default=None, help="runs of 410 TRs in process (default 10, 2 with --quick)")
    p.add_argument("--run-length", type=int, default=sd.RUN_LENGTH)
    p.add_argument("--unique", type=int, default=60, help="distinct volumes generated (played back and forth)")
    p.add_argument("--library-clips", type=int, default=24)
    p.add_argument("--proc-volumes", type=int, default=None, help="volumes replayed through the real processes "
                   "(default 410, 120 with --quick)")
    p.add_argument("--jack-seconds", type=float, default=None, help="seconds on JACK (default 60, 20 with --quick)")
    p.add_argument("--jack-tr", type=float, default=1.0)
    p.add_argument("--no-inprocess", action="store_true")
    p.add_argument("--no-procs", action="store_true")
    p.add_argument("--no-jack", action="store_true")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="limit BLAS threads in the in-process part (default: leave them, as b2m session does)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default="retrieval", choices=["retrieval", "generation"],
                   help="the session's --mode (the bench library is generated, so both work); generation writes "
                        "session[-quick]-generation.json")
    args = p.parse_args(argv)
    n_runs = args.runs or (2 if args.quick else 10)
    proc_volumes = args.proc_volumes or (120 if args.quick else sd.RUN_LENGTH)
    jack_seconds = args.jack_seconds or (30.0 if args.quick else 60.0)
    t_start = time.perf_counter()
    res: dict = {"machine": machine_info(), "sources": source_digest(SOURCES), "quick": args.quick, "mode": args.mode,
                 "loadavg_start": list(os.getloadavg()),
                 "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                "MKL_NUM_THREADS")},
                 "decoder_note": "random linear decoder coefficients (timing only); bias = library mean embedding"}
    try:
        import rtspm

        res["rtspm_version"] = rtspm.__version__
    except ImportError:
        res["rtspm_version"] = None
    t = time.perf_counter()
    vols = sd.volumes(args.unique, args.seed)
    lib_dir = sd.library(args.library_clips, args.seed)
    bundle_dir = sd.bundle(vols, lib_dir, args.seed)
    res["setup_s"] = time.perf_counter() - t
    res["data"] = vols.info
    res["bundle"] = bundle_dir
    res["library"] = lib_dir
    res["embedding_dim"] = 200
    res["library_clips"] = args.library_clips
    tmp = tempfile.mkdtemp(prefix="b2m-bench-session-")
    try:
        if not args.no_inprocess:
            _log(f"in process: {n_runs} runs x {args.run_length} TRs back to back...")
            idir = os.path.join(tmp, "inproc")
            os.makedirs(idir)
            res["inprocess"] = inprocess(vols, bundle_dir, lib_dir, n_runs=n_runs, run_len=args.run_length,
                                         tmp=idir, anchor_every=10, rtspm_every=40 if args.quick else 100,
                                         blas_threads=args.blas_threads, mode=args.mode)
            res["embedding_dim"] = res["inprocess"]["embedding_dim"]
            res["library_clips"] = res["inprocess"]["library_clips"]
        if not args.no_jack:
            _log(f"JACK: {jack_seconds:.0f} s at TR {args.jack_tr} s...")
            jdir = os.path.join(tmp, "jack")
            os.makedirs(jdir)
            try:
                res["jack"] = jack_switches(vols, bundle_dir, lib_dir, seconds=jack_seconds, tr_s=args.jack_tr,
                                            tmp=jdir, ref_seconds=5.0, mode=args.mode)
            except Exception as e:  # report, never hide
                res["jack"] = {"error": f"{type(e).__name__}: {e}"}
        if not args.no_procs:
            _log(f"real processes: b2m session + b2m scanner replay --speed max, {proc_volumes} volumes...")
            pdir = os.path.join(tmp, "procs")
            os.makedirs(pdir)
            try:
                res["processes"] = processes(vols, bundle_dir, lib_dir, n_volumes=proc_volumes, tmp=pdir,
                                             mode=args.mode)
            except Exception as e:
                res["processes"] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["goals"] = goals(res)
    res["total_s"] = time.perf_counter() - t_start
    res["loadavg_end"] = list(os.getloadavg())
    print_report(res)
    name = "session-quick" if args.quick else "session"
    path = write_json(name if args.mode == "retrieval" else f"{name}-{args.mode}", res)
    _log(f"wrote {path} ({res['total_s']:.0f} s)")
    ip, pr, jk = res.get("inprocess") or {}, res.get("processes") or {}, res.get("jack") or {}
    line = {
        "latency_ms": {k: {"p50": v["p50"], "p99": v["p99"]} for k, v in ip.get("latency_ms", {}).items()},
        "throughput_inprocess_trs_per_s": ip.get("throughput_trs_per_s"),
        "throughput_processes_trs_per_s": pr.get("throughput_trs_per_s"),
        "rss_mb_400": ip.get("rss_mb_at_400"), "rss_mb_4000": ip.get("rss_mb_at_4000"),
        "rss_mb_end": ip.get("rss_mb_at_end"), "end_trs": ip.get("end_trs"),
        "switch_max_abs_time_error_ms": jk.get("max_abs_time_error_ms"),
        "switch_max_abs_frame_error": jk.get("max_abs_frame_error"), "underruns": jk.get("underruns"),
        "goals_met": {g["goal"]: g["met"] for g in res["goals"]}, "quick": args.quick,
        "total_s": res["total_s"], "loadavg_1min_start_end": [res["loadavg_start"][0], res["loadavg_end"][0]],
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
