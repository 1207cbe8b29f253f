"""The node's request tracking (registry/node/requests.py), as one unit: a stand-in core whose
role and leader the test sets, and a recorder of replies and forwards. No sockets, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from registry.catalogue import Applied, Registered, Rejected
from registry.node.requests import RETRY_INTERVAL_S, Caller, Failure, Outcome, Requests
from registry.raft import BasicStatus, Index, NoLeader, NodeId, ProposalDropped, ReadState, Role, Term
from registry.transport import ForwardOp

TIMEOUT_S = 5.0
TICK_S = 0.05


@dataclass
class FakeRaw:
    role: Role = Role.FOLLOWER
    leader: int = 0
    proposed: list[bytes] = field(default_factory=list)
    read_contexts: list[bytes] = field(default_factory=list)
    drop_proposals: bool = False
    term: int = 1

    def basic_status(self) -> BasicStatus:
        return BasicStatus(NodeId(1), self.role, Term(self.term), NodeId(self.leader), Index(0), Index(0), NodeId(0))

    def propose(self, data: bytes) -> Index:
        if self.drop_proposals:
            raise ProposalDropped("a transfer is under way")
        self.proposed.append(data)
        return Index(len(self.proposed))

    def read_index(self, context: bytes) -> None:
        if not self.leader and self.role is not Role.LEADER:
            raise NoLeader("no leader")
        self.read_contexts.append(context)


@dataclass
class Recorder:
    replies: list[tuple[bytes, int, Any]] = field(default_factory=list)
    forwards: list[tuple[int, ForwardOp, bytes]] = field(default_factory=list)

    def reply(self, identity: bytes, request_id: int, result: dict[str, Any]) -> None:
        self.replies.append((identity, request_id, result))

    def error(self, identity: bytes, request_id: int, code: str, message: str) -> None:
        self.replies.append((identity, request_id, Failure(code, message)))

    def forward(self, leader: NodeId, op: ForwardOp, data: bytes) -> None:
        self.forwards.append((leader, op, data))


def render(applied: Applied) -> Outcome:
    if isinstance(applied.result, Rejected):
        return Failure(applied.result.code, applied.result.message)
    return {"index": applied.index}


def make(raw: FakeRaw) -> tuple[Requests, Recorder]:
    out = Recorder()
    requests = Requests(raw=raw, forward=out.forward, replies=out, render=render,  # type: ignore[arg-type]
                        timeout_s=TIMEOUT_S, tick_s=TICK_S)
    return requests, out


def applied(client: str, seq: int, index: int, result: Any = None) -> Applied:
    return Applied(client, seq, result or Registered("id", True), index)


def test_a_leader_proposes_and_answers_every_caller_once_applied() -> None:
    """Two callers of the same (client, seq), a client's retry, share one write and both get its outcome."""
    raw = FakeRaw(role=Role.LEADER, leader=1)
    requests, out = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"data", 0.0)
    requests.write(Caller(b"a", 2), ("c", 1), b"data", 0.1)
    assert raw.proposed == [b"data", b"data"] and requests.pending == (1, 0)
    requests.on_applied(applied("c", 1, 7))
    assert out.replies == [(b"a", 1, {"index": 7}), (b"a", 2, {"index": 7})]
    assert requests.pending == (0, 0)
    requests.on_applied(applied("c", 1, 7))  # applied again (a retried copy): nobody left to answer
    assert len(out.replies) == 2


def test_a_follower_forwards_with_the_op_and_retries_at_the_interval() -> None:
    raw = FakeRaw(leader=3)
    requests, out = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"restore", 0.0, op=ForwardOp.RESTORE, retry_s=2.0)
    assert out.forwards == [(3, ForwardOp.RESTORE, b"restore")]
    requests.tick(1.9)
    assert len(out.forwards) == 1
    requests.tick(2.0)
    assert len(out.forwards) == 2 and requests.counts.forwarded == 2


def test_without_a_leader_a_write_waits_and_is_sent_when_one_is_known() -> None:
    raw = FakeRaw()
    requests, out = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"w", 0.0)
    assert out.forwards == [] and raw.proposed == []
    raw.leader = 2
    requests.on_leader_known(0.01)
    assert out.forwards == [(2, ForwardOp.WRITE, b"w")]


def test_a_new_leader_gets_every_pending_write_at_once_and_the_same_leader_none_twice() -> None:
    """A write forwarded to a leader that then hands over (a transfer drops proposals) goes to the
    new leader as soon as it is known, not at the retry timer; hearing of the same leader in the
    same term again sends nothing more."""
    raw = FakeRaw(leader=2)
    requests, out = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"w", 0.0)
    assert out.forwards == [(2, ForwardOp.WRITE, b"w")]
    raw.leader, raw.term = 3, 2
    requests.on_leader_known(0.01)
    assert out.forwards[1:] == [(3, ForwardOp.WRITE, b"w")]
    requests.on_leader_known(0.02)
    assert len(out.forwards) == 2


def test_a_leader_that_handed_over_forwards_its_dropped_writes_to_the_new_leader_at_once() -> None:
    """On the old leader a write refused during the hand-over (ProposalDropped) and one it had
    proposed before both go to the new leader the moment this node learns of it."""
    raw = FakeRaw(role=Role.LEADER, leader=1)
    requests, out = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"before", 0.0)
    raw.drop_proposals = True
    requests.write(Caller(b"a", 2), ("c", 2), b"during", 0.0)
    assert raw.proposed == [b"before"] and out.forwards == []
    raw.role, raw.leader, raw.term = Role.FOLLOWER, 2, 2
    requests.on_leader_known(0.01)
    assert sorted(out.forwards) == [(2, ForwardOp.WRITE, b"before"), (2, ForwardOp.WRITE, b"during")]


def test_a_leader_elected_again_in_a_new_term_proposes_its_pending_writes_again() -> None:
    """Entries proposed in an earlier term may be lost with it: a re-elected leader proposes its
    pending writes again at once (the sessions apply a (client, seq) once)."""
    raw = FakeRaw(role=Role.LEADER, leader=1)
    requests, _ = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"w", 0.0)
    requests.on_leader_known(0.01)
    assert raw.proposed == [b"w"]
    raw.term = 3
    requests.on_leader_known(0.02)
    assert raw.proposed == [b"w", b"w"]


@pytest.mark.parametrize("reached_leader, code", [(True, "timeout"), (False, "no_leader")])
def test_an_expired_write_says_whether_its_outcome_is_unknown(reached_leader: bool, code: str) -> None:
    """`timeout` once the write reached a leader (it may still commit); `no_leader` if it never did."""
    raw = FakeRaw(leader=2 if reached_leader else 0)
    requests, out = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"w", 0.0)
    requests.tick(TIMEOUT_S - 0.01)
    assert out.replies == []
    requests.tick(TIMEOUT_S)
    [(_, _, failure)] = out.replies
    assert isinstance(failure, Failure) and failure.code == code
    assert requests.pending == (0, 0)


def test_a_dropped_proposal_is_retried_at_the_next_tick() -> None:
    raw = FakeRaw(role=Role.LEADER, leader=1, drop_proposals=True)
    requests, _ = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"w", 0.0)
    raw.drop_proposals = False
    requests.tick(TICK_S / 2)
    assert raw.proposed == []
    requests.tick(TICK_S)
    assert raw.proposed == [b"w"]


def test_a_rejected_write_is_an_error_reply() -> None:
    requests, out = make(FakeRaw(role=Role.LEADER, leader=1))
    requests.write(Caller(b"a", 1), ("c", 1), b"w", 0.0)
    requests.on_applied(applied("c", 1, 4, Rejected("not_found", "no such instance")))
    assert out.replies == [(b"a", 1, Failure("not_found", "no such instance"))]


def test_a_read_is_answered_only_once_its_index_is_applied() -> None:
    raw = FakeRaw(leader=2)
    requests, _ = make(raw)
    answered: list[Caller] = []
    requests.read(Caller(b"r", 9), answered.append, 0.0)
    [context] = raw.read_contexts
    requests.on_read_states([ReadState(Index(10), context)], applied_index=9)
    assert answered == []
    requests.on_read_states([], applied_index=10)
    assert answered == [Caller(b"r", 9)] and requests.pending == (0, 0)


def test_an_unconfirmed_read_is_asked_again_under_a_new_context() -> None:
    """A late ReadState for the old context is ignored; the new one answers."""
    raw = FakeRaw(leader=2)
    requests, _ = make(raw)
    answered: list[Caller] = []
    requests.read(Caller(b"r", 1), answered.append, 0.0)
    requests.tick(RETRY_INTERVAL_S)
    old, new = raw.read_contexts
    assert old != new
    requests.on_read_states([ReadState(Index(5), old)], applied_index=5)
    assert answered == []
    requests.on_read_states([ReadState(Index(5), new)], applied_index=5)
    assert answered == [Caller(b"r", 1)]


def test_a_read_with_no_leader_expires_with_no_leader() -> None:
    requests, out = make(FakeRaw())
    requests.read(Caller(b"r", 1), lambda caller: None, 0.0)
    requests.tick(TIMEOUT_S)
    [(_, _, failure)] = out.replies
    assert isinstance(failure, Failure) and failure.code == "no_leader"


def test_fail_all_answers_every_pending_request() -> None:
    raw = FakeRaw(leader=2)
    requests, out = make(raw)
    requests.write(Caller(b"a", 1), ("c", 1), b"w", 0.0)
    requests.write(Caller(b"b", 1), ("c", 1), b"w", 0.0)
    requests.read(Caller(b"r", 1), lambda caller: None, 0.0)
    assert requests.fail_all("stopping", "bye") == (2, 1)
    assert sorted(r[:2] for r in out.replies) == [(b"a", 1), (b"b", 1), (b"r", 1)]
    assert all(r[2] == Failure("stopping", "bye") for r in out.replies)
    assert requests.pending == (0, 0)


def test_a_read_at_a_known_index_waits_only_for_it_to_be_applied() -> None:
    """The leader's lease read: no read-index round, answered once the index is applied."""
    raw = FakeRaw(leader=1)
    requests, _ = make(raw)
    answered: list[Caller | None] = []
    requests.read_applied(Caller(b"r", 1), answered.append, 7, 7, 0.0)
    assert answered == [Caller(b"r", 1)]
    requests.read_applied(Caller(b"r", 2), answered.append, 8, 7, 0.0)
    assert answered == [Caller(b"r", 1)] and requests.pending == (0, 1)
    requests.tick(RETRY_INTERVAL_S)  # never asked again: the index is known
    requests.on_read_states([], applied_index=8)
    assert answered == [Caller(b"r", 1), Caller(b"r", 2)] and raw.read_contexts == []


def test_a_read_for_nobody_expires_silently() -> None:
    """A node's own read (caller None: a follower's renewal batch) answers nobody on a timeout."""
    requests, out = make(FakeRaw())
    requests.read(None, lambda caller: None, 0.0)
    requests.tick(TIMEOUT_S)
    assert out.replies == [] and requests.pending == (0, 0)
    requests.read(None, lambda caller: None, 0.0)
    assert requests.fail_all("stopping", "bye") == (0, 0) and out.replies == []
