"""A real ClearML server on 127.0.0.1 for the `server` tests: the kit in ../shared/clearml-server
(the open-source apiserver + fileserver, SSPL; called, never copied), installed and started cold
once per session on a free port base, stopped by its recorded PIDs even when tests fail.

Where the kit cannot be installed or started (no kit, no network for its venvs, no redis) the
tests skip and say why, as the Docker tests do.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import free_port_base

REPO = Path(__file__).resolve().parents[2]
KIT = Path(os.environ.get("REPROZOO_CLEARML_SERVER_KIT") or REPO.parent / "shared" / "clearml-server")
KIT_LOCK = Path(tempfile.gettempdir()) / "reprozoo-clearml-server-kit-install.lock"  # one install or start at a time
PORTS = 6  # api, files, redis, mongo, es, es proxy (the kit's CLEARML_LOCAL_PORT_BASE + 0..5)
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this folder talks to the server: `-m "not server"` deselects them all.
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.server)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _answers(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, with an error status (the fileserver's / is a 404/405)
    except OSError:
        return False


@dataclass(frozen=True)
class LocalServer:
    """A running kit server. `env()` is what a subprocess needs to use it."""

    state: Path
    config_file: Path
    api_url: str
    files_url: str
    port_base: int
    # name → (argv, environ, cwd) of a process stopped by stop_api/stop_files, for the restart
    _stopped: dict[str, tuple[list[str], dict[str, str], str]] = field(default_factory=dict, repr=False, compare=False)
    _started: list[subprocess.Popen] = field(default_factory=list, repr=False, compare=False)

    def env(self) -> dict[str, str]:
        """os.environ, pointed at this server alone: its clearml.conf, no CLEARML_API_* or offline
        override from the caller's shell, and ClearML's cache (offline sessions too) under state."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_API_", "TRAINS_API_"))}
        for key in ("CLEARML_OFFLINE_MODE", "TRAINS_OFFLINE_MODE", "CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID",
                    "CLEARML_TASK_ID", "TRAINS_TASK_ID"):
            env.pop(key, None)
        env["CLEARML_CONFIG_FILE"] = str(self.config_file)
        env["CLEARML_CACHE_DIR"] = str(self.state / "clearml-cache")
        env["CLEARML_LOG_ENVIRONMENT"] = ""
        return env

    def pid(self, name: str) -> int:
        return int((self.state / "run" / f"{name}.pid").read_text())

    def _stop(self, name: str) -> None:
        pid = self.pid(name)
        if not _alive(pid):
            return
        proc = Path(f"/proc/{pid}")
        argv = (proc / "cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        environ = dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode().split("\0") if "=" in item)
        self._stopped[name] = (argv, environ, os.readlink(proc / "cwd"))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in self._started:
            child.poll()  # reap a restarted one

    def _start(self, name: str, probe: str) -> None:
        if name not in self._stopped:
            return  # never stopped: still running
        argv, environ, cwd = self._stopped.pop(name)
        with open(self.state / "logs" / f"{name}.log", "ab") as log:
            child = subprocess.Popen(argv, env=environ, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._started.append(child)
        (self.state / "run" / f"{name}.pid").write_text(f"{child.pid}\n")
        deadline = time.monotonic() + 60
        while not _answers(probe):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the restarted {name} server did not answer; see {self.state}/logs/{name}.log")
            time.sleep(0.1)

    def stop_api(self) -> None:
        """kill -9 the apiserver alone (redis, mongo, es keep its data)."""
        self._stop("api")

    def start_api(self) -> None:
        """Start the apiserver stopped by stop_api again, exactly as start.sh had, and wait for it."""
        self._start("api", f"{self.api_url}/debug.ping")

    def stop_files(self) -> None:
        self._stop("files")

    def start_files(self) -> None:
        self._start("files", f"{self.files_url}/")

    def recorded_pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.state / "run").glob("*.pid") if p.read_text().strip().isdigit()]

    def shutdown(self) -> None:
        pids = self.recorded_pids()
        subprocess.run([str(KIT / "stop.sh"), str(self.state)], capture_output=True, check=False, timeout=60)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for child in self._started:
            child.poll()


def _comes_up(server: LocalServer, name: str, probe: str, seconds: float = 30) -> bool:
    """Whether the kit's process `name` answers `probe` within `seconds` (False at once when it exited)."""
    deadline = time.monotonic() + seconds
    while not _answers(probe):
        if not _alive(server.pid(name)) or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _install_or_skip() -> None:
    if not (KIT / "install.sh").is_file():
        pytest.skip(f"server tests need the local ClearML server kit at {KIT} (or REPROZOO_CLEARML_SERVER_KIT)")
    try:
        # One install at a time: the suite's workers may each start a server.
        with KIT_LOCK.open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            done = subprocess.run([str(KIT / "install.sh")], capture_output=True, text=True, timeout=1200, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"server tests: {KIT}/install.sh ran for over 20 minutes")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"server tests: the ClearML server kit could not be installed ({KIT}/install.sh: {tail[0]})")


@pytest.fixture(scope="session")
def clearml_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    _install_or_skip()
    state = tmp_path_factory.mktemp("clearml-server")
    server: LocalServer | None = None
    try:
        # start.sh insists on the apiserver alone. The fileserver logs in to it at start-up and exits when
        # that fails for ~15 s; on a loaded machine the apiserver took longer (seen with a training job
        # beside the suite: every agent test then failed to upload). Start again, warm, until both answer.
        # One server starts at a time (the suite's server units each start one): started together while
        # the kit installed, neither fileserver came up in three tries. Each try takes fresh ports: the
        # previous try's apiserver port was still in use ("Address already in use"), and start.sh failed.
        with KIT_LOCK.open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            for _ in range(3):
                base = free_port_base(PORTS)
                server = LocalServer(state=state, config_file=state / "clearml.conf", api_url=f"http://127.0.0.1:{base}",
                                     files_url=f"http://127.0.0.1:{base + 1}", port_base=base)
                started = subprocess.run([str(KIT / "start.sh"), str(state)], capture_output=True, text=True, timeout=180,
                                         check=False, env={**os.environ, "CLEARML_LOCAL_PORT_BASE": str(base)})
                if started.returncode != 0:
                    tail = (started.stderr or started.stdout).strip().splitlines()[-1:] or ["no output"]
                    pytest.skip(f"server tests: the local ClearML server did not start ({tail[0]})")
                if _comes_up(server, "files", f"{server.files_url}/"):
                    break
                server.shutdown()
            else:
                pytest.fail(f"the local ClearML fileserver did not start in 3 tries; see {state}/logs/files.log")
        yield server
    finally:
        if server is not None:
            server.shutdown()


class ServerCLI:
    """`reprozoo` subprocesses against the server, each ServerCLI with its own HOME, reprozoo cache
    and ClearML cache (offline sessions) under `root`; `src` picks the checkout that runs."""

    def __init__(self, server: LocalServer, root: Path, src: Path = REPO / "src", cwd: Path | None = None) -> None:
        self.root, self.cwd = root, cwd or root
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
def server_cli(clearml_server: LocalServer) -> Callable[..., ServerCLI]:
    """server_cli(root, src=…, cwd=…) → a ServerCLI (module-scoped runs build theirs with this)."""
    return lambda root, **kwargs: ServerCLI(clearml_server, root, **kwargs)


@pytest.fixture
def server_env(clearml_server: LocalServer, tmp_path: Path) -> dict[str, str]:
    """clearml_server.env() for one test: its own HOME, reprozoo cache and ClearML cache (offline sessions)."""
    return ServerCLI(clearml_server, tmp_path).env


@pytest.fixture
def reprozoo_server(clearml_server: LocalServer, tmp_path: Path) -> ServerCLI:
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
