"""The console every ``b2m`` command writes its diagnostics to (stderr).

Messages are soft-wrapped: rich would otherwise break lines at 80 columns
whenever stderr is not a terminal (a log file, CI, a pipe), splitting the
paths and field names that error messages give across lines.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["stderr_console"]


def stderr_console() -> Console:
    """A rich console on stderr that never hard-wraps what it prints."""
    return Console(stderr=True, soft_wrap=True)
