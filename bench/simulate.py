"""Benchmark ``b2m simulate``: time and peak memory per simulated run, for each grid preset.

Run from the repository root::

    .venv/bin/python bench/simulate.py                 # tiny, small and full
    .venv/bin/python bench/simulate.py --grids tiny small

Each preset simulates one participant's Training run-01 (410 volumes, typical
motion, tSNR 40) through :func:`offline_training.simulate.simulate_dataset`
in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own.
The stand-in stimuli are generated once beforehand and copied into each
dataset (``stimuli_from``), so the figures are the participant's cost: the
stimulus features of the run, the ground truth, the per-volume image
formation and the streaming of the gzipped NIfTI. Stimulus generation is
timed separately, per track.

Writes ``bench/results/simulate.json`` and prints a table. The machine may be
shared with other jobs: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRIDS = ("tiny", "small", "full")


def _worker(grid: str, out: str, stimuli: str) -> dict:
    sys.path.insert(0, REPO)
    from offline_training.simulate import GRID_PRESETS, SimulationConfig, simulate_dataset

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stamps: dict[str, list[float]] = {}

    def progress(stage, done, total):
        stamps.setdefault(stage, []).append(time.perf_counter())

    t0 = time.perf_counter()
    result = simulate_dataset(out, SimulationConfig(grid=grid, train_runs=1, test_runs=0, subjects=1),
                              stimuli_from=stimuli, progress=progress)
    wall = time.perf_counter() - t0
    vol = stamps.get("volumes", [])
    per_volume_ms = [(b - a) * 1000 for a, b in zip(vol[:-1], vol[1:])]
    feat_end = stamps["features"][-1]
    bold = os.path.join(out, result.runs[0].bold)
    return {
        "grid": grid,
        "shape": list(GRID_PRESETS[grid][0]),
        "n_volumes": result.runs[0].n_volumes,
        "wall_s": wall,
        "features_s": feat_end - stamps["stimuli"][-1] if "stimuli" in stamps else feat_end - t0,
        "volumes_s": vol[-1] - feat_end if vol else None,
        "per_volume_ms": summarize(per_volume_ms),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": rss0 / 1024,
        "bold_mb": os.path.getsize(bold) / 2**20,
        "n_responsive_voxels": result.n_responsive["001"],
        "fd_mean_mm": result.runs[0].fd_mean_mm,
    }


def _stimuli(folder: str) -> dict:
    sys.path.insert(0, REPO)
    from offline_training.bids import read_events
    from offline_training.simulate import default_metadata_dir, write_stimuli
    from offline_training.simulate.stimulus import stimulus_names

    events = read_events(default_metadata_dir() / "sub-001" / "func" / "sub-001_task-Training_run-01_events.tsv")
    names = stimulus_names(events)
    stamps = [time.perf_counter()]
    write_stimuli(names, folder, progress=lambda d, t: stamps.append(time.perf_counter()))
    per = [(b - a) * 1000 for a, b in zip(stamps[:-1], stamps[1:])]
    return {"n_tracks": len(names), "per_track_ms": summarize(per)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", nargs="+", choices=GRIDS, default=list(GRIDS))
    ap.add_argument("--worker", nargs=3, metavar=("GRID", "OUT", "STIMULI"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return 0
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="b2m-bench-sim-") as tmp:
        stim_dir = os.path.join(tmp, "stimuli")
        stim = _stimuli(stim_dir)
        rows = []
        for grid in args.grids:
            out = os.path.join(tmp, f"ds-{grid}")
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", grid, out, stim_dir],
                               capture_output=True, text=True, cwd=REPO)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    payload = {"machine": machine_info(), "load_average_start": load0, "load_average_end": os.getloadavg(),
               "source": source_digest(["offline_training/simulate/dataset.py", "offline_training/simulate/noise.py",
                                        "offline_training/simulate/response.py", "music/features.py"]),
               "what": "one Training run (410 volumes) of one participant per grid preset, typical motion, "
                       "tSNR 40, stimuli copied from a cache",
               "stimuli": stim, "runs": rows}
    path = write_json("simulate", payload)
    print(f"stand-in stimuli: {stim['n_tracks']} tracks, median {stim['per_track_ms']['p50']:.0f} ms per track")
    print(f"{'grid':<6} {'shape':<12} {'run s':>7} {'features s':>10} {'volumes s':>9} {'ms/volume p50':>13} "
          f"{'p99':>7} {'peak RSS MB':>11} {'BOLD MB':>8}")
    for r in rows:
        pv = r["per_volume_ms"]
        print(f"{r['grid']:<6} {'x'.join(map(str, r['shape'])):<12} {r['wall_s']:7.1f} {r['features_s']:10.1f} "
              f"{r['volumes_s']:9.1f} {pv['p50']:13.1f} {pv['p99']:7.1f} {r['peak_rss_mb']:11.0f} {r['bold_mb']:8.1f}")
    print(f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
