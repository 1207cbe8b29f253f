"""One `registry agent` process at its edges: a clean SIGTERM, refusals at start-up (a locked
data dir, a busy port, bad flags) and malformed client frames."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq


from .cluster import ROOT, Cluster, free_ports, poll, registry_cmd

pytestmark = pytest.mark.integration

SIGTERM_EXIT_BOUND_S = 10.0  # generous: the loop polls at least every tick (50 ms)
REFUSAL_BOUND_S = 60.0  # an agent that must refuse to start exits within this (imports included)


def run_agent(*args: str, timeout_s: float = REFUSAL_BOUND_S) -> subprocess.CompletedProcess[str]:
    """Run `registry agent ARGS` to its exit (bounded), output captured."""
    return subprocess.run(registry_cmd("agent", *args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


def agent_args(name: str, data_dir: Path, raft: int, client: int, dns: int) -> list[str]:
    return ["--name", name, "--data-dir", str(data_dir), "--raft", f"127.0.0.1:{raft}",
            "--client", f"127.0.0.1:{client}", "--dns", f"127.0.0.1:{dns}"]


def test_sigterm_stops_an_agent_with_status_0_and_releases_its_data_dir(make_cluster: Any) -> None:
    """SIGTERM makes an agent (here the leader) exit 0 within a bound, leaving its data dir
    unlocked (LOCK no longer names a pid) and intact: an agent started on it opens it, rejoins
    and has every write."""
    cluster: Cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    with cluster.client() as client:
        made = client.register("term", "10.8.0.1", 80)
    cluster.wait_converged(at_least=made.index)

    started = time.monotonic()
    status = cluster.kill(leader.node, signal.SIGTERM, timeout_s=SIGTERM_EXIT_BOUND_S)
    took = time.monotonic() - started
    assert status == 0, f"{leader.node} exited {status} on SIGTERM after {took:.2f} s"
    assert "stopped" in cluster[leader.node].tail(5)
    lock = cluster[leader.node].data_dir / "LOCK"
    assert not lock.exists() or lock.read_text().strip() == "", f"LOCK still names pid {lock.read_text()!r}"

    cluster.restart(leader.node)  # the same name, data dir and ports
    cluster.wait_for_leader(above_term=0)
    with cluster.client(leader.node) as client:
        got = client.services("term")
    assert [(i.id, i.port) for i in got["term"]] == [(made.instance_id, 80)]


def test_sigterm_answers_waiting_requests_with_stopping_and_exits_0(make_cluster: Any, tmp_path: Path) -> None:
    """An agent stopped by SIGTERM while a write and a linearizable read wait for a quorum
    (both followers are dead) answers both with `stopping` (retry on another node, per
    docs/client-protocol.md) and still exits 0 within the bound."""
    config = tmp_path / "patient.toml"  # NB: the requests must still be waiting when SIGTERM comes
    config.write_text("request_timeout_s = 120\n")
    cluster: Cluster = make_cluster(3, extra_args=["--config", str(config)])
    leader = cluster.wait_for_leader()
    for name in cluster.names:
        if name != leader.node:
            cluster.kill(name, signal.SIGKILL)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{cluster[leader.node].client}")
    try:
        write = {"client": "waiting-client", "seq": 1, "service": "web", "address": "10.8.1.1", "port": 80}
        sock.send(msgpack.packb({"v": 1, "id": 1, "op": "register", "args": write}))
        sock.send(msgpack.packb({"v": 1, "id": 2, "op": "services", "args": {}}))
        # The node handles one connection's requests in order: once status is answered, both
        # requests above have been taken in and are waiting.
        assert _exchange(sock, [], 3, node=leader.node) == []
        status = cluster.kill(leader.node, signal.SIGTERM, timeout_s=SIGTERM_EXIT_BOUND_S)
        assert status == 0, f"{leader.node} exited {status} on SIGTERM"
        replies = {}
        deadline = time.monotonic() + 10
        while len(replies) < 2 and (left := deadline - time.monotonic()) > 0:
            if sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                reply = msgpack.unpackb(sock.recv(), raw=False)
                replies[reply["id"]] = reply
    finally:
        sock.close(linger=0)
    assert set(replies) == {1, 2}, f"answers to requests waiting at SIGTERM: {replies}"
    for reply in replies.values():
        assert reply["ok"] is False and reply["error"]["code"] == "stopping", reply


def test_a_second_agent_on_a_data_dir_in_use_exits_1_naming_the_pid(make_cluster: Any) -> None:
    """A second agent on a data dir in use exits 1, with a message that names the lock's
    holder (its pid), and leaves the first one serving."""
    cluster: Cluster = make_cluster(1)
    first = cluster["n1"]
    raft, client, dns = free_ports(3)
    proc = run_agent(*agent_args("n1", first.data_dir, raft, client, dns))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}: {output}"
    assert f"pid {first.pid}" in output and str(first.data_dir) in output, output
    assert first.alive
    assert cluster.status("n1").node == "n1"


@pytest.mark.parametrize("which", ["raft", "client"])
def test_an_agent_whose_port_is_busy_exits_1_naming_the_address(tmp_path: Path, which: str) -> None:
    """An agent whose raft or client port is already bound by another program exits 1 with a
    message naming that address."""
    raft, client, dns = free_ports(3)
    ports = {"raft": raft, "client": client}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", ports[which]))
        busy.listen()
        proc = run_agent(*agent_args("n1", tmp_path / "n1", raft, client, dns))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}: {output}"
    assert f"127.0.0.1:{ports[which]}" in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("bad, names", [
    (["--raft", "nonsense"], "--raft"),
    (["--peer", "n2"], "--peer"),
    (["--peer", "n1=127.0.0.1:1"], "--peer"),  # itself
    (["--name", ""], "--name"),
    (["--tick-interval-ms", "zero"], "tick-interval-ms"),
])
def test_bad_agent_flags_exit_2_naming_the_flag(tmp_path: Path, bad: list[str], names: str) -> None:
    """Bad agent flags exit 2 (a usage error) with a message naming the flag, without starting
    anything or creating the data dir."""
    raft, client, dns = free_ports(3)
    args = agent_args("n1", tmp_path / "n1", raft, client, dns)
    for i in range(0, len(bad), 2):  # replace the flag if present, else add it
        if bad[i] in args:
            args[args.index(bad[i]) + 1] = bad[i + 1]
        else:
            args += bad[i:i + 2]
    proc = run_agent(*args)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}: {output}"
    assert names.lstrip("-") in output.replace("_", "-"), output
    assert "Traceback" not in output, output
    assert not (tmp_path / "n1").exists()


def _exchange(sock: zmq.Socket[bytes], frames: list[bytes], status_id: int, *, node: str = "n1",
              timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Send ``frames`` (one message), then a valid status request ``status_id``; return every
    reply that arrived before the status reply, which must come within ``timeout_s``."""
    if frames:
        sock.send_multipart(frames)
    sock.send(msgpack.packb({"v": 1, "id": status_id, "op": "status", "args": {}}))
    before = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
            continue
        reply = msgpack.unpackb(sock.recv(), raw=False)
        if reply.get("id") == status_id and reply.get("ok") is True:
            assert reply["result"]["node"] == node
            return before
        before.append(reply)
    raise TimeoutError(f"the node did not answer status {status_id} within {timeout_s:g} s after {frames!r:.200}")


GARBAGE_WITHOUT_ID = [
    pytest.param([b"\xc1\xc1\xc1 not msgpack"], id="not-msgpack"),
    pytest.param([b""], id="empty-frame"),
    pytest.param([msgpack.packb([1, "v", 2])], id="not-a-map"),
    pytest.param([msgpack.packb({"v": 1, "id": "seven", "op": "status"})], id="unreadable-id"),
    pytest.param([msgpack.packb({"v": 1, "op": "status"})], id="no-id"),
    pytest.param([b"a", b"b"], id="two-frames"),
    pytest.param([msgpack.packb({"v": 1, "id": 1, "op": "status", "args": {}})[:-3]], id="truncated"),
    pytest.param([b"\x00" * (300 * 1024)], id="over-request-limit"),
]
GARBAGE_WITH_ID = [
    pytest.param({"v": 2, "id": 11, "op": "status", "args": {}}, {"bad_request"}, id="wrong-version"),
    pytest.param({"id": 12, "op": "status", "args": {}}, {"bad_request"}, id="no-version"),
    pytest.param({"v": 1, "id": 13, "op": "frobnicate", "args": {}}, {"bad_request"}, id="unknown-op"),
    pytest.param({"v": 1, "id": 14, "op": "status", "args": [1, 2]}, {"bad_request"}, id="args-not-a-map"),
    pytest.param({"v": 1, "id": 15, "op": "register", "args": {"client": "c", "seq": 1, "service": "web",
                  "address": "10.0.0.1", "port": "eighty"}}, {"invalid", "bad_request"}, id="port-not-int"),
    pytest.param({"v": 1, "id": 16, "op": "register", "args": {"service": "web", "address": "10.0.0.1",
                  "port": 80}}, {"invalid", "bad_request"}, id="no-client-seq"),
    pytest.param({"v": 1, "id": 17, "op": "services", "args": {"service": 5}}, {"invalid", "bad_request"},
                 id="service-not-str"),
]


def test_malformed_client_frames_are_dropped_or_refused_and_the_node_keeps_serving(make_cluster: Any) -> None:
    """Malformed client frames (garbage bytes, not a map, no readable id, wrong version, unknown
    op, wrong argument types, several frames, oversized) are answered with bad_request (or
    invalid, for arguments) when they carry a readable id and otherwise dropped, and the node
    keeps serving: the same connection still gets answers, and writes still commit."""
    cluster: Cluster = make_cluster(1)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{cluster['n1'].client}")
    try:
        next_id = 1000
        for param in GARBAGE_WITHOUT_ID:
            (frames,) = param.values
            next_id += 1
            # Dropped, per the protocol (docs/client-protocol.md): no reply at all. The status
            # reply that follows shows the node read past it (it takes a connection's frames in order).
            assert _exchange(sock, frames, next_id) == [], param.id
        for param in GARBAGE_WITH_ID:
            body, codes = param.values
            next_id += 1
            before = _exchange(sock, [msgpack.packb(body)], next_id)
            assert len(before) == 1, (param.id, before)
            reply = before[0]
            assert reply["v"] == 1 and reply["id"] == body["id"] and reply["ok"] is False, (param.id, reply)
            assert reply["error"]["code"] in codes and reply["error"]["message"], (param.id, reply)

        # Over the socket's MAXMSGSIZE: ZeroMQ cuts that connection; the node must not mind.
        sock.send(b"\x00" * (2 * 1024 * 1024))
        with cluster.client("n1", timeout_s=20) as client:
            made = client.register("still", "10.9.0.1", 443)
            assert [i.id for i in client.services("still")["still"]] == [made.instance_id]
        ids = iter(range(2000, 3000))

        def answered_again() -> bool | None:
            try:
                _exchange(sock, [], next(ids), timeout_s=1)
            except TimeoutError:
                return None  # NB: a request sent while the connection was down may be lost
            return True

        poll("the same DEALER is answered again after reconnecting", answered_again, 30, interval_s=0)
    finally:
        sock.close(linger=0)
    assert cluster["n1"].alive
    assert "Traceback" not in cluster["n1"].log_text()
