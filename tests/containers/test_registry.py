"""Push and pull without a registry: an engine stand-in answers what the Docker SDK would (no registry runs here;
tests/containers/test_docker.py pushes to and pulls from a real one)."""

from __future__ import annotations

from typing import Any

import pytest
from docker.errors import APIError, ImageNotFound

from reprozoo.containers.identity import ContainerError
from reprozoo.containers.registry import ensure_image, pull_by_digest, push_image, repo_digest

PINNED = "127.0.0.1:5000/reprozoo@sha256:" + "a" * 64


class FakeImage:
    def __init__(self, ref: str, digests: list[str] | None = None) -> None:
        self.id, self.short_id, self.tags = "sha256:" + "b" * 64, "sha256:bbbbbbbbbb", [ref] if ":" in ref.split("/")[-1] else []
        self.attrs = {"RepoDigests": digests or []}
        self.tagged: list[tuple[str, str]] = []

    def tag(self, repository: str, tag: str) -> None:
        self.tagged.append((repository, tag))


class FakeImages:
    def __init__(self, known: dict[str, FakeImage]) -> None:
        self.known, self.pulled = known, []

    def get(self, ref: str) -> FakeImage:
        if ref not in self.known:
            raise ImageNotFound(f"No such image: {ref}")
        return self.known[ref]

    def pull(self, ref: str) -> FakeImage:
        self.pulled.append(ref)
        return FakeImage(ref, [ref])


class FakeApi:
    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks, self.pushed = chunks, []

    def push(self, repository: str, tag: str, stream: bool, decode: bool) -> list[dict[str, Any]]:
        self.pushed.append((repository, tag))
        return self.chunks


class FakeEngine:
    def __init__(self, known: dict[str, FakeImage] | None = None, push_chunks: list[dict[str, Any]] | None = None) -> None:
        self.images, self.api = FakeImages(known or {}), FakeApi(push_chunks or [])


def test_ensure_image_pulls_only_by_digest() -> None:
    local = FakeImage("reprozoo:cpu-0123456789ab")
    engine = FakeEngine({"reprozoo:cpu-0123456789ab": local})
    assert ensure_image(engine, "reprozoo:cpu-0123456789ab", log=lambda line: None) is local
    with pytest.raises(ContainerError, match=r"reprozoo:cpu-ffffffffffff is not on this engine and is not pinned by digest"):
        ensure_image(engine, "reprozoo:cpu-ffffffffffff", log=lambda line: None)
    said: list[str] = []
    pulled = ensure_image(engine, PINNED, log=said.append)
    assert engine.images.pulled == [PINNED] and said == [f"pulling {PINNED}"] and repo_digest(pulled) == PINNED
    with pytest.raises(ContainerError, match="is not pinned by digest"):
        pull_by_digest(engine, "reprozoo:cpu-0123456789ab")


def test_repo_digest_prefers_the_named_repository() -> None:
    other = "ghcr.io/o/reprozoo@sha256:" + "c" * 64
    image = FakeImage("reprozoo:cpu-0123456789ab", [other, PINNED])
    assert repo_digest(image) == other
    assert repo_digest(image, prefer="127.0.0.1:5000/reprozoo@sha256:" + "d" * 64) == PINNED
    assert repo_digest(FakeImage("reprozoo:cpu-0123456789ab")) is None


def test_push_returns_the_pinned_reference_or_one_line() -> None:
    image = FakeImage("reprozoo:cpu-0123456789ab")
    engine = FakeEngine(push_chunks=[{"status": "Pushing", "id": "layer"}, {"status": "cpu-0123456789ab: digest"},
                                     {"aux": {"Tag": "cpu-0123456789ab", "Digest": "sha256:" + "a" * 64}}])
    said: list[str] = []
    assert push_image(engine, image, "127.0.0.1:5000/", log=said.append) == PINNED
    assert image.tagged == [("127.0.0.1:5000/reprozoo", "cpu-0123456789ab")] and said == ["cpu-0123456789ab: digest"]
    failing = FakeEngine(push_chunks=[{"error": "unauthorized: authentication required\n"}])
    with pytest.raises(ContainerError, match=r"^push to ghcr.io/o failed: unauthorized: authentication required$"):
        push_image(failing, image, "ghcr.io/o", log=lambda line: None)
    with pytest.raises(ContainerError, match="reported no digest"):
        push_image(FakeEngine(push_chunks=[]), image, "127.0.0.1:5000", log=lambda line: None)

    class Refusing(FakeApi):
        def push(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise APIError("500 Server Error: connection refused\nmore")

    engine.api = Refusing([])
    with pytest.raises(ContainerError, match=r"^push to 127.0.0.1:5000 failed: 500 Server Error: connection refused$"):
        push_image(engine, image, "127.0.0.1:5000", log=lambda line: None)
