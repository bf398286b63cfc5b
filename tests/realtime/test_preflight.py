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


def test_the_disk_check_refuses_an_out_that_is_a_file(tmp_path):
    """`--check --out afile` passed, and the session then failed on it: a file where the session's folder
    goes is a FAIL that says what --out is; a folder to create, or one that exists, is measured."""
    from types import SimpleNamespace

    import pytest

    from realtime.session.preflight import _disk_space

    grid = SimpleNamespace(manifest={"mask": {"shape": [4, 4, 4]}, "tr_s": 2.0})  # what the check reads of a bundle
    (tmp_path / "afile").write_text("notes")
    with pytest.raises(ValueError, match=r"afile is a file: --out is the session's folder"):
        _disk_space(str(tmp_path / "afile"), grid)
    for out in (tmp_path / "new" / "session", tmp_path):
        text, _ = _disk_space(str(out), grid)
        assert "GiB free on the disk of" in text and "4x4x4 grid" in text
