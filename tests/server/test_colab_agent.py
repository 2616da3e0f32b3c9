"""notebooks/colab.ipynb with MODE=agent, headless, in a simulated Colab (tests/test_colab.py says how
it is simulated), against the test ClearML server: one tiny task enqueued on a queue (`repro
--enqueue` of a run recorded on the server) is served by the agent the notebook starts, and completes
with the recorded run's metrics byte for byte. The agent cell runs until stopped, as on Colab: the
test stops the kernel's processes once the task is completed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from agents import TINY, TINY_STEPS, server_tasks, trained_steps

from colab_sim import outputs, python_and_lock, simulated_colab
from helpers import reprozoo

pytestmark = [pytest.mark.server, pytest.mark.slow]

CREATE_QUEUE = "import sys\nfrom clearml.backend_api.session.client import APIClient\nAPIClient().queues.create(name=sys.argv[1])\n"


def stop_kernel_children(kernel_pid: int) -> None:
    """SIGTERM to what the kernel's cells started (the agent daemon, the task it runs), SIGKILL after 30 s."""
    try:
        children = psutil.Process(kernel_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:
        child.kill()


def test_agent_mode_serves_a_queued_task_to_completion(clearml_server: Any, data_dir: Path, tmp_path: Path) -> None:
    env = clearml_server.env()
    queue, worker = clearml_server.queue("colab-q"), clearml_server.worker("colab")
    for name in ("home", "cache", "clearml-cache"):
        (tmp_path / name).mkdir()
    env.update(HOME=str(tmp_path / "home"), REPROZOO_CACHE_DIR=str(tmp_path / "cache"), CLEARML_CACHE_DIR=str(tmp_path / "clearml-cache"),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", REPROZOO_DATA_DIR=str(data_dir))
    created = subprocess.run([sys.executable, "-c", CREATE_QUEUE, queue], env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr[-2000:]
    # The runtime is another machine: the server's config, caches of its own, no data directory (the
    # task names its data version on the server).
    colab = simulated_colab(tmp_path / "colab", {"CLEARML_CONFIG_FILE": env["CLEARML_CONFIG_FILE"], "CLEARML_WORKER_ID": worker,
                                                 "CLEARML_CACHE_DIR": str(tmp_path / "colab" / "clearml"),
                                                 "REPROZOO_CACHE_DIR": str(tmp_path / "colab" / "cache")})

    # The task is recorded from REPO_URL's clean clone (this checkout's uncommitted changes, the other
    # engineers' work in progress, are no part of it): the agent clones that at the recorded commit.
    env["PYTHONPATH"] = str(Path(colab.repo_url) / "src")
    client = colab.client(900, MODE="agent", QUEUE=queue)
    failures: list[BaseException] = []

    def notebook() -> None:
        try:
            colab.execute(client)
        except BaseException as err:  # handed to the test, which fails with it
            failures.append(err)

    # The notebook installs the agent while the task to serve is recorded and enqueued.
    started = time.monotonic()
    thread = threading.Thread(target=notebook, daemon=True)
    thread.start()
    try:
        work = tmp_path / "original"
        work.mkdir()
        done = reprozoo("train", *TINY, "--set", f"tracking.project={clearml_server.project}", "--out", str(work / "run"),
                        cwd=work, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        original = re.search(r"clearml task: ([0-9a-f]{32})", done.stdout).group(1)
        enqueued = reprozoo("repro", original, "--enqueue", queue, env=env)
        assert enqueued.returncode == 0, enqueued.stderr[-3000:]
        task_id = re.search(r"enqueued task ([0-9a-f]{32})", enqueued.stdout).group(1)
        deadline = time.monotonic() + 600
        while True:
            task = server_tasks(env, [task_id], wait=15)[task_id]
            if task["status"] in ("completed", "failed", "stopped", "closed"):
                break
            assert thread.is_alive(), f"the notebook ended before the task did: {failures} {outputs(client.nb)[-4000:]}"
            assert time.monotonic() < deadline, f"task {task_id} still {task['status']} after 10 minutes: {outputs(client.nb)[-4000:]}"
    finally:
        # The agent cell never returns by itself: stop what the kernel runs, then the notebook ends.
        kernel = getattr(client.km, "provisioner", None)
        if kernel is not None and getattr(kernel, "process", None) is not None:
            stop_kernel_children(kernel.process.pid)
        thread.join(timeout=120)
    seconds = time.monotonic() - started
    nbformat.write(client.nb, tmp_path / "executed.ipynb")  # kept with tmp_path when the test fails
    text = outputs(client.nb)
    assert not failures, f"{failures[0]!r}: {text[-4000:]}"
    line = python_and_lock(text)
    print(f"\ncolab notebook (agent) in {seconds:.0f} s; the notebook said: {line}")
    assert task["status"] == "completed", text[-4000:]
    assert task["metrics"] == (work / "run" / "metrics.json").read_text()  # byte for byte
    assert trained_steps(task["metrics"]) == TINY_STEPS
    assert task["last_worker"] == worker and task["name"].startswith("repro of ")
    # The daemon the notebook started ran it, with the kernel's Python (the Colab lock's tree).
    assert f"Running task id [{task_id}]" in text and f"DONE: Running task '{task_id}', exit status 0" in text, text[-4000:]
    assert f"[src]$ {colab.python} -u -m reprozoo train" in text, text[-4000:]
    assert os.path.isfile(colab.content / "agent" / "bin" / "clearml-agent")
