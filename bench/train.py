"""Benchmark ``b2m train``'s decoder against baselines and an oracle, on one simulated subject.

Run from the repository root, on a dataset written by ``b2m simulate``::

    .venv/bin/python bench/train.py /tmp/acc_small2 --subject 001
    .venv/bin/python bench/train.py DS --sklearn       # also time scikit-learn's RidgeCV on the same rows

The subject is prepared once as ``b2m train`` does it (stimulus embeddings,
motion correction, causal detrend and normalisation, both cached), voxels are
selected once by encoding performance inside the Training runs, and then
four decoders are fit on the Training runs and scored on the Test runs (the
4 repeats of each clip averaged, per-clip targets), side by side:

``genre_prior``
    Knows each Test clip's genre and predicts its genre's mean Training
    embedding; no brain data. Within-genre identification is 0.5 by
    construction.
``brain2music_recipe``
    Brain2Music's decoder recipe on the same voxels: one ridge alpha shared by
    all embedding dimensions, chosen by 5-fold CV over randomly assigned TRs
    (not runs), no delay stack (one volume, 3 TRs = 4.5 s after the moment it
    decodes), fit on every TR, no rescaling.
``ours``
    ``b2m train``'s decoder (:func:`offline_training.decoding.fit_decoder`):
    delays 2-4 TRs, one alpha per dimension by leave-one-run-out CV, fit on
    one row per presentation; readout whitener shrinkage and deviation scale
    chosen on held-out Training runs (:mod:`offline_training.readout`).
``ours_plain_readout``
    The same without the whitener (shrinkage 1): the readout's ablation.
``oracle``
    Knows the simulator's true tuning. ``oracle.true_voxels``: our decoder on
    exactly the simulator's responsive voxels (no selection error), on the
    measured data. ``oracle.noise_free``: our decoder trained and tested on the
    noise-free responses the true tuning produces
    (``derivatives/simulation/sub-XXX/*_desc-response.npy``), i.e. the ceiling
    a linear musicnn decoder has with no noise at all.
    ``oracle.clean_train`` / ``oracle.clean_test``: the true voxels with the
    noise removed from the Training runs only / from the Test runs only, to
    show which side the noise costs: each voxel's noise-free response, centred
    per run, times its gain in the measured data (the median over Training
    runs of the per-run least-squares slope of the preprocessed values on the
    noise-free response), so both sides share one scale.

Identification accuracy is raw, centred (mean Training embedding removed) and
within-genre (foils of the same genre), each with a 95 % bootstrap CI over
clips. ``ours_minus_plain_readout`` gives the readout's gain paired over the
same Test clips (mean difference, bootstrap CI, paired permutation p). Fit
time is the decoder fit alone (selection and preprocessing are shared and
timed separately). Writes ``bench/results/train.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np

from _machine import machine_info, source_digest, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _scores(m: dict) -> dict:
    keys = ("identification_accuracy", "identification_accuracy_ci95", "identification_accuracy_centred",
            "within_genre_identification_accuracy", "within_genre_identification_accuracy_ci95")
    return {k: m[k] for k in keys if k in m}


def _paired(a: dict, b: dict, n_resamples: int = 10000) -> dict:
    """Decoder ``a`` minus decoder ``b`` on the same Test clips, per metric.

    ``a`` and ``b`` are :func:`offline_training.decoding.clip_metrics` results,
    whose ``per_clip`` scores (clips in the same order) are compared.
    For raw, centred and within-genre identification: the mean per-clip
    difference, its percentile bootstrap 95 % CI (clips resampled) and a
    two-sided paired permutation p-value (each clip's two values swapped at
    random, :func:`scipy.stats.permutation_test`).
    """
    from scipy.stats import permutation_test

    from offline_training import evaluate as ev

    out = {}
    for name, key in (("raw", "identification"), ("centred", "identification_centred"),
                      ("within_genre", "within_genre")):
        va, vb = (np.asarray(m["per_clip"][key], dtype=float) for m in (a, b))  # JSON null -> NaN
        ok = np.isfinite(va) & np.isfinite(vb)
        va, vb = va[ok], vb[ok]
        test = permutation_test((va, vb), lambda x, y, axis: np.mean(x - y, axis=axis),
                                permutation_type="samples", vectorized=True, n_resamples=n_resamples,
                                random_state=0)
        out[name] = {"diff": float(np.mean(va - vb)), "diff_ci95": ev.bootstrap_ci(va - vb),
                     "p": float(test.pvalue), "n_clips": int(ok.sum())}
    return out


def _true_voxels(ds: str, subject: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Responsive voxels of the simulator: (positions in the brain-mask values, columns of desc-response)."""
    tsv = os.path.join(ds, "derivatives", "simulation", f"sub-{subject}", f"sub-{subject}_tuning.tsv")
    ijk = np.loadtxt(tsv, delimiter="\t", skiprows=1, usecols=(0, 1, 2), dtype=int, ndmin=2)
    pos = np.full(mask.size, -1)
    pos[np.flatnonzero(mask)] = np.arange(int(mask.sum()))
    where = pos[np.ravel_multi_index(ijk.T, mask.shape)]
    return where[where >= 0], np.flatnonzero(where >= 0)


def _noise_free(ds: str, subject: str, runs, cols: np.ndarray):
    d = os.path.join(ds, "derivatives", "simulation", f"sub-{subject}")
    out = []
    for r in runs:
        f = os.path.join(d, f"sub-{subject}_task-{r.files.task}_run-{r.files.run:02d}_desc-response.npy")
        out.append(replace(r, values=np.load(f)[:, cols].astype(np.float32)))
    return out


def _on_measured_scale(measured, clean, gain=None):
    """Noise-free runs centred per run and scaled to the measured runs' units, per voxel.

    ``gain``: per-voxel factor; default the median over these runs of the
    least-squares slope of each measured run on its noise-free response.
    Returns (runs, gain).
    """
    centred = [v - v.mean(0) for v in (np.asarray(c.values, np.float64) for c in clean)]
    if gain is None:
        slopes = []
        for m, c in zip(measured, centred):
            v = np.asarray(m.values, np.float64)
            slopes.append((c * (v - v.mean(0))).sum(0) / np.maximum((c * c).sum(0), 1e-12))
        gain = np.median(slopes, axis=0)
    return [replace(m, values=(c * gain).astype(np.float32)) for m, c in zip(measured, centred)], gain


def _brain2music(trn, sel, alphas, seed: int = 0):
    """One alpha for all dimensions by 5-fold random CV over TRs, one volume 3 TRs after the moment."""
    from offline_training.ridge import ridge_cv, ridge_fit
    from offline_training.decoding import presentation_rows

    delays = (3,)
    rows = [presentation_rows(r, sel, delays, "tr") for r in trn]
    x = np.concatenate([r[0] for r in rows])
    y = np.concatenate([r[1] for r in rows])
    folds = np.random.default_rng(seed).permutation(len(x)) % 5
    _, cv = ridge_cv(x, y, folds, alphas)
    alpha = float(np.asarray(alphas)[np.argmax(cv.mean(1))])
    coef, xm, ym = ridge_fit(x, y, alpha)
    return coef, xm, ym, delays, {"alpha": alpha, "n_samples": int(len(x))}


def _sklearn_comparison(trn, sel, delays, alphas) -> dict:
    """Time our per-target ridge CV + fit against scikit-learn's RidgeCV on the same rows.

    scikit-learn's ``alpha_per_target`` needs its efficient leave-one-*sample*-out
    CV (``cv=None``), so the CV schemes differ (ours leaves out whole runs);
    both fit the same per-target ridge from one decomposition.
    """
    from sklearn.linear_model import RidgeCV

    from offline_training.ridge import ridge_cv_fit
    from offline_training.decoding import presentation_rows

    out = {}
    for fit_on in ("clip", "tr"):
        rows = [presentation_rows(r, sel, delays, fit_on) for r in trn]
        x = np.concatenate([r[0] for r in rows]).astype(np.float64)
        y = np.concatenate([r[1] for r in rows]).astype(np.float64)
        groups = np.concatenate([np.full(len(r[0]), i) for i, r in enumerate(rows)])
        t0 = time.perf_counter()
        ridge_cv_fit(x, y, groups, alphas)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        RidgeCV(alphas=np.asarray(alphas), alpha_per_target=True).fit(x, y)
        sk = time.perf_counter() - t0
        out[fit_on] = {"n_samples": int(x.shape[0]), "n_features": int(x.shape[1]), "n_targets": int(y.shape[1]),
                       "ours_leave_one_run_out_s": ours, "sklearn_RidgeCV_loo_s": sk, "speedup": sk / ours}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="a dataset written by b2m simulate")
    ap.add_argument("--subject", default="001")
    ap.add_argument("--cache", default=None, help="stimulus embedding cache (default DS/derivatives/b2m/embeddings)")
    ap.add_argument("--voxels", type=int, default=None, help="voxels to select (default: b2m train's)")
    ap.add_argument("--select-by", choices=["cv", "within-genre"], default=None,
                    help="voxel selection rule (default: b2m train's)")
    ap.add_argument("--sklearn", action="store_true", help="also time scikit-learn's RidgeCV on the same rows")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (b2m train's default 1; 0: BLAS's own)")
    ap.add_argument("--name", default="train", help="result file stem (bench/results/NAME.json)")
    args = ap.parse_args()
    from offline_training.train import blas_threads

    with blas_threads(args.threads or None):
        return _run(args)


def _run(args) -> int:

    from offline_training.evaluate import genre_prior_predictions
    from offline_training.simulate import read_simulation_config
    from offline_training.decoding import clip_metrics, evaluate_decoder, fit_decoder
    from offline_training.train import TrainConfig, choose_voxels, peak_rss_mb, prepare

    load0 = os.getloadavg()
    cfg = TrainConfig(subject=args.subject, cache=args.cache)
    if args.voxels:
        cfg.n_voxels = args.voxels
    if args.select_by:
        cfg.select_by = args.select_by
    timings: dict = {}
    t0 = time.perf_counter()
    prep = prepare(args.dataset, cfg, timings=timings)
    trn, tst, trv, _ = prep.runs(cfg, cfg.preprocess())
    timings["prepare_total"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, sel, _, _, selection = choose_voxels(trn, trv, cfg)
    timings["select_voxels"] = time.perf_counter() - t0
    targets = prep.targets
    _, train_emb, train_genres = targets.clips(trn)
    centre = train_emb.mean(0)
    res: dict = {}

    # genre prior: the Test clips' genres, no brain data
    t0 = time.perf_counter()
    test_keys, _, test_genres = targets.clips(tst)
    prior = genre_prior_predictions(train_emb, train_genres, test_genres)
    fit_s = time.perf_counter() - t0
    m = clip_metrics({k: [p] for k, p in zip(test_keys, prior)}, targets, train_emb, train_genres, centre)
    res["genre_prior"] = _scores(m) | {"fit_s": fit_s}

    t0 = time.perf_counter()
    coef, xm, ym, delays, info = _brain2music(trn, sel, cfg.alphas)
    fit_s = time.perf_counter() - t0
    m = evaluate_decoder(tst, coef, xm, ym, sel, delays, targets, train_emb, train_genres, centre)
    res["brain2music_recipe"] = _scores(m) | {"fit_s": fit_s} | info

    def ours(train_runs, test_runs, voxels, **kw) -> tuple[dict, object, dict]:
        """``b2m train``'s decoder fit on ``train_runs`` and scored on ``test_runs``: scores with the fit time,
        the fit, and the full metrics (with the per-clip arrays)."""
        t0 = time.perf_counter()
        dec = fit_decoder(train_runs, voxels, cfg.delays, cfg.alphas, fit_on=cfg.fit_on, **kw)
        fit_s = time.perf_counter() - t0
        m = evaluate_decoder(test_runs, dec.coef, dec.x_mean, dec.y_mean, voxels, cfg.delays, targets, train_emb,
                             train_genres, centre)
        return _scores(m) | {"fit_s": fit_s}, dec, m

    scores, dec, m_ours = ours(trn, tst, sel)
    res["ours"] = scores | {"n_samples": dec.n_samples, "deviation_scale": dec.scale,
                               "readout_shrinkage": dec.shrinkage, "n_voxels": int(len(sel))}
    res["ours_plain_readout"], _, m_plain = ours(trn, tst, sel, shrinkages=(1.0,))  # ablation: no whitener
    readout_gain = _paired(m_ours, m_plain)

    true_pos, true_cols = _true_voxels(args.dataset, args.subject, prep.mask)
    res["oracle"] = {"n_true_voxels": int(len(true_pos)),
                     "n_true_voxels_selected": int(np.isin(sel, true_pos).sum())}
    res["oracle"]["true_voxels"] = ours(trn, tst, true_pos)[0]
    trn_nf = _noise_free(args.dataset, args.subject, trn, true_cols)
    tst_nf = _noise_free(args.dataset, args.subject, tst, true_cols)
    res["oracle"]["noise_free"] = ours(trn_nf, tst_nf, np.arange(len(true_cols)))[0]
    # which side does the noise cost? remove it from one side at a time, on the measured scale
    trn_true = [replace(r, values=np.ascontiguousarray(r.values[:, true_pos])) for r in trn]
    tst_true = [replace(r, values=np.ascontiguousarray(r.values[:, true_pos])) for r in tst]
    trn_clean, gain = _on_measured_scale(trn_true, trn_nf)
    tst_clean, _ = _on_measured_scale(tst_true, tst_nf, gain)
    every = np.arange(len(true_cols))
    res["oracle"]["clean_train"] = ours(trn_clean, tst_true, every)[0]
    res["oracle"]["clean_test"] = ours(trn_true, tst_clean, every)[0]

    payload = {"machine": machine_info(), "load_average_start": load0, "load_average_end": os.getloadavg(),
               "source": source_digest(["offline_training/train.py", "offline_training/decoding.py",
                                        "offline_training/stages.py", "offline_training/ridge.py",
                                        "offline_training/readout.py",
                                        "offline_training/encoding.py", "offline_training/evaluate.py"]),
               "what": f"{args.dataset} subject {args.subject}: decoders fit on the Training runs, scored on the "
                       "Test runs (repeats averaged, per-clip musicnn targets)",
               "dataset": os.path.abspath(args.dataset), "simulation": read_simulation_config(args.dataset),
               "subject": args.subject, "n_voxels": int(len(sel)),
               "voxel_selection": selection,
               "blas_threads": args.threads or None,
               "timings_s": timings, "decoders": res, "ours_minus_plain_readout": readout_gain}
    if args.sklearn:
        payload["ridge_vs_sklearn"] = _sklearn_comparison(trn, sel, cfg.delays, cfg.alphas)
    payload["peak_rss_mb"] = peak_rss_mb()
    path = write_json(args.name, payload)

    rows = [("genre_prior", res["genre_prior"]), ("brain2music_recipe", res["brain2music_recipe"]),
            ("ours", res["ours"]), ("ours_plain_readout", res["ours_plain_readout"]),
            ("oracle.true_voxels", res["oracle"]["true_voxels"]),
            ("oracle.noise_free", res["oracle"]["noise_free"]), ("oracle.clean_train", res["oracle"]["clean_train"]),
            ("oracle.clean_test", res["oracle"]["clean_test"])]
    print(f"{'decoder':<20} {'ident':>6} {'95% CI':>13} {'centred':>8} {'within':>7} {'95% CI':>13} {'fit s':>7}")
    for name, r in rows:
        ci, wci = r["identification_accuracy_ci95"], r["within_genre_identification_accuracy_ci95"]
        print(f"{name:<20} {r['identification_accuracy']:6.3f} {ci[0]:6.3f}-{ci[1]:.3f} "
              f"{r['identification_accuracy_centred']:8.3f} {r['within_genre_identification_accuracy']:7.3f} "
              f"{wci[0]:6.3f}-{wci[1]:.3f} {r['fit_s']:7.2f}")
    print("ours - ours_plain_readout, paired over the Test clips: " + "; ".join(
        f"{k} {g['diff']:+.3f} [{g['diff_ci95'][0]:+.3f}, {g['diff_ci95'][1]:+.3f}] p {g['p']:.3g}"
        for k, g in readout_gain.items()))
    if args.sklearn:
        for fit_on, r in payload["ridge_vs_sklearn"].items():
            print(f"ridge CV+fit on {fit_on} rows ({r['n_samples']}x{r['n_features']} -> {r['n_targets']}): "
                  f"ours {r['ours_leave_one_run_out_s']:.2f} s, sklearn RidgeCV {r['sklearn_RidgeCV_loo_s']:.2f} s")
    print(f"shared: prepare {timings['prepare_total']:.1f} s, select voxels {timings['select_voxels']:.1f} s; "
          f"peak RSS {payload['peak_rss_mb']:.0f} MB; load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
