"""A linearizability checker for the catalogue's per-instance model, in pure Python.

The model of one key (one instance id of one service) is a register that may be absent:

- ``register(key, value) -> created``: the key holds ``value`` afterwards; ``created`` is true
  exactly when the key was absent before;
- ``deregister(key) -> removed``: the key is absent afterwards; ``removed`` is true exactly when
  it was present (the protocol's ``not_found`` is ``removed=False``);
- ``read(key) -> value or None`` (absent): the state is unchanged.

Linearizability is local (Herlihy & Wing, 1990): a history is linearizable iff the sub-history
of every object is, so ``check_history`` checks each key on its own. Each key is searched as in
Wing & Gong (1993) with Lowe's memoisation (the Porcupine / Knossos "linear" algorithm): walk
the call and return events in time order, linearize a pending call when the model accepts it,
backtrack when a return is reached whose call is not linearized yet, and never revisit a (set
of linearized operations, model state) pair.

An operation with ``complete=None`` is indeterminate (a timeout or a lost connection): it may
have taken effect at any time after its invocation, or never. Its return is placed after every
other event and it accepts any result; linearizing it after everything else is "never". An
indeterminate read has no effect and is dropped.

The module has no dependency outside the standard library, and no I/O except ``write_history``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Anomaly", "CheckResult", "KeyResult", "Op", "check_history", "check_key", "read_history",
           "write_history"]

Kind = Literal["register", "deregister", "read"]
KINDS = ("register", "deregister", "read")
# Search steps (model calls) allowed per key before the checker answers "unknown". NB: with
# memoisation a 60-second run needs a few thousand; the bound turns a pathological history into
# a clear report instead of a hung test.
DEFAULT_BUDGET = 2_000_000


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key, as recorded.

    ``value``: for a register, the value written; for a read, the value returned (None: absent);
    unused for a deregister. ``result``: for a register, ``created``; for a deregister,
    ``removed``; None when indeterminate. ``complete`` None: indeterminate (see the module doc).
    ``stale``: a read from a node's local view; never checked for linearizability.
    """

    id: int
    process: str
    kind: Kind
    key: str
    invoke: float
    complete: float | None
    value: str | None = None
    result: bool | None = None
    stale: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        assert self.kind in KINDS, f"unknown kind {self.kind!r}"
        assert self.complete is None or self.complete >= self.invoke, f"op {self.id} completes before it starts"

    @property
    def indeterminate(self) -> bool:
        return self.complete is None

    def describe(self) -> str:
        span = f"[{self.invoke:.3f}, {'?' if self.complete is None else f'{self.complete:.3f}'}]"
        who = f"#{self.id} {self.process}"
        if self.kind == "read":
            got = "?" if self.indeterminate else ("absent" if self.value is None else repr(self.value))
            return f"{who} {'stale ' if self.stale else ''}read({self.key}) -> {got} {span}"
        outcome = "?" if self.result is None else str(self.result).lower()
        if self.kind == "register":
            return f"{who} register({self.key}, {self.value!r}) -> created={outcome} {span}"
        return f"{who} deregister({self.key}) -> removed={outcome} {span}"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Why one key's history is not linearizable (or could not be decided): ``kind`` is one of
    ``never-written``, ``lost-write``, ``stale-read``, ``impossible-result`` or ``unknown``."""

    key: str
    kind: str
    summary: str
    op_id: int | None = None


@dataclass(frozen=True, slots=True)
class KeyResult:
    key: str
    ok: bool
    ops: int
    steps: int
    anomaly: Anomaly | None = None


@dataclass
class CheckResult:
    keys: list[KeyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(k.ok for k in self.keys)

    @property
    def anomalies(self) -> list[Anomaly]:
        return [k.anomaly for k in self.keys if k.anomaly is not None]

    def summary(self) -> str:
        if self.ok:
            return f"linearizable: {len(self.keys)} keys, {sum(k.ops for k in self.keys)} ops"
        return "; ".join(a.summary for a in self.anomalies)


# ---------------------------------------------------------------------------------------------
# The model


def step(state: str | None, op: Op) -> tuple[bool, str | None]:
    """(whether ``op`` may take effect in ``state`` with its recorded result, the next state)."""
    if op.kind == "register":
        return op.result is None or op.result == (state is None), op.value
    if op.kind == "deregister":
        return op.result is None or op.result == (state is not None), None
    return state == op.value, state


# ---------------------------------------------------------------------------------------------
# The search


class _Event:
    __slots__ = ("op", "bit", "is_call", "match", "prev", "next")

    def __init__(self, op: Op | None, bit: int, is_call: bool) -> None:
        self.op = op
        self.bit = bit
        self.is_call = is_call
        self.match: _Event | None = None
        self.prev: _Event | None = None
        self.next: _Event | None = None


def _event_list(ops: Sequence[Op]) -> _Event:
    """A doubly linked list of call and return events in time order, behind a sentinel head.
    At equal times calls come first (the operations count as concurrent: the lenient reading)."""
    keyed = []
    for i, op in enumerate(ops):
        call, ret = _Event(op, 1 << i, True), _Event(op, 1 << i, False)
        call.match, ret.match = ret, call
        keyed.append(((op.invoke, 0, i), call))
        keyed.append(((math.inf if op.complete is None else op.complete, 1, i), ret))
    keyed.sort(key=lambda pair: pair[0])
    head = _Event(None, 0, False)
    prev = head
    for _, event in keyed:
        prev.next, event.prev = event, prev
        prev = event
    return head


def _lift(call: _Event) -> None:
    """Take a linearized call and its return out of the list."""
    assert call.prev is not None and call.next is not None and call.match is not None
    call.prev.next = call.next
    call.next.prev = call.prev
    ret = call.match
    assert ret.prev is not None
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Event) -> None:
    """Put them back, in the reverse order of ``_lift``."""
    ret = call.match
    assert ret is not None and ret.prev is not None and call.prev is not None and call.next is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


def check_key(key: str, ops: Sequence[Op], *, budget: int = DEFAULT_BUDGET) -> KeyResult:
    """Whether the operations on one key (stale reads and indeterminate reads excluded by the
    caller or here) have a linearization from the initial state "absent"."""
    ops = [op for op in ops if not op.stale and not (op.kind == "read" and op.indeterminate)]
    head = _event_list(ops)
    seen: dict[int, set[str | None]] = defaultdict(set)
    stack: list[tuple[_Event, str | None]] = []
    state: str | None = None
    linearized = 0
    steps = 0
    # The deepest point the search reached, for the report: (linearized count, stuck op, states).
    deepest: tuple[int, Op | None, set[str | None]] = (-1, None, set())
    entry = head.next
    while head.next is not None:
        assert entry is not None
        if entry.is_call:
            steps += 1
            if steps > budget:
                summary = (f"key {key}: undecided after {budget} search steps over {len(ops)} ops "
                           "(too many concurrent indeterminate operations?)")
                return KeyResult(key, False, len(ops), steps, Anomaly(key, "unknown", summary))
            assert entry.op is not None
            ok, after = step(state, entry.op)
            if ok:
                mask = linearized | entry.bit
                if after not in seen[mask]:
                    seen[mask].add(after)
                    stack.append((entry, state))
                    state, linearized = after, mask
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return whose call is not linearized: undo the latest choice.
            if len(stack) > deepest[0]:
                deepest = (len(stack), entry.op, {state})
            elif len(stack) == deepest[0] and entry.op is deepest[1]:
                deepest[2].add(state)
            if not stack:
                break
            call, state = stack.pop()
            linearized &= ~call.bit
            _unlift(call)
            entry = call.next
    else:
        return KeyResult(key, True, len(ops), steps)
    return KeyResult(key, False, len(ops), steps, _explain(key, ops, deepest[1], deepest[2]))


def _explain(key: str, ops: Sequence[Op], stuck: Op | None, states: set[str | None]) -> Anomaly:
    """A one-line reason for a failed search: the operation it could not get past, classified."""
    assert stuck is not None
    could = ", ".join(sorted("absent" if s is None else repr(s) for s in states))
    base = f"key {key}: {stuck.describe()} cannot be linearized (the value could only be: {could})"
    written = {op.value for op in ops if op.kind == "register"}
    if stuck.kind == "read":
        if stuck.value is not None and stuck.value not in written:
            return Anomaly(key, "never-written", f"read of a value never written: {base}", stuck.id)
        done_before = sorted((op for op in ops if op.complete is not None and op.complete < stuck.invoke
                              and op.kind != "read"), key=lambda op: op.complete)  # type: ignore[arg-type,return-value]
        if stuck.value is None and done_before and done_before[-1].kind == "register" and not any(
                op.kind == "deregister" and op.invoke < stuck.complete for op in ops):  # type: ignore[operator]
            return Anomaly(key, "lost-write", f"lost write (an acknowledged register vanished): {base}", stuck.id)
        if stuck.value is not None and any(
                op.kind == "register" and op.value == stuck.value and op.complete is not None for op in ops) and any(
                op.kind != "read" and op.complete is not None and op.complete < stuck.invoke
                and op.value != stuck.value and op.invoke > _written_at(ops, stuck.value) for op in ops):
            return Anomaly(key, "stale-read", f"stale read (a newer acknowledged write was missed): {base}",
                           stuck.id)
        return Anomaly(key, "stale-read", f"read inconsistent with every order of the writes: {base}", stuck.id)
    return Anomaly(key, "impossible-result", f"write result inconsistent with every order: {base}", stuck.id)


def _written_at(ops: Sequence[Op], value: str) -> float:
    """When the (first) register of ``value`` completed."""
    return min(op.complete for op in ops if op.kind == "register" and op.value == value and op.complete is not None)


def check_history(ops: Iterable[Op], *, budget: int = DEFAULT_BUDGET) -> CheckResult:
    """Check every key's sub-history (linearizability is local, so this decides the whole)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    result = CheckResult()
    for key in sorted(by_key):
        result.keys.append(check_key(key, by_key[key], budget=budget))
    return result


def unwritten_stale_reads(ops: Iterable[Op]) -> list[Op]:
    """Stale reads that returned a value no register of that key had been invoked with before
    the read completed: a stale read may be old, but never invented."""
    ops = list(ops)
    first_invoke: dict[tuple[str, str | None], float] = {}
    for op in ops:
        if op.kind == "register":
            k = (op.key, op.value)
            first_invoke[k] = min(first_invoke.get(k, math.inf), op.invoke)
    bad = []
    for op in ops:
        if op.kind == "read" and op.stale and not op.indeterminate and op.value is not None:
            assert op.complete is not None
            if first_invoke.get((op.key, op.value), math.inf) > op.complete:
                bad.append(op)
    return bad


# ---------------------------------------------------------------------------------------------
# Files


def write_history(path: Path, ops: Iterable[Op], summary: str, **extra: Any) -> Path:
    """Write ``summary`` (first line, a JSON object with ``anomaly``) and every op (one JSON
    object per line, in invocation order) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps({"anomaly": summary, **extra}) + "\n")
        for op in sorted(ops, key=lambda o: (o.invoke, o.id)):
            f.write(json.dumps(asdict(op)) + "\n")
    return path


def read_history(path: Path) -> tuple[dict[str, Any], list[Op]]:
    """The header and the ops of a file written by ``write_history`` (to replay a failure:
    ``check_history(read_history(p)[1])``)."""
    lines = Path(path).read_text().splitlines()
    return json.loads(lines[0]), [Op(**json.loads(line)) for line in lines[1:] if line.strip()]
