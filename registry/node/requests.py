"""Pending client requests: writes waiting to be applied here, reads waiting for a read index.

One small public interface that every operation uses (register, deregister, services, the
snapshot ops, and the features to come):

- ``write(caller, key, data, op=...)``: propose ``data`` if this node leads, else forward it to
  the leader; re-send it every ``retry_s`` with the same bytes (the catalogue's client sessions
  apply a (client id, seq) at most once, Raft §8) until this node applies it or it times out.
  Callers that send the same ``key`` again (a client's retry) wait on the same write.
- ``read(caller, answer)``: a linearizable read (ReadIndex, Raft §6.4); ``answer(caller)`` runs
  once this node has applied the confirmed read index.
- The loop reports what happened: ``on_applied`` (each applied client entry), ``on_read_states``,
  ``on_leader_known`` (every write not yet sent to this leader in this term goes to it now: after
  a leadership transfer, or an election, no write waits for its retry timer),
  ``on_snapshot_installed``; ``tick(now)`` retries and expires;
  ``fail_all`` answers everything at shutdown.

Replies go through ``Replies`` (the client socket); the outcome of an applied write is turned
into a reply by the ``render`` function given at construction. Nothing here reads a clock: the
loop passes ``now``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from registry.catalogue import Applied
from registry.raft import NO_NODE, NoLeader, NodeId, NotLeader, ProposalDropped, RawNode, ReadState, Role
from registry.transport import ForwardOp

RETRY_INTERVAL_S = 0.5  # a write or read not done by then is proposed / forwarded / asked again


class Replies(Protocol):
    def reply(self, identity: bytes, request_id: int, result: dict[str, Any]) -> None: ...

    def error(self, identity: bytes, request_id: int, code: str, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom to answer: a client connection (its ROUTER identity) and its request id."""

    identity: bytes
    request_id: int


@dataclass(frozen=True, slots=True)
class Failure:
    """An error reply: a code from docs/client-protocol.md and a message saying why."""

    code: str
    message: str


#: The reply to an applied write: a result map, or a Failure.
Outcome = dict[str, Any] | Failure
Render = Callable[[Applied], Outcome]
Forwarder = Callable[[NodeId, ForwardOp, bytes], None]


@dataclass
class _Write:
    data: bytes
    op: ForwardOp
    waiters: list[Caller]
    deadline: float
    retry_s: float
    retry_at: float = 0.0
    sent_once: bool = False  # reached a leader at least once: a timeout means "outcome unknown"
    sent_to: tuple[NodeId, int] = (NO_NODE, 0)  # (leader, term) of the last send: this node's id if proposed here


@dataclass
class _Read:
    caller: Caller | None  # None: the node's own read (a follower's renewal batch), answered to nobody
    answer: Callable[[Caller | None], None]
    deadline: float
    retry_at: float = 0.0
    index: int | None = None  # set once the read index is confirmed


@dataclass
class RequestCounts:
    proposals: int = 0  # writes proposed here, as the leader (retries included)
    forwarded: int = 0  # writes sent to the leader (retries included)
    timeouts: int = 0  # writes answered `timeout` or `no_leader`


class Requests:
    """The node's pending writes and reads.

    Invariant: a write is in ``_writes`` from ``write()`` until it is applied here, expires or
    ``fail_all``; a read is in ``_reads`` under its current context until answered or expired.
    """

    def __init__(self, *, raw: RawNode, forward: Forwarder, replies: Replies, render: Render,
                 timeout_s: float, tick_s: float) -> None:
        self._raw = raw
        self._forward = forward
        self._replies = replies
        self._render = render
        self._timeout_s = timeout_s
        self._tick_s = tick_s  # the soonest retry when no leader is known
        self._writes: dict[tuple[str, int], _Write] = {}
        self._reads: dict[bytes, _Read] = {}
        self._waiting_apply: list[tuple[int, bytes]] = []  # (read index, context)
        self._contexts = itertools.count(1)
        self.counts = RequestCounts()

    # -- submitting ------------------------------------------------------------------------------

    def write(self, caller: Caller | None, key: tuple[str, int], data: bytes, now: float, *,
              op: ForwardOp = ForwardOp.WRITE, timeout_s: float | None = None,
              retry_s: float = RETRY_INTERVAL_S) -> None:
        """Get ``data`` (an encoded catalogue request under ``key`` = (client id, seq)) committed
        and applied here, then answer ``caller`` with its rendered outcome (None: the node's own
        write, answered to nobody)."""
        write = self._writes.get(key)
        if write is None:
            write = self._writes[key] = _Write(data, op, [], now + (timeout_s or self._timeout_s), retry_s)
        if caller is not None:
            write.waiters.append(caller)
        self._send(write, now)

    def read(self, caller: Caller | None, answer: Callable[[Caller | None], None], now: float) -> None:
        """Run ``answer(caller)`` once this node has applied a read index confirmed by a quorum
        (``caller`` None: a read on the node's own behalf, which a timeout answers to nobody)."""
        read = _Read(caller, answer, now + self._timeout_s)
        self._ask(read, now)

    def read_applied(self, caller: Caller | None, answer: Callable[[Caller | None], None], index: int,
                     applied_index: int, now: float) -> None:
        """Run ``answer(caller)`` once this node has applied ``index``, a read index the caller
        confirmed itself (the leader's commit index under its lease): no read-index round."""
        if applied_index >= index:
            answer(caller)
            return
        context = next(self._contexts).to_bytes(8, "big")
        self._reads[context] = _Read(caller, answer, now + self._timeout_s, index=index)
        self._waiting_apply.append((index, context))

    # -- what the loop reports -------------------------------------------------------------------

    def on_applied(self, applied: Applied) -> None:
        """An entry was applied here: answer whoever waits for its (client id, seq)."""
        if applied.client_id is None or applied.seq is None:
            return
        write = self._writes.pop((applied.client_id, applied.seq), None)
        if write is None or not write.waiters:
            return
        outcome = self._render(applied)
        for caller in write.waiters:
            self._answer(caller, outcome)

    def on_read_states(self, read_states: Iterable[ReadState], applied_index: int) -> None:
        """Note confirmed read indexes, then answer every read whose index is applied."""
        for state in read_states:
            read = self._reads.get(state.context)
            if read is not None and read.index is None:
                read.index = int(state.index)
                self._waiting_apply.append((read.index, state.context))
        if not self._waiting_apply:
            return
        still: list[tuple[int, bytes]] = []
        for index, context in self._waiting_apply:
            if index > applied_index:
                still.append((index, context))
                continue
            read = self._reads.pop(context, None)
            if read is not None:
                read.answer(read.caller)
        self._waiting_apply = still

    def on_leader_known(self, now: float) -> None:
        """A leader is known (again, or a new one): send it now, not at their timer, every write
        that has not gone to this leader in this term: those that never reached a leader, and
        those a previous leader dropped (a transfer under way refuses proposals) or may lose."""
        status = self._raw.basic_status()
        for write in self._writes.values():
            if write.sent_to != (status.leader_id, status.term):
                self._send(write, now)

    def on_snapshot_installed(self, now: float) -> None:
        """Writes whose entries a leader's snapshot covers are never applied here: ask the leader
        again now (the session answers a retry with the first result, Raft §8)."""
        for write in self._writes.values():
            write.retry_at = min(write.retry_at, now)

    def tick(self, now: float) -> None:
        """Retry what is due; answer what expired."""
        for key, write in list(self._writes.items()):
            if now >= write.deadline:
                del self._writes[key]
                self.counts.timeouts += 1
                failure = (Failure("timeout", "not applied within the timeout; the outcome is unknown, retry with "
                                   "the same client id and seq") if write.sent_once else
                           Failure("no_leader", "no leader could be reached within the timeout"))
                for caller in write.waiters:
                    self._answer(caller, failure)
            elif now >= write.retry_at:
                self._send(write, now)
        for context, read in list(self._reads.items()):
            if now >= read.deadline:
                del self._reads[context]
                if read.caller is not None:
                    self._answer(read.caller, Failure("no_leader", "no read index could be confirmed by a "
                                                      "quorum within the timeout"))
            elif read.index is None and now >= read.retry_at:
                del self._reads[context]  # a new context, so a late answer to the old one is ignored
                self._ask(read, now)

    def fail_all(self, code: str, message: str) -> tuple[int, int]:
        """Answer every pending request with an error; returns (writes' callers, reads)."""
        writes = sum(len(w.waiters) for w in self._writes.values())
        reads = sum(read.caller is not None for read in self._reads.values())
        for write in self._writes.values():
            for caller in write.waiters:
                self._answer(caller, Failure(code, message))
        for read in self._reads.values():
            if read.caller is not None:
                self._answer(read.caller, Failure(code, message))
        self._writes.clear()
        self._reads.clear()
        self._waiting_apply.clear()
        return writes, reads

    @property
    def pending(self) -> tuple[int, int]:
        """(writes, reads) waiting now."""
        return len(self._writes), len(self._reads)

    # -- internals -------------------------------------------------------------------------------

    def _send(self, write: _Write, now: float) -> None:
        write.retry_at = now + write.retry_s
        status = self._raw.basic_status()
        if status.role is Role.LEADER:
            try:
                self._raw.propose(write.data)
            except (NotLeader, ProposalDropped):  # e.g. a leadership transfer is under way
                write.retry_at = now + self._tick_s
                return
            self.counts.proposals += 1
            write.sent_once = True
            write.sent_to = (status.node_id, status.term)
        elif status.leader_id:
            self._forward(status.leader_id, write.op, write.data)
            self.counts.forwarded += 1
            write.sent_once = True
            write.sent_to = (status.leader_id, status.term)
        else:
            write.retry_at = now + self._tick_s

    def _ask(self, read: _Read, now: float) -> None:
        context = next(self._contexts).to_bytes(8, "big")
        self._reads[context] = read
        read.retry_at = now + RETRY_INTERVAL_S
        try:
            self._raw.read_index(context)
        except NoLeader:
            read.retry_at = now + self._tick_s

    def _answer(self, caller: Caller, outcome: Outcome) -> None:
        if isinstance(outcome, Failure):
            self._replies.error(caller.identity, caller.request_id, outcome.code, outcome.message)
        else:
            self._replies.reply(caller.identity, caller.request_id, outcome)
