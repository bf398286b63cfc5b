"""Yoked sham feedback: a session that plays what another session's participant heard.

The reference for every check is an independent real session: the source
session itself (what the sham must play, down to the WAV's samples) and a
real-feedback session of the sham participant's own decoder (what the sham's
``own_clip`` and embeddings must be).
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
import soundfile as sf
from session_kit import kit_fixture, volumes

from music.library import Library
from protocols.session import SessionRecord
from realtime.audio import WavSink
from realtime.decoder import Decoder
from realtime.feedback import PolicyConfig
from realtime.session import SessionEngine, replay_session
from realtime.session.decisions import run_decisions
from realtime.session.yoked import own_agreement, read_yoked, write_yoked, yoked_schedule

POLICY = PolicyConfig(smooth_trs=1, margin=0.0, min_dwell_s=5.0, crossfade_s=0.5, align="bar")


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii, other=True)  # kit.other: the sham participant's decoder


def session(kit, folder, bundle, msgs, yoked=None, record_volumes=False):
    """A real session in process (ONNX, preprocessing, WAV sink); returns the engine and its results."""
    folder.mkdir(parents=True, exist_ok=True)
    out = WavSink(str(folder / "feedback.wav")).start()
    eng = SessionEngine(Decoder(bundle), Library(kit.library), out, POLICY, record_dir=str(folder), yoked=yoked)
    rec = SessionRecord(str(folder), sync=False) if record_volumes else None
    results = []
    for m in msgs:
        if rec is not None:  # what the receiver does before handing a volume over
            rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")
        results.extend(eng.on_volume(m, time.time()))
    eng.finish()
    out.close()
    return eng, results


def decisions(folder) -> dict:
    return {run_id: ds for run_id, ds in run_decisions(folder)}


@pytest.fixture(scope="module")
def source(kit, tmp_path_factory):
    folder = tmp_path_factory.mktemp("source") / "session"
    eng, results = session(kit, folder, kit.bundle, volumes(kit.nifti))
    assert sum(r.action == "switch" for r in results) >= 2  # something to be yoked to
    return folder, results


def test_the_sham_plays_the_source_sample_for_sample_and_records_its_own_decoding(kit, source, tmp_path):
    src_dir, src_results = source
    lib = Library(kit.library)
    sched = yoked_schedule(src_dir, lib)
    assert [r["run_id"] for r in sched["runs"]] == ["run-01"]
    assert sched["runs"][0]["clips"] == [r.clip for r in src_results]

    # the same participant's volumes, decoded by another participant's model (another brain, in effect)
    _, own = session(kit, tmp_path / "real", kit.other, volumes(kit.nifti))
    assert [r.clip for r in own] != [r.clip for r in src_results]  # else the test could not tell them apart
    eng, sham = session(kit, tmp_path / "sham", kit.other, volumes(kit.nifti), yoked=sched)

    # heard: the source's music, switch for switch, and the very same samples
    assert [r.clip for r in sham] == [r.clip for r in src_results]
    assert [i for i, r in enumerate(sham) if r.action == "switch"] == \
           [i for i, r in enumerate(src_results) if r.action == "switch"]
    a, sr_a = sf.read(src_dir / "feedback.wav", dtype="float32")
    b, sr_b = sf.read(tmp_path / "sham" / "feedback.wav", dtype="float32")
    assert sr_a == sr_b and a.shape == b.shape
    np.testing.assert_array_equal(a, b)

    # recorded: this participant's own decoding and what real feedback would have played
    rec = decisions(tmp_path / "sham")["run-01"]
    assert [d["own_clip"] for d in rec] == [r.clip for r in own]
    assert [d["yoked_to"] for d in rec] == [["run-01", i] for i in range(40)]
    for d, r in zip(rec, own):
        if r.embedding is None:
            assert d["embedding"] is None
        else:
            np.testing.assert_array_equal(d["embedding"], r.embedding)
        assert [t[0] for t in d["topk"]] == [t[0] for t in r.topk]
    y = eng.stats()["yoked"]
    decoded = [i for i, r in enumerate(own) if r.embedding is not None]
    agree = np.mean([own[i].clip == src_results[i].clip for i in decoded])
    assert y["trs"] == 40 and y["beyond_source"] == 0
    assert own_agreement(tmp_path / "sham") == pytest.approx(agree) and own_agreement(tmp_path / "real") is None
    assert eng.counts["switches"] == sum(r.action == "switch" for r in src_results)
    assert y["runs"] == {"run-01": "run-01"}


def test_a_sham_run_longer_than_its_source_keeps_the_last_clip_and_a_second_run_is_matched_by_order(kit, source,
                                                                                                  tmp_path):
    src_dir, src_results = source
    short = tmp_path / "short"
    session(kit, short, kit.bundle, volumes(kit.nifti)[:25])
    sched = yoked_schedule(short, Library(kit.library))
    assert len(sched["runs"][0]["clips"]) == 25
    msgs = volumes(kit.nifti, "a") + volumes(kit.nifti, "b")
    eng, sham = session(kit, tmp_path / "sham", kit.other, msgs, yoked=sched)
    a = [r for r in sham if r.run_id == "a"]
    b = [r for r in sham if r.run_id == "b"]
    assert [r.clip for r in a[:25]] == [r.clip for r in src_results[:25]]
    assert {r.clip for r in a[25:]} | {r.clip for r in b} == {src_results[24].clip}  # kept, never switched
    assert all(r.action != "switch" for r in a[25:] + b)
    assert eng.stats()["yoked"]["beyond_source"] == 15 + 40
    assert eng.stats()["yoked"]["runs"] == {"a": "run-01", "b": None}
    rec = decisions(tmp_path / "sham")
    assert all(d["yoked_to"] is None for d in rec["b"]) and rec["a"][24]["yoked_to"] == ["run-01", 24]


def sham_folder(kit, source, tmp_path):
    """A new sham session folder yoked to ``source`` (as ``b2m session --yoked-from`` starts one), and the library."""
    lib = Library(kit.library)
    folder = tmp_path / "sham"
    folder.mkdir()
    write_yoked(folder, yoked_schedule(source[0], lib))
    return folder, lib


def test_a_sham_session_replays_identically_from_its_own_record(kit, source, tmp_path):
    folder, lib = sham_folder(kit, source, tmp_path)
    session(kit, folder, kit.other, volumes(kit.nifti), yoked=read_yoked(folder), record_volumes=True)
    dec = Decoder(kit.other)
    report = replay_session(folder, lambda offsets: SessionEngine(dec, lib, None, POLICY, run_offsets=offsets,
                                                                   yoked=read_yoked(folder)))
    assert report["identical"], report
    # and without the yoke the replay sees other music: the comparison can fail
    report = replay_session(folder, lambda offsets: SessionEngine(dec, lib, None, POLICY, run_offsets=offsets))
    assert not report["identical"] and report["clip_mismatches"] > 0


def test_a_source_that_cannot_be_yoked_to_is_refused_by_name(kit, source, tmp_path):
    src_dir, _ = source
    lib = Library(kit.library)
    with pytest.raises(ValueError, match="no such folder"):
        yoked_schedule(tmp_path / "nowhere", lib)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no decisions in its runs/\*/decisions.log"):
        yoked_schedule(tmp_path / "empty", lib)
    (src_dir / "session_config.json").write_text(json.dumps({"mode": "generation"}))
    try:
        with pytest.raises(ValueError, match="--mode generation"):
            yoked_schedule(src_dir, lib)
        # the sham must sound as the source did: the same level (a record from before --level-dbfs: none)
        (src_dir / "session_config.json").write_text(json.dumps({"mode": "retrieval"}))
        with pytest.raises(ValueError, match="at the files' own levels and this one would at -20 dBFS; give "
                                             "--level-dbfs none"):
            yoked_schedule(src_dir, lib)
        assert yoked_schedule(src_dir, lib, level_dbfs=None)["runs"]
        (src_dir / "session_config.json").write_text(json.dumps({"mode": "retrieval",
                                                                 "options": {"level_dbfs": -20.0}}))
        with pytest.raises(ValueError, match="at -20 dBFS and this one would at -26 dBFS; give --level-dbfs -20"):
            yoked_schedule(src_dir, lib, level_dbfs=-26.0)
        assert yoked_schedule(src_dir, lib)["runs"]
    finally:
        (src_dir / "session_config.json").unlink()
    # a library without the source's clips: the same clips under other ids
    other = tmp_path / "otherlib"
    import shutil

    shutil.copytree(kit.library, other)
    tsv = other / "clips.tsv"
    head, *rows = tsv.read_text().splitlines()
    tsv.write_text("\n".join([head] + ["x" + r for r in rows]) + "\n")
    with pytest.raises(ValueError, match=r"this library does not have .*give --library"):
        yoked_schedule(src_dir, Library(str(other), check_hashes=False))


def test_session_cli_yoked_from_plays_the_source_and_replays(kit, source, b2m_proc, endpoint, tmp_path):
    src_dir, src_results = source
    out = tmp_path / "sham"
    common = ("--library", kit.library, "--bind", endpoint, "--no-dashboard", "--results", "none",
              "--min-dwell", "5", "--margin", "0", "--smooth-trs", "1", "--crossfade", "0.5", "--runs", "1")
    check = b2m_proc("session", "--check", "--model", kit.other, "--yoked-from", src_dir, "--audio",
                     f"wav:{tmp_path}/check.wav", *common, name="check")
    assert check.wait(timeout=120) == 0, check.stderr()
    assert "PASS  yoked source" in check.stdout() and "1 run(s) (40 volumes)" in check.stdout()
    sess = b2m_proc("session", "--model", kit.other, "--out", out, "--yoked-from", src_dir,
                    "--audio", f"wav:{out}/feedback.wav", *common, name="session")
    sess.wait_for("ready", timeout=60)
    assert f"yoked\t{src_dir}" in sess.stderr()
    tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "max", "--run-id", "run-01",
                  "--quiet", name="replay")
    assert tx.wait() == 0, tx.stderr()
    assert sess.wait(timeout=120) == 0, sess.stderr()
    assert "yoked: 40 TRs played from" in sess.stdout()
    assert "music heard vs decoded, mean cosine: all " in sess.stdout()
    rec = decisions(out)["run-01"]
    assert [d["clip"] for d in rec] == [r.clip for r in src_results]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["yoked"]["source"] == str(src_dir) and summary["yoked"]["trs"] == 40
    assert json.loads((out / "session_config.json").read_text())["yoked_from"] == str(src_dir)
    assert "SHAM, yoked to" in (out / "report.html").read_text()
    rp = b2m_proc("session", "replay", out, name="replay-check")
    assert rp.wait(timeout=120) == 0, rp.stdout() + rp.stderr()
    assert "identical" in rp.stdout()
    # as BIDS: the run says it was a sham and whose music it played; its events are that music
    ex = b2m_proc("session", "export", out, "--bids", tmp_path / "bids", "--subject", "01", name="export")
    assert ex.wait(timeout=120) == 0, ex.stderr()
    stem = tmp_path / "bids" / "sub-01" / "func" / "sub-01_task-neurofeedback_run-01"
    meta = json.loads(stem.with_name(stem.name + "_bold.json").read_text())
    assert meta["b2m_feedback"] == "yoked sham"
    assert meta["b2m_yoked_to"] == {"session": str(src_dir), "runs": ["run-01"]}
    import csv

    from realtime.session.bids import music_events

    with open(stem.with_name(stem.name + "_events.tsv")) as f:
        heard = [(row["clip"], float(row["onset"])) for row in csv.DictReader(f, delimiter="\t")]
    # the reference: the music of the source's own decision record (both sessions wrote WAVs on one clock)
    want = music_events(decisions(src_dir)["run-01"], Library(kit.library), 48000, 40)
    assert len(heard) >= 2
    assert [c for c, _ in heard] == [r["clip"] for r in want]
    np.testing.assert_allclose([t for _, t in heard], [float(r["onset"]) for r in want], atol=1e-4)
    # the same --out again, now yoked to another session: refused before anything opens
    again = b2m_proc("session", "--model", kit.other, "--out", out, "--yoked-from", tmp_path, "--audio",
                     f"wav:{out}/x.wav", *common, name="again")
    assert again.wait(timeout=60) == 2
    assert "no decisions" in again.stderr()
    sess.kill(signal.SIGTERM)


def test_an_interrupted_sham_session_continues_yoked_where_it_stopped(kit, source, tmp_path):
    # the process dies after deciding volumes 0..19 with 20..24 recorded; a new engine rebuilds the yoke's
    # state from the record (as `b2m session` does with the kept yoked.json) and goes on with 25..39
    from realtime.session.replay import recorded_decisions, recorded_volumes

    _, src_results = source
    folder, lib = sham_folder(kit, source, tmp_path)
    msgs = volumes(kit.nifti)
    dec = Decoder(kit.other)
    first = SessionEngine(dec, lib, None, POLICY, record_dir=str(folder), yoked=read_yoked(folder))
    rec = SessionRecord(str(folder), sync=False)
    for m in msgs[:25]:
        rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")
        if m.index < 20:
            first.on_volume(m, time.time())
    del first
    recorded, offsets = recorded_decisions(folder)
    second = SessionEngine(dec, lib, None, POLICY, record_dir=str(folder), run_offsets=offsets,
                           yoked=read_yoked(folder))
    second.resume(recorded_volumes(folder), logged=recorded)
    after = [r for m in msgs[25:] for r in second.on_volume(m, time.time())]
    second.finish()
    assert [(r.action == "switch", r.clip) for r in after] == \
           [(r.action == "switch", r.clip) for r in src_results[25:]]
    logged = sorted(decisions(folder)["run-01"], key=lambda d: d["index"])
    assert [d["clip"] for d in logged] == [r.clip for r in src_results]
    assert [d["yoked_to"] for d in logged] == [["run-01", i] for i in range(40)]


def test_a_generation_sham_composes_the_source_participants_pieces(kit, tmp_path):
    # generation mode: the yoke names generator points; the pieces composed live must be the source's,
    # to the sample (the generator is deterministic given its point)
    from session_kit import make_atlas

    from realtime.session.engine import SessionOptions

    atlas = make_atlas(str(tmp_path), 10, seed=3)
    lib = Library(atlas)
    options = SessionOptions(mode="generation")

    def run(folder, bundle, yoked=None):
        folder.mkdir()
        out = WavSink(str(folder / "feedback.wav"), samplerate=48000).start()
        eng = SessionEngine(Decoder(bundle), lib, out, POLICY, options, record_dir=str(folder), yoked=yoked)
        res = [r for m in volumes(kit.nifti) for r in eng.on_volume(m, time.time())]
        eng.finish()
        out.close()
        return res

    src = run(tmp_path / "src", kit.bundle)
    (tmp_path / "src" / "session_config.json").write_text(json.dumps({"mode": "generation",
                                                                      "options": {"level_dbfs": -20.0}}))
    own = run(tmp_path / "own", kit.other)
    assert [r.clip for r in own] != [r.clip for r in src] and sum(r.action == "switch" for r in src) >= 1
    with pytest.raises(ValueError, match="--mode generation"):
        yoked_schedule(tmp_path / "src", lib, "retrieval")
    sham = run(tmp_path / "sham", kit.other, yoked=yoked_schedule(tmp_path / "src", lib, "generation"))
    assert [r.clip for r in sham] == [r.clip for r in src]
    a, _ = sf.read(tmp_path / "src" / "feedback.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "sham" / "feedback.wav", dtype="float32")
    np.testing.assert_array_equal(a, b)
    assert [d["own_clip"] for d in decisions(tmp_path / "sham")["run-01"]] == [r.clip for r in own]


def write_allocation(path, rows, header="participant_id\tcondition\tyoked_from"):
    path.write_text("\n".join([header] + ["\t".join(r) for r in rows]) + "\n")
    return path


def test_an_allocation_file_gives_each_participant_their_condition(tmp_path):
    from realtime.session.yoked import read_allocation

    alloc = write_allocation(tmp_path / "alloc.tsv", [("P01", "real", ""), ("P02", "sham", "sessions/P01"),
                                                      ("P03", "sham", "/data/P01")])
    assert read_allocation(alloc, "P01") is None
    assert read_allocation(alloc, "P02") == str(tmp_path / "sessions" / "P01")  # relative to the file
    assert read_allocation(alloc, "P03") == "/data/P01"
    with pytest.raises(ValueError, match=r"'P09' is on no line"):
        read_allocation(alloc, "P09")
    cases = [
        ([("P01", "real", "")], "condition\tgroup\tsource", r"line 1: no column participant_id, yoked_from"),
        ([("P01", "placebo", "")], None, r"line 2, column condition: 'placebo'; write real or sham"),
        ([("P01", "sham", "")], None, r"line 2, column yoked_from: a sham needs the session folder"),
        ([("P01", "real", "x")], None, r"line 2, column yoked_from: only a sham is yoked"),
        ([("P01", "real")], None, r"line 2: 2 fields for 3 columns"),
        ([("P01", "real", ""), ("P01", "sham", "x")], None, r"'P01' is on lines 2, 3"),
    ]
    for rows, header, message in cases:
        bad = write_allocation(tmp_path / "bad.tsv", rows, *([header] if header else []))
        with pytest.raises(ValueError, match=message):
            read_allocation(bad, "P01")
    with pytest.raises(FileNotFoundError, match="--allocation .*: no such file"):
        read_allocation(tmp_path / "missing.tsv", "P01")


def test_the_dashboard_of_a_blinded_session_does_not_say_sham(kit, source, tmp_path):
    from rich.console import Console

    from realtime.session import Dashboard

    src_dir, _ = source
    eng, _ = session(kit, tmp_path / "sham", kit.other, volumes(kit.nifti), yoked=yoked_schedule(src_dir,
                                                                                                Library(kit.library)))
    texts = {}
    for blind in (False, True):
        console = Console(record=True, width=200, file=open(tmp_path / f"tty{blind}.txt", "w"))
        console.print(Dashboard(eng, fd_threshold_mm=0.5, console=console, blind=blind).render())
        texts[blind] = console.export_text()
    assert "SHAM" in texts[False] and str(src_dir) in texts[False]
    assert "SHAM" not in texts[True] and str(src_dir) not in texts[True]
    assert "as allocated (blinded)" in texts[True]


def test_session_cli_allocation_keeps_the_operator_blind_and_the_record_true(kit, source, b2m_proc, endpoint,
                                                                            tmp_path):
    src_dir, src_results = source
    alloc = write_allocation(tmp_path / "alloc.tsv", [("P01", "real", ""), ("P02", "sham", str(src_dir))])
    common = ("--model", kit.other, "--library", kit.library, "--bind", endpoint, "--no-dashboard", "--results",
              "none", "--min-dwell", "5", "--margin", "0", "--smooth-trs", "1", "--crossfade", "0.5", "--runs", "1",
              "--allocation", alloc)
    seen = {}
    for pid in ("P01", "P02"):
        check = b2m_proc("session", "--check", "--participant", pid, "--audio", f"wav:{tmp_path}/c{pid}.wav",
                         *common, name=f"check-{pid}")
        assert check.wait(timeout=120) == 0, check.stderr()
        seen[pid] = [line for line in check.stdout().splitlines() if line[6:].startswith("allocation")]
        out = tmp_path / pid
        sess = b2m_proc("session", "--participant", pid, "--out", out, "--audio", f"wav:{out}/feedback.wav", *common,
                        name=f"session-{pid}")
        sess.wait_for("ready", timeout=60)
        tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "max", "--run-id", "run-01",
                      "--quiet", name=f"replay-{pid}")
        assert tx.wait() == 0, tx.stderr()
        assert sess.wait(timeout=120) == 0, sess.stderr()
        shown = sess.stdout() + sess.stderr() + (out / "report.html").read_text()
        assert f"participant {pid}: condition blinded" in sess.stderr()
        assert "as allocated (blinded)" in shown
        for tell in ("SHAM", "sham", "yoked", str(src_dir), "mean cosine"):
            assert tell not in shown, (pid, tell)
        assert json.loads((out / "summary.json").read_text())["blinded"] is True
        # the record keeps the truth for the analysis
        played = [d["clip"] for d in decisions(out)["run-01"]]
        assert (played == [r.clip for r in src_results]) == (pid == "P02")
        assert (read_yoked(out) is not None) == (pid == "P02")
    assert seen["P01"] == seen["P02"] and len(seen["P01"]) == 1 and seen["P01"][0].startswith("PASS")
    # the allocation later says otherwise for a folder already run: refused without naming either condition
    again = b2m_proc("session", "--participant", "P01", "--out", tmp_path / "P02", "--audio",
                     f"wav:{tmp_path}/x.wav", *common, name="again")
    assert again.wait(timeout=60) == 2
    assert "was run under another condition than" in again.stderr() and "sham" not in again.stderr()


def test_where_the_source_heard_nothing_the_sham_hears_nothing(kit, source, tmp_path):
    """The source's operator muted volumes 15-24 (its operator.tsv, placed between the decisions' own stamps):
    those volumes play silence for the sham too, so both participants get the same stimulation."""
    import shutil

    from realtime.session.operator import OPERATOR_COLUMNS, OPERATOR_FILE
    from realtime.session.tables import append_rows

    src_dir, src_results = source
    muted_src = tmp_path / "source-muted"
    shutil.copytree(src_dir, muted_src)
    decided = [d["timestamps"]["decided"] for d in decisions(muted_src)["run-01"]]
    on, off = (decided[14] + decided[15]) / 2, (decided[24] + decided[25]) / 2
    append_rows(str(muted_src / OPERATOR_FILE), OPERATOR_COLUMNS,
                [[repr(on), "mute", "n/a", "cli", "true", "0.0", "session", "1.0"],
                 [repr(off), "unmute", "n/a", "cli", "false", "0.0", "session", "2.0"]])
    sched = yoked_schedule(muted_src, Library(kit.library))
    want = [None if 15 <= i <= 24 else r.clip for i, r in enumerate(src_results)]
    assert sched["runs"][0]["clips"] == want
    assert sched["unheard_volumes"] == sum(r.clip is not None for r in src_results[15:25]) == 10
    _, sham = session(kit, tmp_path / "sham", kit.other, volumes(kit.nifti), yoked=sched)
    assert [r.clip for r in sham] == want
    assert sham[15].action == "silence" and sham[25].action == "switch"  # the music fades out, then back in
