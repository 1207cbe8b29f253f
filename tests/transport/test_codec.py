"""The wire codec: exact round trips, a pinned format, and decode refusing anything malformed.

decode(encode(m)) == m for every Raft message type and Forward; decode raises CodecError, and
only CodecError, for random bytes, mutated frames and well-formed msgpack of the wrong shape.
"""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.raft import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    Index,
    NodeId,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Term,
    TimeoutNow,
)
from registry.raft import InstallSnapshot, InstallSnapshotResponse, Membership, SnapshotMeta
from registry.transport import FORWARD_OP_TAG, FORWARD_TAG, WIRE_VERSION, CodecError, Forward, ForwardOp, decode, encode

U63 = st.integers(min_value=0, max_value=2**63 - 1)
ENTRY = st.builds(Entry, U63, U63, st.sampled_from(EntryKind), st.binary(max_size=64))
FIELD_STRATEGIES = {
    "int": U63, "NodeId": U63, "Term": U63, "Index": U63,
    "bool": st.booleans(),
    "bytes": st.binary(max_size=64),
    "ForwardOp": st.sampled_from(ForwardOp),
    "tuple[Entry, ...]": st.lists(ENTRY, max_size=6).map(tuple),
    "SnapshotMeta": st.builds(
        lambda index, term, ids, split: SnapshotMeta(index, term, Membership(frozenset(ids[:split]),
                                                                             frozenset(ids[split:]))),
        U63, U63, st.lists(st.integers(1, 2**63 - 1), max_size=7, unique=True), st.integers(0, 7)),
}  # fmt: skip
WIRE_TYPES = (*MESSAGE_TYPES, Forward)


def strategy_for(cls: type) -> st.SearchStrategy[object]:
    fields = {f.name: FIELD_STRATEGIES[f.type] for f in dataclasses.fields(cls)}  # type: ignore[index]
    return st.builds(cls, **fields)


ANY_MESSAGE = st.one_of([strategy_for(cls) for cls in WIRE_TYPES])


def raw(body: object, version: int = WIRE_VERSION) -> bytes:
    return bytes([version]) + msgpack.packb(body, use_bin_type=True)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_type(cls: type, data: st.DataObject) -> None:
    """decode(encode(m)) == m, with the exact type, for every message type and field value."""
    m = data.draw(strategy_for(cls))
    got = decode(encode(m))
    assert got == m and type(got) is cls
    if isinstance(m, AppendEntries):
        assert all(type(e.kind) is EntryKind for e in got.entries)  # type: ignore[attr-defined]


@given(ANY_MESSAGE)
def test_decode_accepts_any_buffer(m: object) -> None:
    """A frame may arrive as bytes, bytearray or memoryview (zero-copy receive)."""
    data = encode(m)  # type: ignore[arg-type]
    assert decode(bytearray(data)) == m == decode(memoryview(data))


# Pinned bytes: a change here is a wire-format change and needs a new WIRE_VERSION.
E = (Entry(Term(2), Index(3), EntryKind.NOOP, b""), Entry(Term(2), Index(4), EntryKind.NORMAL, b"\x00z"))
GOLDEN = [
    (RequestVote(NodeId(1), NodeId(2), Term(3), Index(4), Term(5), True, False), "0198000102030405c3c2"),
    (RequestVoteResponse(NodeId(1), NodeId(2), Term(3), True, False), "019601010203c3c2"),
    (AppendEntries(NodeId(1), NodeId(2), Term(3), Index(2), Term(2), E, Index(1)),
     "01980201020302029294020301c40094020400c402007a01"),
    (AppendEntriesResponse(NodeId(1), NodeId(2), Term(3), False, Index(9), Term(1), Index(5)),
     "019803010203c2090105"),
    (Heartbeat(NodeId(1), NodeId(2), Term(3), Index(4), 5), "0196040102030405"),
    (HeartbeatResponse(NodeId(1), NodeId(2), Term(3), 2**40), "019505010203cf0000010000000000"),
    (TimeoutNow(NodeId(1), NodeId(2), Term(3)), "019406010203"),
    (ReadIndex(NodeId(1), NodeId(2), Term(3), b"ctx"), "019507010203c403637478"),
    (ReadIndexResponse(NodeId(1), NodeId(2), Term(3), Index(7), b""), "01960801020307c400"),
    (InstallSnapshot(NodeId(1), NodeId(2), Term(3), SnapshotMeta(Index(9), Term(2), Membership(
        frozenset({NodeId(1), NodeId(2)}), frozenset({NodeId(5)}))), 4, b"ab", False),
     "019809010203940902920102910504c4026162c2"),
    (InstallSnapshotResponse(NodeId(1), NodeId(2), Term(3), Index(9), Term(2), 6), "01970a0102030902" "06"),
    (Forward(NodeId(2**63 - 1), NodeId(1), b"w"), "019440cf7fffffffffffffff01c40177"),
    (Forward(NodeId(2), NodeId(1), b"r", ForwardOp.RESTORE), "0195410201c4017201"),
    (Forward(NodeId(2), NodeId(1), b"h", ForwardOp.HEARTBEAT), "0195410201c4016802"),
    (Forward(NodeId(2), NodeId(1), b"p", ForwardOp.PASS), "0195410201c4017003"),
    (Forward(NodeId(2), NodeId(1), b"q", ForwardOp.PASS_REPLY), "0195410201c4017104"),
    (Forward(NodeId(2), NodeId(1), b"t", ForwardOp.TRANSFER), "0195410201c4017405"),
    (Forward(NodeId(1), NodeId(2), b"y", ForwardOp.TRANSFER_REPLY), "0195410102c4017906"),
    (Forward(NodeId(2), NodeId(1), b"m", ForwardOp.MEMBERS), "0195410201c4016d07"),
    (Forward(NodeId(1), NodeId(2), b"n", ForwardOp.MEMBERS_REPLY), "0195410102c4016e08"),
]


@pytest.mark.parametrize("m, hex_", GOLDEN, ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_wire_format_is_pinned(m: object, hex_: str) -> None:
    """Each type's tag is its MESSAGE_TYPES position (Forward: 64 for a write, in the first version's
    3-field frame that older nodes decode; 65 with its op for anything else) and the bytes never drift."""
    assert encode(m).hex() == hex_  # type: ignore[arg-type]
    assert decode(bytes.fromhex(hex_)) == m


def test_golden_covers_every_type() -> None:
    assert {type(m) for m, _ in GOLDEN} == set(WIRE_TYPES)
    assert FORWARD_TAG >= len(MESSAGE_TYPES)
    assert {m.op for m, _ in GOLDEN if isinstance(m, Forward)} == set(ForwardOp)


def test_forward_ops_keep_their_numbers() -> None:
    """The ops are wire values: an old node decodes 0-2; PASS, TRANSFER and MEMBERS came later and keep theirs."""
    assert {op.name: int(op) for op in ForwardOp} == {"WRITE": 0, "RESTORE": 1, "HEARTBEAT": 2, "PASS": 3,
                                                      "PASS_REPLY": 4, "TRANSFER": 5, "TRANSFER_REPLY": 6,
                                                      "MEMBERS": 7, "MEMBERS_REPLY": 8}


def test_encode_refuses_what_is_not_a_message() -> None:
    """encode takes only Raft messages and Forward (exact types), so nothing else reaches the wire."""
    with pytest.raises(CodecError, match="cannot encode Entry"):
        encode(Entry(Term(1), Index(1)))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="cannot encode dict"):
        encode({"source": 1})  # type: ignore[arg-type]


def test_encode_reports_unencodable_fields() -> None:
    """A field msgpack cannot carry (an int over 64 bits, an object) is a CodecError, not a TypeError."""
    with pytest.raises(CodecError, match="cannot encode"):
        encode(TimeoutNow(NodeId(1), NodeId(2), Term(2**70)))
    with pytest.raises(CodecError, match="cannot encode"):
        encode(ReadIndex(NodeId(1), NodeId(2), Term(1), object()))  # type: ignore[arg-type]


# -- decode refuses, precisely ------------------------------------------------------------------

HB = [4, 1, 2, 3, 4, 5]  # Heartbeat(source=1, target=2, term=3, leader_commit=4, read_seq=5)
AE = [2, 1, 2, 3, 0, 0, [[3, 1, 0, b""]], 0]


def entry_field(value: object) -> list[object]:
    return [2, 1, 2, 3, 0, 0, [value], 0]


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"", "empty frame"),
        (raw(HB, version=2), "unsupported wire version 2"),
        (raw(HB, version=0), "unsupported wire version 0"),
        (bytes([WIRE_VERSION]), "invalid msgpack"),
        (raw(HB)[:-1], "invalid msgpack"),
        (raw(HB) + b"\x00", "invalid msgpack.*ExtraData"),
        (bytes([WIRE_VERSION, 0xC1]), "invalid msgpack"),  # 0xc1 is never used in msgpack
        (bytes([WIRE_VERSION]) + b"\xa2\xff\xfe", "invalid msgpack"),  # str with invalid UTF-8
        (bytes([WIRE_VERSION]) + b"\x81\x01\x01", "invalid msgpack"),  # int map key (strict_map_key)
        (raw({"tag": 4}), "expected a non-empty array.*got dict"),
        (raw([]), "expected a non-empty array.*got list"),
        (raw(7), "expected a non-empty array.*got int"),
        (raw([99, 1, 2]), "unknown message tag 99"),
        (raw([-1, 1, 2]), "unknown message tag -1"),
        (raw([True, 1, 2, 3]), "unknown message tag True"),  # 1 is RequestVoteResponse; True is not 1
        (raw(["4", 1, 2]), "unknown message tag '4'"),
        (raw([len(MESSAGE_TYPES), 1, 2, 3]), f"unknown message tag {len(MESSAGE_TYPES)}"),
        (raw(HB[:-1]), "Heartbeat: expected 5 fields, got 4"),
        (raw([*HB, 6]), "Heartbeat: expected 5 fields, got 6"),
        (raw([4, True, 2, 3, 4, 5]), r"Heartbeat.source: expected an int in \[0, 2\*\*63\), got bool True"),
        (raw([4, 1, 2, -3, 4, 5]), r"Heartbeat.term: expected an int .*got int -3"),
        (raw([4, 1, 2, 2**63, 4, 5]), r"Heartbeat.term: expected an int .*got int 9223372036854775808"),
        (raw([4, 1, 2, 3, 4.0, 5]), r"Heartbeat.leader_commit: expected an int .*got float"),
        (raw([4, 1, 2, 3, 4, None]), r"Heartbeat.read_seq: expected an int .*got NoneType None"),
        (raw([1, 1, 2, 3, 1, False]), r"RequestVoteResponse.granted: expected a bool, got int 1"),
        (raw([0, 1, 2, 3, 4, 5, False, 0]), r"RequestVote.transfer: expected a bool, got int 0"),
        (raw([7, 1, 2, 3, "ctx"]), r"ReadIndex.context: expected bytes, got str"),
        (raw([64, 1, 2, ["w"]]), r"Forward.payload: expected bytes, got list"),
        (raw([64, 1, 2, b"w", 0]), r"Forward: expected 3 fields, got 4"),
        (raw([65, 1, 2, b"w", 9]), r"Forward.op: expected one of \[0, 1, 2, 3, 4, 5, 6, 7, 8\], got int 9"),
        (raw([65, 1, 2, b"w", 11]), r"Forward.op: expected one of \[0, 1, 2, 3, 4, 5, 6, 7, 8\], got int 11"),
        (raw([65, 1, 2, b"w"]), r"Forward: expected 4 fields, got 3"),
        (raw([7, 1, 2, 3, msgpack.ExtType(1, b"x")]), "ReadIndex.context: expected bytes, got ExtType"),
        (raw([2, 1, 2, 3, 0, 0, {}, 0]), "AppendEntries.entries: expected an array of entries, got dict"),
        (raw([2, 1, 2, 3, 0, 0, b"", 0]), "AppendEntries.entries: expected an array of entries, got bytes"),
        (raw(entry_field([3, 1, 0])), r"AppendEntries.entries\[0\]: expected \[term, index, kind, data\], got list"),
        (raw(entry_field({"t": 1})), r"AppendEntries.entries\[0\]: expected \[term, index, kind, data\], got dict"),
        (raw(entry_field([False, 1, 0, b""])), r"entries\[0\].term: expected an int .*got bool False"),
        (raw(entry_field([3, -1, 0, b""])), r"entries\[0\].index: expected an int .*got int -1"),
        (raw(entry_field([3, 1, 2, b""])), r"entries\[0\].kind: expected one of \[0, 1\], got int 2"),
        (raw(entry_field([3, 1, True, b""])), r"entries\[0\].kind: expected one of \[0, 1\], got bool True"),
        (raw(entry_field([3, 1, 0, "x"])), r"entries\[0\].data: expected bytes, got str"),
    ],
)
def test_decode_refuses_with_a_precise_message(frame: bytes, message: str) -> None:
    """Each way a frame can be wrong gives a CodecError naming the version, tag, field or entry at fault."""
    with pytest.raises(CodecError, match=message):
        decode(frame)


def test_decode_of_the_valid_templates() -> None:
    """The templates the refusal table mutates are valid themselves, so each case tests one defect."""
    assert decode(raw(HB)) == Heartbeat(NodeId(1), NodeId(2), Term(3), Index(4), 5)
    assert decode(raw(AE)) == AppendEntries(NodeId(1), NodeId(2), Term(3), Index(0), Term(0),
                                            (Entry(Term(3), Index(1), EntryKind.NORMAL, b""),), Index(0))


def test_forged_lengths_do_not_allocate() -> None:
    """A header claiming 2**32-1 elements or bytes fails at once instead of allocating for them."""
    for header in (b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"):
        with pytest.raises(CodecError, match="invalid msgpack"):
            decode(bytes([WIRE_VERSION]) + header)


def test_deep_nesting_is_refused() -> None:
    """Nested arrays deeper than msgpack's stack are a CodecError, not a RecursionError."""
    with pytest.raises(CodecError):
        decode(bytes([WIRE_VERSION]) + b"\x91" * 100_000 + b"\x00")


# -- fuzz -------------------------------------------------------------------------------------


def decode_or_codec_error(data: bytes) -> None:
    try:
        m = decode(data)
    except CodecError:
        return
    assert type(m) in WIRE_TYPES
    assert decode(encode(m)) == m


@settings(max_examples=2_000)
@given(st.binary(max_size=256))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    """Any byte string either decodes to a valid message or raises CodecError, never anything else."""
    decode_or_codec_error(data)


@settings(max_examples=2_000)
@given(st.binary(max_size=256))
def test_random_bytes_after_the_version_byte(data: bytes) -> None:
    """Same, past the version check, so the msgpack and shape checks get the fuzz."""
    decode_or_codec_error(bytes([WIRE_VERSION]) + data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(ANY_MESSAGE)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@settings(max_examples=1_500)
@given(mutated_frames())
def test_mutated_frames_raise_only_codec_error(data: bytes) -> None:
    """Valid frames with flipped, replaced, inserted or deleted bytes never raise anything but CodecError."""
    decode_or_codec_error(data)


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300)
@given(tag=st.sampled_from([*range(len(MESSAGE_TYPES)), FORWARD_TAG, FORWARD_OP_TAG]), fields=st.lists(MSGPACK_VALUES, max_size=9))
def test_well_formed_msgpack_of_the_wrong_shape(tag: int, fields: list[object]) -> None:
    """Any msgpack array behind a valid tag decodes only if every field has the right type, else CodecError."""
    decode_or_codec_error(raw([tag, *fields]))


@settings(max_examples=500)
@given(m=ANY_MESSAGE, data=st.data())
def test_one_wrong_field_is_always_caught(m: object, data: st.DataObject) -> None:
    """Replacing any one field with a value of another msgpack type is always refused."""
    fields = dataclasses.fields(m)  # type: ignore[arg-type]
    body = msgpack.unpackb(encode(m)[1:])  # type: ignore[arg-type]
    i = data.draw(st.integers(1, len(body) - 1))  # a write's Forward has no op on the wire
    wrong = {"bool": [1, b"x", None], "bytes": [1, True, "x", [b"x"]], "tuple[Entry, ...]": [b"", 1, {"a": 1}],
             "SnapshotMeta": [b"", 1, [1, 2, [1]], [1, 2, [0], []], [1, -2, [1], []], [1, 2, [1], [1]],
                              [1, 2, "x", []]]}.get(
        fields[i - 1].type, [True, -1, 1.5, b"1", "1", 2**63]  # type: ignore[arg-type]
    )
    body[i] = data.draw(st.sampled_from(wrong))
    with pytest.raises(CodecError, match=fields[i - 1].name):
        decode(raw(body))
