"""Leader election, grouped by the section of the paper each rule comes from (etcd raft_paper_test.go).

Raft paper: §5.1 (terms), §5.2 (leader election), §5.4.1 (election restriction).
Ongaro's dissertation: §9.6 (pre-vote), §6.2 (check-quorum), §4.2.3 (ignoring votes while a
leader is known: the lease), §4.2.1 (learners, non-voting members), single-node clusters.
"""

from __future__ import annotations

import random

import pytest

from registry.raft import (
    NO_NODE,
    AppendEntries,
    AppendEntriesResponse,
    Config,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Index,
    InitialState,
    LocalError,
    Membership,
    Message,
    NodeId,
    RawNode,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
    Term,
    TimeoutNow,
)

from .env import Cluster

ET = 10  # Config.election_ticks default


# -- helpers ------------------------------------------------------------------------------------


def log_of(*terms: int) -> list[Entry]:
    """Entries at indexes 1..n with the given terms."""
    return [Entry(Term(t), Index(i)) for i, t in enumerate(terms, start=1)]


def step(c: Cluster, node: int, m: Message) -> list[Message]:
    """Feed `m` to `node`, do its Ready work, and return the messages it sent in response."""
    c.nodes[NodeId(node)].step(m)
    return flush(c, node)


def flush(c: Cluster, node: int) -> list[Message]:
    mark = len(c.sent)
    c.process(node)
    return c.sent[mark:]


def of_type(msgs: list[Message], kind: type, **fields: object) -> list[Message]:
    return [m for m in msgs if isinstance(m, kind) and all(getattr(m, k) == v for k, v in fields.items())]


def elect_among(c: Cluster, nodes: list[int], max_ticks: int = 20 * ET) -> int:
    """Tick only `nodes` (delivering everything) until one of them leads; returns it."""
    for _ in range(max_ticks):
        for n in nodes:
            c.tick(n)
        c.stabilize()
        leaders = [n for n in nodes if c.raft(n).role is Role.LEADER]
        if leaders:
            return leaders[0]
    raise AssertionError(f"none of {nodes} became leader within {max_ticks} ticks")


def campaign_intervals(rng: random.Random, count: int, *, election_ticks: int = ET) -> list[int]:
    """Ticks between successive campaigns of a node whose messages are never answered."""
    membership = Membership(frozenset({NodeId(1), NodeId(2), NodeId(3)}))
    node = RawNode(Config(NodeId(1), rng, election_ticks=election_ticks),
                   InitialState(SnapshotMeta(Index(0), Term(0), membership)))
    intervals: list[int] = []
    ticks = 0
    for _ in range(count * 2 * election_ticks + 1):
        node.tick()
        ticks += 1
        if node.has_ready():
            rd = node.ready()
            node.advance(rd)
            if any(isinstance(m, RequestVote) for m in rd.messages):
                intervals.append(ticks)
                ticks = 0
                if len(intervals) == count:
                    return intervals
    raise AssertionError(f"only {len(intervals)} campaigns in {count * 2 * election_ticks} ticks")


# == Raft §5.2: election timeout ================================================================


@pytest.mark.parametrize("pre_vote, role", [(True, Role.PRE_CANDIDATE), (False, Role.CANDIDATE)])
def test_follower_without_leader_campaigns_after_its_randomized_timeout(pre_vote: bool, role: Role) -> None:
    """A follower that hears from no leader starts a (pre-)election once its randomized election
    timeout elapses, and not one tick earlier (Raft §5.2; dissertation §9.6)."""
    c = Cluster(pre_vote=pre_vote)
    timeout = c.raft(1).randomized_election_ticks
    assert ET <= timeout < 2 * ET

    c.tick(1, timeout - 1)
    assert c.raft(1).role is Role.FOLLOWER
    assert of_type(flush(c, 1), RequestVote) == []

    c.tick(1)
    assert c.raft(1).role is role
    votes = of_type(flush(c, 1), RequestVote)
    assert sorted(m.target for m in votes) == [2, 3]
    assert all(m.term == 1 and m.pre_vote is pre_vote and not m.transfer for m in votes)
    assert c.raft(1).term == (0 if pre_vote else 1)  # a pre-candidate keeps its term


def test_followers_that_hear_heartbeats_never_campaign() -> None:
    """A follower that keeps receiving heartbeats from a leader never times out (Raft §5.2)."""
    c = Cluster()
    c.campaign(1)
    mark = len(c.sent)
    c.tick_all(10 * ET)
    assert of_type(c.sent[mark:], RequestVote) == []
    assert c.leader() == 1 and {c.raft(n).term for n in (1, 2, 3)} == {1}


def test_election_timeout_is_uniform_in_election_ticks_to_twice_election_ticks() -> None:
    """Each randomized election timeout lies in [election_ticks, 2 * election_ticks), and the
    whole range is used (Raft §5.2: randomized timeouts make split votes rare)."""
    intervals = campaign_intervals(random.Random(42), 400)
    assert all(ET <= t < 2 * ET for t in intervals), sorted(set(intervals))
    assert min(intervals) == ET and max(intervals) == 2 * ET - 1

    small = campaign_intervals(random.Random(42), 100, election_ticks=3)
    assert set(small) == {3, 4, 5}


def test_election_timeouts_come_only_from_the_random_in_config() -> None:
    """The same seed in Config gives the same timeouts, whatever the module-level random does;
    different seeds give different timeouts (Raft §5.2; the core takes randomness only from Config)."""
    random.seed(1)
    first = campaign_intervals(random.Random(7), 30)
    random.seed(2)
    random.random()
    second = campaign_intervals(random.Random(7), 30)
    assert first == second
    assert campaign_intervals(random.Random(8), 30) != first
    assert len(set(first)) > 1  # randomized, not a constant


# == Raft §5.2: winning an election =============================================================


def test_candidate_with_majority_becomes_leader_and_appends_noop_of_its_term() -> None:
    """A candidate that receives votes from a majority becomes leader and appends a no-op entry of
    its own term, which commits once replicated (Raft §5.2, §8)."""
    c = Cluster(entries={n: log_of(1, 1) for n in (1, 2, 3)}, hard_states={n: HardState(Term(1)) for n in (1, 2, 3)})
    c.campaign(1)

    leader = c.raft(1)
    assert leader.role is Role.LEADER and leader.term == 2 and leader.leader_id == 1
    noop = leader.log.entry(3)
    assert (noop.term, noop.kind, leader.log.last_index) == (2, EntryKind.NOOP, 3)
    assert leader.log.commit_index == 3
    for n in (2, 3):
        assert c.log_terms(n) == [1, 1, 2]
        assert c.raft(n).role is Role.FOLLOWER and c.raft(n).leader_id == 1 and c.raft(n).term == 2


def test_candidate_without_majority_does_not_become_leader() -> None:
    """A candidate with votes from only a minority stays candidate (Raft §5.2)."""
    c = Cluster(voters=(1, 2, 3, 4, 5), pre_vote=False)
    c.nodes[1].campaign()
    flush(c, 1)
    c.deliver(keep=lambda m: m.target == 2)  # only node 2 hears the request
    c.process(2)
    c.deliver()
    assert c.raft(1).role is Role.CANDIDATE
    assert c.raft(1).votes == {1: True, 2: True}


def test_vote_is_granted_at_most_once_per_term() -> None:
    """A voter grants at most one vote per term, first come first served; the same candidate asking
    again gets the same answer (Raft §5.2)."""
    c = Cluster()
    first = of_type(step(c, 3, RequestVote(NodeId(1), NodeId(3), Term(1), Index(0), Term(0))), RequestVoteResponse)
    assert [(m.target, m.term, m.granted) for m in first] == [(1, 1, True)]
    assert c.raft(3).voted_for == 1

    second = of_type(step(c, 3, RequestVote(NodeId(2), NodeId(3), Term(1), Index(0), Term(0))), RequestVoteResponse)
    assert [(m.target, m.term, m.granted) for m in second] == [(2, 1, False)]
    assert c.raft(3).voted_for == 1

    again = of_type(step(c, 3, RequestVote(NodeId(1), NodeId(3), Term(1), Index(0), Term(0))), RequestVoteResponse)
    assert [(m.target, m.granted) for m in again] == [(1, True)]


def test_vote_survives_a_restart() -> None:
    """The vote is part of the persisted hard state, so a voter that restarts in the same term
    refuses a second candidate (Raft §5.2, figure 2: votedFor is persistent state)."""
    c = Cluster()
    granted = of_type(step(c, 3, RequestVote(NodeId(1), NodeId(3), Term(1), Index(0), Term(0))), RequestVoteResponse)
    assert granted[0].granted
    assert c.disks[NodeId(3)].hard_state == HardState(Term(1), NodeId(1), Index(0))

    c.restart(3)
    assert (c.raft(3).term, c.raft(3).voted_for) == (1, 1)
    refused = of_type(step(c, 3, RequestVote(NodeId(2), NodeId(3), Term(1), Index(0), Term(0))), RequestVoteResponse)
    assert [(m.target, m.granted) for m in refused] == [(2, False)]
    assert c.raft(3).voted_for == 1


def test_candidates_vote_for_itself_survives_a_restart() -> None:
    """A candidate's vote for itself is persisted with its new term, so after a restart it refuses
    another candidate of that term (Raft §5.2, figure 2)."""
    c = Cluster(pre_vote=False)
    c.nodes[NodeId(1)].campaign()
    flush(c, 1)
    assert c.disks[NodeId(1)].hard_state == HardState(Term(1), NodeId(1), Index(0))

    c.restart(1)
    out = step(c, 1, RequestVote(NodeId(2), NodeId(1), Term(1), Index(0), Term(0)))
    assert [(m.target, m.term, m.granted) for m in of_type(out, RequestVoteResponse)] == [(2, 1, False)]
    assert (c.raft(1).term, c.raft(1).voted_for) == (1, 1)


def test_a_granted_vote_resets_the_election_timer() -> None:
    """A voter that grants a vote restarts its election timer, so it does not compete with the
    candidate it just voted for (Raft §5.2)."""
    c = Cluster(hard_states={n: HardState(Term(1)) for n in (1, 2, 3)})  # same term: no reset by a new term
    c.tick(3, c.raft(3).randomized_election_ticks - 1)
    out = step(c, 3, RequestVote(NodeId(1), NodeId(3), Term(1), Index(0), Term(0)))
    assert [m.granted for m in of_type(out, RequestVoteResponse)] == [True]
    c.tick(3, ET - 1)
    assert c.raft(3).role is Role.FOLLOWER
    assert of_type(flush(c, 3), RequestVote) == []


def test_split_vote_resolves_in_a_later_term() -> None:
    """When every node campaigns at once and nobody wins, the randomized timeouts make one node
    win in a later term (Raft §5.2)."""
    c = Cluster()
    for n in (1, 2, 3):
        c.nodes[NodeId(n)].campaign()  # all pass their pre-votes, then split the real vote
    c.stabilize()
    for n in (1, 2, 3):
        assert c.raft(n).role is Role.FOLLOWER and c.raft(n).term == 1 and c.raft(n).voted_for == n
    assert c.leader() is None

    for _ in range(4 * ET):
        c.tick_all(1)
        if c.leader() is not None:
            break
    leader = c.leader()
    assert leader is not None
    term = c.raft(leader).term
    assert term >= 2
    assert all(c.raft(n).term == term and c.raft(n).leader_id == leader for n in (1, 2, 3))


# == Raft §5.4.1: election restriction ==========================================================


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize("last_index, last_term, granted", [
    (3, 2, True),  # same last term, same length
    (4, 2, True),  # same last term, longer
    (2, 2, False),  # same last term, shorter
    (1, 3, True),  # higher last term wins over length
    (9, 1, False),  # lower last term loses whatever the length
    (0, 0, False),  # empty log
])
def test_vote_refused_to_candidate_with_less_up_to_date_log(last_index: int, last_term: int, granted: bool,
                                                           pre_vote: bool) -> None:
    """A voter refuses its (pre-)vote to a candidate whose log is less up to date than its own:
    compare last terms first, then last indexes (Raft §5.4.1; dissertation §9.6)."""
    c = Cluster(entries={2: log_of(1, 1, 2)}, hard_states={2: HardState(Term(2))})
    out = step(c, 2, RequestVote(NodeId(1), NodeId(2), Term(3), Index(last_index), Term(last_term), pre_vote=pre_vote))
    replies = of_type(out, RequestVoteResponse)
    assert [(m.target, m.granted, m.pre_vote) for m in replies] == [(1, granted, pre_vote)]
    if pre_vote:
        assert (c.raft(2).term, c.raft(2).voted_for) == (2, NO_NODE)  # a pre-vote changes nothing
    else:
        assert c.raft(2).term == 3
        assert c.raft(2).voted_for == (1 if granted else NO_NODE)


# == Raft §5.1: terms ===========================================================================


HIGHER = Term(5)
HIGHER_TERM_MESSAGES = {
    "AppendEntries": AppendEntries(NodeId(2), NodeId(1), HIGHER, Index(0), Term(0), (), Index(0)),
    "Heartbeat": Heartbeat(NodeId(2), NodeId(1), HIGHER, Index(0), 0),
    "AppendEntriesResponse": AppendEntriesResponse(NodeId(2), NodeId(1), HIGHER, False, Index(0)),
    "HeartbeatResponse": HeartbeatResponse(NodeId(2), NodeId(1), HIGHER, 0),
    "RequestVoteResponse": RequestVoteResponse(NodeId(2), NodeId(1), HIGHER, False),
    "RequestVoteResponse(pre_vote, rejected)": RequestVoteResponse(NodeId(2), NodeId(1), HIGHER, False, pre_vote=True),
    "ReadIndex": ReadIndex(NodeId(2), NodeId(1), HIGHER, b"ctx"),
    "ReadIndexResponse": ReadIndexResponse(NodeId(2), NodeId(1), HIGHER, Index(0), b"ctx"),
}


@pytest.mark.parametrize("start", ["follower", "candidate", "leader"])
@pytest.mark.parametrize("name", sorted(HIGHER_TERM_MESSAGES))
def test_higher_term_makes_node_follower_of_that_term_and_clears_vote(start: str, name: str) -> None:
    """Any message with a higher term makes the receiver a follower of that term with no vote cast
    in it; only AppendEntries and Heartbeat also name the leader (Raft §5.1)."""
    c = Cluster(pre_vote=False)
    if start == "leader":
        c.campaign(1)
        assert (c.raft(1).role, c.raft(1).voted_for) == (Role.LEADER, 1)
    elif start == "follower":
        c.campaign(2)
        assert (c.raft(1).role, c.raft(1).voted_for, c.raft(1).leader_id) == (Role.FOLLOWER, 2, 2)
    else:
        c.nodes[NodeId(1)].campaign()
        flush(c, 1)
        c.pending.clear()
        assert (c.raft(1).role, c.raft(1).voted_for) == (Role.CANDIDATE, 1)

    step(c, 1, HIGHER_TERM_MESSAGES[name])
    raft = c.raft(1)
    assert (raft.role, raft.term, raft.voted_for) == (Role.FOLLOWER, HIGHER, NO_NODE)
    assert raft.leader_id == (2 if name in ("AppendEntries", "Heartbeat") else NO_NODE)
    assert c.disks[NodeId(1)].hard_state.term == HIGHER and c.disks[NodeId(1)].hard_state.voted_for == NO_NODE


def test_higher_term_request_vote_is_adopted_even_when_the_vote_is_refused() -> None:
    """A RequestVote with a higher term moves the receiver to that term even if its log makes it
    refuse the vote, and the refusal carries the new term (Raft §5.1, §5.4.1)."""
    c = Cluster(pre_vote=False, entries={1: log_of(1)}, hard_states={1: HardState(Term(1), NodeId(1))})
    c.nodes[NodeId(1)].campaign()
    flush(c, 1)
    assert (c.raft(1).role, c.raft(1).term) == (Role.CANDIDATE, 2)

    out = step(c, 1, RequestVote(NodeId(2), NodeId(1), HIGHER, Index(0), Term(0)))
    assert (c.raft(1).role, c.raft(1).term, c.raft(1).voted_for) == (Role.FOLLOWER, HIGHER, NO_NODE)
    assert [(m.term, m.granted) for m in of_type(out, RequestVoteResponse)] == [(HIGHER, False)]


def test_higher_term_pre_vote_request_changes_neither_term_nor_vote() -> None:
    """A pre-vote request at a higher term is answered without touching the voter's term or vote
    (dissertation §9.6)."""
    c = Cluster(hard_states={2: HardState(Term(2), NodeId(3))})
    out = step(c, 2, RequestVote(NodeId(1), NodeId(2), Term(3), Index(0), Term(0), pre_vote=True))
    assert [(m.term, m.granted, m.pre_vote) for m in of_type(out, RequestVoteResponse)] == [(3, True, True)]
    assert (c.raft(2).role, c.raft(2).term, c.raft(2).voted_for) == (Role.FOLLOWER, 2, 3)


def test_granted_pre_vote_does_not_raise_the_pre_candidates_term() -> None:
    """A granted pre-vote carries the proposed term, which the pre-candidate does not adopt until
    it wins; a rejection from a voter at a higher term does make it a follower of that term
    (dissertation §9.6; Raft §5.1)."""
    c = Cluster(voters=(1, 2, 3, 4, 5))
    c.nodes[NodeId(1)].campaign()
    flush(c, 1)
    c.pending.clear()
    step(c, 1, RequestVoteResponse(NodeId(2), NodeId(1), Term(1), True, pre_vote=True))
    assert (c.raft(1).role, c.raft(1).term) == (Role.PRE_CANDIDATE, 0)

    step(c, 1, RequestVoteResponse(NodeId(3), NodeId(1), Term(4), False, pre_vote=True))
    assert (c.raft(1).role, c.raft(1).term) == (Role.FOLLOWER, 4)


def test_stale_request_vote_is_ignored() -> None:
    """A RequestVote from an older term gets no vote and no answer (Raft §5.1)."""
    c = Cluster(hard_states={2: HardState(Term(3))})
    out = step(c, 2, RequestVote(NodeId(1), NodeId(2), Term(2), Index(5), Term(2)))
    assert out == []
    assert (c.raft(2).term, c.raft(2).voted_for) == (3, NO_NODE)


def test_stale_pre_vote_request_is_rejected_with_the_current_term() -> None:
    """A pre-vote request from an older term is rejected with the voter's term, so the
    pre-candidate learns it is behind (dissertation §9.6)."""
    c = Cluster(hard_states={2: HardState(Term(3))})
    out = step(c, 2, RequestVote(NodeId(1), NodeId(2), Term(2), Index(5), Term(2), pre_vote=True))
    assert [(m.target, m.term, m.granted, m.pre_vote) for m in out] == [(1, 3, False, True)]
    assert (c.raft(2).term, c.raft(2).voted_for) == (3, NO_NODE)


def test_stale_vote_response_is_not_counted() -> None:
    """A candidate ignores a vote granted in an older term (Raft §5.1)."""
    c = Cluster(pre_vote=False, hard_states={1: HardState(Term(2))})
    c.nodes[NodeId(1)].campaign()
    flush(c, 1)
    assert c.raft(1).term == 3
    step(c, 1, RequestVoteResponse(NodeId(2), NodeId(1), Term(2), True))
    assert c.raft(1).role is Role.CANDIDATE
    step(c, 1, RequestVoteResponse(NodeId(2), NodeId(1), Term(3), True))
    assert c.raft(1).role is Role.LEADER


def test_stale_acknowledgement_is_not_counted_by_the_leader() -> None:
    """A leader ignores an AppendEntries acknowledgement from an older term: it must not count
    towards a commit in the current term (Raft §5.1)."""
    c = Cluster(hard_states={n: HardState(Term(2)) for n in (1, 2, 3)})
    c.campaign(1)
    assert (c.raft(1).term, c.raft(1).log.commit_index) == (3, 1)
    index = c.propose(1, b"x")
    flush(c, 1)
    c.pending.clear()

    step(c, 1, AppendEntriesResponse(NodeId(2), NodeId(1), Term(2), True, index))
    assert c.raft(1).progress[NodeId(2)].match_index == 1
    assert c.raft(1).log.commit_index == 1
    step(c, 1, AppendEntriesResponse(NodeId(2), NodeId(1), Term(3), True, index))
    assert c.raft(1).log.commit_index == index


@pytest.mark.parametrize("kind", ["AppendEntries", "Heartbeat"])
def test_stale_append_entries_is_answered_with_current_term_and_not_applied(kind: str) -> None:
    """A stale AppendEntries or Heartbeat changes nothing, but is answered with the receiver's
    term so that the old leader learns it has been replaced (Raft §5.1; etcd raft.go)."""
    c = Cluster(entries={2: log_of(1)}, hard_states={2: HardState(Term(3))})
    if kind == "AppendEntries":
        m: Message = AppendEntries(NodeId(1), NodeId(2), Term(2), Index(1), Term(1), (Entry(Term(2), Index(2)),),
                                   Index(2))
    else:
        m = Heartbeat(NodeId(1), NodeId(2), Term(2), Index(1), 0)
    out = step(c, 2, m)
    raft = c.raft(2)
    assert (raft.term, raft.leader_id, raft.log.last_index, raft.log.commit_index) == (3, NO_NODE, 1, 0)
    assert [(type(r), r.target, r.term, r.success) for r in out] == [(AppendEntriesResponse, 1, 3, False)]


def test_old_leader_learns_the_new_term_from_a_stale_heartbeat_answer() -> None:
    """A leader cut off while the others elected a new leader steps down to follower of the new term
    as soon as it sends them a heartbeat (Raft §5.1)."""
    c = Cluster()
    c.campaign(1)
    c.isolate(1)
    new_leader = elect_among(c, [2, 3])
    new_term = c.raft(new_leader).term
    assert new_term > 1 and c.raft(1).role is Role.LEADER

    c.heal()
    c.tick(1, 1)  # heartbeat_ticks == 1
    out = flush(c, 1)
    assert of_type(out, Heartbeat, term=1)
    c.deliver()
    answers = flush(c, 2) + flush(c, 3)
    assert of_type(answers, AppendEntriesResponse, target=1, term=new_term, success=False)
    c.deliver()
    assert (c.raft(1).role, c.raft(1).term) == (Role.FOLLOWER, new_term)
    c.stabilize()
    assert c.leader() == new_leader


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize("kind", ["AppendEntries", "Heartbeat"])
def test_candidate_steps_down_on_append_entries_from_a_leader_of_its_term(kind: str, pre_vote: bool) -> None:
    """A (pre-)candidate that receives AppendEntries or a heartbeat from a leader of its own term
    recognises that leader and returns to follower, keeping its term and vote (Raft §5.2)."""
    c = Cluster(pre_vote=pre_vote, hard_states={n: HardState(Term(1)) for n in (1, 2, 3)})
    c.nodes[NodeId(1)].campaign()
    flush(c, 1)
    c.pending.clear()
    term = c.raft(1).term
    voted = c.raft(1).voted_for
    assert term == (1 if pre_vote else 2)
    if kind == "AppendEntries":
        m: Message = AppendEntries(NodeId(2), NodeId(1), Term(term), Index(0), Term(0),
                                   (Entry(Term(term), Index(1), EntryKind.NOOP),), Index(0))
    else:
        m = Heartbeat(NodeId(2), NodeId(1), Term(term), Index(0), 0)
    out = step(c, 1, m)
    raft = c.raft(1)
    assert (raft.role, raft.term, raft.leader_id, raft.voted_for) == (Role.FOLLOWER, term, 2, voted)
    if kind == "AppendEntries":
        assert c.log_terms(1) == [term]
        assert of_type(out, AppendEntriesResponse, target=2, success=True, index=1)
    else:
        assert of_type(out, HeartbeatResponse, target=2, term=term)


# == Dissertation §9.6: pre-vote ================================================================


def test_partitioned_node_with_pre_vote_keeps_its_term_and_does_not_disrupt_on_rejoin() -> None:
    """With pre-vote, a node cut off from the cluster times out again and again without raising
    its term, and when it rejoins the leader keeps leading in the same term (dissertation §9.6)."""
    c = Cluster()
    c.campaign(1)
    term = c.raft(1).term
    c.isolate(3)
    c.tick_all(5 * ET)  # node 3 times out several times meanwhile
    assert of_type(c.sent, RequestVote, source=3, pre_vote=True)
    assert c.raft(3).term == term
    assert c.leader() == 1 and c.raft(1).term == term

    c.heal()
    mark = len(c.sent)
    c.tick_election(3)  # make sure it asks again once it can be heard
    c.stabilize()
    c.tick_all(3 * ET)
    assert of_type(c.sent[mark:], RequestVote, source=3)  # it did ask...
    assert not of_type(c.sent[mark:], RequestVote, pre_vote=False)  # ...but no real election followed
    assert c.leader() == 1
    assert [c.raft(n).term for n in (1, 2, 3)] == [term] * 3
    assert (c.raft(3).role, c.raft(3).leader_id) == (Role.FOLLOWER, 1)


def test_without_pre_vote_partitioned_node_raises_its_term() -> None:
    """With pre-vote disabled, every election timeout of a cut-off node starts a real election at a
    higher term (Raft §5.2), which is what pre-vote exists to prevent."""
    c = Cluster(pre_vote=False)
    c.campaign(1)
    c.isolate(3)
    for expected in (2, 3, 4):
        c.tick_election(3)
        assert (c.raft(3).role, c.raft(3).term) == (Role.CANDIDATE, expected)
        assert of_type(flush(c, 3), RequestVote, source=3, term=expected, pre_vote=False)


def test_pre_candidate_that_loses_returns_to_follower_at_its_unchanged_term() -> None:
    """A pre-candidate refused by a majority becomes a follower again without having changed its
    term or vote, and starts no real election (dissertation §9.6)."""
    c = Cluster(entries={1: log_of(1), 2: log_of(1, 1), 3: log_of(1, 1)},
                hard_states={1: HardState(Term(1), NodeId(2)), 2: HardState(Term(1)), 3: HardState(Term(1))})
    c.nodes[NodeId(1)].campaign()
    assert c.raft(1).role is Role.PRE_CANDIDATE
    c.stabilize()
    raft = c.raft(1)
    assert (raft.role, raft.term, raft.voted_for) == (Role.FOLLOWER, 1, 2)
    assert len(of_type(c.sent, RequestVoteResponse, target=1, pre_vote=True, granted=False)) == 2
    assert not of_type(c.sent, RequestVote, pre_vote=False)
    assert [c.raft(n).term for n in (1, 2, 3)] == [1, 1, 1]


def test_pre_vote_won_leads_to_real_election_at_next_term() -> None:
    """A pre-candidate that gathers a majority of pre-votes starts the real election at term + 1
    (dissertation §9.6)."""
    c = Cluster(hard_states={n: HardState(Term(4)) for n in (1, 2, 3)})
    c.campaign(1)
    pre = of_type(c.sent, RequestVote, source=1, pre_vote=True)
    real = of_type(c.sent, RequestVote, source=1, pre_vote=False)
    assert {m.term for m in pre} == {5} and {m.term for m in real} == {5}
    assert c.sent.index(pre[-1]) < c.sent.index(real[0])
    assert (c.raft(1).role, c.raft(1).term) == (Role.LEADER, 5)


# == Dissertation §4.2.3: a follower that hears from its leader ignores votes (lease) ============


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_in_lease_ignores_request_vote(pre_vote: bool) -> None:
    """A follower that heard from its leader within the election timeout ignores a (pre-)vote
    request at a higher term: no vote, no answer, no term change (dissertation §4.2.3)."""
    c = Cluster()
    c.campaign(1)
    c.tick(2, ET - 1)
    last = c.raft(1).log.last_index
    out = step(c, 2, RequestVote(NodeId(3), NodeId(2), Term(2), Index(last), Term(1), pre_vote=pre_vote))
    assert out == []
    raft = c.raft(2)
    assert (raft.term, raft.voted_for, raft.leader_id, raft.role) == (1, 1, 1, Role.FOLLOWER)


def test_follower_in_lease_grants_a_transfer_vote() -> None:
    """A vote request marked as a leadership transfer is granted even within the lease
    (dissertation §3.10, §4.2.3)."""
    c = Cluster()
    c.campaign(1)
    last = c.raft(1).log.last_index
    out = step(c, 2, RequestVote(NodeId(3), NodeId(2), Term(2), Index(last), Term(1), transfer=True))
    assert [(m.target, m.term, m.granted) for m in of_type(out, RequestVoteResponse)] == [(3, 2, True)]
    assert (c.raft(2).term, c.raft(2).voted_for) == (2, 3)


def test_node_that_cannot_hear_the_leader_does_not_disrupt_the_cluster() -> None:
    """A node that can send but no longer receive keeps timing out, but the others, still hearing
    from their leader, ignore its requests: the leader and the term stay (dissertation §4.2.3, §9.6)."""
    c = Cluster()
    c.campaign(1)
    c.cut |= {(1, 3), (2, 3)}  # node 3 hears nobody, everybody hears node 3
    mark = len(c.sent)
    c.tick_all(6 * ET)
    assert of_type(c.sent[mark:], RequestVote, source=3)  # it asked, and was heard...
    assert not of_type(c.sent[mark:], RequestVoteResponse, target=3)  # ...and ignored
    assert c.leader() == 1
    assert (c.raft(1).term, c.raft(2).term, c.raft(3).term) == (1, 1, 1)


def test_follower_out_of_lease_grants_vote() -> None:
    """Once a whole election timeout passes without word from the leader, the follower votes again
    (dissertation §4.2.3)."""
    c = Cluster()
    c.campaign(1)
    c.tick(2, ET)
    assert c.raft(2).role is Role.FOLLOWER  # its own randomized timeout has not fired yet
    last = c.raft(1).log.last_index
    out = step(c, 2, RequestVote(NodeId(3), NodeId(2), Term(2), Index(last), Term(1)))
    assert [(m.target, m.term, m.granted) for m in of_type(out, RequestVoteResponse)] == [(3, 2, True)]
    assert (c.raft(2).term, c.raft(2).voted_for) == (2, 3)


# == Dissertation §6.2: check-quorum ============================================================


def test_isolated_leader_steps_down_within_two_election_timeouts() -> None:
    """A leader that hears from no quorum for a whole election timeout steps down, so clients stop
    waiting on it; it keeps its term (dissertation §6.2)."""
    c = Cluster()
    c.campaign(1)
    c.isolate(1)
    c.tick(1, ET - 1)
    c.process(1)
    assert c.raft(1).role is Role.LEADER  # not before the first check
    c.tick(1, ET + 1)
    c.process(1)
    raft = c.raft(1)
    assert (raft.role, raft.term, raft.leader_id) == (Role.FOLLOWER, 1, NO_NODE)


def test_leader_with_a_quorum_stays_leader() -> None:
    """A leader that hears from a quorum keeps leading however long it runs, even with one
    follower cut off (dissertation §6.2)."""
    c = Cluster()
    c.campaign(1)
    c.isolate(3)
    c.tick_all(6 * ET)
    assert c.leader() == 1
    assert c.raft(1).term == 1 and c.raft(2).term == 1


def test_learners_do_not_make_a_quorum_for_check_quorum() -> None:
    """A leader that still hears from learners but from no other voter steps down: only voters
    count towards check-quorum (dissertation §6.2, §4.2.1)."""
    c = Cluster(learners=[4, 5])
    c.campaign(1)
    c.partition([1, 4, 5], [2, 3])
    for _ in range(2 * ET):
        c.tick(1)
        c.stabilize()
    assert (c.raft(1).role, c.raft(1).term) == (Role.FOLLOWER, 1)
    assert of_type(c.sent, HeartbeatResponse, source=4, target=1)  # the learners did answer


def test_isolated_leader_without_check_quorum_stays_leader() -> None:
    """With check-quorum disabled the leader does not step down on its own (dissertation §6.2):
    the step-down above is check-quorum's doing."""
    c = Cluster(check_quorum=False)
    c.campaign(1)
    c.isolate(1)
    c.tick(1, 5 * ET)
    c.process(1)
    assert c.raft(1).role is Role.LEADER


# == Dissertation §4.2.1: learners (non-voting members) ========================================


def test_learner_never_campaigns_on_timeout() -> None:
    """A learner never starts an election, however long it hears nothing (dissertation §4.2.1)."""
    c = Cluster(learners=[4])
    c.tick(4, 10 * ET)
    out = flush(c, 4)
    assert of_type(out, RequestVote) == []
    assert (c.raft(4).role, c.raft(4).term) == (Role.FOLLOWER, 0)


def test_learner_does_not_campaign_when_asked_to() -> None:
    """Even an explicit campaign() does not make a learner a candidate or a leader
    (dissertation §4.2.1; etcd refuses to campaign when not promotable)."""
    c = Cluster(learners=[4])
    try:
        c.nodes[NodeId(4)].campaign()
    except LocalError:
        pass
    c.stabilize()
    assert of_type(c.sent, RequestVote, source=4) == []
    assert (c.raft(4).role, c.raft(4).term) == (Role.FOLLOWER, 0)
    assert c.leader() is None


def test_learner_ignores_timeout_now() -> None:
    """A learner told TimeoutNow does not campaign (dissertation §3.10, §4.2.1)."""
    c = Cluster(learners=[4])
    c.campaign(1)
    out = step(c, 4, TimeoutNow(NodeId(1), NodeId(4), Term(1)))
    assert of_type(out, RequestVote) == []
    assert (c.raft(4).role, c.raft(4).term) == (Role.FOLLOWER, 1)


def test_learner_votes_never_count() -> None:
    """A candidate asks only voters, and a vote from a learner does not count towards a majority
    (dissertation §4.2.1)."""
    c = Cluster(pre_vote=False, learners=[4, 5])
    c.nodes[NodeId(1)].campaign()
    out = flush(c, 1)
    assert sorted(m.target for m in of_type(out, RequestVote)) == [2, 3]
    c.pending.clear()
    step(c, 1, RequestVoteResponse(NodeId(4), NodeId(1), Term(1), True))
    step(c, 1, RequestVoteResponse(NodeId(5), NodeId(1), Term(1), True))
    assert c.raft(1).role is Role.CANDIDATE
    step(c, 1, RequestVoteResponse(NodeId(2), NodeId(1), Term(1), True))
    assert c.raft(1).role is Role.LEADER


def test_learner_receives_the_log() -> None:
    """A learner is sent the leader's log and learns what is committed (dissertation §4.2.1)."""
    c = Cluster(learners=[4])
    c.campaign(1)
    index = c.propose(1, b"hello")
    c.stabilize()
    assert c.log_terms(4) == c.log_terms(1) == [1, 1]
    assert c.raft(4).log.commit_index == index
    assert [e.data for e in c.applied[NodeId(4)]] == [b"", b"hello"]
    assert (c.raft(4).role, c.raft(4).leader_id) == (Role.FOLLOWER, 1)


# == Single-node cluster ========================================================================


def test_single_node_elects_itself_on_its_first_timeout() -> None:
    """A lone voter is its own majority: it becomes leader as soon as its election timeout fires,
    without sending a message (Raft §5.2)."""
    c = Cluster(voters=[1])
    c.tick_election(1)
    out = flush(c, 1)
    assert (c.raft(1).role, c.raft(1).term) == (Role.LEADER, 1)
    assert out == []


def test_single_node_leader_stays_leader() -> None:
    """A lone leader is its own quorum, so check-quorum never deposes it (dissertation §6.2)."""
    c = Cluster(voters=[1])
    c.campaign(1)
    c.tick(1, 5 * ET)
    c.process(1)
    assert (c.raft(1).role, c.raft(1).term) == (Role.LEADER, 1)


def test_single_node_commits_on_its_own() -> None:
    """A lone leader commits and applies its no-op and its proposals once they are persisted
    (Raft §5.3)."""
    c = Cluster(voters=[1])
    c.campaign(1)
    assert c.raft(1).role is Role.LEADER
    index = c.propose(1, b"x")
    c.process(1)
    assert c.raft(1).log.commit_index == index == 2
    assert [(e.kind, e.data) for e in c.applied[NodeId(1)]] == [(EntryKind.NOOP, b""), (EntryKind.NORMAL, b"x")]
