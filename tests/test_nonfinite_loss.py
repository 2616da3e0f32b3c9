"""A run whose loss turns nan/inf stops at once with one line naming the step and the likely cause,
instead of training on and being recorded as completed (issue 13: `optim.lr=inf` trained to NaN)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig

from reprozoo import zoo
from reprozoo.config import OptimConfig
from reprozoo.errors import UserError
from reprozoo.model import NonFiniteLossError, SentimentClassifier
from reprozoo.modeling_reprozoo import ReprozooConfig, ReprozooForSequenceClassification


def tiny_module(lr: float) -> SentimentClassifier:
    torch.manual_seed(0)
    spec = zoo.families()["bert"]
    backbone = AutoConfig.for_model(spec["model_type"], **spec["tiny"])
    net = ReprozooForSequenceClassification(ReprozooConfig(backbone=backbone, pooling="cls",
                                                           id2label={i: str(i) for i in range(5)}))
    return SentimentClassifier(net, OptimConfig(warmup_ratio=0.0), lr=lr)


def batches(n: int = 6) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, 100, (4, 10), generator=generator), "attention_mask": torch.ones(4, 10, dtype=torch.long),
             "labels": torch.randint(0, 5, (4,), generator=generator), "weights": torch.ones(4)} for _ in range(n)]
    return DataLoader(data, batch_size=None)


def fit(module: SentimentClassifier, **trainer_args: object) -> None:
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_args)  # type: ignore[arg-type]
    trainer.fit(module, train_dataloaders=batches())


def test_a_huge_learning_rate_stops_the_run_with_the_step_and_the_cause() -> None:
    module = tiny_module(lr=1e30)
    with pytest.raises(NonFiniteLossError) as err:
        fit(module)
    message = str(err.value)
    assert "\n" not in message and "at global step" in message and "optim.lr=1e+30 is likely too high" in message
    step = int(message.split("at global step ")[1].split()[0])
    assert step >= 1  # the first step is finite; the update it made with lr=1e30 is what broke the weights
    assert isinstance(err.value, UserError) and isinstance(err.value, FloatingPointError)
    assert len(module.step_losses) == step  # nothing non-finite was recorded as a step loss


def test_a_forced_nan_names_step_zero_and_the_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    module = tiny_module(lr=3e-5)
    monkeypatch.setattr(module, "loss", lambda logits, labels, weights: logits.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at global step 0 \(batch 0\)"):
        fit(module)
    module = tiny_module(lr=3e-5)
    monkeypatch.setattr(module, "loss", lambda logits, labels, weights: logits.sum() * float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"loss is inf .*bf16-mixed precision overflowed.*--precision 32-true"):
        fit(module, precision="bf16-mixed")


def test_a_healthy_run_is_not_stopped() -> None:
    module = tiny_module(lr=1e-3)
    fit(module)
    assert len(module.step_losses) == 6 and all(torch.isfinite(torch.tensor(module.step_losses)))
