"""Log replication (Raft §5.3) and the leader's flow control (etcd progress.go).

Grouped as etcd's raft_paper_test.go: the basic replication path, the AppendEntries consistency
check and its conflict hint, how followers merge, a log that starts after a snapshot, then flow
control (probe, replicate, byte cap) and recovery from lost messages.
"""

from __future__ import annotations


from registry.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    Heartbeat,
    Index,
    Membership,
    NodeId,
    ProgressState,
    RawNode,
    Role,
    SnapshotMeta,
    Term,
)
from registry.raft.types import ENTRY_OVERHEAD_BYTES

from .env import Cluster, run, normal_data


def elect(c: Cluster, node: int) -> None:
    """Make `node` leader delivering only the election traffic; its first AppendEntries are not
    yet sent (the next process(node) sends them)."""
    c.nodes[NodeId(node)].campaign()
    for _ in range(20):
        c.process_all()
        c.deliver()
        if c.raft(node).role is Role.LEADER:
            return
    raise AssertionError(f"node {node} did not win")


def appends(c: Cluster, *, target: int, since: int = 0) -> list[AppendEntries]:
    return [m for m in c.sent[since:] if isinstance(m, AppendEntries) and m.target == target]


def rejections(c: Cluster, *, source: int, since: int = 0) -> list[AppendEntriesResponse]:
    return [m for m in c.sent[since:]
            if isinstance(m, AppendEntriesResponse) and m.source == source and not m.success]


def responses_to(c: Cluster, leader: int, *, source: int) -> list[AppendEntriesResponse]:
    return [m for m in c.pending if isinstance(m, AppendEntriesResponse) and m.source == source
            and m.target == leader]


def follower(terms: list[int], *, term: int, commit: int) -> tuple[Cluster, RawNode]:
    """Node 2 of a 3-node cluster, restored with a log of `terms` and ready for hand-made messages."""
    c = Cluster(entries={2: run(1, terms)}, hard_states={2: HardState(Term(term), NodeId(0), Index(commit))})
    c.process(2)  # apply what the restored commit covers
    c.pending.clear()
    return c, c.nodes[NodeId(2)]


def app(prev_index: int, prev_term: int, entries: list[Entry], *, term: int, commit: int = 0) -> AppendEntries:
    return AppendEntries(NodeId(1), NodeId(2), Term(term), Index(prev_index), Term(prev_term), tuple(entries),
                         Index(commit))


# -- §5.3: the basic path -------------------------------------------------------------------------


def test_leader_replicates_proposals_and_followers_apply_them_in_order() -> None:
    """The leader appends proposals, replicates them, and every node applies them in log order (§5.3)."""
    c = Cluster()
    c.campaign(1)
    for data in (b"a", b"b", b"c"):
        c.propose(1, data)
    c.stabilize()
    for node in (1, 2, 3):
        applied = c.applied[NodeId(node)]
        assert normal_data(applied) == [b"a", b"b", b"c"]
        assert [e.index for e in applied] == list(range(1, len(applied) + 1))
        assert c.raft(node).log.commit_index == c.raft(1).log.last_index
    assert c.log_terms(2) == c.log_terms(1) == c.log_terms(3)


def test_leader_batches_proposals_made_between_two_readies() -> None:
    """Proposals made before the next Ready go out together in one AppendEntries per follower."""
    c = Cluster()
    c.campaign(1)
    mark = len(c.sent)
    for data in (b"a", b"b", b"c"):
        c.propose(1, data)
    c.process(1)
    sent = appends(c, target=2, since=mark)
    assert len(sent) == 1
    assert [e.data for e in sent[0].entries] == [b"a", b"b", b"c"]


# -- §5.3: the consistency check and its hint ---------------------------------------------------


def test_append_entries_with_mismatched_prev_term_is_rejected_and_changes_nothing() -> None:
    """A follower refuses entries whose (prev_index, prev_term) it does not hold (§5.3)."""
    c, node = follower([1, 1, 2, 2], term=3, commit=1)
    node.step(app(4, 3, run(5, [3]), term=3, commit=4))
    rd = node.ready()
    assert rd.entries == ()
    [resp] = [m for m in rd.messages if isinstance(m, AppendEntriesResponse)]
    assert (resp.success, resp.index, resp.term) == (False, 4, 3)
    assert c.log_terms(2) == [1, 1, 2, 2]
    assert node.raft.log.commit_index == 1


def test_rejection_hint_names_the_conflicting_term_and_its_first_index() -> None:
    """The rejection carries the follower's term at prev_index and the first index of that term (§5.3)."""
    c, node = follower([1, 1, 2, 2, 2], term=3, commit=1)
    node.step(app(5, 3, [], term=3))
    [resp] = node.ready().messages
    assert isinstance(resp, AppendEntriesResponse)
    assert (resp.success, resp.index, resp.conflict_term, resp.conflict_index) == (False, 5, 2, 3)


def test_rejection_hint_for_a_short_log_is_zero_and_last_plus_one() -> None:
    """A follower lacking prev_index answers (0, last_index + 1) so the leader jumps to its end."""
    c, node = follower([1, 1, 2], term=3, commit=1)
    node.step(app(9, 3, [], term=3))
    [resp] = node.ready().messages
    assert isinstance(resp, AppendEntriesResponse)
    assert (resp.success, resp.index, resp.conflict_term, resp.conflict_index) == (False, 9, 0, 4)


def test_leader_backs_up_a_whole_term_per_round_trip() -> None:
    """A follower with a long divergent suffix of an old term costs one rejected round trip,
    not one per entry (§5.3, end)."""
    base = [1, 1, 1]
    c = Cluster(
        entries={1: run(1, base + [3, 3]), 2: run(1, base + [3, 3]), 3: run(1, base + [2] * 40)},
        hard_states={1: HardState(Term(3), commit=Index(3)), 2: HardState(Term(3), commit=Index(3)),
                     3: HardState(Term(2), commit=Index(3))},
    )
    c.campaign(1)
    c.stabilize()
    assert c.raft(1).role is Role.LEADER
    assert {m.index for m in rejections(c, source=3)} == {5}
    assert c.log_terms(3) == c.log_terms(1)
    assert c.raft(3).log.last_index == 6


def test_leader_backs_up_one_round_trip_per_divergent_term() -> None:
    """Several divergent terms cost one round trip each (plus one to find the follower's end)."""
    base = [1, 1, 1]
    leader_log = run(1, base + [4] * 27)  # 4..30 of term 4
    c = Cluster(
        entries={1: leader_log, 2: list(leader_log), 3: run(1, base + [2] * 10 + [3] * 10)},  # ends at 23
        hard_states={1: HardState(Term(4), commit=Index(3)), 2: HardState(Term(4), commit=Index(3)),
                     3: HardState(Term(3), commit=Index(3))},
    )
    c.campaign(1)
    c.stabilize()
    # NB: a heartbeat response may re-send the outstanding probe (etcd does the same), so count
    # the distinct rejected prev indexes: one to find the follower's end, then one per term.
    rejected = sorted({m.index for m in rejections(c, source=3)}, reverse=True)
    assert rejected == [30, 23, 13]
    assert c.log_terms(3) == c.log_terms(1)


def test_leader_uses_its_own_last_entry_of_the_conflicting_term() -> None:
    """When the leader also has the follower's conflicting term, it resumes after its last entry of
    that term, keeping the shared part of the run (dissertation §5.3 optimisation)."""
    base = [1, 1, 1]
    leader_log = run(1, base + [2] * 7 + [3, 3])  # 4..10 term 2, 11..12 term 3
    c = Cluster(
        entries={1: leader_log, 2: list(leader_log), 3: run(1, base + [2] * 37)},  # 4..40 term 2
        hard_states={1: HardState(Term(3), commit=Index(3)), 2: HardState(Term(3), commit=Index(3)),
                     3: HardState(Term(2), commit=Index(3))},
    )
    c.campaign(1)
    c.stabilize()
    assert {m.index for m in rejections(c, source=3)} == {12}
    assert c.log_terms(3) == c.log_terms(1)
    # The follower kept 4..10 (never rewritten) and received only 11 onwards.
    rewritten = sorted({e.index for m in appends(c, target=3) for e in m.entries})
    assert rewritten and rewritten[0] == 11, rewritten


# -- §5.3: how a follower merges ------------------------------------------------------------------


def test_only_the_conflicting_suffix_is_truncated() -> None:
    """Entries before the first conflict stay; the conflicting one and all after it go (§5.3)."""
    c, node = follower([1, 1, 2, 2, 2], term=3, commit=2)
    node.step(app(3, 2, run(4, [3]), term=3, commit=2))
    rd = node.ready()
    assert rd.entries == (Entry(Term(3), Index(4)),)
    assert c.log_terms(2) == [1, 1, 2, 3]
    [resp] = rd.messages
    assert isinstance(resp, AppendEntriesResponse) and resp.success and resp.index == 4
    node.advance(rd)


def test_entries_already_held_are_not_rewritten() -> None:
    """A message overlapping what the follower holds hands out only the new entries for persisting."""
    c, node = follower([1, 1, 2, 2], term=2, commit=1)
    node.step(app(1, 1, run(2, [1, 2, 2, 2]), term=2, commit=1))
    rd = node.ready()
    assert rd.entries == (Entry(Term(2), Index(5)),)
    assert rd.must_sync
    node.advance(rd)
    assert c.log_terms(2) == [1, 1, 2, 2, 2]


def test_duplicate_append_entries_persists_nothing() -> None:
    """A duplicated AppendEntries is acknowledged again but asks the caller to persist nothing."""
    c, node = follower([1, 1, 2, 2], term=2, commit=1)
    node.step(app(1, 1, run(2, [1, 2, 2]), term=2, commit=1))
    rd = node.ready()
    assert rd.entries == ()
    assert rd.hard_state is None or rd.hard_state.commit == 1
    [resp] = rd.messages
    assert isinstance(resp, AppendEntriesResponse) and resp.success and resp.index == 4
    assert not rd.must_sync


def test_stale_append_entries_below_commit_is_acknowledged_at_commit_and_ignored() -> None:
    """An AppendEntries that ends at or below our commit index is old news: answer success at the
    commit index and change nothing."""
    c, node = follower([1, 1, 2, 2, 2], term=2, commit=4)
    before = (c.log_terms(2), node.raft.log.commit_index, node.raft.term)
    node.step(app(1, 1, run(2, [1, 2]), term=2, commit=1))
    rd = node.ready()
    [resp] = [m for m in rd.messages if isinstance(m, AppendEntriesResponse)]
    assert (resp.success, resp.index) == (True, 4)
    assert rd.entries == ()
    assert rd.hard_state is None
    assert (c.log_terms(2), node.raft.log.commit_index, node.raft.term) == before


def test_stale_append_entries_below_commit_still_teaches_what_lies_past_the_commit() -> None:
    """A message whose prev_index is below our commit index but whose entries run past it: the
    part up to the commit matches (committed entries are in every later leader's log), so the
    rest is merged and acknowledged, and its commit index is taken (a duplicated or re-sent probe
    must not leave the follower behind on commit)."""
    c, node = follower([1, 1, 2, 2, 2], term=2, commit=4)
    node.step(app(2, 1, run(3, [2, 2, 2, 2]), term=2, commit=6))
    rd = node.ready()
    [resp] = [m for m in rd.messages if isinstance(m, AppendEntriesResponse)]
    assert (resp.success, resp.index) == (True, 6)
    assert rd.entries == (Entry(Term(2), Index(6)),)
    assert node.raft.log.commit_index == 6
    node.advance(rd)
    assert c.log_terms(2) == [1, 1, 2, 2, 2, 2]


def test_follower_commit_from_append_entries_is_capped_at_its_last_new_entry() -> None:
    """leader_commit beyond the entries just verified only commits up to the last of them (§5.3)."""
    c, node = follower([1, 1, 2, 2, 2, 2], term=2, commit=1)
    node.step(app(1, 1, run(2, [1, 2]), term=2, commit=6))
    node.ready()
    assert node.raft.log.commit_index == 3


# -- a log that starts after a snapshot (§7) ----------------------------------------------------


def test_cluster_whose_log_starts_at_index_100_elects_and_replicates() -> None:
    """With everything up to 100 compacted, election, replication and apply work from 101 (§7)."""
    members = Membership(frozenset({NodeId(1), NodeId(2), NodeId(3)}))
    snapshot = SnapshotMeta(Index(100), Term(5), members)
    c = Cluster(
        snapshot=snapshot,
        entries={1: run(101, [5, 5]), 2: run(101, [5, 5]), 3: []},
        hard_states={n: HardState(Term(5), commit=Index(100)) for n in (1, 2, 3)},
    )
    c.campaign(1)
    assert c.raft(1).role is Role.LEADER and c.raft(1).term == 6
    c.propose(1, b"x")
    c.stabilize()
    for node in (1, 2, 3):
        log = c.raft(node).log
        assert log.first_index == 101
        assert log.commit_index == log.last_index == 104
        assert [e.index for e in c.applied[NodeId(node)]] == [101, 102, 103, 104]
        assert c.applied[NodeId(node)][-1].data == b"x"
    assert c.log_terms(3) == [5, 5, 6, 6]
    assert [e.index for e in c.disks[NodeId(3)].entries] == [101, 102, 103, 104]


# -- flow control ----------------------------------------------------------------------------------


def test_probe_state_sends_one_append_entries_until_it_hears_back() -> None:
    """A new leader probes each follower with one AppendEntries and sends no more until answered."""
    c = Cluster()
    elect(c, 1)
    mark = len(c.sent)
    c.process(1)
    for data in (b"a", b"b", b"c"):
        c.propose(1, data)
        c.process(1)
    assert len(appends(c, target=2, since=mark)) == 1
    assert c.nodes[NodeId(1)].status().progress[NodeId(2)].state is ProgressState.PROBE

    c.deliver(lambda m: m.target == 2)  # node 2 accepts the probe
    c.process(2)
    mark = len(c.sent)
    c.deliver()
    c.process(1)
    assert c.nodes[NodeId(1)].status().progress[NodeId(2)].state is ProgressState.REPLICATE
    [follow_up] = appends(c, target=2, since=mark)
    assert [e.data for e in follow_up.entries] == [b"a", b"b", b"c"]


def test_replicate_state_pipelines_up_to_max_inflight_then_pauses() -> None:
    """In replicate state the leader streams up to max_inflight_msgs unacknowledged messages."""
    c = Cluster(max_inflight_msgs=3)
    c.campaign(1)
    assert c.nodes[NodeId(1)].status().progress[NodeId(2)].state is ProgressState.REPLICATE
    mark = len(c.sent)
    for k in range(5):
        c.propose(1, b"%d" % k)
        c.process(1)
    sent = appends(c, target=2, since=mark)
    assert [[e.data for e in m.entries] for m in sent] == [[b"0"], [b"1"], [b"2"]]
    assert len(appends(c, target=3, since=mark)) == 3

    # One acknowledgement opens the window again; the rest goes out in one message.
    first = sent[0]
    c.pending = [m for m in c.pending if m == first]
    c.deliver()
    c.process(2)
    mark = len(c.sent)
    c.deliver()
    c.process(1)
    [more] = appends(c, target=2, since=mark)
    assert [e.data for e in more.entries] == [b"3", b"4"]


def test_each_append_entries_carries_at_most_max_msg_bytes() -> None:
    """Entries are split into messages of at most max_msg_bytes of entries each (§5.3 batching)."""
    size = 40 + ENTRY_OVERHEAD_BYTES
    c = Cluster(max_msg_bytes=2 * size)
    c.campaign(1)
    mark = len(c.sent)
    for k in range(5):
        c.propose(1, bytes([k]) * 40)
    c.process(1)
    sent = appends(c, target=2, since=mark)
    assert [len(m.entries) for m in sent] == [2, 2, 1]
    assert all(sum(e.size() for e in m.entries) <= 2 * size for m in sent)
    assert [e.index for m in sent for e in m.entries] == list(range(2, 7))
    c.stabilize()
    assert c.log_terms(2) == c.log_terms(1)


def test_an_entry_larger_than_max_msg_bytes_still_goes_out_alone() -> None:
    """The byte cap never stalls replication: an oversized entry travels alone in its message."""
    c = Cluster(max_msg_bytes=10)
    c.campaign(1)
    mark = len(c.sent)
    c.propose(1, b"x" * 1000)
    c.propose(1, b"y")
    c.process(1)
    sent = appends(c, target=2, since=mark)
    assert [[e.data for e in m.entries] for m in sent] == [[b"x" * 1000], [b"y"]]
    c.stabilize()
    assert normal_data(c.applied[NodeId(2)]) == [b"x" * 1000, b"y"]


def test_lost_message_in_replicate_state_is_recovered_through_rejection() -> None:
    """When a pipelined message is lost, the next one is rejected and the leader falls back to
    probing from the follower's end, resending what was lost (etcd progress.go)."""
    c = Cluster()
    c.campaign(1)
    c.propose(1, b"a")
    c.process(1)
    c.deliver(lambda m: m.target != 2)  # the AppendEntries carrying "a" to node 2 is lost
    c.propose(1, b"b")
    mark = len(c.sent)
    c.stabilize()  # no ticks: recovery must come from the rejection alone
    assert {m.index for m in rejections(c, source=2, since=mark)} == {2}
    assert [e.data for e in c.raft(2).log.entries(2, 4)] == [b"a", b"b"]
    assert c.log_terms(2) == c.log_terms(1)
    assert c.raft(1).progress[NodeId(2)].match_index == c.raft(1).log.last_index


def test_lost_messages_in_replicate_state_are_recovered_by_a_heartbeat() -> None:
    """If every message of a stream is lost, the next heartbeat's response restarts replication."""
    c = Cluster()
    c.campaign(1)
    c.propose(1, b"a")
    c.process(1)
    c.deliver(lambda m: not isinstance(m, AppendEntries))
    c.stabilize()
    assert normal_data(c.applied[NodeId(2)]) == []
    assert c.raft(1).log.commit_index < c.raft(1).log.last_index
    c.tick(1, c.raft(1).config.heartbeat_ticks)
    c.stabilize()
    for node in (1, 2, 3):
        assert normal_data(c.applied[NodeId(node)]) == [b"a"]


def test_paused_stream_gets_moving_again_after_a_heartbeat_response() -> None:
    """A full in-flight window whose acknowledgements are all lost unblocks on a heartbeat response."""
    c = Cluster(max_inflight_msgs=2)
    c.campaign(1)
    for k in range(4):
        c.propose(1, b"%d" % k)
        c.process(1)
    c.pending.clear()  # the whole stream is lost
    assert c.raft(1).progress[NodeId(2)].is_paused()
    c.tick(1, c.raft(1).config.heartbeat_ticks)
    c.stabilize()
    for node in (2, 3):
        assert normal_data(c.applied[NodeId(node)]) == [b"0", b"1", b"2", b"3"]


def test_heartbeat_to_a_follower_that_lost_an_append_carries_only_its_match_index() -> None:
    """A heartbeat never lets a follower commit what it does not hold; the lost append is then
    recovered through the heartbeat response (§5.3)."""
    c = Cluster()
    c.campaign(1)
    c.propose(1, b"a")
    c.process(1)
    c.deliver(lambda m: m.target != 2)
    c.process_all()
    # node 1 commits with node 3; the heartbeat to node 2 carries at most node 2's match index
    c.deliver(lambda m: not (isinstance(m, AppendEntries) and m.target == 2))
    c.process(1)
    beats = [m for m in c.pending if isinstance(m, Heartbeat) and m.target == 2]
    assert beats and all(m.leader_commit <= c.raft(1).progress[NodeId(2)].match_index for m in beats)
    c.stabilize()
    assert normal_data(c.applied[NodeId(2)]) == [b"a"]
