"""The fault-injection suite's report in pytest's terminal summary: runs, operations, faults
injected and anomalies found. Each scenario attaches its ``RunReport`` (JSON) to the test's
``user_properties``, which pytest-xdist carries from the workers to the controller."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

REPORT_PROPERTY = "faults_report"
# Events the runs log that end a fault rather than inject one.
RECOVERIES = frozenset({"heal", "heal-all", "restart", "sigcont"})
_reports: dict[str, list[dict[str, Any]]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "teardown":  # NB: the properties added during the call are all there by now
        return
    runs = [json.loads(value) for name, value in report.user_properties if name == REPORT_PROPERTY]
    if runs:
        _reports[report.nodeid] = runs


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _reports:
        return
    tr = terminalreporter
    tr.section("fault-injection report")
    tr.write_line(f"{'scenario':<22}{'nodes':>5}{'secs':>7}{'ops':>7}{'indet':>7}{'faults':>7}{'anomalies':>10}  faults injected")
    total_ops = total_faults = total_anomalies = runs = 0
    kinds: Counter[str] = Counter()
    for nodeid in sorted(_reports):
        for run in _reports[nodeid]:
            runs += 1
            ops = sum(run["ops"].values())
            indet = sum(v for k, v in run["ops"].items() if k.endswith("indeterminate"))
            faults = {k: v for k, v in run["faults"].items() if k not in RECOVERIES}
            n_faults = sum(faults.values())
            total_ops, total_faults = total_ops + ops, total_faults + n_faults
            total_anomalies += len(run["anomalies"])
            kinds.update(faults)
            detail = ", ".join(f"{k} x{v}" for k, v in sorted(faults.items()))
            tr.write_line(f"{run['scenario']:<22}{run['nodes']:>5}{run['seconds']:>7.0f}{ops:>7}{indet:>7}"
                          f"{n_faults:>7}{len(run['anomalies']):>10}  {detail}")
            for anomaly in run["anomalies"]:
                tr.write_line(f"    ANOMALY: {anomaly}", red=True)
    tr.write_line(f"total: {runs} runs, {total_ops} operations, {total_faults} faults injected, "
                  f"{total_anomalies} anomalies", bold=True, red=bool(total_anomalies), green=not total_anomalies)
