"""The decoder's rows, fit, decoding and Test-set scoring (``b2m train`` steps 4 and 5).

:func:`fit_decoder` fits ridge with one alpha per embedding dimension by
leave-one-run-out CV over the Training runs (:mod:`.ridge`), on one row per
presentation by default, and chooses the readout (:mod:`.readout`) on the same
held-out predictions. :func:`decode_presentations` decodes every presentation
of a set of runs as the live session would (unit-norm TR outputs averaged
over the presentation); :func:`clip_metrics` scores them with Brain2Music's
metrics (:mod:`.evaluate`) and keeps every clip's score for group statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from realtime.preprocessing import stack_delays

from . import evaluate as ev
from .readout import READOUT_SHRINKAGES, choose_readout
from .ridge import ridge_cv_fit, ridge_fit
from .stages import RunData
from .targets import StimulusTargets, excerpt_id

__all__ = ["DEVIATION_SCALES", "DecoderFit", "decoded_events", "presentation_ids", "presentation_rows", "fit_decoder", "decode_presentations",
           "tags_from_embeddings", "clip_metrics", "evaluate_decoder"]


def _xy(run: RunData, sel: np.ndarray, delays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoder rows of a run: inputs after volume t paired with the target of moment t - lag."""
    lag = max(delays)
    x = stack_delays(run.values[:, sel], delays)
    y = np.full_like(run.y, np.nan)
    y[lag:] = run.y[: len(run.y) - lag]
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    return x[ok], y[ok], np.flatnonzero(ok)


def decoded_events(run: RunData, delays) -> np.ndarray:
    """The presentation each volume's decoder row decodes (the moment ``t - max(delays)``).

    Returns
    -------
    ndarray of shape (n_volumes,), int
        Index into ``run.events``; -1 where that moment is silent or lies before the run.
    """
    lag = max(delays)
    ev = np.full(len(run.event_index), -1)
    ev[lag:] = run.event_index[: len(run.event_index) - lag]
    return ev


def presentation_ids(run_number: int, events: np.ndarray) -> np.ndarray:
    """Presentation ids unique across the runs of a set: ``events`` (indices into the run's events) of
    run ``run_number``; -1 (no presentation) stays -1."""
    events = np.asarray(events)
    return np.where(events >= 0, events + 100000 * run_number, -1)


def _clip_predictions(run: RunData, pred_rows: np.ndarray, rows: np.ndarray, delays) -> dict:
    """Mean prediction of each presentation: rows whose decoded moment lies in the event."""
    ev_of_moment = decoded_events(run, delays)[rows]
    out: dict[int, np.ndarray] = {}
    for j in np.unique(ev_of_moment):
        if j < 0:
            continue
        out[int(j)] = pred_rows[ev_of_moment == j].mean(0)
    return out


#: Scales of the decoded deviation from the mean embedding tried by :func:`fit_decoder`. The whitener
#: shrinks the badly decoded directions of the deviation, so whitened readouts need the larger scales
#: for the deviation to outweigh the mean embedding every clip shares.
DEVIATION_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


@dataclass
class DecoderFit:
    """A fitted linear decoder, ``embedding = normalize(y_mean + (x - x_mean) @ coef)``.

    Attributes
    ----------
    coef : ndarray of shape (len(delays) * n_selected, dim)
        Ridge coefficients times the readout's whitener times :attr:`scale`.
    x_mean : ndarray of shape (len(delays) * n_selected,)
    y_mean : ndarray of shape (dim,)
    alphas : ndarray of shape (dim,)
        Ridge alpha of each embedding dimension (leave-one-run-out CV).
    cv_scores : ndarray of shape (n_alphas, dim)
    scale : float
        Factor on the decoded deviation ``(x - x_mean) @ W`` from the mean
        embedding, chosen by held-out identification in the training runs.
        Ridge shrinks that deviation towards the mean embedding, which every
        clip shares; scaling it back stops raw correlations and cosine
        retrieval from being dominated by the mean. Outputs are unit-norm, so
        the scale also sets how much of the mean is left after centring: the
        centred score depends on it too.
    scale_cv : dict
        Held-out identification accuracy of each candidate scale at :attr:`shrinkage`: the
        mean of the raw, centred and within-genre accuracies (:func:`.readout.choose_readout`).
    shrinkage : float
        Shrinkage of the readout's error-covariance whitener
        (:func:`.readout.residual_whitener`; 1.0 is plain ridge), chosen with
        the scale by held-out identification in the training runs.
    shrinkage_cv : dict
        Best held-out identification accuracy of each candidate shrinkage.
    n_samples : int
        Rows the decoder was fit on.
    """

    coef: np.ndarray
    x_mean: np.ndarray
    y_mean: np.ndarray
    alphas: np.ndarray
    cv_scores: np.ndarray
    scale: float
    scale_cv: dict
    shrinkage: float
    shrinkage_cv: dict
    n_samples: int


def presentation_rows(run: RunData, sel: np.ndarray, delays, fit_on: str = "clip"):
    """Decoder training rows of a run.

    Parameters
    ----------
    fit_on : {"clip", "tr"}
        ``"tr"``: one row per TR (input after volume t, target of moment
        t - lag). ``"clip"``: one row per presentation, the mean of the TR
        rows whose decoded moment lies in it; the decoder is linear, so this
        predicts exactly the mean of the per-TR predictions the evaluation
        averages, from inputs with a tenth of the noise, and it is 10x
        fewer rows to fit.

    Returns
    -------
    x : ndarray of shape (n_rows, len(delays) * len(sel)), float32
    y : ndarray of shape (n_rows, dim)
    presentation : ndarray of shape (n_rows,), int
        Index into ``run.events`` of the presentation each row belongs to.
    """
    x, y, rows = _xy(run, sel, delays)
    ev_idx = decoded_events(run, delays)[rows]
    if fit_on == "tr":
        keep = ev_idx >= 0
        return x[keep], y[keep], ev_idx[keep]
    if fit_on != "clip":
        raise ValueError(f"fit_on must be 'clip' or 'tr', got {fit_on!r}")
    ids = np.unique(ev_idx[ev_idx >= 0])
    xa = np.stack([x[ev_idx == j].mean(0) for j in ids]) if len(ids) else x[:0]
    ya = np.stack([y[ev_idx == j][0] for j in ids]) if len(ids) else y[:0]
    return xa, ya, ids


def fit_decoder(runs: list[RunData], sel: np.ndarray, delays, alphas, *, fit_on: str = "clip",
                scales=DEVIATION_SCALES, shrinkages=READOUT_SHRINKAGES,
                progress: Callable[[int, int], None] | None = None) -> DecoderFit:
    """Fit the decoder on training runs: per-dimension ridge with leave-one-run-out alphas.

    The held-out predictions of that CV (each run predicted by a model fit
    on the others, at each dimension's chosen alpha) also choose the readout
    (:mod:`.readout`): the shrinkage of the error-covariance whitener and the
    deviation scale, by identification accuracy among the training
    presentations. Nothing here sees a Test run.

    Parameters
    ----------
    runs : list of RunData
        Training runs only.
    sel : ndarray of int
        Selected voxels (indices into the run values).
    delays : tuple of int
    alphas : sequence of float
    fit_on : {"clip", "tr"}
        See :func:`presentation_rows`.
    scales : sequence of float
        Candidate deviation scales; ``(1.0,)`` disables the calibration.
    shrinkages : sequence of float
        Candidate whitener shrinkages; ``(1.0,)`` keeps the plain ridge readout.
    """
    xs, ys, gs, ps, genres = [], [], [], [], []
    for i, r in enumerate(runs):
        x, y, pres = presentation_rows(r, sel, delays, fit_on)
        xs.append(x)
        ys.append(y)
        gs.append(np.full(len(x), i))
        ps.append(presentation_ids(i, pres))
        genres += [r.events[j].genre for j in pres]
    x, y, groups, pres = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), np.concatenate(ps)
    best, cv, coef, xm, ym, held = ridge_cv_fit(x, y, groups, np.asarray(alphas), progress=progress,
                                                return_predictions=True)
    lam, scale, whitener, table = choose_readout(held, y, ym, groups, pres, genres, shrinkages=shrinkages,
                                                 scales=scales)
    return DecoderFit((coef @ whitener) * scale, xm, ym, best, cv, scale,
                      {k: a["mean"] for k, a in table[lam].items()}, lam,
                      {la: max(a["mean"] for a in t.values()) for la, t in table.items()}, int(len(x)))


def decode_presentations(runs: list[RunData], coef, xm, ym, sel, delays) -> dict[str, list[np.ndarray]]:
    """Decode every presentation of ``runs``: the mean of its unit-norm TR predictions.

    Returns
    -------
    dict
        Excerpt id -> list (one per presentation) of ndarray of shape (dim,).
    """
    presentations: dict[str, list[np.ndarray]] = {}
    for run in runs:
        x, _, rows = _xy(run, sel, delays)
        pred = ev.unit_rows((x - xm) @ coef + ym)
        for j, p in _clip_predictions(run, pred, rows, delays).items():
            presentations.setdefault(excerpt_id(run.events[j]), []).append(p)
    return presentations


def tags_from_embeddings(emb: np.ndarray, train_emb: np.ndarray, train_tags: np.ndarray,
                         alpha: float = 1.0) -> np.ndarray:
    """Tag probabilities read out from embeddings: ridge on the tags' logits, fit on training excerpts only.

    Parameters
    ----------
    emb : ndarray of shape (n, dim)
        Embeddings to read (decoded Test clips).
    train_emb : ndarray of shape (n_train, dim)
    train_tags : ndarray of shape (n_train, n_tags)
        The embedder's tag probabilities of the training excerpts, in (0, 1).
    alpha : float
        Ridge penalty of the embedding -> logit map (with intercept).

    Returns
    -------
    ndarray of shape (n, n_tags), in (0, 1)
    """
    p = np.clip(train_tags, 1e-4, 1 - 1e-4)
    coef, xm, ym = ridge_fit(train_emb, np.log(p / (1 - p)), alpha)
    return 1 / (1 + np.exp(-((emb - xm) @ coef + ym)))


def clip_metrics(presentations: dict[str, list[np.ndarray]], targets: StimulusTargets, train_clip_emb: np.ndarray,
                 train_genres: list, centre: np.ndarray) -> dict:
    """Identification metrics of decoded Test presentations (repeats averaged) and the genre prior.

    Parameters
    ----------
    presentations : dict
        Excerpt id -> decoded embeddings of its presentations, each of shape (dim,).
    targets : StimulusTargets
    train_clip_emb : ndarray of shape (n_train_clips, dim)
        Clip embeddings of the Training excerpts (the genre prior and retrieval library).
    train_genres : list of str
    centre : ndarray of shape (dim,)
        Subtracted for the centred identification (the mean Training embedding).
    """
    keys = sorted(presentations)
    true = np.stack([targets[k].clip for k in keys])
    genres = [targets[k].genre for k in keys]
    # the repeat average, back on the unit sphere of the decoder's outputs and the targets: a mean of unit
    # vectors shrinks with their spread, and subtracting the (unit-scale) mean embedding from a shrunk vector
    # would leave a share of it in every clip (only the centred score depends on this; the others are
    # correlations or cosines of each vector)
    avg = ev.unit_rows(np.stack([np.mean(presentations[k], 0) for k in keys]))
    per_clip = ev.identification_per_clip(avg, true)
    centred = ev.identification_per_clip(avg, true, centre=centre)
    within = ev.identification_per_clip(avg, true, genres=genres, foils="same_genre")
    res = {
        "n_test_clips": len(keys),
        "n_presentations": int(sum(len(v) for v in presentations.values())),
        "identification_accuracy": float(np.nanmean(per_clip)),
        # clips resampled within genre, the accuracy recomputed from the comparisons (scores share foils)
        "identification_accuracy_ci95": ev.identification_bootstrap_ci(avg, true, genres=genres),
        "identification_accuracy_centred": ev.finite_mean(centred),
        "identification_accuracy_centred_ci95": ev.identification_bootstrap_ci(avg, true, genres=genres,
                                                                                centre=centre),
        "within_genre_identification_accuracy": ev.finite_mean(within),
        "within_genre_identification_accuracy_ci95": ev.identification_bootstrap_ci(avg, true, genres=genres,
                                                                                     foils="same_genre"),
        # against chance: targets permuted among all clips, or among a genre's clips only
        "identification_accuracy_p": ev.identification_permutation_p(avg, true),
        "within_genre_identification_accuracy_p": ev.identification_permutation_p(avg, true, genres=genres,
                                                                                  foils="same_genre"),
        "nway": ev.nway_topk(avg, true, ks=(1, 5)),
        "per_dim_correlation_mean": float(np.mean(ev.per_dim_correlation(avg, true))),
        "retrieval_genre_agreement": ev.retrieval_genre_agreement(avg, train_clip_emb, train_genres, genres),
        "retrieval_genre_confusion": ev.retrieval_genre_confusion(avg, train_clip_emb, train_genres, genres),
        # which genres the decoder tells their clips apart in, beyond genre (each clip against its genre's others)
        "within_genre_identification_by_genre": ev.by_genre(within, genres),
    }
    # single presentations: each presentation alone against the test clips' targets
    sp = ev.unit_rows(np.stack([p for k in keys for p in presentations[k]]))
    clip = np.repeat(np.arange(len(keys)), [len(presentations[k]) for k in keys])
    res["identification_accuracy_single"] = ev.finite_mean(ev.identification_per_presentation(sp, true, clip))
    res["within_genre_identification_accuracy_single"] = ev.finite_mean(
        ev.identification_per_presentation(sp, true, clip, genres=genres, foils="same_genre"))
    prior = ev.genre_prior_predictions(train_clip_emb, train_genres, genres)
    prior_within = ev.identification_per_clip(prior, true, genres=genres, foils="same_genre")
    prior_clip = ev.identification_per_clip(prior, true)
    res["genre_prior"] = {
        "identification_accuracy": float(np.nanmean(prior_clip)),
        "identification_accuracy_ci95": ev.identification_bootstrap_ci(prior, true, genres=genres),
        "identification_accuracy_centred": ev.identification_accuracy(prior, true, centre=centre),
        "within_genre_identification_accuracy": ev.finite_mean(prior_within),
        "within_genre_identification_accuracy_ci95": ev.identification_bootstrap_ci(prior, true, genres=genres,
                                                                                     foils="same_genre"),
    }
    # the decoder against the genre prior on the same clips: what it knows beyond genre shows here, not in
    # its raw accuracy, which genre alone nearly reaches (paired over clips; CI as above, both recomputed)
    res["beyond_genre_prior"] = ev.paired_identification_difference(avg, prior, true, genres=genres,
                                                                    centre=centre)
    # per clip, for group statistics across subjects (offline_training.group); NaN (no foil) -> null
    res["per_clip"] = {"excerpt": keys, "genre": genres,
                       "identification": _json_floats(per_clip),
                       "identification_centred": _json_floats(centred),
                       "within_genre": _json_floats(within)}
    res["_arrays"] = {"pred": avg, "true": true, "keys": keys, "genres": genres, "corr": ev.corr_matrix(avg, true),
                      "centre": centre, "genre_prior": prior, "single_pred": sp, "single_clip": clip}
    if len(targets.tag_names):
        # the paper's AudioSet class agreement, with the embedder's tags: read out from the decoded
        # embedding by a map fit on the excerpts that are not Test clips
        test = set(keys)
        train_keys = sorted(k for k in targets.by_id if k not in test)
        pred_tags = tags_from_embeddings(avg, np.stack([targets[k].clip for k in train_keys]),
                                         np.stack([targets[k].tags for k in train_keys]))
        true_tags = np.stack([targets[k].tags for k in keys])
        res["tag_agreement_top5"] = ev.tag_agreement(pred_tags, true_tags, 5)
        res["_arrays"] |= {"pred_tags": pred_tags, "true_tags": true_tags}
    return res


def _json_floats(values) -> list:
    """Floats for JSON, NaN as None (JSON has no NaN)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, float)]


def evaluate_decoder(test_runs: list[RunData], coef, xm, ym, sel, delays, targets: StimulusTargets,
                     train_clip_emb: np.ndarray, train_genres: list, centre: np.ndarray) -> dict:
    """Decode the Test runs and score them (:func:`decode_presentations`, :func:`clip_metrics`)."""
    return clip_metrics(decode_presentations(test_runs, coef, xm, ym, sel, delays), targets, train_clip_emb,
                        train_genres, centre)
