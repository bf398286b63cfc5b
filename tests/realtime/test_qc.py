"""DVARS (``realtime.preprocessing.qc``): closed forms on synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest

from realtime.preprocessing.qc import Dvars, dvars_pct


def test_dvars_of_noise_is_sqrt2_times_the_noise_in_percent(rng):
    """Independent noise of s.d. sigma on a mean mu: E (a - b)^2 = 2 sigma^2, so DVARS = 100 sqrt(2) sigma / mu."""
    mu, sigma, n = 1000.0, 25.0, 200_000
    a, b = mu + sigma * rng.standard_normal(n), mu + sigma * rng.standard_normal(n)
    assert dvars_pct(a, b) == pytest.approx(100 * np.sqrt(2) * sigma / mu, rel=0.01)


def test_the_running_tracker_equals_the_pure_function_and_a_spike_stands_out(rng):
    """Volume by volume (float32, no allocation) as the pure function (float64); a spike in one volume raises
    its DVARS and the next one's, which a motion-free run shows nowhere else."""
    n_vox, n = 5000, 12
    base = rng.uniform(500, 1500, n_vox)
    run = [(base + 10 * rng.standard_normal(n_vox)).astype(np.float32) for _ in range(n)]
    run[6] = run[6] + np.float32(200.0)  # a spike: every voxel up by 200 (~20 %)
    tracker = Dvars(n_vox)
    got = [tracker.step(v) for v in run]
    want = [0.0] + [dvars_pct(run[t - 1], run[t]) for t in range(1, n)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    quiet = np.median(got[1:])
    assert got[6] > 10 * quiet and got[7] > 10 * quiet
    assert all(g < 2 * quiet for k, g in enumerate(got[1:], 1) if k not in (6, 7))


def test_a_volume_without_signal_gives_nan_not_an_error():
    assert np.isnan(dvars_pct(np.ones(10), np.zeros(10)))
    t = Dvars(3)
    t.step(np.ones(3, np.float32))
    assert np.isnan(t.step(np.zeros(3, np.float32)))
