"""``b2m study SESSION... [--out DIR]``: a study's sessions side by side, and real feedback against sham."""

from __future__ import annotations

import json
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="sessions side by side: real against sham feedback (the manipulation check)",
                       description="Read each session record (b2m session --out) and print one row per session: "
                                   "real or sham, runs, volumes, switches, mean FD, how close the music heard was "
                                   "to what was decoded (overall and per block), and for a sham how often the "
                                   "participant's own decoding chose what played. Then real against sham "
                                   "sessions on that music match (mean, s.d., Welch's t-test).")
    p.add_argument("sessions", nargs="+", metavar="SESSION", help="session folders")
    p.add_argument("--out", metavar="DIR", help="also write study.tsv, study.json and study.html here")
    p.set_defaults(func=run)


def run(args) -> int:
    from realtime.session.study import (COLUMNS, QUALITY, cell, compare_groups, describe_comparison, session_row,
                                        setup_differences)

    rows = [session_row(s) for s in args.sessions]
    table = "\n".join(["\t".join(COLUMNS)] + ["\t".join(cell(r[c]) for c in COLUMNS) for r in rows]) + "\n"
    cmp = compare_groups(rows)
    line = "music match (mean cosine of decoded and heard), real against sham: " + describe_comparison(cmp)
    quality = {k: compare_groups(rows, k) for k in QUALITY}  # the confound check: these should not differ
    names = {"mean_fd_mm": "mean FD (mm)", "median_tsnr": "tSNR of the decoder's voxels"}
    quality_line = "data quality, real against sham: " + " | ".join(
        f"{names[k]}: {describe_comparison(c)}" for k, c in quality.items())
    notes = setup_differences(rows)
    if args.out:
        os.makedirs(args.out, exist_ok=True)  # an --out that cannot be written is said before the table is
    sys.stdout.write(table)
    print(line)
    print(quality_line)
    for n in notes:
        print(f"note: {n}")
    if args.out:
        from realtime.session.study import write_study_page

        with open(os.path.join(args.out, "study.tsv"), "w") as f:
            f.write(table)
        with open(os.path.join(args.out, "study.json"), "w") as f:
            json.dump({"sessions": rows, "music_match_real_vs_sham": cmp,
                       **{f"{k}_real_vs_sham": c for k, c in quality.items()}, "not_run_alike": notes}, f, indent=2)
        write_study_page(os.path.join(args.out, "study.html"), rows, cmp, line, quality_line, notes)
        print(f"wrote {args.out}/study.tsv, study.json, study.html", file=sys.stderr)
    return 0
