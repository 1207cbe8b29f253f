"""The member directory kept with a snapshot (issue 15): an optional, opaque header field of
the snapshot file that survives a restart, and data written by the previous version (whose
headers have no such field) still opens."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import msgpack
import pytest

from registry.raft import Index
from registry.storage.snapfile import (
    MAGIC,
    MAX_HEADER_BYTES,
    SnapshotFileError,
    read_snapshot_file,
    read_snapshot_header,
    read_snapshot_members,
    write_snapshot_file,
)

from .test_contract import entries, open_lmdb, state
from .test_snapshots import snap

DIRECTORY = msgpack.packb([{"name": "n1", "raft": "10.0.0.1:7001", "client": None}])


def old_format_file(path: Path, index: int, data: bytes, voters: list[int], learners: list[int]) -> None:
    """A snapshot file exactly as the previous version wrote it: no 'members' key."""
    header = {"index": index, "term": 1, "voters": voters, "learners": learners, "size": len(data),
              "crc32": zlib.crc32(data), "created": time.time(), "kind": "node"}
    body = msgpack.packb(header, use_bin_type=True)
    path.write_bytes(MAGIC + struct.pack(">I", len(body)) + body + data)


def test_the_directory_is_stored_with_the_snapshot_and_read_back_after_a_restart(tmp_path: Path) -> None:
    """write_snapshot(members=) -> adopt -> close -> open: the same bytes; the data is unchanged."""
    s = snap(10)
    with open_lmdb(tmp_path) as store:
        store.save(entries(1, 12), None, sync=True)
        assert store.snapshot_members is None
        store.adopt_snapshot(s.meta, store.write_snapshot(s, members=DIRECTORY), Index(10))
        assert store.snapshot_members == DIRECTORY
    with open_lmdb(tmp_path) as store:
        assert store.snapshot_members == DIRECTORY
        got = state(store)
        assert got.snapshot == s.meta and got.snapshot_data == s.data


def test_a_data_dir_whose_snapshot_has_the_old_header_still_opens(tmp_path: Path) -> None:
    """Users keep their data: a snapshot file in the previous version's format (no 'members')
    opens, its data and membership restored, and the directory is None (the node then takes it
    from its --peer flags)."""
    s = snap(10)
    with open_lmdb(tmp_path) as store:
        store.save(entries(1, 12), None, sync=True)
        path = store.write_snapshot(s)
        store.adopt_snapshot(s.meta, path, Index(10))
    m = s.meta.membership
    old_format_file(path, 10, s.data, sorted(m.voters), sorted(m.learners))
    assert "members" not in msgpack.unpackb(path.read_bytes()[12:12 + struct.unpack(">I", path.read_bytes()[8:12])[0]])
    with open_lmdb(tmp_path) as store:
        assert store.snapshot_members is None
        got = state(store)
        assert got.snapshot == s.meta and got.snapshot_data == s.data
        assert got.entries == tuple(entries(11, 12))


def test_without_a_directory_the_header_is_the_previous_versions(tmp_path: Path) -> None:
    """members=None writes no key at all, so an older registry reads our files as its own."""
    write_snapshot_file(tmp_path / "a.snap", snap(3))
    raw = (tmp_path / "a.snap").read_bytes()
    (length,) = struct.unpack(">I", raw[8:12])
    assert set(msgpack.unpackb(raw[12:12 + length])) == {"index", "term", "voters", "learners", "size", "crc32",
                                                          "created", "kind"}
    assert read_snapshot_members(tmp_path / "a.snap") is None


def test_an_installed_or_newer_snapshot_without_a_directory_clears_it(tmp_path: Path) -> None:
    """A leader's snapshot carries no directory: the stored one is not kept beside a newer snapshot."""
    with open_lmdb(tmp_path) as store:
        store.save(entries(1, 12), None, sync=True)
        s = snap(5)
        store.adopt_snapshot(s.meta, store.write_snapshot(s, members=DIRECTORY), Index(5))
        store.save([], None, sync=True, snapshot=snap(20, term=2))
        assert store.snapshot_members is None
    with open_lmdb(tmp_path) as store:
        assert store.snapshot_members is None and state(store).snapshot.index == 20


def test_a_bad_members_field_is_refused(tmp_path: Path) -> None:
    """A 'members' field that is not bytes is a damaged header, and one too large is not written."""
    path = tmp_path / "a.snap"
    write_snapshot_file(path, snap(3), members=DIRECTORY)
    assert read_snapshot_header(path).members == DIRECTORY and read_snapshot_file(path).data == snap(3).data
    raw = path.read_bytes()
    (length,) = struct.unpack(">I", raw[8:12])
    header = msgpack.unpackb(raw[12:12 + length])
    header["members"] = "not bytes"
    body = msgpack.packb(header, use_bin_type=True)
    path.write_bytes(MAGIC + struct.pack(">I", len(body)) + body + raw[12 + length:])
    with pytest.raises(SnapshotFileError, match="'members' must be bytes"):
        read_snapshot_header(path)
    with pytest.raises(ValueError, match="exceeds"):
        write_snapshot_file(tmp_path / "b.snap", snap(3), members=b"x" * MAX_HEADER_BYTES)
    assert not (tmp_path / "b.snap").exists()
