"""The node loop: the only code that reads a clock and does I/O.

It drives the Raft core and does each Ready's work in the contract's order: persist (LMDB,
one transaction and at most one fsync per Ready), send (ZeroMQ), apply (catalogue), advance.
Client requests arrive on the client socket and are answered once their entry is applied here.
"""

from __future__ import annotations

import gc
import ipaddress
import itertools
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from registry.catalogue import (
    Catalogue,
    CommandError,
    Deregister,
    Deregistered,
    Register,
    Registered,
    Rejected,
    Request,
    Restored,
    SnapshotError,
    ValidationError,
    encode_request,
)
from registry.catalogue.frozen import thaw
from registry.naming import format_hostport, node_id_for
from registry.raft import (
    Config,
    EntryKind,
    Membership,
    NoLeader,
    NodeId,
    NotLeader,
    ProposalDropped,
    RawNode,
    Ready,
    RemoteError,
    Role,
    Snapshot,
)
from registry.storage import CorruptStorage, LmdbStorage
from registry.transport import Forward, ZmqTransport
from registry_dns.process import DnsProcess
from registry_dns.settings import DnsSettings

from . import snapshot_ops
from .client_api import ClientRequest, ClientServer
from .config import NodeConfig
from .sdnotify import Notifier, watchdog_interval_s
from .snapshotter import Snapshotter, freeze_heap

RETRY_INTERVAL_S = 0.5  # a write or read not done by then is proposed / forwarded / asked again
MAX_CATCH_UP_TICKS = 5  # after a stall, tick at most this many times at once
MAX_FORWARD_BYTES = 128 * 1024
# NB: every second the young generations are collected and the survivors frozen (gc.freeze):
# the Raft log (one tracked object per entry) and the catalogue (a few per instance) reach
# millions of long-lived, acyclic objects, and a full cyclic collection over them took 0.36-0.42 s
# per million here, longer than an election timeout (5 spurious elections in a 10-minute run at
# 64 clients before this; 0 after). Frozen objects are still freed by reference counting.
GC_FREEZE_INTERVAL_S = 1.0
MAX_FORWARD_RESTORE_BYTES = 48 * 1024**2 + 64 * 1024  # a snapshot_restore entry (catalogue.MAX_RESTORE_BYTES)


@dataclass
class _PendingWrite:
    data: bytes
    waiters: list[tuple[bytes, int]]  # (client identity, request id)
    deadline: float
    retry_at: float = 0.0
    sent_once: bool = False  # reached a leader at least once: a timeout means "outcome unknown"
    retry_s: float = RETRY_INTERVAL_S  # longer for a big entry (snapshot_ops: a restore)


@dataclass
class _PendingRead:
    identity: bytes
    request_id: int
    service: str | None
    deadline: float
    retry_at: float
    index: int | None = None  # set once the read index is known
    answer: Callable[[_PendingRead], None] | None = None  # instead of _answer_read (snapshot_ops: a save)


@dataclass
class NodeStats:
    proposals: int = 0
    forwarded: int = 0
    remote_errors: int = 0
    readies: int = 0
    fsyncs: int = 0
    applied_entries: int = 0
    last_contact: dict[NodeId, float] = field(default_factory=dict)


class _NodeLog(logging.LoggerAdapter):
    """One line per event with level, node and term."""

    def __init__(self, logger: logging.Logger, node: Node) -> None:
        super().__init__(logger, {})
        self._node = node

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        raft = getattr(self._node, "raw", None)
        term = raft.raft.term if raft is not None else "-"
        return f"node={self._node.config.name} term={term} {msg}", kwargs


class Node:
    def __init__(self, config: NodeConfig, *, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.log = _NodeLog(logger or logging.getLogger("registry.node"), self)
        self.clock = clock
        self.node_id = node_id_for(config.name)
        self.names: dict[NodeId, str] = {node_id_for(n): n for n in config.members}
        self.membership = Membership(frozenset(self.names))
        self._stop_requested = False
        self.stats = NodeStats()
        self.notifier = Notifier()  # systemd (Type=notify); a no-op outside it
        watchdog = watchdog_interval_s()
        self._watchdog_every_s = watchdog / 2 if watchdog is not None and self.notifier.enabled else None
        self._status_sent: tuple[Role, int, NodeId] | None = None
        self.raw: RawNode | None = None
        self.storage = LmdbStorage(config.data_dir, node_name=config.name, cluster_id=config.cluster_id,
                                   map_size_bytes=config.max_db_bytes, logger=logging.getLogger("registry.storage"))
        self._context = zmq.Context()
        self.transport: ZmqTransport | None = None
        self.client: ClientServer | None = None
        self.dns: DnsProcess | None = None
        self.snapshots: Snapshotter | None = None
        try:
            state = self.storage.initial_state(self.membership)
            # Invariant: applied_term is the term of the entry at catalogue.applied_index (the
            # snapshot's term right after a restore): `registry snapshot save` needs the pair.
            self.applied_term = int(state.snapshot.term)
            self.catalogue = Catalogue()
            if state.snapshot.index > 0:
                self._restore_catalogue(state.snapshot_data, state.snapshot.index, "the stored snapshot")
            rng = random.Random(int.from_bytes(os.urandom(8), "big"))
            self.raw = RawNode(Config(self.node_id, rng, election_ticks=config.election_ticks,
                                      heartbeat_ticks=config.heartbeat_ticks, applied=state.snapshot.index), state)
            self.snapshots = Snapshotter(storage=self.storage, entries=config.snapshot_entries,
                                         max_bytes=config.snapshot_bytes, keep=config.snapshot_keep,
                                         start_index=state.snapshot.index, logger=self.log, clock=clock)
            self.transport = ZmqTransport(node_id=self.node_id, node_name=config.name, bind=config.raft,
                                          peers=dict(config.peers), context=self._context)
            self.client = ClientServer(self._context, config.client, logging.getLogger("registry.client_api"))
            # NB: DNS runs in a child process with its own catalogue replica, fed every committed
            # entry, so DNS load and Raft work never compete for one interpreter (docs/ARCHITECTURE.md).
            self.dns = DnsProcess(DnsSettings(address=config.dns, domain=config.domain, ttl_s=config.dns_ttl_s,
                                              negative_ttl_s=config.dns_negative_ttl_s,
                                              max_udp_payload=config.dns_max_udp,
                                              max_stale_s=config.dns_max_stale_s, nameservers=self._nameservers()),
                                  snapshot=lambda: self.catalogue.to_bytes())
            self.dns.start(timeout_s=10)
            if state.snapshot.index > 0:
                self.dns.restore(state.snapshot_data)  # first: the entries it is fed next follow it
            freeze_heap()  # the restored catalogue and the log: long-lived
        except BaseException:
            self.close()
            raise
        self._writes: dict[tuple[str, int], _PendingWrite] = {}
        self._reads: dict[bytes, _PendingRead] = {}
        self._reads_waiting_apply: list[tuple[int, bytes]] = []
        self._read_ids = itertools.count(1)
        self._role = Role.FOLLOWER
        self._leader = NodeId(0)
        self.log.info("started: %s; restored the snapshot at index %d (%d bytes) and the log up to index %d, "
                      "term %d, commit %d", config.describe(), state.snapshot.index, len(state.snapshot_data),
                      state.entries[-1].index if state.entries else state.snapshot.index, state.hard_state.term,
                      state.hard_state.commit)

    def _restore_catalogue(self, data: bytes, index: int, what: str) -> None:
        """Replace the catalogue by a snapshot's; a snapshot that fails to restore is fatal."""
        try:
            # NB: thaw, not restore(): bytes a catalogue wrote, checked by their SHA-256; it skips
            # validating every field again, most of the cost at start (registry/catalogue/frozen.py).
            self.catalogue = thaw(data, max_sessions=self.catalogue.max_sessions)
        except SnapshotError as exc:
            raise CorruptStorage(f"{what} at index {index} does not restore the catalogue: {exc}") from exc
        if self.catalogue.applied_index != index:
            raise CorruptStorage(f"{what} at index {index} holds the catalogue at index "
                                 f"{self.catalogue.applied_index}")

    # -- lifecycle --------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `until()` is true), then stop cleanly."""
        assert self.transport is not None and self.client is not None and self.raw is not None
        poller = zmq.Poller()
        poller.register(self.transport.socket, zmq.POLLIN)
        poller.register(self.client.socket, zmq.POLLIN)
        interval = self.config.tick_interval_ms / 1000
        next_tick = self.clock() + interval
        # Store open, state restored, Raft/client/DNS sockets bound (all in __init__): ready to
        # serve. Readiness does not wait for an election.
        raft = self.raw.raft
        self._status_sent = (raft.role, raft.term, raft.leader_id)
        self.notifier.ready(self._status_text())
        ping_every = self._watchdog_every_s
        next_ping = self.clock() + ping_every if ping_every is not None else float("inf")
        snapshots = self.snapshots
        assert snapshots is not None
        next_freeze = self.clock() + GC_FREEZE_INTERVAL_S
        try:
            while not self._stop_requested and not (until is not None and until()):
                timeout_ms = max(0.0, (min(next_tick, next_ping) - self.clock()) * 1000)
                if self.raw.has_ready():
                    timeout_ms = 0
                if snapshots.running:
                    timeout_ms = min(timeout_ms, 10.0)  # notice the thread's end soon
                events = dict(poller.poll(timeout_ms))
                busy_from = time.perf_counter()
                if self.transport.socket in events:
                    self._receive_raft()
                if self.client.socket in events:
                    self._receive_clients()
                now = self.clock()
                if now >= next_ping:  # only from here: a hung loop stops pinging and systemd kills it
                    assert ping_every is not None
                    self.notifier.watchdog()
                    next_ping = now + ping_every
                if now >= next_tick:
                    behind = int((now - next_tick) / interval) + 1
                    for _ in range(min(behind, MAX_CATCH_UP_TICKS)):
                        self.raw.tick()
                    next_tick = max(next_tick + behind * interval, now + interval / 2)
                    self._retry_and_expire(now)
                    self._tell_dns_leader_contact(now)
                    if not snapshots.running:
                        self.storage.compact_step()  # what adopt_snapshot left, a bounded batch per tick
                    if now >= next_freeze:
                        gc.collect(1)
                        freeze_heap()
                        next_freeze = now + GC_FREEZE_INTERVAL_S
                self._handle_ready()
                snapshots.maybe_finish(self.raw)
                snapshots.maybe_start(self.catalogue, self.applied_term, self.raw.raft.membership)
                snapshots.note_iteration(time.perf_counter() - busy_from)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping")
        self.log.info("stopping: answering %d pending writes and %d reads with 'stopping'",
                      sum(len(w.waiters) for w in self._writes.values()), len(self._reads))
        if self.client is not None:
            for write in self._writes.values():
                for identity, request_id in write.waiters:
                    self.client.error(identity, request_id, "stopping", "the node is shutting down; retry another")
            for read in self._reads.values():
                self.client.error(read.identity, read.request_id, "stopping", "the node is shutting down; retry another")
        self._writes.clear()
        self._reads.clear()
        self.close()
        self.log.info("stopped")

    def close(self) -> None:
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self._context.term()
        if self.snapshots is not None:
            self.snapshots.close()  # its thread writes into the data directory
        self.storage.close()
        self.notifier.close()

    # -- inputs -----------------------------------------------------------------------------------

    def _receive_raft(self) -> None:
        assert self.transport is not None and self.raw is not None
        now = self.clock()
        for message in self.transport.drain():
            self.stats.last_contact[message.source] = now
            if isinstance(message, Forward):
                self._propose_forwarded(message)
                continue
            try:
                self.raw.step(message)
            except RemoteError as exc:
                self.stats.remote_errors += 1
                self.log.warning("dropped an impossible message from %s: %s", self.names.get(message.source), exc)

    def _propose_forwarded(self, message: Forward) -> None:
        assert self.raw is not None
        # NB: only a restore (snapshot_ops) may be larger than a client request can make an entry;
        # encode_request writes its op (msgpack fixstr "restore") within the first 128 bytes. The
        # catalogue still checks every entry when it applies it; this only bounds what is logged.
        if len(message.payload) > MAX_FORWARD_BYTES and (len(message.payload) > MAX_FORWARD_RESTORE_BYTES
                                                          or b"\xa7restore" not in message.payload[:128]):
            self.stats.remote_errors += 1
            return
        try:
            self.raw.propose(message.payload)
            self.stats.proposals += 1
        except (NotLeader, ProposalDropped):
            pass  # the origin retries; at-most-once sessions make that safe

    def _receive_clients(self) -> None:
        assert self.client is not None
        now = self.clock()
        for request in self.client.drain():
            try:
                if request.op in ("register", "deregister"):
                    self._start_write(request, now)
                elif request.op == "services":
                    self._start_read(request, now)
                elif request.op in snapshot_ops.OPS:
                    snapshot_ops.handle(self, request, now)
                else:
                    self.client.reply(request.identity, request.request_id, self.status())
            except (ValidationError, CommandError) as exc:
                self.client.error(request.identity, request.request_id, "invalid", str(exc))
            except Exception as exc:  # NB: a request the checks above missed must not stop the node
                self.client.malformed += 1
                self.log.warning("refused a client %s request that broke its handler: %r", request.op, exc)
                self.client.error(request.identity, request.request_id, "bad_request",
                                  f"the request could not be handled: {exc}")

    # -- writes -----------------------------------------------------------------------------------

    def _start_write(self, request: ClientRequest, now: float) -> None:
        args = request.args
        client_id, seq = args.get("client"), args.get("seq")
        if request.op == "register":
            command: Register | Deregister = Register(
                service=_arg(args, "service", str), address=_arg(args, "address", str), port=_arg(args, "port", int),
                instance_id=_arg(args, "instance_id", str, optional=True), tags=tuple(_arg(args, "tags", list, default=[])),
                meta=_arg(args, "meta", dict, default={}))
        else:
            command = Deregister(service=_arg(args, "service", str),
                                 instance_id=_arg(args, "instance_id", str, optional=True),
                                 address=_arg(args, "address", str, optional=True),
                                 port=_arg(args, "port", int, optional=True))
        data = encode_request(Request(client_id=client_id, seq=seq, command=command))  # validates
        key = (client_id, seq)
        write = self._writes.get(key)
        if write is None:
            write = self._writes[key] = _PendingWrite(data, [], now + self.config.request_timeout_s)
        write.waiters.append((request.identity, request.request_id))
        self._send_write(write, now)

    def _send_write(self, write: _PendingWrite, now: float) -> None:
        assert self.raw is not None and self.transport is not None
        write.retry_at = now + write.retry_s
        raft = self.raw.raft
        if raft.role is Role.LEADER:
            try:
                self.raw.propose(write.data)
                self.stats.proposals += 1
                write.sent_once = True
            except ProposalDropped:
                write.retry_at = now + self.config.tick_interval_ms / 1000
        elif raft.leader_id:
            self.transport.send([Forward(self.node_id, raft.leader_id, write.data)])
            self.stats.forwarded += 1
            write.sent_once = True
        else:
            write.retry_at = now + self.config.tick_interval_ms / 1000

    # -- reads ------------------------------------------------------------------------------------

    def _start_read(self, request: ClientRequest, now: float) -> None:
        service = _arg(request.args, "service", str, optional=True)
        if _arg(request.args, "stale", bool, default=False):
            self._answer_read(request.identity, request.request_id, service)
            return
        context = next(self._read_ids).to_bytes(8, "big")
        read = _PendingRead(request.identity, request.request_id, service, now + self.config.request_timeout_s, 0.0)
        self._reads[context] = read
        self._ask_read_index(context, read, now)

    def _ask_read_index(self, context: bytes, read: _PendingRead, now: float) -> None:
        assert self.raw is not None
        read.retry_at = now + RETRY_INTERVAL_S
        try:
            self.raw.read_index(context)
        except NoLeader:
            read.retry_at = now + self.config.tick_interval_ms / 1000

    def _answer_read(self, identity: bytes, request_id: int, service: str | None) -> None:
        assert self.client is not None
        view = self.catalogue.view
        if service is not None:
            names = [service.lower()]
        else:
            names = list(view.service_names())
        services = {name: [_instance_json(i) for i in view.instances(name)] for name in names}
        self.client.reply(identity, request_id, {"index": view.applied_index, "services": services})

    def _retry_and_expire(self, now: float) -> None:
        assert self.client is not None
        for key, write in list(self._writes.items()):
            if now >= write.deadline:
                del self._writes[key]
                code, text = (("timeout", "not applied within the timeout; the outcome is unknown, retry with "
                               "the same client id and seq") if write.sent_once else
                              ("no_leader", "no leader could be reached within the timeout"))
                for identity, request_id in write.waiters:
                    self.client.error(identity, request_id, code, text)
            elif now >= write.retry_at:
                self._send_write(write, now)
        for context, read in list(self._reads.items()):
            if now >= read.deadline:
                del self._reads[context]
                self.client.error(read.identity, read.request_id, "no_leader",
                                  "no read index could be confirmed by a quorum within the timeout")
            elif read.index is None and now >= read.retry_at:
                del self._reads[context]  # a new context, so a late answer to the old one is ignored
                context = next(self._read_ids).to_bytes(8, "big")
                self._reads[context] = read
                self._ask_read_index(context, read, now)

    # -- the Ready cycle --------------------------------------------------------------------------

    def _handle_ready(self) -> None:
        assert self.raw is not None and self.transport is not None
        raw = self.raw
        while raw.has_ready():
            ready = raw.ready()
            self.stats.readies += 1
            self._persist_and_send(ready)
            if ready.snapshot is not None:
                self._install_snapshot(ready.snapshot)
            self._apply(ready)
            if ready.soft_state is not None:
                self._on_soft_state(ready)
            raw.advance(ready)
            if self.notifier.enabled:
                self._notify_status()

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        """A leader's snapshot, persisted: restore the catalogue and the DNS child from it
        (Ready step 3, before `committed`, which follow it)."""
        meta = snapshot.meta
        self._restore_catalogue(snapshot.data, meta.index, "the leader's snapshot")
        self.applied_term = int(meta.term)
        assert self.snapshots is not None
        self.snapshots.on_installed(meta)
        if self.dns is not None:
            self.dns.restore(snapshot.data)
        self.log.info("installed the leader's snapshot at index %d term %d (%d bytes)", meta.index, meta.term,
                      len(snapshot.data))
        # Writes waiting here whose entries the snapshot covers are never applied here: ask the
        # leader again now (the session answers a retry with the first result, Raft §8).
        now = self.clock()
        for write in self._writes.values():
            write.retry_at = min(write.retry_at, now)

    def _persist_and_send(self, ready: Ready) -> None:
        """Steps 1 and 2 of the Ready contract, with the leader's appends sent first.

        NB: the leader's AppendEntries and Heartbeats go out BEFORE its own durable write
        (dissertation §10.2.1; Ready.messages_before_persist), so the followers' fsyncs overlap
        the leader's: ZeroMQ sends from its own I/O thread while LMDB commits. The core counts the
        leader's own entries only after advance(), so commit still needs a durable majority.
        Votes and acknowledgements wait for the write, as always.
        """
        assert self.transport is not None
        early = ready.messages_before_persist()
        if early:
            self.transport.send(early)
        if ready.entries or ready.hard_state is not None or ready.snapshot is not None:
            self.storage.save(ready.entries, ready.hard_state, sync=ready.must_sync, snapshot=ready.snapshot)
            self.stats.fsyncs += ready.must_sync
        late = ready.messages_after_persist() if early else ready.messages
        if late:
            self.transport.send(late)

    def _apply(self, ready: Ready) -> None:
        assert self.client is not None
        self._apply_entries(ready)
        if ready.committed and self.dns is not None:
            # After the catalogue applied them, so the snapshot the child may ask for matches.
            self.dns.apply([(e.index, int(e.kind), e.data) for e in ready.committed])
        self._release_reads(ready)

    def _apply_entries(self, ready: Ready) -> None:
        assert self.client is not None
        if ready.committed:
            self.applied_term = int(ready.committed[-1].term)
            assert self.snapshots is not None
            self.snapshots.on_applied(ready.committed)
        for entry in ready.committed:
            if entry.kind is not EntryKind.NORMAL:
                self.catalogue.skip(entry.index)
                continue
            applied = self.catalogue.apply(entry.index, entry.data)
            self.stats.applied_entries += 1
            write = self._writes.pop((applied.client_id, applied.seq), None)
            if write is None:
                continue
            result = applied.result
            for identity, request_id in write.waiters:
                if isinstance(result, Registered):
                    self.client.reply(identity, request_id, {"instance_id": result.instance_id,
                                                             "created": result.created, "index": applied.index})
                elif isinstance(result, Deregistered):
                    self.client.reply(identity, request_id, {"removed": list(result.removed), "index": applied.index})
                elif isinstance(result, Restored):
                    self.client.reply(identity, request_id,
                                      snapshot_ops.restored_reply(result.services, result.instances, applied.index))
                elif isinstance(result, Rejected):
                    self.client.error(identity, request_id, result.code, result.message)

    def _release_reads(self, ready: Ready) -> None:
        for state in ready.read_states:
            read = self._reads.get(state.context)
            if read is not None:
                read.index = state.index
                self._reads_waiting_apply.append((state.index, state.context))
        if self._reads_waiting_apply:
            applied_index = self.catalogue.view.applied_index
            still: list[tuple[int, bytes]] = []
            for index, context in self._reads_waiting_apply:
                if index <= applied_index:
                    read = self._reads.pop(context, None)
                    if read is not None and read.answer is not None:
                        read.answer(read)
                    elif read is not None:
                        self._answer_read(read.identity, read.request_id, read.service)
                else:
                    still.append((index, context))
            self._reads_waiting_apply = still

    def _on_soft_state(self, ready: Ready) -> None:
        soft = ready.soft_state
        assert soft is not None
        if soft.role is not self._role or soft.leader_id != self._leader:
            leader = self.names.get(soft.leader_id, "none") if soft.leader_id else "none"
            self.log.info("role %s, leader %s", soft.role.value, leader)
        self._role, self._leader = soft.role, soft.leader_id
        if soft.leader_id:  # a leader is known again: send waiting writes now, not at the retry timer
            now = self.clock()
            for write in self._writes.values():
                if not write.sent_once:
                    self._send_write(write, now)

    def _status_text(self) -> str:
        assert self.raw is not None
        raft = self.raw.raft
        leader = self.names.get(raft.leader_id, "?") if raft.leader_id else "none"
        return f"{raft.role.value}, term {raft.term}, leader {leader}"

    def _notify_status(self) -> None:
        """STATUS= for systemd when role, term or leader changed (after a Ready only)."""
        assert self.raw is not None
        raft = self.raw.raft
        now = (raft.role, raft.term, raft.leader_id)
        if now != self._status_sent:
            self._status_sent = now
            self.notifier.status(self._status_text())

    def _tell_dns_leader_contact(self, now: float) -> None:
        assert self.raw is not None
        if self.dns is None:
            return
        raft = self.raw.raft
        if raft.role is Role.LEADER:
            age: float | None = 0.0
        elif raft.leader_id and raft.leader_id in self.stats.last_contact:
            age = now - self.stats.last_contact[raft.leader_id]
        else:
            age = None
        self.dns.leader_contact(age)

    def _nameservers(self) -> list[tuple[str, str]]:
        """Every member as a name server, with the address it is reached at (its DNS host if that
        is specific, else its Raft host); names that are not IP literals get no glue."""
        out = []
        for name in self.config.members:
            if name == self.config.name:
                host = self.config.dns[0] if self.config.dns[0] not in ("0.0.0.0", "::") else self.config.raft[0]
            else:
                host = self.config.peers[name][0]
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            out.append((name, host))
        return out

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.raw is not None
        st = self.raw.status()
        now = self.clock()
        peers: dict[str, Any] = {}
        for node_id, name in sorted(self.names.items(), key=lambda kv: kv[1]):
            if node_id == self.node_id:
                continue
            contact = self.stats.last_contact.get(node_id)
            progress = st.progress.get(node_id)
            peers[name] = {
                "match": progress.match_index if progress else None,
                "next": progress.next_index if progress else None,
                "state": progress.state.value if progress else None,
                "last_contact_ms": None if contact is None else int((now - contact) * 1000),
            }
        return {
            "node": self.config.name, "node_id": self.node_id, "role": st.role.value, "term": st.term,
            "leader": self.names.get(st.leader_id) if st.leader_id else None,
            "commit": st.commit_index, "applied": self.catalogue.view.applied_index, "last_index": st.last_index,
            "raft": format_hostport(*self.config.raft), "client": format_hostport(*self.config.client),
            "dns": format_hostport(*self.config.dns), "peers": peers,
            "dns_stats": _dns_summary(self.dns.stats()) if self.dns is not None else None,
            "snapshot": self._snapshot_status(st.first_index, st.snapshot_index),
        }

    def _snapshot_status(self, first_index: int, snapshot_index: int) -> dict[str, Any]:
        stored = self.storage.stats()
        out = {"index": snapshot_index, "bytes": stored.snapshot_bytes, "stored_index": stored.snapshot_index,
               "log_first_index": first_index, "stored_first_index": stored.first_index,
               "db_bytes": stored.used_bytes, "applied_term": self.applied_term}
        if self.snapshots is not None:
            out.update(self.snapshots.status())
        return out


def _arg(args: dict[str, Any], key: str, kind: type, *, optional: bool = False, default: Any = None) -> Any:
    value = args.get(key, default)
    if value is None:
        if optional or default is not None:
            return value
        raise ValidationError(key, f"missing argument {key!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValidationError(key, f"argument {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _dns_summary(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("alive", "answered", "stale", "stale_queries", "dropped", "errors", "qps", "applied_index",
            "leader_contact_age_s", "error")
    return {k: stats.get(k) for k in keys if k in stats}


def _instance_json(instance: Any) -> dict[str, Any]:
    return {"id": instance.id, "address": instance.address, "port": instance.port,
            "tags": list(instance.tags), "meta": dict(instance.meta)}
