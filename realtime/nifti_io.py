"""NIfTI in and out for the live path: reading a recorded run to replay it,
and exporting a recorded run back to NIfTI bit-exact.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from protocols.session import run_volumes

__all__ = ["NiftiRun", "read_nifti_run", "header_tr_s", "tr_seconds", "implausible_tr", "export_run_nifti",
           "run_export_args", "iter_volumes"]

log = logging.getLogger("b2m.nifti")

_TIME_UNIT_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
#: The TRs taken from a header as a volume's TR, seconds: outside, it is a unit error or a placeholder
#: (Philips XTC writes 1 ms), and ``--tr`` gives the TR. The one rule for NIfTI, DICOM and PAR headers.
TR_RANGE_S = (0.1, 60.0)


def _damaged_errors() -> tuple[type[BaseException], ...]:
    """The exceptions reading a damaged file's data raises: a gzip stream cut short (``EOFError``) or
    altered (``gzip.BadGzipFile``, an ``OSError``, or ``zlib``'s and isal's own errors), or a ``.nii``
    shorter than its header says (nibabel's ``OSError``)."""
    errors: tuple[type[BaseException], ...] = (EOFError, zlib.error, OSError)
    try:
        from isal.isal_zlib import error as isal_error
    except ImportError:  # pragma: no cover - isal is a dependency
        return errors
    return errors + (isal_error,)


def _damaged(path: str, e: BaseException) -> ValueError:
    """The error for a file whose data cannot be read to the end: it names the file and what to do."""
    why = " ".join(str(e).split())  # nibabel's own message runs over two lines
    return ValueError(f"{path}: truncated or corrupt ({type(e).__name__}: {why}); re-copy or re-download it")


def implausible_tr(tr_s: float) -> bool:
    """Whether ``tr_s`` (seconds) cannot be a volume's TR (:data:`TR_RANGE_S`; NaN included)."""
    return not TR_RANGE_S[0] <= tr_s <= TR_RANGE_S[1]


@dataclass
class NiftiRun:
    """A 4-D NIfTI opened for replay.

    Attributes
    ----------
    path : str
    data : ndarray of shape (x, y, z, n_volumes)
        Raw (unscaled) on-disk values in the file's own dtype and byte order;
        a memory map for uncompressed files.
    affine : ndarray of shape (4, 4)
        nibabel's best affine (sform if set, else qform).
    tr_s : float or None
        TR in seconds from pixdim[4] and the time units, if they make sense (:func:`tr_seconds`).
    tr_note : str
        Why ``tr_s`` is None ("" otherwise).
    header_bytes : bytes
        The raw NIfTI header, sent along so the receiver can write the same header.
    scl_slope, scl_inter : float
        The file's scaling (nibabel moves it from the header into the array
        proxy on load, so ``header_bytes`` alone does not carry it).
    """

    path: str
    data: np.ndarray
    affine: np.ndarray
    tr_s: float | None
    tr_note: str
    header_bytes: bytes
    scl_slope: float = 1.0
    scl_inter: float = 0.0

    @property
    def n_volumes(self) -> int:
        return self.data.shape[3]


def header_tr_s(header) -> float:
    """pixdim[4] of a NIfTI header converted to seconds by the header's time unit.

    The TR is never guessed: a header whose time unit is not ``sec``,
    ``msec`` or ``usec`` (``unknown`` when ``xyzt_units`` was never set) is
    refused, since 1.5 could be seconds and 1500 milliseconds, or not.
    Plausibility is the caller's: :func:`tr_seconds` bounds the value, and
    the BIDS loader checks it against the sidecar's ``RepetitionTime``.

    Raises
    ------
    ValueError
        If the header has no 4th pixdim or no time unit; the message says how to set it.
    """
    zooms = header.get_zooms()
    if len(zooms) < 4:
        raise ValueError("the header has no 4th pixdim (not a 4-D run)")
    unit = header.get_xyzt_units()[1]
    if unit not in _TIME_UNIT_S:
        raise ValueError(f"the NIfTI time unit is '{unit}', so pixdim[4] = {float(zooms[3])} cannot be read as "
                         f"a TR; set it, e.g. with nibabel img.header.set_xyzt_units('mm', 'sec')")
    return float(zooms[3]) * _TIME_UNIT_S[unit]


def tr_seconds(header) -> tuple[float | None, str]:
    """TR in seconds from a NIfTI header (:func:`header_tr_s`), if it can be trusted.

    Returns ``(tr, "")``, or ``(None, reason)`` when the header has no time
    unit, or the TR is outside :data:`TR_RANGE_S` (e.g. a value in
    milliseconds labelled as seconds, as in nibabel's ``example4d.nii.gz``).
    """
    try:
        tr = header_tr_s(header)
    except ValueError as e:
        return None, str(e)
    pixdim = header.get_zooms()[3]
    if not np.isfinite(tr) or tr <= 0:
        return None, f"pixdim[4] is {pixdim}"
    if implausible_tr(tr):
        unit = header.get_xyzt_units()[1]
        return None, f"pixdim[4] is {pixdim} labelled '{unit}', which is not a plausible TR in seconds"
    return tr, ""


def read_nifti_run(path: str | os.PathLike) -> NiftiRun:
    """Open a 4-D NIfTI for replay without scaling or widening its data.

    Raises
    ------
    ValueError
        If the file is not a 4-D NIfTI, or is truncated or corrupt; the message names the file.
    """
    path = os.fspath(path)
    try:
        img = nib.load(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as NIfTI ({e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: is a {type(img).__name__}, not NIfTI; convert it to NIfTI first")
    if len(img.shape) != 4:
        raise ValueError(f"{path}: has shape {img.shape}; replay needs a 4-D run (x, y, z, time)")
    try:
        data = np.asanyarray(img.dataobj.get_unscaled())
    except _damaged_errors() as e:  # the header read, the data did not: cut short or altered
        raise _damaged(path, e) from None
    tr, note = tr_seconds(img.header)
    return NiftiRun(path=path, data=data, affine=np.asarray(img.affine, dtype=np.float64),
                    tr_s=tr, tr_note=note, header_bytes=img.header.binaryblock,
                    scl_slope=float(img.dataobj.slope), scl_inter=float(img.dataobj.inter))


def _header_from_bytes(blob: bytes):
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return cls.from_fileobj(io.BytesIO(blob), check=False)
        except Exception:
            continue
    return None


def run_export_args(run) -> tuple[bytes | None, tuple[float, float] | None]:
    """A recorded run's source NIfTI header and scaling, from its run start, for :func:`export_run_nifti`.

    Parameters
    ----------
    run : protocols.session.RunRecord

    Returns
    -------
    header_bytes, scaling
        ``scaling`` is None where the run start's ``scl_slope``/``scl_inter``
        are not finite numbers (logged).
    """
    meta = (run.start or {}).get("meta", {})
    scaling = (meta.get("scl_slope", 1.0), meta.get("scl_inter", 0.0))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scaling):
        log.warning("run %s: ignoring non-numeric scl_slope/scl_inter in the run start", run.run_id)
        scaling = None
    return meta.get("nifti_header"), scaling


def export_run_nifti(session_path: str | os.PathLike, run_id: str, out_path: str | os.PathLike,
                     header_bytes: bytes | None = None, scaling: tuple[float, float] | None = None) -> str:
    """Write a recorded run as a 4-D NIfTI whose data, dtype and affine are the received ones.

    Parameters
    ----------
    session_path : path-like
        Session record folder.
    run_id : str
    out_path : path-like
        ``.nii`` or ``.nii.gz``.
    header_bytes : bytes, optional
        The source NIfTI header sent in the run start; reused verbatim (but for
        shape, and for the TR if the run was sent with another) so units and
        codes survive. Otherwise a header is made from the affine and TR, with
        scanner-space codes.
    scaling : (slope, intercept), optional
        Written as scl_slope/scl_inter so scaled values match the source.

    Returns
    -------
    str
        The written path.
    """
    g, _, volumes = run_volumes(session_path, run_id)
    dtype = np.dtype(g["dtype"])
    shape = tuple(g["shape"]) + (g["n_volumes"],)
    hdr = _header_from_bytes(header_bytes) if header_bytes else None
    if hdr is not None and np.dtype(hdr.get_data_dtype()).newbyteorder("=") == dtype.newbyteorder("="):
        hdr = hdr.copy()  # the source's header, verbatim but for the shape
        hdr.set_data_shape(shape)
        # and the TR the run was sent with, in s: a header that said another (an overridden --tr) or gave
        # it in ms would contradict RepetitionTime in the BIDS sidecar
        space, t_unit = hdr.get_xyzt_units()
        zooms = hdr.get_zooms()
        if t_unit != "sec" or abs(float(zooms[3]) - float(g["tr_s"])) > 1e-6 * max(1.0, float(g["tr_s"])):
            hdr.set_xyzt_units(space if space != "unknown" else "mm", "sec")
            hdr.set_zooms(tuple(zooms[:3]) + (float(g["tr_s"]),))
    else:
        hdr = nib.Nifti1Header()
        hdr.set_data_dtype(dtype)
        hdr.set_data_shape(shape)
        hdr.set_xyzt_units("mm", "sec")
        hdr.set_sform(g["affine"], code=1)
        hdr.set_qform(g["affine"], code=1)
        hdr.set_zooms(tuple(float(v) for v in voxel_sizes(g["affine"])) + (float(g["tr_s"]),))
    if scaling is not None and tuple(scaling) != (1.0, 0.0):
        hdr.set_slope_inter(*scaling)
    if isinstance(hdr, nib.Nifti1Header) and hdr["magic"] != b"n+1":
        hdr["magic"] = b"n+1"  # a single .nii file
    hdr["vox_offset"] = 0  # recomputed by write_to for a single file
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    gz = out_path.endswith(".gz")
    tmp = out_path + ".part" + (".nii.gz" if gz else ".nii")
    # Streamed, one volume at a time: NIfTI stores x fastest and volumes one after the other, so the
    # file is the header then each volume in Fortran order; a whole-run array never exists here.
    with (gzip.open(tmp, "wb", compresslevel=1) if gz else open(tmp, "wb")) as f:
        hdr.write_to(f)
        f.write(b"\0" * (int(hdr["vox_offset"]) - f.tell()))
        out_dtype = dtype.newbyteorder(hdr.endianness)
        for vol in volumes:
            f.write(np.asarray(vol, dtype=out_dtype).tobytes(order="F"))
    os.replace(tmp, out_path)
    return out_path


def iter_volumes(img) -> Iterator[np.ndarray]:
    """The volumes of a 4-D image in acquisition order, each read exactly once.

    ``img.dataobj[..., t]`` re-opens a ``.nii.gz`` and decompresses it from the
    start on every call (quadratic in the run length: about 100 s for a
    410-volume run of the small grid). This reads the file sequentially
    instead, one volume in memory at a time, with nibabel's own scaling, so
    every volume equals ``np.asarray(img.dataobj[..., t])`` exactly.

    Parameters
    ----------
    img : nibabel image, its ``dataobj``, or an array, of shape (nx, ny, nz, n_volumes)
        Arrays (and proxies of other kinds) are sliced volume by volume.

    Yields
    ------
    ndarray of shape (nx, ny, nz)
        The stored dtype when the image is unscaled, else nibabel's scaled dtype.

    Raises
    ------
    ValueError
        If the file is truncated or corrupt; the message names the file and the volume.
    """
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.volumeutils import apply_read_scaling

    proxy = getattr(img, "dataobj", img)
    shape = tuple(proxy.shape)
    if (not isinstance(proxy, ArrayProxy) or proxy.order != "F" or len(shape) != 4
            or not isinstance(proxy.file_like, (str, os.PathLike))):
        where = getattr(proxy, "file_like", None)
        for t in range(shape[3]):
            try:
                vol = np.asarray(proxy[..., t])
            except _damaged_errors() as e:
                if not isinstance(where, (str, os.PathLike)):
                    raise
                raise _damaged(f"{os.fspath(where)}: volume {t}", e) from None
            yield vol
        return
    path = os.fspath(proxy.file_like)
    if path.endswith(".gz"):
        try:
            from isal.igzip import open as gz_open  # same bytes as gzip, about 2x faster
        except ImportError:  # pragma: no cover - isal is a dependency
            from gzip import open as gz_open
        opener = gz_open
    else:
        opener = open
    dtype = proxy.dtype
    n_bytes = int(np.prod(shape[:3])) * dtype.itemsize
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):  # as ArrayProxy._get_scaled does with dtype=None
        inter = inter.astype(slope.dtype)
    with opener(path, "rb") as f:
        for t in range(shape[3]):
            try:
                if t == 0:
                    f.seek(proxy.offset)
                buf = f.read(n_bytes)
            except _damaged_errors() as e:  # a gzip stream cut short or altered
                raise _damaged(f"{path}: volume {t}", e) from None
            if len(buf) != n_bytes:
                raise ValueError(f"{path}: volume {t} is truncated ({len(buf)} of {n_bytes} bytes); "
                                 "the file is incomplete, re-export or re-download it")
            raw = np.frombuffer(buf, dtype).reshape(shape[:3], order="F")
            yield apply_read_scaling(raw, slope, inter)
