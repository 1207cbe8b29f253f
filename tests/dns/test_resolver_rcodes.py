"""Negative and error answers (DNS issue points 3, 4, 6), EDNS echo, and the counters."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from registry_dns.resolver import COUNTERS, Responder

from .resolver_support import ask, header, query, question, rcode, responder, section, soa_of


@pytest.mark.parametrize(
    "name",
    [
        "nosuch.service.registry.",
        "green.web.service.registry.",          # a tag nobody has
        "a.b.web.service.registry.",            # too deep
        "whatever.registry.",                   # not a subtree of the zone
        "_web.service.registry.",               # _TAG.service where no instance has tag "web"
        "x.n1.node.registry.",
    ],
)
def test_nxdomain_for_names_that_do_not_exist(name: str) -> None:
    """NXDOMAIN with the SOA in authority (TTL = min(TTL, SOA minimum), RFC 2308 §3) and AA set."""
    reply = ask(responder(applied_index=99, ttl_s=60, negative_ttl_s=4), name, "A")
    assert rcode(reply) == "NXDOMAIN"
    assert reply.flags & dns.flags.AA and not reply.flags & dns.flags.RA
    assert not reply.answer
    rrset, soa = soa_of(reply)
    assert rrset.name.to_text().lower() == "registry." and rrset.ttl == 4
    assert soa.serial == 99 and soa.minimum == 4


@pytest.mark.parametrize(
    "name, rdtype",
    [
        ("web.service.registry.", "MX"),
        ("six.service.registry.", "A"),         # a registered service with no usable instance for A
        ("plain.service.registry.", "AAAA"),
        ("registry.", "A"),
        ("service.registry.", "A"),             # empty non-terminals exist (RFC 8020)
        ("_tcp.service.registry.", "SRV"),
        ("_prod.service.registry.", "SRV"),
        ("node.registry.", "A"),
        ("addr.registry.", "A"),
        ("n1.node.registry.", "AAAA"),
        ("_web._tcp.service.registry.", "TXT"),
    ],
)
def test_nodata_for_names_that_exist_without_that_type(name: str, rdtype: str) -> None:
    """NOERROR, empty answer, SOA in authority, AA set."""
    reply = ask(responder(), name, rdtype)
    assert rcode(reply) == "NOERROR", name
    assert not reply.answer and reply.flags & dns.flags.AA
    soa_of(reply)


def test_service_tree_is_nxdomain_once_no_service_exists() -> None:
    r = responder([])
    assert rcode(ask(r, "service.registry.", "A")) == "NXDOMAIN"
    assert rcode(ask(r, "_tcp.service.registry.", "A")) == "NXDOMAIN"
    assert rcode(ask(r, "registry.", "A")) == "NOERROR"


@pytest.mark.parametrize("name", ["example.com.", "registry.example.", ".", "xregistry."])
def test_refused_outside_the_zone_without_recursion(name: str) -> None:
    """REFUSED, RA clear (we never recurse), and, as the issue asks of every negative and error
    answer, AA set with our apex SOA in the authority section (naming the state it came from)."""
    reply = ask(responder(), name, "A", edns=0)
    assert rcode(reply) == "REFUSED"
    assert not reply.flags & dns.flags.RA and reply.flags & dns.flags.AA
    assert not reply.answer
    assert [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype)) for rrset in reply.authority] == [
        ("registry.", "SOA")]
    assert reply.edns == 0                                      # OPT echoed


def test_refused_for_classes_other_than_in() -> None:
    r = responder()
    wire = r.answer(header() + question("version.bind.", 16, 3))   # CH TXT
    assert wire is not None and rcode(dns.message.from_wire(wire)) == "REFUSED"
    wire = r.answer(header() + question("web.service.registry.", 1, 3))
    assert wire is not None and rcode(dns.message.from_wire(wire)) == "REFUSED"


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_notimp_for_zone_transfers(rdtype: str) -> None:
    r = responder()
    for tcp in (False, True):
        reply = ask(r, "registry.", rdtype, tcp=tcp)
        assert rcode(reply) == "NOTIMP"
        assert reply.flags & dns.flags.AA and reply.authority[0].rdtype == dns.rdatatype.SOA
    assert r.counters["notimp"] == 2


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE])
def test_notimp_for_opcodes_other_than_query(opcode: int) -> None:
    """NOTIMP, with the opcode echoed (RFC 1035 §4.1.1)."""
    q = query("registry.", "SOA", qid=77)
    q.set_opcode(opcode)
    wire = responder().answer(q.to_wire())
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == 77 and reply.opcode() == opcode and rcode(reply) == "NOTIMP"
    assert not reply.authority  # other opcodes give the sections other meanings: header only


@pytest.mark.parametrize("qd", [0, 2])
def test_formerr_when_qdcount_is_not_one(qd: int) -> None:
    r = responder()
    packet = header(qid=5, qd=qd) + question() * qd
    wire = r.answer(packet)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == 5 and rcode(reply) == "FORMERR" and not reply.question
    assert r.counters["formerr"] == 1


def test_formerr_when_the_question_is_readable_but_the_rest_is_not() -> None:
    """ARCOUNT promises a record that is not there: FORMERR, with the question echoed."""
    r = responder()
    wire = r.answer(header(ar=1) + question() + b"\x00\x00")
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert rcode(reply) == "FORMERR" and reply.question[0].name.to_text() == "web.service.registry."
    assert reply.flags & dns.flags.AA and reply.authority[0].rdtype == dns.rdatatype.SOA


def test_formerr_for_two_opt_records() -> None:
    """RFC 6891 §6.1.1: more than one OPT is a FORMERR."""
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    wire = responder().answer(header(ar=2) + question() + opt + opt)
    assert wire is not None and rcode(dns.message.from_wire(wire)) == "FORMERR"


def test_badvers_for_an_edns_version_other_than_zero() -> None:
    """RFC 6891 §6.1.3: BADVERS (extended rcode 16), replying with version 0."""
    q = query("web.service.registry.", "A", edns=1)
    r = responder()
    wire = r.answer(q.to_wire())
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x12", b"\x00" * 11, header(qd=1) + b"\x05abc", header(qd=1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"],
)
def test_unparseable_packets_are_dropped_and_counted(packet: bytes) -> None:
    r = responder()
    assert r.answer(packet) is None
    assert r.counters["dropped_malformed"] == 1


def test_responses_are_never_answered() -> None:
    """A packet with QR set is dropped (no reflection loops between servers)."""
    r = responder()
    reply = r.answer(query("web.service.registry.").to_wire())
    assert reply is not None
    assert r.answer(reply) is None
    assert r.counters["dropped_malformed"] == 1


def test_edns_is_echoed_with_our_payload_size_and_the_do_bit() -> None:
    r = responder(max_udp_payload=1400)
    reply = ask(r, "web.service.registry.", "A", edns=0, payload=4096)
    assert reply.edns == 0 and reply.payload == 1400 and not reply.ednsflags & dns.flags.DO
    reply = ask(r, "web.service.registry.", "A", edns=0, do=True)
    assert reply.ednsflags & dns.flags.DO                                  # RFC 3225 §3
    assert ask(r, "web.service.registry.", "A").edns == -1                 # none asked, none sent


def test_edns_options_in_the_query_such_as_cookies_are_accepted() -> None:
    """dig sends a COOKIE option by default; it must not push the query off the answer path."""
    q = query("web.service.registry.", "A", edns=0)
    q.use_edns(0, 0, 1232, options=[dns.edns.CookieOption(b"12345678", b"")])
    r = responder()
    for _ in range(2):
        wire = r.answer(q.to_wire())
        assert wire is not None
        reply = dns.message.from_wire(wire)
        assert rcode(reply) == "NOERROR" and len(reply.answer[0]) == 3
    assert r.counters["cache_hits"] == 1


def test_ttls_are_configurable() -> None:
    """Answers carry ttl_s; the SOA minimum and negative TTL are negative_ttl_s."""
    r = responder(ttl_s=123, negative_ttl_s=7)
    for name, rdtype in (("web.service.registry.", "A"), ("web.service.registry.", "SRV"),
                         ("web.service.registry.", "TXT"), ("registry.", "NS"), ("db.service.registry.", "A")):
        reply = ask(r, name, rdtype)
        assert {rrset.ttl for rrset in reply.answer + reply.additional} == {123}, (name, rdtype)
    rrset, soa = soa_of(ask(r, "nosuch.service.registry.", "A"))
    assert rrset.ttl == 7 and soa.minimum == 7


@pytest.mark.parametrize("kwargs", [{"ttl_s": -1}, {"negative_ttl_s": 2**31}, {"max_udp_payload": 511},
                                    {"domain": "bad..domain."}, {"nameservers": [("bad name", "10.0.0.1")]},
                                    {"nameservers": [("n1", "not-an-ip")]}])
def test_bad_configuration_is_refused_at_construction(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Responder(**kwargs)


def test_stale_answers_servfail_with_an_extended_dns_error() -> None:
    """stale=True: SERVFAIL instead of possibly stale data, with EDE 14 'Not Ready' under EDNS."""
    r = responder()
    ask(r, "web.service.registry.", "A")                     # cached: staleness must still win
    reply = ask(r, "web.service.registry.", "A", stale=True, edns=0)
    assert rcode(reply) == "SERVFAIL" and not reply.answer and not reply.flags & dns.flags.AA
    (ede,) = [o for o in reply.options if o.otype == dns.edns.OptionType.EDE]
    assert ede.code == dns.edns.EDECode.NOT_READY and "leader" in ede.text
    reply = ask(r, "web.service.registry.", "A", stale=True)
    assert rcode(reply) == "SERVFAIL" and reply.edns == -1
    assert r.counters["servfail_stale"] == 2
    assert rcode(ask(r, "example.com.", "A", stale=True)) == "REFUSED"      # not ours either way
    assert rcode(ask(r, "web.service.registry.", "A")) == "NOERROR"         # and back


def test_counters_count_each_outcome() -> None:
    r = responder()
    assert set(r.counters) >= set(COUNTERS) and not any(r.counters.values())
    ask(r, "web.service.registry.", "A")
    ask(r, "web.service.registry.", "A")
    ask(r, "nosuch.service.registry.", "A")
    ask(r, "web.service.registry.", "MX")
    ask(r, "example.com.", "A")
    r.answer(b"junk")
    c = r.counters
    assert (c["answered"], c["nxdomain"], c["nodata"], c["refused"], c["dropped_malformed"]) == (2, 1, 1, 1, 1)
    assert (c["cache_misses"], c["cache_hits"]) == (3, 1)
    assert c["internal_errors"] == 0


def test_replies_copy_the_query_id_and_the_cd_bit() -> None:
    r = responder()
    q = query("web.service.registry.", "A", qid=0xBEEF)
    q.flags |= dns.flags.CD
    for _ in range(2):
        wire = r.answer(q.to_wire())
        assert wire is not None and wire[:2] == b"\xbe\xef"
        assert dns.message.from_wire(wire).flags & dns.flags.CD


def test_nxdomain_answers_are_cached_and_section_counts_are_right() -> None:
    r = responder()
    for _ in range(3):
        reply = ask(r, "nosuch.service.registry.", "A", edns=0)
        assert rcode(reply) == "NXDOMAIN" and len(section(reply, "authority", "SOA")) == 1
    assert r.counters["cache_hits"] == 2


def test_formerr_for_a_name_longer_than_255_octets() -> None:
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"      # 257 octets
    r = responder()
    wire = r.answer(header() + long_name + b"\x00\x01\x00\x01")
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert rcode(reply) == "FORMERR" and not reply.question


def test_queries_the_fast_path_declines_get_the_same_answer() -> None:
    """Trailing octets, or an extra additional record: dnslib parses them, the answer is unchanged."""
    r = responder()
    plain = query("Web.Service.Registry.", "A", qid=9).to_wire()
    expected = dns.message.from_wire(r.answer(plain))
    for packet in (plain + b"\x00", plain[:11] + b"\x01" + plain[12:] + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)):
        wire = r.answer(packet)
        assert wire is not None
        reply = dns.message.from_wire(wire)
        assert reply.question == expected.question and rcode(reply) == "NOERROR"
        assert sorted(rd.address for rd in reply.answer[0]) == sorted(rd.address for rd in expected.answer[0])
        assert reply.answer[0].name.to_text() == "Web.Service.Registry."
