"""Table tests for the quorum arithmetic (etcd quorum/majority_test.go).

Raft §5.2 (a candidate wins with votes from a majority), §5.3/§5.4.2 (an entry is committed once a
majority of the voters holds it). Only voters count: acknowledgements and votes from anyone else
(learners, strangers) are ignored, and a voter that has not answered counts as 0 / undecided.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.raft import VoteResult, committed_index, has_quorum, quorum_size, vote_result

T, F = True, False
WON, LOST, PENDING = VoteResult.WON, VoteResult.LOST, VoteResult.PENDING


# -- quorum_size --------------------------------------------------------------------------------


@pytest.mark.parametrize("count, want", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_quorum_size_is_a_strict_majority(count: int, want: int) -> None:
    """A quorum is the smallest strict majority of the voters, for odd and even counts (Raft §5.2)."""
    assert quorum_size(set(range(1, count + 1))) == want


# -- committed_index ----------------------------------------------------------------------------


@pytest.mark.parametrize("acked, voters, want", [
    # odd: three voters, quorum of two
    ({1: 5, 2: 3, 3: 1}, {1, 2, 3}, 3),
    ({1: 5, 2: 5, 3: 5}, {1, 2, 3}, 5),
    ({1: 5, 2: 5, 3: 1}, {1, 2, 3}, 5),
    ({1: 1, 2: 3, 3: 5}, {1, 2, 3}, 3),  # independent of which voter holds what
    # missing acks count as 0
    ({1: 5}, {1, 2, 3}, 0),
    ({1: 5, 2: 4}, {1, 2, 3}, 4),
    ({}, {1, 2, 3}, 0),
    # even: four voters, quorum of three (a half is not a majority)
    ({1: 5, 2: 4, 3: 3, 4: 2}, {1, 2, 3, 4}, 3),
    ({1: 5, 2: 5}, {1, 2, 3, 4}, 0),
    ({1: 5, 2: 5, 3: 1}, {1, 2, 3, 4}, 1),
    ({1: 5, 2: 5, 3: 5, 4: 0}, {1, 2, 3, 4}, 5),
    # two voters: both are needed
    ({1: 5, 2: 3}, {1, 2}, 3),
    ({1: 5}, {1, 2}, 0),
    # five voters, quorum of three
    ({1: 9, 2: 8, 3: 7, 4: 1, 5: 1}, {1, 2, 3, 4, 5}, 7),
    ({1: 9, 2: 8, 4: 1}, {1, 2, 3, 4, 5}, 1),
    ({1: 9, 2: 8}, {1, 2, 3, 4, 5}, 0),
    # one voter decides alone
    ({1: 4}, {1}, 4),
    ({}, {1}, 0),
    # acks from non-voters (learners, strangers) never count
    ({1: 5, 4: 9, 5: 9}, {1, 2, 3}, 0),
    ({1: 5, 2: 2, 4: 9, 5: 9}, {1, 2, 3}, 2),
    ({7: 3}, {1}, 0),
    # an empty configuration commits nothing
    ({1: 5, 2: 5}, set(), 0),
    ({}, set(), 0),
])
def test_committed_index(acked: dict[int, int], voters: set[int], want: int) -> None:
    """The committed index is the highest index that a majority of voters has acknowledged (Raft §5.3)."""
    assert committed_index(acked, voters) == want


@settings(database=None, derandomize=True, max_examples=60)
@given(st.dictionaries(st.integers(1, 9), st.integers(0, 50)), st.sets(st.integers(1, 9), min_size=1))
def test_committed_index_is_the_largest_value_a_quorum_has_reached(acked: dict[int, int], voters: set[int]) -> None:
    """committed_index is the largest value v such that a quorum of voters acked at least v (Raft §5.3)."""
    got = committed_index(acked, voters)
    reached = lambda v: sum(1 for voter in voters if acked.get(voter, 0) >= v) >= quorum_size(voters)  # noqa: E731
    assert reached(got)
    assert not reached(got + 1)


# -- vote_result --------------------------------------------------------------------------------


@pytest.mark.parametrize("votes, voters, want", [
    # three voters
    ({}, {1, 2, 3}, PENDING),
    ({1: T}, {1, 2, 3}, PENDING),
    ({1: T, 2: T}, {1, 2, 3}, WON),
    ({1: T, 2: F}, {1, 2, 3}, PENDING),
    ({1: T, 2: F, 3: T}, {1, 2, 3}, WON),
    ({1: T, 2: F, 3: F}, {1, 2, 3}, LOST),
    ({2: F, 3: F}, {1, 2, 3}, LOST),  # lost before our own vote is even counted
    ({1: T, 2: T, 3: F}, {1, 2, 3}, WON),
    # four voters: two of four is not a majority; two rejections already lose
    ({1: T, 2: T}, {1, 2, 3, 4}, PENDING),
    ({1: T, 2: T, 3: T}, {1, 2, 3, 4}, WON),
    ({1: T, 2: T, 3: F}, {1, 2, 3, 4}, PENDING),
    ({1: T, 2: T, 3: F, 4: F}, {1, 2, 3, 4}, LOST),
    ({1: T, 2: F, 3: F}, {1, 2, 3, 4}, LOST),
    # five voters
    ({1: T, 2: T, 3: F, 4: F}, {1, 2, 3, 4, 5}, PENDING),
    ({1: T, 2: T, 3: F, 4: F, 5: T}, {1, 2, 3, 4, 5}, WON),
    ({1: T, 2: F, 3: F, 4: F}, {1, 2, 3, 4, 5}, LOST),
    # one voter
    ({}, {1}, PENDING),
    ({1: T}, {1}, WON),
    ({1: F}, {1}, LOST),
    # votes of non-voters never count, granted or not
    ({1: T, 4: T, 5: T}, {1, 2, 3}, PENDING),
    ({1: T, 4: F, 5: F}, {1, 2, 3}, PENDING),
    ({1: T, 2: F, 4: T, 5: T, 6: T}, {1, 2, 3}, PENDING),
    # an empty configuration can elect nobody
    ({}, set(), LOST),
    ({1: T}, set(), LOST),
])
def test_vote_result(votes: dict[int, bool], voters: set[int], want: VoteResult) -> None:
    """An election is won by a majority of granted votes and lost once a majority can no longer
    be reached; otherwise it is pending (Raft §5.2)."""
    assert vote_result(votes, voters) is want


# -- has_quorum ---------------------------------------------------------------------------------


@pytest.mark.parametrize("active, voters, want", [
    ({1, 2}, {1, 2, 3}, True),
    ({1, 2, 3}, {1, 2, 3}, True),
    ({1}, {1, 2, 3}, False),
    (set(), {1, 2, 3}, False),
    ({1, 2}, {1, 2, 3, 4}, False),  # half of an even count is not a quorum
    ({1, 2, 3}, {1, 2, 3, 4}, True),
    ({1, 2}, {1, 2, 3, 4, 5}, False),
    ({1, 3, 5}, {1, 2, 3, 4, 5}, True),
    ({1}, {1}, True),
    (set(), {1}, False),
    ({1, 4, 5}, {1, 2, 3}, False),  # non-voters do not make a quorum
    ({1, 2, 4}, {1, 2, 3}, True),
    ({1, 2}, set(), False),  # an empty configuration has no quorum
])
def test_has_quorum(active: set[int], voters: set[int], want: bool) -> None:
    """A set of nodes is a quorum when it holds a majority of the voters (dissertation §6.2 check-quorum)."""
    assert has_quorum(active, voters) is want
