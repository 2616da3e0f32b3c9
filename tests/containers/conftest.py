"""Fixtures of the container tests: a scratch copy of the files an image is built from."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy_checkout() -> Callable[[Path], Path]:
    """copy(dest): the files the image is built from, in a scratch folder; returns dest."""

    def copy(dest: Path) -> Path:
        for name in ("docker/Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "envs/cpu.lock", "envs/cuda.lock",
                     "docker/wheelhouse/README.md"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, dest / name)
        shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        return dest

    return copy
