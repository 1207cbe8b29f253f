"""Linearizable reads through ReadIndex (Raft §6.4; dissertation §6.4).

The leader records its commit index, confirms it still leads with a heartbeat round acknowledged
by a quorum, and only then hands out a ReadState. Grouped: leader reads, a new leader's first
commit, batching, follower reads, deposed leaders, and the edge cases.
"""

from __future__ import annotations

import pytest

from registry.raft import (
    Heartbeat,
    HeartbeatResponse,
    NoLeader,
    NodeId,
    ReadIndex,
    ReadIndexResponse,
    ReadState,
    Role,
)

from .env import Cluster


def stable_cluster(voters: tuple[int, ...] = (1, 2, 3)) -> Cluster:
    c = Cluster(voters=voters)
    c.campaign(1)
    c.propose(1, b"x")
    c.stabilize()
    return c


def beats(c: Cluster, *, since: int = 0) -> list[Heartbeat]:
    return [m for m in c.sent[since:] if isinstance(m, Heartbeat)]


# -- §6.4: the leader confirms its leadership before answering -----------------------------------


def test_leader_read_yields_commit_index_only_after_a_quorum_confirms_a_heartbeat_round() -> None:
    """A ReadState comes out only once a majority acknowledged a heartbeat sent after the request
    (§6.4 step 3), and it carries the commit index at the time of the request (step 1)."""
    c = stable_cluster()
    commit = c.raft(1).log.commit_index
    mark = len(c.sent)
    c.nodes[NodeId(1)].read_index(b"r")
    c.process(1)
    assert c.read_states[NodeId(1)] == []
    round_ = beats(c, since=mark)
    assert {m.target for m in round_} == {2, 3}
    assert len({m.read_seq for m in round_}) == 1

    c.deliver(lambda m: isinstance(m, Heartbeat) and m.target == 2)  # node 3 never hears it
    c.process(2)
    assert c.read_states[NodeId(1)] == []  # the acknowledgement is still in flight
    c.deliver()
    c.process(1)
    assert c.read_states[NodeId(1)] == [ReadState(commit, b"r")]


def test_leader_read_needs_a_majority_not_just_one_follower() -> None:
    """In a five-node cluster one acknowledgement (two of five with the leader) is not enough."""
    c = stable_cluster((1, 2, 3, 4, 5))
    c.nodes[NodeId(1)].read_index(b"r")
    c.process(1)
    c.deliver(lambda m: m.target in (2, 3))
    c.process(2)
    c.deliver(lambda m: m.source == 2)
    c.process(1)
    assert c.read_states[NodeId(1)] == []
    c.process(3)
    c.deliver(lambda m: m.source == 3)
    c.process(1)
    assert c.read_states[NodeId(1)] == [ReadState(c.raft(1).log.commit_index, b"r")]


def test_acknowledgement_of_an_earlier_heartbeat_does_not_confirm_a_read() -> None:
    """A heartbeat sent before the read was requested proves nothing about leadership after it."""
    c = stable_cluster()
    c.tick(1, c.raft(1).config.heartbeat_ticks)
    c.process(1)
    c.deliver()
    c.process_all()
    old_acks = [m for m in c.pending if isinstance(m, HeartbeatResponse)]
    assert len(old_acks) == 2
    c.pending.clear()

    c.nodes[NodeId(1)].read_index(b"r")
    c.process(1)
    c.pending.clear()  # this round is lost
    for m in old_acks:  # late acknowledgements of the earlier round arrive
        c.nodes[NodeId(1)].step(m)
    c.process(1)
    assert c.read_states[NodeId(1)] == []


def test_read_index_is_the_commit_index_when_requested_not_when_confirmed() -> None:
    """Entries committed while the round is in flight do not raise the read's index (§6.4)."""
    c = stable_cluster()
    commit = c.raft(1).log.commit_index
    c.nodes[NodeId(1)].read_index(b"r")
    c.propose(1, b"later")
    c.stabilize()
    assert c.raft(1).log.commit_index > commit
    assert c.read_states[NodeId(1)] == [ReadState(commit, b"r")]


def test_new_leader_defers_reads_until_it_commits_an_entry_of_its_term() -> None:
    """A fresh leader does not know the latest commit index until its no-op commits (§6.4 step 1);
    reads wait for that, then take the no-op's index."""
    c = Cluster()
    c.nodes[NodeId(1)].campaign()
    for _ in range(10):  # deliver the election only
        c.process_all()
        c.deliver()
        if c.raft(1).role is Role.LEADER:
            break
    assert c.raft(1).role is Role.LEADER
    noop = c.raft(1).log.last_index
    c.nodes[NodeId(1)].read_index(b"early")
    mark = len(c.sent)
    c.process(1)
    assert beats(c, since=mark) == []  # no confirmation round before the no-op commits
    c.deliver()
    c.process_all()
    assert c.read_states[NodeId(1)] == []
    c.stabilize()
    assert c.raft(1).log.commit_index == noop
    assert c.read_states[NodeId(1)] == [ReadState(noop, b"early")]


def test_reads_in_one_batch_share_one_heartbeat_round() -> None:
    """Several reads requested before one Ready cost one heartbeat per follower, not one each."""
    c = stable_cluster()
    commit = c.raft(1).log.commit_index
    mark = len(c.sent)
    for ctx in (b"a", b"b", b"c"):
        c.nodes[NodeId(1)].read_index(ctx)
    c.stabilize()
    sent = beats(c, since=mark)
    assert sorted(m.target for m in sent) == [2, 3]
    assert c.read_states[NodeId(1)] == [ReadState(commit, b"a"), ReadState(commit, b"b"), ReadState(commit, b"c")]


# -- §6.4: reads served through followers ----------------------------------------------------


def test_follower_read_is_forwarded_to_the_leader_and_answered_on_the_follower() -> None:
    """A follower forwards ReadIndex to the leader; the leader confirms and answers; the follower
    gets the ReadState (§6.4, 'reads from followers')."""
    c = stable_cluster()
    commit = c.raft(1).log.commit_index
    mark = len(c.sent)
    c.nodes[NodeId(2)].read_index(b"f")
    c.stabilize()
    forwarded = [m for m in c.sent[mark:] if isinstance(m, ReadIndex)]
    assert [(m.source, m.target, m.context) for m in forwarded] == [(2, 1, b"f")]
    answers = [m for m in c.sent[mark:] if isinstance(m, ReadIndexResponse)]
    assert [(m.target, m.index, m.context) for m in answers] == [(2, commit, b"f")]
    assert c.read_states[NodeId(2)] == [ReadState(commit, b"f")]
    assert c.read_states[NodeId(1)] == []


def test_follower_read_is_answered_only_after_the_leaders_round_is_confirmed() -> None:
    """The leader answers a follower's read only after a quorum confirmed its round."""
    c = stable_cluster()
    c.nodes[NodeId(2)].read_index(b"f")
    c.process(2)
    c.deliver()  # ReadIndex reaches the leader
    c.process(1)
    c.deliver(lambda m: not isinstance(m, Heartbeat))  # the round is lost
    c.stabilize()
    assert c.read_states[NodeId(2)] == []
    assert not any(isinstance(m, ReadIndexResponse) for m in c.sent)


# -- deposed leaders -------------------------------------------------------------------------


def test_leader_in_a_minority_partition_never_yields_a_read_state() -> None:
    """A leader cut off with a minority, unaware that a new leader was elected, never answers a
    read: its followers' acknowledgements do not add up to a quorum (§6.4, §8)."""
    c = stable_cluster((1, 2, 3, 4, 5))
    c.partition([1, 2], [3, 4, 5])
    for _ in range(100):  # only the majority side's clocks run
        for n in (3, 4, 5):
            c.tick(n)
        c.stabilize()
        if c.leader() in (3, 4, 5):
            break
    assert c.leader() in (3, 4, 5)
    assert c.raft(1).role is Role.LEADER  # deposed, but it does not know yet
    mark = len(c.sent)
    c.nodes[NodeId(1)].read_index(b"stale?")
    c.stabilize()
    c.tick(1, c.raft(1).config.heartbeat_ticks)
    c.stabilize()
    acks = [m for m in c.sent[mark:] if isinstance(m, HeartbeatResponse) and m.target == 1]
    assert acks and {m.source for m in acks} == {2}  # its minority follower does confirm
    assert c.read_states[NodeId(1)] == []

    c.heal()
    c.tick(1, c.raft(1).config.heartbeat_ticks)
    c.stabilize()
    assert c.raft(1).role is Role.FOLLOWER
    assert c.read_states[NodeId(1)] == []


def test_isolated_leader_never_yields_a_read_state_and_drops_it_on_stepping_down() -> None:
    """A leader that hears from nobody keeps the read pending, then drops it when check-quorum
    makes it step down; it never answers."""
    c = stable_cluster()
    c.isolate(1)
    c.nodes[NodeId(1)].read_index(b"r")
    for _ in range(3 * c.raft(1).config.election_ticks):
        c.tick(1)
        c.stabilize()
    assert c.raft(1).role is not Role.LEADER
    c.heal()
    c.tick_all(3 * c.raft(1).config.election_ticks)
    assert c.read_states[NodeId(1)] == []


# -- edge cases ----------------------------------------------------------------------------------


def test_read_index_without_a_known_leader_raises_no_leader() -> None:
    """A follower that knows no leader cannot forward a read: NoLeader, and nothing is sent."""
    c = Cluster()
    with pytest.raises(NoLeader):
        c.nodes[NodeId(2)].read_index(b"r")
    assert not c.nodes[NodeId(2)].has_ready()


def test_single_node_cluster_answers_a_read_at_once() -> None:
    """With one voter the leader is its own quorum: the ReadState comes in the next Ready with no
    messages."""
    c = Cluster(voters=(1,))
    c.campaign(1)
    c.propose(1, b"x")
    c.stabilize()
    commit = c.raft(1).log.commit_index
    raw = c.nodes[NodeId(1)]
    raw.read_index(b"solo")
    rd = raw.ready()
    assert rd.read_states == (ReadState(commit, b"solo"),)
    assert rd.messages == ()
    raw.advance(rd)


def test_single_node_new_leader_answers_after_its_no_op_commits() -> None:
    """A single-node leader also waits for its no-op, which commits as soon as it is persisted."""
    c = Cluster(voters=(1,))
    raw = c.nodes[NodeId(1)]
    raw.campaign()
    assert c.raft(1).role is Role.LEADER
    raw.read_index(b"solo")
    c.process(1)
    assert c.read_states[NodeId(1)] == [ReadState(c.raft(1).log.last_index, b"solo")]
    assert c.raft(1).log.commit_index == c.raft(1).log.last_index
