"""The node's health room: TTL heartbeats, the prober, and the transitions the leader proposes.

Only the leader acts. It keeps a ``HealthTracker`` (TTL and deregister-after clocks, restarted
at its election) and feeds the prober child the active checks; heartbeats and probe results
stay in memory, and only transitions become log entries, proposed through ``Requests`` under
the internal client id ``~health`` (docs/health.md). Renewals reach it through the renewals
room (``renewals.Renewals``), which relays a follower's to the leader: no Raft write, no fsync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from registry.catalogue import (
    ALL_TOUCHED,
    HEALTH_CLIENT_ID,
    Applied,
    Deregister,
    Request,
    SetHealth,
    encode_request,
    health_seq,
)
from registry.catalogue.tracker import HealthTracker, Transition
from registry.health import ProbeReport, Prober, probe_spec
from registry.raft import RawNode, Role

from .replica import Replica
from .requests import Requests

#: A gap this long between two ticks means this process stood still (SIGSTOP, a swapped-out or
#: starved machine): renewals may be waiting unread, so every clock restarts as at an election.
STALL_S = 1.0


class HealthRoom:
    """Invariant: the tracker leads and the prober probes exactly while this node is leader."""

    def __init__(self, *, raw: RawNode, replica: Replica, requests: Requests, prober: Prober | None,
                 log: logging.LoggerAdapter,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._raw = raw
        self._replica = replica
        self._requests = requests
        self.prober = prober
        self._log = log
        self._clock = clock
        self._wall = wall
        self.tracker = HealthTracker()
        self._term = 0
        self._seq = 0
        self._last_tick: float | None = None
        self.stalls = 0
        # Invariant: the (service, id) of every instance of the replica that has a check, on every
        # node, kept per applied entry: a new leader starts its clocks in O(checked instances),
        # never O(catalogue) on its loop (that stalled leaders past an election timeout).
        self._checked: set[tuple[str, str]] = set()
        self.rebuild()
        self.heartbeats = 0  # renewals the tracker took as leader
        self.proposed = 0

    # -- leadership ------------------------------------------------------------------------------

    def on_role(self, role: Role, term: int, now: float) -> None:
        leading = role is Role.LEADER
        if leading and not self.tracker.leading:
            self._term, self._seq = term, 0
            self._lead(now)
            self._log.info("health: tracking %d checked instances from this election on", len(self.tracker))
        elif not leading and self.tracker.leading:
            self.tracker.step_down()
            if self.prober is not None:
                self.prober.clear()

    def rebuild(self) -> None:
        """Index the checked instances of the whole replica: at start and after it was replaced
        (a snapshot installed or restored). O(catalogue), off the hot path."""
        view = self._replica.view
        self._checked = {(i.service, i.id) for name in view.service_names() for i in view.instances(name)
                         if i.check is not None}

    def _lead(self, now: float) -> None:
        view = self._replica.view
        self.tracker.lead(view, _ms(now), self._checked)
        if self.prober is not None:
            self.prober.replace([spec for key in self._checked if (i := view.instance(*key)) is not None
                                 and (spec := probe_spec(i)) is not None])

    # -- the catalogue moved ---------------------------------------------------------------------

    def on_applied(self, applied: list[Applied], now: float) -> None:
        keys: list[tuple[str, str]] = []
        view = self._replica.view
        for a in applied:
            if a.touched is ALL_TOUCHED:  # a restore replaced everything
                self.rebuild()
                if self.tracker.leading:
                    self._lead(now)
                keys.clear()
                continue
            keys.extend(a.touched)
        for key in keys:
            instance = view.instance(*key)
            if instance is not None and instance.check is not None:
                self._checked.add(key)
            else:
                self._checked.discard(key)
        if not keys or not self.tracker.leading:
            return
        self.tracker.on_touched(view, tuple(keys), _ms(now))
        if self.prober is not None:
            upsert, remove = [], []
            for key in keys:
                instance = view.instance(*key)
                spec = probe_spec(instance) if instance is not None else None
                if spec is None:
                    remove.append(key)
                else:
                    upsert.append(spec)
            self.prober.update(upsert, remove)

    # -- news ------------------------------------------------------------------------------------

    def renew(self, service: str, instance_id: str, now: float) -> bool:
        """A TTL renewal whose instance was confirmed in committed state (registry/node/renewals.py);
        returns whether this node's tracker took it (it leads)."""
        if not self.tracker.leading:
            return False
        self.heartbeats += 1
        self._propose(self.tracker.heartbeat(service, instance_id, _ms(now), _ms(self._wall())), now)
        return True

    def on_prober_readable(self, now: float) -> None:
        if self.prober is None:
            return
        reports: list[ProbeReport] = self.prober.drain()
        wall_ms = _ms(self._wall())
        for r in reports:
            self._propose(self.tracker.probe_report(r.service, r.instance_id, r.revision, r.status, r.output,
                                                    _ms(now), wall_ms), now)

    def tick(self, now: float) -> None:
        last, self._last_tick = self._last_tick, now
        if not self.tracker.leading:
            return
        if last is not None and now - last > STALL_S:
            # NB: a paused leader wakes still leading, with renewals unread in its sockets; it never
            # expires an instance for silence it could not hear (the same rule as an election).
            self.stalls += 1
            self._log.warning("health: the loop stood still %.1f s; restarting every TTL clock", now - last)
            self._lead(now)
            return
        for transition in self.tracker.due(_ms(now), _ms(self._wall())):
            self._propose(transition, now)

    # -- proposals -------------------------------------------------------------------------------

    def _propose(self, transition: Transition | None, now: float) -> None:
        if transition is None:
            return
        command: SetHealth | Deregister
        if transition.remove:
            command = Deregister(transition.service, instance_id=transition.instance_id,
                                 revision=transition.revision)
        else:
            assert transition.status is not None
            command = SetHealth(transition.service, transition.instance_id, transition.revision,
                                transition.status, transition.at_ms, transition.output)
        self._seq += 1
        seq = health_seq(self._term, self._seq)  # rises across leaders too (catalogue/health.py)
        data = encode_request(Request(HEALTH_CLIENT_ID, seq, command))
        self._requests.write(None, (HEALTH_CLIENT_ID, seq), data, now)
        self.proposed += 1
        self._log.info("health: %s/%s %s (%s)", transition.service, transition.instance_id,
                       "expired: deregistering" if transition.remove else f"-> {transition.status.value}",
                       transition.output)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"leading": self.tracker.leading, "tracked": len(self.tracker),
                               "heartbeats": self.heartbeats, "transitions_proposed": self.proposed,
                               "stalls": self.stalls}
        if self.prober is not None:
            out["prober"] = self.prober.stats()
        return out


def _ms(seconds: float) -> int:
    return int(seconds * 1000)

