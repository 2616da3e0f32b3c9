"""Tracking without training: modes, the close() hang guard, UI edits coming back on an agent."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import free_port
from reprozoo import run_spec, session, tracking
from reprozoo.config import ConfigError, RunConfig


def test_auto_is_offline_without_credentials(isolated_clearml: Path) -> None:
    assert not session.server_configured()
    assert session.resolve_mode("auto") == "offline"
    assert session.resolve_mode("off") == "off"


def test_unreachable_server_falls_back_to_offline_in_bounded_time(
        isolated_clearml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CLEARML_API_HOST", url)
    monkeypatch.setenv("CLEARML_API_ACCESS_KEY", "AKEYTHATDOESNOTEXIST")
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", "asecretthatdoesnotexist")
    assert session.server_configured()
    started = time.monotonic()
    assert session.resolve_mode("auto") == "offline"
    assert session.resolve_mode("server") == "offline"
    assert time.monotonic() - started < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(f"ClearML server {url} is unreachable; recording this run offline" in line for line in lines)


def test_close_cannot_hang(isolated_clearml: Path, tmp_path: Path) -> None:
    """An offline task with scalars, plots, an artifact; close() must return within seconds.

    A fresh interpreter (as in a real run) so a hang is caught by the timeout, not by pytest."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(session.__file__).resolve().parents[1])!r})
        from reprozoo.session import configure_clearml
        configure_clearml()
        from clearml import Task
        Task.set_offline(True)
        task = Task.init(project_name="reprozoo-tests", task_name="close", reuse_last_task_id=False,
                         auto_connect_frameworks=False, auto_resource_monitoring=False, auto_connect_arg_parser=False)
        log = task.get_logger()
        for i in range(200):
            log.report_scalar("train", "loss", value=1.0 / (i + 1), iteration=i)
        log.report_confusion_matrix("confusion", "test", matrix=[[1, 2], [3, 4]], iteration=0)
        task.upload_artifact("note", artifact_object={{"a": 1}}, wait_on_upload=True)
        opened = time.monotonic() - began
        started = time.monotonic()
        task.close()
        print("seconds", opened, time.monotonic() - started)
    """).replace("import sys, time", "import sys, time\nbegan = time.monotonic()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    opened, closed = map(float, result.stdout.split("seconds")[-1].split())
    # ClearML's subprocess reporter can hang close() for minutes. Bound against this very process's own start
    # and reports, which a loaded machine slows alike, not against a wall-clock figure.
    assert closed < 5 * opened, f"task.close() took {closed:.1f} s; importing, opening and reporting took {opened:.1f} s"
    assert len(list((isolated_clearml / "clearml" / "offline").glob("offline-*.zip"))) == 1


def test_config_sections_round_trip() -> None:
    cfg = RunConfig().override(["optim.lr=3e-5", "data.limit_train_samples=640", "seed=7", "trainer.max_time=00:00:10:00"])
    sections = tracking.config_sections(cfg)
    assert sections["optim"]["lr"] == "3e-05" and sections["data"]["max_length"] == "null" and sections["run"]["seed"] == "7"
    assert RunConfig.from_dict(tracking.config_from_sections(sections)) == cfg


def test_merge_edits_takes_each_edit_against_the_baseline() -> None:
    base = RunConfig().override(["optim.lr=1e-4", "seed=1"])
    object_edit = base.override(["seed=2"])  # edited in the RunConfig configuration object
    sections = tracking.config_sections(base)
    sections["optim"]["lr"] = "5e-05"  # edited in the hyperparameter section
    merged = run_spec.merge_edits(base, object_edit, tracking.config_from_sections(sections))
    assert merged.seed == 2 and merged.optim.lr == 5e-5
    assert merged.override(["seed=1", "optim.lr=1e-4"]) == base  # nothing else moved
    # Both edited: the hyperparameter section wins.
    sections["run"]["seed"] = "3"
    assert run_spec.merge_edits(base, object_edit, tracking.config_from_sections(sections)).seed == 3


@pytest.mark.parametrize(("section", "key", "value", "says"), [
    ("optim", "learning_rate", "5e-5", "optim/learning_rate: not a setting of the 'optim' section"),
    ("run", "sed", "3", "run/sed: not a setting of the 'run' section"),
    ("data", "batch_size", "[32", "data/batch_size = '[32' does not parse"),
])
def test_a_ui_edit_that_is_no_setting_or_does_not_parse_fails_naming_it(section: str, key: str, value: str, says: str) -> None:
    """Issue 17, case 9: such an edit fails naming it; skipped, the agent would run (and record) the
    unedited value while the UI shows the edit."""
    base = RunConfig()
    sections = tracking.config_sections(base)
    sections[section][key] = value
    with pytest.raises(ConfigError, match="^task hyperparameter ") as raised:
        run_spec.merge_edits(base, base, tracking.config_from_sections(sections))
    message = str(raised.value)
    assert says in message and "\n" not in message and "enqueue it again" in message


def test_agent_run_of_an_edited_clone_gets_the_edited_config(
        isolated_clearml: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path) -> None:
    """A real (offline) task recorded by reprozoo, then edited as the UI would; with ClearML reporting
    that an agent runs the task (running_locally() False), open_task hands back the edited RunConfig."""
    from clearml import Task

    from reprozoo.train import plan_run
    from reprozoo.zoo import resolve_weights

    cfg = RunConfig().override([f"data.data_dir={data_dir}", "tracking.mode=offline", f"out_dir={tmp_path / 'run'}",
                                "optim.lr=1e-4", "tracking.project=reprozoo-tests"])
    digest = "sha256:" + "0123456789abcdef" * 4
    monkeypatch.setenv("REPROZOO_IMAGE", "ghcr.io/example/reprozoo:cpu-0123456789ab")
    monkeypatch.setenv("REPROZOO_IMAGE_DIGEST", digest)
    plan = plan_run(cfg)
    env_before = session.clearml_env()
    tracker = tracking.open_task(cfg, "clone-edit", plan)
    tracker.record(cfg, plan, resolve_weights(plan.entry))
    task = tracker.task
    # The image the container layer handed in is pinned by digest for a ClearML agent (docker mode);
    # offline ClearML stores it in execution.docker_cmd, a server >= API 2.13 in task.container.
    assert task.data.execution.docker_cmd.startswith(f"ghcr.io/example/reprozoo:cpu-0123456789ab@{digest} --ipc=host")
    assert "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1" in task.data.execution.docker_cmd
    assert tracker.provenance["environment"]["image_digest"] == digest
    # The UI edit: seed in the config object, lr in the "optim" hyperparameter section.
    task.set_configuration_object(session.CONFIG_OBJECT, config_text=cfg.override(["seed=5"]).to_yaml(), config_type="yaml")
    task.set_parameter("optim/lr", "2e-05")
    monkeypatch.setattr(Task, "running_locally", staticmethod(lambda: False))
    edited = tracking.remote_config(task, RunConfig())
    assert edited.seed == 5 and edited.optim.lr == 2e-5 and edited.data.data_dir == str(data_dir)
    monkeypatch.setattr(Task, "init", classmethod(lambda cls, **kwargs: task))
    assert tracking.open_task(RunConfig(), "ignored", plan).config == edited
    # Issue 33: an edit nothing reads is refused in one line, not silently ignored: the read-only
    # baseline, the read-only Provenance, a hyperparameter section that is not RunConfig's.
    for name in (session.BASELINE_OBJECT, session.PROVENANCE_OBJECT):
        recorded = task.get_configuration_object(name)
        tampered = recorded.replace("0.0001", "0.001", 1)  # the baseline's YAML, the run document's JSON
        assert tampered != recorded
        task.set_configuration_object(name, config_text=tampered, config_type="yaml")
        with pytest.raises(ConfigError, match=f"the read-only configuration object '{re.escape(name)}' was edited") as raised:
            tracking.remote_config(task, RunConfig())
        assert "\n" not in str(raised.value)
        task.set_configuration_object(name, config_text=recorded, config_type="yaml")
    assert tracking.remote_config(task, RunConfig()) == edited
    commit = task.get_parameters_as_dict()["properties"]["commit"]
    task.set_parameter("properties/commit", "0" * 40)
    with pytest.raises(ConfigError, match="the User Properties were edited"):
        tracking.remote_config(task, RunConfig())
    task.set_parameter("properties/commit", commit)
    assert tracking.remote_config(task, RunConfig()) == edited
    task.set_parameter("resolved/batch_size", "16")
    with pytest.raises(ConfigError, match="section 'resolved' is not RunConfig's"):
        tracking.remote_config(task, RunConfig())
    monkeypatch.undo()
    task.close()
    session.restore_clearml_env(env_before)  # later tests start `reprozoo` subprocesses


def test_an_image_refuses_a_task_recorded_from_other_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A docker-mode agent runs the image's code: a task whose record names another commit, or
    uncommitted changes, is refused in one line; the image's own commit runs."""
    from reprozoo.agent_task import refuse_other_code
    from reprozoo.config import ConfigError

    monkeypatch.setenv("REPROZOO_REVISION", "a" * 40)
    refuse_other_code("t1", "a" * 40, "")  # an image-recorded task (or a clean checkout at the image's commit)
    refuse_other_code("t1", "", "")  # a task that names no code: the command line's
    with pytest.raises(ConfigError, match=r"task t1 was recorded from commit bbbbbbbbbbbb, but this image holds the code of commit aaaaaaaaaaaa"):
        refuse_other_code("t1", "b" * 40, "")
    with pytest.raises(ConfigError, match="with uncommitted changes.*venv-mode agent"):
        refuse_other_code("t1", "a" * 40, "--- a/x\n+++ b/x\n")


def test_the_evaluations_are_plotted_with_axis_titles_and_per_class_tables() -> None:
    """Issue 33: what PLOTS shows of a run's scores, as ClearML's Logger receives it."""
    from reprozoo import task_view
    from reprozoo.metrics import summarize

    calls: list[tuple[str, tuple, dict]] = []

    class Reporter:
        def __getattr__(self, name: str):  # records every report_* call
            return lambda *args, **kwargs: calls.append((name, args, kwargs))

    scores = summarize([[3, 1, 0, 0, 0], [1, 5, 1, 0, 0], [0, 2, 9, 1, 0], [0, 0, 1, 6, 2], [0, 0, 0, 1, 4]])
    task_view.report_evaluations(Reporter(), {"dev": scores, "test": scores}, step=12)
    matrices = [kw for name, _, kw in calls if name == "report_confusion_matrix"]
    assert [kw["xaxis"] for kw in matrices] == ["predicted", "predicted"] and {kw["yaxis"] for kw in matrices} == {"true"}
    assert all(kw["xlabels"][4] == "very positive" and kw["extra_layout"]["yaxis"]["automargin"] for kw in matrices)
    tables = [kw["table_plot"] for name, _, kw in calls if name == "report_table"]
    assert len(tables) == 2 and tables[0][0] == ["class", "precision", "recall", "F1", "support"]
    assert tables[0][2] == ["negative", "0.6250", "0.7143", "0.6667", "7"]
    assert {name for name, _, _ in calls} == {"report_confusion_matrix", "report_table"}  # no second dev curve
    assert all(kw["iteration"] == 12 for _, _, kw in calls)
