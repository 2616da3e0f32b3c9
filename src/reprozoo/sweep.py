"""Sweeps over the zoo: one plan, two executors (here, one model after another; or a ClearML queue).

    --models all | family:<f> | a,b,c  →  plan = [SweepStep(RunConfig, name, queue, image, GPU-hours), …]
        --local   each step through reprozoo.train.train (in-process) or containers.run_config_in_image
        --queue   the same steps as a ClearML PipelineController: one step per model, cloned from a
                  template task, pinned to the image digest and the data version, enqueued for agents

A step is skipped when a completed record has the same run identity (`run_identity`): the run's
`run_spec.identity` as far as a planned run knows it (the RunConfig without where/how-tracked
settings, the data's sha256, the code: commit and diff, the weights revision) and the image digest.
Planning is pure Python (no torch, no clearml): `--dry-run` answers at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprozoo import provenance, run_spec, safeyaml, zoo
from reprozoo.agent import require_queue
from reprozoo.config import ConfigError, RunConfig, _suggest, apply
from reprozoo.errors import UserError
from reprozoo.run_claims import recorded_task_id
from reprozoo.train import RunResult, train

COMPLETED = ("completed", "published")

# --- GPU-hour estimate --------------------------------------------------------------------------
# FLOPs = 6·N·(training tokens) + 2·N·(evaluation tokens), N = params_m·1e6 (Kaplan et al. 2020's
# rule for a forward+backward pass), divided by an assumed sustained rate, plus a fixed per-run cost.
TRAIN_EXAMPLES = {"sentences": 8544, "phrases": 159_274}  # SST-5 train roots / unique labelled spans
DEV_EXAMPLES, TEST_EXAMPLES = 1101, 2210
# Real tokens per example with a WordPiece tokenizer: sentences 24.4 (measured on 300 train sentences),
# phrases 10.5 (159,274 unique spans hold 1.68 M tokens, bench/RESULTS.md).
TOKENS_PER_EXAMPLE = {"sentences": 25.0, "phrases": 10.5}
EFFECTIVE_FLOPS = 2.0e13  # assumed: one current GPU in bf16 on ~25-token batches (far below its peak)
OVERHEAD_HOURS = 2 / 60  # start-up, weights, tokenisation, checkpoints, export: ~2 minutes per run

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class SweepStep:
    name: str  # unique within the sweep; the pipeline step name
    config: RunConfig
    hub_id: str
    params_m: float
    gpu_hours: float
    queue: str | None = None
    image: str | None = None  # REF@sha256:… or None (in-process here, or the agent's default)


@dataclass
class SweepPlan:
    steps: list[SweepStep]
    queue: str | None = None
    image: str | None = None

    @property
    def gpu_hours(self) -> float:
        return sum(step.gpu_hours for step in self.steps)


# --- model selection ------------------------------------------------------------------------------
def select_models(spec: str) -> list[str]:
    """Comma-separated `all`, `family:<f>` and names (zoo names, hub ids, local directories), in order."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "all":
            names += zoo.names()
        elif part.startswith("family:"):
            family = part.removeprefix("family:").strip()
            if family not in zoo.families():
                raise ConfigError(f"--models {part}: unknown family {family!r}; {_suggest(family, sorted(zoo.families()))}")
            names += [e.name for e in zoo.entries() if e.family == family]
        else:
            zoo.get(part)  # UnknownModelError with the closest names
            names.append(part)
    if not names:
        raise ConfigError("--models: name at least one model (all, family:<f>, or a,b,c)")
    return list(dict.fromkeys(names))


# --- the plan -------------------------------------------------------------------------------------
def step_name(model: str, taken: Iterable[str] = ()) -> str:
    """A pipeline-safe name: ClearML refers to steps as ${name.…}, so only [A-Za-z0-9_-]."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(model).name if "/" in model and Path(model).is_dir() else model).strip("_")
    name, n, taken = base or "model", 1, set(taken)
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def build_plan(models: str, overrides: list[str] | None = None, *, base: RunConfig | None = None, queue: str | None = None,
               image: str | None = None, out_root: str | Path | None = None) -> SweepPlan:
    """One RunConfig per model: the model's zoo recipe (or a base config with the zoo's per-model defaults), then --set."""
    overrides = list(overrides or [])
    if any(o.split("=", 1)[0].strip() == "model.name" for o in overrides):
        raise ConfigError("--set model.name: a sweep names its models with --models")
    if image is not None and not DIGEST_RE.search(image.partition("@")[2]):
        raise ConfigError(f"--image {image}: pin it by digest (REF@sha256:…); `reprozoo image push` prints one")
    steps: list[SweepStep] = []
    for model in select_models(models):
        entry = zoo.get(model)
        if base is None:  # the model's zoo recipe, as `reprozoo train --model` would use it
            cfg = apply(RunConfig(), {"model.name": model, **zoo.recipe(model)}).override(overrides)
        else:  # a given base config keeps its settings; the zoo fills only what it leaves unset
            cfg = run_spec.with_zoo_defaults(apply(base, {"model.name": model}), entry).override(overrides)
        name = step_name(model, (s.name for s in steps))
        if out_root is not None:
            cfg.out_dir = str(Path(out_root) / name)
        cfg.validate()
        steps.append(SweepStep(name=name, config=cfg, hub_id=entry.hub_id, params_m=entry.params_m,
                               gpu_hours=estimate_gpu_hours(cfg, entry.params_m), queue=queue, image=image))
    return SweepPlan(steps=steps, queue=queue, image=image)


def estimate_gpu_hours(cfg: RunConfig, params_m: float) -> float:
    """An upper bound for one run (early stopping can end it sooner); see the constants above."""
    d, t = cfg.data, cfg.trainer
    tokens = TOKENS_PER_EXAMPLE[d.granularity]
    examples = min(d.limit_train_samples or TRAIN_EXAMPLES[d.granularity], TRAIN_EXAMPLES[d.granularity])
    epochs = max(t.max_epochs, 1)
    train_examples = examples * epochs
    if t.max_steps > 0:
        train_examples = min(train_examples, t.max_steps * (d.batch_size or 32) * t.accumulate_grad_batches)
    dev = min(d.limit_eval_samples or DEV_EXAMPLES, DEV_EXAMPLES)
    test = min(d.limit_eval_samples or TEST_EXAMPLES, TEST_EXAMPLES)
    evaluations = epochs / t.val_check_interval + 1  # during training, then the best checkpoint once more
    n = params_m * 1e6
    flops = 6 * n * train_examples * tokens + 2 * n * (dev * evaluations + test) * tokens
    return flops / EFFECTIVE_FLOPS / 3600 + OVERHEAD_HOURS


# --- run identity (the skip rule) ------------------------------------------------------------------
def normalise_digest(digest: str | None) -> str:
    """`repo@sha256:…`, `sha256:…` → `sha256:…`; anything else (no image) → `none`."""
    found = DIGEST_RE.search(digest or "")
    return found.group(0) if found else "none"


def run_identity(cfg: RunConfig, data_sha256: dict[str, str], image_digest: str | None, commit: str, diff: str,
                 weights_revision: str | None, resolved: dict[str, Any] | None = None) -> str | None:
    """The run's identity (run_spec.identity) as far as a planned run knows it before it runs: config,
    code, data, weights, and its image digest, hashed; in an image, its digest stands for its code. How
    it will train is resolved only then (a record's `resolved` fills its config's zoo defaults).
    None when the code or the weights are unknown: such a run is the same as no other."""
    image = normalise_digest(image_digest)
    if not weights_revision or weights_revision == "none" or (image == "none" and not commit):
        return None
    known = ("config.", "data.", "weights.") if image != "none" else ("config.", "code.", "data.", "weights.")
    facts = {key: value for key, value in run_spec.identity(cfg, commit, diff, data_sha256, weights_revision,
                                                            resolved=resolved).items() if key.startswith(known)}
    facts["image"] = image
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def record_identity(record: Any) -> str | None:
    """A completed record's identity; None for records that are not finished."""
    if record.status not in COMPLETED or not record.metrics:
        return None
    return run_identity(record.config, record.data_sha256, record.image_digest, record.commit, record.diff,
                        record.model_revision, record.provenance.get("resolved"))


def done_index(records: Iterable[Any]) -> dict[str, Any]:
    """identity → the newest completed record with it (records come newest first)."""
    index: dict[str, Any] = {}
    for record in records:
        key = record_identity(record)
        if key is not None:
            index.setdefault(key, record)
    return index


def data_sha256(cfg: RunConfig) -> dict[str, str]:
    """The content of the data a step trains on: the dataset version's files, or the trees' sha256."""
    if cfg.data.dataset_id:
        from reprozoo.data import versions

        return versions.resolve(cfg.data.dataset_id).sha256
    from reprozoo.data.sst5 import data_fingerprint, resolve_data_dir

    return data_fingerprint(resolve_data_dir(cfg.data.data_dir))


def planned_weights_revision(cfg: RunConfig) -> str | None:
    """The revision zoo.resolve_weights(entry, cfg.model.revision) gives, loading nothing; None for an
    unpinned hub model without model.revision (only the hub knows which commit it serves)."""
    entry, revision = zoo.get(cfg.model.name), cfg.model.revision
    if revision and revision.startswith("sha256:"):
        return revision  # resolve_weights refuses weights that hash otherwise
    if entry.local_dir:
        return zoo.weights_sha256(Path(entry.local_dir))
    if entry.weights and revision in (None, entry.weights.revision):
        return entry.weights.weights_revision
    return revision


def step_identity(step: SweepStep, sha: dict[str, str] | None = None, code: provenance.GitState | None = None,
                  log: Callable[[str], None] | None = None) -> str | None:
    """A planned step's run_identity. `code`: provenance.git_state() (once per sweep; computed here when
    None and the step runs outside an image)."""
    # In-process steps record the image this process runs in (none outside a container); queued ones the step's.
    digest = step.image or (None if step.queue else provenance.image_identity()[1])
    if code is None and normalise_digest(digest) == "none":
        code = provenance.git_state()
    weights = planned_weights_revision(step.config)
    if weights is None and log is not None:
        log(f"{step.name}: the weights of unpinned {step.hub_id} are known only once loaded (no model.revision):"
            " it runs again")
    return run_identity(step.config, sha if sha is not None else data_sha256(step.config), digest,
                        code.commit if code else "", code.diff if code else "", weights)


def existing_records(mode: str, project: str | None) -> list[Any]:
    """Records to compare against: the server's (mode server) or this machine's offline sessions."""
    from reprozoo import records

    if mode == "server":
        return records.list_server(project, limit=500)
    if mode == "offline":
        return records.list_offline()
    return []


# --- local executor -------------------------------------------------------------------------------
@dataclass
class StepResult:
    name: str
    status: str  # done | skipped | failed
    task_id: str | None = None
    run_dir: str | None = None
    test_accuracy: float | None = None
    error: str = ""


@dataclass
class SweepReport:
    results: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status == "failed"]

    def lines(self) -> list[str]:
        """How many models were done, skipped or failed; then one line a model."""
        counts = ", ".join(f"{n} {s}" for s in ("done", "skipped", "failed") if (n := sum(r.status == s for r in self.results)))
        lines = [f"sweep: {len(self.results)} model(s): {counts}"]
        for r in self.results:
            accuracy = "—" if r.test_accuracy is None else f"{r.test_accuracy:.4f}"
            lines.append(f"  {r.name:<28} {r.status:<8} test acc {accuracy:<7} {r.task_id or ''} {r.run_dir or r.error}")
        return lines


def run_local(plan: SweepPlan, *, records: list[Any] | None = None, runs_dir: Path = Path("runs"),
              data_dir: Path | None = None, gpus: str = "auto", log: Callable[[str], None] = print,
              train_fn: Callable[[RunConfig], RunResult] | None = None,
              image_fn: Callable[..., tuple[int, Path]] | None = None) -> SweepReport:
    """Each step here, one after another; a failure is reported and the sweep goes on.

    `records`: completed runs to skip against (default: per the first step's tracking mode).
    With `plan.image`, each step runs in that image (containers.run_config_in_image), else in-process;
    `data_dir` is what the image mounts (default: the first step's data.data_dir, then $REPROZOO_DATA_DIR).
    """
    if data_dir is None and plan.steps:
        found = plan.steps[0].config.data.data_dir or os.environ.get("REPROZOO_DATA_DIR")
        data_dir = Path(found) if found else None
    from reprozoo.errors import Preempted

    if records is None and plan.steps:
        from reprozoo.session import resolve_mode

        first = plan.steps[0].config
        mode = resolve_mode(first.tracking.mode)
        if mode == "off":
            log("sweep: tracking is off: no records to compare with, every model runs")
        records = existing_records(mode, first.tracking.project)
    done = done_index(records or [])
    code = None if plan.image else provenance.git_state()  # the code every step runs, once
    report = SweepReport()
    shas: dict[tuple[str | None, str | None], dict[str, str]] = {}
    for i, step in enumerate(plan.steps, 1):
        cfg = step.config
        where = f"[{i}/{len(plan.steps)}] {step.name}"
        try:
            key = (cfg.data.data_dir, cfg.data.dataset_id)
            if key not in shas:
                shas[key] = data_sha256(cfg)
            found = done.get(step_identity(step, shas[key], code, log))
            if found is not None:
                log(f"{where}: skipped, already completed as {found.task_id} (same config, code, data, image and weights)")
                report.results.append(StepResult(step.name, "skipped", found.task_id,
                                                 found.provenance.get("run_dir") or found.source,
                                                 found.metrics["test"]["accuracy"]))
                continue
            log(f"{where}: training {cfg.model.name}" + (f" in {plan.image}" if plan.image else ""))
            if plan.image:
                result = _run_in_image(cfg, plan.image, runs_dir, data_dir, gpus, log, image_fn)
            else:
                result = _run_in_process(cfg, train_fn)
        except (KeyboardInterrupt, Preempted):
            raise  # the user (or the scheduler) stops the whole sweep
        except Exception as err:
            message = f"{type(err).__name__}: {err}".strip()
            if not isinstance(err, UserError):
                message += "\n" + "".join(traceback.format_exc().splitlines(keepends=True)[-6:])
            log(f"{where}: FAILED: {message}")
            report.results.append(StepResult(step.name, "failed", error=message.splitlines()[0]))
            continue
        log(f"{where}: done, test accuracy {result.metrics['test']['accuracy']:.4f} ({result.run_dir})")
        report.results.append(StepResult(step.name, "done", result.task_id, str(result.run_dir),
                                         result.metrics["test"]["accuracy"]))
    return report


def _run_in_process(cfg: RunConfig, train_fn: Callable[[RunConfig], RunResult] | None) -> RunResult:
    # train() closes its ClearML task on any failure, so the next model's Task.init starts clean.
    return (train_fn or train)(cfg)


def _run_in_image(cfg: RunConfig, image: str, runs_dir: Path, data_dir: Path | None, gpus: str,
                  log: Callable[[str], None], image_fn: Callable[..., tuple[int, Path]] | None) -> RunResult:
    if image_fn is None:
        from reprozoo.containers.run import run_config_in_image as image_fn
    code, run_dir = image_fn(cfg, image, runs_dir=runs_dir, data_dir=data_dir, gpus=gpus, log=log)
    metrics_file = Path(run_dir) / "metrics.json"
    if code != 0 or not metrics_file.is_file():
        raise RuntimeError(f"the container exited with {code}" + ("" if metrics_file.is_file() else f"; no {metrics_file}"))
    metrics = safeyaml.load_json_object(safeyaml.read_bytes(metrics_file, 1 << 24, "metrics.json"), str(metrics_file))
    return RunResult(Path(run_dir), metrics, task_id=recorded_task_id(Path(run_dir)))


# --- queue executor (ClearML PipelineController) ---------------------------------------------------
def pin_data_version(plan: SweepPlan, dataset_id: str) -> SweepPlan:
    """Agents have no local trees: every step trains on exactly that ClearML dataset version."""
    for step in plan.steps:
        step.config.data.dataset_id = dataset_id
        step.config.data.data_dir = None
        step.config.out_dir = None  # the agent's own runs/<model>-<time>
    return plan


def pipeline_steps(plan: SweepPlan, template_id: str | None) -> list[dict[str, Any]]:
    """The keyword arguments of PipelineController.add_step, one dict per step (pure data).

    The template task holds a RunConfig; each step's clone gets the step's whole RunConfig as its
    config object and as its hyperparameter sections (tracking.remote_config merges both on the agent
    against the template's `RunConfig (as recorded)`, and they agree), its queue, and its image."""
    from reprozoo.agent import docker_arguments  # the image's venv as is, its entrypoint cleared
    from reprozoo.session import CONFIG_OBJECT
    from reprozoo.tracking import config_sections

    steps = []
    for step in plan.steps:
        if not step.queue:
            raise ConfigError(f"step {step.name}: no queue; pass --queue")
        sections = provenance.redact_obj(config_sections(step.config))
        kwargs: dict[str, Any] = {
            "name": step.name,
            "base_task_id": template_id,
            "execution_queue": step.queue,
            "parameter_override": {f"{section}/{key}": value for section, values in sections.items()
                                   for key, value in values.items()},
            "configuration_overrides": {CONFIG_OBJECT: provenance.redact(step.config.to_yaml())},
            "task_overrides": {"name": f"{step.config.model.name} {step.config.data.granularity} seed{step.config.seed}"},
            # One failed (or aborted) model leaves the others running; steps have no children.
            "continue_behaviour": {"continue_on_fail": True, "continue_on_abort": True},
        }
        if step.image:
            kwargs["task_overrides"].update({"container.image": step.image, "container.arguments": docker_arguments()})
        steps.append(kwargs)
    return steps


def create_template(task_cls: Any, cfg: RunConfig, project: str, log: Callable[[str], None] = print) -> Any:
    """A draft training task that runs `python -m reprozoo train` at this checkout's commit (+ diff);
    the pipeline clones it once per step. Exercised against a real server: no."""
    from reprozoo.session import ENTRY_POINT, WORKING_DIR
    from reprozoo.tracking import write_config

    git = provenance.git_state()
    if not git.repository or not git.commit:
        raise ConfigError("a queued sweep needs a git checkout with a commit (agents clone it); commit and push first")
    if git.repository.startswith("file://"):
        log(f"sweep: warning: the repository has no remote ({git.repository}); only an agent on this machine can clone it")
    lock_name, _ = provenance.lock_file(git.root)
    lock = Path(git.root or ".") / lock_name  # an absolute $REPROZOO_LOCK stays as it is
    template = task_cls.create(
        project_name=project, task_name=f"reprozoo sweep template {git.commit[:8]}", task_type="training",
        repo=git.repository, branch=git.branch, commit=git.commit, module=ENTRY_POINT.removeprefix("-m ").strip(),
        working_directory=WORKING_DIR, add_task_init_call=False, detect_repository=False,
        # Without an image the agent installs exactly the lock (as a recorded run's task does).
        requirements_file=str(lock) if lock_name != provenance.NONE and lock.is_file() else None)
    write_config(template, cfg, "the sweep step's RunConfig (each step overrides it)")
    template.set_script(diff=git.diff, entry_point=ENTRY_POINT, working_dir=WORKING_DIR)
    template.add_tags(["reprozoo-sweep-template"])
    return template


def launch_pipeline(plan: SweepPlan, *, project: str, controller_queue: str = "services",
                    pipeline_cls: Any = None, task_cls: Any = None, log: Callable[[str], None] = print) -> Any:
    """Feed the steps to a PipelineController and start it. Exercised against a real server: no;
    tests drive it with recording stand-ins. `controller_queue="local"` runs the controller in this
    process (it waits for every step); otherwise ClearML enqueues the controller and exits this process."""
    if pipeline_cls is None or task_cls is None:
        from clearml import Task
        from clearml.automation import PipelineController

        pipeline_cls, task_cls = pipeline_cls or PipelineController, task_cls or Task
    template = create_template(task_cls, plan.steps[0].config, project, log)
    # target_project: the steps' tasks land in the sweep's project, where list_server (the skip rule,
    # the leaderboard) finds them, not in the pipeline's hidden .pipelines sub-project.
    pipe = pipeline_cls(name="reprozoo sweep", project=project, version="1.0.0", add_pipeline_tags=False,
                        abort_on_failure=False, target_project=project)
    for kwargs in pipeline_steps(plan, template.id):
        pipe.add_step(**kwargs)
    log(f"pipeline: {len(plan.steps)} step(s) from template {template.id}, queue {plan.queue},"
        f" image {plan.image or 'the agent default'}")
    if controller_queue == "local":
        pipe.start_locally(run_pipeline_steps_locally=False)
    else:
        pipe.start(queue=controller_queue)
    return pipe


def enqueue(plan: SweepPlan, *, controller_queue: str = "services", log: Callable[[str], None] = print) -> Any:
    """--queue: pin the steps to one data version on the server, drop those already completed there,
    and launch the pipeline for the rest (None when none remain). The caller checks the server
    (session.require_server): this registers data and creates tasks on it."""
    from reprozoo import session
    from reprozoo.data import versions
    from reprozoo.data.sst5 import resolve_data_dir

    session.configure_clearml()
    for name in sorted({plan.queue} | ({controller_queue} - {"local"})):  # before anything is registered or created
        require_queue(name)
    first = plan.steps[0].config
    if first.data.dataset_id:  # --set data.dataset_id=…: exactly that version
        version = versions.resolve(str(first.data.dataset_id))
    else:  # agents have no local trees: register (or find) this data version on the server
        version = versions.register(resolve_data_dir(first.data.data_dir), "server", first.tracking.project)
    log(f"data version: {version.dataset_id} (content sha256 {version.content_hash[:12]})")
    pin_data_version(plan, version.dataset_id)
    done = done_index(existing_records("server", first.tracking.project))
    code = None if plan.image else provenance.git_state()  # what the template runs (create_template)
    remaining = []
    for step in plan.steps:
        found = done.get(step_identity(step, version.sha256, code, log))
        if found:
            log(f"{step.name}: skipped, already completed as {found.task_id}")
        else:
            remaining.append(step)
    if not remaining:
        log("sweep: every model already has a completed task for this config, code, data version, image and weights")
        return None
    plan.steps = remaining
    return launch_pipeline(plan, project=first.tracking.project, controller_queue=controller_queue, log=log)


# --- dry run -------------------------------------------------------------------------------------
def dry_run_lines(plan: SweepPlan) -> list[str]:
    """The plan as a table (here: which steps a local sweep would skip) and its GPU-hour estimate."""
    table = format_rows(plan_table(plan, None if plan.queue else local_status(plan)))
    return [table, f"estimated GPU-hours: {plan.gpu_hours:.3f} (6·params·tokens FLOPs at {EFFECTIVE_FLOPS:.0e} FLOP/s"
                   f" + {OVERHEAD_HOURS * 60:.0f} min per run; an upper bound: early stopping ends runs sooner)"]


def local_status(plan: SweepPlan) -> dict[str, str]:
    """For --dry-run: which steps a local sweep would skip (a completed record with the same identity)."""
    from reprozoo.session import resolve_mode

    first = plan.steps[0].config
    done = done_index(existing_records(resolve_mode(first.tracking.mode), first.tracking.project))
    code = None if plan.image else provenance.git_state()
    status = {}
    for step in plan.steps:
        unknown: list[str] = []
        found = done.get(step_identity(step, code=code, log=unknown.append))
        status[step.name] = f"skip (done: {found.task_id})" if found else "run (weights unknown)" if unknown else "run"
    return status


def plan_table(plan: SweepPlan, status: dict[str, str] | None = None) -> list[list[str]]:
    """Rows for `--dry-run`: header first, totals last."""
    header = ["model", "hub id", "params (M)", "lr", "batch", "max len", "granularity", "epochs", "image", "queue",
              "GPU-h (est.)"]
    if status is not None:
        header.append("status")
    rows = [header]
    for s in plan.steps:
        c = s.config
        image = s.image or ("agent default" if s.queue else "none (in-process)")
        row = [c.model.name, s.hub_id, f"{s.params_m:g}", f"{c.optim.lr:g}", str(c.data.batch_size), str(c.data.max_length),
               c.data.granularity, str(c.trainer.max_epochs), image, s.queue or "local", f"{s.gpu_hours:.3f}"]
        if status is not None:
            row.append(status.get(s.name, ""))
        rows.append(row)
    total = ["total", f"{len(plan.steps)} model(s)", f"{sum(s.params_m for s in plan.steps):g}", "", "", "", "", "", "", "",
             f"{plan.gpu_hours:.3f}"]
    rows.append(total + ([""] if status is not None else []))
    return rows


def format_rows(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


