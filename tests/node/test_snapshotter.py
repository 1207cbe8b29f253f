"""The node's own snapshots (registry/node/snapshotter.py) with a real core, catalogue and LMDB
store in one process: the trigger, the thread, adoption, and a result made obsolete meanwhile."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest

from registry.catalogue import Catalogue, Register, Request, encode_request
from registry.node.config import ConfigError, build, check_settings
from registry.node.snapshotter import Snapshotter
from registry.raft import Config, EntryKind, Index, InitialState, Membership, NodeId, RawNode, SnapshotMeta, Term
from registry.storage import LmdbStorage

ME = NodeId(1)
MEMBERS = Membership(frozenset({ME}))


class OneNode:
    """A single-voter node driven by hand: propose, then persist and apply every Ready."""

    def __init__(self, path: Path, **snapshot: int) -> None:
        self.storage = LmdbStorage(path, node_name="n1", cluster_id="c1")
        state = self.storage.initial_state(MEMBERS)
        self.catalogue = Catalogue.from_bytes(state.snapshot_data) if state.snapshot.index else Catalogue()
        self.raw = RawNode(Config(ME, random.Random(1), applied=state.snapshot.index), state)
        self.term = int(state.snapshot.term)
        self.snapshots = Snapshotter(storage=self.storage, start_index=state.snapshot.index,
                                     logger=logging.getLogger("test"), **snapshot)  # type: ignore[arg-type]
        self.raw.campaign()
        self.drain()

    def drain(self) -> None:
        while self.raw.has_ready():
            ready = self.raw.ready()
            self.storage.save(ready.entries, ready.hard_state, sync=ready.must_sync)
            for entry in ready.committed:
                if entry.kind is EntryKind.NORMAL:
                    self.catalogue.apply(entry.index, entry.data)
                else:
                    self.catalogue.skip(entry.index)
                self.term = int(entry.term)
            self.snapshots.on_applied(ready.committed)
            self.raw.advance(ready)

    def write(self, count: int, start: int = 0) -> None:
        for i in range(start, start + count):
            command = Register(f"svc-{i % 5}", f"10.0.{i // 256 % 256}.{i % 256}", 80)
            self.raw.propose(encode_request(Request("c", i + 1, command)))
            self.drain()

    def finish(self) -> None:
        deadline = time.monotonic() + 30
        while not self.snapshots.maybe_finish(self.raw):
            assert time.monotonic() < deadline, "the snapshot thread did not finish"
            time.sleep(0.01)


def test_a_snapshot_is_taken_off_the_loop_adopted_and_restored(tmp_path: Path) -> None:
    """Past snapshot_entries a snapshot starts; once adopted the core and the store are
    compacted (less the kept tail), and a restart restores the catalogue from it."""
    node = OneNode(tmp_path, entries=100, max_bytes=1 << 30, keep=30)
    node.write(98)
    assert not node.snapshots.maybe_start(node.catalogue, node.term, MEMBERS)  # 99 applied: not yet
    node.write(5, start=98)
    assert node.snapshots.maybe_start(node.catalogue, node.term, MEMBERS)
    index = node.catalogue.applied_index
    node.write(20, start=103)  # the loop goes on applying while the thread serialises
    node.finish()
    assert node.raw.status().snapshot_index == index and node.raw.status().first_index == index - 30 + 1
    stats = node.storage.stats()
    assert (stats.snapshot_index, stats.first_index) == (index, index - 30 + 1)
    assert node.snapshots.stats.taken == 1
    services = dict(node.catalogue.view.services)
    node.storage.close()
    again = OneNode(tmp_path, entries=100, max_bytes=1 << 30, keep=30)  # restores, replays the tail, then campaigns
    assert dict(again.catalogue.view.services) == services and again.raw.status().snapshot_index == index
    assert again.catalogue.last_seq("c") == 123
    again.storage.close()


def test_snapshot_bytes_trigger_too(tmp_path: Path) -> None:
    node = OneNode(tmp_path, entries=10**9, max_bytes=64 * 1024, keep=0)
    while not node.snapshots.maybe_start(node.catalogue, node.term, MEMBERS):
        node.write(50, start=node.catalogue.applied_index)
    assert node.catalogue.applied_index < 2000
    node.finish()
    assert node.storage.stats().snapshot_index > 0
    node.storage.close()


def test_a_result_overtaken_by_a_newer_snapshot_is_discarded(tmp_path: Path) -> None:
    """A snapshot that is no longer the newest when its thread ends (a leader's was installed
    meanwhile) is dropped with its file; nothing is compacted on its behalf."""
    node = OneNode(tmp_path, entries=50, max_bytes=1 << 30, keep=0)
    node.write(60)
    assert node.snapshots.maybe_start(node.catalogue, node.term, MEMBERS)
    node.write(10, start=60)
    newer = node.catalogue.applied_index
    data = node.catalogue.to_bytes()
    meta = node.raw.compact(Index(newer), data)  # stands for an install at a later index
    node.storage.adopt_snapshot(meta, node.storage.write_snapshot(__import__("registry.raft", fromlist=["Snapshot"])
                                                                  .Snapshot(meta, data)), Index(newer))
    deadline = time.monotonic() + 30
    while node.snapshots.running:
        assert not node.snapshots.maybe_finish(node.raw)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert node.snapshots.stats.discarded == 1 and node.snapshots.stats.taken == 0
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [node.storage.snapshot_path(meta).name]
    node.storage.close()


def test_snapshot_settings_are_checked() -> None:
    """`registry config check` and the agent refuse bad snapshot settings, naming the key."""
    base = {"name": "n1", "data_dir": "/tmp/x", "raft": "127.0.0.1:1", "client": "127.0.0.1:2", "dns": "127.0.0.1:3"}
    config = build(base)
    assert (config.snapshot_entries, config.snapshot_bytes, config.snapshot_keep) == (20_000, 64 * 1024**2, 5_000)
    assert build({**base, "snapshot_entries": 500, "snapshot_keep": 0}).snapshot_entries == 500
    for key, value in (("snapshot_entries", 0), ("snapshot_bytes", 1000), ("snapshot_keep", -1),
                       ("snapshot_entries", "many")):
        problems = check_settings({**base, key: value})
        assert [p.key for p in problems] == [key], problems
        with pytest.raises(ConfigError, match=key):
            build({**base, key: value})


def test_initial_state_with_a_snapshot_starts_the_core_there(tmp_path: Path) -> None:
    """InitialState carries the snapshot's data, which the core needs to send it on."""
    node = OneNode(tmp_path, entries=20, max_bytes=1 << 30, keep=5)
    node.write(25)
    node.snapshots.maybe_start(node.catalogue, node.term, MEMBERS)
    node.finish()
    taken = node.raw.status().snapshot_index
    node.write(3, start=25)  # a tail after the snapshot
    node.storage.close()
    with LmdbStorage(tmp_path, node_name="n1", cluster_id="c1") as store:
        state = store.initial_state(MEMBERS)
        assert isinstance(state, InitialState) and state.snapshot_data
        assert state.snapshot == SnapshotMeta(Index(taken), Term(1), MEMBERS)
        assert [e.index for e in state.entries] == [taken + 1, taken + 2, taken + 3]
