"""`--devices`: handed to Lightning as given (several: DDP, one process per device), and a real
2-process DDP run on the CPU (gloo): one run directory, one task, exact metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import NoTracker, isolate_clearml
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
    rows = [float(r["val/macro_f1"]) for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("val/macro_f1")]
    *during, final = rows  # two evaluations in training, then the best checkpoint re-scored
    assert len(during) == 2 and final == pytest.approx(max(during), abs=1e-6)
    assert metrics["dev"]["macro_f1"] == pytest.approx(final, abs=1e-6)
    records = list_offline()
    assert len(records) == 1 and records[0].metrics == metrics


def test_ddp_workers_get_rank_0s_resolved_run(data_dir: Path, tmp_path: Path) -> None:
    """Ranks > 0 are started with `reprozoo train --config <spec>`: rank 0's config as it resolved it
    (the very trees and weights, its run directory, nothing recorded), never their own command line."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    from reprozoo.train import DDP_RESUME_ENV, DDP_WORKER_SPEC, Inputs, ddp_workers_run, plan_run

    cfg = RunConfig().override([f"data.data_dir={data_dir}", "trainer.devices=2", "trainer.accelerator=cpu",
                                f"out_dir={tmp_path / 'run'}", "tracking.mode=offline"])
    plan = plan_run(cfg)
    plan.run_dir.mkdir(parents=True)
    weights = type("Weights", (), {"revision": "sha256:" + "c" * 64})()
    launcher_command = subprocess_script._basic_subprocess_cmd
    with ddp_workers_run(plan, Inputs(weights, None, None), str(plan.run_dir / "last.ckpt")) as spec:
        command = subprocess_script._basic_subprocess_cmd()
        assert command[1:] == ["-m", "reprozoo", "train", "--config", str(spec)] and spec.name == DDP_WORKER_SPEC
        worker = RunConfig.load(spec)
        assert worker.model.revision == "sha256:" + "c" * 64 and worker.data.data_dir == str(data_dir.resolve())
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
