"""Packaging: the `dns/` folder never shadows dnspython, and the wheel holds every package.

The repository's `dns/` folder has no __init__.py and installs as `registry_dns` (pyproject
[tool.setuptools] package-dir). A folder without __init__.py is only a namespace *candidate*, so
dnspython's regular `dns` package wins even when the repository root is on sys.path.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import registry

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Source folder -> import name.
PACKAGE_DIRS = {"registry": "registry", "registry_dns": "dns"}

# Not part of a source tree; never copied into the wheel build.
JUNK = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}


def source_packages(root: Path = ROOT) -> dict[str, Path]:
    """Import name -> folder, for every package in the tree, derived from the tree itself."""
    found = {"registry_dns": root / "dns"}
    for init in (root / "registry").rglob("__init__.py"):
        if "__pycache__" not in init.parts:
            rel = init.parent.relative_to(root)
            found[".".join(rel.parts)] = init.parent
    for init in (root / "dns").rglob("__init__.py"):
        rel = init.parent.relative_to(root / "dns")
        found[".".join(("registry_dns", *rel.parts))] = init.parent
    return found


def test_dns_folder_is_not_a_package() -> None:
    """`dns/__init__.py` must not exist: it would shadow dnspython's `dns` from the repo root."""
    assert not (ROOT / "dns" / "__init__.py").exists(), "dns/__init__.py would shadow dnspython"


def test_package_dir_mapping() -> None:
    """`dns/` installs as `registry_dns`, never as a top-level `dns`."""
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == PACKAGE_DIRS


def test_every_python_folder_is_a_package() -> None:
    """A folder of modules without __init__.py under registry/ would silently miss the wheel."""
    folders = {p.parent for p in (ROOT / "registry").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"add an __init__.py (with the package's contract) to: {missing}"


def test_pyproject_lists_every_package() -> None:
    """[tool.setuptools] packages names exactly the packages in the tree."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    present = set(source_packages())
    assert listed == present, (
        f"pyproject.toml [tool.setuptools] packages: add {sorted(present - listed)}, "
        f"remove {sorted(listed - present)}"
    )


def _clean_env() -> dict[str, str]:
    # PYTHONSAFEPATH (-P) would keep the repo root off sys.path and hide the very problem.
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONSAFEPATH", "PYTHONPATH"}}


PROBE = (
    "import dns.resolver, registry_dns.zone\n"
    "print(dns.__file__)\n"
    "print(registry_dns.zone.DEFAULT_DOMAIN)\n"
)


@pytest.mark.parametrize(
    "how",
    ["cwd-is-repo-root", "repo-root-is-sys-path-0", "repo-root-on-PYTHONPATH"],
)
def test_import_dns_gets_dnspython(how: str, tmp_path: Path) -> None:
    """`import dns.resolver` gets dnspython, even with the repository root first on sys.path."""
    env, cwd, code = _clean_env(), ROOT, PROBE
    if how == "repo-root-is-sys-path-0":  # as under `python -m pytest` run from the root
        cwd, code = tmp_path, f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{PROBE}"
    elif how == "repo-root-on-PYTHONPATH":
        cwd, env["PYTHONPATH"] = tmp_path, str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    dns_file, domain = proc.stdout.split("\n")[:2]
    assert Path(dns_file).resolve().parent != (ROOT / "dns").resolve(), f"shadowed: {dns_file}"
    assert Path(dns_file).parent.parent.name in {"site-packages", "dist-packages"}, dns_file
    assert domain == "registry."


def test_import_dns_in_the_test_process() -> None:
    """Under pytest itself (which inserts test folders into sys.path) `dns` is still dnspython."""
    import dns.resolver

    assert Path(dns.__file__).resolve().parent != (ROOT / "dns").resolve()
    assert hasattr(dns.resolver, "resolve")


def _build_tool_available() -> bool:
    try:
        importlib.metadata.version("build")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _ignore(folder: str, names: list[str]) -> set[str]:
    junk = {n for n in names if n in JUNK or n.endswith(".egg-info")}
    # Any virtual environment, whatever its name.
    junk |= {n for n in names if (Path(folder) / n / "pyvenv.cfg").exists()}
    return junk


@pytest.mark.skipif(
    not _build_tool_available(), reason="`build` is not installed (pip install -e '.[test]')"
)
def test_wheel_contains_every_package(tmp_path: Path) -> None:
    """The built wheel holds every module of every package in the tree, and no top-level `dns/`."""
    # NB: build from a copy so that setuptools' build/ and *.egg-info never land in the checkout.
    src, out = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(ROOT, src, ignore=_ignore)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert proc.returncode == 0, f"wheel build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (wheel,) = out.glob("*.whl")
    assert wheel.name.startswith(f"svcregistry-{registry.__version__}-"), wheel.name

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(
            zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )

    expected = {
        f"{package.replace('.', '/')}/{module.name}"
        for package, folder in source_packages().items()
        for module in folder.glob("*.py")
    }
    assert expected, "no modules found in the source tree"
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel: {missing}"
    top_level = {n.split("/")[0] for n in names}
    assert "dns" not in top_level, "the wheel must not contain a top-level dns/"
    assert "tests" not in top_level
    assert "registry = registry.cli.main:app" in entry_points
