"""Memory and restart benchmark (not a test): RSS, data size and restart time with N instances.

    .venv/bin/python bench/restart.py [--instances 10000,100000] [--clients 16] [--json] [--keep]

For each count N of --instances, in a fresh durable cluster (bench/cluster.py's `LocalCluster`):

1. registers N distinct instances (16 services `bench-00`..`bench-15`, the same instances as
   bench/writes.py's workload) from --clients concurrent `registry.client.Client` threads spread
   over the nodes (bench/load.py's `fill`) (progress every few seconds), then one last instance of the service
   `restart-marker`: since it is the last write, a node that has applied it has applied the whole
   catalogue;
2. waits until every node has applied the marker's index, then reports each node's RSS (VmRSS,
   and the peak VmHWM, /proc/PID/status; the agent only, not its DNS child, which is reported
   apart) and its data directory's size (allocated bytes);
3. restarts, one after the other: a follower, the leader, then all nodes at once. Each restart
   is SIGTERM, wait for the exit (`stop s`), start the same command on the same data, and
   measure from the start:
   - `read s`: until the node answers a linearizable `services("restart-marker")` read (this
     node only; a linearizable read reflects every write committed before it, the marker
     included) with the marker in it;
   - `dns s`: until the node's DNS answers `restart-marker.service.registry.` A with the marker;
   then one full `services()` read from that node checks that it holds all N+1 instances.

Without snapshots (a later issue) a restarting node replays its whole log into the catalogue, so
restart time grows with every write ever made, not with the catalogue's size. Table on stdout or
one JSON object with --json; progress on stderr; the cluster is always stopped.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnslib import QTYPE, RCODE, DNSRecord  # noqa: E402

from bench.cluster import LocalCluster, dir_bytes, dns_child_pid  # noqa: E402
from bench.load import CLIENT_TIMEOUT_S, fill, register, registration, retrying  # noqa: E402
from bench.proc import proc_status_kib  # noqa: E402
from bench.script import (  # noqa: E402
    add_options, fsync_probe, loadavg, machine_info, main_frame, new_parser, numbers, print_header, reporter,
)
from bench.storage import filesystem  # noqa: E402
from registry.client import Client, NodeStatus, RegistryError  # noqa: E402

MARKER = "restart-marker"
MARKER_QNAME = f"{MARKER}.service.registry."  # the agent's default --domain
SERVE_WAIT_S = 300.0
POLL_S = 0.02

progress = reporter("restart")


def register_all(servers: list[str], count: int, clients: int) -> dict[str, Any]:
    """``count`` distinct instances from ``clients`` threads, then the marker; a write that
    raised is retried (the same instance: idempotent). Returns counts, time, errors."""
    errors: Counter[str] = Counter()

    def job(client: Client, i: int) -> None:
        retrying(lambda: register(client, registration(2, 0, i)), errors)

    def report(done: int, seconds: float) -> None:
        progress(f"  {done:,} / {count:,} registered ({done / seconds:.0f}/s)")

    seconds = fill(servers, clients, count, job, what="registering", report=report)
    with Client(servers, timeout_s=CLIENT_TIMEOUT_S) as client:
        marker = client.register(MARKER, "192.0.2.1", 9)
    return {"registered": count, "seconds": round(seconds, 1), "writes_per_s": round(count / seconds),
            "errors": dict(errors), "marker_index": marker.index}


def wait_applied(cluster: LocalCluster, index: int, timeout_s: float = 60.0) -> dict[str, NodeStatus]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = cluster.statuses()
        if all(isinstance(s, NodeStatus) and s.applied >= index for s in st.values()):
            return st  # type: ignore[return-value]
        time.sleep(0.1)
    raise RuntimeError(f"not every node applied index {index} within {timeout_s:g} s")


def node_sizes(cluster: LocalCluster) -> dict[str, dict[str, float]]:
    out = {}
    for name, a in cluster.agents.items():
        dns = dns_child_pid(a.pid)
        out[name] = {"rss_mib": round(proc_status_kib(a.pid, "VmRSS") / 1024, 1),
                     "hwm_mib": round(proc_status_kib(a.pid, "VmHWM") / 1024, 1),
                     "dns_rss_mib": round(proc_status_kib(dns, "VmRSS") / 1024, 1) if dns else None,
                     "data_mib": round(dir_bytes(a.data_dir) / 2**20, 1)}
    return out


def marker_read(server: str) -> bool:
    with Client([server], timeout_s=1.0) as c:
        try:
            return bool(c.services(MARKER).get(MARKER))
        except RegistryError:
            return False


def marker_dns(dns: str) -> bool:
    host, _, port = dns.rpartition(":")
    try:
        reply = DNSRecord.parse(DNSRecord.question(MARKER_QNAME, "A").send(host, int(port), timeout=0.2))
    except OSError:
        return False
    return reply.header.rcode == RCODE.NOERROR and any(rr.rtype == QTYPE.A for rr in reply.rr)


def wait_served(cluster: LocalCluster, name: str, t_start: float, expect: int) -> dict[str, Any]:
    """Times (from ``t_start``) until ``name`` answers the linearizable marker read and its DNS
    the marker; then checks the full catalogue once."""
    a = cluster.agents[name]
    read_s = dns_s = None
    deadline = t_start + SERVE_WAIT_S
    while (read_s is None or dns_s is None) and time.monotonic() < deadline:
        if not a.alive():
            raise RuntimeError(f"{name} exited during the restart:\n{cluster.log_tail(name)}")
        if dns_s is None and marker_dns(a.dns):
            dns_s = round(time.monotonic() - t_start, 3)
        if read_s is None and marker_read(a.client):
            read_s = round(time.monotonic() - t_start, 3)
        time.sleep(POLL_S)
    if read_s is None or dns_s is None:
        raise RuntimeError(f"{name} not serving within {SERVE_WAIT_S:g} s of its restart (read {read_s}, dns {dns_s})")
    with Client([a.client], timeout_s=30.0) as c:
        full = c.services()
    got = sum(len(v) for v in full.values())
    if got != expect:
        raise RuntimeError(f"{name} after its restart holds {got} instances, expected {expect}")
    return {"read_s": read_s, "dns_s": dns_s}


def stop_node(cluster: LocalCluster, name: str) -> float:
    a = cluster.agents[name]
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    a.proc.wait(timeout=60)  # type: ignore[union-attr]
    return round(time.monotonic() - t0, 3)


def restart_rows(cluster: LocalCluster, expect: int, marker_index: int) -> list[dict[str, Any]]:
    rows = []
    for which in ("follower", "leader"):
        leader = cluster.wait_leader(timeout_s=60)
        name = leader.node if which == "leader" else next(n for n in cluster.names if n != leader.node)
        progress(f"  restarting the {which} {name}")
        stop_s = stop_node(cluster, name)
        t0 = time.monotonic()
        cluster.start_agent(name)
        row = {"restart": which, "node": name, "stop_s": stop_s, **wait_served(cluster, name, t0, expect)}
        progress(f"    stopped in {row['stop_s']:.2f} s; linearizable read after {row['read_s']:.2f} s, "
                 f"DNS after {row['dns_s']:.2f} s")
        rows.append(row)
        wait_applied(cluster, marker_index)
    progress("  restarting all nodes at once")
    stops = {}
    t = time.monotonic()
    for a in cluster.agents.values():
        a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for name, a in cluster.agents.items():
        a.proc.wait(timeout=60)  # type: ignore[union-attr]
        stops[name] = round(time.monotonic() - t, 3)
    t0 = time.monotonic()
    for name in cluster.names:
        cluster.start_agent(name)
    served: dict[str, Any] = {}
    failures: list[BaseException] = []

    def serve(name: str) -> None:
        try:
            served[name] = wait_served(cluster, name, t0, expect)
        except BaseException as exc:  # noqa: BLE001 (raised below)
            failures.append(exc)

    pollers = [threading.Thread(target=serve, args=(n,), daemon=True) for n in cluster.names]
    for p in pollers:  # every node polled at once; each time is from the common start
        p.start()
    for p in pollers:
        p.join()
    if failures:
        raise RuntimeError(str(failures[0]))
    leader = cluster.wait_leader(timeout_s=60)
    for name in cluster.names:
        rows.append({"restart": "all", "node": name, "stop_s": stops[name], **served[name]})
        progress(f"    {name}: linearizable read after {served[name]['read_s']:.2f} s, DNS after {served[name]['dns_s']:.2f} s")
    rows.append({"restart": "all", "node": "cluster", "stop_s": max(stops.values()),
                 "read_s": max(s["read_s"] for s in served.values()),
                 "dns_s": max(s["dns_s"] for s in served.values()), "leader": leader.node})
    return rows


def run_count(count: int, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"registry-bench-restart-{count}-", dir=args.dir))
    with LocalCluster(args.nodes, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
        progress(f"{count:,} instances: starting {args.nodes} agents in {root}")
        cluster.start()
        leader = cluster.wait_leader()
        progress(f"  leader {leader.node}; registering {count:,} instances from {args.clients} clients")
        setup = register_all(cluster.servers, count, args.clients)
        progress(f"  registered in {setup['seconds']} s ({setup['writes_per_s']}/s); marker at index {setup['marker_index']}")
        statuses = wait_applied(cluster, setup["marker_index"])
        time.sleep(1.0)  # let the DNS children catch up before sampling their memory
        sizes = node_sizes(cluster)
        for n, s in sizes.items():
            progress(f"  {n}: RSS {s['rss_mib']} MiB (peak {s['hwm_mib']}), DNS child {s['dns_rss_mib']} MiB, data {s['data_mib']} MiB")
        expect = count + 1
        rows = restart_rows(cluster, expect, setup["marker_index"])
        sizes_after = node_sizes(cluster)
        return {"instances": expect, "setup": setup, "log_index": statuses[leader.node].last_index,
                "memory": sizes, "memory_after_restart": sizes_after, "restarts": rows}


def print_table(r: dict[str, Any]) -> None:
    print_header(r, f"registry memory and restart benchmark: {r['config']['nodes']} durable nodes on loopback")
    for c in r["counts"]:
        s = c["setup"]
        print(f"\n{c['instances']:,} instances (setup: {s['registered']:,} writes in {s['seconds']} s, "
              f"{s['writes_per_s']}/s, retried errors {s['errors'] or 'none'}; log {c['log_index']:,} entries)")
        print(f"{'node':<8}{'RSS MiB':>9}{'peak MiB':>10}{'DNS RSS':>9}{'data MiB':>10}{'RSS after restart':>19}")
        for n, v in c["memory"].items():
            after = c["memory_after_restart"].get(n, {})
            print(f"{n:<8}{v['rss_mib']:>9.1f}{v['hwm_mib']:>10.1f}{v['dns_rss_mib'] or 0:>9.1f}{v['data_mib']:>10.1f}"
                  f"{after.get('rss_mib', 0):>19.1f}")
        print(f"{'restart':<10}{'node':>8}{'stop s':>8}{'read s':>8}{'dns s':>8}")
        for row in c["restarts"]:
            print(f"{row['restart']:<10}{row['node']:>8}{row['stop_s']:>8.2f}{row['read_s']:>8.2f}{row['dns_s']:>8.2f}")
    print("\nread s / dns s: from the restarted process's start until a linearizable read on that node, and its DNS, "
          "show the last instance written; without snapshots the whole log is replayed at start.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--instances", dest="counts", metavar="INSTANCES", type=numbers, default="10000,100000",
                   help="instance counts, comma-separated (default 10000,100000)")
    p.add_argument("--clients", type=int, default=16, help="concurrent registering clients (default 16)")
    add_options(p)
    args = p.parse_args(argv)
    if not args.counts or any(c < 1 or c >= 2**24 for c in args.counts) or not 1 <= args.clients <= 256:
        p.error("--instances: each 1..16777215; --clients 1..256")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "restart", "format": 1, "machine": machine_info(args.dir),
                              "config": {"nodes": args.nodes, "instances": args.counts, "clients": args.clients,
                                         "agent_args": args.agent_arg}, "counts": []}
    if filesystem(args.dir).startswith("tmpfs"):
        progress(f"warning: {args.dir} is on tmpfs, where fsync costs nothing; use --dir")
    try:
        probe_dir = Path(tempfile.mkdtemp(prefix="registry-bench-restart-disk-", dir=args.dir))
        try:
            result["disk_before"] = fsync_probe(probe_dir)
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        for count in args.counts:
            result["counts"].append(run_count(count, args))
    except (RuntimeError, OSError, RegistryError) as exc:
        if not result["counts"]:
            raise
        progress(f"error: {exc}")
        result["error"] = str(exc)
    result["machine"]["loadavg_after"] = loadavg()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return main_frame(parse_args(argv), print_table, run, progress)


if __name__ == "__main__":
    sys.exit(main())
