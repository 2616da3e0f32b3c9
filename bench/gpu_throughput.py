"""GPU training throughput of base-size zoo families: bf16-mixed, with and without torch.compile.

Random weights from configs built locally (no hub access needed), our head on top
(`ReprozooForSequenceClassification`), fused AdamW, grad-norm clipping, SST-5-like batches:
`--batch-size` sentences whose lengths follow SST-5 train sentences (read from the trees when
--data-dir is given, else a fixed synthetic draw with the same mean/spread), length-grouped and
padded to a multiple of 16 so a compiled model sees at most four shapes. Reports examples/s, real
tokens/s, model FLOP/s as a fraction of the chip's dense bf16 peak (MFU), peak memory.

    bench/gpu.sh                                      # on an H100/H200
    python bench/gpu_throughput.py --device cpu --tiny --steps 2 --warmup 1   # wiring check, any machine
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' datasheets.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def base_configs(tiny: bool) -> dict[str, Any]:
    from transformers import BertConfig, DebertaV2Config, ElectraConfig, RobertaConfig

    size = ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128} if tiny else
            {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072})
    return {
        "bert-base-uncased": BertConfig(vocab_size=30522, **size),
        "roberta-base": RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                                      bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, **size),
        "deberta-v3-base": DebertaV2Config(vocab_size=128100, max_position_embeddings=512, relative_attention=True,
                                           position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                                           pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                                           layer_norm_eps=1e-7, max_relative_positions=-1, **size),
        "electra-base-discriminator": ElectraConfig(vocab_size=30522, embedding_size=size["hidden_size"], **size),
    }


def sentence_lengths(data_dir: str | None, n: int = 8544) -> list[int]:
    """Token counts of SST-5 train sentences (words × 1.15 wordpieces + CLS/SEP, capped at 64)."""
    if data_dir and (Path(data_dir) / "train.txt").is_file():
        from reprozoo.data.sst5 import load_trees

        return [min(64, math.ceil(len(t.tokens) * 1.15) + 2) for t in load_trees(Path(data_dir))["train"]]
    rng = random.Random(0)
    return [max(4, min(64, round(rng.lognormvariate(3.1, 0.45)))) for _ in range(n)]  # mean ~24, like SST-5


def batches(lengths: list[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    pool = lengths[:]
    rng.shuffle(pool)
    out: list[list[int]] = []
    mega = batch_size * 50
    while len(out) < steps:
        for start in range(0, len(pool), mega):
            chunk = sorted(pool[start : start + mega], reverse=True)
            out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size))
        rng.shuffle(pool)
    rng.shuffle(out)
    return out[:steps]


def non_embedding_params(model: Any) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n and "classifier" not in n)


def run(name: str, config: Any, compiled: bool, args: argparse.Namespace, plan: list[list[int]], peak: float) -> dict[str, Any]:
    import torch

    from reprozoo.modeling_reprozoo import ReprozooConfig, ReprozooForSequenceClassification

    device = torch.device(args.device)
    torch.manual_seed(0)
    head = ReprozooConfig(backbone=config, pooling="cls", classifier_dropout=0.1, num_labels=5)
    model = ReprozooForSequenceClassification(head).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device.type in ("cuda", "cpu"))
    step_fn = torch.compile(model) if compiled else model
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(1)
    tensors = []
    for lens in plan:
        width = math.ceil(max(lens) / 16) * 16
        ids = torch.randint(5, vocab, (len(lens), width), generator=gen)
        mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lens).unsqueeze(1)).long()
        labels = torch.randint(0, 5, (len(lens),), generator=gen)
        tensors.append((ids.to(device), mask.to(device), labels.to(device), sum(lens), sum(x * x for x in lens)))

    def step(ids: Any, mask: Any, labels: Any) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = step_fn(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    warm_started = time.perf_counter()
    widths_seen: set[int] = set()
    for ids, mask, labels, _, _ in tensors:  # every padded width once (compiles each shape), then the warm-up
        if ids.shape[1] not in widths_seen:
            widths_seen.add(ids.shape[1])
            step(ids, mask, labels)
    for ids, mask, labels, _, _ in tensors[: args.warmup]:
        step(ids, mask, labels)
    sync()
    warmup_s = time.perf_counter() - warm_started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed = tensors[args.warmup :]
    start = time.perf_counter()
    for ids, mask, labels, _, _ in timed:
        step(ids, mask, labels)
    sync()
    seconds = time.perf_counter() - start
    examples = sum(t[0].shape[0] for t in timed)
    real = sum(t[3] for t in timed)
    padded = sum(t[0].numel() for t in timed)
    cfg = config
    flops = 6 * non_embedding_params(model) * real + 12 * cfg.num_hidden_layers * cfg.hidden_size * sum(t[4] for t in timed)
    return {"model": name, "compile": compiled, "steps": len(timed), "batch_size": args.batch_size,
            "examples_per_s": examples / seconds, "real_tokens_per_s": real / seconds, "padding_efficiency": real / padded,
            "model_tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "warmup_and_compile_s": warmup_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="bert-base-uncased,roberta-base,deberta-v3-base,electra-base-discriminator")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per model and mode")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--tiny", action="store_true", help="2-layer 64-wide configs (wiring check)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the chip's dense bf16 peak")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), 0.0)
    print(f"device: {name}; torch {torch.__version__}; bf16 peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    lengths = sentence_lengths(args.data_dir)
    plan = batches(lengths, args.batch_size, args.warmup + args.steps, seed=0)
    configs = base_configs(args.tiny)
    results = []
    for model_name in args.models.split(","):
        for compiled in ([False] if args.no_compile else [False, True]):
            try:
                r = run(model_name, configs[model_name], compiled, args, plan, peak)
            except Exception as err:  # one failing mode must not hide the others' figures
                r = {"model": model_name, "compile": compiled, "error": f"{type(err).__name__}: {err}"[:300]}
            results.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print("\n| model | torch.compile | examples/s | real tokens/s | MFU (bf16 peak) | peak memory GiB |\n|---|---|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['model']} | {r['compile']} | error: {r['error'][:80]} | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "n/a"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        print(f"| {r['model']} | {'yes' if r['compile'] else 'no'} | {r['examples_per_s']:.0f} | {r['real_tokens_per_s']:.0f} | {mfu} | {mem} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
