"""The client workload of the fault scenarios: concurrent workers doing register, deregister and
read on a few instances of one service, each through its own ``registry.client.Client``, with
every operation recorded as a ``linearizability.Op``.

Each worker but the last talks to one node only (so reads through a node cut off from the
leader are exercised, and must not return stale data); the last may use any node. Every
register writes a value never written before (``meta["v"]``, and a port unique in the run, so
DNS answers tell values apart). A write that ends in ``Unavailable`` (no answer, ``timeout``,
``no_leader``) or any unexpected error is indeterminate: it may take effect later or never. A
read that fails has no effect and is only counted. A fraction of reads are ``stale`` (the node's
local view); they are recorded but excluded from the linearizability check.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence

from registry.client import Client, NotFound, RegistryError, Services, Unavailable

from .linearizability import Op

SERVICE = "svc"
OP_TIMEOUT_S = 4.0
# A worker's pause between operations, uniform in this range (pacing, so histories stay small
# enough to check quickly; not synchronisation).
THINK_S = (0.01, 0.06)
FIRST_PORT = 20000


def key_address(key: str, keys: Sequence[str]) -> str:
    return f"10.9.0.{keys.index(key) + 1}"


class Recorder:
    """The shared history: thread-safe append, ids in invocation order, times relative to ``t0``."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.ops: list[Op] = []
        self.counts: Counter[str] = Counter()  # "read ok", "register indeterminate", ...
        self.other_errors: list[str] = []  # errors other than Unavailable/NotFound: worth a look
        self._ids = itertools.count(1)
        self._ports = itertools.count(FIRST_PORT)
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def next_port(self) -> int:
        with self._lock:
            return next(self._ports)

    def add(self, op_kind: str, outcome: str, ops: Sequence[Op] = (), error: str | None = None) -> None:
        with self._lock:
            self.counts[f"{op_kind} {outcome}"] += 1
            self.ops.extend(ops)
            if error is not None:
                self.other_errors.append(error)

    def new_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def successes_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for op in self.ops if op.complete is not None and op.invoke >= t and not op.stale)


def read_values(services: Services, keys: Sequence[str]) -> dict[str, str | None]:
    """Key -> value (meta ``v``) or None (absent), for every key asked and any other id found."""
    out: dict[str, str | None] = dict.fromkeys(keys)
    for inst in services.get(SERVICE, []):
        out[inst.id] = inst.meta.get("v", f"<no value: {inst.address}:{inst.port}>")
    return out


class Workload:
    """``n_workers`` worker threads over ``servers`` (client addresses by node name)."""

    def __init__(self, servers: dict[str, str], keys: Sequence[str], *, n_workers: int = 6,
                 seed: int = 0, stale_fraction: float = 0.1, recorder: Recorder | None = None) -> None:
        assert n_workers >= 2
        self.servers = servers
        self.keys = list(keys)
        self.recorder = recorder or Recorder()
        self.stale_fraction = stale_fraction
        self._stop = threading.Event()
        names = list(servers)
        self._threads = []
        for i in range(n_workers):
            pinned = [names[i % len(names)]] if i < n_workers - 1 else names
            name = f"w{i}@{'+'.join(pinned) if len(pinned) == 1 else 'any'}"
            thread = threading.Thread(target=self._work, args=(name, [servers[n] for n in pinned],
                                                               random.Random(seed * 1000 + i)),
                                      name=name, daemon=True)
            self._threads.append(thread)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask the workers to stop and wait for them (each op is bounded by ``OP_TIMEOUT_S``)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=OP_TIMEOUT_S * 3)
            assert not thread.is_alive(), f"worker {thread.name} did not stop"

    def _work(self, name: str, servers: list[str], rng: random.Random) -> None:
        with Client(servers, timeout_s=OP_TIMEOUT_S) as client:
            while not self._stop.is_set():
                roll = rng.random()
                key = rng.choice(self.keys)
                if roll < 0.35:
                    self._register(client, name, key, rng)
                elif roll < 0.5:
                    self._deregister(client, name, key)
                else:
                    self._read(client, name, stale=rng.random() < self.stale_fraction)
                self._stop.wait(rng.uniform(*THINK_S))

    def _register(self, client: Client, name: str, key: str, rng: random.Random) -> None:
        rec = self.recorder
        port = rec.next_port()
        value = f"{name.split('@')[0]}-{port}"
        invoke = rec.now()
        created: bool | None = None
        error = None
        try:
            created = client.register(SERVICE, key_address(key, self.keys), port, id=key, meta={"v": value}).created
            outcome = "ok"
        except Unavailable as e:
            outcome, error = "indeterminate", e.message
        except RegistryError as e:
            outcome, error = "error", f"{type(e).__name__}: {e.message}"
        complete = rec.now() if created is not None else None
        op = Op(rec.new_id(), name, "register", key, invoke, complete, value=value, result=created, error=error)
        rec.add("register", outcome, [op], error if outcome == "error" else None)

    def _deregister(self, client: Client, name: str, key: str) -> None:
        rec = self.recorder
        invoke = rec.now()
        removed: bool | None = None
        error = None
        try:
            client.deregister(SERVICE, key, by="id")
            removed, outcome = True, "ok"
        except NotFound:
            removed, outcome = False, "ok"
        except Unavailable as e:
            outcome, error = "indeterminate", e.message
        except RegistryError as e:
            outcome, error = "error", f"{type(e).__name__}: {e.message}"
        complete = rec.now() if removed is not None else None
        op = Op(rec.new_id(), name, "deregister", key, invoke, complete, result=removed, error=error)
        rec.add("deregister", outcome, [op], error if outcome == "error" else None)

    def _read(self, client: Client, name: str, *, stale: bool) -> None:
        rec = self.recorder
        kind = "stale-read" if stale else "read"
        invoke = rec.now()
        try:
            services = client.services(SERVICE, stale=stale)
        except Unavailable:
            rec.add(kind, "indeterminate")
            return
        except RegistryError as e:
            rec.add(kind, "error", error=f"{type(e).__name__}: {e.message}")
            return
        complete = rec.now()
        ops = [Op(rec.new_id(), name, "read", key, invoke, complete, value=value, stale=stale)
               for key, value in read_values(services, self.keys).items()]
        rec.add(kind, "ok", ops)
