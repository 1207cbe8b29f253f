"""A simulated disk: what a node persisted, with unsynced writes lost on a crash."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry.raft import Entry, HardState


@dataclass
class SimDisk:
    """Durable state plus a write-back buffer. `sync=False` writes survive only a later sync."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)  # entries after snapshot_index
    snapshot_index: int = 0
    _unsynced: list[tuple[tuple[Entry, ...], HardState | None]] = field(default_factory=list)

    def write(self, entries: tuple[Entry, ...], hard_state: HardState | None, *, sync: bool) -> None:
        self._unsynced.append((entries, hard_state))
        if sync:
            self.sync()

    def sync(self) -> None:
        for entries, hard_state in self._unsynced:
            if entries:
                del self.entries[entries[0].index - self.snapshot_index - 1:]
                self.entries.extend(entries)
            if hard_state is not None:
                self.hard_state = hard_state
        self._unsynced.clear()

    def crash(self) -> int:
        """Lose what was never synced; returns how many writes were lost."""
        lost = len(self._unsynced)
        self._unsynced.clear()
        return lost
