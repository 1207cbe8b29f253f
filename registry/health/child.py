"""The prober child program: ``python -m registry.health.child``, started by ``Prober.start``.

One asyncio event loop probes every check it was given (``CheckSet``) and sends the agent only
status changes (REPORTS, batched for ``report_batch_s``), plus its counters (STATS) every
``stats_interval_s``. Its settings are one ``ProberSettings``, as JSON on its command line
(``--settings``); the feed socket is an inherited descriptor (``--fd``). Frames are those of
``registry.health.wire``.

Bad input never ends it: a frame that does not decode, of an unknown type or over the size
limit is counted in ``bad_frames``; a spec that is invalid is counted in ``bad_specs`` and the
rest of its frame is used.

Backpressure: while the agent does not read, status changes wait in a map keyed by check (the
latest per check wins) instead of piling up as bytes, so memory stays bounded by the number of
checks; STATS are skipped while earlier frames wait.

Lifetime: the child exits when the feed socket reaches EOF, that is when the agent closes it or
dies in any way (the kernel closes its descriptors); on Linux it also asks for SIGTERM when its
parent dies (``PR_SET_PDEATHSIG``). It ignores SIGINT: a Ctrl-C reaches the agent, which stops
it. Bad settings end it with status 2 (after an ERROR frame saying why).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import Sequence
from typing import Any

from registry.childproc import child_arguments, open_feed, read_settings
from registry.logformat import configure as configure_logging

from .checks import CheckSet
from .settings import ProberSettings
from .spec import ProbeReport
from .wire import (
    ERROR,
    READY,
    REPLACE,
    REPORTS,
    STATS,
    UPDATE,
    FrameQueue,
    FrameReader,
    WireError,
    decode,
    decode_key,
    decode_spec,
    encode,
    encode_report,
    receive,
)

__all__ = ["ProberChild", "main"]

log = logging.getLogger("registry.health")

_FEED_CHUNK_BYTES = 256 * 1024
#: Past this many unsent bytes, new reports wait in the map (coalesced) and STATS are skipped.
_MAX_BACKLOG_BYTES = 1024 * 1024
#: File descriptors kept for the feed, logging and the loop itself, outside probe slots.
_RESERVED_FDS = 64


class ProberChild:
    """The prober process's state: the feed, the checks, the reports waiting to be sent."""

    def __init__(self, feed: socket.socket, settings: ProberSettings, max_in_flight: int) -> None:
        self.feed = feed
        self.settings = settings
        self.max_in_flight = max_in_flight
        self.loop = asyncio.get_running_loop()
        self.checks = CheckSet(self.loop, self.queue_report, max_in_flight=max_in_flight,
                               first_probe_spread_s=settings.first_probe_spread_s,
                               http_read_bytes=settings.http_read_bytes)
        self.reader = FrameReader()
        self.out = FrameQueue()
        self.writing = False  # a writer callback is registered for the feed
        # Invariant: a key is in `pending` only while its latest report has not been queued in `out`.
        self.pending: dict[tuple[str, str], ProbeReport] = {}
        self.flush_handle: asyncio.TimerHandle | None = None
        self.stopped: asyncio.Future[None] = self.loop.create_future()
        self.counts = {"frames": 0, "bad_frames": 0, "bad_specs": 0, "replaces": 0, "updates": 0,
                       "reports_sent": 0}
        self.last_stats = (time.monotonic(), time.process_time(), 0)

    # The feed.

    def on_readable(self) -> None:
        data = receive(self.feed, _FEED_CHUNK_BYTES)
        if data is None:
            return
        if not data:
            log.info("the agent closed the feed: stopping")
            self.stop()
            return
        oversized = self.reader.oversized
        bodies = self.reader.feed(data)
        self.counts["bad_frames"] += self.reader.oversized - oversized
        for body in bodies:
            self.handle(body)

    def handle(self, body: bytes) -> None:
        self.counts["frames"] += 1
        try:
            kind, payload = decode(body)
            if kind == REPLACE:
                if not isinstance(payload, list):
                    raise WireError(f"a REPLACE payload is a list of specs, got {type(payload).__name__}")
                self.counts["replaces"] += 1
                self.checks.replace(self.specs(payload))
            elif kind == UPDATE:
                if not (isinstance(payload, list) and len(payload) == 2
                        and all(isinstance(part, list) for part in payload)):
                    raise WireError("an UPDATE payload is [[spec, ...], [key, ...]]")
                removes = [decode_key(key) for key in payload[1]]
                self.counts["updates"] += 1
                for spec in self.specs(payload[0]):
                    self.checks.upsert(spec)
                for key in removes:
                    self.checks.remove(key)
            else:
                raise WireError(f"unknown frame type {kind}")
        except WireError as exc:
            self.counts["bad_frames"] += 1
            log.warning("ignored a bad frame from the agent: %s", exc)

    def specs(self, values: list[Any]) -> list[Any]:
        good = []
        for value in values:
            try:
                good.append(decode_spec(value))
            except WireError as exc:
                self.counts["bad_specs"] += 1
                log.warning("ignored a bad spec from the agent: %s", exc)
        return good

    # Reports.

    def queue_report(self, report: ProbeReport) -> None:
        self.pending[report.key] = report
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_later(self.settings.report_batch_s, self.flush_reports)

    def flush_reports(self) -> None:
        self.flush_handle = None
        if not self.pending or self.out.pending_bytes > _MAX_BACKLOG_BYTES:
            return  # NB: send() calls again once the backlog is written
        reports = [encode_report(r) for r in self.pending.values()]
        self.pending.clear()
        self.counts["reports_sent"] += len(reports)
        self.out.push(REPORTS, encode(REPORTS, reports))
        self.send()

    def send(self) -> None:
        try:
            done = self.out.flush(self.feed)
        except OSError:
            log.info("the agent closed the feed: stopping")
            self.stop()
            return
        if done and self.writing:
            self.loop.remove_writer(self.feed.fileno())
            self.writing = False
        elif not done and not self.writing:
            self.loop.add_writer(self.feed.fileno(), self.send)
            self.writing = True
        if done and self.pending and self.flush_handle is None:
            self.flush_reports()  # reports that waited for the backlog to be written

    def report_stats(self) -> None:
        if self.stopped.done():
            return
        self.loop.call_later(self.settings.stats_interval_s, self.report_stats)
        if self.out.pending_bytes:
            return
        self.out.push(STATS, encode(STATS, self.stats()))
        self.send()

    def stats(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), time.process_time()
        checks = self.checks.describe()
        then, cpu_then, probes_then = self.last_stats
        self.last_stats = (now, cpu, checks["probes"])
        elapsed = now - then
        rate = (lambda x: round(x / elapsed, 1)) if elapsed > 0 else (lambda x: 0.0)
        return {
            **checks, **self.counts,
            "probes_per_s": rate(checks["probes"] - probes_then),
            "cpu_percent": rate(100 * (cpu - cpu_then)),
            "cpu_s": round(cpu, 3),
            "max_lag_ms": round(1000 * self.checks.take_max_lag_s(), 1),
            "max_in_flight": self.max_in_flight,
            "pending_reports": len(self.pending),
        }  # fmt: skip

    # The loop.

    def stop(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)

    async def run(self) -> int:
        fd = self.feed.fileno()
        self.loop.add_reader(fd, self.on_readable)
        self.out.push(READY, encode(READY, {"pid": os.getpid(), "max_in_flight": self.max_in_flight}))
        self.send()
        self.report_stats()
        try:
            await self.stopped
        finally:
            self.loop.remove_reader(fd)
            if self.writing:
                self.loop.remove_writer(fd)
            self.checks.close()
        return 0


def _open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (each probe in flight holds a socket); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


async def _run(feed: socket.socket, settings: ProberSettings, max_in_flight: int) -> int:
    return await ProberChild(feed, settings, max_in_flight).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = child_arguments(argv, prog="python -m registry.health.child",
                           description="The prober process of a registry agent (started by it).",
                           settings_help="ProberSettings as JSON (written by Prober)")
    configure_logging(logging.INFO, tag=f"prober[{os.getpid()}]")
    feed = open_feed(args)
    settings = read_settings(feed, args.settings, ProberSettings.from_json,
                             lambda why: encode(ERROR, {"message": f"bad prober settings: {why}"}))
    if settings is None:
        return 2
    feed.setblocking(False)
    max_in_flight = max(1, min(settings.max_in_flight, _open_files_limit() - _RESERVED_FDS))
    return asyncio.run(_run(feed, settings, max_in_flight))


if __name__ == "__main__":
    raise SystemExit(main())
