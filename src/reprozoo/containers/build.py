"""Building an image: the lock's wheels for an offline build, a reproducible build context, the build itself.

Builds go through the engine's classic builder (the only one the SDK drives): no BuildKit secrets
are needed because the build is offline when a host-prepared wheelhouse is present
(`download_wheelhouse`), and otherwise fetches the same hash-pinned files from the index.
`download_wheelhouse` needs only the standard library (the CI helper calls it); the SDK is
imported where a build needs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprozoo.containers.engine import client, first_line
from reprozoo.containers.identity import (
    ContainerError,
    ImageSpec,
    SourceState,
    build_args,
    check_flavour,
    image_spec,
    lock_path,
    source_state,
    source_url,
)


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
    # The lock lives outside the folder: nothing new may enter a build context.
    lock_name = f"reprozoo-wheelhouse-{hashlib.sha256(str(dest.resolve()).encode()).hexdigest()[:16]}.lock"
    with (Path(tempfile.gettempdir()) / lock_name).open("w") as lock_file:
        # One download into a wheelhouse at a time: another process's pip may be writing a wheel this
        # one would hash-check half written (two builds at once, the tests' two workers).
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        return _download(lock, python, glibc, dest, pip)


def _download(lock: Path, python: str, glibc: int, dest: Path, pip: list[str] | None) -> Path:
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
    return {normalise_name(n) for n in names}


def normalise_name(name: str) -> str:
    """A package name as pip compares them (PEP 503): `Foo_Bar.baz` → `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name(wheel: Path) -> str:
    return normalise_name(wheel.name.split("-")[0])


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
        raise ContainerError(f"image build failed: {first_line(err)}") from None
    image = engine.images.get(spec.ref)
    return BuildResult(ref=spec.ref, image_id=image_id or image.id, spec=spec, seconds=time.time() - started,
                       cached=steps > 0 and cached_steps >= steps - _uncacheable_steps(root), offline=offline,
                       state=state)


def _uncacheable_steps(root: Path) -> int:
    """FROM/ARG steps never print `Using cache`: count them so `cached` means all RUN/COPY hit."""
    lines = (root / "docker" / "Dockerfile").read_text().splitlines()
    return sum(1 for line in lines if line.split(" ", 1)[0] in ("FROM", "ARG"))
