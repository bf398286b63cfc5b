"""Rigid-body motion correction (issue 5, part 1 and the motion part of acceptance 1).

Ground truth comes from a real EPI volume (nibabel's ``example4d.nii.gz``)
moved by known rigid transforms with scipy's 5th-order spline interpolation,
which shares no code with the trilinear sampler under test.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from realtime.preprocessing import (
    MotionConfig,
    MotionCorrector,
    MotionReference,
    framewise_displacement,
    params_from_matrix,
    params_from_spm,
    params_to_spm,
    realign_run,
    reslice,
    rigid_matrix,
)
from realtime.preprocessing._sampling import BinomialSmoother, TrilinearSampler, binomial_passes

DEG = np.pi / 180.0

# Known motions: translations up to 2 mm, rotations up to 2 degrees, every axis
# exercised alone and in combination (mm, mm, mm, deg, deg, deg).
TRUE_MOTION = np.array([
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1.5, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, -2.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 1.2, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 2.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, -1.5, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.8],
    [0.7, -1.1, 0.4, 0.9, 1.2, -0.6],
    [-1.8, 1.6, -0.9, -1.7, 0.8, 1.4],
    [2.0, 2.0, -2.0, 2.0, -2.0, 2.0],
])


def _true_params() -> np.ndarray:
    p = TRUE_MOTION.copy()
    p[:, 3:] *= DEG
    return p


def _move(volume: np.ndarray, affine: np.ndarray, params, grid=None) -> np.ndarray:
    """``current(M x) = volume(x)``, resampled with a 5th-order spline (scipy); on ``grid`` = (shape, affine)
    if given (another prescription), else on the volume's own grid."""
    shape, out_affine = grid if grid is not None else (volume.shape, affine)
    vox = np.linalg.inv(affine) @ np.linalg.inv(rigid_matrix(params)) @ out_affine
    ijk = np.indices(shape).reshape(3, -1).astype(np.float64)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:]
    coeffs = ndi.spline_filter(volume, order=5, mode="nearest")
    out = ndi.map_coordinates(coeffs, coords, order=5, prefilter=False, mode="nearest")
    return out.reshape(shape)


def _rms_errors(est: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """RMS translation error (mm) and RMS rotation error (degrees)."""
    d = est - truth
    return float(np.sqrt(np.mean(d[:, :3] ** 2))), float(np.sqrt(np.mean(d[:, 3:] ** 2)) / DEG)


def _global_mean(v: np.ndarray) -> float:
    return float(v[v > v.mean() / 8].mean())


@pytest.fixture(scope="module")
def epi():
    """First volume of nibabel's real EPI run (128x96x24, 2x2x2.2 mm), float64, and its affine."""
    import nibabel as nib
    from nibabel.testing import data_path

    img = nib.load(os.path.join(data_path, "example4d.nii.gz"))
    return np.asarray(img.dataobj[..., 0]).astype(np.float64), img.affine.copy()


@pytest.fixture(scope="module")
def moved_run(epi):
    """Noise-free copies of the EPI volume moved by TRUE_MOTION: (x, y, z, 10) float64."""
    ref, affine = epi
    return np.stack([_move(ref, affine, p) for p in _true_params()], axis=-1)


def _rician(volume: np.ndarray, sd: float, rng) -> np.ndarray:
    return np.sqrt((volume + rng.normal(0, sd, volume.shape)) ** 2 + rng.normal(0, sd, volume.shape) ** 2)


# ---------------------------------------------------------------- geometry

def test_rigid_matrix_round_trip(rng):
    p = np.column_stack([rng.uniform(-30, 30, (200, 3)), rng.uniform(-np.pi, np.pi, 200),
                         rng.uniform(-1.5, 1.5, 200), rng.uniform(-np.pi, np.pi, 200)])
    m = rigid_matrix(p)
    assert m.shape == (200, 4, 4)
    np.testing.assert_allclose(params_from_matrix(m), p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rigid_matrix(params_from_matrix(m)), m, rtol=0, atol=1e-12)
    np.testing.assert_allclose(params_from_matrix(rigid_matrix(p[7])), p[7], rtol=0, atol=1e-12)


def test_rigid_matrix_matches_scipy_intrinsic_xyz(rng):
    p = np.r_[rng.normal(0, 5, 3), rng.uniform(-0.5, 0.5, 3)]
    m = rigid_matrix(p)
    # Rx @ Ry @ Rz, right-handed, is scipy's intrinsic "XYZ" sequence
    np.testing.assert_allclose(m[:3, :3], Rotation.from_euler("XYZ", p[3:]).as_matrix(), atol=1e-12)
    np.testing.assert_array_equal(m[:3, 3], p[:3])
    np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
    # right-handed: a small positive rx turns +y towards +z
    y = rigid_matrix([0, 0, 0, 0.1, 0, 0]) @ [0, 1, 0, 1]
    assert y[2] > 0


def test_params_from_matrix_rejects_non_rigid():
    m = rigid_matrix([1, 2, 3, 0.1, 0.2, 0.3])
    m[:3, :3] *= 1.05
    with pytest.raises(ValueError, match="not a rigid-body transform"):
        params_from_matrix(m)


def test_params_spm_conversion_matches_spm_matrix(rng):
    def spm_matrix(q):  # SPM's T*R1*R2*R3, written out from its documented matrices
        c, s = np.cos(q[3:]), np.sin(q[3:])
        r1 = np.array([[1, 0, 0], [0, c[0], s[0]], [0, -s[0], c[0]]])
        r2 = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
        r3 = np.array([[c[2], s[2], 0], [-s[2], c[2], 0], [0, 0, 1]])
        m = np.eye(4)
        m[:3, :3] = r1 @ r2 @ r3
        m[:3, 3] = q[:3]
        return m

    for _ in range(20):
        q = np.r_[rng.normal(0, 2, 3), rng.normal(0, 0.05, 3)]
        p = params_from_spm(q)
        np.testing.assert_allclose(rigid_matrix(p), np.linalg.inv(spm_matrix(q)), atol=1e-12)
        np.testing.assert_allclose(params_to_spm(p), q, atol=1e-12)


def test_framewise_displacement_closed_form():
    p = np.array([
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],       # 1 mm in x
        [1.0, 0.0, 0.0, 0.01, 0.0, 0.0],      # 0.01 rad -> 0.5 mm arc at 50 mm
        [0.0, -0.5, 0.2, 0.0, -0.002, 0.003],  # 1 + 0.5 + 0.2 + 50 * (0.01 + 0.002 + 0.003)
    ])
    np.testing.assert_allclose(framewise_displacement(p), [0.0, 1.0, 0.5, 2.45], rtol=0, atol=1e-12)
    np.testing.assert_allclose(framewise_displacement(p, radius_mm=80.0)[2], 0.8, atol=1e-12)
    assert framewise_displacement(p[:1]).tolist() == [0.0]


# ---------------------------------------------------------------- kernels

def test_binomial_smoother_matches_scipy_inside_valid_box(rng):
    shape = (19, 23, 17)
    vol = rng.normal(100, 20, shape).astype(np.float32)
    passes = binomial_passes(5.0, (2.0, 2.0, 2.2))
    assert passes == (4, 4, 4)
    sm = BinomialSmoother(shape, passes)
    first = sm.smooth(vol).copy()
    ref = vol.astype(np.float64)
    kernel = np.array([1, 4, 6, 4, 1]) / 16.0
    for axis in range(3):
        ref = ndi.correlate1d(ref, kernel, axis=axis)
    lo, hi = sm.valid_box()
    inside = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    ours = first.reshape(shape) / sm.gain
    np.testing.assert_allclose(ours[inside], ref[inside], rtol=1e-5)
    # no state carried from one call to the next
    sm.smooth(rng.normal(size=shape).astype(np.float32))
    np.testing.assert_array_equal(sm.smooth(vol), first)


def test_trilinear_sampler_matches_scipy_order1(rng):
    shape = (11, 13, 9)
    vol = rng.normal(size=shape).astype(np.float32)
    n = 500
    coords = rng.uniform(-1.5, np.array(shape)[:, None] + 0.5, (3, n)).astype(np.float32)
    sampler = TrilinearSampler(shape, n, (0, 0, 0), np.array(shape) - 1)
    out = np.empty(n, np.float32)
    n_invalid = sampler.sample(vol.reshape(-1), coords.copy(), out)
    inside = np.all((coords >= 0) & (coords <= np.array(shape)[:, None] - 1), axis=0)
    np.testing.assert_array_equal(sampler.valid, inside)
    assert n_invalid == n - inside.sum() > 0
    clamped = np.clip(coords, 0, np.array(shape)[:, None] - 1).astype(np.float64)
    ref = ndi.map_coordinates(vol.astype(np.float64), clamped, order=1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- estimation

def test_estimate_identity_gives_zero(epi):
    ref, affine = epi
    mr = MotionReference(ref, affine)
    params, n_iter, converged = mr.estimate(ref)
    assert converged and n_iter == 1
    np.testing.assert_allclose(params, 0.0, atol=1e-9)


def test_realign_noise_free_matches_ground_truth(epi, moved_run):
    _, affine = epi
    truth = _true_params()
    run = realign_run(moved_run, affine)
    rms_mm, rms_deg = _rms_errors(run.params, truth)
    print(f"\nnoise-free example4d, {len(truth)} volumes: RMS error {rms_mm:.4f} mm, {rms_deg:.4f} deg")
    assert rms_mm <= 0.05 and rms_deg <= 0.05
    assert run.converged.all() and run.n_iter.max() <= MotionConfig().max_iter


def test_realign_at_tsnr40_matches_ground_truth(epi, moved_run, rng):
    _, affine = epi
    truth = _true_params()
    sd = _global_mean(moved_run[..., 0]) / 40.0  # temporal SNR of about 40
    noisy = _rician(moved_run, sd, rng)
    run = realign_run(noisy, affine)
    rms_mm, rms_deg = _rms_errors(run.params, truth)
    print(f"\ntSNR 40 example4d, {len(truth)} volumes: RMS error {rms_mm:.4f} mm, {rms_deg:.4f} deg")
    assert rms_mm <= 0.15 and rms_deg <= 0.15


def test_realign_from_int16_volumes(epi, moved_run):
    _, affine = epi
    run = realign_run(np.round(moved_run).astype(np.int16), affine)
    rms_mm, rms_deg = _rms_errors(run.params, _true_params())
    assert rms_mm <= 0.05 and rms_deg <= 0.05


def test_fd_flags_a_1mm_jump(epi):
    ref, affine = epi
    jump = _move(ref, affine, [1.0, 0, 0, 0, 0, 0])
    data = np.stack([ref, ref, jump, jump, ref], axis=-1)
    run = realign_run(data, affine)
    np.testing.assert_allclose(run.fd, [0, 0, 1, 0, 1], atol=0.05)
    assert run.flagged.tolist() == [False, False, True, False, True]
    config = MotionConfig(fd_threshold_mm=1.5)
    assert not realign_run(data, affine, config=config).flagged.any()


def test_reference_index_selects_the_reference(epi, moved_run):
    _, affine = epi
    truth = _true_params()
    run = realign_run(moved_run[..., :5], affine, reference_index=3)
    assert run.reference_index == 3
    # the reference itself, reached from volume 2's estimate, to within tol_mm
    np.testing.assert_allclose(run.params[3], 0.0, atol=MotionConfig().tol_mm)
    # each volume's motion relative to volume 3
    rel = params_from_matrix(rigid_matrix(truth[:5]) @ np.linalg.inv(rigid_matrix(truth[3])))
    rms_mm, rms_deg = _rms_errors(run.params, rel)
    assert rms_mm <= 0.05 and rms_deg <= 0.05


# ---------------------------------------------------------------- reslicing

def test_reslice_matches_scipy_trilinear(epi, rng):
    ref, affine = epi
    params = np.r_[rng.uniform(-2, 2, 3), rng.uniform(-2, 2, 3) * DEG]
    mask = np.zeros(ref.shape, bool)
    mask[10:-10, 10:-10, 3:-3] = ref[10:-10, 10:-10, 3:-3] > 200
    vals = reslice(ref.astype(np.float32), params, affine, mask)
    vox = np.linalg.inv(affine) @ rigid_matrix(params) @ affine
    ijk = np.argwhere(mask).T
    coords = vox[:3, :3] @ ijk + vox[:3, 3:]
    expected = ndi.map_coordinates(ref, coords, order=1, mode="nearest")
    # float32 coordinates (~1e-5 voxel rounding at index ~100) times intensity
    # gradients of up to ~500 per voxel in this EPI: up to ~1e-2 absolute
    np.testing.assert_allclose(vals, expected, rtol=1e-5, atol=1e-2)


def test_reslice_undoes_known_motion_inside_mask(epi):
    ref, affine = epi
    smooth_ref = ndi.gaussian_filter(ref, 1.0)  # band-limited, so trilinear error is small
    params = np.array([1.3, -0.8, 0.6, 1.5 * DEG, -1.0 * DEG, 0.7 * DEG])
    moved = _move(smooth_ref, affine, params)
    mask = np.zeros(ref.shape, bool)
    mask[8:-8, 8:-8, 4:-4] = smooth_ref[8:-8, 8:-8, 4:-4] > 0.5 * _global_mean(smooth_ref)
    vals = reslice(moved, params, affine, mask)
    expected = smooth_ref[mask]
    rel = np.sqrt(np.mean((vals - expected) ** 2)) / expected.mean()
    assert rel < 0.01, rel
    # the reslice mask may also be given as voxel indices, in their order
    ijk = np.argwhere(mask)[::-1]
    np.testing.assert_array_equal(reslice(moved, params, affine, ijk), vals[::-1])


def test_corrector_reslices_with_estimated_params(epi, moved_run):
    ref, affine = epi
    mask = np.zeros(ref.shape, bool)
    mask[20:100, 20:80, 6:18] = True
    mc = MotionCorrector(moved_run[..., 0], affine, reslice_mask=mask)
    res = mc.update(moved_run[..., 7])
    np.testing.assert_array_equal(res.values, reslice(moved_run[..., 7], res.params, affine, mask))


# ---------------------------------------------------------------- invariants

def test_update_leaves_inputs_untouched(epi, moved_run):
    ref, affine = epi
    ref_copy, vol = ref.copy(), moved_run[..., 8].astype(np.float32)
    vol_copy, affine_copy = vol.copy(), affine.copy()
    mask = ref > 300
    mask_copy = mask.copy()
    mc = MotionCorrector(ref, affine, reslice_mask=mask)
    mc.update(vol)
    np.testing.assert_array_equal(ref, ref_copy)
    np.testing.assert_array_equal(vol, vol_copy)
    np.testing.assert_array_equal(affine, affine_copy)
    np.testing.assert_array_equal(mask, mask_copy)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_resliced_values_are_float32(epi, dtype):
    ref, affine = epi
    mask = ref > 300
    mc = MotionCorrector(ref.astype(dtype), affine, reslice_mask=mask)
    res = mc.update(ref.astype(dtype))
    assert res.values.dtype == np.float32 and res.values.shape == (mask.sum(),)
    assert res.params.dtype == np.float64 and res.params.shape == (6,)
    assert reslice(ref.astype(dtype), np.zeros(6), affine, mask).dtype == np.float32


def test_update_writes_into_out(epi):
    ref, affine = epi
    mask = ref > 300
    mc = MotionCorrector(ref, affine, reslice_mask=mask)
    out = np.empty(mc.n_voxels, np.float32)
    res = mc.update(ref, out=out)
    assert res.values is out
    np.testing.assert_allclose(out, ref[mask], rtol=1e-6)
    with pytest.raises(ValueError, match="float32 array of shape"):
        mc.update(ref, out=np.empty(3, np.float32))


def test_online_equals_offline(epi, moved_run, rng):
    ref, affine = epi
    data = _rician(moved_run, _global_mean(ref) / 40.0, rng).astype(np.float32)
    mask = ref > 300
    offline = realign_run(data, affine, reference_index=1, reslice_mask=mask)
    online = MotionCorrector(data[..., 1], affine, reslice_mask=mask)
    for t in range(data.shape[-1]):
        res = online.update(np.ascontiguousarray(data[..., t]))  # one volume at a time, as received
        np.testing.assert_allclose(res.params, offline.params[t], rtol=0, atol=1e-6)
        np.testing.assert_allclose(res.values, offline.values[t], rtol=0, atol=1e-6)
        assert res.fd == pytest.approx(offline.fd[t], abs=1e-6)
        assert res.flagged == offline.flagged[t] and res.n_iter == offline.n_iter[t]


def test_run_fd_equals_framewise_displacement(epi, moved_run):
    _, affine = epi
    run = realign_run(moved_run, affine)
    np.testing.assert_allclose(run.fd, framewise_displacement(run.params), rtol=0, atol=1e-12)
    assert run.fd[0] == 0.0
    np.testing.assert_array_equal(run.flagged, run.fd > MotionConfig().fd_threshold_mm)


def test_fortran_ordered_volume_gives_same_answer(epi, moved_run):
    ref, affine = epi
    mr = MotionReference(ref, affine)
    vol = moved_run[..., 7]
    a = mr.estimate(np.ascontiguousarray(vol))[0]
    b = mr.estimate(np.asfortranarray(vol))[0]
    np.testing.assert_array_equal(a, b)


def test_reset_restarts_from_zero(epi, moved_run):
    ref, affine = epi
    mc = MotionCorrector(ref, affine)
    first = mc.update(moved_run[..., 9])
    assert mc.update(moved_run[..., 9]).n_iter < first.n_iter  # warm start
    mc.reset()
    again = mc.update(moved_run[..., 9])
    assert again.fd == 0.0 and again.n_iter == first.n_iter
    np.testing.assert_array_equal(again.params, first.params)


def test_reset_with_previous_params_resumes_a_run(epi, moved_run):
    _, affine = epi
    data = moved_run[..., :6]
    full = realign_run(data, affine)
    resumed = MotionCorrector(data[..., 0], affine)  # a restarted session, same reference
    resumed.reset(previous_params=full.params[2])
    for t in range(3, 6):
        res = resumed.update(data[..., t])
        np.testing.assert_array_equal(res.params, full.params[t])
        assert res.fd == full.fd[t]
    with pytest.raises(ValueError, match="6 finite numbers"):
        resumed.reset(previous_params=[0, 0, np.nan, 0, 0, 0])


def test_result_params_do_not_alias_the_state(epi, moved_run):
    _, affine = epi
    mc = MotionCorrector(moved_run[..., 0], affine)
    res = mc.update(moved_run[..., 7])
    kept = res.params.copy()
    res.params[:] = 99.0
    np.testing.assert_array_equal(mc.previous_params, kept)


# ---------------------------------------------------------------- bad input

def test_blank_volume_does_not_derail_the_run(epi, moved_run):
    ref, affine = epi
    mc = MotionCorrector(ref, affine, reslice_mask=ref > 300)
    blank = mc.update(np.zeros(ref.shape, np.int16))  # e.g. a dropped-out volume
    assert np.all(np.isfinite(blank.params)) and np.all(blank.values == 0)
    after = mc.update(moved_run[..., 7])
    err_mm, err_deg = _rms_errors(after.params[None], _true_params()[7:8])
    assert err_mm <= 0.05 and err_deg <= 0.05


def test_nonfinite_values_do_not_crash(epi, moved_run):
    ref, affine = epi
    vol = moved_run[..., 7].copy()
    vol[60, 40, 10] = np.nan
    vol[30, 30, 5] = np.inf
    mc = MotionCorrector(ref, affine, reslice_mask=ref > 300)
    res = mc.update(vol)
    assert np.all(np.isfinite(res.params)) and np.all(np.isfinite(res.values))
    np.testing.assert_allclose(res.params[:3], _true_params()[7, :3], atol=0.1)


def test_shape_mismatch_is_a_clear_error(epi):
    ref, affine = epi
    mc = MotionCorrector(ref, affine)
    with pytest.raises(ValueError, match=r"has shape \(128, 96, 23\).*reference has shape \(128, 96, 24\)"):
        mc.update(ref[..., :23])
    with pytest.raises(ValueError, match="reslice_mask|mask has shape"):
        MotionCorrector(ref, affine, reslice_mask=np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="affine must be a finite 4x4"):
        MotionCorrector(ref, np.eye(3))


def test_empty_reference_is_a_clear_error(epi):
    _, affine = epi
    with pytest.raises(ValueError, match="sample points"):
        MotionReference(np.zeros((40, 40, 20)), affine)


@pytest.mark.parametrize("bad", [dict(max_iter=0), dict(fwhm_mm=-1.0), dict(sep_mm=float("nan")),
                                 dict(scaling="yes"), dict(max_points=10)])
def test_config_rejects_bad_options(bad):
    with pytest.raises(ValueError, match="MotionConfig"):
        MotionConfig(**bad)


# ---------------------------------------------------------------- another session

def _other_prescription(affine) -> tuple:
    """Another day's grid: 2.4 mm isotropic, 112x96x24, tilted 12 deg about x and -5 deg about z, its
    origin 8, -10 and 4 mm away."""
    a = rigid_matrix([0, 0, 0, 12 * DEG, 0, -5 * DEG]) @ np.diag([-2.4, 2.4, 2.4, 1.0])
    a[:3, 3] = affine[:3, 3] + [8.0, -10.0, 4.0]
    return (112, 96, 24), a


@pytest.mark.parametrize("move", [(6.0, -4.0, 3.0, 4.0, -3.0, 5.0), (25.0, 12.0, -10.0, 8.0, 2.0, -10.0)])
def test_another_grid_is_registered_to_the_reference(epi, rng, move):
    """Another session: the head moved (up to 30 mm, 13 deg) and the slices were prescribed anew (another
    voxel size, orientation and field of view). The first volume is found by the search, every later one
    from it; the parameters match the imposed move, and reslicing brings the reference back wherever
    the new field of view covers it. Reference: the volume made from the truth by scipy's spline."""
    ref, affine = epi
    truth = np.array(move) * np.r_[1, 1, 1, DEG, DEG, DEG]
    grid = _other_prescription(affine)
    sd = _global_mean(ref) / 40.0
    day2 = [_rician(_move(ref, affine, truth, grid), sd, rng) for _ in range(2)]
    mask = ref > np.percentile(ref, 70)
    mc = MotionCorrector(ref, affine, reslice_mask=mask, grid=grid, align_first=True)
    first, second = mc.update(day2[0]), mc.update(day2[1])
    for r in (first, second):
        np.testing.assert_allclose(r.params[:3], truth[:3], atol=0.15)
        np.testing.assert_allclose(r.params[3:], truth[3:], atol=0.15 * DEG)
    a = mc.alignment
    assert first.fd == 0.0 and second.fd < 0.1 and a is not None and a.similarity > 0.95
    assert a.describe().startswith(f"{np.linalg.norm(truth[:3]):.1f} mm")
    # where the new field of view covers the mask, the resliced volume is the reference again
    vox = np.linalg.inv(grid[1]) @ rigid_matrix(first.params) @ affine
    at = vox[:3, :3] @ np.argwhere(mask).T + vox[:3, 3:]
    inside = np.all((at >= 0) & (at <= np.array(grid[0])[:, None] - 1), axis=0)
    assert inside.mean() > 0.7
    assert np.corrcoef(first.values[inside], ref[mask][inside])[0, 1] > 0.9


def test_a_prescription_that_followed_the_head_is_found_from_the_voxel_grid(epi, rng):
    """Auto-align moved the slices with the head (47 mm, 16 deg): in world space nothing is where it was,
    but every voxel index is. Zero motion leaves most sample points outside the volume; the voxel-grid
    start finds it."""
    ref, affine = epi
    truth = np.array([35.0, -25.0, 20.0, 10 * DEG, 5 * DEG, -12 * DEG])
    grid = (ref.shape, rigid_matrix(truth) @ affine)
    vol = _rician(_move(ref, affine, truth, grid), _global_mean(ref) / 40.0, rng)
    mc = MotionCorrector(ref, affine, grid=grid, align_first=True)
    r = mc.update(vol)
    np.testing.assert_allclose(r.params[:3], truth[:3], atol=0.15)
    np.testing.assert_allclose(r.params[3:], truth[3:], atol=0.15 * DEG)
    assert np.isnan(mc.alignment.starts["zero"]) and mc.alignment.start != "zero"


def test_a_first_volume_far_off_on_the_same_grid_is_searched_for_and_a_near_one_is_not(epi, rng):
    """Same grid, another day: 25 mm and 8 deg away, the usual start from zero motion does not converge in
    its 8 iterations, and the search finds the volume; 1 mm away, no search runs, and the result is
    exactly that of a corrector that never searches."""
    ref, affine = epi
    far = np.array([25.0, -15.0, 10.0, 6 * DEG, 0.0, 4 * DEG])
    mc = MotionCorrector(ref, affine, align_first=True)
    r = mc.update(_move(ref, affine, far))
    np.testing.assert_allclose(r.params[:3], far[:3], atol=0.1)
    np.testing.assert_allclose(r.params[3:], far[3:], atol=0.1 * DEG)
    assert mc.alignment is not None
    near = _move(ref, affine, [1.0, 0, 0, 0, 0.5 * DEG, 0])
    mc, plain = MotionCorrector(ref, affine, align_first=True), MotionCorrector(ref, affine)
    np.testing.assert_array_equal(mc.update(near).params, plain.update(near).params)
    assert mc.alignment is None


def test_another_grid_needs_volumes_of_that_grid(epi):
    ref, affine = epi
    grid = _other_prescription(affine)
    mc = MotionCorrector(ref, affine, grid=grid, align_first=True)
    with pytest.raises(ValueError, match=r"shape \(128, 96, 24\), but the run's grid has shape \(112, 96, 24\)"):
        mc.update(ref)
