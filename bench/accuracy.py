"""Accuracy benchmark: the default all-minilm-l6-v2 recipe on the full SST-5 train set.

Runs the real `reprozoo train` CLI (a subprocess, exactly as a user would), streams its
progress, and ends with one JSON line: test/dev accuracy and macro-F1, and training time.
The recipe was chosen on the dev set only (see bench/RESULTS.md); test is read once, at the end.

    python bench/accuracy.py [--data-dir DIR] [--out runs/bench-accuracy] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

# The default recipe for all-minilm-l6-v2 (chosen on dev; see bench/RESULTS.md).
RECIPE = [
    "--model", "all-minilm-l6-v2",
    "--granularity", "phrases",
    "--set", "data.phrase_weighting=uniform",
    "--batch-size", "64",
    "--lr", "1e-4",
    "--max-epochs", "1",
    "--set", "trainer.val_check_interval=0.25",
    "--checkpoint-every", "500",  # a preempted benchmark resumes with `reprozoo train --resume OUT`
    "--seed", "42",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR"))
    parser.add_argument("--out", default="runs/bench-accuracy")
    parser.add_argument("--tracking", default="offline")
    parser.add_argument("--set", action="append", default=[], help="override a recipe setting (dev-set exploration)")
    args = parser.parse_args()

    command = [sys.executable, "-m", "reprozoo", "train", *RECIPE, "--out", args.out, "--overwrite",
               "--tracking", args.tracking]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    for assignment in args.set:
        command += ["--set", assignment]
    print("command:", shlex.join(command), flush=True)
    started = time.time()
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        print(f"training failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    run = Path(args.out)
    metrics = json.loads((run / "metrics.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    summary = {
        "model": "all-minilm-l6-v2",
        "test_accuracy": round(metrics["test"]["accuracy"], 4),
        "test_macro_f1": round(metrics["test"]["macro_f1"], 4),
        "dev_accuracy": round(metrics["dev"]["accuracy"], 4),
        "dev_macro_f1": round(metrics["dev"]["macro_f1"], 4),
        "train_seconds": round(timing["train_seconds"], 1),
        "wall_seconds": round(time.time() - started, 1),
        "epochs": metrics["train"]["epochs"],
        "steps": metrics["train"]["steps"],
        "best_checkpoint": metrics["best_checkpoint"],
        "threads": timing["torch_threads"],
        "target_test_accuracy": 0.52,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
