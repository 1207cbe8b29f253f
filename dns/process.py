"""The DNS process: a child of the agent that serves DNS from its own replica of the catalogue.

Why a process: DNS and Raft then run on two cores and never wait for each other's GIL. The
agent's node loop keeps its own work O(entries): it streams every committed entry to the child
(``DnsProcess.apply``), and the child applies them to its own ``Catalogue``. The catalogue is a
deterministic state machine, so the child's view equals the node's at every index.

Parent side (the node loop calls these; none of them blocks):

    dns = DnsProcess(address=("0.0.0.0", 8600), domain="registry.", max_stale_s=30,
                     nameservers=[("n1", "10.0.0.1"), ...],      # as the Responder takes them
                     snapshot=lambda: node.catalogue.to_bytes())
    dns.start(timeout_s=10)          # returns once UDP and TCP are bound; DnsStartError if not
    dns.apply([(index, kind, data), ...])  # every committed entry, in order, right after the
                                     # node's catalogue applied them
    dns.leader_contact(age_s)        # every tick: seconds since a leader was heard from,
                                     # 0.0 on the leader, None when no leader is known
    dns.stats()                      # the child's latest counters (for `registry status`)
    dns.stop(timeout_s=5)

Child side (``python -m registry_dns.process``, started by ``DnsProcess.start``): one thread, one
``selectors`` loop (``DnsServer``) that also watches the feed socket. Per wakeup it reads at most
``_FEED_CHUNK_BYTES`` of feed, applies the entries (a kind other than NORMAL (0) is skipped),
hands the new view to the responder once if its version changed (at most every
``_CATCH_UP_UPDATE_S`` while a backlog is being read), recomputes staleness, then answers
queries. Every ``stats_interval_s`` it reports its counters to the parent.

Staleness (issue 4, point 6): the child answers SERVFAIL (``stale=True`` to the responder) when
it has never been told of a leader contact, when the last contact is older than
``max_stale_s`` by its own clock (so a hung agent also leads to SERVFAIL: no news is not good
news), or when it has missed entries (a gap) for longer than ``max_stale_s``.

Lifetime: the child exits when the feed socket reaches EOF, that is when the agent closes it
(``stop``) or dies in any way (even SIGKILL: the kernel closes its descriptors). On Linux it also
asks for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``). NB: that signal comes when the
*thread* that started the child exits, so call ``start`` from the thread that lives as long as
the node (the node loop's thread). It ignores SIGINT: a Ctrl-C reaches the agent, which stops it.

Backlog: if the child cannot keep up (or hangs), the parent keeps the frames the socket did not
take. With ``snapshot`` given (a callable returning ``Catalogue.to_bytes()`` of the node's
catalogue, in step with the entries passed to ``apply``), a backlog over ``max_backlog_bytes``
is dropped and replaced by one RESTORE frame, so memory stays bounded; the same resync answers a
child that reports a gap. Without ``snapshot`` the backlog is unbounded (measured:
``backlog_bytes`` and ``backlog_peak_bytes`` in ``stats()``, and a warning once it passes
``max_backlog_bytes``); a gap then leaves the child stale (SERVFAIL) until it is restarted.

Failure: a child that dies is not restarted here. ``alive()`` turns False, ``stats()`` carries
``error``, and ``apply``/``leader_contact`` become no-ops (nothing piles up); the agent decides.
"""

from __future__ import annotations

import argparse
import ctypes
import errno as errno_codes
import importlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from registry.catalogue import MAX_SESSIONS, Catalogue, SnapshotError
from registry.catalogue.frozen import thaw
from registry.logformat import configure as configure_logging

from .feed import (
    CONTACT,
    ENTRIES,
    ERROR,
    READY,
    RESTORE,
    RESYNC,
    STATS,
    FeedError,
    FrameQueue,
    FrameReader,
    decode_contact,
    decode_entries,
    decode_index,
    encode_contact,
    encode_entries,
    encode_index,
    frame,
)
from .server import DnsServer, format_address

__all__ = ["DEFAULT_RESPONDER", "DnsProcess", "DnsProcessError", "DnsStartError", "main"]

log = logging.getLogger("registry.dns")

#: The responder the child builds: "module:callable", called with the responder's keywords.
DEFAULT_RESPONDER = "registry_dns.resolver:Responder"
NORMAL = 0  # registry.raft.EntryKind.NORMAL; NB: not imported, registry_dns never imports raft

_FEED_CHUNK_BYTES = 256 * 1024  # feed read per wakeup: queries are served between chunks
_CATCH_UP_UPDATE_S = 0.05  # while a backlog is read, the responder gets a new view this often
_RESYNC_INTERVAL_S = 1.0  # a child with a gap asks for a snapshot at most this often
_PARENT_RECV_BYTES = 64 * 1024
_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


class DnsProcessError(RuntimeError):
    """The DNS process is not running, or failed."""


class DnsStartError(OSError):
    """The DNS process could not start; the message is the child's (e.g. the address is in use)."""


class DnsProcess:
    """Parent-side handle of the DNS child process. Not thread-safe: call from the node loop."""

    def __init__(
        self,
        *,
        address: tuple[str, int],
        domain: str = "registry.",
        ttl_s: int = 30,
        negative_ttl_s: int = 5,
        max_udp_payload: int = 1232,
        max_stale_s: float = 30.0,
        nameservers: Sequence[Any] = (),
        tcp_idle_timeout_s: float = 10.0,
        max_tcp_clients: int = 256,
        snapshot: Callable[[], bytes] | None = None,
        max_backlog_bytes: int = 64 * 1024 * 1024,
        max_sessions: int = MAX_SESSIONS,
        stats_interval_s: float = 0.5,
        responder: str = DEFAULT_RESPONDER,
    ) -> None:
        if max_stale_s <= 0:
            raise ValueError(f"max_stale_s must be positive, got {max_stale_s}")
        if max_backlog_bytes < 1:
            raise ValueError(f"max_backlog_bytes must be positive, got {max_backlog_bytes}")
        self._config: dict[str, Any] = {
            "address": [address[0], address[1]],
            "responder": responder,
            "responder_args": {
                "domain": domain, "ttl_s": ttl_s, "negative_ttl_s": negative_ttl_s,
                "max_udp_payload": max_udp_payload, "nameservers": _jsonable(nameservers),
            },
            "max_stale_s": max_stale_s,
            "tcp_idle_timeout_s": tcp_idle_timeout_s,
            "max_tcp_clients": max_tcp_clients,
            "max_sessions": max_sessions,
            "stats_interval_s": stats_interval_s,
        }  # fmt: skip
        self._requested = (address[0], address[1])
        self._snapshot = snapshot
        self.max_backlog_bytes = max_backlog_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader = FrameReader(frozenset({READY, ERROR, STATS, RESYNC}))
        # Invariant: _queue holds whole frames in order; frames queued before start() wait there.
        self._queue = FrameQueue()
        # Invariant: _floor <= _queue.pending_bytes after _account(); bytes above it are backlog
        # that arrived since the last resync (the RESTORE frame itself is not counted).
        self._floor = 0
        self._address: tuple[str, int] | None = None
        self._latest: dict[str, Any] = {}
        self._latest_at: float | None = None
        self._error: str | None = None
        self._gone = False  # stopped, or the child was lost: nothing is queued any more
        self._resync_from: int | None = None  # the child asked for a snapshot (its applied index)
        self._warned_backlog = False
        self._parent = {"backlog_peak_bytes": 0, "resyncs": 0, "overflows": 0, "entries_sent": 0}

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The address the child bound (the real port if 0 was asked for); the request before start."""
        return self._address or self._requested

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the child; return once it serves, else raise DnsStartError with its message."""
        if self._proc is not None:
            raise DnsProcessError("the DNS process was already started")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (parent, child):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)
            except OSError:
                pass
        try:
            args = [sys.executable, "-m", "registry_dns.process", "--fd", str(child.fileno()),
                    "--parent-pid", str(os.getpid()), "--config", json.dumps(self._config)]
            self._proc = subprocess.Popen(args, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()  # NB: only the child holds it now, so the child's EOF means we are gone
        self._sock = parent
        try:
            self._await_ready(timeout_s)
        except FeedError as exc:
            self._gone = True
            self._kill()
            raise _start_error(None, f"the DNS process sent a corrupt report while starting: {exc}") from exc
        except BaseException:
            self._gone = True
            self._queue = FrameQueue()
            self._kill()
            raise
        parent.setblocking(False)
        self._flush()

    def _await_ready(self, timeout_s: float) -> None:
        assert self._sock is not None and self._proc is not None
        deadline = time.monotonic() + timeout_s
        where = format_address(self._requested)
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _start_error(errno_codes.ETIMEDOUT,
                                       f"the DNS process for {where} did not start within {timeout_s} s")
                if not selector.select(min(left, 0.1)):
                    if self._proc.poll() is not None:
                        raise _start_error(None, f"the DNS process for {where} exited with status "
                                                 f"{self._proc.returncode} before serving (see its log)")
                    continue
                data = self._sock.recv(_PARENT_RECV_BYTES)
                if not data:
                    try:
                        status: int | None = self._proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        status = None
                    raise _start_error(None, f"the DNS process for {where} exited with status {status} "
                                             "before serving (see its log)")
                for kind, body in self._reader.feed(data):
                    if kind == ERROR:
                        info = _json(body)
                        code = info.get("errno") if isinstance(info.get("errno"), int) else None
                        message = str(info.get("message", "unknown error"))
                        raise _start_error(code, f"DNS could not start: {message}")
                    if kind == READY:
                        info = _json(body)
                        self._address = (str(info["host"]), int(info["port"]))
                        log.info("DNS process %d serving on %s", self._proc.pid, format_address(self._address))
                        return
                    self._handle(kind, body)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the child (EOF on the feed, then SIGTERM, then SIGKILL); its exit status."""
        proc = self._proc
        self._gone = True
        self._queue = FrameQueue()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if proc is None:
            return None
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self._kill()

    def _kill(self) -> int | None:
        proc = self._proc
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()

    def __enter__(self) -> DnsProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- feeding ----------------------------------------------------------------------------------

    def apply(self, entries: Iterable[tuple[int, int, bytes]]) -> None:
        """Send committed entries ``(index, kind, data)``, in index order. Never blocks.

        Call it with every committed entry, right after the node's own catalogue applied them
        (so that ``snapshot()``, if given, is in step). Entries already known to the child are
        ignored by it, so passing one twice is harmless; skipping one is a gap (see module doc).
        """
        if self._gone:
            return
        batch = [(int(index), int(kind), bytes(data)) for index, kind, data in entries]
        if batch:
            self._queue.push(ENTRIES, encode_entries(batch))
            self._parent["entries_sent"] += len(batch)
        self._flush()

    def restore(self, snapshot: bytes) -> None:
        """Replace the child's whole catalogue by ``snapshot`` (``Catalogue.to_bytes()``).

        For a node that restored its own catalogue from a snapshot (later entries continue from
        its index). Queued entries not yet sent are dropped: the snapshot covers them.
        """
        if self._gone:
            return
        self._queue_restore(snapshot)
        self._flush()

    def _queue_restore(self, snapshot: bytes) -> None:
        self._queue.drop_unsent()
        self._queue.push(RESTORE, frame(RESTORE, bytes(snapshot)))
        self._floor = self._queue.pending_bytes

    def leader_contact(self, age_s: float | None) -> None:
        """Every tick: seconds since this node last heard from a leader (0.0 if it is the
        leader), or None if no leader is known (the last contact reported stands). Also sends
        what is queued and reads the child's reports. Never blocks."""
        if self._gone:
            return
        now = time.monotonic()
        if age_s is None:
            data = encode_contact(False, 0.0)
        else:
            data = encode_contact(True, now - max(0.0, float(age_s)))
        self._queue.push(CONTACT, data, coalesce=True)
        self._flush()

    def flush(self) -> None:
        """Send what is queued and read the child's reports (``apply`` and ``leader_contact`` do)."""
        self._flush()

    def _flush(self) -> None:
        sock = self._sock
        if sock is None or self._address is None:  # not started (frames wait) or stopped
            self._account()
            return
        self._receive()
        if self._sock is None:
            return
        if self._resync_from is not None:
            if self._snapshot is not None and not self._queue.has_unsent(RESTORE):
                self._parent["resyncs"] += 1
                log.warning("DNS process missed entries after index %d: sending a snapshot", self._resync_from)
                self._queue_restore(self._snapshot())
            elif self._snapshot is None:
                log.error("DNS process missed entries after index %d and no snapshot source is set: "
                          "it answers SERVFAIL once max_stale_s passes", self._resync_from)
            self._resync_from = None
        for _ in range(2):  # a second round if _account replaced the backlog by a snapshot
            try:
                self._queue.flush(sock)
            except OSError:
                self._lost("the DNS process closed its feed")
                return
            if not self._account():
                return

    def _account(self) -> bool:
        """Measure the backlog; past the bound, replace it by a snapshot (True if it did)."""
        queue = self._queue
        pending = queue.pending_bytes
        self._floor = min(self._floor, pending)
        stats = self._parent
        stats["backlog_peak_bytes"] = max(stats["backlog_peak_bytes"], pending)
        if pending - self._floor <= self.max_backlog_bytes:
            return False
        if self._snapshot is not None:
            stats["overflows"] += 1
            log.warning("DNS process is %d bytes behind (over %d): replacing the backlog with a snapshot",
                        pending - self._floor, self.max_backlog_bytes)
            self._queue_restore(self._snapshot())
            return True
        if not self._warned_backlog:
            self._warned_backlog = True
            log.warning("DNS process is %d bytes behind (over %d) and no snapshot source is set: "
                        "buffering without bound", pending, self.max_backlog_bytes)
        return False

    def _receive(self) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(16):
            try:
                data = sock.recv(_PARENT_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._lost("the DNS process exited")
                return
            try:
                frames = self._reader.feed(data)
            except FeedError as exc:
                self._lost(f"the DNS process sent a corrupt report: {exc}")
                return
            for kind, body in frames:
                self._handle(kind, body)

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == STATS:
            self._latest = _json(body)
            self._latest_at = time.monotonic()
        elif kind == RESYNC:
            try:
                self._resync_from = decode_index(body)  # answered in _flush, after reading
            except FeedError:
                return
        elif kind == ERROR:
            self._error = str(_json(body).get("message", "unknown error"))
            log.error("DNS process: %s", self._error)

    def _lost(self, why: str) -> None:
        self._gone = True
        self._queue = FrameQueue()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._error = self._error or why
        log.error("%s; DNS is not served by this node until it is restarted", why)

    # -- inspection -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The child's latest report, plus the parent's view: alive, pid, address, backlog.

        Child keys (see ``registry_dns.server.COUNTERS`` for the query counters): ``qps``,
        ``stale`` (answering SERVFAIL now), ``stale_queries``, ``answered``, ``dropped``,
        ``applied_index``, ``version``, ``leader_contact_age_s``, ``gap``, ``responder`` (the
        responder's own counters), ... ``report_age_s`` says how old the report is.
        """
        if self._sock is not None and self._address is not None:
            self._flush()
        out: dict[str, Any] = dict(self._latest)
        out.update(self._parent)
        out["alive"] = self.alive()
        out["pid"] = self.pid
        out["address"] = format_address(self.address)
        out["backlog_bytes"] = self._queue.pending_bytes
        out["report_age_s"] = None if self._latest_at is None else round(time.monotonic() - self._latest_at, 3)
        if self._error is not None:
            out["error"] = self._error
        return out


def _start_error(code: int | None, message: str) -> DnsStartError:
    return DnsStartError(code, message) if code is not None else DnsStartError(message)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


# -- the child ------------------------------------------------------------------------------------


class _Child:
    """The DNS process's state: the feed, the replica catalogue, staleness, reports."""

    def __init__(self, feed: socket.socket, responder: Any, *, address: tuple[str, int], max_stale_s: float,
                 stats_interval_s: float = 0.5, max_sessions: int = MAX_SESSIONS,
                 tcp_idle_timeout_s: float = 10.0, max_tcp_clients: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.feed = feed
        self.responder = responder
        self.clock = clock
        self.max_stale_s = max_stale_s
        self.stats_interval_s = stats_interval_s
        self.max_sessions = max_sessions
        self.catalogue = Catalogue(max_sessions=self.max_sessions)
        self.reader = FrameReader(frozenset({ENTRIES, CONTACT, RESTORE}))
        self.out = FrameQueue()
        self.running = True
        self.exit_status = 0
        now = clock()
        # Invariant: None until the first contact report; else time.monotonic() of the contact.
        self.last_contact_at: float | None = None
        self.leader_known = False
        self.gap_since: float | None = None  # set while entries are missing (waiting for RESTORE)
        self.resync_at = 0.0
        self.published_view: object = None  # the view the responder last got
        self.published_at = -_CATCH_UP_UPDATE_S
        self.catching_up = False
        self.counts = {"entries": 0, "updates": 0, "restores": 0, "bad_snapshots": 0, "old_snapshots": 0,
                       "resync_requests": 0, "gaps": 0}
        self.next_stats = now
        self.last_queries = 0
        self.last_stats_at = now
        self.server = DnsServer(address, responder, tcp_idle_timeout_s=tcp_idle_timeout_s,
                                max_tcp_clients=max_tcp_clients, on_wake=self.on_wake, clock=clock)
        self.publish(now)
        self.server.stale = self.is_stale(now)
        self.server.watch(feed.fileno(), self.on_feed)

    # Staleness.

    def is_stale(self, now: float) -> bool:
        if self.last_contact_at is None or now - self.last_contact_at > self.max_stale_s:
            return True
        return self.gap_since is not None and now - self.gap_since > self.max_stale_s

    def stale_flips_at(self) -> float | None:
        """When the answer of is_stale() next changes by time alone (None: not by time)."""
        if self.last_contact_at is None:
            return None
        flips = self.last_contact_at + self.max_stale_s
        if self.gap_since is not None:
            flips = min(flips, self.gap_since + self.max_stale_s)
        return flips

    # The feed.

    def on_feed(self) -> None:
        try:
            data = self.feed.recv(_FEED_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            log.info("the agent closed the feed: stopping")
            self.running = False
            return
        self.catching_up = len(data) == _FEED_CHUNK_BYTES
        try:
            frames = self.reader.feed(data)
            for kind, body in frames:
                self.handle(kind, body)
        except FeedError as exc:
            # NB: the stream cannot be re-synchronised: stop, and let the agent see it.
            log.error("corrupt feed from the agent (%s): stopping", exc)
            self.report_error(f"corrupt feed: {exc}")
            self.exit_status = 3
            self.running = False

    def handle(self, kind: int, body: bytes) -> None:
        now = self.clock()
        if kind == ENTRIES:
            catalogue = self.catalogue
            for index, entry_kind, data in decode_entries(body):
                applied = catalogue.applied_index
                if index <= applied:
                    continue  # already applied (or covered by a snapshot)
                if index != applied + 1:
                    self.missed(applied, index, now)
                    continue
                if entry_kind == NORMAL:
                    catalogue.apply(index, data)
                else:
                    catalogue.skip(index)
                self.counts["entries"] += 1
        elif kind == CONTACT:
            known, at = decode_contact(body)
            self.leader_known = known
            if known:
                self.last_contact_at = min(at, now)
        elif kind == RESTORE:
            try:
                # NB: the agent's own catalogue bytes, checked by their SHA-256: thaw skips
                # validating every field again (registry/catalogue/frozen.py).
                catalogue = thaw(body, max_sessions=self.max_sessions)
            except SnapshotError as exc:
                self.counts["bad_snapshots"] += 1
                log.error("ignored a snapshot from the agent: %s", exc)
                self.resync_at = 0.0
                self.request_resync(now)
                return
            if catalogue.applied_index < self.catalogue.applied_index and self.gap_since is None:
                self.counts["old_snapshots"] += 1  # NB: never go back in time; a later one will come
                return
            self.catalogue = catalogue
            self.gap_since = None
            self.counts["restores"] += 1
            log.info("restored the catalogue from a snapshot at index %d", catalogue.applied_index)

    def missed(self, applied: int, index: int, now: float) -> None:
        if self.gap_since is None:
            self.gap_since = now
            self.counts["gaps"] += 1
            log.warning("entry %d arrived after index %d: entries are missing; asking for a snapshot",
                        index, applied)
        self.request_resync(now)

    def request_resync(self, now: float) -> None:
        if now >= self.resync_at:
            self.resync_at = now + _RESYNC_INTERVAL_S
            self.counts["resync_requests"] += 1
            self.out.push(RESYNC, frame(RESYNC, encode_index(self.catalogue.applied_index)))

    # Each wakeup: after the feed, before queries.

    def on_wake(self) -> None:
        now = self.clock()
        self.publish(now)
        self.server.stale = self.is_stale(now)

    def publish(self, now: float) -> None:
        view = self.catalogue.view
        # NB: by identity, not version: a no-op entry keeps the version but moves the applied
        # index, which is the SOA serial.
        if view is self.published_view:
            return
        if self.catching_up and now - self.published_at < _CATCH_UP_UPDATE_S:
            return
        self.responder.update(view)
        self.published_view = view
        self.published_at = now
        self.counts["updates"] += 1

    # Reports.

    def report(self, now: float) -> None:
        server = self.server
        counters = server.counters
        queries = counters["udp_queries"] + counters["tcp_queries"]
        elapsed = now - self.last_stats_at
        qps = (queries - self.last_queries) / elapsed if elapsed > 0 else 0.0
        self.last_queries, self.last_stats_at = queries, now
        view = self.catalogue.view
        responder_counters = getattr(self.responder, "counters", {})
        body = {
            **counters, **self.counts,
            "qps": round(qps, 1),
            "stale": server.stale,
            "leader_known": self.leader_known,
            "leader_contact_age_s": None if self.last_contact_at is None else round(now - self.last_contact_at, 3),
            "gap": self.gap_since is not None,
            "applied_index": view.applied_index,
            "version": view.version,
            "published_version": getattr(self.published_view, "version", -1),
            "tcp_clients": server.tcp_clients,
            "responder": dict(responder_counters) if isinstance(responder_counters, dict) else {},
        }  # fmt: skip
        self.out.push(STATS, frame(STATS, json.dumps(body).encode()), coalesce=True)

    def report_error(self, message: str) -> None:
        self.out.push(ERROR, frame(ERROR, json.dumps({"errno": None, "message": message}).encode()))

    def send(self) -> None:
        try:
            self.out.flush(self.feed)
        except OSError:
            self.running = False  # the agent is gone

    # The loop.

    def run(self) -> int:
        try:
            while self.running:
                now = self.clock()
                wake = self.next_stats
                flips = self.stale_flips_at()
                if flips is not None and flips > now:
                    wake = min(wake, flips)
                if self.published_view is not self.catalogue.view:
                    wake = min(wake, self.published_at + _CATCH_UP_UPDATE_S)
                self.server.run_once(max(0.0, wake - now))
                now = self.clock()
                if now >= self.next_stats:
                    self.next_stats = now + self.stats_interval_s
                    self.report(now)
                if len(self.out):
                    self.send()
        finally:
            self.server.close()
        return self.exit_status


def _set_parent_death_signal(parent_pid: int) -> None:
    """Linux: SIGTERM this process when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if parent_pid and os.getppid() != parent_pid:
        raise SystemExit(0)  # the parent died before we could ask to follow it


def _load_responder(spec: str, kwargs: dict[str, Any]) -> Any:
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr or "Responder")
    return factory(**kwargs)


def _send_blocking(sock: socket.socket, data: bytes) -> None:
    try:
        sock.setblocking(True)
        sock.settimeout(5.0)
        sock.sendall(data)
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry_dns.process",
                                     description="The DNS process of a registry agent (started by it).")
    parser.add_argument("--fd", type=int, required=True, help="the feed socket inherited from the agent")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--config", required=True, help="JSON settings (written by DnsProcess)")
    args = parser.parse_args(argv)
    configure_logging(logging.INFO, tag=f"dns[{os.getpid()}]")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_parent_death_signal(args.parent_pid)
    feed = socket.socket(fileno=args.fd)
    try:
        config = json.loads(args.config)
        responder_args = dict(config["responder_args"])
        responder_args["nameservers"] = _tuples(responder_args.get("nameservers", []))
        address = (str(config["address"][0]), int(config["address"][1]))
        settings = {
            "address": address, "max_stale_s": float(config["max_stale_s"]),
            "stats_interval_s": float(config["stats_interval_s"]), "max_sessions": int(config["max_sessions"]),
            "tcp_idle_timeout_s": float(config["tcp_idle_timeout_s"]),
            "max_tcp_clients": int(config["max_tcp_clients"]),
        }  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        _send_blocking(feed, frame(ERROR, json.dumps({"errno": None, "message": f"bad config: {exc!r}"}).encode()))
        return 2
    try:
        responder = _load_responder(str(config.get("responder", DEFAULT_RESPONDER)), responder_args)
        child = _Child(feed, responder, **settings)
    except OSError as exc:
        message = {"errno": exc.errno, "message": exc.strerror or str(exc)}
        _send_blocking(feed, frame(ERROR, json.dumps(message).encode()))
        return 2
    except Exception as exc:  # a responder that refuses its settings, a bad responder path, ...
        log.exception("cannot start DNS on %s", format_address(address))
        message = {"errno": None, "message": f"{type(exc).__name__}: {exc}"}
        _send_blocking(feed, frame(ERROR, json.dumps(message).encode()))
        return 2
    host, port = child.server.address
    feed.setblocking(True)
    feed.sendall(frame(READY, json.dumps({"host": host, "port": port}).encode()))
    feed.setblocking(False)
    log.info("serving DNS on %s (UDP and TCP)", format_address((host, port)))
    return child.run()


if __name__ == "__main__":
    raise SystemExit(main())
