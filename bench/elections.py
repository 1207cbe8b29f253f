"""Spurious elections (not a test): leader and term changes while the cluster writes at full speed.

    .venv/bin/python bench/elections.py [--seconds 600] [--clients 64] [--json] [--keep]

Starts a fresh durable cluster (bench/cluster.py's `LocalCluster`), waits for a leader, then
--clients closed-loop clients (bench/load.py's `run_load`, spread over every node) write for
--seconds with no fault injected, while this process asks every node for its `status` every
--poll seconds. Any term change or leader change seen during the window is spurious: nothing
was killed, paused or cut off, so only a leader missing its heartbeats (a starved event loop, a
slow fsync) or a follower timing out too early can cause it.

NB: client k registers instance i mod --distinct, so the catalogue stays bounded (at most
--distinct instances per client) however long the run; a repeated registration is an idempotent
upsert that still goes through the log, like an agent that re-registers periodically. The Raft
log itself grows with every write (no snapshots yet): about 350 bytes of memory and ~0.5 KB of
LMDB per write and node.

Reports the writes/s and p99 of the window, the number of term changes and of leader changes,
each change as seen (time, node, term, leader), and the nodes' RSS at the end. A table on
stdout or one JSON object with --json; progress on stderr; the cluster is always stopped.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import LocalCluster, Probe  # noqa: E402
from bench.load import Registrations, procs_for, run_load  # noqa: E402
from bench.script import (  # noqa: E402
    add_options, bench_root, fsync_probe, loadavg, machine_info, main_frame, new_parser, positive_procs, reporter,
)
from registry.client import NodeStatus, RegistryError  # noqa: E402

DISTINCT = 2000  # instances per client before a client wraps around (see the NB above)

progress = reporter("elections")


class Watcher:
    """Polls every node's status; records each change of (term, leader) any node reports."""

    def __init__(self, cluster: LocalCluster, poll_s: float) -> None:
        self.cluster, self.poll_s = cluster, poll_s
        self.changes: list[dict[str, Any]] = []
        self.polls = 0
        self.unanswered = 0
        self._last: dict[str, tuple[int, str | None]] = {}
        self._first: dict[str, tuple[int, str | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._sample(record=False)
        self._first = dict(self._last)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample(record=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._sample(record=True)

    def _sample(self, *, record: bool) -> None:
        try:
            statuses = self.cluster.statuses(timeout_s=2.0)
        except RegistryError:
            self.unanswered += 1
            return
        self.polls += 1
        for name, s in statuses.items():
            if not isinstance(s, NodeStatus):
                self.unanswered += 1
                continue
            now = (s.term, s.leader)
            before = self._last.get(name)
            self._last[name] = now
            if record and before is not None and now != before:
                self.changes.append({"t_s": round(time.monotonic() - self.t0, 2), "node": name,
                                     "term": s.term, "leader": s.leader, "before": list(before)})

    def summary(self) -> dict[str, Any]:
        """Term changes and leader changes (a new (term, leader) pair that some node reported),
        and leaderless episodes: a node that lost its leader and found the same one again in the
        same term (its election timer ran out, and pre-vote kept the term: a stall, not an election)."""
        first = {(term, leader) for term, leader in self._first.values() if leader is not None}
        seen = first | {(c["term"], c["leader"]) for c in self.changes if c["leader"] is not None}
        terms = {c["term"] for c in self.changes if c["term"] != c["before"][0]}
        leaderless = {c["t_s"] for c in self.changes if c["leader"] is None and c["term"] == c["before"][0]}
        return {"term_changes": len(terms), "leader_changes": max(0, len(seen) - len(first)),
                "leaderless_episodes": len(leaderless), "polls": self.polls, "unanswered": self.unanswered,
                "changes": self.changes}


def print_table(r: dict[str, Any]) -> None:
    c, w, e = r["config"], r["writes"], r["elections"]
    print(f"spurious elections: {c['nodes']} durable nodes, {c['clients']} clients writing for {c['seconds']:g} s, "
          f"no faults; load average {r['machine']['loadavg_before'][0]:g} before, "
          f"{r['machine'].get('loadavg_after', ['?'])[0]} after")
    print(f"writes/s {w['writes_per_s']:.0f}, p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms, "
          f"errors {sum(w['errors'].values())}")
    print(f"term changes {e['term_changes']}, leader changes {e['leader_changes']}, "
          f"leaderless episodes {e.get('leaderless_episodes', 0)} "
          f"({e['polls']} polls every {c['poll_s']:g} s, {e['unanswered']} unanswered)")
    for change in e["changes"]:
        print(f"  at {change['t_s']:.1f} s: {change['node']} term {change['before'][0]} -> {change['term']}, "
              f"leader {change['before'][1]} -> {change['leader']}")
    print("memory at the end: " + ", ".join(f"{n} RSS {v['rss_mib']:.0f} MiB" for n, v in r["memory"].items()))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--seconds", type=float, default=600.0, help="length of the full-load run (default 600)")
    p.add_argument("--clients", type=int, default=64, help="closed-loop writer clients (default 64)")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between status polls (default 0.5)")
    p.add_argument("--procs", default="auto", type=positive_procs, help="client worker processes: a number or auto")
    add_options(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    root, fs = bench_root("registry-bench-elections-", args.dir, progress)
    result: dict[str, Any] = {"benchmark": "elections", "format": 1, "machine": machine_info(root),
                              "config": {"nodes": args.nodes, "seconds": args.seconds, "clients": args.clients,
                                         "poll_s": args.poll, "distinct_per_client": DISTINCT,
                                         "agent_args": args.agent_arg}}
    result["disk_before"] = fsync_probe(root)
    with LocalCluster(args.nodes, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
        cluster.start()
        leader = cluster.wait_leader()
        progress(f"leader {leader.node} (term {leader.term}); {args.clients} clients for {args.seconds:g} s ({fs})")
        watcher = Watcher(cluster, args.poll)
        probe = Probe(cluster)

        def on_start() -> None:
            probe.open()
            watcher.start()

        def on_end() -> None:
            probe.close()
            watcher.stop()

        load = run_load(Registrations(distinct=DISTINCT), cluster.servers, 1, args.clients, args.seconds,
                        procs_for(args.procs, args.clients), on_start=on_start, on_end=on_end,
                        result_timeout_s=args.seconds + 60)
        load.update(probe.after(load["writes"]))
        result["writes"] = load
        result["elections"] = watcher.summary()
        result["memory"] = cluster.memory()
        result["machine"]["loadavg_after"] = loadavg()
        progress(f"{load['writes_per_s']:.0f} writes/s; term changes {result['elections']['term_changes']}, "
                 f"leader changes {result['elections']['leader_changes']}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return main_frame(parse_args(argv), print_table, run, progress)


if __name__ == "__main__":
    sys.exit(main())
