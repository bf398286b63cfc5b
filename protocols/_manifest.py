"""A folder's ``manifest.json`` and the files it lists: the checks the model bundle and the music library share."""

from __future__ import annotations

import hashlib
import json
import os

from .errors import ProtocolError

__all__ = ["read_manifest", "check_listed_files", "sha256_file"]


def read_manifest(folder: str | os.PathLike, *, error: type[ProtocolError], fmt: str, version: int,
                  required: tuple[str, ...], what: str, if_missing: str, if_newer: str = "") -> dict:
    """Load ``folder/manifest.json`` and check its format, version and required keys.

    Parameters
    ----------
    folder : path
        The bundle or library folder.
    error : ProtocolError subclass
        Raised with the manifest's path as the field (``path:key`` for a
        missing key).
    fmt, version : str, int
        The ``format`` and ``version`` the manifest must carry.
    required : tuple of str
        Top-level keys that must be present.
    what : str
        The artefact's name in the version message (``"bundle"``, ``"library"``).
    if_missing : str
        Said after ``not found:`` when there is no manifest (what to do).
    if_newer : str
        Appended to the unsupported-version message (e.g. ``"; retrain or upgrade"``).
    """
    path = os.path.join(os.fspath(folder), "manifest.json")
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise error(path, f"not found: {if_missing}") from None
    except (OSError, ValueError) as e:
        raise error(path, f"cannot be read as JSON ({e})") from None
    if not isinstance(m, dict):
        raise error(path, f"must hold a JSON object, got {type(m).__name__}")
    if m.get("format") != fmt:
        raise error(path, f"format is {m.get('format')!r}, expected {fmt!r}")
    if m.get("version") != version:
        raise error(path, f"{what} version {m.get('version')!r} is not supported (this is {version}){if_newer}")
    for key in required:
        if key not in m:
            raise error(f"{path}:{key}", "required key is missing")
    return m


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def check_listed_files(folder: str | os.PathLike, files: dict, *, error: type[ProtocolError],
                       check_hashes: bool, if_modified: str) -> None:
    """Check that every file ``manifest.json`` lists exists and (if ``check_hashes``) has its sha256.

    ``files`` maps names relative to ``folder`` to hex digests. The error
    names the file; ``if_modified`` follows ``sha256 does not match
    manifest.json:`` (what happened and what to do).
    """
    for name, digest in files.items():
        p = os.path.join(os.fspath(folder), name)
        if not os.path.exists(p):
            raise error(p, "is listed in manifest.json but missing")
        if check_hashes and sha256_file(p) != digest:
            raise error(p, f"sha256 does not match manifest.json: {if_modified}")
