"""DNS under write load (not a test): one node's DNS qps and p50/p99, alone and while the cluster
takes writes, and the writes/s the cluster keeps meanwhile (issue 4, point 8).

    .venv/bin/python bench/dns_cluster.py [--names 100] [--instances 1,10] [--seconds 5]
                                          [--clients 64] [--node leader|follower|nN]
                                          [--tool auto|dnsperf|builtin] [--window 200]
                                          [--rounds 1] [--json] [--keep]
    .venv/bin/python bench/dns_cluster.py --show result.json

Starts a fresh durable local cluster of real `registry agent` processes (bench/writes.py's
`LocalCluster`: free loopback ports away from the `registry up` ones, a temporary data directory),
registers --names services with each --instances count (``q1-s0`` ... with 1 instance each,
``q10-s0`` ... with 10), checks that the chosen node's DNS answers every one of them with the
right number of records, then, for each count, runs these phases of --seconds each, one right
after the other, so that each pair is measured side by side on the same (noisy) machine:

- ``dns``:          the node's DNS alone: A queries round-robin over the count's names, a
                    closed loop with --window queries outstanding (bench/dns_load.py's
                    generators: dnsperf when installed, else the builtin one);
- ``writes``:       the writers alone: --clients closed-loop clients registering new instances
                    through every node (bench/writes.py's `run_load`, the same workload);
- ``dns+writes``:   both at once, over the same window;
- ``dns/2+writes``: (dnsperf only) the DNS load capped at half the rate ``dns`` just reached
                    (the issue's "under 1% loss at half that rate"), with the writers.

`dns+writes` against `dns` shows Raft hurting DNS; its writes/s against `writes` shows DNS
hurting Raft. With --rounds R the sequence is repeated, every second round in reverse order
(so neither side always runs on the later, bigger catalogue). Also sampled over every window:
the CPU of the node's DNS child, of its agent, of the other nodes, the writer clients, the load
generator and the whole machine. Prints a table (or one JSON object with --json), progress on
stderr, and always stops the cluster, also on Ctrl-C. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnslib import QTYPE, RCODE, DNSRecord  # noqa: E402

from bench import dns_load  # noqa: E402
from bench.cluster import (  # noqa: E402
    LocalCluster,
    _no_nan,
    bench_root,
    fsync_probe,
    machine_info,
    proc_cpu_s,
    stop_on_signals,
)
from bench.writes import (  # noqa: E402
    CLIENT_TIMEOUT_S,
    Probe,
    _num,
    _output,
    default_procs,
    rotate,
    run_load,
)
from registry.client import Client, RegistryError, Unavailable  # noqa: E402

DOMAIN = "registry."  # the agent's default --domain
READY_WAIT_S = 20.0  # for the registered names to be served by the node's DNS


def progress(message: str) -> None:
    print(f"[dns_cluster] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The node's DNS child process


def dns_child_pid(agent_pid: int, timeout_s: float = 10.0) -> int:
    """The PID of the agent's DNS child (``python -m registry_dns.child``), from /proc: the
    process whose parent is the agent (/proc/PID/task/*/children is not always compiled in)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != agent_pid:
                    continue
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if b"registry_dns.child" in f.read():
                        return int(entry.name)
            except (OSError, ValueError, IndexError):
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"no DNS child process of the agent {agent_pid} found")
        time.sleep(0.1)


def kernel_jiffies() -> tuple[int, int, int]:
    """(irq + softirq, steal, all) jiffies of the whole machine, from /proc/stat: the kernel's
    interrupt work (loopback networking runs in softirq, charged to no process) and the time the
    hypervisor took."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[5] + v[6], v[7], sum(v)


class CpuWindow:
    """CPU seconds of some processes between ``open`` and ``close`` (a process that exits in
    between counts as 0)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = self.t1 = 0.0
        self.cpu0: dict[str, float] = {}
        self.cpu1: dict[str, float] = {}
        self.kernel0 = self.kernel1 = (0, 0, 0)

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = proc_cpu_s(pid)
        return out

    def open(self) -> None:
        self.t0, self.cpu0, self.kernel0 = time.monotonic(), self._sample(), kernel_jiffies()

    def close(self) -> None:
        self.t1, self.cpu1, self.kernel1 = time.monotonic(), self._sample(), kernel_jiffies()

    def kernel_pct(self) -> tuple[float, float]:
        """(irq + softirq, steal) in % of one core over the window."""
        irq, steal, total = (b - a for a, b in zip(self.kernel0, self.kernel1, strict=True))
        cores = os.cpu_count() or 1
        return (round(100 * cores * irq / total, 1), round(100 * cores * steal / total, 1)) if total else (0.0, 0.0)

    def seconds(self) -> dict[str, float]:
        return {n: self.cpu1[n] - self.cpu0[n] for n in self.cpu1 if n in self.cpu0}


# ---------------------------------------------------------------------------------------------
# The registered names


def service_name(count: int, n: int) -> str:
    return f"q{count}-s{n}"


def qname(count: int, n: int) -> str:
    return f"{service_name(count, n)}.service.{DOMAIN}"


def register_services(servers: list[str], names: int, counts: Sequence[int], threads: int = 16) -> int:
    """Registers ``names`` services of each count of instances (``count`` distinct addresses,
    port 8080), in ``threads`` client threads; returns the number of writes."""
    jobs = [(service_name(c, n), f"172.{16 + i}.{n >> 8 & 0xFF}.{n & 0xFF}")
            for c in counts for n in range(names) for i in range(c)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with Client(rotate(servers, k), timeout_s=CLIENT_TIMEOUT_S) as client:
                for service, address in jobs[k::threads]:
                    client.register(service, address, 8080)
        except BaseException as exc:  # noqa: BLE001 (reported by the caller)
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"registering the DNS benchmark's services failed: {errors[0]!r}")
    return len(jobs)


def wait_served(dns: str, names: int, counts: Sequence[int], timeout_s: float = READY_WAIT_S) -> None:
    """Until the DNS server at ``dns`` answers every registered name with ``count`` A records."""
    host, _, port = dns.rpartition(":")
    pending = [(c, n) for c in counts for n in range(names)]
    deadline = time.monotonic() + timeout_s
    last = ""
    while pending:
        c, n = pending[-1]
        try:
            reply = DNSRecord.parse(DNSRecord.question(qname(c, n), "A").send(host, int(port), timeout=1.0))
            got = [rr for rr in reply.rr if rr.rtype == QTYPE.A]
            if reply.header.rcode == RCODE.NOERROR and len(got) == c:
                pending.pop()
                continue
            last = f"{qname(c, n)}: {RCODE.get(reply.header.rcode)} with {len(got)} A record(s), expected {c}"
        except OSError as exc:  # socket.timeout included
            last = f"{qname(c, n)}: {exc!r}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"the DNS server {dns} does not serve the registered names within {timeout_s:g} s: {last}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# One phase


def dns_load_fn(tool: str, dns: str, qnames: list[str], seconds: float, window: int,
                max_qps: int | None) -> Callable[[], dict[str, Any]]:
    """A function that runs the DNS load and returns dns_load's result plus ``loadgen_cpu_s``."""
    host, _, port_text = dns.rpartition(":")
    port = int(port_text)

    def run() -> dict[str, Any]:
        if tool == "dnsperf":
            r = dns_load.dnsperf_load(port, qnames, seconds, window, max_qps, host=host)
            r["loadgen_cpu_s"] = r.pop("cpu_s")
            return r
        assert max_qps is None, "the builtin generator has no rate limit"
        cpu0 = time.thread_time()
        r = dns_load.builtin_load(port, qnames, seconds, window)
        r["loadgen_cpu_s"] = round(time.thread_time() - cpu0, 2)
        return r

    return run


def run_phase(cluster: LocalCluster, phase: str, *, node: str, dns_pids: dict[str, int], dns: Callable[[], dict[str, Any]] | None,
              writers: int, procs: int, run: int, seconds: float) -> dict[str, Any]:
    """One window: the DNS load, the writers, or both at once; the counters over the window."""
    probe = Probe(cluster)
    probe.before()
    children = CpuWindow(dns_pids)
    out: dict[str, Any] = {"dns": None, "writes": None}
    failure: list[BaseException] = []

    def run_dns() -> None:
        try:
            out["dns"] = dns()  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread)
            failure.append(exc)

    def window_open() -> None:
        probe.window_open()
        children.open()

    def window_close() -> None:
        probe.window_close()
        children.close()

    if writers:
        thread = threading.Thread(target=run_dns, daemon=True, name="dns-load") if dns else None

        def on_start() -> None:
            window_open()
            if thread is not None:
                thread.start()

        w = run_load(cluster.servers, run, writers, seconds, procs, on_start=on_start, on_end=window_close)
        if thread is not None:
            thread.join()
        out["writes"] = w
    else:
        window_open()
        run_dns()
        window_close()
    if failure:
        raise failure[0]
    after = probe.after(out["writes"]["writes"] if out["writes"] else 0)
    elapsed = probe.t1 - probe.t0
    child_cpu = children.seconds()
    agents = after["nodes"]
    pct = lambda s: round(100 * s / elapsed, 1)  # noqa: E731
    cpu = {
        "dns_child": pct(child_cpu.get(node, 0.0)),
        "agent": agents[node]["cpu_pct"],
        "other_agents": round(sum(r["cpu_pct"] or 0 for n, r in agents.items() if n != node), 1),
        "other_dns_children": pct(sum(s for n, s in child_cpu.items() if n != node)),
        "clients": out["writes"]["client_cpu_pct"]["total"] if out["writes"] else 0.0,
        "loadgen": pct(out["dns"]["loadgen_cpu_s"]) if out["dns"] else 0.0,
        "machine": after["machine_cpu_pct"],
    }
    cpu["irq"], cpu["steal"] = children.kernel_pct()
    ours = sum(v for k, v in cpu.items() if k != "machine" and v is not None)
    cpu["other"] = round(max(0.0, cpu["machine"] - ours), 1) if cpu["machine"] is not None else None
    row: dict[str, Any] = {"phase": phase, "window_s": round(elapsed, 2), "cpu_pct": cpu,
                           "node_role": agents[node].get("role"), "leader": after["leader"],
                           "elections": after["elections"], "nodes": agents}
    if out["dns"] is not None:
        d = out["dns"]
        child_s = child_cpu.get(node, 0.0)
        d["qps_per_dns_core"] = round(d["answered"] / child_s) if child_s > 0 else None
        row["dns"] = d
    if out["writes"] is not None:
        w = out["writes"]
        row["writes"] = {k: w[k] for k in ("clients", "procs", "writes", "writes_per_s", "p50_ms", "p99_ms",
                                           "p999_ms", "max_ms", "errors", "late")}
        row["writes"]["leader_disk_kb_per_write"] = after["leader_disk_kb_per_write"]
    return row


# ---------------------------------------------------------------------------------------------
# The comparisons


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios between the phases of one count and round: each pair ran one after the other."""
    by = {r["phase"]: r for r in rows}
    out: dict[str, Any] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    alone, both, writes, half = by.get("dns"), by.get("dns+writes"), by.get("writes"), by.get("dns/2+writes")
    if alone and both:
        out["dns_qps_ratio"] = ratio(both["dns"]["qps"], alone["dns"]["qps"])
        out["dns_p50_ratio"] = ratio(both["dns"]["p50_ms"], alone["dns"]["p50_ms"])
        out["dns_p99_ratio"] = ratio(both["dns"]["p99_ms"], alone["dns"]["p99_ms"])
        out["qps_per_dns_core_ratio"] = ratio(both["dns"].get("qps_per_dns_core"), alone["dns"].get("qps_per_dns_core"))
    if writes and both:
        out["writes_ratio"] = ratio(both["writes"]["writes_per_s"], writes["writes"]["writes_per_s"])
        out["writes_p99_ratio"] = ratio(both["writes"]["p99_ms"], writes["writes"]["p99_ms"])
    if half:
        out["half_offered_qps"] = half["dns"]["max_qps"]
        out["half_loss_pct"] = half["dns"]["loss_pct"]
        out["half_achieved_ratio"] = ratio(half["dns"]["qps"], half["dns"]["max_qps"])
        if alone:
            out["half_p99_ratio"] = ratio(half["dns"]["p99_ms"], alone["dns"]["p99_ms"])
        if writes:
            out["half_writes_ratio"] = ratio(half["writes"]["writes_per_s"], writes["writes"]["writes_per_s"])
    return out


def median_summary(comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    keys = {k for c in comparisons for k in c}
    return {k: round(statistics.median(v), 3) for k in sorted(keys)
            if (v := [c[k] for c in comparisons if c.get(k) is not None])}


# ---------------------------------------------------------------------------------------------
# Report


PHASE_LABELS = {"dns": "dns alone", "writes": "writes alone", "dns+writes": "dns+writes", "dns/2+writes": "dns/2+writes"}


def _c(value: Any, spec: str = ".0f") -> str:
    if value is None:
        return "-"
    return _num(float(value), spec)


def print_table(r: dict[str, Any]) -> None:
    m, cfg, cl = r["machine"], r["config"], r["cluster"]
    print(f"registry DNS benchmark: {cfg['nodes']} durable nodes on loopback, {m['cpus']} CPUs (shared: other "
          f"people's processes run too), load average {m['loadavg_before'][0]:g} before and "
          f"{m.get('loadavg_after', ['?'])[0]} after, data on {m['data_filesystem']}")
    if "disk_before" in r:
        b, a = r["disk_before"], r.get("disk_after") or {}
        print(f"disk: a durable LMDB commit (bench/storage.py) took p50 {b['p50_ms']:.2f} ms / p99 {b['p99_ms']:.2f} ms "
              f"before the run and p50 {_c(a.get('p50_ms'), '.2f')} / p99 {_c(a.get('p99_ms'), '.2f')} ms after")
    print(f"DNS of {cl['dns_node']} ({cl['dns_node_role_at_start']}, {cl['nodes'][cl['dns_node']]['dns']}) loaded by "
          f"{r['tool_version']} with {cfg['window']} queries outstanding, A queries round-robin over "
          f"{cfg['names']} names; {cfg['clients']} writer clients in {cfg['procs']} process(es); "
          f"{cfg['seconds']:g} s per phase; leader {cl['leader']} elected {cl['leader_after_s']:.2f} s after start")
    print(f"registered first: {cfg['names']} services with each of {', '.join(map(str, cfg['instances']))} "
          f"instance(s) ({r['registered']} writes); every write of a writes phase then adds one instance to one "
          f"of 16 other services ({r.get('instances', '?')} instances at the end)\n")

    head = f"{'inst':>4} {'rnd':>3}  {'phase':<13}"
    print(head + f"{'DNS q/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'loss %':>8}{'errs':>6}"
          f"{'writes/s':>10}{'w p50':>8}{'w p99':>8}{'w errs':>7}")
    for row in r["phases"]:
        d, w = row.get("dns"), row.get("writes")
        label = PHASE_LABELS[row["phase"]]
        if d and d.get("max_qps"):
            label += f" @{d['max_qps']}"
        cells = (f"{_c(d['qps']):>9}{_c(d['p50_ms'], '.2f'):>8}{_c(d['p99_ms'], '.2f'):>8}{_c(d['loss_pct'], '.2f'):>8}"
                 f"{d['error_rcodes']:>6}") if d else f"{'-':>9}{'-':>8}{'-':>8}{'-':>8}{'-':>6}"
        cells += (f"{_c(w['writes_per_s']):>10}{_c(w['p50_ms'], '.1f'):>8}{_c(w['p99_ms'], '.1f'):>8}"
                  f"{sum(w['errors'].values()):>7}") if w else f"{'-':>10}{'-':>8}{'-':>8}{'-':>7}"
        print(f"{row['instances']:>4} {row['round']:>3}  {label:<13}" + cells)

    print(f"\nCPU in the window, % of one core ({m['cpus']} cores = {100 * m['cpus']}%): the node's DNS child and "
          f"agent, the other nodes' agents and DNS children, the writer clients, the DNS load generator, the "
          f"kernel's interrupts (irq: loopback networking), steal (the hypervisor), other (other people's "
          f"processes), the whole machine")
    print(head + f"{'DNS':>6}{'agent':>7}{'others':>8}{'o.DNS':>7}{'writers':>8}{'loadgen':>8}{'irq':>6}{'steal':>6}"
          f"{'other':>7}{'machine':>8}{'q/s per DNS core':>18}")
    for row in r["phases"]:
        c, d = row["cpu_pct"], row.get("dns") or {}
        print(f"{row['instances']:>4} {row['round']:>3}  {PHASE_LABELS[row['phase']]:<13}"
              f"{_c(c['dns_child']):>6}{_c(c['agent']):>7}{_c(c['other_agents']):>8}{_c(c['other_dns_children']):>7}"
              f"{_c(c['clients']):>8}{_c(c['loadgen']):>8}{_c(c.get('irq')):>6}{_c(c.get('steal')):>6}"
              f"{_c(c['other']):>7}{_c(c['machine']):>8}"
              f"{_c(d.get('qps_per_dns_core')):>18}")

    print("\nside by side (each ratio compares two phases run one right after the other in this run; on a shared, "
          "noisy machine the ratios mean more than the absolute numbers)")
    for s in r["summary"]:
        rnd = "median of the rounds" if s["round"] == "median" else f"round {s['round']}"
        x = s["ratios"]
        parts = []
        if "dns_qps_ratio" in x:
            parts.append(f"DNS under writes: {_c(x['dns_qps_ratio'], '.2f')}x the q/s, p50 x{_c(x.get('dns_p50_ratio'), '.2f')}, "
                         f"p99 x{_c(x.get('dns_p99_ratio'), '.2f')}, q/s per DNS core x{_c(x.get('qps_per_dns_core_ratio'), '.2f')}")
        if "writes_ratio" in x:
            parts.append(f"writes under full DNS load: {_c(x['writes_ratio'], '.2f')}x the writes/s "
                         f"(p99 x{_c(x.get('writes_p99_ratio'), '.2f')})")
        if "half_loss_pct" in x:
            parts.append(f"DNS capped at half its idle rate ({_c(x.get('half_offered_qps'))} q/s offered) with writes: "
                         f"{_c(x.get('half_achieved_ratio'), '.3f')}x achieved, loss {_c(x['half_loss_pct'], '.2f')}%, "
                         f"p99 x{_c(x.get('half_p99_ratio'), '.2f')} of idle, writes {_c(x.get('half_writes_ratio'), '.2f')}x")
        print(f"  {s['instances']} instance(s), {rnd}:")
        for p in parts:
            print(f"    {p}")

    notes = []
    saturated, other = [], []
    for row in r["phases"]:
        where = f"{row['instances']} inst, round {row['round']}, {PHASE_LABELS[row['phase']]}"
        c, d, w = row["cpu_pct"], row.get("dns"), row.get("writes")
        if row["elections"]:
            notes.append(f"{where}: the term moved by {row['elections']} (elections)")
        if row["node_role"] != r["cluster"]["dns_node_role_at_start"]:
            notes.append(f"{where}: {r['cluster']['dns_node']} was {row['node_role']}")
        if w and w["errors"]:
            notes.append(f"{where}: write errors {w['errors']}")
        if d and d["error_rcodes"]:
            notes.append(f"{where}: {d['error_rcodes']} DNS answers with an error rcode {d.get('rcodes', '')}")
        if d and c["loadgen"] > 85:
            notes.append(f"{where}: the load generator used {c['loadgen']:.0f}% of a core: it may be the limit")
        if c["machine"] is not None and c["machine"] > 95 * m["cpus"]:
            saturated.append(row)
        if c["other"] is not None:
            other.append(c["other"])
    if saturated:
        notes.append(f"the machine was saturated (over {95 * m['cpus']}% CPU) in {len(saturated)} of "
                     f"{len(r['phases'])} phases: those measure the box as much as the design")
    if other and max(other) > 25:
        notes.append(f"'other' (processes not of this benchmark: other people's) used "
                     f"{min(other):.0f}-{max(other):.0f}% of a core: compare the ratios, rerun with --rounds 3")
    for n in notes:
        print("note: " + n)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--names", type=int, default=100, help="services registered per instance count (default 100)")
    parser.add_argument("--instances", default="1,10", help="instances per service, comma-separated (default 1,10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase (default 5)")
    parser.add_argument("--clients", type=int, default=64, help="writer clients (default 64: full speed)")
    parser.add_argument("--procs", default="auto", help="worker processes for the writers: a number or auto")
    parser.add_argument("--node", default="leader", help="whose DNS is loaded: leader, follower or a node name (n1...)")
    parser.add_argument("--tool", choices=["auto", "dnsperf", "builtin"], default="auto",
                        help="DNS load generator (auto: dnsperf if installed, else builtin)")
    parser.add_argument("--window", type=int, default=200, help="DNS queries outstanding (default 200)")
    parser.add_argument("--no-half", action="store_true", help="skip the dns/2+writes phase (dnsperf only)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the phases R times, every second round reversed")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="parent of the temporary cluster directory (default: the system temp dir)")
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every agent (repeat)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and node logs")
    parser.add_argument("--show", type=Path, metavar="FILE", help="print the table of a saved --json result and exit")
    args = parser.parse_args(argv)
    try:
        args.counts = [int(c) for c in args.instances.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--instances: expected numbers like 1,10, got {args.instances!r}")
    if not args.counts or any(not 1 <= c <= 200 for c in args.counts) or len(set(args.counts)) != len(args.counts):
        parser.error("--instances: distinct counts of 1-200")
    if not 1 <= args.nodes <= 9 or not 1 <= args.names <= 65536 or not 1 <= args.clients <= 1024:
        parser.error("--nodes must be 1-9, --names 1-65536 and --clients 1-1024")
    if args.rounds < 1 or args.seconds <= 0 or args.window < 1:
        parser.error("--rounds, --seconds and --window must be positive")
    if args.procs != "auto" and not (args.procs.isdigit() and int(args.procs) >= 1):
        parser.error("--procs: a positive number or auto")
    return args


def pick_node(cluster: LocalCluster, leader: str, spec: str) -> str:
    if spec == "leader":
        return leader
    if spec == "follower":
        return next(n for n in cluster.names if n != leader) if len(cluster.names) > 1 else leader
    if spec not in cluster.names:
        raise RuntimeError(f"--node {spec}: not one of {', '.join(cluster.names)} (or leader, follower)")
    return spec


def tool_version(tool: str) -> str:
    if tool == "builtin":
        return "the builtin generator (bench/dns_load.py, Python, one UDP socket)"
    done = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True)
    out = done.stdout + done.stderr
    version = next((line.split()[-1] for line in out.splitlines() if line.startswith("Version")), "?")
    return f"dnsperf {version}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show is not None:
        return _output(lambda: print_table(json.loads(args.show.read_text())))
    tool = args.tool
    if tool == "auto":
        tool = "dnsperf" if shutil.which("dnsperf") else "builtin"
        if tool == "builtin":
            progress("dnsperf not installed (apt-get install -y dnsperf): the builtin generator instead")
    elif tool == "dnsperf" and shutil.which("dnsperf") is None:
        progress("error: dnsperf not installed (apt-get install -y dnsperf)")
        return 1
    procs = default_procs(args.clients) if args.procs == "auto" else int(args.procs)

    stop_on_signals()
    root, fs = bench_root("registry-bench-dns-", args.dir, progress)
    phases = ["dns", "writes", "dns+writes"] + ([] if tool != "dnsperf" or args.no_half else ["dns/2+writes"])
    result: dict[str, Any] = {
        "benchmark": "dns_cluster", "format": 1, "machine": machine_info(root), "tool": tool,
        "tool_version": tool_version(tool),
        "config": {"nodes": args.nodes, "names": args.names, "instances": args.counts, "seconds": args.seconds,
                   "clients": args.clients, "procs": min(procs, args.clients), "node": args.node,
                   "window": args.window, "rounds": args.rounds, "phases": phases, "agent_args": args.agent_arg},
    }
    runs = itertools.count(1)
    try:
        progress("disk: 1 s of durable LMDB commits (bench/storage.py)")
        result["disk_before"] = fsync_probe(root)
        with LocalCluster(args.nodes, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
            progress(f"starting {args.nodes} agents in {root} ({fs}); DNS ports "
                     + ", ".join(a.dns for a in cluster.agents.values()))
            t0 = time.monotonic()
            cluster.start()
            leader = cluster.wait_leader()
            node = pick_node(cluster, leader.node, args.node)
            dns_pids = {n: dns_child_pid(a.pid) for n, a in cluster.agents.items()}
            dns_address = cluster.agents[node].dns
            result["cluster"] = {
                "leader": leader.node, "term": leader.term, "leader_after_s": round(time.monotonic() - t0, 2),
                "dns_node": node, "dns_node_role_at_start": "leader" if node == leader.node else "follower",
                "nodes": {n: {"pid": a.pid, "dns_pid": dns_pids[n], "raft": a.raft, "client": a.client, "dns": a.dns}
                          for n, a in cluster.agents.items()}}
            progress(f"leader {leader.node} (term {leader.term}); loading the DNS of {node} at {dns_address}")

            progress(f"registering {args.names} services with {'/'.join(map(str, args.counts))} instance(s) each")
            t1 = time.monotonic()
            result["registered"] = register_services(cluster.servers, args.names, args.counts)
            wait_served(dns_address, args.names, args.counts)
            progress(f"  {result['registered']} writes, served by {node}'s DNS after {time.monotonic() - t1:.1f} s")

            instances = result["registered"]  # in the catalogue: each write adds one
            rows: list[dict[str, Any]] = []
            result["phases"], result["summary"] = rows, []
            for count in args.counts:
                qnames = [qname(count, n) for n in range(args.names)]
                per_round: list[dict[str, Any]] = []
                idle_qps: int | None = None
                for rnd in range(1, args.rounds + 1):
                    order = phases if rnd % 2 else phases[::-1]
                    mine: list[dict[str, Any]] = []
                    for phase in order:
                        cap = None
                        if phase == "dns/2+writes":
                            if idle_qps is None:  # reversed round first: only once a dns phase ran
                                continue
                            cap = max(1, idle_qps // 2)
                        load = (dns_load_fn(tool, dns_address, qnames, args.seconds, args.window, cap)
                                if phase != "writes" else None)
                        progress(f"{count} instance(s), round {rnd}: {phase} for {args.seconds:g} s"
                                 + (f" (DNS capped at {cap} q/s)" if cap else ""))
                        row = run_phase(cluster, phase, node=node, dns_pids=dns_pids, dns=load,
                                        writers=args.clients if "writes" in phase else 0, procs=procs,
                                        run=next(runs), seconds=args.seconds)
                        row.update(instances=count, round=rnd, order=len(mine) + 1, catalogue_before=instances)
                        if row.get("writes"):
                            instances += row["writes"]["writes"] + row["writes"]["late"]
                        if phase == "dns":
                            idle_qps = row["dns"]["qps"]
                        d, w, c = row.get("dns"), row.get("writes"), row["cpu_pct"]
                        progress("  " + ", ".join(filter(None, [
                            d and f"DNS {d['qps']} q/s p50 {_c(d['p50_ms'], '.2f')} p99 {_c(d['p99_ms'], '.2f')} ms "
                                  f"loss {d['loss_pct']}%",
                            w and f"{w['writes_per_s']:.0f} writes/s p99 {_c(w['p99_ms'], '.1f')} ms",
                            f"CPU: DNS {_c(c['dns_child'])}% agent {_c(c['agent'])}% machine {_c(c['machine'])}% "
                            f"(other {_c(c['other'])}%)"])))
                        mine.append(row)
                    rows.extend(sorted(mine, key=lambda r: phases.index(r["phase"])))
                    ratios = compare(mine)
                    per_round.append(ratios)
                    result["summary"].append({"instances": count, "round": rnd, "ratios": ratios})
                if args.rounds > 1:
                    result["summary"].append({"instances": count, "round": "median",
                                              "ratios": median_summary(per_round)})

            result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            progress("disk: 1 s of durable LMDB commits again (the cluster idle)")
            result["disk_after"] = fsync_probe(root)
            result["memory"] = cluster.memory()
            result["instances"] = instances
            progress("stopping the cluster")
    except KeyboardInterrupt:
        progress("interrupted: the cluster was stopped")
        return 130
    except (RuntimeError, Unavailable, RegistryError) as exc:
        progress(f"error: {exc}")
        return 1
    finally:
        dns_load.cleanup()
    if args.json:
        return _output(lambda: print(json.dumps(_no_nan(result), indent=2 if sys.stdout.isatty() else None,
                                                allow_nan=False)))
    return _output(lambda: print_table(result))


if __name__ == "__main__":
    sys.exit(main())
