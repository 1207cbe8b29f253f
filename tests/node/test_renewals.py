"""The renewals room (registry/node/renewals.py) as pure logic: a real replica, stand-ins for the
core (role, lease), the reads, the tracker, the peer link and the client socket. No sockets, no
clock: the tests pass `now`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from registry.catalogue import Check, CheckKind, Register, Request, encode_request
from registry.node.renewals import BATCH_RETRY_S, MAX_BATCH, MIN_GAP_S, Renewals
from registry.node.replica import Replica
from registry.node.requests import Caller
from registry.raft import BasicStatus, Entry, EntryKind, Index, NodeId, Role, Term
from registry.transport import ForwardOp

TIMEOUT_S = 5.0


@dataclass
class FakeRaw:
    node: int
    role: Role
    leader: int
    term: int = 1
    commit: int = 2
    lease: bool = True

    def basic_status(self) -> BasicStatus:
        return BasicStatus(NodeId(self.node), self.role, Term(self.term), NodeId(self.leader), Index(self.commit),
                           Index(0), NodeId(0))

    def has_lease(self) -> bool:
        return self.lease and self.role is Role.LEADER


@dataclass
class World:
    """What a Renewals room touches, recorded."""

    reads: list[tuple[Caller | None, Callable[[Caller | None], None]]] = field(default_factory=list)
    renewed: list[tuple[str, str]] = field(default_factory=list)
    forwards: list[tuple[int, ForwardOp, bytes]] = field(default_factory=list)
    replies: list[tuple[bytes, int, dict[str, Any]]] = field(default_factory=list)
    errors: list[tuple[bytes, int, str]] = field(default_factory=list)
    waiting_apply: list[tuple[int, Caller | None, Callable[[Caller | None], None]]] = field(default_factory=list)
    leading: bool = True

    def read(self, caller: Caller | None, answer: Callable[[Caller | None], None], now: float) -> None:
        self.reads.append((caller, answer))

    def read_applied(self, caller: Caller | None, answer: Callable[[Caller | None], None], index: int,
                     applied_index: int, now: float) -> None:
        if applied_index >= index:
            answer(caller)
        else:
            self.waiting_apply.append((index, caller, answer))

    def confirm_reads(self) -> None:
        reads, self.reads = self.reads, []
        for caller, answer in reads:
            answer(caller)

    def renew(self, service: str, instance_id: str, now: float) -> bool:
        if self.leading:
            self.renewed.append((service, instance_id))
        return self.leading

    def forward(self, leader: NodeId, op: ForwardOp, data: bytes) -> None:
        self.forwards.append((leader, op, data))

    def reply(self, identity: bytes, request_id: int, result: dict[str, Any]) -> None:
        self.replies.append((identity, request_id, result))

    def error(self, identity: bytes, request_id: int, code: str, message: str) -> None:
        self.errors.append((identity, request_id, code))


def replica() -> Replica:
    r = Replica()
    ttl = encode_request(Request("c", 1, Register("job", "10.0.0.7", 7000, instance_id="j",
                                                  check=Check(CheckKind.TTL, ttl_ms=3000), at_ms=1)))
    plain = encode_request(Request("c", 2, Register("web", "10.0.0.8", 80, instance_id="w", at_ms=1)))
    r.apply([Entry(Term(1), Index(1), EntryKind.NORMAL, ttl), Entry(Term(1), Index(2), EntryKind.NORMAL, plain)])
    return r


def node(role: Role = Role.LEADER, *, node_id: int = 1, leader: int = 1, **raw: Any) -> tuple[Renewals, World, FakeRaw]:
    world = World(leading=role is Role.LEADER)
    fake = FakeRaw(node_id, role, leader, **raw)
    room = Renewals(raw=fake, replica=replica(), reads=world, tracker=world, forward=world.forward, replies=world,
                    timeout_s=TIMEOUT_S)
    return room, world, fake


def caller(n: int) -> Caller:
    return Caller(b"client", n)


def deliver(world: World, to: Renewals, source: int, now: float) -> int:
    """Hand every recorded forward to `to`; returns how many."""
    forwards, world.forwards = world.forwards, []
    for _, op, payload in forwards:
        to.on_forward(NodeId(source), op, payload, now)
    return len(forwards)


# -- the leader ------------------------------------------------------------------------------------


def test_the_leader_answers_at_once_under_its_lease() -> None:
    room, world, _ = node()
    room.renew(caller(1), "j", "job", 0.0)
    assert world.reads == []
    assert world.replies == [(b"client", 1, {"service": "job", "instance_id": "j", "status": "passing", "index": 2})]
    assert world.renewed == [("job", "j")]
    assert room.status() == {"renewals": 1, "by_lease": 1, "forwarded": 0, "batches": 0, "dropped": 0,
                            "legacy": 0, "pending": 0}


def test_without_a_lease_the_leader_waits_for_a_read_index() -> None:
    room, world, _ = node(lease=False)
    room.renew(caller(1), "j", None, 0.0)
    assert world.replies == [] and world.renewed == [] and len(world.reads) == 1
    world.confirm_reads()
    assert [r[2]["instance_id"] for r in world.replies] == ["j"] and world.renewed == [("job", "j")]
    assert room.counts.by_lease == 0


def test_under_a_lease_a_commit_index_not_yet_applied_is_waited_for_without_a_read_index() -> None:
    room, world, _ = node(commit=3)  # the replica applied 2
    room.renew(caller(1), "j", "job", 0.0)
    assert world.reads == [] and world.replies == []
    assert [(index, c) for index, c, _ in world.waiting_apply] == [(3, caller(1))]
    assert room.counts.by_lease == 1


def test_after_a_stall_the_lease_is_distrusted_for_an_election_timeout() -> None:
    """The loop's ticks lagged its clock: a lease counted in ticks would run long."""
    room, world, _ = node()
    room.note_stall(10.0, election_s=0.4)
    room.renew(caller(1), "j", "job", 10.3)
    assert len(world.reads) == 1 and world.replies == []
    room.renew(caller(2), "j", "job", 10.4)
    assert len(world.reads) == 1 and len(world.replies) == 1


@pytest.mark.parametrize("instance_id, service, code", [
    ("nope", None, "not_found"), ("w", "web", "invalid"), ("", None, "invalid"), ("x" * 600, None, "invalid"),
])
def test_a_renewal_of_what_cannot_be_renewed_is_an_error(instance_id: str, service: str | None, code: str) -> None:
    room, world, _ = node()
    room.renew(caller(1), instance_id, service, 0.0)
    assert world.errors == [(b"client", 1, code)] and world.renewed == []


# -- a follower relays in batches ------------------------------------------------------------------


def test_a_follower_relays_renewals_in_batches_one_in_flight() -> None:
    room, world, _ = node(Role.FOLLOWER, node_id=2, leader=1)
    room.renew(caller(1), "j", "job", 0.0)
    [(leader, op, payload)] = world.forwards
    assert (leader, op) == (1, ForwardOp.PASS)
    batch_id, items = msgpack.unpackb(payload)
    assert [item[1:] for item in items] == [["j", "job"]]
    for n in range(2, 6):  # wait while the first batch is in flight
        room.renew(caller(n), "j", "job", 0.001 * n)
    assert len(world.forwards) == 1 and room.status()["pending"] == 5
    room.on_forward(NodeId(1), ForwardOp.PASS_REPLY,
                    msgpack.packb([batch_id, [[items[0][0], "", ["job", "j", "passing", 2]]]]), 0.005)
    assert world.replies == [(b"client", 1, {"service": "job", "instance_id": "j", "status": "passing", "index": 2})]
    assert len(world.forwards) == 1  # the next batch waits for MIN_GAP_S
    assert room.next_due() == pytest.approx(MIN_GAP_S)
    room.flush(MIN_GAP_S)
    [_, (_, op, payload)] = world.forwards
    assert op is ForwardOp.PASS and len(msgpack.unpackb(payload)[1]) == 4
    assert room.counts.batches == 2 and room.counts.forwarded == 5


def test_a_batch_carries_at_most_max_batch_renewals() -> None:
    room, world, _ = node(Role.FOLLOWER, node_id=2, leader=1)
    room.flush(0.0)
    room._inflight = object()  # type: ignore[assignment]  # hold the queue back
    for n in range(MAX_BATCH + 10):
        room.renew(caller(n), "j", "job", 0.0)
    room._inflight = None
    room.flush(1.0)
    [(_, _, payload)] = world.forwards
    assert len(msgpack.unpackb(payload)[1]) == MAX_BATCH


def test_a_round_trip_through_the_leader_answers_every_client() -> None:
    """Follower -> PASS -> leader (under its lease) -> PASS_REPLY -> follower -> each client."""
    follower, fw, _ = node(Role.FOLLOWER, node_id=2, leader=1)
    leader, lw, _ = node()
    follower.renew(caller(1), "j", "job", 0.0)
    assert deliver(fw, leader, 2, 0.0) == 1
    assert lw.renewed == [("job", "j")] and leader.counts.by_lease == 1 and leader.counts.batches == 1
    assert deliver(lw, follower, 1, 0.0) == 1
    assert fw.replies[0][2]["instance_id"] == "j" and follower.status()["pending"] == 0
    follower.renew(caller(2), "nope", None, 0.02)
    deliver(fw, leader, 2, 0.02)
    deliver(lw, follower, 1, 0.02)
    assert fw.errors == [(b"client", 2, "not_found")]


def test_without_a_lease_the_leader_answers_a_batch_after_one_read_index() -> None:
    follower, fw, _ = node(Role.FOLLOWER, node_id=2, leader=1)
    leader, lw, _ = node(lease=False)
    for n in range(3):
        follower.renew(caller(n), "j", "job", 0.0)
    follower._inflight = None
    follower.flush(1.0)
    deliver(fw, leader, 2, 1.0)
    assert len(lw.reads) == 2 and lw.reads[0][0] is None and lw.forwards == []  # one per batch
    lw.confirm_reads()
    deliver(lw, follower, 1, 1.0)
    assert len(fw.replies) == 3


def test_an_unanswered_batch_is_sent_again_and_renewals_expire_with_an_error() -> None:
    room, world, _ = node(Role.FOLLOWER, node_id=2, leader=1)
    room._answered_by.add((NodeId(1), 1))  # this leader answers PASS: not an old one
    room.renew(caller(1), "j", "job", 0.0)
    room.tick(BATCH_RETRY_S)
    assert [op for _, op, _ in world.forwards] == [ForwardOp.PASS, ForwardOp.PASS]
    room.tick(TIMEOUT_S + 0.1)
    assert world.errors == [(b"client", 1, "no_leader")] and room.status()["pending"] == 0
    assert room.counts.dropped == 1


def test_a_leader_that_never_answers_pass_is_renewed_the_old_way() -> None:
    """Rolling upgrade: an old leader drops PASS (an op it cannot decode). After one unanswered
    batch the follower confirms renewals with a read index and forwards HEARTBEAT, for that term."""
    room, world, fake = node(Role.FOLLOWER, node_id=2, leader=1)
    room.renew(caller(1), "j", "job", 0.0)
    world.forwards.clear()
    room.tick(BATCH_RETRY_S)
    assert world.forwards == [] and len(world.reads) == 1
    world.confirm_reads()
    [(leader, op, payload)] = world.forwards
    assert (leader, op, msgpack.unpackb(payload)) == (1, ForwardOp.HEARTBEAT, ["job", "j"])
    assert world.replies[0][2]["instance_id"] == "j" and room.counts.legacy == 1
    fake.term = 2  # a new election: try PASS again
    world.forwards.clear()
    room.renew(caller(2), "j", "job", 1.0)
    assert [op for _, op, _ in world.forwards] == [ForwardOp.PASS]


def test_an_old_followers_heartbeat_renews_at_the_leader() -> None:
    room, world, _ = node()
    room.on_forward(NodeId(2), ForwardOp.HEARTBEAT, msgpack.packb(["job", "j"]), 0.0)
    assert world.renewed == [("job", "j")] and room.counts.renewals == 1


def test_a_node_elected_with_renewals_waiting_answers_them_itself() -> None:
    room, world, fake = node(Role.FOLLOWER, node_id=2, leader=0)  # no leader known: they wait
    room.renew(caller(1), "j", "job", 0.0)
    assert world.forwards == [] and room.status()["pending"] == 1
    assert room.next_due() is None  # the loop does not spin while no leader is known
    fake.role, fake.leader, world.leading = Role.LEADER, 2, True
    room.flush(0.1)
    assert world.replies[0][2]["instance_id"] == "j" and world.renewed == [("job", "j")]


# -- what peers may send ---------------------------------------------------------------------------


@pytest.mark.parametrize("op, payload", [
    (ForwardOp.PASS, b"\xc1"), (ForwardOp.PASS, msgpack.packb([1])), (ForwardOp.PASS, msgpack.packb([1, [[1, 2, 3]]])),
    (ForwardOp.PASS, msgpack.packb([1, [[1, "", None]]])),
    (ForwardOp.PASS, msgpack.packb([1, [[1, "j", None]] * (MAX_BATCH + 1)])),
    (ForwardOp.PASS_REPLY, b""), (ForwardOp.PASS_REPLY, msgpack.packb([1, [[1, "", ["a"]]]])),
    (ForwardOp.PASS_REPLY, msgpack.packb([1, [[1, "not_found", 5]]])),
    (ForwardOp.HEARTBEAT, msgpack.packb([1, 2])), (ForwardOp.HEARTBEAT, msgpack.packb(["only one"])),
])
def test_malformed_forwards_are_dropped_and_counted(op: ForwardOp, payload: bytes) -> None:
    room, world, _ = node()
    room.on_forward(NodeId(2), op, payload, 0.0)
    assert room.counts.dropped == 1 and world.forwards == [] and world.renewed == []


def test_a_batch_reaching_a_follower_is_dropped_and_counted() -> None:
    room, world, _ = node(Role.FOLLOWER, node_id=2, leader=1)
    room.on_forward(NodeId(3), ForwardOp.PASS, msgpack.packb([1, [[1, "j", "job"]]]), 0.0)
    assert room.counts.dropped == 1 and world.forwards == []


def test_fail_all_answers_every_waiting_client() -> None:
    room, world, _ = node(Role.FOLLOWER, node_id=2, leader=1)
    room.renew(caller(1), "j", "job", 0.0)
    room.renew(caller(2), "j", "job", 0.0)
    assert room.fail_all("stopping", "bye") == 2
    assert sorted(world.errors) == [(b"client", 1, "stopping"), (b"client", 2, "stopping")]
