"""Hypothesis-generated malformed and odd packets (DNS issue point 7): answer() never raises, returns
None or a reply dnspython can parse (and that fits the size rules), and the responder keeps
answering correctly afterwards, cache and all."""

from __future__ import annotations

import struct

import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .resolver_support import addresses, ask, catalogue, many, query, rcode, responder

R = responder(catalogue() + many("big", 40))         # shared on purpose: every example runs on the same cache
NAMES = ["web.service.registry.", "WEB.service.registry.", "_web._tcp.service.registry.", "registry.",
         "prod.web.service.registry.", "big.service.registry.", "nosuch.service.registry.", "example.com.",
         "db.service.registry.", "0a000001.addr.registry.", "n2.node.registry.", "."]
TYPES = ["A", "AAAA", "SRV", "TXT", "SOA", "NS", "ANY", "MX", "CNAME", "AXFR", "IXFR", 0, 41, 65535]


@st.composite
def valid_queries(draw: st.DrawFn) -> bytes:
    edns = draw(st.sampled_from([None, 0]))
    q = query(draw(st.sampled_from(NAMES)), draw(st.sampled_from(TYPES)), edns=edns,
              payload=draw(st.integers(0, 65535)), do=edns is not None and draw(st.booleans()),
              qid=draw(st.integers(0, 65535)))
    return q.to_wire()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    packet = bytearray(draw(valid_queries()))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "extend", "counts", "flags"]))
        if op == "flip" and packet:
            i = draw(st.integers(0, len(packet) - 1))
            packet[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and packet:
            packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
        elif op == "cut":
            del packet[draw(st.integers(0, len(packet))):]
        elif op == "insert":
            i = draw(st.integers(0, len(packet)))
            packet[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "extend":
            packet += draw(st.binary(max_size=40))
        elif op == "counts" and len(packet) >= 12:
            packet[4:12] = struct.pack("!HHHH", *(draw(st.integers(0, 3)) for _ in range(4)))
        elif op == "flags" and len(packet) >= 4:
            packet[2:4] = draw(st.binary(min_size=2, max_size=2))
    return bytes(packet)


@st.composite
def labelled(draw: st.DrawFn) -> bytes:
    """A header and a question of arbitrary labels (any octets, pointers, long names) and an OPT."""
    labels = draw(st.lists(st.binary(min_size=0, max_size=70), max_size=8))
    name = b"".join(bytes([min(len(label), draw(st.sampled_from([len(label), 63, 64, 192, 255])))]) + label
                    for label in labels)
    name += draw(st.sampled_from([b"\x00", b"\xc0\x0c", b"\xc0\x00", b""]))
    tail = struct.pack("!HH", draw(st.integers(0, 65535)), draw(st.sampled_from([1, 3, 255, 254])))
    opt = b""
    if draw(st.booleans()):
        opt = b"\x00" + struct.pack("!HHBBHH", 41, draw(st.integers(0, 65535)), draw(st.integers(0, 2)),
                                    draw(st.integers(0, 2)), draw(st.sampled_from([0, 0x8000])), 0)
    head = struct.pack("!HHHHHH", draw(st.integers(0, 65535)), draw(st.sampled_from([0x0100, 0, 0x0110, 0x2100])),
                       1, 0, 0, 1 if opt else 0)
    return head + name + tail + opt


def check_reply(packet: bytes, tcp: bool, stale: bool) -> None:
    wire = R.answer(packet, tcp=tcp, stale=stale)
    assert R.counters["internal_errors"] == 0
    if wire is None:
        return
    assert isinstance(wire, bytes)
    reply = dns.message.from_wire(wire)
    assert wire[:2] == packet[:2] and reply.flags & 0x8000
    assert len(wire) <= 65535
    if not tcp:
        assert len(wire) <= (512 if reply.edns < 0 else 1232)


def still_correct() -> None:
    reply = ask(R, "web.service.registry.", "A")
    assert rcode(reply) == "NOERROR" and sorted(addresses(reply)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    reply = ask(R, "big.service.registry.", "SRV", edns=0)
    assert rcode(reply) == "NOERROR" and len(reply.answer[0]) > 10
    assert rcode(ask(R, "nosuch.service.registry.", "A")) == "NXDOMAIN"


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(packet=st.binary(max_size=600), tcp=st.booleans(), stale=st.booleans())
def test_random_bytes(packet: bytes, tcp: bool, stale: bool) -> None:
    check_reply(packet, tcp, stale)
    still_correct()


@FUZZ
@given(packet=mutated(), tcp=st.booleans(), stale=st.booleans())
def test_mutated_queries(packet: bytes, tcp: bool, stale: bool) -> None:
    check_reply(packet, tcp, stale)
    still_correct()


@FUZZ
@given(packet=labelled(), tcp=st.booleans())
def test_odd_labels_pointers_and_opt_records(packet: bytes, tcp: bool) -> None:
    check_reply(packet, tcp, False)
    still_correct()


@FUZZ
@given(packet=valid_queries(), tcp=st.booleans())
def test_valid_queries_always_get_a_reply(packet: bytes, tcp: bool) -> None:
    wire = R.answer(packet, tcp=tcp)
    assert wire is not None
    check_reply(packet, tcp, False)
