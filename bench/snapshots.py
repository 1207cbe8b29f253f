"""Snapshot benchmarks (not a test): the node loop's pause, and the disk bound under churn.

    .venv/bin/python bench/snapshots.py pause [--instances 100000] [--json]
    .venv/bin/python bench/snapshots.py churn [--live 10000] [--ops 100000] [--agent-arg=--snapshot-entries=N] [--json]

`pause` (one process, no cluster): a catalogue of N instances (16 services, bench/writes.py's
registrations) with a full session table (MAX_SESSIONS clients), then each piece of a snapshot
timed alone: `freeze` (on the loop), `to_bytes` of the frozen view (in the thread), the old
one-shot `Catalogue.to_bytes()` (what a loop-side serialisation would stall for), writing the
file (fsync), `Catalogue.restore` (what installing or restarting costs), and `adopt` (the LMDB
transaction that records the snapshot and deletes --compact entries). Then the pause itself: a
loop thread that polls a ZeroMQ socket with a 1 ms timeout, as the node loop does, measures its
longest iteration beyond the timeout while the snapshot thread serialises and writes, with the
node's switch interval (registry/node/snapshotter.py SWITCH_INTERVAL_S) and with Python's default.

`churn` (a fresh durable 3-node cluster): registers --live instances, then --ops writes that
each deregister one instance and register it again (the live set stays constant), from 16
clients, sampling every node's data directory (allocated bytes: LMDB file, snapshot files)
every second. Prints the largest data directory seen, per node, during each tenth of the run:
a bound holds if it stops growing while the log keeps being written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq  # noqa: E402

from bench.cluster import LocalCluster, dir_bytes  # noqa: E402
from bench.load import fill, register, registration, retrying  # noqa: E402
from bench.script import reporter  # noqa: E402
from registry.catalogue import MAX_SESSIONS, Catalogue, Register, Request, encode_request  # noqa: E402
from registry.catalogue.frozen import freeze, thaw  # noqa: E402
from registry.client import Client, NotFound  # noqa: E402
from registry.node.snapshotter import serialise  # noqa: E402
from registry.raft import Entry, EntryKind, Index, Membership, NodeId, Snapshot, SnapshotMeta, Term  # noqa: E402
from registry.storage import LmdbStorage, lmdb_store  # noqa: E402


progress = reporter("snapshots")


def build_catalogue(count: int) -> tuple[Catalogue, list[bytes]]:
    catalogue = Catalogue()
    entries = []
    for i in range(count):
        args = registration(0, i % MAX_SESSIONS, i)
        command = Register(args["service"], args["address"], args["port"], tags=args["tags"], meta=args["meta"])
        data = encode_request(Request(f"client-{i % MAX_SESSIONS}", i + 1, command))
        entries.append(data)
        catalogue.apply(i + 1, data)
    return catalogue, entries


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def loop_pause_ms(work: Any, switch_s: float) -> dict[str, float]:
    """Longest iteration of a 1 ms-poll loop (beyond its timeout) while ``work`` runs in a thread."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind("inproc://idle")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    saved = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(), done.set()))
    worst, iterations = 0.0, 0
    try:
        thread.start()
        while not done.is_set():
            start = time.perf_counter()
            poller.poll(1)
            iterations += 1
            worst = max(worst, (time.perf_counter() - start) * 1000 - 1.0)
        thread.join()
    finally:
        sys.setswitchinterval(saved)
        sock.close(0)
        ctx.term()
    return {"max_ms": round(worst, 2), "iterations": iterations}


def run_pause(args: argparse.Namespace) -> dict[str, Any]:
    progress(f"building a catalogue of {args.instances:,} instances and {MAX_SESSIONS:,} sessions")
    catalogue, entry_data = build_catalogue(args.instances)
    frozen, freeze_ms = timed(lambda: freeze(catalogue))
    data, frozen_ms = timed(frozen.to_bytes)
    oneshot, oneshot_ms = timed(catalogue.to_bytes)
    assert data == oneshot
    _, restore_ms = timed(lambda: Catalogue.from_bytes(data))
    _, thaw_ms = timed(lambda: thaw(data))
    out: dict[str, Any] = {"instances": args.instances, "sessions": catalogue.session_count(),
                           "snapshot_bytes": len(data), "freeze_ms": round(freeze_ms, 2),
                           "to_bytes_frozen_ms": round(frozen_ms, 1), "to_bytes_oneshot_ms": round(oneshot_ms, 1),
                           "restore_ms": round(restore_ms, 1), "thaw_ms": round(thaw_ms, 1)}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = LmdbStorage(Path(tmp), node_name="n1", cluster_id="bench")
        members = Membership(frozenset({NodeId(1)}))
        n = args.compact + 1000
        for lo in range(0, n, 1000):
            store.save([Entry(Term(1), Index(lo + k + 1), EntryKind.NORMAL, entry_data[(lo + k) % len(entry_data)])
                        for k in range(1000)], None, sync=True)
        meta = SnapshotMeta(Index(n), Term(1), members)
        path, write_ms = timed(lambda: store.write_snapshot(Snapshot(meta, data)))
        _, adopt_ms = timed(lambda: store.adopt_snapshot(meta, path, Index(args.compact)))
        steps = []
        while True:
            more, step_ms = timed(store.compact_step)
            steps.append(step_ms)
            if not more:
                break
        out.update(write_file_ms=round(write_ms, 1), adopt_ms=round(adopt_ms, 1), compacted=args.compact,
                   batch_entries=lmdb_store.COMPACT_BATCH_ENTRIES, compact_step_ms=[round(t, 1) for t in steps])

        def snapshot_thread() -> None:
            blob = serialise(freeze(catalogue))
            store.write_snapshot(Snapshot(SnapshotMeta(Index(n), Term(1), members), blob))

        for label, switch in (("node", 0.001), ("default", 0.005)):
            progress(f"loop pause while a snapshot is taken, switch interval {switch * 1000:g} ms")
            runs = [loop_pause_ms(snapshot_thread, switch) for _ in range(args.rounds)]
            out[f"loop_pause_{label}"] = {"max_ms": max(r["max_ms"] for r in runs),
                                          "median_of_max_ms": sorted(r["max_ms"] for r in runs)[len(runs) // 2]}
        out["loop_pause_oneshot_on_loop_ms"] = out["to_bytes_oneshot_ms"]
        store.close()
    return out


def run_churn(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="registry-bench-churn-", dir=args.dir))
    samples: list[dict[str, Any]] = []
    with LocalCluster(3, root, keep=args.keep, agent_args=args.agent_arg) as cluster:
        cluster.start()
        cluster.wait_leader()
        total = args.live + args.ops
        done = [0]
        errors: Counter[str] = Counter()
        stop = threading.Event()

        def job(client: Client, i: int) -> None:
            r = registration(0, 0, i % args.live)
            if i >= args.live:
                with contextlib.suppress(NotFound):  # a retry of one that applied
                    retrying(lambda: client.deregister(r["service"], f"{r['address']}:{r['port']}", by="address"),
                             errors)
            retrying(lambda: register(client, r), errors)
            done[0] += 1

        def sample() -> None:
            while not stop.is_set():
                sizes = {n: dir_bytes(a.data_dir) for n, a in cluster.agents.items()}
                samples.append({"t": time.monotonic(), "done": done[0], "bytes": sizes})
                stop.wait(1.0)

        def report(finished: int, seconds: float) -> None:
            progress(f"{finished:,} / {total:,} operations ({finished / seconds:.0f}/s)")

        started = time.monotonic()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            fill(cluster.servers, 16, total, job, what="the churn", timeout_s=20, report=report)
        finally:
            stop.set()
            sampler.join()
        statuses = cluster.statuses()
        nodes = {n: dict(s.snapshot or {}, last_index=s.last_index) for n, s in statuses.items()
                 if not isinstance(s, Exception)}
    tenths = []
    for k in range(10):
        part = [s for s in samples if k * total / 10 <= s["done"] < (k + 1) * total / 10] or samples[-1:]
        tenths.append({n: max(s["bytes"][n] for s in part) for n in part[0]["bytes"]})
    assert nodes and all(s["last_index"] >= args.live + 2 * args.ops for s in nodes.values()), nodes
    return {"live": args.live, "ops": args.ops, "retried_errors": sum(errors.values()), "agent_args": args.agent_arg,
            "seconds": round(time.monotonic() - started, 1),
            "max_dir_bytes_by_tenth": tenths, "final": nodes,
            "max_dir_bytes": max(max(s["bytes"].values()) for s in samples)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["pause", "churn"])
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--compact", type=int, default=15_000, help="entries adopt deletes (pause; default 15000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--live", type=int, default=10_000)
    p.add_argument("--ops", type=int, default=100_000)
    p.add_argument("--agent-arg", action="append", default=[], metavar="ARG")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run_pause(args) if args.mode == "pause" else run_churn(args)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
