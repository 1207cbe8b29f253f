"""Test hosts: one network namespace per node, each with its own address on a private bridge.

A ``Network`` of N hosts is a Linux bridge in the root namespace (the test process's side,
address ``.254``) and, per host, a namespace ``rgf-<pid>-<tag>-nI`` with a veth pair whose inner
end is ``eth0`` at ``10.A.B.I/24``. Nothing else is routed: traffic goes only between the hosts
and the test process (the clients and DNS queries of the tests), which reaches them through the
bridge. Every namespace holds an empty nftables table ``inet faults`` (chains ``input`` and
``output``) for the fault helpers in ``netfaults.py`` to fill and flush.

Names carry the pid and a random tag, and the /24 is chosen under a file lock among those not
in use, so parallel pytest workers never collide. ``Network.close()`` (idempotent) kills what
runs in the namespaces and deletes them and the bridge; every network is also closed at exit,
and a new one first sweeps leftovers of processes that no longer exist (a killed pytest).

Needs root, ``ip`` (iproute2) and ``nft`` (nftables); ``missing_requirements()`` says what lacks.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "rgf"
LOCK_PATH = Path("/run/lock/registry-faults.lock")
CMD_TIMEOUT_S = 30.0
# NB: 10.200.0.0/16 .. 10.249.255.0/24: far from the usual docker and libvirt ranges.
SUBNET_SECOND_OCTETS = range(200, 250)
BRIDGE_HOST = 254  # the root namespace's address on each network's bridge
_NETNS = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-n\d+$")
_open: list[Network] = []


class HostError(RuntimeError):
    """A command that sets up or changes the test network failed."""


def missing_requirements() -> list[str]:
    """Why this process cannot build test hosts ([] if it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, veth, nftables)")
    for command, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(command) is None:
            missing.append(f"the `{command}` command (apt-get install {package})")
    return missing


def run(*argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command to completion (bounded); raise HostError with its stderr if it fails."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Host:
    """One test host: a node's namespace and address."""

    name: str
    netns: str
    address: str
    veth: str  # the root-side end, on the bridge

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def nft(self, script: str) -> None:
        run("ip", "netns", "exec", self.netns, "nft", "-f", "-", stdin=script)

    def nft_list(self, what: str) -> str:
        """``nft list ...`` inside this host (e.g. ``what="list chain inet faults input"``)."""
        return run("ip", "netns", "exec", self.netns, "nft", *what.split()).stdout


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise set-up and sweeping across processes (pytest-xdist workers)."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _kill_inside(netns: str) -> None:
    """SIGKILL every process in a namespace (SIGCONT first, so a paused one dies too)."""
    out = run("ip", "netns", "pids", netns, check=False).stdout.split()
    for sig in (signal.SIGCONT, signal.SIGKILL):
        for pid in out:
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass


def sweep_leftovers() -> list[str]:
    """Delete the namespaces and bridges of test networks whose creating process is gone.
    Call with the lock held. Returns what it deleted."""
    deleted = []
    live_tags = set()
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NETNS.match(name)
        if not m:
            continue
        if _pid_alive(int(m.group(1))):
            live_tags.add(m.group(2))
            continue
        _kill_inside(name)
        run("ip", "netns", "del", name, check=False)
        deleted.append(name)
    for line in run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX) and name[len(PREFIX):] not in live_tags:
            run("ip", "link", "del", name, check=False)
            deleted.append(name)
    return deleted


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 that no address or route of the root namespace uses. Call with the lock held."""
    used = run("ip", "-4", "-o", "addr", "show").stdout + run("ip", "-4", "route", "show", "table", "all").stdout
    candidates = [(a, b) for a in SUBNET_SECOND_OCTETS for b in range(256)]
    random.shuffle(candidates)
    for a, b in candidates:
        if f"10.{a}.{b}." not in used:
            return ipaddress.IPv4Network(f"10.{a}.{b}.0/24")
    raise HostError("no free 10.x.y.0/24 subnet for a test network")


class Network:
    """N test hosts on one bridge (see the module docstring). Use as a context manager or call
    ``close()``."""

    def __init__(self, names: Sequence[str]) -> None:
        assert 1 <= len(names) <= 200
        self.tag = f"{random.getrandbits(24):06x}"
        self.bridge = f"{PREFIX}{self.tag}"
        self.hosts: dict[str, Host] = {}
        self._closed = False
        _open.append(self)
        with _locked():
            sweep_leftovers()
            self.subnet = _free_subnet()
            self.gateway = str(self.subnet[BRIDGE_HOST])
            try:
                self._build(names)
            except BaseException:
                self.close()
                raise

    def _build(self, names: Sequence[str]) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i, name in enumerate(names, 1):
            host = Host(name=name, netns=f"{PREFIX}-{os.getpid()}-{self.tag}-n{i}", address=str(self.subnet[i]),
                        veth=f"{self.bridge}h{i}")
            self.hosts[name] = host
            inner = f"{self.bridge}p{i}"
            run("ip", "netns", "add", host.netns)
            run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", inner)
            run("ip", "link", "set", inner, "netns", host.netns)
            run("ip", "link", "set", host.veth, "master", self.bridge, "up")
            ns = ("ip", "-n", host.netns)
            run(*ns, "link", "set", inner, "name", "eth0")
            run(*ns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
            run(*ns, "link", "set", "eth0", "up")
            run(*ns, "link", "set", "lo", "up")
            host.nft(NFT_BASE)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        """Kill every process in the namespaces, delete them and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            _kill_inside(host.netns)
            run("ip", "netns", "del", host.netns, check=False)
        run("ip", "link", "del", self.bridge, check=False)
        if self in _open:
            _open.remove(self)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


NFT_BASE = """
table inet faults {
    chain input { type filter hook input priority 0; policy accept; }
    chain output { type filter hook output priority 0; policy accept; }
}
"""


@atexit.register
def _close_all() -> None:
    for network in list(_open):
        network.close()
