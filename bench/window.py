"""The measuring window: what some processes and the machine did between two instants, and
the latency percentiles of what completed within it.

Not a benchmark. Every benchmark that reports CPU, disk writes or latency percentiles over a run
uses these: `Window` samples /proc at ``open()`` and ``close()`` (the load generator in
bench/load.py calls them at the exact edges of its window), `Latencies` turns latencies into the
nearest-rank percentiles every table prints.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.proc import machine_jiffies, proc_cpu_s, proc_io


class Latencies:
    """Latencies in seconds; percentiles by the nearest-rank method, reported in ms."""

    def __init__(self, values: Sequence[float] = ()) -> None:
        self.values = sorted(values)

    def pct(self, p: float, empty: float | None = math.nan) -> float | None:
        """The ``p``-th percentile (0-100) in ms; ``empty`` when there is no latency at all."""
        if not self.values:
            return empty
        rank = max(1, math.ceil(p / 100 * len(self.values)))
        return 1000 * self.values[rank - 1]

    def summary(self) -> dict[str, float]:
        v = self.values
        return {"p50_ms": self.pct(50), "p99_ms": self.pct(99), "p999_ms": self.pct(99.9),  # type: ignore[dict-item]
                "max_ms": 1000 * v[-1] if v else math.nan,
                "mean_ms": 1000 * sum(v) / len(v) if v else math.nan}


@dataclass(frozen=True)
class Sample:
    """One instant: the CPU seconds and disk write bytes of each named process still readable,
    and the machine's jiffies."""

    t: float
    cpu_s: dict[str, float]
    written: dict[str, int]
    jiffies: tuple[int, ...]

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> Sample:
        cpu: dict[str, float] = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):  # gone: absent from this sample
                cpu[name] = proc_cpu_s(pid)
        written = {name: proc_io(pid).get("write_bytes", 0) for name, pid in pids.items() if name in cpu}
        return cls(time.monotonic(), cpu, written, machine_jiffies())


class Window:
    """CPU seconds and disk writes of some named processes, and the machine's CPU, between
    ``open()`` and ``close()``. A process not readable at either end has no CPU figure."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.start = self.end = Sample(0.0, {}, {}, (0,) * 8)

    def open(self) -> None:
        self.start = Sample.take(self.pids)

    def close(self) -> None:
        self.end = Sample.take(self.pids)

    @property
    def elapsed(self) -> float:
        return self.end.t - self.start.t

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds of each process readable at both ends."""
        return {n: self.end.cpu_s[n] - self.start.cpu_s[n] for n in self.end.cpu_s if n in self.start.cpu_s}

    def pct(self, cpu_s: float) -> float:
        """CPU seconds over the window in % of one core."""
        return round(100 * cpu_s / self.elapsed, 1)

    def processes(self) -> dict[str, dict[str, float | None]]:
        """Per process: ``cpu_pct`` (% of one core, None if it was not readable) and
        ``disk_written_mb`` (what it caused to be written to the disk)."""
        cpu = self.cpu_s()
        return {n: {"cpu_pct": self.pct(cpu[n]) if n in cpu else None,
                    "disk_written_mb": round((self.end.written.get(n, 0) - self.start.written.get(n, 0)) / 1e6, 2)}
                for n in self.pids}

    def total_cpu_pct(self) -> float:
        return self.pct(sum(self.cpu_s().values()))

    def _jiffies(self) -> list[int]:
        return [b - a for a, b in zip(self.start.jiffies, self.end.jiffies, strict=True)]

    def machine_cpu_pct(self) -> float | None:
        """The whole machine's busy time (all but idle and iowait) in % of one core."""
        j = self._jiffies()
        total = sum(j)
        return round(100 * (os.cpu_count() or 1) * (total - j[3] - j[4]) / total, 1) if total else None

    def kernel_pct(self) -> tuple[float, float]:
        """(irq + softirq, steal) in % of one core: the kernel's interrupt work (loopback
        networking runs in softirq, charged to no process) and the time the hypervisor took."""
        j = self._jiffies()
        total, cores = sum(j), os.cpu_count() or 1
        if not total:
            return 0.0, 0.0
        return round(100 * cores * (j[5] + j[6]) / total, 1), round(100 * cores * j[7] / total, 1)


def other_pct(machine: float | None, *ours: float | None) -> float | None:
    """The machine's CPU not used by ``ours`` (other people's processes, the kernel), in % of
    one core; None when the machine's figure is unknown."""
    if machine is None:
        return None
    return round(max(0.0, machine - sum(x for x in ours if x is not None)), 1)
