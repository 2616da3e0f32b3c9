"""A run survives losing its machine (issue 18), against the real server and real agents.

A server run uploads each resume checkpoint to its task's storage (the server's fileserver). Killed
with kill -9 and its run directory deleted, as if the machine had gone, it finishes elsewhere with
metrics.json byte for byte those of the same run uninterrupted:
- `train --resume TASK_ID` in an empty directory, with a fresh HOME and no data directory (the data
  come as the recorded version from the server); before that, the fileserver gone (the run reached it
  through a proxy, tests/server/proxy.py) is one line naming it, and a stored checkpoint whose bytes
  someone replaced on the fileserver (sha256 not its record's) is refused in one line;
- two venv-mode agents on one queue: the one running the task is killed with its process tree, the
  task is re-enqueued (`train --resume TASK_ID --enqueue Q --force`), the other agent finishes it.
Every step is in the task's scalars once (the one at the checkpoint boundary may be missing).
(The moments of a kill that matter are tested on purpose in tests/test_resume.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, server_tasks

from helpers import scratch
from reprozoo.checkpoint_store import KEEP_STORED

pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS = 20  # 320 sentences, batch 16, one epoch
RUN = ["train", "--model", "all-minilm-l6-v2", "--tracking", "server", "--limit-train-samples", "320",
       "--limit-eval-samples", "64", "--max-length", "32", "--batch-size", "16", "--max-epochs", "1",
       "--checkpoint-every", "5", "--set", "trainer.val_check_interval=0.5", "--set", "trainer.log_every_n_steps=1"]
SCALARS = """
import json, sys
from clearml import Task
task = Task.get_task(task_id=sys.argv[1])
print(json.dumps({"status": task.get_status(), "scalars": task.get_reported_scalars(),
                  "single_values": task.get_reported_single_values(),
                  "artifacts": {k: a.url for k, a in task.artifacts.items()}, "models": [m.url for m in task.models["output"]],
                  "stored": task.artifacts["resume-checkpoint"].url if "resume-checkpoint" in task.artifacts else None}))
"""


def read_task(cli: Any, task_id: str) -> dict[str, Any]:
    read = cli.python(SCALARS, task_id)
    assert read.returncode == 0, read.stderr[-3000:]
    return json.loads(read.stdout.strip().splitlines()[-1])


def assert_every_step_once(scalars: dict[str, Any], resumed_from: int) -> None:
    for title, series in scalars.items():
        for name, points in series.items():
            assert points["x"] == sorted(set(points["x"])), (title, name, points["x"])  # no step twice
    # Numbered as the console counts steps (1…STEPS); a kill just after the checkpoint at step N can lose N's loss.
    missing = set(range(1, STEPS + 1)) - set(scalars["train"]["loss"]["x"])
    assert missing <= {resumed_from}, (sorted(missing), resumed_from)


# What the fileserver holds, asked through the SDK (a server with fileserver auth needs its keys).
EXISTING = """
import json, sys
from clearml import StorageManager
print(json.dumps([url for url in sys.argv[1:] if StorageManager.exists_file(url)]))
"""
REPLACE = """
import sys
from clearml import StorageManager
StorageManager.upload_file(sys.argv[1], sys.argv[2], wait_for_upload=True, retries=3)
"""


def uploaded(record: Path) -> tuple[list[str], list[str]]:
    """The resume checkpoints and best checkpoints a run's checkpoint-uploads.json says it stored."""
    attempts = json.loads(record.read_text())["attempts"]
    stored = [a for a in attempts if a["status"] == "stored"]
    return [a["url"] for a in stored], sorted({a["best_url"] for a in stored if "best_url" in a})


def existing(cli: Any, urls: list[str]) -> list[str]:
    if not urls:
        return []
    found = cli.python(EXISTING, *urls)
    assert found.returncode == 0, found.stderr[-3000:]
    return json.loads(found.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(server_cli: Any, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, Any]]:
    """The run uninterrupted, recorded on the server: its task and metrics.json bytes."""
    with scratch(tmp_path_factory, "uninterrupted") as root:
        cli = server_cli(root)
        done = cli(*RUN, *cli.in_project, "--data-dir", str(data_dir), "--out", str(root / "run"),
                   "--set", "tracking.task_name=preempt-original")
        assert done.returncode == 0, done.stderr[-3000:]
        task_id = re.search(r"clearml task: ([0-9a-f]{32})", done.stdout).group(1)
        record = json.loads((root / "run" / "task.json").read_text())["checkpoint_uploads"]
        yield {"task_id": task_id, "metrics": (root / "run" / "metrics.json").read_text(), "uploads": record, "cli": cli}


def test_checkpoints_reach_storage_and_go_when_the_task_completes(uninterrupted: dict[str, Any], clearml_server: Any) -> None:
    uploads = uninterrupted["uploads"]
    stored = [a for a in uploads["attempts"] if a["status"] == "stored"]
    assert len(stored) >= 3 and all(a["url"].startswith(clearml_server.files_url) for a in stored), uploads
    # From the first evaluation on, the best checkpoint goes with each (scored at the end, wherever it resumed).
    assert all("best_url" in a for a in stored if a["step"] >= STEPS // 2), uploads
    # The last checkpoint (end-of-epoch evaluation) is stored, or was not sent: the task completed.
    last = uploads["attempts"][-1]
    assert last["step"] == STEPS and last["status"] in ("stored", "not uploaded: the task completed"), uploads
    assert 1 <= len(uploads["removed_at_completion"]) <= KEEP_STORED  # a bounded number was kept, until completion
    assert uploads["stored"] == []
    task = read_task(uninterrupted["cli"], uninterrupted["task_id"])
    assert task["status"] == "completed" and "resume-checkpoint" not in task["artifacts"]
    urls = [a["url"] for a in stored] + [a["best_url"] for a in stored if "best_url" in a]
    assert existing(uninterrupted["cli"], urls) == []  # gone from the fileserver, the best ones too


def test_resume_by_task_id_on_a_fresh_machine_is_bit_identical(uninterrupted: dict[str, Any], server_cli: Any, proxied: Any,
                                                                data_dir: Path, tmp_path: Path) -> None:
    first = server_cli(tmp_path / "lost")
    first.env["CLEARML_CONFIG_FILE"] = str(proxied.config_file)  # its checkpoints go up through the files proxy
    out = tmp_path / "lost" / "run"
    proc = first.popen(*RUN, *first.in_project, "--data-dir", str(data_dir), "--out", str(out), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    record, deadline = out / "checkpoint-uploads.json", time.monotonic() + 600
    # Killed once a checkpoint after the first evaluation is in storage (its best checkpoint with it:
    # the resumed run must score that one), and the machine gone with its run directory.
    while not (record.is_file() and '"best_url"' in record.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint uploaded in 10 minutes"
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    task_id = json.loads((out / "provenance.json").read_text())["task_id"]
    checkpoints, bests = uploaded(record)
    # Bounded: the two latest (a third while the kill fell between an upload and the removal it allows).
    assert 1 <= len(existing(first, checkpoints)) <= KEEP_STORED + 1
    assert existing(first, bests)
    shutil.rmtree(tmp_path / "lost")

    fresh = server_cli(tmp_path / "elsewhere")  # its own HOME, caches, and working directory
    fresh.env["CLEARML_CONFIG_FILE"] = str(proxied.config_file)  # the same server, through the same proxies
    env = {k: v for k, v in fresh.env.items() if k != "REPROZOO_DATA_DIR"}
    proxied.files.down()
    try:
        down = fresh("train", "--resume", task_id, env=env)
    finally:
        proxied.files.up()
    assert down.returncode != 0
    last = down.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download the checkpoint") and proxied.files.url in last, down.stderr[-2000:]
    assert "start the server's fileserver" in last

    # Someone with access to the fileserver replaces the newest checkpoint (one bit changed).
    newest = existing(fresh, checkpoints)[-1]
    original = tmp_path / "original.ckpt"
    fetched = fresh.python("import sys; from clearml import StorageManager; print(StorageManager.get_local_copy("
                           "sys.argv[1], extract_archive=False, force_download=True))", newest)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    shutil.copyfile(fetched.stdout.strip().splitlines()[-1], original)
    changed = tmp_path / "changed.ckpt"
    data = original.read_bytes()
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert fresh.python(REPLACE, str(changed), newest).returncode == 0
    try:
        tampered = fresh("train", "--resume", task_id, env=env)
    finally:
        assert fresh.python(REPLACE, str(original), newest).returncode == 0
    assert tampered.returncode != 0
    last = tampered.stderr.strip().splitlines()[-1]
    assert "not the" in last and "its task recorded: refused" in last, tampered.stderr[-2000:]

    resumed = fresh("train", "--resume", task_id, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"clearml task: {task_id}" in resumed.stdout
    run_dir = tmp_path / "elsewhere" / "runs" / "run"
    assert (run_dir / "metrics.json").read_text() == uninterrupted["metrics"]  # byte for byte
    step = int(re.search(r"from its checkpoint at step (\d+)", resumed.stderr).group(1))
    task = read_task(fresh, task_id)
    assert task["status"] == "completed"
    assert_every_step_once(task["scalars"], step)
    assert task["scalars"]["lr"]["pg1"]["x"] == list(range(1, STEPS + 1))  # each step's lr, logged before its checkpoint
    assert {10, 20} <= set(task["scalars"]["dev"]["accuracy"]["x"])  # dev at half and end of the epoch
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert task["scalars"]["test"]["accuracy"]["y"][-1] == metrics["test"]["accuracy"]
    # Issue 32, item 4: what the lost process stored goes too when the resumed task completes (the resumed
    # process took the list over from the task's artifact), and so does what the resumed process stored.
    record = json.loads((run_dir / "task.json").read_text())["checkpoint_uploads"]
    resumed_urls = [a["url"] for a in record["attempts"] if a["status"] == "stored"]
    assert existing(fresh, checkpoints + bests + resumed_urls) == [] and "resume-checkpoint" not in task["artifacts"]


# --- agents -----------------------------------------------------------------------------------------
def _processes_of(task_id: str) -> list[int]:
    """Processes running that task (ClearML's agent hands its id to the task's process tree)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if f"CLEARML_TASK_ID={task_id}".encode() in environ.split(b"\0"):
                found.append(int(proc.name))
    return found


def test_a_task_whose_agent_is_killed_is_finished_by_another_agent_bit_for_bit(
        uninterrupted: dict[str, Any], agent_binary: Path, clearml_server: Any, server_cli: Any, data_dir: Path,
        tmp_path: Path) -> None:
    cli = server_cli(tmp_path / "user")
    env = {k: v for k, v in cli.env.items() if k != "REPROZOO_DATA_DIR"}  # agents train on the recorded data version
    agents: list[Agent] = []
    try:
        queue = clearml_server.queue("preempt-q")
        for name in ("spot-1", "spot-2"):  # one after the other: started together, each created a queue of that name
            agents.append(Agent(agent_binary, env, queue, tmp_path / name, name, clearml_server.worker(name)).start())
            agents[-1].wait_listening()
        enqueued = cli("repro", uninterrupted["task_id"], "--enqueue", queue)
        assert enqueued.returncode == 0, enqueued.stderr[-3000:]
        task_id = re.search(r"enqueued task ([0-9a-f]{32})", enqueued.stdout).group(1)
        deadline = time.monotonic() + 600
        while read_task(cli, task_id)["stored"] is None:
            assert time.monotonic() < deadline, "the agent uploaded no checkpoint in 10 minutes"
            time.sleep(1)
        lost = next(a for a in agents if task_id in a.ran())
        other = next(a for a in agents if a is not lost)
        # kill -9: the agent, the task's process tree, and its run directory, as if the machine had gone.
        assert lost.process is not None
        os.killpg(lost.process.pid, signal.SIGKILL)
        for pid in _processes_of(task_id):
            os.kill(pid, signal.SIGKILL)
        lost.process.wait(timeout=30)
        # Found by its config.yaml: a kill between atomic_torch_save's two renames leaves no last.ckpt.
        run_dirs = [p.parent for p in lost.folder.rglob("config.yaml") if (p.parent / "checkpoints").is_dir()]
        assert run_dirs, "the killed agent's run directory was not found"
        for run_dir in run_dirs:
            shutil.rmtree(run_dir)

        # The server still says in_progress: refused without --force, in one line naming the worker.
        refused = cli("train", "--resume", task_id, "--enqueue", queue)
        assert refused.returncode != 0
        line = refused.stderr.strip().splitlines()[-1]
        assert f"is in progress on {lost.worker}" in line and "add --force" in line, refused.stderr[-2000:]
        requeued_at = time.monotonic()
        requeued = cli("train", "--resume", task_id, "--enqueue", queue, "--force")
        assert requeued.returncode == 0, requeued.stderr[-3000:]
        assert "in_progress before" in requeued.stdout and "resumes from its checkpoint at step" in requeued.stdout
        pattern = re.compile(r"resuming task \w+ from its checkpoint at step (\d+)")
        while not (resumed := pattern.search(other.log())):
            assert time.monotonic() < requeued_at + 600 and "DONE: Running task" not in other.log(), other.log()[-4000:]
            time.sleep(0.2)
        print(f"re-enqueue → the other agent resumed from step {resumed.group(1)}: {time.monotonic() - requeued_at:.1f} s")
        task = server_tasks(cli.env, [task_id], wait=900)[task_id]
        assert task["status"] == "completed", other.log()[-4000:]
        assert task["metrics"] == uninterrupted["metrics"]  # byte for byte
        assert other.ran() == [task_id] and task["last_worker"] == other.worker
        after = read_task(cli, task_id)
        assert_every_step_once(after["scalars"], int(resumed.group(1)))
        # What the agent made is in the server's storage, not left on its machine: the export, the record.
        files = clearml_server.files_url
        assert len(after["models"]) == 1 and after["models"][0].startswith(files), after["models"]
        assert all(after["artifacts"][k].startswith(files) for k in ("metrics", "config", "provenance")), after["artifacts"]
        assert "resume-checkpoint" not in after["artifacts"]  # removed when the task completed
    finally:
        for agent in agents:
            agent.stop()
