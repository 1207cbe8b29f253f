"""Quorum arithmetic as pure functions (etcd quorum/majority.go)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from .types import NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voters: Collection[NodeId]) -> int:
    return len(voters) // 2 + 1


def committed_index(acked: Mapping[NodeId, int], voters: Collection[NodeId]) -> int:
    """The highest value acknowledged by a majority of voters; a voter with no ack counts as 0.

    Used for match indexes (commit) and for read-index confirmation rounds alike."""
    if not voters:
        return 0
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return values[quorum_size(voters) - 1]


def vote_result(votes: Mapping[NodeId, bool], voters: Collection[NodeId]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant, else PENDING."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = quorum_size(voters)
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(active: Collection[NodeId], voters: Collection[NodeId]) -> bool:
    return sum(1 for v in voters if v in active) >= quorum_size(voters)
