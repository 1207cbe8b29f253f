"""`registry snapshot save / inspect / restore` against a real 3-node cluster (issue 5, point 5).

The round trip: register, save, inspect, change the catalogue, restore; then every node's client
API and every node's DNS (its own child process and catalogue replica, asked with dnspython)
shows exactly the saved catalogue. Every wait polls against a deadline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import msgpack
import pytest

from registry.catalogue import Catalogue, Register, Request, encode_request
from registry.catalogue.state import SNAPSHOT_FORMAT, SNAPSHOT_MAGIC
from registry.client import Client, Services, ValidationFailed
from registry.naming import node_id_for
from registry.raft import Index, Membership, NodeId, Snapshot, SnapshotMeta, Term
from registry.storage.snapfile import write_snapshot_file

from .cluster import Cluster, poll, run_cli

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # a node (and its DNS child) applying a restore, on a loaded machine
QUERY_TIMEOUT_S = 5.0


def _servers(cluster: Cluster) -> list[str]:
    return [flag for name in cluster.names for flag in ("--server", cluster[name].client)]


def _catalogue(services: Services) -> dict[str, list[tuple[str, str, int, tuple[str, ...], dict[str, str]]]]:
    return {name: sorted((i.id, i.address, i.port, i.tags, dict(i.meta)) for i in items)
            for name, items in services.items() if items}


def _dns(at: tuple[str, int], name: str, rdtype: str, *, tcp: bool = False) -> tuple[int, list[str]]:
    """(rcode, sorted answer rdata); over TCP for answers too large for 512 bytes of UDP."""
    query = dns.query.tcp if tcp else dns.query.udp
    reply = query(dns.message.make_query(name, rdtype, use_edns=False), at[0], port=at[1], timeout=QUERY_TIMEOUT_S)
    return reply.rcode(), sorted(rr.to_text() for rrset in reply.answer for rr in rrset)


def _dns_answers(at: tuple[str, int], name: str, rdtype: str, *, tcp: bool = False) -> list[str] | None:
    """The sorted answer rdata of a NOERROR reply; None for any other rcode, or no reply in time
    (when polled: a responder busy applying a restore may miss one query's deadline)."""
    try:
        rcode, answers = _dns(at, name, rdtype, tcp=tcp)
    except dns.exception.Timeout:
        return None
    return answers if rcode == dns.rcode.NOERROR else None


def _json(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_save_inspect_change_restore_round_trip(cluster: Cluster, tmp_path: Path) -> None:
    """A saved snapshot, restored after more writes, brings every node and every node's DNS back
    to exactly the saved catalogue, through one committed write; clients keep writing after it.
    Both commands ask a follower, so the read index and the write's forwarding are exercised."""
    client = cluster.client(timeout_s=20)
    client.register("web", "10.1.0.1", 8080, tags=["primary"], meta={"v": "1"})
    client.register("web", "10.1.0.2", 8080)
    client.register("db", "10.1.0.3", 5432, id="db-main")
    saved_view = _catalogue(client.services())

    # Through a follower only: the save's read index and the restore's write go via the leader.
    leader = cluster.wait_for_leader().node
    follower = ["--server", cluster[next(n for n in cluster.names if n != leader)].client]
    path = tmp_path / "backup.snap"
    saved = _json(run_cli("snapshot", "save", str(path), *follower, "--json"))
    assert (saved["services"], saved["instances"]) == (2, 3)
    assert saved["sessions"] >= 1 and saved["term"] >= 1 and saved["kind"] == "save"
    assert saved["size"] == path.stat().st_size

    inspected = _json(run_cli("snapshot", "inspect", str(path), "--json"))
    assert inspected["valid"] is True and inspected["kind"] == "save"
    for key in ("index", "term", "services", "instances", "sessions", "digest"):
        assert inspected[key] == saved[key], key
    assert inspected["voters"] == sorted(node_id_for(name) for name in cluster.names)
    assert inspected["learners"] == []
    text = run_cli("snapshot", "inspect", str(path))
    assert text.returncode == 0 and str(saved["index"]) in text.stdout and saved["digest"] in text.stdout

    # Change the catalogue after the save.
    client.register("cache", "10.1.0.9", 6379)
    client.deregister("web", "10.1.0.2:8080")
    client.register("web", "10.1.0.1", 9090, id="web-10.1.0.1-8080")  # the same id, another port
    assert _catalogue(client.services()) != saved_view

    refused = run_cli("snapshot", "restore", str(path), *_servers(cluster))  # stdin is not a terminal
    assert refused.returncode == 2 and "--yes" in refused.stderr, refused
    assert _catalogue(client.services()) != saved_view

    restored = _json(run_cli("snapshot", "restore", str(path), "--yes", *follower, "--json"))
    assert (restored["services"], restored["instances"]) == (2, 3)
    assert restored["snapshot_index"] == saved["index"] and restored["index"] > saved["index"]

    for name in cluster.names:
        with Client([cluster[name].client], timeout_s=5) as one:
            def caught_up(one: Client = one) -> Services | None:
                got = one.services(stale=True)
                return got if got.index >= restored["index"] else None

            local = poll(f"{name} applies the restore", caught_up, WAIT_S)
            assert _catalogue(local) == saved_view, name

    expected_a = {"web": ["10.1.0.1", "10.1.0.2"], "db": ["10.1.0.3"]}
    for name, at in cluster.dns_addresses().items():
        def dns_restored(at: tuple[str, int] = at) -> bool | None:
            for service, addresses in expected_a.items():
                if _dns_answers(at, f"{service}.service.registry.", "A") != addresses:
                    return None
            try:
                rcode, _ = _dns(at, "cache.service.registry.", "A")
            except dns.exception.Timeout:
                return None
            return True if rcode == dns.rcode.NXDOMAIN else None

        poll(f"{name}'s DNS serves the restored catalogue", dns_restored, WAIT_S,
             describe=lambda at=at: repr([_dns_answers(at, f"{s}.service.registry.", "A") for s in expected_a]))
        rcode, srv = _dns(at, "web.service.registry.", "SRV")
        assert rcode == dns.rcode.NOERROR and [r.split()[2] for r in srv] == ["8080", "8080"], (name, srv)

    # The writer's session survived the restore: its next write is applied, not stale.
    made = client.register("late", "10.1.0.7", 80)
    assert made.created and made.index > restored["index"]
    assert set(client.services()) >= {"web", "db", "late"}


def test_a_damaged_snapshot_is_refused_before_anything_is_sent(cluster: Cluster, tmp_path: Path) -> None:
    """A snapshot file with one flipped byte fails `inspect` and `restore` with exit 2 and a
    message naming the checksum; the cluster's catalogue is untouched."""
    client = cluster.client(timeout_s=20)
    client.register("web", "10.2.0.1", 80)
    path = tmp_path / "s.snap"
    _json(run_cli("snapshot", "save", str(path), *_servers(cluster), "--json"))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    client.register("web", "10.2.0.2", 80)
    for argv in (("inspect", str(path)), ("restore", str(path), "--yes", *_servers(cluster))):
        result = run_cli("snapshot", *argv)
        assert result.returncode == 2 and "checksum" in result.stderr, (argv, result)
    assert len(client.services("web")["web"]) == 2


def test_the_nodes_refuse_a_bad_snapshot_sent_by_a_client(cluster: Cluster) -> None:
    """Bytes that are not a catalogue snapshot are refused before the log (`invalid`); a snapshot
    whose checksum holds but whose content is not canonical is refused when applied, the same
    way on every node (`invalid`), and changes nothing."""
    client = cluster.client(timeout_s=20)
    client.register("web", "10.3.0.1", 80)
    with pytest.raises(ValidationFailed, match="not a valid catalogue snapshot") as caught:
        client.snapshot_restore(b"definitely not a snapshot")
    assert caught.value.code == "invalid"
    body = msgpack.packb([1, 1, [["WEB", [["a", "10.0.0.1", 80, [], []]]]], []], use_bin_type=True)
    sealed = SNAPSHOT_MAGIC + SNAPSHOT_FORMAT.to_bytes(2, "big") + hashlib.sha256(body).digest() + body
    with pytest.raises(ValidationFailed, match="cannot restore") as caught:
        client.snapshot_restore(sealed)
    assert caught.value.code == "invalid"
    assert [i.address for i in client.services("web")["web"]] == ["10.3.0.1"]
    client.register("web", "10.3.0.2", 80)  # the cluster carries on


def test_a_restore_larger_than_a_normal_request_is_forwarded_and_applied_everywhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A snapshot over the 256 KiB request limit (and the 128 KiB forward limit of normal
    writes), restored through a follower, reaches every node and every node's DNS."""
    made = Catalogue()
    for i in range(5000):
        command = Register(f"svc{i % 50}", f"10.4.{i // 256}.{i % 256}", 8000 + i % 7, meta={"n": str(i), "zone": "rack-a"})
        made.apply(i + 1, encode_request(Request("gen", i + 1, command)))
    data = made.to_bytes()
    assert len(data) > 256 * 1024
    meta = SnapshotMeta(Index(made.applied_index), Term(1), Membership(frozenset({NodeId(1)})))
    path = tmp_path / "big.snap"
    write_snapshot_file(path, Snapshot(meta, data), kind="save")

    leader = cluster.wait_for_leader().node
    follower = next(n for n in cluster.names if n != leader)
    restored = _json(run_cli("snapshot", "restore", str(path), "--yes", "--server", cluster[follower].client,
                             "--json"))
    assert (restored["services"], restored["instances"]) == (50, 5000)
    want = {f"10.4.{i // 256}.{i % 256}" for i in range(5000) if i % 50 == 7}
    for name in cluster.names:
        with Client([cluster[name].client], timeout_s=5) as one:
            def caught_up(one: Client = one) -> Services | None:
                got = one.services(stale=True)
                return got if got.index >= restored["index"] else None

            local = poll(f"{name} applies the restore", caught_up, WAIT_S)
            assert sum(len(items) for items in local.values()) == 5000, name
            assert {i.address for i in local["svc7"]} == want, name
        at = cluster[name].dns_address
        poll(f"{name}'s DNS serves the restored svc7",
             lambda at=at: True if set(_dns_answers(at, "svc7.service.registry.", "A", tcp=True) or ()) == want
             else None, WAIT_S)
