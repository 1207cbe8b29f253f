"""Determinism (hashicorp FSM): the same entries give the same results and the same digest on every
catalogue, whether applied from the start or restored from a snapshot midway; and the catalogue
agrees with a deliberately simple model of the rules."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from registry.catalogue import (
    Applied,
    Catalogue,
    CommandError,
    Deregistered,
    HealthSet,
    HealthStatus,
    Instance,
    Register,
    Registered,
    Rejected,
    Result,
    SetHealth,
    decode_request,
)

from .strategies import entries

Entry = tuple[str, bytes]
entry_lists = st.lists(entries, max_size=40)


def run(catalogue: Catalogue, log: list[Entry]) -> list[Applied | None]:
    """Feed ``log`` to ``catalogue`` from its next index; the Applied of each NORMAL entry."""
    out: list[Applied | None] = []
    for kind, data in log:
        index = catalogue.applied_index + 1
        if kind == "skip":
            catalogue.skip(index)
            out.append(None)
        else:
            out.append(catalogue.apply(index, data))
    return out


@settings(max_examples=150)
@given(entry_lists)
def test_same_entries_give_the_same_results_and_digest(log: list[Entry]) -> None:
    """Two catalogues (with a tiny session table, so eviction happens) agree on everything."""
    one, two = Catalogue(max_sessions=2), Catalogue(max_sessions=2)
    assert run(one, log) == run(two, log)
    assert one.digest() == two.digest()
    assert one.to_bytes() == two.to_bytes()
    assert one.view.services == two.view.services


@settings(max_examples=150)
@given(entry_lists, st.data())
def test_a_snapshot_midway_continues_to_the_same_state(log: list[Entry], data: st.DataObject) -> None:
    """Apply a prefix, snapshot, restore elsewhere, apply the rest: same results and digest as straight through."""
    split = data.draw(st.integers(0, len(log)), label="split")
    straight = Catalogue(max_sessions=3)
    results = run(straight, log)
    first = Catalogue(max_sessions=3)
    run(first, log[:split])
    restored = Catalogue.from_bytes(first.to_bytes(), max_sessions=3)
    assert restored.digest() == first.digest()
    assert run(restored, log[split:]) == results[split:]
    assert restored.digest() == straight.digest()
    assert restored.view.version == straight.view.version


@dataclass
class Model:
    """The catalogue's rules written as plainly as possible (unbounded sessions)."""

    services: dict[str, dict[str, Instance]] = field(default_factory=dict)
    sessions: dict[str, tuple[int, Result, int]] = field(default_factory=dict)

    def apply(self, index: int, data: bytes) -> tuple[Result | str, int]:
        try:
            request = decode_request(data)
        except CommandError:
            return "invalid", index
        session = self.sessions.get(request.client_id)
        if session is not None and request.seq == session[0]:
            return session[1], session[2]
        if session is not None and request.seq < session[0]:
            return "stale_seq", index
        command = request.command
        result: Result
        if isinstance(command, Register):
            assert command.instance_id is not None
            instances = self.services.setdefault(command.service, {})
            previous = instances.get(command.instance_id)
            instances[command.instance_id] = Instance(
                command.instance_id, command.service, command.address, command.port, command.tags, command.meta,
                command.check, HealthStatus.PASSING, since_ms=command.at_ms,
                revision=index if command.at_ms or command.check is not None else 0,  # legacy: 0
            )  # fmt: skip
            result = Registered(command.instance_id, previous is None, previous)
        elif isinstance(command, SetHealth) or getattr(command, "revision", None) is not None:
            instances = self.services.get(command.service, {})
            found = instances.get(command.instance_id)
            if found is None or found.revision != command.revision:
                result = Rejected("not_found", "")
            elif isinstance(command, SetHealth):
                result = HealthSet(found.status is not command.status)
                if result.changed:
                    instances[found.id] = Instance(
                        found.id, found.service, found.address, found.port, found.tags, found.meta, found.check,
                        command.status, command.at_ms, found.revision, command.output,
                    )  # fmt: skip
            else:
                del instances[found.id]
                if not instances:
                    self.services.pop(command.service, None)
                result = Deregistered((found.id,))
        else:
            instances = self.services.get(command.service, {})
            removed = sorted(
                iid for iid, i in instances.items()
                if iid == command.instance_id or (i.address, i.port) == (command.address, command.port)
            )  # fmt: skip
            for iid in removed:
                del instances[iid]
            if not instances:
                self.services.pop(command.service, None)
            result = Deregistered(tuple(removed)) if removed else Rejected("not_found", "")
        remembered = Registered(result.instance_id, result.created) if isinstance(result, Registered) else result
        self.sessions[request.client_id] = (request.seq, remembered, index)
        return result, index


def _comparable(result: Result | str) -> object:
    return result.code if isinstance(result, Rejected) else result


@settings(max_examples=200)
@given(entry_lists)
def test_the_catalogue_follows_the_model(log: list[Entry]) -> None:
    """Upserts, the three kinds of deregistration, health changes, not_found, retries and stale seqs
    behave as the model says."""
    catalogue, model = Catalogue(), Model()
    for kind, data in log:
        index = catalogue.applied_index + 1
        if kind == "skip":
            catalogue.skip(index)
            continue
        applied = catalogue.apply(index, data)
        want, want_index = model.apply(index, data)
        assert (_comparable(applied.result), applied.index) == (_comparable(want), want_index)
    got = {name: list(instances) for name, instances in catalogue.view.services.items()}
    want_services = {name: [ids[k] for k in sorted(ids)] for name, ids in model.services.items()}
    assert got == want_services
    assert catalogue.view.service_names() == tuple(sorted(model.services))
