"""The scheduling surface every output shares (the session talks to outputs through it)."""

from __future__ import annotations

import numpy as np


class _OutputAPI:
    """What every output offers the session; delegates to ``self.mixer``."""

    def schedule_switch(self, at_frame: int, source: np.ndarray, crossfade_frames: int = 0, *,
                        loop: bool = True, offset: int = 0, beat_frames=None) -> int:
        """See :meth:`Mixer.schedule_switch`."""
        return self.mixer.schedule_switch(at_frame, source, crossfade_frames, loop=loop, offset=offset,
                                          beat_frames=beat_frames)

    def stage(self, source: np.ndarray):
        """Prepare a source for a later switch, off the hot path (here: nothing to do)."""
        return source

    def unstage(self, staged) -> None:
        """Release what :meth:`stage` prepared (here: nothing)."""

    def schedule_stop(self, at_frame: int, fade_frames: int = 0) -> int:
        """See :meth:`Mixer.schedule_stop`."""
        return self.mixer.schedule_stop(at_frame, fade_frames)

    def schedule_gain(self, at_frame: int, gain: float, ramp_frames: int = 0) -> int:
        """See :meth:`Mixer.schedule_gain`."""
        return self.mixer.schedule_gain(at_frame, gain, ramp_frames)

    def current_gain(self) -> float:
        """See :meth:`Mixer.current_gain`."""
        return self.mixer.current_gain()

    def level(self, seconds: float = 1.0) -> dict | None:
        """See :meth:`Mixer.level`."""
        return self.mixer.level(seconds)

    def next_beat_frame(self, after_frame: int, every: int = 1) -> int | None:
        """See :meth:`Mixer.next_beat_frame`."""
        return self.mixer.next_beat_frame(after_frame, every)

    def executed(self) -> list[dict]:
        """See :meth:`Mixer.executed`."""
        return self.mixer.executed()
