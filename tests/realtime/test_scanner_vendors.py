"""Vendor readers on real scanner exports (Pyneal's test data, tests/data/pyneal).

References are independent of the readers: Pyneal's description of the
acquisitions (sizes, spacing, TR), the mosaic tiles cut out of pydicom's
pixel array by hand, nibabel's own single-slice DICOM wrapper for GE, and
for Philips the REC's bytes scaled by the PAR's image lines, both read by
hand here.
"""

from __future__ import annotations

import shutil
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from realtime.scanner.vendors import (VendorFileError, read_ge_slice, read_nifti_volume, read_philips_parrec,
                                      read_siemens_mosaic, stack_ge_slices)
from vendor_data import GE, PHILIPS, SIEMENS
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


def test_siemens_slice_times_are_dcm2niixs(tmp_path):
    """Each mosaic's slice times (the CSA header's MosaicRefAcqTimes) against dcm2niix's SliceTiming for the
    same files: an independent reader, Debian's dcm2niix, run as a process. Both list the slices in the
    order of the volume's third axis (dcm2niix's image has the same slices as ours, in the same order)."""
    import glob
    import json
    import subprocess

    exe = shutil.which("dcm2niix")
    assert exe, "Debian's dcm2niix is missing: run ./setup.sh"
    src = tmp_path / "dicom"
    src.mkdir()
    for p in SIEMENS:
        shutil.copy(p, src)
    subprocess.run([exe, "-b", "y", "-z", "n", "-f", "run", "-o", str(tmp_path), str(src)], check=True,
                   capture_output=True)
    ref = json.loads((tmp_path / "run.json").read_text())
    img = np.asanyarray(nib.load(glob.glob(str(tmp_path / "run.nii"))[0]).dataobj)
    for k, p in enumerate(SIEMENS):
        v = read_siemens_mosaic(p)
        np.testing.assert_allclose(v.slice_timing_s, ref["SliceTiming"], atol=1e-6)
        assert len(v.slice_timing_s) == v.data.shape[2] and max(v.slice_timing_s) < v.tr_s
        # the same slices in the same order: each slice's mean equals dcm2niix's (its in-plane flips aside)
        np.testing.assert_allclose(v.data.mean(axis=(0, 1)), img[..., k].mean(axis=(0, 1)), rtol=1e-6)


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


def _par_image_lines(par):
    """The PAR's image lines, parsed by hand: (slice number, image type, index in REC, RI, RS, SS) each."""
    rows = []
    with open(par, encoding="latin-1") as f:
        for line in f:
            fields = line.split()
            if fields and not line.startswith(("#", ".")) and fields[0].isdigit():
                rows.append((int(fields[0]), int(fields[4]), int(fields[6]), float(fields[11]), float(fields[12]),
                             float(fields[13])))
    return rows


def test_philips_magnitude_matches_hand_scaled_rec_and_pyneal_description():
    """Each REC image is 80 x 80 unsigned 16-bit, row by row; the reader's axis 0 runs along a row. The
    floating-point value is (PV RS + RI) / (RS SS), with the slope of that slice in that volume: the XTC
    export changes it from volume to volume, which is why stored values are not sent."""
    assert len(PHILIPS) == 4
    slopes = []
    for k, par in enumerate(PHILIPS):
        vol = read_philips_parrec(par)
        assert vol.index == k  # Acquisition nr 1..4
        assert vol.data.shape == (80, 80, 15) and vol.data.dtype == np.float32
        np.testing.assert_allclose(_zooms(vol.affine), [3.0, 3.0, 4.0], atol=1e-3)
        assert vol.series == "philips" and vol.files == (par, par[:-4] + ".rec")
        assert vol.tr_s is None and "Repetition time [ms] is 1 in the PAR header" in vol.tr_note
        raw = np.fromfile(par[:-4] + ".rec", dtype="<u2").reshape(30, 80, 80)
        lines = _par_image_lines(par)
        assert len(lines) == 30 and {t for _, t, *_ in lines} == {16, 17}
        for sl, kind, idx, ri, rs, ss in lines:
            if kind == 16:
                ref = (raw[idx].T.astype(np.float64) * rs + ri) / (rs * ss)
                np.testing.assert_allclose(vol.data[:, :, sl - 1], ref, rtol=1e-6)
                if sl == 1:
                    slopes.append(rs)
        assert vol.data.min() >= 0  # the magnitude
        phase = read_philips_parrec(par, image_type=17).data
        assert phase.min() >= -np.pi - 1e-5 and phase.max() <= np.pi + 1e-5 and phase.min() < -3.1
        assert np.array_equal(read_philips_parrec(par, image_type=16).data, vol.data)
    assert len(set(slopes)) == 4  # slice 1's slope differs in every volume


def test_philips_incomplete_or_foreign_pairs_name_the_file(tmp_path):
    par = tmp_path / "Dump-0000.par"
    shutil.copy(PHILIPS[0], par)
    with pytest.raises(VendorFileError, match="Dump-0000.par: its REC file .*Dump-0000.rec. is not there"):
        read_philips_parrec(par)
    blob = open(PHILIPS[0][:-4] + ".rec", "rb").read()
    (tmp_path / "Dump-0000.rec").write_bytes(blob[:100_000])
    with pytest.raises(VendorFileError, match="100000 bytes, but Dump-0000.par describes 384000; the scanner may "
                                              "still be writing it"):
        read_philips_parrec(par)
    (tmp_path / "Dump-0000.rec").write_bytes(blob)
    with pytest.raises(VendorFileError, match=r"no image of image_type_mr 3 \(it has \[16, 17\]\); choose one "
                                              "with --image-type"):
        read_philips_parrec(par, image_type=3)
    junk = tmp_path / "junk.par"
    junk.write_text("# not a PAR header\n. nothing : here\n")
    with pytest.raises(VendorFileError, match="junk.par: not a readable PAR header"):
        read_philips_parrec(junk)


@pytest.mark.parametrize("tr_ms", [0.0, 1.0, 61000.0, None])
def test_a_dicom_tr_that_is_no_volumes_tr_is_missing_not_a_bad_file(tmp_path, tr_ms):
    # one rule for every vendor's header (realtime.nifti_io.TR_RANGE_S): outside it the TR is unknown and
    # --tr gives it; the volume itself is still read (it used to be refused as a bad file for DICOM)
    for src, reader in ((SIEMENS[0], read_siemens_mosaic), (GE[0], read_ge_slice)):
        ds = pydicom.dcmread(src)
        if tr_ms is None:
            del ds.RepetitionTime
        else:
            ds.RepetitionTime = tr_ms
        path = str(tmp_path / f"{reader.__name__}.dcm")
        ds.save_as(path)
        got = reader(path)
        assert got.tr_s is None
        assert path in got.tr_note and ("no RepetitionTime" if tr_ms is None else f"RepetitionTime {tr_ms:g} ms") \
            in got.tr_note
        want = reader(src)
        np.testing.assert_array_equal(got.data if hasattr(got, "data") else got.pixels,
                                      want.data if hasattr(want, "data") else want.pixels)
