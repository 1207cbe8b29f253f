"""Leadership transfer (Ongaro's dissertation §3.10), in the style of etcd raft_test.go's
TestLeaderTransfer* tests.

The leader brings the chosen voter's log up to date, then sends it TimeoutNow; the target starts a
real election at once (no pre-vote), and its RequestVote carries `transfer=True` so that voters
still within their lease grant it (§4.2.3). While a transfer is pending the leader refuses
proposals; a transfer that takes longer than an election timeout is abandoned.
"""

from __future__ import annotations

import pytest

from registry.raft import (
    NO_NODE,
    AppendEntries,
    HardState,
    LocalError,
    Message,
    NodeId,
    NotLeader,
    ProposalDropped,
    RequestVote,
    RequestVoteResponse,
    Role,
    Term,
    TimeoutNow,
)

from .env import Cluster

ET = 10  # Config.election_ticks default


def flush(c: Cluster, node: int) -> list[Message]:
    """Do `node`'s Ready work and return the messages it sent."""
    mark = len(c.sent)
    c.process(node)
    return c.sent[mark:]


def of_type(msgs: list[Message], kind: type, **fields: object) -> list[Message]:
    return [m for m in msgs if isinstance(m, kind) and all(getattr(m, k) == v for k, v in fields.items())]


def lagging_cluster() -> Cluster:
    """Leader 1 at term 1 with three committed proposals that node 3 missed; the network is whole again."""
    c = Cluster()
    c.campaign(1)
    c.isolate(3)
    for i in range(3):
        c.propose(1, b"cmd%d" % i)
    c.stabilize()
    c.heal()
    assert c.raft(1).log.last_index == 4 and c.raft(1).log.commit_index == 4
    assert c.raft(3).log.last_index == 1
    return c


# == Dissertation §3.10: the transfer itself ====================================================


def test_transfer_to_up_to_date_follower_sends_timeout_now_and_target_leads_in_higher_term() -> None:
    """A leader asked to hand over to a follower that holds its whole log sends it TimeoutNow at
    once; the follower wins an election in the next term and the old leader follows it
    (dissertation §3.10)."""
    c = Cluster()
    c.campaign(1)
    c.nodes[NodeId(1)].transfer_leadership(NodeId(2))
    out = flush(c, 1)
    assert [(type(m), m.target, m.term) for m in out] == [(TimeoutNow, 2, 1)]

    c.stabilize()
    assert c.leader() == 2
    assert [c.raft(n).term for n in (1, 2, 3)] == [2, 2, 2]
    assert (c.raft(1).role, c.raft(1).leader_id) == (Role.FOLLOWER, 2)
    with pytest.raises(NotLeader) as err:
        c.propose(1, b"x")
    assert err.value.leader_hint == 2


def test_transfer_to_lagging_follower_catches_it_up_before_timeout_now() -> None:
    """A leader first replicates its log to a lagging transfer target and sends TimeoutNow only once
    the target holds every entry, so the target can win (dissertation §3.10)."""
    c = lagging_cluster()
    c.nodes[NodeId(1)].transfer_leadership(NodeId(3))
    out = flush(c, 1)
    assert of_type(out, TimeoutNow) == []
    assert of_type(out, AppendEntries, target=3)
    assert c.nodes[NodeId(1)].status().lead_transferee == 3

    timeout_now: list[Message] = []
    for _ in range(50):
        c.process_all()
        timeout_now = of_type(c.pending, TimeoutNow)
        if timeout_now:
            break
        c.deliver()
    assert [(m.source, m.target, m.term) for m in timeout_now] == [(1, 3, 1)]
    assert c.raft(3).log.last_index == c.raft(1).log.last_index == 4  # caught up first

    c.stabilize()
    assert c.leader() == 3 and c.raft(3).term == 2
    assert c.log_terms(3)[:4] == [1, 1, 1, 1]
    assert [e.data for e in c.raft(3).log.entries(2, 5)] == [b"cmd0", b"cmd1", b"cmd2"]


def test_proposals_are_refused_while_a_transfer_is_pending() -> None:
    """While it hands leadership over, the leader refuses proposals with ProposalDropped and its log
    does not grow (dissertation §3.10)."""
    c = lagging_cluster()
    c.nodes[NodeId(1)].transfer_leadership(NodeId(3))
    last = c.raft(1).log.last_index
    with pytest.raises(ProposalDropped):
        c.propose(1, b"during transfer")
    assert c.raft(1).log.last_index == last
    assert c.raft(1).role is Role.LEADER


def test_transfer_that_does_not_complete_within_an_election_timeout_is_abandoned() -> None:
    """A transfer still pending after an election timeout is abandoned: the leader keeps leading
    and takes proposals again (dissertation §3.10)."""
    c = Cluster()
    c.campaign(1)
    c.isolate(3)  # the target never hears the TimeoutNow
    for _ in range(ET // 2):  # the timeout counts from the transfer, not from the last election
        c.tick(1)
        c.stabilize()
    c.nodes[NodeId(1)].transfer_leadership(NodeId(3))
    c.stabilize()
    for _ in range(ET - 1):
        c.tick(1)
        c.stabilize()
    assert c.nodes[NodeId(1)].status().lead_transferee == 3
    with pytest.raises(ProposalDropped):
        c.propose(1, b"too early")

    c.tick(1)
    c.stabilize()
    status = c.nodes[NodeId(1)].status()
    assert (status.role, status.term, status.lead_transferee) == (Role.LEADER, 1, NO_NODE)
    index = c.propose(1, b"after")
    c.stabilize()
    assert c.raft(1).log.commit_index == index
    assert c.raft(3).term == 1  # the target never campaigned


def test_transfer_to_itself_is_a_no_op() -> None:
    """A leader asked to transfer to itself sends nothing and keeps taking proposals
    (dissertation §3.10)."""
    c = Cluster()
    c.campaign(1)
    c.nodes[NodeId(1)].transfer_leadership(NodeId(1))
    assert flush(c, 1) == []
    assert c.nodes[NodeId(1)].status().lead_transferee == NO_NODE
    assert c.propose(1, b"x") == 2


# == Dissertation §3.10: misuse ================================================================


@pytest.mark.parametrize("target", [4, 9], ids=["learner", "stranger"])
def test_transfer_to_a_non_voter_raises_local_error(target: int) -> None:
    """Only a voter can take over: a transfer to a learner or an unknown node raises LocalError and
    changes nothing (dissertation §3.10, §4.2.1)."""
    c = Cluster(learners=[4])
    c.campaign(1)
    with pytest.raises(LocalError) as err:
        c.nodes[NodeId(1)].transfer_leadership(NodeId(target))
    assert not isinstance(err.value, NotLeader)
    assert of_type(flush(c, 1), TimeoutNow) == []
    assert c.nodes[NodeId(1)].status().lead_transferee == NO_NODE
    assert c.propose(1, b"still leading") == 2


def test_transfer_on_a_follower_raises_not_leader_with_the_leader_hint() -> None:
    """Only the leader can transfer; a follower raises NotLeader naming the leader it knows
    (dissertation §3.10)."""
    c = Cluster()
    c.campaign(1)
    with pytest.raises(NotLeader) as err:
        c.nodes[NodeId(2)].transfer_leadership(NodeId(3))
    assert err.value.leader_hint == 1
    assert flush(c, 2) == []


def test_transfer_without_a_known_leader_raises_not_leader_without_hint() -> None:
    """A node that knows no leader raises NotLeader with the 'no node' hint (dissertation §3.10)."""
    c = Cluster()
    with pytest.raises(NotLeader) as err:
        c.nodes[NodeId(1)].transfer_leadership(NodeId(2))
    assert err.value.leader_hint == NO_NODE


# == Dissertation §3.10 with §4.2.3: TimeoutNow overrides the lease ============================


def test_timeout_now_campaign_is_granted_by_followers_within_their_lease() -> None:
    """TimeoutNow makes the target campaign at once, without pre-vote, and its RequestVote is marked
    as a transfer so that followers that just heard from the leader still grant it
    (dissertation §3.10, §4.2.3)."""
    c = Cluster()
    c.campaign(1)
    c.nodes[NodeId(1)].transfer_leadership(NodeId(2))
    flush(c, 1)
    c.deliver()
    votes = of_type(flush(c, 2), RequestVote)
    assert sorted((m.target, m.term, m.pre_vote, m.transfer) for m in votes) == [(1, 2, False, True),
                                                                               (3, 2, False, True)]
    assert (c.raft(2).role, c.raft(2).term) == (Role.CANDIDATE, 2)

    follower = c.raft(3)
    assert follower.leader_id == 1 and follower.election_elapsed < ET  # within its lease
    c.deliver(keep=lambda m: m.target == 3)
    answers = of_type(flush(c, 3), RequestVoteResponse)
    assert [(m.target, m.term, m.granted) for m in answers] == [(2, 2, True)]

    c.deliver()
    assert c.raft(2).role is Role.LEADER
    c.stabilize()
    assert c.leader() == 2 and [c.raft(n).term for n in (1, 2, 3)] == [2, 2, 2]


def test_stale_timeout_now_is_ignored() -> None:
    """A TimeoutNow from a leader of an older term does not make the receiver campaign: only the
    current leader may hand over (dissertation §3.10; Raft §5.1)."""
    c = Cluster(hard_states={n: HardState(Term(3)) for n in (1, 2, 3)})
    c.campaign(1)
    assert c.raft(1).term == 4
    c.nodes[NodeId(2)].step(TimeoutNow(NodeId(3), NodeId(2), Term(2)))
    assert of_type(flush(c, 2), RequestVote) == []
    raft = c.raft(2)
    assert (raft.role, raft.term, raft.leader_id) == (Role.FOLLOWER, 4, 1)


# == Choosing whom to hand over to (RawNode.transfer_candidate) ================================


def test_transfer_candidate_is_the_voter_with_the_highest_match_index() -> None:
    """The candidate for a hand-over is the voter that holds the most of the leader's log, so the
    transfer needs the least catching up (dissertation §3.10)."""
    c = lagging_cluster()  # node 3 missed three entries
    status = c.nodes[NodeId(1)].status()
    assert status.progress[NodeId(2)].match_index > status.progress[NodeId(3)].match_index
    assert c.nodes[NodeId(1)].transfer_candidate() == 2


def test_transfer_candidate_breaks_a_tie_by_recent_contact_then_lowest_id() -> None:
    """Between voters equally caught up, one heard from in this election timeout wins over one
    that went quiet, and otherwise the lowest id: the choice is deterministic."""
    c = Cluster(voters=(1, 2, 3, 4, 5))
    c.campaign(1)
    c.tick_all(2)
    matches = {p: pr.match_index for p, pr in c.nodes[NodeId(1)].status().progress.items()}
    assert len(set(matches.values())) == 1, matches  # premise: a tie
    assert c.nodes[NodeId(1)].transfer_candidate() == 2

    c.isolate(2)
    c.tick_all(ET)  # a check-quorum round forgets who answered; only 3, 4 and 5 answer again
    status = c.nodes[NodeId(1)].status()
    assert status.role is Role.LEADER
    assert len({pr.match_index for pr in status.progress.values()}) == 1  # still a tie on match
    assert not status.progress[NodeId(2)].recent_active and status.progress[NodeId(3)].recent_active
    assert c.nodes[NodeId(1)].transfer_candidate() == 3


def test_transfer_candidate_is_never_a_learner() -> None:
    """A learner ahead of every voter is still not a candidate: only a voter can be elected
    (dissertation §4.2.1)."""
    c = Cluster(learners=[4])
    c.campaign(1)
    c.partition([1, 4], [2], [3])
    c.propose(1, b"only the learner gets this")
    c.stabilize()
    progress = c.nodes[NodeId(1)].status().progress
    assert progress[NodeId(4)].match_index > max(progress[NodeId(2)].match_index, progress[NodeId(3)].match_index)
    assert c.nodes[NodeId(1)].transfer_candidate() == 2


def test_transfer_candidate_is_none_without_another_voter_and_needs_the_leader() -> None:
    """A single-voter cluster has nobody to hand over to (None); a follower cannot choose and
    raises NotLeader naming the leader."""
    solo = Cluster(voters=(1,), learners=(2,))
    solo.campaign(1)
    assert solo.raft(1).role is Role.LEADER
    assert solo.nodes[NodeId(1)].transfer_candidate() is None

    c = Cluster()
    c.campaign(1)
    with pytest.raises(NotLeader) as err:
        c.nodes[NodeId(2)].transfer_candidate()
    assert err.value.leader_hint == 1
