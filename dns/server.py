"""DnsServer: the DNS sockets (UDP and TCP on one address) and a single-threaded selectors loop.

The server owns no DNS logic: every query goes to ``responder.answer(packet, tcp=..., stale=...)``,
which returns the reply bytes or None (drop). What the server adds is the I/O:

- **UDP**: on each readiness event it reads datagrams until the socket would block (at most
  ``udp_batch`` per event, so TCP clients and watched descriptors get their turn), answers each
  and sends the reply at once. The batching is where the rate comes from: one ``select`` wakeup
  is paid per burst, not per query. A reply that cannot be sent right now (full send buffer) is
  dropped and counted: UDP clients retry.
- **TCP** (RFC 1035 §4.2.2, RFC 7766): two-byte length framing, any number of queries per
  connection (pipelined, answered in order), partial reads and writes, an idle timeout, and at
  most ``max_tcp_clients`` connections (the least recently active one is closed to admit a new
  one, RFC 7766 §6.2.3). Once ``MAX_TCP_PENDING_BYTES`` of replies wait for a client, its
  further queries are held back and it is not read until half of that is sent.
- **Other descriptors** (``watch(fd, callback)``), such as the feed socket of ``registry_dns.child``:
  their callbacks run first in every wakeup, then ``on_wake()``, then the DNS sockets. So work
  that arrived together with queries (a new catalogue view, a staleness change) is in effect
  before those queries are answered.

Nothing a peer sends can raise out of ``run_once``: garbage is the responder's to count and drop,
socket errors close that one TCP connection, and a responder that raises is counted in
``errors`` (and logged, at most once a minute) instead of stopping the loop.

Threads: none. All methods are called from the thread that runs the loop.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["COUNTERS", "MAX_TCP_PENDING_BYTES", "DnsServer", "ResponderLike", "format_address"]

log = logging.getLogger("registry.dns")

#: Replies waiting for one TCP client beyond which the server stops reading its queries.
MAX_TCP_PENDING_BYTES = 256 * 1024
#: Socket buffers asked for (the kernel caps them at net.core.rmem_max / wmem_max).
UDP_BUFFER_BYTES = 4 * 1024 * 1024
_RECV_BYTES = 65_535
_TCP_RECV_BYTES = 16 * 1024  # per wakeup and client: a few hundred queries, so no client hogs the loop
_ACCEPT_BATCH = 64
_SWEEP_INTERVAL_S = 0.5
_ERROR_LOG_INTERVAL_S = 60.0

#: Every counter in ``DnsServer.counters`` (all start at 0 and only grow).
COUNTERS = (
    "udp_queries",      # datagrams received
    "tcp_queries",      # length-framed messages received over TCP
    "answered",         # replies sent (UDP) or queued (TCP)
    "dropped",          # the responder returned None (malformed, unanswerable): nothing sent
    "stale_queries",    # queries handed to the responder with stale=True (it answers SERVFAIL)
    "errors",           # the responder raised: a bug, counted, the query dropped
    "send_errors",      # a UDP reply that could not be sent (full buffer, EMSGSIZE, ...)
    "recv_errors",      # recvfrom/recv failures other than "would block"
    "oversized",        # a TCP reply longer than 65,535 bytes (cannot be framed): dropped
    "tcp_accepted",
    "tcp_closed",       # every TCP connection closed, whatever the reason
    "tcp_idle_closed",  # ... of which closed after tcp_idle_timeout_s without progress
    "tcp_evicted",      # ... of which closed to admit a new client beyond max_tcp_clients
    "tcp_throttled",    # times a TCP client stopped being read because its replies piled up
)  # fmt: skip


class ResponderLike(Protocol):
    """What the server needs from ``registry_dns.resolver.Responder``."""

    def answer(self, packet: bytes, *, tcp: bool = False, stale: bool = False) -> bytes | None: ...


def format_address(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _has_query(inbuf: bytearray) -> bool:
    """True if ``inbuf`` starts with a complete length-framed message."""
    return len(inbuf) >= 2 and len(inbuf) - 2 >= ((inbuf[0] << 8) | inbuf[1])


class _TcpClient:
    __slots__ = ("sock", "fd", "inbuf", "outbuf", "last_active", "reading", "eof")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        # Invariant: last_active is the time of the last byte read or written (or of accept).
        self.last_active = now
        self.reading = True  # False while queries are held back (replies over the bound) or after EOF
        self.eof = False  # the peer closed its side: close once outbuf is flushed


class DnsServer:
    """UDP and TCP DNS sockets bound to ``address`` and the loop that serves them.

    ``address`` is (host, port); the host decides IPv4 or IPv6 (``"::"`` also accepts IPv4 where
    the system allows); port 0 picks a free port, the same for UDP and TCP (see ``address``).
    Binding failures raise OSError naming the address. ``stale`` (attribute) is passed to every
    ``responder.answer`` call; ``on_wake`` (if given) is called once per wakeup, after the watched
    descriptors' callbacks and before any query is read, so it can refresh ``stale`` and the
    responder. ``responder`` may be replaced between wakeups.
    """

    def __init__(
        self,
        address: tuple[str, int],
        responder: ResponderLike,
        *,
        tcp_idle_timeout_s: float = 10.0,
        max_tcp_clients: int = 256,
        udp_batch: int = 256,
        on_wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tcp_idle_timeout_s <= 0:
            raise ValueError(f"tcp_idle_timeout_s must be positive, got {tcp_idle_timeout_s}")
        if max_tcp_clients < 1:
            raise ValueError(f"max_tcp_clients must be at least 1, got {max_tcp_clients}")
        if udp_batch < 1:
            raise ValueError(f"udp_batch must be at least 1, got {udp_batch}")
        self.responder = responder
        self.stale = False
        self.on_wake = on_wake
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.max_tcp_clients = max_tcp_clients
        self.udp_batch = udp_batch
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._clock = clock
        self._closed = False
        self._next_sweep = 0.0
        self._last_error_log = -_ERROR_LOG_INTERVAL_S
        # Invariant: _clients maps fd -> client for every open TCP connection, each registered.
        self._clients: dict[int, _TcpClient] = {}
        self._watched: dict[int, Callable[[], None]] = {}
        self._udp, self._tcp, self._address = _bind(address)
        self._selector = selectors.DefaultSelector()
        try:
            self._selector.register(self._udp, selectors.EVENT_READ, self._on_udp)
            self._selector.register(self._tcp, selectors.EVENT_READ, self._on_accept)
        except BaseException:
            self.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when 0 was asked for."""
        return self._address

    @property
    def tcp_clients(self) -> int:
        return len(self._clients)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (level-triggered), before DNS sockets."""
        self._selector.register(fd, selectors.EVENT_READ, None)
        self._watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None:
            self._selector.unregister(fd)

    def close(self) -> None:
        """Close every socket (not the watched descriptors, which the caller owns). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for client in list(self._clients.values()):
            self._close_client(client)
        selector = getattr(self, "_selector", None)
        if selector is not None:
            selector.close()
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve(self, until: Callable[[], bool] | None = None, *, poll_s: float = 0.5) -> None:
        """Run the loop until ``until()`` is true (checked at least every ``poll_s``), or forever."""
        while until is None or not until():
            self.run_once(poll_s)

    # -- the loop ---------------------------------------------------------------------------------

    def run_once(self, timeout_s: float | None) -> None:
        """Wait up to ``timeout_s`` (None: no bound) for readiness and handle everything ready."""
        now = self._clock()
        if self._clients:
            until_sweep = max(0.0, self._next_sweep - now)
            timeout_s = until_sweep if timeout_s is None else min(timeout_s, until_sweep)
        events = self._selector.select(timeout_s)
        if self._watched:
            for key, _ in events:
                if key.data is None:
                    callback = self._watched.get(key.fd)  # type: ignore[arg-type]
                    if callback is not None:
                        callback()
        if self.on_wake is not None:
            self.on_wake()
        for key, mask in events:
            handler = key.data
            if handler is not None:
                handler(key, mask)
        if self._clients:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)

    def _answer(self, packet: bytes, tcp: bool, stale: bool) -> bytes | None:
        try:
            return self.responder.answer(packet, tcp=tcp, stale=stale)
        except Exception:  # NB: a responder bug must not stop DNS for everyone: count, drop, log
            self._responder_failed(packet, tcp)
            return None

    def _responder_failed(self, packet: bytes, tcp: bool) -> None:
        """Count (and log, at most once a minute) an exception raised by the responder."""
        self.counters["errors"] += 1
        now = self._clock()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.exception("the DNS responder raised on a %d-byte %s query (dropped; logged at most "
                          "once a minute, see the 'errors' counter)", len(packet), "TCP" if tcp else "UDP")

    def _count(self, transport: str, queries: int, answered: int, dropped: int, stale: bool, **more: int) -> None:
        """Add one batch's figures to ``counters`` (``transport``: "udp_queries" or "tcp_queries")."""
        counters = self.counters
        counters[transport] += queries
        counters["answered"] += answered
        counters["dropped"] += dropped
        if stale:
            counters["stale_queries"] += queries
        for name, value in more.items():
            counters[name] += value

    def _on_udp(self, key: Any, mask: int) -> None:
        recvfrom = self._udp.recvfrom
        sendto = self._udp.sendto
        answer = self.responder.answer
        stale = self.stale
        received = answered = dropped = send_errors = recv_errors = 0
        for _ in range(self.udp_batch):
            try:
                packet, peer = recvfrom(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                recv_errors += 1
                continue
            received += 1
            try:
                reply = answer(packet, tcp=False, stale=stale)
            except Exception:
                self._responder_failed(packet, False)
                continue
            if reply is None:
                dropped += 1
                continue
            try:
                sendto(reply, peer)
                answered += 1
            except OSError:
                send_errors += 1
        self._count("udp_queries", received, answered, dropped, stale,
                    send_errors=send_errors, recv_errors=recv_errors)

    def _on_accept(self, key: Any, mask: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _peer = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED, EMFILE, ...: nothing to do for that one
                self.counters["recv_errors"] += 1
                return
            if len(self._clients) >= self.max_tcp_clients:
                oldest = min(self._clients.values(), key=lambda c: c.last_active)
                self.counters["tcp_evicted"] += 1
                self._close_client(oldest)
            sock.setblocking(False)
            client = _TcpClient(sock, self._clock())
            self._clients[client.fd] = client
            self._selector.register(sock, selectors.EVENT_READ, self._on_client)
            self.counters["tcp_accepted"] += 1

    def _on_client(self, key: Any, mask: int) -> None:
        client = self._clients.get(key.fd)
        if client is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
            if client.fd not in self._clients:
                return
        if mask & selectors.EVENT_READ and client.reading:
            self._read(client)

    def _read(self, client: _TcpClient) -> None:
        try:
            data = client.sock.recv(_TCP_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_client(client)
            return
        client.last_active = self._clock()
        if not data:  # the peer will send no more: answer what it sent, then close
            client.eof = True
            self._flush(client)
            return
        client.inbuf += data
        self._process(client)
        self._flush(client)

    def _process(self, client: _TcpClient) -> None:
        """Answer the complete queries in ``client.inbuf`` while its replies stay under the bound."""
        inbuf = client.inbuf
        outbuf = client.outbuf
        stale = self.stale
        queries = answered = dropped = oversized = 0
        start = 0
        end = len(inbuf)
        while end - start >= 2 and len(outbuf) <= MAX_TCP_PENDING_BYTES:
            length = (inbuf[start] << 8) | inbuf[start + 1]
            if end - start - 2 < length:
                break
            packet = bytes(inbuf[start + 2 : start + 2 + length])
            start += 2 + length
            queries += 1
            reply = self._answer(packet, True, stale)
            if reply is None:
                dropped += 1
            elif len(reply) > 0xFFFF:
                oversized += 1
            else:
                outbuf += len(reply).to_bytes(2, "big")
                outbuf += reply
                answered += 1
        if start:
            del inbuf[:start]
        self._count("tcp_queries", queries, answered, dropped, stale, oversized=oversized)

    def _flush(self, client: _TcpClient) -> None:
        """Send what the socket takes; answer held-back queries as room frees up; close after EOF."""
        outbuf = client.outbuf
        while True:
            if outbuf:
                try:
                    sent = client.sock.send(outbuf)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._close_client(client)
                    return
                if sent:
                    del outbuf[:sent]
                    client.last_active = self._clock()
            if client.eof and not outbuf and not _has_query(client.inbuf):
                self._close_client(client)
                return
            if len(outbuf) > MAX_TCP_PENDING_BYTES // 2 or not _has_query(client.inbuf):
                break
            self._process(client)  # queries held back while the replies were over the bound
        self._update_interest(client)

    def _update_interest(self, client: _TcpClient) -> None:
        # NB: while answered-but-unsent replies hold queries back, the client is not read: its
        # buffers stay bounded and TCP flow control slows it down.
        reading = not client.eof and not _has_query(client.inbuf)
        if client.reading and not reading and not client.eof:
            self.counters["tcp_throttled"] += 1
        client.reading = reading
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if client.outbuf else 0)
        if events == 0:  # cannot happen: held-back queries imply pending replies (EOF with none: closed)
            events = selectors.EVENT_READ
        key = self._selector.get_key(client.sock)
        if key.events != events:
            self._selector.modify(client.sock, events, self._on_client)

    def _close_client(self, client: _TcpClient) -> None:
        if self._clients.pop(client.fd, None) is None:
            return
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        self.counters["tcp_closed"] += 1

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + min(_SWEEP_INTERVAL_S, self.tcp_idle_timeout_s / 2)
        deadline = now - self.tcp_idle_timeout_s
        for client in [c for c in self._clients.values() if c.last_active <= deadline]:
            self.counters["tcp_idle_closed"] += 1
            self._close_client(client)


def _bind(address: tuple[str, int]) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    """Non-blocking UDP and TCP sockets bound to the same (host, port); OSError names the address."""
    host, port = address
    where = format_address((host, port))
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot bind DNS to {where}: cannot resolve host {host!r}: {exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    attempts = 20 if port == 0 else 1  # port 0: the free UDP port may be taken for TCP; try another
    for attempt in range(attempts):
        udp = _socket(family, socket.SOCK_DGRAM)
        tcp: socket.socket | None = None
        try:
            try:
                udp.bind(sockaddr)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind DNS UDP socket to {where}: {exc.strerror or exc}") from exc
            bound = udp.getsockname()
            tcp = _socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart despite TIME_WAIT
            try:
                tcp.bind(bound)
                tcp.listen(socket.SOMAXCONN)
            except OSError as exc:
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    raise _Retry from exc
                real = format_address((bound[0], bound[1]))
                raise OSError(exc.errno, f"cannot bind DNS TCP socket to {real}: {exc.strerror or exc}") from exc
        except _Retry:
            udp.close()
            if tcp is not None:
                tcp.close()
            continue
        except BaseException:
            udp.close()
            if tcp is not None:
                tcp.close()
            raise
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:  # absorbs bursts; the kernel caps it at net.core.rmem_max / wmem_max
                udp.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
            except OSError:
                pass
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp, (bound[0], bound[1])
    raise AssertionError("unreachable: the last attempt raises")


class _Retry(Exception):
    pass


def _socket(family: int, kind: int) -> socket.socket:
    sock = socket.socket(family, kind)
    if family == socket.AF_INET6:
        try:  # NB: "::" then also accepts IPv4 (mapped), like most DNS servers; a no-op elsewhere
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            pass
    return sock
