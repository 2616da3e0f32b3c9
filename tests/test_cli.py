from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import reprozoo
from reprozoo.config import ConfigError, RunConfig


def test_models_table_and_names() -> None:
    names = reprozoo("models", "--names")
    assert names.returncode == 0 and len(names.stdout.split()) >= 40 and "all-minilm-l6-v2" in names.stdout.split()
    table = reprozoo("models")
    assert table.returncode == 0 and "deberta-v3-base" in table.stdout and "microsoft/deberta-v3-base" in table.stdout


def test_unknown_model_is_one_line_with_suggestions(data_dir: Path) -> None:
    result = reprozoo("train", "--model", "debrta-v3-base", "--data-dir", str(data_dir))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown model 'debrta-v3-base'; did you mean deberta-v3-base, deberta-base, deberta-v3-large?"
        " (`reprozoo models --names` lists all)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-0.001"], "optim.lr=-0.001 must be positive"),
        (["--batch-size", "0"], "data.batch_size=0 must be a whole number >= 1"),
        (["--granularity", "words"], "data.granularity='words' is not one of sentences, phrases"),
        (["--max-length", "1024"], "exceeds all-minilm-l6-v2's limit of 512 positions"),
        (["--data-dir", "/nonexistent/sst5"], "data directory /nonexistent/sst5 does not exist"),
        (["--model", "deberta-v3-base", "--precision", "16-mixed"], "is not trained in fp16"),
    ],
)
def test_bad_input_fails_fast_with_one_line(args: list[str], message: str, tmp_path: Path, data_dir: Path) -> None:
    full = ["train", "--out", str(tmp_path / "run"), *args]
    if "--data-dir" not in args:
        full += ["--data-dir", str(data_dir)]
    result = reprozoo(*full)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "run").exists()  # rejected before anything was written or loaded


def test_gpu_request_without_gpu_falls_back_to_cpu(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from reprozoo.train import plan_run

    cfg = RunConfig().override([f"data.data_dir={data_dir}", "trainer.accelerator=gpu"])
    assert plan_run(cfg).accelerator == "cpu"
    assert "no GPU visible to torch; falling back to CPU" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--require-gpu"):
        plan_run(cfg.override(["trainer.require_gpu=true"]))


def test_data_stats_prints_counts_and_writes_a_chart(data_dir: Path, tmp_path: Path) -> None:
    result = reprozoo("data", "stats", "--data-dir", str(data_dir), "--out", str(tmp_path / "dist.png"))
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["train/sentences"] == [1092, 2218, 1624, 2322, 1288]
    assert counts["train/phrases"] == [8245, 34362, 219788, 44194, 11993]
    assert counts["train/phrases-unique"] == [7233, 27711, 81658, 33361, 9311]
    assert (tmp_path / "dist.png").read_bytes()[:4] == b"\x89PNG"


def imported(args: list[str], env: dict[str, str]) -> tuple[set[str], float]:
    """The modules `python -X importtime ARGS` imported, and its wall seconds."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env, check=False)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}, seconds


@pytest.fixture(scope="module")
def torch_import_seconds() -> float:
    """What the commands below avoid: importing torch and Lightning, measured in this run."""
    modules, seconds = imported(["-c", "import torch, lightning"], dict(os.environ))
    assert {"torch", "lightning"} <= modules
    return seconds


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["models", "--names"], ["tasks", "list"], ["repro", "--help"]])
def test_commands_that_do_not_train_are_fast_and_import_no_torch(command: list[str], torch_import_seconds: float, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import isolate_clearml

    isolate_clearml(monkeypatch, tmp_path)
    modules, seconds = imported(["-m", "reprozoo", *command], dict(os.environ))
    heavy = sorted({"torch", "lightning", "transformers"} & modules)
    assert heavy == [], f"reprozoo {' '.join(command)} imported {heavy}"
    assert seconds < torch_import_seconds, (seconds, torch_import_seconds)  # a loaded machine slows both alike


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ("malformed", "train.txt:2: unbalanced '(' (1 bracket(s) never closed)"),
        ("label", "train.txt:1: label 5 is outside 0-4"),
        ("binary", "looks like binary SST-2; SST-5 needs labels 0-4"),
        ("latin-1", "train.txt:2: bytes that are not UTF-8"),
        ("empty", "train.txt: the file is empty"),
        ("missing", "lacks test.txt"),
    ],
)
def test_bad_data_is_one_line_naming_file_and_line(defect: str, message: str, tmp_path: Path, data_dir: Path) -> None:
    bad = tmp_path / "trees"
    bad.mkdir()
    for split in ("dev", "test"):
        (bad / f"{split}.txt").write_bytes((data_dir / f"{split}.txt").read_bytes())
    train = {
        "malformed": b"(3 (2 a) (4 film))\n(2 (2 a) (2 b)\n",
        "label": b"(5 (2 a) (4 film))\n",
        "binary": b"".join(b"(%d (1 good) (0 film))\n" % (i % 2) for i in range(200)),
        "latin-1": b"(3 (2 a) (4 film))\n(2 (2 caf\xe9) (2 .))\n",
        "empty": b"",
        "missing": b"(3 (2 a) (4 film))\n",
    }[defect]
    (bad / "train.txt").write_bytes(train)
    if defect == "missing":
        (bad / "test.txt").unlink()
    result = reprozoo("train", "--data-dir", str(bad), "--out", str(tmp_path / "run"), "--tracking", "offline")
    assert result.returncode == 2, result.stderr[-1500:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_unreachable_hub_model_names_the_local_directory_fix(data_dir: Path, tmp_path: Path) -> None:
    result = reprozoo("train", "--model", "roberta-base", "--data-dir", str(data_dir), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "Hugging Face Hub is unreachable" in line and "pass --model DIR" in line
