"""Images between engines: push to a registry, pull by digest, and the repo digest a record pins.

A tag alone is never pulled: only `repo@sha256:…`, which the registry's content verifies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprozoo.containers.engine import find_image, first_line
from reprozoo.containers.identity import IMAGE_REPO, ContainerError, image_spec


def resolve_local_image(engine: Any, root: Path, flavour: str, base: str | None, image: str | None) -> Any:
    """`image`, else this checkout's tag for the flavour, as this engine has it (never pulled)."""
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
        raise ContainerError(f"push to {registry} failed: {first_line(err)}") from None
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
        raise ContainerError(f"pull {reference} failed: {first_line(err)}") from None


def repo_digest(image: Any, prefer: str | None = None) -> str | None:
    """A `repo@sha256:…` the engine knows for this image (set by push or pull), if any."""
    digests = image.attrs.get("RepoDigests") or []
    if prefer:
        for d in digests:
            if d == prefer or d.split("@")[0] == prefer.split("@")[0]:
                return d
    return digests[0] if digests else None


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
