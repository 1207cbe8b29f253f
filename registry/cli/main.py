"""Entry point of the ``registry`` console script (``registry.cli.main:app``)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

import registry

if TYPE_CHECKING:
    from registry.sim import SimResult

app = typer.Typer(
    name="registry",
    help="Service-discovery registry: Raft over ZeroMQ, an LMDB log, a DNS responder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

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
