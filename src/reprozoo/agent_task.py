"""What a ClearML agent's task asks of the run it starts (train.train reads it before planning).

The task is either a replay (`repro --enqueue`: tagged `replay:<its id>`), run as the run document
cloned with it (run_spec.replayed) and refused where this machine would train it otherwise; a task
re-enqueued after an interruption, resumed from the last checkpoint in its storage; or a new run (a UI
clone, a sweep step, an HPO trial), run with its editable RunConfig and edits (tracking.remote_config).
In our image (a docker-mode agent) the task must hold the image's code, and the run records the
image's digest from the task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprozoo import checkpoint_store, provenance, run_spec, task_view, tracking
from reprozoo.config import ConfigError, RunConfig
from reprozoo.log import log
from reprozoo.records import load_record, task_record


def on_clearml_agent() -> bool:
    """Whether a ClearML agent started this process for a task (it sets CLEARML_TASK_ID)."""
    return bool(os.environ.get("CLEARML_TASK_ID") or os.environ.get("TRAINS_TASK_ID"))


@dataclass
class AgentTask:
    """What a ClearML agent's task asks of the run: its RunConfig, whether it resumes, the record it
    replays (a `repro --enqueue` clone; compared once planned) and whether other settings were accepted."""

    cfg: RunConfig
    resumes: bool = False
    replays: Any = None  # records.Record: the run document cloned with the task (read-only, checked)
    accept_changes: bool = False


def read_task(cfg: RunConfig) -> AgentTask:
    """The agent's task, read before planning: planned from the command line's config, a container with
    no trees would try to download SST-5 instead. A task with a checkpoint in its storage resumes from
    it, in a run directory fetched from the task (checkpoint_store.fetch_run)."""
    from clearml import Task
    from clearml.config import get_remote_task_id

    task = Task.get_task(task_id=get_remote_task_id())
    if provenance.image_env().image is not None:
        refuse_other_code(task.id, task.data.script.version_num or "", task.data.script.diff or "")
        adopt_task_image_digest(task)
    tags = set(task.get_tags() or [])
    accept = task_view.accept_changes_tag(task.id) in tags
    cfg = tracking.remote_config(task, cfg)
    if checkpoint_store.latest_stored(task) is not None:
        run_dir = Path(cfg.out_dir or Path("runs") / f"{cfg.model.name.replace('/', '_')}-{task.id}")
        return AgentTask(checkpoint_store.fetch_run(task, load_record(task.id), run_dir), resumes=True, accept_changes=accept)
    if task_view.replay_tag(task.id) not in tags:
        return AgentTask(cfg, accept_changes=accept)
    replays = task_record(task)
    return AgentTask(run_spec.replayed(replays.config, replays.model_revision, cfg, f"task {task.id}"), replays=replays,
                     accept_changes=accept)


def check_replayed_settings(resolved: dict[str, Any], replays: Any, accept: bool) -> list[str]:
    """A replay's settings as the run resolved them (run_spec.settings) against `resolved`, this
    machine's plan (train.Plan.resolved): refused in one line unless the replay was enqueued with
    --accept-changes; the accepted differences, for the run's record."""
    from reprozoo.devices import cpu_here

    differ = run_spec.other_settings(run_spec.recorded_settings(replays), run_spec.settings(resolved, cpu_here()))
    source = str(replays.provenance.get("task_id") or "the recorded task")
    if differ and not accept:
        raise ConfigError(f"task {replays.task_id} replays {source}, but this agent would train it otherwise than the run did"
                          f" ({'; '.join(differ)}); serve the queue from a machine where those match, or enqueue the replay"
                          f" with `reprozoo repro {source} --enqueue QUEUE --accept-changes`")
    if differ:
        log.warning(f"replaying {source} with other settings than the run's, accepted (--accept-changes): {'; '.join(differ)}")
    return differ


def adopt_task_image_digest(task: Any) -> None:
    """A docker-mode agent ran this container from the task's image, pulled by digest; an image cannot
    bake in its own digest (it is computed when the image is pushed), so the run records this one."""
    image = str((getattr(task.data, "container", None) or {}).get("image") or "").split()
    if image and "@sha256:" in image[0] and not provenance.image_env().digest:
        os.environ[provenance.IMAGE_DIGEST_ENV] = image[0]


def refuse_other_code(task_id: str, commit: str, diff: str) -> None:
    """In our image, a docker-mode agent runs the image's code (CLEARML_AGENT_FORCE_CODE_DIR: no
    clone, no diff applied). A task recorded from other code (another commit, uncommitted changes)
    would silently train that instead and be recorded as the image's: refused, before anything runs."""
    revision = os.environ.get("REPROZOO_REVISION", "")
    if commit and (commit != revision or diff.strip()):
        changes = " with uncommitted changes" if diff.strip() else ""
        raise ConfigError(f"task {task_id} was recorded from commit {commit[:12]}{changes}, but this image holds the code of"
                          f" commit {revision[:12] or 'unknown'} and a docker-mode agent runs the image's code; serve it with a"
                          " venv-mode agent (`clearml-agent daemon --queue Q`: it checks out that commit and applies the diff),"
                          " or enqueue a run made in an image built from that code")
