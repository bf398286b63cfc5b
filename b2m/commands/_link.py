"""The sending side's common options and end-of-run report (``scanner replay``, ``scanner watch``)."""

from __future__ import annotations

import numpy as np

from realtime.transport import DEFAULT_ENDPOINT

from ._curve import add_client_args


def add_sender_args(p) -> None:
    """--connect, --resend-timeout, --drain-timeout, the CURVE client keys and --quiet."""
    p.add_argument("--connect", default=DEFAULT_ENDPOINT, help=f"receiver endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--resend-timeout", type=float, default=1.0, help="seconds before an unacked volume is resent")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds to wait for the last acks before giving up (exit 1)")
    add_client_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress line")


def add_trigger_out_args(p) -> None:
    """--trigger-out, --trigger-key and --recon-delay: a stand-in scanner's trigger pulses."""
    from realtime.triggers import DEFAULT_KEY

    p.add_argument("--trigger-out", metavar="PATH", default=None,
                   help="also play the scanner's trigger: write --trigger-key to PATH (one end of a serial line, "
                        "e.g. of `socat pty,raw,echo=0,link=/tmp/box pty,raw,echo=0,link=/tmp/port`) as each "
                        "volume's acquisition begins; each volume then follows one TR plus --recon-delay later "
                        "(real time only), for `b2m session --trigger /tmp/port`")
    p.add_argument("--trigger-key", default=DEFAULT_KEY, help=f"the pulse's character (default {DEFAULT_KEY})")
    p.add_argument("--recon-delay", type=float, default=0.0, metavar="SECONDS",
                   help="seconds from the end of a volume's acquisition until it is ready (default 0)")


def report_link(console, res, connect: str, resume_hint: str) -> None:
    """On stderr: each rejected message with its field and reason, and what was never acked."""
    for key, field, reason in res.rejected:
        console.print(f"[red]rejected[/red] {key}: {field}: {reason}", highlight=False)
    if res.unacked:
        console.print(f"[red]{len(res.unacked)} message(s) never acked[/red]; is the receiver running at "
                      f"{connect}? {resume_hint}", highlight=False)


def ms_percentile(seconds: np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile of times in seconds, in ms rounded to 1 us; None for no samples."""
    return round(float(np.percentile(seconds, q)) * 1e3, 3) if seconds.size else None


def link_summary(res) -> dict:
    """The end-of-run JSON fields every sender prints (a ``ReplayResult`` or a ``WatchResult``)."""
    return {"run_id": res.run_id, "sent": res.n_sent, "all_acked": res.all_acked, "resent": res.resent,
            "rejected": [list(map(str, r)) for r in res.rejected], "unacked": [list(map(str, k)) for k in res.unacked],
            "latency_ms_p50": ms_percentile(res.latency_s, 50), "latency_ms_p99": ms_percentile(res.latency_s, 99),
            "wall_s": round(res.wall_s, 3)}
