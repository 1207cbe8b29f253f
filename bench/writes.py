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

The load (`Registrations`, `run_sequential`, `run_load`) is bench/load.py's, the window and
its percentiles bench/window.py's, the cluster and its `Probe` bench/cluster.py's: the other
benchmarks of the suite use the same ones.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import LocalCluster, Probe  # noqa: E402
from bench.load import (  # noqa: E402
    CLIENT_TIMEOUT_S, Registrations, procs_for, rotate, run_load, run_sequential, warm_up,
)
from bench.script import (  # noqa: E402
    add_options, bench_root, fsync_probe, loadavg, machine_info, main_frame, new_parser, num, numbers, positive_procs,
    print_header, reporter,
)
from bench.window import other_pct  # noqa: E402
from registry.client import NodeStatus  # noqa: E402

progress = reporter("writes")


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


def print_table(r: dict[str, Any]) -> None:
    m, cfg = r["machine"], r["config"]
    nodes = f"{cfg['nodes']} durable node{'s' if cfg['nodes'] != 1 else ''}"
    print_header(r, f"registry write benchmark: {nodes} on loopback")
    print(f"leader {r['cluster']['leader']} elected {r['cluster']['leader_after_s']:.2f} s after start; "
          f"each write registers a new instance (service, IPv4, port, 2 tags, 2 meta)\n")

    print(f"{'sequential (1 client)':<24}{'writes':>8}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'max ms':>9}{'errors':>8}{'client CPU':>12}")
    for s in r["sequential"]:
        print(f"{'via ' + s['via'] + ' (' + s['node'] + ')':<24}{s['writes']:>8}{s['writes_per_s']:>10.0f}"
              f"{num(s['p50_ms']):>9}{num(s['p99_ms']):>9}{num(s['p999_ms']):>10}{num(s['max_ms'], '.1f'):>9}"
              f"{sum(s['errors'].values()):>8}{s['client_cpu_pct']:>11.0f}%")

    print(f"\n{'throughput':<12}{'procs':>6}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'max ms':>9}{'errors':>8}")
    for t in r["throughput"]:
        print(f"{str(t['clients']) + ' clients':<12}{t['procs']:>6}{t['writes_per_s']:>10.0f}{num(t['p50_ms']):>9}"
              f"{num(t['p99_ms']):>9}{num(t['p999_ms']):>10}{num(t['max_ms'], '.1f'):>9}"
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run (default 10)")
    parser.add_argument("--clients", dest="levels", metavar="CLIENTS", type=numbers, default="1,16,64",
                        help="concurrency levels, comma-separated (default 1,16,64)")
    parser.add_argument("--sequential", type=int, default=1000,
                        help="writes of each sequential row (default 1000; 0 skips them)")
    parser.add_argument("--warmup", type=int, default=100, help="writes through each node before measuring")
    parser.add_argument("--procs", default="auto", type=positive_procs,
                        help="worker processes for the clients: a number, or auto (one per 64 clients, at most 4)")
    parser.add_argument("--profile", type=int, metavar="C",
                        help="record the leader with py-spy during the run with C clients; print the hot spots")
    add_options(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 9 or any(c < 1 or c > 1024 for c in args.levels):
        parser.error("--nodes must be 1-9 and each --clients level 1-1024")
    if args.profile is not None and args.profile not in args.levels:
        parser.error(f"--profile {args.profile}: not one of the --clients levels {args.levels}")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root, fs = bench_root("registry-bench-writes-", args.dir, progress)
    result: dict[str, Any] = {
        "benchmark": "writes", "format": 1, "machine": machine_info(root),
        "config": {"nodes": args.nodes, "seconds": args.seconds, "clients": args.levels,
                   "sequential": args.sequential, "warmup_per_node": args.warmup, "procs": args.procs,
                   "agent_args": args.agent_arg, "client_timeout_s": CLIENT_TIMEOUT_S},
    }
    target = Registrations()
    runs = itertools.count(1)
    progress("disk: 1 s of durable LMDB commits (bench/storage.py)")
    result["disk_before"] = fsync_probe(root)
    with LocalCluster(args.nodes, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
        progress(f"starting {args.nodes} agents in {root} ({fs}); client ports " + ", ".join(cluster.servers))
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
            instances += warm_up(target, cluster.servers, runs, args.warmup)
            leader = cluster.wait_leader()

        result["sequential"] = []
        if args.sequential:
            followers = [n for n in cluster.names if n != leader.node]
            targets = [("leader", leader.node)] + ([("follower", followers[0])] if followers else [])
            for via, node in targets:
                progress(f"sequential: {args.sequential} writes via the {via} {node}")
                order = rotate(cluster.servers, cluster.names.index(node))
                s = run_sequential(target, order, next(runs), args.sequential)
                instances += s["writes"]
                result["sequential"].append({"via": via, "node": node, **s})
                progress(f"  p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, {s['writes_per_s']:.0f} writes/s")

        result["throughput"] = []
        for clients in args.levels:
            procs = procs_for(args.procs, clients)
            progress(f"throughput: {clients} clients for {args.seconds:g} s "
                     f"({min(procs, clients)} worker process(es))")
            leader = cluster.wait_leader()
            probe = Probe(cluster)
            spy: subprocess.Popen[bytes] | None = None
            spy_out = root / f"py-spy-{leader.node}-{clients}-clients.txt"

            def on_start(pid: int = cluster.agents[leader.node].pid) -> None:
                nonlocal spy
                probe.open()  # noqa: B023 (called within this iteration)
                if args.profile == clients:  # noqa: B023
                    spy = start_py_spy(pid, args.seconds, spy_out)  # noqa: B023

            t = run_load(target, cluster.servers, next(runs), clients, args.seconds, procs,
                         on_start=on_start, on_end=probe.close)
            t.update(probe.after(t["writes"]))
            if t["machine_cpu_pct"] is not None:  # other processes on the box, and the kernel
                t["other_cpu_pct"] = other_pct(t["machine_cpu_pct"], t["nodes_cpu_pct"], t["client_cpu_pct"]["total"])
            instances += t["writes"] + t["late"]
            result["throughput"].append(t)
            progress(f"  {t['writes_per_s']:.0f} writes/s, p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms, "
                     f"errors {sum(t['errors'].values())}, client CPU {t['client_cpu_pct']['total']:.0f}%, "
                     f"nodes CPU {t['nodes_cpu_pct']:.0f}%, machine CPU {num(t['machine_cpu_pct'], '.0f')}% "
                     f"(other {t.get('other_cpu_pct', 0):.0f}%)")
            if spy is not None and (profile := read_profile(spy, spy_out, leader.node, clients, args)):
                result["profile"] = profile

        result["machine"]["loadavg_after"] = loadavg()
        progress("disk: 1 s of durable LMDB commits again (the cluster idle)")
        result["disk_after"] = fsync_probe(root)
        result["memory"] = cluster.memory()
        result["instances"] = instances
        final = cluster.statuses()
        result["final_status"] = {n: ({"role": s.role, "term": s.term, "commit": s.commit, "applied": s.applied}
                                      if isinstance(s, NodeStatus) else str(s)) for n, s in final.items()}
        progress("stopping the cluster")
    return result


def read_profile(spy: subprocess.Popen[bytes], spy_out: Path, node: str, clients: int,
                 args: argparse.Namespace) -> dict[str, Any] | None:
    """py-spy's hot spots once it has finished; the raw stacks copied out of the cluster's
    directory unless --keep."""
    _, err = spy.communicate(timeout=args.seconds + 30)
    if spy.returncode != 0 or not spy_out.exists():
        progress(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace').strip()[-500:]}")
        return None
    if not args.keep:
        kept = Path(tempfile.gettempdir()) / spy_out.name
        shutil.copy(spy_out, kept)
        spy_out = kept
    return {"node": node, "clients": clients, "file": str(spy_out), **hot_spots(spy_out)}


def main(argv: Sequence[str] | None = None) -> int:
    return main_frame(parse_args(argv), print_table, measure, progress)


if __name__ == "__main__":
    sys.exit(main())
