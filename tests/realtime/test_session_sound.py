"""The engine's sound half (``realtime.session.sound``): calls run on the engine's thread, and an output taken
over mid-run (a sound device reopened) plays on, in both modes. Real WAV sinks are the outputs: their frames are
the session clock, so what each one received is exact."""

from __future__ import annotations

import threading

import jack_fixture
import numpy as np
import pytest
import soundfile as sf
from session_kit import kit_fixture, make_atlas, volumes

from music.library import Library
from realtime.audio import WavSink
from realtime.decoder import Decoder
from realtime.session import SessionEngine
from realtime.session.engine import SessionOptions


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return make_atlas(str(tmp_path_factory.mktemp("atlas")), 10, seed=3)


def test_calls_run_on_the_engines_thread_at_its_next_volume(kit):
    eng = SessionEngine(Decoder(kit.bundle), Library(kit.library), None)
    vols = volumes(kit.nifti)
    ran_on = []
    ok = eng.call_soon(lambda: ran_on.append(threading.current_thread()) or 42)
    bad = eng.call_soon(lambda: 1 / 0)
    assert not ok.done()  # nothing runs until the engine's thread comes by
    waiter = threading.Thread(target=lambda: eng.on_volume(vols[0], 0.0))
    waiter.start()
    waiter.join()
    assert ok.result(0) == 42 and ran_on == [waiter]
    with pytest.raises(ZeroDivisionError):
        bad.result(0)
    late = eng.call_soon(lambda: "idle")
    eng.keep_playing()  # the receiver's idle hook serves them too
    assert late.result(0) == "idle"


@pytest.mark.parametrize("mode", ["retrieval", "generation"])
def test_an_output_taken_over_mid_run_plays_on_from_the_next_volume(kit, atlas, tmp_path, mode):
    lib = Library(atlas if mode == "generation" else kit.library)
    first, second = WavSink(tmp_path / "first.wav").start(), WavSink(tmp_path / "second.wav").start()
    eng = SessionEngine(Decoder(kit.bundle), lib, first, options=SessionOptions(mode=mode))
    vols = volumes(kit.nifti)
    taken = []
    eng.on_new_output = taken.append
    for m in vols[:12]:
        eng.on_volume(m, 0.0)
    at_s = 13 * vols[0].tr_s  # the session time of volume 12's decision, the first made on the second sink
    eng.use_output(second)
    assert eng.output is first and not taken  # taken at the next volume, on the engine's thread
    for m in vols[12:24]:
        eng.on_volume(m, 0.0)
    assert eng.output is second and taken == [second]
    eng.finish()
    second.close()
    got, sr = sf.read(tmp_path / "second.wav", dtype="float32")
    at = int(round(at_s * sr))
    assert np.all(got[:at] == 0.0)  # the new device plays nothing before that decision
    assert np.abs(got[at:at + 2 * sr]).max() > 0.01  # and music from it on (its fade-in)
    bound = eng.pieces if mode == "generation" else eng.clips
    assert bound is not None and eng.counts["errors"] == 0


def test_a_sound_check_the_engine_never_got_to_is_cancelled_not_played_later(kit, tmp_path):
    from protocols.operator import OperatorCommand
    from realtime.session.operator import OperatorControl

    sink = WavSink(tmp_path / "out.wav").start()
    eng = SessionEngine(Decoder(kit.bundle), Library(kit.library), sink)
    op = OperatorControl(eng, tmp_path)
    op.wait_s = 0.2  # no volume comes and no receiver idles: the engine's thread never comes by
    with pytest.raises(ValueError, match="did not get to the sound check within 0.2 s"):
        op.apply(OperatorCommand("soundcheck", 1))
    assert len(eng._calls) == 1  # still queued, but cancelled:
    eng.keep_playing()  # the engine's thread comes by later
    assert not eng._calls and not eng.soundchecking and op.history == []
    sink.close()


jackd = jack_fixture.jackd  # the shared JACK dummy server (a fixture)


@pytest.mark.audio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["retrieval", "generation"])
def test_the_sound_check_plays_the_neutral_clip_on_a_device_in_both_modes(kit, atlas, jackd, mode):
    import time

    from realtime.audio import open_output

    lib = Library(atlas if mode == "generation" else kit.library)
    out = open_output("system", isolate=True).start()
    eng = SessionEngine(Decoder(kit.bundle), lib, out, options=SessionOptions(mode=mode))
    try:
        assert eng.soundcheck(True) is True and eng.soundchecking
        time.sleep(1.2)
        assert out.level(0.5)["peak_dbfs"] > -40.0  # the neutral clip goes out
        assert eng.soundcheck(False) is False and not eng.soundchecking
        time.sleep(0.8)
        assert out.level(0.4)["peak_dbfs"] == -np.inf  # faded out (0.25 s) and silent since
        eng._audio_started = True  # as once a run's music plays
        with pytest.raises(ValueError, match="a sound check is for before a run"):
            eng.soundcheck(True)
        eng._audio_started = False
    finally:
        eng.finish()
        out.close()


def test_the_dashboard_shows_the_sound_its_keys_and_the_level_sent_out(kit, tmp_path):
    import io

    from rich.console import Console

    from protocols.operator import OperatorCommand
    from realtime.session import Dashboard
    from realtime.session.alerts import AudioWatch
    from realtime.session.operator import OperatorControl

    sink = WavSink(tmp_path / "out.wav").start()
    eng = SessionEngine(Decoder(kit.bundle), Library(kit.library), sink)
    for m in volumes(kit.nifti)[:8]:
        eng.on_volume(m, 0.0)
    op = OperatorControl(eng, tmp_path, level_dbfs=-20.0)

    def shown() -> str:
        console = Console(file=io.StringIO(), width=200)
        console.print(Dashboard(eng, console=console, operator=op, keys=True, audio=AudioWatch(sink)).render())
        return console.file.getvalue()

    text = shown()
    assert "level +0.0 dB (-20.0 dBFS RMS)" in text and "keys: m mute/unmute, - and + level, s sound check" in text
    level = sink.level(1.0)
    assert f"{level['rms_dbfs']:.1f} dBFS RMS, peak {level['peak_dbfs']:.1f} dBFS" in text  # what was sent out
    op.apply(OperatorCommand("mute", source="test"))
    text = shown()
    assert "MUTED" in text and "sound muted by the operator (test)" in text  # the row and the alert
    sink.close()
