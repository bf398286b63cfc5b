"""``offline_training.stages`` and ``.train``: sequential volume reads, the cached motion stage, and the
split chain, all checked against the realtime code's own ``preprocess_run``."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from offline_training.bids import RunFiles
from offline_training.stages import motion_stage, preprocess_stage
from realtime.preprocessing import MotionConfig, PreprocessConfig, preprocess_run

#: Tiny volumes need a denser motion sampling grid than the 4 mm default.
MOTION = MotionConfig(sep_mm=2.0)


def _blob_run(rng, shape=(18, 17, 12), n=24, shift_mm=0.6) -> np.ndarray:
    """A smooth head-like blob drifting slowly, with noise: (x, y, z, n) int16."""
    ii, jj, kk = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    c = np.array(shape) / 2.0
    out = np.empty(shape + (n,), np.int16)
    for t in range(n):
        d = shift_mm / 2.0 * np.array([np.sin(t / 5), np.cos(t / 7) - 1, t / n])  # voxels of 2 mm
        r2 = ((ii - c[0] - d[0]) / 6.0) ** 2 + ((jj - c[1] - d[1]) / 5.5) ** 2 + ((kk - c[2] - d[2]) / 4.0) ** 2
        vol = 1000 * np.exp(-r2) + 200 * np.exp(-r2 / 0.3) + 5 * rng.standard_normal(shape) + 50
        out[..., t] = np.round(vol).astype(np.int16)
    return out


def _run_files(tmp_path: Path, data: np.ndarray, affine, name="sub-001_task-Training_run-01",
               slope=None) -> RunFiles:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(img.header.get_zooms()[:3] + (1.5,))
    if slope is not None:
        img.header.set_slope_inter(*slope)
    bold = tmp_path / f"{name}_bold.nii.gz"
    nib.save(img, bold)
    (tmp_path / f"{name}_bold.json").write_text('{"RepetitionTime": 1.5}')
    (tmp_path / f"{name}_events.tsv").write_text("onset\tduration\tgenre\ttrack\tstart\tend\n")
    return RunFiles(subject="001", task="Training", run=1, events=tmp_path / f"{name}_events.tsv",
                    sidecar=tmp_path / f"{name}_bold.json", bold=bold)


AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize("motion,detrend,normalize", [(True, "causal", "running"), (False, "causal", "running"),
                                                      (True, "ema", "running"), (True, "ema", "psc")])
def test_split_chain_equals_preprocess_run_bit_for_bit(tmp_path, rng, motion, detrend, normalize):
    # training runs motion correction once (cached) and the rest of the chain on its output;
    # the result must be what the live chain computes on the images themselves
    data = _blob_run(rng)
    rf = _run_files(tmp_path, data, AFFINE)
    reference = data[..., 0].astype(np.float32)
    mask = reference > 300
    cfg = PreprocessConfig(motion=motion, motion_config=MOTION, detrend=detrend, ema_tau_s=6.0, normalize=normalize)
    st = motion_stage(rf, mask, reference, AFFINE, cfg)
    got = preprocess_stage(st, cfg, 1.5).values
    ref = preprocess_run(data, AFFINE, mask, cfg, reference=reference, stack=False, tr_s=1.5)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref.values)
    if motion:
        np.testing.assert_array_equal(st.fd, ref.fd)
        np.testing.assert_array_equal(st.params, ref.motion_params)
    # the non-causal comparison variant from the same motion stage
    off = cfg.offline_variant()
    np.testing.assert_array_equal(preprocess_stage(st, off, 1.5).values,
                                  preprocess_run(data, AFFINE, mask, off, reference=reference, stack=False,
                                                 tr_s=1.5).values)


def test_motion_stage_cache_is_reused_and_keyed(tmp_path, rng):
    data = _blob_run(rng, n=8)
    rf = _run_files(tmp_path, data, AFFINE)
    reference = data[..., 0].astype(np.float32)
    mask = reference > 300
    cfg = PreprocessConfig(motion=True, motion_config=MOTION)
    cache = tmp_path / "preproc"
    first = motion_stage(rf, mask, reference, AFFINE, cfg, cache_dir=str(cache))
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and files[0].startswith("sub-001_task-Training_run-01_")  # values .npy + motion .npz
    again = motion_stage(rf, mask, reference, AFFINE, cfg, cache_dir=str(cache))
    assert isinstance(again.values, np.memmap)  # a hit is memory-mapped, not read into memory
    np.testing.assert_array_equal(again.values, first.values)
    np.testing.assert_array_equal(again.fd, first.fd)
    np.testing.assert_array_equal(again.params, first.params)
    assert sorted(os.listdir(cache)) == files  # a hit writes nothing
    # another mask, reference or motion setting is another entry, never a stale hit
    other = mask.copy()
    other[tuple(np.argwhere(mask)[0])] = False
    motion_stage(rf, other, reference, AFFINE, cfg, cache_dir=str(cache))
    motion_stage(rf, mask, reference + 1, AFFINE, cfg, cache_dir=str(cache))
    motion_stage(rf, mask, reference, AFFINE, PreprocessConfig(motion=True, motion_config=MotionConfig(sep_mm=2.5)),
                 cache_dir=str(cache))
    no_motion = motion_stage(rf, mask, reference, AFFINE, PreprocessConfig(motion=False), cache_dir=str(cache))
    assert len(list(cache.glob("*.npy"))) == 5
    np.testing.assert_array_equal(no_motion.values, data[mask].T.astype(np.float32))
    assert no_motion.fd is None


def test_motion_cache_made_by_other_preprocessing_code_is_not_reused(tmp_path, rng, monkeypatch):
    """An upgrade or fix of the realtime preprocessing must not meet values its old version cached: the
    code's digest is part of the key."""
    import offline_training.stages as stages

    src = tmp_path / "code"
    src.mkdir()
    files = [src / "motion.py", src / "nifti_io.py"]
    for f in files:
        f.write_text("x = 1\n")
    before = stages.motion_code_digest([str(f) for f in files])
    files[0].write_text("x = 2\n")
    assert stages.motion_code_digest([str(f) for f in files]) != before
    assert len(stages.motion_code_digest()) == 16  # the installed realtime code

    data = _blob_run(rng, n=6)
    rf = _run_files(tmp_path, data, AFFINE)
    reference = data[..., 0].astype(np.float32)
    mask = reference > 300
    cfg = PreprocessConfig(motion=False)
    cache = tmp_path / "preproc"
    motion_stage(rf, mask, reference, AFFINE, cfg, cache_dir=str(cache))
    other_mask = mask.copy()
    other_mask[tuple(np.argwhere(mask)[0])] = False
    motion_stage(rf, other_mask, reference, AFFINE, cfg, cache_dir=str(cache))
    old_entries = sorted(p.name for p in cache.glob("*.npy"))
    assert len(old_entries) == 2
    neighbour = cache / ("sub-001_task-Test_run-01_bold_" + "0" * 20 + ".npy")  # another run's entry
    neighbour.write_bytes(b"")
    monkeypatch.setattr(stages, "motion_code_digest", lambda files=None: "other-code")
    calls = []
    motion_stage(rf, mask, reference, AFFINE, cfg, cache_dir=str(cache), progress=lambda d, n: calls.append(d))
    # a new entry, computed volume by volume; the old code's entries of this run are gone (they can never be
    # hit again), whatever mask they were made for
    new = sorted(p.name for p in cache.glob("*_bold_c*.npy") if p.name.startswith("sub-001_task-Training"))
    assert len(new) == 1 and new[0] not in old_entries
    assert neighbour.exists() and len(list(cache.glob("*.npy"))) == 2  # other runs are not touched
    assert calls == list(range(1, 7))


def _cached_stage(tmp_path, rng):
    """A small run's motion stage through a cache (motion off): (stage, expected values, cache dir, a rerun)."""
    data = _blob_run(rng, n=6)
    rf = _run_files(tmp_path, data, AFFINE)
    reference = data[..., 0].astype(np.float32)
    mask = reference > 300
    cache = tmp_path / "preproc"

    def run():
        return motion_stage(rf, mask, reference, AFFINE, PreprocessConfig(motion=False), cache_dir=str(cache))

    return run(), data[mask].T.astype(np.float32), cache, run


def test_motion_stage_recomputes_a_damaged_cache_entry(tmp_path, rng):
    stage, expected, cache, rerun = _cached_stage(tmp_path, rng)
    first = np.array(stage.values)  # a copy: the stage maps its cache entry, overwritten in place next
    next(cache.glob("*.npy")).write_bytes(b"not an npy")
    np.testing.assert_array_equal(rerun().values, first)
    np.testing.assert_array_equal(first, expected)


def test_preprocess_stage_refuses_motion_regressors(rng):
    from offline_training.stages import MotionStage

    st = MotionStage(rng.standard_normal((10, 4)).astype(np.float32), np.zeros((10, 6)), np.zeros(10))
    with pytest.raises(ValueError, match="motion_regressors"):
        preprocess_stage(st, PreprocessConfig(motion=True, motion_regressors=True), 1.5).values


def test_blas_threads_limits_numpy_and_scipy_blas():
    from threadpoolctl import threadpool_info

    from offline_training.train import blas_threads

    with blas_threads(1):
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert len(blas) >= 2  # numpy's and scipy's OpenBLAS are separate libraries
        assert all(i["num_threads"] == 1 for i in blas)


def test_released_stage_pages_read_back_the_same_values(tmp_path, rng):
    from offline_training.stages import _release_pages

    fresh, expected, _, _ = _cached_stage(tmp_path, rng)
    cfg = PreprocessConfig(motion=False)
    assert isinstance(fresh.values, np.memmap)        # a fresh stage is served from its cache entry too
    before = preprocess_stage(fresh, cfg, 1.5).values
    _release_pages(fresh.values)
    np.testing.assert_array_equal(fresh.values, expected)
    np.testing.assert_array_equal(preprocess_stage(fresh, cfg, 1.5).values, before)
    _release_pages(np.zeros((3, 2), np.float32))      # an in-memory stage (no cache) is left alone


def test_a_training_run_from_another_day_is_aligned_onto_the_subjects_grid(tmp_path, rng):
    """Training runs recorded over two days: the second day's run lies on another grid (2.4 mm, tilted 10 deg)
    with the head 5 mm and 4 deg away. Its motion stage is the first day's, up to noise and interpolation:
    same voxels, same time courses. The second day's images are made from the truth by scipy's spline."""
    from scipy.ndimage import map_coordinates

    from realtime.preprocessing import rigid_matrix

    shape = (30, 30, 24)
    day1 = _blob_run(rng, shape=shape, n=10)
    grid_affine = rigid_matrix([0, 0, 0, np.radians(10), 0, 0]) @ np.diag([2.4, 2.4, 2.4, 1.0])
    grid_affine[:3, 3] = [-2.0, 3.0, 1.0]
    shape2 = (28, 28, 22)
    move = rigid_matrix([3.0, -3.0, 2.5, np.radians(3), np.radians(-2), np.radians(2)])
    vox = np.linalg.inv(AFFINE) @ np.linalg.inv(move) @ grid_affine
    at = vox[:3, :3] @ np.indices(shape2).reshape(3, -1) + vox[:3, 3:]
    day2 = np.stack([map_coordinates(day1[..., t].astype(np.float64), at, order=3, mode="nearest").reshape(shape2)
                     for t in range(day1.shape[3])], -1)
    rf1 = _run_files(tmp_path, day1, AFFINE)
    rf2 = _run_files(tmp_path, np.round(day2).astype(np.int16), grid_affine, name="sub-001_task-Training_run-02")
    reference = day1[..., 0].astype(np.float32)
    mask = reference > 300
    cfg = PreprocessConfig(motion=True, motion_config=MOTION)
    one, two = motion_stage(rf1, mask, reference, AFFINE, cfg), motion_stage(rf2, mask, reference, AFFINE, cfg)
    assert two.values.shape == one.values.shape
    truth = np.array([3.0, -3.0, 2.5])  # the head's move between the days, on top of the run's own drift
    np.testing.assert_allclose(two.params[:, :3] - one.params[:, :3], np.tile(truth, (10, 1)), atol=0.5)
    assert two.fd[0] == 0 and np.all(np.abs(two.fd[1:] - one.fd[1:]) < 0.2)
    r = [np.corrcoef(a - a.mean(), b - b.mean())[0, 1] for a, b in zip(one.values, two.values)]
    assert min(r) > 0.98, r
    with pytest.raises(ValueError, match="run-02.*motion correction, a run on another grid is aligned"):
        motion_stage(rf2, mask, reference, AFFINE, PreprocessConfig(motion=False))


def test_motion_stage_refuses_a_run_at_another_tr(tmp_path, rng):
    # the caller reads every run at one TR: a run recorded at another is named, not read at the wrong TR
    data = _blob_run(rng, n=6)
    rf = _run_files(tmp_path, data, AFFINE)
    reference = data[..., 0].astype(np.float32)
    with pytest.raises(ValueError) as info:
        motion_stage(rf, reference > 300, reference, AFFINE, PreprocessConfig(motion=False), tr_s=2.0)
    msg = str(info.value)
    assert str(rf.sidecar) in msg and str(rf.bold) in msg and "TR 1.5 s" in msg and "at TR 2 s" in msg
    st = motion_stage(rf, reference > 300, reference, AFFINE, PreprocessConfig(motion=False), tr_s=1.5)
    assert st.values.shape == (6, int((reference > 300).sum()))
