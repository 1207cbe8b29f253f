"""The wire format of peer messages: one version byte, then one msgpack array.

    frame   = WIRE_VERSION (1 byte) || msgpack([tag, field_1, ..., field_n])
    tag     = the message type's position in raft.MESSAGE_TYPES, or FORWARD_TAG / FORWARD_OP_TAG for
              Forward (a write / another operation, which travels as a field)
    fields  = every dataclass field, in declaration order (defaults included)
    entries = an array of [term, index, kind, data] arrays
    meta    = [index, term, [voter ids], [learner ids]] (a snapshot's metadata)

Ids, terms, indexes and counters are msgpack ints in [0, 2**63); flags are msgpack booleans;
byte strings are msgpack bin (use_bin_type). `decode` trusts nothing: it checks the version, the
tag, the field count and the exact type and range of every field, and raises CodecError (with
the type and field at fault) for anything else. It only validates the *shape*: whether a message
makes sense (contiguous entries, a plausible term) is the core's business (RemoteError).
`encode` trusts its input (messages the core built) and does not re-check field values: a
wrong one shows up as a CodecError at the receiver.

NB: the tags are MESSAGE_TYPES positions, so reordering that tuple changes the wire format;
tests/transport/test_codec.py pins the bytes of every type so that such a change cannot go
unnoticed. Adding a field to a message type changes the format too (the field count is
checked): either is a new WIRE_VERSION. Forward's tags are far above the positions, so new core
message types can be appended without colliding with them.

NB: a Forward of an ordinary write keeps the first version's 3-field frame under FORWARD_TAG, so
nodes of the previous version and this one forward writes to each other during a rolling
upgrade; only other operations (a restore) use FORWARD_OP_TAG, whose frame carries `op`.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NoReturn, TypeAlias

import msgpack

from registry.raft import MESSAGE_TYPES, Entry, EntryKind, Index, Membership, Message, NodeId, SnapshotMeta, Term

__all__ = ["FORWARD_OP_TAG", "FORWARD_TAG", "WIRE_VERSION", "CodecError", "Forward", "ForwardOp", "Wire", "decode",
           "encode"]

WIRE_VERSION = 1
#: Forward's tag: far above the MESSAGE_TYPES positions (0..8 today), which may grow.
FORWARD_TAG = 64
#: A Forward whose `op` is not WRITE.
FORWARD_OP_TAG = 65

_U63_MAX = (1 << 63) - 1


class CodecError(ValueError):
    """Bytes from a peer that are not a valid frame; the message says which part is wrong."""


class ForwardOp(enum.IntEnum):
    """What a forwarded proposal is, so the leader bounds it without looking inside `payload`."""

    WRITE = 0  # a client's register or deregister
    RESTORE = 1  # an operator's snapshot restore: a whole catalogue, far larger than a write
    # NB: sent by new nodes only to a leader that never answered PASS (an old one, during a
    # rolling upgrade); a leader still takes it from old followers (registry/node/renewals.py).
    HEARTBEAT = 2  # one TTL renewal the follower confirmed itself, for the leader's tracker
    PASS = 3  # a follower's batch of TTL renewals for the leader to confirm and answer: never proposed
    PASS_REPLY = 4  # the leader's answers to a PASS batch, one per renewal
    # NB: a node that does not know an op drops the frame as malformed, so values are never
    # reused for something else.
    TRANSFER = 5  # follower -> leader: a client's `leader_transfer` (registry/node/transfer.py); never proposed
    TRANSFER_REPLY = 6  # leader -> the follower that forwarded a TRANSFER: how it ended
    MEMBERS = 7  # follower -> leader: a client's `members` (registry/node/member_view.py); never proposed
    MEMBERS_REPLY = 8  # leader -> the follower that forwarded a MEMBERS: the leader's view of the members


@dataclass(frozen=True, slots=True)
class Forward:
    """Follower -> leader: a client write (`payload`, opaque here) forwarded to the leader, or
    another request `op` names (a renewal, a leadership transfer), or the leader's answer to one
    (TRANSFER_REPLY, leader -> follower).

    It travels on the Raft connections but is not a Raft message: the node loop, not the core,
    handles it (it proposes `payload` on the leader, or hands it to the room that owns `op`)."""

    source: NodeId
    target: NodeId
    payload: bytes
    op: ForwardOp = ForwardOp.WRITE


@dataclass(frozen=True, slots=True)
class _ForwardWrite:
    """The wire shape of a Forward of a WRITE (the first version's frame)."""

    source: NodeId
    target: NodeId
    payload: bytes


Wire: TypeAlias = Message | Forward

# Field kinds. A field's kind comes from its annotation (a string: the core's modules use
# `from __future__ import annotations`); an unknown annotation fails at import, so a new field
# type in the core cannot slip onto the wire unvalidated.
_U63, _BOOL, _BYTES, _ENTRIES, _META = 0, 1, 2, 3, 4
_KIND_OF_ANNOTATION = {
    "int": _U63, "NodeId": _U63, "Term": _U63, "Index": _U63,
    "bool": _BOOL,
    "bytes": _BYTES,
    "ForwardOp": _U63,
    "tuple[Entry, ...]": _ENTRIES,
    "SnapshotMeta": _META,
}  # fmt: skip
_KIND_NAMES = {_U63: "an int in [0, 2**63)", _BOOL: "a bool", _BYTES: "bytes", _ENTRIES: "an array of entries",
               _META: "[index, term, [voters], [learners]]"}
_MAX_MEMBERS = 1024
_ENTRY_KINDS: dict[int, EntryKind] = {int(k): k for k in EntryKind}


@dataclass(frozen=True, slots=True)
class _Spec:
    tag: int
    cls: type
    name: str  # in error messages
    names: tuple[str, ...]
    kinds: tuple[int, ...]
    get: Callable[[Any], tuple[Any, ...]]  # all fields at once, in order
    # Positions in the decoded array [tag, *fields] of the fields of each kind (-1: no entries).
    u63_at: tuple[int, ...]
    bool_at: tuple[int, ...]
    bytes_at: tuple[int, ...]
    entries_at: int
    meta_at: int


def _spec(tag: int, cls: type) -> _Spec:
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    kinds = []
    for f in fields:
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        if annotation not in _KIND_OF_ANNOTATION:
            raise TypeError(f"codec: {cls.__name__}.{f.name} has a type the wire format lacks: {annotation}")
        kinds.append(_KIND_OF_ANNOTATION[annotation])
    assert names[:2] == ("source", "target"), f"{cls.__name__} must start with source, target"
    at = {kind: tuple(i for i, k in enumerate(kinds, 1) if k == kind)
          for kind in (_U63, _BOOL, _BYTES, _ENTRIES, _META)}
    assert len(at[_ENTRIES]) <= 1, f"{cls.__name__}: at most one entries field"
    assert len(at[_META]) <= 1, f"{cls.__name__}: at most one snapshot meta field"
    name = "Forward" if cls is _ForwardWrite else cls.__name__
    return _Spec(tag, cls, name, names, tuple(kinds), attrgetter(*names), at[_U63], at[_BOOL], at[_BYTES],
                 at[_ENTRIES][0] if at[_ENTRIES] else -1, at[_META][0] if at[_META] else -1)


_SPECS = [_spec(tag, cls) for tag, cls in enumerate(MESSAGE_TYPES)] + [_spec(FORWARD_TAG, _ForwardWrite),
                                                                      _spec(FORWARD_OP_TAG, Forward)]
assert FORWARD_TAG >= len(MESSAGE_TYPES), "Forward's tag collides with a core message type"
_BY_TYPE: dict[type, _Spec] = {s.cls: s for s in _SPECS}
_FORWARD_OPS: dict[int, ForwardOp] = {int(op): op for op in ForwardOp}
_BY_TAG: dict[int, _Spec] = {s.tag: s for s in _SPECS}

_PREFIX = bytes([WIRE_VERSION])
# NB: one reusable Packer per thread is 2-3x faster than msgpack.packb (which builds a Packer
# per call), and a Packer is not safe to share between threads.
_tls = threading.local()
_unpackb = msgpack.unpackb
_SLICE_BYTES = 4096


def encode(m: Wire) -> bytes:
    """One frame for `m` (a core message or a Forward). Raises CodecError for anything else."""
    if type(m) is Forward and m.op is ForwardOp.WRITE:
        m = _ForwardWrite(m.source, m.target, m.payload)  # type: ignore[assignment]
    spec = _BY_TYPE.get(type(m))
    if spec is None:
        raise CodecError(f"cannot encode {type(m).__name__}: not a Raft message or Forward")
    try:
        pack = _tls.pack
    except AttributeError:
        pack = _tls.pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    values = spec.get(m)
    try:
        if spec.entries_at < 0 and spec.meta_at < 0:
            return _PREFIX + pack((spec.tag, *values))
        body = [spec.tag, *values]
        if spec.entries_at > 0:
            body[spec.entries_at] = [(e.term, e.index, e.kind, e.data) for e in body[spec.entries_at]]
        if spec.meta_at > 0:
            meta = body[spec.meta_at]
            body[spec.meta_at] = (meta.index, meta.term, sorted(meta.membership.voters),
                                  sorted(meta.membership.learners))
        return _PREFIX + pack(body)
    except (TypeError, ValueError, OverflowError, AttributeError) as e:
        raise CodecError(f"cannot encode {m!r:.200}: {e}") from None


def decode(data: bytes | bytearray | memoryview) -> Wire:
    """The message in one frame. Raises CodecError, and nothing else, for any malformed input."""
    if len(data) == 0:
        raise CodecError("empty frame")
    if data[0] != WIRE_VERSION:
        raise CodecError(f"unsupported wire version {data[0]} (this node speaks {WIRE_VERSION})")
    try:
        # NB: unpackb bounds every length by the input size, so a forged header cannot make it
        # allocate more than the frame itself; trailing bytes raise ExtraData. Slicing copies,
        # which beats a memoryview only for small frames.
        rest = data[1:] if len(data) <= _SLICE_BYTES else memoryview(data)[1:]
        body = _unpackb(rest, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types (ExtraData, FormatError, ...)
        raise CodecError(f"invalid msgpack after the version byte: {type(e).__name__}: {e}") from None
    if type(body) is not list or not body:
        raise CodecError(f"expected a non-empty array [tag, fields...], got {type(body).__name__}")
    tag = body[0]
    spec = _BY_TAG.get(tag) if type(tag) is int else None
    if spec is None:
        raise CodecError(f"unknown message tag {tag!r:.40}")
    if len(body) != len(spec.kinds) + 1:
        raise CodecError(f"{spec.name}: expected {len(spec.kinds)} fields, got {len(body) - 1}")
    for i in spec.u63_at:
        v = body[i]
        if type(v) is not int or v < 0 or v > _U63_MAX:
            _bad_field(spec, i, v)
    for i in spec.bool_at:
        if type(body[i]) is not bool:
            _bad_field(spec, i, body[i])
    for i in spec.bytes_at:
        if type(body[i]) is not bytes:
            _bad_field(spec, i, body[i])
    if spec.entries_at > 0:
        body[spec.entries_at] = _decode_entries(spec, spec.entries_at, body[spec.entries_at])
    if spec.meta_at > 0:
        body[spec.meta_at] = _decode_meta(spec, spec.meta_at, body[spec.meta_at])
    if spec.cls is _ForwardWrite:
        return Forward(*body[1:])
    if spec.cls is Forward:
        op = _FORWARD_OPS.get(body[4])
        if op is None:
            raise CodecError(f"Forward.op: expected one of {sorted(_FORWARD_OPS)}, got {_describe(body[4])}")
        body[4] = op
    return spec.cls(*body[1:])  # type: ignore[no-any-return]


def _decode_entries(spec: _Spec, i: int, v: object) -> tuple[Entry, ...]:
    if type(v) is not list:
        _bad_field(spec, i, v)
    entries = []
    for n, e in enumerate(v):  # type: ignore[arg-type]
        if type(e) is not list or len(e) != 4:
            raise CodecError(f"{spec.name}.{spec.names[i - 1]}[{n}]: expected [term, index, kind, data], "
                             f"got {_describe(e)}")
        term, index, kind, data = e
        if type(term) is not int or term < 0 or term > _U63_MAX:
            raise CodecError(f"{spec.name}.{spec.names[i - 1]}[{n}].term: expected {_KIND_NAMES[_U63]}, "
                             f"got {_describe(term)}")
        if type(index) is not int or index < 0 or index > _U63_MAX:
            raise CodecError(f"{spec.name}.{spec.names[i - 1]}[{n}].index: expected {_KIND_NAMES[_U63]}, "
                             f"got {_describe(index)}")
        entry_kind = _ENTRY_KINDS.get(kind) if type(kind) is int else None
        if entry_kind is None:
            raise CodecError(f"{spec.name}.{spec.names[i - 1]}[{n}].kind: expected one of "
                             f"{sorted(_ENTRY_KINDS)}, got {_describe(kind)}")
        if type(data) is not bytes:
            raise CodecError(f"{spec.name}.{spec.names[i - 1]}[{n}].data: expected bytes, "
                             f"got {_describe(data)}")
        entries.append(Entry(term, index, entry_kind, data))  # type: ignore[arg-type]
    return tuple(entries)


def _decode_meta(spec: _Spec, i: int, v: object) -> SnapshotMeta:
    where = f"{spec.name}.{spec.names[i - 1]}"
    if type(v) is not list or len(v) != 4:
        _bad_field(spec, i, v)
    index, term, voters, learners = v  # type: ignore[misc]
    for name, value in (("index", index), ("term", term)):
        if type(value) is not int or value < 0 or value > _U63_MAX:
            raise CodecError(f"{where}.{name}: expected {_KIND_NAMES[_U63]}, got {_describe(value)}")
    members: list[frozenset[NodeId]] = []
    for name, ids in (("voters", voters), ("learners", learners)):
        if type(ids) is not list or len(ids) > _MAX_MEMBERS:
            raise CodecError(f"{where}.{name}: expected an array of at most {_MAX_MEMBERS} node ids, "
                             f"got {_describe(ids)}")
        for node in ids:
            if type(node) is not int or not 0 < node <= _U63_MAX:
                raise CodecError(f"{where}.{name}: expected node ids in [1, 2**63), got {_describe(node)}")
        members.append(frozenset(ids))
    try:
        membership = Membership(members[0], members[1])
    except ValueError as e:
        raise CodecError(f"{where}: {e}") from None
    return SnapshotMeta(Index(index), Term(term), membership)


def _bad_field(spec: _Spec, i: int, v: object) -> NoReturn:
    raise CodecError(f"{spec.name}.{spec.names[i - 1]}: expected {_KIND_NAMES[spec.kinds[i - 1]]}, "
                     f"got {_describe(v)}")


def _describe(v: object) -> str:
    """A short description of a bad value: its type, and the value itself when it is small."""
    if type(v) in (int, bool) or v is None:
        return f"{type(v).__name__} {v!r:.30}"
    return type(v).__name__
