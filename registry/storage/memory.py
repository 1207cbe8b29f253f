"""MemoryStorage: the Storage protocol in memory, for unit tests and node-level tests.

It keeps the protocol at its weakest, like the simulator's disk: a save(sync=False) lives only
in a write-back buffer until a later save(sync=True) or close(), and crash() throws that buffer
away. Code that passes against it does not rely on more durability than the contract gives.
"""

from __future__ import annotations

from collections.abc import Sequence

from registry.raft import Entry, HardState, Index, InitialState, Membership, SnapshotMeta, Term

from .base import StorageError, StorageFull, StorageStats, check_batch
from .codec import ENTRY_HEADER_BYTES


class MemoryStorage:
    """Durable state plus unsynced writes. `max_bytes` makes save() raise StorageFull past it."""

    def __init__(self, *, node_name: str = "memory", cluster_id: str = "memory", max_bytes: int | None = None) -> None:
        self._node_name = node_name
        self._cluster_id = cluster_id
        self._max_bytes = max_bytes
        self._closed = False
        self._start_index = Index(0)  # the snapshot point; 0 until snapshots exist
        self._start_term = Term(0)
        # What survives crash(): entries after _start_index, contiguous.
        self._durable_entries: list[Entry] = []
        self._durable_hard_state = HardState()
        # What the process sees: the durable state plus every unsynced save, in order.
        # Invariant: _unsynced is empty exactly when the visible state equals the durable one.
        self._entries: list[Entry] = []
        self._hard_state = HardState()
        self._unsynced: list[tuple[tuple[Entry, ...], HardState | None]] = []
        self._used_bytes = 0
        self._saves = 0
        self._syncs = 0

    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    def initial_state(self, membership: Membership) -> InitialState:
        self._require_open()
        return InitialState(SnapshotMeta(self._start_index, self._start_term, membership),
                            self._hard_state, tuple(self._entries))

    def save(self, entries: Sequence[Entry], hard_state: HardState | None, *, sync: bool) -> None:
        self._require_open()
        last = self._entries[-1].index if self._entries else self._start_index
        check_batch(entries, self._start_index, last)
        if not entries and hard_state is None:
            if sync:
                self.sync()
            return
        batch = tuple(entries)
        if batch:
            replaced = self._entries[batch[0].index - self._start_index - 1:]
            used = self._used_bytes - _size(replaced) + _size(batch)
            if self._max_bytes is not None and used > self._max_bytes:
                raise StorageFull(f"the in-memory log is full: {used} bytes would exceed its {self._max_bytes}; "
                                  "give MemoryStorage a larger max_bytes")
            _apply(self._entries, self._start_index, batch)
            self._used_bytes = used
        if hard_state is not None:
            self._hard_state = hard_state
        self._unsynced.append((batch, hard_state))
        self._saves += 1
        if sync:
            self.sync()

    def sync(self) -> None:
        """Make every earlier save durable (what an fsync does)."""
        for batch, hard_state in self._unsynced:
            _apply(self._durable_entries, self._start_index, batch)
            if hard_state is not None:
                self._durable_hard_state = hard_state
        if self._unsynced:
            self._syncs += 1
        self._unsynced.clear()

    def crash(self) -> int:
        """Lose every unsynced save, as a power cut would; returns how many were lost."""
        lost = len(self._unsynced)
        self._unsynced.clear()
        self._entries = list(self._durable_entries)
        self._hard_state = self._durable_hard_state
        self._used_bytes = _size(self._entries)
        return lost

    def reopen(self) -> MemoryStorage:
        """The storage as a restarted process finds it: only durable state, open again."""
        self.crash()
        self._closed = False
        return self

    def used_bytes(self) -> int:
        return self._used_bytes

    def stats(self) -> StorageStats:
        return StorageStats(
            used_bytes=self._used_bytes, map_size_bytes=self._max_bytes,
            first_index=Index(self._start_index + 1),
            last_index=self._entries[-1].index if self._entries else self._start_index,
            saves=self._saves, syncs=self._syncs,
            deferred_hard_state=any(hs is not None for _, hs in self._unsynced),
        )

    def close(self) -> None:
        """A clean close makes everything durable. Idempotent."""
        if not self._closed:
            self.sync()
            self._closed = True

    def __enter__(self) -> MemoryStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise StorageError("the in-memory storage is closed")


def _apply(log: list[Entry], start_index: int, batch: tuple[Entry, ...]) -> None:
    if batch:
        del log[batch[0].index - start_index - 1:]
        log.extend(batch)


def _size(entries: Sequence[Entry]) -> int:
    return sum(len(e.data) + ENTRY_HEADER_BYTES for e in entries)
