"""Reply sizes and truncation (DNS issue point 5), with 100 instances behind one name."""

from __future__ import annotations

import collections

import dns.flags
import dns.message
import pytest

from .resolver_support import inst, many, query, rdatas, responder

NAME = "big.service.registry."


def big(n: int = 100):
    return responder(many("big", n) + [inst("v6", f"v6-{i}", f"2001:db8::{i + 1:x}", 9000 + i) for i in range(100)])


def send(r, name: str, rdtype: str, **kw) -> tuple[bytes, dns.message.Message]:
    tcp = kw.pop("tcp", False)
    wire = r.answer(query(name, rdtype, **kw).to_wire(), tcp=tcp)
    assert wire is not None
    return wire, dns.message.from_wire(wire)


def assert_glue_matches(reply: dns.message.Message) -> None:
    """The additional section holds exactly one address record per SRV target kept, nothing else."""
    targets = [rd.target for rd in rdatas(reply, "SRV")]
    glue = collections.Counter(rrset.name for rrset in reply.additional for _ in rrset)
    assert set(glue) == set(targets), (targets, glue)
    assert all(count == 1 for count in glue.values())


@pytest.mark.parametrize("rdtype", ["A", "SRV"])
def test_without_edns_udp_replies_fit_512_octets_and_set_tc(rdtype: str) -> None:
    r = big()
    for _ in range(20):
        wire, reply = send(r, NAME, rdtype)
        assert len(wire) <= 512
        assert reply.flags & dns.flags.TC
        kept = rdatas(reply, rdtype)
        assert 0 < len(kept) < 100
        if rdtype == "SRV":
            assert_glue_matches(reply)
    assert r.counters["truncated"] == 20


@pytest.mark.parametrize("rdtype", ["A", "SRV"])
def test_with_edns_the_client_buffer_is_honoured_up_to_the_cap(rdtype: str) -> None:
    r = big()
    sizes = {}
    for payload in (512, 900, 1232, 4096):
        wire, reply = send(r, NAME, rdtype, edns=0, payload=payload)
        assert len(wire) <= min(payload, 1232), payload
        assert reply.flags & dns.flags.TC and reply.edns == 0
        sizes[payload] = len(rdatas(reply, rdtype))
        if rdtype == "SRV":
            assert_glue_matches(reply)
    assert sizes[512] < sizes[900] < sizes[1232] == sizes[4096]
    wire, _ = send(r, NAME, rdtype, edns=0, payload=1232)
    assert len(wire) > 1232 - 64                                   # the room is used, not wasted


def test_a_tiny_edns_buffer_counts_as_512() -> None:
    """RFC 6891 §6.2.5: values below 512 are treated as 512."""
    wire, reply = send(big(), NAME, "A", edns=0, payload=100)
    assert 400 < len(wire) <= 512 and reply.flags & dns.flags.TC


@pytest.mark.parametrize("rdtype, family", [("A", "A"), ("SRV", "A")])
def test_tcp_returns_the_full_answer(rdtype: str, family: str) -> None:
    r = big()
    for edns in (None, 0):
        wire, reply = send(r, NAME, rdtype, tcp=True, edns=edns)
        assert not reply.flags & dns.flags.TC
        assert len(rdatas(reply, rdtype)) == 100
        assert len(wire) <= 65535
        if rdtype == "SRV":
            assert_glue_matches(reply)
            assert len(rdatas(reply, family, "additional")) == 100


def test_tcp_srv_with_ipv6_targets_is_complete_and_consistent() -> None:
    wire, reply = send(big(), "v6.service.registry.", "SRV", tcp=True)
    assert len(rdatas(reply, "SRV")) == 100 and len(rdatas(reply, "AAAA", "additional")) == 100
    assert_glue_matches(reply)
    wire, reply = send(big(), "v6.service.registry.", "SRV")
    assert len(wire) <= 512 and reply.flags & dns.flags.TC
    assert_glue_matches(reply)


def test_truncated_replies_show_every_instance_over_many_queries() -> None:
    """Each truncated reply is a different window of the shuffled records, so nobody is starved."""
    r = big()
    seen: set[str] = set()
    firsts: set[str] = set()
    for _ in range(400):
        _, reply = send(r, NAME, "A")
        got = [rd.address for rd in rdatas(reply, "A")]
        seen.update(got)
        firsts.add(got[0])
    assert len(seen) == 100
    assert len(firsts) >= 50


def test_answers_that_fit_are_not_truncated() -> None:
    r = responder(many("small", 5))
    wire, reply = send(r, "small.service.registry.", "SRV")
    assert len(wire) <= 512 and not reply.flags & dns.flags.TC
    assert len(rdatas(reply, "SRV")) == 5
    assert r.counters["truncated"] == 0


def test_a_single_record_too_big_for_udp_leaves_an_empty_truncated_answer() -> None:
    """One TXT record of ~1 KB cannot fit 512 octets: TC with no answer; TCP has it."""
    r = responder([inst("m", "m1", "10.0.0.1", meta=[("k", "é" * 512)])])
    wire, reply = send(r, "m.service.registry.", "TXT")
    assert len(wire) <= 512 and reply.flags & dns.flags.TC and not reply.answer
    _, reply = send(r, "m.service.registry.", "TXT", tcp=True)
    assert not reply.flags & dns.flags.TC and b"".join(rdatas(reply, "TXT")[0].strings) == ("k=" + "é" * 512).encode()


def test_tcp_answers_larger_than_16_kib_still_point_correctly() -> None:
    """Past the 14-bit pointer range, glue owners are written out: still consistent over TCP."""
    r = responder(many("huge", 600))
    wire, reply = send(r, "huge.service.registry.", "SRV", tcp=True)
    assert len(wire) > 0x4000 and len(wire) <= 65535
    assert not reply.flags & dns.flags.TC
    assert len(rdatas(reply, "SRV")) == 600
    assert_glue_matches(reply)


def test_answers_beyond_65535_octets_are_truncated_even_over_tcp() -> None:
    r = responder(many("giant", 1500))
    wire, reply = send(r, "giant.service.registry.", "SRV", tcp=True)
    assert len(wire) <= 65535 and reply.flags & dns.flags.TC
    assert_glue_matches(reply)
