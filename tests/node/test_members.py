"""The member directory (registry/node/members.py): contexts, the directory built from the
config, changes applied to it, its stored form, and the fault-tolerance rules."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from registry.naming import node_id_for
from registry.node.config import ConfigError, build, check_settings
from registry.node.members import (
    Directory,
    Member,
    MemberError,
    check_fault_tolerance,
    decode_context,
    decode_directory,
    encode_context,
    encode_directory,
    fault_tolerance,
)

N4 = Member("n4", ("10.0.0.4", 7001), ("10.0.0.4", 7101))
BASE = {"name": "n1", "data_dir": "/tmp/x", "raft": "127.0.0.1:7001", "client": "127.0.0.1:7101",
        "dns": "127.0.0.1:8600", "peer": ["n2=127.0.0.1:7002", "n3=[::1]:7003"]}


def directory() -> Directory:
    return Directory.from_config(build(BASE))


def test_a_context_round_trips_with_ipv6_and_without_a_client_address() -> None:
    """encode_context/decode_context give back the same member, whatever its addresses."""
    for member in (N4, Member("db-1.east", ("::1", 7001)), Member("n5", ("host.example", 1), ("::", 2))):
        assert decode_context(encode_context(member)) == member
    assert msgpack.unpackb(encode_context(N4)) == {"name": "n4", "raft": "10.0.0.4:7001", "client": "10.0.0.4:7101"}


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "expected a map"),
    (msgpack.packb({"name": "n4", "raft": "10.0.0.4:7001", "port": 1}), "unknown key"),
    (msgpack.packb({"raft": "10.0.0.4:7001"}), "'name' must be"),
    (msgpack.packb({"name": "-bad", "raft": "10.0.0.4:7001"}), "invalid node name"),
    (msgpack.packb({"name": "n4", "raft": "10.0.0.4"}), "n4: 'raft'"),
    (msgpack.packb({"name": "n4", "raft": 7001}), "must be HOST:PORT"),
    (msgpack.packb({"name": "n4", "raft": "10.0.0.4:7001", "client": "x:99999"}), "'client'"),
    (b"\x81" + b"\xa4name" + b"\xda" + (2000).to_bytes(2, "big") + b"a" * 2000, "at most 1024"),
])
def test_bad_contexts_are_refused_with_a_clear_error(data: bytes, message: str) -> None:
    """Every malformed context is a MemberError naming what is wrong, never another exception."""
    with pytest.raises(MemberError, match=message):
        decode_context(data)


def test_the_initial_directory_is_this_node_and_its_peers() -> None:
    """From the config: this node with its client address, each --peer with its Raft address only."""
    d = directory()
    assert [m.name for m in d.members()] == ["n1", "n2", "n3"]
    assert set(d) == {node_id_for(n) for n in ("n1", "n2", "n3")}
    assert d[node_id_for("n1")] == Member("n1", ("127.0.0.1", 7001), ("127.0.0.1", 7101))
    assert d[node_id_for("n3")] == Member("n3", ("::1", 7003), None)
    assert d.names()[node_id_for("n2")] == "n2" and d.by_name("n2") is not None and d.by_name("-x") is None
    assert d.name_of(node_id_for("n9")) == f"node {node_id_for('n9')}"


def test_changes_apply_in_order() -> None:
    """add_learner adds from the context, promote keeps or updates the entry, remove drops it."""
    d = directory()
    added = d.apply("add_learner", N4.node_id, encode_context(N4))
    assert added[N4.node_id] == N4 and len(added) == 4 and len(d) == 3  # immutable: d is unchanged
    assert added.apply("promote", N4.node_id, b"") == added
    moved = Member("n4", ("10.0.0.44", 7001), None)
    assert added.apply("promote", N4.node_id, encode_context(moved))[N4.node_id] == moved
    removed = added.apply("remove", node_id_for("n2"), b"")
    assert [m.name for m in removed.members()] == ["n1", "n3", "n4"]
    assert removed.apply("remove", node_id_for("n2"), b"") == removed  # removing twice: nothing left to drop


def test_a_change_that_does_not_apply_is_refused() -> None:
    """A context whose name does not hash to the change's node id never attaches an address to
    the wrong member; an unknown op or a promote of an unknown node without context is refused."""
    d = directory()
    with pytest.raises(MemberError, match="the context names n4"):
        d.apply("add_learner", node_id_for("n5"), encode_context(N4))
    with pytest.raises(MemberError, match="unknown membership change"):
        d.apply("add_voter", N4.node_id, encode_context(N4))
    with pytest.raises(MemberError, match="no directory entry"):
        d.apply("promote", N4.node_id, b"")
    with pytest.raises(MemberError, match="empty"):
        d.apply("add_learner", N4.node_id, b"")


def test_restricted_to_the_core_membership_reports_unknown_ids() -> None:
    """Entries are kept only for the core's members; members without an entry are reported."""
    kept, missing = directory().restricted_to([node_id_for("n1"), node_id_for("n2"), N4.node_id])
    assert [m.name for m in kept.members()] == ["n1", "n2"] and missing == [N4.node_id]


def test_the_stored_directory_round_trips_and_bad_bytes_are_refused() -> None:
    """encode_directory/decode_directory, as kept in a snapshot file's header."""
    d = directory().apply("add_learner", N4.node_id, encode_context(N4))
    assert decode_directory(encode_directory(d)) == d
    for data, message in ((b"\xc1", "not msgpack"), (msgpack.packb({}), "must be a list"),
                          (msgpack.packb([{"name": "n1"}]), "stored member 0"),
                          (msgpack.packb([N4.to_map(), N4.to_map()]), "listed twice")):
        with pytest.raises(MemberError, match=message):
            decode_directory(data)


@pytest.mark.parametrize("voters, want", [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3)])
def test_fault_tolerance_is_how_many_voters_may_fail(voters: int, want: int) -> None:
    """A majority of voters must remain: (voters - 1) // 2 may fail."""
    assert fault_tolerance(voters) == want


@pytest.mark.parametrize("before, after, floor, refused", [
    (3, 2, 1, True),    # the classic mistake: a 3-voter cluster shrunk to 2 stops at the next failure
    (3, 2, 0, False),   # no floor
    (3, 4, 1, False),   # adding first (a replacement) keeps tolerance 1
    (4, 3, 1, False),   # ... then removing the old one: still 1
    (5, 4, 2, True),    # 2 -> 1, below a floor of 2
    (5, 4, 1, False),   # 2 -> 1, at the floor
    (2, 1, 1, False),   # already below the floor: 0 -> 0 does not lower it
    (1, 2, 1, False),   # growing never lowers it
    (3, 3, 5, False),   # a learner added or removed: the voters do not change
])
def test_the_floor_refuses_only_changes_that_lower_tolerance_below_it(before: int, after: int, floor: int,
                                                                      refused: bool) -> None:
    """check_fault_tolerance: refused only when the change lowers tolerance and ends below the floor."""
    message = check_fault_tolerance(before, after, floor)
    assert (message is not None) == refused, message
    if refused:
        assert message is not None
        assert f"from {fault_tolerance(before)} to {fault_tolerance(after)}" in message
        assert f"floor of {floor}" in message and "--force" in message


def test_fault_tolerance_helpers_refuse_negative_numbers() -> None:
    with pytest.raises(ValueError):
        fault_tolerance(-1)
    with pytest.raises(ValueError):
        check_fault_tolerance(3, 2, -1)


def test_min_fault_tolerance_is_a_checked_setting(tmp_path: Path) -> None:
    """Default 1; 0 turns the check off; the config file and the flag accept it; bad values name the key."""
    assert build(BASE).min_fault_tolerance == 1
    assert build({**BASE, "min_fault_tolerance": 0}).min_fault_tolerance == 0
    for value in (-1, 101, "two", True):
        problems = check_settings({**BASE, "min_fault_tolerance": value})
        assert [p.key for p in problems] == ["min_fault_tolerance"], problems
        with pytest.raises(ConfigError, match="min_fault_tolerance"):
            build({**BASE, "min_fault_tolerance": value})
