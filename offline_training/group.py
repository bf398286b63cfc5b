"""Group statistics over subjects' bundles (``b2m group BUNDLE... --out DIR``).

Brain2Music reported identification accuracy as the mean +- s.d. over its five
participants (0.876 +- 0.015 with MuLan), so one subject's figure is not yet
comparable with the paper. This module reads each bundle's ``metrics.json``,
where :func:`offline_training.decoding.clip_metrics` keeps every Test clip's
score (4 repeats averaged, causal preprocessing as deployed). For each metric
(raw, centred and within-genre identification; chance 0.5) it reports:

- each subject's accuracy and its clip-bootstrap CI (the one ``b2m train`` reports);
- the mean and s.d. over subjects, the paper's form;
- a one-sided one-sample t-test of the subject means against chance, with
  subjects as the unit of inference (random effects over subjects); its
  population is subjects listening to *these* Test clips (the clips are fixed);
- a crossed bootstrap CI of the group mean (:func:`crossed_bootstrap_ci`):
  subjects are resampled and, in the same replicate, one resample of the Test
  clips is shared by every drawn subject of a dataset. In ds003720 every
  subject hears the same 60 Test clips, so a clip that is hard to identify is
  hard for everyone (subjects and clips are crossed, not nested); the interval
  carries the between-subject and the clip-sampling variability, and
  generalises to other subjects *and* other clips like these. Clips are
  aligned across subjects by their excerpt id; subjects of different datasets
  (``001@site-a``) get their own clip resample per dataset.

The nested bootstrap that resamples each subject's clips independently
(:func:`hierarchical_bootstrap_ci`) treats the shared clip effect as if it
averaged out across subjects: with a clip effect of s.d. 0.15 over 13
subjects x 60 clips its nominal 95% interval covered the true mean in 79% of
200 simulated studies, the crossed one in 96.5%
(``tests/offline_training/test_group_crossed.py``). It is kept for designs
where each subject hears clips of their own.

The genre-prior baseline is summarised the same way. A reviewer's first
check, that every subject went through the same analysis, is made too: the
code that trained each bundle (its ``provenance``: b2m's version and git
commit) and its settings (``config``, paths and thread counts aside) are
compared, and any difference is named. Pure functions here;
:func:`write_group_report` writes ``group.json`` and ``group.html``.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from protocols.provenance import code_version

from .evaluate import finite_mean

__all__ = ["METRICS", "BRAIN2MUSIC_REFERENCE", "SubjectScores", "read_subject", "subject_labels",
           "align_clips", "crossed_bootstrap_ci", "clip_strata", "hierarchical_bootstrap_ci", "CI_DESIGN",
           "T_TEST_POPULATION",
           "analysis_differences", "describe_differences",
           "group_summary", "format_group", "write_group_report"]

#: Per-clip score keys of ``metrics.json`` -> label. Chance is 0.5 for all three.
METRICS = {"identification": "identification (raw)",
           "identification_centred": "identification (centred)",
           "within_genre": "within-genre identification"}
CHANCE = 0.5
#: Per-clip score key -> the key of its 95 % CI in ``metrics.json``'s causal block (as b2m train reports it).
_CI_KEYS = {"identification": "identification_accuracy_ci95",
            "identification_centred": "identification_accuracy_centred_ci95",
            "within_genre": "within_genre_identification_accuracy_ci95"}
#: The design the reported group CI assumes (written to ``group.json`` and the report).
CI_DESIGN = ("crossed: subjects resampled, and one resample of the Test clips (aligned by excerpt id) shared by "
             "every drawn subject of a dataset, since all subjects of a dataset heard the same clips; clips of "
             "different datasets are resampled separately")
#: The population the t-test's p refers to.
T_TEST_POPULATION = ("subjects listening to these Test clips (one mean per subject, df = subjects - 1); the clips "
                     "are fixed, so p does not generalise to other clips (the crossed CI does)")
#: Denk et al. (2023), Table 1: identification accuracy with MuLan, mean +- s.d. over 5 subjects (real fMRI).
BRAIN2MUSIC_REFERENCE = {"metric": "identification", "mean": 0.876, "sd": 0.015, "n_subjects": 5,
                         "embedding": "MuLan"}


@dataclass
class SubjectScores:
    """One subject's Test-clip scores, read from its bundle.

    Attributes
    ----------
    subject : str
        The BIDS label, e.g. ``"001"``.
    bundle : str
        The bundle folder.
    dataset : str or None
        The BIDS root it was trained on (absolute path), None for bundles
        written before ``b2m train`` recorded it.
    embedder : str
    excerpts : list of str
        Test excerpt ids, in the order of the score arrays.
    per_clip : dict
        :data:`METRICS` key -> ndarray of shape (n_clips,), accuracy in [0, 1]
        (NaN where a clip had no foil).
    genre_prior : dict
        :data:`METRICS` key -> the genre-prior baseline's accuracy (a float).
    """

    subject: str
    bundle: str
    embedder: str
    excerpts: list
    per_clip: dict
    genre_prior: dict = field(default_factory=dict)
    dataset: str | None = None
    config: dict = field(default_factory=dict)
    provenance: dict | None = None
    reported_ci: dict = field(default_factory=dict)


_PRIOR_KEYS = {"identification": "identification_accuracy",
               "identification_centred": "identification_accuracy_centred",
               "within_genre": "within_genre_identification_accuracy"}


def read_subject(bundle: os.PathLike | str) -> SubjectScores:
    """Read the per-clip Test scores from ``BUNDLE/metrics.json``.

    Raises
    ------
    ValueError
        Naming the file, when it is missing, is not JSON, or lacks the
        per-clip scores (bundles written before they were kept: retrain).
    """
    path = os.path.join(os.fspath(bundle), "metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; give bundle folders written by `b2m train`") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); retrain the bundle with `b2m train`") from None
    causal = m.get("causal") if isinstance(m, dict) else None
    pc = causal.get("per_clip") if isinstance(causal, dict) else None
    if not isinstance(pc, dict):
        raise ValueError(f"{path}: no causal.per_clip scores (the bundle predates them); retrain it with "
                         "this version of `b2m train`")
    excerpts = pc.get("excerpt")
    if not isinstance(excerpts, list) or not excerpts:
        raise ValueError(f"{path}: causal.per_clip.excerpt must be a non-empty list of Test excerpt ids")
    per_clip = {}
    for key in METRICS:
        vals = pc.get(key)
        if not isinstance(vals, list) or len(vals) != len(excerpts):
            raise ValueError(f"{path}: causal.per_clip.{key} must be a list of {len(excerpts)} scores "
                             "(one per excerpt); retrain the bundle with `b2m train`")
        try:
            arr = np.array([np.nan if v is None else float(v) for v in vals])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: causal.per_clip.{key} holds a value that is not a number") from None
        if np.any((arr < 0) | (arr > 1)):
            raise ValueError(f"{path}: causal.per_clip.{key} has scores outside [0, 1]")
        per_clip[key] = arr
    cfg = m.get("config", {}) if isinstance(m.get("config"), dict) else {}
    prior = causal.get("genre_prior", {}) if isinstance(causal.get("genre_prior"), dict) else {}
    dataset = m.get("dataset")
    return SubjectScores(subject=str(cfg.get("subject", os.path.basename(os.path.normpath(os.fspath(bundle))))),
                         bundle=os.fspath(bundle), embedder=str(cfg.get("embedder", "unknown")),
                         excerpts=[str(e) for e in excerpts], per_clip=per_clip,
                         genre_prior={k: float(prior[v]) for k, v in _PRIOR_KEYS.items() if v in prior},
                         dataset=str(dataset) if isinstance(dataset, str) and dataset else None, config=cfg,
                         provenance=m.get("provenance") if isinstance(m.get("provenance"), dict) else None,
                         reported_ci={k: list(causal[v]) for k, v in _CI_KEYS.items()
                                      if isinstance(causal.get(v), (list, tuple)) and len(causal[v]) == 2})


def subject_labels(subjects: Sequence[SubjectScores]) -> list[str]:
    """One label per subject: the BIDS label, or ``label@dataset`` (the dataset folder's name) where
    subjects of several datasets share a label.

    Raises
    ------
    ValueError
        The same subject of the same dataset twice, or a shared label where a
        bundle does not record its dataset (written before ``b2m train`` did).
    """
    by_label: dict[str, list[SubjectScores]] = {}
    for s in subjects:
        by_label.setdefault(s.subject, []).append(s)
    for label, group in by_label.items():
        if len(group) < 2:
            continue
        unknown = [s.bundle for s in group if s.dataset is None]
        if unknown:
            raise ValueError(f"subject {label} appears twice ({group[0].bundle} and {group[1].bundle}) and "
                             f"{unknown[0]} does not record its dataset, so they may be one person; give one "
                             "bundle per subject, or retrain the bundles with this version of `b2m train`")
        seen: dict[str, str] = {}
        for s in group:
            if s.dataset in seen:
                raise ValueError(f"subject {label} of {s.dataset} appears twice ({seen[s.dataset]} and "
                                 f"{s.bundle}); give one bundle per subject")
            seen[s.dataset] = s.bundle
    labels = []
    for s in subjects:
        group = by_label[s.subject]
        if len(group) == 1:
            labels.append(s.subject)
            continue
        # the dataset folder's name, or its whole path where two datasets' folders share a name
        folder = os.path.basename(os.path.normpath(s.dataset))
        shared = sum(os.path.basename(os.path.normpath(o.dataset)) == folder for o in group) > 1
        labels.append(f"{s.subject}@{os.path.normpath(s.dataset) if shared else folder}")
    return labels


def align_clips(per_subject: Sequence[np.ndarray], clip_keys: Sequence[Sequence[str]]) -> tuple[list, np.ndarray]:
    """Several subjects' per-clip scores as one matrix, the clips aligned by key.

    Parameters
    ----------
    per_subject : sequence of ndarray, each of shape (n_clips_s,)
        Per-clip scores of each subject.
    clip_keys : sequence of sequence of str, each of length n_clips_s
        The clip (excerpt id) of each score.

    Returns
    -------
    keys : list of str, length n_clips
        The union of the subjects' clips, sorted.
    Y : ndarray of shape (n_subjects, n_clips), float64
        ``Y[s, c]`` is subject ``s``'s score of clip ``keys[c]``; NaN where the
        subject has no score for it (not tested on it, or no foil).

    Raises
    ------
    ValueError
        A subject's keys and scores differ in length, or a key appears twice
        in one subject.
    """
    if len(per_subject) != len(clip_keys):
        raise ValueError(f"{len(per_subject)} score arrays but {len(clip_keys)} key lists; give one of each "
                         "per subject")
    keys = sorted({str(k) for ks in clip_keys for k in ks})
    col = {k: j for j, k in enumerate(keys)}
    Y = np.full((len(per_subject), len(keys)), np.nan)
    for s, (v, ks) in enumerate(zip(per_subject, clip_keys)):
        v = np.asarray(v, float)
        if v.shape != (len(ks),):
            raise ValueError(f"subject {s}: {v.size} scores but {len(ks)} clip keys; give one key per score")
        if len(set(ks)) != len(ks):
            dup = sorted({k for k in ks if list(ks).count(k) > 1})
            raise ValueError(f"subject {s}: clip key(s) {', '.join(map(str, dup[:3]))} appear more than once; "
                             "give one score per clip")
        Y[s, [col[str(k)] for k in ks]] = v
    return keys, Y


def _draw_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``n_boot`` resamples of size ``n`` with replacement:
    float64 array of shape (n_boot, n), every row summing to ``n``."""
    drawn = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(drawn.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def crossed_bootstrap_ci(per_subject: Sequence[np.ndarray], clip_keys: Sequence[Sequence[str]],
                         strata: Sequence | None = None, n_boot: int = 10000, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the group mean by a crossed (subjects x clips) bootstrap.

    The design it assumes is *crossed*: the subjects of one stratum (dataset)
    heard the same clips, so a clip's effect (an excerpt easy or hard to
    identify) is shared by all of them. Each replicate draws as many subjects
    as there are, with replacement, and, for each stratum, one resample with
    replacement of the stratum's clips (the union of its subjects' keys),
    applied to every drawn subject of that stratum; a subject's replicate
    score is the mean of its finite scores over the drawn clips (a clip drawn
    twice counts twice), and the replicate is the mean over drawn subjects.
    Clips of different strata are resampled independently, as different
    clips, even where their keys agree.

    With one subject this is the plain clip bootstrap; where all subjects
    score every clip alike it is the subject bootstrap. Resampling both ways
    counts the subject-by-clip residual in both margins, so the interval is a
    little conservative (Owen 2007, "the pigeonhole bootstrap"), the more so
    the fewer subjects a dataset has; subjects are drawn from the pool of all
    datasets, so the split between datasets varies by replicate. The nested
    :func:`hierarchical_bootstrap_ci` undercovers instead when clip effects
    are shared.

    Parameters
    ----------
    per_subject : sequence of ndarray, each of shape (n_clips_s,)
        Per-clip scores; NaNs are dropped.
    clip_keys : sequence of sequence of str, each of length n_clips_s
        The clip (excerpt id) of each score; scores are aligned across the
        subjects of a stratum by it.
    strata : sequence, length n_subjects, optional
        The dataset of each subject (any hashable; None is a stratum too).
        Default: one stratum, all subjects heard the same clips.
    n_boot : int
    level : float in (0, 1)
    seed : int

    Returns
    -------
    (low, high) : tuple of float
        NaN if no subject has a finite score.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if strata is None:
        strata = [None] * len(per_subject)
    if not len(per_subject) == len(clip_keys) == len(strata):
        raise ValueError(f"{len(per_subject)} score arrays, {len(clip_keys)} key lists and {len(strata)} strata; "
                         "give one of each per subject")
    vals = [np.asarray(v, float) for v in per_subject]
    keep = [i for i, v in enumerate(vals) if np.isfinite(v).any()]
    if not keep:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n_sub = len(keep)
    positions: dict = {}  # stratum -> columns of sub_means, in order of first appearance
    for pos, i in enumerate(keep):
        positions.setdefault(strata[i], []).append(pos)
    sub_means = np.empty((n_boot, n_sub))  # each subject's mean over its stratum's drawn clips
    for stratum, cols in positions.items():
        _, Y = align_clips([vals[keep[p]] for p in cols], [clip_keys[keep[p]] for p in cols])
        finite = np.isfinite(Y)
        n_clips = Y.shape[1]
        W = _draw_counts(rng, n_clips, n_boot)  # (n_boot, n_clips): times each clip is drawn
        with np.errstate(invalid="ignore", divide="ignore"):
            sub_means[:, cols] = (W @ np.where(finite, Y, 0.0).T) / (W @ finite.T.astype(float))
    V = _draw_counts(rng, n_sub, n_boot)  # (n_boot, n_sub): times each subject is drawn
    ok = np.isfinite(sub_means)  # False where a drawn clip set holds none of a subject's scores
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (V * np.where(ok, sub_means, 0.0)).sum(1) / (V * ok).sum(1)
    reps = reps[np.isfinite(reps)]
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return float(lo), float(hi)


def hierarchical_bootstrap_ci(per_subject: Sequence[np.ndarray], n_boot: int = 10000, level: float = 0.95,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the group mean by a nested two-level bootstrap.

    Each replicate draws as many subjects as there are, with replacement, and
    for every drawn subject (each draw anew) its clips with replacement; the
    replicate is the mean over drawn subjects of their clip means. With one
    subject this is the plain clip bootstrap.

    The design it assumes is *nested*: each subject heard clips of their own,
    so clip effects are independent between subjects. Where subjects heard the
    same clips (ds003720: all subjects, the same 60 Test clips) a clip's effect
    is shared and does not average out over subjects; this interval is then
    too narrow (about 80% coverage of a nominal 95% with a clip effect of
    s.d. 0.15, 13 subjects x 60 clips, in 200 simulated studies). Use :func:`crossed_bootstrap_ci` there;
    ``b2m group`` does.

    Parameters
    ----------
    per_subject : sequence of ndarray, each of shape (n_clips_s,)
        Per-clip scores; NaNs are dropped.
    n_boot : int
    level : float in (0, 1)
    seed : int

    Returns
    -------
    (low, high) : tuple of float
        NaN if no subject has a finite score.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    vals = [np.asarray(v, float) for v in per_subject]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if v.size]
    if not vals:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n_sub = len(vals)
    drawn = rng.integers(0, n_sub, size=(n_boot, n_sub))
    means = np.empty((n_boot, n_sub))
    for s, v in enumerate(vals):
        where = drawn == s
        k = int(where.sum())
        if k:
            means[where] = v[rng.integers(0, v.size, size=(k, v.size))].mean(1)
    reps = means.mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return float(lo), float(hi)


def _t_test_greater(means: np.ndarray, chance: float) -> tuple[float, float]:
    """One-sided one-sample t statistic and p of ``means`` against ``chance`` (NaN if undefined)."""
    from scipy.stats import t as t_dist

    n = len(means)
    if n < 2:
        return float("nan"), float("nan")
    sd = float(np.std(means, ddof=1))
    if sd == 0:
        return float("nan"), float("nan")
    t = (float(np.mean(means)) - chance) / (sd / math.sqrt(n))
    return t, float(t_dist.sf(t, n - 1))


#: ``config`` keys that may differ between subjects without the analysis differing (where files were, threads).
_NOT_ANALYSIS = ("subject", "cache", "stimuli", "preproc_cache", "threads")


def analysis_differences(subjects: Sequence[SubjectScores], labels: Sequence[str]) -> dict:
    """Where the subjects' analyses differ: ``{"code": {code: [labels]}, "settings": {key: {label: value}}}``,
    ``code`` only with more than one, ``settings`` the ``config`` keys with more than one value (paths and
    threads aside)."""
    codes: dict = {}
    for lab, s in zip(labels, subjects):
        codes.setdefault(code_version(s.provenance), []).append(lab)
    keys = sorted({k for s in subjects for k in s.config} - set(_NOT_ANALYSIS))
    settings = {k: {lab: s.config.get(k) for lab, s in zip(labels, subjects)} for k in keys
                if len({json.dumps(s.config.get(k), sort_keys=True) for s in subjects}) > 1}
    return {"code": codes if len(codes) > 1 else {}, "settings": settings}


def describe_differences(diff: dict) -> list[str]:
    """:func:`analysis_differences` as notes for the text and the page (empty when the analyses are the same)."""
    out = []
    if diff["code"]:
        out.append("the bundles were trained by different code: " + "; ".join(
            f"{code} ({', '.join('sub-' + lab for lab in labs)})" for code, labs in diff["code"].items()))
    for key, by in diff["settings"].items():
        out.append(f"the bundles were trained with different {key}: " + ", ".join(
            f"sub-{lab} {json.dumps(v)}" for lab, v in by.items()))
    return out


def clip_strata(subjects: Sequence[SubjectScores], labels: Sequence[str]) -> list[dict]:
    """The clip sets the crossed CI resamples, one per dataset: ``[{"dataset", "subjects": [labels],
    "n_clips"}]`` (``n_clips`` the union of the subjects' Test excerpt ids), in order of first appearance."""
    out: dict = {}
    for lab, s in zip(labels, subjects):
        st = out.setdefault(s.dataset, {"dataset": s.dataset, "subjects": [], "clips": set()})
        st["subjects"].append(lab)
        st["clips"].update(s.excerpts)
    return [{"dataset": st["dataset"], "subjects": st["subjects"], "n_clips": len(st["clips"])} for st in out.values()]


def _design_lines(summary: dict) -> list[str]:
    """What the CI and the t-test assume, in words (for the table and the page)."""
    strata = summary.get("clip_strata") or []
    per = "; ".join(f"{os.path.basename(os.path.normpath(st['dataset'])) if st['dataset'] else 'dataset not recorded'}"
                    f": {st['n_clips']} clips, {len(st['subjects'])} subject(s)" for st in strata)
    return [f"95% CI, {summary['ci_design']} ({summary['n_boot']} replicates{'; ' + per if len(strata) > 1 else ''})",
            f"t and p: one-sided against chance over the subject means; population: {summary['t_test_population']}"]


def group_summary(subjects: Sequence[SubjectScores], *, n_boot: int = 10000, seed: int = 0) -> dict:
    """Per-subject and group figures of every :data:`METRICS` entry.

    Raises
    ------
    ValueError
        No subject, a subject given twice, or bundles of different embedders
        (their scores are not comparable).
    """
    if not subjects:
        raise ValueError("no bundle given; pass one bundle folder per subject")
    labels = subject_labels(subjects)
    embedders = sorted({s.embedder for s in subjects})
    if len(embedders) > 1:
        raise ValueError(f"the bundles use different embedders ({', '.join(embedders)}): "
                         + "; ".join(f"{s.bundle}: {s.embedder}" for s in subjects)
                         + ". Group only bundles of one embedder")
    out: dict = {"n_subjects": len(subjects), "subjects": labels,
                 "bundles": [s.bundle for s in subjects], "datasets": [s.dataset for s in subjects],
                 "embedder": embedders[0], "chance": CHANCE,
                 "same_test_clips": all(sorted(s.excerpts) == sorted(subjects[0].excerpts) for s in subjects),
                 "n_boot": n_boot, "ci_design": CI_DESIGN, "clip_strata": clip_strata(subjects, labels),
                 "t_test_population": T_TEST_POPULATION, "metrics": {}, "genre_prior": {},
                 "reference": BRAIN2MUSIC_REFERENCE,
                 "code": {lab: code_version(s.provenance) for lab, s in zip(labels, subjects)},
                 "differences": analysis_differences(subjects, labels)}
    for i, key in enumerate(METRICS):
        per_sub = [s.per_clip[key] for s in subjects]
        means = np.array([finite_mean(v) for v in per_sub])
        finite = means[np.isfinite(means)]
        sd = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
        t, p = _t_test_greater(finite, CHANCE)
        lo, hi = crossed_bootstrap_ci(per_sub, [s.excerpts for s in subjects], [s.dataset for s in subjects],
                                      n_boot=n_boot, seed=seed + i)
        out["metrics"][key] = {
            "label": METRICS[key],
            # each subject's CI as b2m train reported it (the clips resampled within genre, the accuracy
            # recomputed); None for a bundle older than that CI
            "per_subject": {lab: {"mean": float(m), "n_clips": int(np.isfinite(v).sum()),
                                  "ci95": s.reported_ci.get(key)}
                            for lab, m, v, s in zip(labels, means, per_sub, subjects)},
            "mean": finite_mean(finite), "sd": sd, "sem": sd / math.sqrt(finite.size) if finite.size > 1 else sd,
            "t": t, "df": int(finite.size - 1), "p_greater_than_chance": p,
            "ci95_crossed": [lo, hi],
            "ci95_hierarchical": [lo, hi],  # the name older tooling reads; the crossed CI too (see ci_design)
        }
        prior = [s.genre_prior[key] for s in subjects if key in s.genre_prior]
        out["genre_prior"][key] = float(np.mean(prior)) if prior else float("nan")
    return out


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _fmt_p(p: float) -> str:
    """A p-value to 4 places; below 0.0001 as such, never as 0."""
    return "n/a" if p is None or not np.isfinite(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def format_group(summary: dict) -> str:
    """The summary as a plain-text table (what ``b2m group`` prints)."""
    subs = summary["subjects"]
    lines = [f"{summary['n_subjects']} subject(s), embedder {summary['embedder']}; Test clips, 4 repeats averaged, "
             "causal preprocessing; chance 0.5"]
    w = max([9] + [len(s) + 5 for s in subs])  # 'sub-' + label, a space between columns
    head = f"{'metric':<30}" + "".join(f"{'sub-' + s:>{w}}" for s in subs) + f"{'mean':>8}{'s.d.':>7}" \
        f"{'95% CI (crossed)':>26}{'t':>9}{'p':>9}{'genre prior':>13}"
    lines.append(head)
    for key, g in summary["metrics"].items():
        ci = g["ci95_crossed"]
        row = f"{g['label']:<30}" + "".join(f"{_fmt(g['per_subject'][s]['mean']):>{w}}" for s in subs)
        row += f"{_fmt(g['mean']):>8}{_fmt(g['sd']):>7}{_fmt(ci[0]) + '-' + _fmt(ci[1]):>26}"
        row += f"{_fmt(g['t'], 2):>9}{_fmt_p(g['p_greater_than_chance']):>9}{_fmt(summary['genre_prior'][key]):>13}"
        lines.append(row)
    ref = summary["reference"]
    lines.append(f"Brain2Music ({ref['embedding']}, real fMRI, {ref['n_subjects']} subjects): identification "
                 f"{ref['mean']:.3f} +- {ref['sd']:.3f} (mean +- s.d. over subjects)")
    lines += _design_lines(summary)
    if not summary["same_test_clips"]:
        lines.append("note: the subjects' Test clip sets differ; their accuracies are not over the same clips")
    lines += [f"note: {d}" for d in describe_differences(summary["differences"])]
    return "\n".join(lines)


def _figure(summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _png

    subs = summary["subjects"]
    keys = list(summary["metrics"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), sharey=True)
    for ax, key in zip(np.atleast_1d(axes), keys):
        g = summary["metrics"][key]
        x = np.arange(len(subs))
        m = [g["per_subject"][s]["mean"] for s in subs]
        # a bundle older than its CI has none: no bar (NaN)
        cis = [g["per_subject"][s]["ci95"] or (float("nan"), float("nan")) for s in subs]
        lo = [m_ - c[0] for c, m_ in zip(cis, m)]
        hi = [c[1] - m_ for c, m_ in zip(cis, m)]
        ax.errorbar(x, m, yerr=[lo, hi], fmt="o", color="tab:blue", capsize=3, label="subject (clip CI)")
        gx = len(subs) + 0.6
        ci = g["ci95_crossed"]
        ax.errorbar([gx], [g["mean"]], yerr=[[g["mean"] - ci[0]], [ci[1] - g["mean"]]], fmt="s", color="black",
                    capsize=4, label="group mean (crossed CI)")
        ax.axhline(CHANCE, color="grey", ls="--", lw=1, label="chance")
        prior = summary["genre_prior"][key]
        if np.isfinite(prior):
            ax.axhline(prior, color="tab:orange", ls=":", lw=1.5, label="genre prior")
        ref = summary["reference"]
        if key == ref["metric"]:
            ax.axhspan(ref["mean"] - ref["sd"], ref["mean"] + ref["sd"], color="tab:green", alpha=0.2,
                       label=f"Brain2Music ({ref['embedding']}) mean +- s.d.")
        ax.set_xticks(list(x) + [gx], [f"sub-{s}" for s in subs] + ["group"], rotation=45)
        ax.set_title(g["label"])
        ax.set_ylim(0.3, 1.0)
    np.atleast_1d(axes)[0].set_ylabel("accuracy (Test clips)")
    handles = {}
    for ax in np.atleast_1d(axes):  # one legend for all panels (the Brain2Music band is only on one)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8)
    return _png(fig)


def _jsonable(obj):
    """``obj`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_group_report(out: os.PathLike | str, summary: dict) -> str:
    """Write ``OUT/group.json`` and the self-contained ``OUT/group.html``; returns the HTML path."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "group.json"), "w", encoding="utf-8") as f:
        json.dump(_jsonable(summary), f, indent=2, allow_nan=False)
    subs = summary["subjects"]
    rows = []
    for g in summary["metrics"].values():
        ci = g["ci95_crossed"]
        cells = "".join(f"<td>{_fmt(g['per_subject'][s]['mean'])}</td>" for s in subs)
        rows.append(f"<tr><td>{html.escape(g['label'])}</td>{cells}<td><b>{_fmt(g['mean'])}</b></td>"
                    f"<td>{_fmt(g['sd'])}</td><td>{_fmt(ci[0])}-{_fmt(ci[1])}</td><td>{_fmt(g['t'], 2)}</td>"
                    f"<td>{_fmt_p(g['p_greater_than_chance'])}</td></tr>")
    prior = "".join(f"<td>{_fmt(summary['genre_prior'][k])}</td>" for k in summary["metrics"])
    ref = summary["reference"]
    bundles = "".join(f"<li>sub-{html.escape(s)}: {html.escape(b)} (trained by {html.escape(summary['code'][s])})</li>"
                      for s, b in zip(subs, summary["bundles"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>brain2music-rt group report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head>
<body><h1>Decoding across {summary['n_subjects']} subject(s)</h1>
<p>Test clips, the 4 repeats averaged, causal preprocessing as deployed; embedder
{html.escape(summary['embedder'])}. Chance is 0.5 for every metric.</p>
<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in _design_lines(summary))}</ul>
<table><tr><th>metric</th>{''.join(f'<th>sub-{html.escape(s)}</th>' for s in subs)}<th>mean</th><th>s.d.</th>
<th>95% CI (crossed)</th><th>t</th><th>p</th></tr>{''.join(rows)}</table>
<p>Genre-prior baseline (mean over subjects): <table><tr><th></th>
{''.join(f'<th>{html.escape(g["label"])}</th>' for g in summary['metrics'].values())}</tr>
<tr><td>genre prior</td>{prior}</tr></table></p>
<p>Brain2Music ({html.escape(ref['embedding'])}, real fMRI, {ref['n_subjects']} subjects): identification
{ref['mean']:.3f} &plusmn; {ref['sd']:.3f} (mean &plusmn; s.d. over subjects).</p>
{'' if summary['same_test_clips'] else '<p><b>The subjects were tested on different clip sets.</b></p>'}
{''.join(f'<p><b>Note: {html.escape(d)}.</b></p>' for d in describe_differences(summary['differences']))}
<img src='data:image/png;base64,{_figure(summary)}'>
<h2>Bundles</h2><ul>{bundles}</ul>
</body></html>"""
    path = os.path.join(out, "group.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
