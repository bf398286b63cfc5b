"""The session engine on a real run, a real bundle (ONNX) and a real library, in process."""

from __future__ import annotations

import os
import time

import nibabel as nib
import numpy as np
import pytest
from session_kit import DELAYS, kit_fixture, make_bundle, volumes, with_training_tsnr

from music.library import Library
from protocols.library import EmbedderMismatch
from realtime.audio import WavSink
from realtime.decoder import Decoder
from realtime.feedback import PolicyConfig
from realtime.preprocessing import PreprocessConfig, preprocess_run
from realtime.session import SessionEngine, read_decisions, replay_session
from realtime.session.decisions import decisions_path

POLICY = PolicyConfig(smooth_trs=1, margin=0.0, min_dwell_s=5.0, crossfade_s=0.5, align="bar")


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


def run_engine(kit, tmp_path, msgs=None, output=True, record=True, policy=POLICY, decoder=None, **kw):
    dec, lib = decoder or Decoder(kit.bundle), Library(kit.library)
    out = WavSink(str(tmp_path / "feedback.wav")).start() if output else None
    eng = SessionEngine(dec, lib, out, policy, record_dir=str(tmp_path / "session") if record else None, **kw)
    results = []
    for m in (msgs if msgs is not None else volumes(kit.nifti)):
        results.extend(eng.on_volume(m, time.time()))
    eng.finish()
    if out is not None:
        out.close()
    return eng, results, out


def test_every_result_carries_the_dvars_of_its_volume(kit, tmp_path):
    """DVARS per TR, in the results and the record, against numpy on the NIfTI itself (the kit's bundle has no
    motion correction, so the model's voxels are the volume's own): 100 * RMS of the change / the mean."""
    from realtime.session.decisions import read_decisions

    eng, results, _ = run_engine(kit, tmp_path, output=False)
    mask = Decoder(kit.bundle).manifest["arrays"]["mask"]
    data = np.asanyarray(nib.load(kit.nifti).dataobj.get_unscaled()).astype(np.float64)[mask]  # (voxels, t)
    expected = [0.0] + [100 * np.sqrt(np.mean((data[:, t] - data[:, t - 1]) ** 2)) / data[:, t].mean()
                        for t in range(1, data.shape[1])]
    np.testing.assert_allclose([r.dvars_pct for r in results], expected, rtol=1e-5)
    logged = sorted(read_decisions(decisions_path(str(tmp_path / "session"), "run-01")), key=lambda d: d["index"])
    np.testing.assert_allclose([d["dvars_pct"] for d in logged], expected, rtol=1e-5)


@pytest.mark.parametrize("detrend,normalize", [("causal", "running"), ("ema", "running"), ("ema", "psc")])
def test_live_embeddings_equal_offline_causal_decoding(kit, tmp_path, detrend, normalize):
    bundle = kit.bundle if detrend == "causal" else make_bundle(kit.folder, kit.nifti, detrend=detrend,
                                                                normalize=normalize)
    dec = Decoder(bundle)
    eng, results, _ = run_engine(kit, tmp_path, output=False, record=False, decoder=dec)
    assert dec.manifest["preprocess"]["detrend"] == detrend
    assert dec.manifest["preprocess"]["normalize"] == normalize
    a = dec.manifest["arrays"]
    img = nib.load(kit.nifti)
    pre = preprocess_run(np.asanyarray(img.dataobj.get_unscaled()), img.affine, a["mask"],
                         PreprocessConfig.from_dict(dec.manifest["preprocess"]), reference=a["reference"],
                         tr_s=dec.manifest["tr_s"])
    lag = max(DELAYS)
    offline = dec.decode_batch(pre.x[lag:])
    live = np.stack([r.embedding for r in results[lag:]])
    assert [r.index for r in results] == list(range(img.shape[3]))
    assert all(r.embedding is None and r.decoded_index is None for r in results[:lag])
    assert [r.decoded_index for r in results[lag:]] == list(range(img.shape[3] - lag))
    np.testing.assert_allclose(live, offline, atol=1e-5)
    # and the ONNX graph against the closed form: unit-norm rows
    np.testing.assert_allclose(np.linalg.norm(live, axis=1), 1.0, atol=1e-5)


def test_neutral_start_dwell_and_bar_aligned_crossfaded_switches(kit, tmp_path):
    eng, results, out = run_engine(kit, tmp_path)
    lib = eng.library
    neutral = lib.clips[eng.policy.neutral_clip].id
    lag = max(DELAYS)
    assert [r.action for r in results[:lag]] == ["neutral"] * lag
    assert all(r.clip == neutral for r in results[:lag])
    switches = [r for r in results if r.action == "switch"]
    assert len(switches) >= 2, [r.action for r in results]
    tr = 1.35
    times = [(r.index + 1) * tr for r in switches]
    assert np.all(np.diff(times) >= POLICY.min_dwell_s - 1e-9)
    log = out.executed()
    assert [e["frame"] for e in log] == [e["scheduled_frame"] for e in log]  # sample-accurate
    # the first sound starts at the first decision; every switch lands on a bar line of the clip before it
    assert log[0]["frame"] == round(tr * out.samplerate)
    recs = read_decisions(decisions_path(tmp_path / "session", "run-01"))
    frames = [d["audio_frame"] for d in recs if d["action"] == "switch"]
    assert frames == [e["frame"] for e in log if e["kind"] == "switch"][1:]
    for d in recs:
        if d["action"] == "switch":
            assert d["audio_frame"] >= round(d["t_scan_s"] * out.samplerate)  # never before its decision
    # each switch lands on a bar line (every 4th beat) of the clip playing before it, as the clip's own
    # beat positions say: position in that clip = its entry offset + frames since it started, modulo its length
    clips = [neutral] + [d["clip"] for d in recs if d["action"] == "switch"]
    on_bar = 0
    for k in range(1, len(log) - 1):  # the last command is the final fade-out
        prev = eng.clips.get(lib.index_of(clips[k - 1]))
        if prev.beat_frames.size == 0:
            continue
        offset = int(prev.beat_frames[0])
        pos = (offset + log[k]["frame"] - log[k - 1]["frame"]) % len(prev.source)
        assert pos in set(prev.beat_frames[::4].tolist()), (k, pos)
        on_bar += 1
    assert on_bar >= 1


def test_decisions_are_recorded_and_a_replay_reproduces_them(kit, tmp_path):
    eng, results, _ = run_engine(kit, tmp_path)
    recs = read_decisions(decisions_path(tmp_path / "session", "run-01"))
    assert [d["index"] for d in recs] == list(range(40))
    assert [d["action"] for d in recs] == [r.action for r in results]
    np.testing.assert_array_equal(recs[-1]["embedding"], results[-1].embedding)
    from realtime.session import write_session_info

    write_session_info(tmp_path / "session", {"model": kit.bundle, "library": kit.library,
                                              "policy": POLICY.to_dict()})
    # the volumes: a real session record holds them (written by the receiver); write them the same way
    from protocols.session import SessionRecord

    rec = SessionRecord(str(tmp_path / "session"), sync=False)
    for m in volumes(kit.nifti):
        rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")
    dec, lib = Decoder(kit.bundle), Library(kit.library)
    report = replay_session(tmp_path / "session",
                            lambda offsets: SessionEngine(dec, lib, None, POLICY, run_offsets=offsets))
    assert report["identical"], report
    assert report["n_compared"] == 40 and report["embedding_max_abs_diff"] == 0.0


def test_a_replay_or_a_continued_session_refuses_a_bundle_changed_since(kit, tmp_path, capsys):
    """session_config.json keeps the sha256 of every file of the bundle and the library the session ran with
    (checked here with hashlib) and the code's provenance. `b2m session replay` replays identically (exit 0)
    while they are the same; once a bundle is trained again into the same folder it is refused (exit 2),
    naming the file, and a session continued with it is refused too."""
    import hashlib
    import json
    import shutil

    from b2m.commands.session import _same_setup, run_replay
    from protocols.session import SessionRecord
    from realtime.session import session_info, write_session_info

    def sha256s(folder):
        files = json.load(open(os.path.join(folder, "manifest.json")))["files"]
        return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest() for n in files}

    bundle = str(shutil.copytree(kit.bundle, tmp_path / "bundle"))
    eng, _, _ = run_engine(kit, tmp_path, output=False, decoder=Decoder(bundle))
    info = session_info(eng, bundle, kit.library, "none")
    assert info["bundle_sha256"] == sha256s(bundle) and len(info["bundle_sha256"]) >= 5
    assert info["library_sha256"] == sha256s(kit.library) and "embeddings.npy" in info["library_sha256"]
    assert info["provenance"]["b2m"] and info["provenance"]["packages"]["onnxruntime"]
    folder = tmp_path / "session"
    write_session_info(folder, info)
    rec = SessionRecord(str(folder), sync=False)
    for m in volumes(kit.nifti):
        rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")
    assert run_replay(str(folder)) == 0
    assert "identical" in capsys.readouterr().out

    other = make_bundle(str(tmp_path / "retrained"), kit.nifti, seed=1)  # another decoder, the same layout
    shutil.rmtree(bundle)
    shutil.copytree(other, bundle)
    assert run_replay(str(folder)) == 2
    err = capsys.readouterr().err
    assert f"the model bundle {bundle} is not the one the session ran with: decoder.onnx changed" in err
    assert "mask.npy" not in err  # only what differs
    with pytest.raises(ValueError, match="decoder.onnx changed. Continue .* with the model and library it began with"):
        _same_setup(str(folder), None, Decoder(bundle), Library(kit.library), bundle, kit.library, continuing=True)


def test_a_rerun_with_the_sessions_parts_plays_the_same_music_and_another_policy_is_compared(kit, tmp_path,
                                                                                               b2m_proc):
    """`b2m session replay SESSION --out NEW` (a real process) reruns the recorded volumes into a new record.
    With nothing changed, its WAV is the live session's own, sample for sample, and it replays identically; with
    another policy (--smooth-trs 1 --min-dwell 4; the rest kept from the session), the comparison it prints is
    what the two decision logs say, counted here."""
    import json

    import soundfile as sf

    from protocols.session import SessionRecord
    from realtime.session import session_info, write_session_info

    eng, _, _ = run_engine(kit, tmp_path)  # the live session: its music to tmp_path/feedback.wav
    folder = tmp_path / "session"
    write_session_info(folder, session_info(eng, kit.bundle, kit.library, "wav"))
    rec = SessionRecord(str(folder), sync=False)
    for m in volumes(kit.nifti):
        rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")

    same = b2m_proc("session", "replay", folder, "--out", tmp_path / "same", name="same")
    assert same.wait() == 0, same.stderr()
    assert "the same music as the session's after 100.0 % of them" in same.stdout()
    live, sr = sf.read(tmp_path / "feedback.wav", dtype="float32")
    again, sr2 = sf.read(tmp_path / "same" / "feedback.wav", dtype="float32")
    assert sr == sr2 and live.shape == again.shape and np.array_equal(live, again)
    check = b2m_proc("session", "replay", tmp_path / "same", name="check")  # a record of its own
    assert check.wait() == 0 and "identical" in check.stdout(), check.stderr()

    other = b2m_proc("session", "replay", folder, "--out", tmp_path / "other", "--smooth-trs", "1", "--min-dwell", "4",
                     name="other")
    assert other.wait() == 0, other.stderr()
    config = json.loads((tmp_path / "other" / "session_config.json").read_text())
    assert config["policy"] == {**POLICY.to_dict(), "smooth_trs": 1, "min_dwell_s": 4.0}  # the rest: the session's
    assert config["rerun_of"]["policy"] == POLICY.to_dict() and config["rerun_of"]["session"] == str(folder)
    a = read_decisions(decisions_path(folder, "run-01"))
    b = read_decisions(decisions_path(tmp_path / "other", "run-01"))
    assert [d["index"] for d in a] == [d["index"] for d in b] == list(range(40))
    same_clip = np.mean([x["clip"] == y["clip"] for x, y in zip(a, b)])
    assert same_clip < 1.0  # the other policy did play otherwise
    switches = [sum(d["action"] == "switch" for d in a), sum(d["action"] == "switch" for d in b)]
    assert f"the same music as the session's after {100 * same_clip:.1f} % of them; switches " \
           f"{switches[0]} -> {switches[1]}" in other.stdout()
    summary = json.loads((tmp_path / "other" / "summary.json").read_text())
    assert summary["comparison"]["same_clip"] == pytest.approx(same_clip) and summary["comparison"]["switches"] == switches
    assert (tmp_path / "other" / "report.html").is_file()
    again = b2m_proc("session", "replay", folder, "--out", tmp_path / "other", name="again")
    assert again.wait() == 2 and "already holds a session record" in again.stderr()


def test_the_whole_session_is_read_back_while_memory_keeps_only_the_newest(kit, tmp_path, monkeypatch):
    from realtime.session import engine as engine_mod
    from realtime.session.decisions import session_results

    monkeypatch.setattr(engine_mod, "RESULTS_KEPT", 8)
    eng, results, _ = run_engine(kit, tmp_path)
    assert len(results) == 40 and len(eng.results) == 8
    assert [r.index for r in eng.results] == list(range(32, 40))
    back = session_results(tmp_path / "session")
    assert [(r.run_id, r.index, r.action, r.clip, r.decoded_index) for r in back] == \
        [(r.run_id, r.index, r.action, r.clip, r.decoded_index) for r in results]
    assert [r.latency_ms for r in back] == [r.latency_ms for r in results]
    assert [r.topk for r in back] == [list(r.topk) for r in results]
    for a, b in zip(back, results):
        if b.embedding is None:
            assert a.embedding is None
        else:
            np.testing.assert_array_equal(a.embedding, b.embedding)


def test_a_changed_policy_is_caught_by_the_replay(kit, tmp_path):
    run_engine(kit, tmp_path)
    from protocols.session import SessionRecord

    rec = SessionRecord(str(tmp_path / "session"), sync=False)
    for m in volumes(kit.nifti):
        rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")
    dec, lib = Decoder(kit.bundle), Library(kit.library)
    other = PolicyConfig(smooth_trs=5, margin=0.0, min_dwell_s=20.0)
    report = replay_session(tmp_path / "session",
                            lambda offsets: SessionEngine(dec, lib, None, other, run_offsets=offsets))
    assert not report["identical"] and report["first_mismatch"]


def test_out_of_order_volumes_are_decoded_in_order(kit, tmp_path):
    msgs = volumes(kit.nifti)
    swapped = msgs[:5] + [msgs[6], msgs[5]] + msgs[7:]
    _, ref, _ = run_engine(kit, tmp_path / "a", output=False, record=False)
    _, got, _ = run_engine(kit, tmp_path / "b", swapped, output=False, record=False)
    assert [r.index for r in got] == list(range(40))
    np.testing.assert_array_equal(np.stack([r.embedding for r in got[2:]]), np.stack([r.embedding for r in ref[2:]]))


def test_a_missing_volume_is_stood_in_for_and_held(kit, tmp_path):
    msgs = volumes(kit.nifti)
    late = msgs[10]
    eng, got, _ = run_engine(kit, tmp_path, msgs[:10] + msgs[11:] + [late], output=False, record=False)
    assert [r.index for r in got] == list(range(40))
    r10 = got[10]
    assert r10.flagged and r10.action == "hold"
    assert r10.dvars_pct is None and got[11].dvars_pct > 0  # a repeated volume measures nothing
    assert eng.counts["stand_ins"] == 1 and eng.counts["late"] == 1


def test_one_early_volume_waits_and_stands_in_for_nothing(kit, tmp_path):
    """Volume 30 overtakes 4-29 (a resend after a reconnect): only one later volume is here, so nothing is
    stood in for; 4-29 then arrive and every volume is decoded from its own data, as if in order."""
    msgs = volumes(kit.nifti)
    eng, got, _ = run_engine(kit, tmp_path, msgs[:4] + [msgs[30]] + msgs[4:30] + msgs[31:], output=False,
                             record=False)
    _, ref, _ = run_engine(kit, tmp_path / "ref", output=False, record=False)
    assert [r.index for r in got] == list(range(40)) and not any(r.flagged for r in got)
    assert eng.counts["stand_ins"] == 0 and eng.counts["late"] == 0
    np.testing.assert_array_equal(np.stack([r.embedding for r in got[2:]]), np.stack([r.embedding for r in ref[2:]]))


def test_a_volume_numbered_far_past_the_run_is_recorded_not_decoded(kit, tmp_path):
    """A sender's index gone wrong (2e9 in a 40-volume run whose length it did not say) must not make the
    session stand in for two billion volumes: it is counted, not decoded, and the run goes on in order."""
    from dataclasses import replace

    msgs = [replace(m, n_volumes=None) for m in volumes(kit.nifti)]
    wild = replace(msgs[5], index=2_000_000_000)
    t0 = time.monotonic()
    eng, got, _ = run_engine(kit, tmp_path, msgs[:5] + [wild] + msgs[5:], output=False, record=False)
    assert time.monotonic() - t0 < 60
    assert [r.index for r in got] == list(range(40)) and not any(r.flagged for r in got)
    assert eng.counts["too_far_ahead"] == 1 and eng.counts["stand_ins"] == 0
    # within max_gap, a gap is a gap: 4 volumes after it, the missing ones are stood in for
    eng, got, _ = run_engine(kit, tmp_path / "gap", msgs[:5] + msgs[25:], output=False, record=False)
    assert [r.index for r in got] == list(range(40)) and [r.index for r in got if r.flagged] == list(range(5, 25))


def test_wrong_grid_gives_error_results_and_the_session_goes_on(kit, tmp_path, functional_nii):
    msgs = volumes(functional_nii, run_id="wrong-grid") + volumes(kit.nifti, run_id="right")
    eng, got, _ = run_engine(kit, tmp_path, msgs, output=False, record=True)
    wrong = [r for r in got if r.run_id == "wrong-grid"]
    assert len(wrong) == 20 and all(r.action == "error" for r in wrong)
    right = [r for r in got if r.run_id == "right"]
    assert len(right) == 40 and right[-1].embedding is not None
    recs = read_decisions(decisions_path(tmp_path / "session", "wrong-grid"))
    assert "mask" in recs[0]["error"] or "grid" in recs[0]["error"] or "shape" in recs[0]["error"]


def test_library_from_another_embedder_is_refused(kit, tmp_path):
    bundle = make_bundle(str(tmp_path), kit.nifti)
    import json

    m = json.load(open(f"{bundle}/manifest.json"))
    lib = Library(kit.library)
    dec = Decoder(bundle)
    dec.manifest["embedder"] = dict(m["embedder"], id="another-model")
    with pytest.raises(EmbedderMismatch, match="another-model"):
        SessionEngine(dec, lib, None, POLICY)


def test_a_restarted_session_continues_exactly_where_it_stopped(kit, tmp_path):
    # The process dies after deciding volumes 0..19 while 20..24 are already recorded (acked, not yet
    # decided); a new engine rebuilds its state from the record and goes on with 25..39.
    from protocols.session import SessionRecord
    from realtime.session.replay import recorded_decisions, recorded_volumes

    msgs = volumes(kit.nifti)
    _, ref, _ = run_engine(kit, tmp_path / "ref", output=False, record=False)
    session = tmp_path / "session"
    dec, lib = Decoder(kit.bundle), Library(kit.library)
    first = SessionEngine(dec, lib, None, POLICY, record_dir=str(session))
    rec = SessionRecord(str(session), sync=False)
    for m in msgs[:25]:
        rec.append_volume(m, memoryview(np.ascontiguousarray(m.data)).cast("B"), time.time(), "C")
        if m.index < 20:
            first.on_volume(m, time.time())
    del first  # no finish(): the process is gone
    recorded, offsets = recorded_decisions(session)
    assert len(recorded) == 20
    second = SessionEngine(dec, lib, None, POLICY, record_dir=str(session), run_offsets=offsets)
    caught = second.resume(recorded_volumes(session), logged=recorded)
    assert caught["volumes"] == 25 and second.counts["volumes"] == 0
    after = [r for m in msgs[25:] for r in second.on_volume(m, time.time())]
    second.finish()
    assert [r.index for r in after] == list(range(25, 40))
    for r, want in zip(after, ref[25:]):
        assert (r.action, r.clip) == (want.action, want.clip)
        np.testing.assert_array_equal(r.embedding, want.embedding)
    logged = read_decisions(decisions_path(session, "run-01"))
    assert sorted(d["index"] for d in logged) == list(range(40))  # 20..24 written late, none twice
    assert [d["action"] for d in sorted(logged, key=lambda d: d["index"])] == [r.action for r in ref]


def test_dashboard_shows_the_session_state(kit, tmp_path):
    from rich.console import Console

    from realtime.session import Dashboard

    eng, results, _ = run_engine(kit, tmp_path)
    console = Console(record=True, width=160, file=open(tmp_path / "tty.txt", "w"))
    console.print(Dashboard(eng, fd_threshold_mm=0.5, console=console).render())
    text = console.export_text()
    last = results[-1]
    assert f"{last.run_id} / {last.index}" in text and last.clip in text
    for stage in ("preprocessed", "decoded", "decided", "audio_scheduled", "total"):
        assert stage in text
    assert f"switches {eng.counts['switches']}" in text and "audio underruns 0" in text
    assert "lag behind scanner" in text and "next candidate" in text


def test_dashboard_shows_the_runs_tsnr_beside_the_training_runs_red_under_half(kit, tmp_path):
    """The run's tSNR so far (the latest result's) on the dashboard, beside the Training runs' from the bundle's
    ``qc.tsnr`` (the kit's bundle has none: copies with one are made here); red, with the alert, under half the
    Training runs'; ``tSNR —`` before the run has 20 volumes."""
    from rich.console import Console

    from realtime.preprocessing.qc import TSNR_MIN_VOLUMES
    from realtime.session import Dashboard

    def shown(engine) -> tuple[str, str]:
        console = Console(record=True, width=200, file=open(tmp_path / "tty.txt", "w"), force_terminal=True,
                          color_system="standard")
        console.print(Dashboard(engine, console=console).render())
        return console.export_text(styles=True, clear=False), console.export_text()

    eng, results, _ = run_engine(kit, tmp_path, output=False, record=False)
    tsnr = results[-1].tsnr
    assert tsnr is not None and tsnr > 0 and eng.training_tsnr is None
    styled, text = shown(eng)
    row = next(line for line in text.splitlines() if "tSNR" in line)
    assert f"tSNR {tsnr:.0f}" in row and "training" not in row  # a bundle without the figure: the run's alone
    within = with_training_tsnr(kit.bundle, str(tmp_path), 1.5 * tsnr)  # within the rule: shown, not red
    styled, text = shown(run_engine(kit, tmp_path, output=False, record=False, decoder=Decoder(within))[0])
    assert f"tSNR {tsnr:.0f} (training {1.5 * tsnr:.0f})" in text
    assert "\x1b[1;31mtSNR" not in styled and "Training runs" not in text
    under = with_training_tsnr(kit.bundle, str(tmp_path), 2.5 * tsnr)  # under half: red, and the alert below
    styled, text = shown(run_engine(kit, tmp_path, output=False, record=False, decoder=Decoder(under))[0])
    assert f"\x1b[1;31mtSNR {tsnr:.0f} (training {2.5 * tsnr:.0f})" in styled
    assert f"under half the {2.5 * tsnr:.0f} of its" in " ".join(text.split())

    early, _, _ = run_engine(kit, tmp_path, msgs=volumes(kit.nifti)[:TSNR_MIN_VOLUMES - 1], output=False,
                             record=False)
    assert early.last.tsnr is None
    assert "tSNR —" in shown(early)[1]


def test_dashboard_shows_the_scanner_trigger(kit, tmp_path):
    """The trigger's row: no pulse yet, then the pulses and the image delay of the run's latest volumes
    (pulses built one TR apart, each volume received ``delay`` after its acquisition ended)."""
    from rich.console import Console

    from realtime.session import Dashboard
    from realtime.triggers import TriggerInput, TriggerLog

    eng, results, _ = run_engine(kit, tmp_path)
    run = eng.runs[results[-1].run_id]
    master, slave = os.openpty()
    log = TriggerLog(TriggerInput(os.ttyname(slave)), str(tmp_path))  # a real input, not started

    def shown() -> str:
        console = Console(record=True, width=200, file=open(tmp_path / "tty.txt", "w"))
        console.print(Dashboard(eng, console=console, triggers=log).render())
        return console.export_text()

    try:
        assert "trigger: no pulse yet while volumes come: check the trigger box" in shown()
        recent = [r for r in results[-60:] if r.run_id == run.run_id]
        idx = np.array([r.index for r in recent])
        rec = np.array([r.timestamps["received"] for r in recent])
        delay = 0.25
        p0 = np.min(rec - (idx + 1) * run.tr_s) - delay  # the latest start for which no volume came early
        log.times.extend((p0 + run.tr_s * np.arange(idx.max() + 1)).tolist())
        want = np.median(rec - (p0 + (idx + 1) * run.tr_s))
        text = shown()
        assert f"{idx.max() + 1} pulses, last" in text and f"image delay {1e3 * want:.0f} ms" in text, text
    finally:
        log.trigger.close()
        os.close(master)
        os.close(slave)


def test_clip_cache_counts_only_switch_time_reads_as_on_the_spot(kit):
    from music.beats import estimate_beats
    from realtime.audio import prepare_source, read_segment
    from realtime.session.clips import ClipCache

    lib = Library(kit.library)
    cache = ClipCache(lib, 48000, 2)
    try:
        first = cache.preload(0)                      # start-up: not a switch
        assert cache.stats["loads"] == 1 and cache.stats["sync_loads"] == 0
        assert cache.get(0) is first and cache.stats["sync_loads"] == 0
        cache.prefetch([2])
        deadline = time.monotonic() + 30
        while cache.stats["loads"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)                          # the loader thread's work, not a hot path
        assert cache.get(2).index == 2 and cache.stats["sync_loads"] == 0
        one = cache.get(1)                            # never asked for: read on the spot
        assert cache.stats["sync_loads"] == 1 and cache.stats["loads"] == 3
        # what was loaded is the clip itself at the output rate, with its beats in output frames
        clip = lib.clips[1]
        x, sr = read_segment(lib.audio_path(clip), clip.start_s, clip.duration_s)
        np.testing.assert_array_equal(one.source, prepare_source(x, sr, 48000, 2))
        _, beats_s = estimate_beats(np.asarray(x if x.ndim == 1 else x.mean(axis=1), np.float32), sr)
        np.testing.assert_array_equal(one.beat_frames, np.round(beats_s * 48000).astype(np.int64))
        assert cache.stats["beats_estimated"] == 0    # the beats came from the library's beats.npz
    finally:
        cache.close()


def test_clip_cache_plays_every_clip_at_one_level(kit, tmp_path):
    """Clips 20 dB apart in their files come out at the same RMS, unless their peaks would pass -1 dBFS (the
    kit's tone bursts have a crest factor near 21 dB: at -20 dBFS each is held at its ceiling instead, a
    level computed here in closed form from the file); without a level they keep their own."""
    import soundfile as sf
    from session_kit import make_library

    from music.audio import rms_dbfs
    from realtime.session.clips import ClipCache

    lib = Library(make_library(str(tmp_path)))  # a library of its own: its source files are changed below
    quiet = lib.audio_path(lib.clips[1])
    assert str(tmp_path) in quiet
    x, sr = sf.read(quiet, dtype="float32")
    sf.write(quiet, x * 0.1, sr, subtype="FLOAT")  # 20 dB quieter than the others
    levels = {}
    for level in (-20.0, -30.0, None):
        cache = ClipCache(lib, 48000, 2, level_dbfs=level)
        try:
            levels[level] = [rms_dbfs(cache.preload(i).source) for i in (0, 1, 2)]
        finally:
            cache.close()

    def expected(i, target):
        y, _ = sf.read(lib.audio_path(lib.clips[i]), dtype="float64")
        crest = 20 * np.log10(np.abs(y).max() / np.sqrt(np.mean(y ** 2)))
        return min(target, -1.0 - crest)

    np.testing.assert_allclose(levels[-30.0], -30.0, atol=0.05)  # under the ceiling: one level for all
    np.testing.assert_allclose(levels[-20.0], [expected(i, -20.0) for i in (0, 1, 2)], atol=0.05)
    files = [rms_dbfs(sf.read(lib.audio_path(lib.clips[i]), dtype="float64")[0]) for i in (0, 1, 2)]
    np.testing.assert_allclose(levels[None], files, atol=0.1)  # the files' own levels (clip 1 20 dB down)


def test_clip_cache_beat_tracks_clips_of_a_library_built_without_beats(kit, tmp_path):
    import json
    import shutil

    from realtime.session.clips import ClipCache

    old = tmp_path / "library"
    shutil.copytree(kit.library, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["files"]["beats.npz"]                       # as a library built before beats were stored
    (old / "manifest.json").write_text(json.dumps(m))
    os.remove(old / "beats.npz")
    stored, bare = ClipCache(Library(kit.library), 48000, 2), ClipCache(Library(old), 48000, 2)
    try:
        a, b = stored.preload(1), bare.preload(1)
        assert stored.stats["beats_estimated"] == 0 and bare.stats["beats_estimated"] == 1
        np.testing.assert_array_equal(b.beat_frames, a.beat_frames)
        assert b.tempo_bpm == a.tempo_bpm or (np.isnan(a.tempo_bpm) and np.isnan(b.tempo_bpm))
        np.testing.assert_array_equal(b.source, a.source)
    finally:
        stored.close()
        bare.close()
