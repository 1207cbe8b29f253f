"""registry.client.Client against fake nodes (real ZeroMQ ROUTERs on 127.0.0.1, in threads).

What is tested is the client's own logic: the requests it sends (docs/client-protocol.md), the
retries (another server, the same client id and seq), the deadlines, the mapping of error codes to
exceptions, and validation before any network traffic. Every wait is bounded by the client's
timeouts, which the tests keep short.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from registry.client import (
    DEFAULT_SERVERS,
    Client,
    Deregistration,
    InstanceInfo,
    NodeStatus,
    NotFound,
    PeerStatus,
    Registration,
    RegistryError,
    Services,
    Unavailable,
    ValidationFailed,
    looks_like_hostport,
    resolve_servers,
    unresolvable,
)

from .fake_server import STATUS, FakeServer, answering, error, ok, silent, unused_address

# Short attempt timeouts keep the suite fast where a test must wait one out. A test that proves
# the client did NOT wait for a timeout sets that timeout LONG (LONG_S) and checks the call took
# well under it, so that scheduling delays on a loaded machine cannot fail it. A call that must end
# at its deadline may end later by at most LOADED_S: what a busy 2-core CI machine can add.
ATTEMPT_S = 0.2
LONG_S = 30.0
LOADED_S = 5.0


def client_for(*servers: FakeServer | str, timeout_s: float = 3.0, **kwargs: Any) -> Client:
    addresses = [s if isinstance(s, str) else s.address for s in servers]
    return Client(addresses, timeout_s=timeout_s, attempt_timeout_s=ATTEMPT_S, **kwargs)


def code_then(code: str, then: Any = answering) -> Any:
    """A handler that answers the first request with error `code`, and later ones with `then`."""
    seen: list[int] = []

    def handler(request: dict[str, Any]) -> Any:
        seen.append(1)
        return error(code, f"{code} from the fake") if len(seen) == 1 else then(request)

    return handler


# -- requests on the wire ---------------------------------------------------------------------


def test_register_sends_the_documented_request(fake) -> None:
    """A register is one msgpack map: v=1, an integer id, op, and args with client, seq,
    service, address, port, instance_id (nil by default), tags (list) and meta (map)."""
    server = fake()
    with client_for(server, client_id="c-1") as client:
        got = client.register("web", "10.0.0.5", 8080, tags=("blue", "v2"), meta={"zone": "a"})
    assert got == Registration(instance_id="web-1", created=True, index=42,
                               instance=InstanceInfo("web-1", "10.0.0.5", 8080, ("blue", "v2"), {"zone": "a"}))
    [request] = server.received()
    assert request["v"] == 1 and request["op"] == "register"
    assert type(request["id"]) is int and 0 <= request["id"] < 2**63
    assert request["args"] == {
        "client": "c-1", "seq": 1, "service": "web", "address": "10.0.0.5", "port": 8080,
        "instance_id": None, "tags": ["blue", "v2"], "meta": {"zone": "a"},
    }  # fmt: skip


def test_seq_increases_by_one_per_write_and_reads_carry_none(fake) -> None:
    """Each new write takes the next seq; reads carry no client or seq."""
    server = fake()
    with client_for(server) as client:
        client.register("web", "10.0.0.5", 8080, id="a")
        client.services()
        client.deregister("web", "a")
        client.status()
        client.register("web", "10.0.0.6", 8080)
    requests = server.received()
    assert [r["op"] for r in requests] == ["register", "services", "deregister", "status", "register"]
    assert [r["args"].get("seq") for r in requests] == [1, None, 2, None, 3]
    assert {r["args"]["client"] for r in requests if "seq" in r["args"]} == {client.client_id}
    assert len({r["id"] for r in requests}) == len(requests), "request ids are unique"
    assert requests[1]["args"] == {"service": None, "stale": False}
    assert requests[3]["args"] == {}


def test_every_client_has_its_own_random_id() -> None:
    """Client ids default to a fresh uuid4 hex; a given one must be 1-64 characters."""
    a, b = Client(["127.0.0.1:1"]), Client(["127.0.0.1:1"])
    assert a.client_id != b.client_id and len(a.client_id) == 32
    assert Client(["127.0.0.1:1"], client_id="mine").client_id == "mine"
    for bad in ("", "x" * 65):
        with pytest.raises(ValidationFailed):
            Client(["127.0.0.1:1"], client_id=bad)


# -- retries ----------------------------------------------------------------------------------


def test_a_silent_server_is_retried_on_the_next_with_the_same_client_and_seq(fake) -> None:
    """When the first server does not answer within the attempt timeout, the same write goes to
    the next server with the same client id and seq, and the call ends in bounded time."""
    mute, good = fake(silent), fake()
    with client_for(mute, good, timeout_s=LONG_S) as client:
        started = time.monotonic()
        got = client.register("web", "10.0.0.5", 8080)
        elapsed = time.monotonic() - started
    assert got.index == 42
    assert ATTEMPT_S <= elapsed < LONG_S / 2, "waited the attempt timeout, not the call's"
    [first], [second] = mute.received(), good.received()
    assert (first["args"]["client"], first["args"]["seq"]) == (client.client_id, 1)
    assert second["args"] == first["args"], "a retry is the same write"
    assert second["id"] != first["id"], "each attempt has its own request id"


def test_a_server_that_refuses_connections_is_skipped_at_once(fake) -> None:
    """Nothing listening on the first address: the connection is refused, and the client moves
    on without waiting for the attempt timeout."""
    good = fake()
    with Client([unused_address(), good.address], timeout_s=2 * LONG_S, attempt_timeout_s=LONG_S) as client:
        started = time.monotonic()
        assert client.services("web")["web"][0].id == "web-1"
        assert time.monotonic() - started < LONG_S / 2, "waited for the attempt timeout"
        # A later call that meets it again (a new round) moves on at once too.
        client._preferred = 0
        started = time.monotonic()
        client.status()
        assert time.monotonic() - started < LONG_S / 2, "waited for the attempt timeout"


def test_a_server_that_dies_during_a_write_is_skipped_at_once(fake) -> None:
    """A server whose connection drops while a write is outstanding (kill -9) is not waited
    for: the same write goes to the next server at once."""
    dying, good = fake(crash_on_request=True), fake()
    with Client([dying.address, good.address], timeout_s=2 * LONG_S, attempt_timeout_s=LONG_S) as client:
        started = time.monotonic()
        assert client.register("web", "10.0.0.5", 8080).index == 42
        assert time.monotonic() - started < LONG_S / 2, "waited for the attempt timeout"
    assert good.received()[0]["args"] == dying.received()[0]["args"]


def test_every_server_refusing_ends_at_the_deadline_without_spinning() -> None:
    """With every server down, rounds continue (with a backoff) until the deadline, and the
    error says the servers cannot be reached."""
    with Client([unused_address(), unused_address()], timeout_s=0.6) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="connection refused") as caught:
            client.status()
        assert 0.6 <= time.monotonic() - started < 0.6 + LOADED_S
    assert 2 <= len(caught.value.tried) and "attempts" in str(caught.value)
    assert "lost its quorum" not in str(caught.value), "no node answered: maybe starting, not a lost quorum"


def test_sockets_are_reopened_cleanly_many_times(fake) -> None:
    """Calls that give up on a silent server close its socket (and monitor) and reopen them
    next time; many such cycles, and many clients, leak nothing and keep working."""
    mute, good = fake(silent), fake()
    with Client([mute.address], timeout_s=0.03) as client:
        for _ in range(50):
            with pytest.raises(Unavailable):
                client.status()
            assert client._sockets == [None] and client._monitors == [None]
    for _ in range(50):
        with client_for(good) as client:
            client.status()


@pytest.mark.parametrize("code", ["timeout", "no_leader", "stopping"])
def test_retryable_codes_go_to_the_next_server_at_once_with_the_same_seq(fake, code: str) -> None:
    """`timeout`, `no_leader` and `stopping` send the same write to the next server at once."""
    busy, good = fake(code_then(code)), fake()
    with Client([busy.address, good.address], timeout_s=2 * LONG_S, attempt_timeout_s=LONG_S) as client:
        started = time.monotonic()
        client.register("web", "10.0.0.5", 8080)
        assert time.monotonic() - started < LONG_S / 2, "an error reply is not waited out"
        client.register("web", "10.0.0.6", 8080)
    [first] = busy.received()
    second, third = good.received()
    assert second["args"] == first["args"]
    assert third["args"]["seq"] == first["args"]["seq"] + 1, "a new write takes the next seq"


def test_a_late_answer_from_an_earlier_server_is_accepted(fake) -> None:
    """After moving on, the client still listens to the server it gave up on: its late answer
    (to the same write) ends the call."""
    slow, mute = fake(delay_s=3 * ATTEMPT_S), fake(silent)
    with client_for(slow, mute, timeout_s=LONG_S) as client:
        started = time.monotonic()
        assert client.register("web", "10.0.0.5", 8080).index == 42
        assert 3 * ATTEMPT_S <= time.monotonic() - started < LONG_S / 2, "the late answer ended the call"
    assert mute.received()[0]["args"] == slow.received()[0]["args"]


def test_the_next_call_starts_at_the_server_that_answered(fake) -> None:
    """A server that did not answer is not asked first again: the next call goes straight to
    the one that answered (the silent server gets no second request)."""
    mute, good = fake(silent), fake()
    with client_for(mute, good) as client:
        client.status()
        client.status()
    assert len(mute.received()) == 1 and len(good.received()) == 2


def test_no_answer_anywhere_raises_unavailable_at_the_deadline(fake) -> None:
    """If no server answers, Unavailable comes at timeout_s (not before, not much after) and
    names the servers tried and the last error."""
    a, b = fake(silent), fake(silent)
    with client_for(a, b, timeout_s=0.7) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            client.register("web", "10.0.0.5", 8080)
        elapsed = time.monotonic() - started
    assert 0.7 <= elapsed < 0.7 + LOADED_S
    err = caught.value
    assert err.tried == (a.address, b.address)
    assert a.address in str(err) and b.address in str(err) and "no reply" in str(err)
    seqs = {r["args"]["seq"] for r in a.received() + b.received()}
    assert seqs == {1} and len(a.received()) >= 2, "rounds repeat the same write"


def test_no_leader_everywhere_backs_off_and_names_the_last_error(fake) -> None:
    """Every server saying no_leader: rounds with a backoff (not a busy loop), then Unavailable
    carrying the servers' reason."""
    a, b = fake(lambda r: error("no_leader", "no leader within 1 s")), fake(
        lambda r: error("no_leader", "no leader within 1 s")
    )
    with client_for(a, b, timeout_s=0.8) as client:
        with pytest.raises(Unavailable) as caught:
            client.status()
    assert "no_leader: no leader within 1 s" in str(caught.value)
    assert caught.value.last_error is not None and "no_leader" in caught.value.last_error
    attempts = len(a.received()) + len(b.received())
    assert 2 <= attempts <= 20, f"{attempts} attempts in 0.8 s: the backoff is not working"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xc1 not msgpack", id="garbage"),
        pytest.param({"ok": True, "result": {"created": True}}, id="result-missing-keys"),
        pytest.param({"ok": "yes", "result": {}}, id="ok-not-bool"),
        pytest.param({"ok": False, "error": "boom"}, id="error-not-a-map"),
    ],
)
def test_a_malformed_reply_counts_as_a_failed_attempt(fake, body: Any) -> None:
    """A reply that is not a valid protocol reply sends the same write to the next server."""
    broken, good = fake(lambda r: body), fake()
    with client_for(broken, good) as client:
        assert client.register("web", "10.0.0.5", 8080).index == 42
    assert good.received()[0]["args"] == broken.received()[0]["args"]


def test_a_reply_of_another_version_counts_as_a_failed_attempt(fake) -> None:
    """A reply with v != 1 is not trusted."""
    import msgpack

    other = fake(lambda r: msgpack.packb({"v": 2, "id": r["id"], "ok": True, "result": STATUS}))
    good = fake()
    with client_for(other, good) as client:
        assert client.status().server == good.address


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, exception",
    [
        ("invalid", ValidationFailed),
        ("bad_request", ValidationFailed),
        ("not_found", NotFound),
        ("stale_seq", RegistryError),
        ("some_future_code", RegistryError),
    ],
)
def test_final_error_codes_raise_their_exception_without_a_retry(fake, code, exception) -> None:
    """invalid/bad_request -> ValidationFailed, not_found -> NotFound, anything else that is not
    retryable -> RegistryError; the code and server are kept, and no other server is asked."""
    refusing, other = fake(lambda r: error(code, "port: use 1-65535")), fake()
    with client_for(refusing, other) as client:
        with pytest.raises(RegistryError) as caught:
            client.deregister("web", "web-1")
    err = caught.value
    assert type(err) is exception
    assert not isinstance(err, Unavailable)
    assert (err.code, err.server) == (code, refusing.address)
    assert "port: use 1-65535" in str(err)
    assert other.received() == []


def test_unavailable_from_an_error_code_keeps_the_code(fake) -> None:
    """Unavailable's last_error carries the servers' code and message."""
    with client_for(fake(lambda r: error("stopping", "shutting down")), timeout_s=0.3) as client:
        with pytest.raises(Unavailable, match="stopping: shutting down"):
            client.services()


# -- results ----------------------------------------------------------------------------------


def test_services_returns_instances_by_service_with_the_index(fake) -> None:
    """services() is a dict of InstanceInfo lists with the applied index; an unknown service
    maps to an empty list; stale is sent as asked."""
    server = fake()
    with client_for(server) as client:
        everything = client.services()
        one = client.services("nope", stale=True)
    assert isinstance(everything, Services) and everything.index == 44
    assert everything == {
        "web": [InstanceInfo("web-1", "10.0.0.5", 8080, ("blue",), {"zone": "a"})],
        "db": [],
    }
    assert one == {"nope": []}
    assert server.received()[1]["args"] == {"service": "nope", "stale": True}


def test_status_parses_a_leader_with_peers(fake) -> None:
    """status() returns the first answering node's status, peers included."""
    leader = dict(STATUS, role="leader", leader="n1", peers={
        "n2": {"match": 10, "next": 11, "state": "replicate", "last_contact_ms": 12},
        "n3": {"match": 0, "next": 1, "state": "probe", "last_contact_ms": None},
    })  # fmt: skip
    server = fake(lambda r: ok(leader))
    with client_for(server) as client:
        status = client.status()
    assert isinstance(status, NodeStatus)
    assert (status.server, status.node, status.role, status.term) == (server.address, "n1", "leader", 3)
    assert status.peers == {
        "n2": PeerStatus(10, 11, "replicate", 12),
        "n3": PeerStatus(0, 1, "probe", None),
    }


def test_deregister_result(fake) -> None:
    """deregister() returns the removed ids and the commit index."""
    with client_for(fake()) as client:
        assert client.deregister("web", "web-1") == Deregistration(("web-1",), 43)


def test_status_all_reports_every_server_in_bounded_time(fake) -> None:
    """status_all() asks every server at once and gives, in order, a NodeStatus or the error:
    within one wait, whatever the number of servers that are silent (asking them in turn would
    take a wait each)."""
    wait_s = 2.0
    # NB: enough silent servers that waiting for them in turn (a wait each) would take longer
    # than one wait plus what a loaded machine can add.
    good, mutes, stopping = fake(), [fake(silent) for _ in range(5)], fake(lambda r: error("stopping", "bye"))
    assert len(mutes) * wait_s > wait_s + LOADED_S
    servers = [good.address, *(m.address for m in mutes), unused_address(), stopping.address]
    with Client(servers, timeout_s=LONG_S, attempt_timeout_s=wait_s) as client:
        started = time.monotonic()
        results = client.status_all()
        assert wait_s <= time.monotonic() - started < wait_s + LOADED_S, "the silent servers were waited for at once"
    assert isinstance(results[0], NodeStatus) and results[0].server == good.address
    for mute, result in zip(mutes, results[1 : 1 + len(mutes)], strict=True):
        assert isinstance(result, Unavailable) and result.server == mute.address
        assert "no reply" in str(result)
    results = [results[0], results[1], *results[1 + len(mutes):]]
    assert isinstance(results[2], Unavailable) and "connection refused" in str(results[2])
    assert isinstance(results[3], Unavailable) and results[3].code == "stopping"


def test_status_all_does_not_wait_for_servers_that_refuse(fake) -> None:
    """Refused connections are reported at once, not after the wait."""
    with Client([fake().address, unused_address()], timeout_s=2 * LONG_S, attempt_timeout_s=LONG_S) as client:
        started = time.monotonic()
        first, second = client.status_all()
        assert time.monotonic() - started < LONG_S / 2, "waited for the refused server"
    assert isinstance(first, NodeStatus) and isinstance(second, Unavailable)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda c: c.register("we b", "10.0.0.5", 80), "service"),
        (lambda c: c.register("x" * 64, "10.0.0.5", 80), "service"),
        (lambda c: c.register("", "10.0.0.5", 80), "service"),
        (lambda c: c.register("-web", "10.0.0.5", 80), "service"),
        (lambda c: c.register("wéb", "10.0.0.5", 80), "service"),
        (lambda c: c.register("web", "0.0.0.0", 80), "address"),
        (lambda c: c.register("web", "fe80::1%eth0", 80), "address"),
        (lambda c: c.register("web", "10.0.0.5", 80, id="a:b"), "instance_id"),
        (lambda c: c.register("web", "10.0.0.5", 80, id="-a"), "instance_id"),
        (lambda c: c.register("web", "10.0.0.5", 80, id="x" * 129), "instance_id"),
        (lambda c: c.register("web", "10.0.0.5", 80, tags=["t"] * 65), "tags"),
        (lambda c: c.register("web", "10.0.0.5", 80, meta=[("k", "v")]), "meta"),
        (lambda c: c.register("web", "10.0.0.256", 80), "address"),
        (lambda c: c.register("web", "[::1]", 80), "address"),
        (lambda c: c.register("web", "bad_host", 80), "address"),
        (lambda c: c.register("web", "", 80), "address"),
        (lambda c: c.register("web", "10.0.0.5", 0), "port"),
        (lambda c: c.register("web", "10.0.0.5", 65536), "port"),
        (lambda c: c.register("web", "10.0.0.5", "80"), "port"),
        (lambda c: c.register("web", "10.0.0.5", True), "port"),
        (lambda c: c.register("web", "10.0.0.5", 80, id=""), "instance_id"),
        (lambda c: c.register("web", "10.0.0.5", 80, tags=["ok", "not ok"]), "tags"),
        (lambda c: c.register("web", "10.0.0.5", 80, tags="blue"), "tags"),
        (lambda c: c.register("web", "10.0.0.5", 80, meta={"": "v"}), "meta"),
        (lambda c: c.register("web", "10.0.0.5", 80, meta={"k" * 129: "v"}), "meta"),
        (lambda c: c.register("web", "10.0.0.5", 80, meta={"k": "v" * 513}), "meta"),
        (lambda c: c.register("web", "10.0.0.5", 80, meta={str(i): "" for i in range(65)}), "meta"),
        (lambda c: c.register("web", "10.0.0.5", 80, meta={"k": 1}), "meta"),
        (lambda c: c.deregister("web", "10.0.0.5:99999"), "address"),
        (lambda c: c.deregister("web", "::1:80"), "address"),
        (lambda c: c.deregister("web", "web-1", by="address"), "address"),
        (lambda c: c.deregister("we.b", "web-1"), "service"),
        (lambda c: c.services("we.b"), "service"),
    ],
)
def test_bad_arguments_fail_before_any_network_traffic(fake, call, field: str) -> None:
    """Client-side validation raises ValidationFailed naming the argument, and sends nothing."""
    server = fake()
    with client_for(server) as client:
        with pytest.raises(ValidationFailed) as caught:
            call(client)
        assert caught.value.field == field
        assert caught.value.code is None, "found by the client, not a server"
        assert client._sockets == [None], "no socket was even opened"
    assert server.received() == []


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "::1", "fe80::1", "localhost", "db-1.example.com", "a1", "1a.example"],
)
def test_good_addresses_pass(fake, address: str) -> None:
    """IPv4, IPv6 (without brackets) and host names are accepted and sent as given."""
    server = fake()
    with client_for(server) as client:
        client.register("web", address, 80, tags=(t for t in ["b", "a"]),
                        meta={"k": "", "m" * 128: "v" * 512})
    args = server.received()[0]["args"]
    assert args["address"] == address, "sent as given; the node stores the canonical form"
    assert args["tags"] == ["b", "a"], "a generator of tags is not used up by the check"


@pytest.mark.parametrize(
    "text, hostport",
    [
        ("10.0.0.5:8080", True),
        ("[::1]:8080", True),
        ("db:5432", True),
        ("10.0.0.5:99999", True),  # looks like one, so it must be a valid one
        ("a:b", True),
        ("web-1", False),
        ("web-10.0.0.5-8080", False),
        ("web-2001_db8__1-8080", False),  # a default id for an IPv6 address
    ],
)
def test_the_rule_that_tells_addresses_from_ids(text: str, hostport: bool) -> None:
    """Text with a ':' is HOST:PORT (instance ids never contain one); anything else is an id."""
    assert looks_like_hostport(text) is hostport


def test_deregister_by_address_id_or_forced(fake) -> None:
    """deregister sends address+port for HOST:PORT, instance_id otherwise; `by` forces either."""
    server = fake()
    with client_for(server) as client:
        client.deregister("web", "10.0.0.5:8080")
        client.deregister("web", "[::1]:8080")
        client.deregister("web", "web-1")
        client.deregister("web", "web-1", by="id")
        client.deregister("web", "db:5432")
        client.deregister("web", "db:5432", by="address")
        with pytest.raises(ValidationFailed, match="':'"):
            client.deregister("web", "db:5432", by="id")
    args = [r["args"] for r in server.received()]
    strip = [{k: v for k, v in a.items() if k not in ("client", "seq")} for a in args]
    assert strip == [
        {"service": "web", "address": "10.0.0.5", "port": 8080},
        {"service": "web", "address": "::1", "port": 8080},
        {"service": "web", "instance_id": "web-1"},
        {"service": "web", "instance_id": "web-1"},
        {"service": "web", "address": "db", "port": 5432},
        {"service": "web", "address": "db", "port": 5432},
    ]


# -- servers ----------------------------------------------------------------------------------


def test_servers_come_from_the_argument_the_environment_or_the_defaults(monkeypatch) -> None:
    """An explicit list wins, then REGISTRY_SERVERS (comma-separated), then `registry up`'s."""
    monkeypatch.delenv("REGISTRY_SERVERS", raising=False)
    assert resolve_servers() == DEFAULT_SERVERS == ("127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103")
    assert Client().servers == DEFAULT_SERVERS
    monkeypatch.setenv("REGISTRY_SERVERS", " 10.0.0.1:7101 ,[::1]:7102,,10.0.0.1:7101")
    assert resolve_servers() == ("10.0.0.1:7101", "[::1]:7102")
    assert resolve_servers(["h:1"]) == ("h:1",)
    assert resolve_servers("h:1,h:2") == ("h:1", "h:2")
    monkeypatch.setenv("REGISTRY_SERVERS", "   ")
    assert resolve_servers() == DEFAULT_SERVERS


@pytest.mark.parametrize("bad", ["nohost", "h:0", "h:70000", "::1:80", "h:port"])
def test_bad_server_addresses_are_refused_naming_the_source(monkeypatch, bad: str) -> None:
    """A bad HOST:PORT raises ValidationFailed that names where it came from."""
    with pytest.raises(ValidationFailed, match="server"):
        Client([bad])
    monkeypatch.setenv("REGISTRY_SERVERS", f"127.0.0.1:7101,{bad}")
    with pytest.raises(ValidationFailed, match="REGISTRY_SERVERS"):
        Client()
    with pytest.raises(ValidationFailed):
        Client([])


def test_a_host_name_that_does_not_resolve_is_named_and_not_waited_for(fake) -> None:
    """A server whose host name does not resolve fails at once with "cannot resolve host NAME";
    with another server, that one is asked instead; with none left, the call ends at once."""
    good = fake()
    with Client(["nosuch.invalid:7101", good.address], timeout_s=2 * LONG_S, attempt_timeout_s=LONG_S) as client:
        started = time.monotonic()
        assert client.status().server == good.address
        assert time.monotonic() - started < LONG_S / 2
    with Client(["nosuch.invalid:7101"], timeout_s=LONG_S) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            client.register("web", "10.0.0.5", 8080)
        assert time.monotonic() - started < LONG_S / 2, "an unknown name is not retried until the deadline"
    assert str(caught.value) == "could not register: nosuch.invalid:7101: cannot resolve host 'nosuch.invalid'"
    assert unresolvable(["nosuch.invalid:7101", "127.0.0.1:1", "[::1]:2", "localhost:3"]) == ["nosuch.invalid"]


def test_timeouts_must_be_positive() -> None:
    """timeout_s and attempt_timeout_s must be positive; the attempt never exceeds the call."""
    with pytest.raises(ValueError):
        Client(["h:1"], timeout_s=0)
    with pytest.raises(ValueError):
        Client(["h:1"], attempt_timeout_s=-1)
    assert Client(["h:1"], timeout_s=0.5).attempt_timeout_s == 0.5
    assert Client(["h:1"]).attempt_timeout_s == 2.0
    # Every server gets a turn before the deadline; status_all waits up to 2 s for all at once.
    three = Client(["h:1", "h:2", "h:3"], timeout_s=3.0)
    assert (three.attempt_timeout_s, three.status_wait_s) == (1.0, 2.0)
    assert Client(["h:1"], timeout_s=1, attempt_timeout_s=5).attempt_timeout_s == 1


# -- lifetime and threads ---------------------------------------------------------------------


def test_close_is_idempotent_and_a_closed_client_refuses_calls(fake) -> None:
    """close() releases the sockets; later calls raise RuntimeError."""
    client = client_for(fake())
    client.status()
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.status()


def test_calls_from_several_threads_are_serialized(fake) -> None:
    """Sharing one Client across threads is safe (serialized): every write gets its own seq."""
    server = fake()
    failures: list[BaseException] = []
    with client_for(server) as client:

        def work() -> None:
            try:
                for i in range(10):
                    client.register("web", "10.0.0.5", 1000 + i)
            except BaseException as e:  # noqa: BLE001 (reported below)
                failures.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert sorted(r["args"]["seq"] for r in server.received()) == list(range(1, 41))
