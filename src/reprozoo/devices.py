"""Which accelerator, precision, determinism and device count a run gets: the config's wish checked
against this machine (and the model), so a run fails in one line or falls back before anything loads."""

from __future__ import annotations

from reprozoo import provenance, zoo
from reprozoo.config import ConfigError, RunConfig
from reprozoo.log import log


def choose_accelerator(cfg: RunConfig) -> str:
    import torch

    wanted = cfg.trainer.accelerator
    has_gpu = torch.cuda.is_available()
    if wanted in ("gpu", "cuda") or cfg.trainer.require_gpu:
        if not has_gpu:
            if cfg.trainer.require_gpu:
                raise ConfigError("a GPU was required (--require-gpu) but torch sees none; drop --require-gpu to train on CPU")
            log.warning("no GPU visible to torch; falling back to CPU (pass --require-gpu to make this an error)")
            return "cpu"
        return "gpu"
    if wanted == "auto":
        return "gpu" if has_gpu else "cpu"
    return wanted


def choose_precision(cfg: RunConfig, entry: zoo.ZooEntry, accelerator: str) -> str:
    import torch

    requested = cfg.trainer.precision
    if requested.startswith("16") and not entry.fp16:
        raise ConfigError(f"{entry.name} ({entry.family}) is not trained in fp16: it overflows to NaN losses; use --precision bf16-mixed (GPU) or 32-true")
    if requested != "auto":
        if accelerator == "cpu" and "bf16" in requested:
            log.warning("warning: bf16 on a CPU without bf16 units is ~20x slower than fp32")
        return requested
    if accelerator != "gpu":
        return "32-true"
    # bf16 in hardware from Ampere (compute capability 8.0: A100, L4, H100) on. Not
    # torch.cuda.is_bf16_supported(): it counts emulation by default and says yes on a T4 or V100.
    if torch.cuda.get_device_capability() >= (8, 0):
        return "bf16-mixed"
    return "16-mixed" if entry.fp16 else "32-true"


def deterministic_mode(accelerator: str) -> bool | str:
    """Lightning's `deterministic` for a run, and so torch's flags. On the CPU every op has a
    deterministic kernel: strict, and the same seed and config give bit-identical metrics. On a GPU
    a few ops (scatter-add in some backbones' embeddings, index_add backward) have none: "warn" keeps
    the deterministic kernels wherever torch has them and warns, instead of failing, on the others, so
    a GPU replay is close but may differ; the record says which mode ran."""
    return "warn" if accelerator == "gpu" else True


def device_count(devices: str, accelerator: str) -> int:
    """How many devices Lightning will use for `devices` (\"auto\", a count, or a list like 0,1)."""
    text = str(devices).strip()
    if text == "auto":
        if accelerator != "gpu":
            return 1
        import torch

        return max(1, torch.cuda.device_count())
    if "," in text or text.startswith("["):
        return len([d for d in text.strip("[]").split(",") if d.strip()])
    return int(text) if text.lstrip("-").isdigit() and int(text) > 0 else 1


def cpu_here() -> dict[str, str]:
    """The CPU facts a CPU run's numbers follow (run_spec.CPU_FIELDS): its model and torch's thread count."""
    import torch

    return {"cpu_model": provenance.cpu_model(), "torch_threads": str(torch.get_num_threads())}
