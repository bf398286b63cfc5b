"""CURVE on the scanner link, over real loopback sockets: the keys ``b2m keys`` writes, a
receiver that admits only listed scanners, senders with a wrong or no key kept out (and
the receiver still serving), and the command-line round trip as real processes."""

from __future__ import annotations

import json
import os
import signal

import nibabel as nib
import numpy as np
import pytest
import zmq

from protocols.wire import VolumeMessage
from realtime.sender import ReliableSender
from realtime.transport import (TransportError, check_exposure, generate_keys, load_curve_client,
                                load_curve_server)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture
def keys(tmp_path):
    """A receiver key pair, two scanner key pairs, and a clients folder holding only scanner A's public key."""
    d = tmp_path / "keys"
    out = {name: generate_keys(d, name) for name in ("receiver", "scanner_a", "scanner_b")}
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "scanner_a.key").write_bytes(open(out["scanner_a"][0], "rb").read())
    out["clients"] = str(clients)
    return out


def _vol(rng, i) -> VolumeMessage:
    return VolumeMessage("run1", i, rng.integers(-3000, 3000, (4, 3, 2), dtype=np.int16), AFFINE, 1.5,
                         n_volumes=4)


def test_generated_keys_load_and_are_private(keys):
    pub, sec = keys["receiver"]
    assert oct(os.stat(sec).st_mode & 0o777) == "0o600"
    server = load_curve_server(sec, keys["clients"])
    client = load_curve_client(keys["scanner_a"][1], pub)
    assert client.server_public == server.public and len(server.secret) == 40
    assert zmq.utils.z85.decode(server.public) != zmq.utils.z85.decode(client.public)


def test_key_file_errors_name_the_file_and_the_fix(keys, tmp_path):
    with pytest.raises(TransportError, match="no such key file.*b2m keys"):
        load_curve_server(tmp_path / "missing.key_secret")
    with pytest.raises(TransportError, match=r"receiver\.key: has no secret key"):
        load_curve_server(keys["receiver"][0])  # the public file given where the secret one belongs
    junk = tmp_path / "junk.key_secret"
    junk.write_text("not a certificate\n")
    with pytest.raises(TransportError, match="junk.key_secret"):
        load_curve_client(junk, keys["receiver"][0])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TransportError, match="no sender public keys"):
        load_curve_server(keys["receiver"][1], empty)
    with pytest.raises(TransportError, match="already exists"):
        generate_keys(tmp_path / "keys", "receiver")  # never overwrite a key others hold


def test_preflight_says_how_the_link_is_protected(keys):
    from realtime.session.preflight import _bind_router

    listed = load_curve_server(keys["receiver"][1], keys["clients"])
    assert "only the 1 sender key(s)" in _bind_router("tcp://127.0.0.1:*", False, listed)[0]
    assert "any sender" in _bind_router("tcp://127.0.0.1:*", False, load_curve_server(keys["receiver"][1]))[0]
    assert _bind_router("tcp://127.0.0.1:*", False, None)[0].endswith("unencrypted")


def test_curve_keys_allow_a_network_bind_without_insecure(keys):
    with pytest.raises(TransportError, match="no CURVE keys"):
        check_exposure("tcp://0.0.0.0:5555", curve=False, insecure=False)
    check_exposure("tcp://0.0.0.0:5555", curve=True, insecure=False)  # no exception


def test_listed_scanner_is_acked_others_are_kept_out(rng, keys, tmp_path, endpoint, serving):
    server = load_curve_server(keys["receiver"][1], keys["clients"])
    good = load_curve_client(keys["scanner_a"][1], keys["receiver"][0])
    unlisted = load_curve_client(keys["scanner_b"][1], keys["receiver"][0])
    with serving(tmp_path / "session", endpoint, export=False, curve=server) as rx:
        # a scanner whose key is not in the clients folder, and one with no CURVE at all
        with ReliableSender(endpoint, resend_timeout_s=0.2, curve=unlisted) as bad, \
                ReliableSender(endpoint, resend_timeout_s=0.2) as plain:
            bad.send(_vol(rng, 0))
            plain.send(_vol(rng, 1))
            assert not bad.drain(1.5) and not plain.drain(0.5)
            assert bad.stats.acked == 0 and plain.stats.acked == 0 and not bad.connected
            assert bad.stats.auth_failures >= 1  # the refusal is seen, and logged, on the scanner side
            assert rx.stats.recorded == 0
        # the listed scanner goes through on the same receiver, which kept serving
        sent = [_vol(rng, i) for i in range(4)]
        with ReliableSender(endpoint, resend_timeout_s=0.2, curve=good) as tx:
            for m in sent:
                tx.send(m)
            assert tx.drain(20.0), f"unacked: {sorted(tx.pending)}"
            assert tx.stats.acked == 4
        assert rx.stats.recorded == 4


def test_wrong_receiver_key_is_refused(rng, keys, tmp_path, endpoint, serving):
    server = load_curve_server(keys["receiver"][1])  # no clients folder: any scanner with the server key
    impostor = load_curve_client(keys["scanner_a"][1], keys["scanner_b"][0])  # not the receiver's key
    right = load_curve_client(keys["scanner_b"][1], keys["receiver"][0])
    with serving(tmp_path / "session", endpoint, export=False, curve=server) as rx:
        with ReliableSender(endpoint, resend_timeout_s=0.2, curve=impostor) as tx:
            tx.send(_vol(rng, 0))
            assert not tx.drain(1.5) and tx.stats.acked == 0
        with ReliableSender(endpoint, resend_timeout_s=0.2, curve=right) as tx:
            tx.send(_vol(rng, 0))
            assert tx.drain(20.0)
        assert rx.stats.recorded == 1


def test_cli_replay_over_curve_is_bit_exact(b2m_proc, functional_nii, endpoint, tmp_path):
    kdir = tmp_path / "k"
    for name in ("receiver", "scanner"):
        p = b2m_proc("keys", name, "--out", kdir, name=f"keys-{name}")
        assert p.wait() == 0, p.stderr()
        assert p.stdout().startswith("public\t")
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "scanner.key").write_bytes((kdir / "scanner.key").read_bytes())
    out = tmp_path / "session"
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, "--curve-secret", kdir / "receiver.key_secret",
                  "--curve-clients", clients, name="receive")
    rx.wait_for("ready")
    assert "CURVE-encrypted; only the 1 sender key(s)" in rx.stderr()
    tx = b2m_proc("scanner", "replay", functional_nii, "--connect", endpoint, "--speed", "max", "--run-id", "run1",
                  "--curve-secret", kdir / "scanner.key_secret", "--curve-server-key", kdir / "receiver.key",
                  "--quiet", name="replay")
    assert tx.wait() == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["all_acked"] and summary["sent"] == nib.load(functional_nii).shape[3]
    rx.wait_for("run1\t", stream="stdout")
    a, b = nib.load(functional_nii), nib.load(out / "nifti" / "run1.nii")
    assert np.array_equal(np.asanyarray(a.dataobj.get_unscaled()), np.asanyarray(b.dataobj.get_unscaled()))
    rx.kill(signal.SIGTERM)
    assert rx.p.returncode == 0, rx.stderr()


def test_cli_refuses_a_bad_key_before_binding(b2m_proc, endpoint, tmp_path):
    rx = b2m_proc("receive", "--bind", endpoint, "--out", tmp_path / "s", "--curve-secret", tmp_path / "nope",
                  name="receive")
    assert rx.wait(30) == 2
    assert "no such key file" in rx.stderr()
    assert not (tmp_path / "s").exists()  # nothing was created for a session that cannot start
    rx2 = b2m_proc("receive", "--bind", endpoint, "--out", tmp_path / "s", "--curve-clients", tmp_path,
                   name="receive2")
    assert rx2.wait(30) == 2 and "--curve-clients needs --curve-secret" in rx2.stderr()
    tx = b2m_proc("scanner", "replay", tmp_path / "run.nii", "--curve-secret", tmp_path / "k", name="replay")
    assert tx.wait(30) == 2 and "go together" in tx.stderr()
