"""The storage contract every backend keeps, its statistics, and its errors.

The caller (the node loop) restores an InitialState once at start, then hands each Ready's
`snapshot`, `entries` and `hard_state` to save() BEFORE sending the Ready's messages.

Snapshots taken by the node itself go in two steps, so that the slow part never runs on the
node loop: write_snapshot() (any thread: the file only, durable on return), then, on the loop,
adopt_snapshot() (a small transaction: the snapshot becomes current and the log entries it
covers, up to `compact_to`, are deleted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from registry.raft import Entry, HardState, Index, InitialState, Membership, Snapshot, SnapshotMeta


class StorageError(Exception):
    """Storage cannot go on. The message says what was wrong and what the operator can do.

    NB: after save() raises, nothing of that batch may be assumed durable while the core has
    already moved past it: the node must stop without sending the Ready's messages.
    """


class DataDirLocked(StorageError):
    """Another process (or another storage object in this process) holds the data directory."""


class IdentityMismatch(StorageError):
    """The data directory belongs to another node name or another cluster."""


class StorageFull(StorageError):
    """The log reached its size limit; the batch was not written and nothing else was harmed."""


class CorruptStorage(StorageError):
    """Stored bytes fail validation: unknown version, bad checksum, a gap in the log, ..."""


@dataclass(frozen=True, slots=True)
class StorageStats:
    """Numbers for `registry status` and metrics. `map_size_bytes` is None when unbounded."""

    used_bytes: int
    map_size_bytes: int | None
    first_index: Index  # the first index the stored log holds: log start + 1 (<= snapshot index + 1,
    #                     lower when entries are kept behind the snapshot for slow followers)
    last_index: Index  # log start when the log is empty
    saves: int  # save() calls that wrote something
    syncs: int  # of which were made durable before returning
    deferred_hard_state: bool  # a commit-only hard state is waiting for the next durable save
    snapshot_index: Index = Index(0)  # of the current durable snapshot; 0: none
    snapshot_bytes: int = 0  # its data's size


class StoreIdentity:
    """What both stores say of themselves the same way: whose data they hold (the node's name
    and cluster, fixed when the data directory was created) and their newest snapshot's index."""

    _node_name: str
    _cluster_id: str
    _snapshot: Any  # the current durable snapshot (a Snapshot, or the LMDB store's record), or None

    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def snapshot_index(self) -> Index:
        return self._snapshot.meta.index if self._snapshot is not None else Index(0)


class Storage(Protocol):
    """Where a node keeps its Raft log and hard state (Raft figure 2: "persistent state").

    Rule 1 (atomic, ordered): save() writes its entries and hard state all or nothing, and a
    crash never keeps a later save while losing an earlier one.
    Rule 2 (durable): when save(sync=True) returns, it and every earlier save survive a crash,
    power loss included. A save(sync=False) may be lost on a crash until a later save(sync=True)
    or a clean close(). A backend may always be more durable than asked.
    Rule 3 (truncate): entries replace every stored entry at index >= entries[0].index. A batch
    must be contiguous and start at most one past the last stored index, and after the
    snapshot index (the caller breaking this is a bug: AssertionError).
    Rule 4 (restore): initial_state() returns what was saved, read back and validated; bytes
    that fail validation raise CorruptStorage, never a guess.
    Rule 5 (snapshots): a snapshot is durable before anything it covers is deleted, and a crash
    at any point leaves the old snapshot with its log or the new one with its log. Stored entries
    at or below the snapshot index but above the log start (a tail kept for slow followers) are
    never returned by initial_state().
    """

    @property
    def node_name(self) -> str: ...

    @property
    def cluster_id(self) -> str: ...

    def initial_state(self, membership: Membership) -> InitialState:
        """The snapshot point, hard state and every entry after it, in index order.

        `membership` is the bootstrap configuration, used while there is no snapshot; with one,
        the snapshot's data and its own membership are returned."""
        ...

    def save(self, entries: Sequence[Entry], hard_state: HardState | None, *, sync: bool,
             snapshot: Snapshot | None = None) -> None:
        """With `snapshot` (a follower installing a leader's): the snapshot replaces the whole
        stored log and any older snapshot, then `entries` follow it; all or nothing, durable."""
        ...

    def write_snapshot(self, snapshot: Snapshot) -> Path:
        """Write a snapshot the node took, durably, but do not make it current. Thread-safe: the
        node loop may save() meanwhile. Pass the result to adopt_snapshot() or discard_snapshot()."""
        ...

    def adopt_snapshot(self, meta: SnapshotMeta, path: Path, compact_to: Index) -> None:
        """Make the written snapshot at `path` current and delete stored entries <= compact_to
        (<= meta.index). Durable on return. A snapshot not newer than the current one is an
        AssertionError (the caller checks, and discards the file instead)."""
        ...

    def discard_snapshot(self, path: Path) -> None:
        """Remove a snapshot file written but never adopted."""
        ...

    def used_bytes(self) -> int: ...

    def stats(self) -> StorageStats: ...

    def close(self) -> None:
        """Make every save durable and release the storage. Idempotent."""
        ...


def check_batch(entries: Sequence[Entry], snapshot_index: int, last_index: int) -> None:
    """Assert Rule 3 of Storage for a batch about to be saved (a broken caller, not bad disk)."""
    if not entries:
        return
    first = entries[0].index
    assert snapshot_index < first <= last_index + 1, (
        f"entries start at index {first}, but the stored log holds ({snapshot_index}, {last_index}]: "
        "a batch must start after the snapshot and at most one past the last stored index"
    )
    for k, entry in enumerate(entries):
        assert entry.index == first + k, f"batch is not contiguous: position {k} holds index {entry.index}"
