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
    from reprozoo.resume import CheckpointWriteError, ResumeError
    from reprozoo.zoo import UnknownModelError, WeightsUnavailableError

    # ConfigError covers records.RecordNotFound.
    return (ConfigError, ContainerError, DataSourceError, TreeFormatError, MissingSplitError, UnknownModelError,
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
        print(f"stopped by {stop}; checkpoint saved, resume with: reprozoo train --resume {cfg.out_dir}", file=sys.stderr, flush=True)
        raise typer.Exit(128 + stop.signum) from None
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
    from reprozoo.tracking import configure_clearml, resolve_mode

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
    from reprozoo.tracking import server_configured

    if server and not server_configured():
        _fail("no ClearML server is configured; set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY (or run clearml-init)")
    found = _run(lambda: records.list_server(project) if server else records.list_offline())
    if not found:
        typer.echo(f"no records{' on the server' if server else f' under {records.offline_root()}'}")
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
    from reprozoo.tracking import api_server, configure_clearml, server_configured, server_reachable

    if not zip_path.is_file():
        _fail(f"{zip_path} does not exist; `reprozoo tasks show ID` prints a session's zip")
    if not server_configured():
        _fail("importing needs a ClearML server: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY (or run clearml-init)")
    if not server_reachable(api_server()):
        _fail(f"the ClearML server {api_server()} is unreachable; the session stays in {zip_path}, retry when it is up")
    configure_clearml()
    from clearml import Task

    Task.set_offline(False)
    task_id = Task.import_offline_session(str(zip_path))
    typer.echo(f"imported as task {task_id}")
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
    hf = hf_cache or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
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
        from reprozoo.tracking import api_server, server_configured, server_reachable

        if not server_configured():
            _fail("--queue needs a ClearML server: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY"
                  " (or run clearml-init); or search here with --local")
        if not server_reachable(api_server()):
            _fail(f"the ClearML server {api_server()} is unreachable; retry when it is up, or search here with --local")
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
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
