"""DnsProcess: the agent's handle of its DNS child (``registry_dns.child``).

Why a process: DNS and Raft then run on two cores and never wait for each other's GIL. The
agent's node loop keeps its own work O(entries): it streams every committed entry to the child
(``DnsProcess.apply``), and the child applies them to its own ``Catalogue``. The catalogue is a
deterministic state machine, so the child's view equals the node's at every index.

The node loop calls these; none of them blocks (but ``start`` and ``stop``):

    dns = DnsProcess(DnsSettings(address=("0.0.0.0", 8600), domain="registry.", max_stale_s=30,
                                 nameservers=[("n1", "10.0.0.1"), ...]),
                     snapshot=lambda: node.catalogue.to_bytes())
    dns.start(timeout_s=10)          # returns once UDP and TCP are bound; DnsStartError if not
    dns.apply([(index, kind, data), ...])  # every committed entry, in order, right after the
                                     # node's catalogue applied them
    dns.leader_contact(age_s)        # every tick: seconds since a leader was heard from,
                                     # 0.0 on the leader, None when no leader is known
    dns.stats()                      # the child's latest report (for `registry status`)
    dns.stop(timeout_s=5)

The settings (``DnsSettings``, one frozen dataclass) go to the child as JSON on its command
line; what the child does with them (staleness, reports, its lifetime) is in
``registry_dns.child``. NB: the child asks for SIGTERM when the *thread* that started it exits
(``PR_SET_PDEATHSIG``), so call ``start`` from the thread that lives as long as the node (the
node loop's thread).

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

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from registry.childproc import ChildProcess

from . import feed
from .server import format_address
from .settings import DnsSettings

__all__ = ["CHILD_MODULE", "DnsProcess", "DnsProcessError", "DnsStartError"]

log = logging.getLogger("registry.dns")

#: What the handle runs as ``python -m``: the child program.
CHILD_MODULE = "registry_dns.child"

_PARENT_RECV_BYTES = 64 * 1024


class DnsProcessError(RuntimeError):
    """The DNS process is not running, or failed."""


class DnsStartError(OSError):
    """The DNS process could not start; the message is the child's (e.g. the address is in use)."""


class DnsProcess:
    """Parent-side handle of the DNS child process. Not thread-safe: call from the node loop.

    ``settings`` go to the child as they are; ``snapshot`` and ``max_backlog_bytes`` are the
    handle's own (see the module doc: the backlog).
    """

    def __init__(self, settings: DnsSettings, *, snapshot: Callable[[], bytes] | None = None,
                 max_backlog_bytes: int = 64 * 1024 * 1024) -> None:
        if max_backlog_bytes < 1:
            raise ValueError(f"max_backlog_bytes must be positive, got {max_backlog_bytes}")
        self.settings = settings
        self._requested = settings.address
        self._snapshot = snapshot
        self.max_backlog_bytes = max_backlog_bytes
        where = format_address(settings.address)
        self._child = ChildProcess(CHILD_MODULE, settings, name=f"the DNS process for {where}", doing="serving",
                                   start_error=DnsStartError, recv_bytes=_PARENT_RECV_BYTES)
        self._reader = feed.FrameReader(frozenset({feed.READY, feed.ERROR, feed.STATS, feed.RESYNC}))
        # Invariant: _queue holds whole frames in order; frames queued before start() wait there.
        self._queue = feed.FrameQueue()
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
        return self._child.pid

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the child; return once it serves, else raise DnsStartError with its message."""
        if self._child.started:
            raise DnsProcessError("the DNS process was already started")
        try:
            self._child.start(timeout_s, self._on_start_data)
        except feed.FeedError as exc:
            self._gone = True
            raise _start_error(None, f"the DNS process sent a corrupt report while starting: {exc}") from exc
        except BaseException:
            self._gone = True
            self._queue = feed.FrameQueue()
            raise
        self._flush()

    def _on_start_data(self, data: bytes) -> bool:
        """The handshake: READY (or ERROR, the child's reason not to serve); True once serving."""
        for kind, body in self._reader.feed(data):
            if kind == feed.ERROR and self._address is None:
                info = feed.decode_json(body)
                code = info.get("errno") if isinstance(info.get("errno"), int) else None
                message = str(info.get("message", "unknown error"))
                raise _start_error(code, f"DNS could not start: {message}")
            if kind == feed.READY:
                info = feed.decode_json(body)
                self._address = (str(info["host"]), int(info["port"]))
                log.info("DNS process %d serving on %s", self._child.pid, format_address(self._address))
            else:
                self._handle(kind, body)  # NB: also a report that came in one read with READY
        return self._address is not None

    def alive(self) -> bool:
        return self._child.alive()

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the child (EOF on the feed, then SIGTERM, then SIGKILL); its exit status."""
        self._gone = True
        self._queue = feed.FrameQueue()
        return self._child.stop(timeout_s)

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
            self._queue.push(feed.ENTRIES, feed.encode_entries(batch))
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
        self._queue.push(feed.RESTORE, feed.frame(feed.RESTORE, bytes(snapshot)))
        self._floor = self._queue.pending_bytes

    def leader_contact(self, age_s: float | None) -> None:
        """Every tick: seconds since this node last heard from a leader (0.0 if it is the
        leader), or None if no leader is known (the last contact reported stands). Also sends
        what is queued and reads the child's reports. Never blocks."""
        if self._gone:
            return
        now = time.monotonic()
        if age_s is None:
            data = feed.encode_contact(False, 0.0)
        else:
            data = feed.encode_contact(True, now - max(0.0, float(age_s)))
        self._queue.push(feed.CONTACT, data, coalesce=True)
        self._flush()

    def flush(self) -> None:
        """Send what is queued and read the child's reports (``apply`` and ``leader_contact`` do)."""
        self._flush()

    def _flush(self) -> None:
        sock = self._child.sock
        if sock is None or self._address is None:  # not started (frames wait) or stopped
            self._account()
            return
        self._receive()
        if self._child.sock is None:
            return
        if self._resync_from is not None:
            if self._snapshot is not None and not self._queue.has_unsent(feed.RESTORE):
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
        sock = self._child.sock
        assert sock is not None
        for _ in range(16):
            data = feed.receive(sock, _PARENT_RECV_BYTES)
            if data is None:
                return
            if not data:
                self._lost("the DNS process exited")
                return
            try:
                frames = self._reader.feed(data)
            except feed.FeedError as exc:
                self._lost(f"the DNS process sent a corrupt report: {exc}")
                return
            for kind, body in frames:
                self._handle(kind, body)

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == feed.STATS:
            self._latest = feed.decode_json(body)
            self._latest_at = time.monotonic()
        elif kind == feed.RESYNC:
            try:
                self._resync_from = feed.decode_index(body)  # answered in _flush, after reading
            except feed.FeedError:
                return
        elif kind == feed.ERROR:
            self._error = str(feed.decode_json(body).get("message", "unknown error"))
            log.error("DNS process: %s", self._error)

    def _lost(self, why: str) -> None:
        self._gone = True
        self._queue = feed.FrameQueue()
        self._child.close()
        self._error = self._error or why
        log.error("%s; DNS is not served by this node until it is restarted", why)

    # -- inspection -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The child's latest report, plus the parent's view: alive, pid, address, backlog.

        Child keys (see ``registry_dns.server.COUNTERS`` for the query counters): ``qps``,
        ``stale`` (answering SERVFAIL now: the child reports every change of it at once, so this
        is its state as of the last few milliseconds, however old the counters are),
        ``stale_queries``, ``answered``, ``dropped``, ``applied_index``, ``version``,
        ``leader_contact_age_s``, ``gap``, ``responder`` (the responder's own counters), ...
        ``report_age_s`` says how old the report (and so its counters) is.
        """
        if self._child.sock is not None and self._address is not None:
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
