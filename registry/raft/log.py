"""The in-memory Raft log: entries after the latest snapshot, plus what is durable and applied.

NB: the core keeps every entry after the snapshot point in memory and never reads storage; the
caller restores them at start (InitialState) and persists what Ready hands out. Compaction keeps
this bounded. This is what makes the core free of I/O and exactly replayable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .types import Entry, Index, SnapshotMeta, Term


class RaftLog:
    """Invariant: entry k of `_entries` has index snapshot_index + 1 + k; terms never decrease.
    Invariant: snapshot_index <= applied_index <= applying_index <= commit_index <= last_index.
    Invariant: persisted_index <= last_index; entries from unstable_from on are not yet handed out.
    """

    __slots__ = ("snapshot_index", "snapshot_term", "_entries", "commit_index", "applied_index",
                 "applying_index", "persisted_index", "unstable_from")

    def __init__(self, snapshot: SnapshotMeta, entries: Sequence[Entry], commit: int, applied: int) -> None:
        self.snapshot_index = Index(snapshot.index)
        self.snapshot_term = Term(snapshot.term)
        self._entries: list[Entry] = list(entries)
        previous_term = snapshot.term
        for k, entry in enumerate(self._entries):
            if entry.index != self.snapshot_index + 1 + k:
                raise ValueError(f"restored entries are not contiguous after index {snapshot.index}: "
                                 f"position {k} holds index {entry.index}")
            if entry.term < previous_term:
                raise ValueError(f"restored entry {entry.index} has term {entry.term}, below the term "
                                 f"{previous_term} before it: terms in a log never decrease")
            previous_term = entry.term
        last = self.last_index
        if commit > last:
            raise ValueError(f"restored commit index {commit} is beyond the last log index {last}")
        if applied > max(commit, snapshot.index):
            raise ValueError(f"applied index {applied} is beyond the commit index {commit}")
        self.commit_index = Index(max(commit, snapshot.index))
        self.applied_index = Index(max(applied, snapshot.index))
        self.applying_index = self.applied_index
        self.persisted_index = last  # whatever was restored came from stable storage
        self.unstable_from = Index(last + 1)

    # -- reading -------------------------------------------------------------------------------

    @property
    def first_index(self) -> Index:
        return Index(self.snapshot_index + 1)

    @property
    def last_index(self) -> Index:
        return Index(self.snapshot_index + len(self._entries))

    @property
    def last_term(self) -> Term:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term(self, index: int) -> Term | None:
        """The term of the entry at `index`, or None when it is compacted away or not there yet."""
        offset = index - self.snapshot_index
        if offset == 0:
            return self.snapshot_term
        if offset < 0 or offset > len(self._entries):
            return None
        return self._entries[offset - 1].term

    def entry(self, index: int) -> Entry:
        assert self.snapshot_index < index <= self.last_index, f"no entry {index} in the log"
        return self._entries[index - self.snapshot_index - 1]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi; with `max_bytes`, as many as fit but always at least one."""
        assert self.snapshot_index < lo <= hi <= self.last_index + 1, f"[{lo}, {hi}) is outside the log"
        base = self.snapshot_index + 1
        selected = self._entries[lo - base:hi - base]
        if max_bytes is None or not selected:
            return selected
        total = 0
        for count, entry in enumerate(selected):
            total += entry.size()
            if total > max_bytes and count > 0:
                return selected[:count]
        return selected

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date as ours (Raft §5.4.1)."""
        my_term = self.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index)

    def first_index_of_term(self, index: int) -> Index:
        """The first index at or below `index` holding the same term, not looking below commit+1."""
        term = self.term(index)
        floor = max(self.commit_index + 1, self.first_index)
        while index > floor and self.term(index - 1) == term:
            index -= 1
        return Index(index)

    def last_index_of_term(self, term: int, at_most: int) -> Index | None:
        """The highest index <= at_most whose entry has exactly `term`, or None."""
        index = min(at_most, self.last_index)
        while index >= self.snapshot_index:
            found = self.term(index)
            if found is None or found < term:
                return None
            if found == term:
                return Index(index)
            index -= 1
        return None

    # -- changing ------------------------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> None:
        """Add entries at the end (the leader's own proposals)."""
        for entry in entries:
            assert entry.index == self.last_index + 1, f"append of {entry.index} after {self.last_index}"
            assert entry.term >= self.last_term, "terms in the log never decrease"
            self._entries.append(entry)

    def merge(self, entries: Sequence[Entry]) -> None:
        """Take a leader's entries that follow a matching (prev_index, prev_term) (Raft §5.3).

        Entries already held are skipped; from the first conflict on, our suffix is replaced.
        Never truncates a committed entry: that would break State Machine Safety, so it crashes."""
        for position, entry in enumerate(entries):
            have = self.term(entry.index)
            if have == entry.term:
                continue
            if have is None and entry.index <= self.snapshot_index:
                continue  # already compacted, hence committed and matching
            assert entry.index > self.commit_index, (
                f"leader entry {entry.index}/{entry.term} conflicts with committed entry of term {have}")
            del self._entries[entry.index - self.snapshot_index - 1:]
            self._entries.extend(entries[position:])
            self.unstable_from = Index(min(self.unstable_from, entry.index))
            self.persisted_index = Index(min(self.persisted_index, entry.index - 1))
            return

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lower it); returns whether it moved."""
        if index <= self.commit_index:
            return False
        assert index <= self.last_index, f"commit {index} beyond last index {self.last_index}"
        self.commit_index = Index(index)
        return True

    def compact(self, index: int) -> None:
        """Forget entries up to and including `index` (a snapshot covers them). Only applied
        entries are compacted, so the snapshot point keeps its term for the log matching check."""
        assert index <= self.applied_index, f"compacting to {index} beyond the applied index {self.applied_index}"
        if index <= self.snapshot_index:
            return
        term = self.term(index)
        assert term is not None
        del self._entries[:index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = Index(index), term

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log with a leader's snapshot (Raft figure 13, steps 7-8): every
        entry is discarded, and the snapshot is committed and, once the caller restores its state
        machine from it, applied."""
        assert snapshot.index > self.commit_index, "a snapshot at or below the commit index is not restored"
        self._entries.clear()
        self.snapshot_index, self.snapshot_term = Index(snapshot.index), Term(snapshot.term)
        self.commit_index = self.applied_index = self.applying_index = Index(snapshot.index)
        self.persisted_index = Index(snapshot.index)  # NB: the Ready that carries it persists it first
        self.unstable_from = Index(snapshot.index + 1)

    # -- the Ready cycle -----------------------------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet handed out for persisting; marks them handed out."""
        if self.unstable_from > self.last_index:
            return []
        out = self._entries[self.unstable_from - self.snapshot_index - 1:]
        self.unstable_from = Index(self.last_index + 1)
        return out

    def has_unstable(self) -> bool:
        return self.unstable_from <= self.last_index

    def committed_to_apply(self) -> list[Entry]:
        """Committed entries not yet handed out for applying; marks them handed out.

        Entries not yet persisted here may be included: they are committed (durable on a quorum)
        and the caller persists a Ready's entries before it applies its committed ones."""
        hi = min(self.commit_index, self.last_index)
        if hi <= self.applying_index:
            return []
        out = self.entries(self.applying_index + 1, hi + 1)
        self.applying_index = Index(hi)
        return out

    def has_committed_to_apply(self) -> bool:
        return min(self.commit_index, self.last_index) > self.applying_index

    def persisted_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) are durable, unless the log has since changed there."""
        if index > self.persisted_index and self.term(index) == term:
            self.persisted_index = Index(index)

    def applied_to(self, index: int) -> None:
        assert index <= self.applying_index, f"applied {index} beyond what was handed out ({self.applying_index})"
        self.applied_index = Index(max(self.applied_index, index))
