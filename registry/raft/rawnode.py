"""RawNode: the core's public API (etcd's RawNode), deterministic and without I/O."""

from __future__ import annotations

from dataclasses import dataclass

from .core import Config, Raft
from .errors import LocalError
from .messages import Message
from .progress import ProgressState
from .ready import Ready
from .types import Index, InitialState, Membership, NodeId, Role, SnapshotMeta, SoftState, Term


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match_index: Index
    next_index: Index
    state: ProgressState
    recent_active: bool


@dataclass(frozen=True, slots=True)
class BasicStatus:
    """What a caller asks on every request (etcd's BasicStatus): cheap, no per-peer detail."""

    node_id: NodeId
    role: Role
    term: Term
    leader_id: NodeId  # NO_NODE (0) when none is known
    commit_index: Index
    applied_index: Index
    lead_transferee: NodeId


@dataclass(frozen=True, slots=True)
class Status:
    node_id: NodeId
    role: Role
    term: Term
    leader_id: NodeId
    voted_for: NodeId
    commit_index: Index
    applied_index: Index
    first_index: Index
    last_index: Index
    snapshot_index: Index  # of the newest snapshot: what a follower too far behind is sent
    lead_transferee: NodeId
    progress: dict[NodeId, PeerStatus]  # empty unless this node leads
    membership: Membership


class RawNode:
    """Drive one Raft node: feed it ticks, messages and requests; drain Ready; advance.

    The same InitialState, Config (with the same seeded Random) and inputs always produce the
    same Ready sequence. `raft_class` lets the simulator run deliberately broken cores.
    """

    def __init__(self, config: Config, state: InitialState, *, raft_class: type[Raft] = Raft) -> None:
        self.raft = raft_class(config, state)
        self._prev_hard = state.hard_state
        self._prev_soft = SoftState(self.raft.leader_id, self.raft.role)
        self._outstanding: Ready | None = None

    # -- inputs -----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self.raft.tick()

    def step(self, message: Message) -> None:
        """Feed one message from a peer. Raises RemoteError (state unchanged) for a malformed one."""
        self.raft.step(message)

    def campaign(self) -> None:
        """Start an election now instead of waiting for the timeout (tests, bootstrap)."""
        if self.raft.role is not Role.LEADER:
            self.raft.campaign(transfer=False)

    def propose(self, data: bytes) -> Index:
        """Leader only: append `data` to the log and return its index. Raises NotLeader or ProposalDropped.

        The entry is committed when an entry at this index *and this term* is applied; if another
        entry shows up at the index, the proposal was lost with a leadership change."""
        return self.raft.propose(data)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; a ReadState with `context` comes out of a later Ready.

        Works on followers too (forwarded to the leader). May be lost with a leadership change:
        the caller retries after its own timeout. Raises NoLeader when no leader is known."""
        self.raft.read_index(context)

    def compact(self, index: Index, data: bytes, *, keep_entries: int = 0) -> SnapshotMeta:
        """The state machine, as of applied `index`, is serialised in `data` (Raft §7): the core
        sends it to followers too far behind, and forgets entries up to index - keep_entries.

        Returns the metadata to persist with `data`. Raises LocalError when `index` is not
        applied yet or older than the current snapshot."""
        return self.raft.compact(index, data, keep_entries)

    def has_lease(self) -> bool:
        """Whether this leader holds a leader lease (dissertation §6.4.1): it may answer a read
        from its applied state once that covers its commit index, with no read-index round.

        Measured in ticks: the caller must distrust it when its ticks fell behind its clock
        (a stalled loop), since the followers' ticks did not. See Raft.has_lease."""
        return self.raft.has_lease()

    def transfer_leadership(self, to: NodeId) -> None:
        """Leader only: hand over to `to`; proposals are refused until it finishes or times out."""
        self.raft.transfer_leadership(to)

    def transfer_candidate(self) -> NodeId | None:
        """Leader only: the voter other than itself to hand leadership to, the most caught up
        (highest match index; ties go to one heard from lately, then to the lowest id); None in
        a cluster of one voter. Raises NotLeader on a follower."""
        return self.raft.transfer_candidate()

    # -- outputs ----------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        raft = self.raft
        return bool(
            raft.has_pending_flush()
            or raft._installed is not None
            or raft._outbox
            or raft.read_states
            or raft.log.has_unstable()
            or raft.log.has_committed_to_apply()
            or raft.hard_state() != self._prev_hard
            or SoftState(raft.leader_id, raft.role) != self._prev_soft
        )

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise LocalError("ready() called again before advance() of the previous Ready")
        raft = self.raft
        raft.flush()
        hard = raft.hard_state()
        soft = raft.soft_state()
        snapshot = raft.take_installed()
        entries = tuple(raft.log.unstable_entries())
        hard_changed = hard != self._prev_hard
        term_or_vote_changed = hard_changed and (hard.term != self._prev_hard.term
                                                 or hard.voted_for != self._prev_hard.voted_for)
        must_sync = bool(entries) or snapshot is not None or term_or_vote_changed
        ready = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard_changed else None,
            entries=entries,
            messages=tuple(raft.take_messages()),
            committed=tuple(raft.log.committed_to_apply()),
            read_states=tuple(raft.take_read_states()),
            must_sync=must_sync,
            snapshot=snapshot,
            term_or_vote_changed=term_or_vote_changed,
        )
        self._prev_hard, self._prev_soft = hard, soft
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The caller has done everything `ready` asked for."""
        if ready is not self._outstanding:
            raise LocalError("advance() must be given the Ready most recently returned by ready()")
        self._outstanding = None
        if ready.entries:
            last = ready.entries[-1]
            self.raft.on_persisted(last.index, last.term)
        if ready.committed:
            self.raft.log.applied_to(ready.committed[-1].index)

    @property
    def membership(self) -> Membership:
        """The configuration this node acts on (the newest it knows of)."""
        return self.raft.membership

    def basic_status(self) -> BasicStatus:
        raft = self.raft
        return BasicStatus(raft.node_id, raft.role, raft.term, raft.leader_id, raft.log.commit_index,
                           raft.log.applied_index, raft.lead_transferee)

    def status(self) -> Status:
        raft, log = self.raft, self.raft.log
        return Status(
            node_id=raft.node_id, role=raft.role, term=raft.term, leader_id=raft.leader_id,
            voted_for=raft.voted_for, commit_index=log.commit_index, applied_index=log.applied_index,
            first_index=log.first_index, last_index=log.last_index,
            snapshot_index=raft.snapshot.meta.index, lead_transferee=raft.lead_transferee,
            progress={peer: PeerStatus(pr.match_index, pr.next_index, pr.state, pr.recent_active)
                      for peer, pr in raft.progress.items()},
            membership=raft.membership,
        )


