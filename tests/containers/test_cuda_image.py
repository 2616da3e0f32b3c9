"""The cuda image, built and checked on a machine without a GPU (opt-in: REPROZOO_TEST_CUDA_IMAGE=1).

The cuda flavour is built offline from its wheelhouse on the same local Debian base as the cpu tests
(gigabytes of wheels and image: minutes to build and to push; the engine's layer cache makes a
rebuild quick).
Checked: torch's CUDA version is the one the lock's nvidia-cuda-runtime pins; cuDNN, cuBLAS, NCCL and
the CUDA runtime load from the nvidia-* wheels at the versions the lock pins (no driver needed for
that); `train --gpus` inside falls back to CPU with one line and trains; the run's image.json and
ClearML record name the flavour, the lock's sha256 and the digest `image push` printed.
Shares test_docker.py's engine, base and registry fixtures (a registry of its own: one per module).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_docker import LOCAL_BASE, base_image, engine, registry  # noqa: F401 (fixtures shared with the cpu image tests)

from helpers import reprozoo, scratch, train_in_image
from reprozoo.containers.build import BuildResult, build_image, download_wheelhouse, normalise_name
from reprozoo.containers.identity import ContainerError, image_spec, source_state
from reprozoo.provenance import file_sha256

OPT_IN = "REPROZOO_TEST_CUDA_IMAGE"
pytestmark = [pytest.mark.docker, pytest.mark.slow]
opt_in = pytest.mark.skipif(os.environ.get(OPT_IN) != "1",
                            reason=f"the cuda image test is opt-in: set {OPT_IN}=1 (builds and pushes the 6.1 GB cuda image)")

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "envs" / "cuda.lock"

# Run inside the image: torch's view of CUDA, which nvidia-* libraries `import torch` mapped, and each
# library loaded by itself through ctypes with its own version call (none of them needs a driver).
PROBE = r"""
import ctypes, glob, json, os
import torch

site = os.path.dirname(os.path.dirname(torch.__file__))

def path(name):
    found = sorted(glob.glob(os.path.join(site, "nvidia", "**", name + ".so.*"), recursive=True))
    return found[0] if found else None

def by_pointer(symbol, *args):
    def call(lib):
        value = ctypes.c_int()
        status = getattr(lib, symbol)(*args, ctypes.byref(value))
        if status != 0:
            raise RuntimeError(f"{symbol} returned {status}")
        return value.value
    return call

def cudnn(lib):
    lib.cudnnGetVersion.restype = ctypes.c_size_t
    return lib.cudnnGetVersion()

def cublas(lib):
    return [by_pointer("cublasGetProperty", part)(lib) for part in (0, 1, 2)]  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL

out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "site": site, "libs": {}, "mapped": {}}
for name, call in (("libcudart", by_pointer("cudaRuntimeGetVersion")), ("libcudnn", cudnn), ("libcublas", cublas),
                   ("libnccl", by_pointer("ncclGetVersion"))):
    file = path(name)
    try:
        out["libs"][name] = {"path": file, "version": call(ctypes.CDLL(file))}
    except Exception as err:
        out["libs"][name] = {"path": file, "error": f"{type(err).__name__}: {err}"}
for checker, name in ((lambda: torch.backends.cudnn.version(), "torch_cudnn"), (lambda: list(torch.cuda.nccl.version()), "torch_nccl")):
    try:
        out[name] = checker()
    except Exception as err:
        out[name] = f"{type(err).__name__}: {err}"
with open("/proc/self/maps") as maps:
    for line in maps:
        mapped = line.split()[-1]
        for name in ("libcudnn.so", "libcublas.so", "libnccl.so", "libcudart.so"):
            if os.path.basename(mapped).startswith(name):
                out["mapped"][name] = mapped
print(json.dumps(out))
"""


def lock_pins() -> dict[str, str]:
    return {normalise_name(name): version
            for name, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", LOCK.read_text(), re.MULTILINE)}


def numbers(version: str, count: int) -> list[int]:
    return [int(part) for part in version.split(".")[:count]]


@pytest.fixture(scope="module")
def built(engine: Any, base_image: str) -> BuildResult:  # noqa: F811 (the imported fixtures)
    wheels = download_wheelhouse(REPO, "cuda")  # hash-checked; a no-op when the wheels are there
    return build_image(REPO, "cuda", base_image, wheelhouse=wheels, use_wheelhouse=True, engine=engine,
                       log=lambda line: None, state=source_state(REPO))


@opt_in
def test_cuda_libraries_match_the_lock(engine: Any, built: BuildResult) -> None:  # noqa: F811
    assert built.ref == image_spec(REPO, "cuda", LOCAL_BASE).ref and built.offline
    out = engine.containers.run(built.ref, entrypoint=["python", "-c", PROBE], network_mode="none", remove=True).decode()
    probe = json.loads(out.strip().splitlines()[-1])
    pins = lock_pins()
    runtime = numbers(pins["nvidia-cuda-runtime"], 2)
    # PyPI's torch names its CUDA in its local version (2.13.0+cu130): the lock's CUDA runtime, major.minor.
    assert probe["torch"] == "{}+cu{}{}".format(pins["torch"], *runtime) and probe["torch_cuda"] == "{}.{}".format(*runtime)
    assert probe["cuda_available"] is False  # no GPU here: the libraries load all the same
    cudnn, nccl = numbers(pins["nvidia-cudnn-cu13"], 3), numbers(pins["nvidia-nccl-cu13"], 3)
    versions = {name: lib.get("version", lib.get("error")) for name, lib in probe["libs"].items()}
    assert versions == {"libcudart": runtime[0] * 1000 + runtime[1] * 10,
                        "libcudnn": cudnn[0] * 10000 + cudnn[1] * 100 + cudnn[2],
                        "libcublas": numbers(pins["nvidia-cublas"], 3),
                        "libnccl": nccl[0] * 10000 + nccl[1] * 100 + nccl[2]}, probe["libs"]
    assert probe["torch_cudnn"] == versions["libcudnn"] and probe["torch_nccl"] == nccl
    # torch itself runs on the wheels' copies: every CUDA library it mapped lives under site-packages/nvidia.
    assert set(probe["mapped"]) == {"libcudnn.so", "libcublas.so", "libnccl.so", "libcudart.so"}, probe["mapped"]
    assert all(path.startswith(probe["site"] + "/nvidia/") for path in probe["mapped"].values()), probe["mapped"]


@pytest.fixture(scope="module")
def pinned(built: BuildResult, registry: str) -> str:  # noqa: F811 (the imported fixture)
    pushed = reprozoo("image", "push", "--flavour", "cuda", "--base", LOCAL_BASE, "--registry", registry, timeout=1800)
    assert pushed.returncode == 0, pushed.stderr
    reference = pushed.stdout.strip()
    assert re.fullmatch(rf"{re.escape(registry)}/reprozoo@sha256:[0-9a-f]{{64}}", reference)
    return reference


@pytest.fixture(scope="module")
def trained(pinned: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`train --gpus` in the cuda image on this GPU-less host: a 32-example MiniLM run, ClearML offline."""
    with scratch(tmp_path_factory, "cuda-inside") as root:
        result, env = train_in_image(pinned, data_dir, root, "cuda", "--gpus", "--limit-train-samples", "32",
                                     "--limit-eval-samples", "32", "--max-epochs", "1")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        yield {"result": result, "run": root / "runs" / "cuda", "env": env}


@opt_in
def test_train_gpus_falls_back_to_cpu_and_records_the_image(trained: dict[str, Any], built: BuildResult, pinned: str) -> None:
    result, run = trained["result"], trained["run"]
    inside = result.stdout  # `image run` streams the container's output to stdout; its own notes go to stderr
    fallback = [line for line in inside.splitlines() if re.search(r"(?i)\b(gpu|cuda|nvidia)\b.*\b(cpu|driver)\b", line)]
    assert len(fallback) == 1 and "falling back to CPU" in fallback[0], fallback
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["examples"] == 32 and sum(map(sum, metrics["test"]["confusion_matrix"])) == 32
    identity = json.loads((run / "image.json").read_text())
    assert identity["lock"] == "cuda" and identity["lock_sha256"] == file_sha256(LOCK)
    assert identity["image"] == built.ref and identity["image_digest"] == pinned and identity["image_id"] == built.image_id
    task_id = json.loads((run / "task.json").read_text())["task_id"]
    shown = subprocess.run([sys.executable, "-m", "reprozoo", "tasks", "show", task_id, "--json"], capture_output=True,
                           text=True, check=False, env=trained["env"])
    assert shown.returncode == 0, shown.stderr[-1000:]
    record = json.loads(shown.stdout)
    assert record["image"] == built.ref and record["image_digest"] == pinned
    assert record["lock_file"] == "envs/cuda.lock" and record["lock_sha256"] == file_sha256(LOCK)


def test_a_lock_for_another_python_stops_the_build(engine: Any, base_image: str, tmp_path: Path,  # noqa: F811
                                                   copy_checkout: Callable[[Path], Path]) -> None:
    """Not opt-in (nothing is installed): the build compares the base's Python with the lock's header
    before installing anything, with one line naming both."""
    root = copy_checkout(tmp_path / "checkout")
    lock = root / "envs" / "cuda.lock"
    lock.write_text(lock.read_text().replace(" python=3.11 ", " python=3.12 ", 1))
    with pytest.raises(ContainerError, match=r"^image build failed at Step \d+/\d+: /src/envs/cuda\.lock was compiled for Python 3\.12; "
                                             r"the base image has 3\.11 \(returned a non-zero code: 1\)$"):
        build_image(root, "cuda", base_image, use_wheelhouse=False, engine=engine, log=lambda line: None,
                    state=source_state(REPO))
