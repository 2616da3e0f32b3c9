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

from reprozoo import session
from reprozoo.config import ConfigError, RunConfig
from reprozoo.log import setup as log_setup

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reproducible SST-5 fine-tuning of a zoo of BERT-like models.")
data_app = typer.Typer(no_args_is_help=True, help="SST-5 data: statistics, versions.")
app.add_typer(data_app, name="data")
tasks_app = typer.Typer(no_args_is_help=True, help="Run records (ClearML tasks): offline sessions and the server.")
app.add_typer(tasks_app, name="tasks")
image_app = typer.Typer(no_args_is_help=True, help="Docker images: build, push, run (Docker SDK).")
app.add_typer(image_app, name="image")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    import zipfile

    from reprozoo.containers import ContainerError
    from reprozoo.data.sst5 import DataSourceError
    from reprozoo.data.trees import MissingSplitError, TreeFormatError
    from reprozoo.errors import UserError
    from reprozoo.resume import CheckpointWriteError, ResumeError
    from reprozoo.zoo import UnknownModelError, WeightsUnavailableError

    # ConfigError covers records.RecordNotFound.
    return (UserError, ConfigError, ContainerError, DataSourceError, TreeFormatError, MissingSplitError, UnknownModelError,
            WeightsUnavailableError, CheckpointWriteError, ResumeError, zipfile.BadZipFile)


def _say(message: str) -> None:
    # After a ClearML task closes, sys.stdout is still ClearML's PrintPatchLogger and click.echo's
    # own text wrapper around it loses what it writes (verified with clearml 2.1.12); print does not.
    print(message, flush=True)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except _user_errors() as err:
        _fail(str(err).strip("'\""))


def _resume_dir(ref: str) -> Path:
    """--resume RUN_DIR | TASK_ID → the run directory holding the checkpoints."""
    path = Path(ref)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume {ref}: not a run directory (no config.yaml); pass the --out of the interrupted run")
        return path
    from reprozoo.records import load_record

    record = load_record(ref)
    run_dir = Path(record.provenance.get("run_dir") or "")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {ref}: its run directory {run_dir} (with the checkpoints) is not on this machine;"
                          " resume where it ran, or copy that folder here and pass it")
    return run_dir


@app.command()
def train(
    model: Annotated[str | None, typer.Option("--model", "-m", help="zoo name, hub id (org/name) or local directory")] = None,
    config: Annotated[Path | None, typer.Option(help="start from this config.yaml (e.g. a run's)")] = None,
    data_dir: Annotated[str | None, typer.Option(help="folder with train.txt, dev.txt, test.txt (default: $REPROZOO_DATA_DIR)")] = None,
    dataset_id: Annotated[str | None, typer.Option(help="train on exactly this ClearML dataset version (`reprozoo data version`)")] = None,
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
    resume: Annotated[str | None, typer.Option(help="continue an interrupted run: its run directory or task id")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="also checkpoint every N steps (survives kill -9)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any setting as section.key=value, e.g. optim.layer_lr_decay=0.9")] = None,
) -> None:
    """Fine-tune a model on SST-5 and write a run directory (and a ClearML task)."""

    def build() -> RunConfig:
        if resume is not None:
            run_dir = _resume_dir(resume)
            cfg = RunConfig.load(run_dir / "config.yaml")
            cfg.out_dir = str(run_dir)
            return cfg.validate()  # the same run: its recorded settings, unchanged
        cfg = RunConfig.load(config) if config else RunConfig()
        flags = {
            "model.name": model, "data.data_dir": data_dir, "data.dataset_id": dataset_id, "data.granularity": granularity,
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
        print(f"stopped by {stop}; checkpoint saved, resume with: reprozoo train --resume {cfg.out_dir}", file=sys.stderr,
              flush=True)
        raise typer.Exit(128 + stop.signum) from None
    if result.get("ddp_worker"):
        return  # rank 0 reports
    m = result["metrics"]
    _say(f"run directory: {result['run_dir']}")
    if result["task_id"]:
        _say(f"clearml task: {result['task_id']}")
    if result.get("dataset_id"):
        _say(f"dataset version: {result['dataset_id']}")
    _say(f"dev  accuracy {m['dev']['accuracy']:.4f}  macro-F1 {m['dev']['macro_f1']:.4f}")
    _say(f"test accuracy {m['test']['accuracy']:.4f}  macro-F1 {m['test']['macro_f1']:.4f}")


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


@data_app.command("version")
def data_version(
    data_dir: Annotated[str | None, typer.Option(help="folder with the PTB trees (default: $REPROZOO_DATA_DIR)")] = None,
    tracking: Annotated[str, typer.Option(help="auto | offline | server")] = "auto",
) -> None:
    """Register the trees as a ClearML Dataset version (reprozoo/datasets, sst5), keyed by content."""
    from reprozoo.data import versions
    from reprozoo.data.sst5 import resolve_data_dir
    from reprozoo.session import configure_clearml, resolve_mode

    if tracking not in ("auto", "offline", "server"):
        _fail(f"--tracking {tracking!r}: a data version is recorded offline or on a server; use auto, offline or server")
    path = _run(lambda: resolve_data_dir(data_dir))
    mode = resolve_mode(tracking)
    configure_clearml()
    version = _run(lambda: versions.register(path, mode))
    _say(f"dataset id: {version.dataset_id}")
    _say(f"{'new version' if version.created else 'same content as the existing version'} ({version.mode});"
               f" content sha256 {version.content_hash}; parent {version.parent or 'none'}")
    for split, digest in version.sha256.items():
        _say(f"  {split}.txt sha256 {digest}")


def _load(ref: str) -> Any:
    from reprozoo import records

    return _run(lambda: records.load_record(ref))


def _short(value: str | None, n: int = 12) -> str:
    if not value or value == "none":
        return "none"
    head, sep, tail = value.partition(":")
    return f"{head}:{tail[:n]}" if sep and head == "sha256" else value[:n]


def _metric(record: Any, split: str, key: str) -> str:
    return f"{record.metrics[split][key]:.4f}" if record.metrics else "—"


@tasks_app.command("list")
def tasks_list(
    server: Annotated[bool, typer.Option("--server", help="list the server's tasks instead of the offline sessions")] = False,
    project: Annotated[str | None, typer.Option(help="server: only this project")] = None,
) -> None:
    """Recorded runs, newest first: id, model, status, test accuracy / macro-F1, image digest, commit, dataset."""
    from reprozoo import records
    from reprozoo.session import server_configured

    if server and not server_configured():
        _fail("no ClearML server is configured; set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY (or run clearml-init)")
    found = _run(lambda: records.list_server(project) if server else records.list_offline())
    if not found:
        typer.echo(f"no records{' on the server' if server else f' under {session.offline_root()}'}")
        return
    typer.echo(f"{'task id':<42} {'model':<20} {'status':<10} {'test acc':>8} {'test F1':>8}  {'image digest':<19} {'commit':<14} dataset")
    for r in found:
        commit = (r.commit[:8] or "none") + ("+dirty" if r.dirty else "")
        typer.echo(f"{r.task_id:<42} {r.config.model.name[:20]:<20} {r.status[:10]:<10} "
                   f"{_metric(r, 'test', 'accuracy'):>8} {_metric(r, 'test', 'macro_f1'):>8}  {_short(r.image_digest):<19} "
                   f"{commit:<14} {r.dataset_id or 'none'}")


@tasks_app.command("show")
def tasks_show(
    ref: Annotated[str, typer.Argument(help="task id, run directory or offline session zip")],
    as_config: Annotated[bool, typer.Option("--as-config", help="print the RunConfig that replays it (YAML for --config)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the whole record as JSON")] = False,
) -> None:
    """One record: model, status, metrics, image digest, lock, commit (dirty or not), data version."""
    record = _load(ref)
    if as_config:
        typer.echo(f"# replays {record.task_id or ref}: reprozoo train --config THIS_FILE")
        typer.echo(record.replay_config().to_yaml().rstrip())
        return
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
        return
    r, env = record, record.environment
    rows = [
        ("task", f"{r.task_id}  ({r.status})"),
        ("name", f"{r.name}  [project {r.project}]" if r.name else "—"),
        ("model", f"{r.config.model.name}  revision {r.model_revision or '—'}"),
        ("metrics", f"dev acc {_metric(r, 'dev', 'accuracy')} F1 {_metric(r, 'dev', 'macro_f1')} | "
                    f"test acc {_metric(r, 'test', 'accuracy')} F1 {_metric(r, 'test', 'macro_f1')}"),
        ("image", f"{r.image}  digest {r.image_digest}"),
        ("lock", f"{r.lock_file}  sha256 {r.lock_sha256}"),
        ("code", f"{r.repository} {r.branch or '(detached)'} @ {r.commit or 'unknown'}"),
        ("dirty", (f"yes ({len(r.diff.splitlines())}-line uncommitted diff recorded)" if r.dirty else "no")
                  + (f"; {len(r.untracked)} untracked file(s) not recorded" if r.untracked else "")),
        ("data", f"dataset {r.dataset_id or 'none'}  " + " ".join(f"{k}={v[:12]}" for k, v in r.data_sha256.items())),
        ("env", f"python {env.get('python', '?')}  torch {env.get('torch', '?')}  cuda {env.get('cuda', '?')}  "
                f"transformers {env.get('transformers', '?')}  lightning {env.get('lightning', '?')}"),
        ("hardware", f"{env.get('gpu_count', 0)} x {env.get('gpu_model', 'none')} GPU; CPU {env.get('cpu_model', '?')}"),
        ("seed", f"{r.config.seed}  deterministic algorithms {env.get('determinism', {}).get('torch_deterministic_algorithms', '?')}"),
        ("record", r.source + (f"  (zip {r.offline_zip})" if r.offline_zip and r.offline_zip != r.source else "")),
    ]
    for key, value in rows:
        typer.echo(f"{key:<9} {value}")


@tasks_app.command("diff")
def tasks_diff(
    a: Annotated[str, typer.Argument(help="task id, run directory or session zip")],
    b: Annotated[str, typer.Argument(help="task id, run directory or session zip")],
) -> None:
    """Why did two results differ? Only what differs: config, code, image, lock, data, model, environment, metrics."""
    from reprozoo import records

    left, right = _load(a), _load(b)
    rows = records.diff_records(left, right)
    if not rows:
        typer.echo("identical: config, code, image, lock, data, model revision, environment and metrics all match")
        return
    width = max(len(f"{g}.{k}") for g, k, _, _ in rows)
    typer.echo(f"{'':<{width}}  A = {left.task_id}\n{'':<{width}}  B = {right.task_id}")
    for group, key, va, vb in rows:
        typer.echo(f"{group + '.' + key:<{width}}  A: {va}\n{'':<{width}}  B: {vb}")
    if left.diff != right.diff:
        typer.echo("uncommitted diffs differ:")
        typer.echo("\n".join(records.code_diff_delta(left, right)))


@tasks_app.command("import")
def tasks_import(zip_path: Annotated[Path, typer.Argument(help="an offline session zip (see `reprozoo tasks show ID`)")]) -> None:
    """Upload an offline session to the configured ClearML server (Task.import_offline_session)."""
    from reprozoo.session import api_server, configure_clearml, server_configured, server_reachable

    if not zip_path.is_file():
        _fail(f"{zip_path} does not exist; `reprozoo tasks show ID` prints a session's zip")
    if not server_configured():
        _fail("importing needs a ClearML server: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY (or run clearml-init)")
    if not server_reachable(api_server()):
        _fail(f"the ClearML server {api_server()} is unreachable; the session stays in {zip_path}, retry when it is up")
    configure_clearml()
    from clearml import Task

    from reprozoo import records

    # A run resumed while its server task was out of reach continues that task once uploaded.
    try:
        previous = records.load_record(zip_path).provenance.get("resumes")
    except (ConfigError, KeyError, ValueError):
        previous = None  # a session reprozoo did not write (a dataset, another script): imported as it is
    Task.set_offline(False)
    task_id = Task.import_offline_session(str(zip_path), previous_task_id=previous)
    typer.echo(f"imported into task {task_id} (the run it resumes)" if previous else f"imported as task {task_id}")
@app.command()
def repro(
    task: Annotated[str, typer.Argument(help="task id, run directory or offline session zip")],
    verify: Annotated[bool, typer.Option(help="compare the new metrics with the recorded ones and print a verdict")] = False,
    tolerance: Annotated[float, typer.Option(help="--verify: largest absolute difference still 'within tolerance'")] = 1e-6,
    enqueue: Annotated[str | None, typer.Option(help="clone the task for a ClearML agent on this queue instead of running here")] = None,
    image: Annotated[bool | None, typer.Option("--image/--no-image", help="run in the recorded image (default when the"
                                               " record names one) or from the recorded commit + diff here")] = None,
    data_dir: Annotated[str | None, typer.Option(help="trees to replay on (default: the recorded dataset version, then"
                                                 " $REPROZOO_DATA_DIR); their sha256 must match the record")] = None,
    out: Annotated[str | None, typer.Option(help="run directory name for the replay (default: runs/repro-<id>-<time>)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where the replay's run directory goes")] = Path("runs"),
    gpus: Annotated[str, typer.Option("--gpus", help="in the image: auto | all | none")] = "auto",
    network: Annotated[str, typer.Option(help="in the image: bridge | host | none")] = "bridge",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, run nothing")] = False,
) -> None:
    """Re-run a recorded task exactly: its image (by digest) or commit + diff, its data version, its RunConfig."""
    from reprozoo import repro as replay

    record = _load(task)
    if enqueue:
        from reprozoo.agent import require_queue
        from reprozoo.session import configure_clearml, server_configured

        spec = _run(lambda: replay.enqueue_spec(record, enqueue))
        if not server_configured():
            _fail("--enqueue needs a ClearML server: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY")
        configure_clearml()
        _run(lambda: require_queue(enqueue))  # before the clone: an unknown queue leaves no draft behind
        _say(f"cloning {record.task_id} for queue {enqueue}" + (f" in {spec['docker_image']}" if spec["docker_image"] else ""))
        _say(f"enqueued task {replay.enqueue(spec)}")
        return
    plan = _run(lambda: replay.plan_repro(record, data_dir=data_dir, runs_dir=runs_dir, out=out, use_image=image))
    for line in plan.summary():
        _say(line)
    if dry_run:
        _say(plan.config.to_yaml().rstrip())
        return
    if plan.executor == "image":
        code = _run(lambda: replay.run_in_image(plan, gpus=gpus, network=network, log=lambda m: typer.echo(m, err=True)))
    else:
        code = _run(lambda: replay.run_from_code(plan))
    if code != 0:
        _fail(f"the replay exited with code {code}; its run directory is {plan.run_dir}")
    metrics = _run(lambda: replay.replayed_metrics(plan))
    _say(f"replay run directory: {plan.run_dir}")
    replay_task = replay.replayed_task(plan)
    if replay_task:
        _say(f"replay clearml task: {replay_task}")
    _say(f"test accuracy {metrics['test']['accuracy']:.4f} (recorded "
         f"{_metric(record, 'test', 'accuracy')})  macro-F1 {metrics['test']['macro_f1']:.4f}")
    if verify:
        verdict = replay.compare_metrics(record.metrics, metrics, tolerance)
        for line in verdict.lines():
            _say(line)
        if not verdict.ok:
            raise typer.Exit(1)


FlavourOpt = Annotated[str, typer.Option("--flavour", "-f", help="cpu | cuda")]
BaseOpt = Annotated[str | None, typer.Option("--base", help="base image (default: the flavour's pinned one)")]
ImageOpt = Annotated[str | None, typer.Option("--image", help="image reference (default: this checkout's reprozoo:<flavour>-<hash12>)")]


@image_app.command("tag")
def image_tag(flavour: FlavourOpt = "cpu", base: BaseOpt = None) -> None:
    """Print the content-addressed tag this checkout builds (no engine needed)."""
    from reprozoo import containers

    spec = _run(lambda: containers.image_spec(containers.project_root(), flavour, base))
    typer.echo(spec.ref)


@image_app.command("wheelhouse")
def image_wheelhouse(flavour: FlavourOpt = "cpu") -> None:
    """Download the lock's wheels (hash-checked) into docker/wheelhouse/<flavour> for an offline build."""
    from reprozoo import containers

    root = _run(containers.project_root)
    dest = _run(lambda: containers.download_wheelhouse(root, flavour))
    wheels = list(dest.glob("*.whl"))
    typer.echo(f"{dest}: {len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**20:.0f} MiB")


@image_app.command("build")
def image_build(
    flavour: FlavourOpt = "cpu",
    base: BaseOpt = None,
    wheelhouse: Annotated[bool | None, typer.Option("--wheelhouse/--no-wheelhouse",
                                                   help="install from docker/wheelhouse/<flavour> offline (default: when it holds wheels)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="ignore the engine's layer cache")] = False,
    source: Annotated[str | None, typer.Option(help="org.opencontainers.image.source label")] = None,
) -> None:
    """Build docker/Dockerfile for a flavour; tag reprozoo:<flavour>-<hash12>."""
    from reprozoo import containers

    root = _run(containers.project_root)
    result = _run(lambda: containers.build_image(root, flavour, base, use_wheelhouse=wheelhouse, no_cache=no_cache,
                                                 source=source, log=lambda line: typer.echo(line, err=True)))
    typer.echo(f"image {result.ref} id {result.image_id} ({result.seconds:.0f} s{', all steps cached' if result.cached else ''})")


@image_app.command("push")
def image_push(
    flavour: FlavourOpt = "cpu",
    base: BaseOpt = None,
    image: ImageOpt = None,
    registry: Annotated[str | None, typer.Option(help="e.g. ghcr.io/OWNER or 127.0.0.1:5000 (default: $REPROZOO_REGISTRY)")] = None,
) -> None:
    """Push the image and print its pinned reference, repo@sha256:…"""
    import os

    from reprozoo import containers

    registry = registry or os.environ.get("REPROZOO_REGISTRY")
    if not registry:
        _fail("no registry: pass --registry (e.g. ghcr.io/OWNER) or set REPROZOO_REGISTRY")
    engine = _run(containers.client)
    found = _run(lambda: containers.resolve_local_image(engine, containers.project_root(), flavour, base, image))
    pinned = _run(lambda: containers.push_image(engine, found, str(registry), log=lambda line: typer.echo(line, err=True)))
    typer.echo(pinned)


@image_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def image_run(
    args: Annotated[list[str] | None, typer.Argument(help="the reprozoo command to run inside, after --: train --model …")] = None,
    flavour: FlavourOpt = "cpu",
    base: BaseOpt = None,
    image: ImageOpt = None,
    gpus: Annotated[str, typer.Option("--gpus", help="auto (use GPUs when the host has them) | all | none")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="SST-5 trees to mount read-only (default: $REPROZOO_DATA_DIR)")] = None,
    hf_cache: Annotated[Path | None, typer.Option(help="Hugging Face cache to mount (default: $HF_HOME or ~/.cache/huggingface)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run directories land (mounted at /work/runs)")] = Path("runs"),
    clearml_dir: Annotated[Path | None, typer.Option(help="ClearML home (offline sessions) to mount (default: ~/.clearml)")] = None,
    network: Annotated[str, typer.Option(help="bridge | host | none (none: nothing leaves the container)")] = "bridge",
    shm_size: Annotated[str, typer.Option(help="shared memory for dataloader workers")] = "2g",
    ipc_host: Annotated[bool, typer.Option("--ipc-host", help="share the host's IPC namespace instead of --shm-size")] = False,
    user: Annotated[str | None, typer.Option(help="uid:gid inside (default: the image's non-root user)")] = None,
) -> None:
    """Run a reprozoo command inside the image, with data, HF cache and runs/ mounted."""
    import os

    from reprozoo import containers

    command = list(args or [])
    if not command:
        _fail("nothing to run: add the command after --, e.g. `reprozoo image run -- train --model all-minilm-l6-v2`")
    engine = _run(containers.client)
    ref = image or _run(lambda: containers.image_spec(containers.project_root(), flavour, base)).ref
    found = _run(lambda: containers.resolve_local_image(engine, containers.project_root(), flavour, base, ref))
    digest = image if image and "@sha256:" in image else containers.repo_digest(found)
    if digest:
        typer.echo(f"image {ref} = {digest}", err=True)
    else:
        typer.echo(f"image {ref} has no repo digest yet (not pushed); the run records its image id {found.id[:19]}", err=True)
    use_gpu, notes = _run(lambda: containers.decide_gpus(gpus, *containers.gpu_available(engine)))
    for note in notes:
        typer.echo(note, err=True)
    env_data = data_dir or (Path(os.environ["REPROZOO_DATA_DIR"]) if os.environ.get("REPROZOO_DATA_DIR") else None)
    if env_data is not None and not (env_data / "train.txt").is_file():
        _fail(f"--data-dir {env_data} holds no train.txt; pass the folder with the SST-5 trees")
    hf = hf_cache or containers.default_hf_cache()
    clearml = clearml_dir or Path.home() / ".clearml"
    plan = containers.plan_run(ref, found.id, digest, command, data_dir=env_data, hf_cache=hf, runs_dir=runs_dir,
                               clearml_dir=clearml, gpus=use_gpu, user=user, shm_size=shm_size, ipc_host=ipc_host,
                               network=network)
    code = _run(lambda: containers.run_container(engine, plan))
    raise typer.Exit(code)


@image_app.command("identity")
def image_identity() -> None:
    """Print which image (or lock) this process runs in, as the record sees it (JSON)."""
    from reprozoo import containers

    typer.echo(json.dumps(containers.runtime_identity(), indent=2))


# --- sweep / leaderboard ---------------------------------------------------------------------------
@app.command()
def sweep(
    models: Annotated[str, typer.Option("--models", help="all | family:<f> | name,name,… (zoo names, hub ids, local directories)")],
    queue: Annotated[str | None, typer.Option(help="enqueue one ClearML pipeline step per model on this queue")] = None,
    local: Annotated[bool, typer.Option("--local", help="train here, one model after another (the default)")] = False,
    image: Annotated[str | None, typer.Option(help="REF@sha256:…: every model runs in this image (here or on the agents)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="section.key=value for every model, after the zoo's defaults")] = None,
    config: Annotated[Path | None, typer.Option(help="base config.yaml for every model")] = None,
    out: Annotated[Path | None, typer.Option(help="local: run directories go to DIR/<model> (default: runs/<model>-<time>)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan and the estimated GPU-hours; run nothing")] = False,
    controller_queue: Annotated[str, typer.Option(help="--queue: where the pipeline controller runs; `local` = this process, waiting")] = "services",
    gpus: Annotated[str, typer.Option(help="--image --local: auto | all | none")] = "auto",
) -> None:
    """Fine-tune several zoo models with one plan: here (--local) or on ClearML agents (--queue)."""
    from reprozoo import sweep as sweeps

    if queue and local:
        _fail("--queue and --local exclude each other: enqueue for agents, or train here")
    base = _run(lambda: RunConfig.load(config)) if config else None
    plan = _run(lambda: sweeps.build_plan(models, set_ or [], base=base, queue=queue, image=image,
                                          out_root=None if queue else out))
    if dry_run:
        status = None if queue else _run(lambda: _sweep_status(plan))
        _say(sweeps.format_rows(sweeps.plan_table(plan, status)))
        _say(f"estimated GPU-hours: {plan.gpu_hours:.3f} (6·params·tokens FLOPs at {sweeps.EFFECTIVE_FLOPS:.0e} FLOP/s"
             f" + {sweeps.OVERHEAD_HOURS * 60:.0f} min per run; an upper bound: early stopping ends runs sooner)")
        return
    if queue:
        _sweep_queue(plan, controller_queue)
        return
    import os

    data_dir = plan.steps[0].config.data.data_dir or os.environ.get("REPROZOO_DATA_DIR")
    from reprozoo.resume import Preempted

    try:
        report = sweeps.run_local(plan, runs_dir=out or Path("runs"), data_dir=Path(data_dir) if data_dir else None,
                                  gpus=gpus, log=_say)
    except Preempted as stop:
        print(f"sweep stopped by {stop}; the current model saved a checkpoint (`reprozoo train --resume RUN_DIR` finishes"
              " it); re-running the sweep skips the models already completed", file=sys.stderr, flush=True)
        raise typer.Exit(128 + stop.signum) from None
    _say(f"sweep: {len(report.results)} model(s): "
         + ", ".join(f"{n} {s}" for s in ("done", "skipped", "failed")
                     if (n := sum(r.status == s for r in report.results))))
    for r in report.results:
        accuracy = "—" if r.test_accuracy is None else f"{r.test_accuracy:.4f}"
        _say(f"  {r.name:<28} {r.status:<8} test acc {accuracy:<7} {r.task_id or ''} {r.run_dir or r.error}")
    if report.failed:
        raise typer.Exit(1)


def _sweep_status(plan: Any) -> dict[str, str]:
    """For --dry-run: which steps a local sweep would skip (a completed record with the same identity)."""
    from reprozoo import sweep as sweeps
    from reprozoo.session import resolve_mode

    first = plan.steps[0].config
    done = sweeps.done_index(sweeps.existing_records(resolve_mode(first.tracking.mode), first.tracking.project))
    status = {}
    for step in plan.steps:
        found = done.get(sweeps.step_identity(step))
        status[step.name] = f"skip (done: {found.task_id})" if found else "run"
    return status


def _sweep_queue(plan: Any, controller_queue: str) -> None:
    from reprozoo import sweep as sweeps
    from reprozoo.agent import require_queue
    from reprozoo.data import versions
    from reprozoo.data.sst5 import resolve_data_dir
    from reprozoo.session import api_server, configure_clearml, server_configured, server_reachable

    if not server_configured():
        _fail("--queue needs a ClearML server: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY"
              " (or run clearml-init); --local trains here")
    if not server_reachable(api_server()):
        _fail(f"the ClearML server {api_server()} is unreachable; nothing was enqueued")
    configure_clearml()
    for name in {plan.queue} | ({controller_queue} - {"local"}):
        _run(lambda name=name: require_queue(name))
    first = plan.steps[0].config
    if first.data.dataset_id:  # --set data.dataset_id=…: exactly that version
        version = _run(lambda: versions.resolve(str(first.data.dataset_id)))
    else:  # agents have no local trees: register (or find) this data version on the server
        version = _run(lambda: versions.register(resolve_data_dir(first.data.data_dir), "server"))
    _say(f"data version: {version.dataset_id} (content sha256 {version.content_hash[:12]})")
    sweeps.pin_data_version(plan, version.dataset_id)
    sha = version.sha256
    done = sweeps.done_index(sweeps.existing_records("server", first.tracking.project))
    remaining = []
    for step in plan.steps:
        found = done.get(sweeps.run_identity(step.config, sha, step.image))
        if found:
            _say(f"{step.name}: skipped, already completed as {found.task_id}")
        else:
            remaining.append(step)
    if not remaining:
        _say("sweep: every model already has a completed task for this config, data version and image")
        return
    plan.steps = remaining
    sweeps.launch_pipeline(plan, project=first.tracking.project, controller_queue=controller_queue, log=_say)


@app.command()
def leaderboard(
    project: Annotated[str | None, typer.Option(help="only this ClearML project (default: every project)")] = None,
    server: Annotated[bool, typer.Option("--server", help="the server's tasks (and a summary task there), not the offline records")] = False,
    format_: Annotated[str, typer.Option("--format", help="what to print: table | markdown | csv | html (all four are written)")] = "table",
    out: Annotated[Path, typer.Option(help="where leaderboard.{md,csv,html,png} go")] = Path("leaderboard"),
    references: Annotated[Path | None, typer.Option(help="published results (default: $REPROZOO_DATA_DIR/../PUBLISHED_RESULTS.md)")] = None,
) -> None:
    """Every finished run, best test accuracy first: table, Markdown, CSV, HTML and a bar chart PNG."""
    from reprozoo import leaderboard as board
    from reprozoo.session import server_configured

    formats = {"table": board.to_text, "markdown": board.to_markdown, "csv": board.to_csv, "html": board.to_html}
    if format_ not in formats:
        _fail(f"--format {format_!r}: use one of {', '.join(formats)}")
    if server and not server_configured():
        _fail("no ClearML server is configured; set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY (or run clearml-init)")
    if references is not None and not references.is_file():
        _fail(f"--references {references}: no such file")
    rows = _run(lambda: board.gather(server, project))
    if not rows:
        _say("no finished runs" + (f" in project {project}" if project else "") + (" on the server" if server else " offline"))
        return
    paths, note = board.write_all(rows, out, references or board.default_references_path())
    _say(formats[format_](rows).rstrip())
    _say(f"{len(rows)} run(s); wrote {', '.join(str(p) for p in paths.values())}; {note}")
    if server:
        task_id = board.report_to_clearml(rows, paths, project or "reprozoo")
        _say(f"reported to ClearML task {task_id}")


# --- hpo: hyperparameter search (reprozoo.hpo) ----------------------------------------------------
@app.command()
def hpo(
    space: Annotated[list[str], typer.Option("--space", help="lr=1e-5:1e-4:log,batch_size=16|32,warmup=0:0.2,dropout=0:0.3"
                                                            " (lo:hi[:log] ranges, a|b|c choices; any section.key)")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="zoo name, hub id or local directory")] = None,
    trials: Annotated[int, typer.Option(help="number of trials")] = 10,
    local: Annotated[bool, typer.Option("--local", help="Optuna in this process (the default without --queue)")] = False,
    queue: Annotated[str | None, typer.Option(help="ClearML queue: trials run as cloned tasks on its agents")] = None,
    base_task: Annotated[str | None, typer.Option(help="--queue: template task id (default: one created from the RunConfig)")] = None,
    concurrency: Annotated[int, typer.Option(help="--queue: trials running at once")] = 1,
    time_limit_per_trial: Annotated[float | None, typer.Option(help="--queue: abort a trial after this many minutes")] = None,
    image: Annotated[str | None, typer.Option(help="--queue: docker image for the template, repo@sha256:… (default: this one's)")] = None,
    config: Annotated[Path | None, typer.Option(help="base RunConfig (e.g. a run's config.yaml)")] = None,
    data_dir: Annotated[str | None, typer.Option(help="folder with the SST-5 trees (default: $REPROZOO_DATA_DIR)")] = None,
    max_epochs: Annotated[int | None, typer.Option()] = None,
    limit_train_samples: Annotated[int | None, typer.Option()] = None,
    limit_eval_samples: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option(help="every trial's seed, and the sampler's")] = None,
    tracking: Annotated[str | None, typer.Option(help="trials' tracking: auto | offline | server | off")] = None,
    out: Annotated[Path | None, typer.Option(help="where best.yaml and trials.{json,csv} go (default: hpo/<model>-<time>)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the parsed space (and the server plan) and stop")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="base setting as section.key=value")] = None,
) -> None:
    """Search hyperparameters by dev macro-F1 (test is never used); write best.yaml for `train --config`."""
    from reprozoo import hpo as search

    def build() -> tuple[RunConfig, list[Any]]:
        if local and queue:
            raise ConfigError("--local and --queue exclude each other: search here, or on a ClearML queue")
        cfg = RunConfig.load(config) if config else RunConfig()
        flags = {"model.name": model, "data.data_dir": data_dir, "trainer.max_epochs": max_epochs,
                 "data.limit_train_samples": limit_train_samples, "data.limit_eval_samples": limit_eval_samples,
                 "seed": seed, "tracking.mode": tracking}
        cfg = search.apply(cfg, {k: v for k, v in flags.items() if v is not None}, validate=False).override(set_ or []).validate()
        cfg.out_dir = None
        if trials < 1:
            raise ConfigError(f"--trials {trials}: run at least one trial")
        zoo.get(cfg.model.name)  # a misspelt model fails here, not in every trial
        return cfg, search.parse_space(space, cfg)

    from reprozoo import zoo

    try:  # pure Python: a bad space or setting fails before torch, Lightning or ClearML is imported
        base, dims = build()
    except (ConfigError, zoo.UnknownModelError) as err:
        _fail(str(err).strip("'\""))
    target = out or search.default_out(base)
    _say(f"search space ({'queue ' + queue if queue else 'local'}, {trials} trials, objective dev macro-F1):")
    for dim in dims:
        _say(f"  {dim.describe()}")
    if dry_run:
        if queue:
            plan = _run(lambda: search.server_plan(dims, base, queue, trials, base_task or "<template from the RunConfig>",
                                                   concurrency, time_limit_per_trial))
            _say(json.dumps(search.describe_plan(plan, base.seed), indent=2))
        return
    if queue:
        from reprozoo.session import api_server, server_configured, server_reachable

        if not server_configured():
            _fail("--queue needs a ClearML server: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY"
                  " (or run clearml-init); or search here with --local")
        if not server_reachable(api_server()):
            _fail(f"the ClearML server {api_server()} is unreachable; retry when it is up, or search here with --local")
        from reprozoo.agent import require_queue
        from reprozoo.session import configure_clearml

        configure_clearml()
        _run(lambda: require_queue(queue))
        if not base.data.dataset_id:  # agents have no local trees: every trial trains on this version, on the server
            from reprozoo.data import versions
            from reprozoo.data.sst5 import resolve_data_dir

            version = _run(lambda: versions.register(resolve_data_dir(base.data.data_dir), "server"))
            base.data.dataset_id, base.data.data_dir = version.dataset_id, None
            _say(f"data version: {version.dataset_id} (content sha256 {version.content_hash[:12]})")
        run = lambda: search.search_server(base, dims, trials, queue, target, base_task, concurrency,  # noqa: E731
                                           time_limit_per_trial, image)
    else:
        from reprozoo.train import plan_run

        _run(lambda: plan_run(base))  # data, weights' limits, precision: checked once, before the first trial
        run = lambda: search.search_local(base, dims, trials, target)  # noqa: E731
    from reprozoo.resume import Preempted

    try:
        result = _run(run)
    except search.SearchFailed as err:
        _fail(str(err))
    except Preempted as stop:
        print(f"search stopped by {stop}; finished trials are in {target}/trials.json", file=sys.stderr, flush=True)
        raise typer.Exit(128 + stop.signum) from None
    best = result["best"]
    done = sum(t.state == "complete" for t in result["trials"])
    _say(f"{done}/{len(result['trials'])} trials finished; best: trial {best.number}, dev macro-F1 {best.dev_macro_f1:.4f}"
         f" accuracy {best.dev_accuracy:.4f}")
    _say(f"best config: {result['best_yaml']}  (reprozoo train --config {result['best_yaml']})")
    _say(f"all trials: {Path(result['out']) / 'trials.csv'}")


def main() -> None:
    log_setup()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
