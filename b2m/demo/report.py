"""The demo's HTML page: headline figures and three plots (genre over time, latency, motion)."""

from __future__ import annotations

import html

import numpy as np

from realtime.session.report import png_base64

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def _truth_figure(timeline: list[dict], summary: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = 1.5
    figs = []
    # 1. genre heard at the decoded moment vs genre of the clip the decoder retrieved
    fig, ax = plt.subplots(figsize=(11, 3.4))
    g = {name: k for k, name in enumerate(GENRES)}
    for key, style, label in (("heard", dict(marker="s", s=22, color="0.55"), "heard (at the decoded moment)"),
                              ("retrieved", dict(marker="o", s=9, color="tab:red"), "decoded: top retrieved clip")):
        pts = [(t["decoded_index"] * tr, g[t[key]]) for t in timeline
               if t[key] in g and t["decoded_index"] is not None]
        if pts:
            x, y = np.array(pts).T
            ax.scatter(x, y, label=label, **style)
    ax.set_yticks(range(len(GENRES)), GENRES)
    ax.set_xlabel("time in the run (s)")
    ax.set_title(f"Genre over time: agreement {summary.get('retrieved_genre_agreement') or 0:.2f} (chance 0.10)")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.08), ncol=2, fontsize=8, frameon=False)  # off the data
    fig.tight_layout()
    figs.append(("Decoded vs true genre over time", png_base64(fig)))
    plt.close(fig)
    return figs


def _offline(metrics: dict) -> str:
    """The training report's Test-set figure with its CI (and within-genre, where the Test set has it)."""
    acc, ci = metrics.get("identification_accuracy"), metrics.get("identification_accuracy_ci95")
    if acc is None:
        return "n/a"
    out = f"{acc:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
    wg = metrics.get("within_genre_identification_accuracy")
    # the demo's Test run has one clip per genre: no within-genre figure (NaN, or null once read back)
    return out + (f"; within-genre {wg:.3f}" if wg is not None and np.isfinite(wg) else "")


def write_report(path: str, summary: dict, timeline: list[dict], results, library) -> str:
    """The demo page: headline figures, decoded vs true genre, then the session's own figures."""
    from realtime.session.report import describe_tsnr, html_page, session_figures

    rows = [
        ("Live identification accuracy (heard clips of the Test run, 1 = perfect, 0.5 = chance)",
         f"{summary['live_identification_accuracy']:.3f} (95% CI {summary['live_identification_ci95'][0]:.3f}"
         f"–{summary['live_identification_ci95'][1]:.3f}, {summary['n_test_clips']} clips)"),
        ("Live vs offline causal decoding, max |difference|", f"{summary['live_vs_offline_max_abs_diff']:.2e}"),
        ("Latency, volume received → audio scheduled",
         f"p50 {summary['latency_ms']['p50']:.2f} ms, p99 {summary['latency_ms']['p99']:.2f} ms"),
        ("Audio underruns", str(summary["audio_underruns"])),
        *([("Temporal SNR of the decoder's voxels", describe_tsnr(summary["tsnr"]))] if summary.get("tsnr") else []),
        ("Recorded run bit-exact with the replayed file", str(summary["recorded_run_bit_exact"])),
        ("Offline Test-set identification accuracy (training report)", _offline(summary["offline_test_metrics"])),
        ("Volumes, decoded, switches, motion holds",
         f"{summary['counts']['volumes']}, {summary['counts']['decoded']}, {summary['counts']['switches']}, "
         f"{summary['counts']['holds']}"),
        ("Wall time per step (s)", ", ".join(f"{k} {v}" for k, v in summary["step_wall_s"].items())),
    ]
    wav = summary["paths"].get("feedback_wav")
    audio = (f"<h2>What the participant heard</h2><p><code>{html.escape(wav)}</code></p>\n" if wav else "")
    intro = ("<p>A simulated participant (ds003720's design) was scanned in simulation; a decoder was trained on "
             "the Training runs; the Test run was then replayed over a real loopback socket into the live "
             "session, which decoded every TR and chose the music.</p>\n")
    page = html_page("brain2music-rt demo", "brain2music-rt demo: a simulated participant, decoded live", rows,
                     _truth_figure(timeline, summary) + session_figures(
                         results, library, training_tsnr=(summary.get("tsnr") or {}).get("training"),
                         training_curve=(summary.get("tsnr") or {}).get("training_curve")), intro, audio)
    with open(path, "w") as f:
        f.write(page)
    return path
