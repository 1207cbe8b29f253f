"""Health in a real DNS child (issue 14): fed committed ``Register`` and ``SetHealth`` entries as the
agent feeds them, the child answers without an instance that turned critical (UDP and TCP, A and
SRV), answers NODATA with the SOA (never NXDOMAIN) when all are critical, and with the instance
again once it passes. Queried with dnspython over loopback, with answers cached before each change."""

from __future__ import annotations

from collections.abc import Callable

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from registry.catalogue import (
    HEALTH_CLIENT_ID,
    Catalogue,
    HealthSet,
    HealthStatus,
    Register,
    Registered,
    Request,
    SetHealth,
    encode_request,
    health_seq,
)
from registry_dns.process import DnsProcess

from .test_process import HOST, NORMAL, SETTLE_S, WEB, eventually, make_dns  # noqa: F401 (a fixture)

SRV_NAME = "_web._tcp.service.registry."
AT_MS = 1_700_000_000_000
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


class Feed:
    """Committed entries for the child, applied to a node-side catalogue too (the reference)."""

    def __init__(self, process: DnsProcess) -> None:
        self.process = process
        self.node = Catalogue()
        self.index = 0
        self.seq = 0
        self.revision: dict[str, int] = {}

    def commit(self, client: str, seq: int, command: object) -> None:
        self.index += 1
        data = encode_request(Request(client, seq, command))
        result = self.node.apply(self.index, data).result
        assert isinstance(result, (Registered, HealthSet)) and getattr(result, "changed", True), result
        self.process.apply([(self.index, NORMAL, data)])

    def register(self, address: str) -> None:
        self.seq += 1
        self.commit("c1", self.seq, Register("web", address, 8080, instance_id=address, at_ms=AT_MS))
        self.revision[address] = self.index

    def set_health(self, address: str, status: HealthStatus) -> None:
        self.seq += 1
        self.commit(HEALTH_CLIENT_ID, health_seq(1, self.seq),
                    SetHealth("web", address, self.revision[address], status, AT_MS + self.index, "test"))


def ask(process: DnsProcess, qname: str, rdtype: str, *, tcp: bool) -> dns.message.Message:
    process.leader_contact(0.0)       # as the node loop does every tick: the child stays fresh
    q = dns.message.make_query(qname, rdtype, use_edns=0)
    port = process.address[1]
    reply = dns.query.tcp(q, HOST, port=port, timeout=SETTLE_S) if tcp else \
        dns.query.udp(q, HOST, port=port, timeout=SETTLE_S)
    # The premise of every check: the name exists throughout, whatever the health of its instances.
    assert reply.rcode() == dns.rcode.NOERROR, f"{qname} {rdtype}: {dns.rcode.to_text(reply.rcode())}"
    return reply


def served(process: DnsProcess, *, tcp: bool) -> tuple[set[str], set[str]]:
    """(the A answer's addresses, the SRV answer's glue addresses) of the web service."""
    a = ask(process, WEB, "A", tcp=tcp)
    srv = ask(process, SRV_NAME, "SRV", tcp=tcp)
    assert len([rd for rrset in srv.answer for rd in rrset]) == len(
        [rd for rrset in srv.additional for rd in rrset if rrset.rdtype == dns.rdatatype.A])
    return ({rd.address for rrset in a.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A},
            {rd.address for rrset in srv.additional for rd in rrset if rrset.rdtype == dns.rdatatype.A})


def answers_with(process: DnsProcess, expected: set[str], what: str) -> None:
    """The child reaches ``expected`` over UDP (it applies the feed in its own time); from then on
    UDP and TCP, A and SRV all agree on it."""
    eventually(process, lambda: served(process, tcp=False) == (expected, expected), what=what)
    for tcp in (False, True):
        assert served(process, tcp=tcp) == (expected, expected), f"{what}, {'TCP' if tcp else 'UDP'}"


def nodata_with_soa(process: DnsProcess, serial: int) -> None:
    for tcp in (False, True):
        for qname, rdtype in ((WEB, "A"), (SRV_NAME, "SRV"), (WEB, "TXT")):
            reply = ask(process, qname, rdtype, tcp=tcp)
            soa = [rd for rrset in reply.authority for rd in rrset if rrset.rdtype == dns.rdatatype.SOA]
            assert not reply.answer and len(soa) == 1 and soa[0].serial == serial, reply


def test_the_child_serves_only_passing_instances(make_dns: Callable[..., DnsProcess]) -> None:
    """Critical instances leave the answers (UDP and TCP), all critical is NODATA with the SOA
    whose serial is the applied index, and a passing instance comes back; never NXDOMAIN."""
    process = make_dns()
    process.leader_contact(0.0)
    feed = Feed(process)
    for address in ADDRESSES:
        feed.register(address)
    answers_with(process, set(ADDRESSES), "the registered instances")

    feed.set_health("10.0.0.2", HealthStatus.CRITICAL)
    answers_with(process, {"10.0.0.1", "10.0.0.3"}, "10.0.0.2 critical")

    feed.set_health("10.0.0.1", HealthStatus.CRITICAL)
    feed.set_health("10.0.0.3", HealthStatus.CRITICAL)
    eventually(process, lambda: not ask(process, WEB, "A", tcp=False).answer, what="all critical")
    nodata_with_soa(process, serial=feed.index)

    feed.set_health("10.0.0.2", HealthStatus.PASSING)
    answers_with(process, {"10.0.0.2"}, "10.0.0.2 passing again")
    feed.set_health("10.0.0.1", HealthStatus.PASSING)
    answers_with(process, {"10.0.0.1", "10.0.0.2"}, "10.0.0.1 passing again")
    eventually(process, lambda: process.stats().get("applied_index") == feed.index, what="the report")
    assert process.stats()["stale"] is False
