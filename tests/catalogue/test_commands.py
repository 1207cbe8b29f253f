"""Commands: construction validates and normalises; the log encoding round-trips, is deterministic,
and decoding anything else raises CommandError (and nothing else)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.catalogue import (
    CommandError,
    Deregister,
    Register,
    Request,
    ValidationError,
    decode_request,
    default_instance_id,
    encode_request,
)
from registry.catalogue.validation import validate_instance_id

from .strategies import garbage, msgpack_values, requests


def test_register_normalises_every_field() -> None:
    """Service lowercase, address normalised, tags sorted/unique/lowercase, meta sorted pairs, id derived."""
    cmd = Register("WEB", "2001:DB8::0:1", 8080, tags=["V1", "blue", "v1"], meta={"zone": "eu", "a": ""})
    meta = (("a", ""), ("zone", "eu"))
    assert cmd == Register("web", "2001:db8::1", 8080, "web-2001_db8__1-8080", ("blue", "v1"), meta)
    assert cmd.instance_id == "web-2001_db8__1-8080"


def test_register_keeps_an_explicit_id_case_sensitive() -> None:
    """Instance ids are case-sensitive; only names and tags are folded."""
    assert Register("web", "10.0.0.5", 80, instance_id="Web-A").instance_id == "Web-A"


def test_register_refuses_invalid_fields() -> None:
    """A bad field raises ValidationError naming it."""
    with pytest.raises(ValidationError, match="63") as caught:
        Register("w" * 64, "10.0.0.5", 80)
    assert caught.value.field == "service"
    with pytest.raises(ValidationError, match="1 to 65535"):
        Register("web", "10.0.0.5", True)
    with pytest.raises(ValidationError, match="':'"):
        Register("web", "10.0.0.5", 80, instance_id="web:80")


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"instance_id": "a", "address": "10.0.0.5", "port": 80}, {"address": "10.0.0.5"}, {"port": 80},
     {"instance_id": "a", "port": 80}],
)  # fmt: skip
def test_deregister_needs_either_an_id_or_an_address_and_port(kwargs: dict[str, object]) -> None:
    """Deregister takes exactly one of: instance_id, or address with port."""
    with pytest.raises(ValidationError, match="either instance_id, or address and port"):
        Deregister("web", **kwargs)  # type: ignore[arg-type]


def test_deregister_normalises() -> None:
    assert Deregister("WEB", address="2001:DB8::1", port=80) == Deregister("web", address="2001:db8::1", port=80)
    assert Deregister("Web", instance_id="A").instance_id == "A"


def test_request_validates_client_seq_and_command() -> None:
    with pytest.raises(ValidationError, match="1-64"):
        Request("", 1, Register("web", "10.0.0.5", 80))
    with pytest.raises(ValidationError, match="2\\*\\*63-1"):
        Request("c", 0, Register("web", "10.0.0.5", 80))
    with pytest.raises(ValidationError, match="a Register, a Deregister, a SetHealth or a Restore"):
        Request("c", 1, "register web")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "service, address, port, want",
    [
        ("web", "10.0.0.5", 8080, "web-10.0.0.5-8080"),
        ("WEB", "10.0.0.5", 8080, "web-10.0.0.5-8080"),
        ("web", "2001:db8::1", 443, "web-2001_db8__1-443"),
        ("web", "::1", 443, "web-__1-443"),
        ("db", "DB.Example.com.", 5432, "db-db.example.com-5432"),
    ],
)
def test_default_instance_id(service: str, address: str, port: int, want: str) -> None:
    """SERVICE-ADDRESS-PORT from canonical values; IPv6 colons become underscores."""
    assert default_instance_id(service, address, port) == want
    assert validate_instance_id(want) == want


def test_default_instance_id_of_a_long_host_name_is_cut_and_hashed() -> None:
    """A too-long default id is cut to 128 characters and ends in a hash, so distinct hosts stay distinct."""
    host = ".".join(["a" * 63, "b" * 63, "c" * 63])
    one = default_instance_id("s" * 63, host + ".x1", 65535)
    two = default_instance_id("s" * 63, host + ".x2", 65535)
    assert len(one) == len(two) == 128
    assert one != two
    assert validate_instance_id(one) == one
    assert one == default_instance_id("S" * 63, host.upper() + ".X1", 65535)


def test_default_ids_of_different_addresses_differ() -> None:
    """Different canonical addresses never give the same default id (no '_' in IPv4 or host names)."""
    addresses = ["10.0.0.1", "1.0.0.10", "2001:db8::1", "2001-db8--1", "2001.db8.1.x", "a.b", "a-b", "::a", "0.0.0.1"]
    ids = {default_instance_id("web", a, 80) for a in addresses}
    assert len(ids) == len(addresses)


def test_default_instance_id_refuses_invalid_input() -> None:
    with pytest.raises(ValidationError, match="1 to 65535"):
        default_instance_id("web", "10.0.0.5", 0)


@given(requests)
def test_encoding_round_trips(request: Request) -> None:
    """decode(encode(r)) == r, and equal requests encode to equal bytes."""
    data = encode_request(request)
    assert decode_request(data) == request
    assert encode_request(decode_request(data)) == data


def test_encoding_is_a_versioned_msgpack_map() -> None:
    """The documented layout (commands module docstring), with strings as str, never bin."""
    data = encode_request(Request("c1", 7, Register("web", "10.0.0.5", 80, tags=["b"], meta={"k": "v"})))
    assert msgpack.unpackb(data, raw=False) == {
        "v": 1, "client": "c1", "seq": 7, "op": "register", "service": "web", "address": "10.0.0.5",
        "port": 80, "id": "web-10.0.0.5-80", "tags": ["b"], "meta": {"k": "v"},
    }  # fmt: skip
    data = encode_request(Request("c1", 8, Deregister("web", address="10.0.0.5", port=80)))
    assert msgpack.unpackb(data, raw=False) == {
        "v": 1, "client": "c1", "seq": 8, "op": "deregister", "service": "web", "address": "10.0.0.5", "port": 80,
    }  # fmt: skip


def test_a_register_without_an_id_decodes_with_the_derived_id() -> None:
    body = {"v": 1, "client": "c", "seq": 1, "op": "register", "service": "Web", "address": "10.0.0.5", "port": 80}
    assert decode_request(msgpack.packb(body)).command.instance_id == "web-10.0.0.5-80"
    body["id"] = None
    assert decode_request(msgpack.packb(body)).command.instance_id == "web-10.0.0.5-80"


def _pack(body: object) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


_ENVELOPE = {"v": 1, "client": "c", "seq": 1}
_OK = {**_ENVELOPE, "op": "register", "service": "web", "address": "10.0.0.5", "port": 80}


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "not a msgpack request"),
        (b"\xc1", "not a msgpack request"),
        (_pack(_OK) + b"\x00", "extra data"),
        (_pack([1, "c", 1]), "a request is a msgpack map, got list"),
        (_pack({**_OK, "v": 2}), "unsupported command encoding version 2"),
        (_pack({**_OK, "v": True}), "unsupported command encoding version True"),
        (_pack({k: v for k, v in _OK.items() if k != "seq"}), "lacks ['seq']"),
        (_pack({k: v for k, v in _OK.items() if k != "port"}), "register lacks ['port']"),
        (_pack({**_OK, "op": "purge"}), "unknown op 'purge'"),
        (_pack({**_OK, "weight": 3}), "unknown keys ['weight']"),
        (_pack({**_OK, "port": "80"}), "port must be an integer"),
        (_pack({**_OK, "port": True}), "port must be an integer"),
        (_pack({**_OK, "service": b"web"}), "service name must be a string"),
        (_pack({**_OK, "tags": "blue"}), "tags must be a list"),
        (_pack({**_OK, "meta": [["k"]]}), "not a (key, value) pair"),
        (_pack({**_OK, "client": 5}), "client id must be a string"),
        (_pack({**_OK, "seq": 1.0}), "seq must be an integer"),
        (_pack({**_OK, "service": "web_1"}), "contains '_'"),
        (_pack({**_ENVELOPE, "op": "deregister", "service": "web", "port": 80}), "either instance_id, or address"),
        (_pack({1: 2}), "not a msgpack request"),  # strict_map_key refuses int keys
        (_pack({b"v": 1}), "keys must be strings"),
        (b"\x82\xa1v\x01\xa1v\x01", "duplicate key"),  # {"v": 1, "v": 1}
        (b"\x91" * 100_000, "not a msgpack request"),  # nested too deep
        (_pack({**_OK, "port": msgpack.ExtType(1, b"x")}), "port must be an integer"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_entries_raise_command_error(data: bytes, fragment: str) -> None:
    """Anything but a well-formed, valid request raises CommandError saying why."""
    with pytest.raises(CommandError) as caught:
        decode_request(data)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("data", ["a string", None, 5, bytearray(b"\x80")])
def test_decode_refuses_non_bytes_without_crashing(data: object) -> None:
    with pytest.raises(CommandError):
        decode_request(data)  # type: ignore[arg-type]


@given(st.one_of(garbage, msgpack_values.map(_pack)))
def test_decoding_garbage_raises_only_command_error(data: bytes) -> None:
    """No input makes decode_request raise anything but CommandError."""
    try:
        request = decode_request(data)
    except CommandError:
        return
    assert decode_request(encode_request(request)) == request
