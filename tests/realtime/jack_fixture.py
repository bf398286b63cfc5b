"""A real JACK server on the dummy backend, for tests that need sound with a real clock.

Import the fixture into a test module (``from jack_fixture import jackd``)
and ask for ``jackd``; several modules may import it and still share one
server. It starts ``jackd -n NAME -d dummy -r 48000 -p 256``
as a process under a unique server name, exports ``JACK_DEFAULT_SERVER=NAME``
(so this process and every subprocess it starts, such as ``b2m session``,
talk to this server and parallel test runs never collide), re-initialises
PortAudio until it lists the JACK device, and at teardown stops the server by
its PID (SIGTERM, then SIGKILL). One server serves the whole test session.

If jackd is missing or will not start, the fixture fails with the reason
and jackd's own log: a test that claims real audio never skips silently.

Underruns: :func:`reference_xruns` measures what the machine does to a C
client (``jack_metro``) right now, and :func:`check_no_underruns` demands
zero underruns of a stream, except that on a machine that visibly stalls
real-time threads (an oversubscribed VM) it marks the test xfail with the
figures when the stream does no worse than 10 times the machine's own rate.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

JACK_RATE = 48000
JACK_PERIOD = 256


@dataclass
class JackServer:
    """A running jackd: its server name, rate, period, PID and log file."""

    name: str
    rate: int
    period: int
    proc: subprocess.Popen
    log_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_mark(self) -> int:
        """The log's current length: pass it to :meth:`xruns_since` to look at one test's window."""
        return len(self.log())

    def xruns_since(self, mark: int = 0) -> dict:
        """Classify the xruns jackd logged after ``mark``.

        ``driver_late``: the server's own period timer woke late. ``not_scheduled``:
        a client had been triggered but the OS had not yet run its thread
        (``state = Triggered``). ``unfinished``: a client had started its
        cycle but not finished it (``state = Running``) - its own work, a wait
        for its GIL, or a preemption in mid-cycle. The first two are the
        machine's doing; only the last can be the client's.
        """
        lines = self.log()[mark:].splitlines()
        return {"driver_late": sum("JackTimedDriver::Process XRun" in x for x in lines),
                "not_scheduled": sum("not finished" in x and "Triggered" in x for x in lines),
                "unfinished": sum("not finished" in x and "Running" in x for x in lines),
                "lines": [x for x in lines if "XRun" in x]}

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGTERM jackd if the test process dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


def _server_up(name: str) -> bool:
    exe = shutil.which("jack_wait")
    if exe is None:
        return True          # fall through to the PortAudio check
    r = subprocess.run([exe, "-s", name, "-c"], capture_output=True, text=True, timeout=10)
    return r.stdout.strip() == "running"


def _portaudio_sees_jack() -> bool:
    import sounddevice as sd

    if sd._initialized > 0:
        sd._terminate()
    sd._initialize()
    apis = sd.query_hostapis()
    return any("JACK" in apis[d["hostapi"]]["name"] and d["max_output_channels"] > 0
               for d in sd.query_devices())


def start_jackd(log_dir: str, rate: int = JACK_RATE, period: int = JACK_PERIOD,
                timeout: float = 20.0) -> JackServer:
    """Start a dummy-backend jackd under a unique name and wait until PortAudio lists it.

    Sets ``os.environ["JACK_DEFAULT_SERVER"]``. Tries realtime scheduling
    first and, if the server dies, once more without it. Raises RuntimeError
    with jackd's log if it cannot start.
    """
    exe = shutil.which("jackd")
    if exe is None:
        raise RuntimeError("jackd is not installed: install Debian's jackd2 and libportaudio2 "
                           "(DEBIAN_FRONTEND=noninteractive apt-get install -y jackd2 libportaudio2); "
                           "see DESIGN.md, 'Sound on a machine without a sound card'")
    failures = []
    for extra in ([], ["--no-realtime"]):
        name = f"b2m-test-{os.getpid()}-{secrets.token_hex(3)}"
        log_path = os.path.join(log_dir, f"jackd-{name}.log")
        cmd = [exe, "-n", name, *extra, "-d", "dummy", "-r", str(rate), "-p", str(period)]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, JACK_NO_AUDIO_RESERVATION="1"),
                                    preexec_fn=_die_with_parent)
        server = JackServer(name, rate, period, proc, log_path)
        os.environ["JACK_DEFAULT_SERVER"] = name
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                break
            if _server_up(name) and _portaudio_sees_jack():
                return server
            time.sleep(0.05)       # test set-up, not a hot path
        reason = (f"exited with code {proc.returncode}" if proc.poll() is not None
                  else f"not listed by PortAudio within {timeout} s")
        server.stop()
        failures.append(f"$ {' '.join(cmd)}\n({reason})\n{server.log()}")
    os.environ.pop("JACK_DEFAULT_SERVER", None)
    raise RuntimeError("could not start a JACK dummy server:\n" + "\n".join(failures))


_SHARED: dict = {"server": None, "users": 0, "previous": None}


@pytest.fixture(scope="session")
def jackd(tmp_path_factory):
    """A running ``jackd -d dummy -r 48000 -p 256`` for the whole test session (see the module doc).

    Every test module that imports this fixture gets its own session-scoped
    copy from pytest; they share one server, stopped when the last one ends.
    """
    server = _SHARED["server"]
    if server is None or server.proc.poll() is not None:
        _SHARED["previous"] = os.environ.get("JACK_DEFAULT_SERVER")
        try:
            server = start_jackd(str(tmp_path_factory.mktemp("jackd")))
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        _SHARED["server"] = server
    _SHARED["users"] += 1
    yield server
    _SHARED["users"] -= 1
    if _SHARED["users"] > 0:
        return
    import sounddevice as sd

    _SHARED["server"] = None
    while sd._initialized > 0:
        sd._terminate()        # drop PortAudio's JACK client before the server goes
    server.stop()
    previous = _SHARED["previous"]
    if previous is None:
        os.environ.pop("JACK_DEFAULT_SERVER", None)
    else:
        os.environ["JACK_DEFAULT_SERVER"] = previous
    sd._initialize()


def reference_xruns(server: JackServer, seconds: float) -> dict:
    """What the machine does to a C client right now: run ``jack_metro`` alone for ``seconds``.

    This process's own PortAudio client is shut down meanwhile (if no stream
    is open), so the reference is one C client in the graph. Returns
    ``seconds``, ``events`` (xruns jackd logged) and the classification of
    :meth:`JackServer.xruns_since`.
    """
    from realtime.audio import resume_portaudio, suspend_portaudio

    exe = shutil.which("jack_metro")
    if exe is None:
        raise RuntimeError("jack_metro (from jackd2's example clients) is missing")
    suspended = suspend_portaudio()
    try:
        mark = server.log_mark()
        proc = subprocess.Popen([exe, "-b", "120", "-n", "b2m-reference"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(os.environ, JACK_DEFAULT_SERVER=server.name))
        try:
            time.sleep(seconds)          # it has to run for a while: that is the measurement
        finally:
            proc.terminate()
            proc.wait(10)
        x = server.xruns_since(mark)
    finally:
        resume_portaudio(suspended)
    x.pop("lines")
    return {"seconds": seconds, "events": x["driver_late"] + x["not_scheduled"] + x["unfinished"], **x}


def poisson_upper(k: int, level: float = 0.95) -> float:
    """Upper end of the one-sided ``level`` confidence interval of a Poisson mean, given ``k`` events."""
    from scipy.stats import chi2

    return float(chi2.ppf(level, 2 * k + 2) / 2.0)


def check_no_underruns(out, server: JackServer, mark: int, seconds: float, reference: dict) -> None:
    """Assert no underruns, unless a C client suffered as much from the machine at the same time.

    What the machine does to any client is taken as the larger of the
    xrun rate of ``reference`` (:func:`reference_xruns`, a C client measured
    just before under the same load) and the number of times jackd's own
    period timer woke late in this very window (no client is involved in
    that). A few seconds of ``jack_metro`` without an xrun do not prove a rate
    of zero, so the reference rate is the upper end of its 95 % Poisson
    interval (3 events per reference window when it saw none): a CI run on
    this VM failed on 1 underrun in 4 s after a reference window with 0, and
    a second run of the same test saw jackd's own timer wake late twice in
    4 s. If this client's xruns stay within 5 times that, the test is marked
    xfail with the figures: zero underruns cannot be shown on a machine that
    stalls a C client too. A stream kept waiting for its GIL does some 100
    times worse (273 underruns in 5 s, ``test_busy_python_thread_...``) and
    still fails. On a quiet machine nothing is excused: zero underruns pass.
    """
    if out.underruns == 0:
        return
    x = server.xruns_since(mark)
    ours = x["driver_late"] + x["not_scheduled"] + x["unfinished"]
    # the machine's own stall count for this window: the C client's rate, or jackd's own timer
    # waking late in this very window (no client is involved in that), whichever says more
    rate_hi = poisson_upper(reference["events"]) / reference["seconds"]
    machine = max(rate_hi * seconds, x["driver_late"])
    allowed = 5.0 * machine
    text = (f"{out.underruns} underruns in {out.callbacks} callbacks; jackd logged {ours} xruns in {seconds:.0f} s "
            f"({x['driver_late']} late wake-ups of its own timer, {x['not_scheduled']} cycles a client had not "
            f"started, {x['unfinished']} it had not finished), against {reference['events']} in "
            f"{reference['seconds']:.0f} s for jack_metro alone just before (allowed {allowed:.1f}); load average "
            f"{tuple(round(v, 2) for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    if ours <= allowed:
        pytest.xfail("the machine stalls a C JACK client as well, so zero underruns cannot be shown here: " + text)
    raise AssertionError(text + "\n" + "\n".join(x["lines"][-10:]))
