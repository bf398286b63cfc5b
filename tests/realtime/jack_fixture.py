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
figures when the stream does no worse than 5 times the machine's own rate
(the upper end of its 95 % Poisson interval). The server itself is
:mod:`realtime.audio.jack`.
"""

from __future__ import annotations

import os

import pytest

from realtime.audio.jack import JackServer, reference_xruns, start_jackd  # noqa: F401  (re-exported for tests)


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
