"""Fixtures of the fault-injection suite: the root guard and the per-run artefacts.

The scenarios build network namespaces, so they need root (and ``ip``, ``nft``). Outside root
they skip and say why, except under CI (the ``CI`` environment variable set), where a skip
would hide that the suite never ran: there they fail instead. The checker's own tests
(``test_linearizability.py``) need nothing and always run.

The soak (``test_soak.py``, marker ``soak``) is collected only when ``SOAK_MINUTES`` is set
(``make soak``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .hosts import missing_requirements
from .scenarios import RunReport

from .report import REPORT_PROPERTY


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name == "test_soak.py" and not os.environ.get("SOAK_MINUTES"):
        return True
    return None


@pytest.fixture
def needs_hosts() -> None:
    """Skip (or, under CI, fail) unless this process can build test hosts."""
    require_hosts()


def require_hosts() -> None:
    """Return if this process can build test hosts; else skip, or fail when ``CI`` is set."""
    missing = missing_requirements()
    if not missing:
        return
    why = "the fault-injection scenarios need " + ", ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run them, so this is a failure, not a skip (run CI as root)")
    pytest.skip(why)


@pytest.fixture
def record_run(request: pytest.FixtureRequest) -> Callable[[RunReport], RunReport]:
    """``record_run(report)``: attach a run's report to this test (the terminal summary prints
    it, also from pytest-xdist workers), and return it."""

    def record(report: RunReport) -> RunReport:
        request.node.user_properties.append((REPORT_PROPERTY, report.to_json()))
        return report

    return record
