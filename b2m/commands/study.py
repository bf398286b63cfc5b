"""``b2m study SESSION... [--out DIR]``: a study's sessions side by side, and real feedback against sham."""

from __future__ import annotations

import json
import os
import sys


#: The defaults of realtime.session.study (FD_MARGIN_MM, TSNR_MARGIN), said here so that building the parser does
#: not import the session package (a second on every b2m command); a test keeps the two the same.
FD_MARGIN_MM, TSNR_MARGIN = 0.05, 0.10


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="sessions side by side: real against sham feedback (the manipulation check)",
                       description="Read each session record (b2m session --out) and print one row per session: "
                                   "real or sham, runs, volumes, switches, mean FD, how close the music heard was "
                                   "to what was decoded (overall and per block), and for a sham how often the "
                                   "participant's own decoding chose what played. Then real against sham on that "
                                   "music match: over participants (each the mean of their sessions; mean, s.d., "
                                   "Welch's t-test), and each sham against the real session it was yoked to "
                                   "(paired t-test). Then the data-quality check: mean FD and tSNR, real against "
                                   "sham, with an equivalence test (TOST) within stated margins.")
    p.add_argument("sessions", nargs="+", metavar="SESSION", help="session folders")
    p.add_argument("--out", metavar="DIR", help="also write study.tsv, study.json and study.html here")
    p.add_argument("--fd-margin", type=float, default=FD_MARGIN_MM, metavar="MM",
                   help=f"equivalence margin of mean FD, real against sham, in mm (default {FD_MARGIN_MM:g})")
    p.add_argument("--tsnr-margin", type=float, default=TSNR_MARGIN, metavar="FRACTION",
                   help="equivalence margin of tSNR, real against sham, as a fraction of the real group's mean "
                        f"(default {TSNR_MARGIN:g}, i.e. +-{100 * TSNR_MARGIN:g}%%)")
    p.set_defaults(func=run)


def run(args) -> int:
    from realtime.session.study import (COLUMNS, cell, compare_groups, compare_yoked, describe_comparison,
                                        describe_equivalence, describe_yoked, quality_check, session_row,
                                        setup_differences)

    for flag, v in (("--fd-margin", args.fd_margin), ("--tsnr-margin", args.tsnr_margin)):
        if not v > 0:
            from ..console import stderr_console

            stderr_console().print(f"[red]error:[/red] {flag} {v}: give a positive equivalence margin "
                                   f"(default {FD_MARGIN_MM if flag == '--fd-margin' else TSNR_MARGIN:g})",
                                   highlight=False)
            return 2
    rows = [session_row(s) for s in args.sessions]
    table = "\n".join(["\t".join(COLUMNS)] + ["\t".join(cell(r[c]) for c in COLUMNS) for r in rows]) + "\n"
    cmp = compare_groups(rows)
    line = "music match (mean cosine of decoded and heard), real against sham: " + describe_comparison(cmp)
    yoked = compare_yoked(rows)
    yoked_line = "music match, each sham against its yoked source: " + describe_yoked(yoked)
    quality = quality_check(rows, args.fd_margin, args.tsnr_margin)  # the confound check: equivalence, not "no p"
    names = {"mean_fd_mm": "mean FD (mm)", "median_tsnr": "tSNR of the decoder's voxels"}
    quality_line = "data quality, real against sham: " + " | ".join(
        f"{names[k]}: {describe_comparison(c)}; {describe_equivalence(c['equivalence'])}" for k, c in quality.items())
    margins_line = (f"equivalence margins (TOST, alpha 0.05): mean FD +-{args.fd_margin:g} mm, tSNR "
                    f"+-{100 * args.tsnr_margin:g}% of the real group's mean")
    notes = setup_differences(rows)
    if args.out:
        os.makedirs(args.out, exist_ok=True)  # an --out that cannot be written is said before the table is
    sys.stdout.write(table)
    print(line)
    print(yoked_line)
    print(quality_line)
    print(margins_line)
    for n in notes:
        print(f"note: {n}")
    if args.out:
        from realtime.session.study import write_study_page

        with open(os.path.join(args.out, "study.tsv"), "w") as f:
            f.write(table)
        with open(os.path.join(args.out, "study.json"), "w") as f:
            json.dump({"sessions": rows, "music_match_real_vs_sham": cmp, "music_match_yoked_pairs": yoked,
                       **{f"{k}_real_vs_sham": c for k, c in quality.items()},
                       "equivalence_margins": {"mean_fd_mm": args.fd_margin, "median_tsnr_fraction_of_real_mean":
                                               args.tsnr_margin, "alpha": 0.05},
                       "not_run_alike": notes}, f, indent=2)
        write_study_page(os.path.join(args.out, "study.html"), rows, cmp, line,
                         quality_line + ". " + margins_line, notes, yoked=yoked_line)
        print(f"wrote {args.out}/study.tsv, study.json, study.html", file=sys.stderr)
    return 0
