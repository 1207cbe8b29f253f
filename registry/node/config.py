"""NodeConfig: everything one `registry agent` needs, from flags and/or a TOML file."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from registry.naming import AddressError, format_hostport, parse_hostport, validate_node_name


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
    election_ticks: int = 10  # 0.5-1 s with 50 ms ticks
    heartbeat_ticks: int = 1
    request_timeout_s: float = 1.5  # below the client's per-server attempt timeout (2 s)
    max_db_bytes: int = 2 * 1024**3
    dns_ttl_s: int = 30  # TTL of positive answers
    dns_negative_ttl_s: int = 5  # the SOA minimum: how long resolvers cache NXDOMAIN/NODATA
    dns_max_udp: int = 1232  # EDNS0 buffer size honoured at most (RFC 9715's safe default)
    dns_max_stale_s: float = 30.0  # SERVFAIL after this long without contact with a leader

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


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into the agent's settings (keys as flags, '-' or '_')."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm not in FILE_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}; accepted: {', '.join(sorted(FILE_KEYS))}")
        out[norm] = value
    return out


def build(settings: Mapping[str, Any]) -> NodeConfig:
    """Make a NodeConfig from flag/file settings (strings as a user writes them)."""
    s = dict(settings)
    missing = [k for k in ("name", "data_dir", "raft", "client", "dns") if not s.get(k)]
    if missing:
        raise ConfigError("missing required setting(s): " + ", ".join("--" + k.replace("_", "-") for k in missing))
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
