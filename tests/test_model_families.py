"""Every zoo family, as a tiny random-weight model built from its config, runs forward and
backward through our head and loss (the hub is unreachable, so no pretrained weights here)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from reprozoo import zoo
from reprozoo.config import OptimConfig
from reprozoo.model import SentimentClassifier
from reprozoo.modeling_reprozoo import ReprozooConfig, ReprozooForSequenceClassification, pool

FAMILIES = sorted(zoo.families())


def tiny_model(family: str) -> ReprozooForSequenceClassification:
    spec = zoo.families()[family]
    backbone = AutoConfig.for_model(spec["model_type"], **spec["tiny"])
    config = ReprozooConfig(backbone=backbone, pooling=spec["pooling"], id2label={i: str(i) for i in range(5)})
    return ReprozooForSequenceClassification(config)


def test_every_zoo_model_has_a_family_with_a_tiny_config() -> None:
    assert len(FAMILIES) >= 18
    for entry in zoo.entries():
        assert entry.family in FAMILIES and entry.tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_family_forward_backward(family: str) -> None:
    torch.manual_seed(0)
    net = tiny_model(family)
    module = SentimentClassifier(net, OptimConfig(), lr=1e-3, class_weights=[1.0, 2.0, 0.5, 1.0, 1.5])
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 4]), "weights": torch.tensor([1.0, 3.0, 1.0])}
    logits = module(ids, mask)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    loss = module.loss(logits, batch["labels"], batch["weights"])
    loss.backward()
    assert torch.isfinite(loss)
    assert net.classifier.weight.grad is not None and net.classifier.weight.grad.abs().sum() > 0
    backbone_grads = [p.grad for p in net.backbone.parameters() if p.grad is not None]
    assert backbone_grads and any(g.abs().sum() > 0 for g in backbone_grads)
    groups = module.parameter_groups()
    assert sum(len(g["params"]) for g in groups) == len([p for p in net.parameters() if p.requires_grad])


@pytest.mark.parametrize("saved_as", [torch.float16, torch.bfloat16])
def test_a_backbone_saved_in_half_precision_trains_in_fp32(tmp_path, saved_as: torch.dtype) -> None:
    """Transformers 5 loads a checkpoint in its saved dtype by default: an fp16/bf16 backbone under
    our fp32 head would fail at the first step ("mat1 and mat2 must have the same dtype")."""
    from transformers import AutoModel

    spec = zoo.families()["bert"]
    AutoModel.from_config(AutoConfig.for_model(spec["model_type"], **spec["tiny"])).to(saved_as).save_pretrained(tmp_path)
    net = ReprozooForSequenceClassification.from_backbone(str(tmp_path), "mean", 0.1, {i: str(i) for i in range(5)})
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    ids = torch.randint(5, 100, (2, 8))
    net(ids, torch.ones_like(ids)).logits.sum().backward()


def test_pooling_handles_left_and_right_padding() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool(hidden, right, "cls").flatten().tolist() == [0.0, 4.0]


def test_layerwise_lr_decay_and_no_decay_groups() -> None:
    net = tiny_model("bert")
    module = SentimentClassifier(net, OptimConfig(layer_lr_decay=0.5, weight_decay=0.01), lr=1.0)
    groups = module.parameter_groups()
    lrs = sorted({g["lr"] for g in groups})
    assert lrs == [0.25, 0.5, 1.0]  # embeddings, layer 0, layer 1 + head (2 layers)
    for group in groups:
        if group["weight_decay"] == 0.0:
            assert all(p.ndim < 2 or p.shape[0] in (128, 64, 2) for p in group["params"])  # biases, norms, embeddings ok


def test_loss_weights_and_class_weights() -> None:
    net = tiny_model("bert")
    module = SentimentClassifier(net, OptimConfig(), lr=1e-3)
    logits = torch.tensor([[2.0, 0, 0, 0, 0], [0, 0, 2.0, 0, 0]])
    labels = torch.tensor([0, 1])
    equal = module.loss(logits, labels, torch.tensor([1.0, 1.0]))
    assert equal == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    # A count weight is the same as repeating the example.
    weighted = module.loss(logits, labels, torch.tensor([3.0, 1.0]))
    repeated = torch.nn.functional.cross_entropy(logits[[0, 0, 0, 1]], labels[[0, 0, 0, 1]])
    assert weighted.item() == pytest.approx(repeated.item())
