"""The leaderboard, from real offline records of two tiny random-weight models trained on SST-5
sentences (in-process, through the sweep's local executor), plus the published references parsed
from ../shared/data/sst5/PUBLISHED_RESULTS.md and the ClearML summary task with a recording stand-in."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest

from helpers import isolate_clearml, reprozoo, scratch
from reprozoo import leaderboard as board
from reprozoo.data.trees import LABEL_NAMES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_model_dirs: dict) -> dict:
    from reprozoo import sweep as sweeps
    from reprozoo.records import list_offline

    with scratch(tmp_path_factory, "leaderboard") as root, pytest.MonkeyPatch.context() as mp:
        isolate_clearml(mp, root)
        mp.setenv("REPROZOO_DATA_DIR", str(data_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        common = ["data.granularity=sentences", "data.limit_train_samples=300", "trainer.max_epochs=1", "data.max_length=64", "optim.lr=1e-3",
                  "tracking.mode=offline", "tracking.project=reprozoo-tests"]
        # Different dev/test subsets, so the two runs score differently.
        first = sweeps.build_plan(str(tiny_model_dirs["bert"]), [*common, "data.limit_eval_samples=100"], out_root=root / "runs")
        second = sweeps.build_plan(str(tiny_model_dirs["distilbert"]), [*common, "data.limit_eval_samples=300"],
                                   out_root=root / "runs")
        first.steps += second.steps
        report = sweeps.run_local(first, log=lambda line: None)
        assert [r.status for r in report.results] == ["done", "done"], report.results
        yield {"root": root, "records": list_offline(), "report": report, "env": dict(os.environ)}


def test_published_references_are_parsed(data_dir: Path) -> None:
    refs = board.parse_references(data_dir.parent / "PUBLISHED_RESULTS.md")
    values = {r.label: r.accuracy for r in refs}
    assert values["BERT-base (uncased)"] == 53.2 and values["RoBERTa-large"] == 60.2
    assert values["RoBERTa-large, standard full fine-tune (unverified)"] == 58.7
    assert len(refs) == 10  # rows with a figure; summary rows ("Best …") and "none found" are left out
    assert not any(label.startswith(("Best", "XLNet")) for label in values)
    assert board.default_references_path() == data_dir.parent / "PUBLISHED_RESULTS.md"


def test_rows_from_real_records(runs: dict) -> None:
    records = runs["records"]
    rows = board.rows_from_records(records)
    assert len(rows) == 2 and rows[0].test_accuracy >= rows[1].test_accuracy
    assert rows[0].test_accuracy != rows[1].test_accuracy  # the order is decided, not a tie
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    by_id = {r.task_id: r for r in records}
    for row in rows:
        record = by_id[row.task_id]
        run_dir = Path(record.provenance["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        timing = json.loads((run_dir / "timing.json").read_text())
        assert (row.dev_accuracy, row.test_accuracy, row.test_macro_f1) == (
            metrics["dev"]["accuracy"], metrics["test"]["accuracy"], metrics["test"]["macro_f1"])
        assert row.test_f1 == {label: metrics["test"]["per_class"][label]["f1"] for label in LABEL_NAMES}
        assert row.train_seconds == timing["train_seconds"] > 0 and row.gpu_hours == 0.0  # CPU: no GPU-hours
        assert row.model in ("tiny-bert", "tiny-distilbert") and row.params_m is None  # not a zoo name
        assert row.hyperparameters == "lr=0.001 bs=32 ep=1 len=64 seed=42"
        assert (row.granularity, row.imbalance, row.image_digest) == ("sentences", "none", "none")
        assert row.commit.startswith(head[:8]) and row.project == "reprozoo-tests"


def test_only_finished_runs_of_the_project(runs: dict) -> None:
    records = runs["records"]
    failed = dataclasses.replace(records[0], status="failed", task_id="offline-failed")
    assert len(board.rows_from_records([*records, failed])) == 2
    assert board.rows_from_records(records, project="another-project") == []
    assert len(board.rows_from_records(records, project="reprozoo-tests")) == 2


def test_gpu_hours_count_the_gpus_a_run_used(runs: dict) -> None:
    record = runs["records"][0]
    assert board.gpus_used(record) == 0
    on_gpu = dataclasses.replace(record, provenance={**record.provenance, "resolved": {"accelerator": "gpu"}},
                                 environment={**record.environment, "gpu_count": 4})
    for devices, expected in (("auto", 4), ("2", 2), ("0,1", 2), ("[0, 1, 2]", 3)):
        on_gpu.config = dataclasses.replace(record.config, trainer=dataclasses.replace(record.config.trainer, devices=devices))
        assert board.gpus_used(on_gpu) == expected, devices
    row = board.row_from_record(on_gpu)
    assert row.gpu_hours == pytest.approx(row.train_seconds * 3 / 3600)


def test_formats_hold_the_same_rows(runs: dict) -> None:
    rows = board.rows_from_records(runs["records"])
    markdown = board.to_markdown(rows).splitlines()
    assert len(markdown) == 2 + len(rows) and markdown[0] == "| " + " | ".join(board.COLUMNS) + " |"
    parsed = list(csv.DictReader(io.StringIO(board.to_csv(rows))))
    assert [float(p["test_accuracy"]) for p in parsed] == [r.test_accuracy for r in rows]
    assert [p["task_id"] for p in parsed] == [r.task_id for r in rows]
    text = board.to_text(rows).splitlines()
    assert len(text) == 1 + len(rows) and text[1].split()[:2] == ["1", rows[0].model]
    odd = [dataclasses.replace(rows[0], model="<script>x</script>")]
    page = board.to_html(odd)
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page and page.count("<tr>") == 2


def test_chart_with_and_without_references(runs: dict, tmp_path: Path, data_dir: Path) -> None:
    rows = board.rows_from_records(runs["records"])
    paths, note = board.write_all(rows, tmp_path / "with", data_dir.parent / "PUBLISHED_RESULTS.md")
    assert note.startswith("10 published reference(s)")
    assert {p.name for p in (tmp_path / "with").iterdir()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.html",
                                                                "leaderboard.png"}
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    paths, note = board.write_all(rows, tmp_path / "without", tmp_path / "missing.md")
    assert "no published references" in note and paths["png"].read_bytes()[:4] == b"\x89PNG"


class _Logger:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def report_table(self, **kwargs: object) -> None:
        self.calls.append(("report_table", kwargs))

    def report_image(self, **kwargs: object) -> None:
        self.calls.append(("report_image", kwargs))


class _SummaryTask:
    """Stands in for clearml.Task on a server (none can run here): records what the leaderboard reports."""

    class TaskTypes:
        custom = "custom"

    calls: ClassVar[list] = []

    @classmethod
    def init(cls, **kwargs: object) -> _SummaryTask:
        cls.calls.append(("init", kwargs))
        return cls()

    id = "summary-task-1"

    def get_logger(self) -> _Logger:
        return _Logger(self.calls)

    def upload_artifact(self, name: str, **kwargs: object) -> None:
        self.calls.append(("upload_artifact", {"name": name, **kwargs}))

    def close(self) -> None:
        self.calls.append(("close", {}))


def test_summary_task_gets_the_table_and_the_chart(runs: dict, tmp_path: Path) -> None:
    rows = board.rows_from_records(runs["records"])
    paths, _ = board.write_all(rows, tmp_path, None)
    assert board.report_to_clearml(rows, paths, "reprozoo", task_cls=_SummaryTask) == "summary-task-1"
    calls = dict(_SummaryTask.calls)
    assert calls["init"]["project_name"] == "reprozoo" and calls["init"]["task_name"] == "leaderboard"
    assert calls["init"]["task_type"] == "custom"
    table = calls["report_table"]["table_plot"]
    assert table[0] == board.COLUMNS and len(table) == 1 + len(rows) and table[1][-1] == rows[0].task_id
    assert calls["report_image"]["local_path"] == str(paths["png"])
    assert calls["upload_artifact"]["artifact_object"] == str(paths["csv"])
    assert [name for name, _ in _SummaryTask.calls][-1] == "close"


def test_leaderboard_cli(runs: dict, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return reprozoo("leaderboard", *args, env=runs["env"], timeout=120)

    shown = cli("--format", "markdown", "--out", str(tmp_path / "board"))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("| # | model |") and len([line for line in lines if line.startswith("| 1 ") or
                                                         line.startswith("| 2 ")]) == 2
    assert (tmp_path / "board" / "leaderboard.md").read_text().splitlines() == lines[:4]
    assert lines[4].startswith(f"2 run(s); wrote {tmp_path / 'board' / 'leaderboard.md'}"), lines[4:]
    assert cli("--project", "no-such-project").stdout.strip() == "no finished runs in project no-such-project offline"
    for args, message in ((["--format", "xml"], "--format 'xml'"), (["--server"], "no ClearML server is configured"),
                          (["--references", str(tmp_path / "nope.md")], "no such file")):
        failed = cli(*args)
        assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1 and message in failed.stderr
