"""Transport benchmark (not a test): codec cost, one-way messages/s and round-trip latency.

    .venv/bin/python bench/transport.py [--seconds 2] [--window 4096] [--batch 64] [--json]

Two ZmqTransports on loopback, first in one process (one thread plays both nodes, so the
numbers include both sides' CPU), then in two processes (this one sends; a child process
started from this file with --serve echoes). Throughput is windowed like Raft's pipelining:
at most --window messages unacknowledged; the receiver acknowledges once per drain() with a
HeartbeatResponse carrying its running count, so nothing is dropped at the high-water mark.
Round trip: one Heartbeat, one HeartbeatResponse, each side blocked in zmq.Poller.poll.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.window import Latencies  # noqa: E402
from registry.naming import node_id_for  # noqa: E402
from registry.raft import AppendEntries, Entry, Heartbeat, HeartbeatResponse, Index, Term, TimeoutNow  # noqa: E402
from registry.transport import Wire, ZmqTransport, decode, encode  # noqa: E402

HOST = "127.0.0.1"
SENDER, ECHO = "bench-a", "bench-b"
A, B = node_id_for(SENDER), node_id_for(ECHO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def transport(name: str, port: int, peer: str, peer_port: int) -> ZmqTransport:
    return ZmqTransport(node_id=node_id_for(name), node_name=name, bind=(HOST, port), peers={peer: (HOST, peer_port)})


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(A, B, Term(3), Index(1000), seq)


def append(entries: int, payload: int) -> AppendEntries:
    batch = tuple(Entry(Term(3), Index(1001 + k), data=b"p" * payload) for k in range(entries))
    return AppendEntries(A, B, Term(3), Index(1000), Term(3), batch, Index(1000))


class Echo:
    """The receiving node: counts what it drains and acknowledges once per drain()."""

    def __init__(self, t: ZmqTransport) -> None:
        self.t, self.count, self.stopped = t, 0, False
        self.poller = zmq.Poller()
        self.poller.register(t.socket, zmq.POLLIN)

    def pump(self, timeout_ms: int = 0) -> None:
        if timeout_ms and not self.poller.poll(timeout_ms):
            return
        got = self.t.drain()
        if got:
            self.count += len(got)
            self.stopped = any(isinstance(m, TimeoutNow) for m in got)
            self.t.send([HeartbeatResponse(B, A, Term(3), self.count)])


def serve(port: int, peer_port: int) -> None:
    """Child process: echo until told to stop (TimeoutNow) or 60 s pass."""
    with transport(ECHO, port, SENDER, peer_port) as t:
        echo, deadline = Echo(t), time.monotonic() + 60
        print("ready", flush=True)
        while not echo.stopped and time.monotonic() < deadline:
            echo.pump(timeout_ms=100)


def wait_link(a: ZmqTransport, pump: Callable[[], None]) -> int:
    """Probe until the echo answers (IMMEDIATE drops what is sent before the link is up)."""
    poller = zmq.Poller()
    poller.register(a.socket, zmq.POLLIN)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        a.send([heartbeat(0)])
        pump()
        if poller.poll(20):
            acks = [m.read_seq for m in a.drain() if isinstance(m, HeartbeatResponse)]
            if acks:
                return max(acks)
    raise SystemExit("the echo never answered")


def one_way(a: ZmqTransport, pump: Callable[[], None], message: Wire, seconds: float, window: int,
            batch: int) -> dict[str, float]:
    base = wait_link(a, pump)
    poller = zmq.Poller()
    poller.register(a.socket, zmq.POLLIN)
    before = a.stats
    acked = 0
    sent = 0
    frame_bytes = len(encode(message))
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if sent - acked < window:
            n = min(batch, window - (sent - acked))
            a.send([message] * n)
            sent += n
        pump()
        if sent - acked >= window:
            poller.poll(100)
        for m in a.drain():
            if isinstance(m, HeartbeatResponse):
                acked = max(acked, m.read_seq - base)
    while acked < sent and time.perf_counter() - start < seconds + 5:  # let the window empty
        pump()
        poller.poll(10)
        for m in a.drain():
            if isinstance(m, HeartbeatResponse):
                acked = max(acked, m.read_seq - base)
    elapsed = time.perf_counter() - start
    dropped = a.stats.dropped_full - before.dropped_full
    return {"messages_per_s": acked / elapsed, "MB_per_s": acked * frame_bytes / elapsed / 1e6,
            "frame_bytes": frame_bytes, "dropped": dropped}


def round_trip(a: ZmqTransport, pump: Callable[[], None], seconds: float) -> dict[str, float]:
    base = wait_link(a, pump)
    poller = zmq.Poller()
    poller.register(a.socket, zmq.POLLIN)
    latencies: list[float] = []
    start = time.perf_counter()
    seq = 0
    while time.perf_counter() - start < seconds:
        seq += 1
        t0 = time.perf_counter()
        a.send([heartbeat(seq)])
        while True:
            pump()
            if poller.poll(1000):
                acks = [m.read_seq for m in a.drain() if isinstance(m, HeartbeatResponse)]
                if acks and max(acks) - base >= seq:
                    break
        latencies.append(time.perf_counter() - t0)
    percentiles = Latencies(latencies)
    return {"round_trips": len(latencies), "p50_us": 1000 * percentiles.pct(50),  # type: ignore[operator]
            "p99_us": 1000 * percentiles.pct(99)}  # type: ignore[operator]


def codec_cost(message: Wire, rounds: int = 50_000) -> dict[str, float]:
    data = encode(message)
    t0 = time.perf_counter()
    for _ in range(rounds):
        encode(message)
    t1 = time.perf_counter()
    for _ in range(rounds):
        decode(data)
    t2 = time.perf_counter()
    return {"frame_bytes": len(data), "encode_us": 1e6 * (t1 - t0) / rounds, "decode_us": 1e6 * (t2 - t1) / rounds}


def run(args: argparse.Namespace) -> dict[str, object]:
    small, big = heartbeat(1), append(args.entries, args.payload)
    results: dict[str, object] = {
        "codec": {"heartbeat": codec_cost(small), f"append_{args.entries}x{args.payload}B": codec_cost(big)},
    }
    # One process, one thread: both nodes' CPU in one loop.
    pa, pb = free_port(), free_port()
    with transport(SENDER, pa, ECHO, pb) as a, transport(ECHO, pb, SENDER, pa) as b:
        echo = Echo(b)
        results["in_process"] = {
            "heartbeat": one_way(a, echo.pump, small, args.seconds, args.window, args.batch),
            "append": one_way(a, echo.pump, big, args.seconds, args.window, args.batch),
            "round_trip": round_trip(a, lambda: echo.pump(timeout_ms=1000), args.seconds),
        }
    # Two processes: this one sends, the child echoes.
    pa, pb = free_port(), free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(pb), str(pa)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with transport(SENDER, pa, ECHO, pb) as a:
            def nothing() -> None:
                pass

            results["two_processes"] = {
                "heartbeat": one_way(a, nothing, small, args.seconds, args.window, args.batch),
                "append": one_way(a, nothing, big, args.seconds, args.window, args.batch),
                "round_trip": round_trip(a, nothing, args.seconds),
            }
            a.send([TimeoutNow(A, B, Term(3))])
            child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--window", type=int, default=4096, help="unacknowledged messages at most")
    parser.add_argument("--batch", type=int, default=64, help="messages per send() call")
    parser.add_argument("--entries", type=int, default=10, help="entries per AppendEntries")
    parser.add_argument("--payload", type=int, default=128, help="bytes per entry")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--serve", nargs=2, type=int, metavar=("PORT", "PEER_PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    codec = results["codec"]
    print(f"{'codec':<28}{'bytes':>8}{'encode us':>12}{'decode us':>12}")
    for name, r in codec.items():  # type: ignore[attr-defined]
        print(f"{name:<28}{r['frame_bytes']:>8}{r['encode_us']:>12.2f}{r['decode_us']:>12.2f}")
    print(f"\n{'one-way (window ' + str(args.window) + ')':<28}{'bytes':>8}{'msgs/s':>12}{'MB/s':>10}{'dropped':>9}")
    for where in ("in_process", "two_processes"):
        for kind in ("heartbeat", "append"):
            r = results[where][kind]  # type: ignore[index]
            print(f"{where + ' ' + kind:<28}{r['frame_bytes']:>8}{r['messages_per_s']:>12,.0f}{r['MB_per_s']:>10.1f}"
                  f"{r['dropped']:>9}")
    print(f"\n{'round trip':<28}{'count':>8}{'p50 us':>12}{'p99 us':>10}")
    for where in ("in_process", "two_processes"):
        r = results[where]["round_trip"]  # type: ignore[index]
        print(f"{where:<28}{r['round_trips']:>8}{r['p50_us']:>12.0f}{r['p99_us']:>10.0f}")
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
