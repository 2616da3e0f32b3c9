"""Preemption and exact resume, on real MiniLM + SST-5 sentences (CPU).

The interrupted run is killed at a moment nobody picked in advance (after a random number of
checkpoint writes plus a random delay), resumed, and must end with the very same metrics.json
as an uninterrupted run with the same seed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from helpers import checkpoint_mtime
from reprozoo.config import RunConfig
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
        written = checkpoint_mtime(last)
        if written is not None and written != stamp:
            stamp, seen = written, seen + 1
        time.sleep(0.05)


def batches_done(checkpoint: Path) -> tuple[int, int]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
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


def train_in_process(cfg: RunConfig, resume: bool = False) -> Any:
    """`reprozoo.train.train` in this process, its signal handlers put back afterwards."""
    from reprozoo.train import train

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return train(cfg, resume=resume)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


class SigtermAt(Callback):
    """SIGTERM to this process at one chosen moment: as training batch `batch` starts (1-based, over the
    whole run), or as the `evaluation`-th evaluation during fit starts (1-based)."""

    def __init__(self, batch: int | None = None, evaluation: int | None = None) -> None:
        self.batch, self.evaluation, self.evaluations = batch, evaluation, 0

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_start(self, trainer: Any, *args: Any) -> None:
        if trainer.state.fn == "fit":
            self.evaluations += 1
            if self.evaluations == self.evaluation:
                os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_an_evaluation_still_checkpoints(data_dir: Path, tmp_path: Path, extra_callbacks: list[Any]) -> None:
    """Lightning's own SIGTERM handler ends a run that is evaluating with SystemExit(0): no checkpoint,
    and the process "succeeds". Ours owns SIGTERM during training: the evaluation finishes, ends with
    last.ckpt, and Preempted (exit 128+15 in the CLI) follows."""
    from reprozoo.resume import Preempted

    extra_callbacks.append(SigtermAt(evaluation=1))
    out = tmp_path / "run"
    cfg = RunConfig().override([f"data.data_dir={data_dir}", "data.limit_train_samples=96", "data.limit_eval_samples=32",
                                "data.batch_size=16", "trainer.max_epochs=1", "trainer.val_check_interval=0.5",
                                "tracking.mode=off", f"out_dir={out}"])
    with pytest.raises(Preempted):
        train_in_process(cfg)
    assert not (out / "metrics.json").exists()
    # 6 batches, dev after the 3rd; the signal came as that evaluation started: checkpoint at its end.
    assert batches_done(out / "checkpoints" / LAST) == (3, 3)


# Every moment a run can be stopped at, for schedules of evaluations and checkpoints that each need their own
# care on resume (an evaluation right after a checkpoint, per-epoch evaluations, gradient accumulation).
# 160 training sentences in batches of 16: 10 batches an epoch.
RESUME_SCHEDULES = {
    "mid-epoch-evaluations": ["trainer.max_epochs=2", "trainer.val_check_interval=0.5", "trainer.checkpoint_every=3"],
    "one-evaluation-per-epoch": ["trainer.max_epochs=3", "trainer.val_check_interval=1.0", "trainer.checkpoint_every=0"],
    # pruning: its masks are set as training starts, and again on resume, from the checkpoint's zeros.
    "pruned-with-step-checkpoints": ["trainer.max_epochs=2", "trainer.val_check_interval=1.0", "trainer.checkpoint_every=4",
                                     "trainer.pruning_amount=0.3"],
    "gradient-accumulation": ["trainer.max_epochs=2", "trainer.val_check_interval=0.5", "trainer.checkpoint_every=2",
                              "trainer.accumulate_grad_batches=3"],
}
TINY_BATCHES_PER_EPOCH = 10


@pytest.mark.parametrize("schedule", list(RESUME_SCHEDULES))
def test_every_stop_moment_resumes_bit_identical(schedule: str, tiny_model_dirs: dict[str, Path], data_dir: Path,
                                                 tmp_path: Path, extra_callbacks: list[Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 right after each checkpoint write of an uninterrupted run (its run directory as it was then),
    and SIGTERM as each training batch and each evaluation starts: every resume ends with the same
    metrics.json, bit for bit. A tiny random-weight BERT, so that every moment fits in about a minute."""
    from reprozoo.resume import Preempted, resumed_config

    run_dir = tmp_path / "run"
    cfg = RunConfig().override([f"data.data_dir={data_dir}", f"model.name={tiny_model_dirs['bert']}",
                                "data.limit_train_samples=160", "data.limit_eval_samples=40", "data.batch_size=16",
                                "optim.lr=1e-3", "tracking.mode=off", f"out_dir={run_dir}", *RESUME_SCHEDULES[schedule]])
    accumulate = cfg.trainer.accumulate_grad_batches

    # The uninterrupted run; after each checkpoint write, its run directory is kept as a kill -9 would leave it
    # (hard links: every checkpoint is written to a new file and renamed into place).
    snapshots: list[Path] = []
    save = AtomicCheckpointIO.save_checkpoint

    def save_and_snapshot(self: AtomicCheckpointIO, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save(self, checkpoint, path, storage_options)
        snapshots.append(tmp_path / f"after-write-{len(snapshots)}-{Path(path).name}-step{checkpoint['global_step']}")
        subprocess.run(["cp", "-al", str(run_dir), str(snapshots[-1])], check=True)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_and_snapshot)
    straight = train_in_process(cfg)
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    expected = (run_dir / "metrics.json").read_bytes()
    batches = straight.metrics["train"]["steps"]
    evaluations = cfg.trainer.max_epochs * round(1 / cfg.trainer.val_check_interval)
    shutil.rmtree(run_dir)

    def resumes_bit_identical(moment: str) -> str | None:
        """What went wrong when resuming the run in `run_dir` (None: nothing); the folder is removed."""
        step, done = batches_done(find_resume_checkpoint(run_dir))
        where = f"{moment} (checkpoint at step {step}, batch {done} of its epoch)"
        try:
            if accumulate > 1 and done % accumulate and done != TINY_BATCHES_PER_EPOCH:
                return f"{where}: inside a gradient accumulation"
            train_in_process(resumed_config(str(run_dir)), resume=True)
            return None if (run_dir / "metrics.json").read_bytes() == expected else f"{where}: other metrics"
        finally:
            shutil.rmtree(run_dir)

    failures, resumed = [], 0
    for snapshot in snapshots:
        if (snapshot / "checkpoints" / LAST).exists():  # else: killed before any last.ckpt, nothing to resume
            subprocess.run(["cp", "-a", str(snapshot), str(run_dir)], check=True)
            failures.append(resumes_bit_identical(f"kill -9 after {snapshot.name}"))
            resumed += 1
    moments = [SigtermAt(batch=b) for b in range(1, batches + 1)] + [SigtermAt(evaluation=e) for e in range(1, evaluations + 1)]
    for moment in moments:
        name = f"SIGTERM at batch {moment.batch}" if moment.batch else f"SIGTERM at evaluation {moment.evaluation}"
        extra_callbacks[:] = [moment]
        try:
            train_in_process(cfg)
        except Preempted:
            failures.append(resumes_bit_identical(name))
        else:
            failures.append(f"{name}: the run did not stop")
            shutil.rmtree(run_dir)
    bad = [f for f in failures if f]
    assert not bad, f"{len(bad)} of {len(failures)} moments:\n" + "\n".join(bad)
    assert resumed >= 3  # kill -9 after at least three checkpoint writes was tried


def test_sigterm_on_the_step_an_evaluation_follows_resumes_bit_identical(uninterrupted: bytes, data_dir: Path, tmp_path: Path,
                                                                        extra_callbacks: list[Any]) -> None:
    """Real MiniLM and the settings above: SIGTERM during step 10 of 20, after which dev is evaluated; the
    resumed run must not skip that evaluation."""
    from reprozoo.cli.common import configure
    from reprozoo.resume import Preempted, resumed_config

    out = tmp_path / "run"
    cfg = configure(None, ["trainer.val_check_interval=0.5"], data_dir=str(data_dir), out=str(out), limit_train_samples=320,
                    limit_eval_samples=100, batch_size=16, max_epochs=2, lr=1e-4, tracking="off", checkpoint_every=3)
    extra_callbacks.append(SigtermAt(batch=10))
    with pytest.raises(Preempted):
        train_in_process(cfg)
    extra_callbacks.clear()
    assert batches_done(out / "checkpoints" / LAST) == (10, 10)  # written at the end of the evaluation after step 10
    train_in_process(resumed_config(str(out)), resume=True)
    assert (out / "metrics.json").read_bytes() == uninterrupted


def test_best_checkpoint_state_follows_a_moved_run_directory(tmp_path: Path) -> None:
    """Resumed in another directory (fetched onto another machine), the best score and path are kept:
    Lightning's own ModelCheckpoint drops the score, and the next evaluation becomes "best"."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from reprozoo.resume import RelocatableModelCheckpoint

    settings = {"filename": "best-{epoch}-{step}", "monitor": "dev/macro_f1", "mode": "max", "save_top_k": 1}
    before = ModelCheckpoint(dirpath=tmp_path / "lost" / "checkpoints", **settings)
    before.best_model_path = str(tmp_path / "lost" / "checkpoints" / "best-0-10.ckpt")
    before.best_model_score, before.kth_value = torch.tensor(0.4), torch.tensor(0.4)
    before.kth_best_model_path = before.best_model_path
    before.best_k_models = {before.best_model_path: torch.tensor(0.4)}
    after = RelocatableModelCheckpoint(dirpath=tmp_path / "elsewhere" / "checkpoints", **settings)
    assert after.state_key == before.state_key  # either resumes from a checkpoint of the other
    after.load_state_dict(before.state_dict())
    moved = str(tmp_path / "elsewhere" / "checkpoints" / "best-0-10.ckpt")
    assert after.best_model_path == moved and after.kth_best_model_path == moved
    assert after.best_model_score == torch.tensor(0.4) and after.best_k_models == {moved: torch.tensor(0.4)}
    plain = ModelCheckpoint(dirpath=tmp_path / "elsewhere" / "checkpoints", **settings)
    with pytest.warns(UserWarning, match="dirpath has changed"):
        plain.load_state_dict(before.state_dict())
    assert plain.best_model_score is None  # what Lightning's own loses on another machine


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoints = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, checkpoints / LAST)
    io.save_checkpoint({"global_step": 2}, checkpoints / LAST)
    assert torch.load(checkpoints / PREVIOUS, weights_only=True)["global_step"] == 1
    data = (checkpoints / LAST).read_bytes()
    (checkpoints / LAST).write_bytes(data[: len(data) // 2])  # truncated, as by a crash of another tool
    assert find_resume_checkpoint(tmp_path) == checkpoints / PREVIOUS
    assert "corrupt or truncated" in capsys.readouterr().err
    (checkpoints / PREVIOUS).write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="no usable checkpoint"):
        find_resume_checkpoint(tmp_path)


def test_a_kill_between_keeping_the_previous_and_the_rename_leaves_last_ckpt(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """atomic_torch_save keeps last.ckpt as last.prev.ckpt (a hard link), then renames the new file over
    last.ckpt: a process killed in between (the writer thread waiting for the GIL) leaves last.ckpt as it
    was, which resume takes. (A kill -9 of a DDP rank 0 drew that moment and found no last.ckpt.)"""
    checkpoints = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, checkpoints / LAST)
    rename = os.replace

    def killed_after_keeping_the_previous(src: str | Path, dst: str | Path) -> None:
        rename(src, dst)
        if Path(dst).name == PREVIOUS:
            raise KeyboardInterrupt  # stands for the SIGKILL: nothing after this line runs

    monkeypatch.setattr(os, "replace", killed_after_keeping_the_previous)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, checkpoints / LAST)
    monkeypatch.undo()
    assert torch.load(checkpoints / PREVIOUS, weights_only=True)["global_step"] == 1
    found = find_resume_checkpoint(tmp_path)
    assert found == checkpoints / LAST and torch.load(found, weights_only=True)["global_step"] == 1
    io.save_checkpoint({"global_step": 3}, checkpoints / LAST)  # the next write replaces both as usual
    assert [torch.load(checkpoints / n, weights_only=True)["global_step"] for n in (LAST, PREVIOUS)] == [3, 1]


def test_where_hard_links_are_refused_a_kill_between_the_renames_resumes_from_the_previous(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without hard links last.ckpt is moved to last.prev.ckpt: a kill before the new file is renamed in
    leaves no last.ckpt, and resume takes the previous."""
    checkpoints = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, checkpoints / LAST)
    rename = os.replace

    def refused(src: str | Path, dst: str | Path) -> None:
        raise PermissionError(1, "Operation not permitted")

    def killed_after_the_first_rename(src: str | Path, dst: str | Path) -> None:
        rename(src, dst)
        if Path(dst).name == PREVIOUS:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", refused)
    monkeypatch.setattr(os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, checkpoints / LAST)
    monkeypatch.undo()
    assert not (checkpoints / LAST).exists()
    assert not list(checkpoints.glob("*.prev"))  # no stray link attempt left
    found = find_resume_checkpoint(tmp_path)
    assert found == checkpoints / PREVIOUS and torch.load(found, weights_only=True)["global_step"] == 1


def stopped_tiny_run(model: Path, data: Path, out: Path, extra_callbacks: list[Any]) -> Path:
    """A tiny untracked run (64 sentences, batches of 16) stopped by SIGTERM at its second batch: its run directory."""
    from reprozoo.resume import Preempted

    cfg = RunConfig().override([f"data.data_dir={data}", f"model.name={model}", "data.limit_train_samples=64",
                                "data.limit_eval_samples=16", "data.batch_size=16", "trainer.max_epochs=1",
                                "tracking.mode=off", f"out_dir={out}"])
    extra_callbacks.append(SigtermAt(batch=2))
    with pytest.raises(Preempted):
        train_in_process(cfg)
    extra_callbacks.clear()
    return out


class PicklePayload:
    """Unpickled, it creates the file `marker`: what a checkpoint from elsewhere could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_runs_nothing(tiny_model_dirs: dict[str, Path], data_dir: Path,
                                                                           tmp_path: Path, extra_callbacks: list[Any]) -> None:
    """Issue 32, item 2: a `last.ckpt` from a copied run directory, another machine or the task's storage
    must not run code as it is opened (weights_only=True)."""

    out = stopped_tiny_run(tiny_model_dirs["bert"], data_dir, tmp_path / "run", extra_callbacks)
    marker = tmp_path / "created-by-the-checkpoint"
    last = out / "checkpoints" / LAST
    state = torch.load(last, map_location="cpu", weights_only=True)  # what reprozoo wrote loads as plain data
    state["callbacks"]["payload"] = PicklePayload(marker)
    torch.save(state, last)
    resumed = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--resume", str(out)], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    line = resumed.stderr.strip().splitlines()[-1]
    assert line == (f"error: {last} holds more than tensors and plain values (loading it would run code it names): refused;"
                    " resume only from checkpoints reprozoo wrote, or start a new run"), resumed.stderr[-3000:]
    assert not marker.exists() and not (out / "metrics.json").exists()


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


def test_resume_refuses_other_data_weights_or_software_unless_accepted(tiny_model_dirs: dict[str, Path], data_dir: Path,
                                                                        tmp_path: Path, extra_callbacks: list[Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, case 5: `train --resume` checks the state against the run's start instead of re-recording it:
    a run trained half on one state and half on another must not be recorded as the second."""
    from reprozoo.resume import RESUME_CHANGES, resumed_config

    model, data = tmp_path / "model", tmp_path / "trees"
    shutil.copytree(tiny_model_dirs["bert"], model)
    shutil.copytree(data_dir, data)
    for file in data.iterdir():
        file.chmod(0o644)
    out = stopped_tiny_run(model, data, tmp_path / "run", extra_callbacks)
    started = (out / "provenance.json").read_text()

    # Unchanged: resumes without a word (the other resume tests finish such runs).
    # Changed: one bit of the weights, one more line of training data, and another lock (as in an image).
    weights_file = next(model.glob("*.safetensors"))
    weights_bytes = bytearray(weights_file.read_bytes())
    weights_bytes[-1] ^= 1
    weights_file.write_bytes(bytes(weights_bytes))
    (data / "train.txt").write_text((data / "train.txt").read_text() + (data / "train.txt").read_text().splitlines()[0] + "\n")
    from importlib import metadata

    lock = tmp_path / "other.lock"  # another lock, which this environment matches
    lock.write_text(f"torch=={metadata.version('torch').split('+')[0]}\n")
    monkeypatch.setenv("REPROZOO_LOCK", str(lock))
    with pytest.raises(ResumeError) as refused:
        train_in_process(resumed_config(str(out)), resume=True)
    message = str(refused.value)
    assert "\n" not in message and "--accept-changes" in message
    for field in ("weights.revision", "data.sha256.train", "environment.lock_sha256"):
        assert field in message, field
    assert "data.sha256.dev" not in message and "code." not in message
    assert (out / "provenance.json").read_text() == started and not (out / "metrics.json").exists()  # nothing touched

    from reprozoo.train import train

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        train(resumed_config(str(out)), resume=True, accept_changes=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert (out / "metrics.json").is_file()
    history = json.loads((out / RESUME_CHANGES).read_text())
    assert [c["field"] for c in history[0]["changes"]] == ["weights.revision", "data.sha256.train", "environment.lock_sha256"]
    assert (out / "provenance.before-resume-1.json").read_text() == started  # the start's state, kept
    now = json.loads((out / "provenance.json").read_text())
    assert now["environment"]["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest() and len(now["resume_history"][0]["changes"]) == 3

    # Issue 31, case 6: `repro` of this run replays all of it on the second state; it says so, before it
    # runs and in the verdict, instead of "nothing explains a difference".
    replay_dir = tmp_path / "replays"
    done = subprocess.run([sys.executable, "-m", "reprozoo", "repro", str(out), "--verify", "--data-dir", str(data),
                           "--runs-dir", str(replay_dir)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    lines = done.stdout.splitlines()
    segment = "resume 1: weights.revision, data.sha256.train, environment.lock_sha256"
    noted = [line for line in lines if segment in line and "segment 2 of 2" in line]
    assert len(noted) == 2 and lines.index(noted[0]) < lines.index(next(x for x in lines if x.startswith("verdict: differs"))), done.stdout


def test_resume_on_other_hardware_refuses_to_train_otherwise_unless_accepted(tiny_model_dirs: dict[str, Path], data_dir: Path,
                                                                              tmp_path: Path, extra_callbacks: list[Any]) -> None:
    """Issue 31, case 3: a run resumed elsewhere resolved `auto` again on the new machine (a bf16 run
    from an A100 went on in fp16 on a T4; on 2 GPUs it became DDP with twice the global batch), and
    the thread count and CPU model were not compared. The start's resolved values are compared; a
    difference is refused in one line naming each field and the flag, and recorded when accepted."""
    import torch

    from reprozoo.resume import RESUME_CHANGES, resumed_config
    from reprozoo.train import train

    out = stopped_tiny_run(tiny_model_dirs["bert"], data_dir, tmp_path / "run", extra_callbacks)
    started = json.loads((out / "provenance.json").read_text())
    # As the start had recorded it on a 2-GPU A100 machine, and with another thread count here.
    edited = {**started, "resolved": {**started["resolved"], "precision": "bf16-mixed", "world_size": 2, "global_batch_size": 32}}
    (out / "provenance.json").write_text(json.dumps(edited))
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(ResumeError) as refused:
            train_in_process(resumed_config(str(out)), resume=True)
        message = str(refused.value)
        assert "\n" not in message and "--accept-changes" in message, message
        for shown in ("resolved.precision bf16-mixed → 32-true", "resolved.world_size 2 → 1", "resolved.global_batch_size 32 → 16",
                      f"environment.torch_threads {threads} → {threads + 1}"):
            assert shown in message, shown
        assert not (out / "metrics.json").exists()
        train(resumed_config(str(out)), resume=True, accept_changes=True)
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    history = json.loads((out / RESUME_CHANGES).read_text())
    assert [c["field"] for c in history[0]["changes"]] == ["resolved.precision", "resolved.world_size",
                                                            "resolved.global_batch_size", "environment.torch_threads"]
    assert json.loads((out / "provenance.before-resume-1.json").read_text())["resolved"]["precision"] == "bf16-mixed"
    resolved = json.loads((out / "provenance.json").read_text())["resolved"]
    assert {k: resolved[k] for k in ("accelerator", "precision", "world_size", "global_batch_size")} == \
        {"accelerator": "cpu", "precision": "32-true", "world_size": 1, "global_batch_size": 16}
    assert (out / "metrics.json").is_file()
