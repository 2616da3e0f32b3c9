"""Data versions offline: content-keyed ids, child versions, exact resolution (real ClearML, offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reprozoo.data import versions
from reprozoo.data.sst5 import DataSourceError, data_fingerprint


@pytest.fixture
def offline_clearml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: Path) -> Path:
    root = tmp_path / "clearml"
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(root))
    from reprozoo.session import configure_clearml

    configure_clearml()
    return root / "offline"


def test_same_content_same_id_changed_content_child_version(data_dir: Path, tmp_path: Path, offline_clearml: Path) -> None:
    first = versions.register(data_dir, "offline")
    assert first.created and first.dataset_id.startswith("offline-") and first.parent is None
    assert first.sha256 == data_fingerprint(data_dir)
    # A copy elsewhere with the same bytes is the same version.
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    again = versions.register(copy, "offline")
    assert again.dataset_id == first.dataset_id and not again.created
    # The ClearML offline session exists and is a dataset of reprozoo/datasets/sst5, tagged by content.
    session = json.loads((offline_clearml / first.dataset_id / "task.json").read_text())
    assert session["name"] == versions.NAME and session["project_name"].startswith(versions.dataset_project(versions.DEFAULT_PROJECT))
    assert f"content:{first.content_hash}" in session["tags"] and (offline_clearml / f"{first.dataset_id}.zip").is_file()
    # Changed content: a new version whose parent is the previous one.
    lines = (copy / "train.txt").read_text().splitlines(keepends=True)
    (copy / "train.txt").write_text("".join(lines[:-1]))
    child = versions.register(copy, "offline")
    assert child.created and child.dataset_id != first.dataset_id and child.parent == first.dataset_id
    assert child.sha256["train"] != first.sha256["train"] and child.sha256["dev"] == first.sha256["dev"]
    # Each id resolves to exactly its own bytes.
    assert data_fingerprint(Path(versions.resolve(first.dataset_id).path)) == first.sha256
    assert data_fingerprint(Path(versions.resolve(child.dataset_id).path)) == child.sha256


def test_resolve_refuses_tampered_or_unknown_versions(data_dir: Path, offline_clearml: Path) -> None:
    version = versions.register(data_dir, "offline")
    with (Path(version.path) / "dev.txt").open("a") as handle:
        handle.write("(2 (2 tampered))\n")
    with pytest.raises(DataSourceError, match="dev changed on disk"):
        versions.resolve(version.dataset_id)
    with pytest.raises(DataSourceError, match="not in this machine's offline index"):
        versions.resolve("offline-0000")


def test_train_dataset_id_plans_on_that_version(data_dir: Path, offline_clearml: Path) -> None:
    from reprozoo.config import RunConfig
    from reprozoo.train import plan_run

    version = versions.register(data_dir, "offline")
    plan = plan_run(RunConfig().override([f"data.dataset_id={version.dataset_id}", "data.data_dir=/nonexistent"]))
    assert plan.data_dir == Path(version.path) and plan.data_sha256 == version.sha256
    assert plan.dataset.dataset_id == version.dataset_id


def test_data_version_cli_same_content_same_id(data_dir: Path, offline_clearml: Path) -> None:
    import os
    import subprocess
    import sys

    def run() -> list[str]:
        result = subprocess.run([sys.executable, "-m", "reprozoo", "data", "version", "--data-dir", str(data_dir),
                                 "--tracking", "offline"], capture_output=True, text=True, env=dict(os.environ), timeout=120)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if line.startswith(("dataset id:", "new version", "same content"))]

    first, second = run(), run()
    assert first[0] == second[0] and first[0].startswith("dataset id: offline-")
    assert first[1].startswith("new version (offline)") and second[1].startswith("same content as the existing version")
