"""`--devices`: handed to Lightning as given (several: DDP, one process per device), and a real
2-process DDP run on the CPU (gloo): one run directory, one task, exact metrics."""

from __future__ import annotations

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
