"""Prober: the agent's handle of its prober child (``registry.health.child``).

Why a process: a probe that is slow, hangs or floods never takes time from the Raft loop, and
probing 10,000 checks runs on another core. The node loop calls these; none of them blocks (but
``start`` and ``stop``):

    prober = Prober(ProberSettings(), logger=log)
    prober.start(timeout_s=10)       # returns once the child runs; ProberStartError if not
    poller.register(prober.fileno(), zmq.POLLIN)   # readable when the child sent something
    prober.replace(specs)            # on becoming leader: the whole set of active checks
    prober.update(upsert, remove)    # as committed entries touch instances
    prober.drain()                   # when fileno() is readable: the status changes (ProbeReport)
    prober.clear()                   # on losing leadership: probe nothing
    prober.stats(); prober.alive()
    prober.stop(timeout_s=5)

``fileno()`` is readable when a frame came from the child: status changes, or its counters
(every ``stats_interval_s``), so ``drain()`` may return []. It stays the same descriptor from
``start`` to ``stop`` (unregister it before ``stop``), and is never readable after the child
is lost. Calls before ``start`` are queued.

``drain()`` returns only reports for a check in the current set with the same revision: a
report about a check removed, cleared or re-registered since it was sent is dropped (counted
in ``stale_reports``). Writes never block: what the socket does not take waits in a queue and
goes with the next call; a ``replace`` (or ``clear``) drops the frames it supersedes.

Failure: a child that dies is not restarted here. ``alive()`` turns False, ``stats()`` carries
``error``, and the calls become no-ops; the agent decides.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

from registry.childproc import ChildProcess

from .settings import ProberSettings
from .spec import ProbeReport, ProbeSpec
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
    decode_report,
    encode,
    encode_spec,
    receive,
)

__all__ = ["CHILD_MODULE", "Prober", "ProberError", "ProberStartError"]

#: What the handle runs as ``python -m``: the child program.
CHILD_MODULE = "registry.health.child"

_RECV_BYTES = 256 * 1024
_MAX_READS_PER_DRAIN = 64


class ProberError(RuntimeError):
    """The prober is not running, or was used wrongly."""


class ProberStartError(OSError):
    """The prober child could not start; the message says why."""


class Prober:
    """Parent-side handle of the prober child. Not thread-safe: call from the node loop."""

    def __init__(self, settings: ProberSettings | None = None, logger: logging.Logger | None = None) -> None:
        self.settings = settings or ProberSettings()
        self.log = logger or logging.getLogger("registry.health")
        self._child = ChildProcess(CHILD_MODULE, self.settings, name="the prober process",
                                   start_error=ProberStartError, recv_bytes=_RECV_BYTES)
        self._reader = FrameReader()
        # Invariant: _queue holds whole frames in order; frames queued before start() wait there.
        self._queue = FrameQueue()
        # The checks the child was told to probe: key -> revision (reports are filtered by it).
        self._revisions: dict[tuple[str, str], int] = {}
        # Reports received and not yet drained, the latest per check, oldest first.
        self._reports: dict[tuple[str, str], ProbeReport] = {}
        self._ready = False
        self._gone = False  # stopped, or the child was lost: nothing is sent any more
        self._latest: dict[str, Any] = {}
        self._latest_at: float | None = None
        self._error: str | None = None
        self._parent = {"reports_received": 0, "stale_reports": 0, "bad_frames_received": 0, "specs_sent": 0}

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the child; return once it runs, else raise ProberStartError saying why."""
        if self._child.started:
            raise ProberError("the prober was already started")
        try:
            self._child.start(timeout_s, self._on_start_data)
        except BaseException:
            self._gone = True
            raise
        self._flush()

    def _on_start_data(self, data: bytes) -> bool:
        """The handshake: READY (or ERROR, the child's reason not to run); True once running."""
        for body in self._reader.feed(data):
            kind, payload = self._decode(body)
            if kind == ERROR:
                raise ProberStartError(f"the prober could not start: {_message(payload)}")
            if kind == READY:
                self._ready = True
                self.log.info("prober process %d running (%s probes in flight at most)",
                              self._child.pid, payload.get("max_in_flight") if isinstance(payload, dict) else "?")
            elif kind is not None:
                self._handle(kind, payload)
        return self._ready

    def alive(self) -> bool:
        return self._child.alive() and not self._gone

    def fileno(self) -> int:
        """The descriptor the node's poller watches: readable when the child sent something."""
        fd = self._child.fileno()
        if fd is None:
            raise ProberError("the prober is not running (start it first; after stop it has no descriptor)")
        return fd

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the child (EOF on the feed, then SIGTERM, then SIGKILL); its exit status."""
        self._gone = True
        self._queue = FrameQueue()
        return self._child.stop(timeout_s)

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the set of checks ------------------------------------------------------------------------

    def replace(self, specs: Iterable[ProbeSpec]) -> None:
        """Probe exactly ``specs`` from now on (on becoming leader). A check already probed with
        the same revision keeps its counts and schedule; a new one is first probed at a random
        moment within its interval (so a whole set is spread); every other check is dropped."""
        wanted = {spec.key: spec for spec in _checked(specs)}
        if self._gone:
            return
        self._revisions = {key: spec.revision for key, spec in wanted.items()}
        self._queue.drop_unsent()  # NB: a whole set supersedes every change queued before it
        self._queue.push(REPLACE, encode(REPLACE, [encode_spec(spec) for spec in wanted.values()]))
        self._parent["specs_sent"] += len(wanted)
        self._flush()

    def update(self, upsert: Iterable[ProbeSpec], remove: Iterable[tuple[str, str]]) -> None:
        """Add or change the checks ``upsert`` and stop probing the keys ``remove``.

        A new check (or one with a new revision: its counts start afresh, from its status) is
        first probed soon: within min(interval, ``first_probe_spread_s``). A key may not be in
        both (ValueError).
        """
        specs = _checked(upsert)
        keys = [(str(service), str(instance_id)) for service, instance_id in remove]
        both = {spec.key for spec in specs} & set(keys)
        if both:
            raise ValueError(f"checks both upserted and removed: {sorted(both)}")
        if self._gone or not (specs or keys):
            return
        for key in keys:
            self._revisions.pop(key, None)
        for spec in specs:
            self._revisions[spec.key] = spec.revision
        self._queue.push(UPDATE, encode(UPDATE, [[encode_spec(spec) for spec in specs], [list(key) for key in keys]]))
        self._parent["specs_sent"] += len(specs)
        self._flush()

    def clear(self) -> None:
        """Probe nothing (on losing leadership); reports not yet drained are dropped."""
        self.replace([])

    # -- reports ----------------------------------------------------------------------------------

    def drain(self) -> list[ProbeReport]:
        """The status changes the child sent since the last call (the latest per check, oldest
        first), for checks still in the set with the same revision."""
        self._flush()
        reports = []
        for report in self._reports.values():
            if self._revisions.get(report.key) == report.revision:
                reports.append(report)
            else:
                self._parent["stale_reports"] += 1
        self._reports.clear()
        return reports

    def flush(self) -> None:
        """Send what is queued and read what the child sent (reports wait for ``drain``)."""
        self._flush()

    def _flush(self) -> None:
        sock = self._child.sock
        if sock is None or not self._ready or self._gone:
            return
        self._receive(sock)
        if self._gone:
            return
        try:
            self._queue.flush(sock)
        except OSError:
            self._lost("the prober process closed its feed")

    def _receive(self, sock: socket.socket) -> None:
        for _ in range(_MAX_READS_PER_DRAIN):
            data = receive(sock, _RECV_BYTES)
            if data is None:
                return
            if not data:
                self._lost("the prober process exited")
                return
            for body in self._reader.feed(data):
                kind, payload = self._decode(body)
                if kind is not None:
                    self._handle(kind, payload)

    def _decode(self, body: bytes) -> tuple[int | None, Any]:
        try:
            return decode(body)
        except WireError as exc:
            self._parent["bad_frames_received"] += 1
            self.log.warning("ignored a bad frame from the prober process: %s", exc)
            return None, None

    def _handle(self, kind: int, payload: Any) -> None:
        if kind == REPORTS and isinstance(payload, list):
            for value in payload:
                try:
                    report = decode_report(value)
                except WireError as exc:
                    self._parent["bad_frames_received"] += 1
                    self.log.warning("ignored a bad report from the prober process: %s", exc)
                    continue
                self._parent["reports_received"] += 1
                self._reports.pop(report.key, None)
                self._reports[report.key] = report
        elif kind == STATS and isinstance(payload, dict):
            self._latest = payload
            self._latest_at = time.monotonic()
        elif kind == ERROR:
            self._error = _message(payload)
            self.log.error("prober process: %s", self._error)
        else:
            self._parent["bad_frames_received"] += 1

    def _lost(self, why: str) -> None:
        self._gone = True
        self._queue = FrameQueue()
        self._error = self._error or why
        self.log.error("%s; checks are not probed by this node until it is restarted", why)
        self._child.silence()  # NB: the node's poller holds our descriptor number

    # -- inspection -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The child's latest counters, plus the parent's: alive, pid, and report bookkeeping.

        Child keys: ``checks``, ``in_flight``, ``probes`` (total), ``probes_per_s``, ``ok``,
        ``failed``, ``errors`` (probes the prober itself could not make), ``reports`` (status
        changes reached), ``reports_sent``, ``bad_frames``, ``bad_specs``, ``cpu_percent``,
        ``cpu_s``, ``max_lag_ms`` (the latest probe start in the last interval),
        ``max_in_flight``, ``pending_reports``. ``report_age_s`` says how old they are.
        """
        self._flush()
        out: dict[str, Any] = dict(self._latest)
        out.update(self._parent)
        out["alive"] = self.alive()
        out["pid"] = self.pid
        out["backlog_bytes"] = self._queue.pending_bytes
        out["report_age_s"] = None if self._latest_at is None else round(time.monotonic() - self._latest_at, 3)
        if self._error is not None:
            out["error"] = self._error
        return out


def _checked(specs: Iterable[ProbeSpec]) -> list[ProbeSpec]:
    out = list(specs)
    for spec in out:
        if not isinstance(spec, ProbeSpec):
            raise TypeError(f"expected ProbeSpec, got {type(spec).__name__}")
    return out


def _message(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return payload["message"]
    return "unknown error"
