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
