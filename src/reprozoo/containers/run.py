"""Running reprozoo in an image: what a container gets (mounts, environment, GPUs), decided without an
engine (`plan_container`), then the run itself, for a command (`reprozoo image run`) or a RunConfig
(sweeps and replays in an image).

Credentials reach a container only at run time, from the host's environment (CREDENTIAL_ENV);
`REPROZOO_IMAGE_DIGEST` and `REPROZOO_IMAGE_ID` tell the run inside which image it is in.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reprozoo import run_spec
from reprozoo.config import RunConfig
from reprozoo.containers.engine import client, first_line, gpu_available
from reprozoo.containers.identity import ContainerError, image_spec, project_root
from reprozoo.containers.registry import ensure_image, repo_digest, resolve_local_image
from reprozoo.session import offline_root

IMAGE_USER = "10001:10001"  # docker/Dockerfile: USER
CONTAINER_HOME = "/home/reprozoo"
CONTAINER_DATA = "/data/sst5"
CONTAINER_WORK = "/work"
# Handed to a container from the host environment at run time when set; never to a build.
CREDENTIAL_ENV = (
    "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY", "CLEARML_API_HOST", "CLEARML_WEB_HOST",
    "CLEARML_FILES_HOST", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
)
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "CLEARML_OFFLINE_MODE")


def decide_gpus(requested: str, available: bool, why: str) -> tuple[bool, list[str]]:
    """--gpus auto|all|none against what the host has: whether to ask for GPUs, and what to tell the user."""
    if requested not in ("auto", "all", "none"):
        raise ContainerError(f"--gpus {requested!r}: use auto, all or none")
    notes = []
    use = requested == "all" or (requested == "auto" and available)
    if use and not available:
        notes.append(f"--gpus all: {why}; running on CPU")
        use = False
    notes.append(f"using the GPUs ({why})" if use else f"no GPU: running on CPU ({why})")
    return use, notes


@dataclass
class ContainerPlan:
    """One container run: image, command, environment, mounts (host path → bind, mode) and resources."""

    image: str
    image_digest: str | None
    command: list[str]
    environment: dict[str, str]
    mounts: dict[str, dict[str, str]]
    gpus: bool
    user: str | None
    shm_size: str
    ipc_host: bool
    network: str

    def public(self) -> dict[str, Any]:
        """For printing: credential values masked."""
        data = asdict(self)
        data["environment"] = {k: ("***" if k in CREDENTIAL_ENV else v) for k, v in self.environment.items()}
        return data


def plan_container(image_ref: str, image_id: str, digest: str | None, command: list[str], *, data_dir: Path | None,
                   hf_cache: Path, runs_dir: Path, clearml_dir: Path | None, gpus: bool, user: str | None = None,
                   shm_size: str = "2g", ipc_host: bool = False, network: str = "bridge",
                   host_env: dict[str, str] | None = None) -> ContainerPlan:
    """Everything a container run needs, decided without touching the engine (testable)."""
    host_env = dict(os.environ if host_env is None else host_env)
    environment = {k: host_env[k] for k in (*CREDENTIAL_ENV, *PASSTHROUGH_ENV) if host_env.get(k)}
    environment["REPROZOO_IMAGE_DIGEST"] = digest or ""
    environment["REPROZOO_IMAGE_ID"] = image_id
    mounts = {
        str(runs_dir.resolve()): {"bind": f"{CONTAINER_WORK}/runs", "mode": "rw"},
        str(hf_cache.resolve()): {"bind": f"{CONTAINER_HOME}/.cache/huggingface", "mode": "rw"},
    }
    if data_dir is not None:
        mounts[str(data_dir.resolve())] = {"bind": CONTAINER_DATA, "mode": "ro"}
        environment["REPROZOO_DATA_DIR"] = CONTAINER_DATA
    if clearml_dir is not None:
        mounts[str(clearml_dir.resolve())] = {"bind": f"{CONTAINER_HOME}/.clearml", "mode": "rw"}
    return ContainerPlan(image=image_ref, image_digest=digest, command=command, environment=environment, mounts=mounts,
                         gpus=gpus, user=user, shm_size=shm_size, ipc_host=ipc_host, network=network)


def prepare_host_dirs(plan: ContainerPlan) -> None:
    """Create the writable mounts; as root on the host, hand new ones to the image's user."""
    for host, spec in plan.mounts.items():
        if spec["mode"] != "rw":
            continue
        path = Path(host)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and plan.user in (None, IMAGE_USER) and created:
            uid, gid = (int(x) for x in IMAGE_USER.split(":"))
            os.chown(path, uid, gid)


def run_container(engine: Any, plan: ContainerPlan, log: Callable[[str], None] = print,
                  out: Callable[[str], None] | None = None) -> int:
    """Run the plan, stream its output, remove the container, return its exit code."""
    from docker.errors import APIError
    from docker.types import DeviceRequest

    out = out or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    prepare_host_dirs(plan)
    kwargs: dict[str, Any] = {
        "command": plan.command, "environment": plan.environment, "volumes": plan.mounts, "detach": True,
        "working_dir": CONTAINER_WORK, "network_mode": plan.network, "init": True,
    }
    if plan.user:
        kwargs["user"] = plan.user
    if plan.ipc_host:
        kwargs["ipc_mode"] = "host"
    else:
        kwargs["shm_size"] = plan.shm_size
    if plan.gpus:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    try:
        container = engine.containers.run(plan.image, **kwargs)
    except APIError as err:
        raise ContainerError(f"could not start {plan.image}: {first_line(err)}") from None
    try:
        for piece in container.logs(stream=True, follow=True):
            out(piece.decode(errors="replace"))
        status = container.wait()
    finally:
        with contextlib.suppress(APIError):
            container.remove(force=True)
    return int(status.get("StatusCode", 1))


def default_hf_cache() -> Path:
    """The host's Hugging Face cache a container gets mounted: $HF_HOME, else ~/.cache/huggingface."""
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def _use_gpus(engine: Any, requested: str, log: Callable[[str], None]) -> bool:
    use, notes = decide_gpus(requested, *gpu_available(engine))
    for note in notes:
        log(note)
    return use


def run_command_in_image(command: list[str], *, flavour: str = "cpu", base: str | None = None, image: str | None = None,
                         gpus: str = "auto", data_dir: Path | None = None, hf_cache: Path | None = None,
                         runs_dir: Path = Path("runs"), clearml_dir: Path | None = None, network: str = "bridge",
                         shm_size: str = "2g", ipc_host: bool = False, user: str | None = None,
                         log: Callable[[str], None] = print, engine: Any = None) -> int:
    """`reprozoo image run`: a reprozoo command inside `image` (default: this checkout's tag), with the SST-5
    trees ($REPROZOO_DATA_DIR unless `data_dir`) read-only, the HF cache, runs/ and the ClearML home
    mounted. Returns the container's exit code."""
    engine = engine or client()
    ref = image or image_spec(project_root(), flavour, base).ref
    found = resolve_local_image(engine, project_root(), flavour, base, ref)
    digest = image if image and "@sha256:" in image else repo_digest(found)
    if digest:
        log(f"image {ref} = {digest}")
    else:
        log(f"image {ref} has no repo digest yet (not pushed); the run records its image id {found.id[:19]}")
    use_gpu = _use_gpus(engine, gpus, log)
    data = data_dir or (Path(os.environ["REPROZOO_DATA_DIR"]) if os.environ.get("REPROZOO_DATA_DIR") else None)
    if data is not None and not (data / "train.txt").is_file():
        raise ContainerError(f"--data-dir {data} holds no train.txt; pass the folder with the SST-5 trees")
    plan = plan_container(ref, found.id, digest, command, data_dir=data, hf_cache=hf_cache or default_hf_cache(),
                          runs_dir=runs_dir, clearml_dir=clearml_dir or Path.home() / ".clearml", gpus=use_gpu, user=user,
                          shm_size=shm_size, ipc_host=ipc_host, network=network)
    return run_container(engine, plan)


def run_config_in_image(cfg: RunConfig, image: str, *, runs_dir: Path, data_dir: Path | None, gpus: str = "auto",
                        network: str = "bridge", log: Callable[[str], None] = print,
                        out: Callable[[str], None] | None = None, engine: Any = None) -> tuple[int, Path]:
    """Train a RunConfig inside `image`: `reprozoo train --config` with the data mounted read-only, the
    run directory under the mounted `runs_dir`, and the offline ClearML sessions written to this
    machine's own offline folder (so the record is readable here). Returns (exit code, host run dir)."""
    engine = engine or client()
    found = ensure_image(engine, image, log)
    use_gpu = _use_gpus(engine, gpus, log)
    name = Path(cfg.out_dir).name if cfg.out_dir else \
        f"{Path(cfg.model.name).name.replace('/', '_')}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    data = data_dir or (Path(cfg.data.data_dir) if cfg.data.data_dir else None) or \
        (Path(os.environ["REPROZOO_DATA_DIR"]) if os.environ.get("REPROZOO_DATA_DIR") else None)
    if data is None or not (data / "train.txt").is_file():
        raise ContainerError(f"no SST-5 trees to mount ({data}); pass the folder with train.txt, dev.txt, test.txt")
    # The data is mounted at CONTAINER_DATA, which $REPROZOO_DATA_DIR names inside.
    inside = run_spec.executable(cfg, None, run_spec.Where(out_dir=f"{CONTAINER_WORK}/runs/{name}", data_dir=None))
    runs_dir.mkdir(parents=True, exist_ok=True)
    config_file = runs_dir / f"{name}.config.yaml"
    inside.save(config_file)
    clearml_cache = offline_root().parent
    digest = image if "@sha256:" in image else repo_digest(found)
    plan = plan_container(image, found.id, digest, ["train", "--config", f"{CONTAINER_WORK}/runs/{config_file.name}"],
                          data_dir=data, hf_cache=default_hf_cache(), runs_dir=runs_dir, clearml_dir=None, gpus=use_gpu,
                          network=network)
    plan.mounts[str(clearml_cache.resolve())] = {"bind": f"{CONTAINER_HOME}/clearml-cache", "mode": "rw"}
    plan.environment["CLEARML_CACHE_DIR"] = f"{CONTAINER_HOME}/clearml-cache"
    return run_container(engine, plan, log=log, out=out), runs_dir / name
