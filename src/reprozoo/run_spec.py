"""A recorded run as an executor runs it: the one place a RunConfig is read back from a record and pinned.

Every executor (repro here and in the image, agents, DDP ranks, resume here and from a task's storage,
`tasks show --as-config`, the best HPO trial's replay) builds what it trains with `executable`: the
recorded RunConfig, pinned to the weights the run loaded, reading and writing where the executor says
(`Where`), and nothing else changed. A record's RunConfig text is parsed by `recorded_config`, a
run directory's by `run_dir_config`; a ClearML agent's run is the task's, with its UI edits merged
(`merge_edits`: a clone edited in the UI is a new run, recorded as such).
tests/test_architecture.py checks that no other module builds a RunConfig from a record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
