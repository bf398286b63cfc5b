"""How identification accuracy grows with the number of Training runs, on one simulated subject.

Run from the repository root, on a dataset written by ``b2m simulate``::

    .venv/bin/python bench/learning_curve.py DS --subject 001
    .venv/bin/python bench/learning_curve.py DS --runs 4,8,12 --draws 2 --name lc-quick

A reviewer's question, and a site's: would more Training runs lift
within-genre identification, and by how much? The subject is prepared once as
``b2m train`` does it (stimulus embeddings, motion correction, causal detrend
and normalisation). Then, for each run count ``n`` in ``--runs``, ``--draws``
random subsets of ``n`` Training runs (one subset when ``n`` is all of them)
each go through ``b2m train``'s steps *inside that subset only*: voxel
selection by CV encoding score, per-dimension alphas by leave-one-run-out CV,
the readout, and are scored on all the Test runs (4 repeats averaged,
per-clip targets). The oracle that knows which voxels respond
(``bench/train.py``'s ``oracle.true_voxels``) is fit on the same subsets, so
selection error and weight error can be told apart.

Extrapolation. For each decoder and metric, ``acc(n) = c - d / n`` is fit by
least squares to the mean over draws at each ``n``; ``c`` is the accuracy
that unlimited Training runs of this noise level would approach, and
``n_for_goal`` where the fit crosses the goal (0.6 within-genre). It is a
two-parameter extrapolation from at most 12 runs, so its 95 % CI resamples
the Test clips (the same resample for every subset). Writes
``bench/results/NAME.json`` with the machine's details and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from _machine import machine_info, source_digest, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

METRICS = (("raw", "identification_accuracy", "identification"),
           ("centred", "identification_accuracy_centred", "identification_centred"),
           ("within_genre", "within_genre_identification_accuracy", "within_genre"))
GOALS = {"raw": 0.85, "within_genre": 0.6}


def subsets(n_runs: int, counts: list[int], draws: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Distinct random subsets of ``range(n_runs)``: ``draws`` of each size in ``counts`` (one of size ``n_runs``)."""
    from math import comb

    out = []
    for n in counts:
        if not 2 <= n <= n_runs:
            raise ValueError(f"--runs: each count must lie in [2, {n_runs}] (leave-one-run-out CV needs 2); got {n}")
        seen: set = set()
        want = min(draws, comb(n_runs, n))
        while len(seen) < want:
            seen.add(tuple(sorted(rng.choice(n_runs, n, replace=False).tolist())))
        out += sorted(seen)
    return out


def fit_inverse(n: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """Least-squares ``c, d`` of ``acc = c - d / n`` (``n``, ``acc`` of shape (k,), k >= 2 distinct ``n``)."""
    a = np.column_stack([np.ones(len(n)), -1.0 / np.asarray(n, float)])
    (c, d), *_ = np.linalg.lstsq(a, np.asarray(acc, float), rcond=None)
    return float(c), float(d)


def runs_for(c: float, d: float, goal: float) -> float | None:
    """Runs at which ``c - d / n`` reaches ``goal``: ``d / (c - goal)``; None if it never does (or falls)."""
    if d <= 0 or c <= goal:
        return None
    return d / (c - goal)


def goal_verdict(n_goal: float | None, d: float, fewest: int) -> str:
    """Words for :func:`runs_for`'s answer; ``fewest`` is the smallest run count measured."""
    if n_goal is None:
        return "not reached by the fit" if d > 0 else "the fit does not grow with runs"
    if n_goal <= fewest:  # below the measured range: nothing extrapolated
        return f"the fit is above it from the fewest runs measured ({fewest})"
    return f"the fit reaches it at {n_goal:.1f} runs"


def extrapolate(counts: np.ndarray, per_clip: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """The ``c - d / n`` fit on the per-count means, with clip-bootstrap 95 % CIs.

    Parameters
    ----------
    counts : ndarray of shape (n_fits,)
        Training runs of each fit.
    per_clip : ndarray of shape (n_fits, n_clips)
        One metric's per-clip score of each fit (NaN where a clip has none).
    """
    levels = np.unique(counts)

    def fit(cols):
        means = np.array([np.nanmean(per_clip[counts == k][:, cols]) for k in levels])
        return fit_inverse(levels, means)

    every = np.arange(per_clip.shape[1])
    c, d = fit(every)
    rng = np.random.default_rng(seed)
    boot = np.array([fit(rng.integers(0, len(every), len(every))) for _ in range(n_boot)])
    return {"c": c, "d": d, "c_ci95": np.percentile(boot[:, 0], [2.5, 97.5]).tolist(),
            "levels": levels.tolist(), "boot": boot}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="a dataset written by b2m simulate")
    ap.add_argument("--subject", default="001")
    ap.add_argument("--cache", default=None, help="stimulus embedding cache (default DS/derivatives/b2m/embeddings)")
    ap.add_argument("--runs", default="3,6,9,12", help="Training run counts, comma-separated (default 3,6,9,12)")
    ap.add_argument("--draws", type=int, default=3, help="random subsets per run count (default 3)")
    ap.add_argument("--no-oracle", action="store_true", help="skip the true-voxel oracle")
    ap.add_argument("--seed", type=int, default=0, help="subset draws")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (b2m train's default 1; 0: BLAS's own)")
    ap.add_argument("--name", default="learning-curve", help="result file stem (bench/results/NAME.json)")
    args = ap.parse_args()
    try:
        counts = [int(x) for x in args.runs.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--runs must be comma-separated integers, got {args.runs!r}")
    if args.draws < 1:
        ap.error(f"--draws must be >= 1, got {args.draws}")
    from offline_training.train import blas_threads

    with blas_threads(args.threads or None):
        return _run(args, counts)


def _run(args, counts: list[int]) -> int:
    from b2m.console import stage_progress, stderr_console
    from offline_training.decoding import evaluate_decoder, fit_decoder
    from offline_training.simulate import read_simulation_config
    from offline_training.train import TrainConfig, choose_voxels, peak_rss_mb, prepare
    from train import _true_voxels  # bench/train.py: the oracle's voxels

    load0 = os.getloadavg()
    cfg = TrainConfig(subject=args.subject, cache=args.cache)
    timings: dict = {}
    t0 = time.perf_counter()
    prep = prepare(args.dataset, cfg, timings=timings)
    trn, tst, _, _ = prep.runs(cfg, cfg.preprocess())
    timings["prepare_total"] = time.perf_counter() - t0
    try:
        plan = subsets(len(trn), counts, args.draws, np.random.default_rng(args.seed))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    true_pos = None if args.no_oracle else _true_voxels(args.dataset, args.subject, prep.mask)[0]
    targets = prep.targets
    decoders = ["ours"] + ([] if args.no_oracle else ["oracle_true_voxels"])
    fits: list[dict] = []
    per_clip = {d: {m: [] for m, _, _ in METRICS} for d in decoders}

    stage = "subsets (select voxels, fit, score)"
    with stage_progress(stderr_console(), remaining=True) as progress:  # stdout keeps the results
        progress(stage, 0, len(plan))
        for i, runs in enumerate(plan, 1):
            sub = [trn[j] for j in runs]
            t0 = time.perf_counter()
            values = np.concatenate([r.values for r in sub])
            _, sel, _, _, _ = choose_voxels(sub, values, cfg)
            del values
            select_s = time.perf_counter() - t0
            keys, train_emb, genres = targets.clips(sub)
            row = {"runs": [sub_r.files.run for sub_r in sub], "n_runs": len(sub), "select_s": select_s,
                   "n_presentations": len(keys)}
            for name, voxels in (("ours", sel), ("oracle_true_voxels", true_pos)):
                if name not in decoders:
                    continue
                t0 = time.perf_counter()
                dec = fit_decoder(sub, voxels, cfg.delays, cfg.alphas, fit_on=cfg.fit_on)
                fit_s = time.perf_counter() - t0
                m = evaluate_decoder(tst, dec.coef, dec.x_mean, dec.y_mean, voxels, cfg.delays, targets, train_emb,
                                     genres, train_emb.mean(0))
                row[name] = {label: m[key] for label, key, _ in METRICS} | {"fit_s": fit_s}
                for label, _, clip_key in METRICS:
                    per_clip[name][label].append(np.asarray(m["per_clip"][clip_key], dtype=float))
            fits.append(row)
            progress(stage, i, len(plan))

    n_of_fit = np.array([f["n_runs"] for f in fits])
    summary: dict = {}
    for name in decoders:
        summary[name] = {}
        for label, _, _ in METRICS:
            acc = np.array([f[name][label] for f in fits])
            by_n = {int(k): {"mean": float(acc[n_of_fit == k].mean()), "sd": float(acc[n_of_fit == k].std()),
                             "n_fits": int((n_of_fit == k).sum())} for k in np.unique(n_of_fit)}
            entry = {"by_runs": by_n}
            if len(by_n) >= 2:
                ex = extrapolate(n_of_fit, np.stack(per_clip[name][label]))
                boot = ex.pop("boot")
                entry["extrapolation"] = ex
                goal = GOALS.get(label)
                if goal is not None:
                    n_goal = runs_for(ex["c"], ex["d"], goal)
                    reach = [runs_for(c, d, goal) for c, d in boot]
                    entry["goal"] = goal
                    entry["runs_for_goal"] = n_goal
                    # share of clip resamples whose fit reaches the goal at all, however many runs it takes
                    entry["share_of_resamples_reaching_goal"] = float(np.mean([r is not None for r in reach]))
            summary[name][label] = entry

    payload = {"machine": machine_info(), "load_average_start": load0, "load_average_end": os.getloadavg(),
               "source": source_digest(["offline_training/train.py", "offline_training/decoding.py",
                                        "offline_training/ridge.py", "offline_training/readout.py",
                                        "offline_training/encoding.py", "offline_training/evaluate.py"]),
               "what": f"{args.dataset} subject {args.subject}: b2m train's steps on random subsets of the Training "
                       "runs, scored on all Test runs (repeats averaged, per-clip musicnn targets)",
               "dataset": os.path.abspath(args.dataset), "simulation": read_simulation_config(args.dataset),
               "subject": args.subject, "run_counts": counts, "draws": args.draws, "seed": args.seed,
               "timings_s": timings, "fits": fits, "summary": summary, "peak_rss_mb": peak_rss_mb()}
    path = write_json(args.name, payload)

    for name in decoders:
        print(f"{name}: mean over draws (s.d.)")
        print(f"{'runs':>5} {'fits':>5} {'raw':>13} {'centred':>13} {'within-genre':>13}")
        for k, by in summary[name]["raw"]["by_runs"].items():
            cells = [summary[name][label]["by_runs"][k] for label, _, _ in METRICS]
            print(f"{k:5d} {by['n_fits']:5d} " + " ".join(f"{c['mean']:6.3f} ({c['sd']:.3f})" for c in cells))
        for label, _, _ in METRICS:
            ex = summary[name][label].get("extrapolation")
            if ex is None:
                continue
            line = (f"  {label}: c - d/n fit, c = {ex['c']:.3f} [{ex['c_ci95'][0]:.3f}, {ex['c_ci95'][1]:.3f}], "
                    f"d = {ex['d']:.3f}")
            if "goal" in summary[name][label]:
                verdict = goal_verdict(summary[name][label]["runs_for_goal"], ex["d"],
                                       min(summary[name][label]["by_runs"]))
                line += (f"; goal {summary[name][label]['goal']}: {verdict}"
                         + f" ({summary[name][label]['share_of_resamples_reaching_goal']:.0%} of clip resamples "
                           "reach it)")
            print(line)
    print(f"prepare {timings['prepare_total']:.1f} s; peak RSS {payload['peak_rss_mb']:.0f} MB; "
          f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}; written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
