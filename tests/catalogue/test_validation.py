"""Validation: each refused value raises ValidationError naming the field, the problem and what is accepted;
each accepted value comes back in canonical form."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from registry.catalogue import Instance, ValidationError
from registry.catalogue.validation import (
    validate_address,
    validate_client_id,
    validate_instance,
    validate_instance_id,
    validate_meta,
    validate_port,
    validate_seq,
    validate_service,
    validate_tags,
)

LONG_HOST = ".".join(["a" * 63] * 4)  # 255 octets

BAD = [
    # (validator, value, field, fragments the message must contain)
    (validate_service, "", "service", ["empty", "1-63"]),
    (validate_service, "a" * 64, "service", ["64 octets", "at most 63"]),
    (validate_service, "-web", "service", ["hyphen", "letters, digits or hyphens"]),
    (validate_service, "web-", "service", ["hyphen"]),
    (validate_service, "web_1", "service", ["'_'", "1-63"]),
    (validate_service, "web.api", "service", ["'.'"]),
    (validate_service, "wéb", "service", ["non-ASCII", "1-63"]),
    (validate_service, "\u212aey", "service", ["non-ASCII"]),  # KELVIN SIGN lowercases to ASCII "k"
    (validate_service, 5, "service", ["must be a string", "int"]),
    (validate_service, None, "service", ["must be a string", "nil"]),
    (validate_tags, ["ok", "bad_tag"], "tags", ["invalid tag", "'bad_tag'", "1-63"]),
    (validate_tags, ["x" * 64], "tags", ["at most 63"]),
    (validate_tags, "blue", "tags", ["list of strings"]),
    (validate_tags, {"blue": "x"}, "tags", ["list of strings"]),
    (validate_tags, None, "tags", ["list of strings", "nil"]),
    (validate_tags, [f"t{i}" for i in range(65)], "tags", ["65 tags", "at most 64"]),
    (validate_tags, [1], "tags", ["tag must be a string"]),
    (validate_address, "", "address", ["empty", "IPv4"]),
    (validate_address, "[::1]", "address", ["without brackets"]),
    (validate_address, "fe80::1%eth0", "address", ["zone id", "%eth0"]),
    (validate_address, "0.0.0.0", "address", ["unspecified"]),
    (validate_address, "::", "address", ["unspecified"]),
    (validate_address, "10.0.0.256", "address", ["not a valid IPv4 address", "all-numeric"]),
    (validate_address, "010.0.0.1", "address", ["no leading zeros"]),
    (validate_address, "2001:db8::g", "address", ["not an IPv6 address"]),
    (validate_address, "a..b", "address", ["label ''"]),
    (validate_address, "-a.example.com", "address", ["label '-a'", "not starting or ending with a hyphen"]),
    (validate_address, "x" * 64 + ".com", "address", ["64 octets", "at most 63"]),
    (validate_address, LONG_HOST, "address", ["at most 253"]),
    (validate_address, "a b.com", "address", ["label 'a b'"]),
    (validate_address, "münchen.de", "address", ["non-ASCII", "xn--"]),
    (validate_address, 167772165, "address", ["must be a string", "int"]),
    (validate_port, 0, "port", ["invalid port 0", "1 to 65535"]),
    (validate_port, 65536, "port", ["1 to 65535"]),
    (validate_port, -1, "port", ["1 to 65535"]),
    (validate_port, True, "port", ["bool", "1 to 65535"]),
    (validate_port, "80", "port", ["str", "1 to 65535"]),
    (validate_port, 80.0, "port", ["float"]),
    (validate_port, None, "port", ["nil"]),
    (validate_instance_id, "", "instance_id", ["empty", "1-128"]),
    (validate_instance_id, "a" * 129, "instance_id", ["129 characters", "at most 128"]),
    (validate_instance_id, "web:8080", "instance_id", ["':'", "HOST:PORT"]),
    (validate_instance_id, "-web", "instance_id", ["starts with '-'", "starting with a letter or digit"]),
    (validate_instance_id, ".web", "instance_id", ["starts with '.'"]),
    (validate_instance_id, "a b", "instance_id", ["contains ' '"]),
    (validate_instance_id, "wéb", "instance_id", ["contains 'é'"]),
    (validate_instance_id, 7, "instance_id", ["must be a string"]),
    (validate_meta, {"k": 1}, "meta", ["meta value of 'k' must be a string"]),
    (validate_meta, {1: "v"}, "meta", ["meta key must be a string"]),
    (validate_meta, {"": "v"}, "meta", ["0 characters", "1-128"]),
    (validate_meta, {"k" * 129: "v"}, "meta", ["129 characters", "1-128"]),
    (validate_meta, {"k": "v" * 513}, "meta", ["513 characters", "at most 512"]),
    (validate_meta, {f"k{i}": "" for i in range(65)}, "meta", ["65 keys", "at most 64"]),
    (validate_meta, "k=v", "meta", ["map of strings to strings", "str"]),
    (validate_meta, [("a", "1"), ("a", "2")], "meta", ["'a' is given twice"]),
    (validate_meta, [("a",)], "meta", ["not a (key, value) pair"]),
    (validate_meta, {"k": "\ud800"}, "meta", ["lone surrogate"]),
    (validate_meta, None, "meta", ["nil"]),
    (validate_client_id, "", "client", ["0 characters", "1-64"]),
    (validate_client_id, "c" * 65, "client", ["65 characters", "1-64"]),
    (validate_client_id, 5, "client", ["must be a string"]),
    (validate_client_id, "\udc80", "client", ["lone surrogate"]),
    (validate_seq, 0, "seq", ["invalid seq 0", "1 to 2**63-1"]),
    (validate_seq, -3, "seq", ["1 to 2**63-1"]),
    (validate_seq, 2**63, "seq", ["1 to 2**63-1"]),
    (validate_seq, True, "seq", ["bool"]),
    (validate_seq, "1", "seq", ["str"]),
]


@pytest.mark.parametrize(
    "validate, value, field, fragments", BAD, ids=[f"{v.__name__}-{i}" for i, (v, *_) in enumerate(BAD)]
)
def test_refused_values_say_what_is_wrong_and_what_is_accepted(
    validate: Callable[[object], object], value: object, field: str, fragments: list[str]
) -> None:
    """Every refused value raises ValidationError (a ValueError) with the field and a helpful message."""
    with pytest.raises(ValidationError) as caught:
        validate(value)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_messages_about_huge_values_stay_short() -> None:
    """A megabyte of junk is quoted in a few dozen characters, not echoed whole."""
    with pytest.raises(ValidationError) as caught:
        validate_instance_id("!" * 1_000_000)
    assert len(str(caught.value)) < 300


GOOD = [
    (validate_service, "Web-API", "web-api"),
    (validate_service, "a" * 63, "a" * 63),
    (validate_service, "1", "1"),
    (validate_service, "X9", "x9"),
    (validate_tags, ["B", "a", "b", "A"], ("a", "b")),
    (validate_tags, (), ()),
    (validate_tags, iter(["v1"]), ("v1",)),
    (validate_address, "10.0.0.5", "10.0.0.5"),
    (validate_address, "2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    (validate_address, "::1", "::1"),
    (validate_address, "::ffff:10.0.0.1", str(ipaddress.IPv6Address("::ffff:10.0.0.1"))),
    (validate_address, "DB.Example.COM.", "db.example.com"),
    (validate_address, "localhost", "localhost"),
    (validate_address, "host-1.10.example", "host-1.10.example"),
    (validate_address, "1e100.net", "1e100.net"),
    (validate_address, ".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
    (validate_port, 1, 1),
    (validate_port, 65535, 65535),
    (validate_instance_id, "Web-1.a_b", "Web-1.a_b"),
    (validate_instance_id, "a" * 128, "a" * 128),
    (validate_meta, {"b": "", "a": "x"}, (("a", "x"), ("b", ""))),
    (validate_meta, [["z", "1"], ("y", "2")], (("y", "2"), ("z", "1"))),
    (validate_meta, {"k" * 128: "v" * 512}, (("k" * 128, "v" * 512),)),
    (validate_meta, {"ключ": "значение"}, (("ключ", "значение"),)),
    (validate_client_id, "c" * 64, "c" * 64),
    (validate_seq, 2**63 - 1, 2**63 - 1),
]


@pytest.mark.parametrize(
    "validate, value, want", GOOD, ids=[f"{v.__name__}-{i}" for i, (v, *_) in enumerate(GOOD)]
)
def test_accepted_values_come_back_canonical(validate: Callable[[object], object], value: object, want: object) -> None:
    """Names and tags lowercase, addresses normalised, tags and meta sorted."""
    assert validate(value) == want


def test_validate_instance_normalises_every_field() -> None:
    """validate_instance returns the canonical form of a hand-made Instance, or refuses it."""
    raw = Instance("i1", "WEB", "2001:DB8::1", 80, tags=("B", "a"), meta=(("z", "1"), ("a", "2")))
    assert validate_instance(raw) == Instance(
        id="i1", service="web", address="2001:db8::1", port=80, tags=("a", "b"), meta=(("a", "2"), ("z", "1"))
    )
    with pytest.raises(ValidationError, match="1 to 65535"):
        validate_instance(Instance(id="i1", service="web", address="10.0.0.1", port=0))


# -- memos: the same answers, shared objects ------------------------------------------------------


@pytest.mark.parametrize("text", ["10.0.0.5", "0.0.0.1", "255.255.255.255", "192.168.1.10", "1.2.3.4",
                                  "01.2.3.4", "1.2.3.256", "256.1.1.1", "1.2.3", "1.2.3.4.5", "0.0.0.0",
                                  "1.02.3.4", "10.0.0.05", "1.2.3.4 ", "web-1.example"])
def test_ipv4_fast_path_agrees_with_ipaddress(text: str) -> None:
    """The canonical dotted-quad shortcut gives exactly what the ipaddress route gives, or refuses
    exactly what it refuses: validation is part of the replicated state machine."""
    from registry.catalogue.validation import _hostname

    def outcome(f: Callable[[str], object]) -> object:
        try:
            return f(text)
        except ValidationError:
            return ValidationError

    try:
        want = str(ipaddress.IPv4Address(text))
        reference: object = ValidationError if want == "0.0.0.0" else want
    except ValueError:
        reference = outcome(_hostname)  # not an IPv4 address: the host-name rules decide
    assert outcome(validate_address) == reference


def test_repeated_values_are_validated_once_and_shared() -> None:
    """Memoised validators return equal values for equal input, and the same objects, so that
    instances registered with the same tags, service and meta pairs share them in memory."""
    a = validate_tags(["Primary", "zone-a"])
    b = validate_tags(["Primary", "zone-a"])
    assert a == ("primary", "zone-a") and a is b
    assert validate_service("Web") == "web" and validate_service("Web") is validate_service("WEB".title())
    m1 = validate_meta({"version": "2.1", "commit": "abc"})
    m2 = validate_meta({"version": "2.1", "commit": "def"})
    assert m1 == (("commit", "abc"), ("version", "2.1")) and m1[1] is m2[1]
    with pytest.raises(ValidationError):
        validate_tags(["ok", "-bad"])
    with pytest.raises(ValidationError):  # a refused value is refused every time, memo or not
        validate_tags(["ok", "-bad"])


def test_memos_stay_bounded() -> None:
    from registry.catalogue import validation

    for n in range(validation._MEMO_MAX + 10):
        validate_service(f"svc-{n}")
    assert len(validation._services_seen) <= validation._MEMO_MAX
