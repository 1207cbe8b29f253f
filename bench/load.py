"""The load generator: closed-loop clients of one operation against one system, and the writes
the suite makes.

Not a benchmark. Every benchmark that writes goes through here:

- a `Target` says what one client is (`writer(servers, run, index)`) and which exceptions are a
  failed write; `Registrations` is the registry's (one `registry.client.Client` per client,
  each write a new instance), compare_etcd.py's `EtcdPuts` is etcd's;
- `closed_loop` is the one client loop (write, time it, record it, again);
- `run_sequential` drives one client in this process, `warm_up` one through each node;
- `run_load` drives C clients as threads in worker processes over one window: they connect,
  start together at an agreed instant, and only writes completed within the window count; the
  caller's ``on_start``/``on_end`` run at the window's edges (bench/window.py's `Window`);
- `fill` does a fixed number of jobs from N client threads as fast as they go (filling a
  catalogue before a measurement), `retrying` retries one job on `Unavailable`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bench.proc import die_with_parent
from bench.window import Latencies
from registry.client import Client, RegistryError, Unavailable

CLIENT_TIMEOUT_S = 5.0
MAX_SEQUENTIAL_ERRORS = 20
RETRIES = 10  # attempts of one `retrying` job
SERVICES = 16
START_DELAY_S = 0.2  # from "every client is connected" to the window's start
WORKER_WAIT_S = 60.0  # for the worker processes to connect their clients

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The workload: one registration per write, each a new instance


def registration(run: int, client: int, i: int) -> dict[str, Any]:
    """The `register` arguments of write ``i`` of ``client`` in ``run``: unique over (run,
    client, i) for client < 1024 and i < 2**24 (address from i, port from run and client)."""
    block = run * 1024 + client
    a = i % 2**24
    return {"service": f"bench-{(client + i) % SERVICES:02d}",
            "address": f"10.{a >> 16}.{(a >> 8) & 0xFF}.{a & 0xFF}",
            "port": 1024 + block % 64000,
            "tags": ("primary", f"zone-{'abc'[i % 3]}"),
            "meta": {"version": "2.14.1", "commit": f"{(block << 24 | a) & 0xFFFFFFFF:08x}"}}


def register(client: Client, args: dict[str, Any]) -> Any:
    """``client.register`` of one `registration`."""
    return client.register(args["service"], args["address"], args["port"], tags=args["tags"], meta=args["meta"])


def error_name(exc: BaseException) -> str:
    if isinstance(exc, RegistryError):
        return f"{type(exc).__name__}:{exc.code}" if exc.code else type(exc).__name__
    return type(exc).__name__


def rotate(servers: Sequence[str], k: int) -> list[str]:
    """The server list as client ``k`` sees it: it starts at node k mod n, then the others."""
    k %= len(servers)
    return list(servers[k:]) + list(servers[:k])


def procs_for(option: str, clients: int) -> int:
    """Worker processes for ``clients`` from a --procs option: a number, or auto: one per 64
    clients, at most 4. One process ran 64 clients at about 40% of one core (~150-200 us of
    client CPU per write, see bench/README.md), so threads suffice today; more processes only
    add spawning and context switches on 2 cores."""
    return max(1, min(4, math.ceil(clients / 64))) if option == "auto" else int(option)


# ---------------------------------------------------------------------------------------------
# What a client is


class Writer(Protocol):
    def connect(self) -> None:
        """Open the connection before any write is timed (errors are the first write's)."""

    def write(self, i: int) -> Any:
        """Write number ``i`` of this client; raises one of the target's ``errors`` on failure."""

    def close(self) -> None: ...


class Target(Protocol):
    """The system under load, as the clients see it. Picklable: it travels to worker processes."""

    errors: tuple[type[BaseException], ...]  # what a failed write raises
    timeout_s: float  # of one write

    def writer(self, servers: Sequence[str], run: int, index: int) -> Writer:
        """Client number ``index`` of ``run`` (it picks its node from ``servers`` by ``index``)."""


class RegistryWriter:
    def __init__(self, client: Client, run: int, index: int, distinct: int | None) -> None:
        self.client, self.run, self.index, self.distinct = client, run, index, distinct

    def connect(self) -> None:
        with contextlib.suppress(RegistryError):
            self.client.status()

    def write(self, i: int) -> Any:
        return register(self.client, registration(self.run, self.index, i % self.distinct if self.distinct else i))

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class Registrations:
    """The registry: client k is a `Client` starting at node k mod n; its write i registers
    `registration(run, k, i)`, a new instance (with ``distinct``, instance i mod ``distinct``:
    an idempotent upsert that still goes through the log, and a bounded catalogue)."""

    distinct: int | None = None
    timeout_s: float = CLIENT_TIMEOUT_S
    errors: tuple[type[BaseException], ...] = (RegistryError,)

    def writer(self, servers: Sequence[str], run: int, index: int) -> RegistryWriter:
        return RegistryWriter(Client(rotate(servers, index), timeout_s=self.timeout_s), run, index, self.distinct)


# ---------------------------------------------------------------------------------------------
# The client loop


def closed_loop(writer: Writer, errors: tuple[type[BaseException], ...], *, stop: Callable[[int, float], bool],
                done: Callable[[float, float, Any], None], failed: Callable[[float, BaseException], None]) -> None:
    """Writes 0, 1, 2... one after the other until ``stop(i, now)``: ``done(t0, t1, result)`` for
    each that returned, ``failed(t, exc)`` for each that raised one of ``errors`` (time.monotonic,
    which is system-wide on Linux, so that worker processes share one window)."""
    for i in itertools.count():
        t0 = time.monotonic()
        if stop(i, t0):
            return
        try:
            result = writer.write(i)
        except errors as exc:
            failed(time.monotonic(), exc)
            continue
        done(t0, time.monotonic(), result)


@dataclass
class Tally:
    """What one client saw: the latency of each write that completed by ``end_at``, the errors
    raised by then, and the writes that completed after it (``late``: not counted)."""

    end_at: float = math.inf
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    late: int = 0

    def done(self, t0: float, t1: float, _result: Any = None) -> None:
        if t1 <= self.end_at:
            self.latencies.append(t1 - t0)
        else:
            self.late += 1

    def failed(self, t: float, exc: BaseException) -> None:
        if t <= self.end_at:
            self.errors[error_name(exc)] += 1

    def add(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.errors.update(other.errors)
        self.late += other.late


def run_sequential(target: Target, servers: Sequence[str], run: int, writes: int) -> dict[str, Any]:
    """One client in this process (client 0, on the first of ``servers``), ``writes`` writes one
    after the other; gives up after MAX_SEQUENTIAL_ERRORS errors."""
    tally = Tally()

    def stop(i: int, _now: float) -> bool:
        if sum(tally.errors.values()) >= MAX_SEQUENTIAL_ERRORS:
            print(f"[load] giving up after {MAX_SEQUENTIAL_ERRORS} errors: {dict(tally.errors)}", file=sys.stderr,
                  flush=True)
            return True
        return i >= writes

    writer = target.writer(servers, run, 0)
    cpu0 = time.process_time()
    try:
        writer.connect()
        start = time.monotonic()
        closed_loop(writer, target.errors, stop=stop, done=tally.done, failed=tally.failed)
        elapsed = time.monotonic() - start
    finally:
        writer.close()
    cpu = time.process_time() - cpu0
    return {"writes": len(tally.latencies), "errors": dict(tally.errors), "seconds": elapsed,
            "writes_per_s": len(tally.latencies) / elapsed, **Latencies(tally.latencies).summary(),
            "client_cpu_pct": 100 * cpu / elapsed}


def warm_up(target: Target, servers: Sequence[str], runs: Iterator[int], writes: int) -> int:
    """``writes`` sequential writes through each node in turn (a new run each), so that every
    node has its connections and a log before a window opens; returns the writes made."""
    return sum(run_sequential(target, rotate(servers, k), next(runs), writes)["writes"] for k in range(len(servers)))


# ---------------------------------------------------------------------------------------------
# Many clients over one window: threads in worker processes


def _client_thread(target: Target, servers: list[str], run: int, index: int, connected: threading.Barrier,
                   window: list[float], out: list[Tally]) -> None:
    """One closed-loop client: connects, waits at ``connected`` until the window is known, then
    writes from window[0] until window[1]."""
    writer = target.writer(servers, run, index)
    try:
        writer.connect()
        connected.wait()
        connected.wait()  # the second time: the window is set
        start_at, end_at = window
        time.sleep(max(0.0, start_at - time.monotonic()))
        tally = Tally(end_at)
        closed_loop(writer, target.errors, stop=lambda _i, now: now >= end_at, done=tally.done, failed=tally.failed)
    finally:
        writer.close()
    out.append(tally)


def _worker(target: Target, servers: list[str], run: int, indexes: list[int], seconds: float, ready: Any, go: Any,
            start_at: Any, results: Any) -> None:
    """A worker process: one client thread per index in ``indexes``. Says ``ready`` once every
    client is connected; starts writing at ``start_at`` once ``go`` is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    die_with_parent()
    out: list[Tally] = []
    window: list[float] = []
    connected = threading.Barrier(len(indexes) + 1)
    threads = [threading.Thread(target=_client_thread, daemon=True,
                                args=(target, servers, run, k, connected, window, out)) for k in indexes]
    for t in threads:
        t.start()
    connected.wait(timeout=WORKER_WAIT_S)
    ready.put(os.getpid())
    go.wait()
    begin = start_at.value
    window[:] = [begin, begin + seconds]
    connected.wait(timeout=WORKER_WAIT_S)
    # The CPU of this process (every client thread, and a client library's own threads) within the window.
    time.sleep(max(0.0, begin - time.monotonic()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, begin + seconds - time.monotonic()))
    cpu = time.process_time() - cpu0
    for t in threads:
        t.join()
    total = Tally()
    for tally in out:
        total.add(tally)
    results.put({"pid": os.getpid(), "latencies": total.latencies, "errors": dict(total.errors),
                 "late": total.late, "cpu_s": cpu})


def _get(queue: Any, workers: Sequence[Any], timeout_s: float) -> Any:
    """The next item of ``queue``; RuntimeError if a worker died first or on the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.5)
        except Exception:  # queue.Empty
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client worker process exited with status {dead[0].exitcode}") from None
    raise RuntimeError(f"no answer from the client worker processes within {timeout_s:g} s")


def run_load(target: Target, servers: list[str], run: int, clients: int, seconds: float, procs: int,
             on_start: Callable[[], None] | None = None, on_end: Callable[[], None] | None = None, *,
             result_timeout_s: float | None = None) -> dict[str, Any]:
    """``clients`` closed-loop clients of ``target`` for ``seconds``, client k in worker k mod
    ``procs``. ``on_start()`` and ``on_end()`` are called when the window opens and closes (to
    sample counters over exactly the window, start a profiler...)."""
    procs = max(1, min(procs, clients))
    ctx = mp.get_context("spawn")  # NB: no fork: this process holds ZeroMQ sockets and threads
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    workers = [ctx.Process(target=_worker, daemon=True,
                           args=(target, servers, run, list(range(w, clients, procs)), seconds, ready, go, start_at,
                                 results))
               for w in range(procs)]
    try:
        for w in workers:
            w.start()
        for _ in workers:
            _get(ready, workers, WORKER_WAIT_S)
        start_at.value = time.monotonic() + START_DELAY_S
        go.set()
        time.sleep(max(0.0, start_at.value - time.monotonic()))
        if on_start is not None:
            on_start()
        time.sleep(max(0.0, start_at.value + seconds - time.monotonic()))
        if on_end is not None:
            on_end()
        timeout_s = result_timeout_s if result_timeout_s is not None else target.timeout_s + 30
        outs = [_get(results, workers, timeout_s) for _ in workers]
        for w in workers:
            w.join(timeout=10)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
    latencies = [x for o in outs for x in o["latencies"]]
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o["errors"])
    cpu = [100 * o["cpu_s"] / seconds for o in outs]
    return {"clients": clients, "procs": procs, "seconds": seconds, "writes": len(latencies),
            "writes_per_s": len(latencies) / seconds, **Latencies(latencies).summary(),
            "errors": dict(errors), "late": sum(o["late"] for o in outs),
            "client_cpu_pct": {"per_proc": [round(c, 1) for c in cpu], "total": round(sum(cpu), 1),
                               "us_per_write": 1e6 * sum(o["cpu_s"] for o in outs) / max(1, len(latencies))}}


# ---------------------------------------------------------------------------------------------
# A fixed amount of work, as fast as it goes


def retrying(call: Callable[[], T], errors: Counter[str], attempts: int = RETRIES) -> T:
    """``call()``, again after each `Unavailable` (counted in ``errors``), at most ``attempts``
    times; the last one's error is raised. Only for idempotent calls."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Unavailable as exc:
            errors[error_name(exc)] += 1
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def fill(servers: Sequence[str], threads: int, count: int, job: Callable[[Client, int], None], *, what: str,
         timeout_s: float = CLIENT_TIMEOUT_S, report: Callable[[int, float], None] | None = None,
         every_s: float = 5.0) -> float:
    """Jobs 0 .. count-1 shared by ``threads`` client threads (thread k's `Client` starts at node
    k mod n), each taking the next job when it finished one; ``report(done, seconds)`` every
    ``every_s``. Returns the seconds it took; if a thread raised, RuntimeError ("``what`` failed")
    once every thread stopped."""
    jobs = itertools.count()  # next() is atomic under the GIL
    done = [0]
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with Client(rotate(servers, k), timeout_s=timeout_s) as client:
                while (i := next(jobs)) < count:
                    job(client, i)
                    done[0] += 1
        except BaseException as exc:  # noqa: BLE001 (raised below)
            failures.append(exc)

    t0 = time.monotonic()
    pool = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    next_report = t0 + every_s
    for t in pool:
        while t.is_alive():
            t.join(timeout=0.5)
            if report is not None and time.monotonic() >= next_report:
                next_report += every_s
                report(done[0], time.monotonic() - t0)
    if failures:
        raise RuntimeError(f"{what} failed: {failures[0]!r}")
    return time.monotonic() - t0
