"""``b2m session``: the live loop (receive, decode, choose music, play it), ``b2m session replay`` and
``b2m session export``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from realtime.triggers import DEFAULT_KEY

from ..console import stderr_console
from ._curve import add_server_args, server_keys
from .control import DEFAULT_CONTROL

log = logging.getLogger("b2m.session")

DEFAULT_RESULTS = "tcp://127.0.0.1:5556"


def _level(text: str) -> float | None:
    """``--level-dbfs``: a number of dBFS, or ``none``; its bounds are :class:`SessionOptions`'."""
    from realtime.session.engine import SessionOptions

    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a level: give dBFS RMS (e.g. -20) or none") from None
    try:
        SessionOptions(level_dbfs=value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def add_parser(sub) -> None:
    from realtime.feedback import PolicyConfig
    from realtime.transport import DEFAULT_ENDPOINT

    d = PolicyConfig()
    p = sub.add_parser(
        "session", help="run a neurofeedback session (or `b2m session replay|export SESSION`)",
        description="Receive volumes from the scanner, record them, decode each TR with the model bundle, "
                    "choose music from the library and play it. `b2m session replay SESSION` reruns a recorded "
                    "session through the same bundle and library and checks every decision is reproduced. `b2m session "
                    "export SESSION --bids DIR --subject 01` writes its runs as BIDS, with the music heard as "
                    "each run's events.tsv.")
    p.add_argument("action", nargs="?", choices=["replay", "export"],
                   help="replay a recorded session (with --out NEW: rerun it with another --model, --library, "
                        "--protocol or policy, into a new record), or export it as BIDS (give its folder)")
    p.add_argument("session", nargs="?", help="with `replay` or `export`: the session folder")
    p.add_argument("--model", help="model bundle folder (from `b2m train`)")
    p.add_argument("--library", help="music library folder (from `b2m library build`)")
    p.add_argument("--out", help="session record folder (an existing one is continued)")
    p.add_argument("--bind", default=DEFAULT_ENDPOINT, help=f"scanner link endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--audio", default="default",
                   help="output device name or index, 'default', or wav:PATH to write what would be played")
    p.add_argument("--in-process-audio", action="store_true",
                   help="run the audio stream in this process (default: an isolated child process)")
    p.add_argument("--mode", default="retrieval", choices=["retrieval", "generation"],
                   help="how music follows the decoded embedding: retrieval (play the library clip) or "
                        "generation (compose the chosen generator point's piece live; needs a library from "
                        "`b2m library build --generate N`)")
    p.add_argument("--segment-bars", type=int, default=4,
                   help="generation: bars rendered per segment (default 4)")
    p.add_argument("--level-dbfs", type=_level, default=-20.0, metavar="DBFS",
                   help="play every clip (or generated piece) at this RMS level, peaks under -1 dBFS, so no "
                        "switch changes the loudness, as ds003720's stimuli were RMS-normalised (default -20; "
                        "lower is quieter; 'none': the files' own levels)")
    p.add_argument("--yoked-from", metavar="SESSION",
                   help="sham feedback (a control group): play what the participant of this earlier session "
                        "heard, run by run and volume by volume, instead of this participant's own decoding "
                        "(which is still recorded); same --library and --mode as that session")
    p.add_argument("--protocol", metavar="BLOCKS.tsv",
                   help="a block design for every run: a TSV of onset, duration (s from the run's first volume) and "
                        "condition (feedback, silence or neutral: the neutral clip whatever is decoded); time outside "
                        "the blocks is feedback")
    p.add_argument("--allocation", metavar="FILE",
                   help="blinded operator: a TSV (participant_id, condition real|sham, yoked_from) written by "
                        "someone else; with --participant, the session is real or yoked as the file says, and "
                        "nothing on screen, in the report or on stdout tells which")
    p.add_argument("--participant", metavar="ID", help="with --allocation: this participant's participant_id")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"ZeroMQ PUB endpoint for per-TR results "
                   f"(default {DEFAULT_RESULTS}; 'none' to disable)")
    p.add_argument("--control", default=DEFAULT_CONTROL, metavar="ENDPOINT",
                   help=f"where the operator mutes, unmutes and sets the level (`b2m control mute`, the monitor's "
                        f"buttons; default {DEFAULT_CONTROL}, or any free port if another session holds it; "
                        "'none' to disable). Every change is kept in SESSION/operator.tsv")
    p.add_argument("--pyneal-port", type=int, default=None,
                   help="also serve Pyneal-style results on this TCP port (0: any free port)")
    p.add_argument("--runs", type=int, default=None, help="stop after this many runs have ended (default: run "
                   "until SIGINT/SIGTERM)")
    p.add_argument("--no-dashboard", action="store_true", help="no live terminal view (scripts)")
    t = p.add_argument_group("scanner trigger (optional: when each volume began, on this computer's clock)")
    t.add_argument("--trigger", metavar="PORT", default=None,
                   help="read the scanner's trigger pulses: a serial port (e.g. /dev/ttyUSB0), a FIFO, or stdin "
                        "(a box that types the key into this terminal). Every pulse is kept in SESSION/triggers.tsv; "
                        "the export places each run's music from the pulse of its first volume, and the summary "
                        "gives each run's image delay")
    t.add_argument("--trigger-key", default=DEFAULT_KEY, help=f"the character of a pulse (default {DEFAULT_KEY})")
    t.add_argument("--trigger-baud", type=int, default=None, metavar="BAUD",
                   help="serial speed (default 57600; as the trigger box's manual says)")
    t.add_argument("--trigger-dummies", type=int, default=0, metavar="N",
                   help="pulses the scanner sends before the first saved volume of a run (dummy scans; default 0)")
    t.add_argument("--response-keys", default="", metavar="KEYS",
                   help="the participant's buttons on the trigger input (a trigger box with a button box), e.g. "
                        "1234: each press is kept in SESSION/responses.tsv and exported as a response event")
    p.add_argument("--check", action="store_true",
                   help="pre-flight: load the bundle and library, time the decoder, bind the endpoints and play "
                        "the neutral clip on --audio, print PASS/FAIL per part and exit (1 if any failed); "
                        "with --out, the free space on its disk")
    p.add_argument("--insecure", action="store_true", help="allow non-loopback endpoints without CURVE keys")
    add_server_args(p)
    p.add_argument("--no-fsync", action="store_true", help=argparse_suppress())
    e = p.add_argument_group("export (b2m session export SESSION --bids DIR --subject 01)")
    e.add_argument("--bids", metavar="DIR", help="BIDS root to write the session's runs into (created or added to)")
    e.add_argument("--subject", help="BIDS subject label (letters and digits, e.g. 01)")
    e.add_argument("--ses", default=None, help="BIDS session label (default: none)")
    e.add_argument("--task", default="neurofeedback", help="BIDS task label (default neurofeedback; Training or Test "
                                                           "for runs recorded with `b2m present`)")
    e.add_argument("--run-ids", default=None, metavar="ID,ID,...",
                   help="only these runs of the record, numbered run-01, run-02, ... in this order")
    e.add_argument("--events", action="append", default=[], metavar="RUN_ID=FILE",
                   help="use FILE (`b2m present --out`) as that run's events.tsv (repeat per run); it is checked "
                        "as `b2m train` reads it")
    # the policy's defaults are None here, so a rerun (`replay SESSION --out NEW`) keeps the recorded value of
    # every option not given; a live session takes PolicyConfig's (_policy)
    g = p.add_argument_group("feedback policy (with `replay SESSION --out NEW`: the session's own, unless given)")
    g.add_argument("--smooth-trs", type=int, default=None, help=f"TRs averaged (default {d.smooth_trs})")
    g.add_argument("--top-k", type=int, default=None, help=f"candidates retrieved (default {d.k})")
    g.add_argument("--margin", type=float, default=None,
                   help=f"cosine margin a new clip must win by (default {d.margin})")
    g.add_argument("--min-dwell", type=float, default=None,
                   help=f"minimum seconds between switches (default {d.min_dwell_s})")
    g.add_argument("--crossfade", type=float, default=None, help=f"seconds (default {d.crossfade_s})")
    g.add_argument("--align", default=None, choices=["bar", "beat", "none"],
                   help=f"where switches land in the music (default {d.align})")
    p.set_defaults(func=run)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def _policy(args, base=None):
    """The feedback policy the options give; an option not given is ``base``'s (default: PolicyConfig's)."""
    from realtime.feedback import POLICY_OPTIONS, PolicyConfig

    base = base or PolicyConfig()
    given = {field: getattr(args, option[2:].replace("-", "_")) for field, option in POLICY_OPTIONS.items()}
    return PolicyConfig(**{**base.to_dict(), **{k: v for k, v in given.items() if v is not None}})


def _same_parts_without_out(args) -> None:
    """`b2m session replay SESSION` checks the session's own decisions: an option that would change them
    (another model, library, block design or policy) needs ``--out NEW``, a rerun; said, not ignored."""
    from realtime.feedback import POLICY_OPTIONS, PolicyConfig
    from realtime.session import read_session_info
    from realtime.session.protocol import Protocol, read_protocol

    info = read_session_info(args.session)
    other = [f"--{k}" for k in ("model", "library")
             if getattr(args, k) and os.path.realpath(getattr(args, k)) != os.path.realpath(info[k])]
    if args.protocol:
        ran_blocks = Protocol.of_session(info)
        if ran_blocks is None or read_protocol(args.protocol).blocks != ran_blocks.blocks:
            other.append("--protocol")
    ran = PolicyConfig(**info["policy"]).to_dict()
    asked = _policy(args, PolicyConfig(**info["policy"])).to_dict()
    other += [opt for field, opt in POLICY_OPTIONS.items() if asked[field] != ran[field]]
    if other:
        raise ValueError(f"{', '.join(other)} would change what the session decided, and a replay checks its "
                         "decisions with the parts and policy it ran with. To hear what they would have played "
                         f"to the same volumes, rerun it: b2m session replay {args.session} --out NEW "
                         f"{' '.join(other)} ...")


def run(args) -> int:
    args.blind = _allocate(args)
    if args.action == "replay":
        if not args.session:
            raise ValueError("`b2m session replay` needs the session folder: b2m session replay SESSION")
        if args.out:
            return run_rerun(args)
        _same_parts_without_out(args)
        return run_replay(args.session)
    if args.action == "export":
        missing = [o for o, v in (("SESSION", args.session), ("--bids", args.bids), ("--subject", args.subject)) if not v]
        if missing:
            raise ValueError(f"`b2m session export` needs {', '.join(missing)}: "
                             "b2m session export SESSION --bids DIR --subject 01")
        return run_export(args)
    if args.check:
        return run_check(args)
    missing = [f"--{k}" for k in ("model", "library", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"b2m session needs {', '.join(missing)} (see b2m session --help)")
    return run_live(args)


def run_check(args) -> int:
    from realtime.session.preflight import format_checks, preflight

    missing = [f"--{k}" for k in ("model", "library") if not getattr(args, k)]
    if missing:
        raise ValueError(f"b2m session --check needs {', '.join(missing)} (see b2m session --help)")
    checks = preflight(args.model, args.library, audio=args.audio, isolate=not args.in_process_audio,
                       bind=args.bind, results=args.results, pyneal_port=args.pyneal_port, insecure=args.insecure,
                       curve=server_keys(args), mode=args.mode, segment_bars=args.segment_bars,
                       yoked_from=args.yoked_from, blind=args.blind, protocol=args.protocol,
                       level_dbfs=args.level_dbfs, trigger=args.trigger, trigger_key=args.trigger_key,
                       trigger_baud=args.trigger_baud, out=args.out, control=args.control,
                       control_fallback=args.control == DEFAULT_CONTROL)
    print(format_checks(checks))
    failed = [c.name for c in checks if not c.ok]
    warned = [c.name for c in checks if c.ok and c.warn]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
          + (f"; fix: {', '.join(failed)}" if failed else ": ready for a session")
          + (f" ({len(warned)} with a warning, worth putting right: {', '.join(warned)})" if warned else ""),
          file=sys.stderr)
    return 1 if failed else 0


def open_parts(model: str, library: str):
    from music.library import Library
    from realtime.decoder import Decoder

    return Decoder(model, threads=1), Library(library)


def run_live(args) -> int:
    from realtime.audio import AudioDeviceError, open_output
    from realtime.receiver import Receiver
    from realtime.results import PynealResultsServer, ResultsPublisher
    from protocols.session import SessionLock, SessionRecord
    from realtime.session import Dashboard, SessionEngine, session_info, write_session_info
    from realtime.session.engine import SessionOptions
    from realtime.session.generation import atlas_points
    from realtime.session.protocol import read_protocol
    from realtime.session.replay import recorded_decisions, recorded_volumes

    curve = server_keys(args)  # a bad key file stops the session before anything starts
    if args.response_keys and args.trigger is None:
        print("error: --response-keys reads the buttons on the trigger input: give --trigger PORT too",
              file=sys.stderr)
        return 2
    if args.trigger_dummies < 0:
        print(f"error: --trigger-dummies must be 0 or more, got {args.trigger_dummies}", file=sys.stderr)
        return 2

    decoder, library = open_parts(args.model, args.library)
    policy = _policy(args)
    options = SessionOptions(mode=args.mode, segment_bars=args.segment_bars, level_dbfs=args.level_dbfs)
    protocol = read_protocol(args.protocol) if args.protocol else None
    if args.mode == "generation":
        atlas_points(library)  # a library that is not generated: the error says what to do, before anything opens
    # an --out with decisions in it is an interrupted session, continued: read them once, here
    recorded, offsets = recorded_decisions(args.out)
    yoked = _yoked(args, library, continuing=bool(recorded))
    _same_setup(args.out, protocol, decoder, library, args.model, args.library, continuing=bool(recorded))
    # one session writes a folder: a second one (an operator who thinks the first has hung) is refused before
    # it writes anything (what it read above, it read without changing); the claim, never released, ends with
    # this process
    SessionLock(args.out)
    if yoked is not None:
        from realtime.session.yoked import write_yoked

        write_yoked(args.out, yoked)
    if args.blind:
        print(f"allocation\t{args.allocation}\tparticipant {args.participant}: condition blinded", file=sys.stderr,
              flush=True)
    elif yoked is not None:
        print(f"yoked\t{yoked['source']}\t{len(yoked['runs'])} runs: sham feedback", file=sys.stderr, flush=True)
    from ..console import record_log_handler

    logging.getLogger("b2m").addHandler(record_log_handler(os.path.join(args.out, "session.log")))
    try:
        output = open_output(args.audio, isolate=not args.in_process_audio)
    except AudioDeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    triggers = None
    if args.trigger is not None:
        from realtime.triggers import TriggerInput, TriggerLog

        try:
            triggers = TriggerLog(TriggerInput(args.trigger, args.trigger_key, args.trigger_baud,
                                               responses=args.response_keys), args.out)
        except ValueError as e:
            output.close()
            print(f"error: {e}", file=sys.stderr)
            return 2
    stop = threading.Event()
    ended: list[str] = []
    parts: list = []

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def run_over(run_id, *_):
        if run_id in ended:  # a run that ended with gaps and was completed later ends once
            return
        ended.append(run_id)
        print(f"run\t{run_id}\tended", file=sys.stderr, flush=True)
        if args.runs is not None and len(ended) >= args.runs:
            stop.set()

    publisher = pyneal = dashboard = control = keys = engine = keeper = None
    not_recorded = 0
    try:
        output.start()
        parts.append(output)
        if args.results and args.results != "none":
            publisher = ResultsPublisher(args.results, insecure=args.insecure, curve=curve)
            print(f"results\t{publisher.endpoint}", file=sys.stderr, flush=True)
        if args.pyneal_port is not None:
            pyneal = PynealResultsServer(port=args.pyneal_port, insecure=args.insecure)
            print(f"pyneal\t{pyneal.host}:{pyneal.port}", file=sys.stderr, flush=True)
        engine = SessionEngine(decoder, library, output, policy, options, record_dir=args.out,
                               publisher=publisher, pyneal=pyneal, run_offsets=offsets, yoked=yoked,
                               protocol=protocol)
        if offsets:  # a session folder with decisions in it: an interrupted session, continued
            rec = SessionRecord(args.out, sync=False)
            ended_runs = {r for r, run in rec.runs.items() if run.ended}
            caught = engine.resume(recorded_volumes(args.out), ended_runs, logged=recorded)
            log.info("continuing the session in %s: state rebuilt from %d recorded volumes of %s",
                     args.out, caught["volumes"], ", ".join(caught["runs"]) or "no open run")
        from realtime.session.operator import OperatorControl

        operator = OperatorControl(engine, args.out, level_dbfs=args.level_dbfs)
        control = _control_server(args, operator, curve)
        from realtime.session.alerts import AudioWatch

        audio = AudioWatch(output)  # a device that stops (a JACK server gone) is said, not silent
        keeper = _audio_keeper(args, engine, audio, output)
        if keeper is not None:
            parts.append(keeper)
            engine.on_new_output = lambda out: (operator.reapply(out), keeper.taken(out))
            keeper.start()
        info = session_info(engine, args.model, args.library, args.audio)
        info["control"] = control.endpoint if control is not None else None
        info["protocol"] = protocol.to_dict() if protocol is not None else None
        info["trigger"] = ({"input": args.trigger, "key": args.trigger_key, "dummies": args.trigger_dummies,
                            "response_keys": args.response_keys} if triggers is not None else None)
        if args.blind:
            info["allocation"] = {"file": os.path.abspath(args.allocation), "participant": args.participant}
        write_session_info(args.out, info)
        with Receiver(args.out, args.bind, insecure=args.insecure, curve=curve, sync=not args.no_fsync,
                      on_volume=engine.on_volume, on_run_complete=run_over, on_run_gaps=run_over) as rx:
            from realtime.session.alerts import standing_alerts

            # in every result: the monitor shows them
            engine.alerts = lambda: standing_alerts(engine, rx, triggers, operator, audio)
            if triggers is not None:
                # the scanner has started: an operator's sound check ends at its first pulse, not a TR later
                triggers.on_pulses = lambda _: engine.soundchecking and engine.call_soon(
                    lambda: engine.soundcheck(False))
                triggers.start()
                print(f"trigger\t{args.trigger}\tkey {args.trigger_key!r}", file=sys.stderr, flush=True)
            print(f"ready\t{rx.endpoint}", file=sys.stderr, flush=True)
            if not args.no_dashboard:
                from realtime.session.keys import OperatorKeys

                if args.trigger not in ("-", "stdin"):  # stdin may carry the trigger box's keys instead
                    keys = OperatorKeys(operator).start()  # None unless stdin is a terminal
                dashboard = Dashboard(engine, rx, engine.preprocess.motion_config.fd_threshold_mm,
                                      blind=args.blind, triggers=triggers, operator=operator,
                                      keys=keys is not None, audio=audio).start()
            rx.serve(stop, idle=engine.keep_playing)  # generated music goes on between runs
            rx.wait_exports()
            not_recorded = rx.stats.not_recorded
        try:
            engine.finish()
        except Exception:  # the audio's tail (a WAV sink on a full disk, a device gone): the record is safe
            log.exception("could not finish the audio output; the session record is complete as received")
    finally:
        if keys is not None:
            keys.stop()  # the terminal's settings back
        if dashboard is not None:
            dashboard.stop()
        if triggers is not None:
            triggers.stop()
        for part in (control, publisher, pyneal):
            if part is not None:
                part.close()
        for part in reversed(parts):  # the keeper before the output it watches
            part.close()
        if engine is not None and engine.output is not output:  # a device reopened mid-session
            engine.output.close()
    from realtime.session.decisions import session_results
    from realtime.session.operator import read_unheard
    from realtime.session.report import music_match, write_session_report

    results = session_results(args.out)
    summary = session_summary(engine, ended)
    summary["blinded"] = args.blind
    summary["protocol"] = protocol.to_dict() if protocol is not None else None
    summary["music_match"] = music_match(results, library, read_unheard(args.out))  # TRs no one heard left out
    summary["triggers"] = _trigger_summary(args, triggers)
    if summary.get("yoked"):
        from realtime.session.yoked import own_agreement

        summary["yoked"]["own_agreement"] = own_agreement(args.out)
    summary["not_recorded"] = not_recorded  # messages the disk refused at least once (each sent again)
    summary["operator"] = operator.summary() if control is not None or operator.history else None
    summary["audio_outages"] = keeper.summary() if keeper is not None else None
    if summary["audio_outages"]:
        from realtime.session.audio_keeper import describe_outage

        for o in summary["audio_outages"]:
            print(f"audio\t{describe_outage(o)}", file=sys.stderr, flush=True)
    if summary["operator"] and summary["operator"]["changes"]:
        from realtime.session.operator import describe_changes

        print(f"operator\t{describe_changes(summary['operator'])}", file=sys.stderr, flush=True)
    if summary.get("tsnr"):
        from realtime.session.report import describe_tsnr

        print(f"tsnr\t{describe_tsnr(summary['tsnr'])}", file=sys.stderr, flush=True)
    written = True
    try:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        write_session_report(os.path.join(args.out, "report.html"), summary, results, library,
                             engine.preprocess.motion_config.fd_threshold_mm)
    except OSError as e:  # a full disk: the record holds what was acked; say what could not be written
        written = False
        print(f"error: could not write the summary or report in {args.out} ({e.strerror}); the session record "
              "holds every volume acked",
              file=sys.stderr)
    except Exception:  # the record and summary are written; a plotting problem must not hide them
        log.exception("could not write %s", os.path.join(args.out, "report.html"))
    lat = summary["latency_ms"].get("total", {})
    if summary["music_match"] and not args.blind:  # a sham's music matches worse: it would unblind
        print("music heard vs decoded, mean cosine: " + ", ".join(
            f"{k} {_cos(v['mean_cosine'])} ({v['n']} TRs" + (f"; {v['unheard']} unheard left out)" if v.get("unheard")
                                                             else ")") for k, v in summary["music_match"].items()))
    if summary.get("yoked") and not args.blind:
        y = summary["yoked"]
        agree = "n/a" if y["own_agreement"] is None else f"{y['own_agreement']:.1%}"
        print(f"yoked: {y['trs']} TRs played from {y['source']}; the participant's own "
              f"decoding chose the clip that played at {agree} of decoded TRs")
    print(f"session: {summary['counts']['volumes']} volumes, {summary['counts']['decoded']} decoded, "
          f"{summary['counts']['switches']} switches, {summary['counts']['holds']} motion holds, "
          f"{summary['counts']['errors']} errors; latency p50 {lat.get('p50', float('nan')):.2f} ms, "
          f"p99 {lat.get('p99', float('nan')):.2f} ms; audio underruns {summary['audio_underruns']}")
    if not_recorded:
        print(f"disk: {not_recorded} message(s) could not be recorded when they came (sent again by the scanner "
              f"side; the record holds every volume acked): check the disk of {args.out}", file=sys.stderr)
    return 0 if written else 1


def _cos(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _audio_keeper(args, engine, watch, output):
    """Reopens the sound device if it stops: for a device in its own process (the default), not a WAV sink."""
    from realtime.audio import IsolatedOutput, open_output
    from realtime.session.audio_keeper import AudioKeeper

    if not isinstance(output, IsolatedOutput):
        return None
    return AudioKeeper(engine, watch, lambda: open_output(args.audio, isolate=True), args.out)


def _control_server(args, operator, curve):
    """The operator's control socket (None for --control none); the default port, if taken, moves to a free one."""
    from realtime.session.operator import ControlServer

    if args.control in (None, "", "none"):
        return None
    try:
        server = ControlServer(operator, args.control, insecure=args.insecure, curve=curve)
    except ValueError:
        if args.control != DEFAULT_CONTROL:
            raise
        server = ControlServer(operator, DEFAULT_CONTROL.rsplit(":", 1)[0] + ":*", curve=curve)
        log.warning("%s is taken (another session?): the operator's control is on %s (b2m control --connect %s)",
                    DEFAULT_CONTROL, server.endpoint, server.endpoint)
    print(f"control\t{server.endpoint}", file=sys.stderr, flush=True)
    return server.start()


def _trigger_summary(args, triggers) -> dict | None:
    """The trigger input and each run's pulses (:func:`realtime.session.bids.run_triggers`); one line per run on
    stderr."""
    if triggers is None:
        return None
    from protocols.session import SessionRecord
    from realtime.session.bids import run_triggers
    from realtime.triggers import describe_triggers

    pulses = triggers.pulses()
    runs = {}
    for run_id, run in sorted(SessionRecord(args.out, sync=False).runs.items()):
        if run.received and run.geometry:
            runs[run_id] = run_triggers(run, pulses, args.trigger_dummies).to_dict()
            print(f"trigger\t{run_id}\t{describe_triggers(runs[run_id])}", file=sys.stderr, flush=True)
    if args.response_keys:
        from collections import Counter

        by = Counter(b for _, b in triggers.presses)
        n = len(triggers.presses)
        print(f"responses\t{n} press{'es' if n != 1 else ''}" + (" (" + ", ".join(
            f"{b}: {k}" for b, k in sorted(by.items())) + ")" if by else ""), file=sys.stderr, flush=True)
    return {**triggers.summary(), "key": args.trigger_key, "dummies": args.trigger_dummies,
            "response_keys": args.response_keys, "runs": runs}


def session_summary(engine, ended) -> dict:
    from protocols.provenance import provenance
    from realtime.clocks import host_clock_sync

    st = engine.stats()
    audio = st.get("audio") or {}
    return {"runs_ended": ended, "mode": engine.options.mode, "counts": st["counts"], "latency_ms": st["latency_ms"],
            "audio_underruns": audio.get("underruns"), "audio": audio, "clips": st.get("clips"),
            "pieces": st.get("pieces"), "yoked": st.get("yoked"),
            "clock_offset_s": st.get("clock_offset_s"),  # per run: this computer's clock minus the scanner side's
            "alignment": st.get("alignment"),  # runs found against the model's reference from another session
            "tsnr": st.get("tsnr"),  # each run's temporal SNR of the decoder's voxels, and the Training runs
            "host_clock": host_clock_sync(),  # whether NTP (or PTP) kept this computer's clock, at the session's end
            # which code ran the session, and which trained its model (the bundle's own block)
            "provenance": provenance(), "model_provenance": engine.decoder.manifest.get("provenance")}


def _same_setup(out: str, protocol, decoder, library, model: str, library_path: str, *, continuing: bool) -> None:
    """A session continued in ``out`` keeps the model, library and block design it began with (else its
    decisions would not replay)."""
    from realtime.session.protocol import Protocol
    from realtime.session.replay import SESSION_JSON, changed_parts, read_session_info

    if not continuing or not os.path.exists(os.path.join(out, SESSION_JSON)):
        return
    info = read_session_info(out)
    changed = changed_parts(info, decoder, library, model, library_path)
    if changed:  # its state is rebuilt by deciding its recorded volumes again: with other parts, other decisions
        raise ValueError("; ".join(changed) + f". Continue {out} with the model and library it began with, or "
                         "start a new --out")
    before = Protocol.of_session(info)
    if (before and before.blocks) != (protocol and protocol.blocks):
        raise ValueError(f"{out} began " + (f"with the blocks of {before.source}" if before else "without a --protocol")
                         + "; continue it with the same --protocol, or start a new --out")


def _allocate(args) -> bool:
    """``--allocation FILE --participant ID``: set ``args.yoked_from`` as the file says; whether the run is blinded."""
    if args.allocation is None and args.participant is None:
        return False
    if args.allocation is None or args.participant is None:
        raise ValueError("--allocation and --participant go together: b2m session --allocation FILE --participant ID")
    if args.yoked_from is not None:
        raise ValueError("--yoked-from and --allocation both say whose music to play; give one (the allocation "
                         "keeps the operator blinded)")
    from realtime.session.yoked import read_allocation

    args.yoked_from = read_allocation(args.allocation, args.participant)
    return True


def _yoked(args, library, *, continuing: bool) -> dict | None:
    """A sham session's schedule: read from ``--yoked-from``, or kept in ``--out`` by the session continued."""
    from realtime.session.yoked import read_yoked, yoked_schedule

    def refuse(why: str):
        if args.blind:  # said without saying which condition is which
            why = (f"{args.out} was run under another condition than {args.allocation} now gives participant "
                   f"{args.participant}; check the allocation, or start a new --out")
        raise ValueError(why)

    kept = read_yoked(args.out) if os.path.isdir(args.out) else None
    if args.yoked_from is None:
        if kept is not None and args.blind:
            refuse("")
        if kept is not None:
            log.warning("%s is a sham session (yoked to %s): it continues as one", args.out, kept["source"])
        return kept
    if os.path.abspath(args.yoked_from) == os.path.abspath(args.out):
        raise ValueError(f"--yoked-from {args.yoked_from} is this session's own --out; give the folder of another "
                         "participant's session")
    sched = yoked_schedule(args.yoked_from, library, args.mode, args.level_dbfs)
    if kept is not None and kept != sched:
        refuse(f"{args.out} was yoked to {kept['source']} as it was then; --yoked-from {args.yoked_from} now plays "
               "something else. Continue without --yoked-from, or start a new --out")
    if kept is None and continuing:
        refuse(f"{args.out} already holds decisions of real feedback; a sham session needs a new --out")
    return sched


def run_export(args) -> int:
    from music.library import Library
    from offline_training.bids import read_events
    from realtime.session.bids import export_bids
    from realtime.session.replay import SESSION_JSON, read_session_info

    if not os.path.isdir(args.session):
        raise ValueError(f"{args.session}: no such folder; give a session record (b2m session --out, or b2m receive "
                         "--out)")
    info = read_session_info(args.session) if os.path.exists(os.path.join(args.session, SESSION_JSON)) else {}
    lib_path = args.library or info.get("library")
    library = Library(lib_path, check_hashes=False) if lib_path else None
    if library is None and not args.events:
        print(f"no library: {args.session} has no {SESSION_JSON} (a `b2m receive` record?) and --library was not "
              "given, so no events.tsv is written (--events RUN_ID=FILE gives a run's)", file=sys.stderr)
    events = {}
    for item in args.events:
        run_id, sep, path = item.partition("=")
        if not sep or not run_id or not path:
            raise ValueError(f"--events {item!r}: give RUN_ID=FILE, e.g. --events train1=played1.tsv")
        read_events(path)  # names the line and column at fault, as `b2m train` would
        events[run_id] = path
    runs = [r for r in args.run_ids.split(",") if r] if args.run_ids else None
    from realtime.session.protocol import Protocol

    protocol = Protocol.of_session(info)
    res = export_bids(args.session, args.bids, args.subject, session=args.ses, task=args.task, library=library,
                      mode=info.get("mode", "retrieval"), runs=runs, events=events, protocol=protocol,
                      trigger_dummies=int((info.get("trigger") or {}).get("dummies") or 0))
    for run_id, number in res["runs"].items():
        print(f"{run_id}\trun-{number:02d}")
    for path in res["written"]:
        print(f"wrote {path}", file=sys.stderr)
    for run_id, why in res["skipped"].items():
        print(f"skipped run {run_id}: {why}; it is still in the record (export it again once complete)",
              file=sys.stderr)
    return 1 if res["skipped"] else 0


def run_rerun(args) -> int:
    """``b2m session replay SESSION --out NEW``: what another model, library, block design or feedback policy
    would have played to the session's recorded volumes, as a new session record (its volumes copied, its
    decisions, the music as NEW/feedback.wav, summary.json and report.html), compared with the session's.
    What is not given is the session's own; its mode, segment length and level always are."""
    from rich.progress import Progress

    from protocols.session import SessionRecord
    from realtime.audio import open_output
    from realtime.feedback import PolicyConfig
    from realtime.session import SessionEngine, read_session_info, session_info, write_session_info
    from realtime.session.decisions import session_results
    from realtime.session.engine import SessionOptions
    from realtime.session.protocol import Protocol, read_protocol
    from realtime.session.replay import copy_received, recorded_decisions, replay_session
    from realtime.session.report import write_session_report
    from realtime.session.yoked import read_yoked, write_yoked

    info = read_session_info(args.session)
    if not recorded_decisions(args.session)[0]:
        raise ValueError(f"{args.session} holds no decisions to compare with: give a folder written by b2m session")
    model, library_path = args.model or info["model"], args.library or info["library"]
    decoder, library = open_parts(model, library_path)
    policy = _policy(args, PolicyConfig(**info["policy"]))
    options = SessionOptions(**info.get("options", {}))
    protocol = read_protocol(args.protocol) if args.protocol else Protocol.of_session(info)
    yoked = read_yoked(args.session)
    copied = copy_received(args.session, args.out)
    if yoked is not None:
        write_yoked(args.out, yoked)
    wav = os.path.join(args.out, "feedback.wav")
    output = open_output(f"wav:{wav}").start()
    rerun_of = {**{k: info.get(k) for k in ("model", "library", "policy", "protocol")},
                "session": os.path.abspath(args.session)}
    engines = []

    def engine_at(offsets):  # the replay's engine, recording into the new folder
        engine = SessionEngine(decoder, library, output, policy, options, record_dir=args.out, run_offsets=offsets,
                               yoked=yoked, protocol=protocol)
        new = session_info(engine, model, library_path, f"wav:{wav}")
        new["protocol"] = protocol.to_dict() if protocol is not None else None
        new["rerun_of"] = rerun_of
        write_session_info(args.out, new)
        engines.append(engine)
        return engine

    with Progress(console=stderr_console(), transient=True) as bar:  # stdout is for the results
        task = bar.add_task("rerunning", total=None)
        report = replay_session(args.session, engine_at, progress=lambda d, t: bar.update(task, completed=d, total=t))
    output.close()
    engine = engines[0]
    ended = [r for r, run in SessionRecord(args.out, sync=False).runs.items() if run.ended]
    summary = session_summary(engine, ended)
    summary["rerun_of"] = rerun_of
    del summary["host_clock"]  # a rerun has no clock to keep against a scanner's: its times are the record's
    n = report["n_compared"]
    summary["comparison"] = cmp = {"n_compared": n, "same_clip": (n - report["clip_mismatches"]) / n if n else float("nan"),
                                   "switches": report["switches"], "first_difference": report["first_clip_mismatch"]}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    write_session_report(os.path.join(args.out, "report.html"), summary, session_results(args.out), library,
                         engine.preprocess.motion_config.fd_threshold_mm)
    print(f"rerun: {cmp['n_compared']} decisions; the same music as the session's after {100 * cmp['same_clip']:.1f} % "
          f"of them; switches {cmp['switches'][0]} -> {cmp['switches'][1]}"
          + (f"; first difference at {cmp['first_difference']}" if cmp["first_difference"] else ""))
    print(f"wrote {args.out} ({copied / 2**20:.0f} MB of volumes copied), {wav}, "
          f"{os.path.join(args.out, 'report.html')}", file=sys.stderr)
    return 0


def run_replay(session: str) -> int:
    from rich.progress import Progress

    from realtime.session import SessionEngine, read_session_info, replay_session
    from realtime.session.engine import SessionOptions
    from realtime.session.replay import changed_parts
    from realtime.session.protocol import Protocol
    from realtime.session.yoked import read_yoked
    from realtime.feedback import PolicyConfig

    info = read_session_info(session)
    decoder, library = open_parts(info["model"], info["library"])
    changed = changed_parts(info, decoder, library)
    if changed:
        for line in changed:
            print(f"error: {line}", file=sys.stderr)
        print("a replay needs the parts the session ran with: put them back at those paths (the record's "
              "session_config.json names them)", file=sys.stderr)
        return 2
    policy = PolicyConfig(**info["policy"])
    options = SessionOptions(**info.get("options", {}))
    yoked = read_yoked(session)
    protocol = Protocol.of_session(info)
    with Progress(console=stderr_console(), transient=True) as bar:  # stdout is for the report
        task = bar.add_task("replaying", total=None)
        report = replay_session(session, lambda offsets: SessionEngine(decoder, library, None, policy, options,
                                                                        run_offsets=offsets, yoked=yoked,
                                                                        protocol=protocol),
                                progress=lambda d, t: bar.update(task, completed=d, total=t))
    print(json.dumps(report, indent=2))
    verdict = "identical" if report["identical"] else f"DIFFERENT (first: {report['first_mismatch']})"
    print(f"replay: {report['n_compared']} of {report['n_recorded']} recorded decisions compared; "
          f"{verdict}; embedding max abs diff {report['embedding_max_abs_diff']:.3g}")
    return 0 if report["identical"] else 1
