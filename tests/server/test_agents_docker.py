"""ClearML agents in docker mode, against the test server: the CPU image built here, pushed to a
local registry, a training inside it recorded on the server with the image by digest, and `make agent`
(clearml-agent 3.0.3, docker mode, docker/clearml/agent.conf) replaying `repro --enqueue` of that run
inside the image pulled by digest, bit for bit.

Needs a Docker engine (`docker/engine.sh start`, as the container tests); skips, saying why, without one.
The image build is shared with the engine's layer cache (tests/test_docker.py builds the same context).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import REPO, TINY, TINY_STEPS, Agent, server_tasks, trained_steps

from helpers import local_registry, reprozoo, scratch
from reprozoo import agent as agent_settings

pytestmark = [pytest.mark.server, pytest.mark.docker, pytest.mark.slow]

BASE = "reprozoo-base:bookworm-py311"
CLONE_WITH_DIFF = r"""
import sys
from clearml import Task
clone = Task.clone(source_task=sys.argv[1], name="checkout-recorded")
clone.set_script(diff="--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n # reprozoo\n+an uncommitted change\n")
Task.enqueue(clone, queue_name=sys.argv[2])
print(clone.id)
"""
CONSOLE = r"""
import sys
from clearml import Task
print("\n".join(Task.get_task(task_id=sys.argv[1]).get_reported_console_output(number_of_reports=50)))
"""


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 1800, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


@pytest.fixture(scope="module")
def engine() -> None:
    if run("docker", "info", timeout=60).returncode != 0:
        started = run(str(REPO / "docker" / "engine.sh"), "start", timeout=900)
        if run("docker", "info", timeout=60).returncode != 0:
            reason = (started.stderr or started.stdout).strip().splitlines()[-1:] or ["docker info failed"]
            pytest.skip(f"docker-mode agent tests need a Docker engine and none could start: {reason[0]}")


@pytest.fixture(scope="module")
def env(clearml_server: Any, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, str]]:
    """The server as environment variables too: `reprozoo image run` passes CLEARML_API_* into the container."""
    env = clearml_server.env()
    with scratch(tmp_path_factory, "agents-docker-env") as root:
        env.update(HOME=str(root), REPROZOO_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   REPROZOO_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO / "src"),
                   CLEARML_API_HOST=clearml_server.api_url, CLEARML_FILES_HOST=clearml_server.files_url,
                   CLEARML_WEB_HOST=clearml_server.web_url, CLEARML_API_ACCESS_KEY=clearml_server.access_key,
                   CLEARML_API_SECRET_KEY=clearml_server.secret_key)
        yield env


@pytest.fixture(scope="module")
def registry(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scratch(tmp_path_factory, "agents-registry") as folder, local_registry(folder) as address:
        yield address
    port = int(address.rpartition(":")[2])
    refs = run("docker", "images", "--format", "{{.Repository}}:{{.Tag}}", timeout=60).stdout.split()
    for ref in refs:
        if ref.startswith(f"127.0.0.1:{port}/"):
            run("docker", "image", "rm", "--no-prune", ref, timeout=120)


@pytest.fixture(scope="module")
def pinned(engine: None, registry: str, env: dict[str, str]) -> str:
    """The CPU image of this checkout, pushed: repo@sha256:…."""
    if run("docker", "image", "inspect", BASE, timeout=60).returncode != 0:
        if not shutil.which("debootstrap"):
            pytest.fail("debootstrap is missing: `apt-get install debootstrap` (docker/engine.sh start installs it)")
        built = run(str(REPO / "docker" / "base" / "bookworm-python.sh"), BASE)
        assert built.returncode == 0, built.stderr[-2000:]
    for step in (("image", "wheelhouse", "--flavour", "cpu"), ("image", "build", "--flavour", "cpu", "--base", BASE)):
        done = reprozoo(*step, env=env, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
    pushed = reprozoo("image", "push", "--flavour", "cpu", "--base", BASE, "--registry", registry, env=env, timeout=1800)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    reference = pushed.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(registry)}/reprozoo@sha256:[0-9a-f]{{64}}", reference), pushed.stdout
    return reference


@pytest.fixture(scope="module")
def agent_conf(agent_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """docker/clearml/agent.conf as it is, plus what this machine needs (docker/clearml/agent.conf is for a
    GPU host reaching its server and PyPI): the server on 127.0.0.1 (--network=host), and the agent's own
    wheels (envs/colab-agent.lock, hash-checked) for the helper it installs inside the container, which
    has no package index here."""
    with scratch(tmp_path_factory, "agent-docker-conf") as folder:
        wheels = folder / "wheels"
        pip = agent_binary.parent / "pip"
        done = run(str(pip), "download", "--quiet", "--disable-pip-version-check", "--require-hashes", "--no-deps", "-r",
                   str(REPO / "envs" / "colab-agent.lock"), "-d", str(wheels), timeout=600)
        if done.returncode != 0:
            pytest.skip(f"agent tests: the agent's wheels could not be downloaded: {done.stderr.strip()[-200:]}")
        extra = [*agent_settings.DOCKER_ARGUMENTS, "--network=host", "-v", f"{wheels}:/agent-wheels:ro",
                 "-e", "PIP_NO_INDEX=1", "-e", "PIP_FIND_LINKS=/agent-wheels"]
        conf = folder / "agent.conf"
        conf.write_text((REPO / "docker" / "clearml" / "agent.conf").read_text() + f"\nagent.extra_docker_arguments: {json.dumps(extra)}\n")
        yield conf


@pytest.fixture(scope="module")
def original(pinned: str, env: dict[str, str], clearml_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`train --tracking server` inside the image, by digest: the run every docker-mode clone replays."""
    with scratch(tmp_path_factory, "image-runs") as runs:
        runs.chmod(0o777)  # the image's user (10001) writes the run directory
        done = reprozoo("image", "run", "--image", pinned, "--network", "host", "--runs-dir", str(runs), "--", "train", *TINY,
                        "--set", f"tracking.project={clearml_server.project}", "--out", "/work/runs/orig", env=env, timeout=1800)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        task_id = re.search(r"clearml task: ([0-9a-f]{32})", done.stdout + done.stderr).group(1)
        yield {"task_id": task_id, "metrics": (runs / "orig" / "metrics.json").read_text()}


def test_train_in_the_image_records_the_image_by_digest(original: dict[str, Any], pinned: str, env: dict[str, str]) -> None:
    task = server_tasks(env, [original["task_id"]])[original["task_id"]]
    assert task["status"] == "completed" and task["metrics"] == original["metrics"]
    assert task["container"]["image"] == pinned  # ref@digest, what an agent pulls
    assert task["container"]["arguments"] == agent_settings.docker_arguments()


def test_make_agent_replays_repro_enqueue_in_the_image_bit_for_bit(original: dict[str, Any], pinned: str, env: dict[str, str],
                                                                    agent_binary: Path, agent_conf: Path, clearml_server: Any,
                                                                    tmp_path: Path) -> None:
    queue = clearml_server.queue("docker-q")
    make = ["make", "-C", str(REPO), "-o", ".venv/.installed", "agent", f"QUEUE={queue}", f"IMAGE={pinned}",
            f"AGENT_VENV={agent_binary.parent.parent}", f"AGENT_CONF={agent_conf}"]
    agent_env = {k: v for k, v in env.items() if k != "CLEARML_CONFIG_FILE"}  # make agent: credentials from the environment
    # A CPU-only host: `make agent` passes --gpus all, which the agent then leaves out of `docker run`.
    with Agent(agent_binary, agent_env, queue, tmp_path / "make-agent", "make-agent", clearml_server.worker("make-agent"),
               command=make, extra_env={"CLEARML_DOCKER_SKIP_GPUS_FLAG": "1"}) as agent:
        agent.wait_listening()
        done = reprozoo("repro", original["task_id"], "--enqueue", queue, env=env, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"in {pinned}" in done.stdout
        clone = re.search(r"enqueued task ([0-9a-f]{32})", done.stdout).group(1)
        enqueued = time.time()
        task = server_tasks(env, [clone], wait=900)[clone]
        assert task["status"] == "completed", agent.log()[-5000:]
        # The same task with uncommitted changes recorded (a checkout's run, or the diff edited in the
        # UI): the agent would run the image's code under that record. Refused, in one line.
        edited = subprocess.run([sys.executable, "-c", CLONE_WITH_DIFF, original["task_id"], queue], env=env,
                                capture_output=True, text=True, timeout=300, check=True).stdout.split()[-1]
        refused = server_tasks(env, [edited], wait=600)[edited]
        assert refused["status"] == "failed", agent.log()[-5000:]
        console = subprocess.run([sys.executable, "-c", CONSOLE, edited], env=env, capture_output=True, text=True,
                                 timeout=300, check=True).stdout
        assert f"task {edited} was recorded from commit" in console and "with uncommitted changes" in console, console[-3000:]
        assert "venv-mode agent" in console and "Traceback" not in console
    assert agent.ran() == [clone, edited]
    assert f"docker_cmd = {pinned} " in agent.log()  # run in the recorded image, pulled by digest
    assert task["metrics"] == original["metrics"]  # byte for byte
    assert trained_steps(task["metrics"]) == TINY_STEPS
    assert task["parent"] == original["task_id"] and f"repro-of:{original['task_id']}" in task["tags"]
    assert task["container"]["image"] == pinned
    # Issue 31, case 1: the agent's run records the image it ran in (it recorded "none": an image cannot
    # hold its own digest), so the clone replays by its own record, in that image, bit for bit.
    shown = reprozoo("tasks", "show", clone, "--json", env=env)
    assert json.loads(shown.stdout)["image_digest"] == pinned, shown.stdout[-2000:]
    runs = tmp_path / "replays"
    runs.mkdir(mode=0o777)
    runs.chmod(0o777)  # the image's user (10001) writes the run directory
    replayed = reprozoo("repro", clone, "--verify", "--network", "host", "--runs-dir", str(runs), env=env, timeout=1800)
    assert replayed.returncode == 0, (replayed.stdout + replayed.stderr)[-3000:]
    assert f"image {pinned}" in replayed.stdout and "verdict: bit-identical" in replayed.stdout, replayed.stdout[-3000:]
    print(f"agent pick-up latency (docker mode, enqueue → started): {task['started'] - enqueued:.1f} s")

