"""The mixer's master gain (the operator's mute and level) against closed forms computed here with numpy.

The documented ramp: from ``g0`` (the gain of the last sample rendered when it starts) to ``g1`` over ``n``
frames, ``out[at + i] = mixed * (g0 + (g1 - g0) * (1 - cos(pi (i + 1) / n)) / 2)`` for ``i < n``, then ``g1``.
Every expected value below comes from that formula in float64, not from the mixer's own ``gain_ramp``.
"""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import jack_fixture

from music.audio import crossfade_gains
from realtime.audio import IsolatedOutput, Mixer, WavSink
from realtime.audio._mixer import MAX_GAIN_RAMP

jackd = jack_fixture.jackd      # the JACK dummy server fixture, for the IsolatedOutput test

SR = 48000
ATOL = 2e-6          # float32 arithmetic in the mixer against float64 here, on samples of at most 0.5


def shape(n: int) -> np.ndarray:
    """The documented raised cosine, float64: ``(1 - cos(pi (i + 1) / n)) / 2`` for ``i < n``."""
    i = np.arange(n, dtype=np.float64)
    return (1.0 - np.cos(np.pi * (i + 1) / n)) / 2.0


def ramp_value(g0: float, g1: float, n: int, i: int) -> float:
    """The gain at sample ``i`` of a ramp (``g1`` once it is over)."""
    if n == 0 or i >= n:
        return g1
    return g0 + (g1 - g0) * (1.0 - math.cos(math.pi * (i + 1) / n)) / 2.0


def gain_curve(total: int, commands) -> np.ndarray:
    """The per-frame gain for ``commands`` ``(frame, gain, ramp_frames)`` at strictly increasing frames, each
    starting from the gain of the frame before it (1 before the first)."""
    g = np.ones(total, np.float64)
    frames = [c[0] for c in commands]
    assert frames == sorted(set(frames)), "the model takes strictly increasing frames"
    for at, g1, n in commands:
        g0 = g[at - 1] if at > 0 else 1.0
        k = min(n, total - at)
        g[at:at + k] = g0 + (g1 - g0) * shape(n)[:k]
        g[at + k:] = g1
    return g


def noise(rng, n: int = 4801, channels: int = 2, amp: float = 0.5) -> np.ndarray:
    """A (n, channels) float32 source of uniform noise in [-amp, amp] (an odd length: loops fall anywhere)."""
    return np.ascontiguousarray(rng.uniform(-amp, amp, (n, channels)).astype(np.float32))


def looped(src: np.ndarray, start: int, n: int) -> np.ndarray:
    return src[(start + np.arange(n)) % src.shape[0]]


def render_blocks(m: Mixer, n: int, block: int, out: np.ndarray | None = None, clock: bool = False) -> np.ndarray:
    """Render ``n`` frames in blocks of ``block`` (the last may be shorter); ``clock``: pass ``t0 = frame / SR``."""
    out = np.zeros((n, m.channels), np.float32) if out is None else out
    for a in range(0, n, block):
        f0 = m.frame
        if clock:
            m.render(out[a:a + block], f0, f0 / SR)
        else:
            m.render(out[a:a + block])
    return out


def gain_rows(m: Mixer) -> list[dict]:
    return [r for r in m.executed() if r["kind"] == "gain"]


# ---------------------------------------------------------------------------- steps and ramps


def test_a_step_multiplies_from_its_frame_on(rng):
    src = noise(rng)
    at, total = 10007, 20000
    m = Mixer(SR, 2)
    m.schedule_switch(0, src, 0)
    m.schedule_gain(at, 0.25, 0)
    out = render_blocks(m, total, 256)
    ref = looped(src, 0, total).astype(np.float64)
    np.testing.assert_array_equal(out[:at], ref[:at])                # gain 1 before: the samples untouched
    np.testing.assert_allclose(out[at:], 0.25 * ref[at:], rtol=0, atol=ATOL)
    assert m.current_gain() == 0.25


def test_a_ramp_down_to_silence_and_back_up_follows_the_raised_cosine(rng):
    src = noise(rng)
    a, n1, b, n2, total = 5003, 2400, 12345, 1000, 16000
    m = Mixer(SR, 2)
    m.schedule_switch(0, src, 0)
    m.schedule_gain(a, 0.0, n1)
    m.schedule_gain(b, 0.5, n2)
    out = render_blocks(m, total, 256).astype(np.float64)
    ref = looped(src, 0, total).astype(np.float64)
    g = np.ones(total)
    g[a:a + n1] = 1.0 + (0.0 - 1.0) * (1 - np.cos(np.pi * (np.arange(n1) + 1) / n1)) / 2
    g[a + n1:b] = 0.0
    g[b:b + n2] = 0.0 + (0.5 - 0.0) * (1 - np.cos(np.pi * (np.arange(n2) + 1) / n2)) / 2
    g[b + n2:] = 0.5
    np.testing.assert_allclose(out, ref * g[:, None], rtol=0, atol=ATOL)
    assert not np.any(out[a + n1:b])                                    # muted is exactly silent
    assert g[a + n1 - 1] == 0.0 and g[b + n2 - 1] == 0.5                # the ramp ends on its target
    assert m.current_gain() == 0.5


def test_a_ramp_interrupted_by_another_starts_from_the_last_rendered_gain(rng):
    src = noise(rng)
    a, n1 = 3000, 4800            # 1 -> 0 over 100 ms ...
    b, n2 = a + 1234, 960         # ... cut short after 1234 samples: -> 0.8 over 20 ms
    total = 9000
    m = Mixer(SR, 2)
    m.schedule_switch(0, src, 0)
    m.schedule_gain(a, 0.0, n1)
    m.schedule_gain(b, 0.8, n2)
    out = render_blocks(m, b + 100, 256)
    # mid-ramp: current_gain is the gain of the last sample rendered (sample 99 of the second ramp)
    g_b = 1.0 + (0.0 - 1.0) * (1 - math.cos(math.pi * 1234 / n1)) / 2       # sample 1233 of the first ramp
    assert m.current_gain() == pytest.approx(g_b + (0.8 - g_b) * (1 - math.cos(math.pi * 100 / n2)) / 2, abs=1e-6)
    rest = render_blocks(m, total - (b + 100), 256)
    out = np.concatenate([out, rest]).astype(np.float64)
    g = np.ones(total)
    g[a:b] = 1.0 - (1 - np.cos(np.pi * (np.arange(b - a) + 1) / n1)) / 2
    g[b:b + n2] = g_b + (0.8 - g_b) * (1 - np.cos(np.pi * (np.arange(n2) + 1) / n2)) / 2
    g[b + n2:] = 0.8
    assert g[b - 1] == pytest.approx(g_b)
    ref = looped(src, 0, total).astype(np.float64)
    np.testing.assert_allclose(out, ref * g[:, None], rtol=0, atol=ATOL)
    np.testing.assert_allclose(out, ref * gain_curve(total, [(a, 0.0, n1), (b, 0.8, n2)])[:, None], rtol=0, atol=ATOL)
    assert m.current_gain() == 0.8


def test_gain_commands_inside_blocks_of_any_size_give_identical_output(rng):
    src, other = noise(rng), noise(rng, 3001)
    total = 12000
    # gain frames off every block boundary: inside 37-, 256- and 2500-frame blocks, some ramps cut short
    gains = [(999, 0.5, 300), (1201, 0.0, 2400), (2500, 1.0, 0), (4099, 0.1, 37), (4100, 0.7, 1000),
             (7777, 0.0, 0), (7778, 0.3, 2222), (11111, 1.0, 1)]
    outs = []
    for blocks in ([1] * total, [37] * (total // 37 + 1), [256] * (total // 256 + 1), [2500] * 5,
                   list(rng.integers(1, 3000, 40))):
        m = Mixer(SR, 2, max_block=1000)          # 2500 > max_block: render splits those itself
        m.schedule_switch(0, src, 0)
        m.schedule_switch(6000, other, 480)
        for at, g, n in gains:
            m.schedule_gain(at, g, n)
        out = np.zeros((total, 2), np.float32)
        pos = 0
        for size in blocks:
            size = min(int(size), total - pos)
            if size <= 0:
                break
            m.render(out[pos:pos + size], pos)
            pos += size
        if pos < total:
            m.render(out[pos:], pos)
        assert m.late_commands == 0 and m.pending == 0
        assert [(r["scheduled_frame"], r["frame"], r["gain"]) for r in gain_rows(m)] == \
            [(at, at, g) for at, g, n in gains]
        outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    # and the closed form: the switch's equal-power crossfade under the gain curve
    fo, fi = crossfade_gains(480)
    mixed = looped(src, 0, total).astype(np.float64)
    mixed[6000:6480] = looped(src, 6000, 480) * fo[:, None].astype(np.float64) + \
        other[:480].astype(np.float64) * fi[:, None].astype(np.float64)
    mixed[6480:] = looped(other, 480, total - 6480)
    np.testing.assert_allclose(outs[0], mixed * gain_curve(total, gains)[:, None], rtol=0, atol=ATOL)


def test_a_mute_now_does_not_wait_for_a_switch_pending_two_seconds_ahead(rng):
    a, b = noise(rng), noise(rng, 2999)
    at_switch, n_x = 2 * SR, 4800
    m = Mixer(SR, 2)
    m.schedule_switch(0, a, 0)
    m.schedule_switch(at_switch, b, n_x)          # the next bar, 2 s ahead
    first = render_blocks(m, 1024, 256)
    now = m.frame
    mute = m.schedule_gain(now, 0.0, 2400)        # the operator: now, not on the switch's queue
    unmute = m.schedule_gain(at_switch + 8000, 1.0, 2400)
    total = at_switch + 20000
    rest = render_blocks(m, total - now, 256)
    out = np.concatenate([first, rest]).astype(np.float64)
    rows = m.executed()
    assert [(r["kind"], r["frame"]) for r in rows] == \
        [("switch", 0), ("gain", now), ("switch", at_switch), ("gain", at_switch + 8000)]
    assert [r["id"] for r in rows if r["kind"] == "gain"] == [mute, unmute]
    assert all(r["frame"] == r["scheduled_frame"] for r in rows) and m.late_commands == 0
    fo, fi = crossfade_gains(n_x)
    mixed = looped(a, 0, total).astype(np.float64)
    mixed[at_switch:at_switch + n_x] = looped(a, at_switch, n_x) * fo[:, None].astype(np.float64) + \
        looped(b, 0, n_x) * fi[:, None].astype(np.float64)
    mixed[at_switch + n_x:] = looped(b, n_x, total - at_switch - n_x)
    g = gain_curve(total, [(now, 0.0, 2400), (at_switch + 8000, 1.0, 2400)])
    np.testing.assert_allclose(out, mixed * g[:, None], rtol=0, atol=ATOL)
    assert not np.any(out[now + 2400:at_switch + 8000])       # silent through the switch
    np.testing.assert_array_equal(out[at_switch + 8000 + 2400:], mixed[at_switch + 8000 + 2400:].astype(np.float32))


def test_a_gain_for_a_frame_already_rendered_runs_at_the_next_block_and_is_not_late(rng):
    src = noise(rng)
    m = Mixer(SR, 2)
    m.schedule_switch(0, src, 0)
    render_blocks(m, 1024, 256)
    gid = m.schedule_gain(500, 0.5, 0)            # already rendered: as soon as possible
    out = render_blocks(m, 512, 256, clock=True)
    assert m.late_commands == 0
    row = gain_rows(m)[0]
    assert row == {"id": gid, "kind": "gain", "scheduled_frame": 500, "frame": 1024, "block_frame": 1024,
                   "time": pytest.approx(1024 / SR), "gain": 0.5}
    np.testing.assert_allclose(out, 0.5 * looped(src, 1024, 512).astype(np.float64), rtol=0, atol=ATOL)
    # a switch that late, by contrast, is counted
    m.schedule_switch(100, src, 0)
    render_blocks(m, 256, 256)
    assert m.late_commands == 1


def test_a_gain_before_the_previous_gain_command_is_moved_to_its_frame(rng):
    src = noise(rng)
    m = Mixer(SR, 2)
    m.schedule_switch(0, src, 0)
    m.schedule_gain(2000, 0.5, 0)
    m.schedule_gain(1500, 0.2, 0)                 # earlier than the last: moved to 2000
    m.schedule_gain(3000, 0.9, 400)
    m.schedule_gain(2500, 0.0, 400)               # moved to 3000; starts from the gain reached (0.2)
    total = 5000
    out = render_blocks(m, total, 256).astype(np.float64)
    assert [(r["scheduled_frame"], r["frame"], r["gain"]) for r in gain_rows(m)] == \
        [(2000, 2000, 0.5), (2000, 2000, 0.2), (3000, 3000, 0.9), (3000, 3000, 0.0)]
    g = np.ones(total)
    g[2000:3000] = 0.2
    g[3000:3400] = 0.2 + (0.0 - 0.2) * shape(400)
    g[3400:] = 0.0
    ref = looped(src, 0, total).astype(np.float64)
    np.testing.assert_array_equal(out[:2000], ref[:2000])
    np.testing.assert_allclose(out, ref * g[:, None], rtol=0, atol=ATOL)
    assert m.late_commands == 0 and m.current_gain() == 0.0


# ---------------------------------------------------------------------------- arguments and logs


@pytest.mark.parametrize("gain", [-1e-9, -1.0, 1.0 + 1e-9, 2.0, float("nan"), float("inf"), float("-inf")])
def test_a_gain_out_of_range_raises_naming_gain(gain):
    m = Mixer(SR, 2)
    with pytest.raises(ValueError, match=r"^gain must be an amplitude ratio in \[0, 1\]"):
        m.schedule_gain(0, gain, 0)
    assert m.pending == 0


@pytest.mark.parametrize("ramp", [-1, 2.5, MAX_GAIN_RAMP + 1, 10**9])
def test_a_bad_ramp_raises_naming_ramp_frames(ramp):
    m = Mixer(SR, 2)
    with pytest.raises(ValueError, match=r"^ramp_frames must be"):
        m.schedule_gain(0, 0.5, ramp)
    assert m.pending == 0


@pytest.mark.parametrize("ramp", [float("nan"), float("inf")])
def test_a_non_finite_ramp_raises_value_error_naming_ramp_frames(ramp):
    m = Mixer(SR, 2)
    with pytest.raises(ValueError, match=r"^ramp_frames"):
        m.schedule_gain(0, 0.5, ramp)


def test_the_bounds_themselves_are_accepted(rng):
    src = noise(rng)
    m = Mixer(SR, 2)
    m.schedule_switch(0, src, 0)
    m.schedule_gain(0, 0.0, 0)
    m.schedule_gain(0, 1.0, MAX_GAIN_RAMP)        # 10 s up from silence
    n = 4096
    out = render_blocks(m, n, 4096).astype(np.float64)
    np.testing.assert_allclose(out, looped(src, 0, n) * shape(MAX_GAIN_RAMP)[:n, None], rtol=0, atol=ATOL)
    assert m.current_gain() == pytest.approx(ramp_value(0.0, 1.0, MAX_GAIN_RAMP, n - 1), abs=1e-7)


def test_executed_rows_say_gain_and_current_gain_follows_the_ramp(rng):
    src = noise(rng)
    m = Mixer(SR, 2)
    assert m.current_gain() == 1.0                # before anything
    sw = m.schedule_switch(0, src, 0)
    g1 = m.schedule_gain(1000, 0.3, 500)
    stop = m.schedule_stop(3000, 0)
    g2 = m.schedule_gain(2000, 0.0, 0)
    render_blocks(m, 1200, 256, clock=True)       # 200 samples into the ramp
    assert m.current_gain() == pytest.approx(ramp_value(1.0, 0.3, 500, 199), abs=1e-7)
    render_blocks(m, 400, 256, clock=True)        # the ramp is over (1600 > 1500)
    assert m.current_gain() == 0.3
    render_blocks(m, 2400, 256, clock=True)
    rows = m.executed()
    assert rows == [
        {"id": sw, "kind": "switch", "scheduled_frame": 0, "frame": 0, "block_frame": 0, "time": 0.0},
        {"id": g1, "kind": "gain", "scheduled_frame": 1000, "frame": 1000, "block_frame": 768, "time": pytest.approx(1000 / SR),
         "gain": 0.3},
        {"id": g2, "kind": "gain", "scheduled_frame": 2000, "frame": 2000, "block_frame": 1856,
         "time": pytest.approx(2000 / SR), "gain": 0.0},
        {"id": stop, "kind": "stop", "scheduled_frame": 3000, "frame": 3000, "block_frame": 2880,
         "time": pytest.approx(3000 / SR)},
    ]
    assert len({sw, g1, stop, g2}) == 4           # one id space for every kind
    assert m.current_gain() == 0.0
    assert m.pending == 0


def test_render_with_gain_ramps_allocates_nothing(rng):
    a, b = noise(rng, 14400), noise(rng, 9600)
    n_blocks, block = 200, 4096
    total = n_blocks * block
    m = Mixer(SR, 2, queue_size=1024)
    frame, k = 0, 0
    while frame < total - 5000:                   # switches and stops underneath
        frame += int(rng.integers(1, 8000))
        if rng.integers(0, 4) == 3:
            m.schedule_stop(frame, int(rng.integers(0, 2000)))
        else:
            m.schedule_switch(frame, a if k % 2 else b, int(rng.integers(0, 3000)), offset=int(rng.integers(0, 400)))
        k += 1
    frame, gains = 0, 0
    while frame < total - 5000:                   # ramps of a few lengths, many cut short by the next
        frame += int(rng.integers(1, 5000))
        m.schedule_gain(frame, float(rng.choice([0.0, 0.25, 0.5, 1.0])), int(rng.choice([0, 37, 2400, 4800])))
        gains += 1
    assert m.pending > 200 and gains > 100
    out = np.zeros((block, 2), np.float32)        # 32 KiB: any block-sized temporary would show
    for _ in range(3):
        m.render(out)
    tracemalloc.start()
    try:
        for _ in range(40):                       # let the counters' ints settle (see test_audio_engine)
            m.render(out)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(n_blocks - 43):
            m.render(out)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.pending == 0
    executed = gain_rows(m)
    assert len(executed) == gains and len(executed) > 100        # every gain ran, most while traced
    assert after - before < 1024, f"render kept {after - before} bytes"
    assert peak - before < 2048, f"render made a temporary of {peak - before} bytes"


# ---------------------------------------------------------------------------- outputs


def test_wav_sink_writes_the_gain(tmp_path, rng):
    src = noise(rng)
    path = tmp_path / "out.wav"
    at1, n1, total = 7001, 2400, 30000
    with WavSink(path, SR, 2, blocksize=256) as sink:
        sink.schedule_switch(0, src, 0)
        sink.schedule_gain(at1, 0.0, n1)
        sink.advance_to(12345)
        now = sink.frame                          # "now", as the session places an operator's command
        sink.schedule_gain(now, 0.5, 960)
        sink.advance_to(total)
        assert sink.current_gain() == 0.5
        rows = [r for r in sink.executed() if r["kind"] == "gain"]
    got, sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == SR and got.shape == (total, 2)
    assert [(r["frame"], r["gain"]) for r in rows] == [(at1, 0.0), (now, 0.5)]
    assert [r["time"] for r in rows] == [pytest.approx(at1 / SR), pytest.approx(now / SR)]
    g = np.ones(total)
    g[at1:at1 + n1] = 1.0 - shape(n1)
    g[at1 + n1:now] = 0.0
    g[now:now + 960] = 0.5 * shape(960)
    g[now + 960:] = 0.5
    np.testing.assert_allclose(got, looped(src, 0, total).astype(np.float64) * g[:, None], rtol=0, atol=ATOL)
    assert not np.any(got[at1 + n1:now])


@pytest.mark.audio
def test_isolated_output_takes_the_gain_in_its_child_process(jackd):
    src = noise(np.random.default_rng(0), 48000)
    out = IsolatedOutput("system", blocksize=jackd.period)
    with out:
        assert out.current_gain() == 1.0
        first = out.time_to_frame(out.now() + 0.2)
        out.schedule_switch(first, src, 0)
        at = out.time_to_frame(out.now() + 0.4)
        gid = out.schedule_gain(at, 0.25, 480)
        with pytest.raises(ValueError, match="^gain must be"):      # checked in the child, raised here
            out.schedule_gain(at, 1.5, 0)
        with pytest.raises(ValueError, match="^ramp_frames"):
            out.schedule_gain(at, 0.5, -1)
        deadline = time.monotonic() + 5.0
        while out.frame < at + 480 + 4 * jackd.period and time.monotonic() < deadline:
            time.sleep(0.05)
        log = out.executed()
        gain = out.current_gain()
    assert out.callback_errors == 0
    rows = [r for r in log if r["kind"] == "gain"]
    assert rows == [{"id": gid, "kind": "gain", "scheduled_frame": at, "frame": at, "block_frame": at - at % jackd.period,
                     "time": rows[0]["time"], "gain": 0.25}]
    assert math.isfinite(rows[0]["time"])
    assert [r["frame"] for r in log if r["kind"] == "switch"] == [first]
    assert gain == 0.25


# ---------------------------------------------------------------------------- the level meter


def test_the_level_meter_matches_numpy_over_the_blocks_that_cover_the_span(rng):
    m = Mixer(SR, 2, max_block=100)  # blocks longer than max_block are metered in pieces
    assert m.level(1.0) is None  # nothing rendered yet
    src = (0.2 * rng.standard_normal((SR, 2))).astype(np.float32)
    m.schedule_switch(0, src, 0)
    m.schedule_gain(30000, 0.5, 0)
    out = np.zeros((60000, 2), np.float32)
    sizes = rng.integers(1, 700, size=400)
    edges = np.minimum(np.concatenate([[0], np.cumsum(sizes)]), 60000)
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            m.render(out[a:b])
    for span in (0.01, 0.3, 0.5, 5.0):
        lv = m.level(span)
        n = int(round(lv["seconds"] * SR))
        assert n >= min(span * SR, 60000) and lv["end_frame"] == 60000
        seg = out[60000 - n:].astype(np.float64)
        assert lv["rms_dbfs"] == pytest.approx(20 * np.log10(np.sqrt(np.mean(seg ** 2))), abs=1e-4)
        assert lv["peak_dbfs"] == pytest.approx(20 * np.log10(np.abs(seg).max()), abs=1e-6)
    silent = Mixer(SR, 2)
    silent.render(np.zeros((256, 2), np.float32))
    assert silent.level(1.0)["peak_dbfs"] == -np.inf and silent.level(1.0)["rms_dbfs"] == -np.inf
