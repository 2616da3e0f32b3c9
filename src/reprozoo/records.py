"""Read run records back: offline ClearML sessions (folders or zips), run directories, the server.

`load_record(task_id_or_path)` is the one entry point other commands (`tasks`, `repro`) use:

    task id  offline-…  → $CLEARML_CACHE_DIR/offline/<id>/ (or <id>.zip when the folder is gone)
    other ids          → the ClearML server, when one is configured
    a run directory    → its task.json names the task; untracked runs (mode off) read from the folder
    a session zip/dir  → read directly (e.g. a zip copied from another machine)
"""

from __future__ import annotations

import difflib
import math
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reprozoo import run_spec, safeyaml
from reprozoo.config import ConfigError, RunConfig, flatten
from reprozoo.errors import UserError
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


# --- readers --------------------------------------------------------------------------------------
# Records come from others (a zip copied from another machine, a server task): every file is read
# with a size cap and the bounded parsers of reprozoo.safeyaml, and every shape is checked, so a
# damaged or crafted record gives one ConfigError line, never a traceback, a hang or a memory blow-up.
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one file of a session (metrics.jsonl grows with the steps)
MAX_HOCON_BYTES = 16 * 1024  # the old HOCON config objects are ~1 KB; pyparsing takes ~1 s per 64 KB
Reader = Callable[[str], bytes | None]


def _folder_reader(folder: Path) -> Reader:
    root = folder.resolve()

    def read(rel: str) -> bytes | None:
        path = (folder / rel).resolve()
        if not path.is_relative_to(root):
            raise ConfigError(f"{folder}: the record names {rel!r}, a file outside its session folder; refused")
        return safeyaml.read_bytes(path, MAX_MEMBER_BYTES, "session file") if path.is_file() else None

    return read


def _zip_reader(path: Path) -> Reader:
    try:
        archive = zipfile.ZipFile(path)
        names = set(archive.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise ConfigError(f"{path}: not a readable zip ({err})") from None

    def read(rel: str) -> bytes | None:
        if rel not in names:
            return None
        info = archive.getinfo(rel)
        if info.file_size > MAX_MEMBER_BYTES:
            raise ConfigError(f"{path}: {rel} unpacks to {info.file_size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte cap"
                              " for a session file; refused")
        try:
            with archive.open(info) as member:
                data = safeyaml.read_capped(member, MAX_MEMBER_BYTES)  # the header's size may lie: cap what is inflated
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError, ValueError) as err:
            # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method.
            raise ConfigError(f"{path}: cannot read {rel} from the zip ({err})") from None
        if len(data) > MAX_MEMBER_BYTES:
            raise ConfigError(f"{path}: {rel} unpacks to over {MAX_MEMBER_BYTES:,} bytes; refused")
        return data

    return read


def _parse_config_text(text: Any, source: str = "record") -> dict[str, Any]:
    """A recorded config object (RunConfig, Provenance) as a mapping: YAML, or the HOCON of older records."""
    if not isinstance(text, str):
        raise ConfigError(f"{source}: expected the config object's text, got {type(text).__name__}")
    if not text.strip():
        raise ConfigError(f"{source}: the config object is empty; the record is damaged")
    if text.lstrip().startswith("{"):  # the run document (Provenance): JSON, with the diff inside
        data = safeyaml.load_json(text, source, MAX_MEMBER_BYTES)
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}; the record is damaged")
        return data
    try:
        data = safeyaml.load_yaml(text, source)
        if isinstance(data, dict):
            return data
    except safeyaml.NotYAML:
        pass  # out-of-bounds YAML (size, aliases, depth) is refused as is; only unparsable text may be HOCON
    return _parse_hocon(text, source)


def _parse_hocon(text: str, source: str) -> dict[str, Any]:
    # Records made before the YAML config object (connect_configuration stored HOCON). Read as plain
    # data only: includes would read other files or URLs, and substitutions can expand like aliases.
    if len(text) > MAX_HOCON_BYTES or "include" in text or "${" in text:
        raise ConfigError(f"{source}: neither a YAML mapping nor a plain HOCON config (at most {MAX_HOCON_BYTES // 1024} KiB,"
                          " no include, no ${...}); the record is damaged")
    from clearml.utilities.pyhocon import ConfigFactory, HOCONConverter

    try:
        converted = HOCONConverter.to_json(ConfigFactory.parse_string(text))
    except Exception as err:  # pyhocon and pyparsing raise many types; each one means "not HOCON"
        problem = " ".join(str(err).split())[:120] or type(err).__name__
        raise ConfigError(f"{source}: neither a YAML mapping nor a HOCON config ({problem}); the record is damaged") from None
    data = safeyaml.load_json(converted, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _config_from_text(text: Any, source: str) -> RunConfig:
    return run_spec.recorded_config(_parse_config_text(text, source), source)


def record_mapping(value: Any, what: str) -> dict[str, Any]:
    """A section of a record that must be a mapping (absent or null reads as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} is {type(value).__name__}, expected a mapping; the record is damaged")
    return value


def _text(value: Any, what: str, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):  # e.g. a YAML commit of digits only, read as a number
        return str(value)
    raise ConfigError(f"{what} is {type(value).__name__}, expected text; the record is damaged")


def _from_session(read: Reader, source: str, zip_path: str | None) -> Record:
    raw = read("task.json")
    if raw is None:
        raise RecordNotFound(f"{source} holds no task.json; it is not a ClearML offline session")
    task = safeyaml.load_json_object(raw, f"{source}/task.json")
    configuration = record_mapping(task.get("configuration"), f"{source}/task.json: configuration")
    task_id = _text(task.get("id"), f"{source}/task.json: id") or None
    if CONFIG_OBJECT not in configuration:
        raise RecordNotFound(f"{source}: task {task_id} holds no {CONFIG_OBJECT}; it was not recorded by reprozoo train")

    def object_text(name: str) -> Any:
        return record_mapping(configuration[name], f"{source}/task.json: configuration.{name}").get("value")

    config = _config_from_text(object_text(CONFIG_OBJECT), f"{source}: {CONFIG_OBJECT}")
    prov = _parse_config_text(object_text(PROVENANCE_OBJECT), f"{source}: {PROVENANCE_OBJECT}") if PROVENANCE_OBJECT in configuration else {}
    execution = record_mapping(task.get("execution"), f"{source}/task.json: execution")
    listed = execution.get("artifacts") or []
    if not isinstance(listed, list) or not all(isinstance(a, dict) for a in listed):
        raise ConfigError(f"{source}/task.json: execution.artifacts is not a list of artifacts; the record is damaged")
    artifacts = {a.get("key"): a for a in listed}
    folder = _text(task.get("offline_folder"), f"{source}/task.json: offline_folder").rstrip("/") + "/"
    metrics = None
    if "metrics" in artifacts:
        uri = _text(artifacts["metrics"].get("uri"), f"{source}/task.json: the metrics artifact's uri")
        rel = uri.removeprefix("file://").replace(folder, "", 1)
        content = read(rel)
        metrics = safeyaml.load_json_object(content, f"{source}/{rel}") if content else None
    # Offline sessions carry no status field: a metrics artifact means the run finished; a zip without
    # one means the task closed early (failed); neither means it is running or was killed before close.
    status = "completed" if metrics else ("failed" if zip_path else "incomplete")
    script = record_mapping(task.get("script"), f"{source}/task.json: script")
    return _record(task_id, config, metrics, prov, script, status, zip_path, source,
                   name=_text(task.get("name"), f"{source}/task.json: name"),
                   project=_text(task.get("project_name"), f"{source}/task.json: project_name"),
                   single_values=_session_single_values(read, source))


def _session_single_values(read: Reader, source: str = "session") -> dict[str, float]:
    """`Logger.report_single_value` is a scalar titled "Summary" (see clearml.Logger); offline it
    sits in metrics.jsonl among every other scalar, one JSON list of events per line."""
    raw = read("metrics.jsonl")
    values: dict[str, float] = {}
    for number, line in enumerate((raw or b"").splitlines(), 1):
        if b'"Summary"' not in line:  # most lines are per-step scalars: skip them unparsed
            continue
        where = f"{source}/metrics.jsonl:{number}"
        events = safeyaml.load_json(line, where, MAX_MEMBER_BYTES)
        if not isinstance(events, list):
            raise ConfigError(f"{where}: expected a JSON list of events, got {type(events).__name__}; the record is damaged")
        for event in events:
            if isinstance(event, dict) and event.get("metric") == "Summary" and "value" in event:
                variant, value = event.get("variant"), event["value"]
                if not isinstance(variant, str) or not _finite_number(value):
                    raise ConfigError(f"{where}: the single value {str(variant)[:40]!r}={str(value)[:40]} is not a number;"
                                      " the record is damaged")
                values[variant] = float(value)
    return values


def _finite_number(value: Any) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def _record(task_id: str | None, config: RunConfig, metrics: dict[str, Any] | None, prov: dict[str, Any],
            script: dict[str, Any], status: str, zip_path: str | None, source: str, name: str = "", project: str = "",
            single_values: dict[str, float] | None = None) -> Record:
    env, code, data, model = (record_mapping(prov.get(k), f"{source}: provenance.{k}") for k in ("environment", "code", "data", "model"))

    def text(section: dict[str, Any], key: str, what: str, default: str = "") -> str:
        return _text(section.get(key), f"{source}: {what}.{key}", default)

    # The run document holds the config and the diff as they ran; records before it, the config object and script.
    if "config" in prov:
        config = run_spec.recorded_config(prov["config"], f"{source}: provenance.config")
    diff = text(code, "diff", "provenance.code") if "diff" in code else text(script, "diff", "script")
    if "diff_sha256" in code and text(code, "diff_sha256", "provenance.code") != run_spec.diff_sha256(diff):
        raise ConfigError(f"{source}: provenance.code.diff does not match its diff_sha256; the record is damaged or was edited")
    sha256 = record_mapping(data.get("sha256"), f"{source}: provenance.data.sha256")
    untracked = code.get("untracked") or []
    if not isinstance(untracked, list) or not all(isinstance(u, str) for u in untracked):
        raise ConfigError(f"{source}: provenance.code.untracked is not a list of paths; the record is damaged")
    return Record(
        task_id=task_id, config=config, metrics=metrics,
        image=text(env, "image", "provenance.environment", "none"),
        image_digest=text(env, "image_digest", "provenance.environment", "none"),
        lock_sha256=text(env, "lock_sha256", "provenance.environment", "none"),
        commit=text(script, "version_num", "script") or text(code, "commit", "provenance.code"), diff=diff,
        dirty=bool(diff.strip()) if script else bool(code.get("dirty")),
        dataset_id=text(data, "dataset_id", "provenance.data") or None,
        data_sha256={str(k): _text(v, f"{source}: provenance.data.sha256.{k}") for k, v in sha256.items()},
        model_revision=text(model, "revision", "provenance.model"),
        status=status, offline_zip=zip_path, name=name, project=project, source=source,
        repository=text(script, "repository", "script") or text(code, "repository", "provenance.code"),
        branch=text(script, "branch", "script") or text(code, "branch", "provenance.code"),
        untracked=list(untracked), lock_file=text(env, "lock_file", "provenance.environment", "none"),
        environment=env, provenance=prov, single_values=dict(single_values or {}),
    )


def run_dir_json(run_dir: Path, name: str) -> dict[str, Any] | None:
    path = run_dir / name
    if not path.is_file():
        return None
    return safeyaml.load_json_object(safeyaml.read_bytes(path, MAX_MEMBER_BYTES, name), str(path))


def _from_run_dir(run_dir: Path) -> Record:
    info = run_dir_json(run_dir, "task.json") or {}
    task_id = _text(info.get("task_id"), f"{run_dir / 'task.json'}: task_id") or None
    if task_id:
        try:
            return load_record(task_id)
        except RecordNotFound:
            pass  # the session is gone (or on a server we cannot reach): fall back to the run directory
    return run_dir_record(run_dir)


def run_dir_record(run_dir: Path) -> Record:
    """The record a run directory holds itself (provenance.json, the run document), whatever task it names."""
    info = run_dir_json(run_dir, "task.json") or {}
    task_id = _text(info.get("task_id"), f"{run_dir / 'task.json'}: task_id") or None
    if not (run_dir / "config.yaml").is_file():
        raise RecordNotFound(f"{run_dir} is not a run directory (no config.yaml)")
    prov = run_dir_json(run_dir, "provenance.json") or {}
    metrics = run_dir_json(run_dir, "metrics.json")
    diff_file = run_dir / "git.diff"
    diff = safeyaml.read_bytes(diff_file, MAX_MEMBER_BYTES, "diff").decode("utf-8", "replace") if diff_file.is_file() else ""
    code = record_mapping(prov.get("code"), f"{run_dir / 'provenance.json'}: code")
    script = {"diff": diff, "version_num": _text(code.get("commit"), f"{run_dir / 'provenance.json'}: code.commit")}
    timing = run_dir_json(run_dir, "timing.json") or {}
    single_values = {}
    if "train_seconds" in timing:
        if not _finite_number(timing["train_seconds"]):
            raise ConfigError(f"{run_dir / 'timing.json'}: train_seconds is not a number; the run directory is damaged")
        single_values["train_seconds"] = float(timing["train_seconds"])
    offline_zip = _text(info.get("offline_zip"), f"{run_dir / 'task.json'}: offline_zip") or None
    return _record(task_id, run_spec.run_dir_config(run_dir), metrics, prov, script,
                   "completed" if metrics else "incomplete", offline_zip, str(run_dir), single_values=single_values)


def _from_server(task_id: str) -> Record:
    # Exercised against a real server: no (none can run on this machine); tests drive it with a
    # stand-in Task object that answers the same calls.
    from clearml import Task

    Task.set_offline(False)  # a run recorded offline earlier in this process left ClearML offline: the server holds this one
    try:
        task = Task.get_task(task_id=task_id)
    except ValueError as err:
        raise RecordNotFound(f"task {task_id} not found on the ClearML server ({err})") from None
    return task_record(task)


def task_record(task: Any) -> Record:
    """The record a ClearML task object holds (its run document, else its RunConfig object and script)."""
    text = task.get_configuration_object(CONFIG_OBJECT)
    if not text:
        raise RecordNotFound(f"task {task.id} holds no {CONFIG_OBJECT}; it was not recorded by reprozoo train")
    prov_text = task.get_configuration_object(PROVENANCE_OBJECT)
    metrics = None
    if "metrics" in task.artifacts:
        local = task.artifacts["metrics"].get_local_copy()
        metrics = safeyaml.load_json_object(safeyaml.read_bytes(local, MAX_MEMBER_BYTES, "metrics artifact"),
                                            f"task {task.id} metrics artifact") if local else None
    script = task.data.script
    script_dict = {"repository": script.repository, "branch": script.branch, "version_num": script.version_num,
                   "diff": script.diff or ""}
    single = getattr(task, "get_reported_single_values", None)  # clearml >= 1.x Task API
    return _record(task.id, _config_from_text(text, f"task {task.id} {CONFIG_OBJECT}"), metrics,
                   _parse_config_text(prov_text, f"task {task.id} {PROVENANCE_OBJECT}") if prov_text else {},
                   script_dict, str(task.get_status()), None,
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
        except UserError:
            continue  # dataset sessions, other projects' tasks, damaged sessions
    return records


def list_server(project: str | None, limit: int = 50) -> list[Record]:
    from clearml import Task

    Task.set_offline(False)  # as in _from_server
    tasks = Task.get_tasks(project_name=project, task_filter={"type": ["training"], "order_by": ["-last_update"],
                                                              "page_size": limit, "page": 0})
    records = []
    for task in tasks:
        try:
            records.append(task_record(task))
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
    with zipfile.ZipFile(zip_path) as archive:  # refused here, before ClearML unpacks anything
        unsafe = [n for n in archive.namelist() if n.startswith(("/", "\\")) or ".." in Path(n).parts]
    if unsafe:
        raise ConfigError(f"{zip_path}: member {unsafe[0]!r} points outside the session (path traversal); refused, nothing imported")
    Task.set_offline(False)
    try:
        return Task.import_offline_session(str(zip_path), previous_task_id=previous), previous
    except ValueError as err:  # ClearML's own refusals ("Path traversal detected!", a missing task.json)
        raise ConfigError(f"{zip_path}: ClearML refused the session ({err}); nothing imported") from None


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
