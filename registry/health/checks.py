"""The prober child's checks: when each is probed, and the thresholds that turn results into
status changes. Runs on the child's asyncio loop; nothing here blocks.

Scheduling: a check's first probe comes at a random moment within
min(interval, ``first_probe_spread_s``) of its arrival (soon, but a set of 10,000 given at once
does not fire at once); its second at a random moment within one interval of the first, so that
the steady state is spread over the interval too; then one every interval, measured from the
start of the previous probe (a probe never outlives its timeout, which is at most the interval,
so probes of one check never overlap). At most ``max_in_flight`` probes are open at once; a
probe that waits for a slot is late, and the lateness is measured (``max_lag_ms``).

Incarnations: an upsert with the same revision keeps the counts (and adopts the given status if
it differs: the catalogue is the authority); another revision starts afresh, cancelling a probe
in flight for the old one, so no result of an old incarnation is ever counted for a new one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from registry.catalogue.model import HealthStatus

from .probes import probe
from .spec import ProbeReport, ProbeSpec

__all__ = ["CheckSet", "Threshold"]

log = logging.getLogger("registry.health")


# TODO(lead): use catalogue.health.Threshold (same interface) once it lands; this is a stand-in.
class Threshold:
    """Turns consecutive probe results into status changes.

    From PASSING, ``failures`` consecutive failures give CRITICAL; from CRITICAL, ``successes``
    consecutive successes give PASSING. A result that agrees with the status resets the run.
    """

    __slots__ = ("failures", "successes", "status", "_run")

    def __init__(self, failures: int, successes: int, status: HealthStatus) -> None:
        if failures < 1 or successes < 1:
            raise ValueError(f"failures and successes must be at least 1, got {failures} and {successes}")
        self.failures, self.successes, self.status = failures, successes, status
        # Invariant: 0 <= _run < (failures if status is PASSING else successes)
        self._run = 0

    def observe(self, ok: bool) -> HealthStatus | None:
        """Count one result; the new status if it makes the run long enough, else None."""
        passing = self.status is HealthStatus.PASSING
        if ok == passing:
            self._run = 0
            return None
        self._run += 1
        if self._run < (self.failures if passing else self.successes):
            return None
        self._run = 0
        self.status = HealthStatus.CRITICAL if passing else HealthStatus.PASSING
        return self.status


class _Check:
    __slots__ = ("spec", "threshold", "due_at", "handle", "task", "probes")

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self.threshold = Threshold(spec.failures, spec.successes, spec.status)
        self.due_at = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.probes = 0

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.task is not None:
            self.task.cancel()
            self.task = None


class CheckSet:
    """The checks being probed, keyed by (service, instance_id). ``report`` gets every status change."""

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[ProbeReport], None], *,
                 max_in_flight: int, first_probe_spread_s: float = 1.0, http_read_bytes: int = 4096,
                 rng: random.Random | None = None) -> None:
        self._loop = loop
        self._report = report
        self._slots = asyncio.Semaphore(max_in_flight)
        self._spread_s = first_probe_spread_s
        self._http_read_bytes = http_read_bytes
        self._rng = rng or random.Random()
        self._checks: dict[tuple[str, str], _Check] = {}
        self.in_flight = 0
        self.counters = {"probes": 0, "ok": 0, "failed": 0, "errors": 0, "reports": 0}
        self.max_lag_s = 0.0  # the latest probe start since the last take_max_lag_s()

    def __len__(self) -> int:
        return len(self._checks)

    def __contains__(self, key: object) -> bool:
        return key in self._checks

    def status(self, key: tuple[str, str]) -> HealthStatus | None:
        check = self._checks.get(key)
        return None if check is None else check.threshold.status

    def replace(self, specs: Iterable[ProbeSpec]) -> None:
        """Probe exactly ``specs``: upsert each, remove every other check."""
        wanted = {spec.key: spec for spec in specs}
        for key in [key for key in self._checks if key not in wanted]:
            self.remove(key)
        for spec in wanted.values():
            self.upsert(spec)

    def upsert(self, spec: ProbeSpec) -> None:
        check = self._checks.get(spec.key)
        if check is not None and check.spec.revision == spec.revision:
            check.spec = spec
            if check.threshold.status is not spec.status:
                check.threshold = Threshold(spec.failures, spec.successes, spec.status)
            return
        if check is not None:
            check.cancel()
        check = _Check(spec)
        self._checks[spec.key] = check
        first_s = self._rng.uniform(0.0, min(spec.interval_ms / 1000, self._spread_s))
        self._schedule(check, self._loop.time() + first_s)

    def remove(self, key: tuple[str, str]) -> None:
        check = self._checks.pop(key, None)
        if check is not None:
            check.cancel()

    def close(self) -> None:
        for check in self._checks.values():
            check.cancel()
        self._checks.clear()

    def take_max_lag_s(self) -> float:
        lag, self.max_lag_s = self.max_lag_s, 0.0
        return lag

    def _schedule(self, check: _Check, at: float) -> None:
        check.due_at = at
        check.handle = self._loop.call_at(at, self._due, check)

    def _due(self, check: _Check) -> None:
        check.handle = None
        check.task = self._loop.create_task(self._run(check))

    async def _run(self, check: _Check) -> None:
        spec = check.spec
        async with self._slots:
            started = self._loop.time()
            self.max_lag_s = max(self.max_lag_s, started - check.due_at)
            self.in_flight += 1
            try:
                outcome = await probe(spec, http_read_bytes=self._http_read_bytes)
            except Exception:  # NB: a bug in a probe must not end probing of every check
                log.exception("probe of %s/%s failed", spec.service, spec.instance_id)
                outcome = None
            finally:
                self.in_flight -= 1
        check.task = None
        counters = self.counters
        counters["probes"] += 1
        if outcome is None or outcome.ok is None:
            counters["errors"] += 1
        else:
            counters["ok" if outcome.ok else "failed"] += 1
            status = check.threshold.observe(outcome.ok)
            if status is not None:
                counters["reports"] += 1
                self._report(ProbeReport(spec.service, spec.instance_id, spec.revision, status, outcome.output))
        check.probes += 1
        interval_s = check.spec.interval_ms / 1000
        if check.probes == 1:
            interval_s *= self._rng.uniform(0.1, 1.0)
        self._schedule(check, max(started + interval_s, self._loop.time()))

    def describe(self) -> dict[str, Any]:
        return {"checks": len(self._checks), "in_flight": self.in_flight, **self.counters}
