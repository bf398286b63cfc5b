"""The live terminal view of a session (rich), refreshed off the hot path.

A rich ``Live`` display on stderr, redrawn 4 times a second by rich's own
refresh thread from the engine's latest result and statistics; the per-TR
loop never waits for it (it only reads what the loop already stored).
``--no-dashboard`` leaves it out (scripts, benchmarks).
"""

from __future__ import annotations

import time

import numpy as np

from .alerts import TSNR_ALERT_RATIO, standing_alerts, trigger_status, tsnr_status

__all__ = ["Dashboard"]

_SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(values, hi: float) -> str:
    """One character per value, scaled to [0, hi]."""
    v = np.clip(np.nan_to_num(np.asarray(values, float)) / max(hi, 1e-9), 0, 1)
    return "".join(_SPARK[int(round(x * (len(_SPARK) - 1)))] for x in v)


def _describe_level(output) -> str:
    """What the output sent out over the last second, as RMS and peak dBFS."""
    try:
        lv = output.level(1.0)
    except Exception as e:  # a device gone: the alert says it; the row must not break the view
        return f"n/a ({type(e).__name__})"
    if lv is None:
        return "nothing rendered yet"
    if lv["peak_dbfs"] == float("-inf"):
        return "silence"
    return f"{lv['rms_dbfs']:.1f} dBFS RMS, peak {lv['peak_dbfs']:.1f} dBFS"


def _not_realtime(audio: dict) -> str:
    """`` (callback not real-time: SCHED_OTHER)`` in red after the underruns, when the sound device's callback
    thread runs without real-time priority (what may explain them); empty otherwise (or for a WAV sink)."""
    from rich.markup import escape

    sched = audio.get("callback_scheduling")
    if not sched or sched.get("realtime"):
        return ""
    return f" [red](callback not real-time: {escape(str(sched.get('policy')))})[/red]"


def _describe_run_tsnr(tsnr: float | None, training: float | None) -> tuple[str, bool]:
    """The run's temporal SNR so far beside the Training runs' after as many volumes (``tSNR 52 (training
    48)``), and whether it is low: under :data:`~realtime.session.alerts.TSNR_ALERT_RATIO` of the Training runs'.

    ``tsnr`` None (the run's first volumes): ``tSNR —``; ``training`` None (a bundle without the figure): the
    run's alone, never low.
    """
    if tsnr is None:
        return "tSNR —" + (f" (training {training:.0f})" if training else ""), False
    return (f"tSNR {tsnr:.0f}" + (f" (training {training:.0f})" if training else ""),
            bool(training) and tsnr < TSNR_ALERT_RATIO * training)


class Dashboard:
    """Live view of a :class:`~realtime.session.engine.SessionEngine` (and its receiver).

    Parameters
    ----------
    engine : SessionEngine
    receiver : realtime.receiver.Receiver or None
        For rejected-message counts.
    fd_threshold_mm : float
        Drawn as the scale of the FD trace.
    blind : bool
        The operator is blinded (``--allocation``): whether the music is real
        or a sham is not shown.
    triggers : realtime.triggers.TriggerLog, optional
        The scanner's trigger (``--trigger``): pulses so far, the last one's
        age, and the latest volumes' image delay.
    operator : realtime.session.operator.OperatorControl, optional
        The sound as the operator set it (muted, or the level), on its own
        row, and the muted alert.
    keys : bool
        The console's keys change the sound (:mod:`.keys`): say which.
    audio : realtime.session.alerts.AudioWatch, optional
        The output's level over the last second, and its alerts (a stream
        that stopped).
    """

    def __init__(self, engine, receiver=None, fd_threshold_mm: float = 0.5, console=None, blind: bool = False,
                 triggers=None, operator=None, keys: bool = False, audio=None):
        from rich.console import Console

        self.engine = engine
        self.receiver = receiver
        self.fd_threshold_mm = fd_threshold_mm
        self.blind = blind
        self.triggers = triggers
        self.operator = operator
        self.keys = keys
        self.audio = audio
        self.console = console or Console(stderr=True)
        self._live = None
        self._t0 = time.monotonic()

    def render(self):
        from rich.console import Group
        from rich.markup import escape
        from rich.panel import Panel
        from rich.table import Table

        e, r = self.engine, self.engine.last
        st = e.stats()
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        if self.operator is not None:  # first: what the participant hears, whatever the decoder does
            sound = self.operator.describe() + ("; sound check playing" if self.engine.soundchecking else "")
            from .keys import KEYS_HELP

            head.add_row("sound", (f"[bold red]{sound.upper()}[/bold red]" if self.operator.muted else sound)
                         + (f"  [dim](keys: {KEYS_HELP})[/dim]" if self.keys else ""))
        if self.audio is not None and self.audio.output is not None:
            head.add_row("output level (1 s)", _describe_level(self.audio.output))
        if r is None:
            head.add_row("waiting", "for the first volume ...")
        else:
            lag = time.time() - r.timestamps.get("acquired", time.time()) if r.timestamps.get("acquired") else None
            head.add_row("run / volume", f"{r.run_id} / {r.index}  (decodes moment {r.decoded_index})")
            head.add_row("lag behind scanner", f"{lag:.2f} s" if lag is not None else "n/a (no acquisition time)")
            if self.triggers is not None:
                text, alert = trigger_status(self.triggers, e, r.run_id)
                head.add_row("scanner trigger", f"[yellow]{text}[/yellow]" if alert else text)
                if self.triggers.trigger.buttons:
                    presses = list(self.triggers.presses)
                    head.add_row("responses", f"{len(presses)} presses" + (
                        f", last {presses[-1][1]!r} {time.time() - presses[-1][0]:.1f} s ago" if presses else ""))
            head.add_row("action", f"{r.action}{'  [motion hold]' if r.flagged else ''}")
            if r.condition is not None:
                head.add_row("block", r.condition)
            if self.blind:
                head.add_row("feedback", "as allocated (blinded)")
            elif e.yoke is not None:
                src = e.yoke.source_run(r.run_id)
                head.add_row("feedback", f"SHAM: the music of {e.yoke.schedule['source']}, run "
                             f"{src['run_id'] if src else '(none left: clip kept)'}")
            clip = e.library.clips[e.library.index_of(r.clip)] if r.clip else None
            head.add_row("playing", f"{r.clip}  ({clip.genre or clip.source})" if clip else "-")
            pieces = st.get("pieces")
            if pieces is not None:  # generation mode: the piece is composed live
                from .generation import describe_pieces

                head.add_row("generator", describe_pieces(pieces, e.options.segment_bars))
            head.add_row("tags", ", ".join(f"{t} {p:.2f}" for t, p in r.tags) or "-")
            head.add_row("next candidate", e.next_candidate or "-")
            recent = list(e.results)[-60:]  # list() copies under the GIL: the loop may be appending
            fds = [x.fd_mm for x in recent if x.run_id == r.run_id]
            head.add_row(f"FD (last {len(fds)}, scale {self.fd_threshold_mm:g} mm)",
                         sparkline(fds, self.fd_threshold_mm) + (f"  {r.fd_mm:.2f} mm" if r.fd_mm is not None else ""))
            dvs = [x.dvars_pct for x in recent if x.run_id == r.run_id and x.dvars_pct is not None]
            if dvs:  # scaled to 3x the run's median: a spike stands out as a full bar
                scale = 3.0 * float(np.median([v for v in dvs if v > 0] or [1.0]))
                head.add_row(f"DVARS (last {len(dvs)}, scale {scale:.2g} %)",
                             sparkline(dvs, scale) + f"  {dvs[-1]:.2f} %")
            tsnr, ref = tsnr_status(e)
            text, low = _describe_run_tsnr(tsnr, ref if tsnr is not None else getattr(e, "training_tsnr", None))
            head.add_row("signal, run so far", f"[bold red]{text}[/bold red]" if low else text)
            if r.motion:
                head.add_row("motion", "t " + " ".join(f"{v:+.2f}" for v in r.motion[:3]) + " mm, r "
                             + " ".join(f"{np.degrees(v):+.2f}" for v in r.motion[3:]) + " deg")
        lat = Table(title="latency per stage (ms)", title_justify="left", box=None)
        for col in ("stage", "last", "p50", "p99", "n"):
            lat.add_column(col, justify="right" if col != "stage" else "left")
        for k, v in st["latency_ms"].items():
            lat.add_row(k, f"{v['last']:.2f}", f"{v['p50']:.2f}", f"{v['p99']:.2f}", str(v["n"]))
        c = st["counts"]
        audio = st.get("audio") or {}
        rejected = self.receiver.stats.rejected if self.receiver is not None else 0
        foot = (f"volumes {c['volumes']}  decoded {c['decoded']}  switches {c['switches']}  motion holds "
                f"{c['holds']}  errors {c['errors']}  stand-ins {c['stand_ins']}  rejected messages {rejected}  "
                f"audio underruns {audio.get('underruns', 'n/a')}{_not_realtime(audio)}  late audio commands "
                f"{audio.get('late_commands', 'n/a')}  uptime {time.monotonic() - self._t0:.0f} s")
        parts = [head, lat, foot]
        parts += [f"[red]{escape(a)}[/red]" for a in standing_alerts(e, self.receiver, self.triggers, self.operator,
                                                                     self.audio)]
        return Panel(Group(*parts), title="b2m session", border_style="cyan")

    def __rich__(self):
        return self.render()

    def start(self) -> "Dashboard":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self._live.start()
        return self

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
