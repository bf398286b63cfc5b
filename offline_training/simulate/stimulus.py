"""What the simulated participant heard: stand-in stimuli, the played audio of a run, its features.

The stand-ins for the GTZAN tracks come from :func:`music.generator.gtzan_standin`
(30 s, 22 050 Hz mono, like GTZAN), written as 16-bit WAV to
``<dataset>/stimuli/<genre>.<track:05d>.wav``. They do not depend on the
simulation seed: every simulated dataset plays the same stimuli.

What was played in a run is rebuilt exactly as an analysis of the dataset
would rebuild it: :func:`offline_training.bids.stimulus_segment` cuts each
event's ``[start, end)`` from the WAV file, applies the 2 s linear fades and
normalises the excerpt to -20 dBFS RMS (the ds003720 README's fade and RMS
normalisation; the level is not published), and the excerpt is placed at the
event's onset (rounded to a sample) in a silent run-long track.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from music.features import bin_frames, frame_features
from offline_training.bids import Event, stimulus_segment

from .response import DT_S, genre_regressors, stimulus_regressors

__all__ = [
    "STIMULUS_SR",
    "STIMULUS_RMS",
    "stimulus_names",
    "write_stimuli",
    "played_audio",
    "RunStimulus",
    "run_stimulus",
]

#: Sample rate of the stand-in tracks (GTZAN's), Hz.
STIMULUS_SR = 22050
#: RMS of every played excerpt after its fades (-20 dBFS).
STIMULUS_RMS = 0.1


def stimulus_names(events: Sequence[Event]) -> list[str]:
    """Sorted unique GTZAN names (``"blues.00098"``) of the tracks the events play."""
    return sorted({ev.stimulus_name for ev in events})


def write_stimuli(names: Sequence[str], stimuli_dir: os.PathLike | str, *,
                  source_dir: os.PathLike | str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write the stand-in of every named track as ``<name>.wav`` (16-bit PCM, 22 050 Hz mono).

    The stand-ins are a pure function of the name, so existing files are kept
    and files found in ``source_dir`` (another simulated dataset's
    ``stimuli/``) are copied instead of generated again.

    Parameters
    ----------
    names : sequence of str
        GTZAN names such as ``"blues.00098"``.
    stimuli_dir : path-like
    source_dir : path-like or None
        Folder of previously written stand-ins to copy from.
    progress : callable (done, total) or None

    Returns
    -------
    list of Path

    Raises
    ------
    FileNotFoundError
        If ``source_dir`` is given but is not a folder (asked to copy from a
        folder that is not there, the stand-ins are not silently generated).
    """
    from music.audio import write_audio
    from music.generator import gtzan_standin

    if source_dir is not None and not Path(source_dir).is_dir():
        raise FileNotFoundError(f"{source_dir}: folder not found; the stand-in stimuli to copy (b2m simulate "
                                "--stimuli-from) must be a folder of WAVs written before, e.g. another simulated "
                                "dataset's stimuli/. Leave the option out to generate them")
    folder = Path(stimuli_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / f"{name}.wav"
        cached = Path(source_dir) / f"{name}.wav" if source_dir is not None else None
        if not path.is_file() and cached is not None and cached.is_file():
            shutil.copyfile(cached, path)
        if not path.is_file():
            write_audio(path, gtzan_standin(name, sr=STIMULUS_SR), STIMULUS_SR, subtype="PCM_16")
        paths.append(path)
        if progress is not None:
            progress(i + 1, len(names))
    return paths


def played_audio(events: Sequence[Event], stimuli_dir: os.PathLike | str, duration_s: float, *,
                 sr: int = STIMULUS_SR) -> np.ndarray:
    """The audio played during a run.

    Parameters
    ----------
    events : sequence of Event
    stimuli_dir : path-like
        Folder with the ``<genre>.<track:05d>.wav`` files.
    duration_s : float
        Length of the run in seconds (n_volumes * TR); audio past it is cut.
    sr : int
        Output sample rate in Hz.

    Returns
    -------
    audio : ndarray of shape (round(duration_s * sr),), float32
        Silence between and after excerpts.
    """
    n = int(round(duration_s * sr))
    out = np.zeros(n, dtype=np.float32)
    for ev in events:
        seg = stimulus_segment(ev, stimuli_dir, sr, rms=STIMULUS_RMS)
        i0 = int(round(ev.onset_s * sr))
        if i0 >= n:
            continue
        m = min(seg.shape[0], n - i0)
        out[i0:i0 + m] += seg[:m]
    return out


class RunStimulus:
    """Stimulus descriptions of one run.

    Attributes
    ----------
    features_tr : ndarray of shape (n_volumes, 34), float32
        Acoustic features per TR (:func:`music.features.features_per_tr`), in their units.
    genres_tr : ndarray of shape (n_volumes, 10), float64
        Fraction of each TR covered by each genre.
    regressors_fine : ndarray of shape (n_fine, 44), float64
        The generative model's regressors ``[z_a, z_g]`` on the ``DT_S`` grid.
    """

    def __init__(self, features_tr, genres_tr, regressors_fine):
        self.features_tr = features_tr
        self.genres_tr = genres_tr
        self.regressors_fine = regressors_fine


def run_stimulus(events: Sequence[Event], stimuli_dir: os.PathLike | str, n_volumes: int,
                 tr_s: float) -> RunStimulus:
    """Features of what was played in a run, per TR and on the fine grid.

    Parameters
    ----------
    events : sequence of Event
    stimuli_dir : path-like
    n_volumes : int
    tr_s : float
        TR in seconds.

    Returns
    -------
    RunStimulus
    """
    duration = n_volumes * tr_s
    audio = played_audio(events, stimuli_dir, duration)
    n_fine = int(round(duration / DT_S))
    # the same frames binned twice: exactly music.features.features_per_tr at each bin size
    times, frames = frame_features(audio, STIMULUS_SR)
    fine = bin_frames(times, frames, DT_S, n_fine)
    per_tr = bin_frames(times, frames, tr_s, n_volumes).astype(np.float32)
    x = stimulus_regressors(fine, genre_regressors(events, n_fine, DT_S))
    return RunStimulus(features_tr=per_tr, genres_tr=genre_regressors(events, n_volumes, tr_s), regressors_fine=x)
