"""The alerts a live session raises for the operator, in every result: the scanner side's clock, the trigger
input, and (in ``test_disk_full``) the disk. A real engine decodes the kit's run; the trigger input is a real
pseudo-terminal."""

from __future__ import annotations

import dataclasses
import os
import time

import jack_fixture
import pytest
from session_kit import kit_fixture, volumes

from music.library import Library
from realtime.decoder import Decoder
from realtime.session import SessionEngine
from realtime.session.alerts import standing_alerts
from realtime.triggers import TriggerInput, TriggerLog


jackd = jack_fixture.jackd  # the shared JACK dummy server (a fixture)


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


def _engine(kit, skew_s: float = 0.0, n: int = 12):
    """An engine fed ``n`` volumes sent by a clock ``skew_s`` ahead of this one (t_sent stamped on it)."""
    eng = SessionEngine(Decoder(kit.bundle), Library(kit.library), None)
    results = []
    for m in volumes(kit.nifti)[:n]:
        now = time.time()
        results += eng.on_volume(dataclasses.replace(m, t_sent=now + skew_s), now)
    return eng, results


def test_a_scanner_clock_far_off_is_an_alert_in_every_result(kit):
    eng, _ = _engine(kit, skew_s=3.0)
    eng.alerts = lambda: standing_alerts(eng)
    (res,) = eng.on_volume(dataclasses.replace(volumes(kit.nifti)[12], t_sent=time.time() + 3.0), time.time())
    assert len(res.alerts) == 1 and res.alerts[0].startswith("scanner clock: its clock is 3.0")
    assert "ahead of this computer's; synchronise the clocks" in res.alerts[0]
    synced, _ = _engine(kit)
    assert standing_alerts(synced) == []


def test_the_trigger_input_raises_alerts_when_it_needs_the_operator(kit, tmp_path):
    eng, results = _engine(kit)
    box, port = os.openpty()
    log = TriggerLog(TriggerInput(os.ttyname(port)), str(tmp_path)).start()
    try:
        assert standing_alerts(eng, triggers=log) == [
            "trigger: no pulse yet while volumes come: check the trigger box"]
        os.write(box, b"555")
        for _ in range(40):
            if len(log.times) == 3:
                break
            time.sleep(0.05)
        # three pulses just now, and volumes received before them: not this run's pulses
        (alert,) = standing_alerts(eng, triggers=log)
        assert alert.startswith(f"trigger: run {results[-1].run_id}: no train of pulses began before volume")
        os.close(box)  # the box unplugged
        box = None
        for _ in range(40):
            if log.trigger.closed:
                break
            time.sleep(0.05)
        assert standing_alerts(eng, triggers=log) == [
            "trigger: input closed after 3 pulses: check the trigger box's cable"]
    finally:
        log.stop()
        if box is not None:
            os.close(box)
        os.close(port)


# ---- the sound device: a stream that stops, a process that exits, music that should play and is silent ----


def _wait_alert(watch, engine, operator=None, timeout: float = 5.0) -> str | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alert = watch.alert(engine, operator)
        if alert:
            return alert
        time.sleep(0.1)
    return None


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_the_audio_watch_measures_the_output_and_says_when_music_that_should_play_is_silent(jackd):
    import math
    import types

    import numpy as np

    from realtime.audio import open_output
    from realtime.session.alerts import AudioWatch

    out = open_output("system", isolate=True).start()
    try:
        playing = types.SimpleNamespace(_audio_started=True)  # the engine's word that music should sound
        watch = AudioWatch(out, silent_s=0.5)
        t = np.arange(out.samplerate) / out.samplerate
        tone = np.repeat((0.25 * np.sin(2 * np.pi * 440 * t))[:, None], 2, axis=1).astype(np.float32)
        out.schedule_switch(out.frame + 512, tone)
        assert watch.alert(playing) is None  # music just started: no word on its level yet
        time.sleep(2.0)  # past the watch's grace (0.5 s + 1 s): the level is judged now, and it is audible
        assert watch.alert(playing) is None
        lv = out.level(0.5)  # a sine of amplitude 0.25: RMS 0.25 / sqrt(2), peak 0.25
        assert lv["rms_dbfs"] == pytest.approx(20 * math.log10(0.25 / math.sqrt(2)), abs=0.05)
        assert lv["peak_dbfs"] == pytest.approx(20 * math.log10(0.25), abs=0.01) and lv["seconds"] >= 0.5
        out.schedule_switch(out.frame + 512, np.zeros((4800, 2), np.float32))  # the clip is silence
        alert = _wait_alert(watch, playing)
        assert alert is not None and alert.startswith("audio: nothing audible sent out for"), alert
        muted = types.SimpleNamespace(muted=True)
        assert watch.alert(playing, muted) is None  # the operator muted it: silence is what should be
        assert watch.alert(types.SimpleNamespace(_audio_started=False)) is None  # nothing should play
        os.kill(out._proc.pid, 9)  # the audio process dies (a real SIGKILL)
        out._proc.wait(10)
        alert = _wait_alert(watch, playing)
        assert alert is not None and alert.startswith("audio: the audio process exited (code -9)"), alert
    finally:
        out.close()


def test_a_run_whose_volumes_stopped_coming_is_said_between_volumes_until_it_ends(kit):
    from realtime.session.alerts import STALL_MIN_S, stalled_run

    eng, results = _engine(kit, n=12)  # 12 of the run's 40 volumes, then nothing
    last = results[-1].timestamps["received"]
    tr = eng.runs["run-01"].tr_s
    quiet = max(4 * tr, STALL_MIN_S)
    assert stalled_run(eng, now=last + quiet - 0.1) is None  # a late volume is not yet news
    said = stalled_run(eng, now=last + quiet + 0.1)
    assert said.startswith(f"run run-01: no volume for {quiet + 0.1:.0f} s after 12 of 40 (one is due every "
                           f"{tr:g} s)"), said
    for m in volumes(kit.nifti)[12:]:  # the rest of the run comes: it ended, nothing stands
        eng.on_volume(m, time.time())
    assert stalled_run(eng, now=time.time() + 100) is None


def test_a_run_much_noisier_than_the_training_runs_is_an_alert(kit, tmp_path):
    """The run's tSNR so far (each result's ``tsnr``, from its 20th volume) against the bundle's Training runs'
    after as many volumes: under half is an alert naming both figures; a bundle without the figure (made before
    it was kept) never alerts. The real run (nitime's fmri1) is decoded; the Training figure is what is varied."""
    from session_kit import with_training_tsnr

    from realtime.preprocessing.qc import TSNR_MIN_VOLUMES
    from realtime.session.alerts import TSNR_ALERT_RATIO, low_tsnr, tsnr_status

    eng, results = _engine(kit, n=40)
    assert eng.training_tsnr is None and low_tsnr(eng) is None and standing_alerts(eng) == []
    assert all(r.tsnr is None for r in results[:TSNR_MIN_VOLUMES - 1])
    got = [r.tsnr for r in results[TSNR_MIN_VOLUMES - 1:]]
    assert all(t is not None and t > 0 for t in got)
    assert eng.stats()["tsnr"] == {"runs": {"run-01": got[-1]}, "training": None, "training_curve": None}

    assert all(r.tsnr_training is None for r in results)  # nothing to compare with

    def decoded(bundle):
        e = SessionEngine(Decoder(bundle), Library(kit.library), None)
        e.results = [r for m in volumes(kit.nifti) for r in e.on_volume(m, time.time())]
        assert e.last.tsnr == pytest.approx(got[-1])  # the same run, the same figure
        return e

    # the Training runs had 2.2 times this run's figure at their end (no curve): under half, alerted
    noisy = decoded(with_training_tsnr(kit.bundle, str(tmp_path), 2.2 * got[-1]))
    assert tsnr_status(noisy) == (got[-1], pytest.approx(2.2 * got[-1]))
    assert noisy.last.tsnr < TSNR_ALERT_RATIO * noisy.training_tsnr
    (alert,) = standing_alerts(noisy)
    assert alert.startswith(f"run run-01: tSNR of the decoder's voxels {got[-1]:.0f} after 40 volumes, under half "
                            f"the {2.2 * got[-1]:.0f} of its Training runs by then"), alert
    assert "check the head coil" in alert
    # 1.8 times: within the day-to-day spread the rule allows, no alert
    fine = decoded(with_training_tsnr(kit.bundle, str(tmp_path), 1.8 * got[-1]))
    assert low_tsnr(fine) is None and fine.stats()["tsnr"]["training"] == pytest.approx(1.8 * got[-1])

    # with the Training runs' running curve, the figure after as many volumes is the reference, not the end's:
    # their end at 1.8x (no alert above) but 2.2x after 40 volumes alerts; past the curve's end, its last value
    curve = [None] * (TSNR_MIN_VOLUMES - 1) + [3.0 * got[-1]] * (40 - TSNR_MIN_VOLUMES) + [2.2 * got[-1]]
    early = decoded(with_training_tsnr(kit.bundle, str(tmp_path), 1.8 * got[-1], curve))
    assert early.tsnr_reference(40) == pytest.approx(2.2 * got[-1])
    assert early.tsnr_reference(30) == pytest.approx(3.0 * got[-1])
    assert early.tsnr_reference(400) == pytest.approx(2.2 * got[-1])
    assert early.tsnr_reference(5) == pytest.approx(1.8 * got[-1])  # no running figure yet: the end's
    assert early.stats()["tsnr"]["training_curve"] == pytest.approx(curve)  # for the report's figure
    assert fine.stats()["tsnr"]["training_curve"] is None
    # every result carries what its figure is compared with (for the monitor's trace): the curve's entry after as
    # many volumes, or the end's figure without a curve; nothing while the run has no figure
    n0 = TSNR_MIN_VOLUMES - 1
    assert [r.tsnr_training for r in early.results[:n0]] == [None] * n0
    assert [r.tsnr_training for r in early.results[n0:]] == pytest.approx(curve[n0:])
    assert [r.tsnr_training for r in fine.results] == [None] * n0 + [pytest.approx(1.8 * got[-1])] * (40 - n0)
    assert low_tsnr(early).startswith(f"run run-01: tSNR of the decoder's voxels {got[-1]:.0f} after 40 volumes, "
                                      f"under half the {2.2 * got[-1]:.0f}")
