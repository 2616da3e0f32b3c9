"""`train --tracking server` on real MiniLM + SST-5 (tiny), from a checkout with an uncommitted change,
read back through the ClearML SDK from what the server holds; then a second registration of the same
data, a new data version's lineage, and `repro SERVER_TASK --no-image --verify`."""

from __future__ import annotations

import hashlib
import json
import re
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
        "--batch-size", "16"]  # trainer.log_every_n_steps stays the default, larger than the run's 4 steps

READ_BACK = """
import hashlib, json, sys
from pathlib import Path
from clearml import Dataset, Model, StorageManager, Task
from clearml.backend_api.session.client import APIClient

task = Task.get_task(task_id=sys.argv[1])
artifacts = {name: Path(StorageManager.get_local_copy(a.url, extract_archive=False)).read_text()
             for name, a in task.artifacts.items() if name in ("metrics", "config", "pip-freeze", "provenance")}
models = task.models["output"]
model_dir = Path(models[0].get_local_copy(raise_on_error=True)) if models else None
dataset_id = task.get_user_properties(value_only=True)["dataset_id"]
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
    "models": [{"id": m.id, "name": m.name, "url": m.url, "framework": m.framework, "labels": m.labels, "comment": m.comment}
               for m in models],
    "previews": {k: a.preview for k, a in task.artifacts.items()},
    "output_entries": [m.name for m in task.data.models.output],
    "input_entries": [m.name for m in task.data.models.input],
    "input_models": [{"id": m.id, "name": m.name, "url": m.url, "tags": m.tags, "comment": m.comment} for m in task.models["input"]],
    "properties": task.get_user_properties(value_only=True), "comment": task.comment, "tags": task.get_tags(),
    "runtime": dict(task.data.runtime or {}),
    "plots": [{"metric": p["metric"], "variant": p["variant"], "layout": json.loads(p["plot_str"]).get("layout", {}),
               "data": json.loads(p["plot_str"]).get("data", [])} for p in task.get_reported_plots()],
    "debug_samples": [e["variant"] for it in APIClient().events.debug_images(
        metrics=[{"task": task.id, "metric": "misclassified dev"}], iters=1).metrics[0].iterations for e in it["events"]],
    "console": "\\n".join(task.get_reported_console_output(number_of_reports=1000)),
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
    assert set(server["scalars"]) >= {"train", "dev", "test"}, server["scalars"].keys()
    train_steps = [int(x) for x in server["scalars"]["train"]["loss"]["x"]]
    assert train_steps == [1, 2, 3, 4]  # 64 sentences, batch 16: every step of so short a run, numbered as the console counts
    assert server["scalars"]["test"]["accuracy"]["y"] == [pytest.approx(metrics["test"]["accuracy"])]
    assert server["scalars"]["dev"]["best_checkpoint_macro_f1"]["y"] == [pytest.approx(metrics["dev"]["macro_f1"])]
    # Artifacts: on the fileserver, and downloaded they are the run directory's files.
    assert all(url.startswith(clearml_server.files_url) for url in server["artifact_urls"].values())
    assert json.loads(server["artifacts"]["metrics"]) == metrics
    assert server["artifacts"]["pip-freeze"] == (out / "pip-freeze.txt").read_text()
    assert RunConfig.from_dict(yaml.safe_load(server["artifacts"]["config"])) == cfg
    assert json.loads(server["artifacts"]["provenance"]) == json.loads((out / "provenance.json").read_text())


def test_the_task_reads_at_a_glance_in_the_web_ui(trained: dict) -> None:
    """What the web UI shows, read back the way it reads it: the record's facts as User Properties (not
    hyperparameters), a description that says how to re-run it, links to the data version and the base
    weights, a named and labelled output model, one name per split, plots with axis titles, debug
    samples, and a console that ends with the run's summary and holds none of ClearML's chatter."""
    from reprozoo import task_view
    from reprozoo.config import _SECTIONS
    from reprozoo.session import RUN_SECTION

    out, server, task_id = trained["out"], trained["server"], trained["task_id"]
    prov = json.loads((out / "provenance.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    # CONFIGURATION: facts as User Properties; the only hyperparameter sections are RunConfig's.
    props = server["properties"]
    assert props["commit"] == prov["code"]["commit"] and props["dirty"] == "yes"
    assert props["dataset_id"] == prov["data"]["dataset_id"] and props["data_content_hash"] == prov["data"]["content_hash"]
    assert props["image_digest"] == prov["environment"]["image_digest"]
    assert props["lock"] == f"{prov['environment']['lock_file']} sha256:{prov['environment']['lock_sha256']}"
    assert props["weights_revision"] == prov["model"]["revision"] and props["precision"] == "32-true"
    assert props["world_size"] == "1" and props["reproduce"] == f"reprozoo repro {task_id} --verify"
    assert set(server["parameters"]) == {*_SECTIONS, RUN_SECTION, "properties"}, server["parameters"].keys()
    assert props["recorded_config_sha256"] == task_view.text_sha256(server["configuration"]["RunConfig (as recorded)"])
    # INFO: what it is, how to re-run it, its scores; tags.
    comment = server["comment"]
    assert f"reprozoo repro {task_id} --verify" in comment and "Auto-generated" not in comment
    assert f"{prov['model']['name']} ({prov['model']['hub_id']})" in comment and "seed 42" in comment
    assert f" · test: accuracy {metrics['test']['accuracy']:.4f}, macro-F1 {metrics['test']['macro_f1']:.4f}" in comment
    assert "warning: the repository is file://" in comment  # the dirty checkout has no remote
    assert {"sst-5", prov["model"]["name"]} <= set(server["tags"])
    # Links: ClearML's own dataset link, the base weights as input model, the output model.
    assert server["runtime"]["datasets"] == [prov["data"]["dataset_id"]]
    [base] = server["input_models"]
    assert prov["model"]["hub_id"] in base["url"] and prov["model"]["revision"] in base["url"]
    assert "base-weights" in base["tags"] and prov["model"]["revision"] in base["comment"]
    [model] = server["models"]
    assert model["name"] == f"{prov['model']['name']} SST-5 {out.name}" and model["labels"] == task_view.LABELS
    assert server["output_entries"] == [model["name"]] and server["input_entries"] == ["base weights"]
    assert "/tmp" not in model["comment"] and "reprozoo-model-" not in model["comment"] and task_id in model["comment"]
    # ARTIFACTS: previews show the files' text, not their names.
    assert server["previews"]["metrics"] == (out / "metrics.json").read_text()
    assert server["previews"]["provenance"].startswith("{") and prov["code"]["commit"] in server["previews"]["provenance"]
    assert "seed: 42" in server["previews"]["config"] and "torch==" in server["previews"]["pip-freeze"]
    # SCALARS: dev (never val), the best checkpoint's dev scores a series of their own, test single values.
    scalars = server["scalars"]
    assert "val" not in scalars and "Summary" not in scalars
    assert set(scalars["dev"]) == {"accuracy", "macro_f1", "best_checkpoint_accuracy", "best_checkpoint_macro_f1"}
    console_steps = [int(m) for m in re.findall(r"reprozoo: dev  epoch \d+ step (\d+):", server["console"])]
    assert scalars["dev"]["accuracy"]["x"] == console_steps and console_steps[-1] == 4  # the console's step numbers
    assert scalars["lr"]["pg1"]["x"] == scalars["train"]["loss"]["x"] == [1, 2, 3, 4]  # a step's lr beside its loss
    assert set(server["single_values"]) == {"train_seconds"}  # no headline metric under "Summary"
    # PLOTS: dev and test confusion matrices with axis titles, per-class tables.
    plots = {(p["metric"], p["variant"]): p for p in server["plots"]}
    for split in ("dev", "test"):
        layout = plots[(f"confusion matrix {split}", split)]["layout"]
        assert (layout["xaxis"]["title"]["text"], layout["yaxis"]["title"]["text"]) == ("predicted", "true")
        assert layout["xaxis"]["automargin"] and layout["yaxis"]["automargin"]
        table = plots[(f"per-class scores {split}", split)]["data"][0]
        assert table["type"] == "table" and "F1" in str(table["header"])
    # DEBUG SAMPLES: the misclassified dev sentences, bounded.
    wrong = metrics["dev"]["n"] - sum(metrics["dev"]["confusion_matrix"][c][c] for c in range(5))
    assert len(server["debug_samples"]) == min(wrong, task_view.MISCLASSIFIED_SAMPLES) > 0
    # CONSOLE: ends with the summary, before the task closed; none of the noise.
    console = server["console"]
    assert f"test accuracy {metrics['test']['accuracy']:.4f}" in console and f"run directory: {out}" in console
    for noise in ("Can't get url information", "weights_only", "MB [", "No repository found", "Selecting it"):
        assert noise not in console, noise


def test_an_edit_of_a_read_only_record_is_refused_on_an_agent(trained: dict) -> None:
    """A clone whose `RunConfig (as recorded)` was edited in the UI: the agent's loader refuses it in one line."""
    script = """
import sys
from clearml import Task
from reprozoo import tracking
from reprozoo.config import ConfigError, RunConfig
clone = Task.clone(source_task=sys.argv[1], name="edited clone")
text = clone.get_configuration_object("RunConfig (as recorded)")
tracking.remote_config(clone, RunConfig())  # unedited: accepted
clone.set_configuration_object("RunConfig (as recorded)", config_text=text.replace("batch_size: 16", "batch_size: 8"))
try:
    tracking.remote_config(clone, RunConfig())
except ConfigError as err:
    print("refused:", err)
finally:
    clone.delete()
"""
    result = trained["cli"].python(script, trained["task_id"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: task " in result.stdout and "'RunConfig (as recorded)' was edited" in result.stdout


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
