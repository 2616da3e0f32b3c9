"""One training run, top to bottom: RunConfig in, run directory (and tracked task) out.

    plan_run       config → zoo defaults, data files (sha256), accelerator and precision (devices), run directory name
    prepare        weights, tokenizer, parsed trees (before any task is opened: bad input leaves no record)
    start_run      claim the run directory (run_claims), record config and provenance in the task, seed
    fit            model → Trainer.fit (checkpoints, early stopping, preemption; DDP ranks > 0 started by ddp)
    score          best checkpoint → dev + test scores
    write_outputs  metrics.json, timing.json, image.json, confusion matrix, export; then the task closes

`train()` reads as that list; `task_stopped_on_failure` closes the task as stopped on any failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reprozoo import provenance, run_spec, zoo
from reprozoo.config import ConfigError, RunConfig
from reprozoo.data.sst5 import data_fingerprint, resolve_data_dir
from reprozoo.data.trees import LABEL_NAMES
from reprozoo.ddp import DDP_RESUME_ENV, as_ddp_worker, ddp_worker, ddp_workers_run
from reprozoo.devices import choose_accelerator, choose_precision, deterministic_mode, device_count
from reprozoo.errors import Preempted
from reprozoo.log import log
from reprozoo.run_claims import check_run_dir, claimed_run_dir, recorded_task_id


@dataclass
class Plan:
    """Everything a run decided before training: resolved defaults, paths, hardware."""

    cfg: RunConfig
    entry: zoo.ZooEntry
    run_dir: Path
    data_dir: Path
    data_sha256: dict[str, str]
    lr: float
    batch_size: int
    max_length: int
    pooling: str
    accelerator: str
    precision: str
    dataset: Any = None  # data.versions.DataVersion when --dataset-id named one

    @property
    def world_size(self) -> int:
        """Devices (DDP processes) the run trains on."""
        return device_count(self.cfg.trainer.devices, self.accelerator)

    def resolved(self) -> dict[str, Any]:
        """What the run resolved from `auto`, the zoo and this machine: recorded, and compared on resume."""
        accumulate = self.cfg.trainer.accumulate_grad_batches
        return {"lr": self.lr, "batch_size": self.batch_size, "max_length": self.max_length, "pooling": self.pooling,
                "accelerator": self.accelerator, "precision": self.precision, "world_size": self.world_size,
                "accumulate_grad_batches": accumulate, "global_batch_size": self.batch_size * self.world_size * accumulate}


def plan_run(cfg: RunConfig, overwrite: bool = False, resuming: bool = False) -> Plan:
    """Validate and resolve everything cheap before any model is loaded."""
    cfg.validate()
    entry = zoo.get(cfg.model.name)
    max_length = cfg.data.max_length or entry.max_length
    limit = _model_max_positions(entry)
    if limit and max_length > limit:
        raise ConfigError(f"data.max_length={max_length} exceeds {entry.name}'s limit of {limit} positions; use --max-length {limit} or less")
    accelerator = choose_accelerator(cfg)
    precision = choose_precision(cfg, entry, accelerator)
    dataset = None
    if cfg.data.dataset_id:
        from reprozoo.data import versions

        dataset = versions.resolve(cfg.data.dataset_id)  # exactly that version, sha256-verified
        data_dir = Path(dataset.path)
    else:
        data_dir = resolve_data_dir(cfg.data.data_dir)
    run_dir = Path(cfg.out_dir or Path("runs") / f"{entry.name.replace('/', '_')}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    check_run_dir(run_dir, explicit=cfg.out_dir is not None, overwrite=overwrite, resuming=resuming)
    return Plan(cfg=cfg, entry=entry, run_dir=run_dir, data_dir=data_dir, data_sha256=data_fingerprint(data_dir),
                lr=cfg.optim.lr or entry.lr, batch_size=cfg.data.batch_size or entry.batch_size,
                max_length=max_length, pooling=cfg.model.pooling or entry.pooling,
                accelerator=accelerator, precision=precision, dataset=dataset)


def _model_max_positions(entry: zoo.ZooEntry) -> int | None:
    """Position limit, when known without loading weights (local dirs and cached configs)."""
    if entry.local_dir:
        config = json.loads((Path(entry.local_dir) / "config.json").read_text())
        limit = config.get("max_position_embeddings")
        # RoBERTa-style models reserve two positions for the padding offset.
        return limit - 2 if limit and config.get("model_type") in ("roberta", "xlm-roberta", "longformer") else limit
    return 512


@dataclass
class RunResult:
    """What `train` hands back. A DDP worker (rank > 0) writes and records nothing: it has only
    `run_dir` and its `metrics`, and `ddp_worker` is True."""

    run_dir: Path
    metrics: dict[str, Any]
    timing: dict[str, Any] | None = None
    task_id: str | None = None
    dataset_id: str | None = None
    ddp_worker: bool = False

    def lines(self) -> list[str]:
        """The run's closing summary (printed before its task closes): where the run is, its task and
        data version, its scores."""
        if self.ddp_worker:
            return []  # rank 0 reports
        m = self.metrics
        return [f"run directory: {self.run_dir}",
                *([f"clearml task: {self.task_id}"] if self.task_id else []),
                *([f"dataset version: {self.dataset_id}"] if self.dataset_id else []),
                f"dev  accuracy {m['dev']['accuracy']:.4f}  macro-F1 {m['dev']['macro_f1']:.4f}",
                f"test accuracy {m['test']['accuracy']:.4f}  macro-F1 {m['test']['macro_f1']:.4f}"]


@dataclass
class Inputs:
    """The run's weights, tokenizer and parsed data: loaded before any task is opened."""

    weights: Any  # zoo.Weights
    tokenizer: Any
    datamodule: Any  # data.module.SST5DataModule


@dataclass
class Fitted:
    trainer: Any  # lightning.Trainer
    module: Any  # model.SentimentClassifier
    step_losses: list[float]
    train_seconds: float


def train(cfg: RunConfig, overwrite: bool = False, resume: bool = False, accept_changes: bool = False) -> RunResult:
    """Run `cfg`; with `resume`, continue the run in `cfg.out_dir` from its last checkpoint, refusing
    other code, data, weights or software than it started with unless `accept_changes`.

    Several devices (DDP): rank 0 records and writes everything; the other ranks train their share
    of the batches and score the splits, and write nothing (RunResult.ddp_worker)."""
    from reprozoo import agent_task

    worker, replays, replay_changes = ddp_worker(), None, []
    if worker:
        cfg, overwrite = as_ddp_worker(cfg), False
    elif agent_task.on_clearml_agent():
        # Before the plan: the data version and run directory are the task's. A task re-enqueued after
        # its machine was lost resumes from the last checkpoint it uploaded.
        task = agent_task.read_task(cfg)
        cfg, resume, replays = task.cfg, resume or task.resumes, task.replays
        accept_changes = accept_changes or task.accept_changes
    plan = plan_run(cfg, overwrite=overwrite, resuming=resume or worker)
    if replays is not None:
        replay_changes = agent_task.check_replayed_settings(plan.resolved(), replays, accept_changes)
    if resume and (plan.run_dir / "metrics.json").is_file():
        raise ConfigError(f"{plan.run_dir} holds a finished run (metrics.json): there is nothing to resume, and nothing"
                          f" was changed; `reprozoo repro {plan.run_dir}` re-runs it, or train again with another --out")
    started = time.time()
    _quiet_libraries()
    from reprozoo import tracking

    # Weights, data and the run directory are checked before a task is opened: a run that cannot
    # start leaves no record and no run directory.
    inputs = prepare(plan)
    # Once, before a task opens: code it could not record (too large untracked sources) is refused here.
    code = None if worker else provenance.git_state()
    history = check_resumed_state(plan, inputs, code, accept_changes) if code is not None and resume else []
    # A default (timestamped) name may be claimed with a suffix: the run goes on in the one claimed.
    with claimed_run_dir(plan.run_dir, explicit=plan.cfg.out_dir is not None, overwrite=overwrite, resume=resume,
                         worker=worker) as plan.run_dir:
        tracker = tracking.open_task(cfg, f"{plan.entry.name} {cfg.data.granularity} seed{cfg.seed}", plan,
                                     continue_task=recorded_task_id(plan.run_dir) if resume else None)
        tracker.resume_history = history
        if replays is not None:
            tracker.replays = {"task_id": replays.provenance.get("task_id"), "accepted_changes": replay_changes}
        with task_stopped_on_failure(tracker, lambda: plan.run_dir):
            if tracker.config != cfg and not resume:
                # A ClearML agent running a clone: the task's (UI-edited) RunConfig is the run's config.
                log.warning("running the RunConfig held by the ClearML task (edited in its clone)")
                plan = plan_run(tracker.config, overwrite=True)
                inputs = prepare(plan)
                plan.run_dir.mkdir(parents=True, exist_ok=True)
            resume_from = start_run(plan, tracker, inputs, resume=resume, worker=worker, code=code)
            several = not worker and plan.world_size > 1
            ranks = (ddp_workers_run(plan.cfg, plan.data_dir, inputs.weights.revision, plan.run_dir, resume_from)
                     if several else contextlib.nullcontext())
            with ranks:
                try:
                    fitted = fit(plan, inputs, tracker, resume_from, worker)
                except Preempted:
                    if worker:  # stopped with rank 0, which reports it: a rank > 0 exiting non-zero gets rank 0 SIGKILLed
                        return RunResult(plan.run_dir, {}, ddp_worker=True)
                    raise
                metrics = score(plan, inputs, fitted)
            if worker:
                return RunResult(plan.run_dir, metrics, ddp_worker=True)
            timing, export_dir = write_outputs(plan, inputs, fitted, metrics, started)
            result = RunResult(plan.run_dir, metrics, timing, tracker.task_id,
                               tracker.dataset.dataset_id if tracker.dataset else None)
            misclassified = inputs.datamodule.misclassified("dev", fitted.module.last_predictions["dev"])
            tracker.finish(metrics, timing, plan.run_dir, export_dir, class_counts=inputs.datamodule.class_counts(),
                           misclassified=misclassified, summary=result.lines())
            return result


def check_resumed_state(plan: Plan, inputs: Inputs, git: provenance.GitState, accept: bool) -> list[dict[str, Any]]:
    """The run now (config, code, data, weights, software, settings: run_spec.identity) against the
    interrupted run's record (resume.check_resume_state)."""
    from reprozoo.resume import check_resume_state

    now = run_spec.identity(plan.cfg, git.commit, git.diff, plan.data_sha256, inputs.weights.revision,
                            provenance.environment(plan.cfg.seed, git.root), plan.resolved())
    return check_resume_state(plan.run_dir, now, accept)


def resumed_run_config(ref: str, out: str | None = None) -> RunConfig:
    """`train --resume RUN_DIR | TASK_ID`: the interrupted run's own RunConfig, in its run directory;
    for a server task whose run directory is not on this machine, in one fetched from its task
    (checkpoint_store.fetch_run) into `out` (default runs/<the recorded directory's name>)."""
    from reprozoo import checkpoint_store, resume, session
    from reprozoo.records import load_record

    path = Path(ref)
    if path.is_dir() or ref.startswith("offline-") or not session.server_configured():
        return resume.resumed_config(ref)
    record = load_record(ref)
    recorded_dir = Path(str(record.provenance.get("run_dir") or ""))
    if out is None and (recorded_dir / "config.yaml").is_file():
        return resume.resumed_config(ref)  # where it ran: the local checkpoints
    from clearml import Task

    run_dir = Path(out or Path("runs") / (recorded_dir.name or f"{record.config.model.name.replace('/', '_')}-{ref}"))
    if (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--out {run_dir} already holds a run; pass an empty or new --out to resume task {ref} in")
    return checkpoint_store.fetch_run(Task.get_task(task_id=ref), record, run_dir)


@contextlib.contextmanager
def task_stopped_on_failure(tracker: Any, run_dir: Callable[[], Path]) -> Iterator[None]:
    """Any failure once the task is open (preemption, a bad batch, a full disk) closes it: what it
    holds is kept, marked stopped (interrupted) or failed, and the next training in this process can open its own.
    `run_dir` is asked at the failure: the directory is claimed (and may be renamed) inside."""
    try:
        yield
    except BaseException as err:
        # Stopped from outside (a signal, Ctrl-C): stopped; anything else (a NaN loss, a bad batch): failed.
        interrupted = isinstance(err, Preempted | KeyboardInterrupt | SystemExit)
        tracker.abort(f"{type(err).__name__}: {err}", run_dir(), failed=not interrupted)
        raise


def prepare(plan: Plan) -> Inputs:
    """Weights, tokenizer and the parsed (so validated) trees."""
    from transformers import AutoTokenizer

    from reprozoo.data.sst5 import load_trees, token_cache_path

    cfg = plan.cfg
    weights = zoo.resolve_weights(plan.entry, cfg.model.revision)
    tokenizer = AutoTokenizer.from_pretrained(str(weights.path))
    # Trees not tokenized before are parsed before Lightning is imported (~10 s here): bad input fails fast.
    cache_path = token_cache_path(cfg.data, plan.data_sha256, tokenizer, plan.max_length)
    trees = None if cache_path.is_file() else load_trees(plan.data_dir)
    from reprozoo.data.module import SST5DataModule

    datamodule = SST5DataModule(cfg.data, plan.data_dir, plan.data_sha256, tokenizer,
                                plan.max_length, plan.batch_size, cfg.seed, trees=trees, cache_path=cache_path)
    datamodule.prepare_data()  # parses (and so validates) the trees
    datamodule.setup("fit")
    return Inputs(weights, tokenizer, datamodule)


def start_run(plan: Plan, tracker: Any, inputs: Inputs, *, resume: bool, worker: bool,
              code: provenance.GitState | None = None) -> str | None:
    """Write the run's config, record the run, seed; the checkpoint to resume from (or None)."""
    import lightning as L
    import torch

    from reprozoo.resume import find_resume_checkpoint

    cfg = plan.cfg
    # A DDP worker loads the checkpoint rank 0 resumes from, which rank 0 passed on.
    found = find_resume_checkpoint(plan.run_dir) if resume and not worker else None
    resume_from = (os.environ.get(DDP_RESUME_ENV) or None) if worker else found
    if not worker:
        # Scrubbed at the source: what the run directory holds is what may be recorded, now and on resume.
        (plan.run_dir / "config.yaml").write_text(provenance.redact(cfg.to_yaml()))
    # Before the record, so the fingerprint states the determinism flags this run trains with (the
    # Trainer sets the same ones again); seeding stays after it so nothing the tracker does can move an RNG.
    torch.use_deterministic_algorithms(True, warn_only=deterministic_mode(plan.accelerator) == "warn")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what Lightning's deterministic mode sets
    if not worker:
        tracker.record(cfg, plan, inputs.weights, code)
        tracker.start_uploads(plan.run_dir)  # a server run's checkpoints go to its storage too
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return resume_from


def fit(plan: Plan, inputs: Inputs, tracker: Any, resume_from: str | None, worker: bool) -> Fitted:
    import lightning as L

    from reprozoo.model import SentimentClassifier
    from reprozoo.modeling_reprozoo import ReprozooForSequenceClassification

    cfg = plan.cfg
    class_weights = None
    if cfg.data.imbalance == "weighted-loss":
        counts = inputs.datamodule.class_counts()
        total = sum(counts)
        class_weights = [total / (len(counts) * max(c, 1.0)) for c in counts]
    id2label = dict(enumerate(LABEL_NAMES))
    net = ReprozooForSequenceClassification.from_backbone(str(inputs.weights.path), plan.pooling, cfg.model.dropout, id2label)
    module = SentimentClassifier(net, cfg.optim, plan.lr, class_weights)
    trainer = L.Trainer(**_trainer_kwargs(cfg, plan, tracker))
    fit_started = time.time()
    trainer.fit(module, datamodule=inputs.datamodule, ckpt_path=resume_from, weights_only=True)
    # Copied before scoring: loading the best checkpoint restores its own list.
    return Fitted(trainer, module, list(module.step_losses), time.time() - fit_started)


def score(plan: Plan, inputs: Inputs, fitted: Fitted) -> dict[str, Any]:
    """Dev and test scores of the best checkpoint, and a summary of the training."""
    trainer, module, datamodule, steps = fitted.trainer, fitted.module, inputs.datamodule, fitted.step_losses
    best = _best_checkpoint(trainer)
    dev = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True) and module.last_eval["dev"]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True) and module.last_eval["test"]
    tenth = max(1, len(steps) // 10)
    return {
        "dev": dev,
        "test": test,
        "train": {
            "examples": len(datamodule.splits["train"].labels),
            "granularity": plan.cfg.data.granularity,
            "steps": len(steps),
            "epochs": trainer.current_epoch,
            "loss_first": sum(steps[:tenth]) / tenth if steps else None,
            "loss_last": sum(steps[-tenth:]) / tenth if steps else None,
            # Every optimiser step's loss: a replay that matches these ran the same schedule, clipping and data order.
            "step_losses": list(steps),
        },
        "best_checkpoint": Path(best).name if best else None,
    }


def write_outputs(plan: Plan, inputs: Inputs, fitted: Fitted, metrics: dict[str, Any],
                  started: float) -> tuple[dict[str, Any], Path]:
    """metrics.json, timing.json, image.json, the test confusion matrix and the export; (timing, export dir)."""
    import torch

    from reprozoo.containers.identity import runtime_identity
    from reprozoo.metrics import save_confusion_png
    from reprozoo.progress import ThroughputMonitor

    run_dir, test = plan.run_dir, metrics["test"]
    export_dir = _export(fitted.module, inputs.tokenizer, run_dir)
    # The weights the run hands on, so that "bit-identical" covers them and not only the scores.
    metrics["weights_sha256"] = "sha256:" + provenance.file_sha256(export_dir / "model.safetensors")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    timing = {"train_seconds": fitted.train_seconds, "total_seconds": time.time() - started,
              "tokenization_cache_hit": inputs.datamodule.cache_hit, "accelerator": plan.accelerator,
              "precision": plan.precision, "torch_threads": torch.get_num_threads(),
              "throughput": next((c.summary() for c in fitted.trainer.callbacks if isinstance(c, ThroughputMonitor)), None),
              "checkpoint_writes": _checkpoint_writes(fitted.trainer)}
    (run_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    # Which image (repo digest, as `reprozoo image run` handed it in) or lock this run used.
    (run_dir / "image.json").write_text(json.dumps(runtime_identity(), indent=2) + "\n")
    save_confusion_png(test["confusion_matrix"], str(run_dir / "confusion_test.png"),
                       f"{plan.entry.name} SST-5 test (acc {test['accuracy']:.3f})")
    if not plan.cfg.trainer.keep_last_checkpoint:
        _drop_resume_checkpoints(run_dir)
    return timing, export_dir


def _drop_resume_checkpoints(run_dir: Path) -> None:
    """A finished run cannot be resumed (metrics.json is written): its last.ckpt and last.prev.ckpt are
    dead weight (2 × 272 MB for MiniLM, 2 × 1.3 GB for MPNet). The best checkpoint (weights only) stays."""
    from reprozoo.resume import LAST, PREVIOUS

    for name in (LAST, PREVIOUS):
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)


def _trainer_kwargs(cfg: RunConfig, plan: Plan, tracker: Any) -> dict[str, Any]:
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from reprozoo.resume import BackgroundCheckpointIO, RelocatableModelCheckpoint, ResumeCheckpoint, ResumeState

    t = cfg.trainer
    checkpoints = plan.run_dir / "checkpoints"
    callbacks: list[Any] = [
        # The best checkpoint only: last.ckpt has one writer, ResumeCheckpoint (listed after this one, so it
        # runs after it). No version counter: a resumed run that saves a best checkpoint again overwrites
        # the file its interrupted self left, instead of naming its own "-v1". Both this and early stopping
        # act at the end of each validation, never at the epoch's end (Lightning's default for one
        # validation per epoch): last.ckpt, written there too, then holds their states after it.
        # Weights only: test and export read nothing else, and resuming reads last.ckpt (a third of the
        # bytes: 91 MB for MiniLM instead of 272 MB with AdamW's two moments).
        RelocatableModelCheckpoint(dirpath=checkpoints, filename="best-{epoch}-{step}", monitor="dev/macro_f1",
                        mode="max", save_top_k=1, save_last=False, auto_insert_metric_name=False, save_weights_only=True,
                        enable_version_counter=False, save_on_train_epoch_end=False),
        EarlyStopping(monitor="dev/macro_f1", mode="max", patience=t.early_stopping_patience,
                      check_on_train_epoch_end=False),
        LearningRateMonitor(logging_interval="step"),
        ResumeState(),
        ResumeCheckpoint(checkpoints, every_n_steps=t.checkpoint_every),
    ]
    if t.pruning_amount > 0:
        from reprozoo.pruning import HeadAndFFNPruning

        callbacks.append(HeadAndFFNPruning(t.pruning_amount))
    if sys.stderr.isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
        progress = True
    else:
        from reprozoo.progress import LineProgress

        callbacks.append(LineProgress())
        progress = False
    from reprozoo.progress import LogEveryRun, ThroughputMonitor

    callbacks.append(ThroughputMonitor())  # examples, tokens, step vs data time → timing.json
    callbacks.append(LogEveryRun())
    loggers = tracker.lightning_logger(plan.run_dir)
    callbacks.extend(tracker.lightning_callbacks())  # scalars on the server before each checkpoint
    return {
        "max_epochs": t.max_epochs,
        "max_steps": t.max_steps,
        "max_time": t.max_time,
        "accelerator": plan.accelerator,
        # Several devices: DDP, one process per device (on the CPU: gloo processes, a test of the
        # wiring more than a speed-up). Our sampler shards the training batches by rank and the
        # evaluation loaders stay whole, so Lightning must not add DistributedSamplers.
        "devices": t.devices,
        "use_distributed_sampler": False,
        # DDP checks that every parameter got a gradient; the backbones' own poolers (and a few
        # family-specific embeddings) never do, since our head pools the hidden states itself.
        "strategy": "ddp_find_unused_parameters_true" if plan.world_size > 1 else "auto",
        "precision": plan.precision,
        "deterministic": deterministic_mode(plan.accelerator),
        "gradient_clip_val": cfg.optim.grad_clip or None,
        "accumulate_grad_batches": t.accumulate_grad_batches,
        "val_check_interval": t.val_check_interval,
        "log_every_n_steps": t.log_every_n_steps,
        "fast_dev_run": t.fast_dev_run,
        "profiler": t.profiler,
        "callbacks": callbacks,
        "logger": loggers,
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "default_root_dir": str(plan.run_dir),
        "num_sanity_val_steps": 0,
        # Checkpoints reach the disk while training goes on; a server run's then go to its task's storage.
        "plugins": [BackgroundCheckpointIO(after_write=tracker.uploader.offer if tracker.uploader is not None else None)],
    }


def _checkpoint_writes(trainer: Any) -> dict[str, Any] | None:
    """How many checkpoints the background writer wrote during fit, and its seconds (off the loop)."""
    from reprozoo.resume import BackgroundCheckpointIO

    io = trainer.strategy.checkpoint_io
    return {"count": io.writes, "seconds": io.write_seconds} if isinstance(io, BackgroundCheckpointIO) else None


def _best_checkpoint(trainer: Any) -> str | None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if checkpoint is not None and checkpoint.best_model_path:
        return checkpoint.best_model_path
    return None  # fast_dev_run: no checkpoint, score the weights in memory


def _export(module: Any, tokenizer: Any, run_dir: Path) -> Path:
    """A `save_pretrained` directory that transformers' pipeline loads (see modeling_reprozoo)."""
    from reprozoo import modeling_reprozoo

    export_dir = run_dir / "export"
    net = module.net
    net.config.auto_map = {
        "AutoConfig": "modeling_reprozoo.ReprozooConfig",
        "AutoModelForSequenceClassification": "modeling_reprozoo.ReprozooForSequenceClassification",
    }
    net.config.architectures = ["ReprozooForSequenceClassification"]
    net.save_pretrained(export_dir)
    tokenizer.save_pretrained(export_dir)
    shutil.copy(modeling_reprozoo.__file__, export_dir / "modeling_reprozoo.py")
    return export_dir


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # progress.LogEveryRun
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
