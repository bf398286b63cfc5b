"""``b2m control``: the operator's hand on a running session's sound (mute, unmute, level, status)."""

from __future__ import annotations

import json
import sys
import time

from ._curve import add_client_args, client_keys

DEFAULT_CONTROL = "tcp://127.0.0.1:5557"


def add_parser(sub) -> None:
    p = sub.add_parser("control", help="mute, unmute or set the level of a running session's music",
                       description="Send one command to a running `b2m session` (its --control endpoint): mute "
                                   "(the music fades out within 50 ms; decoding and recording go on), unmute, level "
                                   "DB (relative to the session's --level-dbfs, the loudest it plays: -40 to 0), "
                                   "soundcheck [on|off] (before a run: the neutral clip plays, to set the level with "
                                   "the participant; it ends by itself when the run starts), note TEXT (a line for "
                                   "the session's log and the exported events), or status. Prints the "
                                   "sound's state after it. Exit 0 done, 1 refused by the session, 2 a bad option, 3 no "
                                   "session answered.")
    p.add_argument("command", choices=["mute", "unmute", "level", "soundcheck", "note", "status"])
    p.add_argument("value", nargs="?", default=None,
                   help="with level: dB, -40 to 0 (e.g. -6); with soundcheck: on (the default) or off; with note: "
                        "the line to keep (quoted), e.g. \"participant coughed\"")
    p.add_argument("--connect", default=DEFAULT_CONTROL, help=f"the session's --control endpoint "
                                                              f"(default {DEFAULT_CONTROL})")
    p.add_argument("--source", default="cli", help="who sends it, for the session's record (default cli)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the session (default 3)")
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    add_client_args(p, who="operator", server="session")
    p.set_defaults(func=run)


def describe_state(state: dict) -> str:
    """The sound's state in a line."""
    since = time.strftime("%H:%M:%S", time.localtime(state["since_unix"]))
    if state["muted"]:
        sound = "MUTED"
    else:
        sound = f"level {state['level_db']:+.1f} dB" + (f" ({state['level_dbfs']:.1f} dBFS RMS)"
                                                          if state.get("level_dbfs") is not None else "")
    who = f" by {state['source']}" if state.get("source") else ""
    sent = state.get("output_dbfs")
    extra = ("; sound check playing" if state.get("soundcheck") else "") + (
        "" if sent is None else "; sending out silence" if sent <= -120 else f"; sending out {sent:.1f} dBFS RMS")
    return f"{sound} (since {since}{who}; {state['commands']} change(s) this session{extra})"


def run(args) -> int:
    from protocols.operator import OperatorCommand
    from realtime.session.operator import send_command
    from realtime.transport import EndpointError, TransportError

    value = args.value
    if args.command == "level":
        try:
            value = float(value)
        except (TypeError, ValueError):
            print(f"error: give a level in dB with `level` (e.g. b2m control level -6); got {value!r}",
                  file=sys.stderr)
            return 2
    elif args.command == "soundcheck":
        if value not in (None, "on", "off"):
            print(f"error: soundcheck takes on or off; got {value!r}", file=sys.stderr)
            return 2
        value = 0.0 if value == "off" else 1.0
    elif args.command == "note":
        if not value:
            print('error: give the note\'s text, e.g. b2m control note "participant coughed"', file=sys.stderr)
            return 2
    elif value is not None:
        print(f"error: {args.command} takes no value; got {value!r}", file=sys.stderr)
        return 2
    cmd = OperatorCommand(args.command, value, args.source)  # out of range: a clear error, exit 2 (cli.py)
    try:
        reply = send_command(args.connect, cmd, curve=client_keys(args), timeout_s=args.timeout)
    except EndpointError as e:  # --connect is not an endpoint: a mistake, not a session that did not answer
        raise ValueError(f"--connect {e}") from None
    except TransportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if not reply["ok"]:
        print(f"error: the session refused it: {reply['error']}", file=sys.stderr)
        return 1
    print(json.dumps(reply["state"]) if args.json else describe_state(reply["state"]))
    return 0
