"""The DNS child program: ``python -m registry_dns.child``, started by ``DnsProcess.start``.

It serves DNS from its own replica of the catalogue, fed by the agent over a socket pair (the
frames of ``registry_dns.feed``). Its settings are one ``DnsSettings``, as JSON on its command
line (``--settings``); the feed socket is an inherited descriptor (``--fd``).

One thread, one ``selectors`` loop (``DnsServer``) that also watches the feed socket. Per
wakeup it reads at most ``_FEED_CHUNK_BYTES`` of feed, applies the entries (a kind other than
NORMAL (0) is skipped), hands the new view to the responder once if it changed (at most every
``_CATCH_UP_UPDATE_S`` while a backlog is being read), recomputes staleness, then answers
queries. It reports its counters to the agent every ``stats_interval_s``, and at once when its
staleness changes, so the agent's ``registry status`` shows what DNS does now.

Staleness (issue 4, point 6): the child answers SERVFAIL (``stale=True`` to the responder) when
it has never been told of a leader contact, when the last contact is older than
``max_stale_s`` by its own clock (so a hung agent also leads to SERVFAIL: no news is not good
news), or when it has missed entries (a gap) for longer than ``max_stale_s``.

Lifetime: the child exits when the feed socket reaches EOF, that is when the agent closes it or
dies in any way (even SIGKILL: the kernel closes its descriptors). On Linux it also asks for
SIGTERM when its parent dies (``PR_SET_PDEATHSIG``). It ignores SIGINT: a Ctrl-C reaches the
agent, which stops it. Start errors (a bad setting, the address in use, a responder that cannot
be built) go to the agent as one ERROR frame, and the child exits with status 2; a corrupt feed
ends it with status 3.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from registry.catalogue import Catalogue, SnapshotError
from registry.catalogue.frozen import thaw
from registry.childproc import child_arguments, open_feed, read_settings, send_blocking
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
    encode_error,
    encode_index,
    encode_json,
    frame,
    receive,
)
from .server import DnsServer, format_address
from .settings import DnsSettings

__all__ = ["DnsChild", "main"]

log = logging.getLogger("registry.dns")

NORMAL = 0  # registry.raft.EntryKind.NORMAL; NB: not imported, registry_dns never imports raft

_FEED_CHUNK_BYTES = 256 * 1024  # feed read per wakeup: queries are served between chunks
_CATCH_UP_UPDATE_S = 0.05  # while a backlog is read, the responder gets a new view this often
_RESYNC_INTERVAL_S = 1.0  # a child with a gap asks for a snapshot at most this often


class DnsChild:
    """The DNS process's state: the feed, the replica catalogue, staleness, reports."""

    def __init__(self, feed: socket.socket, responder: Any, settings: DnsSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.feed = feed
        self.responder = responder
        self.settings = settings
        self.clock = clock
        self.catalogue = Catalogue(max_sessions=settings.max_sessions)
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
        # Invariant: next_stats <= now whenever server.stale differs from the last report's "stale".
        self.next_stats = now
        self.last_queries = 0
        self.last_stats_at = now
        self.server = DnsServer(settings.address, responder, tcp_idle_timeout_s=settings.tcp_idle_timeout_s,
                                max_tcp_clients=settings.max_tcp_clients, on_wake=self.on_wake, clock=clock)
        self.publish(now)
        self.server.stale = self.is_stale(now)
        self.server.watch(feed.fileno(), self.on_feed)

    # Staleness.

    def is_stale(self, now: float) -> bool:
        max_stale_s = self.settings.max_stale_s
        if self.last_contact_at is None or now - self.last_contact_at > max_stale_s:
            return True
        return self.gap_since is not None and now - self.gap_since > max_stale_s

    def stale_flips_at(self) -> float | None:
        """When the answer of is_stale() next changes by time alone (None: not by time)."""
        if self.last_contact_at is None:
            return None
        flips = self.last_contact_at + self.settings.max_stale_s
        if self.gap_since is not None:
            flips = min(flips, self.gap_since + self.settings.max_stale_s)
        return flips

    # The feed.

    def on_feed(self) -> None:
        data = receive(self.feed, _FEED_CHUNK_BYTES)
        if data is None:
            return
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
            self.out.push(ERROR, encode_error(f"corrupt feed: {exc}"))
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
                catalogue = thaw(body, max_sessions=self.settings.max_sessions)
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
        stale = self.is_stale(now)
        if stale != self.server.stale:
            self.server.stale = stale
            # NB: report now, not at the next interval: `registry status` must show what DNS
            # does now (a report from before the first leader contact said STALE while DNS answered).
            self.next_stats = now

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
        self.out.push(STATS, encode_json(STATS, body), coalesce=True)

    # The loop.

    def wait_s(self, now: float) -> float:
        """How long the next wakeup may wait: until the next report, staleness flip or view hand-over."""
        wake = self.next_stats
        flips = self.stale_flips_at()
        if flips is not None and flips > now:
            wake = min(wake, flips)
        if self.published_view is not self.catalogue.view:
            wake = min(wake, self.published_at + _CATCH_UP_UPDATE_S)
        return max(0.0, wake - now)

    def after_wake(self) -> None:
        """After a wakeup: report if one is due, then send what is queued to the agent."""
        now = self.clock()
        if now >= self.next_stats:
            self.next_stats = now + self.settings.stats_interval_s
            self.report(now)
        if len(self.out):
            try:
                self.out.flush(self.feed)
            except OSError:
                self.running = False  # the agent is gone

    def run(self) -> int:
        try:
            while self.running:
                self.server.run_once(self.wait_s(self.clock()))
                self.after_wake()
        finally:
            self.server.close()
        return self.exit_status


def _build_responder(settings: DnsSettings) -> Any:
    module_name, _, attr = settings.responder.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**settings.responder_args())


def main(argv: Sequence[str] | None = None) -> int:
    args = child_arguments(argv, prog="python -m registry_dns.child",
                           description="The DNS process of a registry agent (started by it).",
                           settings_help="DnsSettings as JSON (written by DnsProcess)")
    configure_logging(logging.INFO, tag=f"dns[{os.getpid()}]")
    feed = open_feed(args)
    settings = read_settings(feed, args.settings, DnsSettings.from_json,
                             lambda why: encode_error(f"bad DNS settings: {why}"))
    if settings is None:
        return 2
    try:
        child = DnsChild(feed, _build_responder(settings), settings)
    except OSError as exc:
        send_blocking(feed, encode_error(exc.strerror or str(exc), exc.errno))
        return 2
    except Exception as exc:  # a responder that refuses its settings, a bad responder path, ...
        log.exception("cannot start DNS on %s", format_address(settings.address))
        send_blocking(feed, encode_error(f"{type(exc).__name__}: {exc}"))
        return 2
    host, port = child.server.address
    feed.setblocking(True)
    feed.sendall(encode_json(READY, {"host": host, "port": port}))
    feed.setblocking(False)
    log.info("serving DNS on %s (UDP and TCP)", format_address((host, port)))
    return child.run()


if __name__ == "__main__":
    raise SystemExit(main())
