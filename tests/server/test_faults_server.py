"""Faults against the real server, nothing lost: the apiserver gone mid-training and back, the
fileserver gone while the run uploads its artifacts, wrong credentials. (The server unreachable at
start: tests/server/test_import_server.py.)

The server may be anyone's long-lived one, so no test stops it: the run reaches it through proxies
(tests/server/proxy.py) that a test takes down (new connections refused, open ones dropped: what a
run meets when a server process dies) and brings back up."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

SMALL = ["--limit-train-samples", "160", "--limit-eval-samples", "32", "--max-length", "32", "--batch-size", "16",
         "--max-epochs", "1", "--checkpoint-every", "2", "--set", "trainer.log_every_n_steps=1"]
STEPS = 10
READ_BACK = """
import json, sys
from clearml import Task
task = Task.get_task(task_id=sys.argv[1])
print(json.dumps({"status": task.get_status(), "scalars": task.get_reported_scalars(),
                  "single_values": task.get_reported_single_values(),
                  "artifact_urls": {k: a.url for k, a in task.artifacts.items()},
                  "models": [m.url for m in task.models["output"]]}))
"""


def read_back(cli: Any, task_id: str) -> dict:
    read = cli.python(READ_BACK, task_id)
    assert read.returncode == 0, read.stderr[-3000:]
    return json.loads(read.stdout.strip().splitlines()[-1])


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"no {path} in {seconds} s"
        time.sleep(0.1)


def assert_complete(server: dict, out: Path, files_url: str) -> None:
    metrics = json.loads((out / "metrics.json").read_text())
    assert server["status"] == "completed"
    assert server["scalars"]["train"]["loss"]["x"] == list(range(1, STEPS + 1))  # every step, once, as the console counts
    assert server["scalars"]["test"]["accuracy"]["y"][-1] == metrics["test"]["accuracy"]
    assert set(server["artifact_urls"]) >= {"metrics", "config", "pip-freeze", "provenance"}
    assert all(url.startswith(files_url) for url in [*server["artifact_urls"].values(), *server["models"]])
    assert len(server["models"]) == 1


@pytest.mark.slow  # ~2 min: 15 s down, then ClearML's retry back-off
def test_apiserver_gone_mid_training_and_back(reprozoo_server: Any, proxied: Any, data_dir: Path, tmp_path: Path) -> None:
    """The run carries on (ClearML retries every call), finishes, and its record ends up
    complete on the server, in the same task: no offline session, nothing to import."""
    out = tmp_path / "run"
    conf = {"CLEARML_CONFIG_FILE": str(proxied.config_file)}
    proc = reprozoo_server.popen("train", "--tracking", "server", "--data-dir", str(data_dir), "--out", str(out), *SMALL,
                                 *reprozoo_server.in_project, env=conf, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(out / "checkpoints" / "last.ckpt", proc)  # training, its task open on the server
        proxied.api.down()
        time.sleep(15)
    finally:
        proxied.api.up()
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    record = json.loads((out / "task.json").read_text())
    assert record["mode"] == "server" and f"clearml task: {record['task_id']}" in stdout
    assert not list(reprozoo_server.offline_dir.glob("*.zip"))  # nothing left to import
    assert_complete(read_back(reprozoo_server, record["task_id"]), out, proxied.files.url)


@pytest.mark.slow  # ~80 s
def test_fileserver_down_during_the_artifact_uploads(reprozoo_server: Any, proxied: Any, data_dir: Path, tmp_path: Path) -> None:
    """Down from mid-training (after the data version and pip-freeze went up) until 15 s after the
    run has written metrics.json, so the metrics, config, provenance and model uploads meet it down,
    and so do the uploads of the resume checkpoints (issue 18). ClearML retries each upload; the
    run finishes and every artifact is on the fileserver. The checkpoint uploads that met it down are
    retried until a newer checkpoint replaces them, the last one until it is stored, and the record
    says which reached the storage."""
    out = tmp_path / "run"
    # Kept at completion: the run waits for its last checkpoint's upload (else it is not sent at all).
    proc = reprozoo_server.popen("train", "--tracking", "server", "--data-dir", str(data_dir), "--out", str(out),
                                 *SMALL, "--set", "trainer.keep_last_checkpoint=true", *reprozoo_server.in_project,
                                 env={"CLEARML_CONFIG_FILE": str(proxied.config_file)}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    try:
        wait_for(out / "checkpoints" / "last.ckpt", proc)
        proxied.files.down()
        wait_for(out / "metrics.json", proc)  # trained and evaluated: the uploads come next
        time.sleep(15)
    finally:
        proxied.files.up()
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    record = json.loads((out / "task.json").read_text())
    assert_complete(read_back(reprozoo_server, record["task_id"]), out, proxied.files.url)
    attempts = record["checkpoint_uploads"]["attempts"]
    assert any(a["status"].startswith("failed") for a in attempts), attempts  # met the fileserver down
    assert any(a["status"] == "stored" and a["step"] == STEPS for a in attempts), attempts  # the last one, once it was back
    assert read_back(reprozoo_server, record["task_id"])["artifact_urls"]["resume-checkpoint"].endswith(".ckpt")
    assert "checkpoint upload to" in stderr and "retrying in" in stderr


@pytest.mark.parametrize("command", [["tasks", "list", "--server"], ["train", "--tracking", "server"]])
def test_wrong_credentials_are_one_line_without_the_key(command: list[str], reprozoo_server: Any, clearml_server: Any,
                                                        data_dir: Path, tmp_path: Path) -> None:
    secret = "WrongSecretKeyThatMustNotBeEchoed0123456789"
    bad = clearml_server.conf_copy(tmp_path / "bad-clearml.conf", secret_key=secret)
    extra = ["--data-dir", str(data_dir), "--out", str(tmp_path / "run"), *SMALL, *reprozoo_server.in_project] if command[0] == "train" else []
    result = reprozoo_server(*command, *extra, env={"CLEARML_CONFIG_FILE": str(bad)}, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and len(errors) == 1, result.stderr[-3000:]
    assert f"the ClearML server {clearml_server.api_url} rejected the credentials (HTTP 401)" in errors[0]
    assert "CLEARML_API_SECRET_KEY" in errors[0] and "Traceback" not in result.stderr
    assert secret not in result.stderr + result.stdout and clearml_server.access_key not in result.stderr + result.stdout
