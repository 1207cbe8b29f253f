"""LmdbStorage: the node's Raft log and hard state in LMDB, in the node's data directory.

Layout of a data directory:

    <data-dir>/LOCK             flock()ed while a process uses the directory; holds its pid
    <data-dir>/raft/data.mdb    the LMDB environment (and its lock.mdb), with two named dbs:
        log    8-byte big-endian index -> codec entry       (cursor order == index order)
        meta   b"format"     -> one byte, the layout version
               b"node_name"  -> UTF-8   \\ identity: written by the first open,
               b"cluster_id" -> UTF-8   /  compared by every later one
               b"hard_state" -> codec hard state (term, voted_for, commit)
               b"log_start"  -> codec (index, term) the log starts after, (0, 0) before the
                                first snapshot; `log` holds exactly the indexes after it. It is at
                                or below the snapshot index: entries kept behind the snapshot
                                for followers only slightly behind are in the log but are never
                                restored (initial_state returns the entries after the snapshot)
               b"snapshot"   -> codec snapshot record: index, term, membership, file name, size
                                and CRC-32 of the current snapshot; absent until the first one
    <data-dir>/snapshots/snap-<index>-<term>.snap   snapshot files (storage/snapfile.py); only
                                the one the record names is current. A file is written and made
                                durable BEFORE the transaction that records it, and older files
                                are deleted only after it, so a crash anywhere leaves the old
                                snapshot with its log or the new one with its log. At open, temp
                                files and files no record names (written, never adopted) are removed.

Disk bound: LMDB reuses the pages that deleted entries free, so with snapshots the file stops
growing at roughly the largest log between two snapshots plus the free pages of a few
transactions. It never shrinks by itself, though: after the log once grew large (a burst of
writes, or a node that ran without snapshots), open() rewrites the file with a compacting copy
when it is over COMPACT_MIN_BYTES and more than COMPACT_RATIO times the live pages (see
_maybe_compact_file): at open, because then no transaction can run and the copy costs only a
start-up delay proportional to the live data.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import lmdb

from registry.raft import Entry, HardState, Index, InitialState, Membership, Snapshot, SnapshotMeta, Term

from .base import (
    StoreIdentity,
    CorruptStorage,
    DataDirLocked,
    IdentityMismatch,
    StorageError,
    StorageFull,
    StorageStats,
    check_batch,
)
from .codec import (
    FORMAT_VERSION,
    SnapshotRecord,
    decode_entry,
    decode_hard_state,
    decode_log_start,
    decode_snapshot_record,
    encode_entry,
    encode_hard_state,
    encode_log_start,
    encode_snapshot_record,
    index_key,
    key_index,
)
from .snapfile import SnapshotFileError, fsync_dir, read_snapshot_file, read_snapshot_header, write_snapshot_file

LOCK_FILE = "LOCK"
ENV_DIR = "raft"
LOG_DB = b"log"
META_DB = b"meta"
FORMAT_KEY = b"format"
NODE_NAME_KEY = b"node_name"
CLUSTER_ID_KEY = b"cluster_id"
HARD_STATE_KEY = b"hard_state"
LOG_START_KEY = b"log_start"
SNAPSHOT_KEY = b"snapshot"
SNAPSHOT_DIR = "snapshots"
_SNAPSHOT_NAME = re.compile(r"snap-(\d{20})-(\d{20})\.snap")

#: adopt_snapshot() deletes at most this many log entries per transaction; compact_step()
#: deletes the rest, a batch per call, so no transaction on the node loop grows with the log.
COMPACT_BATCH_ENTRIES = 5_000
#: At open, a file over COMPACT_MIN_BYTES holding more than COMPACT_RATIO times its live pages
#: is rewritten with a compacting copy.
COMPACT_MIN_BYTES = 64 * 1024**2
COMPACT_RATIO = 4

_T = TypeVar("_T")

#: Fractions of map_size at which a warning is logged, each once per open.
WARN_FRACTIONS = (0.8, 0.9)

# LMDB errors that mean the files themselves are damaged, as opposed to an I/O failure.
_CORRUPTION_ERRORS = (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError, lmdb.BadChecksumError)


class LmdbStorage(StoreIdentity):
    """The Storage protocol over LMDB. One object per process per data directory; one thread.

    Durability: the environment is opened with LMDB's own durable commit (`sync=True`,
    `metasync=True`): a commit flushes the data pages, then writes and flushes the meta page
    that makes them visible. So when save() returns, its entries and hard state are on disk, in
    one transaction: one durable commit per Ready however many entries it holds (group commit).

    NB: not `sync=False` plus `env.sync(True)` after each commit, although that costs one flush
    instead of two. Without LMDB's ordering the kernel may write the new meta page before the
    data pages it points to; a power loss inside that window leaves a meta page pointing at
    garbage, and LMDB documents that NOSYNC "can corrupt the database" on a system crash. A Raft
    log that can be corrupted by a power cut is worse than one that is twice as slow to flush;
    bench/storage.py measures both.

    NB: deferred hard state. A save(sync=False) carrying only a hard state whose term and vote
    equal the durable ones (the core's only unsynced case: the commit index moved) writes
    nothing: the hard state is kept in memory and written in the transaction of the next save
    that writes, or by close(). Losing it in a crash is safe, as the commit index is volatile
    state in Raft (figure 2) that the leader tells us again, and it spares a durable commit per
    heartbeat-driven commit. Everything else is written durably even when `sync=False`: entries,
    and any change of term or vote (nothing voted for or acknowledged before it is on disk).
    initial_state() in the same process sees the deferred value; a kill -9 loses it.

    After a write fails for any reason but StorageFull, every later save() is refused: after a
    failed flush the kernel may have dropped the dirty pages, so a retry could "succeed"
    without the data (the PostgreSQL fsync lesson). The node must stop.
    """

    def __init__(
        self,
        path: Path,
        *,
        node_name: str,
        cluster_id: str,
        map_size_bytes: int = 2 * 1024**3,
        logger: logging.Logger | None = None,
    ) -> None:
        if not node_name or not cluster_id:
            raise ValueError(f"node_name and cluster_id must not be empty (got {node_name!r}, {cluster_id!r})")
        if map_size_bytes <= 0:
            raise ValueError(f"map_size_bytes must be positive, got {map_size_bytes}")
        self.path = Path(path)
        self._node_name = node_name
        self._cluster_id = cluster_id
        self._logger = logger or logging.getLogger("registry.storage")
        self._lock_fd: int | None = None
        self._env: lmdb.Environment | None = None
        self._failed: str | None = None  # why writes are refused, after a failed write
        # Invariant: _start_index <= _last_index; the log db holds exactly (_start_index, _last_index].
        self._start_index = Index(0)
        self._start_term = Term(0)
        self._last_index = Index(0)
        self._durable_hard_state = HardState()
        self._deferred_hard_state: HardState | None = None  # commit-only, not yet written
        self._warned_fraction = 0.0
        self._saves = 0
        self._syncs = 0
        self._snap_dir = self.path / SNAPSHOT_DIR
        self._snapshot: SnapshotRecord | None = None  # the current durable snapshot
        self._snapshot_members: bytes | None = None  # the member directory its file records, if any
        # Invariant: _start_index <= _compact_goal <= snapshot index; entries up to the goal may go.
        self._compact_goal = Index(0)
        self._pending_start: tuple[Index, Term] | None = None  # set by _delete_prefix inside a transaction
        self.compacted_file: tuple[int, int] | None = None  # (bytes before, after) if open() compacted
        try:
            self._lock_fd = _lock_data_dir(self.path)
            self._open_env(map_size_bytes)
            self._maybe_compact_file(map_size_bytes)
            self._clean_snapshot_dir()
        except BaseException:
            self._release()
            raise
        self._logger.info("opened %s as node %s of cluster %s: log (%d, %d], %d of %d bytes used",
                          self.path, node_name, cluster_id, self._start_index, self._last_index,
                          self.used_bytes(), self._map_size)
        self._check_usage()

    # -- opening ----------------------------------------------------------------------------------

    def _open_env(self, map_size_bytes: int) -> None:
        env_dir = self.path / ENV_DIR
        try:
            env_dir.mkdir(mode=0o700, exist_ok=True)
            self._env = lmdb.open(str(env_dir), map_size=map_size_bytes, max_dbs=2, subdir=True,
                                  sync=True, metasync=True, mode=0o600, create=True, lock=True)
            self._log_db = self._env.open_db(LOG_DB)
            self._meta_db = self._env.open_db(META_DB)
        except _CORRUPTION_ERRORS as e:
            raise CorruptStorage(self._damaged(f"LMDB refuses to open it: {e}")) from e
        except lmdb.VersionMismatchError as e:
            raise StorageError(f"{env_dir} was written by an incompatible LMDB version ({e}); "
                               "run the registry version that created it") from e
        except (lmdb.Error, OSError) as e:
            raise StorageError(f"cannot open the Raft log in {env_dir}: {e}; check the disk, "
                               "its free space and the permissions of the data directory") from e
        # Reader slots of a process killed mid-read would pin old pages, so the file could only grow.
        self._env.reader_check()
        info, stat = self._env.info(), self._env.stat()
        self._page_bytes = stat["psize"]
        self._map_size = info["map_size"]  # LMDB rounds up to pages, or to the file's size
        created = self._load_or_create_identity()
        if created:
            fsync_dir(env_dir)  # make the new files' directory entries durable too
            fsync_dir(self.path)
        self._load_positions()

    def _load_or_create_identity(self) -> bool:
        """Compare the stored identity with ours, or store ours on first use. True if created."""
        env = self._require_env()
        keys = (FORMAT_KEY, NODE_NAME_KEY, CLUSTER_ID_KEY, HARD_STATE_KEY, LOG_START_KEY)
        with env.begin(db=self._meta_db) as txn:  # NB: SNAPSHOT_KEY is optional: absent until the first
            stored = {k: txn.get(k) for k in keys}
            log_entries = txn.stat(self._log_db)["entries"]
        if all(v is None for v in stored.values()) and log_entries == 0:
            with env.begin(db=self._meta_db, write=True) as txn:  # NB: we hold the lock: no race
                txn.put(FORMAT_KEY, bytes([FORMAT_VERSION]))
                txn.put(NODE_NAME_KEY, self._node_name.encode())
                txn.put(CLUSTER_ID_KEY, self._cluster_id.encode())
                txn.put(HARD_STATE_KEY, encode_hard_state(HardState()))
                txn.put(LOG_START_KEY, encode_log_start(0, 0))
            self._logger.info("initialised %s for node %s of cluster %s", self.path, self._node_name, self._cluster_id)
            return True
        missing = [k.decode() for k, v in stored.items() if v is None]
        if missing:
            raise CorruptStorage(self._damaged(f"the meta records {missing} are missing"))
        if stored[FORMAT_KEY] != bytes([FORMAT_VERSION]):
            raise StorageError(f"{self.path} has storage format {stored[FORMAT_KEY]!r}, this registry reads "
                               f"format {FORMAT_VERSION}; run the registry version that created it")
        name = stored[NODE_NAME_KEY].decode(errors="replace")  # type: ignore[union-attr]
        cluster = stored[CLUSTER_ID_KEY].decode(errors="replace")  # type: ignore[union-attr]
        if (name, cluster) != (self._node_name, self._cluster_id):
            raise IdentityMismatch(
                f"data directory {self.path} belongs to node {name!r} of cluster {cluster!r}, but was opened "
                f"as node {self._node_name!r} of cluster {self._cluster_id!r}; start it with the name and "
                "members (or cluster id) it was created with, or choose another --data-dir")
        return False

    def _load_positions(self) -> None:
        env = self._require_env()
        with env.begin(buffers=True) as txn:
            self._durable_hard_state = self._decode(decode_hard_state, txn.get(HARD_STATE_KEY, db=self._meta_db),
                                                    "the hard state")
            self._start_index, self._start_term = self._decode(
                decode_log_start, txn.get(LOG_START_KEY, db=self._meta_db), "the log start")
            cursor = txn.cursor(db=self._log_db)
            self._last_index = key_index(cursor.key()) if cursor.last() else self._start_index
            raw = txn.get(SNAPSHOT_KEY, db=self._meta_db)
            self._snapshot = None if raw is None else self._decode(decode_snapshot_record, raw, "the snapshot record")
        snapshot_index = self._snapshot.meta.index if self._snapshot is not None else 0
        if not self._start_index <= snapshot_index <= self._last_index:
            raise CorruptStorage(self._damaged(
                f"the log holds ({self._start_index}, {self._last_index}] but the snapshot is at index "
                f"{snapshot_index}: the log must start at or before the snapshot and reach it"))
        if self._snapshot is not None:
            self._check_snapshot_file(self._snapshot)
        self._compact_goal = self._start_index

    def _check_snapshot_file(self, record: SnapshotRecord) -> None:
        """The file the record names exists and its header agrees with the record."""
        path = self._snap_dir / record.file_name
        try:
            header = read_snapshot_header(path)
        except FileNotFoundError:
            raise CorruptStorage(self._damaged(f"the snapshot file {path} is missing")) from None
        except (SnapshotFileError, OSError) as e:
            raise CorruptStorage(self._damaged(f"the snapshot file is unreadable: {e}")) from None
        if (header.meta, header.size, header.crc32) != (record.meta, record.size, record.crc32):
            raise CorruptStorage(self._damaged(
                f"the snapshot file {path} holds index {header.meta.index} term {header.meta.term}, "
                f"{header.size} bytes, but the log recorded index {record.meta.index} term {record.meta.term}, "
                f"{record.size} bytes"))
        self._snapshot_members = header.members

    def _clean_snapshot_dir(self) -> None:
        """Remove temp files and snapshot files no record names (a crash before adopting them, or
        before deleting the older file)."""
        self._snap_dir.mkdir(mode=0o700, exist_ok=True)
        keep = self._snapshot.file_name if self._snapshot is not None else None
        removed = []
        for entry in self._snap_dir.iterdir():
            name = entry.name
            if name != keep and (_SNAPSHOT_NAME.fullmatch(name) or (name.startswith(".") and ".tmp-" in name)):
                entry.unlink(missing_ok=True)
                removed.append(name)
        if removed:
            fsync_dir(self._snap_dir)
            self._logger.info("removed %d snapshot files no record names: %s", len(removed), ", ".join(sorted(removed)))

    def _live_bytes(self) -> int:
        """Bytes of the pages that hold data (every db's branch, leaf and overflow pages)."""
        env = self._require_env()

        def pages(stat: dict[str, int]) -> int:
            return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        with env.begin() as txn:
            total = pages(env.stat()) + pages(txn.stat(self._log_db)) + pages(txn.stat(self._meta_db))
        return (total + 2) * self._page_bytes  # + the two meta pages

    def _maybe_compact_file(self, map_size_bytes: int) -> None:
        """Rewrite the LMDB file without its free pages when it is much larger than its data.

        NB: crash-safe by construction: the copy is written and fsynced under a temporary name,
        then renamed over data.mdb (atomic), so a crash leaves the old file or the new one."""
        tmp_dir = self.path / ".compact.tmp"
        if tmp_dir.exists():  # a copy a crash interrupted: never renamed, so never used
            for f in tmp_dir.iterdir():
                f.unlink()
            tmp_dir.rmdir()
        used, live = self.used_bytes(), self._live_bytes()
        if used < COMPACT_MIN_BYTES or used < COMPACT_RATIO * live:
            return
        env_dir = self.path / ENV_DIR
        started = time.monotonic()
        tmp_dir.mkdir(mode=0o700)
        env = self._require_env()
        env.copy(str(tmp_dir), compact=True)
        copied = tmp_dir / "data.mdb"
        fd = os.open(copied, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        env.close()
        self._env = None
        os.replace(copied, env_dir / "data.mdb")
        fsync_dir(env_dir)
        tmp_dir.rmdir()
        self._open_env(map_size_bytes)
        after = self.used_bytes()
        self.compacted_file = (used, after)
        self._logger.info("compacted %s: %d -> %d bytes (%d live) in %.2f s", env_dir / "data.mdb", used, after,
                          live, time.monotonic() - started)

    # -- the protocol -----------------------------------------------------------------------------

    def initial_state(self, membership: Membership) -> InitialState:
        """Read back the snapshot (its file checked whole), the hard state and the log after the
        snapshot, validating each entry and contiguity."""
        env = self._require_env()
        record = self._snapshot
        data = b""
        start_index, start_term = self._start_index, self._start_term
        if record is not None:
            path = self._snap_dir / record.file_name
            try:
                snapshot = read_snapshot_file(path)
            except (SnapshotFileError, OSError) as e:
                raise CorruptStorage(self._damaged(f"the snapshot file is unreadable: {e}")) from None
            if (snapshot.meta, len(snapshot.data)) != (record.meta, record.size):
                raise CorruptStorage(self._damaged(f"the snapshot file {path} does not hold the recorded snapshot"))
            data, membership = snapshot.data, record.meta.membership
            start_index, start_term = record.meta.index, record.meta.term
        entries: list[Entry] = []
        expected, previous_term = start_index + 1, start_term
        with env.begin(db=self._log_db, buffers=True) as txn:
            hard_state = self._decode(decode_hard_state, txn.get(HARD_STATE_KEY, db=self._meta_db), "the hard state")
            if record is not None and record.meta.index > self._start_index:
                raw = txn.get(index_key(record.meta.index))
                if raw is not None and self._decode(decode_entry, raw, "the log entry at the snapshot index").term \
                        != record.meta.term:
                    raise CorruptStorage(self._damaged(
                        f"the log entry at the snapshot index {record.meta.index} has another term than the "
                        f"snapshot ({record.meta.term})"))
            cursor = txn.cursor()
            # NB: set_range fails when nothing follows the snapshot; iternext() would then start
            # at the first key (the kept tail), so iterate nothing.
            for key, value in cursor.iternext() if cursor.set_range(index_key(expected)) else ():
                index = key_index(key)
                if index != expected:
                    what = (f"index {expected} is missing (the next stored index is {index})" if index > expected
                            else f"index {index} is stored, but the log starts after index {start_index}")
                    raise CorruptStorage(self._damaged(f"the log has a gap at index {expected}: {what}"))
                entry = self._decode(decode_entry, value, f"the log entry at index {index}")
                if entry.index != index:
                    raise CorruptStorage(self._damaged(f"the log entry under key {index} says index {entry.index}"))
                if entry.term < previous_term:
                    raise CorruptStorage(self._damaged(
                        f"the log entry at index {index} has term {entry.term}, below term {previous_term} "
                        "before it"))
                entries.append(entry)
                expected, previous_term = Index(expected + 1), entry.term
        if self._deferred_hard_state is not None:
            hard_state = self._deferred_hard_state
        last = max(start_index, entries[-1].index if entries else 0)
        if hard_state.commit > last:
            raise CorruptStorage(self._damaged(
                f"the hard state commits index {hard_state.commit}, beyond the last log index {last}"))
        return InitialState(SnapshotMeta(start_index, start_term, membership), hard_state, tuple(entries), data)

    def save(self, entries: Sequence[Entry], hard_state: HardState | None, *, sync: bool,
             snapshot: Snapshot | None = None) -> None:
        """Write `entries` (replacing the stored suffix from entries[0].index) and `hard_state` in
        one transaction, durable on return; a commit-only hard state with sync=False is deferred
        (see the class docstring). With `snapshot`, install it first (see _install). Raises
        StorageFull (nothing written) or StorageError."""
        self._require_env()
        self._require_writable()
        if snapshot is not None:
            self._install(snapshot, entries, hard_state)
            return
        check_batch(entries, self.snapshot_index, self._last_index)
        if not entries:
            if hard_state is None:
                if not (sync and self._deferred_hard_state is not None):
                    return
            elif not sync and (hard_state.term, hard_state.voted_for) == (
                    self._durable_hard_state.term, self._durable_hard_state.voted_for):
                self._deferred_hard_state = hard_state
                return
        self._write(entries, hard_state if hard_state is not None else self._deferred_hard_state)

    def _require_writable(self) -> None:
        if self._failed is not None:
            raise StorageError(f"refusing to write to {self.path}: an earlier write failed ({self._failed}); "
                               "restart the node")

    # -- snapshots --------------------------------------------------------------------------------

    @property
    def snapshot_members(self) -> bytes | None:
        """The member directory recorded with the current snapshot (opaque bytes: the node's
        registry/node/members.py encoding), or None: no snapshot, one written before the field
        existed, or one installed from a leader."""
        return self._snapshot_members

    def snapshot_path(self, meta: SnapshotMeta) -> Path:
        return self._snap_dir / f"snap-{meta.index:020d}-{meta.term:020d}.snap"

    def write_snapshot(self, snapshot: Snapshot, *, kind: str = "node", members: bytes | None = None) -> Path:
        """Write `snapshot` to its file, durably, with the node's member directory `members`
        (opaque here; see snapfile.py) when given; it is not current until adopt_snapshot().

        Thread-safe: it touches only its own file (and the directory entry), never LMDB, so a
        thread may write while the node loop saves."""
        path = self.snapshot_path(snapshot.meta)
        try:
            write_snapshot_file(path, snapshot, kind=kind, members=members)
        except OSError as e:
            raise StorageError(f"writing the snapshot file {path} failed: {e}; check the disk") from e
        return path

    def discard_snapshot(self, path: Path) -> None:
        """Remove a file write_snapshot() made that will not be adopted (never the current one)."""
        if self._snapshot is not None and Path(path).name == self._snapshot.file_name:
            return
        Path(path).unlink(missing_ok=True)

    def _install(self, snapshot: Snapshot, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        """A leader's snapshot replaces the whole log and the older snapshot (Raft figure 13,
        steps 6-8), and `entries` follow it; durable on return.

        Order: the file is written and fsynced first; then ONE transaction records it, deletes
        every log entry, moves the log start to the snapshot and writes the entries and hard
        state; then the older file is deleted. A crash before the commit leaves the old state and
        an unreferenced new file (removed at the next open)."""
        meta = snapshot.meta
        assert meta.index > self.snapshot_index, (
            f"installing a snapshot at {meta.index}, not after the current one at {self.snapshot_index}")
        assert meta.index > 0 and len(snapshot.data) > 0, "a snapshot needs an index and data"
        check_batch(entries, meta.index, meta.index)
        path = self.write_snapshot(snapshot, kind="install")
        header = read_snapshot_header(path)
        record = SnapshotRecord(meta, path.name, header.size, header.crc32)
        hard_state = hard_state if hard_state is not None else self._deferred_hard_state

        def work(txn: lmdb.Transaction) -> None:
            txn.put(SNAPSHOT_KEY, encode_snapshot_record(record), db=self._meta_db)
            txn.drop(self._log_db, delete=False)  # every entry, a kept tail and a conflicting suffix too
            txn.put(LOG_START_KEY, encode_log_start(meta.index, meta.term), db=self._meta_db)
            if entries:
                _, added = txn.cursor(db=self._log_db).putmulti(
                    [(index_key(e.index), encode_entry(e)) for e in entries], append=True)
                assert added == len(entries), f"only {added} of {len(entries)} entries were appended"
            if hard_state is not None:
                txn.put(HARD_STATE_KEY, encode_hard_state(hard_state), db=self._meta_db)

        try:
            self._transact(work)
        except BaseException:
            self.discard_snapshot(path)
            raise
        old, self._snapshot = self._snapshot, record
        self._snapshot_members = header.members
        self._start_index, self._start_term = meta.index, meta.term
        self._compact_goal = meta.index
        self._last_index = entries[-1].index if entries else meta.index
        if hard_state is not None:
            self._durable_hard_state = hard_state
            self._deferred_hard_state = None
        self._remove_old_snapshot(old)

    def adopt_snapshot(self, meta: SnapshotMeta, path: Path, compact_to: Index) -> None:
        """Make the snapshot write_snapshot() wrote at `path` current, and delete log entries
        up to `compact_to` (the caller keeps a tail behind meta.index for slow followers).

        One small transaction, durable on return: the record, the log start, and at most
        COMPACT_BATCH_ENTRIES deletions; compact_step() deletes what is left."""
        self._require_env()
        self._require_writable()
        assert meta.index > self.snapshot_index, (
            f"adopting a snapshot at {meta.index}, not after the current one at {self.snapshot_index}")
        assert compact_to <= meta.index <= self._last_index, (
            f"compact_to {compact_to} <= snapshot {meta.index} <= last stored index {self._last_index} is broken")
        path = Path(path)
        assert path.parent == self._snap_dir, f"{path} is not in {self._snap_dir}"
        try:
            header = read_snapshot_header(path)
        except (SnapshotFileError, OSError) as e:
            raise StorageError(f"the snapshot file {path} written for adoption is unreadable: {e}") from e
        assert header.meta == meta, f"{path} holds {header.meta}, not {meta}"
        record = SnapshotRecord(meta, path.name, header.size, header.crc32)
        self._compact_goal = Index(max(self._start_index, compact_to))
        hard_state = self._deferred_hard_state

        def work(txn: lmdb.Transaction) -> None:
            txn.put(SNAPSHOT_KEY, encode_snapshot_record(record), db=self._meta_db)
            if hard_state is not None:
                txn.put(HARD_STATE_KEY, encode_hard_state(hard_state), db=self._meta_db)
            self._delete_prefix(txn)

        self._transact(work)
        old, self._snapshot = self._snapshot, record
        self._snapshot_members = header.members
        if hard_state is not None:
            self._durable_hard_state = hard_state
            self._deferred_hard_state = None
        self._remove_old_snapshot(old)

    def compact_step(self) -> bool:
        """Delete up to COMPACT_BATCH_ENTRIES more entries that a snapshot covers; returns
        whether entries are still waiting to be deleted. For the node loop, when idle."""
        if self._compact_goal <= self._start_index or self._failed is not None or self._env is None:
            return False
        self._transact(self._delete_prefix)
        return self._compact_goal > self._start_index

    def _delete_prefix(self, txn: lmdb.Transaction) -> None:
        """Delete entries (start, min(goal, start + batch)] and move the log start past them."""
        end = min(self._compact_goal, self._start_index + COMPACT_BATCH_ENTRIES)
        if end <= self._start_index:
            return
        cursor = txn.cursor(db=self._log_db)
        raw = cursor.get(index_key(end))
        assert raw is not None, f"entry {end} is not stored: the log holds ({self._start_index}, {self._last_index}]"
        term = decode_entry(raw).term
        cursor.first()
        while (key := cursor.key()) and key_index(key) <= end:
            cursor.delete()  # deletes and moves to the next entry
        txn.put(LOG_START_KEY, encode_log_start(end, term), db=self._meta_db)
        self._pending_start = (Index(end), term)

    def _transact(self, work: Callable[[lmdb.Transaction], None]) -> None:
        """Run `work` in one durable write transaction (committed on return, aborted if it raises);
        a full map is StorageFull, any other LMDB error a StorageError that stops the node."""
        env = self._require_env()
        self._pending_start = None
        try:
            with env.begin(write=True) as txn:
                work(txn)
        except lmdb.MapFullError:
            raise StorageFull(
                f"the Raft log in {self.path} is full: it uses {self.used_bytes()} of {self._map_size} "
                "bytes; restart with a larger --max-db-bytes or compact") from None
        except lmdb.Error as e:
            self._failed = str(e)
            raise StorageError(f"writing the Raft log in {self.path} failed: {e}; the node must stop; "
                               "check the disk and restart it") from e
        if self._pending_start is not None:
            self._start_index, self._start_term = self._pending_start
        self._saves += 1
        self._syncs += 1

    def _remove_old_snapshot(self, old: SnapshotRecord | None) -> None:
        if old is not None and (self._snapshot is None or old.file_name != self._snapshot.file_name):
            try:
                (self._snap_dir / old.file_name).unlink(missing_ok=True)
            except OSError as e:  # harmless: the next open removes it
                self._logger.warning("could not remove the old snapshot file %s: %s", old.file_name, e)

    # -- writing entries --------------------------------------------------------------------------

    def _write(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        def work(txn: lmdb.Transaction) -> None:
            if entries:
                cursor = txn.cursor(db=self._log_db)
                if entries[0].index <= self._last_index and cursor.set_range(index_key(entries[0].index)):
                    while cursor.delete():  # deletes and moves to the next: the whole suffix
                        pass
                _, added = cursor.putmulti([(index_key(e.index), encode_entry(e)) for e in entries], append=True)
                # NB: putmulti skips a key that is not past the last one without raising.
                assert added == len(entries), f"only {added} of {len(entries)} entries were appended"
            if hard_state is not None:
                txn.put(HARD_STATE_KEY, encode_hard_state(hard_state), db=self._meta_db)

        self._transact(work)
        if entries:
            self._last_index = entries[-1].index
        if hard_state is not None:
            self._durable_hard_state = hard_state
            self._deferred_hard_state = None
        self._check_usage()

    def used_bytes(self) -> int:
        """Bytes of the map in use: every page up to the highest one ever written.

        A high-water mark: pages freed by truncation are reused by later writes but still counted."""
        return (self._require_env().info()["last_pgno"] + 1) * self._page_bytes

    def stats(self) -> StorageStats:
        return StorageStats(
            used_bytes=self.used_bytes(), map_size_bytes=self._map_size,
            first_index=Index(self._start_index + 1), last_index=self._last_index,
            saves=self._saves, syncs=self._syncs,
            deferred_hard_state=self._deferred_hard_state is not None,
            snapshot_index=self.snapshot_index, snapshot_bytes=self._snapshot.size if self._snapshot else 0,
        )

    def close(self) -> None:
        """Write a deferred hard state (durably), close LMDB, release the lock. Idempotent."""
        if self._env is None:
            return
        try:
            if self._deferred_hard_state is not None and self._failed is None:
                try:
                    self._write((), self._deferred_hard_state)
                except StorageError as e:
                    # Harmless for safety: only the commit index lags (see the class docstring).
                    self._logger.warning("could not write the last commit index on close: %s", e)
        finally:
            self._release()

    def __enter__(self) -> LmdbStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._env is not None else "closed"
        return f"LmdbStorage({str(self.path)!r}, node_name={self._node_name!r}, {state})"

    # -- helpers ----------------------------------------------------------------------------------

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"the storage for {self.path} is closed")
        return self._env

    def _release(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                os.ftruncate(fd, 0)  # no stale pid for people reading the file
            finally:
                os.close(fd)  # releases the flock

    def _check_usage(self) -> None:
        used = self.used_bytes()
        crossed = [f for f in WARN_FRACTIONS if used >= f * self._map_size and f > self._warned_fraction]
        if crossed:
            self._warned_fraction = crossed[-1]
            self._logger.warning(
                "the Raft log in %s is %d%% full (%d of %d bytes); restart with a larger --max-db-bytes "
                "or compact before it fills, or writes will fail", self.path, 100 * used // self._map_size,
                used, self._map_size)

    def _damaged(self, what: str) -> str:
        return (f"data directory {self.path} is damaged: {what}. Stop this node and restore the directory "
                "from a backup, or replace the node with a new one (a new --name and an empty --data-dir)")

    def _decode(self, decoder: Callable[[bytes | memoryview], _T], raw: bytes | memoryview | None,
                what: str) -> _T:
        if raw is None:
            raise CorruptStorage(self._damaged(f"{what} is missing"))
        try:
            return decoder(raw)
        except CorruptStorage as e:
            raise CorruptStorage(self._damaged(f"{what}: {e}")) from None


def _lock_data_dir(path: Path) -> int:
    """Create `path` if needed and take its exclusive lock; returns the lock file's descriptor.

    NB: flock(), not fcntl() locks: an flock belongs to the open file description, so a second
    open in the same process is refused too, and the kernel drops it when the process dies. The
    descriptor is not inherited by exec'd children (PEP 446), but a fork() without exec shares it.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StorageError(f"cannot use data directory {path}: {e.strerror or e}; check that it is a "
                           "writable directory, or choose another --data-dir") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StorageError(f"cannot lock data directory {path}: {e.strerror}") from e
        this = " (this process)" if holder == str(os.getpid()) else ""
        raise DataDirLocked(f"data directory {path} is in use by another registry process (pid {holder}"
                            f"{this}); stop it or choose another --data-dir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return fd

