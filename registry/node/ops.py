"""The client operations: each request on the client socket turned into a write, a read or an answer.

Arguments are checked here (``ValidationError`` for a bad one: the loop answers ``invalid``);
writes and linearizable reads go through ``Requests``; the outcome of an applied write becomes
its reply in ``render``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from registry.catalogue import (
    Applied,
    Check,
    Deregister,
    Deregistered,
    HealthSet,
    Register,
    Registered,
    Rejected,
    Request,
    Restored,
    ValidationError,
    encode_request,
    check_to_map,
    validate_check,
    validate_external_client_id,
)

from .client_api import ClientRequest
from .member_view import MemberView
from .renewals import Renewals
from .replica import Replica
from .requests import Caller, Failure, Outcome, Replies, Requests
from .snapshot_ops import SnapshotOps, restored_reply
from .transfer import Transfers


class ClientOps:
    """Dispatch of the client protocol's operations (docs/client-protocol.md)."""

    def __init__(self, *, requests: Requests, replica: Replica, replies: Replies, snapshots: SnapshotOps,
                 renewals: Renewals, transfers: Transfers, status: Callable[[], dict[str, Any]],
                 members: MemberView, wall: Callable[[], float] = time.time) -> None:
        self._requests = requests
        self._replica = replica
        self._replies = replies
        self._renewals = renewals
        self._transfers = transfers
        self._status = status
        self._members = members
        self._wall = wall
        self._handlers: dict[str, Callable[[ClientRequest, float], None]] = {
            "register": self._write, "deregister": self._write, "services": self._services,
            "status": self._answer_status, "snapshot_save": snapshots.save, "snapshot_restore": snapshots.restore,
            "pass": self._pass, "leader_transfer": self._leader_transfer, "members": self._members_op,
        }

    def handle(self, request: ClientRequest, now: float) -> None:
        """Start or answer one request. Raises ValidationError or CommandError for bad arguments."""
        self._handlers[request.op](request, now)

    def _write(self, request: ClientRequest, now: float) -> None:
        args = request.args
        client_id, seq = args.get("client"), args.get("seq")
        validate_external_client_id(client_id)  # NB: '~' ids are the cluster's own (~health)
        if request.op == "register":
            command: Register | Deregister = Register(
                service=_arg(args, "service", str), address=_arg(args, "address", str), port=_arg(args, "port", int),
                instance_id=_arg(args, "instance_id", str, optional=True), tags=tuple(_arg(args, "tags", list, default=[])),
                meta=_arg(args, "meta", dict, default={}), check=_check_arg(args),
                at_ms=int(self._wall() * 1000))  # NB: stamped once: every retry carries the same bytes
        else:
            command = Deregister(service=_arg(args, "service", str),
                                 instance_id=_arg(args, "instance_id", str, optional=True),
                                 address=_arg(args, "address", str, optional=True),
                                 port=_arg(args, "port", int, optional=True))
        data = encode_request(Request(client_id=client_id, seq=seq, command=command))  # validates
        self._requests.write(Caller(request.identity, request.request_id), (client_id, seq), data, now)

    def _services(self, request: ClientRequest, now: float) -> None:
        service = _arg(request.args, "service", str, optional=True)
        caller = Caller(request.identity, request.request_id)
        if _arg(request.args, "stale", bool, default=False):
            self._answer_services(caller, service)
        else:
            self._requests.read(caller, lambda done: self._answer_services(done, service), now)

    def _answer_services(self, caller: Caller, service: str | None) -> None:
        view = self._replica.view
        names = [service.lower()] if service is not None else list(view.service_names())
        services = {name: [_instance_json(i) for i in view.instances(name)] for name in names}
        self._replies.reply(caller.identity, caller.request_id, {"index": view.applied_index, "services": services})

    def _pass(self, request: ClientRequest, now: float) -> None:
        """A TTL renewal: confirmed against committed state and taken by the leader's tracker, at
        once under the leader's lease, else after a read index; a follower relays it to the
        leader in a batch (renewals.py). Costs no log entry unless the instance was critical."""
        instance_id = _arg(request.args, "instance_id", str)
        service = _arg(request.args, "service", str, optional=True)
        self._renewals.renew(Caller(request.identity, request.request_id), instance_id, service, now)

    def _leader_transfer(self, request: ClientRequest, now: float) -> None:
        """Hand leadership to the member named `target` (nil: the most caught-up voter); answered
        once this node sees it lead, or with `transfer_failed` (registry/node/transfer.py)."""
        target = _arg(request.args, "target", str, optional=True)
        caller = Caller(request.identity, request.request_id)
        self._transfers.request(target, now, self._transfers.reply_to(caller))

    def _members_op(self, request: ClientRequest, now: float) -> None:
        """The leader's view of the members (registry/node/member_view.py); no arguments."""
        self._members.request(Caller(request.identity, request.request_id), now)

    def _answer_status(self, request: ClientRequest, now: float) -> None:
        self._replies.reply(request.identity, request.request_id, self._status())


def render(applied: Applied) -> Outcome:
    """The reply to the client whose write was applied (docs/client-protocol.md)."""
    result = applied.result
    if isinstance(result, Registered):
        return {"instance_id": result.instance_id, "created": result.created, "index": applied.index,
                "previous": None if result.previous is None else _instance_json(result.previous)}
    if isinstance(result, Deregistered):
        return {"removed": list(result.removed), "index": applied.index}
    if isinstance(result, Restored):
        return restored_reply(result.services, result.instances, applied.index)
    if isinstance(result, HealthSet):
        return {"changed": result.changed, "index": applied.index}
    if isinstance(result, Rejected):
        return Failure(result.code, result.message)
    raise AssertionError(f"an applied write has no reply for {result!r}")


def _arg(args: dict[str, Any], key: str, kind: type, *, optional: bool = False, default: Any = None) -> Any:
    value = args.get(key, default)
    if value is None:
        if optional or default is not None:
            return value
        raise ValidationError(key, f"missing argument {key!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValidationError(key, f"argument {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _check_arg(args: dict[str, Any]) -> Check | None:
    """The `check` map of a register (docs/client-protocol.md), validated; None without one."""
    raw = _arg(args, "check", dict, optional=True)
    return None if raw is None else validate_check(raw)


def _instance_json(instance: Any) -> dict[str, Any]:
    return {"id": instance.id, "address": instance.address, "port": instance.port,
            "tags": list(instance.tags), "meta": dict(instance.meta), "status": instance.status.value,
            "since_ms": instance.since_ms, "revision": instance.revision, "output": instance.output,
            "check": None if instance.check is None else check_to_map(instance.check)}
