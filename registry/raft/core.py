"""The Raft protocol itself: one node's state and the rules of the paper, with no I/O.

Inputs are `tick()`, `step(message)` and the leader-only requests; outputs accumulate in
`_outbox`, `read_states` and the log, and RawNode hands them out as a Ready. Only the
`become_*` methods assign `role`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import LocalError, NoLeader, NotLeader, ProposalDropped, RemoteError
from .log import RaftLog
from .messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from .progress import Progress, ProgressState
from .quorum import VoteResult, committed_index, has_quorum, vote_result
from .types import (
    NO_NODE,
    Entry,
    EntryKind,
    HardState,
    Index,
    InitialState,
    Membership,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    Term,
)


@dataclass(frozen=True)
class Config:
    """Static settings of one node. Time is counted in ticks; the caller decides what a tick is."""

    node_id: NodeId
    rng: random.Random  # the only source of randomness; the simulator passes Random(seed)
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = 64  # AppendEntries in flight per follower in REPLICATE state
    max_msg_bytes: int = 1 << 20  # entry bytes per AppendEntries (always at least one entry)
    applied: Index = Index(0)  # the state machine's applied index when the node starts

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError(f"node_id must be a positive integer, got {self.node_id}")
        if self.heartbeat_ticks < 1:
            raise ValueError(f"heartbeat_ticks must be >= 1, got {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(f"election_ticks ({self.election_ticks}) must exceed heartbeat_ticks "
                             f"({self.heartbeat_ticks})")
        if self.max_inflight_msgs < 1:
            raise ValueError(f"max_inflight_msgs must be >= 1, got {self.max_inflight_msgs}")
        if self.max_msg_bytes < 1:
            raise ValueError(f"max_msg_bytes must be >= 1, got {self.max_msg_bytes}")
        if self.applied < 0:
            raise ValueError(f"applied must be >= 0, got {self.applied}")


@dataclass(slots=True)
class _IncomingSnapshot:
    """A follower's partial copy of a leader's snapshot, chunk by chunk (Raft figure 13)."""

    key: tuple[NodeId, Term, Index, Term]  # (leader, leader's term, snapshot index, snapshot term)
    chunks: list[bytes]
    received: int


@dataclass(frozen=True, slots=True)
class _PendingRead:
    index: Index  # the commit index when the read arrived
    context: bytes
    origin: NodeId  # who asked: this node, or a follower to answer with ReadIndexResponse
    seq: int  # the heartbeat round that must be confirmed by a quorum


class Raft:
    """One node's Raft state.

    Invariant: role is LEADER exactly when leader_id == node_id.
    Invariant: progress is non-empty only on the leader and holds every member, itself included.
    Invariant: log.commit_index never decreases; term never decreases; voted_for changes only
    with the term or from NO_NODE.
    """

    def __init__(self, config: Config, state: InitialState) -> None:
        self.config = config
        self.node_id = config.node_id
        self.membership: Membership = state.snapshot.membership
        if state.snapshot.index > 0 and not state.snapshot_data:
            raise ValueError(f"the snapshot at index {state.snapshot.index} comes without its data")
        self.snapshot = Snapshot(state.snapshot, state.snapshot_data)  # what we send a follower too far behind
        self._incoming: _IncomingSnapshot | None = None  # follower: a snapshot arriving in chunks
        self._installed: Snapshot | None = None  # follower: a leader's snapshot for the next Ready
        hs = state.hard_state
        self.log = RaftLog(state.snapshot, state.entries, hs.commit, config.applied)
        self.term: Term = hs.term
        self.voted_for: NodeId = hs.voted_for
        self.leader_id: NodeId = NO_NODE
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = config.election_ticks
        self.votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self.lead_transferee: NodeId = NO_NODE
        # A TimeoutNow went out in this term: its target may campaign whenever it arrives, even
        # after the transfer was abandoned, and voters then ignore the lease (see has_lease).
        self._timeout_now_sent = False
        self.read_states: list[ReadState] = []
        self._outbox: list[Message] = []
        self._read_seq = 0  # last read-index round sent (leader)
        self._ticks = 0  # ticks since this node started: the core's only notion of time
        # Leader: (read_seq, tick it was sent at) of each round not yet confirmed, ascending.
        self._rounds_sent: deque[tuple[int, int]] = deque()
        # Invariant: 0 unless leader; the leader holds a lease while _ticks < _lease_until.
        self._lease_until = 0
        self._pending_reads: list[_PendingRead] = []  # waiting for a quorum to confirm their round
        self._reads_awaiting_commit: list[tuple[bytes, NodeId]] = []  # before the leader commits in its term
        self._needs_broadcast = False  # new proposals not yet sent (batched until ready())
        self._needs_read_round = False
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self.tick_election
        self.become_follower(self.term, NO_NODE)

    # -- public surface (RawNode wraps these) ----------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        self._tick_role()

    def step(self, m: Message) -> None:
        self._validate(m)
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if self._in_lease() and not m.transfer:
                    # Dissertation §4.2.3: a node that heard from a leader within the minimum
                    # election timeout ignores votes, so a partitioned node cannot disrupt.
                    return
                if not m.pre_vote:
                    self.become_follower(m.term, NO_NODE)
            elif isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the proposed term, not the voter's (§9.6)
            else:
                leader = m.source if isinstance(m, _FROM_LEADER) else NO_NODE
                self.become_follower(m.term, leader)
        elif m.term < self.term:
            if isinstance(m, _FROM_LEADER) and (self.config.check_quorum or self.config.pre_vote):
                # NB: a leader cut off long enough to be ignored by pre-vote must still learn our
                # term, or it would never step down and we would never elect (etcd raft.go).
                self.send(AppendEntriesResponse(self.node_id, m.source, self.term, False, Index(0)))
            elif isinstance(m, RequestVote) and m.pre_vote:
                self.send(RequestVoteResponse(self.node_id, m.source, self.term, False, pre_vote=True))
            return
        if isinstance(m, RequestVote):
            self.handle_request_vote(m)
        else:
            self._step_role(m)

    def propose(self, data: bytes) -> Index:
        """Append a command to the leader's log; returns its index. Sent at the next ready()."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.lead_transferee != NO_NODE:
            raise ProposalDropped(f"leadership is being transferred to node {self.lead_transferee}")
        index = Index(self.log.last_index + 1)
        self.log.append((Entry(self.term, index, EntryKind.NORMAL, data),))
        self._needs_broadcast = True
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a read index; the answer is a ReadState carrying `context` (Raft §6.4)."""
        if self.role is Role.LEADER:
            self._register_read(context, self.node_id)
        elif self.leader_id == NO_NODE:
            raise NoLeader("no leader is known to confirm a read index; retry after an election")
        else:
            self.send(ReadIndex(self.node_id, self.leader_id, self.term, context))

    def transfer_leadership(self, to: NodeId) -> None:
        """Hand leadership to voter `to` once it holds our whole log (dissertation §3.10)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if to not in self.membership.voters:
            raise LocalError(f"node {to} is not a voter; voters are {sorted(self.membership.voters)}")
        if to == self.node_id or to == self.lead_transferee:
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        if self.progress[to].match_index == self.log.last_index:
            self._send_timeout_now(to)
        else:
            self.send_append(to, allow_empty=True)

    def _send_timeout_now(self, to: NodeId) -> None:
        self._timeout_now_sent = True
        self.send(TimeoutNow(self.node_id, to, self.term))

    def transfer_candidate(self) -> NodeId | None:
        """The voter best placed to take over (dissertation §3.10): the highest match index, then
        one heard from in this election timeout, then the lowest id; None when no other voter.

        NB: `recent_active` before the id so that, on an idle cluster where every live follower
        holds the whole log, a voter that stopped answering (whose match index has not fallen
        behind yet) is not chosen over one that answers."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        others = sorted(self.membership.voters - {self.node_id})
        if not others:
            return None
        return max(others, key=lambda v: (self.progress[v].match_index, self.progress[v].recent_active, -v))

    def compact(self, index: Index, data: bytes, keep_entries: int = 0) -> SnapshotMeta:
        """The caller serialised its state machine as of applied `index` into `data` (Raft §7).

        The core sends `data` to followers that need entries it no longer has, and forgets
        entries up to `index - keep_entries` (a tail kept for followers only slightly behind).
        Returns the snapshot's metadata, for the caller to persist with `data`: the caller may
        do so before or after this call, but must not drop stored entries it has not covered
        with a durable snapshot."""
        log = self.log
        if index > log.applied_index:
            raise LocalError(f"cannot snapshot at index {index}: only {log.applied_index} is applied")
        if index < self.snapshot.meta.index:
            raise LocalError(f"cannot snapshot at index {index}: the snapshot at {self.snapshot.meta.index} is newer")
        if keep_entries < 0:
            raise LocalError(f"keep_entries must be >= 0, got {keep_entries}")
        if index > 0 and not data:
            raise LocalError("a snapshot needs its data")
        term = log.term(index)
        if term is None:
            raise LocalError(f"cannot snapshot at index {index}: the log no longer holds its term")
        meta = SnapshotMeta(index, term, self.membership)
        self.snapshot = Snapshot(meta, data)
        log.compact(max(log.snapshot_index, index - keep_entries))
        return meta

    def take_installed(self) -> Snapshot | None:
        out, self._installed = self._installed, None
        return out

    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self.log.commit_index)

    def soft_state(self) -> SoftState:
        return SoftState(self.leader_id, self.role)

    def flush(self) -> None:
        """Send what was batched since the last Ready: new entries, one read-index round."""
        if self.role is not Role.LEADER:
            return
        if self._needs_broadcast:
            self._needs_broadcast = False
            for peer in self._peers():
                self.send_append(peer, allow_empty=False)
        if self._needs_read_round:
            self._needs_read_round = False
            self._start_round()
            self.broadcast_heartbeat()

    def has_pending_flush(self) -> bool:
        return self.role is Role.LEADER and (self._needs_broadcast or self._needs_read_round)

    def take_messages(self) -> list[Message]:
        out, self._outbox = self._outbox, []
        return out

    def take_read_states(self) -> list[ReadState]:
        out, self.read_states = self.read_states, []
        return out

    def on_persisted(self, index: Index, term: Term) -> None:
        """The caller made the log durable up to (index, term): the leader counts its own copy."""
        self.log.persisted_to(index, term)
        if self.role is Role.LEADER:
            self.progress[self.node_id].maybe_update(self.log.persisted_index)
            if self.maybe_commit():
                self._on_commit_advanced()

    # -- role changes -----------------------------------------------------------------------------

    def become_follower(self, term: Term, leader: NodeId) -> None:
        if term != self.term:
            self._incoming = None  # a transfer from an older term's leader never completes
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self._step_role, self._tick_role = self._step_follower, self.tick_election

    def become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER, "invalid transition leader -> pre-candidate"
        # Dissertation §9.6: a pre-candidate changes neither its term nor its vote.
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._step_role, self._tick_role = self._step_candidate, self.tick_election
        self.votes = {self.node_id: True}

    def become_candidate(self) -> None:
        assert self.role is not Role.LEADER, "invalid transition leader -> candidate"
        self._reset(Term(self.term + 1))
        self.voted_for = self.node_id
        self.role = Role.CANDIDATE
        self._step_role, self._tick_role = self._step_candidate, self.tick_election
        self.votes = {self.node_id: True}

    def become_leader(self) -> None:
        assert self.role is Role.CANDIDATE, f"invalid transition {self.role.value} -> leader"
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.node_id
        self._step_role, self._tick_role = self._step_leader, self.tick_heartbeat
        next_index = self.log.last_index + 1
        self.progress = {member: Progress(next_index, self.config.max_inflight_msgs)
                         for member in self.membership.members | {self.node_id}}
        mine = self.progress[self.node_id]
        mine.maybe_update(self.log.persisted_index)
        mine.become_replicate()
        # Raft §8: a no-op entry of the new term lets the leader commit earlier terms' entries.
        self.log.append((Entry(self.term, Index(next_index), EntryKind.NOOP),))
        self._needs_broadcast = True

    def _reset(self, term: Term) -> None:
        if term != self.term:
            assert term > self.term, f"term must not go backwards ({self.term} -> {term})"
            self.term = term
            self.voted_for = NO_NODE
        self.leader_id = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # Uniform in [election_ticks, 2 * election_ticks - 1], as etcd does (Raft §5.2).
        self.randomized_election_ticks = self.config.election_ticks + self.config.rng.randrange(
            self.config.election_ticks)
        self.votes = {}
        self.progress = {}
        self.lead_transferee = NO_NODE
        self._timeout_now_sent = False
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._needs_broadcast = False
        self._needs_read_round = False
        self._rounds_sent.clear()
        self._lease_until = 0

    # -- ticks ------------------------------------------------------------------------------------

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_ticks:
            self.campaign(transfer=False)

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                # Dissertation §6.2: a leader that cannot reach a quorum steps down.
                self.become_follower(self.term, NO_NODE)
                return
            self.lead_transferee = NO_NODE  # a transfer that took a whole timeout is abandoned
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            # Each heartbeat broadcast is a read round of its own: its acks renew the lease.
            self._start_round()
            self.broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = {self.node_id}
        for peer, pr in self.progress.items():
            if pr.recent_active:
                active.add(peer)
            pr.recent_active = False
        return has_quorum(active, self.membership.voters)

    def has_lease(self) -> bool:
        """Whether this leader may answer a read from its own state, without a read-index round
        (dissertation §6.4.1): a quorum acknowledged a heartbeat round sent at tick T, and every
        voter of that quorum ignores votes for election_ticks of its own ticks after receiving it
        (the check-quorum rule of `step`), so no other leader can exist before T + election_ticks.
        The lease ends one tick earlier, at T + election_ticks - 1: the tick phases of two nodes
        differ by up to one tick.

        None during a leadership transfer and for the rest of the term once a TimeoutNow went out
        (TimeoutNow makes voters ignore that rule, and one delayed past an abandoned transfer
        still elects its target), without
        check_quorum (followers then grant votes at once), or before this leader committed an
        entry of its term (its commit index may lag the last leader's).

        NB: this assumes the nodes' ticks run at the same rate; the caller distrusts the lease
        when its own ticks fell behind the clock. A voter that crashes and restarts forgets
        that it heard from the leader and may vote at once: a known limit of lease reads (etcd's
        ReadOnlyLeaseBased has it too), for callers whose reads can bear it."""
        if (self.role is not Role.LEADER or not self.config.check_quorum or self.lead_transferee != NO_NODE
                or self._timeout_now_sent or self.log.term(self.log.commit_index) != self.term):
            return False
        if self.membership.voters == {self.node_id}:
            return True
        return self._ticks < self._lease_until

    def _lease_ticks(self) -> int:
        """How long, from the send tick of a round a quorum acknowledged, the lease lasts."""
        return self.config.election_ticks - 1

    def _start_round(self) -> None:
        self._read_seq += 1
        if self.config.check_quorum:  # NB: without it, no lease, and nothing bounds the deque
            self._rounds_sent.append((self._read_seq, self._ticks))

    def _in_lease(self) -> bool:
        return (self.config.check_quorum and self.leader_id != NO_NODE
                and self.election_elapsed < self.config.election_ticks)

    def _promotable(self) -> bool:
        return self.node_id in self.membership.voters

    # -- elections --------------------------------------------------------------------------------

    def campaign(self, *, transfer: bool) -> None:
        if not self._promotable():
            return  # a learner, or a node outside the configuration, never leads
        if self.config.pre_vote and not transfer:
            self.become_pre_candidate()
            vote_term, pre_vote = Term(self.term + 1), True
        else:
            self.become_candidate()
            vote_term, pre_vote = self.term, False
        if vote_result(self.votes, self.membership.voters) is VoteResult.WON:
            self._won(pre_vote)
            return
        for voter in sorted(self.membership.voters - {self.node_id}):
            self.send(RequestVote(self.node_id, voter, vote_term, self.log.last_index, self.log.last_term,
                                  pre_vote=pre_vote, transfer=transfer))

    def _won(self, pre_vote: bool) -> None:
        if pre_vote:
            self.campaign(transfer=True)  # the real election, with no second pre-vote round
        else:
            self.become_leader()

    def handle_request_vote(self, m: RequestVote) -> None:
        can_vote = (self.voted_for == m.source
                    or (self.voted_for == NO_NODE and self.leader_id == NO_NODE)
                    or (m.pre_vote and m.term > self.term))
        if can_vote and self.vote_log_ok(m):
            if m.pre_vote:
                self.send(RequestVoteResponse(self.node_id, m.source, m.term, True, pre_vote=True))
            else:
                # Raft §5.2: at most one vote per term, persisted before this reply is sent.
                self.voted_for = m.source
                self.election_elapsed = 0
                self.send(RequestVoteResponse(self.node_id, m.source, self.term, True))
        else:
            self.send(RequestVoteResponse(self.node_id, m.source, self.term, False, pre_vote=m.pre_vote))

    def vote_log_ok(self, m: RequestVote) -> bool:
        """Raft §5.4.1: grant only to a candidate whose log is at least as up to date as ours."""
        return self.log.is_up_to_date(m.last_index, m.last_term)

    # -- per-role message handling ----------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self.election_elapsed = 0
            self.leader_id = m.source
            self.handle_append_entries(m)
        elif isinstance(m, Heartbeat):
            self.election_elapsed = 0
            self.leader_id = m.source
            self.handle_heartbeat(m)
        elif isinstance(m, InstallSnapshot):
            self.election_elapsed = 0
            self.leader_id = m.source
            self.handle_install_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self._promotable():
                self.campaign(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self.read_states.append(ReadState(m.index, m.context))
        # Anything else is a reply to a role we no longer hold, or a ReadIndex that reached a
        # follower: dropped, and the asker retries.

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, _FROM_LEADER):
            self.become_follower(m.term, m.source)  # a leader exists in this term (Raft §5.2)
            self._step_follower(m)
        elif isinstance(m, RequestVoteResponse):
            if m.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return
            self.votes[m.source] = m.granted
            result = vote_result(self.votes, self.membership.voters)
            if result is VoteResult.WON:
                self._won(m.pre_vote)
            elif result is VoteResult.LOST:
                self.become_follower(self.term, NO_NODE)

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, AppendEntriesResponse):
            self.handle_append_entries_response(m)
        elif isinstance(m, HeartbeatResponse):
            self.handle_heartbeat_response(m)
        elif isinstance(m, InstallSnapshotResponse):
            self.handle_install_snapshot_response(m)
        elif isinstance(m, ReadIndex):
            self._register_read(m.context, m.source)
        elif isinstance(m, _FROM_LEADER):
            raise AssertionError(f"two leaders in term {self.term}: {self.node_id} and {m.source}")

    # -- replication: follower side ---------------------------------------------------------------

    def handle_append_entries(self, m: AppendEntries) -> None:
        log = self.log
        prev_index, prev_term, entries = m.prev_index, m.prev_term, m.entries
        if prev_index < log.commit_index:
            # Our log matches the leader's up to our commit index, so only the part of a stale
            # message past it can teach us anything: entries, and a newer commit index.
            commit = log.commit_index
            skip = commit - prev_index
            if len(entries) < skip or entries[skip - 1].term != log.term(commit):
                self.send(AppendEntriesResponse(self.node_id, m.source, self.term, True, commit))
                return
            prev_index, prev_term, entries = commit, log.term(commit), entries[skip:]
        if log.term(prev_index) == prev_term:
            log.merge(entries)
            last_new = Index(prev_index + len(entries))
            log.commit_to(min(m.leader_commit, last_new))
            self.send(AppendEntriesResponse(self.node_id, m.source, self.term, True, last_new))
            return
        if prev_index > log.last_index:
            conflict_term, conflict_index = Term(0), Index(log.last_index + 1)
        else:
            conflict_term = log.term(prev_index)
            assert conflict_term is not None
            conflict_index = log.first_index_of_term(prev_index)
        self.send(AppendEntriesResponse(self.node_id, m.source, self.term, False, Index(prev_index),
                                        conflict_term, conflict_index))

    def handle_install_snapshot(self, m: InstallSnapshot) -> None:
        """Raft figure 13, receiver: gather the chunks in order, then install the whole snapshot.

        A chunk that does not continue the copy in progress is answered with the bytes held, so
        the leader resumes there (or from 0, when this node lost its copy in a restart)."""
        meta = m.meta
        if meta.index <= self.log.commit_index:
            # We already hold everything it covers: tell the leader how far we really are.
            self._incoming = None
            self.send(AppendEntriesResponse(self.node_id, m.source, self.term, True, self.log.commit_index))
            return
        key = (m.source, m.term, meta.index, meta.term)
        incoming = self._incoming
        if incoming is None or incoming.key != key:
            if m.offset != 0:
                self.send(InstallSnapshotResponse(self.node_id, m.source, self.term, meta.index, meta.term, 0))
                return
            # Step 5: a new transfer replaces any partial copy of another snapshot.
            incoming = self._incoming = _IncomingSnapshot(key, [], 0)
        if m.offset == incoming.received:
            incoming.chunks.append(m.data)
            incoming.received += len(m.data)
            if m.done:
                self._incoming = None
                self._install(Snapshot(meta, b"".join(incoming.chunks)), m.source)
                return
        self.send(InstallSnapshotResponse(self.node_id, m.source, self.term, meta.index, meta.term,
                                          incoming.received))

    def _install(self, snapshot: Snapshot, leader: NodeId) -> None:
        meta = snapshot.meta
        if self.log.term(meta.index) == meta.term:
            # Step 6: our log holds the snapshot's last entry, hence (log matching) everything
            # before it: keep the entries that follow, and let the log's own entries be applied.
            self.log.commit_to(meta.index)
        else:
            # Steps 7-8: discard the whole log (a conflicting suffix included, which is never
            # committed: the snapshot is past our commit index); the state machine restarts
            # from the snapshot, with the snapshot's membership.
            self.log.restore(meta)
            self.membership = meta.membership
            self.snapshot = snapshot
            self._installed = snapshot
        self.send(AppendEntriesResponse(self.node_id, leader, self.term, True, meta.index))

    def handle_heartbeat(self, m: Heartbeat) -> None:
        if m.leader_commit > self.log.last_index:
            # The leader caps it at what we acknowledged, and acknowledged entries are durable.
            raise RemoteError(f"heartbeat commits index {m.leader_commit} beyond our last index "
                              f"{self.log.last_index}")
        self.log.commit_to(m.leader_commit)
        self.send(HeartbeatResponse(self.node_id, m.source, self.term, m.read_seq))

    # -- replication: leader side -----------------------------------------------------------------

    def handle_append_entries_response(self, m: AppendEntriesResponse) -> None:
        pr = self.progress.get(m.source)
        if pr is None or m.source == self.node_id:
            return
        if m.success and m.index > self.log.last_index:
            raise RemoteError(f"node {m.source} acknowledged index {m.index} beyond our last index "
                              f"{self.log.last_index}")
        pr.recent_active = True
        if not m.success:
            if pr.maybe_decrease(m.index, self._hint_next(m)):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self.send_append(m.source, allow_empty=True)
            return
        if pr.maybe_update(m.index) or (pr.state is ProgressState.PROBE and pr.match_index == m.index):
            if pr.state is ProgressState.PROBE or (pr.state is ProgressState.SNAPSHOT
                                                   and pr.match_index >= pr.pending_snapshot):
                pr.become_replicate()
            if self.maybe_commit():
                self._on_commit_advanced()
            elif not self.send_append(m.source, allow_empty=False) and pr.commit_sent < min(
                    pr.match_index, self.log.commit_index):
                self._send_heartbeat(m.source)  # the follower can now learn a commit it lacked
            if m.source == self.lead_transferee and pr.match_index == self.log.last_index:
                self._send_timeout_now(m.source)

    def _hint_next(self, m: AppendEntriesResponse) -> int:
        """Where to probe next from a rejection's hint: past our last entry of the follower's
        conflicting term if we have that term, else the first index the follower holds of it."""
        if m.conflict_term:
            ours = self.log.last_index_of_term(m.conflict_term, m.index)
            if ours is not None:
                return ours + 1
        return m.conflict_index

    def handle_install_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        pr = self.progress.get(m.source)
        if pr is None or m.source == self.node_id:
            return
        pr.recent_active = True
        snapshot = self.snapshot
        if (pr.state is not ProgressState.SNAPSHOT or m.index != pr.pending_snapshot
                or m.index != snapshot.meta.index or m.snapshot_term != snapshot.meta.term):
            return  # about a transfer we are no longer making
        if m.received > len(snapshot.data):
            raise RemoteError(f"node {m.source} claims {m.received} bytes of a {len(snapshot.data)}-byte snapshot")
        # NB: taken as is, even below what an earlier answer said: the follower may have lost
        # its copy and started over from a delayed first chunk. An answer that is merely old
        # costs one chunk re-sent, which the follower answers with what it really holds.
        pr.snapshot_offset = m.received
        pr.snapshot_stall = 0
        pr.probe_sent = False
        self._send_snapshot(m.source, pr)

    def handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.progress.get(m.source)
        if pr is None or m.source == self.node_id:
            return
        pr.recent_active = True
        if pr.state is ProgressState.SNAPSHOT:
            # NB: a chunk or its answer may be lost: resend after two quiet heartbeat rounds.
            pr.snapshot_stall += 1
            if pr.snapshot_stall < 2:
                return
            pr.snapshot_stall = 0
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.is_paused():
            pr.inflight.popleft()  # NB: lets a stream whose acks were lost make progress (etcd)
        if m.read_seq > pr.read_ack_seq:
            pr.read_ack_seq = m.read_seq
            self._release_confirmed_reads()
        if pr.match_index < self.log.last_index:
            self.send_append(m.source, allow_empty=True)

    def maybe_commit(self) -> bool:
        """Commit the highest index a quorum holds, if it is of the current term (Raft §5.4.2)."""
        acked = {node: pr.match_index for node, pr in self.progress.items()}
        index = committed_index(acked, self.membership.voters)
        if index > self.log.commit_index and self.log.term(index) == self.term:
            return self.log.commit_to(index)
        return False

    def _on_commit_advanced(self) -> None:
        # Tell followers at once, piggybacked on entries where there are any to send.
        for peer in self._peers():
            if not self.send_append(peer, allow_empty=False):
                self._send_heartbeat(peer)
        if self._reads_awaiting_commit and self.log.term(self.log.commit_index) == self.term:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for context, origin in waiting:
                self._register_read(context, origin)

    def send_append(self, to: NodeId, *, allow_empty: bool) -> bool:
        """Send `to` what it lacks, as far as flow control allows; returns whether anything was sent.

        In REPLICATE this pipelines several messages, each capped at max_msg_bytes of entries."""
        pr = self.progress[to]
        if pr.state is ProgressState.SNAPSHOT:
            return self._send_snapshot(to, pr)
        log = self.log
        sent = False
        while not pr.is_paused():
            prev_index = pr.next_index - 1
            prev_term = log.term(prev_index)
            if prev_term is None:
                # The entries it needs are compacted away: send the snapshot (Raft §7).
                return self._send_snapshot(to, pr) or sent
            last = log.last_index
            entries = log.entries(pr.next_index, last + 1, self.config.max_msg_bytes) if pr.next_index <= last else []
            if not entries and (sent or not allow_empty):
                return sent
            self.send(AppendEntries(self.node_id, to, self.term, Index(prev_index), prev_term, tuple(entries),
                                    log.commit_index))
            pr.commit_sent = max(pr.commit_sent, min(log.commit_index, prev_index + len(entries)))
            sent = True
            if entries:
                pr.sent_entries(entries[-1].index)
            else:
                pr.sent_probe()
                return sent
        return sent

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        """Send the next chunk of our snapshot, one chunk in flight at a time; returns whether sent."""
        snapshot = self.snapshot
        if pr.state is not ProgressState.SNAPSHOT or pr.pending_snapshot != snapshot.meta.index:
            pr.become_snapshot(snapshot.meta.index)  # a newer snapshot replaces one being sent
        if pr.probe_sent:
            return False
        data, offset = snapshot.data, pr.snapshot_offset
        end = min(len(data), offset + self.config.max_msg_bytes)
        self.send(InstallSnapshot(self.node_id, to, self.term, snapshot.meta, offset, bytes(data[offset:end]),
                                  end >= len(data)))
        pr.probe_sent = True
        return True

    def broadcast_heartbeat(self) -> None:
        for peer in self._peers():
            self._send_heartbeat(peer)

    def _send_heartbeat(self, peer: NodeId) -> None:
        pr = self.progress[peer]
        commit = min(pr.match_index, self.log.commit_index)
        pr.commit_sent = max(pr.commit_sent, commit)
        self.send(Heartbeat(self.node_id, peer, self.term, Index(commit), self._read_seq))

    def _peers(self) -> list[NodeId]:
        return [peer for peer in self.progress if peer != self.node_id]

    # -- linearizable reads (Raft §6.4) -----------------------------------------------------------

    def _register_read(self, context: bytes, origin: NodeId) -> None:
        if self.log.term(self.log.commit_index) != self.term:
            # The leader's commit index is only known to be current once it commits in its term.
            self._reads_awaiting_commit.append((context, origin))
            return
        read = _PendingRead(self.log.commit_index, context, origin, self._read_seq + 1)
        if self.membership.voters == {self.node_id}:
            self._answer_read(read)
            return
        self._pending_reads.append(read)
        self._needs_read_round = True

    def _release_confirmed_reads(self) -> None:
        acked = {peer: pr.read_ack_seq for peer, pr in self.progress.items()}
        acked[self.node_id] = self._read_seq
        confirmed = committed_index(acked, self.membership.voters)
        rounds = self._rounds_sent
        while rounds and rounds[0][0] <= confirmed:
            _, sent_at = rounds.popleft()
            self._lease_until = max(self._lease_until, sent_at + self._lease_ticks())
        while self._pending_reads and self._pending_reads[0].seq <= confirmed:
            self._answer_read(self._pending_reads.pop(0))

    def _answer_read(self, read: _PendingRead) -> None:
        if read.origin == self.node_id:
            self.read_states.append(ReadState(read.index, read.context))
        else:
            self.send(ReadIndexResponse(self.node_id, read.origin, self.term, read.index, read.context))

    # -- plumbing ---------------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        self._outbox.append(m)

    def _validate(self, m: Message) -> None:
        if m.target != self.node_id:
            raise RemoteError(f"message for node {m.target} delivered to node {self.node_id}")
        if m.source == NO_NODE or m.source == self.node_id:
            raise RemoteError(f"message claims impossible source {m.source}")
        if m.term < 0:
            raise RemoteError(f"negative term {m.term}")
        if isinstance(m, AppendEntries):
            if m.prev_index < 0 or m.prev_term < 0 or m.leader_commit < 0 or m.prev_term > m.term:
                raise RemoteError(f"AppendEntries with impossible prev ({m.prev_index}, {m.prev_term}) "
                                  f"or commit {m.leader_commit} in term {m.term}")
            expect_index, floor_term = m.prev_index + 1, m.prev_term
            for entry in m.entries:
                if entry.index != expect_index or not floor_term <= entry.term <= m.term:
                    raise RemoteError(f"AppendEntries entries are not contiguous after {m.prev_index} "
                                      f"with terms in [{m.prev_term}, {m.term}]")
                expect_index, floor_term = expect_index + 1, entry.term
        elif isinstance(m, InstallSnapshot):
            meta = m.meta
            if meta.index < 1 or not 1 <= meta.term <= m.term or m.offset < 0:
                raise RemoteError(f"InstallSnapshot with impossible index {meta.index}, term {meta.term} "
                                  f"or offset {m.offset} in term {m.term}")
            if not meta.membership.voters:
                raise RemoteError(f"InstallSnapshot at index {meta.index} carries no voters")
        elif isinstance(m, InstallSnapshotResponse):
            if m.index < 1 or m.received < 0:
                raise RemoteError(f"InstallSnapshotResponse with impossible index {m.index} or "
                                  f"received {m.received}")


#: Messages only a leader sends: they make a candidate of the same term a follower (Raft §5.2).
_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)
