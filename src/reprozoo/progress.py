"""Plain-line progress for logs and CI (the Rich bar is used on a terminal), as `reprozoo: …` log lines."""

from __future__ import annotations

import statistics
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from reprozoo.log import log


class LineProgress(Callback):
    """One line every `every` steps and after each evaluation: step, epoch, loss, speed."""

    def __init__(self, every: int = 50) -> None:
        self.every = every
        self._start = 0.0
        self._examples = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start, self._examples = time.time(), 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._examples += len(batch["labels"])
        step = trainer.global_step
        if step and step % self.every == 0 and trainer.is_global_zero:
            elapsed = time.time() - self._start
            total = trainer.estimated_stepping_batches
            loss = trainer.callback_metrics.get("train/loss")
            log.info(f"step {step}/{total}  epoch {trainer.current_epoch}  loss {float(loss):.4f}  "
                     f"{self._examples / max(elapsed, 1e-9):.1f} ex/s  {elapsed:.0f}s")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        if "dev/accuracy" in m:
            log.info(f"dev  epoch {trainer.current_epoch} step {trainer.global_step}: accuracy {float(m['dev/accuracy']):.4f}"
                     f"  macro-F1 {float(m['dev/macro_f1']):.4f}")


class LogEveryRun(Callback):
    """Train loss and learning rate logged at least 4 times an epoch, however short the run: a
    `log_every_n_steps` larger than the epoch would log neither (Lightning only warns)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        steps = max(1, int(trainer.num_training_batches) // max(1, trainer.accumulate_grad_batches))
        trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, steps // 4))


class ThroughputMonitor(Callback):
    """Counts what training really did and where the time went; `summary()` lands in timing.json.

    Step time is on_train_batch_start → on_train_batch_end (forward, backward, clipping, optimiser
    step); data wait is the gap from one step's end to the next step's start (fetching and
    collating the batch, loop bookkeeping, the checkpoints' host copies), with validation left
    out. The largest single wait against the median step shows a stall (e.g. checkpoint writes
    holding the loop). Tokens come from the attention masks: real = mask sum, processed = mask size
    (padding included).
    """

    def __init__(self) -> None:
        self.steps = self.examples = self.real_tokens = self.padded_tokens = self.sum_sq_lengths = 0
        self.step_seconds = self.data_wait_seconds = self.max_data_wait_seconds = 0.0
        self.evaluations, self.evaluation_seconds = 0, 0.0  # dev evaluations during fit, outside the loop figures
        self._evaluation_start = 0.0
        self._step_durations: list[float] = []
        self.train_start_unix: float | None = None
        self.first_step_unix: float | None = None
        self.last_step_unix: float | None = None
        self._train_start = self._last_end = self._batch_start = 0.0
        self._last_end_valid = False
        self._window: tuple[float, int, int] = (0.0, 0, 0)  # loop seconds, examples, real tokens at last report

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.train_start_unix = time.time()
        self._train_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_end, self._last_end_valid = time.perf_counter(), True

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_end_valid:
            self.data_wait_seconds += now - self._last_end
            self.max_data_wait_seconds = max(self.max_data_wait_seconds, now - self._last_end)
        self._batch_start = now
        mask = batch["attention_mask"]
        lengths = mask.sum(1)
        self.examples += int(mask.shape[0])
        self.real_tokens += int(lengths.sum())
        self.padded_tokens += int(mask.numel())
        self.sum_sq_lengths += int((lengths * lengths).sum())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self.step_seconds += now - self._batch_start
        self._step_durations.append(now - self._batch_start)
        self.steps += 1
        self.last_step_unix = time.time()
        if self.first_step_unix is None:
            self.first_step_unix = self.last_step_unix
        self._last_end, self._last_end_valid = now, True
        self._report_window(trainer)

    def _report_window(self, trainer: Any) -> None:
        """Live throughput scalars (CSV log, ClearML) every `log_every_n_steps` steps; wall-clock
        figures stay out of metrics.json, which must be bit-identical across replays."""
        every = max(1, trainer.log_every_n_steps)
        if self.steps % every or not trainer.is_global_zero:
            return
        loop = self.step_seconds + self.data_wait_seconds
        window = (loop - self._window[0], self.examples - self._window[1], self.real_tokens - self._window[2])
        self._window = (loop, self.examples, self.real_tokens)
        if window[0] <= 0:
            return
        scalars = {"throughput/examples_per_s": window[1] / window[0], "throughput/real_tokens_per_s": window[2] / window[0]}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_end_valid = False  # the next gap holds an evaluation, not data loading
        self._evaluation_start = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        now = time.perf_counter()
        if trainer.state.fn == "fit":
            self.evaluations += 1
            self.evaluation_seconds += now - self._evaluation_start
        self._last_end, self._last_end_valid = now, trainer.state.fn == "fit"

    def summary(self) -> dict[str, Any]:
        loop = self.step_seconds + self.data_wait_seconds
        return {
            "steps": self.steps,
            "examples": self.examples,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "sum_sq_lengths": self.sum_sq_lengths,
            "padding_efficiency": self.real_tokens / self.padded_tokens if self.padded_tokens else None,
            "step_seconds": self.step_seconds,
            "data_wait_seconds": self.data_wait_seconds,
            "data_wait_fraction": self.data_wait_seconds / loop if loop else None,
            "max_data_wait_seconds": self.max_data_wait_seconds,
            "median_step_seconds": statistics.median(self._step_durations) if self._step_durations else None,
            "evaluations": self.evaluations,
            "evaluation_seconds": self.evaluation_seconds,
            "examples_per_second": self.examples / loop if loop else None,
            "real_tokens_per_second": self.real_tokens / loop if loop else None,
            "train_start_unix": self.train_start_unix,
            "first_step_unix": self.first_step_unix,
            "last_step_unix": self.last_step_unix,
        }
