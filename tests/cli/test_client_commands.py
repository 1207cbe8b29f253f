"""`registry register / deregister / services / status` (typer's CliRunner) against fake nodes.

The fake nodes are real ZeroMQ ROUTERs on 127.0.0.1 (tests/client/fake_server.py). What is tested
is the command line: parsing, exit codes (0 done, 1 the cluster could not, 2 usage or validation,
before any traffic), and the text and JSON it prints.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from registry.cli.main import app

from ..client.fake_server import STATUS, FakeServer, answering, error, ok, silent, unused_address

runner = CliRunner()
# What --json shows for an instance that a node of the previous version described.
OLDER_NODE_HEALTH = {"status": "passing", "since_ms": 0, "check": None, "revision": 0, "output": ""}
FAST = ["--timeout", "0.5"]


def squash(text: str) -> str:
    """Output without whitespace or rich's box drawing, so wrapped error panels still match."""
    return re.sub(r"[\s\u2500-\u257f]+", "", text)


@pytest.fixture(autouse=True)
def no_servers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_SERVERS", raising=False)


def run(*args: str, servers: list[FakeServer] = (), env: dict[str, str] | None = None):  # type: ignore[assignment]
    flags = [f for s in servers for f in ("--server", s.address)]
    return runner.invoke(app, [*args, *flags], env=env)


def test_help_lists_the_client_commands() -> None:
    """`registry --help` lists register, deregister, services and status."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in ("register", "deregister", "services", "status"):
        assert name in result.output


def test_importing_the_cli_does_not_import_zmq() -> None:
    """The client (and ZeroMQ) are imported inside the commands, so `--help` stays fast."""
    code = "import sys, registry.cli.main; assert 'zmq' not in sys.modules, 'zmq imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- register ---------------------------------------------------------------------------------


def test_register_prints_the_instance_id_and_the_commit_index(fake) -> None:
    """Exit 0 once committed; the id and the index are printed; the request carries the flags."""
    server = fake()
    result = run("register", "web", "10.0.0.5:8080", "--id", "web-a", "--tag", "blue",
                 "--tag", "v2", "--meta", "zone=a", "--meta", "empty=", "--meta", "url=x=y",
                 servers=[server])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "web-a" in result.stdout and "42" in result.stdout
    args = server.received()[0]["args"]
    assert (args["service"], args["address"], args["port"], args["instance_id"]) == (
        "web", "10.0.0.5", 8080, "web-a"
    )
    assert args["tags"] == ["blue", "v2"]
    assert args["meta"] == {"zone": "a", "empty": "", "url": "x=y"}


def test_register_json_parses(fake) -> None:
    """`--json` prints one object: service, instance_id, created, index, previous (null for a
    new instance) and changes ([] for a new instance)."""
    result = run("register", "web", "[::1]:8080", "--json", servers=[fake()])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "service": "web", "instance_id": "web-1", "created": True, "index": 42, "previous": None, "changes": [],
    }  # fmt: skip


def replacing(previous: dict[str, Any] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A node whose register replaces an instance, answering with ``previous`` (None: an older
    node, whose reply has no such field)."""

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"instance_id": "web-1", "created": False, "index": 43}
        if previous is not None:
            result["previous"] = previous
        return ok(result)

    return handler


OLD_WEB_1 = {"id": "web-1", "address": "10.0.0.5", "port": 8080, "tags": ["primary"], "meta": {"version": "1.2"}}


@pytest.mark.parametrize(
    "args, said",
    [
        pytest.param([], "updated web instance web-1, committed at index 43: tags primary -> (none); "
                     "meta version=1.2 -> (none)", id="flags-left-out-are-removed"),
        pytest.param(["--tag", "Primary", "--meta", "version=1.2"],
                     "updated web instance web-1, committed at index 43: nothing changed", id="same-definition"),
        pytest.param(["--tag", "primary", "--tag", "canary", "--meta", "version=1.3"],
                     "updated web instance web-1, committed at index 43: tags primary -> canary,primary; "
                     "meta version=1.2 -> version=1.3", id="tags-and-meta-changed"),
    ],
)
def test_re_registering_prints_what_changed(fake, args: list[str], said: str) -> None:
    """A registration replaces the whole definition; the command prints what changed, comparing
    the canonical forms (tags are case-insensitive), with (none) for what was removed."""
    result = run("register", "web", "10.0.0.5:8080", *args, servers=[fake(replacing(OLD_WEB_1))])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == said


def test_re_registering_json_and_an_older_node(fake) -> None:
    """--json carries the replaced definition and the changes; an older node's reply (no
    'previous') is still understood, and the command says what it cannot know."""
    result = run("register", "web", "10.0.0.6:8080", "--json", servers=[fake(replacing(OLD_WEB_1))])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    # The health fields a node of the previous version leaves out read as their defaults.
    assert got["previous"] == {**OLD_WEB_1, **OLDER_NODE_HEALTH}
    assert got["changes"] == ["address 10.0.0.5 port 8080 -> 10.0.0.6 port 8080", "tags primary -> (none)",
                              "meta version=1.2 -> (none)"]
    result = run("register", "web", "10.0.0.5:8080", servers=[fake(replacing(None))])
    assert result.exit_code == 0, result.output
    assert "updated web instance web-1, committed at index 43 (what it replaced is not known" in result.stdout


def test_register_help_states_the_replace_semantics() -> None:
    """`registry register --help` says that a registration replaces tags and meta."""
    result = runner.invoke(app, ["register", "--help"])
    assert result.exit_code == 0, result.output
    text = squash(result.output)
    assert squash("REPLACES its address, port, tags and meta") in text
    assert squash("tags and meta not given again are removed") in text


def test_register_retries_another_server(fake) -> None:
    """A server that does not answer is skipped; the command still succeeds."""
    mute, good = fake(silent), fake()
    result = run("register", "web", "10.0.0.5:8080", *FAST, servers=[mute, good])
    assert result.exit_code == 0, result.output
    assert good.received()[0]["args"] == mute.received()[0]["args"]


def test_register_with_no_server_answering_exits_1_with_the_reason(fake) -> None:
    """Exit 1 when the cluster cannot do it; stderr names the servers and the last error."""
    mute = fake(silent)
    result = run("register", "web", "10.0.0.5:8080", "--timeout", "0.3", servers=[mute])
    assert result.exit_code == 1, result.output
    assert "could not register" in result.stderr and mute.address in result.stderr
    assert result.stdout == ""


def test_register_without_a_leader_exits_1(fake) -> None:
    """no_leader from every server is exit 1 with that reason."""
    server = fake(lambda r: error("no_leader", "no leader within 1 s"))
    result = run("register", "web", "10.0.0.5:8080", "--timeout", "0.3", servers=[server])
    assert result.exit_code == 1, result.output
    assert "no_leader" in result.stderr


def test_register_refused_by_the_server_exits_2(fake) -> None:
    """A server's `invalid` is a validation error: exit 2 with the server's message."""
    server = fake(lambda r: error("invalid", "meta: too many keys"))
    result = run("register", "web", "10.0.0.5:8080", servers=[server])
    assert result.exit_code == 2, result.output
    assert "meta: too many keys" in result.stderr


def test_servers_come_from_the_environment(fake) -> None:
    """Without --server, REGISTRY_SERVERS (comma-separated) is used."""
    mute, good = fake(silent), fake()
    result = runner.invoke(app, ["services", *FAST],
                           env={"REGISTRY_SERVERS": f"{mute.address},{good.address}"})
    assert result.exit_code == 0, result.output
    assert len(good.received()) == 1


@pytest.mark.parametrize(
    "args, named",
    [
        (["register", "web", "10.0.0.5"], "HOST:PORT"),
        (["register", "web", "10.0.0.5:0"], "HOST:PORT"),
        (["register", "web", "10.0.0.5:65536"], "HOST:PORT"),
        (["register", "web", "10.0.0.5:http"], "HOST:PORT"),
        (["register", "web", "::1:80"], "HOST:PORT"),
        (["register", "web", "bad_host:80"], "HOST:PORT"),
        (["register", "we.b", "10.0.0.5:80"], "SERVICE"),
        (["register", "web", "10.0.0.5:80", "--tag", "not ok"], "--tag"),
        (["register", "web", "10.0.0.5:80", "--meta", "zone"], "--meta"),
        (["register", "web", "10.0.0.5:80", "--meta", "=a"], "--meta"),
        (["register", "web", "10.0.0.5:80", "--meta", "k=1", "--meta", "k=2"], "--meta"),
        (["register", "web", "10.0.0.5:80", "--id", ""], "--id"),
        (["register", "web", "10.0.0.5:80", "--server", "nohost"], "--server"),
        (["register", "web", "10.0.0.5:80", "--server", "h:99999"], "--server"),
        (["register", "web", "10.0.0.5:80", "--timeout", "0"], "--timeout"),
        (["register", "web"], "HOST:PORT"),
        (["deregister", "web", "10.0.0.5:99999"], "ID|HOST:PORT"),
        (["deregister", "web", "web-1", "--by", "address"], "ID|HOST:PORT"),
        (["deregister", "web", "db:5432", "--by", "id"], "ID|HOST:PORT"),
        (["deregister", "web", "web-1", "--by", "name"], "--by"),
        (["deregister", "we b", "web-1"], "SERVICE"),
        (["services", "we.b"], "SERVICE"),
        (["status", "--server", "[::1]"], "--server"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else None,
)
def test_bad_arguments_exit_2_before_any_traffic(fake, args: list[str], named: str) -> None:
    """Usage and validation errors exit 2, name the argument, and send nothing."""
    server = fake()
    result = run(*args, servers=[server])
    assert result.exit_code == 2, result.output
    error_panel = result.output.partition("for help.")[2]  # after the usage lines
    assert squash(named) in squash(error_panel), result.output
    assert server.received() == []


@pytest.mark.parametrize(
    "args, example",
    [
        (["register", "web", "10.0.0.5"], "e.g. 10.0.0.5:8080 or [2001:db8::5]:8080"),
        (["deregister", "web", "10.0.0.5:99999"], None),
        (["status", "--server", "nohost"], "e.g. 127.0.0.1:7101 or [::1]:7101"),
    ],
)
def test_address_errors_show_an_example_of_the_address_expected(args: list[str], example: str | None) -> None:
    """An instance address error shows an instance address, a --server error a client address
    of `registry up`: never a Raft port (7001)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    if example is not None:
        assert squash(example) in squash(result.output), result.output
    assert "7001" not in result.output


def test_a_server_name_that_does_not_resolve_exits_2_before_any_traffic(fake) -> None:
    """--server (or REGISTRY_SERVERS) with a host name that does not resolve is a usage error:
    exit 2, "cannot resolve host NAME", naming where it came from; nothing is sent."""
    server = fake()
    result = run("register", "web", "10.0.0.5:8080", "--server", "nosuch.invalid:7101", servers=[server])
    assert result.exit_code == 2, result.output
    assert squash("cannot resolve host 'nosuch.invalid'") in squash(result.output)
    assert "--server" in result.output
    result = runner.invoke(app, ["services"], env={"REGISTRY_SERVERS": f"{server.address},nosuch.invalid:7101"})
    assert result.exit_code == 2, result.output
    assert "REGISTRY_SERVERS" in result.output and "nosuch.invalid" in result.output
    assert server.received() == []


def test_a_refused_connection_says_so(fake) -> None:
    """Nothing listening at the server: exit 1, and the reason is a refused connection."""
    result = run("services", "--server", unused_address(), "--timeout", "0.5")
    assert result.exit_code == 1, result.output
    assert "connection refused" in result.stderr


def test_a_bad_registry_servers_exits_2_naming_it(fake) -> None:
    """A bad REGISTRY_SERVERS is a usage error that names the variable."""
    result = runner.invoke(app, ["services"], env={"REGISTRY_SERVERS": "127.0.0.1:7101,oops"})
    assert result.exit_code == 2, result.output
    assert "REGISTRY_SERVERS" in result.output and "oops" in result.output


# -- deregister -------------------------------------------------------------------------------


def test_deregister_by_address_and_by_id(fake) -> None:
    """HOST:PORT deregisters by address; other text (or --by id) by instance id."""
    server = fake()
    assert run("deregister", "web", "10.0.0.5:8080", servers=[server]).exit_code == 0
    result = run("deregister", "web", "web-2", "--by", "id", "--json", servers=[server])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"service": "web", "removed": ["web-2"], "index": 43}
    first, second = (r["args"] for r in server.received())
    assert (first["address"], first["port"]) == ("10.0.0.5", 8080) and "instance_id" not in first
    assert second["instance_id"] == "web-2" and "address" not in second


def test_deregister_of_nothing_exits_1(fake) -> None:
    """not_found is exit 1, with the server's message."""
    server = fake(lambda r: error("not_found", "no instance web-9 in web"))
    result = run("deregister", "web", "web-9", servers=[server])
    assert result.exit_code == 1, result.output
    assert "no instance web-9 in web" in result.stderr


# -- services ---------------------------------------------------------------------------------


def test_services_prints_a_table(fake) -> None:
    """One row per instance: service, id, address, port, status, since, check, tags, meta; an
    older node's instance (no health fields) is passing, since unknown, no check."""
    result = run("services", servers=[fake()])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["SERVICE", "ID", "ADDRESS", "PORT", "STATUS", "SINCE", "CHECK", "TAGS", "META"]
    assert row.split() == ["web", "web-1", "10.0.0.5", "8080", "passing", "-", "-", "blue", "zone=a"]


def test_services_json_parses_and_stale_is_sent(fake) -> None:
    """`--json` prints the index and the services; `--stale` asks for a stale read."""
    server = fake()
    result = run("services", "web", "--stale", "--json", servers=[server])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "index": 44,
        "services": {"web": [{"id": "web-1", "address": "10.0.0.5", "port": 8080,
                              "tags": ["blue"], "meta": {"zone": "a"}, **OLDER_NODE_HEALTH}]},
    }  # fmt: skip
    assert server.received()[0]["args"] == {"service": "web", "stale": True}


def test_services_of_an_unknown_service_says_so(fake) -> None:
    """No instances is not an error."""
    result = run("services", "nope", servers=[fake()])
    assert result.exit_code == 0, result.output
    assert "no instances of nope" in result.stdout


def test_services_with_the_cluster_down_exits_1(fake) -> None:
    result = run("services", "--timeout", "0.3", servers=[fake(silent)])
    assert result.exit_code == 1, result.output
    assert "could not list services" in result.stderr


# -- status -----------------------------------------------------------------------------------


def _node(name: str, role: str, **extra: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda request: ok(dict(STATUS, node=name, role=role, leader="n1", **extra))


LEADER_PEERS = {
    "n2": {"match": 10, "next": 11, "state": "replicate", "last_contact_ms": 15},
    "n3": {"match": 0, "next": 1, "state": "probe", "last_contact_ms": None},
}


def test_status_prints_one_row_per_server_with_the_leaders_view(fake) -> None:
    """Each answering server's row has its role, term, leader, indexes, the leader's last
    contact with it and its DNS state; a server that does not answer gets its error; exit 0."""
    leader = fake(_node("n1", "leader", peers=LEADER_PEERS,
                        dns_stats={"alive": True, "stale": False, "stale_queries": 0}))
    follower = fake(_node("n2", "follower", dns_stats={"alive": True, "stale": True, "stale_queries": 7}))
    mute = fake(silent)
    result = run("status", *FAST, servers=[leader, follower, mute])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split()[:7] == ["SERVER", "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED"]
    assert header.split()[-1] == "DNS"
    assert rows[0].split() == [leader.address, "n1", "leader", "3", "n1", "10", "10", "-",
                               "ok", "(0", "servfail)"]  # fmt: skip
    assert rows[1].split() == [follower.address, "n2", "follower", "3", "n1", "10", "10",
                               "15", "ms", "ago", "STALE", "(7", "servfail)"]  # fmt: skip
    assert rows[2].startswith(mute.address) and "error: no reply" in rows[2]


def test_status_json_parses(fake) -> None:
    """`--json` prints a list, one object per server: the status, or the error."""
    leader = fake(_node("n1", "leader", peers=LEADER_PEERS))
    stopping = fake(lambda r: error("stopping", "shutting down"))
    result = run("status", "--json", *FAST, servers=[leader, stopping])
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)
    assert (first["server"], first["node"], first["role"]) == (leader.address, "n1", "leader")
    assert first["peers"]["n2"]["last_contact_ms"] == 15
    assert first["dns_stats"] is None  # this fake node reports no DNS counters
    assert second == {"server": stopping.address,
                      "error": {"code": "stopping", "message": "stopping: shutting down"}}


def test_status_with_no_server_answering_exits_1(fake) -> None:
    result = run("status", *FAST, servers=[fake(silent), fake(silent)])
    assert result.exit_code == 1, result.output
    assert "no server answered" in result.stderr


def test_the_sim_command_still_works() -> None:
    """Adding the client commands leaves `registry sim` as it was."""
    result = runner.invoke(app, ["sim", "--seed", "1"])
    assert result.exit_code == 0, result.output


def test_answering_is_the_default_handler(fake) -> None:
    """(Sanity of the fake: it answers every op.)"""
    server = fake()
    assert server.handler is answering
