"""The secrets scan on an image archive made here (what `docker save` streams): a clean image has no
findings, each planted credential is found where it hides. tests/containers/test_docker.py scans a real image."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

from reprozoo.containers.audit import find_secrets

SENTINEL = "rz-sentinel-0c94d2e7aa"


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeImage:
    """An image as the SDK shows it: attrs, history, and the archive `docker save` gives."""

    def __init__(self, layers: list[dict[str, bytes]], env: list[str], labels: dict[str, str]) -> None:
        self.id = "sha256:" + "e" * 64
        self.attrs = {"Id": self.id, "Config": {"Env": env, "Labels": labels}}
        names = [f"{index}/layer.tar" for index in range(len(layers))]
        manifest = json.dumps([{"Config": "config.json", "Layers": names}]).encode()
        self.archive = _tar({"manifest.json": manifest, **{n: _tar(files) for n, files in zip(names, layers, strict=True)}})

    def history(self) -> list[dict[str, Any]]:
        return [{"CreatedBy": "COPY src /work/src"}]


class FakeApi:
    def __init__(self, image: FakeImage) -> None:
        self.image = image

    def get_image(self, image_id: str) -> list[bytes]:
        assert image_id == self.image.id
        data = self.image.archive
        return [data[i:i + 4096] for i in range(0, len(data), 4096)]  # streamed in chunks, as the SDK does


class FakeEngine:
    def __init__(self, image: FakeImage) -> None:
        self.api = FakeApi(image)


def test_a_clean_image_has_no_findings() -> None:
    image = FakeImage([{"opt/venv/bin/python": b"ELF"}, {"work/src/reprozoo/cli.py": b"print('hi')"}],
                      env=["PATH=/opt/venv/bin", "TOKENIZERS_PARALLELISM=", "REPROZOO_LOCK=cpu"],
                      labels={"org.opencontainers.image.revision": "0" * 40})
    assert find_secrets(FakeEngine(image), image, [SENTINEL]) == []


def test_each_hiding_place_is_found() -> None:
    image = FakeImage([{"home/reprozoo/clearml.conf": b"api {}"}, {"work/notes.txt": f"key {SENTINEL}".encode(),
                                                                    "root/.docker/config.json": b"{}"}],
                      env=["HF_TOKEN=hf_abc"], labels={"leak": SENTINEL})
    findings = find_secrets(FakeEngine(image), image, [SENTINEL])
    assert "env HF_TOKEN is set in the image" in findings
    assert "labels contains rz-sen…" in findings and "config contains rz-sen…" in findings
    assert "file home/reprozoo/clearml.conf" in findings and "file root/.docker/config.json" in findings
    assert "file work/notes.txt contains rz-sen…" in findings
