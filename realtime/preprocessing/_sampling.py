"""Hot-path kernels in plain numpy: separable smoothing and trilinear sampling.

Both work on C-ordered 3-D float32 volumes through their flat (1-D) view, so
every numpy call runs over long contiguous arrays (short inner loops over the
last axis would cost more in call overhead than in arithmetic), and both write
into work arrays allocated once.
"""

from __future__ import annotations

import math

import numpy as np


def binomial_passes(fwhm_mm: float, voxel_mm) -> tuple[int, int, int]:
    """Number of ``[1, 1]`` passes per axis that best approximates a Gaussian.

    ``n`` passes of ``[1, 1]`` give the binomial kernel of variance ``n / 4``
    voxel**2; ``n`` is kept even so the kernel is centred (``n = 4`` is
    ``[1, 4, 6, 4, 1]``, sigma = 1 voxel).

    Parameters
    ----------
    fwhm_mm : float
        Target Gaussian full width at half maximum, mm (0: no smoothing).
    voxel_mm : array-like of shape (3,)
        Voxel size per array axis, mm.

    Returns
    -------
    n : tuple of 3 even ints
    """
    out = []
    for v in np.asarray(voxel_mm, float):
        sigma = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / v if fwhm_mm > 0 else 0.0
        out.append(2 * int(round(2.0 * sigma * sigma)))
    return tuple(out)


class BinomialSmoother:
    """Separable binomial smoothing of a fixed-shape volume, 'valid' mode.

    Each axis gets ``passes[a]`` passes of the two-tap sum ``a[i] + a[i +- 1]``
    (alternating direction, so the result is centred): one addition per pass
    over the flat array, which is as cheap as smoothing gets in numpy.
    The result is *not* normalised: it is the smoothed volume times
    ``gain = 2 ** sum(passes)`` (a power of two, so no precision is lost).

    The output stays aligned with the input grid: ``out[i, j, k]`` is the
    smoothed value at voxel ``(i, j, k)`` and is correct wherever the voxel is at
    least ``radius[a] = passes[a] // 2`` voxels from both ends of every axis
    (the *valid box*). Elsewhere the output holds meaningless but finite
    values (they depend only on the current input: no state is carried
    between calls), which the samplers never read.

    Parameters
    ----------
    shape : tuple of 3 ints
    passes : tuple of 3 even ints
        From :func:`binomial_passes`.
    """

    def __init__(self, shape: tuple[int, int, int], passes):
        self.shape = tuple(int(n) for n in shape)
        self.passes = tuple(int(p) for p in passes)
        if any(p < 0 or p % 2 for p in self.passes):
            raise ValueError(f"passes must be even and >= 0; got {self.passes}")
        self.radius = np.array([p // 2 for p in self.passes])
        self.gain = float(2 ** sum(self.passes))
        n0, n1, n2 = self.shape
        strides = (n1 * n2, n2, 1)
        self._plan = [(strides[a], k % 2 == 0) for a in range(3) for k in range(self.passes[a])]
        size = n0 * n1 * n2
        self._a = np.zeros(size, np.float32)
        self._b = np.zeros(size, np.float32)
        self._out = np.zeros(size, np.float32)

    def valid_box(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)``, each of shape (3,): the valid voxel range per axis, inclusive."""
        return self.radius.copy(), np.array(self.shape) - 1 - self.radius

    def smooth(self, volume: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Smooth a volume.

        Parameters
        ----------
        volume : ndarray of shape ``shape``, float32, C-ordered
        out : ndarray of shape (prod(shape),), float32, optional
            Where to write.

        Returns
        -------
        flat : ndarray of shape (prod(shape),), float32
            ``gain`` times the smoothed volume; ``out`` if given, else an
            internal buffer that the next call overwrites.
        """
        dst = self._out if out is None else out
        src = volume.reshape(-1)
        if not self._plan:
            np.copyto(dst, src)
            return dst
        last = len(self._plan) - 1
        for j, (s, forward) in enumerate(self._plan):
            o = dst if j == last else (self._a if j % 2 == 0 else self._b)
            if forward:
                np.add(src[:-s], src[s:], out=o[:-s])
                o[-s:] = 0.0
            else:
                np.add(src[:-s], src[s:], out=o[s:])
                o[:s] = 0.0
            src = o
        return dst


class TrilinearSampler:
    """Trilinear interpolation of a flat C-ordered volume at ``n`` points.

    Work arrays for ``n`` points are allocated once; :meth:`sample` allocates
    nothing.

    Parameters
    ----------
    shape : tuple of 3 ints
        Shape of the volumes that will be sampled.
    n : int
        Number of points per call.
    lo, hi : array-like of shape (3,)
        Per axis, the inclusive voxel-coordinate range where the volume's values
        are meaningful (``0`` and ``shape - 1`` for a raw volume; the valid box
        for a smoothed one). Points outside are clamped to it (nearest-edge
        values) and reported as invalid.
    """

    def __init__(self, shape, n: int, lo, hi):
        self.shape = tuple(int(s) for s in shape)
        n0, n1, n2 = self.shape
        self.s0, self.s1 = n1 * n2, n2
        self.lo = np.asarray(lo, np.float32).reshape(3, 1)
        self.hi = np.asarray(hi, np.float32).reshape(3, 1)
        if np.any(self.hi - self.lo < 1):
            raise ValueError(f"volume of shape {self.shape} is too small to interpolate in "
                             f"(valid range {self.lo.ravel()}..{self.hi.ravel()})")
        self._lo1, self._hi1 = self.lo.ravel(), self.hi.ravel()
        self._hi_floor = [np.float32(h - 1) for h in self._hi1]
        self._cmin = np.empty(3, np.float32)
        self._cmax = np.empty(3, np.float32)
        self.n = int(n)
        self._c = np.empty((3, n), np.float32)
        self._f = np.empty((3, n), np.float32)
        self._i = np.empty((3, n), np.int32)
        self._base = np.empty(n, np.int32)
        self._tmp = np.empty(n, np.int32)
        self._v = np.empty((8, n), np.float32)
        self._bge = np.empty((3, n), bool)
        self._ble = np.empty((3, n), bool)
        self.valid = np.empty(n, bool)
        s0, s1 = self.s0, self.s1
        self._offsets = (0, 1, s1, s1 + 1, s0, s0 + 1, s0 + s1, s0 + s1 + 1)

    def sample(self, flat: np.ndarray, coords: np.ndarray, out: np.ndarray) -> int:
        """Interpolate ``flat`` at ``coords`` into ``out``.

        Parameters
        ----------
        flat : ndarray of shape (prod(shape),), float32
        coords : ndarray of shape (3, n), float32
            Voxel coordinates (axis 0, 1, 2). Used as scratch: clamped in place.
        out : ndarray of shape (n,), float32

        Returns
        -------
        n_invalid : int
            How many points fell outside ``[lo, hi]``; ``self.valid`` marks the others.
        """
        c, f, i, v = coords, self._f, self._i, self._v
        np.minimum.reduce(c, axis=1, out=self._cmin)
        np.maximum.reduce(c, axis=1, out=self._cmax)
        if np.all(self._cmin >= self._lo1) and np.all(self._cmax <= self._hi1):
            n_invalid = 0  # the common case: everything inside, no per-point test
            self.valid.fill(True)
        else:
            np.greater_equal(c, self.lo, out=self._bge)
            np.less_equal(c, self.hi, out=self._ble)
            self._bge &= self._ble
            np.logical_and.reduce(self._bge, axis=0, out=self.valid)
            n_invalid = self.n - int(np.count_nonzero(self.valid))
            if n_invalid:
                np.clip(c, self.lo, self.hi, out=c)
        np.floor(c, out=f)
        for a in range(3):  # per axis with a scalar: much faster than broadcasting a (3, 1)
            np.minimum(f[a], self._hi_floor[a], out=f[a])
        np.copyto(i, f, casting="unsafe")
        np.subtract(c, f, out=f)  # f now holds the fractions, in [0, 1]
        base, tmp = self._base, self._tmp
        np.multiply(i[0], self.s0, out=base)
        np.multiply(i[1], self.s1, out=tmp)
        base += tmp
        base += i[2]
        for k, off in enumerate(self._offsets):
            np.take(flat[off:], base, out=v[k], mode="clip")
        # along axis 2 (pairs 0-1, 2-3, 4-5, 6-7), then axis 1, then axis 0
        lo_, hi_ = v[0::2], v[1::2]
        hi_ -= lo_
        hi_ *= f[2]
        lo_ += hi_
        a, b = v[0::4], v[2::4]
        b -= a
        b *= f[1]
        a += b
        np.subtract(v[4], v[0], out=out)
        out *= f[0]
        out += v[0]
        return n_invalid
