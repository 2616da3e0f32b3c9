"""Several devices in one run (DDP): how ranks > 0 are told what to train (rank 0's resolved run,
never their own command line), and how a process tells it is one of them."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from reprozoo import provenance, run_spec
from reprozoo.config import RunConfig

# Lightning's DDP launcher starts one process per further device by running a command line again.
# That line would be this process's own: `-m reprozoo train` on an agent (the default RunConfig,
# not the task's), the whole `sweep` or `hpo` in every rank. Rank 0 hands them its resolved run
# instead: `reprozoo train --config <run dir>/DDP_WORKER_SPEC`, whose out_dir is rank 0's run
# directory and whose tracking is off: those processes train into it, and only train.
DDP_RESUME_ENV = "REPROZOO_DDP_RESUME_FROM"  # the checkpoint rank 0 resumes from: every rank loads that one
DDP_WORKER_SPEC = "ddp-worker.yaml"
DDP_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")  # set by it in rank 0


def ddp_worker() -> bool:
    """Whether this process is a DDP rank other than 0, started by Lightning's launcher."""
    return any(int(os.environ.get(name) or 0) > 0 for name in ("LOCAL_RANK", "NODE_RANK"))


def as_ddp_worker(cfg: RunConfig) -> RunConfig:
    """A rank > 0 records nothing, whatever config started it: one task per run."""
    return run_spec.executable(cfg, None, run_spec.Where(tracking="off"))


def ddp_worker_config(cfg: RunConfig, data_dir: Path, weights_revision: str, run_dir: Path) -> RunConfig:
    """What ranks > 0 train: rank 0's config `cfg` as it resolved it (the task's on an agent), on the
    very trees and weights rank 0 checked (its data directory, the weights' revision), into its run
    directory, recording nothing."""
    where = run_spec.Where(out_dir=str(run_dir.resolve()), data_dir=str(data_dir.resolve()), dataset_id=None, tracking="off")
    return run_spec.executable(cfg, weights_revision, where)


@contextlib.contextmanager
def ddp_workers_run(cfg: RunConfig, data_dir: Path, weights_revision: str, run_dir: Path,
                    resume_from: str | None) -> Iterator[Path]:
    """Rank 0's fit and scoring with several devices. Lightning's launcher starts ranks > 0 with
    `reprozoo train --config <spec>` (ddp_worker_config's, written in the run directory, removed
    afterwards), resuming from rank 0's checkpoint when it does.
    Afterwards the process is as before it: the launcher's DDP variables (LOCAL_RANK=0 would make the
    next run in this process, a sweep's or a search's, wait for ranks nobody starts) and the process
    group are gone."""
    import torch.distributed
    from lightning.pytorch.strategies.launchers import subprocess_script

    spec = run_dir / DDP_WORKER_SPEC
    spec.write_text(provenance.redact(ddp_worker_config(cfg, data_dir, weights_revision, run_dir).to_yaml()))
    command = [sys.executable, "-m", "reprozoo", "train", "--config", str(spec.resolve())]
    saved = {name: os.environ.get(name) for name in (*DDP_LAUNCHER_ENV, DDP_RESUME_ENV)}
    os.environ.pop(DDP_RESUME_ENV, None)
    if resume_from:
        os.environ[DDP_RESUME_ENV] = str(Path(resume_from).resolve())
    launcher_command = subprocess_script._basic_subprocess_cmd
    # The launcher's one way to build that command (lightning 2.6: a module function it calls per rank).
    subprocess_script._basic_subprocess_cmd = lambda: list(command)
    try:
        yield spec
    finally:
        subprocess_script._basic_subprocess_cmd = launcher_command
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        spec.unlink(missing_ok=True)
