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

Another session (a model bundle's reference, another day)
    the volumes may lie on another grid (``grid``: another field of view,
    voxel size or tilt): each is smoothed on its own grid and sampled at
    the transformed reference points, and resliced from it onto the
    reference grid in one interpolation. The run's first volume may lie far
    from the reference, so :meth:`MotionCorrector.align` searches for it
    first (``align_first``).

Parameters follow the convention in :mod:`realtime.preprocessing._rigid`:
``(tx, ty, tz)`` mm and ``(rx, ry, rz)`` radians in world space,
``M = T @ Rx @ Ry @ Rz`` about the world origin, mapping reference -> current.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from nibabel.affines import voxel_sizes

from ._rigid import _fd_step, params_from_matrix, rigid_matrix
from ._sampling import BinomialSmoother, TrilinearSampler, binomial_passes

__all__ = [
    "MotionConfig",
    "MotionReference",
    "MotionResult",
    "MotionCorrector",
    "Alignment",
    "ALIGN_MATCH",
    "describe_alignment",
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


def _check_volume(volume, shape, what="volume", of="the motion reference") -> np.ndarray:
    v = np.asarray(volume)
    if v.shape != tuple(shape):
        raise ValueError(f"{what} has shape {v.shape}, but {of} has shape {tuple(shape)}; "
                         "every volume of a run must be on one grid")
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
    """Trilinear sampling of raw volumes at fixed reference-grid voxels.

    ``grid``: ``(shape, affine)`` of the volumes sampled, when it is not the reference's.
    """

    def __init__(self, shape, affine, mask, grid=None):
        self.shape = tuple(shape)
        self.affine = affine
        src_shape, src_affine = grid if grid is not None else (shape, affine)
        self.inv_src_affine = np.linalg.inv(src_affine)
        self.ijk = _voxel_list(mask, shape)
        self.n = len(self.ijk)
        self._pts = np.ascontiguousarray(self.ijk.T, dtype=np.float32)
        self._coords = np.empty((3, self.n), np.float32)
        self._sampler = TrilinearSampler(tuple(src_shape), self.n, (0, 0, 0), np.array(src_shape) - 1)

    def coverage(self, matrix: np.ndarray) -> float:
        """The fraction of the voxels that ``matrix`` puts inside the sampled volumes' grid."""
        _transform(self.inv_src_affine @ matrix @ self.affine, self._pts, self._coords)
        hi = np.array(self._sampler.shape, np.float32)[:, None] - 1
        return float(np.mean(np.all((self._coords >= 0) & (self._coords <= hi), axis=0)))

    def __call__(self, flat32: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> int:
        v = self.inv_src_affine @ matrix @ self.affine
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
    grid : (shape, affine), optional
        The grid of the volumes to register, when it is not the reference's
        (another day's slice prescription: another field of view, voxel size
        or orientation). Parameters stay in world space; each volume is
        smoothed on its own grid and sampled at the transformed reference
        points.

    Attributes
    ----------
    n_points : int
        Number of sample points used for estimation.
    points_ijk : ndarray of shape (n_points, 3), int
        Their voxel indices (on the reference grid).

    Notes
    -----
    Not thread-safe: :meth:`estimate` reuses the work arrays. The result of
    :meth:`estimate` depends only on its arguments.
    """

    def __init__(self, reference, affine, *, config: MotionConfig | None = None, estimation_mask=None,
                 grid=None):
        self.config = cfg = config or MotionConfig()
        self.affine = _check_affine(affine)
        ref = np.asarray(reference)
        if ref.ndim != 3:
            raise ValueError(f"reference must be a 3-D volume; got shape {ref.shape}")
        ref = _check_volume(ref, ref.shape, "reference")
        self.shape = ref.shape
        self.inv_affine = np.linalg.inv(self.affine)
        self.voxel_mm = voxel_mm = voxel_sizes(self.affine)
        vol_smoothing = None
        if grid is not None:  # the volumes are smoothed on their grid; the reference to the same width in mm
            vol_mm = voxel_sizes(np.asarray(grid[1], float))
            vol_smoothing = binomial_passes(cfg.fwhm_mm, vol_mm)
            sigma_mm = float(np.mean(np.sqrt(np.asarray(vol_smoothing) / 4.0) * vol_mm))
            ref_passes = tuple(2 * int(round(2.0 * (sigma_mm / v) ** 2)) for v in voxel_mm)
        smoother = BinomialSmoother(self.shape, binomial_passes(cfg.fwhm_mm, voxel_mm) if grid is None
                                    else ref_passes)
        ref_s = smoother.smooth(_to_float32(ref, np.empty(self.shape, np.float32)),
                                out=np.zeros(ref.size, np.float32))
        lo, hi = smoother.valid_box()
        if np.any(hi - lo < 4):
            raise ValueError(f"reference of shape {self.shape} is too small for smoothing at "
                             f"{cfg.fwhm_mm} mm FWHM; lower fwhm_mm")
        # the volumes' grid: the reference's, or another one
        if grid is None:
            self.vol_shape, self.vol_affine, self.smoother = self.shape, self.affine, smoother
        else:
            self.vol_shape, self.vol_affine = tuple(int(n) for n in grid[0]), _check_affine(grid[1])
            self.smoother = BinomialSmoother(self.vol_shape, vol_smoothing)
            ref_s *= self.smoother.gain / smoother.gain  # the smoothers' gains differ with their kernels
            vlo, vhi = self.smoother.valid_box()
            if np.any(vhi - vlo < 4):
                raise ValueError(f"volumes of shape {self.vol_shape} are too small for smoothing at "
                                 f"{cfg.fwhm_mm} mm FWHM; lower fwhm_mm")
        self.inv_vol_affine = np.linalg.inv(self.vol_affine)
        self._vol = np.empty(self.vol_shape, np.float32)
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

        if not self._use_points(ijk, jac, values):
            raise ValueError("the reference has too little structure to determine 6 rigid parameters "
                             "(ill-conditioned normal matrix); check the reference volume and mask")

    def _use_points(self, ijk, jac, values) -> bool:
        """Estimate from these sample points (False, and nothing changed, if they cannot fix 6 parameters)."""
        jac64 = np.asarray(jac, np.float64)
        hess = jac64 @ jac64.T
        if len(ijk) < 100 or np.linalg.cond(hess) > 1e12:
            return False
        self.points_ijk = ijk
        self.n_points = n = len(ijk)
        self._hess = hess
        self._jac = np.ascontiguousarray(jac, dtype=np.float32)
        self._ref_vals = np.asarray(values, np.float32)
        self._pts = np.ascontiguousarray(ijk.T, dtype=np.float32)
        self._coords = np.empty((3, n), np.float32)
        self._sampled = np.empty(n, np.float32)
        self._invalid = np.empty(n, bool)
        self._b = np.empty(len(self._jac), np.float32)
        self._sampler = TrilinearSampler(self.vol_shape, n, *self.smoother.valid_box())
        return True

    def keep_in_view(self, params, margin_vox: float = 2.0) -> int:
        """Drop the sample points that lie outside the volumes' field of view at ``params``.

        On another session's grid part of the reference may lie beyond the
        slices; those points would be tested and set aside at every
        iteration. Points within ``margin_vox`` of the edge are dropped too,
        so that the run's own small motion does not bring them in and out.
        Nothing is dropped if fewer than 100 points, or too little structure,
        would remain. Returns the number of points dropped.
        """
        _transform(self.inv_vol_affine @ rigid_matrix(params) @ self.affine, self._pts, self._coords)
        lo, hi = self.smoother.valid_box()
        inside = np.all((self._coords >= lo[:, None] + margin_vox) & (self._coords <= hi[:, None] - margin_vox),
                        axis=0)
        if inside.all():
            return 0
        n = self.n_points
        ok = self._use_points(self.points_ijk[inside], self._jac[:, inside], self._ref_vals[inside])
        return n - self.n_points if ok else 0

    def prepare(self, volume) -> np.ndarray:
        """Copy a volume to float32 (internal buffer) and smooth it.

        Parameters
        ----------
        volume : ndarray of shape ``self.vol_shape``, any real dtype (not modified)

        Returns
        -------
        raw : ndarray of shape ``self.vol_shape``, float32
            The float32 copy (internal buffer, overwritten by the next call).
        """
        v = _check_volume(volume, self.vol_shape, of="the motion reference" if self.vol_shape == self.shape
                          and self.vol_affine is self.affine else "the run's grid")
        raw = _to_float32(v, self._vol)
        self.smoother.smooth(raw, out=self._smoothed)
        return raw

    def match(self, params) -> float:
        """How well the last prepared volume matches the reference once moved by ``params``.

        The Pearson correlation of the smoothed reference and the smoothed
        volume at the sample points that fall inside the volume (NaN if
        fewer than a quarter do): about 0.9 or more for two EPI volumes of one
        head well aligned.
        """
        _transform(self.inv_vol_affine @ rigid_matrix(params) @ self.affine, self._pts, self._coords)
        n_invalid = self._sampler.sample(self._smoothed, self._coords, self._sampled)
        if n_invalid > (1.0 - _MIN_VALID_FRACTION) * self.n_points:
            return float("nan")
        ok = self._sampler.valid
        return float(np.corrcoef(self._sampled[ok], self._ref_vals[ok])[0, 1])

    def estimate(self, volume=None, init=None, max_iter: int | None = None) -> tuple[np.ndarray, int, bool]:
        """Estimate the rigid parameters of one volume.

        Parameters
        ----------
        volume : ndarray of shape ``self.vol_shape``, any real dtype, optional
            Not modified. None reuses the volume given to the last
            :meth:`prepare` call.
        init : array-like of shape (6,), optional
            Starting point (mm, radians); the previous volume's estimate in a
            run. Default: zeros.
        max_iter : int, optional
            Cap on iterations for this call (default ``config.max_iter``).

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
        for n_iter in range(1, (cfg.max_iter if max_iter is None else max_iter) + 1):
            _transform(self.inv_vol_affine @ m @ self.affine, self._pts, coords)
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
    grid : (shape, affine), optional
        The volumes' grid, when it is not the reference's (another session's
        slice prescription): volumes are registered and resliced from it onto
        the reference grid in one interpolation.
    align_first : bool
        The reference comes from another session, so the first volume may lie
        far from it (the head placed anew, another prescription): it is found
        by :meth:`align` when the grids differ, or when its estimate from zero
        motion does not converge or matches the reference poorly
        (:data:`ALIGN_MATCH`).

    Attributes
    ----------
    alignment : Alignment or None
        The first volume's search, if one was run.

    Notes
    -----
    Online and offline agree exactly when volumes are fed in the same order
    with the same reference: with a reference later than the first volume,
    the live caller holds the earlier volumes until the reference has arrived.
    """

    def __init__(self, reference, affine, *, config: MotionConfig | None = None,
                 estimation_mask=None, reslice_mask=None, grid=None, align_first: bool = False):
        self._ref_volume, self._grid = reference, grid
        self.reference = MotionReference(reference, affine, config=config, estimation_mask=estimation_mask,
                                         grid=grid)
        self.config = self.reference.config
        self._reslicer = (None if reslice_mask is None
                          else _Reslicer(self.reference.shape, self.reference.affine, reslice_mask, grid))
        self._prev: np.ndarray | None = None
        self._align_first = align_first
        self.alignment: Alignment | None = None

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
        if self._prev is None and self._align_first and self.alignment is None:
            params, n_iter, converged = self._first(volume)
        else:
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

    def _first(self, volume) -> tuple[np.ndarray, int, bool]:
        """The first volume against a reference from another session (``align_first``)."""
        ref = self.reference
        if self._grid is None:  # the same grid: the usual start from zero motion, if it lands well
            params, n_iter, converged = ref.estimate(None)
            if converged and ref.match(params) >= ALIGN_MATCH:
                return params, n_iter, converged
        a = self.align(volume)
        return a.params, a.n_iter, a.converged

    def align(self, volume) -> "Alignment":
        """Find a volume that may lie far from the reference, and start the run from it.

        Three starts are each refined at coarse smoothing (8 mm, points every
        6 mm): zero motion (the head where it was in the scanner), the shift
        between the two volumes' intensity centroids, and, when the grids
        differ, the rigid part of the map that keeps every voxel index in
        place (a prescription that followed the head, as auto-align does).
        The best match is then refined with this corrector's own settings.
        The next :meth:`update` starts from the result, with FD 0.
        """
        cfg = self.config
        coarse = MotionReference(self._ref_volume, self.reference.affine, grid=self._grid, config=replace(
            cfg, fwhm_mm=max(8.0, cfg.fwhm_mm), sep_mm=max(6.0, cfg.sep_mm), max_points=min(5000, cfg.max_points
                                                                                             or 5000)))
        coarse.prepare(volume)
        starts = {"zero": np.zeros(6), "centroids": _centroid_shift(self._ref_volume, self.reference.affine,
                                                                    volume, self.reference.vol_affine)}
        if self._grid is not None:
            starts["voxel grid"] = _voxel_identity(self.reference.affine, self.reference.vol_affine,
                                                   self._ref_volume)
        tried = {}
        for name, p0 in starts.items():
            p, _, _ = coarse.estimate(None, init=p0, max_iter=_ALIGN_ITER)
            tried[name] = (p, coarse.match(p))
        best = max(tried, key=lambda k: -np.inf if not np.isfinite(tried[k][1]) else tried[k][1])
        fine = self.reference
        fine.prepare(volume)
        params, n_iter, converged = fine.estimate(None, init=tried[best][0], max_iter=_ALIGN_ITER)
        similarity = fine.match(params)
        fine.keep_in_view(params)
        coverage = None if self._reslicer is None else self._reslicer.coverage(rigid_matrix(params))
        self.alignment = Alignment(params=params, similarity=similarity, start=best,
                                   n_iter=n_iter, converged=converged,
                                   starts={k: round(v[1], 4) for k, v in tried.items()}, coverage=coverage)
        return self.alignment


ALIGN_MATCH = 0.8  # a first volume matching the reference less than this (Pearson r, smoothed) is searched for
_ALIGN_ITER = 40


@dataclass(frozen=True)
class Alignment:
    """The first volume of a run found against a reference from another session.

    Attributes
    ----------
    params : ndarray of shape (6,)
        mm and radians, reference -> the volume, in world space.
    similarity : float
        :meth:`MotionReference.match` at ``params`` (Pearson r of the smoothed volumes).
    start : str
        The start the search kept: ``zero``, ``centroids`` or ``voxel grid``.
    n_iter : int
    converged : bool
    starts : dict of str -> float
        Each start's match after the coarse refinement.
    coverage : float or None
        The fraction of the resliced (model's) voxels inside the volumes'
        field of view; the others take the nearest edge voxel's values.
        None without a reslice mask.
    """

    params: np.ndarray
    similarity: float
    start: str
    n_iter: int
    converged: bool
    starts: dict
    coverage: float | None = None

    def describe(self) -> str:
        """``"11.8 mm, 4.2 deg from the reference (match r 0.96), covering 97% of the model's voxels"``."""
        return describe_alignment(self.params, self.similarity, self.coverage)


def describe_alignment(params, similarity: float, coverage: float | None = None) -> str:
    """How far an :class:`Alignment` found the head, how well it matched, and how much of the model it covers
    (also from the plain numbers a session's ``summary.json`` keeps)."""
    t = float(np.linalg.norm(np.asarray(params[:3], float)))
    deg = float(np.degrees(np.linalg.norm(np.asarray(params[3:], float))))
    cover = "" if coverage is None else f", covering {coverage:.0%} of the model's voxels"
    return f"{t:.1f} mm, {deg:.1f} deg from the reference (match r {similarity:.2f}){cover}"


def _centroid(volume, affine) -> np.ndarray:
    """World position (mm) of a volume's intensity centroid, over voxels above 1/8 of its mean (SPM's head)."""
    v = np.asarray(volume, np.float64)
    w = np.where(v > v.mean() / 8.0, v, 0.0)
    ijk = np.array([(w.sum(axis=tuple(b for b in range(3) if b != a)) * np.arange(v.shape[a])).sum()
                    for a in range(3)]) / w.sum()
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _centroid_shift(reference, ref_affine, volume, vol_affine) -> np.ndarray:
    params = np.zeros(6)
    params[:3] = _centroid(volume, vol_affine) - _centroid(reference, ref_affine)
    return params


def _voxel_identity(ref_affine, vol_affine, reference) -> np.ndarray:
    """The rigid map closest to ``vol_affine @ inv(ref_affine)`` (each voxel index kept), at the head's centroid."""
    m = vol_affine @ np.linalg.inv(ref_affine)
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:  # a flip between the grids is not a head's move: keep the nearest rotation
        u[:, -1] *= -1
        r = u @ vt
    c = _centroid(reference, ref_affine)
    rigid = np.eye(4)
    rigid[:3, :3] = r
    rigid[:3, 3] = m[:3, :3] @ c + m[:3, 3] - r @ c
    return params_from_matrix(rigid)


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
                grid=None, align_first: bool = False, progress=None) -> RunMotion:
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
    grid, align_first
        As for :class:`MotionCorrector`: the run's own ``(shape, affine)``
        when it is not the reference's (``affine`` is then the reference's),
        and whether its first volume may lie far from the reference.
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
                         reslice_mask=reslice_mask, grid=grid, align_first=align_first)
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

