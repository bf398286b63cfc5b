"""Read BIDS datasets laid out like OpenNeuro ds003720 (the Music Genre fMRI Dataset).

The same code reads the real dataset and the simulated ones written by
``b2m simulate``: there is no special case for simulated input.

The ds003720 design
-------------------
Nakai, Koide-Majima & Nishimoto (2021), *Brain and Behavior* 11(1), e01936.
Five subjects (sub-001 ... sub-005), each with 18 runs of multiband EPI on a
3 T Siemens TrioTim: 96x96x68 voxels at 2 mm, TR 1.5 s, 410 volumes (615 s).
The events are the same for all five subjects.

- **Files.** ``sub-XXX/func/sub-XXX_task-{Training,Test}_run-NN_`` followed by
  ``bold.nii.gz``, ``bold.json`` (the sidecar) and ``events.tsv``:
  12 Training runs and 6 Test runs.
- **Events.** Every run has 41 events of 15 s at onsets 0, 15, ..., 600 s, so
  the last one ends at 615 s = 410 x 1.5 s. Each event is a 15 s excerpt of a
  30 s GTZAN track (10 genres x 100 tracks, files named ``blues.00098.wav``);
  the ``start`` and ``end`` columns are the excerpt's offsets in seconds
  *within that track*, not within the run. The README says a 2 s fade-in and
  fade-out was applied to each clip and its RMS normalised.
- **Training runs.** The first event (0-15 s) repeats the last event
  (600-615 s) of the previous run, so each run brings 40 new excerpts:
  12 x 40 = 480 unique training excerpts, 48 per genre. In the files the chain
  wraps around: run-01 starts with run-12's last excerpt.
- **Test runs.** Each run holds 10 excerpts, one per genre, played in four
  identical blocks of 10 (0-135, 150-285, 300-435 and 450-585 s), and the
  first excerpt is played once more at 600 s. Over the 6 runs that is
  60 unique test excerpts (6 per genre), each presented 4 times in its own run
  (the first excerpt of each run 5 times, counting the event at 600 s). No
  excerpt, and no GTZAN track, is shared between training and test.

Quirks of the real files (all handled here)
-------------------------------------------
- CRLF line endings, and no line break after the last row.
- Genres are written in single quotes: ``'reggae'``.
- The last three rows of ``task-Training_run-04`` lack the leading quote
  (``classical'``, ``jazz'``, ``metal'``).
- ``track`` is the GTZAN track number without zero padding (``9`` means
  ``*.00009.wav``).
- ``start``/``end`` are mostly written with two decimals but five rows use
  integers (``10``/``25``), and one excerpt (Training run-12, line 34,
  ``pop`` 49, 9.59-24.58 s) lasts 14.99 s while its ``duration`` says 15.
  :func:`stimulus_segment` cuts exactly [start, end) as written.
- The README documents the column as ``Duration``; the files say ``duration``.
- The sidecars are single-line JSON without a final newline; the runs'
  numbers do not follow their ``AcquisitionTime`` order.

Errors
------
A missing file raises :class:`FileNotFoundError`; an unreadable or malformed
file, or a TR that disagrees between the sidecar and the NIfTI header, raises
:class:`ValueError`. Every message names the file (and for events, the line and
column), says what was expected and what was found. Nothing falls back silently.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from music.audio import apply_fades
from realtime.nifti_io import header_tr_s

__all__ = [
    "GTZAN_GENRES",
    "GTZAN_TRACK_S",
    "TASKS",
    "EVENT_COLUMNS",
    "FADE_S",
    "Event",
    "EventsFileError",
    "read_events",
    "check_events_in_run",
    "RunFiles",
    "BoldRun",
    "find_subjects",
    "find_runs",
    "dataset_files",
    "shared_tracks",
    "subject_label",
    "read_sidecar",
    "load_bold",
    "stimulus_segment",
]

#: GTZAN's ten genres, as spelled in ds003720's events and GTZAN's file names.
GTZAN_GENRES: tuple[str, ...] = (
    "blues", "classical", "country", "disco", "hiphop",
    "jazz", "metal", "pop", "reggae", "rock",
)
#: Length of a GTZAN track in seconds; ``end`` may not exceed it.
GTZAN_TRACK_S = 30.0
#: The tasks of ds003720, in the order :func:`find_runs` returns them.
TASKS: tuple[str, ...] = ("Training", "Test")
#: The columns every events.tsv must have (any order; others are kept as extras).
EVENT_COLUMNS: tuple[str, ...] = ("onset", "duration", "genre", "track", "start", "end")
#: Fade-in and fade-out length of every ds003720 clip, in seconds (README).
FADE_S = 2.0

_TR_TOL_S = 1e-3  # sidecar vs header TR; pixdim is float32, so 1 ms is generous
_TIME_TOL_S = 1e-3  # events: overlap and run end, to the millisecond the files are written to
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_GENRE = re.compile(r"[A-Za-z0-9_-]+")
_RUN_FILE = re.compile(
    r"sub-(?P<sub>[A-Za-z0-9]+)_task-(?P<task>[A-Za-z0-9]+)_run-(?P<run>\d+)_"
    r"(?P<suffix>bold\.nii\.gz|bold\.nii|bold\.json|events\.tsv)"
)


def _not_found(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: {what}")


def _check_option(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One row of a ds003720 events.tsv: a 15 s excerpt of a GTZAN track.

    Attributes
    ----------
    onset_s : float
        Onset of the excerpt within the run, in seconds from the first volume.
    duration_s : float
        Duration of the event in the run, in seconds (the ``duration`` column).
    genre : str
        GTZAN genre, with the quotes of the real files removed (``"reggae"``).
    track : int
        GTZAN track number within the genre (0-99).
    start_s, end_s : float
        Offsets of the excerpt within the 30 s GTZAN track, in seconds; the
        excerpt is [start_s, end_s).
    extra : dict of str to str
        Any further columns of the file, as raw strings (none in ds003720).
    line : int or None
        1-based line of the file the event was read from (the header is line
        1), for messages; None if it was not read from a file. Not part of
        the event's equality.
    """

    onset_s: float
    duration_s: float
    genre: str
    track: int
    start_s: float
    end_s: float
    extra: dict[str, str] = field(default_factory=dict, hash=False)
    line: int | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def stimulus_name(self) -> str:
        """GTZAN name of the track, e.g. ``"blues.00098"``."""
        return f"{self.genre}.{self.track:05d}"

    @property
    def stimulus_file(self) -> str:
        """GTZAN file name of the track, e.g. ``"blues.00098.wav"``."""
        return f"{self.stimulus_name}.wav"

    @property
    def key(self) -> tuple[str, int, float]:
        """``(genre, track, start_s)`` with start rounded to the millisecond:
        identifies the excerpt (the same key means the same audio)."""
        return (self.genre, self.track, round(self.start_s, 3))


class EventsFileError(ValueError):
    """A malformed events.tsv.

    Attributes
    ----------
    path : str
    line : int
        1-based line number in the file (the header is line 1).
    column : str
        Name of the offending column.
    """

    def __init__(self, path: os.PathLike | str, line: int, column: str, reason: str):
        self.path = os.fspath(path)
        self.line = line
        self.column = column
        super().__init__(f"{self.path}, line {line}, column '{column}': {reason}")


def _number(text: str, path, line: int, column: str, what: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise EventsFileError(path, line, column, f"expected {what} as a decimal number, found {text!r}")
    return float(text)


def _genre(text: str, path, line: int, genres: Sequence[str] | None) -> str:
    # 'rock' (the usual form), rock' (Training run-04's last three rows), rock (plain BIDS)
    name = text
    if len(name) >= 1 and name[0] in "'\"":
        name = name[1:]
    if len(name) >= 1 and name[-1] in "'\"":
        name = name[:-1]
    known = f"one of {', '.join(genres)}" if genres is not None else "a name of letters, digits, '_' or '-'"
    if not _GENRE.fullmatch(name) or (genres is not None and name not in genres):
        raise EventsFileError(path, line, "genre",
                              f"expected a genre, optionally in single quotes ('rock', rock' or rock), "
                              f"{known}; found {text!r}")
    return name


def read_events(path: os.PathLike | str, *, genres: Sequence[str] | None = GTZAN_GENRES,
                track_s: float | None = GTZAN_TRACK_S) -> list[Event]:
    """Parse a ds003720 events.tsv exactly, quirks included.

    Accepts CRLF, LF or CR line endings, with or without a final line break, a
    UTF-8 byte-order mark, and genres in single quotes, with either quote missing,
    or unquoted. Columns may come in any order; columns beyond
    :data:`EVENT_COLUMNS` are kept in :attr:`Event.extra`. Events may not
    overlap in time (each volume belongs to one excerpt); whether they fit the
    run is :func:`check_events_in_run`'s to say, as it needs the image.

    Parameters
    ----------
    path : path-like
        The events.tsv file.
    genres : sequence of str or None
        Allowed genres (GTZAN's ten by default); None accepts any simple name.
    track_s : float or None
        Length of a source track in seconds; ``end`` may not exceed it. None
        turns the check off.

    Returns
    -------
    list of Event
        In file order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    EventsFileError
        (a ValueError) If the file is not UTF-8 text, a column is missing, a
        row is malformed, or two events overlap; the message names the file,
        the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise _not_found(path, "events file not found; expected a BIDS "
                               "sub-XXX_task-<task>_run-NN_events.tsv here")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                         f"an events.tsv must be tab-separated UTF-8 text") from None
    lines = re.split(r"\r\n|\r|\n", text)
    while lines and lines[-1].strip(" ") == "":
        lines.pop()
    if not lines:
        raise EventsFileError(path, 1, "onset", f"the file is empty; expected a header row "
                                                f"{chr(9).join(EVENT_COLUMNS)!r} and one row per event")
    header = [h.strip(" ") for h in lines[0].split("\t")]
    for name in header:
        if header.count(name) > 1:
            raise EventsFileError(path, 1, name, f"column appears {header.count(name)} times in the header")
    for name in EVENT_COLUMNS:
        if name not in header:
            raise EventsFileError(path, 1, name, f"column missing from the header; expected columns "
                                                 f"{', '.join(EVENT_COLUMNS)} (tab-separated), found "
                                                 f"{', '.join(map(repr, header))}")
    col = {name: header.index(name) for name in header}

    events = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = [f.strip(" ") for f in line.split("\t")]
        if len(fields) != len(header):
            column = header[len(fields)] if len(fields) < len(header) else header[-1]
            raise EventsFileError(path, lineno, column,
                                  f"expected {len(header)} tab-separated fields ({', '.join(header)}), "
                                  f"found {len(fields)} in {line!r}")
        get = {name: fields[i] for name, i in col.items()}
        onset = _number(get["onset"], path, lineno, "onset", "the onset in seconds")
        duration = _number(get["duration"], path, lineno, "duration", "the duration in seconds")
        start = _number(get["start"], path, lineno, "start", "the excerpt's start within the track in seconds")
        end = _number(get["end"], path, lineno, "end", "the excerpt's end within the track in seconds")
        genre = _genre(get["genre"], path, lineno, genres)
        if not re.fullmatch(r"\d{1,5}", get["track"]):
            raise EventsFileError(path, lineno, "track",
                                  f"expected the GTZAN track number as a whole number (0-99), "
                                  f"found {get['track']!r}")
        if onset < 0:
            raise EventsFileError(path, lineno, "onset", f"expected an onset >= 0 s, found {onset}")
        if duration <= 0:
            raise EventsFileError(path, lineno, "duration", f"expected a duration > 0 s, found {duration}")
        if start < 0:
            raise EventsFileError(path, lineno, "start", f"expected a start >= 0 s within the track, found {start}")
        if end <= start:
            raise EventsFileError(path, lineno, "end", f"expected end > start ({start} s), found {end}")
        if track_s is not None and end > track_s:
            raise EventsFileError(path, lineno, "end",
                                  f"expected an end within the {track_s:g} s source track, found {end}")
        events.append(Event(onset_s=onset, duration_s=duration, genre=genre, track=int(get["track"]),
                            start_s=start, end_s=end,
                            extra={n: get[n] for n in header if n not in EVENT_COLUMNS}, line=lineno))
    _check_overlaps(path, events)
    return events


def _check_overlaps(path: Path, events: list[Event]) -> None:
    """Two events playing at once would share volumes: one excerpt's would be labelled with the other's."""
    last = None  # the event, so far in onset order, that ends last
    for ev in sorted(events, key=lambda e: (e.onset_s, e.line)):
        if last is not None and ev.onset_s < last.onset_s + last.duration_s - _TIME_TOL_S:
            raise EventsFileError(
                path, ev.line, "onset",
                f"the event at {ev.onset_s:g} s starts before the event of line {last.line} "
                f"({last.onset_s:g} s + {last.duration_s:g} s) ends at {last.onset_s + last.duration_s:g} s; "
                "events must not overlap, or the volumes they share are labelled with one of them only. "
                "Onsets and durations are in seconds from the run's first volume")
        if last is None or ev.onset_s + ev.duration_s > last.onset_s + last.duration_s:
            last = ev


def check_events_in_run(path: os.PathLike | str, events: Sequence[Event], n_volumes: int, tr_s: float) -> None:
    """Check that a run's events fit its image: at least one event, each inside the run and on a volume.

    Volume ``t`` is labelled with the event playing at ``t * tr_s``
    (:func:`offline_training.targets.tr_targets`), so an event past the
    run's end, or so short that no volume starts inside it, would be dropped
    without a word; an excerpt cut by the run's end would be labelled with
    part of its music only.

    Parameters
    ----------
    path : path-like
        The events.tsv, for the messages.
    events : sequence of Event
        As :func:`read_events` returned them (their ``line`` is named).
    n_volumes : int
        Volumes of the run's image.
    tr_s : float
        The run's TR in seconds.

    Raises
    ------
    EventsFileError
        (a ValueError) If the file has no event, an event ends after
        ``n_volumes * tr_s`` or covers no volume's start; the message names
        the file, the line and the run's length.
    """
    path = Path(path)
    run_s = n_volumes * tr_s
    length = f"the run has {n_volumes} volumes of TR {tr_s:g} s = {run_s:g} s"
    if not events:
        raise EventsFileError(path, 2, "onset", "no events: the file has its header only; every run needs one "
                                                "row per excerpt played. Fill it in, or remove the run's files "
                                                "(its _events.tsv, _bold.json and _bold.nii.gz) to leave it out")
    for i, ev in enumerate(events):
        line = ev.line if ev.line is not None else i + 2
        end = ev.onset_s + ev.duration_s
        if end > run_s + _TIME_TOL_S:
            if ev.duration_s >= 100 * tr_s and end / 1000 <= run_s + _TIME_TOL_S:
                hint = ("these look like milliseconds: BIDS onsets and durations are in seconds; "
                        "divide the onset and duration columns by 1000")
            elif ev.onset_s >= run_s:
                hint = ("onsets and durations are in seconds from the run's first volume; is this the events "
                        "file of this run, or is its image cut short?")
            else:
                hint = ("onsets and durations are in seconds from the run's first volume; an excerpt cut by the "
                        "run's end would be labelled with part of its music only: is the image cut short?")
            raise EventsFileError(path, line, "onset" if ev.onset_s >= run_s else "duration",
                                  f"the event at {ev.onset_s:g} s lasting {ev.duration_s:g} s ends at {end:g} s, "
                                  f"after the run: {length}; {hint}")
        first = math.ceil((ev.onset_s - 1e-9) / tr_s)  # the first volume starting inside the event
        if not first * tr_s < end - 1e-9:
            raise EventsFileError(path, line, "duration",
                                  f"the event at {ev.onset_s:g} s lasting {ev.duration_s:g} s covers no volume "
                                  f"(volumes start every {tr_s:g} s): no volume would be labelled with it. "
                                  f"Onsets and durations are in seconds")


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunFiles:
    """The files of one BOLD run of one subject.

    Attributes
    ----------
    subject : str
        Subject label without ``sub-`` (``"001"``).
    task : str
        ``"Training"`` or ``"Test"`` in ds003720.
    run : int
        Run number (``run-04`` -> 4).
    events : Path
        The events.tsv.
    sidecar : Path
        The bold.json.
    bold : Path or None
        The bold.nii.gz (or .nii); None only when :func:`find_runs` was told
        not to require it.
    """

    subject: str
    task: str
    run: int
    events: Path
    sidecar: Path
    bold: Path | None

    @property
    def name(self) -> str:
        """The run's file-name prefix, e.g. ``"sub-001_task-Training_run-04"``."""
        return self.events.name[: -len("_events.tsv")]


#: Alias of :class:`RunFiles`.
BoldRun = RunFiles


def dataset_files(dataset_root: os.PathLike | str, runs: Sequence[RunFiles]) -> list[dict[str, Any]]:
    """Which files of a dataset a model was made from, for its provenance.

    Each run's events and sidecar are identified by their sha256 (small files);
    its BOLD image by its size in bytes only, since hashing gigabytes of images
    would add about a minute to training.

    Returns
    -------
    list of dict
        Per run, in the order given: ``task``, ``run``, ``bold`` (path relative
        to ``dataset_root``), ``bold_bytes``, ``events_sha256``,
        ``sidecar_sha256``.
    """
    import hashlib

    def digest(path) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    root = Path(dataset_root)
    out = []
    for r in runs:
        bold = Path(r.bold) if r.bold is not None else None
        out.append({"task": r.task, "run": r.run,
                    "bold": None if bold is None else os.path.relpath(bold, root),
                    "bold_bytes": None if bold is None else bold.stat().st_size,
                    "events_sha256": digest(r.events), "sidecar_sha256": digest(r.sidecar)})
    return out


def shared_tracks(train_runs: Sequence[RunFiles], test_runs: Sequence[RunFiles]) -> list[tuple[str, str, str]]:
    """GTZAN tracks heard in a Training run and in a Test run: ``(track, training run, test run)``, sorted.

    Test identification measures decoding of music the model never heard only
    if this is empty: another excerpt of the same recording in training lets a
    decoder recognise the recording (its instruments, mix and singer) rather
    than decode the music. ds003720's Training and Test tracks are disjoint.
    """
    heard: dict[str, str] = {}
    for r in train_runs:
        for e in read_events(r.events):
            heard.setdefault(e.stimulus_name, r.name)
    both = set()
    for r in test_runs:
        for e in read_events(r.events):
            if e.stimulus_name in heard:
                both.add((e.stimulus_name, heard[e.stimulus_name], r.name))
    return sorted(both)


def subject_label(subject: str | int) -> str:
    """The BIDS label of ``subject`` (``1`` -> ``'001'``, ``'sub-001'`` -> ``'001'``); ValueError if it is not one."""
    if isinstance(subject, int):
        return f"{subject:03d}"
    label = subject[4:] if subject.startswith("sub-") else subject
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise ValueError(f"subject must be a BIDS label such as '001' or 'sub-001'; got {subject!r}")
    return label


def find_subjects(dataset_root: os.PathLike | str) -> list[str]:
    """Subject labels (without ``sub-``) of the dataset, sorted.

    Raises
    ------
    FileNotFoundError
        If ``dataset_root`` is not a directory.
    """
    root = Path(dataset_root)
    if not root.is_dir():
        raise _not_found(root, "dataset folder not found; expected a BIDS dataset root holding sub-XXX/ folders")
    return sorted(p.name[4:] for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-"))


def find_runs(dataset_root: os.PathLike | str, subject: str | int, *,
              tasks: Sequence[str] = TASKS, require_bold: bool = True) -> list[RunFiles]:
    """Find the runs of one subject: ``sub-XXX/func/sub-XXX_task-<task>_run-NN_*``.

    Parameters
    ----------
    dataset_root : path-like
        The BIDS root (the folder holding ``dataset_description.json``).
    subject : str or int
        ``"001"``, ``"sub-001"`` or ``1`` (zero-padded to 3 digits, as in ds003720).
    tasks : sequence of str
        Tasks to return, in this order; files of other tasks are ignored.
    require_bold : bool
        If True (the default) every run must have its bold.nii.gz or bold.nii.
        If False, :attr:`RunFiles.bold` is None where the image is absent (as in
        the metadata-only copy of ds003720).

    Returns
    -------
    list of RunFiles
        Sorted by task (in the order of ``tasks``), then run number.

    Raises
    ------
    FileNotFoundError
        If the subject's func folder does not exist, it holds no run of the
        given tasks, or a run lacks its events.tsv, bold.json or (when
        required) bold.nii[.gz]; the message names the missing file.
    ValueError
        If a run has two files for the same role (e.g. both .nii and .nii.gz),
        the subject's runs are in session folders (``sub-XXX/ses-YY/func``,
        not read), or files name a task that differs from one of ``tasks``
        only in case (``task-training``: BIDS labels are case-sensitive).
    """
    root = Path(dataset_root)
    label = subject_label(subject)
    subject_dir = root / f"sub-{label}"
    func = subject_dir / "func"
    if not func.is_dir():
        _no_func_folder(root, subject_dir)
    found: dict[tuple[str, int], dict[str, Path]] = {}
    stems: dict[tuple[str, int], Path] = {}
    wrong_case: list[str] = []
    for p in sorted(func.iterdir()):
        m = _RUN_FILE.fullmatch(p.name)
        if m is not None and m["sub"] == label and m["task"] not in tasks and \
                any(m["task"].lower() == t.lower() for t in tasks):
            wrong_case.append(p.name)
        if m is None or m["sub"] != label or m["task"] not in tasks:
            continue
        role = "bold" if m["suffix"].startswith("bold.nii") else m["suffix"]
        key = (m["task"], int(m["run"]))
        files = found.setdefault(key, {})
        if role in files:
            raise ValueError(f"{func}: run {key[0]} {key[1]} has two {role} files, "
                             f"{files[role].name} and {p.name}; keep one")
        files[role] = p
        stems.setdefault(key, func / p.name[: m.end("run")])
    if wrong_case:
        raise ValueError(f"{func}: {len(wrong_case)} file(s) name a task that differs from "
                         f"{' or '.join('task-' + t for t in tasks)} only in case ({', '.join(wrong_case[:3])}"
                         f"{', ...' if len(wrong_case) > 3 else ''}); BIDS task labels are case-sensitive, so these "
                         f"runs would be left out. Rename them to task-{'/task-'.join(tasks)} (and their sidecars' "
                         "TaskName to match)")
    if not found:
        raise _not_found(func, f"no run files found; expected sub-{label}_task-<task>_run-NN_"
                               f"{{bold.nii.gz,bold.json,events.tsv}} with task in {', '.join(tasks)}")
    order = list(tasks)
    runs = []
    for key in sorted(found, key=lambda k: (order.index(k[0]), k[1])):
        files, stem = found[key], stems[key]
        for role in ("events.tsv", "bold.json"):
            if role not in files:
                raise _not_found(Path(f"{stem}_{role}"),
                                 f"missing; every run needs its events.tsv and bold.json "
                                 f"(found {', '.join(sorted(f.name for f in files.values()))})")
        if require_bold and "bold" not in files:
            raise _not_found(Path(f"{stem}_bold.nii.gz"),
                             f"missing (nor is there a {Path(f'{stem}_bold.nii').name}), but the run's "
                             f"{', '.join(sorted(f.name for f in files.values()))} are there: every run needs "
                             "its BOLD image. Put the image back (a download of only the metadata has none), or "
                             "move the run's events.tsv and bold.json out of the folder to leave the run out")
        runs.append(RunFiles(subject=label, task=key[0], run=key[1], events=files["events.tsv"],
                             sidecar=files["bold.json"], bold=files.get("bold")))
    return runs


def _no_func_folder(root: Path, subject_dir: Path) -> None:
    """Say why ``subject_dir/func`` is not there, and what to do; always raises."""
    func = subject_dir / "func"
    if not root.is_dir():
        raise _not_found(root, "dataset folder not found; expected a BIDS dataset root holding sub-XXX/ folders")
    if not subject_dir.is_dir():
        subjects = find_subjects(root)
        raise _not_found(subject_dir, f"subject folder not found (expected its runs in {func}); subjects present "
                                      f"in {root}: "
                                      f"{', '.join('sub-' + s for s in subjects) or 'none'}")
    sessions = sorted(p.name for p in subject_dir.iterdir() if p.is_dir() and p.name.startswith("ses-"))
    if sessions:
        with_func = [s for s in sessions if (subject_dir / s / "func").is_dir()]
        raise ValueError(f"{subject_dir}: the runs are in session folders ({', '.join(with_func or sessions)}), "
                         f"and b2m reads the ds003720 layout without sessions, {func}/. To train on one session, "
                         f"copy or link its func/ folder as {func} with the _ses-<label> part taken out of the "
                         "file names (sub-XXX_ses-YY_task-... -> sub-XXX_task-...)")
    inside = sorted(p.name + ("/" if p.is_dir() else "") for p in subject_dir.iterdir())
    raise _not_found(func, f"folder not found: {subject_dir} exists but "
                           + (f"holds only {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}"
                              if inside else "is empty")
                           + "; expected the subject's BOLD runs in func/ (sub-XXX_task-<task>_run-NN_"
                             "{bold.nii.gz,bold.json,events.tsv})")


def read_sidecar(path: os.PathLike | str) -> dict[str, Any]:
    """Read a bold.json sidecar and check its timing fields.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        The whole sidecar. ``RepetitionTime`` (seconds) is guaranteed to be a
        positive finite number, and ``SliceTiming``, if present, a list of
        times in [0, RepetitionTime) seconds.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a JSON object, or ``RepetitionTime`` or ``SliceTiming``
        is missing or invalid; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise _not_found(path, "sidecar not found; every BOLD run needs its _bold.json")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    tr = meta.get("RepetitionTime")
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not math.isfinite(tr) or tr <= 0:
        raise ValueError(f"{path}: expected 'RepetitionTime' as a positive number of seconds, found {tr!r}")
    st = meta.get("SliceTiming")
    if st is not None:
        if (not isinstance(st, list) or not st
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < tr for t in st)):
            raise ValueError(f"{path}: expected 'SliceTiming' as a list of times in [0, {tr}) s, found {st!r}")
    return meta


def load_bold(run: RunFiles) -> tuple[nib.Nifti1Image, float]:
    """Open a run's BOLD image and check its TR against the sidecar.

    The voxel data are not read: ``img.dataobj`` is nibabel's lazy proxy (a
    memory map for an uncompressed .nii). For a .nii the file size is checked
    against the header; a truncated .nii.gz shows when its data are read.

    Parameters
    ----------
    run : RunFiles

    Returns
    -------
    img : nibabel.Nifti1Image or Nifti2Image
        The 4-D image, shape (x, y, z, n_volumes).
    tr_s : float
        The TR in seconds (the sidecar's ``RepetitionTime``, which the header
        agrees with to 1 ms).

    Raises
    ------
    FileNotFoundError
        If the image or the sidecar is missing; the message names it.
    ValueError
        If the image cannot be read as 4-D NIfTI, its time unit is unknown, or
        its TR (pixdim[4] in its time unit) disagrees with the sidecar's
        ``RepetitionTime``; the message names both files and both values.
    """
    if run.bold is None:
        raise _not_found(Path(f"{run.events.parent / run.name}_bold.nii.gz"),
                         "missing; this run was listed without its image (require_bold=False)")
    path = Path(run.bold)
    if not path.is_file():
        raise _not_found(path, "BOLD image not found")
    meta = read_sidecar(run.sidecar)
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises ImageFileError, EOFError, OSError, gzip errors...
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: is a {type(img).__name__}, expected NIfTI-1 or NIfTI-2")
    if len(img.shape) != 4:
        raise ValueError(f"{path}: has shape {img.shape}; expected a 4-D run (x, y, z, time)")
    if path.suffix == ".nii":
        need = img.dataobj.offset + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        have = path.stat().st_size
        if have < need:
            raise ValueError(f"{path}: truncated, {have} bytes where the header "
                             f"({img.shape}, {img.get_data_dtype()}) needs {need}")
    try:
        tr_header = header_tr_s(img.header)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    tr_sidecar = float(meta["RepetitionTime"])
    if not abs(tr_header - tr_sidecar) <= _TR_TOL_S:
        unit = img.header.get_xyzt_units()[1]
        hint = ("; the header looks like milliseconds labelled as seconds: fix its time unit"
                if abs(tr_header / 1000 - tr_sidecar) <= _TR_TOL_S else "; fix whichever is wrong")
        raise ValueError(f"TR disagrees: {run.sidecar} has RepetitionTime {tr_sidecar} s but {path} has "
                         f"pixdim[4] = {float(img.header.get_zooms()[3])} {unit} = {tr_header} s{hint}")
    task = meta.get("TaskName")
    if task is not None and task != run.task:
        raise ValueError(f"{run.sidecar}: TaskName is {task!r} but the file name says task-{run.task}")
    return img, tr_sidecar


# --------------------------------------------------------------------------- stimuli


def stimulus_segment(event: Event, stimuli_dir: os.PathLike | str, sr: int, *,
                     fade_s: float = FADE_S, fade: Literal["linear", "cosine"] = "linear",
                     rms: float | None = None, max_pad_s: float = 0.1) -> np.ndarray:
    """The audio an event played: its excerpt of the GTZAN track, with fades.

    The track ``stimuli_dir/<genre>.<track:05d>.wav`` is read, mixed to mono
    (mean of the channels), resampled to ``sr`` if its rate differs
    (``scipy.signal.resample_poly`` over the whole track, so the cut has no
    filter edge effects), and cut at samples ``i0 = round(start_s * sr)`` to
    ``i0 + round((end_s - start_s) * sr)``. A fade of ``n_f = round(fade_s * sr)``
    samples is applied at both ends (:func:`music.audio.apply_fades`); the gain
    of sample k of n is

    - ``"linear"``: ``g[k] = min(1, k / n_f, (n - 1 - k) / n_f)``, so the first
      and last samples are 0;
    - ``"cosine"`` (raised cosine): ``0.5 - 0.5 * cos(pi * g_linear[k])``.

    The ds003720 README says "2 s of fade-in and fade-out" without the shape;
    linear is the default.

    Parameters
    ----------
    event : Event
    stimuli_dir : path-like
        Folder holding the GTZAN tracks directly, named ``blues.00098.wav``.
    sr : int
        Output sample rate in Hz.
    fade_s : float
        Length of each fade in seconds (2 s in ds003720).
    fade : {"linear", "cosine"}
    rms : float or None
        If given, the faded excerpt is scaled to this RMS (the README says the
        clips were RMS-normalised; the target level is not published).
    max_pad_s : float
        If the track ends before ``end_s`` by at most this many seconds (GTZAN
        tracks are about 30 s, some a little less), the excerpt is padded with
        zeros, which fall inside the fade-out; a larger shortfall raises.

    Returns
    -------
    ndarray of shape (round((end_s - start_s) * sr),), float32
        Mono audio in the file's amplitude scale (-1..1 for PCM).

    Raises
    ------
    FileNotFoundError
        If the track's file is missing; the message names it and the layout.
    ValueError
        If the file cannot be read as audio or is too short for the excerpt.
    """
    _check_option("fade", fade, ("linear", "cosine"))
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"sr must be a positive whole number of Hz; got {sr!r}")
    sr = int(sr)
    folder = Path(stimuli_dir)
    path = folder / event.stimulus_file
    if not path.is_file():
        nested = folder / event.genre / event.stimulus_file
        hint = (f" It is in a per-genre subfolder ({nested}); move all tracks into one folder."
                if nested.is_file() else "")
        raise _not_found(path, f"stimulus not found. Expected the GTZAN tracks as WAV files directly in "
                               f"{folder}, named <genre>.<track:05d>.wav (e.g. blues.00098.wav).{hint}")
    import soundfile as sf

    try:
        data, sr_file = sf.read(path, dtype="float64", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"{path}: cannot be read as audio ({type(e).__name__}: {e})") from None
    x = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    if sr_file != sr:
        from scipy.signal import resample_poly

        g = math.gcd(sr, int(sr_file))
        x = resample_poly(x, sr // g, int(sr_file) // g)
    i0 = int(round(event.start_s * sr))
    n = int(round((event.end_s - event.start_s) * sr))
    seg = x[i0:i0 + n]
    if len(seg) < n:
        short_s = (n - len(seg)) / sr
        if short_s > max_pad_s:
            raise ValueError(f"{path}: lasts {len(x) / sr:.3f} s, but the excerpt needs "
                             f"[{event.start_s}, {event.end_s}) s; is this the right GTZAN track?")
        seg = np.concatenate([seg, np.zeros(n - len(seg))])
    n_fade = int(round(fade_s * sr))
    if fade_s < 0 or 2 * n_fade > n:
        raise ValueError(f"fade_s must be between 0 and half the excerpt ({(n / sr) / 2} s); got {fade_s}")
    seg = apply_fades(seg, sr, fade_s, fade_s, shape=fade).astype(np.float64)  # float32 inside
    if rms is not None:
        level = float(np.sqrt(np.mean(seg**2)))
        if level == 0:
            raise ValueError(f"{path}: the excerpt [{event.start_s}, {event.end_s}) s is silent; "
                             f"cannot normalise it to RMS {rms}")
        seg *= rms / level
    return seg.astype(np.float32)
