"""Class distribution of SST-5 per split and granularity (`reprozoo data stats`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reprozoo.data.sst5 import load_trees, phrase_examples, resolve_data_dir, sentence_examples
from reprozoo.data.trees import LABEL_NAMES


def class_distribution(data_dir: str | None) -> dict[str, dict[str, Any]]:
    trees = load_trees(resolve_data_dir(data_dir))
    table: dict[str, dict[str, Any]] = {}
    for split, split_trees in trees.items():
        sentences = sentence_examples(split_trees)
        unique = phrase_examples(split_trees)
        rows = {
            f"{split}/sentences": sentences.class_counts(),
            f"{split}/phrases": unique.class_counts(weighted=True),  # every node, duplicates included
            f"{split}/phrases-unique": unique.class_counts(weighted=False),
        }
        for key, counts in rows.items():
            counts = [int(c) for c in counts]
            table[key] = {"counts": counts, "total": sum(counts)}
    return table


def format_table(table: dict[str, dict[str, Any]]) -> str:
    header = f"{'split/granularity':<24}" + "".join(f"{name:>16}" for name in LABEL_NAMES) + f"{'total':>10}"
    lines = [header]
    for key, row in table.items():
        cells = "".join(f"{c:>8} ({c / row['total']:5.1%})" for c in row["counts"])
        lines.append(f"{key:<24}{cells}{row['total']:>10}")
    return "\n".join(lines)


def save_bar_chart(table: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(table)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        shares = [c / table[key]["total"] for c in table[key]["counts"]]
        ax.bar([x + i * width for x in range(len(LABEL_NAMES))], shares, width, label=key)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(LABEL_NAMES))], LABEL_NAMES)
    ax.set_ylabel("share of examples")
    ax.set_title("SST-5 class distribution by split and granularity")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
