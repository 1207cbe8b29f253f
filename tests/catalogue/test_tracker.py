"""The leader's health bookkeeping (registry/catalogue/tracker.py): TTL and deregister-after
clocks, election restarts, in-flight transitions, revisions. Pure: time is passed in."""

from __future__ import annotations

import dataclasses

from registry.catalogue.model import Check, CheckKind, HealthStatus, Instance
from registry.catalogue.tracker import RETRY_MS, HealthTracker, Transition

PASSING, CRITICAL = HealthStatus.PASSING, HealthStatus.CRITICAL
TTL = Check(CheckKind.TTL, ttl_ms=10_000)
TTL_DEREG = Check(CheckKind.TTL, ttl_ms=10_000, deregister_after_ms=60_000)
TCP = Check(CheckKind.TCP, interval_ms=1000, timeout_ms=1000)


class FakeView:
    """The three methods the tracker reads, over a dict."""

    def __init__(self, *instances: Instance) -> None:
        self.by_key = {(i.service, i.id): i for i in instances}

    def instance(self, service: str, instance_id: str) -> Instance | None:
        return self.by_key.get((service, instance_id))

    def service_names(self) -> tuple[str, ...]:
        return tuple(sorted({s for s, _ in self.by_key}))

    def instances(self, service: str, tag: str | None = None) -> tuple[Instance, ...]:
        return tuple(i for (s, _), i in sorted(self.by_key.items()) if s == service)

    def put(self, instance: Instance) -> tuple[tuple[str, str], ...]:
        self.by_key[(instance.service, instance.id)] = instance
        return ((instance.service, instance.id),)


def inst(iid: str = "a", check: Check | None = TTL, status: HealthStatus = PASSING, revision: int = 1) -> Instance:
    return Instance(iid, "web", "10.0.0.1", 80, check=check, status=status, revision=revision)


def leader(*instances: Instance, now: int = 0) -> tuple[HealthTracker, FakeView]:
    view = FakeView(*instances)
    tracker = HealthTracker()
    tracker.lead(view, now)
    return tracker, view


def test_a_ttl_instance_not_renewed_turns_critical_once() -> None:
    """Silence for the TTL gives one transition to critical, not one per tick."""
    tracker, _ = leader(inst())
    assert tracker.due(9_999, 0) == []
    [t] = tracker.due(10_000, 123)
    assert t == Transition("web", "a", 1, CRITICAL, output="TTL of 10 s expired", at_ms=123)
    assert tracker.due(10_050, 0) == [] and tracker.due(15_000, 0) == []


def test_renewals_within_the_ttl_never_expire() -> None:
    tracker, _ = leader(inst())
    for now in range(0, 100_000, 9_000):
        assert tracker.heartbeat("web", "a", now, 0) is None
        assert tracker.due(now + 8_999, 0) == []


def test_a_new_leader_restarts_every_clock_from_its_election() -> None:
    """No mass expiry after a leader change: silence before the election does not count (etcd leases)."""
    tracker, _ = leader(inst("a"), inst("b"), now=50_000)
    assert tracker.due(59_999, 0) == []
    assert {t.instance_id for t in tracker.due(60_000, 0)} == {"a", "b"}


def test_a_renewal_of_a_critical_instance_turns_it_passing() -> None:
    tracker, view = leader(inst(status=CRITICAL))
    t = tracker.heartbeat("web", "a", 100, 7)
    assert t is not None and t.status is PASSING and t.at_ms == 7
    tracker.on_touched(view, view.put(inst(status=PASSING)), 120)
    assert tracker.due(10_099, 0) == []  # the TTL runs from the renewal, not from the commit
    assert [t.status for t in tracker.due(10_100, 0)] == [CRITICAL]


def test_a_renewal_while_the_expiry_is_in_flight_wins() -> None:
    """The expiry was proposed, then a heartbeat came: passing is proposed, and after both apply
    the instance is passing."""
    tracker, view = leader(inst())
    [expiry] = tracker.due(10_000, 0)
    again = tracker.heartbeat("web", "a", 10_010, 0)
    assert expiry.status is CRITICAL and again is not None and again.status is PASSING
    tracker.on_touched(view, view.put(inst(status=CRITICAL)), 10_020)
    tracker.on_touched(view, view.put(inst(status=PASSING)), 10_030)
    assert tracker.due(10_030 + 9_000, 0) == []


def test_a_transition_not_seen_applied_is_retried_after_the_retry_time() -> None:
    tracker, _ = leader(inst())
    [first] = tracker.due(10_000, 0)
    assert tracker.due(10_000 + RETRY_MS - 1, 0) == []
    [second] = tracker.due(10_000 + RETRY_MS, 0)
    assert first.status is second.status is CRITICAL


def test_a_critical_instance_is_removed_after_deregister_after() -> None:
    tracker, view = leader(inst(check=TTL_DEREG))
    [t] = tracker.due(10_000, 0)
    tracker.on_touched(view, view.put(inst(check=TTL_DEREG, status=CRITICAL)), 10_100)
    assert tracker.due(70_099, 0) == []
    [removal] = tracker.due(70_100, 0)
    assert removal.remove and removal.status is None and removal.revision == 1
    del view.by_key[("web", "a")]
    tracker.on_touched(view, (("web", "a"),), 70_200)
    assert len(tracker) == 0 and tracker.due(10**9, 0) == []


def test_news_of_an_older_revision_changes_nothing() -> None:
    """A re-registration (new revision) restarts the clock; a probe report for the old one is ignored."""
    tracker, view = leader(inst("p", check=TCP, revision=1))
    tracker.on_touched(view, view.put(inst("p", check=TCP, revision=5)), 100)
    assert tracker.probe_report("web", "p", 1, CRITICAL, "refused", 200, 0) is None
    t = tracker.probe_report("web", "p", 5, CRITICAL, "refused", 200, 0)
    assert t is not None and t.revision == 5 and t.output == "refused"


def test_a_probe_transition_that_is_lost_is_proposed_again() -> None:
    tracker, _ = leader(inst("p", check=TCP))
    assert tracker.probe_report("web", "p", 1, CRITICAL, "refused", 0, 0) is not None
    [retry] = tracker.due(RETRY_MS, 0)
    assert retry.status is CRITICAL
    # The prober now says passing again before anything applied: the newest news wins.
    t = tracker.probe_report("web", "p", 1, PASSING, "ok", RETRY_MS + 1, 0)
    assert t is None  # the catalogue already says passing


def test_a_follower_tracks_nothing() -> None:
    tracker, view = leader(inst())
    tracker.step_down()
    assert tracker.heartbeat("web", "a", 0, 0) is None and tracker.due(10**9, 0) == []
    tracker.on_touched(view, view.put(dataclasses.replace(inst(), revision=2)), 0)
    assert len(tracker) == 0


def test_deregistered_or_unchecked_instances_are_forgotten() -> None:
    tracker, view = leader(inst("a"), inst("b", check=None))
    assert len(tracker) == 1
    tracker.on_touched(view, view.put(inst("a", check=None, revision=2)), 0)
    assert len(tracker) == 0 and tracker.due(10**9, 0) == []
