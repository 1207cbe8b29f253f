"""A simulated network: latency, loss, duplication, reordering and (asymmetric) partitions.

Time is counted in the simulator's steps. Every random choice comes from the Random passed in.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from registry.raft import Message, NodeId

from .health import Renewal

#: What travels between nodes: the cores' messages, and the heartbeats followers forward.
Packet = Message | Renewal


@dataclass
class NetworkFaults:
    """Per-message fault probabilities and latency, in simulator steps."""

    drop: float = 0.0
    duplicate: float = 0.0
    long_delay: float = 0.0  # chance of a delay long enough to reorder across elections
    min_latency: int = 1
    max_latency: int = 3
    max_long_latency: int = 150


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    cut: int = 0


@dataclass
class SimNetwork:
    rng: random.Random
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    stats: NetworkStats = field(default_factory=NetworkStats)
    # Directed links that lose everything: (source, target). A partition is a set of these.
    blocked: set[tuple[NodeId, NodeId]] = field(default_factory=set)
    _queue: list[tuple[int, int, Packet]] = field(default_factory=list)
    _seq: int = 0

    def send(self, message: Packet, now: int) -> None:
        self.stats.sent += 1
        if (message.source, message.target) in self.blocked:
            self.stats.cut += 1
            return
        if self.rng.random() < self.faults.drop:
            self.stats.dropped += 1
            return
        copies = 1
        if self.rng.random() < self.faults.duplicate:
            self.stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            if self.rng.random() < self.faults.long_delay:
                delay = self.rng.randint(self.faults.max_latency, self.faults.max_long_latency)
            else:
                delay = self.rng.randint(self.faults.min_latency, self.faults.max_latency)
            # The random tiebreak shuffles messages due at the same step: reordering.
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self.rng.getrandbits(32) * 1_000_000 + self._seq, message))

    def due(self, now: int) -> list[Packet]:
        """Messages whose delivery time has come; a link cut since sending loses them too."""
        out: list[Packet] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            message = heapq.heappop(queue)[2]
            if (message.source, message.target) in self.blocked:
                self.stats.cut += 1
                continue
            out.append(message)
        self.stats.delivered += len(out)
        return out

    def in_flight(self) -> int:
        return len(self._queue)
