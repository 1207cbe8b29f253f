"""The node loop's persist/send order: the leader's appends leave before its durable write,
everything else after it (Ready.messages_before_persist; dissertation §10.2.1)."""

from __future__ import annotations

import random
from typing import Any

from registry.node.loop import persist_and_send
from registry.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Config,
    Index,
    InitialState,
    Membership,
    NodeId,
    RawNode,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    Term,
)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def send(self, messages: Any) -> None:
        self.events.append(("send", tuple(messages)))

    def save(self, entries: Any, hard_state: Any, *, sync: bool, snapshot: Any = None) -> None:
        self.events.append(("save", (tuple(entries), hard_state, sync)))


def _node(node_id: int, **config: Any) -> RawNode:
    members = Membership(frozenset({NodeId(1), NodeId(2), NodeId(3)}))
    return RawNode(Config(NodeId(node_id), random.Random(node_id), **config),
                   InitialState(SnapshotMeta(Index(0), Term(0), members)))


def _leader() -> RawNode:
    node = _node(1, pre_vote=False)
    node.campaign()
    node.advance(node.ready())
    for voter in (2, 3):
        node.step(RequestVoteResponse(NodeId(voter), NodeId(1), Term(1), True))
    node.advance(node.ready())  # the no-op and its appends
    for follower in (2, 3):  # both hold the no-op: their progress moves to replicate
        node.step(AppendEntriesResponse(NodeId(follower), NodeId(1), Term(1), True, Index(1)))
    return node


def test_leader_sends_its_appends_before_persisting_them() -> None:
    """A leader's Ready: its AppendEntries go out first, then the fsynced write."""
    leader = _leader()
    leader.advance(leader.ready())
    leader.propose(b"x")
    ready = leader.ready()
    recorder = _Recorder()
    persist_and_send(ready, recorder, recorder)
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["send", "save"]
    sent = recorder.events[0][1]
    assert sent and all(isinstance(m, AppendEntries) for m in sent)
    assert recorder.events[1][1][2] is True  # the write is synced


def test_votes_are_sent_only_after_the_write() -> None:
    """A vote (with its new term) is persisted before it is sent."""
    voter = _node(2)
    voter.step(RequestVote(NodeId(1), NodeId(2), Term(1), Index(0), Term(0)))
    ready = voter.ready()
    recorder = _Recorder()
    persist_and_send(ready, recorder, recorder)
    assert [kind for kind, _ in recorder.events] == ["save", "send"]
    assert recorder.events[1][1] == ready.messages


def test_follower_acknowledgements_are_sent_only_after_the_write() -> None:
    leader = _leader()
    leader.advance(leader.ready())
    leader.propose(b"x")
    ready = leader.ready()
    follower = _node(2)
    for m in ready.messages:
        if m.target == 2:
            follower.step(m)
    rd = follower.ready()
    recorder = _Recorder()
    persist_and_send(rd, recorder, recorder)
    assert [kind for kind, _ in recorder.events][-2:] == ["save", "send"]
    assert all(kind != "send" for kind, _ in recorder.events[:-1])
