"""RaftLog unit tests: indexing after a snapshot, byte-capped reads, merge (Raft §5.3), the
up-to-date check (§5.4.1), the term lookups behind the conflict hint, and InitialState validation.

Grouped as etcd's log_test.go: reading, merging, helpers for the hint, restore validation, and a
property test over random leader-style histories.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.raft import (
    Config,
    Entry,
    HardState,
    Index,
    InitialState,
    Membership,
    NodeId,
    Raft,
    SnapshotMeta,
    Term,
)
from registry.raft.log import RaftLog
from registry.raft.types import ENTRY_OVERHEAD_BYTES

MEMBERS = Membership(frozenset({NodeId(1), NodeId(2), NodeId(3)}))

from .env import run


def snap(index: int = 0, term: int = 0) -> SnapshotMeta:
    return SnapshotMeta(Index(index), Term(term), MEMBERS)


def make_log(terms: list[int], *, snapshot_index: int = 0, snapshot_term: int = 0, commit: int = 0,
             applied: int = 0) -> RaftLog:
    return RaftLog(snap(snapshot_index, snapshot_term), run(snapshot_index + 1, terms), commit, applied)


def terms_of(log: RaftLog) -> list[int]:
    return [log.entry(i).term for i in range(log.first_index, log.last_index + 1)]


# -- reading a log that starts after a snapshot ------------------------------------------------


def test_log_after_snapshot_starts_at_snapshot_index_plus_one() -> None:
    """A log restored after a snapshot at index 100 starts at 101 and ends after its entries."""
    log = make_log([5, 5, 6], snapshot_index=100, snapshot_term=5, commit=100, applied=100)
    assert log.first_index == 101
    assert log.last_index == 103
    assert log.last_term == 6
    assert [log.entry(i).index for i in range(101, 104)] == [101, 102, 103]


def test_empty_log_after_snapshot_reports_the_snapshot_as_last() -> None:
    """With no entries after the snapshot, last_index/last_term are the snapshot's (Raft §7)."""
    log = make_log([], snapshot_index=100, snapshot_term=5, commit=100, applied=100)
    assert (log.first_index, log.last_index, log.last_term) == (101, 100, 5)
    assert log.commit_index == 100 and log.applied_index == 100


def test_term_of_snapshot_index_is_snapshot_term_and_compacted_indexes_are_none() -> None:
    """term() answers the snapshot term at the snapshot index, None below it and past the end (§7)."""
    log = make_log([5, 6], snapshot_index=100, snapshot_term=4, commit=100)
    assert log.term(100) == 4
    assert log.term(99) is None
    assert log.term(1) is None
    assert log.term(0) is None
    assert log.term(101) == 5
    assert log.term(102) == 6
    assert log.term(103) is None


def test_commit_and_applied_are_never_below_the_snapshot() -> None:
    """A restored commit/applied below the snapshot index is lifted to it: the snapshot is committed."""
    log = make_log([5], snapshot_index=100, snapshot_term=5, commit=0, applied=0)
    assert log.commit_index == 100
    assert log.applied_index == 100


def test_entries_below_first_index_are_refused() -> None:
    """Reading a compacted range is an invariant violation, not a silent empty answer."""
    log = make_log([5, 5], snapshot_index=100, snapshot_term=5, commit=100)
    with pytest.raises(AssertionError):
        log.entries(100, 102)
    with pytest.raises(AssertionError):
        log.entries(101, 104)  # past last_index + 1
    assert [e.index for e in log.entries(101, 103)] == [101, 102]


# -- entries() with a byte cap ------------------------------------------------------------------


def test_entries_with_byte_cap_returns_what_fits() -> None:
    """entries(lo, hi, max_bytes) stops before the entry that would exceed the cap."""
    log = RaftLog(snap(), [Entry(Term(1), Index(i), data=b"x" * 10) for i in range(1, 6)], 0, 0)
    size = 10 + ENTRY_OVERHEAD_BYTES
    assert [e.index for e in log.entries(1, 6, max_bytes=2 * size)] == [1, 2]
    assert [e.index for e in log.entries(1, 6, max_bytes=2 * size + size - 1)] == [1, 2]
    assert [e.index for e in log.entries(1, 6, max_bytes=3 * size)] == [1, 2, 3]
    assert [e.index for e in log.entries(2, 4, max_bytes=100 * size)] == [2, 3]
    assert [e.index for e in log.entries(1, 6)] == [1, 2, 3, 4, 5]


def test_entries_with_byte_cap_returns_at_least_one_entry() -> None:
    """An entry larger than the cap still goes out alone, or replication would stall (etcd limitSize)."""
    log = RaftLog(snap(), [Entry(Term(1), Index(1), data=b"x" * 1000), Entry(Term(1), Index(2))], 0, 0)
    assert [e.index for e in log.entries(1, 3, max_bytes=1)] == [1]
    assert [e.index for e in log.entries(2, 3, max_bytes=1)] == [2]
    assert log.entries(3, 3, max_bytes=1) == []


# -- merge (Raft §5.3) ----------------------------------------------------------------------------


def test_merge_appends_new_entries_after_the_last() -> None:
    """Entries past our last index are appended and become unstable (to be persisted)."""
    log = make_log([1, 1])
    log.merge(run(3, [2, 2]))
    assert terms_of(log) == [1, 1, 2, 2]
    assert [e.index for e in log.unstable_entries()] == [3, 4]


def test_merge_skips_entries_that_already_match() -> None:
    """Entries we already hold with the same term are skipped: nothing is rewritten (§5.3)."""
    log = make_log([1, 1, 2, 2])
    assert log.unstable_entries() == []  # restored entries are stable
    log.merge(run(2, [1, 2, 2]))
    assert terms_of(log) == [1, 1, 2, 2]
    assert not log.has_unstable()
    assert log.persisted_index == 4


def test_merge_keeps_a_longer_matching_suffix() -> None:
    """A shorter message whose entries all match never truncates the entries after it (§5.3:
    'if an existing entry conflicts ... delete it and all that follow'; no conflict, no delete)."""
    log = make_log([1, 1, 2, 2, 2])
    log.merge(run(2, [1, 2]))
    assert terms_of(log) == [1, 1, 2, 2, 2]
    assert not log.has_unstable()


def test_merge_truncates_only_from_the_first_conflict() -> None:
    """The first entry whose term differs and everything after it is replaced; the prefix stays."""
    log = make_log([1, 1, 2, 2, 2, 2], commit=2)
    log.merge(run(3, [2, 3, 3]))  # 3 matches, 4 conflicts
    assert terms_of(log) == [1, 1, 2, 3, 3]
    assert [e.index for e in log.unstable_entries()] == [4, 5]
    assert log.persisted_index == 3


def test_merge_can_shorten_the_log() -> None:
    """A conflicting entry followed by nothing still removes our whole longer suffix."""
    log = make_log([1, 1, 2, 2, 2, 2], commit=1)
    log.merge(run(3, [3]))
    assert terms_of(log) == [1, 1, 3]
    assert log.last_index == 3


def test_merge_refuses_to_touch_a_committed_entry() -> None:
    """A conflict at or below the commit index breaks State Machine Safety: the core crashes (§5.4)."""
    log = make_log([1, 1, 2, 2], commit=3)
    with pytest.raises(AssertionError, match="committed"):
        log.merge(run(3, [3, 3]))
    with pytest.raises(AssertionError, match="committed"):
        log.merge(run(1, [9]))
    log.merge(run(4, [3]))  # the first uncommitted index may be replaced
    assert terms_of(log) == [1, 1, 2, 3]


def test_merge_skips_entries_already_compacted() -> None:
    """Entries at or below the snapshot index are committed and matching: merge skips them."""
    log = make_log([5, 5], snapshot_index=100, snapshot_term=5, commit=100)
    log.merge(run(99, [4, 5, 5, 5, 6]))  # 99 and 100 are compacted; 101, 102 match
    assert terms_of(log) == [5, 5, 6]
    assert log.first_index == 101


# -- the up-to-date check (Raft §5.4.1) -----------------------------------------------------------


@pytest.mark.parametrize(
    "last_index, last_term, want",
    [
        (3, 3, True),  # same last term, same length
        (4, 3, True),  # same last term, longer
        (2, 3, False),  # same last term, shorter
        (1, 4, True),  # higher last term wins even when shorter
        (99, 2, False),  # lower last term loses even when longer
        (0, 0, False),  # empty log
    ],
)
def test_is_up_to_date_compares_last_term_then_length(last_index: int, last_term: int, want: bool) -> None:
    """A log is more up to date if its last term is higher, or equal with at least our length (§5.4.1)."""
    log = make_log([1, 2, 3])
    assert log.is_up_to_date(last_index, last_term) is want


def test_is_up_to_date_after_snapshot_uses_snapshot_term() -> None:
    """With no entries after the snapshot, the snapshot's (index, term) is what candidates must match."""
    log = make_log([], snapshot_index=100, snapshot_term=5, commit=100)
    assert log.is_up_to_date(100, 5)
    assert not log.is_up_to_date(99, 5)
    assert not log.is_up_to_date(200, 4)


# -- term lookups behind the conflict hint (Raft §5.3, end) ------------------------------------


def test_first_index_of_term_walks_back_to_the_start_of_the_run() -> None:
    """The follower's hint names the first index of the conflicting term's run."""
    log = make_log([1, 1, 2, 2, 2, 4, 4])
    assert log.first_index_of_term(5) == 3
    assert log.first_index_of_term(3) == 3
    assert log.first_index_of_term(7) == 6
    assert log.first_index_of_term(2) == 1


def test_first_index_of_term_never_goes_below_commit_plus_one() -> None:
    """Committed entries match the leader: the hint never points into them."""
    log = make_log([2, 2, 2, 2, 2], commit=2)
    assert log.first_index_of_term(5) == 3


def test_first_index_of_term_stops_at_the_first_index_after_a_snapshot() -> None:
    """The run may continue into the snapshot; the hint stops at the first index we hold."""
    log = make_log([5, 5, 5], snapshot_index=100, snapshot_term=5, commit=100)
    assert log.first_index_of_term(103) == 101


def test_last_index_of_term() -> None:
    """The leader's lookup: the highest index <= at_most holding exactly `term`, or None."""
    log = make_log([1, 1, 2, 2, 4, 4])
    assert log.last_index_of_term(2, 6) == 4
    assert log.last_index_of_term(2, 3) == 3
    assert log.last_index_of_term(4, 100) == 6
    assert log.last_index_of_term(1, 6) == 2
    assert log.last_index_of_term(3, 6) is None  # we never had term 3
    assert log.last_index_of_term(4, 4) is None  # nothing of term 4 at or below 4
    assert log.last_index_of_term(5, 6) is None


def test_last_index_of_term_finds_the_snapshot_point() -> None:
    """At the snapshot index the term is known, so a hint of the snapshot term resolves to it."""
    log = make_log([6, 6], snapshot_index=100, snapshot_term=5, commit=100)
    assert log.last_index_of_term(5, 102) == 100
    assert log.last_index_of_term(6, 102) == 102
    assert log.last_index_of_term(4, 102) is None


# -- restore validation ----------------------------------------------------------------------------


def make_raft(state: InitialState) -> Raft:
    return Raft(Config(NodeId(1), random.Random(0)), state)


def test_initial_state_with_a_gap_in_entries_is_rejected_clearly() -> None:
    """Restored entries must follow the snapshot index without gaps; the message says where."""
    entries = (Entry(Term(1), Index(1)), Entry(Term(1), Index(3)))
    with pytest.raises(ValueError, match=r"not contiguous after index 0: position 1 holds index 3"):
        make_raft(InitialState(snap(), HardState(Term(1)), entries))


def test_initial_state_whose_entries_do_not_follow_the_snapshot_is_rejected() -> None:
    """Entries restored after a snapshot at 100 must start at 101."""
    entries = (Entry(Term(5), Index(100)),)
    with pytest.raises(ValueError, match=r"not contiguous after index 100: position 0 holds index 100"):
        make_raft(InitialState(snap(100, 5), HardState(Term(5)), entries, b"image"))


def test_initial_state_with_commit_beyond_last_index_is_rejected_clearly() -> None:
    """A hard state committing past the restored log means the storage lost entries: refuse to start."""
    entries = (Entry(Term(1), Index(1)), Entry(Term(1), Index(2)))
    with pytest.raises(ValueError, match=r"commit index 3 is beyond the last log index 2"):
        make_raft(InitialState(snap(), HardState(Term(1), commit=Index(3)), entries))


def test_initial_state_with_applied_beyond_commit_is_rejected() -> None:
    """The state machine cannot have applied what was never committed."""
    entries = (Entry(Term(1), Index(1)), Entry(Term(1), Index(2)))
    with pytest.raises(ValueError, match=r"applied index 2 is beyond the commit index 1"):
        Raft(Config(NodeId(1), random.Random(0), applied=Index(2)),
             InitialState(snap(), HardState(Term(1), commit=Index(1)), entries))


@pytest.mark.parametrize(
    "snapshot, terms",
    [
        (snap(), [3, 1]),  # decreasing inside the restored entries
        (snap(), [1, 2, 2, 1, 2]),
        (snap(10, 5), [2]),  # the first entry is older than the snapshot it follows
    ],
    ids=["decreasing", "dip in the middle", "below the snapshot term"],
)
def test_initial_state_whose_terms_decrease_is_rejected(snapshot: SnapshotMeta, terms: list[int]) -> None:
    """RaftLog's invariant says terms never decrease (append asserts it); a restored log that
    breaks it is corrupt storage and must be refused at start, not used for votes (§5.4.1)."""
    entries = tuple(run(snapshot.index + 1, terms))
    with pytest.raises(ValueError, match="term"):
        make_raft(InitialState(snapshot, HardState(Term(max(terms + [snapshot.term]))), entries, b"image"))


def test_valid_initial_state_restores_log_and_hard_state() -> None:
    """A consistent InitialState comes back as the node's log, term, vote and commit."""
    entries = tuple(run(1, [1, 1, 2]))
    raft = make_raft(InitialState(snap(), HardState(Term(2), NodeId(3), Index(2)), entries))
    assert (raft.term, raft.voted_for, raft.log.commit_index, raft.log.last_index) == (2, 3, 2, 3)


# -- property: leader-style histories keep the log well formed --------------------------------------

# One operation is (kind, a, b, c): an append of `a % 4 + 1` entries at term bump `b % 2`, a merge
# at a prev index chosen by `a` with `b % 4 + 1` entries whose terms rise by `c`, or a commit.
operations = st.lists(
    st.tuples(st.sampled_from(["append", "merge", "commit"]), st.integers(0, 1000), st.integers(0, 1000),
              st.lists(st.integers(0, 2), min_size=1, max_size=5)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_leader_style_appends_and_merges_keep_the_log_well_formed(ops: list) -> None:
    """Any sequence of leader appends and follower merges (prev matching, entries of non-decreasing
    terms no lower than the term at prev, never conflicting with commit) keeps indexes contiguous,
    terms non-decreasing, committed entries unchanged, and the merged range equal to the message
    (Log Matching, Raft §5.3)."""
    log = make_log([1, 1], snapshot_index=10, snapshot_term=1, commit=10)
    committed: dict[int, int] = {}
    for kind, a, b, bumps in ops:
        if kind == "append":
            term = log.last_term + b % 2
            log.append(run(log.last_index + 1, [term] * (a % 4 + 1)))
        elif kind == "merge":
            prev = log.commit_index + a % (log.last_index - log.commit_index + 1)
            prev_term = log.term(prev)
            assert prev_term is not None
            terms, t = [], prev_term
            for bump in bumps:
                t += bump
                terms.append(t)
            sent = run(prev + 1, terms)
            log.merge(sent)
            assert [log.term(e.index) for e in sent] == [e.term for e in sent]
        else:
            target = log.commit_index + a % (log.last_index - log.commit_index + 1)
            log.commit_to(target)
            for i in range(log.first_index, log.commit_index + 1):
                committed.setdefault(i, log.entry(i).term)

        assert log.first_index == 11
        indexes = [log.entry(i).index for i in range(log.first_index, log.last_index + 1)]
        assert indexes == list(range(11, log.last_index + 1))
        terms_now = [log.snapshot_term, *terms_of(log)]
        assert terms_now == sorted(terms_now), f"terms decreased: {terms_now}"
        assert log.commit_index <= log.last_index
        for i, t in committed.items():
            assert log.term(i) == t, f"committed entry {i} changed"
        assert log.persisted_index <= log.last_index
