"""The seeded cluster simulation: real cores, simulated network, disks, clients and faults.

One seed decides everything: the fault profile, every fault, every message's fate and every
election timeout, and whether the run has TTL instances (see health.py) and what their services
do. `registry sim --seed S --nodes N [--mutant M]` replays a run exactly.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from registry.catalogue.model import HealthStatus
from registry.catalogue.tracker import HealthTracker, Transition
from registry.raft import (
    NO_NODE,
    Config,
    Entry,
    EntryKind,
    Index,
    InstallSnapshot,
    LocalError,
    Membership,
    NodeId,
    NotLeader,
    Raft,
    RaftError,
    RawNode,
    Role,
    Snapshot,
)

from .checkers import HealthChecker, SafetyChecker, Violation
from .disk import SimDisk
from .health import (
    NEVER,
    SERVICE,
    TICK_MS,
    HealthProfile,
    Keepalive,
    RegisterEntry,
    Renewal,
    Table,
    TableView,
    Record,
    decode_entry,
    decode_table,
    encode_table,
    register_entry,
    transition_entry,
)
from .mutants import MUTANTS
from .network import NetworkFaults, Packet, SimNetwork

STEPS_PER_TICK = 5  # message latency is 1-3 steps: a round trip is about one tick
ELECTION_TICKS = 10
FAULT_TICKS = (400, 2000)  # a run has 40 minimum election timeouts of faults, or 200 (one run in five)
LIVENESS_TICKS = 300  # after healing, everything must settle within this
LONG_DOWNTIME_TICKS = (50, 250)  # a node down this long rejoins far behind the compacted log
IMAGE_PADDING = b"." * 24  # makes a snapshot several chunks long at small max_msg_bytes


@dataclass(frozen=True)
class FaultProfile:
    """How hostile one run is; drawn from the seed so runs differ in kind, not only in detail."""

    network: NetworkFaults
    crash: float  # per step: a random live node crashes
    crash_in_ready: float  # per Ready: crash before persisting, or after persisting but before sending
    crash_at_hard_state: float  # per Ready that changes term, vote or role, at any stage of it (buggify)
    crash_after_commit: float  # per Ready after which a leader's commit index moved (buggify)
    short_downtime: float  # chance a crashed node is back within 3 ticks (a supervisor restart)
    pause: float  # per step: a random node freezes (SIGSTOP) for up to 3 election timeouts
    partition: float  # per step: a new partition replaces the current one
    heal: float  # per step: the current partition heals
    transfer: float  # per step: the leader hands leadership to a random voter
    propose: float  # per step per idle client: start a new operation
    read: float  # per step: a random node asks for a read index
    fault_ticks: int  # how long the fault phase lasts
    max_msg_bytes: int  # the cores' flow control, varied so that logs move in small pieces too
    max_inflight_msgs: int
    pre_vote: bool  # the cores' election options: every combination must be safe and live
    check_quorum: bool
    snapshot_every: int  # applied entries between a node's snapshots; 0: never (the log only grows)
    snapshot_keep: int  # entries kept behind a snapshot for followers slightly behind
    long_downtime: float  # chance a crash keeps the node down for LONG_DOWNTIME_TICKS

    @classmethod
    def draw(cls, rng: random.Random) -> FaultProfile:
        # A calm run (x0.25) finds bugs of slow progress; a stormy one (x5) finds the rare
        # interleavings of many leader changes in a row (Raft figure 8).
        scale = rng.choices([0.25, 1.0, 5.0], weights=[15, 60, 25])[0]
        return cls(
            network=NetworkFaults(drop=rng.uniform(0, 0.15) * min(scale, 1.0),
                                  duplicate=rng.uniform(0, 0.05) * min(scale, 1.0),
                                  long_delay=rng.uniform(0, 0.03) * min(scale, 1.0)),
            crash=rng.uniform(0, 0.004) * scale,
            crash_in_ready=rng.uniform(0, 0.004) * scale,
            crash_at_hard_state=min(0.5, rng.uniform(0, 0.15) * scale),
            crash_after_commit=rng.uniform(0, 0.05) * scale,
            short_downtime=rng.uniform(0, 0.8),
            pause=rng.uniform(0, 0.002) * scale,
            partition=rng.uniform(0, 0.004) * scale,
            heal=rng.uniform(0.005, 0.03),
            transfer=rng.uniform(0, 0.002),
            propose=rng.uniform(0.02, 0.2),
            read=rng.uniform(0, 0.05),
            fault_ticks=FAULT_TICKS[1] if rng.random() < 0.2 else FAULT_TICKS[0],
            max_msg_bytes=rng.choice([1, 1, 64, 256, 1 << 20]),  # 1: one entry per message
            max_inflight_msgs=rng.choice([1, 2, 4, 8, 64]),
            pre_vote=rng.random() < 0.7,
            check_quorum=rng.random() < 0.7,
            snapshot_every=rng.choice([0, 3, 5, 10, 20, 40]),
            snapshot_keep=rng.choice([0, 0, 1, 3, 8]),
            long_downtime=rng.choice([0.0, 0.05, 0.2]),
        )


@dataclass
class SimNode:
    node_id: NodeId
    disk: SimDisk
    raw: RawNode | None = None  # None while crashed
    incarnation: int = 0
    down_until: int = 0
    paused_until: int = 0  # while paused, the node neither ticks nor receives
    held: list[Packet] = field(default_factory=list)  # messages that arrived while paused
    image: tuple[int, bytes] = (0, b"")  # the state machine: (applied index, digest of everything applied)
    health: Table = field(default_factory=dict)  # the state machine's health table (health.py)
    health_bytes: bytes = b""  # its canonical encoding, part of the image the checker compares
    ticks: int = 0  # the node's clock, in ticks: it stands still while the node is down or paused
    tracker: HealthTracker | None = None  # the health bookkeeping; leading only while leader
    lead_term: int = 0  # the term its tracker leads


@dataclass
class Client:
    client_id: int
    seq: int = 0
    payload: bytes | None = None  # the operation in progress, if any
    target: NodeId | None = None  # where to send it next (a leader hint)
    sent_at: int | None = None  # step of the last proposal; retried after a timeout
    todo: list[bytes] = field(default_factory=list)  # operations to do first, whatever the phase
    registrar: bool = False  # does only its todo (the services' registrations)


@dataclass(frozen=True)
class SimResult:
    seed: int
    nodes: int
    mutant: str | None
    ok: bool
    violation: str | None
    ticks: int
    stats: dict[str, int]
    replay: str


def replay_command(seed: int, nodes: int, mutant: str | None) -> str:
    return f"registry sim --seed {seed} --nodes {nodes}" + (f" --mutant {mutant}" if mutant else "")


@dataclass
class Simulation:
    seed: int
    nodes: int = 3
    raft_class: type[Raft] = Raft
    tracker_class: type[HealthTracker] = HealthTracker
    mutant: str | None = None
    clients: int = 3
    trace: Callable[[str], None] | None = None
    now: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 9:
            raise ValueError(f"nodes must be between 1 and 9, got {self.nodes}")
        self.rng = random.Random(self.seed)
        self.profile = FaultProfile.draw(self.rng)
        self.network = SimNetwork(random.Random(self.rng.getrandbits(64)), self.profile.network)
        self.ids = [NodeId(i) for i in range(1, self.nodes + 1)]
        self.membership = Membership(frozenset(self.ids))
        self.checker = SafetyChecker()
        self.sim_nodes = {i: SimNode(i, SimDisk()) for i in self.ids}
        self.client_list = [Client(c) for c in range(1, self.clients + 1)]
        self.done_payloads: set[bytes] = set()
        self.reads: dict[bytes, int] = {}  # read context -> commit index known when it began
        self.partition_kind = ""
        self._leader_seen: dict[int, NodeId] = {}
        for key in ("crashes", "restarts", "lost_writes", "partitions", "transfers", "elections",
                    "proposals", "operations_done", "reads_checked", "snapshots_taken", "snapshots_installed",
                    "installs_over_conflict", "snapshot_chunks", "long_downtimes"):
            self.stats[key] = 0
        self._init_health()
        for node in self.sim_nodes.values():
            self._start(node)

    # -- running ----------------------------------------------------------------------------------

    def _init_health(self) -> None:
        # NB: a Random of its own, so that the runs without health are the runs of before.
        self.health_rng = random.Random(f"{self.seed}/health")
        self.health = HealthProfile.draw(self.health_rng, ELECTION_TICKS)
        self.health_checker = HealthChecker()
        self.keepalives = [Keepalive(f"i{n}", ttl, next_at=self.health_rng.randint(1, ttl * STEPS_PER_TICK // 3))
                           for n, ttl in enumerate(self.health.ttl_ticks, start=1)]
        self.alive_at_end: dict[str, bool] = {}
        self.registrar = None
        self._decisions = 0
        self._health_committed: set[int] = set()  # indexes whose health entry was applied somewhere
        if not self.keepalives:
            return
        registrar = Client(len(self.client_list) + 1, registrar=True)
        for keepalive in self.keepalives:
            registrar.todo.append(self._registration(keepalive))
        self.client_list.append(registrar)
        self.registrar: Client | None = registrar
        for key in ("health_instances", "renewals_sent", "renewals_failed", "renewals_forwarded",
                    "renewals_received", "renewals_lost", "keepalive_stops", "reregistrations",
                    "transitions_proposed", "transitions_refused", "expiries", "recoveries",
                    "transitions_stale"):
            self.stats[key] = 0
        self.stats["health_instances"] = len(self.keepalives)

    def run(self) -> SimResult:
        violation = None
        try:
            for _ in range(self.profile.fault_ticks * STEPS_PER_TICK):
                self.step(faults=True)
            self.heal_all()
            self._liveness()
            self._final_checks()
        except Violation as exc:
            violation = str(exc)
        except AssertionError as exc:
            violation = f"core assertion failed: {exc}"
        except RaftError as exc:  # every peer is one of our cores: an "impossible" message is a bug
            violation = f"core error: {type(exc).__name__}: {exc}"
        self._event(f"result: {'ok' if violation is None else 'VIOLATION: ' + violation}")
        stats = dict(self.stats)
        stats.update(messages_sent=self.network.stats.sent, messages_dropped=self.network.stats.dropped,
                     messages_duplicated=self.network.stats.duplicated, messages_cut=self.network.stats.cut,
                     committed=self.checker.max_committed)
        if self.keepalives:
            stats["expiries_checked"] = self.health_checker.expiries_checked
            stats["expiry_leaderships"] = len(self.health_checker.expiry_leaderships)
            stats["instances_dead_at_end"] = sum(not alive for alive in self.alive_at_end.values())
        return SimResult(self.seed, self.nodes, self.mutant, violation is None, violation,
                         self.now // STEPS_PER_TICK, stats, replay_command(self.seed, self.nodes, self.mutant))

    def step(self, *, faults: bool) -> None:
        self.now += 1
        if faults:
            self._inject_faults()
        self._restart_due()
        self._run_clients()
        if self.keepalives:
            self._run_keepalives(faults=faults)
        for node in self.sim_nodes.values():
            if node.paused_until == self.now and node.raw is not None:
                self._event(f"node {node.node_id} resumes with {len(node.held)} messages waiting")
                for message in node.held:
                    self._deliver(node, message)
                node.held.clear()
            if self._running(node) and (self.now + node.node_id) % STEPS_PER_TICK == 0:
                node.ticks += 1
                node.raw.tick()  # type: ignore[union-attr]
                self._observe(node)
                if node.tracker is not None and node.tracker.leading:
                    for transition in node.tracker.due(node.ticks * TICK_MS, self._wall_ms()):
                        self._propose_transition(node, transition)
        for message in self.network.due(self.now):
            node = self.sim_nodes[message.target]
            if node.paused_until > self.now:
                node.held.append(message)
            else:
                self._deliver(node, message)
        for node in self.sim_nodes.values():
            if self._running(node):
                self._process(node, faults=faults)
        self._check_committed_safe()

    def _check_committed_safe(self) -> None:
        index, term = self.checker.newest_committed()
        if not index:
            return
        logs: dict[NodeId, tuple[int, int, bool]] = {}
        for node in self.sim_nodes.values():
            if node.raw is not None:
                log = node.raw.raft.log
                holds = index <= log.snapshot_index or log.term(index) == term
                logs[node.node_id] = (log.last_index, log.last_term, holds)
            else:  # what it will restart with
                disk = node.disk
                holds = index <= disk.snapshot_index or disk.term(index) == term
                logs[node.node_id] = (*disk.last, holds)
        self.checker.check_committed_safe(logs, self.membership.voters)

    def _running(self, node: SimNode) -> bool:
        return node.raw is not None and node.paused_until <= self.now

    def _deliver(self, node: SimNode, message: Packet) -> None:
        if isinstance(message, Renewal):
            self._renewal_arrives(node, message)
        elif node.raw is not None:
            node.raw.step(message)
            self._observe(node)

    def heal_all(self) -> None:
        """End of the fault phase: links heal, crashed nodes come back, the network behaves."""
        self.network.blocked.clear()
        self.network.faults = NetworkFaults()
        for node in self.sim_nodes.values():
            if node.raw is None:
                node.down_until = self.now
            if node.paused_until > self.now:
                node.paused_until = self.now + 1
        self._restart_due()
        self._event("faults stop: network healed, every node running")
        for keepalive in self.keepalives:  # each service now runs, or stays dead, to the end
            alive = self.health_rng.random() >= self.health.dead_at_end
            self.alive_at_end[keepalive.instance_id] = alive
            keepalive.down_until = 0 if alive else NEVER
            self._event(f"keepalive of {keepalive.instance_id} " + ("runs to the end" if alive else "stays stopped"))

    # -- nodes ------------------------------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        node.incarnation += 1
        rng = random.Random(f"{self.seed}/{node.node_id}/{node.incarnation}")
        disk = node.disk
        if disk.snapshot is not None:
            node.image = self._read_image(node, disk.snapshot)
        else:
            node.image = (0, b"")
            self._set_health(node, {})
        node.tracker = self.tracker_class() if self.keepalives else None
        node.lead_term = 0
        config = Config(node.node_id, rng, election_ticks=ELECTION_TICKS, heartbeat_ticks=1,
                        pre_vote=self.profile.pre_vote, check_quorum=self.profile.check_quorum,
                        max_inflight_msgs=self.profile.max_inflight_msgs, max_msg_bytes=self.profile.max_msg_bytes,
                        applied=Index(node.image[0]))
        node.raw = RawNode(config, disk.initial_state(self.membership), raft_class=self.raft_class)
        self.checker.on_restart(node.node_id, node.raw.raft)

    def _crash(self, node: SimNode, why: str) -> None:
        assert node.raw is not None
        node.raw = None
        node.held.clear()
        node.paused_until = 0
        node.tracker = None  # in memory only: a restarted node starts a new one
        self.stats["lost_writes"] += node.disk.crash()
        self.stats["crashes"] += 1
        short = self.rng.random() < self.profile.short_downtime
        downtime = self.rng.randint(1, 3 if short else 3 * ELECTION_TICKS) * STEPS_PER_TICK
        if why == "(kill -9)" and self.rng.random() < self.profile.long_downtime:
            downtime = self.rng.randint(*LONG_DOWNTIME_TICKS) * STEPS_PER_TICK
            self.stats["long_downtimes"] += 1
            why += f" for {downtime // STEPS_PER_TICK} ticks"
        node.down_until = self.now + downtime
        self._event(f"node {node.node_id} crashes {why}")

    def _restart_due(self) -> None:
        for node in self.sim_nodes.values():
            if node.raw is None and node.down_until <= self.now:
                self._start(node)
                self.stats["restarts"] += 1
                self._event(f"node {node.node_id} restarts at term {node.raw.raft.term} "  # type: ignore[union-attr]
                            f"with {len(node.disk.entries)} entries")

    def _process(self, node: SimNode, *, faults: bool) -> None:
        """Do the node's Ready work in the contract's order, with crashes between the stages."""
        raw = node.raw
        assert raw is not None
        while raw.has_ready():
            commit_before = raw.raft.log.commit_index
            ready = raw.ready()
            crash_at = -1  # the stage after which this Ready's node crashes, if any
            if faults:
                p = self.profile.crash_in_ready
                if ready.soft_state is not None or (ready.must_sync and ready.hard_state is not None):
                    p = max(p, self.profile.crash_at_hard_state)
                if self.rng.random() < p:
                    crash_at = self.rng.randint(0, 2)
            # As the node loop does (Ready.messages_before_persist, dissertation §10.2.1): the
            # leader's appends leave before its own write, so a crash at stage 0 can lose entries
            # that followers already hold.
            early = ready.messages_before_persist()
            for message in early:
                self.checker.on_sent(message)
                self.network.send(message, self.now)
            if crash_at == 0:
                self._crash(node, "before persisting a Ready" + (" (after sending the leader's appends)" if early else ""))
                return
            disk = node.disk
            if ready.snapshot is not None:
                # The whole stored log goes: past the snapshot point nothing it drops may be committed.
                meta = ready.snapshot.meta
                dropped = [old for old in disk.entries if old.index > meta.index]
                self.checker.on_persist(node.node_id, (), 0, dropped)
                if any(disk.term(i) not in (None, self.checker.committed_term(i)) for i in range(
                        disk.start + 1, min(meta.index, disk.last[0]) + 1)):
                    self.stats["installs_over_conflict"] += 1
                self.stats["snapshots_installed"] += 1
            if ready.entries:
                first = ready.entries[0].index
                prev_term = raw.raft.log.term(first - 1)
                if ready.snapshot is not None:
                    replaced = []
                else:
                    start = first - disk.start - 1
                    replaced = [old for old, new in zip(disk.entries[start:], ready.entries) if old != new]
                self.checker.on_persist(node.node_id, ready.entries, prev_term or 0, replaced)
            disk.write(ready.entries, ready.hard_state, sync=ready.must_sync, snapshot=ready.snapshot)
            if crash_at == 1:
                self._crash(node, "after persisting a Ready, before sending")
                return
            for message in (ready.messages_after_persist() if early else ready.messages):
                self.checker.on_sent(message)
                self.network.send(message, self.now)
                if isinstance(message, InstallSnapshot):
                    self.stats["snapshot_chunks"] += 1
            if crash_at == 2:
                self._crash(node, "after sending a Ready")
                return
            if ready.snapshot is not None:
                node.image = self._read_image(node, ready.snapshot)
                self.checker.on_restored(node.node_id, ready.snapshot.meta.index)
                if node.tracker is not None and node.tracker.leading:  # the catalogue was replaced
                    node.tracker.lead(TableView(node.health), node.ticks * TICK_MS)
            self.checker.on_apply(node.node_id, ready.committed)
            self._apply(node, ready.committed)
            for state in ready.read_states:
                began = self.reads.pop(state.context, None)
                if began is not None:
                    self.checker.on_read(node.node_id, state, began)
                    self.stats["reads_checked"] += 1
            raw.advance(ready)
            self._observe(node)
            if faults or self.profile.snapshot_every:
                self._maybe_snapshot(node)
            if (faults and raw.raft.role is Role.LEADER and raw.raft.log.commit_index > commit_before
                    and self.rng.random() < self.profile.crash_after_commit):
                self._crash(node, "right after its commit index moved")
                return

    # -- the state machine and its snapshots ------------------------------------------------------

    def _apply(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        """The simulated state machine: a running digest of every applied entry, which the
        checker compares across nodes at each index (so an image restored from a snapshot is
        checked against what the others applied)."""
        index, digest = node.image
        for entry in entries:
            assert entry.index == index + 1, f"node {node.node_id} applies {entry.index} after {index}"
            if entry.kind is EntryKind.NORMAL:
                self.done_payloads.add(entry.data)
                if entry.data.startswith(b"h:"):
                    self._apply_health(node, entry)
            digest = hashlib.blake2b(digest + b"%d/%d/%d/" % (entry.index, entry.term, entry.kind) + entry.data,
                                     digest_size=16).digest()
            index = entry.index
            self.checker.on_image(node.node_id, index, digest + node.health_bytes)
        node.image = (index, digest)

    def _read_image(self, node: SimNode, snapshot: Snapshot) -> tuple[int, bytes]:
        data = snapshot.data
        index_text, _, rest = data.partition(b":")
        image = (int(index_text), rest[:16])
        if image[0] != snapshot.meta.index or not rest.endswith(IMAGE_PADDING):
            raise Violation(f"snapshot safety: node {node.node_id} got a snapshot at index {snapshot.meta.index} "
                            f"whose image is of index {image[0]}")
        self._set_health(node, decode_table(rest[16:-len(IMAGE_PADDING)]))
        self.checker.on_image(node.node_id, image[0], image[1] + node.health_bytes)
        return image

    def _maybe_snapshot(self, node: SimNode) -> None:
        raw = node.raw
        every = self.profile.snapshot_every
        if raw is None or not every:
            return
        index, digest = node.image
        if index - raw.raft.snapshot.meta.index < every:
            return
        data = b"%d:" % index + digest + node.health_bytes + IMAGE_PADDING
        keep = self.profile.snapshot_keep
        meta = raw.compact(Index(index), data, keep_entries=keep)
        node.disk.save_snapshot(Snapshot(meta, data), max(node.disk.start, index - keep))
        self.stats["snapshots_taken"] += 1
        self._event(f"node {node.node_id} snapshots at index {index} (term {meta.term}), keeping {keep}")

    def _observe(self, node: SimNode) -> None:
        raft = node.raw.raft  # type: ignore[union-attr]
        self.checker.on_state(node.node_id, raft)
        if raft.role is Role.LEADER:
            self.checker.on_leader(node.node_id, raft)
            if self._leader_seen.get(raft.term) != node.node_id:
                self._leader_seen[raft.term] = node.node_id
                self.stats["elections"] += 1
                self._event(f"node {node.node_id} leads term {raft.term} (last index {raft.log.last_index}, "
                            f"commit {raft.log.commit_index})")
        if node.tracker is not None:
            self._follow_leadership(node)

    # -- clients ----------------------------------------------------------------------------------

    def _run_clients(self) -> None:
        retry_steps = 3 * ELECTION_TICKS * STEPS_PER_TICK
        for client in self.client_list:
            if client.payload is not None and client.payload in self.done_payloads:
                client.payload = None
                self.stats["operations_done"] += 1
            if client.payload is None:
                if client.todo:
                    client.payload = client.todo.pop(0)
                elif client.registrar or self.now > self.profile.fault_ticks * STEPS_PER_TICK or (
                        self.rng.random() >= self.profile.propose):
                    continue
                else:
                    client.seq += 1
                    client.payload = f"c{client.client_id}:{client.seq}".encode()
                client.sent_at = None
            if client.sent_at is not None and self.now - client.sent_at < retry_steps:
                continue
            target = client.target or self.rng.choice(self.ids)
            client.target = None
            if not self._running(self.sim_nodes[target]):
                continue
            raw = self.sim_nodes[target].raw
            assert raw is not None
            try:
                raw.propose(client.payload)
            except NotLeader as exc:
                client.target = exc.leader_hint or None
                continue
            except LocalError:
                continue  # a transfer is in progress: try again next step
            client.sent_at = self.now
            self.stats["proposals"] += 1
        if self.rng.random() < self.profile.read:
            node = self.sim_nodes[self.rng.choice(self.ids)]
            if self._running(node) and node.raw is not None:
                context = f"r{self.now}".encode()
                try:
                    node.raw.read_index(context)
                except LocalError:
                    return
                self.reads[context] = self.checker.max_committed

    # -- health: keepalives, the leader's tracker, the replicated table ------------------------------

    def _wall_ms(self) -> int:
        return self.now * TICK_MS // STEPS_PER_TICK

    def _registration(self, keepalive: Keepalive) -> bytes:
        keepalive.registrations += 1
        return register_entry(keepalive.instance_id, keepalive.ttl_ms, keepalive.registrations)

    def _run_keepalives(self, *, faults: bool) -> None:
        rng = self.health_rng
        for keepalive in self.keepalives:
            if self.now < keepalive.next_at:
                continue
            period = keepalive.ttl_ticks * STEPS_PER_TICK // 3
            keepalive.next_at = self.now + period
            iid = keepalive.instance_id
            if self.now < keepalive.down_until:
                continue
            if keepalive.down_until:  # the service is back
                keepalive.down_until = 0
                self._event(f"keepalive of {iid} resumes")
                if rng.random() < self.health.reregister and self.registrar is not None:
                    self.registrar.todo.append(self._registration(keepalive))
                    self.stats["reregistrations"] += 1
                    self._event(f"service of {iid} registers again")
            if faults and rng.random() < self.health.stop:
                keepalive.down_until = self.now + rng.randint(1, 4) * keepalive.ttl_ticks * STEPS_PER_TICK
                self.stats["keepalive_stops"] += 1
                self._event(f"keepalive of {iid} stops (its service died) until tick "
                            f"{keepalive.down_until // STEPS_PER_TICK}")
                continue
            self._renew(keepalive)

    def _renew(self, keepalive: Keepalive) -> None:
        """One renewal, as the real client does it: the node it last reached, else any; a node that
        is down, knows no leader or cannot reach it (the `pass` read fails) makes it try the next."""
        self.stats["renewals_sent"] += 1
        others = [i for i in self.ids if i != keepalive.target]
        self.health_rng.shuffle(others)
        for target in ([keepalive.target] if keepalive.target else []) + others:
            node = self.sim_nodes[target]
            if not self._running(node):
                continue
            raft = node.raw.raft  # type: ignore[union-attr]
            if raft.role is Role.LEADER:
                self._renewal_at_leader(node, keepalive.instance_id)
            elif raft.leader_id != NO_NODE and (target, raft.leader_id) not in self.network.blocked:
                self.network.send(Renewal(target, raft.leader_id, keepalive.instance_id), self.now)
                self.stats["renewals_forwarded"] += 1
            else:
                continue
            keepalive.target = target
            return
        keepalive.target = None
        self.stats["renewals_failed"] += 1

    def _renewal_arrives(self, node: SimNode, renewal: Renewal) -> None:
        if node.raw is not None and node.raw.raft.role is Role.LEADER:
            self._renewal_at_leader(node, renewal.instance_id)
            return
        self.stats["renewals_lost"] += 1  # a deposed leader, or one that restarted since
        for keepalive in self.keepalives:  # its `pass` failed: the client tries elsewhere next time
            if keepalive.instance_id == renewal.instance_id and keepalive.target == renewal.source:
                keepalive.target = None

    def _renewal_at_leader(self, node: SimNode, instance_id: str) -> None:
        self._follow_leadership(node)
        assert node.tracker is not None and node.raw is not None
        now_ms = node.ticks * TICK_MS
        self.health_checker.on_renewal(node.node_id, node.raw.raft.term, instance_id, now_ms)
        self.stats["renewals_received"] += 1
        transition = node.tracker.heartbeat(SERVICE, instance_id, now_ms, self._wall_ms())
        if transition is not None:
            self._propose_transition(node, transition)

    def _follow_leadership(self, node: SimNode) -> None:
        """The node's tracker leads exactly while the node does, from its election on."""
        raft = node.raw.raft  # type: ignore[union-attr]
        tracker = node.tracker
        assert tracker is not None
        if raft.role is Role.LEADER:
            if node.lead_term != raft.term:
                node.lead_term = raft.term
                now_ms = node.ticks * TICK_MS
                tracker.lead(TableView(node.health), now_ms)
                self.health_checker.on_lead(node.node_id, raft.term, now_ms)
        elif tracker.leading:
            tracker.step_down()
            node.lead_term = 0

    def _propose_transition(self, node: SimNode, transition: Transition) -> None:
        raw = node.raw
        assert raw is not None and transition.status is not None
        self._decisions += 1
        now_ms = node.ticks * TICK_MS
        if transition.status is HealthStatus.CRITICAL:
            ttl_ms = next(k.ttl_ms for k in self.keepalives if k.instance_id == transition.instance_id)
            self.health_checker.on_expiry_decided(self._decisions, node.node_id, raw.raft.term,
                                                  transition.instance_id, ttl_ms, now_ms)
        try:
            raw.propose(transition_entry(transition, self._decisions))
        except LocalError:
            self.stats["transitions_refused"] += 1  # a transfer in progress: the tracker retries later
            return
        self.stats["transitions_proposed"] += 1
        self._event(f"node {node.node_id} proposes {transition.instance_id} (revision {transition.revision}) "
                    f"{transition.status.value}: {transition.output}")

    def _set_health(self, node: SimNode, table: Table) -> None:
        node.health = table
        node.health_bytes = encode_table(table)

    def _apply_health(self, node: SimNode, entry: Entry) -> None:
        decoded = decode_entry(entry.data)
        assert decoded is not None
        table = dict(node.health)
        iid = decoded.instance_id
        before = table.get(iid)
        first = entry.index not in self._health_committed
        self._health_committed.add(entry.index)
        if isinstance(decoded, RegisterEntry):
            table[iid] = Record(entry.index, HealthStatus.PASSING, decoded.ttl_ms)
            what = f"{iid} registered (revision {entry.index})"
        else:
            if first and decoded.status is HealthStatus.CRITICAL:
                self.health_checker.on_expiry_committed(entry.index, decoded.decision)
            if before is not None and before.revision == decoded.revision:
                table[iid] = Record(before.revision, decoded.status, before.ttl_ms)
            after = table.get(iid)
            self.health_checker.on_transition_applied(
                node.node_id, entry.index, iid, decoded.revision,
                (before.revision, before.status.value) if before else None,
                (after.revision, after.status.value) if after else None)
            changed = after != before
            if first:
                key = "transitions_stale" if not changed else (
                    "expiries" if decoded.status is HealthStatus.CRITICAL else "recoveries")
                self.stats[key] += 1
            what = f"{iid} (revision {decoded.revision}) {decoded.status.value}" + ("" if changed else ", no change")
        if first:
            self._event(f"committed at index {entry.index}: {what}")
        if table.get(iid) != before:
            self._set_health(node, table)
            if node.tracker is not None and node.tracker.leading:
                node.tracker.on_touched(TableView(node.health), ((SERVICE, iid),), node.ticks * TICK_MS)

    # -- faults -----------------------------------------------------------------------------------

    def _inject_faults(self) -> None:
        rng, profile = self.rng, self.profile
        live = [n for n in self.sim_nodes.values() if n.raw is not None]
        if live and rng.random() < profile.crash:
            self._crash(rng.choice(live), "(kill -9)")
        if live and rng.random() < profile.pause:
            node = rng.choice(live)
            if node.paused_until <= self.now:
                node.paused_until = self.now + rng.randint(1, 3 * ELECTION_TICKS) * STEPS_PER_TICK
                self._event(f"node {node.node_id} pauses (SIGSTOP) until tick {node.paused_until // STEPS_PER_TICK}")
        if rng.random() < profile.partition:
            self._partition()
        elif self.network.blocked and rng.random() < profile.heal:
            self.network.blocked.clear()
            self._event(f"partition healed ({self.partition_kind})")
        if rng.random() < profile.transfer:
            for node in live:
                if self._running(node) and node.raw is not None and node.raw.raft.role is Role.LEADER:
                    target = rng.choice(self.ids)
                    if target != node.node_id:
                        node.raw.transfer_leadership(target)
                        self.stats["transfers"] += 1
                        self._event(f"node {node.node_id} transfers leadership to {target}")

    def _partition(self) -> None:
        rng, ids = self.rng, list(self.ids)
        rng.shuffle(ids)
        blocked: set[tuple[NodeId, NodeId]] = set()
        kind = rng.choice(["isolate", "split", "one-way", "bridge"]) if len(ids) > 2 else "isolate"

        def cut(a: list[NodeId], b: list[NodeId]) -> None:
            for x in a:
                for y in b:
                    blocked.update({(x, y), (y, x)})

        if kind == "isolate":
            cut(ids[:1], ids[1:])
        elif kind == "split":
            k = rng.randint(1, len(ids) - 1)
            cut(ids[:k], ids[k:])
        elif kind == "one-way":
            for _ in range(rng.randint(1, len(ids))):
                a, b = rng.sample(ids, 2)
                blocked.add((a, b))
        else:  # bridge: two halves that each see only the middle node
            rest = ids[1:]  # ids[0] is the middle node: it keeps its links to both halves
            half = len(rest) // 2
            cut(rest[:half], rest[half:])
        self.network.blocked = blocked
        self.partition_kind = kind
        self.stats["partitions"] += 1
        self._event(f"partition: {kind} {sorted(blocked)}")

    # -- liveness and the end ---------------------------------------------------------------------

    def _liveness(self) -> None:
        start = self.now
        for _ in range(LIVENESS_TICKS * STEPS_PER_TICK):
            self.step(faults=False)
            if self._settled():
                self.stats["settle_ticks"] = (self.now - start) // STEPS_PER_TICK
                self._event(f"settled after {(self.now - start) // STEPS_PER_TICK} ticks")
                return
        raise Violation(f"liveness: not settled {LIVENESS_TICKS} ticks after faults stopped: "
                        f"{self._why_not_settled()}")

    def _settled(self) -> bool:
        return self._why_not_settled() == ""

    def _why_not_settled(self) -> str:
        rafts = [n.raw.raft for n in self.sim_nodes.values() if n.raw is not None]
        leaders = [r for r in rafts if r.role is Role.LEADER]
        if len(leaders) != 1:
            return f"{len(leaders)} leaders"
        leader = leaders[0]
        pending = [c.payload for c in self.client_list if c.payload is not None]
        if pending:
            return f"{len(pending)} client operations not committed: {pending[:3]}"
        if leader.log.term(leader.log.commit_index) != leader.term:
            return "leader has not committed in its term"
        for raft in rafts:
            if raft.term != leader.term or raft.log.applied_index != leader.log.commit_index:
                return (f"node {raft.node_id} at term {raft.term} applied {raft.log.applied_index}, "
                        f"leader commit {leader.log.commit_index}")
        for iid, alive in self.alive_at_end.items():
            want = HealthStatus.PASSING if alive else HealthStatus.CRITICAL
            for node in self.sim_nodes.values():
                record = node.health.get(iid)
                if record is None or record.status is not want:
                    return (f"instance {iid}, whose keepalive {'ran' if alive else 'was stopped'} throughout, is "
                            f"{record.status.value if record else 'missing'} on node {node.node_id}")
        return ""

    def _final_checks(self) -> None:
        for node in self.sim_nodes.values():
            assert node.raw is not None
            self.checker.check_converged_log(node.node_id, node.raw.raft)
        leaked = [c for c in self.reads]
        self.stats["reads_unanswered"] = len(leaked)

    def _event(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"[tick {self.now / STEPS_PER_TICK:7.1f}] {text}")


def run(seed: int, *, nodes: int = 3, mutant: str | None = None,
        trace: Callable[[str], None] | None = None) -> SimResult:
    """Run one seeded simulation to the end and report what it found."""
    raft_class: type[Raft] = Raft
    tracker_class: type[HealthTracker] = HealthTracker
    if mutant is not None:
        if mutant not in MUTANTS:
            raise ValueError(f"unknown mutant {mutant!r}; accepted: {', '.join(sorted(MUTANTS))}")
        broken = MUTANTS[mutant][0]
        if issubclass(broken, Raft):
            raft_class = broken
        else:
            tracker_class = broken
    return Simulation(seed, nodes, raft_class=raft_class, tracker_class=tracker_class, mutant=mutant,
                      trace=trace).run()


__all__ = ["Entry", "SimResult", "Simulation", "run", "replay_command"]
