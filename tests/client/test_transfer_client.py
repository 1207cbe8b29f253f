"""`Client.transfer_leadership` against fake nodes: what it sends, what it parses, which errors
it retries elsewhere and which it raises (docs/client-protocol.md, `leader_transfer`)."""

from __future__ import annotations

from typing import Any

import pytest

from registry.client import Client, LeaderTransfer, TransferFailed, Unavailable, ValidationFailed
from registry.node.client_api import OPS

from .fake_server import error, ok

MOVED = {"leader": "n2", "term": 5, "previous": "n1"}


def transferring(request: dict[str, Any]) -> dict[str, Any]:
    if request["op"] == "leader_transfer":
        return ok(MOVED)
    return error("bad_request")


def test_transfer_sends_the_target_and_parses_the_new_leader(fake) -> None:
    """The name goes as `target` (nil without one); the answer is the new leader, its term and
    the previous leader."""
    server = fake(transferring)
    with Client([server.address], timeout_s=2) as client:
        named = client.transfer_leadership("n2")
        anyone = client.transfer_leadership()
    assert named == anyone == LeaderTransfer("n2", 5, "n1") and named.moved
    assert [(r["op"], r["args"]) for r in server.received()] == [("leader_transfer", {"target": "n2"}),
                                                                ("leader_transfer", {"target": None})]


def test_a_named_leader_that_already_leads_did_not_move() -> None:
    assert not LeaderTransfer("n1", 3, "n1").moved


def test_transfer_failed_is_raised_and_not_retried_elsewhere(fake) -> None:
    """`transfer_failed` is a final answer: asking another node could move leadership twice."""
    first = fake(lambda r: error("transfer_failed", "n3 did not take over within 1.5 s"))
    second = fake(transferring)
    with Client([first.address, second.address], timeout_s=2) as client:
        with pytest.raises(TransferFailed, match="n3 did not take over") as err:
            client.transfer_leadership("n3")
    assert err.value.code == "transfer_failed"
    assert second.received() == []


def test_no_leader_is_retried_at_the_next_node(fake) -> None:
    """`no_leader` means nothing was started: the next node is asked."""
    first = fake(lambda r: error("no_leader"))
    second = fake(transferring)
    with Client([first.address, second.address], timeout_s=2) as client:
        assert client.transfer_leadership("n2") == LeaderTransfer("n2", 5, "n1")
    assert len(first.received()) == len(second.received()) == 1


def test_each_node_gets_the_whole_timeout_before_another_is_asked(fake) -> None:
    """A slow hand-over is not mistaken for a dead node: the second node is never asked while
    the first may still be at it (the call times out instead)."""
    slow = fake(lambda r: None)
    other = fake(transferring)
    with Client([slow.address, other.address], timeout_s=0.5) as client:
        with pytest.raises(Unavailable):
            client.transfer_leadership("n2")
    assert other.received() == []


@pytest.mark.parametrize("name", ["", "has space", "-dash", "x" * 64, 7])
def test_a_bad_name_is_refused_before_sending(fake, name: Any) -> None:
    server = fake(transferring)
    with Client([server.address], timeout_s=1) as client, pytest.raises(ValidationFailed) as err:
        client.transfer_leadership(name)
    assert err.value.field == "name" and err.value.code is None
    assert server.received() == []


def test_an_unknown_member_is_a_validation_error_from_the_server(fake) -> None:
    server = fake(lambda r: error("invalid", "no member is named 'n9'; the members are n1, n2, n3"))
    with Client([server.address], timeout_s=1) as client, pytest.raises(ValidationFailed, match="n9") as err:
        client.transfer_leadership("n9")
    assert err.value.code == "invalid"


def test_a_malformed_answer_is_a_failed_attempt(fake) -> None:
    server = fake(lambda r: ok({"leader": 3, "term": 5}))
    with Client([server.address], timeout_s=0.5) as client, pytest.raises(Unavailable, match="malformed"):
        client.transfer_leadership()


def test_the_server_accepts_the_op() -> None:
    assert "leader_transfer" in OPS
