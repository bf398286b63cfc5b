"""A session record as a BIDS dataset: each run's BOLD series and the music the participant heard.

``b2m session export SESSION --bids DIR --subject 01`` writes, per complete run
(numbered in the order the runs were received)::

    DIR/dataset_description.json
    DIR/sub-01[/ses-S]/func/sub-01[_ses-S]_task-T_run-NN_bold.nii.gz    the volumes as received, bit-exact
    DIR/sub-01[/ses-S]/func/sub-01[_ses-S]_task-T_run-NN_bold.json      RepetitionTime, TaskName, b2m's run id
                                                                     (a sham session: whose music it played;
                                                                     the clock offset the onsets used)
    DIR/sub-01[/ses-S]/func/sub-01[_ses-S]_task-T_run-NN_events.tsv     one row per clip or piece heard (music),
                                                                     silence, protocol block (block_*),
                                                                     button press (response), the
                                                                     operator's mute or level (operator_*)
                                                                     and the sound device down
                                                                     (audio_outage)
    DIR/stimuli/LIBRARY/...                                           the audio files of the clips heard
                                                                     (events.tsv's stim_file is relative to
                                                                     DIR/stimuli, as BIDS has it)
    DIR/task-T_events.json                                           what each column of events.tsv holds
    DIR/README                                                       what the dataset is
    DIR/derivatives/b2m/sub-01[/ses-S]/func/..._run-NN_desc-decoded_timeseries.tsv (and .json)
                                                                     per volume: the decision and the decoded
                                                                     embedding

so a feedback session can be analysed like any other fMRI data (nilearn,
fMRIPrep), or decoded offline.

**Onsets** are in seconds from the start of the run's first volume, when each
clip (or, in generation mode, each piece) begins to sound:

- with a WAV sink, the output's frames are the session clock itself: a frame
  ``f`` sounds at ``f / samplerate - offset_s``, where the run's volume ``i``
  is acquired at ``offset_s + i * TR``;
- with a sound device, the engine logs, at each switch, how far ahead of the
  device's clock the switch was scheduled (``audio_lead_s``, from
  ``audio_scheduled``); the run's start on the same wall clock comes from the
  scanner side's stamps, moved onto the session computer's clock by the
  difference between the two clocks (estimated from every volume's send and
  receive times, :mod:`realtime.clocks`; the decisions hold it as
  ``clock_offset_s``), each taken as the moment its volume was complete
  (the end of its acquisition, as on the session clock, where volume ``i``
  is decided at ``(i + 1) * TR``): ``min_i(t_acquired_i - (i + 1) * TR)``.
  A stamp made later than that (a folder watch stamps the file's writing,
  after the reconstruction) moves the onsets earlier by as much. A session
  that read the scanner's trigger (``b2m session --trigger``) places the
  run from the pulse of its first volume instead, read on this computer's
  own clock, with neither error (:mod:`realtime.triggers`); ``bold.json``
  says which (``b2m_run_start_from``) and gives the start in Unix time
  (``b2m_run_start_unix``, to align other recordings such as physiology).
  The device's own output latency (the DAC and headphones, a few ms) is
  not included either way.

A row lasts until the next one begins, the last until the run's end; a
switch decided near the end that sounds only after the run's last volume is
listed in the run in which it sounds. What sounds as a run begins, carried
over from the runs before, is its first row (onset 0, action
``continued``). Each row names the clip (library row id), its genre, the
audio file and where in it the clip starts (``stim_file``,
``clip_start_s``; ``n/a`` for a piece composed live), and the run and
volume whose decision started it (``decided_run``, ``decided_volume``).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
import shutil

from protocols.session import SessionRecord

from ..nifti_io import export_run_nifti, run_export_args
from ..triggers import RunTriggers, match_run, read_responses, read_triggers
from .decisions import decisions_path, read_decisions
from .audio_keeper import outage_spans, read_outages
from .operator import read_operator, unheard_at, unheard_spans
from .yoked import read_yoked

log = logging.getLogger("b2m.session")

__all__ = ["EVENT_COLUMNS", "run_clock_offset", "run_triggers", "music_events", "sounds_begun", "block_events",
           "response_events", "operator_events", "outage_events", "write_decoded_timeseries", "export_bids"]

#: Columns of ``*_events.tsv``, in order.
EVENT_COLUMNS = ("onset", "duration", "trial_type", "clip", "genre", "stim_file", "clip_start_s", "decided_run",
                 "decided_volume", "action", "response", "level_db", "note")

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def run_clock_offset(decisions: list[dict]) -> float | None:
    """A run's final clock offset (session computer minus scanner side, s): the least of the running estimates
    its decisions recorded (:mod:`realtime.clocks`), None for a run recorded without them."""
    return min((d["clock_offset_s"] for d in decisions if d.get("clock_offset_s") is not None), default=None)


def run_triggers(run, pulses, dummies: int = 0) -> RunTriggers:
    """A recorded run's trigger pulses (:func:`realtime.triggers.match_run`), from when its volumes were received.

    ``run`` is a :class:`protocols.session.SessionRecord` run; ``pulses`` the
    session's (:func:`realtime.triggers.read_triggers`).
    """
    got = sorted(run.received.items())
    return match_run(pulses, [i for i, _ in got], [float(m.header.get("t_recv", float("nan"))) for _, m in got],
                     float(run.geometry["tr_s"]), dummies=dummies, n_volumes=run.n_volumes)


def _run_starts(decisions: list[dict], trigger_start: float | None = None) -> dict:
    """When the run's first volume began, on each clock a sound can be placed on.

    ``"session"``: the session clock (a WAV sink's frames), where the run
    begins at its ``offset_s``. ``"wall"``: the session computer's clock (Unix
    s): the pulse of the run's first volume if the trigger was read
    (``trigger_start``); else from the scanner side's stamps, each taken as
    its volume's completion and moved onto this clock by the run's estimated
    clock offset, the earliest implied start winning, since a stamp can only
    come late (None without stamps).
    """
    if trigger_start is not None:
        return {"session": float(decisions[0]["offset_s"]), "wall": float(trigger_start)}
    tr_s = float(decisions[0]["tr_s"])
    # each stamp was moved onto the session computer's clock by the offset estimated by then; the run's
    # final estimate is the best, and holds for every stamp
    final = run_clock_offset(decisions) or 0.0
    starts = [d["timestamps"]["acquired"] - (d.get("clock_offset_s") or 0.0) + final - (d["index"] + 1) * tr_s
              for d in decisions if (d.get("timestamps") or {}).get("acquired")]
    return {"session": float(decisions[0]["offset_s"]), "wall": min(starts) if starts else None}


def sounds_begun(decisions: list[dict], library, samplerate: int, *, mode: str = "retrieval",
                 run_id: str = "") -> list[dict]:
    """Every sound a run's decisions began, at its time on its clock.

    Same parameters as :func:`music_events`. Each row has the keys of
    :data:`EVENT_COLUMNS` but ``onset`` and ``duration``, and ``at`` and
    ``clock`` instead: seconds on the session clock (a WAV sink), or Unix
    seconds on the wall clock (a sound device: ``audio_scheduled`` plus the
    lead at which the switch was scheduled). Ordered by time.
    """
    by_id = {c.id: c for c in library.clips}
    rows = []
    for d in sorted(decisions, key=lambda d: d["index"]):
        if d.get("audio_frame") is None:
            continue
        lead = d.get("audio_lead_s")
        if lead is None:  # a WAV sink: frames are session time
            clock, at = "session", d["audio_frame"] / (d.get("audio_rate") or samplerate)
        else:
            clock, at = "wall", d["timestamps"]["audio_scheduled"] + float(lead)
        if d.get("clip") is None:  # the music faded out (a silence block): silence from here on
            rows.append({"at": at, "clock": clock, "trial_type": "silence", "clip": "n/a", "genre": "n/a",
                         "stim_file": "n/a", "clip_start_s": "n/a", "decided_run": run_id or d.get("run_id", ""),
                         "decided_volume": d["index"], "action": d["action"]})
            continue
        clip = by_id.get(d["clip"])
        no_file = clip is None or mode == "generation"
        rows.append({"at": at, "clock": clock, "trial_type": "music", "clip": d["clip"],
                     "genre": (clip.genre if clip is not None and clip.genre else "n/a"),
                     "stim_file": "n/a" if no_file else os.path.abspath(library.audio_path(clip)),
                     "clip_start_s": "n/a" if no_file else clip.start_s,
                     "decided_run": run_id or d.get("run_id", ""), "decided_volume": d["index"],
                     "action": d["action"]})
    rows.sort(key=lambda r: r["at"])
    return rows


def music_events(decisions: list[dict], library, samplerate: int, n_volumes: int, *,
                 mode: str = "retrieval", before: list[dict] = (), trigger_start: float | None = None) -> list[dict]:
    """The clips (or pieces) heard during one run, from the recorded decisions.

    Parameters
    ----------
    decisions : list of dict
        The run's decision records (:func:`.decisions.read_decisions`).
    library : music.library.Library
        The session's library (clip ids, genres, audio paths).
    samplerate : int
        The audio output's rate, Hz, for decisions that do not record it.
    n_volumes : int
        Volumes in the run; the last row ends with it.
    mode : {"retrieval", "generation"}
        The session's mode: in generation mode each row is a piece composed
        live, which no audio file holds.
    before : list of dict
        :func:`sounds_begun` of the runs before. A sound they began that is
        heard within this run is one of its rows; the one sounding as it
        begins is its first row, at onset 0, action ``continued``.
    trigger_start : float, optional
        The pulse of the run's first volume (Unix s, :func:`run_triggers`):
        a sound device's onsets are placed from it rather than from the
        scanner side's stamps.

    Returns
    -------
    list of dict
        Keys :data:`EVENT_COLUMNS`, onsets in seconds from the start of the
        run's first volume, ordered by onset.
    """
    if not decisions:
        return []
    starts = _run_starts(decisions, trigger_start)
    end = n_volumes * float(decisions[0]["tr_s"])
    rows, sounding = [], None
    for r in sorted([*before, *sounds_begun(decisions, library, samplerate, mode=mode)], key=lambda r: r["at"]):
        if starts[r["clock"]] is None:
            continue  # a device, and no stamps to place the run on the wall clock
        onset = r["at"] - starts[r["clock"]]
        row = {k: v for k, v in r.items() if k not in ("at", "clock")}
        if onset <= 0:
            sounding = {**row, "onset": 0.0, "action": "continued" if onset < 0 else row["action"]}
        elif onset < end:  # one decided near the end sounds after the run's last volume: not in this run
            rows.append({**row, "onset": onset})
    rows = ([sounding] if sounding is not None else []) + rows
    for r, nxt in zip(rows, rows[1:] + [None]):
        r["duration"] = max(0.0, (nxt["onset"] if nxt is not None else end) - r["onset"])
    return rows


def block_events(protocol, run_s: float) -> list[dict]:
    """The protocol's blocks that begin within a run of ``run_s`` seconds, as rows of :data:`EVENT_COLUMNS`.

    ``trial_type`` is ``block_`` and the condition (``block_feedback``, ``block_silence``, ``block_neutral``):
    the regressors of a block-design analysis, next to the music rows.
    """
    rest = {k: "n/a" for k in EVENT_COLUMNS if k not in ("onset", "duration", "trial_type")}
    return [{"onset": b.onset_s, "duration": min(b.duration_s, run_s - b.onset_s),
             "trial_type": f"block_{b.condition}", **rest} for b in protocol.blocks if b.onset_s < run_s]


def response_events(presses, run_start: float, run_s: float) -> list[dict]:
    """The participant's button presses within a run, as rows of ``events.tsv``.

    Parameters
    ----------
    presses : list of (float, str)
        ``(Unix s, button)`` on the session computer's clock (:func:`realtime.triggers.read_responses`).
    run_start : float
        When the run's first volume began on the same clock (Unix s).
    run_s : float
        The run's length, s.

    Returns
    -------
    list of dict
        ``trial_type`` ``response``, ``response`` the button, duration 0,
        onset in seconds from the run's first volume.
    """
    rest = {k: "n/a" for k in EVENT_COLUMNS if k not in ("onset", "duration", "trial_type", "response")}
    return [{"onset": t - run_start, "duration": 0.0, "trial_type": "response", **rest, "response": button}
            for t, button in presses if 0.0 <= t - run_start < run_s]


def operator_events(changes: list[dict], starts: dict, run_s: float) -> list[dict]:
    """The operator's hand on the sound during a run, as rows of ``events.tsv``.

    Parameters
    ----------
    changes : list of dict
        The session's operator changes (:func:`realtime.session.operator.read_operator`), each placed on its
        ``clock`` at ``at_s`` (when its ramp began to sound).
    starts : dict
        When the run's first volume began on each clock (``"session"``, ``"wall"``; :func:`_run_starts`).
    run_s : float
        The run's length, s.

    Returns
    -------
    list of dict
        ``operator_mute``: a stretch the participant heard no music (from a mute to the unmute, or the run's
        end); ``operator_level``: the level from a change until the next one (``level_db``: dB below the
        session's level); ``operator_note``: the operator's log line (``note``), duration 0. One standing
        as the run begins starts at onset 0. Changes on a clock the run cannot
        be placed on are left out.
    """
    rest = {k: "n/a" for k in EVENT_COLUMNS if k not in ("onset", "duration", "trial_type", "level_db")}
    placed = sorted(((c["at_s"] - starts[c["clock"]], c) for c in changes
                     if c.get("at_s") is not None and starts.get(c["clock"]) is not None), key=lambda t: t[0])
    rows = [{"onset": t, "duration": 0.0, "trial_type": "operator_note", **rest, "level_db": "n/a",
             "note": c["value"]} for t, c in placed if c["command"] == "note" and 0.0 <= t < run_s]
    placed = [(t, c) for t, c in placed if c["command"] != "note"]
    for kind, key in (("operator_mute", "muted"), ("operator_level", "level_db")):
        state, since = (False if key == "muted" else 0.0), 0.0
        for t, c in [*placed, (float("inf"), None)]:
            new = c[key] if c is not None else None
            if c is not None and new == state:
                continue
            keep = state if key == "muted" else state != 0.0
            lo, hi = max(since, 0.0), min(t, run_s)
            if keep and hi > lo:
                rows.append({"onset": lo, "duration": hi - lo, "trial_type": kind, **rest,
                             "level_db": "n/a" if key == "muted" else f"{state:g}"})
            state, since = new, t
    return sorted(rows, key=lambda r: r["onset"])


def outage_events(spans, wall_start: float | None, run_s: float) -> list[dict]:
    """The sound device's outages within a run (:func:`realtime.session.audio_keeper.outage_spans`, Unix s) as
    ``audio_outage`` rows: the participant heard nothing then, whatever the music rows say. An outage never
    reopened lasts to the run's end; none without the run's start on the wall clock."""
    if wall_start is None:
        return []
    rest = {k: "n/a" for k in EVENT_COLUMNS if k not in ("onset", "duration", "trial_type")}
    rows = []
    for start, end, why in spans:
        lo = max(start - wall_start, 0.0)
        hi = run_s if end is None else min(end - wall_start, run_s)
        if hi > lo:
            rows.append({"onset": lo, "duration": hi - lo, "trial_type": "audio_outage", **rest})
    return rows


def write_decoded_timeseries(stem: str, decisions: list[dict], unheard=()) -> list[str]:
    """A run's decisions as a BIDS derivative time series: ``STEM_desc-decoded_timeseries.tsv`` and its ``.json``.

    One row per decided volume: ``onset`` (seconds from the run's first
    volume: the decision after volume ``i`` falls at ``(i + 1) * TR``),
    ``volume``, ``decoded_volume``, ``action``, ``clip`` (``n/a`` in silence),
    ``heard`` (false where the clip played to no one: decided while the
    operator had muted the sound or the sound device was down, ``unheard``
    from :func:`realtime.session.operator.unheard_spans`; n/a in silence),
    ``condition`` and ``own_clip`` where the session had blocks or was a sham,
    ``fd_mm``, ``dvars_pct``, ``tsnr`` (the run's temporal SNR so far; n/a for its first volumes, and in a
    record made before it was kept), ``flagged``, ``stand_in``, then the decoded embedding as
    ``e000`` ... (``n/a`` before the delay stack is full). Floats are written
    with 9 significant digits, which a float32 survives exactly.
    """
    ds = sorted(decisions, key=lambda d: d["index"])
    dim = max((d["embedding"].size for d in ds if d.get("embedding") is not None), default=0)
    extra = [k for k in ("condition", "own_clip") if any(k in d for d in ds)]
    cols = ["onset", "volume", "decoded_volume", "action", "clip", "heard", *extra, "fd_mm", "dvars_pct", "tsnr",
            "flagged", "stand_in"]

    def heard(d) -> bool | None:
        if d.get("clip") is None:
            return None
        return not unheard_at(unheard, (d.get("timestamps") or {}).get("decided"))
    cols += [f"e{k:03d}" for k in range(dim)]

    def cell(v) -> str:
        return "n/a" if v is None else f"{v:.9g}" if isinstance(v, float) else str(v)

    path = stem + "_desc-decoded_timeseries.tsv"
    with open(path, "w") as f:
        f.write("\t".join(cols) + "\n")
        for d in ds:
            e = d.get("embedding")
            row = [(d["index"] + 1) * float(d["tr_s"]), d["index"], d.get("decoded_index"), d["action"], d["clip"],
                   heard(d), *(d.get(k) for k in extra), d.get("fd_mm"), d.get("dvars_pct"), d.get("tsnr"),
                   d.get("flagged"), d.get("stand_in")]
            row += [float(x) for x in e] if e is not None else [None] * dim
            f.write("\t".join(cell(v) for v in row) + "\n")
    side = stem + "_desc-decoded_timeseries.json"
    with open(side, "w") as f:
        json.dump({"Description": "b2m session: what was decoded and decided after each volume of the run",
                   "onset": {"Units": "s", "Description": "decision time from the start of the run's first volume"},
                   "decoded_volume": {"Description": "the moment the decoder input refers to (volume - lag)"},
                   "clip": {"Description": "library clip heard after the decision (n/a: silence)"},
                   "heard": {"Description": "false where the clip played to no one: decided while the operator had "
                                            "muted the sound or the sound device was down (n/a: silence)"},
                   "own_clip": {"Description": "sham session: the clip this participant's own decoding chose"},
                   "fd_mm": {"Units": "mm", "Description": "framewise displacement"},
                   "dvars_pct": {"Units": "%", "Description": "DVARS: RMS change of the model's motion-corrected "
                                 "voxels from the previous volume, in percent of their mean"},
                   "tsnr": {"Units": "", "Description": "temporal SNR of the run so far: the median over the model's "
                            "voxels of each voxel's mean over the run's volumes up to this one divided by the standard "
                            "deviation of its high-passed series (n/a for the run's first volumes)"},
                   "e000": {"Description": f"e000..e{dim - 1:03d}: the decoded embedding, unit norm"}}, f, indent=2)
    return [path, side]


def _write_events(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(EVENT_COLUMNS)
        for r in rows:
            w.writerow([f"{r[k]:.4f}" if k in ("onset", "duration") else r.get(k, "n/a") for k in EVENT_COLUMNS])


def _check_not_another_run(stem: str, run_id: str, session_dir: str) -> None:
    """Exporting the same run again rewrites it; a file of another run (or not ours) is never overwritten."""
    side = stem + "_bold.json"
    if not os.path.exists(side) and not os.path.exists(stem + "_bold.nii.gz"):
        return
    try:
        with open(side) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    if meta.get("b2m_run_id") != run_id or meta.get("b2m_session") != os.path.abspath(session_dir):
        held = (f"run {meta['b2m_run_id']} of {meta.get('b2m_session')}" if meta.get("b2m_run_id")
                else "a run b2m did not write")
        raise ValueError(f"{stem}_bold.nii.gz already holds {held}; numbering starts at run-01 in each export: "
                         "choose another --task or --ses, or another --bids folder")


def _describe(root: str, name: str, kind: str) -> list[str]:
    """``ROOT/dataset_description.json`` of a ``raw`` or ``derivative`` dataset, if none is there; the paths written."""
    path = os.path.join(root, "dataset_description.json")
    if os.path.exists(path):
        return []
    from protocols.provenance import provenance

    made = provenance()
    by = {"Name": "brain2music-rt", "Version": made["b2m"] or "unknown",
          "Description": "b2m session export" + (f" (git {made['git_commit']}"
                                                 + (", with uncommitted changes" if made["git_dirty"] else "") + ")"
                                                 if made["git_commit"] else "")}
    with open(path, "w") as f:
        json.dump({"Name": name, "BIDSVersion": "1.9.0", "DatasetType": kind, "GeneratedBy": [by]}, f, indent=2)
    return [path]


#: ``task-T_events.json``: the columns of the exported events (BIDS' data dictionary).
EVENT_DESCRIPTIONS = {
    "onset": {"Description": "when the sound (or press) began, from the start of the run's first volume",
              "Units": "s"},
    "duration": {"Description": "until the next sound began, or the run ended (0 for a button press)", "Units": "s"},
    "trial_type": {"Description": "what the row is",
                   "Levels": {"music": "a library clip (or, in generation mode, a piece composed live) heard",
                              "silence": "the music faded out (a silence block)",
                              "response": "the participant pressed a button (b2m session --response-keys)",
                              "operator_mute": "the operator muted the sound: no music was heard (b2m control)",
                              "operator_level": "the operator set the level below the session's (level_db)",
                              "operator_note": "the operator's log line (note), b2m control note",
                              "audio_outage": "the sound device was down: nothing was heard, whatever the "
                                              "music rows say",
                              "block_feedback": "protocol block: music follows the decoding",
                              "block_silence": "protocol block: no music",
                              "block_neutral": "protocol block: the neutral clip, whatever is decoded"}},
    "clip": {"Description": "the library's clip id (or generator point) heard"},
    "genre": {"Description": "the clip's genre in the library"},
    "stim_file": {"Description": "the clip's audio file, relative to the dataset's stimuli folder (n/a for a "
                                 "piece composed live)"},
    "clip_start_s": {"Description": "where in stim_file the clip starts", "Units": "s"},
    "decided_run": {"Description": "the b2m run id whose decision started the sound (an earlier run's for a "
                                   "sound carried over)"},
    "decided_volume": {"Description": "the volume index whose decision started the sound"},
    "action": {"Description": "the feedback policy's decision",
               "Levels": {"neutral": "the neutral clip (before decoding starts)", "switch": "a new clip",
                          "keep": "the clip went on", "hold": "a motion hold: the clip went on",
                          "silence": "the music faded out", "continued": "still sounding from before the run"}},
    "response": {"Description": "the button pressed (a response row), n/a otherwise"},
    "level_db": {"Description": "an operator_level row: the level set, relative to the session's --level-dbfs; "
                                "n/a otherwise", "Units": "dB"},
    "note": {"Description": "an operator_note row: what the operator wrote; n/a otherwise"},
}


def _dataset_files(root: str, task: str) -> list[str]:
    """``README`` and ``task-T_events.json`` at the dataset's root, if missing; the paths written."""
    written = []
    readme = os.path.join(root, "README")
    if not os.path.exists(readme):
        with open(readme, "w") as f:
            f.write("Neurofeedback sessions recorded by brain2music-rt (b2m session) and exported with "
                    "`b2m session export`.\n\nEach run's BOLD series is as the scanner sent it. Its events.tsv "
                    "lists the music the participant heard (the clips' audio is in stimuli/), protocol blocks "
                    "and button presses; derivatives/b2m holds each volume's decoded embedding and decision.\n")
        written.append(readme)
    events = os.path.join(root, f"task-{task}_events.json")
    if not os.path.exists(events):
        with open(events, "w") as f:
            json.dump(EVENT_DESCRIPTIONS, f, indent=2)
        written.append(events)
    return written


def _stimulus(root: str, library, path: str, copied: dict) -> str:
    """Copy a clip's audio file into ``ROOT/stimuli/LIBRARY/`` (once) and give its path relative to
    ``ROOT/stimuli``: a file of the library's folder keeps its place in it, one outside goes under
    ``sources/`` with a short hash of its folder, so two files of one name never meet."""
    if path in copied:
        return copied[path]
    lib_root = os.path.abspath(library.path)
    name = os.path.basename(lib_root.rstrip(os.sep)) or "library"
    if path.startswith(lib_root + os.sep):
        rel = os.path.join(name, os.path.relpath(path, lib_root))
    else:
        import hashlib

        folder = hashlib.sha1(os.path.dirname(path).encode()).hexdigest()[:8]
        rel = os.path.join(name, "sources", folder, os.path.basename(path))
    dest = os.path.join(root, "stimuli", rel)
    if not (os.path.exists(dest) and os.path.getsize(dest) == os.path.getsize(path)):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(path, dest + ".part")
        os.replace(dest + ".part", dest)
    copied[path] = rel.replace(os.sep, "/")
    return copied[path]


def _check_label(name: str, value: str | None) -> None:
    if value is not None and not _LABEL.match(value):
        option = {"session": "--ses"}.get(name, f"--{name}")  # `b2m session export`'s options
        raise ValueError(f"{option} {value!r}: a BIDS label is letters and digits only (e.g. 01, nf1)")


def export_bids(session_dir, out_dir, subject: str, *, session: str | None = None, task: str = "neurofeedback",
                library=None, samplerate: int = 48000, mode: str = "retrieval", runs: list[str] | None = None,
                events: dict[str, str] | None = None, protocol=None, trigger_dummies: int = 0) -> dict:
    """Write a session record's complete runs, with the music heard, as a BIDS dataset.

    Parameters
    ----------
    session_dir : path-like
        The session record (``b2m session --out``, or ``b2m receive --out``).
    out_dir : path-like
        The BIDS root; created, or added to.
    subject, session, task : str
        BIDS labels (letters and digits).
    library : music.library.Library, optional
        The session's library; without it (or without decisions, as for
        ``b2m receive``) no events are written.
    samplerate : int
        The audio output's rate, Hz, for decisions that do not record it.
    mode : {"retrieval", "generation"}
        The session's mode (see :func:`music_events`).
    runs : list of str, optional
        Only these runs, numbered in this order (default: every run, in the
        order received).
    events : dict, optional
        ``run_id -> events.tsv`` to copy as that run's events instead of the
        music of its decisions (``b2m present``'s record of a listening run).
    protocol : realtime.session.protocol.Protocol, optional
        The session's block design: its blocks are rows too (:func:`block_events`).
    trigger_dummies : int
        The session's ``--trigger-dummies``: pulses before each run's first
        volume, skipped when its pulses are found (:func:`run_triggers`).

    Returns
    -------
    dict
        ``written`` (paths), ``skipped`` (run id -> why), ``runs`` (run id ->
        BIDS run number).

    Raises
    ------
    ValueError
        A bad label (names the option).
    """
    _check_label("subject", subject)
    _check_label("session", session)
    _check_label("task", task)
    session_dir, out_dir = os.fspath(session_dir), os.fspath(out_dir)
    rec = SessionRecord(session_dir, sync=False)
    events = dict(events or {})
    for run_id in [*(runs or []), *events]:
        if run_id not in rec.runs:
            raise ValueError(f"{session_dir}: no run {run_id!r} in the record (it has {', '.join(sorted(rec.runs))})")
    for run_id, path in events.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such events file (given for run {run_id})")
    received = sorted(rec.runs.values(), key=lambda r: min((float(x.header.get("t_recv", 0.0))
                                                           for x in r.received.values()), default=float("inf")))
    chosen = set(runs) if runs is not None else None
    func = os.path.join(out_dir, f"sub-{subject}", *([f"ses-{session}"] if session else []), "func")
    os.makedirs(func, exist_ok=True)
    out = {"written": [], "skipped": {}, "runs": {}}
    out["written"] += _describe(out_dir, "brain2music-rt neurofeedback sessions", "raw")
    out["written"] += _dataset_files(out_dir, task)
    copied: dict[str, str] = {}  # audio file -> its path under stimuli/
    yoked = read_yoked(session_dir)  # a sham session (b2m session --yoked-from), or None
    pulses = read_triggers(session_dir)  # the scanner's trigger, if the session read it (b2m session --trigger)
    presses = read_responses(session_dir)  # the participant's buttons on the same input (--response-keys)
    changes = read_operator(session_dir)  # the operator's mutes and levels (b2m control, the monitor's buttons)
    outages = outage_spans(read_outages(session_dir))  # the sound device down: nothing heard
    unheard = unheard_spans(changes, outages)  # both, on the wall clock: the decided TRs no one heard
    number = 0
    begun: list[dict] = []  # every sound begun so far, on its clock: the runs before go on sounding
    todo = []
    for run in received:  # every run, in the order heard: the music goes on from one to the next
        dpath = decisions_path(session_dir, run.run_id)
        decisions = read_decisions(dpath) if os.path.exists(dpath) else None
        before = list(begun)
        if decisions and library is not None:
            begun += sounds_begun(decisions, library, samplerate, mode=mode, run_id=run.run_id)
        if chosen is not None and run.run_id not in chosen:
            continue
        todo.append((run, decisions, before))
    if runs is not None:
        todo.sort(key=lambda item: runs.index(item[0].run_id))
    for run, decisions, before in todo:
        if not run.complete:
            missing = run.missing()
            out["skipped"][run.run_id] = (f"{len(run.received)} of {run.n_volumes} volumes recorded, missing "
                                          f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
                                          if run.n_volumes is not None else "no run end and no volume count")
            continue
        number += 1
        stem = os.path.join(func, f"sub-{subject}{f'_ses-{session}' if session else ''}_task-{task}"
                                  f"_run-{number:02d}")
        bold = stem + "_bold.nii.gz"
        _check_not_another_run(stem, run.run_id, session_dir)
        header_bytes, scaling = run_export_args(run)
        tmp = stem + "_bold.tmp.nii"
        export_run_nifti(session_dir, run.run_id, tmp, header_bytes, scaling)
        with open(tmp, "rb") as src, gzip.open(bold, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        os.remove(tmp)
        tr_s = float(run.geometry["tr_s"])
        meta = {"RepetitionTime": tr_s, "TaskName": task, "b2m_run_id": run.run_id,
                "b2m_session": os.path.abspath(session_dir)}
        st = ((run.start or {}).get("meta") or {}).get("slice_timing_s")  # the scanner's headers (Siemens CSA)
        if isinstance(st, list) and len(st) == int(run.geometry["shape"][2]):
            meta["SliceTiming"] = [float(t) for t in st]
        if yoked is not None:  # a sham run: say so, and whose music it played
            meta["b2m_feedback"] = "yoked sham"
            meta["b2m_yoked_to"] = {"session": yoked["source"],
                                    "runs": sorted({d["yoked_to"][0] for d in decisions or () if d.get("yoked_to")})}
        offset = run_clock_offset(decisions or [])
        if offset is not None:  # the events' onsets are placed with it (the scanner side's clock onto the session's)
            meta["b2m_clock_offset_s"] = offset
        trig = run_triggers(run, pulses, trigger_dummies) if pulses is not None else None
        trigger_start = trig.start if trig is not None else None
        if trig is not None:
            meta["b2m_trigger"] = trig.to_dict()
        wall = _run_starts(decisions, trigger_start)["wall"] if decisions else trigger_start
        if wall is not None:  # when the run's first volume began, on the session computer's clock
            meta["b2m_run_start_unix"] = wall
            meta["b2m_run_start_from"] = "scanner trigger" if trigger_start is not None else "scanner side's stamps"
        with open(stem + "_bold.json", "w") as f:
            json.dump(meta, f, indent=2)
        out["written"] += [bold, stem + "_bold.json"]
        out["runs"][run.run_id] = number
        if decisions is not None:  # what was decoded and decided, volume by volume, as a derivative
            root = os.path.join(out_dir, "derivatives", "b2m")
            deriv = os.path.join(root, os.path.relpath(func, out_dir))
            os.makedirs(deriv, exist_ok=True)
            out["written"] += _describe(root, "brain2music-rt decoding and decisions", "derivative")
            out["written"] += write_decoded_timeseries(os.path.join(deriv, os.path.basename(stem)), decisions,
                                                       unheard)
        if run.run_id in events:
            shutil.copyfile(events[run.run_id], stem + "_events.tsv")
            out["written"].append(stem + "_events.tsv")
        elif decisions is not None and library is not None:
            rows = music_events(decisions, library, samplerate, int(run.n_volumes), mode=mode, before=before,
                                trigger_start=trigger_start)
            if protocol is not None:
                rows = sorted(rows + block_events(protocol, int(run.n_volumes) * tr_s), key=lambda r: r["onset"])
            if presses and wall is not None:
                rows = sorted(rows + response_events(presses, wall, int(run.n_volumes) * tr_s),
                              key=lambda r: r["onset"])
            if changes:
                rows = sorted(rows + operator_events(changes, _run_starts(decisions, trigger_start),
                                                     int(run.n_volumes) * tr_s), key=lambda r: r["onset"])
            if outages:
                rows = sorted(rows + outage_events(outages, wall, int(run.n_volumes) * tr_s),
                              key=lambda r: r["onset"])
            for r in rows:  # the audio heard goes with the dataset
                if r.get("stim_file", "n/a") == "n/a":
                    continue
                if os.path.isfile(r["stim_file"]):
                    r["stim_file"] = _stimulus(out_dir, library, r["stim_file"], copied)
                else:  # BIDS wants it under stimuli/: say which file is gone rather than point nowhere
                    log.warning("%s: the audio of clip %s is gone; its events give stim_file n/a", r["stim_file"],
                                r["clip"])
                    r["stim_file"] = "n/a"
            _write_events(stem + "_events.tsv", rows)
            out["written"].append(stem + "_events.tsv")
    return out

