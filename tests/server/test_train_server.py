"""`train --tracking server` on real MiniLM + SST-5 (tiny), from a checkout with an uncommitted change,
read back through the ClearML SDK from what the server holds; then a second registration of the same
data, a new data version's lineage, and `repro SERVER_TASK --no-image --verify`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import scratch
from reprozoo.config import RunConfig

TINY = ["--limit-train-samples", "64", "--limit-eval-samples", "32", "--max-length", "32", "--max-epochs", "1",
        "--batch-size", "16", "--set", "trainer.log_every_n_steps=1"]

READ_BACK = """
import hashlib, json, sys
from pathlib import Path
from clearml import Dataset, Model, StorageManager, Task

task = Task.get_task(task_id=sys.argv[1])
artifacts = {name: Path(StorageManager.get_local_copy(a.url, extract_archive=False)).read_text()
             for name, a in task.artifacts.items() if name in ("metrics", "config", "pip-freeze", "provenance")}
models = task.models["output"]
model_dir = Path(models[0].get_local_copy(raise_on_error=True)) if models else None
dataset_id = task.get_parameters_as_dict()["resolved"]["dataset_id"]
dataset = Dataset.get(dataset_id=dataset_id)
data_dir = Path(dataset.get_local_copy())
print(json.dumps({
    "status": task.get_status(), "project": task.get_project_name(), "name": task.name,
    "parameters": task.get_parameters_as_dict(),
    "configuration": {k: task.get_configuration_object(k) for k in task.get_configuration_objects()},
    "scalars": task.get_reported_scalars(), "single_values": task.get_reported_single_values(),
    "artifacts": artifacts, "artifact_urls": {k: a.url for k, a in task.artifacts.items()},
    "script": {"repository": task.data.script.repository, "commit": task.data.script.version_num,
               "diff": task.data.script.diff},
    "models": [{"id": m.id, "name": m.name, "url": m.url, "framework": m.framework} for m in models],
    "model_files": sorted(p.name for p in model_dir.rglob("*") if p.is_file()) if model_dir else [],
    "dataset": {"id": dataset.id, "project": dataset.project, "name": dataset.name, "tags": dataset.tags,
                "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data_dir.iterdir()},
                "parents": dataset.get_dependency_graph().get(dataset.id),
                "entry_point": Task.get_task(task_id=dataset.id).data.script.entry_point},
}))
"""


def last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(server_cli: Any, dirty_checkout: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with scratch(tmp_path_factory, "server-train") as root:
        cli = server_cli(root, src=dirty_checkout / "src", cwd=dirty_checkout)
        out, tmp = root / "run", root / "tmp"
        tmp.mkdir()  # the run's TMPDIR: what it leaves there is a leak
        result = cli("train", "--tracking", "server", "--data-dir", str(data_dir), "--out", str(out), *TINY, *cli.in_project,
                     env={"TMPDIR": str(tmp)})
        assert result.returncode == 0, result.stderr[-3000:]
        task_id = json.loads((out / "provenance.json").read_text())["task_id"]
        read = cli.python(READ_BACK, task_id)
        assert read.returncode == 0, read.stderr[-3000:]
        yield {"cli": cli, "out": out, "task_id": task_id, "server": last_json(read.stdout), "stderr": result.stderr,
               "root": root, "left_in_tmp": sorted(p.name for p in tmp.iterdir())}


def test_train_records_the_run_on_the_server(trained: dict, clearml_server: Any) -> None:
    from reprozoo.tracking import config_from_sections

    out, server = trained["out"], trained["server"]
    assert server["status"] == "completed"
    # Hyperparameters: the RunConfig, section by section.
    cfg = RunConfig.load(out / "config.yaml")
    assert RunConfig.from_dict(config_from_sections(server["parameters"])) == cfg
    assert RunConfig.from_dict(yaml.safe_load(server["configuration"]["RunConfig"])) == cfg
    # Scalars: the per-step training loss, dev and test, and the final single values.
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(server["scalars"]) >= {"train", "val", "test"}, server["scalars"].keys()
    train_steps = [int(x) for x in server["scalars"]["train"]["loss"]["x"]]
    assert train_steps == list(range(len(train_steps))) and len(train_steps) == 4  # 64 sentences, batch 16
    assert server["single_values"]["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert server["single_values"]["dev_macro_f1"] == pytest.approx(metrics["dev"]["macro_f1"])
    # Artifacts: on the fileserver, and downloaded they are the run directory's files.
    assert all(url.startswith(clearml_server.files_url) for url in server["artifact_urls"].values())
    assert json.loads(server["artifacts"]["metrics"]) == metrics
    assert server["artifacts"]["pip-freeze"] == (out / "pip-freeze.txt").read_text()
    assert RunConfig.from_dict(yaml.safe_load(server["artifacts"]["config"])) == cfg
    assert json.loads(server["artifacts"]["provenance"]) == json.loads((out / "provenance.json").read_text())


def test_the_task_holds_the_commit_and_the_uncommitted_diff(trained: dict, dirty_checkout: Path) -> None:
    head = subprocess.run(["git", "-C", str(dirty_checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    script = trained["server"]["script"]
    assert script["repository"] == f"file://{dirty_checkout}" and script["commit"] == head.stdout.strip()
    assert script["diff"] == (trained["out"] / "git.diff").read_text()
    assert "+# reprozoo server tests: an uncommitted change" in script["diff"]


def test_the_data_version_is_on_the_server_with_the_recorded_files(trained: dict, data_dir: Path) -> None:
    from reprozoo.data.versions import DATASET_ENTRY_POINT, NAME, content_hash, dataset_project

    prov = json.loads((trained["out"] / "provenance.json").read_text())
    dataset = trained["server"]["dataset"]
    project = dataset_project(trained["cli"].server.project)  # the run's project's data versions
    assert prov["data"]["dataset_project"] == project
    assert dataset["id"] == prov["data"]["dataset_id"] and (dataset["project"], dataset["name"]) == (project, NAME)
    assert dataset["files"] == {f"{split}.txt": digest for split, digest in prov["data"]["sha256"].items()}
    assert dataset["files"]["train.txt"] == hashlib.sha256((data_dir / "train.txt").read_bytes()).hexdigest()
    assert f"content:{content_hash(prov['data']['sha256'])}" in dataset["tags"]
    assert dataset["entry_point"] == DATASET_ENTRY_POINT  # not the command line, which may hold a secret


def test_the_trained_model_is_an_output_model_on_the_fileserver(trained: dict, clearml_server: Any) -> None:
    models = trained["server"]["models"]
    assert len(models) == 1 and models[0]["framework"] == "PyTorch"
    assert models[0]["url"].startswith(clearml_server.files_url), models[0]["url"]  # not a file:// on the trainer
    exported = sorted(p.name for p in (trained["out"] / "export").rglob("*") if p.is_file())
    assert trained["server"]["model_files"] == exported and "README.md" in exported
    # The zipped package it was uploaded as is gone from the temp dir (ClearML's update_weights_package
    # leaves export-sized model_package.*.zip files there when its upload callback does not run).
    # torch keeps its compile cache there by design (torchinductor_<user>); nothing else may stay.
    assert [name for name in trained["left_in_tmp"] if not name.startswith("torchinductor_")] == []


def test_same_data_again_reuses_the_version_and_new_data_is_its_child(trained: dict, data_dir: Path) -> None:
    """Neither goes through `Dataset.get_parents`, which clearml 2.1.12 does not have."""
    cli, first = trained["cli"], trained["server"]["dataset"]["id"]
    project = ["--project", cli.server.project]
    again = cli("data", "version", "--tracking", "server", "--data-dir", str(data_dir), *project, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"dataset id: {first}" in again.stdout and "same content as the existing version" in again.stdout
    changed = trained["root"] / "changed-trees"
    shutil.copytree(data_dir, changed)
    with (changed / "dev.txt").open("a") as dev:
        dev.write("(2 (2 an) (2 extra))\n")
    new = cli("data", "version", "--tracking", "server", "--data-dir", str(changed), *project, timeout=300)
    assert new.returncode == 0, new.stderr[-2000:]
    assert "new version (server)" in new.stdout and f"parent {first}" in new.stdout
    new_id = new.stdout.split("dataset id: ")[1].split()[0]
    lineage = cli.python(f"from clearml import Dataset; d = Dataset.get(dataset_id={new_id!r});"
                         " print(d.get_dependency_graph().get(d.id))")
    assert lineage.returncode == 0 and lineage.stdout.strip().splitlines()[-1] == str([first])


def test_repro_of_the_server_task_is_bit_identical(trained: dict) -> None:
    cli, task_id = trained["cli"], trained["task_id"]
    result = cli("repro", task_id, "--no-image", "--verify", "--out", "again", "--runs-dir", str(trained["root"] / "runs"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sha256 matches the record" in result.stdout and "+ recorded diff" in result.stdout
    assert "verdict: bit-identical" in result.stdout
    again = trained["root"] / "runs" / "again"
    assert (again / "metrics.json").read_bytes() == (trained["out"] / "metrics.json").read_bytes()
    replay_task = json.loads((again / "provenance.json").read_text())["task_id"]
    assert replay_task != task_id and f"replay clearml task: {replay_task}" in result.stdout
