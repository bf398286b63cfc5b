"""``b2m demo``: simulate a participant, train a decoder, and run a live session on a Test run.

Steps (each reuses what an earlier run of the demo left in ``OUT``, if the
same code and settings made it: ``OUT/stamp.json``):

1. **Simulate** a participant (:mod:`offline_training.simulate`): the small
   4 mm grid, ``train_runs`` Training runs and one Test run of ds003720's real
   design (410 volumes, TR 1.5 s, typical head motion, tSNR 40).
2. **Train** the decoder on the Training runs only (:func:`offline_training.train.train`)
   and export the model bundle.
3. **Library**: the excerpts the participant heard (Training and Test), as
   heard (15 s, 2 s fades), embedded with the bundle's embedder.
4. **Live**: the Test run is replayed over a real loopback ZeroMQ socket
   (:func:`realtime.scanner.replay.replay_nifti`) into a receiver that records
   every volume and hands it to the session engine: preprocessing, ONNX
   decoding, feedback policy, music scheduled into ``feedback.wav`` on the
   scanner's clock (or a sound device with ``--realtime``). With ``mode =
   "generation"`` the music is composed live from an atlas of
   ``atlas_points`` generator points (``OUT/atlas``, embedded with the
   bundle's embedder) instead of retrieved from the library.
5. **Check**: the live embeddings against the offline causal decoding of the
   same run (train/deploy parity), the recorded run against the source file
   (bit-exact), and identification of the heard clips from the live decoding.
6. **Report**: ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DemoConfig", "run_demo", "demo_stamp", "check_demo_config"]

log = logging.getLogger("b2m.demo")

#: What a demo leaves in OUT and a rerun reuses.
REUSED = ("dataset", "bundle", "library", "atlas")
#: The project's packages: any change to their files (code, models, ds003720 metadata) can change what the
#: demo makes.
_PACKAGES = ("b2m", "music", "offline_training", "realtime", "protocols")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo does (defaults sized to finish well inside 10 minutes on 2 cores; about 4 here)."""

    out: str = "demo"
    train_runs: int = 4
    test_run: int = 1
    grid: str = "small"
    seed: int = 0
    realtime: bool = False
    audio: str = "default"
    mode: str = "retrieval"
    atlas_points: int = 100


def check_demo_config(cfg: DemoConfig) -> None:
    """Check every setting before the demo writes anything (``b2m demo``'s options are named as such).

    Raises
    ------
    ValueError
        Naming the option (``--train-runs``) or field, what it must be and what came.
    """
    from offline_training.simulate import GRID_PRESETS

    def whole(value, name: str, lo: int, hi: int, why: str = "") -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise ValueError(f"{name} must be a whole number {lo}..{hi}; got {value!r}{why}")

    # leave-one-run-out CV needs 2 Training runs; ds003720 has 12 Training runs and 6 Test runs
    whole(cfg.train_runs, "--train-runs", 2, 12, " (the demo trains with leave-one-run-out CV over at least 2 "
                                                 "Training runs; ds003720 has 12)")
    whole(cfg.test_run, "test_run", 1, 6, " (ds003720's Test runs)")
    whole(cfg.seed, "seed", 0, 2**63 - 1)
    whole(cfg.atlas_points, "atlas_points", 1, 1_000_000)
    if cfg.grid not in GRID_PRESETS:
        raise ValueError(f"grid must be one of {', '.join(map(repr, GRID_PRESETS))}; got {cfg.grid!r}")
    if cfg.mode not in ("retrieval", "generation"):
        raise ValueError(f"--mode must be 'retrieval' or 'generation'; got {cfg.mode!r}")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"{cfg.out}: --out must be a folder (new, or a demo's earlier output); this is a file")


def demo_stamp(cfg: DemoConfig, root: os.PathLike | str | None = None) -> dict:
    """What a demo folder was made with: a digest of the project's files and the settings that shape it.

    ``root`` holds the packages (default: where this one is installed).
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for f in sorted((root / pkg).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return {"project_sha256": h.hexdigest()[:16], "grid": cfg.grid, "train_runs": cfg.train_runs,
            "test_run": cfg.test_run, "seed": cfg.seed}


def _clear_if_stale(cfg: DemoConfig, stamp: dict) -> list[str]:
    """Remove what an earlier demo left in OUT if other code or settings made it; returns what was removed.

    The reuse is for a demo that was interrupted: after an upgrade, a rerun must
    show what the new code does, not the old dataset, bundle and library.
    """
    path = os.path.join(cfg.out, "stamp.json")
    old = None
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
    made = [d for d in REUSED if os.path.isdir(os.path.join(cfg.out, d))]
    if made and old != stamp:
        why = ("no stamp.json" if old is None else
               ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in stamp.items() if old.get(k) != v))
        log.warning("%s: %s was made by other code or settings (%s): making it again", cfg.out, ", ".join(made), why)
        for d in made:
            shutil.rmtree(os.path.join(cfg.out, d))
    else:
        made = []
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stamp, f, indent=2)
    os.replace(tmp, path)
    return made


def _simulate(cfg: DemoConfig, progress) -> str:
    from offline_training.simulate import SimulationConfig, read_simulation_config, simulate_dataset

    ds = os.path.join(cfg.out, "dataset")
    if os.path.isdir(ds):
        try:
            if read_simulation_config(ds) is not None:  # written last: the simulation finished
                return ds
        except ValueError as e:  # unreadable: treated as unfinished
            log.warning("%s; simulating again", e)
        import shutil

        shutil.rmtree(ds)  # an interrupted simulation: start it again
    sim = SimulationConfig(grid=cfg.grid, subjects=1, seed=cfg.seed, train_runs=cfg.train_runs,
                           test_runs=cfg.test_run)
    simulate_dataset(ds, sim, progress=progress)
    return ds


def _train(cfg: DemoConfig, ds: str, progress) -> tuple[str, dict]:
    from offline_training.train import TrainConfig, train

    bundle = os.path.join(cfg.out, "bundle")
    metrics_path = os.path.join(bundle, "metrics.json")
    if os.path.exists(metrics_path) and os.path.exists(os.path.join(bundle, "manifest.json")):
        with open(metrics_path) as f:
            return bundle, json.load(f)
    metrics = train(ds, bundle, TrainConfig(seed=cfg.seed), progress=progress)
    return bundle, metrics


def _test_run(ds: str, cfg: DemoConfig):
    from offline_training.bids import find_runs

    runs = [r for r in find_runs(ds, "001") if r.task == "Test" and r.run == cfg.test_run]
    if not runs:
        raise FileNotFoundError(f"{ds}: no Test run {cfg.test_run} for sub-001")
    return runs[0]


def _targets(ds: str, spec: dict, tr_s: float, progress):
    """Embeddings of every excerpt heard (computed, and cached, by the training step)."""
    from music.embedding import embedder_from_spec
    from offline_training.bids import find_runs, read_events
    from offline_training.targets import embed_stimuli

    events = [ev for r in find_runs(ds, "001") for ev in read_events(r.events)]
    embedder = embedder_from_spec(spec, threads=1)
    targets = embed_stimuli(events, os.path.join(ds, "stimuli"), embedder, tr_s,
                            cache_dir=os.path.join(ds, "derivatives", "b2m", "embeddings"),
                            progress=lambda d, t: progress("stimulus embeddings", d, t))
    return targets, embedder, events


def _library(cfg: DemoConfig, ds: str, targets, embedder, events, progress) -> str:
    """The excerpts heard, as heard, embedded once (the training targets are the same numbers)."""
    from music.library import Unit, build_library
    from offline_training.bids import stimulus_segment
    from offline_training.targets import excerpt_id

    lib = os.path.join(cfg.out, "library")
    if os.path.exists(os.path.join(lib, "manifest.json")):
        return lib
    stimuli = os.path.join(ds, "stimuli")
    seen: dict[str, object] = {}
    for ev in events:
        seen.setdefault(excerpt_id(ev), ev)
    sr = 22050  # embed_stimuli's rate: the same audio the targets were computed on

    def unit(key, ev):
        t = targets[key]
        meta = {"clip_embedding": t.clip, "clip_tags": t.tags}
        return Unit(id=key, source="ds003720-stimuli", genre=ev.genre,
                    produce=lambda ev=ev, meta=meta: [(stimulus_segment(ev, stimuli, sr), sr, 0.0, meta)], label=key)

    units = [unit(k, ev) for k, ev in sorted(seen.items())]
    build_library(lib, units, embedder, progress=lambda d, t, label="": progress("library", d, t))
    return lib


def _atlas(cfg: DemoConfig, embedder, progress) -> str:
    """Generation mode's library: ``atlas_points`` generator points spread over the 10 genres."""
    from music.library import build_library, generated_units

    atlas = os.path.join(cfg.out, "atlas")
    if not os.path.exists(os.path.join(atlas, "manifest.json")):
        build_library(atlas, generated_units(cfg.atlas_points, seed=cfg.seed), embedder,
                      progress=lambda d, t, label="": progress("atlas", d, t))
    return atlas


def _live(cfg: DemoConfig, run, bundle: str, library: str, progress) -> dict:
    from music.library import Library
    from realtime.audio import open_output
    from realtime.decoder import Decoder
    from realtime.receiver import Receiver
    from realtime.scanner.replay import replay_nifti
    from realtime.session import SessionEngine, session_info, write_session_info
    from realtime.session.engine import SessionOptions

    session = os.path.join(cfg.out, "session")
    if os.path.isdir(session):  # a live run is never resumed: it is the thing being demonstrated
        import shutil

        shutil.rmtree(session)
    decoder, lib = Decoder(bundle, threads=1), Library(library)
    wav = os.path.join(cfg.out, "feedback.wav")
    output = open_output(cfg.audio if cfg.realtime else f"wav:{wav}", isolate=cfg.realtime)
    output.start()
    engine = SessionEngine(decoder, lib, output, options=SessionOptions(mode=cfg.mode), record_dir=session)
    # what `b2m session` writes too, so `b2m session replay` and `b2m session export` take the demo's record
    os.makedirs(session, exist_ok=True)
    write_session_info(session, session_info(engine, bundle, library, cfg.audio if cfg.realtime else f"wav:{wav}"))
    results = []

    def on_volume(msg, t_recv):
        results.extend(engine.on_volume(msg, t_recv))
        progress("live session", len(results), msg.n_volumes or len(results))

    stop = threading.Event()
    try:
        with Receiver(session, "tcp://127.0.0.1:*", on_volume=on_volume) as rx:
            t = threading.Thread(target=rx.serve, args=(stop,), kwargs={"poll_ms": 50}, name="b2m-demo-receiver",
                                 daemon=True)
            t.start()
            t0 = time.monotonic()
            rep = replay_nifti(str(run.bold), rx.endpoint, speed=1.0 if cfg.realtime else math.inf,
                               run_id="test-run")
            while len(results) < rep.n_sent and time.monotonic() - t0 < rep.n_sent * 5 + 60:
                time.sleep(0.05)  # the replay returns when every volume is acked; decoding follows the ack
            wall = time.monotonic() - t0
            stop.set()
            t.join()
            rx.wait_exports()
        engine.finish()
    finally:
        output.close()
    return {"results": results, "engine": engine, "replay": rep, "wall_s": wall, "session": session,
            "feedback_wav": None if cfg.realtime else wav, "decoder": decoder, "library": lib}


def _checks(run, live: dict, targets) -> dict:
    import nibabel as nib

    from offline_training import evaluate as ev
    from offline_training.bids import read_events
    from offline_training.targets import drop_opening_repeat, excerpt_id, tr_targets
    from realtime.preprocessing import PreprocessConfig, preprocess_run

    results, decoder = live["results"], live["decoder"]
    m = decoder.manifest
    a = m["arrays"]
    img = nib.load(str(run.bold))
    tr = float(m["tr_s"])
    pcfg = PreprocessConfig.from_dict(m["preprocess"])
    lag = max(pcfg.delays)
    # train/deploy parity: the same run decoded offline with the causal chain the bundle names
    # the volumes as the scanner sent them (native int16, unscaled), read once: slicing a .nii.gz
    # proxy volume by volume decompresses the file from the start every time
    data = np.asanyarray(img.dataobj.get_unscaled())
    pre = preprocess_run(data, img.affine, a["mask"], pcfg, tr_s=tr, reference=a["reference"],
                         norm_mean=a["norm_mean"], norm_std=a["norm_std"])
    offline = decoder.decode_batch(pre.x[lag:])
    live_emb = np.stack([r.embedding for r in results[lag:]])
    parity = float(np.max(np.abs(live_emb - offline)))
    # the recorded run against the file replayed
    exported = nib.load(os.path.join(live["session"], "nifti", "test-run.nii"))
    bit_exact = bool(np.array_equal(data,
                                    np.asanyarray(exported.dataobj.get_unscaled()))
                     and np.array_equal(img.affine, exported.affine))
    # identification of the heard clips from the live decoding (Brain2Music's metric, within this run)
    (events,), _ = drop_opening_repeat([read_events(run.events)], tr)  # scored as the training scores it
    _, event_index, _ = tr_targets(events, img.shape[3], tr, targets, "clip")
    by_clip: dict[str, list] = {}
    for r in results[lag:]:
        j = event_index[r.decoded_index]
        if j >= 0:
            by_clip.setdefault(excerpt_id(events[j]), []).append(r.embedding)
    keys = sorted(by_clip)
    pred = np.stack([np.mean(by_clip[k], 0) for k in keys])
    true = np.stack([targets[k].clip for k in keys])
    genres = [targets[k].genre for k in keys]
    per_clip = ev.identification_per_clip(pred, true)
    # genre over time: what was heard at the decoded moment vs the genre of the clip retrieved
    lib = live["library"]
    timeline = []
    for r in results:
        heard = events[event_index[r.decoded_index]].genre if (r.decoded_index is not None
                                                               and event_index[r.decoded_index] >= 0) else None
        top = lib.clips[lib.index_of(r.topk[0][0])].genre if r.topk else None
        timeline.append({"index": r.index, "decoded_index": r.decoded_index, "heard": heard, "retrieved": top,
                         "playing": lib.clips[lib.index_of(r.clip)].genre if r.clip else None,
                         "action": r.action, "fd_mm": r.fd_mm,
                         "latency_ms": r.latency_ms.get("total")})
    decoded = [t for t in timeline if t["heard"] is not None and t["retrieved"] is not None]
    return {
        "live_identification_accuracy": float(np.mean(per_clip)),
        "live_identification_ci95": ev.identification_bootstrap_ci(pred, true, genres=genres),
        "live_identification_p": ev.identification_permutation_p(pred, true),
        "n_test_clips": len(keys), "test_genres": sorted(set(genres)),
        "live_vs_offline_max_abs_diff": parity,
        "recorded_run_bit_exact": bit_exact,
        "retrieved_genre_agreement": (float(np.mean([t["heard"] == t["retrieved"] for t in decoded]))
                                      if decoded else None),
        "chance_genre_agreement": 0.1,
        "timeline": timeline,
    }


def _json_safe(o):
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def run_demo(cfg: DemoConfig, progress=lambda stage, done, total: None) -> dict:
    """Run every step; returns the summary (also written to ``OUT/summary.json``).

    Every setting is checked first (:func:`check_demo_config`): a bad one writes nothing.
    """
    check_demo_config(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    t0 = time.monotonic()
    _clear_if_stale(cfg, demo_stamp(cfg))
    walls = {}

    def timed(name, fn, *a):
        t = time.monotonic()
        out = fn(*a)
        walls[name] = round(time.monotonic() - t, 1)
        return out

    ds = timed("simulate", _simulate, cfg, progress)
    bundle, metrics = timed("train", _train, cfg, ds, progress)
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    spec = manifest.get("embedder_spec") or {"name": "musicnn-msd"}  # the bundle says how to recreate it
    targets, embedder, events = timed("targets", _targets, ds, spec, float(manifest["tr_s"]), progress)
    library = timed("library", _library, cfg, ds, targets, embedder, events, progress)
    played = timed("atlas", _atlas, cfg, embedder, progress) if cfg.mode == "generation" else library
    run = _test_run(ds, cfg)
    live = timed("live", _live, cfg, run, bundle, played, progress)
    checks = timed("checks", _checks, run, live, targets)
    st = live["engine"].stats()
    total = st["latency_ms"].get("total", {})
    audio = st.get("audio") or {}
    summary = {
        "live_identification_accuracy": checks["live_identification_accuracy"],
        "live_identification_ci95": checks["live_identification_ci95"],
        "live_identification_p": checks["live_identification_p"],
        "live_vs_offline_max_abs_diff": checks["live_vs_offline_max_abs_diff"],
        "latency_ms": {"p50": total.get("p50"), "p99": total.get("p99"),
                       "stages": {k: v for k, v in st["latency_ms"].items() if k != "total"}},
        "audio_underruns": audio.get("underruns"),
        "tsnr": st.get("tsnr"),  # the live run's temporal SNR of the decoder's voxels, and the Training runs'
        # a switch to a clip the loader had not prefetched yet reads it on the spot (counted here); at TR
        # pace the prefetch has time, at --speed max it often has not, and such TRs dominate the p99
        "clip_loads": st.get("clips"),
        "mode": cfg.mode,
        "generator": st.get("pieces"),  # generation mode: segments rendered, pieces begun, ...
        "recorded_run_bit_exact": checks["recorded_run_bit_exact"],
        "retrieved_genre_agreement": checks["retrieved_genre_agreement"],
        "n_test_clips": checks["n_test_clips"],
        "offline_test_metrics": {k: metrics.get(k) for k in ("identification_accuracy",
                                                             "identification_accuracy_ci95",
                                                             "within_genre_identification_accuracy",
                                                             "within_genre_identification_accuracy_p")},
        "counts": st["counts"],
        "volumes_replayed": live["replay"].n_sent,
        "live_wall_s": round(live["wall_s"], 2),
        "throughput_tr_per_s": round(live["replay"].n_sent / live["wall_s"], 1),
        "paths": {"dataset": ds, "bundle": bundle, "library": library, "played_from": played,
                  "session": live["session"],
                  "feedback_wav": live["feedback_wav"], "report": os.path.join(cfg.out, "report.html")},
        "config": cfg.__dict__,
        "step_wall_s": walls,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    from .report import write_report

    write_report(os.path.join(cfg.out, "report.html"), summary, checks["timeline"], live["results"], live["library"])
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(_json_safe(summary), f, indent=2)  # strict JSON: an undefined figure is null, not NaN
    with open(os.path.join(cfg.out, "timeline.json"), "w") as f:
        json.dump(checks["timeline"], f)
    return summary
