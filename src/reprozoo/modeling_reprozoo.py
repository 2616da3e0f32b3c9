"""Backbone + pooling + dropout + linear head, as a Hugging Face model.

This file is self-contained (torch + transformers only) on purpose: training uses it as the
network inside the LightningModule, and every export copies it next to the weights so that
`transformers.pipeline("text-classification", model=DIR, trust_remote_code=True)` loads the
model anywhere, with or without reprozoo installed (with reprozoo imported, the classes are
also registered with the Auto* factories and no flag is needed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class ReprozooConfig(PretrainedConfig):
    model_type = "reprozoo"

    def __init__(self, backbone: dict[str, Any] | PretrainedConfig | None = None, pooling: str = "cls",
                 classifier_dropout: float = 0.1, **kwargs: Any) -> None:
        if isinstance(backbone, PretrainedConfig):
            backbone = backbone.to_dict()
        self.backbone = backbone or {}
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    def backbone_config(self) -> PretrainedConfig:
        spec = dict(self.backbone)
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        config.architectures = config.architectures or []  # AutoModel iterates it (Funnel has two classes)
        return config


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """CLS (first token), masked mean, or the last real token (XLNet's summary position);
    `last` works for left and right padding alike."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; use cls, mean or last")


class ReprozooForSequenceClassification(PreTrainedModel):
    config_class = ReprozooConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True

    def __init__(self, config: ReprozooConfig, backbone: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config())
        width = _hidden_size(self.backbone.config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    @classmethod
    def from_backbone(cls, backbone_dir: str, pooling: str, dropout: float, id2label: dict[int, str],
                      revision: str | None = None) -> ReprozooForSequenceClassification:
        """Pretrained backbone weights, freshly initialised head. The weights are loaded as fp32
        whatever dtype they were saved in (transformers 5 keeps a checkpoint's own by default): the
        optimiser updates fp32 master weights, and AMP runs the matmuls in bf16/fp16 where asked."""
        backbone = AutoModel.from_pretrained(backbone_dir, revision=revision, dtype=torch.float32)
        config = ReprozooConfig(backbone=backbone.config, pooling=pooling, classifier_dropout=dropout,
                                id2label=id2label, label2id={v: k for k, v in id2label.items()})
        return cls(config, backbone=backbone)

    def _init_weights(self, module: nn.Module) -> None:
        # Only our head is initialised here; the backbone keeps its own (pretrained) weights.
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("token_type_ids", None)  # single-sentence task: segment ids are all zero
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        pooled = pool(out[0], attention_mask, self.config.pooling)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _hidden_size(config: PretrainedConfig) -> int:
    for attr in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    raise ValueError(f"cannot tell the hidden size of {type(config).__name__}")


def register_auto_classes() -> None:
    """Make `model_type: reprozoo` loadable by AutoConfig / AutoModelForSequenceClassification."""
    from transformers import AutoModelForSequenceClassification

    try:
        AutoConfig.register("reprozoo", ReprozooConfig)
        AutoModelForSequenceClassification.register(ReprozooConfig, ReprozooForSequenceClassification)
    except ValueError:
        pass  # already registered in this process
