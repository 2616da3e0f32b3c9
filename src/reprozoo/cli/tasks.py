"""`reprozoo data …` and `reprozoo tasks …`: data versions and run records (ClearML tasks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from reprozoo import session
from reprozoo.cli.common import DataDirOpt, RecordRef, call, fail, load_record, need_server, say

data_app = typer.Typer(no_args_is_help=True, help="SST-5 data: statistics, versions.")
tasks_app = typer.Typer(no_args_is_help=True, help="Run records (ClearML tasks): offline sessions and the server.")


@data_app.command("stats")
def data_stats(
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option(help="where to write the bar chart")] = Path("class_distribution.png"),
) -> None:
    """Class distribution per split and granularity, as a table and a bar chart PNG."""
    from reprozoo.data import stats

    table = call(lambda: stats.class_distribution(data_dir))
    typer.echo(stats.format_table(table))
    stats.save_bar_chart(table, out)
    typer.echo(f"bar chart: {out}")
    typer.echo(json.dumps({k: v["counts"] for k, v in table.items()}))


@data_app.command("version")
def data_version(
    data_dir: DataDirOpt = None,
    tracking: Annotated[str, typer.Option(help="auto | offline | server")] = "auto",
    project: Annotated[str, typer.Option(help="the runs' ClearML project (tracking.project); versions go to PROJECT/datasets")] = "reprozoo",
) -> None:
    """Register the trees as a ClearML Dataset version (PROJECT/datasets, sst5), keyed by content."""
    from reprozoo.data import versions

    version = call(lambda: versions.register_trees(data_dir, tracking, project))
    say(f"dataset id: {version.dataset_id}")
    say(f"{'new version' if version.created else 'same content as the existing version'} ({version.mode});"
         f" content sha256 {version.content_hash}; parent {version.parent or 'none'}")
    for split, digest in version.sha256.items():
        say(f"  {split}.txt sha256 {digest}")


@tasks_app.command("list")
def tasks_list(
    server: Annotated[bool, typer.Option("--server", help="list the server's tasks instead of the offline sessions")] = False,
    project: Annotated[str | None, typer.Option(help="server: only this project")] = None,
) -> None:
    """Recorded runs, newest first: id, model, status, test accuracy / macro-F1, image digest, commit, dataset."""
    from reprozoo import records

    if server:
        need_server("tasks list --server", "without --server it lists this machine's offline sessions")
    found = call(lambda: records.list_server(project) if server else records.list_offline())
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

    record = load_record(ref)
    if as_config:
        typer.echo(f"# replays {record.task_id or ref}: reprozoo train --config THIS_FILE")
        from reprozoo.run_spec import fresh_run

        typer.echo(fresh_run(record).to_yaml().rstrip())
    elif as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
    else:
        typer.echo("\n".join(records.show_lines(record)))


@tasks_app.command("diff")
def tasks_diff(a: RecordRef, b: RecordRef) -> None:
    """Why did two results differ? Only what differs: config, code, image, lock, data, model, environment, metrics."""
    from reprozoo import records

    typer.echo("\n".join(records.diff_lines(load_record(a), load_record(b))))


@tasks_app.command("import")
def tasks_import(zip_path: Annotated[Path, typer.Argument(help="an offline session zip (see `reprozoo tasks show ID`)")]) -> None:
    """Upload an offline session to the configured ClearML server (Task.import_offline_session)."""
    from reprozoo import records

    if not zip_path.is_file():
        fail(f"{zip_path} does not exist; `reprozoo tasks show ID` prints a session's zip")
    need_server("importing", f"the session stays in {zip_path}")
    task_id, resumed = call(lambda: records.import_session(zip_path))
    typer.echo(f"imported into task {task_id} (the run it resumes)" if resumed else f"imported as task {task_id}")


