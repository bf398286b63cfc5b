"""Readers for what scanners write during a run: one volume at a time, native dtype, RAS+ affine.

Vendors and their real-time exports:

``siemens``
    One mosaic DICOM per volume (``SSS_NNNNNN_VVVVVV.dcm``: session, series,
    volume), unpacked by nibabel's ``nicom`` (the CSA header gives the slice
    count).
``ge``
    One DICOM per slice; ``ImagesInAcquisition`` slices make a volume, whose
    index is ``(InstanceNumber - 1) // ImagesInAcquisition``.
``nifti``
    One 3-D NIfTI per volume (scanner NIfTI export, dcm2niix per volume).

DICOM arrays follow nibabel's convention: axes (row, column, slice), and the
affine maps those indices to mm. DICOM's patient space is LPS, so x and y are
negated to give the RAS+ affine the wire protocol carries. The volume index
comes from the headers, never from the order files appear in.

Philips XTC PAR/REC dumps are not read yet: the exports at hand carry two
image types per dump and a header TR of 1 ms, and which image a site wants
has to be confirmed on its own data.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["VENDORS", "ScannerVolume", "SliceInfo", "VendorFileError", "read_siemens_mosaic", "read_ge_slice",
           "stack_ge_slices", "read_nifti_volume"]

VENDORS = ("siemens", "ge", "nifti")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VendorFileError(ValueError):
    """A scanner file that cannot be read as a volume (or slice) of the run.

    The message names the file and the header field at fault.
    """


@dataclass
class ScannerVolume:
    """One complete volume as the scanner wrote it.

    Attributes
    ----------
    index : int
        0-based volume index within the series, from the headers.
    data : ndarray of shape (x, y, z)
        Voxel values in the file's stored dtype (never rescaled).
    affine : ndarray of shape (4, 4), float64
        Voxel index -> mm, RAS+.
    tr_s : float or None
        Repetition time in seconds, if the header has it.
    series : str
        Series identifier (DICOM ``SeriesNumber``; empty for NIfTI).
    files : tuple of str
        The file(s) it was read from.
    """

    index: int
    data: np.ndarray
    affine: np.ndarray
    tr_s: float | None
    series: str
    files: tuple[str, ...]


def _dcmread(path: str):
    import pydicom

    try:
        return pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for a truncated or foreign file
        raise VendorFileError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _tr_s(ds, path: str) -> float | None:
    tr = ds.get("RepetitionTime")
    if tr is None:
        return None
    tr = float(tr) / 1000.0
    if not 0.0 < tr <= 60.0:
        raise VendorFileError(f"{path}: RepetitionTime {tr * 1000:g} ms is not a usable TR; give it with --tr")
    return tr


def _require(ds, name: str, path: str):
    value = ds.get(name)
    if value is None:
        raise VendorFileError(f"{path}: DICOM field {name} is missing; is this the EPI series?")
    return value


def read_siemens_mosaic(path) -> ScannerVolume:
    """One Siemens mosaic DICOM -> its volume.

    Raises
    ------
    VendorFileError
        If the file is not a readable mosaic (names the field).
    """
    path = os.fspath(path)
    ds = _dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nicom's "experimental readers" notice, at import
        from nibabel.nicom import dicomwrappers

        try:
            w = dicomwrappers.wrapper_from_data(ds)
        except Exception as e:
            raise VendorFileError(f"{path}: nibabel cannot wrap this DICOM ({e})") from e
        if not getattr(w, "is_mosaic", False):
            raise VendorFileError(f"{path}: not a Siemens mosaic (ImageType {list(ds.get('ImageType', []))}); "
                                  "use --vendor ge for one file per slice")
        try:
            data = np.ascontiguousarray(w.get_unscaled_data())  # stored dtype, no rescaling
            affine = _LPS_TO_RAS @ np.asarray(w.affine, dtype=np.float64)
        except Exception as e:
            raise VendorFileError(f"{path}: the mosaic does not unpack ({e}); check NumberOfImagesInMosaic "
                                  "in the CSA header") from e
    number = _require(ds, "AcquisitionNumber", path)
    return ScannerVolume(index=int(number) - 1, data=data, affine=affine, tr_s=_tr_s(ds, path),
                         series=str(ds.get("SeriesNumber", "")), files=(path,))


@dataclass
class SliceInfo:
    """One GE slice file, read."""

    volume: int
    n_slices: int
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    spacing: np.ndarray  # (2,) PixelSpacing: between rows, between columns (mm)
    pixels: np.ndarray  # (rows, cols), stored dtype
    tr_s: float | None
    series: str
    path: str


def read_ge_slice(path, slices_per_volume: int | None = None) -> SliceInfo:
    """One GE slice DICOM -> its pixels and geometry.

    Parameters
    ----------
    slices_per_volume : int, optional
        Default: the header's ``ImagesInAcquisition``. Give it where a
        scanner's export fills that field differently.

    Raises
    ------
    VendorFileError
    """
    path = os.fspath(path)
    ds = _dcmread(path)
    n = int(slices_per_volume) if slices_per_volume else int(_require(ds, "ImagesInAcquisition", path))
    instance = int(_require(ds, "InstanceNumber", path))
    if n < 1 or instance < 1:
        raise VendorFileError(f"{path}: ImagesInAcquisition {n} / InstanceNumber {instance} must be >= 1")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise VendorFileError(f"{path}: the pixel data cannot be decoded ({e}); the file may be incomplete") from e
    return SliceInfo(volume=(instance - 1) // n, n_slices=n,
                     position=np.asarray(_require(ds, "ImagePositionPatient", path), dtype=np.float64),
                     orientation=np.asarray(_require(ds, "ImageOrientationPatient", path), dtype=np.float64),
                     spacing=np.asarray(_require(ds, "PixelSpacing", path), dtype=np.float64),
                     pixels=pixels, tr_s=_tr_s(ds, path), series=str(ds.get("SeriesNumber", "")), path=path)


def stack_ge_slices(slices: list[SliceInfo]) -> ScannerVolume:
    """All slices of one GE volume -> the volume.

    Slices are ordered along the slice normal; the affine's third column is
    the step between neighbouring slice positions.

    Raises
    ------
    VendorFileError
        If the slices disagree on volume, geometry or shape.
    """
    first = slices[0]
    n = first.n_slices
    names = ", ".join(os.path.basename(s.path) for s in slices[:3]) + (" ..." if len(slices) > 3 else "")
    if len(slices) != n or any(s.volume != first.volume for s in slices):
        raise VendorFileError(f"volume {first.volume}: {len(slices)} slice files ({names}), expected {n}")
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape or not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise VendorFileError(f"{s.path}: shape or ImageOrientationPatient differs from {first.path}")
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_cos, col_cos)
    order = sorted(slices, key=lambda s: float(s.position @ normal))
    pos = np.stack([s.position for s in order])
    if n > 1:
        step = (pos[-1] - pos[0]) / (n - 1)
        if not np.allclose(pos - pos[0], np.outer(np.arange(n), step), atol=1e-2):
            raise VendorFileError(f"volume {first.volume}: slice positions are not evenly spaced ({names})")
    else:
        step = normal
    affine = np.eye(4)
    # axis 0 runs down the rows (along the column cosine), axis 1 along a row
    affine[:3, 0] = col_cos * first.spacing[0]
    affine[:3, 1] = row_cos * first.spacing[1]
    affine[:3, 2] = step
    affine[:3, 3] = pos[0]
    data = np.stack([s.pixels for s in order], axis=-1)
    return ScannerVolume(index=first.volume, data=data, affine=_LPS_TO_RAS @ affine, tr_s=first.tr_s,
                         series=first.series, files=tuple(s.path for s in order))


def read_nifti_volume(path, index: int) -> ScannerVolume:
    """One 3-D NIfTI (or 4-D with one volume) -> the volume, raw stored values.

    Raises
    ------
    VendorFileError
    """
    import nibabel as nib

    from ..nifti_io import tr_seconds

    path = os.fspath(path)
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj.get_unscaled())
    except Exception as e:
        raise VendorFileError(f"{path}: not a readable NIfTI ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VendorFileError(f"{path}: shape {data.shape} is not one volume; the watcher takes a file per volume")
    tr, _ = tr_seconds(img.header)  # a 3-D header rarely has a TR; then it comes from --tr
    return ScannerVolume(index=index, data=np.ascontiguousarray(data), affine=np.asarray(img.affine, np.float64),
                         tr_s=tr, series="", files=(path,))
