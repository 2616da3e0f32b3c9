"""A recorded run as an executor runs it: the one place a RunConfig is read back from a record and pinned.

Every executor (repro here and in the image, agents, DDP ranks, resume here and from a task's storage,
`tasks show --as-config`, the best HPO trial's replay) builds what it trains with `executable`: the
recorded RunConfig, pinned to the weights the run loaded, reading and writing where the executor says
(`Where`), and nothing else changed. A record's RunConfig text is parsed by `recorded_config`, a
run directory's by `run_dir_config`. On a ClearML agent a replay (`repro --enqueue`) runs its record's
RunConfig (`replayed`: any edit but where is refused); any other clone is a new run, with its UI edits
merged (`merge_edits`), recorded as such.
tests/test_architecture.py checks that no other module builds a RunConfig from a record.

What makes a run the run it is is defined here too, once (`identity`): resume compares all of it, a
re-run sweep what a planned run knows before it runs (sweep.run_identity), and repro, an agent's replay
and resume how the run trains (`settings`, `other_settings`).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprozoo import zoo
from reprozoo.config import ConfigError, RunConfig, apply, flatten

AS_RECORDED: Any = object()  # a Where field left as the record has it


@dataclass(frozen=True)
class Where:
    """Where an executor's run reads and writes: all it may choose. `out_dir=None` is a fresh run
    directory; the data is found by path or by version (its sha256 is the record's either way)."""

    out_dir: Any = AS_RECORDED
    data_dir: Any = AS_RECORDED
    dataset_id: Any = AS_RECORDED
    tracking: Any = AS_RECORDED  # where the run is recorded: off (DDP ranks), offline, server (an agent's clone)


def executable(recorded: RunConfig, weights_revision: str | None, where: Where) -> RunConfig:
    """The RunConfig that re-runs `recorded`: on the weights it loaded (a hub commit, or the files'
    sha256, checked before training; never the hub's `main` of the replay's day), reading and writing
    where `where` says."""
    settings = {"out_dir": where.out_dir, "data.data_dir": where.data_dir, "data.dataset_id": where.dataset_id,
                "tracking.mode": where.tracking}
    values = {key: value for key, value in settings.items() if value is not AS_RECORDED}
    if weights_revision and weights_revision != "none":
        values["model.revision"] = weights_revision
    return apply(recorded, values).validate()


def replayed(recorded: RunConfig, weights_revision: str | None, asked: RunConfig, source: str) -> RunConfig:
    """An executor handed a replay's RunConfig (`asked`: an agent's clone, as `repro --enqueue` wrote it)
    runs `executable(recorded, …)` reading and writing where `asked` says; any other difference (an
    edit) is refused in one line naming each field."""
    where = Where(out_dir=asked.out_dir, data_dir=asked.data.data_dir, dataset_id=asked.data.dataset_id,
                  tracking=asked.tracking.mode)
    replay = executable(recorded, weights_revision, where)
    theirs, ours = flatten(asked.to_dict()), flatten(replay.to_dict())
    differ = [f"{key} {_shown(str(ours[key]))} → {_shown(str(theirs[key]))}" for key in ours if theirs.get(key) != ours[key]]
    if differ:
        raise ConfigError(f"{source} replays a record, but its RunConfig differs from the record's ({'; '.join(differ)});"
                          " a replay changes only where the run reads and writes: enqueue it again with `reprozoo repro"
                          " TASK --enqueue QUEUE`, or clone the original task (not the replay) to train a changed config")
    return replay


def fresh_run(record: Any) -> RunConfig:
    """A record (records.Record) run again as a new run: a fresh run directory, its data version."""
    return executable(record.config, record.model_revision, Where(out_dir=None, dataset_id=record.dataset_id))


def recorded_config(data: Any, source: str) -> RunConfig:
    """A record's RunConfig from its parsed mapping (records.py, an agent's task); one line naming
    `source` when it is no RunConfig."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}; the record is damaged")
    try:
        return RunConfig.from_dict(data)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(source) else f"{source}: {message}") from None


def run_dir_config(run_dir: Path) -> RunConfig:
    """The RunConfig a run directory holds (config.yaml), read with the record readers' caps."""
    return RunConfig.load(run_dir / "config.yaml")


def merge_edits(baseline: RunConfig | None, edited_object: RunConfig, edited_sections: dict[str, Any]) -> RunConfig:
    """The RunConfig an agent runs for a task: edits to the config object and to the hyperparameter
    sections, each taken where it differs from the recorded baseline (sections win a conflict)."""
    base = flatten((baseline or edited_object).to_dict())
    obj = flatten(edited_object.to_dict())
    params = flatten(apply(edited_object, flatten(edited_sections)).to_dict())
    merged = dict(base)
    for key in base:
        if obj[key] != base[key]:
            merged[key] = obj[key]
        if params[key] != base[key] and (baseline is not None or params[key] != obj[key]):
            merged[key] = params[key]
    return apply(edited_object, merged).validate()


# --- what makes a run the run it is ---------------------------------------------------------------
# Where a run wrote, how it was tracked and where it read its data (compared by content instead):
# not what it computed.
WHERE_FIELDS = ("out_dir", "tracking.mode", "tracking.project", "tracking.task_name", "data.data_dir", "data.dataset_id")
# Settings the zoo fills when the config leaves them unset (`null`): compared as the run applied them.
ZOO_DEFAULTS = {"optim.lr": "lr", "data.batch_size": "batch_size", "data.max_length": "max_length",
                "model.pooling": "pooling"}
ENVIRONMENT_FIELDS = ("image_digest", "lock_sha256", "python", "torch", "transformers", "lightning")
# How the run trains, as resolved at its start: resolved again on another machine, `auto` would give
# another precision (bf16 on an A100, fp16 on a T4) or world size (DDP, a larger global batch).
RESOLVED_FIELDS = ("accelerator", "precision", "world_size", "batch_size", "accumulate_grad_batches", "global_batch_size",
                   "lr", "max_length")
CPU_FIELDS = ("cpu_model", "torch_threads")  # on the CPU, kernels and reductions follow the CPU and the thread count


def with_zoo_defaults(cfg: RunConfig, entry: zoo.ZooEntry) -> RunConfig:
    """`cfg` with what it leaves unset (`null`) filled as the zoo gives it for `entry` (train.plan_run's rule)."""
    unset = {key for key, value in flatten(cfg.to_dict()).items() if value is None}
    return apply(cfg, {key: getattr(entry, attr) for key, attr in ZOO_DEFAULTS.items() if key in unset})


def identity(config: RunConfig | None, commit: str, diff: str, data_sha256: dict[str, str], weights_revision: str | None,
             environment: dict[str, Any] | None = None, resolved: dict[str, Any] | None = None) -> dict[str, str]:
    """The one definition of "the same run": every fact that decides what a run computes, as flat
    strings. `config.*` (WHERE_FIELDS left out, the zoo's defaults as `resolved` applied them, else as
    the zoo gives them), `code.commit` and `code.diff` (its sha256), `weights.revision`,
    `data.sha256.*`, and where known `environment.*` and `settings` (how it trains).
    Resume compares all of it; a sweep the part a planned run knows before it runs."""
    facts: dict[str, str] = {}
    if config is not None:
        flat = flatten(config.to_dict())
        for key, attr in ZOO_DEFAULTS.items():
            if flat.get(key) is None:
                if resolved and resolved.get(attr) is not None:
                    flat[key] = resolved[attr]
                else:  # a local model directory that is gone: compared as recorded (None)
                    with contextlib.suppress(zoo.UnknownModelError):
                        flat[key] = getattr(zoo.get(config.model.name), attr)
        # model.revision: a replay pins what the run loaded; what it loaded is weights.revision.
        facts.update({f"config.{key}": str(value) for key, value in sorted(flat.items())
                      if key not in WHERE_FIELDS and key != "model.revision"})
    facts["code.commit"] = commit
    facts["code.diff"] = diff_sha256(diff)
    facts["weights.revision"] = str(weights_revision or "none")
    facts.update({f"data.sha256.{split}": str(sha) for split, sha in sorted(data_sha256.items())})
    if environment is not None:
        facts.update({f"environment.{key}": str(environment.get(key, "none")) for key in ENVIRONMENT_FIELDS})
    if resolved is not None:
        facts.update(settings(resolved, environment or {}))
    return facts


def diff_sha256(diff: str) -> str:
    """The fingerprint of a run's uncommitted changes, as its document and `identity` hold it."""
    return "sha256:" + hashlib.sha256(diff.encode()).hexdigest() if diff else "none"


def settings(resolved: dict[str, Any], environment: dict[str, Any]) -> dict[str, str]:
    """How a run trains (what it resolved; on the CPU, the CPU model and thread count), as `identity` names them."""
    facts = {f"resolved.{key}": str(resolved[key]) for key in RESOLVED_FIELDS if key in resolved}
    if resolved.get("accelerator") == "cpu":
        facts.update({f"environment.{key}": str(environment[key]) for key in CPU_FIELDS if key in environment})
    return facts


def recorded_settings(record: Any) -> dict[str, str]:
    """`settings` as a record (records.Record) holds them: its document's `resolved` and environment
    (none for a record of older code)."""
    resolved = record.provenance.get("resolved")
    return settings(resolved if isinstance(resolved, dict) else {}, record.environment)


def other_settings(recorded: dict[str, str], here: dict[str, str]) -> list[str]:
    """`settings` the run recorded that this executor would train otherwise, one `field a → b` each;
    a field either side does not name is not compared (a record of older code, a check made before planning)."""
    return [f"{key} {_shown(recorded[key])} → {_shown(value)}" for key, value in here.items()
            if key in recorded and recorded[key] != value]


def _shown(value: str) -> str:
    return value[:39] + "…" if len(value) > 40 else value
