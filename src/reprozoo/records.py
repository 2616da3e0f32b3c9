"""Read run records back: offline ClearML sessions (folders or zips), run directories, the server.

`load_record(task_id_or_path)` is the one entry point other commands (`tasks`, `repro`) use:

    task id  offline-…  → $CLEARML_CACHE_DIR/offline/<id>/ (or <id>.zip when the folder is gone)
    other ids          → the ClearML server, when one is configured
    a run directory    → its task.json names the task; untracked runs (mode off) read from the folder
    a session zip/dir  → read directly (e.g. a zip copied from another machine)
"""

from __future__ import annotations

import difflib
import json
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reprozoo.config import ConfigError, RunConfig, apply, flatten
from reprozoo.session import CONFIG_OBJECT, PROVENANCE_OBJECT, configure_clearml, offline_root, server_configured


class RecordNotFound(ConfigError):
    """No record under that id or path; the message says where reprozoo looked."""


@dataclass
class Record:
    task_id: str | None
    config: RunConfig
    metrics: dict[str, Any] | None
    image: str
    image_digest: str
    lock_sha256: str
    commit: str
    diff: str
    dirty: bool
    dataset_id: str | None
    data_sha256: dict[str, str]
    model_revision: str
    status: str
    offline_zip: str | None
    # Beyond the fields `repro` needs: what `tasks show` / `tasks diff` print.
    name: str = ""
    project: str = ""
    source: str = ""  # where this record was read from
    repository: str = ""
    branch: str = ""
    untracked: list[str] = field(default_factory=list)
    lock_file: str = "none"
    environment: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # ClearML "single values" the run reported (dev/test accuracy and macro-F1, train_seconds);
    # the leaderboard reads the train time from here.
    single_values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return data

    def replay_config(self) -> RunConfig:
        """The RunConfig that re-runs this record: pinned to its data version, in a fresh run directory."""
        values: dict[str, Any] = {"out_dir": None}  # the recorded directory holds the finished run
        if self.dataset_id:
            values["data.dataset_id"] = self.dataset_id
        return apply(self.config, values)


# --- readers --------------------------------------------------------------------------------------
Reader = Callable[[str], bytes | None]


def _folder_reader(folder: Path) -> Reader:
    def read(rel: str) -> bytes | None:
        path = folder / rel
        return path.read_bytes() if path.is_file() else None

    return read


def _zip_reader(path: Path) -> Reader:
    archive = zipfile.ZipFile(path)
    names = set(archive.namelist())

    def read(rel: str) -> bytes | None:
        return archive.read(rel) if rel in names else None

    return read


def _parse_config_text(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
        if isinstance(data, dict):
            return data
    except yaml.YAMLError:
        pass
    # Records made before the YAML config object (connect_configuration stores HOCON).
    from clearml.utilities.pyhocon import ConfigFactory, HOCONConverter

    return json.loads(HOCONConverter.to_json(ConfigFactory.parse_string(text)))


def _from_session(read: Reader, source: str, zip_path: str | None) -> Record:
    raw = read("task.json")
    if raw is None:
        raise RecordNotFound(f"{source} holds no task.json; it is not a ClearML offline session")
    task = json.loads(raw)
    configuration = task.get("configuration") or {}
    if CONFIG_OBJECT not in configuration:
        raise RecordNotFound(f"{source}: task {task.get('id')} holds no {CONFIG_OBJECT}; it was not recorded by reprozoo train")
    config = RunConfig.from_dict(_parse_config_text(configuration[CONFIG_OBJECT]["value"]))
    prov = _parse_config_text(configuration[PROVENANCE_OBJECT]["value"]) if PROVENANCE_OBJECT in configuration else {}
    artifacts = {a["key"]: a for a in (task.get("execution") or {}).get("artifacts") or []}
    folder = str(task.get("offline_folder", "")).rstrip("/") + "/"
    metrics = None
    if "metrics" in artifacts:
        rel = artifacts["metrics"]["uri"].removeprefix("file://").replace(folder, "", 1)
        content = read(rel)
        metrics = json.loads(content) if content else None
    # Offline sessions carry no status field: a metrics artifact means the run finished; a zip without
    # one means the task closed early (failed); neither means it is running or was killed before close.
    status = "completed" if metrics else ("failed" if zip_path else "incomplete")
    script = task.get("script") or {}
    return _record(task.get("id"), config, metrics, prov, script, status, zip_path, source,
                   name=task.get("name", ""), project=task.get("project_name", ""),
                   single_values=_session_single_values(read))


def _session_single_values(read: Reader) -> dict[str, float]:
    """`Logger.report_single_value` is a scalar titled "Summary" (see clearml.Logger); offline it
    sits in metrics.jsonl among every other scalar, one JSON list of events per line."""
    raw = read("metrics.jsonl")
    values: dict[str, float] = {}
    for line in (raw or b"").splitlines():
        if b'"Summary"' not in line:  # most lines are per-step scalars: skip them unparsed
            continue
        for event in json.loads(line):
            if event.get("metric") == "Summary" and "value" in event:
                values[event["variant"]] = float(event["value"])
    return values


def _record(task_id: str | None, config: RunConfig, metrics: dict[str, Any] | None, prov: dict[str, Any],
            script: dict[str, Any], status: str, zip_path: str | None, source: str, name: str = "", project: str = "",
            single_values: dict[str, float] | None = None) -> Record:
    env, code, data, model = (prov.get(k) or {} for k in ("environment", "code", "data", "model"))
    diff = script.get("diff") or ""
    return Record(
        task_id=task_id, config=config, metrics=metrics,
        image=env.get("image", "none"), image_digest=env.get("image_digest", "none"), lock_sha256=env.get("lock_sha256", "none"),
        commit=script.get("version_num") or code.get("commit", ""), diff=diff,
        dirty=bool(diff.strip()) if script else bool(code.get("dirty")),
        dataset_id=data.get("dataset_id"), data_sha256=data.get("sha256") or {}, model_revision=model.get("revision", ""),
        status=status, offline_zip=zip_path, name=name, project=project, source=source,
        repository=script.get("repository") or code.get("repository", ""), branch=script.get("branch") or code.get("branch", ""),
        untracked=code.get("untracked") or [], lock_file=env.get("lock_file", "none"), environment=env, provenance=prov,
        single_values=dict(single_values or {}),
    )


def _from_run_dir(run_dir: Path) -> Record:
    info = json.loads((run_dir / "task.json").read_text()) if (run_dir / "task.json").is_file() else {}
    if info.get("task_id"):
        try:
            return load_record(info["task_id"])
        except RecordNotFound:
            pass  # the session is gone (or on a server we cannot reach): fall back to the run directory
    if not (run_dir / "config.yaml").is_file():
        raise RecordNotFound(f"{run_dir} is not a run directory (no config.yaml)")
    prov = json.loads((run_dir / "provenance.json").read_text()) if (run_dir / "provenance.json").is_file() else {}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else None
    diff = (run_dir / "git.diff").read_text() if (run_dir / "git.diff").is_file() else ""
    code = prov.get("code") or {}
    script = {"diff": diff, "version_num": code.get("commit", "")}
    timing = json.loads((run_dir / "timing.json").read_text()) if (run_dir / "timing.json").is_file() else {}
    single_values = {"train_seconds": float(timing["train_seconds"])} if "train_seconds" in timing else {}
    return _record(info.get("task_id"), RunConfig.load(run_dir / "config.yaml"), metrics, prov, script,
                   "completed" if metrics else "incomplete", info.get("offline_zip"), str(run_dir), single_values=single_values)


def _from_server(task_id: str) -> Record:
    # Exercised against a real server: no (none can run on this machine); tests drive it with a
    # stand-in Task object that answers the same calls.
    from clearml import Task

    try:
        task = Task.get_task(task_id=task_id)
    except ValueError as err:
        raise RecordNotFound(f"task {task_id} not found on the ClearML server ({err})") from None
    return _record_from_task(task)


def _record_from_task(task: Any) -> Record:
    text = task.get_configuration_object(CONFIG_OBJECT)
    if not text:
        raise RecordNotFound(f"task {task.id} holds no {CONFIG_OBJECT}; it was not recorded by reprozoo train")
    prov_text = task.get_configuration_object(PROVENANCE_OBJECT)
    metrics = None
    if "metrics" in task.artifacts:
        local = task.artifacts["metrics"].get_local_copy()
        metrics = json.loads(Path(local).read_text()) if local else None
    script = task.data.script
    script_dict = {"repository": script.repository, "branch": script.branch, "version_num": script.version_num,
                   "diff": script.diff or ""}
    single = getattr(task, "get_reported_single_values", None)  # clearml >= 1.x Task API
    return _record(task.id, RunConfig.from_dict(_parse_config_text(text)), metrics,
                   _parse_config_text(prov_text) if prov_text else {}, script_dict, str(task.get_status()), None,
                   "server", name=task.name, project=task.get_project_name() or "",
                   single_values={k: float(v) for k, v in (single() or {}).items()} if single else {})


def load_record(ref: str | Path) -> Record:
    """A run's record by task id, run directory, offline session folder or session zip."""
    path = Path(ref)
    if path.is_file() and zipfile.is_zipfile(path):
        return _from_session(_zip_reader(path), str(path), str(path))
    if path.is_dir():
        # A ClearML session folder has log/metrics jsonl beside task.json; a run directory does not.
        if (path / "task.json").is_file() and ((path / "log.jsonl").exists() or (path / "metrics.jsonl").exists()):
            zipped = Path(str(path).rstrip("/") + ".zip")
            return _from_session(_folder_reader(path), str(path), str(zipped) if zipped.is_file() else None)
        return _from_run_dir(path)
    task_id = str(ref)
    if task_id.startswith("offline-"):
        folder, zipped = offline_root() / task_id, offline_root() / f"{task_id}.zip"
        if (folder / "task.json").is_file():
            return _from_session(_folder_reader(folder), str(folder), str(zipped) if zipped.is_file() else None)
        if zipped.is_file():
            return _from_session(_zip_reader(zipped), str(zipped), str(zipped))
        raise RecordNotFound(f"no offline session {task_id} under {offline_root()}; `reprozoo tasks list` shows the known ids")
    if not server_configured():
        raise RecordNotFound(f"{ref!r} is not a run directory, a session zip, or an offline task id, and no ClearML server is"
                             " configured to look it up; `reprozoo tasks list` shows the known ids")
    return _from_server(task_id)


def list_offline() -> list[Record]:
    """Every reprozoo training session under the offline folder, newest first."""
    root = offline_root()
    if not root.is_dir():
        return []
    found: dict[str, tuple[float, Path]] = {}
    for path in root.glob("offline-*"):
        task_id = path.name.removesuffix(".zip")
        if path.is_dir() and not (path / "task.json").is_file():
            continue
        if task_id not in found or path.is_dir():  # prefer the folder, the zip is its copy
            found[task_id] = (path.stat().st_mtime, path)
    records = []
    for _, path in sorted(found.values(), reverse=True):
        try:
            records.append(load_record(path))
        except (RecordNotFound, ValueError, KeyError, zipfile.BadZipFile):
            continue  # dataset sessions and other projects' tasks
    return records


def list_server(project: str | None, limit: int = 50) -> list[Record]:
    from clearml import Task

    tasks = Task.get_tasks(project_name=project, task_filter={"type": ["training"], "order_by": ["-last_update"],
                                                              "page_size": limit, "page": 0})
    records = []
    for task in tasks:
        try:
            records.append(_record_from_task(task))
        except RecordNotFound:
            continue
    return records


# --- diff -----------------------------------------------------------------------------------------


# Settings that say where a run was written and how it was tracked, not how it trained.
_NOT_RESULT_SETTINGS = ("out_dir", "tracking.mode", "tracking.project", "tracking.task_name")
_METRICS = ("dev.accuracy", "dev.macro_f1", "test.accuracy", "test.macro_f1", "train.steps", "train.loss_last")


def diff_records(a: Record, b: Record) -> list[tuple[str, str, Any, Any]]:
    """(group, field, a, b) for every recorded fact that differs; equal facts are left out."""
    rows: list[tuple[str, str, Any, Any]] = []

    def compare(group: str, left: dict[str, Any], right: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
        for key in sorted(set(left) | set(right)):
            if key not in skip and left.get(key) != right.get(key):
                rows.append((group, key, left.get(key, "—"), right.get(key, "—")))

    compare("config", flatten(a.config.to_dict()), flatten(b.config.to_dict()), _NOT_RESULT_SETTINGS)
    compare("code", {"repository": a.repository, "branch": a.branch, "commit": a.commit, "dirty": a.dirty},
            {"repository": b.repository, "branch": b.branch, "commit": b.commit, "dirty": b.dirty})
    if a.diff != b.diff:
        rows.append(("code", "diff", f"{len(a.diff.splitlines())} lines", f"{len(b.diff.splitlines())} lines"))
    compare("image", {"image": a.image, "digest": a.image_digest, "lock": a.lock_file, "lock_sha256": a.lock_sha256},
            {"image": b.image, "digest": b.image_digest, "lock": b.lock_file, "lock_sha256": b.lock_sha256})
    compare("data", {"dataset_id": a.dataset_id, **{f"sha256.{k}": v for k, v in a.data_sha256.items()}},
            {"dataset_id": b.dataset_id, **{f"sha256.{k}": v for k, v in b.data_sha256.items()}})
    compare("model", {"revision": a.model_revision}, {"revision": b.model_revision})
    compare("environment", flatten(a.environment), flatten(b.environment),
            ("image", "image_digest", "lock_file", "lock_sha256", "python_executable"))
    ma, mb = flatten(a.metrics or {}), flatten(b.metrics or {})
    compare("metrics", {k: ma.get(k) for k in _METRICS}, {k: mb.get(k) for k in _METRICS})
    if a.metrics != b.metrics and not any(r[0] == "metrics" for r in rows):
        rows.append(("metrics", "metrics.json", "differs beyond the headline figures", ""))
    return rows


def code_diff_delta(a: Record, b: Record, limit: int = 60) -> list[str]:
    """How the two uncommitted diffs differ (a diff of diffs), first `limit` lines."""
    lines = list(difflib.unified_diff(a.diff.splitlines(), b.diff.splitlines(), f"{a.task_id} diff", f"{b.task_id} diff", lineterm=""))
    return lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else [])


def import_session(zip_path: Path) -> tuple[str, str | None]:
    """Upload an offline session zip to the configured ClearML server (Task.import_offline_session):
    (the task id, the task it continues or None). The caller checks the server (session.require_server)."""
    configure_clearml()
    from clearml import Task

    # A run resumed while its server task was out of reach continues that task once uploaded.
    try:
        previous = load_record(zip_path).provenance.get("resumes")
    except (ConfigError, KeyError, ValueError):
        previous = None  # a session reprozoo did not write (a dataset, another script): imported as it is
    Task.set_offline(False)
    return Task.import_offline_session(str(zip_path), previous_task_id=previous), previous


# --- as text (`reprozoo tasks list | show | diff`) -----------------------------------------------------
def metric_text(record: Record, split: str, key: str) -> str:
    return f"{record.metrics[split][key]:.4f}" if record.metrics else "—"


def _short(value: str | None, n: int = 12) -> str:
    if not value or value == "none":
        return "none"
    head, sep, tail = value.partition(":")
    return f"{head}:{tail[:n]}" if sep and head == "sha256" else value[:n]


def list_lines(found: list[Record]) -> list[str]:
    """One line a record under a header: id, model, status, test accuracy / macro-F1, image digest, commit, dataset."""
    lines = [f"{'task id':<42} {'model':<20} {'status':<10} {'test acc':>8} {'test F1':>8}  {'image digest':<19} {'commit':<14} dataset"]
    for r in found:
        commit = (r.commit[:8] or "none") + ("+dirty" if r.dirty else "")
        lines.append(f"{r.task_id:<42} {r.config.model.name[:20]:<20} {r.status[:10]:<10} "
                     f"{metric_text(r, 'test', 'accuracy'):>8} {metric_text(r, 'test', 'macro_f1'):>8}  {_short(r.image_digest):<19} "
                     f"{commit:<14} {r.dataset_id or 'none'}")
    return lines


def show_lines(r: Record) -> list[str]:
    """One record: model, status, metrics, image digest, lock, commit (dirty or not), data version, environment."""
    env = r.environment
    rows = [
        ("task", f"{r.task_id}  ({r.status})"),
        ("name", f"{r.name}  [project {r.project}]" if r.name else "—"),
        ("model", f"{r.config.model.name}  revision {r.model_revision or '—'}"),
        ("metrics", f"dev acc {metric_text(r, 'dev', 'accuracy')} F1 {metric_text(r, 'dev', 'macro_f1')} | "
                    f"test acc {metric_text(r, 'test', 'accuracy')} F1 {metric_text(r, 'test', 'macro_f1')}"),
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
    return [f"{key:<9} {value}" for key, value in rows]


def diff_lines(left: Record, right: Record) -> list[str]:
    """Only what differs between two records, A above B; the uncommitted diffs' delta last."""
    rows = diff_records(left, right)
    if not rows:
        return ["identical: config, code, image, lock, data, model revision, environment and metrics all match"]
    width = max(len(f"{g}.{k}") for g, k, _, _ in rows)
    lines = [f"{'':<{width}}  A = {left.task_id}\n{'':<{width}}  B = {right.task_id}"]
    lines += [f"{group + '.' + key:<{width}}  A: {va}\n{'':<{width}}  B: {vb}" for group, key, va, vb in rows]
    if left.diff != right.diff:
        lines += ["uncommitted diffs differ:", "\n".join(code_diff_delta(left, right))]
    return lines
