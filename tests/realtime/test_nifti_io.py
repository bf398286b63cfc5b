"""NIfTI reading for the run helpers: each volume read once, exactly as nibabel reads it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from realtime.nifti_io import iter_volumes
from realtime.preprocessing import PreprocessConfig, preprocess_run, realign_run

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("slope", [None, (0.5, 3.0)])
def test_iter_volumes_equals_nibabel_slicing(tmp_path, rng, suffix, slope):
    data = rng.integers(-300, 3000, size=(5, 4, 3, 7)).astype(np.int16)
    img = nib.Nifti1Image(data, AFFINE)
    if slope is not None:
        img.header.set_slope_inter(*slope)
    path = tmp_path / f"run{suffix}"
    nib.save(img, path)
    img = nib.load(path)
    vols = list(iter_volumes(img))
    assert len(vols) == 7
    for t, v in enumerate(vols):
        ref = np.asarray(img.dataobj[..., t])
        assert v.dtype == ref.dtype and v.shape == ref.shape
        np.testing.assert_array_equal(v, ref)


def test_iter_volumes_reports_a_truncated_file(tmp_path, rng):
    data = rng.integers(0, 100, size=(6, 5, 4, 6)).astype(np.int16)
    path = tmp_path / "run.nii"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match="volume 5 is truncated"):
        list(iter_volumes(nib.load(path)))



def test_run_helpers_give_the_same_on_a_gz_proxy_as_on_the_array(tmp_path, rng):
    """preprocess_run / realign_run read a .nii.gz proxy sequentially; same numbers as on the array."""
    g = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in (24, 22, 20)], indexing="ij"))
    blob = 1000 * np.exp(-(g ** 2).sum(0) / 40.0)
    data = (blob[..., None] + 20 * rng.standard_normal((24, 22, 20, 6))).astype(np.float32)
    path = tmp_path / "run.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    proxy = nib.load(path).dataobj
    mask = np.zeros(data.shape[:3], bool)
    mask[6:18, 6:16, 5:15] = True
    cfg = PreprocessConfig(motion=False, delays=(1, 2))
    a = preprocess_run(data, AFFINE, mask, cfg, tr_s=1.5)
    b = preprocess_run(proxy, AFFINE, mask, cfg, tr_s=1.5)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.x, b.x)
    ra = realign_run(data, AFFINE, reslice_mask=mask)
    rb = realign_run(proxy, AFFINE, reslice_mask=mask)
    np.testing.assert_array_equal(ra.params, rb.params)
    np.testing.assert_array_equal(ra.values, rb.values)
