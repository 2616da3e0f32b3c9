"""Helpers the test files share: the CLI in a subprocess, ClearML kept offline under a folder, a closed port.

Fixtures built on them (`isolated_clearml`) live in conftest.py; test files import these functions with
`from helpers import reprozoo` (conftest.py's folder is on sys.path, for tests in subfolders too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLEARML_API_VARIABLES = ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY")


def reprozoo(*args: str, cwd: Path | str = REPO, env: Mapping[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m reprozoo ARGS…` with this interpreter, run from the repository root by default;
    output captured as text, the exit code left to the caller."""
    return subprocess.run([sys.executable, "-m", "reprozoo", *args], capture_output=True, text=True, check=False,
                          cwd=cwd, env=None if env is None else dict(env), timeout=timeout)


def checkpoint_mtime(path: Path) -> int | None:
    """A checkpoint's mtime, or None while there is none (before the first write; where hard links are
    refused, atomic_torch_save moves the old one away before renaming the new one into place)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def isolate_clearml(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """ClearML offline with nothing of the user's: sessions under ROOT/clearml, reprozoo's cache under
    ROOT/cache, no clearml.conf and no server credentials. Returns the offline sessions' folder."""
    mp.setenv("CLEARML_CACHE_DIR", str(root / "clearml"))
    mp.setenv("REPROZOO_CACHE_DIR", str(root / "cache"))
    mp.setenv("CLEARML_CONFIG_FILE", str(root / "absent-clearml.conf"))
    for name in CLEARML_API_VARIABLES:
        mp.delenv(name, raising=False)
    return root / "clearml" / "offline"


@contextlib.contextmanager
def scratch(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A folder for a module- or session-scoped fixture, removed when that fixture ends. pytest removes
    only a passing test's own tmp_path (pyproject: tmp_path_retention_policy = "failed") and keeps
    every `mktemp` folder until the session ends; with real runs (a MiniLM run directory plus its
    offline session is ~0.8 GB, an MPNet run ~4 GB) the folders of finished modules would fill the disk."""
    root = factory.mktemp(name)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_registry(folder: Path) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, storage under FOLDER: yields its
    address and stops it afterwards. A missing binary or a registry that never listens fails the test."""
    binary = shutil.which("docker-registry")
    if not binary:
        pytest.fail("docker-registry is missing: `apt-get install docker-registry` (docker/engine.sh start installs it)")
    port = free_port()
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with (folder / "registry.log").open("w") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"docker-registry did not listen on 127.0.0.1:{port}: {(folder / 'registry.log').read_text()[-300:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def train_in_image(image: str, data_dir: Path, root: Path, out: str, *train_args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """`reprozoo image run --network none -- train --model all-minilm-l6-v2 … --out runs/OUT` with the
    SST-5 trees, a Hugging Face cache, runs/ and an offline ClearML home under ROOT (nothing of the
    user's, no server credentials): the process and the environment it ran with."""
    env = {**os.environ, "CLEARML_CACHE_DIR": str(root / "clearml" / "cache"), "HF_HOME": str(root / "hf"),
           "REPROZOO_DATA_DIR": str(data_dir), "CLEARML_CONFIG_FILE": str(root / "absent-clearml.conf")}
    for name in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "reprozoo", "image", "run", "--image", image, "--network", "none",
                             "--data-dir", str(data_dir), "--hf-cache", str(root / "hf"), "--runs-dir", str(root / "runs"),
                             "--clearml-dir", str(root / "clearml"), "--", "train", "--model", "all-minilm-l6-v2",
                             *train_args, "--tracking", "offline", "--out", f"runs/{out}"],
                            capture_output=True, text=True, check=False, env=env)
    return result, env


def free_port_base(count: int, start: int = 20000, stop: int = 60000) -> int:
    """A base port whose COUNT consecutive ports all bind on 127.0.0.1 (pid-spread so that
    concurrent sessions probe different places first)."""
    span = stop - start
    first = start + (os.getpid() * 97) % span // 10 * 10
    for offset in range(0, span, 10):
        base = start + (first - start + offset) % span
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1 in {start}..{stop}")


class NoTracker:
    """A tracker that records nothing, for building a run's Trainer arguments (`train._trainer_kwargs`) alone."""

    uploader = None  # no task: no checkpoint goes to storage

    def lightning_logger(self, run_dir: Path) -> list:
        return []

    def lightning_callbacks(self) -> list:
        return []
