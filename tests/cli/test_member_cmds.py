"""`registry members [--json]` (typer's CliRunner) against fake nodes.

Exit status: 0 listed, 1 the cluster could not answer (the reason on stderr), 2 a usage error.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from registry.cli.main import app

from ..client.fake_server import error
from ..client.test_members_client import answering
from .test_client_commands import FAST, no_servers_from_the_environment, squash  # noqa: F401 (an autouse fixture)

runner = CliRunner()


def test_members_prints_a_table_with_the_leader_starred(fake) -> None:
    server = fake(answering)
    result = runner.invoke(app, ["members", "--server", server.address])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "RAFT", "ROLE", "MATCH", "LAST", "CONTACT", "LEADER"]
    assert lines[1].split() == ["n1", "127.0.0.1:7001", "voter", "17", "0.0s", "ago", "*"]
    assert lines[2].split() == ["n2", "127.0.0.1:7002", "voter", "-", "-"]
    assert "fault tolerance: 1" in lines[3] and "leader n1" in lines[3]


def test_members_json_is_for_programs(fake) -> None:
    server = fake(answering)
    result = runner.invoke(app, ["members", "--json", "--server", server.address])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["fault_tolerance"] == 1 and got["leader"] == "n1"
    assert [(m["name"], m["role"], m["leader"]) for m in got["members"]] == [("n1", "voter", True),
                                                                            ("n2", "voter", False)]


def test_a_bad_argument_exits_2(fake) -> None:
    """A malformed --server, a timeout below the minimum, an unknown option: usage errors, exit 2,
    and nothing is sent."""
    server = fake(answering)
    for args in (["--server", "no-port"], ["--timeout", "0"], ["--frobnicate"], ["--server", server.address, "x"]):
        result = runner.invoke(app, ["members", *args])
        assert result.exit_code == 2, (args, result.output)
    assert server.received() == []


def test_no_leader_exits_1_with_the_reason(fake) -> None:
    server = fake(lambda r: error("no_leader", "no leader is known"))
    result = runner.invoke(app, ["members", "--server", server.address, "--timeout", "0.5"])
    assert result.exit_code == 1 and "no leader" in result.output


def test_an_old_node_exits_1_saying_it_is_too_old(fake) -> None:
    server = fake(lambda r: error("bad_request", "unknown op 'members'"))
    result = runner.invoke(app, ["members", "--server", server.address])
    assert result.exit_code == 1 and "older version" in result.output
