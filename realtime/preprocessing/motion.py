"""Rigid-body motion correction, per TR live and per run offline.

The scheme is the one real-time fMRI has run for years (SPM's ``spm_realign``
as OpenNFT runs it, AFNI's ``3dvolreg``): Gauss-Newton least squares between a
smoothed current volume and a smoothed, subsampled reference.

Once per reference (:class:`MotionReference`)
    smooth the reference (binomial kernel close to ``fwhm_mm``), pick sample
    points on a grid every ``sep_mm`` inside an intensity (or given) mask, and
    precompute at those points the reference intensities, the Jacobian of the
    intensities with respect to the 6 rigid parameters plus an intensity
    scale, and the 7x7 normal matrix.
Per volume (:meth:`MotionReference.estimate`)
    smooth the volume the same way, then iterate at most ``max_iter`` times,
    starting from the previous volume's estimate: sample the smoothed volume
    at the transformed points (trilinear, float32), solve the normal equations
    for an increment, compose it (inverse-compositional update, so the
    Jacobian never changes), and stop once the increment moves a point on a
    ``fd_radius_mm`` sphere by less than ``tol_mm``.
Then (:func:`reslice`)
    sample the unsmoothed volume at the mask voxels the model needs,
    trilinearly, in float32.

:class:`MotionCorrector` chains these per TR; :func:`realign_run` calls the
same ``update`` on every volume of a run, so online and offline results are
identical.

Parameters follow the convention in :mod:`realtime.preprocessing._rigid`:
``(tx, ty, tz)`` mm and ``(rx, ry, rz)`` radians in world space,
``M = T @ Rx @ Ry @ Rz`` about the world origin, mapping reference -> current.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ._rigid import _fd_step, params_from_matrix, rigid_matrix
from ._sampling import BinomialSmoother, TrilinearSampler, binomial_passes

__all__ = [
    "MotionConfig",
    "MotionReference",
    "MotionResult",
    "MotionCorrector",
    "RunMotion",
    "realign_run",
    "reslice",
]

_MIN_VALID_FRACTION = 0.25  # fewer valid sample points than this: give up on the volume
_MAX_STEP_MM = 50.0  # an increment larger than this is divergence, not motion


@dataclass(frozen=True)
class MotionConfig:
    """Options of motion correction (defaults follow SPM/OpenNFT's realign).

    Attributes
    ----------
    fwhm_mm : float
        Smoothing applied to reference and volumes before estimation, mm.
        Implemented as a binomial kernel of the nearest even order per axis
        (5 mm at 2 mm voxels gives ``[1, 4, 6, 4, 1]``, 4.7 mm).
    sep_mm : float
        Spacing of the sample-point grid, mm (SPM's ``sep``).
    max_iter : int
        Cap on Gauss-Newton iterations per volume.
    tol_mm : float
        Stop when an increment displaces points by less than this, measured
        like FD (translations plus arcs on a ``fd_radius_mm`` sphere), mm.
    max_points : int or None
        Keep at most this many sample points, the most informative ones
        (largest leverage on the 6 parameters), as SPM's ``quality`` does.
        None keeps all. The default 20,000 halves the time of a 96x96x68
        volume for ~0.001 mm of RMS error (bench/preprocess.py).
    mask_fraction : float
        Without an estimation mask, sample points are where the smoothed
        reference exceeds this fraction of its global mean (the mean over
        voxels above 1/8 of the volume mean, as in SPM).
    scaling : bool
        Estimate a global intensity scale as a 7th (nuisance) parameter.
    fd_threshold_mm : float
        A volume with framewise displacement above this is flagged, mm.
    fd_radius_mm : float
        Sphere radius that turns rotations into displacements, mm.
    """

    fwhm_mm: float = 5.0
    sep_mm: float = 4.0
    max_iter: int = 8
    tol_mm: float = 1e-3
    max_points: int | None = 20000
    mask_fraction: float = 0.1
    scaling: bool = True
    fd_threshold_mm: float = 0.5
    fd_radius_mm: float = 50.0

    def __post_init__(self):
        def positive(name, value, *, allow_zero=False):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value >= 0 if allow_zero else value > 0)
            if not ok:
                bound = ">= 0" if allow_zero else "> 0"
                raise ValueError(f"MotionConfig.{name} must be a finite number {bound}; got {value!r}")

        positive("fwhm_mm", self.fwhm_mm, allow_zero=True)
        for name in ("sep_mm", "tol_mm", "fd_threshold_mm", "fd_radius_mm", "mask_fraction"):
            positive(name, getattr(self, name))
        if not isinstance(self.max_iter, int) or isinstance(self.max_iter, bool) or self.max_iter < 1:
            raise ValueError(f"MotionConfig.max_iter must be an int >= 1; got {self.max_iter!r}")
        if self.max_points is not None and (not isinstance(self.max_points, int) or self.max_points < 100):
            raise ValueError("MotionConfig.max_points must be None or an int >= 100; "
                             f"got {self.max_points!r}")
        if not isinstance(self.scaling, bool):
            raise ValueError(f"MotionConfig.scaling must be True or False; got {self.scaling!r}")

    def to_dict(self) -> dict:
        """Plain dict, for manifests and the effective-config file."""
        return asdict(self)


def _check_affine(affine) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 voxel->world (mm) matrix; got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise ValueError("affine is singular: its 3x3 block must map voxels to mm "
                         "(check the NIfTI sform/qform)")
    return a


def _check_volume(volume, shape, what="volume") -> np.ndarray:
    v = np.asarray(volume)
    if v.shape != tuple(shape):
        raise ValueError(f"{what} has shape {v.shape}, but the motion reference has shape {tuple(shape)}; "
                         "every volume of a run must be on the reference grid")
    if v.dtype.kind not in "iuf":
        raise ValueError(f"{what} must hold integers or floats; got dtype {v.dtype}")
    return v


def _to_float32(volume: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Copy ``volume`` into the float32 C-ordered ``buf``; non-finite values become 0."""
    np.copyto(buf, volume, casting="unsafe")
    if volume.dtype.kind == "f" and not math.isfinite(float(buf.sum())):
        np.nan_to_num(buf, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return buf


def _voxel_list(mask, shape) -> np.ndarray:
    """Voxel indices of shape (n, 3) from a boolean mask or an index array."""
    m = np.asarray(mask)
    if m.dtype == bool:
        if m.shape != tuple(shape):
            raise ValueError(f"mask has shape {m.shape}, but volumes have shape {tuple(shape)}; "
                             "the mask must be on the reference grid")
        ijk = np.argwhere(m)
    else:
        if m.ndim != 2 or m.shape[1] != 3 or m.dtype.kind not in "iu":
            raise ValueError("mask must be a boolean array of the volume's shape or an integer array "
                             f"of shape (n_voxels, 3); got dtype {m.dtype}, shape {m.shape}")
        ijk = m.astype(np.intp)
        if len(ijk) and (ijk.min() < 0 or np.any(ijk.max(axis=0) >= np.asarray(shape))):
            raise ValueError(f"mask indices fall outside the volume of shape {tuple(shape)}")
    if len(ijk) == 0:
        raise ValueError("mask selects no voxels")
    return ijk


def _transform(vox: np.ndarray, pts: np.ndarray, out: np.ndarray) -> None:
    """``out = vox[:3, :3] @ pts + vox[:3, 3]`` in float32, for pts of shape (3, n).

    einsum rather than matmul: a multi-threaded BLAS call on the hot path
    leaves its worker threads spinning, which costs more than it saves on 2
    busy cores.
    """
    np.einsum("ij,jn->in", vox[:3, :3].astype(np.float32), pts, out=out)
    out += vox[:3, 3:].astype(np.float32)


class _Reslicer:
    """Trilinear sampling of raw volumes at fixed reference-grid voxels."""

    def __init__(self, shape, affine, mask):
        self.shape = tuple(shape)
        self.affine = affine
        self.inv_affine = np.linalg.inv(affine)
        self.ijk = _voxel_list(mask, shape)
        self.n = len(self.ijk)
        self._pts = np.ascontiguousarray(self.ijk.T, dtype=np.float32)
        self._coords = np.empty((3, self.n), np.float32)
        self._sampler = TrilinearSampler(shape, self.n, (0, 0, 0), np.array(shape) - 1)

    def __call__(self, flat32: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> int:
        v = self.inv_affine @ matrix @ self.affine
        _transform(v, self._pts, self._coords)
        return self._sampler.sample(flat32, self._coords, out)


def reslice(volume, params, affine, mask, *, out=None) -> np.ndarray:
    """Resample a volume onto the reference grid at the mask voxels only.

    Each reference voxel centre ``x`` (world mm) takes the value of ``volume``
    at ``rigid_matrix(params) @ x``, by trilinear interpolation; points that
    map outside the volume take the nearest edge value.

    Parameters
    ----------
    volume : ndarray of shape (nx, ny, nz), any real dtype
        The moved volume, on the same voxel grid (``affine``) as the reference.
        Not modified.
    params : array-like of shape (6,)
        Rigid parameters of ``volume`` relative to the reference (mm, radians).
    affine : array-like of shape (4, 4)
        Voxel -> world (mm) matrix shared by volume and reference.
    mask : ndarray of bool, shape (nx, ny, nz), or of int, shape (n_voxels, 3)
        The reference-grid voxels to return, in ``np.argwhere`` (C) order
        for a boolean mask, in the given order for indices.
    out : ndarray of shape (n_voxels,), float32, optional

    Returns
    -------
    values : ndarray of shape (n_voxels,), float32
    """
    a = _check_affine(affine)
    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"volume must be 3-D; got shape {v.shape}")
    v = _check_volume(v, v.shape)
    r = _Reslicer(v.shape, a, mask)
    buf = _to_float32(v, np.empty(v.shape, np.float32))
    if out is None:
        out = np.empty(r.n, np.float32)
    r(buf.reshape(-1), rigid_matrix(params), out)
    return out


class MotionReference:
    """Everything precomputed once per reference volume, plus work arrays.

    Parameters
    ----------
    reference : ndarray of shape (nx, ny, nz), any real dtype
        The reference volume (not modified).
    affine : array-like of shape (4, 4)
        Voxel -> world (mm) matrix of the run.
    config : MotionConfig, optional
    estimation_mask : ndarray of bool, shape (nx, ny, nz), optional
        Where sample points may lie (e.g. a brain mask). Default: an
        intensity threshold on the smoothed reference (``config.mask_fraction``).

    Attributes
    ----------
    n_points : int
        Number of sample points used for estimation.
    points_ijk : ndarray of shape (n_points, 3), int
        Their voxel indices.

    Notes
    -----
    Not thread-safe: :meth:`estimate` reuses the work arrays. The result of
    :meth:`estimate` depends only on its arguments.
    """

    def __init__(self, reference, affine, *, config: MotionConfig | None = None, estimation_mask=None):
        self.config = cfg = config or MotionConfig()
        self.affine = _check_affine(affine)
        ref = np.asarray(reference)
        if ref.ndim != 3:
            raise ValueError(f"reference must be a 3-D volume; got shape {ref.shape}")
        ref = _check_volume(ref, ref.shape, "reference")
        self.shape = ref.shape
        self.inv_affine = np.linalg.inv(self.affine)
        voxel_mm = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self.voxel_mm = voxel_mm

        self._vol = np.empty(self.shape, np.float32)
        self.smoother = BinomialSmoother(self.shape, binomial_passes(cfg.fwhm_mm, voxel_mm))
        ref_s = self.smoother.smooth(_to_float32(ref, self._vol), out=np.zeros(self._vol.size, np.float32))
        lo, hi = self.smoother.valid_box()
        if np.any(hi - lo < 4):
            raise ValueError(f"reference of shape {self.shape} is too small for smoothing at "
                             f"{cfg.fwhm_mm} mm FWHM; lower fwhm_mm")
        self._smoothed = np.zeros(self._vol.size, np.float32)

        # sample points: a grid every sep_mm, inside the valid box with a
        # 1-voxel margin for the central differences, inside the mask
        step = np.maximum(1, np.round(cfg.sep_mm / voxel_mm)).astype(int)
        axes = [np.arange(lo[a] + 1, hi[a], step[a]) for a in range(3)]
        grid = np.zeros(self.shape, bool)
        grid[np.ix_(*axes)] = True
        s3 = ref_s.reshape(self.shape)
        if estimation_mask is not None:
            em = np.asarray(estimation_mask)
            if em.dtype != bool or em.shape != self.shape:
                raise ValueError(f"estimation_mask must be a boolean array of shape {self.shape}; "
                                 f"got dtype {em.dtype}, shape {em.shape}")
            grid &= em
        else:
            box = s3[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
            above = box[box > box.mean() / 8.0]
            level = float(above.mean()) if above.size else 0.0
            grid &= s3 > cfg.mask_fraction * level
        ijk = np.argwhere(grid)
        if len(ijk) < 100:
            raise ValueError(f"only {len(ijk)} sample points for motion estimation (need >= 100): the "
                             "reference is nearly empty inside its mask; check the reference volume, "
                             "the estimation mask or lower sep_mm")

        strides = np.array([self.shape[1] * self.shape[2], self.shape[2], 1])
        flat_idx = ijk @ strides
        grad_v = np.empty((3, len(ijk)))
        for a in range(3):
            grad_v[a] = 0.5 * (ref_s[flat_idx + strides[a]].astype(np.float64)
                               - ref_s[flat_idx - strides[a]])
        a3 = self.affine[:3, :3]
        grad_w = np.linalg.inv(a3).T @ grad_v  # world-space gradient, per mm
        world = a3 @ ijk.T + self.affine[:3, 3:]
        self.center = world.mean(axis=1)  # increments are parametrised about here
        d = world - self.center[:, None]
        cols = [grad_w, np.cross(d.T, grad_w.T).T]
        values = ref_s[flat_idx].astype(np.float64)
        if cfg.scaling:
            cols.append(values[None])
        jac = np.concatenate(cols, axis=0)

        if cfg.max_points is not None and len(ijk) > cfg.max_points:
            jm = jac[:6]
            lev = np.einsum("ij,ij->j", np.linalg.solve(jm @ jm.T, jm), jm)
            keep = np.sort(np.argpartition(lev, -cfg.max_points)[-cfg.max_points:])
            ijk, jac, values = ijk[keep], jac[:, keep], values[keep]

        hess = jac @ jac.T
        if np.linalg.cond(hess) > 1e12:
            raise ValueError("the reference has too little structure to determine 6 rigid parameters "
                             "(ill-conditioned normal matrix); check the reference volume and mask")
        self.points_ijk = ijk
        self.n_points = n = len(ijk)
        self._hess = hess
        self._jac = np.ascontiguousarray(jac, dtype=np.float32)
        self._ref_vals = values.astype(np.float32)
        self._pts = np.ascontiguousarray(ijk.T, dtype=np.float32)
        self._coords = np.empty((3, n), np.float32)
        self._sampled = np.empty(n, np.float32)
        self._invalid = np.empty(n, bool)
        self._b = np.empty(len(self._jac), np.float32)
        self._sampler = TrilinearSampler(self.shape, n, lo, hi)

    def prepare(self, volume) -> np.ndarray:
        """Copy a volume to float32 (internal buffer) and smooth it.

        Parameters
        ----------
        volume : ndarray of shape ``self.shape``, any real dtype (not modified)

        Returns
        -------
        raw : ndarray of shape ``self.shape``, float32
            The float32 copy (internal buffer, overwritten by the next call).
        """
        v = _check_volume(volume, self.shape)
        raw = _to_float32(v, self._vol)
        self.smoother.smooth(raw, out=self._smoothed)
        return raw

    def estimate(self, volume=None, init=None) -> tuple[np.ndarray, int, bool]:
        """Estimate the rigid parameters of one volume.

        Parameters
        ----------
        volume : ndarray of shape ``self.shape``, any real dtype, optional
            Not modified. None reuses the volume given to the last
            :meth:`prepare` call.
        init : array-like of shape (6,), optional
            Starting point (mm, radians); the previous volume's estimate in a
            run. Default: zeros.

        Returns
        -------
        params : ndarray of shape (6,), float64
            ``(tx, ty, tz)`` mm, ``(rx, ry, rz)`` radians; reference -> volume.
        n_iter : int
            Gauss-Newton iterations run (``<= config.max_iter``).
        converged : bool
            False if the cap was hit, too few sample points stayed inside the
            volume, or an increment diverged (the last good estimate is returned).
        """
        cfg = self.config
        if volume is not None:
            self.prepare(volume)
        p0 = np.zeros(6) if init is None else np.asarray(init, np.float64).reshape(6)
        m = rigid_matrix(p0)
        e, coords, jac = self._sampled, self._coords, self._jac
        n_iter, converged = 0, False
        for n_iter in range(1, cfg.max_iter + 1):
            _transform(self.inv_affine @ m @ self.affine, self._pts, coords)
            n_invalid = self._sampler.sample(self._smoothed, coords, e)
            if n_invalid > (1.0 - _MIN_VALID_FRACTION) * self.n_points:
                break
            e -= self._ref_vals
            hess = self._hess
            if n_invalid:
                np.logical_not(self._sampler.valid, out=self._invalid)
                np.copyto(e, 0.0, where=self._invalid)
                j_out = jac[:, self._invalid].astype(np.float64)
                hess = hess - np.einsum("ik,jk->ij", j_out, j_out)
            b = np.einsum("ij,j->i", jac, e, out=self._b).astype(np.float64)
            try:
                dp = np.linalg.solve(hess, b)
            except np.linalg.LinAlgError:
                break
            step = _fd_step(np.zeros(6), dp[:6], cfg.fd_radius_mm)
            if not math.isfinite(step) or step > _MAX_STEP_MM:
                break
            # increment about the sample points' centre: x -> c + R(dr) (x - c) + dt
            w = rigid_matrix(dp[:6])
            w[:3, 3] += self.center - w[:3, :3] @ self.center
            m = m @ np.linalg.inv(w)
            if step < cfg.tol_mm:
                converged = True
                break
        return params_from_matrix(m), n_iter, converged


@dataclass(frozen=True)
class MotionResult:
    """Motion correction of one volume.

    Attributes
    ----------
    params : ndarray of shape (6,), float64
        ``(tx, ty, tz)`` mm, ``(rx, ry, rz)`` radians; reference -> this volume.
    fd : float
        Framewise displacement from the previous volume, mm (0 for the first).
    flagged : bool
        ``fd > config.fd_threshold_mm``. The volume is kept; the flag travels with it.
    n_iter : int
        Gauss-Newton iterations run.
    converged : bool
        False if the iteration cap was hit or the estimate failed.
    values : ndarray of shape (n_voxels,), float32, or None
        The volume resliced onto the reference grid at the reslice-mask voxels;
        None without a reslice mask.
    """

    params: np.ndarray
    fd: float
    flagged: bool
    n_iter: int
    converged: bool
    values: np.ndarray | None


class MotionCorrector:
    """Per-run motion correction, one volume per :meth:`update`.

    Each volume is registered to the reference starting from the previous
    volume's estimate, its FD is computed against the previous volume, and it
    is resliced at the mask voxels.

    Parameters
    ----------
    reference : ndarray of shape (nx, ny, nz), any real dtype
        The reference volume, by convention an early volume of the run
        (see :func:`realign_run`'s ``reference_index``). Not modified.
    affine : array-like of shape (4, 4)
        Voxel -> world (mm) matrix of the run.
    config : MotionConfig, optional
    estimation_mask : ndarray of bool, shape (nx, ny, nz), optional
        Where motion is estimated from (see :class:`MotionReference`).
    reslice_mask : ndarray of bool, shape (nx, ny, nz), or of int, shape (n_voxels, 3), optional
        The voxels the model needs; without it ``MotionResult.values`` is None.

    Notes
    -----
    Online and offline agree exactly when volumes are fed in the same order
    with the same reference: with a reference later than the first volume,
    the live caller holds the earlier volumes until the reference has arrived.
    """

    def __init__(self, reference, affine, *, config: MotionConfig | None = None,
                 estimation_mask=None, reslice_mask=None):
        self.reference = MotionReference(reference, affine, config=config, estimation_mask=estimation_mask)
        self.config = self.reference.config
        self._reslicer = (None if reslice_mask is None
                          else _Reslicer(self.reference.shape, self.reference.affine, reslice_mask))
        self._prev: np.ndarray | None = None

    @property
    def n_voxels(self) -> int | None:
        """Number of resliced voxels per volume (None without a reslice mask)."""
        return None if self._reslicer is None else self._reslicer.n

    @property
    def previous_params(self) -> np.ndarray | None:
        """The last volume's parameters, shape (6,), or None before the first update."""
        return None if self._prev is None else self._prev.copy()

    def reset(self, previous_params=None) -> None:
        """Forget the previous volume, or set it.

        Parameters
        ----------
        previous_params : array-like of shape (6,), optional
            None: the next volume starts from zero motion and has FD 0.
            Otherwise the parameters of the volume before the next one (mm,
            radians), e.g. the last recorded estimate when a restarted session
            resumes a run; the next volume starts from them and its FD is
            measured from them, exactly as if the run had not been interrupted.
        """
        if previous_params is None:
            self._prev = None
            return
        p = np.array(previous_params, dtype=np.float64)
        if p.shape != (6,) or not np.all(np.isfinite(p)):
            raise ValueError("previous_params must be 6 finite numbers (mm, radians); "
                             f"got {previous_params!r}")
        self._prev = p

    def update(self, volume, *, out: np.ndarray | None = None) -> MotionResult:
        """Correct one volume.

        Parameters
        ----------
        volume : ndarray of shape (nx, ny, nz), any real dtype
            The next volume of the run, on the reference grid. Not modified.
        out : ndarray of shape (n_voxels,), float32, optional
            Where to write the resliced values (no allocation); default: a new array.

        Returns
        -------
        MotionResult
        """
        ref = self.reference
        raw = ref.prepare(volume)
        params, n_iter, converged = ref.estimate(None, init=self._prev)
        fd = 0.0 if self._prev is None else _fd_step(self._prev, params, self.config.fd_radius_mm)
        self._prev = params.copy()
        values = None
        if self._reslicer is not None:
            if out is None:
                out = np.empty(self._reslicer.n, np.float32)
            elif out.shape != (self._reslicer.n,) or out.dtype != np.float32:
                raise ValueError(f"out must be a float32 array of shape ({self._reslicer.n},); "
                                 f"got {out.dtype}, {out.shape}")
            self._reslicer(raw.reshape(-1), rigid_matrix(params), out)
            values = out
        return MotionResult(params=params, fd=fd, flagged=fd > self.config.fd_threshold_mm,
                            n_iter=n_iter, converged=converged, values=values)


@dataclass(frozen=True)
class RunMotion:
    """Motion correction of a whole run.

    Attributes
    ----------
    params : ndarray of shape (n_volumes, 6), float64
        mm and radians, reference -> each volume.
    fd : ndarray of shape (n_volumes,), float64
        Framewise displacement, mm; equal to ``framewise_displacement(params)``.
    flagged : ndarray of shape (n_volumes,), bool
    n_iter : ndarray of shape (n_volumes,), int
    converged : ndarray of shape (n_volumes,), bool
    values : ndarray of shape (n_volumes, n_voxels), float32, or None
    reference_index : int or None
        None when the reference volume was given rather than taken from the run.
    """

    params: np.ndarray
    fd: np.ndarray
    flagged: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    values: np.ndarray | None
    reference_index: int | None


def realign_run(data, affine, *, reference_index: int = 0, config: MotionConfig | None = None,
                estimation_mask=None, reslice_mask=None, reference: np.ndarray | None = None,
                progress=None) -> RunMotion:
    """Motion-correct a whole run with exactly the per-TR code.

    A :class:`MotionCorrector` is built on ``data[..., reference_index]`` (or
    on ``reference``) and fed every volume in acquisition order.

    Parameters
    ----------
    data : array-like of shape (nx, ny, nz, n_volumes), any real dtype
        The run (a nibabel ``dataobj`` works: it is read sequentially, one volume at a time).
        Not modified.
    affine : array-like of shape (4, 4)
    reference_index : int
        Which volume is the reference (an early one, after the dummy scans).
    config, estimation_mask, reslice_mask
        As for :class:`MotionCorrector`.
    reference : ndarray of shape (nx, ny, nz), optional
        A reference volume from elsewhere (e.g. a model bundle's, shared by
        every run of a subject); ``reference_index`` is then not used.
    progress : callable, optional
        ``progress(done_volumes, n_volumes)``.

    Returns
    -------
    RunMotion
    """
    shape = tuple(data.shape) if hasattr(data, "shape") else np.shape(data)
    if len(shape) != 4:
        raise ValueError(f"data must be 4-D (x, y, z, volume); got shape {shape}")
    n = shape[3]
    if not -n <= reference_index < n:
        raise ValueError(f"reference_index {reference_index} is outside the run's {n} volumes")
    reference_index %= n
    if reference is None:
        reference = np.asarray(data[..., reference_index])
    else:
        reference_index = None
    mc = MotionCorrector(reference, affine, config=config, estimation_mask=estimation_mask,
                         reslice_mask=reslice_mask)
    params = np.empty((n, 6))
    fd = np.empty(n)
    flagged = np.empty(n, bool)
    n_iter = np.empty(n, int)
    converged = np.empty(n, bool)
    values = None if mc.n_voxels is None else np.empty((n, mc.n_voxels), np.float32)
    from ..nifti_io import iter_volumes  # a .nii.gz proxy is read once, not once per volume

    for t, vol in enumerate(iter_volumes(data)):
        r = mc.update(vol, out=None if values is None else values[t])
        params[t], fd[t], flagged[t] = r.params, r.fd, r.flagged
        n_iter[t], converged[t] = r.n_iter, r.converged
        if progress is not None:
            progress(t + 1, n)
    return RunMotion(params=params, fd=fd, flagged=flagged, n_iter=n_iter, converged=converged,
                     values=values, reference_index=reference_index)

