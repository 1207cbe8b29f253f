"""The real boot test (issue 6, point 8): three `registry@` instances under systemd in a booted
Debian 12 container.

A minimal Debian root made with debootstrap (cached: tests/systemd/bootroot.py) is booted with
`systemd-nspawn --boot --register=no --keep-unit --volatile=overlay` (the cached root is never
written; everything the test does lands in a tmpfs overlay). The container shares the host's
network, so the nodes' ports are the host's: they are picked free on 127.0.0.1 at run time. On
these machines `machinectl` and `systemctl -M` do not work: commands run in the container with
`nsenter -t <its systemd PID> -a env -i PATH=...`.

The project goes in as a wheel built on the host, installed with its dependencies (wheels fetched
on the host by pip) into /opt/registry/venv inside the container: the layout of docs/deploy.md.
n1's DNS listens on 127.0.0.2:53 (a privileged port, through the registry-dns53.conf drop-in) when
that port is free on the host, else on a high port like the others.

Asserts: all three units active; a leader elected (`registry status --json` from the host); a
registration answered over DNS from the host (dnspython), and through systemd-resolved and NSS
(`getent hosts`) in the container when n1 is on port 53 (docs/deploy.md's resolver set-up); `kill -9` of a node's main process ->
systemd restarts it, with its data intact (same LMDB files, same registration, served by its own
DNS); a node that stops pinging its watchdog (SIGSTOP) is killed by the watchdog and restarted.
Every wait is bounded, and the container is always torn down.

Timings (debootstrap on a first run, boot, install, whole test) are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import registry
from tests.systemd import bootroot

ROOT = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2", "n3")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STAGE = "/mnt/registry-stage"
DNS53 = ("127.0.0.2", 53)

UNIT = ROOT / "systemd" / "registry@.service"


def unit_seconds(key: str) -> float:
    """A ``Key=Ns`` setting of the unit file, in seconds: the deadlines below come from it."""
    match = re.search(rf"^{key}=(\d+)s$", UNIT.read_text(), re.MULTILINE)
    assert match is not None, f"{key}= (in whole seconds) not found in {UNIT}"
    return float(match.group(1))


START_S = unit_seconds("TimeoutStartSec")  # systemd fails a start (to READY=1) that takes longer
RESTART_S = unit_seconds("RestartSec") + START_S  # from a crash to active again
# A stopped process misses WatchdogSec of pings: SIGABRT (pending while it is stopped), then
# SIGKILL after TimeoutAbortSec, then a restart.
WATCHDOG_RESTART_S = unit_seconds("WatchdogSec") + unit_seconds("TimeoutAbortSec") + RESTART_S

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the boot test needs root (debootstrap, systemd-nspawn, nsenter)"),
]


def log(msg: str) -> None:
    print(f"[boot-test] {msg}", flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.25) -> Any:
    """Poll check() until it returns a truthy value; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last failure
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")
        time.sleep(interval_s)


def ensure_host_tools() -> None:
    missing = [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(t) is None]
    if missing:
        log(f"installing debootstrap systemd-container (missing: {missing})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap", "systemd-container"],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=600)


def port_free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(n: int) -> list[int]:
    """n ports free for both TCP and UDP on 127.0.0.1 (the DNS ports need both)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in ports and port_free("127.0.0.1", port):
            ports.append(port)
    return ports


def build_wheelhouse(dest: Path) -> None:
    """The project's wheel (built from a clean copy of the tree) and its dependencies' wheels."""
    src = dest.parent / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("registry", "dns"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = dest.parent / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("svcregistry-*.whl")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(dest), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


class Container:
    """A booted nspawn container; run() executes a command inside it with a clean environment."""

    def __init__(self, root: Path, stage: Path, logfile: Path) -> None:
        self.root, self.stage, self.logfile = root, stage, logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def boot(self, timeout_s: float = 90) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--volatile=overlay",
             "--console=read-only", f"--bind-ro={self.stage}:{STAGE}", "-D", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=self.logfile.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid1 = wait_for("the container's systemd (PID 1 in its namespace)", self._find_pid1, 30)
        state = wait_for("systemctl is-system-running --wait", lambda: self.run(
            "systemctl", "is-system-running", "--wait", check=False, timeout=timeout_s).stdout.strip(), timeout_s)
        took = time.monotonic() - started
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            log(f"container state {state!r}; failed units: {failed.strip() or 'none'}")
        return took

    def _find_pid1(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.logfile.read_text()[-2000:]}")
        todo, seen = [self.proc.pid], set()
        while todo:
            pid = todo.pop()
            seen.add(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((l.split()[1:] for l in status.splitlines() if l.startswith("NSpid:")), [])
            if pid != self.proc.pid and len(nspid) >= 2 and nspid[-1] == "1":
                return pid
            todo += [int(c) for c in children if int(c) not in seen]
        return 0

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={CONTAINER_PATH}",
                               "TERM=dumb", "SYSTEMD_PAGER=", *cmd],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"in container: {' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def teardown(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.pid1:
            try:  # a clean poweroff first (bounded), then nspawn's own SIGTERM, then SIGKILL
                self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                if sig == signal.SIGKILL and self.pid1:
                    os.kill(self.pid1, signal.SIGKILL)  # PID 1 of the namespace: takes every process in it
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass


def host_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "registry"
    cmd = [str(exe)] if exe.exists() else [shutil.which("registry") or "registry"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def dns_a(server: tuple[str, int], name: str) -> list[str]:
    import dns.message
    import dns.query
    import dns.rdatatype

    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), server[0], port=server[1], timeout=2)
    return sorted(rr.address for rrset in reply.answer for rr in rrset if rr.rdtype == dns.rdatatype.A)


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    t: dict[str, float] = {}
    started = time.monotonic()
    yield t
    t["whole test"] = time.monotonic() - started
    log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))


def test_three_nodes_under_systemd(timings: dict[str, float]) -> None:
    t0 = time.monotonic()
    ensure_host_tools()
    root, took = bootroot.ensure_root(log=log)
    if took is not None:
        timings["debootstrap (first run)"] = took
    log(f"root {root}" + (f" (debootstrap {took:.1f} s)" if took is not None else " (cached)"))

    with tempfile.TemporaryDirectory(prefix="registry-boot-") as tmp_s:
        tmp = Path(tmp_s)
        stage = tmp / "stage"
        stage.mkdir()
        t = time.monotonic()
        build_wheelhouse(stage / "wheels")
        timings["wheels"] = time.monotonic() - t

        # Ports: free on the host, whose network the container shares.
        raft, client, dnsp = (free_ports(3) for _ in range(3))
        dns_addr = {n: ("127.0.0.1", dnsp[i]) for i, n in enumerate(NODES)}
        use53 = port_free(*DNS53)
        if use53:
            dns_addr["n1"] = DNS53
            log(f"n1's DNS on {DNS53[0]}:{DNS53[1]} through the registry-dns53.conf drop-in")
        else:
            log(f"{DNS53[0]}:{DNS53[1]} is busy on this host: n1's DNS on a high port (drop-in not exercised)")
        for i, n in enumerate(NODES):
            peers = ", ".join(f'"{m}=127.0.0.1:{raft[j]}"' for j, m in enumerate(NODES) if m != n)
            (stage / f"{n}.toml").write_text(
                f'name = "{n}"\ndata_dir = "/var/lib/registry/{n}"\nraft = "127.0.0.1:{raft[i]}"\n'
                f'client = "127.0.0.1:{client[i]}"\ndns = "{dns_addr[n][0]}:{dns_addr[n][1]}"\npeer = [{peers}]\n')
        shutil.copy(ROOT / "systemd" / "registry@.service", stage)
        shutil.copy(ROOT / "systemd" / "registry-dns53.conf", stage)
        (stage / "resolved-registry.conf").write_text(f"[Resolve]\nDNS={DNS53[0]}\nDomains=~registry\n")
        servers = [a for p in client for a in ("--server", f"127.0.0.1:{p}")]

        box = Container(root, stage, tmp / "nspawn.log")
        try:
            timings["boot"] = box.boot()
            log(f"booted in {timings['boot']:.2f} s (container PID 1 = host PID {box.pid1})")

            t = time.monotonic()
            # docs/deploy.md step 2: one venv per version, /opt/registry/venv a symlink to it.
            venv = f"/opt/registry/venv-{registry.__version__}"
            box.run("python3", "-m", "venv", venv, timeout=120)
            box.run(f"{venv}/bin/pip", "install", "--no-index", "--find-links", f"{STAGE}/wheels",
                    "--disable-pip-version-check", "svcregistry", timeout=300)
            box.run("ln", "-sfn", f"venv-{registry.__version__}", "/opt/registry/venv")
            box.run("install", "-m", "0644", f"{STAGE}/registry@.service", "/etc/systemd/system/")
            box.run("install", "-d", "/etc/registry")
            for n in NODES:
                box.run("install", "-m", "0644", f"{STAGE}/{n}.toml", "/etc/registry/")
                box.run("/opt/registry/venv/bin/registry", "config", "check", f"/etc/registry/{n}.toml")
            if use53:
                box.run("install", "-D", "-m", "0644", f"{STAGE}/registry-dns53.conf",
                        "/etc/systemd/system/registry@n1.service.d/dns53.conf")
            box.run("systemctl", "daemon-reload")
            timings["install"] = time.monotonic() - t

            units = [f"registry@{n}.service" for n in NODES]

            def show(unit: str, *props: str) -> dict[str, str]:
                out = box.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
                return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

            def journal(unit: str) -> str:
                return box.run("journalctl", "-u", unit, "--no-pager", "-o", "short-monotonic", check=False).stdout

            def all_active() -> bool:
                return all(box.run("systemctl", "is-active", u, check=False).stdout.strip() == "active" for u in units)

            # 1. All three active (Type=notify: "active" means the agent sent READY=1).
            t = time.monotonic()
            box.run("systemctl", "start", "--no-block", *units)
            try:
                wait_for("all three units active", all_active, START_S)
            except BaseException:
                for u in units:
                    log(f"{u}: {show(u, 'ActiveState', 'SubState', 'Result')}\n{journal(u)[-3000:]}")
                raise
            timings["start to all active"] = time.monotonic() - t
            for u in units:
                log(f"{u}: {show(u, 'StatusText', 'MainPID', 'User')}")

            # 2. A leader elected, seen from the host.
            def leader() -> str | None:
                proc = host_cli("status", "--json", *servers, timeout=15)
                rows = json.loads(proc.stdout or "[]")
                nodes = [r for r in rows if "role" in r]
                leaders = {r["node"] for r in rows if r.get("role") == "leader"}
                return next(iter(leaders)) if len(nodes) == 3 and len(leaders) == 1 else None

            t = time.monotonic()
            first_leader = wait_for("a leader, all three answering", leader, 30)
            timings["election"] = time.monotonic() - t
            log(f"leader {first_leader}")

            # 3. A registration answered over DNS from the host, by every node.
            reg = host_cli("register", "web", "127.0.0.1:8080", "--json", *servers)
            assert reg.returncode == 0, reg.stdout + reg.stderr
            index = json.loads(reg.stdout)["index"]
            for n in NODES:
                wait_for(f"web.service.registry from {n}'s DNS {dns_addr[n]}",
                         lambda n=n: dns_a(dns_addr[n], "web.service.registry.") == ["127.0.0.1"], 15)

            # 3b. docs/deploy.md's resolver set-up: systemd-resolved sends *.registry to the node's DNS
            # on port 53, so every program in the container resolves the name through NSS.
            if use53:
                box.run("install", "-D", "-m", "0644", f"{STAGE}/resolved-registry.conf",
                        "/etc/systemd/resolved.conf.d/registry.conf")
                box.run("systemctl", "restart", "systemd-resolved")
                got = wait_for("getent hosts web.service.registry in the container", lambda: box.run(
                    "getent", "hosts", "web.service.registry", check=False).stdout.split()[:1], 15)
                assert got == ["127.0.0.1"], got

            def node_status(i: int) -> dict[str, Any] | None:
                proc = host_cli("status", "--json", "--server", f"127.0.0.1:{client[i]}", timeout=10)
                row = json.loads(proc.stdout or "[]")[0]
                return row if "role" in row else None

            # 4. kill -9 of n2's main process: systemd restarts it, its data intact.
            victim = "registry@n2.service"
            before = show(victim, "MainPID", "NRestarts")
            files = box.run("sh", "-c", "stat -c '%n %i' /var/lib/registry/n2/* | sort").stdout
            assert files.strip(), "n2 has no data files"
            box.run("kill", "-9", before["MainPID"])
            t = time.monotonic()

            def restarted(unit: str, old: dict[str, str]) -> dict[str, str] | None:
                now = show(unit, "MainPID", "NRestarts", "ActiveState")
                ok = (now["ActiveState"] == "active" and now["MainPID"] not in ("0", old["MainPID"])
                      and int(now["NRestarts"]) > int(old["NRestarts"]))
                return now if ok else None

            after = wait_for(f"{victim} restarted after kill -9", lambda: restarted(victim, before), RESTART_S)
            timings["kill -9 to active again"] = time.monotonic() - t
            log(f"{victim}: {before} -> {after}")
            assert "status=9/KILL" in journal(victim)
            assert box.run("sh", "-c", "stat -c '%n %i' /var/lib/registry/n2/* | sort").stdout == files, \
                "n2's data files were replaced"
            wait_for("n2 serving again with the registration applied",
                     lambda: (s := node_status(1)) and s["applied"] >= index, 20)
            wait_for("web.service.registry from n2's DNS after the restart",
                     lambda: dns_a(dns_addr["n2"], "web.service.registry.") == ["127.0.0.1"], 15)

            # 5. A node that stops pinging its watchdog (SIGSTOP) is killed and restarted.
            victim = "registry@n3.service"
            before = show(victim, "MainPID", "NRestarts", "WatchdogUSec")
            assert before["WatchdogUSec"] not in ("0", "infinity"), before
            box.run("kill", "-STOP", before["MainPID"])
            t = time.monotonic()
            after = wait_for(f"{victim} restarted by its watchdog", lambda: restarted(victim, before), WATCHDOG_RESTART_S)
            timings["SIGSTOP to active again"] = time.monotonic() - t
            log(f"{victim}: {before} -> {after}")
            assert "Watchdog timeout" in journal(victim), journal(victim)[-3000:]

            # The cluster is whole again: every node answers, one leader, all active.
            wait_for("a leader after both restarts", leader, 30)
            assert all_active()
            wait_for("n3 caught up", lambda: (s := node_status(2)) and s["applied"] >= index, 20)

            # 6. A clean stop: SIGTERM, well within TimeoutStopSec, exit status 0 (not a SIGKILL).
            t = time.monotonic()
            box.run("systemctl", "stop", *units, timeout=90)
            timings["systemctl stop (all three)"] = time.monotonic() - t
            for u in units:
                state = show(u, "ActiveState", "Result", "ExecMainStatus")
                assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, \
                    f"{u}: {state}\n{journal(u)[-2000:]}"
        except BaseException:
            log("nspawn log tail:\n" + box.logfile.read_text(errors="replace")[-3000:])
            raise
        finally:
            t = time.monotonic()
            box.teardown()
            timings["teardown"] = time.monotonic() - t
            assert box.proc is None or box.proc.poll() is not None, "the container did not stop"
    timings["test (excluding debootstrap)"] = time.monotonic() - t0 - (took or 0)
