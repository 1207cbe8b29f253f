"""The seeded cluster simulator: the real core under faults, with safety checked at every step.

`SIM_SEEDS` widens the sweep (per cluster size), e.g. `SIM_SEEDS=50000 pytest tests/sim -n auto`.
"""

from __future__ import annotations

import os

import pytest

from registry.sim import MUTANTS, run

SIM_SEEDS = int(os.environ.get("SIM_SEEDS", "500"))
#: How many seeds a deliberately broken core may take before the checkers must have caught it.
#: This is the CI budget: 500 seeds of each cluster size.
MUTANT_BUDGET = 1000
#: A seed whose run has TTL instances, expiries and recoveries (checked below).
HEALTH_SEED = 9


@pytest.mark.parametrize("seed", range(SIM_SEEDS))
def test_three_nodes_stay_safe_and_live(seed: int) -> None:
    """A 3-node cluster keeps every safety property under faults, then settles once they stop."""
    result = run(seed, nodes=3)
    assert result.ok, f"{result.violation}\nreproduce: {result.replay}"


@pytest.mark.parametrize("seed", range(SIM_SEEDS, 2 * SIM_SEEDS))
def test_five_nodes_stay_safe_and_live(seed: int) -> None:
    """A 5-node cluster keeps every safety property under faults, then settles once they stop."""
    result = run(seed, nodes=5)
    assert result.ok, f"{result.violation}\nreproduce: {result.replay}"


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_checkers_catch_each_broken_core(mutant: str) -> None:
    """Each deliberately broken core is caught within the CI seed budget (the checkers can fail)."""
    for attempt in range(MUTANT_BUDGET):
        seed, nodes = attempt // 2, 3 if attempt % 2 == 0 else 5
        result = run(seed, nodes=nodes, mutant=mutant)
        if not result.ok:
            assert result.violation
            assert result.replay == f"registry sim --seed {seed} --nodes {nodes} --mutant {mutant}"
            return
    pytest.fail(f"mutant {mutant} ({MUTANTS[mutant]}) survived {MUTANT_BUDGET} runs")


@pytest.mark.parametrize("seed", [11, HEALTH_SEED])
def test_a_seed_replays_exactly(seed: int) -> None:
    """The same seed gives the same run, event for event, which is what makes replay possible
    (with TTL instances and their keepalives too)."""
    first: list[str] = []
    second: list[str] = []
    a = run(seed, nodes=5, trace=first.append)
    b = run(seed, nodes=5, trace=second.append)
    assert first == second and a == b
    assert len(first) > 10


def test_runs_exercise_the_faults_they_claim() -> None:
    """Across a few seeds the simulator really crashes, partitions, elects, commits and reads."""
    totals: dict[str, int] = {}
    for seed in range(20):
        for key, value in run(seed, nodes=3).stats.items():
            totals[key] = totals.get(key, 0) + value
    for key in ("crashes", "restarts", "partitions", "elections", "transfers", "lost_writes",
                "messages_dropped", "messages_duplicated", "reads_checked", "operations_done", "committed",
                "snapshots_taken", "snapshots_installed", "snapshot_chunks", "long_downtimes"):
        assert totals[key] > 0, f"no {key} in 20 seeds: {totals}"


def test_some_snapshot_arrives_while_the_follower_log_conflicts_with_it() -> None:
    """Figure 13's hardest case happens under the simulator's faults, not only in unit tests: a
    follower far behind holds another term's entries below the snapshot point and discards them."""
    for seed in range(200):
        result = run(seed, nodes=3)
        assert result.ok, f"{result.violation}\nreproduce: {result.replay}"
        if result.stats["installs_over_conflict"]:
            return
    pytest.fail("no snapshot was installed over a conflicting log in 200 seeds")


def test_health_runs_expire_and_recover_across_leader_changes() -> None:
    """Across a few seeds with TTL instances, keepalives renew through leaders and followers
    (some renewals lost), services die and come back (some registering again), and committed
    expiries, each checked against the leader that decided it, come from several leaderships of
    one run; at the end a dead service's instance is critical and a live one's passing on every node."""
    totals: dict[str, int] = {}
    most_leaderships = 0
    runs = 0
    for seed in range(40):
        result = run(seed, nodes=3)
        assert result.ok, f"{result.violation}\nreproduce: {result.replay}"
        if "health_instances" not in result.stats:
            continue
        runs += 1
        assert result.stats["expiries_checked"] >= result.stats["expiries"]  # every committed expiry was judged
        most_leaderships = max(most_leaderships, result.stats["expiry_leaderships"])
        for key, value in result.stats.items():
            totals[key] = totals.get(key, 0) + value
    assert 5 <= runs <= 30, f"{runs} of 40 seeds have TTL instances"
    for key in ("renewals_received", "renewals_forwarded", "renewals_lost", "renewals_failed", "keepalive_stops",
                "reregistrations", "expiries", "recoveries", "transitions_stale", "instances_dead_at_end"):
        assert totals[key] > 0, f"no {key} in {runs} health runs: {totals}"
    assert totals["health_instances"] > totals["instances_dead_at_end"]  # some live ones checked passing too
    assert most_leaderships >= 3, "no run had expiries decided by three leaderships"


def test_trace_tells_the_story_of_a_run() -> None:
    """--trace lines name elections, faults and the result, each stamped with the simulated tick."""
    lines: list[str] = []
    result = run(3, nodes=3, trace=lines.append)
    text = "\n".join(lines)
    assert result.ok
    assert "leads term" in text and "faults stop" in text and "result: ok" in text
    assert all(line.startswith("[tick ") for line in lines)


def test_unknown_mutant_is_refused_with_the_accepted_names() -> None:
    with pytest.raises(ValueError, match="accepted: " + ", ".join(sorted(MUTANTS))):
        run(0, mutant="no-such-bug")


def test_trace_tells_the_health_story_of_a_run() -> None:
    """--trace names what the services and the leaders' trackers did, and what committed."""
    lines: list[str] = []
    result = run(HEALTH_SEED, nodes=3, trace=lines.append)
    text = "\n".join(lines)
    assert result.ok and result.stats["expiries"] > 0 and result.stats["recoveries"] > 0
    for needle in ("registered (revision", "keepalive of i1 stops", "keepalive of i1 resumes",
                   "critical: TTL of", "passing: renewed", ") critical", ") passing"):
        assert needle in text, needle
