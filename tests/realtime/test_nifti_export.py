"""Exporting a recorded run to NIfTI, streamed volume by volume, without a source header."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

from protocols.errors import RecordError
from protocols.session import SessionRecord
from protocols.wire import VolumeMessage
from realtime.nifti_io import export_run_nifti

AFFINE = np.array([[-2.5, 0, 0, 90], [0, 2.5, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])


@pytest.mark.parametrize("suffix,order", [(".nii", "C"), (".nii.gz", "F")])
def test_export_without_source_header_is_bit_exact(tmp_path, rng, suffix, order):
    vols = [rng.integers(-32768, 32767, size=(7, 5, 4), dtype=np.int16) for _ in range(6)]
    rec = SessionRecord(str(tmp_path / "s"), sync=False)
    for i in [2, 0, 1, 5, 3, 4]:  # arrival order does not matter
        v = np.asfortranarray(vols[i]) if order == "F" else vols[i]
        msg = VolumeMessage("r1", i, v, AFFINE, 1.25, n_volumes=6, t_acquired=time.time())
        rec.append_volume(msg, memoryview(v.reshape(-1, order="A")).cast("B"), time.time(), order)
    out = export_run_nifti(tmp_path / "s", "r1", tmp_path / f"r1{suffix}")
    img = nib.load(out)
    assert img.get_data_dtype() == np.int16 and img.shape == (7, 5, 4, 6)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.stack(vols, axis=-1))
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(img.header.get_zooms(), (2.5, 2.5, 3.0, 1.25))
    assert img.header.get_xyzt_units() == ("mm", "sec")


def test_export_refuses_a_run_with_gaps(tmp_path, rng):
    rec = SessionRecord(str(tmp_path / "s"), sync=False)
    v = rng.integers(0, 100, size=(3, 3, 3), dtype=np.int16)
    for i in (0, 2):
        rec.append_volume(VolumeMessage("r1", i, v, AFFINE, 1.0, n_volumes=3), memoryview(v).cast("B"),
                          time.time(), "C")
    with pytest.raises(RecordError, match=r"missing volumes \[1\]"):
        export_run_nifti(tmp_path / "s", "r1", tmp_path / "r1.nii")
