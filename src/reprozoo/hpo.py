"""Hyperparameter search: a space of RunConfig settings, N trials, the best by dev macro-F1.

    --space "lr=1e-5:1e-4:log,batch_size=16|32,warmup=0:0.2,dropout=0:0.3"
        → [Dimension(optim.lr, float, log), Dimension(data.batch_size, categorical), …]   (pure, no torch)

Local (`--local`, the default): Optuna in this process; each trial is the base RunConfig with the
sampled values applied, trained by `reprozoo.train.train` (a normal run directory and task), and
scored by `objective()`: the dev split's macro-F1. Server (`--queue Q`): ClearML's
`HyperParameterOptimizer` with its Optuna backend clones a template training task, overrides its
hyperparameter sections (`optim/lr`, …) and enqueues the clones on Q for agents to run.

The test split is never read for selection: `objective()` looks at `metrics["dev"]` only, the
trials table records dev figures only, and on a server the objective is the `dev/macro_f1` scalar.
Both modes write into the output folder:

    best.yaml     the best trial's whole RunConfig (out_dir cleared): `reprozoo train --config best.yaml`
    trials.json   every trial: state, params, dev macro-F1, dev accuracy, run dir, task id, error
    trials.csv    the same, one row per trial
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprozoo import run_spec
from reprozoo.config import _SECTIONS, ConfigError, RunConfig, _annotation, _parse_value, apply
from reprozoo.errors import UserError
from reprozoo.train import RunResult, train

# Short names for the settings people search most; any `section.key` of RunConfig works as well.
SHORT_NAMES = {
    "lr": "optim.lr",
    "batch_size": "data.batch_size",
    "warmup": "optim.warmup_ratio",
    "dropout": "model.dropout",
    "weight_decay": "optim.weight_decay",
    "layer_lr_decay": "optim.layer_lr_decay",
    "label_smoothing": "optim.label_smoothing",
    "max_length": "data.max_length",
    "max_epochs": "trainer.max_epochs",
    "pooling": "model.pooling",
}
NOT_SEARCHABLE = {"out_dir"}  # every trial gets its own run directory

# How our training tasks report dev macro-F1 to ClearML: Lightning logs `dev/macro_f1` (model.py) and
# tracking.clearml_logger splits the key into title "dev", series "macro_f1". `max_global` ranks a task
# by the largest value it reported, i.e. the dev macro-F1 of the best checkpoint, which is what
# metrics["dev"]["macro_f1"] holds (train.py re-validates that checkpoint). Not the "Summary" single
# values: they are reported at iteration -2**31 and Optuna's trial.report refuses negative steps.
OBJECTIVE_TITLE = "dev"
OBJECTIVE_SERIES = "macro_f1"
OBJECTIVE_SIGN = "max_global"


class SearchFailed(UserError, RuntimeError):
    """No trial finished: there is no best configuration to write."""


# --- the space ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float/int range (`lo:hi`, optionally `:log`) or a list of choices."""

    name: str  # as written in --space (lr, optim.lr, …)
    key: str  # the RunConfig setting, section.key (or a top-level field such as seed)
    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def clearml_name(self) -> str:
        """The task's hyperparameter as ClearML names it: `section/name` (tracking.config_sections)."""
        from reprozoo.session import RUN_SECTION

        section, _, leaf = self.key.rpartition(".")
        return f"{section or RUN_SECTION}/{leaf}"

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.key} in [{self.low}, {self.high}]{' log' if self.log else ''} ({self.kind})"


def _valid_keys() -> str:
    return (f"short names {', '.join(SHORT_NAMES)}, or any section.key of RunConfig "
            f"(sections {', '.join(_SECTIONS)}, e.g. optim.head_lr_multiplier)")


def _resolve_key(name: str) -> tuple[str, str]:
    """(RunConfig key, field annotation) for a name in --space; ConfigError naming the valid keys."""
    key = SHORT_NAMES.get(name, name)
    *parents, leaf = key.split(".")
    top = {f.name for f in dataclasses.fields(RunConfig)} - set(_SECTIONS)
    known = (len(parents) == 1 and parents[0] in _SECTIONS and leaf in _SECTIONS[parents[0]].__dataclass_fields__) or (
        not parents and leaf in top)
    if not known or key in NOT_SEARCHABLE:
        options = [*SHORT_NAMES, *(f"{s}.{f}" for s, c in _SECTIONS.items() for f in c.__dataclass_fields__)]
        close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"--space {name}: not a searchable setting; {hint}use {_valid_keys()}")
    return key, _annotation(parents, leaf)


def _number(text: str, name: str, whole: bool) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--space {name}: {text!r} is not a number; write lo:hi[:log], e.g. lr=1e-5:1e-4:log") from None
    if whole:
        if not value.is_integer():
            raise ConfigError(f"--space {name}: {text!r} is not a whole number ({name} is an integer setting)")
        return int(value)
    if not math.isfinite(value):
        raise ConfigError(f"--space {name}: {text!r} is not a finite number")
    return value


def parse_dimension(name: str, spec: str) -> Dimension:
    key, annotation = _resolve_key(name.strip())
    spec = spec.strip()
    if not spec:
        raise ConfigError(f"--space {name}: no values; write {name}=lo:hi[:log] or {name}=a|b|c")
    if "|" in spec or ":" not in spec:
        options = [part.strip() for part in spec.split("|")]
        if any(not part for part in options):
            raise ConfigError(f"--space {name}={spec}: empty choice; write {name}=a|b|c")
        choices = tuple(_parse_value(part, annotation) for part in options)
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"--space {name}={spec}: a choice is listed twice")
        return Dimension(name, key, "categorical", choices=choices)
    parts = spec.split(":")
    log = len(parts) == 3 and parts[2].strip() == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise ConfigError(f"--space {name}={spec}: write lo:hi or lo:hi:log (a range) or a|b|c (choices)")
    if annotation.startswith("float"):
        kind = "float"
    elif annotation.startswith("int"):
        kind = "int"
    else:
        raise ConfigError(f"--space {name}={spec}: {key} is not numeric ({annotation.split()[0]}); list choices as a|b|c")
    low, high = (_number(p.strip(), name, kind == "int") for p in parts[:2])
    if not low < high:
        raise ConfigError(f"--space {name}={spec}: the range is empty; lo must be below hi")
    if log and low <= 0:
        raise ConfigError(f"--space {name}={spec}: a log range needs lo > 0")
    if log and kind == "int":
        raise ConfigError(f"--space {name}={spec}: integer ranges are linear (ClearML has no log-int range);"
                          f" list the values instead, e.g. {name}=16|32|64")
    return Dimension(name, key, kind, low, high, log)


def parse_space(text: str | list[str], base: RunConfig | None = None) -> list[Dimension]:
    """`name=lo:hi[:log]` (float or int range), `name=a|b|c` (choices), comma-separated.

    With `base`, every range end and every choice is applied to it and validated, so a value the
    config would refuse (dropout 1.0, batch size 0, …) fails here, before any model is loaded."""
    items = [item for chunk in ([text] if isinstance(text, str) else text) for item in chunk.split(",") if item.strip()]
    if not items:
        raise ConfigError("--space is empty; e.g. --space 'lr=1e-5:1e-4:log,batch_size=16|32'")
    space: list[Dimension] = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"--space {item.strip()!r}: expected name=lo:hi[:log] or name=a|b|c; {_valid_keys()}")
        dim = parse_dimension(name, spec)
        if any(d.key == dim.key for d in space):
            raise ConfigError(f"--space {name.strip()}: {dim.key} is searched twice")
        space.append(dim)
    if base is not None:
        for dim in space:
            for value in dim.choices or (dim.low, dim.high):
                try:
                    apply(base, {dim.key: value}).validate()
                except ConfigError as err:
                    raise ConfigError(f"--space {dim.name}: {value!r} is not a valid value: {err}") from None
    return space


# --- the objective --------------------------------------------------------------------------------
def objective(metrics: dict[str, Any]) -> float:
    """What a trial is ranked by: dev macro-F1. The test split is never looked at for selection."""
    return float(metrics["dev"]["macro_f1"])


# --- results --------------------------------------------------------------------------------------
@dataclass
class Trial:
    number: int
    state: str  # "complete" | "failed"
    params: dict[str, Any]
    dev_macro_f1: float | None = None
    dev_accuracy: float | None = None
    run_dir: str | None = None
    task_id: str | None = None
    seconds: float | None = None
    error: str | None = None

    def row(self, keys: list[str]) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, **{k: self.params.get(k) for k in keys},
                "dev_macro_f1": self.dev_macro_f1, "dev_accuracy": self.dev_accuracy, "run_dir": self.run_dir,
                "task_id": self.task_id, "seconds": self.seconds, "error": self.error}


def best_trial(trials: list[Trial]) -> Trial | None:
    """The completed trial with the highest dev macro-F1 (the earliest one on a tie)."""
    done = [t for t in trials if t.state == "complete" and t.dev_macro_f1 is not None]
    return max(done, key=lambda t: t.dev_macro_f1, default=None)  # max keeps the first of equals


def write_results(out: Path, space: list[Dimension], trials: list[Trial], best_config: RunConfig | None,
                  meta: dict[str, Any]) -> None:
    """trials.json, trials.csv and (when a trial finished) best.yaml; rewritten after every trial."""
    out.mkdir(parents=True, exist_ok=True)
    keys = [d.key for d in space]
    best = best_trial(trials)
    summary = {**meta, "objective": "dev macro_f1 (max); the test split is not used for selection",
               "space": [d.describe() for d in space], "best_trial": best.number if best else None,
               "best_dev_macro_f1": best.dev_macro_f1 if best else None,
               "trials": [dataclasses.asdict(t) for t in trials]}
    (out / "trials.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with (out / "trials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(Trial(0, "", {}).row(keys)))
        writer.writeheader()
        writer.writerows(t.row(keys) for t in trials)
    if best_config is not None and best is not None:
        replay = apply(best_config, {"out_dir": None})
        header = (f"# best of {len(trials)} trials by dev macro-F1 = {best.dev_macro_f1:.4f} (trial {best.number}"
                  f"{', task ' + best.task_id if best.task_id else ''}); replay: reprozoo train --config THIS_FILE\n")
        (out / "best.yaml").write_text(header + replay.to_yaml())


def default_out(base: RunConfig) -> Path:
    from datetime import datetime, timezone

    name = Path(base.model.name).name if Path(base.model.name).is_dir() else base.model.name.replace("/", "_")
    return Path("hpo") / f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def _claim_out(out: Path) -> None:
    if (out / "trials.json").exists():
        raise ConfigError(f"{out} already holds a search (trials.json); choose another --out")
    out.mkdir(parents=True, exist_ok=True)


# --- local: Optuna in this process ----------------------------------------------------------------
def search_local(base: RunConfig, space: list[Dimension], n_trials: int, out: Path,
                 train_fn: Callable[[RunConfig], RunResult] = train,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run `n_trials` trainings chosen by Optuna's TPE sampler (seeded with base.seed: the same
    command proposes the same trials). A trial that raises is recorded as failed; the search goes on."""
    if n_trials < 1:
        raise ConfigError(f"--trials {n_trials}: run at least one trial")
    base = base.validate()
    _claim_out(out)
    import optuna

    from reprozoo.errors import Preempted

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials: list[Trial] = []
    configs: dict[int, RunConfig] = {}
    meta = {"mode": "local", "model": base.model.name, "n_trials": n_trials, "sampler": f"optuna TPESampler(seed={base.seed})",
            "optuna": optuna.__version__}

    def run_trial(trial: optuna.Trial) -> float:
        params = {}
        for dim in space:
            if dim.kind == "categorical":
                params[dim.key] = trial.suggest_categorical(dim.key, list(dim.choices))
            elif dim.kind == "int":
                params[dim.key] = trial.suggest_int(dim.key, int(dim.low), int(dim.high))
            else:
                params[dim.key] = trial.suggest_float(dim.key, float(dim.low), float(dim.high), log=dim.log)
        record = Trial(trial.number, "failed", params)
        trials.append(record)
        shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        log(f"trial {trial.number} ({trial.number + 1}/{n_trials}): {shown}")
        started = time.monotonic()
        try:
            cfg = apply(base, params).validate()
            cfg.out_dir = str(out / f"trial-{trial.number:03d}")
            record.run_dir = cfg.out_dir
            result = train_fn(cfg)
        except (Preempted, KeyboardInterrupt):
            record.error = "interrupted"
            write_results(out, space, trials, _best_config(trials, configs), meta)
            raise
        except Exception as err:  # the trial failed; the search goes on
            record.error = f"{type(err).__name__}: {str(err).strip()}"[:500]
            record.seconds = round(time.monotonic() - started, 3)
            log(f"trial {trial.number} failed: {record.error.splitlines()[0]}")
            write_results(out, space, trials, _best_config(trials, configs), meta)
            # NaN marks the trial FAIL in Optuna, which goes on with the next one. (Not `catch=`:
            # Preempted is an Exception too, and a preempted search must stop, not go on.)
            return math.nan
        record.state = "complete"
        record.seconds = round(time.monotonic() - started, 3)
        record.dev_macro_f1 = objective(result.metrics)
        record.dev_accuracy = float(result.metrics["dev"]["accuracy"])
        record.run_dir, record.task_id = str(result.run_dir), result.task_id
        configs[trial.number] = cfg
        log(f"trial {trial.number}: dev macro-F1 {record.dev_macro_f1:.4f} accuracy {record.dev_accuracy:.4f}  ({record.run_dir})")
        write_results(out, space, trials, _best_config(trials, configs), meta)
        return record.dev_macro_f1

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=base.seed),
                                study_name=out.name)
    study.optimize(run_trial, n_trials=n_trials)
    best = best_trial(trials)
    write_results(out, space, trials, _best_config(trials, configs), meta)
    if best is None:
        first = next((t.error for t in trials if t.error), "no trial ran")
        raise SearchFailed(f"all {len(trials)} trials failed; the first: {first.splitlines()[0]} (details in {out / 'trials.json'})")
    return {"out": str(out), "best": best, "trials": trials, "best_yaml": str(out / "best.yaml")}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What `reprozoo hpo` prints once a search (local or on a queue) is over."""
    best, trials = result["best"], result["trials"]
    done = sum(t.state == "complete" for t in trials)
    return [f"{done}/{len(trials)} trials finished; best: trial {best.number}, dev macro-F1 {best.dev_macro_f1:.4f}"
            f" accuracy {best.dev_accuracy:.4f}",
            f"best config: {result['best_yaml']}  (reprozoo train --config {result['best_yaml']})",
            f"all trials: {Path(result['out']) / 'trials.csv'}"]


def _best_config(trials: list[Trial], configs: dict[int, RunConfig]) -> RunConfig | None:
    best = best_trial(trials)
    return configs.get(best.number) if best else None


# --- server: ClearML HyperParameterOptimizer + OptimizerOptuna ------------------------------------
def clearml_parameters(space: list[Dimension]) -> list[Any]:
    """The space as ClearML parameter ranges, named as our tasks' hyperparameter sections name them."""
    from clearml.automation import (
        DiscreteParameterRange,
        LogUniformParameterRange,
        UniformIntegerParameterRange,
        UniformParameterRange,
    )

    params: list[Any] = []
    for dim in space:
        if dim.kind == "categorical":
            params.append(DiscreteParameterRange(dim.clearml_name, values=list(dim.choices)))
        elif dim.kind == "int":
            params.append(UniformIntegerParameterRange(dim.clearml_name, min_value=int(dim.low), max_value=int(dim.high),
                                                       step_size=1, include_max_value=True))
        elif dim.log:
            # ClearML's log range takes exponents: base**min_value .. base**max_value (OptimizerOptuna
            # turns it back into suggest_float(low=10**min, high=10**max, log=True)).
            params.append(LogUniformParameterRange(dim.clearml_name, min_value=math.log10(dim.low),
                                                   max_value=math.log10(dim.high), base=10))
        else:
            # No step_size: with one, OptimizerOptuna would call Optuna's removed suggest_discrete_uniform.
            params.append(UniformParameterRange(dim.clearml_name, min_value=float(dim.low), max_value=float(dim.high)))
    return params


def server_plan(space: list[Dimension], base: RunConfig, queue: str, n_trials: int, base_task_id: str,
                concurrency: int = 1, time_limit_per_trial: float | None = None) -> dict[str, Any]:
    """The keyword arguments of ClearML's HyperParameterOptimizer for this search (pure data)."""
    import optuna
    from clearml.automation.optuna import OptimizerOptuna

    if n_trials < 1:
        raise ConfigError(f"--trials {n_trials}: run at least one trial")
    if not queue:
        raise ConfigError("--queue: name the ClearML queue the agents serve (e.g. gpu)")
    return {
        "base_task_id": base_task_id,
        "hyper_parameters": clearml_parameters(space),
        "objective_metric_title": OBJECTIVE_TITLE,
        "objective_metric_series": OBJECTIVE_SERIES,
        "objective_metric_sign": OBJECTIVE_SIGN,
        "optimizer_class": OptimizerOptuna,
        "execution_queue": queue,
        "max_number_of_concurrent_tasks": max(1, concurrency),
        "spawn_project": f"{base.tracking.project}/hpo",
        # below: OptimizerOptuna's own arguments (HyperParameterOptimizer passes them through)
        "total_max_jobs": n_trials,
        "max_iteration_per_job": None,  # required by OptimizerOptuna; None: a trial runs to its end
        "min_iteration_per_job": None,
        "time_limit_per_job": time_limit_per_trial,  # minutes
        "pool_period_min": 0.5,
        "optuna_sampler": optuna.samplers.TPESampler(seed=base.seed),  # same seed, same proposals
        "optuna_pruner": optuna.pruners.NopPruner(),  # every trial is judged on its finished run, as locally
    }


def describe_plan(plan: dict[str, Any], seed: int) -> dict[str, Any]:
    """server_plan's kwargs as JSON-able data (what `reprozoo hpo --queue Q --dry-run` prints)."""
    shown: dict[str, Any] = {}
    for key, value in plan.items():
        if key == "hyper_parameters":
            shown[key] = [p.to_dict() for p in value]
        elif key == "optuna_sampler":
            shown[key] = f"{type(value).__name__}(seed={seed})"
        elif isinstance(value, (str, int, float, bool, type(None))):
            shown[key] = value
        else:
            shown[key] = getattr(value, "__name__", type(value).__name__)
    return shown


def create_template_task(base: RunConfig, task_cls: Any, image: str | None = None) -> Any:
    """A draft training task holding `base` (what a `reprozoo train` on an agent re-runs): RunConfig
    object + baseline + hyperparameter sections, code (repo/branch/commit/diff), lock, docker image."""
    from reprozoo import provenance, session, tracking

    git = provenance.git_state()
    cfg = apply(base, {"out_dir": None})  # each clone picks its own run directory
    task = task_cls.create(project_name=cfg.tracking.project, task_name=f"{cfg.model.name} hpo template",
                           task_type="training", add_task_init_call=False, detect_repository=False)
    tracking.write_config(task, cfg, "the whole RunConfig (HPO template; the optimizer overrides its sections)")
    task.set_script(repository=git.repository, branch=git.branch, commit=git.commit, diff=git.diff,
                    working_dir=session.WORKING_DIR, entry_point=session.ENTRY_POINT)
    lock, _ = provenance.lock_file(git.root)
    lock_path = Path(git.root or ".") / lock
    if lock != provenance.NONE and lock_path.is_file():
        task.set_packages(str(lock_path))
    ref, digest = provenance.image_identity()
    image = image or (f"{ref}@{digest}" if provenance.DIGEST_RE.match(digest) else None)
    if image:
        from reprozoo.agent import docker_arguments

        task.set_base_docker(docker_image=image, docker_arguments=docker_arguments())
    return task


@dataclass
class ClearMLApi:
    """What server mode calls; tests hand in recording stand-ins (no server can run here)."""

    Task: Any
    HyperParameterOptimizer: Any
    load_record: Callable[[str], Any]

    @classmethod
    def real(cls) -> ClearMLApi:
        from clearml import Task
        from clearml.automation import HyperParameterOptimizer

        from reprozoo.records import load_record

        return cls(Task, HyperParameterOptimizer, load_record)


def search_server(base: RunConfig, space: list[Dimension], n_trials: int, queue: str, out: Path,
                  base_task_id: str | None = None, concurrency: int = 1, time_limit_per_trial: float | None = None,
                  image: str | None = None, api: ClearMLApi | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Clone the template task N times through ClearML's optimizer; agents on `queue` train them.

    Run against a real server with a real agent in tests/server/test_agents.py; tests/test_hpo.py
    drives it with recording stand-ins for Task, HyperParameterOptimizer and the record reader."""
    base = base.validate()
    _claim_out(out)
    if api is None:
        from reprozoo.session import configure_clearml

        configure_clearml()
        api = ClearMLApi.real()
    api.Task.set_offline(False)
    if base_task_id is None:
        template = create_template_task(base, api.Task, image)
        base_task_id = template.id
        log(f"template task {base_task_id} (from the RunConfig)")
    controller = api.Task.init(project_name=base.tracking.project, task_name=f"hpo {base.model.name}",
                               task_type="optimizer", reuse_last_task_id=False, auto_connect_arg_parser=False,
                               auto_connect_frameworks=False, auto_resource_monitoring=False)
    kwargs = server_plan(space, base, queue, n_trials, base_task_id, concurrency, time_limit_per_trial)
    optimizer = api.HyperParameterOptimizer(**kwargs)
    # wait() returns only at the optimizer's next objective report (every 10 min by default): report
    # every 15 s, so the search ends when its last trial does.
    optimizer.set_report_period(0.25)
    log(f"optimizer task {controller.id}: {n_trials} trials of task {base_task_id} on queue {queue!r}")
    optimizer.start()
    optimizer.wait()
    optimizer.stop()
    # all_metrics=True raises inside clearml 2.1.12 (TypeError: 'NoneType' object is not subscriptable):
    # the details carry the objective, each trial's task its other scalars (Summary/dev_*).
    details = optimizer.get_top_experiments_details(top_k=n_trials)
    for detail in details:
        detail["metrics"] = {**_last_scalars(api.Task.get_task(task_id=detail["task_id"])), **(detail.get("metrics") or {})}
    by_name = {d.clearml_name: d.key for d in space}
    trials = [_server_trial(i, d, by_name) for i, d in enumerate(details)]
    meta = {"mode": "server", "model": base.model.name, "n_trials": n_trials, "queue": queue, "base_task": base_task_id,
            "optimizer_task": controller.id, "sampler": f"ClearML OptimizerOptuna, TPESampler(seed={base.seed})"}
    best = best_trial(trials)
    best_config = run_spec.fresh_run(api.load_record(best.task_id)) if best else None
    write_results(out, space, trials, best_config, meta)
    controller.close()
    if best is None:
        raise SearchFailed(f"no trial reported {OBJECTIVE_TITLE}/{OBJECTIVE_SERIES}; see optimizer task {controller.id}")
    return {"out": str(out), "best": best, "trials": trials, "best_yaml": str(out / "best.yaml")}


def _last_scalars(task: Any) -> dict[str, dict[str, Any]]:
    """A task's scalars in get_top_experiments_details' shape: 'title/series' → value, min_value, max_value."""
    return {f"{title}/{series}": {"value": v.get("last"), "min_value": v.get("min"), "max_value": v.get("max")}
            for title, all_series in (task.get_last_scalar_metrics() or {}).items() for series, v in all_series.items()}


def _server_trial(number: int, detail: dict[str, Any], by_name: dict[str, str]) -> Trial:
    metrics = detail.get("metrics") or {}

    def value(title_series: str, field: str) -> float | None:
        entry = metrics.get(title_series) or {}
        return float(entry[field]) if entry.get(field) is not None else None

    params = {by_name.get(k, k): v for k, v in (detail.get("hyper_parameters") or {}).items() if k in by_name}
    f1 = value(f"{OBJECTIVE_TITLE}/{OBJECTIVE_SERIES}", "max_value")
    # Summary/dev_* are the single values train.py reports from metrics.json (the best checkpoint's).
    summary_f1, summary_acc = value("Summary/dev_macro_f1", "value"), value("Summary/dev_accuracy", "value")
    return Trial(number, "complete" if f1 is not None else "failed", params,
                 dev_macro_f1=summary_f1 if summary_f1 is not None else f1,
                 dev_accuracy=summary_acc if summary_acc is not None else value(f"{OBJECTIVE_TITLE}/accuracy", "value"),
                 task_id=str(detail.get("task_id")), error=None if f1 is not None else "no objective reported")
