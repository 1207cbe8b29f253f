"""The DNS responder: query bytes in, reply bytes out, from the latest committed ``CatalogueView``.

Rule 1: pure. No sockets, no threads, no clock: the server loop (dns/server.py) owns the I/O and
calls ``Responder.answer(packet, tcp=..., stale=...)`` for every datagram or TCP message (without
the TCP length prefix), and ``Responder.update(view)`` whenever the catalogue publishes a view.
Rule 2: ``answer`` never raises. It returns the reply, or None to drop the packet (unparseable, or
not a query); every outcome is counted in ``counters``.
Rule 3: ``answer`` and the cache belong to one thread. ``update`` only swaps references and may
be called from another thread; a reply is then built from the old or the new view, never a mix.

How it is fast (the issue asks for >= 50,000 queries/s per core):

- Answers are built once per (question, catalogue content) by ``records.Zone`` (what to answer)
  and dnslib (the encoding of every record), and cached as wire bytes keyed by the question's
  lowercased wire form (name + type + class). The bytes of one record never depend on the other
  records: every name in it is compressed against the question only, which every query with that
  key puts at offset 12 with the same length (only the case differs). Echoing the query's own
  question bytes therefore echoes its case, and the pointers into it stay right. (The one
  exception, the owner of an SRV or NS target's address record, is a pointer to that target in
  its answer record, written when a variant is assembled.)
- A query on the fast path is parsed by hand (header, one uncompressed question, at most one OPT),
  looked up in one dict, and answered by joining five or six byte strings: the query id, two flag
  octets from a table (RD and CD copied), the counts, the question, the cached body (and an OPT).
  dnslib parses only what the fast path declines (``_slow``).
- Per-query shuffling without per-query work: each answer with several addresses or SRV records
  holds up to 64 precomputed orders ("variants"), and a query picks one at random. The orders are
  every rotation of a few random permutations, so every record is first in exactly as many
  variants as every other (a uniform first choice, what matters to clients), and a reply truncated
  to k records shows a different window of k. With more records than variants, the rotations are
  spread evenly over one permutation. A variant is a whole body, so the additional section of a
  truncated SRV answer always matches the SRV records it kept.
- ``update`` is O(1): it swaps the view and bumps a generation. An entry built under an older
  generation is checked on its next use: it is kept if the part of the catalogue it depends on
  (one service's instance tuple, shared between views while that service is unchanged) is the same
  object, with the SOA serial in negative answers patched in place; else rebuilt. So a write to
  one service does not flush the answers of the others.

Sizes (RFC 1035 §4.2.1, RFC 6891 §6.2.5, RFC 2181 §9): without EDNS a UDP reply is at most 512
octets; with EDNS, the client's size (at least 512) capped at ``max_udp_payload``; over TCP, up to
65,535. Records that do not fit are dropped from the end of the variant (an SRV together with its
address records) and TC is set. Truncated bodies are cached per payload size rounded down to a
multiple of 64 octets above 512 (or the cap itself), so a client never gets more than it allowed.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Sequence
from ipaddress import ip_address
from itertools import permutations
from math import factorial

from dnslib import DNSRecord
from dnslib.label import DNSBuffer, DNSLabel

from registry.catalogue import CatalogueView

from .records import Plan, Zone, dep_token
from .wire import (
    BADVERS,
    CLASS_IN,
    EDE_NOT_READY,
    FORMERR,
    HEADER_LEN,
    MAX_LABEL,
    MAX_MESSAGE,
    MAX_POINTER,
    MIN_UDP_PAYLOAD,
    NOTIMP,
    OPT_LEN,
    REFUSED,
    SERVFAIL,
    T_AXFR,
    T_IXFR,
    T_OPT,
    T_SRV,
    ede_option,
    encode_name,
    error_reply,
    flag_table,
    name_end,
    opt_record,
    split_name,
)
from .zone import DEFAULT_DOMAIN

__all__ = ["COUNTERS", "Responder", "domain_labels", "encode_plan", "fit_variant", "nameserver_table"]

_log = logging.getLogger(__name__)

COUNTERS = (
    "answered",          # NOERROR with at least one answer record
    "nxdomain",
    "nodata",            # NOERROR, empty answer, SOA in authority
    "refused",           # outside the zone, or a class other than IN
    "notimp",            # opcode other than QUERY; AXFR, IXFR
    "formerr",           # malformed but answerable (also BADVERS: an EDNS version other than 0)
    "servfail_stale",    # answer(stale=True)
    "truncated",         # replies with TC set (also counted in answered)
    "dropped_malformed", # no reply: unparseable, or not a query (QR set)
    "cache_hits",
    "cache_misses",
    "internal_errors",   # a bug: no reply, logged (should stay 0)
)

MAX_VARIANTS = 64
VARIANT_BUDGET = 64 * 1024          # octets of variant bodies per cached answer and size
CACHE_MAX_ENTRIES = 50_000
CACHE_MAX_BYTES = 64 * 1024 * 1024  # past either bound the cache is emptied and refills on use
TRUNCATION_STEP = 64
STALE_TEXT = "no contact with the cluster leader: not serving possibly stale data"

_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"   # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_NO_ADDITIONAL = b"\x00\x00"
_ONE_ADDITIONAL = b"\x00\x01"
_OPT_START = b"\x00\x00\x29"                  # root owner name, type OPT
_EDNS_V0 = b"\x00\x00"                        # extended rcode 0, version 0
_IN = CLASS_IN.to_bytes(2, "big")
_AA_BIT = 0x04  # in the third octet of the header
_SOA_SERIAL_FROM_END = 20                     # serial, refresh, retry, expire, minimum: 5 x u32
_NO_EDNS = -1                                 # value of ``do`` for a query without OPT

# A variant: (flag table, counts without OPT, counts with OPT, body, truncated).
Variant = tuple[tuple[bytes, ...], bytes, bytes, bytes, bool]


class _Glue:
    """The additional records of one answer's target, whose owner is a pointer to that target."""

    __slots__ = ("key", "rel", "tails", "owner")

    def __init__(self, key: tuple[bytes, ...], rel: int, tails: tuple[bytes, ...], owner: bytes) -> None:
        self.key = key        # target name labels (dedupes glue shared by several answers)
        self.rel = rel        # offset of the target name inside the answer record
        self.tails = tails    # each record after its owner name: type, class, ttl, rdlength, rdata
        self.owner = owner    # the owner written out, for a target past the 14-bit pointer range


class _Parts:
    """One answer's records, each encoded once and independent of the others' order."""

    __slots__ = ("qend", "answers", "glue", "authority", "nauth", "shape", "rcode")

    def __init__(self, qend: int, answers: list[bytes], glue: list[_Glue | None],
                 authority: bytes, nauth: int, shape: str, rcode: int) -> None:
        self.qend = qend            # offset of the body: header and question come first
        self.answers = answers
        self.glue = glue            # per answer
        self.authority = authority
        self.nauth = nauth
        self.shape = shape
        self.rcode = rcode

    def body_bound(self) -> int:
        """Octets of the longest full body: exact unless glue owners overflow the pointer range."""
        if not self.answers:
            return len(self.authority)
        if self.shape == "one":
            return max(len(a) + (sum(len(t) + len(g.owner) for t in g.tails) if g else 0)
                       for a, g in zip(self.answers, self.glue)) + len(self.authority)
        total = sum(map(len, self.answers))
        seen: set[tuple[bytes, ...]] = set()
        far = self.qend + total > MAX_POINTER
        for g in self.glue:
            if g is not None and g.key not in seen:
                seen.add(g.key)
                total += sum(len(t) + (len(g.owner) if far else 2) for t in g.tails)
        return total + len(self.authority)

    def patch_serial(self, serial: int) -> None:
        """Put ``serial`` into the SOA that ends the authority section, or the answer section."""
        new = struct.pack("!I", serial)
        if self.authority:
            self.authority = _with_serial(self.authority, new)
        else:
            self.answers[-1] = _with_serial(self.answers[-1], new)


def _with_serial(soa: bytes, serial: bytes) -> bytes:
    return soa[:-_SOA_SERIAL_FROM_END] + serial + soa[4 - _SOA_SERIAL_FROM_END :]


class _Set:
    """The variants of one answer at one size: orders fixed up front, bodies built on first pick."""

    __slots__ = ("orders", "built", "room")

    def __init__(self, orders: list[tuple[int, ...]], room: int) -> None:
        self.orders = orders
        self.built: list[Variant | None] = [None] * len(orders)
        self.room = room


class _Entry:
    """A cached answer. Invariant: if gen == Responder._gen, it is right for Responder._view."""

    __slots__ = ("gen", "full", "body_max", "trunc", "kind", "dep", "token", "soa", "serial", "parts", "size")

    def __init__(self) -> None:
        self.gen = 0
        self.full: _Set | None = None
        self.body_max = 0                                 # octets of the longest full body (or more)
        self.trunc: dict[int, _Set] = {}                  # body room -> variants that fit it
        self.kind = ""
        self.dep: tuple[str, ...] = ()
        self.token: object = None
        self.soa = False
        self.serial = 0
        self.parts: _Parts | None = None
        self.size = 0


class Responder:
    """Authoritative answers for ``domain`` from the latest ``CatalogueView`` (see the module doc).

    ``nameservers``: (node name, IP address) of every cluster node; a name given twice (an IPv4
    and an IPv6 address) gets both. ``rng`` (optional, for tests) drives the per-query order.
    """

    def __init__(
        self,
        *,
        domain: str = DEFAULT_DOMAIN,
        ttl_s: int = 30,
        negative_ttl_s: int = 5,
        nameservers: Sequence[tuple[str, str]] = (),
        max_udp_payload: int = 1232,
        rng: random.Random | None = None,
    ) -> None:
        for what, value in (("ttl_s", ttl_s), ("negative_ttl_s", negative_ttl_s)):
            if type(value) is not int or not 0 <= value <= 2**31 - 1:
                raise ValueError(f"{what} must be an integer from 0 to 2**31-1, got {value!r}")
        if type(max_udp_payload) is not int or not MIN_UDP_PAYLOAD <= max_udp_payload <= MAX_MESSAGE:
            raise ValueError(f"max_udp_payload must be an integer from 512 to 65535, got {max_udp_payload!r}")
        self._zone = Zone(
            domain_labels(domain), ttl=ttl_s, negative_ttl=negative_ttl_s, nameservers=nameserver_table(nameservers)
        )
        self._max_udp = max_udp_payload
        self._rng = rng if rng is not None else random.Random()
        self._random = self._rng.random
        self._opt = {0: opt_record(max_udp_payload, do=False), 0x80: opt_record(max_udp_payload, do=True)}
        ede = ede_option(EDE_NOT_READY, STALE_TEXT)
        self._stale_opt = {
            0: opt_record(max_udp_payload, do=False, options=ede),
            0x80: opt_record(max_udp_payload, do=True, options=ede),
        }
        # Invariant: _gen changes whenever _view does (readers read _gen first, then _view).
        self._view = CatalogueView.empty()
        self._gen = 1
        # Invariant: _cache_bytes >= the body octets of the entries in _cache (approximately).
        self._cache: dict[bytes, _Entry] = {}
        self._cache_bytes = 0
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    @property
    def domain(self) -> str:
        return ".".join(label.decode("ascii") for label in self._zone.labels) + "."

    @property
    def view(self) -> CatalogueView:
        return self._view

    def update(self, view: CatalogueView) -> None:
        """Serve ``view`` from now on. O(1): cached answers are re-checked lazily, on their next use."""
        if view is self._view:
            return
        # NB: view first, generation last: a reader that sees the new generation sees the new view.
        self._view = view
        self._gen += 1

    # -- the fast path -----------------------------------------------------------------------------

    def answer(self, packet: bytes, *, tcp: bool = False, stale: bool = False) -> bytes | None:
        """The reply to one query (a UDP payload or a TCP message without its length prefix), or None."""
        try:
            n = len(packet)
            if n < 17 or packet[2] & 0xF8 or packet[4:10] != _ONE_QUESTION or type(packet) is not bytes:
                return self._slow(packet, tcp, stale)
            qend = packet.find(0, HEADER_LEN) + 5        # NB: see _cache_key_is_exact below
            if qend < 17:
                return self._slow(packet, tcp, stale)
            additional = packet[10:12]
            if additional == _NO_ADDITIONAL:
                if qend != n:
                    return self._slow(packet, tcp, stale)
                do = _NO_EDNS
                bufsize = 0
            elif additional == _ONE_ADDITIONAL:
                if (
                    n < qend + OPT_LEN
                    or packet[qend : qend + 3] != _OPT_START
                    or packet[qend + 5 : qend + 7] != _EDNS_V0
                    or qend + OPT_LEN + (packet[qend + 9] << 8 | packet[qend + 10]) != n
                ):
                    return self._slow(packet, tcp, stale)
                do = packet[qend + 7] & 0x80
                bufsize = packet[qend + 3] << 8 | packet[qend + 4]
            else:
                return self._slow(packet, tcp, stale)
            question = packet[HEADER_LEN:qend]
            key = question.lower()
            entry = self._cache.get(key)
            if entry is None or entry.gen != self._gen or stale:
                labels = split_name(key[:-4])
                if labels is None:
                    return self._slow(packet, tcp, stale)
                return self._respond(packet[:2], packet[2], packet[3], question, key, labels, do, bufsize, tcp, stale)
            self.counters["cache_hits"] += 1
            return self._assemble(entry, packet[:2], packet[2] & 1 | packet[3] & 0x10, question, do, bufsize, tcp)
        except Exception:
            count = self.counters["internal_errors"] = self.counters["internal_errors"] + 1
            if count & (count - 1) == 0:                # log the 1st, 2nd, 4th, 8th... failure
                _log.exception("DNS responder failed on a %d-octet packet (failure #%d)", len(packet), count)
            return None

    # NB: _cache_key_is_exact. The fast path takes the question name to end at the first zero octet
    # after the header, without walking its labels. That is exact for every key in the cache: a key
    # is stored only after split_name() has walked it (so its name holds no zero octet but the last,
    # and its length octets are <= 63, which lower() leaves alone). A packet whose bytes up to its
    # first zero match a stored key, case aside, therefore has the same label structure; any other
    # packet misses, is walked by split_name(), and goes to _slow if the walk disagrees.

    def _assemble(
        self, entry: _Entry, ident: bytes, flag_index: int, question: bytes, do: int, bufsize: int, tcp: bool
    ) -> bytes:
        vset = entry.full
        if not tcp:
            qend = HEADER_LEN + len(question)
            if do < 0:
                limit = MIN_UDP_PAYLOAD
                room = limit - qend
            else:
                limit = self._max_udp if bufsize > self._max_udp else MIN_UDP_PAYLOAD if bufsize < MIN_UDP_PAYLOAD else bufsize
                room = limit - qend - OPT_LEN
            if entry.body_max > room:
                vset = self._truncated(entry, limit, qend, do >= 0)
        built = vset.built
        i = 0 if len(built) == 1 else int(self._random() * len(built))
        v = built[i]
        if v is None:
            v = built[i] = fit_variant(entry.parts, vset.orders[i], vset.room)
        counters = self.counters
        counters[entry.kind] += 1
        if v[4]:
            counters["truncated"] += 1
        if do < 0:
            return b"".join((ident, v[0][flag_index], v[1], question, v[3]))
        return b"".join((ident, v[0][flag_index], v[2], question, v[3], self._opt[do]))

    def _error_with_soa(self, ident: bytes, octet2: int, octet3: int, rcode: int, question: bytes | None,
                        opt: bytes | None) -> bytes:
        """REFUSED, NOTIMP or FORMERR as the issue asks of every negative and error answer: AA set
        and the apex SOA in the authority section, so the reply names the state it came from."""
        reply = error_reply(ident, octet2, octet3, rcode, question, None)
        buffer = DNSBuffer(reply)
        buffer.offset = len(reply)  # NB: names in the SOA compress against offsets in this reply
        self._zone.soa(self._view.applied_index & 0xFFFFFFFF, negative=True).pack(buffer)
        body = bytearray(buffer.data)
        body[2] |= _AA_BIT
        body[8:10] = b"\x00\x01"  # NSCOUNT
        if opt is not None:
            body[10:12] = b"\x00\x01"  # ARCOUNT
            body += opt
        return bytes(body)

    # -- everything the fast path declines ---------------------------------------------------------

    def _slow(self, packet: bytes, tcp: bool, stale: bool) -> bytes | None:
        """Any packet: parsed by dnslib, checked against RFC 1035 and RFC 6891, then answered."""
        counters = self.counters
        if type(packet) is not bytes:
            packet = bytes(packet)
        n = len(packet)
        if n < HEADER_LEN or packet[2] & 0x80:          # no header, or a response: never answer
            counters["dropped_malformed"] += 1
            return None
        ident, octet2, octet3 = packet[:2], packet[2], packet[3]
        if octet2 & 0x78:                               # opcode other than QUERY (RFC 1035 §4.1.1)
            counters["notimp"] += 1
            # NB: no SOA here: other opcodes give the sections other meanings (UPDATE's authority
            # section holds the update itself), so only the header and the rcode are safe to send.
            return error_reply(ident, octet2, octet3, NOTIMP, None, None)
        if packet[4:6] != b"\x00\x01":                  # QDCOUNT != 1 (RFC 9619)
            counters["formerr"] += 1
            return self._error_with_soa(ident, octet2, octet3, FORMERR, None, None)
        try:
            record = DNSRecord.parse(packet)
            question = record.questions[0]
            labels = tuple(question.qname.label)
            name = encode_name(labels)
            q = name + struct.pack("!HH", question.qtype, question.qclass)
        except Exception:
            end = name_end(packet, HEADER_LEN)
            if end is None or end + 4 > n:
                counters["dropped_malformed"] += 1
                return None
            counters["formerr"] += 1                    # the question is readable, the rest is not
            return self._error_with_soa(ident, octet2, octet3, FORMERR, packet[HEADER_LEN : end + 4], None)
        if split_name(name) is None:
            if any(len(label) > MAX_LABEL for label in labels):   # an extended label type: unreadable
                counters["dropped_malformed"] += 1
                return None
            counters["formerr"] += 1                    # longer than 255 octets: too long to echo
            return self._error_with_soa(ident, octet2, octet3, FORMERR, None, None)
        # RFC 6891 §6.1.1: at most one OPT, in the additional section, owned by the root.
        opts = [rr for rr in record.ar if rr.rtype == T_OPT]
        if (
            len(opts) > 1
            or (opts and opts[0].rname.label != ())
            or any(rr.rtype == T_OPT for rr in record.rr)
            or any(rr.rtype == T_OPT for rr in record.auth)
        ):
            counters["formerr"] += 1
            return self._error_with_soa(ident, octet2, octet3, FORMERR, q, None)
        do, bufsize = _NO_EDNS, 0
        if opts:
            do = 0x80 if opts[0].ttl & 0x8000 else 0
            bufsize = opts[0].rclass
            if (opts[0].ttl >> 16) & 0xFF:              # RFC 6891 §6.1.3: only version 0
                counters["formerr"] += 1
                badvers = opt_record(self._max_udp, do=bool(do), ext_rcode=BADVERS >> 4)
                return error_reply(ident, octet2, octet3, BADVERS, q, badvers)
        key = q.lower()
        return self._respond(ident, octet2, octet3, q, key, split_name(key[:-4]) or (), do, bufsize, tcp, stale)

    def _respond(
        self,
        ident: bytes,
        octet2: int,
        octet3: int,
        question: bytes,
        key: bytes,
        labels: tuple[bytes, ...],
        do: int,
        bufsize: int,
        tcp: bool,
        stale: bool,
    ) -> bytes:
        """The reply to a well-formed query; ``key``/``labels``: the lowercased question and name."""
        counters = self.counters
        if key[-2:] != _IN or not self._zone.contains(labels):
            counters["refused"] += 1                    # not ours; we never recurse (RA clear)
            return self._error_with_soa(ident, octet2, octet3, REFUSED, question, None if do < 0 else self._opt[do])
        qtype = key[-4] << 8 | key[-3]
        if qtype == T_AXFR or qtype == T_IXFR:
            counters["notimp"] += 1
            return self._error_with_soa(ident, octet2, octet3, NOTIMP, question, None if do < 0 else self._opt[do])
        if stale:
            counters["servfail_stale"] += 1
            return error_reply(ident, octet2, octet3, SERVFAIL, question, None if do < 0 else self._stale_opt[do])
        gen = self._gen                                 # NB: read before the view (see update)
        entry = self._cache.get(key)
        if entry is not None and (entry.gen == gen or self._revalidate(entry, gen)):
            counters["cache_hits"] += 1
        else:
            counters["cache_misses"] += 1
            entry = self._build(key, labels, qtype, len(question), gen)
        return self._assemble(entry, ident, octet2 & 1 | octet3 & 0x10, question, do, bufsize, tcp)

    # -- the cache ---------------------------------------------------------------------------------

    def _revalidate(self, entry: _Entry, gen: int) -> bool:
        """Keep ``entry`` under generation ``gen`` if what it depends on did not change."""
        view = self._view                           # NB: one read; the serial comes from it too
        if dep_token(entry.dep, view) is not entry.token:
            return False
        serial = view.applied_index & 0xFFFFFFFF
        if entry.soa and entry.serial != serial:
            entry.parts.patch_serial(serial)
            entry.full = _Set(entry.full.orders, entry.full.room)
            entry.trunc = {}
            entry.serial = serial
        entry.gen = gen
        return True

    def _build(self, key: bytes, labels: tuple[bytes, ...], qtype: int, qlen: int, gen: int) -> _Entry:
        view = self._view                           # NB: one read; the serial comes from it too
        serial = view.applied_index & 0xFFFFFFFF
        plan = self._zone.plan(view, labels, qtype, serial)
        parts = encode_plan(plan, labels, key[-4:], qlen)
        entry = _Entry()
        entry.gen = gen
        entry.kind = plan.kind
        entry.dep = plan.dep
        entry.token = dep_token(plan.dep, view)
        entry.soa = plan.ends_with_soa
        entry.serial = serial
        entry.parts = parts
        entry.body_max = parts.body_bound()
        entry.full = _Set(self._orders(parts.shape, len(parts.answers), entry.body_max),
                          MAX_MESSAGE - parts.qend - OPT_LEN)
        entry.size = min(entry.body_max, MAX_MESSAGE) * len(entry.full.orders) + 256
        old = self._cache.get(key)
        if old is not None:
            self._cache_bytes -= old.size
        if len(self._cache) >= CACHE_MAX_ENTRIES or self._cache_bytes + entry.size > CACHE_MAX_BYTES:
            self._cache.clear()
            self._cache_bytes = 0
        self._cache[key] = entry
        self._cache_bytes += entry.size
        return entry

    def _truncated(self, entry: _Entry, limit: int, qend: int, edns: bool) -> _Set:
        """The variants that fit ``limit`` octets (rounded down to a 64-octet step above 512)."""
        if limit < self._max_udp:
            limit = MIN_UDP_PAYLOAD + (limit - MIN_UDP_PAYLOAD) // TRUNCATION_STEP * TRUNCATION_STEP
        room = limit - qend - (OPT_LEN if edns else 0)
        vset = entry.trunc.get(room)
        if vset is None:
            assert entry.parts is not None
            vset = entry.trunc[room] = _Set(self._orders(entry.parts.shape, len(entry.parts.answers), room), room)
            added = room * len(vset.orders)
            entry.size += added
            self._cache_bytes += added
        return vset

    def _orders(self, shape: str, n: int, body_size: int) -> list[tuple[int, ...]]:
        """The record orders to precompute for bodies of about ``body_size`` octets (module doc)."""
        k_max = max(1, min(MAX_VARIANTS, VARIANT_BUDGET // max(1, body_size)))
        if n <= 1 or shape == "all":
            return [tuple(range(n))]
        if shape == "one":
            chosen = range(n) if n <= k_max else self._rng.sample(range(n), k_max)
            return [(i,) for i in chosen]
        if factorial(n) <= k_max:
            return list(permutations(range(n)))
        if k_max >= n:
            bases = [self._rng.sample(range(n), n) for _ in range(k_max // n)]
            return [tuple(p[s:] + p[:s]) for p in bases for s in range(n)]
        p = self._rng.sample(range(n), n)
        return [tuple(p[s:] + p[:s]) for s in (j * n // k_max for j in range(k_max))]


def encode_plan(plan: Plan, labels: tuple[bytes, ...], type_class: bytes, qlen: int) -> _Parts:
    """Encode each record of ``plan`` with dnslib, compressed against the question only."""
    seed = DNSBuffer()
    seed.append(bytes(HEADER_LEN))
    seed.encode_name(DNSLabel(labels))
    seed.append(type_class)
    assert seed.offset == HEADER_LEN + qlen, "question length mismatch"

    def copy(known: tuple[bytes, ...] | None = None) -> DNSBuffer:
        buffer = DNSBuffer()
        buffer.data = bytearray(seed.data)
        buffer.offset = seed.offset
        buffer.names = dict(seed.names)
        if known is not None:
            buffer.names[known] = HEADER_LEN    # any offset: only the pointer's size matters here
        return buffer

    def pack(rr: object, known: tuple[bytes, ...] | None = None) -> bytes:
        buffer = copy(known)
        rr.pack(buffer)                         # type: ignore[attr-defined]
        return bytes(buffer.data[seed.offset :])

    answers = []
    glue: list[_Glue | None] = []
    for answer in plan.answers:
        packed = pack(answer.rr)
        answers.append(packed)
        if not answer.glue:
            glue.append(None)
            continue
        target = tuple(answer.glue[0].rname.label)
        # The target name is the SRV's last RDATA field, after priority, weight and port (RFC 2782),
        # or an NS record's whole RDATA; it follows the owner and type, class, ttl, rdlength.
        rel = _name_len(packed) + 10 + (6 if answer.rr.rtype == T_SRV else 0)
        tails = tuple(pack(g, target)[2:] for g in answer.glue)
        buffer = copy()
        buffer.encode_name(DNSLabel(target))
        glue.append(_Glue(target, rel, tails, bytes(buffer.data[seed.offset :])))
    authority = pack(plan.soa) if plan.soa is not None else b""
    return _Parts(HEADER_LEN + qlen, answers, glue, authority, 1 if plan.soa is not None else 0, plan.shape, plan.rcode)


def fit_variant(parts: _Parts, order: Sequence[int], room: int) -> Variant:
    """The reply pieces for the answers in ``order`` that fit ``room`` octets of body.

    The answers kept are a prefix of ``order``; each is kept with its target's address records
    (their owner a pointer to the target name inside it), or not at all, so the additional
    section always matches the answers. TC is set if any answer was left out.
    """
    answers, glues = parts.answers, parts.glue
    used = len(parts.authority)
    offset = parts.qend
    kept: list[bytes] = []
    extra: list[bytes] = []
    seen: set[tuple[bytes, ...]] = set()
    truncated = False
    for i in order:
        record = answers[i]
        cost = len(record)
        glue = glues[i]
        add: Sequence[bytes] = ()
        if glue is not None and glue.key not in seen:
            pointer = offset + glue.rel
            owner = struct.pack("!H", 0xC000 | pointer) if pointer <= MAX_POINTER else glue.owner
            add = [owner + tail for tail in glue.tails]
            cost += sum(map(len, add))
        if used + cost > room:
            truncated = True
            break
        kept.append(record)
        if add:
            extra.extend(add)
            seen.add(glue.key)                  # type: ignore[union-attr]
        used += cost
        offset += len(record)
    counts = (1, len(kept), parts.nauth)
    return (
        flag_table(parts.rcode, aa=True, tc=truncated),
        struct.pack("!HHHH", *counts, len(extra)),
        struct.pack("!HHHH", *counts, len(extra) + 1),
        b"".join(kept) + parts.authority + b"".join(extra),
        truncated,
    )


def _name_len(packed: bytes) -> int:
    """Length of the (possibly compressed) name at the start of ``packed``."""
    i = 0
    while True:
        length = packed[i]
        if length >= 0xC0:
            return i + 2
        if length == 0:
            return i + 1
        i += 1 + length


def domain_labels(domain: str) -> tuple[bytes, ...]:
    if not isinstance(domain, str):
        raise ValueError(f"domain must be a string, got {type(domain).__name__}")
    text = domain.strip().rstrip(".").lower()
    labels = tuple(label.encode("ascii") for label in text.split(".")) if text else ()
    if not text.isascii() or any(not label or len(label) > MAX_LABEL for label in labels):
        raise ValueError(f"invalid domain {domain!r}: dot-separated ASCII labels of 1-63 octets")
    # Room for the longest name we make: a 63-octet node label or an IPv6 target, plus "node"/"addr".
    if len(encode_name(labels)) > 255 - 70:
        raise ValueError(f"domain {domain!r} is too long: at most 185 octets in wire form")
    return labels


def nameserver_table(nameservers: Sequence[tuple[str, str]]) -> list[tuple[str, tuple[str, ...]]]:
    """(lowercase node label, its addresses) in the order first given; validated."""
    by_name: dict[str, list[str]] = {}
    for name, address in nameservers:
        label = name.lower()
        if not (label.isascii() and 1 <= len(label) <= MAX_LABEL and label.replace("-", "").isalnum()
                and label[0] != "-" and label[-1] != "-"):
            raise ValueError(f"invalid node name {name!r} for an NS record: use a DNS label (letters, digits, '-')")
        try:
            ip = str(ip_address(address))
        except ValueError:
            raise ValueError(f"invalid address {address!r} of node {name!r}: use an IPv4 or IPv6 address") from None
        addresses = by_name.setdefault(label, [])
        if ip not in addresses:
            addresses.append(ip)
    return [(name, tuple(addresses)) for name, addresses in by_name.items()]
