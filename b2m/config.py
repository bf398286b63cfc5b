"""A site's settings in one file: ``b2m --config site.toml COMMAND ...`` (or ``B2M_CONFIG=site.toml``).

A scanner site runs the same endpoints, keys, devices and policy every
session; the file holds them so the command line only says what changes.
Each table is a command, each key one of its long options, with ``-`` or
``_``::

    [session]
    model = "/data/bundles/sub-01"
    library = "/data/library"
    bind = "tcp://10.0.0.2:5555"
    curve-secret = "/etc/b2m/receiver.key_secret"
    curve-clients = "/etc/b2m/scanners"
    audio = "MOTU M2"
    pyneal-port = 5558
    min-dwell = 12.0

    [scanner.watch]
    vendor = "siemens"
    connect = "tcp://10.0.0.2:5555"
    volumes = 410

An option given on the command line wins over the file. A key that is not an
option of that command, or a value of the wrong type, is an error naming the
file, the table and the key (with the nearest option name), before anything
starts.
"""

from __future__ import annotations

import argparse
import difflib
import os

__all__ = ["CONFIG_ENV", "ConfigError", "apply_config", "command_path"]

#: Environment variable naming the config file when ``--config`` is not given.
CONFIG_ENV = "B2M_CONFIG"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, table and key."""


def _load(path: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (from --config or ${CONFIG_ENV})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file (from --config or ${CONFIG_ENV}): give the "
                          f"TOML file itself") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file in UTF-8 (byte {e.start}), so not TOML (from --config or "
                          f"${CONFIG_ENV}): give the site's TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file (from --config or ${CONFIG_ENV}): "
                          f"{e.strerror or e}") from None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A parser's long options by name without dashes (``pyneal-port``), help and positionals left out."""
    out = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        for s in action.option_strings:
            if s.startswith("--"):
                out[s[2:]] = action
    return out


def _value(action: argparse.Action, value, where: str):
    """``value`` from the file, checked and converted as the command line would have it."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):  # a repeatable option: a list in the file
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list (the option can be given several times), got {value!r}")
        one = argparse._StoreAction(action.option_strings, action.dest, type=action.type, choices=action.choices)
        return [_value(one, v, where) for v in value]
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    kind = action.type
    if kind in (int, float):
        if isinstance(value, str) or (kind is int and isinstance(value, float)):
            raise ConfigError(f"{where}: expected {'a whole number' if kind is int else 'a number'}, got {value!r}")
        value = kind(value)
    elif kind is None:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        value = str(value) if not isinstance(value, str) else value
    else:  # a parsing function of the command (a level, a count): it takes the text, as on the command line
        try:
            value = kind(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _commands(parser: argparse.ArgumentParser, prefix: tuple = ()) -> dict[tuple, argparse.ArgumentParser]:
    """Every (sub)command's parser by its path, e.g. ``("scanner", "watch")``."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[prefix + (name,)] = sub
                out.update(_commands(sub, prefix + (name,)))
    return out


def command_path(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, ...]:
    """The (sub)command a command line runs, e.g. ``("scanner", "watch")``, read before parsing it.

    (Parsing first would fail on an option the file is there to give, such as
    ``scanner watch``'s ``--vendor``.)
    """
    path = ()
    for token in argv:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            break
        if token in sub.choices:
            path, parser = path + (token,), sub.choices[token]
    return path


def apply_config(parser: argparse.ArgumentParser, path: str, command: tuple[str, ...]) -> dict:
    """Make the file's table for ``command`` that command's defaults; return what was set.

    Every table is checked, not only the one used, so a typo shows up the
    first time any command reads the file.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``b2m`` parser (from :func:`b2m.cli.build_parser`).
    path : str
        The TOML file.
    command : tuple of str
        The command being run, e.g. ``("session",)`` or ``("scanner", "watch")``.

    Raises
    ------
    ConfigError
    """
    path = os.fspath(path)
    doc = _load(path)
    commands = _commands(parser)
    tables: dict[tuple, dict] = {}

    def walk(node: dict, prefix: tuple) -> None:
        for key, value in node.items():
            name = prefix + (key,)
            if name in commands and isinstance(value, dict):
                sub_tables = {k: v for k, v in value.items() if isinstance(v, dict) and name + (k,) in commands}
                tables[name] = {k: v for k, v in value.items() if k not in sub_tables}
                walk(sub_tables, name)
            else:
                known = sorted(" ".join(c) for c in commands)
                near = difflib.get_close_matches(" ".join(name), known, n=1)
                raise ConfigError(f"{path}: [{'.'.join(name)}] is not a b2m command"
                                  + (f" (did you mean [{near[0].replace(' ', '.')}]?)" if near else
                                     f"; tables are commands, e.g. [session], [scanner.watch]"))

    walk(doc, ())
    chosen = {}
    for name, table in tables.items():
        options = _options(commands[name])
        values = {}
        for key, value in table.items():
            opt = key.replace("_", "-")
            where = f"{path}: [{'.'.join(name)}] {key}"
            if opt not in options:
                if any(not a.option_strings and a.dest == key.replace("-", "_") for a in commands[name]._actions):
                    raise ConfigError(f"{where}: a positional argument; give it on the command line")
                near = difflib.get_close_matches(opt, list(options), n=1)
                raise ConfigError(f"{where}: not an option of `b2m {' '.join(name)}`"
                                  + (f" (did you mean {near[0]}?)" if near else ""))
            action = options[opt]
            values[action.dest] = _value(action, value, where)
        if name == tuple(command):
            chosen = values
            for action in options.values():
                if action.dest in values:
                    action.required = False  # the file gives it; the command line may still override
    if chosen:
        commands[tuple(command)].set_defaults(**chosen)
    return chosen
