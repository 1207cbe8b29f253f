"""The node's members room: ``registry members``, answered from the leader's view.

Only the leader knows every member's replication progress, so the leader answers; a follower
forwards the request to the leader it knows (``ForwardOp.MEMBERS``, a token) and answers its
caller from the leader's ``MEMBERS_REPLY``, or ``no_leader`` when no leader is known or the
leader did not answer within the request timeout (a leader of an older version drops the frame
as malformed, which ends the same way).

The report: every member of the core's configuration (voters and learners) with its name and
addresses from the member directory (members.py), whether it votes, its match index (the
leader's own last index for itself), how long ago the leader last heard from it, and which one
leads; plus the number of voters, the fault tolerance ((voters - 1) // 2) and the configured
floor. Nothing here reads a clock or touches a socket: the loop passes ``now`` and sends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from registry.naming import format_hostport
from registry.raft import NO_NODE, NodeId, RawNode, Role
from registry.transport import ForwardOp

from .members import Directory, fault_tolerance
from .requests import Caller, Replies

MAX_MEMBERS_BYTES = 64  # a MEMBERS: [token]
MAX_MEMBERS_REPLY_BYTES = 256 * 1024  # a MEMBERS_REPLY: [token, report]: ~150 bytes per member


class MalformedMembers(ValueError):
    """A forwarded MEMBERS or MEMBERS_REPLY whose payload is not of the documented shape."""


@dataclass
class _Forwarded:
    leader: NodeId
    caller: Caller
    deadline: float


class MemberView:
    """Invariant: every entry of ``_forwarded`` is a caller not yet answered."""

    def __init__(self, *, raw: RawNode, node_id: NodeId, directory: Callable[[], Directory],
                 last_contact: dict[NodeId, float], min_fault_tolerance: int,
                 forward: Callable[[NodeId, ForwardOp, bytes], None], replies: Replies, timeout_s: float) -> None:
        self._raw = raw
        self._node_id = node_id
        self._directory = directory
        self._last_contact = last_contact
        self._floor = min_fault_tolerance
        self._forward = forward
        self._replies = replies
        self.timeout_s = timeout_s
        self._forwarded: dict[int, _Forwarded] = {}
        self._tokens = itertools.count(1)
        self.forwarded = 0  # requests sent on to the leader
        self.malformed = 0  # MEMBERS / MEMBERS_REPLY frames dropped

    def request(self, caller: Caller, now: float) -> None:
        """Answer ``caller`` with the leader's report: at once here if this node leads, else
        through the leader; ``no_leader`` when none is known."""
        status = self._raw.basic_status()
        if status.role is Role.LEADER:
            self._replies.reply(caller.identity, caller.request_id, self.report(now))
        elif status.leader_id != NO_NODE:
            token = next(self._tokens)
            self._forwarded[token] = _Forwarded(status.leader_id, caller, now + self.timeout_s)
            self._forward(status.leader_id, ForwardOp.MEMBERS, msgpack.packb([token]))
            self.forwarded += 1
        else:
            self._replies.error(caller.identity, caller.request_id, "no_leader",
                                "no leader is known (an election is under way, or the cluster lost its quorum): "
                                "only the leader knows every member's progress; retry")

    def report(self, now: float) -> dict[str, Any]:
        """The leader's view of the members (docs/client-protocol.md, ``members``)."""
        st = self._raw.status()
        directory = self._directory()
        membership = st.membership
        leads = st.role is Role.LEADER
        members = []
        for node_id in sorted(membership.members, key=lambda n: (directory.name_of(n), n)):
            member = directory.get(node_id)
            if node_id == st.node_id:
                match, contact = st.last_index, 0.0
            else:
                progress = st.progress.get(node_id) if leads else None
                match = progress.match_index if progress is not None else None
                heard = self._last_contact.get(node_id)
                contact = None if heard is None else round(max(0.0, now - heard), 3)
            members.append({
                "name": directory.name_of(node_id), "id": node_id,
                "raft": None if member is None else format_hostport(*member.raft),
                "client": None if member is None or member.client is None else format_hostport(*member.client),
                "voter": node_id in membership.voters, "match": match, "last_contact_s": contact,
                "leader": node_id == st.leader_id,
            })
        voters = len(membership.voters)
        return {"leader": directory.name_of(st.leader_id) if st.leader_id else None, "term": st.term,
                "commit": st.commit_index, "members": members, "voters": voters,
                "learners": len(membership.learners), "fault_tolerance": fault_tolerance(voters),
                "min_fault_tolerance": self._floor}

    # -- forwarding -------------------------------------------------------------------------------

    def forwarded_request(self, source: NodeId, payload: bytes, now: float) -> None:
        """On the leader: a follower's MEMBERS. Answered at once with MEMBERS_REPLY, or not at
        all when this node no longer leads (the follower's deadline answers its caller)."""
        token = _unpack(payload, 1)[0]
        if self._raw.basic_status().role is not Role.LEADER:
            return
        self._forward(source, ForwardOp.MEMBERS_REPLY, msgpack.packb([token, self.report(now)]))

    def forwarded_reply(self, source: NodeId, payload: bytes) -> None:
        """On a follower: the leader's report for a request it forwarded."""
        token, report = _unpack(payload, 2)
        if not isinstance(report, dict):
            raise MalformedMembers(f"the report must be a map, got {type(report).__name__}")
        waiting = self._forwarded.get(token)
        if waiting is None or waiting.leader != source:
            return  # answered already (its deadline passed), or not ours
        del self._forwarded[token]
        self._replies.reply(waiting.caller.identity, waiting.caller.request_id, report)

    def check(self, now: float) -> None:
        """Answer forwarded requests whose leader did not reply in time. Every tick."""
        for token, waiting in list(self._forwarded.items()):
            if now >= waiting.deadline:
                del self._forwarded[token]
                self._replies.error(waiting.caller.identity, waiting.caller.request_id, "no_leader",
                                    f"the leader {self._directory().name_of(waiting.leader)} did not answer within "
                                    f"{self.timeout_s:g} s (is it reachable? an older version answers nothing); "
                                    "retry")

    def fail_all(self, code: str, message: str) -> int:
        waiting = list(self._forwarded.values())
        self._forwarded.clear()
        for w in waiting:
            self._replies.error(w.caller.identity, w.caller.request_id, code, message)
        return len(waiting)


def _unpack(payload: bytes, size: int) -> list[Any]:
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedMembers(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(value, list) or len(value) != size or type(value[0]) is not int or not 0 <= value[0] < 2**63:
        raise MalformedMembers(f"expected [token{', report' if size == 2 else ''}], got {value!r:.80}")
    return value
