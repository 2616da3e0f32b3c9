"""Does the token budget cost accuracy? Dev accuracy of MiniLM after the same number of training
phrases, with token-budget batches (`data.max_tokens`) and with fixed batches of the zoo's size,
over several seeds, as `reprozoo train` runs them (no evaluation while training, dev scored once
after; the `ours` and `ours-fixed` commands of bench/throughput.py).

Reported per setting: each seed's dev accuracy and macro-F1, mean and standard deviation, and the
budget's mean minus the fixed batches' in units of their pooled standard deviation. Ends with one
JSON line.

    python bench/budget_accuracy.py                       # 3 seeds x 2 settings x 6,400 phrases: ~8 min on 2 cores
    python bench/budget_accuracy.py --lr-scale 2          # the budget's runs with 2x the learning rate too
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODEL = "all-minilm-l6-v2"


def run(data_dir: str, out: Path, seed: int, examples: int, max_tokens: int | None, lr: float | None) -> dict[str, float]:
    command = [sys.executable, "-m", "reprozoo", "train", "--model", MODEL, "--granularity", "phrases", "--max-epochs", "1",
               "--seed", str(seed), "--data-dir", data_dir, "--out", str(out), "--overwrite",
               "--limit-train-samples", str(examples), "--set", "trainer.val_check_interval=1.0"]
    if max_tokens:
        command += ["--set", f"data.max_tokens={max_tokens}"]
    if lr:
        command += ["--lr", str(lr)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"accuracy": metrics["dev"]["accuracy"], "macro_f1": metrics["dev"]["macro_f1"], "steps": metrics["train"]["steps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst5" / "trees"
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR") or str(shared))
    parser.add_argument("--out", default="runs/bench-budget-accuracy")
    parser.add_argument("--examples", type=int, default=6400)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lr-scale", type=float, default=None, help="also run the budget with the zoo's lr times this")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from reprozoo import zoo

    zoo_lr = zoo.get(MODEL).lr
    settings: dict[str, tuple[int | None, float | None]] = {"fixed": (None, None), "budget": (args.max_tokens, None)}
    if args.lr_scale:
        settings[f"budget-lr{args.lr_scale:g}x"] = (args.max_tokens, zoo_lr * args.lr_scale)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for seed in seeds:
        for name, (max_tokens, lr) in settings.items():
            result = run(args.data_dir, Path(args.out) / f"{name}-seed{seed}", seed, args.examples, max_tokens, lr)
            results[name].append(result)
            print(f"[{time.time() - started:4.0f}s] {name} seed {seed}: dev accuracy {result['accuracy']:.4f}, macro-F1 "
                  f"{result['macro_f1']:.4f}, {result['steps']} steps", flush=True)
    summary: dict[str, dict[str, float]] = {}
    for name, rows in results.items():
        accuracies = [r["accuracy"] for r in rows]
        summary[name] = {"mean": statistics.mean(accuracies), "sd": statistics.stdev(accuracies) if len(rows) > 1 else 0.0,
                         "macro_f1_mean": statistics.mean(r["macro_f1"] for r in rows), "steps": rows[0]["steps"]}
    fixed = summary["fixed"]
    for name, s in summary.items():
        if name == "fixed":
            continue
        pooled = ((s["sd"] ** 2 + fixed["sd"] ** 2) / 2) ** 0.5 or 1e-9
        s["minus_fixed_in_sd"] = (s["mean"] - fixed["mean"]) / pooled
        print(f"{name}: dev accuracy {s['mean']:.4f} ± {s['sd']:.4f} vs fixed {fixed['mean']:.4f} ± {fixed['sd']:.4f} "
              f"({s['minus_fixed_in_sd']:+.2f} pooled sd), {s['steps']:.0f} vs {fixed['steps']:.0f} steps", flush=True)
    print(json.dumps({"examples": args.examples, "seeds": seeds, "max_tokens": args.max_tokens,
                      "summary": {k: {m: round(v, 4) for m, v in s.items()} for k, s in summary.items()},
                      "seconds": round(time.time() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
