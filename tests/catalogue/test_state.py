"""The catalogue state machine: register/deregister semantics, sessions (Raft §8), bad entries,
ordering, and snapshots (hashicorp FSM: apply, snapshot, restore)."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from registry.catalogue import (
    INVALID,
    NOT_FOUND,
    STALE_SEQ,
    Applied,
    Catalogue,
    Command,
    Deregister,
    Deregistered,
    Instance,
    Register,
    Registered,
    Rejected,
    Request,
    SnapshotError,
    encode_request,
)
from registry.catalogue.state import SNAPSHOT_FORMAT, SNAPSHOT_MAGIC


def write(catalogue: Catalogue, client: str, seq: int, command: Command) -> Applied:
    """Apply one request as the next committed entry."""
    return catalogue.apply(catalogue.applied_index + 1, encode_request(Request(client, seq, command)))


def populated() -> Catalogue:
    """A catalogue with three services, sessions for two clients, a skipped entry and a garbage entry."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.1", 80, tags=["blue"], meta={"zone": "eu"}))
    write(catalogue, "c1", 2, Register("web", "2001:db8::1", 80, instance_id="v6"))
    catalogue.skip(catalogue.applied_index + 1)
    write(catalogue, "c2", 1, Register("db", "db.example.com", 5432))
    catalogue.apply(catalogue.applied_index + 1, b"\x00garbage")
    write(catalogue, "c2", 2, Register("api", "10.0.0.9", 443))
    write(catalogue, "c2", 3, Deregister("api", instance_id="nope"))
    return catalogue


# Register and deregister.


def test_register_adds_an_instance_and_reports_it_created() -> None:
    catalogue = Catalogue()
    applied = write(catalogue, "c1", 1, Register("web", "10.0.0.5", 8080, tags=["v1"], at_ms=5))
    assert applied == Applied("c1", 1, Registered("web-10.0.0.5-8080", created=True), index=1)
    assert catalogue.view.instances("web") == (
        Instance("web-10.0.0.5-8080", "web", "10.0.0.5", 8080, ("v1",), (), since_ms=5, revision=1),
    )
    assert catalogue.applied_index == catalogue.view.applied_index == 1


def test_register_is_an_upsert_by_id() -> None:
    """Registering an existing id replaces that whole instance (tags and meta not given are
    removed) and reports created=False with the definition it replaced."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80, instance_id="a", tags=["old"], meta={"v": "1"},
                                       at_ms=7))
    applied = write(catalogue, "c1", 2, Register("web", "10.0.0.6", 81, instance_id="a", at_ms=7))
    old = Instance("a", "web", "10.0.0.5", 80, ("old",), (("v", "1"),), since_ms=7, revision=1)
    assert applied.result == Registered("a", created=False, previous=old)
    assert catalogue.view.instances("web") == (Instance("a", "web", "10.0.0.6", 81, (), (), since_ms=7, revision=2),)
    # The same definition again is a new incarnation (revision 3) and says what it replaced: the same, at 2.
    before = catalogue.view.instances("web")[0]
    again = write(catalogue, "c1", 3, Register("web", "10.0.0.6", 81, instance_id="a", at_ms=7))
    assert again.result == Registered("a", created=False, previous=before)
    assert catalogue.view.instances("web") == (Instance("a", "web", "10.0.0.6", 81, (), (), since_ms=7, revision=3),)
    assert again.touched == (("web", "a"),) and catalogue.view.version == 3


def test_a_retried_register_answers_without_previous_on_every_node() -> None:
    """A session remembers a register's result without ``previous`` (a snapshot does not hold
    it): a retry gets the same answer from a node that applied the write and from one restored
    from a snapshot taken after it."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80, instance_id="a", tags=["old"]))
    first = write(catalogue, "c1", 2, Register("web", "10.0.0.5", 80, instance_id="a"))
    assert first.result.previous is not None
    restored = Catalogue.from_bytes(catalogue.to_bytes())
    retries = [write(c, "c1", 2, Register("web", "10.0.0.5", 80, instance_id="a")) for c in (catalogue, restored)]
    assert retries[0] == retries[1] == Applied("c1", 2, Registered("a", created=False), index=2)
    assert catalogue.digest() == restored.digest()


def test_instances_are_kept_sorted_by_id() -> None:
    catalogue = Catalogue()
    for seq, iid in enumerate(["m", "b", "z", "a", "B"], start=1):
        write(catalogue, "c1", seq, Register("web", "10.0.0.5", 80, instance_id=iid))
    assert [i.id for i in catalogue.view.instances("web")] == ["B", "a", "b", "m", "z"]


def test_ids_are_per_service() -> None:
    """The same id in two services names two instances."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80, instance_id="a"))
    applied = write(catalogue, "c1", 2, Register("db", "10.0.0.5", 80, instance_id="a"))
    assert applied.result == Registered("a", created=True)
    assert len(catalogue.view.instances("web")) == len(catalogue.view.instances("db")) == 1


def test_deregister_by_id() -> None:
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80, instance_id="a"))
    write(catalogue, "c1", 2, Register("web", "10.0.0.6", 80, instance_id="b"))
    assert write(catalogue, "c1", 3, Deregister("WEB", instance_id="a")).result == Deregistered(("a",))
    assert [i.id for i in catalogue.view.instances("web")] == ["b"]


def test_deregister_by_address_and_port_removes_every_match_in_that_service() -> None:
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "2001:db8::1", 80, instance_id="x"))
    write(catalogue, "c1", 2, Register("web", "2001:db8::1", 80, instance_id="y"))
    write(catalogue, "c1", 3, Register("web", "2001:db8::1", 81, instance_id="other-port"))
    write(catalogue, "c1", 4, Register("db", "2001:db8::1", 80, instance_id="other-service"))
    applied = write(catalogue, "c1", 5, Deregister("web", address="2001:DB8:0::1", port=80))
    assert applied.result == Deregistered(("x", "y"))
    assert [i.id for i in catalogue.view.instances("web")] == ["other-port"]
    assert [i.id for i in catalogue.view.instances("db")] == ["other-service"]


def test_removing_the_last_instance_removes_the_service() -> None:
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80))
    write(catalogue, "c1", 2, Deregister("web", address="10.0.0.5", port=80))
    assert "web" not in catalogue.view.services
    assert catalogue.view.service_names() == ()


@pytest.mark.parametrize(
    "command, message",
    [
        (Deregister("web", instance_id="nope"), "service 'web' has no instance with id 'nope'"),
        (Deregister("web", address="10.0.0.5", port=81), "service 'web' has no instance at 10.0.0.5:81"),
        (Deregister("web", address="2001:db8::1", port=80), "service 'web' has no instance at [2001:db8::1]:80"),
        (Deregister("ghost", instance_id="a"), "service 'ghost' has no instance with id 'a'"),
    ],
)
def test_deregistering_nothing_is_not_found(command: Deregister, message: str) -> None:
    """Removing nothing is Rejected(not_found) and leaves the services as they were."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80))
    before = catalogue.view
    applied = write(catalogue, "c1", 2, command)
    assert applied.result == Rejected(NOT_FOUND, message)
    assert catalogue.view.services is before.services and catalogue.view.version == before.version


# Sessions (Raft §8).


def test_a_retried_request_is_applied_once() -> None:
    """A request committed twice (a client retry) is applied once; the retry gets the first result."""
    catalogue = Catalogue()
    register = Register("web", "10.0.0.5", 80)
    first = write(catalogue, "c1", 1, register)
    write(catalogue, "c2", 1, Deregister("web", address="10.0.0.5", port=80))
    retry = write(catalogue, "c1", 1, register)
    assert retry == first == Applied("c1", 1, Registered("web-10.0.0.5-80", created=True), index=1)
    assert catalogue.view.instances("web") == ()  # not registered again by the retry


def test_a_retry_returns_the_remembered_result_even_for_a_different_command() -> None:
    """The session answers by seq: the command in a retried entry is not looked at again."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Deregister("web", instance_id="x"))
    again = write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80))
    assert again.result == Rejected(NOT_FOUND, "service 'web' has no instance with id 'x'")
    assert again.index == 1
    assert catalogue.view.instances("web") == ()


def test_an_older_seq_is_rejected_as_stale() -> None:
    catalogue = Catalogue()
    write(catalogue, "c1", 5, Register("web", "10.0.0.5", 80))
    before = catalogue.view
    applied = write(catalogue, "c1", 4, Register("web", "10.0.0.6", 80))
    assert applied.result.code == STALE_SEQ  # type: ignore[union-attr]
    assert "seq 4" in applied.result.message and "seq 5" in applied.result.message  # type: ignore[union-attr]
    assert catalogue.view.services is before.services
    assert catalogue.last_seq("c1") == 5


def test_seqs_may_skip_numbers() -> None:
    """A newer seq applies even if it is not last + 1 (a refused write leaves a gap)."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80))
    assert write(catalogue, "c1", 9, Register("web", "10.0.0.6", 80)).result == Registered("web-10.0.0.6-80", True)
    assert catalogue.last_seq("c1") == 9


def test_clients_have_independent_sessions() -> None:
    catalogue = Catalogue()
    write(catalogue, "c1", 3, Register("web", "10.0.0.5", 80))
    assert write(catalogue, "c2", 1, Register("web", "10.0.0.6", 80)).result == Registered("web-10.0.0.6-80", True)


def test_the_least_recently_used_session_is_evicted() -> None:
    """Beyond max_sessions, a new client evicts the session least recently used (by log index)."""
    catalogue = Catalogue(max_sessions=2)
    write(catalogue, "a", 1, Register("web", "10.0.0.1", 80))
    write(catalogue, "b", 1, Register("web", "10.0.0.2", 80))
    write(catalogue, "a", 1, Register("web", "10.0.0.1", 80))  # a retry counts as a use: b is now oldest
    write(catalogue, "c", 1, Register("web", "10.0.0.3", 80))
    assert (catalogue.last_seq("a"), catalogue.last_seq("b"), catalogue.last_seq("c")) == (1, None, 1)
    assert catalogue.session_count() == 2
    # b's session is gone, so its retry is applied again (the documented limit of a bounded table).
    again = write(catalogue, "b", 1, Register("web", "10.0.0.2", 80)).result
    # (revision 0: a register without at_ms is the previous version's entry; see test_legacy_registers_...)
    assert again == Registered("web-10.0.0.2-80", False, previous=Instance("web-10.0.0.2-80", "web", "10.0.0.2", 80,
                                                                               revision=0))
    assert catalogue.last_seq("a") is None  # and b's new session evicted a


def test_eviction_is_the_same_on_every_node_and_survives_a_snapshot() -> None:
    """Two catalogues fed the same entries, and one restored from a snapshot midway, evict alike."""
    one, two = Catalogue(max_sessions=3), Catalogue(max_sessions=3)
    for n in range(10):
        for catalogue in (one, two):
            write(catalogue, f"c{n % 5}", n + 1, Register("web", f"10.0.0.{n + 1}", 80))
    three = Catalogue.from_bytes(two.to_bytes(), max_sessions=3)
    for n in range(10, 20):
        for catalogue in (one, two, three):
            write(catalogue, f"c{(n * 3) % 7}", n + 1, Register("web", f"10.0.0.{n + 1}", 80))
    assert one.digest() == two.digest() == three.digest()
    assert one.session_count() == 3


def test_a_snapshot_with_more_sessions_than_the_bound_is_refused() -> None:
    catalogue = Catalogue(max_sessions=5)
    for n in range(5):
        write(catalogue, f"c{n}", 1, Register("web", "10.0.0.1", 80))
    with pytest.raises(SnapshotError, match="max_sessions=4"):
        Catalogue.from_bytes(catalogue.to_bytes(), max_sessions=4)


# Entries that are not valid requests.


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"not msgpack at all", msgpack.packb([1, 2, 3]), msgpack.packb({"v": 99}), b"\x91" * 50_000],
    ids=["empty", "reserved-byte", "text", "list", "future-version", "deep"],
)
def test_a_garbage_entry_is_rejected_and_changes_nothing(data: bytes) -> None:
    """apply never raises on bad bytes: Rejected(invalid), and the state is as if the entry were skipped."""
    catalogue, skipped = populated(), populated()
    view = catalogue.view
    applied = catalogue.apply(catalogue.applied_index + 1, data)
    skipped.skip(skipped.applied_index + 1)
    assert applied.client_id is None and applied.seq is None
    assert applied.result.code == INVALID  # type: ignore[union-attr]
    assert catalogue.digest() == skipped.digest()
    assert catalogue.view.services is view.services and catalogue.view.version == view.version


def test_an_invalid_command_from_a_known_client_is_rejected_without_touching_its_session() -> None:
    """The entry names its client (so the node can answer it) but the session keeps its last seq."""
    catalogue, skipped = populated(), populated()
    body = {"v": 1, "client": "c1", "seq": 10, "op": "register", "service": "web_1", "address": "10.0.0.1", "port": 80}
    applied = catalogue.apply(catalogue.applied_index + 1, msgpack.packb(body))
    skipped.skip(skipped.applied_index + 1)
    assert (applied.client_id, applied.seq, applied.result.code) == ("c1", 10, INVALID)  # type: ignore[union-attr]
    assert "web_1" in applied.result.message  # type: ignore[union-attr]
    assert catalogue.last_seq("c1") == 2
    assert catalogue.digest() == skipped.digest()


# Ordering.


def test_skip_advances_the_applied_index_only() -> None:
    catalogue = populated()
    view = catalogue.view
    catalogue.skip(view.applied_index + 1)
    assert catalogue.view.applied_index == view.applied_index + 1
    assert catalogue.view.version == view.version and catalogue.view.services is view.services


@pytest.mark.parametrize("offset", [0, 2, -1])
def test_entries_out_of_order_are_a_bug(offset: int) -> None:
    """Applying or skipping any index but applied_index + 1 raises AssertionError (crash, do not limp)."""
    catalogue = populated()
    index = catalogue.applied_index + offset
    with pytest.raises(AssertionError, match="in order"):
        catalogue.apply(index, encode_request(Request("c9", 1, Register("web", "10.0.0.5", 80))))
    with pytest.raises(AssertionError, match="in order"):
        catalogue.skip(index)


def test_a_fresh_catalogue_starts_at_index_one() -> None:
    catalogue = Catalogue()
    assert (catalogue.applied_index, catalogue.view.version, len(catalogue.view.services)) == (0, 0, 0)
    with pytest.raises(AssertionError):
        catalogue.skip(0)
    catalogue.skip(1)


# Snapshots.


def test_snapshot_and_restore_round_trip() -> None:
    """from_bytes(to_bytes()) gives the same state: digest, bytes, view and sessions."""
    original = populated()
    restored = Catalogue.from_bytes(original.to_bytes())
    assert restored.digest() == original.digest()
    assert restored.to_bytes() == original.to_bytes()
    assert restored.view.services == original.view.services
    assert (restored.view.applied_index, restored.view.version) == (original.view.applied_index, original.view.version)
    # Sessions came along: a retry after the restore still gets its remembered result.
    # And both continue identically.
    for catalogue in (original, restored):
        retry = write(catalogue, "c1", 2, Register("web", "2001:db8::1", 80, instance_id="v6"))
        assert retry == Applied("c1", 2, Registered("v6", created=True), index=2)
        write(catalogue, "c1", 1, Register("web", "10.0.0.1", 80))
        write(catalogue, "c3", 1, Register("web", "10.0.0.7", 80))
    assert restored.digest() == original.digest()


def test_an_empty_catalogue_round_trips() -> None:
    assert Catalogue.from_bytes(Catalogue().to_bytes()).digest() == Catalogue().digest()


def test_restore_replaces_the_state_in_place_and_publishes_a_view() -> None:
    """restore() swaps the state of a live catalogue, so `catalogue.view` readers follow it."""
    source, target = populated(), Catalogue()
    write(target, "zz", 1, Register("other", "10.9.9.9", 1))
    target.restore(source.to_bytes())
    assert target.digest() == source.digest()
    assert target.view.service_names() == ("api", "db", "web")


def test_a_failed_restore_changes_nothing() -> None:
    catalogue = populated()
    digest, view = catalogue.digest(), catalogue.view
    with pytest.raises(SnapshotError):
        catalogue.restore(b"RCAT nonsense")
    assert catalogue.digest() == digest and catalogue.view is view


def _with_body(body: object) -> bytes:
    """A snapshot with a correct header and checksum around an arbitrary body."""
    raw = msgpack.packb(body, use_bin_type=True)
    return SNAPSHOT_MAGIC + SNAPSHOT_FORMAT.to_bytes(2, "big") + hashlib.sha256(raw).digest() + raw


def _damaged(position: slice | int) -> bytes:
    data = bytearray(populated().to_bytes())
    if isinstance(position, slice):
        return bytes(data[position])
    data[position] ^= 0x01
    return bytes(data)


_INSTANCE = ["a", "10.0.0.1", 80, [], [], None, "passing", 0, 1, ""]
_TTL = ["ttl", 10_000, "", 0, 0, 3, 2, 0]
_OK_RESULT = ["registered", "a", True]


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "no RCAT header"),
        (_damaged(0), "no RCAT header"),
        (_damaged(5), "unsupported catalogue snapshot format"),
        (_damaged(10), "checksum mismatch"),
        (_damaged(-1), "checksum mismatch"),
        (_damaged(slice(0, -3)), "checksum mismatch"),
        (_damaged(slice(0, 20)), "no RCAT header"),
        (_with_body({"not": "a list"}), "expected [applied_index"),
        (_with_body([5, 6, [], []]), "version is not an int <= applied_index"),
        (_with_body([5, 1, [["WEB", [_INSTANCE]]], []]), "not canonical"),
        (_with_body([5, 1, [["web", []]], []]), "a service is [name"),
        (_with_body([5, 1, [["web", [_INSTANCE]], ["api", [_INSTANCE]]], []]), "not sorted by name"),
        (_with_body([5, 1, [["web", [_INSTANCE, _INSTANCE]]], []]), "not sorted by id"),
        (_with_body([5, 1, [["web", [["a", "10.0.0.01", 80, [], [], None, "passing", 0, 1, ""]]]], []]), "address"),
        (_with_body([5, 1, [["web", [["a", "10.0.0.1", 0, [], [], None, "passing", 0, 1, ""]]]], []]), "1 to 65535"),
        (_with_body([5, 1, [["web", [["a", "10.0.0.1", 80, ["b", "a"], [], None, "passing", 0, 1, ""]]]], []]),
         "not canonical"),
        (_with_body([5, 1, [["web", [["a", "10.0.0.1", 80, [], []]]]], []]), "an instance is [id, address, port, tags, "
         "meta, check"),
        (_with_body([5, 1, [["web", [_INSTANCE[:5] + [None, "sick", 0, 1, ""]]]], []]), "unknown health status"),
        (_with_body([5, 1, [["web", [_INSTANCE[:5] + [["udp", *_TTL[1:]], "passing", 0, 1, ""]]]], []]),
         "unknown check kind"),
        (_with_body([5, 1, [["web", [_INSTANCE[:5] + [_TTL[:-1], "passing", 0, 1, ""]]]], []]), "a check is [kind"),
        (_with_body([5, 1, [["web", [_INSTANCE[:5] + [["ttl", 10, *_TTL[2:]], "passing", 0, 1, ""]]]], []]),
         "ttl_ms"),
        (_with_body([5, 1, [["web", [_INSTANCE[:5] + [_TTL, "passing", -1, 1, ""]]]], []]), "since_ms"),
        (_with_body([5, 1, [["web", [_INSTANCE[:5] + [_TTL, "passing", 0, 1, "x" * 257]]]], []]), "output"),
        (_with_body([5, 1, [["web", [_INSTANCE[:5] + [_TTL, "passing", 0, True, ""]]]], []]), "revision"),
        (_with_body([5, 1, [], [["c", 1, 2, 1, ["health_set", 1]]]]), "a health_set result"),
        (_with_body([5, 1, [], [["c", 1, 9, 1, ["registered", "a", True]]]]), "LRU order"),
        (_with_body([5, 1, [], [["c", 1, 3, 4, ["registered", "a", True]]]]), "result_index"),
        (_with_body([5, 1, [], [["c", 1, 2, 1, ["shrugged"]]]]), "unknown result"),
        (_with_body([5, 1, [], [["c", 1, 2, 1, ["rejected", "oops", "m"]]]]), "a rejected result"),
        (_with_body([5, 1, [], [["c", 1, 2, 1, ["deregistered", []]]]]), "a deregistered result"),
        (_with_body([5, 1, [], [["c", 1, 2, 1, _OK_RESULT], ["d", 2, 3, 3, ["registered", "a", 1]]]]), "a registered"),
        (_with_body([5, 1, [], [["c", 1, 2, 1, _OK_RESULT], ["c", 2, 3, 3, _OK_RESULT]]]), "two sessions"),
        (_with_body([5, 1, [], [["c", 0, 2, 1, ["registered", "a", True]]]]), "seq"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_damaged_or_foreign_snapshot_is_refused(data: bytes, fragment: str) -> None:
    """Every header, checksum and body defect raises SnapshotError (a ValueError) saying which."""
    with pytest.raises(SnapshotError) as caught:
        Catalogue.from_bytes(data)
    assert isinstance(caught.value, ValueError)
    assert fragment in str(caught.value)


def test_a_snapshot_is_refused_unless_it_is_bytes() -> None:
    with pytest.raises(SnapshotError, match="must be bytes"):
        Catalogue.from_bytes("RCAT")  # type: ignore[arg-type]


def test_digest_covers_services_sessions_and_index() -> None:
    """The digest changes with each part of the state."""
    base = populated()
    moved = populated()
    moved.skip(moved.applied_index + 1)
    session = populated()
    write(session, "c1", 2, Register("web", "2001:db8::1", 80, instance_id="v6"))  # a retry: its LRU place moves
    content = populated()
    write(content, "c9", 1, Register("zz", "10.0.0.1", 80))
    digests = {c.digest() for c in (base, moved, session, content)}
    assert len(digests) == 4


def test_legacy_registers_get_revision_0_like_a_format_1_snapshot() -> None:
    """A register written by the previous version (no at_ms, no check) gets revision 0, the same
    as the instance restored from a format-1 snapshot taken after it: replaying old entries and
    restoring an old snapshot give every node the same instances."""
    catalogue = Catalogue()
    write(catalogue, "c1", 1, Register("web", "10.0.0.5", 80, instance_id="old"))
    write(catalogue, "c1", 2, Register("web", "10.0.0.6", 80, instance_id="new", at_ms=1))
    new, old = catalogue.view.instances("web")  # sorted by id
    assert (old.revision, new.revision) == (0, 2)
