"""`registry leader transfer [NAME]` (typer's CliRunner) against fake nodes.

Exit status: 0 done (also when NAME already leads), 1 the cluster could not do it (no leader,
transfer_failed: the reason on stderr), 2 a NAME that is not a valid node name or not a member.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from typer.testing import CliRunner

from registry.cli.main import app

from ..client.fake_server import FakeServer, error, ok
from .test_client_commands import FAST, no_servers_from_the_environment, squash  # noqa: F401 (an autouse fixture)

runner = CliRunner()


def run(*args: str, servers: list[FakeServer]):  # type: ignore[no-untyped-def]
    flags = [f for s in servers for f in ("--server", s.address)]
    return runner.invoke(app, ["leader", "transfer", *args, *flags])


def answering(result: dict[str, Any]):  # type: ignore[no-untyped-def]
    return lambda request: ok(result) if request["op"] == "leader_transfer" else error("bad_request")


def test_help_lists_leader_transfer() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "leader" in result.output
    result = runner.invoke(app, ["leader", "--help"])
    assert result.exit_code == 0 and "transfer" in result.output


def test_transfer_prints_the_previous_and_the_new_leader(fake) -> None:
    server = fake(answering({"leader": "n2", "term": 5, "previous": "n1"}))
    result = run("n2", servers=[server])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["PREVIOUS", "LEADER", "TERM"] and lines[1].split() == ["n1", "n2", "5"]
    assert "leadership moved from n1 to n2 (term 5)" in result.output
    assert server.received()[0]["args"] == {"target": "n2"}


def test_transfer_without_a_name_asks_for_the_most_caught_up_voter(fake) -> None:
    server = fake(answering({"leader": "n3", "term": 4, "previous": "n1"}))
    result = run("--json", servers=[server])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"leader": "n3", "term": 4, "previous": "n1", "moved": True}
    assert server.received()[0]["args"] == {"target": None}


def test_a_name_that_already_leads_exits_0_and_says_nothing_moved(fake) -> None:
    server = fake(answering({"leader": "n1", "term": 3, "previous": "n1"}))
    result = run("n1", servers=[server])
    assert result.exit_code == 0, result.output
    assert "n1 already leads (term 3); nothing moved" in result.output


def test_a_bad_name_exits_2_and_sends_nothing(fake) -> None:
    server = fake(answering({"leader": "n1", "term": 3, "previous": "n1"}))
    result = run("not a name", *FAST, servers=[server])
    assert result.exit_code == 2
    assert "invalidnodename" in squash(result.output) and "NAME" in result.output
    assert server.received() == []


def test_an_unknown_member_exits_2_with_the_servers_reason(fake) -> None:
    server = fake(lambda r: error("invalid", "no member is named 'n9'; the members are n1, n2, n3"))
    result = run("n9", *FAST, servers=[server])
    assert result.exit_code == 2
    assert "no member is named 'n9'" in result.output


@pytest.mark.parametrize("code, message", [("transfer_failed", "n3 did not take over within 1.5 s"),
                                           ("no_leader", "no leader is known to hand leadership over")])
def test_a_transfer_that_cannot_happen_exits_1_with_the_reason(fake, code: str, message: str) -> None:
    server = fake(lambda r: error(code, message))
    result = run("n3", *FAST, servers=[server])
    assert result.exit_code == 1
    assert message in result.output
