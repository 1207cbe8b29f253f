"""The soak profile: random fault schedules on fresh clusters for ``SOAK_MINUTES`` minutes
(``make soak SOAK_MINUTES=30``); collected only when ``SOAK_MINUTES`` is set (conftest.py).

Each run (``SOAK_RUN_SECONDS`` of faults, default 60) draws its size (3 or 5 nodes) and its
faults from its seed; one run in five puts latency and jitter on every Raft link (the delaying
proxy) and then draws only process faults (crashes, pauses). The seed of run i is
``FAULTS_SEED + i``. The report lists every run; the test fails if any run found an anomaly.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from . import scenarios
from .scenarios import RunReport

pytestmark = [pytest.mark.soak, pytest.mark.usefixtures("needs_hosts")]


def test_soak(tmp_path: Path, record_run: Callable[[RunReport], RunReport]) -> None:
    """Random fault schedules find no anomaly, however long they run."""
    if not os.environ.get("SOAK_MINUTES"):
        pytest.skip("the soak runs only with SOAK_MINUTES set: make soak SOAK_MINUTES=30")
    minutes = float(os.environ["SOAK_MINUTES"])
    run_seconds = float(os.environ.get("SOAK_RUN_SECONDS", "60"))
    first_seed = int(os.environ.get("FAULTS_SEED", random.randrange(2**31)))
    end = time.monotonic() + minutes * 60
    anomalies: list[str] = []
    i = 0
    while i == 0 or time.monotonic() + run_seconds + 30 < end:
        seed = first_seed + i
        rng = random.Random(seed)
        nodes, proxy = rng.choice([3, 5]), rng.random() < 0.2
        report = record_run(scenarios.run_scenario(f"soak-{i}", scenarios.random_faults, tmp_path / f"run{i}",
                                                   nodes=nodes, seconds=run_seconds, seed=seed, proxy=proxy))
        print(f"soak run {i}: seed {seed}, {nodes} nodes{' (latency)' if proxy else ''}, {report.total_ops} ops, "
              f"{sum(report.faults.values())} fault events, {len(report.anomalies)} anomalies", file=sys.stderr)
        anomalies += [f"run {i} (FAULTS_SEED={seed}): {a}" for a in report.anomalies]
        i += 1
    assert not anomalies, "\n".join(anomalies)
