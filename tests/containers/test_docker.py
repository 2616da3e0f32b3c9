"""Real containers: a real engine (dockerd), a local Debian base, the cpu image built offline from the
host's wheelhouse, a real registry on 127.0.0.1, pull by digest, a MiniLM training inside.

Needs root (or a running engine), Debian's docker.io, docker-registry and debootstrap; `docker/engine.sh
start` installs and starts what is missing. Skips, saying why, only when no engine can start.
First run ~10 min (debootstrap, wheel download, build); later runs reuse the base tarball, the wheels
and the engine's layer cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import local_registry, reprozoo, scratch, train_in_image
from reprozoo.containers.audit import find_secrets
from reprozoo.containers.build import BuildResult, build_image, download_wheelhouse
from reprozoo.containers.engine import client, find_image
from reprozoo.containers.identity import ContainerError, build_args, image_spec, source_state, source_url
from reprozoo.containers.registry import pull_by_digest
from reprozoo.containers.run import CREDENTIAL_ENV
from reprozoo.provenance import file_sha256

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEBOOTSTRAP_BASE = "reprozoo-base:bookworm-py311"
# Where public images can be pulled (GitHub's runners), REPROZOO_TEST_BASE may name one instead,
# e.g. the cpu flavour's pinned python:3.11-slim-bookworm; here the base is built with debootstrap.
LOCAL_BASE = os.environ.get("REPROZOO_TEST_BASE") or DEBOOTSTRAP_BASE
SENTINEL = "rz-sentinel-42b7e0d9aa"


def _engine_or_skip() -> Any:
    try:
        return client()
    except ContainerError:
        pass
    started = subprocess.run([str(REPO / "docker" / "engine.sh"), "start"], capture_output=True, text=True, check=False)
    try:
        return client()
    except ContainerError as err:
        reason = (started.stderr or started.stdout).strip().splitlines()[-1:] or [str(err)]
        pytest.skip(f"container tests need a Docker engine and none could start: {reason[0]}")


@pytest.fixture(scope="session")
def engine() -> Any:
    return _engine_or_skip()


@pytest.fixture(scope="session")
def base_image(engine: Any) -> str:
    if find_image(engine, LOCAL_BASE) is None and LOCAL_BASE != DEBOOTSTRAP_BASE:
        engine.images.pull(LOCAL_BASE)
    elif find_image(engine, LOCAL_BASE) is None:
        if not shutil.which("debootstrap"):
            pytest.fail("debootstrap is missing: `apt-get install debootstrap` (docker/engine.sh start installs it)")
        subprocess.run([str(REPO / "docker" / "base" / "bookworm-python.sh"), LOCAL_BASE], check=True,
                       stdout=subprocess.DEVNULL)
    return LOCAL_BASE


@pytest.fixture(scope="session")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's working tree (tracked + untracked, not ignored) with credentials planted where a
    careless build would pick them up: .env, clearml.conf, runs/, .git. The image must hold none of them."""
    root = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    planted = {".env": f"CLEARML_API_SECRET_KEY={SENTINEL}\n", "clearml.conf": f'api.credentials.secret_key: "{SENTINEL}"\n',
               "runs/old/secret.txt": SENTINEL, ".git/config": f"[credential]\n\thelper = {SENTINEL}\n",
               ".netrc": f"machine x login y password {SENTINEL}\n"}
    for name, content in planted.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    return download_wheelhouse(REPO, "cpu")  # hash-checked; a no-op when the wheels are there


@pytest.fixture(scope="session")
def built(engine: Any, base_image: str, checkout: Path, wheelhouse: Path) -> BuildResult:
    saved = {k: os.environ.get(k) for k in CREDENTIAL_ENV}
    os.environ.update({k: SENTINEL for k in CREDENTIAL_ENV})  # a build must not pick these up
    try:
        return build_image(checkout, "cpu", base_image, wheelhouse=wheelhouse, use_wheelhouse=True,
                           engine=engine, log=lambda line: None, state=source_state(REPO))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, storage in a temp folder (one per module)."""
    from docker.errors import ImageNotFound

    with scratch(tmp_path_factory, "registry") as folder, local_registry(folder) as address:
        yield address
    # The registry (and its port) are gone: drop the references to it, keep the image and its cache. A
    # pushed tag and its digest can go together, so the second removal may find nothing.
    for image in engine.images.list():
        for ref in [*image.tags, *(image.attrs.get("RepoDigests") or [])]:
            if ref.startswith(f"{address}/"):
                with contextlib.suppress(ImageNotFound):
                    engine.images.remove(ref, noprune=True)


def test_image_carries_its_identity(engine: Any, built: BuildResult) -> None:
    spec = image_spec(REPO, "cpu", LOCAL_BASE)
    assert built.ref == spec.ref and built.offline
    image = engine.images.get(built.ref)
    config = image.attrs["Config"]
    env = dict(entry.split("=", 1) for entry in config["Env"])
    assert env["REPROZOO_IMAGE"] == spec.ref and env["REPROZOO_LOCK"] == "cpu"
    assert env["REPROZOO_LOCK_SHA256"] == file_sha256(REPO / "envs" / "cpu.lock") and env["REPROZOO_IMAGE_DIGEST"] == ""
    labels = config["Labels"]
    state = built.state
    assert labels["org.opencontainers.image.revision"] == state.revision + ("-dirty" if state.dirty else "")
    assert labels["org.opencontainers.image.created"] == build_args(spec, state)["CREATED"]
    assert labels["org.opencontainers.image.source"] == source_url(REPO) and labels["io.reprozoo.image"] == spec.ref
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["reprozoo"]
    # The entrypoint answers, as the non-root user, with the locked torch and no network.
    out = engine.containers.run(built.ref, entrypoint=["sh", "-c"], network_mode="none", remove=True,
                                command=["id -u; python -c 'import torch, reprozoo; print(torch.__version__, reprozoo.__version__)'; "
                                         "reprozoo models --names | head -1; ls /wheels 2>&1 | head -1"]).decode()
    uid, versions, first_model, wheels = out.strip().splitlines()
    assert uid == "10001" and versions == "2.13.0+cpu 0.1.0" and first_model and "No such file" in wheels


def test_image_holds_no_secrets(engine: Any, built: BuildResult) -> None:
    image = engine.images.get(built.ref)
    findings = find_secrets(engine, image, [SENTINEL])
    assert findings == []
    # The scan itself finds a planted secret (it is not a test that cannot fail).
    container = engine.containers.create(built.ref, entrypoint=["true"])
    try:
        container.put_archive("/home/reprozoo", _tar({"clearml.conf": SENTINEL}))
        leaked = container.commit(repository="reprozoo-leak-check", tag="x")
        try:
            found = find_secrets(engine, leaked, [SENTINEL])
            assert "file home/reprozoo/clearml.conf" in found and any("contains" in f for f in found)
        finally:
            engine.images.remove(leaked.id, force=True)
    finally:
        container.remove(force=True)


def _tar(files: dict[str, str]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


def test_a_rebuild_has_the_same_tag_and_reuses_the_cached_image(engine: Any, built: BuildResult, checkout: Path,
                                                                wheelhouse: Path) -> None:
    """The tag is a function of the inputs, and the engine's layer cache serves the same inputs: this shows
    no more than that. Whether a build without the cache gives the same installed files is
    bench/image_rebuild.py's question (docs/containers.md, "Reproducible builds")."""
    again = build_image(checkout, "cpu", LOCAL_BASE, wheelhouse=wheelhouse, use_wheelhouse=True, engine=engine,
                        log=lambda line: None, state=built.state)
    assert again.ref == built.ref
    # With the engine's layer cache every step is reused: the same image id (config digest).
    # Without it (--no-cache) the id differs: the classic builder stamps each layer's history with
    # the build time and the files with their install mtimes (see README, "Reproducible builds").
    assert again.cached and again.image_id == built.image_id


@pytest.fixture(scope="module")
def pinned(engine: Any, built: BuildResult, registry: str) -> str:
    """`reprozoo image push` to the local registry: the `repo@sha256:…` it prints."""
    pushed = reprozoo("image", "push", "--flavour", "cpu", "--base", LOCAL_BASE, "--registry", registry)
    assert pushed.returncode == 0, pushed.stderr
    reference = pushed.stdout.strip()
    assert re.fullmatch(rf"{re.escape(registry)}/reprozoo@sha256:[0-9a-f]{{64}}", reference)
    return reference


def _forget_locally(engine: Any, built: BuildResult) -> None:
    engine.images.remove(built.image_id, force=True, noprune=True)
    assert find_image(engine, built.ref) is None


@pytest.fixture(scope="module")
def inside(engine: Any, built: BuildResult, pinned: str, data_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A short MiniLM training inside the image pulled back by digest, ClearML offline."""
    # Forget the image locally, then get it back from the registry by digest alone.
    _forget_locally(engine, built)
    pulled = pull_by_digest(engine, pinned)
    assert pulled.id == built.image_id  # the registry served the very image that was built
    pulled.tag("reprozoo", built.ref.split(":", 1)[1])  # keep the content tag for later use

    with scratch(tmp_path_factory, "inside") as root:
        result, env = train_in_image(pinned, data_dir, root, "minilm", "--limit-train-samples", "200", "--limit-eval-samples",
                                     "100", "--max-epochs", "1")
        assert result.returncode == 0, result.stderr[-2000:]
        yield {"result": result, "run": root / "runs" / "minilm", "env": env, "root": root}


def test_push_pull_by_digest_and_train_inside(inside: dict[str, Any], built: BuildResult, pinned: str) -> None:
    result, run = inside["result"], inside["run"]
    assert "no GPU: running on CPU" in result.stderr and f"= {pinned}" in result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["examples"] == 200 and sum(map(sum, metrics["test"]["confusion_matrix"])) == 100
    identity = json.loads((run / "image.json").read_text())
    assert identity["in_image"] and identity["image_digest"] == pinned  # the digest `image push` printed
    assert identity["image"] == built.ref and identity["lock"] == "cpu" and identity["image_id"] == built.image_id
    assert (run / "export" / "model.safetensors").is_file()
    # The ClearML record (an offline session written through the mounted ClearML home) pins it too.
    task_id = json.loads((run / "task.json").read_text())["task_id"]
    shown = subprocess.run([sys.executable, "-m", "reprozoo", "tasks", "show", task_id, "--json"], capture_output=True,
                           text=True, check=False, env=inside["env"])
    assert shown.returncode == 0, shown.stderr[-1000:]
    record = json.loads(shown.stdout)
    assert record["image_digest"] == pinned and record["image"] == built.ref and record["metrics"] == metrics
    assert record["commit"].startswith(built.state.revision) and record["lock_file"] != "none"


def test_repro_in_the_recorded_image_is_bit_identical(inside: dict[str, Any], engine: Any, built: BuildResult,
                                                      pinned: str) -> None:
    """`reprozoo repro <task> --verify`: the image pulled again by its recorded digest, the same data and
    RunConfig, and a verdict on the metrics."""
    task_id = json.loads((inside["run"] / "task.json").read_text())["task_id"]
    _forget_locally(engine, built)  # the replay must fetch the recorded image by digest
    result = subprocess.run([sys.executable, "-m", "reprozoo", "repro", task_id, "--verify", "--network", "none",
                             "--runs-dir", str(inside["root"] / "runs"), "--out", "replay"],
                            capture_output=True, text=True, check=False, env=inside["env"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"in      image {pinned}" in result.stdout and f"pulling {pinned}" in result.stderr
    assert "verdict: bit-identical" in result.stdout
    replay = inside["run"].parent / "replay"
    assert json.loads((replay / "image.json").read_text())["image_digest"] == pinned
    assert json.loads((replay / "metrics.json").read_text()) == json.loads((inside["run"] / "metrics.json").read_text())
    find_image(engine, pinned).tag("reprozoo", built.ref.split(":", 1)[1])

