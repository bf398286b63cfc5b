"""The delay stack: the decoder's input is the last few TRs side by side.

A ring buffer holds the most recent ``max(delays) + 1`` preprocessed volumes
(preallocated, float32). After volume ``t`` is pushed, the stacked vector is
``[v(t - d) for d in delays]`` concatenated, written into one preallocated
output array; the history itself is never copied.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DelayStack", "stack_delays"]


class DelayStack:
    """Ring buffer of recent volumes and the delay-stacked decoder input.

    Parameters
    ----------
    n_voxels : int
    delays : sequence of int
        Delays in TRs (e.g. (2, 3, 4) = 3, 4.5 and 6 s at TR 1.5 s).

    Attributes
    ----------
    out : ndarray of shape (len(delays) * n_voxels,), float32
        The stacked vector, overwritten by each :meth:`push`.
    """

    def __init__(self, n_voxels: int, delays=(2, 3, 4)):
        delays = tuple(int(d) for d in delays)
        if not delays or min(delays) < 0:
            raise ValueError(f"delays must be non-negative TR counts, got {delays}")
        self.delays = delays
        self.n_voxels = n_voxels
        self.depth = max(delays) + 1
        self.ring = np.zeros((self.depth, n_voxels), dtype=np.float32)
        self.out = np.zeros(len(delays) * n_voxels, dtype=np.float32)
        self.t = 0

    @property
    def ready(self) -> bool:
        """True once every delay refers to a volume of this run."""
        return self.t > max(self.delays)

    def push(self, volume: np.ndarray) -> np.ndarray | None:
        """Add volume ``t``; return the stacked input, or None until :attr:`ready`."""
        self.ring[self.t % self.depth] = volume
        self.t += 1
        if not self.ready:
            return None
        now = self.t - 1
        for j, d in enumerate(self.delays):
            self.out[j * self.n_voxels:(j + 1) * self.n_voxels] = self.ring[(now - d) % self.depth]
        return self.out


def stack_delays(data: np.ndarray, delays=(2, 3, 4)) -> np.ndarray:
    """Delay-stack a whole run with :class:`DelayStack` (same code as online).

    Parameters
    ----------
    data : ndarray of shape (n_volumes, n_voxels)

    Returns
    -------
    ndarray of shape (n_volumes, len(delays) * n_voxels), float32
        Rows before the stack is ready are NaN (no decodable input yet).
    """
    n, v = data.shape
    ds = DelayStack(v, delays)
    out = np.full((n, len(ds.delays) * v), np.nan, dtype=np.float32)
    for t in range(n):
        x = ds.push(data[t])
        if x is not None:
            out[t] = x
    return out
