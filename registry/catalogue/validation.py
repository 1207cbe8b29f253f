"""What a client may write into the catalogue, and the canonical form the catalogue stores.

Each ``validate_*`` function takes a value as a client sent it, checks its type and value, and
returns its canonical form (lowercase names and tags, normalised addresses, sorted tags and meta).
A value that is refused raises ``ValidationError``, whose message names the field and the value,
says what was wrong and what is accepted. The limits match docs/client-protocol.md.

The rules:

- service name, tag: a DNS label: 1-63 ASCII letters, digits or hyphens, not starting or ending
  with a hyphen. Case-insensitive, stored lowercase. At most 64 tags (duplicates are merged).
- address: an IPv4 address, an IPv6 address (without brackets or zone id; stored in the short
  form ``ipaddress`` gives) or a host name (RFC 1123 labels, at most 253 octets, the last label
  not all digits, one trailing dot allowed and dropped; stored lowercase). The unspecified
  addresses 0.0.0.0 and :: are refused: nobody can connect to them.
- port: an ``int`` from 1 to 65535 (``bool`` is refused).
- instance id: 1-128 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or
  digit; case-sensitive. NB: no ``:``, so that a CLI argument ``ID|HOST:PORT`` is never ambiguous
  (anything with a colon is an address), and no leading ``-`` (it would read as an option).
- meta: at most 64 keys; a key is 1-128 characters, a value 0-512 characters, both ``str``.
- client id: 1-64 characters. seq: an ``int`` from 1 to 2**63-1.

Every string must be encodable as UTF-8 (no lone surrogates), since the log stores msgpack.

NB: these rules are part of the replicated state machine: every node must judge an entry the same
way. A change to what is accepted therefore needs a new command encoding version (commands.VERSION).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterable, Mapping

from .model import Check, CheckKind, Instance

LABEL_MAX_OCTETS = 63
HOSTNAME_MAX_OCTETS = 253
PORT_MIN, PORT_MAX = 1, 65535
TAGS_MAX = 64
INSTANCE_ID_MAX = 128
META_KEYS_MAX = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
CLIENT_ID_MAX = 64
SEQ_MAX = 2**63 - 1
#: The largest catalogue snapshot a restore carries: one Raft entry holds it, and an
#: AppendEntries with that one entry must stay under the transport's 64 MiB frame limit.
RESTORE_MAX_BYTES = 48 * 1024**2
# Health checks (docs/client-protocol.md, "register"): times in milliseconds.
TTL_MS = (1_000, 24 * 3_600_000)
INTERVAL_MS = (1_000, 24 * 3_600_000)
TIMEOUT_MIN_MS = 100
THRESHOLD = (1, 100)
DEREGISTER_AFTER_MS = (60_000, 30 * 24 * 3_600_000)
CHECK_URL_MAX = 512
CHECK_KEYS = ("kind", "ttl_ms", "url", "interval_ms", "timeout_ms", "failures", "successes", "deregister_after_ms")

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_LABEL_RULE = (
    f"1-{LABEL_MAX_OCTETS} ASCII letters, digits or hyphens, not starting or ending with a hyphen"
)
_ADDRESS_RULE = (
    "an IPv4 address (10.0.0.5), an IPv6 address without brackets (2001:db8::1) "
    f"or a host name (db.example.com: labels of {_LABEL_RULE}, at most {HOSTNAME_MAX_OCTETS} octets)"
)
_INSTANCE_ID_RULE = (
    f"1-{INSTANCE_ID_MAX} ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
)


# Memos of the validators below for values that recur (service names, tag lists, meta pairs,
# canonical IPv4 text). NB: the validators are pure functions, so a memo changes no result, only
# its cost and its identity: every instance with the same tags shares one tuple of interned
# strings, which is most of the catalogue's memory for realistic instances. Each memo is
# bounded; when full it is simply cleared. Only the thread that validates touches them.
_MEMO_MAX = 4096
_services_seen: dict[str, str] = {}
_tags_seen: dict[tuple[str, ...], tuple[str, ...]] = {}
_meta_pairs_seen: dict[tuple[str, str], tuple[str, str]] = {}
# A canonical dotted quad (no leading zeros, each octet 0-255): exactly the texts that
# ipaddress.IPv4Address accepts and prints back unchanged.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _memo(memo: dict, key: object, value: object) -> None:  # type: ignore[type-arg]
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = value


class ValidationError(ValueError):
    """A value the catalogue does not accept. ``field`` names it; the message says what is accepted."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def brief_repr(value: object, limit: int = 80) -> str:
    """repr() of a client's value, cut short so that a huge value cannot flood a message or log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def _require_str(value: object, field: str, what: str, accepted: str) -> str:
    if type(value) is not str:
        raise ValidationError(field, f"{what} must be a string ({accepted}), got {_type_name(value)}")
    return value


def _require_utf8(value: str, field: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            field, f"{what} is not valid Unicode text ({brief_repr(value)} has a lone surrogate); use UTF-8 text"
        ) from None


def _label_problem(text: str) -> str | None:
    """What makes ``text`` not a DNS label, or None if it is one."""
    if not text:
        return "is empty"
    if not text.isascii():
        return "has non-ASCII characters"
    if len(text) > LABEL_MAX_OCTETS:
        return f"is {len(text)} octets long; a DNS label is at most {LABEL_MAX_OCTETS} octets"
    if _LABEL.fullmatch(text):
        return None
    if text[0] == "-" or text[-1] == "-":
        return "starts or ends with a hyphen"
    return f"contains {next(c for c in text if not (c.isalnum() or c == '-'))!r}"


def _label(value: object, field: str, what: str) -> str:
    """A DNS label, lowercased. Checked on the original text so that only ASCII is accepted."""
    text = _require_str(value, field, what, _LABEL_RULE)
    problem = _label_problem(text)
    if problem is not None:
        raise ValidationError(field, f"invalid {what} {brief_repr(text)}: {problem}; use {_LABEL_RULE}")
    return text.lower()


def validate_service(value: object) -> str:
    """A service name: a DNS label, returned lowercase."""
    if type(value) is str:
        seen = _services_seen.get(value)
        if seen is not None:
            return seen
        name = sys.intern(_label(value, "service", "service name"))
        _memo(_services_seen, value, name)
        return name
    return _label(value, "service", "service name")


def validate_tag(value: object) -> str:
    """One tag: a DNS label, returned lowercase."""
    return _label(value, "tags", "tag")


def validate_tags(value: object) -> tuple[str, ...]:
    """A list of tags: returned lowercase, sorted, without duplicates."""
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise ValidationError(
            "tags", f"tags must be a list of strings (DNS labels), got {_type_name(value)} {brief_repr(value)}"
        )
    items = tuple(value)
    if len(items) > TAGS_MAX:
        raise ValidationError("tags", f"{len(items)} tags given; at most {TAGS_MAX} are accepted")
    if all(type(tag) is str for tag in items):
        seen = _tags_seen.get(items)
        if seen is not None:
            return seen
        tags = tuple(sorted({sys.intern(validate_tag(tag)) for tag in items}))
        _memo(_tags_seen, items, tags)
        return tags
    return tuple(sorted({validate_tag(tag) for tag in items}))


def validate_address(value: object) -> str:
    """An IPv4 or IPv6 address (normalised) or a host name (lowercase, no trailing dot)."""
    text = _require_str(value, "address", "address", _ADDRESS_RULE)
    if not text:
        raise ValidationError("address", f"address is empty; use {_ADDRESS_RULE}")
    if len(text) > HOSTNAME_MAX_OCTETS + 1:
        raise ValidationError(
            "address",
            f"invalid address {brief_repr(text)}: {len(text)} characters long; a host name is at most "
            f"{HOSTNAME_MAX_OCTETS} octets",
        )
    if text.startswith("[") or text.endswith("]"):
        raise ValidationError(
            "address", f"invalid address {brief_repr(text)}: write an IPv6 address without brackets, e.g. 2001:db8::1"
        )
    if ":" in text:
        return _ipv6(text)
    if _CANONICAL_IPV4.fullmatch(text) and text != "0.0.0.0":
        return text  # what IPv4Address(text) would give back, without building it
    try:
        ip4 = ipaddress.IPv4Address(text)
    except ValueError:
        return _hostname(text)
    if ip4.is_unspecified:
        raise ValidationError("address", f"invalid address {text!r}: the unspecified address cannot be connected to; "
                              "register the instance's own address")
    return str(ip4)


def _ipv6(text: str) -> str:
    try:
        ip6 = ipaddress.IPv6Address(text)
    except ValueError as e:
        raise ValidationError(
            "address", f"invalid address {brief_repr(text)}: not an IPv6 address ({e}); use {_ADDRESS_RULE}"
        ) from None
    if ip6.scope_id is not None:
        raise ValidationError(
            "address",
            f"invalid address {brief_repr(text)}: a zone id (%{ip6.scope_id}) only means something on one host; "
            "register a global or unique-local IPv6 address",
        )
    if ip6.is_unspecified:
        raise ValidationError("address", f"invalid address {text!r}: the unspecified address cannot be connected to; "
                              "register the instance's own address")
    return str(ip6)


def _hostname(text: str) -> str:
    name = text[:-1] if text.endswith(".") else text
    if not name.isascii():
        raise ValidationError(
            "address", f"invalid address {brief_repr(text)}: non-ASCII characters (use the IDNA 'xn--' form); "
            f"use {_ADDRESS_RULE}"
        )
    if len(name) > HOSTNAME_MAX_OCTETS:
        raise ValidationError(
            "address",
            f"invalid address {brief_repr(text)}: a host name is at most {HOSTNAME_MAX_OCTETS} octets, "
            f"this one is {len(name)}",
        )
    labels = name.split(".")
    for label in labels:
        problem = _label_problem(label)
        if problem is not None:
            if not label:
                problem = "is empty (two dots in a row, or a leading dot)"
            raise ValidationError(
                "address", f"invalid address {brief_repr(text)}: label {brief_repr(label)} {problem}; "
                f"a host name label is {_LABEL_RULE}"
            )
    if labels[-1].isdigit():
        raise ValidationError(
            "address",
            f"invalid address {brief_repr(text)}: not a valid IPv4 address, and a host name cannot end in an "
            "all-numeric label; use a dotted quad such as 10.0.0.5 (no leading zeros) or a host name",
        )
    return name.lower()


def validate_port(value: object) -> int:
    if type(value) is not int:
        raise ValidationError(
            "port",
            f"port must be an integer from {PORT_MIN} to {PORT_MAX}, got {_type_name(value)} {brief_repr(value)}",
        )
    if not PORT_MIN <= value <= PORT_MAX:
        raise ValidationError("port", f"invalid port {value}: use an integer from {PORT_MIN} to {PORT_MAX}")
    return value


def validate_instance_id(value: object) -> str:
    text = _require_str(value, "instance_id", "instance id", _INSTANCE_ID_RULE)
    if not text:
        raise ValidationError("instance_id", f"instance id is empty; use {_INSTANCE_ID_RULE}")
    if len(text) > INSTANCE_ID_MAX:
        raise ValidationError(
            "instance_id",
            f"invalid instance id {brief_repr(text)}: {len(text)} characters long, "
            f"at most {INSTANCE_ID_MAX} are accepted",
        )
    if not (text.isascii() and _INSTANCE_ID.fullmatch(text)):
        if ":" in text:
            why = "contains ':' (reserved for HOST:PORT)"
        elif not (text[0].isascii() and text[0].isalnum()):
            why = f"starts with {text[0]!r}"
        else:
            why = f"contains {next(c for c in text if not (c.isascii() and (c.isalnum() or c in '._-')))!r}"
        raise ValidationError("instance_id", f"invalid instance id {brief_repr(text)}: {why}; use {_INSTANCE_ID_RULE}")
    return text


def validate_meta(value: object) -> tuple[tuple[str, str], ...]:
    """A map of string keys to string values (or an iterable of pairs): returned sorted by key."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise ValidationError("meta", f"meta must be a map of strings to strings, got {_type_name(value)}")
    else:
        pairs = []
        for pair in value:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValidationError("meta", f"meta must be a map of strings to strings; {brief_repr(pair)} is not a "
                                      "(key, value) pair")
            pairs.append((pair[0], pair[1]))
    if len(pairs) > META_KEYS_MAX:
        raise ValidationError("meta", f"meta has {len(pairs)} keys; at most {META_KEYS_MAX} are accepted")
    seen: set[str] = set()
    for key, item in pairs:
        key = _require_str(key, "meta", "a meta key", f"1-{META_KEY_MAX} characters")
        if not 1 <= len(key) <= META_KEY_MAX:
            raise ValidationError(
                "meta", f"meta key {brief_repr(key)} is {len(key)} characters long; use 1-{META_KEY_MAX} characters"
            )
        _require_utf8(key, "meta", "meta key")
        if key in seen:
            raise ValidationError("meta", f"meta key {brief_repr(key)} is given twice; keys must be unique")
        seen.add(key)
        item = _require_str(item, "meta", f"meta value of {brief_repr(key)}", f"0-{META_VALUE_MAX} characters")
        if len(item) > META_VALUE_MAX:
            raise ValidationError(
                "meta",
                f"meta value of {brief_repr(key)} is {len(item)} characters long; "
                f"at most {META_VALUE_MAX} are accepted",
            )
        _require_utf8(item, "meta", f"meta value of {brief_repr(key)}")
    shared = []
    for pair in pairs:
        seen = _meta_pairs_seen.get(pair)
        if seen is None:
            seen = (sys.intern(pair[0]), pair[1])
            _memo(_meta_pairs_seen, pair, seen)
        shared.append(seen)
    return tuple(sorted(shared))


def validate_client_id(value: object) -> str:
    text = _require_str(value, "client", "client id", f"1-{CLIENT_ID_MAX} characters")
    if not 1 <= len(text) <= CLIENT_ID_MAX:
        raise ValidationError(
            "client", f"client id {brief_repr(text)} is {len(text)} characters long; use 1-{CLIENT_ID_MAX} characters"
        )
    _require_utf8(text, "client", "client id")
    return text


def validate_seq(value: object) -> int:
    if type(value) is not int:
        raise ValidationError(
            "seq", f"seq must be an integer from 1 to 2**63-1, got {_type_name(value)} {brief_repr(value)}"
        )
    if not 1 <= value <= SEQ_MAX:
        raise ValidationError("seq", f"invalid seq {value}: use an integer from 1 to 2**63-1")
    return value


def validate_instance(instance: Instance) -> Instance:
    """``instance`` with every field validated and in canonical form (raises ValidationError)."""
    if not isinstance(instance, Instance):
        raise ValidationError("instance", f"expected an Instance, got {_type_name(instance)}")
    return Instance(
        id=validate_instance_id(instance.id),
        service=validate_service(instance.service),
        address=validate_address(instance.address),
        port=validate_port(instance.port),
        tags=validate_tags(instance.tags),
        meta=validate_meta(instance.meta),
    )


def _check_int(check: Mapping[object, object], key: str, default: int) -> int:
    value = check.get(key, default)
    if type(value) is not int:
        raise ValidationError("check", f"check {key} must be an integer, got {_type_name(value)} {brief_repr(value)}")
    return value


def _in_range(value: int, key: str, low: int, high: int, unit: str = "ms") -> None:
    if not low <= value <= high:
        raise ValidationError("check", f"invalid check {key} {value}: use {low} to {high} {unit}")


def _check_url(value: object) -> str:
    url = _require_str(value, "check", "check url", "http://HOST:PORT/path")
    if len(url) > CHECK_URL_MAX:
        raise ValidationError("check", f"check url is {len(url)} characters long; at most {CHECK_URL_MAX} are accepted")
    _require_utf8(url, "check", "check url")
    rule = "use http://HOST:PORT/path, e.g. http://10.0.0.5:8080/health (https is not supported)"
    if not url.startswith("http://"):
        raise ValidationError("check", f"invalid check url {brief_repr(url)}: not http://; {rule}")
    hostport, _, _ = url[len("http://"):].partition("/")
    host, sep, port = hostport.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not PORT_MIN <= int(port) <= PORT_MAX:
        raise ValidationError("check", f"invalid check url {brief_repr(url)}: needs a host and a port "
                              f"({PORT_MIN}-{PORT_MAX}); {rule}")
    try:
        validate_address(host)
    except ValidationError as e:
        raise ValidationError("check", f"invalid check url {brief_repr(url)}: {e}") from None
    return url


def validate_check(value: object) -> Check:
    """A health check from its wire map (``kind``, ``ttl_ms``, ``url``, ``interval_ms``,
    ``timeout_ms``, ``failures``, ``successes``, ``deregister_after_ms``; absent keys take the
    ``Check`` defaults), with every field in range for its kind and the others 0 or "".

    NB: written by the client engineer against HEALTH_SPEC.md's rules; the catalogue's own
    version supersedes it if they differ.
    """
    if not isinstance(value, Mapping):
        raise ValidationError("check", f"check must be a map (kind, ttl_ms, url, ...), got {_type_name(value)}")
    unknown = sorted(str(k) for k in value if k not in CHECK_KEYS)
    if unknown:
        raise ValidationError("check", f"unknown check keys {', '.join(unknown)}; accepted: {', '.join(CHECK_KEYS)}")
    kinds = ", ".join(k.value for k in CheckKind)
    try:
        kind = CheckKind(value.get("kind"))
    except ValueError:
        raise ValidationError("check", f"invalid check kind {brief_repr(value.get('kind'))}; use one of {kinds}") from None
    deregister_after = _check_int(value, "deregister_after_ms", 0)
    if deregister_after != 0:
        _in_range(deregister_after, "deregister_after_ms", *DEREGISTER_AFTER_MS, "ms, or 0 for never")
    given = {k for k, v in value.items() if v not in (0, "", None)}
    if kind is CheckKind.TTL:
        extra = sorted(given & {"url", "interval_ms", "timeout_ms"})
        if extra:
            raise ValidationError("check", f"a ttl check has no {', '.join(extra)} (those are for tcp and http checks)")
        ttl = _check_int(value, "ttl_ms", 0)
        _in_range(ttl, "ttl_ms", *TTL_MS)
        return Check(kind, ttl_ms=ttl, deregister_after_ms=deregister_after)
    if "ttl_ms" in given:
        raise ValidationError("check", f"a {kind.value} check has no ttl_ms (that is for ttl checks)")
    url = ""
    if kind is CheckKind.HTTP:
        url = _check_url(value.get("url"))
    elif "url" in given:
        raise ValidationError("check", "a tcp check has no url (it connects to the instance's address and port)")
    interval = _check_int(value, "interval_ms", 0)
    _in_range(interval, "interval_ms", *INTERVAL_MS)
    timeout = _check_int(value, "timeout_ms", 0)
    if not TIMEOUT_MIN_MS <= timeout <= interval:
        raise ValidationError("check", f"invalid check timeout_ms {timeout}: use {TIMEOUT_MIN_MS} ms up to the "
                              f"interval ({interval} ms)")
    failures = _check_int(value, "failures", 3)
    _in_range(failures, "failures", *THRESHOLD, "consecutive probes")
    successes = _check_int(value, "successes", 2)
    _in_range(successes, "successes", *THRESHOLD, "consecutive probes")
    return Check(kind, url=url, interval_ms=interval, timeout_ms=timeout, failures=failures,
                 successes=successes, deregister_after_ms=deregister_after)
