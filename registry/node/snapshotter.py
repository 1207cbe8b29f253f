"""Taking the node's own snapshots (Raft §7) without stalling the node loop.

The node loop calls ``maybe_start`` and ``maybe_finish`` once per iteration. A snapshot goes:

1. on the loop, ``maybe_start``: when ``snapshot_entries`` entries (or ``snapshot_bytes`` bytes
   of entries) were applied since the last snapshot, freeze the catalogue (its immutable view
   and a copy of its session table: O(sessions), no serialisation) and start a thread;
2. in the thread: serialise the frozen catalogue (``FrozenCatalogue.to_bytes``, in small pieces so
   the loop keeps getting the interpreter lock) and write the snapshot file, fsynced
   (``Storage.write_snapshot``, which never touches LMDB);
3. on the loop, ``maybe_finish`` once the thread is done: ``RawNode.compact`` (the core now sends
   this snapshot to followers too far behind and forgets entries up to index - keep), then
   ``Storage.adopt_snapshot`` (one small transaction: the snapshot becomes current and the log
   entries it covers, less the kept tail, are deleted, at most a bounded batch per transaction).

NB: the file is durable before any stored entry it covers is deleted (step 2 before step 3), so a
crash anywhere leaves the old snapshot with its whole log, or the new one. A leader's snapshot
installed while a thread runs makes that thread's result obsolete: it is discarded.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.catalogue import Catalogue
from registry.catalogue.frozen import FrozenCatalogue, freeze
from registry.raft import Entry, Index, LocalError, Membership, RawNode, Snapshot, SnapshotMeta, Term
from registry.storage import LmdbStorage, StorageError
from registry.storage.codec import ENTRY_HEADER_BYTES

RETRY_AFTER_FAILURE_S = 30.0
#: While a snapshot thread runs, the interpreter switches threads at least this often (seconds),
#: so the loop waits at most about this long for the lock the thread holds.
SWITCH_INTERVAL_S = 0.001


def serialise(frozen: FrozenCatalogue) -> bytes:
    """``frozen.to_bytes()`` with the cyclic garbage collector paused.

    NB: serialising allocates millions of short-lived lists, which would trigger full collections;
    a full collection walks every object of the catalogue while holding the interpreter lock
    (tens of ms at 100,000 instances), stalling the loop. The lists die by reference counting,
    so pausing the collector for the duration leaks nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return frozen.to_bytes()
    finally:
        if enabled:
            gc.enable()


def freeze_heap() -> None:
    """Move every object alive now out of the cyclic collector's reach (``gc.freeze``).

    NB: with 100,000 instances a full collection walks ~150,000 objects and holds the interpreter
    lock 80-100 ms: the node loop's longest pause by far, snapshot or not (bench/snapshots.py).
    The catalogue is long-lived and acyclic (refcounting frees what a write replaces), so after a
    restore and after each snapshot its objects are frozen and full collections scan only what
    came since. Cost: cyclic garbage among frozen objects is never collected; the node makes none."""
    gc.freeze()


@dataclass
class SnapshotStats:
    taken: int = 0  # snapshots this node took and adopted
    installed: int = 0  # leaders' snapshots this node installed
    discarded: int = 0  # taken but made obsolete by an installed one
    failed: int = 0
    last_duration_s: float | None = None  # freeze to adopt, of the last one taken
    last_adopt_ms: float | None = None  # the loop's share at the end: compact + the LMDB transaction
    loop_max_ms: float = 0.0  # the longest loop iteration while a snapshot was being taken
    last_loop_max_ms: float = 0.0  # the same, during the last snapshot only (freeze to adopt)
    loop_max_ms_all: float = 0.0  # the longest loop iteration overall (after start-up)


@dataclass
class _Job:
    meta: SnapshotMeta
    frozen: FrozenCatalogue
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    members: bytes | None = None  # the member directory as of meta.index (members.encode_directory)
    data: bytes = b""
    path: Path | None = None
    error: BaseException | None = None


class Snapshotter:
    """Decides when to snapshot, runs the thread, and adopts the result. Loop thread only."""

    def __init__(self, *, storage: LmdbStorage, entries: int, max_bytes: int, keep: int,
                 start_index: int, logger: logging.LoggerAdapter | logging.Logger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._storage = storage
        self._entries, self._max_bytes, self._keep = entries, max_bytes, keep
        self._log = logger
        self._clock = clock
        # Invariant: _last_index is the newest snapshot's index (taken or installed).
        self._last_index = start_index
        self._bytes_since = 0  # bytes of entries applied since _last_index
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._not_before = 0.0
        self._saved_switch: float | None = None
        self.stats = SnapshotStats()

    @property
    def running(self) -> bool:
        return self._job is not None

    def on_applied(self, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            self._bytes_since += len(entry.data) + ENTRY_HEADER_BYTES

    def on_installed(self, meta: SnapshotMeta) -> None:
        self.stats.installed += 1
        self._last_index = meta.index
        self._bytes_since = 0

    def note_iteration(self, seconds: float) -> None:
        ms = seconds * 1000
        if ms > self.stats.loop_max_ms_all:
            self.stats.loop_max_ms_all = ms
        if self._job is not None:
            self.stats.loop_max_ms = max(self.stats.loop_max_ms, ms)
            self.stats.last_loop_max_ms = max(self.stats.last_loop_max_ms, ms)

    def maybe_start(self, catalogue: Catalogue, applied_term: int, membership: Membership,
                    members: Callable[[], bytes | None] | None = None) -> bool:
        """Start a snapshot of `catalogue` if one is due; True if started. `members` gives the
        member directory to store with it (called only when a snapshot starts)."""
        applied = catalogue.applied_index
        if self._job is not None or applied <= self._last_index:
            return False
        if applied - self._last_index < self._entries and self._bytes_since < self._max_bytes:
            return False
        now = self._clock()
        if now < self._not_before:
            return False
        meta = SnapshotMeta(Index(applied), Term(applied_term), membership)
        job = self._job = _Job(meta, freeze(catalogue), now, members=members() if members is not None else None)
        self.stats.last_loop_max_ms = 0.0
        self._saved_switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._saved_switch, SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._run, args=(job,), name="snapshot", daemon=True)
        self._thread.start()
        return True

    def _run(self, job: _Job) -> None:
        """The thread: serialise, then write the file durably. Touches nothing the loop uses."""
        try:
            job.data = serialise(job.frozen)
            job.path = self._storage.write_snapshot(Snapshot(job.meta, job.data), members=job.members)
        except BaseException as exc:  # noqa: BLE001 (handed to the loop)
            job.error = exc
        finally:
            job.done.set()

    def maybe_finish(self, raw: RawNode) -> bool:
        """Adopt a finished snapshot (compact the core and the store); True if one was adopted.

        Raises StorageError if the store cannot record it (the node must stop)."""
        job = self._job
        if job is None or not job.done.is_set():
            return False
        self._job = None
        self._thread = None
        if self._saved_switch is not None:
            sys.setswitchinterval(self._saved_switch)
            self._saved_switch = None
        if job.error is not None:
            self.stats.failed += 1
            self._not_before = self._clock() + RETRY_AFTER_FAILURE_S
            self._log.error("taking a snapshot at index %d failed: %s; retrying in %.0f s",
                            job.meta.index, job.error, RETRY_AFTER_FAILURE_S)
            return False
        assert job.path is not None
        if job.meta.index <= raw.status().snapshot_index or job.meta.index <= self._storage.snapshot_index:
            self.stats.discarded += 1
            self._storage.discard_snapshot(job.path)
            return False
        started = self._clock()
        try:
            meta = raw.compact(job.meta.index, job.data, keep_entries=self._keep)
        except LocalError as exc:
            self.stats.discarded += 1
            self._storage.discard_snapshot(job.path)
            self._log.warning("a snapshot at index %d is no longer usable: %s", job.meta.index, exc)
            return False
        assert meta == job.meta, f"the core's snapshot {meta} differs from the one written {job.meta}"
        self._storage.adopt_snapshot(meta, job.path, Index(max(0, meta.index - self._keep)))
        freeze_heap()
        now = self._clock()
        self._bytes_since = 0  # NB: approximate: entries applied while the thread ran count again next time
        self._last_index = meta.index
        self.stats.taken += 1
        self.stats.last_adopt_ms = (now - started) * 1000
        self.stats.last_duration_s = now - job.started
        self._log.info("snapshot at index %d term %d: %d bytes, %.2f s (loop share %.1f ms)", meta.index, meta.term,
                       len(job.data), self.stats.last_duration_s, self.stats.last_adopt_ms)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for a running thread (it writes into the data directory), then drop its file."""
        job, thread = self._job, self._thread
        if job is None or thread is None:
            return
        thread.join(timeout_s)
        if job.path is not None:
            try:
                self._storage.discard_snapshot(job.path)
            except (OSError, StorageError):
                pass  # the next open removes it
        if self._saved_switch is not None:
            sys.setswitchinterval(self._saved_switch)
        self._job = self._thread = None

    def status(self) -> dict[str, Any]:
        st = self.stats
        return {"taken": st.taken, "installed": st.installed, "discarded": st.discarded, "failed": st.failed,
                "running": self._job is not None, "last_duration_s": st.last_duration_s,
                "last_adopt_ms": st.last_adopt_ms, "loop_max_ms": round(st.loop_max_ms, 2),
                "last_loop_max_ms": round(st.last_loop_max_ms, 2),
                "loop_max_ms_all": round(st.loop_max_ms_all, 2)}
