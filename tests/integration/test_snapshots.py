"""Snapshots and log compaction with real processes: a follower that fell behind the compacted
log rejoins through InstallSnapshot, restarts keep every acknowledged write, and a kill -9 in the
middle of a transfer recovers.

Each test uses a small --snapshot-entries so that compaction happens many times while thousands
of writes go through (50,000 in the first test, as the issue asks; many concurrent clients); a
follower stopped meanwhile needs entries the leader no longer has, so it can only catch up from a
snapshot.
"""

from __future__ import annotations

import itertools
import signal
import threading
from collections.abc import Callable

import dns.message
import dns.query
import dns.rdatatype

from registry.client import Client, NodeStatus

from .cluster import Cluster, poll
from .linkproxy import Chunk, proxied_links

SNAPSHOT_ARGS = ("--snapshot-entries", "1000", "--snapshot-keep", "200")
SERVICES = 20
# A transfer of a few MB between processes on loopback, on a loaded machine: far more than it takes.
TRANSFER_TIMEOUT_S = 120.0


def address(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def write_many(cluster: Cluster, names: list[str], count: int, *, clients: int = 32, start: int = 0,
               meta_bytes: int = 0) -> set[tuple[str, str]]:
    """Register ``count`` instances from ``clients`` threads over ``names``; returns the
    (service, address) of every acknowledged one. A write that raised is retried (idempotent)."""
    counter = itertools.count(start)
    acked: set[tuple[str, str]] = set()
    failures: list[BaseException] = []
    lock = threading.Lock()
    meta = {f"pad{k}": "x" * 500 for k in range(meta_bytes // 500)} or None  # values: at most 512 each

    def work(k: int) -> None:
        servers = [cluster[names[(k + j) % len(names)]].client for j in range(len(names))]
        try:
            with Client(servers, timeout_s=20) as client:
                while (i := next(counter)) < start + count:
                    service = f"svc-{i % SERVICES}"
                    client.register(service, address(i), 80, meta=meta)
                    with lock:
                        acked.add((service, address(i)))
        except BaseException as exc:  # noqa: BLE001 (re-raised below)
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, f"writes failed: {failures[:3]}"
    assert len(acked) == count
    return acked


def snapshot_of(status: NodeStatus) -> dict:
    assert status.snapshot is not None, f"{status.node} reports no snapshot state"
    return dict(status.snapshot)


def assert_same_everywhere(cluster: Cluster, expected: set[tuple[str, str]] | None = None) -> None:
    """Every node holds the same catalogue (stale reads of each node's own state) and every
    node's DNS gives the same answers; with ``expected``, each of those instances is there."""
    cluster.wait_converged(60)
    seen: list[dict] = []

    def same_index() -> dict | None:
        # NB: a leader elected meanwhile appends a no-op, so poll until one read finds every
        # node at one index, then compare what they hold there.
        catalogues = cluster.stale_catalogues()
        seen[:] = [{name: services.index for name, services in catalogues.items()}]
        return catalogues if len({services.index for services in catalogues.values()}) == 1 else None

    catalogues = poll("every node at one applied index", same_index, 60, describe=lambda: str(seen))
    first = next(iter(catalogues.values()))
    for name, services in catalogues.items():
        assert dict(services) == dict(first), f"{name}'s catalogue differs at index {services.index}"
    if expected is not None:
        held = {(svc, inst.address) for svc, insts in first.items() for inst in insts}
        missing = expected - held
        assert not missing, f"{len(missing)} acknowledged writes are missing, e.g. {sorted(missing)[:5]}"
    for service in ("svc-0", f"svc-{SERVICES - 1}"):
        want = sorted(i.address for i in first[service])
        for name, (host, port) in cluster.dns_addresses().items():
            def answer() -> list[str] | None:
                query = dns.message.make_query(f"{service}.service.registry.", dns.rdatatype.A)
                reply = dns.query.tcp(query, host, port=port, timeout=5)
                got = sorted(rr.address for rrset in reply.answer for rr in rrset)
                return got if got == want else None
            poll(f"{name}'s DNS answers {service} like the catalogue", answer, 30)


def converge_and_count(cluster: Cluster, name: str) -> dict:
    cluster.wait_converged(60)
    return snapshot_of(cluster.status(name))


def test_a_follower_behind_the_compacted_log_rejoins_through_a_snapshot(make_cluster: Callable[..., Cluster]) -> None:
    """A follower paused (SIGSTOP) while 50,000 entries are written and compacted gets the
    leader's snapshot, installs it (its status counts it), and then holds the same catalogue and
    DNS answers as the others."""
    cluster = make_cluster(3, extra_args=("--snapshot-entries", "5000", "--snapshot-keep", "1000"))
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.names if n != leader.node)
    cluster[follower].signal(signal.SIGSTOP)
    try:
        live = [n for n in cluster.names if n != follower]
        acked = write_many(cluster, live, 50_000, clients=48)
        snap = snapshot_of(cluster.status(leader.node))
        assert snap["taken"] >= 8 and snap["log_first_index"] > 40_000, snap
    finally:
        cluster[follower].signal(signal.SIGCONT)
    # While it catches up, clients write through it (forwarded to the leader, answered once
    # applied there, or re-sent after the install: the session answers a duplicate with the first
    # result), and others keep the leader compacting.
    through_follower: list[set[tuple[str, str]]] = []
    side = threading.Thread(target=lambda: through_follower.append(
        write_many(cluster, [follower], 300, start=50_000, clients=8)))
    side.start()
    acked |= write_many(cluster, live, 1500, start=51_000)
    side.join(timeout=120)
    assert through_follower, "the writes through the recovering follower did not finish"
    acked |= through_follower[0]
    got = converge_and_count(cluster, follower)
    assert got["installed"] >= 1 and got["index"] >= 45_000, got
    assert_same_everywhere(cluster, acked)
    # It goes on replicating normally after the install.
    acked |= write_many(cluster, cluster.names, 300, start=53_000, clients=8)
    assert_same_everywhere(cluster, acked)


def test_a_restart_after_compaction_keeps_every_acknowledged_write(make_cluster: Callable[..., Cluster]) -> None:
    """kill -9 of the whole cluster after many compactions: every node restarts from its
    snapshot plus the log tail, and every acknowledged write is still there, on every node."""
    cluster = make_cluster(3, extra_args=SNAPSHOT_ARGS)
    acked = write_many(cluster, cluster.names, 4000)
    before = {n: snapshot_of(cluster.status(n)) for n in cluster.names}
    assert all(s["taken"] >= 2 for s in before.values()), before
    cluster.kill_all(signal.SIGKILL)
    cluster.start()
    cluster.wait_answering()
    cluster.wait_for_leader()
    for name in cluster.names:
        assert "restored the snapshot at index 0 " not in cluster[name].log_text().split("start #2")[-1], name
    after = {n: snapshot_of(cluster.status(n)) for n in cluster.names}
    for name, snap in after.items():
        assert snap["index"] >= 2000 and snap["stored_index"] == snap["index"], (name, snap)
    assert_same_everywhere(cluster, acked)
    acked |= write_many(cluster, cluster.names, 300, start=4000, clients=8)
    assert_same_everywhere(cluster, acked)


def test_kill_9_during_a_snapshot_transfer_then_recovery(make_cluster: Callable[..., Cluster]) -> None:
    """A snapshot of several 1 MiB chunks, sent through a proxy that holds the transfer after
    the receiver acknowledged its first chunk: the follower is killed -9 with part of the snapshot
    and not all of it; restarted, it gets the snapshot again from byte 0; the leader is killed -9
    in the middle of that second transfer. The new leader sends the follower its own snapshot,
    which it installs, and every node ends with every acknowledged write."""
    cluster = make_cluster(3, start=False, extra_args=SNAPSHOT_ARGS)
    with proxied_links(cluster) as links:
        cluster.start()
        cluster.wait_answering()
        leader = cluster.wait_for_leader().node
        follower, other = (n for n in cluster.names if n != leader)
        link = links[(leader, follower)]

        def held_chunk(what: str) -> Chunk:
            return poll(what, lambda: link.held, TRANSFER_TIMEOUT_S, describe=lambda: f"forwarded {link.forwarded}")

        def assert_leader_sending_snapshot() -> None:
            peer = cluster.status(leader).peers.get(follower)
            assert peer is not None and peer.state == "snapshot", f"{leader}'s progress for {follower}: {peer}"

        link.hold_next_chunk()
        cluster[follower].signal(signal.SIGSTOP)
        try:
            live = [n for n in cluster.names if n != follower]
            acked = write_many(cluster, live, 5000, meta_bytes=1000)  # a snapshot of about 5 MB: 5+ chunks
            snap = snapshot_of(cluster.status(leader))
            assert snap["bytes"] > 4 * 1024**2, snap
        finally:
            cluster[follower].signal(signal.SIGCONT)
        # NB: the leader starts the transfer once the follower answers again (its probe was paused).
        held = held_chunk("the leader's link to the woken follower holding the snapshot's second chunk")
        # The leader sends a chunk at a non-zero offset only once the follower acknowledged the
        # bytes before it; nothing beyond them passed: the follower holds part of the snapshot.
        assert any(c.offset == 0 and c.index == held.index for c in link.forwarded), link.forwarded
        assert not any(c.done for c in link.forwarded), link.forwarded
        assert_leader_sending_snapshot()
        cluster.kill(follower, signal.SIGKILL)

        link.hold_next_chunk()
        cluster.restart(follower)
        held = held_chunk("the leader's link to the restarted follower holding the snapshot's second chunk")
        again = link.forwarded
        # Its partial copy died with it: the transfer starts over from byte 0 (the leader may
        # first try to go on where it was, and is told the follower holds nothing).
        assert any(c.offset == 0 and c.index == held.index for c in again), again
        assert not any(c.done for c in again), again
        restarted = cluster.status(follower)
        assert snapshot_of(restarted)["installed"] == 0 and restarted.applied < held.index, restarted
        assert_leader_sending_snapshot()
        cluster.kill(leader, signal.SIGKILL)
        link.release()

        survivors = [follower, other]
        # The follower's log ends before the compacted entries: only `other` can win.
        assert cluster.wait_for_leader(names=survivors).node == other
        cluster.wait_converged(60, names=survivors)
        recovered = cluster.status(follower)
        assert snapshot_of(recovered)["installed"] >= 1, recovered
        assert any(c.done for c in links[(other, follower)].forwarded), links[(other, follower)].forwarded
        cluster.restart(leader)
        cluster.wait_for_leader()
        assert_same_everywhere(cluster, acked)
        acked |= write_many(cluster, cluster.names, 200, start=5000, clients=8)
        assert_same_everywhere(cluster, acked)
