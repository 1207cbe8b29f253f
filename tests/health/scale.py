"""A scale measurement of the prober (not a test: it asserts nothing, it prints figures).

    python -m tests.health.scale [--checks 10000] [--interval-s 10] [--seconds 60] [--ports 20]

Starts a listener process (asyncio, accepting and closing on ``--ports`` loopback ports), a
Prober, and gives it ``--checks`` TCP checks spread over those ports, every ``--interval-s``.
Then, every second, it prints the child's counters: probes/s, its CPU (percent of one core, from
its own process time), probes in flight, the latest probe start (lag) and failures. At the end:
the steady-state averages (after the first interval), what ``replace`` of the whole set cost the
caller (the node loop), and this process's own CPU while it only ticked the handle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from registry.catalogue.model import CheckKind, HealthStatus
from registry.health import Prober, ProberSettings, ProbeSpec

LISTENERS = """
import asyncio, sys
class Close(asyncio.Protocol):
    def connection_made(self, transport):
        transport.close()
async def main(n):
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Close, "127.0.0.1", 0, backlog=4096) for _ in range(n)]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.sleep(10**9)
asyncio.run(main(int(sys.argv[1])))
"""


def cpu_times_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=10_000)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--ports", type=int, default=20)
    args = parser.parse_args()
    interval_ms = int(args.interval_s * 1000)

    listeners = subprocess.Popen([sys.executable, "-c", LISTENERS, str(args.ports)], stdout=subprocess.PIPE, text=True)
    prober = Prober(ProberSettings(stats_interval_s=1.0))
    try:
        ports = [int(p) for p in listeners.stdout.readline().split()]  # type: ignore[union-attr]
        specs = [ProbeSpec("svc", f"i{n}", 1, CheckKind.TCP, "127.0.0.1", ports[n % len(ports)], "", interval_ms,
                           min(2000, interval_ms), 3, 2, HealthStatus.PASSING) for n in range(args.checks)]
        prober.start(timeout_s=15)
        began = time.perf_counter()
        prober.replace(specs)
        replace_ms = 1000 * (time.perf_counter() - began)
        print(f"{args.checks} TCP checks every {args.interval_s} s over {len(ports)} ports; "
              f"replace() took {replace_ms:.1f} ms in the caller")
        print("   t  probes/s  cpu%  in_flight  max_lag_ms  failed  reports")
        rows, reports = [], 0
        cpu_began, started = time.process_time(), time.monotonic()
        seen_at = None
        split: list[tuple[float, float, float]] = []  # (t, user, system) of the child
        while time.monotonic() - started < args.seconds:
            if not split and time.monotonic() - started > args.interval_s + 1:
                split.append((time.monotonic(), *cpu_times_s(prober.pid)))  # type: ignore[arg-type]
            time.sleep(0.01)  # the node loop would poll fileno(); 10 ms is a busier tick than it needs
            reports += len(prober.drain())
            stats = prober.stats()
            if stats.get("report_age_s") is None or stats["report_age_s"] > 0.5 or seen_at == stats["cpu_s"]:
                continue
            seen_at = stats["cpu_s"]
            t = time.monotonic() - started
            rows.append((t, stats))
            print(f"{t:4.0f}  {stats['probes_per_s']:8.0f}  {stats['cpu_percent']:4.1f}  {stats['in_flight']:9d}  "
                  f"{stats['max_lag_ms']:10.1f}  {stats['failed']:6d}  {reports:7d}")
        parent_cpu = time.process_time() - cpu_began
        if split:
            t0, user0, system0 = split[0]
            user1, system1 = cpu_times_s(prober.pid)  # type: ignore[arg-type]
            elapsed = time.monotonic() - t0
            print(f"child CPU by /proc over the steady state: user {100 * (user1 - user0) / elapsed:.1f}%, "
                  f"system {100 * (system1 - system0) / elapsed:.1f}% (on loopback the kernel's side of "
                  "each handshake, the listener's included, is charged to the connecting process)")
        steady = [s for t, s in rows if t > args.interval_s + 1]
        if steady:
            cpu = [s["cpu_percent"] for s in steady]
            rate = [s["probes_per_s"] for s in steady]
            print(f"steady state ({len(steady)} s): {statistics.mean(rate):.0f} probes/s, child CPU mean "
                  f"{statistics.mean(cpu):.1f}% (max {max(cpu):.1f}%) of one core, "
                  f"{1e6 * statistics.mean(cpu) / 100 / max(1.0, statistics.mean(rate)):.0f} us of CPU per probe, "
                  f"max lag {max(s['max_lag_ms'] for s in steady):.0f} ms, in flight at most "
                  f"{max(s['in_flight'] for s in steady)}")
        last = rows[-1][1] if rows else prober.stats()
        print(f"total: {last['probes']} probes, {last['failed']} failed, {last['errors']} errors, {reports} reports; "
              f"the caller's CPU while ticking the handle every 10 ms: "
              f"{100 * parent_cpu / (time.monotonic() - started):.1f}%")
    finally:
        prober.stop()
        listeners.kill()
        listeners.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
