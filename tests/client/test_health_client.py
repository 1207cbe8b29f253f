"""registry.client's health side against fake nodes: a register's check, the ``pass`` op
(``heartbeat``), the health fields of ``services`` replies (and their absence in older nodes'
replies), and ``keepalive``'s pacing, state changes and refusal to outlive a deregistration."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from registry.catalogue.model import Check, CheckKind
from registry.client import (
    CheckInfo,
    Client,
    Heartbeat,
    InstanceInfo,
    KeepaliveState,
    NotFound,
    ValidationFailed,
)

from .fake_server import CatalogueNode, FakeServer, answering, error, ok, silent

ATTEMPT_S = 0.2
LOADED_S = 5.0  # what a busy 2-core CI machine can add to a wait


def client_for(*servers: FakeServer, timeout_s: float = 3.0) -> Client:
    return Client([s.address for s in servers], timeout_s=timeout_s, attempt_timeout_s=ATTEMPT_S)


TTL_MAP = {"kind": "ttl", "ttl_ms": 10_000, "url": "", "interval_ms": 0, "timeout_ms": 0, "failures": 3,
           "successes": 2, "deregister_after_ms": 300_000}
HTTP_MAP = {"kind": "http", "ttl_ms": 0, "url": "http://10.0.0.5:8080/health", "interval_ms": 1000,
            "timeout_ms": 500, "failures": 3, "successes": 2, "deregister_after_ms": 0}


# -- register's check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "sent"),
    [
        ({"kind": "ttl", "ttl_ms": 10_000, "deregister_after_ms": 300_000}, TTL_MAP),
        (Check(CheckKind.TTL, ttl_ms=10_000, deregister_after_ms=300_000), TTL_MAP),
        (CheckInfo("http", url="http://10.0.0.5:8080/health", interval_ms=1000, timeout_ms=500), HTTP_MAP),
    ],
    ids=["map", "model-check", "check-info"],
)
def test_register_sends_the_check_as_the_protocol_map(fake, check: Any, sent: dict[str, Any]) -> None:
    """A check given as a map, a catalogue Check or a CheckInfo goes out as the full protocol map
    (every key, absent ones with their defaults); the result's instance carries it."""
    server = fake()
    with client_for(server) as client:
        got = client.register("web", "10.0.0.5", 8080, check=check)
    [request] = server.received()
    assert request["args"]["check"] == sent
    assert got.instance is not None and got.instance.check == CheckInfo(**sent)


def test_register_without_a_check_sends_the_same_request_as_before(fake) -> None:
    """No check: no ``check`` key at all, so an older node sees exactly the old request."""
    server = fake()
    with client_for(server) as client:
        client.register("web", "10.0.0.5", 8080)
    assert "check" not in server.received()[0]["args"]


@pytest.mark.parametrize(
    ("check", "says"),
    [
        ({"kind": "grpc"}, "use 'ttl', 'tcp' or 'http'"),
        ({"kind": "ttl", "ttl_ms": 500}, "ttl_ms 500: use an integer number of milliseconds from 1000 ms"),
        ({"kind": "tcp", "interval_ms": 1000, "timeout_ms": 2000}, "(at most the interval)"),
        ({"kind": "http", "url": "https://x:1/", "interval_ms": 1000, "timeout_ms": 100}, "only http:// is supported"),
        ({"kind": "ttl", "ttl_ms": 10_000, "deregister_after_ms": 1000}, "deregister_after_ms 1000"),
        ({"kind": "ttl", "ttl_ms": 10_000, "every": 1}, r"check has unknown keys \['every'\]"),
        ("ttl", "must be a map or a Check"),
    ],
)
def test_a_bad_check_fails_before_any_network_traffic(fake, check: Any, says: str) -> None:
    """The catalogue's rules refuse a bad check in the client, naming the field and what is
    accepted; nothing is sent."""
    server = fake()
    with client_for(server) as client, pytest.raises(ValidationFailed, match=says) as caught:
        client.register("web", "10.0.0.5", 8080, check=check)
    assert caught.value.field == "check" and caught.value.code is None
    assert server.received() == []


# -- pass (heartbeat) -------------------------------------------------------------------------


def test_heartbeat_sends_the_pass_op_and_parses_its_reply(fake) -> None:
    """``heartbeat`` (alias ``pass_``) is the read-like op ``pass`` with instance_id and, if
    given, service; it carries no client id or seq."""
    node = CatalogueNode()
    server = fake(node)
    with client_for(server) as client:
        reg = client.register("web", "10.0.0.5", 8080, id="w1", check={"kind": "ttl", "ttl_ms": 3000})
        assert client.heartbeat("w1") == Heartbeat("web", "w1", "passing", reg.index)
        node.set_status("web", "w1", "critical")
        assert client.pass_("w1", service="WEB").status == "critical"
    first, second = [r["args"] for r in server.received()[1:]]
    assert first == {"instance_id": "w1"} and second == {"instance_id": "w1", "service": "web"}


def test_heartbeat_of_a_gone_instance_raises_not_found_and_an_ambiguous_id_invalid(fake) -> None:
    """``not_found`` (deregistered or expired) is NotFound; an id in two services without
    ``service`` is the node's ``invalid``, naming the services."""
    node = CatalogueNode()
    with client_for(fake(node)) as client:
        with pytest.raises(NotFound, match="deregistered or expired"):
            client.heartbeat("nope")
        client.register("web", "10.0.0.5", 8080, id="x")
        client.register("api", "10.0.0.5", 8081, id="x")
        with pytest.raises(ValidationFailed, match="api, web") as caught:
            client.heartbeat("x")
        assert caught.value.code == "invalid"
        assert client.heartbeat("x", "api").service == "api"


def test_heartbeat_checks_its_arguments_before_sending(fake) -> None:
    server = fake()
    with client_for(server) as client:
        with pytest.raises(ValidationFailed) as caught:
            client.heartbeat("a:b")
        assert caught.value.field == "instance_id"
        with pytest.raises(ValidationFailed) as caught:
            client.heartbeat("a", service="-bad")
        assert caught.value.field == "service"
    assert server.received() == []


# -- services' health fields ------------------------------------------------------------------


def test_services_carries_every_health_field(fake) -> None:
    """status, since_ms, check, revision and output are parsed from a reply of this version."""
    node = CatalogueNode(now_ms=1_700_000_123_456)
    with client_for(fake(node)) as client:
        reg = client.register("web", "10.0.0.5", 8080, id="w1", check=HTTP_MAP)
        node.set_status("web", "w1", "critical", output="HTTP 500")
        [got] = client.services("web")["web"]
    assert got == InstanceInfo("w1", "10.0.0.5", 8080, (), {}, status="critical", since_ms=1_700_000_123_456,
                               check=CheckInfo(**HTTP_MAP), revision=reg.index, output="HTTP 500")
    assert not got.serving


def test_an_older_nodes_services_reply_gets_the_defaults(fake) -> None:
    """A reply without the health fields (a node of the previous version) reads as passing,
    no check, revision and since 0: the client keeps working during a rolling upgrade."""
    with client_for(fake(answering)) as client:
        [got] = client.services("web")["web"]
    assert (got.status, got.since_ms, got.check, got.revision, got.output) == ("passing", 0, None, 0, "")
    assert got.serving


def test_a_malformed_health_field_is_a_failed_attempt(fake) -> None:
    """A status that is not a string is a malformed reply, not a crash (tried elsewhere)."""
    def handler(request: dict[str, Any]) -> dict[str, Any]:
        web = [{"id": "w", "address": "10.0.0.5", "port": 1, "tags": [], "meta": {}, "status": 3}]
        return ok({"index": 1, "services": {"web": web}})

    with client_for(fake(handler), timeout_s=0.5) as client, pytest.raises(Exception, match="status is not a string"):
        client.services()


# -- keepalive --------------------------------------------------------------------------------


class StopAfter:
    """A keepalive ``wait``: sleeps as asked, and says stop once ``beats`` heartbeats were made
    (counted by the node); records every wait it was asked for, and runs ``after[n]()`` once the
    n-th heartbeat was made."""

    def __init__(self, node: CatalogueNode, beats: int, after: dict[int, Any] | None = None) -> None:
        self.node, self.beats, self.after = node, beats, dict(after or {})
        self.waits: list[float] = []
        self._event = threading.Event()

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if (then := self.after.pop(len(self.node.beats), None)) is not None:
            then()
        if len(self.node.beats) >= self.beats:
            return True
        return self._event.wait(seconds)


def test_keepalive_renews_every_third_of_the_ttl_and_reports_only_changes(fake) -> None:
    """With a 1.5 s TTL the heartbeats come every 0.5 s (each period measured from the start of
    the previous one); the states yielded are the changes only: passing, then critical."""
    node = CatalogueNode()
    with client_for(fake(node)) as client:
        client.register("web", "10.0.0.5", 8080, id="w1", check={"kind": "ttl", "ttl_ms": 1500})
        wait = StopAfter(node, beats=5, after={2: lambda: node.set_status("web", "w1", "critical")})
        states = [state.state for state in client.keepalive("w1", 1500, service="web", wait=wait)]
    assert states == ["passing", "critical"]
    assert len(node.beats) == 5
    gaps = [b - a for a, b in zip(node.beats, node.beats[1:])]
    assert all(0.5 - 0.05 <= gap < 0.5 + LOADED_S for gap in gaps), gaps
    assert all(0 < w <= 0.5 for w in wait.waits), "waits are what is left of each period"


def test_keepalive_raises_not_found_and_never_registers_again(fake) -> None:
    """Deregistered by someone else while the keepalive runs: the next heartbeat's
    ``not_found`` ends it with NotFound, and no register is ever sent after the first."""
    node = CatalogueNode()
    server = fake(node)
    with client_for(server) as client:
        client.register("web", "10.0.0.5", 8080, id="w1", check={"kind": "ttl", "ttl_ms": 1500})
        states = []
        with pytest.raises(NotFound):
            for state in client.keepalive("w1", 1500, wait=StopAfter(node, beats=100)):
                states.append(state.state)
                node.remove("web", "w1")
    assert states == ["passing"]
    ops = [r["op"] for r in server.received()]
    assert ops == ["register", "pass", "pass"], ops


def test_keepalive_rides_out_an_unreachable_cluster(fake) -> None:
    """A heartbeat that gets no answer (every node silent or saying no_leader) reports
    "unreachable" once with the reason, and keeps trying; when the cluster answers again it
    reports "passing". Each failing heartbeat is bounded by the period, not the client's
    timeout, so the TTL is never left to run out unseen."""
    node = CatalogueNode()
    outage = threading.Event()
    outage.set()

    def flaky(request: dict[str, Any]) -> Any:
        if request["op"] == "pass" and outage.is_set():
            return error("no_leader", "no leader could be reached")
        return node(request)

    server = fake(flaky)
    with Client([server.address], timeout_s=30.0) as client:
        client.register("web", "10.0.0.5", 8080, id="w1", check={"kind": "ttl", "ttl_ms": 1500})
        seen: list[KeepaliveState] = []
        started = time.monotonic()
        for state in client.keepalive("w1", 1500, wait=StopAfter(node, beats=2)):
            seen.append(state)
            if state.state == "unreachable":
                assert time.monotonic() - started < 0.5 + LOADED_S, "a failing heartbeat outlived its period"
                outage.clear()
    assert [s.state for s in seen] == ["unreachable", "passing"]
    assert seen[0].error is not None and "no_leader" in str(seen[0].error)
    assert len([r for r in server.received() if r["op"] == "pass"]) >= 3


def test_keepalive_ends_when_wait_says_stop(fake) -> None:
    """A ``wait`` that returns True (e.g. an Event set by a signal handler) ends the iterator
    cleanly after the heartbeat in progress."""
    node = CatalogueNode()
    stop = threading.Event()
    stop.set()
    with client_for(fake(node)) as client:
        client.register("web", "10.0.0.5", 8080, id="w1", check={"kind": "ttl", "ttl_ms": 60_000})
        started = time.monotonic()
        assert [s.state for s in client.keepalive("w1", 60_000, wait=stop.wait)] == ["passing"]
        assert time.monotonic() - started < LOADED_S, "waited out a 20 s period"


def test_keepalive_refuses_a_bad_ttl_before_sending(fake) -> None:
    server = fake(silent)
    with client_for(server) as client:
        for bad in (0, -5, 1.5, True):
            with pytest.raises(ValidationFailed, match="ttl_ms must be a positive integer"):
                next(client.keepalive("w1", bad))  # type: ignore[arg-type]
    assert server.received() == []
