"""Health under the simulator: TTL instances, their keepalives, and the replicated health table.

Some seeds run a few TTL instances of one service. Each has a keepalive (the service's own
`registry register --ttl T --keepalive`) that renews every TTL/3 through a node of its choice; a
leader hands the renewal to its real ``HealthTracker``, a follower forwards it to the leader it
knows over the simulated network. The leader proposes each transition the tracker returns as a
log entry in the tiny encoding below, and every node applies those entries to its health table,
which is part of its state-machine image (so state machine safety covers the health history).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from registry.catalogue.model import Check, CheckKind, HealthStatus, Instance
from registry.catalogue.tracker import Transition
from registry.raft import NodeId

SERVICE = "svc"
TICK_MS = 100  # a node's clock: its tick count times this (an election timeout is 1 s)
NEVER = 1 << 62  # a step that never comes

_STATUS_BYTE = {HealthStatus.PASSING: b"p", HealthStatus.CRITICAL: b"c"}
_BYTE_STATUS = {v: k for k, v in _STATUS_BYTE.items()}


@dataclass(frozen=True)
class HealthProfile:
    """The health side of a run, drawn from the seed like the fault profile."""

    ttl_ticks: tuple[int, ...]  # one per TTL instance; empty: no health in this run
    stop: float  # per renewal due, during faults: the service dies for 1 to 4 TTLs
    reregister: float  # chance a service that comes back registers again (a new revision)
    dead_at_end: float  # chance a keepalive stays stopped for the whole calm phase

    @classmethod
    def draw(cls, rng: random.Random, election_ticks: int) -> HealthProfile:
        if rng.random() >= 0.4:
            return cls((), 0.0, 0.0, 0.0)
        count = rng.randint(1, 4)
        return cls(tuple(rng.randint(3, 6) * election_ticks for _ in range(count)),
                   stop=rng.choice([0.0, 0.02, 0.08]), reregister=rng.uniform(0, 0.5),
                   dead_at_end=rng.uniform(0.2, 0.5))


@dataclass
class Keepalive:
    """A service's keepalive loop: renews its instance every TTL/3, through the node it last
    reached (or a random one), trying another node when that one is down or knows no leader."""

    instance_id: str
    ttl_ticks: int
    next_at: int  # the step of its next renewal
    target: NodeId | None = None
    down_until: int = 0  # the service is dead (sends nothing) until this step
    registrations: int = 0

    @property
    def ttl_ms(self) -> int:
        return self.ttl_ticks * TICK_MS


@dataclass(frozen=True)
class Renewal:
    """A heartbeat a follower forwards to the leader it knows (no Raft write)."""

    source: NodeId
    target: NodeId
    instance_id: str


# -- the log entries ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegisterEntry:
    instance_id: str
    ttl_ms: int


@dataclass(frozen=True)
class SetEntry:
    """A transition, with who decided it: the decision is checked when the entry commits."""

    instance_id: str
    revision: int
    status: HealthStatus
    decision: int  # the simulation's decision number


def register_entry(instance_id: str, ttl_ms: int, registration: int) -> bytes:
    # NB: the registration number makes each (re-)registration a distinct payload for the registrar.
    return b"h:reg:%s:%d:%d" % (instance_id.encode(), ttl_ms, registration)


def transition_entry(transition: Transition, decision: int) -> bytes:
    assert transition.status is not None and not transition.remove, "the simulator has no deregister-after"
    return b"h:set:%s:%d:%s:%d" % (transition.instance_id.encode(), transition.revision,
                                   _STATUS_BYTE[transition.status], decision)


def decode_entry(data: bytes) -> RegisterEntry | SetEntry | None:
    """The health entry in ``data``, or None for any other payload."""
    if not data.startswith(b"h:"):
        return None
    parts = data.split(b":")
    if parts[1] == b"reg":
        return RegisterEntry(parts[2].decode(), int(parts[3]))
    return SetEntry(parts[2].decode(), int(parts[3]), _BYTE_STATUS[parts[4]], int(parts[5]))


# -- the replicated table -------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    revision: int  # the index of the registration
    status: HealthStatus
    ttl_ms: int


Table = dict[str, Record]


def encode_table(table: Table) -> bytes:
    """Canonical bytes of a table (no dots: a snapshot's image ends with dot padding)."""
    return b";".join(b"%s=%d,%s,%d" % (iid.encode(), r.revision, _STATUS_BYTE[r.status], r.ttl_ms)
                     for iid, r in sorted(table.items()))


def decode_table(data: bytes) -> Table:
    table: Table = {}
    for item in data.split(b";") if data else ():
        iid, _, rest = item.partition(b"=")
        revision, status, ttl = rest.split(b",")
        table[iid.decode()] = Record(int(revision), _BYTE_STATUS[status], int(ttl))
    return table


class TableView:
    """A health table seen as the catalogue view the tracker reads."""

    def __init__(self, table: Table) -> None:
        self._table = table

    def instance(self, service: str, instance_id: str) -> Instance | None:
        record = self._table.get(instance_id) if service == SERVICE else None
        if record is None:
            return None
        return Instance(instance_id, SERVICE, "10.0.0.1", 80, check=Check(CheckKind.TTL, ttl_ms=record.ttl_ms),
                        status=record.status, revision=record.revision)

    def service_names(self) -> tuple[str, ...]:
        return (SERVICE,) if self._table else ()

    def instances(self, service: str, tag: str | None = None) -> tuple[Instance, ...]:
        if service != SERVICE:
            return ()
        return tuple(i for i in (self.instance(SERVICE, iid) for iid in sorted(self._table)) if i is not None)
