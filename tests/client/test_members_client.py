"""`Client.members` against fake nodes: what it sends, what it parses, and the old node's
"unknown op" mapped to a clear error (docs/client-protocol.md, `members`)."""

from __future__ import annotations

from typing import Any

import pytest

from registry.client import Client, MemberInfo, Members, RegistryError, Unavailable

from .fake_server import error, ok

REPORT = {"leader": "n1", "term": 4, "commit": 17, "voters": 3, "learners": 0, "fault_tolerance": 1,
          "min_fault_tolerance": 1, "members": [
              {"name": "n1", "id": 11, "raft": "127.0.0.1:7001", "client": "127.0.0.1:7101", "voter": True,
               "match": 17, "last_contact_s": 0.0, "leader": True},
              {"name": "n2", "id": 12, "raft": "127.0.0.1:7002", "client": None, "voter": True,
               "match": None, "last_contact_s": None, "leader": False}]}


def answering(request: dict[str, Any]) -> dict[str, Any]:
    return ok(REPORT) if request["op"] == "members" else error("bad_request")


def test_members_sends_no_arguments_and_parses_every_field(fake) -> None:
    server = fake(answering)
    with Client([server.address], timeout_s=2) as client:
        got = client.members()
    assert [(r["op"], r["args"]) for r in server.received()] == [("members", {})]
    assert got == Members("n1", 4, 17, (
        MemberInfo("n1", 11, "127.0.0.1:7001", "127.0.0.1:7101", True, 17, 0.0, True),
        MemberInfo("n2", 12, "127.0.0.1:7002", None, True, None, None, False)), 3, 0, 1, 1)


def test_an_old_node_that_does_not_know_the_op_gives_a_clear_error(fake) -> None:
    """An old node answers bad_request "unknown op": the client says the node is too old."""
    server = fake(lambda r: error("bad_request", "unknown op 'members'; accepted: register, ..."))
    with Client([server.address], timeout_s=2) as client:
        with pytest.raises(RegistryError, match="older version of registry") as err:
            client.members()
    assert err.value.code == "bad_request"


def test_no_leader_is_retried_at_the_next_node(fake) -> None:
    first = fake(lambda r: error("no_leader", "no leader is known"))
    second = fake(answering)
    with Client([first.address, second.address], timeout_s=2) as client:
        assert client.members().leader == "n1"


def test_a_malformed_report_is_a_failed_attempt(fake) -> None:
    """A report of the wrong shape is not trusted: the call ends Unavailable naming why."""
    bad = dict(REPORT, members=[dict(REPORT["members"][0], voter="yes")])
    server = fake(lambda r: ok(bad))
    with Client([server.address], timeout_s=1) as client:
        with pytest.raises(Unavailable, match="malformed reply"):
            client.members()
