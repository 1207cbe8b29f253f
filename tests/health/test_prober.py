"""The prober end to end: a real child process (``Prober``) probing real listeners and a real
http.server on loopback, ticked as the node loop ticks it.

Timing: no check depends on the machine being fast. A status change needs N consecutive results,
a check's probes start at least one interval apart, and a probe that times out lasts its
timeout; so a change can never be reported sooner than (N - 1) intervals after its cause, nor a
change from N timeouts sooner than N timeouts. The tests assert those lower bounds, and wait for
everything else with ``SETTLE_S`` deadlines that only a broken prober reaches.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from registry.catalogue.model import HealthStatus
from registry.health import Prober, ProberSettings, ProberStartError, ProbeSpec
from registry.health.probes import Outcome, TcpProbe
from registry.health.process import CHILD_MODULE
from registry.health.wire import READY, REPLACE, REPORTS, STATS, UPDATE, FrameReader, decode, encode, encode_spec

from .support import (
    HOST,
    SETTLE_S,
    HttpServer,
    Listener,
    SilentServer,
    collect,
    free_port,
    http_spec,
    next_report,
    quiet_for,
    stats_when,
    tcp_spec,
)

P, C = HealthStatus.PASSING, HealthStatus.CRITICAL
INTERVAL_S = 0.2  # tcp_spec's and http_spec's default interval


@pytest.fixture
def prober() -> Iterator[Prober]:
    p = Prober(ProberSettings(stats_interval_s=0.1))
    p.start(timeout_s=SETTLE_S)
    yield p
    p.stop(timeout_s=5)


def test_tcp_check_follows_a_listener_that_stops_and_starts_again(prober: Prober) -> None:
    """A TCP check passes against a listener, turns critical after 3 failures once it closes, and
    passing after 2 successes once it listens again."""
    listener = Listener()
    port = listener.port
    try:
        prober.replace([tcp_spec("a", port, failures=3, successes=2)])
        stats = stats_when(prober, lambda s: s.get("ok", 0) >= 3)  # passing: no report, only successes
        assert stats["failed"] == 0 and listener.accepted >= 3
    finally:
        listener.close()
    closed_at = time.monotonic()
    report = next_report(prober, what="critical after the listener closed")
    assert time.monotonic() - closed_at >= 2 * INTERVAL_S, "critical before 3 failures could have been seen"
    assert (report.key, report.revision, report.status, report.output) == (("web", "a"), 1, C, "connection refused")
    stats_when(prober, lambda s: s.get("failed", 0) >= 3)  # the counters are sent every 0.1 s

    listener = Listener(port)
    opened_at = time.monotonic()
    try:
        report = next_report(prober, what="passing after the listener came back")
        assert time.monotonic() - opened_at >= INTERVAL_S, "passing before 2 successes could have been seen"
        assert (report.status, report.output) == (P, "connected")
        assert listener.accepted >= 2
    finally:
        listener.close()


def test_a_check_counts_from_the_status_it_is_given(prober: Prober) -> None:
    """A check given as critical against a live listener reports passing; one given as passing does not."""
    listener = Listener()
    try:
        prober.replace([tcp_spec("a", listener.port, status=C), tcp_spec("b", listener.port, status=P)])
        report = next_report(prober)
        assert (report.instance_id, report.status) == ("a", P)
        assert quiet_for(prober, probes=6) == []
    finally:
        listener.close()


def test_http_check_follows_the_status_code(prober: Prober) -> None:
    """An HTTP check passes on 200, turns critical after 3 answers of 500, passing again after 2
    of 200; it GETs the url's path and query with the url's Host."""
    server = HttpServer(200)
    try:
        prober.replace([http_spec("a", server.port, "/health?deep=1")])
        stats = stats_when(prober, lambda s: s.get("ok", 0) >= 2)
        assert stats["failed"] == 0
        assert server.requests[0] == ("/health?deep=1", f"127.0.0.1:{server.port}")
        server.code = 500
        changed_at = time.monotonic()
        report = next_report(prober)
        assert time.monotonic() - changed_at >= 2 * INTERVAL_S
        assert (report.status, report.output) == (C, "HTTP 500 Internal Server Error")
        server.code = 204
        report = next_report(prober)
        assert (report.status, report.output) == (P, "HTTP 204 No Content")
    finally:
        server.close()


def test_a_hanging_http_server_is_cut_at_the_timeout(prober: Prober) -> None:
    """A server that accepts and never answers: each probe is cut at its timeout (the prober closes
    the connection), and the check turns critical saying so."""
    server = SilentServer()
    try:
        started = time.monotonic()
        prober.replace([http_spec("a", server.port, interval_ms=400, timeout_ms=250, failures=2)])
        report = next_report(prober)
        assert time.monotonic() - started >= 2 * 0.25, "critical before two probes could have timed out"
        assert (report.status, report.output) == (C, "timed out after 250 ms")
        assert server.accepted >= 2  # premise: the probes did connect, and then hung
        stats = stats_when(prober, lambda s: s.get("failed", 0) >= 2)
        assert stats["in_flight"] <= 1
        deadline = time.monotonic() + SETTLE_S
        while server.closed_by_peer < 2:  # the prober hung up, it did not wait for the server
            assert time.monotonic() < deadline, "the prober never closed its timed-out connections"
            time.sleep(0.01)
    finally:
        server.close()


def test_a_tcp_check_of_a_host_name_tries_its_addresses(prober: Prober) -> None:
    """A TCP check of "localhost" (which may name ::1 first) connects to a listener on 127.0.0.1."""
    listener = Listener()
    try:
        spec = tcp_spec("a", listener.port, status=C)
        prober.replace([ProbeSpec(**{**{f: getattr(spec, f) for f in ProbeSpec.__slots__}, "host": "localhost"})])
        report = next_report(prober)
        assert (report.status, report.output) == (P, "connected")
    finally:
        listener.close()


def test_hanging_connects_time_out_and_probes_in_flight_are_capped() -> None:
    """Connects to a listener whose accept queue is full hang (the SYNs are dropped): each is cut
    at its timeout, and no more than max_in_flight probes are ever open, so with 2 slots and 20
    checks the probes complete no faster than 2 per timeout (the rest wait, late)."""
    full = socket.socket()
    full.bind((HOST, 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname(), timeout=SETTLE_S)  # takes the only place
    prober = Prober(ProberSettings(stats_interval_s=0.1, max_in_flight=2))
    timeout_s = 0.3
    try:
        prober.start(timeout_s=SETTLE_S)
        port = full.getsockname()[1]
        prober.replace([tcp_spec(f"i{n}", port, interval_ms=600, timeout_ms=300, failures=1) for n in range(20)])
        reports: list = []
        first = stats_when(prober, lambda s: s.get("failed", 0) >= 2, sink=reports)
        first_at = time.monotonic() - first["report_age_s"]
        last = stats_when(prober, lambda s: s["failed"] >= first["failed"] + 10, sink=reports)
        window_s = time.monotonic() - last["report_age_s"] - first_at + 0.2  # + the frames' transit
        assert last["failed"] - first["failed"] <= 2 * (window_s / timeout_s + 1), "over 2 probes in flight"
        assert last["max_in_flight"] == 2 and last["in_flight"] <= 2
        assert last["max_lag_ms"] > 0 and last["ok"] == 0 and last["errors"] == 0
        reports += collect(prober, lambda got: len(reports) + len(got) >= 20)
        assert {(r.status, r.output) for r in reports} == {(C, "timed out after 300 ms")}
    finally:
        prober.stop()
        filler.close()
        full.close()


def test_a_tcp_probe_whose_first_syn_is_lost_connects_with_a_second_within_its_timeout() -> None:
    """A lost SYN is resent by the kernel only after 1 s, as long as the default timeout: a probe
    still connecting after a third of its timeout connects again beside it, so one lost packet
    does not fail it. Here the first SYN is dropped (a full accept queue), the queue is emptied
    at once, and the probe connects well before the kernel's resend and its own timeout."""
    full = socket.socket()
    full.bind((HOST, 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname(), timeout=SETTLE_S)  # takes the only place
    timeout_ms = 900

    async def run() -> tuple[Outcome, float, bool]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[tuple[Outcome, float]] = loop.create_future()
        started = time.monotonic()
        TcpProbe(loop, socket.AF_INET, full.getsockname(), timeout_ms,
                 lambda outcome: got.set_result((outcome, time.monotonic() - started)))
        await asyncio.sleep(0.1)
        first_lost = not got.done()  # the premise: the first connect hangs on its dropped SYN
        filler.close()
        full.accept()[0].close()
        return (*await got, first_lost)

    try:
        outcome, took_s, first_lost = asyncio.run(run())
    finally:
        full.close()
    assert first_lost
    assert outcome == Outcome(True, "connected")
    assert took_s < timeout_ms / 1000, f"connected after {took_s:.2f} s: only the kernel's resend did it"


def test_replace_update_and_clear(prober: Prober) -> None:
    """replace sets the whole set, update adds and removes, clear empties it; the child's check
    count follows, and only checks in the set are probed."""
    listener = Listener()
    refused = free_port()
    try:
        prober.replace([tcp_spec("bad1", refused, failures=1), tcp_spec("good", listener.port)])
        report = next_report(prober)
        assert (report.instance_id, report.status, report.output) == ("bad1", C, "connection refused")
        assert stats_when(prober, lambda s: s.get("replaces") == 1)["checks"] == 2

        prober.update(upsert=[tcp_spec("bad2", refused, failures=1)], remove=[("web", "bad1")])
        report = next_report(prober)
        assert (report.instance_id, report.status) == ("bad2", C)
        assert stats_when(prober, lambda s: s.get("updates", 0) == 1)["checks"] == 2

        prober.replace([tcp_spec("good", listener.port)])
        before = stats_when(prober, lambda s: s.get("replaces", 0) == 2)
        assert before["checks"] == 1
        after = stats_when(prober, lambda s: s.get("probes", 0) >= before["probes"] + 3)
        assert (after["failed"], after["ok"] - before["ok"]) == (before["failed"], after["probes"] - before["probes"])

        prober.clear()
        stats = stats_when(prober, lambda s: s.get("replaces", 0) == 3)
        assert stats["checks"] == 0
        probes = stats["probes"]
        time.sleep(3 * INTERVAL_S)
        assert prober.stats()["probes"] == probes  # nothing is probed any more
        assert prober.drain() == []
    finally:
        listener.close()

    with pytest.raises(ValueError, match="both upserted and removed"):
        prober.update(upsert=[tcp_spec("x", 80)], remove=[("web", "x")])


def test_reports_for_checks_no_longer_in_the_set_are_dropped(prober: Prober) -> None:
    """A report the child sent before a clear (lost leadership) never comes out of drain."""
    prober.replace([tcp_spec("a", free_port(), failures=1)])
    deadline = time.monotonic() + SETTLE_S
    while prober.stats()["reports_received"] < 1:  # read by the parent, not drained
        assert time.monotonic() < deadline, "the child never reported"
        time.sleep(0.01)
    prober.clear()
    assert prober.drain() == []
    assert prober.stats()["stale_reports"] == 1


def test_a_new_revision_counts_afresh_and_the_same_one_keeps_counting(prober: Prober) -> None:
    """The same set given again (a new leader's replace) keeps the counts; the status the catalogue
    committed changes nothing; re-registering (a new revision) restarts the counts from its status."""
    refused = free_port()
    spec = tcp_spec("a", refused, failures=3, interval_ms=1000, timeout_ms=500)
    prober.replace([spec])
    stats_when(prober, lambda s: s.get("failed", 0) >= 1)
    prober.replace([spec])
    assert next_report(prober).status is C
    # NB: the counters are sent every 0.1 s and the next probe is 1 s away, and a due report of
    # counters runs before a later probe: the first counters that count the change are exact.
    assert stats_when(prober, lambda s: s.get("reports", 0) >= 1)["failed"] == 3, "the counts restarted"

    prober.update(upsert=[tcp_spec("a", refused, failures=2, status=C)], remove=[])  # the commit
    assert quiet_for(prober, probes=2, timeout_s=SETTLE_S + 2) == []
    prober.update(upsert=[tcp_spec("a", refused, failures=2, revision=2)], remove=[])  # re-registered
    report = next_report(prober)
    assert (report.revision, report.status) == (2, C)


def test_stats_say_what_the_child_does(prober: Prober) -> None:
    """stats: checks, probes/s, in flight, reports, errors, cpu, alive and pid."""
    listener = Listener()
    try:
        prober.replace([tcp_spec(f"i{n}", listener.port, interval_ms=100, timeout_ms=100) for n in range(20)])
        stats = stats_when(prober, lambda s: s.get("probes_per_s", 0) > 50)
    finally:
        listener.close()
    assert stats["checks"] == 20 and stats["alive"] is True and stats["pid"] == prober.pid
    for key in ("in_flight", "reports", "errors", "cpu_percent", "max_lag_ms", "bad_frames", "report_age_s"):
        assert key in stats, key
    assert stats["errors"] == 0 and stats["bad_frames"] == 0


def test_a_child_that_dies_is_reported_and_its_descriptor_goes_quiet(prober: Prober) -> None:
    """SIGKILL of the child: alive() turns False, stats carry the error, calls are no-ops, and
    fileno() stays a valid descriptor that is never readable (the node's poller holds it)."""
    fd = prober.fileno()
    assert prober.pid is not None
    os.kill(prober.pid, signal.SIGKILL)
    deadline = time.monotonic() + SETTLE_S
    while prober.alive():
        assert time.monotonic() < deadline
        prober.drain()
        time.sleep(0.01)
    assert prober.drain() == []
    assert "exited" in prober.stats()["error"]
    assert prober.fileno() == fd
    assert select.select([fd], [], [], 0.05)[0] == []
    prober.replace([tcp_spec("a", 80)])  # no-op, no error


def test_calls_before_start_are_queued() -> None:
    """A set given before start is probed once the child runs."""
    prober = Prober(ProberSettings(stats_interval_s=0.1))
    prober.replace([tcp_spec("a", free_port(), failures=1)])
    with pytest.raises(Exception, match="not running"):
        prober.fileno()
    try:
        prober.start(timeout_s=SETTLE_S)
        assert next_report(prober).status is C
    finally:
        prober.stop()


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def test_child_exits_when_its_parent_is_killed() -> None:
    """SIGKILL of the agent closes the feed; the child sees EOF and exits within a bound."""
    code = textwrap.dedent(f"""
        import time
        from registry.health import Prober
        p = Prober()
        p.start(timeout_s={SETTLE_S})
        print(p.pid, flush=True)
        time.sleep(120)
    """)
    agent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(agent.stdout.readline())  # type: ignore[union-attr]
        assert _process_state(child_pid) not in (None, "Z")
        agent.kill()
        agent.wait(timeout=SETTLE_S)
        deadline = time.monotonic() + SETTLE_S
        while _process_state(child_pid) not in (None, "Z"):
            assert time.monotonic() < deadline, "the prober child outlived its killed parent"
            time.sleep(0.02)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


class RawChild:
    """The child program spoken to directly over its socket pair, to send it what Prober never would."""

    def __init__(self, settings: str = ProberSettings(stats_interval_s=0.05).to_json()) -> None:
        self.sock, child = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, "--fd", str(child.fileno()),
                                      "--settings", settings], pass_fds=(child.fileno(),))
        child.close()
        self.sock.settimeout(SETTLE_S)
        self.reader = FrameReader()
        self.stats: dict = {}

    def frames(self) -> Iterator[tuple[int, object]]:
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            for body in self.reader.feed(data):
                yield decode(body)

    def wait_for(self, kind: int, ok=lambda payload: True) -> object:  # noqa: ANN001
        deadline = time.monotonic() + SETTLE_S
        for got, payload in self.frames():
            if got == STATS:
                self.stats = payload  # type: ignore[assignment]
            if got == kind and ok(payload):
                return payload
            assert time.monotonic() < deadline, f"no frame {kind} within {SETTLE_S} s"
        raise AssertionError(f"the child closed its feed before sending frame {kind}")

    def close(self) -> int:
        self.sock.close()
        try:
            return self.proc.wait(timeout=SETTLE_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_malformed_frames_are_counted_and_never_end_the_child() -> None:
    """Garbage, a wrong shape, an unknown type and a bad spec are counted; SIGINT is ignored; the
    child keeps probing what is valid, and exits 0 when the feed closes."""
    child = RawChild()
    try:
        child.wait_for(READY)
        body = b"\xc1\xc1"
        child.sock.sendall(len(body).to_bytes(4, "big") + body)  # not msgpack
        child.sock.sendall(encode(REPLACE, {"not": "a list"}))
        child.sock.sendall(encode(99, []))
        child.sock.sendall(encode(UPDATE, [[["bad spec"], encode_spec(tcp_spec("a", free_port(), failures=1))], []]))
        os.kill(child.proc.pid, signal.SIGINT)
        reports = child.wait_for(REPORTS)
        assert reports == [["web", "a", 1, "critical", "connection refused"]]
        stats = child.wait_for(STATS, lambda s: s.get("updates", 0) == 1)
        assert (stats["bad_frames"], stats["bad_specs"], stats["checks"], stats["replaces"]) == (3, 1, 1, 0)
        assert child.proc.poll() is None
    finally:
        assert child.close() == 0


def test_bad_settings_end_the_child_with_a_message() -> None:
    """The child refuses settings it does not know, says why, and exits 2; start() reports it."""
    child = RawChild(settings='{"stats_interval_s": -1}')
    try:
        frames = list(child.frames())
        assert len(frames) == 1 and "stats_interval_s" in msgpack.packb(frames[0][1]).decode("latin-1")
    finally:
        assert child.close() == 2


def test_start_fails_clearly_when_the_child_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that exits at once: start() raises ProberStartError naming its exit status."""
    monkeypatch.setattr("registry.health.process.CHILD_MODULE", "registry.health.no_such_module")
    prober = Prober()
    with pytest.raises(ProberStartError, match="exited with status 1"):
        prober.start(timeout_s=SETTLE_S)
    assert not prober.alive()
