"""The ClearML server for the `server` tests, taken the way a user provides one (tests/clearml_server.py):
REPROZOO_TEST_CLEARML_CONF, else `make clearml-server` where Docker has its images, else every test
here skips with one line saying what was looked for (a failure where REPROZOO_TEST_REQUIRE_SERVER is
set). The server may be anyone's long-lived one: each test run works in its own project and queues,
and what it left queued or running is stopped at the end (an error: a test leaked it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from proxy import Proxy

from clearml_server import REQUIRE_VARIABLE, BadServer, NoServer, Server, cleanup, provided_server

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this folder talks to the server: `-m "not server"` deselects them all.
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def clearml_server() -> Iterator[Server]:
    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(provided_server())
    except NoServer as err:
        if os.environ.get(REQUIRE_VARIABLE):
            pytest.fail(f"{err} ({REQUIRE_VARIABLE} is set: this run needs a server)", pytrace=False)
        pytest.skip(str(err))
    except BadServer as err:
        pytest.fail(str(err), pytrace=False)
    with stack:
        yield server
        left = cleanup(server)
        if left:
            pytest.fail(f"server tests left on {server.api_url} (now stopped): {'; '.join(left)}", pytrace=False)


@dataclass
class Proxied:
    """The server behind proxies (tests/server/proxy.py): a run given `config_file` loses its apiserver
    with `api.down()` and its fileserver with `files.down()`, and gets them back with `up()`."""

    api: Proxy
    files: Proxy
    config_file: Path


@pytest.fixture
def proxied(clearml_server: Server, tmp_path: Path) -> Iterator[Proxied]:
    with Proxy(clearml_server.api_url) as api, Proxy(clearml_server.files_url) as files:
        conf = clearml_server.conf_copy(tmp_path / "proxied-clearml.conf", api_url=api.url, files_url=files.url)
        yield Proxied(api, files, conf)


class ServerCLI:
    """`reprozoo` subprocesses against the server, each ServerCLI with its own HOME, reprozoo cache
    and ClearML cache (offline sessions) under `root`; `src` picks the checkout that runs."""

    def __init__(self, server: Server, root: Path, src: Path = REPO / "src", cwd: Path | None = None) -> None:
        self.root, self.cwd = root, cwd or root
        self.server = server
        # Every run of this test run records into the run's own project on the (shared) server.
        self.in_project = ("--set", f"tracking.project={server.project}")
        for name in ("home", "cache", "clearml-cache"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.env = server.env()
        self.env.update(HOME=str(root / "home"), REPROZOO_CACHE_DIR=str(root / "cache"),
                        CLEARML_CACHE_DIR=str(root / "clearml-cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))

    @property
    def offline_dir(self) -> Path:
        return self.root / "clearml-cache" / "offline"

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "reprozoo", *args]

    def __call__(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, check=False, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=self.cwd)

    def popen(self, *args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env={**self.env, **(env or {})}, cwd=self.cwd, text=True, **kwargs)

    def python(self, code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`python -c code args…` with the ClearML SDK configured for this server (reads back what it holds)."""
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, timeout=timeout,
                              env=self.env, cwd=self.cwd)


@pytest.fixture(scope="session")
def server_cli(clearml_server: Server) -> Callable[..., ServerCLI]:
    """server_cli(root, src=…, cwd=…) → a ServerCLI (module-scoped runs build theirs with this)."""
    return lambda root, **kwargs: ServerCLI(clearml_server, root, **kwargs)


@pytest.fixture
def server_env(clearml_server: Server, tmp_path: Path) -> dict[str, str]:
    """clearml_server.env() for one test: its own HOME, reprozoo cache and ClearML cache (offline sessions)."""
    return ServerCLI(clearml_server, tmp_path).env


@pytest.fixture
def reprozoo_server(clearml_server: Server, tmp_path: Path) -> ServerCLI:
    """`reprozoo_server("train", …)`: the CLI against the server, like tests/test_cli.py's reprozoo(*args)."""
    return ServerCLI(clearml_server, tmp_path)


DIRTY_LINE = "# reprozoo server tests: an uncommitted change, recorded as the task's git diff\n"


@pytest.fixture(scope="session")
def dirty_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch git repository of this checkout's code, committed, plus one uncommitted change:
    a run from its src/ records a known commit and diff (the real checkout may be clean or not)."""
    root = tmp_path_factory.mktemp("checkout")
    for name in ("pyproject.toml", "envs/cpu.lock", "envs/cpu.txt"):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    git = ["git", "-C", str(root), "-c", "user.name=reprozoo tests", "-c", "user.email=tests@reprozoo.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "scratch"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    with (root / "src" / "reprozoo" / "__init__.py").open("a") as init:
        init.write(DIRTY_LINE)
    return root


@pytest.fixture(scope="session")
def agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clearml-agent 3.0.3 in a venv of its own (envs/colab-agent.lock), installed once per session."""
    from agents import install_agent

    try:
        return install_agent(tmp_path_factory.getbasetemp() / "clearml-agent-venv")
    except subprocess.CalledProcessError as err:
        pytest.skip(f"agent tests: clearml-agent could not be installed from envs/colab-agent.lock: {err.stderr.strip()[-200:]}")
