"""Plain-line progress for logs and CI (the Rich bar is used on a terminal)."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import Callback


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
            print(f"step {step}/{total}  epoch {trainer.current_epoch}  loss {float(loss):.4f}  "
                  f"{self._examples / max(elapsed, 1e-9):.1f} ex/s  {elapsed:.0f}s", file=sys.stderr, flush=True)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        if "val/accuracy" in m:
            print(f"dev  epoch {trainer.current_epoch} step {trainer.global_step}: accuracy {float(m['val/accuracy']):.4f}"
                  f"  macro-F1 {float(m['val/macro_f1']):.4f}", file=sys.stderr, flush=True)
