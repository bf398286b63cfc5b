"""``b2m demo``: the whole system in one command, offline, on a simulated participant (see :mod:`b2m.demo`)."""

from __future__ import annotations

import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="simulate a participant, train, and decode a Test run live (about 4 min on 2 cores)",
                       description="Simulate a participant, train and export a decoder, build a library of the "
                                   "music heard, then replay a Test run through the live session over a real "
                                   "loopback socket. Writes OUT/feedback.wav, OUT/summary.json and "
                                   "OUT/report.html; a second run reuses the dataset, bundle and library.")
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--train-runs", type=int, default=4, help="Training runs simulated and trained on (default 4)")
    p.add_argument("--realtime", action="store_true",
                   help="replay at true TR pace with sound through the audio device (--audio)")
    p.add_argument("--audio", default="default", help="with --realtime: output device (default: the default one)")
    p.add_argument("--mode", default="retrieval", choices=["retrieval", "generation"],
                   help="retrieval (play the library's clips) or generation (compose the music live from an "
                        "atlas of 100 generator points, OUT/atlas, built once; about a minute more)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..console import stage_progress, stderr_console

    from b2m.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, train_runs=args.train_runs, realtime=args.realtime, audio=args.audio,
                     mode=args.mode)
    err = stderr_console()
    with stage_progress(err, width=34) as progress:
        s = run_demo(cfg, progress)
    lo, hi = s["live_identification_ci95"]
    print(f"live identification accuracy {s['live_identification_accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, "
          f"{s['n_test_clips']} clips; chance 0.5, permutation p {s['live_identification_p']:.2g})", file=sys.stdout)
    print(f"live vs offline decoding: max |diff| {s['live_vs_offline_max_abs_diff']:.1e} "
          f"({'agree' if s['live_vs_offline_max_abs_diff'] <= 1e-4 else 'DISAGREE'} to 1e-4); "
          f"recorded run bit-exact: {s['recorded_run_bit_exact']}", file=sys.stdout)
    print(f"latency received -> audio scheduled: p50 {s['latency_ms']['p50']:.1f} ms, "
          f"p99 {s['latency_ms']['p99']:.1f} ms; audio underruns {s['audio_underruns']}; "
          f"{s['counts']['switches']} switches, {s['counts']['holds']} motion holds", file=sys.stdout)
    if s.get("tsnr"):
        from realtime.session.report import describe_tsnr

        print(f"temporal SNR of the decoder's voxels: {describe_tsnr(s['tsnr'])}", file=sys.stdout)
    gen = s.get("generator")
    if gen:
        from realtime.session.generation import describe_pieces

        print(f"music composed live: {describe_pieces(gen)}", file=sys.stdout)
        if gen["sync_renders"] and not args.realtime:  # these TRs dominate the p99 of an accelerated replay
            print(f"  replayed at {s['throughput_tr_per_s']} TR/s into a WAV on the scanner's clock, music is "
                  "rendered as it is decided (so the file never depends on thread timing); at TR pace on a "
                  "device the generator renders ahead and a TR never waits for it", file=sys.stdout)
    sync = (s.get("clip_loads") or {}).get("sync_loads", 0)
    if sync:  # these TRs dominate the p99 of an accelerated replay
        print(f"  {sync} of the switches read their clip on the spot: replayed at {s['throughput_tr_per_s']} TR/s, "
              "the clip loader cannot prefetch in time (at TR pace it has 1.5 s)", file=sys.stdout)
    print(f"wrote {s['paths']['report']}, {args.out}/summary.json"
          + (f", {s['paths']['feedback_wav']}" if s["paths"]["feedback_wav"] else "")
          + f" in {s['wall_s']:.0f} s", file=sys.stdout)
    session = os.path.join(args.out, "session")
    print(f"the session record: b2m session replay {session}; b2m session export {session} --bids "
          f"{os.path.join(args.out, 'bids')} --subject 001", file=sys.stderr)
    ok = s["live_vs_offline_max_abs_diff"] <= 1e-4 and s["recorded_run_bit_exact"]
    return 0 if ok else 1
