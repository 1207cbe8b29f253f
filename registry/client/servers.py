"""Which servers a client talks to: the argument, ``$REGISTRY_SERVERS``, or ``registry up``'s."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from registry.naming import SERVER_EXAMPLES, AddressError, format_hostport, parse_hostport

from .errors import ValidationFailed

SERVERS_ENV = "REGISTRY_SERVERS"
# The client addresses of `registry up` (node i: client 127.0.0.1:710i).
DEFAULT_SERVERS = ("127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103")


def resolve_servers(servers: Sequence[str] | str | None = None) -> tuple[str, ...]:
    """The servers to use, as canonical HOST:PORT strings, duplicates removed: ``servers`` if
    given (a sequence, or one comma-separated string), else ``$REGISTRY_SERVERS``
    (comma-separated), else ``DEFAULT_SERVERS``. A bad address raises ``ValidationFailed`` naming
    where it came from. Host names are not looked up here (see ``unresolvable``)."""
    source = "server"
    if servers is None:
        env = os.environ.get(SERVERS_ENV, "")
        if env.strip():
            servers, source = env, SERVERS_ENV
        else:
            servers = DEFAULT_SERVERS
    if isinstance(servers, str):
        servers = servers.split(",")
    found: list[str] = []
    for text in servers:
        text = text.strip()
        if not text:
            continue
        try:
            hostport = format_hostport(*parse_hostport(text, what=source, examples=SERVER_EXAMPLES))
        except AddressError as e:
            raise ValidationFailed(str(e), field="servers") from None
        if hostport not in found:
            found.append(hostport)
    if not found:
        raise ValidationFailed(f"no servers given in {source}: expected HOST:PORT[,HOST:PORT...]",
                               field="servers")
    return tuple(found)


def resolves(host: str) -> bool:
    """Whether ``host`` (an IP address or a host name) resolves to an address, by the system's
    resolver (``getaddrinfo``; NB: may block while a DNS server is asked)."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def unresolvable(servers: Sequence[str]) -> list[str]:
    """The host names of ``servers`` (canonical HOST:PORT) that do not resolve, in order."""
    hosts = dict.fromkeys(parse_hostport(s)[0] for s in servers)
    return [host for host in hosts if not resolves(host)]
