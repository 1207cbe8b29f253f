"""The safety checkers themselves, on hand-made histories: each one can fail."""

from __future__ import annotations

import random

import pytest

from registry.raft import (
    Config,
    Entry,
    HardState,
    Index,
    InitialState,
    Membership,
    NodeId,
    Raft,
    ReadState,
    RequestVoteResponse,
    SnapshotMeta,
    Term,
)
from registry.sim import HealthChecker, SafetyChecker, Violation

VOTERS = frozenset({NodeId(1), NodeId(2), NodeId(3)})


def raft(node: int, term: int, entries: list[tuple[int, bytes]], commit: int = 0, voted_for: int = 0) -> Raft:
    """A core restored with the given log of (term, data) entries."""
    log = tuple(Entry(Term(t), Index(i + 1), data=d) for i, (t, d) in enumerate(entries))
    state = InitialState(SnapshotMeta(Index(0), Term(0), Membership(VOTERS)),
                         HardState(Term(term), NodeId(voted_for), Index(commit)), log)
    return Raft(Config(NodeId(node), random.Random(0)), state)


def test_two_leaders_in_one_term_is_a_violation() -> None:
    """Election safety (Raft §5.2)."""
    checker = SafetyChecker()
    checker.on_leader(NodeId(1), raft(1, 2, []))
    checker.on_leader(NodeId(1), raft(1, 2, []))  # the same leader seen again is fine
    with pytest.raises(Violation, match="election safety"):
        checker.on_leader(NodeId(2), raft(2, 2, []))


def test_two_votes_in_one_term_is_a_violation() -> None:
    """A node grants at most one vote per term (Raft §5.2); pre-votes do not count."""
    checker = SafetyChecker()
    checker.on_sent(RequestVoteResponse(NodeId(3), NodeId(1), Term(4), True))
    checker.on_sent(RequestVoteResponse(NodeId(3), NodeId(2), Term(4), True, pre_vote=True))
    checker.on_sent(RequestVoteResponse(NodeId(3), NodeId(2), Term(4), False))
    with pytest.raises(Violation, match="vote safety"):
        checker.on_sent(RequestVoteResponse(NodeId(3), NodeId(2), Term(4), True))


def test_a_forgotten_vote_is_a_violation() -> None:
    """A node that restarts in the term it voted in must remember the vote (figure 2)."""
    checker = SafetyChecker()
    checker.on_sent(RequestVoteResponse(NodeId(3), NodeId(1), Term(4), True))
    with pytest.raises(Violation, match="durability"):
        checker.on_restart(NodeId(3), raft(3, 4, [], voted_for=0))


def test_restarting_below_a_term_already_used_is_a_violation() -> None:
    checker = SafetyChecker()
    checker.on_sent(RequestVoteResponse(NodeId(3), NodeId(1), Term(4), False))
    with pytest.raises(Violation, match="durability"):
        checker.on_restart(NodeId(3), raft(3, 3, []))


def test_log_matching_catches_a_different_payload_at_the_same_index_and_term() -> None:
    """Log matching (Raft §5.3)."""
    checker = SafetyChecker()
    checker.on_persist(NodeId(1), [Entry(Term(1), Index(1), data=b"a")], prev_term=0, replaced=[])
    with pytest.raises(Violation, match="log matching"):
        checker.on_persist(NodeId(2), [Entry(Term(1), Index(1), data=b"b")], prev_term=0, replaced=[])


def test_log_matching_catches_a_different_history_before_the_same_entry() -> None:
    checker = SafetyChecker()
    checker.on_persist(NodeId(1), [Entry(Term(3), Index(5), data=b"a")], prev_term=2, replaced=[])
    with pytest.raises(Violation, match="predecessor term"):
        checker.on_persist(NodeId(2), [Entry(Term(3), Index(5), data=b"a")], prev_term=1, replaced=[])


def test_committed_entries_must_agree_and_survive() -> None:
    """State machine safety and durability of committed entries."""
    checker = SafetyChecker()
    checker.on_state(NodeId(1), raft(1, 1, [(1, b"a")], commit=1))
    with pytest.raises(Violation, match="state machine safety"):
        checker.on_state(NodeId(2), raft(2, 2, [(2, b"b")], commit=1))
    # A lagging node that never held the committed entry may write a stale leader's entry there...
    checker.on_persist(NodeId(3), [Entry(Term(2), Index(1), data=b"b")], prev_term=0, replaced=[])
    # ...but a node that held it must never lose it.
    with pytest.raises(Violation, match="committed entry lost"):
        checker.on_persist(NodeId(1), [Entry(Term(2), Index(1), data=b"b")], prev_term=0,
                           replaced=[Entry(Term(1), Index(1), data=b"a")])


def test_commit_index_must_not_go_backwards() -> None:
    checker = SafetyChecker()
    checker.on_state(NodeId(1), raft(1, 1, [(1, b"a"), (1, b"b")], commit=2))
    with pytest.raises(Violation, match="monotonicity"):
        checker.on_state(NodeId(1), raft(1, 1, [(1, b"a"), (1, b"b")], commit=1))


def test_a_leader_missing_a_committed_entry_is_a_violation() -> None:
    """Leader completeness (Raft §5.4)."""
    checker = SafetyChecker()
    checker.on_state(NodeId(1), raft(1, 1, [(1, b"a")], commit=1))
    with pytest.raises(Violation, match="leader completeness"):
        checker.on_leader(NodeId(2), raft(2, 2, []))


def test_applying_out_of_order_or_uncommitted_is_a_violation() -> None:
    checker = SafetyChecker()
    checker.on_state(NodeId(1), raft(1, 1, [(1, b"a"), (1, b"b")], commit=2))
    with pytest.raises(Violation, match="expected 1"):
        checker.on_apply(NodeId(1), [Entry(Term(1), Index(2), data=b"b")])
    with pytest.raises(Violation, match="not the committed entry"):
        checker.on_apply(NodeId(2), [Entry(Term(1), Index(1), data=b"x")])


def test_an_electable_node_without_the_newest_committed_entry_is_a_violation() -> None:
    """Figure 8: an entry of term 2 'committed' on {1, 3} while node 2 holds a term-3 entry."""
    checker = SafetyChecker()
    checker.on_state(NodeId(1), raft(1, 4, [(1, b"a"), (2, b"x")], commit=2))
    safe = {NodeId(1): (2, 2, True), NodeId(2): (1, 1, False), NodeId(3): (2, 2, True)}
    checker.check_committed_safe(safe, VOTERS)
    at_risk = {NodeId(1): (3, 4, True), NodeId(2): (2, 3, False), NodeId(3): (2, 2, True)}
    with pytest.raises(Violation, match="committed entry at risk: node 2"):
        checker.check_committed_safe(at_risk, VOTERS)


def test_a_stale_read_index_is_a_violation() -> None:
    """A read index must cover every write committed before the read began (Raft §6.4)."""
    checker = SafetyChecker()
    checker.on_state(NodeId(1), raft(1, 1, [(1, b"a"), (1, b"b")], commit=2))
    checker.on_read(NodeId(1), ReadState(Index(2), b"r"), committed_at_start=2)
    with pytest.raises(Violation, match="stale read"):
        checker.on_read(NodeId(2), ReadState(Index(1), b"r"), committed_at_start=2)
    with pytest.raises(Violation, match="beyond anything committed"):
        checker.on_read(NodeId(2), ReadState(Index(3), b"r"), committed_at_start=0)


def test_two_nodes_whose_state_differs_at_one_index_is_a_violation() -> None:
    """Snapshots are checked by the image they carry: it must equal what others applied there."""
    checker = SafetyChecker()
    checker.on_image(NodeId(1), 7, b"a" * 16)
    checker.on_image(NodeId(2), 7, b"a" * 16)
    with pytest.raises(Violation, match="state at index 7 differs"):
        checker.on_image(NodeId(3), 7, b"b" * 16)


def test_restoring_a_snapshot_older_than_what_was_applied_is_a_violation() -> None:
    checker = SafetyChecker()
    checker.on_restored(NodeId(1), 5)
    with pytest.raises(Violation, match="restored a snapshot of index 5 after applying up to 5"):
        checker.on_restored(NodeId(1), 5)


def test_an_expiry_decided_before_the_leader_watched_a_whole_ttl_is_a_violation_once_committed() -> None:
    """A new leader restarts every TTL clock at its election: expiring sooner is unsafe."""
    checker = HealthChecker()
    checker.on_lead(NodeId(2), 5, now_ms=10_000)
    checker.on_expiry_decided(1, NodeId(2), 5, "i1", ttl_ms=3000, now_ms=12_999)
    checker.on_expiry_decided(2, NodeId(2), 5, "i1", ttl_ms=3000, now_ms=13_000)
    checker.on_expiry_committed(8, 2)
    with pytest.raises(Violation, match="led term 5 for only 2999 ms of a 3000 ms TTL"):
        checker.on_expiry_committed(9, 1)


def test_an_expiry_within_the_ttl_of_a_renewal_the_leader_received_is_a_violation() -> None:
    checker = HealthChecker()
    checker.on_lead(NodeId(1), 3, now_ms=0)
    checker.on_renewal(NodeId(1), 3, "i1", now_ms=5000)
    checker.on_renewal(NodeId(2), 4, "i1", now_ms=7000)  # another leader's renewals do not count
    checker.on_expiry_decided(1, NodeId(1), 3, "i1", ttl_ms=3000, now_ms=7500)
    checker.on_expiry_decided(2, NodeId(1), 3, "i2", ttl_ms=3000, now_ms=7500)  # another instance
    checker.on_expiry_decided(3, NodeId(1), 3, "i1", ttl_ms=3000, now_ms=8000)
    checker.on_expiry_committed(10, 2)
    checker.on_expiry_committed(11, 3)
    with pytest.raises(Violation, match="received a renewal 2500 ms before"):
        checker.on_expiry_committed(12, 1)
    assert checker.expiries_checked == 3 and checker.expiry_leaderships == {(NodeId(1), 3)}


def test_an_expiry_nobody_decided_or_decided_by_a_non_leader_is_a_violation() -> None:
    checker = HealthChecker()
    checker.on_expiry_decided(1, NodeId(1), 3, "i1", ttl_ms=3000, now_ms=9000)
    with pytest.raises(Violation, match="node 1 was not leader of term 3"):
        checker.on_expiry_committed(4, 1)
    with pytest.raises(Violation, match="never decided"):
        checker.on_expiry_committed(5, 99)


def test_a_transition_that_changes_another_revision_is_a_violation() -> None:
    """News about an older incarnation changes nothing; a stale transition that does is a bug."""
    checker = HealthChecker()
    checker.on_transition_applied(NodeId(1), 9, "i1", 4, (4, "passing"), (4, "critical"))
    checker.on_transition_applied(NodeId(1), 9, "i1", 4, (7, "passing"), (7, "passing"))  # stale: no change
    checker.on_transition_applied(NodeId(1), 9, "i1", 4, None, None)  # gone: no change
    with pytest.raises(Violation, match="for revision 4 at index 9 to an instance at \\(7, 'passing'\\)"):
        checker.on_transition_applied(NodeId(2), 9, "i1", 4, (7, "passing"), (7, "critical"))
