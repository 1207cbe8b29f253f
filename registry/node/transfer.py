"""The node's transfer room: leadership hand-overs (dissertation §3.10) and whoever waits for one.

Any node accepts a ``leader_transfer`` (docs/client-protocol.md): the leader starts the transfer
itself (``RawNode.transfer_leadership`` to the named voter, or to ``transfer_candidate()``, the
most caught-up one); a follower forwards it to the leader it knows (``ForwardOp.TRANSFER``) and
answers its caller when the leader's ``ForwardOp.TRANSFER_REPLY`` comes back. SIGTERM on a leader
uses the same path with the loop itself waiting.

A transfer succeeds when this node sees the target lead (a follower of the target, in a later
term). It fails when the target is not a voter or not a member, when another node takes over,
or at its deadline (``timeout_s``: twice the longest election timeout). NB: the core gives a
transfer up after one election timeout and takes proposals again; until the deadline this room
asks again (the target may have been catching up, or busy), each time for the most caught-up
voter when no name was given.

Nothing here reads a clock or touches a socket: the loop passes ``now`` and does the sending
through ``forward``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from registry.raft import NO_NODE, LocalError, NodeId, NotLeader, RawNode, Role
from registry.transport import ForwardOp

from .requests import Caller, Failure, Outcome, Replies

#: A follower waits this much longer than the leader's own deadline for the leader's answer, so
#: that the leader's reason (not "no answer") reaches the client.
FORWARD_SLACK_S = 1.0
MAX_TRANSFER_BYTES = 256  # a TRANSFER: [token, target name or nil]
MAX_TRANSFER_REPLY_BYTES = 2048  # a TRANSFER_REPLY: [token, ok, result or [code, message]]

Waiter = Callable[[Outcome], None]


class MalformedTransfer(ValueError):
    """A forwarded TRANSFER or TRANSFER_REPLY whose payload is not of the documented shape."""


@dataclass
class _Transfer:
    """A hand-over this node (the leader) is making.

    Invariant: ``target`` is a voter other than this node; ``term`` is the term this node led in
    when it started (a later term means the hand-over happened or failed)."""

    target: NodeId
    named: bool  # the caller named the target (else: the most caught-up voter)
    term: int
    started: float
    deadline: float
    waiters: list[Waiter] = field(default_factory=list)
    attempts: int = 1


@dataclass
class _Forwarded:
    """A ``leader_transfer`` this follower sent on to ``leader``, waiting for its answer."""

    leader: NodeId
    waiter: Waiter
    deadline: float


@dataclass
class TransferCounts:
    started: int = 0  # hand-overs started here, as the leader
    succeeded: int = 0
    failed: int = 0
    forwarded: int = 0  # requests sent on to the leader
    malformed: int = 0  # TRANSFER / TRANSFER_REPLY frames dropped


class Transfers:
    """Invariant: ``_current`` is not None only while this node leads in ``_current.term`` or has
    just stopped leading and has not yet seen who leads now."""

    def __init__(self, *, raw: RawNode, node_id: NodeId, names: dict[NodeId, str],
                 forward: Callable[[NodeId, ForwardOp, bytes], None], replies: Replies,
                 log: logging.LoggerAdapter, timeout_s: float) -> None:
        self._raw = raw
        self._node_id = node_id
        self._names = names
        self._ids = {name: node_id for node_id, name in names.items()}
        self._forward = forward
        self._replies = replies
        self._log = log
        self.timeout_s = timeout_s
        self._current: _Transfer | None = None
        self._forwarded: dict[int, _Forwarded] = {}
        self._tokens = itertools.count(1)
        self.counts = TransferCounts()

    # -- requests ---------------------------------------------------------------------------------

    def request(self, target: str | None, now: float, waiter: Waiter) -> None:
        """Hand leadership to the member named ``target`` (None: the most caught-up voter), on
        this node if it leads, else through the leader; ``waiter`` gets the outcome exactly once."""
        if target is not None and target not in self._ids:
            waiter(Failure("invalid", f"no member is named {target!r}; the members are "
                                      f"{', '.join(sorted(self._ids))}"))
            return
        status = self._raw.basic_status()
        if status.role is Role.LEADER:
            self._lead(None if target is None else self._ids[target], now, waiter)
        elif status.leader_id != NO_NODE:
            token = next(self._tokens)
            self._forwarded[token] = _Forwarded(status.leader_id, waiter, now + self.timeout_s + FORWARD_SLACK_S)
            self._forward(status.leader_id, ForwardOp.TRANSFER, msgpack.packb([token, target]))
            self.counts.forwarded += 1
        else:
            waiter(Failure("no_leader", "no leader is known to hand leadership over; retry after the election"))

    def reply_to(self, caller: Caller) -> Waiter:
        """The waiter that answers a client's ``leader_transfer``."""

        def answer(outcome: Outcome) -> None:
            if isinstance(outcome, Failure):
                self._replies.error(caller.identity, caller.request_id, outcome.code, outcome.message)
            else:
                self._replies.reply(caller.identity, caller.request_id, outcome)

        return answer

    def forwarded(self, source: NodeId, payload: bytes, now: float) -> None:
        """A follower's ``leader_transfer`` (ForwardOp.TRANSFER). Raises MalformedTransfer."""
        if len(payload) > MAX_TRANSFER_BYTES:
            raise MalformedTransfer(f"{len(payload)} bytes, over the limit of {MAX_TRANSFER_BYTES}")
        body = _unpack(payload)
        if not (isinstance(body, list) and len(body) == 2 and _is_token(body[0])
                and (body[1] is None or isinstance(body[1], str))):
            raise MalformedTransfer("expected [token, target name or nil]")
        token, target = body

        def answer(outcome: Outcome) -> None:
            reply = [token, False, [outcome.code, outcome.message]] if isinstance(outcome, Failure) else \
                [token, True, outcome]
            self._forward(source, ForwardOp.TRANSFER_REPLY, msgpack.packb(reply))

        status = self._raw.basic_status()
        if status.role is not Role.LEADER:
            # NB: not forwarded again (no chains of forwards); the asker's client may retry.
            if target is not None and self._ids.get(target) == status.leader_id:
                answer(self._success(status.leader_id, int(status.term), status.leader_id))
            elif status.leader_id == NO_NODE:
                answer(Failure("no_leader", "leadership is changing; retry after the election"))
            else:
                answer(Failure("transfer_failed", f"{self._name(self._node_id)} no longer leads "
                                                  f"({self._name(status.leader_id)} does); ask again"))
            return
        self.request(target, now, answer)

    def forwarded_reply(self, source: NodeId, payload: bytes) -> None:
        """The leader's answer to a request this node forwarded (ForwardOp.TRANSFER_REPLY).
        Raises MalformedTransfer."""
        if len(payload) > MAX_TRANSFER_REPLY_BYTES:
            raise MalformedTransfer(f"{len(payload)} bytes, over the limit of {MAX_TRANSFER_REPLY_BYTES}")
        body = _unpack(payload)
        if not (isinstance(body, list) and len(body) == 3 and _is_token(body[0]) and isinstance(body[1], bool)):
            raise MalformedTransfer("expected [token, ok, result or [code, message]]")
        token, ok, rest = body
        outcome: Outcome
        if ok:
            if not (isinstance(rest, dict) and isinstance(rest.get("leader"), str) and _is_token(rest.get("term"))
                    and (rest.get("previous") is None or isinstance(rest.get("previous"), str))):
                raise MalformedTransfer("a success must be {leader: str, term: int, previous: str or nil}")
            outcome = {"leader": rest["leader"], "term": rest["term"], "previous": rest.get("previous")}
        else:
            if not (isinstance(rest, list) and len(rest) == 2 and all(isinstance(x, str) for x in rest)):
                raise MalformedTransfer("a failure must be [code, message]")
            outcome = Failure(rest[0], rest[1])
        waiting = self._forwarded.get(token)
        if waiting is None or waiting.leader != source:
            return  # answered already (its deadline passed), or not ours: a late or stray reply
        del self._forwarded[token]
        waiting.waiter(outcome)

    # -- what the loop reports --------------------------------------------------------------------

    def check(self, now: float) -> None:
        """See whether the hand-over in progress is done, retry it or give it up; expire
        forwarded requests. The loop calls this every tick and on every role or leader change."""
        current = self._current
        if current is not None:
            status = self._raw.basic_status()
            if status.role is not Role.LEADER and status.leader_id == current.target:
                took = now - current.started
                self._log.info("handed leadership over to %s: it leads in term %d, %.3f s after the transfer "
                               "began (%d attempt%s)", self._name(current.target), status.term, took,
                               current.attempts, "s" if current.attempts != 1 else "")
                self._finish(self._success(current.target, int(status.term), self._node_id), ok=True)
            elif status.leader_id not in (NO_NODE, self._node_id) or (
                    status.role is Role.LEADER and status.term != current.term):
                self._give_up(f"{self._name(status.leader_id)} took over in term {status.term} instead of "
                              f"{self._name(current.target)}")
            elif now >= current.deadline:
                self._give_up(f"{self._name(current.target)} did not take over within {self.timeout_s:g} s "
                              f"(is it running and reachable?); {self._describe(status)}")
            elif status.role is Role.LEADER and status.lead_transferee == NO_NODE:
                self._retry(current)  # the core gave the attempt up after an election timeout
        for token, waiting in list(self._forwarded.items()):
            if now >= waiting.deadline:
                del self._forwarded[token]
                waiting.waiter(Failure("transfer_failed", f"the leader {self._name(waiting.leader)} did not say "
                                                          f"how the transfer ended within "
                                                          f"{self.timeout_s + FORWARD_SLACK_S:g} s"))

    def fail_all(self, code: str, message: str) -> int:
        """Answer everyone waiting with an error (shutdown); returns how many."""
        waiters = [] if self._current is None else self._current.waiters
        waiters += [w.waiter for w in self._forwarded.values()]
        self._current = None
        self._forwarded.clear()
        for waiter in waiters:
            waiter(Failure(code, message))
        return len(waiters)

    @property
    def active(self) -> bool:
        """A hand-over is in progress here."""
        return self._current is not None

    def status(self, now: float) -> dict[str, Any]:
        current = self._current
        return {
            "target": None if current is None else self._name(current.target),
            "for_ms": None if current is None else int((now - current.started) * 1000),
            "timeout_ms": int(self.timeout_s * 1000),
            "started": self.counts.started, "succeeded": self.counts.succeeded, "failed": self.counts.failed,
            "forwarded": self.counts.forwarded, "waiting_forwarded": len(self._forwarded),
        }

    # -- internals --------------------------------------------------------------------------------

    def _lead(self, target: NodeId | None, now: float, waiter: Waiter) -> None:
        current = self._current
        if current is not None:
            if target is None or target == current.target:
                current.waiters.append(waiter)  # the same hand-over: wait for it too
            else:
                waiter(Failure("transfer_failed", f"a transfer to {self._name(current.target)} is in progress; "
                                                  "ask again once it is over"))
            return
        status = self._raw.basic_status()
        if target == self._node_id:
            waiter(self._success(self._node_id, int(status.term), self._node_id))
            return
        named = target is not None
        if target is None:
            target = self._raw.transfer_candidate()
            if target is None:
                waiter(Failure("transfer_failed", "there is no other voter to hand leadership over to"))
                return
        try:
            self._raw.transfer_leadership(target)
        except NotLeader:
            waiter(Failure("no_leader", "leadership is changing; retry after the election"))
            return
        except LocalError as exc:  # not a voter (a learner)
            waiter(Failure("transfer_failed", f"{self._name(target)} cannot lead: {exc}"))
            return
        self._current = _Transfer(target, named, int(status.term), now, now + self.timeout_s, [waiter])
        self.counts.started += 1
        match = self._raw.status().progress.get(target)
        self._log.info("handing leadership over to %s (%s; its match index %s of our last %d)",
                       self._name(target), "named" if named else "the most caught-up voter",
                       match.match_index if match else "?", self._raw.status().last_index)

    def _retry(self, current: _Transfer) -> None:
        target = current.target if current.named else self._raw.transfer_candidate()
        if target is None:
            self._give_up("there is no other voter to hand leadership over to")
            return
        try:
            self._raw.transfer_leadership(target)
        except LocalError as exc:
            self._give_up(f"{self._name(target)} cannot lead: {exc}")
            return
        current.target = target
        current.attempts += 1
        self._log.info("asking %s again to take over (attempt %d)", self._name(target), current.attempts)

    def _give_up(self, why: str) -> None:
        self._log.warning("leadership transfer failed: %s", why)
        self._finish(Failure("transfer_failed", why), ok=False)

    def _finish(self, outcome: Outcome, *, ok: bool) -> None:
        current = self._current
        assert current is not None
        self._current = None
        if ok:
            self.counts.succeeded += 1
        else:
            self.counts.failed += 1
        for waiter in current.waiters:
            waiter(outcome)

    def _success(self, leader: NodeId, term: int, previous: NodeId) -> dict[str, Any]:
        return {"leader": self._name(leader), "term": term, "previous": self._name(previous)}

    def _describe(self, status: Any) -> str:
        if status.role is Role.LEADER:
            return f"{self._name(self._node_id)} still leads in term {status.term}"
        leader = self._name(status.leader_id) if status.leader_id != NO_NODE else "no leader is known"
        return f"term {status.term}, leader: {leader}"

    def _name(self, node_id: NodeId) -> str:
        return self._names.get(node_id, f"node {node_id}")


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedTransfer(f"not msgpack: {type(exc).__name__}") from None


def _is_token(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**63
