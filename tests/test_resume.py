"""Preemption and exact resume, on real MiniLM + SST-5 sentences (CPU).

The interrupted run is killed at a moment nobody picked in advance (after a random number of
checkpoint writes plus a random delay), resumed, and must end with the very same metrics.json
as an uninterrupted run with the same seed."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reprozoo.resume import LAST, PREVIOUS, AtomicCheckpointIO, CheckpointWriteError, ResumeError, find_resume_checkpoint

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 20  # 320 sentences, batch 16


def train_args(data_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "reprozoo", "train", "--data-dir", str(data_dir), "--out", str(out),
            "--limit-train-samples", "320", "--limit-eval-samples", "100", "--batch-size", "16", "--max-epochs", "2",
            "--lr", "1e-4", "--tracking", "off", "--checkpoint-every", "3", "--set", "trainer.val_check_interval=0.5"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> bytes:
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(train_args(data_dir, out), check=True, capture_output=True)
    return (out / "metrics.json").read_bytes()


def wait_for_checkpoints(proc: subprocess.Popen, last: Path, writes: int) -> None:
    seen, stamp = 0, None
    deadline = time.time() + 240
    while seen < writes:
        assert proc.poll() is None, "the run ended before it was interrupted"
        assert time.time() < deadline
        if last.exists() and last.stat().st_mtime_ns != stamp:
            stamp, seen = last.stat().st_mtime_ns, seen + 1
        time.sleep(0.05)


def batches_done(checkpoint: Path) -> tuple[int, int]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    loader = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    return state["global_step"], loader["batches_done"]


# kill -9 (tracked, resumed by task id): test_resumed_run_continues_its_clearml_task_and_replays below.
@pytest.mark.parametrize("how", ["SIGTERM"])
def test_interrupted_run_resumes_bit_identical(how: str, uninterrupted: bytes, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rng = random.Random()  # unseeded: the moment of the kill is not chosen in advance
    proc = subprocess.Popen(train_args(data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoints(proc, out / "checkpoints" / LAST, writes=rng.randint(1, 6))
    time.sleep(rng.uniform(0.0, 1.5))
    if how == "kill -9":
        proc.kill()
        proc.wait()
    else:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "resume with: reprozoo train --resume" in err
    assert not (out / "metrics.json").exists()
    step, done = batches_done(find_resume_checkpoint(out))
    assert step > 0 and done in (step % STEPS_PER_EPOCH, STEPS_PER_EPOCH)  # the exact position in the epoch

    resumed = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--resume", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == uninterrupted


def test_sigterm_during_an_evaluation_still_checkpoints(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's own SIGTERM handler ends a run that is evaluating with SystemExit(0): no checkpoint,
    and the process "succeeds". Ours owns SIGTERM during training: the evaluation finishes, the next
    training batch ends with last.ckpt, and Preempted (exit 128+15 in the CLI) follows."""
    from lightning.pytorch.callbacks import Callback

    import reprozoo.train as train_module
    from reprozoo.config import RunConfig
    from reprozoo.resume import Preempted

    class SigtermDuringValidation(Callback):
        sent = False

        def on_validation_batch_start(self, trainer: object, *args: object) -> None:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    build = train_module._trainer_kwargs

    def with_the_signal(*args: object, **kwargs: object) -> dict:
        built = build(*args, **kwargs)
        built["callbacks"].append(SigtermDuringValidation())
        return built

    monkeypatch.setattr(train_module, "_trainer_kwargs", with_the_signal)
    out = tmp_path / "run"
    cfg = RunConfig().override([f"data.data_dir={data_dir}", "data.limit_train_samples=96", "data.limit_eval_samples=32",
                                "data.batch_size=16", "trainer.max_epochs=1", "trainer.val_check_interval=0.5",
                                "tracking.mode=off", f"out_dir={out}"])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(Preempted):
            train_module.train(cfg)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert not (out / "metrics.json").exists()
    # 6 batches, dev after the 3rd; the signal came during that evaluation: checkpoint after the 4th.
    assert batches_done(out / "checkpoints" / LAST) == (4, 4)


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoints = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, checkpoints / LAST)
    io.save_checkpoint({"global_step": 2}, checkpoints / LAST)
    assert torch.load(checkpoints / PREVIOUS, weights_only=False)["global_step"] == 1
    data = (checkpoints / LAST).read_bytes()
    (checkpoints / LAST).write_bytes(data[: len(data) // 2])  # truncated, as by a crash of another tool
    assert find_resume_checkpoint(tmp_path) == checkpoints / PREVIOUS
    assert "corrupt or truncated" in capsys.readouterr().err
    (checkpoints / PREVIOUS).write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="no usable checkpoint"):
        find_resume_checkpoint(tmp_path)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, what: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `path` for the test (skipped, saying so, without root or tmpfs)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(f"needs root and tmpfs to make a real {what}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "3m", "full disk") as mount:
        io = AtomicCheckpointIO()
        io.save_checkpoint({"w": torch.zeros(250_000)}, mount / LAST)  # ~1 MB
        with pytest.raises(CheckpointWriteError, match="No space left on device.*previous checkpoint is intact"):
            io.save_checkpoint({"w": torch.ones(750_000)}, mount / LAST)  # ~3 MB: does not fit
        assert torch.load(mount / LAST, weights_only=True)["w"].sum() == 0
        assert not list(mount.glob(".*tmp"))


def test_read_only_run_directory(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", "4m", "read-only file system") as mount:
        io = AtomicCheckpointIO()
        io.save_checkpoint({"step": 1}, mount / LAST)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(CheckpointWriteError, match="Read-only file system"):
            io.save_checkpoint({"step": 2}, mount / LAST)
        assert torch.load(mount / LAST, weights_only=True)["step"] == 1


def test_resumed_run_continues_its_clearml_task_and_replays(uninterrupted: bytes, data_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of a tracked run, `train --resume TASK_ID`: the same (offline) task, its record holds the final
    metrics, and `repro` of that task reproduces them from the recorded commit + diff."""
    import json

    from reprozoo.records import list_offline, load_record

    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml"))
    monkeypatch.setenv("REPROZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "absent-clearml.conf"))
    for name in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "run"
    args = [("offline" if arg == "off" else arg) for arg in train_args(data_dir, out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoints(proc, out / "checkpoints" / LAST, writes=random.Random().randint(1, 4))
    time.sleep(random.Random().uniform(0.0, 1.5))
    proc.kill()
    proc.wait()
    step, done = batches_done(find_resume_checkpoint(out))
    assert step > 0 and done in (step % STEPS_PER_EPOCH, STEPS_PER_EPOCH)  # the exact position in the epoch
    task_id = json.loads((out / "provenance.json").read_text())["task_id"]
    session = tmp_path / "clearml" / "offline" / task_id
    before = (session / "metrics.jsonl").read_text() if (session / "metrics.jsonl").exists() else ""

    resumed = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--resume", task_id], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"clearml task: {task_id}" in resumed.stdout  # the same task, not a new one
    assert (out / "metrics.json").read_bytes() == uninterrupted
    after = (session / "metrics.jsonl").read_text()
    assert after.startswith(before) and len(after) > len(before)  # one session: what was reported is kept
    assert [r.task_id for r in list_offline()] == [task_id]
    record = load_record(task_id)
    assert record.status == "completed" and record.metrics == json.loads(uninterrupted)

    replay = subprocess.run([sys.executable, "-m", "reprozoo", "repro", task_id, "--verify", "--out", "replay",
                             "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True)
    assert replay.returncode == 0 and "verdict: bit-identical" in replay.stdout, replay.stdout[-2000:] + replay.stderr[-2000:]
