"""ReliableSender against a real Receiver over loopback: nothing is lost when
either side starts late or restarts, and nothing is recorded twice."""

from __future__ import annotations

import time

import numpy as np
import pytest

from protocols.record import scan_records
from protocols.session import SessionRecord, load_run
from protocols.wire import RunEnd, RunStart, VolumeMessage
from realtime.sender import ReliableSender

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
SHAPE = (5, 4, 3)
RESEND_S = 0.2  # short, so a lost message comes back quickly
DRAIN_S = 20.0  # generous upper bound; the drains below finish in well under a second


def _volumes(rng, n: int) -> list[np.ndarray]:
    return [rng.integers(-32768, 32767, size=SHAPE, dtype=np.int16) for _ in range(n)]


def _msg(vols, i, run_id="run1") -> VolumeMessage:
    return VolumeMessage(run_id, i, vols[i], AFFINE, 1.5, n_volumes=len(vols), t_acquired=1.7e9 + i)


def _assert_recorded_once(out, vols, run_id="run1") -> None:
    """Every volume present exactly once in the session record, bit-exact."""
    records, _ = scan_records(out / "runs" / run_id / "volumes.log", payloads=False)
    indices = [r.header["index"] for r in records if r.kind == "volume"]
    assert sorted(indices) == list(range(len(vols)))  # each exactly once
    rec = SessionRecord(out)
    try:
        run = rec.runs[run_id]
        assert run.complete and run.missing() == []
    finally:
        rec.close()
    data, geometry, _ = load_run(out, run_id)
    assert data.dtype == np.int16 and np.array_equal(data, np.stack(vols, axis=-1))
    assert np.array_equal(geometry["affine"], AFFINE)


def test_reliable_sender_resends_on_connect(rng, tmp_path, endpoint, serving):
    out = tmp_path / "session"
    vols = _volumes(rng, 5)
    with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx:
        for i in range(5):
            tx.send(_msg(vols, i))
        # No receiver yet: every volume is kept, none counted as sent.
        assert len(tx.pending) == 5 and tx.stats.sent == 0 and not tx.connected
        with serving(out, endpoint, export=False) as rx:
            assert tx.drain(DRAIN_S), f"unacked: {sorted(tx.pending)}"
            assert tx.stats.acked == 5 and tx.stats.sent == 5
            assert tx.stats.rejected == [] and tx.connected
            assert rx.stats.recorded == 5
    _assert_recorded_once(out, vols)


def test_reliable_sender_survives_receiver_restart(rng, tmp_path, endpoint, serving):
    out = tmp_path / "session"
    vols = _volumes(rng, 10)
    with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx:
        rx1 = serving(out, endpoint, export=False)
        tx.send(RunStart("run1", 1.5, n_volumes=10, shape=SHAPE, dtype="<i2", affine=AFFINE))
        for i in range(5):
            tx.send(_msg(vols, i))
        assert tx.drain(DRAIN_S)
        # The receiver stops reading mid-run; the next volumes reach its socket
        # but are never recorded or acked, and are lost when it goes down.
        rx1.stop()
        for i in range(5, 10):
            tx.send(_msg(vols, i))
        assert len(tx.pending) == 5 and tx.stats.sent == 11
        rx1.close()

        with serving(out, endpoint) as rx2:  # same folder, same endpoint
            tx.send(RunEnd("run1", 10))
            assert tx.drain(DRAIN_S), f"unacked: {sorted(tx.pending)}"
            assert tx.stats.resent >= 5  # what the first receiver dropped went out again
            assert tx.stats.acked == 12 and tx.stats.rejected == []
            assert rx2.stats.recorded == 5 and rx2.stats.rejected == 0
            rx2.wait_exports(timeout_s=DRAIN_S)
        assert (out / "nifti" / "run1.nii").exists()  # the run completed on the new receiver
    _assert_recorded_once(out, vols)


def test_reliable_sender_resend_to_recorded_session_is_duplicate(rng, tmp_path, endpoint, serving):
    out = tmp_path / "session"
    vols = _volumes(rng, 4)
    with serving(out, endpoint, export=False) as rx:
        with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx:
            for i in range(4):
                tx.send(_msg(vols, i))
            assert tx.drain(DRAIN_S) and tx.stats.duplicates == 0
        # A restarted sender that does not know what was acked sends it all again.
        with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx2:
            for i in range(4):
                tx2.send(_msg(vols, i))
            assert tx2.drain(DRAIN_S)
            assert tx2.stats.acked == 4 and tx2.stats.duplicates == 4
        assert rx.stats.recorded == 4 and rx.stats.duplicates >= 4
    _assert_recorded_once(out, vols)


def test_reliable_sender_drops_rejected_message(rng, tmp_path, endpoint, serving):
    out = tmp_path / "session"
    vols = _volumes(rng, 2)
    bad = VolumeMessage("run1", 1, vols[1][:, :, :2], AFFINE, 1.5, n_volumes=2)  # shape differs
    with serving(out, endpoint, export=False):
        with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx:
            tx.send(_msg(vols, 0))
            tx.send(bad)
            assert tx.drain(DRAIN_S)  # a rejected message is not retried forever
            assert tx.stats.acked == 1
            ((key, field, reason),) = tx.stats.rejected
            assert key == ("volume", "run1", 1) and field == "header.shape" and reason


def test_a_held_message_never_overtakes_an_earlier_unsent_one(rng, endpoint):
    """No receiver yet: both volumes are held. The first was just tried again (its resend is not due); the
    second was never tried, so its timeout looks long past. A resend pass must still try nothing after the
    first: it once sent the second first, which set the run's geometry, and the first was refused (CI)."""
    vols = _volumes(rng, 2)
    with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx:  # nothing listens at endpoint
        tx.send(_msg(vols, 0))
        tx.send(_msg(vols, 1))
        first, second = tx.pending.values()
        assert first.held and second.held and not first.sends and not second.sends
        first.last_sent = time.monotonic()  # as if tried a moment ago
        tried = second.last_sent
        tx._resend_due()
        assert second.last_sent == tried  # not tried: it waits for the first


def test_reliable_sender_drops_rejected_oversized_run_start(tmp_path, endpoint, serving):
    big = RunStart("run1", 1.5, meta={"nifti_header": bytes(70_000)})  # e.g. a header with extensions
    with serving(tmp_path / "session", endpoint, export=False):
        with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx:
            tx.send(big)
            drained = tx.drain(2.0)
            assert [f for _, f, _ in tx.stats.rejected][:1] == ["header"]
            assert drained


def test_volumes_held_before_the_link_is_up_keep_their_order(rng, tmp_path, endpoint, serving):
    # Volumes sent while no receiver listens are held; once it is up, volumes sent before the sender has
    # polled must not overtake them (a session decodes in arrival order).
    import time

    out = tmp_path / "session"
    vols = _volumes(rng, 40)
    with ReliableSender(endpoint, resend_timeout_s=5.0) as tx:
        for i in range(10):
            tx.send(_msg(vols, i))
        with serving(out, endpoint, export=False):
            time.sleep(0.3)  # the handshake completes; the sender has not polled yet
            for i in range(10, 40):
                tx.send(_msg(vols, i))  # never polls in between, as a replay at --speed max
            assert tx.drain(DRAIN_S)
    records, _ = scan_records(out / "runs" / "run1" / "volumes.log", payloads=False)
    assert [r.header["index"] for r in records if r.kind == "volume"] == list(range(40))


def test_wake_descriptor_wakes_waits_but_not_ack_waits(endpoint, rng):
    """A readable wake descriptor (the watcher's inotify) ends wait_until at once; drain, which waits for
    acks alone, ignores it instead of spinning on it while no receiver answers."""
    import os
    import time

    r, w = os.pipe()
    os.write(w, b"x")  # readable from now on, never read
    with ReliableSender(endpoint, resend_timeout_s=RESEND_S) as tx:
        tx.wake_on(r)
        assert tx.wait_until(time.monotonic() + 5.0) is True  # at once
        tx.send(_msg(_volumes(rng, 1), 0))  # no receiver: stays pending
        calls = []
        for poller in (tx._poller, tx._wake_poller):
            inner = poller.poll
            poller.poll = lambda timeout=None, inner=inner: calls.append(timeout) or inner(timeout)
        assert tx.drain(0.5) is False
        assert len(calls) < 20  # a handful of resend-timeout waits, not a spin
    os.close(r)
    os.close(w)
