"""The node's transfer room (registry/node/transfer.py) as one unit, over real Raft cores (the
in-memory cluster of tests/raft/env.py) with the forwards between rooms delivered by hand. No
sockets, no clock: the test passes `now`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from registry.node.requests import Failure, Outcome
from registry.node.transfer import FORWARD_SLACK_S, MalformedTransfer, Transfers
from registry.raft import NO_NODE, NodeId, Role, TimeoutNow
from registry.transport import ForwardOp

from ..raft.env import Cluster

NAMES = {NodeId(1): "n1", NodeId(2): "n2", NodeId(3): "n3"}
TIMEOUT_S = 1.5
ET = 10  # the core's default election_ticks


@dataclass
class Wires:
    """Forwards sent by the rooms, (source, target, op, payload), and the rooms by node id."""

    sent: list[tuple[int, int, ForwardOp, bytes]] = field(default_factory=list)
    rooms: dict[int, Transfers] = field(default_factory=dict)

    def deliver(self, now: float) -> None:
        batch, self.sent = self.sent, []
        for source, target, op, payload in batch:
            if op is ForwardOp.TRANSFER:
                self.rooms[target].forwarded(NodeId(source), payload, now)
            else:
                self.rooms[target].forwarded_reply(NodeId(source), payload)


@dataclass
class Answers:
    got: list[Outcome] = field(default_factory=list)

    def __call__(self, outcome: Outcome) -> None:
        self.got.append(outcome)


class NoReplies:
    def reply(self, identity: bytes, request_id: int, result: dict[str, Any]) -> None:
        raise AssertionError("the room answers through its waiters here")

    def error(self, identity: bytes, request_id: int, code: str, message: str) -> None:
        raise AssertionError("the room answers through its waiters here")


def rooms(c: Cluster, names: dict[NodeId, str] = NAMES) -> Wires:
    wires = Wires()
    for node in c.nodes:
        def forward(target: NodeId, op: ForwardOp, payload: bytes, source: int = node) -> None:
            wires.sent.append((source, target, op, payload))

        wires.rooms[node] = Transfers(raw=c.nodes[node], node_id=NodeId(node), names=names, forward=forward,
                                      replies=NoReplies(), log=logging.LoggerAdapter(logging.getLogger("t"), {}),
                                      timeout_s=TIMEOUT_S)
    return wires


def led_by_1() -> tuple[Cluster, Wires]:
    c = Cluster()
    c.campaign(1)
    assert c.leader() == 1
    return c, rooms(c)


def check_all(wires: Wires, now: float) -> None:
    for room in wires.rooms.values():
        room.check(now)


def test_the_leader_hands_over_to_the_named_voter_and_answers_once_it_leads() -> None:
    """A named transfer is answered only once this node sees the target lead, with the new
    leader, its term and the previous leader."""
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[1].request("n3", 0.0, answers)
    assert wires.rooms[1].active and answers.got == []
    wires.rooms[1].check(0.01)
    assert answers.got == []  # nothing happened yet: the TimeoutNow is not even sent
    c.stabilize()
    wires.rooms[1].check(0.02)
    assert c.leader() == 3
    assert answers.got == [{"leader": "n3", "term": 2, "previous": "n1"}]
    assert not wires.rooms[1].active and wires.rooms[1].counts.succeeded == 1


def test_without_a_name_the_most_caught_up_voter_takes_over() -> None:
    """No name: the voter with the highest match index (here n2: n3 missed entries)."""
    c, wires = led_by_1()
    c.isolate(3)
    c.propose(1, b"x")
    c.stabilize()
    c.heal()
    answers = Answers()
    wires.rooms[1].request(None, 0.0, answers)
    c.stabilize()
    wires.rooms[1].check(0.1)
    assert answers.got == [{"leader": "n2", "term": 2, "previous": "n1"}]


def test_an_unknown_name_is_invalid_and_starts_nothing() -> None:
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[1].request("n9", 0.0, answers)
    [failure] = answers.got
    assert isinstance(failure, Failure) and failure.code == "invalid"
    assert "n9" in failure.message and "n1, n2, n3" in failure.message
    assert not wires.rooms[1].active and c.nodes[NodeId(1)].basic_status().lead_transferee == NO_NODE


def test_naming_the_leader_itself_is_an_immediate_success_that_moves_nothing() -> None:
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[1].request("n1", 0.0, answers)
    assert answers.got == [{"leader": "n1", "term": 1, "previous": "n1"}]
    assert c.leader() == 1 and not wires.rooms[1].active


def test_a_target_that_never_takes_over_is_asked_again_then_given_up_at_the_deadline() -> None:
    """The core gives an attempt up after an election timeout; the room asks again until its
    deadline, then fails with `transfer_failed` naming the target, and the leader leads on."""
    c, wires = led_by_1()
    c.isolate(3)
    answers = Answers()
    room = wires.rooms[1]
    room.request("n3", 0.0, answers)
    c.stabilize()
    c.tick_all(ET)  # the core abandons the attempt
    room.check(0.5)
    assert room.active and c.nodes[NodeId(1)].basic_status().lead_transferee == 3  # asked again
    assert answers.got == []
    room.check(TIMEOUT_S)
    [failure] = answers.got
    assert isinstance(failure, Failure) and failure.code == "transfer_failed"
    assert "n3 did not take over within 1.5 s" in failure.message and "n1 still leads" in failure.message
    assert c.leader() == 1 and room.counts.failed == 1 and not room.active


def test_another_node_taking_over_fails_the_transfer() -> None:
    """Leadership lost otherwise (here n2 is told to campaign while n3 is the target) fails the
    transfer and says who leads instead."""
    c, wires = led_by_1()
    c.isolate(3)
    answers = Answers()
    wires.rooms[1].request("n3", 0.0, answers)
    c.stabilize()
    c.nodes[NodeId(2)].step(TimeoutNow(NodeId(1), NodeId(2), c.raft(1).term))
    c.stabilize()
    assert c.leader() == 2
    wires.rooms[1].check(0.1)
    [failure] = answers.got
    assert isinstance(failure, Failure) and failure.code == "transfer_failed"
    assert "n2 took over in term 2 instead of n3" in failure.message


def test_requests_during_a_transfer_join_it_or_are_refused_for_another_target() -> None:
    """While a transfer runs, a request for the same target or for any voter waits for it; one
    for another target is refused (one transfer at a time)."""
    c, wires = led_by_1()
    first, same, anyone, other = Answers(), Answers(), Answers(), Answers()
    room = wires.rooms[1]
    room.request("n2", 0.0, first)
    room.request("n2", 0.0, same)
    room.request(None, 0.0, anyone)
    room.request("n3", 0.0, other)
    [refused] = other.got
    assert isinstance(refused, Failure) and refused.code == "transfer_failed" and "n2 is in progress" in refused.message
    c.stabilize()
    room.check(0.1)
    assert first.got == same.got == anyone.got == [{"leader": "n2", "term": 2, "previous": "n1"}]
    assert room.counts.started == 1


def test_a_follower_forwards_the_request_and_answers_with_the_leaders_reply() -> None:
    """A follower sends the request to the leader (ForwardOp.TRANSFER) and answers its caller
    with the leader's TRANSFER_REPLY once the leader saw the target lead."""
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[2].request("n3", 0.0, answers)
    [(source, target, op, _)] = wires.sent
    assert (source, target, op) == (2, 1, ForwardOp.TRANSFER)
    wires.deliver(0.0)
    assert wires.rooms[1].active
    c.stabilize()
    check_all(wires, 0.1)
    assert [(s, t, op) for s, t, op, _ in wires.sent] == [(1, 2, ForwardOp.TRANSFER_REPLY)]
    wires.deliver(0.1)
    assert answers.got == [{"leader": "n3", "term": 2, "previous": "n1"}]
    assert wires.rooms[2].counts.forwarded == 1


def test_a_forwarded_failure_comes_back_as_the_same_failure() -> None:
    """An unknown name is refused by the follower itself; a transfer the leader gives up comes
    back to the follower's caller as the leader's `transfer_failed`, with its reason."""
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[3].request("n9", 0.0, answers)
    assert wires.sent == []  # not forwarded
    c.isolate(2)  # the target never hears the TimeoutNow
    wires.rooms[3].request("n2", 0.0, answers)
    wires.deliver(0.0)
    c.stabilize()
    c.tick_all(ET)
    check_all(wires, 0.5)
    check_all(wires, TIMEOUT_S)
    wires.deliver(TIMEOUT_S)
    assert [a.code for a in answers.got if isinstance(a, Failure)] == ["invalid", "transfer_failed"]
    assert "n2 did not take over" in answers.got[1].message  # type: ignore[union-attr]


def test_a_forwarded_request_without_an_answer_expires_after_the_leaders_deadline() -> None:
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[2].request("n3", 0.0, answers)
    wires.sent.clear()  # lost on the way
    wires.rooms[2].check(TIMEOUT_S + FORWARD_SLACK_S - 0.01)
    assert answers.got == []
    wires.rooms[2].check(TIMEOUT_S + FORWARD_SLACK_S)
    [failure] = answers.got
    assert isinstance(failure, Failure) and failure.code == "transfer_failed" and "n1 did not say" in failure.message


def test_a_request_that_reaches_a_node_no_longer_leading_is_not_forwarded_again() -> None:
    """A TRANSFER that reaches a follower (leadership moved meanwhile) is answered there: success
    if the named node leads, else transfer_failed naming the leader; never forwarded on."""
    c, wires = led_by_1()
    wires.rooms[2].forwarded(NodeId(3), msgpack.packb([7, "n1"]), 0.0)
    wires.rooms[2].forwarded(NodeId(3), msgpack.packb([8, None]), 0.0)
    replies = [msgpack.unpackb(p) for s, t, op, p in wires.sent]
    assert [(s, t, op) for s, t, op, _ in wires.sent] == [(2, 3, ForwardOp.TRANSFER_REPLY)] * 2
    assert replies[0] == [7, True, {"leader": "n1", "term": 1, "previous": "n1"}]
    assert replies[1][:2] == [8, False] and replies[1][2][0] == "transfer_failed" and "n1 does" in replies[1][2][1]


def test_without_a_known_leader_the_answer_is_no_leader() -> None:
    c = Cluster()
    wires = rooms(c)
    answers = Answers()
    wires.rooms[1].request("n2", 0.0, answers)
    [failure] = answers.got
    assert isinstance(failure, Failure) and failure.code == "no_leader" and wires.sent == []


def test_a_single_voter_has_nobody_to_hand_over_to() -> None:
    c = Cluster(voters=(1,))
    c.campaign(1)
    wires = rooms(c, {NodeId(1): "n1"})
    answers = Answers()
    wires.rooms[1].request(None, 0.0, answers)
    [failure] = answers.got
    assert isinstance(failure, Failure) and failure.code == "transfer_failed" and "no other voter" in failure.message
    assert c.raft(1).role is Role.LEADER


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb({"token": 1}), msgpack.packb([1]),
                                     msgpack.packb([-1, None]), msgpack.packb([1, 5]),
                                     msgpack.packb([1, "x" * 300])],
                         ids=["garbage", "map", "short", "negative-token", "int-target", "oversize"])
def test_a_malformed_transfer_is_refused_and_changes_nothing(payload: bytes) -> None:
    c, wires = led_by_1()
    with pytest.raises(MalformedTransfer):
        wires.rooms[1].forwarded(NodeId(2), payload, 0.0)
    assert not wires.rooms[1].active and wires.sent == []


@pytest.mark.parametrize("payload", [b"", msgpack.packb([1, "yes", {}]), msgpack.packb([1, True, {"leader": 3}]),
                                     msgpack.packb([1, False, ["only a code"]]), msgpack.packb([1, True, "x" * 3000])],
                         ids=["empty", "ok-not-bool", "bad-result", "bad-failure", "oversize"])
def test_a_malformed_reply_is_refused_and_the_caller_keeps_waiting(payload: bytes) -> None:
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[2].request("n3", 0.0, answers)
    with pytest.raises(MalformedTransfer):
        wires.rooms[2].forwarded_reply(NodeId(1), payload)
    assert answers.got == []


def test_a_reply_from_another_node_or_for_another_token_is_ignored() -> None:
    c, wires = led_by_1()
    answers = Answers()
    wires.rooms[2].request("n3", 0.0, answers)
    [(_, _, _, payload)] = wires.sent
    token = msgpack.unpackb(payload)[0]
    ok = {"leader": "n3", "term": 2, "previous": "n1"}
    wires.rooms[2].forwarded_reply(NodeId(3), msgpack.packb([token, True, ok]))  # not whom we asked
    wires.rooms[2].forwarded_reply(NodeId(1), msgpack.packb([token + 1, True, ok]))  # not our token
    assert answers.got == []
    wires.rooms[2].forwarded_reply(NodeId(1), msgpack.packb([token, True, ok]))
    assert answers.got == [ok]


def test_fail_all_answers_every_waiter() -> None:
    c, wires = led_by_1()
    c.isolate(3)
    here, there = Answers(), Answers()
    wires.rooms[1].request("n3", 0.0, here)
    wires.rooms[2].request("n3", 0.0, there)
    assert wires.rooms[1].fail_all("stopping", "bye") == 1
    assert wires.rooms[2].fail_all("stopping", "bye") == 1
    assert here.got == there.got == [Failure("stopping", "bye")]
    assert not wires.rooms[1].active
