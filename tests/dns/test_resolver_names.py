"""Every name form of the zone (DNS issue point 2), checked with dnspython as the independent parser."""

from __future__ import annotations

import collections
import ipaddress

import dns.flags
import dns.message
import dns.name
import pytest

from registry_dns.records import address_label, escape_txt_key

from .resolver_support import (
    addresses,
    ask,
    ask_wire,
    inst,
    many,
    rcode,
    rdatas,
    responder,
    section,
)


def test_a_lists_every_ipv4_address_of_a_service_authoritatively() -> None:
    """SERVICE.service.DOMAIN A: the service's IPv4 addresses, AA set, RA clear, RD echoed."""
    reply = ask(responder(), "web.service.registry.", "A")
    assert rcode(reply) == "NOERROR"
    assert sorted(addresses(reply)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.RA
    assert reply.flags & dns.flags.RD
    assert not reply.flags & dns.flags.TC
    assert not reply.authority and not reply.additional


def test_rd_clear_in_the_query_stays_clear_in_the_reply() -> None:
    """RD is copied from the query (RFC 1035 §4.1.1), on the cached path too."""
    r = responder()
    for _ in range(2):
        assert not ask(r, "web.service.registry.", "A", rd=False).flags & dns.flags.RD
        assert ask(r, "web.service.registry.", "A", rd=True).flags & dns.flags.RD


def test_aaaa_lists_every_ipv6_address() -> None:
    """SERVICE.service.DOMAIN AAAA: the IPv6 addresses, in normalised form."""
    reply = ask(responder(), "web.service.registry.", "AAAA")
    assert addresses(reply, "AAAA") == ["2001:db8::3"]
    assert addresses(ask(responder(), "six.service.registry.", "AAAA"), "AAAA") == ["2001:db8::6"]


@pytest.mark.parametrize("name", ["WEB.SERVICE.REGISTRY.", "wEb.SeRvIcE.rEgIsTrY.", "web.service.registry."])
def test_names_are_case_insensitive_and_the_question_case_is_echoed(name: str) -> None:
    """Any case finds the service; the reply's question and owner names keep the query's case."""
    r = responder()
    q, wire = ask_wire(r, name, "A")
    qlen = len(dns.name.from_text(name).to_wire()) + 4
    assert wire[12 : 12 + qlen] == q[12 : 12 + qlen]            # the question's exact octets
    reply = dns.message.from_wire(wire)
    assert reply.question[0].name.to_text() == name
    assert {rrset.name.to_text() for rrset in reply.answer} == {name}
    assert sorted(addresses(reply)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_a_second_case_variant_is_answered_from_the_cache_with_its_own_case() -> None:
    """The cache is keyed by the lowercased question; each reply still echoes its own query's case."""
    r = responder()
    ask(r, "web.service.registry.", "A")
    hits = r.counters["cache_hits"]
    reply = ask(r, "WeB.sErViCe.ReGiStRy.", "A")
    assert r.counters["cache_hits"] == hits + 1
    assert reply.answer[0].name.to_text() == "WeB.sErViCe.ReGiStRy."


def test_a_answers_are_shuffled_per_query() -> None:
    """Addresses come in varying orders, and every address comes first sometimes."""
    r = responder(many("big", 10))
    orders = [tuple(addresses(ask(r, "big.service.registry.", "A"))) for _ in range(400)]
    assert all(sorted(order) == sorted(orders[0]) and len(order) == 10 for order in orders)
    assert len(set(orders)) > 10
    firsts = collections.Counter(order[0] for order in orders)
    assert len(firsts) == 10, firsts
    assert min(firsts.values()) >= 10, firsts                  # about 40 each if uniform


def test_two_addresses_appear_in_both_orders() -> None:
    r = responder(many("two", 2))
    orders = {tuple(addresses(ask(r, "two.service.registry.", "A"))) for _ in range(100)}
    assert len(orders) == 2


def test_duplicate_addresses_are_merged_into_one_record() -> None:
    """An RRset is a set: two instances on one address (other ports) give one A record."""
    r = responder([inst("dup", "a", "10.0.0.1", 80), inst("dup", "b", "10.0.0.1", 81)])
    assert addresses(ask(r, "dup.service.registry.", "A")) == ["10.0.0.1"]
    assert len(rdatas(ask(r, "dup.service.registry.", "SRV"), "SRV")) == 2


@pytest.mark.parametrize(
    "name", ["web.service.registry.", "_web._tcp.service.registry.", "_WEB._TCP.Service.Registry."]
)
def test_srv_gives_port_and_a_target_whose_address_is_in_the_additional_section(name: str) -> None:
    """SRV at SERVICE.service and at the RFC 2782 _SERVICE._tcp name: one record per instance."""
    reply = ask(responder(), name, "SRV")
    srvs = rdatas(reply, "SRV")
    assert sorted(rd.port for rd in srvs) == [8080, 8081, 8082, 8083]
    assert {(rd.priority, rd.weight) for rd in srvs} == {(1, 1)}
    glue = {rrset.name: rrset for rrset in reply.additional}
    assert set(glue) == {rd.target for rd in srvs}                  # no more, no less
    by_port = {rd.port: [r.address for r in glue[rd.target]] for rd in srvs}
    assert by_port == {8080: ["10.0.0.1"], 8081: ["10.0.0.2"], 8082: ["10.0.0.3"], 8083: ["2001:db8::3"]}


def test_srv_targets_resolve_by_themselves() -> None:
    """Each SRV target, asked for A or AAAA, gives the instance's address (the address scheme)."""
    r = responder()
    for rd in rdatas(ask(r, "web.service.registry.", "SRV"), "SRV"):
        target = rd.target.to_text()
        assert target.endswith(".addr.registry.")
        a, aaaa = addresses(ask(r, target, "A")), addresses(ask(r, target, "AAAA"), "AAAA")
        assert len(a + aaaa) == 1
        found = ipaddress.ip_address((a + aaaa)[0])
        assert address_label(str(found)).decode() == target.split(".")[0]


def test_addr_names_give_nodata_for_the_other_family_and_nxdomain_when_malformed() -> None:
    r = responder()
    reply = ask(r, "0a000001.addr.registry.", "AAAA")
    assert rcode(reply) == "NOERROR" and not reply.answer and section(reply, "authority", "SOA")
    assert addresses(ask(r, "20010db8000000000000000000000006.addr.registry.", "AAAA"), "AAAA") == ["2001:db8::6"]
    for bad in ("0a00001.addr.registry.", "zz000001.addr.registry.", "x.0a000001.addr.registry."):
        assert rcode(ask(r, bad, "A")) == "NXDOMAIN", bad


def test_srv_of_a_host_name_instance_targets_the_host_itself() -> None:
    """RFC 2782: the target must not be an alias; a host-name instance's target is its host name."""
    reply = ask(responder(), "db.service.registry.", "SRV")
    assert sorted(rd.target.to_text() for rd in rdatas(reply, "SRV")) == ["db1.example.com.", "db2.example.com."]
    assert not reply.additional                                      # out of zone: nothing to add


@pytest.mark.parametrize("rdtype", ["A", "AAAA"])
def test_host_name_instances_answer_address_queries_with_one_cname(rdtype: str) -> None:
    """A/AAAA at a service of host-name instances: one CNAME (varying between them), not chased."""
    r = responder()
    seen = set()
    for _ in range(60):
        reply = ask(r, "db.service.registry.", rdtype)
        assert rcode(reply) == "NOERROR" and reply.flags & dns.flags.AA
        cnames = rdatas(reply, "CNAME")
        assert len(cnames) == 1 and len(reply.answer) == 1
        seen.add(cnames[0].target.to_text())
    assert seen == {"db1.example.com.", "db2.example.com."}


def test_a_mixed_service_answers_its_addresses_and_never_a_cname() -> None:
    """A service with IP and host-name instances: A/AAAA give the IP instances of that family
    (NODATA for a family it has none of), never a CNAME (a name with a CNAME holds no other data,
    RFC 2181 §10.1); SRV lists every instance, the host-name one with its host as target."""
    r = responder()
    a = ask(r, "mixed.service.registry.", "A")
    assert addresses(a) == ["10.9.0.1"] and not rdatas(a, "CNAME")
    aaaa = ask(r, "mixed.service.registry.", "AAAA")
    assert rcode(aaaa) == "NOERROR" and not aaaa.answer and section(aaaa, "authority", "SOA")
    srv = ask(r, "mixed.service.registry.", "SRV")
    assert sorted((rd.port, rd.target.to_text()) for rd in rdatas(srv, "SRV")) == [
        (1000, "0a090001.addr.registry."), (1001, "host.example.net.")]


def test_tag_names_filter_instances() -> None:
    """TAG.SERVICE.service.DOMAIN answers only instances with that tag (A, AAAA, SRV, TXT)."""
    r = responder()
    assert sorted(addresses(ask(r, "prod.web.service.registry.", "A"))) == ["10.0.0.1", "10.0.0.2"]
    assert addresses(ask(r, "PROD.web.service.registry.", "AAAA"), "AAAA") == ["2001:db8::3"]
    assert addresses(ask(r, "canary.web.service.registry.", "A")) == ["10.0.0.3"]
    assert sorted(rd.port for rd in rdatas(ask(r, "blue.web.service.registry.", "SRV"), "SRV")) == [8080]
    assert rcode(ask(r, "green.web.service.registry.", "A")) == "NXDOMAIN"
    assert rcode(ask(r, "prod.nosuch.service.registry.", "A")) == "NXDOMAIN"


def test_rfc2782_names_with_a_tag_filter_srv() -> None:
    """_SERVICE._TAG.service.DOMAIN SRV: only tagged instances; other types there: NODATA."""
    r = responder()
    assert sorted(rd.port for rd in rdatas(ask(r, "_web._prod.service.registry.", "SRV"), "SRV")) == [8080, 8081, 8083]
    assert sorted(rd.port for rd in rdatas(ask(r, "_db._primary.service.registry.", "SRV"), "SRV")) == [5432]
    reply = ask(r, "_web._tcp.service.registry.", "A")
    assert rcode(reply) == "NOERROR" and not reply.answer and section(reply, "authority", "SOA")
    assert rcode(ask(r, "_web._green.service.registry.", "SRV")) == "NXDOMAIN"
    assert rcode(ask(r, "_nosuch._tcp.service.registry.", "SRV")) == "NXDOMAIN"


def test_txt_carries_instance_meta_as_key_value_strings() -> None:
    """TXT on a service: one record per distinct meta pair, 'key=value'."""
    r = responder()
    texts = sorted(b"".join(rd.strings) for rd in rdatas(ask(r, "web.service.registry.", "TXT"), "TXT"))
    assert texts == [b"version=1.2", b"version=1.3", b"zone=a"]
    texts = sorted(b"".join(rd.strings) for rd in rdatas(ask(r, "canary.web.service.registry.", "TXT"), "TXT"))
    assert texts == []
    reply = ask(r, "plain.service.registry.", "TXT")
    assert rcode(reply) == "NOERROR" and not reply.answer          # no meta: NODATA


def test_txt_escapes_keys_and_splits_long_values() -> None:
    """RFC 1464 escaping of '=' in keys; values past 255 octets span several character-strings."""
    long_value = "é" * 300                                         # 600 octets of UTF-8
    r = responder([inst("m", "m1", "10.0.0.1", meta=[("a=b", "c"), ("big", long_value), ("e", "")])])
    txts = rdatas(ask(r, "m.service.registry.", "TXT", tcp=True), "TXT")
    joined = sorted(b"".join(rd.strings) for rd in txts)
    assert joined == sorted([b"a`=b=c", ("big=" + long_value).encode(), b"e="])
    assert all(len(s) <= 255 for rd in txts for s in rd.strings)
    assert escape_txt_key(" k ") == "` k` " and escape_txt_key("a`b") == "a``b"


def test_soa_at_the_apex_names_the_applied_index() -> None:
    """SOA: serial = applied index mod 2^32, minimum = negative TTL, primary = the first node."""
    reply = ask(responder(applied_index=4242, negative_ttl_s=9), "registry.", "SOA")
    (soa,) = rdatas(reply, "SOA")
    assert soa.serial == 4242 and soa.minimum == 9
    assert soa.mname.to_text() == "n1.node.registry." and soa.rname.to_text() == "hostmaster.registry."
    assert reply.answer[0].ttl == 30
    (soa,) = rdatas(ask(responder(applied_index=2**32 + 5), "registry.", "SOA"), "SOA")
    assert soa.serial == 5


def test_ns_at_the_apex_lists_every_node_with_glue() -> None:
    """NS: every cluster node as NAME.node.DOMAIN; its addresses (v4 and v6) in the additional section."""
    # NB: names compressed against the question take its case ("Registry."); DNS names compare
    # case-insensitively, so that is the same name.
    reply = ask(responder(), "Registry.", "NS")
    assert sorted(rd.target.to_text().lower() for rd in rdatas(reply, "NS")) == [
        "n1.node.registry.", "n2.node.registry.", "n3.node.registry."]
    glue = sorted((rrset.name.to_text().lower(), rd.address) for rrset in reply.additional for rd in rrset)
    assert glue == [("n1.node.registry.", "192.0.2.1"), ("n2.node.registry.", "192.0.2.2"),
                    ("n2.node.registry.", "2001:db8::2"), ("n3.node.registry.", "192.0.2.3")]


def test_node_names_resolve_to_the_node_addresses() -> None:
    r = responder()
    assert addresses(ask(r, "n2.node.registry.", "A")) == ["192.0.2.2"]
    assert addresses(ask(r, "N2.Node.Registry.", "AAAA"), "AAAA") == ["2001:db8::2"]
    assert rcode(ask(r, "n9.node.registry.", "A")) == "NXDOMAIN"


def test_without_nameservers_ns_is_nodata_and_the_soa_names_the_apex() -> None:
    r = responder(nameservers=())
    reply = ask(r, "registry.", "NS")
    assert rcode(reply) == "NOERROR" and not reply.answer
    (soa,) = rdatas(ask(r, "registry.", "SOA"), "SOA")
    assert soa.mname.to_text() == "registry."
    assert rcode(ask(r, "node.registry.", "A")) == "NXDOMAIN"


def test_any_gets_the_rfc8482_hinfo_at_existing_names_only() -> None:
    r = responder()
    for name in ("web.service.registry.", "registry.", "_web._tcp.service.registry."):
        (hinfo,) = rdatas(ask(r, name, "ANY"), "HINFO")
        assert hinfo.cpu == b"RFC8482"
    assert rcode(ask(r, "nosuch.service.registry.", "ANY")) == "NXDOMAIN"


def test_another_domain_is_served_when_configured() -> None:
    r = responder(domain="Discovery.Example.")
    assert sorted(addresses(ask(r, "web.service.discovery.example.", "A"))) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert rcode(ask(r, "web.service.registry.", "A")) == "REFUSED"
    srv = rdatas(ask(r, "web.service.discovery.example.", "SRV"), "SRV")
    assert all(rd.target.to_text().endswith(".addr.discovery.example.") for rd in srv)


def test_every_valid_instance_gets_a_valid_target_name() -> None:
    """Ids are irrelevant to target names (addresses are), so odd ids and long names still work."""
    odd = [inst("s", "A.b_c-" + "x" * 120, "10.0.0.1"), inst("s", "a.b_c-" + "x" * 120, "2001:db8::ffff"),
           inst("s", "h", "a" * 63 + "." + "b" * 63 + ".example.com")]
    reply = ask(responder(odd), "s.service.registry.", "SRV", tcp=True)
    targets = sorted(rd.target.to_text() for rd in rdatas(reply, "SRV"))
    assert targets == sorted(["0a000001.addr.registry.", "20010db800000000000000000000ffff.addr.registry.",
                              "a" * 63 + "." + "b" * 63 + ".example.com."])


def test_a_cname_query_gets_the_cname_only_when_every_instance_has_a_host_name() -> None:
    r = responder()
    cnames = rdatas(ask(r, "db.service.registry.", "CNAME"), "CNAME")
    assert len(cnames) == 1 and cnames[0].target.to_text() in ("db1.example.com.", "db2.example.com.")
    reply = ask(r, "mixed.service.registry.", "CNAME")
    assert rcode(reply) == "NOERROR" and not reply.answer
