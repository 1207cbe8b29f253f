"""Write benchmark (not a test): a fresh durable local cluster, sequential latency and throughput.

    .venv/bin/python bench/writes.py [--nodes 3] [--seconds 10] [--clients 1,16,64] [--json] [--keep]

Starts NODES separate `registry agent` processes (durable: LMDB, fsync per Ready) in a temporary
directory, on free loopback ports picked here (never the `registry up` ports 7001-7003/7101-7103,
so it can run beside the integration tests), waits for a leader and warms up. Then:

- sequential: one client, --sequential registrations one after the other, once through the
  leader and once through a follower (which forwards to the leader): p50/p99/p99.9/max, writes/s;
- throughput: for each level C of --clients, C closed-loop clients (one `registry.client.Client`
  each) write for --seconds, spread over all nodes (client k starts at node k mod NODES), run as
  threads in --procs worker processes: writes/s, p50/p99/p99.9/max, errors, and the CPU of the
  client processes, of each node and of the whole machine, so a client-bound run shows as one;
- after each run, from the nodes: `status` (term, leader, applied index) and /proc (CPU, bytes
  written to disk); at the end each node's RSS. Before and after, one second of bench/storage.py's
  durable LMDB commit in the same directory: what an fsync cost on this disk at that moment.

Every write is a new instance (service, IPv4, port, 2 tags, 2 meta keys, the default id). Prints
a table on stdout (or one JSON object with --json), progress on stderr, and always stops the
cluster, also on Ctrl-C. --profile C records the leader with py-spy while C clients write and
prints its hot spots. See bench/README.md for how to read the numbers.

The pieces are reused by the other benchmarks of the performance suite: `run_load` (closed-loop
clients in worker processes), `run_sequential`, `Probe` and `Latencies`; the cluster itself
(`LocalCluster`, /proc samples, clean-up) is in bench/cluster.py.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import (  # noqa: E402
    LocalCluster,
    _die_with_parent,
    _no_nan,
    bench_root,
    box_cpu,
    fsync_probe,
    machine_info,
    stop_on_signals,
)
from registry.client import Client, NodeStatus, RegistryError, Unavailable  # noqa: E402

CLIENT_TIMEOUT_S = 5.0
MAX_SEQUENTIAL_ERRORS = 20


def progress(message: str) -> None:
    print(f"[writes] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Latencies


class Latencies:
    """Latencies in seconds; percentiles by the nearest-rank method, reported in ms."""

    def __init__(self, values: Sequence[float] = ()) -> None:
        self.values = sorted(values)

    def pct(self, p: float) -> float:
        if not self.values:
            return math.nan
        rank = max(1, math.ceil(p / 100 * len(self.values)))
        return 1000 * self.values[rank - 1]

    def summary(self) -> dict[str, float]:
        v = self.values
        return {"p50_ms": self.pct(50), "p99_ms": self.pct(99), "p999_ms": self.pct(99.9),
                "max_ms": 1000 * v[-1] if v else math.nan,
                "mean_ms": 1000 * sum(v) / len(v) if v else math.nan}


# ---------------------------------------------------------------------------------------------
# The workload: one registration per write, each a new instance


SERVICES = 16


def registration(run: int, client: int, i: int) -> dict[str, Any]:
    """The `register` arguments of write ``i`` of ``client`` in ``run``: unique over (run,
    client, i) for client < 1024 and i < 2**24 (address from i, port from run and client)."""
    block = run * 1024 + client
    a = i % 2**24
    return {"service": f"bench-{(client + i) % SERVICES:02d}",
            "address": f"10.{a >> 16}.{(a >> 8) & 0xFF}.{a & 0xFF}",
            "port": 1024 + block % 64000,
            "tags": ("primary", f"zone-{'abc'[i % 3]}"),
            "meta": {"version": "2.14.1", "commit": f"{(block << 24 | a) & 0xFFFFFFFF:08x}"}}


def write_once(client: Client, run: int, index: int, i: int) -> None:
    args = registration(run, index, i)
    client.register(args.pop("service"), args.pop("address"), args.pop("port"), **args)


def error_name(exc: BaseException) -> str:
    if isinstance(exc, RegistryError):
        return f"{type(exc).__name__}:{exc.code}" if exc.code else type(exc).__name__
    return type(exc).__name__


def rotate(servers: Sequence[str], k: int) -> list[str]:
    """The server list as client ``k`` sees it: it starts at node k mod n, then the others."""
    k %= len(servers)
    return list(servers[k:]) + list(servers[:k])


# ---------------------------------------------------------------------------------------------
# /proc samples


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Sequential latency: one client in this process


def run_sequential(server_order: Sequence[str], run: int, writes: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    cpu0 = time.process_time()
    with Client(server_order, timeout_s=CLIENT_TIMEOUT_S) as client:
        client.status()  # connect before timing
        start = time.perf_counter()
        for i in range(writes):
            t0 = time.perf_counter()
            try:
                write_once(client, run, 0, i)
            except RegistryError as exc:
                errors[error_name(exc)] += 1
                if sum(errors.values()) >= MAX_SEQUENTIAL_ERRORS:
                    progress(f"giving up after {MAX_SEQUENTIAL_ERRORS} errors: {dict(errors)}")
                    break
                continue
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return {"writes": len(latencies), "errors": dict(errors), "seconds": elapsed,
            "writes_per_s": len(latencies) / elapsed, **Latencies(latencies).summary(),
            "client_cpu_pct": 100 * cpu / elapsed}


# ---------------------------------------------------------------------------------------------
# Throughput: closed-loop clients, threads in worker processes


def _client_thread(servers: list[str], run: int, index: int, connected: threading.Barrier, window: list[float],
                   out: list[Any]) -> None:
    """One closed-loop client: connects, waits at ``connected`` until the window is known, then
    writes from window[0] until window[1] (time.monotonic, which is system-wide on Linux),
    recording the latency of each write that completed within the window."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    late = 0
    with Client(servers, timeout_s=CLIENT_TIMEOUT_S) as client:
        with contextlib.suppress(RegistryError):
            client.status()  # connect before the start
        connected.wait()
        connected.wait()  # the second time: the window is set
        start_at, end_at = window
        time.sleep(max(0.0, start_at - time.monotonic()))
        for i in itertools.count():
            t0 = time.monotonic()
            if t0 >= end_at:
                break
            try:
                write_once(client, run, index, i)
            except RegistryError as exc:
                if time.monotonic() <= end_at:
                    errors[error_name(exc)] += 1
                continue
            t1 = time.monotonic()
            if t1 <= end_at:
                latencies.append(t1 - t0)
            else:
                late += 1  # completed after the window: not counted
    out.append((latencies, errors, late))


def _worker(servers: list[str], run: int, indexes: list[int], seconds: float, ready: Any, go: Any,
            start_at: Any, results: Any) -> None:
    """A worker process: one thread (and one Client) per index in ``indexes``. Says ``ready``
    once every client is connected; starts writing at ``start_at`` once ``go`` is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    _die_with_parent()
    out: list[Any] = []
    window: list[float] = []
    connected = threading.Barrier(len(indexes) + 1)
    threads = [threading.Thread(target=_client_thread, daemon=True,
                                args=(rotate(servers, k), run, k, connected, window, out)) for k in indexes]
    for t in threads:
        t.start()
    connected.wait(timeout=60)
    ready.put(os.getpid())
    go.wait()
    begin = start_at.value
    window[:] = [begin, begin + seconds]
    connected.wait(timeout=60)
    # The CPU of this process (every client thread, and ZeroMQ's I/O thread) within the window.
    time.sleep(max(0.0, begin - time.monotonic()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, begin + seconds - time.monotonic()))
    cpu = time.process_time() - cpu0
    for t in threads:
        t.join()
    latencies = [x for lat, _, _ in out for x in lat]
    errors: Counter[str] = Counter()
    for _, e, _ in out:
        errors.update(e)
    results.put({"pid": os.getpid(), "latencies": latencies, "errors": dict(errors),
                 "late": sum(n for _, _, n in out), "cpu_s": cpu})


def _get(queue: Any, workers: Sequence[Any], timeout_s: float) -> Any:
    """The next item of ``queue``; RuntimeError if a worker died first or on the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.5)
        except Exception:  # queue.Empty
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client worker process exited with status {dead[0].exitcode}") from None
    raise RuntimeError(f"no answer from the client worker processes within {timeout_s:g} s")


def default_procs(clients: int) -> int:
    """Worker processes for ``clients``: one per 64 clients, at most 4. One process ran 64
    clients at about 40% of one core (~150-200 us of client CPU per write, see bench/README.md),
    so threads suffice today; more processes only add spawning and context switches on 2 cores."""
    return max(1, min(4, math.ceil(clients / 64)))


def run_load(servers: list[str], run: int, clients: int, seconds: float, procs: int,
             on_start: Any = None, on_end: Any = None, *, worker: Callable[..., None] | None = None,
             result_timeout_s: float = CLIENT_TIMEOUT_S + 30) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``, client k in worker k mod ``procs``.
    ``on_start()`` and ``on_end()`` are called when the window opens and closes (to sample
    counters over exactly the window, start a profiler...). ``worker`` drives another system
    with the same layout, window and result fields (compare_etcd.py)."""
    procs = max(1, min(procs, clients))
    ctx = mp.get_context("spawn")  # NB: no fork: this process holds ZeroMQ sockets and threads
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    workers = [ctx.Process(target=worker or _worker, daemon=True,
                           args=(servers, run, list(range(w, clients, procs)), seconds, ready, go, start_at, results))
               for w in range(procs)]
    try:
        for w in workers:
            w.start()
        for _ in workers:
            _get(ready, workers, 60)
        start_at.value = time.monotonic() + 0.2
        go.set()
        time.sleep(max(0.0, start_at.value - time.monotonic()))
        if on_start is not None:
            on_start()
        time.sleep(max(0.0, start_at.value + seconds - time.monotonic()))
        if on_end is not None:
            on_end()
        outs = [_get(results, workers, result_timeout_s) for _ in workers]
        for w in workers:
            w.join(timeout=10)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
    latencies = [x for o in outs for x in o["latencies"]]
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o["errors"])
    cpu = [100 * o["cpu_s"] / seconds for o in outs]
    return {"clients": clients, "procs": procs, "seconds": seconds, "writes": len(latencies),
            "writes_per_s": len(latencies) / seconds, **Latencies(latencies).summary(),
            "errors": dict(errors), "late": sum(o["late"] for o in outs),
            "client_cpu_pct": {"per_proc": [round(c, 1) for c in cpu], "total": round(sum(cpu), 1),
                               "us_per_write": 1e6 * sum(o["cpu_s"] for o in outs) / max(1, len(latencies))}}


# ---------------------------------------------------------------------------------------------
# What the nodes tell after a run


@dataclass
class Probe:
    """Node-side counters sampled around a run: CPU and disk writes (/proc), `status`."""

    cluster: LocalCluster
    t0: float = 0.0
    cpu0: dict[str, float] = field(default_factory=dict)
    io0: dict[str, int] = field(default_factory=dict)
    box0: tuple[float, float] = (0.0, 0.0)
    status0: dict[str, NodeStatus | RegistryError] = field(default_factory=dict)

    t1: float = 0.0
    cpu1: dict[str, float] = field(default_factory=dict)
    io1: dict[str, int] = field(default_factory=dict)
    box1: tuple[float, float] = (0.0, 0.0)

    def before(self) -> None:
        """Before the run: statuses (which take a round trip, so not inside the window)."""
        self.status0 = self.cluster.statuses()

    def window_open(self) -> None:
        self.t0, self.cpu0, self.io0, self.box0 = (time.monotonic(), self.cluster.cpu_s(),
                                                   self.cluster.disk_write_bytes(), box_cpu())

    def window_close(self) -> None:
        self.t1, self.cpu1, self.io1, self.box1 = (time.monotonic(), self.cluster.cpu_s(),
                                                   self.cluster.disk_write_bytes(), box_cpu())

    def after(self, writes: int) -> dict[str, Any]:
        """After the run: statuses, and what the counters moved by within the window."""
        elapsed = self.t1 - self.t0
        cpu, io, box = self.cpu1, self.io1, self.box1
        status = self.cluster.statuses()
        nodes: dict[str, Any] = {}
        for name in self.cluster.names:
            s, s0 = status.get(name), self.status0.get(name)
            row: dict[str, Any] = {
                "cpu_pct": round(100 * (cpu[name] - self.cpu0[name]) / elapsed, 1) if name in cpu else None,
                "disk_written_mb": round((io.get(name, 0) - self.io0.get(name, 0)) / 1e6, 2),
            }
            if isinstance(s, NodeStatus):
                row.update(role=s.role, term=s.term, leader=s.leader, commit=s.commit, applied=s.applied)
                if isinstance(s0, NodeStatus):
                    row["applied_delta"] = s.applied - s0.applied
                    row["term_delta"] = s.term - s0.term
            else:
                row["error"] = str(s)
            nodes[name] = row
        leader = next((n for n, r in nodes.items() if r.get("role") == "leader"), None)
        busy = box[0] - self.box0[0]
        total = box[1] - self.box0[1]
        ncpu = os.cpu_count() or 1
        leader_disk = nodes[leader]["disk_written_mb"] if leader else None
        machine = round(100 * ncpu * busy / total, 1) if total else None
        nodes_cpu = sum(r["cpu_pct"] or 0 for r in nodes.values())
        return {"nodes": nodes, "leader": leader, "nodes_cpu_pct": round(nodes_cpu, 1),
                "elections": max((r.get("term_delta", 0) for r in nodes.values()), default=0),
                "machine_cpu_pct": machine,
                "leader_disk_kb_per_write": round(1000 * leader_disk / writes, 2) if leader and writes else None}


# ---------------------------------------------------------------------------------------------
# Profiling the leader with py-spy


def find_py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = find_py_spy()
    if exe is None:
        progress("py-spy not found (.venv/bin/pip install py-spy): no profile")
        return None
    # NB: --idle, so that the shares are of wall time: waiting in poll (headroom) and in LMDB's
    # commit (fsync) show up beside the CPU work.
    return subprocess.Popen([exe, "record", "--nonblocking", "--idle", "--format", "raw", "--rate", "250",
                             "--duration", str(max(1, int(seconds))), "--output", str(out), "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def hot_spots(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function(f) for f in stack.split(";")]
        frames = [f for f in frames if f is not None]
        if not frames:
            continue
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    # Inclusive: the project's own functions, without the entry points that hold every sample.
    ours = [(f, n) for f, n in inclusive.most_common() if f.split(" (", 1)[1].startswith("registry/")
            and n < 0.95 * total]
    return {"samples": total,
            "self": [(f, round(100 * n / total, 1)) for f, n in own.most_common(top)],
            "inclusive": [(f, round(100 * n / total, 1)) for f, n in ours[:top]]}


def _function(frame: str) -> str | None:
    """'name (path/to/file.py:12)' -> 'name (file.py)'; thread/process frames are dropped."""
    name, _, where = frame.partition(" (")
    if not where:
        return None
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for anchor in ("registry", "site-packages", "python3.11"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) + (anchor != "registry"):])
            break
    else:
        path = Path(path).name
    return f"{name} ({path})"


# ---------------------------------------------------------------------------------------------
# Report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _num(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def print_table(r: dict[str, Any]) -> None:
    m, cfg = r["machine"], r["config"]
    print(f"registry write benchmark: {cfg['nodes']} durable node{'s' if cfg['nodes'] != 1 else ''} on loopback, {m['cpus']} CPUs, "
          f"load average {m['loadavg_before'][0]:g} before and {m.get('loadavg_after', ['?'])[0]} after, "
          f"data on {m['data_filesystem']}")
    if "disk_before" in r:
        b, a = r["disk_before"], r.get("disk_after") or {}
        print(f"disk: a durable LMDB commit (bench/storage.py) took p50 {b['p50_ms']:.2f} ms / p99 {b['p99_ms']:.2f} ms "
              f"before the run and p50 {_num(a.get('p50_ms'))} / p99 {_num(a.get('p99_ms'))} ms after")
    print(f"leader {r['cluster']['leader']} elected {r['cluster']['leader_after_s']:.2f} s after start; "
          f"each write registers a new instance (service, IPv4, port, 2 tags, 2 meta)\n")

    print(f"{'sequential (1 client)':<24}{'writes':>8}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'max ms':>9}{'errors':>8}{'client CPU':>12}")
    for s in r["sequential"]:
        print(f"{'via ' + s['via'] + ' (' + s['node'] + ')':<24}{s['writes']:>8}{s['writes_per_s']:>10.0f}"
              f"{_num(s['p50_ms']):>9}{_num(s['p99_ms']):>9}{_num(s['p999_ms']):>10}{_num(s['max_ms'], '.1f'):>9}"
              f"{sum(s['errors'].values()):>8}{s['client_cpu_pct']:>11.0f}%")

    print(f"\n{'throughput':<12}{'procs':>6}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'max ms':>9}{'errors':>8}")
    for t in r["throughput"]:
        print(f"{str(t['clients']) + ' clients':<12}{t['procs']:>6}{t['writes_per_s']:>10.0f}{_num(t['p50_ms']):>9}"
              f"{_num(t['p99_ms']):>9}{_num(t['p999_ms']):>10}{_num(t['max_ms'], '.1f'):>9}"
              f"{sum(t['errors'].values()):>8}")

    names = list(r["cluster"]["nodes"])
    print(f"\nCPU in the window, % of one core ({m['cpus']} cores = {100 * m['cpus']}%; leader *; other = the "
          f"rest of the machine)")
    print(f"{'throughput':<12}{'clients':>9}{'us/write':>10}" + "".join(f"{n:>7}" for n in names)
          + f"{'other':>7}{'machine':>9}")
    for t in r["throughput"]:
        cc = t["client_cpu_pct"]
        cells = "".join(f"{_pct(t['nodes'].get(n, {}).get('cpu_pct')) + ('*' if n == t['leader'] else ' '):>7}"
                        for n in names)
        print(f"{str(t['clients']) + ' clients':<12}{_pct(cc['total']):>9}{cc['us_per_write']:>10.0f}{cells}"
              f"{_pct(t.get('other_cpu_pct')):>7}{_pct(t.get('machine_cpu_pct')):>9}")

    notes = []
    for t in r["throughput"]:
        if t["errors"]:
            notes.append(f"{t['clients']} clients: errors {t['errors']}")
        if t["elections"]:
            notes.append(f"{t['clients']} clients: the term moved by {t['elections']} during the run (elections)")
        if max(t["client_cpu_pct"]["per_proc"]) > 80:
            notes.append(f"{t['clients']} clients: a client process used {max(t['client_cpu_pct']['per_proc']):.0f}% "
                         f"of a core (GIL-bound): the client side may limit this row; try a higher --procs")
    print("\nafter each run (from `status` and /proc/PID/io)")
    print(f"{'throughput':<12}{'leader':>7}{'term':>6}{'applied':>9}{'+applied':>10}{'leader disk KB/write':>22}")
    for t in r["throughput"]:
        lead = t["nodes"].get(t["leader"] or "", {})
        kb = t["leader_disk_kb_per_write"]
        print(f"{str(t['clients']) + ' clients':<12}{t['leader'] or '-':>7}{lead.get('term', '-'):>6}"
              f"{lead.get('applied', '-'):>9}{lead.get('applied_delta', '-'):>10}{'-' if kb is None else kb:>22}")
    print("\nmemory at the end: " + ", ".join(f"{n} RSS {v['rss_mib']:.1f} MiB (peak {v['hwm_mib']:.1f})"
                                               for n, v in r["memory"].items())
          + f"; {r['instances']} instances registered")
    if r.get("profile"):
        p = r["profile"]
        print(f"\nprofile of the leader ({p['node']}) with {p['clients']} clients (py-spy, {p['samples']} samples, "
              f"% of wall time, idle included); raw stacks in {p['file']}")
        print("  self:")
        for f, share in p["self"][:12]:
            print(f"    {share:5.1f}%  {f}")
        print("  inclusive (registry/ code):")
        for f, share in p["inclusive"][:12]:
            print(f"    {share:5.1f}%  {f}")
    for n in notes:
        print("note: " + n)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run (default 10)")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels, comma-separated (default 1,16,64)")
    parser.add_argument("--sequential", type=int, default=1000,
                        help="writes of each sequential row (default 1000; 0 skips them)")
    parser.add_argument("--warmup", type=int, default=100, help="writes through each node before measuring")
    parser.add_argument("--procs", default="auto",
                        help="worker processes for the clients: a number, or auto (one per 64 clients, at most 4)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="parent of the temporary cluster directory (default: the system temp dir)")
    parser.add_argument("--profile", type=int, metavar="C",
                        help="record the leader with py-spy during the run with C clients; print the hot spots")
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every agent, e.g. --agent-arg=--tick-interval-ms=20 (repeat)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and node logs")
    parser.add_argument("--show", type=Path, metavar="FILE", help="print the table of a saved --json result and exit")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients: expected numbers like 1,16,64, got {args.clients!r}")
    if not 1 <= args.nodes <= 9 or any(c < 1 or c > 1024 for c in args.levels):
        parser.error("--nodes must be 1-9 and each --clients level 1-1024")
    if args.procs != "auto" and not (args.procs.isdigit() and int(args.procs) >= 1):
        parser.error("--procs: a positive number or auto")
    if args.profile is not None and args.profile not in args.levels:
        parser.error(f"--profile {args.profile}: not one of the --clients levels {args.levels}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show is not None:
        return _output(lambda: print_table(json.loads(args.show.read_text())))

    stop_on_signals()
    root, fs = bench_root("registry-bench-writes-", args.dir, progress)
    result: dict[str, Any] = {
        "benchmark": "writes", "format": 1, "machine": machine_info(root),
        "config": {"nodes": args.nodes, "seconds": args.seconds, "clients": args.levels,
                   "sequential": args.sequential, "warmup_per_node": args.warmup, "procs": args.procs,
                   "agent_args": args.agent_arg, "client_timeout_s": CLIENT_TIMEOUT_S},
    }
    runs = itertools.count(1)
    try:
        progress("disk: 1 s of durable LMDB commits (bench/storage.py)")
        result["disk_before"] = fsync_probe(root)
        with LocalCluster(args.nodes, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
            progress(f"starting {args.nodes} agents in {root} ({fs}); client ports "
                     + ", ".join(cluster.servers))
            t0 = time.monotonic()
            cluster.start()
            leader = cluster.wait_leader()
            result["cluster"] = {"leader": leader.node, "term": leader.term,
                                 "leader_after_s": round(time.monotonic() - t0, 2),
                                 "nodes": {n: {"pid": a.pid, "raft": a.raft, "client": a.client}
                                           for n, a in cluster.agents.items()}}
            progress(f"leader {leader.node} (term {leader.term}) after {result['cluster']['leader_after_s']} s")
            instances = 0

            if args.warmup:
                progress(f"warm-up: {args.warmup} writes through each node")
                for k, _ in enumerate(cluster.names):
                    w = run_sequential(rotate(cluster.servers, k), next(runs), args.warmup)
                    instances += w["writes"]
                leader = cluster.wait_leader()

            result["sequential"] = []
            if args.sequential:
                followers = [n for n in cluster.names if n != leader.node]
                targets = [("leader", leader.node)] + ([("follower", followers[0])] if followers else [])
                for via, node in targets:
                    progress(f"sequential: {args.sequential} writes via the {via} {node}")
                    order = rotate(cluster.servers, cluster.names.index(node))
                    s = run_sequential(order, next(runs), args.sequential)
                    instances += s["writes"]
                    result["sequential"].append({"via": via, "node": node, **s})
                    progress(f"  p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, {s['writes_per_s']:.0f} writes/s")

            result["throughput"] = []
            for clients in args.levels:
                procs = default_procs(clients) if args.procs == "auto" else int(args.procs)
                progress(f"throughput: {clients} clients for {args.seconds:g} s "
                         f"({min(procs, clients)} worker process(es))")
                leader = cluster.wait_leader()
                probe = Probe(cluster)
                probe.before()
                spy: subprocess.Popen[bytes] | None = None
                spy_out = root / f"py-spy-{leader.node}-{clients}-clients.txt"

                def on_start(pid: int = cluster.agents[leader.node].pid) -> None:
                    nonlocal spy
                    probe.window_open()  # noqa: B023 (called within this iteration)
                    if args.profile == clients:  # noqa: B023
                        spy = start_py_spy(pid, args.seconds, spy_out)  # noqa: B023

                t = run_load(cluster.servers, next(runs), clients, args.seconds, procs,
                             on_start=on_start, on_end=probe.window_close)
                t.update(probe.after(t["writes"]))
                if t["machine_cpu_pct"] is not None:  # other processes on the box, and the kernel
                    t["other_cpu_pct"] = round(max(0.0, t["machine_cpu_pct"] - t["nodes_cpu_pct"]
                                                   - t["client_cpu_pct"]["total"]), 1)
                instances += t["writes"] + t["late"]
                result["throughput"].append(t)
                progress(f"  {t['writes_per_s']:.0f} writes/s, p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms, "
                         f"errors {sum(t['errors'].values())}, client CPU {t['client_cpu_pct']['total']:.0f}%, "
                         f"nodes CPU {t['nodes_cpu_pct']:.0f}%, machine CPU {t['machine_cpu_pct']:.0f}% "
                         f"(other {t.get('other_cpu_pct', 0):.0f}%)")
                if spy is not None:
                    _, err = spy.communicate(timeout=args.seconds + 30)
                    if spy.returncode == 0 and spy_out.exists():
                        if not args.keep:  # the raw stacks are worth keeping: copy them out
                            kept = Path(tempfile.gettempdir()) / spy_out.name
                            shutil.copy(spy_out, kept)
                            spy_out = kept
                        result["profile"] = {"node": leader.node, "clients": clients, "file": str(spy_out),
                                             **hot_spots(spy_out)}
                    else:
                        progress(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace').strip()[-500:]}")

            result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            progress("disk: 1 s of durable LMDB commits again (the cluster idle)")
            result["disk_after"] = fsync_probe(root)
            result["memory"] = cluster.memory()
            result["instances"] = instances
            final = cluster.statuses()
            result["final_status"] = {n: ({"role": s.role, "term": s.term, "commit": s.commit, "applied": s.applied}
                                          if isinstance(s, NodeStatus) else str(s)) for n, s in final.items()}
            progress("stopping the cluster")
    except KeyboardInterrupt:
        progress("interrupted: the cluster was stopped")
        return 130
    except (RuntimeError, Unavailable) as exc:
        progress(f"error: {exc}")
        return 1
    if args.json:
        return _output(lambda: print(json.dumps(_no_nan(result), indent=2 if sys.stdout.isatty() else None,
                                                allow_nan=False)))
    return _output(lambda: print_table(result))


def _output(write: Any) -> int:
    """Print; a reader that went away (`| head`) is not an error."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
