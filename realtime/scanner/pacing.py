"""Absolute-deadline pacing: volume k is due at t0 + k * TR / speed.

Deadlines are computed from the start time, never by adding sleeps, so errors
do not accumulate and a late volume never causes a negative wait.
"""

from __future__ import annotations

import math

__all__ = ["parse_speed", "check_seconds", "check_count", "deadline", "scanner_events"]

PULSE, VOLUME = 0, 1  # the kinds of :func:`scanner_events`


def parse_speed(text: str | float) -> float:
    """``"1"``, ``"20"``, ``"0.5"`` or ``"max"`` -> speed factor (``inf`` for max).

    Raises
    ------
    ValueError
        If the speed is not a positive number or ``max``.
    """
    if isinstance(text, str) and text.strip().lower() == "max":
        return math.inf
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}") from None
    if not v > 0 or math.isnan(v):
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}")
    return v


def check_seconds(value: float | None, option: str) -> float | None:
    """``value`` (seconds, None for the default) if it is a positive finite number, else a ValueError naming ``option``.

    The one check of the scanner commands' durations (``--tr``, ``--idle-timeout``, ``--poll``), made before
    anything is read or sent: a TR of 0 or less would be refused by the receiver message by message, or by
    nibabel deep in a write.
    """
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_count(value: int | None, option: str) -> int | None:
    """``value`` (None for the default) if it is a whole number of at least 1, else a ValueError naming ``option``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a whole number of at least 1, got {value!r}")
    return value


def deadline(t0: float, k: int, tr_s: float, speed: float) -> float:
    """Monotonic time at which volume ``k`` (counted from the first sent) is due."""
    if math.isinf(speed):
        return t0
    return t0 + k * tr_s / speed


def scanner_events(n: int, tr_s: float, speed: float, *, trigger: bool, recon_delay_s: float = 0.0) -> list:
    """A run's events as a scanner makes them: ``(seconds from the start, kind, volume k)``, in time order.

    Without a trigger, volume ``k`` is ready at ``k * TR / speed`` plus the
    reconstruction delay. With one (real time only), volume ``k``'s pulse
    (:data:`PULSE`) is at ``k * TR``, as its acquisition begins, and the
    volume (:data:`VOLUME`) is ready when the acquisition has ended and been
    reconstructed: ``(k + 1) * TR + recon_delay_s``.
    """
    lag = (tr_s if trigger else 0.0) + recon_delay_s
    events = [(deadline(0.0, k, tr_s, speed) + lag, VOLUME, k) for k in range(n)]
    if trigger:
        events += [(k * tr_s, PULSE, k) for k in range(n)]
    return sorted(events)
