"""The node's health room (registry/node/health.py) as one unit: a real replica and tracker, a
stand-in core (leader or not) and a recorder of proposals and forwards. No sockets, no clock."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from registry.catalogue import Check, CheckKind, Register, Request, SetHealth, decode_request, encode_request
from registry.node.health import STALL_S, HealthRoom
from registry.node.replica import Replica
from registry.raft import BasicStatus, Entry, EntryKind, Index, NodeId, Role, Term

TTL_S = 3.0


@dataclass
class FakeRaw:
    role: Role = Role.LEADER
    leader: int = 1

    def basic_status(self) -> BasicStatus:
        return BasicStatus(NodeId(1), self.role, Term(1), NodeId(self.leader), Index(0), Index(0), NodeId(0))


@dataclass
class Recorder:
    writes: list[Any] = field(default_factory=list)

    def write(self, caller: Any, key: tuple[str, int], data: bytes, now: float, **_: Any) -> None:
        self.writes.append(decode_request(data).command)



def room(role: Role = Role.LEADER) -> tuple[HealthRoom, Recorder, Replica, list[float]]:
    replica = Replica()
    entry = encode_request(Request("c", 1, Register("job", "10.0.0.7", 7000, instance_id="j",
                                                    check=Check(CheckKind.TTL, ttl_ms=int(TTL_S * 1000)), at_ms=1)))
    replica.apply([Entry(Term(1), Index(1), EntryKind.NORMAL, entry)])
    out = Recorder()
    clock = [0.0]
    health = HealthRoom(raw=FakeRaw(role), replica=replica, requests=out, prober=None,  # type: ignore[arg-type]
                        log=logging.LoggerAdapter(logging.getLogger("test"), {}),
                        clock=lambda: clock[0], wall=lambda: 1000.0)
    health.on_role(role, 1, 0.0)
    return health, out, replica, clock


def run_ticks(health: HealthRoom, start: float, stop: float, step: float = 0.05) -> None:
    t = start
    while t <= stop + 1e-9:
        health.tick(t)
        t += step


def test_the_leader_proposes_an_expiry_only_after_the_ttl() -> None:
    health, out, _, _ = room()
    run_ticks(health, 0.0, TTL_S - 0.1)
    assert out.writes == []
    run_ticks(health, TTL_S - 0.05, TTL_S + 0.1)
    [command] = out.writes
    assert isinstance(command, SetHealth) and command.status.value == "critical" and command.revision == 1


def test_a_stall_restarts_every_clock_instead_of_expiring() -> None:
    """A loop that stood still (SIGSTOP) longer than STALL_S wakes with renewals unread: it
    restarts the clocks as at an election, so nothing expires for the silence it could not hear."""
    health, out, _, _ = room()
    run_ticks(health, 0.0, 1.0)
    health.tick(1.0 + max(STALL_S, TTL_S) + 1.0)  # woke after more than a TTL
    assert out.writes == [] and health.stalls == 1
    woke = 1.0 + max(STALL_S, TTL_S) + 1.0
    run_ticks(health, woke, woke + TTL_S - 0.1)
    assert out.writes == []
    run_ticks(health, woke + TTL_S, woke + TTL_S + 0.1)
    assert len(out.writes) == 1


def test_a_follower_room_takes_no_renewal_and_proposes_nothing() -> None:
    """Renewals reach the leader's tracker only (renewals.py relays a follower's)."""
    health, out, _, _ = room(Role.FOLLOWER)
    assert health.renew("job", "j", 0.0) is False
    run_ticks(health, 0.0, 2 * TTL_S)
    assert out.writes == [] and health.heartbeats == 0


def test_the_leader_renewal_keeps_an_instance_past_its_ttl() -> None:
    health, out, _, clock = room()
    run_ticks(health, 0.0, TTL_S - 0.5)
    assert health.renew("job", "j", TTL_S - 0.5) is True
    run_ticks(health, TTL_S - 0.45, 2 * TTL_S - 0.6)
    assert out.writes == [] and health.heartbeats == 1
    run_ticks(health, 2 * TTL_S - 0.5, 2 * TTL_S)
    [command] = out.writes
    assert isinstance(command, SetHealth) and command.status.value == "critical"


def test_a_new_leader_tracks_the_checked_instances_it_indexed_as_a_follower() -> None:
    """Followers keep the index of checked instances per applied entry, so a new leader starts
    its clocks without scanning the catalogue."""
    health, out, replica, _ = room(Role.FOLLOWER)
    entry = encode_request(Request("c", 2, Register("job", "10.0.0.8", 7000, instance_id="k",
                                                    check=Check(CheckKind.TTL, ttl_ms=int(TTL_S * 1000)), at_ms=1)))
    health.on_applied(replica.apply([Entry(Term(1), Index(2), EntryKind.NORMAL, entry)]), 0.0)
    plain = encode_request(Request("c", 3, Register("web", "10.0.0.9", 80, at_ms=1)))
    health.on_applied(replica.apply([Entry(Term(1), Index(3), EntryKind.NORMAL, plain)]), 0.0)
    health.on_role(Role.LEADER, 2, 0.0)
    assert len(health.tracker) == 2
    run_ticks(health, 0.0, TTL_S + 0.1)
    assert sorted(c.instance_id for c in out.writes) == ["j", "k"]
