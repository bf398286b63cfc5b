"""``b2m scanner replay RUN.nii[.gz]``: stream a recorded run as a scanner would."""

from __future__ import annotations

import json
import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from realtime.scanner.pacing import parse_speed
from realtime.scanner.replay import replay_nifti

from ..console import stderr_console
from ._curve import client_keys
from ._link import add_sender_args, add_trigger_out_args, link_summary, ms_percentile, report_link


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="stream a recorded 4-D NIfTI to a receiver at TR pace",
                       description="Stream a recorded 4-D NIfTI as a scanner would: native dtype, "
                                   "absolute-deadline pacing, every volume kept until acked.")
    p.add_argument("run", help="4-D NIfTI file (.nii or .nii.gz)")
    p.add_argument("--tr", type=float, default=None, help="TR in seconds (default: the header's pixdim[4])")
    p.add_argument("--speed", default="1", help="1 = real time, N = N times faster, max = as fast as acks allow")
    p.add_argument("--run-id", default=None, help="run id (default: from the file name)")
    p.add_argument("--start", type=int, default=0, help="first volume index to send (default 0)")
    p.add_argument("--stop", type=int, default=None, help="stop before this volume index (default: the end)")
    add_sender_args(p)
    add_trigger_out_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    speed = parse_speed(args.speed)
    curve = client_keys(args)
    console = stderr_console()
    with Progress(TextColumn("[bold]replay[/bold] {task.fields[run]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("lag {task.fields[lag]:>6.1f} ms"), TextColumn("unacked {task.fields[unacked]:>3}"),
                  TimeElapsedColumn(), console=console, disable=args.quiet, transient=False) as bar:
        task = bar.add_task("replay", total=None, run=args.run_id or "", lag=0.0, unacked=0)

        def progress(k, n, lag_s, unacked):
            bar.update(task, completed=k, total=n, lag=1e3 * lag_s, unacked=unacked)

        res = replay_nifti(args.run, args.connect, tr_s=args.tr, speed=speed, run_id=args.run_id,
                           start=args.start, stop=args.stop, resend_timeout_s=args.resend_timeout,
                           drain_timeout_s=args.drain_timeout, progress=progress, curve=curve,
                           trigger_out=args.trigger_out, key=args.trigger_key, recon_delay_s=args.recon_delay)
    summary = {**link_summary(res), "held": res.held, "reconnects": res.reconnects,
               "pacing_error_ms_p99": ms_percentile(res.pacing_error_s, 99)}
    if args.trigger_out is not None:  # when each pulse went, on this computer's clock (Unix s)
        summary["pulses_unix"] = res.pulses_unix
    print(json.dumps(summary), file=sys.stdout, flush=True)
    report_link(console, res, args.connect, "Rerun with --start to resume.")
    return 0 if res.all_acked else 1
