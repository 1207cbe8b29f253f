"""The linearizability checker itself, on hand-made histories: it rejects each kind of anomaly
the fault scenarios look for, and accepts concurrent and indeterminate histories that are fine."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from .linearizability import Op, check_history, check_key, read_history, unwritten_stale_reads, write_history

_ids = itertools.count(1)


def reg(key: str, value: str, t0: float, t1: float | None, created: bool | None = None, p: str = "c1") -> Op:
    return Op(next(_ids), p, "register", key, t0, t1, value=value, result=created)


def dereg(key: str, t0: float, t1: float | None, removed: bool | None = None, p: str = "c1") -> Op:
    return Op(next(_ids), p, "deregister", key, t0, t1, result=removed)


def read(key: str, value: str | None, t0: float, t1: float | None, p: str = "c2", stale: bool = False) -> Op:
    return Op(next(_ids), p, "read", key, t0, t1, value=value, stale=stale)


def test_sequential_history_is_linearizable() -> None:
    """A history where each op ends before the next begins, and each matches the model, passes."""
    ops = [reg("k", "a", 0, 1, True), read("k", "a", 2, 3), reg("k", "b", 4, 5, False), read("k", "b", 6, 7),
           dereg("k", 8, 9, True), read("k", None, 10, 11), dereg("k", 12, 13, False)]
    result = check_history(ops)
    assert result.ok, result.summary()


def test_concurrent_history_needs_reordering() -> None:
    """Overlapping ops may take effect in an order other than their invocation order: a read
    that overlaps two writes may see either, and two reads may disagree while both overlap."""
    ops = [
        reg("k", "x", -2, -1, True, p="c1"),
        reg("k", "a", 0, 10, False, p="c1"),  # took effect after b, though invoked first
        reg("k", "b", 1, 3, False, p="c2"),
        read("k", "b", 2, 4, p="c3"),
        read("k", "a", 5, 12, p="c4"),        # b then a: a is the final value
        read("k", "a", 13, 14, p="c5"),
        dereg("k", 15, 20, True, p="c1"),
        read("k", "a", 16, 17, p="c2"),      # before the deregister took effect
        read("k", None, 18, 21, p="c3"),     # after it
    ]
    result = check_history(ops)
    assert result.ok, result.summary()


def test_indeterminate_write_may_take_effect_late_or_never() -> None:
    """An op that timed out may take effect at any later time, or never."""
    late = [reg("k", "a", 0, 1, True), reg("k", "x", 2, None), read("k", "a", 3, 4), read("k", "x", 50, 51)]
    assert check_history(late).ok, check_history(late).summary()
    never = [reg("k", "a", 0, 1, True), reg("k", "x", 2, None), read("k", "a", 3, 4), read("k", "a", 50, 51)]
    assert check_history(never).ok, check_history(never).summary()
    # ... but only after it was invoked.
    early = [reg("k", "a", 0, 1, True), read("k", "x", 2, 3), reg("k", "x", 4, None)]
    assert not check_history(early).ok


def test_stale_read_is_rejected() -> None:
    """A read that begins after a write was acknowledged must not return the older value."""
    ops = [reg("k", "a", 0, 1, True), reg("k", "b", 2, 3, False), read("k", "a", 4, 5)]
    result = check_history(ops)
    assert not result.ok
    (anomaly,) = result.anomalies
    assert anomaly.kind == "stale-read", anomaly.summary
    assert "read(k) -> 'a'" in anomaly.summary


def test_lost_write_is_rejected() -> None:
    """An acknowledged register that later reads cannot see (nothing removed it) is a lost write."""
    ops = [reg("k", "a", 0, 1, True), read("k", "a", 2, 3), read("k", None, 10, 11, p="final")]
    result = check_history(ops)
    assert not result.ok
    assert result.anomalies[0].kind == "lost-write", result.summary()


def test_read_of_a_value_never_written_is_rejected() -> None:
    ops = [reg("k", "a", 0, 1, True), read("k", "zzz", 2, 3)]
    result = check_history(ops)
    assert not result.ok
    assert result.anomalies[0].kind == "never-written", result.summary()


def test_impossible_write_results_are_rejected() -> None:
    """``created`` and ``removed`` are observations too: both must match some order."""
    twice_created = [reg("k", "a", 0, 1, True), reg("k", "b", 2, 3, True)]
    assert check_history(twice_created).anomalies[0].kind == "impossible-result"
    removed_nothing = [dereg("k", 0, 1, True)]
    assert not check_history(removed_nothing).ok


def test_keys_are_checked_separately() -> None:
    """A bad key is reported by name; a good one beside it is not."""
    ops = [reg("good", "a", 0, 1, True), read("good", "a", 2, 3),
           reg("bad", "a", 0, 1, True), read("bad", None, 2, 3)]
    result = check_history(ops)
    assert [a.key for a in result.anomalies] == ["bad"]


def test_stale_reads_are_not_checked_for_order_but_may_not_invent_values() -> None:
    ops = [reg("k", "a", 0, 1, True), reg("k", "b", 2, 3, False), read("k", "a", 4, 5, stale=True)]
    assert check_history(ops).ok  # old data is allowed from a stale read
    invented = read("k", "nope", 6, 7, stale=True)
    premature = read("k", "c", 8, 9, stale=True)
    assert unwritten_stale_reads([*ops, invented, premature, reg("k", "c", 10, 11, False)]) == [invented, premature]


def test_budget_exhaustion_is_reported_not_accepted() -> None:
    ops = [reg("k", str(i), i, None) for i in range(12)] + [read("k", "nope", 100, 101)]
    result = check_key("k", ops, budget=50)
    assert not result.ok
    assert result.anomaly is not None and result.anomaly.kind == "unknown"


def test_many_concurrent_indeterminate_writes_stay_tractable() -> None:
    """Memoisation keeps a realistic fault run (timeouts piling up) cheap."""
    ops = []
    for i in range(40):
        ops.append(reg("k", f"v{i}", 10 * i, 10 * i + 1, None if i % 3 == 0 else False if i else True))
        ops.append(reg("k", f"t{i}", 10 * i + 2, None))
        ops.append(read("k", f"v{i}", 10 * i + 3, 10 * i + 4))
    result = check_key("k", ops, budget=200_000)
    assert result.ok, result.anomaly


def test_history_file_round_trip(tmp_path: Path) -> None:
    ops = [reg("k", "a", 0, 1, True), read("k", "b", 2, None)]
    path = write_history(tmp_path / "h.jsonl", ops, "a summary", seed=3)
    header, back = read_history(path)
    assert header == {"anomaly": "a summary", "seed": 3}
    assert back == ops


# A sequential run of the model, generated: always linearizable, whatever the concurrency
# hypothesis adds by stretching each op's interval over its neighbours'.
_actions = st.lists(st.tuples(st.sampled_from(["register", "deregister", "read"]), st.sampled_from("kj")),
                    min_size=1, max_size=30)


def _run_model(actions: list[tuple[str, str]], stretch: list[int]) -> list[Op]:
    state: dict[str, str | None] = {}
    ops = []
    for i, (kind, key) in enumerate(actions):
        before = state.get(key)
        # The op takes effect at 10 * i; its interval may reach back over earlier ops' effects.
        t0, t1 = 10 * i - 10 * stretch[i % len(stretch)] + 1, 10 * i + 5
        if kind == "register":
            state[key] = f"v{i}"
            ops.append(Op(i, f"c{i % 5}", "register", key, t0, t1, value=f"v{i}", result=before is None))
        elif kind == "deregister":
            state[key] = None
            ops.append(Op(i, f"c{i % 5}", "deregister", key, t0, t1, result=before is not None))
        else:
            ops.append(Op(i, f"c{i % 5}", "read", key, t0, t1, value=before))
    return ops


@settings(max_examples=200, deadline=None)
@given(_actions, st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_histories_generated_from_the_model_are_accepted(actions: list[tuple[str, str]], stretch: list[int]) -> None:
    result = check_history(_run_model(actions, stretch))
    assert result.ok, result.summary()


@settings(max_examples=200, deadline=None)
@given(_actions, st.data())
def test_a_corrupted_sequential_read_is_rejected(actions: list[tuple[str, str]], data: st.DataObject) -> None:
    """In a strictly sequential history, changing what one read returned is always caught."""
    ops = _run_model(actions, [0])
    reads = [i for i, op in enumerate(ops) if op.kind == "read"]
    if not reads:
        return
    i = data.draw(st.sampled_from(reads))
    op = ops[i]
    wrong = "never" if op.value is None else None
    ops[i] = Op(op.id, op.process, "read", op.key, op.invoke, op.complete, value=wrong)
    assert not check_history(ops).ok
