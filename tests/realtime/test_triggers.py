"""The scanner's trigger: pulses read from real pseudo-terminals and FIFOs, and a run's pulses found among a
session's (closed forms: the pulses and receive times are built from a known start, TR and delay)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from realtime.triggers import (TriggerInput, TriggerLog, describe_triggers, match_run, overdue, read_responses,
                               read_triggers)


def _run(t0, tr, n, delay, rng=None, jitter=0.0):
    """Pulses of volumes 0..n-1 from ``t0`` every ``tr`` and their receive times ``delay`` after each ends."""
    pulses = t0 + tr * np.arange(n)
    if rng is not None:
        pulses = pulses + rng.uniform(-jitter, jitter, n)
    return pulses, pulses + tr + delay


def test_a_runs_start_is_its_first_pulse_and_the_delay_what_came_after_acquisition(rng):
    tr, t0, n = 1.5, 1_800_000_000.0, 40
    pulses, received = _run(t0, tr, n, 0.0, rng, jitter=0.002)  # the box's own jitter: 2 ms
    delay = rng.uniform(0.3, 0.9, n)  # reconstruction and export, each volume its own
    m = match_run(pulses, np.arange(n), pulses + tr + delay, tr)
    assert m.start == pytest.approx(pulses[0]) and m.matched == n and m.missing == [] and m.note is None
    np.testing.assert_allclose(m.delay_s, delay, atol=1e-6)  # Unix times in float64: 0.2 us apart
    assert m.tr_s == pytest.approx((pulses[-1] - pulses[0]) / (n - 1))
    # the order volumes arrived in does not matter
    order = rng.permutation(n)
    m2 = match_run(pulses[::-1], order, (pulses + tr + delay)[order], tr)
    assert m2.start == m.start and np.allclose(m2.delay_s, m.delay_s)
    d = m.to_dict()
    assert d["delay_ms"]["p50"] == pytest.approx(1e3 * np.median(delay)) and d["n_missing"] == 0
    assert "40 pulses" in describe_triggers(d) and "ms after its acquisition ended" in describe_triggers(d)


def test_volumes_acquired_but_not_received_are_counted_once_overdue():
    """The export stalls after volume 9 while the scanner goes on pulsing: at ``now`` the volumes whose usual
    arrival (end of acquisition + median delay) is more than 2 TR past are overdue; the rest are not yet."""
    tr, t0, delay = 2.0, 1_800_000_000.0, 0.5
    pulses = t0 + tr * np.arange(30)
    m = match_run(pulses, np.arange(10), pulses[:10] + tr + delay, tr)
    assert m.start == pytest.approx(t0)
    now = t0 + 40.3  # volume k is usually here at t0 + 2k + 2.5, overdue 4 s later: k <= 16 by now
    assert overdue(pulses, m, 9, now, tr) == 17 - 10
    assert overdue(pulses[:10], m, 9, now, tr) == 0  # the scanner stopped after volume 9: nothing missing
    # while volumes keep coming, none is overdue
    assert overdue(pulses, m, 16, t0 + 2 * 16 + 2.5 + 0.1, tr) == 0


def test_the_run_is_found_among_the_sessions_trains():
    """Three runs' pulses 20 s apart: each run gets its own train, from its own receive times."""
    tr, n = 2.0, 15
    runs = [_run(1_800_000_000.0 + k * (n * tr + 20.0), tr, n, 0.4) for k in range(3)]
    every = np.concatenate([p for p, _ in runs])
    for p, rec in runs:
        m = match_run(every, np.arange(n), rec, tr)
        assert m.start == pytest.approx(p[0]) and m.matched == n
    # a run whose first volumes were not received (the session joined at volume 5) starts at its own pulse 0
    p, rec = runs[1]
    m = match_run(every, np.arange(5, n), rec[5:], tr)
    assert m.start == pytest.approx(p[0]) and m.matched == n - 5


def test_dummy_pulses_are_skipped_and_a_missing_pulse_is_named():
    tr, t0, n = 1.0, 1_800_000_000.0, 30
    pulses, received = _run(t0, tr, n + 3, 0.2)  # 3 dummy scans pulse before the first saved volume
    received = received[3:]
    m = match_run(pulses, np.arange(n), received, tr, dummies=3)
    assert m.start == pytest.approx(pulses[3]) and m.matched == n
    # without --trigger-dummies the pulses of the dummy scans are taken for the run's first: the train's length
    # against the run's says so
    bad = match_run(pulses, np.arange(n), received, tr, n_volumes=n)
    assert bad.start == pytest.approx(t0) and "give --trigger-dummies 3" in bad.note, bad.note
    assert match_run(pulses, np.arange(n), received, tr, dummies=3, n_volumes=n).note is None
    # one pulse lost on the way (volume 7): named, and the rest still matched
    lost = np.delete(pulses, 3 + 7)
    m = match_run(lost, np.arange(n), received, tr, dummies=3)
    assert m.missing == [7] and m.matched == n - 1 and m.start == pytest.approx(pulses[3])
    assert "1 volume(s) had no pulse (first: 7)" in m.note
    # the first pulse lost: volume 0's pulse is where it falls from volume 1's, one TR earlier
    m = match_run(np.delete(pulses, 3), np.arange(n), received, tr, dummies=3)
    assert m.missing == [0] and m.start == pytest.approx(pulses[3])


def test_pulses_that_are_not_the_runs_are_refused_with_the_reason():
    tr, t0, n = 2.0, 1_800_000_000.0, 20
    pulses, received = _run(t0, tr, n, 0.3)
    # another sequence's pulses (TR 1.5) around the time of a TR-2 run
    other = t0 + 1.5 * np.arange(27)
    m = match_run(other, np.arange(n), received, tr)
    assert m.start is None and "not this run's" in m.note, m.note
    assert match_run([], np.arange(n), received, tr).note == "no trigger pulses were read"
    late = match_run(pulses + 100.0, np.arange(n), received, tr)  # every pulse after the volumes came
    assert late.start is None and "before volume 0 was received" in late.note
    # a scanner TR a little off the header's (1.5 %): matched, and said
    drift = t0 + 2.03 * np.arange(n)
    assert np.abs(drift - (t0 + tr * np.arange(n)))[-1] > 0.5  # the header's TR alone would lose the last
    m = match_run(drift, np.arange(n), drift + 2.03 + 0.3, tr)
    assert m.start == pytest.approx(t0) and m.tr_s == pytest.approx(2.03) and "every 2.0300 s" in m.note


def test_pulses_from_a_pseudo_terminal_are_stamped_and_other_bytes_counted():
    """A real pty pair (the kernel's serial-line emulation): the box writes '5' per volume, a stray 'x' once."""
    box, port = os.openpty()
    trigger = TriggerInput(os.ttyname(port))
    try:
        os.write(box, b"5")
        (t,) = trigger.read(1.0)
        os.write(box, b"x5")
        assert len(trigger.read(1.0)) == 1 and trigger.other == 1 and trigger.first_other == b"x"
        assert trigger.read(0.05) == [] and not trigger.closed
        os.close(box)  # the box unplugged: the port reads its end
        for _ in range(3):
            trigger.read(0.05)
        assert trigger.closed
    finally:
        trigger.close()
        os.close(port)


def test_a_fifo_is_read_across_writers(tmp_path):
    path = tmp_path / "trigger"
    os.mkfifo(path)
    trigger = TriggerInput(str(path), key="t")
    try:
        got = []
        for _ in range(2):  # one writer, then another: the reader opens the FIFO again in between
            w = os.open(path, os.O_WRONLY)
            os.write(w, b"tt")
            os.close(w)
            for _ in range(5):
                got += trigger.read(0.05)
        assert len(got) == 4 and not trigger.closed
    finally:
        trigger.close()


@pytest.mark.parametrize("source, says", [("/nonexistent/ttyUSB9", "no such device"),
                                          (__file__, "not a serial port, terminal or FIFO")])
def test_a_bad_trigger_input_is_a_clear_error(source, says):
    with pytest.raises(ValueError, match=says):
        TriggerInput(source)
    with pytest.raises(ValueError, match="one character"):
        TriggerInput("stdin", key="55")


def test_the_log_keeps_every_pulse_on_disk_and_a_continued_session_adds_to_it(tmp_path):
    box, port = os.openpty()
    try:
        for k in (3, 2):  # two sittings of one session folder
            log = TriggerLog(TriggerInput(os.ttyname(port)), str(tmp_path)).start()
            os.write(box, b"5" * k)
            for _ in range(40):
                if len(log.times) == k:
                    break
                time.sleep(0.05)
            log.stop()
            assert len(log.times) == k
        on_disk = read_triggers(tmp_path)
        assert on_disk.size == 5 and np.all(np.diff(on_disk) >= 0)
        np.testing.assert_array_equal(log.pulses(), on_disk)  # this sitting's pulses are not counted twice
        with open(tmp_path / "triggers.tsv", "a") as f:  # a line that is not a time is skipped
            f.write("\x005\n")
        np.testing.assert_array_equal(read_triggers(tmp_path), on_disk)
    finally:
        os.close(box)
        os.close(port)
    assert read_triggers(tmp_path / "none") is None


def test_buttons_on_the_trigger_input_are_presses_not_pulses(tmp_path):
    """A trigger box with a button box on one serial line: '5' per volume, '1'..'4' per press."""
    box, port = os.openpty()
    try:
        log = TriggerLog(TriggerInput(os.ttyname(port), responses="1234"), str(tmp_path)).start()
        os.write(box, b"5")
        time.sleep(0.1)
        os.write(box, b"3")
        time.sleep(0.1)
        os.write(box, b"5x1")
        for _ in range(40):
            if len(log.times) == 2 and len(log.presses) == 2:
                break
            time.sleep(0.05)
        log.stop()
        assert len(log.times) == 2 and [b for _, b in log.presses] == ["3", "1"] and log.trigger.other == 1
        assert log.times[0] < log.presses[0][0] < log.times[1]  # each stamped when it came
        assert read_responses(tmp_path) == [(float(f"{t:.6f}"), b) for t, b in log.presses]
        assert log.summary()["presses"] == 2
    finally:
        os.close(box)
        os.close(port)
    assert read_responses(tmp_path / "none") == []
    for bad in ("55", "15", "11"):
        with pytest.raises(ValueError, match="--response-keys"):
            TriggerInput("stdin", responses=bad)


def test_a_trigger_box_unplugged_and_plugged_back_is_read_again(tmp_path, caplog):
    """The serial line goes (socat stopped: the port's other side closes, as a USB adapter pulled out) and
    comes back at the same path (socat started again): the log says both, and reads the pulses after."""
    from conftest import start_socat, stop_socat

    box, port = str(tmp_path / "box"), str(tmp_path / "port")
    line = start_socat(box, port)
    with caplog.at_level("WARNING", logger="b2m"):
        log = TriggerLog(TriggerInput(port), str(tmp_path)).start()
        try:
            def pulse(n: int) -> None:
                fd = os.open(box, os.O_WRONLY | os.O_NOCTTY)
                os.write(fd, b"5")
                os.close(fd)
                for _ in range(100):
                    if len(log.times) == n:
                        return
                    time.sleep(0.05)
                raise AssertionError(f"{len(log.times)} pulses read, {n} sent")

            pulse(1)
            stop_socat(line)
            for _ in range(100):
                if log.trigger.closed:
                    break
                time.sleep(0.05)
            assert log.trigger.closed
            line = start_socat(box, port)
            for _ in range(100):
                if not log.trigger.closed:
                    break
                time.sleep(0.05)
            assert not log.trigger.closed
            pulse(2)
        finally:
            log.stop()
            stop_socat(line)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "closed after 1 pulses" in said and f"the trigger input {port} is back after" in said
    assert read_triggers(tmp_path).size == 2


def test_a_scanners_events_in_time_order():
    """:func:`scanner_events`: with a trigger, volume k's pulse at k TR and the volume at (k + 1) TR + the
    reconstruction delay; without, the volume at k TR / speed + the delay."""
    from realtime.scanner.pacing import PULSE, VOLUME, scanner_events

    ev = scanner_events(3, 2.0, 1.0, trigger=True, recon_delay_s=0.5)
    assert ev == [(0.0, PULSE, 0), (2.0, PULSE, 1), (2.5, VOLUME, 0), (4.0, PULSE, 2), (4.5, VOLUME, 1),
                  (6.5, VOLUME, 2)]
    assert scanner_events(3, 2.0, 4.0, trigger=False) == [(0.0, VOLUME, 0), (0.5, VOLUME, 1), (1.0, VOLUME, 2)]
    assert [e[0] for e in scanner_events(2, 2.0, float("inf"), trigger=False, recon_delay_s=0.1)] == [0.1, 0.1]
