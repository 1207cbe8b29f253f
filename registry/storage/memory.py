"""MemoryStorage: the Storage protocol in memory, for unit tests and node-level tests.

It keeps the protocol at its weakest, like the simulator's disk: a save(sync=False) lives only
in a write-back buffer until a later save(sync=True) or close(), and crash() throws that buffer
away. Code that passes against it does not rely on more durability than the contract gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from registry.raft import Entry, HardState, Index, InitialState, Membership, Snapshot, SnapshotMeta, Term

from .base import StorageError, StorageFull, StorageStats, StoreIdentity, check_batch
from .codec import ENTRY_HEADER_BYTES


class MemoryStorage(StoreIdentity):
    """Durable state plus unsynced writes. `max_bytes` makes save() raise StorageFull past it."""

    def __init__(self, *, node_name: str = "memory", cluster_id: str = "memory", max_bytes: int | None = None) -> None:
        self._node_name = node_name
        self._cluster_id = cluster_id
        self._max_bytes = max_bytes
        self._closed = False
        # The log holds the indexes after _start_index (<= the snapshot index: a kept tail).
        self._start_index = Index(0)
        self._start_term = Term(0)
        # Snapshots are durable at once, as the LMDB store's files and transactions are.
        self._snapshot: Snapshot | None = None
        self._written: dict[Path, Snapshot] = {}  # write_snapshot() output, not adopted yet
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

    def initial_state(self, membership: Membership) -> InitialState:
        self._require_open()
        if self._snapshot is None:
            return InitialState(SnapshotMeta(self._start_index, self._start_term, membership),
                                self._hard_state, tuple(self._entries))
        meta = self._snapshot.meta
        after = tuple(e for e in self._entries if e.index > meta.index)
        return InitialState(meta, self._hard_state, after, self._snapshot.data)

    def write_snapshot(self, snapshot: Snapshot, *, kind: str = "node") -> Path:
        path = Path(f"memory/snap-{snapshot.meta.index:020d}-{snapshot.meta.term:020d}.snap")
        self._written[path] = snapshot
        return path

    def discard_snapshot(self, path: Path) -> None:
        self._written.pop(Path(path), None)

    def adopt_snapshot(self, meta: SnapshotMeta, path: Path, compact_to: Index) -> None:
        self._require_open()
        assert meta.index > self.snapshot_index, f"adopting {meta.index}, not after {self.snapshot_index}"
        last = self._entries[-1].index if self._entries else self._start_index
        assert compact_to <= meta.index <= last, f"compact_to {compact_to} <= {meta.index} <= {last} is broken"
        snapshot = self._written.pop(Path(path))
        assert snapshot.meta == meta, f"{path} holds {snapshot.meta}, not {meta}"
        self.sync()  # like the LMDB store: a durable transaction makes every earlier write durable
        self._snapshot = snapshot
        if compact_to > self._start_index:
            self._start_term = self._entries[compact_to - self._start_index - 1].term
            del self._entries[:compact_to - self._start_index]
            del self._durable_entries[:compact_to - self._start_index]
            self._start_index = Index(compact_to)
            self._used_bytes = _size(self._entries)

    def compact_step(self) -> bool:
        return False  # adopt_snapshot deletes the whole prefix at once

    def save(self, entries: Sequence[Entry], hard_state: HardState | None, *, sync: bool,
             snapshot: Snapshot | None = None) -> None:
        self._require_open()
        if snapshot is not None:
            meta = snapshot.meta
            assert meta.index > self.snapshot_index and snapshot.data, "a newer snapshot with data is installed"
            check_batch(entries, meta.index, meta.index)
            self.sync()
            self._snapshot = snapshot
            self._start_index, self._start_term = meta.index, meta.term
            self._entries, self._durable_entries = list(entries), list(entries)
            if hard_state is not None:
                self._hard_state = self._durable_hard_state = hard_state
            self._used_bytes = _size(self._entries)
            self._saves += 1
            self._syncs += 1
            return
        last = self._entries[-1].index if self._entries else self._start_index
        check_batch(entries, self.snapshot_index, last)
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
            snapshot_index=self.snapshot_index, snapshot_bytes=len(self._snapshot.data) if self._snapshot else 0,
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
