"""``BUNDLE/report.html``: a self-contained page a scientist reads at a glance.

Figures are PNGs embedded as base64: the identification matrix, per-dimension
correlations, the chosen alphas, the encoding map on the brain, the noise
ceiling, the genre of the retrieved clip against the true one (a confusion
matrix) beside within-genre identification per genre, and predicted vs true
tags of a few test clips. The encoding map is also written as
``BUNDLE/encoding_corr.nii.gz`` in the subject's space.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

__all__ = ["write_report"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _brain_map(out: str, filename: str, values: np.ndarray, brain: np.ndarray, affine: np.ndarray,
               reference: np.ndarray, title: str, threshold: float, shown=None, **plot_kw) -> tuple[str | None, str | None]:
    """Write ``values`` (n_brain_voxels,) as ``OUT/filename`` and draw it on ``reference``.

    ``shown`` maps the volume to what is drawn (default: the volume itself).
    Returns ``(png, None)``, or ``(None, error)`` when plotting fails: a
    plotting failure must not lose the bundle.
    """
    import matplotlib.pyplot as plt
    import nibabel as nib

    vol = np.zeros(brain.shape, np.float32)
    vol[brain] = values
    nib.save(nib.Nifti1Image(vol, affine), os.path.join(out, filename))
    try:
        from nilearn import plotting

        fig = plt.figure(figsize=(9, 3))
        plotting.plot_stat_map(nib.Nifti1Image(vol if shown is None else shown(vol), affine),
                               bg_img=nib.Nifti1Image(reference, affine), threshold=threshold, display_mode="z",
                               cut_coords=5, figure=fig, title=title, draw_cross=False, black_bg=False, **plot_kw)
        return _png(fig), None
    except Exception as e:
        return None, str(e)


def _ceiling_figures(out: str, ev: np.ndarray, enc_corr: np.ndarray, sel: np.ndarray, brain: np.ndarray,
                     affine: np.ndarray, reference: np.ndarray) -> dict:
    """``noise_ceiling_ev.nii.gz``, its map, and encoding r against the ceiling sqrt(EV) per voxel."""
    import matplotlib.pyplot as plt

    figs = {}
    # negative EV (bias correction where nothing is stimulus-locked) is shown as none
    png, err = _brain_map(out, "noise_ceiling_ev.nii.gz", ev, brain, affine, reference,
                          "Explainable variance from the Test repeats (EV > 0.05)", 0.05,
                          shown=lambda v: np.clip(v, 0, None), cmap="hot", symmetric_cbar=False, vmin=0)
    figs.update({"ceiling_map": png} if png else {"ceiling_error": err})
    rng = np.random.default_rng(0)
    others = np.setdiff1d(np.arange(len(ev)), sel)
    others = rng.choice(others, min(len(others), 5000), replace=False) if len(others) else others
    fig, ax = plt.subplots(figsize=(5, 4.5))
    root = np.sqrt(np.clip(ev, 0, None))
    ax.scatter(root[others], enc_corr[others], s=3, color="#bbbbbb", label="other brain voxels (sample)")
    ax.scatter(root[sel], enc_corr[sel], s=6, color="#4477aa", label="selected voxels")
    top = float(max(root.max(), np.nanmax(enc_corr), 0.1))
    ax.plot([0, top], [0, top], color="k", lw=0.8, ls="--", label="the ceiling: r = sqrt(EV)")
    ax.set_xlabel("noise ceiling sqrt(EV) (Test repeats)")
    ax.set_ylabel("encoding model r (Test, single presentations)")
    ax.legend(fontsize=8)
    figs["ceiling"] = _png(fig)
    return figs


def _genre_figure(res: dict) -> str | None:
    """The genre of the Training clip retrieved from each decoded Test clip against its own (rows: true genre,
    shares of its clips), beside within-genre identification per genre (each clip against its genre's others;
    chance 0.5). None if the metrics have neither."""
    conf, by = res.get("retrieval_genre_confusion"), res.get("within_genre_identification_by_genre")
    if not conf and not by:
        return None
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    if conf:
        counts = np.asarray(conf["counts"], float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        im = a.imshow(share, cmap="Blues", vmin=0, vmax=1)
        names = conf["genres"]
        a.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        a.set_yticks(range(len(names)), names, fontsize=8)
        for i, j in zip(*np.nonzero(counts)):
            a.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                   color="white" if share[i, j] > 0.6 else "black")
        a.set_xlabel("genre of the Training clip retrieved (top 1)")
        a.set_ylabel("true genre of the Test clip")
        agree = np.trace(counts) / max(counts.sum(), 1)
        a.set_title(f"Retrieved genre (agreement {agree:.2f}; numbers are clips)")
        fig.colorbar(im, ax=a, shrink=0.8, label="share of the row's clips")
    else:
        a.axis("off")
    if by:
        names = list(by)
        vals = [np.nan if by[g]["mean"] is None else by[g]["mean"] for g in names]
        b.bar(range(len(names)), vals, color="#4477aa")
        b.axhline(0.5, color="k", lw=0.8, ls="--", label="chance")
        b.set_xticks(range(len(names)), [f"{g} ({by[g]['n_clips']})" for g in names], rotation=60, ha="right",
                     fontsize=8)
        b.set_ylim(0, 1)
        b.set_ylabel("within-genre identification")
        b.set_title("Within-genre identification per genre (clips)")
        b.legend(fontsize=8)
    else:
        b.axis("off")
    return _png(fig)


def _genre_blocks(genres) -> list[tuple[str, int, int]] | None:
    """``(genre, first, end)`` of each run of equal genres in clip order, or None unless every genre forms
    exactly one run (the Test clips sorted by genre, as the evaluation orders them)."""
    if genres is None or len(genres) == 0:
        return None
    blocks, start = [], 0
    for k in range(1, len(genres) + 1):
        if k == len(genres) or genres[k] != genres[start]:
            blocks.append((str(genres[start]), start, k))
            start = k
    return blocks if len({g for g, _, _ in blocks}) == len(blocks) else None


def _beyond_prior(metrics: dict) -> str:
    """``; +0.003 over the genre-only baseline (0.942; paired 95% CI ..., p 0.35): ...`` for the headline."""
    b = (metrics.get("beyond_genre_prior") or {}).get("raw")
    if not b:
        return ""
    gp = metrics.get("genre_prior", {}).get("identification_accuracy", float("nan"))
    lo, hi = b["ci95"]
    return (f"; <b>{b['difference']:+.3f} over the genre-only baseline</b> ({gp:.3f}; paired 95% CI "
            f"{lo:+.3f} to {hi:+.3f}, p {b['p']:.2g}, {b['clips_better']} clips better and {b['clips_worse']} "
            "worse): raw identification is mostly genre, which this baseline knows without any brain data")


def write_report(out: str, metrics: dict, arrays: dict, state: dict, enc_corr: np.ndarray, brain: np.ndarray,
                 affine: np.ndarray, reference: np.ndarray, targets, ev: np.ndarray | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    # identification matrix
    c = arrays["corr"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(c, cmap="RdBu_r", vmin=-np.abs(c).max(), vmax=np.abs(c).max())
    ax.set_xlabel("true clip embedding")
    ax.set_ylabel("decoded clip (4 repeats averaged)")
    ax.set_title("Identification matrix: corr(decoded i, true j)")
    blocks = _genre_blocks(arrays.get("genres"))
    if blocks:  # clips in genre order: name each genre's block, and outline the within-genre comparisons
        centres = [(a + b - 1) / 2 for _, a, b in blocks]
        names = [g for g, _, _ in blocks]
        ax.set_xticks(centres, names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(centres, names, fontsize=7)
        for _, a, b in blocks:
            ax.add_patch(plt.Rectangle((a - 0.5, a - 0.5), b - a, b - a, fill=False, lw=0.6, ec="k"))
    fig.colorbar(im, ax=ax, shrink=0.8)
    figs["identification"] = _png(fig)
    # per-dimension correlations
    from .evaluate import per_dim_correlation

    pdc = per_dim_correlation(arrays["pred"], arrays["true"])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(pdc)), np.sort(pdc)[::-1], width=1.0, color="#4477aa")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("embedding dimension (sorted)")
    ax.set_ylabel("Pearson r across test clips")
    ax.set_title(f"Per-dimension correlation (mean {pdc.mean():.3f})")
    figs["per_dim"] = _png(fig)
    # alphas
    fig, ax = plt.subplots(figsize=(6, 3))
    best = state["best"]
    ax.hist(np.log10(best), bins=np.arange(np.log10(min(best)) - 0.25, np.log10(max(best)) + 0.5, 0.5),
            color="#228833")
    ax.set_xlabel("log10(alpha) chosen per embedding dimension")
    ax.set_ylabel("dimensions")
    edge = metrics.get("causal", {}).get("alphas", {})
    ax.set_title("Chosen ridge alphas (leave-one-run-out CV)"
                 + (f"\n{edge['at_min']} at the grid's smallest, {edge['at_max']} at its largest"
                    if edge else ""))
    figs["alphas"] = _png(fig)
    # encoding map
    png, err = _brain_map(out, "encoding_corr.nii.gz", enc_corr, brain, affine, reference,
                          "Encoding model: test correlation (r > 0.1)", 0.1)
    figs.update({"encoding": png} if png else {"encoding_error": err})
    if ev is not None:
        figs.update(_ceiling_figures(out, ev, enc_corr, state["sel"], brain, affine, reference))
    # tags
    keys = arrays["keys"]
    tag_names = targets.tag_names
    if "pred_tags" in arrays:
        pred_tags, true_tags = arrays["pred_tags"], arrays["true_tags"]
        show = np.linspace(0, len(keys) - 1, 4).astype(int)
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), layout="constrained")  # room for each tag axis
        for ax, i in zip(axes, show):
            top = np.argsort(-true_tags[i])[:6]
            yy = np.arange(len(top))
            ax.barh(yy - 0.2, true_tags[i, top], 0.4, label="true", color="#aaaaaa")
            ax.barh(yy + 0.2, pred_tags[i, top], 0.4, label="decoded", color="#ee6677")
            ax.set_yticks(yy, [tag_names[t] for t in top])
            ax.invert_yaxis()
            ax.set_title(keys[i], fontsize=9)
        axes[0].legend(fontsize=8)
        fig.suptitle("Top tags of test clips: true vs read out from the decoded embedding")
        figs["tags"] = _png(fig)
    genre_fig = _genre_figure(metrics.get("causal", {}))
    if genre_fig:
        figs["genres"] = genre_fig
    rows = []

    def row(name, key, fmt="{:.3f}"):
        vals = []
        for part in ("causal", "offline"):
            v = metrics.get(part, {}) if part in metrics else None
            for k in key.split("."):  # "nway.top1": a nested figure
                v = v.get(k) if isinstance(v, dict) else None
            vals.append("" if v is None else fmt.format(v))
        gp = metrics.get("genre_prior", {}).get(key)
        vals.append("" if gp is None else fmt.format(gp))
        rows.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")

    row("Identification accuracy (4 repeats, chance 0.5)", "identification_accuracy")
    row("Identification, mean-centred", "identification_accuracy_centred")
    row("Identification, permutation p vs chance", "identification_accuracy_p", "{:.2g}")
    row("Within-genre identification (chance 0.5)", "within_genre_identification_accuracy")
    row("Within-genre, permutation p (targets permuted within genre)", "within_genre_identification_accuracy_p", "{:.2g}")
    row("Identification, single presentations", "identification_accuracy_single")
    row("Within-genre identification, single presentations", "within_genre_identification_accuracy_single")
    row("Per-dimension correlation (mean)", "per_dim_correlation_mean")
    n_way = metrics.get("causal", {}).get("nway", {}).get("n_way", "N")
    row(f"{n_way}-way identification, top-1 (chance 1/{n_way})", "nway.top1")
    row(f"{n_way}-way identification, top-5 (chance 5/{n_way})", "nway.top5")
    row("Genre of the retrieved Training clip, top-1", "retrieval_genre_agreement.top1")
    row("Genre among the 2 retrieved Training clips", "retrieval_genre_agreement.top2")
    row("Top-5 musicnn tags shared with the true clip (fraction)", "tag_agreement_top5")
    nc = metrics.get("noise_ceiling", {})
    ceiling = (f"<p>Noise ceiling: {html.escape(nc['error'])}</p>" if "error" in nc else
               f"<p>Noise ceiling (explainable variance from {nc['n_repeats']} repeats of {nc['n_excerpts']} Test "
               f"excerpts, {nc['lag_s']:g} s after each TR): median EV {nc['median_ev_selected']:.3f} in the selected "
               f"voxels ({nc['median_ev_brain']:.3f} over the brain); their single-presentation correlation cannot "
               f"exceed sqrt(EV), median {nc['median_sqrt_ev_selected']:.3f}, and the encoding model reaches "
               f"{nc['median_encoding_corr_selected']:.3f}. Map: <code>noise_ceiling_ev.nii.gz</code>.</p>"
               if nc else "")
    ts = (metrics.get("qc") or {}).get("tsnr") or {}
    per_run = [v for v in (ts.get("runs") or {}).values() if v is not None and np.isfinite(v)]
    tsnr = (f"<p>Temporal SNR of the selected voxels in the Training runs (mean over the run / s.d. of the "
            f"high-passed series, the live session's running figure at each run's end): median {ts['median']:.1f} "
            f"over {len(per_run)} runs ({min(per_run):.1f}-{max(per_run):.1f}). A live run under half of it is an "
            "alert in the session.</p>" if ts.get("median") is not None and per_run else "")
    from protocols.provenance import describe_provenance

    runs = metrics.get("dataset_files") or []
    made = (f"<p>Made by {html.escape(describe_provenance(metrics.get('provenance')))}. Data: "
            f"{html.escape(str(metrics.get('dataset', '?')))}, {sum(r['task'] == 'Training' for r in runs)} Training "
            f"and {sum(r['task'] == 'Test' for r in runs)} Test runs (their events' and sidecars' sha256 and the "
            "images' sizes in <code>metrics.json</code>, <code>dataset_files</code>).</p>")
    ci = metrics.get("identification_accuracy_ci95", (np.nan, np.nan))
    wg_ci = metrics.get("within_genre_identification_accuracy_ci95", (np.nan, np.nan))
    parts = [f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{figs[k]}'>"
             for k, t in (("identification", "Identification"), ("per_dim", "Per-dimension correlation"),
                          ("alphas", "Chosen alphas"), ("encoding", "Encoding map"),
                          ("ceiling_map", "Noise ceiling map"), ("ceiling", "Encoding model against the noise ceiling"),
                          ("genres", "Genres: what is retrieved, and what is told apart within each"),
                          ("tags", "Tags"))
             if k in figs]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>brain2music-rt model report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head>
<body><h1>Decoding report: subject {html.escape(str(metrics['config']['subject']))}</h1>
<p><b>Identification accuracy {metrics['identification_accuracy']:.3f}</b> (95% bootstrap CI {ci[0]:.3f}-{ci[1]:.3f};
Brain2Music reported 0.876 &plusmn; 0.015 on real data with MuLan){_beyond_prior(metrics)};
<b>within-genre identification {metrics['within_genre_identification_accuracy']:.3f}</b> (95% CI {wg_ci[0]:.3f}-{wg_ci[1]:.3f}):
only the other Test clips of the same genre as foils, so a decoder of genre alone scores 0.5. Test-set figures use per-clip targets, the 4
repeats averaged, and the causal preprocessing the live session runs. CIs resample the Test clips within each
genre and recompute the accuracy from the comparisons of the clips drawn (a clip's score shares its foils with the
others'); <code>test_predictions.npz</code> holds what every figure was computed from.</p>
<table><tr><th>metric</th><th>causal (deployed)</th><th>offline preprocessing</th><th>genre-prior baseline</th></tr>
{''.join(rows)}</table>
<p>Embedder {html.escape(str(metrics['config']['embedder']))}; delays {metrics['config']['delays']} TRs;
{metrics['config']['n_voxels']} voxels selected by CV encoding performance within the training runs;
{metrics.get('causal', {}).get('n_train_samples', '?')} training samples
({html.escape(str(metrics['config'].get('fit_on', 'tr')))} rows); decoded deviation from the mean embedding read
through the held-out error covariance shrunk by {metrics.get('causal', {}).get('readout_shrinkage', 1.0):g}
(1 = plain ridge) and scaled by {metrics.get('causal', {}).get('deviation_scale', 1.0):g} (both chosen on held-out
Training runs);
fit {metrics.get('causal', {}).get('fit_s', 0):.1f} s;
wall time {metrics.get('wall_s', 0):.0f} s.</p>
{ceiling}
{tsnr}
{made}
{''.join(parts)}
{f"<p>Encoding map not drawn: {html.escape(figs['encoding_error'])}</p>" if 'encoding_error' in figs else ''}
{f"<p>Noise-ceiling map not drawn: {html.escape(figs['ceiling_error'])}</p>" if 'ceiling_error' in figs else ''}
</body></html>"""
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write(page)
    return path
