"""Storage: one contract for MemoryStorage and LmdbStorage, then what only the real disk can show.

The contract class runs against both backends (as etcd's storage tests and hashicorp's raft-mdb
do); the LMDB classes use the real lmdb package, real files and real processes.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from registry.raft import (
    Entry,
    EntryKind,
    HardState,
    Index,
    InitialState,
    Membership,
    NodeId,
    SnapshotMeta,
    Term,
)
from registry.storage import (
    CorruptStorage,
    DataDirLocked,
    IdentityMismatch,
    LmdbStorage,
    MemoryStorage,
    Storage,
    StorageError,
    StorageFull,
)
from registry.storage.codec import encode_entry, encode_hard_state, index_key

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = Membership(frozenset({NodeId(1), NodeId(2), NodeId(3)}))
NAME, CLUSTER = "n1", "c1"


def entries(lo: int, hi: int, term: int = 1, size: int = 8) -> list[Entry]:
    """Entries lo..hi inclusive, each with a payload naming its index and term."""
    return [Entry(Term(term), Index(i), EntryKind.NORMAL, f"{i}@{term};".encode().ljust(size, b"."))
            for i in range(lo, hi + 1)]


def hs(term: int, voted_for: int = 0, commit: int = 0) -> HardState:
    return HardState(Term(term), NodeId(voted_for), Index(commit))


def open_lmdb(path: Path, **kwargs: object) -> LmdbStorage:
    return LmdbStorage(path, node_name=kwargs.pop("node_name", NAME),  # type: ignore[arg-type]
                       cluster_id=kwargs.pop("cluster_id", CLUSTER), **kwargs)  # type: ignore[arg-type]


class Backend:
    """Opens one backend and restarts it the way a process restart would find it."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.store: Storage = MemoryStorage(node_name=NAME, cluster_id=CLUSTER) if kind == "memory" else open_lmdb(path)

    def restart(self) -> Storage:
        """Close cleanly, then open again."""
        self.store.close()
        if isinstance(self.store, MemoryStorage):
            self.store = self.store.reopen()
        else:
            self.store = open_lmdb(self.path)
        return self.store


@pytest.fixture(params=["memory", "lmdb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path / "data")
    yield b
    b.store.close()


def state(store: Storage) -> InitialState:
    return store.initial_state(MEMBERS)


class TestStorageContract:
    """What every Storage does, whatever keeps the bytes."""

    def test_empty_store_has_a_zero_hard_state_and_no_entries(self, backend: Backend) -> None:
        """A new store restores HardState(), no entries, and the log starts after (0, 0)."""
        got = state(backend.store)
        assert got == InitialState(SnapshotMeta(Index(0), Term(0), MEMBERS), HardState(), ())
        stats = backend.store.stats()
        assert (stats.first_index, stats.last_index) == (1, 0)
        assert (backend.store.node_name, backend.store.cluster_id) == (NAME, CLUSTER)

    def test_append(self, backend: Backend) -> None:
        """Batches append in index order; the restored log is every entry, contiguous."""
        backend.store.save(entries(1, 3), None, sync=True)
        backend.store.save(entries(4, 4), None, sync=True)
        backend.store.save(entries(5, 9, term=2), None, sync=True)
        assert state(backend.store).entries == tuple(entries(1, 4) + entries(5, 9, term=2))
        assert backend.store.stats().last_index == 9

    def test_keys_sort_as_indexes_past_byte_boundaries(self, backend: Backend) -> None:
        """Indexes 1..700 (across 255/256 and 511/512) come back in numeric order."""
        for lo in range(1, 701, 100):
            backend.store.save(entries(lo, lo + 99), None, sync=True)
        assert [e.index for e in state(backend.store).entries] == list(range(1, 701))

    def test_overwrite_truncates_the_suffix(self, backend: Backend) -> None:
        """Entries replace every stored entry at index >= entries[0].index, even a longer tail (§5.3)."""
        backend.store.save(entries(1, 6), None, sync=True)
        backend.store.save(entries(3, 4, term=2), None, sync=True)
        assert state(backend.store).entries == tuple(entries(1, 2) + entries(3, 4, term=2))
        assert backend.store.stats().last_index == 4
        backend.store.save(entries(1, 1, term=3), None, sync=True)  # the whole log
        assert state(backend.store).entries == tuple(entries(1, 1, term=3))
        backend.store.save(entries(2, 3, term=3), None, sync=True)  # and appending still works
        assert [e.index for e in state(backend.store).entries] == [1, 2, 3]

    def test_hard_state_round_trip(self, backend: Backend) -> None:
        """Term, vote and commit come back as saved, alone or with entries in the same save."""
        backend.store.save([], hs(3, 7), sync=True)
        assert state(backend.store).hard_state == hs(3, 7)
        backend.store.save(entries(1, 2, term=3), hs(3, 7, commit=2), sync=True)
        got = state(backend.store)
        assert (got.hard_state, got.entries) == (hs(3, 7, commit=2), tuple(entries(1, 2, term=3)))
        big = HardState(Term(2**63), NodeId(2**63 - 1), Index(2))
        backend.store.save([], big, sync=True)
        assert state(backend.store).hard_state == big

    def test_unsynced_save_is_visible_at_once(self, backend: Backend) -> None:
        """A save(sync=False) is read back by the same process, before any sync."""
        backend.store.save(entries(1, 3), hs(1, 1, 0), sync=True)
        backend.store.save([], hs(1, 1, 3), sync=False)
        assert state(backend.store).hard_state == hs(1, 1, 3)

    def test_reopen_after_close_returns_the_same_state(self, backend: Backend) -> None:
        """A clean close makes everything durable, unsynced saves included; a restart finds it all."""
        backend.store.save(entries(1, 5), hs(2, 3, 0), sync=True)
        backend.store.save(entries(4, 6, term=2), hs(2, 3, 4), sync=True)
        backend.store.save([], hs(2, 3, 6), sync=False)
        before = state(backend.store)
        after = state(backend.restart())
        assert after == before
        assert after.hard_state.commit == 6
        backend.store.save(entries(7, 7, term=2), None, sync=True)  # and it keeps working
        assert state(backend.restart()).entries[-1] == entries(7, 7, term=2)[0]

    def test_large_payloads(self, backend: Backend) -> None:
        """Multi-megabyte entries round-trip byte for byte, and can be truncated away."""
        blobs = [os.urandom(3 * 1024 * 1024), b"", os.urandom(5000), bytes(range(256)) * 4096]
        batch = [Entry(Term(1), Index(i + 1), EntryKind.NORMAL, b) for i, b in enumerate(blobs)]
        backend.store.save(batch, hs(1, 0, 0), sync=True)
        assert state(backend.restart()).entries == tuple(batch)
        backend.store.save(entries(2, 2, term=2), None, sync=True)
        assert state(backend.store).entries == (batch[0], *entries(2, 2, term=2))

    def test_noop_entries_keep_their_kind(self, backend: Backend) -> None:
        """Entry kinds survive storage: a leader's no-op stays a no-op."""
        batch = [Entry(Term(1), Index(1), EntryKind.NOOP), Entry(Term(1), Index(2), EntryKind.NORMAL, b"x")]
        backend.store.save(batch, None, sync=True)
        assert state(backend.restart()).entries == tuple(batch)

    @pytest.mark.parametrize("bad", [
        pytest.param(lambda: entries(5, 6), id="gap-after-last"),
        pytest.param(lambda: [entries(4, 4)[0], entries(6, 6)[0]], id="not-contiguous"),
        pytest.param(lambda: [Entry(Term(1), Index(0))], id="index-0"),
    ])
    def test_a_batch_that_would_break_contiguity_is_a_bug(self, backend: Backend,
                                                          bad: Callable[[], list[Entry]]) -> None:
        """A batch with a gap, or at or before the snapshot point, is a caller bug: AssertionError."""
        backend.store.save(entries(1, 3), None, sync=True)
        with pytest.raises(AssertionError):
            backend.store.save(bad(), None, sync=True)
        assert state(backend.store).entries == tuple(entries(1, 3))

    def test_a_closed_store_refuses_work_and_closes_twice(self, backend: Backend) -> None:
        """After close(), save() and initial_state() raise StorageError; close() is idempotent."""
        backend.store.close()
        backend.store.close()
        with pytest.raises(StorageError, match="closed"):
            backend.store.save(entries(1, 1), None, sync=True)
        with pytest.raises(StorageError, match="closed"):
            state(backend.store)


class TestMemoryStorageCrash:
    """MemoryStorage keeps the contract at its weakest, so tests find code that relies on more."""

    def test_crash_loses_unsynced_saves_only(self) -> None:
        """crash() drops every save after the last synced one, entries and hard state alike."""
        store = MemoryStorage()
        store.save(entries(1, 2), hs(1, 1, 0), sync=True)
        store.save(entries(3, 3), hs(1, 1, 2), sync=False)
        store.save([], hs(1, 1, 3), sync=False)
        assert store.stats().deferred_hard_state
        assert store.crash() == 2
        assert state(store) == InitialState(SnapshotMeta(Index(0), Term(0), MEMBERS), hs(1, 1, 0), tuple(entries(1, 2)))

    def test_a_synced_save_makes_earlier_unsynced_ones_durable(self) -> None:
        """Durability is in order: syncing a save syncs all saves before it (one fsync per Ready)."""
        store = MemoryStorage()
        store.save(entries(1, 2), None, sync=False)
        store.save(entries(2, 3, term=2), hs(2, 0, 1), sync=True)
        assert store.crash() == 0
        assert state(store).entries == tuple(entries(1, 1) + entries(2, 3, term=2))
        assert store.stats().syncs == 1

    def test_max_bytes_raises_storage_full_and_changes_nothing(self) -> None:
        """A save that would pass max_bytes raises StorageFull and writes nothing."""
        store = MemoryStorage(max_bytes=500)
        store.save(entries(1, 5, size=40), None, sync=True)
        with pytest.raises(StorageFull, match="max_bytes"):
            store.save(entries(6, 6, size=400), hs(1), sync=True)
        assert state(store).entries == tuple(entries(1, 5, size=40))
        assert state(store).hard_state == HardState()


# -- LMDB only: locks, identity, limits, damage, and real crashes --------------------------------


def run_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


OPEN_IN_CHILD = """
    import sys
    from pathlib import Path
    from registry.storage import LmdbStorage, DataDirLocked
    try:
        LmdbStorage(Path(sys.argv[1]), node_name="n1", cluster_id="c1")
    except DataDirLocked as e:
        print(e)
        sys.exit(3)
    print("opened")
"""

HOLD_IN_CHILD = """
    import sys
    from pathlib import Path
    from registry.storage import LmdbStorage
    store = LmdbStorage(Path(sys.argv[1]), node_name="n1", cluster_id="c1")
    print("holding", flush=True)
    sys.stdin.readline()
"""


class TestLmdbExclusiveLock:
    def test_second_open_in_the_same_process_is_refused(self, tmp_path: Path) -> None:
        """A second LmdbStorage on an open data directory is refused, naming this process's pid."""
        with open_lmdb(tmp_path):
            with pytest.raises(DataDirLocked) as err:
                open_lmdb(tmp_path)
            assert f"pid {os.getpid()}" in str(err.value)
            assert str(tmp_path) in str(err.value) and "--data-dir" in str(err.value)
        open_lmdb(tmp_path).close()  # released on close

    def test_another_process_is_refused_with_the_holders_pid(self, tmp_path: Path) -> None:
        """A separate process cannot open a data directory we hold; its error names our pid."""
        with open_lmdb(tmp_path):
            done = run_python(OPEN_IN_CHILD, str(tmp_path))
            assert done.returncode == 3, done.stderr
            assert f"in use by another registry process (pid {os.getpid()})" in done.stdout
        assert run_python(OPEN_IN_CHILD, str(tmp_path)).stdout.strip() == "opened"

    def test_the_lock_dies_with_its_process(self, tmp_path: Path) -> None:
        """While a child holds the directory we are refused (naming its pid); kill -9 frees it."""
        with subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_IN_CHILD), str(tmp_path)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
            try:
                assert child.stdout is not None and child.stdout.readline().strip() == "holding"
                with pytest.raises(DataDirLocked, match=f"pid {child.pid}\\b"):
                    open_lmdb(tmp_path)
            finally:
                child.kill()
                child.wait(timeout=10)
        open_lmdb(tmp_path).close()

    def test_data_dir_is_private_and_the_lock_file_holds_our_pid(self, tmp_path: Path) -> None:
        """The data directory is created mode 0700; LOCK holds the pid while open."""
        path = tmp_path / "a" / "b"
        with open_lmdb(path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700
            assert (path / "LOCK").read_text().strip() == str(os.getpid())

    def test_a_data_dir_that_is_a_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        with pytest.raises(StorageError, match="--data-dir"):
            open_lmdb(tmp_path / "file")


class TestLmdbIdentity:
    @pytest.mark.parametrize("name, cluster", [("n2", CLUSTER), (NAME, "c2"), ("n2", "c2")])
    def test_a_data_dir_of_another_node_or_cluster_is_refused(self, tmp_path: Path, name: str, cluster: str) -> None:
        """A data directory belongs to one node name and cluster; the error names stored and requested."""
        open_lmdb(tmp_path).close()
        with pytest.raises(IdentityMismatch) as err:
            open_lmdb(tmp_path, node_name=name, cluster_id=cluster)
        message = str(err.value)
        assert f"node {NAME!r} of cluster {CLUSTER!r}" in message
        assert f"node {name!r} of cluster {cluster!r}" in message
        open_lmdb(tmp_path).close()  # the refusal released the lock and changed nothing


class TestLmdbLimits:
    def test_map_full_raises_storage_full_and_keeps_what_was_committed(self, tmp_path: Path) -> None:
        """With a 64 KiB map, saves eventually raise StorageFull; after a reopen everything committed
        before is there, and a larger map lets writes go on."""
        store = open_lmdb(tmp_path, map_size_bytes=64 * 1024)
        committed: list[Entry] = []
        with pytest.raises(StorageFull) as err:
            for i in range(1, 1000):
                batch = entries(i, i, size=300)
                store.save(batch, hs(1, 1, max(0, i - 1)), sync=True)
                committed += batch
        assert "--max-db-bytes" in str(err.value) and f"of {64 * 1024} bytes" in str(err.value)
        assert len(committed) > 3
        assert state(store).entries == tuple(committed)  # still readable in this process
        store.close()
        with open_lmdb(tmp_path, map_size_bytes=64 * 1024) as again:
            got = state(again)
            assert got.entries == tuple(committed)
            assert got.hard_state == hs(1, 1, len(committed) - 1)
        with open_lmdb(tmp_path, map_size_bytes=1024 * 1024) as bigger:
            bigger.save(entries(len(committed) + 1, len(committed) + 5, size=300), None, sync=True)
            assert state(bigger).entries[-1].index == len(committed) + 5

    def test_usage_warnings_at_80_and_90_percent_each_once(self, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
        """A warning is logged once the map is 80% used and once more at 90%, not on every save."""
        logger = logging.getLogger("test.storage.usage")
        map_size = 256 * 1024
        store = open_lmdb(tmp_path, map_size_bytes=map_size, logger=logger)
        fractions = []
        with caplog.at_level(logging.WARNING, logger=logger.name):
            try:
                for i in range(1, 1000, 4):  # each save adds about 3% of the map
                    store.save(entries(i, i + 3, size=1500), None, sync=True)
                    fractions.append(store.used_bytes() / map_size)
            except StorageFull:
                pass
        store.close()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert max(fractions) >= 0.9
        assert len(warnings) == 2, warnings
        assert "--max-db-bytes" in warnings[0] and str(tmp_path) in warnings[0]
        assert [int(w.split("% full")[0].rsplit(" ", 1)[1]) // 10 for w in warnings] == [8, 9]

    def test_stats_report_usage_and_positions(self, tmp_path: Path) -> None:
        """stats() gives used and map bytes, the log's span and how many writes were made durable."""
        with open_lmdb(tmp_path, map_size_bytes=1024 * 1024) as store:
            store.save(entries(1, 10), hs(1, 1, 0), sync=True)
            store.save([], hs(1, 1, 10), sync=False)
            stats = store.stats()
            assert stats.map_size_bytes == 1024 * 1024
            assert 0 < stats.used_bytes == store.used_bytes() <= stats.map_size_bytes
            assert (stats.first_index, stats.last_index, stats.saves, stats.syncs) == (1, 10, 1, 1)
            assert stats.deferred_hard_state


class TestLmdbDeferredHardState:
    def test_commit_only_hard_state_waits_for_the_next_write(self, tmp_path: Path) -> None:
        """A commit-only save(sync=False) writes nothing; the next save that writes carries it."""
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 3), hs(1, 1, 0), sync=True)
            store.save([], hs(1, 1, 2), sync=False)
            assert store.stats().saves == 1 and store.stats().deferred_hard_state
            store.save(entries(4, 4), None, sync=True)  # no hard state of its own: the deferred one goes along
            assert store.stats().saves == 2 and not store.stats().deferred_hard_state
            store.save([], hs(1, 1, 3), sync=False)
            store.save([], None, sync=True)  # an empty synced save flushes a deferred one
            assert store.stats().saves == 3 and not store.stats().deferred_hard_state
        with open_lmdb(tmp_path) as reopened:
            assert state(reopened).hard_state == hs(1, 1, 3)

    def test_a_term_or_vote_change_is_written_even_when_sync_is_false(self, tmp_path: Path) -> None:
        """Nothing voted for is ever left unwritten: a term or vote change is durable whatever `sync` says."""
        with open_lmdb(tmp_path) as store:
            store.save([], hs(2, 0, 0), sync=False)
            store.save([], hs(2, 3, 0), sync=False)
            assert store.stats().saves == 2 and not store.stats().deferred_hard_state


class TestLmdbCorruption:
    def poke(self, path: Path, db: bytes, key: bytes, change: Callable[[bytes | None], bytes | None]) -> None:
        """Rewrite one stored value behind the storage's back (None deletes it)."""
        env = lmdb.open(str(path / "raft"), max_dbs=2)
        try:
            handle = env.open_db(db)
            with env.begin(write=True, db=handle) as txn:
                new = change(txn.get(key))
                if new is None:
                    txn.delete(key)
                else:
                    txn.put(key, new)
        finally:
            env.close()

    @pytest.fixture
    def written(self, tmp_path: Path) -> Path:
        with open_lmdb(tmp_path) as store:
            store.save(entries(1, 4), hs(1, 1, 3), sync=True)
        return tmp_path

    def test_a_flipped_bit_in_an_entry_is_refused_naming_the_index(self, written: Path) -> None:
        """An entry whose bytes changed fails its checksum: CorruptStorage names the index."""
        self.poke(written, b"log", index_key(3), lambda v: v[:-1] + bytes([v[-1] ^ 1]))  # type: ignore[index]
        with open_lmdb(written) as store, pytest.raises(CorruptStorage, match="index 3: log entry fails its checksum"):
            state(store)

    def test_garbage_entry_bytes_are_refused(self, written: Path) -> None:
        self.poke(written, b"log", index_key(2), lambda v: b"\x07" + b"garbage" * 10)
        with open_lmdb(written) as store, pytest.raises(CorruptStorage, match="index 2.*format version 7") as err:
            state(store)
        assert "backup" in str(err.value)

    def test_a_missing_entry_is_a_gap(self, written: Path) -> None:
        """A log with a hole is refused, naming the first missing index."""
        self.poke(written, b"log", index_key(2), lambda v: None)
        with open_lmdb(written) as store, pytest.raises(CorruptStorage, match="gap at index 2"):
            state(store)

    def test_an_entry_under_the_wrong_key_is_refused(self, written: Path) -> None:
        with open_lmdb(written) as store:
            moved = store.initial_state(MEMBERS).entries[3]  # index 4
        self.poke(written, b"log", index_key(2), lambda v: encode_entry(moved))
        with open_lmdb(written) as store, pytest.raises(CorruptStorage, match="key 2 says index 4"):
            state(store)

    def test_a_damaged_hard_state_is_refused_at_open(self, written: Path) -> None:
        self.poke(written, b"meta", b"hard_state", lambda v: v[:10])  # type: ignore[index]
        for _ in range(2):  # the refusal released the lock: a second try is refused the same way
            with pytest.raises(CorruptStorage, match="hard state"):
                open_lmdb(written)

    def test_a_commit_beyond_the_log_is_refused(self, written: Path) -> None:
        """A hard state committing an index the log lacks means entries were lost."""
        self.poke(written, b"meta", b"hard_state", lambda v: encode_hard_state(hs(1, 1, 9)))
        with open_lmdb(written) as store, pytest.raises(CorruptStorage, match="commits index 9"):
            state(store)

    def test_a_file_that_is_not_lmdb_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "raft").mkdir()
        (tmp_path / "raft" / "data.mdb").write_bytes(b"not a database" * 1000)
        with pytest.raises(CorruptStorage, match="damaged"):
            open_lmdb(tmp_path)


SAVE_THEN_HANG = """
    import sys, time
    from pathlib import Path
    from registry.raft import Entry, HardState, Index, Term, NodeId
    from registry.storage import LmdbStorage
    store = LmdbStorage(Path(sys.argv[1]), node_name="n1", cluster_id="c1")
    batch = [Entry(Term(2), Index(i), data=b"payload-%d" % i) for i in range(1, 51)]
    store.save(batch, HardState(Term(2), NodeId(5), Index(40)), sync=True)
    store.save([], HardState(Term(2), NodeId(5), Index(50)), sync=False)
    print("saved", flush=True)
    time.sleep(60)
"""


class TestLmdbKill9:
    def test_kill_9_right_after_a_synced_save_keeps_it(self, tmp_path: Path) -> None:
        """A process killed with SIGKILL right after save(sync=True) returned loses nothing of it;
        the deferred commit-only hard state after it is lost, as documented."""
        with subprocess.Popen([sys.executable, "-c", textwrap.dedent(SAVE_THEN_HANG), str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) as child:
            try:
                assert child.stdout is not None and child.stdout.readline().strip() == "saved"
                os.kill(child.pid, signal.SIGKILL)
                assert child.wait(timeout=10) == -signal.SIGKILL
            finally:
                child.kill()
        with open_lmdb(tmp_path) as store:
            got = state(store)
        assert got.hard_state == HardState(Term(2), NodeId(5), Index(40))
        assert [(e.index, e.data) for e in got.entries] == [(i, b"payload-%d" % i) for i in range(1, 51)]
