"""`--devices`: handed to Lightning as given (several: DDP, one process per device), and a real
2-process DDP run on the CPU (gloo): one run directory, one task, exact metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import NoTracker, checkpoint_mtime, isolate_clearml
from reprozoo.config import RunConfig


@pytest.mark.parametrize(("accelerator", "devices", "expected"), [("gpu", "2", "2"), ("gpu", "0,1", "0,1"), ("gpu", "auto", "auto"),
                                                                   ("cpu", "2", "2")])
def test_devices_reach_the_lightning_trainer(data_dir: Path, tmp_path: Path, accelerator: str, devices: str, expected: object) -> None:
    from dataclasses import replace

    from reprozoo.train import _trainer_kwargs, plan_run

    cfg = RunConfig().override([f"data.data_dir={data_dir}", f"trainer.devices={devices}", f"out_dir={tmp_path / 'run'}"])
    plan = replace(plan_run(cfg), accelerator=accelerator)  # no GPU here: the plan says what a GPU host decides

    kwargs = _trainer_kwargs(cfg, plan, NoTracker())
    assert kwargs["accelerator"] == accelerator and kwargs["devices"] == expected
    assert kwargs["use_distributed_sampler"] is False  # our sampler shards by rank; evaluation stays whole
    several = devices in ("2", "0,1")
    assert kwargs["strategy"] == ("ddp_find_unused_parameters_true" if several else "auto")


@pytest.mark.slow
def test_two_process_ddp_on_the_cpu(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv
    import json
    import subprocess
    import sys

    from reprozoo.records import list_offline

    isolate_clearml(monkeypatch, tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--accelerator", "cpu", "--devices", "2",
                             "--data-dir", str(data_dir), "--limit-train-samples", "256", "--limit-eval-samples", "100",
                             "--batch-size", "16", "--max-epochs", "1", "--tracking", "offline", "--out", str(runs / "ddp"),
                             "--set", "trainer.val_check_interval=0.5"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("clearml task:") == 1  # rank 1 trains and reports nothing
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # and claims no run directory of its own
    run = runs / "ddp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 8  # 16 batches of 16, half on each rank
    assert sum(map(sum, metrics["dev"]["confusion_matrix"])) == 100  # the whole split, no padded shards
    # The best checkpoint re-scored gives exactly its in-training evaluation.
    rows = [float(r["dev/macro_f1"]) for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("dev/macro_f1")]
    assert len(rows) == 2  # two evaluations in training; the re-scoring is not logged as a third (issue 33)
    assert metrics["dev"]["macro_f1"] == pytest.approx(max(rows), abs=1e-6)
    records = list_offline()
    assert len(records) == 1 and records[0].metrics == metrics


def test_ddp_workers_get_rank_0s_resolved_run(data_dir: Path, tmp_path: Path) -> None:
    """Ranks > 0 are started with `reprozoo train --config <spec>`: rank 0's config as it resolved it
    (the very trees and weights, its run directory, nothing recorded), never their own command line."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    from reprozoo.ddp import DDP_RESUME_ENV, DDP_WORKER_SPEC, ddp_workers_run
    from reprozoo.train import plan_run

    cfg = RunConfig().override([f"data.data_dir={data_dir}", "trainer.devices=2", "trainer.accelerator=cpu",
                                f"out_dir={tmp_path / 'run'}", "tracking.mode=offline"])
    plan = plan_run(cfg)
    plan.run_dir.mkdir(parents=True)
    revision = "sha256:" + "c" * 64  # the weights rank 0 loaded
    launcher_command = subprocess_script._basic_subprocess_cmd
    with ddp_workers_run(plan.cfg, plan.data_dir, revision, plan.run_dir, str(plan.run_dir / "last.ckpt")) as spec:
        command = subprocess_script._basic_subprocess_cmd()
        assert command[1:] == ["-m", "reprozoo", "train", "--config", str(spec)] and spec.name == DDP_WORKER_SPEC
        worker = RunConfig.load(spec)
        assert worker.model.revision == revision and worker.data.data_dir == str(data_dir.resolve())
        assert worker.out_dir == str(plan.run_dir.resolve()) and worker.tracking.mode == "off"
        assert worker.optim == plan.cfg.optim and worker.trainer == plan.cfg.trainer and worker.seed == plan.cfg.seed
        assert os.environ[DDP_RESUME_ENV] == str((plan.run_dir / "last.ckpt").resolve())
        os.environ["LOCAL_RANK"] = "0"  # what Lightning's launcher leaves in rank 0
    # Afterwards: nothing left for the next run in this process (a sweep's, a search's) to trip on.
    assert subprocess_script._basic_subprocess_cmd is launcher_command and not spec.exists()
    assert "LOCAL_RANK" not in os.environ and DDP_RESUME_ENV not in os.environ


@pytest.mark.slow
def test_a_sweep_on_two_cpu_processes_trains_each_model_once(isolated_clearml: Path, tiny_model_dirs: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep` with 2 devices: rank 1 of each model trains that model's share (started as `train
    --config`), never a sweep of its own, and the second model starts its own rank 1 (that rank 1
    trains the task's config is tests/server/test_agents.py's DDP test)."""
    import json

    from helpers import reprozoo
    from reprozoo.records import list_offline

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    tiny = ["--set", "data.limit_train_samples=64", "--set", "data.limit_eval_samples=32", "--set", "trainer.max_epochs=1",
            "--set", "data.max_length=32", "--set", "optim.lr=1e-3", "--set", "trainer.accelerator=cpu",
            "--set", "trainer.devices=2", "--set", "tracking.mode=offline"]
    models = [tiny_model_dirs["bert"], tiny_model_dirs["electra"]]
    out = isolated_clearml / "sweep"
    swept = reprozoo("sweep", "--models", ",".join(map(str, models)), "--local", "--out", str(out), *tiny, timeout=900)
    assert swept.returncode == 0, swept.stdout[-2000:] + swept.stderr[-3000:]
    assert swept.stdout.count("sweep: 2 model(s): 2 done") == 1, swept.stdout  # one sweep, not one per rank
    assert sorted(p.name for p in out.iterdir()) == ["tiny-bert", "tiny-electra"]
    records = list_offline()
    assert sorted(Path(r.config.model.name).name for r in records) == ["tiny-bert", "tiny-electra"]
    swept_metrics = json.loads((out / "tiny-electra" / "metrics.json").read_text())
    assert sum(map(sum, swept_metrics["dev"]["confusion_matrix"])) == 32  # the whole split, scored once
    assert swept_metrics["train"]["steps"] == 1  # 64 examples, 2 batches of 32: one on each rank


def ddp_args(model: Path, data_dir: Path, out: Path) -> list[str]:
    # 64 steps a rank, a checkpoint after each: the stop lands mid-epoch; dropout on (the tiny model's and the head's).
    return [sys.executable, "-m", "reprozoo", "train", "--model", str(model), "--accelerator", "cpu", "--devices", "2",
            "--data-dir", str(data_dir), "--limit-train-samples", "2048", "--limit-eval-samples", "64", "--max-length", "32",
            "--batch-size", "16", "--max-epochs", "1", "--lr", "1e-3", "--tracking", "off", "--checkpoint-every", "1",
            "--set", "trainer.val_check_interval=1.0", "--out", str(out)]


@pytest.fixture(scope="module")
def ddp_uninterrupted(tiny_model_dirs: dict[str, Path], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("ddp-straight") / "run"
    done = subprocess.run(ddp_args(tiny_model_dirs["bert"], data_dir, out), capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return (out / "metrics.json").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to the process group", "kill -9 of rank 0"])
def test_a_two_process_run_stopped_mid_epoch_resumes_bit_identical(how: str, ddp_uninterrupted: bytes, tiny_model_dirs: dict[str, Path],
                                                                 data_dir: Path, tmp_path: Path) -> None:
    """Issue 32, item 3: each rank resumes its own random state (its own dropout masks), and a SIGTERM to the
    whole group reaches each rank once: the ranks agree on one stop step."""
    import psutil

    out = tmp_path / "run"
    proc = subprocess.Popen(ddp_args(tiny_model_dirs["bert"], data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last, seen, stamp = out / "checkpoints" / "last.ckpt", 0, None
    deadline = time.monotonic() + 600
    while seen < 3:  # the third checkpoint of 64: mid-epoch
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in 10 minutes"
        written = checkpoint_mtime(last)
        if written is not None and written != stamp:
            stamp, seen = written, seen + 1
        time.sleep(0.02)
    ranks = [proc.pid] + [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    assert len(ranks) == 2, ranks
    if how == "kill -9 of rank 0":
        proc.kill()
        proc.communicate(timeout=60)
        _, alive = psutil.wait_procs([psutil.Process(pid) for pid in ranks[1:] if psutil.pid_exists(pid)], timeout=120)
        for orphan in alive:  # rank 1 loses its peer (gloo) and fails; never left training on its own
            orphan.kill()
        assert not alive, "rank 1 went on after rank 0 was killed"
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "resume with: reprozoo train --resume" in err and "KeyboardInterrupt" not in err, err[-3000:]
        assert psutil.wait_procs([psutil.Process(pid) for pid in ranks[1:] if psutil.pid_exists(pid)], timeout=60)[1] == []
    assert not (out / "metrics.json").exists()
    import torch

    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 0 < state["global_step"] < 64 and len(state["callbacks"]["ResumeState"]["ranks"]) == 2

    resumed = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--resume", str(out)], capture_output=True, text=True,
                             timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "metrics.json").read_bytes() == ddp_uninterrupted  # byte for byte


def test_the_ranks_train_disjoint_batches_that_cover_the_epoch() -> None:
    """Issue 32, item 7: what each rank trains, not only how many steps."""
    import torch

    from reprozoo.data.module import LengthGroupedSampler

    lengths = torch.randint(3, 60, (333,), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (333,), generator=torch.Generator().manual_seed(1))
    one = LengthGroupedSampler(lengths, labels, batch_size=16, seed=7)
    ranks = [LengthGroupedSampler(lengths, labels, batch_size=16, seed=7, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 1):
        for sampler in (one, *ranks):
            sampler.set_epoch(epoch)
        everything = one.rank_batches()
        shares = [sampler.rank_batches() for sampler in ranks]
        assert len(shares[0]) == len(shares[1]) == len(everything) // 2  # equal steps: no rank waits on the other
        seen = [i for share in shares for batch in share for i in batch]
        assert len(seen) == len(set(seen))  # disjoint
        assert sorted(map(tuple, shares[0] + shares[1])) == sorted(map(tuple, everything[: 2 * len(shares[0])]))
        assert len(everything) - 2 * len(shares[0]) <= 1  # at most the odd batch is left out
