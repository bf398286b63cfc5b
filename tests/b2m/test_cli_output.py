"""What ``b2m`` writes to stderr when stderr is a log file or a pipe, not a terminal.

rich wraps at 80 columns when it cannot see a terminal; an error message or a
log record naming a long path must still come out on one line, so the path can
be copied from a CI log or a session's log file.
"""

import subprocess
import sys

from conftest import REPO


def _run(code_or_args, tmp_path):
    cmd = [sys.executable, *code_or_args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_an_error_naming_a_long_path_stays_on_one_line(tmp_path):
    missing = tmp_path / ("a-folder-with-a-long-name-" * 4) / "ds003720-like-dataset"
    r = _run(["-m", "b2m", "train", str(missing), "--subject", "001", "--out", str(tmp_path / "b")], tmp_path)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    assert str(missing) in lines[0] and "dataset folder not found" in lines[0]


def test_log_records_are_one_plain_line_each_off_a_terminal(tmp_path):
    path = tmp_path / ("run-with-a-long-name-" * 5) / "sub-001_task-Test_run-01_bold.nii.gz"
    code = ("import logging\n"
            "from b2m import cli\n"
            "logging.basicConfig(level=logging.INFO, handlers=[cli._log_handler()])\n"
            f"logging.getLogger('realtime.receiver').warning('kept %s; resend it', {str(path)!r})\n"
            "logging.getLogger('realtime.receiver').info('second record')\n")
    r = _run(["-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].endswith(f"WARNING realtime.receiver: kept {path}; resend it")
    assert lines[1].endswith("INFO realtime.receiver: second record")


def test_stage_progress_writes_plain_lines_off_a_terminal_and_bars_on_one():
    import io

    from rich.console import Console

    from b2m.console import stage_progress

    log = Console(file=io.StringIO(), soft_wrap=True)  # a file: not a terminal
    with stage_progress(log, "train", labels={"fit": "decoder fit"}) as progress:
        for done in range(4):
            progress("fit", done, 3)
        progress("fit", 3, 3)  # a repeated completion is not announced twice
        progress("report", 1, 1)
    lines = log.file.getvalue().splitlines()
    assert lines[0] == "train decoder fit: started (3 steps)"
    assert lines[1].startswith("train decoder fit: done in ") and lines[1].endswith(" s")
    assert lines[2:] == ["train report: started (1 step)", lines[3]] and lines[3].startswith("train report: done")
    assert len(lines) == 4

    tty = Console(file=io.StringIO(), force_terminal=True, width=120)
    with stage_progress(tty, "train") as progress:
        progress("fit", 2, 3)
    out = tty.file.getvalue()
    assert "train" in out and "fit" in out and "2/3" in out and "started" not in out


def test_a_record_log_on_a_full_disk_says_so_once(capfd):
    """``/dev/full`` refuses every write (ENOSPC), as a full disk does: the log handler says it once on stderr,
    without a traceback, however many messages follow."""
    import logging

    from b2m.console import record_log_handler

    logger = logging.getLogger("b2m.test-full-disk")
    handler = record_log_handler("/dev/full")
    logger.addHandler(handler)
    try:
        for k in range(5):
            logger.error("message %d", k)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capfd.readouterr().err
    assert err.count("could not write /dev/full (No space left on device)") == 1, err
    assert "Traceback" not in err and "Logging error" not in err
