"""DnsSettings: everything the DNS child needs to know, in one place.

The agent builds one ``DnsSettings`` and hands it to ``DnsProcess``; the handle passes it to the
child as JSON on its command line (``to_json``), and the child reads it back (``from_json``).
So the list of settings exists once: add a field here and both sides have it. JSON, never
pickle: the child must not run code the command line names, other than the responder factory
(``responder``, a ``module:callable`` path).

Only what the child uses lives here; what only the parent uses (the snapshot source, the backlog
bound) is given to ``DnsProcess`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from registry.catalogue import MAX_SESSIONS
from registry.childproc import settings_from_json, settings_to_json

from .zone import DEFAULT_DOMAIN

__all__ = ["DEFAULT_RESPONDER", "DnsSettings"]

#: The responder the child builds: "module:callable", called with ``responder_args()``.
DEFAULT_RESPONDER = "registry_dns.resolver:Responder"


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """The DNS child's settings. Invalid values raise ValueError naming the field and what is accepted.

    ``nameservers`` are (node name, IP address) pairs, as ``Responder`` takes them. The
    responder's own fields (``domain``, the TTLs, ``max_udp_payload``) are checked by the
    responder when the child builds it; a refusal is the child's start error.
    """

    address: tuple[str, int]
    domain: str = DEFAULT_DOMAIN
    ttl_s: int = 30
    negative_ttl_s: int = 5
    max_udp_payload: int = 1232
    nameservers: tuple[tuple[str, str], ...] = ()
    max_stale_s: float = 30.0
    tcp_idle_timeout_s: float = 10.0
    max_tcp_clients: int = 256
    max_sessions: int = MAX_SESSIONS
    stats_interval_s: float = 0.5
    responder: str = DEFAULT_RESPONDER

    def __post_init__(self) -> None:
        host, port = _address(self.address)
        # NB: frozen, so normalising (lists from JSON or callers to tuples) goes through object.__setattr__.
        object.__setattr__(self, "address", (host, port))
        object.__setattr__(self, "nameservers", _nameservers(self.nameservers))
        for name in ("max_stale_s", "tcp_idle_timeout_s", "stats_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("max_tcp_clients", "max_sessions"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
        module, _, factory = self.responder.partition(":") if isinstance(self.responder, str) else ("", "", "")
        if not module or not factory:
            raise ValueError(f"responder must be 'module:callable', got {self.responder!r}")

    def responder_args(self) -> dict[str, Any]:
        """The keywords the responder factory is called with."""
        return {"domain": self.domain, "ttl_s": self.ttl_s, "negative_ttl_s": self.negative_ttl_s,
                "max_udp_payload": self.max_udp_payload, "nameservers": self.nameservers}

    def to_json(self) -> str:
        return settings_to_json(self)

    @classmethod
    def from_json(cls, text: str) -> DnsSettings:
        """The settings ``to_json`` wrote; ValueError saying what is wrong otherwise."""
        return settings_from_json(cls, text, what="DNS settings", required=("address",))


def _address(value: Any) -> tuple[str, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and type(port) is int and 0 <= port <= 65535:
            return host, port
    raise ValueError(f"address must be (host, port) with a port from 0 to 65535, got {value!r}")


def _nameservers(value: Sequence[Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in value:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"nameservers must be (node name, IP address) pairs, got {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)
