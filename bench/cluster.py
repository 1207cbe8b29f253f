"""The benchmarks' shared parts: a local cluster of real agents, /proc samples, clean-up.

`LocalCluster` starts NODES `registry agent` processes (durable: LMDB, fsync per Ready) on free
loopback ports (never the `registry up` ports, so a benchmark can run beside the integration
tests), waits for a leader, samples each node's CPU, disk writes and memory from /proc, and
always stops them (SIGTERM, then SIGKILL; PR_SET_PDEATHSIG if the benchmark itself is killed).
Every benchmark in bench/ starts its clusters through it; `stop_on_signals`, `bench_root`,
`fsync_probe` and `machine_info` give each run the same clean-up and the same context lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.client import Client, NodeStatus, RegistryError  # noqa: E402

HOST = "127.0.0.1"
# Ports of `registry up` (raft 7001-7009, client 7101-7109, DNS 8600-8608) and their
# neighbourhood: never picked, so this can run beside the integration tests.
RESERVED_PORTS = range(7000, 8700)
PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range, where outgoing connections live
LEADER_WAIT_S = 20.0
STOP_WAIT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGINT into KeyboardInterrupt, so a benchmark's cleanup always runs."""

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    # NB: SIGINT explicitly too: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)


def bench_root(prefix: str, parent: Path | None, report: Callable[[str], None]) -> tuple[Path, str]:
    """A fresh directory for a benchmark's clusters and its filesystem; warns when it is tmpfs."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fs = filesystem(root)
    if fs.startswith("tmpfs"):
        report(f"warning: {root} is on tmpfs, where fsync costs nothing: not a durable measurement; use --dir")
    return root, fs


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io (write_bytes: bytes this process caused to be written to the disk)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f)}
    except OSError:  # not readable without privileges on some systems
        return {}


def box_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values[:8]) - idle), float(sum(values[:8]))


def fsync_probe(root: Path, seconds: float = 1.0) -> dict[str, float]:
    """Durable one-entry LMDB commits in ``root`` for ``seconds``: bench/storage.py's first row,
    so every result carries what a commit cost on this disk at that moment."""
    spec = importlib.util.spec_from_file_location("bench_storage", Path(__file__).with_name("storage.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    r = module.bench_storage(root, 1, os.urandom(128), seconds)
    return {"commits_per_s": round(r["saves_per_s"]), "p50_ms": round(r["p50_ms"], 3), "p99_ms": round(r["p99_ms"], 3)}


def filesystem(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True).stdout
        fields = out.splitlines()[-1].split()
        return f"{fields[1]} on {fields[0]}"
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown filesystem"


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


try:  # NB: loaded here, so that the child between fork and exec only calls a function
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child: SIGTERM when the benchmark dies, even by SIGKILL (Linux; else nothing)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))


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
                                  cwd=self.root, env=env, start_new_session=True, preexec_fn=_die_with_parent)

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

    def cpu_s(self) -> dict[str, float]:
        return {a.name: proc_cpu_s(a.pid) for a in self.agents.values() if a.alive()}

    def disk_write_bytes(self) -> dict[str, int]:
        return {a.name: proc_io(a.pid).get("write_bytes", 0) for a in self.agents.values() if a.alive()}

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


def _no_nan(value: Any) -> Any:
    """NaN (a percentile of no writes) as null, so that the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def machine_info(data_root: Path) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform(),
            "data_filesystem": filesystem(data_root)}

def progress(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)
