"""BackgroundCheckpointIO: checkpoints written off the training loop, yet exactly what was saved,
in order, with failures reported."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from reprozoo.resume import LAST, PREVIOUS, AtomicCheckpointIO, BackgroundCheckpointIO, CheckpointWriteError


def test_a_checkpoint_holds_the_tensors_as_they_were_when_saved(tmp_path: Path) -> None:
    io = BackgroundCheckpointIO()
    weights = torch.zeros(1000)
    io.save_checkpoint({"state_dict": {"w": weights}, "global_step": 1, "nested": [{"m": weights}]}, tmp_path / "a.ckpt")
    weights += 1  # the next optimiser step, while the write may still be pending
    io.teardown()
    saved = torch.load(tmp_path / "a.ckpt", weights_only=False)
    assert saved["global_step"] == 1
    assert torch.equal(saved["state_dict"]["w"], torch.zeros(1000)) and torch.equal(saved["nested"][0]["m"], torch.zeros(1000))


def test_writes_and_removals_happen_in_the_order_they_were_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    write = AtomicCheckpointIO.save_checkpoint

    def slow_write(self: AtomicCheckpointIO, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        gate.wait(10)
        write(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", slow_write)
    io = BackgroundCheckpointIO()
    io.save_checkpoint({"global_step": 1}, tmp_path / "best-1.ckpt")
    io.save_checkpoint({"global_step": 1}, tmp_path / LAST)
    io.remove_checkpoint(tmp_path / "best-1.ckpt")  # a newer best replaced it before it reached the disk
    assert not any(tmp_path.iterdir())  # nothing written yet: the loop did not wait
    gate.set()
    io.save_checkpoint({"global_step": 2}, tmp_path / LAST)
    io.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, PREVIOUS]
    assert torch.load(tmp_path / LAST, weights_only=False)["global_step"] == 2
    assert torch.load(tmp_path / PREVIOUS, weights_only=False)["global_step"] == 1
    assert io.writes == 3
    io.teardown()


def test_a_failed_write_is_raised_at_teardown_flush_and_the_next_save(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # a file where the checkpoint folder should be
    io = BackgroundCheckpointIO()
    io.save_checkpoint({"global_step": 1}, blocked / LAST)
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoint .*previous checkpoint is intact"):
        io.teardown()
    io.save_checkpoint({"global_step": 1}, blocked / LAST)
    with pytest.raises(CheckpointWriteError):
        io.flush()
    io.save_checkpoint({"global_step": 1}, blocked / LAST)
    io._executor.submit(lambda: None).result()  # that write has failed (in order), its error not yet raised
    assert io.writes == 3
    with pytest.raises(CheckpointWriteError):
        io.save_checkpoint({"global_step": 2}, tmp_path / LAST)
    io.teardown()  # reported once


def test_at_most_max_pending_snapshots_wait_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    write = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, *args: (gate.wait(10), write(self, *args)))
    io = BackgroundCheckpointIO(max_pending=2)
    io.save_checkpoint({"global_step": 1}, tmp_path / "1.ckpt")
    io.save_checkpoint({"global_step": 2}, tmp_path / "2.ckpt")
    third = threading.Thread(target=io.save_checkpoint, args=({"global_step": 3}, tmp_path / "3.ckpt"))
    third.start()
    third.join(0.5)
    assert third.is_alive()  # waits for a free slot
    gate.set()
    third.join(10)
    io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.ckpt", "2.ckpt", "3.ckpt"]
