"""Issue 13 at the run directory: one run, one directory; a secret scrubbed at the source; a finished
run is not resumed; a NaN loss is a failed run, said in one line. Real (tiny) trainings, ClearML offline."""

from __future__ import annotations

import fcntl
import json
import os
import zipfile
from pathlib import Path

import pytest

from helpers import reprozoo

TINY = ["--limit-train-samples", "48", "--limit-eval-samples", "16", "--max-length", "32", "--max-epochs", "1",
        "--tracking", "offline", "--set", "data.granularity=sentences", "--set", "trainer.val_check_interval=1.0"]
SECRET = "s3cr3t-value-of-a-token-9f2b"


def sessions(root: Path) -> list[Path]:
    offline = root / "clearml" / "offline"
    return sorted(offline.iterdir()) if offline.is_dir() else []


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_live_runs_out_is_refused_and_nothing_is_opened(isolated_clearml: Path, tiny_model_dirs: dict) -> None:
    out = isolated_clearml / "run"
    out.mkdir()
    holder = os.open(out, os.O_RDONLY)  # what a live `reprozoo train --out run` holds
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        result = reprozoo("train", "--model", str(tiny_model_dirs["bert"]), "--out", str(out), *TINY)
    finally:
        os.close(holder)
    assert "is in use by a live run" in one_line_error(result)
    assert not any(out.iterdir()) and not sessions(isolated_clearml)  # no config, no task, no session


@pytest.mark.parametrize("state", ["file", "interrupted"])
def test_an_out_that_holds_something_else_is_one_line_before_any_task(isolated_clearml: Path, tiny_model_dirs: dict,
                                                                     state: str) -> None:
    out = isolated_clearml / "run"
    if state == "file":
        out.write_text("not a directory")
        expected = "is a file, not a directory"
    else:  # a killed run: config.yaml, no metrics.json
        out.mkdir()
        (out / "config.yaml").write_text("seed: 42\n")
        expected = "holds an interrupted run"
    result = reprozoo("train", "--model", str(tiny_model_dirs["bert"]), "--out", str(out), *TINY)
    assert expected in one_line_error(result)
    assert not sessions(isolated_clearml)


def test_a_run_that_cannot_start_leaves_no_directory(isolated_clearml: Path, tiny_model_dirs: dict, tmp_path: Path) -> None:
    out = isolated_clearml / "never"
    result = reprozoo("train", "--model", str(tiny_model_dirs["bert"]), "--out", str(out), "--data-dir", str(tmp_path / "nope"), *TINY)
    one_line_error(result)
    assert not out.exists() and not sessions(isolated_clearml)


def test_secret_scrubbed_at_the_source_and_a_finished_run_is_not_resumed(isolated_clearml: Path, tiny_model_dirs: dict,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)  # a secret of no known shape, held in the environment
    out = isolated_clearml / "run"
    result = reprozoo("train", "--model", str(tiny_model_dirs["bert"]), "--out", str(out), *TINY,
                      "--set", f"tracking.task_name=run-{SECRET}")
    assert result.returncode == 0, result.stderr
    written = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json")}
    assert written and not any(SECRET.encode() in data for data in written.values())
    assert "task_name: run-***" in (out / "config.yaml").read_text()
    # Inside the zipped offline sessions: their members are deflated, so the zip's raw bytes would hide it.
    zips = list((isolated_clearml / "clearml" / "offline").glob("*.zip"))
    assert zips, "the run wrote no offline session"
    for zipped in zips:
        with zipfile.ZipFile(zipped) as archive:
            members = archive.namelist()
            assert any(name.endswith("task.json") for name in members), members
            for name in members:
                assert SECRET.encode() not in archive.read(name), f"{zipped}:{name}"

    metrics = (out / "metrics.json").read_bytes()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = reprozoo("train", "--resume", str(out))
    assert "holds a finished run" in one_line_error(again) and "nothing was changed" in again.stderr
    assert (out / "metrics.json").read_bytes() == metrics and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_nan_loss_stops_the_run_in_one_line_and_the_record_is_failed(isolated_clearml: Path, tiny_model_dirs: dict) -> None:
    from reprozoo.records import list_offline

    out = isolated_clearml / "nan"
    result = reprozoo("train", "--model", str(tiny_model_dirs["bert"]), "--out", str(out), *TINY, "--set", "optim.lr=1e30")
    line = one_line_error(result)
    assert "training loss is" in line and "global step" in line and "optim.lr" in line
    assert not (out / "metrics.json").exists()
    assert json.loads((out / "task.json").read_text())["stopped"].startswith("NonFiniteLossError")
    statuses = [r.status for r in list_offline()]
    assert statuses == ["failed"], statuses


def test_tasks_import_refuses_a_path_traversal_zip_in_one_line(isolated_clearml: Path) -> None:
    import zipfile

    from reprozoo import records
    from reprozoo.config import ConfigError

    crafted = isolated_clearml / "evil.zip"
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("task.json", json.dumps({"id": "offline-x"}))
        archive.writestr("../../outside.txt", "escaped")
    with pytest.raises(ConfigError, match=r"path traversal\); refused, nothing imported"):
        records.import_session(crafted)
    assert not (isolated_clearml.parent / "outside.txt").exists()
