"""Errors, split as h11 splits them: the caller's mistakes versus a peer's.

Invariant violations are not errors: the core raises AssertionError and the process must crash.
"""

from __future__ import annotations

from .types import NO_NODE, NodeId


class RaftError(Exception):
    """Base of every error the core raises on purpose."""


class LocalError(RaftError):
    """The caller asked for something this node cannot do now; nothing changed."""


class NotLeader(LocalError):
    """Only the leader takes proposals and transfers; `leader_hint` is 0 when no leader is known."""

    def __init__(self, leader_hint: NodeId) -> None:
        self.leader_hint = leader_hint
        hint = f"; the leader is node {leader_hint}" if leader_hint != NO_NODE else "; no leader is known"
        super().__init__(f"this node is not the leader{hint}")


class ProposalDropped(LocalError):
    """The leader refused a proposal (for example while it hands leadership over)."""


class NoLeader(LocalError):
    """A request that must reach the leader cannot, because no leader is known."""


class RemoteError(RaftError):
    """A peer's message is malformed or impossible; the message was ignored and state is unchanged."""
