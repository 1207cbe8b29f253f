"""Commitment and safety (Raft §5.4): quorum commit, the current-term rule of §5.4.2 with the
paper's figure 8, leader completeness (§5.4.1 / §5.4.3), how followers learn the commit index,
and durability of commit across a restart.

Grouped as etcd's raft_paper_test.go (TestLeaderCommitEntry, TestLeaderOnlyCommitsLogFromCurrentTerm,
TestFollowerCommitEntry, ...).
"""

from __future__ import annotations

from collections.abc import Callable

from registry.raft import (
    AppendEntries,
    HardState,
    Heartbeat,
    Index,
    Message,
    NodeId,
    RequestVoteResponse,
    Role,
    Term,
)

from .env import Cluster, run, settle, normal_data


def commit(c: Cluster, node: int) -> int:
    return c.raft(node).log.commit_index


def applied_pairs(c: Cluster, node: int) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in c.applied[NodeId(node)]]


# -- §5.3/§5.4: commit by quorum -------------------------------------------------------------------


def test_leader_commits_an_entry_once_a_majority_holds_it() -> None:
    """An entry is committed when the leader has replicated it on a majority (§5.3), not before."""
    c = Cluster(voters=(1, 2, 3, 4, 5))
    c.campaign(1)
    c.partition([1, 2], [3, 4, 5])
    index = c.propose(1, b"x")
    c.stabilize()
    assert c.raft(1).progress[NodeId(2)].match_index == index
    assert commit(c, 1) < index  # 2 of 5 hold it
    assert normal_data(c.applied[NodeId(1)]) == []

    c.heal()
    c.partition([1, 2, 3], [4, 5])
    c.tick(1, c.raft(1).config.heartbeat_ticks)  # a heartbeat lets node 3 ask for what it lacks
    c.stabilize()
    assert commit(c, 1) == index  # 3 of 5
    assert normal_data(c.applied[NodeId(1)]) == [b"x"]
    assert c.raft(4).log.last_index < index


def test_leader_counts_its_own_entry_only_once_persisted() -> None:
    """The leader's own copy counts towards the quorum only after the caller persisted it (§10.2.1)."""
    c = Cluster(voters=(1, 2, 3))
    c.campaign(1)
    index = c.propose(1, b"x")
    raw = c.nodes[NodeId(1)]
    rd = raw.ready()  # hands out the entry and the AppendEntries, but the leader has not persisted
    for m in rd.messages:
        c.nodes[m.target].step(m)
    c.process(2)
    for m in c.pending:
        raw.step(m)
    c.pending.clear()
    assert c.raft(1).progress[NodeId(2)].match_index == index
    assert commit(c, 1) < index  # only node 2's copy is durable
    raw.advance(rd)
    assert commit(c, 1) == index


def test_leader_commit_also_commits_all_preceding_entries() -> None:
    """Committing an entry commits every entry before it, including earlier terms' (§5.3)."""
    c = Cluster(
        entries={1: run(1, [1, 1, 2]), 2: run(1, [1, 1, 2]), 3: run(1, [1])},
        hard_states={1: HardState(Term(2), commit=Index(1)), 2: HardState(Term(2), commit=Index(1)),
                     3: HardState(Term(2), commit=Index(1))},
    )
    c.campaign(1)
    assert c.raft(1).role is Role.LEADER
    for node in (1, 2, 3):
        assert applied_pairs(c, node) == [(1, 1), (2, 1), (3, 2), (4, 3)]


# -- §5.4.2: only entries of the current term are committed by counting replicas -------------


def test_leader_does_not_commit_an_older_term_entry_by_counting_replicas() -> None:
    """An entry of an earlier term on a majority is not committed until an entry of the current
    term is (§5.4.2)."""
    c = Cluster(
        entries={1: run(1, [1, 2]), 2: run(1, [1]), 3: run(1, [1])},
        hard_states={n: HardState(Term(2), commit=Index(1)) for n in (1, 2, 3)},
        max_msg_bytes=1,  # one entry per AppendEntries, so index 2 can travel without index 3
    )
    c.nodes[NodeId(1)].campaign()  # below, the no-op of term 3 at index 3 never reaches a holder of 2

    def no_index_3(m: Message) -> bool:
        return not (isinstance(m, AppendEntries) and any(e.index == 3 for e in m.entries)
                    and c.raft(m.target).log.term(2) == 2)

    settle(c, no_index_3)
    leader = c.raft(1)
    assert leader.role is Role.LEADER and leader.term == 3
    assert {n: leader.progress[NodeId(n)].match_index for n in (1, 2, 3)} == {1: 3, 2: 2, 3: 2}
    assert leader.log.commit_index == 1  # index 2 (term 2) is on a majority, yet not committed
    assert all(commit(c, n) == 1 for n in (1, 2, 3))

    c.tick(1, leader.config.heartbeat_ticks)
    c.stabilize()
    assert leader.log.commit_index == 3  # the term-3 no-op commits index 2 along with it
    assert applied_pairs(c, 1) == [(1, 1), (2, 2), (3, 3)]


class Figure8:
    """The paper's figure 8 with five servers S1..S5, played step by step (Raft §5.4.2).

    Pre-vote and check-quorum are off, as in the paper. One entry per AppendEntries lets index 2
    travel alone. Every new leader appends a no-op (§8); it plays the role of the paper's
    client entries, so index 2 of term 2 is S1's no-op of term 2.
    """

    def __init__(self) -> None:
        c = self.c = Cluster(
            voters=(1, 2, 3, 4, 5), pre_vote=False, check_quorum=False, max_msg_bytes=1,
            entries={n: run(1, [1]) for n in range(1, 6)},
            hard_states={n: HardState(Term(1), commit=Index(1)) for n in range(1, 6)},
        )
        self.committed_seen: dict[int, set[tuple[int, int]]] = {n: set() for n in range(1, 6)}
        c.stabilize()

        # (a) S1 is leader in term 2 and replicates index 2 to S2 only.
        c.nodes[NodeId(1)].campaign()
        self.settle(lambda m: not isinstance(m, AppendEntries) or m.target == 2)
        assert c.raft(1).role is Role.LEADER and c.raft(1).term == 2
        assert self.terms() == {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1]}

        # (b) S1 crashes; S5 is elected in term 3 by S3, S4, S5 and appends index 2 of term 3 alone.
        c.isolate(1)
        c.nodes[NodeId(5)].campaign()
        self.settle(lambda m: not (isinstance(m, AppendEntries) and m.source == 5))
        assert c.raft(5).role is Role.LEADER and c.raft(5).term == 3
        assert self.terms() == {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]}

        # (c) S5 crashes; S1 restarts, is elected in term 4 and replicates index 2 (term 2) to S3
        # and S4, but its own term-4 entry at index 3 reaches nobody.
        c.heal()
        c.isolate(5)
        c.restart(1)
        c.nodes[NodeId(1)].campaign()  # term 3: S3 and S4 already voted for S5 in term 3
        self.settle(lambda m: True)
        if c.raft(1).role is not Role.LEADER:
            c.nodes[NodeId(1)].campaign()  # term 4

        def hold_back_index_3(m: Message) -> bool:
            return not (isinstance(m, AppendEntries) and any(e.index == 3 for e in m.entries)
                        and c.raft(m.target).log.term(2) == 2)

        self.settle(hold_back_index_3)
        assert c.raft(1).role is Role.LEADER and c.raft(1).term == 4
        assert self.terms() == {1: [1, 2, 4], 2: [1, 2], 3: [1, 2], 4: [1, 2], 5: [1, 3]}

    def settle(self, keep: Callable[[Message], bool]) -> None:
        settle(self.c, keep)
        for n in range(1, 6):
            self.committed_seen[n] |= {(e.index, e.term) for e in self.c.applied[NodeId(n)]}
            log = self.c.raft(n).log
            self.committed_seen[n] |= {(i, log.entry(i).term) for i in range(log.first_index, log.commit_index + 1)}

    def terms(self) -> dict[int, list[int]]:
        return {n: self.c.log_terms(n) for n in range(1, 6)}


def test_figure8_c_term2_entry_on_a_majority_is_not_committed() -> None:
    """Figure 8 (c): S1, leader of term 4, knows index 2 of term 2 is on a majority (S1, S3, S4,
    and S2 too) but must not commit it: it is not of the current term (§5.4.2)."""
    f = Figure8()
    leader = f.c.raft(1)
    matches = {n: leader.progress[NodeId(n)].match_index for n in (1, 3, 4)}
    assert matches == {1: 3, 3: 2, 4: 2}  # a quorum of match indexes at 2
    for n in range(1, 6):
        assert f.c.raft(n).log.commit_index == 1
        assert (2, 2) not in f.committed_seen[n], f"S{n} reported index 2 of term 2 committed"


def test_figure8_d_s5_overwrites_the_uncommitted_term2_entry() -> None:
    """Figure 8 (d): S1 crashes, S5 is elected by S2, S3, S4 (its last term 3 beats their 2) and
    overwrites index 2 everywhere with its own term-3 entry; nobody ever applied the term-2 one."""
    f = Figure8()
    c = f.c
    c.heal()
    c.isolate(1)
    c.restart(5)
    c.nodes[NodeId(5)].campaign()  # term 4: already voted for S1
    f.settle(lambda m: True)
    if c.raft(5).role is not Role.LEADER:
        c.nodes[NodeId(5)].campaign()  # term 5
    f.settle(lambda m: True)
    assert c.raft(5).role is Role.LEADER and c.raft(5).term == 5
    granted = {m.source for m in c.sent if isinstance(m, RequestVoteResponse) and m.target == 5
               and m.term == 5 and m.granted}
    assert granted == {2, 3, 4}
    for n in (2, 3, 4, 5):
        assert c.log_terms(n) == [1, 3, 5]
        assert c.raft(n).log.commit_index == 3
        assert (2, 3) in applied_pairs(c, n)
    for n in range(1, 6):
        assert (2, 2) not in f.committed_seen[n], f"S{n} reported index 2 of term 2 committed"


def test_figure8_e_entry_of_current_term_on_a_majority_commits_index_2_for_good() -> None:
    """Figure 8 (e): if S1 replicates its term-4 entry on a majority before crashing, it commits it
    and with it index 2 of term 2; S5 can then never be elected to overwrite them (§5.4.2)."""
    f = Figure8()
    c = f.c
    c.tick(1, c.raft(1).config.heartbeat_ticks)  # S1 retries; S5 is still down
    f.settle(lambda m: True)
    assert c.raft(1).log.commit_index == 3
    assert applied_pairs(c, 1) == [(1, 1), (2, 2), (3, 4)]
    holders = [n for n in range(1, 6) if c.log_terms(n) == [1, 2, 4]]
    assert len(holders) >= 3

    c.heal()
    c.isolate(1)
    c.restart(5)
    for _ in range(3):
        c.nodes[NodeId(5)].campaign()
        f.settle(lambda m: True)
        assert c.raft(5).role is not Role.LEADER
    for n in (2, 3, 4):
        assert c.log_terms(n)[:3] == [1, 2, 4]
    # Someone who holds the committed entries can still be elected and keeps them.
    c.nodes[NodeId(2)].campaign()
    f.settle(lambda m: True)
    assert c.raft(2).role is Role.LEADER
    for n in (2, 3, 4, 5):
        assert c.log_terms(n)[:3] == [1, 2, 4]


# -- §5.4.1 / §5.4.3: leader completeness ----------------------------------------------------------


def test_node_missing_committed_entries_cannot_win_an_election() -> None:
    """A candidate lacking a committed entry is refused by every voter that holds it (§5.4.1), so
    every leader holds every committed entry (Leader Completeness, §5.4.3)."""
    c = Cluster(pre_vote=False, check_quorum=False)  # the paper's setting: no lease, no pre-vote
    c.campaign(1)
    c.isolate(3)
    index = c.propose(1, b"committed")
    c.stabilize()
    assert commit(c, 1) == index and c.raft(3).log.last_index < index

    c.heal()
    c.isolate(1)
    for _ in range(3):
        c.nodes[NodeId(3)].campaign()
        c.stabilize()
        assert c.raft(3).role is not Role.LEADER
    refusals = [m for m in c.sent if isinstance(m, RequestVoteResponse) and m.source == 2 and m.target == 3]
    assert refusals and not any(m.granted for m in refusals)

    c.nodes[NodeId(2)].campaign()
    c.stabilize()
    assert c.raft(2).role is Role.LEADER
    for node in (2, 3):
        assert normal_data(c.applied[NodeId(node)]) == [b"committed"]


def test_node_missing_committed_entries_cannot_win_with_pre_vote_either() -> None:
    """Pre-vote applies the same up-to-date check, so it cannot smuggle a stale candidate in."""
    c = Cluster()
    c.campaign(1)
    c.isolate(3)
    c.propose(1, b"committed")
    c.stabilize()
    c.heal()
    c.isolate(1)
    c.tick(2, c.raft(2).config.election_ticks)  # node 2 no longer hears the leader: no lease
    for _ in range(3):
        c.nodes[NodeId(3)].campaign()
        c.stabilize()
        assert c.raft(3).role is not Role.LEADER
    assert c.raft(2).log.entry(c.raft(2).log.last_index).data == b"committed"


# -- how followers learn the commit index ---------------------------------------------------------


def test_follower_learns_commit_from_the_next_append_entries() -> None:
    """leader_commit in AppendEntries tells followers what is committed; they apply it (§5.3)."""
    c = Cluster()
    c.campaign(1)
    first = c.propose(1, b"a")
    c.process(1)
    c.deliver()
    c.process_all()
    c.deliver()  # the leader commits "a" on the acknowledgements
    assert commit(c, 1) == first
    assert commit(c, 2) < first
    c.propose(1, b"b")
    c.process(1)
    carrying = [m for m in c.pending if isinstance(m, AppendEntries) and m.target == 2]
    assert carrying and carrying[0].leader_commit == first
    c.deliver(lambda m: isinstance(m, AppendEntries))  # heartbeats are dropped
    assert commit(c, 2) == first
    c.process(2)
    assert normal_data(c.applied[NodeId(2)]) == [b"a"]


def test_follower_learns_commit_from_a_heartbeat() -> None:
    """A heartbeat carries the commit index to a follower that already holds the entries."""
    c = Cluster()
    c.campaign(1)
    index = c.propose(1, b"a")
    c.process(1)
    c.deliver()
    c.process_all()
    c.deliver()
    assert commit(c, 1) == index and commit(c, 2) < index
    c.process(1)
    c.deliver(lambda m: isinstance(m, Heartbeat))
    assert commit(c, 2) == index


def test_heartbeat_commit_is_capped_at_the_followers_match_index() -> None:
    """The leader never tells a follower a commit index beyond what the follower holds, so the
    follower never commits an entry it lacks (or a different one at that index)."""
    c = Cluster()
    c.campaign(1)
    c.isolate(3)
    for data in (b"a", b"b", b"c"):
        c.propose(1, data)
    c.stabilize()
    behind = c.raft(1).progress[NodeId(3)].match_index
    assert behind < commit(c, 1)
    c.heal()
    mark = len(c.sent)
    c.tick(1, c.raft(1).config.heartbeat_ticks)
    c.process(1)
    beats = [m for m in c.sent[mark:] if isinstance(m, Heartbeat) and m.target == 3]
    assert [m.leader_commit for m in beats] == [behind]
    beats2 = [m for m in c.sent[mark:] if isinstance(m, Heartbeat) and m.target == 2]
    assert [m.leader_commit for m in beats2] == [commit(c, 1)]
    c.stabilize()
    assert commit(c, 3) == commit(c, 1)


def test_follower_learns_commit_without_waiting_for_a_heartbeat_tick_after_a_duplicate_probe() -> None:
    """After a lost append is recovered, the follower learns the commit index in the same
    exchange, without waiting for the next heartbeat tick. A duplicate probe it ignores as stale
    (prev_index below its commit) must not count as having told it the leader's commit."""
    c = Cluster()
    c.campaign(1)
    c.propose(1, b"a")
    c.process(1)
    c.deliver(lambda m: m.target != 2)  # the append carrying "a" to node 2 is lost
    c.propose(1, b"b")
    c.stabilize()  # node 2 rejects, is probed (twice: a heartbeat response re-sends it) and catches up
    assert c.raft(2).log.last_index == c.raft(1).log.last_index
    assert commit(c, 2) == commit(c, 1)
    assert normal_data(c.applied[NodeId(2)]) == [b"a", b"b"]


# -- monotonicity and durability ---------------------------------------------------------------------


def test_commit_and_applied_indexes_never_decrease() -> None:
    """Through leader changes, partitions and log repair, no node's commit or applied index falls."""
    c = Cluster(voters=(1, 2, 3, 4, 5))
    seen_commit = {n: 0 for n in c.nodes}
    seen_applied = {n: 0 for n in c.nodes}

    def check() -> None:
        for n in c.nodes:
            log = c.raft(n).log
            assert log.commit_index >= seen_commit[n], f"node {n} commit went back"
            assert log.applied_index >= seen_applied[n], f"node {n} applied went back"
            assert log.applied_index <= log.commit_index <= log.last_index
            seen_commit[n], seen_applied[n] = log.commit_index, log.applied_index
            applied = [e.index for e in c.applied[n]]
            assert applied == list(range(1, len(applied) + 1)), f"node {n} applied out of order"

    def tick_all(ticks: int) -> None:
        for _ in range(ticks):
            c.tick_all(1)
            check()

    election_ticks = c.raft(1).config.election_ticks
    c.campaign(1)
    check()
    leaders = [c.leader()]
    for round_ in range(5):
        leader = c.leader()
        assert leader is not None
        c.propose(leader, b"%d" % round_)
        c.process(leader)
        c.deliver(lambda m: m.target != (round_ % 5) + 1)  # one follower misses it: log repair
        c.stabilize()
        check()
        c.isolate(leader)
        c.propose(leader, b"lost %d" % round_)  # stranded in the deposed leader's log
        tick_all(2 * election_ticks)  # the others elect a new leader; the old one steps down
        assert c.leader() not in (None, leader)
        leaders.append(c.leader())
        c.heal()
        tick_all(election_ticks)  # the old leader rejoins; its stranded entry is truncated
    assert len(set(leaders)) > 1
    committed = {n: [(e.index, e.term, e.data) for e in c.applied[n]] for n in c.nodes}
    longest = max(committed.values(), key=len)
    for n, entries in committed.items():
        assert entries == longest[:len(entries)], f"node {n} applied a different history"
        assert not any(data.startswith(b"lost") for _, _, data in entries)
    assert [d for _, _, d in longest if d and not d.startswith(b"lost")] == [b"%d" % k for k in range(5)]


def test_restarted_follower_recovers_its_log_and_commit_from_disk() -> None:
    """A follower that crashes comes back with exactly what it persisted: log, term, vote, commit."""
    c = Cluster()
    c.campaign(1)
    for data in (b"a", b"b"):
        c.propose(1, data)
    c.stabilize()
    before = c.raft(2)
    expect = (c.log_terms(2), before.term, before.voted_for, before.log.commit_index)
    assert expect[3] == c.raft(1).log.commit_index

    c.restart(2)
    after = c.raft(2)
    assert (c.log_terms(2), after.term, after.voted_for, after.log.commit_index) == expect
    c.process(2)
    assert normal_data(c.applied[NodeId(2)]) == [b"a", b"b"]  # the state machine is rebuilt

    c.propose(1, b"c")
    c.stabilize()
    assert normal_data(c.applied[NodeId(2)]) == [b"a", b"b", b"c"]


def test_restarted_follower_loses_nothing_it_acknowledged() -> None:
    """Everything a follower acknowledged was persisted first, so a crash right after the
    acknowledgement keeps it and the leader's commit stays safe (§5.3, Ready contract)."""
    c = Cluster()
    c.campaign(1)
    index = c.propose(1, b"a")
    c.process(1)
    c.deliver()
    c.process(2)  # node 2 persists and acknowledges
    c.restart(2)  # and crashes at once
    assert c.raft(2).log.last_index >= index
    c.stabilize()
    assert commit(c, 1) >= index
    assert c.raft(2).log.entry(index).data == b"a"
