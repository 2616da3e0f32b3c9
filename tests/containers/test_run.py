"""A container's run decided without an engine: mounts, credentials, GPUs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reprozoo.containers.engine import gpu_available
from reprozoo.containers.identity import ContainerError
from reprozoo.containers.run import decide_gpus, plan_container

SENTINEL = "rz-sentinel-7f3a9c1e5b"


def test_run_plan_mounts_and_credentials(tmp_path: Path) -> None:
    host_env = {"CLEARML_API_ACCESS_KEY": "ak", "CLEARML_API_SECRET_KEY": SENTINEL, "HF_HUB_OFFLINE": "1",
                "AWS_SECRET_ACCESS_KEY": "not-ours", "HF_TOKEN": ""}
    plan = plan_container("127.0.0.1:5000/reprozoo@sha256:" + "a" * 64, "sha256:" + "b" * 64,
                               "127.0.0.1:5000/reprozoo@sha256:" + "a" * 64, ["train", "--model", "all-minilm-l6-v2"],
                               data_dir=tmp_path / "trees", hf_cache=tmp_path / "hf", runs_dir=tmp_path / "runs",
                               clearml_dir=None, gpus=False, host_env=host_env)
    env = plan.environment
    assert env["CLEARML_API_SECRET_KEY"] == SENTINEL and env["CLEARML_API_ACCESS_KEY"] == "ak" and env["HF_HUB_OFFLINE"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HF_TOKEN" not in env  # only ours, only when set
    assert env["REPROZOO_IMAGE_DIGEST"].endswith("a" * 64) and env["REPROZOO_DATA_DIR"] == "/data/sst5"
    assert plan.mounts[str((tmp_path / "trees").resolve())] == {"bind": "/data/sst5", "mode": "ro"}
    assert plan.mounts[str((tmp_path / "runs").resolve())]["bind"] == "/work/runs"
    assert plan.mounts[str((tmp_path / "hf").resolve())]["bind"] == "/home/reprozoo/.cache/huggingface"
    assert SENTINEL not in repr(plan.public()) and plan.public()["environment"]["CLEARML_API_SECRET_KEY"] == "***"


class FakeEngine:
    """Stands in for an engine on a GPU host (there is no GPU here): only `info()` is read."""

    def __init__(self, runtimes: dict) -> None:
        self.runtimes = runtimes

    def info(self) -> dict:
        return {"Runtimes": self.runtimes}


def test_gpu_detection_and_decision(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    assert gpu_available(FakeEngine({"nvidia": {}}), dev) == (False, f"this host has no NVIDIA GPU ({dev}/nvidia* absent)")
    (dev / "nvidia0").touch()
    (dev / "nvidiactl").touch()
    has, why = gpu_available(FakeEngine({"nvidia": {}}), dev)
    assert has and why == "NVIDIA GPU and container toolkit present"
    if not shutil.which("nvidia-container-cli"):
        assert gpu_available(FakeEngine({"runc": {}}), dev)[0] is False
    assert decide_gpus("auto", True, why) == (True, [f"using the GPUs ({why})"])
    assert decide_gpus("none", True, why)[0] is False
    use, notes = decide_gpus("all", False, "no GPU here")
    assert not use and notes == ["--gpus all: no GPU here; running on CPU", "no GPU: running on CPU (no GPU here)"]
    with pytest.raises(ContainerError, match="use auto, all or none"):
        decide_gpus("some", True, why)

