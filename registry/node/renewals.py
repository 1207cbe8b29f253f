"""The renewals room: TTL renewals (`pass`), answered by the leader and relayed to it in batches.

A renewal must find its instance in committed state (it exists, has a TTL check) and then reach
the leader's health tracker; it never becomes a log entry (docs/health.md).

- On the leader, a renewal is answered at once under the leader lease (dissertation §6.4.1,
  ``RawNode.has_lease``) when the replica has applied the commit index; without a lease (a new
  leader, a transfer, a loop whose ticks fell behind its clock) it waits for a read-index round.
- A follower relays renewals to the leader in batches (``ForwardOp.PASS``, a list), with at most
  one batch in flight and at most one sent per ``MIN_GAP_S``; the leader answers each batch
  with one ``ForwardOp.PASS_REPLY`` (a list), and the follower answers each waiting client. A
  batch not answered within ``BATCH_RETRY_S`` is sent again (a renewal is idempotent).
- Rolling upgrades: an old follower forwards a renewal it confirmed itself as
  ``ForwardOp.HEARTBEAT`` (one instance): a new leader still renews it. An old leader cannot
  decode ``PASS`` and drops it: a follower whose batch to a leader was never answered in that
  leader's term marks the leader ``legacy`` and renews the old way (a read index here, then a
  ``HEARTBEAT`` forward) until the next term. New nodes send ``HEARTBEAT`` only then.

Malformed forwards are dropped and counted. Nothing here reads a clock: the loop passes ``now``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgpack

from registry.catalogue import CheckKind, Instance
from registry.raft import NodeId, Role
from registry.transport import ForwardOp

from .replica import Replica
from .requests import RETRY_INTERVAL_S, Caller, Failure, Outcome, Replies

MIN_GAP_S = 0.010  # between two batches from one follower
MAX_BATCH = 512  # renewals per batch
BATCH_RETRY_S = RETRY_INTERVAL_S  # a batch unanswered this long is sent again
MAX_ID_BYTES = 512  # an instance id or service name in a batch
#: The largest PASS or PASS_REPLY payload a node accepts (MAX_BATCH items of bounded size).
MAX_PASS_BYTES = MAX_BATCH * (2 * MAX_ID_BYTES + 64) + 64
MAX_PASS_REPLY_BYTES = MAX_BATCH * 1024 + 64


class Raw(Protocol):
    def basic_status(self) -> Any: ...

    def has_lease(self) -> bool: ...


class Reads(Protocol):
    def read(self, caller: Caller | None, answer: Callable[[Caller | None], None], now: float) -> None: ...

    def read_applied(self, caller: Caller | None, answer: Callable[[Caller | None], None], index: int,
                     applied_index: int, now: float) -> None: ...


class Tracker(Protocol):
    """The leader's health room, as seen from here."""

    def renew(self, service: str, instance_id: str, now: float) -> bool: ...


Forwarder = Callable[[NodeId, ForwardOp, bytes], None]
Item = tuple[str, str | None]  # (instance id, service or None)
_T = TypeVar("_T")


@dataclass(slots=True)
class _Relayed:
    caller: Caller
    item: Item
    deadline: float


@dataclass(slots=True)
class _Batch:
    id: int
    leader: NodeId
    term: int
    tokens: list[int]
    retry_at: float


@dataclass
class RenewalCounts:
    renewals: int = 0  # renewals this node's tracker took as leader
    by_lease: int = 0  # of those, answered under the lease (no read-index round)
    forwarded: int = 0  # renewals this follower relayed to the leader (resends included)
    batches: int = 0  # PASS batches sent (follower) or answered (leader)
    dropped: int = 0  # malformed or misdirected forwards, and relayed renewals that timed out
    legacy: int = 0  # renewals sent the old way, to a leader that does not answer PASS


class Renewals:
    """Invariant: a relayed renewal is in ``_waiting`` from ``renew`` until answered or expired;
    its token is in ``_queue`` or in the one batch in flight, not both."""

    def __init__(self, *, raw: Raw, replica: Replica, reads: Reads, tracker: Tracker, forward: Forwarder,
                 replies: Replies, timeout_s: float) -> None:
        self._raw = raw
        self._replica = replica
        self._reads = reads
        self._tracker = tracker
        self._forward = forward
        self._replies = replies
        self._timeout_s = timeout_s
        self._tokens = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self._waiting: dict[int, _Relayed] = {}
        self._queue: list[int] = []
        self._inflight: _Batch | None = None
        self._last_sent = float("-inf")
        self._legacy: tuple[NodeId, int] | None = None  # (leader, term) that never answered a PASS
        self._answered_by: set[tuple[NodeId, int]] = set()  # (leader, term)s that answered a PASS
        self._distrust_until = float("-inf")
        self.counts = RenewalCounts()

    # -- from clients ----------------------------------------------------------------------------

    def renew(self, caller: Caller, instance_id: str, service: str | None, now: float) -> None:
        """A client's ``pass``: answer it here as the leader, or relay it to the leader."""
        if not 0 < len(instance_id) <= MAX_ID_BYTES or (service is not None and not 0 < len(service) <= MAX_ID_BYTES):
            self._reply(caller, Failure("invalid", f"an instance id and a service name are 1-{MAX_ID_BYTES} "
                                                   "characters long"))
            return
        item = (instance_id, service)
        status = self._raw.basic_status()
        if status.role is Role.LEADER:
            self._confirm(caller, lambda done: self._reply(done, self._answer_one(item, now)), 1, status, now)
            return
        token = next(self._tokens)
        self._waiting[token] = _Relayed(caller, item, now + self._timeout_s)
        self._queue.append(token)
        self.flush(now)

    # -- from peers ------------------------------------------------------------------------------

    def on_forward(self, source: NodeId, op: ForwardOp, payload: bytes, now: float) -> None:
        if op is ForwardOp.PASS:
            self._on_batch(source, payload, now)
        elif op is ForwardOp.PASS_REPLY:
            self._on_reply(source, payload, now)
        elif op is ForwardOp.HEARTBEAT:
            self._on_legacy_heartbeat(payload, now)
        else:
            raise AssertionError(f"not a renewal: {op!r}")

    def _on_batch(self, source: NodeId, payload: bytes, now: float) -> None:
        try:
            batch_id, parsed = _unpack(payload, _item)
        except Exception:  # msgpack raises several types for garbage
            self.counts.dropped += 1
            return
        status = self._raw.basic_status()
        if status.role is not Role.LEADER:
            self.counts.dropped += 1  # the follower sends it again to the leader it learns of
            return
        self.counts.batches += 1
        tokens = [t for t, _ in parsed]
        renewals = [item for _, item in parsed]

        def answer(_: Caller | None) -> None:
            results = [self._answer_one(item, now) for item in renewals]
            self._forward(source, ForwardOp.PASS_REPLY,
                          msgpack.packb([batch_id, [_encode_result(t, r) for t, r in zip(tokens, results)]]))

        self._confirm(None, answer, len(renewals), status, now)

    def _on_reply(self, source: NodeId, payload: bytes, now: float) -> None:
        try:
            batch_id, decoded = _unpack(payload, _decode_result)
        except Exception:
            self.counts.dropped += 1
            return
        batch = self._inflight
        if batch is not None and batch.id == batch_id and batch.leader == source:
            self._answered_by.add((batch.leader, batch.term))
            self._inflight = None
        for token, outcome in decoded:
            relayed = self._waiting.pop(token, None)
            if relayed is not None:
                self._reply(relayed.caller, outcome)
        self.flush(now)

    def _on_legacy_heartbeat(self, payload: bytes, now: float) -> None:
        """An old follower's renewal, which it confirmed with a read index: renew, answer nobody."""
        try:
            service, instance_id = msgpack.unpackb(payload, raw=False)
            if not isinstance(service, str) or not isinstance(instance_id, str):
                raise ValueError("not two strings")
        except Exception:
            self.counts.dropped += 1
            return
        if self._tracker.renew(service, instance_id, now):
            self.counts.renewals += 1

    # -- time ------------------------------------------------------------------------------------

    def note_stall(self, now: float, election_s: float) -> None:
        """The loop missed ticks: its tick count lags the clock (and the followers' ticks), so a
        lease measured in ticks runs long. Distrust it until a lease from rounds sent after now
        could have replaced every older one."""
        self._distrust_until = now + election_s

    def tick(self, now: float) -> None:
        batch = self._inflight
        if batch is not None and now >= batch.retry_at:
            self._inflight = None
            if (batch.leader, batch.term) not in self._answered_by:
                self._legacy = (batch.leader, batch.term)  # maybe an old leader: see the docstring
            self._queue[:0] = [t for t in batch.tokens if t in self._waiting]
        expired = [t for t, r in self._waiting.items() if now >= r.deadline]
        if expired:
            gone = set(expired)
            self._queue = [t for t in self._queue if t not in gone]
            for token in expired:
                relayed = self._waiting.pop(token)
                self.counts.dropped += 1
                self._reply(relayed.caller, Failure("no_leader", "the leader did not confirm the renewal within "
                                                      "the timeout; retry"))
        self.flush(now)

    def flush(self, now: float) -> None:
        """Send the next batch, if one may go now."""
        if not self._queue or self._inflight is not None:
            return
        status = self._raw.basic_status()
        if status.role is Role.LEADER:
            # Elected while renewals waited to be relayed: answer them here.
            queue, self._queue = self._queue, []
            for token in queue:
                relayed = self._waiting.pop(token)
                self.renew(relayed.caller, *relayed.item, now)
            return
        if not status.leader_id or now < self._last_sent + MIN_GAP_S:
            return
        if self._is_legacy(status):
            queue, self._queue = self._queue, []
            for token in queue:
                self._renew_legacy(self._waiting.pop(token), now)
            return
        tokens, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        batch = _Batch(next(self._batch_ids), status.leader_id, int(status.term), tokens, now + BATCH_RETRY_S)
        payload = msgpack.packb([batch.id, [[t, *self._waiting[t].item] for t in tokens]])
        self._forward(status.leader_id, ForwardOp.PASS, payload)
        self._inflight = batch
        self._last_sent = now
        self.counts.batches += 1
        self.counts.forwarded += len(tokens)

    def next_due(self) -> float | None:
        """When ``flush`` may next send a waiting batch (None: nothing waits for the gap)."""
        if not self._queue or self._inflight is not None or not self._raw.basic_status().leader_id:
            return None  # NB: with no leader known, they wait for a tick (no busy loop)
        return self._last_sent + MIN_GAP_S

    def fail_all(self, code: str, message: str) -> int:
        n = len(self._waiting)
        for relayed in self._waiting.values():
            self._reply(relayed.caller, Failure(code, message))
        self._waiting.clear()
        self._queue.clear()
        self._inflight = None
        return n

    def status(self) -> dict[str, Any]:
        c = self.counts
        return {"renewals": c.renewals, "by_lease": c.by_lease, "forwarded": c.forwarded, "batches": c.batches,
                "dropped": c.dropped, "legacy": c.legacy, "pending": len(self._waiting)}

    # -- answering -------------------------------------------------------------------------------

    def _confirm(self, caller: Caller | None, answer: Callable[[Caller | None], None], renewals: int, status: Any,
                 now: float) -> None:
        """Run ``answer`` once this leader's applied state is known current: under its lease, as
        soon as it has applied its commit index (at once, nearly always); else after a read index."""
        if now >= self._distrust_until and self._raw.has_lease():
            self.counts.by_lease += renewals
            self._reads.read_applied(caller, answer, int(status.commit_index), self._replica.applied_index, now)
        else:
            self._reads.read(caller, answer, now)

    def _is_legacy(self, status: Any) -> bool:
        return self._legacy == (status.leader_id, int(status.term))

    def _answer_one(self, item: Item, now: float) -> Outcome:
        """The leader's answer to a renewal whose committed state it knows to be current."""
        found = self.lookup(*item)
        if isinstance(found, Failure):
            return found
        if self._tracker.renew(found.service, found.id, now):
            self.counts.renewals += 1
        return {"service": found.service, "instance_id": found.id, "status": found.status.value,
                "index": self._replica.view.applied_index}

    def _renew_legacy(self, relayed: _Relayed, now: float) -> None:
        """The old way, for an old leader: confirm the instance with a read index here, answer
        the client, and forward the renewal as a HEARTBEAT (which that leader understands)."""
        self.counts.legacy += 1

        def answer(caller: Caller | None) -> None:
            found = self.lookup(*relayed.item)
            assert caller is not None
            if isinstance(found, Failure):
                self._reply(caller, found)
                return
            leader = self._raw.basic_status().leader_id
            if leader:
                self._forward(leader, ForwardOp.HEARTBEAT, msgpack.packb([found.service, found.id]))
            self._reply(caller, {"service": found.service, "instance_id": found.id, "status": found.status.value,
                                 "index": self._replica.view.applied_index})

        self._reads.read(relayed.caller, answer, now)

    def _reply(self, caller: Caller, outcome: Outcome) -> None:
        if isinstance(outcome, Failure):
            self._replies.error(caller.identity, caller.request_id, outcome.code, outcome.message)
        else:
            self._replies.reply(caller.identity, caller.request_id, outcome)

    def lookup(self, instance_id: str, service: str | None) -> Instance | Failure:
        """The TTL instance a renewal names in this node's applied state, or why not."""
        view = self._replica.view
        names = [service.lower()] if service is not None else view.service_names()
        found = [i for name in names if (i := view.instance(name, instance_id)) is not None]
        if not found:
            where = f"service {service!r}" if service is not None else "any service"
            return Failure("not_found", f"no instance {instance_id!r} in {where} at index {view.applied_index} "
                                        "(deregistered, or never registered)")
        if len(found) > 1:
            return Failure("invalid", f"instance id {instance_id!r} is in services "
                                      f"{sorted(i.service for i in found)}: name the service")
        instance = found[0]
        if instance.check is None or instance.check.kind is not CheckKind.TTL:
            return Failure("invalid", f"instance {instance.service}/{instance.id} has no TTL check to renew")
        return instance


def _unpack(payload: bytes, each: Callable[[Any], _T]) -> tuple[int, list[_T]]:
    """[batch id, [entry, ...]] of a PASS or PASS_REPLY, each entry checked by ``each``."""
    batch_id, entries = msgpack.unpackb(payload, raw=False, use_list=True)
    if type(batch_id) is not int or type(entries) is not list or len(entries) > MAX_BATCH:
        raise ValueError("not [batch id, entries]")
    return batch_id, [each(entry) for entry in entries]


def _item(entry: Any) -> tuple[int, Item]:
    """One [token, instance id, service or nil] of a PASS batch, checked."""
    if type(entry) is not list or len(entry) != 3:
        raise ValueError("not [token, id, service]")
    token, instance_id, service = entry
    if (type(token) is not int or type(instance_id) is not str or not instance_id or len(instance_id) > MAX_ID_BYTES
            or not (service is None or (type(service) is str and 0 < len(service) <= MAX_ID_BYTES))):
        raise ValueError("bad renewal")
    return token, (instance_id, service)


def _encode_result(token: int, outcome: Outcome) -> list[Any]:
    if isinstance(outcome, Failure):
        return [token, outcome.code, outcome.message]
    return [token, "", [outcome["service"], outcome["instance_id"], outcome["status"], outcome["index"]]]


def _decode_result(entry: Any) -> tuple[int, Outcome]:
    """One [token, code, body] of a PASS_REPLY: code "" and [service, id, status, index], or an
    error code and its message."""
    if type(entry) is not list or len(entry) != 3 or type(entry[0]) is not int or type(entry[1]) is not str:
        raise ValueError("not [token, code, body]")
    token, code, body = entry
    if code:
        if type(body) is not str:
            raise ValueError("an error without its message")
        return token, Failure(code, body)
    if (type(body) is not list or len(body) != 4 or not all(type(v) is str for v in body[:3])
            or type(body[3]) is not int):
        raise ValueError("not [service, id, status, index]")
    return token, {"service": body[0], "instance_id": body[1], "status": body[2], "index": body[3]}
