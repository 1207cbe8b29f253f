"""The responder and health (issue 14): critical instances are in no answer, a name whose instances
are all critical is NODATA with the SOA (never NXDOMAIN), and a health change reaches answers that
were cached before it, while the answers of other services stay cached."""

from __future__ import annotations

import dataclasses

import pytest

from registry.catalogue import HealthStatus
from registry_dns.resolver import Responder

from .resolver_support import addresses, ask, health_view, inst, rcode, rdatas, section, soa_of, with_status

CRITICAL, PASSING = HealthStatus.CRITICAL, HealthStatus.PASSING


def critical(instance, since_ms: int = 1_700_000_000_000):
    return dataclasses.replace(instance, status=CRITICAL, since_ms=since_ms)


def fleet():
    return [
        inst("web", "w1", "10.0.0.1", 8001, tags=["prod"], meta=[("v", "1")]),
        critical(inst("web", "w2", "10.0.0.2", 8002, tags=["prod"], meta=[("v", "2")])),
        inst("web", "w3", "2001:db8::3", 8003, tags=["canary"], meta=[("v", "3")]),
        critical(inst("web", "w4", "2001:db8::4", 8004, tags=["canary"])),
        critical(inst("web", "w5", "10.0.0.5", 8005, tags=["old"])),
        critical(inst("down", "d1", "10.1.0.1", 9001, meta=[("k", "v")])),
        critical(inst("down", "d2", "2001:db8:1::2", 9002)),
        inst("hosts", "h1", "a.example.com", 53),
        critical(inst("hosts", "h2", "b.example.com", 53)),
        critical(inst("mixed", "m1", "10.2.0.1", 1)),
        inst("mixed", "m2", "c.example.com", 2),
    ]


@pytest.fixture
def r() -> Responder:
    responder = Responder(nameservers=[("n1", "192.0.2.1")])
    responder.update(health_view(fleet()))
    return responder


def srv_ports(reply) -> set[int]:
    return {rd.port for rd in rdatas(reply, "SRV")}


@pytest.mark.parametrize("tcp", [False, True])
def test_critical_instances_are_in_no_answer(r: Responder, tcp: bool) -> None:
    """A, AAAA, SRV, TXT, and the tag and RFC 2782 forms leave the critical instances out."""
    assert sorted(addresses(ask(r, "web.service.registry.", "A", tcp=tcp))) == ["10.0.0.1"]
    assert addresses(ask(r, "web.service.registry.", "AAAA", tcp=tcp), "AAAA") == ["2001:db8::3"]
    assert srv_ports(ask(r, "web.service.registry.", "SRV", tcp=tcp)) == {8001, 8003}
    assert srv_ports(ask(r, "_web._tcp.service.registry.", "SRV", tcp=tcp)) == {8001, 8003}
    assert srv_ports(ask(r, "_web._prod.service.registry.", "SRV", tcp=tcp)) == {8001}
    assert addresses(ask(r, "prod.web.service.registry.", "A", tcp=tcp)) == ["10.0.0.1"]
    assert addresses(ask(r, "canary.web.service.registry.", "AAAA", tcp=tcp), "AAAA") == ["2001:db8::3"]
    txt = sorted(b"".join(rd.strings) for rd in rdatas(ask(r, "web.service.registry.", "TXT", tcp=tcp), "TXT"))
    assert txt == [b"v=1", b"v=3"]
    srv = ask(r, "web.service.registry.", "SRV", tcp=tcp)      # no glue for a left-out target either
    assert sorted(addresses(srv, "A", "additional")) == ["10.0.0.1"]
    assert addresses(srv, "AAAA", "additional") == ["2001:db8::3"]


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("down.service.registry.", "A"),
        ("down.service.registry.", "AAAA"),
        ("down.service.registry.", "SRV"),
        ("down.service.registry.", "TXT"),
        ("_down._tcp.service.registry.", "SRV"),
        ("old.web.service.registry.", "A"),            # every instance tagged "old" is critical
        ("old.web.service.registry.", "SRV"),
        ("_web._old.service.registry.", "SRV"),
        ("canary.web.service.registry.", "A"),         # the passing canary is IPv6; the IPv4 one absent
    ],
)
def test_a_name_with_no_serving_instance_is_nodata_with_the_soa(r: Responder, name: str, rdtype: str) -> None:
    """NOERROR, no answer, the SOA (serial = applied index) in authority: never NXDOMAIN."""
    for tcp in (False, True):
        reply = ask(r, name, rdtype, tcp=tcp)
        assert rcode(reply) == "NOERROR" and not reply.answer, reply
        _, soa = soa_of(reply)
        assert soa.serial == 7
    assert r.counters["nxdomain"] == 0


def test_an_all_critical_service_still_exists_for_any_and_its_tags(r: Responder) -> None:
    """ANY at an all-critical name gets the RFC 8482 HINFO (the name exists), and the tag
    non-terminal of a tag that only critical instances carry is NODATA, not NXDOMAIN."""
    assert [rd.cpu for rd in rdatas(ask(r, "down.service.registry.", "ANY"), "HINFO")] == [b"RFC8482"]
    reply = ask(r, "_old.service.registry.", "A")
    assert rcode(reply) == "NOERROR" and not reply.answer
    assert rcode(ask(r, "nosuch.web.service.registry.", "A")) == "NXDOMAIN"
    assert rcode(ask(r, "nosuch.service.registry.", "A")) == "NXDOMAIN"


def test_address_names_answer_for_critical_instances_too(r: Responder) -> None:
    """An SRV target is an address spelled in hex: it keeps resolving whatever the instance's health."""
    assert addresses(ask(r, "0a000002.addr.registry.", "A")) == ["10.0.0.2"]
    assert addresses(ask(r, "20010db8000000000000000000000004.addr.registry.", "AAAA"), "AAAA") == ["2001:db8::4"]


def test_host_name_services_answer_with_the_serving_hosts_only(r: Responder) -> None:
    """The CNAME of an all-host-name service points at a passing host; a service whose only serving
    instance has a host name answers A with its CNAME, as an all-host-name service does."""
    for _ in range(20):
        cnames = [str(rd.target) for rd in rdatas(ask(r, "hosts.service.registry.", "A"), "CNAME")]
        assert cnames == ["a.example.com."]
    assert [str(rd.target) for rd in rdatas(ask(r, "mixed.service.registry.", "A"), "CNAME")] == ["c.example.com."]
    assert srv_ports(ask(r, "mixed.service.registry.", "SRV")) == {2}


def test_a_health_change_reaches_cached_answers_and_spares_the_others(r: Responder) -> None:
    """Answers cached before a transition are rebuilt on their next use (whatever the query's path),
    answers of other services stay cached across it, and the reverse transition brings it back."""
    name = "web.service.registry."
    for tcp in (False, True):
        assert sorted(addresses(ask(r, name, "A", tcp=tcp))) == ["10.0.0.1"]
    assert srv_ports(ask(r, "_web._tcp.service.registry.", "SRV")) == {8001, 8003}
    ask(r, "hosts.service.registry.", "SRV")
    ask(r, "down.service.registry.", "A")
    ask(r, name, "A")
    hits = r.counters["cache_hits"]

    v = with_status(r.view, "web", "w2", PASSING, 1_700_000_001_000)
    r.update(v)
    assert sorted(addresses(ask(r, name, "A"))) == ["10.0.0.1", "10.0.0.2"]
    assert sorted(addresses(ask(r, name, "A", tcp=True))) == ["10.0.0.1", "10.0.0.2"]
    assert srv_ports(ask(r, "_web._tcp.service.registry.", "SRV")) == {8001, 8002, 8003}
    misses = r.counters["cache_misses"]
    ask(r, "hosts.service.registry.", "SRV")
    ask(r, "down.service.registry.", "A")
    assert r.counters["cache_misses"] == misses, "an untouched service's answers were rebuilt"

    r.update(with_status(r.view, "web", "w1", CRITICAL, 1_700_000_002_000))
    r.update(with_status(r.view, "web", "w2", CRITICAL, 1_700_000_002_000))
    reply = ask(r, name, "A")
    assert rcode(reply) == "NOERROR" and not reply.answer and section(reply, "authority", "SOA")
    assert soa_of(reply)[1].serial == 10

    r.update(with_status(r.view, "web", "w1", PASSING, 1_700_000_003_000))
    assert sorted(addresses(ask(r, name, "A"))) == ["10.0.0.1"]
    assert r.counters["cache_hits"] > hits
