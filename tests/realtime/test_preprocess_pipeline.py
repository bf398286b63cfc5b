"""The whole chain: online volume by volume equals the offline run path,
geometry is checked up front, and the non-causal variants are separate."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from realtime.preprocessing.detrend import ema_detrend_run
from realtime.preprocessing.pipeline import (GeometryError, OnlinePreprocessor, PreprocessConfig, check_geometry,
                                             preprocess_run)


@pytest.fixture(scope="module")
def fmri1():
    import nitime

    img = nib.load(os.path.join(os.path.dirname(nitime.__file__), "data", "fmri1.nii.gz"))
    data = np.asanyarray(img.dataobj)
    mask = data.mean(-1) > np.percentile(data.mean(-1), 40)
    return data, img.affine, mask


@pytest.mark.parametrize("detrend", ["causal", "ema"])
def test_online_equals_offline_to_float32_precision(fmri1, detrend):
    data, affine, mask = fmri1
    cfg = PreprocessConfig(motion=False, detrend=detrend, normalize="running", delays=(1, 2), ema_tau_s=20.0)
    offline = preprocess_run(data, affine, mask, cfg, tr_s=2.0)
    pre = OnlinePreprocessor(mask, affine, cfg, data.shape[3], tr_s=2.0)
    for t in range(data.shape[3]):
        r = pre.process(data[..., t])
        np.testing.assert_allclose(r.values, offline.values[t], rtol=0, atol=1e-6)
        if r.x is None:
            assert np.isnan(offline.x[t]).all()
        else:
            np.testing.assert_allclose(r.x, offline.x[t], rtol=0, atol=1e-6)


def test_online_equals_offline_with_motion_correction(rng):
    from scipy.ndimage import shift

    img = nib.load(os.path.join(data_path, "example4d.nii.gz"))  # a real EPI field of view
    vol0 = np.asanyarray(img.dataobj)[..., 0].astype(np.float32)
    moves = rng.uniform(-0.8, 0.8, size=(8, 3))
    data = np.stack([shift(vol0, m, order=3) for m in moves], axis=-1)
    data += rng.normal(0, 5, data.shape).astype(np.float32)
    mask = vol0 > np.percentile(vol0, 70)
    cfg = PreprocessConfig(motion=True, motion_regressors=True, detrend="causal", delays=(0, 2))  # the GLM carries them
    offline = preprocess_run(data, img.affine, mask, cfg)
    pre = OnlinePreprocessor(mask, img.affine, cfg, data.shape[3])
    for t in range(data.shape[3]):
        r = pre.process(data[..., t])
        np.testing.assert_allclose(r.values, offline.values[t], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(r.motion.params, offline.motion_params[t])
    assert offline.fd[0] == 0 and offline.flagged.dtype == bool


def test_voxel_order_is_c_order_of_the_mask(rng):
    vol = rng.standard_normal((4, 5, 3)).astype(np.float32)
    data = np.repeat(vol[..., None], 3, axis=3)
    mask = vol > 0
    cfg = PreprocessConfig(motion=False, detrend="none", normalize="none", delays=(0,))
    out = preprocess_run(np.asfortranarray(data), np.eye(4), mask, cfg)
    np.testing.assert_array_equal(out.values[0], vol[mask])
    np.testing.assert_array_equal(out.values[0], vol[tuple(np.argwhere(mask).T)])


def test_mask_geometry_mismatch_is_refused_before_the_first_volume(fmri1):
    data, affine, mask = fmri1
    with pytest.raises(GeometryError, match="shape"):
        check_geometry(mask.shape, affine, (64, 64, 30, 5), affine)
    shifted = affine.copy()
    shifted[0, 3] += 2.0
    with pytest.raises(GeometryError, match="2 mm"):
        OnlinePreprocessor(mask, affine, PreprocessConfig(motion=False), 10, tr_s=2.0).check(data.shape, shifted)


def test_realtime_refuses_noncausal_config(fmri1):
    data, affine, mask = fmri1
    with pytest.raises(ValueError, match="causal"):
        OnlinePreprocessor(mask, affine, PreprocessConfig(detrend="median240"), 10)
    cfg = PreprocessConfig(motion=False).offline_variant()
    assert not cfg.causal
    out = preprocess_run(data, affine, mask, cfg)
    np.testing.assert_allclose(out.values.mean(0), 0, atol=1e-4)  # whole-run z-score


def test_ema_detrend_needs_the_tr_and_a_valid_time_constant(fmri1):
    data, affine, mask = fmri1
    cfg = PreprocessConfig(motion=False, detrend="ema")
    assert cfg.causal
    with pytest.raises(ValueError, match="tr_s"):
        OnlinePreprocessor(mask, affine, cfg, 10)
    with pytest.raises(ValueError, match="tr_s"):
        preprocess_run(data, affine, mask, cfg)
    with pytest.raises(ValueError, match="ema_tau_s"):
        PreprocessConfig(detrend="ema", ema_tau_s=0.0)
    with pytest.raises(ValueError, match="motion_regressors"):
        PreprocessConfig(detrend="ema", motion_regressors=True)
    # a time constant under one TR is refused by name, not run
    with pytest.raises(ValueError, match="ema_tau_s / tr_s"):
        OnlinePreprocessor(mask, affine, PreprocessConfig(motion=False, detrend="ema", ema_tau_s=1.0), 10, tr_s=2.0)


def test_config_round_trips_through_dict():
    cfg = PreprocessConfig(detrend="causal", poly_order=1, delays=[2, 3])
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    ema = PreprocessConfig(detrend="ema", ema_tau_s=30.0)
    assert PreprocessConfig.from_dict(ema.to_dict()) == ema
    psc = PreprocessConfig(detrend="ema", normalize="psc")
    assert PreprocessConfig.from_dict(psc.to_dict()) == psc and psc.causal


def test_psc_needs_the_ema_baseline(fmri1):
    with pytest.raises(ValueError, match="normalize='psc'.*detrend='ema'.*'causal'"):
        PreprocessConfig(detrend="causal", normalize="psc")
    # the whole chain on a real run: the percent change of each voxel's EMA baseline
    data, affine, mask = fmri1
    cfg = PreprocessConfig(motion=False, detrend="ema", ema_tau_s=20.0, normalize="psc")
    out = preprocess_run(data, affine, mask, cfg, stack=False, tr_s=2.0)
    raw = data[mask].T.astype(np.float64)  # (n_volumes, n_voxels)
    resid = ema_detrend_run(raw, 10.0)
    lit = raw.min(0) > 0  # voxels with signal at every volume (the mask also holds some that are 0 at times)
    assert lit.sum() > 100 and np.isfinite(out.values).all()
    np.testing.assert_allclose(out.values[:, lit], 100.0 * resid[:, lit] / (raw - resid)[:, lit], rtol=1e-4, atol=1e-4)


def test_another_days_grid_gives_the_inputs_of_the_models_grid(rng):
    """A bundle's reference and mask from day 1; on day 2 the slices are prescribed anew (2.4 mm, tilted
    12 deg) and the head lies 10 mm and 6 deg away. The same brain activity, scanned on either grid, gives
    the same normalised voxel values wherever the new field of view covers the mask. The day-2 volumes are
    made by scipy's spline from the truth, sharing no code with the chain."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    from realtime.preprocessing import rigid_matrix

    img = nib.load(os.path.join(data_path, "example4d.nii.gz"))
    vol0 = np.asanyarray(img.dataobj)[..., 0].astype(np.float64)
    affine = img.affine
    n = 10
    activity = [1.0 + 0.08 * gaussian_filter(rng.standard_normal(vol0.shape), 2.0) / 0.05 for _ in range(n)]
    brain = [vol0 * a for a in activity]  # the day's volumes as the head lies on day 1's grid
    tilt = rigid_matrix([0, 0, 0, np.radians(12), 0, 0]) @ np.diag([-2.4, 2.4, 2.4, 1.0])
    tilt[:3, 3] = affine[:3, 3] + [6.0, -8.0, 2.0]
    grid = ((112, 96, 24), tilt)
    move = rigid_matrix([6.0, -7.0, 3.0, np.radians(4), np.radians(-2), np.radians(3)])
    vox = np.linalg.inv(affine) @ np.linalg.inv(move) @ grid[1]
    at = vox[:3, :3] @ np.indices(grid[0]).reshape(3, -1) + vox[:3, 3:]
    day2 = [map_coordinates(b, at, order=3, mode="nearest").reshape(grid[0]) for b in brain]
    day1, day2 = ([(v + rng.normal(0, 3.0, v.shape)).astype(np.float32) for v in run] for run in (brain, day2))
    mask = vol0 > np.percentile(vol0, 75)
    cfg = PreprocessConfig(motion=True, detrend="none", normalize="running", delays=(0,))
    one = OnlinePreprocessor(mask, affine, cfg, n, reference=vol0.astype(np.float32))
    two = OnlinePreprocessor(mask, affine, cfg, n, reference=vol0.astype(np.float32))
    one.check(vol0.shape, affine)
    two.check(grid[0], grid[1])
    r1 = [one.process(v).values.copy() for v in day1]
    r2 = [two.process(v).values.copy() for v in day2]
    assert one.alignment is None and two.alignment is not None and two.grid[0] == grid[0]
    back = np.linalg.inv(grid[1]) @ rigid_matrix(two.alignment.params) @ affine
    ijk = back[:3, :3] @ np.argwhere(mask).T + back[:3, 3:]
    covered = np.all((ijk >= 1) & (ijk <= np.array(grid[0])[:, None] - 2), axis=0)
    assert covered.mean() > 0.7
    r = [np.corrcoef(a[covered], b[covered])[0, 1] for a, b in zip(r1[2:], r2[2:])]
    print(f"\nday 1 vs day 2, normalised values where covered ({covered.mean():.0%}): r {np.round(r, 3)}")
    assert np.median(r) > 0.9, r


def test_another_grid_without_motion_correction_is_refused_with_the_reason(fmri1):
    data, affine, mask = fmri1
    other = affine.copy()
    other[:3, :3] *= 1.2
    pre = OnlinePreprocessor(mask, affine, PreprocessConfig(motion=False), 10, tr_s=2.0,
                             reference=np.asarray(data[..., 0], np.float32))
    with pytest.raises(GeometryError, match="another grid.*aligns another grid; this one has none"):
        pre.check(data.shape, other)


def _ema_highpass(y: np.ndarray, tau: float) -> np.ndarray:
    """EmaDetrender's documented recursion in plain numpy, float64: ``a_t = max(1 / (t + 1), 1 / tau)``,
    ``m_t = m_{t-1} + a_t (y_t - m_{t-1})``, output ``y_t - m_t``."""
    out = np.empty_like(y, dtype=np.float64)
    m = np.zeros(y.shape[1])
    for t in range(len(y)):
        a = max(1.0 / (t + 1), 1.0 / tau)
        m = m + a * (y[t] - m)
        out[t] = y[t] - m
    return out


def test_live_tsnr_is_mean_over_sd_of_the_ema_highpass_on_a_real_run(fmri1, fmri1_nii):
    """On nitime's real run (TR 1.35 s), the chain's running tSNR after each volume is mean(raw) / sd(EMA
    high-pass) of the masked voxels over the volumes so far, the EMA written here from its documented
    recursion; the running median is NaN for the first 20 volumes and numpy's median after. Float32 precision:
    the chain's high-passed values are float32."""
    from realtime.preprocessing.qc import TSNR_MIN_VOLUMES

    data, affine, mask = fmri1
    tr_s = float(nib.load(fmri1_nii).header.get_zooms()[3])
    assert tr_s == pytest.approx(1.35)
    cfg = PreprocessConfig(motion=False, detrend="ema", ema_tau_s=20.0, normalize="running", delays=(0,))
    raw = data[mask].T.astype(np.float64)  # (n_volumes, n_voxels), C order of the mask
    h = _ema_highpass(raw, cfg.ema_tau_s / tr_s)
    pre = OnlinePreprocessor(mask, affine, cfg, data.shape[3], tr_s=tr_s)
    for t in range(data.shape[3]):
        pre.process(data[..., t])
        sd = h[:t + 1].std(axis=0)
        want = np.full(sd.shape, np.nan)
        np.divide(raw[:t + 1].mean(axis=0), sd, out=want, where=sd > 0)
        got = pre.tsnr.voxels()
        if t == 0:  # one volume: its high-pass is 0, the figure undefined
            assert np.isnan(got).all() and np.isnan(want).all()
        # a voxel whose s.d. is 0 in float64 could be a few float32 roundings off 0 in the chain: compared
        # where the s.d. is real signal (above 1e-3 of the mean; every voxel from the second volume on here)
        real = sd > 1e-3 * np.abs(raw[:t + 1].mean(axis=0))
        np.testing.assert_allclose(got[real], want[real], rtol=1e-5)
        if t + 1 < TSNR_MIN_VOLUMES:
            assert np.isnan(pre.tsnr.median())
        else:
            assert pre.tsnr.median() == pytest.approx(np.median(want[np.isfinite(want)]), rel=1e-5)
    assert real.all() and mask.sum() <= 2000  # a plain median: every voxel
    # the run path gives the figure at the last volume and, asked, the running median at every volume
    whole = preprocess_run(data, affine, mask, cfg, tr_s=tr_s, stack=False, tsnr_curve=True)
    np.testing.assert_allclose(whole.tsnr[real], want[real], rtol=1e-5)
    assert whole.tsnr.dtype == np.float64 and whole.tsnr.shape == (mask.sum(),)
    medians = [np.median(raw[:t + 1].mean(axis=0) / h[:t + 1].std(axis=0)) for t in range(TSNR_MIN_VOLUMES - 1,
                                                                                        data.shape[3])]
    assert np.isnan(whole.tsnr_curve[:TSNR_MIN_VOLUMES - 1]).all()
    np.testing.assert_allclose(whole.tsnr_curve[TSNR_MIN_VOLUMES - 1:], medians, rtol=1e-5)
    assert preprocess_run(data, affine, mask, cfg, tr_s=tr_s, stack=False).tsnr_curve is None  # only when asked
    with pytest.raises(ValueError, match="tsnr_curve .* needs a causal configuration"):
        preprocess_run(data, affine, mask, cfg.offline_variant(), tr_s=tr_s, stack=False, tsnr_curve=True)


def test_a_stand_in_volume_is_filtered_but_not_measured(fmri1, fmri1_nii):
    """A stand-in (the previous volume again, in place of a missing one) goes through the EMA, so the volumes
    after it are filtered as the live chain filters them, but the tSNR is of the real volumes only and the
    stand-in's DVARS is NaN (a repeated volume would lower the variance both measure). Reference: the EMA's
    recursion over the series with the repeat, then numpy over the rows of real volumes; the DVARS of the
    volume after the gap is against the last real volume."""
    data, affine, mask = fmri1
    tr_s = float(nib.load(fmri1_nii).header.get_zooms()[3])
    cfg = PreprocessConfig(motion=False, detrend="ema", ema_tau_s=20.0, normalize="running", delays=(0,))
    gap = 12
    order = list(range(data.shape[3]))
    order[gap] = gap - 1  # volume 12 missing: volume 11 stands in
    raw = data[mask].T.astype(np.float64)[order]
    h = _ema_highpass(raw, cfg.ema_tau_s / tr_s)
    pre = OnlinePreprocessor(mask, affine, cfg, data.shape[3], tr_s=tr_s)
    steps = [pre.process(data[..., k], stand_in=(t == gap)) for t, k in enumerate(order)]
    real = np.arange(len(order)) != gap
    want = raw[real].mean(axis=0) / h[real].std(axis=0)
    np.testing.assert_allclose(pre.tsnr.voxels(), want, rtol=1e-5)
    assert pre.tsnr.n == len(order) - 1
    with_it = raw.mean(axis=0) / h.std(axis=0)  # what counting the stand-in would give: a different figure
    assert np.abs(with_it / want - 1).max() > 1e-4
    assert np.isnan(steps[gap].dvars_pct)
    after = 100 * np.sqrt(np.mean((raw[gap + 1] - raw[gap - 1]) ** 2)) / raw[gap + 1].mean()
    assert steps[gap + 1].dvars_pct == pytest.approx(after, rel=1e-5)
    # the filtered values carry on from the stand-in, as without the flag
    plain = OnlinePreprocessor(mask, affine, cfg, data.shape[3], tr_s=tr_s)
    for k in order:
        last = plain.process(data[..., k])
    np.testing.assert_array_equal(steps[-1].values, last.values)


def test_offline_path_tsnr_is_mean_over_sd_of_the_whole_run_polynomial_residual(fmri1):
    """The non-causal path (whole-run quadratic regression, whole-run z-score): tSNR before the z-score, mean of
    the raw values over the s.d. of numpy's polyfit residuals."""
    data, affine, mask = fmri1
    cfg = PreprocessConfig(motion=False, detrend="offline", poly_order=2, normalize="zscore_run")
    out = preprocess_run(data, affine, mask, cfg, tr_s=1.35, stack=False)
    raw = data[mask].T.astype(np.float64)
    t = np.arange(raw.shape[0], dtype=np.float64)
    resid = raw - np.polynomial.polynomial.polyval(t, np.polynomial.polynomial.polyfit(t, raw, 2)).T
    sd = resid.std(axis=0)
    real = sd > 1e-3 * np.abs(raw.mean(axis=0))
    assert real.all()
    np.testing.assert_allclose(out.tsnr[real], raw.mean(axis=0)[real] / sd[real], rtol=1e-5)
    np.testing.assert_allclose(out.values.mean(axis=0), 0.0, atol=1e-4)  # the values are z-scored after it
