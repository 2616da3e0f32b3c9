"""What a run needs recorded to be re-run exactly: code state, environment fingerprint, secret scrubbing.

Pure Python at import time (no torch): `environment()` imports torch lazily, the rest shells out
to git only. Everything here is also what `reprozoo tasks diff` compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from reprozoo.errors import ConfigError
from reprozoo.log import log

# The container layer (docker/Dockerfile, `reprozoo image run`) hands the image identity to the run
# through these; outside a container they are unset. `image_env()` is their one reader: None where
# a variable says nothing; "none" (NONE) is only how a record spells that.
IMAGE_ENV = "REPROZOO_IMAGE"  # e.g. ghcr.io/org/reprozoo:cuda-0123456789ab (may already hold @sha256:…)
IMAGE_DIGEST_ENV = "REPROZOO_IMAGE_DIGEST"  # repo@sha256:<64 hex> as `image push` printed it (or bare sha256:…)
IMAGE_ID_ENV = "REPROZOO_IMAGE_ID"  # the engine's image id, handed in by `image run`
LOCK_ENV = "REPROZOO_LOCK"  # the lock the environment was installed from: a file path, or in an image its flavour
LOCK_SHA256_ENV = "REPROZOO_LOCK_SHA256"  # baked in at build time (Colab: set by the notebook)
NONE = "none"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

# Names whose values never enter a record (ClearML keys, HF tokens, cloud keys, passwords).
# `TOKEN(?!S|IZER)`: HF_TOKEN and ACCESS_TOKEN are secrets; data.max_tokens and TOKENIZERS_PARALLELISM are not.
SECRET_NAME_RE = re.compile(r"(TOKEN(?!S|IZER)|SECRET|_KEY$|^KEY$|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
REDACTED = "***"
# Free text (diffs, freeze lines): assignments to environment-style secret names, and token shapes
# of the common providers. Deliberately narrow: `tokenizer = ...` in a diff must survive intact.
_SECRET_ASSIGN_RE = re.compile(
    r"(?P<key>\b[A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)[A-Z0-9_]*)(?P<sep>\s*[:=]\s*)"
    r"(?P<quote>['\"]?)(?P<value>[^\s'\",]{4,})")
_TOKEN_SHAPES_RE = re.compile(r"\b(?:hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9_-]{30,})\b")
# user:password@ in URLs (pip freeze lines of VCS installs, git remotes).
_URL_CREDENTIALS_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]+(?::[^/\s@]*)?@", re.IGNORECASE)


# --- secrets ------------------------------------------------------------------------------------
def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets (long enough not to be a false hit)."""
    env = os.environ if environ is None else environ
    # Short or path-like values (TOKENIZERS_PARALLELISM=false, *_KEY_FILE=/path) are not secrets and
    # masking them everywhere would corrupt the record.
    values = {value for name, value in env.items()
              if SECRET_NAME_RE.search(name) and len(value) >= 8 and not value.startswith(("/", "~", "."))}
    return sorted(values, key=len, reverse=True)  # longest first: a value containing another goes whole


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Text with every known secret value, secret-looking assignment and URL credential masked."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _TOKEN_SHAPES_RE.sub(REDACTED, text)
    return _SECRET_ASSIGN_RE.sub(
        lambda m: m.group(0) if m["value"] == REDACTED else f"{m['key']}{m['sep']}{m['quote']}{REDACTED}", text)


def redact_obj(obj: Any, secrets: list[str] | None = None) -> Any:
    """Same as `redact`, through dicts and lists; a key named like a secret loses its value."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_NAME_RE.search(k) and v not in (None, "")
                    else redact_obj(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v, secrets) for v in obj]
    if isinstance(obj, str):
        # Secret values, URL credentials and token shapes; the assignment heuristic is for free text.
        for value in secrets:
            obj = obj.replace(value, REDACTED)
        return _TOKEN_SHAPES_RE.sub(REDACTED, _URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", obj))
    return obj


def secret_in_diff(diff: str, environ: dict[str, str] | None = None) -> str | None:
    """Where a diff holds a real secret (the value of a secret-named environment variable, or a
    provider token's shape), as 'path:line (what it is)'; None when it holds none. A diff is recorded
    as it is, never masked (a masked diff is other code), so such a diff must not be recorded at all."""
    env = os.environ if environ is None else environ
    named = {value: name for name, value in env.items() if value in secret_values({name: value})}
    path, line_no, in_binary = "", 0, False
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            path, line_no, in_binary = line.split(" b/", 1)[-1], 0, False
            continue
        if line == "GIT binary patch":
            in_binary = True
        if in_binary or line.startswith(("--- ", "+++ ", "index ", "new file", "deleted file", "similarity", "rename ")):
            continue
        if line.startswith("@@"):
            match = re.search(r"\+(\d+)", line)
            line_no = int(match.group(1)) - 1 if match else 0
            continue
        if not line.startswith("-"):
            line_no += 1
        if not line.startswith("+"):
            continue  # context and removed lines are the commit's own: recording them adds nothing
        for value, name in sorted(named.items(), key=lambda item: -len(item[0])):
            if value in line:
                return f"{path}:{max(line_no, 1)} (the value of ${name})"
        token = _TOKEN_SHAPES_RE.search(line)
        if token:
            return f"{path}:{max(line_no, 1)} (a token of the shape {token.group(0)[:4]}…)"
    return None


# --- code ---------------------------------------------------------------------------------------
@dataclass
class GitState:
    root: str | None = None
    repository: str = ""
    branch: str = ""
    commit: str = ""
    diff: str = ""
    untracked: list[str] = field(default_factory=list)
    error: str = ""  # why git could not tell the code state (then commit and diff may be missing)

    @property
    def dirty(self) -> bool:
        return bool(self.diff.strip())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dirty": self.dirty}


def _git(root: Path, *args: str) -> str:
    return _git_result(root, *args)[0]


def _git_result(root: Path, *args: str) -> tuple[str, str]:
    """(stdout, "") on success; ("", git's first error line) on failure; ("", "") without git at all."""
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=False)
    except OSError:  # no git at all (inside the image): the image's own revision stands in
        return "", ""
    if result.returncode == 0:
        return result.stdout, ""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return "", (lines[0] if lines else f"git {args[0]} exited with {result.returncode}")


def _git_failure(where: str, error: str, hint: str = "") -> str:
    """One line for the log and the record: what failed, and the fix (git's own, when it gives one)."""
    fix = hint or "fix the checkout so that `git status` works there, then run again"
    message = f"git failed in {where}: {error.removeprefix('fatal: ')}; this run's record has no commit or diff ({fix})"
    log.warning(message)
    return message


def git_state(start: Path | None = None) -> GitState:
    """The repository holding the reprozoo source that runs (else the working directory).

    ClearML detects the repo from sys.argv[0], which for the console script is
    .venv/bin/reprozoo (ignored by git), so it records no repository; we ask git directly.
    A git that fails (a checkout owned by another user: "dubious ownership"; a broken repository) is
    a warning that the record carries in `error`, never a silently empty code state.
    """
    candidates = [start] if start else [Path(__file__).resolve().parent, Path.cwd()]
    failures: list[tuple[Path, str]] = []
    for candidate in candidates:
        top, error = _git_result(candidate, "rev-parse", "--show-toplevel")
        root = top.strip()
        if root:
            break
        if error and "not a git repository" not in error:
            failures.append((candidate, error))
    else:
        # Inside the image there is no checkout; the commit it was built from is baked in.
        error = ""
        if failures:
            where, why = failures[0]
            hint = f"`git config --global --add safe.directory {where}`" if "dubious ownership" in why else ""
            error = _git_failure(str(where), why, hint)
        return GitState(commit=os.environ.get("REPROZOO_REVISION", ""),
                        repository=redact(os.environ.get("REPROZOO_SOURCE", "")), error=error)
    path = Path(root)
    remote = _git(path, "remote", "get-url", "origin").strip()
    if not remote:
        remotes = _git(path, "remote").split()
        remote = _git(path, "remote", "get-url", remotes[0]).strip() if remotes else ""
    branch = _git(path, "rev-parse", "--abbrev-ref", "HEAD").strip()
    commit, commit_error = _git_result(path, "rev-parse", "HEAD")
    # Staged and unstaged changes to tracked files against the commit, binary files included (--binary):
    # what `git apply` replays.
    diff, diff_error = _git_result(path, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
    failed = commit_error or diff_error
    untracked = [line for line in _git(path, "ls-files", "--others", "--exclude-standard").splitlines() if line]
    captured = untracked_source_patch(path, untracked)
    found = secret_in_diff(diff + captured)
    if found:
        raise ConfigError(f"the uncommitted changes hold a secret at {found}; a run records its diff as it is, so it would"
                          " be in the record: read it from the environment instead (e.g. os.environ[\"HF_TOKEN\"]), then run again")
    return GitState(
        root=root,
        # No remote (a local clone): the path is still the honest answer; an agent needs a remote.
        repository=redact(remote) if remote else f"file://{root}",
        branch="" if branch == "HEAD" else branch,
        commit=commit.strip(),
        diff=diff + captured,  # as it is: `git apply` of it must give the code that ran
        untracked=_capped([name for name in untracked if not _is_source(name)]),
        error=_git_failure(root, failed) if failed else "",
    )


# --- environment --------------------------------------------------------------------------------
SOURCE_DIR = "src/"  # the package that runs: an untracked file there is imported (or read) by the run
MAX_UNTRACKED_SOURCE_BYTES = 1024 * 1024


def _is_source(name: str) -> bool:
    return name.startswith(SOURCE_DIR) and "__pycache__/" not in name and not name.endswith((".pyc", ".pyo"))


def untracked_source_patch(root: Path, untracked: list[str]) -> str:
    """Untracked files under src/ as a `git apply` patch (new files, binary ones too), so a replay has
    the code that ran; listing them would leave the replay failing or different. More than
    MAX_UNTRACKED_SOURCE_BYTES is refused before the run starts (ConfigError, one line)."""
    sources = [name for name in untracked if _is_source(name)]
    total = sum((root / name).stat().st_size for name in sources if (root / name).is_file())
    if total > MAX_UNTRACKED_SOURCE_BYTES:
        raise ConfigError(f"{len(sources)} untracked file(s) under {root / SOURCE_DIR} ({total / 1e6:.1f} MB, e.g. {sources[0]})"
                          f" would run but are too large to record (cap {MAX_UNTRACKED_SOURCE_BYTES // 1024} KB):"
                          " commit them, or move them out of src/")
    patches = []
    for name in sources:
        try:
            result = subprocess.run(["git", "-C", str(root), "diff", "--no-index", "--binary", "--no-color", "--no-ext-diff",
                                     "--", "/dev/null", name], capture_output=True, text=True, timeout=60, check=False)
        except OSError:
            return ""
        if result.returncode in (0, 1):  # 1: there are differences, i.e. the new file
            patches.append(result.stdout)
    return "".join(patches)


MAX_LISTED_PATHS = 200  # a record stays far below the readers' caps, however untidy the checkout


def _capped(paths: list[str]) -> list[str]:
    return paths if len(paths) <= MAX_LISTED_PATHS else [*paths[:MAX_LISTED_PATHS], f"… and {len(paths) - MAX_LISTED_PATHS} more"]


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class ImageEnv:
    """What the container layer told this process about its image and lock; None where it said nothing."""

    image: str | None  # repo:tag, without a digest
    digest: str | None  # repo@sha256:… as `image run` handed it in, else the one REPROZOO_IMAGE carried
    image_id: str | None
    lock: str | None
    lock_sha256: str | None


def image_env() -> ImageEnv:
    """The one reader of REPROZOO_IMAGE, _IMAGE_DIGEST, _IMAGE_ID, _LOCK and _LOCK_SHA256."""

    def read(name: str) -> str | None:
        return os.environ.get(name, "").strip() or None

    image, digest = read(IMAGE_ENV), read(IMAGE_DIGEST_ENV)
    if image and "@sha256:" in image:
        image, _, pinned = image.partition("@")
        digest = digest or pinned
    return ImageEnv(image=image, digest=digest, image_id=read(IMAGE_ID_ENV), lock=read(LOCK_ENV),
                    lock_sha256=read(LOCK_SHA256_ENV))


def image_identity() -> tuple[str, str]:
    """(image reference, digest) as a record spells them; ("none", "none") outside a container."""
    env = image_env()
    return env.image or NONE, env.digest or NONE


def pinned_reference(image: str, digest: str) -> str | None:
    """`repo@sha256:…` a registry serves, from what a record holds: `reprozoo image run` hands in the
    full reference `image push` printed; a bare `sha256:…` is joined to the image's repository."""
    if "@sha256:" in digest:
        return digest
    if DIGEST_RE.match(digest) and image != NONE:
        return f"{image.split('@')[0]}@{digest}"  # repo:tag@sha256:… pulls by digest; the tag is a label
    return None


@dataclass(frozen=True)
class LockState:
    name: str  # the lock file, as a record names it ("none": unknown)
    sha256: str  # its sha256, "none" unless what is installed is that lock
    installed: str  # "matches", "differs: …" or "not checked: …" (the image's build installed it hash-locked)


def lock_state(root: str | None) -> LockState:
    """The lock this environment was installed from, checked against what is installed.

    - $REPROZOO_LOCK names a flavour (the image, Colab: `colab`) or a file. When the lock file is here
      (that path, or the checkout's envs/<flavour>.lock) its pins are compared with what is installed
      and its sha256 with $REPROZOO_LOCK_SHA256. In an image there is no checkout: the baked sha256
      stands, installed hash-locked by the build that the image's digest pins.
    - Else the checkout's envs/cpu.txt.
    A lock that what is installed does not match is named, with sha256 "none" and a warning.
    """
    env = image_env()
    if env.lock:
        given = Path(env.lock)
        name = env.lock if given.is_file() or "/" in env.lock or env.lock.endswith((".lock", ".txt")) else f"envs/{env.lock}.lock"
        path = given if given.is_file() else (Path(root) / "envs" / f"{env.lock}.lock" if root else None)
        if path is None or not path.is_file():
            if env.lock_sha256:
                return LockState(name, env.lock_sha256, "not checked: no lock file here (an image's build installed it hash-locked)")
            return LockState(env.lock, NONE, "not checked: the lock file is not on this machine")
        return _checked(name, path, claimed=env.lock_sha256)
    path = Path(root) / "envs" / "cpu.txt" if root else None
    if path is None or not path.is_file():
        return LockState(NONE, NONE, "not checked: no lock")
    return _checked(f"envs/{path.name}", path)


def _checked(name: str, path: Path, claimed: str | None = None) -> LockState:
    sha = file_sha256(path)
    differences = lock_differences(path)
    if claimed and claimed != sha:
        differences.insert(0, f"${LOCK_SHA256_ENV} is {claimed[:12]}, the file's sha256 {sha[:12]}")
    if differences:
        more = f"; +{len(differences) - 1} more" if len(differences) > 1 else ""
        log.warning(f"this environment is not {name} ({differences[0]}{more}), so the record names no lock sha256;"
                    + (" `make setup` installs it" if name == "envs/cpu.txt" else f" install it with `pip install -r {name}`"))
        return LockState(name, NONE, f"differs: {differences[0]}{more}")
    return LockState(name, sha, "matches")


def lock_file(root: str | None) -> tuple[str, str]:
    """(lock file name, sha256) of `lock_state`."""
    state = lock_state(root)
    return state.name, state.sha256


MAX_LOCK_BYTES = 4 * 1024 * 1024


def lock_differences(path: Path, limit: int = 20) -> list[str]:
    """Where the installed distributions differ from a lock's `name==version` pins (markers that do
    not apply here are skipped; local labels such as torch's `+cpu` are not a difference)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    installed = {canonicalize_name(name): version for name, version, _ in installed_distributions() if name}
    differences: list[str] = []
    text = path.read_bytes()[:MAX_LOCK_BYTES].decode("utf-8", "replace")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if not pins or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        have = installed.get(canonicalize_name(requirement.name))
        try:
            same = have is not None and Version(have).public == Version(pins[0]).public
        except InvalidVersion:
            same = have == pins[0]
        if not same:
            differences.append(f"{requirement.name}: {have or 'not installed'}, the lock pins {pins[0]}")
            if len(differences) >= limit:
                break
    return differences


def installed_distributions() -> list[tuple[str | None, str | None, metadata.Distribution]]:
    """(name, version, distribution) of each installed distribution, its METADATA parsed once: each
    `dist.metadata` and `dist.version` parses the whole file again (~1 ms each, 137 distributions)."""
    found = []
    for dist in metadata.distributions():
        fields = dist.metadata
        found.append((fields["Name"], fields["Version"], dist))
    return found


def pip_freeze() -> str:
    """Every installed distribution as name==version (what `pip freeze` lists), without pip:
    uv-made environments have no pip module. Direct-URL installs keep their URL, credentials masked."""
    lines = []
    for name, version, dist in installed_distributions():
        if not name:
            continue
        direct = dist.read_text("direct_url.json")
        if direct and json.loads(direct).get("dir_info", {}).get("editable"):
            lines.append(f"# editable: {name}=={version}")
        else:
            lines.append(f"{name}=={version}")
    return redact("\n".join(sorted(set(lines), key=str.lower)) + "\n")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_driver() -> str:
    """The NVIDIA kernel driver's version (what the host brings to a CUDA image), else "none"."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return NONE
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else NONE


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return NONE


def environment(seed: int, root: str | None) -> dict[str, Any]:
    """The environment fingerprint recorded with every run (and compared by `tasks diff`)."""
    import torch

    image, digest = image_identity()
    lock = lock_state(root)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "image": image,
        "image_digest": digest,
        "lock_file": lock.name,
        "lock_sha256": lock.sha256,
        "lock_installed": lock.installed,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or NONE,
        "cudnn": str(cudnn) if cudnn else NONE,
        "transformers": _version("transformers"),
        "lightning": _version("lightning"),
        "clearml": _version("clearml"),
        "reprozoo": _version("reprozoo"),
        "gpu_model": gpus[0] if gpus else NONE,
        "gpu_count": len(gpus),
        "gpu_driver": gpu_driver() if gpus else NONE,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "determinism": {
            # train.start_run sets torch's flags as the Trainer will (devices.deterministic_mode) before this.
            "lightning_deterministic": "warn" if torch.is_deterministic_algorithms_warn_only_enabled() else True,
            "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "torch_deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", NONE),
            "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", NONE),
        },
    }
