"""Accuracy benchmark: a zoo model's default recipe on the full SST-5 train set, on this machine.

Runs the real `reprozoo train --model M` CLI (a subprocess, exactly as a user would), so what it
measures is the recipe `make train` and `sweep` use: `zoo.recipe(M)` from src/reprozoo/zoo.yaml,
chosen on the dev set only (bench/RESULTS.md). Streams the run's progress and ends with one JSON
line: test/dev accuracy and macro-F1, the dev curve, training time and the recipe. Test is read
once, at the end, with the best-on-dev checkpoint.

    python bench/accuracy.py [--model all-mpnet-base-v2] [--data-dir DIR] [--out runs/bench-accuracy-M]
                             [--set key=value ...]   # --set: dev-set exploration; the JSON line says what was set
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from reprozoo import zoo

# What each benchmarked model must reach on test (BERT-base, published, is 53.2 %; majority class 28.6 %).
TARGETS = {"all-minilm-l6-v2": 0.52, "all-mpnet-base-v2": 0.54}
SEED = "42"


def command(model: str, out: str, tracking: str, data_dir: str | None, sets: list[str]) -> list[str]:
    """`reprozoo train` with the zoo's recipe for MODEL (train applies it: no recipe flags here)."""
    argv = [sys.executable, "-m", "reprozoo", "train", "--model", model, "--seed", SEED,
            "--checkpoint-every", "500",  # a preempted benchmark resumes with `reprozoo train --resume OUT`
            "--out", out, "--overwrite", "--tracking", tracking]
    if data_dir:
        argv += ["--data-dir", data_dir]
    for assignment in sets:
        argv += ["--set", assignment]
    return argv


def dev_curve(run: Path) -> list[dict[str, float]]:
    """Each dev evaluation during training (logs/metrics.csv): step, accuracy and macro-F1. The CSV's
    last dev row is the best checkpoint scored again after training (dev_accuracy): left out."""
    curve = []
    with (run / "logs" / "metrics.csv").open() as rows:
        for row in csv.DictReader(rows):
            if row.get("dev/accuracy"):
                curve.append({"step": int(float(row["step"])), "accuracy": round(float(row["dev/accuracy"]), 4),
                              "macro_f1": round(float(row["dev/macro_f1"]), 4)})
    return curve[:-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-minilm-l6-v2", choices=sorted(TARGETS))
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR"))
    parser.add_argument("--out", default=None, help="run directory (default: runs/bench-accuracy-MODEL)")
    parser.add_argument("--tracking", default="offline")
    parser.add_argument("--set", action="append", default=[], help="override a recipe setting (dev-set exploration)")
    args = parser.parse_args()

    out = args.out or f"runs/bench-accuracy-{args.model}"
    argv = command(args.model, out, args.tracking, args.data_dir, args.set)
    print("command:", shlex.join(argv), flush=True)
    started = time.time()
    result = subprocess.run(argv, check=False)
    if result.returncode != 0:
        print(f"training failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    run = Path(out)
    metrics = json.loads((run / "metrics.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    summary = {
        "model": args.model,
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
        "dev_curve": dev_curve(run),
        "recipe": zoo.recipe(args.model),
        "set": args.set,
        "target_test_accuracy": TARGETS[args.model],
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
