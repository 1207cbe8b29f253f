"""The typed results of the client's calls, one per operation of docs/client-protocol.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import RegistryError


@dataclass(frozen=True, slots=True)
class Registration:
    """A committed register: ``index`` is the log index at which it was committed.

    A registration is the instance's whole definition: it replaces the address, port, tags and
    meta of an instance with the same id (``created`` False). ``previous`` is the definition it
    replaced, as the server reported it; None when ``created``, and also when the server is older
    than this field or the answer is a retry's (the catalogue remembers a write's result, not
    what it replaced). ``instance`` is the definition registered, in the catalogue's canonical
    form (tags lowercase and sorted), as this client sent it."""

    instance_id: str
    created: bool
    index: int
    previous: InstanceInfo | None = None
    instance: InstanceInfo | None = None


@dataclass(frozen=True, slots=True)
class Deregistration:
    """A committed deregister: the ids removed (never empty) and the commit index."""

    removed: tuple[str, ...]
    index: int


@dataclass(frozen=True, slots=True)
class CheckInfo:
    """An instance's health check, as a server reported it (docs/client-protocol.md, "register").
    Times are milliseconds; fields that do not apply to ``kind`` are 0 or "". ``kind`` is a
    string ("ttl", "tcp", "http"), not an enum, so that a kind added by a newer node still reads."""

    kind: str
    ttl_ms: int = 0
    url: str = ""
    interval_ms: int = 0
    timeout_ms: int = 0
    failures: int = 3
    successes: int = 2
    deregister_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One instance of a service, as a server reported it. NB: ``meta`` is a dict, so an
    ``InstanceInfo`` compares by value but is not hashable.

    The health fields are absent from older nodes' replies and then keep their defaults (an
    instance without a check is always passing): ``status`` "passing" or "critical" (a string, so
    that a status added by a newer node still reads); ``since_ms`` the wall-clock time (ms since
    the epoch) of its registration or last transition, 0 if unknown; ``check`` None for none;
    ``revision`` the log index of the register that created or last replaced it; ``output`` why
    the last transition happened (e.g. "connection refused"), "" if nothing was said."""

    id: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    status: str = "passing"
    since_ms: int = 0
    check: CheckInfo | None = None
    revision: int = 0
    output: str = ""

    @property
    def serving(self) -> bool:
        """True if DNS answers with this instance: it is not critical."""
        return self.status == "passing"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """An accepted ``pass``: the instance (``service``, ``instance_id``) exists and its TTL clock
    restarted; ``status`` is its status as of ``index`` (still "critical" until the leader
    commits the transition back to passing)."""

    service: str
    instance_id: str
    status: str
    index: int


class Services(dict[str, list[InstanceInfo]]):
    """Service name -> instances, as of ``index`` (the applied index the answer reflects)."""

    def __init__(self, services: Mapping[str, list[InstanceInfo]], index: int) -> None:
        super().__init__(services)
        self.index = index

    def __repr__(self) -> str:
        return f"Services({dict.__repr__(self)}, index={self.index})"


@dataclass(frozen=True, slots=True)
class KeepaliveState:
    """What a keepalive reports when its instance's state changes: ``state`` is the status the
    last heartbeat's answer gave ("passing", "critical"; ``index`` the node's applied index
    then), or "unreachable" when it failed (``error`` says why)."""

    state: str
    index: int | None = None
    error: RegistryError | None = None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Another node, as the answering node sees it. ``match``, ``next`` and ``state`` (Raft
    progress) are known only on the leader; ``last_contact_ms`` is None if never heard from."""

    match: int | None
    next: int | None
    state: str | None
    last_contact_ms: int | None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node's answer to ``status``; ``server`` is the client address that was asked.
    ``peers`` has every peer's last contact; its replication progress only on the leader.
    ``dns_stats`` is the node's DNS process counters (answered, stale, stale_queries, ...).
    ``snapshot`` is the node's snapshot state: index, bytes, log_first_index, taken, installed, ...
    ``health`` is the node's health room: leading, tracked, heartbeats, transitions_proposed,
    prober counters (None from a node older than health checks)."""

    server: str
    node: str
    node_id: int
    role: str
    term: int
    leader: str | None
    commit: int
    applied: int
    last_index: int
    raft: str
    client: str
    dns: str
    peers: Mapping[str, PeerStatus] = field(default_factory=dict)
    dns_stats: Mapping[str, Any] | None = None
    snapshot: Mapping[str, Any] | None = None
    health: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SavedSnapshot:
    """A consistent copy of the cluster's catalogue (``snapshot_save``): ``data`` is the catalogue
    snapshot (services, instances and client sessions) as of log ``index``, whose entry has
    ``term``; ``voters`` and ``learners`` are the node ids of the membership; ``digest`` is the
    catalogue's SHA-256 digest (hex). NB: ``repr`` leaves ``data`` out."""

    index: int
    term: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    services: int
    instances: int
    sessions: int
    digest: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class LeaderTransfer:
    """A finished ``leader_transfer``: ``leader`` (a node name) leads in ``term``; ``previous``
    led before (equal to ``leader`` when the named node already led, and nothing moved)."""

    leader: str
    term: int
    previous: str | None

    @property
    def moved(self) -> bool:
        return self.previous != self.leader


@dataclass(frozen=True, slots=True)
class Restoration:
    """A committed ``snapshot_restore``: the catalogue now holds this many services and
    instances, from log ``index`` on."""

    services: int
    instances: int
    index: int


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member as the leader sees it: ``match`` is its match index (None: not known to the
    leader yet), ``last_contact_s`` how long ago the leader last heard from it (0 for the
    leader itself, None: never); ``raft`` and ``client`` are None when the leader does not know
    them (a --peer flag names no client address)."""

    name: str
    id: int
    raft: str | None
    client: str | None
    voter: bool
    match: int | None
    last_contact_s: float | None
    leader: bool


@dataclass(frozen=True, slots=True)
class Members:
    """The ``members`` op's answer: every member, the leader's term and commit index, and the
    fault tolerance (how many voters may fail, ``(voters - 1) // 2``) with the configured floor."""

    leader: str | None
    term: int
    commit: int
    members: tuple[MemberInfo, ...]
    voters: int
    learners: int
    fault_tolerance: int
    min_fault_tolerance: int
