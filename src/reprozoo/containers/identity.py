"""What an image is, before any engine is asked: flavours, the content-addressed tag, locks, build args,
the source state its labels name, and which image this process runs in.

Standard library only (and `reprozoo.provenance`, which is too): CI computes the same tag and
labels with a bare Python (`python -m reprozoo.containers ci-meta`).

Inside a container the environment tells a run which image it is in (`runtime_identity`):
`REPROZOO_IMAGE`, `REPROZOO_LOCK`, `REPROZOO_LOCK_SHA256` are baked in at build time,
`REPROZOO_IMAGE_DIGEST` and `REPROZOO_IMAGE_ID` are handed in by `reprozoo image run` at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reprozoo.errors import UserError
from reprozoo.provenance import SOURCE_DIR, file_sha256, image_env
from reprozoo.provenance import _is_source as is_source_file  # what a run's record captures as untracked code

FLAVOURS = ("cpu", "cuda")
IMAGE_REPO = "reprozoo"
# Both flavours start from the same Debian bookworm + CPython 3.11 base (also the Dockerfile's default):
# PyPI's CUDA torch brings the CUDA runtime, cuDNN, cuBLAS and NCCL in its nvidia-* wheels and the host
# brings the driver, so a CUDA base image would only hold a second copy (docs/containers.md). The digest
# is the one public Dockerfiles pin; tests use a local base instead.
PYTHON_BASE = "python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b"
DEFAULT_BASES: dict[str, str | None] = {"cuda": PYTHON_BASE, "cpu": PYTHON_BASE}


class ContainerError(UserError, RuntimeError):
    """Something the user can fix (no engine, no image, a bad option); one line."""


def project_root(start: Path | None = None) -> Path:
    """The checkout holding docker/Dockerfile: from `start` (default: cwd) upwards, else beside the package."""
    candidates = [start or Path.cwd()]
    candidates.append(Path(__file__).resolve().parents[3])  # src/reprozoo/containers/identity.py in a checkout
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


def check_flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise ContainerError(f"flavour {flavour!r} is not one of {', '.join(FLAVOURS)}")
    return flavour


@dataclass(frozen=True)
class ImageSpec:
    """What an image is built from, and the tag those inputs give."""

    flavour: str
    base: str | None  # None: the Dockerfile's default (the pinned python:3.11-slim-bookworm)
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
    """The commit the image's code is, and whether the checkout's code differs from it: dirty when a
    tracked file changed or an untracked file under src/ (not ignored) is there. The build context
    copies src/ as it is, and a run records such a file in its diff, so either is code the commit lacks."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
        untracked = git("ls-files", "--others", "--exclude-standard", "--", SOURCE_DIR).splitlines()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) or any(map(is_source_file, untracked))
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
    """Which image (or lock) this process runs in, for the run directory's image.json.

    In an image: the variables it was built with plus the digest `image run` handed in.
    Outside (a checkout, Colab): no image; the lock named by $REPROZOO_LOCK (Colab: `colab`) with
    the sha256 of that lock file, so a record pins the dependency tree even without a digest.
    Absent is None here; the provenance record spells the same facts "none" (`provenance.image_identity`).
    """
    env = image_env()
    identity: dict[str, Any] = {
        "in_image": env.image is not None,
        "image": env.image,
        "image_digest": env.digest,
        "image_id": env.image_id,
        "lock": env.lock,
        "lock_sha256": env.lock_sha256,
    }
    if env.image is None and env.lock and not env.lock_sha256:
        with contextlib.suppress(ContainerError):
            identity["lock_sha256"] = file_sha256(lock_path(root or project_root(), env.lock))
    return identity
