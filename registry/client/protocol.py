"""The wire format of docs/client-protocol.md (version 1): request frames, reply frames, and the
typed results parsed from replies. Pure: no sockets, no clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from .errors import Unavailable, error_for
from .results import (
    CheckInfo,
    Deregistration,
    Heartbeat,
    InstanceInfo,
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

PROTOCOL_VERSION = 1
MAX_REQUEST_ID = 2**63 - 1

T = TypeVar("T")
Parser = Callable[[Any, str], T]


def encode_request(request_id: int, op: str, args: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": args}, use_bin_type=True)


def decode_reply(frames: list[bytes]) -> dict[Any, Any] | None:
    """A reply map from a single msgpack frame, or None if it is not one."""
    if len(frames) != 1:
        return None
    try:
        reply = msgpack.unpackb(frames[0], raw=False)
    except Exception:  # NB: msgpack raises several unrelated types for garbage.
        return None
    return reply if isinstance(reply, dict) else None


def outcome(reply: dict[Any, Any], server: str, parse: Parser[T]) -> T:
    """The result of a decoded reply from ``server``, or the exception for it. A malformed reply
    raises ``Unavailable`` with ``code`` None, a retryable error code ``Unavailable`` with that
    code (either way: try elsewhere); other codes their own type (``errors.error_for``)."""
    try:
        if reply.get("v") != PROTOCOL_VERSION:
            raise ValueError(f"protocol version {reply.get('v')!r}, expected {PROTOCOL_VERSION}")
        if reply.get("ok") is True:
            return parse(reply.get("result"), server)
        if reply.get("ok") is not False:
            raise ValueError(f"'ok' is {reply.get('ok')!r}")
        error = _map(reply.get("error"), "error")
        code = _str(error.get("code"), "error code")
        message = _str(error.get("message", ""), "error message")
    except (KeyError, TypeError, ValueError) as e:
        detail = f"malformed reply: {type(e).__name__}: {e}"
        raise Unavailable(f"{server}: {detail}", last_error=detail, server=server) from None
    raise error_for(code, message, server)


# Result parsers: a reply of the wrong shape raises ValueError, and counts as a failed attempt.


def _int(value: Any, what: str) -> int:
    if type(value) is not int:  # NB: bool is an int subclass and is not a valid integer here.
        raise ValueError(f"{what} is not an integer: {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string: {value!r}")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _map(value: Any, what: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a map: {value!r}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list: {value!r}")
    return value


def parse_registration(result: Any, server: str) -> Registration:
    r = _map(result, "result")
    created = r["created"]
    if not isinstance(created, bool):
        raise ValueError(f"created is not a boolean: {created!r}")
    # NB: "previous" is newer than version 1's first nodes: absent and nil mean the same.
    previous = r.get("previous")
    return Registration(_str(r["instance_id"], "instance_id"), created, _int(r["index"], "index"),
                        previous=None if previous is None else parse_instance(previous))


def parse_deregistration(result: Any, server: str) -> Deregistration:
    r = _map(result, "result")
    removed = tuple(_str(i, "removed[]") for i in _list(r["removed"], "removed"))
    return Deregistration(removed, _int(r["index"], "index"))


def parse_instance(item: Any) -> InstanceInfo:
    i = _map(item, "instance")
    meta = {_str(k, "meta key"): _str(v, "meta value") for k, v in _map(i["meta"], "meta").items()}
    return InstanceInfo(
        id=_str(i["id"], "id"),
        address=_str(i["address"], "address"),
        port=_int(i["port"], "port"),
        tags=tuple(_str(t, "tag") for t in _list(i["tags"], "tags")),
        meta=meta,
        # NB: the health fields are newer than version 1's first nodes: absent means the default.
        status=_str(i.get("status", "passing"), "status"),
        since_ms=_int(i.get("since_ms", 0), "since_ms"),
        check=parse_check(i.get("check")),
        revision=_int(i.get("revision", 0), "revision"),
        output=_str(i.get("output") or "", "output"),
    )


def parse_check(item: Any) -> CheckInfo | None:
    if item is None:
        return None
    c = _map(item, "check")
    return CheckInfo(
        kind=_str(c["kind"], "check kind"),
        ttl_ms=_int(c.get("ttl_ms", 0), "check ttl_ms"),
        url=_str(c.get("url") or "", "check url"),
        interval_ms=_int(c.get("interval_ms", 0), "check interval_ms"),
        timeout_ms=_int(c.get("timeout_ms", 0), "check timeout_ms"),
        failures=_int(c.get("failures", 3), "check failures"),
        successes=_int(c.get("successes", 2), "check successes"),
        deregister_after_ms=_int(c.get("deregister_after_ms", 0), "check deregister_after_ms"),
    )


def parse_heartbeat(result: Any, server: str) -> Heartbeat:
    r = _map(result, "result")
    return Heartbeat(_str(r["service"], "service"), _str(r["instance_id"], "instance_id"),
                     _str(r["status"], "status"), _int(r["index"], "index"))


def parse_services(result: Any, server: str) -> Services:
    r = _map(result, "result")
    services = {
        _str(name, "service name"): [parse_instance(item) for item in _list(items, name)]
        for name, items in _map(r["services"], "services").items()
    }
    return Services(services, _int(r["index"], "index"))


def parse_saved_snapshot(result: Any, server: str) -> SavedSnapshot:
    r = _map(result, "result")
    data = r["snapshot"]
    if not isinstance(data, bytes):
        raise ValueError(f"snapshot is not a byte string: {type(data).__name__}")
    return SavedSnapshot(
        index=_int(r["index"], "index"),
        term=_int(r["term"], "term"),
        voters=tuple(_int(v, "voters[]") for v in _list(r["voters"], "voters")),
        learners=tuple(_int(v, "learners[]") for v in _list(r["learners"], "learners")),
        services=_int(r["services"], "services"),
        instances=_int(r["instances"], "instances"),
        sessions=_int(r["sessions"], "sessions"),
        digest=_str(r["digest"], "digest"),
        data=data,
    )


def parse_leader_transfer(result: Any, server: str) -> LeaderTransfer:
    r = _map(result, "result")
    return LeaderTransfer(_str(r["leader"], "leader"), _int(r["term"], "term"),
                          _opt_str(r.get("previous"), "previous"))


def parse_members(result: Any, server: str) -> Members:
    r = _map(result, "result")
    members = []
    for k, item in enumerate(_list(r["members"], "members")):
        m = _map(item, f"members[{k}]")
        contact = m.get("last_contact_s")
        if contact is not None and (isinstance(contact, bool) or not isinstance(contact, (int, float))):
            raise ValueError(f"members[{k}].last_contact_s: expected a number or nil, got {contact!r:.40}")
        voter, leader = m.get("voter"), m.get("leader")
        if not isinstance(voter, bool) or not isinstance(leader, bool):
            raise ValueError(f"members[{k}]: 'voter' and 'leader' must be booleans")
        members.append(MemberInfo(
            name=_str(m["name"], "name"), id=_int(m["id"], "id"), raft=_opt_str(m.get("raft"), "raft"),
            client=_opt_str(m.get("client"), "client"), voter=voter, match=_opt_int(m.get("match"), "match"),
            last_contact_s=None if contact is None else float(contact), leader=leader))
    return Members(leader=_opt_str(r.get("leader"), "leader"), term=_int(r["term"], "term"),
                   commit=_int(r["commit"], "commit"), members=tuple(members), voters=_int(r["voters"], "voters"),
                   learners=_int(r["learners"], "learners"),
                   fault_tolerance=_int(r["fault_tolerance"], "fault_tolerance"),
                   min_fault_tolerance=_int(r["min_fault_tolerance"], "min_fault_tolerance"))


def parse_restoration(result: Any, server: str) -> Restoration:
    r = _map(result, "result")
    return Restoration(_int(r["services"], "services"), _int(r["instances"], "instances"),
                       _int(r["index"], "index"))


def parse_status(result: Any, server: str) -> NodeStatus:
    r = _map(result, "result")
    peers = {}
    for name, p in _map(r.get("peers") or {}, "peers").items():
        p = _map(p, f"peers[{name!r}]")
        contact = p.get("last_contact_ms")
        # NB: the protocol fills peers only on the leader, but a node may also report what it
        # knows of its peers, with nil for the progress only a leader has: accept both.
        peers[_str(name, "peer name")] = PeerStatus(
            match=_opt_int(p.get("match"), "match"),
            next=_opt_int(p.get("next"), "next"),
            state=_opt_str(p.get("state"), "state"),
            last_contact_ms=_opt_int(contact, "last_contact_ms"),
        )
    return NodeStatus(
        server=server,
        node=_str(r["node"], "node"),
        node_id=_int(r["node_id"], "node_id"),
        role=_str(r["role"], "role"),
        term=_int(r["term"], "term"),
        leader=_opt_str(r.get("leader"), "leader"),
        commit=_int(r["commit"], "commit"),
        applied=_int(r["applied"], "applied"),
        last_index=_int(r["last_index"], "last_index"),
        raft=_str(r["raft"], "raft"),
        client=_str(r["client"], "client"),
        dns=_str(r["dns"], "dns"),
        peers=peers,
        dns_stats=_map(r["dns_stats"], "dns_stats") if r.get("dns_stats") is not None else None,
        snapshot=_map(r["snapshot"], "snapshot") if r.get("snapshot") is not None else None,
        health=_map(r["health"], "health") if r.get("health") is not None else None,
    )
