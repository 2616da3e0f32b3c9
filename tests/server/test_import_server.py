"""`tasks import ZIP`: an offline-recorded run uploaded to the server equals its offline record
(config, metrics, artifacts), read back through the ClearML SDK; and a run started while the
server was unreachable (recorded offline, then imported)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import yaml

from reprozoo.config import RunConfig

TINY = ["--limit-train-samples", "64", "--limit-eval-samples", "32", "--max-length", "32", "--max-epochs", "1",
        "--batch-size", "16", "--set", "trainer.log_every_n_steps=1"]

READ_BACK = """
import json, sys
from pathlib import Path
from clearml import StorageManager, Task

task = Task.get_task(task_id=sys.argv[1])
print(json.dumps({
    "status": task.get_status(), "name": task.name, "project": task.get_project_name(),
    "parameters": task.get_parameters_as_dict(),
    "configuration": {k: task.get_configuration_object(k) for k in task.get_configuration_objects()},
    "scalars": task.get_reported_scalars(),
    "artifact_urls": {k: a.url for k, a in task.artifacts.items()},
    "artifacts": {k: Path(StorageManager.get_local_copy(a.url, extract_archive=False)).read_bytes().decode(errors="replace")
                  for k, a in task.artifacts.items() if k in ("metrics", "config", "pip-freeze", "provenance")},
    "diff": task.data.script.diff,
}))
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def imported_task(cli: Any, zip_path: Path) -> str:
    result = cli("tasks", "import", str(zip_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1].split("imported as task ")[1].split()[0]


def read_back(cli: Any, task_id: str) -> dict:
    read = cli.python(READ_BACK, task_id)
    assert read.returncode == 0, read.stderr[-3000:]
    return json.loads(read.stdout.strip().splitlines()[-1])


def assert_server_task_equals_record(server: dict, out: Path, files_url: str) -> None:
    from reprozoo.tracking import config_from_sections

    cfg = RunConfig.load(out / "config.yaml")
    metrics = json.loads((out / "metrics.json").read_text())
    assert server["status"] == "completed"
    assert RunConfig.from_dict(config_from_sections(server["parameters"])) == cfg
    assert RunConfig.from_dict(yaml.safe_load(server["configuration"]["RunConfig"])) == cfg
    # One document, the same bytes in the run directory and on the task (issue 31): the run as resolved.
    assert server["configuration"]["Provenance"] == (out / "provenance.json").read_text()
    provenance = json.loads(server["configuration"]["Provenance"])
    assert RunConfig.from_dict(provenance["config"]) == cfg and provenance["code"]["diff"] == server["diff"]
    assert server["scalars"]["train"]["loss"]["x"] == [1, 2, 3, 4]
    assert set(server["scalars"]) >= {"train", "dev", "test"}
    # Every artifact now lives on the fileserver, byte for byte the run directory's.
    assert set(server["artifact_urls"]) >= {"metrics", "config", "pip-freeze", "provenance", "model-export"}
    assert all(url.startswith(files_url) for url in server["artifact_urls"].values()), server["artifact_urls"]
    assert json.loads(server["artifacts"]["metrics"]) == metrics
    assert server["artifacts"]["pip-freeze"] == (out / "pip-freeze.txt").read_text()
    assert RunConfig.from_dict(yaml.safe_load(server["artifacts"]["config"])) == cfg
    assert server["diff"] == ((out / "git.diff").read_text() if (out / "git.diff").exists() else "")


def test_tasks_import_puts_the_offline_record_on_the_server(reprozoo_server: Any, clearml_server: Any, data_dir: Path,
                                                            tmp_path: Path) -> None:

    out = tmp_path / "run"
    trained = reprozoo_server("train", "--tracking", "offline", "--data-dir", str(data_dir), "--out", str(out), *TINY,
                              *reprozoo_server.in_project)
    assert trained.returncode == 0, trained.stderr[-3000:]
    record = json.loads((out / "task.json").read_text())
    assert record["mode"] == "offline" and record["task_id"].startswith("offline-") and record["offline_zip"]
    task_id = imported_task(reprozoo_server, Path(record["offline_zip"]))
    assert not task_id.startswith("offline-")
    server = read_back(reprozoo_server, task_id)
    assert server["project"] == clearml_server.project
    assert_server_task_equals_record(server, out, clearml_server.files_url)
    # reprozoo's own reader sees the same record on the server as in the zip. In a fresh interpreter, as a
    # user's `reprozoo tasks show` runs: ClearML reads its configuration once per process.
    code = ("import json, sys; from reprozoo.records import load_record\n"
            "print(json.dumps([[r.config.to_dict(), r.metrics, r.commit, r.diff] for r in map(load_record, sys.argv[1:])]))")
    read = reprozoo_server.python(code, record["offline_zip"], task_id)
    assert read.returncode == 0, read.stderr[-3000:]
    offline, online = json.loads(read.stdout.strip().splitlines()[-1])
    assert online == offline


def test_unreachable_server_at_start_records_offline_then_imports(reprozoo_server: Any, clearml_server: Any,
                                                                  data_dir: Path, tmp_path: Path) -> None:
    # The same keys and fileserver, but the api server named is down: what a user meets when the
    # server is unreachable as the run starts.
    down = tmp_path / "down-clearml.conf"
    clearml_server.conf_copy(down, api_url=f"http://127.0.0.1:{closed_port()}")
    out = tmp_path / "run"
    trained = reprozoo_server("train", "--tracking", "server", "--data-dir", str(data_dir), "--out", str(out), *TINY,
                              *reprozoo_server.in_project, env={"CLEARML_CONFIG_FILE": str(down)})
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "is unreachable; recording this run offline instead" in trained.stderr
    record = json.loads((out / "task.json").read_text())
    assert record["mode"] == "offline" and record["offline_zip"]
    task_id = imported_task(reprozoo_server, Path(record["offline_zip"]))  # the server is back (the real conf)
    assert_server_task_equals_record(read_back(reprozoo_server, task_id), out, clearml_server.files_url)
