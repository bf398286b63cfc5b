"""The live session: the per-TR engine, its record of decisions, the dashboard and replay.

- :mod:`.engine`: :class:`SessionEngine`, volume in -> preprocess -> decode ->
  policy -> audio, results and record;
- :mod:`.clips`: library clips loaded and beat-tracked off the hot path;
- :mod:`.decisions`: ``runs/<id>/decisions.log`` of the session record;
- :mod:`.dashboard`: the rich live view;
- :mod:`.replay`: rerun a recorded session and check it decides the same;
- :mod:`.yoked`: sham feedback, the music another session's participant heard;
- :mod:`.protocol`: block designs (feedback, silence, the neutral clip).
"""

from .dashboard import Dashboard
from .decisions import DecisionLog, read_decisions
from .engine import STAGES, SessionEngine, SessionOptions
from .replay import read_session_info, recorded_volumes, replay_session, session_info, write_session_info

__all__ = ["SessionEngine", "SessionOptions", "STAGES", "Dashboard", "DecisionLog", "read_decisions",
           "replay_session", "recorded_volumes", "read_session_info", "session_info", "write_session_info"]
