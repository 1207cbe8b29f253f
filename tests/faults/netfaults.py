"""Fault helpers for a ``NetCluster``: network faults with nftables in each host's namespace, a
delaying TCP proxy for latency and jitter (the kernel here has no ``netem``), and process faults
(kill -9 and restart, SIGSTOP and SIGCONT).

Network faults drop packets at the receiver's ``input`` hook (``ip saddr X drop``), as a real
network loses them: senders see no error, TCP retransmits and ZeroMQ reconnects. Only traffic
between nodes is touched; the test process (the bridge address) always reaches every node, so
clients keep talking to a node on the wrong side of a partition. ``NetFaults`` keeps the whole
fault state and rewrites each host's rules from it on every change, so faults compose (a
partition during packet loss) and ``heal()`` flushes all of it.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.integration.cluster import STOP_TIMEOUT_S, Agent, Cluster

from .hosts import Host, Network, run

RAFT_PORT, CLIENT_PORT, DNS_PORT = 7001, 7101, 8600  # the same on every host: each has its own address


class NetFaults:
    """The network faults in force on one ``Network`` (see the module docstring)."""

    def __init__(self, network: Network) -> None:
        self.network = network
        # Invariant: (a, b) in _blocked means packets from host a never reach host b.
        self._blocked: set[tuple[str, str]] = set()
        self.loss_pct = 0
        self._loss_towards: dict[str, int] = {}  # host -> percent of its peers' packets it loses

    @property
    def names(self) -> list[str]:
        return list(self.network.hosts)

    def cut(self, src: str, dst: str) -> None:
        """Asymmetric (one-way) cut: ``src``'s packets never reach ``dst``; ``dst``'s reach ``src``."""
        self._blocked.add((src, dst))
        self._apply()

    def partition(self, *groups: Iterable[str]) -> None:
        """No traffic between different groups (both ways); hosts in no group are cut from all."""
        groups_list = [set(g) for g in groups]
        side = {name: i for i, g in enumerate(groups_list) for name in g}
        for a in self.names:
            for b in self.names:
                if a != b and side.get(a, -1 - hash(a)) != side.get(b, -1 - hash(b)):
                    self._blocked.add((a, b))
        self._apply()

    def isolate(self, name: str) -> None:
        """``name`` alone on one side (e.g. the leader), every other host on the other."""
        self.partition([name], [n for n in self.names if n != name])

    def split(self, minority: Sequence[str]) -> None:
        """A majority/minority split: ``minority`` on one side, everyone else on the other."""
        self.partition(minority, [n for n in self.names if n not in minority])

    def bridge(self, left: Sequence[str], middle: str, right: Sequence[str]) -> None:
        """Two halves that cannot see each other, and one node that sees both."""
        for a in left:
            for b in right:
                self._blocked.update({(a, b), (b, a)})
        self._apply()

    def loss(self, pct: int) -> None:
        """Drop ``pct`` percent of packets between nodes, at random (nftables ``numgen``)."""
        assert 0 <= pct <= 100
        self.loss_pct = pct
        self._apply()

    def loss_towards(self, name: str, pct: int) -> None:
        """Drop ``pct`` percent of the packets other nodes send to ``name`` (one lossy link
        into one node; what it sends is not touched), on top of ``loss``."""
        assert 0 <= pct <= 100
        self._loss_towards[name] = pct
        self._apply()

    def dropped(self, name: str) -> int:
        """Packets the random-loss rules of host ``name`` have dropped since they were last set."""
        out = self.network.hosts[name].nft_list("list chain inet faults input")
        return sum(int(n) for n in re.findall(r"numgen random mod 100 < \d+ counter packets (\d+)", out))

    def heal(self) -> None:
        """No faults at all."""
        self._blocked.clear()
        self.loss_pct = 0
        self._loss_towards.clear()
        self._apply()

    @property
    def active(self) -> bool:
        return bool(self._blocked) or self.loss_pct > 0 or any(self._loss_towards.values())

    def describe(self) -> str:
        cuts = ", ".join(f"{a}->{b}" for a, b in sorted(self._blocked)) or "none"
        towards = "".join(f"; loss {pct}% towards {name}" for name, pct in sorted(self._loss_towards.items()) if pct)
        return f"cuts: {cuts}; loss {self.loss_pct}%{towards}"

    def _apply(self) -> None:
        for host in self.network.hosts.values():
            host.nft(self._rules(host))

    def _rules(self, host: Host) -> str:
        hosts = self.network.hosts
        lines = ["flush chain inet faults input", "flush chain inet faults output"]
        for src, dst in sorted(self._blocked):
            if dst == host.name:
                lines.append(f"add rule inet faults input ip saddr {hosts[src].address} drop")
        peers = [h.address for h in hosts.values() if h.name != host.name]
        for pct in (self.loss_pct, self._loss_towards.get(host.name, 0)):
            if pct and peers:
                lines.append(f"add rule inet faults input ip saddr {{ {', '.join(peers)} }} "
                             f"numgen random mod 100 < {pct} counter drop")
        return "\n".join(lines) + "\n"


class DelayProxy:
    """TCP proxies on the bridge address, one per directed Raft link, that deliver every chunk
    after ``delay_s`` ± ``jitter_s`` (uniform), keeping each stream's byte order. One asyncio
    loop in a daemon thread runs them all. ``set_delay`` applies to data read from then on."""

    def __init__(self, listen_host: str, *, seed: int = 0) -> None:
        self.listen_host = listen_host
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._thread.start()

    def add_link(self, target_host: str, target_port: int) -> int:
        """A new listening proxy to (target_host, target_port); returns its port."""

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_server(
                lambda r, w: self._handle(r, w, target_host, target_port), self.listen_host, 0)

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=10)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def set_delay(self, delay_s: float, jitter_s: float = 0.0) -> None:
        assert 0 <= jitter_s <= delay_s
        self.delay_s, self.jitter_s = delay_s, jitter_s

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            up_writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(65536)
                delay = max(0.0, self.delay_s + self._rng.uniform(-self.jitter_s, self.jitter_s))
                last_due = max(last_due, loop.time() + delay)  # NB: never reorder a TCP stream
                queue.put_nowait((last_due, data))
                if not data:
                    break
            await delivery
        finally:
            delivery.cancel()


# ---------------------------------------------------------------------------------------------
# Agents on test hosts, and process faults


@dataclass
class NetnsAgent(Agent):
    """An agent run inside its host's namespace (``ip netns exec`` execs it: the pid is the agent's)."""

    host: Host | None = None

    def argv(self) -> list[str]:
        assert self.host is not None
        return self.host.exec_argv(super().argv())


class NetCluster(Cluster):
    """One agent per test host, on fixed ports at the host's own address. With ``proxy``, every
    node reaches every peer's Raft port through its own ``DelayProxy`` link instead of directly
    (then the proxy, not nftables, shapes that traffic: the sources of proxied packets are the
    bridge address). Process faults signal the agent's whole process group, its DNS child too:
    a crash or a pause of the host, not of one process."""

    def __init__(self, root: os.PathLike[str] | str, network: Network, *, proxy: DelayProxy | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        from pathlib import Path

        root = Path(root)
        agents: list[NetnsAgent] = []
        for host in network.hosts.values():
            agents.append(NetnsAgent(name=host.name, data_dir=root / host.name, raft=f"{host.address}:{RAFT_PORT}",
                                     client=f"{host.address}:{CLIENT_PORT}", dns=f"{host.address}:{DNS_PORT}",
                                     log_path=root / f"{host.name}.log", extra_args=tuple(extra_args), host=host))
        for agent in agents:
            for other in agents:
                if other is agent:
                    continue
                assert other.host is not None
                if proxy is None:
                    agent.peers[other.name] = other.raft
                else:
                    agent.peers[other.name] = f"{proxy.listen_host}:{proxy.add_link(other.host.address, RAFT_PORT)}"
        super().__init__(root, len(agents), agents=agents)
        self.network = network
        self.proxy = proxy
        self.paused: set[str] = set()

    def crash(self, name: str) -> None:
        """kill -9 the node (agent and DNS child); it stays down until ``restart``."""
        agent = self.agents[name]
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait_exit(STOP_TIMEOUT_S)
        self.paused.discard(name)

    def pause(self, name: str) -> None:
        """SIGSTOP the node: it stops dead (no ticks, no replies) until ``resume``."""
        os.killpg(self.agents[name].pid, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        os.killpg(self.agents[name].pid, signal.SIGCONT)
        self.paused.discard(name)

    def close(self) -> None:
        for name in list(self.paused):
            if self.agents[name].alive:
                self.resume(name)
        super().close()


class CpuStarvation:
    """One host starved of CPU: every process of its namespace (the agent, its DNS child and
    prober, listeners) moved into a new cgroup limited to ``quota_pct`` percent of one CPU, with
    ``hogs`` busy loops in the same cgroup that use up that quota. NB: a quota, not niceness: the
    kernel's fair scheduler runs a mostly idle process at once when it wakes, however nice and
    however many hogs it competes with, so only throttling makes the node wait (up to most of
    each 100 ms period). ``stop()`` kills the hogs and moves the node's processes back, and
    deletes the cgroup. Works with cgroup v2 (``cpu.max``) or v1's cpu controller."""

    PERIOD_US = 100_000

    def __init__(self, host: Host, *, quota_pct: int = 20, hogs: int = 2) -> None:
        self.host, self.quota_pct, self._count = host, quota_pct, hogs
        v2 = Path("/sys/fs/cgroup")
        self._v2 = (v2 / "cgroup.controllers").exists()
        self._parent = v2 if self._v2 else v2 / "cpu"
        self.cgroup = self._parent / f"{host.netns}-starved"
        self._hogs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        if self._v2 and "cpu" not in (self._parent / "cgroup.subtree_control").read_text().split():
            (self._parent / "cgroup.subtree_control").write_text("+cpu\n")
        self.cgroup.mkdir()
        quota_us = self.PERIOD_US * self.quota_pct // 100
        if self._v2:
            (self.cgroup / "cpu.max").write_text(f"{quota_us} {self.PERIOD_US}\n")
        else:
            (self.cgroup / "cpu.cfs_period_us").write_text(f"{self.PERIOD_US}\n")
            (self.cgroup / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        procs = self.cgroup / "cgroup.procs"
        for pid in run("ip", "netns", "pids", self.host.netns).stdout.split():
            _move(procs, int(pid))
        for _ in range(self._count):
            self._hogs.append(subprocess.Popen(self.host.exec_argv(["sh", "-c", "while :; do :; done"]),
                                               preexec_fn=lambda: _move(procs, os.getpid())))

    def stop(self) -> None:
        for hog in self._hogs:
            hog.kill()
            hog.wait()
        self._hogs.clear()
        if not self.cgroup.exists():
            return
        for pid in (self.cgroup / "cgroup.procs").read_text().split():
            _move(self._parent / "cgroup.procs", int(pid))
        self.cgroup.rmdir()

    @staticmethod
    def run_queue(pid: int) -> tuple[float, int]:
        """(seconds spent runnable but waiting for a CPU, times run) summed over every thread
        of ``pid`` (schedstat): the premise's evidence, as wait per run rises with starvation."""
        wait_ns = runs = 0
        for tid in _threads(pid):
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            wait_ns, runs = wait_ns + int(fields[1]), runs + int(fields[2])
        return wait_ns / 1e9, runs


def _move(procs: Path, pid: int) -> None:
    """Move process ``pid`` (all its threads) into the cgroup of ``procs`` (if it still exists)."""
    try:
        procs.write_text(f"{pid}\n")
    except ProcessLookupError:
        pass


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []
