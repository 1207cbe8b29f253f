"""`registry up`: the README's local cluster on its fixed ports, driven through the real CLI.

NB: the only test that uses the fixed ports (raft 7001-7003, client 7101-7103, DNS 8600-8602);
it skips, saying which ports, when another program holds any of them, except on CI (CI set),
where nothing else should hold them and a skip would hide that the test never ran: it fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from registry.client import DEFAULT_SERVERS, SERVERS_ENV, Client, NodeStatus

from .cluster import ROOT, poll, registry_cmd, run_cli

pytestmark = pytest.mark.integration

NODES = 3
TCP_PORTS = [*range(7001, 7001 + NODES), *range(7101, 7101 + NODES), *range(8600, 8600 + NODES)]
UDP_PORTS = list(range(8600, 8600 + NODES))
START_BOUND_S = 60.0
STOP_BOUND_S = 30.0  # up gives each agent 10 s after SIGTERM before SIGKILL


def busy_ports() -> list[str]:
    busy = []
    for kind, name, ports in ((socket.SOCK_STREAM, "tcp", TCP_PORTS), (socket.SOCK_DGRAM, "udp", UDP_PORTS)):
        for port in ports:
            with socket.socket(socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(f"{name}/{port}")
    return busy


def ports_busy(reason: str) -> NoReturn:
    """Skip the test, or fail it on CI (see the module docstring)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; on CI this test must run, not skip")
    pytest.skip(reason)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Up:
    """One `registry up` process, its output in files, stopped by SIGINT as Ctrl-C would."""

    def __init__(self, data_dir: Path, out_dir: Path, run: int) -> None:
        self.data_dir = data_dir
        self.stdout_path, self.stderr_path = out_dir / f"up{run}.out", out_dir / f"up{run}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(registry_cmd("up", "--nodes", str(NODES), "--data-dir", str(data_dir)),
                                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, env=cli_env())
        self.agents: list[int] = []

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def output(self) -> str:
        logs = "\n".join(f"==== {p.name} ====\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                         for p in sorted(self.data_dir.glob("*.log")))
        return (f"==== up stdout ====\n{self.stdout()}\n==== up stderr ====\n"
                f"{self.stderr_path.read_text(errors='replace')}\n{logs}")

    def wait_started(self) -> str:
        """Wait until up has printed its banner and every agent is a child; returns stdout."""
        def started() -> str | None:
            if self.proc.poll() is not None:
                return "exited"
            text = self.stdout()
            self.agents = [p for p in children_of(self.proc.pid) if " agent " in cmdline(p)]
            return text if "Ctrl-C" in text and len(self.agents) == NODES else None

        got = poll("registry up prints its endpoints and starts the agents", started, START_BOUND_S,
                   interval_s=0.1, describe=self.output)
        if got == "exited":
            err = self.stderr_path.read_text(errors="replace")
            if self.proc.returncode == 1 and "ports in use" in err:  # lost a race with another program
                ports_busy(f"registry up's fixed ports became busy: {err.strip()}")
            raise AssertionError(f"registry up exited {self.proc.returncode}:\n{self.output()}")
        return got

    def interrupt(self) -> int:
        """SIGINT (Ctrl-C); returns up's exit status once it has exited, within the bound."""
        self.agents = sorted(set(self.agents) | {p for p in children_of(self.proc.pid) if " agent " in cmdline(p)})
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"registry up still running {STOP_BOUND_S:g} s after SIGINT:\n"
                                 f"{self.output()}") from None

    def kill_everything(self) -> None:
        """Teardown after a failure: nothing this test started may outlive it."""
        self.agents = sorted(set(self.agents) | set(children_of(self.proc.pid)))
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_BOUND_S)
        for pid in self.agents:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def cli_env() -> dict[str, str]:
    """The environment of a user who set nothing: the CLI's default servers are up's."""
    return {k: v for k, v in os.environ.items() if k != SERVERS_ENV}


def wait_for_leader() -> NodeStatus:
    seen: list[object] = []

    def one_leader() -> NodeStatus | None:
        with Client(DEFAULT_SERVERS, timeout_s=1.0) as client:
            got = client.status_all()
        seen[:] = got
        leaders = [s for s in got if isinstance(s, NodeStatus) and s.role == "leader"]
        if len(leaders) == 1 and all(isinstance(s, NodeStatus) and s.leader == leaders[0].node for s in got):
            return leaders[0]
        return None

    return poll("the `registry up` cluster agrees on a leader", one_leader, START_BOUND_S, describe=lambda: repr(seen))


def test_registry_up_serves_the_cli_stops_on_sigint_and_keeps_its_data(tmp_path: Path) -> None:
    """`registry up --nodes 3 --data-dir D` (the README's quick start) prints each node's raft,
    client and DNS endpoints; `registry register` and `registry services`, with no --server,
    work against it; another `registry up` meanwhile exits 1 naming the busy ports; an agent
    killed with -9 is restarted by up, which says so; SIGINT (Ctrl-C) stops it and leaves no
    agent running; and a second `registry up` on D still has the registration."""
    busy = busy_ports()
    if busy:
        ports_busy(f"registry up needs the fixed ports 7001-7003, 7101-7103 and 8600-8602; busy now: "
                    f"{', '.join(busy)} (another cluster or benchmark is running)")
    data_dir = tmp_path / "up"
    up = Up(data_dir, tmp_path, 1)
    try:
        banner = up.wait_started()
        for i in range(1, NODES + 1):
            line = next((ln for ln in banner.splitlines() if ln.startswith(f"n{i} ")), "")
            assert f"127.0.0.1:{7000 + i}" in line and f"127.0.0.1:{7100 + i}" in line \
                and f"127.0.0.1:{8599 + i}" in line, f"endpoints of n{i} not printed:\n{banner}"
        assert "registry register" in banner
        wait_for_leader()

        reg = run_cli("register", "web", "10.0.0.5:8080", "--tag", "primary", "--meta", "zone=a", env=cli_env())
        assert reg.returncode == 0, f"registry register exited {reg.returncode}: {reg.stdout}{reg.stderr}"
        assert "committed at index" in reg.stdout, reg.stdout
        listed = run_cli("services", "web", "--json", env=cli_env())
        assert listed.returncode == 0, f"registry services exited {listed.returncode}: {listed.stderr}"
        web = json.loads(listed.stdout)["services"]["web"]
        assert [(i["address"], i["port"], i["tags"], i["meta"]) for i in web] == \
            [("10.0.0.5", 8080, ["primary"], {"zone": "a"})]
        table = run_cli("services", env=cli_env())
        assert table.returncode == 0 and "10.0.0.5" in table.stdout and "8080" in table.stdout, table

        other = run_cli("up", "--data-dir", str(tmp_path / "other"), timeout_s=60, env=cli_env())
        assert other.returncode == 1 and "ports in use" in other.stderr and "127.0.0.1:7101" in other.stderr, \
            f"a second `registry up` on busy ports exited {other.returncode}: {other.stderr}"

        victim = up.agents[0]
        victim_name = cmdline(victim).split("--name ")[1].split()[0]
        os.kill(victim, signal.SIGKILL)  # an agent dies unexpectedly: up restarts it, and says so

        def restarted() -> list[int] | None:
            now = [p for p in children_of(up.proc.pid) if " agent " in cmdline(p)]
            said = f"restarted {victim_name}" in up.stderr_path.read_text(errors="replace")
            return now if said and len(now) == NODES and victim not in now else None

        up.agents = poll(f"registry up restarts {victim_name}", restarted, START_BOUND_S, interval_s=0.1,
                         describe=up.output)
        wait_for_leader()
        listed = run_cli("services", "web", "--server", f"127.0.0.1:{7100 + int(victim_name[1:])}", env=cli_env())
        assert listed.returncode == 0 and "10.0.0.5" in listed.stdout, listed

        agents = list(up.agents)
        status = up.interrupt()
        assert status in (0, 130), f"registry up exited {status} after SIGINT:\n{up.output()}"
        assert agents and not [p for p in agents if running(p)], \
            f"agents still running after registry up stopped: {[(p, cmdline(p)) for p in agents if running(p)]}"
    except BaseException:
        print(up.output())
        up.kill_everything()
        raise

    up2 = Up(data_dir, tmp_path, 2)
    try:
        up2.wait_started()
        wait_for_leader()
        listed = run_cli("services", "web", "--json", env=cli_env())
        assert listed.returncode == 0, f"registry services exited {listed.returncode}: {listed.stderr}"
        web = json.loads(listed.stdout)["services"]["web"]
        assert [(i["address"], i["port"]) for i in web] == [("10.0.0.5", 8080)], "data lost across `registry up` runs"
        agents = list(up2.agents)
        assert up2.interrupt() in (0, 130)
        assert not [p for p in agents if running(p)]
    except BaseException:
        print(up2.output())
        up2.kill_everything()
        raise
