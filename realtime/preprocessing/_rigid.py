"""Rigid-body geometry: 6 parameters <-> 4x4 matrices, and framewise displacement.

The convention (used by everything in :mod:`realtime.preprocessing`)
---------------------------------------------------------------------
``params = (tx, ty, tz, rx, ry, rz)``: translations in millimetres, rotations
in radians, all in the world (scanner) space of the run's NIfTI affine.

``rigid_matrix(params)`` is the 4x4 matrix ``M = T(t) @ Rx(rx) @ Ry(ry) @ Rz(rz)``
acting on world column vectors ``[x, y, z, 1]``: a point is first rotated about
the z axis, then y, then x, all about the world origin (0, 0, 0) mm, then
translated by ``t``. Each elementary rotation is right-handed
(counter-clockwise when the axis points at the viewer)::

    Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]
    Ry(b) = [[cos b, 0, sin b], [0, 1, 0], [-sin b, 0, cos b]]
    Rz(g) = [[cos g, -sin g, 0], [sin g, cos g, 0], [0, 0, 1]]

``M`` maps reference -> current: the tissue at world point ``x`` in the
reference volume is at ``M @ x`` in the current volume, i.e.
``current(M @ x) == reference(x)``. Positive ``tx`` means the head moved
towards +x. Reslicing the current volume onto the reference grid samples it at
``M @ x`` for every reference voxel centre ``x``.

The composition order is SPM's (``spm_matrix``: T*R1*R2*R3), but SPM's pitch
and yaw matrices are left-handed and SPM's realignment matrix maps the other
way; :func:`params_from_spm` and :func:`params_to_spm` convert exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "rigid_matrix",
    "params_from_matrix",
    "framewise_displacement",
    "params_from_spm",
    "params_to_spm",
]


def _as_params(params, name: str = "params") -> np.ndarray:
    p = np.asarray(params, dtype=np.float64)
    if p.shape[-1:] != (6,):
        raise ValueError(f"{name} must have shape (6,) or (n, 6) (tx, ty, tz in mm, rx, ry, rz in "
                         f"radians); got shape {p.shape}")
    return p


def _rotation(rx, ry, rz) -> np.ndarray:
    """``Rx @ Ry @ Rz`` for arrays of angles of shape (...,); returns (..., 3, 3)."""
    ca, sa = np.cos(rx), np.sin(rx)
    cb, sb = np.cos(ry), np.sin(ry)
    cg, sg = np.cos(rz), np.sin(rz)
    r = np.empty(np.shape(rx) + (3, 3))
    r[..., 0, 0] = cb * cg
    r[..., 0, 1] = -cb * sg
    r[..., 0, 2] = sb
    r[..., 1, 0] = ca * sg + sa * sb * cg
    r[..., 1, 1] = ca * cg - sa * sb * sg
    r[..., 1, 2] = -sa * cb
    r[..., 2, 0] = sa * sg - ca * sb * cg
    r[..., 2, 1] = sa * cg + ca * sb * sg
    r[..., 2, 2] = ca * cb
    return r


def rigid_matrix(params) -> np.ndarray:
    """The 4x4 world-space matrix of rigid parameters (see the module docstring).

    Parameters
    ----------
    params : array-like of shape (6,) or (n, 6)
        ``(tx, ty, tz)`` in mm and ``(rx, ry, rz)`` in radians.

    Returns
    -------
    M : ndarray of shape (4, 4) or (n, 4, 4), float64
        ``M = T(t) @ Rx(rx) @ Ry(ry) @ Rz(rz)``, mapping reference world mm to
        current world mm.
    """
    p = _as_params(params)
    m = np.zeros(p.shape[:-1] + (4, 4))
    m[..., :3, :3] = _rotation(p[..., 3], p[..., 4], p[..., 5])
    m[..., :3, 3] = p[..., :3]
    m[..., 3, 3] = 1.0
    return m


def params_from_matrix(matrix, *, atol: float = 1e-6) -> np.ndarray:
    """Inverse of :func:`rigid_matrix`.

    Parameters
    ----------
    matrix : array-like of shape (4, 4) or (n, 4, 4)
        A rigid matrix: orthonormal rotation block with determinant +1 and a
        bottom row of ``[0, 0, 0, 1]``, to within ``atol``.
    atol : float
        Tolerance of the rigidity check.

    Returns
    -------
    params : ndarray of shape (6,) or (n, 6), float64
        ``(tx, ty, tz)`` in mm and ``(rx, ry, rz)`` in radians, with
        ``|ry| <= pi/2`` and ``rx, rz`` in ``(-pi, pi]``. ``ry = +-pi/2`` is the
        gimbal-lock case (never reached by head motion), where ``rz`` is set to 0.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[-2:] != (4, 4):
        raise ValueError(f"matrix must have shape (4, 4) or (n, 4, 4); got {m.shape}")
    r = m[..., :3, :3]
    orth = np.abs(r @ np.swapaxes(r, -1, -2) - np.eye(3)).max(axis=(-1, -2))
    bottom = np.abs(m[..., 3, :] - [0.0, 0.0, 0.0, 1.0]).max(axis=-1)
    if np.any(orth > atol) or np.any(bottom > atol) or np.any(np.linalg.det(r) <= 0):
        raise ValueError("matrix is not a rigid-body transform (its 3x3 block must be a rotation "
                         "with determinant +1 and its last row [0, 0, 0, 1]); scaling or shear "
                         "cannot be expressed as 6 parameters")
    cos_b = np.hypot(r[..., 0, 0], r[..., 0, 1])
    ry = np.arctan2(r[..., 0, 2], cos_b)
    locked = cos_b < 1e-12
    rx = np.where(locked, np.arctan2(r[..., 2, 1], r[..., 1, 1]), np.arctan2(-r[..., 1, 2], r[..., 2, 2]))
    rz = np.where(locked, 0.0, np.arctan2(-r[..., 0, 1], r[..., 0, 0]))
    out = np.empty(m.shape[:-2] + (6,))
    out[..., :3] = m[..., :3, 3]
    out[..., 3], out[..., 4], out[..., 5] = rx, ry, rz
    return out


def framewise_displacement(params, *, radius_mm: float = 50.0) -> np.ndarray:
    """Framewise displacement of Power et al. (2012).

    ``FD[i] = sum(|d tx|, |d ty|, |d tz|) + radius_mm * sum(|d rx|, |d ry|, |d rz|)``
    with backward differences ``d p = p[i] - p[i-1]``: each rotation is turned
    into the arc length it sweeps on a sphere of ``radius_mm``.

    Parameters
    ----------
    params : array-like of shape (n_volumes, 6)
        Rigid parameters per volume, mm and radians, in volume order.
    radius_mm : float
        Sphere radius in mm (50 mm, the average distance from the cerebral
        cortex to the centre of the head, in Power et al.).

    Returns
    -------
    fd : ndarray of shape (n_volumes,), float64
        In mm; ``fd[0] = 0``.
    """
    p = _as_params(params)
    if p.ndim != 2:
        raise ValueError(f"params must have shape (n_volumes, 6); got {p.shape}")
    fd = np.zeros(p.shape[0])
    if p.shape[0] > 1:
        d = np.abs(np.diff(p, axis=0))
        fd[1:] = d[:, :3].sum(axis=1) + radius_mm * d[:, 3:].sum(axis=1)
    return fd


def _fd_step(prev: np.ndarray, cur: np.ndarray, radius_mm: float) -> float:
    """FD between two parameter vectors, summed in the same order as
    :func:`framewise_displacement`."""
    d = np.abs(cur - prev)
    return float(d[:3].sum() + radius_mm * d[3:].sum())


# SPM's spm_matrix(q) equals rigid_matrix(q * _SPM_SIGN): its pitch (R1) and
# yaw (R3) matrices are the transposes of right-handed rotations.
_SPM_SIGN = np.array([1.0, 1.0, 1.0, -1.0, 1.0, -1.0])


def params_from_spm(q) -> np.ndarray:
    """Our parameters from SPM realignment parameters (``rp_*.txt``, rtspm).

    SPM stores, for each realigned volume, ``Q = mat_new @ inv(mat_reference)``
    with ``q = spm_imatrix(Q)[:6]``; ``Q`` maps current world mm back to
    reference world mm, so it is the inverse of our matrix:
    ``rigid_matrix(params) == inv(spm_matrix(q))``. For small motion this is
    roughly ``(-tx, -ty, -tz, rx, -ry, rz)``, but use this exact conversion.

    Parameters
    ----------
    q : array-like of shape (6,) or (n, 6)
        SPM's (x, y, z translation in mm, pitch, roll, yaw in radians).

    Returns
    -------
    params : ndarray of shape (6,) or (n, 6), float64
    """
    q = _as_params(q, "q")
    return params_from_matrix(np.linalg.inv(rigid_matrix(q * _SPM_SIGN)))


def params_to_spm(params) -> np.ndarray:
    """Inverse of :func:`params_from_spm`: SPM's ``spm_imatrix(inv(rigid_matrix(params)))[:6]``.

    Parameters
    ----------
    params : array-like of shape (6,) or (n, 6)

    Returns
    -------
    q : ndarray of shape (6,) or (n, 6), float64
    """
    p = _as_params(params)
    return params_from_matrix(np.linalg.inv(rigid_matrix(p))) * _SPM_SIGN
