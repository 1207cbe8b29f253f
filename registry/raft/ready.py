"""Ready: the batch of work the core hands the caller, and the order in which it must be done."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Message
from .types import Entry, HardState, ReadState, Snapshot, SoftState


@dataclass(frozen=True, slots=True)
class Ready:
    """Work the caller must do, in this order, then acknowledge with RawNode.advance(ready):

    1. Persist `snapshot` (when not None: it replaces the whole stored log and any older
       snapshot), then `entries` (they follow the snapshot, and replace any stored entries at
       index >= entries[0].index) and `hard_state` (when not None) in one atomic write; fsync it
       when `must_sync` (always, with a snapshot).
    2. Only then send `messages`: votes and acknowledgements in them promise that step 1 is durable.
    3. Restore the state machine from `snapshot` (when not None), then apply `committed`, in
       order (they are committed on a quorum, and follow the snapshot).
    4. Answer each of `read_states` once the state machine has applied its index.
    5. Call advance(ready) before the next ready().

    `soft_state` is informational (who leads, our role) and is never persisted.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool
    snapshot: Snapshot | None = None  # a leader's snapshot this follower installs (Raft §7)

    def is_empty(self) -> bool:
        return not (self.soft_state or self.hard_state or self.entries or self.messages
                    or self.committed or self.read_states or self.snapshot)
