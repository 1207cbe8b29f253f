"""The catalogue's value types: one registered instance of a service, and its health check."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AddressKind(enum.Enum):
    """What an instance's address is, hence how DNS answers for it (A, AAAA or CNAME)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    HOST = "host"


class HealthStatus(enum.Enum):
    """Whether DNS serves an instance. Changed only by committed commands (docs/health.md)."""

    PASSING = "passing"
    CRITICAL = "critical"


class CheckKind(enum.Enum):
    TTL = "ttl"  # the instance (or its keepalive) must renew within ttl_ms
    TCP = "tcp"  # the leader connects to the instance's address and port
    HTTP = "http"  # the leader GETs url; a 2xx status is a success


@dataclass(frozen=True, slots=True)
class Check:
    """How an instance's health is decided. Times are integer milliseconds.

    Made by ``validation.validate_check`` (or decoded from a validated entry), so every field is
    in range for its kind; fields that do not apply to the kind are 0 or "".
    """

    kind: CheckKind
    ttl_ms: int = 0  # TTL: renewed within this, or critical
    url: str = ""  # HTTP: "http://HOST:PORT/path"
    interval_ms: int = 0  # TCP/HTTP: probe period
    timeout_ms: int = 0  # TCP/HTTP: one probe's limit (<= interval_ms)
    failures: int = 3  # TCP/HTTP: critical after this many consecutive failures
    successes: int = 2  # TCP/HTTP: passing again after this many consecutive successes
    deregister_after_ms: int = 0  # any kind: removed after this long critical; 0 = never


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service: where to reach it, and what it says about itself.

    Instances are made by the catalogue from validated commands (or by
    ``validation.validate_instance``), so every field is already in canonical form:

    - ``service``: lowercase DNS label;
    - ``id``: unique within its service, case-sensitive (see ``validation.validate_instance_id``);
    - ``address``: a normalised IPv4 or IPv6 address (``ipaddress``'s text form), or a lowercase
      host name without a trailing dot;
    - ``tags``: sorted, lowercase, unique DNS labels;
    - ``meta``: ``(key, value)`` pairs sorted by key, keys unique;
    - ``check``: how its health is decided, or None (always passing);
    - ``status``, ``since_ms``: its health and the wall-clock time (ms, from the command that set
      it) of its registration or last transition;
    - ``revision``: the log index of the Register that created or last replaced it, so a late
      health command for an older incarnation changes nothing (0: restored from a format-1
      snapshot, written before health existed);
    - ``output``: why it has its status, from the last transition (e.g. "connection refused");
      "" after a registration.
    """

    id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    check: Check | None = None
    status: HealthStatus = HealthStatus.PASSING
    since_ms: int = 0
    revision: int = 0
    output: str = ""

    @property
    def serving(self) -> bool:
        """True if DNS answers with this instance: it is not critical."""
        return self.status is HealthStatus.PASSING

    @property
    def address_kind(self) -> AddressKind:
        """IPV6 if the address has a colon; IPV4 if its last dotted part is numeric; else HOST.

        Exact for canonical instances: a host name's last label is never all digits (validation
        refuses it), so the test costs a string scan, not a parse.
        """
        if ":" in self.address:
            return AddressKind.IPV6
        if self.address.rpartition(".")[2].isdigit():
            return AddressKind.IPV4
        return AddressKind.HOST

    def has_tag(self, tag: str) -> bool:
        """True if the instance carries ``tag`` (lowercase; tags are stored lowercase)."""
        return tag in self.tags
