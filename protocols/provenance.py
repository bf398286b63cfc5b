"""Provenance: which code, software and command made a file, on which machine, and when.

A model bundle, its ``metrics.json``, a music library and a session record
each carry a ``provenance`` block, so a reviewer can tell which version made
a figure and a lab can rebuild it::

    {"b2m": "0.1.0", "git_commit": "c9ef032...", "git_dirty": false,
     "created_utc": "2026-11-29T03:40:12+00:00", "command": ["b2m", "train", ...],
     "python": "3.11.2", "platform": "Linux-6.1...-x86_64", "hostname": "scanner-pc",
     "packages": {"numpy": "2.2.6", "onnxruntime": "1.22.0", ...}}

``git_commit`` and ``git_dirty`` (uncommitted changes to tracked files) are
None when the code is not a git checkout (an installed wheel). A package that
is not installed has None as its version. The block is informative: nothing
refuses a file for its provenance, only for a block that is not a mapping
(:func:`check_provenance`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata

from .errors import ProtocolError

__all__ = ["PACKAGES", "provenance", "git_state", "package_versions", "check_provenance", "code_version",
           "describe_provenance"]

#: The distributions whose versions decide a figure (numerics, file formats, models).
PACKAGES = ("numpy", "scipy", "scikit-learn", "himalaya", "onnxruntime", "onnx", "torch", "nibabel", "pyzmq",
            "msgpack", "soundfile", "sounddevice", "faiss-cpu")
_SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_state(path: str = _SOURCE_DIR) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout at ``path`` (this code's by default); ``(None, None)`` outside one
    or without git. ``dirty``: tracked files changed since the commit."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def package_versions(names=PACKAGES) -> dict:
    """``{distribution: version or None}``, from the installed distributions' metadata (nothing is imported)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(command=None) -> dict:
    """The provenance block for a file made now (see the module doc).

    Parameters
    ----------
    command : list of str, optional
        The command line that made it; default ``sys.argv`` with the program's
        path shortened to its name (``python -m b2m``'s to ``b2m``).
    """
    if command is None:
        prog = sys.argv[0] if sys.argv else ""
        name = os.path.basename(prog)
        if name == "__main__.py":
            name = os.path.basename(os.path.dirname(prog))
        command = [name, *sys.argv[1:]]
    commit, dirty = git_state()
    try:
        version = metadata.version("brain2music-rt")
    except metadata.PackageNotFoundError:
        version = None
    return {"b2m": version, "git_commit": commit, "git_dirty": dirty,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": [str(c) for c in command], "python": platform.python_version(),
            "platform": platform.platform(), "hostname": socket.gethostname(), "packages": package_versions()}


def check_provenance(block, where: str, error: type[ProtocolError] = ProtocolError) -> dict | None:
    """``block`` (a manifest's ``provenance``, None if absent) checked to be a mapping.

    Raises
    ------
    ProtocolError
        (``error``, a subclass) with field ``where`` (the file), if it is something else.
    """
    if block is None or isinstance(block, dict):
        return block
    raise error(where, f"'provenance' must be a mapping (which code made this file), got {type(block).__name__}; "
                       "write the file again with this version, or remove the key")


def code_version(block: dict | None) -> str:
    """The code that made a file, as one comparable string (``b2m 0.1.0, git 0123456789``, with ``with
    uncommitted changes`` where the checkout had them); ``not recorded`` without a block."""
    if not block:
        return "not recorded"
    commit = block.get("git_commit")
    return (f"b2m {block.get('b2m') or '?'}" + (f", git {commit[:10]}" if commit else "")
            + (" with uncommitted changes" if commit and block.get("git_dirty") else ""))


def describe_provenance(block: dict | None) -> str:
    """One line for a report: the code's version and commit, when, where and with what it was made."""
    if not block:
        return "not recorded (made before provenance was kept)"
    code = code_version(block)
    pk = block.get("packages") or {}
    libs = ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in ("numpy", "scikit-learn", "onnxruntime",
                                                                        "torch", "nibabel"))
    when = block.get("created_utc") or "?"
    cmd = " ".join(block.get("command") or ())
    return (f"{code} on {block.get('hostname') or '?'}, {when}; Python {block.get('python') or '?'}"
            + (f", {libs}" if libs else "") + (f"; command: {cmd}" if cmd else ""))
