"""The catalogue's value type: one registered instance of a service."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AddressKind(enum.Enum):
    """What an instance's address is, hence how DNS answers for it (A, AAAA or CNAME)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    HOST = "host"


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
    - ``meta``: ``(key, value)`` pairs sorted by key, keys unique.
    """

    id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()

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
