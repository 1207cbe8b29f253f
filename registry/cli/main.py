"""Entry point of the ``registry`` console script (``registry.cli.main:app``)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

import registry
from registry.cli import cluster_cmds, config_cmds, health_cmds, leader_cmds, member_cmds, snapshot_cmds
from registry.cli.durations import duration_option
from registry.cli.options import JsonOption, ServersOption, TimeoutOption, command_group, open_client
from registry.cli.output import echo_json, echo_table, fail, reason, registered_changes, registered_line
from registry.naming import INSTANCE_EXAMPLES, AddressError, parse_hostport

if TYPE_CHECKING:
    from registry.client import NodeStatus
    from registry.sim import SimResult

app = command_group("registry", "Service-discovery registry: Raft over ZeroMQ, an LMDB log, a DNS responder.")

# How often the sweep reports progress on stderr: often on a terminal (one overwritten line),
# rarely in a log file.
_PROGRESS_TTY_S = 0.2
_PROGRESS_LOG_S = 10.0


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"registry {registry.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Service-discovery registry: Raft over ZeroMQ, an LMDB log, a DNS responder."""


app.command()(cluster_cmds.agent)
app.command()(cluster_cmds.up)
app.add_typer(config_cmds.config_app, name="config")
app.add_typer(snapshot_cmds.snapshot_app, name="snapshot")
app.add_typer(leader_cmds.leader_app, name="leader")
app.add_typer(member_cmds.members_app, name="members")
app.command(name="pass")(health_cmds.pass_)
app.command()(health_cmds.explain)


@app.command()
def sim(
    seed: Annotated[int, typer.Option(min=0, help="First seed to run.")] = 0,
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds: SEED .. SEED+SEEDS-1.")] = 1,
    nodes: Annotated[int, typer.Option(min=1, max=9, help="Cluster size (3 or 5 typically).")] = 3,
    mutant: Annotated[
        str | None, typer.Option(help="Run a deliberately broken core, to see the checkers fail.")
    ] = None,
    trace: Annotated[
        bool, typer.Option("--trace", help="Print the simulation's events (needs --seeds 1).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the seeded cluster simulator, which checks Raft's safety and liveness.

    Exit status: 0 if every run is ok, 1 if any run found a violation, 2 on bad arguments.
    """
    if trace and seeds != 1:
        raise typer.BadParameter("--trace needs a single run (--seeds 1).", param_hint="'--trace'")

    from registry.sim import MUTANTS, run  # NB: lazy, so `registry --help` stays fast.

    if mutant is not None and mutant not in MUTANTS:
        accepted = "\n".join(f"  {name}: {about}" for name, about in sorted(MUTANTS.items()))
        raise typer.BadParameter(
            f"unknown mutant {mutant!r}. Accepted names:\n{accepted}", param_hint="'--mutant'"
        )

    trace_line: Callable[[str], None] | None = None
    if trace:
        # With --json, stdout carries only the JSON object.
        trace_line = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo

    started = time.monotonic()
    try:
        if seeds == 1:
            results = [_run_one(run, seed, nodes, mutant, trace_line)]
        else:
            results = _sweep(run, range(seed, seed + seeds), nodes, mutant, started)
        elapsed_s = time.monotonic() - started

        if as_json:
            report = _report(seed, seeds, nodes, mutant, results, elapsed_s)
            typer.echo(json.dumps(report, indent=2))
        elif seeds == 1:
            _echo_one(results[0])
        else:
            _echo_summary(results, elapsed_s)
    except BrokenPipeError:
        # The reader went away (`registry sim --trace | head`): stop quietly, like other tools.
        # NB: point stdout at devnull so that the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


def _run_one(
    run: Callable[..., SimResult],
    seed: int,
    nodes: int,
    mutant: str | None,
    trace: Callable[[str], None] | None = None,
) -> SimResult:
    try:
        return run(seed, nodes=nodes, mutant=mutant, trace=trace)
    except BrokenPipeError:
        raise
    except Exception:
        # NB: a crash in the simulator is a bug too; name the seed before the traceback.
        replay = f"registry sim --seed {seed} --nodes {nodes}"
        if mutant is not None:
            replay += f" --mutant {mutant}"
        typer.echo(f"seed {seed} raised; replay: {replay}", err=True)
        raise


def _sweep(
    run: Callable[..., SimResult],
    seed_range: range,
    nodes: int,
    mutant: str | None,
    started: float,
) -> list[SimResult]:
    """Run every seed, reporting progress and each failure on stderr as soon as it is known."""
    interactive = sys.stderr.isatty()
    every_s = _PROGRESS_TTY_S if interactive else _PROGRESS_LOG_S
    results: list[SimResult] = []
    failed = 0
    last_report = started
    mid_line = False  # a terminal progress line is showing and needs a newline before more
    for seed in seed_range:
        result = _run_one(run, seed, nodes, mutant)
        results.append(result)
        now = time.monotonic()
        if not result.ok:
            failed += 1
            # NB: printed now, so a sweep that is interrupted still names its failing seeds.
            prefix = "\n" if mid_line else ""
            typer.echo(f"{prefix}FAILED seed {result.seed}: {result.violation}", err=True)
            typer.echo(f"  replay: {result.replay}", err=True)
            mid_line = False
        if now - last_report >= every_s:
            last_report = now
            line = f"{len(results)}/{len(seed_range)} seeds, {failed} failed, {now - started:.0f}s"
            typer.echo(f"\r{line}" if interactive else line, err=True, nl=not interactive)
            mid_line = interactive
    if mid_line:
        typer.echo("", err=True)
    return results


def _result_dict(result: SimResult) -> dict[str, Any]:
    return {
        "seed": result.seed,
        "nodes": result.nodes,
        "mutant": result.mutant,
        "ok": result.ok,
        "violation": result.violation,
        "ticks": result.ticks,
        "stats": dict(result.stats),
        "replay": result.replay,
    }


def _report(
    seed: int,
    seeds: int,
    nodes: int,
    mutant: str | None,
    results: list[SimResult],
    elapsed_s: float,
) -> dict[str, Any]:
    failures = [_result_dict(r) for r in results if not r.ok]
    report: dict[str, Any] = {
        "seed": seed,
        "seeds": seeds,
        "nodes": nodes,
        "mutant": mutant,
        "runs": len(results),
        "passed": len(results) - len(failures),
        "failed": len(failures),
        "elapsed_s": round(elapsed_s, 3),
        "failures": failures,
    }
    if seeds == 1:
        report["result"] = _result_dict(results[0])
    return report


def _format_stats(stats: Any) -> list[str]:
    text = " ".join(f"{key}={value}" for key, value in sorted(stats.items())) or "(none)"
    return textwrap.wrap(text, width=88, initial_indent="  stats: ", subsequent_indent=" " * 9)


def _echo_one(result: SimResult) -> None:
    where = f"seed {result.seed}, {result.nodes} nodes"
    if result.mutant is not None:
        where += f", mutant {result.mutant}"
    if result.ok:
        typer.echo(f"{where}: ok after {result.ticks} ticks")
    else:
        typer.echo(f"{where}: VIOLATION after {result.ticks} ticks")
        typer.echo(f"  {result.violation}")
    for line in _format_stats(result.stats):
        typer.echo(line)
    typer.echo(f"  replay: {result.replay}")


def _echo_summary(results: list[SimResult], elapsed_s: float) -> None:
    failures = [r for r in results if not r.ok]
    rows = [
        ("runs", str(len(results))),
        ("passed", str(len(results) - len(failures))),
        ("failed", str(len(failures))),
        ("elapsed", f"{elapsed_s:.1f}s"),
    ]
    width = max(len(value) for _, value in rows)
    for label, value in rows:
        typer.echo(f"{label:<8} {value:>{width}}")
    if failures:
        typer.echo("failures:")
        for result in failures:
            typer.echo(f"  seed {result.seed}: {result.violation}")
            typer.echo(f"    {result.replay}")


# ---------------------------------------------------------------------------------------------
# Client commands: register, deregister, services, status. Each parses its arguments, calls
# registry.client.Client and prints. Exit status: 0 done, 1 the cluster could not do it (the
# reason on stderr), 2 a usage or validation error (nothing was sent).


def _parse_meta(values: list[str] | None) -> list[str] | None:
    seen: set[str] = set()
    for text in values or ():
        key, sep, _ = text.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"{text!r} is not KEY=VALUE (e.g. --meta zone=a; the value may be empty)",
                param_hint="'--meta'",
            )
        if key in seen:
            raise typer.BadParameter(f"key {key!r} given twice", param_hint="'--meta'")
        seen.add(key)
    return values


def _parse_hostport_argument(text: str) -> str:
    try:
        parse_hostport(text, examples=INSTANCE_EXAMPLES)
    except AddressError as e:
        raise typer.BadParameter(str(e), param_hint="HOST:PORT") from None
    return text


@app.command()
def register(
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help="Service name: a DNS label, e.g. web.")
    ],
    hostport: Annotated[
        str,
        typer.Argument(
            metavar="HOST:PORT",
            callback=_parse_hostport_argument,
            help="The instance's address: 10.0.0.5:8080, [2001:db8::5]:8080 or host:8080.",
            show_default=False,
        ),
    ],
    instance_id: Annotated[
        str | None,
        typer.Option("--id", help="Instance id. Default: derived from service, address and port."),
    ] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", metavar="TAG", help="A tag (a DNS label); repeatable.")
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", metavar="KEY=VALUE", callback=_parse_meta,
                     help="Metadata; repeatable, at most 64 keys."),
    ] = None,
    ttl_ms: Annotated[
        str | None,
        typer.Option("--ttl", metavar="DURATION", callback=duration_option, show_default=False,
                     help="A TTL check: the instance turns critical unless renewed within this "
                     "(registry pass, --keepalive); 1s to 24h."),
    ] = None,
    deregister_after_ms: Annotated[
        str | None,
        typer.Option("--deregister-after", metavar="DURATION", callback=duration_option, show_default=False,
                     help="Remove the instance once it has been critical this long; 1m to 30 days."),
    ] = None,
    check: Annotated[
        str | None,
        typer.Option("--check", metavar="tcp|http://HOST:PORT/path", show_default=False,
                     help="An active check run by the cluster: tcp connects to HOST:PORT, http GETs the URL "
                     "(2xx is healthy)."),
    ] = None,
    interval_ms: Annotated[
        str | None,
        typer.Option("--interval", metavar="DURATION", callback=duration_option, show_default=False,
                     help="With --check: time between probes; 1s to 24h. Default 1s."),
    ] = None,
    check_timeout_ms: Annotated[
        str | None,
        typer.Option("--check-timeout", metavar="DURATION", callback=duration_option, show_default=False,
                     help="With --check: one probe's limit; 100ms to the interval. Default 1s. (--timeout is how long this command waits for the cluster.)"),
    ] = None,
    failures: Annotated[
        int | None,
        typer.Option("--failures", metavar="N", show_default=False,
                     help="With --check: critical after N consecutive failed probes; 1-100. Default 3."),
    ] = None,
    successes: Annotated[
        int | None,
        typer.Option("--successes", metavar="N", show_default=False,
                     help="With --check: passing again after N consecutive good probes; 1-100. Default 2."),
    ] = None,
    keepalive: Annotated[
        bool,
        typer.Option("--keepalive", help="With --ttl: stay in the foreground renewing every TTL/3 until "
                     "SIGTERM or Ctrl-C (exit 0), for a service's own unit file."),
    ] = False,
    deregister_on_exit: Annotated[
        bool,
        typer.Option("--deregister-on-exit", help="With --keepalive: deregister the instance when stopped."),
    ] = False,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Register an instance of SERVICE, or replace it; returns once the cluster committed it.

    A registration is the instance's whole definition: registering an existing id (the same SERVICE and HOST:PORT, or the same --id) REPLACES its address, port, tags and meta, so tags and meta not given again are removed (as Consul's agent register or etcd's put).

    Prints the instance id, the commit index and, for a replaced instance, what changed (e.g. "tags primary -> (none)").

    Health: --ttl 10s makes the instance critical (out of DNS) unless renewed within 10 s; --check tcp or --check http://HOST:PORT/path has the cluster probe it every --interval, critical after --failures failed probes, passing after --successes good ones. --deregister-after removes an instance that stays critical that long. Durations are a whole number with a unit: 500ms, 10s, 5m, 1h.

    --keepalive registers, then renews every TTL/3 in the foreground, printing one line per state change; it rides out leader changes and unreachable nodes. SIGTERM or Ctrl-C stops it (exit 0; --deregister-on-exit deregisters first). If the instance is deregistered by someone else it exits 1 and never registers it again.

    Exit status: 0 committed (or a keepalive stopped), 1 the cluster could not do it (or a keepalive's instance is gone), 2 bad arguments.

    After exit 1 the outcome may be unknown: running the same command again is safe.
    """
    from registry.client import RegistryError

    check_map = health_cmds.check_from_options(
        ttl_ms=ttl_ms, check=check, interval_ms=interval_ms, check_timeout_ms=check_timeout_ms,  # type: ignore[arg-type]
        failures=failures, successes=successes, deregister_after_ms=deregister_after_ms,  # type: ignore[arg-type]
        keepalive=keepalive, deregister_on_exit=deregister_on_exit)
    host, port = parse_hostport(hostport)
    meta_map = dict(item.partition("=")[::2] for item in meta or ())
    with open_client(servers, timeout_s) as client, health_cmds.held_stop_signals() as wait:
        try:
            got = client.register(service, host, port, id=instance_id, tags=tags or (), meta=meta_map,
                                  check=check_map)
        except RegistryError as e:
            fail(e)
        service = service.lower()  # NB: names are case-insensitive; the catalogue keeps lowercase
        if as_json and keepalive:
            typer.echo(json.dumps({"event": "registered", "service": service, "instance_id": got.instance_id,
                                   "created": got.created, "index": got.index}, sort_keys=True))
        elif as_json:
            previous = None if got.previous is None else dataclasses.asdict(got.previous)
            echo_json({"service": service, "instance_id": got.instance_id, "created": got.created,
                       "index": got.index, "previous": previous, "changes": registered_changes(got)})
        else:
            typer.echo(registered_line(service, got))
        if keepalive:
            assert ttl_ms is not None
            raise typer.Exit(health_cmds.keep_alive(client, service, got.instance_id, ttl_ms,  # type: ignore[arg-type]
                                                    wait=wait, deregister_on_exit=deregister_on_exit,
                                                    as_json=as_json))


class _DeregisterBy(str, enum.Enum):
    auto = "auto"
    id = "id"
    address = "address"


@app.command()
def deregister(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="Service name.")],
    target: Annotated[
        str,
        typer.Argument(
            metavar="ID|HOST:PORT",
            help="An instance id, or the address of the instances to remove. Text ending in "
            "':' and digits is taken as HOST:PORT (see --by).",
            show_default=False,
        ),
    ],
    by: Annotated[
        _DeregisterBy,
        typer.Option("--by", help="Read ID|HOST:PORT as an instance id or an address."),
    ] = _DeregisterBy.auto,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Remove instances of SERVICE, by instance id or by address; returns once committed.

    Exit status: 0 removed, 1 nothing matched or the cluster could not do it, 2 bad arguments.
    """
    from registry.client import RegistryError

    with open_client(servers, timeout_s) as client:
        try:
            got = client.deregister(service, target, by=by.value)
        except RegistryError as e:
            fail(e, hint="ID|HOST:PORT" if getattr(e, "field", None) != "service" else None)
    service = service.lower()
    if as_json:
        echo_json({"service": service, "removed": list(got.removed), "index": got.index})
    else:
        typer.echo(f"deregistered {service} instance{'s' if len(got.removed) != 1 else ''} "
                   f"{', '.join(got.removed)}, committed at index {got.index}")


@app.command()
def services(
    service: Annotated[
        str | None, typer.Argument(metavar="SERVICE", help="Only this service.", show_default=False)
    ] = None,
    stale: Annotated[
        bool,
        typer.Option("--stale", help="Answer from the node's applied state, without confirming "
                     "it is current (faster; works without a leader)."),
    ] = False,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """List services and their instances, with each one's health: a table, or --json.

    STATUS is passing or critical (critical instances are left out of DNS); SINCE is when it last changed (or was registered); CHECK is how its health is decided (ttl 10s, tcp every 1s, http every 1s, - for none). --json carries every field (since_ms: milliseconds since the epoch).

    Exit status: 0 listed, 1 the cluster could not answer, 2 bad arguments.
    """
    from registry.client import RegistryError

    with open_client(servers, timeout_s) as client:
        try:
            got = client.services(service, stale=stale)
        except RegistryError as e:
            fail(e)
    if as_json:
        echo_json({
            "index": got.index,
            "services": {
                name: [dataclasses.asdict(i) for i in instances]
                for name, instances in got.items()
            },
        })  # fmt: skip
        return
    rows = health_cmds.services_rows(got, int(time.time() * 1000))
    if not rows:
        typer.echo(f"no instances of {service}" if service else "no services registered")
        return
    echo_table(health_cmds.SERVICES_HEADER, rows)


def _dns_state(status: NodeStatus) -> str:
    """'ok', or 'STALE' while the node answers SERVFAIL for lack of a leader, with the count."""
    dns = status.dns_stats
    if not dns:
        return "-"
    if not dns.get("alive", True):
        return "down"
    state = "STALE" if dns.get("stale") else "ok"
    return f"{state} ({dns.get('stale_queries', 0)} servfail)"


def _last_contact(status: NodeStatus, leader: NodeStatus | None) -> str:
    if leader is None:
        return "?"
    if status.node == leader.node:
        return "-"
    peer = leader.peers.get(status.node)
    if peer is None or peer.last_contact_ms is None:
        return "never"
    return f"{peer.last_contact_ms} ms ago"


@app.command()
def status(
    servers: ServersOption = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Every server's role, term, leader, commit and applied index, and last contact.

    Last contact is the leader's view of each follower.

    A server that does not answer within min(--timeout, 2 s) gets its error on its row.

    Exit status: 0 if any server answered, 1 if none did, 2 bad arguments.
    """
    from registry.client import NodeStatus

    with open_client(servers, timeout_s) as client:
        results = client.status_all()
    answered = [r for r in results if isinstance(r, NodeStatus)]
    leaders = [r for r in answered if r.role == "leader"]
    leader = max(leaders, key=lambda r: r.term) if leaders else None
    if as_json:
        echo_json([
            dataclasses.asdict(r) if isinstance(r, NodeStatus)
            else {"server": server, "error": {"code": r.code, "message": reason(r)}}
            for server, r in zip(client.servers, results, strict=True)
        ])  # fmt: skip
    else:
        header = ("SERVER", "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST CONTACT", "DNS")
        rows = [
            (r.server, r.node, r.role, str(r.term), r.leader or "-", str(r.commit), str(r.applied),
             _last_contact(r, leader), _dns_state(r))
            if isinstance(r, NodeStatus)
            else (server, f"error: {reason(r)}")
            for server, r in zip(client.servers, results, strict=True)
        ]  # fmt: skip
        echo_table(header, rows)
    if not answered:
        typer.echo(f"Error: no server answered ({', '.join(client.servers)})", err=True)
        raise typer.Exit(1)
