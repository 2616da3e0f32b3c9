"""Two trainings started at once in one project directory, sharing one cold token cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_two_runs_at_once_keep_separate_records(tmp_path: Path, data_dir: Path) -> None:
    env = {**os.environ, "REPROZOO_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "reprozoo", "train", "--data-dir", str(data_dir), "--limit-train-samples", "160",
            "--limit-eval-samples", "60", "--max-epochs", "1", "--tracking", "offline"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2  # same model, same second: the second run got its own directory
    metrics = [(run / "metrics.json").read_bytes() for run in runs]
    assert metrics[0] == metrics[1]  # same seed and config, computed independently
    tasks = [json.loads((run / "task.json").read_text())["task_id"] for run in runs]
    assert len(set(tasks)) == 2
    caches = list((tmp_path / "cache" / "tokens").iterdir())
    assert len(caches) == 1 and caches[0].suffix == ".pt"  # one whole file, no leftovers
