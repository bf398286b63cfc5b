"""Block designs (``b2m session --protocol``): feedback, silence and the neutral clip within a run.

Real parts: nitime's run, the kit's ONNX bundle and library, the real mixer
writing a WAV. The references: the protocol's intervals computed here, the
same session without a protocol (the policy's own choices, which the blocks
must not change), and the WAV's samples (silence is exact zeros).
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
import soundfile as sf
from session_kit import kit_fixture, make_atlas, volumes

from music.library import Library
from protocols.session import SessionRecord
from realtime.audio import WavSink
from realtime.decoder import Decoder
from realtime.feedback import PolicyConfig
from realtime.session import SessionEngine, replay_session
from realtime.session.decisions import run_decisions
from realtime.session.engine import SessionOptions
from realtime.session.protocol import Block, Protocol, read_protocol

POLICY = PolicyConfig(smooth_trs=1, margin=0.0, min_dwell_s=5.0, crossfade_s=0.5, align="bar")
TR = 1.35  # nitime's run: 40 volumes
# feedback until 13.5 s (not listed), silence 13.5-27 s, neutral 27-40.5 s, then feedback again
BLOCKS = "onset\tduration\tcondition\n13.5\t13.5\tsilence\n27\t13.5\tneutral\n"


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


def expected_condition(i: int) -> str:
    t = (i + 1) * TR  # the decision after volume i
    return "silence" if 13.5 <= t < 27 else "neutral" if 27 <= t < 40.5 else "feedback"


def run(kit, folder, library, protocol=None, mode="retrieval", record_volumes=False):
    folder.mkdir(parents=True, exist_ok=True)
    out = WavSink(str(folder / "feedback.wav"), samplerate=48000).start()
    eng = SessionEngine(Decoder(kit.bundle), Library(library), out, POLICY, SessionOptions(mode=mode),
                        record_dir=str(folder), protocol=protocol)
    rec = SessionRecord(str(folder), sync=False) if record_volumes else None
    results = []
    for m in volumes(kit.nifti):
        if rec is not None:
            rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")
        results.extend(eng.on_volume(m, time.time()))
    eng.finish()
    out.close()
    return eng, results, out


def test_read_protocol_and_its_errors(tmp_path):
    p = tmp_path / "blocks.tsv"
    p.write_text(BLOCKS)
    proto = read_protocol(p)
    assert proto.blocks == (Block(13.5, 13.5, "silence"), Block(27.0, 13.5, "neutral"))
    assert [proto.condition_at(t) for t in (0, 13.49, 13.5, 26.99, 27, 40.49, 40.5)] == \
           ["feedback", "feedback", "silence", "silence", "neutral", "neutral", "feedback"]
    assert Protocol.from_dict(proto.to_dict()) == proto
    cases = [
        ("onset\tcondition\n0\tsilence\n", r"line 1: no column duration"),
        ("onset\tduration\tcondition\nten\t5\tsilence\n", r"line 2, column onset: 'ten' is not a number"),
        ("onset\tduration\tcondition\n0\t-5\tsilence\n", r"line 2, column duration: -5; give seconds >= 0"),
        ("onset\tduration\tcondition\n0\t5\trest\n", r"line 2, column condition: 'rest'; write one of feedback"),
        ("onset\tduration\tcondition\n0\t0\tsilence\n", r"line 2, column duration: 0; a block must last"),
        ("onset\tduration\tcondition\n0\t10\tsilence\n5\t10\tneutral\n", r"line 3: the block at 5 s begins "
                                                                         r"before the one at 0 s ends \(10 s\)"),
        ("onset\tduration\tcondition\n", r"no blocks"),
        ("onset\tduration\tcondition\n0\t5\n", r"line 2: 2 fields for 3 columns"),
    ]
    for text, message in cases:
        p.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_protocol(p)
    with pytest.raises(FileNotFoundError, match="--protocol .*: no such file"):
        read_protocol(tmp_path / "missing.tsv")


@pytest.mark.parametrize("mode", ["retrieval", "generation"])
def test_blocks_silence_and_neutral_the_music_and_feedback_resumes_where_the_policy_is(kit, tmp_path, mode):
    library = kit.library if mode == "retrieval" else make_atlas(str(tmp_path), 10, seed=3)
    (tmp_path / "b.tsv").write_text(BLOCKS)
    proto = read_protocol(tmp_path / "b.tsv")
    _, free, _ = run(kit, tmp_path / "free", library)
    eng, blocked, out = run(kit, tmp_path / "blocked", library, proto, mode=mode)
    lib = eng.library
    neutral = lib.clips[eng.policy.neutral_clip].id
    recs = dict(run_decisions(tmp_path / "blocked"))["run-01"]
    conditions = [expected_condition(i) for i in range(40)]
    assert [d["condition"] for d in recs] == conditions == [r.condition for r in blocked]  # recorded, published
    assert all(r.condition is None for r in free)
    assert {"feedback", "silence", "neutral"} == set(conditions)
    for i, (r, f, c) in enumerate(zip(blocked, free, conditions)):
        if f.embedding is not None:  # decoding goes on in every block
            np.testing.assert_array_equal(r.embedding, f.embedding)
        if c == "silence":
            assert (r.action, r.clip) == ("silence", None), i
        elif c == "neutral":
            assert r.clip == neutral, i
        else:  # the policy went on through the blocks: feedback plays its choice
            assert r.clip == f.clip, i
    first_silent = conditions.index("silence")
    back = len(conditions) - conditions[::-1].index("neutral")  # first feedback after the blocks
    if free[back].clip != neutral:  # feedback takes over from the neutral clip with a switch
        assert blocked[back].action == "switch"
    # the sound: a stop at the first silent decision (on a bar line or after), then exact zeros until the
    # neutral clip starts at its decision's frame (nothing plays, so no bar to wait for)
    log = out.executed()
    stop = next(e for e in log if e["kind"] == "stop")
    assert stop["frame"] == recs[first_silent]["audio_frame"] >= round((first_silent + 1) * TR * 48000)
    restart = next(e for e in log if e["kind"] == "switch" and e["frame"] > stop["frame"])
    first_neutral = conditions.index("neutral")
    assert restart["frame"] == recs[first_neutral]["audio_frame"] == round((first_neutral + 1) * TR * 48000)
    wav, _ = sf.read(tmp_path / "blocked" / "feedback.wav", dtype="float32")
    fade = round(POLICY.crossfade_s * 48000)
    assert restart["frame"] > stop["frame"] + fade
    assert not np.any(wav[stop["frame"] + fade: restart["frame"]])
    assert np.abs(wav[restart["frame"]: restart["frame"] + 48000]).max() > 0.01
    assert np.abs(wav[stop["frame"] - 48000: stop["frame"]]).max() > 0.01


def test_a_session_with_blocks_replays_identically_and_exports_its_blocks_as_events(kit, tmp_path):
    from realtime.session.bids import export_bids

    (tmp_path / "b.tsv").write_text(BLOCKS)
    proto = read_protocol(tmp_path / "b.tsv")
    folder = tmp_path / "session"
    eng, results, _ = run(kit, folder, kit.library, proto, record_volumes=True)
    lib, dec = Library(kit.library), Decoder(kit.bundle)
    report = replay_session(folder, lambda offsets: SessionEngine(dec, lib, None, POLICY, run_offsets=offsets,
                                                                   protocol=proto))
    assert report["identical"], report
    report = replay_session(folder, lambda offsets: SessionEngine(dec, lib, None, POLICY, run_offsets=offsets))
    assert not report["identical"]  # without the blocks the replay decides otherwise: the check can fail

    export_bids(folder, tmp_path / "bids", "01", library=lib, protocol=proto)
    with open(tmp_path / "bids" / "sub-01" / "func" / "sub-01_task-neurofeedback_run-01_events.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    blocks = [(float(r["onset"]), float(r["duration"]), r["trial_type"]) for r in rows
              if r["trial_type"].startswith("block_")]
    assert blocks == [(13.5, 13.5, "block_silence"), (27.0, 13.5, "block_neutral")]
    sound = [r for r in rows if not r["trial_type"].startswith("block_")]
    silent = [r for r in sound if r["trial_type"] == "silence"]
    assert len(silent) == 1 and silent[0]["clip"] == "n/a"
    recs = dict(run_decisions(folder))["run-01"]
    stop_s = recs[[d["action"] for d in recs].index("silence")]["audio_frame"] / 48000
    assert float(silent[0]["onset"]) == pytest.approx(stop_s, abs=1e-4)
    k = sound.index(silent[0])  # the music before ends where the silence begins, and the next sound ends it
    assert float(sound[k - 1]["onset"]) + float(sound[k - 1]["duration"]) == pytest.approx(stop_s, abs=1e-3)
    assert sound[k + 1]["trial_type"] == "music" and sound[k + 1]["clip"] == lib.clips[eng.policy.neutral_clip].id
    assert float(silent[0]["onset"]) + float(silent[0]["duration"]) == pytest.approx(float(sound[k + 1]["onset"]),
                                                                                     abs=1e-3)


def test_session_cli_protocol_runs_replays_and_exports(kit, b2m_proc, endpoint, tmp_path):
    blocks = tmp_path / "blocks.tsv"
    blocks.write_text(BLOCKS)
    out = tmp_path / "session"
    common = ("--model", kit.bundle, "--library", kit.library, "--bind", endpoint, "--no-dashboard", "--results",
              "none", "--min-dwell", "5", "--margin", "0", "--smooth-trs", "1", "--crossfade", "0.5",
              "--protocol", blocks)
    check = b2m_proc("session", "--check", "--audio", f"wav:{tmp_path}/check.wav", *common, name="check")
    assert check.wait(timeout=120) == 0, check.stderr()
    assert "PASS  protocol" in check.stdout() and "silence 13.5-27 s, neutral 27-40.5 s" in check.stdout()
    sess = b2m_proc("session", "--out", out, "--audio", f"wav:{out}/feedback.wav", "--runs", "1", *common,
                    name="session")
    sess.wait_for("ready", timeout=60)
    tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "max", "--run-id", "run-01",
                  "--quiet", name="replay")
    assert tx.wait() == 0, tx.stderr()
    assert sess.wait(timeout=120) == 0, sess.stderr()
    recs = dict(run_decisions(out))["run-01"]
    assert [d["condition"] for d in recs] == [expected_condition(i) for i in range(40)]
    rp = b2m_proc("session", "replay", out, name="replay-check")
    assert rp.wait(timeout=120) == 0 and "identical" in rp.stdout(), rp.stdout() + rp.stderr()
    ex = b2m_proc("session", "export", out, "--bids", tmp_path / "bids", "--subject", "01", name="export")
    assert ex.wait(timeout=120) == 0, ex.stderr()
    events = (tmp_path / "bids" / "sub-01" / "func" / "sub-01_task-neurofeedback_run-01_events.tsv").read_text()
    assert "Block design" in (out / "report.html").read_text()
    assert "\tblock_silence\t" in events and "\tblock_neutral\t" in events and "\tsilence\t" in events
    bad = tmp_path / "bad.tsv"
    bad.write_text("onset\tduration\tcondition\n0\t5\trest\n")
    refused = b2m_proc("session", "--out", tmp_path / "s2", "--audio", f"wav:{tmp_path}/x.wav",
                       *common[:-1], bad, name="refused")
    assert refused.wait(timeout=60) == 2 and "column condition: 'rest'" in refused.stderr()


def test_a_sham_of_a_session_with_silence_is_silent_where_its_source_was(kit, tmp_path):
    from realtime.session.yoked import yoked_schedule

    (tmp_path / "b.tsv").write_text(BLOCKS)
    _, src, _ = run(kit, tmp_path / "src", kit.library, read_protocol(tmp_path / "b.tsv"))
    lib = Library(kit.library)
    sched = yoked_schedule(tmp_path / "src", lib)
    out = WavSink(str(tmp_path / "sham.wav"), samplerate=48000).start()
    eng = SessionEngine(Decoder(kit.bundle), lib, out, POLICY, record_dir=str(tmp_path / "sham"), yoked=sched)
    sham = [r for m in volumes(kit.nifti) for r in eng.on_volume(m, time.time())]
    eng.finish()
    out.close()
    assert [(r.action == "silence", r.clip) for r in sham] == [(r.action == "silence", r.clip) for r in src]
    a, _ = sf.read(tmp_path / "src" / "feedback.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "sham.wav", dtype="float32")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["retrieval", "generation"])
def test_a_silence_shorter_than_a_bar_never_schedules_out_of_order(kit, tmp_path, mode):
    # the fade-out waits for the next bar, which can lie after the next decision: the music that follows
    # must start no earlier than the fade-out, not be refused by the mixer as out of time order
    library = kit.library if mode == "retrieval" else make_atlas(str(tmp_path), 10, seed=3)
    (tmp_path / "b.tsv").write_text("onset\tduration\tcondition\n5.4\t1.35\tsilence\n")  # volume 3's decision
    eng, results, out = run(kit, tmp_path / "s", library, read_protocol(tmp_path / "b.tsv"), mode=mode)
    assert [r.action for r in results].count("silence") == 1
    assert eng.counts["errors"] == 0 and "error" not in [r.action for r in results]
    log = out.executed()
    frames = [e["frame"] for e in log]
    assert frames == sorted(frames) and [e["kind"] for e in log].count("stop") == 2  # the block's, the end's
    stop = next(e for e in log if e["kind"] == "stop")
    assert stop["frame"] > round(4 * TR * 48000)  # the decision after volume 3 is at 4 TR ...
    assert stop["frame"] > round(5 * TR * 48000)  # ... and the fade-out begins after the next decision's frame
    after = log[log.index(stop) + 1]
    assert after["kind"] == "switch" and after["frame"] == stop["frame"]  # so the music returns as it fades


def test_a_session_is_continued_only_with_the_blocks_it_began_with(kit, tmp_path):
    from b2m.commands.session import _same_setup
    from music.library import Library
    from realtime.decoder import Decoder
    from realtime.session import write_session_info
    from realtime.session.replay import recorded_decisions

    parts = Decoder(kit.bundle), Library(kit.library), kit.bundle, kit.library
    _same_protocol = lambda folder, proto, continuing: _same_setup(folder, proto, *parts,  # noqa: E731
                                                                   continuing=continuing)

    (tmp_path / "b.tsv").write_text(BLOCKS)
    proto = read_protocol(tmp_path / "b.tsv")
    folder = tmp_path / "s"
    run(kit, folder, kit.library, proto)
    write_session_info(folder, {"protocol": proto.to_dict()})
    continuing = bool(recorded_decisions(folder)[0])  # as b2m session finds it
    assert continuing
    _same_protocol(str(folder), proto, continuing=continuing)  # the same design: fine
    with pytest.raises(ValueError, match=r"began with the blocks of .*b\.tsv; continue it with the same --protocol"):
        _same_protocol(str(folder), None, continuing=continuing)
    (tmp_path / "c.tsv").write_text("onset\tduration\tcondition\n0\t10\tsilence\n")
    with pytest.raises(ValueError, match="continue it with the same --protocol"):
        _same_protocol(str(folder), read_protocol(tmp_path / "c.tsv"), continuing=continuing)
    write_session_info(folder, {"protocol": None})
    with pytest.raises(ValueError, match="began without a --protocol"):
        _same_protocol(str(folder), proto, continuing=continuing)
    new = tmp_path / "new"
    _same_protocol(str(new), proto, continuing=bool(recorded_decisions(new)[0]))  # a new folder: anything goes


def test_the_report_shades_the_volumes_whose_decisions_fall_in_each_block(kit, tmp_path):
    from realtime.session.report import condition_spans

    (tmp_path / "b.tsv").write_text(BLOCKS)
    _, results, _ = run(kit, tmp_path / "s", kit.library, read_protocol(tmp_path / "b.tsv"))
    spans = condition_spans(results)
    for first, last, condition in spans:  # the closed form above, volume by volume
        assert {expected_condition(i) for i in range(first, last + 1)} == {condition}
        assert first == 0 or expected_condition(first - 1) != condition  # each span as long as it can be
        assert last == 39 or expected_condition(last + 1) != condition
    assert [c for _, _, c in spans] == ["feedback", "silence", "neutral", "feedback"]
    assert (spans[0][0], spans[-1][1]) == (0, 39)
    _, free, _ = run(kit, tmp_path / "free", kit.library)
    assert condition_spans(free) == []  # no block design, nothing to shade


def test_music_match_is_the_mean_cosine_of_decoded_and_heard_per_block(kit, tmp_path):
    from realtime.session.decisions import session_results
    from realtime.session.report import music_match

    (tmp_path / "b.tsv").write_text(BLOCKS)
    eng, _, _ = run(kit, tmp_path / "s", kit.library, read_protocol(tmp_path / "b.tsv"))
    got = music_match(session_results(tmp_path / "s"), eng.library)
    # independently, from the record's decisions and the library's stored embeddings
    lib_emb = np.load(f"{kit.library}/embeddings.npy")
    ids = [c.id for c in eng.library.clips]
    by = {}
    for d in dict(run_decisions(tmp_path / "s"))["run-01"]:
        if d["embedding"] is not None and d["clip"] is not None:
            c = float(d["embedding"].astype(np.float64) @ lib_emb[ids.index(d["clip"])].astype(np.float64))
            by.setdefault(d["condition"], []).append(c)
            by.setdefault("all", []).append(c)
    assert set(got) == set(by) == {"all", "feedback", "neutral"}  # silence plays nothing to compare
    for k, v in by.items():
        assert got[k]["n"] == len(v) and got[k]["mean_cosine"] == pytest.approx(np.mean(v), abs=1e-6)


def test_export_writes_each_runs_decisions_and_decoded_embeddings_as_a_derivative(kit, tmp_path):
    from realtime.session.bids import export_bids

    (tmp_path / "b.tsv").write_text(BLOCKS)
    proto = read_protocol(tmp_path / "b.tsv")
    folder = tmp_path / "session"
    run(kit, folder, kit.library, proto, record_volumes=True)
    export_bids(folder, tmp_path / "bids", "01", library=Library(kit.library), protocol=proto)
    deriv = tmp_path / "bids" / "derivatives" / "b2m"
    assert '"DatasetType": "derivative"' in (deriv / "dataset_description.json").read_text()
    tsv = deriv / "sub-01" / "func" / "sub-01_task-neurofeedback_run-01_desc-decoded_timeseries.tsv"
    with open(tsv) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    recs = dict(run_decisions(folder))["run-01"]
    assert len(rows) == len(recs) == 40
    for row, d in zip(rows, recs):
        assert float(row["onset"]) == pytest.approx((d["index"] + 1) * TR)
        assert (int(row["volume"]), row["action"], row["condition"]) == (d["index"], d["action"], d["condition"])
        assert row["clip"] == (d["clip"] or "n/a")
        if d["embedding"] is None:
            assert row["e000"] == "n/a" and row["decoded_volume"] == "n/a"
        else:  # float32 written with 9 significant digits comes back bit for bit
            back = np.array([row[f"e{k:03d}"] for k in range(d["embedding"].size)], dtype=np.float32)
            np.testing.assert_array_equal(back, d["embedding"])
        # the run's tSNR so far, as each decision recorded it (n/a before the run's 20th volume)
        if d["tsnr"] is None:
            assert row["tsnr"] == "n/a"
        else:  # 9 significant digits
            assert float(row["tsnr"]) == pytest.approx(d["tsnr"], rel=1e-8)
    assert [row["tsnr"] == "n/a" for row in rows] == [True] * 19 + [False] * 21
    assert list(rows[0]).index("tsnr") == list(rows[0]).index("dvars_pct") + 1
    side = json.loads(tsv.with_suffix(".json").read_text())
    assert side["onset"]["Units"] == "s" and side["tsnr"]["Units"] == ""
    assert "temporal SNR" in side["tsnr"]["Description"]
