"""Results out: Pyneal-compatible TCP server and the per-TR PUB socket, over real sockets."""

from __future__ import annotations

import json
import socket

import numpy as np
import zmq
from conftest import recv_until_closed

from protocols.wire import Result, decode
from realtime.results import PynealResultsServer, ResultsPublisher, pyneal_payload


def _ask(port: int, text: str) -> dict:
    """Pyneal's own Python client: the request without a newline; a header line with the reply's length in
    bytes, then exactly that many bytes of JSON; then the server closes, as Pyneal's does."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(text.encode("ascii"))
        data = recv_until_closed(s)
    header, body = data.split(b"\n", 1)
    assert int(header) == len(body), data[:200]
    return json.loads(body)


def test_pyneal_client_gets_past_results_and_not_future_ones(rng):
    srv = PynealResultsServer(port=0)
    try:
        for i in range(5):
            r = Result(run_id="run1", index=i, action="keep", clip=f"c{i}", embedding=rng.standard_normal(4),
                       topk=[(f"c{i}", 0.9)])
            srv.store(i, pyneal_payload(r))
        got = _ask(srv.port, "3")
        assert got["foundResults"] is True and got["clip"] == "c3" and got["topClip"] == "c3"
        assert len(got["embedding"]) == 4
        assert _ask(srv.port, "7") == {"foundResults": False}
        bad = _ask(srv.port, "three")
        assert bad["foundResults"] is False and "ASCII" in bad["error"]
    finally:
        srv.close()


def test_results_publisher_sends_each_result(endpoint, rng):
    pub = ResultsPublisher(endpoint)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.endpoint)
    try:
        # PUB/SUB drops messages until the subscription has propagated: publish until one arrives
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        got = None
        for i in range(200):
            pub.publish(Result(run_id="run1", index=i, action="keep"))
            if poller.poll(20):
                got = decode(sub.recv_multipart())
                break
        assert isinstance(got, Result) and got.run_id == "run1"
    finally:
        sub.close(0)
        pub.close()


def _first_result(pub, sub, tries=100):
    """Publish until the subscriber gets one (PUB/SUB drops what precedes the subscription), or None."""
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    for i in range(tries):
        pub.publish(Result(run_id="run1", index=i, action="keep"))
        if poller.poll(20):
            return decode(sub.recv_multipart())
    return None


def test_curve_results_reach_only_listed_subscribers(endpoint, tmp_path):
    from realtime.transport import generate_keys, load_curve_client, load_curve_server

    keys = tmp_path / "keys"
    generate_keys(keys, "receiver")
    listed_pub, _ = generate_keys(keys, "stimulus_pc")
    generate_keys(keys, "stranger")
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "stimulus_pc.key").write_bytes(open(listed_pub, "rb").read())
    pub = ResultsPublisher(endpoint, curve=load_curve_server(keys / "receiver.key_secret", clients))
    ctx = zmq.Context()
    socks = {}
    try:
        for name in ("stimulus_pc", "stranger", "plain"):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            if name != "plain":
                c = load_curve_client(keys / f"{name}.key_secret", keys / "receiver.key")
                s.curve_secretkey, s.curve_publickey, s.curve_serverkey = c.secret, c.public, c.server_public
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(pub.endpoint)
            socks[name] = s
        got = _first_result(pub, socks["stimulus_pc"])
        assert isinstance(got, Result) and got.run_id == "run1"
        for name in ("stranger", "plain"):  # same publisher, published to all along: nothing arrives
            assert _first_result(pub, socks[name], tries=25) is None
    finally:
        for s in socks.values():
            s.close(0)
        ctx.term()
        pub.close()
