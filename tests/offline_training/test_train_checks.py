"""``train.prepare`` checks every run and input before any long work (embedding, motion correction):
events against each run's image, one TR for all runs, every sidecar and header, the stimuli, the masks.

Each test writes a tiny BIDS dataset of real files and breaks one thing in it; the error must name the file
(and row), and nothing may have been computed or written yet (no ``derivatives/`` folder, no bundle folder).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from offline_training.bids import EventsFileError, find_runs
from offline_training.train import TrainConfig, check_runs, check_test_presentations, prepare, train

TR = 1.5
N_VOL = 20  # 30 s: two 15 s excerpts per run
HEADER = "onset\tduration\tgenre\ttrack\tstart\tend"
RUNS = {("Training", 1): [("jazz", 1), ("metal", 2)], ("Training", 2): [("jazz", 3), ("metal", 4)],
        ("Test", 1): [("jazz", 5), ("metal", 6)]}


def _events(clips, scale=1.0) -> str:
    rows = [HEADER] + [f"{i * 15 * scale:g}\t{15 * scale:g}\t'{g}'\t{k}\t2\t17" for i, (g, k) in enumerate(clips)]
    return "\r\n".join(rows) + "\r\n"


def _image(path, rng, tr=TR, n=N_VOL):
    img = nib.Nifti1Image(rng.integers(500, 1000, (6, 6, 4, n)).astype(np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((3.0, 3.0, 3.0, tr))
    nib.save(img, path)


def _stem(root, task, run):
    return root / "sub-001" / "func" / f"sub-001_task-{task}_run-{run:02d}"


@pytest.fixture
def ds(tmp_path, rng):
    root = tmp_path / "ds"
    (root / "sub-001" / "func").mkdir(parents=True)
    (root / "stimuli").mkdir()
    for clips in RUNS.values():
        for genre, track in clips:
            sf.write(root / "stimuli" / f"{genre}.{track:05d}.wav", 0.1 * rng.standard_normal(30 * 1000), 1000)
    for (task, run), clips in RUNS.items():
        stem = _stem(root, task, run)
        stem.with_name(stem.name + "_events.tsv").write_text(_events(clips), newline="")
        stem.with_name(stem.name + "_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": task}))
        _image(f"{stem}_bold.nii.gz", rng)
    return root


def _replace(path, text: str):
    path.unlink()  # replaced, not edited in place (the file may be a hard link of a shared dataset)
    path.write_text(text, newline="")


def _prepare_fails(root, cfg=None, match=None):
    with pytest.raises((ValueError, OSError)) as info:
        prepare(str(root), cfg or TrainConfig(motion=False))
    assert not (root / "derivatives").exists()  # failed before embedding or motion correction wrote anything
    return str(info.value)


def test_check_runs_accepts_the_tiny_dataset_and_returns_each_runs_events(ds):
    img0, tr, events = check_runs(find_runs(ds, "001"))
    assert tr == TR and img0.shape == (6, 6, 4, N_VOL)
    assert sorted(events) == sorted(f"sub-001_task-{t}_run-{r:02d}" for t, r in RUNS)
    assert [e.stimulus_name for e in events["sub-001_task-Test_run-01"]] == ["jazz.00005", "metal.00006"]


def test_prepare_refuses_an_event_past_the_end_of_the_last_run(ds, rng):
    ev = _stem(ds, "Test", 1).with_name("sub-001_task-Test_run-01_events.tsv")
    _replace(ev, _events(RUNS[("Test", 1)] + [("jazz", 5)]))  # a third 15 s excerpt: 45 s in a 30 s run
    msg = _prepare_fails(ds)
    assert str(ev) in msg and "line 4" in msg and "ends at 45 s, after the run" in msg
    assert f"the run has {N_VOL} volumes of TR 1.5 s = 30 s" in msg and "in seconds" in msg


def test_prepare_refuses_a_run_shorter_than_its_events(ds, rng):
    stem = _stem(ds, "Training", 2)
    stem.with_name(stem.name + "_bold.nii.gz").unlink()
    _image(f"{stem}_bold.nii.gz", rng, n=15)  # 22.5 s: the second excerpt is cut
    msg = _prepare_fails(ds)
    assert f"{stem}_events.tsv, line 3" in msg and "the run has 15 volumes of TR 1.5 s = 22.5 s" in msg


def test_prepare_refuses_onsets_in_milliseconds_in_a_test_run(ds):
    ev = _stem(ds, "Test", 1).with_name("sub-001_task-Test_run-01_events.tsv")
    _replace(ev, _events(RUNS[("Test", 1)], scale=1000))
    msg = _prepare_fails(ds)
    assert f"{ev}, line 2" in msg and "look like milliseconds" in msg and "onsets and durations are in seconds" in msg


def test_prepare_refuses_a_header_only_events_file(ds):
    ev = _stem(ds, "Training", 2).with_name("sub-001_task-Training_run-02_events.tsv")
    _replace(ev, HEADER + "\r\n")
    msg = _prepare_fails(ds)
    assert str(ev) in msg and "no events: the file has its header only" in msg


def test_prepare_refuses_overlapping_events(ds):
    ev = _stem(ds, "Training", 1).with_name("sub-001_task-Training_run-01_events.tsv")
    _replace(ev, HEADER + "\r\n0\t15\t'jazz'\t1\t2\t17\r\n7.5\t15\t'metal'\t2\t2\t17\r\n")
    msg = _prepare_fails(ds)
    assert f"{ev}, line 3" in msg and "event of line 2" in msg and "must not overlap" in msg


def test_prepare_refuses_a_run_at_another_tr_naming_both_files(ds, rng):
    stem = _stem(ds, "Test", 1)
    stem.with_name(stem.name + "_bold.nii.gz").unlink()
    _image(f"{stem}_bold.nii.gz", rng, tr=2.0, n=15)  # header and sidecar agree with each other: 2 s
    _replace(stem.with_name(stem.name + "_bold.json"), json.dumps({"RepetitionTime": 2.0, "TaskName": "Test"}))
    msg = _prepare_fails(ds)
    first = _stem(ds, "Training", 1)
    assert f"{stem}_bold.json" in msg and f"{first}_bold.json" in msg
    assert "say 2 s" in msg and "say 1.5 s" in msg and "TR differs between runs" in msg


def test_prepare_checks_the_last_runs_sidecar_before_any_work(ds):
    sidecar = _stem(ds, "Test", 1).with_name("sub-001_task-Test_run-01_bold.json")
    _replace(sidecar, json.dumps({"TaskName": "Test"}))
    msg = _prepare_fails(ds)
    assert f"{sidecar}: expected 'RepetitionTime'" in msg


def test_prepare_checks_the_last_runs_header_before_any_work(ds, rng):
    bold = _stem(ds, "Test", 1).with_name("sub-001_task-Test_run-01_bold.nii.gz")
    bold.unlink()
    img = nib.Nifti1Image(rng.integers(0, 9, (6, 6, 4)).astype(np.int16), np.eye(4))  # 3-D: one volume
    nib.save(img, bold)
    msg = _prepare_fails(ds)
    assert f"{bold}: has shape (6, 6, 4); expected a 4-D run" in msg


def test_prepare_says_a_missing_stimulus_folder_does_not_exist(ds, tmp_path):
    missing = tmp_path / "no-such-folder"
    msg = _prepare_fails(ds, TrainConfig(motion=False, stimuli=str(missing)))
    assert f"{missing}: stimulus folder not found (given by --stimuli)" in msg
    assert "jazz" not in msg  # not reported as a missing first track


def test_prepare_names_the_events_row_asking_for_a_missing_track(ds):
    (ds / "stimuli" / "metal.00006.wav").unlink()
    msg = _prepare_fails(ds)
    ev = _stem(ds, "Test", 1).with_name("sub-001_task-Test_run-01_events.tsv")
    assert f"metal.00006.wav: stimulus not found, asked for by {ev}, line 3" in msg


def test_prepare_refuses_a_roi_mask_that_is_not_nifti(ds, tmp_path):
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((6, 6, 4), bool))
    msg = _prepare_fails(ds, TrainConfig(motion=False, roi_mask=str(mask)))
    assert str(mask) in msg and "--roi-mask expects a NIfTI image" in msg
    missing = tmp_path / "atlas.nii.gz"
    msg = _prepare_fails(ds, TrainConfig(motion=False, parcellation=str(missing), top_regions=1))
    assert f"{missing}: --parcellation file not found" in msg


def test_train_writes_no_bundle_folder_when_an_input_is_wrong(ds, tmp_path):
    ev = _stem(ds, "Test", 1).with_name("sub-001_task-Test_run-01_events.tsv")
    _replace(ev, HEADER + "\r\n")
    out = tmp_path / "bundle"
    with pytest.raises(EventsFileError, match="no events"):
        train(str(ds), str(out), TrainConfig(motion=False))
    assert not out.exists()


def test_check_test_presentations_refuses_fewer_than_two_decodable_excerpts(ds):
    from offline_training.bids import read_events
    from offline_training.stages import RunData

    (rf,) = [r for r in find_runs(ds, "001") if r.task == "Test"]
    events = read_events(rf.events)
    index = np.full(N_VOL, -1)
    index[:10] = 0  # only the first excerpt has volumes
    run = RunData(rf, np.zeros((N_VOL, 3), np.float32), np.zeros((N_VOL, 2), np.float32), index, events)
    with pytest.raises(ValueError) as info:
        check_test_presentations([run], (2, 3))
    msg = str(info.value)
    assert "leave 1 excerpt(s) with volumes to decode them" in msg and str(rf.events) in msg and "NaN" in msg
    index[10:] = 1
    check_test_presentations([run], (2, 3))  # two excerpts: identification is defined
