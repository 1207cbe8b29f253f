"""Hand-over benchmark (not a test): SIGTERM the leader under continuous writes, as a rolling
restart does, and measure the hand-over, the exit and the longest write across it.

    .venv/bin/python bench/handover.py [--trials 5] [--writers 4] [--interval 2] [--json] [--keep]

Starts a fresh durable cluster of NODES `registry agent` processes (bench/cluster.py's
`LocalCluster`) and WRITERS threads, each a `registry.client.Client` (default retry budget,
writer k starting at node k mod NODES) that registers new instances one after the other and
records each write's start and end. Then, TRIALS times:

1. wait until every node agrees on one leader, and writes flow for INTERVAL seconds;
2. SIGTERM the leader (t_term) and wait for its exit (t_exit);
3. **hand-over**: what the old leader logged, from the start of the transfer to the moment it
   saw the target lead ("handed leadership over to X: ... S s after the transfer began"), and
   whether the new leader's term is exactly one above (no election timeout, no split vote);
4. **exit**: t_exit - t_term (the hand-over, the writes waiting on the old leader answered
   through the new one, the children and the store closed);
5. **longest write across it**: the longest latency of a write in flight at any time between
   t_term and t_exit + 1 s, next to the longest in the INTERVAL before t_term (the baseline);
   and the writes that failed (the clients' whole budget spent: none expected);
6. restart the stopped node and wait until it has caught up.

Table on stdout or one JSON object with --json; progress on stderr; the cluster is always
stopped. Figures: docs/deploy.md ("Rolling restart").
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import LocalCluster  # noqa: E402
from bench.failover import wait_rejoined  # noqa: E402
from bench.load import rotate  # noqa: E402
from bench.script import (  # noqa: E402
    add_options, bench_root, fsync_probe, loadavg, machine_info, main_frame, new_parser, print_header, reporter,
)
from registry.client import Client, RegistryError  # noqa: E402

AFTER_EXIT_S = 1.0
EXIT_WAIT_S = 30.0
HANDED = re.compile(r"handed leadership over to (\S+): it leads in term (\d+), ([0-9.]+) s after the transfer began")

progress = reporter("handover")


class Writers:
    """WRITERS threads registering new instances back to back; every write is kept as
    (start, end, ok)."""

    def __init__(self, servers: list[str], writers: int, timeout_s: float) -> None:
        self.writes: list[tuple[float, float, bool]] = []  # appended by the threads (atomic under the GIL)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(rotate(servers, k), k, timeout_s), daemon=True)
                        for k in range(writers)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, servers: list[str], k: int, timeout_s: float) -> None:
        with Client(servers, timeout_s=timeout_s) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                began = time.monotonic()
                try:
                    client.register(f"handover-{k}", "10.9.0.1", 1 + i % 65_535, id=f"w{k}-{i}")
                    ok = True
                except RegistryError:
                    ok = False
                self.writes.append((began, time.monotonic(), ok))

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def longest(self, lo: float, hi: float) -> tuple[float, int, int]:
        """(longest latency, writes, failures) of the writes in flight at any time in [lo, hi]."""
        hit = [(end - began, ok) for began, end, ok in list(self.writes) if began <= hi and end >= lo]
        return max((d for d, _ in hit), default=0.0), len(hit), sum(1 for _, ok in hit if not ok)


def run_trial(cluster: LocalCluster, writers: Writers, trial: int, interval: float) -> dict[str, Any]:
    leader = cluster.wait_leader()
    time.sleep(interval)
    leader = cluster.wait_leader()
    victim = cluster.agents[leader.node]
    log_from = victim.log_path.stat().st_size
    t_term = time.monotonic()
    victim.proc.send_signal(15)  # type: ignore[union-attr]
    code = victim.proc.wait(timeout=EXIT_WAIT_S)  # type: ignore[union-attr]
    t_exit = time.monotonic()
    time.sleep(AFTER_EXIT_S)
    with open(victim.log_path, "rb") as f:
        f.seek(log_from)
        log = f.read().decode(errors="replace")
    found = HANDED.search(log)
    longest, in_flight, failed = writers.longest(t_term, t_exit + AFTER_EXIT_S)
    base, _, _ = writers.longest(t_term - interval, t_term - 0.01)
    row = {"trial": trial, "stopped": leader.node, "exit_code": code, "old_term": leader.term,
           "new_leader": found.group(1) if found else None, "new_term": int(found.group(2)) if found else None,
           "handover_s": float(found.group(3)) if found else None, "exit_s": round(t_exit - t_term, 3),
           "longest_write_s": round(longest, 3), "baseline_longest_write_s": round(base, 3),
           "writes_across": in_flight, "failed_writes": failed}
    victim_name = leader.node
    cluster.start_agent(victim_name)
    wait_rejoined(cluster, victim_name)
    progress(f"trial {trial}: SIGTERM {victim_name} (term {leader.term}): handed over to {row['new_leader']} "
             f"(term {row['new_term']}) in {row['handover_s']} s; exit {row['exit_s']:.3f} s; longest write "
             f"{row['longest_write_s']:.3f} s (baseline {row['baseline_longest_write_s']:.3f} s); "
             f"{failed} failed of {in_flight}")
    return row


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> dict[str, float | None]:
        values = [t[key] for t in trials if t[key] is not None]
        return {"median": round(statistics.median(values), 3) if values else None,
                "max": max(values) if values else None, "min": min(values) if values else None}

    return {"trials": len(trials), "handover_s": stats("handover_s"), "exit_s": stats("exit_s"),
            "longest_write_s": stats("longest_write_s"), "baseline_longest_write_s": stats("baseline_longest_write_s"),
            "failed_writes": sum(t["failed_writes"] for t in trials),
            "handed_over": sum(1 for t in trials if t["new_leader"] is not None),
            "terms_moved_by_one": sum(1 for t in trials if t["new_term"] == t["old_term"] + 1)}


def print_table(r: dict[str, Any]) -> None:
    cfg = r["config"]
    print_header(r, f"registry hand-over benchmark: {cfg['nodes']} durable nodes on loopback, {cfg['writers']} writers, "
                 f"SIGTERM of the leader every ~{cfg['interval_s']:g} s")
    print(f"\n{'trial':>5}{'stopped':>9}{'term':>6}{'new leader':>12}{'term':>6}{'hand-over s':>13}{'exit s':>9}"
          f"{'longest write s':>17}{'baseline s':>12}{'writes':>8}{'failed':>8}")
    for t in r["trials"]:
        hand = f"{t['handover_s']:.3f}" if t["handover_s"] is not None else "-"
        print(f"{t['trial']:>5}{t['stopped']:>9}{t['old_term']:>6}{t['new_leader'] or '-':>12}"
              f"{t['new_term'] or '-':>6}{hand:>13}{t['exit_s']:>9.3f}{t['longest_write_s']:>17.3f}"
              f"{t['baseline_longest_write_s']:>12.3f}{t['writes_across']:>8}{t['failed_writes']:>8}")
    s = r["summary"]
    if s["trials"]:
        print(f"\nhanded over in {s['handed_over']} of {s['trials']} (term up by exactly one: {s['terms_moved_by_one']}); "
              f"hand-over median {s['handover_s']['median']} s, max {s['handover_s']['max']} s; exit median "
              f"{s['exit_s']['median']} s, max {s['exit_s']['max']} s; longest write across it median "
              f"{s['longest_write_s']['median']} s, max {s['longest_write_s']['max']} s (baseline max "
              f"{s['baseline_longest_write_s']['max']} s); failed writes {s['failed_writes']}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--trials", type=int, default=5, help="leader SIGTERMs (default 5)")
    p.add_argument("--writers", type=int, default=4, help="writer threads (default 4)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds of writes before each SIGTERM (default 2)")
    p.add_argument("--client-timeout", type=float, default=5.0, help="the writers' Client timeout_s (default 5)")
    add_options(p)
    args = p.parse_args(argv)
    if not 3 <= args.nodes <= 9 or args.trials < 1 or args.writers < 1:
        p.error("--nodes must be 3-9, --trials and --writers at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    root, fs = bench_root("registry-bench-handover-", args.dir, progress)
    result: dict[str, Any] = {
        "benchmark": "handover", "format": 1, "machine": machine_info(root),
        "config": {"nodes": args.nodes, "trials": args.trials, "writers": args.writers, "interval_s": args.interval,
                   "client_timeout_s": args.client_timeout, "agent_args": args.agent_arg},
        "trials": [],
    }
    result["disk_before"] = fsync_probe(root)
    with LocalCluster(args.nodes, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
        progress(f"starting {args.nodes} agents in {root} ({fs})")
        cluster.start()
        cluster.wait_leader()
        writers = Writers(cluster.servers, args.writers, args.client_timeout)
        writers.start()
        try:
            for trial in range(1, args.trials + 1):
                result["trials"].append(run_trial(cluster, writers, trial, args.interval))
        finally:
            writers.close()
        result["machine"]["loadavg_after"] = loadavg()
        result["writes"] = len(writers.writes)
        result["failed_total"] = sum(1 for _, _, ok in writers.writes if not ok)
    result["summary"] = summarize(result["trials"])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return main_frame(parse_args(argv), print_table, run, progress)


if __name__ == "__main__":
    sys.exit(main())
