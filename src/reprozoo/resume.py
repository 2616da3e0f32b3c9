"""Preemption-safe training: atomic checkpoints, a checkpoint on SIGTERM/SIGINT, and exact resume.

What a bit-identical resume needs beyond Lightning's own checkpoint (weights, optimiser,
scheduler, AMP scaler, loop progress, callback states):
- every RNG state (Python, NumPy, torch CPU and CUDA): dropout draws continue where they stopped;
- the sampler position inside the epoch: the resumed epoch skips exactly the batches done.
The data loader carries its position through Lightning's stateful-loader protocol
(`state_dict`/`load_state_dict`), the RNG states through a callback's state.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint
from torch.utils.data import DataLoader

from reprozoo.config import ConfigError, RunConfig
from reprozoo.errors import UserError
from reprozoo.log import log
from reprozoo.records import load_record

LAST = "last.ckpt"
PREVIOUS = "last.prev.ckpt"


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written; the previous one is intact."""


def atomic_torch_save(obj: object, path: Path, keep_previous: Path | None = None) -> None:
    """torch.save to a unique temporary file beside `path`, fsync, rename: a kill or a full disk
    mid-write never leaves a torn file, and concurrent writers never share a temporary file.
    `keep_previous`: move the file being replaced there first (the fallback of a corrupt one)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialise first: a failure past this point is a plain OSError
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints through `atomic_torch_save`; the previous `last.ckpt` is kept as `last.prev.ckpt`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        try:
            atomic_torch_save(checkpoint, path, keep_previous=path.with_name(PREVIOUS) if path.name == LAST else None)
        except OSError as err:
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {err.strerror or err}; free disk space or make the run directory"
                " writable, then resume with `reprozoo train --resume RUN_DIR` (the previous checkpoint is intact)"
            ) from None


class ResumableDataLoader(DataLoader):
    """A train loader that reports and restores its position within an epoch.

    `progress()` returns the batches processed in the current epoch (from the trainer's loop);
    after `load_state_dict`, the next iteration of that same epoch skips those batches.
    """

    def __init__(self, *args: Any, position: Any, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position, self.progress = position, progress  # the LengthGroupedSampler behind the batches

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.position.epoch), "batches_done": int(self.progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position.resume_at(state["epoch"], state["batches_done"])


class ResumeState(Callback):
    """Saves every RNG state with each checkpoint; on resume, puts back the RNG states and the
    train loader's position at the last moment before the first resumed step.

    Lightning 2.6 builds the train loader before it restores the loop state (for
    `estimated_stepping_batches`), so its own stateful-loader hand-off never reaches our loader;
    and it draws from the global RNG when it creates the loader's iterator. Hence both are
    applied here, from the checkpoint, just before the first resumed batch runs."""

    def __init__(self) -> None:
        self._rng: dict[str, Any] | None = None
        self._loader_states: list[dict[str, int]] = []

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # Plain types and tensors only: Lightning loads checkpoints with weights_only=True.
        state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = list(fit_state.get("combined_loader", []))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        loader = trainer.train_dataloader
        if self._loader_states and isinstance(loader, ResumableDataLoader):
            loader.load_state_dict(self._loader_states[0])  # the sampler draws at the first fetch, after this
        self._loader_states = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._rng is None:
            return
        state, self._rng = self._rng, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheckpoint(Checkpoint):
    """The one writer of `last.ckpt`, the checkpoint `train --resume` continues from.

    It writes only where Lightning's restart continues exactly:
    - at the end of each validation during fit (covers kill -9 at the default settings; the best
      checkpoint's and early stopping's states already include that validation);
    - every `every_n_steps` optimiser steps (`--checkpoint-every`);
    - on SIGTERM or SIGINT (Colab disconnects, spot preemption, Ctrl-C), then the run stops with
      `Preempted` and the CLI exits with 128 + signal number.
    Never between the batches of one gradient accumulation (the partial gradients are not in a
    checkpoint), and never after a batch that a validation follows: Lightning takes a checkpoint
    written there as past that validation and skips it on restart, so the resumed run would pick its
    best checkpoint from other evaluations. Such a write waits for the validation's end.
    A `Checkpoint` subclass so that Lightning runs it after the best-checkpoint `ModelCheckpoint`
    (listed before it) and after early stopping."""

    def __init__(self, checkpoint_dir: Path, every_n_steps: int = 0) -> None:
        self.checkpoint_dir, self.every_n_steps = checkpoint_dir, every_n_steps
        self.received: int | None = None
        self.trainer: Any = None
        self._previous: dict[int, Any] = {}

    @property
    def path(self) -> Path:
        return self.checkpoint_dir / LAST

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.trainer = trainer
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning registers its own SIGTERM handler after on_fit_start (composed with ours). Its
        # handler makes the loops raise SIGTERMException, a SystemExit with status 0, when the signal
        # lands during an evaluation: the run would stop without a checkpoint and "succeed". Ours alone
        # from here: the evaluation finishes and ends with a checkpoint.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signum
        launcher = self.trainer.strategy.launcher if self.trainer is not None else None
        if launcher is not None:
            launcher.kill(signum)  # DDP: the other ranks get the signal too (what Lightning's handler did)
        log.warning(f"received {signal.Signals(signum).name}; checkpointing after this optimiser step")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        if trainer.fast_dev_run or epoch_loop._should_accumulate():
            return
        due = self.received is not None or (self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0)
        if due and not epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._write(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if (trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run
                and not trainer.fit_loop.epoch_loop._should_accumulate()):
            self._write(trainer)

    def _write(self, trainer: Any) -> None:
        trainer.save_checkpoint(self.path)
        if self.received is not None:
            log.warning(f"saved {self.path}; resume with `reprozoo train --resume {self.checkpoint_dir.parent}`")
            raise Preempted(self.received)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)  # Preempted (or a failure) ends fit without on_fit_end


class Preempted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def resume_dir(ref: str) -> Path:
    """`--resume RUN_DIR | TASK_ID` → the run directory holding the checkpoints."""
    path = Path(ref)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume {ref}: not a run directory (no config.yaml); pass the --out of the interrupted run")
        return path
    run_dir = Path(load_record(ref).provenance.get("run_dir") or "")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {ref}: its run directory {run_dir} (with the checkpoints) is not on this machine;"
                          " resume where it ran, or copy that folder here and pass it")
    return run_dir


def resumed_config(ref: str) -> RunConfig:
    """The interrupted run's own RunConfig, unchanged, writing into its run directory."""
    run_dir = resume_dir(ref)
    cfg = RunConfig.load(run_dir / "config.yaml")
    cfg.out_dir = str(run_dir)
    return cfg.validate()


def find_resume_checkpoint(run_dir: Path) -> Path:
    """`last.ckpt` if it loads, else `last.prev.ckpt`; a clear error when neither does."""
    directory = run_dir / "checkpoints"
    problems = []
    for name in (LAST, PREVIOUS):
        path = directory / name
        if not path.exists():
            problems.append(f"{name} missing")
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as err:
            problems.append(f"{name} unreadable ({type(err).__name__})")
            log.warning(f"{path} is corrupt or truncated ({type(err).__name__}); trying the previous checkpoint")
            continue
        return path
    raise ResumeError(f"{run_dir}: no usable checkpoint to resume from ({'; '.join(problems)}); start a new run instead")


class ResumeError(UserError, RuntimeError):
    """Nothing to resume from."""
