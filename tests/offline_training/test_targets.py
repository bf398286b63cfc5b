"""TR alignment of stimulus embeddings, on tiny WAVs and a tiny plug-in embedder."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from music.embedding import Embedder, Embedding, get_embedder, register_embedder
from offline_training.bids import Event
from offline_training.targets import drop_opening_repeat, embed_stimuli, excerpt_id, tr_targets


class LoudnessEmbedder(Embedder):
    """2-d embedding: (RMS, 1) per window; windows of 3 s at a chosen hop."""

    id, version, dim, sr, window_s = "loudness", "1", 2, 8000, 3.0
    tag_names = ("loud",)

    def __init__(self, hop_s: float = 3.0):
        self.hop_s = hop_s

    def embed(self, audio, sr):
        win, hop = int(self.window_s * sr), int(round(self.hop_s * sr))
        starts = np.arange(0, max(len(audio) - win, 0) + 1, hop)
        rms = np.array([np.sqrt(np.mean(audio[s:s + win] ** 2)) for s in starts])
        w = np.column_stack([rms, np.ones_like(rms)]).astype(np.float32)
        return Embedding(windows=w, times_s=starts / sr, tags=rms[:, None].astype(np.float32), tag_names=("loud",))


@pytest.fixture
def stimuli(tmp_path):
    sr = 8000
    t = np.arange(30 * sr) / sr
    for genre, track, amp in (("jazz", 1, 0.1), ("metal", 2, 0.5)):
        ramp = amp * (0.5 + t / 60)  # loudness grows along the track
        sf.write(tmp_path / f"{genre}.{track:05d}.wav", (ramp * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr)
    return tmp_path


def test_tr_targets_follow_the_events(stimuli, tmp_path):
    register_embedder("loudness", lambda **kw: LoudnessEmbedder(**kw))
    emb = get_embedder("loudness")
    events = [Event(0.0, 15.0, "jazz", 1, 0.0, 15.0), Event(15.0, 15.0, "metal", 2, 10.0, 25.0)]
    targets = embed_stimuli(events, str(stimuli), emb, tr_s=1.5, cache_dir=str(tmp_path / "cache"), sr=8000)
    assert set(targets.by_id) == {excerpt_id(e) for e in events}
    y, idx, k = tr_targets(events, 24, 1.5, targets, kind="clip")
    assert list(idx[:10]) == [0] * 10 and list(idx[10:20]) == [1] * 10 and list(idx[20:]) == [-1] * 4
    np.testing.assert_array_equal(k[:10], np.arange(10))
    assert np.isnan(y[20:]).all()
    np.testing.assert_allclose(np.linalg.norm(y[:20], axis=1), 1.0, atol=1e-6)
    yw, _, _ = tr_targets(events, 24, 1.5, targets, kind="window")
    metal = targets[excerpt_id(events[1])]
    # window targets step through the clip: TR k uses the window starting k * 1.5 s in
    assert metal.windows.shape[0] == 9  # 15 s clip, 3 s windows every 1.5 s
    np.testing.assert_array_equal(yw[10:19], metal.windows)
    np.testing.assert_array_equal(yw[19], metal.windows[-1])
    # the cache answers a second time with identical arrays
    again = embed_stimuli(events, str(stimuli), emb, tr_s=1.5, cache_dir=str(tmp_path / "cache"), sr=8000)
    np.testing.assert_array_equal(again[excerpt_id(events[0])].windows, targets[excerpt_id(events[0])].windows)


def test_a_shared_cache_never_returns_another_datasets_audio(stimuli, tmp_path):
    """Two datasets whose tracks share names but not audio (a re-simulated dataset, say) share one cache:
    each gets the embedding of its own audio, and the same audio is embedded only once."""
    calls = []

    class Counting(LoudnessEmbedder):
        def embed(self, audio, sr):
            calls.append(len(audio))
            return super().embed(audio, sr)

    register_embedder("loudness-counting", lambda **kw: Counting(**kw))
    emb = get_embedder("loudness-counting")
    other = tmp_path / "other"
    other.mkdir()
    for f in stimuli.glob("*.wav"):  # same names, louder and with a shifted ramp: different audio
        audio, sr = sf.read(f, dtype="float32")
        sf.write(other / f.name, np.clip(3.0 * audio[::-1], -1, 1), sr)
    events = [Event(0.0, 15.0, "jazz", 1, 0.0, 15.0), Event(15.0, 15.0, "metal", 2, 10.0, 25.0)]
    cache = str(tmp_path / "cache")
    first = embed_stimuli(events, str(stimuli), emb, tr_s=1.5, cache_dir=cache, sr=8000)
    n_first = len(calls)
    second = embed_stimuli(events, str(other), emb, tr_s=1.5, cache_dir=cache, sr=8000)
    assert len(calls) == 2 * n_first  # the other audio is embedded, not read from the cache
    fresh = embed_stimuli(events, str(other), emb, tr_s=1.5, sr=8000)
    for e in events:
        k = excerpt_id(e)
        np.testing.assert_array_equal(second[k].windows, fresh[k].windows)
        assert not np.allclose(second[k].windows, first[k].windows)
    n = len(calls)
    again = embed_stimuli(events, str(stimuli), emb, tr_s=1.5, cache_dir=cache, sr=8000)
    assert len(calls) == n  # both datasets' embeddings stay in the cache side by side
    for e in events:
        np.testing.assert_array_equal(again[excerpt_id(e)].windows, first[excerpt_id(e)].windows)


def test_clips_lists_each_presented_excerpt_once_sorted(rng):
    from types import SimpleNamespace

    from offline_training.targets import ExcerptEmbeddings, StimulusTargets

    a, b = Event(0.0, 15.0, "jazz", 1, 0.0, 15.0), Event(15.0, 15.0, "metal", 2, 10.0, 25.0)
    targets = StimulusTargets()
    for ev in (a, b):
        clip = rng.standard_normal(4)
        targets.by_id[excerpt_id(ev)] = ExcerptEmbeddings(clip=clip, windows=clip[None], tags=np.zeros(2), genre=ev.genre)
    runs = [SimpleNamespace(events=[b, a]), SimpleNamespace(events=[b])]  # metal twice, as a repeated clip
    keys, emb, genres = targets.clips(runs)
    assert keys == sorted([excerpt_id(a), excerpt_id(b)])
    assert genres == [targets[k].genre for k in keys] == ["jazz", "metal"]
    np.testing.assert_array_equal(emb, np.stack([targets[k].clip for k in keys]))


def test_tr_targets_refuses_events_it_would_drop_or_mislabel(stimuli, tmp_path):
    register_embedder("loudness", lambda **kw: LoudnessEmbedder(**kw))
    emb = get_embedder("loudness")
    jazz, metal = Event(0.0, 15.0, "jazz", 1, 0.0, 15.0), Event(15.0, 15.0, "metal", 2, 10.0, 25.0)
    targets = embed_stimuli([jazz, metal], str(stimuli), emb, tr_s=1.5, sr=8000)
    # 16 volumes = 24 s: the second excerpt would be cut, its last 6 s unlabelled
    with pytest.raises(ValueError, match=r"event 1 \(metal.00002@010.000, 15 s \+ 15 s\) ends after the run: "
                                         r"16 volumes of TR 1.5 s = 24 s"):
        tr_targets([jazz, metal], 16, 1.5, targets)
    # overlapping: the volumes both cover would go to one of them only
    late = Event(7.5, 15.0, "metal", 2, 10.0, 25.0, line=3)
    with pytest.raises(ValueError, match=r"event 1 \(metal.00002@010.000, line 3, 7.5 s \+ 15 s\) overlaps event 0"):
        tr_targets([jazz, late], 24, 1.5, targets)
    with pytest.raises(ValueError, match=r"covers no volume of the run \(TR 1.5 s\)"):
        tr_targets([Event(0.2, 1.0, "jazz", 1, 0.0, 15.0)], 24, 1.5, targets)


def test_each_runs_opening_repeat_is_dropped_as_ds003720_designs_it():
    """ds003720: a Training run opens with the previous run's last excerpt (the first run with the last
    run's), a Test run with its own last one. Those openings go; any other opening stays, repeated elsewhere
    or not, and so does every other presentation of a repeated excerpt."""
    def ev(onset, genre, track):
        return Event(float(onset), 15.0, genre, track, 1.0, 16.0)

    run1 = [ev(0, "rock", 2), ev(15, "jazz", 1), ev(30, "pop", 3)]   # opens with run 2's last
    run2 = [ev(0, "pop", 3), ev(15, "metal", 4), ev(30, "rock", 2)]  # opens with run 1's last
    kept, dropped = drop_opening_repeat([run1, run2], 1.5)
    assert kept == [run1[1:], run2[1:]] and dropped == [run1[0], run2[0]]
    test = [ev(0, "metal", 4), ev(15, "jazz", 1), ev(30, "metal", 4)]  # a Test run: its own last
    assert drop_opening_repeat([test], 1.5) == ([test[1:]], [test[0]])
    # repeated elsewhere, but not a buffer of this design (a Test set whose runs share their clips): kept
    other = [[ev(0, "jazz", 1), ev(15, "pop", 3)], [ev(0, "jazz", 1), ev(15, "soul", 7)]]
    assert drop_opening_repeat(other, 1.5) == (other, [])
    late = [ev(3, "jazz", 1), ev(18, "jazz", 1)]  # the run's first excerpt starts after its first TR: kept
    assert drop_opening_repeat([late], 1.5) == ([late], [])
    assert drop_opening_repeat([[], [ev(0, "jazz", 1)]], 1.5) == ([[], [ev(0, "jazz", 1)]], [])
