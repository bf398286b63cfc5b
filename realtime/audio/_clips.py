"""Preparing clips for the mixer: read, cut, resample, map channels, fade the edges.

These run on the control thread (or a loader thread), never in the audio
callback: reading and resampling a 30 s clip takes tens of milliseconds.
"""

from __future__ import annotations

import os

import numpy as np

from music.audio import apply_fades, read_segment, resample

__all__ = ["prepare_source", "load_clip", "read_segment"]  # read_segment: from music.audio


def prepare_source(audio, sr: int, samplerate: int, channels: int = 2, fade_s: float = 0.01) -> np.ndarray:
    """Make an in-memory signal ready for :meth:`Mixer.schedule_switch`.

    Parameters
    ----------
    audio : array of shape (n_samples,) or (n_samples, n_channels)
        Float samples in [-1, 1]; not modified.
    sr : int
        Rate of ``audio`` in Hz.
    samplerate : int
        Output rate in Hz (the mixer's).
    channels : int
        Output channels. Mono is copied to every channel; a signal with the
        same channel count is kept; anything else is mixed down to mono first.
    fade_s : float
        Linear fade-in and fade-out at the edges, seconds
        (:func:`music.audio.apply_fades`), so starting, stopping and looping
        do not click; 0 disables.

    Returns
    -------
    source : array of shape (n_frames, channels), float32, C-contiguous
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"audio must be a non-empty array of shape (n_samples,) or (n_samples, n_channels), "
                         f"got shape {np.shape(audio)}")
    if int(channels) != channels or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    if x.shape[1] != channels and x.shape[1] != 1:
        x = x.mean(axis=1, keepdims=True, dtype=np.float32)
    cols = []
    for c in range(x.shape[1]):
        y = x[:, c]
        if int(sr) != int(samplerate):
            y = resample(y, int(sr), int(samplerate))
        if fade_s > 0:
            y = apply_fades(y, int(samplerate), fade_s, fade_s)
        cols.append(y)
    if len(cols) == 1:
        out = np.repeat(cols[0][:, None], channels, axis=1)
    else:
        out = np.stack(cols, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_clip(path: str | os.PathLike, start_s: float = 0.0, duration_s: float | None = None,
              samplerate: int = 48000, channels: int = 2, fade_s: float = 0.01) -> np.ndarray:
    """Read a segment of an audio file, ready for the mixer (see :func:`prepare_source`).

    Parameters
    ----------
    path : path-like
        Any file libsndfile reads (WAV, FLAC, ...).
    start_s : float
        Segment start in seconds (a library clip's ``start``).
    duration_s : float or None
        Segment length in seconds; None reads to the end. A segment running
        past the end of the file is cut there.
    samplerate, channels, fade_s
        As in :func:`prepare_source`.

    Returns
    -------
    source : array of shape (n_frames, channels), float32, C-contiguous
    """
    x, sr = read_segment(path, start_s, duration_s)
    return prepare_source(x, sr, samplerate, channels, fade_s)
