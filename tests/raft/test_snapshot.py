"""Snapshots, compaction and InstallSnapshot (Raft §7 and figure 13).

The leader compacts its log behind a snapshot the caller made; a follower that needs a
compacted entry gets the snapshot in chunks (one in flight, resumable), installs it (discarding
a conflicting log, or keeping a matching suffix), and replication carries on after it.
"""

from __future__ import annotations

import random

import pytest

from registry.raft import (
    AppendEntriesResponse,
    Config,
    HardState,
    Index,
    InitialState,
    InstallSnapshot,
    InstallSnapshotResponse,
    LocalError,
    Membership,
    NodeId,
    ProgressState,
    Raft,
    RemoteError,
    Role,
    SnapshotMeta,
    Term,
)

from .env import Cluster, normal_data, run


def chunks(c: Cluster, *, target: int, since: int = 0) -> list[InstallSnapshot]:
    return [m for m in c.sent[since:] if isinstance(m, InstallSnapshot) and m.target == target]


def led_cluster(**config: object) -> Cluster:
    c = Cluster(**config)
    c.campaign(1)
    assert c.raft(1).role is Role.LEADER
    return c


def write(c: Cluster, leader: int, *payloads: bytes) -> None:
    for data in payloads:
        c.propose(leader, data)
    c.stabilize()


def test_a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() -> None:
    """The leader cannot send entries it compacted, so it sends its snapshot, then what follows."""
    c = led_cluster()
    c.isolate(3)
    write(c, 1, *(f"w{i}".encode() for i in range(10)))
    meta = c.compact(1)
    assert c.raft(1).log.first_index == meta.index + 1
    c.heal()
    c.tick_all(2)  # a heartbeat round: node 3 answers, the leader sees it lacks compacted entries
    write(c, 1, b"after")
    follower = c.raft(3)
    assert [s.meta for s in c.restored[NodeId(3)]] == [meta]
    assert follower.log.snapshot_index == meta.index
    assert follower.log.commit_index == follower.log.last_index == c.raft(1).log.last_index
    assert normal_data(c.applied[NodeId(3)]) == [b"after"]  # everything before came in the image
    assert c.disks[NodeId(3)].snapshot is not None and c.disks[NodeId(3)].snapshot.meta == meta
    assert c.raft(1).progress[NodeId(3)].state is ProgressState.REPLICATE


def test_snapshot_goes_out_in_chunks_of_max_msg_bytes_one_at_a_time() -> None:
    c = led_cluster(max_msg_bytes=4)
    c.isolate(3)
    write(c, 1, b"a", b"b")
    c.compact(1)
    image = c.raft(1).snapshot.data
    c.heal()
    since = len(c.sent)
    c.tick_all(2)
    sent = chunks(c, target=3, since=since)
    assert [m.offset for m in sent] == list(range(0, len(image), 4))
    assert b"".join(m.data for m in sent) == image
    assert [m.done for m in sent] == [False] * (len(sent) - 1) + [True]
    assert c.restored[NodeId(3)][0].data == image


def test_a_lost_chunk_is_resent_after_two_quiet_heartbeat_rounds() -> None:
    c = led_cluster(max_msg_bytes=4)
    c.isolate(3)
    write(c, 1, b"a")
    c.compact(1)
    c.heal()
    dropped = []

    def lose_second_chunk(m: object) -> bool:
        if isinstance(m, InstallSnapshot) and m.offset == 4 and not dropped:
            dropped.append(m)
            return False
        return True

    for _ in range(2):  # a heartbeat round starts the transfer; the second chunk vanishes
        c.tick_all(1, stabilize=False)
        for _ in range(10):
            c.process_all()
            c.deliver(lose_second_chunk)
    assert dropped and not c.restored[NodeId(3)]
    c.tick_all(3)
    assert len(c.restored[NodeId(3)]) == 1
    assert c.raft(3).log.commit_index == c.raft(1).log.commit_index


def test_follower_that_restarts_mid_transfer_makes_the_leader_start_over_from_byte_zero() -> None:
    """The partial copy lives only in memory: after a restart the follower answers 0 bytes held."""
    c = led_cluster(max_msg_bytes=4)
    c.isolate(3)
    write(c, 1, b"a")
    c.compact(1)
    c.heal()
    c.tick_all(1, stabilize=False)
    for _ in range(10):  # until the first chunk arrives
        c.process_all()
        c.deliver()
        if c.raft(3)._incoming is not None:
            break
    assert c.raft(3)._incoming is not None and c.raft(3)._incoming.received == 4
    c.process(3)  # its answer (4 bytes held) reaches the leader ...
    c.deliver(lambda m: m.target == 1)
    c.restart(3)  # ... and then it loses its partial copy
    since = len(c.sent)
    c.tick_all(4)
    answers = [m for m in c.sent[since:] if isinstance(m, InstallSnapshotResponse) and m.source == 3]
    assert answers and answers[0].received == 0
    assert [m.offset for m in chunks(c, target=3, since=since)][:2] == [4, 0]  # resumed, then over
    assert len(c.restored[NodeId(3)]) == 1


def test_snapshot_replaces_a_follower_log_that_conflicts_with_it() -> None:
    """Figure 13 step 7: a follower with uncommitted entries of a deposed leader discards them all."""
    members = Membership(frozenset({NodeId(1), NodeId(2), NodeId(3)}))
    c = Cluster(entries={1: run(1, [1, 3, 3]), 2: run(1, [1, 3, 3]), 3: run(1, [1, 2, 2, 2, 2])},
                hard_states={1: HardState(Term(3), commit=Index(1)), 2: HardState(Term(3), commit=Index(1)),
                             3: HardState(Term(2), commit=Index(1))})
    c.isolate(3)
    c.campaign(1)
    write(c, 1, b"x")
    meta = c.compact(1)
    assert meta.index == 5 and c.raft(3).log.term(4) == 2  # node 3 holds another term's entry at 4
    c.heal()
    c.tick_all(3)
    follower = c.raft(3)
    assert [s.meta.index for s in c.restored[NodeId(3)]] == [5]
    assert follower.log.snapshot_index == 5 and follower.log.last_index == c.raft(1).log.last_index
    assert follower.membership == members
    assert c.disks[NodeId(3)].entries == [c.raft(1).log.entry(i) for i in range(6, follower.log.last_index + 1)]


def test_follower_whose_log_holds_the_snapshot_point_keeps_its_suffix_and_restores_nothing() -> None:
    """Figure 13 step 6: when the snapshot's last entry is already in the log, keep what follows."""
    c2 = led_cluster(max_msg_bytes=1 << 20)
    write(c2, 1, b"a", b"b")
    raft3 = c2.raft(3)
    raft3.log.commit_index = Index(1)  # as if the commit had not reached it yet
    raft3.log.applied_index = raft3.log.applying_index = Index(1)
    index = Index(3)
    snap = InstallSnapshot(NodeId(1), NodeId(3), c2.raft(1).term,
                           SnapshotMeta(index, raft3.log.term(index), raft3.membership), 0, b"img", True)
    last = raft3.log.last_index
    c2.nodes[NodeId(3)].step(snap)
    assert raft3.log.last_index == last and raft3.log.commit_index == index
    assert raft3.take_installed() is None
    reply = raft3.take_messages()[-1]
    assert isinstance(reply, AppendEntriesResponse) and reply.success and reply.index == index


def test_a_snapshot_at_or_below_the_commit_index_is_answered_with_the_commit_index() -> None:
    c = led_cluster()
    write(c, 1, b"a", b"b")
    raft3 = c.raft(3)
    commit = raft3.log.commit_index
    c.nodes[NodeId(3)].step(InstallSnapshot(NodeId(1), NodeId(3), c.raft(1).term,
                                            SnapshotMeta(Index(2), Term(1), raft3.membership), 0, b"x", True))
    reply = raft3.take_messages()[-1]
    assert isinstance(reply, AppendEntriesResponse) and reply.success and reply.index == commit
    assert raft3.take_installed() is None and raft3.log.snapshot_index == 0


def test_a_newer_snapshot_taken_mid_transfer_restarts_the_transfer() -> None:
    c = led_cluster(max_msg_bytes=4)
    c.isolate(3)
    write(c, 1, b"a")
    first = c.compact(1)
    c.heal()
    c.tick_all(1, stabilize=False)
    c.process_all()
    c.deliver()  # the first chunk arrives, its answer is on the way
    c.isolate(3)
    write(c, 1, b"b", b"c")
    second = c.compact(1)
    assert second.index > first.index
    c.heal()
    c.tick_all(4)
    assert [s.meta.index for s in c.restored[NodeId(3)]] == [second.index]
    assert c.raft(3).log.commit_index == c.raft(1).log.commit_index


def test_kept_tail_lets_a_slightly_behind_follower_catch_up_with_entries() -> None:
    c = led_cluster()
    write(c, 1, b"a")
    c.isolate(3)
    write(c, 1, b"b", b"c")
    applied = c.raft(1).log.applied_index
    c.compact(1, keep=3)
    assert c.raft(1).log.first_index == applied - 3 + 1
    c.heal()
    c.tick_all(2)
    assert c.restored[NodeId(3)] == [] and not chunks(c, target=3)
    assert normal_data(c.applied[NodeId(3)]) == [b"a", b"b", b"c"]


def test_compact_refuses_unapplied_or_older_indexes() -> None:
    c = led_cluster()
    write(c, 1, b"a", b"b")
    raw = c.nodes[NodeId(1)]
    applied = raw.raft.log.applied_index
    with pytest.raises(LocalError, match="only .* is applied"):
        raw.compact(Index(applied + 1), b"x")
    raw.compact(applied, b"x")
    with pytest.raises(LocalError, match="newer"):
        raw.compact(Index(applied - 1), b"x")
    with pytest.raises(LocalError, match="needs its data"):
        raw.compact(applied, b"")
    assert raw.status().snapshot_index == applied


def test_a_restarted_leader_serves_the_snapshot_it_restored_from_disk() -> None:
    c = led_cluster()
    c.isolate(3)
    write(c, 1, b"a", b"b")
    meta = c.compact(1)
    c.restart(1)
    c.restart(2)
    assert c.raft(1).snapshot.meta == meta and c.raft(1).snapshot.data == f"image@{meta.index}".encode()
    c.heal()
    c.campaign(1)
    c.tick_all(3)
    assert [s.meta for s in c.restored[NodeId(3)]] == [meta]
    assert c.raft(3).log.commit_index == c.raft(1).log.commit_index


def test_a_chunk_from_a_stale_leader_teaches_it_the_newer_term() -> None:
    c = led_cluster()
    raft3 = c.raft(3)
    stale = InstallSnapshot(NodeId(1), NodeId(3), raft3.term, SnapshotMeta(Index(9), Term(1), raft3.membership),
                            0, b"x", True)
    raft3.term = Term(raft3.term + 1)  # node 3 has moved on
    c.nodes[NodeId(3)].step(stale)
    reply = raft3.take_messages()[-1]
    assert isinstance(reply, AppendEntriesResponse) and not reply.success and reply.term == raft3.term
    assert raft3.take_installed() is None


def test_a_candidate_receiving_a_chunk_of_its_term_becomes_a_follower() -> None:
    c = Cluster()
    c.tick_election(3)
    c.nodes[NodeId(3)].campaign()
    raft3 = c.raft(3)
    assert raft3.role in (Role.PRE_CANDIDATE, Role.CANDIDATE)
    raft3.become_candidate()
    c.nodes[NodeId(3)].step(InstallSnapshot(NodeId(1), NodeId(3), raft3.term,
                                            SnapshotMeta(Index(4), Term(1), raft3.membership), 0, b"ab", False))
    assert raft3.role is Role.FOLLOWER and raft3.leader_id == 1


@pytest.mark.parametrize("index, term, offset", [(0, 1, 0), (3, 0, 0), (3, 9, 0), (3, 1, -1)])
def test_impossible_install_snapshot_is_a_remote_error(index: int, term: int, offset: int) -> None:
    c = Cluster()
    raft3 = c.raft(3)
    with pytest.raises(RemoteError):
        c.nodes[NodeId(3)].step(InstallSnapshot(NodeId(1), NodeId(3), Term(max(raft3.term, 2)),
                                                SnapshotMeta(Index(index), Term(term), raft3.membership),
                                                offset, b"x", True))


def test_a_follower_claiming_more_bytes_than_the_snapshot_has_is_a_remote_error() -> None:
    c = led_cluster(max_msg_bytes=4)
    c.isolate(3)
    write(c, 1, b"a")
    meta = c.compact(1)
    c.heal()
    c.tick_all(1, stabilize=False)
    for _ in range(10):
        c.process_all()
        c.deliver()
        if c.raft(1).progress[NodeId(3)].state is ProgressState.SNAPSHOT:
            break
    with pytest.raises(RemoteError, match="claims"):
        c.nodes[NodeId(1)].step(InstallSnapshotResponse(NodeId(3), NodeId(1), c.raft(1).term, meta.index,
                                                        meta.term, 10_000))


def test_initial_state_with_a_snapshot_needs_its_data() -> None:
    members = Membership(frozenset({NodeId(1)}))
    with pytest.raises(ValueError, match="without its data"):
        Raft(Config(NodeId(1), random.Random(0)), InitialState(SnapshotMeta(Index(5), Term(1), members)))


def test_restart_replays_only_entries_after_the_snapshot() -> None:
    c = led_cluster()
    write(c, 1, b"a", b"b", b"c")
    meta = c.compact(2)
    write(c, 1, b"d")
    c.restart(2)
    c.process(2)
    raft2 = c.raft(2)
    assert raft2.log.snapshot_index == meta.index
    assert [(e.index, e.data) for e in c.applied[NodeId(2)]] == [(meta.index + 1, b"d")]


def test_leader_rewinds_to_a_follower_that_restarted_from_a_delayed_first_chunk() -> None:
    """Found by the simulator (5 nodes, seed 599): a follower restarts mid-transfer, then a
    delayed duplicate of the first chunk starts a new copy; it answers that it holds 1 byte
    while the leader is further on. The leader must believe the smaller count, not dismiss it
    as an old answer (which stalled the transfer forever)."""
    c = led_cluster(max_msg_bytes=1)
    c.isolate(3)
    write(c, 1, b"a", b"b")
    c.compact(1)
    c.heal()
    c.tick_all(1, stabilize=False)
    first_chunk: list[InstallSnapshot] = []
    for _ in range(20):  # until the follower holds 3 bytes
        c.process_all()
        first_chunk += [m for m in c.pending if isinstance(m, InstallSnapshot) and m.offset == 0]
        c.deliver()
        if c.raft(3)._incoming is not None and c.raft(3)._incoming.received >= 3:
            break
    c.process_all()
    c.deliver(lambda m: m.target == 1)  # the leader learns it holds 3 and sends the next chunk
    pr = c.raft(1).progress[NodeId(3)]
    assert pr.state is ProgressState.SNAPSHOT and pr.snapshot_offset >= 3
    c.restart(3)  # the partial copy is gone ...
    c.nodes[NodeId(3)].step(first_chunk[0])  # ... and a late duplicate of the first chunk starts another
    c.tick_all(6)
    assert len(c.restored[NodeId(3)]) == 1
    assert c.raft(3).log.commit_index == c.raft(1).log.commit_index
