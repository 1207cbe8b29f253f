"""The catalogue as DNS data: which records a name holds. Pure: no wire format, no cache, no I/O.

``Zone.plan(view, labels, qtype, serial)`` answers one question from one ``CatalogueView`` with a
``Plan``: an rcode, the answer records (dnslib ``RR`` objects, each with the address records of
its target for the additional section), the SOA for the authority section of a negative answer,
how answers may be reordered per query, and what part of the catalogue the answer depends on (so
that the responder's cache can keep it across catalogue versions that did not touch it).

The names of the zone (DOMAIN is ``registry.`` by default; all names are case-insensitive):

- ``DOMAIN``                         SOA; NS: every cluster node (``NAME.node.DOMAIN``).
- ``NAME.node.DOMAIN``               A/AAAA of that node (the NS glue).
- ``SERVICE.service.DOMAIN``         A/AAAA (shuffled), SRV, TXT (meta) of all serving instances.
- ``TAG.SERVICE.service.DOMAIN``     the same, only instances tagged TAG.
- ``_SERVICE._tcp.service.DOMAIN``   SRV of all serving instances (RFC 2782 form).
- ``_SERVICE._TAG.service.DOMAIN``   SRV of the serving instances tagged TAG.
- ``HEX.addr.DOMAIN``                SRV targets: A (8 hex digits) or AAAA (32 hex digits) of the
                                     address spelled in hex, e.g. ``0a000005.addr.registry.`` is
                                     10.0.0.5. Synthesised for every well-formed HEX, so a target
                                     keeps resolving even if its instance left between the SRV
                                     and the address lookup (Consul's ``.addr.`` scheme).
- ``service.DOMAIN``, ``_tcp.service.DOMAIN``, ``_TAG.service.DOMAIN``, ``node.DOMAIN``,
  ``addr.DOMAIN``: empty non-terminals (NODATA, not NXDOMAIN, while something exists below them,
  RFC 8020).

Choices worth knowing:

- Health: an instance that is not ``serving`` (critical) is in no answer. A name exists while
  any of its instances does, critical or not, so a name whose instances are all critical (for
  that name's tag) answers NODATA with the SOA, never NXDOMAIN: a resolver caches that for the
  SOA's negative TTL only, and the name comes back as soon as an instance passes again.

- NB: an SRV record of an instance registered with a host name has that host name as its target,
  not a CNAME under the zone: RFC 2782 forbids an alias as SRV target. Nothing is added to the
  additional section for it (out of zone; we never recurse).
- A/AAAA at a service name: the addresses of that family, duplicates merged, or NODATA if it
  has none. Only when *every* instance has a host name is the answer (to A, AAAA and CNAME) one
  CNAME to one of those hosts (chosen per query), not chased (out of zone).
  NB: a service with both IP and host-name instances answers A/AAAA with its IP instances
  only, and never with a CNAME, as Consul does: a name that holds a CNAME can hold no other
  data (RFC 1034 §3.6.2, RFC 2181 §10.1), so no answer can carry both, and a CNAME given for one
  type would be followed by caching resolvers for the other too, hiding the addresses. The
  host-name instances are in the SRV answer (their host name is the target). NB: the same name
  answers SRV and TXT too; a caching resolver that learnt an all-host-name service's CNAME may
  follow it for other types, which is why SRV clients should prefer the ``_SERVICE._tcp`` form.
- TXT: one record per distinct meta pair, ``key=value`` (RFC 1464: ``=`` and `````` in a key are
  escaped with a backquote), split into 255-octet character-strings when longer (the reader
  concatenates them, as for DKIM). NODATA if no instance has meta.
- ANY: one synthesised ``HINFO "RFC8482" ""`` at an existing name (RFC 8482 §4.2).
- SRV priority and weight are 1 for every instance: all equal, picked uniformly by the client.
- ``_tcp`` in ``_SERVICE._tcp`` is the RFC 2782 protocol label, never a tag filter (a tag named
  "tcp" is reachable as ``tcp.SERVICE.service.DOMAIN`` or ``_SERVICE._tcp`` unfiltered).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from dnslib import AAAA, CNAME, NS, RD, RR, SOA, SRV, TXT
from dnslib import A as A_RDATA

from registry.catalogue import AddressKind, CatalogueView, Instance

from .wire import (
    NOERROR,
    NXDOMAIN,
    T_A,
    T_AAAA,
    T_ANY,
    T_CNAME,
    T_HINFO,
    T_NS,
    T_SOA,
    T_SRV,
    T_TXT,
)

SERVICE, NODE, ADDR, TCP = b"service", b"node", b"addr", b"_tcp"
SRV_PRIORITY = SRV_WEIGHT = 1
TXT_CHUNK = 255
# SOA timers: meaningless without zone transfers (which we refuse), conventional values.
SOA_REFRESH_S, SOA_RETRY_S, SOA_EXPIRE_S = 3600, 600, 86400

# What cached answers depend on (the responder re-checks it when the view changes):
STATIC = ("static",)          # only the zone configuration (and the SOA serial)
ANY_SERVICE = ("any",)        # whether any service exists
ALL_SERVICES = ("all",)       # every service (the set of all tags)


def service_dep(name: str) -> tuple[str, str]:
    """The answer depends on the instances of service ``name`` only."""
    return ("svc", name)


def dep_token(dep: tuple[str, ...], view: CatalogueView) -> object:
    """The value of the catalogue that ``dep`` names; an answer stays valid while it is the same (``is``)."""
    kind = dep[0]
    if kind == "svc":
        return view.services.get(dep[1])
    if kind == "any":
        return len(view.services) > 0
    if kind == "all":
        return view.services
    return None


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer record and the address records of its target name (for the additional section)."""

    rr: RR
    glue: tuple[RR, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """What to answer. ``shape``: "all" (fixed order), "shuffle" (vary the order per query) or
    "one" (exactly one of ``answers`` per reply, varied per query: for a CNAME)."""

    rcode: int
    answers: tuple[Answer, ...] = ()
    soa: RR | None = None             # authority section (negative answers)
    shape: str = "all"
    dep: tuple[str, ...] = STATIC

    @property
    def kind(self) -> str:
        """The counter this answer counts in: answered, nxdomain or nodata."""
        if self.rcode == NXDOMAIN:
            return "nxdomain"
        return "answered" if self.answers else "nodata"

    @property
    def ends_with_soa(self) -> bool:
        """True if the encoded body ends with the SOA's RDATA (its serial is patched in place)."""
        return self.soa is not None or bool(self.answers and self.answers[-1].rr.rtype == T_SOA)


def address_label(address: str) -> bytes:
    """The ``addr`` label of an IP address: its packed bytes in lowercase hex (8 or 32 digits)."""
    return ipaddress.ip_address(address).packed.hex().encode("ascii")


def target_labels(instance: Instance, zone: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The SRV target of ``instance``: ``HEX.addr.DOMAIN`` for an address, else its host name."""
    if instance.address_kind is AddressKind.HOST:
        return tuple(instance.address.encode("ascii").split(b"."))
    return (address_label(instance.address), ADDR, *zone)


def escape_txt_key(key: str) -> str:
    """RFC 1464 §2: backquote-escape backquotes, ``=`` and a blank at either end of a key."""
    key = key.replace("`", "``").replace("=", "`=")
    if key[-1:] in (" ", "\t"):
        key = key[:-1] + "`" + key[-1]
    if key[:1] in (" ", "\t"):
        key = "`" + key
    return key


def txt_strings(key: str, value: str) -> list[bytes]:
    """The character-strings of one meta pair: ``key=value`` in UTF-8, cut into 255-octet pieces."""
    text = f"{escape_txt_key(key)}={value}".encode("utf-8")
    return [text[i : i + TXT_CHUNK] for i in range(0, len(text), TXT_CHUNK)] or [b""]


def _hex_address(label: bytes) -> str | None:
    if len(label) not in (8, 32) or label.strip(b"0123456789abcdef"):
        return None
    return str(ipaddress.ip_address(bytes.fromhex(label.decode("ascii"))))


def _text(label: bytes) -> str | None:
    """A label as a catalogue name (service, tag, node), or None if it cannot be one."""
    return label.decode("ascii") if label.isascii() else None


@dataclass(frozen=True, slots=True)
class ServiceName:
    """What a name under ``service.DOMAIN`` asks for: the instances of ``service`` (tagged ``tag``)."""

    service: str
    tag: str | None
    srv_only: bool  # the RFC 2782 forms (_SERVICE._tcp, _SERVICE._TAG) hold SRV records only


def service_name(rel: tuple[bytes, ...]) -> ServiceName | None:
    """The instances that ``rel`` (a lowercase name relative to the zone, ending in ``service``)
    names, or None if it names no instances (``service.DOMAIN``, a non-terminal, a malformed form)."""
    depth = len(rel)
    if depth == 2:
        service = _text(rel[0])
        if service is None or rel[0][:1] == b"_":
            return None
        return ServiceName(service, None, False)
    if depth != 3:
        return None
    first, second = rel[0], rel[1]
    if first[:1] == b"_" and second[:1] == b"_":
        service = _text(first[1:])
        tag = None if second == TCP else _text(second[1:])
        if service is None or (tag is None and second != TCP):
            return None
        return ServiceName(service, tag, True)
    if first[:1] != b"_" and second[:1] != b"_":
        service, tag = _text(second), _text(first)
        if service is None or tag is None:
            return None
        return ServiceName(service, tag, False)
    return None


def serving_only(instances: tuple[Instance, ...]) -> tuple[Instance, ...]:
    """The instances DNS answers with: those not critical (``instances`` itself if all are)."""
    for instance in instances:
        if not instance.serving:
            return tuple(i for i in instances if i.serving)
    return instances


class Zone:
    """The zone's configuration and the question -> ``Plan`` mapping."""

    __slots__ = (
        "labels", "ttl", "negative_ttl", "nameservers", "_mname", "_rname", "_tags_of", "_tags",
    )  # fmt: skip

    # Invariant: _tags is the set of all tags of _tags_of.services (built on first use per view).

    def __init__(
        self,
        labels: tuple[bytes, ...],
        *,
        ttl: int,
        negative_ttl: int,
        nameservers: Sequence[tuple[str, Sequence[str]]],
    ) -> None:
        self.labels = labels
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        # Node label -> its addresses, in the order given.
        self.nameservers: dict[bytes, tuple[str, ...]] = {
            name.encode("ascii"): tuple(ips) for name, ips in nameservers
        }
        first = next(iter(self.nameservers), None)
        self._mname = (first, NODE, *labels) if first is not None else labels
        self._rname = (b"hostmaster", *labels)
        self._tags_of: object = None
        self._tags: frozenset[str] = frozenset()

    def contains(self, labels: tuple[bytes, ...]) -> bool:
        n = len(self.labels)
        return len(labels) >= n and (n == 0 or labels[-n:] == self.labels)

    def soa(self, serial: int, *, negative: bool) -> RR:
        """The apex SOA. In a negative answer its TTL is min(TTL, MINIMUM) (RFC 2308 §3)."""
        ttl = min(self.ttl, self.negative_ttl) if negative else self.ttl
        times = (serial, SOA_REFRESH_S, SOA_RETRY_S, SOA_EXPIRE_S, self.negative_ttl)
        return RR(self.labels, T_SOA, ttl=ttl, rdata=SOA(self._mname, self._rname, times))

    def _all_tags(self, view: CatalogueView) -> frozenset[str]:
        if self._tags_of is not view.services:
            self._tags = frozenset(t for name in view.service_names() for i in view.instances(name) for t in i.tags)
            self._tags_of = view.services
        return self._tags

    # -- the mapping ---------------------------------------------------------------------------

    def plan(self, view: CatalogueView, qname: tuple[bytes, ...], qtype: int, serial: int) -> Plan:
        """The answer to (``qname``, ``qtype``, IN), ``qname`` lowercase and inside the zone."""
        rel = qname[: len(qname) - len(self.labels)]
        if not rel:
            return self._apex(qname, qtype, serial)
        kind, depth = rel[-1], len(rel)
        if kind == SERVICE:
            return self._service_tree(view, qname, rel, qtype, serial)
        if kind == NODE:
            if depth == 1:
                return self._exists(qname, qtype, serial, STATIC) if self.nameservers else self._nx(serial)
            ips = self.nameservers.get(rel[0]) if depth == 2 else None
            if ips is None:
                return self._nx(serial)
            return self._addresses(qname, qtype, serial, ips, STATIC)
        if kind == ADDR:
            if depth == 1:
                return self._exists(qname, qtype, serial, STATIC)
            address = _hex_address(rel[0]) if depth == 2 else None
            if address is None:
                return self._nx(serial)
            return self._addresses(qname, qtype, serial, (address,), STATIC)
        return self._nx(serial)

    def _service_tree(
        self, view: CatalogueView, qname: tuple[bytes, ...], rel: tuple[bytes, ...], qtype: int, serial: int
    ) -> Plan:
        depth = len(rel)
        if depth == 1:                                        # service.DOMAIN
            return self._exists(qname, qtype, serial, ANY_SERVICE) if len(view.services) else self._nx(serial, ANY_SERVICE)
        first = rel[0]
        if depth == 2 and first[:1] == b"_":                  # _tcp.service / _TAG.service: non-terminals
            if first == TCP:
                found, dep = len(view.services) > 0, ANY_SERVICE
            else:
                tag = _text(first[1:])
                found, dep = tag is not None and tag in self._all_tags(view), ALL_SERVICES
            return self._exists(qname, qtype, serial, dep) if found else self._nx(serial, dep)
        name = service_name(rel)
        if name is None:
            return self._nx(serial)
        dep = service_dep(name.service)
        instances = view.instances(name.service, name.tag)
        if not instances:
            return self._nx(serial, dep)
        # NB: the name exists while any instance does, critical or not: with none serving it is
        # NODATA (the SOA says for how long to cache that), never NXDOMAIN.
        serving = serving_only(instances)
        if name.srv_only and qtype != T_SRV and qtype != T_ANY:
            return self._nodata(serial, dep)
        return self._instances(qname, qtype, serial, serving, dep)

    def _apex(self, qname: tuple[bytes, ...], qtype: int, serial: int) -> Plan:
        if qtype == T_SOA:
            return Plan(NOERROR, (Answer(self.soa(serial, negative=False)),))
        if qtype == T_NS and self.nameservers:
            answers = []
            for name, ips in self.nameservers.items():
                target = (name, NODE, *self.labels)
                answers.append(Answer(RR(qname, T_NS, ttl=self.ttl, rdata=NS(target)),
                                      tuple(_address_rr(target, ip, self.ttl) for ip in ips)))
            return Plan(NOERROR, tuple(answers))
        return self._exists(qname, qtype, serial, STATIC)

    def _instances(
        self, qname: tuple[bytes, ...], qtype: int, serial: int, instances: tuple[Instance, ...], dep: tuple[str, ...]
    ) -> Plan:
        if not instances:
            return self._exists(qname, qtype, serial, dep)
        ttl = self.ttl
        if qtype == T_A or qtype == T_AAAA:
            family = AddressKind.IPV4 if qtype == T_A else AddressKind.IPV6
            addresses = sorted({i.address for i in instances if i.address_kind is family})
            if addresses:
                return self._addresses(qname, qtype, serial, addresses, dep)
        if (qtype == T_A or qtype == T_AAAA or qtype == T_CNAME) and all(
            i.address_kind is AddressKind.HOST for i in instances
        ):
            return self._cname(qname, qtype, serial, instances, dep)
        if qtype == T_A or qtype == T_AAAA:
            return self._nodata(serial, dep)
        if qtype == T_SRV:
            answers = []
            seen: set[tuple[int, tuple[bytes, ...]]] = set()
            for instance in instances:
                target = target_labels(instance, self.labels)
                if (instance.port, target) in seen:
                    continue
                seen.add((instance.port, target))
                glue = () if instance.address_kind is AddressKind.HOST else (_address_rr(target, instance.address, ttl),)
                rdata = SRV(SRV_PRIORITY, SRV_WEIGHT, instance.port, target)
                answers.append(Answer(RR(qname, T_SRV, ttl=ttl, rdata=rdata), glue))
            return Plan(NOERROR, tuple(answers), shape="shuffle", dep=dep)
        if qtype == T_TXT:
            pairs = sorted({pair for instance in instances for pair in instance.meta})
            if not pairs:
                return self._nodata(serial, dep)
            return Plan(NOERROR, tuple(Answer(RR(qname, T_TXT, ttl=ttl, rdata=TXT(txt_strings(k, v)))) for k, v in pairs), dep=dep)
        return self._exists(qname, qtype, serial, dep)

    def _cname(
        self, qname: tuple[bytes, ...], qtype: int, serial: int, instances: tuple[Instance, ...], dep: tuple[str, ...]
    ) -> Plan:
        """One CNAME to one of the host-name instances (varied per query), or NODATA if none."""
        hosts = sorted({i.address for i in instances if i.address_kind is AddressKind.HOST})
        if not hosts:
            return self._nodata(serial, dep)
        rdatas = (CNAME(tuple(host.encode("ascii").split(b"."))) for host in hosts)
        return Plan(NOERROR, tuple(Answer(RR(qname, T_CNAME, ttl=self.ttl, rdata=r)) for r in rdatas), shape="one", dep=dep)

    def _addresses(
        self, qname: tuple[bytes, ...], qtype: int, serial: int, addresses: Sequence[str], dep: tuple[str, ...]
    ) -> Plan:
        if qtype != T_A and qtype != T_AAAA:
            return self._exists(qname, qtype, serial, dep)
        ipv6 = qtype == T_AAAA
        rrs = tuple(Answer(_address_rr(qname, a, self.ttl)) for a in addresses if (":" in a) is ipv6)
        if rrs:
            return Plan(NOERROR, rrs, shape="shuffle", dep=dep)
        return self._exists(qname, qtype, serial, dep)

    def _exists(self, qname: tuple[bytes, ...], qtype: int, serial: int, dep: tuple[str, ...]) -> Plan:
        """The name exists but holds no records of ``qtype``: NODATA, or the RFC 8482 answer to ANY."""
        if qtype == T_ANY:
            return Plan(NOERROR, (Answer(RR(qname, T_HINFO, ttl=self.ttl, rdata=RD(b"\x07RFC8482\x00"))),), dep=dep)
        return self._nodata(serial, dep)

    def _nodata(self, serial: int, dep: tuple[str, ...]) -> Plan:
        return Plan(NOERROR, soa=self.soa(serial, negative=True), dep=dep)

    def _nx(self, serial: int, dep: tuple[str, ...] = STATIC) -> Plan:
        return Plan(NXDOMAIN, soa=self.soa(serial, negative=True), dep=dep)


def _address_rr(owner: tuple[bytes, ...], address: str, ttl: int) -> RR:
    if ":" in address:
        return RR(owner, T_AAAA, ttl=ttl, rdata=AAAA(address))
    return RR(owner, T_A, ttl=ttl, rdata=A_RDATA(address))
