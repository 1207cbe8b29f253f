"""The Raft consensus core: a deterministic state machine that performs no I/O.

Rule 1: no sockets, files, clocks, threads or asyncio. Time advances only via tick(); randomness
comes only from the random.Random passed in Config; storage is read by the caller at start
(InitialState) and written by the caller from each Ready.
Rule 2: the caller does each Ready's work in the order its docstring gives: persist, send,
apply, advance. Same state plus same inputs gives the same Ready.
Rule 3: this package imports only the standard library, and nothing else of ours.
"""

from .core import Config, Raft
from .errors import LocalError, NoLeader, NotLeader, ProposalDropped, RaftError, RemoteError
from .messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from .progress import Progress, ProgressState
from .quorum import VoteResult, committed_index, has_quorum, quorum_size, vote_result
from .rawnode import BasicStatus, PeerStatus, RawNode, Status
from .ready import Ready
from .types import (
    NO_NODE,
    Entry,
    EntryKind,
    HardState,
    Index,
    InitialState,
    Membership,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    Term,
)

__all__ = [
    "MESSAGE_TYPES", "NO_NODE", "AppendEntries", "AppendEntriesResponse", "BasicStatus", "Config", "Entry", "EntryKind",
    "HardState", "Heartbeat", "HeartbeatResponse", "Index", "InitialState", "InstallSnapshot",
    "InstallSnapshotResponse", "LocalError", "Membership",
    "Message", "NoLeader", "NodeId", "NotLeader", "PeerStatus", "Progress", "ProgressState",
    "ProposalDropped", "Raft", "RaftError", "RawNode", "ReadIndex", "ReadIndexResponse", "ReadState",
    "Ready", "RemoteError", "RequestVote", "RequestVoteResponse", "Role", "Snapshot", "SnapshotMeta", "SoftState",
    "Status", "Term", "TimeoutNow", "VoteResult", "committed_index", "has_quorum", "quorum_size",
    "vote_result",
]
