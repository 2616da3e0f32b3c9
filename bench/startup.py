"""Fixed costs: launch -> first optimiser step, for a fresh `reprozoo train` process and for runs that
a process already serving runs starts (a sweep's next model, an HPO trial: both call
reprozoo.train.train in-process), against the import floor measured in the same run. Information,
not a target: runs take minutes to hours.

Each run: MiniLM, phrases, 256 training examples, 64 dev/test examples, warm token cache (filled by a
first, untimed run), ClearML offline. Reported: the import floor (a fresh Python importing what a run
needs: torch, lightning, transformers, clearml, reprozoo.train), the fresh process's launch -> first
step, each in-process run's call -> first step, and the in-process/fresh ratio. Ends with one JSON line.

    python bench/startup.py            # ~3 min on 2 cores
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
IMPORTS = "import torch, lightning.pytorch, transformers, clearml, reprozoo.train"


def run_args(data_dir: str, out: Path, seed: int) -> list[str]:
    return ["--model", MODEL, "--granularity", "phrases", "--max-epochs", "1", "--seed", str(seed), "--data-dir", data_dir,
            "--out", str(out), "--overwrite", "--limit-train-samples", "256", "--limit-eval-samples", "64",
            "--set", "trainer.val_check_interval=1.0", "--set", "data.max_tokens=2048"]


def fresh(data_dir: str, out: Path, seed: int) -> float:
    """`python -m reprozoo train …` in a new process: launch -> end of the first optimiser step."""
    launched = time.time()
    subprocess.run([sys.executable, "-m", "reprozoo", "train", *run_args(data_dir, out, seed)], check=True,
                   capture_output=True, text=True)
    return json.loads((out / "timing.json").read_text())["throughput"]["first_step_unix"] - launched


def import_floor() -> float:
    launched = time.time()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True)
    return time.time() - launched


def in_process(data_dir: str, root: Path, runs: int) -> list[float]:
    """Several runs in one process, as `reprozoo sweep` and `reprozoo hpo` make them: call -> first step."""
    code = f"""
import json, sys, time
from pathlib import Path
from reprozoo.config import RunConfig
from reprozoo.train import train
seconds = []
for i in range({runs}):
    cfg = RunConfig()
    cfg.model.name, cfg.data.granularity, cfg.seed = {MODEL!r}, "phrases", 42 + i
    cfg.data.data_dir, cfg.out_dir = {data_dir!r}, str(Path({str(root)!r}) / f"in-process-{{i}}")
    cfg.data.limit_train_samples, cfg.data.limit_eval_samples, cfg.data.max_tokens = 256, 64, 2048
    cfg.trainer.max_epochs, cfg.trainer.val_check_interval = 1, 1.0
    called = time.time()
    result = train(cfg, overwrite=True)
    seconds.append(result.timing["throughput"]["first_step_unix"] - called)
print(json.dumps(seconds))
"""
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst5" / "trees"
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR") or str(shared))
    parser.add_argument("--out", default="runs/bench-startup")
    parser.add_argument("--repeats", type=int, default=3, help="fresh launches and import floors (medians reported)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    fresh(args.data_dir, root / "warm-up", 1)  # fills the token cache and the page cache; not timed
    floors = [import_floor() for _ in range(args.repeats)]
    launches = [fresh(args.data_dir, root / f"fresh-{i}", 42 + i) for i in range(args.repeats)]
    served = in_process(args.data_dir, root, runs=3)
    floor, launch = statistics.median(floors), statistics.median(launches)
    later = statistics.median(served[1:])
    print(f"import floor ({IMPORTS}): {', '.join(f'{s:.1f}' for s in floors)} s -> median {floor:.1f} s")
    print(f"fresh `reprozoo train`, launch -> first optimiser step: {', '.join(f'{s:.1f}' for s in launches)} s -> "
          f"median {launch:.1f} s ({launch - floor:.1f} s above the import floor)")
    print(f"in one process (sweep item, HPO trial), call -> first optimiser step: {', '.join(f'{s:.1f}' for s in served)} s "
          f"(the first pays the imports); later runs median {later:.1f} s = {later / launch:.2f}x the fresh launch")
    summary = {"import_floor_s": round(floor, 2), "fresh_launch_to_first_step_s": round(launch, 2),
               "in_process_first_run_s": round(served[0], 2), "in_process_later_runs_s": round(later, 2),
               "in_process_over_fresh": round(later / launch, 3),
               "load_average_at_end": round(os.getloadavg()[0], 2), "seconds": round(time.time() - started, 1)}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
