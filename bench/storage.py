"""Storage benchmark (not a test): durable saves per second for batches of 1, 10 and 100 entries.

    .venv/bin/python bench/storage.py [--dir DIR] [--seconds 2] [--payload 128]

Each row opens a fresh LmdbStorage in a temporary directory under --dir (default: the current
directory, so that it measures the disk a real --data-dir would be on, not a tmpfs) and calls
save(batch, hard_state, sync=True) in a loop, as the node loop does once per Ready. The last
rows measure the alternative LmdbStorage does not use (LMDB opened with sync=False plus
env.sync(True) after each commit: one flush instead of two, but not power-loss safe; see
LmdbStorage's docstring) with the raw lmdb package, for comparison.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lmdb  # noqa: E402

from bench.window import Latencies  # noqa: E402
from registry.raft import Entry, HardState, Index, NodeId, Term
from registry.storage import LmdbStorage  # noqa: E402
from registry.storage.codec import encode_entry, encode_hard_state, index_key  # noqa: E402

BATCHES = (1, 10, 100)


def measure(save: Callable[[list[Entry]], None], batch: int, payload: bytes, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    index = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        entries = [Entry(Term(1), Index(index + k + 1), data=payload) for k in range(batch)]
        index += batch
        t0 = time.perf_counter()
        save(entries)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    percentiles = Latencies(latencies)
    return {
        "saves_per_s": len(latencies) / elapsed,
        "entries_per_s": len(latencies) * batch / elapsed,
        "p50_ms": percentiles.pct(50),
        "p99_ms": percentiles.pct(99),
    }


def bench_storage(root: Path, batch: int, payload: bytes, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=root) as tmp, \
            LmdbStorage(Path(tmp), node_name="bench", cluster_id="bench") as store:
        def save(entries: list[Entry]) -> None:
            store.save(entries, HardState(Term(1), NodeId(1), Index(entries[0].index - 1)), sync=True)
        return measure(save, batch, payload, seconds)


def bench_nosync_then_sync(root: Path, batch: int, payload: bytes, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        env = lmdb.open(str(Path(tmp) / "raft"), map_size=2 * 1024**3, max_dbs=2, sync=False)
        log, meta = env.open_db(b"log"), env.open_db(b"meta")
        try:
            def save(entries: list[Entry]) -> None:
                with env.begin(write=True) as txn:
                    txn.cursor(db=log).putmulti([(index_key(e.index), encode_entry(e)) for e in entries], append=True)
                    txn.put(b"hard_state", encode_hard_state(HardState(Term(1), NodeId(1), Index(0))), db=meta)
                env.sync(True)
            return measure(save, batch, payload, seconds)
        finally:
            env.close()


def filesystem(path: Path) -> str:
    """"TYPE on DEVICE" of the filesystem holding ``path`` (tmpfs: fsync costs nothing)."""
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True).stdout
        fields = out.splitlines()[-1].split()
        return f"{fields[1]} on {fields[0]}"
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown filesystem"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to create the temporary data directories")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each row")
    parser.add_argument("--payload", type=int, default=128, help="bytes of data per entry")
    args = parser.parse_args()
    payload = os.urandom(args.payload)
    print(f"storage benchmark: {args.dir} ({filesystem(args.dir)}), {args.payload}-byte entries, "
          f"{args.seconds:g} s per row, sync=True")
    print(f"{'backend':<36} {'batch':>5} {'saves/s':>9} {'entries/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    rows = [("LmdbStorage (LMDB durable commit)", bench_storage)]
    rows.append(("raw lmdb sync=False + env.sync(True)", bench_nosync_then_sync))
    for name, run in rows:
        for batch in BATCHES:
            r = run(args.dir, batch, payload, args.seconds)
            print(f"{name:<36} {batch:>5} {r['saves_per_s']:>9.0f} {r['entries_per_s']:>10.0f} "
                  f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")


if __name__ == "__main__":
    main()
