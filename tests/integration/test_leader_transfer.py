"""Leadership transfer with real agent processes (issue 15, point 4): `registry leader transfer
[NAME]` to a named node, to the most caught-up voter, through a follower, refused for an unknown
name; SIGTERM on a leader hands leadership over before the agent exits; and writes from clients
that retry with their default budget go on through that SIGTERM without one failure.

Whether a new leader came through the hand-over is read from the logs and statuses (the old
leader's "handed leadership over to X: it leads in term T", X's "leader, term T"), never from
how fast it happened: bench/handover.py measures that (docs/deploy.md has the figures).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from registry.client import Client, NodeStatus, RegistryError, TransferFailed, ValidationFailed

from .cluster import LEADER_TIMEOUT_S, STOP_TIMEOUT_S, Cluster, poll, run_cli

pytestmark = pytest.mark.integration

TRANSFER_CLIENT_TIMEOUT_S = 30.0  # the client's whole budget; a hand-over takes a round trip or two
THREAD_JOIN_S = 60.0
WRITES_BEFORE = 20  # acknowledged writes before the SIGTERM, so that writes are flowing when it comes
WRITES_AFTER = 20  # ... and after the old leader exited, so that they flow through the new one


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A started 3-node cluster with a leader, shared by the tests that do not stop a node."""
    cluster = Cluster(tmp_path_factory.mktemp("transfer-shared"), 3)
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


def followers(cluster: Cluster, leader: NodeStatus) -> list[str]:
    return [n for n in cluster.live() if n != leader.node]


def servers_flags(cluster: Cluster, names: list[str]) -> list[str]:
    return [arg for name in names for arg in ("--server", cluster[name].client)]


def handed_over(cluster: Cluster, old: str, new: str, term: int) -> None:
    """Assert, from the logs, that `old` saw `new` take over through the transfer in `term` and
    that `new` logged becoming leader in that term. NB: `new` logs it after sending its first
    messages, so `old` may know before `new`'s line is written: that one is waited for."""
    assert f"handed leadership over to {new}: it leads in term {term}," in cluster[old].log_text(), \
        cluster[old].tail()
    line = f"node={new} term={term} leader, term {term}, leader {new}"
    poll(f"{new} logging that it leads in term {term}", lambda: True if line in cluster[new].log_text() else None,
         LEADER_TIMEOUT_S, describe=lambda: cluster[new].tail(5))


def test_transfer_to_a_named_node_with_the_cli(cluster: Cluster) -> None:
    """`registry leader transfer NAME --json` (the real CLI) moves leadership to NAME in the next
    term; every node then agrees on it, and the old leader logged the hand-over."""
    leader = cluster.wait_for_leader()
    target = followers(cluster, leader)[-1]
    proc = run_cli("leader", "transfer", target, "--json", "--timeout", str(TRANSFER_CLIENT_TIMEOUT_S),
                   *servers_flags(cluster, cluster.names))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["leader"] == target and got["previous"] == leader.node and got["moved"] is True
    assert got["term"] == leader.term + 1
    handed_over(cluster, leader.node, target, got["term"])
    assert cluster.wait_for_leader(above_term=leader.term).node == target


def test_transfer_without_a_name_picks_the_most_caught_up_voter(cluster: Cluster) -> None:
    """With one follower paused (SIGSTOP) while entries are committed, it lags; a transfer with
    no name goes to the other follower, the one holding the whole log."""
    leader = cluster.wait_for_leader()
    lagging, current = followers(cluster, leader)
    cluster[lagging].signal(signal.SIGSTOP)
    try:
        with cluster.client([leader.node, current], timeout_s=TRANSFER_CLIENT_TIMEOUT_S) as client:
            for port in range(1, 6):
                client.register("caught-up", "10.7.0.1", port)
            status = cluster.status(leader.node)
            assert status.role == "leader", status
            ahead, behind = status.peers[current].match, status.peers[lagging].match
            assert ahead is not None and behind is not None and ahead > behind, status.peers  # premise: a lag
            got = client.transfer_leadership()
    finally:
        cluster[lagging].signal(signal.SIGCONT)
    assert (got.leader, got.previous, got.term) == (current, leader.node, leader.term + 1)
    handed_over(cluster, leader.node, current, got.term)
    assert cluster.wait_for_leader(above_term=leader.term).node == current


def test_transfer_through_a_follower(cluster: Cluster) -> None:
    """A follower takes the request, forwards it to the leader and answers once the leader says
    the target took over; here the target is the follower itself."""
    leader = cluster.wait_for_leader()
    via = followers(cluster, leader)[0]
    with cluster.client(via, timeout_s=TRANSFER_CLIENT_TIMEOUT_S) as client:  # only the follower
        got = client.transfer_leadership(via)
    assert (got.leader, got.previous, got.term) == (via, leader.node, leader.term + 1)
    handed_over(cluster, leader.node, via, got.term)
    assert cluster.wait_for_leader(above_term=leader.term).node == via


def test_naming_the_leader_moves_nothing(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    with cluster.client(followers(cluster, leader)[0], timeout_s=TRANSFER_CLIENT_TIMEOUT_S) as client:
        got = client.transfer_leadership(leader.node)
    assert (got.leader, got.previous, got.term, got.moved) == (leader.node, leader.node, leader.term, False)


def test_an_unknown_name_is_refused_and_nothing_moves(cluster: Cluster) -> None:
    """A name that is no member is `invalid` (exit 2 from the CLI, with the members named),
    through the leader or a follower, and leadership stays where it was."""
    leader = cluster.wait_for_leader()
    for via in (leader.node, followers(cluster, leader)[0]):
        with cluster.client(via, timeout_s=TRANSFER_CLIENT_TIMEOUT_S) as client:
            with pytest.raises(ValidationFailed, match="no member is named 'n9'") as err:
                client.transfer_leadership("n9")
        assert err.value.code == "invalid"
    proc = run_cli("leader", "transfer", "n9", *servers_flags(cluster, cluster.names))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "no member is named 'n9'; the members are n1, n2, n3" in proc.stderr
    after = cluster.wait_for_leader()
    assert (after.node, after.term) == (leader.node, leader.term)


def test_sigterm_on_the_leader_hands_over_before_it_exits(make_cluster: Callable[..., Cluster]) -> None:
    """SIGTERM on a leader: it hands leadership to the most caught-up voter, sees it lead, then
    exits 0. The new leader was elected through the transfer (the old leader's log and the new
    leader's say so), in the next term."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    with cluster.client() as client:
        made = client.register("sigterm", "10.7.1.1", 80)
    cluster.wait_converged(at_least=made.index)
    assert cluster.kill(leader.node, signal.SIGTERM, timeout_s=STOP_TIMEOUT_S) == 0
    log = cluster[leader.node].log_text()
    assert "stop requested on the leader: handing leadership over first" in log
    assert "stopping after the hand-over to" in log and "leadership transfer failed" not in log
    new = cluster.wait_for_leader(above_term=leader.term)
    handed_over(cluster, leader.node, new.node, leader.term + 1)
    with cluster.client(new.node) as client:
        assert [i.port for i in client.services("sigterm")["sigterm"]] == [80]


def test_a_follower_exits_at_once_on_sigterm(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    follower = followers(cluster, leader)[0]
    assert cluster.kill(follower, signal.SIGTERM, timeout_s=STOP_TIMEOUT_S) == 0
    assert "handing leadership over" not in cluster[follower].log_text()
    after = cluster.wait_for_leader()
    assert (after.node, after.term) == (leader.node, leader.term)


def test_a_second_sigterm_stops_a_hand_over_at_once(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """With both followers paused the hand-over cannot end (its deadline here is 20 s: slow ticks);
    a second SIGTERM makes the leader stop at once, neither handed over nor timed out."""
    config = tmp_path / "slow.toml"
    config.write_text("tick_interval_ms = 200\nelection_ticks = 60\n")  # hand-over bound: min(20, 2*119*0.2) s
    cluster = make_cluster(3, extra_args=["--config", str(config)])
    leader = cluster.wait_for_leader()
    paused = followers(cluster, leader)
    for name in paused:
        cluster[name].signal(signal.SIGSTOP)
    try:
        cluster[leader.node].signal(signal.SIGTERM)
        poll("the leader logs that the hand-over began",
             lambda: True if "handing leadership over to" in cluster[leader.node].log_text() else None,
             LEADER_TIMEOUT_S, describe=lambda: cluster[leader.node].tail(5))
        cluster[leader.node].signal(signal.SIGTERM)
        assert cluster[leader.node].wait_exit(STOP_TIMEOUT_S) == 0
    finally:
        for name in paused:
            cluster[name].signal(signal.SIGCONT)
    log = cluster[leader.node].log_text()
    assert "handed leadership over" not in log and "did not take over within" not in log
    assert "stopped" in cluster[leader.node].tail(3)


@dataclass
class Writer:
    """A thread that registers one new instance after another through one Client (default
    retry budget), recording each write's outcome and latency, until told to stop."""

    client: Client
    service: str
    acked: list[tuple[int, int, float]] = field(default_factory=list)  # (port, index, latency s)
    failed: list[tuple[int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"writer-{self.service}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        port = 0
        while not self.stop.is_set() and port < 60_000:
            port += 1
            began = time.monotonic()
            try:
                got = self.client.register(self.service, "10.7.2.1", port)
            except RegistryError as e:
                self.failed.append((port, str(e)))
                continue
            self.acked.append((port, got.index, time.monotonic() - began))

    def join(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(THREAD_JOIN_S)
        assert not self.thread.is_alive(), f"{self.service} writer did not stop"


def test_writes_go_on_through_a_sigterm_of_the_leader_without_a_failure(make_cluster: Callable[..., Cluster]) -> None:
    """Two clients write without pause, one asking the leader first and one a follower; the
    leader gets SIGTERM, hands over and exits. Every write is acknowledged (0 failures, with the
    clients' default retry budget) and every acknowledged write is in the catalogue after."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    others = followers(cluster, leader)
    writers = [Writer(cluster.client([leader.node, *others]), "via-leader"),
               Writer(cluster.client([others[0], others[1], leader.node]), "via-follower")]
    for writer in writers:
        writer.start()
    try:
        poll("writes flowing before the SIGTERM", lambda: True if all(
            len(w.acked) >= WRITES_BEFORE for w in writers) else None, LEADER_TIMEOUT_S,
            describe=lambda: repr([(w.service, len(w.acked), w.failed[-1:]) for w in writers]))
        before = [len(w.acked) for w in writers]
        assert cluster.kill(leader.node, signal.SIGTERM, timeout_s=STOP_TIMEOUT_S) == 0
        exited = [len(w.acked) for w in writers]
        poll("writes flowing through the new leader", lambda: True if all(
            len(w.acked) >= n + WRITES_AFTER for w, n in zip(writers, exited)) else None, LEADER_TIMEOUT_S,
            describe=lambda: repr([(w.service, len(w.acked), w.failed[-1:]) for w in writers]))
    finally:
        for writer in writers:
            writer.join()
    for writer in writers:
        assert writer.failed == [], f"{writer.service}: {writer.failed[:3]}"
    new = cluster.wait_for_leader(above_term=leader.term)
    handed_over(cluster, leader.node, new.node, leader.term + 1)
    assert all(n > 0 for n in before)
    with cluster.client(others) as client:
        stored = client.services()
    for writer in writers:
        ports = sorted(i.port for i in stored[writer.service])
        assert ports == [port for port, _, _ in writer.acked], f"{writer.service}: acknowledged writes missing"
