"""The `reprozoo` command: flags → RunConfig → one call per verb.

Imports stay light at module level (no torch): `reprozoo models` and `--help` answer at once.
Errors the user can fix print one line and exit 2; a traceback means a bug in reprozoo.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from reprozoo.config import ConfigError, RunConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reproducible SST-5 fine-tuning of a zoo of BERT-like models.")
data_app = typer.Typer(no_args_is_help=True, help="SST-5 data: statistics.")
app.add_typer(data_app, name="data")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from reprozoo.data.sst5 import DataSourceError
    from reprozoo.data.trees import MissingSplitError, TreeFormatError
    from reprozoo.resume import CheckpointWriteError, ResumeError
    from reprozoo.zoo import UnknownModelError, WeightsUnavailableError

    return (ConfigError, DataSourceError, TreeFormatError, MissingSplitError, UnknownModelError, WeightsUnavailableError,
            CheckpointWriteError, ResumeError)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except _user_errors() as err:
        _fail(str(err).strip("'\""))


@app.command()
def train(
    model: Annotated[str | None, typer.Option("--model", "-m", help="zoo name, hub id (org/name) or local directory")] = None,
    config: Annotated[Path | None, typer.Option(help="start from this config.yaml (e.g. a run's)")] = None,
    data_dir: Annotated[str | None, typer.Option(help="folder with train.txt, dev.txt, test.txt (default: $REPROZOO_DATA_DIR)")] = None,
    granularity: Annotated[str | None, typer.Option(help="sentences | phrases")] = None,
    imbalance: Annotated[str | None, typer.Option(help="none | weighted-loss | balanced-sampler")] = None,
    max_epochs: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (default: the zoo's)")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    max_length: Annotated[int | None, typer.Option()] = None,
    limit_train_samples: Annotated[int | None, typer.Option(help="train on the first K examples only")] = None,
    limit_eval_samples: Annotated[int | None, typer.Option(help="score the first K dev/test sentences only")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    precision: Annotated[str | None, typer.Option(help="auto | 32-true | bf16-mixed | 16-mixed")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto | cpu | gpu")] = None,
    devices: Annotated[str | None, typer.Option(help="auto, a count, or a list like 0,1 (several GPUs: DDP)")] = None,
    gpus: Annotated[bool, typer.Option("--gpus", help="ask for the GPU; falls back to CPU with a warning")] = False,
    require_gpu: Annotated[bool, typer.Option(help="fail instead of falling back to CPU")] = False,
    fast_dev_run: Annotated[bool, typer.Option(help="one batch of train/dev/test, to check the wiring")] = False,
    profiler: Annotated[str | None, typer.Option(help="simple | advanced | pytorch")] = None,
    tracking: Annotated[str | None, typer.Option(help="auto | offline | server | off")] = None,
    out: Annotated[str | None, typer.Option(help="run directory (default: runs/<model>-<time>)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
    resume: Annotated[Path | None, typer.Option(help="continue an interrupted run from its run directory")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="also checkpoint every N steps (survives kill -9)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any setting as section.key=value, e.g. optim.layer_lr_decay=0.9")] = None,
) -> None:
    """Fine-tune a model on SST-5 and write a run directory (and a ClearML task)."""

    def build() -> RunConfig:
        if resume is not None:
            if not (resume / "config.yaml").is_file():
                raise ConfigError(f"--resume {resume}: not a run directory (no config.yaml); pass the --out of the interrupted run")
            cfg = RunConfig.load(resume / "config.yaml")
            cfg.out_dir = str(resume)
            return cfg.validate()  # the same run: its recorded settings, unchanged
        cfg = RunConfig.load(config) if config else RunConfig()
        flags = {
            "model.name": model, "data.data_dir": data_dir, "data.granularity": granularity,
            "data.imbalance": imbalance, "trainer.max_epochs": max_epochs, "optim.lr": lr,
            "data.batch_size": batch_size, "data.max_length": max_length,
            "data.limit_train_samples": limit_train_samples, "data.limit_eval_samples": limit_eval_samples,
            "seed": seed, "trainer.precision": precision, "trainer.accelerator": "gpu" if gpus else accelerator,
            "trainer.devices": devices, "trainer.require_gpu": require_gpu or None,
            "trainer.fast_dev_run": fast_dev_run or None, "trainer.profiler": profiler,
            "tracking.mode": tracking, "out_dir": out, "trainer.checkpoint_every": checkpoint_every,
        }
        data = cfg.to_dict()
        for key, value in flags.items():
            if value is not None:
                node = data
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node[part]
                node[leaf] = value
        return RunConfig.from_dict(data).override(set_ or []).validate()

    from reprozoo.resume import Preempted
    from reprozoo.train import train as run_training

    cfg = _run(build)
    try:
        result = _run(lambda: run_training(cfg, overwrite=overwrite, resume=resume is not None))
    except Preempted as stop:
        typer.echo(f"stopped by {stop}; checkpoint saved, resume with: reprozoo train --resume {cfg.out_dir}", err=True)
        raise typer.Exit(128 + stop.signum) from None
    m = result["metrics"]
    typer.echo(f"run directory: {result['run_dir']}")
    if result["task_id"]:
        typer.echo(f"clearml task: {result['task_id']}")
    typer.echo(f"dev  accuracy {m['dev']['accuracy']:.4f}  macro-F1 {m['dev']['macro_f1']:.4f}")
    typer.echo(f"test accuracy {m['test']['accuracy']:.4f}  macro-F1 {m['test']['macro_f1']:.4f}")


@app.command()
def predict(
    texts: Annotated[list[str], typer.Argument(help="sentences to classify")],
    run: Annotated[Path, typer.Option(help="a run directory (or its export/ folder)")],
) -> None:
    """Print the label and class probabilities for each text."""
    export = run / "export" if (run / "export").is_dir() else run
    if not (export / "config.json").is_file():
        _fail(f"{run} holds no exported model; pass a finished run directory (with export/)")
    import torch
    from transformers import AutoTokenizer

    from reprozoo.modeling_reprozoo import ReprozooForSequenceClassification, register_auto_classes

    register_auto_classes()  # the export's config names our classes; use ours, no remote-code prompt
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = ReprozooForSequenceClassification.from_pretrained(export).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    labels = model.config.id2label
    for text, row in zip(texts, probs.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        spread = "  ".join(f"{labels[i]}={p:.3f}" for i, p in enumerate(row))
        typer.echo(f"{labels[best]}\t{text}\n    {spread}")


@app.command()
def models(names: Annotated[bool, typer.Option("--names", help="one name per line")] = False) -> None:
    """List the model zoo."""
    from reprozoo import zoo

    if names:
        typer.echo("\n".join(zoo.names()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reprozoo model zoo ({len(zoo.names())} models)")
    for column in ("name", "hub id", "family", "params (M)", "lr", "batch", "max len", "pooling", "fp16"):
        table.add_column(column)
    for e in zoo.entries():
        table.add_row(e.name, e.hub_id, e.family, f"{e.params_m:g}", f"{e.lr:g}", str(e.batch_size), str(e.max_length),
                      e.pooling, "yes" if e.fp16 else "no")
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@data_app.command("stats")
def data_stats(
    data_dir: Annotated[str | None, typer.Option(help="folder with the PTB trees (default: $REPROZOO_DATA_DIR)")] = None,
    out: Annotated[Path, typer.Option(help="where to write the bar chart")] = Path("class_distribution.png"),
) -> None:
    """Class distribution per split and granularity, as a table and a bar chart PNG."""
    from reprozoo.data import stats

    table = _run(lambda: stats.class_distribution(data_dir))
    typer.echo(stats.format_table(table))
    stats.save_bar_chart(table, out)
    typer.echo(f"bar chart: {out}")
    typer.echo(json.dumps({k: v["counts"] for k, v in table.items()}))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
