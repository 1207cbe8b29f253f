"""Health checks at scale (not a test): what one leader probing many TCP checks and renewing
many TTL instances costs Raft, measured side by side with the same cluster without them
(issue 14, point 6).

    .venv/bin/python -m bench.health [--tcp 10000] [--ttl 1000] [--interval 10] [--rounds 3]
                                     [--idle 10] [--seconds 15] [--generators-nice 19] [--json] [--keep]
    .venv/bin/python -m bench.health --quick         # 2,000 TCP checks, 200 TTL instances
    .venv/bin/python -m bench.health --show result.json

Starts a fresh durable 3-node cluster of real `registry agent` processes (bench/cluster.py), a
listener process (accepts and closes TCP connections on --addresses loopback addresses
127.0.1.x, one port) and registers --tcp + --ttl instances twice over, flipping between:

- ``off`` (a): every instance registered *without* a check (the same catalogue, nothing to probe
  or renew): the baseline;
- ``on`` (b): the --tcp instances with ``--check tcp`` every --interval s (addresses on the
  listener, so every probe succeeds), the --ttl instances with a TTL of --ttl-ms, renewed every
  second by a renewer process (--renewers threads, each a `Client` starting at node k mod 3,
  calling `Client.heartbeat`).

Each round measures both, one right after the other (every second round in reverse order, so
neither always runs later), each phase being two windows:

- ``idle`` (--idle s): no benchmark writes; the CPU of each agent, the leader's prober child,
  the renewer and the listener (bench/window.py's `Window`): what the health checks cost alone;
- ``writes`` (--seconds s): sequential registrations through the leader (bench/load.py's
  `run_load` with one client: its window, its latencies), and the same CPU figures.

Over both windows every node's `status` is polled every --poll s: each follower's
``last_contact_ms`` of the leader (the age of the last Raft message from it: a proxy of the
heartbeat latency; the leader's view of each follower too), and at the edges the commit index
and the leader's health counters. ``entries`` is the commit index's growth minus the writes the
benchmark made in the windows (the target: 0: only transitions are replicated, and a steady
state has none). Flips happen outside the windows. Prints a table (or one JSON object with
--json), progress on stderr, and always stops every process it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import multiprocessing as mp
import os
import random
import selectors
import signal
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import PORT_RANGE, RESERVED_PORTS, LocalCluster  # noqa: E402
from bench.load import Registrations, fill, retrying, rotate, run_load  # noqa: E402
from bench.proc import die_with_parent  # noqa: E402
from bench.script import (  # noqa: E402
    add_options, bench_root, fsync_probe, loadavg, machine_info, main_frame, new_parser, num, print_header, reporter,
)
from bench.window import Latencies, Window, other_pct  # noqa: E402
from registry.client import Client, RegistryError  # noqa: E402

FILL_THREADS = 16
TCP_SERVICES = 100  # the TCP instances are spread over this many services
TTL_SERVICES = 10
DISTINCT_WRITES = 1000  # the sequential writer upserts instance i mod this: a bounded catalogue
STEADY_WAIT_S = 60.0  # for the leader's prober to hold (or drop) every check
STATUS_TIMEOUT_S = 2.0
WORKER_WAIT_S = 30.0  # for a helper process to say it is ready
RENEW_PERIOD_S = 1.0
TARGET_RATIO = 1.2
QUICK = {"tcp": 2000, "ttl": 200, "rounds": 2, "idle": 4.0, "seconds": 6.0}

progress = reporter("health")


# ---------------------------------------------------------------------------------------------
# The helper processes: a listener the TCP checks reach, and the TTL renewer


def _listener(addresses: list[str], nice: int, ready: Any, stop: Any, deadline_s: float) -> None:
    """Binds one port free on every address, says it on ``ready``, then accepts and closes every
    connection until ``stop`` is set, its parent dies, or ``deadline_s`` passes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    os.nice(nice)
    rng = random.Random()
    socks: list[socket.socket] = []
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        if port in RESERVED_PORTS:
            continue
        try:
            for address in addresses:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((address, port))
                s.listen(4096)
                s.setblocking(False)
            break
        except OSError:
            for s in socks:
                s.close()
            socks.clear()
    if not socks:
        ready.put(("error", f"no port free on all of {addresses[0]}..{addresses[-1]}"))
        return
    ready.put(("port", port))
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    end = time.monotonic() + deadline_s
    while not stop.is_set() and time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            for _ in range(64):  # bounded: drain a burst, then look at the others
                try:
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                conn.close()


def _renew(servers: list[str], k: int, ids: list[tuple[str, str]], stop: Any, counts: Any) -> None:
    """One renewer thread: heartbeats each of ``ids`` once per RENEW_PERIOD_S until ``stop``;
    adds to ``counts`` (ok, failed, late rounds) after each round."""
    ok = failed = late = 0
    with Client(rotate(servers, k), timeout_s=RENEW_PERIOD_S) as client:
        next_at = time.monotonic() + random.random() * RENEW_PERIOD_S  # spread the threads over the period
        while not stop.is_set():
            stop.wait(max(0.0, next_at - time.monotonic()))
            if stop.is_set():
                break
            for service, instance_id in ids:
                try:
                    client.heartbeat(instance_id, service)
                    ok += 1
                except RegistryError:
                    failed += 1
            next_at += RENEW_PERIOD_S
            if time.monotonic() > next_at:  # the round took longer than the period
                late += 1
                next_at = time.monotonic()
            with counts.get_lock():
                counts[0] += ok
                counts[1] += failed
                counts[2] += late
            ok = failed = late = 0


def _renewer(servers: list[str], ids: list[tuple[str, str]], threads: int, counts: Any, nice: int, ready: Any,
             stop: Any, deadline_s: float) -> None:
    """The renewer process: ``threads`` threads sharing ``ids``; stops on ``stop``, when its
    parent dies, or after ``deadline_s``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    os.nice(nice)
    pool = [threading.Thread(target=_renew, args=(servers, k, ids[k::threads], stop, counts), daemon=True)
            for k in range(threads)]
    for t in pool:
        t.start()
    ready.put(("ok", len(pool)))
    stop.wait(deadline_s)
    stop.set()
    for t in pool:
        t.join(timeout=5)


CTX = mp.get_context("spawn")  # NB: no fork: this process holds ZeroMQ sockets and threads


class Helper:
    """A helper process (spawned, dies with us): ``target(*args, ready, stop, deadline_s)``;
    start, wait until it says it is ready, stop."""

    def __init__(self, target: Callable[..., None], *args: Any, deadline_s: float) -> None:
        self.ready, self.stop_event = CTX.Queue(), CTX.Event()
        self.proc = CTX.Process(target=target, args=(*args, self.ready, self.stop_event, deadline_s), daemon=True)

    def start(self) -> Any:
        self.proc.start()
        deadline = time.monotonic() + WORKER_WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # queue.Empty
                kind, value = self.ready.get(timeout=0.5)
                if kind == "error":
                    raise RuntimeError(value)
                return value
            if self.proc.exitcode is not None:
                raise RuntimeError(f"a helper process exited with status {self.proc.exitcode}")
        raise RuntimeError(f"a helper process did not start within {WORKER_WAIT_S:g} s")

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> None:
        self.stop_event.set()
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# The instances and the flips between "off" and "on"


def tcp_instance(i: int, addresses: Sequence[str], port: int) -> tuple[str, str, str, int]:
    """(service, id, address, port) of TCP instance ``i``: on the listener."""
    return f"hc-{i % TCP_SERVICES:02d}", f"tcp-{i:05d}", addresses[i % len(addresses)], port


def ttl_instance(j: int) -> tuple[str, str, str, int]:
    return f"ttl-{j % TTL_SERVICES}", f"ttl-{j:04d}", f"10.99.{j >> 8 & 0xFF}.{j & 0xFF}", 9000


def register_all(servers: list[str], instances: list[tuple[str, str, str, int]], check: dict[str, Any] | None,
                 what: str) -> dict[str, Any]:
    """Registers every instance (replacing its definition) with ``check``, from FILL_THREADS
    client threads; returns the writes made and the retried errors."""
    errors: Counter[str] = Counter()

    def job(client: Client, i: int) -> None:
        service, instance_id, address, port = instances[i]
        retrying(lambda: client.register(service, address, port, id=instance_id, check=check), errors)

    seconds = fill(servers, FILL_THREADS, len(instances), job, what=what)
    progress(f"  {what}: {len(instances)} writes in {seconds:.1f} s" + (f", retried {dict(errors)}" if errors else ""))
    return {"writes": len(instances), "seconds": round(seconds, 2), "errors": dict(errors)}


# ---------------------------------------------------------------------------------------------
# What the nodes say


def raw_status(client: Client) -> dict[str, Any]:
    """A node's whole `status`, as plain maps (what `registry status --json` prints)."""
    return dataclasses.asdict(client.status())


class Nodes:
    """One single-server `Client` per node, for raw statuses."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.clients = {n: Client([cluster.agents[n].client], timeout_s=STATUS_TIMEOUT_S)
                        for n in cluster.names}

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            return raw_status(self.clients[name])
        except RegistryError:
            return None

    def all(self) -> dict[str, dict[str, Any] | None]:
        return {n: self.status(n) for n in self.clients}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


class ContactSampler:
    """A thread polling every node's status every ``poll_s`` until stopped (at most
    ``max_samples`` rounds): each follower's last contact with the leader, and the leader's
    with each follower, in ms."""

    def __init__(self, nodes: Nodes, leader: str, poll_s: float, max_seconds: float) -> None:
        self.nodes, self.leader, self.poll_s = nodes, leader, poll_s
        self.max_rounds = int(max_seconds / poll_s) + 10
        self.follower_ms: list[float] = []
        self.leader_ms: list[float] = []
        self.unanswered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="contact-sampler")

    def _run(self) -> None:
        for _ in range(self.max_rounds):
            t0 = time.monotonic()
            for name in self.nodes.clients:
                s = self.nodes.status(name)
                if s is None:
                    self.unanswered += 1
                    continue
                for peer, p in (s.get("peers") or {}).items():
                    ms = p.get("last_contact_ms")
                    if ms is None:
                        continue
                    if name == self.leader:
                        self.leader_ms.append(ms / 1000)
                    elif peer == self.leader:
                        self.follower_ms.append(ms / 1000)
            if self._stop.wait(max(0.0, t0 + self.poll_s - time.monotonic())):
                return

    def __enter__(self) -> ContactSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        f, ld = Latencies(self.follower_ms), Latencies(self.leader_ms)
        return {"samples": len(self.follower_ms), "follower_p50_ms": f.pct(50), "follower_p99_ms": f.pct(99),
                "follower_max_ms": f.pct(100), "leader_view_p50_ms": ld.pct(50), "leader_view_p99_ms": ld.pct(99),
                "leader_view_max_ms": ld.pct(100), "unanswered": self.unanswered}


def _health(status: dict[str, Any] | None) -> dict[str, Any]:
    return (status or {}).get("health") or {}


def wait_steady(nodes: Nodes, leader: str, checks: int, tracked: int, probed: bool) -> dict[str, Any]:
    """Until the leader's prober holds ``checks`` checks, its tracker ``tracked`` instances and,
    with ``probed``, the prober has made at least ``checks`` probes since: the steady state."""
    deadline = time.monotonic() + STEADY_WAIT_S
    probes0: int | None = None
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = _health(nodes.status(leader))
        prober = last.get("prober") or {}
        if prober.get("checks") == checks and last.get("tracked") == tracked:
            if not probed:
                return last
            probes0 = prober.get("probes", 0) if probes0 is None else probes0
            if prober.get("probes", 0) - probes0 >= checks:
                return last
        time.sleep(0.5)
    raise RuntimeError(f"the leader {leader} did not reach the steady state ({checks} checks, {tracked} tracked) "
                       f"within {STEADY_WAIT_S:g} s; its health status: {last}")


# ---------------------------------------------------------------------------------------------
# One phase: an idle window and a write window


def phase(cluster: LocalCluster, nodes: Nodes, leader: str, pids: dict[str, int], run: int,
          args: argparse.Namespace) -> dict[str, Any]:
    s0 = nodes.all()
    t0 = time.monotonic()
    idle = Window(pids)
    with ContactSampler(nodes, leader, args.poll, args.idle) as idle_contact:
        idle.open()
        time.sleep(args.idle)
        idle.close()
    s1 = nodes.all()
    t1 = time.monotonic()
    busy = Window(pids)
    order = rotate(cluster.servers, cluster.names.index(leader))  # client 0 writes through the leader
    with ContactSampler(nodes, leader, args.poll, args.seconds + 30) as write_contact:
        w = run_load(Registrations(distinct=DISTINCT_WRITES), order, run, 1, args.seconds, 1,
                     on_start=busy.open, on_end=busy.close)
    s2 = nodes.all()
    t2 = time.monotonic()

    def commit(s: dict[str, Any] | None) -> int | None:
        return None if s is None else s.get("commit")

    def counter(s: dict[str, Any] | None, *path: str) -> int:
        h: Any = _health(s)
        for key in path:
            h = (h or {}).get(key)
        return h or 0

    terms = {n: (s or {}).get("term") for n, s in s2.items()}
    leaders = {(s or {}).get("leader") for s in s2.values()}
    row: dict[str, Any] = {"elections": max((t or 0) - ((s0[n] or {}).get("term") or 0) for n, t in terms.items()),
                           "leader_after": leaders.pop() if len(leaders) == 1 else None}
    bench_writes = w["writes"] + w["late"] + sum(w["errors"].values())
    c0, c1, c2 = commit(s0[leader]), commit(s1[leader]), commit(s2[leader])
    if None not in (c0, c1, c2):
        row["entries_idle"] = c1 - c0  # type: ignore[operator]
        row["entries_writes"] = c2 - c1 - bench_writes  # type: ignore[operator]
        row["entries"] = row["entries_idle"] + row["entries_writes"]
    row["bench_writes"] = bench_writes
    row["transitions"] = counter(s2[leader], "transitions_proposed") - counter(s0[leader], "transitions_proposed")
    span = t2 - t0
    row["heartbeats_per_s"] = round((counter(s2[leader], "heartbeats") - counter(s0[leader], "heartbeats")) / span, 1)
    row["forwarded_per_s"] = round(sum(counter(s2[n], "renewals", "forwarded") - counter(s0[n], "renewals", "forwarded")
                                       for n in cluster.names if n != leader) / span, 1)
    row["batches_per_s"] = round(sum(counter(s2[n], "renewals", "batches") - counter(s0[n], "renewals", "batches")
                                     for n in cluster.names if n != leader) / span, 1)
    row["by_lease_per_s"] = round((counter(s2[leader], "renewals", "by_lease")
                                   - counter(s0[leader], "renewals", "by_lease")) / span, 1)
    row["renewals_dropped"] = sum(counter(s2[n], "renewals", "dropped") - counter(s0[n], "renewals", "dropped")
                                  for n in cluster.names)
    row["probes_per_s"] = round((counter(s2[leader], "prober", "probes") - counter(s0[leader], "prober", "probes"))
                                / span, 1)
    row["probe_failures"] = (counter(s2[leader], "prober", "failed") - counter(s0[leader], "prober", "failed"))
    row["max_lag_ms"] = counter(s2[leader], "prober", "max_lag_ms")
    row["idle"] = {"seconds": round(t1 - t0, 2), "cpu_pct": cpu(idle, leader), "contact": idle_contact.summary()}
    row["writes"] = {"seconds": args.seconds, "cpu_pct": cpu(busy, leader), "contact": write_contact.summary(),
                     **{k: w[k] for k in ("writes", "writes_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms",
                                          "mean_ms", "errors", "late")}}
    return row


def cpu(window: Window, leader: str) -> dict[str, Any]:
    """The window's CPU in % of one core: the leader, the followers, the leader's prober, the
    helpers, the machine, and what the rest of it used."""
    p = {n: r["cpu_pct"] for n, r in window.processes().items()}
    out = {"leader": p.get(leader), "followers": round(sum(v or 0 for n, v in p.items() if n.startswith("n")
                                                             and n != leader), 1),
           "prober": p.get("prober"), "renewer": p.get("renewer"), "listener": p.get("listener"),
           "machine": window.machine_cpu_pct()}
    out["irq"], out["steal"] = window.kernel_pct()
    out["other"] = other_pct(out["machine"], *(v for k, v in out.items() if k not in ("machine", "steal")))
    return out


# ---------------------------------------------------------------------------------------------
# The run


def prober_pid(nodes: Nodes, leader: str) -> int | None:
    pid = (_health(nodes.status(leader)).get("prober") or {}).get("pid")
    return pid if isinstance(pid, int) else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root, fs = bench_root("registry-bench-health-", args.dir, progress)
    addresses = [f"127.0.1.{x}" for x in range(1, args.addresses + 1)]
    check_tcp = {"kind": "tcp", "interval_ms": int(args.interval * 1000), "timeout_ms": int(args.timeout * 1000)}
    check_ttl = {"kind": "ttl", "ttl_ms": args.ttl_ms}
    result: dict[str, Any] = {
        "benchmark": "health", "format": 1, "machine": machine_info(root),
        "config": {"tcp": args.tcp, "ttl": args.ttl, "interval_s": args.interval, "timeout_s": args.timeout,
                   "ttl_ms": args.ttl_ms, "renewers": args.renewers, "renew_period_s": RENEW_PERIOD_S,
                   "addresses": args.addresses, "rounds": args.rounds, "idle_s": args.idle,
                   "seconds": args.seconds, "poll_s": args.poll, "agent_args": args.agent_arg,
                   "generators_nice": args.generators_nice},
        "flips": [], "rounds": [],
    }
    progress("disk: 1 s of durable LMDB commits (bench/storage.py)")
    result["disk_before"] = fsync_probe(root)
    # Bounded: every helper stops by itself after this long, even if we hang.
    life_s = 600.0 + args.rounds * (args.idle + args.seconds + 4 * args.interval + 120)
    listener = Helper(_listener, addresses, args.generators_nice, deadline_s=life_s)
    counts = CTX.Array("q", 3)  # the renewer's heartbeats: ok, failed, late rounds
    renewer: Helper | None = None
    nodes: Nodes | None = None
    try:
        port = listener.start()
        progress(f"listener {listener.pid}: {addresses[0]}..{addresses[-1]} port {port}")
        tcp = [tcp_instance(i, addresses, port) for i in range(args.tcp)]
        ttl = [ttl_instance(j) for j in range(args.ttl)]
        with LocalCluster(3, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
            progress(f"starting 3 agents in {root} ({fs})")
            cluster.start()
            leader = cluster.wait_leader().node
            nodes = Nodes(cluster)
            result["cluster"] = {"leader": leader, "nodes": {n: a.pid for n, a in cluster.agents.items()}}
            progress(f"leader {leader}; registering {args.tcp} + {args.ttl} instances without checks")
            result["flips"].append({"to": "off", **register_all(cluster.servers, tcp + ttl, None, "instances")})
            state = "off"
            runs = itertools.count(1)
            for r in range(args.rounds):
                order = ("off", "on") if r % 2 == 0 else ("on", "off")
                rows: dict[str, Any] = {}
                for kind in order:
                    if kind != state:
                        if kind == "on":
                            renewer = Helper(_renewer, cluster.servers, [(s, i) for s, i, _, _ in ttl],
                                             args.renewers, counts, args.generators_nice, deadline_s=life_s)
                            renewer.start()
                            f = register_all(cluster.servers, ttl, check_ttl, "TTL checks on")
                            g = register_all(cluster.servers, tcp, check_tcp, "TCP checks on")
                            h = wait_steady(nodes, leader, args.tcp, args.tcp + args.ttl, probed=True)
                        else:
                            f = register_all(cluster.servers, ttl, None, "TTL checks off")
                            assert renewer is not None
                            renewer.stop()
                            renewer = None
                            g = register_all(cluster.servers, tcp, None, "TCP checks off")
                            h = wait_steady(nodes, leader, 0, 0, probed=False)
                        result["flips"].append({"to": kind, "writes": f["writes"] + g["writes"],
                                                "seconds": f["seconds"] + g["seconds"], "leader_health": h})
                        state = kind
                    leader_now = cluster.wait_leader().node
                    if leader_now != leader:
                        progress(f"note: the leader moved from {leader} to {leader_now}")
                        leader = leader_now
                    pids = dict(cluster.pids())
                    if kind == "on":
                        assert renewer is not None
                        pids["renewer"] = renewer.pid
                        pids["listener"] = listener.pid
                    ppid = prober_pid(nodes, leader)
                    if ppid is not None:
                        pids["prober"] = ppid
                    progress(f"round {r + 1}/{args.rounds}, checks {kind}: {args.idle:g} s idle, "
                             f"{args.seconds:g} s of sequential writes through {leader}")
                    before = list(counts)
                    row = phase(cluster, nodes, leader, pids, next(runs), args)
                    row.update(round=r + 1, phase=kind, leader=leader, loadavg=loadavg())
                    if kind == "on":  # over the phase (the renewer adds after each round of its threads)
                        row["renewer"] = dict(zip(("ok", "failed", "late_rounds"),
                                                  (b - a for a, b in zip(before, counts, strict=True)), strict=True))
                    w = row["writes"]
                    progress(f"  p50 {num(w['p50_ms'])} ms, p99 {num(w['p99_ms'])} ms, leader CPU idle "
                             f"{num(row['idle']['cpu_pct']['leader'], '.1f')}%, entries {row.get('entries')}, "
                             f"heartbeats/s {row['heartbeats_per_s']}, probes/s {row['probes_per_s']}")
                    rows[kind] = row
                    result["rounds"].append(row)
                if "on" in rows and "off" in rows:
                    for key in ("p50_ms", "p99_ms"):
                        a, b = rows["off"]["writes"][key], rows["on"]["writes"][key]
                        rows["on"][f"ratio_{key}"] = round(b / a, 3) if a and b else None
            if renewer is not None:
                renewer.stop()
                renewer = None
    finally:
        if renewer is not None:
            renewer.stop()
        listener.stop()
        if nodes is not None:
            nodes.close()
    result["machine"]["loadavg_after"] = loadavg()
    result["summary"] = summarise(result["rounds"])
    return result


def _median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("off", "on"):
        rs = [r for r in rows if r["phase"] == kind]
        m: dict[str, Any] = {"rounds": len(rs)}
        for key in ("p50_ms", "p99_ms", "writes_per_s"):
            m[key] = _median([r["writes"][key] for r in rs])
        for window in ("idle", "writes"):
            for who in ("leader", "followers", "prober", "renewer", "listener", "machine", "other"):
                m[f"{window}_cpu_{who}"] = _median([r[window]["cpu_pct"][who] for r in rs])
            for key in ("follower_p50_ms", "follower_p99_ms", "follower_max_ms", "leader_view_p99_ms"):
                m[f"{window}_contact_{key}"] = _median([r[window]["contact"][key] for r in rs])
        for key in ("heartbeats_per_s", "forwarded_per_s", "batches_per_s", "by_lease_per_s", "probes_per_s"):
            m[key] = _median([r[key] for r in rs])
        m["entries"] = [r.get("entries") for r in rs]
        m["transitions"] = [r["transitions"] for r in rs]
        m["elections"] = sum(r["elections"] for r in rs)
        m["renewals_dropped"] = sum(r.get("renewals_dropped", 0) for r in rs)
        m["probe_failures"] = sum(r["probe_failures"] for r in rs)
        m["renewer_failed"] = sum((r.get("renewer") or {}).get("failed", 0) for r in rs)
        m["renewer_late_rounds"] = sum((r.get("renewer") or {}).get("late_rounds", 0) for r in rs)
        out[kind] = m
    on = [r for r in rows if r["phase"] == "on"]
    out["ratio_p50"] = _median([r.get("ratio_p50_ms") for r in on])
    out["ratio_p99"] = _median([r.get("ratio_p99_ms") for r in on])
    out["ratio_p50_rounds"] = [r.get("ratio_p50_ms") for r in on]
    out["ratio_p99_rounds"] = [r.get("ratio_p99_ms") for r in on]
    out["cpu_per_renewal_ms"] = cpu_per_renewal(out["off"], out["on"])
    return out


def cpu_per_renewal(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """The CPU the checks added (on minus off, idle windows) per renewal, in ms: the leader's per
    renewal its tracker took (it also handles the probes' reports: an upper bound), the
    followers' (summed) per renewal they relayed."""
    def per(cpu_on: Any, cpu_off: Any, rate: Any) -> float | None:
        if None in (cpu_on, cpu_off) or not rate:
            return None
        return round((cpu_on - cpu_off) * 10 / rate, 3)  # % of a core -> ms per second, per renewal

    return {"leader": per(on.get("idle_cpu_leader"), off.get("idle_cpu_leader"), on.get("heartbeats_per_s")),
            "followers": per(on.get("idle_cpu_followers"), off.get("idle_cpu_followers"), on.get("forwarded_per_s"))}


# ---------------------------------------------------------------------------------------------
# Output


def print_table(r: dict[str, Any]) -> None:
    c, s = r["config"], r["summary"]
    print_header(r, f"health checks at scale: {c['tcp']} TCP checks every {c['interval_s']:g} s and {c['ttl']} TTL "
                    f"instances renewed every {c['renew_period_s']:g} s, 3 durable nodes")
    print(f"\n{'round':>5} {'checks':>6} {'leader':>6} {'p50 ms':>7} {'p99 ms':>7} {'w/s':>6} "
          f"{'ldr CPU% idle/wr':>17} {'prober%':>8} {'renewer%':>9} {'contact p99/max ms':>19} "
          f"{'hb/s':>6} {'probes/s':>8} {'entries':>7} {'mach%':>6}")
    for row in r["rounds"]:
        w, i = row["writes"], row["idle"]
        print(f"{row['round']:>5} {row['phase']:>6} {row['leader']:>6} {num(w['p50_ms']):>7} {num(w['p99_ms']):>7} "
              f"{num(w['writes_per_s'], '.0f'):>6} "
              f"{num(i['cpu_pct']['leader'], '.1f') + '/' + num(w['cpu_pct']['leader'], '.1f'):>17} "
              f"{num(i['cpu_pct']['prober'], '.1f'):>8} {num(i['cpu_pct']['renewer'], '.1f'):>9} "
              f"{num(i['contact']['follower_p99_ms'], '.0f') + '/' + num(i['contact']['follower_max_ms'], '.0f'):>19} "
              f"{num(row['heartbeats_per_s'], '.0f'):>6} {num(row['probes_per_s'], '.0f'):>8} "
              f"{str(row.get('entries')):>7} {num(i['cpu_pct']['machine'], '.0f'):>6}")
    off, on = s["off"], s["on"]
    print(f"\nmedians over rounds          {'off (a)':>10} {'on (b)':>10}")
    for label, key in (("write p50 ms", "p50_ms"), ("write p99 ms", "p99_ms"), ("writes/s", "writes_per_s"),
                       ("leader CPU % (idle)", "idle_cpu_leader"), ("leader CPU % (writes)", "writes_cpu_leader"),
                       ("prober CPU % (idle)", "idle_cpu_prober"), ("followers CPU % (idle)", "idle_cpu_followers"),
                       ("renewer CPU % (idle)", "idle_cpu_renewer"), ("listener CPU % (idle)", "idle_cpu_listener"),
                       ("last contact p50 ms (idle)", "idle_contact_follower_p50_ms"),
                       ("last contact p99 ms (idle)", "idle_contact_follower_p99_ms"),
                       ("last contact p99 ms (writes)", "writes_contact_follower_p99_ms"),
                       ("heartbeats/s at the leader", "heartbeats_per_s"),
                       ("  of which under its lease/s", "by_lease_per_s"),
                       ("relayed by followers/s", "forwarded_per_s"), ("PASS batches/s", "batches_per_s"),
                       ("probes/s", "probes_per_s")):
        print(f"{label:<28} {num(off.get(key)):>10} {num(on.get(key)):>10}")
    print(f"{'entries beyond the writes':<28} {str(off['entries']):>10} {str(on['entries']):>10}")
    print(f"{'transitions proposed':<28} {str(off['transitions']):>10} {str(on['transitions']):>10}")
    ok = s["ratio_p99"] is not None and s["ratio_p99"] <= TARGET_RATIO and s["ratio_p50"] <= TARGET_RATIO
    print(f"\nratio on/off, side by side: p50 {num(s['ratio_p50'], '.3f')} (rounds {s['ratio_p50_rounds']}), "
          f"p99 {num(s['ratio_p99'], '.3f')} (rounds {s['ratio_p99_rounds']}); target <= {TARGET_RATIO}: "
          f"{'met' if ok else 'MISSED'}")
    per = s.get("cpu_per_renewal_ms") or {}
    print(f"CPU added per renewal (idle windows, on - off): leader {num(per.get('leader'), '.3f')} ms, "
          f"followers {num(per.get('followers'), '.3f')} ms per relayed renewal; renewals dropped "
          f"{on.get('renewals_dropped', '-')}")
    entries = [e for e in on["entries"] if e is not None]
    print(f"Raft entries in the steady state beyond the benchmark's writes: {entries}; target 0: "
          f"{'met' if entries and not any(entries) else 'MISSED'}; elections {off['elections'] + on['elections']}, "
          f"failed probes {on['probe_failures']}, failed heartbeats {on.get('renewer_failed', '-')} "
          f"(renewer rounds longer than {r['config']['renew_period_s']:g} s: {on.get('renewer_late_rounds', '-')})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"the short profile: {QUICK['tcp']} TCP checks, {QUICK['ttl']} TTL instances, "
                             f"{QUICK['rounds']} rounds of {QUICK['idle']:g} + {QUICK['seconds']:g} s")
    parser.add_argument("--tcp", type=int, default=10_000, help="TCP-checked instances (default 10000)")
    parser.add_argument("--ttl", type=int, default=1000, help="TTL instances renewed every second (default 1000)")
    parser.add_argument("--interval", type=float, default=10.0, help="the TCP checks' interval in s (default 10)")
    parser.add_argument("--timeout", type=float, default=2.0, help="the TCP checks' timeout in s (default 2)")
    parser.add_argument("--ttl-ms", type=int, default=5000, help="the TTL instances' TTL (default 5000)")
    parser.add_argument("--renewers", type=int, default=20, help="renewer threads (default 20)")
    parser.add_argument("--addresses", type=int, default=32,
                        help="loopback addresses 127.0.1.x the listener binds (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (off, on) (default 3)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of each idle window (default 10)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of each write window (default 15)")
    parser.add_argument("--poll", type=float, default=0.1, help="status poll period in s (default 0.1)")
    parser.add_argument("--generators-nice", type=int, default=0, metavar="N",
                        help="run the load generators (the renewer and the listener) at nice level N, so that "
                             "they disturb the measured cluster less (default 0; 19 is the lowest priority)")
    add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if not (0 <= args.tcp <= 50_000 and 0 <= args.ttl <= 10_000 and 1 <= args.rounds <= 20
            and 1 <= args.addresses <= 254 and 1 <= args.renewers <= 200 and args.idle > 0 and args.seconds > 0
            and 0.02 <= args.poll <= 5 and 1 <= args.interval <= 3600 and 0.1 <= args.timeout <= args.interval
            and 1000 <= args.ttl_ms and 0 <= args.generators_nice <= 19):
        parser.error("accepted: --tcp 0-50000, --ttl 0-10000, --rounds 1-20, --addresses 1-254, --renewers 1-200, "
                     "--idle and --seconds > 0, --poll 0.02-5, --interval 1-3600, --timeout 0.1..interval, "
                     "--ttl-ms >= 1000, --generators-nice 0-19")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return main_frame(args, print_table, measure, progress)


if __name__ == "__main__":
    sys.exit(main())
