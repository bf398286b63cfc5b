"""``b2m study``: the sessions of a neurofeedback study side by side, real feedback against sham.

Each session folder is read from its record (the decisions, ``yoked.json`` and
``session_config.json``), not from its ``summary.json``, so a session that
crashed before its summary counts too. Per session: whether it was real or a
sham (and whose music), runs, volumes, decoded TRs, switches, mean FD, the
median over runs of each run's temporal SNR of the decoder's voxels, and
:func:`~realtime.session.report.music_match` (overall and per block
condition). Over sessions, the manipulation check a reviewer asks for to see
that real feedback followed the brain and the sham did not:

- music match of real against sham (:func:`compare_groups`): one value per
  participant and condition (the mean of their sessions: several sessions of
  one person are not independent), mean and s.d. per group, Welch's t-test
  over participants;
- beside it, the yoked pairs (:func:`compare_yoked`): a sham heard what its
  source real session played, so the two are not independent; each sham
  against its source, a paired t-test (scipy's ``ttest_rel``) over real
  participants who were sources (one pair each; the shams of one source are
  averaged, since one source may feed several).

And the data-quality confound check (:func:`quality_check`): head motion (mean
FD) and tSNR of real against sham, with Welch's test and an equivalence test
(:func:`welch_tost`: two one-sided Welch tests against a stated margin, by
default FD +-0.05 mm and tSNR +-10% of the real group's mean). A
non-significant difference is not evidence that the groups are alike; the
verdict is "equivalent within +-m" only when the TOST rejects both ends, and
"not shown equivalent" otherwise. Sessions run by other code, or with another
feedback policy or mode, are named (:func:`setup_differences`).
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

__all__ = ["session_row", "setup_differences", "participant_values", "compare_groups", "describe_comparison",
           "compare_yoked", "describe_yoked", "welch_tost", "equivalence", "describe_equivalence", "quality_check",
           "write_study_page", "cell", "COLUMNS", "QUALITY", "FD_MARGIN_MM", "TSNR_MARGIN", "UNIT"]

COLUMNS = ("session", "participant", "feedback", "yoked_to", "runs", "volumes", "decoded", "switches", "mean_fd_mm",
           "median_tsnr", "music_match", "music_match_feedback", "music_match_neutral", "own_agreement")
#: Compared between real and sham sessions beside the music match: the groups should be equivalent in them.
QUALITY = ("mean_fd_mm", "median_tsnr")
#: Default equivalence margins of the data-quality check: mean FD in millimetres, +-0.05 mm ...
FD_MARGIN_MM = 0.05
#: ... and tSNR as a fraction of the real group's mean, +-10%.
TSNR_MARGIN = 0.10
#: The unit of the real-against-sham tests, as the output says it.
UNIT = "participant (the mean of their sessions in that condition)"


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


def participant_values(rows: list[dict], key: str, feedback: str) -> dict:
    """``key`` per participant in one condition: ``{participant: (mean over their sessions, n sessions)}``.

    Sessions where ``key`` is None are left out; a participant with none is absent.
    """
    by: dict = {}
    for r in rows:
        if r["feedback"] == feedback and r[key] is not None:
            by.setdefault(r["participant"], []).append(float(r[key]))
    return {p: (float(np.mean(v)), len(v)) for p, v in by.items()}


def compare_groups(rows: list[dict], key: str = "music_match") -> dict:
    """``key`` of real against sham: n, mean and s.d. per group, and Welch's t-test (two-sided).

    The unit is the participant: each participant's sessions in a condition are
    averaged first (several sessions of one person are not independent), so
    ``n`` counts participants, ``n_sessions`` their sessions. The test needs two
    participants in each group, and some spread in them; otherwise ``t`` and
    ``p`` are None. ``participants_in_both`` names anyone with sessions in both
    conditions (then the two groups are not independent either).
    """
    from scipy import stats

    out: dict = {"unit": UNIT}
    values = {g: participant_values(rows, key, g) for g in ("real", "sham")}
    groups = {g: np.array([m for m, _ in v.values()], float) for g, v in values.items()}
    for g, v in groups.items():
        out[g] = {"n": int(v.size), "n_sessions": sum(k for _, k in values[g].values()),
                  "mean": float(v.mean()) if v.size else None, "sd": float(v.std(ddof=1)) if v.size > 1 else None}
    t = p = None
    if all(v.size >= 2 for v in groups.values()) and any(v.var() > 0 for v in groups.values()):
        res = stats.ttest_ind(groups["real"], groups["sham"], equal_var=False)
        t, p = float(res.statistic), float(res.pvalue)
    out["welch_t"], out["p"] = t, p
    out["participants_in_both"] = sorted(set(values["real"]) & set(values["sham"]))
    return out


def describe_comparison(cmp: dict) -> str:
    """One comparison of :func:`compare_groups` in a line: each group's n, mean and s.d., then the test."""
    sessions = sum(cmp[g].get("n_sessions", cmp[g]["n"]) for g in ("real", "sham"))
    both = cmp.get("participants_in_both") or []
    return ("; ".join(f"{g} n={cmp[g]['n']} mean {cell(cmp[g]['mean'])} sd {cell(cmp[g]['sd'])}"
                      for g in ("real", "sham"))
            + (f"; Welch t {cmp['welch_t']:.3f}, p {cmp['p']:.4f}" if cmp["p"] is not None
               else "; no test (it needs two participants of each, not all alike)")
            + f" (n = participants, each the mean of their sessions; {sessions} sessions)"
            + (f"; {len(both)} participant(s) in both conditions ({', '.join(both)}): the groups are not "
               "independent" if both else ""))


def compare_yoked(rows: list[dict], key: str = "music_match") -> dict:
    """Each sham session against the real session it was yoked to: the paired analysis.

    A sham played what its source real session played, so the two are not
    independent. Pairs are formed from the rows alone: a sham whose source is
    not among them (or has no ``key``) is listed in ``unpaired``. The unit is
    the real participant who was a source: the shams of one source session are
    averaged (one source may feed several shams), then that participant's
    source sessions, giving one (real, sham) pair per participant. The paired
    t-test (two-sided, scipy's ``ttest_rel``) needs two pairs whose differences
    are not all alike; otherwise ``t`` and ``p`` are None.

    Returns
    -------
    dict
        ``n_pairs``, ``n_sham_sessions`` and ``n_source_sessions`` paired,
        ``mean_difference`` and ``sd_difference`` (real - sham, over pairs),
        ``paired_t``, ``df``, ``p``, ``pairs`` (per participant: ``real``,
        ``sham``, ``difference``, ``sources``, ``shams``) and ``unpaired``.
    """
    from scipy import stats

    real = {os.path.normpath(r["session"]): r for r in rows if r["feedback"] == "real"}
    shams: dict = {}  # source session -> [sham values]
    used: dict = {}
    unpaired = []
    for r in rows:
        if r["feedback"] != "sham":
            continue
        src = os.path.normpath(r["yoked_to"]) if r["yoked_to"] else None
        if src not in real or real[src][key] is None or r[key] is None:
            unpaired.append(r["session"])
            continue
        shams.setdefault(src, []).append(float(r[key]))
        used.setdefault(src, []).append(r["session"])
    by_participant: dict = {}
    for src, vals in shams.items():
        by_participant.setdefault(real[src]["participant"], []).append((float(real[src][key]), float(np.mean(vals)),
                                                                        src))
    pairs = [{"participant": p, "real": float(np.mean([a for a, _, _ in v])),
              "sham": float(np.mean([b for _, b, _ in v])),
              "sources": [s for _, _, s in v], "shams": [x for _, _, s in v for x in used[s]]}
             for p, v in by_participant.items()]
    for pr in pairs:
        pr["difference"] = pr["real"] - pr["sham"]
    d = np.array([pr["difference"] for pr in pairs])
    t = p = None
    if d.size >= 2 and d.var() > 0:
        res = stats.ttest_rel([pr["real"] for pr in pairs], [pr["sham"] for pr in pairs])
        t, p = float(res.statistic), float(res.pvalue)
    return {"unit": "real participant who was a yoked source (the shams of each source averaged)",
            "n_pairs": int(d.size), "n_sham_sessions": sum(len(v) for v in used.values()),
            "n_source_sessions": len(shams), "mean_difference": float(d.mean()) if d.size else None,
            "sd_difference": float(d.std(ddof=1)) if d.size > 1 else None,
            "paired_t": t, "df": int(d.size - 1) if t is not None else None, "p": p,
            "pairs": pairs, "unpaired": unpaired}


def describe_yoked(cmp: dict) -> str:
    """:func:`compare_yoked` in a line."""
    if not cmp["n_pairs"]:
        text = "no yoked pairs among these sessions (no sham whose source real session was given)"
    else:
        text = (f"n={cmp['n_pairs']} pair(s) ({cmp['n_sham_sessions']} sham session(s) against "
                f"{cmp['n_source_sessions']} source session(s); one pair per real participant, the shams of a "
                f"source averaged), mean difference real - sham {cell(cmp['mean_difference'])} sd "
                f"{cell(cmp['sd_difference'])}"
                + (f"; paired t {cmp['paired_t']:.3f}, df {cmp['df']}, p {cmp['p']:.4f}" if cmp["p"] is not None
                   else "; no paired test (it needs two pairs, not all alike)"))
    if cmp["unpaired"]:
        text += f"; {len(cmp['unpaired'])} sham session(s) without their source among these: " + ", ".join(
            os.path.basename(s) for s in cmp["unpaired"])
    return text


def welch_tost(a: np.ndarray, b: np.ndarray, margin: float, alpha: float = 0.05) -> dict | None:
    """Equivalence of two means by two one-sided Welch t-tests (TOST).

    The null hypotheses are ``mean(a) - mean(b) <= -margin`` and
    ``mean(a) - mean(b) >= +margin``; rejecting both at ``alpha`` shows the
    difference lies within +-``margin``, the same as the ``1 - 2 alpha``
    Welch confidence interval lying inside it.

    Parameters
    ----------
    a : ndarray of shape (n_a,)
    b : ndarray of shape (n_b,)
    margin : float > 0
        In the units of ``a`` and ``b``.
    alpha : float in (0, 0.5)

    Returns
    -------
    dict or None
        ``difference`` (mean(a) - mean(b)), ``se``, ``df`` (Welch-Satterthwaite),
        ``t_lower`` and ``p_lower`` (against -margin), ``t_upper`` and
        ``p_upper`` (against +margin), ``p`` (the larger), ``ci`` (the
        ``1 - 2 alpha`` interval of the difference), ``equivalent``
        (``p < alpha``). None when undefined: fewer than two values in a
        group, or no spread in either.
    """
    from scipy import stats

    if not margin > 0:
        raise ValueError(f"the equivalence margin must be positive; got {margin}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5); got {alpha}")
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(np.sqrt(va + vb))
    if se == 0:
        return None
    df = float((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)))
    d = float(a.mean() - b.mean())
    t_lower, t_upper = (d + margin) / se, (d - margin) / se
    p_lower, p_upper = float(stats.t.sf(t_lower, df)), float(stats.t.cdf(t_upper, df))
    q = float(stats.t.ppf(1 - alpha, df))
    p = max(p_lower, p_upper)
    return {"difference": d, "se": se, "df": df, "t_lower": float(t_lower), "p_lower": p_lower,
            "t_upper": float(t_upper), "p_upper": p_upper, "p": p, "ci": [d - q * se, d + q * se],
            "ci_level": 1 - 2 * alpha, "alpha": alpha, "equivalent": bool(p < alpha)}


def equivalence(rows: list[dict], key: str, margin: float, relative: bool = False, unit: str = "",
                alpha: float = 0.05) -> dict:
    """Real against sham on ``key`` by :func:`welch_tost` over participants (as :func:`compare_groups`).

    ``margin`` is in the units of ``key``, or with ``relative`` a fraction of the
    real group's mean. Returns the margin as given and as applied, the TOST's
    figures (None where it cannot run) and the verdict in words.
    """
    real = np.array([m for m, _ in participant_values(rows, key, "real").values()], float)
    sham = np.array([m for m, _ in participant_values(rows, key, "sham").values()], float)
    applied = margin * abs(float(real.mean())) if relative and real.size else (None if relative else margin)
    said = (f"+-{100 * margin:g}% of the real group's mean" + (f" (+-{applied:.4g}{unit})" if applied else "")
            if relative else f"+-{margin:g}{unit}")
    out = {"test": "TOST, two one-sided Welch t-tests over participants", "margin": margin,
           "margin_relative_to_real_mean": relative, "margin_applied": applied, "margin_said": said}
    res = welch_tost(real, sham, applied, alpha) if applied else None
    out["tost"] = res
    if res is None:
        out["verdict"] = f"equivalence not tested (it needs two participants of each, not all alike); margin {said}"
    elif res["equivalent"]:
        out["verdict"] = f"equivalent within {said}"
    else:
        out["verdict"] = f"not shown equivalent within {said}"
    return out


def describe_equivalence(eq: dict) -> str:
    """:func:`equivalence` in words: the verdict, the TOST's p and the interval of the difference."""
    res = eq["tost"]
    if res is None:
        return eq["verdict"]
    return (f"{eq['verdict']} (TOST p {res['p']:.4f}; {100 * res['ci_level']:g}% CI of real - sham "
            f"{res['ci'][0]:.4g} to {res['ci'][1]:.4g})")


def quality_check(rows: list[dict], fd_margin_mm: float = FD_MARGIN_MM, tsnr_margin: float = TSNR_MARGIN,
                  alpha: float = 0.05) -> dict:
    """The data-quality confound check: each of :data:`QUALITY`, real against sham.

    Returns ``{key: compare_groups(rows, key) + {"equivalence": equivalence(...)}}``: the group
    comparison (Welch's t over participants) and the equivalence test, mean FD within
    +-``fd_margin_mm`` millimetres, tSNR within +-``tsnr_margin`` (a fraction) of the real group's mean.
    """
    if not fd_margin_mm > 0 or not tsnr_margin > 0:
        raise ValueError(f"equivalence margins must be positive; got FD {fd_margin_mm} mm, tSNR {tsnr_margin}")
    margins = {"mean_fd_mm": (fd_margin_mm, False, " mm"), "median_tsnr": (tsnr_margin, True, "")}
    return {k: {**compare_groups(rows, k), "equivalence": equivalence(rows, k, *margins[k][:2], unit=margins[k][2],
                                                                      alpha=alpha)}
            for k in QUALITY}


def write_study_page(path: str, rows: list[dict], comparison: dict, headline: str, quality: str = "",
                     notes: list[str] = (), yoked: str = "") -> str:
    """``study.html``: the headline (and the yoked pairs beside it), the data-quality check, the table, and each
    session's music match by group (a strip plot)."""
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
                     [("Manipulation check", headline),
                      *([("Manipulation check, yoked pairs", yoked)] if yoked else []),
                      *([("Data quality (equivalence, TOST)", quality)] if quality else []),
                      *[("Not run alike", n) for n in notes]],
                     [("Music match per session", figure)], extra=extra)
    with open(path, "w") as f:
        f.write(page)
    return path
