"""The scanner side's clock against the session's: the lower envelope of receive - send times."""

from __future__ import annotations

import numpy as np
import pytest

from realtime.clocks import SenderClock, describe_offset, sender_offset


def test_the_estimate_is_the_offset_plus_the_least_latency(rng):
    """Closed form: ``t_recv = t_sent + offset + latency`` with latency >= 0, so min(t_recv - t_sent) is the
    offset plus the smallest latency; queueing and resends (large latencies) never pull it below."""
    offset = -3.25  # the sender's clock is 3.25 s ahead
    t_sent = 1.8e9 + np.cumsum(rng.uniform(0.5, 2.0, 200))
    latency = rng.exponential(0.004, 200) + 0.0002
    latency[rng.choice(200, 10, replace=False)] += rng.uniform(0.5, 5.0, 10)  # resends after a timeout
    t_recv = t_sent + offset + latency
    est = sender_offset(t_sent, t_recv)
    assert est == pytest.approx(offset + latency.min(), abs=1e-6)
    clock = SenderClock()
    running = []
    for s, r in zip(t_sent, t_recv):
        clock.update(s, r)
        running.append(clock.offset_s)
    assert clock.n == 200 and clock.offset_s == pytest.approx(est, abs=1e-9)
    assert np.all(np.diff(running) <= 0)  # the running estimate only ever improves
    np.testing.assert_allclose(running, offset + np.minimum.accumulate(latency), atol=1e-6)
    assert clock.here(t_sent[5]) == pytest.approx(t_sent[5] + est)  # onto this clock


def test_unstamped_messages_give_no_sample():
    assert sender_offset([0.0, np.nan], [1.8e9, 1.8e9]) is None
    clock = SenderClock()
    clock.update(0.0, 1.8e9)  # a sender that stamps nothing
    assert clock.offset_s is None and clock.n == 0
    assert clock.here(1.7e9) == 1.7e9 and clock.here(0.0) == 0.0  # nothing to move it by; no stamp stays 0
    clock.update(1.8e9, 1.8e9 + 2.0)
    assert clock.here(0.0) == 0.0  # a missing acquisition time is not invented


def test_the_wording_says_which_way():
    assert describe_offset(-3.0) == "the scanner side's clock is 3.00 s ahead of this computer's"
    assert describe_offset(0.5, "its clock") == "its clock is 0.50 s behind this computer's"
