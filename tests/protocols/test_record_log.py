"""The append-only record log: round trips, torn tails moved aside, CRC checks."""

from __future__ import annotations

import os
import struct
import zlib

import msgpack
import numpy as np
import pytest

from protocols.record import PREFIX_BYTES, RECORD_MAGIC, RecordLog, scan_records


def _payloads(rng, n: int = 6) -> list[bytes]:
    sizes = [0, 1] + [int(s) for s in rng.integers(2, 5000, size=n - 2)]
    return [rng.bytes(s) for s in sizes]


def _write(path, payloads) -> list:
    with RecordLog(path) as log:
        return [log.append({"kind": "volume", "index": i, "note": "é"}, p) for i, p in enumerate(payloads)]


def test_append_scan_roundtrip_exact(rng, tmp_path):
    path = tmp_path / "runs" / "run1" / "volumes.log"  # folders are created
    payloads = _payloads(rng)
    written = _write(path, payloads)
    records, end = scan_records(path)
    assert end == os.path.getsize(path)
    assert [r.header for r in records] == [{"kind": "volume", "index": i, "note": "é"}
                                           for i in range(len(payloads))]
    assert [bytes(r.payload) for r in records] == payloads
    assert [(r.offset, r.payload_offset, r.payload_len) for r in records] == [
        (w.offset, w.payload_offset, w.payload_len) for w in written]
    assert all(r.kind == "volume" for r in records)


def test_append_accepts_memoryview_payload(rng, tmp_path):
    data = rng.integers(-1000, 1000, size=(5, 4, 3), dtype=np.int16)
    with RecordLog(tmp_path / "v.log") as log:
        rec = log.append({"kind": "volume"}, memoryview(data).cast("B"))
        assert log.read_payload(rec) == data.tobytes()
    (got,), _ = scan_records(tmp_path / "v.log")
    assert np.array_equal(np.frombuffer(got.payload, np.int16).reshape(5, 4, 3), data)


def test_append_layout_matches_documented_format(rng, tmp_path):
    # Independent reference: parse the first record by hand from the module docstring's table.
    payload = rng.bytes(123)
    header = {"kind": "run_start", "run_id": "run1"}
    with RecordLog(tmp_path / "v.log") as log:
        log.append(header, payload)
    raw = (tmp_path / "v.log").read_bytes()
    magic, hlen, plen, hcrc, pcrc = struct.unpack_from("<4sIQII", raw, 0)
    assert (magic, plen) == (RECORD_MAGIC, 123)
    hbytes = raw[24:24 + hlen]
    assert msgpack.unpackb(hbytes, raw=False) == header
    assert raw[24 + hlen:] == payload
    assert hcrc == zlib.crc32(hbytes) and pcrc == zlib.crc32(payload)
    assert PREFIX_BYTES == 24


def test_append_with_known_payload_crc_is_verified_on_scan(rng, tmp_path):
    payload = rng.bytes(64)
    with RecordLog(tmp_path / "v.log") as log:
        log.append({"kind": "a"}, payload, payload_crc=zlib.crc32(payload))
        log.append({"kind": "b"}, payload, payload_crc=zlib.crc32(payload) ^ 1)  # a lying caller
    records, end = scan_records(tmp_path / "v.log")
    assert [r.kind for r in records] == ["a"]  # the bad record is not trusted


def test_append_after_reopen_continues_at_end(rng, tmp_path):
    path = tmp_path / "v.log"
    payloads = _payloads(rng)
    _write(path, payloads[:3])
    size = os.path.getsize(path)
    with RecordLog(path) as log:
        assert log.torn_path is None
        assert len(log.records) == 3 and all(r.payload is None for r in log.records)
        assert log.end == size
        rec = log.append({"kind": "volume", "index": 3}, payloads[3])
        assert rec.offset == size
        assert log.read_payload(log.records[1]) == payloads[1]
    records, end = scan_records(path)
    assert [bytes(r.payload) for r in records] == payloads[:4]
    assert end == os.path.getsize(path)


@pytest.mark.parametrize("where", ["prefix", "header", "payload", "last-byte"])
def test_open_torn_tail_moved_aside(rng, tmp_path, where):
    path = tmp_path / "v.log"
    payloads = _payloads(rng)
    written = _write(path, payloads)
    raw = path.read_bytes()
    last = written[-1]
    cut = {"prefix": last.offset + 10, "header": last.offset + PREFIX_BYTES + 3,
           "payload": last.payload_offset + last.payload_len // 2, "last-byte": len(raw) - 1}[where]
    os.truncate(path, cut)
    with RecordLog(path) as log:
        assert log.torn_path == f"{path}.torn-{last.offset}"
        assert len(log.records) == len(payloads) - 1
        assert log.end == last.offset
        assert os.path.getsize(path) == last.offset
        with open(log.torn_path, "rb") as f:
            assert f.read() == raw[last.offset:cut]  # exactly the torn bytes, nothing lost
        log.append({"kind": "volume", "index": "again"}, payloads[-1])
    with RecordLog(path) as log:  # continues cleanly after the reopen
        assert log.torn_path is None
        assert [r.header["index"] for r in log.records] == list(range(len(payloads) - 1)) + ["again"]
        assert log.read_payload(log.records[-1]) == payloads[-1]


def test_open_appended_garbage_moved_aside(rng, tmp_path):
    path = tmp_path / "v.log"
    payloads = _payloads(rng)
    _write(path, payloads)
    end = os.path.getsize(path)
    garbage = rng.bytes(37)
    with open(path, "ab") as f:
        f.write(garbage)
    with RecordLog(path) as log:
        assert log.torn_path == f"{path}.torn-{end}"
        assert len(log.records) == len(payloads)
        assert log.append({"kind": "volume", "index": 99}).offset == end
    with open(f"{path}.torn-{end}", "rb") as f:
        assert f.read() == garbage
    records, _ = scan_records(path)
    assert [bytes(r.payload) for r in records] == payloads + [b""]


def test_open_garbage_with_magic_moved_aside(tmp_path):
    # A tail that starts like a record but claims more bytes than the file has.
    path = tmp_path / "v.log"
    _write(path, [b"abc"])
    end = os.path.getsize(path)
    tail = struct.pack("<4sIQII", RECORD_MAGIC, 5, 10**9, 0, 0) + b"hello"
    with open(path, "ab") as f:
        f.write(tail)
    with RecordLog(path) as log:
        assert len(log.records) == 1 and log.torn_path == f"{path}.torn-{end}"
    with open(f"{path}.torn-{end}", "rb") as f:
        assert f.read() == tail


@pytest.mark.parametrize("region", ["payload", "header"])
def test_scan_flipped_byte_in_last_record_detected(rng, tmp_path, region):
    path = tmp_path / "v.log"
    payloads = _payloads(rng)
    written = _write(path, payloads)
    last = written[-1]
    raw = bytearray(path.read_bytes())
    pos = last.payload_offset + last.payload_len // 2 if region == "payload" else last.offset + PREFIX_BYTES + 2
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    records, end = scan_records(path)
    assert end == last.offset and len(records) == len(payloads) - 1
    with RecordLog(path) as log:
        assert len(log.records) == len(payloads) - 1
        assert log.torn_path == f"{path}.torn-{last.offset}"
        with open(log.torn_path, "rb") as f:
            assert f.read() == bytes(raw[last.offset:])  # the bad record is kept for inspection
        assert log.append({"kind": "volume", "index": 5}, payloads[-1]).offset == last.offset
    records, _ = scan_records(path)
    assert [bytes(r.payload) for r in records] == payloads


def test_scan_without_payloads_reads_headers_only(rng, tmp_path):
    path = tmp_path / "v.log"
    payloads = _payloads(rng)
    _write(path, payloads)
    records, end = scan_records(path, payloads=False)
    assert end == os.path.getsize(path)
    assert all(r.payload is None for r in records)
    assert [r.payload_len for r in records] == [len(p) for p in payloads]


def test_scan_without_payloads_checks_payload_crc_only_when_asked(rng, tmp_path):
    path = tmp_path / "v.log"
    payloads = _payloads(rng)
    last = _write(path, payloads)[-1]
    raw = bytearray(path.read_bytes())
    raw[last.payload_offset + last.payload_len // 2] ^= 0x01  # a payload damaged in place
    path.write_bytes(bytes(raw))
    records, end = scan_records(path, payloads=False)  # payload bytes seeked over, never read
    assert len(records) == len(payloads) and end == len(raw)
    records, end = scan_records(path, payloads=False, check_payloads=True)
    assert len(records) == len(payloads) - 1 and end == last.offset
    assert all(r.payload is None for r in records)


def test_scan_empty_file_has_no_records(tmp_path):
    path = tmp_path / "v.log"
    path.write_bytes(b"")
    assert scan_records(path) == ([], 0)
    with RecordLog(path) as log:
        assert log.records == [] and log.torn_path is None and log.end == 0


def test_open_second_torn_tail_at_same_offset_keeps_both(rng, tmp_path):
    path = tmp_path / "v.log"
    _write(path, [b"abc"])
    end = os.path.getsize(path)
    first, second = rng.bytes(40), rng.bytes(30)
    with open(path, "ab") as f:
        f.write(first)
    RecordLog(path).close()
    with open(path, "ab") as f:
        f.write(second)
    RecordLog(path).close()
    kept = b"".join(open(os.path.join(tmp_path, n), "rb").read()
                    for n in sorted(os.listdir(tmp_path)) if n.startswith(f"v.log.torn-{end}"))
    assert first in kept and second in kept
