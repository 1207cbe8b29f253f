"""`registry agent` (one node in the foreground) and `registry up` (a local supervised cluster)."""

from __future__ import annotations

import logging
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer


def agent(
    name: Annotated[str | None, typer.Option(help="This node's name (permanent; its Raft id derives from it).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where the node keeps its log.")] = None,
    raft: Annotated[str | None, typer.Option(help="HOST:PORT for Raft traffic between nodes.")] = None,
    client: Annotated[str | None, typer.Option(help="HOST:PORT for clients (registry register, ...).")] = None,
    dns: Annotated[str | None, typer.Option(help="HOST:PORT for the DNS responder.")] = None,
    peer: Annotated[list[str] | None, typer.Option(help="NAME=HOST:PORT of another initial member (repeat).")] = None,
    domain: Annotated[str | None, typer.Option(help="DNS domain served (default registry).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with the same keys as these flags.")] = None,
    tick_interval_ms: Annotated[int | None, typer.Option(help="Raft tick length (default 50 ms).")] = None,
    election_ticks: Annotated[int | None, typer.Option(help="Minimum election timeout in ticks (default 8).")] = None,
    max_db_bytes: Annotated[int | None, typer.Option(help="LMDB map size in bytes (default 2 GiB).")] = None,
    dns_ttl: Annotated[int | None, typer.Option(help="TTL of DNS answers, seconds (default 30).")] = None,
    dns_negative_ttl: Annotated[int | None, typer.Option(
        help="TTL of negative DNS answers (the SOA minimum), seconds (default 5).")] = None,
    dns_max_udp: Annotated[int | None, typer.Option(
        help="Largest EDNS0 UDP answer, bytes (default 1232).")] = None,
    dns_max_stale: Annotated[float | None, typer.Option(
        help="Answer SERVFAIL after this many seconds without a leader (default 30).")] = None,
    snapshot_entries: Annotated[int | None, typer.Option(
        help="Take a snapshot and compact the log after this many applied entries (default 20000).")] = None,
    snapshot_bytes: Annotated[int | None, typer.Option(
        help="... or after this many bytes of applied entries, whichever first (default 64 MiB).")] = None,
    snapshot_keep: Annotated[int | None, typer.Option(
        help="Entries kept in the log behind a snapshot, for followers slightly behind (default 5000).")] = None,
    min_fault_tolerance: Annotated[int | None, typer.Option(
        help="Refuse membership changes that would lower the fault tolerance (voters that may fail) "
             "below this, unless --force (default 1).")] = None,
) -> None:
    """Run one registry node in the foreground until SIGTERM or SIGINT."""
    from registry.logformat import configure as configure_logging
    from registry.node import ConfigError, Node
    from registry.node.config import build, load_file

    configure_logging(logging.INFO)
    try:
        settings: dict[str, Any] = load_file(config) if config is not None else {}
        flags = {"name": name, "data_dir": data_dir, "raft": raft, "client": client, "dns": dns,
                 "peer": peer or None, "domain": domain, "tick_interval_ms": tick_interval_ms,
                 "election_ticks": election_ticks, "max_db_bytes": max_db_bytes, "dns_ttl_s": dns_ttl,
                 "dns_negative_ttl_s": dns_negative_ttl, "dns_max_udp": dns_max_udp,
                 "dns_max_stale_s": dns_max_stale, "snapshot_entries": snapshot_entries,
                 "snapshot_bytes": snapshot_bytes, "snapshot_keep": snapshot_keep,
                 "min_fault_tolerance": min_fault_tolerance}
        if peer:  # --peer replaces the file's peers, whichever key spells them
            settings.pop("peers", None)
            settings.pop("peer", None)
        settings.update({k: v for k, v in flags.items() if v is not None})  # flags override the file
        node_config = build(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        node = Node(node_config)
    except Exception as exc:  # start-up: a locked or foreign data dir, a busy port
        logging.getLogger("registry").error("cannot start node %s: %s", node_config.name, exc)
        raise typer.Exit(1) from None
    from registry.storage import StorageError

    node.install_signal_handlers()
    try:
        node.run()
    except StorageError as exc:  # e.g. the LMDB map is full: stop rather than acknowledge anything
        logging.getLogger("registry").error("node %s stopped: %s", node_config.name, exc)
        raise typer.Exit(1) from None


RAFT_PORT, CLIENT_PORT, DNS_PORT = 7000, 7100, 8599  # node i: 7000+i, 7100+i, 8599+i (8600 for n1)


def local_endpoints(i: int) -> dict[str, str]:
    return {"raft": f"127.0.0.1:{RAFT_PORT + i}", "client": f"127.0.0.1:{CLIENT_PORT + i}",
            "dns": f"127.0.0.1:{DNS_PORT + i}"}


def _port_busy(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _path_hint() -> list[str]:
    """What another terminal needs to find this `registry`: the virtualenv's activation line when
    it runs from one (a new terminal has not activated it), else a PATH line, unless it is on PATH
    already."""
    script_dir = Path(sys.executable).parent  # NB: not resolved: a venv's python is a symlink
    activate = script_dir / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return [f". {_shown(activate)}   # puts registry on PATH"]
    found = shutil.which("registry")
    if found is not None and Path(found).parent.resolve() == script_dir.resolve():
        return []
    return [f"export PATH={_shown(script_dir)}:$PATH   # puts registry on PATH"]


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when under it (``.venv/bin/activate``), for a shell."""
    try:
        path = path.absolute().relative_to(Path.cwd())
    except ValueError:
        path = path.absolute()
    return shlex.quote(str(path))


def up(
    nodes: Annotated[int, typer.Option(min=1, max=9, help="How many nodes (1-9).")] = 3,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Parent of the nodes' data directories.")] = Path(".registry"),
) -> None:
    """Start a local cluster of separate agent processes, supervise them, stop them all on Ctrl-C."""
    names = [f"n{i}" for i in range(1, nodes + 1)]
    endpoints = {name: local_endpoints(i) for i, name in enumerate(names, 1)}
    busy = []
    for name, ends in endpoints.items():
        for kind_name, address in ends.items():
            port = int(address.rsplit(":", 1)[1])
            kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if kind_name == "dns" else [socket.SOCK_STREAM]
            if any(_port_busy(port, k) for k in kinds):
                busy.append(f"{address} ({kind_name} of {name})")
    if busy:
        typer.echo("error: ports in use: " + ", ".join(busy) + ". Is a cluster already running? "
                   "Try `registry status`, or stop the other process.", err=True)
        raise typer.Exit(1)
    data_dir.mkdir(parents=True, exist_ok=True)

    def command(name: str) -> list[str]:
        ends = endpoints[name]
        argv = [sys.executable, "-m", "registry", "agent", "--name", name, "--data-dir", str(data_dir / name),
                "--raft", ends["raft"], "--client", ends["client"], "--dns", ends["dns"]]
        for other in names:
            if other != name:
                argv += ["--peer", f"{other}={endpoints[other]['raft']}"]
        return argv

    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Any] = {}
    started: dict[str, float] = {}
    backoff: dict[str, float] = dict.fromkeys(names, 1.0)
    restart_at: dict[str, float] = {}

    def start(name: str) -> None:
        if name not in logs:
            logs[name] = open(data_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open while supervised)
        procs[name] = subprocess.Popen(command(name), stdout=logs[name], stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        started[name] = time.monotonic()

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name in names:
        start(name)
    servers = ",".join(endpoints[n]["client"] for n in names)
    typer.echo(f"registry: local cluster of {nodes} node(s), data in {data_dir}/, logs in {data_dir}/NAME.log")
    typer.echo(f"{'node':<6}{'raft':<18}{'client':<18}{'dns':<18}")
    for name in names:
        ends = endpoints[name]
        typer.echo(f"{name:<6}{ends['raft']:<18}{ends['client']:<18}{ends['dns']:<18}")
    typer.echo("\nTry, in another terminal:")
    for line in _path_hint():
        typer.echo(f"  {line}")
    typer.echo("  registry register web 10.0.0.5:8080 --tag primary")
    typer.echo("  registry services web")
    typer.echo("  registry status")
    typer.echo(f"  dig @127.0.0.1 -p {endpoints[names[0]]['dns'].rsplit(':', 1)[1]} web.service.registry SRV")
    if servers != ",".join(local_endpoints(i)["client"] for i in range(1, 4)):
        typer.echo(f"  (with REGISTRY_SERVERS={servers})")
    typer.echo("Ctrl-C stops the cluster; its data stays for the next `registry up`.")
    try:
        while not stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for name in names:
                proc = procs.get(name)
                if proc is not None and proc.poll() is not None:
                    ran = now - started[name]
                    if ran > 30:
                        backoff[name] = 1.0
                    delay = backoff[name]
                    backoff[name] = min(30.0, delay * 2)
                    typer.echo(f"registry: {name} exited with status {proc.returncode} after {ran:.1f}s; "
                               f"restarting in {delay:.0f}s (see {data_dir}/{name}.log)", err=True)
                    procs.pop(name)
                    restart_at[name] = now + delay
                elif proc is None and now >= restart_at.get(name, 0):
                    start(name)
                    typer.echo(f"registry: restarted {name}", err=True)
    finally:
        typer.echo("registry: stopping the cluster", err=True)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                typer.echo(f"registry: {name} did not stop within 10 s; killing it", err=True)
                proc.kill()
                proc.wait()
        for handle in logs.values():
            handle.close()
