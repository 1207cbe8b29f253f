"""The Python client of the registry: the client side of docs/client-protocol.md (version 1).

Contract: every public call either returns a typed result that a server sent, or raises a
``RegistryError`` within ``timeout_s``. Arguments are checked here, before any network traffic,
with the catalogue's own rules (``registry.catalogue.validation``, the limits of the protocol
document), so a node refuses nothing that passes here unless the two versions differ.

Writes are at-most-once (Raft §8): a ``Client`` has a random client id, and each new write takes
the next sequence number. When a server does not answer in time, or answers ``timeout``,
``no_leader`` or ``stopping``, the SAME write (same client id, same ``seq``) goes to the next
server, so a write is never applied twice even if an earlier attempt did commit.

Thread safety: a ``Client`` owns ZeroMQ sockets, which are not thread-safe. Use one ``Client``
per thread. (Calls are also serialized by an internal lock, so sharing one by mistake is safe,
just not concurrent.)

Rooms: ``protocol`` (request and reply frames, result parsing: pure), ``retry`` (which server
next, when, when to give up and with what error: pure, given ``now``), ``errors``, ``results``,
``arguments`` (validation before sending), ``servers`` (which servers), and ``sync`` (the
``Client``: the only module with sockets and a clock).

Prohibitions: this package imports no node, transport or storage code (only the catalogue's
pure validation rules and ``registry.naming``); it speaks only the wire protocol, so a client in
another language can be written from the same document.
"""

from .arguments import looks_like_hostport
from .errors import NotFound, RegistryError, TransferFailed, Unavailable, ValidationFailed
from .protocol import PROTOCOL_VERSION
from .results import (
    CheckInfo,
    Deregistration,
    Heartbeat,
    InstanceInfo,
    KeepaliveState,
    LeaderTransfer,
    MemberInfo,
    Members,
    NodeStatus,
    PeerStatus,
    Registration,
    Restoration,
    SavedSnapshot,
    Services,
)
from .retry import ATTEMPT_TIMEOUT_S, ROUND_BACKOFF_S
from .servers import DEFAULT_SERVERS, SERVERS_ENV, resolve_servers, unresolvable
from .sync import Client

__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "DEFAULT_SERVERS",
    "PROTOCOL_VERSION",
    "ROUND_BACKOFF_S",
    "SERVERS_ENV",
    "CheckInfo",
    "Client",
    "Deregistration",
    "Heartbeat",
    "InstanceInfo",
    "KeepaliveState",
    "LeaderTransfer",
    "MemberInfo",
    "Members",
    "NodeStatus",
    "NotFound",
    "PeerStatus",
    "Registration",
    "RegistryError",
    "Restoration",
    "SavedSnapshot",
    "Services",
    "TransferFailed",
    "Unavailable",
    "ValidationFailed",
    "looks_like_hostport",
    "resolve_servers",
    "unresolvable",
]
