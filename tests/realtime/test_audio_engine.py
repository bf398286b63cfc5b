"""The audio engine: the mixer against numpy references, the WAV sink, and real streams on JACK's dummy backend."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from jack_fixture import check_no_underruns, jackd, poisson_upper, reference_xruns  # noqa: F401  (jackd: the fixture)

from music.audio import crossfade_gains, write_audio
from realtime.audio import (AudioDeviceError, DeviceOutput, IsolatedOutput, Mixer, WavSink, load_clip,
                            open_output, prepare_source)

SR = 48000


def tone(freq: float, seconds: float, sr: int = SR, channels: int = 2, amp: float = 0.3) -> np.ndarray:
    """A (n, channels) float32 sine; an exact number of periods so looping it is seamless."""
    n = int(round(seconds * sr))
    x = (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)
    return np.ascontiguousarray(np.repeat(x[:, None], channels, axis=1))


def looped(src: np.ndarray, start: int, n: int) -> np.ndarray:
    """Frames ``start .. start + n`` of ``src`` played in a loop."""
    return src[(start + np.arange(n)) % src.shape[0]]


def render_all(mixer: Mixer, n: int, block: int = 256) -> np.ndarray:
    out = np.zeros((n, mixer.channels), np.float32)
    for a in range(0, n, block):
        mixer.render(out[a:a + block])
    return out


# ---------------------------------------------------------------------------- the mixer


def test_wav_sink_matches_numpy_reference(tmp_path):
    a, b = tone(1000, 1.0), tone(1500, 0.5)
    at, n, total = 30001, 4801, 3 * SR            # the switch falls inside a 256-frame block
    path = tmp_path / "out.wav"
    with WavSink(path, SR, 2, blocksize=256) as sink:
        sink.schedule_switch(0, a, 0)
        sink.schedule_switch(at, b, n)
        sink.advance_to(total)
    got, sr = sf.read(path, dtype="float32", always_2d=True)

    fade_out, fade_in = crossfade_gains(n)
    ref = np.empty((total, 2), np.float32)
    ref[:at] = looped(a, 0, at)
    ref[at:at + n] = looped(a, at, n) * fade_out[:, None] + b[np.arange(n) % b.shape[0]] * fade_in[:, None]
    ref[at + n:] = looped(b, n, total - at - n)
    assert sr == SR and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    switch = sink.executed()[1]
    assert switch["frame"] == switch["scheduled_frame"] == at
    assert switch["block_frame"] == at - at % 256
    assert switch["time"] == pytest.approx(at / SR)


def test_mixer_crossfade_is_equal_power():
    left = np.zeros((1000, 2), np.float32)
    left[:, 0] = 1
    right = np.zeros((1000, 2), np.float32)
    right[:, 1] = 1
    m = Mixer(SR, 2)
    m.schedule_switch(0, left, 0)
    m.schedule_switch(5000, right, 2400)
    out = render_all(m, 10000, block=333).astype(np.float64)
    np.testing.assert_array_equal(out[:5000], np.tile([1.0, 0.0], (5000, 1)))
    np.testing.assert_allclose((out[5000:7400] ** 2).sum(axis=1), 1.0, atol=1e-6)
    assert np.all(np.diff(out[5000:7400, 0]) < 0) and np.all(np.diff(out[5000:7400, 1]) > 0)
    np.testing.assert_array_equal(out[7400:], np.tile([0.0, 1.0], (2600, 1)))


def _busy_schedule(m: Mixer, rng, a, b, n_frames: int) -> None:
    frame = 0
    k = 0
    while frame < n_frames - 5000:
        frame += int(rng.integers(1, 4000))
        what = rng.integers(0, 4)
        if what == 3:
            m.schedule_stop(frame, int(rng.integers(0, 2000)))
        else:
            m.schedule_switch(frame, a if k % 2 else b, int(rng.integers(0, 3000)), loop=bool(what != 2),
                              offset=int(rng.integers(0, 400)))
        k += 1


def test_mixer_output_independent_of_block_size(rng):
    a, b = tone(440, 0.25), tone(660, 0.1)
    n = 60000
    outs = []
    for blocks in ([n], [256] * (n // 256 + 1), list(rng.integers(1, 3000, 200))):
        m = Mixer(SR, 2)
        _busy_schedule(m, np.random.default_rng(1), a, b, n)
        out = np.zeros((n, 2), np.float32)
        pos = 0
        for size in blocks:
            if pos >= n:
                break
            size = min(int(size), n - pos)
            m.render(out[pos:pos + size], pos)
            pos += size
        out_rest = out[pos:]
        if out_rest.shape[0]:
            m.render(out_rest, pos)
        outs.append(out)
        assert m.late_commands == 0
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_mixer_fade_in_from_silence_then_stop():
    a = tone(500, 0.5)
    m = Mixer(SR, 2)
    m.schedule_switch(1000, a, 480, offset=100)
    m.schedule_stop(20000, 960)
    out = render_all(m, 30000)
    fo_in, fi_in = crossfade_gains(480)
    fo_stop, _ = crossfade_gains(960)
    ref = np.zeros_like(out)
    played = looped(a, 100, 19000 + 960)
    gain = np.ones(19000 + 960, np.float32)
    gain[:480] = fi_in
    gain[19000:] = fo_stop
    ref[1000:20960] = played * gain[:, None]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    assert not np.any(out[20960:])


def test_mixer_non_looping_source_ends_in_silence_looping_wraps():
    a = tone(300, 0.1)            # 4800 frames
    once, loop = Mixer(SR, 2), Mixer(SR, 2)
    once.schedule_switch(0, a, 0, loop=False)
    loop.schedule_switch(0, a, 0, loop=True)
    out_once, out_loop = render_all(once, 12000, 1000), render_all(loop, 12000, 1000)
    np.testing.assert_array_equal(out_once[:4800], a)
    assert not np.any(out_once[4800:])
    np.testing.assert_array_equal(out_loop, looped(a, 0, 12000))
    assert once.collect() == [0] and loop.collect() == []     # the finished clip is handed back


def test_mixer_late_command_runs_at_next_block_and_is_counted():
    a = tone(300, 0.1)
    m = Mixer(SR, 2)
    render_all(m, 1024)
    m.schedule_switch(500, a, 0)        # already rendered
    out = render_all(m, 512)
    assert m.late_commands == 1
    row = m.executed()[0]
    assert row["scheduled_frame"] == 500 and row["frame"] == 1024
    np.testing.assert_array_equal(out, a[:512])


def test_mixer_rejects_bad_sources_and_order():
    m = Mixer(SR, 2)
    with pytest.raises(ValueError, match="float32"):
        m.schedule_switch(0, np.zeros((10, 2)), 0)
    with pytest.raises(ValueError, match=r"\(n_frames, 2\)"):
        m.schedule_switch(0, np.zeros((10, 1), np.float32), 0)
    with pytest.raises(TypeError, match="numpy array"):
        m.schedule_switch(0, [[0.0, 0.0]], 0)
    with pytest.raises(ValueError, match="past the end"):
        m.schedule_switch(0, np.zeros((10, 2), np.float32), 0, offset=10)
    with pytest.raises(ValueError, match="non-negative"):
        m.schedule_switch(0, np.zeros((10, 2), np.float32), -1)
    m.schedule_switch(100, np.zeros((10, 2), np.float32), 0)
    with pytest.raises(ValueError, match="time order"):
        m.schedule_stop(99)


def test_mixer_render_allocates_nothing():
    a, b = tone(440, 0.3), tone(660, 0.2)
    m = Mixer(SR, 2, queue_size=1024)
    _busy_schedule(m, np.random.default_rng(2), a, b, 200 * 4096)
    assert m.pending > 100
    out = np.zeros((4096, 2), np.float32)            # 32 KiB: any block-sized temporary would show
    for _ in range(3):
        m.render(out)
    tracemalloc.start()
    try:
        # Tracing counts the counters' new int objects (the old ones predate it) as growth, so
        # let those settle in a first window, then ask that a longer second window adds nothing.
        for _ in range(40):
            m.render(out)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(157):
            m.render(out)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.pending == 0 and len(m.executed()) > 100     # every kind of command ran while traced
    assert after - before < 1024, f"render kept {after - before} bytes"       # a few counters' ints at most
    assert peak - before < 2048, f"render made a temporary of {peak - before} bytes"


def test_mixer_drops_clips_on_the_control_thread():
    a, b = tone(440, 0.3), tone(660, 0.2)
    base = sys.getrefcount(a)
    m = Mixer(SR, 2)
    first = m.schedule_switch(0, a, 0)
    m.schedule_switch(1000, b, 500)
    render_all(m, 4096)
    assert sys.getrefcount(a) > base             # still held until the control thread collects
    assert m.collect() == [first]
    assert sys.getrefcount(a) == base


def test_mixer_voice_steal_when_switching_faster_than_crossfades():
    a = tone(440, 0.3)
    m = Mixer(SR, 2, voices=2)
    for k in range(4):
        m.schedule_switch(k * 100, a, 10000)
    out = render_all(m, 20000)
    assert m.voice_steals == 2 and np.all(np.isfinite(out))


def test_next_beat_frame_matches_brute_force(rng):
    length = 5000
    beats = np.sort(rng.choice(length, 12, replace=False))
    m = Mixer(SR, 2)
    src = np.zeros((length, 2), np.float32)
    assert m.next_beat_frame(0) is None
    m.schedule_switch(2000, src, 0, offset=1234, beat_frames=beats)
    for every in (1, 4):
        grid = set(beats[::every].tolist())
        for after in [0, 1999, 2000, 2001, 5000, 7777, 12345]:
            f = max(after, 2000)
            while (1234 + f - 2000) % length not in grid:
                f += 1
            assert m.next_beat_frame(after, every) == f
    m.schedule_switch(20000, src, 0, loop=False, beat_frames=beats)
    assert m.next_beat_frame(20000 + length) is None
    m.schedule_stop(30000)
    assert m.next_beat_frame(30000) is None


# ---------------------------------------------------------------------------- clips and the WAV sink


def test_load_clip_resamples_cuts_and_fades(tmp_path):
    sr_in = 22050
    t = np.arange(3 * sr_in) / sr_in
    write_audio(tmp_path / "c.wav", (0.5 * np.sin(2 * np.pi * 441 * t)).astype(np.float32), sr_in, "FLOAT")
    x = load_clip(tmp_path / "c.wav", start_s=1.0, duration_s=1.0, samplerate=SR, channels=2, fade_s=0.01)
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (SR, 2)
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    assert x[0, 0] == 0 and abs(x[-1, 0]) < 1e-3                      # faded edges
    mid = slice(2000, SR - 2000)                                        # away from fades and filter edges
    ref = 0.5 * np.sin(2 * np.pi * 441 * (1.0 + np.arange(SR) / SR))
    np.testing.assert_allclose(x[mid, 0], ref[mid], atol=2e-3)         # polyphase resampling error
    with pytest.raises(ValueError, match="past its end"):
        load_clip(tmp_path / "c.wav", start_s=5.0)
    with pytest.raises(ValueError, match="cannot read"):
        load_clip(tmp_path / "missing.wav")


def test_prepare_source_maps_channels():
    stereo = np.stack([np.ones(100), -np.ones(100)], axis=1).astype(np.float32)
    assert prepare_source(stereo, SR, SR, 2, fade_s=0)[:, 1].min() == -1
    np.testing.assert_array_equal(prepare_source(stereo, SR, SR, 1, fade_s=0), 0)      # mixed down
    np.testing.assert_array_equal(prepare_source(np.ones(100), SR, SR, 3, fade_s=0), 1)  # copied to 3


def test_wav_sink_writes_atomically(tmp_path):
    path = tmp_path / "feedback.wav"
    sink = open_output(f"wav:{path}", channels=1)
    assert isinstance(sink, WavSink) and sink.samplerate == 48000 and sink.channels == 1
    sink.schedule_switch(0, tone(440, 0.1, channels=1), 0)
    sink.advance_to(10000)
    assert not path.exists()
    sink.close()
    assert sf.info(path).frames == 10000
    again = WavSink(path, SR, 1)
    again.advance_to(5)
    again.abort()
    assert sf.info(path).frames == 10000 and os.listdir(tmp_path) == ["feedback.wav"]
    with pytest.raises(ValueError, match="does not exist"):
        open_output(f"wav:{tmp_path}/no/such/dir/x.wav")
    with pytest.raises(ValueError, match="needs a path"):
        open_output("wav:")


# ---------------------------------------------------------------------------- real streams on JACK


def test_poisson_upper_bound_matches_closed_form():
    # k = 0: P(0 events | mu) = exp(-mu) = 0.05  ->  mu = -ln 0.05; k = 1: (1 + mu) exp(-mu) = 0.05
    from scipy.optimize import brentq

    assert poisson_upper(0) == pytest.approx(-np.log(0.05), rel=1e-9)
    mu1 = brentq(lambda m: (1 + m) * np.exp(-m) - 0.05, 0.1, 20)
    assert poisson_upper(1) == pytest.approx(mu1, rel=1e-7)


def test_missing_device_error_lists_devices(jackd):
    with pytest.raises(AudioDeviceError) as err:
        open_output("no-such-sound-card")
    text = str(err.value)
    assert "no-such-sound-card" in text and "system (JACK Audio Connection Kit)" in text and "wav:PATH" in text
    with pytest.raises(AudioDeviceError, match="index 99"):
        open_output("99")
    with pytest.raises(AudioDeviceError, match="system"):
        open_output("no-such-sound-card", isolate=True)
    with pytest.raises(AudioDeviceError, match="48000"):
        DeviceOutput(None, samplerate=44100)


@pytest.mark.audio
@pytest.mark.parametrize("kind", [DeviceOutput, IsolatedOutput])
def test_device_output_switches_at_the_scheduled_frame(jackd, kind):
    reference = reference_xruns(jackd, 4.0)
    out = kind("system", blocksize=jackd.period)
    assert out.samplerate == jackd.rate
    a, b = tone(1000, 1.0), tone(1500, 1.0)
    t_start = time.monotonic()
    mark = jackd.log_mark()
    with out:
        first = out.time_to_frame(out.now() + 0.3)
        out.schedule_switch(first, a, 480)
        t_switch = out.now() + 1.5
        at = out.time_to_frame(t_switch)
        out.schedule_switch(at, b, 4800)
        time.sleep(4.0)
        log = out.executed()
        elapsed = time.monotonic() - t_start
    assert out.callback_errors == 0
    assert [r["frame"] for r in log] == [first, at]               # sample-accurate, in the mixer's frames
    assert [r["scheduled_frame"] for r in log] == [first, at]
    assert out.frame == out.callbacks * jackd.period
    assert 0.5 * elapsed * SR < out.frame < 1.5 * elapsed * SR     # a real clock drove it
    error_ms = (log[1]["time"] - t_switch) * 1e3                  # stream-clock error, reported, not asserted
    print(f"{kind.__name__}: switch at frame {at}, stream-clock error {error_ms:+.3f} ms")
    check_no_underruns(out, jackd, mark, elapsed, reference)


@pytest.mark.audio
@pytest.mark.parametrize("kind", [DeviceOutput, IsolatedOutput])
def test_the_callback_threads_scheduling_is_what_the_kernel_says(jackd, kind):
    """The first callback notes its thread's policy and real-time priority (in the audio process, for an
    isolated output); the kernel's own account of that thread, /proc/TID/stat fields 40 (rt_priority) and 41
    (policy), read while the stream runs, says the same. Whether it is real-time depends on the server (jackd
    -R) and the user's limits, so that is reported, not asserted."""
    from realtime.session.preflight import describe_scheduling

    names = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE"}
    with kind("system", blocksize=jackd.period) as out:
        sched = out.scheduling
        with open(f"/proc/{sched['thread_id']}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields 3 onwards
        stats = out.stats()
    assert sched["policy"] == names[int(fields[41 - 3])] and sched["priority"] == int(fields[40 - 3])
    assert sched["realtime"] == (sched["policy"] in ("SCHED_FIFO", "SCHED_RR"))
    assert stats["callback_scheduling"] == sched
    if kind is IsolatedOutput:
        assert sched["thread_id"] not in {t.native_id for t in threading.enumerate()}  # another process's
    print(f"{kind.__name__}: callback thread {sched}{describe_scheduling(sched)}")


def test_the_pre_flight_says_what_to_do_about_a_callback_that_is_not_real_time():
    from realtime.session.preflight import describe_scheduling

    fifo = describe_scheduling({"policy": "SCHED_FIFO", "priority": 5, "realtime": True, "thread_id": 1})
    assert fifo == "; its callback runs real-time (SCHED_FIFO, priority 5)"
    other = describe_scheduling({"policy": "SCHED_OTHER", "priority": 0, "realtime": False, "thread_id": 1})
    assert "NOT real-time (SCHED_OTHER)" in other and "jackd with -R" in other and "rtprio" in other
    assert describe_scheduling(None) == ""  # a WAV sink has no callback thread
    from realtime.session.dashboard import _not_realtime  # the dashboard says it in red after the underruns

    assert _not_realtime({"callback_scheduling": {"policy": "SCHED_OTHER", "realtime": False}}) == \
        " [red](callback not real-time: SCHED_OTHER)[/red]"
    assert _not_realtime({"callback_scheduling": {"policy": "SCHED_FIFO", "realtime": True}}) == ""
    assert _not_realtime({}) == ""


@pytest.mark.audio
def test_busy_python_thread_starves_an_in_process_stream_not_an_isolated_one(jackd):
    # Why IsolatedOutput exists, and proof that check_no_underruns catches a starved callback.
    stop = threading.Event()

    def python_loops():
        while not stop.is_set():
            s = 0
            for i in range(200000):
                s += i * i

    counts = {}
    worker = threading.Thread(target=python_loops, daemon=True)
    worker.start()
    try:
        reference = reference_xruns(jackd, 4.0)  # what this very load does to a C client
        for kind in (DeviceOutput, IsolatedOutput):
            mark = jackd.log_mark()
            with kind("system", blocksize=jackd.period) as out:
                out.schedule_switch(out.time_to_frame(out.now() + 0.2), tone(1000, 1.0), 480)
                time.sleep(5.0)
            counts[kind.__name__] = (out.underruns, out, mark)
    finally:
        stop.set()
        worker.join()
    starved, out, mark = counts["DeviceOutput"]
    isolated, iso_out, iso_mark = counts["IsolatedOutput"]
    print(f"underruns in 5 s beside a busy Python thread: in-process {starved}, isolated {isolated}")
    assert starved > isolated
    # the in-process stream fails even the machine's allowance; the isolated one gets zero, or is
    # excused (xfail, with the figures) only within what the same load does to a C client
    with pytest.raises(AssertionError, match="underruns"):
        check_no_underruns(out, jackd, mark, 5.0, reference)
    check_no_underruns(iso_out, jackd, iso_mark, 5.0, reference)


def _stress(make_output, server, load: str, seconds: float, every_s: float, report_path) -> dict:
    a, b = tone(1000, 2.0), tone(1500, 3.0)
    stop = threading.Event()

    def matmuls():
        x = np.random.default_rng(0).standard_normal((384, 384)).astype(np.float32)
        while not stop.is_set():
            x = x @ x
            x /= np.abs(x).max()

    def python_loops():
        while not stop.is_set():
            s = 0
            for i in range(200000):
                s += i * i

    workers = [threading.Thread(target=matmuls, daemon=True)]
    if load == "matmul+python":
        workers.append(threading.Thread(target=python_loops, daemon=True))
    for w in workers:
        w.start()
    try:
        reference = reference_xruns(server, 15.0)       # a C client under the same load, just before
        out = make_output()
        planned = []
        mark = server.log_mark()
        with out:
            end = time.monotonic() + seconds
            k = 0
            while time.monotonic() < end:
                t = out.now() + 0.5
                at = out.time_to_frame(t)
                out.schedule_switch(at, b if k % 2 else a, 9600)
                planned.append((at, t))
                k += 1
                stop.wait(every_s)
            time.sleep(1.0)
            stop.set()
            for w in workers:
                w.join()
            log = out.executed()
            slip = out.stats()["clock_slip_ms"]
    finally:
        stop.set()
    errors = [(row["frame"] - at, (row["time"] - t) * 1e3) for row, (at, t) in zip(log, planned)]
    frame_err = [e[0] for e in errors]
    ms = np.abs([e[1] for e in errors])
    result = {"output": type(out).__name__, "load": load, "seconds": seconds, "switches": len(planned),
              "underruns": out.underruns, "clock_slip_ms": slip, "callbacks": out.callbacks, "frames": out.frame,
              "late_commands": out.stats()["late_commands"],
              "switch_frame_error_max": int(np.max(np.abs(frame_err))),
              "switch_stream_error_ms": {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)),
                                         "max": float(ms.max())},
              "block_ms": 1e3 * server.period / server.rate, "loadavg": os.getloadavg(),
              "jackd_xruns": {k: v for k, v in server.xruns_since(mark).items() if k != "lines"},
              "reference_jack_metro": reference}
    report_path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return dict(result, mark=mark, out=out)


@pytest.mark.slow
@pytest.mark.audio
@pytest.mark.parametrize("kind,load", [(DeviceOutput, "matmul"), (IsolatedOutput, "matmul"),
                                       (IsolatedOutput, "matmul+python")])
def test_stress_60s_switches_under_cpu_load(jackd, tmp_path, kind, load):
    result = _stress(lambda: kind("system", blocksize=jackd.period), jackd, load, seconds=60.0, every_s=3.0,
                     report_path=tmp_path / "stress.json")
    out = result["out"]
    assert result["switches"] >= 15
    assert result["switch_frame_error_max"] == 0
    check_no_underruns(out, jackd, result["mark"], 60.0, result["reference_jack_metro"])


@pytest.mark.audio
def test_isolated_output_switches_to_staged_sources_by_id(jackd):
    out = IsolatedOutput("system", blocksize=jackd.period)
    a, b = tone(1000, 0.5), tone(1500, 0.5)
    with out:
        sa, sb = out.stage(a), out.stage(b)     # copied now, off the hot path
        assert len(sa) == len(a) and sa.shape == a.shape
        t0 = out.now()
        f1 = out.time_to_frame(t0 + 0.2)
        f2 = out.time_to_frame(t0 + 0.6)
        f3 = out.time_to_frame(t0 + 1.0)
        out.schedule_switch(f1, sa, 240)
        out.schedule_switch(f2, sb, 240)
        out.unstage(sa)                         # still scheduled: freed only once retired
        with pytest.raises(ValueError, match="no longer"):
            out.schedule_switch(f3, sa, 240)
        out.schedule_switch(f3, sb, 240)        # the same staged source twice
        time.sleep(1.5)
        log = out.executed()
    assert [r["frame"] for r in log] == [f1, f2, f3] and out.callback_errors == 0
