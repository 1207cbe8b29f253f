"""Raft's safety properties (Raft figure 3 and §5.4), checked as the simulation runs.

Each check looks only at what changed, so a whole run costs little more than the run itself.
A failed check raises Violation with a one-line description.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from registry.raft import Entry, Message, NodeId, Raft, ReadState, RequestVote, RequestVoteResponse


class Violation(Exception):
    """A safety property does not hold."""


@dataclass(frozen=True, slots=True)
class _Committed:
    term: int
    data: bytes
    kind: int
    commit_term: int  # the term of the leader that first had it committed


def _same(entry: Entry, record: _Committed) -> bool:
    return entry.term == record.term and entry.data == record.data and entry.kind == record.kind


class SafetyChecker:
    """Invariants, all of which must hold at every step of every run:

    - Election safety: at most one leader per term.
    - Vote safety: a node grants at most one vote per term, across crashes.
    - Log matching: two logs with an entry of the same index and term hold the same entry there
      and agree on every earlier entry (checked as: one payload per (index, term), and one
      predecessor term per (index, term), which gives the whole prefix by induction).
    - Leader completeness: a leader of term T holds every entry committed in a term < T.
    - Committed entries are never lost or changed: a node's commit index only ever covers the
      entries the cluster committed, and no node persists a different entry at a committed index.
    - Committed entries are safe: no node lacking the newest committed entry could gather a
      majority of votes (checked after every simulation step).
    - Durability: a restarted node remembers the vote it granted in its current term.
    - State machine safety: no two nodes apply different entries at one index; each node applies
      each index once, in order (from scratch again after a restart).
    - Monotonicity: term, commit index and applied index never go backwards within a life; a
      restarted node never returns below a term it had already sent messages in.
    - Linearizable reads: a read index covers every write committed before the read began and
      never exceeds what the cluster has committed.
    """

    def __init__(self) -> None:
        self.leaders: dict[int, NodeId] = {}
        self.votes: dict[tuple[NodeId, int], NodeId] = {}
        self.entry_at: dict[tuple[int, int], tuple[bytes, int, int]] = {}  # (index, term) -> (data, kind, prev term)
        self.committed: dict[int, _Committed] = {}
        self.max_committed = 0
        self.applied: dict[int, _Committed] = {}
        self.images: dict[int, bytes] = {}  # index -> digest of the state machine having applied up to it
        self._seen_leader: set[tuple[NodeId, int]] = set()
        self._node_term: dict[NodeId, int] = {}
        self._node_commit: dict[NodeId, int] = {}
        self._node_applied: dict[NodeId, int] = {}
        self._sent_term: dict[NodeId, int] = {}  # highest term each node has sent a message in
        self._last_vote: dict[NodeId, tuple[int, NodeId]] = {}  # (term, candidate) of the last vote sent

    # -- elections --------------------------------------------------------------------------------

    def _on_vote_sent(self, m: RequestVoteResponse) -> None:
        if not m.granted or m.pre_vote:
            return
        self._last_vote[m.source] = (m.term, m.target)
        key = (m.source, m.term)
        previous = self.votes.setdefault(key, m.target)
        if previous != m.target:
            raise Violation(f"vote safety: node {m.source} voted for {previous} and for {m.target} in term {m.term}")

    def on_leader(self, node: NodeId, raft: Raft) -> None:
        term = raft.term
        if (node, term) in self._seen_leader:
            return
        self._seen_leader.add((node, term))
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise Violation(f"election safety: nodes {other} and {node} both lead term {term}")
        log = raft.log
        for index, record in self.committed.items():
            if record.commit_term < term:
                have = log.term(index)
                if have is None and index <= log.snapshot_index:
                    continue
                if have is None or have != record.term or (
                        index > log.snapshot_index and not _same(log.entry(index), record)):
                    raise Violation(f"leader completeness: node {node} leads term {term} without entry "
                                    f"{index} (term {record.term}) committed in term {record.commit_term}")

    # -- logs -------------------------------------------------------------------------------------

    def on_persist(self, node: NodeId, entries: Sequence[Entry], prev_term: int, replaced: Sequence[Entry]) -> None:
        """`entries` were written to `node`'s disk right after an entry of term `prev_term`,
        replacing the entries `replaced` that the disk held at those indexes."""
        for entry in entries:
            key = (entry.index, entry.term)
            record = (entry.data, int(entry.kind), prev_term)
            known = self.entry_at.setdefault(key, record)
            if known != record:
                what = "predecessor term" if known[:2] == record[:2] else "payload"
                raise Violation(f"log matching: node {node} holds a different {what} at index {entry.index} "
                                f"term {entry.term} than another log")
            prev_term = entry.term
        # NB: a lagging node may legitimately write a stale leader's entry at an index that the
        # others have committed (it never held the committed one). Losing one it held is the bug.
        for old in replaced:
            committed = self.committed.get(old.index)
            if committed is not None and _same(old, committed):
                raise Violation(f"committed entry lost: node {node} overwrote committed entry {old.index} "
                                f"(term {old.term}) on its disk")

    def on_state(self, node: NodeId, raft: Raft) -> None:
        """Called after every step of `node`: term, commit and committed entries."""
        term = raft.term
        if term < self._node_term.get(node, 0):
            raise Violation(f"monotonicity: node {node} term went from {self._node_term[node]} to {term}")
        self._node_term[node] = term
        log = raft.log
        commit = log.commit_index
        before = self._node_commit.get(node, 0)
        if commit < before:
            raise Violation(f"monotonicity: node {node} commit index went from {before} to {commit}")
        if commit == before:
            return
        self._node_commit[node] = commit
        for index in range(max(before, log.snapshot_index) + 1, commit + 1):
            entry = log.entry(index)
            record = self.committed.get(index)
            if record is None:
                self.committed[index] = _Committed(entry.term, entry.data, int(entry.kind), term)
            elif not _same(entry, record):
                raise Violation(f"state machine safety: node {node} commits term {entry.term} at index {index} "
                                f"where term {record.term} was committed")
        self.max_committed = max(self.max_committed, commit)

    def on_sent(self, m: Message) -> None:
        pre_vote = isinstance(m, (RequestVote, RequestVoteResponse)) and m.pre_vote  # carries a future term
        if m.term > self._sent_term.get(m.source, 0) and not pre_vote:
            self._sent_term[m.source] = m.term
        if isinstance(m, RequestVoteResponse):
            self._on_vote_sent(m)

    def on_restart(self, node: NodeId, raft: Raft) -> None:
        """A node came back from its disk: nothing it promised or committed may be missing."""
        if raft.term < self._sent_term.get(node, 0):
            raise Violation(f"durability: node {node} restarted at term {raft.term}, below term "
                            f"{self._sent_term[node]} it had already sent messages in")
        vote = self._last_vote.get(node)
        if vote is not None and vote[0] == raft.term and raft.voted_for != vote[1]:
            raise Violation(f"durability: node {node} granted its vote in term {vote[0]} to {vote[1]} but "
                            f"restarted with vote {raft.voted_for or 'none'} in that term")
        self._node_term[node] = raft.term
        self._node_commit[node] = 0
        self._node_applied[node] = raft.log.applied_index
        self.on_state(node, raft)

    def newest_committed(self) -> tuple[int, int]:
        """(index, term) of the newest committed entry, (0, 0) before anything is committed."""
        if not self.max_committed:
            return 0, 0
        return self.max_committed, self.committed[self.max_committed].term

    def check_committed_safe(self, logs: Mapping[NodeId, tuple[int, int, bool]], voters: frozenset[NodeId]) -> None:
        """No node lacking the newest committed entry could win an election (the argument of
        Raft §5.4.3, checked directly). `logs` maps each node to its (last_index, last_term,
        holds the newest committed entry); a crashed node is represented by its disk.

        Committing an earlier term's entry by counting replicas (figure 8) breaks this at once,
        long before a later leader actually overwrites the entry."""
        index, term = self.newest_committed()
        if not index:
            return
        for node, (last_index, last_term, holds) in logs.items():
            if holds or node not in voters:
                continue
            electors = [v for v, (v_index, v_term, _) in logs.items() if v in voters
                        and (last_term > v_term or (last_term == v_term and last_index >= v_index))]
            if len(electors) > len(voters) // 2:
                raise Violation(f"committed entry at risk: node {node} lacks committed entry {index} "
                                f"(term {term}) yet nodes {sorted(electors)} would elect it")

    # -- state machine ----------------------------------------------------------------------------

    def on_apply(self, node: NodeId, entries: Sequence[Entry]) -> None:
        for entry in entries:
            expected = self._node_applied.get(node, 0) + 1
            if entry.index != expected:
                raise Violation(f"state machine safety: node {node} applied index {entry.index}, expected {expected}")
            self._node_applied[node] = entry.index
            committed = self.committed.get(entry.index)
            if committed is None or not _same(entry, committed):
                raise Violation(f"state machine safety: node {node} applied index {entry.index} (term {entry.term}) "
                                f"which is not the committed entry there")
            record = self.applied.setdefault(entry.index, committed)
            if record is not committed and not _same(entry, record):
                raise Violation(f"state machine safety: two nodes applied different entries at index {entry.index}")

    def on_image(self, node: NodeId, index: int, digest: bytes) -> None:
        """`node`'s state machine, having applied everything up to `index`, has this digest."""
        known = self.images.setdefault(index, digest)
        if known != digest:
            raise Violation(f"state machine safety: node {node}'s state at index {index} differs from "
                            f"another node's at the same index")

    def on_restored(self, node: NodeId, index: int) -> None:
        """`node` replaced its state machine with a snapshot of `index` (its image is checked apart)."""
        if index <= self._node_applied.get(node, 0):
            raise Violation(f"snapshot safety: node {node} restored a snapshot of index {index} after "
                            f"applying up to {self._node_applied[node]}")
        self._node_applied[node] = index

    def committed_term(self, index: int) -> int | None:
        record = self.committed.get(index)
        return record.term if record is not None else None

    # -- reads ------------------------------------------------------------------------------------

    def on_read(self, node: NodeId, state: ReadState, committed_at_start: int) -> None:
        if state.index < committed_at_start:
            raise Violation(f"linearizable read: node {node} got read index {state.index} but index "
                            f"{committed_at_start} was committed before the read began (stale read)")
        if state.index > self.max_committed:
            raise Violation(f"linearizable read: node {node} got read index {state.index} beyond anything "
                            f"committed ({self.max_committed})")

    # -- end of run -------------------------------------------------------------------------------

    def check_converged_log(self, node: NodeId, raft: Raft) -> None:
        log = raft.log
        for index in range(log.snapshot_index + 1, min(self.max_committed, log.last_index) + 1):
            if not _same(log.entry(index), self.committed[index]):
                raise Violation(f"committed entry lost: node {node} holds a different entry at committed index {index}")


@dataclass(frozen=True, slots=True)
class _Decision:
    node: NodeId
    term: int
    instance_id: str
    now_ms: int
    problem: str  # "" when the decision was sound


class HealthChecker:
    """Health's safety properties, for the runs that have TTL instances:

    - An expiry that commits was decided by a leader that (a) had led for at least the TTL at
      that moment, on its own clock restarted at its election (no expiry for silence it did not
      witness), and (b) had received no renewal of that instance within the TTL before it.
    - A transition changes an instance only if it names the instance's revision (news about an
      older incarnation changes nothing).

    Every node applying the same health history is state machine safety: the health table is
    part of each node's image (see ``SafetyChecker.on_image``).
    """

    def __init__(self) -> None:
        self._led_since: dict[tuple[NodeId, int], int] = {}  # (leader, term) -> its clock at election
        self._renewed: dict[tuple[NodeId, int, str], int] = {}  # (leader, term, instance) -> last renewal
        self._decisions: dict[int, _Decision] = {}
        self.expiries_checked = 0
        self.expiry_leaderships: set[tuple[NodeId, int]] = set()  # (leader, term) of each committed expiry

    def on_lead(self, node: NodeId, term: int, now_ms: int) -> None:
        self._led_since.setdefault((node, term), now_ms)

    def on_renewal(self, node: NodeId, term: int, instance_id: str, now_ms: int) -> None:
        """A renewal reached the tracker of `node`, leader of `term`."""
        self._renewed[(node, term, instance_id)] = now_ms

    def on_expiry_decided(self, decision: int, node: NodeId, term: int, instance_id: str, ttl_ms: int,
                          now_ms: int) -> None:
        """`node`, leader of `term`, proposes to turn `instance_id` critical at `now_ms` on its clock.
        Judged now, against what it had seen so far; a violation only if the entry commits."""
        led = self._led_since.get((node, term))
        renewed = self._renewed.get((node, term, instance_id))
        problem = ""
        if led is None:
            problem = f"node {node} was not leader of term {term}"
        elif now_ms - led < ttl_ms:
            problem = f"node {node} had led term {term} for only {now_ms - led} ms of a {ttl_ms} ms TTL"
        elif renewed is not None and now_ms - renewed < ttl_ms:
            problem = f"node {node} had received a renewal {now_ms - renewed} ms before, within the {ttl_ms} ms TTL"
        self._decisions[decision] = _Decision(node, term, instance_id, now_ms, problem)

    def on_expiry_committed(self, index: int, decision: int) -> None:
        record = self._decisions.get(decision)
        if record is None:
            raise Violation(f"health safety: the expiry committed at index {index} was never decided by a leader")
        self.expiries_checked += 1
        self.expiry_leaderships.add((record.node, record.term))
        if record.problem:
            raise Violation(f"health safety: expiry of {record.instance_id} committed at index {index} "
                            f"was decided too early: {record.problem}")

    def on_transition_applied(self, node: NodeId, index: int, instance_id: str, revision: int,
                              before: tuple[int, str] | None, after: tuple[int, str] | None) -> None:
        """`node` applied, at `index`, a transition of `instance_id` naming `revision`; its
        (revision, status) went from `before` to `after` (None: no such instance)."""
        if before != after and (before is None or before[0] != revision):
            raise Violation(f"health safety: node {node} applied a transition of {instance_id} for revision "
                            f"{revision} at index {index} to an instance at {before}")
