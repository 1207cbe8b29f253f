"""Names and addresses as users write them: node names, HOST:PORT endpoints, node ids.

Node ids are what the Raft core sees; they are derived from node names, never from addresses
(etcd: "IP addresses make poor node IDs"), so every node computes the same id for a name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from registry.raft import NodeId

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class AddressError(ValueError):
    """A node name or HOST:PORT that cannot be used; the message says what is accepted."""


def validate_node_name(name: str) -> str:
    if not _NODE_NAME.match(name):
        raise AddressError(f"invalid node name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def node_id_for(name: str) -> NodeId:
    """The permanent Raft id of the node called `name`: 63 bits of BLAKE2b, never 0."""
    digest = hashlib.blake2b(validate_node_name(name).encode(), digest_size=8).digest()
    return NodeId((int.from_bytes(digest, "big") >> 1) or 1)


# Examples that parse_hostport's errors show, by what the address is for (IPv4, IPv6): a node's
# Raft address, a node's client address (as `registry up` serves them), an instance's address.
RAFT_EXAMPLES = ("127.0.0.1:7001", "[::1]:7001")
SERVER_EXAMPLES = ("127.0.0.1:7101", "[::1]:7101")
INSTANCE_EXAMPLES = ("10.0.0.5:8080", "[2001:db8::5]:8080")


def parse_hostport(text: str, *, what: str = "address", examples: tuple[str, str] = RAFT_EXAMPLES) -> tuple[str, int]:
    """Parse HOST:PORT or [IPv6]:PORT. Raises AddressError saying what is accepted, with
    ``examples`` (an IPv4 and an IPv6 one) of what the caller expects there."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise AddressError(f"invalid {what} {text!r}: expected HOST:PORT, e.g. {examples[0]} or {examples[1]}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"invalid {what} {text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise AddressError(f"invalid {what} {text!r}: write IPv6 addresses in brackets, e.g. {examples[1]}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise AddressError(f"invalid {what} {text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def zmq_endpoint(host: str, port: int) -> str:
    """The tcp:// endpoint ZeroMQ wants for HOST:PORT (IPv6 in brackets)."""
    return f"tcp://{format_hostport(host, port)}"
