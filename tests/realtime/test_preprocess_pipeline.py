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
