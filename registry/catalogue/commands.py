"""The catalogue's commands and their log encoding.

A client write becomes a ``Request(client_id, seq, command)``; ``encode_request`` turns it into
the bytes of a NORMAL log entry and ``decode_request`` reads them back. Commands validate and
normalise their fields when constructed (raising ``ValidationError``), so a command that exists
is valid, and the node can refuse a bad write before proposing it.

Encoding (version 1): one msgpack map with string keys, strings as UTF-8 ``str``:

    {"v": 1, "client": str, "seq": int, "op": "register",
     "service": str, "address": str, "port": int, "id": str, "tags": [str], "meta": {str: str},
     ["check": {"kind": str, "ttl_ms": int, "url": str, "interval_ms": int, "timeout_ms": int,
                "failures": int, "successes": int, "deregister_after_ms": int}], ["at": int]}
    {"v": 1, "client": str, "seq": int, "op": "deregister",
     "service": str, ("id": str, ["rev": int] | "address": str, "port": int)}
    {"v": 1, "client": str, "seq": int, "op": "set_health",
     "service": str, "id": str, "rev": int, "status": "passing" | "critical", "at": int, ["output": str]}
    {"v": 1, "client": str, "seq": int, "op": "restore", "snapshot": bin}

Keys in [brackets] are written only when they differ from the default (no check, ``at`` 0, no
``rev``, ``output`` ""), so a command without health fields has exactly the bytes the version
before health wrote, and every entry that version wrote decodes as it did.

``restore``'s ``snapshot`` is a whole catalogue snapshot (``Catalogue.to_bytes()``, the only
byte string in the encoding); the state machine checks it completely when it applies the entry.
NB: a node older than ``restore`` refuses the op (Rejected) while newer nodes apply it: do not
restore while nodes of different versions share a cluster. The same holds for the health keys
and ``set_health`` (issue 14): a node without them refuses such entries, so upgrade every node
before registering checks.

``decode_request`` accepts only that: an unknown version, an unknown or missing key, a duplicate
key, a wrong type or a refused value raises ``CommandError``. It never uses pickle or eval.
NB: unknown keys are refused rather than ignored: a field that a newer node understands and an
older node ignored would make their catalogues differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from .model import Check, HealthStatus
from .validation import (
    CHECK_KEYS,
    INSTANCE_ID_MAX,
    RESTORE_MAX_BYTES,
    ValidationError,
    brief_repr,
    check_to_map,
    validate_address,
    validate_check,
    validate_client_id,
    validate_instance_id,
    validate_meta,
    validate_output,
    validate_port,
    validate_revision,
    validate_seq,
    validate_service,
    validate_status,
    validate_tags,
    validate_time_ms,
)

#: The command encoding version this code writes and reads.
VERSION = 1


#: The largest catalogue snapshot a ``Restore`` carries (see validation.RESTORE_MAX_BYTES).
MAX_RESTORE_BYTES = RESTORE_MAX_BYTES


class CommandError(ValueError):
    """Bytes that are not a well-formed, valid request of a version this node reads."""


def default_instance_id(service: str, address: str, port: int) -> str:
    """The instance id used when a registration names none: ``SERVICE-ADDRESS-PORT``.

    Built from the canonical (validated) values, so ``("WEB", "10.0.0.5", 8080)`` gives
    ``"web-10.0.0.5-8080"``. An IPv6 address has its colons written as underscores
    (``2001:db8::1`` -> ``"web-2001_db8__1-8080"``): a colon is not allowed in ids, and since
    IPv4 addresses and host names never contain ``_``, different addresses never give the same
    id. An id longer than 128 characters (only possible with long host names) is cut and ends in
    16 hex digits of a BLAKE2b hash of the full text. Raises ValidationError.
    """
    service = validate_service(service)
    address = validate_address(address)
    port = validate_port(port)
    text = f"{service}-{address.replace(':', '_')}-{port}"
    if len(text) <= INSTANCE_ID_MAX:
        return text
    digest = hashlib.blake2b(text.encode("ascii"), digest_size=8).hexdigest()
    return f"{text[: INSTANCE_ID_MAX - len(digest) - 1]}-{digest}"


@dataclass(frozen=True, slots=True)
class Register:
    """Add an instance to a service, or replace the one with the same id (an upsert).

    Construction validates and normalises (raises ValidationError): ``service`` lowercase,
    ``address`` normalised, ``tags`` sorted lowercase unique, ``meta`` (a mapping or pairs) as
    pairs sorted by key, and ``instance_id`` None replaced by ``default_instance_id(...)``; after
    construction ``instance_id`` is always a str. ``check`` (a Check, or its map form) is
    validated by ``validate_check``; ``at_ms`` is the proposing node's wall clock (ms), which
    becomes the instance's ``since_ms``. Applied, it makes the instance PASSING with ``revision``
    the entry's log index, even when it replaces an identical definition: a registration is a
    new incarnation, and health commands for the one before change nothing.
    """

    service: str
    address: str
    port: int
    instance_id: str | None = None
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    check: Check | None = None
    at_ms: int = 0

    def __post_init__(self) -> None:
        service = validate_service(self.service)
        address = validate_address(self.address)
        port = validate_port(self.port)
        if self.instance_id is None:
            instance_id = default_instance_id(service, address, port)
        else:
            instance_id = validate_instance_id(self.instance_id)
        for name, value in (
            ("service", service),
            ("address", address),
            ("port", port),
            ("instance_id", instance_id),
            ("tags", validate_tags(self.tags)),
            ("meta", validate_meta(self.meta)),
            ("check", None if self.check is None else validate_check(self.check)),
            ("at_ms", validate_time_ms(self.at_ms)),
        ):
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class Deregister:
    """Remove one instance of a service by id, or every instance with this address and port.

    Give exactly one of: ``instance_id``, or ``address`` with ``port``. Construction validates
    and normalises as Register does (raises ValidationError). ``revision`` (only with
    ``instance_id``) removes the instance only if it is still that incarnation (the leader's
    expiry of a critical instance), else the result is ``Rejected(NOT_FOUND)``.
    """

    service: str
    instance_id: str | None = None
    address: str | None = None
    port: int | None = None
    revision: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "service", validate_service(self.service))
        by_id = self.instance_id is not None
        by_endpoint = self.address is not None or self.port is not None
        if by_id == by_endpoint or (by_endpoint and (self.address is None or self.port is None)):
            raise ValidationError(
                "deregister", "deregister needs either instance_id, or address and port (not both, not neither)"
            )
        if by_id:
            object.__setattr__(self, "instance_id", validate_instance_id(self.instance_id))
        else:
            object.__setattr__(self, "address", validate_address(self.address))
            object.__setattr__(self, "port", validate_port(self.port))
        if self.revision is not None:
            if not by_id:
                raise ValidationError(
                    "revision", "deregister by revision needs instance_id (a revision names one instance's incarnation)"
                )
            object.__setattr__(self, "revision", validate_revision(self.revision))


@dataclass(frozen=True, slots=True)
class SetHealth:
    """Set the health of one incarnation of an instance: the leader's transition (issue 14).

    Applied only if the instance exists with this ``revision`` (else ``Rejected(NOT_FOUND)``:
    it was deregistered or registered again since). If ``status`` differs from the instance's,
    its status, ``since_ms`` (= ``at_ms``, the leader's wall clock) and ``output`` (why, at most
    256 characters) change; otherwise nothing does. Construction validates (raises
    ValidationError); ``status`` may be given as its text.
    """

    service: str
    instance_id: str
    revision: int
    status: HealthStatus
    at_ms: int
    output: str = ""

    def __post_init__(self) -> None:
        for name, value in (
            ("service", validate_service(self.service)),
            ("instance_id", validate_instance_id(self.instance_id)),
            ("revision", validate_revision(self.revision)),
            ("status", validate_status(self.status)),
            ("at_ms", validate_time_ms(self.at_ms)),
            ("output", validate_output(self.output)),
        ):
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class Restore:
    """Replace every service and instance by those of a catalogue snapshot (``Catalogue.to_bytes()``).

    Construction checks only the type and size (raises ValidationError); the snapshot's content
    is checked completely by the catalogue when it applies the entry, so that every node judges
    it the same way (a bad one is ``Rejected(INVALID)``). ``repr`` shows the size, not the bytes.
    """

    snapshot: bytes

    def __post_init__(self) -> None:
        data = self.snapshot
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValidationError("snapshot", f"snapshot must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not 0 < len(data) <= MAX_RESTORE_BYTES:
            raise ValidationError(
                "snapshot", f"a snapshot to restore holds 1 to {MAX_RESTORE_BYTES} bytes, got {len(data)}"
            )
        object.__setattr__(self, "snapshot", data)

    def __repr__(self) -> str:
        return f"Restore(<{len(self.snapshot)} bytes>)"


Command = Register | Deregister | SetHealth | Restore


@dataclass(frozen=True, slots=True)
class Request:
    """One client write: ``command`` sent by ``client_id`` as its write number ``seq`` (Raft §8).

    A retry of the same write reuses ``seq``; the catalogue applies each (client_id, seq) at most
    once. Construction validates (raises ValidationError).
    """

    client_id: str
    seq: int
    command: Command

    def __post_init__(self) -> None:
        validate_client_id(self.client_id)
        validate_seq(self.seq)
        if not isinstance(self.command, (Register, Deregister, SetHealth, Restore)):
            raise ValidationError(
                "command",
                "command must be a Register, a Deregister, a SetHealth or a Restore, "
                f"got {type(self.command).__name__}",
            )


def encode_request(request: Request) -> bytes:
    """The bytes of a NORMAL log entry carrying ``request`` (deterministic for equal requests)."""
    command = request.command
    body: dict[str, Any] = {"v": VERSION, "client": request.client_id, "seq": request.seq}
    if isinstance(command, Register):
        body.update(
            op="register",
            service=command.service,
            address=command.address,
            port=command.port,
            id=command.instance_id,
            tags=list(command.tags),
            meta=dict(command.meta),
        )
        if command.check is not None:
            body["check"] = check_to_map(command.check)
        if command.at_ms:
            body["at"] = command.at_ms
    elif isinstance(command, SetHealth):
        body.update(
            op="set_health",
            service=command.service,
            id=command.instance_id,
            rev=command.revision,
            status=command.status.value,
            at=command.at_ms,
        )
        if command.output:
            body["output"] = command.output
    elif isinstance(command, Restore):
        body.update(op="restore", snapshot=command.snapshot)
    else:
        body.update(op="deregister", service=command.service)
        if command.instance_id is not None:
            body["id"] = command.instance_id
            if command.revision is not None:
                body["rev"] = command.revision
        else:
            body.update(address=command.address, port=command.port)
    return msgpack.packb(body, use_bin_type=True)


def decode_request(data: bytes) -> Request:
    """The request in a log entry's bytes. Raises CommandError, never anything else, on bad bytes."""
    client_id, seq, body = decode_envelope(data)
    return Request(client_id, seq, decode_command(body))


_ENVELOPE_KEYS = frozenset({"v", "client", "seq", "op"})
_OPS = {
    "register": (frozenset({"service", "address", "port"}), frozenset({"id", "tags", "meta", "check", "at"})),
    "deregister": (frozenset({"service"}), frozenset({"id", "address", "port", "rev"})),
    "set_health": (frozenset({"service", "id", "rev", "status", "at"}), frozenset({"output"})),
    "restore": (frozenset({"snapshot"}), frozenset()),
}


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a map has a duplicate key")
    return result


def decode_envelope(data: bytes) -> tuple[str, int, dict[str, Any]]:
    """(client_id, seq, the whole decoded map): the part of an entry that names who sent it.

    Exposed so that the catalogue can name the client of an entry whose command is refused.
    Raises CommandError.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CommandError(f"an entry must be bytes, got {type(data).__name__}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=_unique_keys)
    except Exception as e:  # NB: msgpack raises several types on bad input; any of them means "not a request"
        raise CommandError(f"not a msgpack request: {type(e).__name__}: {e}") from None
    if type(body) is not dict:
        raise CommandError(f"a request is a msgpack map, got {type(body).__name__}")
    if any(type(key) is not str for key in body):
        raise CommandError("a request's keys must be strings")
    missing = _ENVELOPE_KEYS - body.keys()
    if missing:
        raise CommandError(f"request lacks {sorted(missing)}")
    version = body["v"]
    if type(version) is not int or version != VERSION:
        raise CommandError(
            f"unsupported command encoding version {brief_repr(version)}; this node reads version {VERSION}"
        )
    try:
        client_id = validate_client_id(body["client"])
        seq = validate_seq(body["seq"])
    except ValidationError as e:
        raise CommandError(str(e)) from e
    return client_id, seq, body


def decode_command(body: Mapping[str, Any]) -> Command:
    """The command in a map returned by ``decode_envelope``. Raises CommandError."""
    op = body["op"]
    if type(op) is not str or op not in _OPS:
        raise CommandError(f"unknown op {brief_repr(op)}; expected one of {sorted(_OPS)}")
    required, optional = _OPS[op]
    args = {k: v for k, v in body.items() if k not in _ENVELOPE_KEYS}
    missing = required - args.keys()
    if missing:
        raise CommandError(f"{op} lacks {sorted(missing)}")
    unknown = args.keys() - required - optional
    if unknown:
        raise CommandError(f"{op} has unknown keys {sorted(unknown)}; accepted: {sorted(required | optional)}")
    try:
        if op == "register":
            return Register(
                service=args["service"],
                address=args["address"],
                port=args["port"],
                instance_id=args.get("id"),
                tags=args.get("tags", ()),
                meta=args.get("meta", ()),
                check=_check_map(args["check"]) if "check" in args else None,
                at_ms=args.get("at", 0),
            )
        if op == "set_health":
            if type(args["status"]) is not str:
                raise ValidationError("status", f"set_health's status must be a string, got {brief_repr(args['status'])}")
            return SetHealth(
                service=args["service"],
                instance_id=args["id"],
                revision=args["rev"],
                status=args["status"],
                at_ms=args["at"],
                output=args.get("output", ""),
            )
        if op == "restore":
            if type(args["snapshot"]) is not bytes:
                kind = type(args["snapshot"]).__name__
                raise ValidationError("snapshot", f"restore's snapshot must be bytes, got {kind}")
            return Restore(args["snapshot"])
        return Deregister(
            service=args["service"],
            instance_id=args.get("id"),
            address=args.get("address"),
            port=args.get("port"),
            revision=args.get("rev"),
        )
    except ValidationError as e:
        raise CommandError(str(e)) from e


def _check_map(value: Any) -> Check:
    """The ``check`` of a register entry: exactly the map ``check_to_map`` writes."""
    if type(value) is not dict or value.keys() != set(CHECK_KEYS):
        raise ValidationError("check", f"register's check must be a map with exactly {list(CHECK_KEYS)}, "
                              f"got {brief_repr(value)}")
    return validate_check(value)
