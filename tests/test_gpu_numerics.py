"""What a GPU run decides (precision, optimiser, determinism), checked on this CPU. The only stand-ins
are the GPU's compute capability and the plan's accelerator."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import NoTracker
from reprozoo import provenance, zoo
from reprozoo.config import RunConfig
from reprozoo.devices import choose_precision
from reprozoo.model import adamw
from reprozoo.train import _trainer_kwargs, plan_run

# (compute capability, auto precision for a model that trains in fp16, for one that does not: DeBERTa-v3)
GPUS = {
    "T4": ((7, 5), "16-mixed", "32-true"),
    "V100": ((7, 0), "16-mixed", "32-true"),
    "A100": ((8, 0), "bf16-mixed", "bf16-mixed"),
    "H100": ((9, 0), "bf16-mixed", "bf16-mixed"),
}


@pytest.mark.parametrize("gpu", list(GPUS))
def test_auto_precision_is_bf16_only_on_gpus_with_bf16_units(gpu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    capability, fp16_model, no_fp16_model = GPUS[gpu]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # What torch answers by default on each of them: it counts bf16 emulation (slow on a T4 or V100) as support.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_precision(RunConfig(), zoo.get("all-minilm-l6-v2"), "gpu") == fp16_model
    assert choose_precision(RunConfig(), zoo.get("deberta-v3-base"), "gpu") == no_fp16_model


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
def test_gradient_clipping_works_with_the_optimizer_of_every_precision(precision: str) -> None:
    """Lightning's precision plugin clips the gradients of the optimizer `configure_optimizers` builds
    (grad_clip defaults to 1.0). Under AMP (fp16 and bf16 alike) it refuses a fused AdamW at the first step."""
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    optimizer = adamw([{"params": list(layer.parameters()), "lr": 1e-3, "weight_decay": 0.0}], 1e-3, precision, 1.0)
    plugin = MixedPrecision(precision, "cpu") if precision.endswith("-mixed") else Precision()
    layer(torch.randn(4, 8)).square().sum().backward()
    plugin.clip_gradients(optimizer, 1.0, GradClipAlgorithmType.NORM)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in layer.parameters()])) <= 1.0 + 1e-6
    # The fused kernel everywhere else: it is the fast one.
    assert optimizer.defaults["fused"] is (precision == "32-true")


class RecordingTracker(NoTracker):
    """Records what `start_run` hands the tracker: the determinism of the run's fingerprint at that moment."""

    recorded: dict | None = None

    def record(self, cfg: RunConfig, plan: object, weights: object, code: object = None) -> None:
        self.recorded = provenance.environment(cfg.seed, None)["determinism"]

    def start_uploads(self, run_dir: Path) -> None:
        return None


@pytest.mark.parametrize(("accelerator", "warn_only"), [("cpu", False), ("gpu", True)])
def test_the_deterministic_flags_the_trainer_runs_with_are_the_recorded_ones(accelerator: str, warn_only: bool, data_dir: Path,
                                                                            tmp_path: Path) -> None:
    """A CPU run is strictly deterministic; a GPU run keeps the deterministic kernels and warns on ops that
    have none. What start_run records must match the flags torch holds once the run's Trainer is built
    (Trainer(deterministic=True) would make a GPU strict again behind the record's back)."""
    import lightning as L

    from reprozoo.train import Inputs, start_run

    cfg = RunConfig().override([f"data.data_dir={data_dir}", f"out_dir={tmp_path / 'run'}"])
    plan = replace(plan_run(cfg), accelerator=accelerator)  # no GPU here: the plan says what a GPU host decides
    plan.run_dir.mkdir(parents=True)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    tracker = RecordingTracker()
    try:
        torch.use_deterministic_algorithms(False)  # nothing left over from another test decides it
        start_run(plan, tracker, Inputs(None, None, None), resume=False, worker=False)
        assert tracker.recorded is not None
        # Building the Trainer sets torch's flags (Lightning's _set_torch_flags), as in a real run.
        L.Trainer(accelerator="cpu", deterministic=_trainer_kwargs(cfg, plan, NoTracker())["deterministic"], logger=False,
                  enable_checkpointing=False, enable_progress_bar=False)
        ran = {"torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
               "torch_deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
               "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
        assert {key: tracker.recorded[key] for key in ran} == ran
        assert ran["torch_deterministic_warn_only"] is warn_only and ran["torch_deterministic_algorithms"] is True
        assert tracker.recorded["lightning_deterministic"] == ("warn" if warn_only else True)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
