"""RunConfig: the one object that describes a run end to end.

The CLI builds it, training consumes it, the tracker records it, and `repro` reads it back.
Pure Python (dataclasses + YAML): validating a config never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reprozoo.errors import UserError

GRANULARITIES = ("sentences", "phrases")
IMBALANCE_MODES = ("none", "weighted-loss", "balanced-sampler")
PHRASE_WEIGHTING = ("count", "uniform")
POOLINGS = ("cls", "mean", "last")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
TRACKING_MODES = ("auto", "offline", "server", "off")


class ConfigError(UserError, ValueError):
    """A setting the user can fix; the message is one line and names the fix."""


@dataclass
class DataConfig:
    data_dir: str | None = None  # None: $REPROZOO_DATA_DIR, then the cache, then download
    dataset_id: str | None = None  # a ClearML dataset version (`reprozoo data version`); wins over data_dir
    granularity: str = "sentences"  # train on roots only, or on every labelled phrase
    phrase_weighting: str = "count"  # phrases: weight a unique span by how often it occurs
    imbalance: str = "none"
    max_length: int | None = None  # None: the zoo's default for the model
    batch_size: int | None = None  # None: the zoo's default for the model
    # Token budget per training batch (padded tokens, batch × longest). None: fixed batch_size.
    # Set, batches of short phrases grow and long sentences shrink, so every step does similar work.
    max_tokens: int | None = None
    eval_batch_size: int = 128
    limit_train_samples: int | None = None  # a fixed random K training examples (after dedup)
    limit_eval_samples: int | None = None
    num_workers: int = 0


@dataclass
class ModelConfig:
    name: str = "all-minilm-l6-v2"  # zoo name, hub id (org/name) or a local directory
    revision: str | None = None  # hub revision; None: the zoo's pin or main
    pooling: str | None = None  # None: the zoo's default for the family
    dropout: float = 0.1


@dataclass
class OptimConfig:
    lr: float | None = None  # None: the zoo's default for the model
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    layer_lr_decay: float = 1.0  # 1.0: off; <1 scales lower layers' LR by decay**depth
    head_lr_multiplier: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    max_epochs: int = 3
    max_steps: int = -1
    max_time: str | None = None  # "DD:HH:MM:SS": stop training after this long (then test the best)
    precision: str = "auto"
    accelerator: str = "auto"
    devices: str = "auto"
    require_gpu: bool = False
    early_stopping_patience: int = 3
    checkpoint_every: int = 0  # >0: also write last.ckpt every N optimiser steps (covers kill -9)
    val_check_interval: float = 1.0  # fraction of an epoch between dev evaluations
    pruning_amount: float = 0.0  # >0: L1-unstructured pruning of the head and FFN weights
    accumulate_grad_batches: int = 1
    fast_dev_run: bool = False
    profiler: str | None = None  # simple | advanced | pytorch
    log_every_n_steps: int = 20


@dataclass
class TrackingConfig:
    mode: str = "auto"  # auto: server when ClearML credentials are configured, else offline
    project: str = "reprozoo"
    task_name: str | None = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42
    out_dir: str | None = None  # None: runs/<model>-<timestamp>

    # --- round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, "")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, optim, ...)")
        return cls.from_dict(data)

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply `section.key=value` strings (values parsed as YAML scalars, typed by the field)."""
        values: dict[str, Any] = {}
        for assignment in assignments:
            if "=" not in assignment:
                raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. optim.lr=3e-5")
            key, value = assignment.split("=", 1)
            values[key.strip()] = value
        return apply(self, values, parse=True, origin="--set ")

    # --- validation (before anything heavy is loaded) ---------------------------------------
    def validate(self) -> RunConfig:
        d, o, t = self.data, self.optim, self.trainer
        _choice("data.granularity", d.granularity, GRANULARITIES)
        _choice("data.imbalance", d.imbalance, IMBALANCE_MODES)
        _choice("data.phrase_weighting", d.phrase_weighting, PHRASE_WEIGHTING)
        if self.model.pooling is not None:
            _choice("model.pooling", self.model.pooling, POOLINGS)
        _choice("trainer.precision", t.precision, PRECISIONS)
        _choice("tracking.mode", self.tracking.mode, TRACKING_MODES)
        _positive("data.batch_size", d.batch_size)
        _positive("data.eval_batch_size", d.eval_batch_size)
        _positive("data.max_length", d.max_length)
        _positive("data.max_tokens", d.max_tokens)
        _positive("data.limit_train_samples", d.limit_train_samples)
        _positive("data.limit_eval_samples", d.limit_eval_samples)
        if d.max_length is not None and d.max_length < 8:
            raise ConfigError(f"data.max_length={d.max_length} is too short for a sentence; use at least 8 (64 covers 99% of SST-5)")
        if o.lr is not None and not o.lr > 0:
            raise ConfigError(f"optim.lr={o.lr} must be positive, e.g. 3e-5")
        if not 0 <= o.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio={o.warmup_ratio} must be in [0, 1)")
        if not 0 < o.layer_lr_decay <= 1:
            raise ConfigError(f"optim.layer_lr_decay={o.layer_lr_decay} must be in (0, 1]; 1 turns it off")
        if not 0 <= o.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing={o.label_smoothing} must be in [0, 1)")
        if o.weight_decay < 0 or o.grad_clip < 0:
            raise ConfigError("optim.weight_decay and optim.grad_clip must be >= 0")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError(f"model.dropout={self.model.dropout} must be in [0, 1)")
        if t.max_epochs < 1 and t.max_steps < 1:
            raise ConfigError("trainer.max_epochs must be >= 1 (or set trainer.max_steps)")
        if not 0 <= t.pruning_amount < 1:
            raise ConfigError(f"trainer.pruning_amount={t.pruning_amount} must be in [0, 1)")
        if t.checkpoint_every < 0:
            raise ConfigError("trainer.checkpoint_every must be >= 0 (0: only at evaluations)")
        if d.max_tokens is not None and d.max_length is not None and d.max_tokens < d.max_length:
            raise ConfigError(f"data.max_tokens={d.max_tokens} is below data.max_length={d.max_length}; the longest example would not fit")
        if d.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        return self


def apply(cfg: RunConfig, values: dict[str, Any], *, parse: bool = False, origin: str = "") -> RunConfig:
    """A new RunConfig with each `section.key` (or top-level key) set to its value.

    The one dotted-key setter: the CLI's flags, `--set`, hpo trials and tracking edits all go
    through it. `parse=True` reads string values as `--set` does (YAML scalars typed by the field).
    Unknown sections or keys raise ConfigError naming the closest ones; `origin` prefixes the message.
    """
    data = cfg.to_dict()
    for key, value in values.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                sections = [k for k, v in node.items() if isinstance(v, dict)]
                raise ConfigError(f"{origin}{key}: unknown section {part!r}; {_suggest(part, sections)}")
            node = node[part]
        if leaf not in node or isinstance(node[leaf], dict):
            raise ConfigError(f"{origin}{key}: unknown setting {leaf!r}; {_suggest(leaf, list(node))}")
        node[leaf] = _parse_value(value, _annotation(parents, leaf)) if parse and isinstance(value, str) else value
    return RunConfig.from_dict(data)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"optim": {"lr": 1e-4}} → {"optim.lr": 1e-4}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown setting; {_suggest(key, list(fields))}")
        sub = _SECTIONS.get(key) if cls is RunConfig else None
        kwargs[key] = _build(sub, value or {}, f"{key}.") if sub else _coerce(value, str(fields[key].type), prefix + key)
    return cls(**kwargs)


def _annotation(parents: list[str], leaf: str) -> str:
    cls = _SECTIONS[parents[0]] if parents else RunConfig
    return str({f.name: f.type for f in dataclasses.fields(cls)}[leaf])


def _parse_value(value: str, annotation: str) -> Any:
    if value in ("", "null", "None", "~"):
        return None
    if annotation.startswith("str"):
        return value  # keep `off`, `no`, `1.0` as written (YAML would turn `off` into False)
    return yaml.safe_load(value)


def _coerce(value: Any, annotation: str, name: str) -> Any:
    """YAML reads `3e-5` as a string (no dot): turn such values into the field's type."""
    if value is None or not isinstance(value, str) or annotation.startswith("str"):
        return value
    try:
        if annotation.startswith("float"):
            return float(value)
        if annotation.startswith("int"):
            return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a {annotation.split()[0]}") from None
    return value


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
             "trainer": TrainerConfig, "tracking": TrackingConfig}


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(options)}"


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(options)}; {_suggest(str(value), list(options))}")


def _positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name}={value!r} must be a whole number >= 1")
