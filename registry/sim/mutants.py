"""Deliberately broken cores and health trackers: each breaks one rule, and the simulator must catch every one.

A checker that never fails proves nothing; tests run these and assert a violation is found.
"""

from __future__ import annotations

from registry.catalogue.tracker import HealthTracker, Key, Transition, View
from registry.raft import NO_NODE, AppendEntriesResponse, HardState, NodeId, Raft, RequestVote, Snapshot
from registry.raft.core import _PendingRead


class VoteWithoutLogCheck(Raft):
    """Grants votes without Raft §5.4.1's up-to-date check."""

    def vote_log_ok(self, m: RequestVote) -> bool:
        return True


class CommitPreviousTerms(Raft):
    """Commits by counting replicas for entries of earlier terms, which Raft §5.4.2 forbids."""

    def maybe_commit(self) -> bool:
        acked = sorted((pr.match_index for node, pr in self.progress.items()
                        if node in self.membership.voters), reverse=True)
        index = acked[len(self.membership.voters) // 2]
        return index > self.log.commit_index and self.log.commit_to(index)


class VoteNotPersisted(Raft):
    """Replies to RequestVote without persisting the vote: a restart forgets it (Raft figure 2)."""

    def hard_state(self) -> HardState:
        return HardState(self.term, NO_NODE, self.log.commit_index)


class ReadWithoutQuorum(Raft):
    """Answers read-index requests at once, trusting leadership without a heartbeat round (§6.4)."""

    def _register_read(self, context: bytes, origin):  # type: ignore[no-untyped-def]
        self._answer_read(_PendingRead(self.log.commit_index, context, origin, 0))


class InstallMatchesByIndex(Raft):
    """Keeps its log when it merely has an entry at the snapshot's index, without comparing its
    term: figure 13 step 6 keeps the log only if that entry has the snapshot's term too."""

    def _install(self, snapshot: Snapshot, leader: NodeId) -> None:
        meta = snapshot.meta
        if meta.index <= self.log.last_index:
            self.log.commit_to(meta.index)
            self.send(AppendEntriesResponse(self.node_id, leader, self.term, True, meta.index))
            return
        super()._install(snapshot, leader)


class ClocksNotRestarted(HealthTracker):
    """Starts each TTL clock, on election, from the last renewal this node saw as leader before
    (or from its boot), not from the election: a new leader expires what it never watched."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[Key, int] = {}

    def heartbeat(self, service: str, instance_id: str, now_ms: int, wall_ms: int) -> Transition | None:
        self._seen[(service, instance_id)] = now_ms
        return super().heartbeat(service, instance_id, now_ms, wall_ms)

    def lead(self, view: View, now_ms: int) -> None:
        super().lead(view, now_ms)
        for key, entry in self._entries.items():
            entry.renewed_ms = self._seen.get(key, 0)
            self._reschedule(key, entry)


#: name -> (a broken Raft core or health tracker, what it breaks)
MUTANTS: dict[str, tuple[type[Raft] | type[HealthTracker], str]] = {
    "vote-without-log-check": (VoteWithoutLogCheck, "votes granted without the log up-to-date check (§5.4.1)"),
    "commit-previous-terms": (CommitPreviousTerms, "previous-term entries committed by counting replicas (§5.4.2)"),
    "vote-not-persisted": (VoteNotPersisted, "vote not persisted before replying (figure 2)"),
    "read-without-quorum": (ReadWithoutQuorum, "read index served without a quorum heartbeat round (§6.4)"),
    "install-matches-by-index": (InstallMatchesByIndex,
                                 "snapshot's point matched by index alone, not its term (figure 13 step 6)"),
    "health-clocks-not-restarted": (ClocksNotRestarted,
                                    "a new leader's TTL clocks start from old renewals, not its election"),
}
