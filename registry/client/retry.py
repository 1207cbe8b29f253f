"""The retry policy of one client call: which server to ask next and when, when to give up, and
what to raise then.

Pure: no sockets and no clock. Every method that depends on time is given ``now`` (seconds, on
any monotonic clock), so the policy is driven the same way by the sync client and by table tests.

The rules (docs/client-protocol.md, "Retries"):

- one attempt at a time, round-robin from the server that last answered; an attempt ends when
  its server answers a retryable error or is unreachable (connection refused or lost, a host
  name that does not resolve, nothing could be sent), or after ``attempt_timeout_s`` without a
  reply; the next one starts at once, or after a backoff when a whole round has failed;
- the policy remembers, per server, the most informative failure of the call: a server's answer
  (``no_leader``, ...) or a connection fact is never replaced by a later "no reply", so the final
  error says why, not only that time ran out;
- it gives up early when the cluster has lost its quorum: every server has failed at least once
  in this call, each of them by answering ``no_leader`` or by being unreachable, and fewer than a
  majority of the configured servers answered. NB: a healthy cluster in an election still has a
  majority reachable, so its ``no_leader`` answers are retried until the deadline;
- otherwise it gives up at the deadline, with every server's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import Unavailable

# How long one server gets to answer before the same request also goes to the next one.
ATTEMPT_TIMEOUT_S = 2.0
# Pause before another round over every server, after each one failed (an election may be in
# progress): doubles from the first value up to the second.
ROUND_BACKOFF_S = (0.05, 0.5)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one attempt at one server gave no result.

    ``code`` is the retryable error code the server answered (``no_leader``, ``timeout``,
    ``stopping``), None otherwise. ``reachable`` is False when the server could not be reached;
    ``silent`` marks the weakest kind of that, no reply in time (the server may just be slow);
    ``final`` when asking the same server again within this call is pointless."""

    detail: str
    code: str | None = None
    reachable: bool = True
    silent: bool = False
    final: bool = False

    @classmethod
    def answered(cls, code: str | None, detail: str) -> Failure:
        """A retryable error code (``detail`` "code: message"), or a malformed reply (code None)."""
        return cls(detail, code=code)

    @classmethod
    def refused(cls) -> Failure:
        return cls("connection refused (is a node running there?)", reachable=False)

    @classmethod
    def lost(cls) -> Failure:
        return cls("connection lost", reachable=False)

    @classmethod
    def unsendable(cls, why: str) -> Failure:
        return cls(f"cannot send: {why}", reachable=False)

    @classmethod
    def unresolvable(cls, host: str) -> Failure:
        return cls(f"cannot resolve host {host!r}", reachable=False, final=True)

    @classmethod
    def no_reply(cls, detail: str) -> Failure:
        return cls(detail, reachable=False, silent=True)

    @property
    def rank(self) -> int:
        """How much the failure says: an answer 2, a connection fact 1, silence 0."""
        return 2 if self.reachable else 0 if self.silent else 1


@dataclass(frozen=True, slots=True)
class Ask:
    """Send the request to ``server`` now (then report how it ends: ``failed`` or ``answered``)."""

    server: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before ``until``, unless a reply or a connection event comes first."""

    until: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The call is over: raise ``error``."""

    error: Unavailable


Step = Ask | Wait | GiveUp


class RetryPolicy:
    """The decisions of one call over ``servers`` (HOST:PORT strings), started at ``now``.

    Drive it with ``step(now)`` until it says ``GiveUp``, reporting every failure with
    ``failed(i, failure, now)``; a success ends the call with ``answered(i)``. ``preferred`` is
    where the next call should start. ``doing`` names the call in the final error
    ("register", "list services", ...).
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        now: float,
        timeout_s: float,
        attempt_timeout_s: float,
        first: int = 0,
        doing: str = "do it",
        backoff_s: tuple[float, float] = ROUND_BACKOFF_S,
    ) -> None:
        if not servers:
            raise ValueError("a call needs at least one server")
        if not 0 <= first < len(servers):
            raise ValueError(f"first must be a server index, not {first!r}")
        self.servers = tuple(servers)
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.doing = doing
        self.backoff_s = backoff_s
        self.preferred = first
        self.attempts = 0
        self.tried: list[str] = []  # servers asked, in the order first asked
        self._deadline = now + timeout_s
        self._next_server = first
        # Invariant: _latest is the server whose attempt is awaited until _latest_until, or None
        # when the next attempt is due at _next_at.
        self._latest: int | None = None
        self._latest_until = now
        self._next_at = now
        # Per server: the most informative failure of this call, and when it was recorded (a
        # counter: the latest of equally informative ones is the one to name).
        self._failures: dict[int, Failure] = {}
        self._recorded: dict[int, int] = {}
        self._records = 0

    def step(self, now: float) -> Step:
        """What to do at ``now``."""
        if self._latest is not None and now >= self._latest_until:
            self.failed(self._latest, Failure.no_reply(f"no reply within {self.attempt_timeout_s:g} s"), now)
        error = self._verdict(now)
        if error is not None:
            return GiveUp(error)
        if self._latest is None and now >= self._next_at:
            i = self._pick()
            self._latest, self._latest_until = i, now + self.attempt_timeout_s
            self.attempts += 1
            if self.servers[i] not in self.tried:
                self.tried.append(self.servers[i])
            return Ask(i)
        until = self._latest_until if self._latest is not None else self._next_at
        return Wait(min(until, self._deadline))

    def failed(self, i: int, failure: Failure, now: float) -> None:
        """Server ``i`` failed an attempt of this call (the latest one or an earlier one)."""
        old = self._failures.get(i)
        if old is None or not (failure.silent and not old.silent):
            self._failures[i] = failure
            self._records += 1
            self._recorded[i] = self._records
        if i == self._latest:
            self._latest = None
            self._next_at = now + self._pause()
            if self.preferred == i:
                self.preferred = (i + 1) % len(self.servers)

    def answered(self, i: int) -> None:
        """Server ``i`` gave the result: the call is over, and the next one starts there."""
        self.preferred = i

    # -- decisions ---------------------------------------------------------------------------

    def _pick(self) -> int:
        n = len(self.servers)
        for k in range(n):
            i = (self._next_server + k) % n
            if not self._is_final(i):
                self._next_server = (i + 1) % n
                return i
        raise AssertionError("_verdict gives up when every server is final")

    def _is_final(self, i: int) -> bool:
        failure = self._failures.get(i)
        return failure is not None and failure.final

    def _pause(self) -> float:
        """0 within a round over the servers; a growing backoff after each full round."""
        n = len(self.servers)
        if self.attempts % n:
            return 0.0
        first, most = self.backoff_s
        return min(most, first * 2 ** (self.attempts // n - 1))

    def _verdict(self, now: float) -> Unavailable | None:
        """The error to give up with at ``now``, or None to go on."""
        m = len(self.servers)
        if all(self._is_final(i) for i in range(m)):
            return Unavailable(f"could not {self.doing}: {self._details()}", tried=self.tried,
                               last_error=self._most_informative())
        answered = [i for i, f in self._failures.items() if f.reachable]
        no_leader_only = any(self._failures[i].code == "no_leader" for i in answered) and all(
            self._failures[i].code == "no_leader" for i in answered)
        reachable = f"{len(answered)} of {m} node{'s' if m != 1 else ''} reachable"
        if no_leader_only and len(self._failures) == m and len(answered) < m // 2 + 1:
            return Unavailable(
                f"could not {self.doing}: no leader: the cluster has lost its quorum ({reachable}; "
                f"{self._details()})",
                tried=self.tried, last_error=self._most_informative(), code="no_leader")
        if now < self._deadline:
            return None
        if self._latest is not None:
            self.failed(self._latest, Failure.no_reply("no reply before the deadline"), now)
        if no_leader_only:
            return Unavailable(
                f"could not {self.doing}: no leader was elected within {self.timeout_s:g} s ({reachable}; "
                f"{self._details()})",
                tried=self.tried, last_error=self._most_informative(), code="no_leader")
        plural = "s" if self.attempts != 1 else ""
        return Unavailable(
            f"could not {self.doing}: no server did it within {self.timeout_s:g} s "
            f"({self.attempts} attempt{plural}; {self._details()})",
            tried=self.tried, last_error=self._most_informative())

    def _details(self) -> str:
        """Every failed server's most informative reason, in ``servers`` order."""
        return "; ".join(f"{self.servers[i]}: {self._failures[i].detail}" for i in sorted(self._failures))

    def _most_informative(self) -> str | None:
        if not self._failures:
            return None
        i = max(self._failures, key=lambda i: (self._failures[i].rank, self._recorded[i]))
        return f"{self.servers[i]}: {self._failures[i].detail}"
