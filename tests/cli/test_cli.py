"""The `registry` command line: parsing, help, exit codes (typer's CliRunner, no subprocess).

`registry sim` drives `registry.sim.run`; these tests use the real simulator for the ok paths and
a stand-in `run` for the failure paths, so that they do not depend on what a mutant finds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import registry
from registry.cli.main import app

runner = CliRunner()


def squash(text: str) -> str:
    """Output without whitespace or rich's box drawing, so wrapped error panels still match."""
    return re.sub(r"[\s\u2500-\u257f]+", "", text)


def test_help_lists_the_sim_command() -> None:
    """`registry --help` exits 0 and lists `sim`."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "sim" in result.output


def test_version() -> None:
    """`registry --version` prints the package version."""
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"registry {registry.__version__}"


def test_help_does_not_import_the_simulator() -> None:
    """The simulator is imported lazily, inside `registry sim`, so `--help` stays fast."""
    code = "import sys, registry.cli.main; assert 'registry.sim' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sim_one_seed_is_ok() -> None:
    """`registry sim --seed 1` runs one simulation, says ok, and exits 0."""
    result = runner.invoke(app, ["sim", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "registry sim --seed 1" in result.output


def test_sim_many_seeds_prints_a_summary() -> None:
    """`--seeds 3` runs seeds 1..3 and prints runs/passed/failed."""
    result = runner.invoke(app, ["sim", "--seed", "1", "--seeds", "3"])
    assert result.exit_code == 0, result.output
    assert re.search(r"runs\s+3\b", result.output)
    assert re.search(r"passed\s+3\b", result.output)
    assert re.search(r"failed\s+0\b", result.output)


def test_sim_json_parses() -> None:
    """`registry sim --json` prints one JSON object with a list of failures."""
    result = runner.invoke(app, ["sim", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["runs"] == 1 and report["passed"] == 1 and report["failures"] == []
    assert report["result"]["seed"] == 0 and report["result"]["ok"] is True


def test_sim_unknown_mutant_lists_the_accepted_names() -> None:
    """An unknown `--mutant` exits 2 and names every accepted mutant."""
    from registry.sim import MUTANTS

    result = runner.invoke(app, ["sim", "--mutant", "no-such-thing"])
    assert result.exit_code == 2, result.output
    out = squash(result.output)
    assert "no-such-thing" in out
    for name in MUTANTS:
        assert squash(name) in out, f"{name} not listed:\n{result.output}"


@pytest.mark.parametrize(
    "args",
    [
        ["sim", "--nodes", "0"],
        ["sim", "--nodes", "10"],
        ["sim", "--seeds", "0"],
        ["sim", "--seed", "-1"],
        ["sim", "--seed", "abc"],
        ["sim", "--seeds", "2", "--trace"],
    ],
    ids=lambda args: " ".join(args[1:]),
)
def test_sim_bad_arguments_exit_2(args: list[str]) -> None:
    """Invalid option values are usage errors (exit 2) that name the option."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert squash(args[1]) in squash(result.output)


def _failing_run(seed: int, *, nodes: int = 3, mutant: str | None = None, trace=None):
    from registry.sim import SimResult

    bad = seed % 2 == 1
    return SimResult(
        seed=seed,
        nodes=nodes,
        mutant=mutant,
        ok=not bad,
        violation=f"two leaders in term {seed}" if bad else None,
        ticks=100 + seed,
        stats={"elections": 1},
        replay=f"registry sim --seed {seed} --nodes {nodes}",
    )


def test_sim_violation_exits_1_and_prints_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that finds a violation exits 1 and prints the command that replays it."""
    monkeypatch.setattr("registry.sim.run", _failing_run)
    result = runner.invoke(app, ["sim", "--seed", "3"])
    assert result.exit_code == 1, result.output
    assert "VIOLATION" in result.output and "two leaders in term 3" in result.output
    assert "registry sim --seed 3 --nodes 3" in result.output


def test_sim_sweep_lists_each_failing_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep with failures exits 1 and lists every failing seed's replay, in text and JSON."""
    monkeypatch.setattr("registry.sim.run", _failing_run)
    result = runner.invoke(app, ["sim", "--seed", "0", "--seeds", "4", "--nodes", "5"])
    assert result.exit_code == 1, result.output
    assert re.search(r"failed\s+2\b", result.output)
    for seed in (1, 3):
        assert f"registry sim --seed {seed} --nodes 5" in result.output

    result = runner.invoke(app, ["sim", "--seeds", "4", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["runs"], report["passed"], report["failed"]) == (4, 2, 2)
    assert [f["replay"] for f in report["failures"]] == [
        "registry sim --seed 1 --nodes 3",
        "registry sim --seed 3 --nodes 3",
    ]


def test_up_banner_says_how_another_terminal_finds_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a virtualenv, `registry up` shows the activation line of the venv that runs it (a new
    terminal has not activated it), relative to the current directory when under it."""
    import shlex
    from pathlib import Path

    from registry.cli.cluster_cmds import _path_hint

    if sys.prefix == sys.base_prefix:
        pytest.fail("the tests run from the project's virtualenv (make venv)")
    venv_bin = Path(sys.executable).parent
    [line] = _path_hint()
    shown = shlex.split(line.partition("#")[0])[1]
    assert line.startswith(". ") and Path(shown).name == "activate"
    assert Path(shown).resolve() == (venv_bin / "activate").resolve()
    monkeypatch.chdir(venv_bin.parent.parent)
    assert _path_hint()[0].startswith(f". {venv_bin.parent.name}/bin/activate")
