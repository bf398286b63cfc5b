"""The decisions half of the session record: one append-only log per run.

``SESSION/runs/<run_id>/decisions.log`` is a :class:`protocols.record.RecordLog`
next to the run's ``volumes.log``. Record ``i`` holds what the session did with
one volume: a msgpack header (the fields of :class:`protocols.wire.Result`
plus the audio command) and, as payload, the decoded embedding as
little-endian float32 (empty before the first decodable volume).

Records are written without ``fdatasync``: they reach the page cache before
the next volume is handled, so a crash of the session process (even SIGKILL)
loses none of them; only a power cut can lose the last few, and those are
recomputed exactly from the volumes, which *are* synced (:mod:`.replay`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from protocols.record import RecordLog, scan_records

__all__ = ["DecisionLog", "read_decisions", "decisions_path", "run_decisions", "session_results"]


def decisions_path(session_dir, run_id: str) -> str:
    return os.path.join(os.fspath(session_dir), "runs", run_id, "decisions.log")


class DecisionLog:
    """Append decisions of one run (``path`` is created with its folder).

    A decision the disk refuses (full, failing) is held in memory and
    written, in order, before the next one: once there is room again the log
    is whole. :meth:`append` raises only the first time of a spell (so the
    caller says it once); :attr:`held` counts what waits.
    """

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self._log = RecordLog(path, sync=False)
        self._held: list[tuple[dict, bytes]] = []

    @property
    def held(self) -> int:
        return len(self._held)

    def append(self, header: dict, embedding: np.ndarray | None) -> None:
        payload = b"" if embedding is None else np.ascontiguousarray(embedding, "<f4").tobytes()
        was_held = bool(self._held)
        self._held.append((header, payload))
        try:
            self._flush()
        except OSError:
            if not was_held:  # the first refusal of a spell: the caller says so once
                raise

    def _flush(self) -> None:
        """Write what is held, in order; an ``OSError`` leaves the rest held."""
        while self._held:
            self._log.append(*self._held[0])
            self._held.pop(0)

    def close(self) -> None:
        try:
            self._flush()  # a last try for what the disk refused
        except OSError:
            pass
        self._log.close()


def read_decisions(path: str) -> list[dict]:
    """All decision records of a run, in order; each header gets ``"embedding"`` (ndarray or None)."""
    records, _ = scan_records(path)
    out = []
    for rec in records:
        h = dict(rec.header)
        h["embedding"] = np.frombuffer(rec.payload, "<f4").copy() if rec.payload else None
        out.append(h)
    return out


def run_decisions(session_dir) -> Iterator[tuple[str, list[dict]]]:
    """``(run_id, read_decisions(...))`` for every run of a session that has a decisions log, by run id."""
    runs_dir = os.path.join(os.fspath(session_dir), "runs")
    for run_id in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        path = decisions_path(session_dir, run_id)
        if os.path.exists(path):
            yield run_id, read_decisions(path)


def session_results(session_dir) -> list:
    """Every decision of a session as :class:`protocols.wire.Result`, runs in the order they started.

    This is how the whole session is seen after the fact (reports): the engine
    itself keeps only its newest results in memory.
    """
    from dataclasses import fields

    from protocols.wire import Result

    names = {f.name for f in fields(Result) if f.init}
    per_run = [(float(ds[0].get("offset_s") or 0.0), run_id, ds) for run_id, ds in run_decisions(session_dir) if ds]
    out = []
    for _, _, ds in sorted(per_run, key=lambda t: (t[0], t[1])):
        for d in ds:
            kw = {k: v for k, v in d.items() if k in names}
            kw["topk"] = [tuple(t) for t in kw.get("topk") or []]
            kw["tags"] = [tuple(t) for t in kw.get("tags") or []]
            out.append(Result(**kw))
    return out
