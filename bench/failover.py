"""Failover benchmark (not a test): kill -9 the leader under continuous writes, time to recover.

    .venv/bin/python bench/failover.py [--trials 5] [--writers 4] [--interval 3] [--json] [--keep]

Starts a fresh durable cluster of NODES `registry agent` processes (bench/cluster.py's
`LocalCluster`: free loopback ports, data in a new temporary directory), and WRITERS threads in
this process, each a `registry.client.Client` starting at a different node (writer k at node
k mod NODES), that register new instances one after the other for the whole run. Then, TRIALS
times:

1. wait until every node agrees on one leader and term T0, and writes flow for INTERVAL seconds;
2. SIGKILL the leader (t_kill); I0 = the highest log index acknowledged to any writer before t_kill;
3. poll the surviving nodes' `status` every 10 ms until one reports itself leader in a term
   > T0 (t_elected: the send time of the first poll that reported it);
4. **failover time** = t_first - t_kill, where t_first is the first acknowledgement (a
   `register` returning, as a writer sees it) with index > I0 received at or after t_elected;
   that write was committed under the new leader (the old one is dead and cannot acknowledge; an
   entry above I0 acknowledged once the new leader exists was committed by it: appended by it,
   or an old-term entry it committed with its first own entry, Raft §5.4.2), exact up to the
   10 ms poll granularity;
5. restart the killed node (same data directory, same ports) and wait until every node agrees on
   one leader and the restarted node has applied the leader's commit index (`rejoin`).

Reports each trial, the median and max of the failover time and of the election time
(t_elected - t_kill), the writers' errors (writes that raised: a write whose outcome is unknown
after the client's --client-timeout), and terms moved per trial (more than 1: a split vote or a
spurious election). Table on stdout or one JSON object with --json; progress on stderr; the
cluster is always stopped. See bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import LocalCluster  # noqa: E402
from bench.load import Registrations, closed_loop, error_name  # noqa: E402
from bench.script import (  # noqa: E402
    add_options, bench_root, fsync_probe, loadavg, machine_info, main_frame, new_parser, print_header, reporter,
)
from registry.client import Client, NodeStatus, RegistryError  # noqa: E402

POLL_S = 0.01
ELECT_WAIT_S = 30.0
REJOIN_WAIT_S = 60.0

progress = reporter("failover")


class Writers:
    """WRITERS closed-loop client threads (bench/load.py's `closed_loop` of `Registrations`, run
    1, writer k starting at node k mod n) for the whole run; every acknowledgement is kept as
    (time, log index), every error as (time, name)."""

    def __init__(self, servers: list[str], writers: int, timeout_s: float) -> None:
        self.acks: list[tuple[float, int]] = []  # appended by the threads (atomic under the GIL)
        self.errors: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.target = Registrations(timeout_s=timeout_s)
        self.threads = [threading.Thread(target=self._run, args=(servers, k), daemon=True) for k in range(writers)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, servers: list[str], k: int) -> None:
        writer = self.target.writer(servers, 1, k)
        try:
            closed_loop(writer, self.target.errors, stop=lambda _i, _now: self.stop.is_set(),
                        done=lambda _t0, t1, r: self.acks.append((t1, r.index)),
                        failed=lambda t, exc: self.errors.append((t, error_name(exc))))
        finally:
            writer.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.target.timeout_s + 5)


def wait_new_leader(servers: list[str], old_term: int, timeout_s: float = ELECT_WAIT_S) -> tuple[float, NodeStatus]:
    """(send time of the first poll that reported a leader in a term > old_term, its status)."""
    deadline = time.monotonic() + timeout_s
    with Client(servers, timeout_s=1.0, attempt_timeout_s=0.25) as c:
        while time.monotonic() < deadline:
            sent = time.monotonic()
            for s in c.status_all():
                if isinstance(s, NodeStatus) and s.role == "leader" and s.term > old_term:
                    return sent, s
            time.sleep(max(0.0, sent + POLL_S - time.monotonic()))
    raise RuntimeError(f"no new leader within {timeout_s:g} s of the kill")


def wait_rejoined(cluster: LocalCluster, name: str, timeout_s: float = REJOIN_WAIT_S) -> NodeStatus:
    """Once every node agrees on the leader and ``name`` has applied the leader's commit index
    (as it was when first seen agreeing)."""
    deadline = time.monotonic() + timeout_s
    target: int | None = None
    last: Any = None
    while time.monotonic() < deadline:
        try:
            leader = cluster.wait_leader(timeout_s=max(0.1, deadline - time.monotonic()))
        except RuntimeError:
            break
        if target is None:
            target = leader.commit
        last = cluster.statuses(timeout_s=1.0).get(name)
        if isinstance(last, NodeStatus) and last.applied >= target:
            return leader
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not rejoin within {timeout_s:g} s: {last}")


def run_trial(cluster: LocalCluster, writers: Writers, trial: int, interval: float) -> dict[str, Any]:
    leader = cluster.wait_leader()
    acked0 = len(writers.acks)
    time.sleep(interval)
    if len(writers.acks) == acked0:
        raise RuntimeError(f"no write was acknowledged in the {interval:g} s before trial {trial}")
    leader = cluster.wait_leader()
    victim = leader.node
    survivors = [cluster.agents[n].client for n in cluster.names if n != victim]
    errors0 = len(writers.errors)

    t_kill = time.monotonic()
    cluster.agents[victim].proc.kill()  # type: ignore[union-attr]
    before = [i for t, i in writers.acks[acked0:] if t < t_kill]
    i0 = max(before) if before else 0

    t_elected, new = wait_new_leader(survivors, leader.term)
    # The first acknowledgement with an index above I0, at or after t_elected.
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + ELECT_WAIT_S
    scanned = acked0
    while first is None and time.monotonic() < deadline:
        acks = writers.acks[scanned:]
        for t, i in acks:
            if t >= t_elected and i > i0:
                first = (t, i)
                break
        scanned += len(acks)
        if first is None:
            time.sleep(0.002)
    if first is None:
        raise RuntimeError(f"trial {trial}: no write acknowledged within {ELECT_WAIT_S:g} s of the new leader")
    late_old = sum(1 for t, i in writers.acks[acked0:] if t_kill <= t <= first[0] and i <= i0)
    errors = Counter(name for t, name in writers.errors[errors0:] if t <= first[0])

    cluster.agents[victim].proc.wait()  # type: ignore[union-attr]
    t_restart = time.monotonic()
    cluster.start_agent(victim)
    settled = wait_rejoined(cluster, victim)
    row = {"trial": trial, "killed": victim, "old_term": leader.term, "new_leader": new.node, "new_term": new.term,
           "terms_moved": settled.term - leader.term, "final_leader": settled.node,
           "elected_s": round(t_elected - t_kill, 3), "failover_s": round(first[0] - t_kill, 3),
           "index_before": i0, "first_index": first[1], "old_acks_after_kill": late_old,
           "errors": dict(errors), "rejoin_s": round(time.monotonic() - t_restart, 3)}
    progress(f"trial {trial}: killed {victim} (term {leader.term}); {new.node} leader in term {new.term} after "
             f"{row['elected_s']:.3f} s; first new write acknowledged after {row['failover_s']:.3f} s "
             f"(index {first[1]} > {i0}); errors {dict(errors)}; rejoined in {row['rejoin_s']:.2f} s")
    return row


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    fo = [t["failover_s"] for t in trials]
    el = [t["elected_s"] for t in trials]
    errors: Counter[str] = Counter()
    for t in trials:
        errors.update(t["errors"])
    return {"trials": len(trials),
            "failover_median_s": round(statistics.median(fo), 3) if fo else None,
            "failover_max_s": max(fo) if fo else None, "failover_min_s": min(fo) if fo else None,
            "elected_median_s": round(statistics.median(el), 3) if el else None,
            "elected_max_s": max(el) if el else None,
            "errors": dict(errors),
            "extra_elections": sum(max(0, t["terms_moved"] - 1) for t in trials)}


def print_table(r: dict[str, Any]) -> None:
    cfg = r["config"]
    print_header(r, f"registry failover benchmark: {cfg['nodes']} durable nodes on loopback, {cfg['writers']} writers, "
                 f"kill -9 of the leader every ~{cfg['interval_s']:g} s")
    print(f"\n{'trial':>5}{'killed':>8}{'term':>6}{'new leader':>12}{'term':>6}{'elected s':>11}{'failover s':>12}"
          f"{'index before':>14}{'first index':>13}{'errors':>8}{'rejoin s':>10}")
    for t in r["trials"]:
        print(f"{t['trial']:>5}{t['killed']:>8}{t['old_term']:>6}{t['new_leader']:>12}{t['new_term']:>6}"
              f"{t['elected_s']:>11.3f}{t['failover_s']:>12.3f}{t['index_before']:>14}{t['first_index']:>13}"
              f"{sum(t['errors'].values()):>8}{t['rejoin_s']:>10.2f}")
    s = r["summary"]
    if s["trials"]:
        print(f"\nfailover (kill -9 -> first new write acknowledged): median {s['failover_median_s']:.3f} s, "
              f"max {s['failover_max_s']:.3f} s, min {s['failover_min_s']:.3f} s over {s['trials']} trials")
        print(f"election (kill -9 -> a survivor reports itself leader in a higher term): median "
              f"{s['elected_median_s']:.3f} s, max {s['elected_max_s']:.3f} s")
    print(f"writer errors during the failovers: {s['errors'] or 'none'}; over the whole run: {r['errors_total'] or 'none'}; "
          f"writes acknowledged {r['writes']}; extra elections (terms moved beyond 1 per trial): {s['extra_elections']}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--trials", type=int, default=5, help="leader kills (default 5)")
    p.add_argument("--writers", type=int, default=4, help="writer threads (default 4)")
    p.add_argument("--interval", type=float, default=3.0, help="seconds of writes before each kill (default 3)")
    p.add_argument("--client-timeout", type=float, default=5.0, help="the writers' Client timeout_s (default 5)")
    add_options(p)
    args = p.parse_args(argv)
    if args.nodes < 3 or args.nodes > 9 or args.trials < 1 or args.writers < 1:
        p.error("--nodes must be 3-9 (a majority must survive a kill), --trials and --writers at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    root, fs = bench_root("registry-bench-failover-", args.dir, progress)
    result: dict[str, Any] = {
        "benchmark": "failover", "format": 1, "machine": machine_info(root),
        "config": {"nodes": args.nodes, "trials": args.trials, "writers": args.writers, "interval_s": args.interval,
                   "client_timeout_s": args.client_timeout, "poll_s": POLL_S, "agent_args": args.agent_arg},
        "trials": [],
    }
    writers: Writers | None = None
    try:
        result["disk_before"] = fsync_probe(root)
        with LocalCluster(args.nodes, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
            progress(f"starting {args.nodes} agents in {root} ({fs})")
            cluster.start()
            leader = cluster.wait_leader()
            result["cluster"] = {"leader": leader.node, "term": leader.term,
                                 "nodes": {n: {"raft": a.raft, "client": a.client} for n, a in cluster.agents.items()}}
            progress(f"leader {leader.node} (term {leader.term}); {args.writers} writers start")
            writers = Writers(cluster.servers, args.writers, args.client_timeout)
            writers.start()
            try:
                for trial in range(1, args.trials + 1):
                    result["trials"].append(run_trial(cluster, writers, trial, args.interval))
            finally:
                writers.close()
            result["machine"]["loadavg_after"] = loadavg()
            progress("stopping the cluster")
    except (RuntimeError, OSError, RegistryError) as exc:
        if not result["trials"]:
            raise
        progress(f"error: {exc}")
        progress("reporting the trials finished before the error")
        result["error"] = str(exc)
    result["summary"] = summarize(result["trials"])
    result["writes"] = len(writers.acks) if writers else 0
    result["errors_total"] = dict(Counter(n for _, n in writers.errors)) if writers else {}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return main_frame(parse_args(argv), print_table, run, progress)


if __name__ == "__main__":
    sys.exit(main())
