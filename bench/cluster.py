"""The benchmarks' local cluster: real `registry agent` processes on loopback, and what the nodes
tell over a run.

`LocalCluster` starts NODES `registry agent` processes (durable: LMDB, fsync per Ready) on free
loopback ports (never the `registry up` ports, so a benchmark can run beside the integration
tests), waits for a leader, gives each node's PIDs, memory and data size, and always stops them
(SIGTERM, then SIGKILL; PR_SET_PDEATHSIG if the benchmark itself is killed). Every benchmark in
bench/ starts its clusters through it. `Probe` is a run seen from the nodes: `status` before and
after, and bench/window.py's `Window` over the agents.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.proc import children_running, die_with_parent, proc_status_kib
from bench.script import reporter
from bench.window import Window
from registry.client import Client, NodeStatus, RegistryError

HOST = "127.0.0.1"
# Ports of `registry up` (raft 7001-7009, client 7101-7109, DNS 8600-8608) and their
# neighbourhood: never picked, so this can run beside the integration tests.
RESERVED_PORTS = range(7000, 8700)
PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range, where outgoing connections live
LEADER_WAIT_S = 20.0
STOP_WAIT_S = 10.0
DNS_CHILD_WAIT_S = 10.0


# The local cluster


def _port_free(port: int, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def pick_ports(count: int, *, udp: bool = False, taken: set[int] | None = None) -> list[int]:
    """``count`` distinct loopback ports that are free now (TCP, and UDP too if ``udp``), picked
    at random below the ephemeral range and away from the `registry up` ports."""
    rng = random.Random()
    found: list[int] = []
    taken = set() if taken is None else taken
    for _ in range(10_000):
        port = rng.randrange(*PORT_RANGE)
        if port in taken or port in RESERVED_PORTS or port in found:
            continue
        if _port_free(port, udp):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError("no free loopback ports found")


def dns_child_pid(agent_pid: int, timeout_s: float = DNS_CHILD_WAIT_S) -> int:
    """The PID of an agent's DNS child (``python -m registry_dns.child``), once it runs."""
    deadline = time.monotonic() + timeout_s
    while not (found := children_running(agent_pid, b"registry_dns.child")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no DNS child process of the agent {agent_pid} found")
        time.sleep(0.1)
    return found[0]


def dir_bytes(path: Path) -> int:
    """Allocated bytes under ``path`` (st_blocks: LMDB's map file is sparse)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
    return total


@dataclass
class Agent:
    name: str
    raft: str
    client: str
    dns: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """NODES `registry agent` processes on loopback, data and logs under ``root``.

    Use as a context manager: leaving it stops every agent (SIGTERM, then SIGKILL after
    STOP_WAIT_S) and removes ``root`` unless ``keep``. Agents also get SIGTERM if this process
    dies (PR_SET_PDEATHSIG), so a killed benchmark leaves no cluster behind.
    """

    def __init__(self, nodes: int, root: Path, *, keep: bool = False, agent_args: Sequence[str] = ()) -> None:
        self.root = root
        self.keep = keep
        self.agent_args = list(agent_args)
        self.names = [f"n{i}" for i in range(1, nodes + 1)]
        self.agents: dict[str, Agent] = {}
        self._logs: list[Any] = []
        self._assign_ports()

    def _assign_ports(self) -> None:
        raft_client = pick_ports(2 * len(self.names))
        dns = pick_ports(len(self.names), udp=True, taken=set(raft_client))
        self.agents = {
            name: Agent(name, f"{HOST}:{raft_client[2 * i]}", f"{HOST}:{raft_client[2 * i + 1]}",
                        f"{HOST}:{dns[i]}", self.root / name, self.root / f"{name}.log")
            for i, name in enumerate(self.names)
        }

    @property
    def servers(self) -> list[str]:
        """The nodes' client addresses, in node order."""
        return [a.client for a in self.agents.values()]

    def command(self, name: str) -> list[str]:
        a = self.agents[name]
        argv = [sys.executable, "-m", "registry", "agent", "--name", name, "--data-dir", str(a.data_dir),
                "--raft", a.raft, "--client", a.client, "--dns", a.dns, *self.agent_args]
        for other in self.names:
            if other != name:
                argv += ["--peer", f"{other}={self.agents[other].raft}"]
        return argv

    def start_agent(self, name: str) -> None:
        a = self.agents[name]
        log = open(a.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        a.proc = subprocess.Popen(self.command(name), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=self.root, env=env, start_new_session=True, preexec_fn=die_with_parent)

    def start(self, attempts: int = 3) -> None:
        """Start every agent; if one exits at once (a port taken meanwhile), pick new ports."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            for name in self.names:
                self.start_agent(name)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline and all(a.alive() for a in self.agents.values()):
                time.sleep(0.05)
            dead = [a.name for a in self.agents.values() if not a.alive()]
            if not dead:
                return
            progress(f"agent(s) {', '.join(dead)} exited at start (attempt {attempt}):\n{self.log_tail(dead[0])}")
            self.stop_agents()
            for a in self.agents.values():
                shutil.rmtree(a.data_dir, ignore_errors=True)
            self._assign_ports()
        raise RuntimeError(f"the cluster did not start after {attempts} attempts; logs in {self.root}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.agents[name].log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def statuses(self, timeout_s: float = 2.0) -> dict[str, NodeStatus | RegistryError]:
        """Every node's `status` (what `registry status` shows), by node name."""
        with Client(self.servers, timeout_s=timeout_s, attempt_timeout_s=timeout_s) as c:
            return dict(zip(self.names, c.status_all(), strict=True))

    def wait_leader(self, timeout_s: float = LEADER_WAIT_S) -> NodeStatus:
        """The leader's status, once every node answers and all agree on it and on the term."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, NodeStatus | RegistryError] = {}
        while time.monotonic() < deadline:
            dead = [a.name for a in self.agents.values() if not a.alive()]
            if dead:
                raise RuntimeError(f"agent {dead[0]} exited:\n{self.log_tail(dead[0])}")
            last = self.statuses(timeout_s=1.0)
            ok = [s for s in last.values() if isinstance(s, NodeStatus)]
            leaders = [s for s in ok if s.role == "leader"]
            if (len(ok) == len(self.names) and len(leaders) == 1
                    and all(s.leader == leaders[0].node and s.term == leaders[0].term for s in ok)):
                return leaders[0]
            time.sleep(0.1)
        raise RuntimeError(f"no leader within {timeout_s:g} s; last statuses: {last}")

    def pids(self) -> dict[str, int]:
        """The running agents' PIDs, by node name."""
        return {a.name: a.pid for a in self.agents.values() if a.alive()}

    def dns_pids(self) -> dict[str, int]:
        """The running agents' DNS children's PIDs, by node name."""
        return {name: dns_child_pid(pid) for name, pid in self.pids().items()}

    def memory(self) -> dict[str, dict[str, float]]:
        """Each node's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
        return {a.name: {"rss_mib": proc_status_kib(a.pid, "VmRSS") / 1024,
                         "hwm_mib": proc_status_kib(a.pid, "VmHWM") / 1024}
                for a in self.agents.values() if a.alive()}

    def stop_agents(self) -> dict[str, int | None]:
        """SIGTERM every agent, SIGKILL those still running after STOP_WAIT_S: name -> exit code."""
        running = [a for a in self.agents.values() if a.alive()]
        for a in running:
            with contextlib.suppress(ProcessLookupError):
                a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + STOP_WAIT_S
        codes: dict[str, int | None] = {}
        for a in self.agents.values():
            if a.proc is None:
                continue
            try:
                codes[a.name] = a.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                progress(f"{a.name} did not stop within {STOP_WAIT_S:g} s; killing it")
                a.proc.kill()
                codes[a.name] = a.proc.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
        return codes

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop_agents()
        finally:
            if self.keep:
                progress(f"kept data and logs in {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)


class Probe:
    """A run seen from the nodes: `status` of each before and after (each takes a round trip, so
    outside the window) and, over the window, the agents' CPU and disk writes and the machine's
    CPU. ``open`` and ``close`` are the window's edges (run_load's ``on_start``/``on_end``)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.window = Window(cluster.pids())
        self.status0 = cluster.statuses()

    def open(self) -> None:
        self.window.open()

    def close(self) -> None:
        self.window.close()

    def after(self, writes: int) -> dict[str, Any]:
        """After the run: statuses, and what the counters moved by within the window."""
        status = self.cluster.statuses()
        processes = self.window.processes()
        nodes: dict[str, Any] = {}
        for name in self.cluster.names:
            s, s0 = status.get(name), self.status0.get(name)
            row: dict[str, Any] = dict(processes.get(name, {"cpu_pct": None, "disk_written_mb": 0.0}))
            if isinstance(s, NodeStatus):
                row.update(role=s.role, term=s.term, leader=s.leader, commit=s.commit, applied=s.applied)
                if isinstance(s0, NodeStatus):
                    row["applied_delta"] = s.applied - s0.applied
                    row["term_delta"] = s.term - s0.term
            else:
                row["error"] = str(s)
            nodes[name] = row
        leader = next((n for n, r in nodes.items() if r.get("role") == "leader"), None)
        leader_disk = nodes[leader]["disk_written_mb"] if leader else None
        return {"nodes": nodes, "leader": leader, "nodes_cpu_pct": self.window.total_cpu_pct(),
                "elections": max((r.get("term_delta", 0) for r in nodes.values()), default=0),
                "machine_cpu_pct": self.window.machine_cpu_pct(),
                "leader_disk_kb_per_write": round(1000 * leader_disk / writes, 2) if leader and writes else None}


progress = reporter("cluster")
