"""Raft messages over ZeroMQ: one ROUTER bound for inbound, one DEALER per peer for outbound.

Each node binds a ROUTER on its raft address and connects one DEALER to every peer's raft
address, with its node name as the DEALER's identity. So the ROUTER learns who sent each frame
from the identity ZeroMQ attaches, and a message is accepted only if its `source` is the id of
that name (naming.node_id_for) and its `target` is this node.

    inbound frames at the ROUTER:  [identity = peer node name (UTF-8), payload = codec frame]

Delivery is best effort, as Raft expects: a message that cannot be queued at once (the peer is
not connected, or its queue is at `send_hwm`) is dropped and counted, never waited for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import zmq
from zmq.utils.monitor import parse_monitor_message

from registry.naming import format_hostport, node_id_for, validate_node_name, zmq_endpoint
from registry.raft import NodeId

from .base import TransportError
from .codec import CodecError, Wire, decode, encode

__all__ = ["TransportStats", "ZmqTransport"]

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1_000
# ZMTP heartbeats on the DEALERs only: a peer that vanished without closing its TCP connection
# (host crash, cable) is noticed within the timeout, and sends to it then fail fast instead of
# filling the queue. The ROUTER must not send them: see _bind.
HEARTBEAT_IVL_MS = 1_000
HEARTBEAT_TIMEOUT_MS = 3_000
# TCP keepalive on the ROUTER instead: the kernel reaps an inbound connection whose peer vanished
# after KEEPALIVE_IDLE_S + KEEPALIVE_COUNT * KEEPALIVE_INTVL_S of silence (6 s).
KEEPALIVE_IDLE_S = 3
KEEPALIVE_INTVL_S = 1
KEEPALIVE_COUNT = 3

_ZERO_COPY_BYTES = 64 * 1024
_MONITOR_EVENTS = (
    zmq.EVENT_CLOSED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@dataclass(slots=True)
class TransportStats:
    """Counters since the transport was created. `ZmqTransport.stats` returns a copy."""

    sent: int = 0  # frames handed to ZeroMQ
    dropped_full: int = 0  # not queued: the peer is not connected (IMMEDIATE) or its queue is at SNDHWM
    dropped_unknown_target: int = 0  # addressed to a node that is not a peer (never was, or was removed)
    received: int = 0  # messages returned by drain()
    malformed: int = 0  # inbound: not exactly [identity, payload], or the payload failed to decode
    oversized: int = 0  # outbound frames over max_frame_bytes, not sent (the peer would cut the connection)
    unknown_peer: int = 0  # inbound from an identity that is not a peer's name
    spoofed: int = 0  # inbound with a source other than the sender's id, or a target other than us
    # Inbound connections closed, for any reason: a peer went away or restarted, sent a frame over
    # max_frame_bytes, or never spoke ZMTP (those are also counted in handshake_failed).
    disconnects: int = 0
    handshake_failed: int = 0  # inbound connections that never completed a ZMTP handshake (HTTP, scanners)
    peers_added: int = 0  # add_peer() calls after construction
    peers_removed: int = 0  # remove_peer() calls


class ZmqTransport:
    """The ZeroMQ transport of one node. Not thread-safe: one thread (the node loop) uses it.

    Poll `socket` (the ROUTER) for POLLIN with a zmq.Poller, then call `drain()`; call `send()`
    with each Ready's messages once they may be sent. Nothing blocks, and nothing a peer sends
    can make either method raise.

    NB: `max_frame_bytes` is ZeroMQ's MAXMSGSIZE on the ROUTER, which libzmq enforces per frame
    by closing the connection that carried an oversized frame (that frame is lost, and possibly
    others in flight on that connection; the peer's DEALER reconnects within RECONNECT_IVL_MS).
    Python never sees such a frame: it shows as `stats.disconnects`. For the same reason `send()` refuses to send
    a frame over `max_frame_bytes` (`stats.oversized`): cluster members must agree on the limit.
    """

    def __init__(
        self,
        *,
        node_id: NodeId,
        node_name: str,
        bind: tuple[str, int],
        peers: Mapping[str, tuple[str, int]],
        context: zmq.Context | None = None,  # type: ignore[type-arg]
        send_hwm: int = 10_000,
        max_frame_bytes: int = 64 * 1024**2,
    ) -> None:
        if node_id != node_id_for(node_name):
            raise ValueError(f"node id {node_id} is not the id of node name {node_name!r} "
                             f"({node_id_for(node_name)}): peers would reject every message as spoofed")
        if node_name in peers:
            raise ValueError(f"node {node_name!r} is listed among its own peers")
        if send_hwm < 1 or max_frame_bytes < 1:
            raise ValueError("send_hwm and max_frame_bytes must be positive")
        self.node_id = node_id
        self.node_name = node_name
        self._max_frame_bytes = max_frame_bytes
        ids = {validate_node_name(name): node_id_for(name) for name in peers}
        if len(set(ids.values())) != len(ids):
            raise ValueError("two peer names hash to the same node id; rename one")
        # Invariant: _ids maps exactly the peers that have a DEALER in _dealers (by id), and the
        # keys of _ids_by_identity are exactly those peers' DEALER identities.
        self._ids = ids
        self._peer_ids = MappingProxyType(ids)
        self._send_hwm = send_hwm
        self._ids_by_identity: dict[bytes, NodeId] = {name.encode(): nid for name, nid in ids.items()}
        self._stats = TransportStats()
        self._closed = False
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._dealers: dict[NodeId, zmq.Socket] = {}  # type: ignore[type-arg]
        self._router = self._context.socket(zmq.ROUTER)
        self._monitor: zmq.Socket | None = None  # type: ignore[type-arg]
        self._endpoint = ""
        try:
            self._address = self._bind(bind, send_hwm)
            self._monitor = self._router.get_monitor_socket(_MONITOR_EVENTS)
            for name, (host, port) in peers.items():
                self._dealers[ids[name]] = self._connect(host, port, send_hwm)
        except BaseException:
            self.close()
            raise

    def _bind(self, bind: tuple[str, int], hwm: int) -> tuple[str, int]:
        host, port = bind
        router = self._router
        router.setsockopt(zmq.LINGER, 0)
        # A restarted peer reconnects with the same identity; it must take over the old
        # connection, which may not look dead yet, instead of being refused.
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_frame_bytes)
        router.setsockopt(zmq.RCVHWM, hwm)
        # NB: no ZMTP heartbeats here. libzmq 4.3.5 aborts the process (`!_io_error`,
        # stream_engine_base.cpp:310; libzmq issues #4364, #4767) when a connection that lost its
        # identity to a reconnecting peer (ROUTER_HANDOVER) receives one more frame, is then reset,
        # and its heartbeat timer fires. The DEALERs' heartbeats still detect dead peers; TCP
        # keepalive closes inbound connections whose peer vanished (docs/ARCHITECTURE.md, transport).
        router.setsockopt(zmq.TCP_KEEPALIVE, 1)
        router.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        router.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
        router.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_COUNT)
        router.setsockopt(zmq.IPV6, _wants_ipv6(host))
        try:
            router.bind(zmq_endpoint(host, port))
        except zmq.ZMQError as e:
            raise TransportError(f"cannot bind raft address {format_hostport(host, port)}: "
                                 f"{zmq.strerror(e.errno)}") from None
        self._endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return host, int(self._endpoint.rpartition(":")[2])

    def _connect(self, host: str, port: int, hwm: int) -> zmq.Socket:  # type: ignore[type-arg]
        dealer = self._context.socket(zmq.DEALER)
        try:
            dealer.setsockopt(zmq.IDENTITY, self.node_name.encode())
            dealer.setsockopt(zmq.SNDHWM, hwm)
            dealer.setsockopt(zmq.LINGER, 0)
            # Queue only on a live connection: a peer that is down costs dropped messages, not memory.
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            dealer.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            dealer.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            dealer.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            dealer.setsockopt(zmq.IPV6, _wants_ipv6(host))
            dealer.connect(zmq_endpoint(host, port))
        except zmq.ZMQError as e:
            dealer.close(0)
            raise TransportError(f"cannot connect to peer {format_hostport(host, port)}: "
                                 f"{zmq.strerror(e.errno)}") from None
        return dealer

    # -- the node loop's interface ------------------------------------------------------------

    @property
    def socket(self) -> zmq.Socket:  # type: ignore[type-arg]
        """The ROUTER: register it with a zmq.Poller for POLLIN, then call drain()."""
        return self._router

    @property
    def address(self) -> tuple[str, int]:
        """The bound raft address (the real port when `bind` asked for port 0)."""
        return self._address

    @property
    def peer_ids(self) -> Mapping[str, NodeId]:
        """Peer name -> node id."""
        return self._peer_ids

    @property
    def stats(self) -> TransportStats:
        return replace(self._stats)

    def add_peer(self, name: str, node_id: NodeId, host: str, port: int) -> None:
        """Start talking to a new member (a membership change): connect a DEALER to its raft
        address, with the same settings as the initial peers', and accept its frames from now on.

        Raises ValueError for a bad or clashing name or id (the caller's bug or a bad config),
        TransportError when the address cannot be connected to. To move a peer to another
        address, remove it and add it again."""
        if self._closed:
            raise TransportError("add_peer() on a closed transport")
        validate_node_name(name)
        if node_id != node_id_for(name):
            raise ValueError(f"node id {node_id} is not the id of node name {name!r} ({node_id_for(name)})")
        if name == self.node_name:
            raise ValueError(f"node {name!r} cannot be its own peer")
        if name in self._ids:
            raise ValueError(f"node {name!r} is a peer already; remove it first to change its address")
        if node_id in self._dealers:
            raise ValueError(f"node id {node_id} of {name!r} is already a peer's id; rename one")
        dealer = self._connect(host, port, self._send_hwm)
        self._dealers[node_id] = dealer
        self._ids[name] = node_id
        self._ids_by_identity[name.encode()] = node_id
        self._stats.peers_added += 1

    def remove_peer(self, name: str) -> bool:
        """Stop talking to a member (removed from the cluster): close its DEALER, discarding what
        is queued for it, and drop its frames from now on (counted as `unknown_peer`); messages
        addressed to it are dropped as `dropped_unknown_target`. Returns whether it was a peer.

        NB: its inbound connection to our ROUTER stays open until it closes it; what arrives on
        it is dropped and counted, never delivered."""
        if self._closed:
            raise TransportError("remove_peer() on a closed transport")
        node_id = self._ids.pop(name, None)
        if node_id is None:
            return False
        del self._ids_by_identity[name.encode()]
        self._dealers.pop(node_id).close(0)
        self._stats.peers_removed += 1
        return True

    def send(self, messages: Iterable[Wire]) -> None:
        """Queue each message on its target's DEALER, without blocking.

        Messages that cannot be queued at once are dropped and counted (Raft retries)."""
        if self._closed:
            raise TransportError("send() on a closed transport")
        dealers, limit, again = self._dealers, self._max_frame_bytes, zmq.Again
        sent = full = unknown = oversized = 0
        try:
            for m in messages:
                dealer = dealers.get(m.target)
                if dealer is None:
                    unknown += 1
                    continue
                data = encode(m)
                if len(data) > limit:
                    oversized += 1
                    continue
                try:
                    # NB: zero-copy costs more than a copy below ~64 KiB.
                    dealer.send(data, zmq.NOBLOCK, copy=len(data) < _ZERO_COPY_BYTES)
                except again:
                    full += 1
                else:
                    sent += 1
        finally:
            stats = self._stats
            stats.sent += sent
            stats.dropped_full += full
            stats.dropped_unknown_target += unknown
            stats.oversized += oversized

    def drain(self, limit: int = 10_000) -> list[Wire]:
        """Every valid message received so far, without blocking; bad input is dropped and counted.

        At most `limit` inbound messages are examined per call, so a flood cannot starve the
        loop. The rest stay queued: a zmq.Poller (level-triggered) reports the socket readable
        again at once. NB: code that waits on the raw ZMQ_FD instead (edge-triggered: asyncio,
        selectors) must call drain() again until `socket.getsockopt(zmq.EVENTS) & zmq.POLLIN`
        is 0, or it may never wake for what is already queued."""
        if self._closed:
            raise TransportError("drain() on a closed transport")
        self._drain_monitor()
        out: list[Wire] = []
        recv, again, me = self._router.recv, zmq.Again, self.node_id
        ids = self._ids_by_identity
        stats = self._stats
        for _ in range(limit):
            try:
                # NB: two recv() calls are 3-4x faster than recv_multipart(); ZeroMQ delivers a
                # message's frames atomically, and a ROUTER frame always has a body after the identity.
                identity = recv(zmq.NOBLOCK)
                frame = recv(zmq.NOBLOCK, copy=False)
            except again:
                break
            if frame.more:  # more than [identity, payload]: discard the rest of this message
                while recv(zmq.NOBLOCK, copy=False).more:
                    pass
                if identity in ids:
                    stats.malformed += 1
                else:
                    stats.unknown_peer += 1
                continue
            sender = ids.get(identity)
            if sender is None:
                stats.unknown_peer += 1
                continue
            try:
                m = decode(frame.bytes)
            except CodecError:
                stats.malformed += 1
                continue
            if m.source != sender or m.target != me:
                stats.spoofed += 1
                continue
            out.append(m)
        stats.received += len(out)
        return out

    def _drain_monitor(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_DISCONNECTED:
                self._stats.disconnects += 1
            elif event & _HANDSHAKE_FAILED:
                self._stats.handshake_failed += 1

    def close(self, *, linger_ms: int = 0) -> None:
        """Close every socket, and the context if the transport created it. Idempotent.

        With the default `linger_ms=0` messages still queued are discarded at once. A node that
        must get a last message out (TimeoutNow before shutting down) passes a linger: then
        close() blocks, up to `linger_ms`, while the queues empty (only if the transport owns its
        context; with a shared context the linger happens in the background)."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            if not self._own_context:
                self._release_port()
            self._router.disable_monitor()
            self._monitor.close(0)
        self._router.close(0)
        for dealer in self._dealers.values():
            dealer.close(linger_ms)
        if self._own_context:
            self._context.term()

    def _release_port(self, timeout_ms: int = 1_000) -> None:
        """Unbind and wait (bounded) until libzmq has closed the listening socket.

        NB: with a shared context, closing a socket only asks the context's I/O thread to close
        it later, so binding the same port again at once (a node restarted in the same process)
        would fail about one time in three. Terminating our own context waits by itself."""
        assert self._monitor is not None
        try:
            self._router.unbind(self._endpoint)
        except zmq.ZMQError:
            return
        for _ in range(64):  # events queued before CLOSED: a few disconnects, at most
            if not self._monitor.poll(timeout_ms):
                return
            if parse_monitor_message(self._monitor.recv_multipart())["event"] == zmq.EVENT_CLOSED:
                return

    def __enter__(self) -> ZmqTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"bound to {format_hostport(*self._address)}"
        return f"ZmqTransport({self.node_name!r}, {state}, peers={sorted(self._peer_ids)})"


def _wants_ipv6(host: str) -> bool:
    """IPv6 only for IPv6 literals (`::` binds dual-stack).

    NB: host names stay IPv4, as libzmq does by default: with IPv6 on, `localhost` resolves to
    ::1 and would no longer meet a peer that wrote 127.0.0.1."""
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False
