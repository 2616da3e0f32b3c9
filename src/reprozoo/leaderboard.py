"""The leaderboard: every finished run (offline records or the server), one row each, best test
accuracy first, as a table, Markdown, CSV and HTML, plus a bar chart with the published SST-5 results
drawn as reference lines; with a server, the table and chart go to a ClearML summary task.

Every completed task is a row (re-runs included, so a replay shows beside its original); the chart
shows each model's best test accuracy.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprozoo import records, session, zoo
from reprozoo.data.trees import LABEL_NAMES

COMPLETED = ("completed", "published")
SHORT_LABELS = dict(zip(LABEL_NAMES, ("--", "-", "0", "+", "++"), strict=True))


@dataclass
class Row:
    model: str
    params_m: float | None  # zoo size; None for models outside the zoo (local directories)
    hyperparameters: str  # lr, batch size, epochs, max length, seed as the run used them
    granularity: str
    imbalance: str
    dev_accuracy: float
    dev_macro_f1: float
    test_accuracy: float
    test_macro_f1: float
    test_f1: dict[str, float]  # per class, LABEL_NAMES order
    train_seconds: float | None
    gpu_hours: float | None
    image_digest: str
    commit: str
    task_id: str
    project: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    label: str
    accuracy: float  # percent, as published
    setting: str


# --- rows ---------------------------------------------------------------------------------------
def gpus_used(record: Any) -> int:
    """GPUs the run trained on: 0 on CPU; else the devices setting (a count or a list), `auto` all visible."""
    resolved = record.provenance.get("resolved") or {}
    if resolved.get("accelerator", "cpu") != "gpu":
        return 0
    devices = str(record.config.trainer.devices).strip()
    visible = int(record.environment.get("gpu_count") or 1)
    if devices in ("auto", "-1", ""):
        return visible
    if "," in devices or devices.startswith("["):
        return len([d for d in re.split(r"[,\[\]\s]+", devices) if d])
    return int(devices) if devices.isdigit() else visible


def row_from_record(record: Any) -> Row:
    cfg, m = record.config, record.metrics
    resolved = record.provenance.get("resolved") or {}
    name = cfg.model.name
    params = zoo.get(name).params_m if name in zoo.names() else None
    lr = resolved.get("lr") or cfg.optim.lr
    batch = resolved.get("batch_size") or cfg.data.batch_size
    length = resolved.get("max_length") or cfg.data.max_length
    hyper = f"lr={lr:g} bs={batch} ep={cfg.trainer.max_epochs} len={length} seed={cfg.seed}"
    seconds = record.single_values.get("train_seconds")
    commit = (record.commit[:8] or "unknown") + ("+dirty" if record.dirty else "")
    return Row(
        model=name if name in zoo.names() else Path(name).name or name, params_m=params, hyperparameters=hyper,
        granularity=cfg.data.granularity, imbalance=cfg.data.imbalance,
        dev_accuracy=m["dev"]["accuracy"], dev_macro_f1=m["dev"]["macro_f1"],
        test_accuracy=m["test"]["accuracy"], test_macro_f1=m["test"]["macro_f1"],
        test_f1={label: m["test"]["per_class"][label]["f1"] for label in LABEL_NAMES},
        train_seconds=seconds, gpu_hours=None if seconds is None else seconds * gpus_used(record) / 3600,
        image_digest=record.image_digest or "none", commit=commit, task_id=record.task_id or record.source,
        project=record.project,
    )


def rows_from_records(found: list[Any], project: str | None = None) -> list[Row]:
    """Completed runs with metrics (of `project`, when given), best test accuracy first."""
    rows = [row_from_record(r) for r in found
            if r.status in COMPLETED and r.metrics and (project is None or r.project == project)]
    return sorted(rows, key=lambda r: (-r.test_accuracy, -r.test_macro_f1, r.model))


def gather(server: bool, project: str | None) -> list[Row]:
    found = records.list_server(project, limit=500) if server else records.list_offline()
    return rows_from_records(found, project)


# --- formats ------------------------------------------------------------------------------------
COLUMNS = ["#", "model", "params (M)", "hyperparameters", "granularity", "imbalance", "dev acc", "dev F1", "test acc", "test F1",
           *(f"F1 {SHORT_LABELS[label]}" for label in LABEL_NAMES), "train time (s)", "GPU-h", "image digest", "commit", "task"]


def _short_digest(digest: str) -> str:
    return digest if digest in ("", "none") else "sha256:" + digest.split("sha256:")[-1][:12]


def cells(rows: list[Row]) -> list[list[str]]:
    """Every row as display strings (COLUMNS order)."""
    out = []
    for i, r in enumerate(rows, 1):
        out.append([
            str(i), r.model, "—" if r.params_m is None else f"{r.params_m:g}", r.hyperparameters, r.granularity, r.imbalance,
            f"{r.dev_accuracy:.4f}", f"{r.dev_macro_f1:.4f}", f"{r.test_accuracy:.4f}", f"{r.test_macro_f1:.4f}",
            *(f"{r.test_f1[label]:.3f}" for label in LABEL_NAMES),
            "—" if r.train_seconds is None else f"{r.train_seconds:.1f}", "—" if r.gpu_hours is None else f"{r.gpu_hours:.3f}",
            _short_digest(r.image_digest), r.commit, r.task_id,
        ])
    return out


def to_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells(rows)]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    """Full precision and full identifiers (digest, task id), for other tools."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "params_m", "hyperparameters", "granularity", "imbalance", "dev_accuracy", "dev_macro_f1",
                     "test_accuracy", "test_macro_f1", *(f"test_f1_{label.replace(' ', '_')}" for label in LABEL_NAMES),
                     "train_seconds", "gpu_hours", "image_digest", "commit", "task_id", "project"])
    for r in rows:
        writer.writerow([r.model, r.params_m, r.hyperparameters, r.granularity, r.imbalance, r.dev_accuracy, r.dev_macro_f1,
                         r.test_accuracy, r.test_macro_f1, *(r.test_f1[label] for label in LABEL_NAMES), r.train_seconds,
                         r.gpu_hours, r.image_digest, r.commit, r.task_id, r.project])
    return buffer.getvalue()


def to_html(rows: list[Row], title: str = "reprozoo SST-5 leaderboard", image: str | None = "leaderboard.png") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells(rows))
    chart = f'<p><img src="{html.escape(image)}" alt="test accuracy by model"></p>\n' if image else ""
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n{chart}<table border=\"1\">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
            "</tbody></table>\n</body></html>\n")


def to_text(rows: list[Row]) -> str:
    table = [COLUMNS, *cells(rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table) + "\n"


# --- published references -----------------------------------------------------------------------
def default_references_path() -> Path | None:
    """PUBLISHED_RESULTS.md beside the trees: $REPROZOO_DATA_DIR/../PUBLISHED_RESULTS.md."""
    data_dir = os.environ.get("REPROZOO_DATA_DIR")
    return Path(data_dir).parent / "PUBLISHED_RESULTS.md" if data_dir else None


def parse_references(path: Path) -> list[Reference]:
    """Rows of the Markdown table whose accuracy cell starts with a number. Summary rows ("Best …")
    repeat other rows or are not encoders, and rows without a figure ("none found") are left out."""
    refs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(parts) < 2 or parts[0].lower().startswith("best"):
            continue
        number = re.match(r"(\d+(?:\.\d+)?)\s*(.*)", parts[1])
        if number:  # a qualifier after the figure ("58.7 (unverified)") stays with the label
            label = f"{parts[0]} {number.group(2)}".strip()
            refs.append(Reference(label, float(number.group(1)), parts[2] if len(parts) > 2 else ""))
    return refs


# --- chart --------------------------------------------------------------------------------------
def save_chart(rows: list[Row], references: list[Reference], path: Path, note: str = "") -> Path:
    """Bars: each model's best test accuracy (%); dashed lines: the published results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[str, float] = {}
    for r in rows:
        best[r.model] = max(best.get(r.model, 0.0), r.test_accuracy * 100)
    models = sorted(best, key=lambda m: -best[m])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(models) + 4), 5))
    bars = ax.bar(range(len(models)), [best[m] for m in models], color="#4c72b0")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    for i, ref in enumerate(references):
        colour = plt.cm.tab10(i % 10)
        ax.axhline(ref.accuracy, color=colour, linestyle="--", linewidth=1, label=f"{ref.label}: {ref.accuracy:g}")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("SST-5 test accuracy (%)")
    top = max([*best.values(), *(r.accuracy for r in references), 10.0])
    ax.set_ylim(0, top * 1.1)
    ax.set_title("reprozoo: SST-5 test accuracy by model (best run)" + (f"\n{note}" if note else ""), fontsize=10)
    if references:
        ax.legend(title="published (test accuracy %)", fontsize=6, title_fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(rows: list[Row], out_dir: Path, references_path: Path | None) -> tuple[dict[str, Path], str]:
    """leaderboard.{md,csv,html,png} in out_dir; returns the paths and a note on the references."""
    out_dir.mkdir(parents=True, exist_ok=True)
    references: list[Reference] = []
    if references_path is not None and references_path.is_file():
        references = parse_references(references_path)
        note = f"{len(references)} published reference(s) from {references_path}"
    else:
        note = f"no published references ({references_path or 'set REPROZOO_DATA_DIR or pass --references'} not found)"
    paths = {"markdown": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv", "html": out_dir / "leaderboard.html",
             "png": out_dir / "leaderboard.png"}
    paths["markdown"].write_text(to_markdown(rows))
    paths["csv"].write_text(to_csv(rows))
    paths["html"].write_text(to_html(rows))
    save_chart(rows, references, paths["png"], "" if references else "(no published references found)")
    return paths, note


# --- ClearML summary task -----------------------------------------------------------------------
def report_to_clearml(rows: list[Row], paths: dict[str, Path], project: str, task_cls: Any = None) -> str:
    """A `custom` task named "leaderboard" holding the table, the chart and the CSV.
    Exercised against a real server: no; tests use a recording stand-in."""
    if task_cls is None:
        from clearml import Task

        session.configure_clearml()
        Task.set_offline(False)
        task_cls = Task
    env_before = session.clearml_env()
    task = task_cls.init(project_name=project, task_name="leaderboard", task_type=task_cls.TaskTypes.custom,
                         reuse_last_task_id=False, auto_connect_arg_parser=False, auto_connect_frameworks=False,
                         auto_resource_monitoring=False)
    logger = task.get_logger()
    logger.report_table(title="leaderboard", series="SST-5", iteration=0, table_plot=[COLUMNS, *cells(rows)])
    logger.report_image(title="leaderboard", series="test accuracy by model", iteration=0, local_path=str(paths["png"]))
    task.upload_artifact("leaderboard.csv", artifact_object=str(paths["csv"]), wait_on_upload=True)
    task_id = task.id
    task.close()
    session.restore_clearml_env(env_before)
    return task_id
