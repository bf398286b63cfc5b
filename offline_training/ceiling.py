"""Noise ceiling of every voxel from the Test runs' repeated presentations.

ds003720 plays each Test excerpt four times. The response of a voxel in the
TRs after each presentation's onset is aligned across those repeats; the
explainable variance (:func:`offline_training.evaluate.explainable_variance`,
Sahani & Linden 2003, bias-corrected) is the share of that voxel's variance
that is locked to the stimulus. It bounds what any encoding model can explain
there: a single-presentation correlation cannot exceed ``sqrt(EV)``.

Rows used: for a presentation whose event covers the TR moments
``m0 .. m0 + n - 1``, the volumes ``m0 + lag .. m0 + lag + n - 1`` (the
response lags the sound by the hemodynamic delay). Every excerpt contributes
its first ``n_repeats`` presentations, each cut to the excerpt's shortest one,
so the repeats stay aligned sample for sample.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .evaluate import explainable_variance

__all__ = ["EV_LAG_S", "repeat_rows", "noise_ceiling"]

#: Delay between a presentation's TRs and the volumes that respond to it, seconds (the HRF peak, ~5 s).
EV_LAG_S = 4.5


def repeat_rows(event_index: Sequence[np.ndarray], excerpts: Sequence[Sequence[str]], lag: int,
                n_repeats: int | None = None) -> tuple[np.ndarray, dict]:
    """Which volume of which run is repeat ``r``'s sample ``k``.

    Parameters
    ----------
    event_index : sequence of ndarray of shape (n_volumes_run,), int
        Per run: the event heard at each TR moment, -1 if none
        (:func:`offline_training.targets.tr_targets`).
    excerpts : sequence of sequence of str
        Per run: the excerpt id of each event (same indexing as ``event_index``).
    lag : int
        Volumes between a moment and the volume taken for it (>= 0).
    n_repeats : int, optional
        Repeats to use; default the number of presentations most excerpts
        have. Excerpts heard fewer times are left out; those heard more often
        contribute their first ``n_repeats``.

    Returns
    -------
    rows : ndarray of shape (n_repeats, n_samples, 2), int
        ``(run, volume)`` of every sample; samples are aligned across repeats.
    info : dict
        ``n_repeats``, ``n_excerpts``, ``n_samples``, ``excerpts_left_out``.

    Raises
    ------
    ValueError
        Fewer than 2 repeats, or nothing to align.
    """
    if len(event_index) != len(excerpts):
        raise ValueError(f"event_index has {len(event_index)} runs but excerpts {len(excerpts)}")
    if lag < 0:
        raise ValueError(f"lag must be >= 0 volumes; got {lag}")
    pres: dict[str, list[np.ndarray]] = {}  # excerpt -> list of (n, 2) (run, volume) arrays, in run order
    for r, (idx, names) in enumerate(zip(event_index, excerpts)):
        idx = np.asarray(idx)
        n_vol = len(idx)
        for j in np.unique(idx[idx >= 0]):
            vols = np.flatnonzero(idx == j) + lag
            vols = vols[vols < n_vol]
            if vols.size:
                pres.setdefault(str(names[j]), []).append(np.column_stack([np.full(vols.size, r), vols]))
    if not pres:
        raise ValueError("no presentation found in the runs: are these the Test runs with their events?")
    counts = {k: len(v) for k, v in pres.items()}
    if max(counts.values()) < 2:
        raise ValueError("a noise ceiling needs repeated presentations; no excerpt in these runs is heard twice")
    if n_repeats is None:  # how often most excerpts are heard (ds003720: 4; a few Test excerpts get a 5th)
        values, freq = np.unique(list(counts.values()), return_counts=True)
        n_repeats = int(max(2, values[freq == freq.max()].max()))
    if n_repeats < 2:
        raise ValueError(f"n_repeats must be >= 2; got {n_repeats}")
    kept = sorted(k for k, c in counts.items() if c >= n_repeats)
    if not kept:
        raise ValueError(f"no excerpt was heard {n_repeats} times (most: {max(counts.values())})")
    blocks = []
    for k in kept:
        n = min(len(p) for p in pres[k][:n_repeats])
        blocks.append(np.stack([p[:n] for p in pres[k][:n_repeats]]))  # (n_repeats, n, 2)
    rows = np.concatenate(blocks, axis=1)
    return rows, {"n_repeats": int(n_repeats), "n_excerpts": len(kept), "n_samples": int(rows.shape[1]),
                  "excerpts_left_out": sorted(set(pres) - set(kept))}


def noise_ceiling(values: Sequence[np.ndarray], rows: np.ndarray, chunk: int = 20000) -> np.ndarray:
    """Explainable variance of every voxel at the aligned ``rows``.

    Parameters
    ----------
    values : sequence of ndarray of shape (n_volumes_run, n_voxels)
        Preprocessed runs, in the run order of ``rows``.
    rows : ndarray of shape (n_repeats, n_samples, 2), int
        From :func:`repeat_rows`.
    chunk : int
        Voxels per pass (bounds the memory to ``n_repeats * n_samples * chunk`` float64).

    Returns
    -------
    ndarray of shape (n_voxels,), float32
        Bias-corrected explainable variance (can be slightly negative where
        nothing is stimulus-locked).
    """
    n_vox = values[0].shape[1]
    out = np.empty(n_vox, np.float32)
    run, vol = rows[..., 0], rows[..., 1]
    for a in range(0, n_vox, chunk):
        b = min(a + chunk, n_vox)
        rep = np.empty(rows.shape[:2] + (b - a,), np.float64)
        for r in np.unique(run):
            sel = run == r
            rep[sel] = values[r][vol[sel], a:b]
        out[a:b] = explainable_variance(rep)
    return out
