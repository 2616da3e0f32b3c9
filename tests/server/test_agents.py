"""ClearML queues served by real `clearml-agent` daemons (venv mode), against the test server.

One tiny MiniLM run recorded on the server is the original; `repro --enqueue Q` clones it, an agent
on Q trains the clone from the recorded commit + diff, and the clone's metrics.json must equal the
original's byte for byte. Two agents on one queue with four clones run each exactly once. An unknown
queue is one line naming the queues that exist, for `repro --enqueue`, `sweep --queue` and `hpo --queue`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import REPO, TINY, TINY_STEPS, Agent, server_tasks, trained_steps

from helpers import reprozoo, scratch

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(clearml_server: Any, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, str]]:
    env = clearml_server.env()
    with scratch(tmp_path_factory, "agents-env") as root:
        for name in ("home", "cache", "clearml-cache"):
            (root / name).mkdir()
        env.update(HOME=str(root / "home"), REPROZOO_CACHE_DIR=str(root / "cache"),
                   CLEARML_CACHE_DIR=str(root / "clearml-cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   REPROZOO_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO / "src"))
        yield env


@pytest.fixture(scope="module")
def original(env: dict[str, str], clearml_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The run every clone replays: recorded on the server, its metrics.json kept as bytes."""
    with scratch(tmp_path_factory, "original") as work:
        done = reprozoo("train", *TINY, *in_project(clearml_server), "--out", str(work / "runs" / "orig"), cwd=work, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        task_id = re.search(r"clearml task: ([0-9a-f]{32})", done.stdout).group(1)
        yield {"task_id": task_id, "run_dir": work / "runs" / "orig",
               "metrics": (work / "runs" / "orig" / "metrics.json").read_text()}


def in_project(server: Any) -> tuple[str, str]:
    return ("--set", f"tracking.project={server.project}")


def enqueue(env: dict[str, str], task_id: str, queue: str, *flags: str) -> tuple[str, float]:
    done = reprozoo("repro", task_id, "--enqueue", queue, *flags, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return re.search(r"enqueued task ([0-9a-f]{32})", done.stdout).group(1), time.time()


class Agents(list):
    """The agents a test started (stopped at its end), the venv cache all of this module's share, and
    the server whose test-run namespace names their queues and workers."""

    def __init__(self, venv_cache: Path, server: Any) -> None:
        super().__init__()
        self.venv_cache, self.server = venv_cache, server


@pytest.fixture(scope="module")
def venv_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with scratch(tmp_path_factory, "agent-venvs") as folder:
        yield folder


@pytest.fixture
def agents(agent_binary: Path, env: dict[str, str], tmp_path: Path, venv_cache: Path, clearml_server: Any) -> Iterator[Agents]:
    started = Agents(venv_cache, clearml_server)
    yield started
    for agent in started:
        agent.stop()


def serve(agents: Agents, agent_binary: Path, env: dict[str, str], tmp_path: Path, queue: str, name: str,
          build_venv: bool = False, extra_env: dict[str, str] | None = None) -> Agent:
    """An agent on the test run's queue `queue` (its full name: agents.server.queue(queue)); with
    `build_venv`, one that builds the task's venv as a user's does."""
    # No REPROZOO_DATA_DIR: the clone must train on the data version its task names, not download SST-5.
    agent_env = {k: v for k, v in env.items() if k != "REPROZOO_DATA_DIR"}
    agent = Agent(agent_binary, agent_env, agents.server.queue(queue), tmp_path / name, name, agents.server.worker(name),
                  venv_cache=agents.venv_cache if build_venv else None, extra_env=extra_env).start()
    agents.append(agent)
    agent.wait_listening()
    return agent


def test_repro_enqueue_is_replayed_by_a_venv_agent_bit_for_bit(original: dict[str, Any], env: dict[str, str], agents: Agents,
                                                                agent_binary: Path, tmp_path: Path) -> None:
    # Set up as clearml-agent documents it: no PYTHONPATH, no SKIP_* overrides, not this interpreter.
    agent = serve(agents, agent_binary, env, tmp_path, "venv-q", "venv", build_venv=True)
    clone, enqueued = enqueue(env, original["task_id"], agent.queue)
    task = server_tasks(env, [clone], wait=900)[clone]
    assert task["status"] == "completed", agent.log()[-4000:]
    assert task["metrics"] == original["metrics"]  # byte for byte: scores, every step's loss, the weights' sha256
    assert trained_steps(task["metrics"]) == TINY_STEPS
    assert task["parent"] == original["task_id"] and f"repro-of:{original['task_id']}" in task["tags"]
    assert task["name"].startswith("repro of ")
    assert agent.ran() == [clone] and task["last_worker"] == agent.worker
    # It ran in the venv it built from the task's requirements, from the clone's src/.
    command = [line for line in agent.log().splitlines() if line.startswith("[src]$ ")]
    assert command and "venvs-builds" in command[0] and "-m reprozoo train" in command[0], agent.log()[-3000:]
    assert "Processing /opt/wheels/torch-2.13.0" in agent.log() or "torch==2.13.0" in agent.log()
    # The clone trained into a run directory of its own: the original's is untouched.
    assert (original["run_dir"] / "metrics.json").read_text() == original["metrics"]
    print(f"agent pick-up latency (venv mode, enqueue → started): {task['started'] - enqueued:.1f} s")


def test_two_agents_on_one_queue_run_each_of_four_tasks_once(original: dict[str, Any], env: dict[str, str], agents: Agents,
                                                              agent_binary: Path, tmp_path: Path) -> None:
    first = serve(agents, agent_binary, env, tmp_path, "pair-q", "pair-1")
    second = serve(agents, agent_binary, env, tmp_path, "pair-q", "pair-2")
    clones = [enqueue(env, original["task_id"], first.queue)[0] for _ in range(4)]
    tasks = server_tasks(env, clones, wait=900)
    assert {t["status"] for t in tasks.values()} == {"completed"}, first.log()[-2000:] + second.log()[-2000:]
    ran = first.ran() + second.ran()
    assert sorted(ran) == sorted(clones)  # each exactly once, by one of the two
    for clone in clones:
        worker = first.worker if clone in first.ran() else second.worker
        assert tasks[clone]["last_worker"] == worker
        assert tasks[clone]["metrics"] == original["metrics"] and trained_steps(original["metrics"]) == TINY_STEPS


def test_a_two_process_ddp_task_on_an_agent_equals_the_same_run_here(env: dict[str, str], agents: Agents,
                                                                    agent_binary: Path, tmp_path: Path) -> None:
    """Lightning starts rank 1 by running a command line again (on the agent `-m reprozoo train`, the
    default RunConfig): rank 1 trains rank 0's resolved run, the task's config."""
    ddp_env = {**env, "OMP_NUM_THREADS": "1"}  # two processes on two cores, here and on the agent
    here = tmp_path / "here"
    # 128 examples in batches of 16: 4 steps on each rank (with TINY's 32 examples each rank would train
    # only 2 steps; with one batch in all no rank trains: the metrics would be the untrained head's).
    args = [*TINY, "--accelerator", "cpu", "--devices", "2"]
    args[args.index("--limit-train-samples") + 1], args[args.index("--batch-size") + 1] = "128", "16"
    done = reprozoo("train", *args, *in_project(agents.server), "--out", str(here), cwd=tmp_path, env=ddp_env)
    assert done.returncode == 0, done.stderr[-3000:]
    task_id = re.search(r"clearml task: ([0-9a-f]{32})", done.stdout).group(1)
    agent = serve(agents, agent_binary, ddp_env, tmp_path, "ddp-q", "ddp")
    clone, _ = enqueue(ddp_env, task_id, agent.queue)
    task = server_tasks(ddp_env, [clone], wait=600)[clone]
    assert task["status"] == "completed", agent.log()[-4000:]
    assert task["metrics"] == (here / "metrics.json").read_text()  # byte for byte
    assert trained_steps(task["metrics"]) == 4


def test_an_offline_run_imported_then_enqueued_is_replayed_by_an_agent(env: dict[str, str], agents: Agents,
                                                                        agent_binary: Path, tmp_path: Path) -> None:
    """offline → `tasks import` → `repro --enqueue`: the data version travels to the server (same
    content; no agent can resolve an offline one) and the clone records there, not offline."""
    here = tmp_path / "here"
    done = reprozoo("train", *TINY[:-1], "offline", *in_project(agents.server), "--out", str(here), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((here / "task.json").read_text())
    assert record["mode"] == "offline" and record["dataset_id"].startswith("offline-")
    imported = reprozoo("tasks", "import", record["offline_zip"], env=env)
    assert imported.returncode == 0, imported.stderr[-3000:]
    task_id = imported.stdout.strip().splitlines()[-1].split("imported as task ")[1].split()[0]
    # The agent is another machine: a cache of its own, no offline index, no trees.
    agent = serve(agents, agent_binary, {**env, "REPROZOO_CACHE_DIR": str(tmp_path / "agent-cache")}, tmp_path, "import-q", "import")
    enqueued = reprozoo("repro", task_id, "--enqueue", agent.queue, env=env)
    assert enqueued.returncode == 0, enqueued.stderr[-3000:]
    assert f"data version {record['dataset_id']} is " in enqueued.stdout
    clone = re.search(r"enqueued task ([0-9a-f]{32})", enqueued.stdout).group(1)
    task = server_tasks(env, [clone], wait=600)[clone]
    assert task["status"] == "completed", agent.log()[-4000:]
    assert task["metrics"] == (here / "metrics.json").read_text()  # byte for byte, on the server's copy of the data
    assert trained_steps(task["metrics"]) == TINY_STEPS


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_ui_clone_with_an_edit_no_run_reads_fails_on_the_agent_in_one_line(original: dict[str, Any], env: dict[str, str],
                                                                             agents: Agents, agent_binary: Path, tmp_path: Path) -> None:
    """Issue 33: a clone edited where no run reads it (the read-only `RunConfig (as recorded)`, a user
    property, a hyperparameter section of its own) used to run unedited; a real agent now fails it, saying why."""
    agent = serve(agents, agent_binary, env, tmp_path, "edit-q", "edit")
    edit = r"""
import sys
from clearml import Task
source, queue = sys.argv[1], sys.argv[2]
ids = []
for what in ("baseline", "property", "section"):
    clone = Task.clone(source_task=source, name=f"edited {what}")
    if what == "baseline":
        text = clone.get_configuration_object("RunConfig (as recorded)")
        clone.set_configuration_object("RunConfig (as recorded)", config_text=text.replace("seed: 42", "seed: 7"))
    elif what == "property":
        clone.set_user_properties(commit="0" * 40)
    else:
        clone.set_parameter("resolved/batch_size", "16")
    Task.enqueue(clone, queue_name=queue)
    ids.append(clone.id)
print(",".join(ids))
"""
    done = subprocess.run([sys.executable, "-c", edit, original["task_id"], agent.queue], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    clones = done.stdout.split()[-1].split(",")
    tasks = server_tasks(env, clones, wait=600)
    assert [tasks[c]["status"] for c in clones] == ["failed"] * 3, agent.log()[-4000:]
    log = agent.log()
    assert "the read-only configuration object 'RunConfig (as recorded)' was edited" in log
    assert "the User Properties were edited" in log
    assert "task hyperparameter section 'resolved' is not RunConfig's" in log


def test_a_replay_an_agent_would_train_otherwise_is_refused_unless_accepted(original: dict[str, Any], env: dict[str, str],
                                                                           agents: Agents, agent_binary: Path,
                                                                           tmp_path: Path) -> None:
    """Issue 31: a `repro --enqueue` clone is a replay of its record: the agent compares how the run
    trained (run_spec.settings) with how it would. On a machine with one torch thread (the run had more)
    it fails in one line naming the field and the flag; enqueued with --accept-changes it trains, and
    its run document names the task it replays and the changes it accepted."""
    recorded = json.loads((original["run_dir"] / "provenance.json").read_text())
    threads = recorded["environment"]["torch_threads"]
    assert recorded["resolved"]["accelerator"] == "cpu" and threads != 1, "the original must train on more than one thread"
    agent = serve(agents, agent_binary, env, tmp_path, "threads-q", "threads", extra_env={"OMP_NUM_THREADS": "1"})
    refused, _ = enqueue(env, original["task_id"], agent.queue)
    tasks = server_tasks(env, [refused], wait=600)
    assert tasks[refused]["status"] == "failed", agent.log()[-4000:]
    line = next((x for x in agent.log().splitlines() if f"task {refused} replays {original['task_id']}" in x), "")
    assert f"environment.torch_threads {threads} → 1" in line and "--accept-changes" in line, agent.log()[-4000:]
    accepted, _ = enqueue(env, original["task_id"], agent.queue, "--accept-changes")
    tasks = server_tasks(env, [accepted], wait=900)
    assert tasks[accepted]["status"] == "completed", agent.log()[-4000:]
    assert f"accept-changes:{accepted}" in tasks[accepted]["tags"] and f"replay:{accepted}" in tasks[accepted]["tags"]
    document = json.loads(tasks[accepted]["document"])
    assert document["task_id"] == accepted and document["environment"]["torch_threads"] == 1
    assert document["replays"] == {"task_id": original["task_id"],
                                   "accepted_changes": [f"environment.torch_threads {threads} → 1"]}
    # The record's RunConfig (zoo defaults applied) ran: only where it reads and writes, and the pinned weights, differ.
    assert what_runs(document["config"]) == what_runs(recorded["config"])
    assert document["model"]["revision"] == recorded["model"]["revision"]


def what_runs(config: dict[str, Any]) -> dict[str, Any]:
    from reprozoo import run_spec
    from reprozoo.config import flatten

    return {k: v for k, v in flatten(config).items() if k not in run_spec.WHERE_FIELDS and k != "model.revision"}


def test_an_unknown_queue_is_one_line_naming_the_queues_that_exist(original: dict[str, Any], env: dict[str, str],
                                                                   clearml_server: Any) -> None:
    missing = clearml_server.queue("no-such-q")  # in the run's namespace: no other run creates it
    count = "from clearml import Task; print(len(Task.get_tasks(tags=['repro-of:{}'])))".format(original["task_id"])
    before = subprocess.run([sys.executable, "-c", count], env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    line = _one_line_error(reprozoo("repro", original["task_id"], "--enqueue", missing, env=env))
    assert f"no queue '{missing}'" in line and "(it has: " in line and "--create-queue" in line
    after = subprocess.run([sys.executable, "-c", count], env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    assert after == before  # nothing was cloned
    line = _one_line_error(reprozoo("sweep", "--models", "all-minilm-l6-v2", "--queue", missing, "--controller-queue", "local", env=env))
    assert f"no queue '{missing}'" in line and "--create-queue" in line
    line = _one_line_error(reprozoo("hpo", "--model", "all-minilm-l6-v2", "--space", "lr=1e-5:1e-4:log", "--trials", "1",
                                    "--queue", missing, "--out", "/nonexistent/hpo", env=env))
    assert f"no queue '{missing}'" in line



SMALL = ["--set", "data.limit_train_samples=32", "--set", "data.limit_eval_samples=16", "--set", "data.max_length=32",
         "--set", "trainer.max_epochs=1", "--set", "tracking.mode=server", "--set", "tracking.upload_checkpoints=false"]


def test_sweep_on_a_queue_is_served_by_an_agent_rerun_skips_leaderboard_lists(env: dict[str, str], agents: Agents,
                                                                              agent_binary: Path, tmp_path: Path,
                                                                              tiny_model_dirs: dict[str, Path]) -> None:
    agent = serve(agents, agent_binary, env, tmp_path, "sweep-q", "sweep")
    models = ",".join(str(tiny_model_dirs[family]) for family in ("bert", "electra"))
    project = f"{agents.server.project}/sweep"
    args = ["sweep", "--models", models, "--queue", agent.queue, "--controller-queue", "local", *SMALL,
            "--set", f"tracking.project={project}"]
    first = reprozoo(*args, timeout=1200, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    ran = agent.ran()
    assert len(ran) == 2, agent.log()[-3000:]
    tasks = server_tasks(env, ran, wait=300)
    assert {t["status"] for t in tasks.values()} == {"completed"}
    assert sorted(t["name"].split()[0] for t in tasks.values()) == sorted(str(tiny_model_dirs[f]) for f in ("bert", "electra"))

    again = reprozoo(*args, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped, already completed as") == 2 and "every model already has a completed task" in again.stdout
    assert agent.ran() == ran  # nothing enqueued again

    board = reprozoo("leaderboard", "--server", "--project", project, "--out", str(tmp_path / "board"), env=env)
    assert board.returncode == 0, board.stderr[-3000:]
    assert all(task_id in board.stdout for task_id in ran) and "2 run(s)" in board.stdout


def test_hpo_on_a_queue_runs_three_trials_on_an_agent_and_best_yaml_replays(env: dict[str, str], agents: Agents,
                                                                           agent_binary: Path, tmp_path: Path) -> None:
    agent = serve(agents, agent_binary, env, tmp_path, "hpo-q", "hpo")
    out = tmp_path / "hpo"
    done = reprozoo("hpo", "--model", "all-minilm-l6-v2", "--space", "lr=1e-5:1e-4:log", "--trials", "3", "--queue", agent.queue,
                    "--max-epochs", "1", "--limit-train-samples", "32", "--limit-eval-samples", "16", "--set", "data.max_length=32",
                    "--set", "tracking.upload_checkpoints=false", *in_project(agents.server), "--tracking", "server", "--out", str(out),
                    timeout=1800, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "3/3 trials finished" in done.stdout
    trials = json.loads((out / "trials.json").read_text())
    trial_tasks = sorted(t["task_id"] for t in trials["trials"])
    assert sorted(agent.ran()) == trial_tasks and len(set(trial_tasks)) == 3
    best = max(trials["trials"], key=lambda t: t["dev_macro_f1"])
    replay = reprozoo("train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "replay"), env=env)
    assert replay.returncode == 0, replay.stderr[-3000:]
    recorded = server_tasks(env, [best["task_id"]])[best["task_id"]]["metrics"]
    assert (tmp_path / "replay" / "metrics.json").read_text() == recorded  # the best trial, again, byte for byte
