"""``b2m study``: the sessions of a neurofeedback study side by side, real feedback against sham.

Each session folder is read from its record (the decisions, ``yoked.json`` and
``session_config.json``), not from its ``summary.json``, so a session that
crashed before its summary counts too. Per session: whether it was real or a
sham (and whose music), runs, volumes, decoded TRs, switches, mean FD, the
median over runs of each run's temporal SNR of the decoder's voxels, and
:func:`~realtime.session.report.music_match` (overall and per block
condition). Over sessions: the manipulation check, music match of real
against sham sessions (mean, s.d., Welch's t-test), the check a reviewer asks
for to see that real feedback followed the brain and the sham did not; and
the same comparison of head motion and tSNR, the data-quality confound check
(the groups should not differ in them, or a difference in outcome could be
one of data quality). Sessions run by other code, or with another feedback
policy or mode, are named (:func:`setup_differences`).
"""

from __future__ import annotations

import os

import numpy as np

from protocols.provenance import code_version

from .decisions import session_results
from .replay import read_session_info
from .operator import read_unheard
from .report import music_match
from .yoked import own_agreement, read_yoked

__all__ = ["session_row", "setup_differences", "compare_groups", "describe_comparison", "write_study_page", "cell",
           "COLUMNS", "QUALITY"]

COLUMNS = ("session", "participant", "feedback", "yoked_to", "runs", "volumes", "decoded", "switches", "mean_fd_mm",
           "median_tsnr", "music_match", "music_match_feedback", "music_match_neutral", "own_agreement")
#: Compared between real and sham sessions beside the music match: the groups should not differ in them.
QUALITY = ("mean_fd_mm", "median_tsnr")


def cell(v) -> str:
    """A table cell: ``n/a`` for None, 4 decimals for a float."""
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def session_row(session_dir) -> dict:
    """One session's row (keys :data:`COLUMNS`; None where it does not apply).

    Raises
    ------
    ValueError
        Naming the folder, if it is not a session record with decisions.
    """
    from music.library import Library

    session_dir = os.path.abspath(os.fspath(session_dir))
    info = read_session_info(session_dir)
    results = session_results(session_dir)
    if not results:
        raise ValueError(f"{session_dir}: no decisions in runs/*/decisions.log; give folders written by "
                         "`b2m session --out`")
    library = Library(info["library"], check_hashes=False)
    yoked = read_yoked(session_dir)
    match = music_match(results, library, read_unheard(session_dir))  # TRs no one heard are left out
    fd = [r.fd_mm for r in results if r.fd_mm is not None]
    last_tsnr = {}  # each run's figure at its last volume that has one (results are in order within a run)
    for r in results:
        if r.tsnr is not None:
            last_tsnr[r.run_id] = r.tsnr
    return {"session": session_dir,
            "participant": (info.get("allocation") or {}).get("participant") or os.path.basename(session_dir),
            "feedback": "sham" if yoked is not None else "real",
            "yoked_to": yoked["source"] if yoked is not None else None,
            "runs": len({r.run_id for r in results}), "volumes": len(results),
            "decoded": sum(r.embedding is not None for r in results),
            "switches": sum(r.action == "switch" for r in results),
            "mean_fd_mm": float(np.mean(fd)) if fd else None,
            "median_tsnr": float(np.median(list(last_tsnr.values()))) if last_tsnr else None,
            "music_match": (match.get("all") or {}).get("mean_cosine"),
            "music_match_feedback": (match.get("feedback") or {}).get("mean_cosine"),
            "music_match_neutral": (match.get("neutral") or {}).get("mean_cosine"),
            "own_agreement": own_agreement(session_dir),
            # not columns: what ran it, compared over sessions (setup_differences)
            "code": code_version(info.get("provenance")), "policy": info.get("policy"),
            "mode": info.get("mode")}


def setup_differences(rows: list[dict]) -> list[str]:
    """Where the sessions were not run alike: by other code (b2m's version and git commit), with another feedback
    policy or mode. One note per difference, naming the sessions; empty when all were run alike. Each
    participant's own model is expected to differ, so models are not compared."""
    name = {r["session"]: os.path.basename(r["session"]) for r in rows}
    notes = []
    codes: dict = {}
    for r in rows:
        codes.setdefault(r["code"], []).append(name[r["session"]])
    if len(codes) > 1:
        notes.append("the sessions were run by different code: " + "; ".join(
            f"{c} ({', '.join(s)})" for c, s in codes.items()))
    if len({r["mode"] for r in rows}) > 1:
        notes.append("the sessions were run in different modes: " + ", ".join(
            f"{name[r['session']]} {r['mode']}" for r in rows))
    keys = sorted({k for r in rows for k in (r["policy"] or {})})
    for k in keys:
        values = [(r["policy"] or {}).get(k) for r in rows]
        if len(set(map(repr, values))) > 1:
            notes.append(f"the sessions were run with different feedback policies: {k} " + ", ".join(
                f"{name[r['session']]} {v}" for r, v in zip(rows, values)))
    return notes


def compare_groups(rows: list[dict], key: str = "music_match") -> dict:
    """``key`` of real against sham sessions: n, mean and s.d. per group, and Welch's t-test (two-sided).

    The test needs two sessions in each group, and some spread in them; otherwise ``t`` and ``p`` are None.
    """
    from scipy import stats

    out = {}
    groups = {g: np.array([r[key] for r in rows if r["feedback"] == g and r[key] is not None], float)
              for g in ("real", "sham")}
    for g, v in groups.items():
        out[g] = {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
                  "sd": float(v.std(ddof=1)) if v.size > 1 else None}
    t = p = None
    if all(v.size >= 2 for v in groups.values()) and any(v.var() > 0 for v in groups.values()):
        res = stats.ttest_ind(groups["real"], groups["sham"], equal_var=False)
        t, p = float(res.statistic), float(res.pvalue)
    out["welch_t"], out["p"] = t, p
    return out


def describe_comparison(cmp: dict) -> str:
    """One comparison of :func:`compare_groups` in a line: each group's n, mean and s.d., then the test."""
    return ("; ".join(f"{g} n={cmp[g]['n']} mean {cell(cmp[g]['mean'])} sd {cell(cmp[g]['sd'])}"
                      for g in ("real", "sham"))
            + (f"; Welch t {cmp['welch_t']:.3f}, p {cmp['p']:.4f}" if cmp["p"] is not None
               else "; no test (it needs two sessions of each, not all alike)"))


def write_study_page(path: str, rows: list[dict], comparison: dict, headline: str, quality: str = "",
                     notes: list[str] = ()) -> str:
    """``study.html``: the headline, the table, and each session's music match by group (a strip plot)."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import html_page, png_base64

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for k, g in enumerate(("real", "sham")):
        v = [r["music_match"] for r in rows if r["feedback"] == g and r["music_match"] is not None]
        ax.scatter(np.full(len(v), k) + np.linspace(-0.08, 0.08, len(v)) if v else [], v, s=28,
                   color=("tab:blue", "tab:orange")[k], zorder=3)
        if v:
            ax.hlines(np.mean(v), k - 0.2, k + 0.2, color="k", lw=1.5)
    ax.set_xticks([0, 1], ["real", "sham"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel("mean cosine, decoded vs heard")
    ax.set_title("Music match per session (bar: group mean)")
    figure = png_base64(fig)
    plt.close(fig)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r[c]))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    extra = f"<h2>Sessions</h2><table><tr>{head}</tr>{body}</table>"
    page = html_page("b2m study", "Study: real against sham feedback",
                     [("Manipulation check", headline), *([("Data quality (should not differ)", quality)]
                                                          if quality else []),
                      *[("Not run alike", n) for n in notes]],
                     [("Music match per session", figure)], extra=extra)
    with open(path, "w") as f:
        f.write(page)
    return path
