"""A simulated Colab runtime for notebooks/colab.ipynb, executed headless (nbclient + ipykernel).

The simulation: a tmp folder for /content (the notebook's CONTENT parameter); REPO_URL a local
`git clone` of the repository this file is in, COMMIT its HEAD; a kernel whose Python already has
torch: a fresh venv whose site-packages has a .pth line naming this interpreter's site-packages (as
Colab's Python has torch and friends preinstalled). The notebook's own `pip install`s go into that
venv, never into the test runner's; reprozoo is then imported from the /content clone. Parameters go
in as papermill does it: a cell injected after the cell tagged `parameters` (which Colab shows as a form).

The Python is this machine's, not Colab's 3.12: envs/colab.lock (compiled for CPython 3.12) carries
cp311 wheels too and installs on 3.11 with --require-hashes --no-deps (an install into an empty venv
is too slow for the suite). Here every pin is already satisfied by the runner's packages (the same
versions: the lock takes envs/cpu.lock's), so pip installs nothing, as it skips Colab's preinstalled
matching ones.
The test prints which Python ran and which lock (with its sha256) was installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
KERNEL = "reprozoo-colab-sim"
# A short real run: one step of 32 sentences, scored on 16 (as tests/server/agents.py's TINY).
TRAIN_ARGS = ("--limit-train-samples 32 --limit-eval-samples 16 --max-length 32 --max-epochs 1 --tracking offline"
              " --set tracking.upload_checkpoints=false")
# What the runner's environment must not pass to the kernel: its own checkout on the import path,
# its venv, its data directory, a ClearML server or task of the caller's (a test hands in its own).
DROPPED = ("PYTHONPATH", "VIRTUAL_ENV", "REPROZOO_DATA_DIR", "CLEARML_CONFIG_FILE", "CLEARML_TASK_ID", "CLEARML_PROC_MASTER_ID",
           "CLEARML_OFFLINE_MODE")


@dataclass
class Colab:
    """A simulated Colab runtime under `root`: CONTENT, REPO_URL (a local clone), the kernel's Python."""

    root: Path
    content: Path
    repo_url: str
    commit: str
    python: Path
    kernels: Path
    env: dict[str, str]

    @property
    def checkout(self) -> Path:
        return self.content / "reprozoo"

    def client(self, timeout: float, **params: str) -> NotebookClient:
        nb = inject_parameters(nbformat.read(NOTEBOOK, as_version=4),
                               {"REPO_URL": self.repo_url, "COMMIT": self.commit, "CONTENT": str(self.content), **params})
        km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.kernels)]))
        # Colab's working folder is /content: the kernel starts there.
        return NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(self.content)}})

    def execute(self, client: NotebookClient) -> None:
        """Run CLIENT's notebook in a new kernel, then shut that kernel down: nbclient only shuts down
        kernels it started itself, and this one (our kernel spec) it was handed."""
        try:
            client.execute(env=self.env)
        finally:
            if client.km is not None and client.km.has_kernel:
                client.km.shutdown_kernel(now=True)

    def run(self, keep: Path, timeout: float = 600, **params: str) -> str:
        """Execute the notebook with PARAMS; returns every cell's text output, in order. The executed
        notebook goes to KEEP/executed.ipynb (a test's tmp_path: kept when the test fails)."""
        client = self.client(timeout, **params)
        try:
            self.execute(client)
        finally:
            nbformat.write(client.nb, keep / "executed.ipynb")
        return outputs(client.nb)


def inject_parameters(nb: Any, params: dict[str, str]) -> Any:
    """papermill's way: a cell tagged `injected-parameters` right after the one tagged `parameters`."""
    at = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(at) == 1, "notebooks/colab.ipynb needs exactly one cell tagged `parameters`"
    source = "# Parameters (injected)\n" + "".join(f"{name} = {value!r}\n" for name, value in params.items())
    nb.cells.insert(at[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


def outputs(nb: Any) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            elif out.get("output_type") in ("execute_result", "display_data"):
                text.append(out.get("data", {}).get("text/plain", ""))
            elif out.get("output_type") == "error":
                text.append(f"{out['ename']}: {out['evalue']}")
    return "".join(text)


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def simulated_colab(root: Path, env: dict[str, str]) -> Colab:
    """The runtime (see the module's docstring); ENV: what the kernel gets on top of a clean copy of os.environ."""
    # REPO_URL: a clone of this repository's HEAD (CI's fresh clone too), checked out clean, without a
    # remote: a run recorded from it names it (file://…) and no uncommitted change of this checkout's.
    origin = root / "origin"
    commit = _git("rev-parse", "HEAD")
    _git("clone", "--quiet", str(REPO), str(origin))
    _git("checkout", "--quiet", "--detach", commit, cwd=origin)
    _git("remote", "remove", "origin", cwd=origin)
    python_dir = root / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(python_dir)], check=True, timeout=120)
    kernel_site = Path(sysconfig.get_paths(vars={"base": str(python_dir), "platbase": str(python_dir)})["purelib"])
    # Plain paths, not site dirs: the runner's own path files (its editable reprozoo) are not read, so
    # the kernel's reprozoo can only be the notebook's install. "zz": after the notebook's own .pth files.
    runner = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (kernel_site / "zz-colab-sim-preinstalled.pth").write_text("".join(f"{path}\n" for path in runner))
    python = python_dir / "bin" / "python"
    kernels = root / "kernels"
    (kernels / KERNEL).mkdir(parents=True)
    (kernels / KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (simulated Colab)", "language": "python"}))
    content = root / "content"
    (content / "home").mkdir(parents=True)
    base = {k: v for k, v in os.environ.items() if k not in DROPPED and not k.startswith(("CLEARML_API_", "PYTEST_"))}
    base.update(HOME=str(content / "home"), PATH=f"{python_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                # The HOME is new: pip keeps the user's cache (the agent's wheels are not fetched again).
                PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"),
                PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return Colab(root=root, content=content, repo_url=str(origin), commit=commit, python=python, kernels=kernels,
                 env={**base, **env})


def runner_site_packages() -> dict[str, float]:
    """Every entry of the runner's site-packages with its mtime: the notebook must change none."""
    folder = Path(sysconfig.get_paths()["purelib"])
    return {entry.name: entry.stat().st_mtime for entry in folder.iterdir()}


def python_and_lock(text: str) -> str:
    """The notebook's line naming the kernel's Python and the lock it installed."""
    lines = [line for line in text.splitlines() if line.startswith("python ") and "lock envs/" in line]
    assert len(lines) == 1, text[-4000:]
    return lines[0]
