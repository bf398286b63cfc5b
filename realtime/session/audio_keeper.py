"""A sound device that stops is reopened, and the time the participant heard nothing is recorded.

A JACK server restarted, a USB interface pulled out and plugged back: the
stream's callbacks stop while the session decodes on (the alert of
:class:`~realtime.session.alerts.AudioWatch` says so). :class:`AudioKeeper`
watches on a thread and, while the device is down, tries every
:data:`RETRY_S` seconds to open it again as the session did (the same
``--audio``, in its own process); once that works, the engine plays on the
new output from its next volume (:meth:`SessionEngine.use_output`), starting
again what the participant should hear, with the operator's mute and level.

Every outage is appended to ``SESSION/audio_outages.tsv`` (``time_unix``,
``event`` ``stopped`` or ``reopened``, ``detail``; flushed and synced), and
``b2m session export`` lists each as an ``audio_outage`` event, so the
music rows of those seconds are not taken for music heard. Only an output in
its own process is reopened (the session's default); an in-process one
(``--in-process-audio``) keeps the alert only, since PortAudio would have to
be restarted under the running session.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .tables import KeptTable, read_kept

log = logging.getLogger("b2m.session")

__all__ = ["OUTAGES_FILE", "RETRY_S", "AudioKeeper", "read_outages", "outage_spans", "describe_outage"]

OUTAGES_FILE = "audio_outages.tsv"
#: Seconds between attempts to open a stopped device again.
RETRY_S = 2.0


def read_outages(session_dir) -> list[dict]:
    """The rows of ``SESSION/audio_outages.tsv`` (``[]`` if none): ``time_unix`` (float), ``event``, ``detail``."""
    def parse(r):
        if r.get("event") not in ("stopped", "reopened") or r.get("detail") is None:
            raise ValueError(f"event {r.get('event')!r}, detail {r.get('detail')!r}")
        return {"time_unix": float(r["time_unix"]), "event": r["event"], "detail": r["detail"]}

    return read_kept(os.path.join(os.fspath(session_dir), OUTAGES_FILE), parse)


def outage_spans(rows: list[dict], end_unix: float | None = None) -> list[tuple[float, float | None, str]]:
    """Each outage as ``(start, end, why)`` in Unix s; one not reopened ends at ``end_unix`` (None if not given)."""
    spans, start = [], None
    for r in sorted(rows, key=lambda r: r["time_unix"]):
        if r["event"] == "stopped" and start is None:
            start = r
        elif r["event"] == "reopened" and start is not None:
            spans.append((start["time_unix"], r["time_unix"], start["detail"]))
            start = None
    if start is not None:
        spans.append((start["time_unix"], end_unix, start["detail"]))
    return spans


def describe_outage(o: dict) -> str:
    """One outage of :meth:`AudioKeeper.summary` in a line: why, and how long there was no sound."""
    if o["end_unix"] is None:
        return f"{o['why']}: not reopened before the session ended"
    return f"{o['why']}: no sound for {o['end_unix'] - o['start_unix']:.1f} s, then reopened"


class AudioKeeper:
    """Reopen the session's sound device when it stops; record each outage.

    Parameters
    ----------
    engine : SessionEngine
        Takes the reopened output (:meth:`SessionEngine.use_output`).
    watch : realtime.session.alerts.AudioWatch
        Says when the device is down (and is pointed at the new one).
    reopen : callable
        Makes a new output as the session did (not started); it may raise
        while the device is still gone.
    record_dir : path-like or None
        Session folder for ``audio_outages.tsv``.
    retry_s : float
        Seconds between attempts.
    """

    def __init__(self, engine, watch, reopen, record_dir=None, retry_s: float = RETRY_S):
        self.engine, self.watch, self.reopen = engine, watch, reopen
        self.path = os.path.join(os.fspath(record_dir), OUTAGES_FILE) if record_dir is not None else None
        self._table = KeptTable(self.path, ("time_unix", "event", "detail")) if self.path is not None else None
        self.retry_s = float(retry_s)
        self.outages: list[dict] = []  # {"start_unix", "end_unix", "why", "attempts"}
        self._open: dict | None = None
        self._pending = None  # a started output handed to the engine, not yet taken
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="b2m-audio-keeper", daemon=True)

    def start(self) -> "AudioKeeper":
        self._thread.start()
        return self

    def _run(self) -> None:
        last_try = -float("inf")
        while not self._stop.wait(0.25):
            if self._pending is not None:  # the engine takes it at its next volume
                continue
            down = self.watch.down()
            if down is None:
                continue
            if self._open is None:
                why, since = down
                self._open = {"start_unix": since, "end_unix": None, "why": why, "attempts": 0}
                self.outages.append(self._open)
                self._write(since, "stopped", why)
                log.error("audio: %s: the participant hears nothing; reopening it every %.0f s", why, self.retry_s)
            if time.monotonic() - last_try < self.retry_s:
                continue
            last_try = time.monotonic()
            self._open["attempts"] += 1
            try:
                out = self.reopen()
                out.start()
            except Exception as e:  # still gone: try again
                if self._open["attempts"] == 1:
                    log.warning("audio: cannot reopen the output yet (%s: %s); trying every %.0f s",
                                type(e).__name__, e, self.retry_s)
                continue
            self._pending = out
            self.engine.use_output(out)

    def taken(self, output) -> None:
        """The engine plays on ``output`` now (its ``on_new_output`` hook, engine thread): the outage ends."""
        self._pending = None
        self.watch.rewatch(output)
        if self._open is not None:
            now = time.time()
            self._open["end_unix"] = now
            self._write(now, "reopened", f"{getattr(output, 'device_name', output)} after "
                                         f"{self._open['attempts']} attempt(s)")
            log.warning("audio: reopened after %.1f s without sound", now - self._open["start_unix"])
            self._open = None

    def _write(self, t: float, event: str, detail: str) -> None:
        if self._table is None:
            return
        e = self._table.append([repr(float(t)), event, detail.replace("\t", " ").replace("\n", " ")])
        if e is not None:  # held, and written with the next row
            log.error("could not record the audio outage in %s (%s)", self.path, e.strerror or e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        if self._pending is not None:  # reopened but never taken (no volume came since): not left running
            try:
                self._pending.close()
            except Exception:
                pass
            self._pending = None

    close = stop

    def summary(self) -> list[dict]:
        """Each outage: ``start_unix``, ``end_unix`` (None if the device never came back), ``why``, ``attempts``."""
        return [dict(o) for o in self.outages]
