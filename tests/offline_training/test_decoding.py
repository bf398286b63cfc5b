"""``offline_training.decoding``: Test-set scoring of decoded presentations."""

from __future__ import annotations

import numpy as np

from offline_training.decoding import clip_metrics
from offline_training.targets import ExcerptEmbeddings, StimulusTargets


def test_clip_metrics_do_not_depend_on_how_far_the_repeat_average_shrank(rng):
    """A mean of unit vectors shrinks with their spread; the scores are of the direction only."""
    keys = [f"g{k % 3}.{k:05d}@000.000" for k in range(12)]
    targets = StimulusTargets()
    for k in keys:
        clip = rng.standard_normal(8) + 3.0  # a shared offset, as embeddings have
        clip /= np.linalg.norm(clip)
        targets.by_id[k] = ExcerptEmbeddings(clip=clip, windows=clip[None], tags=np.zeros(2), genre=k[:2])
    pres = {}
    for k in keys:
        p = targets[k].clip + 0.4 * rng.standard_normal(8)
        pres[k] = [p / np.linalg.norm(p)]
    train_emb = np.stack([targets[k].clip for k in keys])
    genres = [k[:2] for k in keys]
    a = clip_metrics(pres, targets, train_emb, genres, train_emb.mean(0))
    shrunk = {k: [v[0] * s] for (k, v), s in zip(pres.items(), rng.uniform(0.2, 1.0, len(keys)))}
    b = clip_metrics(shrunk, targets, train_emb, genres, train_emb.mean(0))
    for key in ("identification_accuracy", "identification_accuracy_centred", "within_genre_identification_accuracy",
                "identification_accuracy_single"):
        assert a[key] == b[key]
