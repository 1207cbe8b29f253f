"""Linux process plumbing for the benchmarks: /proc readers and dying with the benchmark.

Not a benchmark. Everything that reads /proc or sets PR_SET_PDEATHSIG is here, so that a
benchmark's processes (agents, etcd members, dnsperf, dnsmasq, client workers) are measured and
cleaned up the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

try:  # NB: loaded here, so that the child between fork and exec only calls a function
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def die_with_parent() -> None:
    """In a child (a preexec_fn, or a worker's first call): SIGTERM when the thread that started
    it dies, even by SIGKILL (Linux; elsewhere nothing)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    """A KiB figure of /proc/PID/status (VmRSS, VmHWM...); 0 if absent."""
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


def machine_jiffies() -> tuple[int, ...]:
    """The whole machine's CPU time so far, from /proc/stat's first line: user, nice, system,
    idle, iowait, irq, softirq, steal (jiffies)."""
    with open("/proc/stat") as f:
        return tuple(int(x) for x in f.readline().split()[1:9])


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def children_running(parent: int, marker: bytes) -> list[int]:
    """The processes whose parent is ``parent`` and whose command line contains ``marker``, by
    a scan of /proc (/proc/PID/task/*/children is not always compiled in)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if parent_pid(int(entry.name)) != parent:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(entry.name))
    return found
