"""Training does not stall between steps: the largest wait from one step's end to the next step's
start (evaluations left out) stays within a few median steps, on real MiniLM + SST-5 sentences.

Synchronous checkpoint writes after each evaluation (the best checkpoint and last.ckpt, 272 MB each,
fsynced) would make that wait 12-16 median steps (issue 20's "data wait"); with the background writer
the largest is the first evaluation's host copies, about 3. A ratio, never an absolute time: both
sides slow down together on a loaded machine."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import Callback

from reprozoo.config import RunConfig

pytestmark = pytest.mark.slow  # ~40 s

MAX_WAIT_IN_STEPS = 6  # synchronous writes: 12-16; the background writer: about 3 (see above)


class StepGaps(Callback):
    """Step durations, and each gap between a step's end (or an evaluation's end) and the next step."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.gaps: list[tuple[int, float]] = []  # (global step before the gap, seconds)
        self._started = self._ended = None  # type: float | None

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        self._started = time.perf_counter()
        if self._ended is not None:
            self.gaps.append((trainer.global_step, self._started - self._ended))

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self._ended = time.perf_counter()
        assert self._started is not None
        self.steps.append(self._ended - self._started)

    def on_validation_start(self, trainer: Any, *args: Any) -> None:
        self._ended = None  # the evaluation itself is not a wait

    def on_validation_end(self, trainer: Any, *args: Any) -> None:
        # Lightning runs checkpoint callbacks after every other callback: the writes land in the next gap.
        if trainer.state.fn == "fit":
            self._ended = time.perf_counter()


def test_no_stall_after_evaluations_and_checkpoints(data_dir: Path, tmp_path: Path, extra_callbacks: list[Any]) -> None:
    gaps = StepGaps()
    extra_callbacks.append(gaps)
    # 32 steps of 16 sentences; dev (one batch) after steps 8, 16, 24 and 32, each followed by the best
    # checkpoint (when dev improved) and last.ckpt: the zoo recipes' schedule, compressed.
    cfg = RunConfig().override([f"data.data_dir={data_dir}", "data.limit_train_samples=512", "data.limit_eval_samples=32",
                                "data.batch_size=16", "data.eval_batch_size=32", "trainer.max_epochs=1",
                                "trainer.val_check_interval=0.25", "tracking.mode=off", f"out_dir={tmp_path / 'run'}"])
    from reprozoo.train import train

    train(cfg)
    median = statistics.median(gaps.steps)
    step, worst = max(gaps.gaps, key=lambda gap: gap[1])
    after_evaluations = [seconds for s, seconds in gaps.gaps if s % 8 == 0]
    assert len(gaps.steps) == 32 and len(after_evaluations) == 3
    assert worst < MAX_WAIT_IN_STEPS * median, (f"a {worst:.2f} s wait after step {step} against a median step of {median:.2f} s "
                            f"(waits after evaluations: {[round(s, 2) for s in after_evaluations]})")
