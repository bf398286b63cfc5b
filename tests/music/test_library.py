"""Library build, contract validation, resumability and search."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from music.embedding import get_embedder
from music.library import ExactIndex, FaissHNSWIndex, Library, build_library, discover_sources, normalize_rows
from protocols.library import EmbedderMismatch, LibraryError, read_clips_tsv, validate_library


@pytest.fixture(scope="module")
def embedder():
    return get_embedder("musicnn-msd", threads=1)


@pytest.fixture
def sources(tmp_path, rng):
    import pretty_midi
    import soundfile as sf

    src = tmp_path / "src"
    src.mkdir()
    sr = 22050
    t = np.arange(int(7 * sr)) / sr
    sf.write(src / "tone.wav", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr)
    sf.write(src / "noise.flac", (0.1 * rng.standard_normal(4 * sr)).astype(np.float32), sr)
    (src / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    for i, p in enumerate([60, 64, 67, 72]):
        piano.notes.append(pretty_midi.Note(velocity=90, pitch=p, start=0.5 * i, end=0.5 * i + 0.45))
    pm.instruments.append(piano)
    pm.write(str(src / "arp.mid"))
    return src


def test_build_writes_the_contract_and_skips_bad_files(tmp_path, sources, embedder):
    units, problems = discover_sources([str(sources), str(tmp_path / "missing")], clip_s=3.0)
    lib_dir = tmp_path / "lib"
    res = build_library(str(lib_dir), units, embedder, problems=problems, clip_s=3.0)
    # tone: 7 s -> 3 s windows at 0, 3 (the 1 s remainder is < half a window: dropped);
    # noise: 4 s -> one 3 s window (1 s remainder dropped); arp.mid: one short clip
    assert res.n_clips == 4
    skipped = dict(res.skipped)
    assert any("broken.wav" in s for s in skipped) and str(tmp_path / "missing") in skipped
    m = validate_library(lib_dir)
    assert m["n_clips"] == 4 and m["embedder"] == embedder.identity()
    emb = np.load(lib_dir / "embeddings.npy", mmap_mode="r")
    assert emb.dtype == np.float32 and emb.shape == (4, 200)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    clips = read_clips_tsv(lib_dir / "clips.tsv")
    tone = sorted((c.start_s, c.duration_s) for c in clips if "tone" in c.id)
    assert tone == [(0.0, 3.0), (3.0, 3.0)]
    assert all(len(c.tag_list()) == 5 for c in clips)
    assert "skipped" in (lib_dir / "build.log").read_text() or (lib_dir / "skipped.tsv").read_text().count("\n") >= 3


def test_build_rerun_skips_done_units_and_gives_same_library(tmp_path, sources, embedder):
    units, _ = discover_sources([str(sources)], clip_s=3.0)
    lib_dir = str(tmp_path / "lib")
    first = build_library(lib_dir, units, embedder, clip_s=3.0)
    emb1 = np.load(os.path.join(lib_dir, "embeddings.npy"))
    again = build_library(lib_dir, units, embedder, clip_s=3.0)
    assert first.n_new == 4 and again.n_new == 0
    np.testing.assert_array_equal(np.load(os.path.join(lib_dir, "embeddings.npy")), emb1)


def test_an_edited_source_is_embedded_again_on_rebuild(tmp_path, sources, embedder):
    """A library points at its audio files: a file edited in place must not keep the old audio's
    embeddings and clips. The rebuilt library equals one built from scratch on the edited files."""
    import soundfile as sf

    units, _ = discover_sources([str(sources)], clip_s=3.0)
    lib_dir = str(tmp_path / "lib")
    build_library(lib_dir, units, embedder, clip_s=3.0)
    sr = 22050
    t = np.arange(int(10 * sr)) / sr  # longer (3 clips, not 2) and another pitch
    sf.write(sources / "tone.wav", (0.3 * np.sin(2 * np.pi * 880 * t)).astype(np.float32), sr)
    again = build_library(lib_dir, discover_sources([str(sources)], clip_s=3.0)[0], embedder, clip_s=3.0)
    assert again.n_new == 3  # only the edited file's clips
    fresh_dir = str(tmp_path / "fresh")
    build_library(fresh_dir, discover_sources([str(sources)], clip_s=3.0)[0], embedder, clip_s=3.0)
    ours, ref = Library(lib_dir), Library(fresh_dir)
    assert sorted(c.id for c in ours.clips) == sorted(c.id for c in ref.clips)
    order = {c.id: i for i, c in enumerate(ref.clips)}
    for i, c in enumerate(ours.clips):
        j = order[c.id]
        np.testing.assert_array_equal(np.asarray(ours.embeddings[i]), np.asarray(ref.embeddings[j]))
        assert (c.start_s, c.duration_s) == (ref.clips[j].start_s, ref.clips[j].duration_s)
    assert "changed since it was embedded" in (tmp_path / "lib" / "build.log").read_text()
    assert build_library(lib_dir, discover_sources([str(sources)], clip_s=3.0)[0], embedder, clip_s=3.0).n_new == 0
    mid = sources / "arp.mid"  # a MIDI file is a source file too
    os.utime(mid, ns=(mid.stat().st_atime_ns, mid.stat().st_mtime_ns + 10**9))
    assert build_library(lib_dir, discover_sources([str(sources)], clip_s=3.0)[0], embedder, clip_s=3.0).n_new == 1


def test_build_refuses_to_continue_with_another_embedder(tmp_path, sources, embedder):
    units, _ = discover_sources([str(sources / "tone.wav")], clip_s=3.0)
    lib_dir = str(tmp_path / "lib")
    build_library(lib_dir, units, embedder, clip_s=3.0)
    with pytest.raises(EmbedderMismatch, match="musicnn-mtt"):
        build_library(lib_dir, units, get_embedder("musicnn-mtt", threads=1), clip_s=3.0)


def test_validate_library_detects_tampering(tmp_path, sources, embedder):
    units, _ = discover_sources([str(sources / "tone.wav")], clip_s=3.0)
    lib_dir = tmp_path / "lib"
    build_library(str(lib_dir), units, embedder, clip_s=3.0)
    with open(lib_dir / "clips.tsv", "a") as f:
        f.write("x\ty\t0\t1\t\taudio\t\n")
    with pytest.raises(LibraryError, match="sha256"):
        validate_library(lib_dir)
    with pytest.raises(LibraryError, match="manifest.json"):
        validate_library(tmp_path)  # not a library at all


def test_library_search_finds_itself_and_tags(tmp_path, sources, embedder):
    units, _ = discover_sources([str(sources)], clip_s=3.0)
    lib_dir = tmp_path / "lib"
    build_library(str(lib_dir), units, embedder, clip_s=3.0)
    lib = Library(lib_dir)
    for i, clip in enumerate(lib.clips):
        hits = lib.search(np.asarray(lib.embeddings[i]), k=2)
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
        # the two windows of a steady tone tie; the clip itself is among the best
        assert clip.id in [c.id for c, s in hits if s > hits[0][1] - 1e-5]
    tag_hits = lib.search_tag(lib.tag_names[0], k=4)
    col = np.asarray(lib.tags[:, 0])
    assert [h[1] for h in tag_hits] == sorted(col.tolist(), reverse=True)
    with pytest.raises(LibraryError, match="not one of"):
        lib.search_tag("no-such-tag")


def test_exact_index_matches_brute_force_sort(rng):
    emb = normalize_rows(rng.standard_normal((500, 16)))
    q = rng.standard_normal((3, 16))
    ids, scores = ExactIndex(emb).search(q, k=7)
    ref = normalize_rows(q) @ emb.T
    for j in range(3):
        order = np.argsort(-ref[j], kind="stable")[:7]
        np.testing.assert_array_equal(ids[j], order)
        np.testing.assert_allclose(scores[j], ref[j, order], rtol=1e-6)


def test_faiss_hnsw_recall_on_clustered_data(rng):
    # clustered vectors, as real embeddings are; recall@10 vs exact search
    centres = rng.standard_normal((50, 32))
    emb = normalize_rows(centres[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 32)))
    q = normalize_rows(centres[rng.integers(0, 50, 50)] + 0.3 * rng.standard_normal((50, 32)))
    exact, _ = ExactIndex(emb).search(q, 10)
    approx, scores = FaissHNSWIndex(emb, ef_search=128).search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # descending


def test_cli_library_build_and_search(tmp_path, sources, b2m_proc):
    lib_dir = tmp_path / "lib"
    p = b2m_proc("library", "build", sources / "tone.wav", "--out", lib_dir, "--clip-s", "3", "--threads", "1")
    assert p.wait(timeout=120) == 0, p.stderr()
    assert json.loads(p.stdout().strip().splitlines()[-1])["n_clips"] == 2
    s = b2m_proc("library", "search", lib_dir, "--like", sources / "tone.wav", "-k", "2", "--json")
    assert s.wait(timeout=120) == 0, s.stderr()
    rows = [json.loads(line) for line in s.stdout().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["score"] > 0.99
    src = rows[0]["genre"] or rows[0]["source"]
    r = b2m_proc("library", "search", lib_dir, "--like", sources / "tone.wav", "-k", "2", "--relevant", src)
    assert r.wait(timeout=120) == 0, r.stderr()
    assert "precision@2 (%s): 1.00 (2 of the top 2)" % src in r.stderr()
    r = b2m_proc("library", "search", lib_dir, "--like", sources / "tone.wav", "-k", "2", "--relevant", "jazz")
    assert r.wait(timeout=120) == 0 and "precision@2 (jazz): 0.00 (0 of the top 2)" in r.stderr()


def test_precomputed_clip_embeddings_give_the_same_library(tmp_path, rng, embedder):
    from music.library import Unit

    sr = 16000
    clips = [(0.2 * rng.standard_normal(3 * sr)).astype(np.float32), np.sin(np.arange(3 * sr) / 7).astype(np.float32)]

    def units(pre: bool):
        out = []
        for i, x in enumerate(clips):
            meta = {}
            if pre:
                e = embedder.embed(x, sr)
                meta = {"clip_embedding": e.clip, "clip_tags": e.clip_tags}
            out.append(Unit(id=f"u{i}", source="test", genre="", produce=lambda x=x, m=meta: [(x, sr, 0.0, m)]))
        return out

    build_library(str(tmp_path / "a"), units(False), embedder, clip_s=3.0)
    build_library(str(tmp_path / "b"), units(True), embedder, clip_s=3.0)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "embeddings.npy"), np.load(tmp_path / "b" / "embeddings.npy"))
    assert ([c.top_tags for c in read_clips_tsv(tmp_path / "a" / "clips.tsv")]
            == [c.top_tags for c in read_clips_tsv(tmp_path / "b" / "clips.tsv")])
    bad = [Unit(id="bad", source="test", genre="", produce=lambda: [(clips[0], sr, 0.0, {"clip_embedding": np.ones(3)})])]
    res = build_library(str(tmp_path / "c"), bad, embedder, clip_s=3.0)
    assert res.n_clips == 0 and "do not fit" in res.skipped[0][1]


@pytest.fixture
def click_track(tmp_path):
    """7 s of 5 ms clicks at 120 BPM from 0.25 s, and a steady tone (no beat), at 22050 Hz."""
    import soundfile as sf

    src = tmp_path / "beat_src"
    src.mkdir()
    sr = 22050
    x = np.zeros(7 * sr, np.float32)
    click = (0.8 * np.sin(2 * np.pi * 1000 * np.arange(int(0.005 * sr)) / sr)).astype(np.float32)
    for t in np.arange(0.25, 7.0, 0.5):
        i = int(round(t * sr))
        x[i:i + len(click)] = click[: len(x) - i]
    sf.write(src / "clicks.wav", x, sr)
    t = np.arange(4 * sr) / sr
    sf.write(src / "tone.wav", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr)
    return src


def test_build_stores_each_clips_beats_as_read_from_its_file(tmp_path, click_track, embedder):
    import soundfile as sf

    from music.beats import estimate_beats

    units, _ = discover_sources([str(click_track)], clip_s=3.0)
    lib_dir = tmp_path / "lib"
    build_library(str(lib_dir), units, embedder, clip_s=3.0)
    assert "beats.npz" in validate_library(lib_dir)["files"]
    lib = Library(lib_dir)
    n_click = 0
    for i, clip in enumerate(lib.clips):
        tempo, beats = lib.beats(i)
        # the same samples the live session reads, through soundfile directly
        full, sr = sf.read(lib.audio_path(clip), dtype="float32", always_2d=True)
        a = int(round(clip.start_s * sr))
        seg = full[a: a + int(round(clip.duration_s * sr))].mean(axis=1)
        ref_tempo, ref_beats = estimate_beats(seg, sr)
        np.testing.assert_array_equal(beats, ref_beats)
        if "clicks" in clip.id:
            n_click += 1
            # and against the clicks themselves: every 0.5 s from 0.25 s of the file
            true = np.arange(0.25, 7.0, 0.5) - clip.start_s
            true = true[(true >= 0) & (true < clip.duration_s)]
            assert tempo == pytest.approx(120.0, abs=1.0)
            assert len(beats) == len(true) and np.max(np.abs(beats - true)) < 0.015
        else:
            assert np.isnan(tempo) and np.isnan(ref_tempo) and beats.size == 0
    assert n_click == 2


def test_bad_beats_file_is_refused_and_an_older_library_has_none(tmp_path, click_track, embedder):
    from protocols.library import write_beats

    units, _ = discover_sources([str(click_track / "clicks.wav")], clip_s=3.0)
    lib_dir = tmp_path / "lib"
    build_library(str(lib_dir), units, embedder, clip_s=3.0)
    write_beats(lib_dir / "beats.npz", [120.0], [[0.25, 0.75]])  # one clip's beats for a 2-clip library
    with pytest.raises(LibraryError, match=r"beats\.npz.*tempo_bpm \(2,\)"):
        validate_library(lib_dir, check_hashes=False)
    # a library built before beats were stored: no entry, no file; it loads and has no beats
    m = json.loads((lib_dir / "manifest.json").read_text())
    assert m["provenance"]["packages"]["numpy"] == np.__version__  # which code built it
    del m["files"]["beats.npz"]
    (lib_dir / "manifest.json").write_text(json.dumps(m))
    os.remove(lib_dir / "beats.npz")
    assert Library(lib_dir).beats(0) is None


def test_rebuilding_a_library_from_before_beats_adds_them(tmp_path, click_track, embedder, caplog):
    from protocols.record import RecordLog, scan_records

    units, _ = discover_sources([str(click_track)], clip_s=3.0)
    lib_dir = tmp_path / "lib"
    build_library(str(lib_dir), units, embedder, clip_s=3.0)
    before = Library(lib_dir)
    want = {c.id: before.beats(i) for i, c in enumerate(before.clips)}
    # the progress log as an earlier version wrote it: clip records without tempo/beats
    log = lib_dir / ".build" / "progress.log"
    records, _ = scan_records(log)
    os.remove(log)
    old = RecordLog(log)
    for r in records:
        old.append({k: v for k, v in r.header.items() if k not in ("tempo_bpm", "beats_s")}, bytes(r.payload))
    old.close()
    gone = next(c for c in before.clips if "tone" in c.id)
    os.remove(lib_dir / gone.path)  # and one clip's audio has since been lost
    with caplog.at_level("WARNING", logger="b2m.library"):
        res = build_library(str(lib_dir), units, embedder, clip_s=3.0)  # nothing new: the library is rewritten
    assert res.n_new == 0
    after = Library(lib_dir)
    for i, c in enumerate(after.clips):
        tempo, beats = after.beats(i)
        if c.id == gone.id:
            assert np.isnan(tempo) and beats.size == 0
        else:
            np.testing.assert_array_equal(beats, want[c.id][1])
    assert any(gone.id in m and "cannot be read" in m for m in caplog.messages)
