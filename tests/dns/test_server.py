"""DnsServer over real UDP and TCP sockets on 127.0.0.1, with dnspython as an independent client.

The responder here is ``StandInResponder``, a minimal stand-in with the interface of
``registry_dns.resolver.Responder`` (A records of ``SERVICE.service.DOMAIN``, SERVFAIL when
stale, None for what dnslib cannot parse): these tests are about the sockets, not the answers.
``tests/dns/test_process.py`` also starts child processes with it while the real responder does
not exist.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from registry.catalogue import CatalogueView, Instance
from registry_dns.server import _SWEEP_INTERVAL_S, COUNTERS, DnsServer

HOST = "127.0.0.1"
WEB = "web.service.registry."


class StandInResponder:
    """Stand-in for registry_dns.resolver.Responder (same constructor, update, answer, counters)."""

    def __init__(self, *, domain: str = "registry.", ttl_s: int = 30, negative_ttl_s: int = 5,
                 nameservers: Any = (), max_udp_payload: int = 1232) -> None:
        self.suffix = ".service." + domain.lower().rstrip(".")
        self.ttl_s = ttl_s
        self.view = CatalogueView.empty()
        self.counters = {"answers": 0, "malformed": 0, "servfail": 0, "updates": 0}

    def update(self, view: CatalogueView) -> None:
        self.view = view
        self.counters["updates"] += 1

    def answer(self, packet: bytes, *, tcp: bool = False, stale: bool = False) -> bytes | None:
        try:
            request = DNSRecord.parse(packet)
            qname = request.q.qname
        except Exception:
            self.counters["malformed"] += 1
            return None
        reply = request.reply()
        if stale:
            self.counters["servfail"] += 1
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        name = str(qname).lower().rstrip(".")
        if name.endswith(self.suffix):
            for instance in self.view.instances(name[: -len(self.suffix)]):
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(instance.address), ttl=self.ttl_s))
        if not reply.rr:
            reply.header.rcode = RCODE.NXDOMAIN
        self.counters["answers"] += 1
        return reply.pack()


def web_view(count: int = 1) -> CatalogueView:
    return CatalogueView.build(
        [Instance(id=f"web-{i}", service="web", address=f"10.0.0.{i + 1}", port=8080) for i in range(count)],
        applied_index=count,
    )


class Running:
    """A DnsServer served by a background thread until close()."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.port = server.address[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=server.serve, args=(self._stop.is_set,),
                                        kwargs={"poll_s": 0.02}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the server loop did not stop"
        self.server.close()

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"not within {timeout_s} s; counters {self.server.counters}"
            time.sleep(0.01)


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(responder: Any = None, **kwargs: Any) -> Running:
        if responder is None:
            responder = StandInResponder()
            responder.update(web_view(2))
        running = Running(DnsServer((HOST, 0), responder, **kwargs))
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def query(qname: str = WEB, rdtype: str = "A") -> dns.message.Message:
    return dns.message.make_query(qname, rdtype)


def addresses(reply: dns.message.Message) -> set[str]:
    return {rd.address for rrset in reply.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A}


def framed(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def read_framed(sock: socket.socket, count: int, timeout_s: float = 5.0) -> list[bytes]:
    sock.settimeout(timeout_s)
    buffer = b""
    out: list[bytes] = []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(out)} of {count} replies"
        buffer += chunk
        while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
            n = int.from_bytes(buffer[:2], "big")
            out.append(buffer[2 : 2 + n])
            buffer = buffer[2 + n :]
    return out


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_udp_query_is_answered(serve: Callable[..., Running]) -> None:
    """A UDP query gets the responder's reply, sent back to the client's address."""
    running = serve()
    reply = dns.query.udp(query(), HOST, port=running.port, timeout=2)
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == {"10.0.0.1", "10.0.0.2"}
    # NB: counters are added after each batch, a moment after the reply left
    running.wait_for(lambda: running.server.counters["answered"] == 1)
    assert running.server.counters["udp_queries"] == 1


def test_tcp_query_is_answered(serve: Callable[..., Running]) -> None:
    """A query over TCP (RFC 1035 §4.2.2 two-byte length framing) gets the reply."""
    running = serve()
    reply = dns.query.tcp(query(), HOST, port=running.port, timeout=2)
    assert addresses(reply) == {"10.0.0.1", "10.0.0.2"}
    running.wait_for(lambda: running.server.counters["tcp_queries"] == 1)


def test_udp_and_tcp_share_the_port_and_report_it(serve: Callable[..., Running]) -> None:
    """Port 0 picks one free port for both protocols; ``address`` gives the real one."""
    running = serve()
    assert running.port != 0
    assert dns.query.udp(query(), HOST, port=running.port, timeout=2).rcode() == dns.rcode.NOERROR
    assert dns.query.tcp(query(), HOST, port=running.port, timeout=2).rcode() == dns.rcode.NOERROR


def test_several_queries_on_one_tcp_connection_are_answered_in_order(serve: Callable[..., Running]) -> None:
    """RFC 7766 §6.2.1: a client may pipeline queries on one connection; each is answered."""
    running = serve()
    queries = [query(WEB if i % 2 == 0 else "nope.service.registry.") for i in range(10)]
    with socket.create_connection((HOST, running.port), timeout=5) as sock:
        sock.sendall(b"".join(framed(q.to_wire()) for q in queries))  # all in one segment
        replies = [dns.message.from_wire(r) for r in read_framed(sock, len(queries))]
        # and more on the same connection afterwards, one at a time
        for q in queries[:3]:
            sock.sendall(framed(q.to_wire()))
            replies.append(dns.message.from_wire(read_framed(sock, 1)[0]))
    assert [r.id for r in replies] == [q.id for q in queries] + [q.id for q in queries[:3]]
    assert [r.rcode() for r in replies[:2]] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN]
    running.wait_for(lambda: running.server.counters["tcp_accepted"] == 1)


def test_tcp_query_sent_byte_by_byte_is_answered(serve: Callable[..., Running]) -> None:
    """Partial reads: the length prefix and the message may arrive in any pieces."""
    running = serve()
    q = query()
    with socket.create_connection((HOST, running.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in framed(q.to_wire()):
            sock.send(bytes([byte]))
            time.sleep(0.002)
        reply = dns.message.from_wire(read_framed(sock, 1)[0])
    assert reply.id == q.id and addresses(reply) == {"10.0.0.1", "10.0.0.2"}


def test_slow_tcp_reader_gets_every_reply(serve: Callable[..., Running]) -> None:
    """Partial writes: replies to a client that does not read pile up (the server stops reading
    it past a bound) and are all delivered, in order, once it reads."""
    running = serve(responder=_BigReplies())
    count = 300  # 32 KB each: 9.6 MB, more than the socket buffers and MAX_TCP_PENDING_BYTES
    queries = [query() for _ in range(count)]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: a small window
        sock.settimeout(10)
        sock.connect((HOST, running.port))
        sender = threading.Thread(target=sock.sendall, args=(b"".join(framed(q.to_wire()) for q in queries),))
        sender.start()
        running.wait_for(lambda: running.server.counters["tcp_throttled"] >= 1)  # the client does not read yet
        replies = read_framed(sock, count, timeout_s=10)
        sender.join(timeout=10)
    assert [int.from_bytes(r[:2], "big") for r in replies] == [q.id for q in queries]
    assert all(len(r) == _BigReplies.SIZE for r in replies)


class _BigReplies(StandInResponder):
    """Answers every query with the same 32 KB message (only the id differs): cheap to make."""

    SIZE = 32_000

    def answer(self, packet: bytes, *, tcp: bool = False, stale: bool = False) -> bytes | None:
        return packet[:2] + bytes(self.SIZE - 2)


def test_garbage_datagrams_are_counted_and_the_server_keeps_answering(serve: Callable[..., Running]) -> None:
    """Unparsable datagrams are dropped (nothing sent) and counted; real queries still work."""
    running = serve()
    rng = random.Random(4)
    garbage = [b"", b"\x00", b"\xff" * 11] + [rng.randbytes(rng.randrange(1, 600)) for _ in range(200)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in garbage:
            sock.sendto(packet, (HOST, running.port))
    running.wait_for(lambda: running.server.counters["udp_queries"] >= len(garbage))
    counters = running.server.counters
    assert counters["dropped"] + counters["answered"] == len(garbage)
    assert counters["dropped"] >= len(garbage) - 10  # a few random packets may parse as DNS
    assert dns.query.udp(query(), HOST, port=running.port, timeout=2).rcode() == dns.rcode.NOERROR


def test_garbage_tcp_streams_are_counted_and_the_server_keeps_answering(serve: Callable[..., Running]) -> None:
    """Garbage inside valid framing is dropped and counted, and the connection goes on; a
    stream of random bytes costs only its own connection."""
    running = serve()
    with socket.create_connection((HOST, running.port), timeout=5) as sock:
        sock.sendall(framed(b"\x01\x02\x03") + framed(b"") + framed(os.urandom(100)) + framed(query().to_wire()))
        reply = dns.message.from_wire(read_framed(sock, 1)[0])
        assert reply.rcode() == dns.rcode.NOERROR
    running.wait_for(lambda: running.server.counters["dropped"] >= 2)
    rng = random.Random(7)
    for _ in range(20):
        with socket.create_connection((HOST, running.port), timeout=5) as sock:
            sock.sendall(rng.randbytes(rng.randrange(1, 3000)))
    assert dns.query.tcp(query(), HOST, port=running.port, timeout=2).rcode() == dns.rcode.NOERROR
    assert dns.query.udp(query(), HOST, port=running.port, timeout=2).rcode() == dns.rcode.NOERROR
    running.wait_for(lambda: running.server.tcp_clients == 0)


class _Exploding(StandInResponder):
    def answer(self, packet: bytes, *, tcp: bool = False, stale: bool = False) -> bytes | None:
        if packet[2:3] == b"\xee":  # a marker in the flags byte of our own bad queries
            raise RuntimeError("responder bug")
        return super().answer(packet, tcp=tcp, stale=stale)


def test_a_responder_that_raises_is_counted_not_fatal(serve: Callable[..., Running]) -> None:
    """A bug in the responder drops that query and is counted in ``errors``; serving goes on."""
    responder = _Exploding()
    responder.update(web_view())
    running = serve(responder=responder)
    bad = bytearray(query().to_wire())
    bad[2] = 0xEE
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(3):
            sock.sendto(bytes(bad), (HOST, running.port))
    with socket.create_connection((HOST, running.port), timeout=5) as sock:
        sock.sendall(framed(bytes(bad)) + framed(query().to_wire()))
        assert dns.message.from_wire(read_framed(sock, 1)[0]).rcode() == dns.rcode.NOERROR
    running.wait_for(lambda: running.server.counters["errors"] == 4)
    assert dns.query.udp(query(), HOST, port=running.port, timeout=2).rcode() == dns.rcode.NOERROR


def test_idle_tcp_connections_are_closed(serve: Callable[..., Running]) -> None:
    """RFC 7766 §6.2.3: a connection without traffic for tcp_idle_timeout_s is closed, not before,
    and by the first idle sweep after it (a bound with room for a loaded machine)."""
    idle_s = 0.3
    running = serve(tcp_idle_timeout_s=idle_s)
    bound_s = 4 * (idle_s + _SWEEP_INTERVAL_S)
    with socket.create_connection((HOST, running.port), timeout=5) as idle:
        started = time.monotonic()  # the server saw the connection no earlier than connect() began
        assert closed_by_server(idle, timeout_s=bound_s)
        assert idle_s - 0.05 <= time.monotonic() - started
    running.wait_for(lambda: running.server.counters["tcp_idle_closed"] == 1)


def test_tcp_connection_cap_closes_the_least_recently_active(serve: Callable[..., Running]) -> None:
    """Beyond max_tcp_clients, the least recently active connection is closed for the new one."""
    running = serve(max_tcp_clients=2)
    first = socket.create_connection((HOST, running.port), timeout=5)
    time.sleep(0.05)
    second = socket.create_connection((HOST, running.port), timeout=5)
    running.wait_for(lambda: running.server.tcp_clients == 2)
    second.sendall(framed(query().to_wire()))
    read_framed(second, 1)
    with first, second, socket.create_connection((HOST, running.port), timeout=5) as third:
        third.sendall(framed(query().to_wire()))
        assert dns.message.from_wire(read_framed(third, 1)[0]).rcode() == dns.rcode.NOERROR
        assert closed_by_server(first, timeout_s=3)
        second.sendall(framed(query().to_wire()))
        assert len(read_framed(second, 1)) == 1
    running.wait_for(lambda: running.server.counters["tcp_evicted"] == 1)


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_port_in_use_raises_oserror_naming_the_address(kind: int) -> None:
    """A busy port (UDP or TCP) fails the constructor with an OSError naming the address."""
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind((HOST, 0))
        if kind == socket.SOCK_STREAM:
            busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError) as caught:
            DnsServer((HOST, port), StandInResponder())
    assert caught.value.errno == errno.EADDRINUSE
    assert f"{HOST}:{port}" in str(caught.value)
    assert ("UDP" if kind == socket.SOCK_DGRAM else "TCP") in str(caught.value)


def test_unresolvable_host_raises_oserror_naming_it() -> None:
    with pytest.raises(OSError, match="no-such-host.invalid"):
        DnsServer(("no-such-host.invalid", 0), StandInResponder())


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_address_binds_ipv6_sockets(serve: Callable[..., Running]) -> None:
    """The host decides the family: ``::1`` serves over IPv6."""
    try:
        server = DnsServer(("::1", 0), StandInResponder())
    except OSError as exc:
        if os.environ.get("CI") == "true":  # NB: CI has IPv6 loopback: never skip there
            raise
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    server.responder.update(web_view())  # type: ignore[attr-defined]
    running = Running(server)
    try:
        assert server.address[0] == "::1"
        assert addresses(dns.query.udp(query(), "::1", port=running.port, timeout=2)) == {"10.0.0.1"}
        assert addresses(dns.query.tcp(query(), "::1", port=running.port, timeout=2)) == {"10.0.0.1"}
    finally:
        running.close()


def test_watched_descriptors_run_before_queries_and_stale_reaches_the_responder() -> None:
    """A watched fd's callback and then on_wake run before the queries of the same wakeup, so a
    staleness change made there applies to them; ``stale`` turns answers into SERVFAIL."""
    order: list[str] = []
    responder = StandInResponder()
    responder.update(web_view())
    left, right = socket.socketpair()
    server = DnsServer((HOST, 0), responder, on_wake=lambda: order.append("wake"))

    def on_feed() -> None:
        order.append("feed:" + left.recv(100).decode())
        server.stale = True

    server.watch(left.fileno(), on_feed)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        right.send(b"x")
        client.sendto(query().to_wire(), server.address)
        time.sleep(0.05)  # both ready before the next select
        server.run_once(1.0)
        reply = dns.message.from_wire(client.recv(4096))
        assert order == ["feed:x", "wake"]
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert server.counters["stale_queries"] == 1
        server.unwatch(left.fileno())
        right.send(b"y")
        server.run_once(0.05)
        assert order == ["feed:x", "wake", "wake"]  # unwatched: no callback
    finally:
        client.close()
        server.close()
        left.close()
        right.close()


def test_udp_batch_drains_many_queries_per_wakeup() -> None:
    """One wakeup reads up to ``udp_batch`` datagrams (the source of the server's rate)."""
    responder = StandInResponder()
    responder.update(web_view())
    server = DnsServer((HOST, 0), responder, udp_batch=50)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(120):
            client.sendto(query().to_wire(), server.address)
        time.sleep(0.05)
        server.run_once(1.0)
        assert server.counters["udp_queries"] == 50
        server.run_once(1.0)
        server.run_once(1.0)
        assert server.counters["udp_queries"] == 120
        assert server.counters["answered"] == 120
    finally:
        client.close()
        server.close()


def test_counters_are_the_documented_ones(serve: Callable[..., Running]) -> None:
    running = serve()
    assert tuple(running.server.counters) == COUNTERS
    assert all(v == 0 for v in running.server.counters.values())


def test_close_is_idempotent_and_frees_the_port() -> None:
    server = DnsServer((HOST, 0), StandInResponder())
    port = server.address[1]
    server.close()
    server.close()
    DnsServer((HOST, port), StandInResponder()).close()
