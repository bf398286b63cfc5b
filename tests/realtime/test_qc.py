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


# ----------------------------------------------------------------------------------------------- tSNR


def _tsnr_reference(y: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Plain numpy, float64, two-pass: mean(y) / std(h) (ddof 0) per voxel, NaN where std(h) is 0."""
    y, h = np.asarray(y, np.float64), np.asarray(h, np.float64)
    sd = h.std(axis=0)
    out = np.full(sd.shape, np.nan)
    np.divide(y.mean(axis=0), sd, out=out, where=sd > 0)
    return out


def _cumulative_mean_highpass(y: np.ndarray) -> np.ndarray:
    """An independent causal high-pass: each volume minus the mean of the volumes so far (float32, as a detrender
    gives it)."""
    y64 = y.astype(np.float64)
    return (y64 - np.cumsum(y64, axis=0) / np.arange(1, len(y) + 1)[:, None]).astype(np.float32)


@pytest.mark.parametrize("highpass", ["cumulative_mean", "none"])
def test_running_tsnr_equals_numpy_after_every_volume(rng, highpass):
    """After each volume t, the running sums give numpy's two-pass mean(y[:t+1]) / std(h[:t+1]) to ~1e-10.
    Without a detrender (h = y, mean 1000, s.d. 20) the variance E[h^2] - E[h]^2 is a difference of two numbers
    ~1e6 for a result ~400: float64 sums keep it to far better than float32 precision."""
    from realtime.preprocessing.qc import RunningTsnr

    n, n_vox = 60, 300
    y = (1000.0 + 20.0 * rng.standard_normal((n, n_vox))).astype(np.float32)
    h = _cumulative_mean_highpass(y) if highpass == "cumulative_mean" else y
    tracker = RunningTsnr(n_vox)
    for t in range(n):
        tracker.step(y[t], h[t])
        got, want = tracker.voxels(), _tsnr_reference(y[:t + 1], h[:t + 1])
        assert got.dtype == np.float64 and got.shape == (n_vox,)
        if t == 0:  # one volume: no spread yet, the figure is undefined everywhere
            assert np.isnan(got).all() and np.isnan(want).all()
            continue
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
    # about 1000 / 20 = 50 over the whole run (s.d. of h a little under 20 for the cumulative mean's start)
    assert 40 < np.median(tracker.voxels()) < 60
    # a subset by index: the same figures
    pick = np.array([3, 0, 299])
    np.testing.assert_array_equal(tracker.voxels(pick), tracker.voxels()[pick])


def test_running_tsnr_median_waits_for_min_volumes_and_leaves_constant_voxels_out(rng):
    from realtime.preprocessing.qc import TSNR_MIN_VOLUMES, RunningTsnr

    n, n_vox = TSNR_MIN_VOLUMES + 10, 400
    y = (1000.0 + 25.0 * rng.standard_normal((n, n_vox))).astype(np.float32)
    y[:, :7] = np.float32(812.0)  # voxels without any fluctuation: s.d. 0, tSNR undefined
    h = _cumulative_mean_highpass(y)
    tracker = RunningTsnr(n_vox)
    assert tracker.min_volumes == TSNR_MIN_VOLUMES
    assert np.isnan(tracker.median()) and np.isnan(tracker.voxels()).all()  # nothing seen yet
    for t in range(n):
        tracker.step(y[t], h[t])
        ref = _tsnr_reference(y[:t + 1], h[:t + 1])
        if t + 1 < TSNR_MIN_VOLUMES:
            assert np.isnan(tracker.median()), t
            continue
        assert np.isnan(tracker.voxels()[:7]).all() and np.isnan(ref[:7]).all()
        assert tracker.median() == pytest.approx(np.median(ref[7:]), rel=1e-10)  # the 7 NaNs are left out
    assert np.isfinite(tracker.median())


def test_median_tsnr_takes_every_kth_voxel_in_mask_order_beyond_2000(rng):
    """Over TSNR_MEDIAN_VOXELS (2000) voxels the median is of every k-th, k = ceil(n / 2000), from the first;
    at 2000 or fewer, of all. The voxels are made so that a different subset gives a different median."""
    from realtime.preprocessing.qc import TSNR_MEDIAN_VOXELS, RunningTsnr, median_tsnr

    assert TSNR_MEDIAN_VOXELS == 2000
    v = rng.uniform(20.0, 60.0, 5000)
    v[1::3] += 100.0  # two thirds of the voxels are not in the strided subset; these are much higher
    v[::3][:40] = np.nan  # undefined voxels in the subset: left out
    v[2::3][:40] = np.inf
    want = np.median(v[::3][40:])  # k = ceil(5000 / 2000) = 3
    assert median_tsnr(v) == pytest.approx(want, rel=1e-12)
    assert abs(np.median(v[np.isfinite(v)]) - want) > 10  # the subset matters here
    # 2001 voxels: k = 2
    w = rng.uniform(20.0, 60.0, 2001)
    w[1::2] += 100.0
    assert median_tsnr(w) == pytest.approx(np.median(w[::2]), rel=1e-12)
    # 2000 or fewer: every voxel, NaNs left out
    u = rng.uniform(20.0, 60.0, 2000)
    u[1::2] += 100.0
    u[:5] = np.nan
    assert median_tsnr(u) == pytest.approx(np.median(u[5:]), rel=1e-12)
    assert median_tsnr(u[:1000]) == pytest.approx(np.median(u[5:1000]), rel=1e-12)
    assert np.isnan(median_tsnr(np.full(10, np.nan)))
    # the live tracker follows the same rule on a whole-brain mask
    n, n_vox = 30, 5000
    sd = np.full(n_vox, 20.0)
    sd[1::3] = sd[2::3] = 5.0  # the voxels left out have four times the tSNR
    y = (1000.0 + sd * rng.standard_normal((n, n_vox))).astype(np.float32)
    tracker = RunningTsnr(n_vox, min_volumes=n)
    for t in range(n):
        tracker.step(y[t], y[t])
    ref = _tsnr_reference(y, y)
    assert tracker.median() == pytest.approx(np.median(ref[::3]), rel=1e-9)
    assert tracker.median() < 0.5 * np.median(ref)


def test_tsnr_of_an_alternating_series_is_mean_over_amplitude():
    """Closed form: a high-passed series alternating +-s over an even number of volumes has s.d. s (ddof 0), so
    a voxel whose raw mean is m has tSNR m / s, whatever the raw series' own spread."""
    from realtime.preprocessing.qc import RunningTsnr, tsnr

    n = 40
    m, s = np.array([1000.0, 500.0, 1234.5, 80.0]), np.array([25.0, 10.0, 3.0, 0.5])
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    h = sign * s
    raw = m + 7.0 * h + np.linspace(-30.0, 30.0, n)[:, None]  # a spread and a drift of its own; mean m
    assert np.allclose(raw.mean(0), m, rtol=1e-14)
    np.testing.assert_allclose(tsnr(raw, h), m / s, rtol=1e-13)
    tracker = RunningTsnr(len(m))
    for t in range(n):
        tracker.step(raw[t], h[t])
    np.testing.assert_allclose(tracker.voxels(), m / s, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(n_volumes, n_voxels\)"):
        tsnr(raw, h[:-1])
