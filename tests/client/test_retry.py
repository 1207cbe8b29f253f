"""registry.client.retry.RetryPolicy without sockets or a clock: table tests of its decisions.

A small driver plays the servers: on ``Ask(i)`` it reports at once how server ``i`` fails (or stays
silent), on ``Wait(until)`` it moves the time to ``until``. Times are plain numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from registry.client.retry import ROUND_BACKOFF_S, Ask, Failure, GiveUp, RetryPolicy, Wait

TIMEOUT_S = 10.0
ATTEMPT_S = 1.0

NO_LEADER = Failure.answered("no_leader", "no_leader: no leader could be reached within the timeout")
TIMEOUT = Failure.answered("timeout", "timeout: not applied within the timeout")
REFUSED = Failure.refused()
LOST = Failure.lost()
SILENT = None  # the driver lets the attempt time out


def servers(n: int) -> list[str]:
    return [f"10.0.0.{i + 1}:7101" for i in range(n)]


def policy_for(n: int, **kwargs: object) -> RetryPolicy:
    settings: dict[str, object] = {"now": 0.0, "timeout_s": TIMEOUT_S, "attempt_timeout_s": ATTEMPT_S,
                                   "doing": "register"}
    settings.update(kwargs)
    return RetryPolicy(servers(n), **settings)  # type: ignore[arg-type]


def drive(policy: RetryPolicy, answer: Callable[[int], Failure | None],
          limit: int = 10_000) -> tuple[GiveUp, float, list[tuple[float, int]]]:
    """Run the policy to its end: (the GiveUp, when, every (time, server) asked)."""
    now = 0.0
    asked: list[tuple[float, int]] = []
    for _ in range(limit):
        step = policy.step(now)
        if isinstance(step, GiveUp):
            return step, now, asked
        if isinstance(step, Ask):
            asked.append((now, step.server))
            failure = answer(step.server)
            if failure is not None:
                policy.failed(step.server, failure, now)
        else:
            assert step.until > now, "a Wait must move time forward (no busy loop)"
            now = step.until
    raise AssertionError(f"no decision after {limit} steps")


def fixed(failures: list[Failure | None]) -> Callable[[int], Failure | None]:
    return lambda i: failures[i]


@pytest.mark.parametrize(
    "failures, lost",
    [
        pytest.param([REFUSED, REFUSED, NO_LEADER], "1 of 3", id="two-of-three-stopped"),
        pytest.param([SILENT, REFUSED, NO_LEADER], "1 of 3", id="one-silent-one-refused"),
        pytest.param([LOST, SILENT, NO_LEADER], "1 of 3", id="one-lost-one-silent"),
        pytest.param([REFUSED, REFUSED, REFUSED, NO_LEADER, NO_LEADER], "2 of 5", id="three-of-five-stopped"),
        pytest.param([REFUSED, REFUSED, NO_LEADER, NO_LEADER], "2 of 4", id="half-of-four-stopped"),
        pytest.param([REFUSED, NO_LEADER], "1 of 2", id="one-of-two-stopped"),
        pytest.param([REFUSED, NO_LEADER, NO_LEADER], None, id="an-election-with-a-majority-up"),
        pytest.param([NO_LEADER, NO_LEADER, NO_LEADER], None, id="an-election-all-up"),
        pytest.param([REFUSED, REFUSED, REFUSED], None, id="all-refused-maybe-starting"),
        pytest.param([REFUSED, REFUSED, TIMEOUT], None, id="a-leader-that-cannot-commit"),
        pytest.param([NO_LEADER], None, id="a-single-server"),
    ],
)
def test_a_lost_quorum_ends_the_call_after_one_round(failures, lost: str | None) -> None:
    """When every server has failed once, each by answering no_leader or by being unreachable,
    and fewer than a majority answered, the call ends at once with the quorum message. Any other
    mix (an election in a cluster with a majority up, no answer at all, another code) goes on
    until the deadline."""
    policy = policy_for(len(failures))
    give_up, when, asked = drive(policy, fixed(failures))
    error = give_up.error
    if lost is None:
        assert when >= TIMEOUT_S, f"gave up at {when} before the deadline: {error}"
        assert "lost its quorum" not in str(error)
        return
    assert when < TIMEOUT_S / 2, "a lost quorum is not waited out"
    assert [i for _, i in asked] == list(range(len(failures))), "exactly one round"
    assert f"could not register: no leader: the cluster has lost its quorum ({lost} nodes reachable" in str(error)
    assert error.code == "no_leader"
    assert error.last_error is not None and "no_leader" in error.last_error


@pytest.mark.parametrize(
    "failures, expected",
    [
        pytest.param([REFUSED, NO_LEADER, NO_LEADER],
                     "could not register: no leader was elected within 10 s (2 of 3 nodes reachable; "
                     "10.0.0.1:7101: connection refused (is a node running there?); 10.0.0.2:7101: no_leader",
                     id="election-never-ends"),
        pytest.param([REFUSED, REFUSED, REFUSED],
                     "could not register: no server did it within 10 s (", id="all-refused"),
        pytest.param([SILENT, SILENT], "10.0.0.1:7101: no reply within 1 s; 10.0.0.2:7101: no reply", id="all-silent"),
        pytest.param([REFUSED, REFUSED, TIMEOUT], "10.0.0.3:7101: timeout: not applied", id="timeout-answer"),
    ],
)
def test_at_the_deadline_the_error_names_every_servers_reason(failures, expected: str) -> None:
    """Giving up at the deadline, the error says why for each server, not only that time ran out."""
    give_up, when, _ = drive(policy_for(len(failures)), fixed(failures))
    assert TIMEOUT_S <= when <= TIMEOUT_S + ATTEMPT_S
    assert expected in str(give_up.error)
    assert give_up.error.tried == tuple(servers(len(failures)))


def test_an_answer_is_not_overwritten_by_a_later_silence() -> None:
    """A server that answered no_leader and later stays silent keeps no_leader as its reason,
    and the final error names the most informative reason (an answer), not the last one."""
    calls = {0: 0}

    def answer(i: int) -> Failure | None:
        if i == 1:
            return REFUSED
        calls[0] += 1
        return NO_LEADER if calls[0] == 1 else SILENT

    give_up, _, _ = drive(policy_for(2), answer)
    assert "10.0.0.1:7101: no_leader" in str(give_up.error)
    assert give_up.error.last_error == "10.0.0.1:7101: " + NO_LEADER.detail
    assert "no reply" not in str(give_up.error)


def test_a_newer_definite_failure_replaces_an_older_answer() -> None:
    """A server that answered and then refused its connection is reported as refused: a
    connection fact is news, only silence is not."""
    policy = policy_for(1)
    assert policy.step(0.0) == Ask(0)
    policy.failed(0, NO_LEADER, 0.0)
    policy.failed(0, LOST, 0.0)
    give_up, _, _ = drive(policy, fixed([SILENT]))
    assert "10.0.0.1:7101: connection lost" in str(give_up.error)
    assert "no_leader" not in str(give_up.error) and "no reply" not in str(give_up.error)


def test_round_robin_from_first_without_pause_within_a_round_and_a_growing_backoff() -> None:
    """Attempts go round-robin from ``first``; within a round the next one starts at once; after
    each failed round the pause doubles from the first backoff up to the cap."""
    _, _, asked = drive(policy_for(3, first=1), fixed([REFUSED, REFUSED, REFUSED]))
    assert [i for _, i in asked[:7]] == [1, 2, 0, 1, 2, 0, 1]
    starts = [t for t, _ in asked[::3]]
    pauses = [round(b - a, 6) for a, b in zip(starts, starts[1:])]
    first, most = ROUND_BACKOFF_S
    want = [min(most, first * 2**k) for k in range(len(pauses))]
    assert pauses == pytest.approx(want)
    assert all(t == s for t, s in zip([t for t, _ in asked[:3]], [0.0] * 3)), "no pause within a round"


def test_a_silent_server_gets_the_attempt_timeout_then_the_next_is_asked() -> None:
    """The latest attempt is waited for ``attempt_timeout_s``, then the next server is asked;
    the Wait says until when."""
    policy = policy_for(2)
    assert policy.step(0.0) == Ask(0)
    assert policy.step(0.0) == Wait(ATTEMPT_S)
    assert policy.step(ATTEMPT_S / 2) == Wait(ATTEMPT_S)
    assert policy.step(ATTEMPT_S) == Ask(1)


def test_a_wait_never_passes_the_deadline() -> None:
    """With an attempt timeout longer than what is left, the Wait ends at the deadline."""
    policy = policy_for(1, timeout_s=0.5, attempt_timeout_s=2.0)
    assert policy.step(0.0) == Ask(0)
    assert policy.step(0.1) == Wait(0.5)
    step = policy.step(0.5)
    assert isinstance(step, GiveUp) and "10.0.0.1:7101: no reply before the deadline" in str(step.error)


def test_unresolvable_servers_are_not_asked_again_and_all_unresolvable_ends_at_once() -> None:
    """A host name that does not resolve is final for the call: the others are asked in its
    place, and when no server is left the call ends at once, saying so."""
    policy = policy_for(2)
    give_up, when, asked = drive(policy, fixed([Failure.unresolvable("nosuch.invalid"), REFUSED]))
    assert [i for _, i in asked].count(0) == 1 and [i for _, i in asked].count(1) > 1
    assert "10.0.0.1:7101: cannot resolve host 'nosuch.invalid'" in str(give_up.error)

    give_up, when, _ = drive(policy_for(2), fixed([Failure.unresolvable("a.invalid"), Failure.unresolvable("b.invalid")]))
    assert when == 0.0
    assert str(give_up.error) == ("could not register: 10.0.0.1:7101: cannot resolve host 'a.invalid'; "
                                  "10.0.0.2:7101: cannot resolve host 'b.invalid'")


def test_preferred_moves_off_a_failing_first_server_and_to_the_one_that_answered() -> None:
    """The next call starts at the server that answered, and never again first at one that
    failed this call's first attempt."""
    policy = policy_for(3)
    assert policy.step(0.0) == Ask(0)
    policy.failed(0, REFUSED, 0.0)
    assert policy.preferred == 1
    assert policy.step(0.0) == Ask(1)
    assert policy.step(0.0) == Wait(ATTEMPT_S)
    assert policy.step(ATTEMPT_S) == Ask(2)
    policy.answered(1)  # a late answer to the earlier attempt
    assert policy.preferred == 1


@pytest.mark.parametrize("kwargs", [{"first": 3}, {"first": -1}])
def test_bad_arguments_are_refused(kwargs: dict[str, int]) -> None:
    """first must name one of the servers, and there must be a server."""
    with pytest.raises(ValueError):
        policy_for(3, **kwargs)
    with pytest.raises(ValueError):
        RetryPolicy([], now=0.0, timeout_s=1, attempt_timeout_s=1)
