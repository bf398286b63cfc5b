"""Entry point of the audio process that :class:`IsolatedOutput` starts:
``python -m realtime.audio._child JSON_ARGS`` (see :mod:`realtime.audio._process`)."""

from ._process import _main

if __name__ == "__main__":  # pragma: no cover - runs in the child
    _main()
