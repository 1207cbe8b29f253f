"""The health side of the client commands: a register's check options, the foreground keepalive
(``registry register ... --ttl 10s --keepalive``), ``registry pass``, ``registry explain``, and
how a check and a status are shown.

Exit status, as every client command: 0 done, 1 the cluster could not do it (or the instance is
gone), 2 a usage or validation error (nothing was sent).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from registry.catalogue.model import Check, CheckKind, HealthStatus, Instance
from registry.catalogue.view import CatalogueView, ServiceMap
from registry.cli.durations import format_age, format_duration
from registry.cli.options import JsonOption, ServersOption, TimeoutOption, open_client
from registry.cli.output import echo_json, fail

if TYPE_CHECKING:
    from registry.client import CheckInfo, Client, InstanceInfo, Services

# What ends a keepalive: systemd's stop (SIGTERM) and Ctrl-C (SIGINT).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

# The CLI's defaults for an active check (HEALTH_SPEC.md): a killed process leaves DNS within
# interval x failures + 2 s <= 5 s.
DEFAULT_INTERVAL_MS = 1000
DEFAULT_CHECK_TIMEOUT_MS = 1000
DEFAULT_FAILURES = 3
DEFAULT_SUCCESSES = 2


# -- a register's check ------------------------------------------------------------------------


def _refuse(message: str, hint: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=hint)


def check_from_options(
    *,
    ttl_ms: int | None,
    check: str | None,
    interval_ms: int | None,
    check_timeout_ms: int | None,
    failures: int | None,
    successes: int | None,
    deregister_after_ms: int | None,
    keepalive: bool,
    deregister_on_exit: bool,
) -> dict[str, Any] | None:
    """The check map of ``registry register``'s options, or None; a usage error (exit 2) for
    options that do not go together. Ranges are the client's to check (the catalogue's rules)."""
    if ttl_ms is not None and check is not None:
        raise _refuse("--ttl and --check are exclusive: an instance is renewed by its owner (--ttl) or "
                      "probed by the cluster (--check), not both", "'--ttl' / '--check'")
    probe_options = {"--interval": interval_ms, "--check-timeout": check_timeout_ms, "--failures": failures,
                     "--successes": successes}
    if check is None:
        given = [name for name, value in probe_options.items() if value is not None]
        if given:
            raise _refuse(f"{', '.join(given)} only go with --check tcp or --check http://HOST:PORT/path",
                          f"'{given[0]}'")
    if keepalive and ttl_ms is None:
        raise _refuse("--keepalive renews a TTL: it needs --ttl (e.g. --ttl 10s --keepalive)", "'--keepalive'")
    if deregister_on_exit and not keepalive:
        raise _refuse("--deregister-on-exit is what a --keepalive does when stopped: it needs --keepalive",
                      "'--deregister-on-exit'")
    if deregister_after_ms is not None and ttl_ms is None and check is None:
        raise _refuse("--deregister-after removes an instance that stays critical: it needs --ttl or --check",
                      "'--deregister-after'")
    if ttl_ms is not None:
        return {"kind": "ttl", "ttl_ms": ttl_ms, "deregister_after_ms": deregister_after_ms or 0}
    if check is None:
        return None
    if check == "tcp":
        kind, url = "tcp", ""
    elif check.startswith("http://"):
        kind, url = "http", check
    else:
        raise _refuse(f"invalid check {check!r}: use tcp (connect to HOST:PORT) or an http:// URL "
                      "(GET, 2xx is healthy), e.g. --check http://10.0.0.5:8080/health", "'--check'")
    interval = DEFAULT_INTERVAL_MS if interval_ms is None else interval_ms
    if check_timeout_ms is None:
        # NB: the default timeout follows a shorter interval given alone: it is at most the interval.
        check_timeout_ms = min(DEFAULT_CHECK_TIMEOUT_MS, interval)
    return {
        "kind": kind, "url": url, "interval_ms": interval, "timeout_ms": check_timeout_ms,
        "failures": DEFAULT_FAILURES if failures is None else failures,
        "successes": DEFAULT_SUCCESSES if successes is None else successes,
        "deregister_after_ms": deregister_after_ms or 0,
    }  # fmt: skip


def describe_check(check: CheckInfo | None) -> str:
    """The CHECK column: "ttl 10s", "tcp every 1s", "http every 1s"; "-" for none."""
    if check is None:
        return "-"
    if check.kind == "ttl":
        return f"ttl {format_duration(check.ttl_ms)}"
    if check.interval_ms:
        return f"{check.kind} every {format_duration(check.interval_ms)}"
    return check.kind


def services_rows(got: Services, now_ms: int) -> list[tuple[str, ...]]:
    """The rows of ``registry services``' table, sorted by service and id."""
    return [
        (name, i.id, i.address, str(i.port), i.status, format_age(i.since_ms, now_ms), describe_check(i.check),
         ",".join(i.tags), ",".join(f"{k}={v}" for k, v in sorted(i.meta.items())))
        for name, instances in sorted(got.items())
        for i in sorted(instances, key=lambda i: i.id)
    ]  # fmt: skip


SERVICES_HEADER = ("SERVICE", "ID", "ADDRESS", "PORT", "STATUS", "SINCE", "CHECK", "TAGS", "META")


# -- the keepalive -----------------------------------------------------------------------------


@contextmanager
def held_stop_signals() -> Iterator[Callable[[float], bool]]:
    """Hold SIGTERM and SIGINT (blocked, so pending) for the duration, and give a keepalive
    ``wait``: it sleeps up to the given seconds and returns True as soon as one of them arrives.

    NB: blocked, not handled: a signal that arrives during a heartbeat waits for it to end (at
    most a third of the TTL), and no handler ever runs in the middle of the client's socket code.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield lambda seconds: signal.sigtimedwait(STOP_SIGNALS, seconds) is not None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def keep_alive(
    client: Client,
    service: str,
    instance_id: str,
    ttl_ms: int,
    *,
    wait: Callable[[float], bool],
    deregister_on_exit: bool,
    as_json: bool,
) -> int:
    """Renew the instance until ``wait`` says stop; print one line per state change. Returns the
    exit status: 0 when stopped (after deregistering, with ``deregister_on_exit``), 1 when the
    instance is gone (it is never registered again) or the deregistration failed."""
    from registry.client import NotFound, RegistryError, ValidationFailed

    head = f"{service} instance {instance_id}"
    period = format_duration(max(1, ttl_ms // 3))

    def say(event: str, text: str, **fields: Any) -> None:
        if as_json:
            typer.echo(json.dumps({"event": event, "service": service, "instance_id": instance_id, **fields},
                                  sort_keys=True))
        else:
            typer.echo(f"{head}: {text}")

    try:
        for state in client.keepalive(instance_id, ttl_ms, service=service, wait=wait):
            if state.error is not None:
                why = getattr(state.error, "last_error", None) or state.error.message
                say("state", f"heartbeat failed, retrying every {period}: {why}", state=state.state, error=str(why))
            else:
                say("state", f"{state.state} (renewing every {period})", state=state.state, index=state.index)
    except NotFound as e:
        typer.echo(f"Error: {head} is gone: deregistered by someone else, or expired ({e.message}); "
                   "not registering it again", err=True)
        return 1
    except ValidationFailed as e:
        typer.echo(f"Error: {e}", err=True)
        return 1
    if not deregister_on_exit:
        say("stopped", "stopped; the instance stays registered (expires after its TTL)")
        return 0
    try:
        got = client.deregister(service, instance_id, by="id")
    except NotFound:
        say("stopped", "stopped; it was already deregistered")
        return 0
    except RegistryError as e:
        typer.echo(f"Error: stopped, but could not deregister {head}: {e}", err=True)
        return 1
    say("deregistered", f"stopped and deregistered, committed at index {got.index}", index=got.index)
    return 0


# -- registry pass -----------------------------------------------------------------------------


def pass_(
    instance_id: Annotated[str, typer.Argument(metavar="ID", help="The instance id (as `registry register` printed).")],
    service: Annotated[
        str | None,
        typer.Option("--service", help="The instance's service; needed when the id is in several services."),
    ] = None,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Renew a TTL-checked instance once (a heartbeat): its TTL clock restarts.

    A critical instance turns passing again. Nothing is written to the log otherwise.

    Exit status: 0 renewed, 1 the instance is gone (deregistered or expired) or the cluster could not answer, 2 bad arguments or an id in several services without --service.
    """
    from registry.client import RegistryError

    with open_client(servers, timeout_s) as client:
        try:
            got = client.heartbeat(instance_id, service)
        except RegistryError as e:
            fail(e, hint="ID" if getattr(e, "field", None) == "instance_id" else "'--service'")
    if as_json:
        echo_json(dataclasses.asdict(got))
    else:
        typer.echo(f"renewed {got.service} instance {got.instance_id}: {got.status} (as of index {got.index})")


# -- registry explain --------------------------------------------------------------------------


Explain = Callable[[CatalogueView, str, str, str, int], Any]


def _instance(service: str, info: InstanceInfo) -> Instance:
    check = None
    if info.check is not None and info.check.kind in {k.value for k in CheckKind}:
        c = info.check
        check = Check(CheckKind(c.kind), ttl_ms=c.ttl_ms, url=c.url, interval_ms=c.interval_ms,
                      timeout_ms=c.timeout_ms, failures=c.failures, successes=c.successes,
                      deregister_after_ms=c.deregister_after_ms)
    # NB: a status this version does not know is not served: it is not "passing".
    status = HealthStatus.PASSING if info.status == HealthStatus.PASSING.value else HealthStatus.CRITICAL
    return Instance(id=info.id, service=service, address=info.address, port=info.port, tags=tuple(info.tags),
                    meta=tuple(sorted(info.meta.items())), check=check, status=status, since_ms=info.since_ms,
                    revision=info.revision, output=info.output or "")


def view_from_services(got: Services) -> CatalogueView:
    """The CatalogueView a node's DNS would hold at ``got.index``, built from a ``services``
    reply (whose instances are the catalogue's canonical form, sorted here by id)."""
    services = ServiceMap.from_items(
        (name, tuple(sorted((_instance(name, i) for i in instances), key=lambda i: i.id)))
        for name, instances in got.items()
        if instances
    )
    return CatalogueView(applied_index=got.index, version=got.index, services=services)


def explain_report(got: Services, name: str, qtype: str, zone: str, max_udp: int, explain: Explain) -> Any:
    """``explain``'s answer (``registry_dns.explain.Explanation``) for ``name`` on the view of ``got``."""
    return explain(view_from_services(got), name, qtype, zone, max_udp)


def explain_lines(report: Any, name: str, qtype: str, now_ms: int) -> list[str]:
    """Human lines: the answer's rcode and summary, then each instance: in the answer (+), or
    why not (-)."""
    verdicts = list(report.instances)
    lines = [f"{name} {qtype}: {report.rcode_name}; {report.summary}"]
    for v in verdicts:
        i = v.instance
        where = f"{i.service}/{i.id} {i.address}:{i.port}"
        if v.in_answer:
            lines.append(f"  + {where}")
            continue
        why = v.reason.value if v.reason is not None else "not in the answer"
        if i.status is HealthStatus.CRITICAL:
            why += f" ({i.status.value} {format_age(i.since_ms, now_ms)}{': ' + i.output if i.output else ''})"
        lines.append(f"  - {where}: {why}{'; ' + v.detail if v.detail else ''}")
    return lines


def explain_json(report: Any, zone: str, index: int) -> dict[str, Any]:
    return {"zone": zone, "index": index, **report.as_dict()}


def run_explain(
    client: Client,
    name: str,
    qtype: str,
    *,
    zone: str,
    max_udp: int,
    as_json: bool,
    explain: Explain,
    now_ms: int | None = None,
) -> None:
    """Read the services (linearizable) and print ``explain``'s answer for ``name``."""
    from registry.client import RegistryError

    try:
        got = client.services()
    except RegistryError as e:
        fail(e)
    report = explain_report(got, name, qtype, zone, max_udp, explain)
    if as_json:
        echo_json(explain_json(report, zone, got.index))
        return
    for line in explain_lines(report, name, qtype, int(time.time() * 1000) if now_ms is None else now_ms):
        typer.echo(line)


_QTYPES = ("A", "AAAA", "SRV", "TXT", "ANY")


def explain(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A DNS name, e.g. web.service.registry or "
                                        "primary.web.service.registry.")],
    qtype: Annotated[str, typer.Argument(metavar="TYPE", help=f"The query type: {', '.join(_QTYPES)}.")] = "A",
    domain: Annotated[str, typer.Option("--domain", help="The agents' DNS zone (their --domain).")] = "registry.",
    max_udp: Annotated[
        int,
        typer.Option("--max-udp", min=512, max=65535, metavar="BYTES",
                     help="The UDP size the query allows: 512 without EDNS0; dig asks for 1232."),
    ] = 512,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Say which instances a DNS name answers with, and why each other one is left out.

    Reasons: critical (since when, and the check's output), a missing tag, the address family, truncation.

    The view is a linearizable read of the catalogue: what every node's DNS answers once it has applied that index.

    Exit status: 0 explained, 1 the cluster could not answer, 2 bad arguments.
    """
    qtype = qtype.upper()
    if qtype not in _QTYPES:
        raise typer.BadParameter(f"unknown type {qtype!r}: use one of {', '.join(_QTYPES)}", param_hint="TYPE")
    zone = domain if domain.endswith(".") else domain + "."
    # NB: lazy, as the client: registry_dns pulls in dnslib, and `registry --help` stays fast.
    from registry_dns.explain import explain as dns_explain

    with open_client(servers, timeout_s) as client:
        run_explain(client, name, qtype, zone=zone, max_udp=max_udp, as_json=as_json, explain=dns_explain)
