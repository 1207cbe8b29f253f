"""The answer cache follows the catalogue: update() is O(1), answers are re-checked lazily, a write
to one service leaves the others' answers cached, and the SOA serial always names the applied index."""

from __future__ import annotations

import threading

import dns.flags
import pytest

from registry.catalogue import Catalogue, CatalogueView, Command, Deregister, Register, Request, encode_request
from registry_dns import resolver as resolver_module

from .resolver_support import addresses, ask, inst, rcode, rdatas, responder, soa_of, view


def write(catalogue: Catalogue, command: Command) -> None:
    seq = (catalogue.last_seq("c") or 0) + 1
    catalogue.apply(catalogue.applied_index + 1, encode_request(Request("c", seq, command)))


def live() -> tuple[Catalogue, object]:
    from registry_dns.resolver import Responder

    catalogue = Catalogue()
    write(catalogue, Register("web", "10.0.0.1", 80, instance_id="w1", tags=["prod"]))
    write(catalogue, Register("db", "10.0.0.9", 5432, instance_id="d1"))
    r = Responder(nameservers=[("n1", "192.0.2.1")])
    r.update(catalogue.view)
    return catalogue, r


def test_update_shows_new_and_removed_instances() -> None:
    catalogue, r = live()
    assert addresses(ask(r, "web.service.registry.")) == ["10.0.0.1"]
    write(catalogue, Register("web", "10.0.0.2", 80, instance_id="w2"))
    r.update(catalogue.view)
    assert sorted(addresses(ask(r, "web.service.registry."))) == ["10.0.0.1", "10.0.0.2"]
    assert addresses(ask(r, "prod.web.service.registry.")) == ["10.0.0.1"]
    write(catalogue, Deregister("web", instance_id="w1"))
    r.update(catalogue.view)
    assert addresses(ask(r, "web.service.registry.")) == ["10.0.0.2"]
    assert rcode(ask(r, "prod.web.service.registry.")) == "NXDOMAIN"
    write(catalogue, Deregister("web", instance_id="w2"))
    r.update(catalogue.view)
    for rdtype in ("A", "SRV", "TXT"):
        assert rcode(ask(r, "web.service.registry.", rdtype)) == "NXDOMAIN"


def test_a_cached_nxdomain_turns_into_an_answer_after_registration() -> None:
    catalogue, r = live()
    assert rcode(ask(r, "api.service.registry.")) == "NXDOMAIN"
    assert rcode(ask(r, "api.service.registry.")) == "NXDOMAIN"
    write(catalogue, Register("api", "10.0.0.7", 80))
    r.update(catalogue.view)
    assert addresses(ask(r, "api.service.registry.")) == ["10.0.0.7"]


def test_a_write_to_another_service_keeps_this_answer_cached() -> None:
    """Revalidation: the web answer depends on web's instances only (shared between views)."""
    catalogue, r = live()
    ask(r, "web.service.registry.", "SRV")
    misses = r.counters["cache_misses"]
    for port in range(1000, 1010):
        write(catalogue, Register("db", "10.0.0.9", port, instance_id=f"d{port}"))
        r.update(catalogue.view)
        assert len(rdatas(ask(r, "web.service.registry.", "SRV"), "SRV")) == 1
    assert r.counters["cache_misses"] == misses
    assert len(rdatas(ask(r, "db.service.registry.", "SRV", tcp=True), "SRV")) == 11


def test_the_soa_serial_follows_the_applied_index_even_without_a_content_change() -> None:
    """Negative answers and the apex SOA carry the applied index, patched into cached answers."""
    base = view([inst("web", "w1", "10.0.0.1")], applied_index=10)
    r = responder([inst("web", "w1", "10.0.0.1")], applied_index=10)
    r.update(base)
    for index in (10, 11, 12, 2**32 + 13):
        # Same content (the same services object, same version): only the applied index moves,
        # as after a leader's no-op entry or a refused write.
        r.update(CatalogueView(applied_index=index, version=10, services=base.services))
        for _ in range(2):
            assert soa_of(ask(r, "nosuch.service.registry."))[1].serial == index % 2**32
            assert soa_of(ask(r, "web.service.registry.", "MX"))[1].serial == index % 2**32
            (soa,) = rdatas(ask(r, "registry.", "SOA"), "SOA")
            assert soa.serial == index % 2**32


def test_update_with_the_same_view_is_a_no_op() -> None:
    catalogue, r = live()
    ask(r, "web.service.registry.")
    r.update(catalogue.view)
    ask(r, "web.service.registry.")
    assert r.counters["cache_hits"] == 1


def test_an_emptied_cache_refills_and_answers_correctly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_module, "CACHE_MAX_ENTRIES", 3)
    r = responder()
    for _ in range(3):
        for name in ("web", "db", "six", "mixed", "plain", "nosuch"):
            reply = ask(r, f"{name}.service.registry.", "SRV")
            assert rcode(reply) == ("NXDOMAIN" if name == "nosuch" else "NOERROR")
    assert len(r._cache) <= 3


def test_update_from_another_thread_never_mixes_views() -> None:
    """update() may run on another thread: every reply matches one of the views, whole."""
    one = view([inst("web", "w1", "10.0.0.1")], applied_index=1)
    two = view([inst("web", "w2", "10.0.0.2"), inst("web", "w3", "10.0.0.3")], applied_index=2)
    r = responder([], applied_index=0)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            r.update(one)
            r.update(two)

    thread = threading.Thread(target=flip)
    thread.start()
    try:
        for _ in range(3000):
            reply = ask(r, "web.service.registry.")
            assert sorted(addresses(reply)) in (["10.0.0.1"], ["10.0.0.2", "10.0.0.3"])
            assert not reply.flags & dns.flags.TC
    finally:
        stop.set()
        thread.join()
    assert r.counters["internal_errors"] == 0
