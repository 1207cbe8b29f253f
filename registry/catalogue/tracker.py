"""The leader's health bookkeeping: TTL deadlines, deregister-after deadlines, transitions in flight.

Pure: no clock (``now_ms`` is a monotonic time in ms, ``wall_ms`` the wall clock stamped into
commands, both passed in), no I/O. Only the leader runs one; it proposes the transitions this
returns, and learns what was committed through ``on_touched`` like every other change.

Rules (docs/health.md):
- Heartbeats and probe results stay here, in memory. Only transitions leave: a TTL instance not
  renewed within ``ttl_ms`` turns critical; a critical instance renewed turns passing; an
  instance critical for ``deregister_after_ms`` is removed (a Deregister of that revision).
- ``lead()`` restarts every clock from the election, as etcd does with leases: a new leader
  never expires an instance for silence it did not witness.
- A transition is emitted once and then held "in flight" until the catalogue shows it applied
  (``on_touched``) or ``retry_ms`` passes, so a slow commit is not proposed twice a tick.
- Everything is keyed by (service, instance id) and checked against the instance's revision, so
  news about an older incarnation changes nothing.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Protocol

from .model import CheckKind, HealthStatus, Instance

Key = tuple[str, str]  # (service, instance id)

#: A transition not seen applied within this long may be emitted again.
RETRY_MS = 10_000


@dataclass(frozen=True, slots=True)
class Transition:
    """A command for the leader to propose: a health change, or (``remove``) an expiry."""

    service: str
    instance_id: str
    revision: int
    status: HealthStatus | None  # the new status; None when remove
    remove: bool = False
    output: str = ""  # why, for people: "TTL of 10 s expired", "connection refused"
    at_ms: int = 0  # the wall clock when it was decided


class View(Protocol):
    def instance(self, service: str, instance_id: str) -> Instance | None: ...

    def service_names(self) -> tuple[str, ...]: ...

    def instances(self, service: str, tag: str | None = None) -> tuple[Instance, ...]: ...


@dataclass(slots=True)
class _Entry:
    revision: int
    status: HealthStatus  # as committed
    ttl_ms: int  # 0: no TTL check
    deregister_after_ms: int  # 0: never
    renewed_ms: int  # TTL: the last renewal this leader saw (or its election)
    critical_ms: int  # when this leader first saw it critical (or its election)
    observed: HealthStatus | None = None  # what the news says (heartbeats, probes), when it differs
    inflight: tuple[HealthStatus | None, int] | None = None  # (target, retry at); None target = removal
    generation: int = 0  # bumps whenever the deadline is recomputed; stale heap items are skipped


class HealthTracker:
    """Invariant: an entry exists exactly for each checked instance of the view last seen (while
    leading), and the heap holds its next deadline (see ``_deadline``) under its generation."""

    def __init__(self, *, retry_ms: int = RETRY_MS) -> None:
        self._retry_ms = retry_ms
        self._entries: dict[Key, _Entry] = {}
        self._heap: list[tuple[int, int, Key]] = []  # (deadline, generation, key)
        self.leading = False
        self.emitted = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- leadership ------------------------------------------------------------------------------

    def lead(self, view: View, now_ms: int, keys: Iterable[Key] | None = None) -> None:
        """This node became leader (or the catalogue was replaced): start every clock from now.

        ``keys``: the checked instances, if the caller keeps that index (else the whole view is
        scanned, O(instances): too slow for a leader's loop with a large catalogue)."""
        self.leading = True
        self._entries.clear()
        self._heap.clear()
        if keys is None:
            instances: Iterable[Instance] = (i for s in view.service_names() for i in view.instances(s))
        else:
            instances = (i for key in keys if (i := view.instance(*key)) is not None)
        for instance in instances:
            if instance.check is not None:
                self._track(instance, now_ms)

    def step_down(self) -> None:
        self.leading = False
        self._entries.clear()
        self._heap.clear()

    # -- what the catalogue committed ------------------------------------------------------------

    def on_touched(self, view: View, keys: tuple[Key, ...], now_ms: int) -> None:
        """These instances were added, replaced, removed or changed health in the view."""
        if not self.leading:
            return
        for key in keys:
            instance = view.instance(*key)
            entry = self._entries.get(key)
            if instance is None or instance.check is None:
                self._entries.pop(key, None)
            elif entry is None or entry.revision != instance.revision:
                self._track(instance, now_ms)  # new or replaced: a fresh start
            elif entry.status is not instance.status:
                entry.status = instance.status
                if instance.status is HealthStatus.CRITICAL:
                    entry.critical_ms = now_ms
                if entry.inflight is not None and entry.inflight[0] is instance.status:
                    entry.inflight = None
                if entry.observed is instance.status:
                    entry.observed = None
                self._reschedule(key, entry)

    # -- news ------------------------------------------------------------------------------------

    def heartbeat(self, service: str, instance_id: str, now_ms: int, wall_ms: int) -> Transition | None:
        """A TTL renewal reached the leader. Returns the transition to passing if it was critical
        (or about to be: a TTL expiry still in flight)."""
        key = (service, instance_id)
        entry = self._entries.get(key)
        if not self.leading or entry is None or not entry.ttl_ms:
            return None
        entry.renewed_ms = now_ms
        expiring = entry.inflight is not None and entry.inflight[0] is HealthStatus.CRITICAL
        if entry.status is HealthStatus.CRITICAL or expiring:
            entry.observed = HealthStatus.PASSING
            return self._emit(key, entry, HealthStatus.PASSING, now_ms, wall_ms, "renewed")
        self._reschedule(key, entry)
        return None

    def probe_report(self, service: str, instance_id: str, revision: int, status: HealthStatus, output: str,
                     now_ms: int, wall_ms: int) -> Transition | None:
        """The prober's thresholds reached ``status`` for this revision."""
        key = (service, instance_id)
        entry = self._entries.get(key)
        if not self.leading or entry is None or entry.revision != revision:
            return None
        if entry.status is status:
            entry.observed = None
            self._reschedule(key, entry)
            return None
        entry.observed = status
        return self._emit(key, entry, status, now_ms, wall_ms, output)

    def due(self, now_ms: int, wall_ms: int) -> list[Transition]:
        """The transitions whose time has come: TTL expiries, deregister-after expiries, and
        retries of transitions that were not seen applied."""
        out: list[Transition] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            _, generation, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is None or entry.generation != generation:
                continue  # stale: replaced by a later deadline or gone
            transition = self._decide(key, entry, now_ms, wall_ms)
            if transition is not None:
                out.append(transition)
            else:
                self._reschedule(key, entry)
        return out

    # -- internals -------------------------------------------------------------------------------

    def _decide(self, key: Key, entry: _Entry, now_ms: int, wall_ms: int) -> Transition | None:
        if entry.inflight is not None and now_ms < entry.inflight[1]:
            return None
        if entry.observed is not None and entry.observed is not entry.status:
            return self._emit(key, entry, entry.observed, now_ms, wall_ms, "retried")
        if entry.status is HealthStatus.PASSING:
            if entry.ttl_ms and now_ms >= entry.renewed_ms + entry.ttl_ms:
                entry.observed = HealthStatus.CRITICAL
                return self._emit(key, entry, HealthStatus.CRITICAL, now_ms, wall_ms,
                                  f"TTL of {_duration(entry.ttl_ms)} expired")
        elif entry.deregister_after_ms and now_ms >= entry.critical_ms + entry.deregister_after_ms:
            return self._emit(key, entry, None, now_ms, wall_ms,
                              f"critical for {_duration(entry.deregister_after_ms)}")
        return None

    def _deadline(self, entry: _Entry) -> int | None:
        """The next moment ``due`` has something to decide for this entry."""
        if entry.inflight is not None:
            return entry.inflight[1]
        if entry.observed is not None and entry.observed is not entry.status:
            return 0  # at once: a transition to retry
        if entry.status is HealthStatus.PASSING:
            return entry.renewed_ms + entry.ttl_ms if entry.ttl_ms else None
        return entry.critical_ms + entry.deregister_after_ms if entry.deregister_after_ms else None

    def _track(self, instance: Instance, now_ms: int) -> None:
        check = instance.check
        assert check is not None
        key = (instance.service, instance.id)
        entry = _Entry(instance.revision, instance.status, check.ttl_ms if check.kind is CheckKind.TTL else 0,
                       check.deregister_after_ms, renewed_ms=now_ms, critical_ms=now_ms)
        self._entries[key] = entry
        self._reschedule(key, entry)

    def _reschedule(self, key: Key, entry: _Entry) -> None:
        entry.generation += 1
        deadline = self._deadline(entry)
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, entry.generation, key))

    def _emit(self, key: Key, entry: _Entry, target: HealthStatus | None, now_ms: int, wall_ms: int,
              output: str) -> Transition | None:
        if entry.inflight is not None and entry.inflight[0] is target and now_ms < entry.inflight[1]:
            return None
        entry.inflight = (target, now_ms + self._retry_ms)
        self._reschedule(key, entry)  # look again at the retry time, in case it never commits
        self.emitted += 1
        return Transition(key[0], key[1], entry.revision, target, remove=target is None, output=output,
                          at_ms=wall_ms)


def _duration(ms: int) -> str:
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    if ms % 1000 == 0:
        return f"{ms // 1000} s"
    return f"{ms} ms"
