"""The image's identity without an engine: the content-addressed tag, build args, locks, and which
image (or lock) this process runs in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from reprozoo.containers.identity import ContainerError, build_args, image_spec, runtime_identity, source_state, source_url
from reprozoo.containers.run import CREDENTIAL_ENV
from reprozoo.provenance import file_sha256

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "rz-sentinel-7f3a9c1e5b"


def test_tag_is_content_addressed(tmp_path: Path, copy_checkout: Callable[[Path], Path]) -> None:
    root = copy_checkout(tmp_path / "a")
    spec = image_spec(root, "cpu")
    assert re.fullmatch(r"reprozoo:cpu-[0-9a-f]{12}", spec.ref)
    assert image_spec(REPO, "cpu") == spec  # same inputs, another folder: same tag
    # Code changes do not change the tag (the record keeps commit + diff); its inputs do.
    (root / "src" / "reprozoo" / "train.py").write_text("# changed\n")
    assert image_spec(root, "cpu").tag == spec.tag
    assert image_spec(root, "cuda").tag != spec.tag
    assert image_spec(root, "cpu", base="reprozoo-base:bookworm-py311").tag != spec.tag
    for name, edit in (("docker/Dockerfile", "\n# x\n"), ("envs/cpu.lock", "\n")):
        other = copy_checkout(tmp_path / name.replace("/", "_"))
        with (other / name).open("a") as handle:
            handle.write(edit)
        assert image_spec(other, "cpu").tag != spec.tag, name
    bumped = copy_checkout(tmp_path / "bumped")
    text = (bumped / "pyproject.toml").read_text()
    (bumped / "pyproject.toml").write_text(text.replace('version = "0.1.0"', 'version = "0.1.1"'))
    assert image_spec(bumped, "cpu").version == "0.1.1"
    assert image_spec(bumped, "cpu").tag != spec.tag


def test_tag_cli_needs_no_engine() -> None:
    result = subprocess.run([sys.executable, "-m", "reprozoo", "image", "tag", "--flavour", "cuda"], capture_output=True,
                            text=True, check=True, cwd=REPO, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"})
    assert result.stdout.strip() == image_spec(REPO, "cuda").ref
    bad = subprocess.run([sys.executable, "-m", "reprozoo", "image", "tag", "--flavour", "rocm"], capture_output=True, text=True,
                         check=False, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: flavour 'rocm' is not one of cpu, cuda"


def test_build_args_carry_identity_and_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIAL_ENV:
        monkeypatch.setenv(name, SENTINEL)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    spec = image_spec(REPO, "cpu", base="reprozoo-base:bookworm-py311")
    state = source_state(REPO)
    args = build_args(spec, state, "https://github.com/example/reprozoo")
    assert SENTINEL not in repr(args)
    assert args["CREATED"] == "2023-11-14T22:13:20Z"
    assert args["IMAGE_REF"] == spec.ref and args["LOCK_SHA256"] == file_sha256(REPO / "envs" / "cpu.lock")
    assert args["BASE_IMAGE"] == "reprozoo-base:bookworm-py311" and args["SOURCE"] == "https://github.com/example/reprozoo"
    monkeypatch.setenv("GITHUB_REPOSITORY", "octo/reprozoo")
    assert source_url(REPO) == "https://github.com/octo/reprozoo"
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", args["REVISION"])


def test_runtime_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REPROZOO_IMAGE", "REPROZOO_IMAGE_DIGEST", "REPROZOO_IMAGE_ID", "REPROZOO_LOCK", "REPROZOO_LOCK_SHA256"):
        monkeypatch.delenv(name, raising=False)
    assert runtime_identity() == {"in_image": False, "image": None, "image_digest": None, "image_id": None,
                                             "lock": None, "lock_sha256": None}
    monkeypatch.setenv("REPROZOO_LOCK", "colab")  # Colab: no image, the lock's sha256 instead of a digest
    ident = runtime_identity(REPO)
    assert ident["in_image"] is False and ident["lock_sha256"] == file_sha256(REPO / "envs" / "colab.lock")
    monkeypatch.setenv("REPROZOO_IMAGE", "reprozoo:cpu-0123456789ab")
    monkeypatch.setenv("REPROZOO_LOCK", "cpu")
    monkeypatch.setenv("REPROZOO_LOCK_SHA256", "c" * 64)
    monkeypatch.setenv("REPROZOO_IMAGE_DIGEST", "127.0.0.1:5000/reprozoo@sha256:" + "d" * 64)
    ident = runtime_identity()
    assert ident["in_image"] and ident["image_digest"].endswith("d" * 64) and ident["lock_sha256"] == "c" * 64


def test_missing_lock_and_unknown_flavour(tmp_path: Path, copy_checkout: Callable[[Path], Path]) -> None:
    root = copy_checkout(tmp_path / "c")
    (root / "envs" / "cuda.lock").unlink()
    with pytest.raises(ContainerError, match=r"cuda.lock is missing; run `make lock`"):
        image_spec(root, "cuda")
    with pytest.raises(ContainerError, match="not one of cpu, cuda"):
        image_spec(root, "tpu")


def test_colab_notebook_installs_the_colab_lock() -> None:
    notebook = json.loads((REPO / "notebooks" / "colab.ipynb").read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    for source in code:  # valid Python once IPython's `!shell` lines are taken for statements
        compile(re.sub(r"^(\s*)!.*$", r"\1pass", source, flags=re.MULTILINE), "cell", "exec")
    text = "\n".join(code)
    assert "pip install --quiet --require-hashes --no-deps -r envs/colab.lock" in text
    assert 'os.environ["REPROZOO_LOCK"] = "colab"' in text and "REPROZOO_LOCK_SHA256" in text
    assert "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL" in text and "-r envs/colab-agent.lock" in text
    assert "userdata.get" in text and not re.search(r"(?i)(secret_key|access_key)\s*=\s*['\"]\w", text)


def test_ci_meta_needs_only_the_standard_library() -> None:
    """`python -m reprozoo.containers ci-meta` (.github/workflows/images.yml) runs with a bare Python: -S
    leaves out site-packages, so an import of the Docker SDK, yaml or torch would fail here."""
    result = subprocess.run([sys.executable, "-S", "-m", "reprozoo.containers", "ci-meta", "--flavour", "cpu",
                             "--registry", "ghcr.io/o"], capture_output=True, text=True, check=False, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src"), "SOURCE_DATE_EPOCH": "1700000000"})
    assert result.returncode == 0, result.stderr
    spec = image_spec(REPO, "cpu")
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"tag={spec.tag}", f"ref={spec.ref}", f"image=ghcr.io/o/reprozoo:{spec.tag}"]
    assert "SOURCE_DATE_EPOCH=1700000000" in lines and "CREATED=2023-11-14T22:13:20Z" in lines


def test_untracked_source_files_make_the_source_dirty(tmp_path: Path) -> None:
    """An untracked file under src/ is copied into the image (and recorded in a run's diff): the build is
    dirty as for a changed tracked file. An untracked file outside src/, or an ignored one, is not code."""
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True)

    git("init", "-q")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("")
    (tmp_path / ".gitignore").write_text("*.log\n__pycache__/\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "start")
    clean = source_state(tmp_path)
    assert not clean.dirty and re.fullmatch(r"[0-9a-f]{40}", clean.revision)
    (tmp_path / "notes.txt").write_text("outside src/\n")
    (tmp_path / "src" / "pkg" / "debug.log").write_text("ignored\n")
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "src" / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert source_state(tmp_path) == clean
    (tmp_path / "src" / "pkg" / "extra.py").write_text("VALUE = 1\n")
    assert source_state(tmp_path).dirty and source_state(tmp_path).revision == clean.revision
    assert build_args(image_spec(REPO, "cpu"), source_state(tmp_path))["REVISION"] == clean.revision + "-dirty"
    (tmp_path / "src" / "pkg" / "extra.py").unlink()
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("VALUE = 2\n")  # a changed tracked file, as before
    assert source_state(tmp_path).dirty
