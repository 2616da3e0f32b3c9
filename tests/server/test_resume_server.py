"""kill -9 of a `train --tracking server` run mid-epoch, then `train --resume TASK_ID`: the same server
task continues (one task), and its scalars have every step once (no gap, no duplicate)."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from reprozoo.resume import find_resume_checkpoint

STEPS = 20  # 320 sentences, batch 16, one epoch
SCALARS = """
import json, sys
from clearml import Task
task = Task.get_task(task_id=sys.argv[1])
same_name = Task.get_tasks(project_name=task.get_project_name(), task_name=f"^{task.name}$")
print(json.dumps({"status": task.get_status(), "scalars": task.get_reported_scalars(),
                  "single_values": task.get_reported_single_values(), "same_name": [t.id for t in same_name]}))
"""


def wait_for_checkpoint_writes(proc: subprocess.Popen, last: Path, writes: int) -> None:
    seen, stamp, deadline = 0, None, time.monotonic() + 600
    while seen < writes:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was killed: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "no checkpoint in 10 minutes"
        if last.exists() and last.stat().st_mtime_ns != stamp:
            stamp, seen = last.stat().st_mtime_ns, seen + 1
        time.sleep(0.05)


def test_resume_by_task_id_continues_the_same_server_task(reprozoo_server: Any, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    name = f"resume-{tmp_path.name}"
    args = ["train", "--tracking", "server", "--data-dir", str(data_dir), "--out", str(out), "--limit-train-samples", "320",
            "--limit-eval-samples", "64", "--max-length", "32", "--batch-size", "16", "--max-epochs", "1",
            "--checkpoint-every", "3", "--set", f"tracking.task_name={name}", "--set", "trainer.val_check_interval=0.5",
            "--set", "trainer.log_every_n_steps=1"]
    proc = reprozoo_server.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_checkpoint_writes(proc, out / "checkpoints" / "last.ckpt", writes=random.Random().randint(1, 4))
    time.sleep(random.Random().uniform(0.0, 1.0))
    proc.kill()
    proc.communicate()
    assert not (out / "metrics.json").exists()
    resumed_from = torch.load(find_resume_checkpoint(out), map_location="cpu", weights_only=False, mmap=True)["global_step"]
    task_id = json.loads((out / "provenance.json").read_text())["task_id"]

    resumed = reprozoo_server("train", "--resume", task_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"clearml task: {task_id}" in resumed.stdout  # the same task, reopened
    read = reprozoo_server.python(SCALARS, task_id)
    assert read.returncode == 0, read.stderr[-3000:]
    server = json.loads(read.stdout.strip().splitlines()[-1])
    assert server["status"] == "completed" and server["same_name"] == [task_id]  # one task
    for title, series in server["scalars"].items():
        for name, points in series.items():
            assert points["x"] == sorted(set(points["x"])), (title, name, points["x"])  # no step twice
    steps = server["scalars"]["train"]["loss"]["x"]
    # Every step, except possibly the one Lightning logs just after writing the checkpoint of it,
    # when the kill fell in the milliseconds before that step's flush (tracking.flush_on_checkpoint).
    missing = set(range(STEPS)) - set(steps)
    assert missing <= {resumed_from - 1}, (sorted(missing), resumed_from)
    assert server["scalars"]["lr"]["pg1"]["x"] == list(range(STEPS))  # logged before each batch's checkpoint
    assert {9, 19} <= set(server["scalars"]["val"]["accuracy"]["x"])  # dev at half and end of the epoch
    metrics = json.loads((out / "metrics.json").read_text())
    assert server["single_values"]["test_accuracy"] == metrics["test"]["accuracy"]
