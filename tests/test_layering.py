"""Layering: the import-direction rules of STYLE.md, and no import cycles, checked by walking
imports with ``ast``.

Every ``import`` and ``from ... import`` counts, at any depth (inside functions and under
``if TYPE_CHECKING:`` too, so a cycle cannot be hidden there); relative imports are resolved to
absolute names. A folder that does not exist yet has nothing to check.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Source folder -> the import name it installs under (pyproject [tool.setuptools] package-dir).
IMPORT_NAMES = {"registry": "registry", "dns": "registry_dns"}

# Modules that would give the Raft core I/O, a clock, threads or processes.
RAFT_FORBIDDEN = frozenset(
    {
        "time", "socket", "select", "selectors", "threading", "asyncio", "os", "subprocess",
        "multiprocessing", "concurrent", "zmq", "lmdb",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Import:
    """One imported name. For ``from m import a`` the name is ``m.a`` (``a`` may be a module)."""

    name: str
    line: int


def within(name: str, package: str) -> bool:
    """True if ``name`` is ``package`` or inside it (``registry.raft.core`` is within ``registry.raft``)."""
    return name == package or name.startswith(package + ".")


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    """(absolute module name, is_package) of a source file, using the installed import names."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts[0] = IMPORT_NAMES[parts[0]]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def imports_in(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import in ``source`` (a file of ``module``), with relative imports made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond top level")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                name = base if alias.name == "*" else f"{base}.{alias.name}"
                found.append(Import(name, node.lineno))
    return sorted(found, key=lambda i: (i.line, i.name))


def random_misuse(source: str) -> list[Import]:
    """Uses of the ``random`` module other than the ``random.Random`` type.

    Module-level functions (``random.randint``, ``random.seed``, ...) share one hidden global
    generator, so a core that used them would not be reproducible from its seed.
    """
    tree = ast.parse(source)
    aliases: set[str] = set()
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name == "random")
        elif isinstance(node, ast.ImportFrom) and node.module == "random" and not node.level:
            found.extend(
                Import(f"random.{a.name}", node.lineno) for a in node.names if a.name != "Random"
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr != "Random"
        ):
            found.append(Import(f"random.{node.attr}", node.lineno))
    return sorted(found, key=lambda i: (i.line, i.name))


@dataclass(frozen=True)
class Rule:
    """``forbids(importer, imported)`` is true for an import that breaks the rule."""

    id: str
    folders: tuple[str, ...]
    forbids: Callable[[str, str], bool]
    why: str


def _top(name: str) -> str:
    return name.partition(".")[0]


RULES = [
    Rule(
        "raft-stdlib-and-itself-only",
        ("registry/raft",),
        lambda _, name: not within(name, "registry.raft") and _top(name) not in sys.stdlib_module_names,
        "registry.raft imports only the standard library and itself",
    ),
    Rule(
        "raft-no-io-clock-threads",
        ("registry/raft",),
        lambda _, name: _top(name) in RAFT_FORBIDDEN,
        "registry.raft performs no I/O: no clock, sockets, files, threads or processes",
    ),
    Rule(
        "raft-never-imports-sim",
        ("registry/raft",),
        lambda _, name: within(name, "registry.sim"),
        "the simulator drives the core, never the other way round",
    ),
    Rule(
        "dns-reads-only-the-catalogue",
        ("dns",),
        lambda _, name: any(
            within(name, f"registry.{layer}")
            for layer in ("raft", "storage", "node", "transport", "sim", "cli")
        ),
        "registry_dns reads only committed state (a CatalogueView)",
    ),
    Rule(
        "nothing-imports-cli",
        ("registry", "dns"),
        lambda importer, name: (within(name, "registry.cli") and not within(importer, "registry.cli")
                                and importer != "registry.__main__"),
        "registry.cli is a composition root: nothing imports it (but `python -m registry`)",
    ),
    Rule(
        "catalogue-pure",
        ("registry/catalogue",),
        lambda _, name: _top(name) in RAFT_FORBIDDEN or not (
            within(name, "registry.catalogue") or _top(name) in sys.stdlib_module_names or _top(name) == "msgpack"),
        "registry.catalogue is a pure state machine: the standard library and msgpack only, no I/O",
    ),
    Rule(
        "storage-transport-know-only-the-core",
        ("registry/storage", "registry/transport"),
        lambda importer, name: _top(name) == "registry" and not any(
            within(name, f"registry.{ok}") for ok in ("raft", "naming", importer.split(".")[1])),
        "storage and transport depend only on the core's types (and naming), never on each other",
    ),
    Rule(
        "client-knows-only-the-protocol",
        ("registry/client",),
        lambda _, name: _top(name) == "registry" and not any(
            within(name, ok) for ok in ("registry.client", "registry.naming", "registry.catalogue.validation")),
        "the client speaks the documented protocol; it shares only naming and validation rules",
    ),
    Rule(
        "client-retry-policy-and-protocol-pure",
        ("registry/client/retry.py", "registry/client/protocol.py"),
        lambda _, name: _top(name) in RAFT_FORBIDDEN,
        "the client's retry policy and wire format are pure: no clock, sockets or threads (they are given now)",
    ),
    Rule(
        "health-knows-only-the-catalogue",
        ("registry/health",),
        lambda _, name: not (
            within(name, "registry.health") or within(name, "registry.catalogue")
            or within(name, "registry.logformat") or within(name, "registry.childproc") or _top(name) == "msgpack"
            or _top(name) in sys.stdlib_module_names),
        "registry.health (the prober) uses the catalogue's types, logformat, childproc, the standard library and "
        "msgpack; never raft, storage, transport or node",
    ),
    Rule(
        "childproc-a-stdlib-leaf",
        ("registry/childproc.py",),
        lambda _, name: _top(name) not in sys.stdlib_module_names,
        "registry.childproc (what the DNS and prober children share) imports only the standard library",
    ),
    Rule(
        "node-never-imports-sim",
        ("registry/node",),
        lambda _, name: within(name, "registry.sim"),
        "production paths never import the simulator",
    ),
]


def python_files(folder: Path) -> Iterator[Path]:
    if folder.is_file():
        yield folder
    elif folder.is_dir():
        yield from sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def violations(rule: Rule, root: Path = ROOT) -> list[str]:
    found = []
    for folder in rule.folders:
        for path in python_files(root / folder):
            module, is_package = module_name(path, root)
            for imp in imports_in(path.read_text(encoding="utf-8"), module, is_package):
                if rule.forbids(module, imp.name):
                    found.append(f"{path.relative_to(root)}:{imp.line} imports {imp.name}")
    return found


def random_violations(root: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(root)}:{use.line} uses {use.name}"
        for path in python_files(root / "registry" / "raft")
        for use in random_misuse(path.read_text(encoding="utf-8"))
    ]


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_layer_rule(rule: Rule) -> None:
    """Each layer imports only what its rule allows; the failure names the file, line and import."""
    bad = violations(rule)
    assert not bad, f"{rule.why}:\n  " + "\n  ".join(bad)


def test_raft_uses_random_only_as_a_type() -> None:
    """The core draws randomness only from the ``random.Random`` it is given, never the module's."""
    bad = random_violations()
    assert not bad, "registry.raft must use an injected random.Random:\n  " + "\n  ".join(bad)


def module_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """Every module of registry/ and dns/ -> the modules of ours it imports (with the first line).

    ``from m import a`` is an import of ``m.a`` when that is one of our modules, else of ``m``.
    NB: importing ``a.b`` also runs ``a/__init__``, but that edge is left out, as pylint's
    cyclic-import check does: a submodule that imports a sibling would otherwise always close a
    cycle through the package that re-exports both.
    """
    files = {module_name(path, root): path for folder in IMPORT_NAMES for path in python_files(root / folder)}
    modules = {name for name, _ in files}
    graph: dict[str, dict[str, int]] = {}
    for (module, is_package), path in files.items():
        edges = graph.setdefault(module, {})
        for imp in imports_in(path.read_text(encoding="utf-8"), module, is_package):
            target = imp.name if imp.name in modules else imp.name.rpartition(".")[0]
            if target in modules and target != module:
                edges.setdefault(target, imp.line)
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def describe_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    members = set(component)
    edges = [f"{a} -> {b} (line {line})" for a in component for b, line in sorted(graph[a].items()) if b in members]
    return "cycle: " + "; ".join(edges)


def test_no_import_cycles() -> None:
    """No module of registry/ or dns/ imports, directly or through others, one that imports it."""
    graph = module_graph()
    assert len(graph) > 50, "the walker found too few modules to be reading the tree"
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n  " + "\n  ".join(describe_cycle(graph, c) for c in cycles)


# The checker itself: it must be able to fail.

SNIPPET = """
import os.path as p, zmq
from . import types
from .messages import *
from ..sim import cluster
from registry import cli

def later():
    from time import monotonic
    import lmdb
"""


def test_walker_resolves_relative_nested_and_aliased_imports() -> None:
    """The walker sees aliased, relative, star and function-level imports, as absolute names."""
    got = [(i.line, i.name) for i in imports_in(SNIPPET, "registry.raft.core", is_package=False)]
    assert got == [
        (2, "os.path"),
        (2, "zmq"),
        (3, "registry.raft.types"),
        (4, "registry.raft.messages"),
        (5, "registry.sim.cluster"),
        (6, "registry.cli"),
        (9, "time.monotonic"),
        (10, "lmdb"),
    ]
    # In a package's __init__, "." is the package itself.
    assert [i.name for i in imports_in("from . import core", "registry.raft", is_package=True)] == [
        "registry.raft.core"
    ]
    with pytest.raises(ValueError, match="beyond top level"):
        imports_in("from ... import x", "registry.raft", is_package=True)


def test_cycle_finder_sees_cycles_hidden_in_functions_and_type_checking(tmp_path: Path) -> None:
    """A cycle closed by an import inside a function, or under TYPE_CHECKING, is still a cycle;
    imports of a package's own submodules by its __init__ are not."""
    planted = {
        "registry/__init__.py": "",
        "registry/node/__init__.py": "from .loop import Node\nfrom .ops import handle\n",
        "registry/node/loop.py": "from . import ops\n",
        "registry/node/ops.py": "def handle():\n    from .loop import Node\n",
        "registry/cli/__init__.py": "",
        "registry/cli/main.py": "from .snap import cmd\n",
        "registry/cli/snap.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from registry.cli import main\n",
        "registry/raft/__init__.py": "from .core import Raft\n",
        "registry/raft/core.py": "from .types import Entry\n",
        "registry/raft/types.py": "import dataclasses\n",
        "dns/records.py": "from registry.raft import Entry\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    graph = module_graph(tmp_path)
    assert graph["registry_dns.records"] == {"registry.raft": 1}
    assert import_cycles(graph) == [["registry.cli.main", "registry.cli.snap"],
                                    ["registry.node.loop", "registry.node.ops"]]
    assert describe_cycle(graph, ["registry.node.loop", "registry.node.ops"]) == (
        "cycle: registry.node.loop -> registry.node.ops (line 1); registry.node.ops -> registry.node.loop (line 2)")


def test_walker_flags_module_level_random() -> None:
    """random.Random is allowed; module-level functions, under any alias, are not."""
    source = (
        "import random\nimport random as r\nfrom random import Random, choice\n"
        "rng: random.Random = r.Random(1)\nx = r.randint(1, 6)\nrandom.seed(3)\n"
    )
    assert [(u.line, u.name) for u in random_misuse(source)] == [
        (3, "random.choice"),
        (5, "random.randint"),
        (6, "random.seed"),
    ]


def test_rules_fail_on_a_bad_tree(tmp_path: Path) -> None:
    """Every rule reports a planted bad import, naming the file and the import."""
    planted = {
        "registry/raft/core.py": "import time\nfrom registry.sim import run\nimport zmq\n",
        "registry/raft/timer.py": "import random\nrandom.random()\n",
        "dns/records.py": "from registry.storage import memory\n",
        "registry/node/loop.py": "from ..cli import main\nfrom registry import sim\n",
        "registry/catalogue/state.py": "import msgpack\nimport os\nimport zmq\n",
        "registry/storage/lmdb_store.py": "from registry.raft import Entry\nfrom registry.transport import codec\n",
        "registry/client/sync.py": "from registry.catalogue.validation import x\nfrom registry.node import Node\n",
        "registry/client/retry.py": "import time\n",
        "registry/health/child.py": ("import asyncio, msgpack\nfrom registry.catalogue.model import Check\n"
                                     "from registry.node import loop\nfrom ..storage import lmdb_store\nimport zmq\n"),
        "registry/childproc.py": "import socket\nfrom registry.logformat import configure\nfrom . import naming\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")

    found = {rule.id: violations(rule, tmp_path) for rule in RULES}
    assert found == {
        "raft-stdlib-and-itself-only": [
            "registry/raft/core.py:2 imports registry.sim.run",
            "registry/raft/core.py:3 imports zmq",
        ],
        "raft-no-io-clock-threads": [
            "registry/raft/core.py:1 imports time",
            "registry/raft/core.py:3 imports zmq",
        ],
        "raft-never-imports-sim": ["registry/raft/core.py:2 imports registry.sim.run"],
        "dns-reads-only-the-catalogue": ["dns/records.py:1 imports registry.storage.memory"],
        "nothing-imports-cli": ["registry/node/loop.py:1 imports registry.cli.main"],
        "node-never-imports-sim": ["registry/node/loop.py:2 imports registry.sim"],
        "catalogue-pure": ["registry/catalogue/state.py:2 imports os", "registry/catalogue/state.py:3 imports zmq"],
        "storage-transport-know-only-the-core": [
            "registry/storage/lmdb_store.py:2 imports registry.transport.codec"],
        "client-knows-only-the-protocol": ["registry/client/sync.py:2 imports registry.node.Node"],
        "client-retry-policy-and-protocol-pure": ["registry/client/retry.py:1 imports time"],
        "health-knows-only-the-catalogue": [
            "registry/health/child.py:3 imports registry.node.loop",
            "registry/health/child.py:4 imports registry.storage.lmdb_store",
            "registry/health/child.py:5 imports zmq",
        ],
        "childproc-a-stdlib-leaf": [
            "registry/childproc.py:2 imports registry.logformat.configure",
            "registry/childproc.py:3 imports registry.naming",
        ],
    }
    assert random_violations(tmp_path) == ["registry/raft/timer.py:2 uses random.random"]
