"""The scanner side's clock against this computer's.

A volume's ``t_acquired`` and ``t_sent`` are stamped on the clock of the
computer that sends it (the scanner console, a relay PC watching the export
folder); ``t_recv`` and everything the session does after it are stamped on
the session computer's clock. At a site the two clocks often disagree by
seconds (a console not synchronised by NTP), and then the lag shown to the
operator and the onsets of the music in the exported ``events.tsv`` are off by
as much.

Every message gives one sample ``t_recv - t_sent = offset + latency``, where
``offset`` is this clock minus the sender's and the latency (the network, the
queue, a resend) is never negative. The smallest sample is therefore the
offset plus the link's smallest latency (well under a millisecond on a LAN):
the lower envelope, as NTP's filter takes the sample of least delay. A sender
that stamps nothing (``t_sent`` 0) gives no sample.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SenderClock", "sender_offset", "CLOCK_WARN_S", "describe_offset", "host_clock_sync", "describe_host_clock"]

#: Offsets (seconds) at or beyond this are more than a link's latency explains: the clocks disagree.
CLOCK_WARN_S = 0.1


def sender_offset(t_sent, t_recv) -> float | None:
    """This clock minus the sender's, seconds: ``min(t_recv - t_sent)`` over the stamped messages.

    Parameters
    ----------
    t_sent, t_recv : array-like of shape (n_messages,)
        Unix seconds on the sender's clock and on this one; a ``t_sent`` of
        0 (or not finite) is a message sent without a stamp, and is skipped.

    Returns
    -------
    float or None
        None if no message was stamped.
    """
    sent, recv = np.asarray(t_sent, float), np.asarray(t_recv, float)
    ok = np.isfinite(sent) & np.isfinite(recv) & (sent > 0)
    return float(np.min(recv[ok] - sent[ok])) if ok.any() else None


class SenderClock:
    """The running estimate of :func:`sender_offset`, one message at a time (one per run and sender).

    Attributes
    ----------
    offset_s : float or None
        This clock minus the sender's, seconds (None before a stamped message).
    n : int
        Stamped messages seen.
    """

    def __init__(self) -> None:
        self.offset_s: float | None = None
        self.n = 0

    def update(self, t_sent: float, t_recv: float) -> None:
        if not (t_sent > 0 and math.isfinite(t_sent) and math.isfinite(t_recv)):
            return
        self.n += 1
        sample = t_recv - t_sent
        if self.offset_s is None or sample < self.offset_s:
            self.offset_s = sample

    def here(self, t: float) -> float:
        """A time stamped on the sender's clock (e.g. ``t_acquired``), on this one; 0 (no stamp) stays 0."""
        return t + self.offset_s if (t and self.offset_s is not None) else t


def describe_offset(offset_s: float, who: str = "the scanner side's clock") -> str:
    """``"the scanner side's clock is 3.02 s ahead of this computer's"`` (or behind)."""
    return f"{who} is {abs(offset_s):.2f} s {'ahead of' if offset_s < 0 else 'behind'} this computer's"


# ---- this computer's clock discipline (NTP, PTP) ----------------------------------

#: ``adjtimex(2)`` clock states, by the value it returns.
_CLOCK_STATES = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT", 5: "TIME_ERROR"}
_STA_UNSYNC = 0x0040


def host_clock_sync() -> dict | None:
    """Whether the kernel counts this computer's clock as synchronised (NTP, PTP), from ``adjtimex(2)``.

    A read only (``modes`` 0): nothing is changed. An NTP daemon (chrony,
    ntpd, systemd-timesyncd) that disciplines the clock clears the kernel's
    ``STA_UNSYNC`` flag and keeps its error estimates.

    Returns
    -------
    dict or None
        ``synchronised`` (bool), ``state`` (``"TIME_OK"``, ..., ``"TIME_ERROR"``),
        ``est_error_s`` and ``max_error_s`` (the kernel's estimated and
        maximum error, seconds). None where the call does not exist (not Linux).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None

    class _Timex(ctypes.Structure):  # struct timex's leading fields; the rest is room the kernel may write
        _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                    ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                    ("rest", ctypes.c_byte * 256)]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return {"synchronised": not (tx.status & _STA_UNSYNC) and state != 5,
            "state": _CLOCK_STATES.get(state, str(state)),
            "est_error_s": tx.esterror * 1e-6, "max_error_s": tx.maxerror * 1e-6}


def describe_host_clock(sync: dict | None) -> tuple[str, bool]:
    """One line on this computer's clock for ``b2m session --check`` and the session report, and whether it
    needs the operator's attention (not synchronised).

    ``sync`` None (not Linux): not known, and no warning.
    """
    if sync is None:
        return "not known on this system (no adjtimex)", False
    if sync["synchronised"]:
        return (f"synchronised (the kernel's estimated error {1e3 * sync['est_error_s']:.1f} ms, "
                f"at most {1e3 * sync['max_error_s']:.0f} ms)"), False
    return ("NOT synchronised by NTP or PTP (kernel state " + sync["state"] + "): the session moves the scanner "
            "side's times onto this clock by the offset it measures from each run's messages, but two "
            "free-running clocks drift apart (tens of ppm: up to about 0.2 s an hour), and the music's wall-clock times in the record and the BIDS "
            "export drift with them. Synchronise this computer and the scanner console to the site's time "
            "server (chrony or systemd-timesyncd)"), True
