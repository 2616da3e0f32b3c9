"""Shared fixtures: the real SST-5 trees beside the checkout, and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TREES = REPO.parent / "shared" / "data" / "sst5" / "trees"


def sst5_dir() -> Path:
    path = Path(os.environ.get("REPROZOO_DATA_DIR") or SHARED_TREES)
    if not (path / "train.txt").is_file():
        pytest.fail(f"the SST-5 trees are expected at {path} (../shared/data/sst5/trees); set REPROZOO_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return sst5_dir()


@pytest.fixture(scope="session")
def trees(data_dir: Path):
    from reprozoo.data.sst5 import load_trees

    return load_trees(data_dir)


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("REPROZOO_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hub is unreachable here; fail fast instead of retrying.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
