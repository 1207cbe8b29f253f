"""Storage: where a node keeps its Raft log and hard state (term, vote, commit).

Contract (the Storage protocol in base.py):
Rule 1: save(entries, hard_state, sync=...) writes its entries and hard state atomically, in
one transaction; a crash never keeps a later save while losing an earlier one.
Rule 2: when save(sync=True) returns, it and every earlier save survive a crash, power loss
included. A save(sync=False) may be lost in a crash until a later synced save or a clean
close(). The node loop saves each Ready BEFORE sending its messages, with sync=Ready.must_sync.
Rule 3: entries replace every stored entry at index >= entries[0].index (suffix truncation).
Rule 4: initial_state() validates what it reads; damaged bytes raise CorruptStorage, never a guess.
Rule 5: one process per data directory (DataDirLocked), and a data directory belongs to one
node name and one cluster forever (IdentityMismatch).

Every error is a StorageError whose message says what was wrong and what the operator can do.
After save() raises, the node must stop without sending that Ready's messages.

This package imports only registry.raft (its value types) and lmdb; LmdbStorage is the only
code that touches the disk, and only the node loop calls it. MemoryStorage is for tests.
"""

from .base import (
    CorruptStorage,
    DataDirLocked,
    IdentityMismatch,
    Storage,
    StorageError,
    StorageFull,
    StorageStats,
)
from .lmdb_store import LmdbStorage
from .memory import MemoryStorage

__all__ = [
    "CorruptStorage", "DataDirLocked", "IdentityMismatch", "LmdbStorage", "MemoryStorage", "Storage",
    "StorageError", "StorageFull", "StorageStats",
]
