"""The view readers (DNS, client reads) use: immutable, case-insensitive, tag-filtered, versioned,
cheap to publish, and safe to read from another thread."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from registry.catalogue import (
    AddressKind,
    HealthStatus,
    SetHealth,
    Catalogue,
    CatalogueView,
    Command,
    Deregister,
    Instance,
    Register,
    Request,
    ValidationError,
    encode_request,
)


def write(catalogue: Catalogue, command: Command, client: str = "c1") -> None:
    seq = (catalogue.last_seq(client) or 0) + 1
    catalogue.apply(catalogue.applied_index + 1, encode_request(Request(client, seq, command)))


def tagged_catalogue() -> Catalogue:
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.1", 80, instance_id="a", tags=["Blue", "v1"]))
    write(catalogue, Register("web", "10.0.0.2", 80, instance_id="b", tags=["green", "v1"]))
    write(catalogue, Register("web", "10.0.0.3", 80, instance_id="c", tags=["blue"]))
    write(catalogue, Register("db", "10.0.0.4", 5432, instance_id="d", tags=["primary"]))
    return catalogue


def ids(instances: tuple[Instance, ...]) -> list[str]:
    return [i.id for i in instances]


# Immutability.


def test_a_view_cannot_be_mutated() -> None:
    """Fields are frozen, services is read-only, instances are frozen tuples."""
    view = tagged_catalogue().view
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.applied_index = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.services = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.services["web"] = ()  # type: ignore[index]
    with pytest.raises(TypeError):
        del view.services["web"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        view.services._len = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        view.services.clear()  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        view.services["web"][0] = None  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.services["web"][0].port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.service_names()[0] = "x"  # type: ignore[index]


def test_a_view_never_changes_after_later_applies() -> None:
    """A reader holding a view keeps a consistent snapshot while the catalogue moves on."""
    catalogue = tagged_catalogue()
    view = catalogue.view
    before = (view.applied_index, view.version, dict(view.services), view.instances("web", "blue"))
    write(catalogue, Register("web", "10.0.0.9", 80, instance_id="a", tags=["blue"]))
    write(catalogue, Deregister("db", instance_id="d"))
    write(catalogue, Register("new", "10.0.0.8", 80))
    assert (view.applied_index, view.version, dict(view.services), view.instances("web", "blue")) == before
    assert catalogue.view is not view


# Lookups.


def test_lookups_are_case_insensitive_and_names_are_stored_lowercase() -> None:
    catalogue = Catalogue()
    write(catalogue, Register("WEB", "10.0.0.1", 80, instance_id="a", tags=["BLUE"]))
    write(catalogue, Register("web", "10.0.0.2", 80, instance_id="b", tags=["blue"]))
    view = catalogue.view
    assert view.service_names() == ("web",)
    assert ids(view.instances("Web")) == ids(view.instances("web")) == ["a", "b"]
    assert ids(view.instances("WEB", tag="Blue")) == ["a", "b"]
    assert view.instances("web")[0].tags == ("blue",)
    assert "wEb" in view and "web" in view.services and "WEB" not in view.services  # the mapping is exact
    assert view.instances("\u212aeb") == ()  # KELVIN SIGN is not an ASCII K


def test_tag_filtering() -> None:
    """instances(service, tag) keeps only instances with that tag, still sorted by id."""
    view = tagged_catalogue().view
    assert ids(view.instances("web", "blue")) == ["a", "c"]
    assert ids(view.instances("web", "v1")) == ["a", "b"]
    assert ids(view.instances("web", "green")) == ["b"]
    assert view.instances("web", "primary") == ()
    assert view.instances("web", "nope") == ()
    assert view.instances("ghost", "blue") == ()
    assert view.instances("web", "bl\u00fce") == ()
    assert ids(view.instances("web")) == ["a", "b", "c"]


def test_tag_index_follows_updates() -> None:
    """A re-tagged instance moves between tag results in the next view."""
    catalogue = tagged_catalogue()
    assert ids(catalogue.view.instances("web", "blue")) == ["a", "c"]
    write(catalogue, Register("web", "10.0.0.1", 80, instance_id="a", tags=["green"]))
    assert ids(catalogue.view.instances("web", "blue")) == ["c"]
    assert ids(catalogue.view.instances("web", "green")) == ["a", "b"]


def test_service_names_membership_and_instance_lookup() -> None:
    view = tagged_catalogue().view
    assert view.service_names() == ("db", "web") == tuple(view.services)
    assert len(view.services) == 2
    assert view.services.get("ghost") is None and "ghost" not in view
    assert view.instance("WEB", "b") == Instance("b", "web", "10.0.0.2", 80, ("green", "v1"), ())  # legacy: rev 0
    assert view.instance("web", "B") is None  # ids are case-sensitive
    assert view.instance("ghost", "b") is None
    assert view.instances("ghost") == ()


def test_ipv6_and_host_name_addresses() -> None:
    """Addresses are stored normalised, and address_kind tells DNS which record type to answer with."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.1", 80, instance_id="v4"))
    write(catalogue, Register("web", "2001:DB8:0:0::1", 80, instance_id="v6"))
    write(catalogue, Register("web", "::ffff:10.0.0.1", 80, instance_id="mapped"))
    write(catalogue, Register("web", "Db1.Example.COM.", 80, instance_id="host"))
    write(catalogue, Register("web", "localhost", 80, instance_id="short"))
    by_id = {i.id: i for i in catalogue.view.instances("web")}
    assert by_id["v6"].address == "2001:db8::1"
    assert by_id["host"].address == "db1.example.com"
    kinds = {i.id: i.address_kind for i in by_id.values()}
    assert kinds == {
        "v4": AddressKind.IPV4, "v6": AddressKind.IPV6, "mapped": AddressKind.IPV6,
        "host": AddressKind.HOST, "short": AddressKind.HOST,
    }  # fmt: skip


# Versions and publishing.


def test_version_changes_exactly_when_services_change() -> None:
    """version is the index of the last entry that changed the services; no-ops keep it. An
    identical re-register is not a no-op: it is a new incarnation (a new revision)."""
    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.1", 80, at_ms=1))
    assert catalogue.view.version == 1
    write(catalogue, Register("web", "10.0.0.1", 80, at_ms=1))  # identical re-register: revision 2
    assert catalogue.view.version == 2 and catalogue.view.instances("web")[0].revision == 2
    catalogue.skip(3)
    write(catalogue, Deregister("web", instance_id="nope"))  # not_found
    catalogue.apply(5, b"junk")  # invalid
    write(catalogue, SetHealth("web", "web-10.0.0.1-80", 2, HealthStatus.PASSING, 9), client="c1")  # already passing
    write(catalogue, SetHealth("web", "web-10.0.0.1-80", 1, HealthStatus.CRITICAL, 9), client="c1")  # old revision
    assert (catalogue.view.applied_index, catalogue.view.version) == (7, 2)
    write(catalogue, Register("web", "10.0.0.1", 80, tags=["x"]))
    assert catalogue.view.version == 8
    write(catalogue, Deregister("web", address="10.0.0.1", port=80))
    assert catalogue.view.version == 9


def test_applying_to_one_service_shares_every_other_service() -> None:
    """Copy-on-write per service: other services' tuples (and the tag index) are the same objects."""
    catalogue = Catalogue()
    for n in range(300):
        write(catalogue, Register(f"svc{n}", "10.0.0.1", 80))
    before = catalogue.view
    write(catalogue, Register("svc7", "10.0.0.2", 80))
    after = catalogue.view
    assert len(after.services["svc7"]) == 2
    shared = sum(after.services[name] is before.services[name] for name in before.services)
    assert shared == 299
    changed_buckets = sum(a is not b for a, b in zip(after.services._buckets, before.services._buckets))
    assert changed_buckets == 1


def test_build_makes_a_validated_view_for_tests_and_tools() -> None:
    view = CatalogueView.build(
        [Instance("b", "WEB", "10.0.0.2", 80, ("X",)), Instance("a", "web", "2001:DB8::1", 80)], applied_index=9
    )
    assert (view.applied_index, view.version, ids(view.instances("web"))) == (9, 9, ["a", "b"])
    assert view.instances("web", "x")[0].address == "10.0.0.2"
    with pytest.raises(ValidationError, match="two instances with id 'a'"):
        CatalogueView.build([Instance("a", "web", "10.0.0.1", 80), Instance("a", "WEB", "10.0.0.2", 80)])
    with pytest.raises(ValidationError, match="63"):
        CatalogueView.build([Instance("a", "w" * 64, "10.0.0.1", 80)])


def test_empty_view() -> None:
    view = CatalogueView.empty()
    assert (view.applied_index, view.version, view.service_names(), view.instances("web")) == (0, 0, (), ())
    assert repr(view) == "CatalogueView(applied_index=0, version=0, services=0)"


def test_views_can_be_read_from_another_thread_while_entries_are_applied() -> None:
    """A reader thread always sees a whole view: sorted instances, indexes that never go backwards."""
    catalogue = Catalogue()
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        last = 0
        while not stop.is_set():
            view = catalogue.view
            if view.applied_index < last or view.version > view.applied_index:
                problems.append(f"index went from {last} to {view.applied_index}")
            last = view.applied_index
            for name in view.service_names():
                found = ids(view.instances(name))
                if found != sorted(found) or not found:
                    problems.append(f"{name}: {found}")
                view.instances(name, "even")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(3000):
            service = f"s{n % 17}"
            if n % 5 == 4:
                write(catalogue, Deregister(service, address="10.0.0.1", port=1 + n % 7))
            else:
                write(catalogue, Register(service, "10.0.0.1", 1 + n % 7, tags=["even"] if n % 2 else []))
    finally:
        stop.set()
        reader.join(timeout=10)
    assert not reader.is_alive()
    assert problems == []
