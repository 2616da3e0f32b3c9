"""notebooks/colab.ipynb executed headless in a simulated Colab (tests/colab_sim.py says how), MODE=train
(issue 19); MODE=agent is tests/server/test_colab_agent.py."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbclient.exceptions import CellExecutionError

from colab_sim import REPO, TRAIN_ARGS, Colab, python_and_lock, runner_site_packages, simulated_colab
from helpers import scratch


@pytest.fixture(scope="module")
def colab(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Colab]:
    with scratch(tmp_path_factory, "colab") as root:
        # ClearML offline under the runtime, nothing of the user's; SST-5 from the shared trees.
        yield simulated_colab(root, {"CLEARML_CACHE_DIR": str(root / "clearml"), "REPROZOO_CACHE_DIR": str(root / "cache"),
                                     "CLEARML_CONFIG_FILE": str(root / "absent-clearml.conf"),
                                     "REPROZOO_DATA_DIR": str(data_dir)})


def test_train_mode_runs_a_short_real_run_and_shows_its_record(colab: Colab, tmp_path: Path) -> None:
    before = runner_site_packages()
    started = time.monotonic()
    text = colab.run(tmp_path, MODE="train", TRAIN_ARGS=TRAIN_ARGS)
    seconds = time.monotonic() - started
    lock = colab.checkout / "envs" / "colab.lock"
    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    committed = subprocess.run(["git", "show", f"{colab.commit}:envs/colab.lock"], cwd=REPO, capture_output=True, check=True).stdout
    assert sha == hashlib.sha256(committed).hexdigest()  # the lock of the commit the notebook checked out
    line = python_and_lock(text)
    print(f"\ncolab notebook (train) in {seconds:.0f} s; the notebook said: {line}")
    for note in (n for n in text.splitlines() if n.startswith("note: ")):
        print(f"the notebook said: {note}")
    site = Path(sysconfig.get_paths(vars={"base": str(colab.python.parents[1]), "platbase": str(colab.python.parents[1])})["purelib"])
    installed = sorted(d.name.split("-")[0] for d in site.glob("*.dist-info"))
    print(f"what pip put into the kernel's venv: {installed} (every lock pin not listed was found already installed: the runner's packages, as Colab's preinstalled ones)")
    # The kernel is the simulated Colab Python (not the runner's), and it installed the checkout's colab lock.
    assert line.startswith(f"python {platform.python_version()} {colab.python};")
    compiled_for = lock.read_text().splitlines()[0].split("python=")[1].split()[0]  # its header: "# reprozoo-lock … python=3.12 …"
    assert f"lock envs/colab.lock (compiled for CPython {compiled_for}) sha256 {sha}" in line
    assert "installed tree = envs/colab.lock" in text, text[-3000:]
    assert f"reprozoo {colab.checkout / 'src' / 'reprozoo' / '__init__.py'}" in text, text[-3000:]
    # The record it showed, and the run directory it came from (in the /content clone).
    runs = list((colab.checkout / "runs").glob("*/image.json"))
    assert len(runs) == 1, text[-3000:]
    run_dir = runs[0].parent
    image = json.loads(runs[0].read_text())
    assert image == {"in_image": False, "image": None, "image_digest": None, "image_id": None, "lock": "colab", "lock_sha256": sha}
    assert f"run {run_dir.relative_to(colab.checkout)}" in text and f'"lock_sha256": "{sha}"' in text
    provenance = json.loads((run_dir / "provenance.json").read_text())
    environment = provenance["environment"]
    assert (environment["lock_file"], environment["lock_sha256"]) == ("envs/colab.lock", sha)
    assert environment["python"] == platform.python_version() and environment["python_executable"] == str(colab.python)
    assert provenance["code"]["root"] == str(colab.checkout) and provenance["code"]["commit"] == colab.commit
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 1 and 0 <= metrics["test"]["macro_f1"] <= 1, metrics
    # Nothing went into the test runner's environment.
    assert runner_site_packages() == before


def test_the_placeholder_repo_url_fails_in_one_line_naming_the_fix(colab: Colab) -> None:
    client = colab.client(120, REPO_URL="https://github.com/OWNER/reprozoo")
    with pytest.raises(CellExecutionError) as failed:
        colab.execute(client)
    assert failed.value.ename == "SystemExit"
    assert failed.value.evalue == ("REPO_URL is not set: type the git URL of reprozoo (or your fork) into the Parameters form,"
                                   " e.g. https://github.com/<you>/reprozoo, and run again")
    ran = [cell for cell in client.nb.cells if cell.get("execution_count")]
    assert "REPO_URL is not set" in ran[-1].source  # it stopped there: nothing cloned, installed or run
