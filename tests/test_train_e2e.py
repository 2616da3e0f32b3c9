"""Real end-to-end runs: the packaged all-MiniLM-L6-v2 weights on real SST-5 sentences, CPU,
ClearML offline. ~20 s per run on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers import scratch
from reprozoo.config import RunConfig
from reprozoo.data.trees import LABEL_NAMES
from reprozoo.train import RunResult


def small_config(data_dir: Path, out: Path, tracking: str = "offline") -> RunConfig:
    return RunConfig().override([
        f"data.data_dir={data_dir}", "data.limit_train_samples=640", "data.limit_eval_samples=200",
        "trainer.max_epochs=1", f"tracking.mode={tracking}", f"out_dir={out}", "optim.lr=1e-4",
        "tracking.project=reprozoo-tests", "data.batch_size=16",
    ])


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[RunResult]:
    from reprozoo.train import train

    with scratch(tmp_path_factory, "run") as root:
        yield train(small_config(data_dir, root / "minilm"))


def test_run_directory_holds_every_artifact(minilm_run: RunResult, data_dir: Path) -> None:
    run = Path(minilm_run.run_dir)
    assert RunConfig.load(run / "config.yaml") == small_config(data_dir, run)
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("dev", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0 and 0.0 <= metrics[split]["macro_f1"] <= 1.0
        assert set(metrics[split]["per_class"]) == set(LABEL_NAMES)
        assert sum(map(sum, metrics[split]["confusion_matrix"])) == 200
    assert metrics["train"]["examples"] == 640 and metrics["train"]["steps"] == 40
    assert metrics["train"]["loss_last"] < metrics["train"]["loss_first"]  # it learned
    assert metrics["test"]["accuracy"] > 0.30  # above the 28.6% majority class after 640 sentences
    assert (run / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"
    # A finished run keeps its best checkpoint alone (last.ckpt only with trainer.keep_last_checkpoint).
    assert [p.name for p in (run / "checkpoints").iterdir()] == [Path(metrics["best_checkpoint"]).name]
    assert (run / "export" / "model.safetensors").is_file() and (run / "export" / "modeling_reprozoo.py").is_file()
    task = json.loads((run / "task.json").read_text())
    assert task["mode"] == "offline" and task["task_id"].startswith("offline-") and Path(task["offline_zip"]).is_file()


def test_metrics_hold_every_step_loss_and_the_exported_weights_sha256(minilm_run: RunResult) -> None:
    """"Bit-identical" covers the training, not only the scores: a replay or resume that compares
    metrics.json compares each optimiser step's loss and the exported weights' sha256 too."""
    import hashlib

    from reprozoo import repro

    run = Path(minilm_run.run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    losses = metrics["train"]["step_losses"]
    assert len(losses) == metrics["train"]["steps"] == 40 and all(isinstance(x, float) for x in losses)
    assert metrics["train"]["loss_first"] == pytest.approx(sum(losses[:4]) / 4)
    exported = hashlib.sha256((run / "export" / "model.safetensors").read_bytes()).hexdigest()
    assert metrics["weights_sha256"] == f"sha256:{exported}"
    assert repro.compare_metrics(metrics, json.loads(json.dumps(metrics))).status == "bit-identical"
    other_step = json.loads(json.dumps(metrics))
    other_step["train"]["step_losses"][7] = float(np.nextafter(losses[7], 1.0))  # one step, one bit
    verdict = repro.compare_metrics(metrics, other_step, tolerance=0.0)
    assert verdict.status == "differs" and [d[0] for d in verdict.differences] == ["train.step_losses.7"]
    other_weights = {**metrics, "weights_sha256": "sha256:" + "0" * 64}
    verdict = repro.compare_metrics(metrics, other_weights, tolerance=1e-6)
    assert verdict.status != "bit-identical" and verdict.differences[0][0] == "weights_sha256"


def test_export_loads_in_a_transformers_pipeline(minilm_run: RunResult) -> None:
    export = Path(minilm_run.run_dir) / "export"
    # A fresh interpreter without reprozoo imported: the export carries its own model code.
    code = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('text-classification', model={str(export)!r}, trust_remote_code=True)\n"
        "out = clf(['a lovely film with lovely performances', 'a dull, lifeless mess'], top_k=None)\n"
        "print(json.dumps([sorted(d['label'] for d in row) for row in out]))\n"
        "print('reprozoo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd="/")
    labels, imported = result.stdout.strip().splitlines()[-2:]
    assert json.loads(labels) == [sorted(LABEL_NAMES)] * 2 and imported == "False"


def test_export_loads_without_flag_once_reprozoo_is_imported(minilm_run: RunResult) -> None:
    from transformers import pipeline

    from reprozoo.modeling_reprozoo import register_auto_classes

    register_auto_classes()
    clf = pipeline("text-classification", model=str(Path(minilm_run.run_dir) / "export"))
    assert clf("a lovely film")[0]["label"] in LABEL_NAMES


def test_predict_cli(minilm_run: RunResult) -> None:
    result = subprocess.run([sys.executable, "-m", "reprozoo", "predict", "--run", minilm_run.run_dir,
                             "a lovely film", "a dull mess"], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[0] in LABEL_NAMES and lines[0].endswith("a lovely film")
    assert "very negative=" in lines[1] and "very positive=" in lines[1]


def test_same_seed_same_metrics_bit_for_bit(minilm_run: RunResult, data_dir: Path, tmp_path: Path) -> None:
    from reprozoo.train import train

    again = train(small_config(data_dir, tmp_path / "again", tracking="off"))
    first = (Path(minilm_run.run_dir) / "metrics.json").read_bytes()
    assert (Path(again.run_dir) / "metrics.json").read_bytes() == first


def test_finished_run_is_not_overwritten(minilm_run: RunResult, data_dir: Path) -> None:
    from reprozoo.config import ConfigError
    from reprozoo.train import plan_run

    with pytest.raises(ConfigError, match="already holds a finished run; pass --overwrite"):
        plan_run(small_config(data_dir, Path(minilm_run.run_dir)))


def test_token_budget_phrase_run_records_its_throughput(data_dir: Path, tmp_path: Path) -> None:
    from reprozoo.train import train

    cfg = small_config(data_dir, tmp_path / "budget", tracking="off").override(
        ["data.granularity=phrases", "data.max_tokens=256", "data.limit_eval_samples=50"])
    result = train(cfg)
    timing = json.loads((Path(result.run_dir) / "timing.json").read_text())
    t = timing["throughput"]
    assert t["examples"] == 640 and t["steps"] == result.metrics["train"]["steps"]
    assert t["steps"] < 640 // 16  # short phrases: more than batch_size=16 per 256-token batch
    assert t["real_tokens"] <= t["padded_tokens"] <= t["steps"] * 256 and t["padding_efficiency"] > 0.8
    assert 0 <= t["data_wait_fraction"] < 0.5 and t["first_step_unix"] >= t["train_start_unix"]
