"""Group statistics over subjects: the bootstrap against scipy and a ground-truth
simulation, the t-test against scipy, and bad bundles named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from offline_training.group import (METRICS, format_group, group_summary, hierarchical_bootstrap_ci,
                                    read_subject, subject_labels, write_group_report)
from offline_training.targets import ExcerptEmbeddings, StimulusTargets
from offline_training.decoding import clip_metrics
from offline_training.train import _json_default


def _subject_metrics(rng, subject, noise, n_genres=5, per_genre=6, dim=16, embedder="musicnn-msd"):
    """metrics.json content as ``b2m train`` writes it, from :func:`clip_metrics` on synthetic decodes."""
    genres = [f"g{k}" for k in range(n_genres)]
    centres = rng.standard_normal((n_genres, dim))
    targets = StimulusTargets()
    keys = []
    for g in range(n_genres):
        for j in range(per_genre):
            clip = centres[g] + 0.7 * rng.standard_normal(dim)
            key = f"{genres[g]}.{j:05d}_0-15"
            targets.by_id[key] = ExcerptEmbeddings(clip=clip, windows=clip[None], tags=np.zeros(3), genre=genres[g])
            keys.append(key)
    pres = {k: [targets[k].clip + noise * rng.standard_normal(dim) for _ in range(4)] for k in keys}
    train_emb = np.vstack([centres[g] + 0.7 * rng.standard_normal((8, dim)) for g in range(n_genres)])
    train_genres = [genres[g] for g in range(n_genres) for _ in range(8)]
    res = clip_metrics(pres, targets, train_emb, train_genres, train_emb.mean(0))
    res.pop("_arrays")
    return {"config": {"subject": subject, "embedder": embedder}, "causal": res,
            **{k: res[k] for k in ("identification_accuracy", "identification_accuracy_centred",
                                   "within_genre_identification_accuracy")}}


def _write_bundle(path, metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics, default=_json_default))
    return path


def test_read_subject_per_clip_scores_reproduce_the_headline_figures(tmp_path, rng):
    m = _subject_metrics(rng, "001", noise=1.0)
    s = read_subject(_write_bundle(tmp_path / "b", m))
    assert s.subject == "001" and s.embedder == "musicnn-msd" and len(s.excerpts) == 30
    assert np.nanmean(s.per_clip["identification"]) == pytest.approx(m["identification_accuracy"], abs=1e-12)
    assert np.nanmean(s.per_clip["identification_centred"]) == pytest.approx(m["identification_accuracy_centred"],
                                                                            abs=1e-12)
    assert np.nanmean(s.per_clip["within_genre"]) == pytest.approx(m["within_genre_identification_accuracy"],
                                                                  abs=1e-12)
    assert s.genre_prior["within_genre"] == pytest.approx(0.5)  # a genre-only decoder, exactly chance


def test_one_subject_is_the_clip_bootstrap(rng):
    v = rng.uniform(0, 1, 60)
    ours = hierarchical_bootstrap_ci([v], n_boot=20000, seed=1)
    ref = stats.bootstrap((v,), np.mean, n_resamples=20000, method="percentile", random_state=2).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.006)


def test_without_clip_noise_the_ci_is_the_subject_bootstrap(rng):
    means = rng.uniform(0.5, 0.7, 8)
    ours = hierarchical_bootstrap_ci([np.full(40, m) for m in means], n_boot=20000, seed=1)
    ref = stats.bootstrap((means,), np.mean, n_resamples=20000, method="percentile",
                          random_state=2).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.004)


def test_hierarchical_ci_covers_the_true_group_mean():
    """Ground truth: subject means ~ N(0.6, 0.03), clip scores ~ subject mean + N(0, 0.2).

    Nominal coverage 0.95. Resampling both levels counts the clip variance
    twice (it is already in the subject means' spread), so the interval is
    known to be a little conservative: coverage may exceed 0.95, and must not
    fall below 0.90 (3 binomial s.d. of 400 datasets under 0.95 is 0.917).
    """
    rng = np.random.default_rng(7)
    hits = []
    for k in range(400):
        mu = 0.6 + 0.03 * rng.standard_normal(12)
        data = [m + 0.2 * rng.standard_normal(40) for m in mu]
        lo, hi = hierarchical_bootstrap_ci(data, n_boot=400, seed=k)
        hits.append(lo <= 0.6 <= hi)
    assert 0.90 <= np.mean(hits) <= 1.0


def test_group_summary_against_scipy(tmp_path, rng):
    subs = [read_subject(_write_bundle(tmp_path / f"b{i}", _subject_metrics(rng, f"00{i}", noise=n)))
            for i, n in enumerate((2.0, 3.0, 4.0), start=1)]
    g = group_summary(subs, n_boot=2000)
    for key in METRICS:
        means = np.array([np.nanmean(s.per_clip[key]) for s in subs])
        r = g["metrics"][key]
        assert r["mean"] == pytest.approx(means.mean(), abs=1e-12)
        assert r["sd"] == pytest.approx(np.std(means, ddof=1), abs=1e-12)
        ref = stats.ttest_1samp(means, 0.5, alternative="greater")
        assert r["t"] == pytest.approx(ref.statistic, rel=1e-10)
        assert r["p_greater_than_chance"] == pytest.approx(ref.pvalue, rel=1e-10)
        assert r["ci95_hierarchical"][0] < r["mean"] < r["ci95_hierarchical"][1]
        assert [r["per_subject"][s.subject]["mean"] for s in subs] == pytest.approx(list(means))
    assert g["same_test_clips"] is True
    text = format_group(g)
    assert "within-genre identification" in text and "0.876" in text


def test_one_subject_has_no_t_test(tmp_path, rng):
    s = read_subject(_write_bundle(tmp_path / "b", _subject_metrics(rng, "001", noise=1.0)))
    g = group_summary([s], n_boot=500)
    r = g["metrics"]["identification"]
    assert np.isnan(r["sd"]) and np.isnan(r["t"]) and np.isnan(r["p_greater_than_chance"])
    assert "n/a" in format_group(g)


def test_group_refuses_duplicates_mixed_embedders_and_nothing(tmp_path, rng):
    a = read_subject(_write_bundle(tmp_path / "a", _subject_metrics(rng, "001", noise=1.0)))
    b = read_subject(_write_bundle(tmp_path / "b", _subject_metrics(rng, "001", noise=1.0)))
    c = read_subject(_write_bundle(tmp_path / "c", _subject_metrics(rng, "002", noise=1.0, embedder="other")))
    with pytest.raises(ValueError, match=r"subject 001 appears twice .*/a and .*/b"):
        group_summary([a, b])
    with pytest.raises(ValueError, match=r"different embedders .*musicnn-msd.*other"):
        group_summary([a, c])
    with pytest.raises(ValueError, match="no bundle given"):
        group_summary([])


def _with_dataset(metrics, dataset):
    return {**metrics, "dataset": dataset}


def test_one_label_in_two_datasets_is_two_subjects(tmp_path, rng):
    """sub-001 of two datasets (two sites, two simulations) are two people; each keeps its own scores."""
    m_a, m_b = (_subject_metrics(rng, "001", noise=n) for n in (1.0, 3.0))
    a = read_subject(_write_bundle(tmp_path / "a", _with_dataset(m_a, "/data/site-a")))
    b = read_subject(_write_bundle(tmp_path / "b", _with_dataset(m_b, "/data/site-b")))
    c = read_subject(_write_bundle(tmp_path / "c", _with_dataset(_subject_metrics(rng, "002", noise=2.0),
                                                                 "/data/site-a")))
    assert a.dataset == "/data/site-a"
    g = group_summary([a, b, c], n_boot=500)
    assert g["subjects"] == ["001@site-a", "001@site-b", "002"]
    assert g["datasets"] == ["/data/site-a", "/data/site-b", "/data/site-a"]
    for key, headline in (("identification", "identification_accuracy"),
                          ("within_genre", "within_genre_identification_accuracy")):
        assert g["metrics"][key]["per_subject"]["001@site-a"]["mean"] == pytest.approx(m_a[headline], abs=1e-12)
        assert g["metrics"][key]["per_subject"]["001@site-b"]["mean"] == pytest.approx(m_b[headline], abs=1e-12)
    assert g["metrics"]["identification"]["df"] == 2
    text = format_group(g)
    assert "sub-001@site-a" in text and "sub-001@site-b" in text
    rows = [line for line in text.splitlines() if line.startswith(("metric", "identification (raw)"))]
    assert len({len(r) for r in rows}) == 1  # the wider labels keep the columns aligned


def test_labels_use_the_whole_path_where_dataset_folders_share_a_name(tmp_path, rng):
    a = read_subject(_write_bundle(tmp_path / "a", _with_dataset(_subject_metrics(rng, "001", noise=1.0),
                                                                 "/x/ds")))
    b = read_subject(_write_bundle(tmp_path / "b", _with_dataset(_subject_metrics(rng, "001", noise=1.0),
                                                                 "/y/ds")))
    assert subject_labels([a, b]) == ["001@/x/ds", "001@/y/ds"]


def test_one_subject_of_one_dataset_twice_is_refused(tmp_path, rng):
    m = _with_dataset(_subject_metrics(rng, "001", noise=1.0), "/data/site-a")
    a = read_subject(_write_bundle(tmp_path / "a", m))
    b = read_subject(_write_bundle(tmp_path / "b", m))
    with pytest.raises(ValueError, match=r"subject 001 of /data/site-a appears twice \(.*/a and .*/b\)"):
        group_summary([a, b])
    # a bundle that does not say where it came from may be the same person
    old = read_subject(_write_bundle(tmp_path / "old", _subject_metrics(rng, "001", noise=1.0)))
    with pytest.raises(ValueError, match=r"does not record its dataset.*retrain"):
        group_summary([a, old])


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    (json.dumps({"config": {}, "causal": {"identification_accuracy": 0.9}}), "no causal.per_clip"),
    (json.dumps({"causal": {"per_clip": {"excerpt": ["a", "b"], "identification": [0.5],
                                         "identification_centred": [0.5, 0.5], "within_genre": [0.5, None]}}}),
     "causal.per_clip.identification must be a list of 2"),
    (json.dumps({"causal": {"per_clip": {"excerpt": ["a"], "identification": [1.5],
                                         "identification_centred": [0.5], "within_genre": [None]}}}),
     "outside"),
])
def test_read_subject_names_the_file(tmp_path, content, message):
    b = tmp_path / "bundle"
    b.mkdir()
    if content is not None:
        (b / "metrics.json").write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        read_subject(b)
    assert str(b / "metrics.json") in str(e.value)


def test_group_report_is_strict_json_and_self_contained_html(tmp_path, rng):
    subs = [read_subject(_write_bundle(tmp_path / f"b{i}", _subject_metrics(rng, f"00{i}", noise=1.0)))
            for i in (1, 2)]
    g = group_summary(subs, n_boot=500)
    path = write_group_report(tmp_path / "out", g)
    page = open(path).read()
    assert "data:image/png;base64," in page and "sub-002" in page
    saved = json.loads((tmp_path / "out" / "group.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved["metrics"]["within_genre"]["mean"] == pytest.approx(g["metrics"]["within_genre"]["mean"])




def test_the_group_names_subjects_trained_by_other_code_or_settings(tmp_path, rng):
    """A reviewer's first check: every subject through the same analysis. Bundles trained by another commit,
    or with another setting, are named (paths and thread counts may differ); the same analysis gives no note."""
    prov = {"b2m": "0.1.0", "git_commit": "a" * 40, "git_dirty": False}
    cfg = {"embedder": "musicnn-msd", "n_voxels": 500, "delays": [2, 3, 4], "cache": "/tmp/x", "threads": 1}

    def bundle(name, subject, provenance, **config):
        m = _subject_metrics(rng, subject, noise=2.0)
        m["config"] = {**cfg, "subject": subject, **config}
        m["provenance"] = provenance
        return read_subject(_write_bundle(tmp_path / name, m))

    same = [bundle("a", "001", prov), bundle("b", "002", prov, cache="/elsewhere", threads=2)]
    g = group_summary(same, n_boot=200)
    assert g["differences"] == {"code": {}, "settings": {}} and "note" not in format_group(g)
    assert g["code"] == {"001": "b2m 0.1.0, git aaaaaaaaaa", "002": "b2m 0.1.0, git aaaaaaaaaa"}

    other = bundle("c", "003", {**prov, "git_commit": "b" * 40, "git_dirty": True}, n_voxels=1000)
    old = bundle("d", "004", None)  # trained before provenance was kept
    g = group_summary([*same, other, old], n_boot=200)
    assert g["differences"]["code"] == {"b2m 0.1.0, git aaaaaaaaaa": ["001", "002"],
                                        "b2m 0.1.0, git bbbbbbbbbb with uncommitted changes": ["003"],
                                        "not recorded": ["004"]}
    assert g["differences"]["settings"] == {"n_voxels": {"001": 500, "002": 500, "003": 1000, "004": 500}}
    text = format_group(g)
    assert ("note: the bundles were trained by different code: b2m 0.1.0, git aaaaaaaaaa (sub-001, sub-002); "
            "b2m 0.1.0, git bbbbbbbbbb with uncommitted changes (sub-003); not recorded (sub-004)") in text
    assert "note: the bundles were trained with different n_voxels: sub-001 500, sub-002 500, sub-003 1000" in text
    page = open(write_group_report(tmp_path / "out", g)).read()
    assert "trained with different n_voxels" in page and "(trained by not recorded)" in page
    assert json.load(open(tmp_path / "out" / "group.json"))["differences"]["settings"]["n_voxels"]["003"] == 1000
