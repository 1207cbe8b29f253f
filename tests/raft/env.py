"""A tiny deterministic harness for multi-node scenario tests of the core (etcd rafttest style).

Messages sit in `pending` until delivered; nothing moves unless a test says so. Each node has a
dict-backed "disk" that receives exactly what its Ready asked to persist, so `restart` brings a
node back with only what it had persisted.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from registry.raft import (
    Config,
    Entry,
    EntryKind,
    HardState,
    Index,
    InitialState,
    Membership,
    Message,
    NodeId,
    RawNode,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    Term,
)
from registry.raft.core import Raft


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)  # the entries after `start`
    snapshot: Snapshot | None = None  # the newest snapshot (None: the cluster's starting point)
    start: int = 0  # the index the stored entries follow (a snapshot may keep a tail before it)

    def write(self, entries: Iterable[Entry], hard_state: HardState | None, snapshot: Snapshot | None = None) -> None:
        if snapshot is not None:  # a leader's snapshot replaces the whole log
            self.snapshot, self.start, self.entries = snapshot, snapshot.meta.index, []
        entries = list(entries)
        if entries:
            keep = entries[0].index - self.start - 1
            del self.entries[keep:]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def save_snapshot(self, snapshot: Snapshot, compact_to: int) -> None:
        """A snapshot this node took: it covers the log up to its index; entries to `compact_to` go."""
        self.snapshot = snapshot
        drop = compact_to - self.start
        if drop > 0:
            del self.entries[:drop]
            self.start = compact_to

    def initial_state(self, bootstrap: SnapshotMeta, data: bytes) -> InitialState:
        """What a restart reads: the newest snapshot and the entries after it."""
        if self.snapshot is None or self.snapshot.meta.index <= bootstrap.index:
            meta, image = bootstrap, data
        else:
            meta, image = self.snapshot.meta, self.snapshot.data
        after = [e for e in self.entries if e.index > meta.index]
        return InitialState(meta, self.hard_state, tuple(after), image)


def run(first: int, terms: list[int]) -> list[Entry]:
    """Entries with the given terms, at indexes first, first+1, ..."""
    return [Entry(Term(t), Index(first + k)) for k, t in enumerate(terms)]


def normal_data(entries: list[Entry]) -> list[bytes]:
    return [e.data for e in entries if e.kind is EntryKind.NORMAL]


def settle(c: Cluster, keep: Callable[[Message], bool], rounds: int = 200) -> None:
    """Like Cluster.stabilize, but drop every message for which `keep` is false."""
    for _ in range(rounds):
        c.process_all()
        if not c.pending:
            return
        c.deliver(keep)
    raise AssertionError("cluster did not settle")


class Cluster:
    def __init__(self, voters: Iterable[int] = (1, 2, 3), *, learners: Iterable[int] = (), seed: int = 0,
                 raft_class: type[Raft] = Raft, snapshot: SnapshotMeta | None = None, snapshot_data: bytes = b"",
                 entries: dict[int, list[Entry]] | None = None, hard_states: dict[int, HardState] | None = None,
                 **config: object) -> None:
        self.membership = Membership(frozenset(NodeId(v) for v in voters), frozenset(NodeId(v) for v in learners))
        self.snapshot = snapshot or SnapshotMeta(Index(0), 0, self.membership)  # type: ignore[arg-type]
        self.snapshot_data = snapshot_data or (f"image@{self.snapshot.index}".encode() if self.snapshot.index else b"")
        self.config = config
        self.seed = seed
        self.raft_class = raft_class
        self.disks: dict[NodeId, Disk] = {}
        self.nodes: dict[NodeId, RawNode] = {}
        self.applied: dict[NodeId, list[Entry]] = {}
        self.restored: dict[NodeId, list[Snapshot]] = {}  # snapshots each node's state machine restored
        self.read_states: dict[NodeId, list[ReadState]] = {}
        self.pending: list[Message] = []
        self.sent: list[Message] = []  # every message ever sent, for assertions
        self.cut: set[tuple[int, int]] = set()  # (source, target) pairs whose messages vanish
        for node in sorted(self.membership.members):
            disk = Disk((hard_states or {}).get(node, HardState()), list((entries or {}).get(node, [])),
                        start=self.snapshot.index)
            self.disks[node] = disk
            self.start(node)

    def start(self, node: int) -> RawNode:
        disk = self.disks[NodeId(node)]
        cfg = Config(NodeId(node), random.Random(self.seed * 1000 + node), **self.config)  # type: ignore[arg-type]
        state = disk.initial_state(self.snapshot, self.snapshot_data)
        raw = RawNode(cfg, state, raft_class=self.raft_class)
        self.nodes[NodeId(node)] = raw
        self.applied[NodeId(node)] = []
        self.restored[NodeId(node)] = []
        self.read_states[NodeId(node)] = []
        return raw

    def restart(self, node: int) -> RawNode:
        """Crash `node` (losing everything not persisted, including in-flight messages to it) and start it."""
        self.pending = [m for m in self.pending if m.target != node]
        return self.start(node)

    # -- inspection ------------------------------------------------------------------------------

    def raft(self, node: int) -> Raft:
        return self.nodes[NodeId(node)].raft

    def leader(self) -> NodeId | None:
        leaders = [n for n, raw in self.nodes.items() if raw.raft.role is Role.LEADER]
        return max(leaders, key=lambda n: self.nodes[n].raft.term) if leaders else None

    def log_terms(self, node: int) -> list[int]:
        raft = self.raft(node)
        return [raft.log.entry(i).term for i in range(raft.log.first_index, raft.log.last_index + 1)]

    # -- driving ---------------------------------------------------------------------------------

    def process(self, node: int) -> None:
        """Do the node's Ready work: persist, queue messages, apply, advance."""
        raw = self.nodes[NodeId(node)]
        while raw.has_ready():
            rd = raw.ready()
            self.disks[NodeId(node)].write(rd.entries, rd.hard_state, rd.snapshot)
            for m in rd.messages:
                self.sent.append(m)
                if (m.source, m.target) not in self.cut:
                    self.pending.append(m)
            if rd.snapshot is not None:
                self.restored[NodeId(node)].append(rd.snapshot)
            self.applied[NodeId(node)].extend(rd.committed)
            self.read_states[NodeId(node)].extend(rd.read_states)
            raw.advance(rd)

    def compact(self, node: int, index: int | None = None, *, keep: int = 0) -> SnapshotMeta:
        """Snapshot `node`'s state machine at `index` (default: all it applied) and compact."""
        raw = self.nodes[NodeId(node)]
        index = raw.raft.log.applied_index if index is None else index
        data = f"image@{index}".encode()
        meta = raw.compact(Index(index), data, keep_entries=keep)
        self.disks[NodeId(node)].save_snapshot(Snapshot(meta, data), max(0, index - keep))
        return meta

    def process_all(self) -> None:
        for node in list(self.nodes):
            self.process(node)

    def deliver(self, keep: Callable[[Message], bool] = lambda m: True) -> int:
        """Deliver every pending message for which `keep` is true (others are dropped); returns how many."""
        batch, self.pending = self.pending, []
        delivered = 0
        for m in batch:
            if keep(m) and m.target in self.nodes:
                self.nodes[m.target].step(m)
                delivered += 1
        return delivered

    def stabilize(self, rounds: int = 200) -> None:
        """Process and deliver until nothing moves."""
        for _ in range(rounds):
            self.process_all()
            if not self.pending:
                return
            self.deliver()
        raise AssertionError("cluster did not stabilize")

    def tick(self, node: int, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.nodes[NodeId(node)].tick()

    def tick_all(self, ticks: int = 1, *, stabilize: bool = True) -> None:
        for _ in range(ticks):
            for raw in self.nodes.values():
                raw.tick()
            if stabilize:
                self.stabilize()

    def tick_election(self, node: int) -> None:
        """Tick `node` past its randomized election timeout (without delivering anything)."""
        raft = self.raft(node)
        self.tick(node, raft.randomized_election_ticks - raft.election_elapsed)

    def campaign(self, node: int) -> None:
        self.nodes[NodeId(node)].campaign()
        self.stabilize()

    def propose(self, node: int, data: bytes) -> Index:
        return self.nodes[NodeId(node)].propose(data)

    def isolate(self, node: int) -> None:
        for other in self.nodes:
            if other != node:
                self.cut |= {(node, other), (other, node)}

    def partition(self, *groups: Iterable[int]) -> None:
        sets = [set(g) for g in groups]
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in s and b in s for s in sets):
                    self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()
