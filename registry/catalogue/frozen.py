"""A catalogue frozen at one applied index, serialised on another thread (the node's snapshots),
and thawed again from those bytes at start or on install.

``freeze(catalogue)`` runs on the thread that applies: it takes the immutable view and a copy of
the session table, O(sessions) and no serialisation. ``FrozenCatalogue.to_bytes()`` then runs on
any thread and returns exactly ``Catalogue.to_bytes()`` as of the freeze, while the catalogue
goes on applying: nothing it reads can change (views are immutable, sessions are frozen
dataclasses and the table is a copy).

NB: the bytes are built with many small msgpack calls rather than one ``packb`` of the whole
state, which would hold the interpreter lock for the whole catalogue (hundreds of ms at 100,000
instances) and stall the node loop; msgpack is a concatenative format, so the pieces joined equal
the one-shot encoding (tests/catalogue/test_frozen.py checks it byte for byte).

``thaw(data)`` is ``Catalogue.from_bytes(data)`` for bytes a catalogue wrote (the node's own
snapshot file, a leader's snapshot, the agent feeding its DNS child): the SHA-256 in the header is
checked, the structure must parse, but instances are not validated again field by field, which is
three quarters of ``from_bytes``'s time (measured: bench/snapshots.py `restore_ms`). Bytes from
outside (an operator's restore) still go through ``from_bytes``/``Restore``, which validate all.
It reads format 1 (written before health checks) and format 2, as ``from_bytes`` does.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
import msgpack

from .model import Check, CheckKind, HealthStatus, Instance
from .state import (
    MAX_SESSIONS,
    SNAPSHOT_FORMAT,
    SNAPSHOT_MAGIC,
    Catalogue,
    SnapshotError,
    _decode_result,
    _encode_instance,
    _encode_result,
    _Session,
    _snapshot_body,
)
from .view import CatalogueView, ServiceMap

#: Instances (or sessions) packed per msgpack call: each call holds the lock well under a ms.
_PER_PIECE = 256


@dataclass(frozen=True, slots=True)
class FrozenCatalogue:
    """The whole state of a catalogue at ``view.applied_index``; safe to read from any thread."""

    view: CatalogueView
    sessions: tuple[tuple[str, _Session], ...]  # oldest first, as the catalogue keeps them

    @property
    def applied_index(self) -> int:
        return self.view.applied_index

    def to_bytes(self) -> bytes:
        """Equal to ``Catalogue.to_bytes()`` at the freeze (and so to ``from_bytes`` input)."""
        body = b"".join(self._pieces())
        return SNAPSHOT_MAGIC + SNAPSHOT_FORMAT.to_bytes(2, "big") + hashlib.sha256(body).digest() + body

    def _pieces(self) -> Iterator[bytes]:
        packer = msgpack.Packer(use_bin_type=True)
        view = self.view
        services = view.services
        names = services.names()
        yield packer.pack_array_header(4)
        yield packer.pack(view.applied_index)
        yield packer.pack(view.version)
        yield packer.pack_array_header(len(names))
        for name in names:
            instances = services[name]
            yield packer.pack_array_header(2) + packer.pack(name) + packer.pack_array_header(len(instances))
            for lo in range(0, len(instances), _PER_PIECE):
                yield b"".join(packer.pack(_encode_instance(i)) for i in instances[lo:lo + _PER_PIECE])
        sessions = self.sessions
        yield packer.pack_array_header(len(sessions))
        for lo in range(0, len(sessions), _PER_PIECE):
            yield b"".join(
                packer.pack([client_id, s.seq, s.used_index, s.result_index, _encode_result(s.result)])
                for client_id, s in sessions[lo:lo + _PER_PIECE])

def freeze(catalogue: Catalogue) -> FrozenCatalogue:
    """Capture ``catalogue`` now, on the thread that applies to it; O(sessions)."""
    return FrozenCatalogue(catalogue.view, tuple(catalogue._sessions.items()))


def thaw(data: bytes, *, max_sessions: int = MAX_SESSIONS) -> Catalogue:
    """A catalogue from bytes a catalogue wrote (see the module docstring). Raises SnapshotError
    if the header, the checksum or the structure is wrong; the result equals ``from_bytes``'s."""
    snapshot_format, body = _snapshot_body(data)
    statuses = {status.value: status for status in HealthStatus}
    kinds = {kind.value: kind for kind in CheckKind}
    checks: dict[tuple, Check] = {}  # type: ignore[type-arg]  # NB: instances with one check share one object
    try:
        # NB: decoded one instance at a time: unpacking the whole body first and then building
        # the instances left the freed intermediate lists as holes between the live objects, and
        # a restored catalogue of 100,000 instances took ~70 MiB more than the one it came from.
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(body) or 1)
        unpacker.feed(body)
        if unpacker.read_array_header() != 4:
            raise ValueError("the body is not [applied index, version, services, sessions]")
        applied_index, version = unpacker.unpack(), unpacker.unpack()
        services = []
        for _ in range(unpacker.read_array_header()):
            if unpacker.read_array_header() != 2:
                raise ValueError("a service is not [name, instances]")
            name = unpacker.unpack()
            instances = []
            for _ in range(unpacker.read_array_header()):
                r = unpacker.unpack()
                if snapshot_format == 1:
                    instances.append(Instance(r[0], name, r[1], r[2], tuple(r[3]), tuple(tuple(p) for p in r[4])))
                    continue
                check = None
                if r[5] is not None:
                    key = tuple(r[5])
                    check = checks.get(key)
                    if check is None:
                        check = checks[key] = Check(kinds[key[0]], *key[1:])
                instances.append(Instance(r[0], name, r[1], r[2], tuple(r[3]), tuple(tuple(p) for p in r[4]), check,
                                          statuses[r[6]], r[7], r[8], r[9]))
            services.append((name, tuple(instances)))
        raw_sessions = unpacker.unpack()
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            pass
        else:
            raise ValueError("trailing data after the sessions")
        sessions: OrderedDict[str, _Session] = OrderedDict(
            (client_id, _Session(seq, _decode_result(result), result_index, used_index))
            for client_id, seq, used_index, result_index, result in raw_sessions)
        if not (type(applied_index) is int and type(version) is int and 0 <= version <= applied_index):
            raise ValueError(f"applied index {applied_index!r}, version {version!r}")
        if len(sessions) > max_sessions:
            raise ValueError(f"{len(sessions)} sessions, more than max_sessions={max_sessions}")
        view = CatalogueView(applied_index=applied_index, version=version, services=ServiceMap.from_items(services))
    except SnapshotError:
        raise
    except Exception as e:  # noqa: BLE001 (any shape error in checksummed bytes: a bug, reported as such)
        raise SnapshotError(f"corrupt catalogue snapshot: {type(e).__name__}: {e}") from e
    catalogue = Catalogue(max_sessions=max_sessions)
    catalogue._sessions = sessions  # NB: what restore() does, without validating each field again
    catalogue._view = view
    return catalogue
