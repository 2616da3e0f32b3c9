"""Throughput benchmark: reprozoo's training path against Hugging Face's `Trainer`, in one run.

Same model (all-minilm-l6-v2, the packaged weights), same SST-5 data, same number of training
examples, fp32 on this CPU, the same torch thread count, one after the other in one process
(ours as the real `reprozoo train` command in a subprocess):

  A   transformers.Trainer as run_classification.py uses it by default: every example padded
      to max_seq_length=128 (`padding="max_length"`, `default_data_collator`), random order;
  B   transformers.Trainer with dynamic padding (`DataCollatorWithPadding`) and
      `train_sampling_strategy="group_by_length"` (transformers 5.x's `group_by_length=True`);
  ours `python -m reprozoo train` (reprozoo.train.train, the code users run), with its
      length-grouped token-budget batches (`data.max_tokens`), cached tokenisation and, for
      phrases, the deduplicated spans with count weights.

A and B use ours' nominal batch size and learning rate (the zoo's for the model) and, like
run_classification.py, a linear schedule, the HF-default fused AdamW, grad-norm clipping 1.0.
For `phrases`, A and B train on labelled nodes as a Hugging Face user would load them (every
node, duplicates included: 318,582); ours on unique spans (159,274) with count weights.

Reported per granularity and system: examples/s, real (non-padding) tokens/s, padding
efficiency, fraction of the loop waiting on data, dev accuracy after the same number of
examples; ratios ours/A and ours/B; measured fp32 matmul FLOP/s and model FLOP/s utilisation
(6 × non-embedding params × real tokens + 12 × layers × width × Σ length², fwd+bwd); the
phrase-epoch time (B over all nodes vs ours over unique spans, projected from the samples unless
--full-epoch); ours' time from launching `reprozoo train` to the first optimiser step with a warm
token cache. Ends with one JSON line.

    python bench/throughput.py --quick            # 4,096 phrases + 1,024 sentences: ~7 min on 2 cores
    python bench/throughput.py                    # 8,192 + 2,048: ~12 min; --full-epoch adds a real phrase epoch of ours
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODEL = "all-minilm-l6-v2"
PHRASE_NODES = 318_582  # every labelled node of the SST-5 train trees (checked at run time)


@dataclass
class Result:
    system: str
    granularity: str
    examples: int
    seconds: float  # training loop: first fetch to last optimiser step (no evaluation)
    real_tokens: int
    padded_tokens: int
    sum_sq_lengths: int
    steps: int
    data_wait_seconds: float
    dev_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / self.seconds


# --- machine -------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def matmul_flops(seconds: float = 1.5) -> dict[str, float]:
    """Best sustained fp32 GEMM rate (2048³, the machine's compute bound) and the rate at one
    FFN-sized product of a typical training batch (1024 tokens × 384 → 1536)."""
    import torch

    def rate(m: int, k: int, n: int) -> float:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        best = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            best = max(best, 5 * 2 * m * k * n / (time.perf_counter() - start))
        return best

    return {"gemm_2048": rate(2048, 2048, 2048), "ffn_1024x384x1536": rate(1024, 384, 1536)}


def training_flops(non_embedding_params: int, layers: int, width: int, real_tokens: int, sum_sq_lengths: int) -> float:
    return 6.0 * non_embedding_params * real_tokens + 12.0 * layers * width * sum_sq_lengths


# --- data ----------------------------------------------------------------------------------------
def load_hf_style(data_dir: Path) -> dict[str, tuple[list[str], list[int]]]:
    """SST-5 as a Hugging Face user loads it: sentences, every labelled node, dev sentences."""
    from reprozoo.data.sst5 import load_trees
    from reprozoo.data.trees import detokenize

    trees = load_trees(data_dir)
    nodes = [(detokenize(tokens), label) for tree in trees["train"] for tokens, label in tree.phrases()]
    sentences = [(detokenize(t.tokens), t.label) for t in trees["train"]]
    dev = [(detokenize(t.tokens), t.label) for t in trees["dev"]]
    return {name: ([t for t, _ in rows], [y for _, y in rows]) for name, rows in
            (("phrases", nodes), ("sentences", sentences), ("dev", dev))}


def sample(rows: tuple[list[str], list[int]], n: int, seed: int = 7) -> tuple[list[str], list[int]]:
    texts, labels = rows
    keep = sorted(random.Random(seed).sample(range(len(texts)), min(n, len(texts))))
    return [texts[i] for i in keep], [labels[i] for i in keep]


# --- Hugging Face Trainer baselines ---------------------------------------------------------------
def run_hf(system: str, granularity: str, rows: tuple[list[str], list[int]], dev: tuple[list[str], list[int]],
           weights: Path, batch_size: int, lr: float, seed: int, out: Path) -> Result:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(weights))
    padded = system == "A"

    def preprocess(batch: dict[str, list[Any]]) -> dict[str, Any]:  # as run_classification.py does
        return tokenizer(batch["sentence"], padding="max_length" if padded else False, max_length=128, truncation=True)

    dataset = Dataset.from_dict({"sentence": rows[0], "label": rows[1]}).map(preprocess, batched=True, remove_columns=["sentence"])
    base = default_data_collator if padded else DataCollatorWithPadding(tokenizer)
    counts = {"real": 0, "padded": 0, "sq": 0}

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = base(features)
        lengths = batch["attention_mask"].sum(1)
        counts["real"] += int(lengths.sum())
        counts["padded"] += int(batch["attention_mask"].numel())
        counts["sq"] += int((lengths * lengths).sum())
        return batch

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.last_end = self.step_start = 0.0
            self.wait = self.step = 0.0
            self.steps = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = self.last_end = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_start = time.perf_counter()
            self.wait += self.step_start - self.last_end

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last_end = time.perf_counter()
            self.step += self.last_end - self.step_start
            self.steps += 1

    model = AutoModelForSequenceClassification.from_pretrained(str(weights), num_labels=5)
    args = TrainingArguments(
        output_dir=str(out / f"hf-{system}-{granularity}"), per_device_train_batch_size=batch_size, learning_rate=lr,
        num_train_epochs=1, seed=seed, data_seed=seed, use_cpu=True, report_to="none", save_strategy="no",
        eval_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy="random" if padded else "group_by_length",
    )
    timer = Timer()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, processing_class=tokenizer,
                      callbacks=[timer])
    trainer.train()
    seconds = timer.last_end - timer.start
    accuracy = evaluate_hf(trainer.model, tokenizer, dev)
    del trainer
    torch.set_grad_enabled(True)
    return Result(system, granularity, len(dataset), seconds, counts["real"], counts["padded"], counts["sq"],
                  timer.steps, timer.wait, accuracy, {"optimizer": args.optim, "step_seconds": timer.step})


def evaluate_hf(model: Any, tokenizer: Any, dev: tuple[list[str], list[int]]) -> float:
    """Dev accuracy with dynamic padding (masking makes padding irrelevant to predictions)."""
    import torch

    model.eval()
    texts, labels = dev
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    correct = 0
    with torch.no_grad():
        for start in range(0, len(order), 128):
            chunk = order[start : start + 128]
            batch = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
            preds = model(**batch).logits.argmax(-1).tolist()
            correct += sum(int(p == labels[i]) for p, i in zip(preds, chunk, strict=True))
    return correct / len(texts)


# --- ours: the real `reprozoo train` ---------------------------------------------------------------
def ours_command(granularity: str, examples: int | None, data_dir: Path, out: Path, batch_size: int, lr: float,
                 max_tokens: int | None, seed: int, limit_eval: int | None) -> list[str]:
    # B's schedule (eval_strategy="no", save_strategy="no"): no dev evaluation and no checkpoint while
    # training; one evaluation after the epoch, outside the timed loop, as B's. The zoo recipe's own
    # evaluations (every quarter epoch for MiniLM) are reported on their own line, never in throughput.
    command = [sys.executable, "-m", "reprozoo", "train", "--model", MODEL, "--granularity", granularity,
               "--max-epochs", "1", "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed),
               "--data-dir", str(data_dir), "--out", str(out), "--overwrite", "--set", "trainer.val_check_interval=1.0"]
    if examples is not None:
        command += ["--limit-train-samples", str(examples)]
    if max_tokens is not None:
        command += ["--set", f"data.max_tokens={max_tokens}"]
    if limit_eval is not None:
        command += ["--limit-eval-samples", str(limit_eval)]
    return command


def run_ours(granularity: str, command: list[str], out: Path) -> Result:
    print("  $", shlex.join(command), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    launched = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-5000:])
        raise SystemExit(f"reprozoo train failed with exit code {result.returncode}")
    finished = time.time()
    timing = json.loads((out / "timing.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    t = timing["throughput"]
    seconds = t["step_seconds"] + t["data_wait_seconds"]
    extra = {"startup_to_first_step_s": t["first_step_unix"] - launched,
             "launch_to_train_start_s": t["train_start_unix"] - launched,
             "process_seconds": finished - launched, "tokenization_cache_hit": timing["tokenization_cache_hit"],
             "step_seconds": t["step_seconds"], "command": shlex.join(command),
             "evaluations": t["evaluations"], "evaluation_seconds": t["evaluation_seconds"],
             "max_wait_over_median_step": t["max_data_wait_seconds"] / t["median_step_seconds"]}
    return Result("ours", granularity, t["examples"], seconds, t["real_tokens"], t["padded_tokens"], t["sum_sq_lengths"],
                  t["steps"], t["data_wait_seconds"], metrics["dev"]["accuracy"], extra)


def warm_token_cache(data_dir: Path, weights: Path, batch_size: int, seed: int, limits: dict[str, int | None],
                     limit_eval: int | None) -> None:
    """Fill ours' token caches, so ours is timed with a warm cache: the data config `reprozoo train`
    resolves (the zoo recipe's), for the whole splits (a full epoch) and for each granularity's limited
    run, whose entry is its own (a limited run tokenizes only what it keeps)."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from reprozoo import zoo
    from reprozoo.config import RunConfig, apply
    from reprozoo.data.module import SST5DataModule
    from reprozoo.data.sst5 import data_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(str(weights))
    sha = data_fingerprint(data_dir)
    recipe = apply(RunConfig(), zoo.recipe(MODEL)).data
    for granularity in ("phrases", "sentences"):
        for limit, evals in {(None, None), (limits.get(granularity), limit_eval)}:
            data = replace(recipe, granularity=granularity, limit_train_samples=limit, limit_eval_samples=evals)
            module = SST5DataModule(data, data_dir, sha, tokenizer, zoo.get(MODEL).max_length, batch_size, seed)
            module.prepare_data()
            print(f"  token cache {granularity} (train limit {limit}): {'warm' if module.cache_hit else 'filled now'}", flush=True)


# --- report --------------------------------------------------------------------------------------
def table(results: list[Result], flops: dict[str, float], model_shape: dict[str, int]) -> str:
    rows = ["| granularity | system | examples | steps | examples/s | real tokens/s | padding eff. | data wait | "
            "model TFLOP/s | MFU | dev acc |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        achieved = training_flops(model_shape["non_embedding"], model_shape["layers"], model_shape["width"],
                                  r.real_tokens, r.sum_sq_lengths) / r.seconds
        rows.append(f"| {r.granularity} | {r.system} | {r.examples} | {r.steps} | {r.examples_per_s:.1f} | {r.tokens_per_s:.0f} | "
                    f"{r.padding_efficiency:.3f} | {r.data_wait_fraction:.1%} | {achieved / 1e12:.3f} | "
                    f"{achieved / flops['gemm_2048']:.1%} | {r.dev_accuracy:.4f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small samples, projected epochs: < 10 min on 2 cores")
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst5" / "trees"  # as the Makefile
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR") or (str(shared) if shared.is_dir() else None))
    parser.add_argument("--out", default="runs/bench-throughput")
    parser.add_argument("--phrases", type=int, help="training examples per system, phrases (quick 4096, full 8192)")
    parser.add_argument("--sentences", type=int, help="training examples per system, sentences (quick 1024, full 2048)")
    parser.add_argument("--a-examples", type=int, default=None,
                        help="A's sample per granularity (default: an eighth of the others', at least 256): A pads every example "
                             "to 128 tokens, so its cost per example is the same at any sample size, and at 10 ex/s a full-size "
                             "sample alone took 13 min")
    parser.add_argument("--batch-size", type=int, default=None, help="nominal batch size for all (default: the zoo's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate for all (default: the zoo's)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="ours: token budget per batch (0: fixed batch size)")
    parser.add_argument("--full-epoch", action=argparse.BooleanOptionalAction, default=False,
                        help="also run ours over one whole phrase epoch (~15 min here) instead of projecting it from the sample")
    parser.add_argument("--systems", default="A,B,ours,ours-fixed",
                        help="subset to run; ours-fixed: ours with a fixed batch size (no token budget), phrases only")
    parser.add_argument("--limit-eval", type=int, default=None, help="smoke tests only: score ours on K dev/test sentences")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every system (default: torch's, one per core); 1 is steadier on a shared machine")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # ours' subprocesses too

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    started = time.time()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from reprozoo import zoo
    from reprozoo.data.sst5 import resolve_data_dir

    entry = zoo.get(MODEL)
    weights = zoo.resolve_weights(entry).path
    data_dir = resolve_data_dir(args.data_dir)
    batch_size, lr = args.batch_size or entry.batch_size, args.lr or entry.lr
    max_tokens = args.max_tokens or None
    # Quick is sized so that its ratios predict the full run's (issue 20): at 1,024 phrases ours' token
    # budget had too few spans to group (padding efficiency 0.80 against 0.96) and 8 steps, the first of
    # them (2.8 s against a 1.1 s median) a large share of the loop; its ratio to B was 1.21x where the
    # full run's was 1.89x.
    n = {"phrases": args.phrases or (4096 if args.quick else 8192),
         "sentences": args.sentences or (1024 if args.quick else 2048)}
    n_a = {g: args.a_examples or max(256, n[g] // 8) for g in n}
    systems = [s.strip() for s in args.systems.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine()
    print(f"machine: {info}", flush=True)
    if info["load_average_at_start"][0] > 0.5:
        print(f"WARNING: load average {info['load_average_at_start'][0]:.2f} at start: something else is running, "
              "timings are not valid", flush=True)
    flops = matmul_flops()
    print(f"fp32 matmul: {flops['gemm_2048'] / 1e9:.1f} GFLOP/s (2048³), {flops['ffn_1024x384x1536'] / 1e9:.1f} GFLOP/s "
          "(1024×384×1536)", flush=True)

    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(weights))
    width, layers = config.hidden_size, config.num_hidden_layers
    per_layer = 4 * width * width + 4 * width + 2 * width * config.intermediate_size + config.intermediate_size + width + 4 * width
    shape = {"non_embedding": layers * per_layer, "layers": layers, "width": width}

    hf = load_hf_style(data_dir)
    if args.limit_eval:
        hf["dev"] = (hf["dev"][0][: args.limit_eval], hf["dev"][1][: args.limit_eval])
    if len(hf["phrases"][0]) != PHRASE_NODES:
        print(f"note: {len(hf['phrases'][0])} labelled nodes (expected {PHRASE_NODES})", flush=True)
    warm_token_cache(data_dir, weights, batch_size, args.seed, n, args.limit_eval)

    results: list[Result] = []
    for granularity in ("phrases", "sentences"):
        for system in systems:
            if system == "ours-fixed" and granularity != "phrases":
                continue
            size = n_a[granularity] if system == "A" else n[granularity]
            print(f"[{time.time() - started:5.0f}s] {granularity}: {system} on {size} examples", flush=True)
            if system in ("A", "B"):
                result = run_hf(system, granularity, sample(hf[granularity], size), hf["dev"], weights, batch_size, lr, args.seed, out)
            else:
                run_dir = out / f"{system}-{granularity}"
                command = ours_command(granularity, n[granularity], data_dir, run_dir, batch_size, lr,
                                       None if system == "ours-fixed" else max_tokens, args.seed, args.limit_eval)
                result = run_ours(granularity, command, run_dir)
                result.system = system
            print(f"    {result.examples_per_s:.1f} ex/s, {result.tokens_per_s:.0f} real tok/s, padding eff "
                  f"{result.padding_efficiency:.3f}, dev acc {result.dev_accuracy:.4f}", flush=True)
            results.append(result)
            torch.manual_seed(args.seed)

    # The compute bound again at the end: the best of both (a busy moment only lowers a measurement).
    again = matmul_flops()
    flops = {k: max(v, again[k]) for k, v in flops.items()}
    print(f"fp32 matmul at the end: {again['gemm_2048'] / 1e9:.1f} GFLOP/s (2048³); using the best of both", flush=True)
    by = {(r.system, r.granularity): r for r in results}

    def ratio(granularity: str, base: str) -> float | None:
        if ("ours", granularity) in by and (base, granularity) in by:
            return by["ours", granularity].tokens_per_s / by[base, granularity].tokens_per_s
        return None

    # One epoch over the phrases: B trains on every labelled node, ours on unique spans.
    epoch: dict[str, Any] = {"B_examples": len(hf["phrases"][0])}
    if ("B", "phrases") in by:
        b = by["B", "phrases"]
        epoch["B_seconds"] = b.seconds / b.examples * epoch["B_examples"]
        epoch["B_how"] = f"projected from its {b.examples}-node random sample"
    if "ours" in systems:
        if args.full_epoch:
            print(f"[{time.time() - started:5.0f}s] phrases: ours, one full epoch", flush=True)
            command = ours_command("phrases", None, data_dir, out / "ours-phrases-epoch", batch_size, lr, max_tokens, args.seed,
                                   args.limit_eval)
            full = run_ours("phrases", command, out / "ours-phrases-epoch")
            results.append(full)
            epoch.update(ours_examples=full.examples, ours_seconds=full.seconds, ours_how="measured (one real epoch)",
                         ours_dev_accuracy=full.dev_accuracy)
        else:
            from reprozoo.data.sst5 import load_trees, phrase_examples

            unique = len(phrase_examples(load_trees(data_dir)["train"]))
            o = by["ours", "phrases"]
            epoch.update(ours_examples=unique, ours_seconds=o.seconds / o.examples * unique,
                         ours_how=f"projected from its {o.examples}-span random sample")
    epoch_speedup = epoch["B_seconds"] / epoch["ours_seconds"] if "B_seconds" in epoch and "ours_seconds" in epoch else None

    ours_phr = by.get(("ours", "phrases"))
    mfu = None
    if ours_phr is not None:
        mfu = training_flops(shape["non_embedding"], layers, width, ours_phr.real_tokens, ours_phr.sum_sq_lengths) / ours_phr.seconds / flops["gemm_2048"]

    report = ["## Throughput (`bench/throughput.py`)", "", f"machine: {info['cpu']}, {info['cores']} cores, torch "
              f"{info['torch']} ({info['torch_threads']} threads), transformers {info['transformers']}, load average at "
              f"start {info['load_average_at_start'][0]:.2f}", f"fp32 matmul: {flops['gemm_2048'] / 1e9:.1f} GFLOP/s "
              f"(2048³), {flops['ffn_1024x384x1536'] / 1e9:.1f} GFLOP/s (1024×384×1536)", "", table(results, flops, shape), ""]
    for granularity in ("phrases", "sentences"):
        a, b = ratio(granularity, "A"), ratio(granularity, "B")
        report.append(f"{granularity}: ours / A = {a:.2f}x, ours / B = {b:.2f}x real tokens/s" if a and b else
                      f"{granularity}: ours / A = {a}, ours / B = {b}")
    if ("ours-fixed", "phrases") in by and ("B", "phrases") in by and ("ours", "phrases") in by:
        fixed = by["ours-fixed", "phrases"].tokens_per_s
        report.append(f"phrases, where it comes from: ours with a fixed batch of {batch_size} / B = "
                      f"{fixed / by['B', 'phrases'].tokens_per_s:.2f}x; token budget {max_tokens} / fixed batch = "
                      f"{by['ours', 'phrases'].tokens_per_s / fixed:.2f}x")
    if epoch_speedup:
        report.append(f"phrase epoch: B {epoch['B_examples']} nodes {epoch['B_seconds']:.0f} s ({epoch['B_how']}); ours "
                      f"{epoch['ours_examples']} spans {epoch['ours_seconds']:.0f} s ({epoch['ours_how']}): {epoch_speedup:.2f}x")
    for r in results:
        if r.system.startswith("ours"):
            report.append(f"{r.system} {r.granularity} ({r.examples} ex): launch → first optimiser step "
                          f"{r.extra['startup_to_first_step_s']:.1f} s (launch → Lightning train start "
                          f"{r.extra['launch_to_train_start_s']:.1f} s), warm cache: {r.extra['tokenization_cache_hit']}")
    recipe = float(zoo.recipe(MODEL).get("trainer.val_check_interval", 1.0))
    for r in results:
        if r.system.startswith("ours") and r.extra["evaluations"]:
            each = r.extra["evaluation_seconds"] / r.extra["evaluations"]
            report.append(f"{r.system} {r.granularity}: {r.extra['evaluations']} dev evaluation(s) after training, "
                          f"{each:.1f} s each (not in the figures above); the zoo recipe evaluates every {recipe} epoch: "
                          f"{round(1 / recipe)} × {each:.1f} s an epoch; largest wait between steps / median step "
                          f"{r.extra['max_wait_over_median_step']:.2f}")
    report.append(f"whole benchmark: {time.time() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    text = "\n".join(report)
    print("\n" + text + "\n", flush=True)

    summary = {
        "padded_ratio": ratio("phrases", "A"),
        "grouped_ratio": ratio("phrases", "B"),
        "padding_efficiency": ours_phr.padding_efficiency if ours_phr else None,
        "epoch_speedup": epoch_speedup,
        "mfu": mfu,
        "sentences_padded_ratio": ratio("sentences", "A"),
        "sentences_grouped_ratio": ratio("sentences", "B"),
        "matmul_gflops": flops["gemm_2048"] / 1e9,
        "startup_s": ours_phr.extra["startup_to_first_step_s"] if ours_phr else None,
        "data_wait_fraction": ours_phr.data_wait_fraction if ours_phr else None,
        "max_wait_over_median_step": ours_phr.extra["max_wait_over_median_step"] if ours_phr else None,
        "schedule": "every system: no evaluation or checkpoint while training, dev scored once after",
        "ours_evaluation_seconds": ({r.granularity: r.extra["evaluation_seconds"] / max(1, r.extra["evaluations"])
                                     for r in results if r.system == "ours"}),
        "dev_accuracy_phrases": {r.system: r.dev_accuracy for r in results if r.granularity == "phrases" and r.examples == n["phrases"]},
        "examples": {"A": n_a, "others": n},
        "quick": args.quick,
        "seconds": round(time.time() - started, 1),
    }
    (out / "results.json").write_text(json.dumps({"machine": info, "matmul": flops, "model_shape": shape, "epoch": epoch,
                                                  "results": [{**asdict(r), "examples_per_s": r.examples_per_s,
                                                               "tokens_per_s": r.tokens_per_s} for r in results],
                                                  "summary": summary}, indent=2) + "\n")
    (out / "report.md").write_text(text + "\n")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
