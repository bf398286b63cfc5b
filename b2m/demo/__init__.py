"""The end-to-end demo behind ``b2m demo`` (see :mod:`.pipeline`)."""

from .pipeline import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
