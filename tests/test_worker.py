"""`reprozoo worker`: commands run in forks of a process that has already imported everything, and
give what a new process gives, bit for bit, through interruptions (real MiniLM + SST-5 sentences)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import isolate_clearml, scratch
from reprozoo import worker
from reprozoo.resume import LAST
from test_resume import train_args, wait_for_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A worker on a socket, and the environment it serves (clients add REPROZOO_WORKER)."""
    with scratch(tmp_path_factory, "worker") as root, pytest.MonkeyPatch.context() as mp:
        isolate_clearml(mp, root)
        mp.setenv("REPROZOO_DATA_DIR", str(data_dir))
        mp.delenv("REPROZOO_WORKER", raising=False)
        env = dict(os.environ)
        sock, log = root / "w.sock", root / "worker.log"
        with worker.started(sock, log, env):
            yield sock, env
        assert "stopped" in log.read_text() and not sock.exists(), log.read_text()


def via(served: tuple[Path, dict[str, str]], **extra: str) -> dict[str, str]:
    sock, env = served
    return {**env, "REPROZOO_WORKER": str(sock), **extra}


def runner_ended(run_dir: Path, timeout: float = 120) -> None:
    """Wait until no process holds the run directory's lock (the run's own flock)."""
    handle = os.open(run_dir, os.O_RDONLY)
    deadline = time.time() + timeout
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                assert time.time() < deadline, f"{run_dir} still held {timeout} s after its client died"
                time.sleep(0.2)
    finally:
        os.close(handle)


def test_runs_in_the_worker_equal_a_new_process_through_sigterm_and_kill_9(served: tuple[Path, dict[str, str]],
                                                                            data_dir: Path, tmp_path: Path) -> None:
    """One run in a new process; the same run through the worker, its client sent SIGTERM (passed on:
    a checkpoint, exit 143), resumed through the worker, that client killed with -9 (its runner gets
    SIGTERM from the session), resumed again: the same metrics.json, byte for byte."""
    straight = tmp_path / "straight"
    alone = subprocess.run(train_args(data_dir, straight), capture_output=True, text=True, env=served[1])
    assert alone.returncode == 0, alone.stderr[-2000:]

    out = tmp_path / "served"
    last = out / "checkpoints" / LAST
    client = subprocess.Popen(train_args(data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=via(served))
    wait_for_checkpoints(client, last, writes=1)
    client.send_signal(signal.SIGTERM)
    _, err = client.communicate(timeout=120)
    assert client.returncode == 128 + signal.SIGTERM, err
    assert "running in worker" in err and "resume with: reprozoo train --resume" in err, err
    assert not (out / "metrics.json").exists()

    resume = [sys.executable, "-m", "reprozoo", "train", "--resume", str(out)]
    client = subprocess.Popen(resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=via(served))
    wait_for_checkpoints(client, last, writes=2)
    client.kill()
    client.wait()
    runner_ended(out)
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(resume, capture_output=True, text=True, env=via(served))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "running in worker" in resumed.stderr
    assert (out / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()


def test_a_command_the_worker_cannot_serve_runs_in_its_own_process(served: tuple[Path, dict[str, str]],
                                                                      tmp_path: Path) -> None:
    """Another environment, or no worker on the socket: one line that says why and what to do, then the
    command runs here. A user error keeps its line and exit code 2 through the worker."""
    other = subprocess.run([sys.executable, "-m", "reprozoo", "models", "--names"], capture_output=True, text=True,
                           env=via(served, HF_HOME=str(tmp_path / "hf")))
    assert other.returncode == 0 and "all-minilm-l6-v2" in other.stdout.split()
    assert other.stderr.splitlines() == [f"reprozoo: the worker on {served[0]} cannot run this: it was started in another "
                                         "environment (differs in HF_HOME); start it from this shell; running here"]

    nobody = subprocess.run([sys.executable, "-m", "reprozoo", "models", "--names"], capture_output=True, text=True,
                            env={**served[1], "REPROZOO_WORKER": str(tmp_path / "none.sock")})
    assert nobody.returncode == 0 and "all-minilm-l6-v2" in nobody.stdout.split()
    assert "no worker on" in nobody.stderr and "start one with `reprozoo worker`" in nobody.stderr

    bad = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--model", "no-such-model"], capture_output=True,
                         text=True, env=via(served))
    assert bad.returncode == 2
    assert "running in worker" in bad.stderr and "error: unknown model 'no-such-model'" in bad.stderr


def test_a_served_command_runs_in_the_clients_directory_with_its_umask(served: tuple[Path, dict[str, str]],
                                                                         tmp_path: Path) -> None:
    """The worker started with umask 022 in the repository; the client's 077 and folder are the run's."""
    chart = subprocess.run([sys.executable, "-m", "reprozoo", "data", "stats", "--out", "dist.png"], capture_output=True,
                           text=True, env=via(served), cwd=tmp_path, preexec_fn=lambda: os.umask(0o077))
    assert chart.returncode == 0 and "running in worker" in chart.stderr, chart.stderr
    assert (tmp_path / "dist.png").stat().st_mode & 0o777 == 0o600
