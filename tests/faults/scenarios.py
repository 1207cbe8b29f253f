"""Fault scenarios: a cluster on test hosts, a concurrent workload, a fault schedule, then the
checks that every run must pass.

``run_scenario`` builds a ``Network`` and a ``NetCluster``, starts the ``Workload``, runs a
schedule (a function that injects and heals faults until the run's deadline), heals every
fault, and then checks, each within a bound:

1. the cluster converges: one leader every node agrees on, and a write is acknowledged again;
2. every node has applied the same index and holds an identical catalogue;
3. the history, plus a final linearizable read of every key, is linearizable per key (so every
   acknowledged write is in the final state unless a later operation removed or replaced it);
4. no stale read returned a value that was never written;
5. every node's DNS answers (SRV with addresses) agree with that final catalogue.

Whatever fails is an anomaly in the ``RunReport``; a non-linearizable history is written to a
JSON-lines file whose first line is the one-line summary. Faults and their times are logged to
``<root>/faults.log`` beside the node logs.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from registry.client import Client, NodeStatus, Services

from .hosts import Network
from .linearizability import Op, check_history, unwritten_stale_reads, write_history
from .netfaults import NetCluster, NetFaults
from .workload import OP_TIMEOUT_S, SERVICE, Recorder, Workload, key_address, read_values

CONVERGE_TIMEOUT_S = 60.0  # from "all faults healed" to one agreed leader and equal catalogues
LIVENESS_TIMEOUT_S = 30.0  # ... and to a new acknowledged operation
DNS_TIMEOUT_S = 20.0
KEYS = ("i0", "i1", "i2", "i3")


@dataclass
class RunReport:
    """What one run did and found (the pytest summary prints these)."""

    scenario: str
    nodes: int
    seed: int
    seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)  # "register ok" -> count
    faults: dict[str, int] = field(default_factory=dict)  # "isolate-leader" -> count
    anomalies: list[str] = field(default_factory=list)
    history: str | None = None
    checked_ops: int = 0
    search_steps: int = 0
    other_errors: list[str] = field(default_factory=list)

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Run:
    """The handle a schedule gets: the cluster, the faults, a seeded RNG and the deadline."""

    def __init__(self, cluster: NetCluster, faults: NetFaults, rng: random.Random, deadline: float,
                 report: RunReport, log: Path, recorder: Recorder) -> None:
        self.cluster, self.faults, self.rng, self.deadline = cluster, faults, rng, deadline
        self.report, self._log, self.recorder = report, log, recorder
        self.crashed: set[str] = set()

    @property
    def names(self) -> list[str]:
        return self.cluster.names

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def hold(self, seconds: float) -> None:
        """Let the current faults last ``seconds`` (or until the deadline). NB: a fault's
        duration, not a synchronisation: nothing waits on anything here."""
        time.sleep(max(0.0, min(seconds, self.time_left())))

    def note(self, kind: str, detail: str = "") -> None:
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
        with open(self._log, "a") as f:
            f.write(f"{self.recorder.now():8.3f} {kind} {detail}\n")

    def leader(self) -> str | None:
        """The node that claims leadership in the highest term, if any answers."""
        best: NodeStatus | None = None
        for status in self.cluster.statuses([n for n in self.names if n not in self.crashed | self.cluster.paused],
                                            wait_s=1.0).values():
            if isinstance(status, NodeStatus) and status.role == "leader" and (best is None or status.term > best.term):
                best = status
        return best.node if best is not None else None

    def leader_or_any(self) -> str:
        return self.leader() or self.rng.choice(self.names)

    def crash(self, name: str) -> None:
        self.cluster.crash(name)
        self.crashed.add(name)
        self.note("kill-9", name)

    def restart(self, name: str) -> None:
        self.cluster.restart(name)
        self.crashed.discard(name)
        self.note("restart", name)

    def pause(self, name: str) -> None:
        self.cluster.pause(name)
        self.note("sigstop", name)

    def resume(self, name: str) -> None:
        self.cluster.resume(name)
        self.note("sigcont", name)

    def heal_all(self) -> None:
        """Every fault off: network rules flushed, no delay, paused nodes resumed, crashed ones restarted."""
        self.faults.heal()
        if self.cluster.proxy is not None:
            self.cluster.proxy.set_delay(0.0)
        for name in sorted(self.cluster.paused):
            self.resume(name)
        for name in sorted(self.crashed):
            self.restart(name)


Schedule = Callable[[Run], None]


def run_scenario(name: str, schedule: Schedule, root: Path, *, nodes: int = 3, seconds: float = 30.0,
                 seed: int = 0, proxy: bool = False, workers: int = 6) -> RunReport:
    """One run (see the module docstring). Never raises for an anomaly: it is in the report."""
    from .netfaults import DelayProxy

    rng = random.Random(seed)
    report = RunReport(name, nodes, seed)
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    network = Network([f"n{i}" for i in range(1, nodes + 1)])
    delay_proxy = DelayProxy(network.gateway, seed=seed) if proxy else None
    cluster = NetCluster(root, network, proxy=delay_proxy)
    workload: Workload | None = None
    try:
        cluster.start()
        cluster.wait_answering()
        cluster.wait_for_leader()
        servers = {n: a.client for n, a in cluster.agents.items()}
        workload = Workload(servers, KEYS, n_workers=workers, seed=seed)
        recorder = workload.recorder
        run = Run(cluster, NetFaults(network), rng, time.monotonic() + seconds, report, root / "faults.log", recorder)
        workload.start()
        schedule(run)
        run.heal_all()
        healed_at = recorder.now()
        run.note("heal-all")
        _check_liveness(cluster, recorder, healed_at, report)
        workload.stop()
        workload = None
        _final_checks(cluster, recorder, report, root / f"history-{name}-seed{seed}.jsonl")
        report.ops = dict(recorder.counts)
        report.other_errors = recorder.other_errors[:20]
    finally:
        if workload is not None:
            workload.stop()
        cluster.close()
        if delay_proxy is not None:
            delay_proxy.close()
        network.close()
        report.seconds = round(time.monotonic() - started, 1)
    return report


def _check_liveness(cluster: NetCluster, recorder: Recorder, healed_at: float, report: RunReport) -> None:
    try:
        cluster.wait_for_leader(CONVERGE_TIMEOUT_S)
    except TimeoutError as e:
        report.anomalies.append(f"no agreed leader {CONVERGE_TIMEOUT_S:g} s after healing: {e}")
        return
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while recorder.successes_since(healed_at) < 20:
        if time.monotonic() > deadline:
            report.anomalies.append(f"fewer than 20 operations succeeded within {LIVENESS_TIMEOUT_S:g} s of healing")
            return
        time.sleep(0.1)


def _final_checks(cluster: NetCluster, recorder: Recorder, report: RunReport, history_path: Path) -> None:
    # 2 and 3. Converged, identical catalogues, and a final linearizable read of every key after
    # every other op completed, all at ONE log index.
    # NB: the workload has stopped, but a write its client gave up on (indeterminate) may still be
    # retried by the node that took it until that node's own deadline, and commit after any given
    # read. So the catalogues are compared with the final read only when every node's applied
    # index equals the read's: then they hold the same log prefix, and must be identical to it.
    catalogues: dict[str, dict[str, str | None]] = {}
    final = None
    keys = list(KEYS)
    invoke = complete = recorder.now()
    try:
        cluster.wait_converged(CONVERGE_TIMEOUT_S)
    except TimeoutError as e:
        report.anomalies.append(f"no convergence within {CONVERGE_TIMEOUT_S:g} s of healing: {e}")
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    with Client([a.client for a in cluster.agents.values()], timeout_s=OP_TIMEOUT_S * 3) as client:
        while True:
            invoke = recorder.now()
            final = client.services(SERVICE)
            complete = recorder.now()
            stale = _catalogues_at_least(cluster, final.index, deadline)
            catalogues = {n: _instances(s) for n, s in stale.items()}
            if stale and all(s.index == final.index for s in stale.values()):
                break  # one index everywhere: compared below
            if time.monotonic() > deadline:
                report.anomalies.append(
                    f"the nodes never stood at one index with the final read within {CONVERGE_TIMEOUT_S:g} s "
                    f"(read at {final.index}; nodes at {dict((n, s.index) for n, s in stale.items())}): {catalogues}")
                catalogues = {}
                break
            time.sleep(0.2)
    final_values = read_values(final, keys)
    ops: list[Op] = list(recorder.ops)
    ops += [Op(recorder.new_id(), "final", "read", k, invoke, complete, value=v) for k, v in final_values.items()]
    result = check_history(ops)
    report.checked_ops = sum(k.ops for k in result.keys)
    report.search_steps = sum(k.steps for k in result.keys)
    problems = [a.summary for a in result.anomalies]
    problems += [f"stale read of a value never written: {op.describe()}" for op in unwritten_stale_reads(ops)]
    if problems:
        summary = f"{report.scenario} seed {report.seed}: " + "; ".join(problems)
        report.history = str(write_history(history_path, ops, summary, scenario=report.scenario, seed=report.seed))
        report.anomalies += [f"{p} (history: {history_path})" for p in problems]
    expected = _instances(final)
    for name, catalogue in catalogues.items():
        if catalogue != expected:
            report.anomalies.append(f"{name}'s catalogue {catalogue} differs from the final read {expected} "
                                    f"at the same index {final.index}")
    # 5. DNS on every node agrees with the final catalogue.
    want = {(key_address(k, keys), inst.port) for k in keys for inst in final.get(SERVICE, []) if inst.id == k}
    for name, (host, port) in cluster.dns_addresses().items():
        got = _dns_agrees(host, port, want)
        if got is not None:
            report.anomalies.append(f"DNS of {name} answers {got}, the catalogue has {sorted(want)}")


def _catalogues_at_least(cluster: NetCluster, index: int, deadline: float) -> dict[str, Services]:
    """Every node's own catalogue once each has applied ``index`` (or what they hold at the deadline)."""
    while True:
        stale = cluster.stale_catalogues()
        if all(s.index >= index for s in stale.values()) or time.monotonic() > deadline:
            return stale
        time.sleep(0.1)


def _instances(services: dict) -> dict[str, str | None]:  # type: ignore[type-arg]
    return {inst.id: f"{inst.address}:{inst.port} v={inst.meta.get('v')}" for inst in services.get(SERVICE, [])}


def _dns_srv(host: str, port: int) -> set[tuple[str, int]] | str:
    """The (address, port) pairs of ``svc``'s SRV answer at one node, or a description of a failure."""
    query = dns.message.make_query(f"{SERVICE}.service.registry", dns.rdatatype.SRV)
    try:
        reply, _ = dns.query.udp_with_fallback(query, host, port=port, timeout=2.0)
    except Exception as e:  # noqa: BLE001 (timeouts and socket errors: the caller retries)
        return f"no answer: {type(e).__name__}: {e}"
    rcode = reply.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return set()
    if rcode != dns.rcode.NOERROR:
        return f"rcode {dns.rcode.to_text(rcode)}"
    addresses = {rrset.name.to_text(): rr.address for rrset in reply.additional
                 if rrset.rdtype == dns.rdatatype.A for rr in rrset}
    out = set()
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.SRV:
            for rr in rrset:
                out.add((addresses.get(rr.target.to_text(), rr.target.to_text()), rr.port))
    return out


def _dns_agrees(host: str, port: int, want: set[tuple[str, int]]) -> str | None:
    """None once the node's DNS answers exactly ``want`` (it may lag its node briefly), else
    what it last answered, after ``DNS_TIMEOUT_S``."""
    deadline = time.monotonic() + DNS_TIMEOUT_S
    while True:
        got = _dns_srv(host, port)
        if got == want:
            return None
        if time.monotonic() > deadline:
            return repr(sorted(got) if isinstance(got, set) else got)
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Schedules


def leader_partition(run: Run) -> None:
    """Isolate whoever leads, for longer than an election; heal; again."""
    while run.time_left() > 2:
        leader = run.leader_or_any()
        run.faults.isolate(leader)
        run.note("isolate-leader", leader)
        run.hold(run.rng.uniform(3, 6))
        run.faults.heal()
        run.note("heal")
        run.hold(run.rng.uniform(1.5, 3))


def majority_minority(run: Run) -> None:
    """The leader and one other node (a minority of 5) split from the other three."""
    while run.time_left() > 2:
        leader = run.leader_or_any()
        other = run.rng.choice([n for n in run.names if n != leader])
        run.faults.split([leader, other])
        run.note("split-minority-leader", f"{leader},{other}")
        run.hold(run.rng.uniform(3, 6))
        run.faults.heal()
        run.note("heal")
        run.hold(run.rng.uniform(1.5, 3))


def asymmetric(run: Run) -> None:
    """One-way cuts around the leader: it cannot hear its followers, or they cannot hear it."""
    inbound = True
    while run.time_left() > 2:
        leader = run.leader_or_any()
        for other in run.names:
            if other == leader:
                continue
            if inbound:
                run.faults.cut(other, leader)
            else:
                run.faults.cut(leader, other)
        run.note("cut-into-leader" if inbound else "cut-out-of-leader", leader)
        inbound = not inbound
        run.hold(run.rng.uniform(3, 5))
        run.faults.heal()
        run.note("heal")
        run.hold(run.rng.uniform(1.5, 3))


def bridge(run: Run) -> None:
    """Two halves that only a middle node sees (5 nodes); the leader is in a half or in the middle."""
    while run.time_left() > 2:
        leader = run.leader_or_any()
        others = [n for n in run.names if n != leader]
        run.rng.shuffle(others)
        middle = leader if run.rng.random() < 0.3 else others.pop()
        rest = [n for n in run.names if n != middle]
        run.rng.shuffle(rest)
        half = len(rest) // 2
        run.faults.bridge(rest[:half], middle, rest[half:])
        run.note("bridge", f"{rest[:half]} <- {middle} -> {rest[half:]}")
        run.hold(run.rng.uniform(4, 7))
        run.faults.heal()
        run.note("heal")
        run.hold(run.rng.uniform(1.5, 3))


def crash_with_loss(run: Run) -> None:
    """Packet loss between nodes throughout, while kill -9 takes down the leader or any node
    (restarted a few seconds later, from its disk)."""
    pct = run.rng.choice([5, 10, 15])
    run.faults.loss(pct)
    run.note("packet-loss", f"{pct}%")
    while run.time_left() > 2:
        victim = run.leader_or_any() if run.rng.random() < 0.6 else run.rng.choice(run.names)
        run.crash(victim)
        run.hold(run.rng.uniform(2, 4))
        run.restart(victim)
        run.hold(run.rng.uniform(2, 4))


def pause_with_latency(run: Run) -> None:
    """Latency and jitter on every Raft link (the delaying proxy), while SIGSTOP pauses the
    leader (or any node) for longer than an election timeout and SIGCONT wakes it."""
    assert run.cluster.proxy is not None, "needs a cluster with proxy=True"
    delay = run.rng.choice([0.02, 0.04])
    run.cluster.proxy.set_delay(delay, delay / 2)
    run.note("latency", f"{delay * 1000:.0f}±{delay * 500:.0f} ms")
    while run.time_left() > 2:
        victim = run.leader_or_any() if run.rng.random() < 0.7 else run.rng.choice(run.names)
        run.pause(victim)
        run.hold(run.rng.uniform(1.5, 4))  # elections take 0.5-1 s (10-20 ticks of 50 ms)
        run.resume(victim)
        run.hold(run.rng.uniform(1.5, 3))


def random_faults(run: Run) -> None:
    """The soak's schedule: any fault above at random, for random spans. With the delaying
    proxy (latency and jitter throughout), only process faults: nftables rules match the
    nodes' addresses, which proxied traffic does not carry."""
    if run.cluster.proxy is not None:
        delay = run.rng.choice([0.01, 0.03, 0.06])
        run.cluster.proxy.set_delay(delay, delay * run.rng.uniform(0, 1))
        run.note("latency", f"{delay * 1000:.0f} ms")
    while run.time_left() > 2:
        choice = run.rng.randrange(5, 7) if run.cluster.proxy is not None else run.rng.randrange(7)
        names = run.names
        leader = run.leader_or_any()
        victims: list[str] = []
        paused: list[str] = []
        if choice == 0:
            run.faults.isolate(leader)
            run.note("isolate-leader", leader)
        elif choice == 1:
            minority = [leader, *run.rng.sample([n for n in names if n != leader], (len(names) - 1) // 2 - 1)]
            run.faults.split(minority)
            run.note("split-minority-leader", ",".join(minority))
        elif choice == 2:
            other = run.rng.choice([n for n in names if n != leader])
            src, dst = (leader, other) if run.rng.random() < 0.5 else (other, leader)
            run.faults.cut(src, dst)
            run.note("one-way-cut", f"{src}->{dst}")
        elif choice == 3 and len(names) >= 3:
            rest = [n for n in names if n != leader]
            run.rng.shuffle(rest)
            middle = rest.pop()
            half = len(rest) // 2 or 1
            run.faults.bridge(rest[:half], middle, rest[half:])
            run.note("bridge", middle)
        elif choice == 4:
            pct = run.rng.choice([5, 10, 20, 30])
            run.faults.loss(pct)
            run.note("packet-loss", f"{pct}%")
        elif choice == 5:
            victims = [leader if run.rng.random() < 0.5 else run.rng.choice(names)]
            run.crash(victims[0])
        else:
            paused = [leader]
            run.pause(leader)
        run.hold(run.rng.uniform(2, 8))
        run.faults.heal()
        for name in paused:
            run.resume(name)
        for name in victims:
            run.restart(name)
        run.note("heal")
        run.hold(run.rng.uniform(1, 4))
