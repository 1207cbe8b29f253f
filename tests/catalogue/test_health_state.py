"""Health as catalogue state (issue 14): Register makes a passing incarnation, SetHealth and
Deregister-with-revision apply only to the incarnation they name (a forced deregistration or a
re-registration always wins over a late one), Applied.touched says what changed, sessions of the
leader's ~health client stay monotonic across terms, and snapshots carry it all (format 1 still
reads)."""

from __future__ import annotations

import tracemalloc

import pytest

from registry.catalogue import (
    ALL_TOUCHED,
    HEALTH_CLIENT_ID,
    NOT_FOUND,
    STALE_SEQ,
    Applied,
    Catalogue,
    Check,
    CheckKind,
    Command,
    Deregister,
    Deregistered,
    HealthSet,
    HealthStatus,
    Instance,
    Register,
    Registered,
    Rejected,
    Request,
    Restore,
    Restored,
    SetHealth,
    check_snapshot_envelope,
    encode_request,
    health_seq,
)
from registry.catalogue.frozen import freeze, thaw

CRITICAL, PASSING = HealthStatus.CRITICAL, HealthStatus.PASSING
TTL = Check(CheckKind.TTL, ttl_ms=10_000, deregister_after_ms=60_000)
TCP = Check(CheckKind.TCP, interval_ms=1_000, timeout_ms=1_000)


def write(catalogue: Catalogue, command: Command, client: str = "c1", seq: int | None = None) -> Applied:
    """Apply ``command`` as the next committed entry (a new seq of ``client`` unless given)."""
    seq = (catalogue.last_seq(client) or 0) + 1 if seq is None else seq
    return catalogue.apply(catalogue.applied_index + 1, encode_request(Request(client, seq, command)))


def health(catalogue: Catalogue, command: Command, term: int = 1) -> Applied:
    """Apply a command of the leader's ~health client, numbered as a leader of ``term`` would."""
    last = catalogue.last_seq(HEALTH_CLIENT_ID) or 0
    counter = last - (term << 32) + 1 if last >> 32 == term else 1
    return write(catalogue, command, HEALTH_CLIENT_ID, health_seq(term, counter))


def one(catalogue: Catalogue, service: str = "web") -> Instance:
    (instance,) = catalogue.view.instances(service)
    return instance


def test_register_makes_a_passing_incarnation_at_its_index() -> None:
    """status PASSING, since_ms = at_ms, revision = the entry's index, the check kept."""
    catalogue = Catalogue()
    catalogue.skip(1)
    applied = write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TTL, at_ms=1_000))
    assert applied.touched == (("web", "a"),)
    assert one(catalogue) == Instance("a", "web", "10.0.0.5", 80, check=TTL, status=PASSING, since_ms=1_000,
                                      revision=2)
    assert one(catalogue).serving


def test_set_health_changes_status_since_and_output_of_that_revision() -> None:
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TCP, at_ms=1_000))
    applied = health(catalogue, SetHealth("web", "a", 1, CRITICAL, 2_000, "connection refused"))
    assert applied.result == HealthSet(changed=True) and applied.touched == (("web", "a"),)
    got = one(catalogue)
    assert (got.status, got.since_ms, got.output, got.revision, got.check) == (
        CRITICAL, 2_000, "connection refused", 1, TCP)
    assert not got.serving
    assert catalogue.view.version == 2
    applied = health(catalogue, SetHealth("web", "a", 1, PASSING, 3_000))
    assert applied.result == HealthSet(changed=True)
    assert (one(catalogue).status, one(catalogue).since_ms, one(catalogue).output) == (PASSING, 3_000, "")


def test_set_health_to_the_same_status_changes_nothing() -> None:
    """HealthSet(changed=False): since_ms, output and the view's version stay; nothing is touched."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TCP, at_ms=1_000))
    health(catalogue, SetHealth("web", "a", 1, CRITICAL, 2_000, "refused"))
    view = catalogue.view
    applied = health(catalogue, SetHealth("web", "a", 1, CRITICAL, 9_000, "timed out"))
    assert applied.result == HealthSet(changed=False) and applied.touched == ()
    assert catalogue.view.services is view.services and catalogue.view.version == view.version
    assert (one(catalogue).since_ms, one(catalogue).output) == (2_000, "refused")


def test_a_late_set_health_after_a_re_register_is_not_found() -> None:
    """A probe result for the incarnation before a re-registration changes nothing."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TCP, at_ms=1_000))
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TCP, at_ms=5_000))  # revision 2
    view = catalogue.view
    applied = health(catalogue, SetHealth("web", "a", 1, CRITICAL, 6_000, "refused"))
    assert applied.result.code == NOT_FOUND and applied.touched == ()  # type: ignore[union-attr]
    assert "registered again (revision 2) since revision 1" in applied.result.message  # type: ignore[union-attr]
    assert catalogue.view.services is view.services and one(catalogue).status is PASSING


def test_a_late_deregister_by_revision_after_a_re_register_is_not_found() -> None:
    """An expiry decided for the old incarnation does not remove the new one."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TTL, at_ms=1_000))
    health(catalogue, SetHealth("web", "a", 1, CRITICAL, 2_000, "ttl expired"))
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TTL, at_ms=3_000))  # revision 3
    applied = health(catalogue, Deregister("web", instance_id="a", revision=1))
    assert applied.result.code == NOT_FOUND and applied.touched == ()  # type: ignore[union-attr]
    assert (one(catalogue).revision, one(catalogue).status) == (3, PASSING)
    applied = health(catalogue, Deregister("web", instance_id="a", revision=3))
    assert applied.result == Deregistered(("a",)) and applied.touched == (("web", "a"),)
    assert "web" not in catalogue.view


def test_health_commands_after_a_forced_deregistration_are_not_found() -> None:
    """A forced deregistration wins: a late SetHealth or expiry finds nothing, and nothing comes back."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TTL, at_ms=1_000))
    write(catalogue, Register("web", "10.0.0.6", 80, instance_id="b", check=TTL, at_ms=1_000))
    write(catalogue, Deregister("web", instance_id="a"))
    for command in (SetHealth("web", "a", 1, PASSING, 5_000), SetHealth("web", "a", 1, CRITICAL, 5_000),
                    Deregister("web", instance_id="a", revision=1), SetHealth("db", "a", 1, CRITICAL, 5_000)):
        applied = health(catalogue, command)
        assert isinstance(applied.result, Rejected) and applied.result.code == NOT_FOUND
        assert "has no instance with id 'a'" in applied.result.message
    assert [i.id for i in catalogue.view.instances("web")] == ["b"]


def test_touched_names_every_instance_an_entry_changed() -> None:
    """Register and deregister-by-endpoint name theirs; a rejection and a retry name none; a Restore is ALL."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="b"))
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a"))
    snapshot = catalogue.to_bytes()
    retry = write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a"), seq=2)
    assert retry.result == Registered("a", created=True) and retry.touched == ()
    applied = write(catalogue, Deregister("web", address="10.0.0.5", port=80))
    assert applied.touched == (("web", "a"), ("web", "b"))
    assert write(catalogue, Deregister("web", instance_id="a")).touched == ()
    restored = write(catalogue, Restore(snapshot), client="op")
    assert restored.result == Restored(1, 2) and restored.touched is ALL_TOUCHED
    assert write(catalogue, Restore(snapshot), client="op").touched == ()  # the same content: no change


def test_previous_of_a_register_carries_the_health_it_replaced() -> None:
    """Registered.previous (the CLI's diff) is the whole replaced instance, health included; a
    retry's answer still has none."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TCP, at_ms=1_000))
    health(catalogue, SetHealth("web", "a", 1, CRITICAL, 2_000, "refused"))
    before = one(catalogue)
    applied = write(catalogue, Register("web", "10.0.0.5", 81, instance_id="a", at_ms=3_000))
    assert applied.result == Registered("a", created=False, previous=before)
    assert before.status is CRITICAL and before.check == TCP
    assert (one(catalogue).status, one(catalogue).check, one(catalogue).revision) == (PASSING, None, 3)
    retry = write(catalogue, Register("web", "10.0.0.5", 81, instance_id="a", at_ms=3_000), seq=2)
    assert retry.result == Registered("a", created=False) and retry.index == 3


def test_set_health_copies_no_more_than_a_register() -> None:
    """Copy-on-write: a SetHealth replaces one instance tuple; every other service is shared."""
    catalogue = Catalogue()
    for n in range(300):
        write(catalogue, Register(f"svc{n}", "10.0.0.1", 80, instance_id="a", check=TCP))
    before = catalogue.view
    health(catalogue, SetHealth("svc7", "a", 8, CRITICAL, 1))
    after = catalogue.view
    assert after.instances("svc7")[0].status is CRITICAL
    shared = sum(after.services[f"svc{n}"] is before.services[f"svc{n}"] for n in range(300))
    assert shared == 299


def test_the_leaders_health_seqs_stay_above_an_old_leaders() -> None:
    """(term << 32) + counter: a new leader's first write is above every write of an older term,
    so it is applied, while a retry of an old term's write is stale."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TCP))
    for counter in range(1, 4):
        applied = write(catalogue, SetHealth("web", "a", 1, (CRITICAL, PASSING)[counter % 2], counter),
                        HEALTH_CLIENT_ID, health_seq(3, counter))
        assert isinstance(applied.result, HealthSet)
    new_leader = write(catalogue, SetHealth("web", "a", 1, CRITICAL, 9), HEALTH_CLIENT_ID, health_seq(4, 1))
    assert new_leader.result == HealthSet(changed=True)
    late = write(catalogue, SetHealth("web", "a", 1, PASSING, 5), HEALTH_CLIENT_ID, health_seq(3, 4))
    assert isinstance(late.result, Rejected) and late.result.code == STALE_SEQ
    assert one(catalogue).status is CRITICAL
    assert health_seq(4, 1) > health_seq(3, 2**32 - 1)
    for bad in ((0, 1), (1, 0), (1, 2**32), (2**31, 1)):
        with pytest.raises(ValueError):
            health_seq(*bad)


# Snapshots.


def health_catalogue() -> Catalogue:
    """Checked and unchecked instances, one critical with output, a ~health session with a HealthSet."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.5", 80, instance_id="a", check=TCP, at_ms=1_000))
    write(catalogue, Register("web", "10.0.0.6", 80, instance_id="b", check=TTL, at_ms=1_001))
    write(catalogue, Register("db", "10.0.0.7", 5432, instance_id="c", tags=["x"], at_ms=1_002), client="c2")
    http = Check(CheckKind.HTTP, url="http://[2001:db8::1]:8080/h", interval_ms=5_000, timeout_ms=2_000, failures=5,
                 successes=1, deregister_after_ms=600_000)
    write(catalogue, Register("api", "2001:db8::1", 8080, instance_id="d", check=http, at_ms=1_003))
    health(catalogue, SetHealth("web", "b", 2, CRITICAL, 2_000, "ttl expired (é)"))
    return catalogue


def test_a_snapshot_carries_health_and_round_trips() -> None:
    """from_bytes, thaw and freeze agree byte for byte with the health fields and HealthSet sessions."""
    original = health_catalogue()
    data = original.to_bytes()
    assert int.from_bytes(data[4:6], "big") == 2
    for restored in (Catalogue.from_bytes(data), thaw(data)):
        assert restored.digest() == original.digest() and restored.to_bytes() == data
        assert restored.view.services == original.view.services
        assert restored.view.instance("web", "b") == original.view.instance("web", "b")
        # The remembered HealthSet answers a retry the same way.
        seq = original.last_seq(HEALTH_CLIENT_ID)
        retry = restored.apply(restored.applied_index + 1, encode_request(
            Request(HEALTH_CLIENT_ID, seq, SetHealth("web", "b", 2, CRITICAL, 2_000, "ttl expired (é)"))))
        assert retry.result == HealthSet(changed=True) and retry.index == 5
    assert freeze(original).to_bytes() == data
    write(original, Register("db", "10.0.0.8", 80, instance_id="e", check=TCP))
    thawed = thaw(original.to_bytes())
    assert thawed.view.instance("db", "e").check is thawed.view.instance("web", "a").check  # shared, not copied


# A format-1 snapshot written by the code before health (commit cd080b2): web (v6, default id with
# tags and meta, "a" replaced once), db-1, sessions of c1, c2 (a not_found rejection) and c3; index 7.
FORMAT_1 = bytes.fromhex(
    "5243415400016473acdbf9885ae2c57a0a9ddb32013bd318b8e63799168b17caa6d574ab5cda9407079292a264629195a464622d31ae"
    "64622e6578616d706c652e636f6dcd1538909192a16ba17692a37765629395a161a831302e302e302e3751909095a27636ab3230303"
    "13a6462383a3a3150909095b17765622d31302e302e302e352d38303830a831302e302e302e35cd1f9092a4626c7565a276319192a4"
    "7a6f6e65a265759395a2633102020293aa72656769737465726564a27636c395a2633202050593a872656a6563746564a96e6f745f66"
    "6f756e64d92b73657276696365202764622720686173206e6f20696e7374616e6365207769746820696420276e6f70652795a263330"
    "2070793aa72656769737465726564a161c2"
)
FORMAT_1_DIGEST_BEFORE = "6473acdbf9885ae2c57a0a9ddb32013bd318b8e63799168b17caa6d574ab5cda"


def test_a_format_1_snapshot_still_restores() -> None:
    """Every instance passing, no check, revision 0, since 0; sessions kept; from_bytes, thaw,
    check_snapshot_envelope and a Restore all accept it, and it is written back as format 2."""
    assert FORMAT_1[6:38].hex() == FORMAT_1_DIGEST_BEFORE  # the previous digest() was SHA-256 of this body
    check_snapshot_envelope(FORMAT_1)
    for catalogue in (Catalogue.from_bytes(FORMAT_1), thaw(FORMAT_1)):
        assert (catalogue.applied_index, catalogue.view.version) == (7, 7)
        assert catalogue.view.service_names() == ("db", "web")
        assert [i.id for i in catalogue.view.instances("web")] == ["a", "v6", "web-10.0.0.5-8080"]
        assert catalogue.view.instance("web", "web-10.0.0.5-8080") == Instance(
            "web-10.0.0.5-8080", "web", "10.0.0.5", 8080, ("blue", "v1"), (("zone", "eu"),))
        assert catalogue.view.instance("web", "a") == Instance("a", "web", "10.0.0.7", 81)
        for instances in catalogue.view.services.values():
            for i in instances:
                assert (i.check, i.status, i.since_ms, i.revision, i.output) == (None, PASSING, 0, 0, "")
        assert [catalogue.last_seq(c) for c in ("c1", "c2", "c3")] == [2, 2, 2]
        assert int.from_bytes(catalogue.to_bytes()[4:6], "big") == 2
    assert Catalogue.from_bytes(FORMAT_1).digest() == thaw(FORMAT_1).digest()
    # A retry answered from a format-1 session, then a new write, as any catalogue would.
    catalogue = Catalogue.from_bytes(FORMAT_1)
    retry = write(catalogue, Register("web", "10.0.0.7", 81, instance_id="a"), client="c3", seq=2)
    assert retry == Applied("c3", 2, Registered("a", created=False), index=7)
    applied = write(catalogue, Register("web", "10.0.0.8", 80, instance_id="a", check=TCP, at_ms=5), client="c3")
    assert applied.result == Registered("a", False, previous=Instance("a", "web", "10.0.0.7", 81))
    # An operator's restore of format-1 bytes is accepted too.
    applied = write(catalogue, Restore(FORMAT_1), client="op")
    assert applied.result == Restored(2, 4) and catalogue.view.instance("web", "a") == Instance("a", "web", "10.0.0.7", 81)


def test_determinism_with_health_commands_through_a_snapshot() -> None:
    """Two catalogues fed the same registrations, transitions, expiries and late health writes
    agree on every result, touched and digest, also when one is restored from a snapshot midway."""
    straight = Catalogue(max_sessions=3)
    entries: list[bytes] = []
    counter = {"term": 1, "n": 0}

    def feed(client: str, seq: int, command: Command) -> None:
        entries.append(encode_request(Request(client, seq, command)))
        straight.apply(len(entries), entries[-1])

    def leader(command: Command) -> None:
        counter["n"] += 1
        feed(HEALTH_CLIENT_ID, health_seq(counter["term"], counter["n"]), command)

    for n in range(60):
        service, iid = f"svc{n % 5}", f"i{n % 7}"
        old = straight.view.instance(service, iid)
        feed("c1", n + 1, Register(service, "10.0.0.1", 80 + n % 3, instance_id=iid, check=(TTL, TCP, None)[n % 3],
                                   at_ms=1_000 + n))
        new = straight.view.instance(service, iid)
        assert new is not None
        leader(SetHealth(service, iid, new.revision, (CRITICAL, PASSING)[n % 2], 2_000 + n, "o"))  # changed or not
        leader(SetHealth(service, iid, new.revision, (CRITICAL, PASSING)[n % 2], 2_001 + n, "again"))  # unchanged
        if old is not None:
            leader(SetHealth(service, iid, old.revision, CRITICAL, 2_002 + n, "late"))  # NOT_FOUND
            leader(Deregister(service, instance_id=iid, revision=old.revision))  # NOT_FOUND
        if n % 4 == 3:
            leader(Deregister(service, instance_id=iid, revision=new.revision))  # expired
        if n % 20 == 19:
            counter["term"] += 1
            counter["n"] = 0
    results = []
    replay = Catalogue(max_sessions=3)
    results = [replay.apply(i, e) for i, e in enumerate(entries, start=1)]
    assert replay.digest() == straight.digest()
    half = len(entries) // 2
    first = Catalogue(max_sessions=3)
    for i, e in enumerate(entries[:half], start=1):
        first.apply(i, e)
    for restored in (Catalogue.from_bytes(first.to_bytes(), max_sessions=3), thaw(first.to_bytes(), max_sessions=3)):
        again = [restored.apply(i, e) for i, e in enumerate(entries[half:], start=half + 1)]
        assert again == results[half:]
        assert [a.touched for a in again] == [a.touched for a in results[half:]]
        assert restored.digest() == straight.digest() and restored.to_bytes() == straight.to_bytes()
    kinds = {type(a.result).__name__ + (f"/{a.result.changed}" if isinstance(a.result, HealthSet) else "")
             + (f"/{a.result.code}" if isinstance(a.result, Rejected) else "") for a in results}
    assert kinds == {"Registered", "HealthSet/True", "HealthSet/False", "Rejected/not_found", "Deregistered"}


def test_memory_per_instance_with_health_is_bounded() -> None:
    """5,000 TCP-checked instances take under 600 bytes each, their strings, views and sessions
    included (measured: about 390); the check is shared, not copied per instance."""
    commands = [Register(f"svc{n % 500}", f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 80, check=TCP,
                         at_ms=1_700_000_000_000 + n) for n in range(5_000)]
    entries = [encode_request(Request("c1", n + 1, c)) for n, c in enumerate(commands)]
    del commands
    tracemalloc.start()
    catalogue = Catalogue()
    before = tracemalloc.get_traced_memory()[0]
    for index, entry in enumerate(entries, start=1):
        catalogue.apply(index, entry)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len({id(i.check) for s in catalogue.view.services.values() for i in s}) == 1
    assert used / 5_000 < 600, used / 5_000
