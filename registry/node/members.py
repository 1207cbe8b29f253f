"""The member directory: who each node id of the configuration is, and where to reach it.

The core knows members only as node ids (``Membership``); the node needs their names and
addresses to connect the transport and to answer ``registry members``. This module keeps that
as a pure value, ``Directory`` (node id -> ``Member``), with no I/O:

- at first start it comes from the config (``Directory.from_config``: this node and its
  ``--peer`` flags; the peers' client addresses are unknown, None);
- every membership change carries the member's ``Member`` as its opaque ``ConfChange.context``
  (``encode_context``/``decode_context``: a msgpack map ``{"name", "raft", "client"}``), and the
  node applies each CONFIG entry's change with ``Directory.apply`` (ops named as the core's
  ``ConfChangeOp``, lower case: ``add_learner``, ``promote``, ``remove``);
- it is persisted with every snapshot the node writes (``encode_directory`` into the snapshot
  file's optional ``members`` header field), so that after a restart the directory is the
  snapshot's copy plus the CONFIG entries after it. A snapshot without the field (written before
  this existed) gives ``None``, and the node falls back to ``from_config``.

Node ids are derived from names (``naming.node_id_for``), so a context whose name does not hash
to the change's node id is refused: an address can never be attached to the wrong member.

Also here: fault tolerance (how many voters may fail while a majority remains) and the floor
check that ``registry members add/remove`` apply before proposing a change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from registry.naming import AddressError, format_hostport, node_id_for, parse_hostport, validate_node_name
from registry.raft import NodeId

from .config import NodeConfig

__all__ = [
    "CHANGE_OPS", "MAX_CONTEXT_BYTES", "Directory", "Member", "MemberError", "check_fault_tolerance",
    "decode_context", "decode_directory", "encode_context", "encode_directory", "fault_tolerance",
]

#: What one member's context may weigh; the core bounds a ConfChange's context at 4096 bytes.
MAX_CONTEXT_BYTES = 1024
#: The most members a stored directory may list (the core's configuration encoding's bound).
MAX_MEMBERS = 1024
#: The membership-change ops Directory.apply knows: the core's ConfChangeOp names, lower case.
CHANGE_OPS = ("add_learner", "promote", "remove")
_KEYS = frozenset({"name", "raft", "client"})


class MemberError(ValueError):
    """A member's context or a stored directory that cannot be used, or a change that does not
    apply; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member: its name (its node id is derived from it), its Raft address, and its client
    address when known (None for a peer named only by a --peer flag)."""

    name: str
    raft: tuple[str, int]
    client: tuple[str, int] | None = None

    @property
    def node_id(self) -> NodeId:
        return node_id_for(self.name)

    def to_map(self) -> dict[str, Any]:
        return {"name": self.name, "raft": format_hostport(*self.raft),
                "client": None if self.client is None else format_hostport(*self.client)}

    @classmethod
    def from_map(cls, value: Any, what: str = "member") -> Member:
        """A member from its map form, every field checked; MemberError names the bad one."""
        if not isinstance(value, dict):
            raise MemberError(f"{what}: expected a map with keys name, raft, client; got {type(value).__name__}")
        extra = set(value) - _KEYS
        if extra:
            raise MemberError(f"{what}: unknown key(s) {', '.join(sorted(map(repr, extra)))}; "
                              "accepted: name, raft, client")
        name, raft, client = value.get("name"), value.get("raft"), value.get("client")
        if not isinstance(name, str):
            raise MemberError(f"{what}: 'name' must be a node name (str), got {name!r:.60}")
        try:
            validate_node_name(name)
        except AddressError as exc:
            raise MemberError(f"{what}: {exc}") from None
        return cls(name, _address(raft, f"{what} {name}: 'raft'"),
                   None if client is None else _address(client, f"{what} {name}: 'client'"))


def _address(value: Any, what: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise MemberError(f"{what} must be HOST:PORT (str), got {value!r:.60}")
    try:
        return parse_hostport(value, what=what)
    except AddressError as exc:
        raise MemberError(str(exc)) from None


def encode_context(member: Member) -> bytes:
    """The bytes the node puts in ``ConfChange.context`` for this member."""
    data = msgpack.packb(member.to_map(), use_bin_type=True)
    if len(data) > MAX_CONTEXT_BYTES:
        raise MemberError(f"member {member.name}: its context is {len(data)} bytes, at most {MAX_CONTEXT_BYTES}")
    return data


def decode_context(data: bytes) -> Member:
    """The member a ``ConfChange.context`` names; MemberError if it is not a valid one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MemberError(f"a member context must be bytes, got {type(data).__name__}")
    if len(data) > MAX_CONTEXT_BYTES:
        raise MemberError(f"a member context is {len(data)} bytes, at most {MAX_CONTEXT_BYTES}")
    if not data:
        raise MemberError("the member context is empty: expected a msgpack map {name, raft, client}")
    try:
        value = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MemberError(f"a member context is not msgpack ({type(exc).__name__}: {exc})") from None
    return Member.from_map(value, "member context")


class Directory(Mapping[NodeId, Member]):
    """Node id -> Member, immutable; every change returns a new Directory.

    Invariant: every key is its member's ``node_id``, and no two members share a name."""

    __slots__ = ("_members",)

    def __init__(self, members: Iterable[Member] = ()) -> None:
        by_id: dict[NodeId, Member] = {}
        for member in members:
            if member.node_id in by_id:
                raise MemberError(f"member {member.name} is listed twice")
            by_id[member.node_id] = member
        self._members = by_id

    @classmethod
    def from_config(cls, config: NodeConfig) -> Directory:
        """This node (with its client address) and its --peer flags (client addresses unknown)."""
        return cls([Member(config.name, config.raft, config.client),
                    *(Member(name, address) for name, address in sorted(config.peers.items()))])

    def __getitem__(self, node_id: NodeId) -> Member:
        return self._members[node_id]

    def __iter__(self) -> Iterator[NodeId]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Directory) and self._members == other._members

    def __hash__(self) -> int:
        return hash(frozenset(self._members.items()))

    def __repr__(self) -> str:
        return f"Directory({', '.join(m.name for m in self.members())})"

    def members(self) -> list[Member]:
        """Every member, by name."""
        return sorted(self._members.values(), key=lambda m: m.name)

    def names(self) -> dict[NodeId, str]:
        return {node_id: m.name for node_id, m in self._members.items()}

    def by_name(self, name: str) -> Member | None:
        return self._members.get(node_id_for(name)) if _valid_name(name) else None

    def name_of(self, node_id: NodeId) -> str:
        member = self._members.get(node_id)
        return member.name if member is not None else f"node {node_id}"

    def with_member(self, member: Member) -> Directory:
        """This directory with `member` added, or replacing the entry of the same name."""
        return Directory([*(m for m in self._members.values() if m.node_id != member.node_id), member])

    def without(self, node_id: NodeId) -> Directory:
        return Directory(m for m in self._members.values() if m.node_id != node_id)

    def apply(self, op: str, node_id: NodeId, context: bytes) -> Directory:
        """The directory after a committed membership change (``op`` one of CHANGE_OPS).

        ``add_learner`` needs the new member's context; ``promote`` takes one optionally (to
        update its addresses; an empty context keeps the entry); ``remove`` ignores it. The
        context's name must hash to ``node_id``. MemberError when the change does not apply."""
        if op not in CHANGE_OPS:
            raise MemberError(f"unknown membership change {op!r}; known: {', '.join(CHANGE_OPS)}")
        if op == "remove":
            return self.without(node_id)
        if op == "promote" and not context:
            if node_id not in self._members:
                raise MemberError(f"promote node {node_id}: no member context and no directory entry for it")
            return self
        member = decode_context(context)
        if member.node_id != node_id:
            raise MemberError(f"{op} node {node_id}: the context names {member.name}, whose id is {member.node_id}")
        return self.with_member(member)

    def restricted_to(self, node_ids: Iterable[NodeId]) -> tuple[Directory, list[NodeId]]:
        """The entries of these ids only (the core's current members), and the ids that have no
        entry (a member known to the core whose name and address this node never learnt)."""
        wanted = set(node_ids)
        missing = sorted(n for n in wanted if n not in self._members)
        return Directory(m for m in self._members.values() if m.node_id in wanted), missing


def _valid_name(name: str) -> bool:
    try:
        validate_node_name(name)
    except AddressError:
        return False
    return True


def encode_directory(directory: Directory) -> bytes:
    """The directory as stored with a snapshot: a msgpack list of member maps, by name."""
    return msgpack.packb([m.to_map() for m in directory.members()], use_bin_type=True)


def decode_directory(data: bytes) -> Directory:
    """A directory stored by encode_directory; MemberError saying what is wrong."""
    try:
        value = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MemberError(f"the stored member directory is not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, list):
        raise MemberError(f"the stored member directory must be a list of members, got {type(value).__name__}")
    if len(value) > MAX_MEMBERS:
        raise MemberError(f"the stored member directory lists {len(value)} members, at most {MAX_MEMBERS}")
    return Directory(Member.from_map(item, f"stored member {k}") for k, item in enumerate(value))


# -- fault tolerance --------------------------------------------------------------------------------


def fault_tolerance(voters: int) -> int:
    """How many voters may fail while a majority remains (Raft needs floor(n/2)+1 of n): 0 for 1
    or 2 voters, 1 for 3 or 4, 2 for 5 or 6. Learners do not count."""
    if voters < 0:
        raise ValueError(f"a number of voters cannot be negative, got {voters}")
    return (voters - 1) // 2 if voters else 0


def check_fault_tolerance(voters_before: int, voters_after: int, floor: int) -> str | None:
    """Why a change from `voters_before` to `voters_after` voters must be refused under the floor
    `floor` (``NodeConfig.min_fault_tolerance``), or None when it may go ahead.

    A change is refused only when it LOWERS the fault tolerance to below the floor: a cluster
    already below it (a single node, two nodes) may still grow or shrink within it, and a
    change that keeps or raises it is always allowed (adding a learner, 3 -> 4 voters)."""
    if floor < 0:
        raise ValueError(f"the fault tolerance floor cannot be negative, got {floor}")
    before, after = fault_tolerance(voters_before), fault_tolerance(voters_after)
    if after >= before or after >= floor:
        return None
    return (f"this change would lower the cluster's fault tolerance from {before} to {after} "
            f"({voters_before} -> {voters_after} voters), below the floor of {floor} (min_fault_tolerance): "
            f"after it, {'any failure' if after == 0 else f'{after + 1} failures'} would stop the cluster. "
            "Add a replacement first, or pass --force")
