"""How the client commands print: tables, JSON, what changed, and errors with their exit status.

Exit status of every client command: 0 done, 1 the cluster could not do it (the reason on
stderr), 2 a usage or validation error (nothing was sent). NB: the client is imported inside the
functions that need it, only because ZeroMQ is slow to import (``registry --help`` stays fast).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from registry.client import InstanceInfo, Registration, RegistryError

# Client-side validation names an argument; this is how the user wrote it.
PARAM_HINTS = {
    "service": "SERVICE",
    "address": "HOST:PORT",
    "port": "HOST:PORT",
    "instance_id": "'--id'",
    "tags": "'--tag'",
    "meta": "'--meta'",
    "check": "'--ttl' / '--check' / '--deregister-after'",
    "ttl_ms": "'--ttl'",
    "servers": "REGISTRY_SERVERS",
    "name": "NAME",
}


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def echo_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns. A short row (an error) leaves its last cell unpadded."""
    widths = [
        max(len(row[c]) for row in (header, *rows) if len(row) == len(header))
        for c in range(len(header))
    ]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def invalid(message: str) -> NoReturn:
    """A bad input that is not one argument (a damaged file, ...): exit 2."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def fail(error: RegistryError, hint: str | None = None) -> NoReturn:
    """Exit 2 for a validation error (a BadParameter when we know the argument), else 1."""
    from registry.client import ValidationFailed

    if isinstance(error, ValidationFailed):
        if error.code is None:  # found before sending: name the argument
            raise typer.BadParameter(str(error), param_hint=hint or PARAM_HINTS.get(error.field or ""))
        invalid(str(error))
    typer.echo(f"Error: {error}", err=True)
    raise typer.Exit(1)


def reason(error: RegistryError) -> str:
    """Why one server failed, without repeating the server's address."""
    return getattr(error, "last_error", None) or error.message


def _listed(values: Sequence[str]) -> str:
    return ",".join(values) or "(none)"


def _meta(meta: Mapping[str, str]) -> str:
    return _listed([f"{k}={v}" for k, v in sorted(meta.items())])


def changes(previous: InstanceInfo, now: InstanceInfo) -> list[str]:
    """What a registration changed, field by field: "tags primary -> (none)", ..."""
    found = []
    if (previous.address, previous.port) != (now.address, now.port):
        found.append(f"address {previous.address} port {previous.port} -> {now.address} port {now.port}")
    if tuple(previous.tags) != tuple(now.tags):
        found.append(f"tags {_listed(previous.tags)} -> {_listed(now.tags)}")
    if dict(previous.meta) != dict(now.meta):
        found.append(f"meta {_meta(previous.meta)} -> {_meta(now.meta)}")
    return found


def registered_changes(got: Registration) -> list[str] | None:
    """What a committed register changed ([] for nothing, or a new instance); None if unknown."""
    if got.created:
        return []
    if got.previous is None or got.instance is None:
        return None
    return changes(got.previous, got.instance)


def registered_line(service: str, got: Registration) -> str:
    """One line for a committed register, saying what it replaced."""
    head = f"{service} instance {got.instance_id}, committed at index {got.index}"
    if got.created:
        return f"registered {head}"
    found = registered_changes(got)
    if found is None:
        return f"updated {head} (what it replaced is not known: an older node, or a retried write)"
    return f"updated {head}: " + ("; ".join(found) if found else "nothing changed")
