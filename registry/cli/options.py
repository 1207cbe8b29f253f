"""Options shared by the client commands (registry.cli.main and registry.cli.snapshot_cmds)."""

from __future__ import annotations

from typing import Annotated

import typer

from registry.naming import AddressError, parse_hostport


def _check_servers(values: list[str] | None) -> list[str] | None:
    for text in values or ():
        try:
            parse_hostport(text, what="server")
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
        "Default: $REGISTRY_SERVERS (comma-separated), else 127.0.0.1:7101,7102,7103.",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Give up after this long."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]
