"""`registry config check FILE`: validate an agent's TOML config file and say everything wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import typer

config_app = typer.Typer(help="The agent's TOML config file (the same keys as `registry agent`'s flags).",
                         no_args_is_help=True)


@config_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The TOML file, e.g. /etc/registry/registry.toml.")],
) -> None:
    """Validate FILE fully: unknown keys, types, ranges, addresses, peers and required keys.

    Prints every problem with its key and the accepted values. Exit status: 0 if the file is valid
    (a one-line summary), 2 if it is missing, unreadable, not TOML or invalid.
    """
    from registry.node.config import build, check_settings, read_file

    try:
        settings = read_file(file)
    except FileNotFoundError:
        typer.echo(f"error: {file}: no such file", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: {file}: cannot read it: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        typer.echo(f"error: {file}: not valid TOML: {exc}", err=True)
        raise typer.Exit(2) from None
    problems = check_settings(settings)
    if problems:
        for problem in problems:
            typer.echo(f"error: {file}: {problem}", err=True)
        typer.echo(f"{file}: {len(problems)} problem(s)", err=True)
        raise typer.Exit(2)
    config = build(settings)  # cannot fail once check_settings found nothing (a test holds it to that)
    typer.echo(f"{file}: ok: {config.describe()}")
