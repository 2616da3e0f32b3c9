"""The `reprozoo` command: a table of library calls. Each command parses its flags, builds a
RunConfig (or a reference), calls one library function and prints what it returns.

Imports stay light at module level (no torch): `reprozoo models` and `--help` answer at once.
Errors the user can fix print one line and exit 2; a traceback means a bug in reprozoo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from reprozoo import session, zoo
from reprozoo.agent import require_queue
from reprozoo.cli.common import (
    TRAIN_FLAGS,
    ConfigOpt,
    DataDirOpt,
    DryRunOpt,
    EpochsOpt,
    LimitEvalOpt,
    LimitTrainOpt,
    ModelOpt,
    RecordRef,
    SeedOpt,
    SetOpt,
    TrackingOpt,
    call,
    configure,
    fail,
    load_record,
    need_server,
    say,
    until_preempted,
)
from reprozoo.cli.image import image_app
from reprozoo.cli.tasks import data_app, tasks_app
from reprozoo.config import ConfigError, RunConfig
from reprozoo.data.versions import register_trees
from reprozoo.log import setup as log_setup

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reproducible SST-5 fine-tuning of a zoo of BERT-like models.")
app.add_typer(data_app, name="data")
app.add_typer(tasks_app, name="tasks")
app.add_typer(image_app, name="image")


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
    accept_changes: Annotated[bool, typer.Option(help="with --resume: resume although the code, data, weights, software or"
                                                      " settings (precision, devices, CPU, threads) differ from the run's start"
                                                      " (both states are recorded); with --enqueue, the agent may")] = False,
    checkpoint_every: Annotated[int | None, typer.Option(help="also checkpoint every N steps (survives kill -9)")] = None,
    enqueue: Annotated[str | None, typer.Option(help="with --resume TASK_ID: put the task back on this queue; the agent"
                                                " that takes it resumes from its last checkpoint in storage")] = None,
    force: Annotated[bool, typer.Option(help="with --enqueue: a task still in progress (its machine is gone) is marked"
                                        " stopped first")] = False,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a model on SST-5 and write a run directory (and a ClearML task)."""
    given = dict(locals())
    if enqueue is not None:
        if resume is None:
            fail("--enqueue needs --resume TASK_ID (to re-run a finished task on an agent: `reprozoo repro TASK_ID --enqueue Q`)")
        from reprozoo import repro as replay

        need_server("--resume --enqueue", "without it, `reprozoo train --resume` resumes here")
        session.configure_clearml()
        call(lambda: require_queue(enqueue))
        requeued = call(lambda: replay.requeue(resume, enqueue, force=force, accept_changes=accept_changes))
        since = f"its checkpoint at step {requeued['step']}" if requeued["step"] is not None else "the start (no checkpoint in storage)"
        say(f"enqueued task {resume} ({requeued['status']} before) on {enqueue}; the agent resumes from {since}")
        return
    flags = {name: given[name] for name in TRAIN_FLAGS}
    if gpus:
        flags["accelerator"] = "gpu"

    def build() -> RunConfig:
        if resume is None:
            return configure(config, set_, **flags)
        from reprozoo.train import resumed_run_config

        return resumed_run_config(resume, out)  # the same run: its recorded settings, unchanged

    from reprozoo.train import train as run_training

    cfg = call(build)
    # The run prints its own closing summary (RunResult.lines), before its task closes.
    until_preempted(lambda: run_training(cfg, overwrite=overwrite, resume=resume is not None,
                                         accept_changes=accept_changes), "stopped",
                    f"checkpoint saved, resume with: reprozoo train --resume {cfg.out_dir}")


@app.command()
def predict(
    texts: Annotated[list[str], typer.Argument(help="sentences to classify")],
    run: Annotated[Path, typer.Option(help="a run directory (or its export/ folder)")],
) -> None:
    """Print the label and class probabilities for each text."""
    from reprozoo import predict as inference

    for p in call(lambda: inference.predict(run, texts)):
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
    accept_changes: Annotated[bool, typer.Option(help="replay although this machine would train otherwise (another"
                                                      " precision, world size, CPU or thread count), or in the recorded image"
                                                      " although its code is not the recorded code; a note says so; with --enqueue, the agent may")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Re-run a recorded task exactly: its image (by digest) or commit + diff, its data version, its RunConfig."""
    from reprozoo import repro as replay
    from reprozoo.records import metric_text

    record = load_record(task)
    if enqueue:
        spec = call(lambda: replay.enqueue_spec(record, enqueue, accept_changes))
        need_server("--enqueue", "without it, repro runs the task here")
        session.configure_clearml()
        call(lambda: require_queue(enqueue))  # before the clone: an unknown queue leaves no draft behind
        spec = call(lambda: replay.with_server_data(spec, record))
        if spec["config"].data.dataset_id != record.dataset_id:
            say(f"data version {record.dataset_id} is {spec['config'].data.dataset_id} on the server")
        say(f"cloning {record.task_id} for queue {enqueue}" + (f" in {spec['docker_image']}" if spec["docker_image"] else ""))
        say(f"enqueued task {replay.enqueue(spec)}")
        return
    plan = call(lambda: replay.plan_repro(record, data_dir=data_dir, runs_dir=runs_dir, out=out, use_image=image,
                                          accept_changes=accept_changes))
    for line in plan.summary():
        say(line)
    from reprozoo import provenance

    here = provenance.environment(record.config.seed, str(replay.source_checkout() or "") or None)
    for line in replay.spec_lines(plan, here):
        say(line)
    if dry_run:
        say(plan.config.to_yaml().rstrip())
        return
    metrics, replay_task = call(lambda: replay.replay(plan, gpus=gpus, network=network, accept_changes=accept_changes,
                                                      log=lambda m: typer.echo(m, err=True)))
    say(f"replay run directory: {plan.run_dir}")
    if replay_task:
        say(f"replay clearml task: {replay_task}")
    say(f"test accuracy {metrics['test']['accuracy']:.4f} (recorded "
         f"{metric_text(record, 'test', 'accuracy')})  macro-F1 {metrics['test']['macro_f1']:.4f}")
    if verify:
        verdict = replay.compare_metrics(record.metrics, metrics, tolerance)
        for line in verdict.lines():
            say(line)
        if verdict.status == "differs":
            for line in replay.explain_difference(record.environment, call(lambda: replay.replayed_environment(plan))):
                say(line)
            for line in replay.resumed_segments(record):
                say(f"  {line}")
        if not verdict.ok:
            raise typer.Exit(1)


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
        fail("--queue and --local exclude each other: enqueue for agents, or train here")
    base = call(lambda: RunConfig.load(config)) if config else None
    plan = call(lambda: sweeps.build_plan(models, set_ or [], base=base, queue=queue, image=image,
                                          out_root=None if queue else out))
    if dry_run:
        for line in call(lambda: sweeps.dry_run_lines(plan)):
            say(line)
        return
    if queue:
        need_server("--queue", "nothing was enqueued; --local trains here")
        call(lambda: sweeps.enqueue(plan, controller_queue=controller_queue, log=say))
        return
    report = until_preempted(lambda: sweeps.run_local(plan, runs_dir=out or Path("runs"), gpus=gpus, log=say), "sweep stopped",
                              "the current model saved a checkpoint (`reprozoo train --resume RUN_DIR` finishes it);"
                              " re-running the sweep skips the models already completed")
    for line in report.lines():
        say(line)
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
        fail(f"--format {format_!r}: use one of {', '.join(formats)}")
    if server:
        need_server("leaderboard --server", "without --server it ranks this machine's offline records")
    if references is not None and not references.is_file():
        fail(f"--references {references}: no such file")
    rows = call(lambda: board.gather(server, project))
    if not rows:
        say("no finished runs" + (f" in project {project}" if project else "") + (" on the server" if server else " offline"))
        return
    paths, note = board.write_all(rows, out, references or board.default_references_path())
    say(formats[format_](rows).rstrip())
    say(f"{len(rows)} run(s); wrote {', '.join(str(p) for p in paths.values())}; {note}")
    if server:
        task_id = board.report_to_clearml(rows, paths, project or "reprozoo")
        say(f"reported to ClearML task {task_id}")


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
        cfg = configure(config, set_, model=model, data_dir=data_dir, max_epochs=max_epochs, seed=seed, tracking=tracking,
                         limit_train_samples=limit_train_samples, limit_eval_samples=limit_eval_samples)
        cfg.out_dir = None
        if trials < 1:
            raise ConfigError(f"--trials {trials}: run at least one trial")
        zoo.get(cfg.model.name)  # a misspelt model fails here, not in every trial
        return cfg, search.parse_space(space, cfg)

    base, dims = call(build)  # pure Python: a bad space or setting fails before torch, Lightning or ClearML is imported
    target = out or search.default_out(base)
    say(f"search space ({'queue ' + queue if queue else 'local'}, {trials} trials, objective dev macro-F1):")
    for dim in dims:
        say(f"  {dim.describe()}")
    if dry_run:
        if queue:
            plan = call(lambda: search.server_plan(dims, base, queue, trials, base_task or "<template from the RunConfig>",
                                                   concurrency, time_limit_per_trial))
            say(json.dumps(search.describe_plan(plan, base.seed), indent=2))
        return
    if queue:
        need_server("--queue", "or search here with --local")
        session.configure_clearml()
        call(lambda: require_queue(queue))
        if not base.data.dataset_id:  # agents have no local trees: every trial trains on this version, on the server
            version = call(lambda: register_trees(base.data.data_dir, "server", base.tracking.project))
            base.data.dataset_id, base.data.data_dir = version.dataset_id, None
            say(f"data version: {version.dataset_id} (content sha256 {version.content_hash[:12]})")
        search_fn = lambda: search.search_server(base, dims, trials, queue, target, base_task, concurrency,  # noqa: E731
                                           time_limit_per_trial, image)
    else:
        from reprozoo.train import plan_run

        call(lambda: plan_run(base))  # data, weights' limits, precision: checked once, before the first trial
        search_fn = lambda: search.search_local(base, dims, trials, target)  # noqa: E731
    result = until_preempted(search_fn, "search stopped", f"finished trials are in {target}/trials.json")
    for line in search.summary_lines(result):
        say(line)


def main() -> None:
    log_setup()
    _run()


def _run() -> None:
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
