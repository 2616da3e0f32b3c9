"""Imports run one way (pyproject.toml [tool.importlinter]): `lint-imports` keeps the contracts on
this checkout, and breaks them on a copy of it with a deliberate upward import or cycle."""

from __future__ import annotations

import ast
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


# --- one record, one loader (issue 31) ----------------------------------------------------------------
SRC = REPO / "src" / "reprozoo"
# Where a RunConfig may be parsed: its own module, the run spec, and the CLI's --config (a file the user,
# or an executor through run_spec.executable, wrote).
PARSERS_ALLOWED = {"config.py", "run_spec.py", "cli/__init__.py", "cli/common.py"}
# The executors and the one function each builds its RunConfig with.
EXECUTORS = {
    ("repro.py", "plan_repro"): "executable", ("repro.py", "enqueued_config"): "executable",
    ("checkpoint_store.py", "fetch_run"): "executable", ("ddp.py", "ddp_worker_config"): "executable",
    ("ddp.py", "as_ddp_worker"): "executable", ("containers/run.py", "run_config_in_image"): "executable",
    ("resume.py", "resumed_config"): "executable", ("hpo.py", "search_server"): "fresh_run",
    ("tracking.py", "remote_config"): "merge_edits",
}


def _modules() -> dict[str, ast.Module]:
    return {path.relative_to(SRC).as_posix(): ast.parse(path.read_text(), str(path)) for path in sorted(SRC.rglob("*.py"))}


def _called(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else None
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def test_nothing_outside_the_run_spec_builds_a_run_config_from_a_record() -> None:
    """A recorded RunConfig is read back (RunConfig.from_dict / .load) and pinned for an executor
    (config.apply to a Record's `.config`) in run_spec only; the six rebuilders each executor had
    (Record.replay_config among them) are gone."""
    found = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "replay_config":
                found.append(f"{name}:{node.lineno} Record.replay_config")
            if not isinstance(node, ast.Call) or name in {"config.py", "run_spec.py"}:
                continue
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in ("from_dict", "load") and isinstance(func.value, ast.Name)
                    and func.value.id == "RunConfig" and name not in PARSERS_ALLOWED):
                found.append(f"{name}:{node.lineno} RunConfig.{func.attr}")
            if _called(node) == "apply" and node.args:
                first = node.args[0]
                record_like = [n for n in ast.walk(first) if (isinstance(n, ast.Attribute) and n.attr == "config")
                               or (isinstance(n, ast.Name) and "record" in n.id)]
                if record_like:
                    found.append(f"{name}:{node.lineno} apply() to a record's config")
    assert not found, "build it with run_spec.executable instead: " + "; ".join(found)


def test_every_executor_builds_its_run_config_through_the_run_spec() -> None:
    modules = _modules()
    missing = []
    for (module, function), builder in EXECUTORS.items():
        definition = next((n for n in ast.walk(modules[module]) if isinstance(n, ast.FunctionDef) and n.name == function), None)
        assert definition is not None, f"{module}: no function {function}"
        calls = {_called(n) for n in ast.walk(definition) if isinstance(n, ast.Call)}
        if builder not in calls:
            missing.append(f"{module}:{function} does not call run_spec.{builder}")
    assert not missing, missing


def test_the_architecture_check_fails_on_a_rebuilder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not vacuous: a module that pins a record's config itself is named."""
    root = tmp_path / "reprozoo"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__"))
    with (root / "checkpoint_store.py").open("a") as handle:
        handle.write("\n\ndef rebuilt(record):\n    return apply(record.config, {'out_dir': None})\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", root)
    with pytest.raises(AssertionError, match=r"checkpoint_store.py:\d+ apply\(\) to a record's config"):
        test_nothing_outside_the_run_spec_builds_a_run_config_from_a_record()


# What makes two runs the same run: defined in run_spec (identity, settings, replayed) and read from there by
# every executor that compares a run with its record.
IDENTITY_NAMES = {"ZOO_DEFAULTS", "NOT_IDENTITY", "WHERE_FIELDS", "RESOLVED_FIELDS", "CPU_FIELDS", "ENVIRONMENT_FIELDS"}
COMPARERS = {
    ("resume.py", "recorded_run_state"): "identity", ("train.py", "check_resumed_state"): "identity",
    ("sweep.py", "run_identity"): "identity", ("repro.py", "_other_settings"): "recorded_settings",
    ("agent_task.py", "check_replayed_settings"): "recorded_settings", ("agent_task.py", "read_task"): "replayed",
}


def test_the_same_run_is_defined_once_in_the_run_spec() -> None:
    """Resume, a re-run sweep, repro and an agent's replay compare a run with its record through
    run_spec; no other module lists the fields of a run's identity or fingerprints a diff itself (at
    2cd1d17, sweep.run_identity was a second definition, without code or weights)."""
    modules = _modules()
    found = []
    for name, tree in modules.items():
        if name == "run_spec.py":
            continue
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            found += [f"{name}:{node.lineno} defines {t.id}" for t in targets if isinstance(t, ast.Name) and t.id in IDENTITY_NAMES]
            if isinstance(node, ast.Call) and _called(node) == "sha256" and any(
                    (isinstance(n, ast.Name) and n.id == "diff") or (isinstance(n, ast.Attribute) and n.attr == "diff")
                    for n in ast.walk(node)):
                found.append(f"{name}:{node.lineno} fingerprints a diff")
    for (module, function), reader in COMPARERS.items():
        definition = next((n for n in ast.walk(modules[module]) if isinstance(n, ast.FunctionDef) and n.name == function), None)
        assert definition is not None, f"{module}: no function {function}"
        if reader not in {_called(n) for n in ast.walk(definition) if isinstance(n, ast.Call)}:
            found.append(f"{module}:{function} does not call run_spec.{reader}")
    assert not found, "define and read what makes a run the same run in run_spec: " + "; ".join(found)


@pytest.mark.parametrize(("module", "code", "named"), [
    ("sweep.py", "NOT_IDENTITY = ('out_dir',)", r"sweep.py:\d+ defines NOT_IDENTITY"),
    ("resume.py", "def state(diff):\n    return hashlib.sha256(diff.encode()).hexdigest()", r"resume.py:\d+ fingerprints a diff"),
])
def test_the_identity_check_fails_on_a_second_definition(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str,
                                                         code: str, named: str) -> None:
    root = tmp_path / "reprozoo"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__"))
    with (root / module).open("a") as handle:
        handle.write(f"\n\n{code}\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", root)
    with pytest.raises(AssertionError, match=named):
        test_the_same_run_is_defined_once_in_the_run_spec()
