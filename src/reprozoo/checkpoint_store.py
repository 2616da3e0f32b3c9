"""A server-tracked run's resume checkpoints in its task's storage, so that it survives its machine.

Each `last.ckpt` the run writes is uploaded, in a thread of its own, to the task's `output_uri`
(by default the fileserver) under a name of its own (`last-step00000040-<sha256 prefix>.ckpt`),
with the best checkpoint its state names (weights only; sent again only when it changed): a run
resumed elsewhere scores the same best checkpoint as the run uninterrupted. Only once both uploads
have completed does the task's `resume-checkpoint` artifact point at them, with step, sha256 and
size: a half-uploaded checkpoint is never the one resumed, and a resume refuses a file whose sha256
is not the recorded one. The latest `KEEP_STORED` uploads stay in storage; when
the task completes they are removed unless `trainer.keep_last_checkpoint` keeps them. The artifact
also lists what is in storage, so that a resumed process (here or on another machine) takes over
their removal.

Uploads never hold training: a newer checkpoint replaces one still waiting, and a failed upload
(the fileserver down) is retried until it succeeds or a newer checkpoint supersedes it. Every
attempt is listed in the run directory's `checkpoint-uploads.json` and, at the end, in `task.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reprozoo import provenance, run_spec
from reprozoo.config import RunConfig
from reprozoo.errors import UserError
from reprozoo.log import log
from reprozoo.records import Record
from reprozoo.weights import sha256_file

ARTIFACT = "resume-checkpoint"  # the task's pointer at its last complete upload
RECORD = "checkpoint-uploads.json"  # in the run directory: every upload and where it got
KEEP_STORED = 2  # the checkpoint the pointer names, and the one before it (a resume may be reading it)
RETRY_SECONDS = (2.0, 5.0, 15.0, 30.0, 60.0)  # then every 60 s, until a newer checkpoint supersedes it
STAGING = ".upload"  # checkpoints/.upload/: hard links to the files being uploaded


class StorageError(UserError, RuntimeError):
    """A checkpoint in the task's storage cannot be read, or is not the one recorded."""


@dataclass
class StoredFile:
    name: str  # its name in the run's checkpoints/ folder
    url: str
    sha256: str
    bytes: int


@dataclass
class StoredCheckpoint:
    step: int
    url: str
    sha256: str
    bytes: int
    best: StoredFile | None = None  # the best checkpoint its state names, when there was one


def storage_root(task: Any) -> str:
    """Where a task's checkpoints go: its output_uri, else the fileserver (what its artifacts use)."""
    destination = task.output_uri or task.get_logger().get_default_upload_destination()
    return f"{str(destination).rstrip('/')}/{task.get_project_name()}/{task.name}.{task.id}/checkpoints"


class CheckpointUploader:
    """Uploads the run's resume checkpoints as they are written (see the module's docstring).

    `offer` is called by the checkpoint writer once a `last.ckpt` is on disk; `close` waits (bounded)
    for the upload in flight when the run ends or is preempted; `remove_stored` applies retention."""

    def __init__(self, task: Any, run_dir: Path, keep: int = KEEP_STORED,
                 retry_seconds: tuple[float, ...] = RETRY_SECONDS) -> None:
        self.task, self.run_dir, self.keep, self.retry_seconds = task, run_dir, keep, retry_seconds
        self.root = storage_root(task)
        self.staging = run_dir / "checkpoints" / STAGING
        self.attempts: list[dict[str, Any]] = []  # every checkpoint offered: stored, superseded or failed
        # In storage now, oldest first: a resumed run's include what the interrupted process stored.
        self.stored: list[StoredCheckpoint] = stored_by_task(task, self.root)
        self._pending: tuple[Path, int, Path | None] | None = None
        self._busy = False
        self._closing = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- the writer's side ---------------------------------------------------------------------------
    def offer(self, path: Path, step: int, best: Path | None = None) -> None:
        """`path` (just written, complete) is the newest checkpoint, `best` the best checkpoint its state
        names: upload them, replacing any not yet started."""
        self.staging.mkdir(parents=True, exist_ok=True)
        link = self._staged(path, f"last-step{step:08d}.ckpt")
        best_link = self._staged(best, f"step{step:08d}-{best.name}") if best is not None else None
        with self._condition:
            self._drop_pending("superseded before its upload started")
            self._pending = (link, step, best_link)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reprozoo-checkpoint-upload", daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def close(self, timeout: float, drop_pending: bool = False) -> dict[str, Any]:
        """Waits up to `timeout` s for the pending upload (a preempted run's last checkpoint matters
        most), then stops; what reached the storage, for the record. `drop_pending`: a checkpoint not
        yet sent is not sent, and a failing one not retried (a completed task's are removed anyway)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            if drop_pending:
                self._closing = True
                self._drop_pending("not uploaded: the task completed")
            while (self._pending is not None or self._busy) and time.monotonic() < deadline:
                self._condition.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            self._closing = True
            self._drop_pending(f"not uploaded: the run ended and {timeout:.0f} s passed")
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        with contextlib.suppress(OSError):
            self.staging.rmdir()
        return self.summary()

    def _staged(self, path: Path, name: str) -> Path:
        link = self.staging / name
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)  # last.ckpt is replaced by rename, a best file removed: the link keeps this one
        except OSError:
            shutil.copyfile(path, link)
        return link

    def _drop_pending(self, why: str) -> None:
        """The checkpoint waiting for the upload thread will not be sent (called holding the condition)."""
        if self._pending is not None:
            self._note(self._pending[1], why)
            for staged in (self._pending[0], self._pending[2]):
                if staged is not None:
                    staged.unlink(missing_ok=True)
            self._pending = None

    def summary(self) -> dict[str, Any]:
        return {"storage": self.root, "stored": [asdict(s) for s in self.stored], "attempts": list(self.attempts)}

    def remove_stored(self) -> None:
        """Retention: the task completed, its resume checkpoints are dead weight in storage."""
        for stored in list(self.stored):
            self._delete(stored.url)
        for url in {s.best.url for s in self.stored if s.best is not None}:
            self._delete(url)
        self.stored.clear()
        # ClearML's artifact manager re-sends every artifact it registered with each new upload
        # (Artifacts._task_artifact_list): deleted on the server alone, the pointer would come back.
        listed = getattr(getattr(self.task, "_artifacts_manager", None), "_task_artifact_list", None)
        if isinstance(listed, list):
            listed[:] = [a for a in listed if getattr(a, "key", None) != ARTIFACT]
        with contextlib.suppress(Exception):
            self.task.delete_artifacts([ARTIFACT], raise_on_errors=False, delete_from_storage=False, silent_on_errors=True)
        self._write_record()

    # -- the upload thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._condition:
                while self._pending is None and not self._closing:
                    self._condition.wait()
                if self._pending is None:
                    return
                (link, step, best_link), self._pending, self._busy = self._pending, None, True
            try:
                self._upload(link, step, best_link)
            except Exception as err:  # never the training's problem: recorded, and the next one tries again
                self._note(step, f"failed: {type(err).__name__}: {err}")
            finally:
                link.unlink(missing_ok=True)
                if best_link is not None:
                    best_link.unlink(missing_ok=True)
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _upload(self, link: Path, step: int, best_link: Path | None) -> None:
        started, attempts = time.monotonic(), [0]
        best = None
        if best_link is not None:
            name = best_link.name.split("-", 1)[1]  # step00000040-best-0-39.ckpt → best-0-39.ckpt
            sha256 = sha256_file(best_link)
            previous = next((s.best for s in reversed(self.stored) if s.best is not None), None)
            if previous is not None and previous.name == name and previous.sha256 == sha256:
                best = previous  # unchanged since the last upload: not sent again
            else:
                url = f"{self.root}/{Path(name).stem}-{sha256[:12]}.ckpt"
                if not self._send(best_link, url, step, attempts):
                    return
                best = StoredFile(name=name, url=url, sha256=sha256, bytes=best_link.stat().st_size)
        sha256, size = sha256_file(link), link.stat().st_size
        url = f"{self.root}/last-step{step:08d}-{sha256[:12]}.ckpt"
        if not self._send(link, url, step, attempts):
            if best is not None and not self._names(best.url):
                self._delete(best.url)  # sent for this checkpoint alone: nothing names it now
            return
        stored = StoredCheckpoint(step=step, url=url, sha256=sha256, bytes=size, best=best)
        # The pointer moves only now, to complete uploads; it lists what storage holds once the older ones go.
        metadata = {"step": str(step), "sha256": sha256, "bytes": str(size),
                    "stored": json.dumps([asdict(s) for s in [*self.stored, stored][-self.keep:]])}
        if best is not None:
            metadata.update(best_name=best.name, best_url=best.url, best_sha256=best.sha256, best_bytes=str(best.bytes))
        self.task.upload_artifact(ARTIFACT, artifact_object=url, wait_on_upload=True, metadata=metadata)
        self.stored.append(stored)
        self._note(step, "stored", url=url, sha256=sha256, bytes=size, attempts=attempts[0],
                   seconds=round(time.monotonic() - started, 3), **({"best_url": best.url} if best is not None else {}))
        while len(self.stored) > self.keep:
            dropped = self.stored.pop(0)
            self._delete(dropped.url)
            if dropped.best is not None and not self._names(dropped.best.url):
                self._delete(dropped.best.url)
        self._write_record()

    def _names(self, best_url: str) -> bool:
        """Whether a checkpoint kept in storage names this best checkpoint."""
        return any(s.best is not None and s.best.url == best_url for s in self.stored)

    def _send(self, path: Path, url: str, step: int, attempts: list[int]) -> bool:
        """Uploads `path` to `url`, retrying; False (noted) once a newer checkpoint or the run's end stops it."""
        from clearml import StorageManager

        for attempt in range(1 << 30):
            attempts[0] += 1
            try:
                StorageManager.upload_file(str(path), url, wait_for_upload=True, retries=1)
                return True
            except Exception as err:
                wait = self.retry_seconds[min(attempt, len(self.retry_seconds) - 1)]
                log.warning(f"checkpoint upload to {url} failed ({type(err).__name__}: {err}); retrying in {wait:.0f} s")
                with self._condition:
                    self._condition.wait_for(lambda: self._pending is not None or self._closing, timeout=wait)
                    if self._pending is not None or self._closing:
                        why = "superseded by a newer checkpoint" if self._pending is not None else "the run ended first"
                        self._note(step, f"failed {attempt + 1} time(s) ({type(err).__name__}), then {why}", url=url)
                        return False
        return False

    def _delete(self, url: str) -> None:
        from clearml.storage.helper import StorageHelper

        try:
            StorageHelper.get(url).delete(url, silent=True)
        except Exception as err:
            log.warning(f"could not remove {url} from storage ({type(err).__name__}: {err}); it stays there")

    def _note(self, step: int, status: str, **fields: Any) -> None:
        self.attempts.append({"step": step, "status": status, **fields})
        self._write_record()

    def _write_record(self) -> None:
        with contextlib.suppress(OSError):  # the record of uploads must never fail the run
            tmp = self.run_dir / f".{RECORD}.tmp"
            tmp.write_text(json.dumps(self.summary(), indent=2) + "\n")
            os.replace(tmp, self.run_dir / RECORD)


# --- the resuming side ----------------------------------------------------------------------------
MAX_STORED_LIST = 64 * 1024  # characters of the artifact's `stored` list: it is read from the server


def stored_by_task(task: Any, root: str) -> list[StoredCheckpoint]:
    """What the task's `resume-checkpoint` artifact says is in its storage (an interrupted process's
    uploads), oldest first; only files under `root`, this task's own checkpoint folder: the list is
    server metadata, and whatever it names is deleted at completion."""
    artifacts = getattr(task, "artifacts", None) or {}
    artifact = artifacts.get(ARTIFACT)
    if artifact is None:
        return []
    listed = (artifact.metadata or {}).get("stored")
    if not isinstance(listed, str) or len(listed) > MAX_STORED_LIST:
        try:
            latest = latest_stored(task)  # written before the list existed: the one it points at
        except StorageError:
            return []
        return [latest] if latest is not None and latest.url.startswith(f"{root}/") else []
    found = []
    try:
        for entry in json.loads(listed):
            best = entry.get("best")
            checkpoint = StoredCheckpoint(step=int(entry["step"]), url=str(entry["url"]), sha256=str(entry["sha256"]),
                                          bytes=int(entry["bytes"]),
                                          best=StoredFile(name=Path(str(best["name"])).name, url=str(best["url"]),
                                                          sha256=str(best["sha256"]), bytes=int(best["bytes"])) if best else None)
            urls = [checkpoint.url] + ([checkpoint.best.url] if checkpoint.best else [])
            if all(url.startswith(f"{root}/") and ".." not in url for url in urls):
                found.append(checkpoint)
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning(f"task {task.id}: its {ARTIFACT} artifact lists its stored checkpoints unreadably; those stay in storage")
        return []
    return found

def latest_stored(task: Any) -> StoredCheckpoint | None:
    """The checkpoint a task's `resume-checkpoint` artifact names (its last complete upload), or None."""
    artifact = task.artifacts.get(ARTIFACT) if task.artifacts else None
    if artifact is None:
        return None
    meta = artifact.metadata or {}
    try:
        best = None
        if meta.get("best_url"):
            name = Path(str(meta["best_name"])).name  # a file name only: the record is another machine's
            if not name.endswith(".ckpt") or name in (".ckpt", "last.ckpt"):
                raise ValueError(name)
            best = StoredFile(name=name, url=str(meta["best_url"]), sha256=str(meta["best_sha256"]),
                              bytes=int(meta["best_bytes"]))
        return StoredCheckpoint(step=int(meta["step"]), url=str(artifact.url), sha256=str(meta["sha256"]),
                                bytes=int(meta["bytes"]), best=best)
    except (KeyError, TypeError, ValueError):
        raise StorageError(f"task {task.id}: its {ARTIFACT} artifact has no step, sha256 and bytes; it was not written by"
                           " reprozoo, and cannot be resumed from") from None


def download(stored: StoredCheckpoint | StoredFile, target: Path, server: str) -> Path:
    """`stored` into `target` (atomically), its sha256 checked against the record."""
    from clearml import StorageManager

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.download")
    partial.unlink(missing_ok=True)
    # Through ClearML's cache, then moved out of it: its download_to_file(url, local_path) left no file
    # at local_path when the cache's disk-space strategy is on (as on a clearml-agent), silently.
    reason = "no answer, or no such file"
    try:
        cached = StorageManager.get_local_copy(stored.url, extract_archive=False, force_download=True)
        if cached:
            shutil.move(cached, partial)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
    if not partial.is_file():
        raise StorageError(f"cannot download the checkpoint {stored.url} from {server} ({reason}); start the server's"
                           " fileserver, or set CLEARML_FILES_HOST to where it is, then resume again")
    sha256 = sha256_file(partial)
    if sha256 != stored.sha256:
        partial.unlink(missing_ok=True)
        raise StorageError(f"the checkpoint {stored.url} has sha256 {sha256[:16]}…, not the {stored.sha256[:16]}… its task"
                           " recorded: refused (it was changed or damaged in storage); resume from an intact copy")
    os.replace(partial, target)
    return target


def fetch_run(task: Any, record: Record, run_dir: Path) -> RunConfig:
    """A run directory to resume `task` in, on a machine that has none of it: the recorded RunConfig
    writing into `run_dir` (pinned to the recorded weights, and to the recorded data version when its
    data directory is not here), provenance.json and git.diff as recorded (what the resume checks the
    code, data, weights and software against), and checkpoints/last.ckpt with the best checkpoint it
    names from storage, sha256-checked."""
    from urllib.parse import urlsplit

    from reprozoo.resume import LAST

    stored = latest_stored(task)
    if stored is None:
        raise StorageError(f"task {task.id} has no checkpoint in its storage (no {ARTIFACT} artifact: it recorded offline,"
                           " or stopped before its first checkpoint was uploaded); resume it where it ran with"
                           " `reprozoo train --resume RUN_DIR`, or train it again")
    data_dir = record.config.data.data_dir
    if record.dataset_id and not (data_dir and Path(data_dir).is_dir()):
        where = run_spec.Where(out_dir=str(run_dir), data_dir=None, dataset_id=record.dataset_id)
    else:
        where = run_spec.Where(out_dir=str(run_dir))
    cfg = run_spec.executable(record.config, record.model_revision, where)
    parts = urlsplit(stored.url)
    if stored.best is not None:
        download(stored.best, run_dir / "checkpoints" / stored.best.name, f"{parts.scheme}://{parts.netloc}")
    download(stored, run_dir / "checkpoints" / LAST, f"{parts.scheme}://{parts.netloc}")
    (run_dir / "provenance.json").write_text(json.dumps(record.provenance, indent=2) + "\n")
    if record.diff:
        (run_dir / "git.diff").write_text(record.diff)
    (run_dir / "config.yaml").write_text(provenance.redact(cfg.to_yaml()))
    log.warning(f"resuming task {task.id} from its checkpoint at step {stored.step} ({stored.url}) in {run_dir}")
    return cfg
