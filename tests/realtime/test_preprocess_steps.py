"""Causal detrending, normalisation and the delay stack against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from realtime.preprocessing.delays import DelayStack, stack_delays
from realtime.preprocessing.detrend import (CausalDetrender, EmaDetrender, detrend_run, detrend_run_offline,
                                            drift_basis, ema_detrend_run, median_filter_detrend)
from realtime.preprocessing.normalize import RunningNormalizer, normalize_run, zscore_run


def test_drift_basis_is_legendre_with_constant():
    b = drift_basis(5, 2)
    t = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(b, np.column_stack([np.ones(5), t, 1.5 * t**2 - 0.5]), atol=1e-12)


def test_causal_detrender_matches_lstsq_on_data_so_far(rng):
    n, v = 40, 7
    y = rng.standard_normal((n, v)) + np.linspace(0, 5, n)[:, None]
    extra = rng.standard_normal((n, 2))
    det = CausalDetrender(v, n, order=2, n_extra=2, ridge=1e-12)
    x_all = np.hstack([drift_basis(n, 2), extra])
    for t in range(n):
        got = det.step(y[t], extra[t]).copy()
        if t >= 6:  # well-posed once there are more samples than regressors
            beta, *_ = np.linalg.lstsq(x_all[: t + 1], y[: t + 1], rcond=None)
            np.testing.assert_allclose(got, y[t] - x_all[t] @ beta, rtol=1e-5, atol=1e-5)


def test_detrend_run_equals_step_by_step_and_leaves_input(rng):
    y = rng.standard_normal((30, 5)).astype(np.float32)
    before = y.copy()
    batch = detrend_run(y, order=1)
    det = CausalDetrender(5, 30, order=1)
    online = np.stack([det.step(y[t]).copy() for t in range(30)])
    np.testing.assert_array_equal(batch, online)
    np.testing.assert_array_equal(y, before)


def test_causal_detrending_removes_a_linear_drift(rng):
    n = 200
    drift = np.linspace(0, 50, n)[:, None]
    noise = rng.standard_normal((n, 3))
    res = detrend_run(noise + drift, order=1)
    # after a short burn-in the residual is the noise, not the drift
    assert np.abs(res[20:].mean()) < 0.3 and res[20:].std() < 1.3
    off = detrend_run_offline(noise + drift, order=1)
    np.testing.assert_allclose(off, detrend_run_offline(noise, order=1), atol=1e-4)


def test_ema_detrender_is_the_running_mean_then_scipys_first_order_filter(rng):
    from scipy.signal import lfilter

    n, v, tau = 60, 4, 8.0
    y = rng.standard_normal((n, v)) + 3.0
    res = ema_detrend_run(y, tau)
    # volumes 0..tau-1: the baseline is the plain mean of the volumes so far
    k = int(tau)
    mean_so_far = np.cumsum(y[:k], 0) / np.arange(1, k + 1)[:, None]
    np.testing.assert_allclose(res[:k], y[:k] - mean_so_far, rtol=0, atol=1e-5)
    # then m_t = (1 - 1/tau) m_{t-1} + y_t / tau, started from the mean of the first tau volumes
    a = 1.0 / tau
    m, _ = lfilter([a], [1.0, -(1.0 - a)], y[k:], axis=0, zi=((1.0 - a) * mean_so_far[-1])[None, :])
    np.testing.assert_allclose(res[k:], y[k:] - m, rtol=0, atol=1e-5)


def test_psc_is_the_percent_change_of_scipys_ema_baseline_and_scale_free(rng):
    from scipy.signal import lfilter

    n, v, tau = 50, 5, 6.0
    y = 800.0 + 40.0 * np.cumsum(rng.standard_normal((n, v)), 0) / np.sqrt(n) + rng.standard_normal((n, v))
    y[:, 0] = 0.0  # a voxel with no signal at all (outside the head): 0, not a division by zero

    def psc(data):
        det, norm = EmaDetrender(v, tau), RunningNormalizer(v, "psc")
        return np.stack([norm.step(det.step(row), det.baseline).copy() for row in data])

    got = psc(y)
    # the reference baseline: running mean for tau volumes, then scipy's first-order filter
    k, a = int(tau), 1.0 / tau
    m = np.empty_like(y)
    m[:k] = np.cumsum(y[:k], 0) / np.arange(1, k + 1)[:, None]
    m[k:], _ = lfilter([a], [1.0, -(1.0 - a)], y[k:], axis=0, zi=((1.0 - a) * m[k - 1])[None, :])
    np.testing.assert_allclose(got[:, 1:], 100.0 * (y[:, 1:] - m[:, 1:]) / m[:, 1:], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got[:, 0], 0.0)
    # another session's intensity scale (coil, gain) gives the same values: what the bundle sees live
    np.testing.assert_allclose(psc(3.7 * y), got, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="baseline.*detrend='ema'"):
        RunningNormalizer(v, "psc").step(y[0])


def test_ema_detrender_lags_a_ramp_by_the_closed_form_and_removes_a_step(rng):
    n, tau, slope = 400, 20.0, 0.3
    ramp = slope * np.arange(n, dtype=np.float64)[:, None]
    # steady state of m_t = m_{t-1} + (y_t - m_{t-1}) / tau on y_t = s t: y_t - m_t = s (tau - 1)
    np.testing.assert_allclose(ema_detrend_run(ramp, tau)[-1], slope * (tau - 1), rtol=1e-4)
    step = np.where(np.arange(n) < 100, 5.0, 9.0)[:, None]
    res = ema_detrend_run(step, tau)
    np.testing.assert_allclose(res[:100], 0, atol=1e-5)
    np.testing.assert_allclose(res[100], 4.0 * (1 - 1 / tau), rtol=1e-5)  # the jump, less its own share
    assert abs(res[-1, 0]) < 4.0 * (1 - 1 / tau) ** 290  # and then it decays geometrically


def test_ema_detrender_online_equals_run_and_refuses_bad_input(rng):
    y = rng.standard_normal((30, 5)).astype(np.float32)
    det = EmaDetrender(5, 6.5)
    online = np.stack([det.step(y[t]).copy() for t in range(30)])
    np.testing.assert_array_equal(online, ema_detrend_run(y, 6.5))
    with pytest.raises(ValueError, match="at least one volume"):
        EmaDetrender(5, 0.5)
    with pytest.raises(ValueError, match="extra regressors"):
        EmaDetrender(5, 6.5).step(y[0], np.zeros(6))


def test_median_filter_detrend_removes_linear_drift():
    tr, n = 1.5, 400
    t = np.arange(n) * tr
    slow = (0.05 * t)[:, None]  # a linear drift: the centred median of ramp + symmetric wiggle is the ramp
    fast = np.sin(2 * np.pi * t / 6)[:, None]
    res = median_filter_detrend(slow + fast, tr, window_s=240)
    inner = slice(100, -100)  # away from the reflected edges
    assert np.abs(res[inner] - fast[inner]).max() < 0.2


def test_running_normalizer_is_expanding_zscore(rng):
    y = rng.standard_normal((25, 4)) * 3 + 7
    out = normalize_run(y, "running")
    for t in range(1, 25):
        ref = (y[t] - y[: t + 1].mean(0)) / y[: t + 1].std(0, ddof=1)
        np.testing.assert_allclose(out[t], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[0], 0)


def test_baseline_normalizer_freezes_after_window(rng):
    y = rng.standard_normal((30, 3))
    out = normalize_run(y, "baseline", n_baseline=10)
    mu, sd = y[:10].mean(0), y[:10].std(0, ddof=1)
    np.testing.assert_allclose(out[20], (y[20] - mu) / sd, rtol=1e-5)


def test_bundle_normalizer_uses_training_stats(rng):
    y = rng.standard_normal((5, 3))
    mean, std = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 0.5])
    np.testing.assert_allclose(normalize_run(y, "bundle", mean, std), (y - mean) / std, rtol=1e-6)
    with pytest.raises(ValueError, match="bundle"):
        RunningNormalizer(3, "bundle")


def test_zscore_run_closed_form(rng):
    y = rng.standard_normal((50, 2)) * 4 + 1
    z = zscore_run(y)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z.std(0, ddof=1), 1, atol=1e-5)


def test_delay_stack_concatenates_the_volumes_after_the_decoded_moment(rng):
    y = rng.standard_normal((10, 3)).astype(np.float32)
    ds = DelayStack(3, (1, 3))
    assert ds.lag == 3
    outs = [None if (o := ds.push(y[t])) is None else o.copy() for t in range(10)]
    assert all(o is None for o in outs[:3])
    for t in range(3, 10):
        s = t - 3  # the decoded moment: its response shows 1 and 3 TRs later
        np.testing.assert_array_equal(outs[t], np.concatenate([y[s + 1], y[s + 3]]))
    batch = stack_delays(y, (1, 3))
    assert np.isnan(batch[:3]).all()
    np.testing.assert_array_equal(batch[3:], np.stack(outs[3:]))


def test_delay_stack_reuses_its_buffers(rng):
    ds = DelayStack(4, (0, 2))
    first = None
    for t in range(6):
        out = ds.push(rng.standard_normal(4).astype(np.float32))
        if out is not None:
            first = out if first is None else first
            assert out is first  # the same preallocated array every TR
