"""``b2m session export``: a session record as BIDS, the music heard as events.tsv.

The onsets are checked against the audio itself: the kit's clips are tone bursts of one pitch each
(220 to 1320 Hz), so which clip sounds in ``feedback.wav`` at any moment is read off its spectrum,
independently of the decisions the export reads.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf
from session_kit import kit_fixture

from realtime.session.bids import EVENT_COLUMNS, music_events, response_events, sounds_begun

PITCH_HZ = {f"r{i}.wav": hz for i, hz in enumerate([220, 330, 440, 660, 880, 1320])}  # session_kit.make_library


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


def _band_power(x: np.ndarray, sr: int, hz: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    return float(spec[(f > 0.97 * hz) & (f < 1.03 * hz)].sum())


def _read_events(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.timeout(180)
def test_export_writes_the_run_bit_exact_and_events_where_the_music_changes(kit, b2m_proc, endpoint, tmp_path):
    out, bids = tmp_path / "session", tmp_path / "bids"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", "none", "--no-dashboard", "--min-dwell", "5",
                    "--margin", "0", "--smooth-trs", "1", "--crossfade", "0", name="session")
    sess.wait_for("ready", timeout=60)
    for run_id in ("nf-a", "nf-b"):  # two runs: the music goes on from one to the next
        tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "max", "--run-id", run_id,
                      "--quiet", name=f"replay-{run_id}")
        assert tx.wait() == 0, tx.stderr()
        sess.wait_for(f"run\t{run_id}\tended", timeout=60)
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()

    ex = b2m_proc("session", "export", out, "--bids", bids, "--subject", "01", "--ses", "nf", name="export")
    assert ex.wait() == 0, ex.stderr()
    assert ex.stdout().strip() == "nf-a\trun-01\nnf-b\trun-02"
    func = bids / "sub-01" / "ses-nf" / "func"
    stem = func / "sub-01_ses-nf_task-neurofeedback_run-01"
    desc = json.loads((bids / "dataset_description.json").read_text())
    from importlib.metadata import version

    assert desc["BIDSVersion"] and desc["GeneratedBy"][0]["Version"] == version("brain2music-rt")
    src = nib.load(kit.nifti)
    bold = nib.load(f"{stem}_bold.nii.gz")
    assert np.array_equal(np.asanyarray(bold.dataobj.get_unscaled()), np.asanyarray(src.dataobj.get_unscaled()))
    np.testing.assert_allclose(bold.affine, src.affine, atol=1e-4)
    side = json.loads(open(f"{stem}_bold.json").read())
    tr = float(src.header.get_zooms()[3])
    assert side["RepetitionTime"] == pytest.approx(tr) and side["TaskName"] == "neurofeedback"
    assert side["b2m_run_id"] == "nf-a"

    with open(f"{stem}_events.tsv") as f:
        assert f.readline().rstrip("\n").split("\t") == list(EVENT_COLUMNS)
    rows = _read_events(f"{stem}_events.tsv")
    assert rows[0]["action"] == "neutral" and len(rows) >= 3  # the neutral clip, then a row per switch
    onsets = np.array([float(r["onset"]) for r in rows])
    durations = np.array([float(r["duration"]) for r in rows])
    assert np.all(np.diff(onsets) > 0)
    np.testing.assert_allclose(onsets[1:], onsets[:-1] + durations[:-1], atol=1e-3)
    assert onsets[-1] + durations[-1] == pytest.approx(40 * tr, abs=1e-3)  # the last row ends with the run
    for r in rows[1:]:  # a switch decided at volume i is heard no earlier than (i + 1) TR into the run
        assert float(r["onset"]) >= (int(r["decided_volume"]) + 1) * tr - 1e-6

    # without a crossfade a switch is a cut, and the new clip enters on its own first beat, a tone burst:
    # the onset is where its pitch appears and the old one's stops
    audio, sr = sf.read(str(out / "feedback.wav"), dtype="float32")
    mono = audio.mean(axis=1)
    second = _read_events(func / "sub-01_ses-nf_task-neurofeedback_run-02_events.tsv")
    pairs = [(0.0, p, r) for p, r in zip(rows, rows[1:])] + [(40 * tr, p, r) for p, r in zip(second, second[1:])]
    for run_start, prev, row in pairs:  # both runs, each on the session clock from its own start
        new, old = PITCH_HZ[os.path.basename(row["stim_file"])], PITCH_HZ[os.path.basename(prev["stim_file"])]
        t = run_start + float(row["onset"])
        before = mono[int((t - 0.5) * sr):int((t - 0.005) * sr)]
        after = mono[int((t + 0.005) * sr):int((t + 0.5) * sr)]
        assert _band_power(before, sr, new) < 0.01 * _band_power(after, sr, new), row
        assert _band_power(after, sr, old) < 0.01 * _band_power(after, sr, new), row

    # the second run begins 40 TRs into the session, with the music of the first still playing: its first
    # row is that clip, "continued", at onset 0, and it is what the WAV holds there
    assert second[0]["action"] == "continued" and float(second[0]["onset"]) == 0.0
    assert float(second[1]["onset"]) > 0.5 and second[1]["action"] != "continued"
    pitch = PITCH_HZ[os.path.basename(second[0]["stim_file"])]
    start = 40 * tr
    window = mono[int((start + 0.05) * sr):int((start + 0.5) * sr)]
    others = [hz for hz in PITCH_HZ.values() if hz != pitch]
    assert all(_band_power(window, sr, hz) < 0.01 * _band_power(window, sr, pitch) for hz in others)
    bold2 = nib.load(func / "sub-01_ses-nf_task-neurofeedback_run-02_bold.nii.gz")
    assert np.array_equal(np.asanyarray(bold2.dataobj.get_unscaled()), np.asanyarray(src.dataobj.get_unscaled()))


def _two_clip_library():
    """A stand-in for ``music.library.Library`` with the two attributes the export reads: clip ``a`` (jazz,
    starting 1 s into ``/lib/a.wav``) and ``b`` (rock)."""
    from protocols.library import Clip

    class Lib:
        clips = [Clip(id="a", path="a.wav", start_s=1.0, duration_s=8.0, genre="jazz"),
                 Clip(id="b", path="b.wav", start_s=0.0, duration_s=8.0, genre="rock")]

        @staticmethod
        def audio_path(clip):
            return "/lib/" + clip.path

    return Lib


def test_device_onsets_come_from_the_scheduling_lead_and_the_acquisition_stamps(rng):
    """A sound device: onset = audio_scheduled + audio_lead_s - the run's start on the scanner's clock, which
    is the earliest ``t_acquired - (i + 1) TR``: a stamp marks its volume complete, and a late one only
    ever lags. Closed form on synthetic decisions."""
    Lib = _two_clip_library()
    tr, t0 = 2.0, 1_800_000_000.0
    jitter = rng.uniform(0.01, 0.2, 20)  # each volume's stamp lags its completion by a little
    jitter[3] = 0.0  # one stamp is exact: that is the run's start
    decisions = []
    for i in range(20):
        d = {"index": i, "tr_s": tr, "offset_s": 0.0, "clip": "a" if i < 10 else "b",
             "action": "neutral" if i == 0 else ("switch" if i == 10 else "keep"),
             "timestamps": {"acquired": t0 + (i + 1) * tr + jitter[i], "audio_scheduled": t0 + (i + 1) * tr + 0.05},
             "audio_frame": None, "audio_lead_s": None, "audio_rate": None}
        if i in (0, 10):
            d.update(audio_frame=123456 * (i + 1), audio_lead_s=0.1 + 0.01 * i, audio_rate=44100)
        decisions.append(d)
    rows = music_events(decisions[::-1], Lib, 48000, 20)  # order of the log does not matter
    assert [r["clip"] for r in rows] == ["a", "b"] and [r["genre"] for r in rows] == ["jazz", "rock"]
    expected = [(0 + 1) * tr + 0.05 + 0.1, (10 + 1) * tr + 0.05 + 0.2]
    np.testing.assert_allclose([r["onset"] for r in rows], expected, atol=1e-6)
    np.testing.assert_allclose([r["duration"] for r in rows], [expected[1] - expected[0], 20 * tr - expected[1]],
                               atol=1e-6)
    assert rows[0]["stim_file"] == "/lib/a.wav" and rows[0]["clip_start_s"] == 1.0
    gen = music_events(decisions, Lib, 48000, 20, mode="generation")
    assert gen[0]["stim_file"] == "n/a" and gen[0]["clip_start_s"] == "n/a"  # composed live: no file holds it

    # a WAV sink's frames are the session clock: a run starting 1 s into the session counts from there
    for d in decisions:
        d.update(offset_s=1.0, audio_lead_s=None)
    rows = music_events(decisions, Lib, 48000, 20)
    np.testing.assert_allclose([r["onset"] for r in rows], [123456 / 44100 - 1.0, 11 * 123456 / 44100 - 1.0])
    # the next run, 40 s in: what the first began is still sounding as it starts, and is its first row
    later = [{**d, "offset_s": 40.0, "clip": "a", "action": "keep", "audio_frame": None} for d in decisions]
    rows = music_events(later, Lib, 48000, 20, before=sounds_begun(decisions, Lib, 48000, run_id="r1"))
    assert [(r["onset"], r["clip"], r["action"], r["decided_run"], r["decided_volume"]) for r in rows] == \
        [(0.0, "b", "continued", "r1", 10)]
    assert rows[0]["duration"] == pytest.approx(20 * tr)


def test_device_onsets_use_the_runs_final_clock_offset(rng):
    """The scanner side's clock is 2.5 s ahead: each decision's ``acquired`` was moved onto the session's clock
    by the offset estimated by then (the least receive - send time so far), which improves as the run goes
    on. The run's start is placed with the final estimate: the true start plus the link's least latency.
    Ground truth: the session-clock start ``s0`` the synthetic stamps are built from."""
    Lib = _two_clip_library()
    tr, s0, skew, n = 1.5, 1_800_000_000.0, 2.5, 30
    done = s0 + (np.arange(n) + 1) * tr  # each volume complete, on the session's clock
    jitter = rng.uniform(0.01, 0.3, n)  # each acquisition stamp lags its volume's completion
    jitter[4] = 0.0
    latency = rng.uniform(0.002, 0.5, n)  # the link, and the session busy with the TR before
    latency[0], latency[17] = 0.9, 0.0004  # the first volume waited; the least latency comes late
    received = done + jitter + latency
    sent = received - latency - (-skew)  # on the sender's clock, 2.5 s ahead
    running = np.minimum.accumulate(received - sent)  # the engine's estimate at each volume
    decisions = []
    for i in range(n):
        d = {"index": i, "tr_s": tr, "offset_s": 0.0, "clip": "a" if i < 15 else "b",
             "action": "neutral" if i == 0 else ("switch" if i == 15 else "keep"), "clock_offset_s": running[i],
             "timestamps": {"acquired": (done[i] + jitter[i] + skew) + running[i],
                            "audio_scheduled": received[i] + 0.01},
             "audio_frame": None, "audio_lead_s": None, "audio_rate": None}
        if i in (0, 15):
            d.update(audio_frame=1000 * (i + 1), audio_lead_s=0.2, audio_rate=48000)
        decisions.append(d)
    rows = music_events(decisions, Lib, 48000, n)
    start = s0 + latency.min()  # the true start, late by the least latency only
    expected = [received[i] + 0.01 + 0.2 - start for i in (0, 15)]
    np.testing.assert_allclose([r["onset"] for r in rows], expected, atol=1e-6)
    # with each stamp's own running estimate the first volume's 0.9 s wait would have placed the start late
    assert running[0] - running[-1] > 0.5


@pytest.mark.timeout(120)
def test_a_receive_record_exports_bold_only_and_an_incomplete_run_is_named(b2m_proc, endpoint, fmri1_nii, tmp_path):
    out, bids = tmp_path / "rx", tmp_path / "bids"
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive")
    rx.wait_for("ready")
    tx = b2m_proc("scanner", "replay", fmri1_nii, "--connect", endpoint, "--speed", "max", "--run-id", "a1",
                  "--quiet", name="replay")
    assert tx.wait() == 0, tx.stderr()
    rx.wait_for("a1\t", stream="stdout")
    tx = b2m_proc("scanner", "replay", fmri1_nii, "--connect", endpoint, "--speed", "max", "--run-id", "a2",
                  "--stop", 5, "--quiet", name="replay-part")  # 5 of 40 volumes: the scanner stopped early
    assert tx.wait() == 0, tx.stderr()
    rx.kill(signal.SIGTERM)
    bad = b2m_proc("session", "export", out, "--bids", bids, "--subject", "01_x", name="export-bad")
    assert bad.wait() == 2 and "--subject '01_x': a BIDS label is letters and digits only" in bad.stderr()
    ex = b2m_proc("session", "export", out, "--bids", bids, "--subject", "02", name="export")
    code = ex.wait()
    assert ex.stdout().strip() == "a1\trun-01"
    assert "no events.tsv is written" in ex.stderr()
    func = bids / "sub-02" / "func"
    assert sorted(os.listdir(func)) == ["sub-02_task-neurofeedback_run-01_bold.json",
                                        "sub-02_task-neurofeedback_run-01_bold.nii.gz"]
    src = nib.load(fmri1_nii)
    got = nib.load(func / "sub-02_task-neurofeedback_run-01_bold.nii.gz")
    assert np.array_equal(np.asanyarray(got.dataobj.get_unscaled()), np.asanyarray(src.dataobj.get_unscaled()))
    # the partial run: named with what is missing, kept in the record, and the exit code says so
    assert code == 1 and "skipped run a2: 5 of 40 volumes recorded, missing [5, 6, 7" in ex.stderr()

    # a lab's own listening run: the record's run a1 with the events `b2m present` wrote, as the Training
    # task `b2m train` reads
    played = tmp_path / "played.tsv"
    played.write_text("onset\tduration\tgenre\ttrack\tstart\tend\tdesign_onset\n"
                      "0.05\t15\tblues\t98\t1.5\t16.5\t0\n15.05\t15\tjazz\t3\t0\t15\t15\n")
    lab = tmp_path / "lab"
    ex = b2m_proc("session", "export", out, "--bids", lab, "--subject", "001", "--task", "Training", "--run-ids",
                  "a1", "--events", f"a1={played}", name="export-lab")
    assert ex.wait() == 0, ex.stderr()
    from offline_training.bids import find_runs, read_events

    (run,) = find_runs(lab, "001", tasks=("Training",))
    assert run.run == 1 and read_events(run.events) == read_events(played)
    assert np.array_equal(np.asanyarray(nib.load(run.bold).dataobj.get_unscaled()),
                          np.asanyarray(src.dataobj.get_unscaled()))
    bad = b2m_proc("session", "export", out, "--bids", lab, "--subject", "001", "--run-ids", "a9", name="export-a9")
    assert bad.wait() == 2 and "no run 'a9' in the record (it has a1, a2)" in bad.stderr()
    again = b2m_proc("session", "export", out, "--bids", lab, "--subject", "001", "--task", "Training",
                     "--run-ids", "a1", "--events", f"a1={played}", name="export-again")
    assert again.wait() == 0, again.stderr()  # the same run again: rewritten
    other = tmp_path / "other-session"
    shutil.copytree(out, other)
    clash = b2m_proc("session", "export", other, "--bids", lab, "--subject", "001", "--task", "Training",
                     "--run-ids", "a1", name="export-clash")
    assert clash.wait() == 2 and f"run-01_bold.nii.gz already holds run a1 of {out}; numbering" in clash.stderr()


def test_device_onsets_from_the_trigger_ignore_late_stamps(rng):
    """A folder watch stamps each file after its reconstruction (0.7 s here): placed from the stamps the run
    starts 0.7 s late and every onset is 0.7 s early. The trigger's pulse of volume 0 (read on the session's
    clock) is the start itself. Ground truth: the start ``s0`` the synthetic decisions are built from."""
    Lib = _two_clip_library()
    tr, s0, n, recon = 1.5, 1_800_000_000.0, 20, 0.7
    done = s0 + (np.arange(n) + 1) * tr
    decisions = []
    for i in range(n):
        d = {"index": i, "tr_s": tr, "offset_s": 0.0, "clip": "a" if i < 8 else "b",
             "action": "neutral" if i == 0 else ("switch" if i == 8 else "keep"), "clock_offset_s": 0.0,
             "timestamps": {"acquired": done[i] + recon + rng.uniform(0, 0.05),
                            "audio_scheduled": done[i] + recon + 0.1},
             "audio_frame": None, "audio_lead_s": None, "audio_rate": None}
        if i in (0, 8):
            d.update(audio_frame=1000 * (i + 1), audio_lead_s=0.25, audio_rate=48000)
        decisions.append(d)
    truth = [done[i] + recon + 0.1 + 0.25 - s0 for i in (0, 8)]
    stamped = music_events(decisions, Lib, 48000, n)
    np.testing.assert_allclose([r["onset"] for r in stamped], np.subtract(truth, recon), atol=0.06)
    triggered = music_events(decisions, Lib, 48000, n, trigger_start=s0)
    np.testing.assert_allclose([r["onset"] for r in triggered], truth, atol=1e-6)


def test_button_presses_are_placed_from_the_runs_start():
    """Presses on the session computer's clock (Unix s) within a run become its response rows; those before
    the run or after its last volume are not its."""
    start, run_s = 1_800_000_000.0, 30.0
    presses = [(start - 1.0, "1"), (start + 2.5, "2"), (start + 29.9, "3"), (start + 30.0, "4")]
    rows = response_events(presses, start, run_s)
    assert [(round(r["onset"], 6), r["response"], r["trial_type"], r["duration"]) for r in rows] == \
        [(2.5, "2", "response", 0.0), (29.9, "3", "response", 0.0)]
    assert set(rows[0]) == set(EVENT_COLUMNS) and rows[0]["clip"] == "n/a"


def test_decoded_timeseries_of_a_record_without_tsnr_exports_it_as_na(tmp_path):
    """A record made before the tSNR was kept (no ``tsnr`` key in its decisions) exports as before, with the
    column n/a; a newer record's figures are written as recorded, n/a where None (a run's first volumes)."""
    from realtime.session.bids import write_decoded_timeseries

    def decision(i, **kw):
        return {"index": i, "tr_s": 2.0, "decoded_index": None, "action": "keep", "clip": "a", "fd_mm": None,
                "dvars_pct": 0.25 * i, "flagged": False, "stand_in": False, "embedding": None, **kw}

    old = [decision(i) for i in range(3)]
    path, side = write_decoded_timeseries(str(tmp_path / "old"), old)
    rows = _read_events(path)
    assert [r["tsnr"] for r in rows] == ["n/a"] * 3 and [r["dvars_pct"] for r in rows] == ["0", "0.25", "0.5"]
    new = [decision(0, tsnr=None), decision(1, tsnr=48.123456789), decision(2, tsnr=47.5)]
    path, side = write_decoded_timeseries(str(tmp_path / "new"), new)
    rows = _read_events(path)
    assert [r["tsnr"] for r in rows] == ["n/a", "48.1234568", "47.5"]  # 9 significant digits
    assert json.loads(open(side).read())["tsnr"]["Units"] == ""
