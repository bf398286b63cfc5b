"""A JACK server on the dummy backend: real audio clocks on machines without a sound card.

``jackd -d dummy`` runs a real JACK graph on a timer, so a PortAudio stream on
it has a real clock and countable underruns (ALSA's null device has neither).
:func:`start_jackd` starts one under a unique server name, sets
``JACK_DEFAULT_SERVER`` so this process and its children (the isolated audio
process, ``b2m session``) use it, and waits until PortAudio lists it;
:meth:`JackServer.stop` stops it by PID. :func:`reference_xruns` runs the C
client ``jack_metro`` alone for a few seconds: what the machine itself does to
a JACK client right now, the yardstick for a stream's underruns. Used by the
tests and benchmarks; a site can use it to rehearse a session without sound
hardware.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

__all__ = ["JACK_RATE", "JACK_PERIOD", "JackServer", "start_jackd", "reference_xruns"]

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
    realtime: bool = True

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
    """In the child before exec: have the kernel SIGTERM jackd if its parent dies (Linux)."""
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
    from ._device import list_output_devices, refresh_devices

    refresh_devices()  # PortAudio lists devices once, at initialisation
    return any("JACK" in d["hostapi"] for d in list_output_devices())


def start_jackd(log_dir: str, rate: int = JACK_RATE, period: int = JACK_PERIOD,
                timeout: float = 20.0, prefix: str = "b2m") -> JackServer:
    """Start a dummy-backend jackd under a unique name and wait until PortAudio lists it.

    Sets ``os.environ["JACK_DEFAULT_SERVER"]``. Tries realtime scheduling
    first and, if the server dies, once more without it. Raises RuntimeError
    with jackd's log if it cannot start.
    """
    exe = shutil.which("jackd")
    if exe is None:
        raise RuntimeError("jackd is not installed: install Debian's jackd2 and libportaudio2 "
                           "(DEBIAN_FRONTEND=noninteractive apt-get install -y jackd2 libportaudio2); "
                           "see README.md, 'A session in one minute', for starting jackd on a machine without a sound "
                           "card")
    failures = []
    for extra in ([], ["--no-realtime"]):
        name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        log_path = os.path.join(log_dir, f"jackd-{name}.log")
        cmd = [exe, "-n", name, *extra, "-d", "dummy", "-r", str(rate), "-p", str(period)]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, JACK_NO_AUDIO_RESERVATION="1"),
                                    preexec_fn=_die_with_parent)
        server = JackServer(name, rate, period, proc, log_path, realtime=not extra)
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
    hint = ""
    if any("Too many servers already active" in f for f in failures):
        hint = ("\nJACK's registry of servers (/dev/shm/jack-shm-registry, 8 places) is full: servers killed with "
                "SIGKILL leave their place taken. With no jackd running (pgrep jackd), remove it: "
                "rm /dev/shm/jack-shm-registry")
    raise RuntimeError("could not start a JACK dummy server:\n" + "\n".join(failures) + hint)


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
