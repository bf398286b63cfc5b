"""Vendor readers on real scanner exports (Pyneal's test data, tests/data/pyneal).

References are independent of the readers: Pyneal's description of the
acquisitions (sizes, spacing, TR), the mosaic tiles cut out of pydicom's
pixel array by hand, and nibabel's own single-slice DICOM wrapper for GE.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from realtime.scanner.vendors import (VendorFileError, read_ge_slice, read_nifti_volume, read_siemens_mosaic,
                                      stack_ge_slices)
from vendor_data import GE, SIEMENS
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _zooms(affine):
    return np.linalg.norm(affine[:3, :3], axis=0)


def test_siemens_mosaic_matches_hand_cut_tiles_and_pyneal_description():
    assert len(SIEMENS) == 3
    for k, path in enumerate(SIEMENS):
        vol = read_siemens_mosaic(path)
        assert vol.index == k  # AcquisitionNumber 1, 2, 3
        assert vol.data.shape == (64, 64, 18) and vol.data.dtype == np.uint16
        assert vol.tr_s == 1.0 and vol.series == "13"
        np.testing.assert_allclose(_zooms(vol.affine), [3.0, 3.0, 3.8], atol=1e-3)
        # the mosaic is a 5x5 grid of 64x64 tiles (ceil(sqrt(18)) = 5), filled row by row
        slab = pydicom.dcmread(path).pixel_array
        assert slab.shape == (320, 320)
        for z in range(18):
            r, c = divmod(z, 5)
            assert np.array_equal(vol.data[:, :, z], slab[64 * r:64 * (r + 1), 64 * c:64 * (c + 1)])


def test_ge_volumes_match_nibabels_slice_wrapper_and_pyneal_description():
    slices = [read_ge_slice(p) for p in GE]
    assert len(slices) == 54
    by_volume = {}
    for s in slices:
        by_volume.setdefault(s.volume, []).append(s)
    assert sorted(by_volume) == [0, 1, 2] and all(len(v) == 18 for v in by_volume.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers
    for v, group in by_volume.items():
        vol = stack_ge_slices(group[::-1])  # the order files come in must not matter
        assert vol.index == v and vol.data.shape == (64, 64, 18) and vol.data.dtype == np.int16
        assert vol.tr_s == 1.0
        np.testing.assert_allclose(_zooms(vol.affine), [3.0, 3.0, 3.8], atol=1e-3)
        # here instance order runs along the slice normal: slice j of volume v is instance 18 v + j + 1
        for j in (0, 7, 17):
            path = GE[18 * v + j]
            assert np.array_equal(vol.data[:, :, j], pydicom.dcmread(path).pixel_array)
            w = dicomwrappers.wrapper_from_file(path)
            ref = LPS_TO_RAS @ np.asarray(w.affine)
            # in-plane axes and this slice's position agree with nibabel's own reading of the file
            np.testing.assert_allclose(vol.affine[:3, :2], ref[:3, :2], atol=1e-4)
            np.testing.assert_allclose(vol.affine[:3, :3] @ [0, 0, j] + vol.affine[:3, 3], ref[:3, 3], atol=1e-3)


def test_truncated_or_foreign_files_name_the_file(tmp_path):
    half = tmp_path / "001_000013_000001.dcm"
    with open(SIEMENS[0], "rb") as f:
        blob = f.read()
    half.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(VendorFileError, match="001_000013_000001.dcm"):
        read_siemens_mosaic(half)
    with pytest.raises(VendorFileError, match="not a Siemens mosaic.*--vendor ge"):
        read_siemens_mosaic(GE[0])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom at all" * 10)
    with pytest.raises(VendorFileError, match="junk.dcm: not a readable DICOM"):
        read_siemens_mosaic(junk)


def test_ge_slices_per_volume_can_be_given():
    """A site whose export fills ImagesInAcquisition otherwise gives the count: 9 slices per volume turns
    instance 10 into the first slice of volume 1."""
    assert read_ge_slice(GE[9]).volume == 0
    assert read_ge_slice(GE[9], slices_per_volume=9).volume == 1


def test_ge_volume_with_a_missing_slice_is_refused():
    slices = [read_ge_slice(p) for p in GE[:17]]
    with pytest.raises(VendorFileError, match="17 slice files.*expected 18"):
        stack_ge_slices(slices)


def test_nifti_volume_keeps_stored_values(tmp_path, rng):
    data = rng.integers(0, 4000, size=(5, 6, 7)).astype(np.int16)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, tmp_path / "v.nii")
    vol = read_nifti_volume(tmp_path / "v.nii", 4)
    assert vol.index == 4 and vol.data.dtype == np.int16 and np.array_equal(vol.data, data)
    assert vol.tr_s is None  # a 3-D header carries no TR: it comes from --tr
    np.testing.assert_array_equal(vol.affine, affine)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), affine), tmp_path / "two.nii")
    with pytest.raises(VendorFileError, match="two.nii: shape .* is not one volume"):
        read_nifti_volume(tmp_path / "two.nii", 0)
