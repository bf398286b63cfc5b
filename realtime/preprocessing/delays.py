"""The delay stack: the decoder's input is the last few TRs side by side.

The BOLD response to what was heard at time ``s`` shows in the volumes at
``s + d`` for ``d`` in ``delays`` (e.g. 2, 3 and 4 TRs = 3, 4.5 and 6 s at
TR 1.5 s). So when volume ``t`` arrives, the newest decodable moment is
``s = t - lag`` with ``lag = max(delays)``, and the decoder input is::

    [v(s + d) for d in delays]  =  [v(t - lag + d) for d in delays]

(for delays 2, 3, 4: volumes t-2, t-1, t). Training pairs that input with the
stimulus at ``t - lag``; the live session reports the decoded moment.

A ring buffer holds the most recent ``lag + 1`` preprocessed volumes
(preallocated, float32); each push writes the stacked vector into one
preallocated output array. The history itself is never copied.
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
        Hemodynamic delays in TRs, non-negative.

    Attributes
    ----------
    lag : int
        ``max(delays)``: the input after volume ``t`` decodes the moment ``t - lag``.
    out : ndarray of shape (len(delays) * n_voxels,), float32
        The stacked vector, overwritten by each :meth:`push`.
    """

    def __init__(self, n_voxels: int, delays=(2, 3, 4)):
        delays = tuple(int(d) for d in delays)
        if not delays or min(delays) < 0:
            raise ValueError(f"delays must be non-negative TR counts, got {delays}")
        self.delays = delays
        self.lag = max(delays)
        self.n_voxels = n_voxels
        self.depth = self.lag + 1
        self.ring = np.zeros((self.depth, n_voxels), dtype=np.float32)
        self.out = np.zeros(len(delays) * n_voxels, dtype=np.float32)
        self.t = 0

    @property
    def ready(self) -> bool:
        """True once the decoded moment ``t - lag`` lies inside the run."""
        return self.t > self.lag

    def push(self, volume: np.ndarray) -> np.ndarray | None:
        """Add volume ``t``; return the stacked input for moment ``t - lag``, or None until :attr:`ready`."""
        self.ring[self.t % self.depth] = volume
        self.t += 1
        if not self.ready:
            return None
        s = self.t - 1 - self.lag
        for j, d in enumerate(self.delays):
            self.out[j * self.n_voxels:(j + 1) * self.n_voxels] = self.ring[(s + d) % self.depth]
        return self.out


def stack_delays(data: np.ndarray, delays=(2, 3, 4)) -> np.ndarray:
    """Delay-stack a whole run with :class:`DelayStack` (same code as online).

    Parameters
    ----------
    data : ndarray of shape (n_volumes, n_voxels)

    Returns
    -------
    ndarray of shape (n_volumes, len(delays) * n_voxels), float32
        Row ``t`` is the input available after volume ``t``, decoding the
        moment ``t - max(delays)``; rows before that is inside the run are NaN.
    """
    n, v = data.shape
    ds = DelayStack(v, delays)
    out = np.full((n, len(ds.delays) * v), np.nan, dtype=np.float32)
    for t in range(n):
        x = ds.push(data[t])
        if x is not None:
            out[t] = x
    return out
