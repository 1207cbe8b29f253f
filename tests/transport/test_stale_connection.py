"""A peer's stale connection must not abort the node (issue 13, found by `make test-stress`).

libzmq 4.3.5 (bundled by pyzmq 27.3.0) asserts `!_io_error` (stream_engine_base.cpp:310) and
aborts the whole process when a ROUTER connection whose input is stopped is reset and its ZMTP
heartbeat timer then fires. Under ROUTER_HANDOVER that takes only a peer that reconnects with the
same identity while its old connection still carries a frame in flight, then resets the old one:
partitions do exactly that. The transport therefore sends no ZMTP heartbeats from its ROUTER.

The ROUTER lives in a child process so that an abort shows as the child's SIGABRT, not as the
end of the test run. The peer speaks ZMTP 3.0 over raw TCP, so that the test chooses when each
of its connections sends a frame and when it is reset (SO_LINGER 0).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import zmq

from registry.transport import encode
from registry.transport.zmq_transport import (
    HEARTBEAT_IVL_MS,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE_S,
    KEEPALIVE_INTVL_S,
)

from ..integration.cluster import LOAD_MARGIN_S
from .net import HOST, WAIT_S, free_port, make, probe, receive

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3  # stale connections left behind; each one alone aborted 5 runs out of 5 before the fix
# A stale connection's heartbeat timer fires within HEARTBEAT_IVL_MS of its reset; two intervals
# plus the load margin leave room for a busy machine.
AFTERMATH_S = 2 * HEARTBEAT_IVL_MS / 1000 + LOAD_MARGIN_S
CHILD_TIMEOUT_S = ROUNDS * 2 * WAIT_S + AFTERMATH_S + WAIT_S
# ZMTP 3.0: signature, version 3.0, the NULL mechanism, as-server 0, filler.
GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)


def _prop(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"the ROUTER closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def zmtp_dealer(port: int, identity: bytes) -> socket.socket:
    """A TCP connection that completes a ZMTP 3.0 NULL handshake as a DEALER with `identity`."""
    s = socket.create_connection((HOST, port), timeout=WAIT_S)
    ready = b"\x05READY" + _prop(b"Socket-Type", b"DEALER") + _prop(b"Identity", identity)
    s.sendall(GREETING + bytes([0x04, len(ready)]) + ready)
    _recv_exact(s, 64)  # the ROUTER's greeting
    _flags, size = _recv_exact(s, 2)  # its READY command
    _recv_exact(s, size)
    return s


def zmtp_frame(payload: bytes) -> bytes:
    assert len(payload) < 256, "a short frame only"
    return bytes([0x00, len(payload)]) + payload


def reset(s: socket.socket) -> None:
    """Close with an RST instead of a FIN, as a peer's kernel does for a connection it no longer knows."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def child() -> None:
    """Leave ROUNDS stale connections behind on a real transport's ROUTER, then outlive their timers.

    Prints one JSON line of what it observed; an abort kills the process before that."""
    seq = 0
    seen: dict[str, int] = {"handovers": 0, "late_frames_delivered": 0}
    with make("n1", free_port(), {"n2": free_port()}) as t:  # n2's own ROUTER is down: not needed
        port = t.address[1]

        def deliver(s: socket.socket) -> bool:
            nonlocal seq
            seq += 1
            s.sendall(zmtp_frame(encode(probe("n2", "n1", seq))))
            return receive(t, 1) == [probe("n2", "n1", seq)]

        old = zmtp_dealer(port, b"n2")
        assert deliver(old), "the first connection never got a frame through"
        for _ in range(ROUNDS):
            new = zmtp_dealer(port, b"n2")
            # Delivered through the new connection: the ROUTER handed it n2's identity, and the
            # old connection no longer has a pipe to the socket.
            seen["handovers"] += deliver(new)
            seq += 1
            old.sendall(zmtp_frame(encode(probe("n2", "n1", seq))))  # late: stops the old input
            time.sleep(0.05)
            reset(old)
            seen["late_frames_delivered"] += len(receive(t, 1, timeout_s=0.2))
            old = new
        end = time.monotonic() + AFTERMATH_S
        while time.monotonic() < end:
            seen["late_frames_delivered"] += len(receive(t, 1, timeout_s=0.1))
        seen["alive_after"] = deliver(old)
        old.close()
    print(json.dumps(seen), flush=True)


def test_a_stale_connection_reset_after_a_late_frame_does_not_abort_the_node() -> None:
    """A peer reconnects with its identity, sends one more frame on its old connection and resets
    it, ROUNDS times: the node outlives two heartbeat intervals after that and still receives."""
    code = "from tests.transport.test_stale_connection import child; child()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert proc.returncode != -signal.SIGABRT, f"libzmq aborted the node: {proc.stderr.strip()}"
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    # The premise: each round handed n2's identity over to a new connection, and the late frame
    # on the old one reached no one (that connection had lost its pipe when the reset came).
    assert seen == {"handovers": ROUNDS, "late_frames_delivered": 0, "alive_after": True}


def test_the_router_keeps_tcp_alive_instead_of_zmtp_heartbeats() -> None:
    """Without ZMTP heartbeats, TCP keepalive is what reaps an inbound connection whose peer vanished."""
    with make("n1", free_port(), {"n2": free_port()}) as t:
        router = t.socket
        assert router.getsockopt(zmq.HEARTBEAT_IVL) == 0
        assert (router.getsockopt(zmq.TCP_KEEPALIVE), router.getsockopt(zmq.TCP_KEEPALIVE_IDLE),
                router.getsockopt(zmq.TCP_KEEPALIVE_INTVL), router.getsockopt(zmq.TCP_KEEPALIVE_CNT)) == \
               (1, KEEPALIVE_IDLE_S, KEEPALIVE_INTVL_S, KEEPALIVE_COUNT)


def test_the_dealers_still_send_heartbeats() -> None:
    """The sending side still detects a dead peer: each DEALER pings its peer's ROUTER."""
    with socket.create_server((HOST, 0)) as server:
        server.settimeout(WAIT_S)
        with make("n1", free_port(), {"n2": server.getsockname()[1]}):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(HEARTBEAT_IVL_MS / 1000 + LOAD_MARGIN_S)
                _handshake_as_router(conn)
                commands = []
                while not any(c.startswith(b"\x04PING") for c in commands):
                    flags, body = _read_frame(conn)  # NB: a timeout here means no PING came
                    if flags & 0x04:
                        commands.append(body)


def _handshake_as_router(conn: socket.socket) -> None:
    ready = b"\x05READY" + _prop(b"Socket-Type", b"ROUTER")
    conn.sendall(GREETING + bytes([0x04, len(ready)]) + ready)
    _recv_exact(conn, 64)  # NB: libzmq sends the rest of its greeting only after reading ours
    flags, body = _read_frame(conn)
    assert flags & 0x04 and body.startswith(b"\x05READY"), (flags, body)


def _read_frame(conn: socket.socket) -> tuple[int, bytes]:
    flags = _recv_exact(conn, 1)[0]
    size = int.from_bytes(_recv_exact(conn, 8 if flags & 0x02 else 1), "big")
    return flags, _recv_exact(conn, size)
