"""Storage of snapshots: one contract for both backends, then crash atomicity on the real disk.

A snapshot becomes current in two ways: a follower installs a leader's (save(..., snapshot=)),
or the node takes its own (write_snapshot() in any thread, then adopt_snapshot() on the loop).
Either way initial_state() returns the newest durable snapshot and the entries after it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
import pytest

from registry.raft import Index, InitialState, Membership, NodeId, Snapshot, SnapshotMeta, Term
from registry.storage import CorruptStorage, LmdbStorage, StorageError
from registry.storage import lmdb_store
from registry.storage.codec import index_key
from registry.storage.snapfile import read_snapshot_header

from .test_contract import MEMBERS, ROOT, Backend, backend, entries, hs, open_lmdb, state  # noqa: F401

OTHER = Membership(frozenset({NodeId(1), NodeId(2), NodeId(4)}))


def snap(index: int, term: int = 1, membership: Membership = MEMBERS, size: int = 1000) -> Snapshot:
    data = f"state@{index};".encode().ljust(size, b"#")
    return Snapshot(SnapshotMeta(Index(index), Term(term), membership), data)


def take(store, index: int, compact_to: int, term: int = 1) -> Snapshot:  # type: ignore[no-untyped-def]
    """The node's own snapshot: write (as a thread would), then adopt."""
    s = snap(index, term)
    path = store.write_snapshot(s)
    store.adopt_snapshot(s.meta, path, Index(compact_to))
    return s


class TestSnapshotContract:
    """What every Storage does with snapshots."""

    def test_adopting_a_snapshot_restores_it_and_only_the_entries_after_it(self, backend: Backend) -> None:
        """A taken snapshot with a kept tail: initial_state gives the snapshot's data and the
        entries after its index; the tail stays stored (first_index) but is not returned."""
        backend.store.save(entries(1, 100), hs(1, 1, 100), sync=True)
        s = take(backend.store, 80, compact_to=70)
        for restart in (False, True):
            store = backend.restart() if restart else backend.store
            got = state(store)
            assert got.snapshot == s.meta and got.snapshot_data == s.data
            assert got.entries == tuple(entries(81, 100))
            assert got.hard_state == hs(1, 1, 100)
            st = store.stats()
            assert (st.snapshot_index, st.snapshot_bytes, st.first_index, st.last_index) == (80, 1000, 71, 100)

    def test_a_snapshot_at_the_last_entry_with_a_kept_tail_restores_no_entries(self, backend: Backend) -> None:
        """Nothing follows the snapshot: the kept tail must not be mistaken for the log after it."""
        backend.store.save(entries(1, 10), None, sync=True)
        s = take(backend.store, 10, compact_to=6)
        got = state(backend.restart())
        assert (got.snapshot, got.entries, backend.store.stats().first_index) == (s.meta, (), 7)

    def test_entries_keep_appending_after_a_snapshot(self, backend: Backend) -> None:
        """After compaction the log grows and truncates after the snapshot as before."""
        backend.store.save(entries(1, 10), None, sync=True)
        take(backend.store, 10, compact_to=10)
        backend.store.save(entries(11, 15), None, sync=True)
        backend.store.save(entries(13, 14, term=2), None, sync=True)
        assert state(backend.restart()).entries == tuple(entries(11, 12) + entries(13, 14, term=2))

    def test_a_batch_inside_the_snapshot_is_a_bug(self, backend: Backend) -> None:
        """Rule 3: entries at or below the snapshot index (even in the kept tail) are refused."""
        backend.store.save(entries(1, 10), None, sync=True)
        take(backend.store, 8, compact_to=5)
        with pytest.raises(AssertionError):
            backend.store.save(entries(7, 9, term=2), None, sync=True)

    def test_installing_a_leaders_snapshot_replaces_the_log(self, backend: Backend) -> None:
        """save(snapshot=) drops every entry (a conflicting suffix too), the snapshot brings its
        own membership, and the Ready's entries follow it."""
        backend.store.save(entries(1, 30), hs(1, 1, 10), sync=True)
        s = snap(50, term=3, membership=OTHER)
        backend.store.save(entries(51, 52, term=3), hs(3, 0, 50), sync=True, snapshot=s)
        for restart in (False, True):
            store = backend.restart() if restart else backend.store
            got = store.initial_state(MEMBERS)
            assert got == InitialState(s.meta, hs(3, 0, 50), tuple(entries(51, 52, term=3)), s.data)
            assert got.snapshot.membership == OTHER
            st = store.stats()
            assert (st.first_index, st.last_index, st.snapshot_index) == (51, 52, 50)

    def test_an_install_below_the_log_end_also_replaces_the_log(self, backend: Backend) -> None:
        """A snapshot at an index the log holds (with another term) still replaces all of it."""
        backend.store.save(entries(1, 30), hs(1, 1, 5), sync=True)
        s = snap(20, term=2)
        backend.store.save((), hs(2, 0, 20), sync=True, snapshot=s)
        got = state(backend.restart())
        assert (got.snapshot, got.entries, got.snapshot_data) == (s.meta, (), s.data)

    def test_a_newer_snapshot_replaces_the_older(self, backend: Backend) -> None:
        """Taken, then installed, then taken again: the newest wins each time."""
        backend.store.save(entries(1, 10), None, sync=True)
        take(backend.store, 5, compact_to=5)
        s2 = snap(20, term=2)
        backend.store.save(entries(21, 25, term=2), hs(2, 0, 25), sync=True, snapshot=s2)
        s3 = take(backend.store, 24, compact_to=22, term=2)
        got = state(backend.restart())
        assert (got.snapshot, got.snapshot_data, got.entries) == (s3.meta, s3.data, tuple(entries(25, 25, term=2)))

    def test_an_older_snapshot_is_refused(self, backend: Backend) -> None:
        """Adopting a snapshot not newer than the current one is a bug in the caller."""
        backend.store.save(entries(1, 10), None, sync=True)
        take(backend.store, 8, compact_to=8)
        older = snap(6)
        path = backend.store.write_snapshot(older)
        with pytest.raises(AssertionError):
            backend.store.adopt_snapshot(older.meta, path, Index(6))
        backend.store.discard_snapshot(path)
        assert state(backend.store).snapshot.index == 8


class TestLmdbSnapshotFiles:
    """Files, crashes and damage: what only the real disk shows."""

    def files(self, path: Path) -> list[str]:
        return sorted(p.name for p in (path / "snapshots").iterdir())

    def test_exactly_one_current_file_and_older_ones_are_deleted(self, tmp_path: Path) -> None:
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 30), None, sync=True)
            take(store, 10, compact_to=10)
            take(store, 20, compact_to=20)
            assert self.files(tmp_path) == [store.snapshot_path(snap(20).meta).name]
            assert read_snapshot_header(tmp_path / "snapshots" / self.files(tmp_path)[0]).kind == "node"

    def test_a_leftover_temp_file_is_removed_at_open(self, tmp_path: Path) -> None:
        """A crash inside write_snapshot_file leaves a temp file; the next open removes it."""
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 10), None, sync=True)
        (tmp_path / "snapshots" / ".snap-x.snap.tmp-123").write_bytes(b"half a snapshot")
        with open_lmdb(tmp_path) as store:
            assert self.files(tmp_path) == []
            assert state(store).entries == tuple(entries(1, 10))

    def test_a_file_written_but_not_adopted_is_removed_and_the_log_kept(self, tmp_path: Path) -> None:
        """A crash between write_snapshot and adopt_snapshot: the old state, whole."""
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 10), None, sync=True)
            take(store, 4, compact_to=4)
            store.write_snapshot(snap(9))
        with open_lmdb(tmp_path) as store:
            got = state(store)
            assert got.snapshot.index == 4 and got.entries == tuple(entries(5, 10))
            assert self.files(tmp_path) == [store.snapshot_path(snap(4).meta).name]

    def test_kill_9_between_write_and_adopt_keeps_the_old_state(self, tmp_path: Path) -> None:
        """A real process killed after its snapshot file is durable but before adopting it."""
        script = textwrap.dedent(f"""
            import os, signal, sys
            sys.path.insert(0, {str(ROOT)!r})
            from pathlib import Path
            from registry.raft import Entry, EntryKind, Index, Membership, NodeId, Snapshot, SnapshotMeta, Term
            from registry.storage import LmdbStorage
            store = LmdbStorage(Path({str(tmp_path)!r}), node_name="n1", cluster_id="c1")
            store.save([Entry(Term(1), Index(i), EntryKind.NORMAL, b"x") for i in range(1, 11)], None, sync=True)
            m = Membership(frozenset({{NodeId(1)}}))
            store.write_snapshot(Snapshot(SnapshotMeta(Index(10), Term(1), m), b"data"))
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        with open_lmdb(tmp_path) as store:
            got = state(store)
            assert got.snapshot.index == 0 and [e.index for e in got.entries] == list(range(1, 11))
            assert self.files(tmp_path) == []

    def test_a_crash_before_deleting_the_older_file_is_tidied_at_open(self, tmp_path: Path) -> None:
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 10), None, sync=True)
            old = take(store, 4, compact_to=4)
            keep = (tmp_path / "snapshots" / store.snapshot_path(old.meta).name).read_bytes()
            take(store, 8, compact_to=8)
        (tmp_path / "snapshots" / LmdbStorage.snapshot_path(store, old.meta).name).write_bytes(keep)
        with open_lmdb(tmp_path) as store:
            assert state(store).snapshot.index == 8
            assert self.files(tmp_path) == [store.snapshot_path(snap(8).meta).name]

    @pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "swap"])
    def test_a_damaged_snapshot_file_is_refused_at_start(self, tmp_path: Path, damage: str) -> None:
        """A flipped bit, a truncated or missing file, or another snapshot's file under the
        recorded name: CorruptStorage naming the file, never a guess."""
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 10), None, sync=True)
            s = take(store, 8, compact_to=8)
            path = store.snapshot_path(s.meta)
        raw = bytearray(path.read_bytes())
        if damage == "flip":
            raw[-10] ^= 0x01
            path.write_bytes(raw)
        elif damage == "truncate":
            path.write_bytes(raw[:-100])
        elif damage == "delete":
            path.unlink()
        else:
            from registry.storage.snapfile import write_snapshot_file
            write_snapshot_file(path, snap(8, size=999))
        with pytest.raises(CorruptStorage, match="snapshot file"):
            open_lmdb(tmp_path).initial_state(MEMBERS)

    def test_a_snapshot_beyond_the_log_is_refused(self, tmp_path: Path) -> None:
        """The record says the log reaches the snapshot; a log that does not is damage."""
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 10), None, sync=True)
            take(store, 8, compact_to=4)
        env = lmdb.open(str(tmp_path / "raft"), max_dbs=2)
        with env.begin(write=True, db=env.open_db(b"log")) as txn:
            for i in range(5, 11):
                txn.delete(index_key(i))
        env.close()
        with pytest.raises(CorruptStorage, match="snapshot"):
            open_lmdb(tmp_path)

    def test_write_snapshot_runs_in_a_thread_while_the_loop_saves(self, tmp_path: Path) -> None:
        """write_snapshot never touches LMDB, so saves go on meanwhile; adopt then deletes only
        what the snapshot covers."""
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 100), None, sync=True)
            big = snap(100, size=8 * 1024**2)
            out: list[Path] = []
            t = threading.Thread(target=lambda: out.append(store.write_snapshot(big)))
            t.start()
            for lo in range(101, 301, 10):
                store.save(entries(lo, lo + 9), None, sync=True)
            t.join()
            store.adopt_snapshot(big.meta, out[0], Index(90))
            got = state(store)
            assert got.snapshot_data == big.data and got.entries == tuple(entries(101, 300))
            assert store.stats().first_index == 91

    def test_large_compactions_are_spread_over_bounded_transactions(self, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """adopt deletes at most COMPACT_BATCH_ENTRIES; compact_step deletes the rest."""
        monkeypatch.setattr(lmdb_store, "COMPACT_BATCH_ENTRIES", 100)
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 450), None, sync=True)
            take(store, 400, compact_to=350)
            assert store.stats().first_index == 101
            steps = 0
            while store.compact_step():
                steps += 1
            assert (steps, store.stats().first_index) == (2, 351)
        with open_lmdb(tmp_path) as store:
            assert state(store).entries == tuple(entries(401, 450))

    def test_an_interrupted_compaction_leaves_a_valid_log(self, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """Closing before compact_step finished: the kept entries are still a valid tail."""
        monkeypatch.setattr(lmdb_store, "COMPACT_BATCH_ENTRIES", 100)
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 450), None, sync=True)
            take(store, 400, compact_to=400)
        with open_lmdb(tmp_path) as store:
            assert store.stats().first_index == 101
            assert state(store).entries == tuple(entries(401, 450))
            take(store, 450, compact_to=450)
            while store.compact_step():
                pass
            assert store.stats().first_index == 451

    def test_open_compacts_a_file_much_larger_than_its_data(self, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """After a burst the file keeps its size; the next open rewrites it to the live pages."""
        monkeypatch.setattr(lmdb_store, "COMPACT_MIN_BYTES", 1024**2)
        with open_lmdb(tmp_path) as store:
            for lo in range(1, 2001, 100):
                store.save(entries(lo, lo + 99, size=2000), None, sync=True)
            take(store, 2000, compact_to=2000)
            before = store.used_bytes()
        size_before = (tmp_path / "raft" / "data.mdb").stat().st_size
        with open_lmdb(tmp_path) as store:
            assert store.compacted_file is not None and store.compacted_file[0] == before
            assert store.used_bytes() < before / 4
            got = state(store)
            assert got.snapshot.index == 2000 and got.entries == ()
            store.save(entries(2001, 2001), None, sync=True)
        assert (tmp_path / "raft" / "data.mdb").stat().st_size < size_before / 4
        with open_lmdb(tmp_path) as store:
            assert store.compacted_file is None and [e.index for e in state(store).entries] == [2001]

    def test_a_leftover_compaction_copy_is_ignored_and_removed(self, tmp_path: Path) -> None:
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 5), None, sync=True)
        (tmp_path / ".compact.tmp").mkdir()
        (tmp_path / ".compact.tmp" / "data.mdb").write_bytes(b"partial copy")
        with open_lmdb(tmp_path) as store:
            assert len(state(store).entries) == 5
        assert not (tmp_path / ".compact.tmp").exists()

    def test_a_failed_snapshot_write_is_a_storage_error(self, tmp_path: Path) -> None:
        """A snapshot file that cannot be written (a full disk; for a user other than root, a
        read-only directory) is a StorageError naming the file, leaves no partial file behind,
        and the store writes the next one once the disk has room again."""
        snapshots = tmp_path / "snapshots"
        with open_lmdb(tmp_path) as store:
            with unwritable(snapshots) as why:
                before = set(snapshots.iterdir())
                with pytest.raises(StorageError, match="snapshot file") as failed:
                    store.write_snapshot(snap(1))
                assert set(snapshots.iterdir()) == before, f"left behind on a {why} directory"
            assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == (
                errno.ENOSPC if why == "full" else errno.EACCES), failed.value
            path = store.write_snapshot(snap(1))
            assert read_snapshot_header(path).meta == snap(1).meta


@contextmanager
def unwritable(directory: Path) -> Iterator[str]:
    """Make writing a new file in ``directory`` fail for real; yields how. As root, whom
    permissions do not stop (CI runs as root), a small tmpfs mounted over it and filled up:
    writes fail with ENOSPC. Otherwise the directory is made read-only: EACCES. Undone on exit."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o500)
        try:
            yield "read-only"
        finally:
            os.chmod(directory, 0o700)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(directory)], check=True,
                   capture_output=True, timeout=30)
    try:
        fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
        yield "full"
    finally:
        subprocess.run(["umount", str(directory)], check=True, capture_output=True, timeout=30)
