"""The node's replica of the state machine: the catalogue and the term of its last applied entry."""

from __future__ import annotations

from collections.abc import Iterable

from registry.catalogue import Applied, Catalogue, CatalogueView, SnapshotError
from registry.catalogue.frozen import thaw
from registry.raft import Entry, EntryKind
from registry.storage import CorruptStorage


class Replica:
    """Applies committed entries in order, and restores from snapshots.

    Invariant: ``applied_term`` is the term of the entry at ``catalogue.applied_index`` (the
    snapshot's term right after a restore): `registry snapshot save` needs the pair.
    """

    def __init__(self) -> None:
        self.catalogue = Catalogue()
        self.applied_term = 0

    @property
    def view(self) -> CatalogueView:
        return self.catalogue.view

    @property
    def applied_index(self) -> int:
        return self.catalogue.view.applied_index

    def restore(self, data: bytes, index: int, term: int, what: str) -> None:
        """Replace the catalogue by a snapshot's; a snapshot that fails to restore is fatal
        (CorruptStorage: the node must not run on a state machine it cannot trust)."""
        try:
            # NB: thaw, not restore(): bytes a catalogue wrote, checked by their SHA-256; it skips
            # validating every field again, most of the cost at start (registry/catalogue/frozen.py).
            catalogue = thaw(data, max_sessions=self.catalogue.max_sessions)
        except SnapshotError as exc:
            raise CorruptStorage(f"{what} at index {index} does not restore the catalogue: {exc}") from exc
        if catalogue.applied_index != index:
            raise CorruptStorage(f"{what} at index {index} holds the catalogue at index {catalogue.applied_index}")
        self.catalogue, self.applied_term = catalogue, term

    def apply(self, entries: Iterable[Entry]) -> list[Applied]:
        """Apply committed ``entries`` in order; the outcome of each NORMAL one."""
        out: list[Applied] = []
        catalogue = self.catalogue
        term = self.applied_term
        for entry in entries:
            term = entry.term
            if entry.kind is not EntryKind.NORMAL:
                catalogue.skip(entry.index)
                continue
            out.append(catalogue.apply(entry.index, entry.data))
        self.applied_term = int(term)
        return out
