"""``b2m session --check``'s lines: a check passes, passes with a warning, or fails."""

from __future__ import annotations

from realtime.session.preflight import Check, _attempt, format_checks


def test_a_check_passes_warns_or_fails_by_what_it_returns_or_raises():
    passed, value = _attempt("disk", lambda: ("room for 9 h", 42))
    warned, _ = _attempt("clock", lambda: ("not kept by NTP", None, True))
    quiet, _ = _attempt("clock", lambda: ("kept", None, False))
    failed, none = _attempt("device", lambda: 1 / 0)
    assert (passed, value) == (Check("disk", True, "room for 9 h"), 42)
    assert [c.status for c in (passed, warned, quiet, failed)] == ["PASS", "WARN", "PASS", "FAIL"]
    assert none is None and failed.detail == "ZeroDivisionError: division by zero"
    assert format_checks([passed, warned, failed]).splitlines() == [
        "PASS  disk    room for 9 h", "WARN  clock   not kept by NTP", "FAIL  device  ZeroDivisionError: division by zero"]
