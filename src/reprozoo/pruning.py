"""`trainer.pruning_amount`: L1 magnitude pruning of the head's and the feed-forward blocks' weights.

Lightning's `ModelPruning`, configured for fine-tuning. Its defaults do two things that undo one:
- `parameters_to_prune=None` prunes every weight globally, LayerNorm and embeddings included;
- `use_lottery_ticket_hypothesis=True` resets the surviving weights to their values before the
  first pruning (for fine-tuning: the pretrained ones) at every pruning epoch.
And it prunes at an epoch's end, after that epoch's last evaluation: the best checkpoint, which test
and export load, would never be a pruned model. Here the masks are set once, as training starts, and
fine-tuning continues under them, so every evaluation and every checkpoint is of the pruned model.
Checkpoints hold the pruned weights themselves (`make_pruning_permanent`); a resumed run sets the
same masks again from their zeros.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelPruning
from torch import nn

# Where a backbone's config names the width of its feed-forward blocks.
_FFN_WIDTH_KEYS = ("intermediate_size", "hidden_dim", "d_inner", "ffn_dim", "d_ff")


def ffn_width(config: Any) -> int:
    """The inner width of the backbone's feed-forward blocks, from its config."""
    for key in _FFN_WIDTH_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"{type(config).__name__} names no feed-forward width ({', '.join(_FFN_WIDTH_KEYS)})")


def head_and_ffn_linears(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """The classifier's Linear layers and every projection into or out of a feed-forward block (in or
    out width = the FFN width, or twice it for gated MLPs; outside attention): BERT's intermediate/
    output.dense, DistilBERT's lin1/lin2, ALBERT's ffn/ffn_output, XLNet's layer_1/layer_2, Funnel's
    linear_1/linear_2, ModernBERT's Wi/Wo, and SqueezeBERT's 1×1 convolutions."""
    width = ffn_width(net.backbone.config)
    ffn = [module for name, module in net.backbone.named_modules()
           if {*_widths(module)} & {width, 2 * width} and "attention" not in name and "attn" not in name]
    head = [m for m in net.classifier.modules() if isinstance(m, nn.Linear)]
    return [(m, "weight") for m in ffn + head]


def _widths(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv1d):
        return module.in_channels, module.out_channels
    return ()


class HeadAndFFNPruning(ModelPruning):
    """Global L1-unstructured pruning of `amount` of the head's and FFN blocks' weights, once, as
    training starts (and as a resumed run starts: the zeros in its checkpoint give back the masks)."""

    def __init__(self, amount: float) -> None:
        super().__init__("l1_unstructured", amount=amount, use_global_unstructured=True, apply_pruning=False,
                         use_lottery_ticket_hypothesis=False, make_pruning_permanent=True, verbose=0)

    def filter_parameters_to_prune(self, parameters_to_prune: Any = ()) -> list[tuple[nn.Module, str]]:
        return head_and_ffn_linears(self._net)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._net = pl_module.net
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.apply_pruning(self.amount)
