"""Model bundle v1: what offline training hands to the live session.

::

    BUNDLE/
      manifest.json   format, version, embedder identity, TR, delays, mask geometry,
                      preprocessing config, training metrics, sha256 of every file
      decoder.onnx    input "x" float32 (N, n_delays * n_voxels) -> output
                      "embedding" float32 (N, dim), rows L2-normalised
      mask.npy        bool (nx, ny, nz): the voxels the decoder reads, C order
      reference.npy   float32 (nx, ny, nz): motion-correction reference volume
      norm_mean.npy, norm_std.npy   float32 (n_voxels,): training statistics
                      (used when the preprocessing normalises with "bundle")

The manifest may also hold ``qc.tsnr``: the temporal SNR of the decoder's
voxels in the Training runs (``median``, at the runs' end; ``curve``, their
running figure per volume), which a live session compares its own with
(:func:`training_tsnr`).

Everything the runtime needs loads with numpy and onnxruntime alone. Any
file whose sha256 differs from the manifest, or a manifest that disagrees
with the arrays, is refused with an error naming the file.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ._manifest import check_listed_files, sha256_file
from ._manifest import read_manifest as _read_manifest
from .errors import ProtocolError

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "BundleError", "REQUIRED_FILES", "read_bundle_manifest",
           "training_tsnr", "training_tsnr_curve", "validate_bundle", "write_bundle_manifest"]

BUNDLE_FORMAT = "b2m-model-bundle"
BUNDLE_VERSION = 1
REQUIRED_FILES = ("decoder.onnx", "mask.npy", "reference.npy", "norm_mean.npy", "norm_std.npy")
_REQUIRED_KEYS = ("embedder", "tr_s", "delays", "mask", "preprocess", "input_dim", "files")


class BundleError(ProtocolError):
    """A model bundle breaks the contract."""


def read_bundle_manifest(bundle: str | os.PathLike) -> dict:
    """Load and check ``BUNDLE/manifest.json`` (format, version, required keys); errors name file and key."""
    return _read_manifest(bundle, error=BundleError, fmt=BUNDLE_FORMAT, version=BUNDLE_VERSION,
                          required=_REQUIRED_KEYS, what="bundle",
                          if_missing="is this a model bundle? Make one with `b2m train`",
                          if_newer="; retrain or upgrade")


def validate_bundle(bundle: str | os.PathLike, *, check_hashes: bool = True) -> dict:
    """Check a bundle folder; return its manifest with the arrays loaded under ``"arrays"``.

    Raises
    ------
    BundleError
        Naming the file: missing, tampered (sha256), or inconsistent shapes.
    """
    bundle = os.fspath(bundle)
    m = read_bundle_manifest(bundle)
    for name in REQUIRED_FILES:
        if name not in m["files"]:
            raise BundleError(os.path.join(bundle, "manifest.json"), f"files has no entry for {name}")
    check_listed_files(bundle, m["files"], error=BundleError, check_hashes=check_hashes,
                       if_modified="the bundle was modified after export; re-export it with `b2m train`")
    arrays = {}
    for name in ("mask.npy", "reference.npy", "norm_mean.npy", "norm_std.npy"):
        p = os.path.join(bundle, name)
        try:
            arrays[name[:-4]] = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(p, f"cannot be read as .npy ({e})") from None
    mask = arrays["mask"]
    geom = m["mask"]
    if mask.dtype != bool or list(mask.shape) != list(geom["shape"]):
        raise BundleError(os.path.join(bundle, "mask.npy"), f"expected bool of shape {geom['shape']}, "
                                                            f"got {mask.dtype} {mask.shape}")
    n_vox = int(mask.sum())
    if n_vox != geom["n_voxels"]:
        raise BundleError(os.path.join(bundle, "mask.npy"), f"has {n_vox} voxels; manifest says {geom['n_voxels']}")
    if arrays["reference"].shape != mask.shape:
        raise BundleError(os.path.join(bundle, "reference.npy"), f"shape {arrays['reference'].shape} differs "
                                                                 f"from the mask's {mask.shape}")
    for k in ("norm_mean", "norm_std"):
        if arrays[k].shape != (n_vox,):
            raise BundleError(os.path.join(bundle, f"{k}.npy"), f"expected shape ({n_vox},), got {arrays[k].shape}")
    if m["input_dim"] != n_vox * len(m["delays"]):
        raise BundleError(os.path.join(bundle, "manifest.json"),
                          f"input_dim {m['input_dim']} != n_voxels {n_vox} x {len(m['delays'])} delays")
    affine = np.asarray(geom.get("affine"), dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise BundleError(os.path.join(bundle, "manifest.json"), "mask.affine must be a finite 4x4 matrix")
    training_tsnr(m, where=os.path.join(bundle, "manifest.json"))
    m = dict(m)
    m["arrays"] = arrays
    return m


def training_tsnr(manifest: dict, n_volumes: int | None = None, where: str = "manifest.json") -> float | None:
    """The Training runs' tSNR of the decoder's voxels (``qc.tsnr``), or None for a bundle made before it was
    kept (or by training that had none to give).

    Parameters
    ----------
    manifest : dict
    n_volumes : int, optional
        Volumes of a run so far: the Training runs' running figure after as many (``qc.tsnr.curve``; the last
        one past its end), which is what a live run's figure is compared with, as it reads high early in a run.
        Without it, or without a curve: their figure at the runs' end (``qc.tsnr.median``).

    Raises
    ------
    BundleError
        If the ``qc.tsnr`` block is there but malformed, naming the key.
    """
    qc = manifest.get("qc")
    if qc is None:
        return None
    fix = "; retrain with `b2m train`, or delete the qc block"
    if not isinstance(qc, dict) or not isinstance(qc.get("tsnr", {}), dict):
        raise BundleError(where, "qc must be an object with a tsnr object (the Training runs' tSNR)" + fix)
    t = qc.get("tsnr") or {}

    def positive(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < float("inf")

    v = t.get("median")
    if v is not None and not positive(v):
        raise BundleError(where, f"qc.tsnr.median must be a positive number (the Training runs' tSNR), got {v!r}"
                          + fix)
    curve = t.get("curve")
    if curve is not None and not (isinstance(curve, list) and all(c is None or positive(c) for c in curve)):
        raise BundleError(where, "qc.tsnr.curve must be a list of positive numbers or nulls (the Training runs' "
                                 "running tSNR per volume)" + fix)
    if n_volumes is not None and curve:
        c = curve[min(max(int(n_volumes), 1), len(curve)) - 1]
        if c is not None:
            return float(c)
    return None if v is None else float(v)


def training_tsnr_curve(manifest: dict) -> list | None:
    """The Training runs' running tSNR per volume (``qc.tsnr.curve``: entry n - 1 after n volumes, None before
    the figure exists), checked as :func:`training_tsnr` checks it; None for a bundle without it."""
    training_tsnr(manifest)  # refuses a malformed block
    curve = ((manifest.get("qc") or {}).get("tsnr") or {}).get("curve")
    return [None if c is None else float(c) for c in curve] if curve else None


def write_bundle_manifest(bundle: str | os.PathLike, manifest: dict) -> str:
    """Hash every listed file and write manifest.json atomically."""
    bundle = os.fspath(bundle)
    m = dict(manifest)
    m["format"], m["version"] = BUNDLE_FORMAT, BUNDLE_VERSION
    m["files"] = {name: sha256_file(os.path.join(bundle, name)) for name in m.get("files", REQUIRED_FILES)}
    path = os.path.join(bundle, "manifest.json")
    with open(path + ".tmp", "w") as f:
        json.dump(m, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path
