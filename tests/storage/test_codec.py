"""Storage codec: values round-trip, keys sort as indexes, and damaged bytes are refused, never guessed."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.raft import Entry, EntryKind, HardState, Index, NodeId, Term
from registry.storage import CorruptStorage
from registry.storage.codec import (
    ENTRY_HEADER_BYTES,
    decode_entry,
    decode_hard_state,
    decode_log_start,
    encode_entry,
    encode_hard_state,
    encode_log_start,
    index_key,
    key_index,
)

U64 = st.integers(0, 2**64 - 1)


@given(term=U64, index=U64, kind=st.sampled_from(EntryKind), data=st.binary(max_size=300))
def test_entry_round_trip(term: int, index: int, kind: EntryKind, data: bytes) -> None:
    entry = Entry(Term(term), Index(index), kind, data)
    raw = encode_entry(entry)
    assert len(raw) == ENTRY_HEADER_BYTES + len(data)
    assert decode_entry(raw) == entry
    assert decode_entry(memoryview(raw)) == entry  # what LMDB hands out with buffers=True


@given(term=U64, voted_for=U64, commit=U64)
def test_hard_state_round_trip(term: int, voted_for: int, commit: int) -> None:
    hs = HardState(Term(term), NodeId(voted_for), Index(commit))
    assert decode_hard_state(encode_hard_state(hs)) == hs


def test_log_start_round_trip() -> None:
    assert decode_log_start(encode_log_start(0, 0)) == (0, 0)
    assert decode_log_start(encode_log_start(2**64 - 1, 7)) == (2**64 - 1, 7)


@given(st.lists(U64, min_size=2, max_size=50))
def test_keys_sort_as_indexes(indexes: list[int]) -> None:
    """Byte order of keys is numeric order of indexes, which is what makes LMDB cursors walk the log."""
    assert sorted(indexes, key=index_key) == sorted(indexes)
    assert all(key_index(index_key(i)) == i for i in indexes)


@pytest.mark.parametrize("raw", [
    encode_entry(Entry(Term(3), Index(9), EntryKind.NORMAL, b"register web")),
    encode_hard_state(HardState(Term(3), NodeId(2), Index(9))),
    encode_log_start(4, 2),
], ids=["entry", "hard-state", "log-start"])
def test_every_single_bit_flip_is_refused(raw: bytes) -> None:
    """No single flipped bit, in header, checksum or payload, decodes: the checksum covers it all."""
    decode = {ENTRY_HEADER_BYTES + 12: decode_entry, 29: decode_hard_state, 21: decode_log_start}[len(raw)]
    for position in range(len(raw)):
        for bit in range(8):
            damaged = bytearray(raw)
            damaged[position] ^= 1 << bit
            with pytest.raises(CorruptStorage):
                decode(bytes(damaged))


def test_truncated_and_padded_values_are_refused() -> None:
    entry = encode_entry(Entry(Term(1), Index(1), EntryKind.NORMAL, b"abc"))
    with pytest.raises(CorruptStorage, match="expected at least 22"):
        decode_entry(entry[:21])
    with pytest.raises(CorruptStorage, match="checksum"):
        decode_entry(entry[:-1])  # the payload lost a byte
    hs = encode_hard_state(HardState())
    with pytest.raises(CorruptStorage, match="expected 29"):
        decode_hard_state(hs + b"\0")
    with pytest.raises(CorruptStorage, match="expected 29"):
        decode_hard_state(b"")


def test_unknown_version_says_so() -> None:
    raw = bytearray(encode_hard_state(HardState()))
    raw[0] = 2
    with pytest.raises(CorruptStorage, match="format version 2.*newer registry"):
        decode_hard_state(bytes(raw))


def test_unknown_entry_kind_with_a_valid_checksum_is_refused() -> None:
    """A well-sealed value can still be impossible: kind 9 does not exist."""
    head = struct.pack(">BBQQ", 1, 9, 1, 1)
    raw = head + struct.pack(">I", zlib.crc32(b"x", zlib.crc32(head))) + b"x"
    with pytest.raises(CorruptStorage, match="unknown kind 9"):
        decode_entry(raw)


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(CorruptStorage, match="7 bytes"):
        key_index(b"\0" * 7)
