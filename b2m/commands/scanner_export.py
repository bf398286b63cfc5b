"""``b2m scanner export RUN.nii DIR``: write a recorded run into a folder as a scanner's NIfTI export would."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from realtime.scanner.export import export_run
from realtime.scanner.pacing import parse_speed

from ..console import stderr_console
from ._link import add_trigger_out_args


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a recorded run into a folder, a volume per file at TR pace "
                                      "(a dry run for scanner watch)",
                       description="Play a scanner's real-time export from a recorded 4-D NIfTI: each volume "
                                   "written into DIR as its own NIfTI (PREFIX_00001.nii, ...) at TR pace, so "
                                   "`b2m scanner watch DIR --vendor nifti` can be tried without a scanner.")
    p.add_argument("run", help="4-D NIfTI file (.nii or .nii.gz)")
    p.add_argument("folder", help="the folder to write into (created if missing)")
    p.add_argument("--tr", type=float, default=None, help="TR in seconds (default: the header's pixdim[4])")
    p.add_argument("--speed", default="1", help="1 = real time, N = N times faster, max = as fast as possible")
    p.add_argument("--prefix", default="vol", help="file name prefix (default vol)")
    add_trigger_out_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    speed = parse_speed(args.speed)
    with Progress(TextColumn("[bold]export[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr_console(), disable=args.quiet) as bar:
        task = bar.add_task("export", total=None)
        try:
            res = export_run(args.run, args.folder, tr_s=args.tr, speed=speed, prefix=args.prefix,
                             trigger_out=args.trigger_out, key=args.trigger_key, recon_delay_s=args.recon_delay,
                             progress=lambda k, n: bar.update(task, completed=k, total=n))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"{len(res.files)}\t{args.folder}", file=sys.stdout, flush=True)
    if args.trigger_out is not None:  # when each pulse went, on this computer's clock (Unix s)
        print("pulses\t" + "\t".join(f"{t:.6f}" for t in res.pulses_unix), file=sys.stdout, flush=True)
    return 0
