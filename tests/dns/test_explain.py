"""``registry_dns.explain``: for a DNS name, which instances are in the answer and why each other one
is not (tag, critical, address family, no meta, type, truncation), and the rcode; checked against
the real responder's replies (parsed by dnspython) for random catalogues, health changes and
questions, over UDP (with and without EDNS, at several sizes) and TCP."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from registry.catalogue import CatalogueView, HealthStatus, Instance
from registry_dns.explain import Explanation, Reason, explain, parse_qtype
from registry_dns.resolver import Responder

from .resolver_support import NAMESERVERS, health_view, inst, many, query, with_status

CRITICAL, PASSING = HealthStatus.CRITICAL, HealthStatus.PASSING
SINCE = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def fleet() -> list[Instance]:
    return [
        inst("web", "w1", "10.0.0.1", 8001, tags=["prod"], meta=[("v", "1")]),
        dataclasses.replace(inst("web", "w2", "10.0.0.2", 8002, tags=["prod"]), status=CRITICAL, since_ms=SINCE,
                            output="connection refused"),
        inst("web", "w3", "2001:db8::3", 8003, tags=["canary"]),
        inst("web", "w4", "h4.example.com", 8004),
    ]


def reasons(e: Explanation) -> dict[str, Reason | None]:
    return {v.instance.id: v.reason for v in e.instances}


def included(e: Explanation) -> set[str]:
    return {v.instance.id for v in e.instances if v.in_answer}


def test_each_instance_gets_its_reason() -> None:
    """Critical (with since, in UTC), tag, family, no meta, type: the first that applies."""
    v = health_view(fleet())
    e = explain(v, "web.service.registry.", "A")
    assert (e.rcode_name, e.service, e.tag) == ("NOERROR", "web", None)
    assert reasons(e) == {"w1": None, "w2": Reason.CRITICAL, "w3": Reason.FAMILY, "w4": Reason.FAMILY}
    crit = next(x for x in e.instances if x.instance.id == "w2")
    assert crit.detail == "critical since 2023-11-14T22:13:20.000+00:00: connection refused" and not crit.in_answer
    assert crit.as_dict()["output"] == "connection refused" and crit.as_dict()["reason"] == "critical"
    assert "A asked" in next(x for x in e.instances if x.instance.id == "w3").detail
    assert reasons(explain(v, "Prod.Web.Service.Registry", "AAAA")) == {
        "w1": Reason.FAMILY, "w2": Reason.CRITICAL, "w3": Reason.TAG, "w4": Reason.TAG}
    assert reasons(explain(v, "web.service.registry.", "TXT")) == {
        "w1": None, "w2": Reason.CRITICAL, "w3": Reason.NO_META, "w4": Reason.NO_META}
    assert reasons(explain(v, "web.service.registry.", "MX")) == {
        "w1": Reason.TYPE, "w2": Reason.CRITICAL, "w3": Reason.TYPE, "w4": Reason.TYPE}
    srv = explain(v, "_web._tcp.service.registry.", "srv")
    assert included(srv) == {"w1", "w3", "w4"} and srv.qtype == "SRV"
    assert reasons(explain(v, "_web._tcp.service.registry.", "A"))["w1"] is Reason.TYPE


def test_all_critical_is_nodata_and_says_so() -> None:
    v = health_view(fleet())
    e = explain(v, "prod.web.service.registry.", "A")
    assert included(e) == {"w1"}
    v = with_status(v, "web", "w1", CRITICAL, SINCE + 5)
    e = explain(v, "prod.web.service.registry.", "A")
    assert e.rcode_name == "NOERROR" and e.answers == () and not included(e)
    assert "every instance of service 'web' with tag 'prod' is critical: NODATA" in e.summary


def test_truncation_is_judged_on_the_responders_encoding() -> None:
    """40 SRV records with their glue overflow 1232 octets: every instance is truncated (shuffled:
    left out of some UDP replies), none over 65535; TXT keeps its fixed order, so the same prefix."""
    v = health_view(many("big", 40))
    e = explain(v, "big.service.registry.", "SRV")
    assert e.truncated and not included(e) and set(reasons(e).values()) == {Reason.TRUNCATED}
    assert "in some UDP replies" in e.instances[0].detail
    assert included(explain(v, "big.service.registry.", "SRV", max_udp=65535)) == {i.id for i in many("big", 40)}
    few = explain(v, "big.service.registry.", "A", max_udp=1232)
    assert not few.truncated and len(included(few)) == 40

    metas = [inst("meta", f"m{i:02}", f"10.3.0.{i + 1}", meta=[(f"key{i:02}", "x" * 40)]) for i in range(30)]
    e = explain(health_view(metas), "meta.service.registry.", "TXT", max_udp=512)
    kept = sorted(included(e))
    assert e.truncated and kept == [f"m{i:02}" for i in range(len(kept))] and 0 < len(kept) < 30
    assert all(r is Reason.TRUNCATED for i, r in reasons(e).items() if i not in kept)


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "words"),
    [
        ("example.com.", "A", "REFUSED", "outside the zone registry."),
        ("web.service.other.", "A", "REFUSED", "outside the zone"),
        ("nosuch.service.registry.", "A", "NXDOMAIN", "no service 'nosuch' is registered"),
        ("gold.web.service.registry.", "A", "NXDOMAIN", "no instance of service 'web' has tag 'gold'"),
        ("0a000002.addr.registry.", "A", "NOERROR", "an address name"),
        ("registry.", "SOA", "NOERROR", "the zone apex"),
        ("n1.node.registry.", "A", "NOERROR", "a node name"),
        ("service.registry.", "A", "NOERROR", "a non-terminal"),
        ("web.service.registry.", "AXFR", "NOTIMP", "zone transfers"),
    ],
)
def test_names_that_ask_for_no_instances_say_what_they_are(name: str, rdtype: str, rcode: str, words: str) -> None:
    e = explain(health_view(fleet()), name, rdtype, nameservers=NAMESERVERS)
    assert e.rcode_name == rcode and words in e.summary, e.summary
    if rcode != "NXDOMAIN" or "tag" not in words:
        assert e.instances == ()
    if "address" in words:
        assert e.answers and "10.0.0.2" in e.answers[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"qname": "web..registry."}, "labels of 1-63 octets"),
        ({"qname": "wéb.service.registry."}, "ASCII"),
        ({"qname": "a" * 64 + ".registry."}, "labels of 1-63 octets"),
        ({"qtype": "BOGUS"}, "unknown query type 'BOGUS'"),
        ({"qtype": 70000}, "from 0 to 65535"),
        ({"zone": "bad..zone"}, "invalid domain"),
        ({"max_udp": 100}, "max_udp must be an integer from 512 to 65535"),
    ],
)
def test_bad_input_is_refused_with_what_is_accepted(kwargs: dict, message: str) -> None:
    args = {"qname": "web.service.registry.", "qtype": "A", "zone": "registry.", "max_udp": 1232, **kwargs}
    with pytest.raises(ValueError, match=message):
        explain(health_view(fleet()), **args)


def test_query_types_by_name_or_number() -> None:
    assert [parse_qtype(t) for t in ("a", "SRV", "TYPE28", "16", 255)] == [1, 33, 28, 16, 255]


# -- agreement with the responder ----------------------------------------------------------------

TAGS = ("prod", "canary", "tcp")
SERVICES = ("web", "db")


@st.composite
def catalogues(draw: st.DrawFn) -> list[Instance]:
    """Instances whose records are all distinct (address, SRV target, host, meta pairs), so that a
    record in a reply names exactly one instance."""
    out = []
    for n in range(draw(st.one_of(st.integers(0, 8), st.integers(20, 45)))):
        kind = draw(st.sampled_from(("ipv4", "ipv4", "ipv6", "host")))
        address = {"ipv4": f"10.0.{n // 250}.{n % 250 + 1}", "ipv6": f"2001:db8::{n + 1:x}",
                   "host": f"h{n}.example.com"}[kind]
        meta = [(f"k{n}x{j}", draw(st.text("abcxyz=`", max_size=100))) for j in range(draw(st.integers(0, 2)))]
        out.append(Instance(
            id=f"i{n}", service=draw(st.sampled_from(SERVICES)), address=address, port=draw(st.integers(1, 65535)),
            tags=tuple(draw(st.sets(st.sampled_from(TAGS)))), meta=tuple(meta),
            status=draw(st.sampled_from((PASSING, PASSING, CRITICAL))), since_ms=n,
        ))
    return out


SERVICE_NAMES = ("{s}.service.registry.", "{t}.{s}.service.registry.", "_{s}._tcp.service.registry.",
                 "_{s}._{t}.service.registry.")
NAMES = st.sampled_from(SERVICE_NAMES * 4 + (
    "nosuch.service.registry.", "0a000001.addr.registry.", "registry.", "example.com.", "service.registry.",
    "_{t}.service.registry.", "{s}.service.registry.x.",
))
QTYPES = st.sampled_from(("A", "AAAA", "SRV", "TXT", "ANY", "CNAME", "MX"))


def _target(instance: Instance) -> str:
    if ":" in instance.address or instance.address.replace(".", "").isdigit():
        return ipaddress.ip_address(instance.address).packed.hex() + ".addr.registry."
    return instance.address + "."


def in_reply(reply: dns.message.Message, instances: tuple[Instance, ...]) -> set[str]:
    """The instances whose records the reply's answer section holds (all of them, for TXT)."""
    addrs, srvs, cnames, txts = set(), set(), set(), set()
    for rrset in reply.answer:
        for rd in rrset:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addrs.add(str(ipaddress.ip_address(rd.address)))
            elif rrset.rdtype == dns.rdatatype.SRV:
                srvs.add((rd.port, rd.target.to_text().lower()))
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cnames.add(rd.target.to_text())
            elif rrset.rdtype == dns.rdatatype.TXT:
                txts.add(b"".join(rd.strings))
    found = set()
    for i in instances:
        pairs = {f"{k}={v}".encode() for k, v in i.meta}       # keys need no RFC 1464 escapes
        if (i.address in addrs or (i.port, _target(i)) in srvs or i.address + "." in cnames
                or (pairs and pairs <= txts)):
            found.add(i.id)
    return found


def check_agrees(r: Responder, v: CatalogueView, name: str, rdtype: str, max_udp: int, edns: bool) -> Explanation:
    e = explain(v, name, rdtype, "registry.", max_udp, edns=edns, nameservers=NAMESERVERS)
    everyone = v.instances(e.service) if e.service is not None else ()
    sure = included(e)
    maybe = {x.instance.id for x in e.instances if x.reason is Reason.TRUNCATED}
    tcp = dns.message.from_wire(r.answer(query(name, rdtype, edns=0).to_wire(), tcp=True))
    assert dns.rcode.to_text(tcp.rcode()) == e.rcode_name
    assert not tcp.flags & dns.flags.TC
    if e.shape == "one":                        # one CNAME per reply, to one of the instances
        assert len(in_reply(tcp, everyone)) == 1 and in_reply(tcp, everyone) <= sure
    else:
        assert in_reply(tcp, everyone) == sure | maybe
    for _ in range(3):
        q = query(name, rdtype, edns=0 if edns else None, payload=max_udp)
        udp = dns.message.from_wire(r.answer(q.to_wire()))
        assert dns.rcode.to_text(udp.rcode()) == e.rcode_name
        assert bool(udp.flags & dns.flags.TC) == e.truncated
        got = in_reply(udp, everyone)
        if e.shape == "one":
            assert len(got) == 1 and got <= sure
        else:
            assert sure <= got <= sure | maybe
        if e.shape == "all":
            assert got == sure
    if e.service is not None and e.rcode_name == "NOERROR":
        assert {x.instance.id for x in e.instances} == {i.id for i in v.instances(e.service)}
        assert not {x.instance.id for x in e.instances if x.reason is Reason.CRITICAL} & (sure | maybe)
    return e


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    instances=catalogues(),
    questions=st.lists(st.tuples(NAMES, st.sampled_from(SERVICES), st.sampled_from(TAGS), QTYPES), min_size=1,
                       max_size=5),
    flips=st.lists(st.integers(0, 44), max_size=3),
    size=st.sampled_from((512, 700, 1232)),
    edns=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_explain_agrees_with_the_responder(instances, questions, flips, size, edns, seed) -> None:
    """For random catalogues and questions, before and after health flips (the responder's cache
    survives them): explain's rcode and TC are the reply's, the instances it puts in the answer are
    in every reply, those it calls truncated are in the TCP reply and in UDP only as it says."""
    r = Responder(nameservers=NAMESERVERS, max_udp_payload=size, rng=random.Random(seed))
    v = health_view(instances)
    r.update(v)
    rnd = random.Random(seed)
    for n in [None, *flips]:
        if n is not None and n < len(instances):
            i = instances[n]
            now = v.instance(i.service, i.id)
            v = with_status(v, i.service, i.id, PASSING if now.status is CRITICAL else CRITICAL, 99)
            r.update(v)
        for form, service, tag, rdtype in questions:
            name = form.format(s=service, t=tag)
            name = "".join(c.upper() if rnd.random() < 0.3 else c for c in name)
            e = check_agrees(r, v, name, rdtype, size, edns)
            event(f"{e.rcode_name}, {'truncated' if e.truncated else 'whole'}, {'some' if included(e) else 'none'} in")
            event(f"reasons: {sorted({x.reason.value for x in e.instances if x.reason is not None})}")


def test_explain_agrees_with_the_responder_on_truncated_answers() -> None:
    """Big answers (A, AAAA, SRV with glue, TXT in its fixed order) at every size, some critical."""
    instances = [
        Instance(id=f"i{n}", service="big", address=f"10.4.0.{n + 1}" if n % 3 else f"2001:db8:4::{n + 1:x}",
                 port=9000 + n, tags=("prod",) if n % 2 else (), meta=((f"k{n}", "v" * (n * 7 % 90)),),
                 status=CRITICAL if n % 5 == 0 else PASSING)
        for n in range(60)
    ]
    v = health_view(instances)
    for size in (512, 700, 1232, 4096):
        r = Responder(nameservers=NAMESERVERS, max_udp_payload=size, rng=random.Random(size))
        r.update(v)
        for name in ("big.service.registry.", "prod.big.service.registry.", "_big._tcp.service.registry."):
            for rdtype in ("A", "AAAA", "SRV", "TXT"):
                for edns in (True, False):
                    check_agrees(r, v, name, rdtype, size, edns)
    assert explain(v, "big.service.registry.", "TXT", max_udp=512).truncated
