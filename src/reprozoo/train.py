"""One training run, top to bottom: RunConfig in, run directory (and tracked task) out.

    config → data files (sha256) → weights → tracker → data module → model → Trainer.fit
           → best checkpoint → dev + test scores → metrics.json, confusion matrix, export
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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reprozoo import zoo
from reprozoo.config import ConfigError, RunConfig
from reprozoo.data.sst5 import data_fingerprint, resolve_data_dir
from reprozoo.data.trees import LABEL_NAMES

log = logging.getLogger("reprozoo")


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


def plan_run(cfg: RunConfig, overwrite: bool = False, resuming: bool = False) -> Plan:
    """Validate and resolve everything cheap before any model is loaded."""
    cfg.validate()
    entry = zoo.get(cfg.model.name)
    max_length = cfg.data.max_length or entry.max_length
    limit = _model_max_positions(entry)
    if limit and max_length > limit:
        raise ConfigError(f"data.max_length={max_length} exceeds {entry.name}'s limit of {limit} positions; use --max-length {limit} or less")
    accelerator = _choose_accelerator(cfg)
    precision = _choose_precision(cfg, entry, accelerator)
    dataset = None
    if cfg.data.dataset_id:
        from reprozoo.data import versions

        dataset = versions.resolve(cfg.data.dataset_id)  # exactly that version, sha256-verified
        data_dir = Path(dataset.path)
    else:
        data_dir = resolve_data_dir(cfg.data.data_dir)
    run_dir = Path(cfg.out_dir or Path("runs") / f"{entry.name.replace('/', '_')}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    if (run_dir / "metrics.json").exists() and not overwrite and not resuming:
        raise ConfigError(f"{run_dir} already holds a finished run; pass --overwrite or choose another --out")
    _check_writable(run_dir)
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


def _choose_accelerator(cfg: RunConfig) -> str:
    import torch

    wanted = cfg.trainer.accelerator
    has_gpu = torch.cuda.is_available()
    if wanted in ("gpu", "cuda") or cfg.trainer.require_gpu:
        if not has_gpu:
            if cfg.trainer.require_gpu:
                raise ConfigError("a GPU was required (--require-gpu) but torch sees none; drop --require-gpu to train on CPU")
            print("reprozoo: no GPU visible to torch; falling back to CPU (pass --require-gpu to make this an error)", file=sys.stderr)
            return "cpu"
        return "gpu"
    if wanted == "auto":
        return "gpu" if has_gpu else "cpu"
    return wanted


def _choose_precision(cfg: RunConfig, entry: zoo.ZooEntry, accelerator: str) -> str:
    import torch

    requested = cfg.trainer.precision
    if requested.startswith("16") and not entry.fp16:
        raise ConfigError(f"{entry.name} ({entry.family}) is not trained in fp16: it overflows to NaN losses; use --precision bf16-mixed (GPU) or 32-true")
    if requested != "auto":
        if accelerator == "cpu" and "bf16" in requested:
            print("reprozoo: warning: bf16 on a CPU without bf16 units is ~20x slower than fp32", file=sys.stderr)
        return requested
    if accelerator != "gpu":
        return "32-true"
    if torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed" if entry.fp16 else "32-true"


# Lightning's DDP launcher starts one process per further device by re-running this command line;
# rank 0 names its run directory here so those processes train into it (and only train).
DDP_RUN_DIR_ENV = "REPROZOO_DDP_RUN_DIR"


def ddp_worker() -> bool:
    """Whether this process is a DDP rank other than 0, started by Lightning's launcher."""
    return any(int(os.environ.get(name) or 0) > 0 for name in ("LOCAL_RANK", "NODE_RANK"))


def on_clearml_agent() -> bool:
    """Whether a ClearML agent started this process for a task (it sets CLEARML_TASK_ID)."""
    return bool(os.environ.get("CLEARML_TASK_ID") or os.environ.get("TRAINS_TASK_ID"))


def agent_config(cfg: RunConfig) -> RunConfig:
    """The RunConfig held by the agent's task (a clone, maybe edited). Read before planning: planned
    from the command line's config, a container with no trees tried to download SST-5 instead."""
    from clearml import Task
    from clearml.config import get_remote_task_id

    from reprozoo import tracking

    return tracking.remote_config(Task.get_task(task_id=get_remote_task_id()), cfg)


def train(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run `cfg`; with `resume`, continue the run in `cfg.out_dir` from its last checkpoint.

    Several devices (DDP): rank 0 records and writes everything; the other ranks train their share
    of the batches and score the splits, and write nothing (result["ddp_worker"] is True)."""
    worker = ddp_worker()
    if worker:
        cfg = RunConfig.from_dict(cfg.to_dict())
        cfg.out_dir = os.environ.get(DDP_RUN_DIR_ENV) or cfg.out_dir
        cfg.tracking.mode = "off"  # one task per run: rank 0's
        overwrite = False
    elif on_clearml_agent():
        cfg = agent_config(cfg)  # before the plan: the data version and run directory are the task's
    plan = plan_run(cfg, overwrite=overwrite, resuming=resume or worker)
    started = time.time()
    _quiet_libraries()

    import lightning as L
    import torch
    from transformers import AutoTokenizer

    from reprozoo import tracking
    from reprozoo.data.module import SST5DataModule
    from reprozoo.model import SentimentClassifier
    from reprozoo.modeling_reprozoo import ReprozooForSequenceClassification
    from reprozoo.progress import ThroughputMonitor
    from reprozoo.resume import find_resume_checkpoint

    def prepare(cfg: RunConfig, plan: Plan) -> tuple[Any, Any, SST5DataModule]:
        weights = zoo.resolve_weights(plan.entry, cfg.model.revision)
        tokenizer = AutoTokenizer.from_pretrained(str(weights.path))
        datamodule = SST5DataModule(cfg.data, plan.data_dir, plan.data_sha256, tokenizer,
                                    plan.max_length, plan.batch_size, cfg.seed)
        datamodule.prepare_data()  # parses (and so validates) the trees
        datamodule.setup("fit")
        return weights, tokenizer, datamodule

    # Weights and data are checked before a task is opened: a broken input leaves no record.
    weights, tokenizer, datamodule = prepare(cfg, plan)
    tracker = tracking.open_task(cfg, f"{plan.entry.name} {cfg.data.granularity} seed{cfg.seed}", plan,
                                 continue_task=recorded_task_id(plan.run_dir) if resume else None)
    # From here on any failure (preemption, a bad batch, a full disk) closes the task: what it holds is
    # kept, marked stopped, and the next training in this process can open its own.
    try:
        if tracker.config != cfg:
            # A ClearML agent running a clone: the task's (UI-edited) RunConfig is the run's config.
            print("reprozoo: running the RunConfig held by the ClearML task (edited in its clone)", file=sys.stderr)
            cfg = tracker.config
            plan = plan_run(cfg, overwrite=True)
            weights, tokenizer, datamodule = prepare(cfg, plan)

        resume_from = find_resume_checkpoint(plan.run_dir) if resume else None
        if overwrite and plan.run_dir.exists() and not resume:
            shutil.rmtree(plan.run_dir)
        run_dir = plan.run_dir = _claim_run_dir(plan.run_dir, exclusive=cfg.out_dir is None)
        if not worker:
            cfg.save(run_dir / "config.yaml")

        # Before the record, so the fingerprint states the determinism flags this run trains with;
        # seeding stays after it so nothing the tracker does can move an RNG.
        torch.use_deterministic_algorithms(True, warn_only=plan.accelerator == "gpu")
        if not worker:
            tracker.record(cfg, plan, weights)
        L.seed_everything(cfg.seed, workers=True, verbose=False)

        class_weights = None
        if cfg.data.imbalance == "weighted-loss":
            counts = datamodule.class_counts()
            total = sum(counts)
            class_weights = [total / (len(counts) * max(c, 1.0)) for c in counts]

        id2label = dict(enumerate(LABEL_NAMES))
        net = ReprozooForSequenceClassification.from_backbone(str(weights.path), plan.pooling, cfg.model.dropout, id2label)
        module = SentimentClassifier(net, cfg.optim, plan.lr, class_weights)

        trainer = L.Trainer(**_trainer_kwargs(cfg, plan, tracker))
        fit_started = time.time()
        os.environ[DDP_RUN_DIR_ENV] = str(run_dir.resolve())
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        finally:
            if not worker:
                os.environ.pop(DDP_RUN_DIR_ENV, None)
        train_seconds = time.time() - fit_started
        steps = list(module.step_losses)  # before scoring: loading the best checkpoint restores its own list

        best = _best_checkpoint(trainer)
        dev = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False) and module.last_eval["val"]
        test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False) and module.last_eval["test"]
        tenth = max(1, len(steps) // 10)
        metrics = {
            "dev": dev,
            "test": test,
            "train": {
                "examples": len(datamodule.splits["train"].labels),
                "granularity": cfg.data.granularity,
                "steps": len(steps),
                "epochs": trainer.current_epoch,
                "loss_first": sum(steps[:tenth]) / tenth if steps else None,
                "loss_last": sum(steps[-tenth:]) / tenth if steps else None,
            },
            "best_checkpoint": Path(best).name if best else None,
        }
        if worker:
            return {"run_dir": str(run_dir), "metrics": metrics, "ddp_worker": True}
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        timing = {"train_seconds": train_seconds, "total_seconds": time.time() - started,
                  "tokenization_cache_hit": datamodule.cache_hit, "accelerator": plan.accelerator,
                  "precision": plan.precision, "torch_threads": torch.get_num_threads(),
                  "throughput": next((c.summary() for c in trainer.callbacks if isinstance(c, ThroughputMonitor)), None)}
        (run_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
        from reprozoo.containers import runtime_identity

        # Which image (repo digest, as `reprozoo image run` handed it in) or lock this run used.
        (run_dir / "image.json").write_text(json.dumps(runtime_identity(), indent=2) + "\n")

        from reprozoo.metrics import save_confusion_png

        save_confusion_png(test["confusion_matrix"], str(run_dir / "confusion_test.png"),
                           f"{plan.entry.name} SST-5 test (acc {test['accuracy']:.3f})")
        export_dir = _export(module, tokenizer, run_dir)
        tracker.finish(metrics, timing, run_dir, export_dir, class_counts=datamodule.class_counts())
        return {"run_dir": str(run_dir), "metrics": metrics, "timing": timing, "task_id": tracker.task_id,
                "dataset_id": tracker.dataset.dataset_id if tracker.dataset else None}
    except BaseException as err:
        tracker.abort(f"{type(err).__name__}: {err}", plan.run_dir)
        raise


def recorded_task_id(run_dir: Path) -> str | None:
    """The task a run directory reports to: task.json (closed or stopped), else provenance.json (killed)."""
    for name in ("task.json", "provenance.json"):
        path = run_dir / name
        if path.is_file():
            with contextlib.suppress(ValueError):
                task_id = json.loads(path.read_text()).get("task_id")
                if task_id:
                    return str(task_id)
    return None


def _check_writable(run_dir: Path) -> None:
    """Before any task is opened: a run directory this user cannot create is a one-line error."""
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {run_dir} ({existing} is not writable by uid {os.getuid()}); pass a writable --out"
                          " (`reprozoo image run`: make --runs-dir writable by the image's user, `chown 10001:10001 DIR`)")


def _claim_run_dir(run_dir: Path, exclusive: bool) -> Path:
    """Create the run directory. A default (timestamped) name gets a suffix when another run
    started in the same second, so concurrent runs never share a directory."""
    if not exclusive:
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = run_dir if n == 1 else run_dir.with_name(f"{run_dir.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"{run_dir}: too many runs with this name; pass --out DIR")


def _trainer_kwargs(cfg: RunConfig, plan: Plan, tracker: Any) -> dict[str, Any]:
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ModelPruning

    from reprozoo.resume import AtomicCheckpointIO, PreemptionCheckpoint, ResumeState

    t = cfg.trainer
    checkpoints = plan.run_dir / "checkpoints"
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=checkpoints, filename="best-{epoch}-{step}", monitor="val/macro_f1",
                        mode="max", save_top_k=1, save_last=True, auto_insert_metric_name=False),
        EarlyStopping(monitor="val/macro_f1", mode="max", patience=t.early_stopping_patience),
        LearningRateMonitor(logging_interval="step"),
        ResumeState(),
        PreemptionCheckpoint(checkpoints),
    ]
    if t.checkpoint_every:
        callbacks.append(ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=t.checkpoint_every, save_top_k=0,
                                         save_last=True))
    if t.pruning_amount > 0:
        callbacks.append(ModelPruning("l1_unstructured", amount=t.pruning_amount, use_global_unstructured=True,
                                      parameters_to_prune=None, verbose=0))
    if sys.stderr.isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
        progress = True
    else:
        from reprozoo.progress import LineProgress

        callbacks.append(LineProgress())
        progress = False
    from reprozoo.progress import ThroughputMonitor

    callbacks.append(ThroughputMonitor())  # examples, tokens, step vs data time → timing.json
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
        "strategy": "ddp_find_unused_parameters_true" if _device_count(t.devices, plan.accelerator) > 1 else "auto",
        "precision": plan.precision,
        "deterministic": True,
        "gradient_clip_val": cfg.optim.grad_clip or None,
        "accumulate_grad_batches": t.accumulate_grad_batches,
        "val_check_interval": t.val_check_interval,
        "log_every_n_steps": t.log_every_n_steps,
        "fast_dev_run": t.fast_dev_run,
        "profiler": t.profiler,
        "callbacks": callbacks,
        "logger": tracker.lightning_logger(plan.run_dir),
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "default_root_dir": str(plan.run_dir),
        "num_sanity_val_steps": 0,
        "plugins": [AtomicCheckpointIO()],
    }


def _device_count(devices: str, accelerator: str) -> int:
    """How many devices Lightning will use for `devices` (\"auto\", a count, or a list like 0,1)."""
    text = str(devices).strip()
    if text == "auto":
        if accelerator != "gpu":
            return 1
        import torch

        return max(1, torch.cuda.device_count())
    if "," in text or text.startswith("["):
        return len([d for d in text.strip("[]").split(",") if d.strip()])
    return int(text) if text.lstrip("-").isdigit() and int(text) > 0 else 1


def _best_checkpoint(trainer: Any) -> str | None:
    checkpoint = trainer.checkpoint_callback
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
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
