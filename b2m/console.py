"""The console every ``b2m`` command writes its diagnostics to (stderr), and its stage progress.

Messages are soft-wrapped: rich would otherwise break lines at 80 columns
whenever stderr is not a terminal (a log file, CI, a pipe), splitting the
paths and field names that error messages give across lines.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

__all__ = ["stderr_console", "stage_progress", "record_log_handler"]


def stderr_console() -> Console:
    """A rich console on stderr that never hard-wraps what it prints."""
    return Console(stderr=True, soft_wrap=True)


class _RecordLogHandler(logging.FileHandler):
    """A log file in a record folder whose disk may fill: a failed write is said once on stderr, not with a
    traceback per message (stderr has every message anyway), and writing resumes when the disk takes it."""

    _said = False

    def handleError(self, record) -> None:
        if not self._said:
            self._said = True
            err = sys.exc_info()[1]
            print(f"could not write {self.baseFilename} ({getattr(err, 'strerror', None) or err}); its messages are "
                  "on stderr meanwhile", file=sys.stderr, flush=True)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # what the full disk never took cannot be flushed either
            pass


def record_log_handler(path: str) -> logging.Handler:
    """The log file of a session or receiver record (``session.log``, ``receiver.log``), with its format."""
    fh = _RecordLogHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    return fh


@contextmanager
def stage_progress(console: Console, prefix: str = "", labels: dict | None = None, width: int = 32,
                   remaining: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback for work done in named stages.

    On a terminal: one rich progress bar per stage. Elsewhere (a batch job's
    log, a pipe), where a bar would only be drawn at the end: one plain line
    when a stage starts and one when it completes, with its elapsed time.

    Parameters
    ----------
    console : rich.console.Console
    prefix : str
        Shown before each stage's label (``"train"``).
    labels : dict, optional
        Stage name -> label shown (default: the name).
    width : int
        Width of the label column of the bars.
    remaining : bool
        Also show the estimated time remaining.
    """
    labels = labels or {}
    lead = f"{prefix} " if prefix else ""
    if not console.is_terminal:
        started: dict[str, float] = {}
        finished: set[str] = set()

        def plain(stage: str, done: int, total: int) -> None:
            if stage not in started:
                started[stage] = time.monotonic()
                console.print(f"{lead}{labels.get(stage, stage)}: started ({total} step{'' if total == 1 else 's'})",
                              highlight=False)
            if done >= total and stage not in finished:
                finished.add(stage)
                console.print(f"{lead}{labels.get(stage, stage)}: done in {time.monotonic() - started[stage]:.1f} s",
                              highlight=False)

        yield plain
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    head = f"[bold]{prefix}[/bold] " if prefix else ""
    columns = [TextColumn(f"{head}{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()] + ([TimeRemainingColumn()] if remaining else [])
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
