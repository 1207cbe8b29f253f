"""Suite-wide hooks. Only the fault-injection report lives here (tests/faults/report.py), so
that it is printed however pytest is started: the pytest-xdist controller, which collects
nothing, loads this file for ``pytest`` and ``pytest tests/...`` alike."""

from tests.faults.report import pytest_runtest_logreport, pytest_terminal_summary

__all__ = ["pytest_runtest_logreport", "pytest_terminal_summary"]
