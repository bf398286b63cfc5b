"""Typed errors for every contract in :mod:`protocols`.

Every error names the offending field (or file) and says what was expected,
so a person reading a log line can act on it.
"""

from __future__ import annotations

__all__ = ["ProtocolError", "MessageError", "RecordError"]


class ProtocolError(ValueError):
    """Base class: a contract was violated.

    Parameters
    ----------
    field : str
        Dotted name of the offending field, file or frame (``"header.dtype"``,
        ``"frames"``, ``"volumes.log"``).
    reason : str
        What was expected, what came, and what to do.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class MessageError(ProtocolError):
    """A wire message (volume, control, ack, reject, result) is malformed."""


class RecordError(ProtocolError):
    """A session-record file is malformed or inconsistent."""
