"""The simulated participant: layout, loader round trip, determinism, ground truth, calibration.

A tiny-grid dataset (1 Training + 1 Test run, 410 volumes) is simulated once
per session; tests read it and never modify it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from offline_training.bids import find_runs, find_subjects, load_bold, read_events, stimulus_segment
from offline_training.simulate import (
    GRID_PRESETS,
    SIMULATOR_VERSION,
    NoiseConfig,
    SimulationConfig,
    auditory_region,
    build_anatomy,
    build_noise_maps,
    calibrate_subject,
    double_gamma_hrf,
    explainable_variance,
    make_grid,
    move_volume,
    read_simulation_config,
    sample_head_placement,
    simulate_dataset,
    simulate_motion,
    slice_times_for_grid,
    voxel_responses,
)
from offline_training.simulate.calibration import dct_highpass_basis
from offline_training.simulate.dataset import _NiftiStream, default_metadata_dir
from offline_training.simulate.noise import RunNoise
from offline_training.simulate.response import HrfParams, Tuning
from realtime.preprocessing import framewise_displacement, rigid_matrix

from conftest import SHARED

# ds003720's real metadata: the shared copy if this checkout sits beside it, else the CC0 copy the package ships
META = Path(SHARED) / "data" / "ds003720"
if not (META / "sub-001" / "func").is_dir():
    META = default_metadata_dir()
needs_meta = pytest.mark.skipif(not (META / "sub-001" / "func").is_dir(), reason=f"ds003720 metadata not at {META}")


@pytest.fixture(scope="session")
def tiny_ds(tmp_path_factory):
    if not (META / "sub-001" / "func").is_dir():
        pytest.skip(f"ds003720 metadata not at {META}")
    root = tmp_path_factory.mktemp("sim") / "ds"
    result = simulate_dataset(root, SimulationConfig(grid="tiny", train_runs=1, test_runs=1, seed=0),
                              metadata_dir=META)
    return root, result


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------- layout


def test_simulate_layout_and_events_match_ds003720(tiny_ds):
    root, result = tiny_ds
    func = root / "sub-001" / "func"
    names = sorted(p.name for p in func.iterdir())
    stems = ["sub-001_task-Test_run-01", "sub-001_task-Training_run-01"]
    assert names == sorted(f"{s}_{suffix}" for s in stems for suffix in ("bold.nii.gz", "bold.json", "events.tsv"))
    for s in stems:
        assert (func / f"{s}_events.tsv").read_bytes() == (META / "sub-001" / "func" / f"{s}_events.tsv").read_bytes()
        # the sidecar is ds003720's but for SliceTiming, which gives the tiny grid's 17 simulated slices
        ours, real = (json.loads((d / f"{s}_bold.json").read_text()) for d in (func, META / "sub-001" / "func"))
        assert {k: v for k, v in ours.items() if k != "SliceTiming"} == {k: v for k, v in real.items()
                                                                       if k != "SliceTiming"}
        np.testing.assert_array_equal(ours["SliceTiming"], slice_times_for_grid(real["SliceTiming"], make_grid("tiny")))
        assert len(ours["SliceTiming"]) == 17
    desc = json.loads((root / "dataset_description.json").read_text())
    assert "SIMULATED" in desc["Name"] and desc["BIDSVersion"] and desc["GeneratedBy"][0]["Name"].startswith("brain2music")
    lines = (root / "participants.tsv").read_text().splitlines()
    assert lines[0] == "participant_id\tgroup\tn_responsive_voxels" and lines[1] == f"sub-001\tsimulated\t{result.n_responsive['001']}"
    assert (root / "README").read_text().startswith("SIMULATED")
    ev = read_events(func / "sub-001_task-Training_run-01_events.tsv") + read_events(
        func / "sub-001_task-Test_run-01_events.tsv")
    assert sorted(p.name for p in (root / "stimuli").iterdir()) == sorted({e.stimulus_file for e in ev})


@pytest.mark.slow
@needs_meta
def test_simulate_all_runs_have_ds003720_names_and_bytes(tmp_path):
    """On the full grid the events and sidecars are ds003720's, byte for byte."""
    root = tmp_path / "ds"
    simulate_dataset(root, SimulationConfig(grid="full", n_volumes=3), metadata_dir=META)
    real = sorted(p.name for p in (META / "sub-001" / "func").iterdir())
    sim = sorted(p.name for p in (root / "sub-001" / "func").iterdir())
    assert sim == sorted(real + [n.replace("_bold.json", "_bold.nii.gz") for n in real if n.endswith("_bold.json")])
    for n in real:
        assert (root / "sub-001" / "func" / n).read_bytes() == (META / "sub-001" / "func" / n).read_bytes()
    assert len(list((root / "stimuli").iterdir())) == 540


# ----------------------------------------------------------------------- reading back


def test_read_simulation_config_round_trips_and_marks_a_finished_simulation(tiny_ds, tmp_path):
    root, result = tiny_ds
    conf = read_simulation_config(root)
    assert conf["config"] == json.loads(json.dumps(result.config.to_dict()))  # tuples come back as lists
    assert conf["simulator_version"] == SIMULATOR_VERSION
    # a folder b2m simulate did not finish has no config.json: None, not an error
    assert read_simulation_config(tmp_path) is None
    bad = tmp_path / "derivatives" / "simulation" / "config.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON.*b2m simulate"):
        read_simulation_config(tmp_path)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json: expected an object with a 'config' object"):
        read_simulation_config(tmp_path)


def test_simulated_runs_read_through_the_bids_loader(tiny_ds):
    root, _ = tiny_ds
    assert find_subjects(root) == ["001"]
    runs = find_runs(root, "001")
    assert [(r.task, r.run) for r in runs] == [("Training", 1), ("Test", 1)]
    for run in runs:
        img, tr = load_bold(run)
        assert img.shape == GRID_PRESETS["tiny"][0] + (410,) and img.get_data_dtype() == np.int16
        assert tr == 1.5 and img.header.get_zooms() == (8.0, 8.0, 8.0, 1.5)
        assert img.header.get_xyzt_units() == ("mm", "sec")
        data = np.asarray(img.dataobj)
        assert data.min() >= 0 and 300 < np.percentile(data[data > 200], 50) < 3000
        for ev in read_events(run.events)[:3]:
            seg = stimulus_segment(ev, root / "stimuli", 22050)
            assert seg.shape == (int(round((ev.end_s - ev.start_s) * 22050)),) and np.abs(seg).max() > 0


def test_simulated_tsnr_is_near_the_requested_value(tiny_ds):
    root, _ = tiny_ds
    run = find_runs(root, "001")[0]
    data = np.asarray(load_bold(run)[0].dataobj).astype(np.float64)
    brain = np.asarray(nib.load(root / "derivatives/simulation/sub-001/sub-001_desc-brain_mask.nii.gz").dataobj) > 0
    y = data[brain].T
    b = dct_highpass_basis(y.shape[0], 1.5)
    tsnr = y.mean(axis=0) / (y - b @ (b.T @ y)).std(axis=0)
    assert 36 < np.median(tsnr) < 44


def test_the_live_chains_tsnr_finds_the_simulators_requested_tsnr(tiny_ds):
    """Ground truth for the live figure: the simulator scales its noise so the brain's median tSNR is
    ``NoiseConfig.tsnr``. The live chain (default preprocessing but motion correction, EMA high-pass of 60 s)
    finds it at the run's end, within 15 % (the run's own sampling and the drift the EMA keeps), and within 10 %
    of the offline figure above (SPM's 128 s DCT high-pass over the whole run). Physics of the difference: for
    white noise the EMA's output has s.d. (1 - a) sqrt(2 / (2 - a)) of the noise's, a = TR / tau = 1 / 40, so
    it reads about 2 % high; it keeps more of the slow drift than the DCT (a first-order roll-off at
    1 / (2 pi 60 s) against a cut at 1 / 128 s), which reads low."""
    from realtime.preprocessing import PreprocessConfig, preprocess_run
    from realtime.preprocessing.qc import median_tsnr

    root, _ = tiny_ds
    requested = read_simulation_config(root)["config"]["noise"]["tsnr"]
    assert requested == NoiseConfig().tsnr == 40.0
    run = find_runs(root, "001")[0]
    img, tr = load_bold(run)
    brain = np.asarray(nib.load(root / "derivatives/simulation/sub-001/sub-001_desc-brain_mask.nii.gz").dataobj) > 0
    res = preprocess_run(img.dataobj, img.affine, brain, PreprocessConfig(motion=False), tr_s=tr, stack=False)
    live = median_tsnr(res.tsnr)
    y = np.asarray(img.dataobj).astype(np.float64)[brain].T
    b = dct_highpass_basis(y.shape[0], tr)
    offline = np.median(y.mean(axis=0) / (y - b @ (b.T @ y)).std(axis=0))
    print(f"\nrequested tSNR {requested:g}; live chain (EMA 60 s, {brain.sum()} voxels, stride "
          f"{-(-brain.sum() // 2000)}) {live:.2f}; offline DCT 128 s {offline:.2f}")
    assert live == pytest.approx(requested, rel=0.15)
    assert live == pytest.approx(offline, rel=0.10)


# ----------------------------------------------------------------------- determinism (also via the CLI)


@needs_meta
def test_cli_same_seed_gives_the_same_bytes_for_the_same_run(tiny_ds, tmp_path, capsys, monkeypatch):
    from b2m.commands import simulate

    root_a, _ = tiny_ds
    root_b = tmp_path / "ds_b"
    p = argparse.ArgumentParser()
    simulate.add_parser(p.add_subparsers())
    args = p.parse_args(["simulate", "--out", str(root_b), "--grid", "tiny", "--train-runs", "0",
                         "--test-runs", "1", "--no-calibration", "--metadata", str(META),
                         "--stimuli-from", str(root_a / "stimuli")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"dataset\t{root_b}" in out and "task-Test\trun-01" in out
    # seeds are keyed per subject, run and component: a subset reproduces the same run byte for byte
    rel = ["sub-001/func/sub-001_task-Test_run-01_bold.nii.gz",
           "sub-001/func/sub-001_task-Test_run-01_events.tsv",
           "derivatives/simulation/sub-001/sub-001_tuning.tsv",
           "derivatives/simulation/sub-001/sub-001_desc-auditory_mask.nii.gz",
           "derivatives/simulation/sub-001/sub-001_task-Test_run-01_motion.tsv",
           "derivatives/simulation/sub-001/sub-001_task-Test_run-01_desc-response.npy",
           "derivatives/simulation/features/task-Test_run-01_features.tsv"]
    for r in rel:
        assert _sha(root_a / r) == _sha(root_b / r), r
    assert sorted(p.name for p in (root_b / "stimuli").iterdir()) == sorted(
        {e.stimulus_file for e in read_events(root_b / rel[1])})
    with pytest.raises(FileExistsError, match="not an empty folder"):
        args.func(args)


def test_different_seed_gives_a_different_participant():
    grid = make_grid("tiny")
    a = sample_head_placement(grid, np.random.default_rng(1)).world_from_mni
    b = sample_head_placement(grid, np.random.default_rng(2)).world_from_mni
    assert not np.allclose(a, b)


# ----------------------------------------------------------------------- ground truth


def test_saved_motion_is_the_truth_in_the_rigid_convention(tiny_ds):
    root, result = tiny_ds
    for r in result.runs:
        tsv = root / f"derivatives/simulation/sub-001/sub-001_task-{r.task}_run-{r.run:02d}_motion.tsv"
        rows = [line.split("\t") for line in tsv.read_text().splitlines()]
        assert rows[0] == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement"]
        p = np.array(rows[1:], dtype=float)
        assert p.shape == (410, 7) and np.all(p[0] == 0)
        np.testing.assert_allclose(p[:, 6], framewise_displacement(p[:, :6]), rtol=0, atol=1e-12)
        assert 0.08 < p[1:, 6].mean() < 0.25 and r.fd_mean_mm == pytest.approx(p[1:, 6].mean())


@pytest.mark.parametrize("preset, lo, hi", [("typical", 0.10, 0.20), ("bad", 0.25, 0.6)])
def test_motion_presets_give_published_fd_ranges(preset, lo, hi):
    fd = [framewise_displacement(simulate_motion(410, 1.5, preset, np.random.default_rng(s)))[1:].mean()
          for s in range(10)]
    assert lo < np.median(fd) < hi
    spikes = [np.sum(framewise_displacement(simulate_motion(410, 1.5, preset, np.random.default_rng(s))) > 0.5)
              for s in range(10)]
    assert np.median(spikes) >= 1
    assert np.all(simulate_motion(410, 1.5, "none", np.random.default_rng(0)) == 0)
    with pytest.raises(ValueError, match="motion must be one of"):
        simulate_motion(10, 1.5, "wild", np.random.default_rng(0))


def test_move_volume_follows_the_rigid_convention():
    # current(M @ x) == reference(x): a blob at world x0 moves to M @ x0
    grid = make_grid("small")
    ijk = np.indices(grid.shape).reshape(3, -1).T
    world = ijk * grid.voxel_mm + grid.affine[:3, 3]
    x0 = np.array([10.0, -20.0, 8.0])
    vol = np.exp(-0.5 * np.sum((world - x0) ** 2, axis=1) / 8.0**2).reshape(grid.shape).astype(np.float32)
    params = np.array([3.0, -2.0, 1.5, 0.05, -0.03, 0.08])
    moved = move_volume(vol, params, grid.affine)
    w = moved.ravel().astype(np.float64)
    centroid = (world * w[:, None]).sum(axis=0) / w.sum()
    expected = (rigid_matrix(params) @ np.r_[x0, 1.0])[:3]
    np.testing.assert_allclose(centroid, expected, atol=0.15)  # trilinear blur on 4 mm voxels
    # a whole-voxel translation is an exact shift
    shifted = move_volume(vol, np.array([grid.voxel_mm, 0, 0, 0, 0, 0]), grid.affine)
    np.testing.assert_allclose(shifted[1:], vol[:-1], atol=1e-6)


def test_noise_alone_gives_the_requested_tsnr():
    grid = make_grid("tiny")
    anatomy = build_anatomy(grid, sample_head_placement(grid, np.random.default_rng(0)), np.random.default_rng(1))
    cfg = NoiseConfig(tsnr=40.0)
    maps = build_noise_maps(anatomy, cfg, np.random.default_rng(2))
    n = 300
    noise = RunNoise(maps, cfg, grid.shape, n, 1.5, np.zeros(grid.shape[2]), anatomy.bias, np.random.default_rng(3))
    series = np.empty((n, int(anatomy.brain.sum())))
    for i in range(n):
        img = anatomy.s0 * (1 + noise.fluctuation(i)) * anatomy.bias  # no drift
        series[i] = noise.thermal(img.astype(np.float32))[anatomy.brain]
    tsnr = series.mean(axis=0) / series.std(axis=0)
    assert np.median(tsnr) == pytest.approx(40.0, rel=0.06)


def test_drift_scales_with_drift_pct_and_leaves_the_other_noise_alone():
    grid = make_grid("tiny")
    anatomy = build_anatomy(grid, sample_head_placement(grid, np.random.default_rng(0)), np.random.default_rng(1))
    brain = anatomy.brain
    drift, maps, fluct = {}, {}, {}
    for pct in (0.0, 1.0, 2.5):
        cfg = NoiseConfig(drift_pct=pct)
        maps[pct] = build_noise_maps(anatomy, cfg, np.random.default_rng(2))
        noise = RunNoise(maps[pct], cfg, grid.shape, 50, 1.5, np.zeros(grid.shape[2]), anatomy.bias,
                         np.random.default_rng(3))
        # scanner_gain is B (1 + D_n): recover D_n, shape (3 volumes, brain voxels)
        drift[pct] = np.stack([noise.scanner_gain(n)[brain] / anatomy.bias[brain] - 1.0 for n in (0, 17, 49)])
        fluct[pct] = np.stack([noise.fluctuation(n)[brain].copy() for n in range(3)])
    assert np.abs(drift[0.0]).max() < 1e-6
    assert drift[1.0].std() > 1e-3  # about 1 % before the 1/k weights
    np.testing.assert_allclose(drift[2.5], 2.5 * drift[1.0], rtol=1e-4, atol=1e-6)  # linear in drift_pct
    # the same participant otherwise: every other map and the per-volume fluctuation are unchanged
    for name in ("sigma_thermal", "c_ar", "c_physio", "c_global", "tsnr_scale", "ar_norm"):
        assert getattr(maps[0.0], name) == getattr(maps[1.0], name), name
    for name in ("cardiac_amp", "resp_amp", "cardiac_cos", "cardiac_sin"):
        np.testing.assert_array_equal(getattr(maps[0.0], name), getattr(maps[1.0], name), err_msg=name)
    np.testing.assert_array_equal(fluct[0.0], fluct[2.5])


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "1"])
def test_noise_config_refuses_a_bad_drift_pct_by_name(bad):
    with pytest.raises(ValueError, match="drift_pct must be a finite number >= 0"):
        NoiseConfig(drift_pct=bad)


@needs_meta
def test_cli_drift_pct_zero_is_the_same_participant_without_drift(tiny_ds, tmp_path, capsys):
    from b2m.commands import simulate

    root_a, _ = tiny_ds  # drift_pct 1 (the default)
    root_b = tmp_path / "ds_nodrift"
    p = argparse.ArgumentParser()
    simulate.add_parser(p.add_subparsers())
    assert p.parse_args(["simulate", "--out", "x"]).drift_pct == NoiseConfig.drift_pct
    args = p.parse_args(["simulate", "--out", str(root_b), "--grid", "tiny", "--train-runs", "0", "--test-runs", "1",
                         "--drift-pct", "0", "--no-calibration", "--metadata", str(META),
                         "--stimuli-from", str(root_a / "stimuli")])
    assert args.func(args) == 0
    capsys.readouterr()
    config = read_simulation_config(root_b)["config"]
    assert config["noise"]["drift_pct"] == 0.0
    same = ["derivatives/simulation/sub-001/sub-001_task-Test_run-01_motion.tsv",
            "derivatives/simulation/sub-001/sub-001_task-Test_run-01_desc-response.npy"]
    for r in same:
        assert _sha(root_a / r) == _sha(root_b / r), r
    bold = "sub-001/func/sub-001_task-Test_run-01_bold.nii.gz"
    a = np.asarray(nib.load(root_a / bold).dataobj, np.float64)
    b = np.asarray(nib.load(root_b / bold).dataobj, np.float64)
    # without drift the slow component of the run is gone: the first-to-last-quarter change shrinks
    def slow(x):
        q = x.shape[-1] // 4
        return np.abs(x[..., -q:].mean(-1) - x[..., :q].mean(-1)) / x.mean(-1).clip(1)
    brain = a.mean(-1) > np.percentile(a.mean(-1), 75)
    assert np.median(slow(b)[brain]) < 0.5 * np.median(slow(a)[brain])  # 0.8 % against 2.2 % here


def test_double_gamma_hrf_peak_and_area_match_closed_form():
    t = np.arange(0, 32, 0.01)
    h = double_gamma_hrf(t, 5.0, 11.0, 0.0)
    assert t[np.argmax(h)] == pytest.approx(5.0, abs=0.011)  # mode of gamma(a, b) is (a - 1) b
    assert h.sum() * 0.01 == pytest.approx(1.0, rel=1e-9)
    h2 = double_gamma_hrf(t, np.array([4.0, 6.0]), np.array([10.0, 12.0]), np.array([0.3, 0.3]))
    assert h2.shape == (t.size, 2) and np.all(h2.min(axis=0) < 0)
    np.testing.assert_allclose(t[np.argmax(h2, axis=0)], [4.0, 6.0], atol=0.1)


def test_voxel_responses_of_an_impulse_is_the_hrf():
    dt, n_t = 0.1, 600
    x = np.zeros((n_t, 44))
    x[100, 0] = 1.0 / dt  # unit-area impulse at bin 100 (time 10.05 s)
    hrf = HrfParams(np.array([5.0, 4.5]), np.array([11.0, 10.0]), np.array([0.3, 0.2]))
    w_a = np.zeros((34, 2))
    w_a[0] = 1.0
    tuning = Tuning(acoustic=w_a, genre=np.zeros((10, 2)), amplitude_pct=np.array([2.0, 1.0]), genre_share=0.0, hrf=hrf)
    times = np.tile(np.arange(0, 55, 1.5)[:, None], (1, 2)) + np.array([0.0, 0.35])
    r = voxel_responses(x, tuning, times, dt_s=dt)
    for v in range(2):
        expected = tuning.amplitude_pct[v] * double_gamma_hrf(np.arange(0, 32, dt), hrf.peak_s[v], hrf.undershoot_s[v],
                                                               hrf.ratio[v])
        lag = times[:, v] - 10.05
        want = np.interp(lag, np.arange(0, 32, dt), expected, left=0.0, right=0.0)
        np.testing.assert_allclose(r[:, v], want, atol=2e-3 * expected.max())


def test_auditory_region_is_bilateral_on_the_superior_temporal_plane():
    grid = make_grid("small")
    placement = sample_head_placement(grid, np.random.default_rng(0))
    anatomy = build_anatomy(grid, placement, np.random.default_rng(1))
    region = auditory_region(anatomy, np.random.default_rng(2))
    assert 200 < region.n_voxels < 1500
    assert {"L", "R"} == set(region.hemisphere) and min(np.mean(region.hemisphere == "L"), np.mean(region.hemisphere == "R")) > 0.3
    assert np.abs(region.mni_mm[:, 0]).min() > 15 and -15 < region.mni_mm[:, 2].min() < region.mni_mm[:, 2].max() < 45
    assert np.all(anatomy.gm.ravel()[region.index] >= 0.25)
    assert np.percentile(region.strength, 99) == pytest.approx(1.0, rel=1e-3) and region.strength.min() > 0


def test_slice_times_follow_the_2mm_slice_containing_each_centre():
    st = np.arange(68) / 68 * 1.5
    np.testing.assert_array_equal(slice_times_for_grid(st, make_grid("full")), st)
    small = slice_times_for_grid(st, make_grid("small"))
    np.testing.assert_array_equal(small, st[1::2])
    np.testing.assert_array_equal(slice_times_for_grid(st, make_grid("tiny")), st[2::4])


def test_nifti_stream_full_grid_has_ds003720_geometry(tmp_path):
    grid = make_grid("full")
    path = tmp_path / "sub-001_task-Training_run-01_bold.nii.gz"
    w = _NiftiStream(path, grid, 2, 1.5, "test")
    vols = [np.full(grid.shape, v, np.int16) for v in (7, 9)]
    vols[1][1, 2, 3] = -5
    for v in vols:
        w.write(v)
    w.close()
    img = nib.load(path)
    assert img.shape == (96, 96, 68, 2) and img.get_data_dtype() == np.int16
    assert img.header.get_zooms() == (2.0, 2.0, 2.0, 1.5) and img.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.stack(vols, axis=-1))  # Fortran order, exact
    np.testing.assert_allclose(img.affine, grid.affine)
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.slow
@needs_meta
def test_full_grid_run_has_the_real_geometry(tmp_path):
    from b2m.commands import simulate

    root = tmp_path / "full"
    p = argparse.ArgumentParser()
    simulate.add_parser(p.add_subparsers())
    args = p.parse_args(["simulate", "--out", str(root), "--grid", "full", "--train-runs", "1", "--test-runs", "0",
                         "--no-calibration", "--metadata", str(META)])
    assert args.func(args) == 0
    (run,) = find_runs(root, "001")
    img, tr = load_bold(run)
    assert img.shape == (96, 96, 68, 410) and img.get_data_dtype() == np.int16
    assert img.header.get_zooms() == (2.0, 2.0, 2.0, 1.5) and tr == 1.5
    assert json.loads(run.sidecar.read_text())["RepetitionTime"] == 1.5


# ----------------------------------------------------------------------- calibration


def test_explainable_variance_matches_the_known_snr(rng):
    n_rep, n_t, n_vox = 4, 2000, 3
    signal = rng.standard_normal((n_t, n_vox)) * np.array([1.0, 0.5, 0.0])
    blocks = signal[None] + rng.standard_normal((n_rep, n_t, n_vox))
    expected = np.array([1.0, 0.25, 0.0]) / (np.array([1.0, 0.25, 0.0]) + 1.0)
    np.testing.assert_allclose(explainable_variance(blocks), expected, atol=0.04)


def test_calibration_reads_the_dataset_and_reports_figures(tiny_ds):
    root, result = tiny_ds
    res = calibrate_subject(root, "001", run_stimuli=result.run_stimuli)
    gen = res["models"]["generative"]
    assert res["top_k"] == 16 and res["n_candidate_voxels"] == result.n_responsive["001"]
    assert gen["n_regressors"] == 132 and -1 <= gen["test_r_top_k"]["median"] <= gen["test_r_top_k"]["max"] <= 1
    assert 0 <= res["noise_ceiling"]["r_ceiling_top_k"]["median"] <= 1
    assert res["oracle_test_r"]["top_k"]["median"] > 0.1  # the truth explains the data
    assert 35 < res["tsnr"]["median_brain"] < 45
    json.dumps(res, allow_nan=False)


def test_a_simulated_dataset_passes_the_bids_validator(tiny_ds, bids_validator):
    """The official BIDS validator finds no error. It may warn that the stimuli are named by the events'
    genre and track columns (ds003720's own layout) rather than by stim_file, and that one author is
    named (the simulator)."""
    from conftest import assert_valid_bids

    root, _ = tiny_ds
    report = assert_valid_bids(bids_validator, root, allowed={"UNUSED_STIMULUS", "TOO_FEW_AUTHORS"})
    assert report["summary"]["subjects"] == ["001"] and set(report["summary"]["tasks"]) == {"Training", "Test"}


def test_write_stimuli_refuses_a_missing_source_folder(tmp_path):
    from offline_training.simulate import write_stimuli

    missing = tmp_path / "nonexistent"
    with pytest.raises(FileNotFoundError) as info:
        write_stimuli(["blues.00000"], tmp_path / "stimuli", source_dir=missing)
    assert f"{missing}: folder not found" in str(info.value) and "--stimuli-from" in str(info.value)
    assert not (tmp_path / "stimuli").exists()  # refused, not generated instead
