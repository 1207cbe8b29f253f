"""A TCP proxy on one directed Raft link (node A's connection to node B's Raft port) that
reads the ZeroMQ stream it forwards, records every snapshot chunk that passes, and can hold
the link at a chosen chunk, so that a test can stop a snapshot transfer part-way on purpose
and know exactly how far it got.

A node's DEALER connects to each peer's ROUTER and sends its Raft messages there; the way back
is the peer's own DEALER, on another link. So the proxy parses only the forward direction
(ZMTP 3: a 64-byte greeting, then frames of a flags byte, a 1- or 8-byte size and the body; a
message frame's body is one `registry.transport.codec` frame) and copies the other direction
as is.

Holding keeps the stream's order: the held chunk and everything after it on that connection
wait until ``release()``; a connection whose either end closes meanwhile drops what it held.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from registry.raft import InstallSnapshot
from registry.transport.codec import CodecError, decode

from .cluster import Cluster

GREETING_BYTES = 64  # ZMTP 3.x: signature, version, mechanism, as-server, filler
_FLAG_LONG, _FLAG_COMMAND = 0x02, 0x04


@dataclass(frozen=True)
class Chunk:
    """One InstallSnapshot seen on the link: of snapshot ``index``, bytes [offset, offset+size)."""

    index: int
    term: int  # the sender's term
    offset: int
    size: int
    done: bool
    at: float  # time.monotonic() when it was forwarded (or held)


class LinkProxy:
    """Listens on 127.0.0.1 (``address``) and forwards each connection to ``target``.

    ``forwarded`` lists the snapshot chunks that reached the target, in order. After
    ``hold_next_chunk()``, the first chunk at a non-zero offset that comes after a chunk at
    offset 0 (a transfer's second chunk: the receiver acknowledged the first) is not forwarded:
    it becomes ``held``, and its connection stops there until ``release()``.
    """

    def __init__(self, name: str, target: tuple[str, int]) -> None:
        self.name = name
        self.target = target
        self.forwarded: list[Chunk] = []
        self.held: Chunk | None = None
        self._armed = False
        self._first_seen = False  # a chunk at offset 0 was forwarded since hold_next_chunk()
        self._cond = threading.Condition()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._closed = False
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, name=f"proxy {name}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def hold_next_chunk(self) -> None:
        """Arm the hold (see the class docstring); forgets what was forwarded or held before."""
        with self._cond:
            self._armed, self._first_seen, self.held = True, False, None
            self.forwarded = []

    def release(self) -> None:
        """Disarm the hold and let what waits go on (to a receiver that is still there)."""
        with self._cond:
            self._armed, self.held = False, None
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed, self._armed = True, False
            self._cond.notify_all()
            sockets = [self._listener, *self._sockets]
        for s in sockets:
            _close(s)

    # -- the threads -------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)  # the target is down: the sender's ZeroMQ reconnects later
                continue
            with self._cond:
                if self._closed:
                    _close(client, upstream)
                    return
                self._sockets.update((client, upstream))
            threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        """The way back, as is."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._drop(src, dst)

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        """The way there: the greeting as it comes (the handshake is a dialogue), then frame by frame."""
        buf = bytearray()
        greeting = GREETING_BYTES
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                if greeting:
                    now, data = data[:greeting], data[greeting:]
                    dst.sendall(now)
                    greeting -= len(now)
                buf += data
                while (frame := _take_frame(buf)) is not None:
                    flags, body = frame
                    if not flags & _FLAG_COMMAND and not self._pass(body, src, dst):
                        raise OSError("closed while held")
                    dst.sendall(_header(flags, len(body)) + body)
        except OSError:
            pass
        self._drop(src, dst)

    def _pass(self, body: bytes, src: socket.socket, dst: socket.socket) -> bool:
        """Record a snapshot chunk; hold it if the hold says so. False: the connection closed meanwhile."""
        if not body or body[0] != 1:  # not a codec frame we know (WIRE_VERSION 1)
            return True
        try:
            message = decode(body)
        except CodecError:
            return True  # NB: the receiver's business (it counts it as malformed), not the proxy's
        if not isinstance(message, InstallSnapshot):
            return True
        chunk = Chunk(message.meta.index, message.term, message.offset, len(message.data), message.done,
                      time.monotonic())
        with self._cond:
            if self._armed and self._first_seen and chunk.offset > 0:
                self.held = chunk
                self._cond.notify_all()
                while self._armed and not self._closed:
                    self._cond.wait(0.1)
                    if _peer_closed(src) or _peer_closed(dst):
                        return False
                if self._closed:
                    return False
            if chunk.offset == 0:
                self._first_seen = True
            self.forwarded.append(chunk)
            return True

    def _drop(self, *sockets: socket.socket) -> None:
        with self._cond:
            self._sockets.difference_update(sockets)
        _close(*sockets)


def _take_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Remove one whole ZMTP frame from the front of ``buf``: (flags, body), or None if incomplete."""
    if len(buf) < 2:
        return None
    flags = buf[0]
    head = 9 if flags & _FLAG_LONG else 2
    if len(buf) < head:
        return None
    size = int.from_bytes(buf[1:head], "big")
    if len(buf) < head + size:
        return None
    body = bytes(buf[head:head + size])
    del buf[:head + size]
    return flags, body


def _header(flags: int, size: int) -> bytes:
    return bytes([flags]) + size.to_bytes(8 if flags & _FLAG_LONG else 1, "big")


def _peer_closed(s: socket.socket) -> bool:
    """Whether the other end closed ``s`` (readable with nothing to read); data waiting is not a close."""
    try:
        if not select.select([s], [], [], 0)[0]:
            return False
        return s.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # ValueError: closed here already
        return True


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


@contextmanager
def proxied_links(cluster: Cluster) -> Iterator[dict[tuple[str, str], LinkProxy]]:
    """Route every node's connection to every peer's Raft port through its own LinkProxy (set
    before the cluster starts); yields them by (from, to). The proxies close on exit."""
    links: dict[tuple[str, str], LinkProxy] = {}
    try:
        for name, agent in cluster.agents.items():
            for peer, address in sorted(agent.peers.items()):
                host, _, port = address.rpartition(":")
                link = links[(name, peer)] = LinkProxy(f"{name}->{peer}", (host, int(port)))
                agent.peers[peer] = link.address
        yield links
    finally:
        for link in links.values():
            link.close()
