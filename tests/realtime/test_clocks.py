"""The scanner side's clock against the session's: the lower envelope of receive - send times."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from realtime.clocks import SenderClock, describe_host_clock, describe_offset, host_clock_sync, sender_offset


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex(2) is Linux's")
def test_the_host_clock_reading_agrees_with_glibcs_ntp_gettime():
    """adjtimex(2) read through our struct layout gives the clock state and error bounds that glibc's
    ntp_gettime(3), with its own struct (ntptimeval), gives for the same kernel clock."""
    import ctypes
    import ctypes.util

    class NtpTimeval(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long), ("maxerror", ctypes.c_long),
                    ("esterror", ctypes.c_long), ("tai", ctypes.c_long), ("reserved", ctypes.c_long * 4)]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ntv = NtpTimeval()
    state = libc.ntp_gettime(ctypes.byref(ntv))
    sync = host_clock_sync()
    states = ["TIME_OK", "TIME_INS", "TIME_DEL", "TIME_OOP", "TIME_WAIT", "TIME_ERROR"]
    assert sync["state"] == states[state]
    assert sync["synchronised"] == (state != 5)  # ntp_gettime reports TIME_ERROR while STA_UNSYNC is set
    # the maximum error grows by the tolerance (500 ppm) between the two reads while synchronised
    assert sync["max_error_s"] == pytest.approx(ntv.maxerror * 1e-6, abs=1e-3)
    assert sync["est_error_s"] == pytest.approx(ntv.esterror * 1e-6, abs=1e-3)


def test_the_host_clock_wording_warns_only_when_not_kept():
    ok, warn = describe_host_clock({"synchronised": True, "state": "TIME_OK", "est_error_s": 0.0005,
                                    "max_error_s": 0.012})
    assert (ok, warn) == ("synchronised (the kernel's estimated error 0.5 ms, at most 12 ms)", False)
    text, warn = describe_host_clock({"synchronised": False, "state": "TIME_ERROR", "est_error_s": 16.0,
                                      "max_error_s": 16.0})
    assert warn and text.startswith("NOT synchronised") and "TIME_ERROR" in text and "chrony" in text
    assert describe_host_clock(None) == ("not known on this system (no adjtimex)", False)
