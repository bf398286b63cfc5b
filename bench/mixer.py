"""Benchmark the audio callback's work: one ``Mixer.render`` call for a 256-frame block.

Run from the repository root::

    .venv/bin/python bench/mixer.py            # 20,000 timed blocks per condition
    .venv/bin/python bench/mixer.py --quick    # 3,000 timed blocks per condition

:meth:`realtime.audio._mixer.Mixer.render` runs in the PortAudio callback:
256 frames, 48 kHz, 2 channels, float32, so it has 5.33 ms per block, all
of it shared with PortAudio and the rest of the process. Besides mixing the
voices it applies the master gain (:meth:`Mixer.schedule_gain`, the
operator's mute and level ramps) and meters every block (``_meter``: RMS and
peak). Each call is timed with ``time.perf_counter_ns`` on either side, gc
disabled, after a warm-up. The source is one 10 s float32 stereo noise clip
(seeded), looping. Conditions:

``steady``
    one voice playing, master gain 1 (no gain work; the meter runs);
``crossfading``
    a switch with a 4,800-frame crossfade every 9,600 frames (two voices half
    the time; shown also split into blocks with two voices and with one);
``gain ramps``
    steady plus a 2,400-frame master-gain ramp every 4,800 frames, to 0.3 and
    back to 1 in turn, so half of all blocks ramp (split into ramping and not
    ramping: of the latter, half hold gain 0.3, a multiply, half gain 1);
``muted``
    master gain 0, held (the voice is still mixed, then multiplied by 0).

Anchors, in the same run:

``copy`` (the anchor for ratios)
    ``np.copyto(out, src[pos:pos + 256])`` per block: the least any renderer does;
``meter only``
    ``Mixer._meter(out, frame0, 256)`` alone, called directly on a block
    filled with the clip, so the meter's share of ``render`` shows.

Commands are scheduled ahead, between timed calls, as the session's control
thread does (that work is not timed). Conditions run in interleaved rounds
(each keeps its own mixer and position), so drift in the machine's clock
speed falls on all of them alike.

Prints p50, p99 and max (µs), the ratios to ``copy`` and each p99 as a
share of the 5.33 ms block period; writes ``bench/results/mixer.json``
(``mixer-quick.json`` with ``--quick``) with the machine's details.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np
from _machine import machine_info, source_digest, summarize, write_json  # bench/ is sys.path[0]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

RATE = 48000
CHANNELS = 2
BLOCK = 256
PERIOD_US = 1e6 * BLOCK / RATE            # 5333.3 µs
CLIP_S = 10
SWITCH_EVERY, CROSSFADE = 9600, 4800
GAIN_EVERY, GAIN_RAMP, GAIN_LOW = 4800, 2400, 0.3
LOOKAHEAD = 9600                          # frames ahead the control side schedules
ROUNDS = 5


def _clip() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = 0.25 * rng.standard_normal((CLIP_S * RATE, CHANNELS))
    return np.ascontiguousarray(np.clip(x, -1.0, 1.0), dtype=np.float32)


class _Copy:
    """The anchor: a copy of the next block of the clip into ``out``."""

    name = "copy"

    def __init__(self, src: np.ndarray):
        self.src = src
        self.out = np.zeros((BLOCK, CHANNELS), np.float32)
        self.pos = 0

    def run(self, times: list, frames: list, count: int) -> None:
        src, out, pos, length = self.src, self.out, self.pos, self.src.shape[0]
        copyto, pc = np.copyto, time.perf_counter_ns
        for _ in range(count):
            if pos + BLOCK > length:
                pos = 0
            t = pc()
            copyto(out, src[pos:pos + BLOCK])
            t1 = pc()
            times.append(t1 - t)
            frames.append(pos)
            pos += BLOCK
        self.pos = pos


class _Meter:
    """``Mixer._meter`` alone on a block filled (untimed) with the clip."""

    name = "meter only"

    def __init__(self, src: np.ndarray):
        from realtime.audio._mixer import Mixer

        self.src = src
        self.m = Mixer(RATE, CHANNELS, max_block=max(8192, BLOCK))
        self.out = np.zeros((BLOCK, CHANNELS), np.float32)
        self.frame = 0

    def run(self, times: list, frames: list, count: int) -> None:
        src, out, meter, length = self.src, self.out, self.m._meter, self.src.shape[0]
        pc, f = time.perf_counter_ns, self.frame
        for _ in range(count):
            pos = f % length
            if pos + BLOCK > length:
                pos = 0
            np.copyto(out, src[pos:pos + BLOCK])
            t = pc()
            meter(out, f, BLOCK)
            t1 = pc()
            times.append(t1 - t)
            frames.append(f)
            f += BLOCK
        self.frame = f


class _Render:
    """A mixer playing the clip from frame 0, with switches and gain ramps scheduled ahead as configured."""

    def __init__(self, name: str, src: np.ndarray, *, switch_every: int = 0, crossfade: int = 0,
                 gain_every: int = 0, gain_ramp: int = 0, hold_gain: float | None = None):
        from realtime.audio._mixer import Mixer

        self.name = name
        self.src = src
        # as realtime.audio's outputs make it
        self.m = Mixer(RATE, CHANNELS, max_block=max(8192, BLOCK))
        self.m.schedule_switch(0, src, 0)
        if hold_gain is not None:
            self.m.schedule_gain(0, hold_gain, 0)
        self.switch_every, self.crossfade = switch_every, crossfade
        self.gain_every, self.gain_ramp = gain_every, gain_ramp
        self.k_switch = self.k_gain = 1
        self.out = np.zeros((BLOCK, CHANNELS), np.float32)
        self.frame = 0

    def _plan(self, horizon: int) -> None:
        """The control thread's part: schedule what falls before ``horizon`` (not timed)."""
        m = self.m
        while self.switch_every and self.k_switch * self.switch_every < horizon:
            k = self.k_switch
            # a different point of the clip each time, so the two voices differ
            m.schedule_switch(k * self.switch_every, self.src, self.crossfade,
                              offset=(k * 100_003) % self.src.shape[0])
            self.k_switch += 1
        while self.gain_every and self.k_gain * self.gain_every < horizon:
            k = self.k_gain
            m.schedule_gain(k * self.gain_every, GAIN_LOW if k % 2 else 1.0, self.gain_ramp)
            self.k_gain += 1

    def run(self, times: list, frames: list, count: int) -> None:
        render, out, pc, f = self.m.render, self.out, time.perf_counter_ns, self.frame
        for _ in range(count):
            self._plan(f + LOOKAHEAD)
            t = pc()
            render(out, f)
            t1 = pc()
            times.append(t1 - t)
            frames.append(f)
            f += BLOCK
        self.frame = f


def _overlaps(f: np.ndarray, every: int, length: int) -> np.ndarray:
    """Blocks ``[f, f + BLOCK)`` that overlap some ``[k every, k every + length)``, k >= 1."""
    k_last = (f + BLOCK - 1) // every              # the last event starting before the block ends
    start = k_last * every
    return (k_last >= 1) & (start + length > f)


def _split(f: np.ndarray, every: int) -> np.ndarray:
    """Blocks a command at ``k every`` cuts in two (it falls strictly inside the block)."""
    return f // every < (f + BLOCK - 1) // every


def _timer_overhead_ns(n: int = 20000) -> dict:
    pc, xs = time.perf_counter_ns, []
    for _ in range(n):
        t = pc()
        t1 = pc()
        xs.append(t1 - t)
    return summarize(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3,000 timed blocks per condition")
    ap.add_argument("--blocks", type=int, default=None,
                    help="timed blocks per condition (default 20,000; 3,000 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed blocks first (default blocks / 10, >= 500)")
    ap.add_argument("--name", default=None, help="result file stem (default mixer, mixer-quick)")
    args = ap.parse_args()
    n = args.blocks or (3000 if args.quick else 20000)
    warm = args.warmup if args.warmup is not None else max(500, n // 10)
    per_round = [n // ROUNDS + (1 if r < n % ROUNDS else 0) for r in range(ROUNDS)]

    print(f"clip: {CLIP_S} s of float32 stereo noise at {RATE} Hz ...", file=sys.stderr, flush=True)
    src = _clip()
    conds = [
        _Copy(src),
        _Meter(src),
        _Render("steady", src),
        _Render("crossfading", src, switch_every=SWITCH_EVERY, crossfade=CROSSFADE),
        _Render("gain ramps", src, gain_every=GAIN_EVERY, gain_ramp=GAIN_RAMP),
        _Render("muted", src, hold_gain=0.0),
    ]
    times = {c.name: [] for c in conds}
    frames = {c.name: [] for c in conds}
    gc.collect()
    gc.disable()
    try:
        timer = _timer_overhead_ns()
        for c in conds:
            print(f"{c.name}: warm-up, {warm} blocks ...", file=sys.stderr, flush=True)
            c.run([], [], warm)
        for r, count in enumerate(per_round):
            print(f"round {r + 1}/{ROUNDS}: {count} blocks per condition ...", file=sys.stderr, flush=True)
            for c in conds:
                c.run(times[c.name], frames[c.name], count)
    finally:
        gc.enable()

    us = {k: np.asarray(v, np.float64) / 1e3 for k, v in times.items()}
    fr = {k: np.asarray(v, np.int64) for k, v in frames.items()}
    stats = {k: summarize(v) for k, v in us.items()}
    # where the time goes: blocks by what they hold
    xf = _overlaps(fr["crossfading"], SWITCH_EVERY, CROSSFADE)
    gr = _overlaps(fr["gain ramps"], GAIN_EVERY, GAIN_RAMP)
    held_low = ~gr & ((fr["gain ramps"] // GAIN_EVERY) % 2 == 1)
    subsets = {
        "crossfading: 2 voices": us["crossfading"][xf],
        "crossfading: 1 voice": us["crossfading"][~xf],
        "crossfading: split by a switch": us["crossfading"][_split(fr["crossfading"], SWITCH_EVERY)],
        "gain ramps: ramping": us["gain ramps"][gr],
        "gain ramps: held 0.3": us["gain ramps"][held_low],
        "gain ramps: held 1": us["gain ramps"][~gr & ~held_low],
        "gain ramps: split by a gain command": us["gain ramps"][_split(fr["gain ramps"], GAIN_EVERY)],
    }
    sub_stats = {k: summarize(v) for k, v in subsets.items()}
    anchor = stats["copy"]

    def ratios(s: dict) -> dict:
        return {"p50_over_copy": s["p50"] / anchor["p50"], "p99_over_copy": s["p99"] / anchor["p99"],
                "p99_pct_of_period": 100.0 * s["p99"] / PERIOD_US}

    order = ["steady", "crossfading", "gain ramps", "muted", "meter only", "copy"]
    payload = {
        "machine": machine_info(),
        "source": source_digest(["realtime/audio/_mixer.py"]),
        "what": "time of one Mixer.render call for a 256-frame stereo float32 block (µs), "
                "against np.copyto of the block (the anchor)",
        "quick": bool(args.quick),
        "samplerate": RATE, "channels": CHANNELS, "block_frames": BLOCK, "block_period_us": PERIOD_US,
        "clip_s": CLIP_S, "blocks_per_condition": n, "warmup_blocks": warm, "rounds": ROUNDS,
        "switch_every_frames": SWITCH_EVERY, "crossfade_frames": CROSSFADE,
        "gain_every_frames": GAIN_EVERY, "gain_ramp_frames": GAIN_RAMP, "gain_low": GAIN_LOW,
        "timer_overhead_ns": timer,
        "conditions_us": {k: stats[k] for k in order},
        "ratios": {k: ratios(stats[k]) for k in order},
        "subsets_us": sub_stats,
        "subset_ratios": {k: ratios(s) for k, s in sub_stats.items() if s["n"]},
        "meter_share_of_steady_p50": stats["meter only"]["p50"] / stats["steady"]["p50"],
    }
    path = write_json(args.name or ("mixer-quick" if args.quick else "mixer"), payload)

    print()
    print(f"Mixer.render, {BLOCK} frames x {CHANNELS} ch float32 at {RATE} Hz (period {PERIOD_US / 1e3:.2f} ms); "
          f"{n} blocks per condition{' (quick)' if args.quick else ''}; timer pair "
          f"{timer['p50']:.0f} ns (p50), included")
    head = (f"  {'condition':<36} {'p50 µs':>8} {'p99 µs':>8} {'max µs':>9} {'p50/copy':>9} {'p99/copy':>9} "
            f"{'p99 % period':>12} {'n':>6}")
    print(head)

    def row(name: str, s: dict) -> str:
        if not s["n"]:
            return f"  {name:<36} {'-':>8}"
        q = ratios(s)
        return (f"  {name:<36} {s['p50']:8.2f} {s['p99']:8.2f} {s['max']:9.2f} {q['p50_over_copy']:9.1f} "
                f"{q['p99_over_copy']:9.1f} {q['p99_pct_of_period']:11.2f}% {s['n']:6d}")

    for k in order:
        print(row(k, stats[k]))
        for sk, s in sub_stats.items():
            if sk.startswith(k + ":"):
                print(row("  " + sk.split(": ", 1)[1], s))
    print(f"  meter only / steady at p50: {100.0 * payload['meter_share_of_steady_p50']:.0f}%")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
