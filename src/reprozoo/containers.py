"""Images: build, push and run reprozoo in Docker, with the Docker SDK.

An image is identified three ways, from the cheapest to the strongest:

- its **tag** `reprozoo:<flavour>-<hash12>`, content-addressed from the Dockerfile, the flavour's
  lock, the project version and the base image reference: the same inputs give the same tag on
  any machine, before anything is built;
- its **image id** (the sha256 of its config): what this engine built;
- its **repo digest** `repo@sha256:…` (the sha256 of the pushed manifest): known only after a push,
  the identity a record pins and `docker pull` verifies.

Inside a container the environment tells a run which image it is in (`runtime_identity`):
`REPROZOO_IMAGE`, `REPROZOO_LOCK`, `REPROZOO_LOCK_SHA256` are baked in at build time,
`REPROZOO_IMAGE_DIGEST` is handed in by `run_in_image` at run time. Credentials reach a container
only at run time, from the host's environment; a build never sees them.

Builds go through the engine's classic builder (the only one the SDK drives): no BuildKit secrets
are needed because the build is offline when a host-prepared wheelhouse is present
(`download_wheelhouse`), and otherwise fetches the same hash-pinned files from the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reprozoo.agent import docker_arguments as agent_docker_arguments

FLAVOURS = ("cpu", "cuda")
IMAGE_REPO = "reprozoo"
IMAGE_USER = "10001:10001"
CONTAINER_HOME = "/home/reprozoo"
CONTAINER_DATA = "/data/sst5"
CONTAINER_WORK = "/work"
# The cpu flavour's default base (the Dockerfile's own default is the CUDA image): the digest as
# pinned in public Dockerfiles on GitHub (code search, Nov 2026); tests here use a local base instead.
DEFAULT_BASES: dict[str, str | None] = {
    "cuda": None,
    "cpu": "python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b",
}
# Handed to a container from the host environment at run time when set; never to a build.
CREDENTIAL_ENV = (
    "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY", "CLEARML_API_HOST", "CLEARML_WEB_HOST",
    "CLEARML_FILES_HOST", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
)
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "CLEARML_OFFLINE_MODE")
# How a ClearML agent in docker mode runs a task in our image as it is (why each argument: reprozoo.agent).
AGENT_DOCKER_ARGUMENTS = agent_docker_arguments()
TAG_RE = re.compile(r"^(?P<flavour>[a-z]+)-(?P<hash>[0-9a-f]{12})$")


class ContainerError(RuntimeError):
    """Something the user can fix (no engine, no image, a bad option); one line."""


# --- identity -------------------------------------------------------------------------------

def project_root(start: Path | None = None) -> Path:
    """The checkout holding docker/Dockerfile: from `start` (default: cwd) upwards, else beside the package."""
    candidates = [start or Path.cwd()]
    candidates.append(Path(__file__).resolve().parents[2])  # src/reprozoo/containers.py in a checkout
    for candidate in candidates:
        for folder in (candidate.resolve(), *candidate.resolve().parents):
            if (folder / "docker" / "Dockerfile").is_file() and (folder / "pyproject.toml").is_file():
                return folder
    raise ContainerError("no reprozoo checkout here (docker/Dockerfile not found); run from the repository")


def project_version(root: Path) -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.MULTILINE)
    if not match:
        raise ContainerError(f"{root / 'pyproject.toml'} has no [project] version")
    return match.group(1)


def lock_path(root: Path, name: str) -> Path:
    path = root / "envs" / f"{name}.lock"
    if not path.is_file():
        raise ContainerError(f"{path} is missing; run `make lock`")
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise ContainerError(f"flavour {flavour!r} is not one of {', '.join(FLAVOURS)}")
    return flavour


@dataclass(frozen=True)
class ImageSpec:
    """What an image is built from, and the tag those inputs give."""

    flavour: str
    base: str | None  # None: the Dockerfile's default (the pinned CUDA image)
    version: str
    lock_sha256: str
    dockerfile_sha256: str
    content_hash: str

    @property
    def tag(self) -> str:
        return f"{self.flavour}-{self.content_hash[:12]}"

    @property
    def ref(self) -> str:
        return f"{IMAGE_REPO}:{self.tag}"

    @property
    def effective_base(self) -> str:
        return self.base or "Dockerfile default"


def image_spec(root: Path, flavour: str, base: str | None = None) -> ImageSpec:
    """The content-addressed identity: sha256 over Dockerfile, lock, version, flavour and base."""
    check_flavour(flavour)
    base = base if base is not None else DEFAULT_BASES[flavour]
    dockerfile = (root / "docker" / "Dockerfile").read_bytes()
    lock = lock_path(root, flavour).read_bytes()
    version = project_version(root)
    digest = hashlib.sha256()
    for part in (b"reprozoo-image/1", dockerfile, lock, version.encode(), flavour.encode(), (base or "").encode()):
        digest.update(hashlib.sha256(part).digest())
    return ImageSpec(flavour=flavour, base=base, version=version, lock_sha256=hashlib.sha256(lock).hexdigest(),
                     dockerfile_sha256=hashlib.sha256(dockerfile).hexdigest(), content_hash=digest.hexdigest())


@dataclass(frozen=True)
class SourceState:
    revision: str  # commit sha, or "unknown" outside git
    dirty: bool
    epoch: int  # SOURCE_DATE_EPOCH: $SOURCE_DATE_EPOCH, else the commit time


def source_state(root: Path) -> SourceState:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        epoch = int(git("log", "-1", "--format=%ct"))
    except (OSError, subprocess.CalledProcessError, ValueError):
        revision, dirty, epoch = "unknown", True, 0
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    return SourceState(revision, dirty, epoch)


def source_url(root: Path) -> str:
    """org.opencontainers.image.source: the repository's web address (Actions' repository, else origin)."""
    if os.environ.get("GITHUB_REPOSITORY"):
        return f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{os.environ['GITHUB_REPOSITORY']}"
    try:
        url = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    url = re.sub(r"^git@([^:]+):", r"https://\1/", url)
    url = re.sub(r"^(https?://)[^@/]+@", r"\1", url)  # never a token embedded in the remote URL
    return url.removesuffix(".git") if url.startswith("https://") else ""


def build_args(spec: ImageSpec, state: SourceState, source_url: str | None = None) -> dict[str, str]:
    """The Dockerfile's ARGs: identity, labels; never a credential."""
    args = {
        "FLAVOUR": spec.flavour,
        "IMAGE_REF": spec.ref,
        "LOCK_SHA256": spec.lock_sha256,
        "VERSION": spec.version,
        "REVISION": state.revision + ("-dirty" if state.dirty else ""),
        "CREATED": datetime.fromtimestamp(state.epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if spec.base:
        args["BASE_IMAGE"] = spec.base
    args["SOURCE"] = source_url or ""
    return args


def runtime_identity(root: Path | None = None) -> dict[str, Any]:
    """Which image (or lock) this process runs in, for the record.

    In an image: the variables it was built with plus the digest `image run` handed in.
    Outside (a checkout, Colab): no image; the lock named by $REPROZOO_LOCK (Colab: `colab`) with
    the sha256 of that lock file, so a record pins the dependency tree even without a digest.
    """
    env = os.environ
    in_image = bool(env.get("REPROZOO_IMAGE"))
    identity: dict[str, Any] = {
        "in_image": in_image,
        "image": env.get("REPROZOO_IMAGE") or None,
        "image_digest": env.get("REPROZOO_IMAGE_DIGEST") or None,
        "image_id": env.get("REPROZOO_IMAGE_ID") or None,
        "lock": env.get("REPROZOO_LOCK") or None,
        "lock_sha256": env.get("REPROZOO_LOCK_SHA256") or None,
    }
    if not in_image and identity["lock"] and not identity["lock_sha256"]:
        with contextlib.suppress(ContainerError):
            identity["lock_sha256"] = file_sha256(lock_path(root or project_root(), identity["lock"]))
    return identity


# --- engine ---------------------------------------------------------------------------------

def client() -> Any:
    """A Docker SDK client for the engine the environment names (DOCKER_HOST or the default socket)."""
    import docker
    from docker.errors import DockerException

    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
    except DockerException as err:
        raise ContainerError(f"no Docker engine answers ({_short(err)}); start one (`make engine` as root) or set DOCKER_HOST") from None
    return engine


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def find_image(engine: Any, ref: str) -> Any | None:
    from docker.errors import ImageNotFound

    try:
        return engine.images.get(ref)
    except ImageNotFound:
        return None


# --- wheelhouse -----------------------------------------------------------------------------

def wheelhouse_dir(root: Path, flavour: str) -> Path:
    return root / "docker" / "wheelhouse" / flavour


def download_wheelhouse(root: Path, flavour: str, dest: Path | None = None, pip: list[str] | None = None) -> Path:
    """Download exactly the lock's wheels (hash-checked, no dependencies resolved) into dest.

    pip uses this machine's index settings (pip.conf: a local wheelhouse for the +cpu torch);
    the lock's header names the Python version and platform the files must fit.
    """
    check_flavour(flavour)
    lock = lock_path(root, flavour)
    header = lock.read_text().splitlines()[0]
    match = re.search(r"python=(\d+\.\d+) platform=x86_64-manylinux_2_(\d+)", header)
    if not match:
        raise ContainerError(f"{lock} lacks its `# reprozoo-lock ... python=X.Y platform=...` header; run `make lock`")
    python, glibc = match.group(1), int(match.group(2))
    dest = dest or wheelhouse_dir(root, flavour)
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for minor in range(glibc, 16, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")]
    command = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--require-hashes", "--only-binary=:all:",
               "--implementation", "cp", "--python-version", python, *platforms, "--platform", "manylinux2014_x86_64",
               "--quiet", "-r", str(lock), "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        raise ContainerError(f"pip download for {lock.name} failed: {(errors or [result.stderr.strip()[-300:]])[0]}")
    wanted = _lock_names(lock)
    stale = [w for w in dest.glob("*.whl") if _wheel_name(w) not in wanted]
    for wheel in stale:  # a wheel of an older lock would shadow nothing (hashes) but bloats the context
        wheel.unlink()
    return dest


def _lock_names(lock: Path) -> set[str]:
    names = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock.read_text(), re.MULTILINE)
    return {_normalise(n) for n in names}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name(wheel: Path) -> str:
    return _normalise(wheel.name.split("-")[0])


# --- build ----------------------------------------------------------------------------------

def _dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def context_files(root: Path) -> list[str]:
    """The files of the build context, .dockerignore applied (the same rules `docker build` uses)."""
    from docker.utils.build import exclude_paths

    files = exclude_paths(str(root), _dockerignore(root), dockerfile="docker/Dockerfile")
    keep = []
    for name in sorted(files):
        path = root / name
        if path.is_dir() or not path.exists():
            continue
        if name.startswith("docker/wheelhouse/") and name.count("/") > 2:
            continue  # the flavour's wheelhouse is added separately, the others stay out
        keep.append(name)
    return keep


def build_context(root: Path, flavour: str, wheelhouse: Path | None, epoch: int) -> io.BytesIO:
    """A tar of the context with fixed owners and mtimes, so the same checkout gives the same bytes."""
    buffer = io.BytesIO()

    def add(tar: tarfile.TarFile, source: Path, name: str) -> None:
        info = tarfile.TarInfo(name)
        data = source.read_bytes()
        info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = len(data), epoch, 0, 0, "", ""
        info.mode = 0o755 if os.access(source, os.X_OK) else 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in context_files(root):
            add(tar, root / name, name)
        folder = tarfile.TarInfo(f"docker/wheelhouse/{flavour}")
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, epoch
        tar.addfile(folder)
        if wheelhouse is not None:
            for wheel in sorted(wheelhouse.glob("*.whl")):
                add(tar, wheel, f"docker/wheelhouse/{flavour}/{wheel.name}")
    buffer.seek(0)
    return buffer


@dataclass
class BuildResult:
    ref: str
    image_id: str
    spec: ImageSpec
    seconds: float
    cached: bool  # every step came from the engine's cache
    offline: bool  # installed from a wheelhouse, no network in the build
    state: SourceState  # the commit the labels name


def build_image(root: Path, flavour: str, base: str | None = None, *, wheelhouse: Path | None = None,
                use_wheelhouse: bool | None = None, no_cache: bool = False, source: str | None = None,
                engine: Any = None, state: SourceState | None = None, log: Callable[[str], None] = print) -> BuildResult:
    """Build docker/Dockerfile for a flavour and tag it reprozoo:<flavour>-<hash12>.

    use_wheelhouse: True requires docker/wheelhouse/<flavour> (or `wheelhouse`) to hold wheels;
    None uses it when it does. An offline build runs with networking off, so nothing unpinned can
    slip in.
    """
    import time

    from docker.errors import APIError, BuildError

    engine = engine or client()
    spec = image_spec(root, flavour, base)
    state = state or source_state(root)  # a copy of a checkout may name its origin's commit
    wheels = wheelhouse or wheelhouse_dir(root, flavour)
    has_wheels = wheels.is_dir() and any(wheels.glob("*.whl"))
    if use_wheelhouse and not has_wheels:
        raise ContainerError(f"{wheels} holds no wheels; run `reprozoo image wheelhouse --flavour {flavour}` first")
    offline = has_wheels if use_wheelhouse is None else bool(use_wheelhouse)
    context = build_context(root, flavour, wheels if offline else None, state.epoch)
    log(f"building {spec.ref} (flavour {flavour}, base {spec.effective_base}, "
        f"{'offline from ' + str(wheels) if offline else 'packages from the index'})")
    started = time.time()
    steps = cached_steps = 0
    image_id = None
    step, last_output = "the start", ""
    try:
        for chunk in engine.api.build(fileobj=context, custom_context=True, encoding=None, dockerfile="docker/Dockerfile",
                                      tag=spec.ref, buildargs=build_args(spec, state, source or source_url(root)), rm=True, forcerm=True,
                                      nocache=no_cache, pull=False, network_mode="none" if offline else None,
                                      labels=None, decode=True):
            if "error" in chunk:
                code = re.search(r"returned a non-zero code: \d+", chunk["error"])
                why = last_output or chunk["error"].strip()
                raise ContainerError(f"image build failed at {step.strip()}: {why}{' (' + code.group(0) + ')' if code else ''}")
            text = re.sub(r"\x1b\[[0-9;]*m", "", chunk.get("stream", ""))
            if text.startswith("Step "):
                steps += 1
                step, last_output = text.split(" : ")[0], ""
            elif text.strip() and not text.startswith((" ---> ", "Removing intermediate")):
                last_output = text.strip().splitlines()[-1]
            if "Using cache" in text:
                cached_steps += 1
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if text.strip():
                log(text.rstrip())
    except (APIError, BuildError) as err:
        raise ContainerError(f"image build failed: {_short(err)}") from None
    image = engine.images.get(spec.ref)
    return BuildResult(ref=spec.ref, image_id=image_id or image.id, spec=spec, seconds=time.time() - started,
                       cached=steps > 0 and cached_steps >= steps - _uncacheable_steps(root), offline=offline,
                       state=state)


def _uncacheable_steps(root: Path) -> int:
    """FROM/ARG steps never print `Using cache`: count them so `cached` means all RUN/COPY hit."""
    lines = (root / "docker" / "Dockerfile").read_text().splitlines()
    return sum(1 for line in lines if line.split(" ", 1)[0] in ("FROM", "ARG"))


# --- push / pull ----------------------------------------------------------------------------

def resolve_local_image(engine: Any, root: Path, flavour: str, base: str | None, image: str | None) -> Any:
    ref = image or image_spec(root, flavour, base).ref
    found = find_image(engine, ref)
    if found is None:
        hint = "pull it" if image else f"build it first: `reprozoo image build --flavour {flavour}{' --base ' + base if base else ''}`"
        raise ContainerError(f"image {ref} is not on this engine; {hint}")
    return found


def push_image(engine: Any, image: Any, registry: str, log: Callable[[str], None] = print) -> str:
    """Tag the image into `registry` and push it; return `registry/reprozoo@sha256:…`."""
    from docker.errors import APIError

    tags = [t for t in image.tags if t.startswith(f"{IMAGE_REPO}:")] or image.tags
    if not tags:
        raise ContainerError(f"image {image.short_id} has no reprozoo tag to push")
    tag = tags[0].split(":", 1)[1]
    repository = f"{registry.rstrip('/')}/{IMAGE_REPO}"
    image.tag(repository, tag)
    digest = None
    try:
        for chunk in engine.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise ContainerError(f"push to {registry} failed: {chunk['error'].strip()}")
            if "aux" in chunk and "Digest" in chunk["aux"]:
                digest = chunk["aux"]["Digest"]
            if chunk.get("status") and chunk.get("id") is None:
                log(chunk["status"])
    except APIError as err:
        raise ContainerError(f"push to {registry} failed: {_short(err)}") from None
    if not digest:
        raise ContainerError(f"push to {registry} reported no digest")
    return f"{repository}@{digest}"


def pull_by_digest(engine: Any, reference: str) -> Any:
    from docker.errors import APIError

    if "@sha256:" not in reference:
        raise ContainerError(f"{reference} is not pinned by digest (repo@sha256:…)")
    try:
        return engine.images.pull(reference)
    except APIError as err:
        raise ContainerError(f"pull {reference} failed: {_short(err)}") from None


def repo_digest(image: Any, prefer: str | None = None) -> str | None:
    """A `repo@sha256:…` the engine knows for this image (set by push or pull), if any."""
    digests = image.attrs.get("RepoDigests") or []
    if prefer:
        for d in digests:
            if d == prefer or d.split("@")[0] == prefer.split("@")[0]:
                return d
    return digests[0] if digests else None


# --- run ------------------------------------------------------------------------------------

def gpu_available(engine: Any, dev: Path = Path("/dev")) -> tuple[bool, str]:
    """Whether containers on this engine can get a GPU, and why not when they cannot."""
    runtimes = (engine.info().get("Runtimes") or {})
    has_device = (dev / "nvidiactl").exists() or any(dev.glob("nvidia[0-9]*"))
    if not has_device:
        return False, f"this host has no NVIDIA GPU ({dev}/nvidia* absent)"
    if "nvidia" not in runtimes and not shutil.which("nvidia-container-cli"):
        return False, "the NVIDIA container toolkit is not installed for this engine"
    return True, "NVIDIA GPU and container toolkit present"


def decide_gpus(requested: str, available: bool, why: str) -> tuple[bool, list[str]]:
    """--gpus auto|all|none against what the host has: whether to ask for GPUs, and what to tell the user."""
    if requested not in ("auto", "all", "none"):
        raise ContainerError(f"--gpus {requested!r}: use auto, all or none")
    notes = []
    use = requested == "all" or (requested == "auto" and available)
    if use and not available:
        notes.append(f"--gpus all: {why}; running on CPU")
        use = False
    notes.append(f"using the GPUs ({why})" if use else f"no GPU: running on CPU ({why})")
    return use, notes


@dataclass
class RunPlan:
    image: str
    image_digest: str | None
    command: list[str]
    environment: dict[str, str]
    mounts: dict[str, dict[str, str]]
    gpus: bool
    user: str | None
    shm_size: str
    ipc_host: bool
    network: str

    def public(self) -> dict[str, Any]:
        """For printing: credential values masked."""
        data = asdict(self)
        data["environment"] = {k: ("***" if k in CREDENTIAL_ENV else v) for k, v in self.environment.items()}
        return data


def plan_run(image_ref: str, image_id: str, digest: str | None, command: list[str], *, data_dir: Path | None,
             hf_cache: Path, runs_dir: Path, clearml_dir: Path | None, gpus: bool, user: str | None = None,
             shm_size: str = "2g", ipc_host: bool = False, network: str = "bridge",
             host_env: dict[str, str] | None = None) -> RunPlan:
    """Everything a container run needs, decided without touching the engine (testable)."""
    host_env = dict(os.environ if host_env is None else host_env)
    environment = {k: host_env[k] for k in (*CREDENTIAL_ENV, *PASSTHROUGH_ENV) if host_env.get(k)}
    environment["REPROZOO_IMAGE_DIGEST"] = digest or ""
    environment["REPROZOO_IMAGE_ID"] = image_id
    mounts = {
        str(runs_dir.resolve()): {"bind": f"{CONTAINER_WORK}/runs", "mode": "rw"},
        str(hf_cache.resolve()): {"bind": f"{CONTAINER_HOME}/.cache/huggingface", "mode": "rw"},
    }
    if data_dir is not None:
        mounts[str(data_dir.resolve())] = {"bind": CONTAINER_DATA, "mode": "ro"}
        environment["REPROZOO_DATA_DIR"] = CONTAINER_DATA
    if clearml_dir is not None:
        mounts[str(clearml_dir.resolve())] = {"bind": f"{CONTAINER_HOME}/.clearml", "mode": "rw"}
    return RunPlan(image=image_ref, image_digest=digest, command=command, environment=environment, mounts=mounts,
                   gpus=gpus, user=user, shm_size=shm_size, ipc_host=ipc_host, network=network)


def prepare_host_dirs(plan: RunPlan) -> None:
    """Create the writable mounts; as root on the host, hand new ones to the image's user."""
    for host, spec in plan.mounts.items():
        if spec["mode"] != "rw":
            continue
        path = Path(host)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and plan.user in (None, IMAGE_USER) and created:
            uid, gid = (int(x) for x in IMAGE_USER.split(":"))
            os.chown(path, uid, gid)


def run_container(engine: Any, plan: RunPlan, log: Callable[[str], None] = print,
                  out: Callable[[str], None] | None = None) -> int:
    """Run the plan, stream its output, remove the container, return its exit code."""
    from docker.errors import APIError
    from docker.types import DeviceRequest

    out = out or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    prepare_host_dirs(plan)
    kwargs: dict[str, Any] = {
        "command": plan.command, "environment": plan.environment, "volumes": plan.mounts, "detach": True,
        "working_dir": CONTAINER_WORK, "network_mode": plan.network, "init": True,
    }
    if plan.user:
        kwargs["user"] = plan.user
    if plan.ipc_host:
        kwargs["ipc_mode"] = "host"
    else:
        kwargs["shm_size"] = plan.shm_size
    if plan.gpus:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    try:
        container = engine.containers.run(plan.image, **kwargs)
    except APIError as err:
        raise ContainerError(f"could not start {plan.image}: {_short(err)}") from None
    try:
        for piece in container.logs(stream=True, follow=True):
            out(piece.decode(errors="replace"))
        status = container.wait()
    finally:
        with contextlib.suppress(APIError):
            container.remove(force=True)
    return int(status.get("StatusCode", 1))


def default_hf_cache() -> Path:
    """The host's Hugging Face cache a container gets mounted: $HF_HOME, else ~/.cache/huggingface."""
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def ensure_image(engine: Any, reference: str, log: Callable[[str], None] = print) -> Any:
    """The image on this engine, pulled by digest when missing (a tag alone is never pulled)."""
    found = find_image(engine, reference)
    if found is not None:
        return found
    if "@sha256:" not in reference:
        raise ContainerError(f"image {reference} is not on this engine and is not pinned by digest; build it"
                             " (`reprozoo image build`) or pass repo@sha256:…")
    log(f"pulling {reference}")
    return pull_by_digest(engine, reference)


def run_config_in_image(cfg: Any, image: str, *, runs_dir: Path, data_dir: Path | None, gpus: str = "auto",
                        network: str = "bridge", log: Callable[[str], None] = print,
                        out: Callable[[str], None] | None = None, engine: Any = None) -> tuple[int, Path]:
    """Train a RunConfig inside `image`: `reprozoo train --config` with the data mounted read-only, the
    run directory under the mounted `runs_dir`, and the offline ClearML sessions written to this
    machine's own offline folder (so the record is readable here). Returns (exit code, host run dir)."""
    from datetime import datetime, timezone

    from reprozoo.config import RunConfig
    from reprozoo.session import offline_root

    engine = engine or client()
    found = ensure_image(engine, image, log)
    use_gpu, notes = decide_gpus(gpus, *gpu_available(engine))
    for note in notes:
        log(note)
    name = Path(cfg.out_dir).name if cfg.out_dir else \
        f"{Path(cfg.model.name).name.replace('/', '_')}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    data = data_dir or (Path(cfg.data.data_dir) if cfg.data.data_dir else None) or \
        (Path(os.environ["REPROZOO_DATA_DIR"]) if os.environ.get("REPROZOO_DATA_DIR") else None)
    if data is None or not (data / "train.txt").is_file():
        raise ContainerError(f"no SST-5 trees to mount ({data}); pass the folder with train.txt, dev.txt, test.txt")
    inside = RunConfig.from_dict(cfg.to_dict())
    inside.data.data_dir = None  # mounted at CONTAINER_DATA, which $REPROZOO_DATA_DIR names inside
    inside.out_dir = f"{CONTAINER_WORK}/runs/{name}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    config_file = runs_dir / f"{name}.config.yaml"
    inside.save(config_file)
    clearml_cache = offline_root().parent
    digest = image if "@sha256:" in image else repo_digest(found)
    plan = plan_run(image, found.id, digest, ["train", "--config", f"{CONTAINER_WORK}/runs/{config_file.name}"],
                    data_dir=data, hf_cache=default_hf_cache(),
                    runs_dir=runs_dir, clearml_dir=None, gpus=use_gpu, network=network)
    plan.mounts[str(clearml_cache.resolve())] = {"bind": f"{CONTAINER_HOME}/clearml-cache", "mode": "rw"}
    plan.environment["CLEARML_CACHE_DIR"] = f"{CONTAINER_HOME}/clearml-cache"
    return run_container(engine, plan, log=log, out=out), runs_dir / name


# --- inspection -----------------------------------------------------------------------------

def image_layers(engine: Any, image: Any) -> Iterator[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]:
    """Every file of every layer: (info, content) for regular files; used by the secrets check."""
    import tempfile

    with tempfile.TemporaryFile() as raw:
        for chunk in engine.api.get_image(image.id):
            raw.write(chunk)
        raw.seek(0)
        yield from _archive_files(raw)


def _archive_files(raw: Any) -> Iterator[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=raw) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=archive.extractfile(layer)) as tar:  # type: ignore[arg-type]
                for member in tar:
                    if member.isfile():
                        yield member, tar.extractfile(member).read()  # type: ignore[union-attr]
                    else:
                        yield member


SECRET_FILE_NAMES = ("clearml.conf", ".env", ".netrc", ".git-credentials", "id_rsa", "id_ed25519", ".pypirc")
SECRET_ENV_NAMES = ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY", "API_KEY", "CREDENTIAL")


def find_secrets(engine: Any, image: Any, needles: list[str]) -> list[str]:
    """Where a credential could hide in an image: env, labels, history, files. Returns findings."""
    findings = []
    attrs = image.attrs
    config = attrs.get("Config") or {}
    for entry in config.get("Env") or []:
        name, _, value = entry.partition("=")
        if value and any(word in name.upper() for word in SECRET_ENV_NAMES):
            findings.append(f"env {name} is set in the image")
    texts = {"env": json.dumps(config.get("Env")), "labels": json.dumps(config.get("Labels")),
             "history": json.dumps(image.history()), "config": json.dumps(attrs)}
    for where, text in texts.items():
        for needle in needles:
            if needle in text:
                findings.append(f"{where} contains {needle[:6]}…")
    encoded = [n.encode() for n in needles]
    for item in image_layers(engine, image):
        member, data = item if isinstance(item, tuple) else (item, b"")
        base = member.name.rsplit("/", 1)[-1]
        if base in SECRET_FILE_NAMES or member.name.endswith(".docker/config.json"):
            findings.append(f"file {member.name}")
        for needle in encoded:
            if data and needle in data:
                findings.append(f"file {member.name} contains {needle[:6].decode()}…")
    return findings


# --- CI -------------------------------------------------------------------------------------

def ci_meta(root: Path, flavour: str, registry: str | None, base: str | None = None) -> str:
    """GitHub Actions step outputs for docker/build-push-action: tag, image name, build args.

    Stdlib only (no Docker SDK, no torch): CI computes the same content-addressed tag and labels as
    `reprozoo image build`, and adds SOURCE_DATE_EPOCH, which BuildKit uses for the image's timestamps.
    """
    spec = image_spec(root, flavour, base)
    state = source_state(root)
    args = build_args(spec, state, source_url(root))
    args["SOURCE_DATE_EPOCH"] = str(state.epoch)
    image = f"{registry.rstrip('/')}/{IMAGE_REPO}:{spec.tag}" if registry else spec.ref
    lines = [f"tag={spec.tag}", f"ref={spec.ref}", f"image={image}", "build-args<<REPROZOO_EOF",
             *(f"{key}={value}" for key, value in args.items()), "REPROZOO_EOF"]
    return "\n".join(lines) + "\n"


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reprozoo.containers", description="CI helpers (stdlib only)")
    sub = parser.add_subparsers(dest="command", required=True)
    meta = sub.add_parser("ci-meta", help="GitHub step outputs: tag, image, build-args")
    meta.add_argument("--flavour", required=True, choices=FLAVOURS)
    meta.add_argument("--registry")
    meta.add_argument("--base")
    wheels = sub.add_parser("wheelhouse", help="download the flavour lock's wheels (hash-checked)")
    wheels.add_argument("--flavour", required=True, choices=FLAVOURS)
    args = parser.parse_args(argv)
    root = project_root()
    if args.command == "ci-meta":
        sys.stdout.write(ci_meta(root, args.flavour, args.registry, args.base))
    else:
        print(download_wheelhouse(root, args.flavour))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
