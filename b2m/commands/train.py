"""``b2m train DS --subject 001 --out BUNDLE``: fit, evaluate and export a decoder."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace

from realtime.preprocessing.pipeline import PreprocessConfig

from ..console import stage_progress, stderr_console

# the preprocessing defaults are PreprocessConfig's (as TrainConfig's are): one place decides what a bundle deploys
_PRE = PreprocessConfig()


def _voxels(text: str) -> int:
    """``--voxels N``: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < 1:
        raise argparse.ArgumentTypeError(f"expected how many voxels to keep, a whole number >= 1 (e.g. 500); "
                                         f"got {text!r}")
    return n


def _delays(text: str) -> tuple[int, ...]:
    """``--delays 2,3,4``: distinct whole numbers of TRs >= 0, comma-separated."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        bad = next(p for p in parts if not p.isdigit())
        raise argparse.ArgumentTypeError(f"expected the hemodynamic delays as whole numbers of TRs >= 0, "
                                         f"comma-separated (e.g. 2,3,4); {bad!r} in {text!r} is not one")
    delays = tuple(int(p) for p in parts)
    if len(set(delays)) != len(delays):
        raise argparse.ArgumentTypeError(f"expected distinct delays (e.g. 2,3,4); {text!r} repeats one")
    return delays


def _alphas(text: str) -> tuple[float, ...]:
    """``--alphas MIN:MAX:N``: N log-spaced ridge penalties from MIN to MAX (0 < MIN <= MAX, N >= 1)."""
    import numpy as np

    form = "MIN:MAX:N, N ridge penalties log-spaced from MIN to MAX (e.g. 1e-2:1e7:19)"
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected {form}; got {text!r} ({len(parts)} part(s))")
    try:
        lo, hi = float(parts[0]), float(parts[1])
        n = int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {form}, MIN and MAX numbers and N a whole number; "
                                         f"got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi) or n < 1 or (n == 1 and lo != hi):
        raise argparse.ArgumentTypeError(f"expected {form}, with 0 < MIN <= MAX and N >= 1 (N = 1 needs "
                                         f"MIN = MAX); got {text!r}")
    return tuple(float(a) for a in np.logspace(np.log10(lo), np.log10(hi), n))


def _nifti(text: str) -> str:
    """``--roi-mask``/``--parcellation``: a NIfTI file name (the training checks the file, before any long work)."""
    if not text.endswith((".nii", ".nii.gz")):
        raise argparse.ArgumentTypeError(f"{text}: expected a NIfTI image (.nii or .nii.gz) on the subject's "
                                         "BOLD grid")
    return text


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a decoder on a ds003720-style BIDS dataset and export a bundle",
                       description="Embed the stimuli, preprocess every run with the realtime code, select voxels "
                                   "and fit a per-dimension ridge decoder with leave-one-run-out CV over the "
                                   "Training runs, evaluate on the Test runs, and write BUNDLE.")
    p.add_argument("dataset", help="BIDS dataset root (ds003720 layout)")
    p.add_argument("--subject", default="001",
                   help="subject label (default 001); several as 001,002,003 or 'all': each bundle goes to "
                        "OUT/sub-XXX and the group summary (b2m group) to OUT/group.html")
    p.add_argument("--out", required=True, help="bundle folder (with several subjects, their parent folder)")
    p.add_argument("--embedder", default="musicnn-msd")
    delays = ",".join(map(str, _PRE.delays))
    p.add_argument("--delays", type=_delays, default=delays,
                   help=f"hemodynamic delays in TRs, comma-separated (default {delays})")
    p.add_argument("--voxels", type=_voxels, default=500,
                   help="voxels kept by CV encoding performance within the Training runs (default 500)")
    p.add_argument("--select-by", choices=["cv", "within-genre"], default="cv",
                   help="cv: the voxels with the best CV R^2 of the encoding model; within-genre: of the "
                        "3x --voxels best by R^2, those whose held-out prediction tracks them best among "
                        "presentations of one genre (default cv)")
    p.add_argument("--target", choices=["clip", "window"], default="clip", help="per-clip or per-TR window targets")
    p.add_argument("--fit-on", choices=["clip", "tr"], default="clip",
                   help="fit the decoder on one row per presentation (the mean of its TR inputs; default) or "
                        "on every TR (needed for --target window)")
    p.add_argument("--no-scale-calibration", action="store_true",
                   help="keep ridge's shrunken deviation from the mean embedding instead of rescaling it by "
                        "the factor that identifies held-out Training presentations best")
    p.add_argument("--no-readout-whitening", action="store_true",
                   help="read the ridge prediction as is instead of through the shrunk inverse covariance of "
                        "its held-out errors (offline_training.readout)")
    p.add_argument("--alphas", type=_alphas, default="1e-2:1e7:19", help="alpha grid as MIN:MAX:N (log-spaced)")
    p.add_argument("--preprocessing", choices=["causal", "offline"], default="causal",
                   help="causal (deployable, the only choice for a bundle); see --compare-offline")
    p.add_argument("--no-motion", action="store_true", help="skip motion correction")
    p.add_argument("--poly-order", type=int, default=_PRE.poly_order,
                   help="polynomial drift order of --detrend causal, stored in the bundle "
                        f"(default {_PRE.poly_order}; 0 removes only the running mean)")
    p.add_argument("--detrend", choices=["ema", "causal"], default=_PRE.detrend,
                   help="causal drift removal, stored in the bundle: 'ema' subtracts an exponential moving "
                        "average of the volumes so far with time constant --ema-tau; 'causal' fits "
                        "the polynomial drift of --poly-order to them (incremental GLM, the default before "
                        f"session 13: see offline_training/EXPERIMENTS.md). Default {_PRE.detrend}")
    p.add_argument("--ema-tau", type=float, default=_PRE.ema_tau_s, metavar="SECONDS",
                   help=f"time constant of --detrend ema, seconds (default {_PRE.ema_tau_s:g})")
    p.add_argument("--normalize", choices=["running", "psc"], default=_PRE.normalize,
                   help="per-voxel scaling after the detrend, stored in the bundle: 'running' z-scores with the "
                        "mean and s.d. of the volumes so far; 'psc' is the percent change of the EMA "
                        "baseline (needs --detrend ema; see offline_training/EXPERIMENTS.md, sessions 14-15). "
                        f"Default {_PRE.normalize}")
    p.add_argument("--compare-offline", action="store_true",
                   help="also fit and evaluate with non-causal preprocessing (whole-run detrend and z-score) "
                        "for comparison; reuses the motion-corrected runs, so it costs one more fit, not "
                        "another pass over the images (default off)")
    p.add_argument("--no-preproc-cache", action="store_true",
                   help="do not read or write the motion-corrected runs under DS/derivatives/b2m/preproc/ "
                        "(cached by file, mask, reference and motion config)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: on a 2-core machine shared with other work a second OpenBLAS "
                        "thread made training slower, 94 s against 59 s; 0 leaves BLAS's own default)")
    p.add_argument("--roi-mask", metavar="NIFTI", type=_nifti, default=None,
                   help="only voxels inside this mask (non-zero, on the BOLD grid) are candidates for selection")
    p.add_argument("--parcellation", metavar="NIFTI", type=_nifti, default=None,
                   help="integer region labels on the BOLD grid (0 = none), e.g. a Destrieux atlas in subject space")
    p.add_argument("--top-regions", type=int, default=0, metavar="N",
                   help="with --parcellation: keep every voxel of the N regions whose voxels have the best mean CV "
                        "encoding score in the Training runs (Brain2Music kept 6 Destrieux regions); replaces --voxels")
    p.add_argument("--stimuli", default=None, help="stimulus folder (default DS/stimuli)")
    p.add_argument("--allow-shared-tracks", action="store_true",
                   help="train even if a track is heard in both Training and Test runs (refused by default: Test "
                        "identification would reward recognising the recording); metrics.json lists them")
    p.add_argument("--keep-run-openings", action="store_true",
                   help="also train on and score each run's opening repeat: ds003720 opens every run with an "
                        "excerpt presented again elsewhere (the previous run's last, or its own), played while "
                        "the scanner and the causal filters warm up; dropped by default, so every Test clip "
                        "averages its 4 repeats, as in the paper")
    p.add_argument("--cache", default=None, help="embedding cache (default DS/derivatives/b2m/embeddings)")
    p.set_defaults(func=run)


def run(args) -> int:
    from offline_training.train import TrainConfig

    cfg = TrainConfig(subject=args.subject, embedder=args.embedder,
                      delays=args.delays, n_voxels=args.voxels,
                      select_by=args.select_by,
                      target=args.target, alphas=args.alphas,
                      motion=not args.no_motion, detrend=args.detrend, poly_order=args.poly_order,
                      ema_tau_s=args.ema_tau, normalize=args.normalize, compare_offline=args.compare_offline,
                      preproc_cache=not args.no_preproc_cache, fit_on=args.fit_on,
                      calibrate_scale=not args.no_scale_calibration,
                      whiten_readout=not args.no_readout_whitening, threads=args.threads or None,
                      stimuli=args.stimuli, cache=args.cache, roi_mask=args.roi_mask,
                      parcellation=args.parcellation, top_regions=args.top_regions,
                      allow_shared_tracks=args.allow_shared_tracks,
                      drop_opening_repeat=not args.keep_run_openings)
    if bool(args.parcellation) != bool(args.top_regions):
        stderr_console().print("[red]error:[/red] --parcellation and --top-regions go together: give the "
                                   "atlas and how many of its regions to keep")
        return 2
    if args.top_regions and args.select_by != "cv":
        stderr_console().print("[red]error:[/red] --select-by ranks single voxels and --top-regions keeps whole "
                               "regions: give one of them")
        return 2
    if not args.ema_tau > 0:
        stderr_console().print(f"[red]error:[/red] --ema-tau is the EMA high-pass time constant in seconds and "
                               f"must be positive; got {args.ema_tau:g}")
        return 2
    if args.normalize == "psc" and args.detrend != "ema":
        stderr_console().print("[red]error:[/red] --normalize psc is the percent change of the EMA baseline; "
                               f"use it with --detrend ema, not --detrend {args.detrend}")
        return 2
    if args.preprocessing == "offline":
        stderr_console().print("[red]error:[/red] a bundle for the live session must use causal "
                                   "preprocessing; add --compare-offline to report offline figures alongside")
        return 2
    subjects = _subjects(args.dataset, args.subject)
    if "," in args.subject or args.subject.strip().lower() == "all":  # a list: bundles under OUT/sub-XXX
        return _train_group(args, cfg, subjects)
    cfg = replace(cfg, subject=subjects[0])
    m = _train_one(args.dataset, args.out, cfg)
    print(json.dumps(_headline(m, args.out)), file=sys.stdout)
    return 0


def _subjects(dataset: str, spec: str) -> list[str]:
    """``--subject``: one label, a comma-separated list, or ``all`` (every ``sub-*`` of the dataset)."""
    from offline_training.bids import subject_label, find_subjects

    if spec.strip().lower() == "all":
        found = find_subjects(dataset)
        if not found:
            raise ValueError(f"{dataset}: no sub-XXX folder; is this a BIDS dataset root?")
        return found
    labels = [subject_label(s.strip()) for s in spec.split(",") if s.strip()]
    if not labels:
        raise ValueError(f"--subject {spec!r}: give a label such as 001, a list 001,002 or 'all'")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--subject {spec!r} names a subject twice")
    return labels


def _train_group(args, cfg, subjects: list[str]) -> int:
    """Train every subject into OUT/sub-XXX, then summarise them; a failed subject does not stop the others."""
    import os

    from offline_training.group import format_group, group_summary, read_subject, write_group_report

    console = stderr_console()
    done, failed = [], []
    for i, sub in enumerate(subjects, 1):
        out = os.path.join(args.out, f"sub-{sub}")
        console.print(f"[bold]subject {sub}[/bold] ({i} of {len(subjects)}) -> {out}", highlight=False)
        try:
            m = _train_one(args.dataset, out, replace(cfg, subject=sub))
        except Exception as e:  # one subject's bad file (or a bug it hits) must not cost the others
            console.print(f"[red]subject {sub} failed:[/red] {e if isinstance(e, (ValueError, OSError)) else repr(e)}",
                          highlight=False)
            if getattr(args, "verbose", 0):
                console.print_exception()
            failed.append(sub)
            continue
        print(json.dumps(_headline(m, out)), file=sys.stdout, flush=True)
        done.append(out)
    if done:
        summary = group_summary([read_subject(b) for b in done])
        path = write_group_report(args.out, summary)
        print(format_group(summary), file=sys.stdout)
        console.print(f"group report: {path}", highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} of {len(subjects)} subject(s) failed:[/red] {', '.join(failed)}; "
                      "the group summary covers the others", highlight=False)
        return 1
    return 0


def _train_one(dataset: str, out: str, cfg) -> dict:
    from offline_training.train import train

    console = stderr_console()
    with stage_progress(console, "train") as progress:
        m = train(dataset, out, cfg, progress)
    edge = m["causal"]["alphas"]
    if edge["at_min"] or edge["at_max"]:  # the CV optimum may lie outside the grid
        console.print(f"[yellow]warning:[/yellow] {edge['at_min']} of {edge['n_targets']} embedding dimensions chose "
                      f"the smallest alpha ({edge['alpha_min']:g}) and {edge['at_max']} the largest "
                      f"({edge['alpha_max']:g}); widen --alphas past that edge", highlight=False)
    if not math.isfinite(m["within_genre_identification_accuracy"]):
        console.print("[yellow]warning:[/yellow] within-genre identification is undefined (null): no genre has two "
                      "Test excerpts, so no clip has a foil of its own genre; the Test runs of ds003720 have six "
                      "per genre", highlight=False)
    return m


def _round(v, digits: int):
    """``v`` rounded; None for None or NaN (JSON has no NaN: the line must parse as strict JSON)."""
    return None if v is None or not math.isfinite(v) else round(v, digits)


def _headline(m: dict, out: str) -> dict:
    """The figures ``b2m train`` prints (one JSON line per subject)."""
    c = m["identification_accuracy_ci95"]
    headline = {
        "identification_accuracy": round(m["identification_accuracy"], 4),
        "identification_accuracy_ci95": [round(c[0], 4), round(c[1], 4)],
        "identification_accuracy_centred": round(m["identification_accuracy_centred"], 4),
        # undefined (null, with a warning) when no genre has two Test excerpts: no foil of the same genre
        "within_genre_identification_accuracy": _round(m["within_genre_identification_accuracy"], 4),
        "within_genre_identification_accuracy_ci95": [_round(v, 4) for v in
                                                      m["within_genre_identification_accuracy_ci95"]],
        "identification_accuracy_p": m["identification_accuracy_p"],
        "within_genre_identification_accuracy_p": _round(m["within_genre_identification_accuracy_p"], 12),
        "genre_prior_identification_accuracy": round(m["genre_prior"]["identification_accuracy"], 4),
        # what the decoder adds to the genre-only baseline on the same clips (paired; raw and centred)
        "beyond_genre_prior": {k: {"difference": _round(v["difference"], 4), "ci95": [_round(x, 4) for x in v["ci95"]],
                                   "p": _round(v["p"], 6)}
                               for k, v in (m.get("beyond_genre_prior") or {}).items()},
        "offline_identification_accuracy": round(m["offline"]["identification_accuracy"], 4) if "offline" in m else None,
        "deviation_scale": m["causal"]["deviation_scale"],
        # the Training runs' tSNR of the decoder's voxels: what a live run is compared with
        "training_tsnr": _round(((m.get("qc") or {}).get("tsnr") or {}).get("median"), 1),
        "subject": m["config"]["subject"], "bundle": out, "wall_s": round(m["wall_s"], 1), "peak_rss_mb": round(m["peak_rss_mb"]),
        "timings_s": {k: round(v, 1) for k, v in m["timings_s"].items()},
    }
    return headline
