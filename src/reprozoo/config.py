"""RunConfig: the one object that describes a run end to end.

The CLI builds it, training consumes it, the tracker records it, and `repro` reads it back.
Pure Python (dataclasses + YAML): validating a config never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from reprozoo import safeyaml
from reprozoo.errors import ConfigError

__all__ = ["ConfigError", "RunConfig", "apply", "flatten"]

GRANULARITIES = ("sentences", "phrases")
IMBALANCE_MODES = ("none", "weighted-loss", "balanced-sampler")
PHRASE_WEIGHTING = ("count", "uniform")
POOLINGS = ("cls", "mean", "last")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
TRACKING_MODES = ("auto", "offline", "server", "off")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PROFILERS = ("simple", "advanced", "pytorch")


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
    keep_last_checkpoint: bool = False  # a finished run keeps last.ckpt too (by default only the best one)
    val_check_interval: float = 1.0  # fraction of an epoch between dev evaluations
    pruning_amount: float = 0.0  # >0: L1-unstructured pruning of the head and FFN weights (reprozoo.pruning)
    accumulate_grad_batches: int = 1
    fast_dev_run: bool = False
    profiler: str | None = None  # simple | advanced | pytorch
    log_every_n_steps: int = 20


@dataclass
class TrackingConfig:
    mode: str = "auto"  # auto: server when ClearML credentials are configured, else offline
    project: str = "reprozoo"
    task_name: str | None = None
    # A server run uploads each resume checkpoint to its task's storage, to resume on any machine
    # (checkpoint_store); false keeps them on this machine alone.
    upload_checkpoints: bool = True


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
        """A config file, read with the bounded parser (size, aliases, depth: see reprozoo.safeyaml)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data = safeyaml.load_yaml(safeyaml.read_bytes(path, safeyaml.MAX_YAML_BYTES, "config file"), str(path))
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, optim, ...), got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

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
        """Every setting's type and range, so nothing fails (or lies) after a task or directory opened.

        Each failure is one ConfigError line: the setting, its value and a valid example."""
        for name, annotation, value in _settings(self):
            _check_type(name, value, annotation)
        d, m, o, t, k = self.data, self.model, self.optim, self.trainer, self.tracking
        # text
        _text("data.data_dir", d.data_dir)
        _text("data.dataset_id", d.dataset_id)
        _text("model.name", m.name)
        _text("model.revision", m.revision)
        _text("tracking.project", k.project)
        _text("tracking.task_name", k.task_name)
        _text("out_dir", self.out_dir)
        # choices
        _choice("data.granularity", d.granularity, GRANULARITIES)
        _choice("data.imbalance", d.imbalance, IMBALANCE_MODES)
        _choice("data.phrase_weighting", d.phrase_weighting, PHRASE_WEIGHTING)
        if m.pooling is not None:
            _choice("model.pooling", m.pooling, POOLINGS)
        _choice("trainer.precision", t.precision, PRECISIONS)
        _choice("trainer.accelerator", t.accelerator, ACCELERATORS)
        if t.profiler is not None:
            _choice("trainer.profiler", t.profiler, PROFILERS)
        _choice("tracking.mode", k.mode, TRACKING_MODES)
        if not _devices_ok(t.devices):
            _fail("trainer.devices", t.devices, "is not auto, a count, -1 (every GPU) or a list of GPU indices like 0,1")
        if t.max_time is not None and _max_time_seconds(t.max_time) is None:
            _fail("trainer.max_time", t.max_time, "is not a duration 'DD:HH:MM:SS' above zero (Lightning's max_time)")
        # whole numbers
        for name, value in (("data.batch_size", d.batch_size), ("data.eval_batch_size", d.eval_batch_size),
                            ("data.max_length", d.max_length), ("data.max_tokens", d.max_tokens),
                            ("data.limit_train_samples", d.limit_train_samples),
                            ("data.limit_eval_samples", d.limit_eval_samples),
                            ("trainer.accumulate_grad_batches", t.accumulate_grad_batches),
                            ("trainer.log_every_n_steps", t.log_every_n_steps)):
            _positive(name, value)
        if d.max_length is not None and d.max_length < 8:
            raise ConfigError(f"data.max_length={d.max_length} is too short for a sentence; use at least 8 (64 covers 99% of SST-5)")
        for name, value in (("data.num_workers", d.num_workers), ("trainer.early_stopping_patience", t.early_stopping_patience),
                            ("trainer.checkpoint_every", t.checkpoint_every)):
            _whole(name, value, 0, _INT_MAX, "must be a whole number >= 0")
        _whole("seed", self.seed, 0, _SEED_MAX, f"must be a whole number in [0, {_SEED_MAX}] (what numpy and torch seed with)")
        _whole("trainer.max_epochs", t.max_epochs, -1, _INT_MAX, "must be >= 1, or -1 (no limit) with trainer.max_steps set")
        _whole("trainer.max_steps", t.max_steps, -1, _INT_MAX, "must be >= 1, or -1 (no limit)")
        if t.max_steps == 0:
            _fail("trainer.max_steps", 0, "trains nothing; use -1 (no limit) or a step count >= 1")
        if t.max_epochs == 0:
            _fail("trainer.max_epochs", 0, "trains nothing; use >= 1, or -1 (no limit) with trainer.max_steps set")
        if t.max_epochs < 1 and t.max_steps < 1:
            raise ConfigError("trainer.max_epochs=-1 with trainer.max_steps=-1 never stops; set trainer.max_epochs >= 1"
                              " (or trainer.max_steps >= 1)")
        if d.max_tokens is not None and d.max_length is not None and d.max_tokens < d.max_length:
            raise ConfigError(f"data.max_tokens={d.max_tokens} is below data.max_length={d.max_length}; the longest example would not fit")
        # numbers: finite first, then the range
        for name, value in _settings_of_kind(self, "float"):
            if value is not None and not _isfinite(value):
                _fail(name, value, "must be a finite number")
        if o.lr is not None and not o.lr > 0:
            _fail("optim.lr", o.lr, "must be positive")
        _range("optim.weight_decay", o.weight_decay, "must be >= 0", lambda v: v >= 0)
        _range("optim.grad_clip", o.grad_clip, "must be >= 0 (0 turns clipping off)", lambda v: v >= 0)
        _range("optim.head_lr_multiplier", o.head_lr_multiplier, "must be > 0", lambda v: v > 0)
        _range("optim.warmup_ratio", o.warmup_ratio, "must be in [0, 1)", lambda v: 0 <= v < 1)
        _range("optim.layer_lr_decay", o.layer_lr_decay, "must be in (0, 1]; 1 turns it off", lambda v: 0 < v <= 1)
        _range("optim.label_smoothing", o.label_smoothing, "must be in [0, 1)", lambda v: 0 <= v < 1)
        _range("model.dropout", m.dropout, "must be in [0, 1)", lambda v: 0 <= v < 1)
        _range("trainer.pruning_amount", t.pruning_amount, "must be in [0, 1)", lambda v: 0 <= v < 1)
        # Lightning: an int is a number of training batches, a float a fraction of the epoch.
        v = t.val_check_interval
        if isinstance(v, int) and not 1 <= v <= _INT_MAX:
            _fail("trainer.val_check_interval", v, "must be a number of batches >= 1 or a fraction of an epoch in (0, 1]")
        if isinstance(v, float) and not 0 < v <= 1:
            _fail("trainer.val_check_interval", v, "must be a fraction of an epoch in (0, 1] or a whole number of batches >= 1")
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
                raise ConfigError(f"{origin}{_key(key)}: unknown section {part!r}; {_suggest(part, sections)}")
            node = node[part]
        if leaf not in node or isinstance(node[leaf], dict):
            raise ConfigError(f"{origin}{_key(key)}: unknown setting {leaf!r}; {_suggest(leaf, list(node))}")
        node[leaf] = _parse_value(value, _annotation(parents, leaf), f"{origin}{key}") if parse and isinstance(value, str) else value
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
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            raise ConfigError(f"{prefix}{_key(key)}: unknown setting; {_suggest(str(key), list(fields))}")
        sub = _SECTIONS.get(key) if cls is RunConfig else None
        kwargs[key] = _build(sub, {} if value is None else value, f"{key}.") if sub else _coerce(value, str(fields[key].type), prefix + key)
    return cls(**kwargs)


def _annotation(parents: list[str], leaf: str) -> str:
    cls = _SECTIONS[parents[0]] if parents else RunConfig
    return str({f.name: f.type for f in dataclasses.fields(cls)}[leaf])


def _parse_value(value: str, annotation: str, name: str = "value") -> Any:
    """A `--set` value: kept as written for text settings, else read as a (bounded) YAML scalar."""
    if value in ("", "null", "None", "~"):
        return None
    if annotation.startswith("str"):
        return value  # keep `off`, `no`, `1.0` as written (YAML would turn `off` into False)
    return safeyaml.load_yaml(value, name)


def _coerce(value: Any, annotation: str, name: str) -> Any:
    """A loaded value as the field's type, or a ConfigError naming the setting and a valid example.

    YAML reads `3e-5` as a string (no dot) and `devices: 2` as an int: such values become the field's
    type. Lossy conversions are refused: 2.5 is not a whole number, `yes` (a YAML bool) is not a count."""
    base = annotation.split()[0]
    if value is None:
        pass
    elif base == "str":
        if name == "trainer.max_time" and isinstance(value, dict | timedelta):
            value = _max_time_text(value)  # Lightning also takes a dict; one spelling keeps records comparable
        elif name == "trainer.max_time" and isinstance(value, int | float) and not isinstance(value, bool):
            _fail(name, value, "is a number (YAML reads an unquoted 1:00:00:00 in base 60); quote the 'DD:HH:MM:SS'")
        elif name == "trainer.devices" and isinstance(value, list) and value and all(_is_int(i) for i in value):
            value = ",".join(str(i) for i in value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = str(value)
    elif base in ("int", "float") and not isinstance(value, bool):
        value = _number(value, base, name)
    _check_type(name, value, annotation)
    return value


def _number(value: Any, base: str, name: str) -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                _fail(name, value, f"is not {_KINDS[base]}")
    elif isinstance(value, numbers.Integral):
        value = int(value)  # numpy ints, so records and YAML hold plain ints
    elif isinstance(value, numbers.Real):
        value = float(value)
    if base == "int" and isinstance(value, float):
        if not value.is_integer():
            _fail(name, value, "is not a whole number")
        value = int(value)
    return value


def _check_type(name: str, value: Any, annotation: str) -> None:
    base = annotation.split()[0]
    if value is None:
        if "None" not in annotation:
            raise ConfigError(f"{name} must be set, e.g. {name}={_EXAMPLES[name]}")
        return
    ok = {"int": _is_int(value), "float": _is_int(value) or isinstance(value, float),
          "bool": isinstance(value, bool), "str": isinstance(value, str)}[base]
    if not ok:
        _fail(name, value, f"is not {_KINDS[base]}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _isfinite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float range
        return False


def _settings(cfg: RunConfig) -> list[tuple[str, str, Any]]:
    """(dotted name, annotation, value) of every setting of every section."""
    out = []
    for f in dataclasses.fields(cfg):
        if f.name in _SECTIONS:
            section = getattr(cfg, f.name)
            out += [(f"{f.name}.{g.name}", str(g.type), getattr(section, g.name)) for g in dataclasses.fields(section)]
        else:
            out.append((f.name, str(f.type), getattr(cfg, f.name)))
    return out


def _settings_of_kind(cfg: RunConfig, base: str) -> list[tuple[str, Any]]:
    return [(name, value) for name, annotation, value in _settings(cfg) if annotation.split()[0] == base]


_TIME_UNITS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_MAX_TIME_RE = re.compile(r"([0-9]{1,6}):([0-9]{1,6}):([0-9]{1,6}):([0-9]{1,6})")


def _max_time_text(value: dict[str, Any] | timedelta) -> str:
    """Lightning's dict (or timedelta) form of max_time as its "DD:HH:MM:SS" string."""
    name = "trainer.max_time"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        if not value or any(k not in _TIME_UNITS for k in value):
            _fail(name, value, f"takes keys {', '.join(_TIME_UNITS)}")
        if any(not (_is_int(v) or isinstance(v, float)) or not _isfinite(v) or v < 0 for v in value.values()):
            _fail(name, value, "must hold finite numbers >= 0")
        seconds = sum(float(v) * _TIME_UNITS[k] for k, v in value.items())
    if not _isfinite(seconds) or not 1 <= seconds < 1e6 * 86400:
        _fail(name, value, "must be at least a second and below a million days")
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def _max_time_seconds(text: str) -> int | None:
    """Seconds in "DD:HH:MM:SS" as Lightning parses it (four whole numbers), None if it is not that."""
    match = _MAX_TIME_RE.fullmatch(text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return total if total > 0 else None


def _devices_ok(text: str) -> bool:
    """What Lightning's `devices` takes as text: auto, a count, -1, or GPU indices ("0,1", "[0, 1]", "1,")."""
    compact = text.replace(" ", "")
    if compact in ("auto", "-1") or re.fullmatch(r"[1-9][0-9]{0,3}", compact):
        return True
    inner = compact[1:-1] if compact.startswith("[") and compact.endswith("]") else compact
    return ("," in compact or compact.startswith("[")) and bool(re.fullmatch(r"[0-9]{1,3}(,[0-9]{1,3})*,?", inner))


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
             "trainer": TrainerConfig, "tracking": TrackingConfig}

_INT_MAX = 2**31 - 1
_SEED_MAX = 2**32 - 1  # numpy's seed range (Lightning's seed_everything checks the same)
_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}
# A valid value of every setting, for the messages (tests check that no setting lacks one).
_EXAMPLES: dict[str, Any] = {
    "data.data_dir": "data/sst5", "data.dataset_id": "offline-0123abcd", "data.granularity": "phrases",
    "data.phrase_weighting": "count", "data.imbalance": "weighted-loss", "data.max_length": 64, "data.batch_size": 32,
    "data.max_tokens": 4096, "data.eval_batch_size": 128, "data.limit_train_samples": 1000,
    "data.limit_eval_samples": 500, "data.num_workers": 2,
    "model.name": "all-minilm-l6-v2", "model.revision": "main", "model.pooling": "mean", "model.dropout": 0.1,
    "optim.lr": 3e-5, "optim.weight_decay": 0.01, "optim.warmup_ratio": 0.06, "optim.layer_lr_decay": 0.9,
    "optim.head_lr_multiplier": 10, "optim.label_smoothing": 0.1, "optim.grad_clip": 1.0,
    "trainer.max_epochs": 3, "trainer.max_steps": 1000, "trainer.max_time": "00:02:00:00",
    "trainer.precision": "bf16-mixed", "trainer.accelerator": "gpu", "trainer.devices": "2",
    "trainer.require_gpu": "true", "trainer.early_stopping_patience": 3, "trainer.checkpoint_every": 500,
    "trainer.keep_last_checkpoint": "true",
    "trainer.val_check_interval": 0.5, "trainer.pruning_amount": 0.3, "trainer.accumulate_grad_batches": 4,
    "trainer.fast_dev_run": "true", "trainer.profiler": "simple", "trainer.log_every_n_steps": 20,
    "tracking.mode": "offline", "tracking.project": "reprozoo", "tracking.task_name": "minilm-baseline",
    "tracking.upload_checkpoints": "false", "seed": 42, "out_dir": "runs/minilm-seed42",
}


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(options)}"


def _key(key: Any) -> str:
    """A setting name as typed, or quoted when it would not print as one plain line."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else _show(key)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) or not isinstance(value, int | float) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(name: str, value: Any, problem: str) -> None:
    raise ConfigError(f"{name}={_show(value)} {problem}, e.g. {name}={_EXAMPLES[name]}")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name}={_show(value)} is not one of {', '.join(options)}; {_suggest(str(value), list(options))}")


def _positive(name: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= _INT_MAX:
        _fail(name, value, "must be a whole number >= 1" if value < 1 else f"must be at most {_INT_MAX}")


def _whole(name: str, value: int, low: int, high: int, problem: str) -> None:
    if not low <= value <= high:
        _fail(name, value, problem)


def _range(name: str, value: float, problem: str, ok: Any) -> None:
    if not ok(value):
        _fail(name, value, problem)


def _text(name: str, value: str | None) -> None:
    """Names, paths and ids: not blank, one line, printable (a NUL byte would fail deep in os calls)."""
    if value is None:
        return
    if not value.strip():
        _fail(name, value, "is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        _fail(name, value, "must be one line of printable text")
    if len(value) > 4096:
        _fail(name, value, "is longer than 4096 characters")
