"""DNS wire-format helpers for the responder: header flags, names, the OPT record, error replies.

Pure functions over bytes; no catalogue, no cache. Everything here is either computed once (flag
tables, OPT records) or used off the fast path (names, error replies). RFC numbers are cited where
a rule comes from.
"""

from __future__ import annotations

import struct

from dnslib import EDNSOption
from dnslib.buffer import Buffer

# RCODEs (RFC 1035 §4.1.1; BADVERS is an extended RCODE, RFC 6891 §6.1.3).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# RR types and classes used here.
T_A, T_NS, T_CNAME, T_SOA, T_HINFO, T_TXT, T_AAAA, T_SRV, T_OPT = 1, 2, 5, 6, 13, 16, 28, 33, 41
T_IXFR, T_AXFR, T_ANY = 251, 252, 255
CLASS_IN = 1

HEADER_LEN = 12
OPT_LEN = 11                    # an OPT RR without options: root name, type, class, ttl, rdlen
MIN_UDP_PAYLOAD = 512           # RFC 1035 §4.2.1; RFC 6891 §6.2.5: smaller EDNS sizes mean 512
MAX_MESSAGE = 65535             # RFC 1035 §4.2.2: TCP length prefix
MAX_NAME = 255                  # octets in wire form, RFC 1035 §2.3.4
MAX_LABEL = 63
MAX_POINTER = 0x3FFF            # a compression pointer holds 14 bits of offset

EDE_OPTION = 15                 # RFC 8914 Extended DNS Error
EDE_NOT_READY = 14              # "the server is unable to answer ... not fully functional"

_QR, _AA, _TC, _RD = 0x80, 0x04, 0x02, 0x01     # flag bits of header octet 2
_CD = 0x10                                      # flag bit of header octet 3
FLAG_INDEX_SIZE = 32                            # index = (octet2 & RD) | (octet3 & CD)

_flag_tables: dict[tuple[int, bool, bool], tuple[bytes, ...]] = {}


def flag_table(rcode: int, *, aa: bool, tc: bool) -> tuple[bytes, ...]:
    """The reply's two flag octets, indexed by ``query[2] & 1 | query[3] & 0x10`` (RD and CD copied).

    QR set, opcode QUERY, RA and AD clear (no recursion, no DNSSEC). Shared between entries.
    """
    key = (rcode, aa, tc)
    table = _flag_tables.get(key)
    if table is None:
        hi = _QR | (_AA if aa else 0) | (_TC if tc else 0)
        table = tuple(bytes((hi | (i & _RD), (i & _CD) | (rcode & 0xF))) for i in range(FLAG_INDEX_SIZE))
        _flag_tables[key] = table
    return table


def split_name(wire: bytes) -> tuple[bytes, ...] | None:
    """The labels of an uncompressed wire-format name that fills ``wire`` exactly, or None.

    None if a label is longer than 63 octets (or is a pointer or extended label type), the name is
    longer than 255 octets, or the name does not end exactly at the end of ``wire``.
    """
    n = len(wire)
    if n > MAX_NAME or n == 0:
        return None
    labels = []
    i = 0
    while True:
        length = wire[i]
        if length == 0:
            return tuple(labels) if i == n - 1 else None
        if length > MAX_LABEL or i + 1 + length >= n:
            return None
        labels.append(wire[i + 1 : i + 1 + length])
        i += 1 + length


def name_end(packet: bytes, offset: int) -> int | None:
    """Offset just past an uncompressed name starting at ``offset`` in ``packet``, or None."""
    i = offset
    n = len(packet)
    while i < n:
        length = packet[i]
        if length == 0:
            return i + 1 if i + 1 - offset <= MAX_NAME else None
        if length > MAX_LABEL:
            return None
        i += 1 + length
    return None


def encode_name(labels: tuple[bytes, ...]) -> bytes:
    """The uncompressed wire form of a name given as labels."""
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def opt_record(payload: int, *, do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """An OPT pseudo-RR (RFC 6891 §6.1.2): our UDP payload size, version 0, DO copied (RFC 3225 §3)."""
    return struct.pack("!BHHBBHH", 0, T_OPT, payload, ext_rcode, 0, 0x8000 if do else 0, len(options)) + options


def ede_option(info_code: int, text: str) -> bytes:
    """An RFC 8914 Extended DNS Error option, encoded by dnslib's generic ``EDNSOption``."""
    buffer = Buffer()
    EDNSOption(EDE_OPTION, struct.pack("!H", info_code) + text.encode("utf-8")).pack(buffer)
    return bytes(buffer.data)


def error_reply(
    ident: bytes,
    octet2: int,
    octet3: int,
    rcode: int,
    question: bytes | None,
    opt: bytes | None,
) -> bytes:
    """A reply with no records: REFUSED, NOTIMP, FORMERR, SERVFAIL or BADVERS.

    ``octet2``/``octet3`` are the query's flag octets: its opcode, RD and CD are copied; AA, TC,
    RA, AD are clear. ``question`` (wire bytes including type and class) is echoed if given.
    ``opt`` is the complete OPT RR to append (it carries the upper bits of an extended rcode).
    """
    hi = _QR | (octet2 & 0x78) | (octet2 & _RD)
    lo = (octet3 & _CD) | (rcode & 0xF)
    counts = struct.pack("!HHHH", 1 if question is not None else 0, 0, 0, 1 if opt is not None else 0)
    return b"".join((ident, bytes((hi, lo)), counts, question or b"", opt or b""))
