"""What the command modules share: their command groups (``command_group``), the options of the
client commands (registry.cli.main, snapshot_cmds, leader_cmds, ...), and the client they open.

Server addresses are checked while parsing (HOST:PORT), and their host names are looked up before
anything is sent: a name that does not resolve is a usage error (exit 2, "cannot resolve host"),
whether it came from --server or from $REGISTRY_SERVERS. NB: the client is imported inside
``open_client``, only because ZeroMQ is slow to import (``registry --help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from registry.naming import SERVER_EXAMPLES, AddressError, parse_hostport

if TYPE_CHECKING:
    from registry.client import Client


def command_group(name: str, help: str) -> typer.Typer:  # noqa: A002 (typer's own word)
    """A typer app for ``registry NAME ...``: help without arguments, no shell completion, and no
    local variables in tracebacks (they may hold a snapshot's bytes or a client's state)."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_show_locals=False)


def _check_servers(values: list[str] | None) -> list[str] | None:
    for text in values or ():
        try:
            parse_hostport(text, what="server", examples=SERVER_EXAMPLES)
        except AddressError as e:
            raise typer.BadParameter(str(e), param_hint="'--server'") from None
    return values


ServersOption = Annotated[
    list[str] | None,
    typer.Option(
        "--server",
        metavar="HOST:PORT",
        callback=_check_servers,
        help="A node's client address; repeat for several. "
        "Default: $REGISTRY_SERVERS (comma-separated), else 127.0.0.1:7101,7102,7103. "
        "A host name that does not resolve is an error (exit 2).",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Give up after this long."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]


def open_client(servers: Sequence[str] | None, timeout_s: float) -> Client:
    """A Client for --server (else the environment, else the defaults); exit 2 if an address is
    bad or a host name does not resolve."""
    from registry.client import Client, ValidationFailed, unresolvable

    source = "'--server'" if servers else "REGISTRY_SERVERS"
    try:
        client = Client(servers or None, timeout_s=timeout_s)
    except ValidationFailed as e:  # --server was checked while parsing: this is the environment
        raise typer.BadParameter(str(e), param_hint=source) from None
    unknown = unresolvable(client.servers)
    if unknown:
        client.close()
        names = ", ".join(repr(host) for host in unknown)
        raise typer.BadParameter(f"cannot resolve host {names}: check the name, or give an IP address",
                                 param_hint=source)
    return client
