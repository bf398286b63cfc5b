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
(:func:`read_training_tsnr`), and ``provenance``: the code, software and
command that made the bundle (:mod:`protocols.provenance`).

Everything the runtime needs loads with numpy and onnxruntime alone. Any
file whose sha256 differs from the manifest, or a manifest that disagrees
with the arrays, is refused with an error naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ._manifest import check_listed_files, sha256_file
from ._manifest import read_manifest as _read_manifest
from .errors import ProtocolError
from .provenance import check_provenance

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "BundleError", "REQUIRED_FILES", "read_bundle_manifest",
           "TrainingTsnr", "read_training_tsnr", "training_tsnr", "validate_bundle", "write_bundle_manifest"]

BUNDLE_FORMAT = "b2m-model-bundle"
BUNDLE_VERSION = 1
REQUIRED_FILES = ("decoder.onnx", "mask.npy", "reference.npy", "norm_mean.npy", "norm_std.npy")
_REQUIRED_KEYS = ("embedder", "tr_s", "delays", "mask", "preprocess", "input_dim", "files")


class BundleError(ProtocolError):
    """A model bundle breaks the contract."""


def read_bundle_manifest(bundle: str | os.PathLike) -> dict:
    """Load and check ``BUNDLE/manifest.json`` (format, version, required keys, and ``provenance`` where
    present: :mod:`protocols.provenance`); errors name file and key."""
    m = _read_manifest(bundle, error=BundleError, fmt=BUNDLE_FORMAT, version=BUNDLE_VERSION,
                       required=_REQUIRED_KEYS, what="bundle",
                       if_missing="is this a model bundle? Make one with `b2m train`",
                       if_newer="; retrain or upgrade")
    check_provenance(m.get("provenance"), os.path.join(os.fspath(bundle), "manifest.json"), BundleError)
    return m


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
    read_training_tsnr(m, where=os.path.join(bundle, "manifest.json"))
    m = dict(m)
    m["arrays"] = arrays
    return m


@dataclass(frozen=True)
class TrainingTsnr:
    """The Training runs' tSNR of the decoder's voxels, read once from a manifest (:func:`read_training_tsnr`).

    Attributes
    ----------
    median : float or None
        Their figure at the runs' end (``qc.tsnr.median``).
    curve : tuple or None
        Their running figure per volume (``qc.tsnr.curve``): entry n - 1 after n volumes, None before the
        figure exists.
    """

    median: float | None
    curve: tuple | None

    def at(self, n_volumes: int | None = None) -> float | None:
        """The figure a run's after ``n_volumes`` volumes is compared with: the curve's after as many (its last
        past its end), as the running figure reads high early in a run; without ``n_volumes``, or where the
        curve has none, the end's ``median``."""
        if n_volumes is not None and self.curve:
            c = self.curve[min(max(int(n_volumes), 1), len(self.curve)) - 1]
            if c is not None:
                return c
        return self.median


def read_training_tsnr(manifest: dict, where: str = "manifest.json") -> TrainingTsnr | None:
    """The manifest's ``qc.tsnr`` block, checked; None for a bundle made before it was kept.

    Raises
    ------
    BundleError
        If the block is there but malformed, naming the key.
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
    return TrainingTsnr(None if v is None else float(v),
                        tuple(None if c is None else float(c) for c in curve) if curve else None)


def training_tsnr(manifest: dict, n_volumes: int | None = None, where: str = "manifest.json") -> float | None:
    """:meth:`TrainingTsnr.at` of the manifest's block (:func:`read_training_tsnr`), or None without one."""
    t = read_training_tsnr(manifest, where)
    return None if t is None else t.at(n_volumes)


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
