"""The CI profile of the fault-injection suite: six scenarios on separate test hosts (network
namespaces), each ~30 s of faults under a concurrent workload, each history checked for
linearizability, then convergence, identical catalogues and agreeing DNS (scenarios.py).

``FAULTS_SECONDS`` sets the fault phase of each run (default 30); ``FAULTS_SEED`` fixes the
schedules' seed (default: random, printed in the report and the failure message).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from registry.client import Client
from tests.integration.cluster import LEADER_TIMEOUT_S, poll

from . import scenarios
from .hosts import Network
from .linearizability import Op, check_history, write_history
from .netfaults import NetCluster, NetFaults
from .scenarios import KEYS, RunReport
from .workload import SERVICE, Recorder, key_address, read_values

SECONDS = float(os.environ.get("FAULTS_SECONDS", "30"))
# A write with a leader in place needs milliseconds; the rest is room for a loaded machine.
WRITE_TIMEOUT_S = 20.0

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("needs_hosts")]

CASES = [
    pytest.param(scenarios.leader_partition, 3, False, id="leader-partition"),
    pytest.param(scenarios.majority_minority, 5, False, id="majority-minority"),
    pytest.param(scenarios.asymmetric, 3, False, id="asymmetric"),
    pytest.param(scenarios.bridge, 5, False, id="bridge"),
    pytest.param(scenarios.crash_with_loss, 3, False, id="crash-loss"),
    pytest.param(scenarios.pause_with_latency, 3, True, id="pause-latency"),
]


@pytest.mark.parametrize(("schedule", "nodes", "proxy"), CASES)
def test_scenario(schedule: scenarios.Schedule, nodes: int, proxy: bool, tmp_path: Path,
                  record_run: Callable[[RunReport], RunReport]) -> None:
    """Under this fault schedule, every history is linearizable, and once healed the cluster
    converges, every node holds the same catalogue and every node's DNS agrees with it."""
    seed = int(os.environ.get("FAULTS_SEED", random.randrange(2**31)))
    report = record_run(scenarios.run_scenario(schedule.__name__, schedule, tmp_path, nodes=nodes,
                                               seconds=SECONDS, seed=seed, proxy=proxy))
    assert report.total_ops > 0 and report.faults, report
    assert not report.anomalies, (
        f"{len(report.anomalies)} anomalies (FAULTS_SEED={seed}; node logs and faults.log in {tmp_path}):\n"
        + "\n".join(report.anomalies))


def test_the_suite_catches_stale_reads(tmp_path: Path) -> None:
    """End to end, the checks can fail: a read through the lying path (a node's local view,
    recorded as linearizable) that returns an old value after a newer write was acknowledged is
    flagged, with a history file written. The stale read is made, not hoped for: the leader is
    isolated, the majority side elects another and acknowledges a newer value, then the old
    leader's local view is read."""
    rec = Recorder()
    key = KEYS[0]
    network = Network(["n1", "n2", "n3"])
    cluster = NetCluster(tmp_path, network)
    faults = NetFaults(network)
    try:
        cluster.start()
        cluster.wait_answering()
        before = cluster.wait_for_leader()
        old_leader = before.node
        majority = [n for n in cluster.names if n != old_leader]
        old = _register(rec, cluster.client(timeout_s=WRITE_TIMEOUT_S), key, "old")
        liar = cluster.client(old_leader, timeout_s=WRITE_TIMEOUT_S)
        poll(f"{old_leader} applying the old value", lambda: _local_value(liar, key) == "old" or None,
             LEADER_TIMEOUT_S)
        faults.isolate(old_leader)
        cluster.wait_for_leader(names=majority, above_term=before.term)
        new = _register(rec, cluster.client(majority, timeout_s=WRITE_TIMEOUT_S), key, "new")
        read = _lying_read(rec, liar, key)
    finally:
        faults.heal()
        cluster.close()
        network.close()
    # The premise: the write of "new" was acknowledged before the read began, and the read
    # still returned "old" (a node cut off from the majority cannot have learned "new").
    assert (old.result, new.result) == (True, False), (old, new)
    assert new.complete is not None and new.complete < read.invoke, (new, read)
    assert read.value == "old", read
    result = check_history(rec.ops)
    flagged = {a.key: a for a in result.anomalies}
    assert set(flagged) == {key} and flagged[key].kind == "stale-read" and flagged[key].op_id == read.id, \
        result.summary()
    history = write_history(tmp_path / "history-mutant-stale-reads.jsonl", rec.ops, flagged[key].summary)
    header = history.read_text().splitlines()[0]
    assert "stale read (a newer acknowledged write was missed)" in header, header


def _register(rec: Recorder, client: Client, key: str, value: str) -> Op:
    invoke = rec.now()
    created = client.register(SERVICE, key_address(key, KEYS), rec.next_port(), id=key, meta={"v": value}).created
    op = Op(rec.new_id(), "writer", "register", key, invoke, rec.now(), value=value, result=created)
    rec.add("register", "ok", [op])
    return op


def _local_value(client: Client, key: str) -> str | None:
    return read_values(client.services(SERVICE, stale=True), [key])[key]


def _lying_read(rec: Recorder, client: Client, key: str) -> Op:
    """A read answered from the node's local view but recorded as a linearizable one."""
    invoke = rec.now()
    value = _local_value(client, key)
    op = Op(rec.new_id(), "liar", "read", key, invoke, rec.now(), value=value)
    rec.add("read", "ok", [op])
    return op
