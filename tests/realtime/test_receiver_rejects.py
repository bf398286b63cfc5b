"""Issue 2, acceptance 4: malformed messages sent to a live receiver over a
real loopback socket are rejected with a reason, kept in rejected.log, and
the receiver keeps serving."""

from __future__ import annotations

import json
import re

import msgpack
import numpy as np
import pytest
import zmq

from protocols.record import scan_records
from protocols.wire import (
    MAX_HEADER_BYTES,
    Ack,
    Heartbeat,
    Reject,
    RunEnd,
    RunStart,
    VolumeMessage,
    decode,
    encode,
)
from realtime.receiver import Receiver
from realtime.transport import TransportError

AFFINE = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


@pytest.fixture
def client(endpoint):
    """A DEALER socket connected to ``endpoint``, as a sender would use."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    yield sock
    sock.close(0)
    ctx.term()


def ask(sock, frames, timeout_ms: int = 10_000):
    """Send one message and decode the one reply."""
    sock.send_multipart([bytes(f) for f in frames])
    assert sock.poll(timeout_ms), "the receiver did not answer"
    return decode(sock.recv_multipart())


def volume_frames(rng, index=0, run_id="run1", shape=(4, 3, 2), dtype="<i2", n_volumes=None):
    data = rng.integers(-1000, 1000, size=shape).astype(dtype)
    return [bytes(f) for f in encode(VolumeMessage(run_id, index, data, AFFINE, 1.5, n_volumes=n_volumes,
                                                   t_acquired=1.7e9, t_sent=1.7e9))]


def mangle(frames, **changes):
    h = msgpack.unpackb(frames[0], raw=False)
    h.update(changes)
    return [msgpack.packb(h, use_bin_type=True)] + list(frames[1:])


def huge_header(frames):
    h = msgpack.unpackb(frames[0], raw=False)
    h["pad"] = "x" * (MAX_HEADER_BYTES + 100)
    return [msgpack.packb(h, use_bin_type=True)] + list(frames[1:])


def malformed_cases(rng):
    """(name, frames, expected field, regex the reason must match)."""
    good = volume_frames(rng)
    header, payload = good
    widened = np.frombuffer(payload, "<i2").astype("<f8").tobytes()
    cases = [
        ("header-without-payload", [header], "frames", r"header and payload"),
        ("payload-cut-short", [header, payload[:-5]], "payload", r"needs 48.*truncated"),
        ("payload-empty", [header, b""], "payload", r"needs 48"),
        ("payload-float64-for-int16", [header, widened], "payload", r"is 192 bytes.*needs 48"),
        ("dtype-f16", mangle(good, dtype="<f16"), "header.dtype", r"send one of.*<i2"),
        ("dtype-without-byte-order", mangle(good, dtype="float64"), "header.dtype", r"send one of.*<f8"),
        ("nan-affine", mangle(good, affine=[float("nan")] + np.eye(4).ravel().tolist()[1:]),
         "header.affine", r"NaN.*send"),
        ("huge-header", huge_header(good), "header", str(MAX_HEADER_BYTES)),
        ("protocol-v2", mangle(good, v=2), "header.v", r"version 1.*upgrade"),
        ("tr-in-ms", mangle(good, tr_s=1500.0), "header.tr_s", r"seconds.*divide by 1000"),
    ]
    for i, n in enumerate([1, 9, 300, 5000]):
        cases.append((f"random-bytes-{i}", [rng.bytes(n)], ("header", "header.proto"), r"\S"))
    cases.append(("random-two-frames", [rng.bytes(64), rng.bytes(64)], ("header", "header.proto"), r"\S"))
    return cases


def test_receiver_rejects_malformed_and_keeps_serving(rng, tmp_path, endpoint, client, serving):
    out = tmp_path / "session"
    cases = malformed_cases(rng)
    with serving(out, endpoint) as rx:
        for name, frames, field, hint in cases:
            reply = ask(client, frames)
            assert isinstance(reply, Reject), f"{name}: expected a reject, got {reply}"
            fields = field if isinstance(field, tuple) else (field,)
            assert reply.field in fields, f"{name}: {reply.field}: {reply.reason}"
            assert re.search(hint, reply.reason, re.S), f"{name}: {reply.reason!r} lacks {hint!r}"
        assert rx.stats.rejected == len(cases)
        # Identities that could be read from a bad volume header are echoed.
        reply = ask(client, mangle(volume_frames(rng, index=7), v=2))
        assert (reply.field, reply.of, reply.run_id, reply.index) == ("header.v", "volume", "run1", 7)

        ack = ask(client, volume_frames(rng, index=0))  # the same connection still works
        assert isinstance(ack, Ack)
        assert (ack.of, ack.run_id, ack.index, ack.status) == ("volume", "run1", 0, "recorded")
        assert ask(client, encode(Heartbeat())).status == "ok"
        assert rx.stats.recorded == 1 and rx.stats.rejected == len(cases) + 1

    kept, _ = scan_records(out / "rejected.log")
    assert len(kept) == len(cases) + 1
    peers = set()
    for (name, frames, field, _hint), rec in zip(cases, kept):
        assert rec.kind == "rejected"
        assert rec.header["field"] in (field if isinstance(field, tuple) else (field,)), name
        assert rec.header["reason"]
        assert rec.header["frame_lens"] == [len(f) for f in frames], name
        assert bytes(rec.payload) == b"".join(frames), name  # nothing received is lost
        assert rec.header["truncated"] is False
        peers.add(rec.header["peer"])
    assert len(peers) == 1 and peers != {""}
    (vol,), _ = scan_records(out / "runs" / "run1" / "volumes.log")
    assert vol.header["index"] == 0


def test_receiver_reject_fields_match_rejected_log(rng, tmp_path, endpoint, client, serving):
    out = tmp_path / "session"
    cases = malformed_cases(rng)
    with serving(out, endpoint):
        replies = [ask(client, frames) for _, frames, _, _ in cases]
    kept, _ = scan_records(out / "rejected.log")
    assert [(r.header["field"], r.header["reason"]) for r in kept] == [(r.field, r.reason) for r in replies]


@pytest.mark.parametrize("which", ["huge-header", "http-probe"])
def test_receiver_reject_reason_says_what_to_do(rng, tmp_path, endpoint, client, which, serving):
    frames = huge_header(volume_frames(rng)) if which == "huge-header" else [b"GET / HTTP/1.1\r\n\r\n"]
    with serving(tmp_path / "session", endpoint):
        reply = ask(client, frames)
    assert isinstance(reply, Reject) and reply.field == "header"
    verbs = r"\b(send|use|keep|split|reduce|check|fix|upgrade|connect|point)\b"
    assert re.search(verbs, reply.reason, re.I), reply.reason


def test_receiver_duplicate_acked_not_recorded_twice(rng, tmp_path, endpoint, client, serving):
    out = tmp_path / "session"
    frames = volume_frames(rng, index=3)
    with serving(out, endpoint) as rx:
        first = ask(client, frames)
        second = ask(client, frames)
        assert (first.status, second.status) == ("recorded", "duplicate")
        assert (second.of, second.run_id, second.index) == ("volume", "run1", 3)
        assert rx.stats.recorded == 1 and rx.stats.duplicates == 1
    records, _ = scan_records(out / "runs" / "run1" / "volumes.log")
    assert [r.header["index"] for r in records if r.kind == "volume"] == [3]


def test_receiver_duplicate_after_restart_not_recorded_twice(rng, tmp_path, endpoint, client, serving):
    out = tmp_path / "session"
    frames = volume_frames(rng, index=0)
    with serving(out, endpoint):
        assert ask(client, frames).status == "recorded"
    with serving(out, endpoint) as rx:  # a restarted receiver knows what it recorded
        assert ask(client, frames).status == "duplicate"
        assert rx.stats.recorded == 0
    records, _ = scan_records(out / "runs" / "run1" / "volumes.log")
    assert len(records) == 1


def test_receiver_shape_change_rejected(rng, tmp_path, endpoint, client, serving):
    out = tmp_path / "session"
    with serving(out, endpoint) as rx:
        assert ask(client, volume_frames(rng, index=0, shape=(4, 3, 2))).status == "recorded"
        reply = ask(client, volume_frames(rng, index=1, shape=(4, 3, 3)))
        assert isinstance(reply, Reject)
        assert (reply.field, reply.run_id, reply.index) == ("header.shape", "run1", 1)
        assert "[4, 3, 2]" in reply.reason and "new run" in reply.reason
        assert ask(client, volume_frames(rng, index=1, shape=(4, 3, 2))).status == "recorded"
        assert rx.stats.rejected == 1
        assert sorted(rx.record.runs["run1"].received) == [0, 1]


def test_receiver_dtype_change_rejected(rng, tmp_path, endpoint, client, serving):
    with serving(tmp_path / "session", endpoint):
        assert ask(client, volume_frames(rng, index=0, dtype="<i2")).status == "recorded"
        reply = ask(client, volume_frames(rng, index=1, dtype=">i2"))
        assert isinstance(reply, Reject) and reply.field == "header.dtype"
        assert "<i2" in reply.reason and ">i2" in reply.reason


def test_receiver_index_past_run_length_rejected(rng, tmp_path, endpoint, client, serving):
    with serving(tmp_path / "session", endpoint):
        ack = ask(client, encode(RunStart("run1", 1.5, n_volumes=3, t_sent=1.0)))
        assert (ack.of, ack.status) == ("run_start", "recorded")
        reply = ask(client, volume_frames(rng, index=3))
        assert isinstance(reply, Reject) and reply.field == "header.index"
        assert "3 volumes" in reply.reason


def test_receiver_first_volume_past_own_n_volumes_rejected(rng, tmp_path, endpoint, client, serving):
    with serving(tmp_path / "session", endpoint):
        reply = ask(client, volume_frames(rng, index=7, n_volumes=5))
    assert isinstance(reply, Reject) and reply.field == "header.index"


def test_receiver_refuses_ack_messages(tmp_path, endpoint, client, serving):
    with serving(tmp_path / "session", endpoint) as rx:
        reply = ask(client, encode(Ack(of="volume", run_id="run1", index=0, status="recorded")))
        assert isinstance(reply, Reject) and reply.field == "header.type" and reply.of == "ack"
        assert rx.stats.rejected == 1


def test_receiver_run_end_reports_gaps(rng, tmp_path, endpoint, client, serving):
    out = tmp_path / "session"
    with serving(out, endpoint):
        for i in (0, 2):
            assert ask(client, volume_frames(rng, index=i)).status == "recorded"
        ack = ask(client, encode(RunEnd("run1", 4, t_sent=1.0)))
        assert (ack.of, ack.status) == ("run_end", "recorded")
    summary = json.loads((out / "runs" / "run1" / "summary.json").read_text())
    assert summary["missing"] == [1, 3] and summary["complete"] is False and summary["ended"] is True


@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_receiver_non_loopback_bind_refused(tmp_path, endpoint, host):
    port = endpoint.rsplit(":", 1)[1]
    with pytest.raises(TransportError) as e:
        Receiver(tmp_path / "session", f"tcp://{host}:{port}")
    assert "--insecure" in str(e.value) and "127.0.0.1" in str(e.value)


def test_receiver_non_loopback_bind_insecure_allowed(tmp_path, endpoint):
    port = endpoint.rsplit(":", 1)[1]
    rx = Receiver(tmp_path / "session", f"tcp://0.0.0.0:{port}", insecure=True)
    try:
        assert rx.endpoint == f"tcp://0.0.0.0:{port}"
    finally:
        rx.close()


def test_the_idle_hook_runs_between_messages_and_its_failure_does_not_stop_serving(tmp_path, endpoint, client):
    import threading
    import time

    calls = []

    def idle():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("a hook that fails once")

    stop = threading.Event()
    with Receiver(str(tmp_path / "rec"), endpoint) as rx:
        t = threading.Thread(target=rx.serve, args=(stop,), kwargs={"poll_ms": 20, "idle": idle})
        t.start()
        time.sleep(0.5)
        client.send_multipart(encode(Heartbeat(t_sent=time.time())))  # still served after the failure
        assert client.poll(5000)
        reply = decode(client.recv_multipart())
        stop.set()
        t.join(5)
    assert isinstance(reply, Ack) and not t.is_alive()
    assert len(calls) >= 10 and max(np.diff(calls)) < 0.5  # every wake-up, at least every poll_ms (+ slack)


def test_receiver_refuses_other_data_under_a_recorded_index_and_keeps_it(rng, tmp_path, endpoint, client, serving):
    """A resend is the same bytes (a duplicate); other bytes under an index already recorded are a sender's
    numbering gone wrong: refused (naming the payload), the first kept, the second in rejected.log."""
    out = tmp_path / "session"
    first, other = volume_frames(rng, index=1), volume_frames(rng, index=1)
    with serving(out, endpoint) as rx:
        assert ask(client, first).status == "recorded"
        assert ask(client, first).status == "duplicate"
        reply = ask(client, other)
        assert isinstance(reply, Reject) and (reply.field, reply.index) == ("payload", 1)
        assert "recorded already with other data" in reply.reason and "numbering" in reply.reason
        assert rx.stats.duplicates == 1 and rx.stats.rejected == 1
        kept = rx.record.runs["run1"].volume(1)
    assert kept.tobytes(order="A") == first[1]
    rejected, _ = scan_records(out / "rejected.log", payloads=True)
    assert [r.header["field"] for r in rejected] == ["payload"] and other[1] in bytes(rejected[0].payload)


def test_receiver_holds_a_run_to_its_start_and_its_end(rng, tmp_path, endpoint, client, serving):
    """run_start and run_end sent again are duplicates; one that contradicts the run's record (another
    length, shape or dtype than its volumes, or than the start before it) is refused, naming the field."""
    with serving(tmp_path / "session", endpoint) as rx:
        start = encode(RunStart("run1", 1.5, n_volumes=10, shape=(4, 3, 2), dtype="<i2", t_sent=1.0))
        assert ask(client, start).status == "recorded"
        assert ask(client, start).status == "duplicate"
        again = ask(client, encode(RunStart("run1", 1.5, n_volumes=2, shape=(4, 3, 2), dtype="<i2", t_sent=1.0)))
        assert isinstance(again, Reject) and again.field == "header.n_volumes" and "new run id" in again.reason
        wrong = ask(client, volume_frames(rng, index=0, dtype="<f4"))  # not what the start announced
        assert isinstance(wrong, Reject) and wrong.field == "header.dtype" and "<i2" in wrong.reason
        assert ask(client, volume_frames(rng, index=3)).status == "recorded"
        short = ask(client, encode(RunEnd("run1", 3, t_sent=2.0)))
        assert isinstance(short, Reject) and short.field == "header.n_volumes"
        assert ask(client, encode(RunEnd("run1", 10, t_sent=2.0))).status == "recorded"
        assert ask(client, encode(RunEnd("run1", 10, t_sent=2.0))).status == "duplicate"
        # a run whose volumes came before its start: the start must fit them
        assert ask(client, volume_frames(rng, index=5, run_id="run2")).status == "recorded"
        late = ask(client, encode(RunStart("run2", 1.5, n_volumes=4, t_sent=3.0)))
        assert isinstance(late, Reject) and late.field == "header.n_volumes" and "index 5" in late.reason
        shape = ask(client, encode(RunStart("run2", 1.5, shape=(4, 3, 3), t_sent=3.0)))
        assert isinstance(shape, Reject) and shape.field == "header.shape"
        assert ask(client, encode(RunStart("run2", 1.5, n_volumes=6, t_sent=3.0))).status == "recorded"
        assert rx.record.runs["run1"].n_volumes == 10 and rx.record.runs["run2"].n_volumes == 6


def test_receiver_refuses_a_change_of_memory_order_within_a_run(rng, tmp_path, endpoint, client, serving):
    data = rng.integers(-1000, 1000, size=(4, 3, 2)).astype("<i2")
    f_order = encode(VolumeMessage("run1", 0, np.asfortranarray(data), AFFINE, 1.5, t_acquired=1.0, t_sent=1.0))
    c_order = encode(VolumeMessage("run1", 1, np.ascontiguousarray(data), AFFINE, 1.5, t_acquired=1.0, t_sent=1.0))
    with serving(tmp_path / "session", endpoint):
        assert ask(client, f_order).status == "recorded"
        reply = ask(client, c_order)
    assert isinstance(reply, Reject) and reply.field == "header.order" and "one memory order" in reply.reason


def test_a_run_end_is_reported_once_and_only_for_a_run_that_had_volumes(rng, tmp_path, endpoint, client, serving):
    """What `b2m session --runs N` counts: a run_end sent again, a run_end of a run no volume came for, and
    the run completed later by its missing volume report nothing more."""
    gaps, complete = [], []
    with serving(tmp_path / "session", endpoint, on_run_gaps=lambda r, m: gaps.append((r, list(m))),
                 on_run_complete=lambda r, n: complete.append(r)) as rx:
        assert ask(client, encode(RunEnd("typo", 3, t_sent=1.0))).status == "recorded"
        for i in (0, 2):
            assert ask(client, volume_frames(rng, index=i)).status == "recorded"
        assert ask(client, encode(RunEnd("run1", 3, t_sent=1.0))).status == "recorded"
        assert ask(client, encode(RunEnd("run1", 3, t_sent=1.0))).status == "duplicate"
        assert ask(client, volume_frames(rng, index=1)).status == "recorded"
        rx.wait_exports(30)
    assert gaps == [("run1", [1])] and complete == ["run1"]


def test_a_second_receiver_on_a_folder_in_use_is_refused(rng, tmp_path, endpoint, client, serving, b2m_proc):
    """Two writers on one folder would overwrite each other's acked volumes: `b2m receive` (or `b2m session`)
    on a folder a running receiver holds stops at once, naming the process, and the first goes on."""
    import os
    import socket

    out = tmp_path / "session"
    with serving(out, endpoint) as rx:
        assert ask(client, volume_frames(rng, index=0)).status == "recorded"
        with socket.socket() as s:  # a free port for the second one (it must not fail on the port)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        second = b2m_proc("receive", "--out", out, "--bind", f"tcp://127.0.0.1:{port}", name="second")
        assert second.wait(60) == 2
        assert f"is being written by PID {os.getpid()}" in second.stderr() and "another --out" in second.stderr()
        assert ask(client, volume_frames(rng, index=1)).status == "recorded"
        assert sorted(rx.record.runs["run1"].received) == [0, 1]
