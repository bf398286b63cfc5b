"""``b2m simulate``: write a simulated ds003720-style BIDS dataset, then calibrate it.

Exit codes: 0 the dataset was written (and, unless ``--no-calibration``, the
calibration is within its targets); 1 the dataset was written but the
calibration is outside its targets (expected with non-default ``--tsnr``,
``--drift-pct`` or ``--motion``); 2 bad usage or input (raised to ``b2m``'s handler).
"""

from __future__ import annotations

import sys
import time

from offline_training.simulate import (
    GRID_PRESETS,
    MOTION_PRESETS,
    NoiseConfig,
    SimulationConfig,
    calibrate_dataset,
    format_calibration,
    simulate_dataset,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "simulate", help="write a simulated participant's ds003720-style BIDS dataset",
        description="Simulate participants listening to the ds003720 stimuli (procedural GTZAN stand-ins) "
                    "and write a BIDS dataset with ds003720's exact layout, events and sidecars, plus the "
                    "ground truth under derivatives/simulation/. Then fit a ridge encoding model and check "
                    "the test correlations against published music encoding results.")
    p.add_argument("--out", required=True, metavar="DS", help="output folder (must not exist or be empty)")
    p.add_argument("--subjects", type=int, default=1, metavar="N", help="number of participants (default 1)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0); same seed, same bytes")
    p.add_argument("--grid", choices=tuple(GRID_PRESETS), default="full",
                   help="full = 96x96x68 at 2 mm like ds003720 (default); small = 4 mm; tiny = 8 mm (tests)")
    p.add_argument("--train-runs", type=int, default=12, metavar="N",
                   help="simulate Training runs 1..N (default all 12)")
    p.add_argument("--test-runs", type=int, default=6, metavar="M", help="simulate Test runs 1..M (default all 6)")
    p.add_argument("--tsnr", type=float, default=NoiseConfig.tsnr,
                   help=f"median temporal SNR over the brain (default {NoiseConfig.tsnr:g})")
    p.add_argument("--drift-pct", type=float, default=NoiseConfig.drift_pct, metavar="PCT",
                   help=f"s.d. of the slow scanner drift maps, percent (default {NoiseConfig.drift_pct:g}; 0 for "
                        "none). Drift does not scale with --tsnr; the rest of the noise stays the same")
    p.add_argument("--motion", choices=tuple(MOTION_PRESETS), default="typical",
                   help="head motion: none, typical (mean FD ~0.13 mm, a few 0.5-1 mm spikes; default) or bad")
    p.add_argument("--no-calibration", action="store_true", help="skip the encoding-model calibration")
    p.add_argument("--calibration-musicnn", action="store_true",
                   help="also calibrate with musicnn-MSD embeddings of the stimuli (the decoder's space; slow)")
    p.add_argument("--stimuli-from", default=None, metavar="DIR",
                   help="copy stand-in stimuli from this folder (e.g. another simulated dataset's stimuli/) "
                        "instead of generating them again; they do not depend on the seed")
    p.add_argument("--metadata", default=None, metavar="DIR",
                   help="ds003720's real metadata (default $B2M_DS003720, else the CC0 copy shipped in offline_training/simulate/ds003720)")
    p.set_defaults(func=run)


#: SimulationConfig's fields as the command line names them, for its messages.
_OPTIONS = {"train_runs": "--train-runs", "test_runs": "--test-runs", "subjects": "--subjects", "seed": "--seed",
            "grid": "--grid", "motion": "--motion", "tsnr": "--tsnr", "drift_pct": "--drift-pct"}


def _options_named(e: ValueError) -> ValueError:
    """A configuration error with its field names (``train_runs``) as the options that set them (``--train-runs``)."""
    import re

    text = re.sub(r"\b(" + "|".join(_OPTIONS) + r")\b", lambda m: _OPTIONS[m.group(1)], str(e))
    return ValueError(text)


def _check_folders(args) -> None:
    """--stimuli-from and --metadata (or $B2M_DS003720) must be folders: checked before anything is written."""
    import os

    from offline_training.simulate import default_metadata_dir

    if args.stimuli_from is not None and not os.path.isdir(args.stimuli_from):
        raise FileNotFoundError(f"{args.stimuli_from}: folder not found (--stimuli-from); give a folder of stand-in "
                                "WAVs written before, e.g. another simulated dataset's stimuli/, or leave the option "
                                "out to generate them")
    holding = "holding sub-001/func/sub-001_task-*_run-*_{events.tsv,bold.json}"
    if args.metadata is not None:
        if not os.path.isdir(args.metadata):
            raise FileNotFoundError(f"{args.metadata}: folder not found (--metadata); give ds003720's metadata, a "
                                    f"folder {holding}, or leave the option out to use the copy shipped with b2m")
    elif not default_metadata_dir().is_dir():
        env = os.environ.get("B2M_DS003720")
        where = (f"$B2M_DS003720 is set to {env}, which is not a folder" if env else
                 f"the copy shipped with b2m ({default_metadata_dir()}) is missing")
        raise FileNotFoundError(f"ds003720 metadata not found: {where}. Give --metadata DIR (or set $B2M_DS003720), "
                                f"a folder {holding}" + ("; or unset $B2M_DS003720" if env else ""))


def run(args) -> int:
    from ..console import stage_progress, stderr_console

    try:
        noise = NoiseConfig(tsnr=args.tsnr, drift_pct=args.drift_pct)
        config = SimulationConfig(grid=args.grid, subjects=args.subjects, seed=args.seed,
                                  train_runs=args.train_runs, test_runs=args.test_runs, motion=args.motion, noise=noise)
    except ValueError as e:
        raise _options_named(e) from None
    _check_folders(args)
    err = stderr_console()
    labels = {"stimuli": "stand-in stimuli", "features": "stimulus features", "volumes": "BOLD volumes",
              "calibration": "calibration"}
    t0 = time.monotonic()
    with stage_progress(err, labels=labels, width=18, remaining=True) as progress:
        result = simulate_dataset(args.out, config, metadata_dir=args.metadata, stimuli_from=args.stimuli_from,
                                  progress=progress)
        t_sim = time.monotonic() - t0
        calib = None
        if not args.no_calibration:
            models = ("generative", "musicnn") if args.calibration_musicnn else ("generative",)
            calib = calibrate_dataset(result.root, result.subjects, run_stimuli=result.run_stimuli, models=models,
                                      progress=lambda d, t: progress("calibration", d, t))
    out = sys.stdout
    print(f"dataset\t{result.root}", file=out)
    print(f"subjects\t{len(result.subjects)}\truns/subject\t{len(result.runs) // len(result.subjects)}\t"
          f"grid\t{config.grid}\tvolumes/run\t{config.volumes}\tstimuli\t{len(result.stimuli)}", file=out)
    for r in result.runs:
        print(f"sub-{r.subject}\ttask-{r.task}\trun-{r.run:02d}\tFD mean {r.fd_mean_mm:.3f} mm\t"
              f"max {r.fd_max_mm:.2f} mm\tFD>0.5 mm: {r.n_spikes}", file=out)
    print(f"simulated in {t_sim:.1f} s", file=out)
    if calib is not None:
        print(format_calibration(calib), file=out)
        print(f"calibration written to {result.root / 'derivatives' / 'simulation' / 'calibration.json'}", file=out)
        print(f"total {time.monotonic() - t0:.1f} s", file=out)
        return 0 if calib["pass"] else 1
    return 0
