"""Yoked sham feedback: the music another session's participant heard, TR by TR.

A neurofeedback study needs a control group that hears feedback which looks
and sounds like the real thing but does not follow their own brain (the
CRED-nf checklist, Ros et al. 2020, asks for such a control and its
blinding). ``b2m session --yoked-from SOURCE`` gives it: the participant
hears, at volume ``i`` of their ``k``-th run, the clip (or generated piece)
that the participant of ``SOURCE`` heard at volume ``i`` of *their*
``k``-th run, switches included. Everything else is as in a real session:
the volumes are recorded, preprocessed and decoded, and the participant's
own policy still runs, so the record keeps what real feedback would have
played (``own_clip``) next to what was played (``clip``).

At the start the source's played clips are copied into ``SESSION/yoked.json``;
a continued or replayed sham session reads that copy, so the record is
complete without the source folder. Runs are matched by the order they
started; a run or volume the source does not have keeps the clip playing.
"""

from __future__ import annotations

import logging
import os

from ..feedback import Decision
from .decisions import run_decisions

log = logging.getLogger("b2m.session")

__all__ = ["YOKED_JSON", "ALLOCATION_COLUMNS", "read_allocation", "yoked_schedule", "write_yoked", "read_yoked",
           "Yoke", "own_agreement"]

YOKED_JSON = "yoked.json"
#: Columns of an allocation file (TSV): who gets real feedback and who a sham, yoked to whose session.
ALLOCATION_COLUMNS = ("participant_id", "condition", "yoked_from")
CONDITIONS = ("real", "sham")


def read_allocation(path, participant: str) -> str | None:
    """The source session ``participant`` is yoked to in the allocation file ``path``, or None for real feedback.

    The file is a TSV with the columns :data:`ALLOCATION_COLUMNS`, written by
    someone who is not blinded: one row per participant, ``condition`` ``real``
    or ``sham``, and for a sham the session folder whose music they hear (a
    relative path is taken from the file's folder). With it, the operator runs
    ``b2m session --allocation FILE --participant P02`` and never sees the
    condition.

    Raises
    ------
    ValueError
        Naming the file, the line and the column at fault, and what to write there.
    """
    from .tables import read_table

    found = []
    for line, row in read_table(path, "--allocation", ALLOCATION_COLUMNS):
        pid, condition, source = (row[c] for c in ALLOCATION_COLUMNS)
        if condition not in CONDITIONS:
            raise ValueError(f"{path}, line {line}, column condition: {condition!r}; write real or sham")
        if (condition == "sham") != bool(source):
            raise ValueError(f"{path}, line {line}, column yoked_from: "
                             + ("a sham needs the session folder whose music it plays" if condition == "sham"
                                else "only a sham is yoked; leave it empty for real feedback"))
        if pid == participant:
            found.append((line, condition, source))
    if len(found) != 1:
        raise ValueError(f"{path}: participant {participant!r} is on "
                         + ("no line" if not found else f"lines {', '.join(str(f[0]) for f in found)}")
                         + "; each participant must be on exactly one (column participant_id)")
    _, condition, source = found[0]
    if condition == "real":
        return None
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), source))


def yoked_schedule(source_dir, library, mode: str = "retrieval", level_dbfs: float | None = -20.0) -> dict:
    """What the participant of ``source_dir`` heard: ``{"source", "mode", "runs": [{"run_id", "tr_s", "clips"}]}``.

    ``clips[i]`` is the library clip id playing after volume ``i`` of that run
    (None where the source heard silence: a silence block, or a volume
    decided while its operator had muted the sound or its sound device was
    down, so the sham hears the stimulation the source heard;
    ``unheard_volumes`` counts those). Runs are in the order
    they started. Raises ValueError, naming the folder and what to do, if
    ``source_dir`` holds no decisions, was another mode, or played clips that
    ``library`` does not have.
    """
    from .replay import SESSION_JSON, read_session_info

    source_dir = os.path.abspath(os.fspath(source_dir))
    if not os.path.isdir(source_dir):
        raise ValueError(f"--yoked-from {source_dir}: no such folder; give the --out folder of an earlier "
                         "`b2m session`")
    from .operator import read_unheard, unheard_at

    unheard = read_unheard(source_dir)  # the source's operator muted it, or its device was down
    runs, silenced = [], 0
    for run_id, decisions in run_decisions(source_dir):
        if not decisions:
            continue
        n = max(d["index"] for d in decisions) + 1
        clips: list = [None] * n
        for d in decisions:
            if d.get("clip") is not None and unheard_at(unheard, (d.get("timestamps") or {}).get("decided")):
                silenced += 1  # the source heard nothing here: neither does the sham
                continue
            clips[d["index"]] = d.get("clip")
        runs.append((float(decisions[0].get("offset_s") or 0.0), run_id,
                     {"run_id": run_id, "tr_s": float(decisions[0]["tr_s"]), "clips": clips}))
    if not runs:
        raise ValueError(f"--yoked-from {source_dir}: no decisions in its runs/*/decisions.log; give the --out "
                         "folder of a `b2m session` that decoded at least one run")
    src_mode, src_level = "retrieval", level_dbfs
    if os.path.exists(os.path.join(source_dir, SESSION_JSON)):
        info = read_session_info(source_dir)
        src_mode = info.get("mode", "retrieval")
        # a session recorded before --level-dbfs existed played the files at their own levels
        src_level = (info.get("options") or {}).get("level_dbfs")
    if src_mode != mode:
        raise ValueError(f"--yoked-from {source_dir}: that session ran in {src_mode} mode and this one in {mode}; "
                         f"give --mode {src_mode}")
    if (src_level is None) != (level_dbfs is None) or (src_level is not None and abs(src_level - level_dbfs) > 1e-6):
        def say(v):
            return "the files' own levels" if v is None else f"{v:g} dBFS"

        raise ValueError(f"--yoked-from {source_dir}: that session played its music at {say(src_level)} and this "
                         f"one would at {say(level_dbfs)}; give --level-dbfs "
                         f"{'none' if src_level is None else f'{src_level:g}'} so the sham sounds as the source did")
    known = {c.id for c in library.clips}
    unknown = sorted({c for _, _, r in runs for c in r["clips"] if c is not None and c not in known})
    if unknown:
        raise ValueError(f"--yoked-from {source_dir}: it played {len(unknown)} clip(s) this library does not have "
                         f"(first: {unknown[0]!r}); give --library the library that session used")
    if silenced:
        log.info("yoked: %d volume(s) of %s were decided while its participant heard nothing (muted, or the sound "
                 "device down): silence there for this participant too", silenced, source_dir)
    return {"source": source_dir, "mode": mode, "runs": [r for _, _, r in sorted(runs, key=lambda t: t[:2])],
            "unheard_volumes": silenced}


def write_yoked(session_dir, schedule: dict) -> str:
    """Keep ``schedule`` in the session record as ``yoked.json`` (atomically)."""
    from protocols.session import write_json_atomic

    path = os.path.join(os.fspath(session_dir), YOKED_JSON)
    write_json_atomic(path, schedule)
    return path


def read_yoked(session_dir) -> dict | None:
    """The schedule a sham session played (``yoked.json``), or None for a session with real feedback."""
    from .replay import read_record_json

    path = os.path.join(os.fspath(session_dir), YOKED_JSON)
    return read_record_json(path) if os.path.exists(path) else None


class Yoke:
    """Replaces the policy's decision by what the source participant heard at the same run and volume.

    Parameters
    ----------
    schedule : dict
        From :func:`yoked_schedule` (or :func:`read_yoked`).
    library : music.library.Library
        This session's library (clip ids are mapped to its rows).
    """

    def __init__(self, schedule: dict, library):
        self.schedule = schedule
        self.library = library
        self._ordinal: dict[str, int] = {}  # this session's run id -> the order it started in
        self.current: int | None = None  # the source's clip at the last volume (None: silence)
        self._started = False
        self._warned: set = set()
        self.counts = {"trs": 0, "beyond_source": 0}

    def source_run(self, run_id: str) -> dict | None:
        """The source run yoked to this session's run ``run_id`` (None past the source's last run)."""
        k = self._ordinal.get(run_id, len(self._ordinal))  # a run not seen yet would be the next one
        runs = self.schedule["runs"]
        return runs[k] if k < len(runs) else None

    def clip_for(self, own: Decision, run_id: str, index: int) -> tuple[int | None, list | None]:
        """The library row to play instead of ``own.clip`` (None: the source heard silence), and
        ``[source run id, index]`` it came from (None past the source's record, where what plays is kept)."""
        self._ordinal.setdefault(run_id, len(self._ordinal))
        src = self.source_run(run_id)
        within = src is not None and index < len(src["clips"])
        if within:
            clip_id = src["clips"][index]
            want = self.library.index_of(clip_id) if clip_id is not None else None
        else:
            self.counts["beyond_source"] += 1
            if run_id not in self._warned:
                self._warned.add(run_id)
                log.warning("yoked: %s/%d is beyond what %s recorded (%s); the clip playing is kept",
                            run_id, index, self.schedule["source"],
                            f"its run {src['run_id']} has {len(src['clips'])} volumes" if src else "no run left")
            want = self.current if self._started else own.clip  # at the very start: the neutral clip
        self._started = True
        self.current = want
        self.counts["trs"] += 1
        return want, ([src["run_id"], index] if within else None)

    def upcoming(self, run_id: str, index: int) -> int | None:
        """The library row of the next clip the source switched to after volume ``index`` (None if none)."""
        src = self.source_run(run_id)
        if src is None:
            return None
        for clip_id in src["clips"][index + 1:]:
            if clip_id is not None and self.library.index_of(clip_id) != self.current:
                return self.library.index_of(clip_id)
        return None

    def summary(self) -> dict:
        """For ``summary.json``: the source, which of its runs each run was yoked to, TRs yoked and beyond it."""
        return {"source": self.schedule["source"], "runs": {r: (self.schedule["runs"][k]["run_id"]
                                                                if k < len(self.schedule["runs"]) else None)
                                                            for r, k in self._ordinal.items()}, **self.counts}


def own_agreement(session_dir) -> float | None:
    """In a sham session's record: the share of decoded TRs at which the participant's own decoding chose the
    clip that played (None without such TRs: a session with real feedback has no ``own_clip``)."""
    pairs = [(d["own_clip"], d["clip"]) for _, ds in run_decisions(session_dir) for d in ds
             if d.get("embedding") is not None and d.get("own_clip") is not None and d.get("clip") is not None]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None
