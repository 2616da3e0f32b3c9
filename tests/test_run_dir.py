"""A run directory the user cannot create is one line naming the fix, before anything runs (no traceback,
no server task opened): e.g. a `reprozoo image run` --runs-dir the image's user 10001 cannot write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_an_unwritable_run_directory_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    # Root may write anywhere but on a read-only file system: a real read-only tmpfs stands for the
    # folder the container's user cannot write.
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)], capture_output=True).returncode:
            pytest.skip("needs tmpfs to make a folder root cannot write")
    else:
        locked.chmod(0o555)
    try:
        env = {**os.environ, "REPROZOO_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--model", "all-minilm-l6-v2", "--data-dir", str(data_dir),
                               "--tracking", "off", "--out", str(locked / "run")], capture_output=True, text=True, env=env,
                              timeout=300, check=False)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"cannot write {locked / 'run'}" in done.stderr and "chown 10001:10001" in done.stderr
