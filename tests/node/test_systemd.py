"""systemd integration of the agent (issue 6, points 2, 5, 6): the sd_notify client against real
AF_UNIX datagram sockets, a real `registry agent` under a fake NOTIFY_SOCKET (READY=1, STATUS=,
WATCHDOG=1, STOPPING=1), the journal log format, and `registry config check`.

Every wait is bounded; the notify socket is drained by a thread so the agent's non-blocking sends
never find a full queue (Linux queues only net.unix.max_dgram_qlen = 10 datagrams by default).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from registry.cli.main import app
from registry.logformat import (
    JournalFormatter,
    make_formatter,
    stderr_is_journal,
    syslog_priority,
)
from registry.node.config import MAX_HANDOVER_S, NodeConfig, build, check_settings, read_file
from registry.node.loop import HANDOVER_DRAIN_S
from registry.node.sdnotify import Notifier, watchdog_interval_s

from ..integration.cluster import LOAD_MARGIN_S, ROOT, free_ports, poll, registry_cmd

START_TIMEOUT_S = 60.0  # imports and the DNS child on a loaded machine
STOP_TIMEOUT_S = 15.0
# systemd kills a service whose pings are WatchdogSec apart; the agent pings every half of it, so
# the other half is the room for a loaded machine: 2 s (LOAD_MARGIN_S) here.
WATCHDOG_USEC = int(2 * LOAD_MARGIN_S * 1e6)
WATCHDOG_PINGS = 3  # watched after READY=1: "repeatedly", in about 3 * WATCHDOG_USEC / 2
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")


class Listener:
    """A bound AF_UNIX SOCK_DGRAM socket playing systemd's part; a thread collects every
    datagram as (arrival time, text)."""

    def __init__(self, address: str) -> None:
        self.address = address  # as it goes into NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, line) for t, text in self.messages for line in text.split("\n")]

    def wait_for(self, what: str, pred: Callable[[str], bool], timeout_s: float,
                 alive: subprocess.Popen[bytes] | None = None) -> float:
        """The arrival time of the first line matching ``pred``; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for t, line in self.lines():
                if pred(line):
                    return t
            if alive is not None and alive.poll() is not None:
                raise AssertionError(f"{what}: the agent exited {alive.returncode}; got {self.lines()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:g} s; got {[m for _, m in self.lines()]}")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="reg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[Listener]:
    address = str(short_dir / "notify") if request.param == "path" else f"@registry-test-{uuid.uuid4().hex}"
    lst = Listener(address)
    yield lst
    lst.close()


# -- the notify client ----------------------------------------------------------------------------

def test_notifier_sends_each_message_as_one_datagram(listener: Listener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    assert notifier.ready("follower, term 0, leader none")
    assert notifier.status("leader, term 3, leader n1")
    assert notifier.watchdog()
    assert notifier.stopping()
    listener.wait_for("STOPPING=1", lambda line: line == "STOPPING=1", 5)
    notifier.close()
    assert [text for _, text in listener.messages] == [
        "READY=1\nSTATUS=follower, term 0, leader none", "STATUS=leader, term 3, leader n1", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_is_a_no_op_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()


def test_notifier_never_raises_and_warns_once(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="registry.sdnotify"):
        assert not notifier.watchdog()
        assert not notifier.watchdog()
        assert not notifier.status("x")
    assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1
    relative = Notifier({"NOTIFY_SOCKET": "relative/path"})
    assert not relative.enabled and not relative.ready()


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "400000"}) == pytest.approx(0.4)
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=43) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0


# -- a real agent under a fake NOTIFY_SOCKET ------------------------------------------------------

def _start_agent(short_dir: Path, listener: Listener | None, *, peers: int, stderr: int | object,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    raft, client, dns, *peer_ports = free_ports(3 + peers)  # the peers' ports stay unbound: peers down
    args = ["agent", "--name", "n1", "--data-dir", str(short_dir / "n1"), "--raft", f"127.0.0.1:{raft}",
            "--client", f"127.0.0.1:{client}", "--dns", f"127.0.0.1:{dns}"]
    for i, port in enumerate(peer_ports, 2):
        args += ["--peer", f"n{i}=127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                                             "JOURNAL_STREAM")}
    if listener is not None:
        env.update(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.update(extra_env or {})
    return subprocess.Popen(registry_cmd(*args), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr)  # type: ignore[arg-type]


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.integration
def test_agent_is_ready_without_an_election_pings_its_watchdog_and_says_stopping(
        listener: Listener, short_dir: Path) -> None:
    """One node of a three-node cluster whose peers are down: READY=1 still arrives (readiness does
    not wait for an election), with a STATUS; WATCHDOG=1 comes about every WATCHDOG_USEC/2, never a
    whole WATCHDOG_USEC apart (systemd's limit); SIGTERM
    gives STOPPING=1 and exit 0."""
    proc = _start_agent(short_dir, listener, peers=2, stderr=subprocess.DEVNULL)
    try:
        ready_at = listener.wait_for("READY=1", lambda line: line == "READY=1", START_TIMEOUT_S, proc)
        assert any(line.startswith("STATUS=") and "term" in line for _, line in listener.lines())
        watchdog_s = WATCHDOG_USEC / 1e6

        def pings() -> list[float]:
            return [t for t, line in listener.lines() if line == "WATCHDOG=1" and t >= ready_at]

        # NB: bounded by the watchdog itself: a later ping would already have got it killed.
        poll(f"{WATCHDOG_PINGS} WATCHDOG=1 after READY=1", lambda: True if len(pings()) >= WATCHDOG_PINGS else None,
             WATCHDOG_PINGS * watchdog_s + LOAD_MARGIN_S, interval_s=0.05,
             describe=lambda: f"pings at {pings()} (ready {ready_at})")
        gaps = [b - a for a, b in itertools.pairwise([ready_at, *pings()[:WATCHDOG_PINGS]])]
        assert max(gaps) < watchdog_s, f"gaps {gaps}: one of WatchdogSec ({watchdog_s:g} s) gets the agent killed"
        # NB: the median, as a stall of this process can squeeze two arrivals into one gap.
        assert statistics.median(gaps) > watchdog_s / 4, \
            f"gaps {gaps}: pings come every WatchdogSec/2 ({watchdog_s / 2:g} s), not on every loop turn"
        assert not any(line == "STOPPING=1" for _, line in listener.lines())
    finally:
        status = _stop(proc)
    assert status == 0
    listener.wait_for("STOPPING=1", lambda line: line == "STOPPING=1", 5)
    stopping_at = next(t for t, line in listener.lines() if line == "STOPPING=1")
    assert all(t <= stopping_at for t, line in listener.lines() if line == "READY=1")


@pytest.mark.integration
def test_agent_reports_role_term_and_leader_in_status(short_dir: Path) -> None:
    """A single node elects itself: STATUS= lines follow it from follower to leader."""
    listener = Listener(str(short_dir / "notify"))
    proc = _start_agent(short_dir, listener, peers=0, stderr=subprocess.DEVNULL)
    try:
        listener.wait_for("READY=1", lambda line: line == "READY=1", START_TIMEOUT_S, proc)
        listener.wait_for("STATUS= as leader", lambda line: re.fullmatch(
            r"STATUS=leader, term [1-9]\d*, leader n1", line) is not None, 30, proc)
        statuses = [line for _, line in listener.lines() if line.startswith("STATUS=")]
        assert statuses[0].startswith("STATUS=follower, term "), statuses
    finally:
        status = _stop(proc)
        listener.close()
    assert status == 0


# -- logging for the journal ----------------------------------------------------------------------

@pytest.mark.integration
def test_agent_logs_with_priority_prefixes_and_no_timestamps_to_the_journal(short_dir: Path) -> None:
    """With JOURNAL_STREAM naming its stderr (as systemd sets it), every line the agent and its
    DNS child write starts with a syslog priority and carries no timestamp."""
    listener = Listener(str(short_dir / "notify"))
    log_path = short_dir / "stderr.log"
    with open(log_path, "wb") as log_file:
        st = os.fstat(log_file.fileno())
        proc = _start_agent(short_dir, listener, peers=0, stderr=log_file,
                            extra_env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        try:
            listener.wait_for("READY=1", lambda line: line == "READY=1", START_TIMEOUT_S, proc)
        finally:
            status = _stop(proc)
            listener.close()
    assert status == 0
    lines = log_path.read_text().splitlines()
    assert any(line.startswith("<6>") and "started" in line for line in lines), lines
    assert any(line.startswith("<6>") and "dns[" in line for line in lines), lines  # the DNS child too
    bad = [line for line in lines if not re.match(r"<[0-7]>", line) or TIMESTAMP.search(line)]
    assert not bad, bad


def test_journal_formatter_priorities_and_human_fallback() -> None:
    assert [syslog_priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                                                 logging.DEBUG)] == [2, 3, 4, 6, 7]
    formatter = JournalFormatter("%(message)s")

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("registry", level, __file__, 1, msg, None, None)
    assert formatter.format(record(logging.ERROR, "boom")) == "<3>boom"
    assert formatter.format(record(logging.WARNING, "hm")) == "<4>hm"
    assert formatter.format(record(logging.INFO, "two\nlines")) == "<6>two\n<6>lines"
    assert formatter.format(record(logging.DEBUG, "d")) == "<7>d"
    human = make_formatter(journal=False).format(record(logging.INFO, "hello"))
    assert TIMESTAMP.match(human) and human.endswith("INFO hello")


def test_journal_stream_must_name_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "a", "wb") as a, open(tmp_path / "b", "wb") as b:
        st = os.fstat(a.fileno())
        value = f"{st.st_dev}:{st.st_ino}"
        assert stderr_is_journal(a, {"JOURNAL_STREAM": value})
        assert not stderr_is_journal(b, {"JOURNAL_STREAM": value})  # e.g. `registry up`'s log files
        assert not stderr_is_journal(a, {})


# -- registry config check ------------------------------------------------------------------------

runner = CliRunner()
VALID = """\
name = "n1"
data-dir = "/var/lib/registry"
raft = "10.0.0.1:7001"
client = "10.0.0.1:7101"
dns = "0.0.0.0:53"
peers = ["n2=10.0.0.2:7001", "n3=10.0.0.3:7001"]
dns_ttl_s = 10
"""


def test_config_check_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(VALID)
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "ok" in result.output and "n1" in result.output and "n3=10.0.0.3:7001" in result.output


def test_config_check_lists_every_problem_with_key_and_accepted_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("""\
name = "-n1"
raft = "10.0.0.1"
client = "10.0.0.1:7101"
dns = "0.0.0.0:7101"
peers = ["n2=10.0.0.2:7001", "n2=10.0.0.9:7001", "n3"]
tick_interval_ms = "fifty"
dns_max_udp = 100
colour = "blue"
request_timeout_s = -1
""")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2, result.output
    out = result.output
    expected = {
        "name": "starting with a letter or digit",
        "raft": "expected HOST:PORT",
        "dns": "distinct ports",
        "tick_interval_ms": "an integer 1-10000",
        "dns_max_udp": "an integer 512-65535",
        "colour": "accepted: client, cluster_id, data_dir",
        "request_timeout_s": "a positive number of seconds",
        "data_dir": "missing",
    }
    for key, accepted in expected.items():
        assert re.search(rf"\b{key}: .*{re.escape(accepted)}", out), (key, out)
    assert "peer n2 is listed twice" in out and "'n3'" in out
    assert "10 problem(s)" in out


def test_config_check_missing_and_unparsable_files_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", str(tmp_path / "absent.toml")])
    assert result.exit_code == 2 and "no such file" in result.output
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("name = \n")
    result = runner.invoke(app, ["config", "check", str(garbage)])
    assert result.exit_code == 2 and "not valid TOML" in result.output


def test_a_file_the_check_passes_builds(tmp_path: Path) -> None:
    """check_settings finds nothing <=> build() succeeds, so `config check` never passes a file
    the agent then refuses."""
    path = tmp_path / "registry.toml"
    path.write_text(VALID + 'peer = ["n4=10.0.0.4:7001"]\n')
    settings = read_file(path)
    assert [p.key for p in check_settings(settings)] == ["peers"]  # 'peer' and 'peers' both given
    del settings["peer"]
    assert check_settings(settings) == []
    config = build(settings)
    assert config.peers == {"n2": ("10.0.0.2", 7001), "n3": ("10.0.0.3", 7001)}
    assert config.dns_ttl_s == 10


@pytest.mark.parametrize("unit", ["registry.service", "registry@.service"])
def test_a_leaders_hand_over_on_sigterm_fits_the_units_stop_timeout(unit: str) -> None:
    """SIGTERM on a leader hands leadership over (at most MAX_HANDOVER_S, whatever the timing
    settings), then answers what waits on it (HANDOVER_DRAIN_S), then stops its children and its
    store: all of it must end before systemd's TimeoutStopSec sends SIGKILL, with 5 s to spare."""
    text = (ROOT / "systemd" / unit).read_text()
    [stop] = re.findall(r"^TimeoutStopSec=(\d+)s$", text, flags=re.M)
    assert MAX_HANDOVER_S + HANDOVER_DRAIN_S + 5 <= int(stop)
    base = {"name": "n1", "data_dir": Path("/tmp/unused"), "raft": ("127.0.0.1", 7001),
            "client": ("127.0.0.1", 7101), "dns": ("127.0.0.1", 8600)}
    assert NodeConfig(**base).handover_timeout_s == 2 * (2 * 8 - 1) * 0.05  # the default: 1.5 s
    slowest = NodeConfig(**base, tick_interval_ms=10_000, election_ticks=1_000)
    assert slowest.handover_timeout_s == MAX_HANDOVER_S
