"""The replicated state machine: services, client sessions and the applied index.

``Catalogue.apply(index, data)`` applies one committed NORMAL entry and ``skip(index)`` records
any other entry; both must be called for every committed index, in order. The result of an entry
depends only on the state and the entry's bytes, so every node that applies the same log reaches
the same state (compare with ``digest()``) and gives each client the same answer.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import msgpack

from .commands import CommandError, Deregister, Register, Restore, SetHealth, decode_command, decode_envelope
from .model import Check, CheckKind, HealthStatus, Instance
from .validation import (
    CHECK_KEYS,
    ValidationError,
    validate_client_id,
    validate_instance,
    validate_instance_id,
    validate_seq,
    validate_service,
)
from .view import CatalogueView, ServiceMap

#: Sessions kept (one per client id) before the least recently used is forgotten.
#: NB: part of the state machine: every node of a cluster must use the same bound.
MAX_SESSIONS = 10_000

#: Rejected.code values; the same codes as the client protocol (docs/client-protocol.md).
INVALID = "invalid"
NOT_FOUND = "not_found"
STALE_SEQ = "stale_seq"
REJECTION_CODES = frozenset({INVALID, NOT_FOUND, STALE_SEQ})

SNAPSHOT_MAGIC = b"RCAT"
#: The snapshot format this code writes. Format 1 (before health: instances are
#: [id, address, port, tags, meta]) is still read: its instances are passing, with no check,
#: revision 0 and since 0. Format 2 instances add [check, status, since_ms, revision, output].
SNAPSHOT_FORMAT = 2
SNAPSHOT_FORMATS = (1, 2)
_HEADER_BYTES = len(SNAPSHOT_MAGIC) + 2 + 32  # magic, format (u16 big-endian), SHA-256 of the body

_by_id = attrgetter("id")


class SnapshotError(ValueError):
    """Bytes that are not an intact catalogue snapshot of a format this node reads."""


@dataclass(frozen=True, slots=True)
class Registered:
    """A register applied. A registration is the instance's whole definition: it replaces the
    address, port, tags, meta and check of the instance with the same id (as Consul's agent
    register or etcd's put), and ``previous`` is the instance it replaced, health included (None
    when ``created``).

    NB: a client's session remembers the result without ``previous``, so that a retried write
    gets the same answer from every node, including one restored from a snapshot (which does not
    hold it): the change is told once, to the write that made it."""

    instance_id: str
    created: bool  # False: an instance with this id existed and was replaced
    previous: Instance | None = None


@dataclass(frozen=True, slots=True)
class Deregistered:
    removed: tuple[str, ...]  # ids, sorted; never empty (removing nothing is Rejected(NOT_FOUND))


@dataclass(frozen=True, slots=True)
class HealthSet:
    """A SetHealth applied to the incarnation it named; ``changed``: its status was different."""

    changed: bool


@dataclass(frozen=True, slots=True)
class Rejected:
    code: str  # one of REJECTION_CODES
    message: str  # says what was wrong and, for INVALID, what is accepted


@dataclass(frozen=True, slots=True)
class Restored:
    """A committed restore: the catalogue now holds exactly these counts of the snapshot's."""

    services: int
    instances: int


Result = Registered | Deregistered | HealthSet | Restored | Rejected

#: The (service, instance_id) keys an entry changed. ``ALL_TOUCHED`` stands for every instance
#: (a Restore); test it with ``is``. ("*" is never a service name, so it cannot be a real key.)
Touched = tuple[tuple[str, str], ...]
ALL_TOUCHED: Touched = (("*", "*"),)


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one NORMAL entry, to hand to the client that sent it.

    ``client_id`` and ``seq`` are None only for an entry whose bytes do not name a client.
    ``index`` is the log index whose application produced ``result``: the entry's own index,
    except for a retried request, where it is the index of the original (Raft §8).
    ``touched``: the (service, instance_id) keys this entry added, replaced, removed or changed
    the health of, sorted; ``ALL_TOUCHED`` for an applied Restore; () when it changed nothing
    (a rejection, a retry, a SetHealth that found the status already set). The node's health
    tracker follows the catalogue with it.
    NB: ``touched`` is left out of equality: it describes this application, not the answer, so
    a retry equals the original although it touched nothing. It is never stored.
    """

    client_id: str | None
    seq: int | None
    result: Result
    index: int
    touched: Touched = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class _Session:
    """What the catalogue remembers of one client (Raft §8): its last write and that write's result."""

    seq: int
    result: Result
    result_index: int  # the index that applied `seq`
    used_index: int  # the last index that applied or answered `seq`: the LRU order


class Catalogue:
    """The service catalogue: a deterministic state machine over committed log entries.

    Performs no I/O and reads no clock; the same entries give the same state on every node.
    Call ``apply`` for every committed NORMAL entry and ``skip`` for every other committed entry,
    in index order from ``applied_index + 1``. ``apply`` never raises on bad bytes: an entry that
    does not decode or validate gives ``Rejected(INVALID)`` and changes nothing but the applied
    index. An out-of-order index is a bug in the caller and raises AssertionError.

    Sessions (Raft §8): for each client id the catalogue remembers the last applied seq and its
    result. A request with that seq again gets the remembered result without being applied
    again; an older seq gets ``Rejected(STALE_SEQ)``; a newer one is applied. At most
    ``max_sessions`` are kept; a new client beyond that evicts the one least recently used (by
    log index, so every node evicts the same one). NB: a client evicted and then retrying an old
    write would have it applied again; 10,000 sessions make that unlikely, not impossible.

    Threads: only the thread that applies calls the methods; any thread may read ``view``.
    """

    def __init__(self, *, max_sessions: int = MAX_SESSIONS) -> None:
        if type(max_sessions) is not int or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive int, got {max_sessions!r}")
        self._max_sessions = max_sessions
        # Invariant: ordered by used_index, ascending (oldest first); len <= _max_sessions;
        # every used_index <= applied_index.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        # Invariant: _view.version <= _view.applied_index. Replaced, never mutated.
        self._view = CatalogueView.empty()

    @property
    def view(self) -> CatalogueView:
        """The current immutable view. Safe from any thread: it is replaced, never mutated."""
        return self._view

    @property
    def applied_index(self) -> int:
        return self._view.applied_index

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    def last_seq(self, client_id: str) -> int | None:
        """The last seq applied for ``client_id``, or None if it has no session."""
        session = self._sessions.get(client_id)
        return None if session is None else session.seq

    def session_count(self) -> int:
        return len(self._sessions)

    # Applying entries.

    def apply(self, index: int, data: bytes) -> Applied:
        """Apply the committed NORMAL entry at ``index`` (== applied_index + 1). Never raises on bad data."""
        self._check_next(index)
        try:
            client_id, seq, body = decode_envelope(data)
        except CommandError as e:
            self._publish(index)
            return Applied(None, None, Rejected(INVALID, f"entry {index} is not a valid request: {e}"), index)
        try:
            command = decode_command(body)
        except CommandError as e:
            self._publish(index)
            return Applied(client_id, seq, Rejected(INVALID, str(e)), index)

        session = self._sessions.get(client_id)
        if session is not None and seq <= session.seq:
            if seq < session.seq:
                self._publish(index)
                message = (
                    f"seq {seq} of client {client_id!r} is older than its last applied write (seq "
                    f"{session.seq}); use a new, higher seq for a new write"
                )
                return Applied(client_id, seq, Rejected(STALE_SEQ, message), index)
            self._sessions[client_id] = _Session(session.seq, session.result, session.result_index, index)
            self._sessions.move_to_end(client_id)
            self._publish(index)
            return Applied(client_id, seq, session.result, session.result_index)

        if isinstance(command, Register):
            result, services, touched = self._register(command, index)
        elif isinstance(command, SetHealth):
            result, services, touched = self._set_health(command)
        elif isinstance(command, Restore):
            result, services, touched = self._restore(command)
        else:
            result, services, touched = self._deregister(command)
        self._remember(client_id, _Session(seq, _remembered(result), index, index))
        self._publish(index, services)
        return Applied(client_id, seq, result, index, touched)

    def skip(self, index: int) -> None:
        """Record the committed non-NORMAL entry at ``index`` (a leader's no-op, a config change)."""
        self._check_next(index)
        self._publish(index)

    def _check_next(self, index: int) -> None:
        applied = self._view.applied_index
        if type(index) is not int or index != applied + 1:
            raise AssertionError(
                f"entry {index!r} offered after index {applied}: entries must be applied in order, each once"
            )

    def _publish(self, index: int, services: ServiceMap | None = None) -> None:
        # One reference assignment: a reader sees the old view or the new one, never a mix.
        view = self._view
        if services is None:
            self._view = CatalogueView(applied_index=index, version=view.version, services=view.services)
        else:
            self._view = CatalogueView(applied_index=index, version=index, services=services)

    def _remember(self, client_id: str, session: _Session) -> None:
        sessions = self._sessions
        if client_id in sessions:
            sessions[client_id] = session
            sessions.move_to_end(client_id)
            return
        if len(sessions) >= self._max_sessions:
            sessions.popitem(last=False)  # the least recently used: the smallest used_index
        sessions[client_id] = session

    def _register(self, command: Register, index: int) -> _Change:
        """Upsert by id: a new incarnation (revision ``index``), passing since ``at_ms``.

        NB: even an identical definition is replaced (the view's version moves): the new revision
        is what makes a late health command for the previous incarnation change nothing.
        NB: a Register written by the previous version (no ``at_ms``, no check) gets revision 0,
        as a format-1 snapshot's instances do; otherwise a node that replays such an entry and a
        node that restored a format-1 snapshot covering it would hold different instances. Every
        node of this version stamps ``at_ms``, and only checked instances are named by revision.
        """
        assert command.instance_id is not None
        legacy = not command.at_ms and command.check is None
        new = Instance(
            id=command.instance_id,
            service=command.service,
            address=command.address,
            port=command.port,
            tags=command.tags,
            meta=command.meta,
            check=command.check,
            status=HealthStatus.PASSING,
            since_ms=command.at_ms,
            revision=0 if legacy else index,
        )
        services = self._view.services
        instances = services.get(command.service, ())
        i = bisect_left(instances, new.id, key=_by_id)
        touched = ((command.service, new.id),)
        if i < len(instances) and instances[i].id == new.id:
            updated = instances[:i] + (new,) + instances[i + 1 :]
            result = Registered(new.id, created=False, previous=instances[i])
            return result, services.with_instances(command.service, updated), touched
        updated = instances[:i] + (new,) + instances[i:]
        return Registered(new.id, created=True), services.with_instances(command.service, updated), touched

    def _find(self, service: str, instance_id: str, revision: int) -> tuple[tuple[Instance, ...], int] | Rejected:
        """(the service's instances, the position of the one with this id and revision), or why not."""
        instances = self._view.services.get(service, ())
        i = bisect_left(instances, instance_id, key=_by_id)
        if i == len(instances) or instances[i].id != instance_id:
            return Rejected(NOT_FOUND, f"service {service!r} has no instance with id {instance_id!r}")
        if instances[i].revision != revision:
            return Rejected(
                NOT_FOUND,
                f"instance {instance_id!r} of service {service!r} was registered again (revision "
                f"{instances[i].revision}) since revision {revision}",
            )
        return instances, i

    def _set_health(self, command: SetHealth) -> _Change:
        """Change one incarnation's status; the same copy as a register (one instance replaced)."""
        found = self._find(command.service, command.instance_id, command.revision)
        if isinstance(found, Rejected):
            return found, None, ()
        instances, i = found
        old = instances[i]
        if old.status is command.status:
            return HealthSet(changed=False), None, ()
        new = Instance(
            id=old.id, service=old.service, address=old.address, port=old.port, tags=old.tags, meta=old.meta,
            check=old.check, status=command.status, since_ms=command.at_ms, revision=old.revision,
            output=command.output,
        )  # fmt: skip
        updated = instances[:i] + (new,) + instances[i + 1 :]
        touched = ((command.service, old.id),)
        return HealthSet(changed=True), self._view.services.with_instances(command.service, updated), touched

    def _deregister(self, command: Deregister) -> _Change:
        services = self._view.services
        if command.revision is not None:
            assert command.instance_id is not None
            found = self._find(command.service, command.instance_id, command.revision)
            if isinstance(found, Rejected):
                return found, None, ()
            instances, i = found
            kept = instances[:i] + instances[i + 1 :]
            touched = ((command.service, command.instance_id),)
            return Deregistered((command.instance_id,)), services.with_instances(command.service, kept), touched
        instances = services.get(command.service, ())
        if command.instance_id is not None:
            kept = tuple(i for i in instances if i.id != command.instance_id)
            where = f"with id {command.instance_id!r}"
        else:
            kept = tuple(i for i in instances if i.address != command.address or i.port != command.port)
            host = f"[{command.address}]" if ":" in (command.address or "") else command.address
            where = f"at {host}:{command.port}"
        if len(kept) == len(instances):
            return Rejected(NOT_FOUND, f"service {command.service!r} has no instance {where}"), None, ()
        kept_ids = {i.id for i in kept}
        removed = tuple(i.id for i in instances if i.id not in kept_ids)
        touched = tuple((command.service, i) for i in removed)
        return Deregistered(removed), services.with_instances(command.service, kept), touched

    def _restore(self, command: Restore) -> _Change:
        """Take the services of the snapshot in ``command``; keep this catalogue's sessions.

        NB: sessions are deliberately NOT taken from the snapshot. A session says which writes of
        a client this log has already applied (Raft §8). A client whose write was applied before
        the restore, and which retries it after (its reply was lost), must get the remembered
        result, not have the write applied again on top of the restored state; and the
        snapshot's older sessions would make such retries look new. The restore itself is one
        more write of the operator's client, remembered like any other. The snapshot's own
        applied index and version are ignored too: the view's version becomes this entry's index.
        """
        try:
            view, _ = _parse_snapshot(command.snapshot, self._max_sessions)
        except SnapshotError as e:
            return Rejected(INVALID, f"cannot restore: {e}"), None, ()
        services = view.services
        result = Restored(len(services), sum(len(instances) for instances in services.values()))
        if services == self._view.services:
            return result, None, ()  # the same content: the version (DNS caches) stays
        return result, services, ALL_TOUCHED

    # Comparing and snapshotting.

    def digest(self) -> str:
        """SHA-256 (hex) of the whole state: services, sessions, applied index and version.

        Equal on two catalogues exactly when their snapshots are equal, whatever route (applied
        entries or restored snapshot) led there.
        """
        return hashlib.sha256(self._body()).hexdigest()

    def to_bytes(self) -> bytes:
        """A full snapshot: magic ``RCAT``, format (u16 big-endian), SHA-256 of the body, body.

        The body is canonical msgpack (services by name, instances by id, sessions oldest first),
        so equal states give equal bytes.
        """
        body = self._body()
        return SNAPSHOT_MAGIC + SNAPSHOT_FORMAT.to_bytes(2, "big") + hashlib.sha256(body).digest() + body

    @classmethod
    def from_bytes(cls, data: bytes, *, max_sessions: int = MAX_SESSIONS) -> Catalogue:
        """A catalogue restored from ``to_bytes()``. Raises SnapshotError for anything else."""
        catalogue = cls(max_sessions=max_sessions)
        catalogue.restore(data)
        return catalogue

    def restore(self, data: bytes) -> None:
        """Replace the whole state by the snapshot ``data`` and publish its view.

        The snapshot is checked completely before anything changes: on SnapshotError the
        catalogue is as it was.
        """
        view, sessions = _parse_snapshot(data, self._max_sessions)
        self._sessions = sessions
        self._view = view

    def _body(self) -> bytes:
        view = self._view
        services = [[name, [_encode_instance(i) for i in view.services[name]]] for name in view.services.names()]
        sessions = [
            [client_id, s.seq, s.used_index, s.result_index, _encode_result(s.result)]
            for client_id, s in self._sessions.items()
        ]
        return msgpack.packb([view.applied_index, view.version, services, sessions], use_bin_type=True)


_Change = tuple[Result, ServiceMap | None, Touched]  # the result, the new services (None: unchanged), touched


def _encode_instance(i: Instance) -> list[Any]:
    """An instance in a format-2 snapshot (services name it; the check as a list of CHECK_KEYS values)."""
    check = i.check
    raw_check = None if check is None else [
        check.kind.value, check.ttl_ms, check.url, check.interval_ms, check.timeout_ms, check.failures,
        check.successes, check.deregister_after_ms,
    ]  # fmt: skip
    return [i.id, i.address, i.port, list(i.tags), [list(p) for p in i.meta], raw_check, i.status.value,
            i.since_ms, i.revision, i.output]


def _decode_instance(raw: Any, service: str, snapshot_format: int) -> Instance:
    """An instance from a snapshot of ``snapshot_format``, checked for shape only (the caller validates)."""
    if snapshot_format == 1:
        _check(_is_list(raw, 5) and _is_list(raw[3]) and _is_list(raw[4]),
               "an instance is [id, address, port, tags, meta]")
        return Instance(raw[0], service, raw[1], raw[2], tuple(raw[3]), tuple(_pair(p) for p in raw[4]))
    _check(_is_list(raw, 10) and _is_list(raw[3]) and _is_list(raw[4]),
           "an instance is [id, address, port, tags, meta, check, status, since_ms, revision, output]")
    raw_check, status = raw[5], raw[6]
    check = None
    if raw_check is not None:
        _check(_is_list(raw_check, len(CHECK_KEYS)), f"a check is [{', '.join(CHECK_KEYS)}]")
        kind = _CHECK_KINDS.get(raw_check[0])
        _check(kind is not None, f"unknown check kind {raw_check[0]!r}")
        check = Check(kind, *raw_check[1:])  # type: ignore[arg-type]
    _check(status in _STATUSES, f"unknown health status {status!r}")
    return Instance(
        raw[0], service, raw[1], raw[2], tuple(raw[3]), tuple(_pair(p) for p in raw[4]), check, _STATUSES[status],
        raw[7], raw[8], raw[9],
    )  # fmt: skip


def _pair(raw: Any) -> Any:
    return tuple(raw) if _is_list(raw, 2) else raw


_CHECK_KINDS = {kind.value: kind for kind in CheckKind}
_STATUSES = {status.value: status for status in HealthStatus}


def _remembered(result: Result) -> Result:
    """What a session keeps of a result: all of it but a registration's ``previous``."""
    if isinstance(result, Registered) and result.previous is not None:
        return Registered(result.instance_id, result.created)
    return result


def _encode_result(result: Result) -> list[Any]:
    if isinstance(result, Registered):
        return ["registered", result.instance_id, result.created]
    if isinstance(result, Deregistered):
        return ["deregistered", list(result.removed)]
    if isinstance(result, Restored):
        return ["restored", result.services, result.instances]
    if isinstance(result, HealthSet):
        return ["health_set", result.changed]
    return ["rejected", result.code, result.message]


# Reading snapshots: every field is checked, and must already be in canonical form.


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SnapshotError(f"corrupt catalogue snapshot: {message}")


def _is_int(value: object, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _is_list(value: object, length: int | None = None) -> bool:
    return type(value) is list and (length is None or len(value) == length)


def check_snapshot_envelope(data: bytes) -> None:
    """Check a snapshot's header (a format in SNAPSHOT_FORMATS) and SHA-256 checksum only (fast:
    nothing is parsed).

    Raises SnapshotError. A snapshot that passes may still be refused by ``restore``, which
    checks every field; this lets a caller turn away damaged or foreign bytes cheaply.
    """
    _snapshot_body(data)


def _snapshot_body(data: bytes) -> tuple[int, memoryview]:
    """(format, the checked body) of a snapshot, without copying it (a snapshot can be tens of MB)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER_BYTES or not data.startswith(SNAPSHOT_MAGIC):
        raise SnapshotError("not a catalogue snapshot (no RCAT header)")
    version = int.from_bytes(data[4:6], "big")
    if version not in SNAPSHOT_FORMATS:
        raise SnapshotError(
            f"unsupported catalogue snapshot format {version}; this node reads formats "
            f"{', '.join(map(str, SNAPSHOT_FORMATS))}"
        )
    body = memoryview(data)[_HEADER_BYTES:]
    if hashlib.sha256(body).digest() != data[6:_HEADER_BYTES]:
        raise SnapshotError("catalogue snapshot checksum mismatch: the snapshot is corrupt or truncated")
    return version, body


def _parse_snapshot(data: bytes, max_sessions: int) -> tuple[CatalogueView, OrderedDict[str, _Session]]:
    snapshot_format, body = _snapshot_body(data)
    try:
        state = msgpack.unpackb(body, raw=False, strict_map_key=True)
        return _parse_state(state, max_sessions, snapshot_format)
    except SnapshotError:
        raise
    except (ValidationError, ValueError, TypeError, IndexError, KeyError) as e:
        raise SnapshotError(f"corrupt catalogue snapshot: {type(e).__name__}: {e}") from e


def _parse_state(
    state: object, max_sessions: int, snapshot_format: int
) -> tuple[CatalogueView, OrderedDict[str, _Session]]:
    _check(_is_list(state, 4), "expected [applied_index, version, services, sessions]")
    applied_index, version, raw_services, raw_sessions = state  # type: ignore[misc]
    _check(_is_int(applied_index), "applied_index is not a non-negative int")
    _check(_is_int(version) and version <= applied_index, "version is not an int <= applied_index")
    _check(_is_list(raw_services) and _is_list(raw_sessions), "services and sessions must be lists")

    services: list[tuple[str, tuple[Instance, ...]]] = []
    for item in raw_services:
        _check(_is_list(item, 2) and _is_list(item[1]) and len(item[1]) > 0, "a service is [name, [instance, ...]]")
        name, raw_instances = item
        _check(validate_service(name) == name, f"service name {name!r} is not canonical")
        _check(not services or services[-1][0] < name, "services are not sorted by name")
        instances: list[Instance] = []
        for raw in raw_instances:
            instance = _decode_instance(raw, name, snapshot_format)
            _check(validate_instance(instance) == instance, f"instance {raw[0]!r} of {name!r} is not canonical")
            _check(not instances or instances[-1].id < instance.id, f"instances of {name!r} are not sorted by id")
            instances.append(instance)
        services.append((name, tuple(instances)))

    _check(len(raw_sessions) <= max_sessions, f"{len(raw_sessions)} sessions, more than max_sessions={max_sessions}")
    sessions: OrderedDict[str, _Session] = OrderedDict()
    last_used = 0
    for item in raw_sessions:
        _check(_is_list(item, 5), "a session is [client_id, seq, used_index, result_index, result]")
        client_id, seq, used_index, result_index, raw_result = item
        validate_client_id(client_id)
        validate_seq(seq)
        _check(client_id not in sessions, f"client {client_id!r} has two sessions")
        _check(_is_int(used_index, 1) and last_used < used_index <= applied_index, "sessions are not in LRU order")
        _check(_is_int(result_index, 1) and result_index <= used_index, "a session's result_index is after its use")
        sessions[client_id] = _Session(seq, _decode_result(raw_result), result_index, used_index)
        last_used = used_index

    view = CatalogueView(applied_index=applied_index, version=version, services=ServiceMap.from_items(services))
    return view, sessions


def _decode_result(raw: object) -> Result:
    _check(_is_list(raw) and len(raw) >= 1, "a result is [kind, ...]")
    kind = raw[0]  # type: ignore[index]
    if kind == "registered":
        _check(_is_list(raw, 3) and type(raw[2]) is bool, "a registered result is [kind, id, created]")
        return Registered(validate_instance_id(raw[1]), raw[2])
    if kind == "deregistered":
        _check(_is_list(raw, 2) and _is_list(raw[1]) and len(raw[1]) > 0, "a deregistered result is [kind, [id, ...]]")
        return Deregistered(tuple(validate_instance_id(i) for i in raw[1]))
    if kind == "health_set":
        _check(_is_list(raw, 2) and type(raw[1]) is bool, "a health_set result is [kind, changed]")
        return HealthSet(raw[1])
    if kind == "restored":
        _check(_is_list(raw, 3) and _is_int(raw[1]) and _is_int(raw[2]),
               "a restored result is [kind, services, instances]")
        return Restored(raw[1], raw[2])
    _check(kind == "rejected" and _is_list(raw, 3), f"unknown result {kind!r}")
    _check(raw[1] in REJECTION_CODES and type(raw[2]) is str, "a rejected result is [kind, code, message]")
    return Rejected(raw[1], raw[2])
