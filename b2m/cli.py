"""``b2m``: the one console script. Each subcommand lives in ``b2m/commands/``.

Exit codes: 0 success, 1 the job ran but did not fully succeed (e.g. volumes
left unacked), 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

try:  # the packages take seconds to load on a busy machine: a Ctrl-C meanwhile is an interrupt like any other
    from rich.logging import RichHandler
    from rich.markup import escape

    from protocols.errors import ProtocolError
    from realtime.transport import TransportError

    from .config import CONFIG_ENV, ConfigError, apply_config, command_path
    from .console import stderr_console
    from .commands import control, demo, group, keys, library, monitor, present, receive, replay, \
        scanner_export, session, simulate, study, train, watch
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    raise SystemExit(EXIT_INTERRUPTED) from None

stderr = stderr_console()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="b2m", description="brain2music-rt: real-time music decoding from fMRI.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr")
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"a site's settings (TOML: a table per command, e.g. [session], [scanner.watch], its keys the "
                        f"command's long options); the command line wins over it. Default: ${CONFIG_ENV}, if set")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scanner = sub.add_parser("scanner", help="the scanner side (watch the export folder, or replay a recorded run)")
    ssub = scanner.add_subparsers(dest="scanner_command", required=True, metavar="SUBCOMMAND")
    watch.add_parser(ssub)
    replay.add_parser(ssub)
    scanner_export.add_parser(ssub)
    receive.add_parser(sub)
    keys.add_parser(sub)
    session.add_parser(sub)
    monitor.add_parser(sub)
    control.add_parser(sub)
    study.add_parser(sub)
    present.add_parser(sub)
    library.add_parser(sub)
    train.add_parser(sub)
    group.add_parser(sub)
    simulate.add_parser(sub)
    demo.add_parser(sub)
    return p


def _log_handler() -> logging.Handler:
    """Rich log lines on a terminal; plain one-line records in a log file or pipe, where rich's
    fixed-width columns would break paths and field names across lines."""
    if stderr.is_terminal:
        return RichHandler(console=stderr, show_path=False, rich_tracebacks=False, log_time_format="[%X]")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    return handler


def _path_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """The command line's paths by absolute path, each with its option (a positional by its metavar) and the
    path as given: ``{"/data/s1": ("--out", "s1")}``."""
    out = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices.get(getattr(args, action.dest, None) or "")
            if sub is not None:
                out.update(_path_options(sub, args))
            continue
        if action.dest in ("config", "help"):
            continue
        name = max(action.option_strings, key=len) if action.option_strings else action.metavar or action.dest
        values = getattr(args, action.dest, None)
        for v in values if isinstance(values, list) else [values]:
            if isinstance(v, str) and v:
                out.setdefault(os.path.abspath(v), (name, v))
    return out


def _is_output(option: str | None) -> bool:
    return option is not None and option.lstrip("-").split("-")[0] in ("out", "output")


def describe_os_error(e: OSError, paths: dict[str, tuple[str, str]] | None = None) -> str:
    """An OS error as a person can act on it: the path, what went wrong, and what to do.

    Python's own wording (``[Errno 17] File exists: 'x'``) names neither the
    option that gave the path nor the remedy. ``paths``: the command line's
    paths (:func:`_path_options`); a path inside or above one of them is named
    with that option. A message a command wrote itself is kept as it is.
    """
    if not isinstance(e.filename, (str, bytes, os.PathLike)) or not e.strerror or not str(e).startswith("[Errno"):
        return str(e)
    path = os.fsdecode(e.filename)
    full = os.path.abspath(path)
    option, what = None, path

    def closeness(given: str) -> tuple[int, int] | None:  # the path itself, then the nearest folder above it
        if full == given:
            return (2, 0)
        if full.startswith(given.rstrip(os.sep) + os.sep):
            return (1, len(given))
        if given.startswith(full + os.sep):  # a folder on the way to the path given, e.g. made for it
            return (0, -len(given))
        return None

    near = [(closeness(g), g) for g in (paths or {}) if closeness(g) is not None]
    if near:
        given = max(near)[1]
        option, as_given = paths[given]
        what = f"{option} {as_given}" + ("" if full == given else f": {path}")
    output = _is_output(option)
    code = e.errno
    if code == errno.EEXIST:
        hint = ("is a file: give a folder path that does not exist yet or is a folder" if os.path.isfile(full) else
                "already exists")
    elif code == errno.ENOENT:
        parent = os.path.dirname(full)
        hint = (f"its parent folder {parent} does not exist" if not os.path.isdir(parent) else
                "cannot be made there: give a path in a folder you can write to" if output else
                "no such file or folder")
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"{e.strerror.lower()}; " + ("not writable: give a path in a folder you can write to"
                                            if output or code == errno.EROFS else
                                            "check its permissions, or give another path")
    elif code == errno.ENOTDIR:
        blocker = full
        while blocker != os.path.dirname(blocker) and not os.path.isfile(blocker):
            blocker = os.path.dirname(blocker)
        hint = "a file stands where a folder is expected" + (f" ({blocker})" if os.path.isfile(blocker) else "")
    elif code == errno.EISDIR:
        hint = "a folder stands where a file is expected"
    elif code == errno.ENOSPC:
        hint = "the disk is full: free some space, or give a path on another disk"
    else:
        hint = e.strerror.lower()
    return f"{what}: {hint}"


def main(argv: list[str] | None = None) -> int:
    """Run one ``b2m`` command line; return its exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # in the command, or while it reads its options and config before starting
        stderr.print("[yellow]interrupted[/yellow]")
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config or os.environ.get(CONFIG_ENV) or None
    used = {}
    if config:  # before parsing: the file may give options the command requires
        try:
            used = apply_config(parser, config, command_path(parser, argv))
        except ConfigError as e:
            stderr.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            return EXIT_USAGE
    args = parser.parse_args(argv)  # the file's values are defaults: the command line wins
    if used:
        stderr.print(f"config {escape(config)}: " + ", ".join(f"{k}={v}" for k, v in sorted(used.items())),
                     highlight=False)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, handlers=[_log_handler()])
    try:
        return int(args.func(args) or 0)
    except OSError as e:
        stderr.print(f"[red]error:[/red] {escape(describe_os_error(e, _path_options(parser, args)))}",
                     highlight=False)
        return EXIT_USAGE
    except (ProtocolError, TransportError, ValueError) as e:
        stderr.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)  # a message may hold [brackets]
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
