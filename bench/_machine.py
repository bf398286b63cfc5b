"""Shared helpers for the benchmark scripts in ``bench/``.

Every benchmark records the machine it ran on next to its figures, writes one
JSON file to ``bench/results/<name>.json`` (git-ignored) and summarises timing
samples the same way, so results from different scripts and machines compare.

The git state is :func:`protocols.provenance.git_state`, which a bundle's and
a session's provenance use too.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import sys

__all__ = ["RESULTS_DIR", "machine_info", "source_digest", "write_json", "summarize"]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
#: Where :func:`write_json` puts results (``bench/results/``, git-ignored).
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
if REPO_DIR not in sys.path:  # a benchmark run as a script from a clone that is not installed
    sys.path.insert(0, REPO_DIR)

from protocols.provenance import git_state  # noqa: E402


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _total_ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _versions() -> dict:
    out: dict = {}
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except ImportError:
        out["numpy"] = None
    try:
        import zmq

        out["pyzmq"] = zmq.__version__
        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        out["pyzmq"] = out["libzmq"] = None
    return out


def machine_info() -> dict:
    """Describe the machine, software and code a benchmark ran on.

    Returns
    -------
    info : dict
        ``hostname``, ``platform``, ``python``, ``cpu_model``, ``nproc``
        (CPUs this process may use), ``cpu_count`` (CPUs online),
        ``ram_total_bytes``, ``numpy``, ``pyzmq``, ``libzmq``, ``git_commit``,
        ``git_dirty`` (uncommitted changes to tracked files), and
        ``timestamp_utc`` (ISO 8601). Fields that cannot be read are ``None``.
    """
    try:
        nproc = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        nproc = os.cpu_count()
    commit, dirty = git_state(REPO_DIR)
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "cpu_model": _cpu_model(),
        "nproc": nproc,
        "cpu_count": os.cpu_count(),
        "ram_total_bytes": _total_ram_bytes(),
    }
    info.update(_versions())
    info.update(
        git_commit=commit,
        git_dirty=dirty,
        timestamp_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return info


def source_digest(paths) -> dict:
    """SHA-256 (first 16 hex digits) of source files, so a result names the code it measured.

    Useful when the working tree differs from ``git_commit``. Paths are taken
    relative to the repository root; a missing file maps to ``None``.

    Parameters
    ----------
    paths : iterable of str
        Files relative to the repository root, e.g. ``"protocols/record.py"``.
    """
    import hashlib

    out = {}
    for rel in paths:
        try:
            with open(os.path.join(REPO_DIR, rel), "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()[:16]
        except OSError:
            out[rel] = None
    return out


def write_json(name: str, payload: dict) -> str:
    """Write ``payload`` to ``bench/results/<name>.json`` and return the path.

    The folder is created if missing. The file is written to a temporary name
    and renamed, so a reader never sees half a result. NaN and infinity are
    written as ``null`` (strict JSON).

    Parameters
    ----------
    name : str
        File stem, e.g. ``"transport"`` or ``"transport-quick"``; no path separators.
    payload : dict
        JSON-serialisable content (numpy scalars and arrays are converted).
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"result name must be a plain file stem, got {name!r}")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(payload), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays
        return _jsonable(obj.tolist())
    return obj


def summarize(samples_ms) -> dict:
    """Summary statistics of timing samples.

    Parameters
    ----------
    samples_ms : sequence of float
        Samples in milliseconds (any unit works; the output keeps it).

    Returns
    -------
    summary : dict
        ``n``, ``p50``, ``p90``, ``p99``, ``max``, ``mean`` (percentiles by
        linear interpolation, as ``numpy.percentile``). With no samples, ``n``
        is 0 and the rest are ``None``.
    """
    xs = sorted(float(x) for x in samples_ms)
    n = len(xs)
    if n == 0:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}

    def pct(q: float) -> float:
        pos = (n - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"n": n, "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": xs[-1],
            "mean": math.fsum(xs) / n}
