"""Health as the leader decides it, before it becomes a command (issue 14; docs/health.md).

Pure, like the rest of the catalogue: no clock (times are parameters), no I/O, no threads. The
leader keeps heartbeats and probe results here, in memory, and proposes only transitions
(``SetHealth``, or ``Deregister`` with a revision for an expiry) through Raft.

- ``Threshold``: the run-length counter of an active check (critical after N consecutive
  failures, passing again after M consecutive successes); the prober applies it.
- Health commands are written under the client id ``HEALTH_CLIENT_ID`` with seqs from
  ``health_seq(term, counter)``, so that the one session stays monotonic across leaders.
"""

from __future__ import annotations

from .model import HealthStatus
from .validation import RESERVED_CLIENT_PREFIX, THRESHOLD_MAX, THRESHOLD_MIN, ValidationError

#: The client id of the leader's health commands. Reserved: a node refuses it from clients
#: (``validation.validate_external_client_id``), so that no client can make these writes stale.
HEALTH_CLIENT_ID = RESERVED_CLIENT_PREFIX + "health"

#: Health commands one leader can number in one term (the low 32 bits of the seq).
HEALTH_SEQ_PER_TERM = 1 << 32


def health_seq(term: int, counter: int) -> int:
    """The seq of the leader's ``counter``-th health command (from 1) in ``term``: (term << 32) + counter.

    NB: why this is monotonic in the log: entries of a term always follow those of every earlier
    term in a committed log, and one leader appends its own proposals in order; so a later
    entry of ``~health`` always has a higher seq, and a new leader's writes are never refused
    as ``stale_seq``. A command that is not committed just leaves a gap (gaps are allowed). A
    leader re-proposing a command after a later one was applied gets ``stale_seq`` for it, which
    is harmless (the command already took effect, or its transition is out of date).
    """
    if type(term) is not int or term < 1 or term >= 1 << 31:
        raise ValueError(f"term must be an int from 1 to 2**31-1, got {term!r}")
    if type(counter) is not int or not 1 <= counter < HEALTH_SEQ_PER_TERM:
        raise ValueError(f"counter must be an int from 1 to 2**32-1, got {counter!r}")
    return (term << 32) + counter


class Threshold:
    """Consecutive probe results of one active check, turned into status changes.

    Starts at ``status``. ``observe(ok)`` counts the current run of equal results (a result
    different from the run's starts a new run of 1); when the run reaches ``successes`` (ok) or
    ``failures`` (not ok) and that would change the status, the status changes and is returned.
    """

    __slots__ = ("failures", "successes", "status", "_run_ok", "_run")

    # Invariant: _run >= 0; _run == 0 exactly when no result was observed yet (_run_ok is then None).

    def __init__(self, failures: int, successes: int, status: HealthStatus = HealthStatus.PASSING) -> None:
        for name, value in (("failures", failures), ("successes", successes)):
            if type(value) is not int or not THRESHOLD_MIN <= value <= THRESHOLD_MAX:
                raise ValidationError(
                    "check", f"invalid {name} {value!r}: use an integer from {THRESHOLD_MIN} to {THRESHOLD_MAX}"
                )
        if not isinstance(status, HealthStatus):
            raise ValidationError("status", f"status must be a HealthStatus, got {status!r}")
        self.failures = failures
        self.successes = successes
        self.status = status
        self._run_ok: bool | None = None
        self._run = 0

    def observe(self, ok: bool) -> HealthStatus | None:
        """Record one probe result; the new status if this result changes it, else None."""
        ok = bool(ok)
        if ok is self._run_ok:
            self._run += 1
        else:
            self._run_ok, self._run = ok, 1
        target = HealthStatus.PASSING if ok else HealthStatus.CRITICAL
        if target is self.status or self._run < (self.successes if ok else self.failures):
            return None
        self.status = target
        return target

    def __repr__(self) -> str:
        run = "none" if self._run_ok is None else f"{self._run} {'ok' if self._run_ok else 'failed'}"
        return f"Threshold({self.status.value}, run {run}, failures={self.failures}, successes={self.successes})"
