"""SST-5 versions as ClearML Datasets (project `<the run's project>/datasets`, name `sst5`), keyed by content.

A version's identity is the sha256 of its three files: registering the same content twice gives
the same dataset id; different content gives a new version whose parent is the latest one.

Server: a real ClearML Dataset (files uploaded, finalized, tagged `content:<hash>`), found again
with `Dataset.get(..., dataset_tags=[...])` and fetched with `get_local_copy()`.

Offline (verified with clearml 2.1.12): `Dataset.create` + `add_files` + `upload` work and leave an
offline session (task.json + state.json with each file's hash), but the files themselves are NOT
stored, `finalize()` refuses ("Cannot finalize dataset in offline mode"), and `Dataset.get` /
`list_datasets` cannot run. So reprozoo keeps, beside the ClearML session, a local index (content
hash → dataset id, parent) and a content-addressed copy of the three files under
`$REPROZOO_CACHE_DIR/datasets/`; `--dataset-id offline-…` resolves through them on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reprozoo import session
from reprozoo.cache import cache_root
from reprozoo.config import ConfigError
from reprozoo.data.sst5 import SPLITS, DataSourceError, data_fingerprint, resolve_data_dir

DEFAULT_PROJECT = "reprozoo"  # RunConfig's tracking.project
NAME = "sst5"
# The dataset task's entry point, instead of the command line ClearML would record there (it may hold a secret).
DATASET_ENTRY_POINT = "reprozoo data version"


def dataset_project(project: str) -> str:
    """Where a project's data versions live: each project finds, reuses and derives its own."""
    return f"{project}/datasets"


@dataclass
class DataVersion:
    dataset_id: str
    content_hash: str
    sha256: dict[str, str]
    parent: str | None
    path: str  # a local folder holding exactly these three files
    mode: str  # offline | server
    created: bool = False  # registered by this call (False: the same content was already there)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def content_hash(sha256: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{split}:{sha256[split]}\n" for split in SPLITS).encode()).hexdigest()


def store_root() -> Path:
    return cache_root() / "datasets"


@contextlib.contextmanager
def _locked_index() -> Iterator[dict[str, Any]]:
    """The offline index, under an exclusive lock (two trainings may register at once)."""
    root = store_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = root / "index.json"
        index = json.loads(path.read_text()) if path.is_file() else {"versions": []}
        before = json.dumps(index, sort_keys=True)
        yield index
        if json.dumps(index, sort_keys=True) != before:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(index, indent=2) + "\n")
            tmp.replace(path)


def _read_index() -> dict[str, Any]:
    path = store_root() / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {"versions": []}


def _store_copy(data_dir: Path, digest: str) -> Path:
    """A content-addressed copy of the three files (what an offline --dataset-id trains on)."""
    target = store_root() / digest
    if all((target / f"{split}.txt").is_file() for split in SPLITS):
        return target
    tmp = store_root() / f".{digest}.{time.time_ns()}.tmp"
    tmp.mkdir(parents=True)
    for split in SPLITS:
        shutil.copyfile(data_dir / f"{split}.txt", tmp / f"{split}.txt")
    try:
        tmp.replace(target)
    except OSError:  # another process stored it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def register(data_dir: Path, mode: str, project: str = DEFAULT_PROJECT) -> DataVersion:
    """Look up or create the dataset version of `project` holding exactly the files in data_dir."""
    sha256 = data_fingerprint(data_dir)
    digest = content_hash(sha256)
    if mode == "server":
        return _register_server(data_dir, sha256, digest, dataset_project(project))
    if mode != "offline":
        raise ValueError(f"data versions are recorded offline or on a server, not in mode {mode!r}")
    with _locked_index() as index:
        for entry in index["versions"]:
            if entry["content_hash"] == digest:
                path = _store_copy(data_dir, digest)
                return DataVersion(entry["dataset_id"], digest, sha256, entry["parent"], str(path), "offline")
        parent = index["versions"][-1]["dataset_id"] if index["versions"] else None
        path = _store_copy(data_dir, digest)
        dataset_id, session = _create_offline_dataset(path, digest, parent, dataset_project(project))
        index["versions"].append({"dataset_id": dataset_id, "content_hash": digest, "sha256": sha256, "parent": parent,
                                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "source_dir": str(data_dir), "offline_session": session})
    return DataVersion(dataset_id, digest, sha256, parent, str(path), "offline", created=True)


def _tags(digest: str, parent: str | None) -> list[str]:
    return [f"content:{digest}"] + ([f"parent:{parent}"] if parent else [])


def _create_offline_dataset(path: Path, digest: str, parent: str | None, project: str) -> tuple[str, str]:
    from clearml import Dataset, Task

    env_before = session.clearml_env()
    # Not restored afterwards: going back online needs a configured server (MissingConfigError),
    # and an offline registration happens only in an offline run.
    Task.set_offline(True)
    # parent_datasets is not passed: ClearML resolves parents with Dataset.get, which cannot run
    # offline. The lineage lives in our index and in a `parent:<id>` tag instead.
    dataset = Dataset.create(dataset_project=project, dataset_name=NAME, dataset_tags=_tags(digest, parent),
                             description=f"SST-5 PTB trees, content sha256 {digest}")
    task = dataset._task  # no public way to reach or close a dataset's task; closing writes its session zip
    # ClearML (2.1.12) fills task.data.script only online and add_files appends to script.diff: offline it
    # raises AttributeError unless repo detection has set a script, so wait for it, else set an empty one.
    task._wait_for_repo_detection(timeout=30)
    if task.data.script is None:
        from clearml.backend_api.services import tasks as tasks_api

        task.data.script = tasks_api.Script(diff="", working_dir=".")
    if task.data.script.diff is None:
        task.data.script.diff = ""
    task.data.script.entry_point = DATASET_ENTRY_POINT
    with contextlib.redirect_stderr(io.StringIO()):  # ClearML's hashing progress bar
        dataset.add_files(str(path), verbose=False)
    dataset.upload(show_progress=False)
    folder = task.get_offline_mode_folder()
    task.close()
    session.restore_clearml_env(env_before)
    return dataset.id, str(folder)


def _parent(dataset: Any) -> str | None:
    """The version a server dataset was derived from (clearml 2.1.12's Dataset has no get_parents;
    its dependency graph maps each id to its parents' ids)."""
    return (dataset.get_dependency_graph().get(dataset.id) or [None])[0]


def _register_server(data_dir: Path, sha256: dict[str, str], digest: str, project: str) -> DataVersion:
    # Exercised against a real ClearML server in tests/server.
    from clearml import Dataset

    try:
        found = Dataset.get(dataset_project=project, dataset_name=NAME, dataset_tags=[f"content:{digest}"], only_completed=True)
        return DataVersion(found.id, digest, sha256, _parent(found), str(data_dir), "server")
    except ValueError:
        pass
    try:
        latest = Dataset.get(dataset_project=project, dataset_name=NAME, only_completed=True)
    except ValueError:
        latest = None
    parent = latest.id if latest else None
    path = _store_copy(data_dir, digest)  # exactly the three files: sync_folder mirrors the folder
    dataset = Dataset.create(dataset_project=project, dataset_name=NAME, parent_datasets=[parent] if parent else None,
                             dataset_tags=_tags(digest, parent), description=f"SST-5 PTB trees, content sha256 {digest}")
    task = dataset._task  # no public way to reach a dataset's task
    task._wait_for_repo_detection(timeout=30)
    task.set_script(entry_point=DATASET_ENTRY_POINT)
    dataset.sync_folder(str(path), verbose=False)
    dataset.upload(show_progress=False)
    dataset.finalize()
    return DataVersion(dataset.id, digest, sha256, parent, str(path), "server", created=True)


def resolve(dataset_id: str) -> DataVersion:
    """The local folder holding exactly that version, its files verified against the record."""
    for entry in _read_index()["versions"]:
        if entry["dataset_id"] == dataset_id:
            path = store_root() / entry["content_hash"]
            if not all((path / f"{split}.txt").is_file() for split in SPLITS):
                raise DataSourceError(f"dataset {dataset_id}: its files are gone from {path}; run `reprozoo data version"
                                      f" --data-dir DIR` on the original trees to restore them")
            _verify(path, entry["sha256"], dataset_id)
            return DataVersion(dataset_id, entry["content_hash"], entry["sha256"], entry["parent"], str(path), "offline")
    if dataset_id.startswith("offline-") or not session.server_configured():
        raise DataSourceError(f"dataset {dataset_id} is not in this machine's offline index ({store_root() / 'index.json'})"
                              " and no ClearML server is configured; run `reprozoo data version` here or configure the server")
    from clearml import Dataset

    try:
        dataset = Dataset.get(dataset_id=dataset_id)
    except ValueError as err:
        raise DataSourceError(f"dataset {dataset_id} not found on the ClearML server ({err}); check the id with"
                              " `clearml-data search --ids ID`") from None
    path = Path(dataset.get_local_copy())
    sha256 = data_fingerprint(path)
    tags = [t for t in dataset.tags if t.startswith("content:")]
    if tags and tags[0] != f"content:{content_hash(sha256)}":
        raise DataSourceError(f"dataset {dataset_id}: fetched files do not match its content tag; the local copy at {path} is corrupt")
    return DataVersion(dataset_id, content_hash(sha256), sha256, _parent(dataset), str(path), "server")


def server_version(dataset_id: str, sha256: dict[str, str], project: str = DEFAULT_PROJECT) -> str:
    """The configured server's dataset id for the content that version `dataset_id` holds (`sha256`,
    the record's): an `offline-…` id means nothing off the machine that recorded it. Found by its
    content tag, else uploaded from this machine's verified copy of that content."""
    digest = content_hash(sha256)
    local = next((e for e in _read_index()["versions"] if e["content_hash"] == digest), None)
    if local is not None:
        return register(Path(resolve(local["dataset_id"]).path), "server", project).dataset_id  # found or uploaded
    from clearml import Dataset

    try:
        return Dataset.get(dataset_project=dataset_project(project), dataset_name=NAME, dataset_tags=[f"content:{digest}"],
                           only_completed=True).id
    except ValueError:
        raise DataSourceError(f"data version {dataset_id} (content {digest[:12]}) is neither on the ClearML server nor on this"
                              " machine; register the same trees on the server with `reprozoo data version --tracking server"
                              " --data-dir DIR`, then enqueue again") from None


def _verify(path: Path, expected: dict[str, str], dataset_id: str) -> None:
    actual = data_fingerprint(path)
    bad = [split for split in SPLITS if actual[split] != expected[split]]
    if bad:
        raise DataSourceError(f"dataset {dataset_id}: {', '.join(bad)} changed on disk in {path} (sha256 mismatch);"
                              " delete that folder and run `reprozoo data version` on the original trees")


def register_trees(data_dir: str | None, tracking: str = "auto", project: str = DEFAULT_PROJECT) -> DataVersion:
    """`reprozoo data version`: register the trees in data_dir (default $REPROZOO_DATA_DIR) in the
    mode `tracking` resolves to (auto: the server when one is configured, else offline)."""
    from reprozoo.session import configure_clearml, resolve_mode

    if tracking not in ("auto", "offline", "server"):
        raise ConfigError(f"--tracking {tracking!r}: a data version is recorded offline or on a server; use auto, offline or server")
    path = resolve_data_dir(data_dir)
    mode = resolve_mode(tracking)
    configure_clearml()
    return register(path, mode, project)
