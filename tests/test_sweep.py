"""Sweeps: model selection, the plan (zoo defaults, then --set), the run identity behind the skip rule,
the GPU-hour estimate, the ClearML pipeline steps as data (and fed to a recording stand-in), and real
local sweeps of tiny random-weight zoo-family models on SST-5 sentences, ClearML offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from helpers import reprozoo
from reprozoo import sweep as sweeps
from reprozoo import zoo
from reprozoo.config import ConfigError, RunConfig

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"ghcr.io/org/reprozoo@{DIGEST}"
SHA = {"train": "1" * 64, "dev": "2" * 64, "test": "3" * 64}
COMMIT, DIFF = "c" * 40, "diff --git a/src/reprozoo/x.py b/src/reprozoo/x.py\n+print('changed')\n"
WEIGHTS = "sha256:" + "77" * 32


# --- selection and plan --------------------------------------------------------------------------
def test_select_models_all_family_and_names() -> None:
    assert sweeps.select_models("all") == zoo.names()
    deberta = sweeps.select_models("family:deberta-v3")
    assert deberta == ["deberta-v3-xsmall", "deberta-v3-small", "deberta-v3-base", "deberta-v3-large"]
    assert sweeps.select_models("roberta-base, bert-base-uncased,roberta-base") == ["roberta-base", "bert-base-uncased"]
    assert sweeps.select_models("family:electra,all-minilm-l6-v2")[-1] == "all-minilm-l6-v2"


def test_select_models_unknown_names_fail_with_the_closest() -> None:
    with pytest.raises(zoo.UnknownModelError, match="did you mean deberta-v3-base"):
        sweeps.select_models("bert-base-uncased,debrta-v3-base")
    with pytest.raises(ConfigError, match="unknown family 'robera'; did you mean roberta"):
        sweeps.select_models("family:robera")
    with pytest.raises(ConfigError, match="name at least one model"):
        sweeps.select_models(" , ")


def test_plan_applies_zoo_defaults_then_overrides(tmp_path: Path) -> None:
    plan = sweeps.build_plan("electra-small,deberta-v3-large", ["trainer.max_epochs=2", "data.max_length=96"],
                             out_root=tmp_path)
    small, large = (s.config for s in plan.steps)
    assert (small.optim.lr, small.data.batch_size, small.model.pooling) == (1e-4, 32, "cls")  # zoo, per model
    assert (large.optim.lr, large.data.batch_size) == (1e-5, 16)
    assert small.data.max_length == large.data.max_length == 96 and small.trainer.max_epochs == 2  # --set wins
    assert [s.name for s in plan.steps] == ["electra-small", "deberta-v3-large"]
    assert small.out_dir == str(tmp_path / "electra-small")
    # --set beats the zoo's per-model value too
    assert sweeps.build_plan("electra-small", ["optim.lr=7e-5"]).steps[0].config.optim.lr == 7e-5


@pytest.mark.parametrize(("overrides", "image", "message"), [
    (["model.name=roberta-base"], None, "a sweep names its models with --models"),
    (["optim.lr=-1"], None, "optim.lr=-1 must be positive"),
    (["optim.lrr=1"], None, "unknown setting 'lrr'; did you mean lr"),
    ([], "ghcr.io/org/reprozoo:latest", "pin it by digest"),
])
def test_plan_rejects_bad_input(overrides: list[str], image: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sweeps.build_plan("bert-base-uncased", overrides, image=image)


def test_step_names_are_pipeline_safe_and_unique(tmp_path: Path) -> None:
    local = tmp_path / "my.model v2"
    local.mkdir()
    assert sweeps.step_name("ernie-2.0-base-en") == "ernie-2_0-base-en"
    assert sweeps.step_name(str(local)) == "my_model_v2"
    assert sweeps.step_name("google/electra-small-discriminator") == "google_electra-small-discriminator"
    assert sweeps.step_name("bert-base-uncased", ["bert-base-uncased"]) == "bert-base-uncased-2"


def test_gpu_hour_estimate_follows_its_formula() -> None:
    cfg = sweeps.build_plan("bert-base-uncased", ["trainer.max_epochs=3"], base=RunConfig()).steps[0].config
    n, tokens = 110e6, sweeps.TOKENS_PER_EXAMPLE["sentences"]
    flops = 6 * n * 8544 * 3 * tokens + 2 * n * (1101 * 4 + 2210) * tokens
    assert sweeps.estimate_gpu_hours(cfg, 110) == pytest.approx(flops / 2e13 / 3600 + 2 / 60)
    phrases = cfg.override(["data.granularity=phrases"])
    limited = cfg.override(["data.limit_train_samples=100"])
    assert sweeps.estimate_gpu_hours(phrases, 110) > sweeps.estimate_gpu_hours(cfg, 110) > sweeps.estimate_gpu_hours(limited, 110)
    assert sweeps.estimate_gpu_hours(cfg, 335) > sweeps.estimate_gpu_hours(cfg, 110)
    plan = sweeps.build_plan("family:deberta-v3")
    assert plan.gpu_hours == pytest.approx(sum(s.gpu_hours for s in plan.steps))


# --- run identity ---------------------------------------------------------------------------------
def identity(cfg: RunConfig, sha: dict[str, str] = SHA, image: str = "none", commit: str = COMMIT, diff: str = DIFF,
             weights: str | None = WEIGHTS, resolved: dict | None = None) -> str | None:
    return sweeps.run_identity(cfg, sha, image, commit, diff, weights, resolved)


def test_run_identity_ignores_where_and_how_tracked_but_not_what_trains() -> None:
    cfg = sweeps.build_plan("bert-base-uncased", base=RunConfig()).steps[0].config
    key = identity(cfg)
    moved = cfg.override(["out_dir=/elsewhere", "tracking.mode=off", "tracking.project=p", "tracking.task_name=t",
                          "data.data_dir=/other/copy", "data.dataset_id=offline-123"])
    assert identity(moved) == key
    for change in (["optim.lr=1e-4"], ["seed=1"], ["data.granularity=phrases"], ["trainer.max_epochs=9"]):
        assert identity(cfg.override(change)) != key, change
    assert identity(cfg, {**SHA, "test": "4" * 64}) != key  # other data
    assert identity(cfg, image=DIGEST) != key  # other image
    assert identity(cfg, commit="d" * 40) != key and identity(cfg, diff=DIFF + "+x\n") != key and identity(cfg, diff="") != key
    assert identity(cfg, weights="sha256:" + "88" * 32) != key  # other weights
    # Unknown weights or code (an unpinned hub model, no git) match nothing, not even each other.
    assert identity(cfg, weights=None) is identity(cfg, weights="none") is identity(cfg, commit="") is None
    # In an image its digest stands for its code (the checkout's diff does not run there).
    assert identity(cfg, image=DIGEST, commit="", diff="") == identity(cfg, image=DIGEST) is not None


def test_run_identity_resolves_zoo_defaults_and_digest_spellings() -> None:
    explicit = sweeps.build_plan("bert-base-uncased", base=RunConfig()).steps[0].config
    implicit = RunConfig().override(["model.name=bert-base-uncased"])  # what `reprozoo train --model` records
    assert implicit.optim.lr is None and identity(implicit) == identity(explicit)
    # A record's provenance says what the run used (the zoo may have changed since): that wins.
    changed = {"lr": 9e-5, "batch_size": 32, "max_length": 128, "pooling": "cls"}
    assert identity(implicit, resolved=changed) != identity(explicit)
    assert sweeps.normalise_digest(IMAGE) == sweeps.normalise_digest(DIGEST) == DIGEST
    assert sweeps.normalise_digest(None) == sweeps.normalise_digest("none") == "none"
    assert identity(explicit, image=IMAGE) == identity(explicit, image=DIGEST)


PINNED = "all-minilm-l6-v2"  # zoo.yaml pins its weights (sha256); electra-small is an unpinned hub model


def here(monkeypatch: pytest.MonkeyPatch, commit: str = COMMIT, diff: str = DIFF) -> None:
    """This checkout at `commit` with `diff` uncommitted, outside any image."""
    from reprozoo import provenance

    monkeypatch.setattr(provenance, "git_state", lambda *a, **k: provenance.GitState(root="/repo", commit=commit, diff=diff))
    for name in ("REPROZOO_IMAGE", "REPROZOO_IMAGE_DIGEST"):
        monkeypatch.delenv(name, raising=False)


def finished(cfg: RunConfig, **fields: object):
    """A completed run's record as records.py reads it, made here by this code from these weights."""
    from reprozoo.records import Record

    values: dict = dict(task_id="offline-done", config=cfg, metrics={"test": {"accuracy": 0.5}}, image="none",
                        image_digest="none", lock_sha256="none", commit=COMMIT, diff=DIFF, dirty=True, dataset_id=None,
                        data_sha256=SHA, model_revision=zoo.get(PINNED).weights.weights_revision, status="completed",
                        offline_zip=None)
    return Record(**{**values, **fields})


def test_a_record_of_other_code_is_not_done(monkeypatch: pytest.MonkeyPatch) -> None:
    here(monkeypatch)
    step = sweeps.build_plan(PINNED).steps[0]
    assert sweeps.step_identity(step, SHA) in sweeps.done_index([finished(step.config)])  # the same run: done
    for other in ({"diff": DIFF + "+print('more')\n"}, {"diff": "", "dirty": False}, {"commit": "d" * 40}):
        assert sweeps.step_identity(step, SHA) not in sweeps.done_index([finished(step.config, **other)]), other


def test_a_record_of_other_weights_is_not_done(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    here(monkeypatch)
    step = sweeps.build_plan(PINNED).steps[0]
    assert sweeps.step_identity(step, SHA) not in sweeps.done_index([finished(step.config, model_revision="sha256:" + "cd" * 32)])
    # An explicit hub commit is the weights' revision, the zoo's pin then is not.
    commit = "e" * 40
    at = sweeps.build_plan(PINNED, [f"model.revision={commit}"]).steps[0]
    assert sweeps.step_identity(at, SHA) not in sweeps.done_index([finished(at.config)])
    assert sweeps.step_identity(at, SHA) in sweeps.done_index([finished(at.config, model_revision=commit)])
    # A local directory: the sha256 of its weight files, as resolve_weights records it.
    local = tmp_path / "my-bert"
    local.mkdir()
    (local / "config.json").write_text('{"model_type": "bert"}')
    (local / "model.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
    step = sweeps.build_plan(str(local)).steps[0]
    record = finished(step.config, model_revision=zoo.weights_sha256(local))
    assert sweeps.step_identity(step, SHA) in sweeps.done_index([record])
    (local / "model.safetensors").write_bytes(b"\x04" + b"\x00" * 7 + b'{}  ')  # other weights in the same place
    assert sweeps.step_identity(step, SHA) not in sweeps.done_index([record])


def test_a_rerun_sweep_trains_what_changed_and_skips_the_same_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Through the local executor and the dry run: same code and weights skipped; other code, or
    weights only the hub knows (unpinned, no model.revision), run again, with one line saying why."""
    here(monkeypatch)
    monkeypatch.setattr(sweeps, "data_sha256", lambda cfg: SHA)
    plan = sweeps.build_plan(f"{PINNED},all-mpnet-base-v2,electra-small")
    same, other_diff, unpinned = (s.config for s in plan.steps)
    records = [finished(same, task_id="t-same"),
               finished(other_diff, task_id="t-old-diff", diff=DIFF + "+print('before')\n",
                        model_revision=zoo.get("all-mpnet-base-v2").weights.weights_revision),
               finished(unpinned, task_id="t-unpinned", model_revision="f" * 40)]
    monkeypatch.setattr(sweeps, "existing_records", lambda mode, project: records)
    assert sweeps.local_status(plan) == {PINNED: "skip (done: t-same)", "all-mpnet-base-v2": "run",
                                         "electra-small": "run (weights unknown)"}
    trained: list[str] = []

    def fake_train(cfg: RunConfig):
        from reprozoo.train import RunResult

        trained.append(cfg.model.name)
        return RunResult(tmp_path, {"test": {"accuracy": 0.6}})

    log: list[str] = []
    report = sweeps.run_local(plan, records=records, train_fn=fake_train, log=log.append)
    assert [r.status for r in report.results] == ["skipped", "done", "done"], log
    assert trained == ["all-mpnet-base-v2", "electra-small"]
    assert sum("electra-small: the weights of unpinned google/electra-small-discriminator are known only once loaded" in line
               for line in log) == 1, log


# --- the pipeline (queue executor) as data -------------------------------------------------------
def queued_plan() -> sweeps.SweepPlan:
    plan = sweeps.build_plan("electra-small,ernie-2.0-base-en", ["trainer.max_epochs=2"], queue="gpu-a100", image=IMAGE)
    return sweeps.pin_data_version(plan, "0123dataset")


def test_pipeline_steps_are_the_local_plan_pinned_to_queue_image_and_data() -> None:
    from reprozoo.run_spec import merge_edits
    from reprozoo.tracking import CONFIG_OBJECT, config_from_sections

    local = sweeps.build_plan("electra-small,ernie-2.0-base-en", ["trainer.max_epochs=2"])
    plan = queued_plan()
    steps = sweeps.pipeline_steps(plan, "template-id")
    assert [s["name"] for s in steps] == ["electra-small", "ernie-2_0-base-en"]
    template_cfg = RunConfig()
    for step, here in zip(steps, local.steps, strict=True):
        assert step["base_task_id"] == "template-id" and step["execution_queue"] == "gpu-a100"
        assert step["continue_behaviour"] == {"continue_on_fail": True, "continue_on_abort": True}
        assert step["task_overrides"]["container.image"] == IMAGE
        arguments = step["task_overrides"]["container.arguments"].split()
        assert "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1" in arguments and "--entrypoint=" in arguments
        assert "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=/opt/venv/bin/python" in arguments
        # What the agent will train: tracking.remote_config's merge of the clone's config object and
        # sections against the template's recorded baseline, i.e. the local plan's RunConfig pinned to
        # the data version (agents have no local trees, and write their own run directory).
        sections: dict[str, dict[str, str]] = {}
        for key, value in step["parameter_override"].items():
            section, name = key.split("/")
            sections.setdefault(section, {})[name] = value
        edited = RunConfig.from_dict(yaml.safe_load(step["configuration_overrides"][CONFIG_OBJECT]))
        on_agent = merge_edits(template_cfg, edited, config_from_sections(sections))
        expected = here.config.override(["data.dataset_id=0123dataset", "data.data_dir=null", "out_dir=null"])
        assert on_agent == expected
        assert step["task_overrides"]["name"] == f"{here.config.model.name} {here.config.data.granularity} seed42"


def test_pipeline_steps_without_image_leave_the_container_alone() -> None:
    plan = sweeps.build_plan("electra-small", queue="cpu")
    (step,) = sweeps.pipeline_steps(plan, "t")
    assert not any(k.startswith("container.") for k in step["task_overrides"])
    with pytest.raises(ConfigError, match="pass --queue"):
        sweeps.pipeline_steps(sweeps.build_plan("electra-small"), "t")


class _Recorder:
    """Stands in for clearml's Task / PipelineController (no server here): records every call."""

    calls: list[tuple[str, tuple, dict]]

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.calls = [("__init__", args, kwargs)]
        self.id = "template-0001"

    def __getattr__(self, name: str):
        def record(*args: object, **kwargs: object) -> None:
            self.calls.append((name, args, kwargs))

        return record


class _TaskClass:
    created: ClassVar[list[_Recorder]] = []

    @classmethod
    def create(cls, **kwargs: object) -> _Recorder:
        task = _Recorder(**kwargs)
        cls.created.append(task)
        return task


def test_launch_feeds_every_step_to_the_pipeline_controller() -> None:
    from reprozoo.tracking import BASELINE_OBJECT, CONFIG_OBJECT, ENTRY_POINT

    plan = queued_plan()
    log: list[str] = []
    pipe = sweeps.launch_pipeline(plan, project="reprozoo", controller_queue="services", pipeline_cls=_Recorder,
                                  task_cls=_TaskClass, log=log.append)
    (template,) = _TaskClass.created
    create = template.calls[0][2]
    assert create["module"] == "reprozoo train" and create["task_type"] == "training" and create["commit"]
    assert create["project_name"] == "reprozoo" and create["working_directory"] == "src"
    objects = {c[1][0]: c[2]["config_text"] for c in template.calls if c[0] == "set_configuration_object"}
    assert set(objects) == {CONFIG_OBJECT, BASELINE_OBJECT} and objects[CONFIG_OBJECT] == objects[BASELINE_OBJECT]
    assert RunConfig.from_dict(yaml.safe_load(objects[CONFIG_OBJECT])) == plan.steps[0].config
    assert any(c[0] == "set_script" and c[2]["entry_point"] == ENTRY_POINT for c in template.calls)
    init = pipe.calls[0][2]
    assert init["project"] == init["target_project"] == "reprozoo" and init["abort_on_failure"] is False
    added = [c[2] for c in pipe.calls if c[0] == "add_step"]
    assert added == sweeps.pipeline_steps(plan, "template-0001")
    assert pipe.calls[-1] == ("start", (), {"queue": "services"})
    assert "2 step(s)" in log[-1] and IMAGE in log[-1]


# --- CLI -----------------------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml"))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "absent.conf"))
    monkeypatch.setenv("REPROZOO_DATA_DIR", str(data_dir))
    result = reprozoo("sweep", "--models", "family:deberta-v3,electra-small", "--dry-run", "--image", IMAGE,
                      "--set", "trainer.max_epochs=2", "--out", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "hub", "id"] and "GPU-h (est.)" in lines[0] and "status" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:6]}
    assert set(rows) == {"deberta-v3-xsmall", "deberta-v3-small", "deberta-v3-base", "deberta-v3-large", "electra-small"}
    assert "microsoft/deberta-v3-large" in rows["deberta-v3-large"] and IMAGE in rows["electra-small"]
    # electra-small's hub weights are known only once loaded: it can never be proved done
    assert rows["electra-small"].endswith(" run (weights unknown)") and " 0.0001 " in rows["electra-small"]
    total = sweeps.build_plan("family:deberta-v3,electra-small", ["trainer.max_epochs=2"]).gpu_hours
    assert lines[6].startswith("total") and f"{total:.3f}" in lines[6] and f"estimated GPU-hours: {total:.3f}" in lines[7]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "clearml").exists()


def test_sweep_cli_errors_are_one_line() -> None:
    for args, message in ((["--models", "debrta-v3-base", "--dry-run"], "did you mean deberta-v3-base"),
                          (["--models", "bert-base-uncased", "--queue", "q", "--local"], "exclude each other"),
                          (["--models", "bert-base-uncased", "--image", "reprozoo:cpu", "--dry-run"], "pin it by digest")):
        result = reprozoo("sweep", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_queue_without_a_server_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY", "CLEARML_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "absent.conf"))
    result = reprozoo("sweep", "--models", "electra-small", "--queue", "gpu")
    assert result.returncode == 2 and "--queue needs a ClearML server" in result.stderr


# --- real local sweeps ---------------------------------------------------------------------------
TINY_ARGS = ["--set", "data.limit_train_samples=300", "--set", "data.limit_eval_samples=100", "--set", "trainer.max_epochs=1",
             "--set", "data.max_length=64", "--set", "optim.lr=1e-3", "--set", "tracking.mode=offline",
             "--set", "tracking.project=reprozoo-tests"]


@pytest.mark.slow
def test_local_sweep_of_three_tiny_models_then_leaderboard_then_skip(isolated_clearml: Path, tiny_model_dirs: dict) -> None:
    from reprozoo.records import list_offline

    models = ",".join(str(d) for d in tiny_model_dirs.values())
    out = isolated_clearml / "sweep"
    first = reprozoo("sweep", "--models", models, "--local", "--out", str(out), *TINY_ARGS)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "sweep: 3 model(s): 3 done" in first.stdout
    records = [r for r in list_offline() if r.status == "completed"]
    assert sorted(Path(r.config.model.name).name for r in records) == ["tiny-bert", "tiny-distilbert", "tiny-electra"]
    for record in records:
        run_dir = out / Path(record.config.model.name).name
        assert json.loads((run_dir / "metrics.json").read_text()) == record.metrics
        assert record.config.optim.lr == 1e-3 and record.config.data.limit_train_samples == 300
        assert record.metrics["train"]["examples"] == 300 and record.image_digest == "none"

    board = reprozoo("leaderboard", "--out", str(isolated_clearml / "board"), "--format", "csv")
    assert board.returncode == 0, board.stderr
    csv_rows = (isolated_clearml / "board" / "leaderboard.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and board.stdout.startswith(csv_rows[0])  # header + three runs, printed too
    assert {row.split(",")[-2] for row in csv_rows[1:]} == {r.task_id for r in records}
    assert (isolated_clearml / "board" / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert "10 published reference(s)" in board.stdout

    second = reprozoo("sweep", "--models", models, "--local", "--out", str(out), *TINY_ARGS)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipped, already completed as") == 3 and "3 skipped" in second.stdout
    assert len(list_offline()) == 3  # nothing new recorded
    # Any change to what trains is a new run: one more epoch is not skipped (shown by --dry-run).
    again = reprozoo("sweep", "--models", models, "--dry-run", *TINY_ARGS, "--set", "trainer.max_epochs=2")
    assert again.returncode == 0 and again.stdout.count(" run\n") == 3, again.stdout


def test_a_failed_model_does_not_stop_the_sweep(isolated_clearml: Path, tiny_model_dirs: dict) -> None:
    import shutil

    from reprozoo.records import list_offline

    # Weights that cannot be read fail after the ClearML task is open (tokenizer and data load first):
    # the sweep must close that task, or the next model's Task.init would attach to it.
    broken = isolated_clearml / "broken-bert"
    shutil.copytree(tiny_model_dirs["bert"], broken)
    # A header that reads (the model-directory check passes) over tensors cut short: loading fails.
    weights = (broken / "model.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(weights[:8], "little")
    (broken / "model.safetensors").write_bytes(weights[:header_end + 16])
    args = [a for a in TINY_ARGS if a != "--set"]
    plan = sweeps.build_plan(f"{broken},{tiny_model_dirs['electra']}", args, out_root=isolated_clearml / "runs")
    log: list[str] = []
    report = sweeps.run_local(plan, log=log.append)
    assert [r.status for r in report.results] == ["failed", "done"], log
    assert report.failed[0].name == "broken-bert" and report.failed[0].error
    records = list_offline()
    statuses = {Path(r.config.model.name).name: r.status for r in records}
    assert statuses["tiny-electra"] == "completed" and statuses.get("broken-bert") != "completed"
    assert report.results[1].task_id in {r.task_id for r in records}


def test_queue_cli_pins_the_data_version_skips_done_models_and_launches_the_rest(monkeypatch: pytest.MonkeyPatch,
                                                                                  data_dir: Path) -> None:
    """The --queue glue with the server calls replaced (no server here): what reaches launch_pipeline."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from reprozoo import cli, session
    from reprozoo.data import versions

    monkeypatch.setattr(session, "server_configured", lambda: True)
    monkeypatch.setattr(session, "server_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(session, "api_server", lambda: "https://clearml.example")
    monkeypatch.setattr(session, "configure_clearml", lambda: None)
    registered: list[Path] = []

    def register(path: Path, mode: str, project: str = versions.DEFAULT_PROJECT) -> versions.DataVersion:
        registered.append(path)
        return versions.DataVersion("dataset-7", versions.content_hash(SHA), SHA, None, str(path), mode)

    monkeypatch.setattr(versions, "register", register)
    queues_checked: list[str] = []
    monkeypatch.setattr(sweeps, "require_queue", lambda name: queues_checked.append(name) or f"id-{name}")
    # all-minilm-l6-v2 already ran on an agent with this config, data, image and (pinned) weights.
    done_cfg = sweeps.pin_data_version(sweeps.build_plan(PINNED, ["trainer.max_epochs=2"]), "dataset-7").steps[0].config
    done = SimpleNamespace(status="completed", metrics={"test": {"accuracy": 0.5}}, config=done_cfg, data_sha256=SHA,
                           image_digest=IMAGE, provenance={}, task_id="server-task-1", commit="", diff="",
                           model_revision=zoo.get(PINNED).weights.weights_revision)
    monkeypatch.setattr(sweeps, "existing_records", lambda mode, project: [done] if mode == "server" else [])
    launched: list[tuple] = []
    monkeypatch.setattr(sweeps, "launch_pipeline", lambda plan, **kw: launched.append((plan, kw)))
    result = CliRunner().invoke(cli.app, ["sweep", "--models", f"{PINNED},convbert-small", "--queue", "gpu",
                                          "--image", IMAGE, "--set", "trainer.max_epochs=2", "--set",
                                          f"data.data_dir={data_dir}"])
    assert result.exit_code == 0, result.output
    assert queues_checked == ["gpu", "services"]  # the step and controller queues, before anything is created
    assert registered == [data_dir] and f"{PINNED}: skipped, already completed as server-task-1" in result.output
    assert "convbert-small: the weights of unpinned" in result.output  # never provably done: it runs
    ((plan, kwargs),) = launched
    assert [s.name for s in plan.steps] == ["convbert-small"] and kwargs["controller_queue"] == "services"
    step = plan.steps[0]
    assert (step.queue, step.image, step.config.data.dataset_id, step.config.data.data_dir) == ("gpu", IMAGE, "dataset-7", None)


def test_image_steps_go_through_the_container_layer(isolated_clearml: Path, tiny_model_dirs: dict, data_dir: Path) -> None:
    """`--image --local` hands each step to containers.run_config_in_image. Here a stand-in does what
    the image would: train the RunConfig with the image's identity in the environment."""
    from reprozoo.train import train

    calls: list[dict] = []

    def in_image(cfg: RunConfig, image: str, *, runs_dir: Path, data_dir: Path | None, gpus: str, log) -> tuple[int, Path]:
        calls.append({"model": cfg.model.name, "image": image, "runs_dir": runs_dir, "data_dir": data_dir, "gpus": gpus})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("REPROZOO_IMAGE", image.split("@")[0])
            mp.setenv("REPROZOO_IMAGE_DIGEST", image)  # `image run` hands in repo@sha256:…
            return 0, Path(train(cfg).run_dir)

    overrides = [a for a in TINY_ARGS if a != "--set"]
    plan = sweeps.build_plan(str(tiny_model_dirs["electra"]), overrides, image=IMAGE, out_root=isolated_clearml / "runs")
    report = sweeps.run_local(plan, runs_dir=isolated_clearml / "runs", data_dir=data_dir, gpus="none",
                              log=lambda line: None, image_fn=in_image)
    assert [r.status for r in report.results] == ["done"], report.results
    assert calls == [{"model": str(tiny_model_dirs["electra"]), "image": IMAGE, "runs_dir": isolated_clearml / "runs",
                      "data_dir": data_dir, "gpus": "none"}]
    # The same image again: skipped. The same config without the image (in-process here) is another run.
    again = sweeps.run_local(plan, log=lambda line: None, image_fn=in_image)
    assert [r.status for r in again.results] == ["skipped"] and len(calls) == 1
    from reprozoo.records import list_offline

    done = sweeps.done_index(list_offline())
    no_image = sweeps.build_plan(str(tiny_model_dirs["electra"]), overrides, out_root=isolated_clearml / "runs")
    assert sweeps.step_identity(no_image.steps[0]) not in done and sweeps.step_identity(plan.steps[0]) in done
    # A container that exits non-zero is a failed step, with the reason.
    failed = sweeps.run_local(plan, records=[], log=lambda line: None, image_fn=lambda *a, **k: (3, isolated_clearml))
    assert failed.results[0].status == "failed" and "the container exited with 3" in failed.results[0].error
