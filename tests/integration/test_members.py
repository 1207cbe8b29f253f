"""`registry members` with real agent processes (issue 15, point 3): the leader's view through
any node, as a table and as JSON; and the member directory kept with each snapshot, read back
after a restart."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from registry.storage.snapfile import read_snapshot_members

from .cluster import LEADER_TIMEOUT_S, Cluster, poll, run_cli

pytestmark = pytest.mark.integration

SNAPSHOT_ENTRIES = 5  # small, so that a few writes make every node take a snapshot


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("members"), 3,
                      extra_args=("--snapshot-entries", str(SNAPSHOT_ENTRIES), "--snapshot-keep", "0"))
    try:
        cluster.start()
        cluster.wait_answering()
        cluster.wait_for_leader()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(shared: Cluster, attach_cluster_logs: Callable[[Cluster], Cluster]) -> Cluster:
    return attach_cluster_logs(shared)


def members_json(cluster: Cluster, via: str) -> dict[str, Any]:
    proc = run_cli("members", "--json", "--server", cluster[via].client)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_members_json_through_every_node(cluster: Cluster) -> None:
    """Asked at the leader or at a follower (which asks the leader), the answer is the leader's:
    three voters, the leader marked, fault tolerance 1, and after a write every match index
    equal to the leader's last index."""
    leader = cluster.wait_for_leader()
    with cluster.client() as client:
        client.register("members-web", "10.9.0.1", 80)

    def settled(via: str) -> dict[str, Any] | None:
        got = members_json(cluster, via)
        matches = {m["match"] for m in got["members"]}
        return got if len(matches) == 1 and None not in matches else None

    for via in cluster.names:
        got = poll(f"equal match indexes in `members` through {via}", lambda: settled(via), LEADER_TIMEOUT_S,  # noqa: B023
                   describe=lambda: str(members_json(cluster, via)))  # noqa: B023
        assert got["leader"] == leader.node and got["voters"] == 3 and got["learners"] == 0
        assert got["fault_tolerance"] == 1 and got["min_fault_tolerance"] == 1
        assert [m["name"] for m in got["members"]] == sorted(cluster.names)
        assert [m["name"] for m in got["members"] if m["leader"]] == [leader.node]
        assert all(m["role"] == "voter" for m in got["members"])
        assert {m["name"]: m["raft"] for m in got["members"]} == {n: cluster[n].raft for n in cluster.names}
        status = cluster.status(leader.node)
        assert got["members"][0]["match"] >= status.commit - 1 >= 1  # premise: the write is in every log
        for m in got["members"]:
            assert m["last_contact_s"] is not None and 0 <= m["last_contact_s"] < LEADER_TIMEOUT_S


def test_members_table(cluster: Cluster) -> None:
    """The table for people: one row per member, the leader starred, then the fault tolerance."""
    leader = cluster.wait_for_leader()
    proc = run_cli("members", *[a for n in cluster.names for a in ("--server", cluster[n].client)])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "RAFT", "ROLE", "MATCH", "LAST", "CONTACT", "LEADER"]
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert set(rows) == set(cluster.names)
    assert rows[leader.node].rstrip().endswith("*") and all(
        not row.rstrip().endswith("*") for name, row in rows.items() if name != leader.node)
    assert "fault tolerance: 1" in lines[4] and f"leader {leader.node}" in lines[4]


def snapshot_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "snapshots").glob("snap-*.snap"))


def test_the_directory_is_stored_with_each_snapshot_and_read_after_a_restart(cluster: Cluster) -> None:
    """Every node's own snapshots record the member directory; a restarted node opens with it
    and `members` still lists the same three voters."""
    with cluster.client() as client:
        for port in range(1, 2 * SNAPSHOT_ENTRIES + 2):
            client.register("members-snap", "10.9.0.2", port)

    def recorded(name: str) -> list[dict[str, Any]] | None:
        files = snapshot_files(cluster[name].data_dir)
        members = read_snapshot_members(files[-1]) if files else None
        return None if members is None else msgpack.unpackb(members)

    for name in cluster.names:
        stored = poll(f"{name} taking a snapshot with its member directory", lambda: recorded(name),  # noqa: B023
                      LEADER_TIMEOUT_S)
        assert {m["name"]: m["raft"] for m in stored} == {n: cluster[n].raft for n in cluster.names}
        assert [m["client"] for m in stored if m["name"] == name] == [cluster[name].client]
    follower = next(n for n in cluster.names if n != cluster.wait_for_leader().node)
    assert cluster.kill(follower, signal.SIGTERM) == 0
    cluster.restart(follower)
    line = "member directory as stored with the snapshot, with the configuration applied: " + ", ".join(
        f"{n}={cluster[n].raft}" for n in sorted(cluster.names))
    assert line in cluster[follower].log_text(), cluster[follower].tail()
    got = poll("three voters after the restart", lambda: (lambda g: g if g["voters"] == 3 else None)(
        members_json(cluster, follower)), LEADER_TIMEOUT_S)
    assert sorted(m["name"] for m in got["members"]) == sorted(cluster.names)
