"""Commands: construction validates and normalises; the log encoding round-trips, is deterministic,
and decoding anything else raises CommandError (and nothing else)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.catalogue import (
    Check,
    CheckKind,
    CommandError,
    Deregister,
    HealthStatus,
    Register,
    Request,
    SetHealth,
    ValidationError,
    decode_request,
    default_instance_id,
    encode_request,
)
from registry.catalogue.validation import validate_instance_id

from .strategies import deregisters, garbage, msgpack_values, registers, requests, set_healths


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


# Health (issue 14): new optional keys and the set_health op; old entries decode as before.

# Entries written by the encoder before health existed (commit cd080b2), pinned as hex.
PREVIOUS_ENTRIES = [
    ("8aa17601a6636c69656e74a26331a373657101a26f70a87265676973746572a773657276696365a3776562a761646472657373a83130"
     "2e302e302e35a4706f7274cd1f90a26964b17765622d31302e302e302e352d38303830a47461677392a4626c7565a27631a46d6574"
     "6181a47a6f6e65a26575",
     Request("c1", 1, Register("web", "10.0.0.5", 8080, tags=["v1", "blue"], meta={"zone": "eu"}))),
    ("8aa17601a6636c69656e74a26331a373657102a26f70a87265676973746572a773657276696365a3776562a761646472657373ab32"
     "3030313a6462383a3a31a4706f727450a26964a27636a47461677390a46d65746180",
     Request("c1", 2, Register("web", "2001:db8::1", 80, instance_id="v6"))),
    ("86a17601a6636c69656e74a26332a373657107a26f70aa64657265676973746572a773657276696365a3776562a26964a27636",
     Request("c2", 7, Deregister("web", instance_id="v6"))),
    ("87a17601a6636c69656e74a26332a373657108a26f70aa64657265676973746572a773657276696365a3776562a76164647265737"
     "3a831302e302e302e35a4706f7274cd1f90",
     Request("c2", 8, Deregister("web", address="10.0.0.5", port=8080))),
]  # fmt: skip


@pytest.mark.parametrize("data, want", PREVIOUS_ENTRIES, ids=["register", "register-v6", "deregister-id",
                                                               "deregister-endpoint"])
def test_entries_written_before_health_decode_exactly_as_before(data: str, want: Request) -> None:
    """The previous version's bytes decode to the same request (no check, at_ms 0, no revision), and a
    command without health fields still encodes to exactly those bytes."""
    got = decode_request(bytes.fromhex(data))
    assert got == want
    command = got.command
    if isinstance(command, Register):
        assert (command.check, command.at_ms) == (None, 0)
    else:
        assert command.revision is None
    assert encode_request(want).hex() == data


def test_health_fields_are_encoded_as_documented() -> None:
    """check (every key), at, rev and set_health as in the module docstring; output only when set."""
    check = Check(CheckKind.TCP, interval_ms=1_000, timeout_ms=500)
    data = encode_request(Request("c1", 3, Register("web", "10.0.0.5", 80, check=check, at_ms=1_700_000_000_000)))
    body = msgpack.unpackb(data, raw=False)
    assert body["check"] == {"kind": "tcp", "ttl_ms": 0, "url": "", "interval_ms": 1_000, "timeout_ms": 500,
                             "failures": 3, "successes": 2, "deregister_after_ms": 0}
    assert body["at"] == 1_700_000_000_000
    data = encode_request(Request("~health", (2 << 32) + 1, Deregister("web", instance_id="a", revision=9)))
    assert msgpack.unpackb(data, raw=False) == {
        "v": 1, "client": "~health", "seq": (2 << 32) + 1, "op": "deregister", "service": "web", "id": "a", "rev": 9,
    }  # fmt: skip
    data = encode_request(Request("~health", 5, SetHealth("web", "a", 9, HealthStatus.CRITICAL, 12, "refused")))
    assert msgpack.unpackb(data, raw=False) == {
        "v": 1, "client": "~health", "seq": 5, "op": "set_health", "service": "web", "id": "a", "rev": 9,
        "status": "critical", "at": 12, "output": "refused",
    }  # fmt: skip
    data = encode_request(Request("~health", 5, SetHealth("web", "a", 9, "passing", 12)))
    assert "output" not in msgpack.unpackb(data, raw=False)


@given(st.one_of(set_healths.map(lambda c: Request("~health", 1, c)),
                 registers.filter(lambda r: r.check is not None).map(lambda c: Request("c", 1, c)),
                 deregisters.filter(lambda d: d.revision is not None).map(lambda c: Request("c", 1, c))))
def test_health_commands_round_trip(request: Request) -> None:
    """decode(encode(r)) == r for every health-bearing command."""
    data = encode_request(request)
    assert decode_request(data) == request and encode_request(decode_request(data)) == data


def test_health_commands_validate_when_constructed() -> None:
    """SetHealth and the new fields refuse bad values, naming them."""
    with pytest.raises(ValidationError, match="needs instance_id"):
        Deregister("web", address="10.0.0.5", port=80, revision=3)
    with pytest.raises(ValidationError, match="revision 0"):
        Deregister("web", instance_id="a", revision=0)
    with pytest.raises(ValidationError, match="'passing' or 'critical'"):
        SetHealth("web", "a", 1, "down", 0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at_ms"):
        Register("web", "10.0.0.5", 80, at_ms=-1)
    with pytest.raises(ValidationError, match="ttl_ms"):
        Register("web", "10.0.0.5", 80, check={"kind": "ttl"})
    assert Register("web", "10.0.0.5", 80, check={"kind": "ttl", "ttl_ms": 5_000}).check == Check(CheckKind.TTL, 5_000)
    assert SetHealth("WEB", "a", 1, "critical", 0).status is HealthStatus.CRITICAL


_SET = {**_ENVELOPE, "op": "set_health", "service": "web", "id": "a", "rev": 3, "status": "critical", "at": 5}
_CHECK = {"kind": "ttl", "ttl_ms": 10_000, "url": "", "interval_ms": 0, "timeout_ms": 0, "failures": 3,
          "successes": 2, "deregister_after_ms": 0}


@pytest.mark.parametrize(
    "data, fragment",
    [
        (_pack({k: v for k, v in _SET.items() if k != "rev"}), "set_health lacks ['rev']"),
        (_pack({**_SET, "status": "sick"}), "invalid health status 'sick'"),
        (_pack({**_SET, "status": HealthStatus.CRITICAL.value.encode()}), "status must be a string"),
        (_pack({**_SET, "rev": 0}), "invalid revision 0"),
        (_pack({**_SET, "at": -1}), "invalid at_ms -1"),
        (_pack({**_SET, "output": "x" * 257}), "at most 256"),
        (_pack({**_SET, "address": "10.0.0.5"}), "unknown keys ['address']"),
        (_pack({**_OK, "check": "ttl"}), "check must be a map with exactly"),
        (_pack({**_OK, "check": {"kind": "ttl", "ttl_ms": 10_000}}), "check must be a map with exactly"),
        (_pack({**_OK, "check": {**_CHECK, "ttl_ms": 10}}), "ttl_ms 10"),
        (_pack({**_OK, "at": "now"}), "at_ms must be an integer"),
        (_pack({**_OK, "rev": 3}), "unknown keys ['rev']"),
        (_pack({**_ENVELOPE, "op": "deregister", "service": "web", "address": "10.0.0.5", "port": 80, "rev": 3}),
         "needs instance_id"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_health_entries_raise_command_error(data: bytes, fragment: str) -> None:
    with pytest.raises(CommandError) as caught:
        decode_request(data)
    assert fragment in str(caught.value)
