"""The `reprozoo` command: a table of library calls. Each command parses its flags, builds a
RunConfig (or a reference), calls one library function and prints what it returns.

Imports stay light at module level (no torch): `reprozoo models` and `--help` answer at once.
Errors the user can fix print one line and exit 2; a traceback means a bug in reprozoo.
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from reprozoo import session, zoo
from reprozoo.agent import require_queue
from reprozoo.config import ConfigError, RunConfig, apply
from reprozoo.data.versions import register_trees
from reprozoo.errors import UserError
from reprozoo.log import log
from reprozoo.log import setup as log_setup

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reproducible SST-5 fine-tuning of a zoo of BERT-like models.")
data_app = typer.Typer(no_args_is_help=True, help="SST-5 data: statistics, versions.")
app.add_typer(data_app, name="data")
tasks_app = typer.Typer(no_args_is_help=True, help="Run records (ClearML tasks): offline sessions and the server.")
app.add_typer(tasks_app, name="tasks")
image_app = typer.Typer(no_args_is_help=True, help="Docker images: build, push, run (Docker SDK).")
app.add_typer(image_app, name="image")

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


def _fail(message: str) -> None:
    # print, not typer.echo: after a ClearML task closed, click's wrapper around the patched stderr loses text.
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(2)


def _say(message: str) -> None:
    # After a ClearML task closes, sys.stdout is still ClearML's PrintPatchLogger and click.echo's
    # own text wrapper around it loses what it writes (verified with clearml 2.1.12); print does not.
    print(message, flush=True)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except (UserError, zipfile.BadZipFile) as err:  # a corrupt zip is the user's input, not our bug
        _fail(str(err).strip("'\""))


def _need_server(purpose: str, fallback: str = "") -> None:
    """session.require_server, its refusal as the one-line error."""
    _run(lambda: session.require_server(purpose, fallback))


def _until_preempted(action: Callable[[], Any], stopped: str, then: str) -> Any:
    """`_run(action)`; stopped by SIGTERM/SIGINT (resume.Preempted, after a checkpoint): a note, exit 128+signal."""
    from reprozoo.resume import Preempted

    try:
        return _run(action)
    except Preempted as stop:
        log.warning(f"{stopped} by {stop}; {then}")
        raise typer.Exit(128 + stop.signum) from None


def _configure(config: Path | None, set_: list[str] | None, **flags: Any) -> RunConfig:
    """--config (a concrete config, e.g. a run's), else the defaults with the model's zoo recipe; then the
    TRAIN_FLAGS given (not None, switches on), then --set (which always win); validated."""
    if config:
        cfg = RunConfig.load(config)
    else:
        cfg = RunConfig()
        cfg = apply(cfg, zoo.recipe(flags.get("model") or cfg.model.name))
    given = {TRAIN_FLAGS[name]: value for name, value in flags.items() if value is not None and value is not False}
    return apply(cfg, given).override(set_ or []).validate()


@app.command()
def train(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    dataset_id: Annotated[str | None, typer.Option(help="train on exactly this ClearML dataset version (`reprozoo data version`)")] = None,
    granularity: Annotated[str | None, typer.Option(help="sentences | phrases")] = None,
    imbalance: Annotated[str | None, typer.Option(help="none | weighted-loss | balanced-sampler")] = None,
    max_epochs: EpochsOpt = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (default: the zoo's)")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    max_length: Annotated[int | None, typer.Option()] = None,
    limit_train_samples: LimitTrainOpt = None,
    limit_eval_samples: LimitEvalOpt = None,
    seed: SeedOpt = None,
    precision: Annotated[str | None, typer.Option(help="auto | 32-true | bf16-mixed | 16-mixed")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto | cpu | gpu")] = None,
    devices: Annotated[str | None, typer.Option(help="auto, a count, or a list like 0,1 (several GPUs: DDP)")] = None,
    gpus: Annotated[bool, typer.Option("--gpus", help="ask for the GPU; falls back to CPU with a warning")] = False,
    require_gpu: Annotated[bool, typer.Option(help="fail instead of falling back to CPU")] = False,
    fast_dev_run: Annotated[bool, typer.Option(help="one batch of train/dev/test, to check the wiring")] = False,
    profiler: Annotated[str | None, typer.Option(help="simple | advanced | pytorch")] = None,
    tracking: TrackingOpt = None,
    out: Annotated[str | None, typer.Option(help="run directory (default: runs/<model>-<time>)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
    resume: Annotated[str | None, typer.Option(help="continue an interrupted run: its run directory or task id")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="also checkpoint every N steps (survives kill -9)")] = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a model on SST-5 and write a run directory (and a ClearML task)."""
    given = dict(locals())
    flags = {name: given[name] for name in TRAIN_FLAGS}
    if gpus:
        flags["accelerator"] = "gpu"

    def build() -> RunConfig:
        if resume is None:
            return _configure(config, set_, **flags)
        from reprozoo.resume import resumed_config

        return resumed_config(resume)  # the same run: its recorded settings, unchanged

    from reprozoo.train import train as run_training

    cfg = _run(build)
    result = _until_preempted(lambda: run_training(cfg, overwrite=overwrite, resume=resume is not None), "stopped",
                              f"checkpoint saved, resume with: reprozoo train --resume {cfg.out_dir}")
    for line in result.lines():
        _say(line)


@app.command()
def predict(
    texts: Annotated[list[str], typer.Argument(help="sentences to classify")],
    run: Annotated[Path, typer.Option(help="a run directory (or its export/ folder)")],
) -> None:
    """Print the label and class probabilities for each text."""
    from reprozoo import predict as inference

    for p in _run(lambda: inference.predict(run, texts)):
        spread = "  ".join(f"{label}={probability:.3f}" for label, probability in p.probabilities.items())
        typer.echo(f"{p.label}\t{p.text}\n    {spread}")


@app.command()
def models(names: Annotated[bool, typer.Option("--names", help="one name per line")] = False) -> None:
    """List the model zoo."""

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
    data_dir: DataDirOpt = None,
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
    data_dir: DataDirOpt = None,
    tracking: Annotated[str, typer.Option(help="auto | offline | server")] = "auto",
) -> None:
    """Register the trees as a ClearML Dataset version (reprozoo/datasets, sst5), keyed by content."""
    from reprozoo.data import versions

    version = _run(lambda: versions.register_trees(data_dir, tracking))
    _say(f"dataset id: {version.dataset_id}")
    _say(f"{'new version' if version.created else 'same content as the existing version'} ({version.mode});"
         f" content sha256 {version.content_hash}; parent {version.parent or 'none'}")
    for split, digest in version.sha256.items():
        _say(f"  {split}.txt sha256 {digest}")


def _load(ref: str) -> Any:
    from reprozoo import records

    return _run(lambda: records.load_record(ref))


RecordRef = Annotated[str, typer.Argument(help="task id, run directory or offline session zip")]


@tasks_app.command("list")
def tasks_list(
    server: Annotated[bool, typer.Option("--server", help="list the server's tasks instead of the offline sessions")] = False,
    project: Annotated[str | None, typer.Option(help="server: only this project")] = None,
) -> None:
    """Recorded runs, newest first: id, model, status, test accuracy / macro-F1, image digest, commit, dataset."""
    from reprozoo import records

    if server:
        _need_server("tasks list --server", "without --server it lists this machine's offline sessions")
    found = _run(lambda: records.list_server(project) if server else records.list_offline())
    if not found:
        typer.echo(f"no records{' on the server' if server else f' under {session.offline_root()}'}")
        return
    typer.echo("\n".join(records.list_lines(found)))


@tasks_app.command("show")
def tasks_show(
    ref: RecordRef,
    as_config: Annotated[bool, typer.Option("--as-config", help="print the RunConfig that replays it (YAML for --config)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the whole record as JSON")] = False,
) -> None:
    """One record: model, status, metrics, image digest, lock, commit (dirty or not), data version."""
    from reprozoo import records

    record = _load(ref)
    if as_config:
        typer.echo(f"# replays {record.task_id or ref}: reprozoo train --config THIS_FILE")
        typer.echo(record.replay_config().to_yaml().rstrip())
    elif as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
    else:
        typer.echo("\n".join(records.show_lines(record)))


@tasks_app.command("diff")
def tasks_diff(a: RecordRef, b: RecordRef) -> None:
    """Why did two results differ? Only what differs: config, code, image, lock, data, model, environment, metrics."""
    from reprozoo import records

    typer.echo("\n".join(records.diff_lines(_load(a), _load(b))))


@tasks_app.command("import")
def tasks_import(zip_path: Annotated[Path, typer.Argument(help="an offline session zip (see `reprozoo tasks show ID`)")]) -> None:
    """Upload an offline session to the configured ClearML server (Task.import_offline_session)."""
    from reprozoo import records

    if not zip_path.is_file():
        _fail(f"{zip_path} does not exist; `reprozoo tasks show ID` prints a session's zip")
    _need_server("importing", f"the session stays in {zip_path}")
    task_id, resumed = _run(lambda: records.import_session(zip_path))
    typer.echo(f"imported into task {task_id} (the run it resumes)" if resumed else f"imported as task {task_id}")


@app.command()
def repro(
    task: RecordRef,
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
    dry_run: DryRunOpt = False,
) -> None:
    """Re-run a recorded task exactly: its image (by digest) or commit + diff, its data version, its RunConfig."""
    from reprozoo import repro as replay
    from reprozoo.records import metric_text

    record = _load(task)
    if enqueue:
        spec = _run(lambda: replay.enqueue_spec(record, enqueue))
        _need_server("--enqueue", "without it, repro runs the task here")
        session.configure_clearml()
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
    metrics, replay_task = _run(lambda: replay.replay(plan, gpus=gpus, network=network,
                                                      log=lambda m: typer.echo(m, err=True)))
    _say(f"replay run directory: {plan.run_dir}")
    if replay_task:
        _say(f"replay clearml task: {replay_task}")
    _say(f"test accuracy {metrics['test']['accuracy']:.4f} (recorded "
         f"{metric_text(record, 'test', 'accuracy')})  macro-F1 {metrics['test']['macro_f1']:.4f}")
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
    from reprozoo.containers.identity import image_spec, project_root

    spec = _run(lambda: image_spec(project_root(), flavour, base))
    typer.echo(spec.ref)


@image_app.command("wheelhouse")
def image_wheelhouse(flavour: FlavourOpt = "cpu") -> None:
    """Download the lock's wheels (hash-checked) into docker/wheelhouse/<flavour> for an offline build."""
    from reprozoo.containers.build import download_wheelhouse
    from reprozoo.containers.identity import project_root

    root = _run(project_root)
    dest = _run(lambda: download_wheelhouse(root, flavour))
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
    from reprozoo.containers.build import build_image
    from reprozoo.containers.identity import project_root

    root = _run(project_root)
    result = _run(lambda: build_image(root, flavour, base, use_wheelhouse=wheelhouse, no_cache=no_cache, source=source,
                                      log=lambda line: typer.echo(line, err=True)))
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

    from reprozoo.containers.engine import client
    from reprozoo.containers.identity import project_root
    from reprozoo.containers.registry import push_image, resolve_local_image

    registry = registry or os.environ.get("REPROZOO_REGISTRY")
    if not registry:
        _fail("no registry: pass --registry (e.g. ghcr.io/OWNER) or set REPROZOO_REGISTRY")
    engine = _run(client)
    found = _run(lambda: resolve_local_image(engine, project_root(), flavour, base, image))
    pinned = _run(lambda: push_image(engine, found, str(registry), log=lambda line: typer.echo(line, err=True)))
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
    from reprozoo.containers.run import run_command_in_image

    command = list(args or [])
    if not command:
        _fail("nothing to run: add the command after --, e.g. `reprozoo image run -- train --model all-minilm-l6-v2`")
    code = _run(lambda: run_command_in_image(
        command, flavour=flavour, base=base, image=image, gpus=gpus, data_dir=data_dir, hf_cache=hf_cache,
        runs_dir=runs_dir, clearml_dir=clearml_dir, network=network, shm_size=shm_size, ipc_host=ipc_host, user=user,
        log=lambda line: typer.echo(line, err=True)))
    raise typer.Exit(code)


@image_app.command("identity")
def image_identity() -> None:
    """Print which image (or lock) this process runs in, as the record sees it (JSON)."""
    from reprozoo.containers.identity import runtime_identity

    typer.echo(json.dumps(runtime_identity(), indent=2))


# --- sweep / leaderboard ---------------------------------------------------------------------------
@app.command()
def sweep(
    models: Annotated[str, typer.Option("--models", help="all | family:<f> | name,name,… (zoo names, hub ids, local directories)")],
    queue: Annotated[str | None, typer.Option(help="enqueue one ClearML pipeline step per model on this queue")] = None,
    local: Annotated[bool, typer.Option("--local", help="train here, one model after another (the default)")] = False,
    image: Annotated[str | None, typer.Option(help="REF@sha256:…: every model runs in this image (here or on the agents)")] = None,
    set_: SetOpt = None,
    config: ConfigOpt = None,
    out: Annotated[Path | None, typer.Option(help="local: run directories go to DIR/<model> (default: runs/<model>-<time>)")] = None,
    dry_run: DryRunOpt = False,
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
        for line in _run(lambda: sweeps.dry_run_lines(plan)):
            _say(line)
        return
    if queue:
        _need_server("--queue", "nothing was enqueued; --local trains here")
        _run(lambda: sweeps.enqueue(plan, controller_queue=controller_queue, log=_say))
        return
    report = _until_preempted(lambda: sweeps.run_local(plan, runs_dir=out or Path("runs"), gpus=gpus, log=_say), "sweep stopped",
                              "the current model saved a checkpoint (`reprozoo train --resume RUN_DIR` finishes it);"
                              " re-running the sweep skips the models already completed")
    for line in report.lines():
        _say(line)
    if report.failed:
        raise typer.Exit(1)


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

    formats = {"table": board.to_text, "markdown": board.to_markdown, "csv": board.to_csv, "html": board.to_html}
    if format_ not in formats:
        _fail(f"--format {format_!r}: use one of {', '.join(formats)}")
    if server:
        _need_server("leaderboard --server", "without --server it ranks this machine's offline records")
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
    model: ModelOpt = None,
    trials: Annotated[int, typer.Option(help="number of trials")] = 10,
    local: Annotated[bool, typer.Option("--local", help="Optuna in this process (the default without --queue)")] = False,
    queue: Annotated[str | None, typer.Option(help="ClearML queue: trials run as cloned tasks on its agents")] = None,
    base_task: Annotated[str | None, typer.Option(help="--queue: template task id (default: one created from the RunConfig)")] = None,
    concurrency: Annotated[int, typer.Option(help="--queue: trials running at once")] = 1,
    time_limit_per_trial: Annotated[float | None, typer.Option(help="--queue: abort a trial after this many minutes")] = None,
    image: Annotated[str | None, typer.Option(help="--queue: docker image for the template, repo@sha256:… (default: this one's)")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    max_epochs: EpochsOpt = None,
    limit_train_samples: LimitTrainOpt = None,
    limit_eval_samples: LimitEvalOpt = None,
    seed: Annotated[int | None, typer.Option(help="every trial's seed, and the sampler's")] = None,
    tracking: TrackingOpt = None,
    out: Annotated[Path | None, typer.Option(help="where best.yaml and trials.{json,csv} go (default: hpo/<model>-<time>)")] = None,
    dry_run: DryRunOpt = False,
    set_: SetOpt = None,
) -> None:
    """Search hyperparameters by dev macro-F1 (test is never used); write best.yaml for `train --config`."""
    from reprozoo import hpo as search

    def build() -> tuple[RunConfig, list[Any]]:
        if local and queue:
            raise ConfigError("--local and --queue exclude each other: search here, or on a ClearML queue")
        cfg = _configure(config, set_, model=model, data_dir=data_dir, max_epochs=max_epochs, seed=seed, tracking=tracking,
                         limit_train_samples=limit_train_samples, limit_eval_samples=limit_eval_samples)
        cfg.out_dir = None
        if trials < 1:
            raise ConfigError(f"--trials {trials}: run at least one trial")
        zoo.get(cfg.model.name)  # a misspelt model fails here, not in every trial
        return cfg, search.parse_space(space, cfg)

    base, dims = _run(build)  # pure Python: a bad space or setting fails before torch, Lightning or ClearML is imported
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
        _need_server("--queue", "or search here with --local")
        session.configure_clearml()
        _run(lambda: require_queue(queue))
        if not base.data.dataset_id:  # agents have no local trees: every trial trains on this version, on the server
            version = _run(lambda: register_trees(base.data.data_dir, "server"))
            base.data.dataset_id, base.data.data_dir = version.dataset_id, None
            _say(f"data version: {version.dataset_id} (content sha256 {version.content_hash[:12]})")
        run = lambda: search.search_server(base, dims, trials, queue, target, base_task, concurrency,  # noqa: E731
                                           time_limit_per_trial, image)
    else:
        from reprozoo.train import plan_run

        _run(lambda: plan_run(base))  # data, weights' limits, precision: checked once, before the first trial
        run = lambda: search.search_local(base, dims, trials, target)  # noqa: E731
    result = _until_preempted(run, "search stopped", f"finished trials are in {target}/trials.json")
    for line in search.summary_lines(result):
        _say(line)


def main() -> None:
    log_setup()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        known = session.as_user_error(err)  # e.g. ClearML's LoginError, from any command that logs in
        if known is None:
            raise
        typer.echo(f"error: {known}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
