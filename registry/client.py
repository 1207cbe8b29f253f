"""The Python client of the registry: the client side of docs/client-protocol.md (version 1).

Contract: every public call either returns a typed result that a server sent, or raises a
``RegistryError`` within ``timeout_s``. Arguments are checked here, before any network traffic,
with the catalogue's own rules (``registry.catalogue.validation``, the limits of the protocol
document), so a node refuses nothing that passes here unless the two versions differ.

Writes are at-most-once (Raft §8): a ``Client`` has a random client id, and each new write takes
the next sequence number. When a server does not answer in time, or answers ``timeout``,
``no_leader`` or ``stopping``, the SAME write (same client id, same ``seq``) goes to the next
server, so a write is never applied twice even if an earlier attempt did commit.

Thread safety: a ``Client`` owns ZeroMQ sockets, which are not thread-safe. Use one ``Client``
per thread. (Calls are also serialized by an internal lock, so sharing one by mistake is safe,
just not concurrent.)

Prohibitions: this module imports no node, transport or storage code (only the catalogue's
pure validation rules and ``registry.naming``); it speaks only the wire protocol, so a client in
another language can be written from the same document.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from registry.catalogue import validation
from registry.catalogue.validation import ValidationError
from registry.naming import AddressError, format_hostport, parse_hostport, zmq_endpoint

__all__ = [
    "DEFAULT_SERVERS",
    "SERVERS_ENV",
    "Client",
    "Deregistration",
    "InstanceInfo",
    "NodeStatus",
    "NotFound",
    "PeerStatus",
    "Registration",
    "RegistryError",
    "Restoration",
    "SavedSnapshot",
    "Services",
    "Unavailable",
    "ValidationFailed",
    "looks_like_hostport",
    "resolve_servers",
]

PROTOCOL_VERSION = 1
SERVERS_ENV = "REGISTRY_SERVERS"
# The client addresses of `registry up` (node i: client 127.0.0.1:710i).
DEFAULT_SERVERS = ("127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103")
# How long one server gets to answer before the same request also goes to the next one.
ATTEMPT_TIMEOUT_S = 2.0
# Pause before another round over every server, after each one answered with a retryable error
# (an election is in progress): doubles from the first value up to the second.
ROUND_BACKOFF_S = (0.05, 0.5)
# Error codes after which the same request goes to another server (docs/client-protocol.md).
RETRY_CODES = frozenset({"no_leader", "timeout", "stopping"})

MAX_REQUEST_ID = 2**63 - 1
# Connection events (of a DEALER's monitor) that mean the server cannot be reached now.
_FAILURES = {zmq.EVENT_CONNECT_RETRIED: "cannot connect", zmq.EVENT_DISCONNECTED: "connection lost"}
_DOING = {"register": "register", "deregister": "deregister", "services": "list services",
          "status": "get a status", "snapshot_save": "save a snapshot",
          "snapshot_restore": "restore a snapshot"}

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Errors


class RegistryError(Exception):
    """Anything the registry could not do. ``code`` is the protocol's error code when a server
    sent one (``None`` for errors found by the client); ``server`` is the HOST:PORT that sent it."""

    def __init__(self, message: str, *, code: str | None = None, server: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.server = server


class ValidationFailed(RegistryError, ValueError):
    """The arguments are wrong: found by the client before sending (``code`` None, ``field``
    names the argument), or refused by a server (``invalid`` or ``bad_request``). Never retried."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(message, code=code, server=server)
        self.field = field


class NotFound(RegistryError):
    """A deregister matched no instance (``not_found``)."""


class Unavailable(RegistryError):
    """No server did it before the deadline: none answered, or every answer was ``no_leader``,
    ``timeout`` or ``stopping``. ``tried`` lists the servers asked, ``last_error`` the last
    reason. For a write, the outcome is unknown: it may have been committed."""

    def __init__(
        self,
        message: str,
        *,
        tried: Sequence[str] = (),
        last_error: str | None = None,
        code: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(message, code=code, server=server)
        self.tried = tuple(tried)
        self.last_error = last_error


def _error_for(code: str, message: str, server: str) -> RegistryError:
    """The exception for an error reply (docs/client-protocol.md, "Reply")."""
    if code in ("invalid", "bad_request"):
        return ValidationFailed(f"{server} refused the request: {message}", code=code, server=server)
    if code == "not_found":
        return NotFound(message, code=code, server=server)
    if code in RETRY_CODES:
        return Unavailable(f"{server}: {code}: {message}", code=code, server=server,
                           tried=(server,), last_error=f"{code}: {message}")
    # stale_seq, and any code a newer server may add.
    return RegistryError(f"{server}: {code}: {message}", code=code, server=server)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Registration:
    """A committed register: ``index`` is the log index at which it was committed."""

    instance_id: str
    created: bool
    index: int


@dataclass(frozen=True, slots=True)
class Deregistration:
    """A committed deregister: the ids removed (never empty) and the commit index."""

    removed: tuple[str, ...]
    index: int


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One instance of a service, as a server reported it. NB: ``meta`` is a dict, so an
    ``InstanceInfo`` compares by value but is not hashable."""

    id: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]


class Services(dict[str, list[InstanceInfo]]):
    """Service name -> instances, as of ``index`` (the applied index the answer reflects)."""

    def __init__(self, services: Mapping[str, list[InstanceInfo]], index: int) -> None:
        super().__init__(services)
        self.index = index

    def __repr__(self) -> str:
        return f"Services({dict.__repr__(self)}, index={self.index})"


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
    ``snapshot`` is the node's snapshot state: index, bytes, log_first_index, taken, installed, ..."""

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
class Restoration:
    """A committed ``snapshot_restore``: the catalogue now holds this many services and
    instances, from log ``index`` on."""

    services: int
    instances: int
    index: int


# Result parsers: a reply of the wrong shape raises ValueError, and counts as a failed attempt.


def _int(value: Any, what: str) -> int:
    if type(value) is not int:  # NB: bool is an int subclass and is not a valid integer here.
        raise ValueError(f"{what} is not an integer: {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string: {value!r}")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _map(value: Any, what: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a map: {value!r}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list: {value!r}")
    return value


def _parse_registration(result: Any, server: str) -> Registration:
    r = _map(result, "result")
    created = r["created"]
    if not isinstance(created, bool):
        raise ValueError(f"created is not a boolean: {created!r}")
    return Registration(_str(r["instance_id"], "instance_id"), created, _int(r["index"], "index"))


def _parse_deregistration(result: Any, server: str) -> Deregistration:
    r = _map(result, "result")
    removed = tuple(_str(i, "removed[]") for i in _list(r["removed"], "removed"))
    return Deregistration(removed, _int(r["index"], "index"))


def _parse_instance(item: Any) -> InstanceInfo:
    i = _map(item, "instance")
    meta = {_str(k, "meta key"): _str(v, "meta value") for k, v in _map(i["meta"], "meta").items()}
    return InstanceInfo(
        id=_str(i["id"], "id"),
        address=_str(i["address"], "address"),
        port=_int(i["port"], "port"),
        tags=tuple(_str(t, "tag") for t in _list(i["tags"], "tags")),
        meta=meta,
    )


def _parse_services(result: Any, server: str) -> Services:
    r = _map(result, "result")
    services = {
        _str(name, "service name"): [_parse_instance(item) for item in _list(items, name)]
        for name, items in _map(r["services"], "services").items()
    }
    return Services(services, _int(r["index"], "index"))


def _parse_saved_snapshot(result: Any, server: str) -> SavedSnapshot:
    r = _map(result, "result")
    data = r["snapshot"]
    if not isinstance(data, bytes):
        raise ValueError(f"snapshot is not a byte string: {type(data).__name__}")
    return SavedSnapshot(
        index=_int(r["index"], "index"),
        term=_int(r["term"], "term"),
        voters=tuple(_int(v, "voters[]") for v in _list(r["voters"], "voters")),
        learners=tuple(_int(v, "learners[]") for v in _list(r["learners"], "learners")),
        services=_int(r["services"], "services"),
        instances=_int(r["instances"], "instances"),
        sessions=_int(r["sessions"], "sessions"),
        digest=_str(r["digest"], "digest"),
        data=data,
    )


def _parse_restoration(result: Any, server: str) -> Restoration:
    r = _map(result, "result")
    return Restoration(_int(r["services"], "services"), _int(r["instances"], "instances"),
                       _int(r["index"], "index"))


def _parse_status(result: Any, server: str) -> NodeStatus:
    r = _map(result, "result")
    peers = {}
    for name, p in _map(r.get("peers") or {}, "peers").items():
        p = _map(p, f"peers[{name!r}]")
        contact = p.get("last_contact_ms")
        # NB: the protocol fills peers only on the leader, but a node may also report what it
        # knows of its peers, with nil for the progress only a leader has: accept both.
        peers[_str(name, "peer name")] = PeerStatus(
            match=_opt_int(p.get("match"), "match"),
            next=_opt_int(p.get("next"), "next"),
            state=_opt_str(p.get("state"), "state"),
            last_contact_ms=_opt_int(contact, "last_contact_ms"),
        )
    return NodeStatus(
        server=server,
        node=_str(r["node"], "node"),
        node_id=_int(r["node_id"], "node_id"),
        role=_str(r["role"], "role"),
        term=_int(r["term"], "term"),
        leader=_opt_str(r.get("leader"), "leader"),
        commit=_int(r["commit"], "commit"),
        applied=_int(r["applied"], "applied"),
        last_index=_int(r["last_index"], "last_index"),
        raft=_str(r["raft"], "raft"),
        client=_str(r["client"], "client"),
        dns=_str(r["dns"], "dns"),
        peers=peers,
        dns_stats=_map(r["dns_stats"], "dns_stats") if r.get("dns_stats") is not None else None,
        snapshot=_map(r["snapshot"], "snapshot") if r.get("snapshot") is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Client-side validation: the catalogue's own rules (registry/catalogue/validation.py), so that
# the client refuses exactly what a node would refuse, before sending anything. Values are sent
# as the caller gave them; the node stores their canonical form.


def _checked(validate: Callable[[Any], Any], value: Any) -> None:
    try:
        validate(value)
    except ValidationError as e:
        raise ValidationFailed(str(e), field=e.field) from None


def _check_tags(tags: Any) -> list[str]:
    if isinstance(tags, Iterable) and not isinstance(tags, str | bytes | bytearray | Mapping):
        tags = list(tags)  # NB: once, so that a generator is not used up by the check
    _checked(validation.validate_tags, tags)
    return tags  # type: ignore[no-any-return]


def _check_meta(meta: Any) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):  # NB: the catalogue also takes pairs; the wire needs a map
        raise ValidationFailed(f"meta must be a map of strings to strings, got {type(meta).__name__}",
                               field="meta")
    _checked(validation.validate_meta, meta)
    return dict(meta)


def looks_like_hostport(text: str) -> bool:
    """The rule ``deregister`` uses to tell an address from an instance id: text with a ``:``
    (``10.0.0.5:8080``, ``[::1]:8080``, ``db:5432``) is HOST:PORT, and must then be a valid one;
    anything else is an instance id. Instance ids never contain ``:`` (the catalogue reserves it),
    so the rule is never ambiguous. ``by="id"``/``"address"`` forces either reading."""
    return ":" in text


def resolve_servers(servers: Sequence[str] | str | None = None) -> tuple[str, ...]:
    """The servers to use, as canonical HOST:PORT strings, duplicates removed: ``servers`` if
    given (a sequence, or one comma-separated string), else ``$REGISTRY_SERVERS``
    (comma-separated), else ``DEFAULT_SERVERS``. A bad address raises ``ValidationFailed`` naming
    where it came from."""
    source = "server"
    if servers is None:
        env = os.environ.get(SERVERS_ENV, "")
        if env.strip():
            servers, source = env, SERVERS_ENV
        else:
            servers = DEFAULT_SERVERS
    if isinstance(servers, str):
        servers = servers.split(",")
    found: list[str] = []
    for text in servers:
        text = text.strip()
        if not text:
            continue
        try:
            hostport = format_hostport(*parse_hostport(text, what=source))
        except AddressError as e:
            raise ValidationFailed(str(e), field="servers") from None
        if hostport not in found:
            found.append(hostport)
    if not found:
        raise ValidationFailed(f"no servers given in {source}: expected HOST:PORT[,HOST:PORT...]",
                               field="servers")
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# The client


class Client:
    """A connection to a registry cluster, over the client protocol (docs/client-protocol.md).

    ``servers`` are the nodes' client addresses (HOST:PORT, or [IPv6]:PORT); by default
    ``$REGISTRY_SERVERS`` (comma-separated), else the ``registry up`` addresses
    127.0.0.1:7101-7103. Every call ends within ``timeout_s`` seconds: it asks one server, and if
    that one has not answered after ``attempt_timeout_s`` (default: 2 s, or less so that every
    server gets a turn: ``min(2, timeout_s / len(servers))``), or answers ``no_leader``,
    ``timeout`` or ``stopping``, or its connection is refused or lost (ZeroMQ socket monitor
    events), it asks the next one, round-robin, while still accepting a late answer from the
    earlier ones. Each call starts at the server that last answered. ``status_all()`` asks every
    server at once and waits ``status_wait_s`` (``attempt_timeout_s`` if given, else
    ``min(2, timeout_s)``).

    Writes (``register``, ``deregister``) carry this client's id and a sequence number; a retry
    reuses both, so a write is applied at most once. ``Unavailable`` from a write means the
    outcome is unknown.

    NB: not thread-safe in the ZeroMQ sense: use one ``Client`` per thread. Calls on one
    ``Client`` from several threads are serialized by a lock (safe, not concurrent).
    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        servers: Sequence[str] | str | None = None,
        *,
        timeout_s: float = 5.0,
        client_id: str | None = None,
        attempt_timeout_s: float | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if attempt_timeout_s is not None and not attempt_timeout_s > 0:
            raise ValueError(f"attempt_timeout_s must be positive, not {attempt_timeout_s!r}")
        if client_id is None:
            client_id = uuid.uuid4().hex
        _checked(validation.validate_client_id, client_id)
        self.servers: tuple[str, ...] = resolve_servers(servers)
        self.client_id = client_id
        self.timeout_s = float(timeout_s)
        # NB: by default short enough that every server gets a turn before the deadline; giving
        # up on a slow server costs little, since its late answer is still accepted.
        if attempt_timeout_s is None:
            self.attempt_timeout_s = min(ATTEMPT_TIMEOUT_S, self.timeout_s / len(self.servers))
            self.status_wait_s = min(ATTEMPT_TIMEOUT_S, self.timeout_s)
        else:
            self.attempt_timeout_s = self.status_wait_s = min(attempt_timeout_s, self.timeout_s)
        self._endpoints = tuple(zmq_endpoint(*parse_hostport(s)) for s in self.servers)
        self._context = zmq.Context.instance()
        # Invariant: _sockets[i] is None or a DEALER connected to servers[i] with no request of
        # an earlier call outstanding (a call closes the sockets it leaves requests on), and
        # _monitors[i] is its monitor (connection events) exactly when _sockets[i] is not None.
        self._sockets: list[zmq.Socket[bytes] | None] = [None] * len(self.servers)
        self._monitors: list[zmq.Socket[bytes] | None] = [None] * len(self.servers)
        # Why servers[i] cannot be reached, from its latest connection event; None if it can, or
        # if nothing is known yet.
        self._down: list[str | None] = [None] * len(self.servers)
        self._preferred = 0  # where the next call starts: the server that last answered
        self._seq = 0  # Invariant: the seq of the latest write started; 0 before the first
        self._request_id = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- public API ------------------------------------------------------------------------

    def register(
        self,
        service: str,
        address: str,
        port: int,
        *,
        id: str | None = None,  # noqa: A002 (the issue fixes this keyword's name)
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
    ) -> Registration:
        """Register (or update) an instance of ``service``; returns once it is committed and
        applied. ``id`` None lets the cluster derive the id from service, address and port."""
        _checked(validation.validate_service, service)
        _checked(validation.validate_address, address)
        _checked(validation.validate_port, port)
        if id is not None:
            _checked(validation.validate_instance_id, id)
        args = {
            "service": service,
            "address": address,
            "port": port,
            "instance_id": id,
            "tags": _check_tags(tags),
            "meta": _check_meta(meta),
        }
        return self._call("register", args, _parse_registration, write=True)

    def deregister(
        self,
        service: str,
        id_or_address: str,
        *,
        by: Literal["auto", "id", "address"] = "auto",
    ) -> Deregistration:
        """Remove instances of ``service`` by instance id or by HOST:PORT. With ``by="auto"``,
        text with a ``:`` is HOST:PORT, anything else an instance id (``looks_like_hostport``);
        ``by="id"`` or ``by="address"`` forces either. Raises ``NotFound`` if nothing matched."""
        if by not in ("auto", "id", "address"):
            raise ValueError(f"by must be 'auto', 'id' or 'address', not {by!r}")
        _checked(validation.validate_service, service)
        args: dict[str, Any] = {"service": service}
        if not isinstance(id_or_address, str):
            raise ValidationFailed(f"expected an instance id or HOST:PORT, got {id_or_address!r}",
                                   field="instance_id")
        if by == "address" or (by == "auto" and looks_like_hostport(id_or_address)):
            try:
                host, port = parse_hostport(id_or_address)
            except AddressError as e:
                raise ValidationFailed(str(e), field="address") from None
            _checked(validation.validate_address, host)
            args["address"], args["port"] = host, port
        else:
            _checked(validation.validate_instance_id, id_or_address)
            args["instance_id"] = id_or_address
        return self._call("deregister", args, _parse_deregistration, write=True)

    def services(self, service: str | None = None, *, stale: bool = False) -> Services:
        """Every service's instances, or one service's (an unknown one maps to ``[]``).
        Linearizable unless ``stale``, which answers from what the node has applied."""
        if service is not None:
            _checked(validation.validate_service, service)
        return self._call("services", {"service": service, "stale": bool(stale)}, _parse_services)

    def status(self) -> NodeStatus:
        """The status of the first server that answers."""
        return self._call("status", {}, _parse_status)

    def snapshot_save(self) -> SavedSnapshot:
        """A consistent snapshot of the catalogue, taken through the leader: the node confirms a
        read index with a quorum (linearizable, as ``services``) and answers with its whole
        catalogue once it has applied that index. Each server gets the whole ``timeout_s``
        (the answer can be tens of MB), unless it is unreachable or answers a retryable error."""
        return self._call("snapshot_save", {}, _parse_saved_snapshot, attempt_timeout_s=self.timeout_s)

    def snapshot_restore(self, data: bytes) -> Restoration:
        """Replace every service and instance of the cluster by those of ``data`` (a catalogue
        snapshot, ``SavedSnapshot.data``), as one committed write: every node, and its DNS, then
        holds exactly the snapshot's services. Client sessions are the cluster's own, kept.
        Returns once committed and applied. A write: at most once, ``Unavailable`` means the
        outcome is unknown (calling again with the same data is harmless)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValidationFailed(f"a snapshot is bytes, got {type(data).__name__}", field="snapshot")
        data = bytes(data)
        if not 0 < len(data) <= validation.RESTORE_MAX_BYTES:
            raise ValidationFailed(f"a snapshot to restore holds 1 to {validation.RESTORE_MAX_BYTES} bytes, "
                                   f"got {len(data)}", field="snapshot")
        return self._call("snapshot_restore", {"snapshot": data}, _parse_restoration, write=True,
                          attempt_timeout_s=self.timeout_s)

    def status_all(self) -> list[NodeStatus | RegistryError]:
        """Every server's status, in ``servers`` order, asked all at once; a server that cannot
        be reached, or does not answer within ``status_wait_s``, gets an ``Unavailable`` (or the
        error it answered) in its place."""
        with self._lock:
            self._check_open()
            deadline = time.monotonic() + self.status_wait_s
            results: list[NodeStatus | RegistryError | None] = [None] * len(self.servers)

            def unavailable(i: int, error: str) -> Unavailable:
                server = self.servers[i]
                return Unavailable(f"{server}: {error}", tried=[server], last_error=error, server=server)

            outstanding: dict[int, int] = {}
            try:
                for i in range(len(self.servers)):
                    rid, error = self._send(i, "status", {})
                    if rid is None:
                        results[i] = unavailable(i, error or "cannot send")
                    else:
                        outstanding[rid] = i
                while outstanding and (left := deadline - time.monotonic()) > 0:
                    answers, _, downs = self._receive(outstanding, left)
                    for rid, i, reply in answers:
                        del outstanding[rid]
                        try:
                            results[i] = self._outcome(reply, i, _parse_status)
                        except RegistryError as e:
                            results[i] = e
                    for rid, i in list(outstanding.items()):
                        if i in downs:
                            del outstanding[rid]
                            results[i] = unavailable(i, downs[i])
            finally:
                self._reset(set(outstanding.values()))
            for i in outstanding.values():
                results[i] = unavailable(i, f"no reply within {self.status_wait_s:g} s")
            assert all(r is not None for r in results)
            return results  # type: ignore[return-value]

    def close(self) -> None:
        """Close every socket, dropping unsent requests. Idempotent."""
        with self._lock:
            self._closed = True
            self._reset(range(len(self.servers)))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(servers={list(self.servers)!r}, client_id={self.client_id!r})"

    # -- machinery -------------------------------------------------------------------------

    def _call(
        self,
        op: str,
        args: dict[str, Any],
        parse: Callable[[Any, str], T],
        *,
        write: bool = False,
        attempt_timeout_s: float | None = None,
    ) -> T:
        """Send ``op`` to one server after another until one answers, within ``timeout_s``.

        The latest attempt is given ``attempt_timeout_s``, unless its server answers a retryable
        error or is known to be unreachable (connection refused or lost), when the next attempt
        starts at once (after a backoff at the end of each round). Earlier attempts stay
        outstanding: the first answer to any of them ends the call.
        """
        attempt_s = self.attempt_timeout_s if attempt_timeout_s is None else attempt_timeout_s
        with self._lock:
            self._check_open()
            if write:
                self._seq += 1
                # NB: one seq for every attempt of this call: that is what makes retries safe.
                args = {"client": self.client_id, "seq": self._seq, **args}
            n = len(self.servers)
            started = time.monotonic()
            deadline = started + self.timeout_s
            outstanding: dict[int, int] = {}  # request id -> server index, unanswered
            tried: list[str] = []
            last_error: str | None = None
            next_server = self._preferred
            attempts = 0
            # Invariant: latest is the request id of the attempt being waited for (it is in
            # outstanding), or None when the next attempt is due at next_attempt_at.
            latest: int | None = None
            latest_server = next_server
            next_attempt_at = started

            def give_up_on_latest(error: str) -> None:
                nonlocal latest, last_error, next_attempt_at
                last_error = f"{self.servers[latest_server]}: {error}"
                if self._preferred == latest_server:
                    self._preferred = (latest_server + 1) % n
                latest = None
                next_attempt_at = time.monotonic() + self._pause(attempts)

            try:
                while (now := time.monotonic()) < deadline:
                    if now >= next_attempt_at:
                        if latest is not None:  # it had its attempt_timeout_s; keep listening
                            give_up_on_latest(f"no reply within {attempt_s:g} s")
                        i, next_server = next_server, (next_server + 1) % n
                        attempts += 1
                        latest_server = i
                        if self.servers[i] not in tried:
                            tried.append(self.servers[i])
                        latest, error = self._send(i, op, args)
                        if latest is None:
                            give_up_on_latest(error or "cannot send")
                            continue
                        outstanding[latest] = i
                        next_attempt_at = now + attempt_s
                        if self._down[i] is not None:  # sent (queued), but do not wait for it
                            give_up_on_latest(self._down[i] or "")
                    wait = min(next_attempt_at, deadline) - now
                    if not outstanding:
                        time.sleep(max(wait, 0.0))
                        continue
                    answers, garbage, downs = self._receive(outstanding, wait)
                    for i, detail in garbage:
                        last_error = f"{self.servers[i]}: {detail}"
                    for rid, i, reply in answers:
                        del outstanding[rid]
                        try:
                            result = self._outcome(reply, i, parse)
                        except Unavailable as e:  # retryable: the next server, same seq
                            if rid == latest:
                                give_up_on_latest(e.last_error or "")
                            else:
                                last_error = f"{self.servers[i]}: {e.last_error}"
                            continue
                        self._preferred = i
                        return result
                    if latest is not None and latest_server in downs:
                        give_up_on_latest(downs[latest_server])
            finally:
                self._reset(set(outstanding.values()))
            if latest is not None:
                last_error = f"{self.servers[latest_server]}: no reply before the deadline"
            assert last_error is not None, "the deadline passed before any attempt"
            raise Unavailable(
                f"could not {_DOING[op]}: no server did it within {self.timeout_s:g} s "
                f"({attempts} attempt{'s' if attempts != 1 else ''}; tried {', '.join(tried)}); "
                f"last error: {last_error}",
                tried=tried,
                last_error=last_error,
            )

    def _pause(self, attempts: int) -> float:
        """0 within a round over the servers; a growing backoff after each full round."""
        n = len(self.servers)
        if attempts % n:
            return 0.0
        first, most = ROUND_BACKOFF_S
        return min(most, first * 2 ** (attempts // n - 1))

    def _outcome(self, reply: Any, i: int, parse: Callable[[Any, str], T]) -> T:
        """The result of a decoded reply, or the exception for it. A malformed reply or a
        retryable error raises ``Unavailable`` (try elsewhere); others their own type."""
        server = self.servers[i]
        try:
            if reply.get("v") != PROTOCOL_VERSION:
                raise ValueError(f"protocol version {reply.get('v')!r}, expected {PROTOCOL_VERSION}")
            if reply.get("ok") is True:
                return parse(reply.get("result"), server)
            if reply.get("ok") is not False:
                raise ValueError(f"'ok' is {reply.get('ok')!r}")
            error = _map(reply.get("error"), "error")
            code = _str(error.get("code"), "error code")
            message = _str(error.get("message", ""), "error message")
        except (KeyError, TypeError, ValueError) as e:
            detail = f"malformed reply: {type(e).__name__}: {e}"
            raise Unavailable(f"{server}: {detail}", last_error=detail, server=server) from None
        raise _error_for(code, message, server)

    def _send(self, i: int, op: str, args: dict[str, Any]) -> tuple[int | None, str | None]:
        """Send one request to server ``i``: (request id, None), or (None, why it failed)."""
        self._request_id = self._request_id % MAX_REQUEST_ID + 1
        rid = self._request_id
        payload = msgpack.packb({"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args},
                                use_bin_type=True)
        sock = self._socket(i)
        self._read_monitor(i)  # what happened to the connection since the last call
        try:
            sock.send(payload, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            # zmq.Again: the queue to a server that is down is full. Start afresh next time.
            self._reset([i])
            return None, f"cannot send: {e}"
        return rid, None

    def _receive(
        self, outstanding: Mapping[int, int], wait_s: float
    ) -> tuple[list[tuple[int, int, dict[Any, Any]]], list[tuple[int, str]], dict[int, str]]:
        """Wait up to ``wait_s`` for replies on the sockets with requests ``outstanding``.

        Returns the (request id, server index, decoded reply) of those that answer one; the
        (server index, what was wrong) of frames that are not a reply map; and, for servers that
        became unreachable meanwhile, index -> why. Replies to requests no longer outstanding are
        dropped.
        """
        poller = zmq.Poller()
        waiting = sorted(set(outstanding.values()))
        for i in waiting:
            poller.register(self._socket(i), zmq.POLLIN)
            poller.register(self._monitors[i], zmq.POLLIN)
        ready = dict(poller.poll(max(0, int(wait_s * 1000) + 1)))
        answers = []
        garbage = []
        downs = {}
        for i in waiting:
            sock = self._socket(i)
            if self._monitors[i] in ready and (why := self._read_monitor(i)) is not None:
                downs[i] = why
            if sock not in ready:
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = _decode(frames)
                if reply is None:
                    garbage.append((i, "malformed reply: not one msgpack map frame"))
                    continue
                rid = reply.get("id")
                if type(rid) is int and outstanding.get(rid) == i:
                    answers.append((rid, i, reply))
        return answers, garbage, downs

    def _read_monitor(self, i: int) -> str | None:
        """Read server ``i``'s pending connection events into ``_down[i]``; return why the
        connection failed if one of them says so (refused or lost), else None."""
        monitor = self._monitors[i]
        assert monitor is not None
        failed = None
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return failed
            if event == zmq.EVENT_CONNECTED:
                self._down[i] = None
            elif event in _FAILURES:
                self._down[i] = failed = _FAILURES[event]

    def _socket(self, i: int) -> zmq.Socket[bytes]:
        sock = self._sockets[i]
        if sock is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IPV6, 1)
            # NB: before connect(), so that no connection event is missed.
            self._monitors[i] = sock.get_monitor_socket(
                zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED
            )
            self._down[i] = None
            sock.connect(self._endpoints[i])
            self._sockets[i] = sock
        return sock

    def _reset(self, indexes: Iterable[int]) -> None:
        """Close these servers' sockets (dropping queued requests and late replies); they are
        reopened when next used."""
        for i in indexes:
            sock, monitor = self._sockets[i], self._monitors[i]
            if sock is not None:
                sock.disable_monitor()
                sock.close(linger=0)
                self._sockets[i] = None
            if monitor is not None:
                monitor.close(linger=0)
                self._monitors[i] = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Client is closed")


def _decode(frames: list[bytes]) -> dict[Any, Any] | None:
    """A reply map from a single msgpack frame, or None if it is not one."""
    if len(frames) != 1:
        return None
    try:
        reply = msgpack.unpackb(frames[0], raw=False)
    except Exception:  # NB: msgpack raises several unrelated types for garbage.
        return None
    return reply if isinstance(reply, dict) else None
