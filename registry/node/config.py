"""NodeConfig: everything one `registry agent` needs, from flags and/or a TOML file."""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any

from registry.naming import AddressError, format_hostport, parse_hostport, validate_node_name


#: The longest a leadership hand-over may take (SIGTERM on a leader, `registry leader transfer`).
#: systemd/registry*.service stop a node with TimeoutStopSec=30s; this leaves 10 s of it for the
#: rest of a shutdown (the DNS and prober children, the store). tests/systemd/test_units.py checks it.
MAX_HANDOVER_S = 20.0


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the key and what is accepted."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: Path
    raft: tuple[str, int]
    client: tuple[str, int]
    dns: tuple[str, int]
    peers: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # other initial members' raft addresses
    domain: str = "registry."
    cluster_id: str = ""  # empty: derived from the initial members' names
    tick_interval_ms: int = 50
    election_ticks: int = 8  # 0.4-0.8 s with 50 ms ticks (docs/performance.md: failover)
    heartbeat_ticks: int = 1
    request_timeout_s: float = 1.5  # below the client's per-server attempt timeout (2 s)
    max_db_bytes: int = 2 * 1024**3
    dns_ttl_s: int = 30  # TTL of positive answers
    dns_negative_ttl_s: int = 5  # the SOA minimum: how long resolvers cache NXDOMAIN/NODATA
    dns_max_udp: int = 1232  # EDNS0 buffer size honoured at most (RFC 9715's safe default)
    dns_max_stale_s: float = 30.0  # SERVFAIL after this long without contact with a leader
    # Snapshots (Raft §7): one is taken when this many entries were applied since the last one,
    # or when the entries applied since then hold this many bytes, whichever comes first; the
    # log keeps `snapshot_keep` entries behind it so that a follower only slightly behind
    # catches up from the log instead of a whole snapshot. Defaults: bench/README.md "snapshots".
    snapshot_entries: int = 20_000
    snapshot_bytes: int = 64 * 1024**2
    snapshot_keep: int = 5_000
    # `registry members add/remove` refuse (unless --force) a change that would lower the
    # cluster's fault tolerance (how many voters may fail) below this. NB: 1, not 0 (Consul
    # autopilot's min_quorum is off by default): the mistake it stops is shrinking a 3-voter
    # cluster to 2, or 5 to 4 then 3 in a hurry, which leaves a cluster that stops at the next
    # failure; a replacement done as add-then-remove never trips it, and a cluster of 1 or 2
    # voters (tolerance 0 already) is never blocked, since a change must LOWER the tolerance.
    min_fault_tolerance: int = 1

    def __post_init__(self) -> None:
        try:
            validate_node_name(self.name)
            for peer in self.peers:
                validate_node_name(peer)
        except AddressError as exc:
            raise ConfigError(str(exc)) from None
        if self.name in self.peers:
            raise ConfigError(f"--peer names this node itself ({self.name}); list only the other members")
        if not self.cluster_id:
            members = ",".join(sorted({self.name, *self.peers}))
            object.__setattr__(self, "cluster_id", hashlib.blake2b(members.encode(), digest_size=8).hexdigest())
        if not self.domain.endswith("."):
            object.__setattr__(self, "domain", self.domain + ".")
        if not 1 <= self.tick_interval_ms <= 10_000:
            raise ConfigError(f"tick_interval_ms must be 1-10000, got {self.tick_interval_ms}")
        if not self.heartbeat_ticks < self.election_ticks:
            raise ConfigError("election_ticks must be larger than heartbeat_ticks")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.max_db_bytes < 1024**2:
            raise ConfigError(f"max_db_bytes must be at least 1 MiB, got {self.max_db_bytes}")
        if not 0 <= self.dns_ttl_s <= 86400 or not 0 <= self.dns_negative_ttl_s <= 86400:
            raise ConfigError("dns_ttl_s and dns_negative_ttl_s must be 0-86400 seconds")
        if not 512 <= self.dns_max_udp <= 65535:
            raise ConfigError(f"dns_max_udp must be 512-65535 bytes, got {self.dns_max_udp}")
        if self.dns_max_stale_s <= 0:
            raise ConfigError(f"dns_max_stale_s must be positive, got {self.dns_max_stale_s}")
        if not 0 <= self.min_fault_tolerance <= 100:
            raise ConfigError(f"min_fault_tolerance must be 0-100 voters, got {self.min_fault_tolerance}")
        if self.snapshot_entries < 1 or self.snapshot_bytes < 64 * 1024 or self.snapshot_keep < 0:
            raise ConfigError("snapshot_entries must be >= 1, snapshot_bytes >= 65536 and snapshot_keep >= 0")

    @property
    def handover_timeout_s(self) -> float:
        """How long a leadership transfer may take before it is given up: twice the longest
        election timeout ((2 * election_ticks - 1) ticks; 1.5 s by default), at most MAX_HANDOVER_S."""
        return min(MAX_HANDOVER_S, 2 * (2 * self.election_ticks - 1) * self.tick_interval_ms / 1000)

    @property
    def members(self) -> list[str]:
        return sorted({self.name, *self.peers})

    def describe(self) -> str:
        return (f"node {self.name} raft {format_hostport(*self.raft)} client {format_hostport(*self.client)} "
                f"dns {format_hostport(*self.dns)} data {self.data_dir} peers "
                + (", ".join(f"{n}={format_hostport(*a)}" for n, a in sorted(self.peers.items())) or "none"))


#: Keys accepted in the TOML file: the agent's flags, with '-' as '_'.
FILE_KEYS = {f.name for f in fields(NodeConfig)} | {"peer"}


def parse_peer(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, address = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"invalid --peer {text!r}: expected NAME=HOST:PORT, e.g. n2=127.0.0.1:7002")
    try:
        return validate_node_name(name), parse_hostport(address, what=f"address of peer {name}")
    except AddressError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a setting: its key and what is wrong, with what is accepted."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


REQUIRED_KEYS = ("name", "data_dir", "raft", "client", "dns")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def _int_range(low: int, high: int | None, unit: str = "") -> Any:
    accepted = f"an integer {low}-{high}{unit}" if high is not None else f"an integer >= {low}{unit}"

    def check(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be {accepted}, got {value!r} ({type(value).__name__})"
        if value < low or (high is not None and value > high):
            return f"must be {accepted}, got {value}"
        return None
    return check


def _positive_number(unit: str) -> Any:
    def check(value: Any) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"must be a positive number of {unit}, got {value!r} ({type(value).__name__})"
        if not (value > 0 and math.isfinite(value)):
            return f"must be a positive number of {unit}, got {value}"
        return None
    return check


def _string(accepted: str, extra: Any = None) -> Any:
    def check(value: Any) -> str | None:
        if not isinstance(value, (str, PurePath)) or not str(value):
            return f"must be {accepted}, got {value!r}"
        return extra(str(value)) if extra is not None else None
    return check


def _node_name(value: str) -> str | None:
    try:
        validate_node_name(value)
    except AddressError as exc:
        return str(exc)
    return None


def _address(key: str) -> Any:
    def check(value: str) -> str | None:
        try:
            parse_hostport(value, what=f"{key} address")
        except AddressError as exc:
            return str(exc)
        return None
    return check


_CHECKS: dict[str, Any] = {
    "name": _string("a node name (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)",
                    _node_name),
    "data_dir": _string("a directory path"),
    "raft": _string("HOST:PORT, e.g. 127.0.0.1:7001 or [::1]:7001", _address("raft")),
    "client": _string("HOST:PORT, e.g. 127.0.0.1:7101 or [::1]:7101", _address("client")),
    "dns": _string("HOST:PORT, e.g. 0.0.0.0:53 or 127.0.0.1:8600", _address("dns")),
    "domain": _string("a DNS domain, e.g. registry"),
    "cluster_id": _string("a string (default: derived from the members' names)"),
    "tick_interval_ms": _int_range(1, 10_000, " (milliseconds)"),
    "election_ticks": _int_range(2, None, " (ticks), larger than heartbeat_ticks"),
    "heartbeat_ticks": _int_range(1, None, " (ticks), smaller than election_ticks"),
    "request_timeout_s": _positive_number("seconds"),
    "max_db_bytes": _int_range(1024**2, None, " (bytes; at least 1 MiB)"),
    "dns_ttl_s": _int_range(0, 86400, " (seconds)"),
    "dns_negative_ttl_s": _int_range(0, 86400, " (seconds)"),
    "dns_max_udp": _int_range(512, 65535, " (bytes)"),
    "dns_max_stale_s": _positive_number("seconds"),
    "snapshot_entries": _int_range(1, None, " (applied entries between two snapshots)"),
    "snapshot_bytes": _int_range(64 * 1024, None, " (bytes of applied entries between two snapshots; at least 64 KiB)"),
    "snapshot_keep": _int_range(0, None, " (entries kept in the log behind a snapshot)"),
    "min_fault_tolerance": _int_range(0, 100, " (voters that may fail; membership changes below it need --force)"),
}
_PEERS_ACCEPTED = ('a list of "NAME=HOST:PORT" strings, e.g. ["n2=10.0.0.2:7001"], '
                   'or a table NAME = "HOST:PORT"')


def _check_peers(value: Any, key: str, own_name: Any) -> tuple[list[Problem], dict[str, tuple[str, int]]]:
    problems: list[Problem] = []
    peers: dict[str, tuple[str, int]] = {}
    if isinstance(value, Mapping):
        items = [f"{k}={v}" if isinstance(v, str) else None for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [v if isinstance(v, str) else None for v in value]
    else:
        return [Problem(key, f"must be {_PEERS_ACCEPTED}, got {value!r}")], peers
    for item in items:
        if item is None:
            problems.append(Problem(key, f"every peer must be a NAME=HOST:PORT string; accepted: {_PEERS_ACCEPTED}"))
            continue
        try:
            name, address = parse_peer(item)
        except ConfigError as exc:
            problems.append(Problem(key, str(exc)))
            continue
        if name in peers:
            problems.append(Problem(key, f"peer {name} is listed twice; each other member once"))
        elif name == own_name:
            problems.append(Problem(key, f"names this node itself ({name}); list only the other members"))
        peers[name] = address
    return problems, peers


def check_settings(settings: Mapping[str, Any]) -> list[Problem]:
    """Every problem with these settings (keys as in the file: '_', not '-'), not just the first:
    unknown keys, types, ranges, addresses, peers, missing required keys, and the rules between keys."""
    problems: list[Problem] = []
    for key, value in settings.items():
        if value is None:
            continue
        if key in ("peer", "peers"):
            problems += _check_peers(value, key, settings.get("name"))[0]
        elif key not in _CHECKS:
            problems.append(Problem(key, "unknown key; accepted: " + ", ".join(sorted(FILE_KEYS))))
        else:
            message = _CHECKS[key](value)
            if message is not None:
                problems.append(Problem(key, message))
    if settings.get("peer") is not None and settings.get("peers") is not None:
        problems.append(Problem("peers", "give the peers once, as either 'peer' or 'peers'"))
    for key in REQUIRED_KEYS:
        if settings.get(key) is None or settings.get(key) == "":
            problems.append(Problem(key, "missing (required; in the file or as --" + key.replace("_", "-") + ")"))
    bad = {p.key for p in problems}
    election = settings.get("election_ticks", 8)
    heartbeat = settings.get("heartbeat_ticks", 1)
    if not bad & {"election_ticks", "heartbeat_ticks"} and election is not None and heartbeat is not None \
            and not heartbeat < election:
        problems.append(Problem("election_ticks", f"must be larger than heartbeat_ticks ({heartbeat}), got {election}"))
    bound: dict[str, tuple[str, int]] = {}
    for key in ("raft", "client", "dns"):
        if key not in bad and isinstance(settings.get(key), str):
            bound[key] = parse_hostport(settings[key])
    keys = list(bound)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            (host_a, port_a), (host_b, port_b) = bound[a], bound[b]
            if port_a == port_b and (host_a == host_b or {host_a, host_b} & _WILDCARD_HOSTS):
                problems.append(Problem(b, f"{format_hostport(host_b, port_b)} is also the {a} address; "
                                           "raft, client and dns need distinct ports"))
    return problems


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into the agent's settings (keys as flags, '-' or '_')."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    out: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm not in FILE_KEYS:
            unknown.append(key)
        out[norm] = value
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"accepted: {', '.join(sorted(FILE_KEYS))}")
    return out


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings, keys normalised ('-' as '_'), unknown keys kept (for check_settings).
    Raises OSError if it cannot be read, tomllib.TOMLDecodeError if it is not TOML."""
    return {key.replace("-", "_"): value for key, value in tomllib.loads(path.read_text()).items()}


def build(settings: Mapping[str, Any]) -> NodeConfig:
    """Make a NodeConfig from flag/file settings (strings as a user writes them)."""
    s = dict(settings)
    problems = check_settings(s)
    if problems:
        raise ConfigError("; ".join(map(str, problems)))
    peers_in = s.pop("peer", None) or s.pop("peers", None) or []
    if isinstance(peers_in, Mapping):
        peers_in = [f"{k}={v}" for k, v in peers_in.items()]
    if isinstance(peers_in, str) or not all(isinstance(p, str) for p in peers_in):
        raise ConfigError("peers must be a list of NAME=HOST:PORT strings")
    peers = dict(parse_peer(p) for p in peers_in)
    kwargs: dict[str, Any] = {"name": str(s.pop("name")), "data_dir": Path(s.pop("data_dir")), "peers": peers}
    for key in ("raft", "client", "dns"):
        try:
            kwargs[key] = parse_hostport(str(s.pop(key)), what=f"--{key} address")
        except AddressError as exc:
            raise ConfigError(str(exc)) from None
    kinds = {f.name: f.type for f in fields(NodeConfig)}
    for key, value in s.items():
        if value is None:
            continue
        if key not in kinds:
            raise ConfigError(f"unknown setting {key!r}")
        want = kinds[key]
        try:
            kwargs[key] = int(value) if want == "int" else float(value) if want == "float" else str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {key!r} must be {want}, got {value!r}") from None
    return NodeConfig(**kwargs)
