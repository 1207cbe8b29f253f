"""`registry register --ttl/--check/--keepalive`, `registry pass`, `registry services`' health
columns and `registry explain`, against fake nodes (real ZeroMQ ROUTERs on 127.0.0.1).

Parsing and exit codes go through typer's CliRunner; the keepalive runs as a real process
(`python -m registry`), so that SIGTERM and SIGINT are real signals to it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from registry.catalogue.model import CheckKind, HealthStatus
from registry.catalogue.view import CatalogueView
from registry.cli.durations import format_age, format_duration, parse_duration
from registry.cli.health_cmds import explain_json, explain_lines, run_explain, view_from_services
from registry_dns.explain import explain as dns_explain
from registry.cli.main import app
from registry.client import Client

from ..client.fake_server import CatalogueNode, FakeServer

runner = CliRunner()
LOADED_S = 5.0  # what a busy 2-core CI machine can add to a wait
START_S = 30.0  # a `python -m registry` process's start on that machine, with room


def squash(text: str) -> str:
    """Output without whitespace or rich's box drawing, so wrapped error panels still match."""
    return re.sub(r"[\s\u2500-\u257f]+", "", text)


@pytest.fixture(autouse=True)
def no_servers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_SERVERS", raising=False)


def run(*args: str, server: FakeServer) -> Any:
    return runner.invoke(app, [*args, "--server", server.address, "--timeout", "2"])


# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ms"), [("500ms", 500), ("10s", 10_000), ("5m", 300_000), ("1h", 3_600_000),
                                          ("0s", 0), (" 2s ", 2000)])
def test_durations_parse_to_milliseconds(text: str, ms: int) -> None:
    """A whole number with a unit, ms s m or h, is milliseconds."""
    assert parse_duration(text) == ms


@pytest.mark.parametrize(("ms", "text"), [(10_000, "10s"), (300_000, "5m"), (3_600_000, "1h"), (1500, "1500ms"),
                                          (90_000, "90s"), (0, "0ms")])
def test_durations_print_in_their_largest_exact_unit(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_ages_print_in_their_largest_whole_unit() -> None:
    """SINCE: "-" when unknown, "just now" under a second (or slightly ahead), then s, m, h, d."""
    now = 1_700_000_000_000
    assert [format_age(now - d, now) for d in (0, 400, 45_000, 150_000, 3 * 3_600_000 + 5, 2 * 86_400_000)] == [
        "just now", "just now", "45s ago", "2m ago", "3h ago", "2d ago"]
    assert format_age(0, now) == "-" and format_age(now + 800, now) == "just now"


@pytest.mark.parametrize("bad", ["10", "1.5s", "10sec", "-1s", "s", "1d"])
def test_a_bad_duration_exits_2_saying_what_is_accepted(fake, bad: str) -> None:
    """A duration without a unit, with a fraction, or an unknown unit is a usage error that
    lists the accepted form; nothing is sent."""
    server = fake(CatalogueNode())
    result = run("register", "web", "10.0.0.5:8080", "--ttl", bad, server=server)
    assert result.exit_code == 2, result.output
    assert squash("use a whole number with a unit: ms, s, m or h") in squash(result.output), result.output
    assert "--ttl" in result.output
    assert server.received() == []


# -- register: which options go together -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ttl", "10s", "--check", "tcp"], "--ttl and --check are exclusive"),
        (["--keepalive"], "--keepalive renews a TTL: it needs --ttl"),
        (["--check", "tcp", "--keepalive"], "it needs --ttl"),
        (["--interval", "2s"], "--interval only go with --check"),
        (["--ttl", "10s", "--failures", "2"], "--failures only go with --check"),
        (["--ttl", "10s", "--check-timeout", "1s"], "--check-timeout only go with --check"),
        (["--ttl", "10s", "--deregister-on-exit"], "it needs --keepalive"),
        (["--deregister-after", "5m"], "it needs --ttl or --check"),
        (["--check", "udp"], "use tcp (connect to HOST:PORT) or an http:// URL"),
        (["--check", "https://10.0.0.5:8443/h"], "use tcp"),
        (["--ttl", "500ms"], "ttl_ms 500: use an integer number of milliseconds from 1000 ms (1 s) to 86400000 ms (24 h)"),
        (["--ttl", "10s", "--deregister-after", "10s"], "deregister_after_ms 10000"),
        (["--check", "tcp", "--interval", "500ms"], "interval_ms 500"),
        (["--check", "tcp", "--check-timeout", "2s"], "timeout_ms 2000: use an integer number of milliseconds from 100 ms to 1000 ms (1 s) (at most the interval)"),
        (["--check", "tcp", "--failures", "0"], "failures 0: use an integer from 1 to 100"),
        (["--check", "http://10.0.0.5/health"], "it names no port; use http://HOST:PORT/path"),
    ],
)
def test_register_options_that_do_not_go_together_exit_2(fake, args: list[str], says: str) -> None:
    """Each misuse is a usage error (exit 2) naming the options and what is accepted; nothing is
    sent to the cluster."""
    server = fake(CatalogueNode())
    result = run("register", "web", "10.0.0.5:8080", *args, server=server)
    assert result.exit_code == 2, result.output
    assert squash(says) in squash(result.output), result.output
    assert server.received() == []


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["--ttl", "10s", "--deregister-after", "5m"],
         {"kind": "ttl", "ttl_ms": 10_000, "deregister_after_ms": 300_000}),
        (["--check", "tcp"],
         {"kind": "tcp", "interval_ms": 1000, "timeout_ms": 1000, "failures": 3, "successes": 2}),
        (["--check", "http://10.0.0.5:8080/health", "--interval", "5s", "--check-timeout", "500ms",
          "--failures", "2", "--successes", "4"],
         {"kind": "http", "url": "http://10.0.0.5:8080/health", "interval_ms": 5000, "timeout_ms": 500,
          "failures": 2, "successes": 4}),
    ],
    ids=["ttl", "tcp-defaults", "http"],
)
def test_register_sends_the_check_of_its_options(fake, args: list[str], check: dict[str, Any]) -> None:
    """The options become the protocol's check map; a probe's defaults are 1 s interval, 1 s
    timeout, 3 failures, 2 successes (out of DNS within 5 s of a crash)."""
    node = CatalogueNode()
    server = fake(node)
    result = run("register", "web", "10.0.0.5:8080", *args, server=server)
    assert result.exit_code == 0, result.output
    assert "registered web instance web-10.0.0.5-8080" in result.stdout
    sent = server.received()[0]["args"]["check"]
    assert {k: v for k, v in sent.items() if k in check} == check
    assert all(sent[k] in (0, "", 3, 2) for k in sent if k not in check), sent


def test_register_without_health_options_sends_no_check(fake) -> None:
    server = fake(CatalogueNode())
    assert run("register", "web", "10.0.0.5:8080", server=server).exit_code == 0
    assert "check" not in server.received()[0]["args"]


# -- pass -------------------------------------------------------------------------------------


def test_pass_renews_and_says_the_status(fake) -> None:
    node = CatalogueNode()
    server = fake(node)
    run("register", "web", "10.0.0.5:8080", "--id", "w1", "--ttl", "10s", server=server)
    result = run("pass", "w1", server=server)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("renewed web instance w1: passing (as of index ")
    result = run("pass", "w1", "--service", "web", "--json", server=server)
    assert json.loads(result.stdout) == {"service": "web", "instance_id": "w1", "status": "passing",
                                         "index": node.index}
    assert server.received()[-1]["args"] == {"instance_id": "w1", "service": "web"}


def test_pass_of_a_gone_instance_exits_1_with_the_reason(fake) -> None:
    result = run("pass", "w1", server=fake(CatalogueNode()))
    assert result.exit_code == 1, result.output
    assert "no instance 'w1': deregistered or expired" in result.stderr


def test_pass_of_an_id_in_two_services_exits_2_naming_them(fake) -> None:
    """Without --service an ambiguous id is the node's ``invalid``: a usage error."""
    node = CatalogueNode()
    server = fake(node)
    run("register", "web", "10.0.0.5:8080", "--id", "x", "--ttl", "10s", server=server)
    run("register", "api", "10.0.0.5:8081", "--id", "x", "--ttl", "10s", server=server)
    result = run("pass", "x", server=server)
    assert result.exit_code == 2, result.output
    assert "api, web: give the service" in result.stderr


def test_pass_checks_the_id_before_sending(fake) -> None:
    server = fake(CatalogueNode())
    result = run("pass", "a:b", server=server)
    assert result.exit_code == 2, result.output
    assert squash("reserved for HOST:PORT") in squash(result.output), result.output
    assert server.received() == []


# -- services ---------------------------------------------------------------------------------


def test_services_shows_status_since_and_check(fake) -> None:
    """STATUS, SINCE (an age) and CHECK columns; --json carries since_ms, the check map,
    revision and output."""
    node = CatalogueNode(now_ms=int(time.time() * 1000) - 150_000)
    server = fake(node)
    run("register", "web", "10.0.0.5:8080", "--id", "a", "--ttl", "10s", server=server)
    run("register", "web", "10.0.0.6:8080", "--id", "b", "--check", "tcp", server=server)
    run("register", "web", "10.0.0.7:8080", "--id", "c", "--check", "http://10.0.0.7:8080/h", "--interval", "2s",
        server=server)
    run("register", "web", "10.0.0.8:8080", "--id", "d", server=server)
    node.set_status("web", "b", "critical", output="connection refused")
    result = run("services", server=server)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["SERVICE", "ID", "ADDRESS", "PORT", "STATUS", "SINCE", "CHECK", "TAGS", "META"]
    cells = [re.split(r"\s{2,}", row.strip()) for row in rows]
    assert cells == [
        ["web", "a", "10.0.0.5", "8080", "passing", "2m ago", "ttl 10s"],
        ["web", "b", "10.0.0.6", "8080", "critical", "2m ago", "tcp every 1s"],
        ["web", "c", "10.0.0.7", "8080", "passing", "2m ago", "http every 2s"],
        ["web", "d", "10.0.0.8", "8080", "passing", "2m ago", "-"],
    ]
    got = json.loads(run("services", "--json", server=server).stdout)
    b = got["services"]["web"][1]
    assert (b["status"], b["since_ms"], b["output"]) == ("critical", node.now_ms, "connection refused")
    assert b["check"] == {"kind": "tcp", "ttl_ms": 0, "url": "", "interval_ms": 1000, "timeout_ms": 1000,
                          "failures": 3, "successes": 2, "deregister_after_ms": 0}
    assert b["revision"] > 0 and got["services"]["web"][3]["check"] is None


# -- explain ----------------------------------------------------------------------------------


def test_explain_gives_the_view_of_a_linearizable_read_and_prints_every_reason(fake) -> None:
    """The command reads the services (not stale), builds the view a node's DNS holds (health
    included), asks the DNS responder's own explain, and prints one line per instance: + in the
    answer, - left out with the reason (critical since when, with the check's output)."""
    node = CatalogueNode(now_ms=int(time.time() * 1000) - 60_000)
    server = fake(node)
    run("register", "web", "10.0.0.5:8080", "--id", "a", "--tag", "primary", server=server)
    run("register", "web", "10.0.0.6:8080", "--id", "b", "--check", "tcp", "--tag", "primary", server=server)
    node.set_status("web", "b", "critical", output="connection refused")
    calls: list[tuple[Any, ...]] = []

    def recording(view: CatalogueView, qname: str, qtype: str, zone: str, max_udp: int) -> Any:
        calls.append((view, qname, qtype, zone, max_udp))
        return dns_explain(view, qname, qtype, zone, max_udp)

    with Client([server.address], timeout_s=2) as client:
        run_explain(client, "web.service.registry.", "A", zone="registry.", max_udp=512, as_json=False,
                    explain=recording)
    [(view, qname, qtype, zone, max_udp)] = calls
    assert (qname, qtype, zone, max_udp) == ("web.service.registry.", "A", "registry.", 512)
    assert server.received()[-1]["args"] == {"service": None, "stale": False}
    a, b = view.instances("web")
    assert (a.serving, b.serving, b.status, b.check.kind) == (True, False, HealthStatus.CRITICAL, CheckKind.TCP)
    assert b.output == "connection refused"
    assert view.instances("web", "primary") == (a, b) and view.applied_index == node.index

    report = dns_explain(view, qname, qtype, zone, max_udp)
    lines = explain_lines(report, "web.service.registry.", "A", node.now_ms + 60_000)
    assert lines[0].startswith("web.service.registry. A: NOERROR; ")
    assert lines[1:] == [
        "  + web/a 10.0.0.5:8080",
        "  - web/b 10.0.0.6:8080: critical (critical 1m ago: connection refused)"
        + ("; " + report.instances[1].detail if report.instances[1].detail else ""),
    ]
    as_json = explain_json(report, zone, view.applied_index)
    assert as_json["rcode"] == "NOERROR" and as_json["index"] == view.applied_index
    assert [(i["instance_id"], i["in_answer"], i["reason"]) for i in as_json["instances"]] == [
        ("a", True, None), ("b", False, "critical")]


def test_explain_of_a_name_that_matches_nothing_says_so() -> None:
    report = dns_explain(CatalogueView.empty(), "nope.service.registry.", "SRV", "registry.", 512)
    [line] = explain_lines(report, "nope.service.registry.", "SRV", 0)
    assert line.startswith("nope.service.registry. SRV: NXDOMAIN; ")


def test_explain_refuses_an_unknown_type(fake) -> None:
    server = fake(CatalogueNode())
    result = run("explain", "web.service.registry", "MX", server=server)
    assert result.exit_code == 2 and "use one of A, AAAA, SRV, TXT, ANY" in result.output
    assert server.received() == []


def test_a_services_reply_becomes_the_view_dns_would_hold(fake) -> None:
    """Every instance keeps its health, check and revision; a status this version does not know
    is not served."""
    node = CatalogueNode()
    server = fake(node)
    run("register", "web", "10.0.0.5:8080", "--id", "a", "--ttl", "10s", "--meta", "k=v", server=server)
    run("register", "db", "10.0.0.9:5432", "--id", "z", server=server)
    node.set_status("db", "z", "draining")
    with Client([server.address], timeout_s=2) as client:
        view = view_from_services(client.services())
    [a] = view.instances("web")
    assert (a.check.kind, a.check.ttl_ms, a.meta, a.revision > 0) == (CheckKind.TTL, 10_000, (("k", "v"),), True)
    [z] = view.instances("db")
    assert not z.serving and view.service_names() == ("db", "web")


# -- the keepalive, as a real process ----------------------------------------------------------


class Keepalive:
    """`python -m registry register web 10.0.0.5:8080 --id w1 --ttl TTL --keepalive ...` against a
    fake node, with its output collected."""

    def __init__(self, server: FakeServer, *args: str, ttl: str = "1500ms") -> None:
        command = [sys.executable, "-m", "registry", "register", "web", "10.0.0.5:8080", "--id", "w1", "--ttl", ttl,
                   "--keepalive", "--server", server.address, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("REGISTRY_SERVERS", None)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def finish(self, sig: int | None = None) -> tuple[int, str, str]:
        if sig is not None:
            self.process.send_signal(sig)
        try:
            out, err = self.process.communicate(timeout=START_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            pytest.fail(f"the keepalive did not exit: {out!r} {err!r}")
        return self.process.returncode, out, err


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = START_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_keepalive_renews_every_third_of_the_ttl_and_exits_0_on_sigterm(fake) -> None:
    """Registered, then renewed every TTL/3 (0.5 s for 1.5 s) with one line per state change
    (not per heartbeat); SIGTERM ends it with exit 0 and leaves the instance registered."""
    node = CatalogueNode()
    server = fake(node)
    keepalive = Keepalive(server)
    try:
        wait_for(lambda: len(node.beats) >= 3, "three heartbeats")
        node.set_status("web", "w1", "critical")
        wait_for(lambda: len(node.beats) >= 6, "six heartbeats")
    finally:
        code, out, err = keepalive.finish(signal.SIGTERM)
    assert code == 0, (out, err)
    gaps = [b - a for a, b in zip(node.beats, node.beats[1:])]
    assert all(0.5 - 0.05 <= gap < 0.5 + LOADED_S for gap in gaps), gaps
    assert out.splitlines() == [
        "registered web instance w1, committed at index 11",
        "web instance w1: passing (renewing every 500ms)",
        "web instance w1: critical (renewing every 500ms)",
        "web instance w1: stopped; the instance stays registered (expires after its TTL)",
    ], out
    assert [r["op"] for r in server.received()].count("deregister") == 0
    assert ("web", "w1") in node.instances


def test_keepalive_deregisters_on_sigint_with_deregister_on_exit(fake) -> None:
    """--deregister-on-exit: Ctrl-C (SIGINT) deregisters the instance, then exits 0."""
    node = CatalogueNode()
    server = fake(node)
    keepalive = Keepalive(server, "--deregister-on-exit", "--json")
    try:
        wait_for(lambda: len(node.beats) >= 1, "a heartbeat")
    finally:
        code, out, err = keepalive.finish(signal.SIGINT)
    assert code == 0, (out, err)
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["registered", "state", "deregistered"]
    assert events[1]["state"] == "passing" and events[2]["index"] == node.index
    assert ("web", "w1") not in node.instances


def test_keepalive_exits_1_and_never_registers_again_when_deregistered_by_someone_else(fake) -> None:
    """A forced deregistration wins: the next heartbeat's not_found ends the keepalive with exit 1
    and a clear message, and no second register is ever sent."""
    node = CatalogueNode()
    server = fake(node)
    keepalive = Keepalive(server)
    try:
        wait_for(lambda: len(node.beats) >= 1, "a heartbeat")
        node.remove("web", "w1")
    finally:
        code, out, err = keepalive.finish()
    assert code == 1, (out, err)
    assert "web instance w1 is gone: deregistered by someone else, or expired" in err
    assert "not registering it again" in err
    ops = [r["op"] for r in server.received()]
    assert ops.count("register") == 1 and ops[-1] == "pass", ops
    assert ("web", "w1") not in node.instances


def test_keepalive_rides_out_an_unreachable_node_then_reports_passing_again(fake) -> None:
    """Heartbeats answered ``no_leader`` (an election) print one line with the reason; the
    keepalive keeps renewing, and says passing once answered again."""
    node = CatalogueNode()
    electing = {"on": False}

    def handler(request: dict[str, Any]) -> Any:
        if request["op"] == "pass" and electing["on"]:
            return {"ok": False, "error": {"code": "no_leader", "message": "no leader could be reached"}}
        return node(request)

    server = fake(handler)
    keepalive = Keepalive(server)
    try:
        wait_for(lambda: len(node.beats) >= 1, "a heartbeat")
        passes = sum(r["op"] == "pass" for r in server.received())
        electing["on"] = True
        # The outage outlasts whole heartbeats: three periods, and several refused attempts.
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started >= 1.5
                 and sum(r["op"] == "pass" for r in server.received()) >= passes + 4, "refused heartbeats")
        electing["on"] = False
        beats = len(node.beats)
        wait_for(lambda: len(node.beats) >= beats + 2, "heartbeats again")
    finally:
        code, out, err = keepalive.finish(signal.SIGTERM)
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[1] == "web instance w1: passing (renewing every 500ms)", out
    assert re.fullmatch(rf"web instance w1: heartbeat failed, retrying every 500ms: {re.escape(server.address)}: "
                        "no_leader: no leader could be reached", lines[2]), out
    assert lines[3:] == ["web instance w1: passing (renewing every 500ms)",
                         "web instance w1: stopped; the instance stays registered (expires after its TTL)"], out
