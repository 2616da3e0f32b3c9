"""Classification metrics from a confusion matrix, in plain Python floats (deterministic)."""

from __future__ import annotations

from typing import Any

from reprozoo.data.trees import LABEL_NAMES


def confusion_matrix(labels: list[int], preds: list[int], num_classes: int = len(LABEL_NAMES)) -> list[list[int]]:
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for truth, pred in zip(labels, preds, strict=True):
        matrix[truth][pred] += 1
    return matrix


def summarize(matrix: list[list[int]]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support; rows are true labels."""
    k = len(matrix)
    total = sum(map(sum, matrix))
    per_class = {}
    for c in range(k):
        tp = matrix[c][c]
        predicted = sum(matrix[r][c] for r in range(k))
        support = sum(matrix[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[LABEL_NAMES[c]] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {
        "accuracy": sum(matrix[c][c] for c in range(k)) / total if total else 0.0,
        "macro_f1": sum(p["f1"] for p in per_class.values()) / k,
        "per_class": per_class,
        "confusion_matrix": matrix,
        "n": total,
    }


def save_confusion_png(matrix: list[list[int]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(LABEL_NAMES))
    ax.set_xticks(ticks, LABEL_NAMES, rotation=30, ha="right")
    ax.set_yticks(ticks, LABEL_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            ax.text(c, r, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
