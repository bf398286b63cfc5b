"""``offline_training.decoding``: Test-set scoring of decoded presentations."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_tag_agreement_reads_tags_with_a_map_fit_on_training_excerpts_only(rng):
    """``tag_agreement_top5``: tags read out from the decoded clips by ridge on the tags' logits (checked
    against scikit-learn's ``Ridge``), fit on the excerpts that are not Test clips, then top-5 overlap."""
    from sklearn.linear_model import Ridge

    dim, n_tags = 6, 9
    mix = rng.standard_normal((dim, n_tags))
    targets = StimulusTargets(tag_names=tuple(f"t{j}" for j in range(n_tags)))
    keys = [f"g{k % 2}.{k:05d}@000.000" for k in range(30)]
    for k in keys:
        clip = rng.standard_normal(dim)
        clip /= np.linalg.norm(clip)
        tags = 1 / (1 + np.exp(-(clip @ mix + 0.3 * rng.standard_normal(n_tags))))
        targets.by_id[k] = ExcerptEmbeddings(clip=clip, windows=clip[None], tags=tags, genre=k[:2])
    test, train = keys[:10], keys[10:]
    pres = {k: [targets[k].clip + 0.3 * rng.standard_normal(dim)] for k in test}
    train_emb = np.stack([targets[k].clip for k in train])
    res = clip_metrics(pres, targets, train_emb, [k[:2] for k in train], train_emb.mean(0))

    train_tags = np.stack([targets[k].tags for k in train])
    ref = Ridge(alpha=1.0).fit(train_emb, np.log(train_tags / (1 - train_tags)))
    avg = np.stack([p[0] / np.linalg.norm(p[0]) for p in (pres[k] for k in sorted(test))])
    expected = 1 / (1 + np.exp(-ref.predict(avg)))
    np.testing.assert_allclose(res["_arrays"]["pred_tags"], expected, rtol=1e-10, atol=1e-12)
    true = np.stack([targets[k].tags for k in sorted(test)])
    overlap = [len(set(np.argsort(-p)[:5]) & set(np.argsort(-t)[:5])) / 5 for p, t in zip(expected, true)]
    assert res["tag_agreement_top5"] == np.mean(overlap)
    assert res["tag_agreement_top5"] > 0.5  # the tags follow the embedding, so the read-out recovers them

    # a Test clip's own tags never reach the map: changing them changes only the truth it is scored against
    targets.by_id[test[0]] = ExcerptEmbeddings(clip=targets[test[0]].clip, windows=targets[test[0]].windows,
                                               tags=np.full(n_tags, 0.5), genre=targets[test[0]].genre)
    again = clip_metrics(pres, targets, train_emb, [k[:2] for k in train], train_emb.mean(0))
    np.testing.assert_array_equal(again["_arrays"]["pred_tags"], res["_arrays"]["pred_tags"])


def test_within_genre_identification_by_genre_counts_each_genres_comparisons(rng):
    """Per genre: the share of each clip's comparisons with the other clips of its genre that it wins (the
    correlation with its own target above a foil's), counted here by brute force; over the genres, weighted by
    their clips, it is the overall within-genre figure. A genre of one clip has no foil: no figure."""
    keys = [f"g{k % 3}.{k:05d}@000.000" for k in range(13)]  # g0 has 5 clips, g1 and g2 4 each
    keys.append("g9.99999@000.000")  # alone in its genre
    targets = StimulusTargets()
    for k in keys:
        clip = rng.standard_normal(8) + 2.0
        targets.by_id[k] = ExcerptEmbeddings(clip=clip / np.linalg.norm(clip), windows=clip[None], tags=np.zeros(2),
                                             genre=k[:2])
    pres = {k: [targets[k].clip + 0.5 * rng.standard_normal(8)] for k in keys}
    train_emb = np.stack([targets[k].clip for k in keys])
    res = clip_metrics(pres, targets, train_emb, [k[:2] for k in keys], train_emb.mean(0))
    by = res["within_genre_identification_by_genre"]
    order = sorted(keys)
    for g in ("g0", "g1", "g2"):
        members = [k for k in order if k.startswith(g)]
        wins = []
        for k in members:
            own = np.corrcoef(pres[k][0], targets[k].clip)[0, 1]
            wins += [own > np.corrcoef(pres[k][0], targets[f].clip)[0, 1] for f in members if f != k]
        assert by[g]["n_clips"] == len(members)
        assert by[g]["mean"] == pytest.approx(np.mean(wins))  # each clip has the same number of foils
    assert by["g9"] == {"mean": None, "n_clips": 0}
    weighted = sum(v["mean"] * v["n_clips"] for v in by.values() if v["n_clips"]) / sum(v["n_clips"] for v in
                                                                                       by.values())
    assert weighted == pytest.approx(res["within_genre_identification_accuracy"])
    conf = res["retrieval_genre_confusion"]
    assert conf["genres"] == ["g0", "g1", "g2", "g9"] and np.sum(conf["counts"]) == len(keys)
