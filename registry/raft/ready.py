"""Ready: the batch of work the core hands the caller, and the order in which it must be done."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import AppendEntries, Heartbeat, Message
from .types import Entry, HardState, ReadState, Snapshot, SoftState


@dataclass(frozen=True, slots=True)
class Ready:
    """Work the caller must do, in this order, then acknowledge with RawNode.advance(ready):

    1. Persist `snapshot` (when not None: it replaces the whole stored log and any older
       snapshot), then `entries` (they follow the snapshot, and replace any stored entries at
       index >= entries[0].index) and `hard_state` (when not None) in one atomic write; fsync it
       when `must_sync` (always, with a snapshot).
    2. Only then send `messages`: votes and acknowledgements in them promise that step 1 is durable.
       Exception (dissertation §10.2.1): the messages that `messages_before_persist()` returns
       MAY be sent before or during step 1; the rest (`messages_after_persist()`) must wait.
    3. Restore the state machine from `snapshot` (when not None), then apply `committed`, in
       order (they are committed on a quorum, and follow the snapshot).
    4. Answer each of `read_states` once the state machine has applied its index.
    5. Call advance(ready) before the next ready().

    `soft_state` is informational (who leads, our role) and is never persisted.

    Sending before persisting: a leader's AppendEntries and Heartbeats promise nothing about its
    own disk. The leader counts its own copy of an entry toward commit only when advance() tells
    it the entry is durable (Raft.on_persisted), so an entry the leader loses in a crash before
    its write is committed only if a majority of *other* nodes persisted it. They are safe to send
    early only when this Ready changes neither term nor vote: a message in a term the node has not
    yet made durable could outlive a crash that forgets the term (and the vote that won it).
    Sending everything after step 1 is always correct, only slower.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool
    snapshot: Snapshot | None = None  # a leader's snapshot this follower installs (Raft §7)
    # Whether hard_state carries a new term or vote. NB: True by default, the safe side: a Ready
    # built without saying so lets nothing be sent before it is persisted.
    term_or_vote_changed: bool = True

    def is_empty(self) -> bool:
        return not (self.soft_state or self.hard_state or self.entries or self.messages
                    or self.committed or self.read_states or self.snapshot)

    def messages_before_persist(self) -> tuple[Message, ...]:
        """The messages that may be sent before (or while) `entries` and `hard_state` are persisted:
        the leader's AppendEntries and Heartbeats, when the Ready changes neither term nor vote."""
        if self.term_or_vote_changed:
            return ()
        return tuple(m for m in self.messages if _may_precede_persist(m))

    def messages_after_persist(self) -> tuple[Message, ...]:
        """Every other message: sent only once step 1 is durable (votes, responses, the rest)."""
        if self.term_or_vote_changed:
            return self.messages
        return tuple(m for m in self.messages if not _may_precede_persist(m))


def _may_precede_persist(m: Message) -> bool:
    # Only a leader sends these; they carry its log and commit index, never a promise about its disk.
    return type(m) is AppendEntries or type(m) is Heartbeat
