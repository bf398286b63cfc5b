"""Session record v1: what is appended is known again after a reopen, and
runs load back bit-exact."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from protocols.errors import RecordError
from protocols.record import scan_records
from protocols.session import SESSION_FORMAT, SessionRecord, list_runs, load_run
from protocols.wire import RunEnd, RunStart, VolumeMessage, decode, encode

SHAPE = (6, 5, 4)
AFFINE = np.array([[-2.0, 0.1, 0.0, 90.25], [0.0, 2.0, -0.05, -126.5], [0.0, 0.0, 2.2, -72.0],
                   [0.0, 0.0, 0.0, 1.0]])
TR = 1.5
NIFTI_HEADER = bytes(range(256)) * 2


def _volumes(rng, n: int, order: str) -> list[np.ndarray]:
    vols = [rng.integers(-32768, 32767, size=SHAPE, dtype=np.int16) for _ in range(n)]
    return [np.asfortranarray(v) if order == "F" else v for v in vols]


def _append_volume(rec: SessionRecord, run_id: str, index: int, data: np.ndarray, n_volumes=None):
    """Append as the receiver does: the validated message and its payload frame as received."""
    frames = [bytes(f) for f in encode(VolumeMessage(run_id, index, data, AFFINE, TR, n_volumes=n_volumes,
                                                     t_acquired=1.7e9 + index, t_sent=1.7e9 + index))]
    msg = decode(frames)
    order = "F" if (msg.data.flags.f_contiguous and not msg.data.flags.c_contiguous) else "C"
    return rec.append_volume(msg, frames[1], t_recv=1.7e9 + index + 0.01, order=order)


def _run_start(run_id="run1", n=4):
    return RunStart(run_id=run_id, tr_s=TR, n_volumes=n, shape=SHAPE, dtype="<i2", affine=AFFINE,
                    meta={"source": "test", "nifti_header": NIFTI_HEADER}, t_sent=1.7e9)


@pytest.mark.parametrize("order", ["C", "F"])
def test_session_record_reopen_restores_runs(rng, tmp_path, order):
    vols = _volumes(rng, 4, order)
    rec = SessionRecord(tmp_path)
    rec.append_run_start(_run_start(), t_recv=1.7e9)
    for i in (2, 0, 3, 1):  # out of order, as a resending sender may deliver them
        _append_volume(rec, "run1", i, vols[i])
    rec.append_run_end(RunEnd("run1", 4, t_sent=1.8e9), t_recv=1.8e9)
    rec.close()

    again = SessionRecord(tmp_path)
    try:
        assert list(again.runs) == ["run1"] and again.torn == []
        run = again.runs["run1"]
        assert sorted(run.received) == [0, 1, 2, 3]
        assert run.n_volumes == 4 and run.ended and run.complete and run.missing() == []
        assert run.geometry == {"shape": list(SHAPE), "dtype": "<i2", "order": order,
                                "affine": AFFINE.ravel().tolist(), "tr_s": TR}
        assert run.start["meta"] == {"source": "test", "nifti_header": NIFTI_HEADER}
        assert run.start["shape"] == list(SHAPE)
        for i, v in enumerate(vols):
            got = run.volume(i)
            assert got.dtype == np.int16 and np.array_equal(got, v)
    finally:
        again.close()
    assert list_runs(tmp_path) == ["run1"]


@pytest.mark.parametrize("order", ["C", "F"])
def test_load_run_bit_exact(rng, tmp_path, order):
    vols = _volumes(rng, 5, order)
    want = np.stack(vols, axis=-1)
    rec = SessionRecord(tmp_path)
    for i in (4, 1, 0, 3, 2):
        _append_volume(rec, "run1", i, vols[i], n_volumes=5)
    rec.close()
    data, geometry, headers = load_run(tmp_path, "run1")
    assert data.shape == SHAPE + (5,)
    assert data.dtype.str == "<i2"
    assert np.array_equal(data, want)
    assert geometry["affine"].dtype == np.float64 and np.array_equal(geometry["affine"], AFFINE)
    assert geometry["tr_s"] == TR and geometry["order"] == order and geometry["shape"] == list(SHAPE)
    assert [h["index"] for h in headers] == [0, 1, 2, 3, 4]
    assert [h["t_acq"] for h in headers] == [1.7e9 + i for i in range(5)]


def test_append_volume_keeps_payload_as_received(rng, tmp_path):
    vol = np.asfortranarray(_volumes(rng, 1, "C")[0])
    rec = SessionRecord(tmp_path)
    _append_volume(rec, "run1", 0, vol)
    rec.close()
    (record,), _ = scan_records(tmp_path / "runs" / "run1" / "volumes.log")
    assert bytes(record.payload) == vol.tobytes(order="F")  # the sender's bytes, not re-laid out
    assert record.header["kind"] == "volume" and record.header["order"] == "F"


def test_load_run_gap_names_missing_index(rng, tmp_path):
    vols = _volumes(rng, 4, "C")
    rec = SessionRecord(tmp_path)
    rec.append_run_start(_run_start(n=4), t_recv=1.7e9)
    for i in (0, 1, 3):
        _append_volume(rec, "run1", i, vols[i])
    rec.close()
    again = SessionRecord(tmp_path)
    run = again.runs["run1"]
    assert run.missing() == [2] and not run.complete
    again.close()
    with pytest.raises(RecordError) as e:
        load_run(tmp_path, "run1")
    assert "[2]" in e.value.reason
    assert e.value.field.endswith(os.path.join("run1", "volumes.log"))


def test_load_run_gap_at_end_from_run_end(rng, tmp_path):
    vols = _volumes(rng, 2, "C")
    rec = SessionRecord(tmp_path)
    for i in (0, 1):
        _append_volume(rec, "run1", i, vols[i])  # no n_volumes in the volume headers
    rec.append_run_end(RunEnd("run1", 3, t_sent=1.8e9), t_recv=1.8e9)
    assert rec.runs["run1"].missing() == [2]
    rec.close()
    with pytest.raises(RecordError) as e:
        load_run(tmp_path, "run1")
    assert "[2]" in e.value.reason


def test_load_run_unknown_run_raises(tmp_path):
    SessionRecord(tmp_path).close()
    with pytest.raises(RecordError) as e:
        load_run(tmp_path, "nope")
    assert "nope" in e.value.reason


def test_session_record_reopen_moves_torn_tail(rng, tmp_path):
    vols = _volumes(rng, 3, "C")
    rec = SessionRecord(tmp_path)
    for i in range(3):
        _append_volume(rec, "run1", i, vols[i], n_volumes=3)
    rec.close()
    log = tmp_path / "runs" / "run1" / "volumes.log"
    size = log.stat().st_size
    os.truncate(log, size - 100)  # the last volume was torn by a crash
    again = SessionRecord(tmp_path)
    try:
        run = again.runs["run1"]
        assert sorted(run.received) == [0, 1] and run.missing() == [2]
        assert len(again.torn) == 1 and os.path.exists(again.torn[0])
        _append_volume(again, "run1", 2, vols[2], n_volumes=3)  # the sender resends it
        assert run.complete
    finally:
        again.close()
    data, _, _ = load_run(tmp_path, "run1")
    assert np.array_equal(data, np.stack(vols, axis=-1))


def test_session_record_other_format_raises(tmp_path):
    (tmp_path / "session.json").write_text(json.dumps({"format": "some-other-tool", "version": 1}))
    with pytest.raises(RecordError) as e:
        SessionRecord(tmp_path)
    assert e.value.field.endswith("session.json")
    assert "some-other-tool" in e.value.reason and "--out" in e.value.reason


def test_session_record_other_version_raises(tmp_path):
    (tmp_path / "session.json").write_text(json.dumps({"format": SESSION_FORMAT, "version": 99}))
    with pytest.raises(RecordError) as e:
        SessionRecord(tmp_path)
    assert "99" in e.value.reason


def test_session_record_new_folder_writes_session_json(tmp_path):
    SessionRecord(tmp_path / "s").close()
    meta = json.loads((tmp_path / "s" / "session.json").read_text())
    assert meta["format"] == SESSION_FORMAT and meta["version"] == 1


def test_session_record_unreadable_session_json_raises_record_error(tmp_path):
    (tmp_path / "session.json").write_text("not json at all")
    with pytest.raises(RecordError):
        SessionRecord(tmp_path)


def test_per_volume_index_keeps_only_what_varies_and_a_changed_affine(rng, tmp_path):
    vols = _volumes(rng, 3, "C")
    rec = SessionRecord(tmp_path, sync=False)
    _append_volume(rec, "run1", 0, vols[0], n_volumes=3)
    _append_volume(rec, "run1", 1, vols[1], n_volumes=3)
    moved = AFFINE.copy()
    moved[0, 3] += 0.5  # a scanner with prospective motion correction updates the affine mid-run
    frames = [bytes(f) for f in encode(VolumeMessage("run1", 2, vols[2], moved, TR, n_volumes=3, t_acquired=1.7e9))]
    rec.append_volume(decode(frames), frames[1], t_recv=1.7e9 + 2.01, order="C")
    rec.close()
    for r in (rec, SessionRecord(tmp_path, sync=False)):  # live, and reopened
        run = r.runs["run1"]
        h0, h2 = run.received[0].header, run.received[2].header
        assert "affine" not in h0 and "shape" not in h0 and h0["t_recv"] == pytest.approx(1.7e9 + 0.01)
        assert h2["affine"] == moved.ravel().tolist()
        assert run.geometry["affine"] == AFFINE.ravel().tolist()
    from realtime.session.replay import recorded_volumes

    got = {m.index: m for m, _ in recorded_volumes(tmp_path)}
    np.testing.assert_array_equal(got[0].affine, AFFINE)
    np.testing.assert_array_equal(got[2].affine, moved)
    assert np.array_equal(got[2].data, vols[2])


def test_a_run_recorded_in_mixed_memory_orders_reads_back_as_sent(rng, tmp_path):
    """A receiver before 2026-11-29 took a run whose volumes came in both orders (the wire allows either per
    message); each volume reads back in its own order, one by one and as the whole run."""
    vols = _volumes(rng, 4, "F")
    vols[2] = np.ascontiguousarray(vols[2])
    rec = SessionRecord(tmp_path)
    for i, v in enumerate(vols):
        _append_volume(rec, "run1", i, v, n_volumes=4)
    for i, v in enumerate(vols):
        np.testing.assert_array_equal(rec.runs["run1"].volume(i), v)
    rec.close()
    data, _, _ = load_run(tmp_path, "run1")
    np.testing.assert_array_equal(data, np.stack(vols, axis=-1))


def _hold_in_another_process(folder):
    """A real second process that claims ``folder`` and waits (killed by the caller)."""
    import subprocess
    import sys

    code = ("import sys, time; from protocols.session import SessionLock; SessionLock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_one_process_at_a_time_writes_a_session_folder(rng, tmp_path):
    """Two writers would overwrite each other's records: a folder another process holds is refused, naming
    that process; a reader then opens it read-only (nothing repaired or trimmed under a live writer); the
    claim dies with its process, even killed with SIGKILL."""
    import signal

    from protocols.session import SessionLock, written_elsewhere

    rec = SessionRecord(tmp_path)
    _append_volume(rec, "run1", 0, _volumes(rng, 1, "C")[0])
    rec.close()
    other = _hold_in_another_process(tmp_path)
    try:
        assert written_elsewhere(tmp_path)
        with pytest.raises(RecordError, match=rf"is being written by PID {other.pid} .*stop that one first"):
            SessionLock(tmp_path)
        size = os.path.getsize(tmp_path / "runs" / "run1" / "volumes.log")
        with open(tmp_path / "runs" / "run1" / "volumes.log", "ab") as f:
            f.write(b"B2MR" + bytes(40))  # as if the live writer were half-way through a record
        reader = SessionRecord(tmp_path)
        assert reader.read_only and sorted(reader.runs["run1"].received) == [0] and reader.torn == []
        with pytest.raises(RecordError, match="read-only"):
            _append_volume(reader, "run1", 1, _volumes(rng, 1, "C")[0])
        with pytest.raises(RecordError, match="read-only"):
            reader.run("run2")
        reader.close()
        assert os.path.getsize(tmp_path / "runs" / "run1" / "volumes.log") == size + 44  # left as it was
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert not written_elsewhere(tmp_path)
    with SessionLock(tmp_path), SessionLock(tmp_path):  # free again; claims nest within a process
        assert not written_elsewhere(tmp_path)
        writer = SessionRecord(tmp_path)
        assert not writer.read_only and writer.torn  # the half record, moved aside by the writer
        writer.close()
