"""A harness that runs registry nodes as real OS processes on loopback, for integration tests.

Each node is ``python -m registry agent`` with its own data directory, its stderr (and stdout)
appended to ``<root>/<name>.log``. Ports are ephemeral ports picked here, never the fixed
``registry up`` ports. Every wait polls against a deadline and raises ``TimeoutError`` with what
it last saw; nothing synchronises with a bare sleep.

Rule: ``Cluster.close()`` (the fixture calls it) ends every process this harness started:
SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from registry.client import Client, NodeStatus, RegistryError, Services
from registry.node.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 10.0  # SIGTERM to exit, before SIGKILL
START_TIMEOUT_S = 60.0  # an agent answers `status` (imports and the DNS child are slow on a loaded machine)
LEADER_TIMEOUT_S = 30.0
STATUS_WAIT_S = 5.0  # one status request to a node that is up, when its answer is needed (not polled)
POLL_S = 0.05
# The ports `registry up` uses; the harness never hands them out.
RESERVED_PORTS = frozenset({*range(7001, 7010), *range(7101, 7110), *range(8600, 8609)})

# The agents' timing, as configured (the harness passes none of these flags): deadlines on timing
# come from them, plus LOAD_MARGIN_S for scheduling delays on a busy 2-core machine (CI runs
# `pytest -n auto` there).
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
TICK_S = _DEFAULTS["tick_interval_ms"] / 1000
ELECTION_TIMEOUT_MAX_S = (2 * _DEFAULTS["election_ticks"] - 1) * TICK_S  # the core draws from [E, 2E-1] ticks
LOAD_MARGIN_S = 2.0

T = TypeVar("T")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that are free for TCP and UDP right now (the kernel's pick).

    The sockets are held until all ``n`` are chosen, so the ports are distinct; the small race
    with other programs between closing them and an agent binding is accepted.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port not in RESERVED_PORTS:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def poll(what: str, check: Callable[[], T | None], timeout_s: float, *, interval_s: float = POLL_S,
         describe: Callable[[], str] | None = None) -> T:
    """Call ``check`` until it returns something other than None (returned), or raise
    TimeoutError after ``timeout_s`` naming ``what`` and ``describe()`` (the last state seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            seen = f"; last seen: {describe()}" if describe is not None else ""
            raise TimeoutError(f"{what}: not within {timeout_s:g} s{seen}")
        time.sleep(interval_s)


def registry_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "registry", *args]


def run_cli(*args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``registry`` command to completion (bounded), capturing its output."""
    return subprocess.run(registry_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          env=env, stdin=subprocess.DEVNULL)


@dataclass
class Agent:
    """One node: its fixed identity (name, ports, data dir) and its current process, if any."""

    name: str
    data_dir: Path
    raft: str
    client: str
    dns: str
    log_path: Path
    peers: dict[str, str] = field(default_factory=dict)  # name -> raft HOST:PORT
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def argv(self) -> list[str]:
        argv = registry_cmd("agent", "--name", self.name, "--data-dir", str(self.data_dir), "--raft", self.raft,
                            "--client", self.client, "--dns", self.dns)
        for name, address in sorted(self.peers.items()):
            argv += ["--peer", f"{name}={address}"]
        return [*argv, *self.extra_args]

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running (pid {self.proc.pid if self.proc else '?'})"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- harness: start #{self.starts} of {self.name}: {' '.join(self.argv())}\n".encode())
            log.flush()
            # NB: its own session, so that a signal meant for pytest (Ctrl-C) does not reach it
            # before the harness stops it, and vice versa.
            self.proc = subprocess.Popen(self.argv(), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float) -> int:
        """The exit status (negative: killed by that signal), or TimeoutError."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} (pid {self.proc.pid}) did not exit within {timeout_s:g} s") from None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout_s``. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        return self.proc.returncode

    def state(self) -> str:
        if self.proc is None:
            return "never started"
        return "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"

    @property
    def dns_address(self) -> tuple[str, int]:
        """(host, port) of this agent's DNS responder (the same port for UDP and TCP)."""
        host, _, port = self.dns.rpartition(":")
        return host.strip("[]"), int(port)

    def dns_child_pid(self) -> int | None:
        """The pid of this agent's DNS child process (``registry_dns.child``), or None (Linux /proc)."""
        if not self.alive:
            return None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.pid and fields[0] != "Z" and b"registry_dns.child" in cmdline:
                return int(entry.name)
        return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Cluster:
    """N agents that know each other, on free loopback ports, under ``root``.

    Clients made by ``client()`` are closed by ``close()``. Names are ``n1`` .. ``nN``.
    """

    def __init__(self, root: Path, n: int = 3, *, extra_args: Sequence[str] = (),
                 agents: Sequence[Agent] | None = None) -> None:
        """``agents``: made by the caller (other hosts, other Agent types, peers already set),
        instead of ``n`` agents on loopback that peer with each other directly."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.agents: dict[str, Agent] = {}
        if agents is not None:
            self.agents = {agent.name: agent for agent in agents}
        else:
            ports = free_ports(3 * n)
            for i, name in enumerate(f"n{i}" for i in range(1, n + 1)):
                raft, client, dns = (f"127.0.0.1:{p}" for p in ports[3 * i:3 * i + 3])
                self.agents[name] = Agent(name=name, data_dir=root / name, raft=raft, client=client, dns=dns,
                                          log_path=root / f"{name}.log", extra_args=tuple(extra_args))
            for agent in self.agents.values():
                agent.peers = {o.name: o.raft for o in self.agents.values() if o.name != agent.name}
        self._clients: list[Client] = []

    # -- processes ----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.agents)

    def __getitem__(self, name: str) -> Agent:
        return self.agents[name]

    def live(self) -> list[str]:
        return [name for name, agent in self.agents.items() if agent.alive]

    def start(self, names: Iterable[str] | None = None) -> None:
        for name in names if names is not None else self.names:
            self.agents[name].start()

    def kill(self, name: str, sig: int = signal.SIGKILL, *, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` to one agent and wait (bounded) for it to exit; returns its exit status."""
        agent = self.agents[name]
        agent.signal(sig)
        return agent.wait_exit(timeout_s)

    def kill_all(self, sig: int = signal.SIGKILL, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send ``sig`` to every live agent at once, then wait for each to exit."""
        live = self.live()
        for name in live:
            self.agents[name].signal(sig)
        for name in live:
            self.agents[name].wait_exit(timeout_s)

    def restart(self, name: str, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start a stopped agent again with the same data dir and ports; wait until it answers."""
        self.agents[name].start()
        self.wait_answering([name], timeout_s=timeout_s)

    def close(self) -> None:
        """Close the clients, then stop every agent: SIGTERM all, SIGKILL any left after the bound."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        running = [a.proc for a in self.agents.values() if a.proc is not None and a.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)

    def dns_addresses(self) -> dict[str, tuple[str, int]]:
        """Every agent's DNS (host, port), by name."""
        return {name: agent.dns_address for name, agent in self.agents.items()}

    def tails(self, lines: int = 40) -> str:
        out = []
        for agent in self.agents.values():
            out.append(f"==== {agent.name} ({agent.state()}; log {agent.log_path}; last {lines} lines) ====")
            out.append(agent.tail(lines))
        return "\n".join(out)

    # -- clients ------------------------------------------------------------------------------

    def client(self, names: str | Sequence[str] | None = None, **kwargs: Any) -> Client:
        """A Client bound to one node (a name), to some (a list) or to every node (None)."""
        if names is None:
            names = self.names
        elif isinstance(names, str):
            names = [names]
        client = Client([self.agents[n].client for n in names], **kwargs)
        self._clients.append(client)
        return client

    def statuses(self, names: Sequence[str] | None = None, *,
                 wait_s: float = 1.0) -> dict[str, NodeStatus | RegistryError]:
        """Every node's status (or the error instead), asked at once; default: the live nodes."""
        names = list(names if names is not None else self.live())
        if not names:
            return {}
        with Client([self.agents[n].client for n in names], timeout_s=wait_s) as client:
            return dict(zip(names, client.status_all(), strict=True))

    def status(self, name: str, *, timeout_s: float = START_TIMEOUT_S) -> NodeStatus:
        """One running node's status, asked again until it answers (a node busy on a loaded
        machine may miss one short deadline), or TimeoutError naming what it said."""
        last: dict[str, Any] = {}

        def check() -> NodeStatus | None:
            agent = self.agents[name]
            if not agent.alive:
                raise AssertionError(f"{name} {agent.state()}:\n{agent.tail()}")
            last.update(self.statuses([name], wait_s=STATUS_WAIT_S))
            got = last[name]
            return got if isinstance(got, NodeStatus) else None

        return poll(f"{name} answering status", check, timeout_s, describe=lambda: repr(last))

    def wait_answering(self, names: Sequence[str] | None = None, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until every one of ``names`` (default: all) answers ``status``; fail at once if
        one of them exits."""
        names = list(names if names is not None else self.names)
        last: dict[str, Any] = {}

        def check() -> bool | None:
            for name in names:
                agent = self.agents[name]
                if not agent.alive:
                    raise AssertionError(f"{name} {agent.state()} while starting:\n{agent.tail()}")
            last.update(self.statuses(names))
            return True if all(isinstance(s, NodeStatus) for s in last.values()) else None

        poll(f"{', '.join(names)} answering status", check, timeout_s, describe=lambda: repr(last))

    def _all_answering(self, names: Sequence[str] | None, last: dict[str, Any]) -> list[NodeStatus] | None:
        """The status of every node in ``names`` (default: live), or None while one does not
        answer; ``last`` is refilled with what each node said, for the timeout message."""
        watched = list(names if names is not None else self.live())
        got = self.statuses(watched)
        last.clear()
        last.update(got)
        statuses = [s for s in got.values() if isinstance(s, NodeStatus)]
        return statuses if len(statuses) == len(watched) else None

    def wait_for_leader(self, timeout_s: float = LEADER_TIMEOUT_S, *, names: Sequence[str] | None = None,
                        above_term: int = 0) -> NodeStatus:
        """Wait until exactly one of ``names`` (default: the live agents) is leader, in a term
        above ``above_term``, and every one of them answers with that term and that leader.
        Returns the leader's status."""
        last: dict[str, Any] = {}

        def check() -> NodeStatus | None:
            statuses = self._all_answering(names, last)
            if statuses is None:
                return None
            leaders = [s for s in statuses if s.role == "leader"]
            if len(leaders) != 1 or leaders[0].term <= above_term:
                return None
            leader = leaders[0]
            if all(s.term == leader.term and s.leader == leader.node for s in statuses):
                return leader
            return None

        return poll("one leader that every node agrees on", check, timeout_s, describe=lambda: _brief(last))

    def wait_converged(self, timeout_s: float = LEADER_TIMEOUT_S, *, names: Sequence[str] | None = None,
                       at_least: int = 0) -> int:
        """Wait until every node in ``names`` (default: live) has applied the same index, equal to
        the leader's commit and at least ``at_least``; returns that index."""
        last: dict[str, Any] = {}

        def check() -> int | None:
            statuses = self._all_answering(names, last)
            if statuses is None:
                return None
            leaders = [s for s in statuses if s.role == "leader"]
            if len(leaders) != 1:
                return None
            commit = leaders[0].commit
            if commit >= at_least and all(s.applied == commit for s in statuses):
                return commit
            return None

        return poll("every node applied the leader's commit", check, timeout_s, describe=lambda: _brief(last))

    def stale_catalogues(self, names: Sequence[str] | None = None) -> dict[str, Services]:
        """Each node's own applied catalogue (a stale read through that node alone)."""
        out = {}
        for name in names if names is not None else self.live():
            with Client([self.agents[name].client], timeout_s=10) as client:
                out[name] = client.services(stale=True)
        return out


def _brief(statuses: dict[str, Any]) -> str:
    parts = []
    for name, s in statuses.items():
        if isinstance(s, NodeStatus):
            parts.append(f"{name}: {s.role} term {s.term} leader {s.leader} commit {s.commit} applied {s.applied}")
        else:
            parts.append(f"{name}: {s}")
    return "; ".join(parts) or "nothing"
