"""Messages between cores: small frozen dataclasses named after the paper's RPCs.

Every message carries `source`, `target` and the sender's `term`. A message whose term is stale is
ignored (or answered so that the sender learns the newer term); a newer term makes the receiver a
follower of that term first (Raft §5.1), except for pre-votes (dissertation §9.6).
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Entry, Index, NodeId, SnapshotMeta, Term


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate -> voter (Raft §5.2, §5.4.1).

    With `pre_vote` the candidate asks whether it *would* win at `term` without changing any
    state, its own or the voter's (dissertation §9.6). With `transfer` the vote was triggered by
    TimeoutNow, so voters grant it even while they still hear from a leader (§3.10)."""

    source: NodeId
    target: NodeId
    term: Term
    last_index: Index
    last_term: Term
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    source: NodeId
    target: NodeId
    term: Term
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: replicate `entries` after (prev_index, prev_term) (Raft §5.3)."""

    source: NodeId
    target: NodeId
    term: Term
    prev_index: Index
    prev_term: Term
    entries: tuple[Entry, ...]
    leader_commit: Index


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Follower -> leader.

    On success `index` is the last index now known to match the leader's log. On rejection
    `index` is the rejected prev_index and (conflict_term, conflict_index) is the hint: the
    follower's term at prev_index and the first index it holds of that term, or (0, last+1) when
    its log is too short, so the leader backs up a whole term per round trip (Raft §5.3, end)."""

    source: NodeId
    target: NodeId
    term: Term
    success: bool
    index: Index
    conflict_term: Term = Term(0)
    conflict_index: Index = Index(0)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: an AppendEntries without entries or consistency check (etcd MsgHeartbeat).

    `leader_commit` is capped at what the follower is known to hold, so it is always safe to
    adopt. `read_seq` numbers the leader's read-index rounds: the answer echoes it (Raft §6.4)."""

    source: NodeId
    target: NodeId
    term: Term
    leader_commit: Index
    read_seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    source: NodeId
    target: NodeId
    term: Term
    read_seq: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> its chosen successor: start an election at once (dissertation §3.10)."""

    source: NodeId
    target: NodeId
    term: Term


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """Follower -> leader: ask for a read index on behalf of a local read (Raft §6.4)."""

    source: NodeId
    target: NodeId
    term: Term
    context: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    source: NodeId
    target: NodeId
    term: Term
    index: Index
    context: bytes


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower: one chunk of the leader's snapshot (Raft figure 13).

    `data` is the chunk's bytes at `offset` of the whole image; `done` marks the last chunk.
    `meta` (last included index and term, and the membership) is repeated in every chunk so that
    each one can be matched to the transfer it belongs to."""

    source: NodeId
    target: NodeId
    term: Term
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool

    def __repr__(self) -> str:
        return (f"InstallSnapshot({self.source}->{self.target}, term={self.term}, index={self.meta.index}, "
                f"offset={self.offset}, {len(self.data)} bytes, done={self.done})")


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """Follower -> leader: how many bytes of snapshot (`index`, `snapshot_term`) it now holds.

    Figure 13's reply carries only the term; `received` lets an interrupted transfer resume
    where the follower is (or restart from 0 when the follower lost its partial copy). A
    completed install is acknowledged with AppendEntriesResponse(success, index=meta.index)."""

    source: NodeId
    target: NodeId
    term: Term
    index: Index
    snapshot_term: Term
    received: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | TimeoutNow
    | ReadIndex
    | ReadIndexResponse
    | InstallSnapshot
    | InstallSnapshotResponse
)

#: Every message type, in a fixed order: a wire codec may use the position as the type tag.
MESSAGE_TYPES: tuple[type, ...] = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
    ReadIndex,
    ReadIndexResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
)
