"""The members room's forwarded frames: a malformed MEMBERS or MEMBERS_REPLY is refused with
MalformedMembers (the loop drops and counts it), and a reply nobody waits for is ignored."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from registry.naming import node_id_for
from registry.node.member_view import MalformedMembers, MemberView
from registry.node.members import Directory


class Recorder:
    def __init__(self) -> None:
        self.replies: list[tuple[bytes, int, Any]] = []

    def reply(self, identity: bytes, request_id: int, result: dict[str, Any]) -> None:
        self.replies.append((identity, request_id, result))

    def error(self, identity: bytes, request_id: int, code: str, message: str) -> None:
        self.replies.append((identity, request_id, code))


def view(replies: Recorder) -> MemberView:
    return MemberView(raw=None, node_id=node_id_for("n1"), directory=Directory, last_contact={},  # type: ignore[arg-type]
                      min_fault_tolerance=1, forward=lambda *a: None, replies=replies, timeout_s=1.0)


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb({}), msgpack.packb([]), msgpack.packb(["x", {}]),
                                     msgpack.packb([-1, {}]), msgpack.packb([1, 2, 3]), msgpack.packb([1, "report"])])
def test_a_malformed_reply_is_refused(payload: bytes) -> None:
    replies = Recorder()
    with pytest.raises(MalformedMembers):
        view(replies).forwarded_reply(node_id_for("n2"), payload)
    assert replies.replies == []


@pytest.mark.parametrize("payload", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb(["token"])])
def test_a_malformed_request_is_refused(payload: bytes) -> None:
    with pytest.raises(MalformedMembers):
        view(Recorder()).forwarded_request(node_id_for("n2"), payload, 0.0)


def test_a_reply_nobody_waits_for_is_ignored() -> None:
    replies = Recorder()
    view(replies).forwarded_reply(node_id_for("n2"), msgpack.packb([7, {"members": []}]))
    assert replies.replies == []
