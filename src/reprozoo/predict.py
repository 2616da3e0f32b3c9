"""Classify sentences with a finished run's exported model (its `export/` folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reprozoo.config import ConfigError

MAX_LENGTH = 128  # tokens per sentence; SST-5 sentences are far shorter


@dataclass
class Prediction:
    text: str
    label: str  # the most probable class
    probabilities: dict[str, float]  # every class, in label order


def export_dir(run: Path) -> Path:
    """A run directory or its export/ folder → the folder holding the exported model."""
    export = run / "export" if (run / "export").is_dir() else run
    if not (export / "config.json").is_file():
        raise ConfigError(f"{run} holds no exported model; pass a finished run directory (with export/)")
    return export


def predict(run: Path, texts: list[str]) -> list[Prediction]:
    """Label and class probabilities for each text."""
    export = export_dir(run)
    import torch
    from transformers import AutoTokenizer

    from reprozoo.modeling_reprozoo import ReprozooForSequenceClassification, register_auto_classes

    register_auto_classes()  # the export's config names our classes; use ours, no remote-code prompt
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = ReprozooForSequenceClassification.from_pretrained(export).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    labels = model.config.id2label
    predictions = []
    for text, row in zip(texts, probs.tolist(), strict=True):
        by_label = {labels[i]: p for i, p in enumerate(row)}
        predictions.append(Prediction(text, max(by_label, key=by_label.__getitem__), by_label))
    return predictions
