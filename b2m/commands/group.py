"""``b2m group BUNDLE [BUNDLE ...] --out DIR``: decoding figures across subjects."""

from __future__ import annotations

import os
import sys

from ..console import stderr_console


def add_parser(sub) -> None:
    p = sub.add_parser("group", help="summarise several subjects' bundles: mean +- s.d., t-test, crossed group CI",
                       description="Read each bundle's per-clip Test scores (metrics.json from `b2m train`) and "
                                   "report raw, centred and within-genre identification per subject and over "
                                   "subjects (mean +- s.d., as Brain2Music reported; one-sided t-test against "
                                   "chance, subjects as the unit; a crossed bootstrap CI that resamples subjects and, "
                                   "shared by every subject of a dataset, the Test clips they all heard). Writes "
                                   "OUT/group.json and OUT/group.html; prints the table.")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folders, one per subject")
    p.add_argument("--out", required=True, help="folder for group.json and group.html")
    p.add_argument("--boot", type=int, default=10000, help="bootstrap replicates (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from offline_training.group import format_group, group_summary, read_subject, write_group_report

    if args.boot < 100:
        stderr_console().print(f"[red]error:[/red] --boot {args.boot}: use at least 100 replicates")
        return 2
    for b in args.bundles:
        if os.path.exists(b) and not os.path.isdir(b):
            raise ValueError(f"BUNDLE {b}: a file, not a bundle folder: give the folder `b2m train --out` wrote "
                             "(it holds metrics.json)")
    subjects = [read_subject(b) for b in args.bundles]
    os.makedirs(args.out, exist_ok=True)  # an --out that cannot be written is said before the bootstrap runs
    summary = group_summary(subjects, n_boot=args.boot, seed=args.seed)
    path = write_group_report(args.out, summary)
    print(format_group(summary), file=sys.stdout)
    stderr_console().print(f"report: {path}", highlight=False)
    return 0
