"""What the command modules share: one-line errors, printing past ClearML's patched streams,
the options several commands take, and `train`'s flags as RunConfig settings."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from reprozoo import session, zoo
from reprozoo.config import RunConfig, apply
from reprozoo.errors import Preempted, UserError
from reprozoo.log import log

# Options several commands share.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="zoo name, hub id (org/name) or local directory")]
ConfigOpt = Annotated[Path | None, typer.Option(help="start from this config.yaml (e.g. a run's, or hpo's best.yaml)")]
DataDirOpt = Annotated[str | None, typer.Option(help="folder with train.txt, dev.txt, test.txt (default: $REPROZOO_DATA_DIR)")]
TrackingOpt = Annotated[str | None, typer.Option(help="auto | offline | server | off")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="any setting as section.key=value, e.g. optim.layer_lr_decay=0.9")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the plan (and what it would cost), run nothing")]
EpochsOpt = Annotated[int | None, typer.Option()]
LimitTrainOpt = Annotated[int | None, typer.Option(help="train on the first K examples only")]
LimitEvalOpt = Annotated[int | None, typer.Option(help="score the first K dev/test sentences only")]
SeedOpt = Annotated[int | None, typer.Option()]

# `train`'s flags (and hpo's copies of them) → the RunConfig settings they set.
TRAIN_FLAGS = {
    "model": "model.name", "data_dir": "data.data_dir", "dataset_id": "data.dataset_id", "granularity": "data.granularity",
    "imbalance": "data.imbalance", "max_epochs": "trainer.max_epochs", "lr": "optim.lr", "batch_size": "data.batch_size",
    "max_length": "data.max_length", "limit_train_samples": "data.limit_train_samples",
    "limit_eval_samples": "data.limit_eval_samples", "seed": "seed", "precision": "trainer.precision",
    "accelerator": "trainer.accelerator", "devices": "trainer.devices", "require_gpu": "trainer.require_gpu",
    "fast_dev_run": "trainer.fast_dev_run", "profiler": "trainer.profiler", "tracking": "tracking.mode", "out": "out_dir",
    "checkpoint_every": "trainer.checkpoint_every",
}


def fail(message: str) -> None:
    # print, not typer.echo: after a ClearML task closed, click's wrapper around the patched stderr loses text.
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(2)


def say(message: str) -> None:
    # After a ClearML task closes, sys.stdout is still ClearML's PrintPatchLogger and click.echo's
    # own text wrapper around it loses what it writes (clearml 2.1.12); print does not.
    print(message, flush=True)


def call(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except (UserError, zipfile.BadZipFile) as err:  # a corrupt zip is the user's input, not our bug
        fail(str(err).strip("'\""))


def need_server(purpose: str, fallback: str = "") -> None:
    """session.require_server, its refusal as the one-line error."""
    call(lambda: session.require_server(purpose, fallback))


def until_preempted(action: Callable[[], Any], stopped: str, then: str) -> Any:
    """`call(action)`; stopped by SIGTERM/SIGINT (resume.Preempted, after a checkpoint): a note, exit 128+signal."""
    try:
        return call(action)
    except Preempted as stop:
        log.warning(f"{stopped} by {stop}; {then}")
        raise typer.Exit(128 + stop.signum) from None


def configure(config: Path | None, set_: list[str] | None, **flags: Any) -> RunConfig:
    """--config (a concrete config, e.g. a run's), else the defaults with the model's zoo recipe; then the
    TRAIN_FLAGS given (not None, switches on), then --set (which always win); validated."""
    if config:
        cfg = RunConfig.load(config)
    else:
        cfg = RunConfig()
        cfg = apply(cfg, zoo.recipe(flags.get("model") or cfg.model.name))
    given = {TRAIN_FLAGS[name]: value for name, value in flags.items() if value is not None and value is not False}
    return apply(cfg, given).override(set_ or []).validate()



def load_record(ref: str) -> Any:
    from reprozoo import records

    return call(lambda: records.load_record(ref))


RecordRef = Annotated[str, typer.Argument(help="task id, run directory or offline session zip")]


