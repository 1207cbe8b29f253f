"""The leader's view of each follower's log: match/next indexes and flow control (etcd progress.go)."""

from __future__ import annotations

import enum
from collections import deque

from .types import Index


class ProgressState(enum.Enum):
    PROBE = "probe"  # next_index is a guess: one AppendEntries at a time until one is accepted
    REPLICATE = "replicate"  # next_index is known: stream optimistically, up to the in-flight window
    SNAPSHOT = "snapshot"  # needs entries the leader has compacted away: sending it a snapshot


class Progress:
    """Replication state of one follower (or learner) as the leader tracks it.

    Invariant: match_index < next_index.
    Invariant: in REPLICATE, `inflight` holds the last index of each unacknowledged message, ascending.
    Invariant: in SNAPSHOT, `pending_snapshot` is the index of the snapshot being sent and
    `snapshot_offset` the bytes of it the follower has confirmed; one chunk is in flight at a time.
    """

    __slots__ = ("match_index", "next_index", "state", "probe_sent", "inflight", "max_inflight",
                 "recent_active", "read_ack_seq", "commit_sent", "pending_snapshot", "snapshot_offset",
                 "snapshot_stall")

    def __init__(self, next_index: int, max_inflight: int) -> None:
        assert max_inflight >= 1
        self.match_index = Index(0)
        self.next_index = Index(next_index)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from since the last check-quorum round
        self.read_ack_seq = 0  # highest read-index round this follower has confirmed
        self.commit_sent = 0  # highest commit index sent to this follower
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.snapshot_stall = 0  # heartbeat rounds without news of the chunk in flight

    def __repr__(self) -> str:
        snapshot = (f", snapshot {self.pending_snapshot} at byte {self.snapshot_offset}"
                    if self.state is ProgressState.SNAPSHOT else "")
        return (f"Progress(match={self.match_index}, next={self.next_index}, {self.state.value}, "
                f"inflight={len(self.inflight)}, probe_sent={self.probe_sent}{snapshot})")

    def is_paused(self) -> bool:
        """Whether the leader must hold off sending this follower more entries."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def become_probe(self) -> None:
        """Fall back to one message at a time from next_index (which maybe_decrease has set)."""
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.next_index = Index(max(self.next_index, self.match_index + 1))

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.inflight.clear()
        self.next_index = Index(self.match_index + 1)

    def become_snapshot(self, index: int) -> None:
        """Start sending snapshot `index` from its first byte."""
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = index
        self.snapshot_offset = 0
        self.snapshot_stall = 0

    def sent_entries(self, last_index: int) -> None:
        """Record an AppendEntries carrying entries up to `last_index`."""
        if self.state is ProgressState.REPLICATE:
            self.next_index = Index(last_index + 1)
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def sent_probe(self) -> None:
        """Record an AppendEntries without entries (it still tests prev_index)."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """A success acknowledged `index`; returns whether match_index moved forward."""
        updated = index > self.match_index
        if updated:
            self.match_index = Index(index)
            self.probe_sent = False
        if index + 1 > self.next_index:
            self.next_index = Index(index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint_next: int) -> bool:
        """A rejection of prev_index `rejected`; returns False when the rejection is stale.

        `hint_next` is where the follower's conflict hint says to try next."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match_index:
                return False  # an old message, overtaken by a later success
            self.next_index = Index(max(self.match_index + 1, min(rejected, hint_next)))
            return True
        if self.next_index - 1 != rejected:
            return False  # answers a probe we have since replaced
        self.next_index = Index(max(self.match_index + 1, min(rejected, hint_next)))
        self.probe_sent = False
        return True
