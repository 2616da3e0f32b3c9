"""One run, one directory: a run directory is checked before anything is opened, then claimed (created,
flock'ed) for the run's life, so two runs never write into one; and which task a run directory reports to."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from reprozoo import safeyaml
from reprozoo.config import ConfigError
from reprozoo.errors import UserError


def recorded_task_id(run_dir: Path) -> str | None:
    """The task a run directory reports to: task.json (closed or stopped), else provenance.json (killed)."""
    for name in ("task.json", "provenance.json"):
        path = run_dir / name
        if path.is_file():
            with contextlib.suppress(UserError):
                task_id = safeyaml.load_json_object(safeyaml.read_bytes(path, 1 << 20, name), str(path)).get("task_id")
                if isinstance(task_id, str) and task_id:
                    return task_id
    return None


def check_run_dir(run_dir: Path, *, explicit: bool, overwrite: bool, resuming: bool) -> None:
    """Before anything is opened: --out is a directory this user can write, and holds no other run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a directory; choose another --out")
    if (run_dir / "metrics.json").exists() and not overwrite and not resuming:
        raise ConfigError(f"{run_dir} already holds a finished run; pass --overwrite or choose another --out")
    if explicit and (run_dir / "config.yaml").exists() and not overwrite and not resuming:
        raise ConfigError(f"{run_dir} holds an interrupted run (config.yaml, no metrics.json): continue it with"
                          f" `reprozoo train --resume {run_dir}`, start over with --overwrite, or choose another --out")
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {run_dir} ({existing} is not writable by uid {os.getuid()}); pass a writable --out"
                          " (`reprozoo image run`: make --runs-dir writable by the image's user, `chown 10001:10001 DIR`)")


@contextlib.contextmanager
def claimed_run_dir(run_dir: Path, *, explicit: bool, overwrite: bool, resume: bool, worker: bool) -> Iterator[Path]:
    """One run, one directory: create `run_dir` and hold an exclusive lock on it while the run lives;
    yields the directory claimed, which the run then uses (`explicit`: it is --out, else a default name).

    A default (timestamped) name gets a suffix when another run started in the same second; an
    explicit --out that a live run holds is a one-line error naming it. The lock is flock(2) on the
    directory itself (released by the kernel when the process dies, so a kill -9 leaves nothing
    stale). DDP workers train into rank 0's directory and take no lock. A run that fails before
    writing anything leaves no directory behind."""
    import fcntl

    created = not run_dir.exists()
    try:
        if not explicit and not worker:
            run_dir = _new_run_dir(run_dir)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the run directory {run_dir}: {err.strerror or err}; choose a writable --out") from None
    if worker:
        yield run_dir
        return
    handle = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            task = recorded_task_id(run_dir)
            raise ConfigError(f"{run_dir} is in use by a live run{f' (task {task})' if task else ''}; wait for it to end,"
                              " or choose another --out") from None
        if overwrite and not resume:
            for child in run_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        try:
            yield run_dir
        except BaseException:
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise
    finally:
        os.close(handle)  # releases the lock


def _new_run_dir(run_dir: Path) -> Path:
    """A fresh directory: `run_dir`, else `run_dir-2`, `-3`, … (concurrent runs never share one)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = run_dir if n == 1 else run_dir.with_name(f"{run_dir.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"{run_dir}: too many runs with this name; pass --out DIR")
