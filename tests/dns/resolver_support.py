"""Helpers for the responder tests: catalogue views, and queries built and replies parsed by dnspython
(an implementation independent of dnslib, which builds our answers). No sockets."""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Iterable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from registry.catalogue import CatalogueView, HealthStatus, Instance
from registry_dns.resolver import Responder

NAMESERVERS = (("n1", "192.0.2.1"), ("n2", "192.0.2.2"), ("n2", "2001:db8::2"), ("n3", "192.0.2.3"))


def inst(service: str, ident: str, address: str, port: int = 80, *, tags: Iterable[str] = (),
         meta: Iterable[tuple[str, str]] = ()) -> Instance:
    return Instance(id=ident, service=service, address=address, port=port, tags=tuple(tags), meta=tuple(meta))


def many(service: str, n: int, *, port: int = 8000) -> list[Instance]:
    """``n`` IPv4 instances of ``service``, addresses 10.1.x.y, ports from ``port``."""
    return [inst(service, f"{service}-{i}", f"10.1.{i // 200}.{i % 200 + 1}", port + i) for i in range(n)]


def catalogue() -> list[Instance]:
    """A small catalogue exercising every address kind, tags and meta."""
    return [
        inst("web", "web-1", "10.0.0.1", 8080, tags=["prod", "blue"], meta=[("version", "1.2"), ("zone", "a")]),
        inst("web", "web-2", "10.0.0.2", 8081, tags=["prod"], meta=[("version", "1.3")]),
        inst("web", "web-3", "10.0.0.3", 8082, tags=["canary"]),
        inst("web", "Web-3", "2001:db8::3", 8083, tags=["prod"]),          # ids are case-sensitive
        inst("db", "db-1", "db1.example.com", 5432, tags=["primary"]),
        inst("db", "db-2", "db2.example.com", 5432),
        inst("six", "six-1", "2001:db8::6", 443),
        inst("mixed", "m-1", "10.9.0.1", 1000),
        inst("mixed", "m-2", "host.example.net", 1001),
        inst("plain", "p-1", "10.8.0.1", 7000),
    ]


def view(instances: Iterable[Instance] = (), applied_index: int = 7, version: int | None = None) -> CatalogueView:
    return CatalogueView.build(list(instances), applied_index=applied_index, version=version)


def responder(instances: Iterable[Instance] | None = None, *, applied_index: int = 7, seed: int = 1,
              **options: object) -> Responder:
    options.setdefault("nameservers", NAMESERVERS)
    r = Responder(rng=random.Random(seed), **options)  # type: ignore[arg-type]
    r.update(view(catalogue() if instances is None else instances, applied_index=applied_index))
    return r


def query(name: str, rdtype: str | int = "A", *, edns: int | None = None, payload: int = 1232,
          do: bool = False, rd: bool = True, qid: int | None = None) -> dns.message.QueryMessage:
    """A query as dnspython writes it; ``edns=None``: no OPT record."""
    q = dns.message.make_query(name, rdtype, use_edns=edns if edns is not None else False,
                               payload=payload, want_dnssec=do)
    if not rd:
        q.flags &= ~dns.flags.RD
    if qid is not None:
        q.id = qid
    return q


def ask(r: Responder, name: str, rdtype: str | int = "A", *, tcp: bool = False, stale: bool = False,
        **kw: object) -> dns.message.Message:
    """Send one query through ``r.answer`` and parse the reply with dnspython."""
    q = query(name, rdtype, **kw)  # type: ignore[arg-type]
    wire = r.answer(q.to_wire(), tcp=tcp, stale=stale)
    assert wire is not None, "responder dropped a well-formed query"
    reply = dns.message.from_wire(wire)
    assert reply.id == q.id
    assert reply.flags & dns.flags.QR
    return reply


def ask_wire(r: Responder, name: str, rdtype: str | int = "A", **kw: object) -> tuple[bytes, bytes]:
    """(query wire, reply wire)."""
    tcp = bool(kw.pop("tcp", False))
    q = query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]
    wire = r.answer(q, tcp=tcp)
    assert wire is not None
    return q, wire


def section(reply: dns.message.Message, which: str, rdtype: str) -> list[dns.rrset.RRset]:
    t = dns.rdatatype.from_text(rdtype)
    return [rrset for rrset in getattr(reply, which) if rrset.rdtype == t]


def rdatas(reply: dns.message.Message, rdtype: str, which: str = "answer") -> list:
    return [rd for rrset in section(reply, which, rdtype) for rd in rrset]


def addresses(reply: dns.message.Message, rdtype: str = "A", which: str = "answer") -> list[str]:
    return [rd.address for rd in rdatas(reply, rdtype, which)]


def soa_of(reply: dns.message.Message) -> tuple[dns.rrset.RRset, object]:
    rrsets = section(reply, "authority", "SOA")
    assert len(rrsets) == 1 and len(rrsets[0]) == 1, reply
    return rrsets[0], rrsets[0][0]


def rcode(reply: dns.message.Message) -> str:
    return dns.rcode.to_text(reply.rcode())


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def question(name: str = "web.service.registry.", rdtype: int = 1, rdclass: int = 1) -> bytes:
    return dns.name.from_text(name).to_wire() + struct.pack("!HH", rdtype, rdclass)


def with_status(v: CatalogueView, service: str, ident: str, status: HealthStatus, since_ms: int = 0,
                applied_index: int | None = None) -> CatalogueView:
    """The view after a health transition of one instance, made as the catalogue makes it: a new
    instance tuple for that service only (every other service's tuple is shared with ``v``)."""
    instances = tuple(dataclasses.replace(i, status=status, since_ms=since_ms) if i.id == ident else i
                      for i in v.instances(service))
    assert any(i.id == ident for i in instances), f"no instance {ident!r} of {service!r}"
    index = v.applied_index + 1 if applied_index is None else applied_index
    return CatalogueView(applied_index=index, version=index, services=v.services.with_instances(service, instances))


def health_view(instances: Iterable[Instance], applied_index: int = 7) -> CatalogueView:
    """A view of ``instances`` (validated) in which each keeps its own status and since_ms."""
    given = list(instances)
    v = view(given, applied_index=applied_index)
    for i in given:
        if i.status is not HealthStatus.PASSING:
            v = with_status(v, i.service.lower(), i.id, i.status, i.since_ms, applied_index=applied_index)
    return v
