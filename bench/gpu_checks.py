"""The device script's checks (bench/gpu.sh): the CUDA stack, the MiniLM weights that travel, runs compared.

    python bench/gpu_checks.py stack                # torch's CUDA build against envs/cuda.lock, the libraries
    python bench/gpu_checks.py weights OUT_DIR      # here: MiniLM's files, weights as fp16, for the device call
    python bench/gpu_checks.py same RUN_A RUN_B     # two runs of one seed and config: equal metrics?
    python bench/gpu_checks.py run RUN_DIR          # one run's line: steps, losses, seconds, precision

Each prints one JSON line (and exits 1 when a check fails), so the device call's output is the record.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The CUDA libraries a training run needs, as the nvidia-* wheels install them.
LIBRARIES = {"cudart": "libcudart.so*", "cublas": "libcublas.so*", "cudnn": "libcudnn.so*", "nccl": "libnccl.so*"}


def lock_cuda(lock: Path = ROOT / "envs" / "cuda.lock") -> str | None:
    """The CUDA release the lock pins (nvidia-cuda-runtime's major.minor), which torch's build must match."""
    found = re.search(r"^nvidia-cuda-runtime(?:-cu\d+)?==(\d+)\.(\d+)", lock.read_text(), re.M)
    return f"{found[1]}.{found[2]}" if found else None


def _load_libraries() -> dict[str, str]:
    """dlopen each library from the nvidia-* wheels on sys.path (torch's own loading goes through these)."""
    loaded: dict[str, str] = {}
    for name, pattern in LIBRARIES.items():
        candidates = sorted({p for entry in sys.path if entry and Path(entry, "nvidia").is_dir()
                             for p in Path(entry, "nvidia").rglob(pattern)})
        for path in candidates:
            try:
                ctypes.CDLL(str(path))
            except OSError as err:
                loaded[name] = f"failed: {path.name}: {err}"
                continue
            loaded[name] = path.name
            break
        else:
            loaded.setdefault(name, "not in an nvidia-* wheel here")
    return loaded


def stack() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"check": "stack", "python": sys.version.split()[0], "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "lock_cuda": lock_cuda(),
                           "libraries": _load_libraries(), "cuda_available": torch.cuda.is_available()}
    out["cuda_matches_lock"] = bool(out["torch_cuda"]) and (out["torch_cuda"].split(".")[:2] == str(out["lock_cuda"]).split(".")[:2])
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out |= {"gpu": props.name, "capability": list(torch.cuda.get_device_capability()),
                "cudnn": torch.backends.cudnn.version(), "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        out["bf16_matmul_tflops"] = round(10 * 2 * 4096**3 / (time.perf_counter() - start) / 1e12, 1)
        conv = torch.nn.Conv1d(8, 8, 3).cuda()  # a cuDNN kernel runs, not only its version string
        out["cudnn_conv_ok"] = bool(torch.isfinite(conv(torch.randn(2, 8, 16, device="cuda"))).all())
    out["ok"] = out["cuda_available"] and all(not v.startswith(("failed", "not in")) for v in out["libraries"].values())
    return out


def weights(out_dir: Path) -> dict[str, Any]:
    """MiniLM's model directory with its weights as fp16: 45 MB, under the device call's 64 MiB (the
    fp32 file is 91 MB). Rounded to fp16 (MiniLM's weights are far inside its range), so the run
    there is MiniLM's architecture and, to three decimal digits, its weights; not bit-identical."""
    import torch
    from safetensors.torch import load_file, save_file

    from reprozoo import zoo

    source = zoo.resolve_weights(zoo.get("all-minilm-l6-v2")).path
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt") and f.name != "data_config.json":
            (out_dir / f.name).write_bytes(f.read_bytes())
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(source / "model.safetensors").items()}
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    return {"check": "weights", "dir": str(out_dir), "bytes": size, "ok": size < 60 * 2**20}


def _metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


def run_line(run: Path) -> dict[str, Any]:
    m = _metrics(run)
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
    losses = [v for k, v in _flat(m) if "loss" in k and isinstance(v, float)]
    return {"check": "run", "run": run.name, "dev": m.get("dev", {}).get("accuracy"), "test": m.get("test", {}).get("accuracy"),
            "steps": m.get("train", {}).get("steps"), "timing": {k: v for k, v in timing.items() if not isinstance(v, (dict, list))},
            "ok": (run / "metrics.json").is_file() and all(math.isfinite(v) for v in losses)}


def _flat(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), d)]


def same(a: Path, b: Path) -> dict[str, Any]:
    """Two runs of one seed and config: which metrics differ (a GPU run is deterministic in "warn"
    mode: torch's deterministic kernels where they exist, so equal is expected but not promised)."""
    skip = ("seconds", "time", "run_dir", "path", "started", "ended", "checkpoint")
    left, right = dict(_flat(_metrics(a))), dict(_flat(_metrics(b)))
    differ = sorted(k for k in left.keys() | right.keys()
                    if not any(s in k for s in skip) and left.get(k) != right.get(k))
    return {"check": "same", "runs": [a.name, b.name], "differ": differ[:20], "n_differ": len(differ),
            "ok": not differ}


def main(argv: list[str]) -> int:
    verbs = {"stack": lambda: stack(), "weights": lambda: weights(Path(argv[1])),
             "run": lambda: run_line(Path(argv[1])), "same": lambda: same(Path(argv[1]), Path(argv[2]))}
    if not argv or argv[0] not in verbs:
        print(f"usage: {Path(__file__).name} {' | '.join(verbs)} [ARGS]", file=sys.stderr)
        return 2
    result = verbs[argv[0]]()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
