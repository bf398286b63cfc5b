"""``b2m present EVENTS.tsv --stimuli DIR``: play a ds003720-style run's music at the scanner, from its trigger."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys

from ..console import stderr_console


#: ``--rms-dbfs`` bounds, as ``b2m session --level-dbfs``'s: quieter is inaudible in a scanner, louder clips.
RMS_DBFS_RANGE = (-60.0, -3.0)


def _rms_dbfs(text: str) -> float:
    """``--rms-dbfs``: a level in dBFS RMS within :data:`RMS_DBFS_RANGE`."""
    lo, hi = RMS_DBFS_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a level: give dBFS RMS from {lo:g} to {hi:g} "
                                         "(e.g. -20)") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise argparse.ArgumentTypeError(f"{text} dBFS RMS is out of range: give {lo:g} to {hi:g} (e.g. -20)")
    return value


def check_out(path: str) -> None:
    """Make sure the played events can be written to ``path`` (--out) before anything plays.

    Written only when the run ends: a folder, a missing folder or one not
    writable found then would lose the onsets of a whole scanner run.
    """
    what = f"--out {path}"
    if os.path.isdir(path):
        raise ValueError(f"{what}: a folder; give the events.tsv file to write in it, e.g. "
                         f"{os.path.join(path, 'run-01_events.tsv')}; nothing was played")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{what}: its folder {parent} does not exist; make it first, or give a path in an existing "
                         "folder; nothing was played")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):  # appends nothing: an existing file is kept as it is until the run ends
            pass
    except OSError as e:
        raise ValueError(f"{what}: cannot be written ({(e.strerror or str(e)).lower()}); give a path in a folder "
                         "you can write to; nothing was played") from None
    if not existed:
        os.remove(path)


def add_parser(sub) -> None:
    p = sub.add_parser("present", help="play a run's music (a ds003720 events.tsv) from the scanner's trigger",
                       description="Play the excerpts of a ds003720-style events.tsv at their onsets, counted "
                                   "from the scanner's trigger (the '5' a trigger box types, or at once), on the "
                                   "output's own clock, sample-exact; write the events as played, for `b2m train`. "
                                   "Each excerpt is the audio `b2m train` embeds for that event (2 s fades). Record "
                                   "the volumes with `b2m receive` meanwhile.")
    p.add_argument("events", help="the run's design: a ds003720 events.tsv (onset, duration, genre, track, start, "
                                  "end)")
    p.add_argument("--stimuli", required=True, help="folder of the GTZAN tracks (blues.00098.wav, ...)")
    p.add_argument("--out", required=True, help="events.tsv to write: the design with the onsets as played "
                                                "(and design_onset), ready for the run's BIDS folder")
    p.add_argument("--audio", default="default",
                   help="output device name or index, 'default', or wav:PATH to write what would be played")
    p.add_argument("--in-process-audio", action="store_true",
                   help="run the audio stream in this process (default: an isolated child process)")
    p.add_argument("--trigger", default="key", metavar="key|now|PORT",
                   help="start at the trigger key read on stdin (default), at once, or at the first pulse on "
                        "the trigger box's serial port (e.g. /dev/ttyUSB0), as `b2m session --trigger` reads it")
    p.add_argument("--key", default="5", help="the trigger key (default 5, what most trigger boxes type)")
    p.add_argument("--rms-dbfs", type=_rms_dbfs, default=None, metavar="DBFS",
                   help=f"scale each excerpt to this RMS level, {RMS_DBFS_RANGE[0]:g} to {RMS_DBFS_RANGE[1]:g} dBFS "
                        "(default: as in the file)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _render(events, stimuli: str, rate: int, channels: int, rms_dbfs, console, quiet: bool):
    import numpy as np
    from rich.progress import Progress

    from offline_training.bids import stimulus_segment
    from realtime.present import Excerpt

    rms = None if rms_dbfs is None else 10.0 ** (rms_dbfs / 20.0)
    out = []
    with Progress(console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task("reading the excerpts", total=len(events))
        for e in events:
            try:
                mono = stimulus_segment(e, stimuli, rate, rms=rms).astype(np.float32)
            except ValueError as err:  # a missing file is an OSError that names it; this names the event
                raise ValueError(f"the event at onset {e.onset_s:g} s ({e.stimulus_name}, {e.start_s:g}-"
                                 f"{e.end_s:g} s): {err}") from None
            out.append(Excerpt(onset_s=e.onset_s, audio=np.repeat(mono[:, None], channels, axis=1)))
            bar.advance(task)
    return out


def _write_played(path: str, events, onsets) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["onset", "duration", "genre", "track", "start", "end", "design_onset"])
        for e, t in zip(events, onsets):
            if math.isnan(t):
                continue  # never played: the run was stopped first
            w.writerow([f"{t:.6f}", f"{e.duration_s:g}", e.genre, e.track, f"{e.start_s:g}", f"{e.end_s:g}",
                        f"{e.onset_s:g}"])


def run(args) -> int:
    from offline_training.bids import read_events
    from realtime.audio import AudioDeviceError, open_output
    from realtime.present import present, wait_for_trigger

    console = stderr_console()
    events = sorted(read_events(args.events), key=lambda e: e.onset_s)
    if not events:
        raise ValueError(f"{args.events}: no events to play")
    check_out(args.out)
    try:
        output = open_output(args.audio, isolate=not args.in_process_audio)
    except AudioDeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    with output:
        output.start()
        # every excerpt is read (and every missing file named) before the run can start
        excerpts = _render(events, args.stimuli, output.samplerate, output.channels, args.rms_dbfs, console,
                           args.quiet)
        print(f"ready\t{len(excerpts)} excerpts, {excerpts[-1].onset_s + excerpts[-1].audio.shape[0] / output.samplerate:.1f} s; "
              + ("starting now" if args.trigger == "now" else f"waiting for the trigger (key {args.key!r}"
                 + ("" if args.trigger == "key" else f" on {args.trigger}") + ")"),
              file=sys.stderr, flush=True)
        try:
            t0 = wait_for_trigger(args.trigger, args.key, stop=lambda: bool(stopping))
        except ValueError as e:  # a serial port that cannot be opened
            print(f"error: {e}; nothing was played", file=sys.stderr)
            return 2
        except InterruptedError:
            console.print("[yellow]stopped before the trigger; nothing was played[/yellow]")
            return 130
        except EOFError as e:  # stdin is not the trigger box's keyboard (a pipe that ended, /dev/null)
            print(f"error: {e}; nothing was played (use --trigger now to start at once)", file=sys.stderr)
            return 2
        print("trigger", file=sys.stderr, flush=True)
        from rich.progress import Progress

        with Progress(console=console, disable=args.quiet, transient=True) as bar:
            task = bar.add_task("playing", total=len(excerpts))
            played = present(output, excerpts, t0, stop=lambda: bool(stopping),
                             progress=lambda k, n: bar.update(task, completed=k))
    _write_played(args.out, events, played.onsets_s)
    offsets = [t - e.onset_s for e, t in zip(events, played.onsets_s) if not math.isnan(t)]
    summary = {"excerpts": len(events), "played": len(offsets), "late": played.late, "stopped": played.stopped,
               "onset_minus_design_s": {"min": min(offsets), "max": max(offsets)} if offsets else None,
               "trigger_unix": played.trigger_wall, "out": args.out}
    print(json.dumps(summary), flush=True)
    if played.stopped:
        console.print(f"[yellow]stopped after {len(offsets)} of {len(events)} excerpts[/yellow]; {args.out} lists "
                      "those played")
        return 130
    return 1 if played.late else 0
