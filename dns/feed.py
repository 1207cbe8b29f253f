"""The feed: frames on the socket pair between a registry agent and its DNS process.

Every frame is a 5-byte header, type (u8) and body length (u32, big-endian), then the body:

    agent -> DNS process
      ENTRIES  1  records, each: index (u64), kind (u8), data length (u32), data. Committed log
                  entries, in index order; kind 0 is NORMAL (applied), anything else is skipped.
      CONTACT  2  known (u8: 0 or 1), at (f64): when the agent last heard from a leader, as
                  time.monotonic() (NB: CLOCK_MONOTONIC is system-wide, so both processes read
                  the same clock, and a frame that waited in a buffer is not mistaken for fresh
                  news); known 0 means no leader is known now, the last contact time stands.
      RESTORE  3  a catalogue snapshot (``Catalogue.to_bytes()``) that replaces the whole state.

    DNS process -> agent
      READY   10  JSON {"host": str, "port": int}: both sockets are bound; serving.
      ERROR   11  JSON {"errno": int | null, "message": str}: could not start (or must stop).
      STATS   12  JSON object: the latest counters (see ``registry_dns.child``); sent every
                  ``stats_interval_s`` and at once when the child's staleness changes.
      RESYNC  13  applied index (u64): the process missed entries and needs a RESTORE.

Both sides validate everything they read: an unknown type, a body over ``MAX_BODY_BYTES`` or a
truncated record raises ``FeedError`` (the stream cannot be trusted any more; never a crash).
Writers never block: ``FrameQueue`` keeps what the socket did not take and sends it later. The
framing itself (header, reader, queue) is ``registry.childproc``'s, shared with the prober child.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from registry import childproc
from registry.childproc import FrameQueue, receive

__all__ = [
    "CONTACT", "ENTRIES", "ERROR", "READY", "RESTORE", "RESYNC", "STATS", "MAX_BODY_BYTES",
    "FeedError", "FrameQueue", "FrameReader", "decode_contact", "decode_entries", "encode_contact",
    "encode_entries", "encode_error", "encode_json", "decode_json", "frame", "receive",
]  # fmt: skip

ENTRIES, CONTACT, RESTORE = 1, 2, 3
READY, ERROR, STATS, RESYNC = 10, 11, 12, 13
KNOWN_TYPES = frozenset({ENTRIES, CONTACT, RESTORE, READY, ERROR, STATS, RESYNC})

#: The largest body either side accepts (a catalogue snapshot is the largest frame).
MAX_BODY_BYTES = 1 << 30

_HEADER = childproc.TYPED_HEADER
_RECORD = struct.Struct("!QBI")
_CONTACT = struct.Struct("!Bd")
_INDEX = struct.Struct("!Q")


class FeedError(childproc.FrameError):
    """Bytes on the feed that are not a valid frame: the stream is corrupt."""


def frame(kind: int, body: bytes = b"") -> bytes:
    assert kind in KNOWN_TYPES and len(body) <= MAX_BODY_BYTES
    return _HEADER.pack(kind, len(body)) + body


def encode_entries(entries: Iterable[tuple[int, int, bytes]]) -> bytes:
    """One ENTRIES frame (header included) for ``(index, kind, data)`` entries."""
    parts: list[bytes] = []
    pack = _RECORD.pack
    for index, kind, data in entries:
        parts.append(pack(index, kind, len(data)))
        parts.append(data)
    body = b"".join(parts)
    return _HEADER.pack(ENTRIES, len(body)) + body


def decode_entries(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The ``(index, kind, data)`` records of an ENTRIES body; FeedError if one is truncated."""
    view = memoryview(body)
    offset, end = 0, len(body)
    unpack = _RECORD.unpack_from
    size = _RECORD.size
    while offset < end:
        if end - offset < size:
            raise FeedError(f"truncated entry header at byte {offset} of {end}")
        index, kind, length = unpack(view, offset)
        offset += size
        if end - offset < length:
            raise FeedError(f"entry {index} claims {length} bytes, {end - offset} left")
        yield index, kind, bytes(view[offset : offset + length])
        offset += length


def encode_contact(known: bool, at: float) -> bytes:
    return frame(CONTACT, _CONTACT.pack(1 if known else 0, at))


def decode_contact(body: bytes) -> tuple[bool, float]:
    if len(body) != _CONTACT.size:
        raise FeedError(f"a CONTACT body is {_CONTACT.size} bytes, got {len(body)}")
    known, at = _CONTACT.unpack(body)
    if known not in (0, 1) or at != at:  # NaN
        raise FeedError(f"invalid CONTACT ({known}, {at})")
    return bool(known), at


def encode_json(kind: int, value: dict[str, Any]) -> bytes:
    """A READY, ERROR or STATS frame (header included) with ``value`` as its JSON body."""
    return frame(kind, json.dumps(value).encode())


def encode_error(message: str, errno: int | None = None) -> bytes:
    return encode_json(ERROR, {"errno": errno, "message": message})


def decode_json(body: bytes) -> dict[str, Any]:
    """A JSON object body; {} if the body is not one (reports are informational)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def encode_index(index: int) -> bytes:
    return _INDEX.pack(index)


def decode_index(body: bytes) -> int:
    if len(body) != _INDEX.size:
        raise FeedError(f"an index body is {_INDEX.size} bytes, got {len(body)}")
    return int(_INDEX.unpack(body)[0])


class FrameReader(childproc.FrameReader):
    """Reassembles feed frames from a byte stream, any split; validates every header.

    A type outside ``accept`` or a body over ``MAX_BODY_BYTES`` raises FeedError.
    """

    error = FeedError

    def __init__(self, accept: frozenset[int] = KNOWN_TYPES) -> None:
        super().__init__(max_body_bytes=MAX_BODY_BYTES, accept=accept)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return every complete (type, body). Raises FeedError on a bad header."""
        return self.split(data)
