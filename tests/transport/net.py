"""Loopback helpers for the ZeroMQ tests: free ports, transports, bounded waits.

Every wait polls with a timeout and has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import zmq

from registry.naming import node_id_for
from registry.raft import Heartbeat, Index, NodeId, Term
from registry.transport import TransportError, Wire, ZmqTransport

HOST = "127.0.0.1"
WAIT_S = 15.0  # the bound on any wait; a healthy loopback needs milliseconds (reconnects: <= 1 s)


def nid(name: str) -> NodeId:
    return node_id_for(name)


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (callers retry if someone takes it meanwhile)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def make(name: str, port: int, peers: Mapping[str, int], host: str = HOST, **kw: object) -> ZmqTransport:
    return ZmqTransport(node_id=nid(name), node_name=name, bind=(host, port),
                        peers={p: (host, pp) for p, pp in peers.items()}, **kw)  # type: ignore[arg-type]


def make_cluster(names: list[str], host: str = HOST, attempts: int = 5, **kw: object) -> dict[str, ZmqTransport]:
    """One transport per name, all peers of each other, on fresh loopback ports (retried on a race)."""
    for attempt in range(attempts):
        ports = {n: free_port(host) for n in names}
        made: dict[str, ZmqTransport] = {}
        try:
            for n in names:
                made[n] = make(n, ports[n], {p: ports[p] for p in names if p != n}, host, **kw)
            return made
        except TransportError:
            for t in made.values():
                t.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@contextmanager
def cluster(names: list[str], **kw: object) -> Iterator[dict[str, ZmqTransport]]:
    made = make_cluster(names, **kw)
    try:
        yield made
    finally:
        for t in made.values():
            t.close()


def receive(t: ZmqTransport, count: int, timeout_s: float = WAIT_S) -> list[Wire]:
    """Poll and drain `t` until `count` messages have arrived or the deadline passes."""
    got: list[Wire] = []
    poller = zmq.Poller()
    poller.register(t.socket, zmq.POLLIN)
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        got.extend(t.drain())
        left = deadline - time.monotonic()
        if len(got) >= count or left <= 0:
            break
        poller.poll(min(left, 0.05) * 1000)
    return got


def until(condition: Callable[[], bool], timeout_s: float = WAIT_S, step: Callable[[], object] | None = None,
          every_s: float = 0.02) -> bool:
    """Call `step` (if any) and test `condition` every `every_s` until true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if step is not None:
            step()
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)


def probe(source: str, target: str, seq: int = 0) -> Heartbeat:
    return Heartbeat(nid(source), nid(target), Term(1), Index(0), seq)


def connect(a: ZmqTransport, b: ZmqTransport, timeout_s: float = WAIT_S) -> float:
    """Send probes from a to b until one arrives; returns the seconds it took.

    With IMMEDIATE, a DEALER drops what is sent before its connection is up, so a fresh or
    reconnecting link needs this before a test may expect delivery."""
    start = time.monotonic()
    deadline = start + timeout_s
    while time.monotonic() < deadline:
        a.send([probe(a.node_name, b.node_name, seq=7)])
        if any(m == probe(a.node_name, b.node_name, seq=7) for m in receive(b, 1, timeout_s=0.05)):
            b.drain()  # discard extra probes
            return time.monotonic() - start
    raise AssertionError(f"{a.node_name} -> {b.node_name}: no message got through within {timeout_s} s")
