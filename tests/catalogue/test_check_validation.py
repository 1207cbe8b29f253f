"""Validation of health checks and health fields (issue 14): every refused check says which field
is wrong and what is accepted; accepted checks come back canonical and shared."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from registry.catalogue import (
    HEALTH_CLIENT_ID,
    Check,
    CheckKind,
    HealthStatus,
    Instance,
    ValidationError,
    check_to_map,
    validate_check,
    validate_external_client_id,
)
from registry.catalogue.validation import (
    validate_check_url,
    validate_client_id,
    validate_instance,
    validate_output,
    validate_revision,
    validate_status,
    validate_time_ms,
)

TCP = {"kind": "tcp", "interval_ms": 1_000, "timeout_ms": 1_000}
HTTP = {**TCP, "kind": "http", "url": "http://10.0.0.5:8080/health"}
TTL = {"kind": "ttl", "ttl_ms": 10_000}

BAD_CHECKS = [
    # (check, fragments the message must contain)
    ("ttl", ["check must be a map", "kind"]),
    ({"ttl_ms": 10_000}, ["lacks 'kind'", "'ttl', 'tcp' or 'http'"]),
    ({"kind": "udp"}, ["invalid check kind 'udp'", "'ttl', 'tcp' or 'http'"]),
    ({"kind": 1}, ["invalid check kind 1"]),
    ({**TTL, "weight": 1}, ["unknown keys ['weight']", "accepted"]),
    ({"kind": "ttl"}, ["ttl_ms 0", "1000 ms (1 s) to 86400000 ms (24 h)"]),
    ({**TTL, "ttl_ms": 999}, ["ttl_ms 999", "1000 ms (1 s)"]),
    ({**TTL, "ttl_ms": 86_400_001}, ["ttl_ms 86400001", "86400000 ms (24 h)"]),
    ({**TTL, "ttl_ms": 10.5}, ["ttl_ms must be an integer", "float"]),
    ({**TTL, "ttl_ms": True}, ["ttl_ms must be an integer", "bool"]),
    ({**TTL, "interval_ms": 1_000}, ["a ttl check takes no interval_ms", "leave it 0"]),
    ({**TTL, "url": "http://a:1/"}, ["a ttl check takes no url"]),
    ({**TCP, "ttl_ms": 10_000}, ["a tcp check takes no ttl_ms"]),
    ({**TCP, "url": "http://a:1/"}, ["a tcp check takes no url"]),
    ({"kind": "tcp"}, ["interval_ms 0", "1000 ms (1 s) to 86400000 ms (24 h)"]),
    ({**TCP, "interval_ms": 500}, ["interval_ms 500", "1000 ms (1 s)"]),
    ({**TCP, "timeout_ms": 99}, ["timeout_ms 99", "100 ms to 1000 ms (1 s)", "at most the interval"]),
    ({**TCP, "timeout_ms": 1_001}, ["timeout_ms 1001", "at most the interval"]),
    ({**TCP, "failures": 0}, ["failures 0", "1 to 100"]),
    ({**TCP, "successes": 101}, ["successes 101", "1 to 100"]),
    ({**TTL, "failures": 0}, ["failures 0", "1 to 100"]),
    ({**TTL, "deregister_after_ms": 59_999}, ["deregister_after_ms 59999", "0 (never)", "60000 ms (1 min)",
                                               "2592000000 ms (30 d)"]),
    ({**TTL, "deregister_after_ms": 30 * 86_400_000 + 1}, ["deregister_after_ms", "30 d"]),
    ({**TTL, "deregister_after_ms": False}, ["deregister_after_ms must be an integer", "bool"]),
    ({**TCP, "kind": "http"}, ["check url is empty", "http://HOST:PORT/path"]),
    ({**TCP, "kind": "http", "url": None}, ["check url must be a string", "nil"]),
    ({**HTTP, "url": ""}, ["check url is empty", "http://HOST:PORT/path"]),
    ({**HTTP, "url": "ftp://10.0.0.5:21/"}, ["scheme 'ftp'", "only http://"]),
    ({**HTTP, "url": "https://10.0.0.5:443/"}, ["scheme 'https'", "only http://"]),
    ({**HTTP, "url": "HTTP://10.0.0.5:80/"}, ["only http://"]),
    ({**HTTP, "url": "http://10.0.0.5/health"}, ["names no port", "host and port required"]),
    ({**HTTP, "url": "http://:80/health"}, ["names no host"]),
    ({**HTTP, "url": "http://10.0.0.5:0/"}, ["1 to 65535"]),
    ({**HTTP, "url": "http://10.0.0.5:99999/"}, ["out of range"]),
    ({**HTTP, "url": "http://10.0.0.5:http/"}, ["Port could not be cast"]),
    ({**HTTP, "url": "http://0.0.0.0:80/"}, ["unspecified"]),
    ({**HTTP, "url": "http://bad_host:80/"}, ["label 'bad_host'"]),
    ({**HTTP, "url": "http://user:pw@10.0.0.5:80/"}, ["no user info"]),
    ({**HTTP, "url": "http://10.0.0.5:80/#top"}, ["#fragment"]),
    ({**HTTP, "url": "http://10.0.0.5:80/a b"}, ["contains ' '", "printable ASCII"]),
    ({**HTTP, "url": "http://10.0.0.5:80/é"}, ["contains 'é'"]),
    ({**HTTP, "url": "http://10.0.0.5:80/" + "a" * 500}, ["519 characters", "at most 512"]),
]


@pytest.mark.parametrize("check, fragments", BAD_CHECKS, ids=[str(i) for i in range(len(BAD_CHECKS))])
def test_refused_checks_say_what_is_wrong_and_what_is_accepted(check: object, fragments: list[str]) -> None:
    """Each refused check raises ValidationError on field 'check' naming the value and the range."""
    with pytest.raises(ValidationError) as caught:
        validate_check(check)
    assert caught.value.field == "check"
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in {str(caught.value)!r}"


GOOD_CHECKS = [
    (TTL, Check(CheckKind.TTL, ttl_ms=10_000)),
    ({**TTL, "ttl_ms": 1_000, "deregister_after_ms": 60_000}, Check(CheckKind.TTL, 1_000, deregister_after_ms=60_000)),
    ({**TTL, "ttl_ms": 86_400_000, "deregister_after_ms": 30 * 86_400_000},
     Check(CheckKind.TTL, 86_400_000, deregister_after_ms=30 * 86_400_000)),
    (TCP, Check(CheckKind.TCP, interval_ms=1_000, timeout_ms=1_000)),
    ({**TCP, "interval_ms": 86_400_000, "timeout_ms": 100, "failures": 1, "successes": 100},
     Check(CheckKind.TCP, interval_ms=86_400_000, timeout_ms=100, failures=1, successes=100)),
    ({**HTTP, "kind": CheckKind.HTTP}, Check(CheckKind.HTTP, url=HTTP["url"], interval_ms=1_000, timeout_ms=1_000)),
    ({**HTTP, "url": "http://[2001:db8::1]:80"}, Check(CheckKind.HTTP, url="http://[2001:db8::1]:80",
                                                        interval_ms=1_000, timeout_ms=1_000)),
    ({**HTTP, "url": "http://Svc.Example.com:8080/ready?deep=1"},
     Check(CheckKind.HTTP, url="http://Svc.Example.com:8080/ready?deep=1", interval_ms=1_000, timeout_ms=1_000)),
    (Check(CheckKind.TCP, interval_ms=2_000, timeout_ms=500), Check(CheckKind.TCP, interval_ms=2_000, timeout_ms=500)),
]  # fmt: skip


@pytest.mark.parametrize("check, want", GOOD_CHECKS, ids=[str(i) for i in range(len(GOOD_CHECKS))])
def test_accepted_checks_come_back_canonical_and_round_trip_as_maps(check: object, want: Check) -> None:
    """A map (the protocol's and the log's form) or a Check gives the Check; check_to_map inverts it."""
    got = validate_check(check)
    assert got == want
    assert validate_check(check_to_map(got)) == got
    assert check_to_map(got)["kind"] == want.kind.value and set(check_to_map(got)) == {
        "kind", "ttl_ms", "url", "interval_ms", "timeout_ms", "failures", "successes", "deregister_after_ms"}


def test_equal_checks_are_shared() -> None:
    """Instances registered with the same check share one Check object (memory per instance)."""
    assert validate_check(dict(TCP)) is validate_check(dict(TCP))


def test_an_invalid_check_object_is_refused_too() -> None:
    """A hand-made Check goes through the same rules as a map."""
    with pytest.raises(ValidationError, match="timeout_ms 5000"):
        validate_check(Check(CheckKind.TCP, interval_ms=1_000, timeout_ms=5_000))


BAD_FIELDS: list[tuple[Callable[[object], object], object, str, list[str]]] = [
    (validate_status, "sick", "status", ["invalid health status 'sick'", "'passing' or 'critical'"]),
    (validate_status, None, "status", ["'passing' or 'critical'"]),
    (validate_time_ms, -1, "at_ms", ["invalid at_ms -1", "0 to 2**63-1"]),
    (validate_time_ms, 2**63, "at_ms", ["0 to 2**63-1"]),
    (validate_time_ms, 1.5, "at_ms", ["must be an integer", "float"]),
    (validate_revision, 0, "revision", ["invalid revision 0", "log index", "1 to 2**63-1"]),
    (validate_revision, True, "revision", ["bool"]),
    (validate_output, "x" * 257, "output", ["257 characters", "at most 256"]),
    (validate_output, None, "output", ["must be a string", "nil"]),
    (validate_output, "\ud800", "output", ["lone surrogate"]),
    (validate_external_client_id, HEALTH_CLIENT_ID, "client", ["reserved", "'~'", "UUID"]),
    (validate_external_client_id, "", "client", ["1-64"]),
    (validate_check_url, 80, "check", ["must be a string"]),
]


@pytest.mark.parametrize(
    "validate, value, field, fragments", BAD_FIELDS, ids=[f"{v.__name__}-{i}" for i, (v, *_) in enumerate(BAD_FIELDS)]
)
def test_refused_health_fields_say_what_is_accepted(
    validate: Callable[[object], object], value: object, field: str, fragments: list[str]
) -> None:
    with pytest.raises(ValidationError) as caught:
        validate(value)
    assert caught.value.field == field
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in {str(caught.value)!r}"


def test_health_fields_accept_their_whole_range() -> None:
    assert validate_status("critical") is HealthStatus.CRITICAL
    assert validate_status(HealthStatus.PASSING) is HealthStatus.PASSING
    assert validate_time_ms(0) == 0 and validate_time_ms(2**63 - 1) == 2**63 - 1
    assert validate_revision(1) == 1 and validate_output("é" * 256) == "é" * 256
    assert validate_external_client_id("c" * 64) == "c" * 64
    assert validate_client_id(HEALTH_CLIENT_ID) == "~health"  # the log accepts the leader's own id


def test_validate_instance_keeps_the_health_fields() -> None:
    """A view built from instances (e.g. by DNS tests) keeps their status, check and revision."""
    check = Check(CheckKind.TTL, ttl_ms=5_000)
    raw = Instance("i1", "WEB", "10.0.0.1", 80, check=check, status=HealthStatus.CRITICAL, since_ms=7,
                   revision=3, output="ttl expired")
    assert validate_instance(raw) == Instance("i1", "web", "10.0.0.1", 80, check=check,
                                              status=HealthStatus.CRITICAL, since_ms=7, revision=3,
                                              output="ttl expired")
    assert validate_instance(Instance("i1", "web", "10.0.0.1", 80)).revision == 0  # format 1: revision 0
    with pytest.raises(ValidationError, match="ttl_ms 5"):
        validate_instance(Instance("i1", "web", "10.0.0.1", 80, check=Check(CheckKind.TTL, ttl_ms=5)))
    with pytest.raises(ValidationError, match="health status"):
        validate_instance(Instance("i1", "web", "10.0.0.1", 80, status="down"))  # type: ignore[arg-type]
