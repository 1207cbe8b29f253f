"""The synchronous client: ZeroMQ DEALER sockets, one per server, driven by the retry policy.

The only module of ``registry.client`` that does I/O: it owns the sockets and the clock, and asks
``retry.RetryPolicy`` what to do next.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import zmq
from zmq.utils.monitor import recv_monitor_message

from registry.catalogue import validation
from registry.naming import INSTANCE_EXAMPLES, AddressError, parse_hostport, validate_node_name, zmq_endpoint

from .arguments import check_check, check_meta, check_tags, checked, looks_like_hostport
from .errors import NotFound, RegistryError, Unavailable, ValidationFailed
from .protocol import (
    MAX_REQUEST_ID,
    Parser,
    T,
    decode_reply,
    encode_request,
    outcome,
    parse_check,
    parse_deregistration,
    parse_heartbeat,
    parse_leader_transfer,
    parse_members,
    parse_registration,
    parse_restoration,
    parse_saved_snapshot,
    parse_services,
    parse_status,
)
from .results import (
    Deregistration,
    Heartbeat,
    InstanceInfo,
    KeepaliveState,
    LeaderTransfer,
    Members,
    NodeStatus,
    Registration,
    Restoration,
    SavedSnapshot,
    Services,
)
from .retry import ATTEMPT_TIMEOUT_S, Ask, Failure, GiveUp, RetryPolicy
from .servers import resolve_servers, resolves

_DOING = {"register": "register", "deregister": "deregister", "pass": "renew a TTL", "services": "list services",
          "status": "get a status", "snapshot_save": "save a snapshot",
          "snapshot_restore": "restore a snapshot", "leader_transfer": "transfer leadership",
          "members": "list the members"}


class Client:
    """A connection to a registry cluster, over the client protocol (docs/client-protocol.md).

    ``servers`` are the nodes' client addresses (HOST:PORT, or [IPv6]:PORT); by default
    ``$REGISTRY_SERVERS`` (comma-separated), else the ``registry up`` addresses
    127.0.0.1:7101-7103. Every call ends within ``timeout_s`` seconds: it asks one server, and if
    that one has not answered after ``attempt_timeout_s`` (default: 2 s, or less so that every
    server gets a turn: ``min(2, timeout_s / len(servers))``), or answers ``no_leader``,
    ``timeout`` or ``stopping``, or its connection is refused or lost (ZeroMQ socket monitor
    events), or its host name does not resolve, it asks the next one, round-robin, while still
    accepting a late answer from the earlier ones. Each call starts at the server that last
    answered. A call ends early, with ``Unavailable`` (code ``no_leader``), when the cluster has
    lost its quorum: fewer than a majority of ``servers`` answer, and those say ``no_leader``
    (``registry.client.retry`` has the rules). ``status_all()`` asks every
    server at once and waits ``status_wait_s`` (``attempt_timeout_s`` if given, else
    ``min(2, timeout_s)``).

    Writes (``register``, ``deregister``) carry this client's id and a sequence number; a retry
    reuses both, so a write is applied at most once. ``Unavailable`` from a write means the
    outcome is unknown.

    NB: not thread-safe in the ZeroMQ sense: use one ``Client`` per thread. Calls on one
    ``Client`` from several threads are serialized by a lock (safe, not concurrent).
    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        servers: Sequence[str] | str | None = None,
        *,
        timeout_s: float = 5.0,
        client_id: str | None = None,
        attempt_timeout_s: float | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if attempt_timeout_s is not None and not attempt_timeout_s > 0:
            raise ValueError(f"attempt_timeout_s must be positive, not {attempt_timeout_s!r}")
        if client_id is None:
            client_id = uuid.uuid4().hex
        checked(validation.validate_client_id, client_id)
        self.servers: tuple[str, ...] = resolve_servers(servers)
        self.client_id = client_id
        self.timeout_s = float(timeout_s)
        # NB: by default short enough that every server gets a turn before the deadline; giving
        # up on a slow server costs little, since its late answer is still accepted.
        if attempt_timeout_s is None:
            self.attempt_timeout_s = min(ATTEMPT_TIMEOUT_S, self.timeout_s / len(self.servers))
            self.status_wait_s = min(ATTEMPT_TIMEOUT_S, self.timeout_s)
        else:
            self.attempt_timeout_s = self.status_wait_s = min(attempt_timeout_s, self.timeout_s)
        self._endpoints = tuple(zmq_endpoint(*parse_hostport(s)) for s in self.servers)
        self._context = zmq.Context.instance()
        # Invariant: _sockets[i] is None or a DEALER connected to servers[i] with no request of
        # an earlier call outstanding (a call closes the sockets it leaves requests on), and
        # _monitors[i] is its monitor (connection events) exactly when _sockets[i] is not None.
        self._sockets: list[zmq.Socket[bytes] | None] = [None] * len(self.servers)
        self._monitors: list[zmq.Socket[bytes] | None] = [None] * len(self.servers)
        # Why servers[i] cannot be reached, from its latest connection event (or a host name that
        # does not resolve); None if it can, or if nothing is known yet.
        self._down: list[Failure | None] = [None] * len(self.servers)
        self._preferred = 0  # where the next call starts: the server that last answered
        self._seq = 0  # Invariant: the seq of the latest write started; 0 before the first
        self._request_id = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- public API ------------------------------------------------------------------------

    def register(
        self,
        service: str,
        address: str,
        port: int,
        *,
        id: str | None = None,  # noqa: A002 (the issue fixes this keyword's name)
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        check: Any = None,
    ) -> Registration:
        """Register an instance of ``service``, or replace the definition of the instance with
        this id: a registration is the whole definition, so tags and meta not given here are
        removed (as Consul's agent register, or etcd's put). Returns once it is committed and
        applied; ``Registration.previous`` says what it replaced. ``id`` None lets the cluster
        derive the id from service, address and port.

        ``check`` decides the instance's health (docs/client-protocol.md, "register"): None for
        none (always passing), a ``registry.catalogue.model.Check``, or its wire map, e.g.
        ``{"kind": "ttl", "ttl_ms": 10_000}`` (renew with ``heartbeat`` or ``keepalive``),
        ``{"kind": "tcp", "interval_ms": 1000, "timeout_ms": 1000}`` or
        ``{"kind": "http", "url": "http://10.0.0.5:8080/health", "interval_ms": 1000,
        "timeout_ms": 1000}``; checked with the catalogue's rules before sending."""
        checked(validation.validate_service, service)
        canonical_address = checked(validation.validate_address, address)
        checked(validation.validate_port, port)
        if id is not None:
            checked(validation.validate_instance_id, id)
        args = {
            "service": service,
            "address": address,
            "port": port,
            "instance_id": id,
            "tags": check_tags(tags),
            "meta": check_meta(meta),
        }
        wire_check = check_check(check)
        if wire_check is not None:
            # NB: only when given, so that a register without a check is the same request as before.
            args["check"] = wire_check
        got = self._call("register", args, parse_registration, write=True)
        instance = InstanceInfo(got.instance_id, canonical_address, port, validation.validate_tags(args["tags"]),
                                dict(validation.validate_meta(args["meta"])), check=parse_check(wire_check))
        return dataclasses.replace(got, instance=instance)

    def deregister(
        self,
        service: str,
        id_or_address: str,
        *,
        by: Literal["auto", "id", "address"] = "auto",
    ) -> Deregistration:
        """Remove instances of ``service`` by instance id or by HOST:PORT. With ``by="auto"``,
        text with a ``:`` is HOST:PORT, anything else an instance id (``looks_like_hostport``);
        ``by="id"`` or ``by="address"`` forces either. Raises ``NotFound`` if nothing matched."""
        if by not in ("auto", "id", "address"):
            raise ValueError(f"by must be 'auto', 'id' or 'address', not {by!r}")
        checked(validation.validate_service, service)
        args: dict[str, Any] = {"service": service}
        if not isinstance(id_or_address, str):
            raise ValidationFailed(f"expected an instance id or HOST:PORT, got {id_or_address!r}",
                                   field="instance_id")
        if by == "address" or (by == "auto" and looks_like_hostport(id_or_address)):
            try:
                host, port = parse_hostport(id_or_address, examples=INSTANCE_EXAMPLES)
            except AddressError as e:
                raise ValidationFailed(str(e), field="address") from None
            checked(validation.validate_address, host)
            args["address"], args["port"] = host, port
        else:
            checked(validation.validate_instance_id, id_or_address)
            args["instance_id"] = id_or_address
        return self._call("deregister", args, parse_deregistration, write=True)

    def heartbeat(self, instance_id: str, service: str | None = None, *,
                  timeout_s: float | None = None) -> Heartbeat:
        """Renew a TTL-checked instance (the protocol's ``pass``): its TTL clock restarts on the
        leader; nothing is written to the log unless it was critical and so turns passing.
        ``service`` may be left out when the id is unique across services. Raises ``NotFound``
        if the instance is gone (deregistered, or expired after its deregister-after): the
        caller must NOT register it again on its own, since someone removed it on purpose.
        ``timeout_s`` overrides the client's for this call. ``pass_`` is the same method, named
        after the op."""
        checked(validation.validate_instance_id, instance_id)
        args: dict[str, Any] = {"instance_id": instance_id}
        if service is not None:
            args["service"] = checked(validation.validate_service, service)
        return self._call("pass", args, parse_heartbeat, timeout_s=timeout_s)

    pass_ = heartbeat

    def keepalive(
        self,
        instance_id: str,
        ttl_ms: int,
        *,
        service: str | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> Iterator[KeepaliveState]:
        """Renew the instance every ``ttl_ms / 3`` until ``wait`` says stop, yielding its state
        each time it changes (not at every heartbeat): ``KeepaliveState`` "passing" or
        "critical" after an answer, "unreachable" (with the error) when a heartbeat failed.

        A heartbeat that fails (no leader, nodes unreachable) is retried at the next period, so
        the keepalive rides out a leader change; each gets at most the period (and at most the
        client's ``timeout_s``), so that one stuck call never lets the TTL run out unseen.
        ``wait(seconds)`` is called between heartbeats: it sleeps up to that long and returns
        True to end the keepalive (``threading.Event().wait`` does just that); by default it only
        sleeps. Raises ``NotFound`` when the instance is gone: it never registers it again.
        ``ValidationFailed`` (e.g. an id in several services without ``service``) also ends it.
        """
        checked(validation.validate_instance_id, instance_id)
        if type(ttl_ms) is not int or ttl_ms <= 0:
            raise ValidationFailed(f"ttl_ms must be a positive integer, got {ttl_ms!r}", field="ttl_ms")
        period_s = ttl_ms / 3000
        wait = wait or _sleep
        state: KeepaliveState | None = None
        while True:
            started = time.monotonic()
            try:
                beat = self.heartbeat(instance_id, service, timeout_s=min(self.timeout_s, period_s))
                now = KeepaliveState(beat.status, index=beat.index)
            except (NotFound, ValidationFailed):
                raise
            except RegistryError as e:  # unavailable now; a later heartbeat may get through
                now = KeepaliveState("unreachable", error=e)
            if state is None or now.state != state.state:
                state = now
                yield now
            if wait(max(0.0, started + period_s - time.monotonic())):
                return

    def services(self, service: str | None = None, *, stale: bool = False) -> Services:
        """Every service's instances, or one service's (an unknown one maps to ``[]``).
        Linearizable unless ``stale``, which answers from what the node has applied."""
        if service is not None:
            checked(validation.validate_service, service)
        return self._call("services", {"service": service, "stale": bool(stale)}, parse_services)

    def status(self) -> NodeStatus:
        """The status of the first server that answers."""
        return self._call("status", {}, parse_status)

    def snapshot_save(self) -> SavedSnapshot:
        """A consistent snapshot of the catalogue, taken through the leader: the node confirms a
        read index with a quorum (linearizable, as ``services``) and answers with its whole
        catalogue once it has applied that index. Each server gets the whole ``timeout_s``
        (the answer can be tens of MB), unless it is unreachable or answers a retryable error."""
        return self._call("snapshot_save", {}, parse_saved_snapshot, attempt_timeout_s=self.timeout_s)

    def snapshot_restore(self, data: bytes) -> Restoration:
        """Replace every service and instance of the cluster by those of ``data`` (a catalogue
        snapshot, ``SavedSnapshot.data``), as one committed write: every node, and its DNS, then
        holds exactly the snapshot's services. Client sessions are the cluster's own, kept.
        Returns once committed and applied. A write: at most once, ``Unavailable`` means the
        outcome is unknown (calling again with the same data is harmless)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValidationFailed(f"a snapshot is bytes, got {type(data).__name__}", field="snapshot")
        data = bytes(data)
        if not 0 < len(data) <= validation.RESTORE_MAX_BYTES:
            raise ValidationFailed(f"a snapshot to restore holds 1 to {validation.RESTORE_MAX_BYTES} bytes, "
                                   f"got {len(data)}", field="snapshot")
        return self._call("snapshot_restore", {"snapshot": data}, parse_restoration, write=True,
                          attempt_timeout_s=self.timeout_s)

    def transfer_leadership(self, name: str | None = None) -> LeaderTransfer:
        """Hand leadership to the member ``name``, or with None to the most caught-up voter
        (dissertation §3.10), and return once a node saw it lead. Any node takes the request
        (a follower forwards it to the leader). Raises ``TransferFailed`` when it did not
        happen (the target did not take over within twice the longest election timeout,
        another node did, no other voter), ``ValidationFailed`` for a name that is not valid
        or not a member. A named node that already leads is a success with ``moved`` False.

        NB: each server gets the whole ``timeout_s``: asking a second one while the first is
        still at it could move leadership twice."""
        if name is not None:
            if not isinstance(name, str):
                raise ValidationFailed(f"a node name is a string, got {type(name).__name__}", field="name")
            try:
                validate_node_name(name)
            except AddressError as e:
                raise ValidationFailed(str(e), field="name") from None
        return self._call("leader_transfer", {"target": name}, parse_leader_transfer,
                          attempt_timeout_s=self.timeout_s)

    def members(self) -> Members:
        """The cluster's members as the leader sees them (the ``members`` op): name, addresses,
        voter or learner, match index, last contact, which one leads, and the fault tolerance.
        Any node takes it (a follower asks the leader). Raises ``Unavailable`` (``no_leader``)
        when no leader answers, and ``RegistryError`` (code ``bad_request``) when the server is
        of a version without the op."""
        try:
            return self._call("members", {}, parse_members)
        except ValidationFailed as e:
            if e.code == "bad_request" and "unknown op" in e.message:
                raise RegistryError(f"{e.server} does not know the members op: it runs an older version of registry; "
                                    "ask an upgraded node (--server) or upgrade it", code=e.code,
                                    server=e.server) from None
            raise

    def status_all(self) -> list[NodeStatus | RegistryError]:
        """Every server's status, in ``servers`` order, asked all at once; a server that cannot
        be reached, or does not answer within ``status_wait_s``, gets an ``Unavailable`` (or the
        error it answered) in its place."""
        with self._lock:
            self._check_open()
            deadline = time.monotonic() + self.status_wait_s
            results: list[NodeStatus | RegistryError | None] = [None] * len(self.servers)

            def unavailable(i: int, failure: Failure) -> Unavailable:
                server = self.servers[i]
                return Unavailable(f"{server}: {failure.detail}", tried=[server], last_error=failure.detail,
                                   server=server)

            outstanding: dict[int, int] = {}
            try:
                for i in range(len(self.servers)):
                    rid = self._send(i, "status", {})
                    if isinstance(rid, Failure):
                        results[i] = unavailable(i, rid)
                    else:
                        outstanding[rid] = i
                while outstanding and (left := deadline - time.monotonic()) > 0:
                    answers, _, downs = self._receive(outstanding, left)
                    for rid, i, reply in answers:
                        del outstanding[rid]
                        try:
                            results[i] = outcome(reply, self.servers[i], parse_status)
                        except RegistryError as e:
                            results[i] = e
                    for rid, i in list(outstanding.items()):
                        if i in downs:
                            del outstanding[rid]
                            results[i] = unavailable(i, downs[i])
            finally:
                self._reset(set(outstanding.values()))
            for i in outstanding.values():
                results[i] = unavailable(i, Failure.no_reply(f"no reply within {self.status_wait_s:g} s"))
            assert all(r is not None for r in results)
            return results  # type: ignore[return-value]

    def close(self) -> None:
        """Close every socket, dropping unsent requests. Idempotent."""
        with self._lock:
            self._closed = True
            self._reset(range(len(self.servers)))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(servers={list(self.servers)!r}, client_id={self.client_id!r})"

    # -- machinery -------------------------------------------------------------------------


    def _call(
        self,
        op: str,
        args: dict[str, Any],
        parse: Parser[T],
        *,
        write: bool = False,
        attempt_timeout_s: float | None = None,
        timeout_s: float | None = None,
    ) -> T:
        """Send ``op`` to one server after another, as the retry policy says, until one answers.

        Earlier attempts stay outstanding: the first answer to any of them ends the call.
        """
        with self._lock:
            self._check_open()
            if write:
                self._seq += 1
                # NB: one seq for every attempt of this call: that is what makes retries safe.
                args = {"client": self.client_id, "seq": self._seq, **args}
            if attempt_timeout_s is None:
                attempt_timeout_s = self.attempt_timeout_s
                if timeout_s is not None:  # NB: shorter than the client's: every server still gets a turn
                    attempt_timeout_s = min(attempt_timeout_s, timeout_s / len(self.servers))
            timeout_s = self.timeout_s if timeout_s is None else timeout_s
            policy = RetryPolicy(
                self.servers, now=time.monotonic(), timeout_s=timeout_s,
                attempt_timeout_s=min(attempt_timeout_s, timeout_s),
                first=self._preferred, doing=_DOING[op])
            outstanding: dict[int, int] = {}  # request id -> server index, unanswered
            try:
                while True:
                    now = time.monotonic()
                    step = policy.step(now)
                    if isinstance(step, GiveUp):
                        raise step.error
                    if isinstance(step, Ask):
                        sent = self._send(step.server, op, args)
                        if isinstance(sent, Failure):
                            policy.failed(step.server, sent, now)
                            continue
                        outstanding[sent] = step.server
                        if (down := self._down[step.server]) is not None:  # queued; do not wait for it
                            policy.failed(step.server, down, now)
                        continue
                    if not outstanding:
                        time.sleep(max(step.until - now, 0.0))
                        continue
                    answers, garbage, downs = self._receive(outstanding, step.until - now)
                    now = time.monotonic()
                    for i, detail in garbage:
                        policy.failed(i, Failure.answered(None, detail), now)
                    for rid, i, reply in answers:
                        del outstanding[rid]
                        try:
                            result = outcome(reply, self.servers[i], parse)
                        except Unavailable as e:  # retryable: the next server, same seq
                            policy.failed(i, Failure.answered(e.code, e.last_error or e.message), now)
                            continue
                        policy.answered(i)
                        return result
                    for i, failure in downs.items():
                        policy.failed(i, failure, now)
            finally:
                self._preferred = policy.preferred
                self._reset(set(outstanding.values()))

    def _send(self, i: int, op: str, args: dict[str, Any]) -> int | Failure:
        """Send one request to server ``i``: its request id, or why it could not be sent."""
        sock = self._socket(i)
        if sock is None:
            assert self._down[i] is not None
            return self._down[i]  # type: ignore[return-value]
        self._request_id = self._request_id % MAX_REQUEST_ID + 1
        rid = self._request_id
        self._read_monitor(i)  # what happened to the connection since the last call
        try:
            sock.send(encode_request(rid, op, args), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            # zmq.Again: the queue to a server that is down is full. Start afresh next time.
            self._reset([i])
            return Failure.unsendable(str(e))
        return rid

    def _receive(
        self, outstanding: Mapping[int, int], wait_s: float
    ) -> tuple[list[tuple[int, int, dict[Any, Any]]], list[tuple[int, str]], dict[int, Failure]]:
        """Wait up to ``wait_s`` for replies on the sockets with requests ``outstanding``.

        Returns the (request id, server index, decoded reply) of those that answer one; the
        (server index, what was wrong) of frames that are not a reply map; and, for servers that
        became unreachable meanwhile, index -> why. Replies to requests no longer outstanding are
        dropped.
        """
        poller = zmq.Poller()
        waiting = sorted(set(outstanding.values()))
        for i in waiting:
            poller.register(self._sockets[i], zmq.POLLIN)
            poller.register(self._monitors[i], zmq.POLLIN)
        ready = dict(poller.poll(max(0, int(wait_s * 1000) + 1)))
        answers = []
        garbage = []
        downs = {}
        for i in waiting:
            sock = self._sockets[i]
            assert sock is not None
            if self._monitors[i] in ready and (why := self._read_monitor(i)) is not None:
                downs[i] = why
            if sock not in ready:
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = decode_reply(frames)
                if reply is None:
                    garbage.append((i, "malformed reply: not one msgpack map frame"))
                    continue
                rid = reply.get("id")
                if type(rid) is int and outstanding.get(rid) == i:
                    answers.append((rid, i, reply))
        return answers, garbage, downs

    def _read_monitor(self, i: int) -> Failure | None:
        """Read server ``i``'s pending connection events into ``_down[i]``; return why the
        connection failed if one of them says so (refused or lost), else None."""
        monitor = self._monitors[i]
        assert monitor is not None
        failed = None
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return failed
            if event == zmq.EVENT_CONNECTED:
                self._down[i] = None
            elif event == zmq.EVENT_CONNECT_RETRIED:
                self._down[i] = failed = Failure.refused()
            elif event == zmq.EVENT_DISCONNECTED:
                self._down[i] = failed = Failure.lost()

    def _socket(self, i: int) -> zmq.Socket[bytes] | None:
        """Server ``i``'s DEALER, opened (and connected) if need be; None, with the reason in
        ``_down[i]``, if its host name does not resolve."""
        sock = self._sockets[i]
        if sock is None:
            host = parse_hostport(self.servers[i])[0]
            # NB: ZeroMQ would retry an unknown name silently, as it does a refused connection.
            if not resolves(host):
                self._down[i] = Failure.unresolvable(host)
                return None
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IPV6, 1)
            # NB: before connect(), so that no connection event is missed.
            self._monitors[i] = sock.get_monitor_socket(
                zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED
            )
            self._down[i] = None
            sock.connect(self._endpoints[i])
            self._sockets[i] = sock
        return sock

    def _reset(self, indexes: Iterable[int]) -> None:
        """Close these servers' sockets (dropping queued requests and late replies); they are
        reopened when next used."""
        for i in indexes:
            sock, monitor = self._sockets[i], self._monitors[i]
            if sock is not None:
                sock.disable_monitor()
                sock.close(linger=0)
                self._sockets[i] = None
            if monitor is not None:
                monitor.close(linger=0)
                self._monitors[i] = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Client is closed")


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False
