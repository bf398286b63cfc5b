"""``b2m present``: a run's excerpts at their onsets from the trigger, the audio `b2m train` embeds.

The reference for what is heard is :func:`offline_training.bids.stimulus_segment`, the function training
embeds each event with: the participant must hear exactly that, where the design puts it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import soundfile as sf
from jack_fixture import jackd  # noqa: F401  (the fixture)

from offline_training.bids import read_events, stimulus_segment
from realtime.present import wait_for_trigger

EVENTS = ("onset\tduration\tgenre\ttrack\tstart\tend\r\n"  # ds003720's quirks: CRLF, quoted genres
          "0\t4\t'blues'\t98\t1.5\t5.5\r\n"
          "4\t4\t'jazz'\t3\t0\t4\r\n"
          "9\t4\trock\t51\t2\t6\r\n")  # 8-9 s: a gap, silence


@pytest.fixture
def stimuli(tmp_path, rng):
    """GTZAN-named tracks at GTZAN's 22,050 Hz (resampled to the output's rate when played)."""
    folder = tmp_path / "gtzan"
    folder.mkdir()
    for genre, track, hz in [("blues", 98, 220.0), ("jazz", 3, 440.0), ("rock", 51, 660.0)]:
        t = np.arange(22050 * 12) / 22050
        x = 0.3 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / f"{genre}.{track:05d}.wav", x.astype(np.float32), 22050)
    (tmp_path / "events.tsv").write_text(EVENTS)
    return folder


@pytest.mark.timeout(60)
def test_wav_run_holds_each_excerpt_bit_exact_at_its_onset_and_silence_between(b2m_proc, tmp_path, stimuli):
    out = tmp_path / "heard.wav"
    p = b2m_proc("present", tmp_path / "events.tsv", "--stimuli", stimuli, "--audio", f"wav:{out}",
                 "--trigger", "now", "--out", tmp_path / "played.tsv", "--quiet", name="present")
    assert p.wait() == 0, p.stderr()
    audio, sr = sf.read(str(out), dtype="float32")
    assert sr == 48000 and audio.shape == (13 * sr, 2)
    design = read_events(tmp_path / "events.tsv")
    for e in design:
        ref = stimulus_segment(e, stimuli, sr)
        got = audio[int(e.onset_s * sr):int(e.onset_s * sr) + ref.size]
        assert np.array_equal(got[:, 0], ref) and np.array_equal(got[:, 1], ref), e
    assert not audio[8 * sr:9 * sr].any()  # the gap in the design is silent
    played = read_events(tmp_path / "played.tsv")  # what `b2m train` reads
    assert [(e.onset_s, e.genre, e.track, e.start_s, e.end_s) for e in played] == \
        [(e.onset_s, e.genre, e.track, e.start_s, e.end_s) for e in design]
    assert [float(e.extra["design_onset"]) for e in played] == [0.0, 4.0, 9.0]


def test_a_missing_track_is_named_before_the_run_can_start(b2m_proc, tmp_path, stimuli):
    os.remove(stimuli / "jazz.00003.wav")
    p = b2m_proc("present", tmp_path / "events.tsv", "--stimuli", stimuli, "--audio", f"wav:{tmp_path}/x.wav",
                 "--trigger", "now", "--out", tmp_path / "played.tsv", "--quiet", name="present")
    assert p.wait() == 2
    assert "jazz.00003.wav" in p.stderr() and "ready" not in p.stderr()
    assert not (tmp_path / "played.tsv").exists()


def test_no_trigger_input_is_a_clear_error_and_nothing_is_played(b2m_proc, tmp_path, stimuli):
    """Started with no keyboard on stdin (a service, a script): the run never starts, and says how to."""
    p = b2m_proc("present", tmp_path / "events.tsv", "--stimuli", stimuli, "--audio", f"wav:{tmp_path}/x.wav",
                 "--out", tmp_path / "played.tsv", "--quiet", name="present")
    assert p.wait() == 2
    assert "closed before a '5' came; nothing was played (use --trigger now" in p.stderr()
    assert not (tmp_path / "played.tsv").exists()


def test_the_trigger_key_is_read_from_a_pipe_and_nothing_else_starts_the_run():
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as stream:
        os.write(w, b"x\n4")  # other keys: still waiting
        t = time.time()
        os.write(w, b"5")
        assert wait_for_trigger("key", "5", stream=stream) >= t
        os.close(w)
        with pytest.raises(EOFError, match="closed before a '5' came"):
            wait_for_trigger("key", "5", stream=stream)
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as stream:
        with pytest.raises(InterruptedError):
            wait_for_trigger("key", "5", stream=stream, stop=lambda: True)
    os.close(w)


def test_the_trigger_is_read_from_the_boxs_serial_port():
    """A real pty pair: a pulse written to one end starts the run; what waited in the port beforehand does not."""
    import threading

    box, port = os.openpty()
    try:
        os.write(box, b"5")  # before the presenter opened the port: not this run's pulse
        sent = []

        def pulse():
            time.sleep(0.3)
            sent.append(time.time())
            os.write(box, b"5")

        threading.Thread(target=pulse).start()
        t = wait_for_trigger(os.ttyname(port), "5")
        assert sent and 0 <= t - sent[0] < 0.1
    finally:
        os.close(box)
        os.close(port)
    with pytest.raises(ValueError, match="no such device"):
        wait_for_trigger("/dev/ttyUSB97", "5")


@pytest.mark.audio
@pytest.mark.timeout(120)
def test_on_jack_every_excerpt_begins_on_its_frame(b2m_proc, tmp_path, stimuli, jackd):
    """A real clock: each excerpt takes effect on the frame of trigger + lead + its onset, none late."""
    p = b2m_proc("present", tmp_path / "events.tsv", "--stimuli", stimuli, "--audio", "system", "--trigger", "now",
                 "--out", tmp_path / "played.tsv", "--quiet", name="present")
    assert p.wait(timeout=60) == 0, p.stderr()
    import json

    summary = json.loads(p.stdout().strip().splitlines()[-1])
    assert summary["late"] == 0 and summary["played"] == 3 and not summary["stopped"]
    played = read_events(tmp_path / "played.tsv")
    lead = np.array([e.onset_s - float(e.extra["design_onset"]) for e in played])
    # the run's time 0 is put 50 ms after the trigger is read, and each excerpt falls on its exact frame
    np.testing.assert_allclose(lead, 0.05, atol=1.0 / 48000 + 1e-6)
