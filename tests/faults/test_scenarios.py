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

from . import scenarios
from .scenarios import RunReport

SECONDS = float(os.environ.get("FAULTS_SECONDS", "30"))

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


def test_the_suite_catches_stale_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end, the checks can fail: a workload whose reads are all local (``stale``) but
    recorded as linearizable is caught under leader partitions, with a history file written."""
    from . import workload

    def lying_read(self: workload.Workload, client: workload.Client, name: str, *, stale: bool) -> None:
        rec = self.recorder
        invoke = rec.now()
        try:
            services = client.services(workload.SERVICE, stale=True)
        except workload.RegistryError:
            return
        complete = rec.now()
        rec.add("read", "ok", [workload.Op(rec.new_id(), name, "read", k, invoke, complete, value=v)
                               for k, v in workload.read_values(services, self.keys).items()])

    monkeypatch.setattr(workload.Workload, "_read", lying_read)
    seed = int(os.environ.get("FAULTS_SEED", random.randrange(2**31)))
    report = scenarios.run_scenario("mutant-stale-reads", scenarios.leader_partition, tmp_path, nodes=3,
                                    seconds=15, seed=seed)
    # NB: not given to record_run: the anomalies it must find are not the registry's.
    assert report.history is not None, f"no anomaly found with every read stale (FAULTS_SEED={seed})"
    header = Path(report.history).read_text().splitlines()[0]
    assert "stale read" in header or "read inconsistent" in header, header
