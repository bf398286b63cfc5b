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
``philips``
    One PAR/REC pair per volume (the XTC real-time export, ``Dump-NNNN.par``
    and ``.rec``), parsed by nibabel's ``parrec`` with ``strict_sort``. The
    volume index is the PAR's ``Acquisition nr`` minus 1 (as Pyneal reads it).

DICOM arrays follow nibabel's convention: axes (row, column, slice), and the
affine maps those indices to mm. DICOM's patient space is LPS, so x and y are
negated to give the RAS+ affine the wire protocol carries. The volume index
comes from the headers, never from the order files appear in.

Philips is the one vendor whose stored values are not sent as stored. A REC
holds unsigned integers with a rescale slope per slice, and the XTC export
changes that slope from one volume to the next (0.488 then 0.486 on slice 1
of the real dumps in Pyneal's test data), so stored values are not comparable
over time. The reader sends float32 "floating point" values, ``FP = (PV RS +
RI) / (RS SS)``, which is dcm2niix's default for Philips. A dump can hold
several images of each slice (``image_type_mr``: the XTC dumps at hand hold
16, unsigned magnitude, and 17, phase in milliradians). The default is the
magnitude: code 0 where present, else the lowest code, which is the image
Pyneal sends. The dumps' ``Repetition time [ms]`` reads 1, which no EPI
volume can have.

Every vendor's header TR goes through one rule (:data:`realtime.nifti_io.TR_RANGE_S`,
0.1-60 s): outside it the TR is taken as missing (``tr_note`` says why) and
``--tr`` gives it; the volume itself is read all the same.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..nifti_io import implausible_tr

__all__ = ["VENDORS", "ScannerVolume", "SliceInfo", "VendorFileError", "read_siemens_mosaic", "read_ge_slice",
           "stack_ge_slices", "read_nifti_volume", "read_philips_parrec", "philips_rec_path"]

VENDORS = ("siemens", "ge", "nifti", "philips")

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
        Voxel values in the file's stored dtype (never rescaled); Philips:
        float32 floating-point values (see the module's notes).
    affine : ndarray of shape (4, 4), float64
        Voxel index -> mm, RAS+.
    tr_s : float or None
        Repetition time in seconds, if the header has it.
    series : str
        Series identifier (DICOM ``SeriesNumber``; empty for NIfTI).
    files : tuple of str
        The file(s) it was read from.
    tr_note : str
        Why ``tr_s`` is None, naming the header field, where the header has
        a value that is not a usable TR.
    slice_timing_s : tuple of float or None
        When each slice (along the third axis of ``data``) was acquired within
        the TR, in seconds, where the header says (Siemens: the CSA header's
        ``MosaicRefAcqTimes``, as dcm2niix reads it); the BIDS ``SliceTiming``.
    """

    index: int
    data: np.ndarray
    affine: np.ndarray
    tr_s: float | None
    series: str
    files: tuple[str, ...]
    tr_note: str = ""
    slice_timing_s: tuple | None = None


def _dcmread(path: str):
    import pydicom

    try:
        return pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for a truncated or foreign file
        raise VendorFileError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _tr_s(ds, path: str) -> tuple[float | None, str]:
    """The DICOM's TR in seconds and "", or None and why (missing, or not a volume's TR: ``--tr`` gives it)."""
    tr = ds.get("RepetitionTime")
    if tr is None:
        return None, f"{path}: no RepetitionTime in the DICOM header"
    tr = float(tr) / 1000.0
    if implausible_tr(tr):
        return None, f"{path}: RepetitionTime {tr * 1000:g} ms is not a volume's TR"
    return tr, ""


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
    tr, note = _tr_s(ds, path)
    return ScannerVolume(index=int(number) - 1, data=data, affine=affine, tr_s=tr,
                         series=str(ds.get("SeriesNumber", "")), files=(path,), tr_note=note,
                         slice_timing_s=_mosaic_slice_times(w, data.shape[2]))


def _mosaic_slice_times(wrapper, n_slices: int) -> tuple | None:
    """The CSA header's ``MosaicRefAcqTimes`` (ms, one per slice in the mosaic's order, which is the order
    nibabel unpacks) in seconds; None if the header has no such list for every slice."""
    try:
        tag = (wrapper.csa_header or {}).get("tags", {}).get("MosaicRefAcqTimes") or {}
        times = [float(t) / 1000.0 for t in tag.get("items", [])]
    except (TypeError, ValueError, AttributeError):
        return None
    return tuple(times) if len(times) == n_slices and all(np.isfinite(times)) else None


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
    tr_note: str = ""  # why tr_s is None


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
    tr, note = _tr_s(ds, path)
    return SliceInfo(volume=(instance - 1) // n, n_slices=n,
                     position=np.asarray(_require(ds, "ImagePositionPatient", path), dtype=np.float64),
                     orientation=np.asarray(_require(ds, "ImageOrientationPatient", path), dtype=np.float64),
                     spacing=np.asarray(_require(ds, "PixelSpacing", path), dtype=np.float64),
                     pixels=pixels, tr_s=tr, series=str(ds.get("SeriesNumber", "")), path=path, tr_note=note)


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
                         series=first.series, files=tuple(s.path for s in order), tr_note=first.tr_note)


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


def philips_rec_path(par_path) -> str | None:
    """The REC file next to a PAR file (``.rec`` or ``.REC``), or None if there is none."""
    par_path = os.fspath(par_path)
    stem, folder = os.path.splitext(os.path.basename(par_path))[0], os.path.dirname(par_path) or "."
    for suffix in (".rec", ".REC", ".Rec"):
        if os.path.isfile(os.path.join(folder, stem + suffix)):
            return os.path.join(folder, stem + suffix)
    return None


def read_philips_parrec(path, image_type: int | None = None) -> ScannerVolume:
    """One Philips PAR/REC pair (a real-time XTC dump) -> its volume, float32 FP values.

    Parameters
    ----------
    path : path-like
        The PAR file; its REC is the file of the same name with ``.rec``.
    image_type : int, optional
        The ``image_type_mr`` code of the image to send. Default: 0
        (magnitude) if present, else the lowest code in the dump.

    Returns
    -------
    ScannerVolume
        ``data`` of shape (x, y, z), float32; ``series`` is the name of the
        folder the dump is in (XTC makes one per series).

    Raises
    ------
    VendorFileError
        If the PAR does not parse, the REC is missing or not the size the
        PAR describes (still being written), the image type is absent, or
        the dump holds more than one volume of it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel's notes on PAR versions it has not seen
        from nibabel import parrec

        path = os.fspath(path)
        try:
            with open(path, encoding="latin-1") as f:
                hdr = parrec.PARRECHeader.from_fileobj(f, strict_sort=True)
        except OSError as e:
            raise VendorFileError(f"{path}: {e}") from e
        except Exception as e:  # nibabel raises PARRECError, ValueError, IndexError on a partial header
            raise VendorFileError(f"{path}: not a readable PAR header ({type(e).__name__}: {e})") from e
        rec = philips_rec_path(path)
        if rec is None:
            raise VendorFileError(f"{path}: its REC file ({os.path.splitext(path)[0]}.rec) is not there")
        defs = hdr.image_defs
        rows_cols = np.asarray(defs["recon resolution"], dtype=np.int64).reshape(len(defs), 2)
        expected = int(np.sum(rows_cols[:, 0] * rows_cols[:, 1] * defs["image pixel size"] // 8))
        size = os.path.getsize(rec)
        if size != expected:
            raise VendorFileError(f"{rec}: {size} bytes, but {os.path.basename(path)} describes {expected}; "
                                  "the scanner may still be writing it")
        shape = hdr.get_data_shape()
        labels = hdr.get_volume_labels() if len(shape) > 3 else {}
        if set(labels) - {"image_type_mr"}:
            raise VendorFileError(f"{path}: holds {shape[3]} volumes ({', '.join(labels)} vary); the watcher "
                                  "takes one volume per PAR/REC pair, as the real-time export writes them")
        types = [int(t) for t in labels.get("image_type_mr", [int(defs["image_type_mr"][0])])]
        if image_type is None:
            image_type = 0 if 0 in types else min(types)
        if int(image_type) not in types:
            raise VendorFileError(f"{path}: no image of image_type_mr {image_type} (it has {sorted(types)}); "
                                  "choose one with --image-type")
        k = types.index(int(image_type))
        try:  # the header parsed above serves the image too (parsing a PAR costs more than reading its REC)
            proxy = parrec.PARRECArrayProxy(rec, hdr, mmap=False, scaling="fp")
            data = np.asarray(proxy[..., k] if len(shape) > 3 else proxy[...], dtype=np.float32)
            affine = np.asarray(hdr.get_affine(), dtype=np.float64)  # what PARRECImage takes: RAS+ scanner mm
        except Exception as e:
            raise VendorFileError(f"{path}: the REC does not unpack ({type(e).__name__}: {e})") from e
        acq = int(hdr.general_info["acq_nr"])
        if acq < 1:
            raise VendorFileError(f"{path}: Acquisition nr {acq} must be >= 1 (it numbers the volumes)")
        tr_ms = float(np.ravel(hdr.general_info["repetition_time"])[0])
        tr, note = tr_ms / 1000.0, ""
        if implausible_tr(tr):
            tr, note = None, f"{path}: Repetition time [ms] is {tr_ms:g} in the PAR header, not a volume's TR"
    return ScannerVolume(index=acq - 1, data=np.ascontiguousarray(data), affine=affine,
                         tr_s=tr, series=os.path.basename(os.path.dirname(os.path.abspath(path))),
                         files=(path, rec), tr_note=note)
