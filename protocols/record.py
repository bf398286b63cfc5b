"""Append-only, crash-safe record log: the storage format of a session record.

A *record log* is one file of consecutive records. Each record is::

    offset  size  field
    0       4     magic  b"B2MR"
    4       4     header length H, uint32 little-endian
    8       8     payload length P, uint64 little-endian
    16      4     CRC-32 of the header bytes, uint32 little-endian
    20      4     CRC-32 of the payload bytes, uint32 little-endian
    24      H     header: a msgpack map; its "kind" key says what the record is
    24+H    P     payload: raw bytes (voxel data for a volume)

Records are only ever appended. The writer makes each record durable
(``fdatasync``) before :meth:`RecordLog.append` returns, so a caller may
acknowledge it. After a crash the file may end in a torn record; opening the
log moves the torn bytes aside to ``<name>.torn-<offset>`` (so nothing that
arrived is thrown away) and continues from the last whole record.

Space can be reserved ahead (:meth:`RecordLog.reserve`): the file is extended
with real zero bytes, so a later append overwrites allocated blocks and its
``fdatasync`` flushes data only, with no metadata journal commit (about 5x
faster on ext4 here; see ``bench/transport.py``). A reserved zero tail is not
a torn record: readers stop at it and the writer trims it on close.

The payload has its own CRC so a caller that already verified a wire CRC-32
of the same bytes (a received volume) passes it in instead of computing it
a third time.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack

from ._crc import crc32
from .errors import RecordError

__all__ = ["RecordLog", "Record", "RECORD_MAGIC", "scan_records"]

RECORD_MAGIC = b"B2MR"
_PREFIX = struct.Struct("<4sIQII")
PREFIX_BYTES = _PREFIX.size  # 24
_MAX_HEADER = 1 << 20


@dataclass
class Record:
    """One record read back from a log.

    ``payload`` is a memoryview into a read buffer, or ``None`` when the
    log was scanned with ``payloads=False``.
    """

    offset: int
    header: dict
    payload_offset: int
    payload_len: int
    payload: memoryview | None = None

    @property
    def kind(self) -> str:
        return self.header.get("kind", "")


def scan_records(path: str | os.PathLike, *, payloads: bool = True,
                 check_payloads: bool | None = None) -> tuple[list[Record], int]:
    """Read every whole record of a log file.

    Parameters
    ----------
    path : path-like
        The log file.
    payloads : bool
        If False, no payload is kept (``Record.payload`` is None).
    check_payloads : bool, optional
        Whether each payload's CRC is checked, which means reading it.
        Default: ``payloads``. So ``payloads=False`` alone seeks over the
        payload bytes without reading them: only the prefix and header are
        checked (magic, lengths, header CRC) and the file must hold the
        payload's length, but a payload that is corrupt or torn in place (a
        crash while writing into reserved zero space) goes undetected. Pass
        ``check_payloads=True`` to trust every record whole without keeping
        the payloads, as :class:`RecordLog` does when it opens a log.

    Returns
    -------
    records : list of Record
        Whole, checksum-valid records in file order.
    end : int
        Byte offset just past the last whole record. Bytes beyond it are a
        torn or corrupt tail.
    """
    check = payloads if check_payloads is None else bool(check_payloads)
    records: list[Record] = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        off = 0
        while off + PREFIX_BYTES <= size:
            f.seek(off)
            magic, hlen, plen, hcrc, pcrc = _PREFIX.unpack(f.read(PREFIX_BYTES))
            if magic != RECORD_MAGIC or hlen > _MAX_HEADER or off + PREFIX_BYTES + hlen + plen > size:
                break
            hbytes = f.read(hlen)
            if crc32(hbytes) != hcrc:
                break
            pbytes = f.read(plen) if check or payloads else None   # else the next seek skips it
            if check and crc32(pbytes) != pcrc:
                break
            try:
                header = msgpack.unpackb(hbytes, raw=False, strict_map_key=True)
            except Exception:
                break
            rec = Record(offset=off, header=header, payload_offset=off + PREFIX_BYTES + hlen,
                         payload_len=plen, payload=memoryview(pbytes) if payloads else None)
            records.append(rec)
            off += PREFIX_BYTES + hlen + plen
    return records, off


class RecordLog:
    """A durable append-only log file.

    Parameters
    ----------
    path : path-like
        The log file; created (with its folder) if missing.
    sync : bool
        If True (default), every append is followed by ``fdatasync`` so the
        record survives a crash or power loss once ``append`` returns.
    read_only : bool
        Read what is there and change nothing: no torn tail moved aside, no
        reserved space trimmed (another process is appending to it); appends
        are refused.

    Attributes
    ----------
    records : list of Record
        Records found when the log was opened (payloads not loaded).
    torn_path : str or None
        Where a torn tail found at open was moved, if any.
    """

    def __init__(self, path: str | os.PathLike, *, sync: bool = True, read_only: bool = False):
        self.path = os.fspath(path)
        self.sync = sync
        self.read_only = read_only
        self.torn_path = None
        if read_only:  # a live writer's tail may be a record being written: leave it be
            self.records, end = scan_records(self.path, payloads=False)
            self._fd = os.open(self.path, os.O_RDONLY)
            self._end = self._alloc_end = end
            return
        folder = os.path.dirname(self.path) or "."
        new_dir = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        existed = os.path.exists(self.path)
        if existed:
            # payload CRCs too: a crash can leave a record whole but for its payload
            self.records, end = scan_records(self.path, payloads=False, check_payloads=True)
            size = os.path.getsize(self.path)
            last = _last_nonzero(self.path, end, size)
            if last > end:
                self.torn_path = _unused(f"{self.path}.torn-{end}")
                with open(self.path, "rb") as src, open(self.torn_path, "wb") as dst:
                    src.seek(end)
                    dst.write(src.read(last - end))
                    dst.flush()
                    os.fsync(dst.fileno())
            if size > end:
                os.truncate(self.path, end)
        else:
            self.records, end = [], 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._end = end
        self._alloc_end = end
        if not existed or new_dir:
            _fsync_dir(folder)

    @property
    def end(self) -> int:
        """Byte offset where the next record will be written."""
        return self._end

    @property
    def reserved(self) -> int:
        """Bytes allocated and zero-filled past :attr:`end`."""
        return self._alloc_end - self._end

    def reserve(self, nbytes: int, *, chunk: int = 8 << 20) -> None:
        """Make sure ``nbytes`` past the end are allocated and zero-filled on disk.

        Costs one sequential write of zeros and one ``fdatasync`` now, so that
        the appends filling that space are fast. Call it off the latency path
        (e.g. right after an ack).
        """
        target = self._end + int(nbytes)
        if target <= self._alloc_end or self.read_only:
            return
        zeros = bytes(min(chunk, target - self._alloc_end))
        off = self._alloc_end
        while off < target:
            n = min(len(zeros), target - off)
            os.pwrite(self._fd, zeros[:n] if n < len(zeros) else zeros, off)
            off += n
        os.fdatasync(self._fd)
        self._alloc_end = target

    def append(self, header: dict, payload=b"", payload_crc: int | None = None) -> Record:
        """Append one record and make it durable (refused, RecordError, if opened read-only).

        Parameters
        ----------
        header : dict
            msgpack-serialisable map; should hold a ``"kind"`` key.
        payload : bytes-like
            Raw bytes, written verbatim.
        payload_crc : int, optional
            CRC-32 (zlib polynomial) of ``payload`` if the caller already has it.

        Returns
        -------
        Record
            Where it was written (payload not attached).
        """
        if self.read_only:
            raise RecordError(self.path, "was opened read-only: another process is writing this session; "
                                         "append through that process")
        hbytes = msgpack.packb(header, use_bin_type=True)
        if len(hbytes) > _MAX_HEADER:
            raise RecordError("header", f"record header is {len(hbytes)} bytes; limit {_MAX_HEADER}")
        payload = memoryview(payload).cast("B") if not isinstance(payload, bytes) else payload
        pcrc = crc32(payload) if payload_crc is None else int(payload_crc) & 0xFFFFFFFF
        prefix = _PREFIX.pack(RECORD_MAGIC, len(hbytes), len(payload), crc32(hbytes), pcrc)
        off = self._end
        n = os.pwritev(self._fd, [prefix, hbytes, payload], off)
        want = PREFIX_BYTES + len(hbytes) + len(payload)
        while n < want:  # short writes are legal; finish the record
            done = n
            n += os.pwrite(self._fd, (prefix + hbytes + bytes(payload))[done:], off + done)
        if self.sync:
            os.fdatasync(self._fd)
        self._end = off + want
        self._alloc_end = max(self._alloc_end, self._end)
        return Record(offset=off, header=header, payload_offset=off + PREFIX_BYTES + len(hbytes),
                      payload_len=len(payload))

    def read_payload(self, rec: Record) -> bytes:
        """Read the payload bytes of a record of this log."""
        return os.pread(self._fd, rec.payload_len, rec.payload_offset)

    def close(self) -> None:
        """Trim unused reserved space and close the file."""
        if self._fd >= 0:
            if self._alloc_end > self._end and not self.read_only:
                os.ftruncate(self._fd, self._end)
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _last_nonzero(path: str, start: int, stop: int, chunk: int = 8 << 20) -> int:
    """Offset just past the last non-zero byte in [start, stop), or ``start``."""
    last = start
    with open(path, "rb") as f:
        f.seek(start)
        off = start
        while off < stop:
            b = f.read(min(chunk, stop - off))
            if not b:
                break
            stripped = b.rstrip(b"\0")
            if stripped:
                last = off + len(stripped)
            off += len(b)
    return last


def _unused(path: str) -> str:
    """``path``, or ``path.1``, ``path.2``... whichever does not exist yet."""
    candidate, k = path, 0
    while os.path.exists(candidate):
        k += 1
        candidate = f"{path}.{k}"
    return candidate


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_headers(path) -> Iterator[dict]:
    """Yield the header of every record in a log file (payload CRCs unchecked: see :func:`scan_records`)."""
    for rec in scan_records(path, payloads=False)[0]:
        yield rec.header
