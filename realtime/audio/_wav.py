"""The WAV sink: the same mixer, driven by a virtual clock, written to a file."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from ._api import _OutputAPI
from ._mixer import Mixer

__all__ = ["WavSink"]


class WavSink(_OutputAPI):
    """Render the mixer on demand and write exactly what a device would have played.

    The session advances it with :meth:`advance_to`; its clock is the frame
    count (``now() == frame / samplerate``). The file is written beside
    ``path`` under a temporary name while rendering and renamed into place by
    :meth:`close`, so ``path`` is either absent or complete.

    Parameters
    ----------
    path : path-like
        Destination file (``.wav``; any extension libsndfile knows works).
    samplerate : int
        Output rate in Hz.
    channels : int
        Output channels.
    blocksize : int
        Frames per render call, as a device callback would use.
    subtype : str
        libsndfile subtype; ``"FLOAT"`` (default) keeps the samples exactly,
        ``"PCM_16"`` makes a smaller file.

    Attributes
    ----------
    mixer : Mixer
    underruns : int
        Always 0 (kept so a session can treat all outputs alike).
    """

    kind = "wav"
    underruns = 0
    xruns = 0
    callback_errors = 0

    def __init__(self, path, samplerate: int = 48000, channels: int = 2, blocksize: int = 256,
                 subtype: str = "FLOAT"):
        import soundfile as sf

        self.path = os.path.abspath(os.fspath(path))
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise ValueError(f"cannot write {self.path}: folder {directory} does not exist")
        ext = os.path.splitext(self.path)[1].lstrip(".").upper()
        if ext not in sf.available_formats():
            raise ValueError(f"cannot tell the audio format of {self.path!r} from its extension; use .wav")
        if not sf.check_format(ext, subtype):
            raise ValueError(f"subtype {subtype!r} is not valid for {ext} files")
        self._format, self._subtype = ext, subtype
        self.samplerate = int(samplerate)
        self.channels = int(channels)
        self.blocksize = int(blocksize)
        if self.blocksize < 1:
            raise ValueError(f"blocksize must be >= 1, got {blocksize}")
        self.mixer = Mixer(self.samplerate, self.channels, max_block=max(8192, self.blocksize))
        per_write = max(1, 16384 // self.blocksize) * self.blocksize
        self._buf = np.zeros((per_write, self.channels), np.float32)
        self._file = None
        self._tmp = None
        self.callbacks = 0

    def start(self) -> "WavSink":
        """Open the temporary file (idempotent)."""
        import soundfile as sf

        if self._file is None:
            fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(self.path)[1],
                                             dir=os.path.dirname(self.path))
            os.close(fd)
            self._file = sf.SoundFile(self._tmp, "w", samplerate=self.samplerate, channels=self.channels,
                                      subtype=self._subtype, format=self._format)
        return self

    @property
    def frame(self) -> int:
        """Frames rendered (and written) so far."""
        return self.mixer.frame

    def advance_to(self, frame: int) -> None:
        """Render and write up to output frame ``frame`` (exclusive); no-op if already there."""
        if self._file is None:
            self.start()
        target = int(frame)
        buf = self._buf
        while self.mixer.frame < target:
            filled = 0
            while filled < buf.shape[0] and self.mixer.frame < target:
                n = min(self.blocksize, target - self.mixer.frame, buf.shape[0] - filled)
                f0 = self.mixer.frame
                self.mixer.render(buf[filled:filled + n], f0, f0 / self.samplerate)
                self.callbacks += 1
                filled += n
            self._file.write(buf[:filled])
        self.mixer.collect()

    def advance(self, n_frames: int) -> None:
        """Render and write ``n_frames`` more frames."""
        self.advance_to(self.mixer.frame + int(n_frames))

    def now(self) -> float:
        """The virtual clock, seconds: frames rendered / rate."""
        return self.mixer.frame / self.samplerate

    def time_to_frame(self, t: float) -> int:
        """The frame at time ``t`` seconds of the virtual clock."""
        return int(round(t * self.samplerate))

    def frame_to_time(self, frame: int) -> float:
        return frame / self.samplerate

    def heard_frame(self) -> int:
        return self.mixer.frame

    @property
    def active(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        """Finish the file and move it into place (idempotent)."""
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
            raise
        self.mixer.collect()

    def abort(self) -> None:
        """Drop the file being written; ``path`` is left as it was."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, *exc):
        self.close()

    def stats(self) -> dict:
        return {"kind": self.kind, "path": self.path, "samplerate": self.samplerate, "channels": self.channels,
                "blocksize": self.blocksize, "frames": self.frame, "callbacks": self.callbacks,
                "underruns": 0, "xruns": 0, "callback_errors": 0, "late_commands": self.mixer.late_commands,
                "voice_steals": self.mixer.voice_steals, "clock_slip_ms": 0.0, "latency_s": 0.0}

    def __repr__(self):
        return f"WavSink({self.path!r}, {self.samplerate} Hz, {self.channels} ch, frame {self.frame})"
