"""A simulated disk: what a node persisted, with unsynced writes lost on a crash."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry.raft import Entry, HardState, InitialState, Membership, Snapshot, SnapshotMeta, Term


@dataclass
class SimDisk:
    """Durable state plus a write-back buffer. `sync=False` writes survive only a later sync.

    Invariant: `entries` follow index `start` contiguously; `start` <= the snapshot's index (a
    kept tail may precede the snapshot point); `start_term` is the term of the entry at `start`.
    """

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None  # the newest durable snapshot; None: the cluster's beginning
    start: int = 0
    start_term: int = 0
    _unsynced: list[tuple[tuple[Entry, ...], HardState | None, Snapshot | None]] = field(default_factory=list)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    @property
    def last(self) -> tuple[int, int]:
        """(index, term) of the last entry a restart would hold."""
        if self.entries:
            return self.entries[-1].index, self.entries[-1].term
        return self.start, self.start_term

    def term(self, index: int) -> int | None:
        """The term at `index`, or None when not held (below `start`, or beyond the last)."""
        if index == self.start:
            return self.start_term
        offset = index - self.start
        if 0 < offset <= len(self.entries):
            return self.entries[offset - 1].term
        return None

    def write(self, entries: tuple[Entry, ...], hard_state: HardState | None, *, sync: bool,
              snapshot: Snapshot | None = None) -> None:
        self._unsynced.append((entries, hard_state, snapshot))
        if sync:
            self.sync()

    def sync(self) -> None:
        for entries, hard_state, snapshot in self._unsynced:
            if snapshot is not None:  # a leader's snapshot replaces the whole log
                self.snapshot = snapshot
                self.entries = []
                self.start, self.start_term = snapshot.meta.index, snapshot.meta.term
            if entries:
                del self.entries[entries[0].index - self.start - 1:]
                self.entries.extend(entries)
            if hard_state is not None:
                self.hard_state = hard_state
        self._unsynced.clear()

    def save_snapshot(self, snapshot: Snapshot, compact_to: int) -> None:
        """A snapshot the node took, written durably; stored entries up to `compact_to` go."""
        assert compact_to <= snapshot.meta.index
        self.snapshot = snapshot
        if compact_to > self.start:
            term = self.term(compact_to)
            assert term is not None, f"compacting to {compact_to}, which the disk does not hold"
            del self.entries[:compact_to - self.start]
            self.start, self.start_term = compact_to, term

    def initial_state(self, membership: Membership) -> InitialState:
        """What a restart reads: the newest snapshot, and the entries after it."""
        if self.snapshot is None:
            return InitialState(SnapshotMeta(0, Term(0), membership), self.hard_state,  # type: ignore[arg-type]
                                tuple(self.entries))
        meta = self.snapshot.meta
        after = tuple(e for e in self.entries if e.index > meta.index)
        return InitialState(meta, self.hard_state, after, self.snapshot.data)

    def crash(self) -> int:
        """Lose what was never synced; returns how many writes were lost."""
        lost = len(self._unsynced)
        self._unsynced.clear()
        return lost
