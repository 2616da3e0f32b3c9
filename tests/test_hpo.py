"""Hyperparameter search: the space, the local Optuna search (stand-in and real trainings), the
ClearML server plan as data, and the server search driven through recording stand-ins (no ClearML
server can run on this machine)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import yaml

from reprozoo import agent, hpo, run_spec, session, tracking
from reprozoo.config import ConfigError, RunConfig
from reprozoo.train import RunResult

SPACE = "lr=1e-5:1e-4:log,batch_size=16|32,warmup=0:0.2,dropout=0:0.3"


# --- the space ------------------------------------------------------------------------------------
def test_space_parses_into_typed_dimensions() -> None:
    space = hpo.parse_space(SPACE + ",pooling=cls|mean,trainer.max_epochs=1:3,seed=1|2", RunConfig())
    by_key = {d.key: d for d in space}
    assert list(by_key) == ["optim.lr", "data.batch_size", "optim.warmup_ratio", "model.dropout", "model.pooling",
                            "trainer.max_epochs", "seed"]
    assert by_key["optim.lr"] == hpo.Dimension("lr", "optim.lr", "float", 1e-5, 1e-4, log=True)
    assert by_key["data.batch_size"].kind == "categorical" and by_key["data.batch_size"].choices == (16, 32)
    assert by_key["optim.warmup_ratio"] == hpo.Dimension("warmup", "optim.warmup_ratio", "float", 0.0, 0.2)
    assert by_key["model.pooling"].choices == ("cls", "mean")
    assert by_key["trainer.max_epochs"] == hpo.Dimension("trainer.max_epochs", "trainer.max_epochs", "int", 1, 3)
    assert [type(v) for v in (by_key["trainer.max_epochs"].low, by_key["trainer.max_epochs"].high)] == [int, int]
    # ClearML names: the hyperparameter sections our tasks record (tracking.config_sections).
    sections = tracking.config_sections(RunConfig())
    for dim in space:
        section, name = dim.clearml_name.split("/")
        assert name in sections[section], dim.clearml_name
    assert by_key["optim.lr"].clearml_name == "optim/lr" and by_key["seed"].clearml_name == "run/seed"
    # a list of --space options is the same as one comma-separated string
    assert hpo.parse_space(SPACE.split(",")) == hpo.parse_space(SPACE)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("lrr=1e-5:1e-4", "--space lrr: not a searchable setting; did you mean lr? use short names lr, batch_size, warmup, dropout"),
        ("optim.lrr=1:2", "did you mean optim.lr"),
        ("out_dir=a|b", "--space out_dir: not a searchable setting"),
        ("lr", "--space 'lr': expected name=lo:hi[:log] or name=a|b|c"),
        ("lr=", "--space lr: no values"),
        ("lr=1e-4:1e-5", "the range is empty; lo must be below hi"),
        ("lr=0:1e-4:log", "a log range needs lo > 0"),
        ("lr=1e-5:1e-4:lin", "write lo:hi or lo:hi:log"),
        ("lr=a:b", "'a' is not a number"),
        ("batch_size=8:64:log", "integer ranges are linear"),
        ("batch_size=8.5:64", "'8.5' is not a whole number"),
        ("pooling=0:1", "model.pooling is not numeric"),
        ("batch_size=16||32", "empty choice"),
        ("batch_size=16|16", "a choice is listed twice"),
        ("lr=1e-5:1e-4,optim.lr=1e-5:1e-3", "optim.lr is searched twice"),
        ("dropout=0:1", "--space dropout: 1.0 is not a valid value: model.dropout=1.0 must be in [0, 1)"),
        ("batch_size=0|16", "data.batch_size=0 must be a whole number >= 1"),
        ("warmup=0:1", "optim.warmup_ratio=1.0 must be in [0, 1)"),
        ("pooling=cls|max", "model.pooling='max' is not one of cls, mean, last"),
        ("", "--space is empty"),
    ],
)
def test_bad_space_is_one_config_error(space: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        hpo.parse_space(space, RunConfig())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_space_fails_in_the_cli_before_anything_heavy(tmp_path: Path) -> None:
    code = ("import sys\nfrom reprozoo.cli import main\nsys.argv = ['reprozoo', 'hpo', '--space', 'lrr=1:2', '--out', "
            f"{str(tmp_path / 'out')!r}]\ntry:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('heavy', sorted(m for m in ('torch', 'lightning', 'transformers', 'optuna', 'clearml') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.strip().splitlines() == [
        "error: --space lrr: not a searchable setting; did you mean lr? use short names lr, batch_size, warmup, dropout,"
        " weight_decay, layer_lr_decay, label_smoothing, max_length, max_epochs, pooling, or any section.key of RunConfig"
        " (sections data, model, optim, trainer, tracking, e.g. optim.head_lr_multiplier)"]
    assert result.stdout.splitlines()[-2:] == ["exit 2", "heavy []"] and not (tmp_path / "out").exists()


def test_cli_refuses_local_with_queue_and_a_queue_without_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY", "CLEARML_API_HOST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "none.conf"))
    both = subprocess.run([sys.executable, "-m", "reprozoo", "hpo", "--space", "lr=1e-5:1e-4", "--local", "--queue", "gpu"],
                          capture_output=True, text=True)
    assert both.returncode == 2 and both.stderr.strip() == "error: --local and --queue exclude each other: search here, or on a ClearML queue"
    served = subprocess.run([sys.executable, "-m", "reprozoo", "hpo", "--space", "lr=1e-5:1e-4", "--queue", "gpu",
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert served.returncode == 2 and served.stderr.strip().startswith("error: --queue needs a ClearML server")
    assert not (tmp_path / "o").exists()


# --- local search with a stand-in trainer --------------------------------------------------------
def fake_metrics(cfg: RunConfig) -> dict[str, Any]:
    """dev macro-F1 peaks at lr=3e-5 with batch 16; the test split says the opposite, so a search that
    peeked at it would pick another trial."""
    dev = 0.5 - abs(math.log10(cfg.optim.lr) - math.log10(3e-5)) - (0.05 if cfg.data.batch_size == 32 else 0.0)
    return {"dev": {"macro_f1": dev, "accuracy": dev + 0.1}, "test": {"macro_f1": 1.0 - dev, "accuracy": 1.0 - dev}}


def fake_train(calls: list[RunConfig], fail_when: Any = None):
    def train(cfg: RunConfig) -> RunResult:
        calls.append(cfg)
        if fail_when is not None and fail_when(cfg):
            raise RuntimeError("CUDA out of memory (stand-in)")
        Path(cfg.out_dir).mkdir(parents=True)
        return RunResult(Path(cfg.out_dir), fake_metrics(cfg), task_id=f"offline-{len(calls)}")

    return train


def base_config(tmp_path: Path) -> RunConfig:
    return RunConfig().override([f"data.data_dir={tmp_path}", "tracking.mode=off", "seed=7"])


def test_local_search_picks_the_best_dev_f1_never_test(tmp_path: Path) -> None:
    calls: list[RunConfig] = []
    base = base_config(tmp_path)
    space = hpo.parse_space(SPACE, base)
    result = hpo.search_local(base, space, 6, tmp_path / "hpo", train_fn=fake_train(calls), log=lambda _: None)
    summary = json.loads((tmp_path / "hpo" / "trials.json").read_text())
    trials = summary["trials"]
    assert len(calls) == len(trials) == 6 and all(t["state"] == "complete" for t in trials)
    dev = [t["dev_macro_f1"] for t in trials]
    assert dev == [fake_metrics(c)["dev"]["macro_f1"] for c in calls]
    best = max(range(6), key=dev.__getitem__)
    assert result["best"].number == summary["best_trial"] == best
    worst_on_dev = min(range(6), key=dev.__getitem__)  # the stand-in's test split favours this one
    assert worst_on_dev != best
    # no test figure is even recorded
    assert {k for t in trials for k in t} == {"number", "state", "params", "dev_macro_f1", "dev_accuracy", "run_dir", "task_id",
                                              "seconds", "error"}
    assert not {1.0 - d for d in dev} & {v for t in trials for v in t.values() if isinstance(v, float)}
    # every trial: the base config, the sampled values, its own run directory
    for call, trial in zip(calls, trials, strict=True):
        assert call.seed == 7 and call.tracking.mode == "off" and call.out_dir == str(tmp_path / "hpo" / f"trial-{trial['number']:03d}")
        assert {k: v for k, v in trial["params"].items()} == {"optim.lr": call.optim.lr, "data.batch_size": call.data.batch_size,
                                                               "optim.warmup_ratio": call.optim.warmup_ratio,
                                                               "model.dropout": call.model.dropout}
        assert 1e-5 <= call.optim.lr <= 1e-4 and call.data.batch_size in (16, 32) and 0 <= call.model.dropout <= 0.3
        assert trial["task_id"] == f"offline-{trial['number'] + 1}"
    # best.yaml: exactly the best trial's RunConfig, out_dir cleared
    replay = RunConfig.load(tmp_path / "hpo" / "best.yaml")
    assert replay == RunConfig.from_dict({**calls[best].to_dict(), "out_dir": None})
    rows = list(csv.DictReader((tmp_path / "hpo" / "trials.csv").open()))
    assert [float(r["dev_macro_f1"]) for r in rows] == dev and list(rows[0])[:6] == [
        "number", "state", "optim.lr", "data.batch_size", "optim.warmup_ratio", "model.dropout"]


def test_local_search_is_deterministic_in_the_seed(tmp_path: Path) -> None:
    def proposals(seed: int, name: str) -> list[dict[str, Any]]:
        base = base_config(tmp_path).override([f"seed={seed}"])
        hpo.search_local(base, hpo.parse_space(SPACE), 4, tmp_path / name, train_fn=fake_train([]), log=lambda _: None)
        return [t["params"] for t in json.loads((tmp_path / name / "trials.json").read_text())["trials"]]

    first = proposals(7, "a")
    assert proposals(7, "b") == first
    assert proposals(8, "c") != first


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    calls: list[RunConfig] = []
    base = base_config(tmp_path)
    result = hpo.search_local(base, hpo.parse_space("batch_size=16|32|64,lr=1e-5:1e-4:log"), 5, tmp_path / "hpo",
                              train_fn=fake_train(calls, fail_when=lambda c: c.data.batch_size == 64), log=lambda _: None)
    trials = json.loads((tmp_path / "hpo" / "trials.json").read_text())["trials"]
    failed = [t for t in trials if t["state"] == "failed"]
    assert len(calls) == 5 and failed, "the seeded sampler proposes batch 64 at least once in 5 trials"
    assert all(t["error"] == "RuntimeError: CUDA out of memory (stand-in)" and t["dev_macro_f1"] is None for t in failed)
    assert result["best"].state == "complete" and result["best"].params["data.batch_size"] != 64


def test_all_trials_failing_is_one_error_and_no_best(tmp_path: Path) -> None:
    with pytest.raises(hpo.SearchFailed, match=r"all 2 trials failed; the first: RuntimeError: CUDA out of memory"):
        hpo.search_local(base_config(tmp_path), hpo.parse_space("lr=1e-5:1e-4"), 2, tmp_path / "hpo",
                         train_fn=fake_train([], fail_when=lambda c: True), log=lambda _: None)
    assert (tmp_path / "hpo" / "trials.json").is_file() and not (tmp_path / "hpo" / "best.yaml").exists()


def test_preemption_stops_the_search_instead_of_skipping_a_trial(tmp_path: Path) -> None:
    from reprozoo.resume import Preempted

    calls: list[RunConfig] = []

    def train(cfg: RunConfig) -> RunResult:
        calls.append(cfg)
        if len(calls) == 2:
            raise Preempted(15)
        return fake_train([])(cfg)

    with pytest.raises(Preempted):
        hpo.search_local(base_config(tmp_path), hpo.parse_space("lr=1e-5:1e-4"), 4, tmp_path / "hpo", train_fn=train,
                         log=lambda _: None)
    trials = json.loads((tmp_path / "hpo" / "trials.json").read_text())["trials"]
    assert len(calls) == 2 and [t["state"] for t in trials] == ["complete", "failed"] and trials[1]["error"] == "interrupted"
    assert RunConfig.load(tmp_path / "hpo" / "best.yaml").optim.lr == calls[0].optim.lr  # the best so far is kept


def test_an_existing_search_is_not_overwritten(tmp_path: Path) -> None:
    base = base_config(tmp_path)
    hpo.search_local(base, hpo.parse_space("lr=1e-5:1e-4"), 1, tmp_path / "hpo", train_fn=fake_train([]), log=lambda _: None)
    with pytest.raises(ConfigError, match="already holds a search"):
        hpo.search_local(base, hpo.parse_space("lr=1e-5:1e-4"), 1, tmp_path / "hpo", train_fn=fake_train([]))


# --- local search with real trainings ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer, as a local model directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from reprozoo import zoo

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(zoo.resolve_weights(zoo.get("all-minilm-l6-v2")).path))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_three_real_trials_pick_the_best_and_best_yaml_replays(tiny_bert: Path, data_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """`reprozoo hpo` for real: 3 trainings of a tiny model on 300 SST-5 sentences;
    then `reprozoo train --config best.yaml` re-runs the best trial to the same dev macro-F1."""
    from typer.testing import CliRunner

    from reprozoo.cli import app

    out = tmp_path / "search"
    args = ["hpo", "--model", str(tiny_bert), "--space", "lr=1e-3:3e-2:log,batch_size=16|32,dropout=0:0.3", "--trials", "3",
            "--local", "--data-dir", str(data_dir), "--limit-train-samples", "300", "--limit-eval-samples", "200",
            "--max-epochs", "1", "--tracking", "off", "--set", "data.max_length=64", "--set", "data.imbalance=weighted-loss",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + capsys.readouterr().err
    summary = json.loads((out / "trials.json").read_text())
    trials = summary["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    for t in trials:  # trials.json holds what the run directories measured on dev
        metrics = json.loads((Path(t["run_dir"]) / "metrics.json").read_text())
        assert t["dev_macro_f1"] == metrics["dev"]["macro_f1"] and t["dev_accuracy"] == metrics["dev"]["accuracy"]
    dev = [t["dev_macro_f1"] for t in trials]
    # Weighted loss keeps the random tiny model from settling on one class for every lr, so the
    # trials differ and picking the best is not a formality.
    assert len(set(dev)) > 1, dev
    best = dev.index(max(dev))
    assert summary["best_trial"] == best and summary["best_dev_macro_f1"] == max(dev)
    assert not any("test" in key for t in trials for key in t)
    assert f"best: trial {best}, dev macro-F1 {max(dev):.4f}" in result.output

    best_yaml = out / "best.yaml"
    replay = RunConfig.load(best_yaml)
    trained = RunConfig.load(Path(trials[best]["run_dir"]) / "config.yaml")
    assert replay == RunConfig.from_dict({**trained.to_dict(), "out_dir": None})
    assert replay.optim.lr == trials[best]["params"]["optim.lr"] and replay.model.dropout == trials[best]["params"]["model.dropout"]
    again = CliRunner().invoke(app, ["train", "--config", str(best_yaml), "--out", str(tmp_path / "replay")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "replay" / "metrics.json").read_text())["dev"]["macro_f1"] == max(dev)


# --- server: ClearML's optimizer, as data and through stand-ins -----------------------------------
def test_server_plan_as_data() -> None:
    import optuna
    from clearml.automation import DiscreteParameterRange, LogUniformParameterRange, UniformParameterRange
    from clearml.automation.optuna import OptimizerOptuna

    base = RunConfig().override(["seed=5", "tracking.project=sst"])
    plan = hpo.server_plan(hpo.parse_space(SPACE, base), base, "gpu", 12, "tmpl", concurrency=3, time_limit_per_trial=90)
    params = plan.pop("hyper_parameters")
    assert [type(p) for p in params] == [LogUniformParameterRange, DiscreteParameterRange, UniformParameterRange, UniformParameterRange]
    assert [p.to_dict() for p in params] == [
        {"type": "LogUniformParameterRange", "name": "optim/lr", "min_value": -5.0, "max_value": -4.0, "step_size": None,
         "include_max": True, "base": 10},
        {"type": "DiscreteParameterRange", "name": "data/batch_size", "values": [16, 32]},
        {"type": "UniformParameterRange", "name": "optim/warmup_ratio", "min_value": 0.0, "max_value": 0.2, "step_size": None,
         "include_max": True},
        {"type": "UniformParameterRange", "name": "model/dropout", "min_value": 0.0, "max_value": 0.3, "step_size": None,
         "include_max": True},
    ]
    sampler, pruner = plan.pop("optuna_sampler"), plan.pop("optuna_pruner")
    assert isinstance(sampler, optuna.samplers.TPESampler) and isinstance(pruner, optuna.pruners.NopPruner)
    assert plan == {
        "base_task_id": "tmpl", "objective_metric_title": "dev", "objective_metric_series": "macro_f1",
        "objective_metric_sign": "max_global", "optimizer_class": OptimizerOptuna, "execution_queue": "gpu",
        "max_number_of_concurrent_tasks": 3, "spawn_project": "sst/hpo", "total_max_jobs": 12, "max_iteration_per_job": None,
        "min_iteration_per_job": None, "time_limit_per_job": 90, "pool_period_min": 0.5,
    }


def test_objective_is_the_scalar_our_tasks_report_for_dev() -> None:
    """Lightning logs `dev/macro_f1` (model.py); the ClearML logger splits it into title/series."""
    model_py = (Path(hpo.__file__).parent / "model.py").read_text()
    assert 'self.log(f"{stage}/macro_f1"' in model_py and '_eval_end("dev")' in model_py

    class Reporter:
        def __init__(self) -> None:
            self.scalars: list[tuple[str, str, float]] = []

        def report_scalar(self, title: str, series: str, value: float, iteration: int) -> None:
            self.scalars.append((title, series, value))

    reporter = Reporter()
    task = type("T", (), {"id": "t", "get_logger": lambda self: reporter})()
    tracking.clearml_logger(task).log_metrics({"dev/macro_f1": 0.41, "test/macro_f1": 0.9}, step=3)
    assert (hpo.OBJECTIVE_TITLE, hpo.OBJECTIVE_SERIES, 0.41) in reporter.scalars


def test_real_clearml_optimizer_accepts_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """ClearML's own HyperParameterOptimizer and OptimizerOptuna built from our kwargs, with the few
    server calls its constructor makes answered by stand-ins; its Optuna space is what we meant."""
    import clearml.automation.optimization as optimization
    from clearml import Task

    class Template:
        name, id = "template", "tmpl"

        def get_parameters(self, backwards_compatibility: bool = True) -> dict[str, str]:
            return {f"{s}/{k}": v for s, values in tracking.config_sections(RunConfig()).items() for k, v in values.items()}

    projects: list[str] = []
    monkeypatch.setattr(Task, "get_task", classmethod(lambda cls, task_id=None, **_: Template()))
    monkeypatch.setattr(Task, "current_task", classmethod(lambda cls: None))
    monkeypatch.setattr(Task, "_query_tasks", classmethod(lambda cls, **_: (_ for _ in ()).throw(RuntimeError("no server"))))
    monkeypatch.setattr(Task, "_get_default_session", classmethod(lambda cls: None))
    monkeypatch.setattr(optimization, "get_or_create_project", lambda session, project_name, description: projects.append(project_name))
    base = RunConfig()
    space = hpo.parse_space(SPACE + ",max_epochs=1:3", base)
    optimizer = optimization.HyperParameterOptimizer(**hpo.server_plan(space, base, "gpu", 3, "tmpl"))
    strategy = optimizer.optimizer
    assert type(strategy).__name__ == "OptimizerOptuna" and strategy.total_max_jobs == 3 and optimizer.execution_queue == "gpu"
    assert projects == ["reprozoo/hpo"] and optimizer.objective_metric.get_objective_metric() == ("dev", "macro_f1")
    assert optimizer.objective_metric.sign > 0 and optimizer.objective_metric.extremum  # max over every report
    converted = strategy._convert_hyper_parameters_to_optuna()
    kind, lr = converted["optim/lr"]
    assert kind == "suggest_float" and lr["log"] and lr["low"] == pytest.approx(1e-5) and lr["high"] == pytest.approx(1e-4)
    assert converted["data/batch_size"] == ("suggest_categorical", {"choices": [16, 32]})
    assert converted["optim/warmup_ratio"] == ("suggest_float", {"low": 0.0, "high": 0.2, "log": False, "step": None})
    assert converted["trainer/max_epochs"] == ("suggest_int", {"low": 1, "high": 3, "log": False, "step": 1})


def test_the_overrides_a_clone_gets_are_what_its_agent_trains() -> None:
    """ClearML writes str(value) into the clone's sections; an agent's train merges them (tracking.remote_config)."""
    base = RunConfig()
    overrides = {"optim/lr": str(1e-05), "data/batch_size": str(16), "model/dropout": str(0.25), "trainer/max_epochs": "2"}
    sections: dict[str, dict[str, str]] = {}
    for name, value in overrides.items():
        section, key = name.split("/")
        sections.setdefault(section, {})[key] = value
    merged = run_spec.merge_edits(base, base, tracking.config_from_sections(sections))
    assert (merged.optim.lr, merged.data.batch_size, merged.model.dropout, merged.trainer.max_epochs) == (1e-05, 16, 0.25, 2)


class RecordingTask:
    """Answers the Task calls server mode makes, and remembers them."""

    calls: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, task_id: str) -> None:
        self.id = task_id

    @classmethod
    def set_offline(cls, offline: bool) -> None:
        cls.calls.append(("set_offline", offline))

    @classmethod
    def create(cls, **kwargs: Any) -> RecordingTask:
        cls.calls.append(("create", kwargs))
        return cls("template-1")

    @classmethod
    def init(cls, **kwargs: Any) -> RecordingTask:
        cls.calls.append(("init", kwargs))
        return cls("optimizer-1")

    @classmethod
    def get_task(cls, task_id: str) -> Any:
        """A trial's task: its last scalars, as the server keeps them (title → series → last/min/max)."""
        def scalar(value: float, max_value: float) -> dict[str, float]:
            return {"last": value, "min": value, "max": max_value}

        scalars = {"t-2": {"dev": {"macro_f1": scalar(0.45, 0.47)}, "test": {"macro_f1": scalar(0.99, 0.99)},
                           "Summary": {"dev_macro_f1": scalar(0.47, 0.47), "dev_accuracy": scalar(0.51, 0.51)}},
                   "t-1": {"dev": {"macro_f1": scalar(0.30, 0.31), "accuracy": scalar(0.4, 0.42)}},
                   "t-3": {}}[task_id]
        return type("TrialTask", (), {"get_last_scalar_metrics": lambda self: scalars})()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((f"{self.id}.{name}", {"args": args, **kwargs}))


class RecordingOptimizer:
    instances: ClassVar[list[RecordingOptimizer]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.calls = kwargs, []
        self.instances.append(self)

    def set_report_period(self, report_period_minutes: float) -> None:
        self.report_period_minutes = report_period_minutes

    def start(self) -> bool:
        self.calls.append("start")
        return True

    def wait(self) -> bool:
        self.calls.append("wait")
        return True

    def stop(self) -> None:
        self.calls.append("stop")

    def get_top_experiments_details(self, top_k: int, all_metrics: bool = False, **_: Any) -> list[dict[str, Any]]:
        self.calls.append(("details", top_k, all_metrics))

        def metric(title: str, series: str, value: float, max_value: float) -> dict[str, Any]:
            return {f"{title}/{series}": {"metric": title, "variant": series, "value": value, "max_value": max_value}}

        # clearml 2.1.12 raises on all_metrics=True; without it the details carry the objective only.
        assert not all_metrics
        return [  # ClearML's order: best first
            {"task_id": "t-2", "hyper_parameters": {"optim/lr": "3e-05", "data/batch_size": "16", "General/x": "1"},
             "metrics": metric("dev", "macro_f1", 0.45, 0.47)},
            {"task_id": "t-1", "hyper_parameters": {"optim/lr": "1e-05", "data/batch_size": "32"},
             "metrics": metric("dev", "macro_f1", 0.30, 0.31)},
            {"task_id": "t-3", "hyper_parameters": {"optim/lr": "9e-05", "data/batch_size": "32"}, "metrics": {}},
        ]


def test_server_search_through_recording_stand_ins(tmp_path: Path) -> None:
    RecordingTask.calls, RecordingOptimizer.instances = [], []
    base = RunConfig().override(["tracking.project=sst", "seed=3", "out_dir=runs/x", "trainer.max_epochs=2"])
    space = hpo.parse_space("lr=1e-5:1e-4:log,batch_size=16|32", base)
    replayed = RunConfig().override(["optim.lr=3e-5", "data.batch_size=16", "data.dataset_id=ds-1"])
    records: list[str] = []
    load = lambda task_id: (records.append(task_id), SimpleNamespace(config=replayed, model_revision="none", dataset_id="ds-1"))[1]  # noqa: E731
    api = hpo.ClearMLApi(RecordingTask, RecordingOptimizer, load)
    result = hpo.search_server(base, space, 3, "gpu", tmp_path / "hpo", concurrency=2, image="reg/reprozoo@sha256:" + "a" * 64,
                               api=api, log=lambda _: None)

    names = [name for name, _ in RecordingTask.calls]
    assert names[:2] == ["set_offline", "create"] and ("set_offline", False) in RecordingTask.calls
    create = dict(RecordingTask.calls)["create"]
    assert create["project_name"] == "sst" and create["task_type"] == "training"
    template = {name: kw for name, kw in RecordingTask.calls if name.startswith("template-1.")}
    recorded = [kw for name, kw in RecordingTask.calls if name == "template-1.set_configuration_object"]
    template_cfg = RunConfig.from_dict(yaml.safe_load(recorded[0]["config_text"]))
    assert [r["args"][0] for r in recorded] == [session.CONFIG_OBJECT, session.BASELINE_OBJECT]
    assert template_cfg == RunConfig.from_dict({**base.to_dict(), "out_dir": None})  # clones pick their own run dir
    sections = template["template-1.set_parameters_as_dict"]["args"][0]
    assert sections["optim"]["lr"] == "null" and sections["trainer"]["max_epochs"] == "2"
    assert template["template-1.set_script"]["entry_point"] == "-m reprozoo train"
    docker = template["template-1.set_base_docker"]
    assert docker["docker_image"].endswith("@sha256:" + "a" * 64) and docker["docker_arguments"] == agent.docker_arguments()
    init = dict(RecordingTask.calls)["init"]
    assert init["task_type"] == "optimizer" and init["project_name"] == "sst"

    (optimizer,) = RecordingOptimizer.instances
    expected = hpo.server_plan(space, base, "gpu", 3, "template-1", concurrency=2)
    assert hpo.describe_plan(optimizer.kwargs, 3) == hpo.describe_plan(expected, 3)
    assert optimizer.calls == ["start", "wait", "stop", ("details", 3, False)]
    assert "optimizer-1.close" in names[-1:]

    summary = json.loads((tmp_path / "hpo" / "trials.json").read_text())
    assert summary["mode"] == "server" and summary["queue"] == "gpu" and summary["base_task"] == "template-1"
    assert [(t["task_id"], t["state"], t["dev_macro_f1"], t["dev_accuracy"]) for t in summary["trials"]] == [
        ("t-2", "complete", 0.47, 0.51), ("t-1", "complete", 0.31, 0.4), ("t-3", "failed", None, None)]
    assert summary["trials"][0]["params"] == {"optim.lr": "3e-05", "data.batch_size": "16"}
    assert "0.99" not in json.dumps(summary["trials"])  # the test split's figure is not carried over
    assert records == ["t-2"] and result["best"].task_id == "t-2"
    assert RunConfig.load(tmp_path / "hpo" / "best.yaml") == replayed


def test_server_search_with_a_given_template_creates_none(tmp_path: Path) -> None:
    RecordingTask.calls, RecordingOptimizer.instances = [], []
    api = hpo.ClearMLApi(RecordingTask, RecordingOptimizer, lambda task_id: SimpleNamespace(config=RunConfig(), model_revision="none", dataset_id=None))
    hpo.search_server(RunConfig(), hpo.parse_space("lr=1e-5:1e-4"), 2, "gpu", tmp_path / "hpo", base_task_id="given-7",
                      api=api, log=lambda _: None)
    assert "create" not in [name for name, _ in RecordingTask.calls]
    assert RecordingOptimizer.instances[0].kwargs["base_task_id"] == "given-7"


def test_dry_run_prints_the_server_plan() -> None:
    result = subprocess.run([sys.executable, "-m", "reprozoo", "hpo", "--space", SPACE, "--queue", "gpu", "--trials", "8",
                             "--seed", "11", "--dry-run"], capture_output=True, text=True, check=True)
    plan = json.loads(result.stdout[result.stdout.index("\n{\n"):])
    assert plan["execution_queue"] == "gpu" and plan["total_max_jobs"] == 8 and plan["optimizer_class"] == "OptimizerOptuna"
    assert plan["optuna_sampler"] == "TPESampler(seed=11)" and plan["hyper_parameters"][0]["name"] == "optim/lr"


@pytest.mark.slow
def test_a_search_on_two_cpu_processes_runs_each_trial_once(tiny_bert: Path, data_dir: Path, tmp_path: Path) -> None:
    """`hpo --local` with 2 devices: rank 1 of each trial trains that trial (started as `train
    --config`), never a search of its own, and the next trial starts its own rank 1."""
    import os
    import subprocess

    out = tmp_path / "search"
    done = subprocess.run([sys.executable, "-m", "reprozoo", "hpo", "--model", str(tiny_bert), "--space", "lr=1e-3:3e-2:log",
                           "--trials", "2", "--local", "--data-dir", str(data_dir), "--limit-train-samples", "64",
                           "--limit-eval-samples", "32", "--max-epochs", "1", "--tracking", "off", "--set", "data.max_length=32",
                           "--set", "trainer.accelerator=cpu", "--set", "trainer.devices=2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("2/2 trials finished") == 1, done.stdout  # one search, not one per rank
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 2 and sorted(p.name for p in out.glob("trial-*")) == ["trial-000", "trial-001"]
    for trial in trials:
        metrics = json.loads((Path(trial["run_dir"]) / "metrics.json").read_text())
        assert trial["dev_macro_f1"] == metrics["dev"]["macro_f1"] and sum(map(sum, metrics["dev"]["confusion_matrix"])) == 32
        assert metrics["train"]["steps"] == 1  # 64 examples, 2 batches of 32: one on each rank
