from __future__ import annotations

from pathlib import Path

import pytest

from reprozoo.metrics import confusion_matrix, save_confusion_png, summarize


def test_summary_from_confusion_matrix(tmp_path: Path) -> None:
    labels = [0, 0, 1, 1, 2, 3, 4, 4]
    preds = [0, 1, 1, 1, 2, 4, 4, 4]
    matrix = confusion_matrix(labels, preds)
    summary = summarize(matrix)
    assert summary["accuracy"] == pytest.approx(6 / 8)
    assert summary["per_class"]["very negative"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert summary["per_class"]["positive"]["f1"] == 0.0
    assert summary["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1.0 + 0.0 + 0.8) / 5)
    save_confusion_png(matrix, str(tmp_path / "cm.png"), "t")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
