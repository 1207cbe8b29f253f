"""Child processes of an agent: the machinery the DNS child and the prober child share.

An agent runs some work in child programs (``python -m registry_dns.child``,
``python -m registry.health.child``) so that it never takes time from the Raft loop. Each is
started the same way and lives by the same rules; only what the two sides say differs:

- the parent's handle (``ChildProcess``): a socket pair, the child run as
  ``python -m MODULE --fd N --parent-pid P --settings JSON`` with its end of the pair, a
  handshake (the handle reads until the caller's ``on_data`` says the child is ready, within a
  timeout; a child that exits or stays silent is a ``start_error`` saying so), then a clean stop
  (EOF on the socket) before SIGTERM, before SIGKILL;
- the child's entry (``child_arguments``, ``open_feed``, ``send_blocking``): its arguments, SIGINT
  ignored (a Ctrl-C reaches the agent, which stops it), SIGTERM asked for when its parent dies,
  and the socket it was given;
- settings as JSON (``settings_to_json``, ``settings_from_json``): one frozen dataclass per child,
  never pickle;
- framing on the socket pair: length-prefixed frames (``FrameReader``), written without ever
  blocking (``FrameQueue``), read without blocking (``receive``).

Rule: a leaf. It imports only the standard library (tests/test_layering.py), so both children
and the node can use it without pulling each other in.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import Any, Protocol, TypeVar

__all__ = [
    "LENGTH_HEADER", "TYPED_HEADER", "ChildProcess", "ChildStartError", "FrameError", "FrameQueue",
    "FrameReader",
    "child_arguments", "open_feed", "read_settings", "receive", "send_blocking", "set_parent_death_signal", "settings_from_json",
    "settings_to_json",
]  # fmt: skip

#: A typed frame's header: type (u8) and body length (u32, big-endian), then the body.
TYPED_HEADER = struct.Struct("!BI")
#: An untyped frame's header: the body length (u32, big-endian); the body says what it is.
LENGTH_HEADER = struct.Struct("!I")

_MAX_IOV = 64
_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
_TERM_GRACE_S = 1.0  # after SIGTERM, before SIGKILL
_POLL_S = 0.1  # while waiting for the handshake: how often to look whether the child exited


class FrameError(ValueError):
    """Bytes on a socket pair that are not a valid frame: the stream cannot be trusted any more."""


class ChildStartError(OSError):
    """A child could not start; the message says why (errno ETIMEDOUT when it stayed silent)."""


# -- framing ----------------------------------------------------------------------------------------


def receive(sock: socket.socket, size: int) -> bytes | None:
    """Up to ``size`` bytes from a non-blocking ``sock``: None if none are ready, b"" at EOF
    (an error other than "would block" counts as EOF: the peer is gone either way)."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


class FrameReader:
    """Reassembles frames from a byte stream, any split; checks every header.

    ``typed``: headers are ``TYPED_HEADER`` (type and length), else ``LENGTH_HEADER`` (length
    only; every frame's type is then 0). A type outside ``accept`` (None: any) raises ``error``.
    A body over ``max_body_bytes`` raises ``error`` too; with ``skip_oversized`` it is skipped
    instead, unbuffered, as it streams past, and counted in ``oversized``: the stream stays in
    step and the reader's memory bounded.
    """

    #: What a bad header raises (a FrameError; a user of the reader may name its own subclass).
    error: type[FrameError] = FrameError

    def __init__(self, *, max_body_bytes: int, typed: bool = True, accept: frozenset[int] | None = None,
                 skip_oversized: bool = False) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must not be negative, got {max_body_bytes}")
        if accept is not None and not typed:
            raise ValueError("only typed frames have types to accept")
        self.max_body_bytes = max_body_bytes
        self.oversized = 0
        self._header = TYPED_HEADER if typed else LENGTH_HEADER
        self._accept = accept
        self._skip_oversized = skip_oversized
        self._buffer = bytearray()
        # Invariant: _skip > 0 only while the body of an oversized frame streams past (unbuffered).
        self._skip = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def split(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return every complete (type, body). Raises ``error`` on a bad header."""
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        start, end, size = 0, len(buffer), self._header.size
        typed = self._header is TYPED_HEADER
        while end - start >= size:
            if typed:
                kind, length = self._header.unpack_from(buffer, start)
                if self._accept is not None and kind not in self._accept:
                    raise self.error(f"unknown frame type {kind}")
            else:
                kind, (length,) = 0, self._header.unpack_from(buffer, start)
            if length > self.max_body_bytes:
                if not self._skip_oversized:
                    raise self.error(f"frame of {length} bytes is over the {self.max_body_bytes}-byte limit")
                self.oversized += 1
                dropped = min(length, end - start - size)
                self._skip = length - dropped
                start += size + dropped
                continue
            if end - start - size < length:
                break
            frames.append((kind, bytes(buffer[start + size : start + size + length])))
            start += size + length
        if start:
            del buffer[:start]
        return frames


class FrameQueue:
    """Frames waiting to be written to a non-blocking socket, in order, never split or mixed.

    ``push`` adds a frame (header included); ``flush(sock)`` writes as much as the socket takes
    now. A frame of a ``coalesce`` type replaces a queued, not yet started frame of the same type
    at the tail (when only the latest matters). ``kind`` is the queue's label for the frame; it
    is not written.
    """

    def __init__(self) -> None:
        # Invariant: _sent < len(_frames[0]) when _frames is non-empty; _pending == unsent bytes.
        self._frames: deque[tuple[int, bytes]] = deque()
        self._sent = 0
        self._pending = 0

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, kind: int, data: bytes, *, coalesce: bool = False) -> None:
        frames = self._frames
        if coalesce and frames and frames[-1][0] == kind and (len(frames) > 1 or self._sent == 0):
            self._pending -= len(frames[-1][1])
            frames.pop()
        frames.append((kind, data))
        self._pending += len(data)

    def drop_unsent(self) -> int:
        """Forget every frame not yet started (a started one is finished). Returns bytes dropped."""
        frames = self._frames
        keep = 1 if frames and self._sent else 0
        dropped = 0
        while len(frames) > keep:
            dropped += len(frames.pop()[1])
        self._pending -= dropped
        return dropped

    def has_unsent(self, kind: int) -> bool:
        """True if a frame of this type is queued and not yet started."""
        for i, (k, _) in enumerate(self._frames):
            if k == kind and (i > 0 or self._sent == 0):
                return True
        return False

    def flush(self, sock: socket.socket) -> bool:
        """Write what the socket takes without blocking. True when nothing is left.

        Raises OSError (BrokenPipeError, ConnectionResetError, ...) if the peer is gone.
        """
        frames = self._frames
        while frames:
            buffers = [memoryview(frames[0][1])[self._sent :]]
            for i in range(1, min(len(frames), _MAX_IOV)):
                buffers.append(frames[i][1])
            try:
                sent = sock.sendmsg(buffers, [], socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            self._pending -= sent
            sent += self._sent
            while frames and sent >= len(frames[0][1]):
                sent -= len(frames.popleft()[1])
            self._sent = sent
        return True


# -- settings ---------------------------------------------------------------------------------------


class Settings(Protocol):
    """What a child's settings are: a dataclass that writes itself as JSON."""

    def to_json(self) -> str: ...


S = TypeVar("S")


def settings_to_json(settings: Any) -> str:
    """A settings dataclass as compact JSON (what ``settings_from_json`` reads back)."""
    return json.dumps(asdict(settings), separators=(",", ":"))


def settings_from_json(cls: type[S], text: str, *, what: str, required: Sequence[str] = ()) -> S:
    """``cls(**fields)`` from JSON ``settings_to_json`` wrote; ValueError saying what is wrong
    otherwise (``what`` names them in the message: "DNS settings")."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} are not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")
    for name in required:
        if name not in value:
            raise ValueError(f"{what} lack {name!r}")
    return cls(**value)


# -- the parent's side ------------------------------------------------------------------------------


class ChildProcess:
    """The parent's handle of one child program, spoken to over a socket pair. Not thread-safe.

    ``name`` says which child in messages ("the prober process"); ``doing`` what a started one
    does ("running"), so a child that exits first "exited with status 2 before running".
    ``start_error`` is the OSError subclass a failed start raises.

    NB: the child asks for SIGTERM when the *thread* that started it exits (``PR_SET_PDEATHSIG``),
    so start it from a thread that lives as long as the agent (the node loop's).
    """

    def __init__(self, module: str, settings: Settings, *, name: str, doing: str = "running",
                 start_error: type[OSError] = ChildStartError, recv_bytes: int = 64 * 1024) -> None:
        self.module = module
        self.settings = settings
        self.name = name
        self.doing = doing
        self.start_error = start_error
        self.recv_bytes = recv_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        # Invariant: sock is the parent's end of the pair from spawn() until close(); None otherwise.
        self.sock: socket.socket | None = None
        self._quiet: socket.socket | None = None  # holds the far end of the stand-in after silence()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def started(self) -> bool:
        return self.proc is not None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float, on_data: Callable[[bytes], bool]) -> socket.socket:
        """Run the child and wait for its handshake; its socket, non-blocking from then on.

        ``on_data`` gets every piece read and returns True once the child is ready. A child that
        exits first, or is not ready within ``timeout_s``, raises ``start_error``; whatever
        ``on_data`` raises goes up too. Either way the child is killed first.
        """
        sock = self.spawn()
        try:
            self.await_ready(timeout_s, on_data)
        except BaseException:
            self.kill()
            raise
        sock.setblocking(False)
        return sock

    def spawn(self) -> socket.socket:
        """Run the child with its end of a new socket pair; the parent's end."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (parent, child):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)
            except OSError:
                pass
        try:
            args = [sys.executable, "-m", self.module, "--fd", str(child.fileno()),
                    "--parent-pid", str(os.getpid()), "--settings", self.settings.to_json()]
            self.proc = subprocess.Popen(args, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()  # NB: only the child holds it now, so the child's EOF means we are gone
        self.sock = parent
        return parent

    def await_ready(self, timeout_s: float, on_data: Callable[[bytes], bool]) -> None:
        """Read (blocking) and hand each piece to ``on_data`` until it returns True (see start)."""
        assert self.sock is not None and self.proc is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.start_error(errno.ETIMEDOUT, f"{self.name} did not start within {timeout_s} s")
                if not selector.select(min(left, _POLL_S)):
                    if self.proc.poll() is not None:
                        raise self._exited(self.proc.returncode)
                    continue
                data = self.sock.recv(self.recv_bytes)
                if not data:
                    try:
                        status: int | None = self.proc.wait(timeout=max(_POLL_S, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        status = None
                    raise self._exited(status)
                if on_data(data):
                    return

    def _exited(self, status: int | None) -> OSError:
        return self.start_error(f"{self.name} exited with status {status} before {self.doing} (see its log)")

    def fileno(self) -> int | None:
        """The parent's descriptor (for a poller), or None when there is none."""
        return None if self.sock is None else self.sock.fileno()

    def silence(self) -> None:
        """Keep the descriptor number valid but never readable again (for a lost child).

        NB: a poller may hold the number: a closed one could be reused by another file, and one
        at EOF is always readable.
        """
        if self.sock is not None and self._quiet is None:
            stand_in, self._quiet = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            os.dup2(stand_in.fileno(), self.sock.fileno())
            stand_in.close()

    def close(self) -> None:
        """Close the parent's end: the child reads EOF, which tells it to exit."""
        for sock in (self.sock, self._quiet):
            if sock is not None:
                sock.close()
        self.sock = self._quiet = None

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the child (EOF on its socket, then SIGTERM, then SIGKILL); its exit status."""
        self.close()
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """Close the socket, SIGTERM the child, SIGKILL it after a grace second; its exit status."""
        proc = self.proc
        self.close()
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(timeout=_TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()


# -- the child's side -------------------------------------------------------------------------------


def child_arguments(argv: Sequence[str] | None, *, prog: str, description: str,
                    settings_help: str) -> argparse.Namespace:
    """The arguments ``ChildProcess`` gives a child: ``fd``, ``parent_pid``, ``settings`` (JSON)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--fd", type=int, required=True, help="the feed socket inherited from the agent")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--settings", required=True, help=settings_help)
    return parser.parse_args(argv)


def open_feed(args: argparse.Namespace) -> socket.socket:
    """Ignore SIGINT (a Ctrl-C reaches the agent, which stops the child), follow the parent in
    death, and return the socket the parent gave (blocking). Exits at once if the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal(args.parent_pid)
    return socket.socket(fileno=args.fd)


def set_parent_death_signal(parent_pid: int) -> None:
    """Linux: SIGTERM this process when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if parent_pid and os.getppid() != parent_pid:
        raise SystemExit(0)  # the parent died before we could ask to follow it


def read_settings(feed: socket.socket, text: str, parse: Callable[[str], S],
                  refusal: Callable[[str], bytes]) -> S | None:
    """The child's settings parsed from ``--settings``; None once the parent was told why not
    (``refusal(why)`` is the frame that says so: the child then exits with status 2)."""
    try:
        return parse(text)
    except (ValueError, TypeError) as exc:
        send_blocking(feed, refusal(str(exc)))
        return None


def send_blocking(sock: socket.socket, data: bytes, timeout_s: float = 5.0) -> None:
    """Send ``data`` whole, waiting at most ``timeout_s`` (a last word: an error frame). A parent
    that is gone or does not read is ignored: the child is exiting anyway."""
    try:
        sock.setblocking(True)
        sock.settimeout(timeout_s)
        sock.sendall(data)
    except OSError:
        pass

