"""Why a DNS name answers what it does: for each instance of the service the name asks for, whether
it is in the answer and, if not, why. Pure: a ``CatalogueView`` and a question in, an
``Explanation`` out; no I/O, no clock. ``registry explain NAME [TYPE]`` prints one.

It answers from the responder's own parts, so that it cannot disagree with it: the name is parsed
by ``records.service_name``, the answer planned by ``records.Zone.plan`` and encoded by
``resolver.encode_plan``, and truncation decided by ``resolver.fit_variant`` on those bytes.
tests/dns/test_explain.py checks it against real replies for random catalogues and questions.

An instance's reason, the first that applies:

- ``tag``: the name asks for a tag the instance lacks;
- ``critical``: it is not serving (with its ``since_ms`` and ``output``);
- ``family``: A or AAAA asked and the instance has the other family or a host name (which is in
  the SRV answer as a target, and in the A/AAAA answer only as the CNAME of an all-host-name
  service);
- ``no_meta``: TXT asked and the instance has no meta;
- ``type``: the name holds no record of that type for any instance (MX, ANY, A at ``_S._tcp``...);
- ``truncated``: it is in the full answer (over TCP), but the UDP reply of ``max_udp`` octets
  cannot hold every record, so this one is left out of some replies (the order of shuffled
  records varies per query) or of every reply (TXT keeps its fixed order).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from ipaddress import ip_address
from typing import Any

from dnslib import QTYPE, RCODE, RR

from registry.catalogue import AddressKind, CatalogueView, Instance

from .records import ADDR, NODE, SERVICE, Plan, Zone, service_name, target_labels, txt_strings
from .resolver import domain_labels, encode_plan, fit_variant, nameserver_table
from .wire import (
    HEADER_LEN,
    MAX_LABEL,
    MAX_MESSAGE,
    MAX_NAME,
    MIN_UDP_PAYLOAD,
    NOTIMP,
    OPT_LEN,
    REFUSED,
    T_A,
    T_AAAA,
    T_ANY,
    T_AXFR,
    T_CNAME,
    T_IXFR,
    T_SRV,
    T_TXT,
    encode_name,
)
from .zone import DEFAULT_DOMAIN

__all__ = ["Explanation", "Reason", "Verdict", "explain", "parse_qtype"]

DEFAULT_MAX_UDP = 1232  # the responder's default max_udp_payload, and dig's default EDNS size


class Reason(enum.Enum):
    """Why an instance of the service is not in the answer (module doc)."""

    TAG = "tag"
    CRITICAL = "critical"
    FAMILY = "family"
    NO_META = "no_meta"
    TYPE = "type"
    TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One instance: in the answer (in every reply; for the CNAME of an all-host-name service, whose
    replies hold one CNAME each, one of those chosen per reply), or ``reason`` (and ``detail``,
    for people) why not."""

    instance: Instance
    in_answer: bool
    reason: Reason | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        i = self.instance
        return {
            "instance_id": i.id, "address": i.address, "port": i.port, "status": i.status.value,
            "since_ms": i.since_ms, "output": i.output, "in_answer": self.in_answer,
            "reason": self.reason.value if self.reason is not None else None, "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    """The answer to (``qname``, ``qtype``, IN) and why.

    - ``rcode``: the responder's (``rcode_name``: its mnemonic); ``answers``: the records of the
      full answer (over TCP) in presentation form, as the responder plans them (shuffled per
      query for A/AAAA/SRV; one CNAME per reply when ``shape`` is "one");
    - ``truncated``: a UDP reply of ``max_udp`` octets carries TC (not every record fits);
    - ``service``, ``tag``: what the name asks for (None if it names no service);
    - ``instances``: every instance of ``service``, sorted by id (() if it names no service);
    - ``summary``: one sentence for people.
    """

    qname: str
    qtype: str
    rcode: int
    rcode_name: str
    summary: str
    service: str | None = None
    tag: str | None = None
    answers: tuple[str, ...] = ()
    shape: str = "all"
    truncated: bool = False
    max_udp: int = DEFAULT_MAX_UDP
    instances: tuple[Verdict, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``registry explain --json``)."""
        return {
            "qname": self.qname, "qtype": self.qtype, "rcode": self.rcode_name, "summary": self.summary,
            "service": self.service, "tag": self.tag, "answers": list(self.answers), "shape": self.shape,
            "truncated": self.truncated, "max_udp": self.max_udp,
            "instances": [v.as_dict() for v in self.instances],
        }


def parse_qtype(qtype: int | str) -> int:
    """A query type from its number or mnemonic ("A", "srv", "TYPE65"); ValueError otherwise."""
    if isinstance(qtype, bool) or not isinstance(qtype, (int, str)):
        raise ValueError(f"query type must be a mnemonic such as A, AAAA, SRV, TXT or a number, got {qtype!r}")
    if isinstance(qtype, str):
        text = qtype.strip().upper()
        if text in QTYPE.reverse:
            return int(QTYPE.reverse[text])
        if text.startswith("TYPE") and text[4:].isdigit():
            qtype = int(text[4:])
        elif text.isdigit():
            qtype = int(text)
        else:
            raise ValueError(f"unknown query type {text!r}: use A, AAAA, SRV, TXT, ANY, ... or TYPEnnn")
    if not 0 <= qtype <= 0xFFFF:
        raise ValueError(f"query type must be from 0 to 65535, got {qtype}")
    return qtype


def _qtype_name(qtype: int) -> str:
    name = QTYPE.get(qtype)
    return name if isinstance(name, str) and not name.isdigit() else f"TYPE{qtype}"


def _parse_qname(qname: str) -> tuple[bytes, ...]:
    if not isinstance(qname, str):
        raise ValueError(f"name must be a string, got {type(qname).__name__}")
    text = qname.strip().rstrip(".").lower()
    if not text.isascii() or "\\" in text:
        raise ValueError(f"invalid name {qname!r}: use dot-separated ASCII labels (no escapes)")
    labels = tuple(label.encode("ascii") for label in text.split(".")) if text else ()
    if any(not label or len(label) > MAX_LABEL for label in labels) or len(encode_name(labels)) > MAX_NAME:
        raise ValueError(f"invalid name {qname!r}: labels of 1-63 octets, at most 255 octets in all")
    return labels


def _since(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _rr_key(rr: RR) -> tuple[Any, ...]:
    """What an answer record says, comparable with ``_keys_of`` an instance."""
    if rr.rtype == T_A or rr.rtype == T_AAAA:
        return ("addr", str(ip_address(str(rr.rdata))))
    if rr.rtype == T_SRV:
        return ("srv", rr.rdata.port, tuple(rr.rdata.target.label))
    if rr.rtype == T_TXT:
        return ("txt", tuple(rr.rdata.data))
    if rr.rtype == T_CNAME:
        return ("cname", tuple(rr.rdata.label.label))
    return ("other", rr.rtype)


def _keys_of(instance: Instance, zone: tuple[bytes, ...]) -> set[tuple[Any, ...]]:
    """Every record an instance could put in an answer, as ``_rr_key`` writes it."""
    keys: set[tuple[Any, ...]] = {("srv", instance.port, target_labels(instance, zone))}
    if instance.address_kind is AddressKind.HOST:
        keys.add(("cname", tuple(instance.address.encode("ascii").split(b"."))))
    else:
        keys.add(("addr", instance.address))
    keys.update(("txt", tuple(txt_strings(k, v))) for k, v in instance.meta)
    return keys


def explain(
    view: CatalogueView,
    qname: str,
    qtype: int | str,
    zone: str = DEFAULT_DOMAIN,
    max_udp: int = DEFAULT_MAX_UDP,
    *,
    edns: bool = True,
    nameservers: Sequence[tuple[str, str]] = (),
) -> Explanation:
    """Explain the responder's answer to (``qname``, ``qtype``, IN) from ``view``.

    ``zone``: the responder's domain; ``max_udp``: the UDP reply size to judge truncation by (the
    responder's ``max_udp_payload``, which a client offering at least that much gets; ``edns``
    False: a client without EDNS, always 512); ``nameservers``: the responder's, for node names.
    Raises ValueError for a malformed name, type, zone or size.
    """
    if type(max_udp) is not int or not MIN_UDP_PAYLOAD <= max_udp <= MAX_MESSAGE:
        raise ValueError(f"max_udp must be an integer from 512 to 65535, got {max_udp!r}")
    zone_labels = domain_labels(zone)
    labels = _parse_qname(qname)
    qt = parse_qtype(qtype)
    shown = _zone_text(labels)
    tname = _qtype_name(qt)
    base = {"qname": shown, "qtype": tname, "max_udp": max_udp}
    responder_zone = Zone(zone_labels, ttl=30, negative_ttl=5, nameservers=nameserver_table(nameservers))
    if not responder_zone.contains(labels):
        return Explanation(rcode=REFUSED, rcode_name="REFUSED", summary=(
            f"{shown} is outside the zone {_zone_text(zone_labels)}: the responder refuses it (it never recurses)"),
            **base)
    if qt == T_AXFR or qt == T_IXFR:
        return Explanation(rcode=NOTIMP, rcode_name="NOTIMP", summary="zone transfers are not implemented", **base)

    plan = responder_zone.plan(view, labels, qt, view.applied_index & 0xFFFFFFFF)
    answers = tuple(a.rr.toZone() for a in plan.answers)
    truncated, kept = _fit(plan, labels, qt, max_udp, edns)
    result = {**base, "rcode": plan.rcode, "rcode_name": RCODE.get(plan.rcode), "answers": answers,
              "shape": plan.shape, "truncated": truncated}
    rel = labels[: len(labels) - len(zone_labels)]
    name = service_name(rel) if rel and rel[-1] == SERVICE else None
    if name is None:
        return Explanation(summary=_other_summary(rel, plan), **result)  # type: ignore[arg-type]

    everyone = view.instances(name.service)
    full = {_rr_key(a.rr) for a in plan.answers}
    verdicts = tuple(_verdict(i, name.tag, name.srv_only, qt, tname, zone_labels, full, kept, plan.shape, max_udp)
                     for i in everyone)
    summary = _service_summary(name.service, name.tag, everyone, verdicts, plan, truncated, max_udp)
    return Explanation(summary=summary, service=name.service, tag=name.tag, instances=verdicts,
                       **result)  # type: ignore[arg-type]


def _zone_text(labels: tuple[bytes, ...]) -> str:
    """A name in presentation form, absolute."""
    return (b".".join(labels).decode("ascii") + ".") if labels else "."


def _fit(plan: Plan, labels: tuple[bytes, ...], qtype: int, max_udp: int, edns: bool) -> tuple[bool, set]:
    """(TC set in a UDP reply, the keys of the records every UDP reply keeps)."""
    qlen = len(encode_name(labels)) + 4
    parts = encode_plan(plan, labels, qtype.to_bytes(2, "big") + b"\x00\x01", qlen)
    limit = max_udp if edns else MIN_UDP_PAYLOAD
    room = limit - (HEADER_LEN + qlen) - (OPT_LEN if edns else 0)
    n = len(plan.answers)
    if plan.shape == "one":         # one record per reply: each either fits alone or never
        fits = [not fit_variant(parts, (i,), room)[4] for i in range(n)]
        return not all(fits), {_rr_key(plan.answers[i].rr) for i in range(n) if fits[i]}
    variant = fit_variant(parts, tuple(range(n)), room)
    if not variant[4]:
        return False, {_rr_key(a.rr) for a in plan.answers}
    if plan.shape == "all":         # a fixed order: the records that fit are always the same prefix
        kept = int.from_bytes(variant[1][2:4], "big")    # ANCOUNT of the variant
        return True, {_rr_key(a.rr) for a in plan.answers[:kept]}
    return True, set()              # shuffled: which records fit varies per reply


def _verdict(
    instance: Instance, tag: str | None, srv_only: bool, qtype: int, tname: str, zone: tuple[bytes, ...],
    full: set, kept: set, shape: str, max_udp: int,
) -> Verdict:
    if tag is not None and not instance.has_tag(tag):
        return Verdict(instance, False, Reason.TAG, f"no tag {tag!r}")
    if not instance.serving:
        why = f": {instance.output}" if instance.output else ""
        return Verdict(instance, False, Reason.CRITICAL,
                       f"{instance.status.value} since {_since(instance.since_ms)}{why}")
    mine = _keys_of(instance, zone) & full
    if not mine:
        if srv_only and qtype != T_SRV:
            return Verdict(instance, False, Reason.TYPE, "this name holds SRV records only")
        if qtype == T_A or qtype == T_AAAA:
            kind = instance.address_kind
            what = "a host name (in the SRV answer as a target)" if kind is AddressKind.HOST else kind.name
            return Verdict(instance, False, Reason.FAMILY, f"address family ({tname} asked, {what} instance)")
        if qtype == T_ANY:
            return Verdict(instance, False, Reason.TYPE, "ANY is answered with one HINFO record (RFC 8482)")
        if qtype == T_TXT:
            return Verdict(instance, False, Reason.NO_META, "no meta: TXT answers hold meta pairs")
        return Verdict(instance, False, Reason.TYPE, f"no {tname} records: the name holds A/AAAA, SRV and TXT")
    if mine <= kept:
        return Verdict(instance, True, None, "one CNAME per reply, chosen per query" if shape == "one" else "")
    how = "in some UDP replies, not others" if shape == "shuffle" else "in no UDP reply"
    return Verdict(instance, False, Reason.TRUNCATED, f"truncated (over {max_udp} bytes of UDP): {how}; always over TCP")


def _service_summary(service: str, tag: str | None, everyone: tuple[Instance, ...], verdicts: tuple[Verdict, ...],
                     plan: Plan, truncated: bool, max_udp: int) -> str:
    what = f"service {service!r}" + (f" with tag {tag!r}" if tag is not None else "")
    if not everyone:
        return f"no {what} is registered: NXDOMAIN"
    if RCODE.get(plan.rcode) == "NXDOMAIN":
        return f"no instance of service {service!r} has tag {tag!r}: NXDOMAIN"
    n_in = sum(v.in_answer for v in verdicts)
    matching = [v for v in verdicts if v.reason is not Reason.TAG]
    if matching and all(v.reason is Reason.CRITICAL for v in matching):
        return f"every instance of {what} is critical: NODATA (the SOA in the authority section)"
    if not plan.answers:
        return f"{what} has no records of this type: NODATA (the SOA in the authority section)"
    text = f"{what}: {len(plan.answers)} record(s); {n_in} instance(s) in every reply"
    if truncated:
        cut = sum(v.reason is Reason.TRUNCATED for v in verdicts)
        text += f"; a UDP reply of {max_udp} bytes is truncated (TC set), {cut} instance(s) left out of some or all"
    return text


def _other_summary(rel: tuple[bytes, ...], plan: Plan) -> str:
    rcode = RCODE.get(plan.rcode)
    if not rel:
        return f"the zone apex: {rcode}, no instances"
    kind = rel[-1]
    if kind == ADDR and len(rel) == 2 and plan.rcode == 0:
        return (f"an address name (an SRV target): synthesised for any well-formed hex address, "
                f"whether or not an instance has it: {rcode}")
    if kind == NODE:
        return f"a node name (the NS glue): {rcode}"
    if kind == SERVICE and len(rel) <= 2:
        return f"a non-terminal under which services live: {rcode}"
    return f"names no service: {rcode}"
