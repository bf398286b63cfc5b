"""Shared fixtures: a seeded rng, free loopback endpoints, real data paths,
a helper that runs ``b2m`` subcommands as real processes, a Receiver
serving in a thread, and a serial line (two linked pseudo-terminals)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))


@pytest.fixture
def rng():
    """A seeded generator: every test sees the same 'random' data."""
    return np.random.default_rng(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint() -> str:
    """A loopback TCP endpoint on a currently free port."""
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def functional_nii() -> str:
    """nibabel's real functional run: 17x21x3x20 int16, TR 2 s."""
    from nibabel.testing import data_path

    return os.path.join(data_path, "functional.nii")


@pytest.fixture(scope="session")
def fmri1_nii() -> str:
    """nitime's real fMRI run: 10x10x18x40 int16, TR 1.35 s."""
    import nitime

    return os.path.join(os.path.dirname(nitime.__file__), "data", "fmri1.nii.gz")


@pytest.fixture(scope="session")
def shared_data() -> str:
    """The read-only ``shared/data`` folder beside the repository."""
    path = os.path.join(SHARED, "data")
    if not os.path.isdir(path):
        pytest.skip(f"shared data not found at {path}")
    return path


class Proc:
    """A ``b2m`` subprocess whose stderr/stdout go to files, stopped by PID."""

    def __init__(self, args, log_dir, name, prefix=(), stdin=subprocess.DEVNULL):
        self.out_path = os.path.join(log_dir, f"{name}.out")
        self.err_path = os.path.join(log_dir, f"{name}.err")
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
        self.p = subprocess.Popen([*prefix, sys.executable, "-m", "b2m", *args], stdout=self._out,
                                  stderr=self._err, stdin=stdin, env=env, cwd=REPO)

    @property
    def pid(self) -> int:
        return self.p.pid

    def stderr(self) -> str:
        with open(self.err_path) as f:
            return f.read()

    def stdout(self) -> str:
        with open(self.out_path) as f:
            return f.read()

    def wait_for(self, text: str, timeout: float = 30.0, stream: str = "stderr") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in (self.stderr() if stream == "stderr" else self.stdout()):
                return
            if self.p.poll() is not None:
                raise AssertionError(f"process exited ({self.p.returncode}) before {text!r}:\n{self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {text!r}:\n{self.stderr()}")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)
        self.p.wait(timeout=30)

    def wait(self, timeout: float = 120.0) -> int:
        rc = self.p.wait(timeout=timeout)
        self._out.close()
        self._err.close()
        return rc


@pytest.fixture
def b2m_proc(tmp_path):
    """Start ``b2m`` subcommands as processes; all are killed at teardown.

    ``prefix``: a command the process runs under (e.g. ``faketime -f +3s``); ``stdin``: its standard input
    (a file descriptor, e.g. a pseudo-terminal's; none by default).
    """
    procs: list[Proc] = []

    def start(*args, name=None, prefix=(), stdin=subprocess.DEVNULL):
        proc = Proc([str(a) for a in args], tmp_path, name or f"p{len(procs)}", prefix=prefix, stdin=stdin)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.p.poll() is None:
            proc.kill(signal.SIGKILL)


class ReceiverThread:
    """A real :class:`Receiver` serving in a daemon thread (polling every 20 ms).

    As a context manager it yields the receiver and, on exit, stops serving
    and closes it.
    """

    def __init__(self, out, endpoint, **kw):
        from realtime.receiver import Receiver

        self.rx = Receiver(out, endpoint, **kw)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.rx.serve, args=(self._stop,), kwargs={"poll_ms": 20},
                                        daemon=True)
        self._thread.start()
        self._closed = False

    def stop(self) -> None:
        """Stop serving but keep the receiver open: its socket still takes messages, none are read."""
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the receiver did not stop"

    def close(self) -> None:
        """Stop serving and close the receiver (idempotent)."""
        if not self._closed:
            self._closed = True
            try:
                self.stop()
            finally:
                self.rx.close()

    def __enter__(self):
        return self.rx

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def serving():
    """Start a Receiver serving in a thread: ``with serving(out, endpoint, **kw) as rx: ...``.

    Receivers a test leaves running are stopped and closed at teardown.
    """
    started: list[ReceiverThread] = []

    def start(out, endpoint, **kw) -> ReceiverThread:
        started.append(ReceiverThread(out, endpoint, **kw))
        return started[-1]

    yield start
    for r in started:
        r.close()


def start_socat(box, port) -> subprocess.Popen:
    """Two linked pseudo-terminals made by Debian's ``socat`` (a null modem): bytes written to ``box`` are
    read from ``port``. Returns once both exist; stop it by its PID."""
    socat = shutil.which("socat")
    assert socat, "Debian's socat is missing: run ./setup.sh"
    p = subprocess.Popen([socat, f"pty,raw,echo=0,link={box}", f"pty,raw,echo=0,link={port}"],
                         stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(box) and os.path.exists(port):
            return p
        time.sleep(0.025)
    p.kill()
    raise AssertionError("socat made no pty pair")


def stop_socat(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
    p.wait(timeout=10)


@pytest.fixture
def serial_line(tmp_path):
    """``(box, port)``: the two ends of a serial line (:func:`start_socat`), for a trigger box and its reader."""
    box, port = str(tmp_path / "box"), str(tmp_path / "port")
    p = start_socat(box, port)
    try:
        yield box, port
    finally:
        stop_socat(p)


BIDS_VALIDATOR_VERSION = "1.14.6"
# warnings an export cannot avoid: slice times are not in the volumes sent, nobody's name is known, and a short
# test run has few switches
BIDS_WARNINGS_ALLOWED = {"SLICE_TIMING_NOT_DEFINED", "NO_AUTHORS", "SUSPICIOUSLY_SHORT_EVENT_DESIGN"}


@pytest.fixture(scope="session")
def bids_validator() -> str:
    """The BIDS validator (the npm package OpenNeuro ran, on this machine's node), installed once into
    ``~/.cache/b2m`` from the npm registry; skipped where node, npm or the registry cannot be had."""
    root = os.path.join(os.path.expanduser("~"), ".cache", "b2m", f"bids-validator-{BIDS_VALIDATOR_VERSION}")
    exe = os.path.join(root, "node_modules", ".bin", "bids-validator")
    if os.path.exists(exe):
        return exe
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed for the BIDS validator (Debian: nodejs, npm)")
    os.makedirs(root, exist_ok=True)
    r = subprocess.run([npm, "install", "--prefix", root, "--no-audit", "--no-fund", "--omit=optional",
                        f"bids-validator@{BIDS_VALIDATOR_VERSION}"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not os.path.exists(exe):
        pytest.skip(f"the BIDS validator could not be installed from npm: {r.stderr.strip()[-300:]}")
    return exe


def assert_valid_bids(validator: str, root, allowed=BIDS_WARNINGS_ALLOWED) -> dict:
    """Run the BIDS validator on ``root``: no error, and no warning but ``allowed``."""
    import json

    r = subprocess.run([validator, str(root), "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(r.stdout)
    issues = report["issues"]
    said = [(i["key"], i.get("reason", ""), [f["file"]["relativePath"] for f in i["files"][:3] if f.get("file")])
            for i in issues["errors"] + issues["warnings"]]
    assert not issues["errors"], said
    assert {i["key"] for i in issues["warnings"]} <= set(allowed), said
    return report


def wait_until(fn, timeout: float = 30.0, every: float = 0.05):
    """Call ``fn`` until it returns something true or ``timeout`` s pass; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    return fn()


def recv_until_closed(sock) -> bytes:
    """Everything a TCP peer sends on ``sock`` until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
