"""RawNode and the Ready contract (etcd node.go / rawnode.go; Raft figure 2 "persistent state").

Grouped: what a Ready contains and when must_sync is set; the ready/advance protocol;
determinism; RemoteError for malformed peer messages; LocalError for API misuse; Config validation.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from registry.raft import (
    AppendEntries,
    Config,
    Entry,
    HardState,
    Heartbeat,
    Index,
    InitialState,
    LocalError,
    Membership,
    Message,
    NodeId,
    NotLeader,
    RawNode,
    RemoteError,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
    Term,
)

from .env import Cluster

MEMBERS = Membership(frozenset({NodeId(1), NodeId(2), NodeId(3)}))


def stable_cluster(**config: object) -> Cluster:
    c = Cluster(**config)
    c.campaign(1)
    c.propose(1, b"x")
    c.stabilize()
    return c


def fresh_node(node: int = 2, **config: object) -> RawNode:
    return RawNode(Config(NodeId(node), random.Random(node), **config),  # type: ignore[arg-type]
                   InitialState(SnapshotMeta(Index(0), Term(0), MEMBERS)))


# -- what a Ready holds ------------------------------------------------------------------------


def test_hard_state_appears_only_when_it_changed() -> None:
    """Ready.hard_state is None unless term, vote or commit changed since the last Ready."""
    c = stable_cluster()
    leader = c.nodes[NodeId(1)]
    follower = c.nodes[NodeId(2)]
    follower.tick()
    assert not follower.has_ready()  # time passing changes nothing durable

    c.propose(1, b"y")
    rd = leader.ready()
    assert rd.entries and rd.hard_state is None  # new entries, same term/vote/commit
    leader.advance(rd)
    for m in rd.messages:
        c.nodes[m.target].step(m)
    c.process(2)
    c.process(3)
    for m in c.pending:
        leader.step(m)
    c.pending.clear()
    rd = leader.ready()
    assert rd.hard_state == HardState(c.raft(1).term, NodeId(1), rd.committed[-1].index)
    leader.advance(rd)
    assert not leader.has_ready()


def test_must_sync_for_new_entries() -> None:
    """A Ready carrying entries must be fsynced before its messages go out."""
    c = stable_cluster()
    c.propose(1, b"y")
    rd = c.nodes[NodeId(1)].ready()
    assert rd.entries and rd.must_sync


def test_must_sync_for_a_term_change() -> None:
    """Raft figure 2: currentTerm is persistent; a Ready that changes it must be fsynced."""
    c = stable_cluster()
    node = c.nodes[NodeId(2)]
    term = c.raft(2).term
    node.step(Heartbeat(NodeId(3), NodeId(2), Term(term + 1), Index(0), 0))
    rd = node.ready()
    assert rd.hard_state is not None and rd.hard_state.term == term + 1
    assert rd.entries == ()
    assert rd.must_sync


def test_must_sync_is_false_for_a_commit_only_change() -> None:
    """A commit index can be recovered from the quorum, so a commit-only Ready needs no fsync."""
    c = stable_cluster()
    node = c.nodes[NodeId(2)]
    c.propose(1, b"y")
    c.process(1)
    c.deliver(lambda m: m.target == 2)
    c.process(2)
    c.pending.clear()
    commit = c.raft(2).log.commit_index
    term = c.raft(2).term
    node.step(Heartbeat(NodeId(1), NodeId(2), Term(term), Index(commit + 1), 0))
    rd = node.ready()
    assert rd.hard_state == HardState(Term(term), c.raft(2).voted_for, Index(commit + 1))
    assert rd.entries == ()
    assert not rd.must_sync
    assert [e.index for e in rd.committed] == [commit + 1]


def test_vote_grant_is_sent_in_the_same_ready_that_records_the_vote() -> None:
    """The granted vote leaves only with the hard state recording it, which must be synced first
    (Raft §5.2: at most one vote per term, durable before the reply)."""
    node = fresh_node(2)
    node.step(RequestVote(NodeId(1), NodeId(2), Term(1), Index(0), Term(0)))
    rd = node.ready()
    grants = [m for m in rd.messages if isinstance(m, RequestVoteResponse) and m.granted]
    assert [(m.target, m.term) for m in grants] == [(1, 1)]
    assert rd.hard_state == HardState(Term(1), NodeId(1), Index(0))
    assert rd.must_sync


def test_pre_vote_grant_changes_nothing_durable() -> None:
    """A pre-vote grant records nothing (dissertation §9.6): no hard state, no fsync."""
    node = fresh_node(2)
    node.step(RequestVote(NodeId(1), NodeId(2), Term(1), Index(0), Term(0), pre_vote=True))
    rd = node.ready()
    grants = [m for m in rd.messages if isinstance(m, RequestVoteResponse) and m.granted]
    assert [(m.target, m.term, m.pre_vote) for m in grants] == [(1, 1, True)]
    assert rd.hard_state is None
    assert not rd.must_sync
    assert node.raft.term == 0 and node.raft.voted_for == 0


def test_soft_state_appears_only_when_leader_or_role_changed() -> None:
    """Ready.soft_state reports who leads and our role, only when that changed."""
    node = fresh_node(2)
    node.step(AppendEntries(NodeId(1), NodeId(2), Term(1), Index(0), Term(0), (), Index(0)))
    rd = node.ready()
    assert rd.soft_state is not None and (rd.soft_state.leader_id, rd.soft_state.role) == (1, Role.FOLLOWER)
    node.advance(rd)
    node.step(AppendEntries(NodeId(1), NodeId(2), Term(1), Index(0), Term(0), (), Index(0)))
    rd = node.ready()
    assert rd.soft_state is None


def test_ready_without_work_is_not_pending() -> None:
    """has_ready() is False when a Ready would be empty."""
    c = stable_cluster()
    for node in (1, 2, 3):
        assert not c.nodes[NodeId(node)].has_ready()


# -- the ready/advance protocol --------------------------------------------------------------------


def test_ready_twice_without_advance_raises_local_error() -> None:
    """Each Ready must be acknowledged before the next one is taken."""
    c = stable_cluster()
    raw = c.nodes[NodeId(1)]
    c.propose(1, b"y")
    rd = raw.ready()
    with pytest.raises(LocalError, match="before advance"):
        raw.ready()
    raw.advance(rd)
    raw.ready()  # fine again


def test_advance_with_a_different_ready_raises_local_error() -> None:
    """advance() takes exactly the Ready last handed out, not an equal copy or an older one."""
    c = stable_cluster()
    raw = c.nodes[NodeId(1)]
    c.propose(1, b"y")
    first = raw.ready()
    with pytest.raises(LocalError):
        raw.advance(dataclasses.replace(first))
    raw.advance(first)
    with pytest.raises(LocalError):
        raw.advance(first)  # nothing outstanding any more
    c.propose(1, b"z")
    second = raw.ready()
    with pytest.raises(LocalError):
        raw.advance(first)
    raw.advance(second)


def test_advance_with_a_wrong_ready_changes_nothing() -> None:
    """A refused advance leaves the node's persistence and apply progress untouched."""
    c = stable_cluster()
    raw = c.nodes[NodeId(1)]
    c.propose(1, b"y")
    rd = raw.ready()
    before = (raw.raft.log.persisted_index, raw.raft.log.applied_index, raw.raft.log.commit_index)
    with pytest.raises(LocalError):
        raw.advance(dataclasses.replace(rd))
    assert (raw.raft.log.persisted_index, raw.raft.log.applied_index, raw.raft.log.commit_index) == before
    raw.advance(rd)
    assert raw.raft.log.persisted_index == rd.entries[-1].index


# -- determinism -----------------------------------------------------------------------------------


def run_scenario(seed: int) -> Cluster:
    """Elections by timeout (randomized), proposals, a partition and its healing."""
    c = Cluster(voters=(1, 2, 3, 4, 5), seed=seed)
    for _ in range(40):
        c.tick_all(1)
        if c.leader() is not None:
            break
    leader = c.leader()
    assert leader is not None
    for k in range(3):
        c.propose(leader, b"%d" % k)
    c.stabilize()
    c.isolate(leader)
    c.tick_all(40)
    c.heal()
    c.tick_all(20)
    new_leader = c.leader()
    assert new_leader is not None
    c.propose(new_leader, b"after")
    c.stabilize()
    return c


def test_same_seed_and_inputs_give_identical_message_sequences() -> None:
    """Two clusters with the same seed driven by the same inputs send exactly the same messages
    and end in the same state (RawNode: same state plus same inputs gives the same Ready)."""
    a, b = run_scenario(seed=11), run_scenario(seed=11)
    assert len(a.sent) > 50
    assert a.sent == b.sent
    for n in a.nodes:
        assert a.log_terms(n) == b.log_terms(n)
        assert a.applied[n] == b.applied[n]
        assert a.disks[n] == b.disks[n]


def test_same_inputs_give_identical_readies_on_one_node() -> None:
    """Two RawNodes built alike and fed the same ticks and messages hand out equal Readies."""
    def drive(raw: RawNode) -> list:
        readies = []
        inputs: list[Message | None] = [None] * 25 + [
            RequestVoteResponse(NodeId(1), NodeId(2), Term(1), True, pre_vote=True),
            RequestVoteResponse(NodeId(1), NodeId(2), Term(1), True),
        ]
        for item in inputs:
            if item is None:
                raw.tick()
            else:
                raw.step(item)
            if raw.has_ready():
                rd = raw.ready()
                readies.append(rd)
                raw.advance(rd)
        return readies

    first, second = drive(fresh_node(2)), drive(fresh_node(2))
    assert len(first) >= 2
    assert first == second


# -- RemoteError: malformed peer messages ------------------------------------------------------------


def observable(raw: RawNode) -> tuple:
    r = raw.raft
    log = r.log
    return (r.role, r.term, r.voted_for, r.leader_id, r.election_elapsed, r.randomized_election_ticks,
            [(e.index, e.term, e.data) for e in log.entries(log.first_index, log.last_index + 1)],
            log.commit_index, log.persisted_index, list(r._outbox), raw.has_ready())


def malformed(term: int) -> dict[str, Message]:
    t = Term(term)
    return {
        "wrong target": Heartbeat(NodeId(1), NodeId(3), t, Index(0), 0),
        "source 0": Heartbeat(NodeId(0), NodeId(2), t, Index(0), 0),
        "source self": RequestVote(NodeId(2), NodeId(2), t, Index(99), t),
        "non-contiguous entries": AppendEntries(NodeId(1), NodeId(2), t, Index(2), Term(1),
                                                (Entry(t, Index(3)), Entry(t, Index(5))), Index(0)),
        "first entry not after prev": AppendEntries(NodeId(1), NodeId(2), t, Index(2), Term(1),
                                                    (Entry(t, Index(2)),), Index(0)),
        "entry term above message term": AppendEntries(NodeId(1), NodeId(2), t, Index(2), Term(1),
                                                       (Entry(Term(term + 1), Index(3)),), Index(0)),
        "entry term below prev term": AppendEntries(NodeId(1), NodeId(2), t, Index(2), t,
                                                    (Entry(Term(1), Index(3)),), Index(0)),
        "decreasing entry terms": AppendEntries(NodeId(1), NodeId(2), t, Index(2), Term(1),
                                                (Entry(t, Index(3)), Entry(Term(1), Index(4))), Index(0)),
        "prev term above message term": AppendEntries(NodeId(1), NodeId(2), t, Index(2), Term(term + 1), (),
                                                      Index(0)),
        "negative term": Heartbeat(NodeId(1), NodeId(2), Term(-1), Index(0), 0),
    }


@pytest.mark.parametrize("case", sorted(malformed(0)))
def test_malformed_message_raises_remote_error_and_changes_nothing(case: str) -> None:
    """A malformed or impossible peer message is refused with RemoteError and leaves the node's
    state exactly as it was (h11's RemoteProtocolError; no partial effects)."""
    c = stable_cluster()
    raw = c.nodes[NodeId(2)]
    c.tick(2, 3)  # some election time has passed: a wrongly accepted message would reset it
    message = malformed(c.raft(2).term + 5)[case]  # a newer term: accepting it would show
    before = observable(raw)
    with pytest.raises(RemoteError):
        raw.step(message)
    assert observable(raw) == before


def test_well_formed_version_of_the_malformed_messages_is_accepted() -> None:
    """Control for the test above: the same shape with valid fields is taken without error."""
    c = stable_cluster()
    raw = c.nodes[NodeId(2)]
    term = c.raft(2).term
    last = c.raft(2).log.last_index
    raw.step(AppendEntries(NodeId(1), NodeId(2), Term(term), Index(last), Term(term),
                           (Entry(Term(term), Index(last + 1)), Entry(Term(term), Index(last + 2))), Index(0)))
    assert c.raft(2).log.last_index == last + 2


# -- LocalError: the caller's mistakes -----------------------------------------------------------


def test_propose_on_a_follower_raises_not_leader_with_the_leader_hint() -> None:
    """Only the leader takes proposals; a follower names the leader it knows (etcd ErrProposalDropped
    is less helpful) and appends nothing."""
    c = stable_cluster()
    last = c.raft(2).log.last_index
    with pytest.raises(NotLeader) as err:
        c.nodes[NodeId(2)].propose(b"y")
    assert err.value.leader_hint == 1
    assert "node 1" in str(err.value)
    assert isinstance(err.value, LocalError)
    assert c.raft(2).log.last_index == last
    assert not c.nodes[NodeId(2)].has_ready()


def test_propose_without_a_known_leader_raises_not_leader_with_no_hint() -> None:
    """Before any election the hint is 0 (no node) and the message says so."""
    node = fresh_node(2)
    with pytest.raises(NotLeader) as err:
        node.propose(b"y")
    assert err.value.leader_hint == 0
    assert "no leader is known" in str(err.value)


# -- Config validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("node_id", [0, -1])
def test_config_rejects_a_non_positive_node_id(node_id: int) -> None:
    """Node id 0 means 'no node'; real ids are positive."""
    with pytest.raises(ValueError, match=rf"node_id must be a positive integer, got {node_id}"):
        Config(NodeId(node_id), random.Random(0))


@pytest.mark.parametrize("election_ticks, heartbeat_ticks", [(1, 1), (5, 5), (3, 4)])
def test_config_rejects_election_ticks_not_above_heartbeat_ticks(election_ticks: int, heartbeat_ticks: int) -> None:
    """Followers would time out between heartbeats: election_ticks must exceed heartbeat_ticks (§5.6)."""
    with pytest.raises(ValueError, match=rf"election_ticks \({election_ticks}\) must exceed heartbeat_ticks"):
        Config(NodeId(1), random.Random(0), election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks)


@pytest.mark.parametrize("field, value", [("heartbeat_ticks", 0), ("max_inflight_msgs", 0), ("max_msg_bytes", 0),
                                          ("applied", -1)])
def test_config_rejects_other_out_of_range_settings(field: str, value: int) -> None:
    """Every numeric setting is range-checked with a message naming it."""
    with pytest.raises(ValueError, match=field):
        Config(NodeId(1), random.Random(0), **{field: value})  # type: ignore[arg-type]


def test_config_accepts_the_defaults() -> None:
    """Defaults are valid: election 10 ticks, heartbeat 1, pre-vote and check-quorum on."""
    cfg = Config(NodeId(1), random.Random(0))
    assert (cfg.election_ticks, cfg.heartbeat_ticks, cfg.pre_vote, cfg.check_quorum) == (10, 1, True, True)


# -- sending before persisting (dissertation §10.2.1) ---------------------------------------------


def test_leader_appends_may_be_sent_before_its_own_write() -> None:
    """A leader's AppendEntries for new proposals may leave before it persists them: the Ready
    changes neither term nor vote, so they promise nothing about its disk (§10.2.1)."""
    c = stable_cluster()
    c.propose(1, b"y")
    rd = c.nodes[NodeId(1)].ready()
    appends = [m for m in rd.messages if isinstance(m, AppendEntries)]
    assert rd.entries and rd.must_sync and not rd.term_or_vote_changed
    assert appends and rd.messages_before_persist() == tuple(appends)
    assert rd.messages_after_persist() == tuple(m for m in rd.messages if m not in appends)


def test_heartbeats_of_a_settled_leader_may_be_sent_before_persisting() -> None:
    c = stable_cluster()
    leader = c.nodes[NodeId(1)]
    c.tick(1)
    rd = leader.ready()
    assert rd.messages and all(isinstance(m, Heartbeat) for m in rd.messages)
    assert rd.messages_before_persist() == rd.messages and rd.messages_after_persist() == ()


def test_nothing_is_sent_before_persisting_a_new_term_or_vote() -> None:
    """Votes, vote requests and anything in a Ready that changes term or vote wait for the write:
    they promise that the term and vote are durable (Raft §5.2)."""
    voter = fresh_node(2)
    voter.step(RequestVote(NodeId(1), NodeId(2), Term(1), Index(0), Term(0)))
    rd = voter.ready()
    assert rd.term_or_vote_changed and rd.messages
    assert rd.messages_before_persist() == () and rd.messages_after_persist() == rd.messages

    candidate = fresh_node(1, pre_vote=False)
    candidate.campaign()
    rd = candidate.ready()
    assert any(isinstance(m, RequestVote) for m in rd.messages)
    assert rd.messages_before_persist() == () and rd.messages_after_persist() == rd.messages


def test_a_lone_node_elected_in_one_ready_sends_nothing_early() -> None:
    """A single voter becomes candidate and leader within one Ready: its term is not yet durable,
    so even its appends (none here, but the rule is the Ready's) wait for the write."""
    node = RawNode(Config(NodeId(1), random.Random(1)),
                   InitialState(SnapshotMeta(Index(0), Term(0), Membership(frozenset({NodeId(1)})))))
    node.campaign()
    rd = node.ready()
    assert rd.soft_state is not None and rd.soft_state.role is Role.LEADER
    assert rd.term_or_vote_changed and rd.messages_before_persist() == ()


def test_follower_acknowledgements_always_wait_for_the_write() -> None:
    """A follower's AppendEntriesResponse promises the entries are durable: never sent early."""
    c = stable_cluster()
    c.propose(1, b"y")
    c.process(1)
    c.deliver(lambda m: m.target == 2)
    rd = c.nodes[NodeId(2)].ready()
    assert rd.entries and not rd.term_or_vote_changed
    assert rd.messages and rd.messages_before_persist() == ()
    assert rd.messages_after_persist() == rd.messages


def test_a_ready_built_without_the_flag_sends_nothing_early() -> None:
    """The flag defaults to the safe side: a Ready that does not say otherwise is persisted first."""
    c = stable_cluster()
    c.propose(1, b"y")
    rd = c.nodes[NodeId(1)].ready()
    fields = {f.name: getattr(rd, f.name) for f in dataclasses.fields(rd) if f.name != "term_or_vote_changed"}
    conservative = type(rd)(**fields)
    assert conservative.messages_before_persist() == ()
    assert conservative.messages_after_persist() == rd.messages


def test_two_followers_commit_an_entry_the_leader_has_not_persisted() -> None:
    """With the appends sent before the leader's write, a majority of followers can commit an
    entry the leader has not yet persisted: a majority of disks holds it, which is all Raft needs."""
    c = stable_cluster()
    index = c.propose(1, b"y")
    leader = c.nodes[NodeId(1)]
    rd = leader.ready()
    for m in rd.messages_before_persist():
        c.nodes[m.target].step(m)
    c.process(2)
    c.process(3)
    for m in c.pending:
        leader.step(m)
    c.pending.clear()
    assert c.raft(1).log.commit_index == index  # nodes 2 and 3: two durable copies of three
    assert c.raft(1).log.persisted_index < index
    leader.advance(rd)
