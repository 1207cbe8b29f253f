"""The storage contract every backend keeps, its statistics, and its errors.

The caller (the node loop) restores an InitialState once at start, then hands each Ready's
`entries` and `hard_state` to save() BEFORE sending the Ready's messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from registry.raft import Entry, HardState, Index, InitialState, Membership


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
    first_index: Index  # the first index the log can hold: snapshot index + 1
    last_index: Index  # snapshot index when the log is empty
    saves: int  # save() calls that wrote something
    syncs: int  # of which were made durable before returning
    deferred_hard_state: bool  # a commit-only hard state is waiting for the next durable save


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
    """

    @property
    def node_name(self) -> str: ...

    @property
    def cluster_id(self) -> str: ...

    def initial_state(self, membership: Membership) -> InitialState:
        """The snapshot point, hard state and every entry after it, in index order.

        `membership` is the bootstrap configuration; it is used until snapshots store their own."""
        ...

    def save(self, entries: Sequence[Entry], hard_state: HardState | None, *, sync: bool) -> None: ...

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
