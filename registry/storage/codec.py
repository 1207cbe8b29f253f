"""Binary encodings of what storage keeps: log entries, the hard state, the log's start point.

Every value begins with a format version byte and ends its fixed header with a CRC-32 of the
whole value (header and payload), because LMDB itself checks nothing: a flipped bit must be
refused at start, not replayed into the state machine or counted as a vote.

    entry      v1: version u8 | kind u8 | term u64 | index u64 | crc32 u32 | data
    hard state v1: version u8 | term u64 | voted_for u64 | commit u64 | crc32 u32
    log start  v1: version u8 | index u64 | term u64 | crc32 u32
    snapshot   v1: version u8 | index u64 | term u64 | size u64 | data crc32 u32 | crc32 u32 |
                   msgpack [file name, [voter ids], [learner ids]]

Integers are big-endian. Log keys are the 8-byte big-endian index, so LMDB's byte order of keys
is index order. Decoders accept bytes or memoryview and raise CorruptStorage saying what failed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import msgpack

from registry.raft import Entry, EntryKind, HardState, Index, Membership, NodeId, SnapshotMeta, Term

from .base import CorruptStorage

FORMAT_VERSION = 1
MAX_INDEX = 2**64 - 1

_ENTRY = struct.Struct(">BBQQ")  # followed by crc32, then data
_HARD_STATE = struct.Struct(">BQQQ")
_LOG_START = struct.Struct(">BQQ")
_SNAPSHOT = struct.Struct(">BQQQI")
_CRC = struct.Struct(">I")

ENTRY_HEADER_BYTES = _ENTRY.size + _CRC.size


def index_key(index: int) -> bytes:
    return index.to_bytes(8, "big")  # big-endian: LMDB cursor order == index order


def key_index(key: bytes | memoryview) -> Index:
    if len(key) != 8:
        raise CorruptStorage(f"log key is {len(key)} bytes, expected 8")
    return Index(int.from_bytes(key, "big"))


def _seal(head: bytes, payload: bytes = b"") -> bytes:
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def _open(raw: bytes | memoryview, fixed: struct.Struct, what: str, *, exact: bool) -> tuple:
    """Check length, version and checksum; return the fixed fields."""
    size = fixed.size + _CRC.size
    if len(raw) < size or (exact and len(raw) != size):
        raise CorruptStorage(f"{what} is {len(raw)} bytes, expected {'' if exact else 'at least '}{size}")
    if raw[0] != FORMAT_VERSION:
        raise CorruptStorage(f"{what} has format version {raw[0]}, this registry reads version "
                             f"{FORMAT_VERSION} (was it written by a newer registry?)")
    (stored,) = _CRC.unpack_from(raw, fixed.size)
    actual = zlib.crc32(raw[size:], zlib.crc32(raw[:fixed.size]))
    if stored != actual:
        raise CorruptStorage(f"{what} fails its checksum (stored {stored:#010x}, computed {actual:#010x})")
    return fixed.unpack_from(raw)


def encode_entry(entry: Entry) -> bytes:
    return _seal(_ENTRY.pack(FORMAT_VERSION, entry.kind, entry.term, entry.index), entry.data)


def decode_entry(raw: bytes | memoryview) -> Entry:
    _, kind, term, index = _open(raw, _ENTRY, "log entry", exact=False)
    try:
        entry_kind = EntryKind(kind)
    except ValueError:
        raise CorruptStorage(f"log entry has unknown kind {kind}") from None
    return Entry(Term(term), Index(index), entry_kind, bytes(raw[ENTRY_HEADER_BYTES:]))


def encode_hard_state(hs: HardState) -> bytes:
    return _seal(_HARD_STATE.pack(FORMAT_VERSION, hs.term, hs.voted_for, hs.commit))


def decode_hard_state(raw: bytes | memoryview) -> HardState:
    _, term, voted_for, commit = _open(raw, _HARD_STATE, "hard state", exact=True)
    return HardState(Term(term), NodeId(voted_for), Index(commit))


def encode_log_start(index: int, term: int) -> bytes:
    """The snapshot point the log starts after (index 0, term 0 until snapshots exist)."""
    return _seal(_LOG_START.pack(FORMAT_VERSION, index, term))


def decode_log_start(raw: bytes | memoryview) -> tuple[Index, Term]:
    _, index, term = _open(raw, _LOG_START, "log start", exact=True)
    return Index(index), Term(term)


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """What the meta db says of the current snapshot: its point, and the file that holds its
    data (a name in the snapshots directory) with the data's size and CRC-32, which the file's
    own header must repeat."""

    meta: SnapshotMeta
    file_name: str
    size: int
    crc32: int


def encode_snapshot_record(record: SnapshotRecord) -> bytes:
    meta = record.meta
    tail = msgpack.packb([record.file_name, sorted(meta.membership.voters), sorted(meta.membership.learners)],
                         use_bin_type=True)
    return _seal(_SNAPSHOT.pack(FORMAT_VERSION, meta.index, meta.term, record.size, record.crc32), tail)


def decode_snapshot_record(raw: bytes | memoryview) -> SnapshotRecord:
    _, index, term, size, crc = _open(raw, _SNAPSHOT, "snapshot record", exact=False)
    try:
        name, voters, learners = msgpack.unpackb(bytes(raw[_SNAPSHOT.size + _CRC.size:]), raw=False)
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"bad file name {name!r:.60}")
        membership = Membership(frozenset(NodeId(int(v)) for v in voters), frozenset(NodeId(int(v)) for v in learners))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptStorage(f"snapshot record does not decode: {exc}") from None
    return SnapshotRecord(SnapshotMeta(Index(index), Term(term), membership), name, size, crc)
