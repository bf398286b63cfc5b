"""A sound device that stops: the outages' record and events against closed forms, and the keeper reopening a
real output whose audio process was killed (the shared JACK dummy server; the session-level test, a JACK server
killed and started again under a live session, is in ``test_session_operator``)."""

from __future__ import annotations

import os
import signal
import time
import types

import jack_fixture
import pytest

from realtime.session.audio_keeper import OUTAGES_FILE, AudioKeeper, outage_spans, read_outages
from realtime.session.bids import EVENT_COLUMNS, outage_events

jackd = jack_fixture.jackd  # the shared JACK dummy server (a fixture)


def test_outage_spans_pair_stops_with_reopenings_and_an_open_one_ends_where_told():
    rows = [{"time_unix": 10.0, "event": "stopped", "detail": "a"},
            {"time_unix": 14.5, "event": "reopened", "detail": "x"},
            {"time_unix": 30.0, "event": "stopped", "detail": "b"},
            {"time_unix": 31.0, "event": "stopped", "detail": "b again"}]  # a second word on the same outage
    assert outage_spans(rows) == [(10.0, 14.5, "a"), (30.0, None, "b")]
    assert outage_spans(rows, end_unix=40.0)[-1] == (30.0, 40.0, "b")
    assert outage_spans([]) == []


def test_outage_events_are_placed_on_the_runs_wall_clock_and_clipped_to_it():
    spans = [(95.0, 101.0, "x"), (104.0, 106.5, "y"), (118.0, None, "z"), (200.0, 210.0, "later")]
    rows = outage_events(spans, 100.0, 20.0)
    assert [(r["onset"], r["duration"]) for r in rows] == [(0.0, 1.0), (4.0, 2.5), (18.0, 2.0)]
    assert all(r["trial_type"] == "audio_outage" and set(r) == set(EVENT_COLUMNS) for r in rows)
    assert outage_events(spans, None, 20.0) == []  # a run not placed on the wall clock: nothing to say


def test_a_torn_row_is_skipped(tmp_path, caplog):
    (tmp_path / OUTAGES_FILE).write_text("time_unix\tevent\tdetail\n12.5\tstopped\tgone\n13.0\treop")
    assert read_outages(tmp_path) == [{"time_unix": 12.5, "event": "stopped", "detail": "gone"}]
    assert "line 3 is not a complete row" in caplog.text
    assert read_outages(tmp_path / "nowhere") == []


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_the_keeper_reopens_an_output_whose_audio_process_was_killed(jackd, tmp_path):
    from realtime.audio import open_output
    from realtime.session.alerts import AudioWatch

    out = open_output("system", isolate=True).start()
    given = []
    engine = types.SimpleNamespace(use_output=given.append)  # records the hand-over (the engine takes it at a TR)
    watch = AudioWatch(out)
    keeper = AudioKeeper(engine, watch, lambda: open_output("system", isolate=True), tmp_path, retry_s=0.5).start()
    try:
        time.sleep(0.5)
        assert watch.down() is None and not given
        killed = time.time()
        os.kill(out._proc.pid, signal.SIGKILL)
        end = time.monotonic() + 20
        while not given and time.monotonic() < end:
            time.sleep(0.05)
        (new,) = given
        assert new.active and new.callbacks > 0  # started, its stream running
        keeper.taken(new)  # what the engine does when it takes it
        assert watch.output is new and watch.down() is None
        (o,) = keeper.summary()
        assert o["why"] == "the audio process exited (code -9)" and o["start_unix"] <= killed + 0.1
        assert o["end_unix"] >= killed and o["attempts"] >= 1
        rows = read_outages(tmp_path)
        assert [r["event"] for r in rows] == ["stopped", "reopened"]
        assert rows[0]["detail"] == o["why"] and rows[1]["time_unix"] == pytest.approx(o["end_unix"])
    finally:
        keeper.stop()
        out.close()
        for o in given:
            o.close()

