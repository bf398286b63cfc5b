"""Results out: Pyneal-compatible TCP server and the per-TR PUB socket, over real sockets."""

from __future__ import annotations

import json
import socket

import numpy as np
import zmq

from protocols.wire import Result, decode
from realtime.results import PynealResultsServer, ResultsPublisher, pyneal_payload


def _ask(port: int, text: str) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(text.encode("ascii"))
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break  # the server closes after one reply, as Pyneal's does
            data += chunk
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return json.loads(data)


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
