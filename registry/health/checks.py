"""The prober child's checks: when each is probed, and the thresholds that turn results into
status changes. Runs on the child's asyncio loop; nothing here blocks.

Scheduling: a check added by an update (a registration) is first probed at a random moment
within min(interval, ``first_probe_spread_s``): soon. A check added by a replace (a new leader's
whole set) is first probed at a random moment within its interval. NB: not sooner: 10,000 checks
given at once and probed within a second would be a connect storm that the prober, the network
and the services pay for, and that can time out healthy instances; their statuses come from the
catalogue, so nothing is urgent. Then one probe every interval, measured from the start of the
previous one, so the spread lasts (a probe never outlives its timeout, which is at most the
interval, so probes of one check never overlap). At most ``max_in_flight`` probes are open at once; a
probe that waits for a slot is late, and the lateness is measured (``max_lag_ms``).

Incarnations: an upsert of the same spec keeps the counts (and adopts the given status if it
differs: the catalogue is the authority, and its status is where counting starts); another
revision (or, which the catalogue never does, other fields under the same revision) starts
afresh, cancelling a probe in flight for the old one, so no result of an old incarnation is
ever counted for a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from registry.catalogue.health import Threshold
from registry.catalogue.model import CheckKind

from .probes import Outcome, TcpProbe, literal_address, probe
from .spec import ProbeReport, ProbeSpec

__all__ = ["CheckSet"]

log = logging.getLogger("registry.health")


class _Check:
    __slots__ = ("spec", "threshold", "address", "due_at", "started_at", "handle", "probe", "waiting")

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self.threshold = Threshold(spec.failures, spec.successes, spec.status)
        # (family, sockaddr) for a TCP check of an address literal (probed with TcpProbe), else None.
        self.address = literal_address(spec.host, spec.port) if spec.kind is CheckKind.TCP else None
        self.due_at = 0.0
        self.started_at = 0.0
        # Invariant: at most one of these: a timer for the next probe (handle), a place in the
        # queue for a slot (waiting), a probe in flight (probe: a TcpProbe or a Task).
        self.handle: asyncio.TimerHandle | None = None
        self.probe: TcpProbe | asyncio.Task[Outcome] | None = None
        self.waiting = False


class CheckSet:
    """The checks being probed, keyed by (service, instance_id). ``report`` gets every status change."""

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[ProbeReport], None], *,
                 max_in_flight: int, first_probe_spread_s: float = 1.0, http_read_bytes: int = 4096,
                 rng: random.Random | None = None) -> None:
        self._loop = loop
        self._report = report
        self._max_in_flight = max_in_flight
        self._spread_s = first_probe_spread_s
        self._http_read_bytes = http_read_bytes
        self._rng = rng or random.Random()
        self._checks: dict[tuple[str, str], _Check] = {}
        # Checks due while every slot was taken, oldest first (a cancelled one is skipped).
        self._queue: deque[_Check] = deque()
        # Invariant: in_flight == number of checks whose probe is not None <= max_in_flight.
        self.in_flight = 0
        self.counters = {"probes": 0, "ok": 0, "failed": 0, "errors": 0, "reports": 0}
        self.max_lag_s = 0.0  # the latest probe start since the last take_max_lag_s()

    def __len__(self) -> int:
        return len(self._checks)

    def replace(self, specs: Iterable[ProbeSpec]) -> None:
        """Probe exactly ``specs``: upsert each (new ones first probed within their interval),
        remove every other check."""
        wanted = {spec.key: spec for spec in specs}
        for key in [key for key in self._checks if key not in wanted]:
            self.remove(key)
        for spec in wanted.values():
            self.upsert(spec, soon=False)

    def upsert(self, spec: ProbeSpec, *, soon: bool = True) -> None:
        """Add or change one check; a new one is first probed within min(interval,
        first_probe_spread_s) if ``soon``, else within its interval."""
        check = self._checks.get(spec.key)
        if check is not None and dataclasses.replace(check.spec, status=spec.status) == spec:
            if check.threshold.status is not spec.status:
                check.spec = spec
                check.threshold = Threshold(spec.failures, spec.successes, spec.status)
            return
        if check is not None:
            self._cancel(check)
        check = _Check(spec)
        self._checks[spec.key] = check
        interval_s = spec.interval_ms / 1000
        first_s = self._rng.uniform(0.0, min(interval_s, self._spread_s) if soon else interval_s)
        self._schedule(check, self._loop.time() + first_s)

    def remove(self, key: tuple[str, str]) -> None:
        check = self._checks.pop(key, None)
        if check is not None:
            self._cancel(check)

    def close(self) -> None:
        for check in self._checks.values():
            self._cancel(check)
        self._checks.clear()
        self._queue.clear()

    def take_max_lag_s(self) -> float:
        lag, self.max_lag_s = self.max_lag_s, 0.0
        return lag

    def _schedule(self, check: _Check, at: float) -> None:
        check.due_at = at
        check.handle = self._loop.call_at(at, self._due, check)

    def _due(self, check: _Check) -> None:
        check.handle = None
        if self.in_flight < self._max_in_flight:
            self._start(check)
        else:
            check.waiting = True
            self._queue.append(check)

    def _start(self, check: _Check) -> None:
        loop = self._loop
        check.started_at = started = loop.time()
        self.max_lag_s = max(self.max_lag_s, started - check.due_at)
        self.in_flight += 1
        spec = check.spec
        if check.address is not None:
            family, address = check.address
            check.probe = tcp = TcpProbe(loop, family, address, spec.timeout_ms, lambda o: self._finish(check, tcp, o))
        else:
            check.probe = task = loop.create_task(probe(spec, http_read_bytes=self._http_read_bytes))
            task.add_done_callback(lambda t: self._finish_task(check, t))

    def _finish_task(self, check: _Check, task: asyncio.Task[Outcome]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # NB: a bug in a probe must not end probing of every check
            log.error("probe of %s/%s failed", check.spec.service, check.spec.instance_id, exc_info=exc)
            self._finish(check, task, None)
        else:
            self._finish(check, task, task.result())

    def _finish(self, check: _Check, by: object, outcome: Outcome | None) -> None:
        if check.probe is not by:
            return  # cancelled (removed, or a new revision) after it completed
        check.probe = None
        self.in_flight -= 1
        counters = self.counters
        counters["probes"] += 1
        spec = check.spec
        if outcome is None or outcome.ok is None:
            counters["errors"] += 1
        else:
            counters["ok" if outcome.ok else "failed"] += 1
            status = check.threshold.observe(outcome.ok)
            if status is not None:
                counters["reports"] += 1
                self._report(ProbeReport(spec.service, spec.instance_id, spec.revision, status, outcome.output))
        self._schedule(check, max(check.started_at + spec.interval_ms / 1000, self._loop.time()))
        self._admit()

    def _admit(self) -> None:
        queue = self._queue
        while queue and self.in_flight < self._max_in_flight:
            check = queue.popleft()
            if check.waiting:
                check.waiting = False
                self._start(check)

    def _cancel(self, check: _Check) -> None:
        if check.handle is not None:
            check.handle.cancel()
            check.handle = None
        check.waiting = False
        running, check.probe = check.probe, None
        if running is not None:
            running.cancel()
            self.in_flight -= 1
            self._admit()

    def describe(self) -> dict[str, Any]:
        return {"checks": len(self._checks), "in_flight": self.in_flight, **self.counters}
