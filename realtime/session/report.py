"""A session's HTML report: what played when, how fast each TR was, and how the head moved.

Written by ``b2m session`` at the end (``SESSION/report.html``) from the
decisions it made; the figures are PNGs embedded in the page, so the file
can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import time

import numpy as np

from .operator import unheard_at

__all__ = ["session_figures", "write_session_report", "png_base64", "html_page", "music_match", "condition_spans",
           "describe_tsnr"]

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\n"
          "th{text-align:left;padding:4px 12px 4px 0;font-weight:normal;color:#555}td{font-weight:bold}\n"
          "img{max-width:100%}")


def html_page(title: str, heading: str, rows, figures, intro: str = "", extra: str = "") -> str:
    """A self-contained page: a heading, a two-column table of ``rows``, then each ``(title, PNG)`` figure."""
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    figs = "\n".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}' alt='{html.escape(t)}'>"
                     for t, b in figures)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(heading)}</h1>\n{intro}"
            f"<table>{table}</table>\n{figs}\n{extra}</body></html>")


def png_base64(fig) -> str:
    """A matplotlib figure as a base64 PNG (for :func:`html_page`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def music_match(results, library, unheard=()) -> dict:
    """How close the music heard was to what was decoded: a check that feedback (or a sham) did what it should.

    For every decoded TR with a clip playing after its decision: the cosine
    similarity of the decoded embedding (unit norm) and the clip's library
    embedding (unit norm). Grouped by the block design's condition (all TRs
    under ``"all"`` as well). Real feedback plays clips near the decoded point,
    a sham plays another participant's, and the neutral block one clip.

    A TR decided while nothing was heard (``unheard``: :func:`realtime.session.operator.read_unheard`,
    the operator's mutes and the sound device's outages) is left out: its
    clip played to no one. ``"all"`` counts them as ``unheard``.

    Returns
    -------
    dict
        ``condition -> {"n": TRs, "mean_cosine": float}`` (and ``"unheard"`` under ``"all"``).
    """
    sums: dict[str, list] = {}
    emb = np.asarray(library.embeddings, np.float32)
    left_out = 0
    for r in results:
        if r.embedding is None or r.clip is None:
            continue
        if unheard_at(unheard, (r.timestamps or {}).get("decided")):
            left_out += 1
            continue
        cos = float(np.asarray(r.embedding, np.float32) @ emb[library.index_of(r.clip)])
        for key in {"all", r.condition or "all"}:
            s = sums.setdefault(key, [0.0, 0])
            s[0] += cos
            s[1] += 1
    out = {k: {"n": n, "mean_cosine": total / n} for k, (total, n) in sorted(sums.items())}
    if left_out:
        out.setdefault("all", {"n": 0, "mean_cosine": None})["unheard"] = left_out
    return out


def condition_spans(results) -> list[tuple[int, int, str]]:
    """``(first volume, last volume, condition)`` of each stretch of one run's results in one block condition.

    ``results`` are one run's, in volume order; results without a condition (no block design) make no span.
    """
    spans: list[list] = []
    for r in results:
        if r.condition is None:
            continue
        if spans and spans[-1][2] == r.condition and spans[-1][1] == r.index - 1:
            spans[-1][1] = r.index
        else:
            spans.append([r.index, r.index, r.condition])
    return [tuple(s) for s in spans]


def describe_tsnr(tsnr: dict) -> str:
    """Each run's temporal SNR of the decoder's voxels beside the Training runs', as the report and the session's
    end say it: ``run-01 52, run-02 49 (Training runs 48)``.

    A run under :data:`~realtime.session.alerts.TSNR_ALERT_RATIO` of the
    Training runs' is flagged: the decoder read noisier data than it learned
    from.

    Parameters
    ----------
    tsnr : dict
        The summary's ``"tsnr"``: ``{"runs": {run_id: figure}, "training": figure or None}``
        (:meth:`SessionEngine.stats`).
    """
    from .alerts import TSNR_ALERT_RATIO

    ref = tsnr.get("training")
    parts = []
    for run_id, v in (tsnr.get("runs") or {}).items():
        low = bool(ref) and v is not None and v < TSNR_ALERT_RATIO * ref
        parts.append(f"{run_id} " + ("n/a" if v is None else f"{v:.0f}")
                     + (" (under half the Training runs': check the head coil and the sequence)" if low else ""))
    return (", ".join(parts) or "no run") + (f" (Training runs {ref:.0f})" if ref
                                              else " (no Training runs' figure in the model's bundle)")


def session_figures(results, library, fd_threshold_mm: float = 0.5, *,
                    training_tsnr: float | None = None, training_curve: list | None = None) -> list[tuple[str, str]]:
    """``(title, base64 PNG)`` for: the music over time, latency per stage, head motion, DVARS and the running
    temporal SNR (the last three where the results have them).

    ``results`` are the session's :class:`protocols.wire.Result` in order;
    time is the volume index (one TR each), per run. The blocks of a block
    design (the results' ``condition``) are shaded behind the music (silence
    and neutral blocks). ``training_tsnr``: the Training runs' temporal SNR
    (the bundle's ``qc.tsnr``), drawn dashed across the tSNR plot; with
    ``training_curve`` (their running figure per volume), that curve is drawn
    under each run instead, as each run's figure is compared with it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    def label(clip_id: str) -> str:
        clip = library.clips[library.index_of(clip_id)]
        return clip.genre or clip.source

    runs = list(dict.fromkeys(r.run_id for r in results))
    labels = sorted({label(r.clip) for r in results if r.clip})
    if any(r.action == "silence" for r in results):
        labels.append("(silence)")
    row = {g: k for k, g in enumerate(labels)}
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 1.2 + 0.35 * max(len(labels), 3) * len(runs)),
                             squeeze=False)
    for ax, run_id in zip(axes[:, 0], runs):
        rr = [r for r in results if r.run_id == run_id and (r.clip or r.action == "silence")]
        g = [row["(silence)" if r.clip is None else label(r.clip)] for r in rr]
        shades = {"silence": "0.85", "neutral": "#fde9c8"}
        for first, last, condition in condition_spans([r for r in results if r.run_id == run_id]):
            if condition in shades:
                ax.axvspan(first - 0.5, last + 0.5, color=shades[condition], zorder=0, lw=0,
                           label=f"{condition} block")
        ax.step([r.index for r in rr], g, where="post", color="tab:blue", lw=1.2)
        sw = [(r.index, row[label(r.clip)]) for r in rr if r.action == "switch"]
        if sw:
            ax.scatter(*np.array(sw).T, color="tab:red", s=14, zorder=3, label="switch")
        handles, names = ax.get_legend_handles_labels()
        if handles:
            keep = dict(zip(names, handles))  # one entry per kind of block
            ax.legend(keep.values(), keep.keys(), loc="upper right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"{run_id}: genre (or source) of the clip playing", fontsize=10)
    axes[-1, 0].set_xlabel("volume")
    figs.append(("Music over time", png_base64(fig)))
    plt.close(fig)

    stages = [s for s in ("preprocessed", "decoded", "decided", "audio_scheduled", "total")
              if any(s in r.latency_ms for r in results)]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    data = [np.array([r.latency_ms[s] for r in results if s in r.latency_ms]) for s in stages]
    ax.boxplot([np.maximum(d, 1e-3) for d in data], whis=(1, 99), showfliers=True)
    ax.set_xticks(range(1, len(stages) + 1), stages)
    ax.set_yscale("log")
    ax.set_ylabel("ms (whiskers p1-p99)")
    ax.set_title("Latency per stage, from the volume's arrival")
    figs.append(("Latency per TR", png_base64(fig)))
    plt.close(fig)

    fd = [(k, r.fd_mm) for k, r in enumerate(results) if r.fd_mm is not None]
    if fd:
        fig, ax = plt.subplots(figsize=(11, 2.6))
        k, v = np.array(fd).T
        ax.plot(k, v, lw=0.8, color="tab:green")
        ax.axhline(fd_threshold_mm, color="tab:red", ls="--", lw=0.8, label=f"FD threshold {fd_threshold_mm:g} mm")
        held = [k for k, r in enumerate(results) if r.action == "hold"]
        if held:
            ax.scatter(held, np.full(len(held), fd_threshold_mm), marker="v", color="tab:red", s=16,
                       label="policy held")
        ax.set_xlabel("TR (all runs in order)")
        ax.set_ylabel("FD (mm)")
        ax.legend(fontsize=8)
        figs.append(("Head motion", png_base64(fig)))
        plt.close(fig)
    dv = [(k, r.dvars_pct) for k, r in enumerate(results) if r.dvars_pct is not None]
    if dv:  # the image's change, which a spike or a dropout makes without any motion
        fig, ax = plt.subplots(figsize=(11, 2.6))
        k, v = np.array(dv).T
        ax.plot(k, v, lw=0.8, color="tab:purple")
        ax.axhline(float(np.median(v[v > 0])) if np.any(v > 0) else 0.0, color="0.5", ls=":", lw=0.8,
                   label="median")
        ax.set_xlabel("TR (all runs in order)")
        ax.set_ylabel("DVARS (% of mean)")
        ax.set_title("DVARS: RMS change of the model's voxels from the previous volume (0 at each run's start)")
        ax.legend(fontsize=8)
        figs.append(("Image change (DVARS)", png_base64(fig)))
        plt.close(fig)
    ts = [r.tsnr for r in results if r.tsnr is not None]
    if ts:  # the signal's quality: a failed coil element or another sequence lowers it for the whole run
        from ..preprocessing.qc import TSNR_MIN_VOLUMES

        fig, ax = plt.subplots(figsize=(11, 2.6))
        label = "this session's runs"
        for run_id in runs:  # one line per run: the figure starts again with each run
            pts = [(k, r.tsnr) for k, r in enumerate(results) if r.run_id == run_id and r.tsnr is not None]
            if pts:
                ax.plot(*np.array(pts).T, lw=0.8, color="tab:brown", label=label)
                label = None
        top = max(ts)
        if training_curve:  # the Training runs' figure after as many volumes, what each run is compared with
            from protocols.bundle import TrainingTsnr

            label, ref = "Training runs after as many volumes", TrainingTsnr(None, tuple(training_curve))
            for run_id in runs:
                pts = [(k, ref.at(r.index + 1)) for k, r in enumerate(results) if r.run_id == run_id]
                pts = [(k, v) for k, v in pts if v is not None]
                if pts:
                    ax.plot(*np.array(pts).T, color="0.3", ls="--", lw=0.8, label=label)
                    top, label = max(top, max(v for _, v in pts)), None
            ax.legend(fontsize=8)
        elif training_tsnr:
            ax.axhline(training_tsnr, color="0.3", ls="--", lw=0.8, label=f"Training runs ({training_tsnr:.0f})")
            ax.legend(fontsize=8)
            top = max(top, training_tsnr)
        ax.set_ylim(0, 1.1 * top)
        ax.set_xlabel("TR (all runs in order)")
        ax.set_ylabel("tSNR")
        ax.set_title(f"Temporal SNR of the decoder's voxels, each run's so far (from its {TSNR_MIN_VOLUMES}th volume)")
        figs.append(("Temporal SNR", png_base64(fig)))
        plt.close(fig)
    return figs


def _scheduling(summary: dict) -> str:
    """How the sound device's callback thread ran (real-time or not), after the underruns it explains."""
    from .preflight import describe_scheduling

    return describe_scheduling((summary.get("audio") or {}).get("callback_scheduling"))


def write_session_report(path: str, summary: dict, results, library, fd_threshold_mm: float = 0.5) -> str:
    """Write ``path`` (HTML) with the headline counts and :func:`session_figures`."""
    c = summary["counts"]
    lat = summary["latency_ms"].get("total", {})
    rows = [("Volumes / decoded", f"{c['volumes']} / {c['decoded']}"),
            ("Switches / motion holds / errors", f"{c['switches']} / {c['holds']} / {c['errors']}"),
            ("Volumes stood in for (missing) / arrived too late / too far ahead (not decoded)",
             f"{c['stand_ins']} / {c['late']} / {c.get('too_far_ahead', 0)}"),
            ("Latency, received -> audio scheduled",
             f"p50 {lat.get('p50', float('nan')):.2f} ms, p99 {lat.get('p99', float('nan')):.2f} ms"),
            ("Audio underruns", str(summary.get("audio_underruns")) + _scheduling(summary)),
            ("Runs ended", ", ".join(summary.get("runs_ended") or []) or "-")]
    if "provenance" in summary:
        from protocols.provenance import describe_provenance

        rows += [("Software of this session", describe_provenance(summary["provenance"])),
                 ("The model was trained by", describe_provenance(summary.get("model_provenance")))]
    tsnr = summary.get("tsnr")
    if tsnr:
        rows.append(("Temporal SNR of the decoder's voxels", describe_tsnr(tsnr)))
    aligned = summary.get("alignment") or {}
    if aligned:
        from ..preprocessing.motion import describe_alignment

        rows.append(("Runs aligned to the model's reference (another session)", ", ".join(
            f"{run}: " + ("another grid, " if a["other_grid"] else "")
            + describe_alignment(a["params"], a["similarity"], a.get("coverage")) for run, a in aligned.items())))
    clocks = summary.get("clock_offset_s") or {}
    if clocks:
        from ..clocks import CLOCK_WARN_S, describe_offset

        rows.append(("Scanner side's clock (acquisition times are moved onto the session's)", ", ".join(
            f"{run}: " + (describe_offset(c["offset_s"]) + " (synchronise the clocks)"
                          if abs(c["offset_s"]) >= CLOCK_WARN_S else f"agrees within {1e3 * abs(c['offset_s']):.1f} ms")
            for run, c in clocks.items())))
    if "host_clock" in summary:
        from ..clocks import describe_host_clock

        rows.append(("This computer's clock", describe_host_clock(summary["host_clock"])[0]))
    trig = summary.get("triggers")
    if trig:
        from ..triggers import describe_triggers

        rows.append((f"Scanner trigger ({trig['source']}, key {trig['key']!r}): {trig['pulses']} pulses", ", ".join(
            f"{run}: {describe_triggers(m)}" for run, m in trig["runs"].items()) or "no run"))
        if trig.get("response_keys"):
            rows.append((f"Participant's buttons ({trig['response_keys']})", f"{trig['presses']} presses"))
    for o in summary.get("audio_outages") or []:  # the sound device down: the participant heard nothing
        from .audio_keeper import describe_outage

        when = time.strftime("%H:%M:%S", time.localtime(o["start_unix"]))
        rows.append((f"Sound device down at {when}", describe_outage(o)))
    op = summary.get("operator")
    if op and op.get("changes"):  # the operator muted or turned the music down: the report says so
        from .operator import describe_changes

        rows.append(("Operator's hand on the sound (SESSION/operator.tsv)", describe_changes(op)))
        notes = [c for c in op["changes"] if c["command"] == "note"]
        if notes:
            rows.append(("Operator's notes", "; ".join(
                f"{time.strftime('%H:%M:%S', time.localtime(c['time_unix']))} {c['value']}" for c in notes)))
    pieces = summary.get("pieces")
    rows.insert(0, ("Music", "generated live from the library's generator points" if pieces is not None
                    else "retrieved from the library"))
    if pieces is not None:
        from .generation import describe_pieces

        rows.append(("Generator", describe_pieces(pieces)))
    match = summary.get("music_match") or {}
    if match and not summary.get("blinded"):  # real feedback matches better than a sham: it would unblind
        rows.append(("Music heard vs decoded: mean cosine (TRs)", ", ".join(
            f"{k} " + ("n/a" if v["mean_cosine"] is None else f"{v['mean_cosine']:.3f}") + f" ({v['n']}"
            + (f"; {v['unheard']} unheard left out)" if v.get("unheard") else ")") for k, v in match.items())))
    yoked = summary.get("yoked")
    if summary.get("protocol"):
        from .protocol import Protocol

        p = Protocol.from_dict(summary["protocol"])
        rows.insert(1, ("Block design", f"{p.source}: {p.describe()} (feedback elsewhere), in every run"))
    if summary.get("blinded"):  # the operator reads this page: real or sham stays in the record's files
        rows.insert(1, ("Feedback", "as allocated (blinded)"))
    elif yoked:
        agree = "n/a" if yoked["own_agreement"] is None else f"{yoked['own_agreement']:.1%}"
        rows.insert(1, ("Feedback", f"SHAM, yoked to {yoked['source']} (runs "
                        + ", ".join(f"{k} <- {v}" for k, v in yoked["runs"].items()) + ")"))
        rows.append(("Sham: the participant's own decoding chose the clip that played at",
                     f"{agree} of decoded TRs"))
    page = html_page("b2m session report", "Session report", rows,
                     session_figures(results, library, fd_threshold_mm,
                                     training_tsnr=(tsnr or {}).get("training"),
                                     training_curve=(tsnr or {}).get("training_curve")) if results else [])
    with open(path, "w") as f:
        f.write(page)
    return path
