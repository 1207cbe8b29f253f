"""Value types shared by every layer: identifiers, log entries, persistent and volatile state."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
Index = NewType("Index", int)

#: "no node": a vote not yet cast, a leader not yet known. Real node ids are non-zero.
NO_NODE = NodeId(0)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    NORMAL = 0  # a command for the state machine
    NOOP = 1  # appended by every new leader (Raft §8) so it can commit entries of earlier terms


@dataclass(frozen=True, slots=True)
class Entry:
    term: Term
    index: Index
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Bytes this entry costs in a message: payload plus a fixed overhead for the header."""
        return len(self.data) + ENTRY_OVERHEAD_BYTES


ENTRY_OVERHEAD_BYTES = 24


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before any message that depends on it is sent (Raft figure 2)."""

    term: Term = Term(0)
    voted_for: NodeId = NO_NODE
    commit: Index = Index(0)


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile, informational: who leads and what this node is. Never persisted."""

    leader_id: NodeId
    role: Role


@dataclass(frozen=True, slots=True)
class Membership:
    """The cluster's configuration as the core reads it: voters decide; learners only receive the log."""

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if NO_NODE in self.voters or NO_NODE in self.learners:
            raise ValueError("node id 0 is reserved for 'no node'")
        if self.voters & self.learners:
            raise ValueError(f"nodes {sorted(self.voters & self.learners)} are both voter and learner")

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The point the log starts after: everything up to and including `index` is compacted away.

    A brand-new cluster starts from SnapshotMeta(index=0, term=0, membership=...)."""

    index: Index
    term: Term
    membership: Membership


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image as of `meta.index`, in bytes only the caller understands.

    The core never looks inside `data`: it only hands it out in InstallSnapshot chunks (Raft
    §7) and receives it whole from a leader in a Ready. `data` is any bytes-like object that can
    be sliced and measured (bytes, or a memoryview of a mapped file)."""

    meta: SnapshotMeta
    data: bytes

    def __repr__(self) -> str:  # NB: data can be megabytes; never print it
        return f"Snapshot(index={self.meta.index}, term={self.meta.term}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class InitialState:
    """What a node restores from its storage on start: the caller reads it, the core never does.

    `snapshot_data` is the image at `snapshot.index` (what a leader sends a follower that is too
    far behind); it must be non-empty whenever snapshot.index > 0."""

    snapshot: SnapshotMeta
    hard_state: HardState = field(default_factory=HardState)
    entries: tuple[Entry, ...] = ()  # entries after snapshot.index, contiguous
    snapshot_data: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read is safe once the local state machine has applied `index` (Raft §6.4)."""

    index: Index
    context: bytes
