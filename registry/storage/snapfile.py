"""Snapshot files: one state machine image with its Raft metadata, checksummed, written atomically.

The same format serves the node's own snapshots (<data-dir>/snapshots/) and the operator's
`registry snapshot save FILE`:

    magic   8 bytes  b"RGSNAP\\x00\\x01" (the last byte is the format version)
    length  u32      of the header that follows
    header  msgpack  {"index": int, "term": int, "voters": [int], "learners": [int],
                      "size": int, "crc32": int, "created": float (unix time), "kind": str,
                      "members": bin (optional)}
    data    `size` bytes, the state machine's image (registry.catalogue's snapshot bytes)

`crc32` covers `data`; the header is small and every field is checked on read. `members` is the
node's member directory (names and addresses of the membership's ids, registry/node/members.py)
as of `index`, opaque here; it is absent from files written before it existed and from
snapshots installed from a leader, and readers of either version ignore what they do not know. Writes go to a
temporary file in the same directory, are fsynced, renamed over the target and the directory is
fsynced, so a crash leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack

from registry.raft import Index, Membership, NodeId, Snapshot, SnapshotMeta, Term

MAGIC = b"RGSNAP\x00\x01"
_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 64 * 1024
_CHUNK = 1 << 20


class SnapshotFileError(ValueError):
    """A file that is not a valid snapshot; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    meta: SnapshotMeta
    size: int
    crc32: int
    created: float
    kind: str  # what wrote it: "node" (compaction), "install" (from a leader), "save" (operator)
    members: bytes | None = None  # the node's member directory as of meta.index, opaque; None: not recorded


def encode_header(meta: SnapshotMeta, data: bytes, *, kind: str, created: float | None = None,
                  members: bytes | None = None) -> bytes:
    header: dict[str, object] = {
        "index": int(meta.index), "term": int(meta.term),
        "voters": sorted(meta.membership.voters), "learners": sorted(meta.membership.learners),
        "size": len(data), "crc32": zlib.crc32(data), "created": time.time() if created is None else created,
        "kind": kind,
    }
    if members is not None:  # NB: absent, not nil, when there is none: the previous version's exact header
        header["members"] = bytes(members)
    body = msgpack.packb(header, use_bin_type=True)
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(f"a snapshot header of {len(body)} bytes exceeds {MAX_HEADER_BYTES} (its member directory "
                         f"is {len(members or b'')} bytes)")
    return MAGIC + _LENGTH.pack(len(body)) + body


def write_snapshot_file(path: Path, snapshot: Snapshot, *, kind: str = "node", members: bytes | None = None) -> int:
    """Write `snapshot` (and the member directory `members`, if given) to `path` atomically and
    durably; returns the file's size in bytes.

    Safe to call from a thread other than the node loop's: it touches only this file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    head = encode_header(snapshot.meta, snapshot.data, kind=kind, members=members)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(snapshot.data)
        _write_all(fd, head)
        for start in range(0, len(view), _CHUNK):
            _write_all(fd, view[start:start + _CHUNK])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return len(head) + len(snapshot.data)


def read_snapshot_header(path: Path) -> SnapshotHeader:
    """The header of the snapshot file at `path`, validated (the data is not read)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
    return header


def read_snapshot_members(path: Path) -> bytes | None:
    """The member directory recorded in the snapshot file at `path`, or None (an older file, or
    one installed from a leader). Reads the header only."""
    return read_snapshot_header(path).members


def read_snapshot_file(path: Path) -> Snapshot:
    """The whole snapshot at `path`, its size and checksum verified. Raises SnapshotFileError."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
        data = f.read(header.size + 1)
    if len(data) != header.size:
        raise SnapshotFileError(f"{path}: truncated: the header promises {header.size} bytes of data, "
                                f"the file holds {min(len(data), header.size)}"
                                if len(data) < header.size else
                                f"{path}: {len(data) - header.size}+ unexpected bytes after the data")
    actual = zlib.crc32(data)
    if actual != header.crc32:
        raise SnapshotFileError(f"{path}: the data fails its checksum (stored {header.crc32:#010x}, "
                                f"computed {actual:#010x}): the file is damaged")
    return Snapshot(header.meta, data)


def _read_header(f, path: Path) -> tuple[SnapshotHeader, int]:  # type: ignore[no-untyped-def]
    magic = f.read(len(MAGIC))
    if magic[:6] != MAGIC[:6]:
        raise SnapshotFileError(f"{path}: not a registry snapshot file (it does not start with {MAGIC[:6]!r})")
    if magic != MAGIC:
        raise SnapshotFileError(f"{path}: snapshot format version {magic[-1] if len(magic) == 8 else '?'}; "
                                f"this registry reads version {MAGIC[-1]}")
    raw_length = f.read(_LENGTH.size)
    if len(raw_length) != _LENGTH.size:
        raise SnapshotFileError(f"{path}: truncated before the header")
    (length,) = _LENGTH.unpack(raw_length)
    if length > MAX_HEADER_BYTES:
        raise SnapshotFileError(f"{path}: header of {length} bytes exceeds {MAX_HEADER_BYTES}: the file is damaged")
    raw = f.read(length)
    if len(raw) != length:
        raise SnapshotFileError(f"{path}: truncated inside the header")
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types
        raise SnapshotFileError(f"{path}: the header is not valid msgpack ({exc})") from None
    return _parse_header(fields, path), len(MAGIC) + _LENGTH.size + length


def _parse_header(fields: object, path: Path) -> SnapshotHeader:
    if not isinstance(fields, dict):
        raise SnapshotFileError(f"{path}: the header must be a map")

    def integer(key: str, minimum: int = 0) -> int:
        value = fields.get(key)
        if type(value) is not int or not minimum <= value < 2**63:
            raise SnapshotFileError(f"{path}: header field {key!r} must be an integer >= {minimum}, got {value!r:.40}")
        return value

    def ids(key: str) -> frozenset[NodeId]:
        value = fields.get(key)
        if not isinstance(value, list) or not all(type(v) is int and 0 < v < 2**63 for v in value):
            raise SnapshotFileError(f"{path}: header field {key!r} must be a list of node ids, got {value!r:.60}")
        return frozenset(NodeId(v) for v in value)

    created = fields.get("created")
    kind = fields.get("kind")
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        raise SnapshotFileError(f"{path}: header field 'created' must be a number, got {created!r:.40}")
    if not isinstance(kind, str):
        raise SnapshotFileError(f"{path}: header field 'kind' must be a string, got {kind!r:.40}")
    try:
        membership = Membership(ids("voters"), ids("learners"))
    except ValueError as exc:
        raise SnapshotFileError(f"{path}: {exc}") from None
    members = fields.get("members")
    if members is not None and not isinstance(members, bytes):
        raise SnapshotFileError(f"{path}: header field 'members' must be bytes, got {type(members).__name__}")
    meta = SnapshotMeta(Index(integer("index", 1)), Term(integer("term", 1)), membership)
    return SnapshotHeader(meta, integer("size"), integer("crc32"), float(created), kind, members)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
