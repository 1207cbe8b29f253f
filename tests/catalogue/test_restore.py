"""The Restore command (`registry snapshot restore`): one entry replaces every service and
instance by a snapshot's, keeps the catalogue's own client sessions, and is judged the same way
on every node (a bad snapshot is Rejected, never a crash)."""

from __future__ import annotations

import msgpack
import pytest

from registry.catalogue import (
    INVALID,
    MAX_RESTORE_BYTES,
    Applied,
    Catalogue,
    Command,
    Deregister,
    Register,
    Registered,
    Rejected,
    Request,
    Restore,
    Restored,
    SnapshotError,
    ValidationError,
    check_snapshot_envelope,
    decode_request,
    encode_request,
)


def write(catalogue: Catalogue, client: str, seq: int, command: Command) -> Applied:
    return catalogue.apply(catalogue.applied_index + 1, encode_request(Request(client, seq, command)))


def saved_and_changed() -> tuple[Catalogue, bytes]:
    """A catalogue whose snapshot (returned) holds web x2 and db; then changed: cache added, one
    web removed, db re-registered with another port."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.1", 80, tags=["blue"], meta={"zone": "eu"}))
    write(catalogue, "c1", 2, Register("web", "10.0.0.2", 80))
    write(catalogue, "c2", 1, Register("db", "10.0.0.3", 5432, instance_id="db-1"))
    snapshot = catalogue.to_bytes()
    write(catalogue, "c1", 3, Register("cache", "10.0.0.4", 6379))
    write(catalogue, "c1", 4, Deregister("web", address="10.0.0.2", port=80))
    write(catalogue, "c3", 1, Register("db", "10.0.0.3", 6543, instance_id="db-1"))
    return catalogue, snapshot


def instances(catalogue: Catalogue) -> dict[str, tuple]:
    return {name: catalogue.view.services[name] for name in catalogue.view.service_names()}


def test_restore_replaces_every_service_and_instance_with_the_snapshots() -> None:
    """After a Restore the services are exactly the snapshot's; the result counts them."""
    catalogue, snapshot = saved_and_changed()
    want = instances(Catalogue.from_bytes(snapshot))
    applied = write(catalogue, "op", 1, Restore(snapshot))
    assert applied == Applied("op", 1, Restored(services=2, instances=3), index=7)
    assert instances(catalogue) == want
    assert catalogue.view.applied_index == catalogue.view.version == 7


def test_restore_keeps_the_current_sessions_so_retries_stay_exactly_once() -> None:
    """Sessions are the catalogue's own, not the snapshot's: a write applied before the restore
    and retried after it gets its remembered result and is not applied again (Raft §8)."""
    catalogue, snapshot = saved_and_changed()
    sessions_before = {c: catalogue.last_seq(c) for c in ("c1", "c2", "c3")}
    write(catalogue, "op", 1, Restore(snapshot))
    assert {c: catalogue.last_seq(c) for c in ("c1", "c2", "c3")} == sessions_before == {"c1": 4, "c2": 1, "c3": 1}
    assert catalogue.last_seq("op") == 1
    assert catalogue.view.services["db"][0].port == 5432
    # c3's write (db on 6543) was applied before the restore; its retry must not re-apply it.
    retried = write(catalogue, "c3", 1, Register("db", "10.0.0.3", 6543, instance_id="db-1"))
    assert retried == Applied("c3", 1, Registered("db-1", created=False), index=6)
    assert catalogue.view.services["db"][0].port == 5432
    # A new write of the same client is applied.
    previous = catalogue.view.services["db"][0]
    assert write(catalogue, "c3", 2, Register("db", "10.0.0.3", 6543, instance_id="db-1")).result == \
        Registered("db-1", created=False, previous=previous)
    assert catalogue.view.services["db"][0].port == 6543


def test_a_retried_restore_is_applied_once() -> None:
    """The restore is a write like any other: the same (client, seq) again returns the first result."""
    catalogue, snapshot = saved_and_changed()
    first = write(catalogue, "op", 1, Restore(snapshot))
    write(catalogue, "c1", 5, Register("late", "10.0.0.8", 80))
    again = write(catalogue, "op", 1, Restore(snapshot))
    assert again == first
    assert "late" in catalogue.view


def test_restoring_the_same_content_keeps_the_version() -> None:
    """A restore that changes nothing leaves `version` (the DNS cache key) as it was."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.1", 80))
    version = catalogue.view.version
    applied = write(catalogue, "op", 1, Restore(catalogue.to_bytes()))
    assert applied.result == Restored(1, 1)
    assert catalogue.view.version == version and catalogue.applied_index == 2


def test_restoring_an_empty_snapshot_empties_the_catalogue() -> None:
    catalogue, _ = saved_and_changed()
    applied = write(catalogue, "op", 1, Restore(Catalogue().to_bytes()))
    assert applied.result == Restored(0, 0)
    assert len(catalogue.view.services) == 0


def _flip(data: bytes, at: int) -> bytes:
    raw = bytearray(data)
    raw[at] ^= 0xFF
    return bytes(raw)


def _resealed(body: object) -> bytes:
    """A snapshot with a correct header and checksum around ``body`` (msgpack of any value)."""
    import hashlib

    from registry.catalogue.state import SNAPSHOT_FORMAT, SNAPSHOT_MAGIC

    packed = msgpack.packb(body, use_bin_type=True)
    return SNAPSHOT_MAGIC + SNAPSHOT_FORMAT.to_bytes(2, "big") + hashlib.sha256(packed).digest() + packed


BAD_SNAPSHOTS = {
    "garbage": b"not a snapshot at all",
    "flipped-body-byte": lambda good: _flip(good, len(good) - 3),
    "truncated": lambda good: good[:-10],
    "other-format": lambda good: good[:4] + (99).to_bytes(2, "big") + good[6:],
    "not-canonical-service": _resealed([3, 3, [["WEB", [["a", "10.0.0.1", 80, [], []]]]], []]),
    "unsorted-instances": _resealed([3, 3, [["web", [["b", "10.0.0.1", 80, [], []], ["a", "10.0.0.2", 80, [], []]]]], []]),
    "bad-port": _resealed([3, 3, [["web", [["a", "10.0.0.1", 0, [], []]]]], []]),
    "wrong-shape": _resealed({"services": []}),
}


@pytest.mark.parametrize("name", sorted(BAD_SNAPSHOTS))
def test_a_bad_snapshot_is_rejected_and_changes_nothing(name: str) -> None:
    """Every node refuses a bad snapshot the same way: Rejected(INVALID), the services and
    sessions untouched (only the applied index moves), never an exception."""
    catalogue, good = saved_and_changed()
    bad = BAD_SNAPSHOTS[name]
    data = bad(good) if callable(bad) else bad
    before = instances(catalogue), catalogue.view.version, catalogue.session_count()
    applied = write(catalogue, "op", 1, Restore(data))
    assert isinstance(applied.result, Rejected) and applied.result.code == INVALID, applied
    assert "cannot restore" in applied.result.message
    assert (instances(catalogue), catalogue.view.version, catalogue.session_count() - 1) == before


def test_a_restore_entry_with_a_non_bytes_snapshot_is_rejected() -> None:
    """A hand-made entry whose snapshot is a string (not msgpack bin) is refused on apply."""
    catalogue = Catalogue()
    entry = msgpack.packb({"v": 1, "client": "op", "seq": 1, "op": "restore", "snapshot": "text"}, use_bin_type=True)
    applied = catalogue.apply(1, entry)
    assert isinstance(applied.result, Rejected) and applied.result.code == INVALID
    extra = msgpack.packb({"v": 1, "client": "op", "seq": 2, "op": "restore", "snapshot": b"x", "more": 1},
                          use_bin_type=True)
    assert catalogue.apply(2, extra).result.code == INVALID  # type: ignore[union-attr]


def test_restore_validates_its_type_and_size_when_constructed() -> None:
    for bad in (b"", "text", None, 5):
        with pytest.raises(ValidationError):
            Restore(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Restore(bytes(MAX_RESTORE_BYTES + 1))
    assert Restore(bytearray(b"abc")).snapshot == b"abc"
    assert "3 bytes" in repr(Restore(b"abc"))


def test_restore_requests_round_trip_through_the_log_encoding() -> None:
    request = Request("op", 7, Restore(b"RCAT\x00\x01" + bytes(40)))
    assert decode_request(encode_request(request)) == request


def test_the_same_log_with_a_restore_gives_the_same_digest_and_the_snapshot_round_trips() -> None:
    """Determinism: two replicas applying the same entries (a restore among them) agree, and a
    snapshot taken after a restore (its session holds a Restored result) restores to the same state."""
    one, snapshot = saved_and_changed()
    two, _ = saved_and_changed()
    for catalogue in (one, two):
        write(catalogue, "op", 1, Restore(snapshot))
        write(catalogue, "op2", 1, Restore(b"junk"))
        write(catalogue, "c1", 5, Register("late", "10.0.0.8", 80))
    assert one.digest() == two.digest()
    copy = Catalogue.from_bytes(one.to_bytes())
    assert copy.digest() == one.digest()
    assert write(copy, "op", 1, Restore(snapshot)).result == Restored(2, 3)  # remembered, from the snapshot


def test_check_snapshot_envelope_checks_only_the_header_and_checksum() -> None:
    """The cheap check (used before proposing) passes a sealed but invalid body, which only the
    full check on apply refuses; it refuses damaged or foreign bytes."""
    _, good = saved_and_changed()
    check_snapshot_envelope(good)
    check_snapshot_envelope(BAD_SNAPSHOTS["bad-port"])  # type: ignore[arg-type]
    for bad in (b"junk", _flip(good, len(good) - 1), good[:-1], "text"):
        with pytest.raises(SnapshotError):
            check_snapshot_envelope(bad)  # type: ignore[arg-type]
