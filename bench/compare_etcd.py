"""Side by side with etcd (not a test): the same writes, the same concurrency, in one run.

    .venv/bin/python bench/compare_etcd.py [--clients 1,16,64] [--seconds 5] [--rounds 2] [--json]

Starts, in one new temporary directory, a fresh durable 3-node registry cluster (writes.py's
`LocalCluster`: `registry agent` processes, LMDB, fsync per Ready) and a fresh durable 3-member
etcd cluster (Debian's `etcd-server`, /usr/bin/etcd, default timeouts and default fsync), both on
loopback ports picked free. Then for each round and each concurrency level C, C closed-loop
clients write to one system for --seconds, then to the other: registry first in even rounds,
etcd first in odd ones (A B, B A, ...), so that drift on a shared machine cancels in the medians.

- registry: bench/load.py's `Registrations`, i.e. `registry.client.Client`, one per thread,
  client k starts at node k mod 3; each write registers a new instance (load.py's `registration`).
- etcd: its normal HTTP/JSON client path, the gRPC gateway (`POST /v3/kv/put`, base64 key and
  value), one keep-alive `http.client` connection per client thread, client k on member k mod 3.
  Each put writes a new key `bench/<instance id>` whose value is exactly the bytes the registry
  puts in its Raft log for that same registration (`encode_request`: about 190-196 bytes), so
  both logs carry writes of the same size.

Both loads are driven by the same generator (bench/load.py's `run_load`: the same
worker-process/thread layout, --procs as writes.py, and the same window: only writes completed
within it count) and measured by the same code (`measure`, bench/window.py's `Window`).
Reports per level writes/s, p50/p99 for each
system, the ratios registry/etcd, medians over rounds, the servers' and clients' CPU, and
bench/storage.py's first row (a durable one-entry LMDB commit) before and after: what an fsync
cost on this disk in this run. A table on stdout (or --json), progress on stderr. Both clusters
are always stopped: at the end, on an error, on Ctrl-C or SIGTERM; on SIGKILL the servers get
SIGTERM from the kernel (PR_SET_PDEATHSIG). See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import HOST, STOP_WAIT_S, LocalCluster, pick_ports  # noqa: E402
from bench.load import Registrations, Target, procs_for, registration, run_load, warm_up  # noqa: E402
from bench.proc import die_with_parent  # noqa: E402
from bench.script import (  # noqa: E402
    add_options, bench_root, fsync_probe, loadavg, machine_info, main_frame, new_parser, num, numbers, positive_procs,
    print_header, reporter,
)
from bench.window import Window, other_pct  # noqa: E402
from registry.catalogue.commands import Register, Request, encode_request  # noqa: E402

ETCD_CANDIDATES = ("/usr/bin/etcd",)
ETCD_WAIT_S = 30.0
ETCD_TIMEOUT_S = 5.0  # per request, as load.py's CLIENT_TIMEOUT_S

progress = reporter("compare_etcd")


# ---------------------------------------------------------------------------------------------
# The write both systems take


def entry_bytes(client_id: str, seq: int, run: int, client: int, i: int) -> tuple[str, bytes]:
    """(instance id, the registry's Raft log entry) of write ``i`` of ``client`` in ``run``:
    exactly what the registry logs for load.py's registration (run, client, i)."""
    a = registration(run, client, i)
    command = Register(a["service"], a["address"], a["port"], tags=a["tags"], meta=a["meta"])
    return command.instance_id or "", encode_request(Request(client_id=client_id, seq=seq, command=command))


def etcd_put_body(client_id: str, seq: int, run: int, client: int, i: int) -> bytes:
    instance_id, value = entry_bytes(client_id, seq, run, client, i)
    key = f"bench/{instance_id}".encode()
    return json.dumps({"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}).encode()


def write_sizes() -> dict[str, int]:
    """Sizes of a typical write (client 17's 123,457th of run 5) on each side, in bytes."""
    instance_id, value = entry_bytes(uuid.uuid4().hex, 123457, 5, 17, 123456)
    return {"registry_entry_bytes": len(value), "etcd_key_bytes": len(f"bench/{instance_id}"),
            "etcd_value_bytes": len(value),
            "etcd_http_body_bytes": len(etcd_put_body(uuid.uuid4().hex, 123457, 5, 17, 123456))}


# ---------------------------------------------------------------------------------------------
# A local etcd cluster


def find_etcd() -> str | None:
    for c in ETCD_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("etcd")


class EtcdCluster:
    """``members`` etcd processes on loopback, data and logs under ``root`` (removed with it by
    the caller). Context manager: leaving it stops every member (SIGTERM, SIGKILL after
    STOP_WAIT_S)."""

    def __init__(self, exe: str, members: int, root: Path) -> None:
        self.exe, self.root = exe, root
        self.names = [f"e{i}" for i in range(1, members + 1)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []
        self._assign_ports()

    def _assign_ports(self) -> None:
        self.token = f"bench-{os.getpid()}-{time.monotonic_ns()}"  # one per cluster (and attempt)
        ports = pick_ports(2 * len(self.names))
        self.peer = {n: f"http://{HOST}:{ports[2 * i]}" for i, n in enumerate(self.names)}
        self.client = {n: f"{HOST}:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}

    @property
    def servers(self) -> list[str]:
        return [self.client[n] for n in self.names]

    def command(self, name: str) -> list[str]:
        initial = ",".join(f"{n}={self.peer[n]}" for n in self.names)
        return [self.exe, "--name", name, "--data-dir", str(self.root / name),
                "--listen-peer-urls", self.peer[name], "--initial-advertise-peer-urls", self.peer[name],
                "--listen-client-urls", f"http://{self.client[name]}",
                "--advertise-client-urls", f"http://{self.client[name]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token]

    def start(self, attempts: int = 3) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            for name in self.names:
                log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop())
                self._logs.append(log)
                self.procs[name] = subprocess.Popen(
                    self.command(name), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=self.root, start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509 (as cluster.py)
            time.sleep(1.0)
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if not dead:
                return
            progress(f"etcd member(s) {', '.join(dead)} exited at start (attempt {attempt}):\n{self.log_tail(dead[0])}")
            self.stop()
            for n in self.names:
                shutil.rmtree(self.root / n, ignore_errors=True)
            self._assign_ports()
        raise RuntimeError(f"etcd did not start after {attempts} attempts; logs in {self.root}")

    def log_tail(self, name: str, lines: int = 10) -> str:
        try:
            text = (self.root / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def status(self, name: str, timeout_s: float = 2.0) -> dict[str, Any]:
        """POST /v3/maintenance/status of one member (leader id, raft term and index...)."""
        conn = http.client.HTTPConnection(self.client[name], timeout=timeout_s)
        try:
            conn.request("POST", "/v3/maintenance/status", body=b"{}", headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{name}: HTTP {resp.status} {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def statuses(self) -> dict[str, dict[str, Any] | str]:
        out: dict[str, dict[str, Any] | str] = {}
        for n in self.names:
            try:
                out[n] = self.status(n)
            except (OSError, RuntimeError, ValueError) as exc:
                out[n] = f"{type(exc).__name__}: {exc}"
        return out

    def wait_leader(self, timeout_s: float = ETCD_WAIT_S) -> dict[str, Any]:
        """Once every member answers and all name the same leader: {leader, term, member}."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"etcd member {dead[0]} exited:\n{self.log_tail(dead[0])}")
            last = self.statuses()
            ok = [s for s in last.values() if isinstance(s, dict)]
            leaders = {s.get("leader") for s in ok}
            if len(ok) == len(self.names) and len(leaders) == 1 and None not in leaders and "0" not in leaders:
                leader = leaders.pop()
                member = next((n for n, s in last.items() if s["header"]["member_id"] == leader), None)
                return {"leader": member, "term": int(ok[0].get("raftTerm", 0))}
            time.sleep(0.2)
        raise RuntimeError(f"etcd: no leader within {timeout_s:g} s; last statuses: {last}")

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items() if p.poll() is None}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for n, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                progress(f"etcd {n} did not stop within {STOP_WAIT_S:g} s; killing it")
                p.kill()
                p.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# etcd as a load target (bench/load.py's Target), and the one measurement of both systems


class EtcdError(Exception):
    pass


class EtcdWriter:
    """One client: one keep-alive HTTP connection to the gateway of ``server`` (reconnects after
    an error); its write i puts `etcd_put_body` of (run, client, i)."""

    def __init__(self, server: str, run: int, index: int) -> None:
        self.server, self.run, self.index = server, run, index
        self.client_id = uuid.uuid4().hex
        self.conn: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        self.conn = http.client.HTTPConnection(self.server, timeout=ETCD_TIMEOUT_S)
        with contextlib.suppress(OSError):
            self.conn.connect()

    def write(self, i: int) -> None:
        body = etcd_put_body(self.client_id, i + 1, self.run, self.index, i)
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.server, timeout=ETCD_TIMEOUT_S)
        try:
            self.conn.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()
            raise
        if resp.status != 200:
            raise EtcdError(f"HTTP {resp.status}: {data[:200]!r}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass(frozen=True)
class EtcdPuts:
    """etcd: client k on member k mod n (a follower forwards to the leader, as a registry
    follower does)."""

    timeout_s: float = ETCD_TIMEOUT_S
    errors: tuple[type[BaseException], ...] = (OSError, EtcdError, http.client.HTTPException)

    def writer(self, servers: Sequence[str], run: int, index: int) -> EtcdWriter:
        return EtcdWriter(servers[index % len(servers)], run, index)


@dataclass
class System:
    """One side of the comparison: its load target, its client addresses, its server processes
    and its (leader, term) once every member agrees."""

    name: str
    target: Target
    servers: list[str]
    pids: Callable[[], dict[str, int]]
    leader: Callable[[], tuple[str | None, int]]


def registry_system(cluster: LocalCluster) -> System:
    def leader() -> tuple[str | None, int]:
        s = cluster.wait_leader()
        return s.node, s.term

    return System("registry", Registrations(), cluster.servers, cluster.pids, leader)


def etcd_system(etcd: EtcdCluster) -> System:
    def leader() -> tuple[str | None, int]:
        s = etcd.wait_leader()
        return s["leader"], s["term"]

    return System("etcd", EtcdPuts(), etcd.servers, etcd.pids, leader)


ROW_KEYS = ("writes", "writes_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "errors", "late",
            "clients", "procs")


def measure(system: System, run: int, clients: int, seconds: float, procs: int) -> dict[str, Any]:
    """One run of ``clients`` closed-loop clients against ``system``: the load's figures, its
    servers' CPU and disk writes and the machine's CPU over the window, leader and term moves."""
    leader_before, term_before = system.leader()
    window = Window(system.pids())
    t = run_load(system.target, system.servers, run, clients, seconds, procs, on_start=window.open,
                 on_end=window.close)
    leader_after, term_after = system.leader()
    row = {k: t[k] for k in ROW_KEYS}
    row.update(client_cpu_pct=t["client_cpu_pct"], nodes_cpu_pct=window.total_cpu_pct(),
               machine_cpu_pct=window.machine_cpu_pct(), leader=leader_after, leader_before=leader_before,
               elections=term_after - term_before, nodes=window.processes())
    return row


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return round(a / b, 3)


def summarise(rows: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    """Per level: the median over rounds of each system's writes/s, p50, p99, and of the ratios
    registry/etcd of each round (the ratio of medians is close; the median of per-round ratios
    is what cancels drift best, the two are both given)."""
    out = []
    for c in levels:
        per_round: dict[int, dict[str, dict[str, Any]]] = {}
        for r in rows:
            if r["clients"] == c:
                per_round.setdefault(r["round"], {})[r["system"]] = r
        pairs = [v for v in per_round.values() if "registry" in v and "etcd" in v]
        s: dict[str, Any] = {"clients": c, "rounds": len(pairs)}
        for system in ("registry", "etcd"):
            for key in ("writes_per_s", "p50_ms", "p99_ms"):
                vals = [p[system][key] for p in pairs if p[system][key] == p[system][key]]
                s[f"{system}_{key}"] = round(statistics.median(vals), 3) if vals else None
        for key in ("writes_per_s", "p50_ms", "p99_ms"):
            vals = [x for x in (ratio(p["registry"][key], p["etcd"][key]) for p in pairs) if x is not None]
            s[f"ratio_{key}"] = round(statistics.median(vals), 3) if vals else None
            s[f"ratio_{key}_rounds"] = vals
        out.append(s)
    return out


def print_table(r: dict[str, Any]) -> None:
    cfg, w = r["config"], r["write_sizes"]
    print_header(r, f"registry vs etcd {r.get('etcd_version', '')}: 3 durable nodes each on loopback")
    print(f"writes: registry registration = a {w['registry_entry_bytes']}-byte log entry; etcd put of those same bytes "
          f"as the value under a {w['etcd_key_bytes']}-byte key; {cfg['seconds']:g} s per run, {cfg['rounds']} round(s), "
          f"order per round: {', '.join('/'.join(o) for o in cfg['orders'])}\n")
    print(f"{'each run':<22}{'system':>9}{'procs':>6}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
          f"{'servers':>9}{'clients':>9}{'other':>7}{'machine':>9}")
    for x in r["runs"]:
        print(f"{'round ' + str(x['round']) + ', ' + str(x['clients']) + ' clients':<22}{x['system']:>9}{x['procs']:>6}"
              f"{x['writes_per_s']:>10.0f}{num(x['p50_ms']):>9}{num(x['p99_ms']):>9}{num(x['max_ms'], '.1f'):>9}"
              f"{sum(x['errors'].values()):>8}{x['nodes_cpu_pct']:>8.0f}%{x['client_cpu_pct']['total']:>8.0f}%"
              f"{num(x.get('other_cpu_pct'), '.0f'):>6}%{num(x['machine_cpu_pct'], '.0f'):>8}%")
    print(f"\nmedians over rounds{'':<3}{'registry':>27}{'etcd':>27}{'registry / etcd':>27}")
    print(f"{'clients':<22}" + f"{'writes/s':>10}{'p50 ms':>8}{'p99 ms':>9}" * 2 + f"{'writes/s':>10}{'p50':>8}{'p99':>9}")
    for s in r["summary"]:
        print(f"{s['clients']:<22}"
              + "".join(f"{num(s[f'{sys_}_writes_per_s'], '.0f'):>10}{num(s[f'{sys_}_p50_ms']):>8}"
                        f"{num(s[f'{sys_}_p99_ms']):>9}" for sys_ in ("registry", "etcd"))
              + f"{num(s['ratio_writes_per_s']):>10}{num(s['ratio_p50_ms']):>8}{num(s['ratio_p99_ms']):>9}")
    print("CPU in % of one core over the window: servers = the 3 agents (registry, without their DNS children) or "
          "the 3 etcd members; other = the rest of the machine")
    print("\nratios are medians of each round's registry/etcd: writes/s above 1 and latency below 1 favour the registry")
    for x in r["runs"]:
        if x["errors"]:
            print(f"note: round {x['round']}, {x['clients']} clients, {x['system']}: errors {x['errors']}")
        if x["elections"]:
            print(f"note: round {x['round']}, {x['clients']} clients, {x['system']}: the term moved by {x['elections']}")
        if max(x["client_cpu_pct"]["per_proc"], default=0) > 80:
            print(f"note: round {x['round']}, {x['clients']} clients, {x['system']}: a client process used "
                  f"{max(x['client_cpu_pct']['per_proc']):.0f}% of a core: the client side may limit it (--procs)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each run (default 5)")
    parser.add_argument("--clients", dest="levels", metavar="CLIENTS", type=numbers, default="1,16,64",
                        help="concurrency levels, comma-separated (default 1,16,64)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating which system goes first (default 2)")
    parser.add_argument("--warmup", type=int, default=100, help="writes through each node/member first (default 100)")
    parser.add_argument("--procs", default="auto", type=positive_procs,
                        help="client worker processes: a number, or auto (as writes.py)")
    parser.add_argument("--etcd", help="the etcd binary (default /usr/bin/etcd, else etcd on PATH)")
    add_options(parser)
    args = parser.parse_args(argv)
    if any(c < 1 or c > 1024 for c in args.levels) or args.rounds < 1:
        parser.error("each --clients level must be 1-1024 and --rounds at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    exe = args.etcd or find_etcd()
    if exe is None or not os.access(exe, os.X_OK):
        raise RuntimeError(f"etcd not found{' at ' + exe if exe else ''}: install Debian's etcd-server "
                           "(apt-get install -y etcd-server) or pass --etcd")
    root, fs = bench_root("registry-bench-etcd-", args.dir, progress)
    version = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True).stdout.splitlines()
    orders = [("registry", "etcd") if r % 2 == 0 else ("etcd", "registry") for r in range(args.rounds)]
    result: dict[str, Any] = {
        "benchmark": "compare_etcd", "format": 1, "machine": machine_info(root),
        "etcd_version": version[0].split()[-1] if version else "?", "etcd_binary": exe,
        "write_sizes": write_sizes(),
        "config": {"nodes": 3, "seconds": args.seconds, "clients": args.levels, "rounds": args.rounds,
                   "orders": orders, "warmup_per_node": args.warmup, "procs": args.procs},
    }
    runs = itertools.count(1)
    try:
        progress("disk: 1 s of durable LMDB commits (bench/storage.py)")
        result["disk_before"] = fsync_probe(root)
        with LocalCluster(3, root / "registry", agent_args=args.agent_arg) as cluster, \
                EtcdCluster(exe, 3, root / "etcd") as etcd:
            progress(f"starting 3 registry agents (client ports {', '.join(cluster.servers)}) and 3 etcd members "
                     f"(client URLs {', '.join(etcd.servers)}) in {root} ({fs})")
            cluster.start()
            etcd.start()
            leader = cluster.wait_leader()
            eleader = etcd.wait_leader()
            result["cluster"] = {"registry": {"leader": leader.node, "term": leader.term,
                                              "nodes": {n: {"pid": a.pid, "client": a.client}
                                                        for n, a in cluster.agents.items()}},
                                 "etcd": {"leader": eleader["leader"], "term": eleader["term"],
                                          "members": {n: {"pid": p, "client": etcd.client[n]}
                                                      for n, p in etcd.pids().items()}}}
            progress(f"registry leader {leader.node}, etcd leader {eleader['leader']}")
            systems = {s.name: s for s in (registry_system(cluster), etcd_system(etcd))}
            if args.warmup:
                progress(f"warm-up: {args.warmup} writes through each node of each system")
                for system in systems.values():
                    warm_up(system.target, system.servers, runs, args.warmup)
            result["runs"] = []
            for rnd, order in enumerate(orders, 1):
                for clients in args.levels:
                    procs = procs_for(args.procs, clients)
                    for name in order:
                        progress(f"round {rnd}: {name}, {clients} clients for {args.seconds:g} s")
                        row = measure(systems[name], next(runs), clients, args.seconds, procs)
                        row.update(system=name, round=rnd)
                        if row["machine_cpu_pct"] is not None:  # other people's processes, the kernel
                            row["other_cpu_pct"] = other_pct(row["machine_cpu_pct"], row["nodes_cpu_pct"],
                                                             row["client_cpu_pct"]["total"])
                        result["runs"].append(row)
                        progress(f"  {row['writes_per_s']:.0f} writes/s, p50 {num(row['p50_ms'])} ms, "
                                 f"p99 {num(row['p99_ms'])} ms, errors {sum(row['errors'].values())}, "
                                 f"servers CPU {row['nodes_cpu_pct']:.0f}%, clients CPU "
                                 f"{row['client_cpu_pct']['total']:.0f}%, machine {row['machine_cpu_pct']}%")
            result["summary"] = summarise(result["runs"], args.levels)
            result["machine"]["loadavg_after"] = loadavg()
            progress("disk: 1 s of durable LMDB commits again (both clusters idle)")
            result["disk_after"] = fsync_probe(root)
            progress("stopping both clusters")
    finally:
        if args.keep:
            progress(f"kept data and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return main_frame(parse_args(argv), print_table, run, progress,
                      interrupted="interrupted: both clusters were stopped")


if __name__ == "__main__":
    sys.exit(main())
