"""A container's run decided without an engine: mounts, credentials, GPUs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reprozoo.containers.engine import gpu_available
from reprozoo.containers.identity import ContainerError
from reprozoo.containers.run import decide_gpus, plan_container, run_command_in_image

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


class FakeContainer:
    def __init__(self) -> None:
        self.removed = False

    def logs(self, stream: bool, follow: bool) -> list[bytes]:
        return [b"inside\n"]

    def wait(self) -> dict[str, int]:
        return {"StatusCode": 3}

    def remove(self, force: bool) -> None:
        self.removed = True


class RunningEngine(FakeEngine):
    """Stands in for an engine that has the image and starts containers (no dockerd here)."""

    def __init__(self, ref: str) -> None:
        super().__init__({})
        self.ref, self.started, self.container = ref, [], FakeContainer()
        self.images, self.containers = self, self

    def get(self, ref: str) -> object:
        from docker.errors import ImageNotFound

        if ref != self.ref:
            raise ImageNotFound(ref)
        return type("Image", (), {"id": "sha256:" + "b" * 64, "attrs": {"RepoDigests": []}, "tags": [ref]})()

    def run(self, image: str, **kwargs: object) -> FakeContainer:
        self.started.append((image, kwargs))
        return self.container


def test_image_run_chooses_data_and_digest(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = "127.0.0.1:5000/reprozoo@sha256:" + "a" * 64
    engine = RunningEngine(pinned)
    dirs = {"hf_cache": tmp_path / "hf", "runs_dir": tmp_path / "runs", "clearml_dir": tmp_path / "clearml"}
    monkeypatch.setenv("REPROZOO_DATA_DIR", str(tmp_path))  # no train.txt there
    with pytest.raises(ContainerError, match=rf"^--data-dir {tmp_path} holds no train.txt; pass the folder"):
        run_command_in_image(["train"], image=pinned, gpus="none", engine=engine, log=lambda line: None, **dirs)
    said: list[str] = []
    printed: list[str] = []
    monkeypatch.setattr("sys.stdout.write", printed.append)
    code = run_command_in_image(["train", "--max-epochs", "1"], image=pinned, gpus="none", data_dir=data_dir, engine=engine,
                                log=said.append, **dirs)
    assert code == 3 and engine.container.removed and printed[0] == "inside\n"
    assert said[0] == f"image {pinned} = {pinned}" and said[-1].startswith("no GPU: running on CPU")
    image, kwargs = engine.started[0]
    assert image == pinned and kwargs["command"] == ["train", "--max-epochs", "1"] and "device_requests" not in kwargs
    assert kwargs["environment"]["REPROZOO_IMAGE_DIGEST"] == pinned and kwargs["environment"]["REPROZOO_DATA_DIR"] == "/data/sst5"
    assert kwargs["volumes"][str(data_dir.resolve())] == {"bind": "/data/sst5", "mode": "ro"}
    assert all(path.is_dir() for path in dirs.values())  # the writable mounts exist before the run
