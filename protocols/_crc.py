"""CRC-32 (the zlib/IEEE 802.3 polynomial) of a bytes-like object.

The one checksum of the wire protocol and the record log. ``isal`` (Intel's
ISA-L, carry-less-multiply folding) computes the very same CRC-32 about 4x
faster than ``zlib`` (0.12 ms against 0.52 ms for a 1.25 MiB ds003720
volume), which matters because every volume is checksummed on both sides of
the scanner link. ``zlib`` is the fallback; both give identical values.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a declared dependency
    from zlib import crc32 as _crc32

__all__ = ["crc32"]


def crc32(data, value: int = 0) -> int:
    """Unsigned CRC-32 of ``data`` (bytes-like), continuing from ``value``."""
    return _crc32(data, value) & 0xFFFFFFFF
