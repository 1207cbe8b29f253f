"""Peers added and removed at runtime (membership changes, issue 15): a new peer is connected
with the same settings as the initial ones and exchanges messages both ways; a removed peer's
frames are dropped and counted, and messages to it are dropped and counted, never a crash."""

from __future__ import annotations

import pytest

from registry.transport import TransportError

from .net import HOST, WAIT_S, connect, free_port, make, make_cluster, nid, probe, receive, until


def test_a_peer_added_after_start_exchanges_messages_both_ways() -> None:
    """n3 joins two running nodes: each adds it, and messages cross every new link."""
    made = make_cluster(["n1", "n2"])
    n3 = None
    try:
        n1, n2 = made["n1"], made["n2"]
        connect(n1, n2)
        n3 = make("n3", free_port(), {"n1": n1.address[1], "n2": n2.address[1]})
        assert "n3" not in n1.peer_ids
        for t in (n1, n2):
            t.add_peer("n3", nid("n3"), HOST, n3.address[1])
        assert n1.peer_ids["n3"] == nid("n3") and n1.stats.peers_added == 1
        for a, b in ((n1, n3), (n3, n1), (n2, n3), (n3, n2)):
            connect(a, b)
        assert n1.stats.unknown_peer == n3.stats.unknown_peer == 0
    finally:
        for t in [*made.values(), n3]:
            if t is not None:
                t.close()


def test_a_removed_peer_is_neither_sent_to_nor_heard() -> None:
    """After remove_peer, sends to it are dropped as unknown targets, and its frames (its
    connection to our ROUTER stays up) are dropped as from an unknown peer."""
    made = make_cluster(["n1", "n2"])
    try:
        n1, n2 = made["n1"], made["n2"]
        connect(n1, n2)
        connect(n2, n1)
        assert n1.remove_peer("n2") is True
        assert "n2" not in n1.peer_ids and n1.stats.peers_removed == 1
        assert n1.remove_peer("n2") is False  # idempotent, not an error
        # Outbound: dropped and counted, nothing reaches n2.
        n1.send([probe("n1", "n2", seq=5)])
        assert n1.stats.dropped_unknown_target == 1
        assert receive(n2, 1, timeout_s=0.3) == []
        # Inbound: n2 still has n1 as a peer and keeps sending; every frame is refused.
        before = n1.stats.unknown_peer
        got: list[object] = []
        assert until(lambda: n1.stats.unknown_peer >= before + 3,
                     step=lambda: (n2.send([probe("n2", "n1", seq=6)]), got.extend(n1.drain()))), \
            "n2's frames were never counted as from an unknown peer"
        assert got == [], f"a removed peer's message was delivered: {got}"
        assert n2.stats.sent >= 3  # the premise: n2 did send them
    finally:
        for t in made.values():
            t.close()


def test_a_removed_peer_can_be_added_again_at_a_new_address() -> None:
    """Remove then add is how a member moves: the new DEALER reaches the new address."""
    made = make_cluster(["n1", "n2"])
    moved = None
    try:
        n1, n2 = made["n1"], made["n2"]
        connect(n1, n2)
        n2.close()
        moved = make("n2", free_port(), {"n1": n1.address[1]})
        n1.remove_peer("n2")
        n1.add_peer("n2", nid("n2"), HOST, moved.address[1])
        connect(n1, moved, timeout_s=WAIT_S)
        connect(moved, n1, timeout_s=WAIT_S)
    finally:
        for t in [*made.values(), moved]:
            if t is not None:
                t.close()


def test_add_peer_refuses_bad_names_and_clashes() -> None:
    """Bad input to add_peer is a clear ValueError; a closed transport is a TransportError."""
    made = make_cluster(["n1", "n2"])
    try:
        n1 = made["n1"]
        with pytest.raises(ValueError, match="not the id of node name"):
            n1.add_peer("n3", nid("n4"), HOST, 1)
        with pytest.raises(ValueError, match="its own peer"):
            n1.add_peer("n1", nid("n1"), HOST, 1)
        with pytest.raises(ValueError, match="a peer already"):
            n1.add_peer("n2", nid("n2"), HOST, 1)
        with pytest.raises(ValueError):
            n1.add_peer("bad name!", nid("n3"), HOST, 1)
        assert dict(n1.peer_ids) == {"n2": nid("n2")} and n1.stats.peers_added == 0
        n1.close()
        with pytest.raises(TransportError):
            n1.add_peer("n3", nid("n3"), HOST, 1)
        with pytest.raises(TransportError):
            n1.remove_peer("n2")
    finally:
        for t in made.values():
            t.close()
