"""A 3-node cluster of real `registry agent` processes on loopback: election, replication,
failover, crash recovery, concurrent clients and at-most-once retries (issue 3, point 7).

Every wait is bounded (see cluster.py); the only timing assertion is failover: a new leader within
a bound derived from the configured election timeout (docs/performance.md measures the figures).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from typing import Any

import msgpack
import pytest
import zmq

from registry.client import Client, NodeStatus, Registration, RegistryError, Services

from .cluster import ELECTION_TIMEOUT_MAX_S, LOAD_MARGIN_S, Cluster, poll, run_cli

pytestmark = pytest.mark.integration

# A survivor notices within its randomised election timeout (at most 2 * election_ticks - 1 ticks
# after the last heartbeat); a split vote costs one more such round; the rest is the load margin.
FAILOVER_BOUND_S = 2 * ELECTION_TIMEOUT_MAX_S + LOAD_MARGIN_S
THREAD_JOIN_S = 120.0


def instances(services: Services, service: str) -> dict[str, tuple[str, int]]:
    """id -> (address, port) of one service in a services answer."""
    return {i.id: (i.address, i.port) for i in services.get(service, [])}


def as_plain(services: Services) -> tuple[int, dict[str, list[Any]]]:
    """A services answer as comparable plain data: (index, {service: sorted instances})."""
    return services.index, {name: sorted(((i.id, i.address, i.port, i.tags, sorted(i.meta.items()))
                                          for i in items)) for name, items in services.items()}


def followers_of(cluster: Cluster, leader: NodeStatus) -> list[str]:
    return [n for n in cluster.live() if n != leader.node]


def test_three_nodes_elect_one_leader_and_status_cli_shows_it(cluster: Cluster) -> None:
    """A 3-node cluster elects exactly one leader; `registry status --json` (the real CLI, in
    its own process) shows all three nodes with the same term and the same leader."""
    leader = cluster.wait_for_leader()  # exactly one leader, whom every node names, in its term
    assert leader.node in cluster.names

    servers = [arg for name in cluster.names for arg in ("--server", cluster[name].client)]
    last: dict[str, Any] = {}

    def cli_agrees() -> list[dict[str, Any]] | None:
        proc = run_cli("status", "--json", *servers)
        assert proc.returncode == 0, f"registry status --json exited {proc.returncode}: {proc.stderr}"
        rows = json.loads(proc.stdout)
        last["rows"] = rows
        leaders = [r for r in rows if r.get("role") == "leader"]
        if len(leaders) == 1 and all(r.get("term") == leaders[0]["term"] and r.get("leader") == leaders[0]["node"]
                                     for r in rows):
            return rows
        return None  # NB: an election between the two reads; the CLI must show agreement again

    rows = poll("`registry status --json` shows one leader that every node agrees on", cli_agrees, 30,
                interval_s=0.2, describe=lambda: repr(last))
    assert [r["node"] for r in rows] == cluster.names
    assert [r["server"] for r in rows] == [cluster[n].client for n in cluster.names]
    assert [r["role"] for r in rows].count("leader") == 1
    assert {r["term"] for r in rows} == {rows[0]["term"]} and rows[0]["term"] >= leader.term
    assert {r["leader"] for r in rows} == {next(r["node"] for r in rows if r["role"] == "leader")}


def test_registration_through_any_node_is_read_through_every_node(cluster: Cluster) -> None:
    """A registration made through each node (the followers forward it, the leader proposes
    it) is seen by a default, linearizable read through every node as soon as it is
    acknowledged, and by a stale read through every node once they have applied it."""
    leader = cluster.wait_for_leader()
    made: dict[str, Registration] = {}
    for i, name in enumerate(cluster.names, 1):
        with cluster.client(name) as client:
            made[name] = client.register("echo", f"10.1.0.{i}", 9000 + i, tags=[f"via-{name}"], meta={"via": name})
    assert leader.node in made and len(made) == 3  # through the leader and both followers
    want = {r.instance_id: (f"10.1.0.{i}", 9000 + i) for i, r in enumerate(made.values(), 1)}
    assert len(want) == 3

    last_index = max(r.index for r in made.values())
    for name in cluster.names:
        with cluster.client(name) as client:
            got = client.services("echo")  # linearizable: no waiting allowed before it
        assert instances(got, "echo") == want, f"linearizable read through {name}"
        assert got.index >= last_index, f"{name} answered from index {got.index} before the write at {last_index}"

    cluster.wait_converged(at_least=last_index)
    stale = cluster.stale_catalogues()
    for name, got in stale.items():
        assert instances(got, "echo") == want, f"stale read through {name}"
        by_id = {i.id: i for i in got["echo"]}
        for via, registration in made.items():
            assert by_id[registration.instance_id].tags == (f"via-{via}",)
            assert dict(by_id[registration.instance_id].meta) == {"via": via}
    assert len({repr(as_plain(s)) for s in stale.values()}) == 1, stale


def test_kill_9_of_the_leader_elects_a_new_one_within_the_election_timeout_and_writes_continue(
        cluster: Cluster) -> None:
    """After kill -9 of the leader, a survivor reports a new leader in a higher term within two
    election timeouts of the kill (plus a margin for a loaded machine), and writes through the
    survivors (and through a client that still lists the dead node) are committed and read back."""
    leader = cluster.wait_for_leader()
    with cluster.client() as client:
        before = client.register("api", "10.2.0.1", 8000)
    cluster.wait_converged(at_least=before.index)
    survivors = followers_of(cluster, leader)
    watchers = {n: Client([cluster[n].client], timeout_s=1.0, attempt_timeout_s=0.25) for n in survivors}
    seen: dict[str, Any] = {}
    try:
        for watcher in watchers.values():  # connected before the clock starts
            assert isinstance(watcher.status_all()[0], NodeStatus)
        killed_at = time.monotonic()
        cluster[leader.node].signal(signal.SIGKILL)

        def new_leader_reported() -> tuple[float, str, NodeStatus] | None:
            for name, watcher in watchers.items():
                status = watcher.status_all()[0]
                now = time.monotonic()
                seen[name] = status
                if (isinstance(status, NodeStatus) and status.term > leader.term
                        and status.leader is not None and status.leader != leader.node):
                    return now - killed_at, name, status
            return None

        elapsed, reporter, status = poll("a survivor reports a new leader in a higher term", new_leader_reported,
                                         30, interval_s=0.01, describe=lambda: repr(seen))
    finally:
        for watcher in watchers.values():
            watcher.close()
    assert cluster[leader.node].wait_exit(10) == -signal.SIGKILL
    assert elapsed <= FAILOVER_BOUND_S, (
        f"{reporter} reported the new leader {status.leader} (term {status.term}) {elapsed:.2f} s after kill -9 "
        f"of {leader.node} (term {leader.term}); the bound is {FAILOVER_BOUND_S:.2f} s (two election timeouts of "
        f"{ELECTION_TIMEOUT_MAX_S:g} s and {LOAD_MARGIN_S:g} s for a loaded machine)")

    new = cluster.wait_for_leader(above_term=leader.term)
    assert new.node in survivors
    acked = {}
    for i, name in enumerate(survivors, 2):
        with cluster.client(name) as client:
            acked[client.register("api", f"10.2.0.{i}", 8000).instance_id] = (f"10.2.0.{i}", 8000)
    with cluster.client() as client:  # lists the dead node first: it must go round it
        acked[client.register("api", "10.2.0.9", 8000).instance_id] = ("10.2.0.9", 8000)
    acked[before.instance_id] = ("10.2.0.1", 8000)
    for name in survivors:
        with cluster.client(name) as client:
            assert instances(client.services("api"), "api") == acked, f"read through {name}"


def test_clients_writing_through_a_leader_kill_lose_nothing_and_apply_nothing_twice(cluster: Cluster) -> None:
    """Clients that keep writing while the leader is killed with -9 see every write succeed
    (the Client retries the same client id and seq on another node), and each write takes
    effect once: new instances are all there, and an instance updated by every write of one
    client ends with that client's last value, not an older one applied again."""
    leader = cluster.wait_for_leader()
    stop = threading.Event()
    acked: dict[str, tuple[str, int]] = {}
    last_update: list[int] = [0]
    errors: list[str] = []

    def adder() -> None:
        try:
            with Client([cluster[n].client for n in cluster.names], timeout_s=20) as client:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    got = client.register("failover", "10.2.1.1", 30_000 + i)
                    acked[got.instance_id] = ("10.2.1.1", 30_000 + i)
        except BaseException as e:
            errors.append(f"adder: {type(e).__name__}: {e}")

    def updater() -> None:
        try:
            with Client([cluster[n].client for n in reversed(cluster.names)], timeout_s=20) as client:
                for i in range(1, 10_000):
                    if stop.is_set():
                        return
                    client.register("counter", "10.2.1.2", 1, id="the-counter", meta={"n": str(i)})
                    last_update[0] = i
        except BaseException as e:
            errors.append(f"updater: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=adder, daemon=True), threading.Thread(target=updater, daemon=True)]
    for t in threads:
        t.start()
    try:
        poll("writes before the kill", lambda: True if len(acked) >= 30 else None, 30, interval_s=0.01)
        cluster.kill(leader.node, signal.SIGKILL)
        cluster.wait_for_leader(above_term=leader.term)
        before = len(acked), last_update[0]
        poll("writes after the new leader", lambda: True if len(acked) >= before[0] + 30
             and last_update[0] >= before[1] + 30 else None, 60, interval_s=0.01,
             describe=lambda: f"{len(acked)} added, counter at {last_update[0]}")
    finally:
        stop.set()
        for t in threads:
            t.join(THREAD_JOIN_S)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    with cluster.client() as client:
        assert instances(client.services("failover"), "failover") == acked
        (counter,) = client.services("counter")["counter"]
    assert dict(counter.meta) == {"n": str(last_update[0])}


def test_killed_leader_restarts_with_its_data_and_catches_up(cluster: Cluster) -> None:
    """A node killed with -9 (the leader) and restarted on the same data dir and ports catches
    up with the writes it missed: its applied index reaches the leader's commit, and its stale
    read equals the other nodes'."""
    leader = cluster.wait_for_leader()
    victim = leader.node
    acked: dict[str, tuple[str, int]] = {}
    with cluster.client() as client:
        for i in range(20):
            acked[client.register("db", "10.3.0.1", 5000 + i).instance_id] = ("10.3.0.1", 5000 + i)
    cluster.kill(victim, signal.SIGKILL)
    cluster.wait_for_leader(above_term=leader.term)
    with cluster.client(followers_of(cluster, leader)) as client:
        for i in range(20, 60):  # while the victim is down
            acked[client.register("db", "10.3.0.2", 5000 + i).instance_id] = ("10.3.0.2", 5000 + i)
        last = client.register("db", "10.3.0.3", 5999)
    acked[last.instance_id] = ("10.3.0.3", 5999)

    cluster.restart(victim)
    seen: dict[str, Any] = {}

    def caught_up() -> int | None:
        got = cluster.statuses()
        seen.update(got)
        leaders = [s for s in got.values() if isinstance(s, NodeStatus) and s.role == "leader"]
        mine = got[victim]
        if len(leaders) == 1 and isinstance(mine, NodeStatus) and mine.applied >= leaders[0].commit >= last.index:
            return mine.applied
        return None

    poll(f"{victim} applies up to the leader's commit", caught_up, 30, describe=lambda: repr(seen))
    index = cluster.wait_converged(at_least=last.index)
    stale = cluster.stale_catalogues()
    assert stale[victim].index == index
    assert instances(stale[victim], "db") == acked
    others = [as_plain(s) for n, s in stale.items() if n != victim]
    assert all(as_plain(stale[victim]) == o for o in others), stale


def test_acknowledged_writes_survive_kill_9_of_every_node(cluster: Cluster) -> None:
    """Every write acknowledged before kill -9 of ALL nodes at once (taken in the middle of a
    burst of writes from several clients) is present after all three restart, through a
    linearizable read of every node: an acknowledgement means committed to durable storage."""
    cluster.wait_for_leader()
    acked: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with cluster.client(cluster.names[k % 3:] + cluster.names[:k % 3], timeout_s=3) as client:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    port = 10_000 + 1000 * k + i
                    try:
                        got = client.register("burst", f"10.4.0.{k}", port)
                    except RegistryError:
                        return  # the nodes are gone: outcome unknown, not acknowledged
                    with lock:
                        acked[got.instance_id] = (f"10.4.0.{k}", port)
        except BaseException as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        poll("200 acknowledged writes", lambda: True if len(acked) >= 200 else None, 60,
             interval_s=0.005, describe=lambda: f"{len(acked)} acknowledged")
        cluster.kill_all(signal.SIGKILL)  # NB: writes are still in flight
    finally:
        stop.set()
        for t in threads:
            t.join(THREAD_JOIN_S)
    assert not any(t.is_alive() for t in threads), "a writer did not give up within its bound"
    assert not errors, errors
    with lock:
        acked_at_kill = dict(acked)

    cluster.start()
    cluster.wait_answering()
    cluster.wait_for_leader()
    for name in cluster.names:
        with cluster.client(name, timeout_s=10) as client:
            got = instances(client.services("burst"), "burst")
        missing = {i: a for i, a in acked_at_kill.items() if got.get(i) != a}
        assert not missing, f"{len(missing)} of {len(acked_at_kill)} acknowledged writes lost, read through " \
                            f"{name}: {sorted(missing.items())[:5]}..."


def test_eight_concurrent_clients_leave_identical_catalogues(cluster: Cluster) -> None:
    """8 concurrent clients (one thread and one Client each, spread over all nodes) x 200
    registrations: every node ends with an identical catalogue (stale reads once applied
    indexes converge) holding every acknowledged registration, and nothing else."""
    cluster.wait_for_leader()
    clients, per_client = 8, 200
    acked: list[dict[str, tuple[str, int, tuple[str, ...]]]] = [{} for _ in range(clients)]
    indexes: list[int] = [0] * clients
    errors: list[str] = []
    start = threading.Barrier(clients, timeout=60)

    def worker(k: int) -> None:
        order = cluster.names[k % 3:] + cluster.names[:k % 3]
        try:
            with Client([cluster[n].client for n in order], timeout_s=30) as client:
                start.wait()
                for i in range(per_client):
                    address, port = f"10.6.{k}.1", 20_000 + i
                    got = client.register("load", address, port, tags=[f"c{k}"], meta={"i": str(i)})
                    acked[k][got.instance_id] = (address, port, (f"c{k}",))
                    indexes[k] = max(indexes[k], got.index)
        except BaseException as e:
            errors.append(f"client {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(THREAD_JOIN_S)
    assert not any(t.is_alive() for t in threads), f"clients still running after {THREAD_JOIN_S} s"
    assert not errors, errors
    want = {i: v for per in acked for i, v in per.items()}
    assert len(want) == clients * per_client

    index = cluster.wait_converged(at_least=max(indexes))
    stale = cluster.stale_catalogues()
    for name, got in stale.items():
        assert got.index == index, f"{name} answered at index {got.index}, converged at {index}"
        have = {i.id: (i.address, i.port, i.tags) for i in got["load"]}
        assert have == want, f"{name}: {len(set(want) - set(have))} missing, {len(set(have) - set(want))} extra"
    plain = {name: as_plain(got) for name, got in stale.items()}
    assert plain["n1"] == plain["n2"] == plain["n3"]


class RawClient:
    """A bare DEALER speaking docs/client-protocol.md by hand (no registry.client code)."""

    def __init__(self, address: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"tcp://{address}")

    def send(self, request_id: int, op: str, args: dict[str, Any], *, v: int = 1) -> None:
        self.socket.send(msgpack.packb({"v": v, "id": request_id, "op": op, "args": args}, use_bin_type=True))

    def receive(self, request_id: int, timeout_s: float = 20.0) -> dict[str, Any]:
        """The reply with ``request_id`` (others are unexpected and fail the test)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(left * 1000) + 1, zmq.POLLIN):
                reply = msgpack.unpackb(self.socket.recv(), raw=False)
                assert reply.get("id") == request_id, f"unexpected reply {reply!r} while waiting for {request_id}"
                return reply  # type: ignore[no-any-return]
        raise TimeoutError(f"no reply to request {request_id} within {timeout_s:g} s")

    def close(self) -> None:
        self.socket.close(linger=0)


def test_a_retried_write_is_applied_once(cluster: Cluster) -> None:
    """A write retried with the same client id and seq (Raft §8 sessions) is applied once: the
    same request sent at once to a follower and to the leader, then again to the follower, and
    a later copy with a changed port sent to the third node all get the identical reply (same
    instance_id and index), and the catalogue holds only the first one's effect. A new seq is
    applied; the old seq afterwards is refused as stale_seq."""
    leader = cluster.wait_for_leader()
    follower, third = followers_of(cluster, leader)
    raw = {n: RawClient(cluster[n].client) for n in cluster.names}
    try:
        client_id = uuid.uuid4().hex
        first = {"client": client_id, "seq": 1, "service": "retry", "address": "10.7.0.1", "port": 8080,
                 "instance_id": None, "tags": ["a"], "meta": {"k": "v"}}
        raw[follower].send(1, "register", first)
        raw[leader.node].send(2, "register", first)  # NB: both in flight together
        r1, r2 = raw[follower].receive(1), raw[leader.node].receive(2)
        assert r1["ok"] is True, r1
        result = r1["result"]
        assert result["created"] is True and isinstance(result["index"], int)
        assert r2["result"] == result, (r1, r2)
        raw[follower].send(3, "register", first)
        assert raw[follower].receive(3)["result"] == result
        changed = {**first, "port": 8081}  # a "retry" whose copy differs: the first result stands
        raw[third].send(4, "register", changed)
        assert raw[third].receive(4)["result"] == result

        with cluster.client() as client:
            got = client.services("retry")
        assert [(i.id, i.address, i.port) for i in got["retry"]] == [(result["instance_id"], "10.7.0.1", 8080)]

        raw[third].send(5, "register", {**changed, "seq": 2})
        second = raw[third].receive(5)
        assert second["ok"] is True and second["result"]["index"] > result["index"], second
        raw[leader.node].send(6, "register", first)  # seq 1 again, after seq 2
        stale = raw[leader.node].receive(6)
        assert stale["ok"] is False and stale["error"]["code"] == "stale_seq", stale
        index = cluster.wait_converged(at_least=second["result"]["index"])
        for name, view in cluster.stale_catalogues().items():
            assert view.index == index
            assert sorted((i.address, i.port) for i in view["retry"]) == [("10.7.0.1", 8080), ("10.7.0.1", 8081)], name
    finally:
        for r in raw.values():
            r.close()
