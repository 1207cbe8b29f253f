"""Side by side with etcd (not a test): the same writes, the same concurrency, in one run.

    .venv/bin/python bench/compare_etcd.py [--clients 1,16,64] [--seconds 5] [--rounds 2] [--json]

Starts, in one new temporary directory, a fresh durable 3-node registry cluster (writes.py's
`LocalCluster`: `registry agent` processes, LMDB, fsync per Ready) and a fresh durable 3-member
etcd cluster (Debian's `etcd-server`, /usr/bin/etcd, default timeouts and default fsync), both on
loopback ports picked free. Then for each round and each concurrency level C, C closed-loop
clients write to one system for --seconds, then to the other: registry first in even rounds,
etcd first in odd ones (A B, B A, ...), so that drift on a shared machine cancels in the medians.

- registry: writes.py's `run_load`, i.e. `registry.client.Client`, one per thread, client k starts
  at node k mod 3; each write registers a new instance (writes.py's `registration`).
- etcd: its normal HTTP/JSON client path, the gRPC gateway (`POST /v3/kv/put`, base64 key and
  value), one keep-alive `http.client` connection per client thread, client k on member k mod 3.
  Each put writes a new key `bench/<instance id>` whose value is exactly the bytes the registry
  puts in its Raft log for that same registration (`encode_request`: about 190-196 bytes), so
  both logs carry writes of the same size.

Both loads use the same worker-process/thread layout (--procs, as writes.py) and the same
window: only writes completed within it count. Reports per level writes/s, p50/p99 for each
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
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import (
    HOST,
    LocalCluster,
    STOP_WAIT_S,
    _die_with_parent,
    _no_nan,
    bench_root,
    box_cpu,
    fsync_probe,
    machine_info,
    pick_ports,
    proc_cpu_s,
    proc_io,
    stop_on_signals,
)
from writes import (
    Probe,
    _num,
    _output,
    default_procs,
    registration,
    rotate,
    run_load,
    run_sequential,
)

from registry.catalogue.commands import Register, Request, encode_request
from registry.client import RegistryError

ETCD_CANDIDATES = ("/usr/bin/etcd",)
ETCD_WAIT_S = 30.0
ETCD_TIMEOUT_S = 5.0  # per request, as writes.py's CLIENT_TIMEOUT_S


def progress(message: str) -> None:
    print(f"[compare_etcd] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The write both systems take


def entry_bytes(client_id: str, seq: int, run: int, client: int, i: int) -> tuple[str, bytes]:
    """(instance id, the registry's Raft log entry) of write ``i`` of ``client`` in ``run``:
    exactly what the registry logs for writes.py's registration (run, client, i)."""
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
                    cwd=self.root, start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509 (as writes.py)
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
# etcd load: closed-loop clients, threads in worker processes (writes.py's run_load, for HTTP)


class EtcdClient:
    """One keep-alive HTTP connection to the gateway of ``server`` (reconnects on errors)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.conn: http.client.HTTPConnection | None = None

    def put(self, body: bytes) -> None:
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


class EtcdError(Exception):
    pass


def run_etcd_sequential(server: str, run: int, writes: int) -> int:
    client, client_id, done = EtcdClient(server), uuid.uuid4().hex, 0
    try:
        for i in range(writes):
            with contextlib.suppress(OSError, EtcdError, http.client.HTTPException):
                client.put(etcd_put_body(client_id, i + 1, run, 0, i))
                done += 1
    finally:
        client.close()
    return done


def _etcd_thread(server: str, run: int, index: int, connected: threading.Barrier, window: list[float],
                 out: list[Any]) -> None:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    late = 0
    client, client_id = EtcdClient(server), uuid.uuid4().hex
    try:
        with contextlib.suppress(Exception):  # connect before the start
            client.conn = http.client.HTTPConnection(server, timeout=ETCD_TIMEOUT_S)
            client.conn.connect()
        connected.wait()
        connected.wait()  # the second time: the window is set
        start_at, end_at = window
        time.sleep(max(0.0, start_at - time.monotonic()))
        for i in itertools.count():
            t0 = time.monotonic()
            if t0 >= end_at:
                break
            try:
                client.put(etcd_put_body(client_id, i + 1, run, index, i))
            except (OSError, EtcdError, http.client.HTTPException) as exc:
                if time.monotonic() <= end_at:
                    errors[type(exc).__name__] += 1
                continue
            t1 = time.monotonic()
            if t1 <= end_at:
                latencies.append(t1 - t0)
            else:
                late += 1
    finally:
        client.close()
    out.append((latencies, errors, late))


def _etcd_worker(servers: list[str], run: int, indexes: list[int], seconds: float, ready: Any, go: Any,
                 start_at: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    out: list[Any] = []
    window: list[float] = []
    connected = threading.Barrier(len(indexes) + 1)
    threads = [threading.Thread(target=_etcd_thread, daemon=True,
                                args=(servers[k % len(servers)], run, k, connected, window, out)) for k in indexes]
    for t in threads:
        t.start()
    connected.wait(timeout=60)
    ready.put(os.getpid())
    go.wait()
    begin = start_at.value
    window[:] = [begin, begin + seconds]
    connected.wait(timeout=60)
    time.sleep(max(0.0, begin - time.monotonic()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, begin + seconds - time.monotonic()))
    cpu = time.process_time() - cpu0
    for t in threads:
        t.join()
    errors: Counter[str] = Counter()
    for _, e, _ in out:
        errors.update(e)
    results.put({"pid": os.getpid(), "latencies": [x for lat, _, _ in out for x in lat], "errors": dict(errors),
                 "late": sum(n for _, _, n in out), "cpu_s": cpu})


def run_etcd_load(servers: list[str], run: int, clients: int, seconds: float, procs: int,
                  on_start: Any = None, on_end: Any = None) -> dict[str, Any]:
    """writes.py's run_load for etcd: the same worker layout, window and result fields."""
    return run_load(servers, run, clients, seconds, procs, on_start, on_end, worker=_etcd_worker,
                    result_timeout_s=ETCD_TIMEOUT_S + 30)


class PidProbe:
    """CPU and disk writes of a set of server processes, and the machine's CPU, over a window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def _sample(self) -> tuple[float, dict[str, float], dict[str, int], tuple[float, float]]:
        return (time.monotonic(), {n: proc_cpu_s(p) for n, p in self.pids.items()},
                {n: proc_io(p).get("write_bytes", 0) for n, p in self.pids.items()}, box_cpu())

    def window_open(self) -> None:
        self.s0 = self._sample()

    def window_close(self) -> None:
        self.s1 = self._sample()

    def after(self) -> dict[str, Any]:
        (t0, c0, io0, b0), (t1, c1, io1, b1) = self.s0, self.s1
        elapsed = t1 - t0
        total = b1[1] - b0[1]
        return {"nodes": {n: {"cpu_pct": round(100 * (c1[n] - c0[n]) / elapsed, 1),
                              "disk_written_mb": round((io1.get(n, 0) - io0.get(n, 0)) / 1e6, 2)} for n in self.pids},
                "nodes_cpu_pct": round(100 * sum(c1[n] - c0[n] for n in self.pids) / elapsed, 1),
                "machine_cpu_pct": round(100 * (os.cpu_count() or 1) * (b1[0] - b0[0]) / total, 1) if total else None}


# ---------------------------------------------------------------------------------------------
# The run


ROW_KEYS = ("writes", "writes_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "errors", "late",
            "clients", "procs")


def measure_registry(cluster: LocalCluster, run: int, clients: int, seconds: float, procs: int) -> dict[str, Any]:
    before = cluster.wait_leader()
    probe = Probe(cluster)
    probe.before()
    t = run_load(cluster.servers, run, clients, seconds, procs, on_start=probe.window_open,
                 on_end=probe.window_close)
    p = probe.after(t["writes"])
    row = {k: t[k] for k in ROW_KEYS}
    row.update(client_cpu_pct=t["client_cpu_pct"], nodes_cpu_pct=p["nodes_cpu_pct"],
               machine_cpu_pct=p["machine_cpu_pct"], leader=p["leader"], leader_before=before.node,
               elections=p["elections"], nodes={n: {"cpu_pct": r["cpu_pct"], "disk_written_mb": r["disk_written_mb"]}
                                                for n, r in p["nodes"].items()})
    return row


def measure_etcd(etcd: EtcdCluster, run: int, clients: int, seconds: float, procs: int) -> dict[str, Any]:
    before = etcd.wait_leader()
    probe = PidProbe(etcd.pids())
    t = run_etcd_load(etcd.servers, run, clients, seconds, procs, on_start=probe.window_open,
                      on_end=probe.window_close)
    p = probe.after()
    after = etcd.wait_leader()
    row = {k: t[k] for k in ROW_KEYS}
    row.update(client_cpu_pct=t["client_cpu_pct"], nodes_cpu_pct=p["nodes_cpu_pct"],
               machine_cpu_pct=p["machine_cpu_pct"], leader=after["leader"], leader_before=before["leader"],
               elections=after["term"] - before["term"], nodes=p["nodes"])
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
    m, cfg, w = r["machine"], r["config"], r["write_sizes"]
    print(f"registry vs etcd {r.get('etcd_version', '')}: 3 durable nodes each on loopback, {m['cpus']} CPUs, load average "
          f"{m['loadavg_before'][0]:g} before and {m.get('loadavg_after', ['?'])[0]} after, data on {m['data_filesystem']}")
    if "disk_before" in r:
        b, a = r["disk_before"], r.get("disk_after") or {}
        print(f"disk: a durable LMDB commit (bench/storage.py) took p50 {b['p50_ms']:.2f} ms / p99 {b['p99_ms']:.2f} ms "
              f"before the run and p50 {_num(a.get('p50_ms'))} / p99 {_num(a.get('p99_ms'))} ms after")
    print(f"writes: registry registration = a {w['registry_entry_bytes']}-byte log entry; etcd put of those same bytes "
          f"as the value under a {w['etcd_key_bytes']}-byte key; {cfg['seconds']:g} s per run, {cfg['rounds']} round(s), "
          f"order per round: {', '.join('/'.join(o) for o in cfg['orders'])}\n")
    print(f"{'each run':<22}{'system':>9}{'procs':>6}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
          f"{'servers':>9}{'clients':>9}{'other':>7}{'machine':>9}")
    for x in r["runs"]:
        print(f"{'round ' + str(x['round']) + ', ' + str(x['clients']) + ' clients':<22}{x['system']:>9}{x['procs']:>6}"
              f"{x['writes_per_s']:>10.0f}{_num(x['p50_ms']):>9}{_num(x['p99_ms']):>9}{_num(x['max_ms'], '.1f'):>9}"
              f"{sum(x['errors'].values()):>8}{x['nodes_cpu_pct']:>8.0f}%{x['client_cpu_pct']['total']:>8.0f}%"
              f"{_num(x.get('other_cpu_pct'), '.0f'):>6}%{_num(x['machine_cpu_pct'], '.0f'):>8}%")
    print(f"\nmedians over rounds{'':<3}{'registry':>27}{'etcd':>27}{'registry / etcd':>27}")
    print(f"{'clients':<22}" + f"{'writes/s':>10}{'p50 ms':>8}{'p99 ms':>9}" * 2 + f"{'writes/s':>10}{'p50':>8}{'p99':>9}")
    for s in r["summary"]:
        print(f"{s['clients']:<22}"
              + "".join(f"{_num(s[f'{sys_}_writes_per_s'], '.0f'):>10}{_num(s[f'{sys_}_p50_ms']):>8}"
                        f"{_num(s[f'{sys_}_p99_ms']):>9}" for sys_ in ("registry", "etcd"))
              + f"{_num(s['ratio_writes_per_s']):>10}{_num(s['ratio_p50_ms']):>8}{_num(s['ratio_p99_ms']):>9}")
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each run (default 5)")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels, comma-separated (default 1,16,64)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating which system goes first (default 2)")
    parser.add_argument("--warmup", type=int, default=100, help="writes through each node/member first (default 100)")
    parser.add_argument("--procs", default="auto", help="client worker processes: a number, or auto (as writes.py)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="parent of the temporary directory of both clusters (a real disk, not tmpfs)")
    parser.add_argument("--etcd", help="the etcd binary (default /usr/bin/etcd, else etcd on PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--show", type=Path, metavar="FILE", help="print the table of a saved --json result and exit")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients: expected numbers like 1,16,64, got {args.clients!r}")
    if any(c < 1 or c > 1024 for c in args.levels) or args.rounds < 1:
        parser.error("each --clients level must be 1-1024 and --rounds at least 1")
    if args.procs != "auto" and not (args.procs.isdigit() and int(args.procs) >= 1):
        parser.error("--procs: a positive number or auto")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show is not None:
        return _output(lambda: print_table(json.loads(args.show.read_text())))
    exe = args.etcd or find_etcd()
    if exe is None:
        progress("etcd not found: install Debian's etcd-server (apt-get install -y etcd-server) or pass --etcd")
        return 2

    stop_on_signals()
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
        with LocalCluster(3, root / "registry") as cluster, EtcdCluster(exe, 3, root / "etcd") as etcd:
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
            if args.warmup:
                progress(f"warm-up: {args.warmup} writes through each node of each system")
                for k in range(3):
                    run_sequential(rotate(cluster.servers, k), next(runs), args.warmup)
                    run_etcd_sequential(etcd.servers[k], next(runs), args.warmup)
            result["runs"] = []
            for rnd, order in enumerate(orders, 1):
                for clients in args.levels:
                    procs = default_procs(clients) if args.procs == "auto" else int(args.procs)
                    for system in order:
                        progress(f"round {rnd}: {system}, {clients} clients for {args.seconds:g} s")
                        if system == "registry":
                            row = measure_registry(cluster, next(runs), clients, args.seconds, procs)
                        else:
                            row = measure_etcd(etcd, next(runs), clients, args.seconds, procs)
                        row.update(system=system, round=rnd)
                        if row["machine_cpu_pct"] is not None:  # other people's processes, the kernel
                            row["other_cpu_pct"] = round(max(0.0, row["machine_cpu_pct"] - row["nodes_cpu_pct"]
                                                             - row["client_cpu_pct"]["total"]), 1)
                        result["runs"].append(row)
                        progress(f"  {row['writes_per_s']:.0f} writes/s, p50 {row['p50_ms']:.2f} ms, "
                                 f"p99 {row['p99_ms']:.2f} ms, errors {sum(row['errors'].values())}, "
                                 f"servers CPU {row['nodes_cpu_pct']:.0f}%, clients CPU "
                                 f"{row['client_cpu_pct']['total']:.0f}%, machine {row['machine_cpu_pct']}%")
            result["summary"] = summarise(result["runs"], args.levels)
            result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            progress("disk: 1 s of durable LMDB commits again (both clusters idle)")
            result["disk_after"] = fsync_probe(root)
            progress("stopping both clusters")
    except KeyboardInterrupt:
        progress("interrupted: both clusters were stopped")
        return 130
    except (RuntimeError, OSError, RegistryError) as exc:
        progress(f"error: {exc}")
        return 1
    finally:
        if args.keep:
            progress(f"kept data and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        return _output(lambda: print(json.dumps(_no_nan(result), indent=2 if sys.stdout.isatty() else None,
                                                allow_nan=False)))
    return _output(lambda: print_table(result))


if __name__ == "__main__":
    sys.exit(main())
