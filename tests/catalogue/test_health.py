"""health.Threshold: consecutive probe results become a status change only when the run reaches
the check's threshold and the status would change; a mixed run starts counting again."""

from __future__ import annotations

import pytest

from registry.catalogue import HealthStatus, Threshold, ValidationError

P, C = HealthStatus.PASSING, HealthStatus.CRITICAL


@pytest.mark.parametrize(
    "failures, successes, start, results, want",
    [
        # (thresholds, starting status, probe results, what observe returns after each)
        (3, 2, P, "ooo", [None, None, None]),
        (3, 2, P, "xxx", [None, None, C]),
        (3, 2, P, "xxxx", [None, None, C, None]),  # already critical: no second report
        (3, 2, P, "xxoxx", [None, None, None, None, None]),  # a success in between resets the run
        (3, 2, P, "xxoxxx", [None, None, None, None, None, C]),
        (3, 2, C, "oo", [None, P]),
        (3, 2, C, "oxo", [None, None, None]),  # mixed: no recovery
        (3, 2, C, "oxoo", [None, None, None, P]),
        (3, 2, P, "xxxoo", [None, None, C, None, P]),
        (3, 2, P, "xxxoxxoo", [None, None, C, None, None, None, None, P]),
        (1, 1, P, "xoxo", [C, P, C, P]),  # thresholds of one: every change is reported
        (1, 1, P, "oo", [None, None]),
        (2, 3, C, "xxooo", [None, None, None, None, P]),  # failures while critical count for nothing
        (100, 1, P, "x" * 99 + "x", [None] * 99 + [C]),
    ],
)
def test_observe_reports_a_change_when_the_run_reaches_the_threshold(
    failures: int, successes: int, start: HealthStatus, results: str, want: list[HealthStatus | None]
) -> None:
    threshold = Threshold(failures, successes, start)
    got = [threshold.observe(r == "o") for r in results]
    assert got == want
    changes = [s for s in want if s is not None]
    assert threshold.status is (changes[-1] if changes else start)


def test_the_status_after_a_change_is_the_new_one() -> None:
    threshold = Threshold(2, 2)
    assert threshold.status is P
    threshold.observe(False)
    assert threshold.observe(False) is C and threshold.status is C
    assert "critical" in repr(threshold) and "2 failed" in repr(threshold)


@pytest.mark.parametrize("failures, successes", [(0, 2), (3, 0), (101, 2), (3, True), (3.0, 2)])
def test_thresholds_out_of_range_are_refused(failures: object, successes: object) -> None:
    """The same range as a check's: 1 to 100."""
    with pytest.raises(ValidationError, match="1 to 100"):
        Threshold(failures, successes)  # type: ignore[arg-type]


def test_a_status_that_is_not_a_health_status_is_refused() -> None:
    with pytest.raises(ValidationError, match="HealthStatus"):
        Threshold(3, 2, "passing")  # type: ignore[arg-type]
