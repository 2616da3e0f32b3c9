"""What uploading each resume checkpoint to the task's storage costs (issue 18): per model, two runs
of the real `reprozoo train` CLI with identical settings against the server the server tests take
(tests/clearml_server.py: REPROZOO_TEST_CLEARML_CONF, else `make clearml-server` where Docker has its
images; else one line saying none is configured), in a project of its own, one with the uploads (`--tracking server`, the default) and one with `--set tracking.upload_checkpoints=false`.
The order alternates from model to model (off, on; then on, off; ...). Prints a table and ends with one
JSON line; `--json FILE` writes the same numbers.

    REPROZOO_TEST_CLEARML_CONF=/path/clearml.conf python bench/checkpoint_upload.py
        [--models all-minilm-l6-v2,all-mpnet-base-v2] [--repeats 1] [--train-samples N --checkpoint-every K]
        [--json FILE] [--home DIR] [--fileserver-pid PID]

Per model: the checkpoint's size, how many were uploaded ("stored") of those written, the mean upload
seconds per checkpoint (sha256 + upload + registering, task.json's `checkpoint_uploads.attempts`),
train_seconds (timing.json: `trainer.fit`) with and without uploads, the overhead per checkpoint
(train_on - train_off) / checkpoints written, and the ratio train_on / train_off. Also the wall seconds
of each run (the last checkpoint's upload ends after fit, so it shows there and not in train_seconds),
the CPU seconds the run used, and (`--fileserver-pid`, a fileserver on this machine) those the
fileserver used while receiving.

Each run: `--limit-eval-samples 32 --max-length 32 --batch-size 8 --max-epochs 1 --checkpoint-every K
--set trainer.val_check_interval=1.0`, so last.ckpt is written every K optimiser steps and once more
after the one dev evaluation at the end (N / 8 / K checkpoints). Before any timed run, outside the
timings: the weights are fetched into HOME (a temporary one unless --home), the data version is
registered on the server, and one `--fast-dev-run --tracking off` run per model fills the tokenisation
cache, so the two timed runs of a model start alike. Run directories are deleted as soon as they are read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# train samples, checkpoint every K steps: 5 checkpoints each; MPNet's runs under ~4 min on a 2-core CPU.
SIZES = {"all-minilm-l6-v2": (1600, 40), "all-mpnet-base-v2": (960, 24)}
COMMON = ["--limit-eval-samples", "32", "--max-length", "32", "--batch-size", "8", "--max-epochs", "1",
          "--set", "trainer.val_check_interval=1.0"]
OFF = ["--set", "tracking.upload_checkpoints=false"]
sys.path.insert(0, str(REPO / "tests"))
from clearml_server import server_for_bench  # noqa: E402


def reprozoo(env: dict[str, str], args: list[str], log: Path) -> None:
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", "reprozoo", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode != 0:
        raise SystemExit(f"reprozoo {' '.join(args)} failed ({done.returncode}); its output ends:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")


def process_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a running process (the fileserver), from /proc; None when none was named."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(env: dict[str, str], model: str, uploads: bool, samples: int, every: int, out: Path,
              fileserver_pid: int | None, log: Path, project: str) -> dict[str, Any]:
    argv = ["train", "--model", model, "--tracking", "server", "--limit-train-samples", str(samples),
            "--checkpoint-every", str(every), *COMMON, *([] if uploads else OFF), "--out", str(out),
            "--set", f"tracking.project={project}"]
    load_before, cpu_before, files_before = os.getloadavg()[0], children_cpu_seconds(), process_cpu_seconds(fileserver_pid)
    started = time.monotonic()
    reprozoo(env, argv, log)
    wall = time.monotonic() - started
    files_after = process_cpu_seconds(fileserver_pid)
    timing = json.loads((out / "timing.json").read_text())
    task = json.loads((out / "task.json").read_text())
    attempts = (task.get("checkpoint_uploads") or {}).get("attempts", [])
    stored = [a for a in attempts if a.get("status") == "stored"]
    if uploads and not attempts:
        raise SystemExit(f"{out}: task.json records no checkpoint upload; is the feature on?")
    if not uploads and attempts:
        raise SystemExit(f"{out}: tracking.upload_checkpoints=false, yet task.json records uploads")
    result = {
        "uploads": uploads, "train_seconds": round(timing["train_seconds"], 2), "wall_seconds": round(wall, 1),
        "cpu_seconds": round(children_cpu_seconds() - cpu_before, 1),
        "fileserver_cpu_seconds": None if files_after is None else round(files_after - files_before, 1),
        "steps": (timing.get("throughput") or {}).get("steps"),
        "median_step_seconds": round((timing.get("throughput") or {}).get("median_step_seconds") or 0.0, 3),
        "checkpoint_writes": timing.get("checkpoint_writes"),
        "tokenization_cache_hit": timing.get("tokenization_cache_hit"),
        "checkpoints": len(attempts), "stored": len(stored),
        "statuses": sorted({a.get("status", "?") for a in attempts}),
        "upload_seconds": [a["seconds"] for a in stored],
        "checkpoint_bytes": max((a["bytes"] for a in stored), default=None),
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    shutil.rmtree(out, ignore_errors=True)  # 0.3-1.5 GB each
    return result


def summarise(model: str, samples: int, every: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    on = [r for r in runs if r["uploads"]]
    off = [r for r in runs if not r["uploads"]]
    train_on = statistics.median(r["train_seconds"] for r in on)
    train_off = statistics.median(r["train_seconds"] for r in off)
    wall_on = statistics.median(r["wall_seconds"] for r in on)
    wall_off = statistics.median(r["wall_seconds"] for r in off)
    checkpoints = statistics.median(r["checkpoints"] for r in on)
    uploads = [s for r in on for s in r["upload_seconds"]]
    size = max((r["checkpoint_bytes"] or 0) for r in on)
    return {
        "model": model, "train_samples": samples, "checkpoint_every": every,
        "checkpoint_mb": round(size / 1e6, 1), "checkpoints": checkpoints,
        "uploaded": statistics.median(r["stored"] for r in on),
        "mean_upload_seconds": round(statistics.mean(uploads), 2) if uploads else None,
        "upload_mb_per_second": round(size / 1e6 / statistics.mean(uploads), 1) if uploads else None,
        "train_seconds_off": round(train_off, 1), "train_seconds_on": round(train_on, 1),
        "overhead_per_checkpoint_seconds": round((train_on - train_off) / checkpoints, 2),
        "ratio": round(train_on / train_off, 2),
        "wall_seconds_off": round(wall_off, 1), "wall_seconds_on": round(wall_on, 1),
        "wall_overhead_per_checkpoint_seconds": round((wall_on - wall_off) / checkpoints, 2),
        "runs": runs,
    }


def table(results: list[dict[str, Any]]) -> str:
    head = ("| model | checkpoint | uploaded | mean upload s/ckpt | train s off | train s on | overhead s/ckpt"
            " | train on/off | wall s off | wall s on |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['checkpoint_mb']:,.0f} MB | {r['uploaded']:g} of {r['checkpoints']:g}"
                     f" | {r['mean_upload_seconds']} | {r['train_seconds_off']} | {r['train_seconds_on']}"
                     f" | {r['overhead_per_checkpoint_seconds']:+.2f} | {r['ratio']:.2f} | {r['wall_seconds_off']}"
                     f" | {r['wall_seconds_on']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SIZES), help="comma-separated zoo names")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs per model (medians reported)")
    parser.add_argument("--train-samples", type=int, help="N for every model (default: per model, SIZES)")
    parser.add_argument("--checkpoint-every", type=int, help="K for every model (default: per model, SIZES)")
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR") or str(REPO.parent / "shared/data/sst5/trees"))
    parser.add_argument("--home", help="HOME for the runs (weights and caches; default: a temporary one, removed)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--fileserver-pid", type=int, help="the fileserver's process on this machine: its CPU seconds too")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    root = Path(tempfile.mkdtemp(prefix="checkpoint-upload-"))
    home = Path(args.home).resolve() if args.home else root / "home"
    home.mkdir(parents=True, exist_ok=True)
    log = root / "reprozoo.log"
    results: list[dict[str, Any]] = []
    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(server_for_bench("bench/checkpoint_upload.py"))
        env = server.env()
        env.update(HOME=str(home), HF_HUB_OFFLINE="1", REPROZOO_DATA_DIR=args.data_dir, TOKENIZERS_PARALLELISM="false")
        print(f"ClearML server {server.version} at {server.api_url}, project {server.project}, HOME={home}, log {log}",
              file=sys.stderr, flush=True)
        # Outside the timings: weights, the data version, each model's tokenisation cache.
        for model in models:
            started = time.monotonic()
            subprocess.run([sys.executable, "-c", "import sys; from reprozoo import zoo; zoo.resolve_weights(zoo.get(sys.argv[1]))",
                            model], env=env, check=True, capture_output=True)
            print(f"{model}: weights in place ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        reprozoo(env, ["data", "version", "--tracking", "server", "--data-dir", args.data_dir, "--project", server.project], log)
        for model in models:
            samples = args.train_samples or SIZES.get(model, (1600, 40))[0]
            reprozoo(env, ["train", "--model", model, "--tracking", "off", "--fast-dev-run",
                           "--limit-train-samples", str(samples), *COMMON, "--out", str(root / "warm")], log)
            shutil.rmtree(root / "warm", ignore_errors=True)
        pair = 0
        for model in models:
            samples = args.train_samples or SIZES.get(model, (1600, 40))[0]
            every = args.checkpoint_every or SIZES.get(model, (1600, 40))[1]
            runs = []
            for i in range(args.repeats):
                for uploads in ((False, True) if pair % 2 == 0 else (True, False)):
                    run = timed_run(env, model, uploads, samples, every, root / f"{model}-{i}-{uploads}",
                                    args.fileserver_pid, log, server.project)
                    runs.append(run)
                    print(f"{model} uploads {'on ' if uploads else 'off'}: train {run['train_seconds']:.1f} s, wall"
                          f" {run['wall_seconds']:.1f} s, {run['stored']} of {run['checkpoints']} checkpoints stored,"
                          f" upload s {run['upload_seconds']}, load {run['load_average_1min']}", file=sys.stderr, flush=True)
                pair += 1
            results.append(summarise(model, samples, every, runs))
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)  # run directories, and HOME unless --home
    print(table(results))
    summary = {"results": results, "repeats": args.repeats, "cpu_count": os.cpu_count(),
               "load_average_1min_end": round(os.getloadavg()[0], 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({r["model"]: {k: v for k, v in r.items() if k not in ("runs", "model")} for r in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
