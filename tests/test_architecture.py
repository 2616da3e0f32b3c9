"""Imports run one way (pyproject.toml [tool.importlinter]): `lint-imports` keeps the contracts on
this checkout, and breaks them on a copy of it with a deliberate upward import or cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """lint-imports on `root`'s own src/reprozoo and pyproject.toml (not the installed package)."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extras (`pip install -e '.[dev]'`)")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package and its contracts, with `line` appended to src/reprozoo/<module>."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "src" / "reprozoo", root / "src" / "reprozoo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    with (root / "src" / "reprozoo" / module).open("a") as handle:
        handle.write(f"\n{line}\n")
    return root


def test_the_import_contracts_are_kept() -> None:
    result = lint_imports(REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 broken" in output and "KEPT" in output


@pytest.mark.parametrize(("module", "line", "reported"), [
    # upward: the core importing the CLI
    ("config.py", "from reprozoo import cli", "reprozoo.config is not allowed to import reprozoo.cli"),
    # a cycle: leaderboard already reads records
    ("records.py", "from reprozoo.leaderboard import gather", "reprozoo.records is not allowed to import reprozoo.leaderboard"),
    # hidden in a function, as the old cycles were
    ("data/versions.py", "def _hidden():\n    from reprozoo import tracking", "reprozoo.data.versions is not allowed to import reprozoo.tracking"),
])
def test_a_deliberate_upward_import_breaks_the_layers(tmp_path: Path, module: str, line: str, reported: str) -> None:
    result = lint_imports(copy_with(tmp_path, module, line))
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode == 1, output
    assert "BROKEN" in output and reported in output


def test_a_cycle_breaks_the_acyclic_contract_on_its_own(tmp_path: Path) -> None:
    """The contract that catches a cycle between modules no layer names yet (a new package's)."""
    root = copy_with(tmp_path, "data/trees.py", "from reprozoo.data import sst5")
    result = lint_imports(root, "--contract", "acyclic")
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, output
    assert "BROKEN" in output and "No cycles are allowed in reprozoo.data" in output and ".trees -> .sst5" in output
