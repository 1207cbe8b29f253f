"""The client against real agents that have lost their quorum (issue 13, "what a new user hit"):
with two of three nodes stopped, a write fails fast saying why, through the library and the CLI,
and works again once a majority is back.
"""

from __future__ import annotations

import signal
import time

import pytest

from registry.client import Client, NodeStatus, Unavailable

from .cluster import LEADER_TIMEOUT_S, Cluster, poll, run_cli

pytestmark = pytest.mark.integration

# Large, so that "it did not wait for the timeout" is unmistakable on a loaded machine.
CLIENT_TIMEOUT_S = 30.0


def stop_two_and_see_no_leader(cluster: Cluster) -> str:
    """Stop every node but one (SIGTERM) and wait until the survivor says it has no leader (it
    steps down or stops following within an election timeout: check-quorum). Returns its name."""
    cluster.wait_for_leader()
    survivor, *others = cluster.names
    for name in others:
        assert cluster.kill(name, signal.SIGTERM) == 0
    with Client([cluster[survivor].client], timeout_s=5.0) as client:

        def leaderless() -> NodeStatus | None:
            status = client.status()
            return status if status.leader is None and status.role != "leader" else None

        poll(f"{survivor} without a leader", leaderless, LEADER_TIMEOUT_S)
    return survivor


def test_a_write_fails_fast_when_the_cluster_has_lost_its_quorum(make_cluster) -> None:
    """Two of three nodes stopped: a write through a client that knows all three fails well
    before its timeout with 'no leader: the cluster has lost its quorum (1 of 3 nodes reachable)',
    naming each server's reason; with a majority back, the same client writes again."""
    cluster = make_cluster(3)
    survivor = stop_two_and_see_no_leader(cluster)
    with cluster.client(timeout_s=CLIENT_TIMEOUT_S) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            client.register("web", "10.0.0.5", 8080)
        elapsed = time.monotonic() - started
        error = caught.value
        assert "no leader: the cluster has lost its quorum (1 of 3 nodes reachable" in str(error), str(error)
        assert error.code == "no_leader"
        assert f"{cluster[survivor].client}: no_leader" in str(error)
        for name in cluster.names:
            if name != survivor:
                assert f"{cluster[name].client}: connection refused" in str(error), str(error)
        # It did not wait for its timeout: at most a round of attempts and the node's own wait.
        assert elapsed < CLIENT_TIMEOUT_S / 2, f"took {elapsed:.1f} s of a {CLIENT_TIMEOUT_S:g} s timeout"

        cluster.restart(cluster.names[1])
        cluster.wait_for_leader(names=[survivor, cluster.names[1]])
        assert client.register("web", "10.0.0.5", 8080).created


def test_the_cli_says_the_quorum_is_lost_and_exits_1(make_cluster) -> None:
    """`registry register` against the same leaderless cluster exits 1 with the quorum message,
    well before its --timeout."""
    cluster = make_cluster(3)
    stop_two_and_see_no_leader(cluster)
    servers = [arg for name in cluster.names for arg in ("--server", cluster[name].client)]
    started = time.monotonic()
    done = run_cli("register", "web", "10.0.0.5:8080", *servers, "--timeout", f"{CLIENT_TIMEOUT_S:g}")
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no leader: the cluster has lost its quorum (1 of 3 nodes reachable" in done.stderr
    assert elapsed < CLIENT_TIMEOUT_S / 2, f"took {elapsed:.1f} s of a {CLIENT_TIMEOUT_S:g} s timeout"
