"""The node loop: the only code that reads a clock and does I/O.

It wires the node's rooms together and drives the Raft core, doing each Ready's work in the
contract's order: persist (LMDB, one transaction and at most one fsync per Ready), send (ZeroMQ),
apply (the replica, then the DNS child), advance. The rooms:

- ``requests.Requests``: pending client writes and reads, retries, replies;
- ``ops.ClientOps`` and ``snapshot_ops.SnapshotOps``: what each client operation does;
- ``replica.Replica``: the catalogue and its applied term;
- ``status``: `registry status`, systemd's STATUS=, the DNS child's staleness input;
- ``snapshotter.Snapshotter``: the node's own snapshots, off the loop;
- ``health.HealthRoom``: TTL clocks, the prober child, the leader's health transitions;
- ``renewals.Renewals``: TTL renewals, answered under the leader lease or relayed to the leader;
- ``transfer.Transfers``: leadership hand-overs (`registry leader transfer`, SIGTERM on a leader).

SIGTERM or SIGINT on a leader first hands leadership over to the most caught-up voter (at most
``NodeConfig.handover_timeout_s``, then up to ``HANDOVER_DRAIN_S`` more for the writes waiting
here to be answered through the new leader), then stops; a second signal stops at once. A
follower stops at once.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq

from registry.catalogue import CommandError, ValidationError
from registry.naming import format_hostport, node_id_for
from registry.raft import (
    Config,
    Membership,
    NodeId,
    NotLeader,
    ProposalDropped,
    RawNode,
    Ready,
    RemoteError,
    Role,
    Snapshot,
)
from registry.storage import LmdbStorage, Storage
from registry.health import Prober, ProberSettings
from registry.transport import Forward, ForwardOp, Transport, ZmqTransport
from registry_dns.process import DnsProcess
from registry_dns.settings import DnsSettings

from .client_api import MAX_RESTORE_REQUEST_BYTES, ClientServer
from .config import NodeConfig
from .health import HealthRoom
from .member_view import MAX_MEMBERS_BYTES, MAX_MEMBERS_REPLY_BYTES, MalformedMembers, MemberView
from .members import Directory, Member, MemberError, decode_directory, encode_directory
from .ops import ClientOps, render
from .renewals import MAX_PASS_BYTES, MAX_PASS_REPLY_BYTES, Renewals
from .replica import Replica
from .requests import Failure, Outcome, Requests
from .sdnotify import Notifier, watchdog_interval_s
from .snapshot_ops import SnapshotOps
from .snapshotter import Snapshotter, freeze_heap
from .status import NodeStats, StatusReport, SystemdStatus, describe, leader_contact_age
from .transfer import MAX_TRANSFER_BYTES, MAX_TRANSFER_REPLY_BYTES, MalformedTransfer, Transfers

MAX_CATCH_UP_TICKS = 5  # after a stall, tick at most this many times at once
#: The largest forwarded proposal a leader accepts, per ForwardOp: an encoded register or
#: deregister stays far below the first; a restore carries a whole catalogue. The catalogue still
#: checks every entry when it applies it; this only bounds what a peer can make a leader log.
MAX_FORWARD_BYTES = {ForwardOp.WRITE: 128 * 1024, ForwardOp.RESTORE: MAX_RESTORE_REQUEST_BYTES,
                     ForwardOp.HEARTBEAT: 1024, ForwardOp.PASS: MAX_PASS_BYTES,
                     ForwardOp.PASS_REPLY: MAX_PASS_REPLY_BYTES, ForwardOp.TRANSFER: MAX_TRANSFER_BYTES,
                     ForwardOp.TRANSFER_REPLY: MAX_TRANSFER_REPLY_BYTES, ForwardOp.MEMBERS: MAX_MEMBERS_BYTES,
                     ForwardOp.MEMBERS_REPLY: MAX_MEMBERS_REPLY_BYTES}
#: Forwards that are not proposals: the renewals room's.
RENEWAL_OPS = frozenset({ForwardOp.HEARTBEAT, ForwardOp.PASS, ForwardOp.PASS_REPLY})
#: Forwards that the transfer and members rooms answer: requests and their replies, never proposed.
ROOM_OPS = frozenset({ForwardOp.TRANSFER, ForwardOp.TRANSFER_REPLY, ForwardOp.MEMBERS, ForwardOp.MEMBERS_REPLY})
# NB: every second the young generations are collected and the survivors frozen (gc.freeze):
# the Raft log (one tracked object per entry) and the catalogue (a few per instance) reach
# millions of long-lived, acyclic objects, and a full cyclic collection over them took 0.36-0.42 s
# per million here, longer than an election timeout (5 spurious elections in a 10-minute run at
# 64 clients before this; 0 after). Frozen objects are still freed by reference counting.
GC_FREEZE_INTERVAL_S = 1.0
#: After a hand-over on SIGTERM, how long the old leader may stay to answer the writes and reads
#: waiting on it (now forwarded to the new leader) before it stops and answers the rest `stopping`.
HANDOVER_DRAIN_S = 1.0


class _NodeLog(logging.LoggerAdapter):
    """One line per event with level, node and term."""

    def __init__(self, logger: logging.Logger, node: Node) -> None:
        super().__init__(logger, {})
        self._node = node

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        raw = getattr(self._node, "raw", None)
        term = raw.basic_status().term if raw is not None else "-"
        return f"node={self._node.config.name} term={term} {msg}", kwargs


class Node:
    """One Raft node: the wiring of its rooms and the event loop that drives them."""

    def __init__(self, config: NodeConfig, *, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.log = _NodeLog(logger or logging.getLogger("registry.node"), self)
        self.clock = clock
        self.node_id = node_id_for(config.name)
        # The member directory (names and addresses by id): from --peer at first start, else as
        # stored with the newest snapshot (see _initial_directory). Replaced, never mutated.
        self.members = Directory.from_config(config)
        self.names: dict[NodeId, str] = self.members.names()
        self._stop_requested = False
        self._stop_now = False  # a second SIGTERM/SIGINT: no hand-over, or no more of it
        self._handover_until: float | None = None  # set when a hand-over on SIGTERM starts
        self._handover_outcome: Outcome | None = None
        self.stats = NodeStats()
        self.notifier = Notifier()  # systemd (Type=notify); a no-op outside it
        self._systemd = SystemdStatus(self.notifier, self.names)
        watchdog = watchdog_interval_s()
        self._watchdog_every_s = watchdog / 2 if watchdog is not None and self.notifier.enabled else None
        self.raw: RawNode | None = None
        self.storage = LmdbStorage(config.data_dir, node_name=config.name, cluster_id=config.cluster_id,
                                   map_size_bytes=config.max_db_bytes, logger=logging.getLogger("registry.storage"))
        self._context = zmq.Context()
        self.transport: ZmqTransport | None = None
        self.client: ClientServer | None = None
        self.dns: DnsProcess | None = None
        self.snapshots: Snapshotter | None = None
        self.prober: Prober | None = None
        self.replica = Replica()
        try:
            self._initial_directory()
            state = self.storage.initial_state(Membership(frozenset(self.names)))
            if state.snapshot.index > 0:
                self.replica.restore(state.snapshot_data, state.snapshot.index, int(state.snapshot.term),
                                     "the stored snapshot")
            rng = random.Random(int.from_bytes(os.urandom(8), "big"))
            self.raw = raw = RawNode(Config(self.node_id, rng, election_ticks=config.election_ticks,
                                            heartbeat_ticks=config.heartbeat_ticks, applied=state.snapshot.index),
                                     state)
            self.snapshots = Snapshotter(storage=self.storage, entries=config.snapshot_entries,
                                         max_bytes=config.snapshot_bytes, keep=config.snapshot_keep,
                                         start_index=state.snapshot.index, logger=self.log, clock=clock)
            self.transport = ZmqTransport(node_id=self.node_id, node_name=config.name, bind=config.raft,
                                          peers={m.name: m.raft for m in self.members.members()
                                                 if m.node_id != self.node_id}, context=self._context)
            self.client = client = ClientServer(self._context, config.client,
                                                logging.getLogger("registry.client_api"))
            self.requests = Requests(raw=raw, forward=self._forward, replies=client, render=render,
                                     timeout_s=config.request_timeout_s, tick_s=config.tick_interval_ms / 1000)
            self.status = StatusReport(config=config, names=self.names, raw=raw, replica=self.replica,
                                       storage=self.storage, snapshots=self.snapshots, stats=self.stats,
                                       dns=lambda: self.dns, clock=clock,
                                       sections={"health": lambda: {**self.health.status(),
                                                                    "renewals": self.renewals.status()},
                                                 "transfer": lambda: self.transfers.status(self.clock())})
            snapshot_ops = SnapshotOps(requests=self.requests, replica=self.replica, raw=raw, replies=client,
                                       request_timeout_s=config.request_timeout_s)
            # NB: probes run in a child process, never on this loop: a slow or hanging probe cannot
            # delay a heartbeat, and 10,000 checks do not share this interpreter (docs/health.md).
            self.prober = Prober(ProberSettings(), logger=logging.getLogger("registry.health"))
            self.prober.start(timeout_s=10)
            self.health = HealthRoom(raw=raw, replica=self.replica, requests=self.requests, prober=self.prober,
                                     log=self.log, clock=clock)
            self.renewals = Renewals(raw=raw, replica=self.replica, reads=self.requests, tracker=self.health,
                                     forward=self._forward, replies=client, timeout_s=config.request_timeout_s)
            self.transfers = Transfers(raw=raw, node_id=self.node_id, names=self.names, forward=self._forward,
                                       replies=client, log=self.log, timeout_s=config.handover_timeout_s)
            self.member_view = MemberView(raw=raw, node_id=self.node_id, directory=lambda: self.members,
                                          last_contact=self.stats.last_contact,
                                          min_fault_tolerance=config.min_fault_tolerance, forward=self._forward,
                                          replies=client, timeout_s=config.request_timeout_s)
            self.ops = ClientOps(requests=self.requests, replica=self.replica, replies=client,
                                 snapshots=snapshot_ops, renewals=self.renewals, transfers=self.transfers,
                                 status=self.status, members=self.member_view)
            # NB: DNS runs in a child process with its own catalogue replica, fed every committed
            # entry, so DNS load and Raft work never compete for one interpreter (docs/ARCHITECTURE.md).
            self.dns = DnsProcess(DnsSettings(address=config.dns, domain=config.domain, ttl_s=config.dns_ttl_s,
                                              negative_ttl_s=config.dns_negative_ttl_s,
                                              max_udp_payload=config.dns_max_udp,
                                              max_stale_s=config.dns_max_stale_s, nameservers=self._nameservers()),
                                  snapshot=lambda: self.replica.catalogue.to_bytes())
            self.dns.start(timeout_s=10)
            if state.snapshot.index > 0:
                self.dns.restore(state.snapshot_data)  # first: the entries it is fed next follow it
            freeze_heap()  # the restored catalogue and the log: long-lived
        except BaseException:
            self.close()
            raise
        self.log.info("started: %s; restored the snapshot at index %d (%d bytes) and the log up to index %d, "
                      "term %d, commit %d", config.describe(), state.snapshot.index, len(state.snapshot_data),
                      state.entries[-1].index if state.entries else state.snapshot.index, state.hard_state.term,
                      state.hard_state.commit)

    def _initial_directory(self) -> None:
        """The directory at start: the one stored with the newest snapshot, if any, with this
        node's own entry and every --peer flag applied over it (so moving a server by editing its
        flags keeps working as before membership changes existed); without a stored one (a new
        data directory, or a snapshot written by an earlier version) the flags alone.

        TODO(i15): once CONFIG entries exist, replay the changes in the log after the snapshot
        (Directory.apply with each entry's ConfChange) and keep only the core's members
        (Directory.restricted_to(raw.membership.members)); flags then apply to initial members only."""
        stored = self.storage.snapshot_members
        if stored is None:
            return
        try:
            directory = decode_directory(stored)
        except MemberError as exc:
            self.log.warning("ignoring the member directory stored with the snapshot (%s); using --peer", exc)
            return
        for member in self.members.members():
            old = directory.get(member.node_id)
            if member.client is None and old is not None:
                member = Member(member.name, member.raft, old.client)  # a --peer flag names no client address
            if old is not None and old != member:
                self.log.info("member %s: the configuration's addresses replace the stored ones", member.name)
            directory = directory.with_member(member)
        self.log.info("member directory as stored with the snapshot, with the configuration applied: %s",
                      ", ".join(f"{m.name}={format_hostport(*m.raft)}" for m in directory.members()))
        self.members = directory
        self.names.clear()
        self.names.update(directory.names())

    # -- lifecycle --------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Stop (SIGTERM, SIGINT): after a hand-over if this node leads; a second call stops at once."""
        if self._stop_requested:
            self._stop_now = True
        self._stop_requested = True

    def _should_stop(self, now: float) -> bool:
        """Whether the loop ends now: on a stop request, once the hand-over (if this node leads)
        has ended and what waited here was answered, or at the hand-over's deadline."""
        if not self._stop_requested:
            return False
        if self._stop_now:
            return True
        if self._handover_until is None:
            return not self._begin_handover(now)
        if now >= self._handover_until:
            self.log.warning("stopping: the hand-over, and the requests waiting here, did not end within %.2f s",
                             self.config.handover_timeout_s + HANDOVER_DRAIN_S)
            return True
        outcome = self._handover_outcome
        if outcome is None:
            return False
        if isinstance(outcome, Failure):
            return True  # the followers elect after their timeout, as without a hand-over
        return self.requests.pending == (0, 0)

    def _begin_handover(self, now: float) -> bool:
        """On a stop request: start handing leadership over if this node leads and another voter
        can take it. Returns whether it started."""
        assert self.raw is not None
        if self.raw.basic_status().role is not Role.LEADER or self.raw.transfer_candidate() is None:
            return False
        timeout_s = self.config.handover_timeout_s
        self._handover_until = now + timeout_s + HANDOVER_DRAIN_S
        self.log.info("stop requested on the leader: handing leadership over first (at most %.2f s; a second "
                      "SIGTERM or SIGINT stops at once)", timeout_s)
        self.transfers.request(None, now, self._on_handover)
        return True

    def _on_handover(self, outcome: Outcome) -> None:
        self._handover_outcome = outcome
        if isinstance(outcome, Failure):
            self.log.warning("stopping without a hand-over: %s", outcome.message)
        else:
            self.log.info("stopping after the hand-over to %s (term %d); answering what waits here first",
                          outcome["leader"], outcome["term"])

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `until()` is true), then stop cleanly."""
        assert self.transport is not None and self.client is not None and self.raw is not None
        assert self.snapshots is not None
        raw, snapshots = self.raw, self.snapshots
        poller = zmq.Poller()
        poller.register(self.transport.socket, zmq.POLLIN)
        poller.register(self.client.socket, zmq.POLLIN)
        prober_fd = self.prober.fileno() if self.prober is not None else None
        if prober_fd is not None:
            poller.register(prober_fd, zmq.POLLIN)
        interval = self.config.tick_interval_ms / 1000
        next_tick = self.clock() + interval
        # Store open, state restored, Raft/client/DNS sockets bound (all in __init__): ready to
        # serve. Readiness does not wait for an election.
        self._systemd.ready(raw.basic_status())
        ping_every = self._watchdog_every_s
        next_ping = self.clock() + ping_every if ping_every is not None else float("inf")
        next_freeze = self.clock() + GC_FREEZE_INTERVAL_S
        try:
            while not self._should_stop(self.clock()) and not (until is not None and until()):
                wake = min(next_tick, next_ping)
                batch_due = self.renewals.next_due()
                if batch_due is not None:
                    wake = min(wake, batch_due)
                timeout_ms = max(0.0, (wake - self.clock()) * 1000)
                if raw.has_ready():
                    timeout_ms = 0
                if snapshots.running:
                    timeout_ms = min(timeout_ms, 10.0)  # notice the thread's end soon
                events = dict(poller.poll(timeout_ms))
                busy_from = time.perf_counter()
                if self.clock() - next_tick >= interval:
                    # Two ticks or more are late: the core's tick count lags the clock, and so
                    # would the lease, until rounds sent from now on replace it.
                    self.renewals.note_stall(self.clock(), self.config.election_ticks * interval)
                if self.transport.socket in events:
                    self._receive_raft()
                if self.client.socket in events:
                    self._receive_clients()
                if prober_fd is not None and prober_fd in events:
                    self.health.on_prober_readable(self.clock())
                now = self.clock()
                if now >= next_ping:  # only from here: a hung loop stops pinging and systemd kills it
                    assert ping_every is not None
                    self.notifier.watchdog()
                    next_ping = now + ping_every
                if now >= next_tick:
                    behind = int((now - next_tick) / interval) + 1
                    for _ in range(min(behind, MAX_CATCH_UP_TICKS)):
                        raw.tick()
                    next_tick = max(next_tick + behind * interval, now + interval / 2)
                    self.requests.tick(now)
                    self.renewals.tick(now)
                    self.health.tick(now)
                    self.transfers.check(now)
                    self.member_view.check(now)
                    self._tell_dns_leader_contact(now)
                    if not snapshots.running:
                        self.storage.compact_step()  # what adopt_snapshot left, a bounded batch per tick
                    if now >= next_freeze:
                        gc.collect(1)
                        freeze_heap()
                        next_freeze = now + GC_FREEZE_INTERVAL_S
                self.renewals.flush(now)  # renewals relayed in a batch, at most one per MIN_GAP_S
                self._handle_ready()
                snapshots.maybe_finish(raw)
                snapshots.maybe_start(self.replica.catalogue, self.replica.applied_term, raw.membership,
                                      lambda: encode_directory(self.members))
                snapshots.note_iteration(time.perf_counter() - busy_from)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping")
        transfers = self.transfers.fail_all("stopping", "the node is shutting down; retry another")
        writes, reads = self.requests.fail_all("stopping", "the node is shutting down; retry another")
        reads += self.renewals.fail_all("stopping", "the node is shutting down; retry another")
        transfers += self.member_view.fail_all("stopping", "the node is shutting down; retry another")
        if transfers:
            self.log.info("stopping: answered %d leadership transfer or members requests with 'stopping'",
                          transfers)
        self.log.info("stopping: answered %d pending writes and %d reads with 'stopping'", writes, reads)
        self.close()
        self.log.info("stopped")

    def close(self) -> None:
        if self.prober is not None:
            self.prober.stop()
            self.prober = None
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
        if len(message.payload) > MAX_FORWARD_BYTES[message.op]:
            self.stats.remote_errors += 1
            self.log.warning("dropped a forwarded %s of %d bytes from %s: over the limit of %d", message.op.name,
                             len(message.payload), self.names.get(message.source), MAX_FORWARD_BYTES[message.op])
            return
        if message.op in RENEWAL_OPS:
            self.renewals.on_forward(message.source, message.op, message.payload, self.clock())
            return
        if message.op in ROOM_OPS:
            self._forward_to_room(message)
            return
        try:
            self.raw.propose(message.payload)
            self.requests.counts.proposals += 1
        except (NotLeader, ProposalDropped):
            pass  # the origin retries; at-most-once sessions make that safe

    def _forward_to_room(self, message: Forward) -> None:
        """A forwarded request (or its answer) that a room handles, not a proposal; a malformed
        one is dropped and counted."""
        now, source, payload = self.clock(), message.source, message.payload
        try:
            if message.op is ForwardOp.TRANSFER:
                self.transfers.forwarded(source, payload, now)
            elif message.op is ForwardOp.TRANSFER_REPLY:
                self.transfers.forwarded_reply(source, payload)
            elif message.op is ForwardOp.MEMBERS:
                self.member_view.forwarded_request(source, payload, now)
            else:
                self.member_view.forwarded_reply(source, payload)
        except (MalformedTransfer, MalformedMembers) as exc:
            self.stats.remote_errors += 1
            if isinstance(exc, MalformedTransfer):
                self.transfers.counts.malformed += 1
            else:
                self.member_view.malformed += 1
            self.log.warning("dropped a malformed %s from %s: %s", message.op.name, self.names.get(source), exc)

    def _forward(self, leader: NodeId, op: ForwardOp, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send([Forward(self.node_id, leader, data, op)])

    def _receive_clients(self) -> None:
        assert self.client is not None
        now = self.clock()
        for request in self.client.drain():
            try:
                self.ops.handle(request, now)
            except (ValidationError, CommandError) as exc:
                self.client.error(request.identity, request.request_id, "invalid", str(exc))
            except Exception as exc:  # NB: a request the checks above missed must not stop the node
                self.client.malformed += 1
                self.log.warning("refused a client %s request that broke its handler: %r", request.op, exc)
                self.client.error(request.identity, request.request_id, "bad_request",
                                  f"the request could not be handled: {exc}")

    # -- the Ready cycle --------------------------------------------------------------------------

    def _handle_ready(self) -> None:
        assert self.raw is not None
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
                self._systemd.maybe_update(raw.basic_status())

    def _persist_and_send(self, ready: Ready) -> None:
        """Steps 1 and 2 of the Ready contract (see persist_and_send)."""
        assert self.transport is not None
        self.stats.fsyncs += persist_and_send(ready, self.storage, self.transport)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        """A leader's snapshot, persisted: restore the catalogue and the DNS child from it
        (Ready step 3, before `committed`, which follow it)."""
        meta = snapshot.meta
        self.replica.restore(snapshot.data, meta.index, int(meta.term), "the leader's snapshot")
        assert self.snapshots is not None
        self.snapshots.on_installed(meta)
        if self.dns is not None:
            self.dns.restore(snapshot.data)
        self.log.info("installed the leader's snapshot at index %d term %d (%d bytes)", meta.index, meta.term,
                      len(snapshot.data))
        self.requests.on_snapshot_installed(self.clock())
        self.health.rebuild()

    def _apply(self, ready: Ready) -> None:
        if ready.committed:
            assert self.snapshots is not None
            self.snapshots.on_applied(ready.committed)
            applied_entries = self.replica.apply(ready.committed)
            for applied in applied_entries:
                self.stats.applied_entries += 1
                self.requests.on_applied(applied)
            self.health.on_applied(applied_entries, self.clock())
            if self.dns is not None:
                # After the catalogue applied them, so the snapshot the child may ask for matches.
                self.dns.apply([(e.index, int(e.kind), e.data) for e in ready.committed])
        self.requests.on_read_states(ready.read_states, self.replica.applied_index)

    def _on_soft_state(self, ready: Ready) -> None:
        soft = ready.soft_state
        assert soft is not None and self.raw is not None
        basic = self.raw.basic_status()
        self.log.info("%s", describe(basic, self.names))
        self.health.on_role(basic.role, int(basic.term), self.clock())
        if soft.leader_id:  # a leader is known (again, or a new one): send waiting writes now, not at the retry timer
            self.requests.on_leader_known(self.clock())
        self.transfers.check(self.clock())

    def _tell_dns_leader_contact(self, now: float) -> None:
        assert self.raw is not None
        if self.dns is not None:
            self.dns.leader_contact(leader_contact_age(self.raw.basic_status(), self.stats.last_contact, now))

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


def persist_and_send(ready: Ready, storage: Storage, transport: Transport) -> int:
    """Steps 1 and 2 of the Ready contract, with the leader's appends sent first; returns the
    number of fsyncs (0 or 1).

    NB: the leader's AppendEntries and Heartbeats go out BEFORE its own durable write
    (dissertation §10.2.1; Ready.messages_before_persist), so the followers' fsyncs overlap
    the leader's: ZeroMQ sends from its own I/O thread while LMDB commits. The core counts the
    leader's own entries only after advance(), so commit still needs a durable majority.
    Votes and acknowledgements wait for the write, as always.
    """
    early = ready.messages_before_persist()
    if early:
        transport.send(early)
    fsyncs = 0
    if ready.entries or ready.hard_state is not None or ready.snapshot is not None:
        storage.save(ready.entries, ready.hard_state, sync=ready.must_sync, snapshot=ready.snapshot)
        fsyncs = int(ready.must_sync)
    late = ready.messages_after_persist() if early else ready.messages
    if late:
        transport.send(late)
    return fsyncs
