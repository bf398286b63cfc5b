"""Keys at the session's console: the operator's hand on the sound without another window.

While the dashboard runs in a terminal, ``m`` mutes (and unmutes), ``-`` and
``+`` (or ``=``) move the level by :data:`STEP_DB`, ``s`` starts (and stops)
the sound check before a run, through the same
:class:`~realtime.session.operator.OperatorControl` as ``b2m control`` (source
``keyboard``), so every change is recorded alike. The terminal is put in
cbreak mode (keys come one at a time, unechoed; Ctrl-C still stops the
session) and restored when the session ends. Nothing is read when standard
input is not a terminal (a script, a service) or carries the trigger
(``--trigger -``).
"""

from __future__ import annotations

import logging
import os
import select
import threading

from protocols.operator import MAX_LEVEL_DB, MIN_LEVEL_DB, OperatorCommand

log = logging.getLogger("b2m.session")

__all__ = ["STEP_DB", "KEYS_HELP", "OperatorKeys", "key_command"]

#: The level keys' step, dB.
STEP_DB = 3.0
KEYS_HELP = "m mute/unmute, - and + level, s sound check"


def key_command(key: str, muted: bool, level_db: float, soundcheck: bool = False) -> OperatorCommand | None:
    """The command a key stands for, given the sound's state; None for any other key (or a level at its end)."""
    if key in ("m", "M"):
        return OperatorCommand("unmute" if muted else "mute", source="keyboard")
    if key in ("s", "S"):
        return OperatorCommand("soundcheck", 0.0 if soundcheck else 1.0, source="keyboard")
    step = {"-": -STEP_DB, "_": -STEP_DB, "+": STEP_DB, "=": STEP_DB}.get(key)
    if step is None:
        return None
    to = min(MAX_LEVEL_DB, max(MIN_LEVEL_DB, level_db + step))
    return OperatorCommand("level", to, source="keyboard") if to != level_db else None


class OperatorKeys:
    """Read the console's keys on a thread and carry them out on an operator control.

    Parameters
    ----------
    operator : realtime.session.operator.OperatorControl
    fd : int
        The terminal's file descriptor (standard input's by default).
    """

    def __init__(self, operator, fd: int | None = None):
        self.operator = operator
        self.fd = 0 if fd is None else int(fd)
        self._saved = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="b2m-keys", daemon=True)
        self.pressed = 0

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> "OperatorKeys | None":
        """Start reading if the descriptor is a terminal (returns self), else do nothing (returns None)."""
        if not os.isatty(self.fd):
            return None
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)  # one key at a time, not echoed; ISIG stays, so Ctrl-C still stops the session
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.2)  # wakes to see the stop flag
                if not ready:
                    continue
                data = os.read(self.fd, 64)
            except OSError as e:  # the terminal went away: the session goes on without keys
                log.warning("the console's keys cannot be read any more (%s); use b2m control", e)
                return
            if not data:
                return
            for key in data.decode("utf-8", "replace"):
                self.handle(key)

    def handle(self, key: str) -> None:
        """Carry out one key (never raises: a refused change is logged, the session goes on)."""
        op = self.operator
        cmd = key_command(key, op.muted, op.level_db, bool(getattr(op.engine, "soundchecking", False)))
        if cmd is None:
            return
        self.pressed += 1
        try:
            op.apply(cmd)
        except ValueError as e:  # refused (a sound check while music plays, say): said, and the session goes on
            log.warning("the key %r: %s", key, e)
        except Exception:
            log.exception("the key %r could not be carried out; use b2m control", key)

    def stop(self) -> None:
        """Stop reading and give the terminal its settings back."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except (OSError, termios.error):
                pass
            self._saved = None
