"""A real offline-tracked MiniLM run (secrets planted in the environment and the config), then its
replay from `tasks show --as-config` through the CLI with an unreachable server configured.
Two trainings of ~20 s each, shared by every test in this module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from helpers import free_port, isolate_clearml, reprozoo, scratch
from reprozoo import run_spec, zoo
from reprozoo.config import RunConfig
from reprozoo.run_spec import fresh_run

REPO = Path(__file__).resolve().parents[1]
SECRETS = {
    "HF_TOKEN": "hf_PlantedHubToken0123456789abcdefghijkl",
    "CLEARML_API_ACCESS_KEY": "PLANTEDACCESSKEY0123",
    "CLEARML_API_SECRET_KEY": "planted-clearml-secret-0123456789abcdef",
    "AWS_SECRET_ACCESS_KEY": "plantedAwsSecret/0123456789+abcdef",
    "REPROZOO_DB_PASSWORD": "planted-password-correct-horse",
    "GITHUB_TOKEN": "ghp_PlantedGithubToken0123456789abcdefgh",
}
# A token passed in the config (task name) that is in no environment variable: caught by its shape.
CONFIG_SECRET = "hf_PlantedOnlyInTheConfig0123456789abcdef"


def small_config(data_dir: Path, out: Path) -> RunConfig:
    return RunConfig().override([
        f"data.data_dir={data_dir}", "data.limit_train_samples=640", "data.limit_eval_samples=200",
        "trainer.max_epochs=1", "tracking.mode=offline", f"out_dir={out}", "optim.lr=1e-4",
        "tracking.project=reprozoo-tests", "data.batch_size=16", f"tracking.task_name=minilm {CONFIG_SECRET}",
    ])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    from reprozoo.train import train

    with scratch(tmp_path_factory, "records") as root, pytest.MonkeyPatch.context() as mp:
        isolate_clearml(mp, root)
        mp.setenv("CLEARML_API_HOST", f"http://127.0.0.1:{free_port()}")  # configured, and down
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name, value in SECRETS.items():
            mp.setenv(name, value)
        started = time.monotonic()
        first = train(small_config(data_dir, root / "first"))
        first_seconds = time.monotonic() - started
        show = subprocess.run([sys.executable, "-m", "reprozoo", "tasks", "show", first.task_id, "--as-config"],
                              capture_output=True, text=True, check=True, timeout=120)
        (root / "replay.yaml").write_text(show.stdout)
        started = time.monotonic()
        replay = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--config", str(root / "replay.yaml"),
                                 "--out", str(root / "replay"), "--tracking", "server"],
                                capture_output=True, text=True, timeout=600, check=False)
        replay_seconds = time.monotonic() - started
        yield {"first": first, "first_seconds": first_seconds, "root": root, "replay": replay, "replay_seconds": replay_seconds,
               "offline": root / "clearml" / "offline", "env": dict(os.environ)}


def cli(runs: dict, *args: str) -> subprocess.CompletedProcess:
    return reprozoo(*args, env=runs["env"], timeout=120)


def test_offline_run_records_everything(runs: dict, data_dir: Path) -> None:
    from reprozoo.data.sst5 import data_fingerprint
    from reprozoo.records import load_record

    run_dir = Path(runs["first"].run_dir)
    record = load_record(runs["first"].task_id)
    assert record.task_id == runs["first"].task_id and record.status == "completed"
    # config as it ran (the zoo's defaults applied; the planted token masked), and the metrics exactly as metrics.json
    asked = small_config(data_dir, run_dir).override(["tracking.task_name=minilm ***"])
    assert asked.data.max_length is None and asked.model.pooling is None
    assert record.config == run_spec.with_zoo_defaults(asked, zoo.get(asked.model.name))
    assert record.config.data.max_length == record.provenance["resolved"]["max_length"]
    assert record.metrics == json.loads((run_dir / "metrics.json").read_text())
    # code: this repository, its commit and uncommitted diff (ClearML's detection alone records none)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD", "--binary"], capture_output=True, text=True).stdout
    # The diff as it is (a masked diff is other code); untracked sources under src/ follow it.
    assert record.commit == head and record.dirty == bool(diff.strip()) and record.diff.startswith(diff)
    assert record.repository and record.provenance["code"]["root"] == str(REPO)
    # environment fingerprint
    env = record.environment
    assert (record.image, record.image_digest) == ("none", "none")
    assert record.lock_file == "envs/cpu.txt" and len(record.lock_sha256) == 64
    assert env["torch"] and env["transformers"] != "none" and env["lightning"] != "none" and env["cpu_model"]
    assert env["gpu_count"] == 0 and env["seed"] == 42 and env["determinism"]["torch_deterministic_algorithms"] is True
    # data and model versions
    assert record.dataset_id and record.dataset_id.startswith("offline-") and record.dataset_id == runs["first"].dataset_id
    assert record.data_sha256 == data_fingerprint(data_dir)
    assert record.model_revision.startswith("sha256:") and record.provenance["model"]["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    # the session itself: zip, hyperparameter sections, artifacts, scalars, plots, single values
    assert record.offline_zip and Path(record.offline_zip).is_file()
    session = runs["offline"] / record.task_id
    task = json.loads((session / "task.json").read_text())
    assert task["hyperparams"]["optim"]["lr"]["value"] == "0.0001" and task["hyperparams"]["run"]["seed"]["value"] == "42"
    assert task["script"]["entry_point"] == "-m reprozoo train" and task["script"]["version_num"] == head
    assert {"metrics", "config", "provenance", "pip-freeze", "model-export"} <= {a["key"] for a in task["execution"]["artifacts"]}
    events = [e for line in (session / "metrics.jsonl").read_text().splitlines() for e in json.loads(line)]
    scalars = {(e["metric"], e["variant"]) for e in events if e["type"] == "training_stats_scalar"}
    assert {("train", "loss"), ("dev", "accuracy"), ("dev", "macro_f1"), ("dev", "best_checkpoint_macro_f1"), ("test", "accuracy")} <= scalars
    assert "val" not in {m for m, _ in scalars} and {v for m, v in scalars if m == "Summary"} == {"train_seconds"}
    plots = " ".join(e.get("plot_str", "") for e in events if e["type"] == "plot")
    assert "confusion matrix dev" in plots and "confusion matrix test" in plots and "class distribution" in plots
    assert '"title": {"text": "true"' in plots and "per-class scores dev" in plots
    assert any(e["type"] == "training_debug_image" and e["metric"] == "misclassified dev" for e in events)
    props = {k: v["value"] for k, v in task["hyperparams"]["properties"].items()}
    assert props["reproduce"] == f"reprozoo repro {record.task_id} --verify" and props["commit"] == head
    assert "resolved" not in task["hyperparams"] and f"re-run: reprozoo repro {record.task_id} --verify" in task["comment"]
    # the model card points back to the run
    card = (run_dir / "export" / "README.md").read_text()
    assert record.task_id in card and record.commit in card and record.dataset_id in card and "image digest" in card
    assert f"{record.metrics['test']['accuracy']:.4f}" in card


def test_no_secret_anywhere_in_the_record(runs: dict) -> None:
    session = runs["offline"] / runs["first"].task_id
    blobs = [(str(p), p.read_bytes()) for p in session.rglob("*") if p.is_file()]
    for zipped in runs["offline"].glob("*.zip"):  # the run's and the dataset's sessions
        with zipfile.ZipFile(zipped) as archive:
            blobs += [(f"{zipped}:{name}", archive.read(name)) for name in archive.namelist()]
    blobs += [(str(p), p.read_bytes()) for p in (runs["offline"]).glob("*/task.json")]
    assert len(blobs) > 10
    planted = [*SECRETS.values(), CONFIG_SECRET]
    for name, blob in blobs:
        if name.endswith((".safetensors", ".zip")):
            continue
        for secret in planted:
            assert secret.encode() not in blob, f"{secret[:6]}… leaked into {name}"


def test_replay_from_as_config_is_bit_identical_despite_an_unreachable_server(runs: dict) -> None:
    replay = runs["replay"]
    assert replay.returncode == 0, replay.stderr[-3000:]
    warnings = [line for line in replay.stderr.splitlines() if "unreachable" in line]
    assert len(warnings) == 1 and "recording this run offline instead" in warnings[0]
    # The fallback costs seconds, not a connection timeout per call: the replay (a new process, its
    # imports, and the same training) within twice the first run's time plus a minute, on a loaded CI
    # machine as on an idle one (a ratio, not a time).
    assert runs["replay_seconds"] < 2 * runs["first_seconds"] + 60, (runs["replay_seconds"], runs["first_seconds"])
    first = Path(runs["first"].run_dir) / "metrics.json"
    again = runs["root"] / "replay" / "metrics.json"
    assert again.read_bytes() == first.read_bytes()
    replay_task = json.loads((runs["root"] / "replay" / "task.json").read_text())
    assert replay_task["mode"] == "offline" and Path(replay_task["offline_zip"]).is_file()
    assert replay_task["dataset_id"] == runs["first"].dataset_id  # same data, same version
    # Closing the offline task zips it: seconds, not a connection timeout.
    assert replay_task["close_seconds"] < 30


def test_tasks_cli_list_show_diff(runs: dict) -> None:
    first = runs["first"].task_id
    second = json.loads((runs["root"] / "replay" / "task.json").read_text())["task_id"]
    listing = cli(runs, "tasks", "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("task id") and {first, second} <= {line.split()[0] for line in lines[1:]}
    assert len(lines) == 3  # the dataset's session is not a run
    show = cli(runs, "tasks", "show", first)
    assert show.returncode == 0, show.stderr
    for needle in (first, "completed", "all-minilm-l6-v2", "digest none", "envs/cpu.txt", runs["first"].dataset_id, "test acc"):
        assert needle in show.stdout, needle
    diff = cli(runs, "tasks", "diff", first, second)
    assert diff.returncode == 0, diff.stderr
    # The replay pinned the data version and the weights it loaded (their sha256); everything that decides
    # the result is the same.
    rows = [line.split()[0] for line in diff.stdout.splitlines()[2:] if line and not line.startswith(" ")]
    assert rows == ["config.data.dataset_id", "config.model.revision"], diff.stdout
    same = cli(runs, "tasks", "diff", first, first)
    assert same.stdout.startswith("identical")
    missing = cli(runs, "tasks", "show", "offline-doesnotexist")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "tasks list" in missing.stderr


def test_load_record_from_run_dir_and_zip(runs: dict) -> None:
    from reprozoo.records import load_record

    by_id = load_record(runs["first"].task_id)
    assert load_record(runs["first"].run_dir).to_dict() == by_id.to_dict()
    from_zip = load_record(by_id.offline_zip)
    assert from_zip.config == by_id.config and from_zip.metrics == by_id.metrics and from_zip.commit == by_id.commit
    replay = fresh_run(from_zip)
    assert replay.data.dataset_id == by_id.dataset_id and replay.out_dir is None


def test_tasks_import_needs_a_reachable_server(runs: dict) -> None:
    zipped = load_zip(runs)
    down = cli(runs, "tasks", "import", zipped)
    assert down.returncode == 2 and "unreachable" in down.stderr and len(down.stderr.strip().splitlines()) == 1
    env = {k: v for k, v in runs["env"].items() if not k.startswith("CLEARML_API_")}
    none = subprocess.run([sys.executable, "-m", "reprozoo", "tasks", "import", zipped], capture_output=True, text=True,
                          env=env, timeout=60)
    assert none.returncode == 2 and "needs a ClearML server" in none.stderr


def load_zip(runs: dict) -> str:
    return json.loads((Path(runs["first"].run_dir) / "task.json").read_text())["offline_zip"]


class _ServerTask:
    """Stands in for a server-side clearml Task (no server can run here): the same calls
    records.task_record makes, answered from the offline session's task.json."""

    def __init__(self, session: Path) -> None:
        from types import SimpleNamespace

        self._task = json.loads((session / "task.json").read_text())
        self.id, self.name = "0123456789abcdef0123456789abcdef", self._task["name"]
        metrics = next(a for a in self._task["execution"]["artifacts"] if a["key"] == "metrics")["uri"]
        self.artifacts = {"metrics": SimpleNamespace(get_local_copy=lambda: metrics)}
        self.data = SimpleNamespace(script=SimpleNamespace(**{k: self._task["script"].get(k) for k in
                                                              ("repository", "branch", "version_num", "diff")}))

    def get_configuration_object(self, name: str) -> str | None:
        return (self._task["configuration"].get(name) or {}).get("value")

    def get_status(self) -> str:
        return "completed"

    def get_project_name(self) -> str:
        return self._task["project_name"]


def test_server_record_reader_matches_the_offline_one(runs: dict) -> None:
    from reprozoo.records import load_record, task_record

    offline = load_record(runs["first"].task_id)
    server = task_record(_ServerTask(runs["offline"] / runs["first"].task_id))
    assert server.source == "server" and server.task_id == "0123456789abcdef0123456789abcdef"
    for name in ("config", "metrics", "image_digest", "lock_sha256", "commit", "diff", "dirty", "dataset_id",
                 "data_sha256", "model_revision", "environment"):
        assert getattr(server, name) == getattr(offline, name), name
