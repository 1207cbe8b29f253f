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
- client id: 1-64 characters. seq: an ``int`` from 1 to 2**63-1. Ids starting with ``~`` are
  accepted in the log but reserved for the cluster's own writes (``~health``): a node refuses them
  from clients (``validate_external_client_id``), so that no client can make those writes stale.
- check (``validate_check``): kind ``ttl``, ``tcp`` or ``http``. TTL: ``ttl_ms`` 1 s to 24 h.
  TCP and HTTP: ``interval_ms`` 1 s to 24 h, ``timeout_ms`` 100 ms to the interval, ``failures``
  and ``successes`` 1 to 100; HTTP also ``url``: ``http://HOST:PORT/path``, at most 512
  characters. Any kind: ``deregister_after_ms`` 0 (never) or 1 min to 30 days. A field that does
  not apply to the kind must be 0 or "" (``failures`` and ``successes`` keep their defaults).
- health: ``status`` passing or critical; times (``at_ms``, ``since_ms``) integer ms from 0 to
  2**63-1; ``revision`` (of a health command) 1 to 2**63-1; ``output`` at most 256 characters.

Every string must be encodable as UTF-8 (no lone surrogates), since the log stores msgpack.

NB: these rules are part of the replicated state machine: every node must judge an entry the same
way. A change to what is accepted therefore needs a new command encoding version (commands.VERSION).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from .model import Check, CheckKind, HealthStatus, Instance

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
#: Client ids starting with this are the cluster's own (the leader's health writes: ``~health``).
RESERVED_CLIENT_PREFIX = "~"
TIME_MS_MAX = 2**63 - 1
REVISION_MAX = 2**63 - 1
TTL_MS_MIN, TTL_MS_MAX = 1_000, 24 * 3_600_000
INTERVAL_MS_MIN, INTERVAL_MS_MAX = 1_000, 24 * 3_600_000
TIMEOUT_MS_MIN = 100
THRESHOLD_MIN, THRESHOLD_MAX = 1, 100
DEREGISTER_AFTER_MS_MIN, DEREGISTER_AFTER_MS_MAX = 60_000, 30 * 86_400_000
CHECK_URL_MAX = 512
HEALTH_OUTPUT_MAX = 256
#: The keys of a check as a map (the log encoding and the client protocol's ``check`` argument).
CHECK_KEYS = (
    "kind", "ttl_ms", "url", "interval_ms", "timeout_ms", "failures", "successes", "deregister_after_ms",
)  # fmt: skip
#: The largest catalogue snapshot a restore carries: one Raft entry holds it, and an
#: AppendEntries with that one entry must stay under the transport's 64 MiB frame limit.
RESTORE_MAX_BYTES = 48 * 1024**2

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
_checks_seen: dict[Check, Check] = {}
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


def validate_external_client_id(value: object) -> str:
    """A client id as a client may send it: ``validate_client_id``, and not reserved (``~...``).

    For the node's client API; the log itself accepts reserved ids (the leader writes them).
    """
    text = validate_client_id(value)
    if text.startswith(RESERVED_CLIENT_PREFIX):
        raise ValidationError(
            "client",
            f"client id {brief_repr(text)} starts with {RESERVED_CLIENT_PREFIX!r}, which is reserved for the "
            "cluster's own writes; use another id (e.g. a random UUID hex)",
        )
    return text


def validate_seq(value: object) -> int:
    if type(value) is not int:
        raise ValidationError(
            "seq", f"seq must be an integer from 1 to 2**63-1, got {_type_name(value)} {brief_repr(value)}"
        )
    if not 1 <= value <= SEQ_MAX:
        raise ValidationError("seq", f"invalid seq {value}: use an integer from 1 to 2**63-1")
    return value


def _int_in(value: object, field: str, what: str, low: int, high: int, accepted: str) -> int:
    if type(value) is not int:
        raise ValidationError(field, f"{what} must be an integer ({accepted}), got {_type_name(value)} "
                              f"{brief_repr(value)}")
    if not low <= value <= high:
        raise ValidationError(field, f"invalid {what} {value}: use {accepted}")
    return value


def _ms(ms: int) -> str:
    """A duration for a message: ``1000 ms (1 s)``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms} ms ({ms // size} {unit})"
    return f"{ms} ms"


def _ms_range(low: int, high: int) -> str:
    return f"an integer number of milliseconds from {_ms(low)} to {_ms(high)}"


def validate_time_ms(value: object, field: str = "at_ms") -> int:
    """A wall-clock time in integer milliseconds since the epoch (0 = unknown)."""
    return _int_in(value, field, field, 0, TIME_MS_MAX, "an integer number of milliseconds from 0 to 2**63-1")


def validate_revision(value: object) -> int:
    """The revision a health command is for: the log index of the instance's Register, >= 1."""
    return _int_in(value, "revision", "revision", 1, REVISION_MAX,
                   "the log index of the instance's registration, an integer from 1 to 2**63-1")


def validate_status(value: object) -> HealthStatus:
    """A HealthStatus, or its text (``passing`` or ``critical``)."""
    if isinstance(value, HealthStatus):
        return value
    accepted = " or ".join(repr(s.value) for s in HealthStatus)
    if type(value) is str:
        try:
            return HealthStatus(value)
        except ValueError:
            pass
    raise ValidationError("status", f"invalid health status {brief_repr(value)}: use {accepted}")


def validate_output(value: object) -> str:
    """A health command's explanation (e.g. ``connection refused``): 0-256 characters."""
    text = _require_str(value, "output", "output", f"0-{HEALTH_OUTPUT_MAX} characters")
    if len(text) > HEALTH_OUTPUT_MAX:
        raise ValidationError(
            "output", f"output is {len(text)} characters long; at most {HEALTH_OUTPUT_MAX} are accepted"
        )
    _require_utf8(text, "output", "output")
    return text


_URL_RULE = f"http://HOST:PORT/path (host and port required, at most {CHECK_URL_MAX} characters)"


def validate_check_url(value: object) -> str:
    """An HTTP check's URL: ``http://HOST:PORT[/path][?query]``, printable ASCII, returned as given."""
    text = _require_str(value, "check", "check url", _URL_RULE)
    if len(text) > CHECK_URL_MAX:
        raise ValidationError(
            "check", f"check url is {len(text)} characters long; at most {CHECK_URL_MAX} are accepted"
        )
    bad = next((c for c in text if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ValidationError(
            "check", f"invalid check url {brief_repr(text)}: contains {bad!r}; use printable ASCII without "
            f"spaces (percent-encode the rest): {_URL_RULE}"
        )
    if not text.startswith("http://"):
        scheme = text.partition(":")[0]
        raise ValidationError(
            "check", f"invalid check url {brief_repr(text)}: scheme {scheme!r}; only http:// is supported: {_URL_RULE}"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValidationError("check", f"invalid check url {brief_repr(text)}: {e}; use {_URL_RULE}") from None
    if "@" in parts.netloc or parts.fragment or "#" in text:
        raise ValidationError(
            "check", f"invalid check url {brief_repr(text)}: no user info or #fragment is accepted; use {_URL_RULE}"
        )
    if not parts.hostname:
        raise ValidationError("check", f"invalid check url {brief_repr(text)}: it names no host; use {_URL_RULE}")
    if port is None:
        raise ValidationError("check", f"invalid check url {brief_repr(text)}: it names no port; use {_URL_RULE}")
    try:
        validate_address(parts.hostname)
        validate_port(port)
    except ValidationError as e:
        raise ValidationError("check", f"invalid check url {brief_repr(text)}: {e}") from None
    return text


def validate_check(value: object) -> Check:
    """A canonical Check from a Check or a map with ``CHECK_KEYS`` (``kind`` required).

    The map is the log's and the client protocol's form: missing keys take the Check defaults;
    ``kind`` is the text ``ttl``, ``tcp`` or ``http``.
    """
    if isinstance(value, Check):
        fields = {key: getattr(value, key) for key in CHECK_KEYS}
    elif isinstance(value, Mapping):
        unknown = [key for key in value if key not in CHECK_KEYS]
        if unknown:
            raise ValidationError(
                "check", f"check has unknown keys {brief_repr(sorted(map(str, unknown)))}; accepted: {list(CHECK_KEYS)}"
            )
        if "kind" not in value:
            raise ValidationError("check", "check lacks 'kind'; use 'ttl', 'tcp' or 'http'")
        fields = {key: getattr(_DEFAULT_CHECK, key) for key in CHECK_KEYS} | dict(value)
    else:
        raise ValidationError("check", f"check must be a map with {list(CHECK_KEYS)}, got {_type_name(value)}")

    kind = fields["kind"]
    if not isinstance(kind, CheckKind):
        try:
            kind = CheckKind(kind) if type(kind) is str else None
        except ValueError:
            kind = None
        if kind is None:
            raise ValidationError("check", f"invalid check kind {brief_repr(fields['kind'])}: use 'ttl', 'tcp' or 'http'")
    name = kind.value

    def unused(key: str, empty: object) -> None:
        if fields[key] != empty or type(fields[key]) is not type(empty):
            raise ValidationError(
                "check", f"a {name} check takes no {key} (got {brief_repr(fields[key])}); leave it {empty!r}"
            )

    ttl_ms = interval_ms = timeout_ms = 0
    url = ""
    if kind is CheckKind.TTL:
        ttl_ms = _int_in(fields["ttl_ms"], "check", "check ttl_ms", TTL_MS_MIN, TTL_MS_MAX,
                         _ms_range(TTL_MS_MIN, TTL_MS_MAX))
        for key in ("interval_ms", "timeout_ms"):
            unused(key, 0)
        unused("url", "")
    else:
        unused("ttl_ms", 0)
        interval_ms = _int_in(fields["interval_ms"], "check", "check interval_ms", INTERVAL_MS_MIN, INTERVAL_MS_MAX,
                              _ms_range(INTERVAL_MS_MIN, INTERVAL_MS_MAX))
        timeout_ms = _int_in(fields["timeout_ms"], "check", "check timeout_ms", TIMEOUT_MS_MIN, interval_ms,
                             f"{_ms_range(TIMEOUT_MS_MIN, interval_ms)} (at most the interval)")
        if kind is CheckKind.HTTP:
            url = validate_check_url(fields["url"])
        else:
            unused("url", "")
    thresholds = f"an integer from {THRESHOLD_MIN} to {THRESHOLD_MAX}"
    failures = _int_in(fields["failures"], "check", "check failures", THRESHOLD_MIN, THRESHOLD_MAX, thresholds)
    successes = _int_in(fields["successes"], "check", "check successes", THRESHOLD_MIN, THRESHOLD_MAX, thresholds)
    deregister_after_ms = fields["deregister_after_ms"]
    if deregister_after_ms != 0 or type(deregister_after_ms) is not int:
        deregister_after_ms = _int_in(
            deregister_after_ms, "check", "check deregister_after_ms", DEREGISTER_AFTER_MS_MIN,
            DEREGISTER_AFTER_MS_MAX,
            f"0 (never) or {_ms_range(DEREGISTER_AFTER_MS_MIN, DEREGISTER_AFTER_MS_MAX)}",
        )  # fmt: skip
    check = Check(kind, ttl_ms, url, interval_ms, timeout_ms, failures, successes, deregister_after_ms)
    seen = _checks_seen.get(check)
    if seen is None:
        _memo(_checks_seen, check, check)
        seen = check
    return seen


_DEFAULT_CHECK = Check(CheckKind.TTL)


def check_to_map(check: Check) -> dict[str, object]:
    """A check as a map with every one of ``CHECK_KEYS`` (``kind`` as its text); the inverse of
    ``validate_check`` for a canonical check."""
    fields: dict[str, object] = {key: getattr(check, key) for key in CHECK_KEYS}
    fields["kind"] = check.kind.value
    return fields


def validate_instance(instance: Instance) -> Instance:
    """``instance`` with every field validated and in canonical form (raises ValidationError).

    ``revision`` may be 0 here (an instance from a format-1 snapshot, or built by a test).
    """
    if not isinstance(instance, Instance):
        raise ValidationError("instance", f"expected an Instance, got {_type_name(instance)}")
    return Instance(
        id=validate_instance_id(instance.id),
        service=validate_service(instance.service),
        address=validate_address(instance.address),
        port=validate_port(instance.port),
        tags=validate_tags(instance.tags),
        meta=validate_meta(instance.meta),
        check=None if instance.check is None else validate_check(instance.check),
        status=validate_status(instance.status),
        since_ms=validate_time_ms(instance.since_ms, "since_ms"),
        revision=_int_in(instance.revision, "revision", "revision", 0, REVISION_MAX,
                         "an integer from 0 to 2**63-1"),
        output=validate_output(instance.output),
    )
