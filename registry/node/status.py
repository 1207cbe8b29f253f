"""What a node says about itself: `registry status`, systemd's STATUS=, and the DNS child's staleness input.

Everything here reads the core through ``RawNode``'s public status (``status()``, or the cheap
``basic_status()``), never its internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry.naming import format_hostport
from registry.raft import BasicStatus, NodeId, RawNode, Role
from registry.storage import LmdbStorage
from registry_dns.process import DnsProcess

from .config import NodeConfig
from .replica import Replica
from .sdnotify import Notifier
from .snapshotter import Snapshotter


@dataclass
class NodeStats:
    remote_errors: int = 0
    readies: int = 0
    fsyncs: int = 0
    applied_entries: int = 0
    last_contact: dict[NodeId, float] = field(default_factory=dict)  # peer -> clock() of its last message


def leader_contact_age(basic: BasicStatus, last_contact: dict[NodeId, float], now: float) -> float | None:
    """Seconds since this node last heard from its leader: 0 on the leader, None with no leader known."""
    if basic.role is Role.LEADER:
        return 0.0
    if basic.leader_id and basic.leader_id in last_contact:
        return now - last_contact[basic.leader_id]
    return None


def describe(basic: BasicStatus, names: dict[NodeId, str]) -> str:
    """One line for systemd's STATUS= and the log: role, term and leader."""
    leader = names.get(basic.leader_id, "?") if basic.leader_id else "none"
    return f"{basic.role.value}, term {basic.term}, leader {leader}"


class SystemdStatus:
    """STATUS= for systemd (Type=notify), sent when role, term or leader changed."""

    def __init__(self, notifier: Notifier, names: dict[NodeId, str]) -> None:
        self._notifier = notifier
        self._names = names
        self._sent: tuple[Role, int, NodeId] | None = None

    def ready(self, basic: BasicStatus) -> None:
        self._sent = (basic.role, basic.term, basic.leader_id)
        self._notifier.ready(describe(basic, self._names))

    def maybe_update(self, basic: BasicStatus) -> None:
        now = (basic.role, basic.term, basic.leader_id)
        if now != self._sent:
            self._sent = now
            self._notifier.status(describe(basic, self._names))


class StatusReport:
    """`registry status --json` of one node (docs/client-protocol.md, the `status` op)."""

    def __init__(self, *, config: NodeConfig, names: dict[NodeId, str], raw: RawNode, replica: Replica,
                 storage: LmdbStorage, snapshots: Snapshotter, stats: NodeStats,
                 dns: Callable[[], DnsProcess | None], clock: Callable[[], float] = time.monotonic,
                 sections: dict[str, Callable[[], Any]] | None = None) -> None:
        self._config = config
        self._names = names
        self._raw = raw
        self._replica = replica
        self._storage = storage
        self._snapshots = snapshots
        self._stats = stats
        self._dns = dns
        self._clock = clock
        self._sections = sections or {}  # more rooms' own reports, by key (e.g. "health")

    def __call__(self) -> dict[str, Any]:
        st = self._raw.status()
        now = self._clock()
        config = self._config
        peers: dict[str, Any] = {}
        for node_id, name in sorted(self._names.items(), key=lambda kv: kv[1]):
            if node_id == st.node_id:
                continue
            contact = self._stats.last_contact.get(node_id)
            progress = st.progress.get(node_id)
            peers[name] = {
                "match": progress.match_index if progress else None,
                "next": progress.next_index if progress else None,
                "state": progress.state.value if progress else None,
                "last_contact_ms": None if contact is None else int((now - contact) * 1000),
            }
        dns = self._dns()
        return {
            "node": config.name, "node_id": st.node_id, "role": st.role.value, "term": st.term,
            "leader": self._names.get(st.leader_id) if st.leader_id else None,
            "commit": st.commit_index, "applied": self._replica.applied_index, "last_index": st.last_index,
            "raft": format_hostport(*config.raft), "client": format_hostport(*config.client),
            "dns": format_hostport(*config.dns), "peers": peers,
            "dns_stats": _dns_summary(dns.stats()) if dns is not None else None,
            "snapshot": self._snapshot_status(st.first_index, st.snapshot_index),
            **{key: report() for key, report in self._sections.items()},
        }

    def _snapshot_status(self, first_index: int, snapshot_index: int) -> dict[str, Any]:
        stored = self._storage.stats()
        out = {"index": snapshot_index, "bytes": stored.snapshot_bytes, "stored_index": stored.snapshot_index,
               "log_first_index": first_index, "stored_first_index": stored.first_index,
               "db_bytes": stored.used_bytes, "applied_term": self._replica.applied_term}
        out.update(self._snapshots.status())
        return out


def _dns_summary(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("alive", "answered", "stale", "stale_queries", "dropped", "errors", "qps", "applied_index",
            "leader_contact_age_s", "report_age_s", "error")
    return {k: stats.get(k) for k in keys if k in stats}
