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
import json
import os
import pickle
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

from reprozoo import run_spec, safeyaml
from reprozoo.config import ConfigError, RunConfig
from reprozoo.errors import Preempted, UserError
from reprozoo.log import log
from reprozoo.records import MAX_MEMBER_BYTES, load_record, record_mapping, run_dir_json, run_dir_record

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
            _keep_previous(path, keep_previous, Path(f"{tmp}.prev"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise


def _keep_previous(path: Path, keep_previous: Path, link: Path) -> None:
    """`path` also as `keep_previous`, through a hard link: `path` is never missing, even for a kill
    between this and the rename of the new file over it. Where links are refused, it is moved."""
    try:
        os.link(path, link)
        os.replace(link, keep_previous)
    except OSError:
        link.unlink(missing_ok=True)
        os.replace(path, keep_previous)


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


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Checkpoints written by a background thread, so training goes on while they reach the disk.

    A synchronous write of MiniLM's 272 MB (weights and AdamW state) with its fsync holds the loop
    for seconds after each evaluation, far longer than a training step. Here the caller's thread only
    copies the tensors to host memory (a point-in-time snapshot the next optimiser step cannot
    change; GPU memory is never doubled); one worker thread then serialises and writes them through
    `AtomicCheckpointIO`, in order, removals included. At most `max_pending` snapshots wait in host
    memory: beyond that a save waits for the oldest. `flush()` waits for every write and raises the
    first failure; Lightning calls `teardown()` (which waits too) when fit ends, however it ends.
    On a CPU-only host the writer competes with torch's threads; where a GPU computes, the host cores
    are free for it.
    `after_write(path, step, best)`: called by the worker once a `last.ckpt` is complete on disk, with
    the best checkpoint its state names (written before it, by this same worker), or None (a server run
    uploads both from there, checkpoint_store); its failures are logged, never the run's."""

    def __init__(self, max_pending: int = 2, after_write: Callable[[Path, int, Path | None], None] | None = None) -> None:
        super().__init__(AtomicCheckpointIO())
        self.after_write = after_write
        self._slots = threading.BoundedSemaphore(max_pending)
        self.write_seconds = 0.0  # time the worker spent writing (for timing.json)
        self.writes = 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self._raise_error()
        self._slots.acquire()
        try:
            snapshot = apply_to_collection(checkpoint, torch.Tensor, _host_copy)
            self._submit(self._write, snapshot, path, storage_options)
        except BaseException:
            self._slots.release()
            raise

    def remove_checkpoint(self, path: Any) -> None:
        # Through the worker: a removal must not overtake the pending write of the same file.
        self._submit(self._remove, path)

    def flush(self) -> None:
        """Waits for every pending write; raises the first that failed."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()
        self._raise_error()

    def teardown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._raise_error()

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._ensure_setup()
        assert self._executor is not None
        self._executor.submit(fn, *args)

    def _write(self, snapshot: dict[str, Any], path: Any, storage_options: Any) -> None:
        started = time.perf_counter()
        try:
            assert self.checkpoint_io is not None
            self.checkpoint_io.save_checkpoint(snapshot, path, storage_options)
        except BaseException as err:
            self._error = self._error or err
        else:
            if self.after_write is not None and Path(path).name == LAST:
                try:
                    self.after_write(Path(path), int(snapshot.get("global_step", 0)), _best_named_in(snapshot))
                except Exception as err:
                    log.warning(f"after writing {path}: {type(err).__name__}: {err}")
        finally:
            self.write_seconds += time.perf_counter() - started
            self.writes += 1
            self._slots.release()

    def _remove(self, path: Any) -> None:
        try:
            assert self.checkpoint_io is not None
            self.checkpoint_io.remove_checkpoint(path)
        except BaseException as err:
            self._error = self._error or err

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _best_named_in(checkpoint: dict[str, Any]) -> Path | None:
    """The best checkpoint file a checkpoint's ModelCheckpoint state names, when it is on disk."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("best_model_path"):
            best = Path(state["best_model_path"])
            return best if best.is_file() else None
    return None


class RelocatableModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose state survives its run directory being somewhere else on
    resume: fetched onto another machine from the task's storage (checkpoint_store), or moved. Lightning
    restores only `best_model_path`, the old path, when the directory differs: the best score would be
    lost, and the next evaluation become "best" whatever its score. The recorded paths are moved to
    this directory instead, where the files have the same names. Its state key is ModelCheckpoint's,
    so a checkpoint of either resumes with either."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("dirpath")
        if recorded and self.dirpath and recorded != self.dirpath:
            here = Path(self.dirpath)

            def moved(path: Any) -> Any:
                return str(here / Path(path).name) if path else path

            state_dict = {**state_dict, "dirpath": self.dirpath, "best_model_path": moved(state_dict.get("best_model_path")),
                          "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                          "last_model_path": moved(state_dict.get("last_model_path")),
                          "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        super().load_state_dict(state_dict)


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


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


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumeState(Callback):
    """Saves every RNG state with each checkpoint, each DDP rank's own (the ranks draw dropout on
    batches of other lengths, so their streams differ); on resume, puts back this rank's RNG states
    and the train loader's position at the last moment before the first resumed step.

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
        _, world = _rank_and_world()
        if world == 1:
            return state
        # Every rank builds the checkpoint (Lightning's dump_checkpoint), rank 0 writes it: gather the ranks' states.
        ranks: list[Any] = [None] * world
        torch.distributed.all_gather_object(ranks, state)
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank, world = _rank_and_world()
        ranks = state_dict.get("ranks")
        if ranks is None:
            self._rng = state_dict  # one process wrote it
        elif len(ranks) == world:
            self._rng = ranks[rank]
        else:
            raise ResumeError(f"the checkpoint holds the random states of {len(ranks)} process(es), this run has {world}:"
                              f" resume it with --devices {len(ranks)}")

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
        self._previous: dict[int, Any] = {}

    @property
    def path(self) -> Path:
        return self.checkpoint_dir / LAST

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
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
        # Nothing is forwarded to other DDP ranks: they learn of it at the next step's end (_stop_agreed),
        # and a signal to the whole process group would otherwise reach them twice.
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signum
        log.warning(f"received {signal.Signals(signum).name}; checkpointing after this optimiser step")

    def _stop_agreed(self, trainer: Any) -> bool:
        """Whether any rank received a stop signal: every rank stops after the same step (the checkpoint
        is a collective write; a rank training on alone would wait for the others forever)."""
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(self.received is not None, all=False))
        return self.received is not None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        if trainer.fast_dev_run or epoch_loop._should_accumulate():
            return
        stop = self._stop_agreed(trainer)
        due = stop or (self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0)
        if due and not epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._write(trainer, stop)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if (trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run
                and not trainer.fit_loop.epoch_loop._should_accumulate()):
            self._write(trainer, self._stop_agreed(trainer))

    def _write(self, trainer: Any, stop: bool) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: optimiser, loops, callbacks
        if stop:
            checkpoint_io = trainer.strategy.checkpoint_io
            if isinstance(checkpoint_io, BackgroundCheckpointIO):
                checkpoint_io.flush()  # on disk before the process may be killed for good
            trainer.strategy.barrier("reprozoo-preempted")  # rank 0's file is complete before any rank exits
            log.warning(f"saved {self.path}; resume with `reprozoo train --resume {self.checkpoint_dir.parent}`")
            raise Preempted(self.received or signal.SIGTERM)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)  # Preempted (or a failure) ends fit without on_fit_end


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
    return run_spec.executable(run_spec.run_dir_config(run_dir), None, run_spec.Where(out_dir=str(run_dir)))


def find_resume_checkpoint(run_dir: Path) -> Path:
    """`last.ckpt` if it loads, else `last.prev.ckpt`; a clear error when neither does. Loaded as
    tensors and plain types only (weights_only=True, as Lightning loads it): a checkpoint may come from
    another machine or the task's storage, and a full unpickle runs whatever code it names."""
    directory = run_dir / "checkpoints"
    problems = []
    for name in (LAST, PREVIOUS):
        path = directory / name
        if not path.exists():
            problems.append(f"{name} missing")
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            if "weights_only" not in str(err) and "Weights only load failed" not in str(err):
                problems.append(f"{name} unreadable ({type(err).__name__})")
                log.warning(f"{path} is corrupt or truncated ({type(err).__name__}); trying the previous checkpoint")
                continue
            raise ResumeError(f"{path} holds more than tensors and plain values (loading it would run code it names):"
                              " refused; resume only from checkpoints reprozoo wrote, or start a new run") from None
        except Exception as err:
            problems.append(f"{name} unreadable ({type(err).__name__})")
            log.warning(f"{path} is corrupt or truncated ({type(err).__name__}); trying the previous checkpoint")
            continue
        return path
    raise ResumeError(f"{run_dir}: no usable checkpoint to resume from ({'; '.join(problems)}); start a new run instead")


class ResumeError(UserError, RuntimeError):
    """Nothing to resume from."""


# --- what the run was started with ------------------------------------------------------------------
RESUME_CHANGES = "resume-changes.json"
def recorded_run_state(run_dir: Path) -> dict[str, str] | None:
    """The interrupted run's `run_spec.identity`, from its run document (records.run_dir_record: read with
    the record readers' caps, as a run directory may come from another machine); None when it recorded none."""
    if not (run_dir / "provenance.json").is_file():
        return None
    record = run_dir_record(run_dir)
    resolved = record_mapping(record.provenance.get("resolved"), f"{run_dir / 'provenance.json'}: resolved")
    return run_spec.identity(record.config, record.commit, record.diff, record.data_sha256, record.model_revision,
                             record.environment, resolved)


def resume_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's accepted resumes, oldest first (resume-changes.json): each one's changes and where the
    state before it is kept."""
    path = run_dir / RESUME_CHANGES
    if path.is_file():
        history = safeyaml.load_json(safeyaml.read_bytes(path, MAX_MEMBER_BYTES, RESUME_CHANGES), str(path))
    else:  # a run directory fetched from its task: the history travelled in the provenance
        history = (run_dir_json(run_dir, "provenance.json") or {}).get("resume_history")
    return history if isinstance(history, list) else []


def check_resume_state(run_dir: Path, now: dict[str, str], accept: bool) -> list[dict[str, Any]]:
    """Refuses (ResumeError, one line naming each difference) to resume a run whose code, data, weights,
    software environment or resolved settings differ from what it started with: it would train half on
    each and be recorded as the second. With `accept`, resumes, and keeps both states: each difference
    is appended to resume-changes.json, and the start's provenance.json and git.diff are kept beside
    the new ones. Returns the run's accepted resumes so far (`resume_history`)."""
    recorded = recorded_run_state(run_dir)
    if recorded is None:
        return resume_history(run_dir)
    # What the start did not record (a record of older code) is not compared.
    optional = tuple(f"resolved.{key}" for key in run_spec.RESOLVED_FIELDS) + tuple(
        f"environment.{key}" for key in run_spec.CPU_FIELDS)
    changes = [{"field": key, "recorded": recorded.get(key, "none"), "now": value}
               for key, value in now.items() if recorded.get(key, "none") != value and (key in recorded or key not in optional)]
    changes += [{"field": key, "recorded": value, "now": "none"} for key, value in recorded.items() if key not in now]
    if not changes:
        return resume_history(run_dir)
    shown = "; ".join(f"{c['field']} {_short(c['recorded'])} → {_short(c['now'])}" for c in changes)
    if not accept:
        raise ResumeError(f"--resume {run_dir}: this run started with other config, code, data, weights, environment or settings ({shown});"
                          " resuming would train partly on each. Put them back, or pass --accept-changes to resume"
                          f" anyway (both states are kept in {RESUME_CHANGES}; on an agent: `reprozoo train --resume TASK"
                          " --enqueue QUEUE --accept-changes`)")
    log.warning(f"resuming with changes ({shown}); both states are kept in {run_dir / RESUME_CHANGES}")
    path = run_dir / RESUME_CHANGES
    history = resume_history(run_dir)
    suffix = f"before-resume-{len(history) + 1}"
    for name, kept in (("provenance.json", f"provenance.{suffix}.json"), ("git.diff", f"git.{suffix}.diff")):
        if (run_dir / name).is_file():
            os.replace(run_dir / name, run_dir / kept)
    history.append({"resume": len(history) + 1, "changes": changes, "kept": suffix})
    path.write_text(json.dumps(history, indent=2) + "\n")
    return history


def _short(value: str) -> str:
    return value[:19] + "…" if len(value) > 20 else value
