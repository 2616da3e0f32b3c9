"""Real `clearml-agent` daemons for the server tests (and bench/agent_latency.py): the pinned agent
(envs/colab-agent.lock) in a venv of its own, serving one of the test run's queues in venv mode (the
agent clones the recorded commit and applies the diff; given a venv cache it builds the task's venv
from its requirements with pip, else it runs the task with this interpreter) or in docker mode (the
task runs in the image named on it), each stopped by its process group id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "envs" / "colab-agent.lock"
# Resume checkpoints stay on the machine: uploading them is tests/server/test_preemption.py's subject,
# and each of these tasks would send 272 MB to the fileserver only to remove it at completion.
# 32 examples in batches of 8: 4 optimiser steps, so a replay checks learning rate, schedule, clipping and
# data order too (at the recipe's batch of 64 they made one step).
TINY = ["--model", "all-minilm-l6-v2", "--limit-train-samples", "32", "--limit-eval-samples", "16", "--max-length", "32",
        "--max-epochs", "1", "--batch-size", "8", "--set", "tracking.upload_checkpoints=false", "--tracking", "server"]
TINY_STEPS = 4


def trained_steps(metrics: str | None) -> int:
    """Optimiser steps a run's metrics.json (its text) says it trained, each with its loss recorded."""
    data = json.loads(metrics or "{}")
    steps = data.get("train", {}).get("steps", 0)
    assert len(data["train"]["step_losses"]) == steps and str(data.get("weights_sha256", "")).startswith("sha256:")
    return steps


# What a venv-mode agent needs to build the recorded environment (docs/scaling.md says why):
# torch from the index like any package, pinned as recorded (pytorch.org's per-CUDA index is another
# build, and unreachable here), and pip's own resolver: the agent's legacy-resolver default takes
# the first specifier it meets (a dependency's torch<=2.14.1) over the lock's torch==2.13.0.
VENV_AGENT_SETTINGS = 'agent.package_manager.pytorch_resolve: "none"\nagent.package_manager.pip_legacy_resolver: []\n'


def install_agent(folder: Path) -> Path:
    """clearml-agent 3.0.3 (hash-checked, its own venv: it pins requests/setuptools older than ours)."""
    binary = folder / "bin" / "clearml-agent"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--require-hashes",
                        "--no-deps", "-r", str(LOCK)], check=True, capture_output=True, text=True, timeout=600)
    return binary


def _git_mirror(home: Path) -> None:
    """The agent clones the recorded repository: send its remote URL (unreachable in CI) to this checkout."""
    remote = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
    lines = ["[advice]\n\tdetachedHead = false\n"]
    if remote:
        lines.append(f'[url "file://{REPO}"]\n\tinsteadOf = {remote}\n')
    (home / ".gitconfig").write_text("".join(lines))


class Agent:
    """`clearml-agent daemon --queue Q --foreground` (or `command`, e.g. `make agent`), its own HOME
    (venv builds, caches) and worker id (`Server.worker(name)`: the test run's namespace)."""

    def __init__(self, binary: Path, env: dict[str, str], queue: str, folder: Path, name: str, worker: str,
                 docker: str | None = None, config_file: Path | None = None, extra_env: dict[str, str] | None = None,
                 command: list[str] | None = None, venv_cache: Path | None = None) -> None:
        self.folder, self.name, self.queue, self.worker = folder, name, queue, worker
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        _git_mirror(home)
        self.env = {**env, "HOME": str(home), "CLEARML_WORKER_ID": worker}
        self.env.pop("PYTHONPATH", None)  # the agent finds reprozoo as a user's agent would, or not at all
        if docker is None and command is None and venv_cache is not None:
            # venv mode, set up as clearml-agent documents it: it clones the task's repository at the
            # recorded commit, applies the recorded diff, builds a venv from the task's requirements with
            # pip, and runs `-m reprozoo train` in the task's working directory (src/). Beside the docs,
            # what this machine needs: VENV_AGENT_SETTINGS, and one venv cache for every such agent
            # (a venv is built once per requirements, ~6 min here).
            conf = folder / "clearml.conf"
            server = Path(env["CLEARML_CONFIG_FILE"]).read_text() if env.get("CLEARML_CONFIG_FILE") else ""
            conf.write_text(server + f'\nagent.venvs_cache.path: "{venv_cache}"\n' + VENV_AGENT_SETTINGS)
            self.env["CLEARML_CONFIG_FILE"] = str(conf)
        elif docker is None and command is None:
            # venv mode without building the venv: the queue tests (two agents on one queue, sweeps,
            # searches, DDP) are about what agents do with tasks, and run each with this interpreter
            # (it has the same locked tree), in the agent's clone of the recorded commit + diff: the
            # task's working directory, src/, comes first on the import path of `-m reprozoo`.
            self.env.update(CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=sys.executable, CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL="1")
        self.env.update(extra_env or {})
        for key in ("CLEARML_TASK_ID", "CLEARML_PROC_MASTER_ID"):
            self.env.pop(key, None)
        if config_file is not None:
            self.env["CLEARML_CONFIG_FILE"] = str(config_file)
        self.command = command or [str(binary), "daemon", "--queue", queue, "--create-queue", "--foreground"]
        if docker and command is None:
            self.command += ["--docker", docker]
        self.log_path = folder / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Agent:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_listening(self, timeout: float = 120) -> None:
        """Until the daemon polls its queue (it created the queue by then)."""
        deadline = time.monotonic() + timeout
        while "No tasks in queue" not in self.log() and "Running task id" not in self.log():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent {self.name} did not start polling {self.queue}: {self.log()[-2000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ran(self) -> list[str]:
        """The task ids this daemon started, in order."""
        return [line.split("[", 1)[1].split("]", 1)[0] for line in self.log().splitlines() if line.startswith("Running task id [")]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the daemon and the task it runs
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Runs in a subprocess with the server's env: what the server holds about tasks, read through the SDK.
_READ = r"""
import json, sys, time
from clearml import Task
ids, deadline = sys.argv[1].split(","), time.time() + float(sys.argv[2])
final = ("completed", "failed", "stopped", "closed")
while True:
    tasks = {i: Task.get_task(task_id=i) for i in ids}
    if all(t.get_status() in final for t in tasks.values()) or time.time() > deadline:
        break
    time.sleep(1)
out = {}
for i, t in tasks.items():
    d = t.data
    path = t.artifacts["metrics"].get_local_copy() if "metrics" in t.artifacts else None
    out[i] = {"status": t.get_status(), "name": t.name, "parent": d.parent, "tags": list(t.get_tags() or []),
              "started": d.started.timestamp() if d.started else None, "last_worker": d.last_worker,
              "container": dict(d.container or {}), "metrics": open(path, "rb").read().decode() if path else None,
              "document": t.get_configuration_object("Provenance")}
print(json.dumps(out))
"""


def server_tasks(env: dict[str, str], ids: list[str], wait: float = 0) -> dict[str, dict[str, Any]]:
    """Status, parent, tags, start time, worker, container section, metrics.json artifact and run
    document (the Provenance object's text) of each task, once every one is finished (or after `wait` seconds)."""
    done = subprocess.run([sys.executable, "-c", _READ, ",".join(ids), str(wait)], env=env, capture_output=True, text=True,
                          timeout=wait + 300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
