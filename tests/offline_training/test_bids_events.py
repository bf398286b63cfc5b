"""offline_training.bids: the real ds003720 metadata, and tiny synthetic files for
the error paths, the TR check and the stimulus cut."""

from __future__ import annotations

import json
import os
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from offline_training.bids import (
    GTZAN_GENRES,
    Event,
    EventsFileError,
    find_runs,
    load_bold,
    read_events,
    read_sidecar,
    stimulus_segment,
)

HEADER = "onset\tduration\tgenre\ttrack\tstart\tend"


@pytest.fixture(scope="module")
def ds_root(shared_data) -> str:
    root = os.path.join(shared_data, "ds003720")
    if not os.path.isdir(root):
        pytest.skip(f"ds003720 metadata not found at {root}")
    return root


@pytest.fixture(scope="module")
def real_runs(ds_root):
    runs = find_runs(ds_root, "sub-001", require_bold=False)
    return {(r.task, r.run): read_events(r.events) for r in runs}


def _train(real_runs):
    return [real_runs[("Training", i)] for i in range(1, 13)]


def _test(real_runs):
    return [real_runs[("Test", i)] for i in range(1, 7)]


# ----------------------------------------------------------------- real ds003720 metadata


def test_find_runs_real_dataset_lists_training_then_test(ds_root):
    runs = find_runs(ds_root, "001", require_bold=False)
    assert [(r.task, r.run) for r in runs] == ([("Training", i) for i in range(1, 13)]
                                               + [("Test", i) for i in range(1, 7)])
    assert all(r.bold is None and r.subject == "001" for r in runs)
    assert runs[3].name == "sub-001_task-Training_run-04"
    assert runs[3].events.name == "sub-001_task-Training_run-04_events.tsv"
    assert runs[3].sidecar.name == "sub-001_task-Training_run-04_bold.json"
    assert find_runs(ds_root, 1, require_bold=False) == runs


def test_find_runs_real_dataset_without_images_raises_when_bold_required(ds_root):
    with pytest.raises(FileNotFoundError, match="sub-001_task-Training_run-01_bold.nii.gz"):
        find_runs(ds_root, "001")


def test_find_runs_unknown_subject_names_folder_and_lists_subjects(ds_root):
    with pytest.raises(FileNotFoundError, match=r"sub-009.*func.*sub-001"):
        find_runs(ds_root, "009", require_bold=False)


def test_read_events_real_files_have_41_events_every_15_s(ds_root, real_runs):
    assert len(real_runs) == 18
    for (task, run), events in real_runs.items():
        assert len(events) == 41, (task, run)
        assert [e.onset_s for e in events] == [15.0 * i for i in range(41)]
        assert all(e.duration_s == 15.0 for e in events)
        assert all(e.genre in GTZAN_GENRES and 0 <= e.track <= 99 for e in events)
        assert events[-1].onset_s + events[-1].duration_s == 410 * 1.5  # 410 volumes at TR 1.5 s
    # the parser really met the quirks: CRLF, no final newline, quoted genres
    raw = open(os.path.join(ds_root, "sub-001", "func", "sub-001_task-Test_run-01_events.tsv"), "rb").read()
    assert raw.startswith(HEADER.encode() + b"\r\n") and raw.count(b"\r\n") == 41
    assert not raw.endswith(b"\n") and b"\t'pop'\t" in raw


def test_read_events_real_unique_excerpt_counts(real_runs):
    train = {e.key for events in _train(real_runs) for e in events}
    test = {e.key for events in _test(real_runs) for e in events}
    assert len(train) == 480
    assert len(test) == 60
    assert train.isdisjoint(test)
    # not even a GTZAN track is shared, and each track is used with one start only
    assert {k[:2] for k in train}.isdisjoint({k[:2] for k in test})
    assert len({k[:2] for k in train | test}) == 540
    assert Counter(k[0] for k in train) == {g: 48 for g in GTZAN_GENRES}
    assert Counter(k[0] for k in test) == {g: 6 for g in GTZAN_GENRES}


def test_read_events_real_test_runs_repeat_each_excerpt_four_times(real_runs):
    runs = _test(real_runs)
    for events in runs:
        keys = [e.key for e in events]
        assert len(set(keys)) == 10
        assert sorted(k[0] for k in keys[:10]) == sorted(GTZAN_GENRES)  # one clip per genre
        assert keys[:40] == keys[:10] * 4  # four identical blocks of 10 clips
        assert keys[40] == keys[0]  # README: the 1st stimulus is also the last (600-615 s)
    # across the 6 runs, within the four blocks, every test excerpt is heard exactly 4 times
    in_blocks = Counter(e.key for events in runs for e in events[:40])
    assert len(in_blocks) == 60 and set(in_blocks.values()) == {4}
    # counting the event at 600 s too: 54 excerpts 4 times, the runs' first ones 5 times
    all_events = Counter(e.key for events in runs for e in events)
    assert Counter(all_events.values()) == {4: 54, 5: 6}
    # each excerpt belongs to one run only
    assert sum(len({e.key for e in events}) for events in runs) == 60


def test_read_events_real_training_runs_chain_their_boundary_clip(real_runs):
    runs = _train(real_runs)
    for i, events in enumerate(runs):
        assert events[0].key == runs[i - 1][-1].key  # run-01 repeats run-12's last clip
        assert len({e.key for e in events[1:]}) == 40
    counts = Counter(e.key for events in runs for e in events)
    assert Counter(counts.values()) == {1: 468, 2: 12}


def test_read_events_training_run04_rows_without_leading_quote(ds_root, real_runs):
    path = os.path.join(ds_root, "sub-001", "func", "sub-001_task-Training_run-04_events.tsv")
    lines = open(path, "rb").read().split(b"\r\n")
    assert [ln.split(b"\t")[2] for ln in lines[-4:]] == [b"'disco'", b"classical'", b"jazz'", b"metal'"]
    events = real_runs[("Training", 4)]
    assert [(e.genre, e.track, e.start_s, e.end_s) for e in events[-4:]] == [
        ("disco", 62, 13.42, 28.42), ("classical", 37, 1.96, 16.96),
        ("jazz", 58, 4.73, 19.73), ("metal", 97, 9.98, 24.98)]
    assert events[-1].stimulus_name == "metal.00097"
    assert events[-1].stimulus_file == "metal.00097.wav"
    assert real_runs[("Training", 5)][0].key == events[-1].key  # run-05 opens with it, quoted


def test_read_events_real_offsets_lie_within_the_30_s_track(real_runs):
    events = [(task, run, i + 2, e) for (task, run), evs in real_runs.items() for i, e in enumerate(evs)]
    assert all(0 <= e.start_s < e.end_s <= 30.0 for *_, e in events)
    assert min(e.start_s for *_, e in events) == 0.05 and max(e.end_s for *_, e in events) == 30.0
    # all excerpts last 15 s but one, whose duration column still says 15
    odd = [(task, run, line, e.genre, e.track, e.start_s, e.end_s)
           for task, run, line, e in events if abs(e.end_s - e.start_s - 15.0) > 1e-9]
    assert odd == [("Training", 12, 34, "pop", 49, 9.59, 24.58)]


def test_read_events_real_integer_offsets_parse(ds_root, real_runs):
    # five rows write start/end as integers ("10", "25") instead of two decimals
    found = []
    for (task, run), events in real_runs.items():
        path = os.path.join(ds_root, "sub-001", "func", f"sub-001_task-{task}_run-{run:02d}_events.tsv")
        rows = open(path, "rb").read().decode().split("\r\n")[1:]
        for row, e in zip(rows, events):
            start, end = row.split("\t")[4:]
            if "." not in start:
                assert (float(start), float(end)) == (e.start_s, e.end_s)
                found.append((task, run, e.genre, e.track, e.start_s, e.end_s))
    assert sorted(found) == [("Training", 1, "metal", 92, 10.0, 25.0), ("Training", 5, "jazz", 47, 10.0, 25.0),
                             ("Training", 6, "disco", 32, 14.0, 29.0), ("Training", 9, "classical", 47, 6.0, 21.0),
                             ("Training", 9, "country", 79, 15.0, 30.0)]


def test_read_sidecar_real_tr_and_slice_timing(ds_root):
    for run in find_runs(ds_root, "001", require_bold=False):
        meta = read_sidecar(run.sidecar)
        assert meta["RepetitionTime"] == 1.5
        assert meta["TaskName"] == run.task
        assert len(meta["SliceTiming"]) == 68 and max(meta["SliceTiming"]) < 1.5
        assert len(set(meta["SliceTiming"])) == 17  # multiband factor 4


# ----------------------------------------------------------------- events: synthetic


def _write(path, text: str):
    path.write_bytes(text.encode())
    return path


def test_read_events_accepts_lf_unquoted_genres_and_extra_columns(tmp_path):
    p = _write(tmp_path / "ev.tsv", "trial_type\tonset\tduration\tgenre\ttrack\tstart\tend\n"
                                    "music\t0\t15\tblues\t98\t1.5\t16.5\n"
                                    "music\t15\t15\t'rock\t0\t0\t15\n\n")
    assert read_events(p) == [
        Event(0.0, 15.0, "blues", 98, 1.5, 16.5, {"trial_type": "music"}),
        Event(15.0, 15.0, "rock", 0, 0.0, 15.0, {"trial_type": "music"})]
    assert read_events(p)[0].stimulus_file == "blues.00098.wav"


@pytest.mark.parametrize("row, line, column, expected", [
    ("15\t15\t'rock'\t1\t2.5\t17.5\r\nabc\t15\t'rock'\t1\t2.5\t17.5", 3, "onset", "decimal number"),
    ("0\t15\t'rokc'\t1\t2.5\t17.5", 2, "genre", "one of blues"),
    ("0\t15\t'ro'ck'\t1\t2.5\t17.5", 2, "genre", "in single quotes"),
    ("0\t15\t'rock'\t1.0\t2.5\t17.5", 2, "track", "whole number"),
    ("0\t15\t'rock'\t1\t2.5", 2, "end", "expected 6 tab-separated fields"),
    ("0\t15\t'rock'\t1\t2.5\t2.5", 2, "end", "end > start"),
    ("0\t15\t'rock'\t1\t20\t35", 2, "end", "within the 30 s source track"),
    ("0\tnan\t'rock'\t1\t2.5\t17.5", 2, "duration", "decimal number"),
    ("0\t0\t'rock'\t1\t2.5\t17.5", 2, "duration", "duration > 0"),
    ("0\t15\t'rock'\t1\t-1\t14", 2, "start", "start >= 0"),
])
def test_read_events_malformed_row_names_file_line_column(tmp_path, row, line, column, expected):
    p = _write(tmp_path / "sub-01_task-X_run-01_events.tsv", HEADER + "\r\n" + row)
    with pytest.raises(EventsFileError) as info:
        read_events(p)
    msg = str(info.value)
    assert str(p) in msg and f"line {line}" in msg and f"column '{column}'" in msg and expected in msg
    assert (info.value.line, info.value.column, info.value.path) == (line, column, str(p))
    assert isinstance(info.value, ValueError)


def test_read_events_missing_column_names_it(tmp_path):
    p = _write(tmp_path / "ev.tsv", "onset\tDuration\tgenre\ttrack\tstart\tend\r\n0\t15\t'rock'\t1\t0\t15")
    with pytest.raises(EventsFileError, match=r"line 1, column 'duration': column missing.*'Duration'"):
        read_events(p)


def test_read_events_missing_or_binary_file_names_it(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="nope_events.tsv"):
        read_events(tmp_path / "nope_events.tsv")
    p = tmp_path / "bin_events.tsv"
    p.write_bytes(b"\xff\xfe" + rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"bin_events.tsv: not UTF-8"):
        read_events(p)


# ----------------------------------------------------------------- runs, sidecars, NIfTI


def _tiny_run(tmp_path, rng, tr_header=1.5, unit="sec", tr_sidecar=1.5, ext=".nii.gz", task="Training"):
    func = tmp_path / "ds" / "sub-001" / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = func / f"sub-001_task-{task}_run-01"
    img = nib.Nifti1Image(rng.integers(0, 1000, (3, 4, 5, 6)).astype(np.int16), np.diag([2.0, 2, 2, 1]))
    img.header.set_zooms((2.0, 2.0, 2.0, tr_header))
    if unit is not None:
        img.header.set_xyzt_units("mm", unit)
    nib.save(img, f"{stem}_bold{ext}")
    (func / f"{stem.name}_bold.json").write_text(json.dumps({"RepetitionTime": tr_sidecar, "TaskName": task}))
    (func / f"{stem.name}_events.tsv").write_text(HEADER + "\n0\t15\t'rock'\t1\t0\t15\n")
    return tmp_path / "ds"


def test_load_bold_matching_tr_returns_image_and_tr(tmp_path, rng):
    root = _tiny_run(tmp_path, rng)
    (run,) = find_runs(root, "001")
    img, tr = load_bold(run)
    assert tr == 1.5 and img.shape == (3, 4, 5, 6) and img.get_data_dtype() == np.int16


def test_load_bold_reads_header_time_unit_msec(tmp_path, rng):
    root = _tiny_run(tmp_path, rng, tr_header=1500.0, unit="msec", ext=".nii")
    img, tr = load_bold(find_runs(root, "001")[0])
    assert tr == 1.5


def test_load_bold_tr_mismatch_names_both_files_and_values(tmp_path, rng):
    root = _tiny_run(tmp_path, rng, tr_header=2.0, tr_sidecar=1.5)
    (run,) = find_runs(root, "001")
    with pytest.raises(ValueError) as info:
        load_bold(run)
    msg = str(info.value)
    assert str(run.sidecar) in msg and str(run.bold) in msg
    assert "RepetitionTime 1.5 s" in msg and "pixdim[4] = 2.0 sec" in msg


def test_load_bold_unknown_time_unit_raises(tmp_path, rng):
    root = _tiny_run(tmp_path, rng, unit=None)
    (run,) = find_runs(root, "001")
    with pytest.raises(ValueError, match=r"_bold.nii.gz: the NIfTI time unit is 'unknown'"):
        load_bold(run)


def test_load_bold_real_example4d_with_ms_labelled_as_seconds_raises(tmp_path):
    # nibabel's example4d.nii.gz stores pixdim[4] = 2000 with the unit 'sec' (it means 2 s)
    from nibabel.testing import data_path

    func = tmp_path / "sub-001" / "func"
    func.mkdir(parents=True)
    stem = func / "sub-001_task-Test_run-01"
    os.symlink(os.path.join(data_path, "example4d.nii.gz"), f"{stem}_bold.nii.gz")
    (func / f"{stem.name}_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    (func / f"{stem.name}_events.tsv").write_text(HEADER + "\n0\t15\trock\t1\t0\t15\n")
    (run,) = find_runs(tmp_path, "001")
    with pytest.raises(ValueError) as info:
        load_bold(run)
    msg = str(info.value)
    assert str(run.sidecar) in msg and str(run.bold) in msg
    assert "RepetitionTime 2.0 s" in msg and "pixdim[4] = 2000.0 sec" in msg
    assert "milliseconds labelled as seconds" in msg


def test_load_bold_truncated_or_corrupt_image_names_file(tmp_path, rng):
    root = _tiny_run(tmp_path, rng, ext=".nii")
    (run,) = find_runs(root, "001")
    data = run.bold.read_bytes()
    run.bold.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=rf"{run.bold}: truncated"):
        load_bold(run)
    run.bold.unlink()
    gz = run.bold.with_name(run.bold.name + ".gz")
    gz.write_bytes(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=rf"{gz}: cannot be read as NIfTI"):
        load_bold(find_runs(root, "001")[0])
    gz.unlink()
    with pytest.raises(FileNotFoundError, match=r"_run-01_bold.nii.gz: missing"):
        find_runs(root, "001")


def test_find_runs_missing_sidecar_or_duplicate_image_raises(tmp_path, rng):
    root = _tiny_run(tmp_path, rng)
    (run,) = find_runs(root, "001")
    nib.save(nib.load(run.bold), str(run.bold)[:-3])  # the same run as .nii as well
    with pytest.raises(ValueError, match=r"two bold files.*_bold.nii and .*_bold.nii.gz"):
        find_runs(root, "001")
    os.unlink(str(run.bold)[:-3])
    run.sidecar.unlink()
    with pytest.raises(FileNotFoundError, match=r"sub-001_task-Training_run-01_bold.json: missing"):
        find_runs(root, "001")


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid UTF-8 JSON"),
    ("[1.5]", "expected a JSON object"),
    ('{"TaskName": "Test"}', "'RepetitionTime' as a positive number"),
    ('{"RepetitionTime": "1.5"}', "'RepetitionTime' as a positive number"),
    ('{"RepetitionTime": 1.5, "SliceTiming": [0, 1.6]}', "'SliceTiming' as a list of times in \\[0, 1.5\\)"),
])
def test_read_sidecar_invalid_content_names_file(tmp_path, content, expected):
    p = tmp_path / "x_bold.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=rf"{p}: .*{expected}"):
        read_sidecar(p)


# ----------------------------------------------------------------- stimuli


def _event(genre="blues", track=98, start=7.42, end=22.42):
    return Event(onset_s=0.0, duration_s=15.0, genre=genre, track=track, start_s=start, end_s=end)


def _linear_gain(n, n_f):
    k = np.arange(n)
    return np.clip(np.minimum(k / n_f, (n - 1 - k) / n_f), 0.0, 1.0)


def test_stimulus_segment_cuts_exact_samples_with_linear_fades(tmp_path):
    sr = 1000
    ramp = np.arange(30 * sr, dtype=np.float32) / 2**15  # exact in float32; value = index / 2**15
    sf.write(tmp_path / "blues.00098.wav", ramp, sr, subtype="FLOAT")
    seg = stimulus_segment(_event(), tmp_path, sr)
    assert seg.dtype == np.float32 and seg.shape == (15000,)
    k = np.arange(15000)
    expected = (7420 + k) / 2**15 * _linear_gain(15000, 2000)
    np.testing.assert_allclose(seg, expected, rtol=1e-6, atol=0)
    # the middle is untouched: sample 2000 of the excerpt is sample 9420 of the track
    assert seg[2000] == ramp[9420] and seg[12999] == ramp[7420 + 12999]
    assert seg[0] == 0 and seg[-1] == 0
    assert seg[1000] == np.float32(ramp[8420] * 0.5)


def test_stimulus_segment_cosine_fade_matches_closed_form(tmp_path):
    sr = 800
    sf.write(tmp_path / "jazz.00005.wav", np.ones(30 * sr, dtype=np.float32), sr, subtype="FLOAT")
    seg = stimulus_segment(_event("jazz", 5, 0.0, 15.0), tmp_path, sr, fade="cosine")
    k = np.arange(12000)
    t = np.minimum(k, 11999 - k) / sr  # seconds from the nearest end
    expected = np.where(t < 2.0, np.sin(np.pi / 2 * t / 2.0) ** 2, 1.0)
    np.testing.assert_allclose(seg, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"fade must be one of 'linear', 'cosine'; got 'exp'"):
        stimulus_segment(_event("jazz", 5, 0.0, 15.0), tmp_path, sr, fade="exp")


def test_stimulus_segment_mixes_stereo_to_mono_and_normalises_rms(tmp_path, rng):
    sr = 1000
    left = rng.standard_normal(30 * sr).astype(np.float32) * 0.1
    right = rng.standard_normal(30 * sr).astype(np.float32) * 0.1
    sf.write(tmp_path / "pop.00049.wav", np.stack([left, right], axis=1), sr, subtype="FLOAT")
    # the real 14.99 s excerpt of Training run-12
    ev = _event("pop", 49, 9.59, 24.58)
    seg = stimulus_segment(ev, tmp_path, sr)
    assert seg.shape == (14990,)
    mono = (left.astype(np.float64) + right) / 2
    np.testing.assert_allclose(seg, mono[9590:9590 + 14990] * _linear_gain(14990, 2000), rtol=1e-6, atol=1e-9)
    loud = stimulus_segment(ev, tmp_path, sr, rms=0.05)
    assert np.sqrt(np.mean(loud.astype(np.float64) ** 2)) == pytest.approx(0.05, rel=1e-5)


def test_stimulus_segment_resamples_to_requested_rate(tmp_path):
    sr_file, sr, f0 = 3000, 2000, 7.0
    t_file = np.arange(30 * sr_file) / sr_file
    sf.write(tmp_path / "rock.00003.wav", np.sin(2 * np.pi * f0 * t_file).astype(np.float32), sr_file,
             subtype="FLOAT")
    seg = stimulus_segment(_event("rock", 3, 4.0, 19.0), tmp_path, sr, fade_s=0.0)
    assert seg.shape == (30000,)
    t = 4.0 + np.arange(30000) / sr
    # resample_poly's anti-aliasing filter passes 7 Hz with ripple far below 1e-3
    np.testing.assert_allclose(seg, np.sin(2 * np.pi * f0 * t), atol=1e-3)


def test_stimulus_segment_short_track_pads_a_little_then_raises(tmp_path):
    sr = 1000
    sf.write(tmp_path / "country.00079.wav", np.ones(29950, dtype=np.float32), sr, subtype="FLOAT")
    seg = stimulus_segment(_event("country", 79, 15.0, 30.0), tmp_path, sr)
    assert seg.shape == (15000,) and np.all(seg[-50:] == 0) and seg[-51] > 0
    with pytest.raises(ValueError, match=r"country.00079.wav: lasts 29.950 s.*\[15.0, 30.0\)"):
        stimulus_segment(_event("country", 79, 15.0, 30.0), tmp_path, sr, max_pad_s=0.01)


def test_stimulus_segment_missing_file_names_it_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        stimulus_segment(_event(), tmp_path, 16000)
    msg = str(info.value)
    assert str(tmp_path / "blues.00098.wav") in msg and "<genre>.<track:05d>.wav" in msg
    (tmp_path / "blues").mkdir()
    sf.write(tmp_path / "blues" / "blues.00098.wav", np.zeros(100, dtype=np.float32), 1000)
    with pytest.raises(FileNotFoundError, match="per-genre subfolder"):
        stimulus_segment(_event(), tmp_path, 16000)


def test_stimulus_segment_unreadable_audio_names_file(tmp_path, rng):
    (tmp_path / "blues.00098.wav").write_bytes(rng.integers(0, 256, 256, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"blues.00098.wav: cannot be read as audio"):
        stimulus_segment(_event(), tmp_path, 16000)


# ----------------------------------------------------------------- Training/Test leakage


def test_real_ds003720_training_and_test_tracks_are_disjoint(ds_root):
    from offline_training.bids import shared_tracks

    runs = find_runs(ds_root, "001", require_bold=False)
    train = [r for r in runs if r.task == "Training"]
    test = [r for r in runs if r.task == "Test"]
    assert shared_tracks(train, test) == []
    # and the check sees a track when it is shared: a Test run that plays a Training run's track
    names_train = {e.stimulus_name for r in train for e in read_events(r.events)}
    names_test = {e.stimulus_name for r in test for e in read_events(r.events)}
    assert len(names_train) == 480 and len(names_test) == 60 and not names_train & names_test


def test_shared_tracks_names_each_track_with_both_runs(tmp_path, rng):
    from offline_training.bids import shared_tracks
    from offline_training.train import TrainConfig, prepare

    root = _tiny_run(tmp_path, rng)  # Training run-01 plays rock 1 (0-15 s)
    func = root / "sub-001" / "func"
    (func / "sub-001_task-Training_run-02_bold.nii.gz").write_bytes(
        (func / "sub-001_task-Training_run-01_bold.nii.gz").read_bytes())
    (func / "sub-001_task-Training_run-02_bold.json").write_text(
        (func / "sub-001_task-Training_run-01_bold.json").read_text())
    (func / "sub-001_task-Training_run-02_events.tsv").write_text(HEADER + "\n0\t15\t'jazz'\t4\t0\t15\n")
    _tiny_run(tmp_path, rng, task="Test")
    # another excerpt (15-30 s) of the same recording: still the same track
    (func / "sub-001_task-Test_run-01_events.tsv").write_text(HEADER + "\n0\t15\t'rock'\t1\t15\t30\n"
                                                              "15\t15\t'pop'\t2\t0\t15\n")
    runs = find_runs(root, "001")
    train = [r for r in runs if r.task == "Training"]
    test = [r for r in runs if r.task == "Test"]
    assert shared_tracks(train, test) == [("rock.00001", "sub-001_task-Training_run-01", "sub-001_task-Test_run-01")]
    with pytest.raises(ValueError, match=r"1 track\(s\) are heard in both Training and Test runs \(first: "
                                         r"rock\.00001, in sub-001_task-Training_run-01 and sub-001_task-Test_run-01"
                                         r"\).*--allow-shared-tracks"):
        prepare(str(root), TrainConfig(subject="001"))


# ----------------------------------------------------------------- events against the run; find_runs messages


def test_read_events_overlapping_events_names_both_lines(tmp_path):
    p = _write(tmp_path / "sub-001_task-Training_run-01_events.tsv",
               HEADER + "\n0\t15\t'rock'\t1\t0\t15\n10\t15\t'jazz'\t2\t0\t15\n30\t15\t'pop'\t3\t0\t15\n")
    with pytest.raises(EventsFileError) as info:
        read_events(p)
    msg = str(info.value)
    assert str(p) in msg and "line 3" in msg and "event of line 2" in msg and "ends at 15 s" in msg
    assert "must not overlap" in msg and (info.value.line, info.value.column) == (3, "onset")
    # touching events (one ends where the next starts) are the ds003720 design, and are read
    touching = _write(tmp_path / "touching_events.tsv", HEADER + "\n0\t15\t'rock'\t1\t0\t15\n15\t15\t'jazz'\t2\t0\t15\n")
    assert [e.line for e in read_events(touching)] == [2, 3]


@pytest.mark.parametrize("rows, n_volumes, line, expected", [
    # the run is 10 x 1.5 s = 15 s: an event past its end, in milliseconds, cut by the end, or between volumes
    ("0\t15\t'rock'\t1\t0\t15\n15\t15\t'jazz'\t2\t0\t15\n", 10, 3,
     "ends at 30 s, after the run: the run has 10 volumes of TR 1.5 s = 15 s"),
    ("0\t15000\t'rock'\t1\t0\t15\n", 1000 * 10, None, None),  # fits a run of 15000 s: not an error
    ("0.0\t15000.0\t'rock'\t1\t0\t15\n", 10, 2, "look like milliseconds: BIDS onsets and durations are in seconds"),
    ("0\t10\t'rock'\t1\t0\t15\n10\t10\t'jazz'\t2\t0\t15\n", 10, 3, "ends at 20 s, after the run"),
    ("0\t1\t'rock'\t1\t0\t15\n1.6\t1\t'jazz'\t2\t0\t15\n", 10, 3, "covers no volume"),
    ("", 10, 2, "no events: the file has its header only"),
])
def test_check_events_in_run_names_file_line_and_run_length(tmp_path, rows, n_volumes, line, expected):
    from offline_training.bids import check_events_in_run

    p = _write(tmp_path / "sub-001_task-Test_run-01_events.tsv", HEADER + "\n" + rows)
    events = read_events(p)
    if expected is None:
        check_events_in_run(p, events, n_volumes, 1.5)
        return
    with pytest.raises(EventsFileError) as info:
        check_events_in_run(p, events, n_volumes, 1.5)
    msg = str(info.value)
    assert str(p) in msg and f"line {line}" in msg and expected in msg
    assert info.value.line == line


def _func_file(folder, name, text="x"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_find_runs_missing_image_says_which_file_and_what_to_do(tmp_path, rng):
    root = _tiny_run(tmp_path, rng)
    (run,) = find_runs(root, "001")
    run.bold.unlink()
    with pytest.raises(FileNotFoundError) as info:
        find_runs(root, "001")
    msg = str(info.value)
    assert str(run.bold) in msg and "missing" in msg and run.events.name in msg
    assert "require_bold" not in msg  # a Python argument b2m train has no option for
    assert "Put the image back" in msg and "leave the run out" in msg


def test_find_runs_sessions_layout_is_named_and_not_read(tmp_path):
    func = tmp_path / "sub-001" / "ses-01" / "func"
    for suffix in ("bold.json", "events.tsv", "bold.nii.gz"):
        _func_file(func, f"sub-001_ses-01_task-Training_run-01_{suffix}")
    (tmp_path / "sub-001" / "ses-02").mkdir()
    with pytest.raises(ValueError) as info:
        find_runs(tmp_path, "001")
    msg = str(info.value)
    assert str(tmp_path / "sub-001") in msg and "session folders (ses-01)" in msg
    assert "without sessions" in msg and "_ses-<label>" in msg and "subjects present" not in msg


def test_find_runs_task_differing_only_in_case_names_the_files(tmp_path, rng):
    root = _tiny_run(tmp_path, rng, task="Test")
    func = root / "sub-001" / "func"
    for suffix in ("bold.json", "events.tsv", "bold.nii.gz"):
        _func_file(func, f"sub-001_task-training_run-01_{suffix}")
    with pytest.raises(ValueError) as info:
        find_runs(root, "001")
    msg = str(info.value)
    assert str(func) in msg and "sub-001_task-training_run-01_bold.json" in msg
    assert "differs from task-Training or task-Test only in case" in msg and "case-sensitive" in msg


def test_find_runs_subject_folder_without_func_says_so(tmp_path):
    (tmp_path / "sub-001").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        find_runs(tmp_path, "001")
    msg = str(info.value)
    assert str(tmp_path / "sub-001" / "func") in msg and "exists but is empty" in msg
    assert "subjects present" not in msg  # it is present: the old message contradicted itself
    _func_file(tmp_path / "sub-001" / "anat", "sub-001_T1w.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"exists but holds only anat/; expected .* in func/"):
        find_runs(tmp_path, "001")
    with pytest.raises(FileNotFoundError, match=r"sub-002: subject folder not found .*subjects present .*: sub-001"):
        find_runs(tmp_path, "002")
