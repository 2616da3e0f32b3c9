from __future__ import annotations

import json
import subprocess
import sys
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


def test_help_is_fast_and_torch_free() -> None:
    code = "import sys; from reprozoo import cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


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
