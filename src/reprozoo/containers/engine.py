"""The Docker engine, through the Docker SDK: a client, image lookup, and whether containers can get a GPU.

The SDK (`docker`) is imported inside the functions, so the stdlib-only modules that import this one
(the CI helper) run without it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from reprozoo.containers.identity import ContainerError


def client() -> Any:
    """A Docker SDK client for the engine the environment names (DOCKER_HOST or the default socket)."""
    import docker
    from docker.errors import DockerException

    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
    except DockerException as err:
        raise ContainerError(f"no Docker engine answers ({first_line(err)}); start one (`make engine` as root) or set DOCKER_HOST") from None
    return engine


def first_line(err: BaseException) -> str:
    """An SDK error as one short line, for a ContainerError's message."""
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def find_image(engine: Any, ref: str) -> Any | None:
    from docker.errors import ImageNotFound

    try:
        return engine.images.get(ref)
    except ImageNotFound:
        return None


def gpu_available(engine: Any, dev: Path = Path("/dev")) -> tuple[bool, str]:
    """Whether containers on this engine can get a GPU, and why not when they cannot."""
    runtimes = (engine.info().get("Runtimes") or {})
    has_device = (dev / "nvidiactl").exists() or any(dev.glob("nvidia[0-9]*"))
    if not has_device:
        return False, f"this host has no NVIDIA GPU ({dev}/nvidia* absent)"
    if "nvidia" not in runtimes and not shutil.which("nvidia-container-cli"):
        return False, "the NVIDIA container toolkit is not installed for this engine"
    return True, "NVIDIA GPU and container toolkit present"
