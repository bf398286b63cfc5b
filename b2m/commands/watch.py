"""``b2m scanner watch FOLDER --vendor siemens|ge|nifti|philips``: send a run from the scanner's export folder."""

from __future__ import annotations

import json
import signal
import sys

from rich.progress import Progress, TextColumn, TimeElapsedColumn

from realtime.scanner.vendors import VENDORS
from realtime.scanner.watch import watch_folder

from ..console import stderr_console
from ._curve import client_keys
from ._link import add_sender_args, link_summary, ms_percentile, report_link


def add_parser(sub) -> None:
    p = sub.add_parser("watch", help="send each volume the scanner writes into its export folder",
                       description="Watch the folder a scanner exports its images into during a run (a local "
                                   "folder or a network share) and send each volume as soon as all its files are "
                                   "there, every volume kept until acked. Siemens: one mosaic DICOM per volume; "
                                   "GE: one DICOM per slice; nifti: one 3-D NIfTI per volume; philips: one PAR/REC "
                                   "pair per volume (the XTC export), sent as float32 floating-point values. "
                                   "Files are never "
                                   "moved or deleted; an unreadable one is reported by name and skipped. NIfTI "
                                   "volumes are indexed by the number in their file names (vol_00001.nii is volume "
                                   "0; a series numbered from 0 counts from 0), else by the order they are found, "
                                   "a bad file keeping its place. Prints a JSON summary (missing_volumes: the run's "
                                   "volumes not sent). Exit 0: the run sent whole and acked; 1: a message never "
                                   "acked, or a volume missing (see bad_files); 2: a bad option; 130: stopped.")
    p.add_argument("folder", help="the folder the scanner writes into")
    p.add_argument("--vendor", required=True, choices=VENDORS, help="what the scanner writes (see above)")
    p.add_argument("--run-id", default=None, help="run id (default: series-SERIESNUMBER)")
    p.add_argument("--tr", type=float, default=None,
                   help="TR in seconds (default: the DICOM RepetitionTime, or the PAR's Repetition time; Philips XTC "
                        "dumps write 1 ms there, so give it)")
    p.add_argument("--volumes", type=int, default=None,
                   help="volumes in the run (the protocol's measurements): the run ends after this many")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                   help="end the run when no new volume came for this long (default: the longer of 10 s and 5 TRs)")
    p.add_argument("--slices", type=int, default=None,
                   help="GE: slices per volume (default: the DICOM ImagesInAcquisition)")
    p.add_argument("--image-type", type=int, default=None, metavar="CODE",
                   help="Philips: the PAR image_type_mr to send, where a dump holds several (default: 0, magnitude, "
                        "if present, else the lowest code, which is the magnitude in XTC dumps)")
    p.add_argument("--series", default=None,
                   help="only this DICOM SeriesNumber (default: the first series that appears)")
    p.add_argument("--new-subfolder", action="store_true",
                   help="FOLDER is where the scanner makes a folder per series (GE's exam folder, a Siemens "
                        "session folder): wait for the next one to appear and watch it")
    p.add_argument("--include-existing", action="store_true",
                   help="also send the files already in the folder (to resume an interrupted watch; the "
                        "receiver drops volumes it already has)")
    p.add_argument("--poll", type=float, default=0.05, metavar="SECONDS", help="folder scan interval (default 0.05)")
    p.add_argument("--no-inotify", action="store_true",
                   help="find files by folder scans only (by default a file the scanner closes in a local folder "
                        "is read at once)")
    p.add_argument("--give-up", type=float, default=2.0, metavar="SECONDS",
                   help="report a file as bad once it has been unchanged and unreadable this long (default 2)")
    add_sender_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    curve = client_keys(args)
    console = stderr_console()
    stopping = []

    def on_signal(signum, frame):
        if stopping:  # a second Ctrl-C: quit now, even while waiting for a receiver that is down
            raise KeyboardInterrupt
        stopping.append(signum)
        console.print("[yellow]stopping after the volumes already found; press Ctrl-C again to quit now[/yellow]")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Progress(TextColumn("[bold]watch[/bold] {task.fields[folder]}"), TextColumn("sent {task.fields[sent]}"),
                  TextColumn("last volume {task.fields[last]}"), TextColumn("lag {task.fields[lag]:>6.1f} ms"),
                  TextColumn("unacked {task.fields[unacked]:>3}"), TextColumn("bad files {task.fields[bad]}"),
                  TimeElapsedColumn(), console=console, disable=args.quiet, transient=False) as bar:
        task = bar.add_task("watch", total=None, folder=args.folder, sent="0", last="-", lag=0.0, unacked=0, bad=0)

        def progress(n, total, last, lag_s, unacked, bad):
            bar.update(task, sent=f"{n}/{total}" if total else str(n), last=last if last >= 0 else "-",
                       lag=1e3 * lag_s, unacked=unacked, bad=bad)

        res = watch_folder(args.folder, args.vendor, args.connect, run_id=args.run_id, tr_s=args.tr,
                           n_volumes=args.volumes, idle_timeout_s=args.idle_timeout, poll_s=args.poll,
                           series=args.series, include_existing=args.include_existing, give_up_s=args.give_up,
                           events=not args.no_inotify, new_subfolder=args.new_subfolder,
                           slices_per_volume=args.slices, image_type=args.image_type,
                           resend_timeout_s=args.resend_timeout, drain_timeout_s=args.drain_timeout,
                           stop=lambda: bool(stopping), progress=progress, curve=curve,
                           ready=lambda: print(f"watching\t{args.folder}", file=sys.stderr, flush=True))
    summary = {**link_summary(res), "ended": res.ended, "bad_files": res.bad_files, "missing_volumes": res.missing,
               "skipped_series": res.skipped_series, "incomplete_volumes": res.incomplete,
               "folder_lag_ms_min": ms_percentile(res.detect_lag_s, 0),
               "folder_lag_ms_p50": ms_percentile(res.detect_lag_s, 50),
               "folder_lag_ms_p99": ms_percentile(res.detect_lag_s, 99)}
    print(json.dumps(summary), file=sys.stdout, flush=True)
    report_link(console, res, args.connect, "Rerun with --include-existing to resend.")
    if res.ended == "interrupted":
        console.print(f"[yellow]stopped after {res.n_sent} volume(s), without a run end[/yellow]; rerun with "
                      "--include-existing and the same --run-id to resume", highlight=False)
        return 130
    if res.missing:
        console.print(f"[red]the run went without {len(res.missing)} volume(s)[/red] ({res.missing[:20]}"
                      f"{'...' if len(res.missing) > 20 else ''}; see bad_files)", highlight=False)
    return 0 if res.all_acked and not res.missing else 1
